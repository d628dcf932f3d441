// MappingSet: normalisation of an EPT tree into coalesced runs, and set operations on runs.
#include "baton/model/mapping_set.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_map>

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
// Adds b to a, saturating at the largest count.
std::uint64_t sat_add(std::uint64_t a, std::uint64_t b) { return a + b < a ? ~std::uint64_t{0} : a + b; }

// Adds the counts of `b` to `a`, saturating.
void add_stats(TreeStats& a, const TreeStats& b) {
  a.tables = sat_add(a.tables, b.tables);
  for (int i = 0; i < 4; ++i) a.leaves[i] = sat_add(a.leaves[i], b.leaves[i]);
  a.misconfigured = sat_add(a.misconfigured, b.misconfigured);
  a.absent_frames = sat_add(a.absent_frames, b.absent_frames);
}

// The key of a table page read at a level: (frame, level).
std::uint64_t node_key(Hfn f, unsigned level) { return (f.value << 3) | level; }

// Depth-first normalisation that follows every walk as the SDM does (four bounded steps, so a
// table pointing back at itself or at an ancestor is simply read again one level lower). A
// table page reached along several walks (shared, or cyclic) is normalised once per inherited
// permission context and its runs are replayed at every other place it is reached.
struct Traversal {
  const PhysicalMemory& mem;
  const EptConfig& cfg;
  std::uint64_t max_runs;
  std::unordered_map<std::uint64_t, std::uint32_t> refs;  // node_key -> table entries that point at it
  struct Memo {
    std::vector<MappingRun> runs;  // relative to GPA 0
    TreeStats stats;
  };
  std::unordered_map<std::uint64_t, Memo> memo;  // (node_key, context) of shared pages
  std::uint64_t stored = 0;                      // runs held in `memo`
  bool over = false;

  // Counts, for every (table page, level) reachable from the root, how many entries point at it.
  void count_refs(Hfn root) {
    std::vector<std::pair<Hfn, unsigned>> todo{{root, 4}};
    refs[node_key(root, 4)] = 1;
    while (!todo.empty()) {
      const auto [f, level] = todo.back();
      todo.pop_back();
      const std::uint8_t* page = mem.frame(f);
      if (page == nullptr || level == 1) continue;
      for (unsigned i = 0; i < 512; ++i) {
        std::uint64_t raw;
        std::memcpy(&raw, page + std::size_t{i} * 8, 8);
        if ((raw & 7) == 0 && !cfg.mode_based_exec) continue;
        const EptEntry e{raw};
        if (e.classify(level, cfg) != EntryKind::kTable) continue;
        if (++refs[node_key(e.table_hfn(), level - 1)] == 1) todo.emplace_back(e.table_hfn(), level - 1);
      }
    }
  }

  // Appends a run to `out`; false (and `over`) once the normal form passes the run limit.
  bool emit(MappingSet& out, const MappingRun& r) {
    out.append(r);
    if (out.runs().size() > max_runs) over = true;
    return !over;
  }

  // Normalises the table at `table` read at `level` into `out`, covering GPAs from `base`.
  bool visit(MappingSet& out, TreeStats& stats, Hfn table, unsigned level, std::uint64_t base, Perms ctx) {
    const std::uint8_t* page = mem.frame(table);
    const std::uint64_t span = level_span(level);
    if (page == nullptr) {
      ++stats.absent_frames;
      return emit(out, MappingRun{Gpa{base}, span * 512, RunKind::kUnknown, Hpa{}, Perms{}, 0, false});
    }
    const auto it = refs.find(node_key(table, level));
    if (it == refs.end() || it->second < 2) return walk_page(out, stats, page, level, base, ctx);
    const std::uint64_t key = (node_key(table, level) << 3) | ctx.bits();
    auto m = memo.find(key);
    if (m == memo.end()) {
      Memo fresh;
      MappingSet sub;
      if (!walk_page(sub, fresh.stats, page, level, 0, ctx)) return false;
      fresh.runs = sub.runs();
      stored += fresh.runs.size();
      if (stored > max_runs) {
        over = true;
        return false;
      }
      m = memo.emplace(key, std::move(fresh)).first;
    }
    add_stats(stats, m->second.stats);
    for (MappingRun r : m->second.runs) {
      r.gpa = Gpa{r.gpa.value + base};
      if (!emit(out, r)) return false;
    }
    return true;
  }

  // Normalises the 512 entries of one table page.
  bool walk_page(MappingSet& out, TreeStats& stats, const std::uint8_t* page, unsigned level, std::uint64_t base,
                 Perms ctx) {
    const std::uint64_t span = level_span(level);
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
          if (!emit(out, MappingRun{Gpa{gpa}, span, RunKind::kMisconfig, Hpa{}, Perms{}, 0, false})) return false;
          break;
        case EntryKind::kTable:
          if (!visit(out, stats, e.table_hfn(), level - 1, gpa, ctx & e.perms())) return false;
          break;
        default: {
          ++stats.leaves[level];
          // A leaf whose effective permissions are empty behaves exactly like a not-present
          // entry (every access faults with bits 5:3 of the qualification clear), so it
          // normalises to nothing.
          const Perms eff = e.perms() & ctx;
          if (eff.bits() != 0 && !emit(out, MappingRun{Gpa{gpa}, span, RunKind::kMapped, e.leaf_base(level), eff,
                                                       static_cast<std::uint8_t>(e.memory_type()), e.ignore_pat()}))
            return false;
          break;
        }
      }
    }
    return true;
  }
};
}  // namespace

Result<MappingSet> MappingSet::from_tree(Eptp eptp, const PhysicalMemory& mem, const EptConfig& cfg, TreeStats* stats,
                                         std::uint64_t max_runs) {
  MappingSet s;
  TreeStats local;
  Traversal t{mem, cfg, max_runs, {}, {}, 0, false};
  t.count_refs(eptp.root());
  if (!t.visit(s, stats != nullptr ? *stats : local, eptp.root(), 4, 0, Perms{true, true, true})) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "the EPT tree's normal form has more than %llu runs (table pages reached along many walks map "
                  "frames at many GPAs); this is baton's limit",
                  static_cast<unsigned long long>(max_runs));
    return make_error(buf);
  }
  return s;
}

bool MappingSet::equal(const MappingSet& o) const {
  for (const MappingRun& r : runs_)
    if (r.kind == RunKind::kUnknown) return false;
  return runs_ == o.runs_;
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
// Returns whether two runs give the same outcome at every address of [lo, hi). An unknown run
// (an absent table frame, which can hold anything) is never the same as anything, not even
// another unknown run: two snapshots' absent frames are independent (docs/checker.md).
bool same_on(const MappingRun* a, const MappingRun* b, Gpa lo) {
  if (a == nullptr || b == nullptr) return a == b;
  if (a->kind == RunKind::kUnknown || b->kind == RunKind::kUnknown) return false;
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
