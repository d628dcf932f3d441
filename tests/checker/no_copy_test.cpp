// The no-copy property: Z3 (decomposed and monolithic) against a concrete sweep and a
// per-gfn brute force on random and mutated maps, and on hand-written ftrace captures of a
// local migration (same pfns), a local migration with one remapped gfn, and a precopy.
#include "baton/checker/no_copy.hpp"

#include <catch2/catch.hpp>
#include <fstream>
#include <random>
#include <sstream>

#include "baton/traces/ftrace.hpp"

using namespace baton;
using traces::Mapping;
using LeafMap = std::map<std::uint64_t, Mapping>;

namespace {

std::string data(const std::string& name) {
  std::ifstream in(std::string(BATON_CHECKER_DATA_DIR) + "/" + name, std::ios::binary);
  REQUIRE(in);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

model::MappingSet set_of(const LeafMap& m) {
  auto s = traces::to_mapping_set(m);
  REQUIRE(s);
  return *s;
}

constexpr std::uint64_t kSpan = 8 * 512;  // gfns [0, 4096): eight 2 MiB slots

// A random map over [0, kSpan): each 2 MiB slot is empty, one 2 MiB leaf, or scattered 4 KiB leaves.
LeafMap random_map(std::mt19937_64& rng) {
  LeafMap m;
  for (std::uint64_t slot = 0; slot < kSpan / 512; ++slot) {
    const std::uint64_t base = slot * 512;
    const std::uint64_t pfn_base = 0x100000 + (rng() % 64) * 512;
    switch (rng() % 3) {
      case 0: break;
      case 1: m[base] = Mapping{pfn_base, 2, 7, true, 0}; break;
      default:
        for (std::uint64_t g = base; g < base + 512; g += 1 + rng() % 40)
          m[g] = Mapping{rng() % 2 ? pfn_base + (g - base) : 0x200000 + rng() % 100000, 1, 7, true, 0};
    }
  }
  return m;
}

// A destination derived from `src` as a local migration would leave it (same frames, 2 MiB
// leaves sometimes split, some leaves missing, some new ones) and then maybe broken in one place.
LeafMap derive(const LeafMap& src, std::mt19937_64& rng, bool mutate) {
  LeafMap d;
  for (const auto& [g, l] : src) {
    if (rng() % 8 == 0) continue;  // not touched again after the migration
    if (l.level == 2 && rng() % 2) {
      for (std::uint64_t i = 0; i < 512; i += 1 + rng() % 7) d[g + i] = Mapping{l.pfn + i, 1, 3, true, 0};
    } else {
      d[g] = l;
    }
  }
  for (int k = 0; k < 5; ++k) {  // fresh mappings where the source had none
    const std::uint64_t g = rng() % kSpan;
    if (!traces::lookup_pfn(src, g) && !traces::lookup_pfn(d, g)) d[g] = Mapping{0x300000 + g, 1, 7, true, 0};
  }
  if (mutate && !d.empty()) {
    auto it = std::next(d.begin(), static_cast<long>(rng() % d.size()));
    if (it->second.level == 2) {  // split the leaf and move one of its frames
      const Mapping l = it->second;
      const std::uint64_t g = it->first;
      d.erase(it);
      for (std::uint64_t i = 0; i < 512; ++i) d[g + i] = Mapping{l.pfn + i, 1, 7, true, 0};
      d[g + rng() % 512].pfn += 1 + rng() % 1000;
    } else {
      it->second.pfn ^= std::uint64_t{1} << (rng() % 30);
    }
  }
  return d;
}

// The brute force: every gfn of the span looked up in both maps.
std::optional<std::uint64_t> brute_first_difference(const LeafMap& a, const LeafMap& b) {
  for (std::uint64_t g = 0; g < kSpan; ++g) {
    auto pa = traces::lookup_pfn(a, g), pb = traces::lookup_pfn(b, g);
    if (pa && pb && *pa != *pb) return g;
  }
  return std::nullopt;
}

}  // namespace

TEST_CASE("no-copy: Z3 agrees with the concrete sweep and a per-gfn brute force on random and mutated maps",
          "[no-copy][property]") {
  std::mt19937_64 rng(20261125);
  int refuted = 0, proven = 0;
  // How many maps each Z3 path decided, per outcome: every path must see maps to refute too.
  int batched_refuted = 0, batched_proven = 0, mono_refuted = 0, mono_proven = 0;
  for (int iter = 0; iter < 60; ++iter) {
    // Odd iterations break the destination. Iterations 0 and 1 of every 4 ask in batches of 16
    // segments (one broken map, one intact); 0 and 1 of every 8 also ask the whole-map formula
    // (~0.2 s each on these maps).
    const bool mutate = iter % 2 == 1;
    const bool batched = iter % 4 < 2;
    const bool mono_too = iter % 8 < 2;
    const LeafMap src = random_map(rng);
    const LeafMap dst = derive(src, rng, mutate);
    const model::MappingSet a = set_of(src), b = set_of(dst);
    const auto brute = brute_first_difference(src, dst);
    auto concrete = checker::concrete_no_copy(a, b);
    REQUIRE(concrete);
    checker::NoCopyOptions dec;
    dec.segments_per_query = batched ? 16 : 512;  // several batches as well as one
    auto z = checker::check_no_copy(a, b, dec);
    REQUIRE(z);
    checker::NoCopyOptions mono;
    mono.decompose = false;
    auto zm = mono_too ? checker::check_no_copy(a, b, mono) : z;
    REQUIRE(zm);
    INFO("iteration " << iter);
    REQUIRE(concrete->has_value() == brute.has_value());
    if (batched) CHECK(z->segments > 16);  // more than one batch
    if (brute) {
      ++refuted;
      batched_refuted += batched;
      mono_refuted += mono_too;
      CHECK((*concrete)->gfn == *brute);  // the sweep reports the lowest differing gfn
      for (const auto* r : {&*z, &*zm}) {
        REQUIRE(r->verdict == checker::Verdict::kRefuted);
        REQUIRE(r->counterexample);
        const auto& cx = *r->counterexample;
        CHECK(cx.confirmed_concretely);
        CHECK(traces::lookup_pfn(src, cx.gfn) == cx.source_pfn);
        CHECK(traces::lookup_pfn(dst, cx.gfn) == cx.dest_pfn);
        CHECK(cx.source_pfn != cx.dest_pfn);
      }
    } else {
      ++proven;
      batched_proven += batched;
      mono_proven += mono_too;
      CHECK(z->verdict == checker::Verdict::kProven);
      CHECK(zm->verdict == checker::Verdict::kProven);
    }
    // The shared-gfn count matches the brute force.
    std::uint64_t shared = 0;
    for (std::uint64_t g = 0; g < kSpan; ++g) shared += traces::lookup_pfn(src, g) && traces::lookup_pfn(dst, g);
    CHECK(z->shared_frames == shared);
  }
  // Both outcomes were exercised, on every path.
  CHECK(refuted > 10);
  CHECK(proven > 10);
  CHECK(batched_refuted >= 10);
  CHECK(batched_proven >= 10);
  CHECK(mono_refuted >= 5);
  CHECK(mono_proven >= 5);
}

namespace {
// Maps of `n` two-frame runs at gfns 8i (gaps keep the runs apart), the destination equal
// except that run `moved` points elsewhere: n overlap segments, one of them broken.
std::pair<LeafMap, LeafMap> runs_with_one_moved(unsigned n, unsigned moved) {
  LeafMap a, b;
  for (unsigned i = 0; i < n; ++i)
    for (std::uint64_t k = 0; k < 2; ++k) {
      const std::uint64_t g = 8 * i + k;
      a[g] = Mapping{0x5000 + g, 1, 7, true, 0};
      b[g] = Mapping{(i == moved ? 0x9000 : 0x5000) + g, 1, 7, true, 0};
    }
  return {a, b};
}
}  // namespace

TEST_CASE("no-copy: a moved run is found in every position of every batch, first, middle and last",
          "[no-copy]") {
  constexpr unsigned kRuns = 20;
  for (const std::size_t per : {std::size_t{1}, std::size_t{3}, std::size_t{16}, std::size_t{512}}) {
    for (unsigned moved = 0; moved < kRuns; ++moved) {
      CAPTURE(per, moved);
      const auto [src, dst] = runs_with_one_moved(kRuns, moved);
      checker::NoCopyOptions o;
      o.segments_per_query = per;
      auto r = checker::check_no_copy(set_of(src), set_of(dst), o);
      REQUIRE(r);
      CHECK(r->segments == kRuns);
      REQUIRE(r->verdict == checker::Verdict::kRefuted);
      CHECK(r->counterexample->gfn / 8 == moved);
      CHECK(r->counterexample->dest_pfn == r->counterexample->source_pfn + 0x4000);
      // The batches stop at the one that holds the moved run.
      CHECK(r->z3_queries == moved / per + 1);
    }
    // Intact, all batches are asked and the property holds.
    const auto [src, dst] = runs_with_one_moved(kRuns, kRuns);
    checker::NoCopyOptions o;
    o.segments_per_query = per;
    auto r = checker::check_no_copy(set_of(src), set_of(dst), o);
    REQUIRE(r);
    CHECK(r->verdict == checker::Verdict::kProven);
    CHECK(r->shared_frames == 2 * kRuns);
    CHECK(r->z3_queries == (kRuns + per - 1) / per);
  }
}

TEST_CASE("no-copy: the whole-map formula refutes a moved run in any position and proves intact maps",
          "[no-copy]") {
  checker::NoCopyOptions mono;
  mono.decompose = false;
  for (unsigned moved : {0u, 1u, 9u, 18u, 19u}) {
    CAPTURE(moved);
    const auto [src, dst] = runs_with_one_moved(20, moved);
    auto r = checker::check_no_copy(set_of(src), set_of(dst), mono);
    REQUIRE(r);
    CHECK(r->z3_queries == 1);
    REQUIRE(r->verdict == checker::Verdict::kRefuted);
    CHECK(r->counterexample->gfn / 8 == moved);
  }
  const auto [src, dst] = runs_with_one_moved(20, 20);
  auto r = checker::check_no_copy(set_of(src), set_of(dst), mono);
  REQUIRE(r);
  CHECK(r->verdict == checker::Verdict::kProven);
  // Partly overlapping maps: only the shared gfns count, in the whole-map formula too.
  LeafMap a{{0x10, Mapping{0x500, 1, 7, true, 0}}, {0x11, Mapping{0x501, 1, 7, true, 0}}};
  LeafMap b{{0x11, Mapping{0x501, 1, 7, true, 0}}, {0x12, Mapping{0x999, 1, 7, true, 0}}};
  r = checker::check_no_copy(set_of(a), set_of(b), mono);
  REQUIRE(r);
  CHECK(r->verdict == checker::Verdict::kProven);
  b[0x11].pfn = 0x777;
  r = checker::check_no_copy(set_of(a), set_of(b), mono);
  REQUIRE(r);
  REQUIRE(r->verdict == checker::Verdict::kRefuted);
  CHECK(r->counterexample->gfn == 0x11);
}

TEST_CASE("no-copy: empty and disjoint maps are inconclusive, never proven", "[no-copy]") {
  LeafMap a{{0x10, Mapping{0x500, 1, 7, true, 0}}}, b{{0x20, Mapping{0x999, 1, 7, true, 0}}}, none;
  auto r = checker::check_no_copy(set_of(a), set_of(b));
  REQUIRE(r);
  CHECK(r->verdict == checker::Verdict::kUnknown);
  CHECK(r->shared_frames == 0);
  CHECK_THAT(r->summary, Catch::Contains("no gfn is mapped by both VMs"));
  auto e = checker::check_no_copy(set_of(none), set_of(none));
  REQUIRE(e);
  CHECK(e->verdict == checker::Verdict::kUnknown);
  CHECK_THAT(e->summary, Catch::Contains("neither VM maps any gfn"));
}

TEST_CASE("no-copy: a 2 MiB leaf against 4 KiB leaves of the same frames is proven; one moved frame is found",
          "[no-copy]") {
  LeafMap big{{0x200, Mapping{0x1c0000, 2, 7, true, 0}}};
  LeafMap small;
  for (std::uint64_t i = 0; i < 512; ++i) small[0x200 + i] = Mapping{0x1c0000 + i, 1, 3, true, 0};
  auto r = checker::check_no_copy(set_of(big), set_of(small));
  REQUIRE(r);
  CHECK(r->verdict == checker::Verdict::kProven);
  CHECK(r->shared_frames == 512);
  small[0x3ff].pfn = 0x77;
  r = checker::check_no_copy(set_of(big), set_of(small));
  REQUIRE(r);
  REQUIRE(r->verdict == checker::Verdict::kRefuted);
  CHECK(r->counterexample->gfn == 0x3ff);
  CHECK(r->counterexample->source_pfn == 0x1c01ff);
  CHECK(r->counterexample->dest_pfn == 0x77);
}

TEST_CASE("no-copy: unaligned runs and out-of-range leaves are clear errors", "[no-copy][bad-input]") {
  model::MappingRun run;
  run.gpa = model::Gpa{0x1800};
  run.size = 0x1000;
  run.hpa = model::Hpa{0x5000};
  run.perms = model::Perms::from_bits(7);
  auto s = model::MappingSet::from_runs({run});
  REQUIRE(s);
  auto r = checker::check_no_copy(*s, model::MappingSet{});
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("not 4 KiB aligned"));
  LeafMap huge{{std::uint64_t{1} << 45, Mapping{0x10, 1, 7, true, 0}}};
  auto c = traces::to_mapping_set(huge);
  REQUIRE_FALSE(c);
  CHECK_THAT(c.error().message, Catch::Contains("52-bit"));
}

