// The EPT walker against the SDM rules and against an independent reference walker.
#include <catch2/catch.hpp>
#include <cstring>
#include <vector>

#include "baton/model/ept_builder.hpp"
#include "baton/model/ept_walk.hpp"
#include "random_tree.hpp"

using namespace baton::model;

namespace {
// A small fixture: one tree with table frames from 0x100 up.
struct Tree {
  FrameStore mem;
  std::uint64_t next = 0x100;
  EptBuilder b{mem, [this] { return Hfn{next++}; }};
  Eptp eptp(bool ad = true) const { return b.eptp(ad); }
};

// An independent reference walk written straight from the SDM with raw bit arithmetic:
// returns 0 not-mapped/violation, 1 translated (hpa, perms out), 2 misconfigured.
int reference_walk(const PhysicalMemory& mem, std::uint64_t eptp, std::uint64_t gpa, Access acc, std::uint64_t* hpa,
                   unsigned* perms, unsigned maxphy = 46) {
  std::uint64_t table = eptp & 0x000FFFFFFFFFF000ull;
  unsigned and_perms = 7;
  for (int level = 4; level >= 1; --level) {
    const std::uint8_t* page = mem.frame(Hfn{table >> 12});
    if (page == nullptr) return 3;
    std::uint64_t e;
    std::memcpy(&e, page + ((gpa >> (12 + 9 * (level - 1))) & 511) * 8, 8);
    if ((e & 7) == 0) return 0;
    if ((e & 3) == 2) return 2;
    const bool large = (e >> 7) & 1;
    const bool leaf = level == 1 || (large && (level == 2 || level == 3));
    if (level == 4 && large) return 2;
    std::uint64_t reserved = ((std::uint64_t{1} << 52) - 1) & ~((std::uint64_t{1} << maxphy) - 1);
    if (!leaf) reserved |= 0x78;  // bits 6:3
    if (leaf && level == 2) reserved |= 0x1FF000;
    if (leaf && level == 3) reserved |= 0x3FFFF000;
    if (e & reserved) return 2;
    const unsigned mt = (e >> 3) & 7;
    if (leaf && (mt == 2 || mt == 3 || mt == 7)) return 2;
    and_perms &= static_cast<unsigned>(e & 7);
    if (leaf) {
      const std::uint64_t span_mask = (std::uint64_t{1} << (12 + 9 * (level - 1))) - 1;
      *hpa = (e & 0x000FFFFFFFFFF000ull & ~span_mask) | (gpa & span_mask);
      *perms = and_perms;
      const unsigned need = acc == Access::kRead ? 1 : acc == Access::kWrite ? 2 : 4;
      return (and_perms & need) ? 1 : 0;
    }
    table = e & 0x000FFFFFFFFFF000ull;
  }
  return 0;
}
}  // namespace

TEST_CASE("a 4 KiB leaf translates with the page offset kept") {
  Tree t;
  REQUIRE(t.b.map_leaf(Gpa{0x5000}, Hpa{0x9000}, 1, Perms{true, true, true}).ok());
  const WalkResult w = walk(t.eptp(), Gpa{0x5123}, Access::kRead, t.mem);
  REQUIRE(w.kind == WalkKind::kTranslated);
  CHECK(w.hpa == Hpa{0x9123});
  CHECK(w.leaf_level == 1);
  CHECK(w.path_len == 4);
  CHECK(w.memtype == 6);
}

TEST_CASE("2 MiB and 1 GiB leaves translate the low 21 and 30 bits through") {
  Tree t;
  REQUIRE(t.b.map_leaf(Gpa{0x40000000}, Hpa{0x80000000}, 3, Perms{true, false, false}).ok());
  REQUIRE(t.b.map_leaf(Gpa{0x200000}, Hpa{0x600000}, 2, Perms{true, true, false}).ok());
  WalkResult w = walk(t.eptp(), Gpa{0x40000000 + 0x3ABCDEF}, Access::kRead, t.mem);
  REQUIRE(w.translated());
  CHECK(w.hpa == Hpa{0x80000000 + 0x3ABCDEF});
  CHECK(w.leaf_level == 3);
  CHECK(w.path_len == 2);
  w = walk(t.eptp(), Gpa{0x2FFFFF}, Access::kWrite, t.mem);
  REQUIRE(w.translated());
  CHECK(w.hpa == Hpa{0x6FFFFF});
  CHECK(w.leaf_level == 2);
}

