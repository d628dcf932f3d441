// Bad input: different widths, a missing EPTP, an empty tree, the extremes of MAXPHYADDR, an
// absent root frame. Each gives a clear error or a correct verdict.
#include <catch2/catch.hpp>

#include "baton/checker/check.hpp"
#include "baton/checker/concrete.hpp"
#include "fixtures.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

TEST_CASE("Snapshots of different MAXPHYADDR give a clear error", "[checker][bad-input]") {
  Tree a = contiguous_tree(2 * kMiB, 1);
  model::EptConfig narrow;
  narrow.maxphyaddr = 39;
  Tree b = empty_tree(0x40000, narrow);
  map(b, 0, 4 * kGiB, 2 * kMiB, 1);
  auto r = checker::check_equivalence(a.ref("before"), b.ref("after"));
  REQUIRE_FALSE(r.ok());
  CAPTURE(r.error().message);
  CHECK(r.error().message.find("MAXPHYADDR 46") != std::string::npos);
  CHECK(r.error().message.find("different GPA widths") != std::string::npos);
  auto h = checker::check_handover(snapshot_of(a, 2 * kMiB), snapshot_of(b, 2 * kMiB), {checker::Property::kVcpu});
  REQUIRE_FALSE(h.ok());
  CHECK(h.error().message.find("different GPA widths") != std::string::npos);
}

TEST_CASE("A missing EPTP gives a clear error", "[checker][bad-input]") {
  Tree a = contiguous_tree(2 * kMiB, 1);
  checker::TreeRef none = a.ref("after");
  none.eptp = model::Eptp{};
  auto r = checker::check_equivalence(a.ref("before"), none);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "after: the snapshot has no EPTP (it is 0)");
  model::HandoverSnapshot s = snapshot_of(a, 2 * kMiB);
  s.eptp = model::Eptp{};
  auto spec = checker::check_spec(s, checker::spec_properties());
  REQUIRE_FALSE(spec.ok());
  CHECK(spec.error().message.find("no EPTP") != std::string::npos);
}

TEST_CASE("An empty tree is equivalent to an empty tree and not to a mapped one", "[checker][bad-input]") {
  Tree e1 = empty_tree(0x40000), e2 = empty_tree(0x50000);
  Tree m = contiguous_tree(2 * kMiB, 1);
  CHECK(checker::check_equivalence(e1.ref("a"), e2.ref("b"))->verdict == Verdict::kProven);
  const auto r = checker::check_equivalence(e1.ref("empty"), m.ref("mapped"));
  REQUIRE(r->verdict == Verdict::kRefuted);
  CHECK(r->counterexample->gpa->value < 2 * kMiB);
  CHECK(r->counterexample->walks[0].outcome == "not mapped");
  // An empty tree is trivially conformant, isolated and well-formed.
  const model::HandoverSnapshot s = snapshot_of(e1, 2 * kMiB);
  auto rep = checker::check_spec(s, checker::spec_properties());
  REQUIRE(rep.ok());
  CHECK(rep->overall() == Verdict::kProven);
}

TEST_CASE("MAXPHYADDR 36 makes address bit 40 reserved; MAXPHYADDR 52 makes it a frame bit", "[checker][bad-input]") {
  for (unsigned maxphy : {36u, 52u}) {
    model::EptConfig cfg;
    cfg.maxphyaddr = maxphy;
    Tree a = empty_tree(0x40000, cfg);
    map(a, 0, 0x10000000, 2 * kMiB, 1);
    Tree b = empty_tree(0x40000, cfg);
    map(b, 0, 0x10000000, 2 * kMiB, 1);
    b.flip(b.entry_addr(0x4000, 1), 40);
    const auto r = checker::check_equivalence(a.ref("a"), b.ref("b"));
    REQUIRE(r.ok());
    CAPTURE(maxphy, r->summary);
    REQUIRE(r->verdict == Verdict::kRefuted);
    CHECK((r->counterexample->gpa->value & ~model::kPageMask) == 0x4000);
    const std::string& out = r->counterexample->walks[1].outcome;
    CHECK((out.find("misconfigured") != std::string::npos) == (maxphy == 36));
    CHECK(checker::concrete_equivalence(a.ref("a"), b.ref("b"))->holds == false);
  }
}

TEST_CASE("GPAs at or above 2^MAXPHYADDR are not compared", "[checker][bad-input]") {
  model::EptConfig cfg;
  cfg.maxphyaddr = 36;  // 64 GiB of guest-physical space
  Tree a = empty_tree(0x40000, cfg);
  Tree b = empty_tree(0x50000, cfg);
  map(a, 0, 0x10000000, 2 * kMiB, 1);
  map(b, 0, 0x10000000, 2 * kMiB, 1);
  map(b, 128 * kGiB, 0x20000000, 2 * kMiB, 2);  // beyond the guest's reach
  const auto r = checker::check_equivalence(a.ref("a"), b.ref("b"));
  CAPTURE(r->summary);
  CHECK(r->verdict == Verdict::kProven);
  CHECK(checker::concrete_equivalence(a.ref("a"), b.ref("b"))->holds);
  model::EptConfig wide;
  Tree c = empty_tree(0x40000, wide), d = empty_tree(0x50000, wide);
  map(d, 128 * kGiB, 0x20000000, 2 * kMiB, 2);
  CHECK(checker::check_equivalence(c.ref("c"), d.ref("d"))->verdict == Verdict::kRefuted);
}

