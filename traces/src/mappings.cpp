// Reconstruction of a VM's gfn->pfn leaves from the kEptSet / kEptClear events of a trace.
#include <cstdio>
#include <set>
#include <string>

#include "baton/traces/ftrace.hpp"

namespace baton::traces {

using LeafMap = std::map<std::uint64_t, Mapping>;

std::uint64_t frames_per_leaf(unsigned level) { return level <= 1 ? 1 : std::uint64_t{1} << (9 * (level - 1)); }

namespace {
std::string hex_u64(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(v));
  return b;
}

// Removes every leaf that overlaps [base, base + frames).
void remove_overlapping(LeafMap& m, std::uint64_t base, std::uint64_t frames) {
  auto it = m.lower_bound(base);
  if (it != m.begin()) {
    auto prev = std::prev(it);
    if (prev->first + frames_per_leaf(prev->second.level) > base) it = prev;  // a larger leaf covering base
  }
  while (it != m.end() && it->first < base + frames) it = m.erase(it);
}
}  // namespace

Result<LeafMap> mappings(const Trace& t, std::uint32_t vm, std::optional<std::size_t> upto) {
  const std::size_t end = upto.value_or(t.events.size());
  if (end > t.events.size())
    return make_error("event index " + std::to_string(end) + " is past the end of the trace (" +
                      std::to_string(t.events.size()) + " events)");
  bool seen = false;
  for (const TraceEvent& e : t.events) seen |= e.vm == vm;
  if (!seen) return make_error("no VM " + std::to_string(vm) + " in the trace");
  LeafMap m;
  for (std::size_t i = 0; i < end; ++i) {
    const TraceEvent& e = t.events[i];
    if (e.vm != vm || (e.type != EventType::kEptSet && e.type != EventType::kEptClear)) continue;
    if (e.code < 1 || e.code > 3)
      return make_error("event " + std::to_string(i) + ": leaf level " + std::to_string(e.code) + " is not 1..3");
    const unsigned level = e.code;
    const std::uint64_t frames = frames_per_leaf(level);
    const std::uint64_t base = e.a & ~(frames - 1);
    if (e.type == EventType::kEptClear) {
      remove_overlapping(m, base, frames);
      continue;
    }
    Mapping nm{.pfn = e.b & ~(frames - 1),
               .level = level,
               .perms = e.flags & 7u,
               .perms_known = (e.flags & kEptPermsUnknown) == 0,
               .event = i};
    if (auto it = m.find(base);
        it != m.end() && !nm.perms_known && it->second.pfn == nm.pfn && it->second.level == level) {
      continue;  // a repeat without permissions (kvm_mmu_spte_requested) keeps what is known
    }
    remove_overlapping(m, base, frames);
    m.emplace(base, nm);
  }
  return m;
}

std::optional<std::uint64_t> lookup_pfn(const LeafMap& m, std::uint64_t gfn) {
  auto it = m.upper_bound(gfn);
  if (it == m.begin()) return std::nullopt;
  --it;
  const std::uint64_t off = gfn - it->first;
  if (off >= frames_per_leaf(it->second.level)) return std::nullopt;
  return it->second.pfn + off;
}

Result<model::MappingSet> to_mapping_set(const LeafMap& m) {
  constexpr std::uint64_t kMaxFrame = std::uint64_t{1} << 40;  // 52-bit physical addresses
  model::MappingSet out;
  for (const auto& [gfn, l] : m) {
    const std::uint64_t n = frames_per_leaf(l.level);
    if (gfn >= kMaxFrame || n > kMaxFrame - gfn || l.pfn >= kMaxFrame || n > kMaxFrame - l.pfn)
      return make_error("leaf gfn 0x" + hex_u64(gfn) + " -> pfn 0x" + hex_u64(l.pfn) +
                        " lies beyond 52-bit physical addresses");
    model::MappingRun r;
    r.gpa = model::Gpa{gfn << 12};
    r.size = n << 12;
    r.kind = model::RunKind::kMapped;
    r.hpa = model::Hpa{l.pfn << 12};
    r.perms = model::Perms::from_bits(l.perms_known ? l.perms : 7u);
    out.append(r);  // keys ascend and leaves never overlap, so appending keeps the order
  }
  return out;
}

std::vector<std::uint32_t> trace_vms(const Trace& t) {
  std::set<std::uint32_t> s;
  for (const TraceEvent& e : t.events) s.insert(e.vm);
  return {s.begin(), s.end()};
}

}  // namespace baton::traces
