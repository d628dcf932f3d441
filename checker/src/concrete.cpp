// The concrete cross-check: every tree property decided from MappingSet normal forms and
// direct comparison, with no Z3 and none of the decomposition code.
#include "baton/checker/concrete.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>

namespace baton::checker {

using model::MappingRun;
using model::MappingSet;
using model::RunKind;

namespace {

// The first GPA a 4-level walk cannot reach: 2^min(MAXPHYADDR, 48).
std::uint64_t limit_of(const TreeRef& t) { return std::uint64_t{1} << std::min(t.cfg.maxphyaddr, 48u); }

// A failing verdict at `gpa`.
ConcreteVerdict fails(std::uint64_t gpa, std::string detail) {
  return ConcreteVerdict{false, model::Gpa{gpa}, std::move(detail)};
}

// Returns an error when the tree cannot be read at all.
Result<void> usable(const TreeRef& t) {
  if (t.mem == nullptr) return make_error(t.name + ": no memory");
  if (t.eptp.raw() == 0) return make_error(t.name + ": no EPTP");
  return ok_result();
}

// The first run of kind unknown, if any.
const MappingRun* first_unknown(const MappingSet& s) {
  for (const MappingRun& r : s.runs())
    if (r.kind == RunKind::kUnknown) return &r;
  return nullptr;
}

// Returns whether two runs give one GPA the same outcome.
bool same_at(const MappingRun& a, const MappingRun& b, model::Gpa g) {
  if (a.kind != b.kind || a.kind == RunKind::kUnknown) return false;
  if (a.kind != RunKind::kMapped) return true;
  return a.perms == b.perms && a.memtype == b.memtype && a.ipat == b.ipat && a.hpa_at(g) == b.hpa_at(g);
}

// Checks that a mapped run lies in memslots at their offsets with allowed permissions.
std::optional<ConcreteVerdict> run_conforms(const MappingRun& r, const std::vector<model::Memslot>& slots) {
  std::uint64_t pos = r.gpa.value;
  while (pos < r.end().value) {
    const model::Memslot* s = model::find_memslot(slots, model::Gpa{pos});
    if (s == nullptr) return fails(pos, "mapped outside every memslot: " + describe(r));
    if (s->hpa_at(model::Gpa{pos}) != r.hpa_at(model::Gpa{pos})) return fails(pos, "wrong host offset: " + describe(r));
    if (!r.perms.subset_of(s->max_perms())) return fails(pos, "permissions beyond the slot's: " + describe(r));
    pos = std::min(r.end().value, s->end().value);
  }
  return std::nullopt;
}

// The R/W/X bits the memslots intersecting [base, base + size) allow, ORed.
unsigned needed(const std::vector<model::Memslot>& slots, std::uint64_t base, std::uint64_t size) {
  unsigned p = 0;
  for (const model::Memslot& s : slots)
    if (s.gpa.value < base + size && base < s.end().value) p |= s.max_perms().bits();
  return p;
}

// Reads entry `i` of a table page.
std::uint64_t entry_of(const std::uint8_t* page, unsigned i) {
  std::uint64_t raw;
  std::memcpy(&raw, page + std::size_t{i} * 8, 8);
  return raw;
}

using TableMemo = std::map<std::pair<std::uint64_t, unsigned>, unsigned>;

// The AND of the R/W/X bits of every table entry in the page at `level` and below (0 when a
// frame is absent), memoised per (frame, level); the level falls at each step, so cycles end.
unsigned tables_below(const TreeRef& t, model::Hfn h, unsigned level, TableMemo& memo) {
  if (auto it = memo.find({h.value, level}); it != memo.end()) return it->second;
  const std::uint8_t* p = t.mem->frame(h);
  unsigned r = p == nullptr ? 0 : 7;
  for (unsigned i = 0; p != nullptr && level > 1 && i < 512; ++i) {
    const model::EptEntry e{entry_of(p, i)};
    if (e.classify(level, t.cfg) == model::EntryKind::kTable)
      r &= e.perms().bits() & tables_below(t, e.table_hfn(), level - 1, memo);
  }
  memo.emplace(std::make_pair(h.value, level), r);
  return r;
}

// Finds a GPA in a memslot whose walk ends below table entries that allow less than the slot
// (SDM §29.3.3: permissions AND down the walk, so no leaf can give the rest back). Only the
// entries that cover some memslot are visited.
std::optional<ConcreteVerdict> narrowed_below(const TreeRef& t, const std::vector<model::Memslot>& slots, model::Hfn h,
                                              unsigned level, std::uint64_t base, unsigned ctx, std::uint64_t limit,
                                              TableMemo& memo) {
  const std::uint8_t* p = t.mem->frame(h);
  if (p == nullptr) return std::nullopt;  // an absent frame: the normal form reports it
  const std::uint64_t span = model::level_span(level);
  for (unsigned i = 0; i < 512; ++i) {
    const std::uint64_t g = base + i * span;
    if (g >= limit) break;
    const unsigned need = needed(slots, g, span);
    if (need == 0) continue;
    const model::EptEntry e{entry_of(p, i)};
    if (e.classify(level, t.cfg) == model::EntryKind::kTable) {
      const unsigned below = ctx & e.perms().bits();
      if ((need & ~(below & tables_below(t, e.table_hfn(), level - 1, memo))) == 0) continue;
      if (auto bad = narrowed_below(t, slots, e.table_hfn(), level - 1, g, below, limit, memo)) return bad;
      continue;
    }
    if ((need & ~ctx) == 0) continue;
    for (const model::Memslot& s : slots)
      if (s.gpa.value < g + span && g < s.end().value && (s.max_perms().bits() & ~ctx) != 0)
        return fails(std::max(g, s.gpa.value), "memslot " + std::to_string(s.id) +
                                                   " allows more than the table entries above its walk (" +
                                                   model::to_string(model::Perms::from_bits(ctx)) + ")");
  }
  return std::nullopt;
}

// The non-leaf clause of conformance over the whole tree.
std::optional<ConcreteVerdict> narrowed_tables(const TreeRef& t, const std::vector<model::Memslot>& slots) {
  TableMemo memo;
  return narrowed_below(t, slots, t.eptp.root(), 4, 0, 7, limit_of(t), memo);
}

}  // namespace

Result<MappingSet> normal_form(const TreeRef& t) {
  BATON_TRY_VOID(usable(t));
  auto full = MappingSet::from_tree(t.eptp, *t.mem, t.cfg);
  if (!full) return full.error();
  const std::uint64_t limit = limit_of(t);
  MappingSet out;
  for (MappingRun r : full->runs()) {
    if (r.gpa.value >= limit) break;
    r.size = std::min(r.size, limit - r.gpa.value);
    out.append(r);
  }
  return out;
}

Result<ConcreteVerdict> concrete_equivalence(const TreeRef& a, const TreeRef& b) {
  auto na = normal_form(a);
  if (!na) return na.error();
  auto nb = normal_form(b);
  if (!nb) return nb.error();
  std::optional<ConcreteVerdict> worst;
  auto consider = [&](std::uint64_t gpa, std::string d) {
    if (!worst || gpa < worst->witness->value) worst = fails(gpa, std::move(d));
  };
  if (const MappingRun* u = first_unknown(*na)) consider(u->gpa.value, a.name + " reaches an absent table frame");
  if (const MappingRun* u = first_unknown(*nb)) consider(u->gpa.value, b.name + " reaches an absent table frame");
  const auto diffs = na->diff(*nb);
  if (!diffs.empty()) consider(diffs.front().gpa.value, "outcomes differ");
  if (worst) return *worst;
  return ConcreteVerdict{};
}

Result<ConcreteVerdict> concrete_refinement(const TreeRef& before, const TreeRef& after,
                                            const std::vector<model::Memslot>& spec) {
  auto na = normal_form(before);
  if (!na) return na.error();
  auto nb = normal_form(after);
  if (!nb) return nb.error();
  if (auto bad = narrowed_tables(after, spec)) return *bad;
  for (const MappingRun& r : nb->runs()) {
    if (r.kind == RunKind::kUnknown) return fails(r.gpa.value, after.name + " reaches an absent table frame");
    std::uint64_t pos = r.gpa.value;
    while (pos < r.end().value) {
      auto o = na->lookup(model::Gpa{pos});
      if (!o || !same_at(*o, r, model::Gpa{pos}))
        return fails(pos, after.name + " maps what " + before.name + " does not: " + describe(r));
      pos = std::min(r.end().value, o->end().value);
    }
    if (r.kind == RunKind::kMapped)
      if (auto bad = run_conforms(r, spec)) return *bad;
  }
  return ConcreteVerdict{};
}

Result<ConcreteVerdict> concrete_conformance(const TreeRef& t, const std::vector<model::Memslot>& slots) {
  auto n = normal_form(t);
  if (!n) return n.error();
  if (auto bad = narrowed_tables(t, slots)) return *bad;
  for (const MappingRun& r : n->runs()) {
    if (r.kind == RunKind::kUnknown) return fails(r.gpa.value, "reaches an absent table frame");
    if (r.kind == RunKind::kMapped)
      if (auto bad = run_conforms(r, slots)) return *bad;
  }
  return ConcreteVerdict{};
}

namespace {
// Visits every table frame the walks read (the root and each table entry's target), depth-first,
// and reports the first one that is not an EPT table of `vm`, with a GPA whose walk reads it. A
// (frame, level) already visited is not visited again: its answer does not depend on the GPA.
std::optional<ConcreteVerdict> bad_table_frame(const TreeRef& t, const model::OwnerMap& owners, std::uint32_t vm,
                                               model::Hfn h, unsigned level, std::uint64_t base, std::uint64_t limit,
                                               std::set<std::pair<std::uint64_t, unsigned>>& seen) {
  if (!seen.emplace(h.value, level).second) return std::nullopt;
  const model::OwnerRange o = owners.owner_of(h);
  if (o.kind != model::OwnerKind::kEptTable || o.vm != vm) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "level-%u table frame 0x%llx is owned by %s (vm %u)", level,
                  static_cast<unsigned long long>(h.value), model::to_string(o.kind), o.vm);
    return fails(base, buf);
  }
  const std::uint8_t* p = t.mem->frame(h);
  if (p == nullptr || level == 1) return std::nullopt;
  for (unsigned i = 0; i < 512; ++i) {
    const std::uint64_t g = base + i * model::level_span(level);
    if (g >= limit) break;
    std::uint64_t raw;
    std::memcpy(&raw, p + std::size_t{i} * 8, 8);
    const model::EptEntry e{raw};
    if (e.classify(level, t.cfg) != model::EntryKind::kTable) continue;
    if (auto bad = bad_table_frame(t, owners, vm, e.table_hfn(), level - 1, g, limit, seen)) return bad;
  }
  return std::nullopt;
}
}  // namespace

