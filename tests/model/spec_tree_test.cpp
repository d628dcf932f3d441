// Spec trees and leaf relabelling against a plain concrete model: random memslot tables, the
// tree's mapping set equals the slots page by page; a relabelled tree translates every GPA to
// the moved frame; a flipped bit shows up.
#include <catch2/catch.hpp>
#include <random>

#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/spec_tree.hpp"

namespace baton::model {
namespace {

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// Random non-overlapping memslots with 4 KiB-aligned sizes; some 2 MiB aligned, some read-only.
std::vector<Memslot> random_slots(std::mt19937_64& rng) {
  std::vector<Memslot> slots;
  std::uint64_t gpa = 0, hpa = std::uint64_t{4} << 30;
  const int n = std::uniform_int_distribution<int>(1, 4)(rng);
  for (int i = 0; i < n; ++i) {
    const bool big = (rng() & 1) != 0;
    const std::uint64_t size = big ? std::uniform_int_distribution<std::uint64_t>(1, 6)(rng) * 2 * kMiB
                                   : std::uniform_int_distribution<std::uint64_t>(1, 700)(rng) * kPageSize;
    gpa = (gpa + 2 * kMiB - 1) & ~(2 * kMiB - 1);
    if ((rng() & 3) == 0) gpa += std::uniform_int_distribution<std::uint64_t>(1, 50)(rng) * kPageSize;
    hpa = (hpa + 2 * kMiB - 1) & ~(2 * kMiB - 1);
    slots.push_back(Memslot{static_cast<std::uint32_t>(i), Gpa{gpa}, size, Hpa{hpa}, (rng() % 5) == 0, false});
    gpa += size + std::uniform_int_distribution<std::uint64_t>(0, 3)(rng) * kPageSize;
    hpa += size + kPageSize;
  }
  return slots;
}

// The concrete meaning of the slots: where a GPA goes, with what permissions.
std::optional<std::pair<Hpa, Perms>> expected_at(const std::vector<Memslot>& slots, Gpa g) {
  for (const Memslot& s : slots)
    if (s.contains(g)) return std::make_pair(s.hpa_at(g), s.max_perms());
  return std::nullopt;
}

TEST_CASE("a spec tree translates every page exactly as its memslots say", "[spec-tree][property]") {
  std::mt19937_64 rng(7);
  for (int iter = 0; iter < 40; ++iter) {
    const std::vector<Memslot> slots = random_slots(rng);
    const unsigned level = 1 + static_cast<unsigned>(iter % 3);
    const std::vector<GpaRange> mmio = {GpaRange{Gpa{std::uint64_t{3} << 30}, 2 * kPageSize}};
    FrameStore fs;
    auto ep = build_spec_tree(slots, mmio, level, true, EptConfig{}, fs);
    REQUIRE(ep);
    const Gpa end = slots.back().end() + 8 * kPageSize;
    for (Gpa g{0}; g < end; g = g + kPageSize) {
      const WalkResult w = walk(*ep, g, Access::kRead, fs);
      const auto e = expected_at(slots, g);
      if (!e) {
        CHECK(w.kind == WalkKind::kViolation);
        continue;
      }
      REQUIRE(w.translated());
      CHECK(w.hpa == e->first);
      CHECK(w.perms.bits() == e->second.bits());
    }
    for (std::uint64_t off = 0; off < mmio[0].size; off += kPageSize)
      CHECK(walk(*ep, mmio[0].gpa + off, Access::kRead, fs).kind == WalkKind::kMisconfig);
  }
}

TEST_CASE("relabelling moves every leaf through the copy map and nothing else", "[spec-tree][property]") {
  std::mt19937_64 rng(11);
  for (int iter = 0; iter < 30; ++iter) {
    const std::vector<Memslot> slots = random_slots(rng);
    const unsigned level = 1 + static_cast<unsigned>(iter % 2);
    FrameStore fs;
    auto ep = build_spec_tree(slots, {}, level, true, EptConfig{}, fs);
    REQUIRE(ep);
    auto before = MappingSet::from_tree(*ep, fs);
    REQUIRE(before);
    const std::uint64_t shift = std::uint64_t{8} << 30;  // a 2 MiB multiple keeps large leaves aligned
    FrameStore moved = fs;
    auto n = relabel_leaves(*ep, moved, EptConfig{}, [&](Hpa h, unsigned) { return h + shift; });
    REQUIRE(n);
    CHECK(*n > 0);
    auto after = MappingSet::from_tree(*ep, moved);
    REQUIRE(after);
    REQUIRE(after->runs().size() == before->runs().size());
    for (std::size_t i = 0; i < before->runs().size(); ++i) {
      MappingRun want = before->runs()[i];
      want.hpa = want.hpa + shift;
      CHECK(after->runs()[i] == want);
    }
    // The identity map changes nothing.
    FrameStore same = fs;
    REQUIRE(relabel_leaves(*ep, same, EptConfig{}, [](Hpa h, unsigned) { return h; }));
    CHECK(*MappingSet::from_tree(*ep, same) == *before);
  }
}

TEST_CASE("a flipped frame bit in a spec tree leaf changes exactly that page", "[spec-tree][mutation]") {
  const std::vector<Memslot> slots = {Memslot{0, Gpa{0}, 64 * kPageSize, Hpa{std::uint64_t{4} << 30}, false, false}};
  FrameStore fs;
  auto ep = build_spec_tree(slots, {}, 1, true, EptConfig{}, fs);
  REQUIRE(ep);
  const WalkResult w = walk(*ep, Gpa{5 * kPageSize}, Access::kRead, fs);
  REQUIRE(w.translated());
  const WalkStep& leaf = w.path[w.path_len - 1];
  fs.write_u64(leaf.entry_addr, leaf.entry.flipped(13).raw());
  for (std::uint64_t p = 0; p < 64; ++p) {
    const WalkResult x = walk(*ep, Gpa{p * kPageSize}, Access::kRead, fs);
    REQUIRE(x.translated());
    CHECK((x.hpa == slots[0].hpa_at(Gpa{p * kPageSize})) == (p != 5));
  }
}

TEST_CASE("spec trees and relabelling reject bad input", "[spec-tree][negative]") {
  FrameStore fs;
  CHECK_FALSE(build_spec_tree({}, {}, 4, true, EptConfig{}, fs));
  const std::vector<Memslot> overlap = {Memslot{0, Gpa{0}, 8 * kPageSize, Hpa{0x100000000}, false, false},
                                        Memslot{1, Gpa{4 * kPageSize}, 8 * kPageSize, Hpa{0x200000000}, false, false}};
  CHECK_FALSE(build_spec_tree(overlap, {}, 1, true, EptConfig{}, fs));
  FrameStore empty;
  CHECK_FALSE(relabel_leaves(Eptp::make(Hfn{5}, true), empty, EptConfig{}, [](Hpa h, unsigned) { return h; }));
  const std::vector<Memslot> big = {Memslot{0, Gpa{0}, 4 * kMiB, Hpa{0x100000000}, false, false}};
  FrameStore t;
  auto ep = build_spec_tree(big, {}, 2, true, EptConfig{}, t);
  REQUIRE(ep);
  // Moving a 2 MiB leaf by 4 KiB would misalign it.
  CHECK_FALSE(relabel_leaves(*ep, t, EptConfig{}, [](Hpa h, unsigned) { return h + kPageSize; }));
}

}  // namespace
}  // namespace baton::model
