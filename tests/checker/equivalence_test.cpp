// Property 1, equivalence: proven for semantically equal trees, refuted with the right GPA for
// any change of outcome, and faithful to the SDM's misconfiguration rules.
#include <catch2/catch.hpp>

#include "baton/checker/check.hpp"
#include "baton/checker/concrete.hpp"
#include "baton/checker/overlay.hpp"
#include "fixtures.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

namespace {
// Checks equivalence and fails the test on an input error.
checker::PropertyResult equiv(const checker::TreeRef& a, const checker::TreeRef& b, checker::CheckOptions o = {}) {
  auto r = checker::check_equivalence(a, b, o);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  return *r;
}
// The concrete verdict, required to exist.
bool concrete_holds(const checker::TreeRef& a, const checker::TreeRef& b) {
  auto c = checker::concrete_equivalence(a, b);
  INFO((c ? "" : c.error().message));
  REQUIRE(c.ok());
  return c->holds;
}
}  // namespace

TEST_CASE("A tree is proven equivalent to itself without asking Z3", "[checker][equivalence]") {
  Tree t = contiguous_tree(64 * kMiB, 1);
  const auto r = equiv(t.ref("before"), t.ref("after"));
  CAPTURE(r.summary);
  CHECK(r.verdict == Verdict::kProven);
  CHECK(r.stats.z3_queries == 0);
  CHECK(r.stats.identical > 0);
}

TEST_CASE("A 2 MiB-leaf tree is proven equivalent to the same mapping in 4 KiB leaves", "[checker][equivalence]") {
  Tree big = contiguous_tree(64 * kMiB, 2, 4 * kGiB, 0x40000);
  Tree small = contiguous_tree(64 * kMiB, 1, 4 * kGiB, 0x80000);
  scatter_ad(small, 64 * kMiB, 7);
  const auto r = equiv(big.ref("2M"), small.ref("4K"));
  CAPTURE(r.summary, r.stats.linear, r.stats.faithful);
  CHECK(r.verdict == Verdict::kProven);
  CHECK(r.stats.faithful == 0);  // every region was a linear relation
  CHECK(r.stats.z3_queries >= 1);
  CHECK(concrete_holds(big.ref("2M"), small.ref("4K")));
}

TEST_CASE("A tree rebuilt at other table frames with other A/D bits is proven equivalent", "[checker][equivalence]") {
  Tree a = contiguous_tree(32 * kMiB, 1, 4 * kGiB, 0x40000);
  Tree b = contiguous_tree(32 * kMiB, 1, 4 * kGiB, 0x90000);
  scatter_ad(a, 32 * kMiB, 1);
  scatter_ad(b, 32 * kMiB, 2);
  const auto r = equiv(a.ref("a"), b.ref("b"));
  CAPTURE(r.summary);
  CHECK(r.verdict == Verdict::kProven);
}

TEST_CASE("One flipped frame-number bit of a 4 KiB leaf is refuted at that leaf's GPA", "[checker][equivalence]") {
  Tree a = contiguous_tree(32 * kMiB, 1);
  std::mt19937_64 rng(11);
  for (int round = 0; round < 8; ++round) {
    const std::uint64_t gpa = (rng() % (32 * kMiB / model::kPageSize)) * model::kPageSize;
    const unsigned bit = 12 + static_cast<unsigned>(rng() % 34);  // address bits below MAXPHYADDR 46
    checker::OverlayMemory m(a.mem);
    m.flip_bit(a.entry_addr(gpa, 1), bit);
    const checker::TreeRef b{"mutated", a.eptp, &m, a.cfg};
    const auto r = equiv(a.ref("original"), b);
    CAPTURE(gpa, bit, r.summary);
    REQUIRE(r.verdict == Verdict::kRefuted);
    REQUIRE(r.counterexample);
    REQUIRE(r.counterexample->gpa);
    CHECK((r.counterexample->gpa->value & ~model::kPageMask) == gpa);
    CHECK(r.counterexample->confirmed_concretely);
    CHECK(r.counterexample->walks.size() == 2);
    CHECK(r.counterexample->walks[1].steps.size() == 4);
    CHECK_FALSE(concrete_holds(a.ref("original"), b));
  }
}

