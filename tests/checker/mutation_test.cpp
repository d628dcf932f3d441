// The bit-relevance study on one sample per kind: the bits the SDM says matter are harmful,
// the ignored ones harmless, and the concrete path agrees with every verdict.
#include "baton/checker/mutation.hpp"

#include <catch2/catch.hpp>

using namespace baton;
using checker::SampleKind;

namespace {
// Returns the row of a kind in the table.
std::size_t row(const checker::BitRelevanceTable& t, SampleKind k) {
  for (std::size_t i = 0; i < t.kinds.size(); ++i)
    if (t.kinds[i] == k) return i;
  FAIL("kind missing from the table: " << checker::to_string(k));
  return 0;
}
}  // namespace

TEST_CASE("The bit-relevance study finds R/W/X, type and address bits harmful and A/D/ignored bits harmless",
          "[checker][mutation]") {
  checker::BitRelevanceOptions o;
  o.samples = 1;
  // A subset of the bits keeps this test to a few seconds; docs/ept-bit-relevance.md has all 64.
  std::uint64_t chosen = 0;
  for (unsigned b : {0u,  1u,  2u,  3u,  4u,  5u,  6u,  7u,  8u,  9u,  10u, 11u, 20u, 30u,
                     45u, 46u, 51u, 52u, 53u, 56u, 57u, 58u, 59u, 60u, 61u, 62u, 63u})
    chosen |= std::uint64_t{1} << b;
  o.bits = chosen;
  auto t = checker::run_bit_relevance(o);
  REQUIRE(t.ok());
  CHECK(t->concrete_agrees);
  CHECK(t->kinds.size() == 10);
  CHECK(t->checks == 10 * 27);
  auto harmful = [&](SampleKind k, unsigned bit) { return t->cells[row(*t, k)][bit].harmful == 1; };
  auto harmless = [&](SampleKind k, unsigned bit) { return t->cells[row(*t, k)][bit].harmless == 1; };
  for (SampleKind k : t->kinds) {
    CAPTURE(checker::to_string(k));
    for (unsigned bit : {8u, 9u, 10u, 11u, 52u, 53u, 56u, 57u, 58u, 59u, 60u, 61u, 62u, 63u}) {
      CAPTURE(bit);
      CHECK(harmless(k, bit));
    }
    CHECK(harmful(k, 0));
  }
  for (SampleKind k : {SampleKind::kLeaf4K, SampleKind::kLeaf2M, SampleKind::kLeaf1G}) {
    CAPTURE(checker::to_string(k));
    for (unsigned bit : {1u, 2u, 3u, 4u, 5u, 6u, 30u, 45u, 46u, 51u}) {
      CAPTURE(bit);
      CHECK(harmful(k, bit));
    }
  }
  // Bit 7 is ignored in a PTE, reserved in a PML4E and the page-size bit in between.
  CHECK(harmless(SampleKind::kLeaf4K, 7));
  CHECK(harmful(SampleKind::kPml4Table, 7));
  CHECK(harmful(SampleKind::kPdTable, 7));
  // Reserved bits 6:3 of table entries.
  for (unsigned bit : {3u, 4u, 5u, 6u}) CHECK(harmful(SampleKind::kPdptTable, bit));
  // Empty entries only care about R/W/X.
  CHECK(harmless(SampleKind::kEmptyPt, 20));
  CHECK(harmful(SampleKind::kEmptyPt, 2));
  const std::string md = checker::to_markdown(*t);
  CHECK(md.find("| bit | meaning |") != std::string::npos);
  CHECK(md.find("WARNING") == std::string::npos);
}
