// OverlayMemory: private copies of a few frames over a shared base memory.
#include "baton/checker/overlay.hpp"

#include <cstring>

namespace baton::checker {

const std::uint8_t* OverlayMemory::frame(model::Hfn f) const {
  if (!hidden_.empty() && hidden_.count(f.value) != 0) return nullptr;
  if (auto it = frames_.find(f.value); it != frames_.end()) return it->second.data();
  return base_.frame(f);
}

std::uint8_t* OverlayMemory::frame_mut(model::Hfn f) {
  hidden_.erase(f.value);
  auto it = frames_.find(f.value);
  if (it == frames_.end()) {
    model::Page p{};
    if (const std::uint8_t* b = base_.frame(f)) std::memcpy(p.data(), b, p.size());
    it = frames_.emplace(f.value, p).first;
  }
  return it->second.data();
}

void OverlayMemory::write_u64(model::Hpa a, std::uint64_t v) {
  std::memcpy(frame_mut(model::hfn_of(a)) + (model::page_offset(a.value) & ~std::uint64_t{7}), &v, 8);
}

void OverlayMemory::flip_bit(model::Hpa a, unsigned bit) {
  std::uint8_t* p = frame_mut(model::hfn_of(a)) + (model::page_offset(a.value) & ~std::uint64_t{7});
  std::uint64_t v;
  std::memcpy(&v, p, 8);
  v ^= std::uint64_t{1} << bit;
  std::memcpy(p, &v, 8);
}

}  // namespace baton::checker
