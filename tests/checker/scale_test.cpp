// The checker at 1M leaves (4 GiB): equivalence of a 4 KiB-leaf sample with its 2 MiB-leaf twin,
// and refutation of one flipped frame or permission bit. What keeps it fast is asserted as
// counts (pages visited, regions reduced to linear relations, Z3 queries), which do not depend
// on the machine's load; the times themselves (target: 5 s) are measured by
// `baton bench checker` (docs/benchmarks.md). Labelled "slow".
#include <catch2/catch.hpp>
#include <random>

#include "baton/checker/check.hpp"
#include "baton/checker/overlay.hpp"
#include "baton/model/ept_builder.hpp"
#include "baton/model/sample.hpp"

using namespace baton;
using checker::Verdict;

TEST_CASE("At 1M leaves, equivalence is proven and a flipped bit refuted with a bounded number of Z3 queries",
          "[checker][scale]") {
  model::SampleOptions o;
  o.mem_bytes = std::uint64_t{4} << 30;
  auto a = model::make_sample(o);
  REQUIRE(a.ok());
  o.leaf_level = 2;
  auto b = model::make_sample(o);
  REQUIRE(b.ok());
  const checker::TreeRef ta = checker::tree_of(*a, "4K"), tb = checker::tree_of(*b, "2M");
  Result<checker::PropertyResult> r = checker::check_equivalence(ta, tb);
  REQUIRE(r.ok());
  CAPTURE(r->summary, r->stats.pages, r->stats.linear, r->stats.faithful, r->stats.z3_queries);
  CHECK(r->verdict == Verdict::kProven);
  // Identical subtrees are discharged by hashing and each page of 4 KiB leaves against one
  // 2 MiB leaf becomes one linear relation: a few pages visited, no faithful page encoding,
  // one Z3 query (measured: 7 pages, 515 relations, 1 query).
  CHECK(r->stats.pages <= 16);
  CHECK(r->stats.faithful == 0);
  CHECK(r->stats.linear <= 2048);
  CHECK(r->stats.z3_queries <= 2);

  std::mt19937_64 rng(99);
  for (unsigned round = 0; round < 4; ++round) {
    const std::uint64_t gpa = (rng() % ((std::uint64_t{3} << 30) >> 12)) << 12;
    const unsigned bit = round % 2 == 0 ? 12 + static_cast<unsigned>(rng() % 34) : static_cast<unsigned>(rng() % 3);
    model::EptBuilder bld(
        a->tables, [] { return model::Hfn{0}; }, a->eptp.root(), a->ept_config);
    auto ea = bld.entry_addr(model::Gpa{gpa}, 1);
    REQUIRE(ea.ok());
    checker::OverlayMemory m(a->tables);
    m.flip_bit(*ea, bit);
    const checker::TreeRef tm{"mutated", a->eptp, &m, a->ept_config};
    r = checker::check_equivalence(tb, tm);
    REQUIRE(r.ok());
    CAPTURE(gpa, bit, r->summary, r->stats.pages, r->stats.linear, r->stats.faithful, r->stats.z3_queries);
    REQUIRE(r->verdict == Verdict::kRefuted);
    CHECK((r->counterexample->gpa->value & ~model::kPageMask) == gpa);
    CHECK(r->counterexample->confirmed_concretely);
    // The refutation stays as small as the proof (measured: 8 or 9 pages, 1 query).
    CHECK(r->stats.pages <= 16);
    CHECK(r->stats.faithful <= 1);
    CHECK(r->stats.z3_queries <= 2);
  }
}
