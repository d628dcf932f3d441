// MappingSet::from_tree follows walks (SDM: four bounded steps), so tables that point back at
// themselves or at an ancestor are legal and normalise to what the walker gives; shared
// subtrees cost once, and a tree expressing too many runs fails with one line.
#include <catch2/catch.hpp>
#include <random>

#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/snapshot.hpp"
#include "random_tree.hpp"

using namespace baton::model;

namespace {
// The outcome the normal form gives a GPA, in the walker's terms: (translated?, hpa, perms).
struct Seen {
  bool mapped = false, misconfig = false, unknown = false;
  std::uint64_t hpa = 0;
  unsigned perms = 0;
  friend bool operator==(const Seen&, const Seen&) = default;
};

// What the walker says about a GPA, normalised like MappingSet (empty permissions = not mapped).
Seen by_walk(Eptp eptp, const FrameStore& mem, std::uint64_t g) {
  const WalkResult w = walk(eptp, Gpa{g}, Access::kRead, mem);
  Seen s;
  switch (w.kind) {
    case WalkKind::kMisconfig: s.misconfig = true; return s;
    case WalkKind::kAbsentFrame: s.unknown = true; return s;
    case WalkKind::kViolation:
      if (w.leaf_level == 0 || w.perms.bits() == 0) return s;
      break;
    case WalkKind::kTranslated: break;
  }
  if (w.perms.bits() == 0) return s;
  s.mapped = true;
  s.hpa = w.hpa.value;
  s.perms = w.perms.bits();
  return s;
}

// What the normal form says about a GPA.
Seen by_set(const MappingSet& m, std::uint64_t g) {
  Seen s;
  auto r = m.lookup(Gpa{g});
  if (!r) return s;
  if (r->kind == RunKind::kMisconfig) s.misconfig = true;
  if (r->kind == RunKind::kUnknown) s.unknown = true;
  if (r->kind == RunKind::kMapped) {
    s.mapped = true;
    s.hpa = r->hpa_at(Gpa{g}).value;
    s.perms = r->perms.bits();
  }
  return s;
}

// Collects the table frames of a tree (the root and every table entry's target, any level).
std::vector<Hfn> tables_of(const baton::testing::RandomTree& t) {
  std::vector<Hfn> out;
  for (Hfn f : t.mem.frames())
    if (f.value >= ((std::uint64_t{16} << 30) >> kPageShift)) out.push_back(f);
  return out;
}
}  // namespace

TEST_CASE("from_tree agrees with the walker on random trees whose tables point back up the tree") {
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    CAPTURE(seed);
    baton::testing::RandomTree t = baton::testing::make_random_tree(seed);
    std::mt19937_64 rng(seed * 77);
    const std::vector<Hfn> tables = tables_of(t);
    REQUIRE(!tables.empty());
    // Point a few free entries of random tables at random tables (the root included): cycles,
    // self-references and shared subtrees, all legal.
    const unsigned links = 1 + static_cast<unsigned>(rng() % 3);
    std::vector<std::uint64_t> probes;
    for (unsigned k = 0; k < links; ++k) {
      const Hfn from = tables[rng() % tables.size()];
      const Hfn to = rng() % 2 == 0 ? t.eptp.root() : tables[rng() % tables.size()];
      const unsigned index = 400 + static_cast<unsigned>(rng() % 112);
      t.mem.write_u64(hpa_of(from) + index * 8ull, EptEntry::table(to, Perms::from_bits(1 + rng() % 7)).raw());
    }
    auto m = MappingSet::from_tree(t.eptp, t.mem);
    REQUIRE(m.ok());
    // Probe around every run boundary and at random GPAs, including the high indexes the new
    // links cover.
    for (const MappingRun& r : m->runs()) {
      probes.push_back(r.gpa.value);
      probes.push_back(r.end().value - 1);
      probes.push_back(r.end().value);
    }
    for (int i = 0; i < 3000; ++i) {
      const unsigned idx4 = rng() % 2 == 0 ? 0 : 400 + static_cast<unsigned>(rng() % 112);
      probes.push_back((std::uint64_t{idx4} << 39) | (rng() & ((std::uint64_t{1} << 39) - 1)));
    }
    for (std::uint64_t g : probes) {
      if (g >= (std::uint64_t{1} << 48)) continue;
      CAPTURE(g);
      REQUIRE(by_set(*m, g) == by_walk(t.eptp, t.mem, g));
    }
  }
}