TEST_CASE("effective permissions are the AND over all levels") {
  Tree t;
  REQUIRE(t.b.map_leaf(Gpa{0x1000}, Hpa{0x2000}, 1, Perms{true, true, true}).ok());
  // Restrict the PDE (level 2) to read+execute.
  auto pde = t.b.entry_addr(Gpa{0x1000}, 2);
  REQUIRE(pde.ok());
  std::uint64_t raw = 0;
  t.mem.read_u64(*pde, &raw);
  t.mem.write_u64(*pde, (raw & ~7ull) | 0x5);
  WalkResult w = walk(t.eptp(), Gpa{0x1000}, Access::kRead, t.mem);
  REQUIRE(w.translated());
  CHECK(w.perms == Perms{true, false, true});
  w = walk(t.eptp(), Gpa{0x1000}, Access::kWrite, t.mem);
  CHECK(w.kind == WalkKind::kViolation);
  CHECK(w.level == 1);
}

TEST_CASE("a violation's qualification reports the access and the permissions found") {
  Tree t;
  REQUIRE(t.b.map_leaf(Gpa{0x1000}, Hpa{0x2000}, 1, Perms{true, false, true}).ok());
  // Write to a read+execute page: bit 1 (write), bits 3 and 5 (readable, executable), 7, 8.
  WalkResult w = walk(t.eptp(), Gpa{0x1008}, Access::kWrite, t.mem);
  REQUIRE(w.kind == WalkKind::kViolation);
  CHECK(w.qualification == (qual::kWrite | qual::kReadable | qual::kExecutable | qual::kGlaValid | qual::kFinalTranslation));
  // A fetch from a not-present page: bit 2 only, with bits 5:3 clear.
  w = walk(t.eptp(), Gpa{0x7000}, Access::kFetch, t.mem);
  REQUIRE(w.kind == WalkKind::kViolation);
  CHECK(w.level == 1);
  CHECK(w.qualification == (qual::kFetch | qual::kGlaValid | qual::kFinalTranslation));
  // An access to a guest paging-structure entry: bit 7 set, bit 8 clear.
  w = walk(t.eptp(), Gpa{0x7000}, Access::kRead, t.mem, EptConfig{}, AccessContext{true, false});
  CHECK(w.qualification == (qual::kRead | qual::kGlaValid));
  // No guest-linear address (e.g. a walk on behalf of a VM-entry load): bits 7 and 8 clear.
  w = walk(t.eptp(), Gpa{0x7000}, Access::kRead, t.mem, EptConfig{}, AccessContext{false, false});
  CHECK(w.qualification == qual::kRead);
}

TEST_CASE("a not-present upper-level entry stops the walk with a violation at that level") {
  Tree t;
  const WalkResult w = walk(t.eptp(), Gpa{0x123456789000}, Access::kRead, t.mem);
  CHECK(w.kind == WalkKind::kViolation);
  CHECK(w.level == 4);
  CHECK(w.path_len == 1);
}

TEST_CASE("a misconfigured entry anywhere on the path gives a misconfiguration, not a violation") {
  Tree t;
  REQUIRE(t.b.set_entry(Gpa{0xFEE00000}, 1, EptEntry{0x6}).ok());  // KVM's MMIO marker: W+X, no R
  WalkResult w = walk(t.eptp(), Gpa{0xFEE00000}, Access::kRead, t.mem);
  CHECK(w.kind == WalkKind::kMisconfig);
  CHECK(w.level == 1);
  CHECK(w.reason == MisconfigReason::kWriteWithoutRead);
  // Reserved bit in a PDPTE used as a table.
  REQUIRE(t.b.map_leaf(Gpa{0x1000}, Hpa{0x2000}, 1, Perms{true, true, true}).ok());
  auto pdpte = t.b.entry_addr(Gpa{0x1000}, 3);
  REQUIRE(pdpte.ok());
  std::uint64_t raw = 0;
  t.mem.read_u64(*pdpte, &raw);
  t.mem.write_u64(*pdpte, raw | (1ull << 50));
  w = walk(t.eptp(), Gpa{0x1000}, Access::kRead, t.mem);
  CHECK(w.kind == WalkKind::kMisconfig);
  CHECK(w.level == 3);
  CHECK(w.reason == MisconfigReason::kReservedBits);
}

