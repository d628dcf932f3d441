// The independent cross-check: on random trees and random single- and multi-bit mutations, the
// decomposed Z3 path, the monolithic Z3 path and the concrete MappingSet path agree.
#include <catch2/catch.hpp>

#include "baton/checker/check.hpp"
#include "baton/checker/concrete.hpp"
#include "baton/model/ept_walk.hpp"
#include "fixtures.hpp"
#include "random_tree.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

namespace {

// Flips `n` random bits in random entries of random table pages of `mem`, biased towards the
// bits that matter (permissions, type, page size, low address bits) but reaching all 64.
void mutate(model::FrameStore& mem, std::mt19937_64& rng, unsigned n) {
  const std::vector<model::Hfn> frames = mem.frames();
  for (unsigned k = 0; k < n; ++k) {
    const model::Hfn f = frames[rng() % frames.size()];
    // Prefer present entries: most pages of a sparse tree hold only a few.
    std::vector<unsigned> present;
    for (unsigned i = 0; i < 512; ++i) {
      std::uint64_t v = 0;
      mem.read_u64(model::hpa_of(f) + i * 8, &v);
      if (v != 0) present.push_back(i);
    }
    const unsigned idx =
        present.empty() || rng() % 8 == 0 ? static_cast<unsigned>(rng() % 512) : present[rng() % present.size()];
    static const unsigned kBits[] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  11, 12,
                                     13, 14, 20, 21, 29, 30, 33, 45, 47, 51, 52, 63};
    const unsigned bit = rng() % 3 == 0 ? static_cast<unsigned>(rng() % 64) : kBits[rng() % std::size(kBits)];
    const model::Hpa a = model::hpa_of(f) + idx * 8;
    std::uint64_t v = 0;
    mem.read_u64(a, &v);
    mem.write_u64(a, v ^ (std::uint64_t{1} << bit));
  }
}

// Maps a verdict to whether the property holds; unknown fails the test.
bool holds(const checker::PropertyResult& r) {
  CAPTURE(r.summary);
  REQUIRE(r.verdict != Verdict::kUnknown);
  return r.verdict == Verdict::kProven;
}

// Requires a result and returns it.
checker::PropertyResult get(Result<checker::PropertyResult> r) {
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  return std::move(r).value();
}

// A tree shaped by a spec: slots mapped with mixed leaf sizes, MMIO markers, owners.
struct SpecTree {
  Tree tree = empty_tree((std::uint64_t{3} << 30) >> 12);
  model::HandoverSnapshot snap;
};

// Builds a random spec-shaped tree.
SpecTree spec_tree(std::uint64_t seed) {
  SpecTree st;
  std::mt19937_64 rng(seed);
  std::vector<model::Memslot> slots;
  std::uint64_t gpa = 0, hpa = std::uint64_t{4} << 30;
  for (std::uint32_t i = 0; i < 3; ++i) {
    const std::uint64_t size = (1 + rng() % 6) * 2 * kMiB + (rng() % 2) * 64 * 1024;
    slots.push_back(model::Memslot{i, model::Gpa{gpa}, size, model::Hpa{hpa}, rng() % 4 == 0, false});
    const unsigned level = 1 + static_cast<unsigned>(rng() % 2);
    const model::Perms p = slots.back().read_only ? model::Perms{true, false, rng() % 2 == 0} : kRwx;
    map(st.tree, gpa, hpa, size, level, p);
    gpa += size + (rng() % 3) * 2 * kMiB;
    hpa += size + (rng() % 2) * 2 * kMiB;
  }
  const std::uint64_t mmio = gpa + 4 * kMiB;
  REQUIRE(st.tree.builder().set_entry(model::Gpa{mmio}, 1, model::EptEntry{0x6}).ok());
  st.snap = snapshot_of(st.tree, 2 * kMiB);
  st.snap.memslots = slots;
  st.snap.mmio = {model::GpaRange{model::Gpa{mmio}, model::kPageSize}};
  st.snap.owners = model::OwnerMap{};
  st.snap.owners.assign(model::Hfn{(std::uint64_t{4} << 30) >> 12}, (hpa - (std::uint64_t{4} << 30)) >> 12,
                        model::OwnerKind::kGuestRam, 1);
  st.snap.owners.assign(model::Hfn{st.tree.first_table}, st.tree.next_table - st.tree.first_table,
                        model::OwnerKind::kEptTable, 1);
  st.snap.owners.assign(model::Hfn{(std::uint64_t{2} << 30) >> 12}, 1024, model::OwnerKind::kOtherVm, 2);
  return st;
}

}  // namespace

