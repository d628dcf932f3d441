// Two fault shapes the exhaustive EPT campaign let through (docs/user-guide.md): a non-leaf
// entry with W or X cleared, and a table pointer moved onto a zeroed guest-RAM frame. Both
// look like a lazily unfilled tree; SDM §29.3.3 ANDs R/W/X down the walk, so the first can
// never be completed to the memslots by leaves, and the second hands the guest its own tables.
#include <catch2/catch.hpp>

#include <cstring>

#include "baton/checker/check.hpp"
#include "baton/checker/concrete.hpp"
#include "fixtures.hpp"
#include "require_property.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

namespace {
// Requires a concrete verdict and returns whether the property holds.
bool concrete_holds(Result<checker::ConcreteVerdict> r) {
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  CAPTURE(r->detail);
  return r->holds;
}
// Clears permission bit `bit` (0 R, 1 W, 2 X) of the level-`level` entry that `gpa` walks through.
void clear_bit(Tree& t, std::uint64_t gpa, unsigned level, unsigned bit) {
  const model::Hpa a = t.entry_addr(gpa, level);
  t.mem.write_u64(a, t.read(a) & ~(std::uint64_t{1} << bit));
}
}  // namespace

TEST_CASE("A non-leaf entry with W or X cleared over a read-write memslot is refuted for conformance",
          "[checker][conformance][nonleaf]") {
  for (const unsigned level : {2u, 3u, 4u})
    for (const unsigned bit : {1u, 2u}) {
      CAPTURE(level, bit);
      Tree t = contiguous_tree(4 * kMiB, 1);
      const model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
      REQUIRE(ok(checker::check_conformance(t.ref("t"), s.memslots)).verdict == Verdict::kProven);
      clear_bit(t, 0x200000, level, bit);
      for (const bool decompose : {true, false}) {
        checker::CheckOptions o;
        o.decompose = decompose;
        const auto r = ok(checker::check_conformance(t.ref("t"), s.memslots, o));
        REQUIRE(r.verdict == Verdict::kRefuted);
        CHECK(r.counterexample->confirmed_concretely);
        CHECK(r.summary.find("table (non-leaf) entries") != std::string::npos);
        // A level-2 entry narrows [2 MiB, 4 MiB) only; a higher one the whole slot.
        const std::uint64_t g = r.counterexample->gpa->value;
        CHECK(g < 4 * kMiB);
        if (level == 2) CHECK(g >= 2 * kMiB);
      }
      CHECK_FALSE(concrete_holds(checker::concrete_conformance(t.ref("t"), s.memslots)));
      // Refinement includes conformance of the new tree: a lazy handover cannot hide it either.
      const Tree orig = contiguous_tree(4 * kMiB, 1);
      CHECK(ok(checker::check_refinement(orig.ref("before"), t.ref("after"), s.memslots)).verdict ==
            Verdict::kRefuted);
      CHECK_FALSE(concrete_holds(checker::concrete_refinement(orig.ref("before"), t.ref("after"), s.memslots)));
    }
}

TEST_CASE("A non-leaf entry that narrows no more than its memslots allow is proven", "[checker][conformance][nonleaf]") {
  // Slot 0 is read-write [0, 2 MiB), slot 1 read-only [2 MiB, 4 MiB) mapped r-x.
  Tree t = empty_tree();
  map(t, 0, 4 * kGiB, 2 * kMiB, 1);
  map(t, 2 * kMiB, 4 * kGiB + 2 * kMiB, 2 * kMiB, 1, model::Perms{true, false, true});
  std::vector<model::Memslot> slots{model::Memslot{0, model::Gpa{0}, 2 * kMiB, model::Hpa{4 * kGiB}, false, false},
                                    model::Memslot{1, model::Gpa{2 * kMiB}, 2 * kMiB,
                                                   model::Hpa{4 * kGiB + 2 * kMiB}, true, false}};
  SECTION("W cleared above the read-only slot only: justified") {
    clear_bit(t, 2 * kMiB, 2, 1);
    CHECK(ok(checker::check_conformance(t.ref("t"), slots)).verdict == Verdict::kProven);
    CHECK(concrete_holds(checker::concrete_conformance(t.ref("t"), slots)));
  }
  SECTION("X cleared above the read-only slot: the slot allows X, so refuted") {
    clear_bit(t, 2 * kMiB, 2, 2);
    const auto r = ok(checker::check_conformance(t.ref("t"), slots));
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK(r.counterexample->gpa->value >= 2 * kMiB);
    CHECK_FALSE(concrete_holds(checker::concrete_conformance(t.ref("t"), slots)));
  }
  SECTION("W cleared above both slots: the read-write one is narrowed") {
    clear_bit(t, 0, 3, 1);
    const auto r = ok(checker::check_conformance(t.ref("t"), slots));
    REQUIRE(r.verdict == Verdict::kRefuted);
    CHECK(r.counterexample->gpa->value < 2 * kMiB);
    CHECK_FALSE(concrete_holds(checker::concrete_conformance(t.ref("t"), slots)));
  }
  SECTION("W and X cleared above GPAs outside every memslot: nothing to narrow") {
    REQUIRE(t.builder().set_entry(model::Gpa{0x600000}, 1, model::EptEntry{0}).ok());
    clear_bit(t, 0x600000, 2, 1);
    clear_bit(t, 0x600000, 2, 2);
    CHECK(ok(checker::check_conformance(t.ref("t"), slots)).verdict == Verdict::kProven);
    CHECK(concrete_holds(checker::concrete_conformance(t.ref("t"), slots)));
  }
}