TEST_CASE("MAXPHYADDR outside 36..52 is an error", "[checker][bad-input]") {
  Tree a = contiguous_tree(2 * kMiB, 1);
  for (unsigned bad : {0u, 35u, 53u, 64u}) {
    checker::TreeRef r = a.ref("t");
    r.cfg.maxphyaddr = bad;
    auto res = checker::check_conformance(r, {});
    REQUIRE_FALSE(res.ok());
    CHECK(res.error().message.find("outside 36..52") != std::string::npos);
  }
}

TEST_CASE("An invalid EPTP is an error for equivalence and a refutation for well-formedness", "[checker][bad-input]") {
  Tree a = contiguous_tree(2 * kMiB, 1);
  checker::TreeRef bad = a.ref("after");
  bad.eptp = model::Eptp{a.eptp.raw() | 0x100};  // reserved bit 8
  auto r = checker::check_equivalence(a.ref("before"), bad);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("reserved bits 11:8") != std::string::npos);
  auto w = checker::check_wellformed(bad, {});
  REQUIRE(w.ok());
  CHECK(w->verdict == Verdict::kRefuted);
}

TEST_CASE("A root frame absent from the snapshot is refuted, not a crash", "[checker][bad-input]") {
  Tree a = contiguous_tree(2 * kMiB, 1);
  checker::TreeRef missing = a.ref("after");
  missing.eptp = model::Eptp::make(model::Hfn{0x123456}, true);
  const auto r = checker::check_equivalence(a.ref("before"), missing);
  REQUIRE(r.ok());
  CHECK(r->verdict == Verdict::kRefuted);
  CHECK(r->summary.find("absent") != std::string::npos);
  const auto w = checker::check_wellformed(missing, {});
  CHECK(w->verdict == Verdict::kRefuted);
  const model::HandoverSnapshot s = snapshot_of(a, 2 * kMiB);
  CHECK(checker::check_conformance(missing, s.memslots)->verdict == Verdict::kRefuted);
  CHECK(checker::check_isolation(missing, s.owners, 1)->verdict == Verdict::kRefuted);
}

TEST_CASE("A tree without memory and an empty owner map give clear errors", "[checker][bad-input]") {
  Tree a = contiguous_tree(2 * kMiB, 1);
  checker::TreeRef r = a.ref("t");
  r.mem = nullptr;
  CHECK_FALSE(checker::check_wellformed(r, {}).ok());
  auto iso = checker::check_isolation(a.ref("t"), model::OwnerMap{}, 1);
  REQUIRE_FALSE(iso.ok());
  CHECK(iso.error().message.find("owner map") != std::string::npos);
}

TEST_CASE("Unknown property names are rejected with the list of valid ones", "[checker][bad-input]") {
  auto p = checker::parse_property_list("equivalence,bogus");
  REQUIRE_FALSE(p.ok());
  CHECK(p.error().message.find("'bogus'") != std::string::npos);
  auto all = checker::parse_property_list("all");
  REQUIRE(all.ok());
  CHECK(all->size() == 6);
  auto some = checker::parse_property_list("wf, iso,wf");
  REQUIRE(some.ok());
  CHECK(some->size() == 2);
  CHECK_FALSE(checker::parse_property_list("").ok());
}

TEST_CASE("A property that runs out of time is unknown, never proven", "[checker][bad-input]") {
  // A budget of zero seconds is spent before the first query, whatever the machine's speed.
  Tree a = contiguous_tree(2 * kMiB, 1);
  Tree b = contiguous_tree(2 * kMiB, 1);
  b.flip(b.entry_addr(0x1000, 1), 1);
  checker::CheckOptions o;
  o.timeout_s = 0;
  const auto r = checker::check_equivalence(a.ref("a"), b.ref("b"), o);
  REQUIRE(r.ok());
  CAPTURE(r->summary);
  CHECK(r->verdict == Verdict::kUnknown);
  CHECK(r->unknown_reason.find("timeout after 0 Z3 queries") != std::string::npos);
  CHECK(r->stats.z3_queries == 0);
  CHECK_FALSE(r->counterexample);
  checker::Report rep;
  rep.results.push_back(*r);
  CHECK(rep.overall() == Verdict::kUnknown);
}

TEST_CASE("A property whose Z3 query runs out of its resource limit is unknown, never proven",
          "[checker][bad-input]") {
  // Z3's rlimit counts solver steps, so the outcome does not depend on the machine's speed.
  Tree a = contiguous_tree(2 * kMiB, 1);
  Tree b = contiguous_tree(2 * kMiB, 1);
  b.flip(b.entry_addr(0x1000, 1), 1);
  checker::CheckOptions o;
  o.rlimit = 1;
  o.keep_smt2 = true;
  const auto r = checker::check_equivalence(a.ref("a"), b.ref("b"), o);
  REQUIRE(r.ok());
  CAPTURE(r->summary, r->unknown_reason);
  CHECK(r->verdict == Verdict::kUnknown);
  CHECK(r->unknown_reason.rfind("Z3: ", 0) == 0);
  CHECK(r->stats.z3_queries >= 1);
  CHECK_FALSE(r->counterexample);
  CHECK_FALSE(r->smt2.empty());  // the undecided query is kept
  // The same pair with no limit is refuted: the limit, not the input, made it unknown.
  o.rlimit = 0;
  const auto full = checker::check_equivalence(a.ref("a"), b.ref("b"), o);
  REQUIRE(full.ok());
  CHECK(full->verdict == Verdict::kRefuted);
  // The vCPU property honours the limit too.
  const model::HandoverSnapshot s = snapshot_of(a, 2 * kMiB);
  model::HandoverSnapshot t = s;
  t.vcpus[0].rip += 1;
  o.rlimit = 1;
  const auto v = checker::check_vcpu(s, t, Verdict::kProven, o);
  REQUIRE(v.ok());
  CHECK(v->verdict == Verdict::kUnknown);
}
