// MappingSet: normalisation of an EPT tree into coalesced runs, and set operations on runs.
#include "baton/model/mapping_set.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace baton::model {

const char* to_string(RunKind k) {
  switch (k) {
    case RunKind::kMapped: return "mapped";
    case RunKind::kMisconfig: return "misconfig";
    case RunKind::kUnknown: return "unknown";
  }
  return "?";
}

void MappingSet::append(const MappingRun& r) {
  if (r.size == 0) return;
  if (!runs_.empty()) {
    MappingRun& last = runs_.back();
    if (last.end() == r.gpa && last.same_outcome_shape(r) &&
        (r.kind != RunKind::kMapped || last.hpa + last.size == r.hpa)) {
      last.size += r.size;
      return;
    }
  }
  runs_.push_back(r);
}

Result<MappingSet> MappingSet::from_runs(std::vector<MappingRun> runs) {
  std::sort(runs.begin(), runs.end(), [](const MappingRun& a, const MappingRun& b) { return a.gpa < b.gpa; });
  MappingSet s;
  for (const MappingRun& r : runs) {
    if (!s.runs_.empty() && r.gpa < s.runs_.back().end()) {
      char buf[128];
      std::snprintf(buf, sizeof buf, "mapping runs overlap at gpa 0x%llx", static_cast<unsigned long long>(r.gpa.value));
      return make_error(buf);
    }
    s.append(r);
  }
  return s;
}

namespace {
// Depth-first traversal state: the set being built and the ancestor chain for cycle checks.
struct Traversal {
  const PhysicalMemory& mem;
  const EptConfig& cfg;
  MappingSet& out;
  TreeStats& stats;
  std::uint64_t ancestors[5] = {};
  std::string error;

  // Visits the table at `table` for level `level`, covering GPAs from `base`. False on error.
  bool visit(Hfn table, unsigned level, std::uint64_t base) {
    const std::uint8_t* page = mem.frame(table);
    const std::uint64_t span = level_span(level);
    if (page == nullptr) {
      ++stats.absent_frames;
      out.append(MappingRun{Gpa{base}, span * 512, RunKind::kUnknown, Hpa{}, Perms{}, 0, false});
      return true;
    }
    for (unsigned up = level + 1; up <= 4; ++up) {
      if (ancestors[up] == table.value) {
        char buf[160];
        std::snprintf(buf, sizeof buf,
                      "EPT table cycle: the level-%u table at hfn 0x%llx is also its own level-%u ancestor",
                      level, static_cast<unsigned long long>(table.value), up);
        error = buf;
        return false;
      }
    }
    ancestors[level] = table.value;
    ++stats.tables;
    std::uint64_t raw[512];
    std::memcpy(raw, page, sizeof raw);
    for (unsigned i = 0; i < 512; ++i) {
      const EptEntry e{raw[i]};
      const std::uint64_t gpa = base + span * i;
      if ((raw[i] & 7) == 0 && !cfg.mode_based_exec) continue;  // not present: fast path
      MisconfigReason reason;
      switch (e.classify(level, cfg, &reason)) {
        case EntryKind::kNotPresent: break;
        case EntryKind::kMisconfigured:
          ++stats.misconfigured;
          out.append(MappingRun{Gpa{gpa}, span, RunKind::kMisconfig, Hpa{}, Perms{}, 0, false});
          break;
        case EntryKind::kTable:
          if (!visit_table(e, level, gpa)) return false;
          break;
        default: {
          ++stats.leaves[level];
          // A leaf whose effective permissions are empty behaves exactly like a not-present
          // entry (every access faults with bits 5:3 of the qualification clear), so it
          // normalises to nothing.
          const Perms eff = e.perms() & perm_ctx[level];
          if (eff.bits() != 0)
            out.append(MappingRun{Gpa{gpa}, span, RunKind::kMapped, e.leaf_base(level), eff,
                                  static_cast<std::uint8_t>(e.memory_type()), e.ignore_pat()});
          break;
        }
      }
    }
    ancestors[level] = ~std::uint64_t{0};
    return true;
  }

  // Descends through a table entry, narrowing the effective permissions.
  bool visit_table(EptEntry e, unsigned level, std::uint64_t gpa) {
    perm_ctx[level - 1] = perm_ctx[level] & e.perms();
    return visit(e.table_hfn(), level - 1, gpa);
  }

  Perms perm_ctx[5] = {};
};
}  // namespace

