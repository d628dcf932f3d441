// The Z3 encoding against the model: entry classification, EPTP validity and the ignored-bit
// mask, on random entries and every level and configuration.
#include "encode.hpp"

#include <catch2/catch.hpp>
#include <random>

#include "baton/model/ept_entry.hpp"
#include "decompose.hpp"

using namespace baton;

namespace {
// Draws an entry with each bit group set often enough to reach every rule.
std::uint64_t random_entry(std::mt19937_64& rng) {
  std::uint64_t e = rng() & 0x7F;                                                // R/W/X, memtype, IPAT
  if (rng() % 2) e |= std::uint64_t{1} << 7;                                     // page size
  e |= (rng() & 0xF) << 8;                                                       // A, D, user-X, 11
  e |= (rng() % 4 == 0 ? rng() : (rng() & 0x3FFFFFFF)) & 0x000FFFFFFFFFF000ull;  // address, sometimes huge
  if (rng() % 4 == 0) e |= rng() & 0xFFF0000000000000ull;                        // bits 52-63
  if (rng() % 8 == 0) e &= ~std::uint64_t{7};                                    // not present
  return e;
}

// The class the model gives: 0 not present, 1 table, 2 leaf, 3 misconfigured.
unsigned model_class(model::EptEntry e, unsigned level, const model::EptConfig& cfg) {
  switch (e.classify(level, cfg)) {
    case model::EntryKind::kNotPresent: return 0;
    case model::EntryKind::kTable: return 1;
    case model::EntryKind::kMisconfigured: return 3;
    default: return 2;
  }
}
}  // namespace

TEST_CASE("Z3's entry classification agrees with EptEntry::classify at every level and configuration",
          "[checker][encode]") {
  std::vector<model::EptConfig> cfgs(5);
  cfgs[1].maxphyaddr = 36;
  cfgs[2].maxphyaddr = 52;
  cfgs[3].execute_only = false;
  cfgs[4].mode_based_exec = true;
  z3::context c;
  std::mt19937_64 rng(5);
  for (const model::EptConfig& cfg : cfgs) {
    for (int i = 0; i < 600; ++i) {
      const std::uint64_t raw = random_entry(rng);
      for (unsigned level = 1; level <= 4; ++level) {
        const z3::expr k = checker::detail::entry_class(c.bv_val(raw, 64), level, cfg).simplify();
        CAPTURE(raw, level, cfg.maxphyaddr, cfg.execute_only, cfg.mode_based_exec);
        REQUIRE(k.is_numeral());
        CHECK(k.get_numeral_uint() == model_class(model::EptEntry{raw}, level, cfg));
      }
    }
  }
}

TEST_CASE("Z3's EPTP validity agrees with Eptp::validate", "[checker][encode]") {
  z3::context c;
  std::mt19937_64 rng(9);
  for (unsigned maxphy : {36u, 46u, 52u}) {
    model::EptConfig cfg;
    cfg.maxphyaddr = maxphy;
    for (int i = 0; i < 500; ++i) {
      std::uint64_t raw = model::Eptp::make(model::Hfn{rng() & 0xFFFFFF}, rng() % 2).raw();
      switch (rng() % 5) {
        case 0: raw ^= std::uint64_t{1} << (rng() % 64); break;
        case 1: raw = (raw & ~7ull) | (rng() % 8); break;
        case 2: raw = (raw & ~0x38ull) | ((rng() % 8) << 3); break;
        default: break;
      }
      const z3::expr v = checker::detail::eptp_valid(c.bv_val(raw, 64), cfg).simplify();
      CAPTURE(raw, maxphy);
      CHECK(v.is_true() == model::Eptp{raw}.validate(cfg).empty());
    }
  }
}

TEST_CASE("Bits in the ignored mask change neither the class nor the leaf fields of any entry", "[checker][encode]") {
  std::mt19937_64 rng(3);
  for (bool mbec : {false, true}) {
    model::EptConfig cfg;
    cfg.mode_based_exec = mbec;
    const std::uint64_t mask = checker::detail::ignored_mask(cfg);
    CHECK(((mask >> 10) & 1) == (mbec ? 0u : 1u));
    for (int i = 0; i < 2000; ++i) {
      const model::EptEntry e{random_entry(rng)};
      const model::EptEntry f{e.raw() ^ (rng() & mask)};
      for (unsigned level = 1; level <= 4; ++level) {
        CAPTURE(e.raw(), f.raw(), level);
        REQUIRE(e.classify(level, cfg) == f.classify(level, cfg));
        CHECK(e.perms() == f.perms());
        CHECK(e.memory_type() == f.memory_type());
        CHECK(e.ignore_pat() == f.ignore_pat());
        CHECK(e.addr_bits() == f.addr_bits());
      }
    }
  }
}

TEST_CASE("The TSC relation is arithmetic modulo 2^64", "[checker][encode]") {
  z3::context c;
  auto v = [&](std::uint64_t x) { return c.bv_val(x, 64); };
  // Host time advanced by 1000 across a wrap of the offset.
  CHECK(checker::detail::tsc_continuous(v(5), v(5 - 1000), v(~std::uint64_t{0} - 10), v(989)).simplify().is_true());
  CHECK(checker::detail::tsc_continuous(v(5), v(5 - 999), v(0), v(1000)).simplify().is_false());
}
