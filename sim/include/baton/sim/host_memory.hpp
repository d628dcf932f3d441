// HostMemory: the simulated host-physical memory that every hypervisor instance on one host
// shares. Guest RAM lives in large contiguous ranges, each backed by one host allocation
// (mmap MAP_NORESERVE, so a 16 GiB slot costs nothing until touched); paging-structure,
// VMCS and hypervisor-private frames live in a FrameStore. Both are visible through
// model::PhysicalMemory, so model::walk and collect_tables work on host memory directly.
// A per-frame owner map records who owns what, and a simulated host TSC advances as
// instances charge cycles.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "baton/model/addr.hpp"
#include "baton/model/memslot.hpp"
#include "baton/model/phys_mem.hpp"
#include "baton/model/result.hpp"

namespace baton::sim {

// One contiguous range of host RAM backed by one host allocation.
struct RamRange {
  model::Hpa base;
  std::uint64_t size = 0;
  std::uint8_t* data = nullptr;  // host mapping of [base, base + size)
  std::uint32_t vm = 0;
  model::Hfn first() const { return model::hfn_of(base); }
  model::Hfn end() const { return model::hfn_of(base + size); }
};

class HostMemory final : public model::PhysicalMemory {
 public:
  // Host-physical layout: small frames (tables, VMCS, hypervisor pages) are handed out from
  // [kSmallFramesBase, kRamBase); guest RAM ranges from kRamBase up, 1 GiB aligned.
  static constexpr std::uint64_t kSmallFramesBase = std::uint64_t{1} << 20;
  static constexpr std::uint64_t kRamBase = std::uint64_t{4} << 30;

  HostMemory();
  ~HostMemory() override;
  HostMemory(const HostMemory&) = delete;
  HostMemory& operator=(const HostMemory&) = delete;

  // Returns the 4 KiB contents of a frame: RAM, a small frame, or nullptr when nothing is there.
  const std::uint8_t* frame(model::Hfn f) const override;
  // Returns a writable frame, or nullptr when nothing is there (never creates RAM).
  std::uint8_t* frame_mut(model::Hfn f);

  // Allocates a zero-filled RAM range of `bytes` (a multiple of 4 KiB) for VM `vm`, 1 GiB aligned.
  Result<RamRange> alloc_ram(std::uint64_t bytes, std::uint32_t vm);
  // Returns the RAM range holding an address, or nullptr.
  const RamRange* ram_at(model::Hpa a) const;
  // Returns the host pointer of a RAM address, or nullptr when it is not RAM.
  std::uint8_t* ram_ptr(model::Hpa a) const;
  const std::vector<RamRange>& ram() const { return ram_; }

  // Allocates one zero-filled small frame and records its owner.
  model::Hfn alloc_frame(model::OwnerKind kind, std::uint32_t vm);
  // Releases a small frame (it becomes free in the owner map).
  void free_frame(model::Hfn f);
  // Makes sure a small frame exists (for adopting a snapshot's tables) and records its owner.
  std::uint8_t* claim_frame(model::Hfn f, model::OwnerKind kind, std::uint32_t vm);
  // The store holding small frames, for model::EptBuilder and set_accessed_dirty.
  model::FrameStore& frames() { return frames_; }
  const model::FrameStore& frames() const { return frames_; }

  const model::OwnerMap& owners() const { return owners_; }
  // Records a new owner for a range of frames.
  void set_owner(model::Hfn first, std::uint64_t count, model::OwnerKind kind, std::uint32_t vm) {
    owners_.assign(first, count, kind, vm);
  }

  // The simulated host TSC: host cycles elapsed since the host started.
  std::uint64_t tsc() const { return tsc_; }
  // Advances the host TSC by `cycles`.
  void advance_tsc(std::uint64_t cycles) { tsc_ += cycles; }

 private:
  std::vector<RamRange> ram_;
  model::FrameStore frames_;
  model::OwnerMap owners_;
  std::uint64_t next_small_ = kSmallFramesBase >> model::kPageShift;
  std::vector<model::Hfn> free_small_;
  std::uint64_t next_ram_ = kRamBase;
  std::uint64_t tsc_ = 0;
};

}  // namespace baton::sim