TEST_CASE("a self-referencing PML4 normalises; the table frame itself appears as mapped memory") {
  FrameStore mem;
  const Hfn root{0x500}, pdpt{0x501};
  mem.write_u64(hpa_of(root), EptEntry::table(pdpt, Perms{true, true, true}).raw());
  mem.write_u64(hpa_of(root) + 511 * 8, EptEntry::table(root, Perms{true, true, true}).raw());
  mem.write_u64(hpa_of(pdpt), EptEntry::leaf(3, Hpa{std::uint64_t{4} << 30}, Perms{true, true, true}).raw());
  const Eptp eptp = Eptp::make(root, false);
  TreeStats st;
  auto m = MappingSet::from_tree(eptp, mem, {}, &st);
  REQUIRE(m.ok());
  // GPA 0xff7f_ffff_f000: indexes 511, 511, 511, 511 -> the root read as a page table, entry 511,
  // a 4 KiB leaf onto the root frame itself.
  const std::uint64_t g = 0xfffffffff000ull;
  CHECK(by_set(*m, g) == by_walk(eptp, mem, g));
  CHECK(by_set(*m, g).hpa == hpa_of(root).value);
  CHECK(st.tables >= 4);
}

TEST_CASE("shared subtrees are normalised once: 511 back-pointers fail fast with one line, not by exhaustion") {
  FrameStore mem;
  const Hfn root{0x500}, pdpt{0x501};
  mem.write_u64(hpa_of(root), EptEntry::table(pdpt, Perms{true, true, true}).raw());
  for (unsigned i = 1; i < 512; ++i)
    mem.write_u64(hpa_of(root) + i * 8ull, EptEntry::table(root, Perms{true, true, true}).raw());
  mem.write_u64(hpa_of(pdpt), EptEntry::leaf(3, Hpa{std::uint64_t{4} << 30}, Perms{true, true, true}).raw());
  auto m = MappingSet::from_tree(Eptp::make(root, false), mem, {}, nullptr, std::uint64_t{1} << 20);
  REQUIRE_FALSE(m.ok());
  CHECK_THAT(m.error().message, Catch::Contains("more than 1048576 runs"));
  // The same shape whose repeated part normalises to nothing is cheap and fine: every PML4E
  // points at one PDPT whose only entries point at one empty PD.
  FrameStore e;
  const Hfn r2{0x600}, p2{0x601}, d2{0x602};
  for (unsigned i = 0; i < 512; ++i) {
    e.write_u64(hpa_of(r2) + i * 8ull, EptEntry::table(p2, Perms{true, true, true}).raw());
    e.write_u64(hpa_of(p2) + i * 8ull, EptEntry::table(d2, Perms{true, true, true}).raw());
  }
  e.frame_mut(d2);
  TreeStats st;
  auto n = MappingSet::from_tree(Eptp::make(r2, false), e, {}, &st);
  REQUIRE(n.ok());
  CHECK(n->runs().empty());
  CHECK(st.tables == 1 + 512 + 512 * 512);  // counted with multiplicity, computed once
}

TEST_CASE("collect_tables keeps a page first reached as a page table when a walk also reads it higher up") {
  // root[0] -> PDPT[0] -> PD[0] -> PT (level 1); root[1] -> PT read as a PDPT: PT[0] -> X at
  // level 2. X must be kept, or a walk through it would look absent offline.
  FrameStore mem;
  const Hfn root{0x500}, pdpt{0x501}, pd{0x502}, pt{0x503}, x{0x504};
  const Perms rwx{true, true, true};
  mem.write_u64(hpa_of(root), EptEntry::table(pdpt, rwx).raw());
  mem.write_u64(hpa_of(pdpt), EptEntry::table(pd, rwx).raw());
  mem.write_u64(hpa_of(pd), EptEntry::table(pt, rwx).raw());
  mem.write_u64(hpa_of(pt), EptEntry::table(x, rwx).raw());  // at level 1: a 4 KiB leaf onto frame x
  mem.write_u64(hpa_of(root) + 8, EptEntry::table(pt, rwx).raw());
  mem.frame_mut(x);
  FrameStore out;
  collect_tables(Eptp::make(root, false), mem, {}, out);
  CHECK(out.contains(pt));
  CHECK(out.contains(x));
}