Result<MappingSet> MappingSet::from_tree(Eptp eptp, const PhysicalMemory& mem, const EptConfig& cfg,
                                         TreeStats* stats) {
  MappingSet s;
  TreeStats local;
  Traversal t{mem, cfg, s, stats != nullptr ? *stats : local, {}, {}};
  for (auto& a : t.ancestors) a = ~std::uint64_t{0};
  t.perm_ctx[4] = Perms{true, true, true};
  if (!t.visit(eptp.root(), 4, 0)) return make_error(t.error);
  return s;
}

std::uint64_t MappingSet::mapped_bytes() const {
  std::uint64_t n = 0;
  for (const MappingRun& r : runs_)
    if (r.kind == RunKind::kMapped) n += r.size;
  return n;
}

std::optional<MappingRun> MappingSet::lookup(Gpa a) const {
  auto it = std::upper_bound(runs_.begin(), runs_.end(), a, [](Gpa x, const MappingRun& r) { return x < r.gpa; });
  if (it == runs_.begin()) return std::nullopt;
  --it;
  if (a < it->end()) return *it;
  return std::nullopt;
}

namespace {
// Returns whether two runs give the same outcome at every address of [lo, hi).
bool same_on(const MappingRun* a, const MappingRun* b, Gpa lo) {
  if (a == nullptr || b == nullptr) return a == b;
  if (!a->same_outcome_shape(*b)) return false;
  return a->kind != RunKind::kMapped || a->hpa_at(lo) == b->hpa_at(lo);
}
}  // namespace

std::vector<MappingDiff> MappingSet::diff(const MappingSet& o) const {
  std::vector<MappingDiff> out;
  std::size_t i = 0, j = 0;
  std::uint64_t pos = 0;
  const auto& A = runs_;
  const auto& B = o.runs_;
  while (i < A.size() || j < B.size()) {
    // Advance past runs that end at or before `pos`.
    while (i < A.size() && A[i].end().value <= pos) ++i;
    while (j < B.size() && B[j].end().value <= pos) ++j;
    if (i >= A.size() && j >= B.size()) break;
    const MappingRun* a = (i < A.size() && A[i].gpa.value <= pos) ? &A[i] : nullptr;
    const MappingRun* b = (j < B.size() && B[j].gpa.value <= pos) ? &B[j] : nullptr;
    // The elementary interval ends at the next boundary of either list.
    std::uint64_t next = ~std::uint64_t{0};
    if (i < A.size()) next = std::min(next, a != nullptr ? A[i].end().value : A[i].gpa.value);
    if (j < B.size()) next = std::min(next, b != nullptr ? B[j].end().value : B[j].gpa.value);
    if (a == nullptr && b == nullptr) {
      pos = next;
      continue;
    }
    if (!same_on(a, b, Gpa{pos})) {
      if (!out.empty() && out.back().gpa + out.back().size == Gpa{pos}) {
        out.back().size += next - pos;
      } else {
        MappingDiff d{Gpa{pos}, next - pos, std::nullopt, std::nullopt};
        if (a != nullptr) d.a = *a;
        if (b != nullptr) d.b = *b;
        out.push_back(d);
      }
    }
    pos = next;
  }
  return out;
}

bool MappingSet::is_subset_of(const MappingSet& o) const {
  for (const MappingRun& r : runs_) {
    std::uint64_t pos = r.gpa.value;
    while (pos < r.end().value) {
      auto other = o.lookup(Gpa{pos});
      if (!other || !same_on(&r, &*other, Gpa{pos})) return false;
      pos = std::min(r.end().value, other->end().value);
    }
  }
  return true;
}

std::string describe(const MappingRun& r) {
  char buf[200];
  if (r.kind == RunKind::kMapped) {
    std::snprintf(buf, sizeof buf, "gpa 0x%012llx-0x%012llx -> hpa 0x%012llx  %s %s%s",
                  static_cast<unsigned long long>(r.gpa.value), static_cast<unsigned long long>(r.end().value - 1),
                  static_cast<unsigned long long>(r.hpa.value), to_string(r.perms).c_str(),
                  memtype_name(r.memtype).c_str(), r.ipat ? " ipat" : "");
  } else {
    std::snprintf(buf, sizeof buf, "gpa 0x%012llx-0x%012llx    %s", static_cast<unsigned long long>(r.gpa.value),
                  static_cast<unsigned long long>(r.end().value - 1), to_string(r.kind));
  }
  return buf;
}

}  // namespace baton::model