TEST_CASE("every reserved bit of every entry on the path gives a misconfiguration at that level (SDM 29.3.3.1)") {
  // A 4 KiB leaf at gpa 0x1000 makes a path of three table entries and the leaf; a 2 MiB and a
  // 1 GiB leaf elsewhere. MAXPHYADDR 46: bits 51:46 are reserved everywhere.
  struct Case { std::uint64_t gpa; unsigned level; std::vector<unsigned> bits; MisconfigReason why; };
  std::vector<unsigned> high;
  for (unsigned b = 46; b <= 51; ++b) high.push_back(b);
  auto with = [](std::vector<unsigned> v, std::initializer_list<unsigned> more) {
    v.insert(v.end(), more);
    return v;
  };
  const Case cases[] = {
      {0x1000, 4, with(high, {3, 4, 5, 6}), MisconfigReason::kReservedBits},   // PML4E: bits 6:3
      {0x1000, 4, {7}, MisconfigReason::kLargePageAtPml4},                     // PML4E: bit 7
      {0x1000, 3, with(high, {3, 4, 5, 6}), MisconfigReason::kReservedBits},   // PDPTE (table): bits 6:3
      {0x1000, 2, with(high, {3, 4, 5, 6}), MisconfigReason::kReservedBits},   // PDE (table): bits 6:3
      {0x1000, 1, high, MisconfigReason::kReservedBits},                       // PTE
      {0x400000, 2, with(high, {12, 13, 16, 20}), MisconfigReason::kReservedBits},  // 2 MiB leaf: bits 20:12
      {0x80000000, 3, with(high, {12, 20, 21, 29}), MisconfigReason::kReservedBits},  // 1 GiB leaf: bits 29:12
  };
  for (const Case& c : cases)
    for (const unsigned bit : c.bits) {
      Tree t;
      REQUIRE(t.b.map_leaf(Gpa{0x1000}, Hpa{0x9000}, 1, Perms{true, true, true}).ok());
      REQUIRE(t.b.map_leaf(Gpa{0x400000}, Hpa{0x40000000}, 2, Perms{true, true, true}).ok());
      REQUIRE(t.b.map_leaf(Gpa{0x80000000}, Hpa{0x80000000}, 3, Perms{true, true, true}).ok());
      auto at = t.b.entry_addr(Gpa{c.gpa}, c.level);
      REQUIRE(at.ok());
      std::uint64_t raw = 0;
      t.mem.read_u64(*at, &raw);
      t.mem.write_u64(*at, raw ^ (std::uint64_t{1} << bit));
      CAPTURE(c.gpa, c.level, bit);
      const WalkResult w = walk(t.eptp(), Gpa{c.gpa}, Access::kRead, t.mem);
      CHECK(w.kind == WalkKind::kMisconfig);
      CHECK(w.level == c.level);
      CHECK(w.reason == c.why);
    }
}

TEST_CASE("a table pointer to an absent frame is an answer, not a crash") {
  Tree t;
  REQUIRE(t.b.set_entry(Gpa{0}, 4, EptEntry::table(Hfn{0xDEAD}, Perms{true, true, true})).ok());
  const WalkResult w = walk(t.eptp(), Gpa{0x1000}, Access::kRead, t.mem);
  CHECK(w.kind == WalkKind::kAbsentFrame);
  CHECK(w.level == 3);
}