Result<ConcreteVerdict> concrete_isolation(const TreeRef& t, const model::OwnerMap& owners, std::uint32_t vm) {
  auto n = normal_form(t);
  if (!n) return n.error();
  std::optional<ConcreteVerdict> worst;
  auto consider = [&](ConcreteVerdict v) {
    if (!worst || v.witness->value < worst->witness->value) worst = std::move(v);
  };
  std::set<std::pair<std::uint64_t, unsigned>> seen;
  if (auto bad = bad_table_frame(t, owners, vm, t.eptp.root(), 4, 0, limit_of(t), seen)) consider(*bad);
  std::vector<MappingRun> mapped;
  for (const MappingRun& r : n->runs()) {
    if (r.kind == RunKind::kUnknown) {
      consider(fails(r.gpa.value, "reaches an absent table frame"));
      continue;
    }
    if (r.kind != RunKind::kMapped) continue;
    mapped.push_back(r);
    std::uint64_t off = 0;
    while (off < r.size) {
      const model::OwnerRange o = owners.owner_of(model::hfn_of(r.hpa + off));
      if (o.kind != model::OwnerKind::kGuestRam || o.vm != vm) {
        consider(fails(r.gpa.value + off, std::string("maps a frame owned by ") + model::to_string(o.kind)));
        break;
      }
      off = model::hpa_of(o.end()).value - r.hpa.value;
    }
  }
  std::sort(mapped.begin(), mapped.end(), [](const MappingRun& x, const MappingRun& y) { return x.hpa < y.hpa; });
  for (std::size_t i = 1; i < mapped.size(); ++i) {
    if (mapped[i].hpa < mapped[i - 1].hpa + mapped[i - 1].size) {
      consider(fails(std::min(mapped[i].gpa.value, mapped[i - 1].gpa.value + (mapped[i].hpa - mapped[i - 1].hpa)),
                     "two guest ranges map the same host frames"));
      break;
    }
  }
  if (worst) return *worst;
  return ConcreteVerdict{};
}

Result<ConcreteVerdict> concrete_wellformed(const TreeRef& t, const std::vector<model::GpaRange>& mmio) {
  BATON_TRY_VOID(usable(t));
  if (std::string why = t.eptp.validate(t.cfg); !why.empty()) return ConcreteVerdict{false, std::nullopt, why};
  auto n = normal_form(t);
  if (!n) return n.error();
  for (const MappingRun& r : n->runs()) {
    if (r.kind == RunKind::kUnknown) return fails(r.gpa.value, "reaches an absent table frame");
    if (r.kind != RunKind::kMisconfig) continue;
    std::uint64_t pos = r.gpa.value;
    while (pos < r.end().value) {
      const model::GpaRange* in = nullptr;
      for (const model::GpaRange& m : mmio)
        if (m.contains(model::Gpa{pos})) in = &m;
      if (in == nullptr) return fails(pos, "misconfigured outside every MMIO range");
      pos = std::min(r.end().value, in->end().value);
    }
  }
  return ConcreteVerdict{};
}

}  // namespace baton::checker
