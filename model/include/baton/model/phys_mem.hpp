// PhysicalMemory: a small read interface over host-physical frames, and FrameStore, a sparse
// in-memory implementation of it.
#pragma once

#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <vector>

#include "baton/model/addr.hpp"

namespace baton::model {

using Page = std::array<std::uint8_t, kPageSize>;

// Read access to host-physical frames. An absent frame is an answer (nullptr), not a crash.
class PhysicalMemory {
 public:
  virtual ~PhysicalMemory() = default;
  // Returns the 4 KiB contents of a frame, or nullptr when the frame is not present.
  virtual const std::uint8_t* frame(Hfn f) const = 0;
  // Reads one 64-bit little-endian word; returns false when the frame is absent.
  bool read_u64(Hpa a, std::uint64_t* out) const {
    const std::uint8_t* p = frame(hfn_of(a));
    if (p == nullptr) return false;
    std::memcpy(out, p + (page_offset(a.value) & ~std::uint64_t{7}), 8);
    return true;
  }
};

// A sparse store of host frames, keyed by frame number, with an open-addressing index so
// that a lookup costs a few nanoseconds.
class FrameStore final : public PhysicalMemory {
 public:
  FrameStore();
  FrameStore(const FrameStore& o);
  FrameStore& operator=(const FrameStore& o);
  FrameStore(FrameStore&&) noexcept = default;
  FrameStore& operator=(FrameStore&&) noexcept = default;
  ~FrameStore() override = default;

  const std::uint8_t* frame(Hfn f) const override;
  // Returns a writable frame, creating it zero-filled if absent.
  std::uint8_t* frame_mut(Hfn f);
  // Returns whether a frame is present.
  bool contains(Hfn f) const { return frame(f) != nullptr; }
  // Removes a frame; returns whether it was present.
  bool erase(Hfn f);
  // Number of frames stored.
  std::size_t size() const { return count_; }
  // All stored frame numbers, in ascending order.
  std::vector<Hfn> frames() const;
  // Writes a 64-bit little-endian word, creating the frame if needed.
  void write_u64(Hpa a, std::uint64_t v) {
    std::memcpy(frame_mut(hfn_of(a)) + (page_offset(a.value) & ~std::uint64_t{7}), &v, 8);
  }

 private:
  struct Slot {
    std::uint64_t key = kEmpty;     // frame number or kEmpty
    std::uint8_t* data = nullptr;   // the page, owned by pages_[page]
    std::uint32_t page = 0;         // index into pages_
  };
  static constexpr std::uint64_t kEmpty = ~std::uint64_t{0};
  std::size_t find_slot(std::uint64_t key) const;
  void grow();

  std::vector<Slot> slots_;
  std::size_t mask_ = 63;  // slots_.size() - 1, kept to avoid recomputing it per lookup
  std::vector<std::unique_ptr<Page>> pages_;
  std::vector<std::uint32_t> free_pages_;
  std::size_t count_ = 0;
};

}  // namespace baton::model
