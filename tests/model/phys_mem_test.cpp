// FrameStore: a sparse frame map that behaves like a map under inserts, erases and copies.
#include <catch2/catch.hpp>
#include <map>
#include <random>

#include "baton/model/phys_mem.hpp"

using namespace baton::model;

TEST_CASE("an absent frame reads as nullptr and a written frame reads back") {
  FrameStore m;
  CHECK(m.frame(Hfn{5}) == nullptr);
  std::uint64_t v = 0;
  CHECK_FALSE(m.read_u64(Hpa{0x5008}, &v));
  m.write_u64(Hpa{0x5008}, 0xABCD);
  REQUIRE(m.read_u64(Hpa{0x5008}, &v));
  CHECK(v == 0xABCD);
  CHECK(m.size() == 1);
}

TEST_CASE("the frame store matches a std::map under random inserts and erases") {
  FrameStore m;
  std::map<std::uint64_t, std::uint64_t> ref;
  std::mt19937_64 rng(9);
  for (int i = 0; i < 20000; ++i) {
    const std::uint64_t f = rng() % 3000;
    if (rng() % 3 == 0) {
      CHECK(m.erase(Hfn{f}) == (ref.erase(f) == 1));
    } else {
      const std::uint64_t v = rng();
      m.write_u64(hpa_of(Hfn{f}), v);
      ref[f] = v;
    }
  }
  CHECK(m.size() == ref.size());
  for (const auto& [f, v] : ref) {
    std::uint64_t got = 0;
    REQUIRE(m.read_u64(hpa_of(Hfn{f}), &got));
    CHECK(got == v);
  }
  const FrameStore copy = m;
  CHECK(copy.frames() == m.frames());
  std::uint64_t erased_any = 0;
  for (std::uint64_t f = 0; f < 3000; ++f) erased_any += ref.count(f) == 0 && copy.frame(Hfn{f}) != nullptr;
  CHECK(erased_any == 0);
}