TEST_CASE("Z3 and the concrete path agree on equivalence of random trees and their random mutations",
          "[checker][crosscheck]") {
  checker::CheckOptions mono;
  mono.decompose = false;
  unsigned refuted = 0, proven = 0, cyclic = 0;
  for (std::uint64_t seed = 1; seed <= 40; ++seed) {
    const RandomTree a = make_random_tree(seed);
    const checker::TreeRef ra{"original", a.eptp, &a.mem, {}};
    std::mt19937_64 rng(seed * 31);
    for (unsigned round = 0; round < 4; ++round) {
      model::FrameStore m = a.mem;  // a different memory object: no pointer shortcuts
      const unsigned flips = round == 0 ? 0 : round == 1 ? 1 : 1 + static_cast<unsigned>(rng() % 4);
      mutate(m, rng, flips);
      const checker::TreeRef rb{"mutated", a.eptp, &m, {}};
      CAPTURE(seed, round, flips);
      const auto z = get(checker::check_equivalence(ra, rb));
      const auto zm = get(checker::check_equivalence(ra, rb, mono));
      CAPTURE(z.summary, zm.summary);
      CHECK(holds(z) == holds(zm));
      if (z.verdict == Verdict::kRefuted) {
        CHECK(z.counterexample->confirmed_concretely);
        CHECK(zm.counterexample->confirmed_concretely);
      }
      auto c = checker::concrete_equivalence(ra, rb);
      if (!c) {
        ++cyclic;  // the concrete normaliser refuses table cycles; Z3 does not need to
        continue;
      }
      CAPTURE(c->detail);
      CHECK(holds(z) == c->holds);
      (c->holds ? proven : refuted) += 1;
      if (round == 0) CHECK(c->holds);
    }
  }
  CAPTURE(proven, refuted, cyclic);
  CHECK(proven >= 40);
  CHECK(refuted >= 25);
}

TEST_CASE("Z3 and the concrete path agree on equivalence of unrelated random trees", "[checker][crosscheck]") {
  for (std::uint64_t seed = 100; seed < 110; ++seed) {
    const RandomTree a = make_random_tree(seed), b = make_random_tree(seed + 1000);
    const checker::TreeRef ra{"a", a.eptp, &a.mem, {}}, rb{"b", b.eptp, &b.mem, {}};
    const auto z = get(checker::check_equivalence(ra, rb));
    auto c = checker::concrete_equivalence(ra, rb);
    REQUIRE(c.ok());
    CAPTURE(seed, z.summary);
    CHECK(holds(z) == c->holds);
  }
}