TEST_CASE("A table pointer moved onto a zeroed guest-RAM frame passes conformance but not isolation",
          "[checker][isolation][nonleaf]") {
  // Guest RAM at 5 GiB, tables at 1 GiB: bit 32 of a table pointer lands in the VM's RAM.
  Tree t = contiguous_tree(4 * kMiB, 1, 5 * kGiB);
  const model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB, 5 * kGiB);
  // Bit 32 of the PDE: the page table now comes from a zeroed frame inside the VM's own RAM.
  const model::Hpa pde = t.entry_addr(2 * kMiB, 2);
  const model::Hfn ram{model::EptEntry{t.read(pde)}.table_hfn().value ^ (std::uint64_t{1} << 20)};
  REQUIRE(s.owners.owner_of(ram).kind == model::OwnerKind::kGuestRam);
  std::memset(t.mem.frame_mut(ram), 0, model::kPageSize);
  t.flip(pde, 32);
  REQUIRE(model::EptEntry{t.read(pde)}.table_hfn() == ram);
  // Nothing is mapped below it any more: conformance allows that (a lazily unfilled tree) ...
  CHECK(ok(checker::check_conformance(t.ref("t"), s.memslots)).verdict == Verdict::kProven);
  CHECK(concrete_holds(checker::concrete_conformance(t.ref("t"), s.memslots)));
  // ... but the guest could write its own translations there.
  const auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.summary.find("owned by guest-ram") != std::string::npos);
  CHECK(r.counterexample->gpa->value >= 2 * kMiB);
  CHECK(r.counterexample->gpa->value < 4 * kMiB);
  CHECK(r.counterexample->confirmed_concretely);
  CHECK_FALSE(concrete_holds(checker::concrete_isolation(t.ref("t"), s.owners, 1)));
}

TEST_CASE("A table pointer onto another VM's EPT table or a hypervisor frame is refuted for isolation",
          "[checker][isolation][nonleaf]") {
  Tree t = contiguous_tree(4 * kMiB, 1);
  model::HandoverSnapshot s = snapshot_of(t, 4 * kMiB);
  // A copy of the page table in a frame that VM 2's EPT owns: same translations, wrong owner.
  const model::Hfn theirs = model::hfn_of(model::Hpa{3 * kGiB});
  s.owners.assign(theirs, 1, model::OwnerKind::kEptTable, 2);
  const model::Hpa pde = t.entry_addr(0, 2);
  std::memcpy(t.mem.frame_mut(theirs), t.mem.frame(model::EptEntry{t.read(pde)}.table_hfn()), model::kPageSize);
  CHECK(ok(checker::check_isolation(t.ref("t"), s.owners, 1)).verdict == Verdict::kProven);
  t.mem.write_u64(pde, model::EptEntry::table(theirs, kRwx).raw());
  CHECK(ok(checker::check_conformance(t.ref("t"), s.memslots)).verdict == Verdict::kProven);
  auto r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.summary.find("owned by ept-table (vm 2)") != std::string::npos);
  CHECK_FALSE(concrete_holds(checker::concrete_isolation(t.ref("t"), s.owners, 1)));
  // The same pointer onto a hypervisor frame (zeroed: nothing mapped below it).
  const model::Hfn hyp{2};
  REQUIRE(s.owners.owner_of(hyp).kind == model::OwnerKind::kHypervisor);
  std::memset(t.mem.frame_mut(hyp), 0, model::kPageSize);
  t.mem.write_u64(pde, model::EptEntry::table(hyp, kRwx).raw());
  r = ok(checker::check_isolation(t.ref("t"), s.owners, 1));
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.summary.find("owned by hypervisor") != std::string::npos);
  CHECK_FALSE(concrete_holds(checker::concrete_isolation(t.ref("t"), s.owners, 1)));
}
