// OverlayMemory: a PhysicalMemory that reads through to a base memory except for a few frames
// it holds itself. Mutation studies, benchmarks and tests flip bits without copying a tree.
#pragma once

#include <cstdint>
#include <unordered_map>

#include "baton/model/phys_mem.hpp"

namespace baton::checker {

class OverlayMemory final : public model::PhysicalMemory {
 public:
  // Creates an overlay over `base`, which must outlive it.
  explicit OverlayMemory(const model::PhysicalMemory& base) : base_(base) {}

  // Returns the overlay's copy of a frame, else the base's, or nullptr when hidden or absent.
  const std::uint8_t* frame(model::Hfn f) const override;
  // Returns a private, writable copy of a frame (zero-filled when the base lacks it).
  std::uint8_t* frame_mut(model::Hfn f);
  // Writes a 64-bit word into the overlay.
  void write_u64(model::Hpa a, std::uint64_t v);
  // Flips one bit of the 64-bit word at `a`.
  void flip_bit(model::Hpa a, unsigned bit);
  // Makes a frame absent in the overlay even if the base has it.
  void hide(model::Hfn f) { hidden_[f.value] = true; }
  // Drops every private frame and hidden mark.
  void clear() {
    frames_.clear();
    hidden_.clear();
  }

 private:
  const model::PhysicalMemory& base_;
  std::unordered_map<std::uint64_t, model::Page> frames_;
  std::unordered_map<std::uint64_t, bool> hidden_;
};

}  // namespace baton::checker
