// MappingSet: the normal form is page-size independent, ignores A/D, and agrees with walks.
#include <catch2/catch.hpp>

#include "baton/model/ept_builder.hpp"
#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "random_tree.hpp"

using namespace baton::model;

namespace {
struct Tree {
  FrameStore mem;
  std::uint64_t next;
  EptBuilder b;
  explicit Tree(std::uint64_t first_table = 0x100) : next(first_table), b(mem, [this] { return Hfn{next++}; }) {}
  MappingSet normal() const {
    auto m = MappingSet::from_tree(b.eptp(true), mem);
    REQUIRE(m.ok());
    return *m;
  }
};
constexpr Perms kRwx{true, true, true};
}  // namespace

TEST_CASE("a 2 MiB leaf and the same range in 512 4 KiB leaves normalise to the same run") {
  Tree big, small(0x900);
  REQUIRE(big.b.map_leaf(Gpa{0x200000}, Hpa{0x40000000}, 2, kRwx).ok());
  REQUIRE(small.b.map_range(Gpa{0x200000}, Hpa{0x40000000}, 0x200000, kRwx, 1).ok());
  const MappingSet a = big.normal(), b = small.normal();
  CHECK(a.runs().size() == 1);
  CHECK(a == b);
  CHECK(a.diff(b).empty());
}

TEST_CASE("a 1 GiB leaf equals the same range split into 2 MiB and 4 KiB leaves") {
  Tree big, mixed(0x900);
  REQUIRE(big.b.map_leaf(Gpa{1ull << 30}, Hpa{4ull << 30}, 3, kRwx).ok());
  REQUIRE(mixed.b.map_range(Gpa{1ull << 30}, Hpa{4ull << 30}, 0x200000, kRwx, 1).ok());
  REQUIRE(mixed.b.map_range(Gpa{(1ull << 30) + 0x200000}, Hpa{(4ull << 30) + 0x200000}, (1ull << 30) - 0x200000, kRwx, 2).ok());
  CHECK(big.normal() == mixed.normal());
}

TEST_CASE("accessed, dirty and ignored bits make no difference to the normal form") {
  Tree a, b(0x900);
  REQUIRE(a.b.map_range(Gpa{0}, Hpa{0x100000000}, 0x400000, kRwx, 1).ok());
  REQUIRE(b.b.map_range(Gpa{0}, Hpa{0x100000000}, 0x400000, kRwx, 1).ok());
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) {
    const Gpa g{(rng() % 1024) * 4096};
    const unsigned level = 1 + static_cast<unsigned>(rng() % 4);
    auto addr = b.b.entry_addr(g, level);
    REQUIRE(addr.ok());
    std::uint64_t raw = 0;
    b.mem.read_u64(*addr, &raw);
    static const unsigned kNoise[] = {8, 9, 11, 52, 53, 62};
    unsigned bit = kNoise[rng() % 6];
    if (level != 1 && bit == 9) bit = 8;  // D is ignored only... and harmless everywhere: keep A for tables
    b.mem.write_u64(*addr, raw ^ (1ull << bit));
  }
  CHECK(a.normal() == b.normal());
}

TEST_CASE("a different frame, permission or memory type on one page is a one-page diff") {
  Tree a, b(0x900);
  REQUIRE(a.b.map_range(Gpa{0}, Hpa{0x100000000}, 0x200000, kRwx, 1).ok());
  REQUIRE(b.b.map_range(Gpa{0}, Hpa{0x100000000}, 0x200000, kRwx, 1).ok());
  SECTION("frame") { REQUIRE(b.b.set_entry(Gpa{0x5000}, 1, EptEntry::leaf(1, Hpa{0x100006000}, kRwx)).ok()); }
  SECTION("permission") { REQUIRE(b.b.set_entry(Gpa{0x5000}, 1, EptEntry::leaf(1, Hpa{0x100005000}, Perms{true, false, true})).ok()); }
  SECTION("memory type") { REQUIRE(b.b.set_entry(Gpa{0x5000}, 1, EptEntry::leaf(1, Hpa{0x100005000}, kRwx, 0)).ok()); }
  SECTION("unmapped") { REQUIRE(b.b.unmap(Gpa{0x5000})); }
  const auto d = a.normal().diff(b.normal());
  REQUIRE(d.size() == 1);
  CHECK(d[0].gpa == Gpa{0x5000});
  CHECK(d[0].size == 0x1000);
  CHECK_FALSE(a.normal() == b.normal());
}