namespace {
// Imports a capture and returns the two VMs' maps as normal forms.
std::pair<model::MappingSet, model::MappingSet> imported(const std::string& file, std::uint32_t src, std::uint32_t dst) {
  auto imp = traces::parse_ftrace(data(file));
  REQUIRE(imp);
  auto a = traces::mappings(imp->trace, src);
  REQUIRE(a);
  auto b = traces::mappings(imp->trace, dst);
  REQUIRE(b);
  return {set_of(*a), set_of(*b)};
}
}  // namespace

TEST_CASE("no-copy on captures: local migration with the same pfns is proven", "[no-copy][ftrace]") {
  auto [a, b] = imported("nocopy-local.txt", 4242, 4300);
  checker::NoCopyOptions one, mono;
  one.segments_per_query = 1;
  mono.decompose = false;
  for (const checker::NoCopyOptions& o : {checker::NoCopyOptions{}, one, mono}) {
    CAPTURE(o.decompose, o.segments_per_query);
    auto r = checker::check_no_copy(a, b, o);
    REQUIRE(r);
    CHECK(r->verdict == checker::Verdict::kProven);
    CHECK(r->shared_frames == 4);  // gfns 0x100, 0x401, 0x402 and 0x2a5 (inside the source's 2 MiB leaf)
  }
}