TEST_CASE("One flipped permission bit of a leaf is refuted at that leaf's GPA", "[checker][equivalence]") {
  Tree a = contiguous_tree(16 * kMiB, 1);
  for (unsigned bit = 0; bit < 3; ++bit) {
    const std::uint64_t gpa = 0x345000;
    checker::OverlayMemory m(a.mem);
    m.flip_bit(a.entry_addr(gpa, 1), bit);
    const auto r = equiv(a.ref("original"), checker::TreeRef{"mutated", a.eptp, &m, a.cfg});
    CAPTURE(bit, r.summary);
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK((r.counterexample->gpa->value & ~model::kPageMask) == gpa);
  }
}

TEST_CASE("A leaf with another memory type or ignore-PAT bit is refuted at that leaf's GPA", "[checker][equivalence]") {
  // Equivalence is of the whole outcome: the same frame with WT instead of WB, or with IPAT
  // set, is a different translation (docs/checker.md; design: "a different memory type").
  Tree a = contiguous_tree(4 * kMiB, 1);
  const std::uint64_t gpa = 0x123000;
  struct Change { const char* what; std::uint64_t (*apply)(std::uint64_t); };
  const Change changes[] = {
      {"memory type WB -> WT (4)", [](std::uint64_t e) -> std::uint64_t { return (e & ~0x38ull) | (4u << 3); }},
      {"memory type WB -> UC (0)", [](std::uint64_t e) -> std::uint64_t { return e & ~0x38ull; }},
      {"ignore-PAT set", [](std::uint64_t e) -> std::uint64_t { return e | (1u << 6); }},
  };
  for (const Change& c : changes) {
    checker::OverlayMemory m(a.mem);
    const model::Hpa ea = a.entry_addr(gpa, 1);
    m.write_u64(ea, c.apply(a.read(ea)));
    const checker::TreeRef b{"mutated", a.eptp, &m, a.cfg};
    const auto r = equiv(a.ref("original"), b);
    INFO(c.what);
    CAPTURE(r.summary);
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK((r.counterexample->gpa->value & ~model::kPageMask) == gpa);
    CHECK(r.counterexample->confirmed_concretely);
    CHECK_FALSE(concrete_holds(a.ref("original"), b));
  }
}

TEST_CASE("An execute-only leaf is a mapping where execute-only is supported, not a misconfiguration",
          "[checker][equivalence][sdm]") {
  // SDM 29.3.3.1: bits 2:0 = 100b misconfigure only without execute-only support
  // (IA32_VMX_EPT_VPID_CAP bit 0); with it, the leaf translates for fetches.
  Tree a = contiguous_tree(4 * kMiB, 1);
  const model::Hpa ea = a.entry_addr(0x5000, 1);
  checker::OverlayMemory xo(a.mem);
  xo.write_u64(ea, (a.read(ea) & ~7ull) | 4);
  checker::OverlayMemory mc(a.mem);
  mc.write_u64(ea, (a.read(ea) & ~7ull) | 6);  // write+execute without read: always misconfigured
  // Decomposed, and as one faithful formula in which Z3 classifies every entry itself.
  checker::CheckOptions mono;
  mono.decompose = false;
  for (const checker::CheckOptions& o : {checker::CheckOptions{}, mono}) {
    CAPTURE(o.decompose);
    const auto r =
        equiv(checker::TreeRef{"x-only", a.eptp, &xo, a.cfg}, checker::TreeRef{"wx", a.eptp, &mc, a.cfg}, o);
    CAPTURE(r.summary);
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x5000);
    CHECK(r.counterexample->walks[0].outcome.find("misconfigured") == std::string::npos);
    CHECK(r.counterexample->walks[1].outcome.find("misconfigured") != std::string::npos);
    // The execute-only leaf is proven equivalent to itself either way.
    const auto same = equiv(checker::TreeRef{"x-only", a.eptp, &xo, a.cfg}, checker::TreeRef{"x-only", a.eptp, &xo, a.cfg}, o);
    CHECK(same.verdict == Verdict::kProven);
  }
}

TEST_CASE("Flipping the accessed, dirty or ignored bits of any entry keeps the trees equivalent",
          "[checker][equivalence]") {
  Tree a = contiguous_tree(8 * kMiB, 1);
  for (unsigned level = 1; level <= 4; ++level) {
    for (unsigned bit : {8u, 9u, 10u, 11u, 52u, 57u, 62u, 63u}) {
      checker::OverlayMemory m(a.mem);
      m.flip_bit(a.entry_addr(0x201000, level), bit);
      const auto r = equiv(a.ref("original"), checker::TreeRef{"mutated", a.eptp, &m, a.cfg});
      CAPTURE(level, bit, r.summary);
      CHECK(r.verdict == Verdict::kProven);
    }
  }
}

