// HostMemory: RAM ranges on mmap, small frames in a FrameStore, the owner map and host TSC.
#include "baton/sim/host_memory.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

namespace baton::sim {

using model::Hfn;
using model::Hpa;

HostMemory::HostMemory() = default;

HostMemory::~HostMemory() {
  for (const RamRange& r : ram_) munmap(r.data, r.size);
}

const std::uint8_t* HostMemory::frame(Hfn f) const {
  for (const RamRange& r : ram_)
    if (f >= r.first() && f < r.end()) return r.data + ((f.value - r.first().value) << model::kPageShift);
  return frames_.frame(f);
}

std::uint8_t* HostMemory::frame_mut(Hfn f) {
  for (const RamRange& r : ram_)
    if (f >= r.first() && f < r.end()) return r.data + ((f.value - r.first().value) << model::kPageShift);
  return frames_.contains(f) ? frames_.frame_mut(f) : nullptr;
}

Result<RamRange> HostMemory::alloc_ram(std::uint64_t bytes, std::uint32_t vm) {
  if (bytes == 0 || bytes % model::kPageSize != 0) return make_error("RAM size must be a non-zero multiple of 4 KiB");
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED)
    return make_error("cannot reserve " + std::to_string(bytes >> 20) + " MiB of host memory: " + std::strerror(errno));
  constexpr std::uint64_t kAlign = std::uint64_t{1} << 30;
  RamRange r{Hpa{next_ram_}, bytes, static_cast<std::uint8_t*>(p), vm};
  next_ram_ = (next_ram_ + bytes + kAlign - 1) & ~(kAlign - 1);
  ram_.push_back(r);
  owners_.assign(r.first(), bytes >> model::kPageShift, model::OwnerKind::kGuestRam, vm);
  return r;
}

const RamRange* HostMemory::ram_at(Hpa a) const {
  for (const RamRange& r : ram_)
    if (a >= r.base && a < r.base + r.size) return &r;
  return nullptr;
}

std::uint8_t* HostMemory::ram_ptr(Hpa a) const {
  const RamRange* r = ram_at(a);
  return r == nullptr ? nullptr : r->data + (a - r->base);
}

Hfn HostMemory::alloc_frame(model::OwnerKind kind, std::uint32_t vm) {
  Hfn f;
  if (!free_small_.empty()) {
    f = free_small_.back();
    free_small_.pop_back();
  } else {
    f = Hfn{next_small_++};
    BATON_CHECK(f.value < (kRamBase >> model::kPageShift));
  }
  std::memset(frames_.frame_mut(f), 0, model::kPageSize);
  owners_.assign(f, 1, kind, vm);
  return f;
}

void HostMemory::free_frame(Hfn f) {
  if (!frames_.erase(f)) return;
  owners_.assign(f, 1, model::OwnerKind::kFree, 0);
  free_small_.push_back(f);
}

std::uint8_t* HostMemory::claim_frame(Hfn f, model::OwnerKind kind, std::uint32_t vm) {
  if (f.value >= next_small_ && f.value < (kRamBase >> model::kPageShift)) next_small_ = f.value + 1;
  std::erase(free_small_, f);
  owners_.assign(f, 1, kind, vm);
  return frames_.frame_mut(f);
}

}  // namespace baton::sim