TEST_CASE("no-copy on captures: one remapped gfn is refuted naming it and both pfns", "[no-copy][ftrace]") {
  auto [a, b] = imported("nocopy-onediff.txt", 4242, 4300);
  // The default, one segment a query, and the whole-map formula (`check --no-copy --monolithic`).
  checker::NoCopyOptions one, mono;
  one.segments_per_query = 1;
  mono.decompose = false;
  for (const checker::NoCopyOptions& o : {checker::NoCopyOptions{}, one, mono}) {
    CAPTURE(o.decompose, o.segments_per_query);
    auto r = checker::check_no_copy(a, b, o);
    REQUIRE(r);
    REQUIRE(r->verdict == checker::Verdict::kRefuted);
    CHECK(r->counterexample->gfn == 0x402);
    CHECK(r->counterexample->source_pfn == 0x1a2b02);
    CHECK(r->counterexample->dest_pfn == 0x1a2f02);
    CHECK_THAT(r->summary, Catch::Contains("gfn 0x402") && Catch::Contains("0x1a2b02") && Catch::Contains("0x1a2f02"));
  }
}

TEST_CASE("no-copy on captures: a precopy (private memory in the worker) is refuted", "[no-copy][ftrace]") {
  auto [a, b] = imported("nocopy-precopy-report.txt", 3105, 3209);
  auto r = checker::check_no_copy(a, b);
  REQUIRE(r);
  CHECK(r->verdict == checker::Verdict::kRefuted);
  CHECK(r->shared_frames == 4);
}