TEST_CASE("A write bit masked by a read-only table entry above does not change the outcome", "[checker][equivalence]") {
  Tree a = contiguous_tree(4 * kMiB, 1);
  // Make the PDE covering [0, 2 MiB) read+execute only, in both trees.
  const model::Hpa pde = a.entry_addr(0, 2);
  a.mem.write_u64(pde, (a.read(pde) & ~std::uint64_t{7}) | 5);
  checker::OverlayMemory m(a.mem);
  m.flip_bit(a.entry_addr(0x3000, 1), 1);  // clear W in one leaf below it
  const checker::TreeRef b{"mutated", a.eptp, &m, a.cfg};
  const auto r = equiv(a.ref("original"), b);
  CAPTURE(r.summary, r.stats.linear, r.stats.faithful);
  CHECK(r.verdict == Verdict::kProven);
  CHECK(r.stats.z3_queries >= 1);  // Z3 proved the irregular page equal
  CHECK(concrete_holds(a.ref("original"), b));
}

TEST_CASE("A leaf left with no effective permission is equivalent to a missing one", "[checker][equivalence]") {
  Tree a = contiguous_tree(4 * kMiB, 1);
  Tree b = contiguous_tree(4 * kMiB, 1);
  // In a, the PDE is read-only and one leaf below it is execute-only: the AND is empty.
  const model::Hpa pde = a.entry_addr(0, 2);
  a.mem.write_u64(pde, (a.read(pde) & ~std::uint64_t{7}) | 1);
  b.mem.write_u64(b.entry_addr(0, 2), a.read(pde));
  const model::Hpa leaf = a.entry_addr(0x5000, 1);
  a.mem.write_u64(leaf, (a.read(leaf) & ~std::uint64_t{7}) | 4);
  b.mem.write_u64(b.entry_addr(0x5000, 1), 0);
  const auto r = equiv(a.ref("x-only"), b.ref("absent"));
  CAPTURE(r.summary);
  CHECK(r.verdict == Verdict::kProven);
}

TEST_CASE("Misconfigurations for different reasons are one outcome", "[checker][equivalence]") {
  Tree a = contiguous_tree(4 * kMiB, 1);
  Tree b = contiguous_tree(4 * kMiB, 1);
  REQUIRE(a.builder().set_entry(model::Gpa{0x7000}, 1, model::EptEntry{0x6}).ok());  // write+exec without read
  REQUIRE(b.builder().set_entry(model::Gpa{0x7000}, 1, model::EptEntry::leaf(1, model::Hpa{0x1000}, kRwx, 2)).ok());
  const auto r = equiv(a.ref("wx"), b.ref("memtype-2"));
  CAPTURE(r.summary);
  CHECK(r.verdict == Verdict::kProven);
}

TEST_CASE("SDM misconfiguration rules are refuted against a valid mapping", "[checker][equivalence][sdm]") {
  struct Case {
    const char* name;
    unsigned level;
    std::uint64_t gpa;
    std::function<std::uint64_t(std::uint64_t)> mutate;
    model::EptConfig cfg;
  };
  model::EptConfig no_xo;
  no_xo.execute_only = false;
  const std::vector<Case> cases = {
      {"a 2 MiB leaf with address bit 12 set (reserved, table 29-4)",
       2,
       0,
       [](std::uint64_t e) { return e | (1u << 12); },
       {}},
      {"a PML4E with bit 7 set", 4, 0, [](std::uint64_t e) { return e | (1u << 7); }, {}},
      {"a table entry with reserved bit 3 set (table 29-3)", 3, 0, [](std::uint64_t e) { return e | (1u << 3); }, {}},
      {"a leaf with memory type 7", 2, 0, [](std::uint64_t e) { return (e & ~0x38ull) | (7u << 3); }, {}},
      {"a leaf with an address bit above MAXPHYADDR", 2, 0, [](std::uint64_t e) { return e | (1ull << 47); }, {}},
      {"a write-only leaf", 2, 0, [](std::uint64_t e) { return (e & ~7ull) | 2; }, {}},
      {"an execute-only leaf without execute-only support", 2, 0, [](std::uint64_t e) { return (e & ~7ull) | 4; },
       no_xo},
  };
  for (const Case& c : cases) {
    Tree a = empty_tree((std::uint64_t{1} << 30) >> 12, c.cfg);
    map(a, 0, 4 * kGiB, 4 * kMiB, 2);
    checker::OverlayMemory m(a.mem);
    const model::Hpa ea = a.entry_addr(c.gpa, c.level);
    m.write_u64(ea, c.mutate(a.read(ea)));
    const auto r = equiv(a.ref("valid"), checker::TreeRef{"mutated", a.eptp, &m, a.cfg});
    INFO(c.name);
    CAPTURE(r.summary);
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK(r.counterexample->walks[1].outcome.find("misconfigured") != std::string::npos);
    CHECK(r.counterexample->confirmed_concretely);
  }
}

