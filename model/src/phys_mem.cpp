// FrameStore: open-addressing hash from frame number to page.
#include "baton/model/phys_mem.hpp"

#include <algorithm>

#include "baton/model/result.hpp"

namespace baton::model {

namespace {
// Mixes a frame number into a table position (Fibonacci hashing: the high bits of a
// multiply by 2^64/phi spread consecutive frame numbers across the table).
inline std::uint64_t mix(std::uint64_t x) {
  x *= 0x9E3779B97F4A7C15ull;
  return x ^ (x >> 29);
}
}  // namespace

FrameStore::FrameStore() : slots_(64) {}

FrameStore::FrameStore(const FrameStore& o) { *this = o; }

FrameStore& FrameStore::operator=(const FrameStore& o) {
  if (this == &o) return *this;
  slots_.assign(64, Slot{});
  mask_ = 63;
  pages_.clear();
  free_pages_.clear();
  count_ = 0;
  for (const Slot& s : o.slots_) {
    if (s.key == kEmpty) continue;
    std::memcpy(frame_mut(Hfn{s.key}), s.data, kPageSize);
  }
  return *this;
}

std::size_t FrameStore::find_slot(std::uint64_t key) const {
  const std::size_t mask = mask_;
  std::size_t i = mix(key) & mask;
  while (true) {
    const std::uint64_t k = slots_[i].key;
    if (k == key || k == kEmpty) return i;
    i = (i + 1) & mask;
  }
}

const std::uint8_t* FrameStore::frame(Hfn f) const {
  const Slot* slots = slots_.data();
  std::size_t i = mix(f.value) & mask_;
  while (true) {
    if (slots[i].key == f.value) return slots[i].data;
    if (slots[i].key == kEmpty) return nullptr;
    i = (i + 1) & mask_;
  }
}

void FrameStore::grow() {
  std::vector<Slot> old = std::move(slots_);
  slots_.assign(old.size() * 2, Slot{});
  mask_ = slots_.size() - 1;
  for (const Slot& s : old)
    if (s.key != kEmpty) slots_[find_slot(s.key)] = s;
}

std::uint8_t* FrameStore::frame_mut(Hfn f) {
  BATON_CHECK(f.value != kEmpty);
  std::size_t i = find_slot(f.value);
  if (slots_[i].key == f.value) return slots_[i].data;
  if ((count_ + 1) * 10 > slots_.size() * 7) {
    grow();
    i = find_slot(f.value);
  }
  std::uint32_t idx;
  if (!free_pages_.empty()) {
    idx = free_pages_.back();
    free_pages_.pop_back();
    pages_[idx]->fill(0);
  } else {
    idx = static_cast<std::uint32_t>(pages_.size());
    pages_.push_back(std::make_unique<Page>());
    pages_.back()->fill(0);
  }
  slots_[i] = Slot{f.value, pages_[idx]->data(), idx};
  ++count_;
  return slots_[i].data;
}

bool FrameStore::erase(Hfn f) {
  // Backward-shift deletion keeps probe chains intact without tombstones.
  const std::size_t mask = mask_;
  std::size_t i = find_slot(f.value);
  if (slots_[i].key != f.value) return false;
  free_pages_.push_back(slots_[i].page);
  std::size_t j = i;
  while (true) {
    j = (j + 1) & mask;
    if (slots_[j].key == kEmpty) break;
    const std::size_t home = mix(slots_[j].key) & mask;
    // Move slot j back to i if its home position is cyclically outside (i, j].
    const bool between = (i <= j) ? (home > i && home <= j) : (home > i || home <= j);
    if (!between) {
      slots_[i] = slots_[j];
      i = j;
    }
  }
  slots_[i] = Slot{};
  --count_;
  return true;
}

std::vector<Hfn> FrameStore::frames() const {
  std::vector<Hfn> out;
  out.reserve(count_);
  for (const Slot& s : slots_)
    if (s.key != kEmpty) out.push_back(Hfn{s.key});
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace baton::model