TEST_CASE("a lazily filled tree is a subset of the full tree, and not the other way round") {
  Tree full, lazy(0x900);
  REQUIRE(full.b.map_range(Gpa{0}, Hpa{0x100000000}, 0x400000, kRwx, 1).ok());
  for (std::uint64_t g : {0x1000ull, 0x3000ull, 0x201000ull})
    REQUIRE(lazy.b.map_leaf(Gpa{g}, Hpa{0x100000000 + g}, 1, kRwx).ok());
  CHECK(lazy.normal().is_subset_of(full.normal()));
  CHECK_FALSE(full.normal().is_subset_of(lazy.normal()));
  REQUIRE(lazy.b.map_leaf(Gpa{0x2000}, Hpa{0x100003000}, 1, kRwx).ok());  // wrong frame
  CHECK_FALSE(lazy.normal().is_subset_of(full.normal()));
}

TEST_CASE("misconfigured MMIO entries are their own outcome in the normal form") {
  Tree t;
  REQUIRE(t.b.set_entry(Gpa{0xFEE00000}, 1, EptEntry{0x6}).ok());
  const MappingSet m = t.normal();
  REQUIRE(m.runs().size() == 1);
  CHECK(m.runs()[0].kind == RunKind::kMisconfig);
  CHECK(m.lookup(Gpa{0xFEE00010})->kind == RunKind::kMisconfig);
  CHECK_FALSE(m.lookup(Gpa{0xFEE01000}).has_value());
}

TEST_CASE("a table pointing to itself or an ancestor is followed as the walker does (legal per the SDM)") {
  Tree t;
  REQUIRE(t.b.map_leaf(Gpa{0x1000}, Hpa{0x2000}, 1, kRwx).ok());
  std::uint64_t probe = 0;
  SECTION("self") {
    REQUIRE(t.b.set_entry(Gpa{1ull << 39}, 4, EptEntry::table(t.b.root(), kRwx)).ok());
    probe = (1ull << 39) | (1ull << 30);  // through the root read as a PDPT
  }
  SECTION("ancestor") {
    // The PDPT entry for gpa 2 GiB points back to the PML4.
    REQUIRE(t.b.set_entry(Gpa{0x40000000 * 2ull}, 3, EptEntry::table(t.b.root(), kRwx)).ok());
    probe = 0x40000000 * 2ull + 0x1000;
  }
  auto m = MappingSet::from_tree(t.b.eptp(true), t.mem);
  REQUIRE(m.ok());
  const WalkResult w = walk(t.b.eptp(true), Gpa{probe}, Access::kRead, t.mem);
  auto r = m->lookup(Gpa{probe});
  CHECK(r.has_value() == (w.kind == WalkKind::kTranslated || w.kind == WalkKind::kMisconfig));
  if (w.kind == WalkKind::kTranslated) CHECK(r->hpa_at(Gpa{probe}) == w.hpa);
}

TEST_CASE("overlapping runs are rejected when building a set from runs") {
  std::vector<MappingRun> runs{{Gpa{0}, 0x2000, RunKind::kMapped, Hpa{0}, Perms{true, false, false}, 6, false},
                               {Gpa{0x1000}, 0x1000, RunKind::kMapped, Hpa{0x1000}, Perms{true, false, false}, 6, false}};
  CHECK_FALSE(MappingSet::from_runs(runs).ok());
  runs[1].gpa = Gpa{0x2000};
  runs[1].hpa = Hpa{0x2000};
  auto m = MappingSet::from_runs(runs);
  REQUIRE(m.ok());
  CHECK(m->runs().size() == 1);  // coalesced
}

TEST_CASE("point lookup in the normal form agrees with the walker on random trees") {
  for (std::uint64_t seed = 100; seed < 140; ++seed) {
    const auto t = baton::testing::make_random_tree(seed);
    auto m = MappingSet::from_tree(t.eptp, t.mem);
    REQUIRE(m.ok());
    std::mt19937_64 rng(seed);
    for (int i = 0; i < 2000; ++i) {
      const Gpa g{rng() % t.window};
      const WalkResult w = walk(t.eptp, g, Access::kRead, t.mem);
      const auto r = m->lookup(g);
      INFO("seed " << seed << " gpa 0x" << std::hex << g.value);
      if (w.kind == WalkKind::kMisconfig) {
        REQUIRE(r.has_value());
        CHECK(r->kind == RunKind::kMisconfig);
      } else if (w.leaf_level != 0 && w.perms.bits() != 0) {
        REQUIRE(r.has_value());
        CHECK(r->kind == RunKind::kMapped);
        CHECK(r->hpa_at(g) == w.hpa);
        CHECK(r->perms == w.perms);
        CHECK(r->memtype == w.memtype);
      } else {
        CHECK_FALSE(r.has_value());
      }
    }
  }
}