TEST_CASE("A table frame absent from the snapshot is refuted because it can hold anything", "[checker][equivalence]") {
  Tree a = contiguous_tree(8 * kMiB, 1);
  checker::OverlayMemory m(a.mem);
  const model::Hpa pde = a.entry_addr(4 * kMiB, 2);
  m.hide(model::EptEntry{a.read(pde)}.table_hfn());
  // Both trees reach the same absent frame: still refuted, since nothing is known about it.
  const checker::TreeRef b{"hidden", a.eptp, &m, a.cfg};
  const auto r = equiv(b, b);
  CAPTURE(r.summary);
  CHECK(r.verdict == Verdict::kProven);  // the same memory: identical, nothing unknown is compared
  const auto r2 = equiv(a.ref("full"), b);
  CAPTURE(r2.summary);
  REQUIRE(r2.verdict == Verdict::kRefuted);
  CHECK(r2.counterexample->gpa->value >= 4 * kMiB);
  CHECK(r2.counterexample->gpa->value < 6 * kMiB);
  CHECK(r2.summary.find("absent") != std::string::npos);
  CHECK_FALSE(concrete_holds(a.ref("full"), b));
  // Two memories missing the same frame: their contents are independent, even under one name.
  checker::OverlayMemory m2(a.mem);
  m2.hide(model::EptEntry{a.read(pde)}.table_hfn());
  const auto r3 = equiv(b, checker::TreeRef{"hidden", a.eptp, &m2, a.cfg});
  CAPTURE(r3.summary);
  CHECK(r3.verdict == Verdict::kRefuted);
  CHECK_FALSE(concrete_holds(b, checker::TreeRef{"hidden", a.eptp, &m2, a.cfg}));
}

TEST_CASE("A table cycle ends the walk after four levels instead of looping", "[checker][equivalence]") {
  Tree a = contiguous_tree(4 * kMiB, 1);
  checker::OverlayMemory m(a.mem);
  // Point the PDE for [2 MiB, 4 MiB) at the PD itself.
  const model::Hpa pde = a.entry_addr(2 * kMiB, 2);
  m.write_u64(pde, model::EptEntry::table(model::hfn_of(pde), kRwx).raw());
  const auto r = equiv(a.ref("original"), checker::TreeRef{"cyclic", a.eptp, &m, a.cfg});
  CAPTURE(r.summary);
  CHECK(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->gpa->value >= 2 * kMiB);
  CHECK(r.counterexample->gpa->value < 4 * kMiB);
}

TEST_CASE("The monolithic encoding agrees with the decomposed one on small trees", "[checker][equivalence]") {
  Tree a = contiguous_tree(4 * kMiB, 2, 4 * kGiB, 0x40000);
  Tree b = contiguous_tree(4 * kMiB, 1, 4 * kGiB, 0x80000);
  checker::CheckOptions mono;
  mono.decompose = false;
  CHECK(equiv(a.ref("2M"), b.ref("4K"), mono).verdict == Verdict::kProven);
  b.flip(b.entry_addr(0x203000, 1), 13);
  const auto r = equiv(a.ref("2M"), b.ref("4K"), mono);
  CAPTURE(r.summary);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK((r.counterexample->gpa->value & ~model::kPageMask) == 0x203000);
  CHECK(equiv(a.ref("2M"), b.ref("4K")).verdict == Verdict::kRefuted);
}
