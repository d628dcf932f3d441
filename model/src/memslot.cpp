// Memslot lookup and validation; the owner map of host frames.
#include "baton/model/memslot.hpp"

#include <algorithm>
#include <cstdio>

namespace baton::model {

const Memslot* find_memslot(const std::vector<Memslot>& slots, Gpa a) {
  for (const Memslot& s : slots)
    if (s.contains(a)) return &s;
  return nullptr;
}

std::string validate_memslots(const std::vector<Memslot>& slots) {
  char buf[200];
  for (std::size_t i = 0; i < slots.size(); ++i) {
    const Memslot& s = slots[i];
    if (s.size == 0 || (s.gpa.value | s.size | s.hpa.value) & kPageMask) {
      std::snprintf(buf, sizeof buf, "memslot %u is empty or not 4 KiB-aligned (gpa 0x%llx size 0x%llx hpa 0x%llx)",
                    s.id, static_cast<unsigned long long>(s.gpa.value), static_cast<unsigned long long>(s.size),
                    static_cast<unsigned long long>(s.hpa.value));
      return buf;
    }
    if (s.gpa.value + s.size < s.gpa.value || s.hpa.value + s.size < s.hpa.value) {
      std::snprintf(buf, sizeof buf, "memslot %u wraps around the address space", s.id);
      return buf;
    }
    for (std::size_t j = 0; j < i; ++j) {
      const Memslot& t = slots[j];
      if (s.id == t.id) {
        std::snprintf(buf, sizeof buf, "memslot id %u is used twice", s.id);
        return buf;
      }
      if (s.gpa < t.end() && t.gpa < s.end()) {
        std::snprintf(buf, sizeof buf, "memslots %u and %u overlap in guest-physical space", t.id, s.id);
        return buf;
      }
      if (s.hpa < t.hpa + t.size && t.hpa < s.hpa + s.size) {
        std::snprintf(buf, sizeof buf, "memslots %u and %u share host memory", t.id, s.id);
        return buf;
      }
    }
  }
  return {};
}

const char* to_string(OwnerKind k) {
  switch (k) {
    case OwnerKind::kFree: return "free";
    case OwnerKind::kGuestRam: return "guest-ram";
    case OwnerKind::kEptTable: return "ept-table";
    case OwnerKind::kVmcs: return "vmcs";
    case OwnerKind::kHypervisor: return "hypervisor";
    case OwnerKind::kOtherVm: return "other-vm";
  }
  return "?";
}

std::optional<OwnerKind> owner_kind_from_string(const std::string& s) {
  for (OwnerKind k : {OwnerKind::kFree, OwnerKind::kGuestRam, OwnerKind::kEptTable, OwnerKind::kVmcs,
                      OwnerKind::kHypervisor, OwnerKind::kOtherVm})
    if (s == to_string(k)) return k;
  return std::nullopt;
}

void OwnerMap::assign(Hfn first, std::uint64_t count, OwnerKind kind, std::uint32_t vm) {
  if (count == 0) return;
  const Hfn last = first + count;
  std::vector<OwnerRange> out;
  out.reserve(ranges_.size() + 2);
  bool placed = false;
  for (const OwnerRange& r : ranges_) {
    if (r.end() <= first || r.first >= last) {
      if (!placed && r.first >= last) {
        if (kind != OwnerKind::kFree) out.push_back(OwnerRange{first, count, kind, vm});
        placed = true;
      }
      out.push_back(r);
      continue;
    }
    if (r.first < first) out.push_back(OwnerRange{r.first, first - r.first, r.kind, r.vm});
    if (!placed) {
      if (kind != OwnerKind::kFree) out.push_back(OwnerRange{first, count, kind, vm});
      placed = true;
    }
    if (r.end() > last) out.push_back(OwnerRange{last, r.end() - last, r.kind, r.vm});
  }
  if (!placed && kind != OwnerKind::kFree) out.push_back(OwnerRange{first, count, kind, vm});
  // Coalesce neighbours with the same owner.
  ranges_.clear();
  for (const OwnerRange& r : out) {
    if (!ranges_.empty() && ranges_.back().end() == r.first && ranges_.back().kind == r.kind &&
        ranges_.back().vm == r.vm) {
      ranges_.back().count += r.count;
    } else {
      ranges_.push_back(r);
    }
  }
}

OwnerRange OwnerMap::owner_of(Hfn f) const {
  auto it = std::upper_bound(ranges_.begin(), ranges_.end(), f, [](Hfn x, const OwnerRange& r) { return x < r.first; });
  if (it != ranges_.begin()) {
    --it;
    if (f < it->end()) return *it;
  }
  return OwnerRange{f, 1, OwnerKind::kFree, 0};
}

}  // namespace baton::model