TEST_CASE("Z3 and the concrete path agree on conformance, isolation, well-formedness and refinement of mutated trees",
          "[checker][crosscheck]") {
  checker::CheckOptions mono;
  mono.decompose = false;
  unsigned failures = 0, checks = 0;
  for (std::uint64_t seed = 1; seed <= 25; ++seed) {
    SpecTree st = spec_tree(seed);
    std::mt19937_64 rng(seed * 17);
    for (unsigned round = 0; round < 3; ++round) {
      model::FrameStore m = st.tree.mem;
      mutate(m, rng, round == 0 ? 0 : 1 + static_cast<unsigned>(rng() % 2));
      const checker::TreeRef t{"mutated", st.tree.eptp, &m, {}};
      const checker::TreeRef orig = st.tree.ref("original");
      CAPTURE(seed, round);
      const bool use_mono = seed == 10 || seed == 20;  // the faithful whole-tree formula takes ~0.5 s here
      auto cc = checker::concrete_conformance(t, st.snap.memslots);
      if (!cc) continue;  // a table cycle: the concrete path cannot say
      const auto zc = get(checker::check_conformance(t, st.snap.memslots));
      CAPTURE(zc.summary, cc->detail);
      CHECK(holds(zc) == cc->holds);
      if (use_mono) CHECK(holds(get(checker::check_conformance(t, st.snap.memslots, mono))) == cc->holds);

      const auto zi = get(checker::check_isolation(t, st.snap.owners, 1));
      auto ci = checker::concrete_isolation(t, st.snap.owners, 1);
      REQUIRE(ci.ok());
      CAPTURE(zi.summary, ci->detail);
      CHECK(holds(zi) == ci->holds);
      if (use_mono) CHECK(holds(get(checker::check_isolation(t, st.snap.owners, 1, mono))) == ci->holds);

      const auto zw = get(checker::check_wellformed(t, st.snap.mmio));
      auto cw = checker::concrete_wellformed(t, st.snap.mmio);
      REQUIRE(cw.ok());
      CAPTURE(zw.summary, cw->detail);
      CHECK(holds(zw) == cw->holds);

      const auto zr = get(checker::check_refinement(orig, t, st.snap.memslots));
      auto cr = checker::concrete_refinement(orig, t, st.snap.memslots);
      REQUIRE(cr.ok());
      CAPTURE(zr.summary, cr->detail);
      CHECK(holds(zr) == cr->holds);
      if (use_mono) CHECK(holds(get(checker::check_refinement(orig, t, st.snap.memslots, mono))) == cr->holds);

      for (const auto* r : {&zc, &zi, &zw, &zr})
        if (r->verdict == Verdict::kRefuted) CHECK(r->counterexample->confirmed_concretely);
      if (round == 0) {
        CHECK(cc->holds);
        CHECK(ci->holds);
        CHECK(cw->holds);
        CHECK(cr->holds);
      }
      failures += (cc->holds ? 0 : 1) + (ci->holds ? 0 : 1) + (cw->holds ? 0 : 1) + (cr->holds ? 0 : 1);
      checks += 4;
    }
  }
  CAPTURE(failures, checks);
  CHECK(checks >= 200);   // of 75 rounds x 4 properties, few skipped as table cycles
  CHECK(failures >= 20);  // the mutations do break things, so both outcomes are exercised
}

TEST_CASE("Z3 and the concrete path agree on conformance when non-leaf permissions are narrowed",
          "[checker][crosscheck][nonleaf]") {
  // Clears random R/W/X bits of table entries that walks of random GPAs read (inside and
  // outside the memslots), so that the non-leaf clause is both broken and justified.
  checker::CheckOptions mono;
  mono.decompose = false;
  unsigned refuted = 0, proven_mutated = 0;
  for (std::uint64_t seed = 1; seed <= 30; ++seed) {
    SpecTree st = spec_tree(seed);
    std::mt19937_64 rng(seed * 7919);
    for (unsigned round = 0; round < 4; ++round) {
      model::FrameStore m = st.tree.mem;
      const unsigned n = 1 + static_cast<unsigned>(rng() % 3);
      for (unsigned k = 0; k < n; ++k) {
        const std::uint64_t span = st.snap.memslots.back().end().value + 8 * kMiB;
        const model::Gpa g{(rng() % span) & ~model::kPageMask};
        const model::WalkResult w = model::walk(st.tree.eptp, g, model::Access::kRead, m, st.tree.cfg);
        if (w.path_len < 2) continue;
        const model::WalkStep& s = w.path[rng() % (w.path_len - 1)];  // a table entry
        const std::uint64_t bits = 1 + rng() % 7;
        m.write_u64(s.entry_addr, s.entry.raw() & ~(rng() % 2 == 0 ? (bits & 6) : bits));
      }
      const checker::TreeRef t{"narrowed", st.tree.eptp, &m, {}};
      CAPTURE(seed, round);
      auto cc = checker::concrete_conformance(t, st.snap.memslots);
      REQUIRE(cc.ok());
      const auto z = get(checker::check_conformance(t, st.snap.memslots));
      CAPTURE(z.summary, cc->detail);
      CHECK(holds(z) == cc->holds);
      if (z.verdict == Verdict::kRefuted) CHECK(z.counterexample->confirmed_concretely);
      if (seed % 10 == 0) CHECK(holds(get(checker::check_conformance(t, st.snap.memslots, mono))) == cc->holds);
      (cc->holds ? proven_mutated : refuted) += 1;
    }
  }
  CAPTURE(refuted, proven_mutated);
  CHECK(refuted >= 30);
  CHECK(proven_mutated >= 10);
}