TEST_CASE("a table that points to itself is read at every level and ends as a 4 KiB leaf onto itself") {
  Tree t;
  const EptEntry self = EptEntry::table(t.b.root(), Perms{true, true, true});
  REQUIRE(t.b.set_entry(Gpa{0}, 4, self).ok());
  const Hpa root = hpa_of(t.b.root());
  // Index 0 at every level reads the same entry. At levels 4..2 it is a table pointer (bit 7
  // clear); at level 1 the same bits are a 4 KiB leaf with memory type 0 (UC, valid, SDM
  // §29.3.7): the walk translates to the root page itself, rwx.
  WalkResult w = walk(t.eptp(), Gpa{0x123}, Access::kWrite, t.mem);
  REQUIRE(w.kind == WalkKind::kTranslated);
  CHECK(w.hpa == root + 0x123);
  CHECK(w.leaf_level == 1);
  CHECK(w.memtype == 0);
  CHECK(w.perms == Perms{true, true, true});
  REQUIRE(w.path_len == 4);
  for (unsigned i = 0; i < 4; ++i) {
    CAPTURE(i);
    CHECK(w.path[i].level == 4 - i);
    CHECK(w.path[i].entry_addr == root);
    CHECK(w.path[i].entry.raw() == self.raw());
  }
  // gpa 0x1000 uses index 1 at level 1: an empty entry, so a violation at level 1 after four reads.
  w = walk(t.eptp(), Gpa{0x1000}, Access::kRead, t.mem);
  CHECK(w.kind == WalkKind::kViolation);
  CHECK(w.level == 1);
  CHECK(w.path_len == 4);
  // gpa 1 GiB uses index 1 at level 3: empty, a violation at level 3 after two reads.
  w = walk(t.eptp(), Gpa{0x40000000}, Access::kRead, t.mem);
  CHECK(w.kind == WalkKind::kViolation);
  CHECK(w.level == 3);
  CHECK(w.path_len == 2);
}

TEST_CASE("accessed and dirty flags are set only by the explicit operation and only with A/D enabled") {
  Tree t;
  REQUIRE(t.b.map_leaf(Gpa{0x1000}, Hpa{0x2000}, 1, Perms{true, true, true}).ok());
  WalkResult w = walk(t.eptp(true), Gpa{0x1000}, Access::kWrite, t.mem);
  REQUIRE(w.translated());
  for (unsigned i = 0; i < w.path_len; ++i) CHECK_FALSE(w.path[i].entry.accessed());
  CHECK(set_accessed_dirty(t.eptp(true), w, Access::kWrite, t.mem) == 4);
  w = walk(t.eptp(true), Gpa{0x1000}, Access::kRead, t.mem);
  for (unsigned i = 0; i < w.path_len; ++i) CHECK(w.path[i].entry.accessed());
  CHECK(w.path[3].entry.dirty());
  CHECK_FALSE(w.path[2].entry.dirty());
  // A second identical update changes nothing; with A/D disabled nothing is written.
  CHECK(set_accessed_dirty(t.eptp(true), w, Access::kWrite, t.mem) == 0);
  Tree u;
  REQUIRE(u.b.map_leaf(Gpa{0x1000}, Hpa{0x2000}, 1, Perms{true, true, true}).ok());
  w = walk(u.eptp(false), Gpa{0x1000}, Access::kWrite, u.mem);
  CHECK(set_accessed_dirty(u.eptp(false), w, Access::kWrite, u.mem) == 0);
}

TEST_CASE("the walker agrees with a reference walker on random trees and addresses") {
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    const auto t = baton::testing::make_random_tree(seed);
    std::mt19937_64 rng(seed * 977);
    for (int i = 0; i < 3000; ++i) {
      const std::uint64_t gpa = rng() % t.window;
      const Access acc = static_cast<Access>(rng() % 3);
      std::uint64_t ref_hpa = 0;
      unsigned ref_perms = 0;
      const int ref = reference_walk(t.mem, t.eptp.raw(), gpa, acc, &ref_hpa, &ref_perms);
      const WalkResult w = walk(t.eptp, Gpa{gpa}, acc, t.mem);
      INFO("seed " << seed << " gpa 0x" << std::hex << gpa << " access " << to_string(acc));
      switch (ref) {
        case 0: CHECK(w.kind == WalkKind::kViolation); break;
        case 1:
          REQUIRE(w.kind == WalkKind::kTranslated);
          CHECK(w.hpa.value == ref_hpa);
          CHECK(w.perms.bits() == ref_perms);
          break;
        case 2: CHECK(w.kind == WalkKind::kMisconfig); break;
        default: CHECK(w.kind == WalkKind::kAbsentFrame); break;
      }
    }
  }
}