TEST_CASE("splitting random large leaves into small ones keeps the normal form") {
  for (std::uint64_t seed = 200; seed < 220; ++seed) {
    std::mt19937_64 rng(seed);
    Tree a, b(0x10000);
    for (int i = 0; i < 30; ++i) {
      const unsigned level = 2 + static_cast<unsigned>(rng() % 2);
      const std::uint64_t span = level_span(level);
      const Gpa g{(rng() % 8) * span};
      const Hpa h{(rng() % 64) * span};
      const Perms p = Perms::from_bits(static_cast<unsigned>(1 + rng() % 7) | 1);
      if (walk(a.b.eptp(true), g, Access::kRead, a.mem).translated()) continue;  // keep both trees in step
      if (!a.b.map_leaf(g, h, level, p).ok()) continue;
      REQUIRE(b.b.map_range(g, h, span, p, level - 1 - (rng() % (level - 1))).ok());
    }
    INFO("seed " << seed);
    CHECK(a.normal() == b.normal());
    CHECK(a.normal().diff(b.normal()).empty());
  }
}

TEST_CASE("diff lists exactly the addresses whose walks differ on random mutated trees") {
  int compared = 0, differing = 0;
  for (std::uint64_t seed = 300; seed < 320; ++seed) {
    auto t = baton::testing::make_random_tree(seed);
    FrameStore mutated = t.mem;
    std::mt19937_64 rng(seed);
    // Flip one bit that the walk reads (R/W/X, memory type, ignore-PAT, page size, address)
    // of a present entry on the walk of a GPA that translates, so that most flips change some
    // translation (a random frame may hold a table that no walk reaches any more).
    Hpa at{0};
    std::uint64_t raw = 0;
    for (int tries = 0; tries < 100000 && raw == 0; ++tries) {
      const WalkResult w = walk(t.eptp, Gpa{rng() % t.window}, Access::kRead, t.mem);
      if (!w.translated()) continue;
      at = w.path[rng() % w.path_len].entry_addr;
      mutated.read_u64(at, &raw);
    }
    REQUIRE(raw != 0);
    static const unsigned kBits[] = {0, 1, 2, 3, 4, 5, 6, 7, 12, 13, 20, 21, 30, 31, 39, 45};
    const unsigned bit = kBits[rng() % std::size(kBits)];
    mutated.write_u64(at, raw ^ (1ull << bit));
    auto ma = MappingSet::from_tree(t.eptp, t.mem);
    auto mb = MappingSet::from_tree(t.eptp, mutated);
    REQUIRE(ma.ok());  // the unmutated tree always normalises
    if (!mb.ok()) continue;  // a flip may create a cycle: covered elsewhere
    ++compared;
    const auto d = ma->diff(*mb);
    differing += !d.empty();
    // Whether both normal forms give `g` the same outcome.
    auto same_at = [&](Gpa g) {
      const auto ra = ma->lookup(g), rb = mb->lookup(g);
      return (!ra && !rb) ||
             (ra && rb && ra->same_outcome_shape(*rb) && (ra->kind != RunKind::kMapped || ra->hpa_at(g) == rb->hpa_at(g)));
    };
    INFO("seed " << seed << " bit " << bit << " entry at hpa 0x" << std::hex << at.value);
    for (int i = 0; i < 2000; ++i) {
      const Gpa g{rng() % t.window};
      bool in_diff = false;
      for (const auto& x : d) in_diff = in_diff || (g >= x.gpa && g < x.gpa + x.size);
      INFO("gpa 0x" << std::hex << g.value);
      CHECK(in_diff == !same_at(g));
    }
    // Both ends of every listed range really differ.
    for (const auto& x : d) {
      INFO("diff range 0x" << std::hex << x.gpa.value << " size 0x" << x.size);
      CHECK_FALSE(same_at(x.gpa));
      CHECK_FALSE(same_at(x.gpa + (x.size - 1)));
    }
  }
  // Most seeds were compared (not skipped as cycles), and most flips really changed a mapping.
  CHECK(compared >= 15);
  CHECK(differing >= 10);
}
