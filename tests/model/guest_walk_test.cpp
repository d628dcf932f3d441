// The guest page walker against SDM Vol. 3A §4.5-4.7: translation, access rights and #PF codes.
#include "baton/model/guest_walk.hpp"

#include <catch2/catch.hpp>
#include <cstring>
#include <map>

using namespace baton::model;

namespace {

constexpr std::uint64_t P = 1, W = 2, U = 4, A = 0x20, D = 0x40, PS = 0x80;
constexpr std::uint64_t XD = std::uint64_t{1} << 63;

// Sparse guest-physical memory of 4 KiB pages, for hand-built page tables.
class TestMemory final : public GuestPhysicalMemory {
 public:
  // Writes one 64-bit entry.
  void put(std::uint64_t gpa, std::uint64_t v) { pages_[gpa >> 12][(gpa & 0xFFF) / 8] = v; }
  bool read_u64(Gpa a, std::uint64_t* out) const override {
    if (a.value >= limit) return false;
    auto it = pages_.find(a.value >> 12);
    *out = it == pages_.end() ? 0 : it->second[(a.value & 0xFFF) / 8];
    return true;
  }
  std::uint64_t limit = std::uint64_t{1} << 40;

 private:
  std::map<std::uint64_t, std::array<std::uint64_t, 512>> pages_;
};

// Tables at fixed GPAs: PML4 0x1000, PDPT 0x2000, PD 0x3000, PT 0x4000.
constexpr std::uint64_t kPml4 = 0x1000, kPdpt = 0x2000, kPd = 0x3000, kPt = 0x4000;

// Builds a chain mapping GVA 0x5000 (PML4[0] -> PDPT[0] -> PD[0] -> PT[5]) to GPA 0x9000 with
// the given flags at each level.
TestMemory chain(std::uint64_t f4, std::uint64_t f3, std::uint64_t f2, std::uint64_t f1) {
  TestMemory m;
  m.put(kPml4, kPdpt | f4);
  m.put(kPdpt, kPd | f3);
  m.put(kPd, kPt | f2);
  m.put(kPt + 5 * 8, 0x9000 | f1);
  return m;
}

constexpr std::uint64_t kAll = P | W | U | A;

}  // namespace

TEST_CASE("a fully permissive 4-level chain translates and keeps the page offset", "[guest_walk]") {
  const TestMemory m = chain(kAll, kAll, kAll, kAll | D);
  const auto w = guest_walk(kPml4, Gva{0x5123}, Access::kWrite, true, m);
  CAPTURE(describe(w, Gva{0x5123}));
  REQUIRE(w.translated());
  CHECK(w.gpa == Gpa{0x9123});
  CHECK(w.page_size == 4096);
  CHECK(w.leaf_level == 1);
  CHECK(w.user);
  CHECK(w.writable);
  CHECK_FALSE(w.nx);
  CHECK(w.path_len == 4);
  CHECK(w.path[0].entry_addr == Gpa{kPml4});
  CHECK(w.path[3].entry_addr == Gpa{kPt + 5 * 8});
}

TEST_CASE("a not-present entry faults with P=0 and the access bits (SDM 4.7)", "[guest_walk]") {
  TestMemory m = chain(kAll, kAll, kAll, kAll);
  m.put(kPt + 5 * 8, 0x9000 | W | U);  // PTE not present
  SECTION("user read: U/S=1 only") {
    const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kRead, true, m);
    REQUIRE(w.kind == GuestWalkKind::kPageFault);
    CHECK(w.error_code == pf::kUser);
    CHECK(w.level == 1);
  }
  SECTION("supervisor write: W/R=1 only") {
    const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kWrite, false, m);
    CHECK(w.error_code == pf::kWrite);
  }
  SECTION("user fetch with NXE: I/D=1") {
    const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kFetch, true, m);
    CHECK(w.error_code == (pf::kUser | pf::kFetch));
  }
  SECTION("user fetch without NXE or SMEP: I/D stays 0") {
    GuestPagingConfig cfg;
    cfg.nxe = false;
    const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kFetch, true, m, cfg);
    CHECK(w.error_code == pf::kUser);
  }
  SECTION("a not-present PML4E stops the walk at level 4") {
    TestMemory empty;
    const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kRead, false, empty);
    CHECK(w.level == 4);
    CHECK(w.error_code == 0);
    CHECK(w.path_len == 1);
  }
}

TEST_CASE("U/S=0 at any level denies ring-3 access but not supervisor reads", "[guest_walk]") {
  const TestMemory m = chain(kAll, kAll, P | W | A, kAll);  // PDE is supervisor-only
  const auto user = guest_walk(kPml4, Gva{0x5000}, Access::kRead, true, m);
  REQUIRE(user.kind == GuestWalkKind::kPageFault);
  CHECK(user.error_code == (pf::kPresent | pf::kUser));
  CHECK_FALSE(user.user);
  const auto sup = guest_walk(kPml4, Gva{0x5000}, Access::kRead, false, m);
  CHECK(sup.translated());
  CHECK_FALSE(sup.user);
}

TEST_CASE("a write to a read-only page faults; supervisor writes obey CR0.WP", "[guest_walk]") {
  const TestMemory m = chain(kAll, kAll, kAll, P | U | A);  // PTE read-only
  const auto user = guest_walk(kPml4, Gva{0x5000}, Access::kWrite, true, m);
  REQUIRE(user.kind == GuestWalkKind::kPageFault);
  CHECK(user.error_code == (pf::kPresent | pf::kWrite | pf::kUser));
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kRead, true, m).translated());
  GuestPagingConfig wp;
  wp.wp = true;
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kWrite, false, m, wp).error_code == (pf::kPresent | pf::kWrite));
  GuestPagingConfig no_wp;
  no_wp.wp = false;
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kWrite, false, m, no_wp).translated());
}

TEST_CASE("XD at any level forbids fetches when EFER.NXE=1", "[guest_walk]") {
  const TestMemory m = chain(kAll | XD, kAll, kAll, kAll);
  const auto fetch = guest_walk(kPml4, Gva{0x5000}, Access::kFetch, true, m);
  REQUIRE(fetch.kind == GuestWalkKind::kPageFault);
  CHECK(fetch.error_code == (pf::kPresent | pf::kUser | pf::kFetch));
  CHECK(fetch.nx);
  const auto read = guest_walk(kPml4, Gva{0x5000}, Access::kRead, true, m);
  CHECK(read.translated());
  CHECK(read.nx);
  const auto sup = guest_walk(kPml4, Gva{0x5000}, Access::kFetch, false, m);
  CHECK(sup.error_code == (pf::kPresent | pf::kFetch));
}

TEST_CASE("bit 63 is reserved when EFER.NXE=0", "[guest_walk]") {
  const TestMemory m = chain(kAll, kAll, kAll, kAll | XD);
  GuestPagingConfig cfg;
  cfg.nxe = false;
  const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kRead, true, m, cfg);
  REQUIRE(w.kind == GuestWalkKind::kPageFault);
  CHECK(w.error_code == (pf::kPresent | pf::kReserved | pf::kUser));
  CHECK(w.level == 1);
}

TEST_CASE("a 2 MiB leaf translates with a 21-bit offset", "[guest_walk]") {
  TestMemory m;
  m.put(kPml4, kPdpt | kAll);
  m.put(kPdpt, kPd | kAll);
  m.put(kPd + 3 * 8, 0x4000'0000 | kAll | D | PS);  // PD[3]: GVA 0x600000 -> GPA 0x40000000
  const auto w = guest_walk(kPml4, Gva{0x6A'BCDE}, Access::kWrite, true, m);
  CAPTURE(describe(w, Gva{0x6ABCDE}));
  REQUIRE(w.translated());
  CHECK(w.gpa == Gpa{0x4000'0000 + 0xA'BCDE});
  CHECK(w.page_size == (2u << 20));
  CHECK(w.leaf_level == 2);
  CHECK(w.path_len == 3);
}

TEST_CASE("a 1 GiB leaf translates with a 30-bit offset", "[guest_walk]") {
  TestMemory m;
  m.put(kPml4, kPdpt | kAll);
  m.put(kPdpt + 2 * 8, (std::uint64_t{5} << 30) | kAll | D | PS);  // GVA 2G.. -> GPA 5G..
  const auto w = guest_walk(kPml4, Gva{(std::uint64_t{2} << 30) + 0x1234567}, Access::kRead, true, m);
  REQUIRE(w.translated());
  CHECK(w.gpa == Gpa{(std::uint64_t{5} << 30) + 0x1234567});
  CHECK(w.page_size == (std::uint64_t{1} << 30));
  CHECK(w.leaf_level == 3);
  SECTION("without 1 GiB page support, PS in a PDPTE is reserved") {
    GuestPagingConfig cfg;
    cfg.page_1g = false;
    const auto f = guest_walk(kPml4, Gva{std::uint64_t{2} << 30}, Access::kRead, true, m, cfg);
    CHECK(f.error_code == (pf::kPresent | pf::kReserved | pf::kUser));
  }
}

TEST_CASE("reserved bits give #PF with P=1 and RSVD=1 (SDM tables 4-15 .. 4-20)", "[guest_walk]") {
  TestMemory m;
  m.put(kPml4, kPdpt | kAll);
  m.put(kPdpt, kPd | kAll);
  SECTION("bit 13 of a 2 MiB leaf") {
    m.put(kPd, 0x20'0000 | (1u << 13) | kAll | PS);
    const auto w = guest_walk(kPml4, Gva{0x1000}, Access::kRead, false, m);
    CHECK(w.error_code == (pf::kPresent | pf::kReserved));
    CHECK(w.level == 2);
  }
  SECTION("bit 20 of a 1 GiB leaf") {
    m.put(kPdpt, (std::uint64_t{1} << 30) | (1u << 20) | kAll | PS);
    const auto w = guest_walk(kPml4, Gva{0x1000}, Access::kWrite, true, m);
    CHECK(w.error_code == (pf::kPresent | pf::kReserved | pf::kWrite | pf::kUser));
    CHECK(w.level == 3);
  }
  SECTION("PS in a PML4E") {
    m.put(kPml4, kPdpt | kAll | PS);
    const auto w = guest_walk(kPml4, Gva{0x1000}, Access::kRead, false, m);
    CHECK(w.error_code == (pf::kPresent | pf::kReserved));
    CHECK(w.level == 4);
  }
  SECTION("an address bit at or above MAXPHYADDR") {
    GuestPagingConfig cfg;
    cfg.maxphyaddr = 36;
    m.put(kPd, (std::uint64_t{1} << 40) | kPt | kAll);
    const auto w = guest_walk(kPml4, Gva{0x1000}, Access::kRead, false, m, cfg);
    CHECK(w.error_code == (pf::kPresent | pf::kReserved));
    CHECK(w.level == 2);
  }
  SECTION("a reserved bit in a not-present entry is ignored") {
    m.put(kPd, (1u << 13) | PS);
    const auto w = guest_walk(kPml4, Gva{0x1000}, Access::kRead, false, m);
    CHECK(w.error_code == 0);
  }
  SECTION("bit 12 of a 2 MiB leaf is PAT, not reserved") {
    m.put(kPd, 0x20'0000 | (1u << 12) | kAll | PS);
    CHECK(guest_walk(kPml4, Gva{0x1000}, Access::kRead, false, m).translated());
  }
}

TEST_CASE("SMEP and SMAP restrict supervisor access to user pages", "[guest_walk]") {
  const TestMemory m = chain(kAll, kAll, kAll, kAll);
  GuestPagingConfig cfg;
  cfg.smep = true;
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kFetch, false, m, cfg).error_code == (pf::kPresent | pf::kFetch));
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kFetch, true, m, cfg).translated());
  cfg.smep = false;
  cfg.nxe = false;
  cfg.smap = true;
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kRead, false, m, cfg).error_code == pf::kPresent);
  cfg.ac = true;
  CHECK(guest_walk(kPml4, Gva{0x5000}, Access::kRead, false, m, cfg).translated());
}

TEST_CASE("non-canonical addresses and unbacked tables are answers, not crashes", "[guest_walk]") {
  const TestMemory m = chain(kAll, kAll, kAll, kAll);
  CHECK(guest_walk(kPml4, Gva{0x0000'8000'0000'0000}, Access::kRead, true, m).kind == GuestWalkKind::kNonCanonical);
  CHECK(is_canonical(Gva{0xFFFF'8000'0000'0000}));
  TestMemory small = chain(kAll, kAll, kAll, kAll);
  small.limit = 0x3000;  // the PD at 0x3000 lies outside memory
  const auto w = guest_walk(kPml4, Gva{0x5000}, Access::kRead, true, small);
  CHECK(w.kind == GuestWalkKind::kAbsentMemory);
  CHECK(w.level == 2);
}

TEST_CASE("paging_config_of reads CR0.WP, CR4.SMEP/SMAP, EFER.NXE and RFLAGS.AC", "[guest_walk]") {
  VcpuState s;
  s.cr0 = 1u << 16;
  s.cr4 = (1u << 20) | (1u << 21);
  s.efer = 1u << 11;
  s.rflags = 2 | (1u << 18);
  const GuestPagingConfig c = paging_config_of(s);
  CHECK(c.wp);
  CHECK(c.smep);
  CHECK(c.smap);
  CHECK(c.nxe);
  CHECK(c.ac);
  CHECK_FALSE(paging_config_of(VcpuState{}).nxe);
}

TEST_CASE("check_identity accepts identity maps and names the first offending GVA", "[guest_walk]") {
  // 0..4 MiB: a PT for the first 2 MiB, one 2 MiB leaf for the second.
  TestMemory m;
  m.put(kPml4, kPdpt | kAll);
  m.put(kPdpt, kPd | kAll);
  m.put(kPd, kPt | kAll);
  m.put(kPd + 8, 0x20'0000 | kAll | PS);
  for (unsigned i = 0; i < 512; ++i) m.put(kPt + i * 8, (std::uint64_t{i} << 12) | kAll);
  const GvaRange all[1] = {{Gva{0}, 4u << 20}};
  auto ok = check_identity(kPml4, all, m);
  REQUIRE(ok.ok());
  CHECK(ok->pages_4k == 512);
  CHECK(ok->pages_2m == 1);
  CHECK(ok->all_user);
  CHECK(ok->all_writable);

  SECTION("a page mapped elsewhere") {
    m.put(kPt + 7 * 8, 0x8000 | kAll);
    auto bad = check_identity(kPml4, all, m);
    REQUIRE_FALSE(bad.ok());
    CHECK_THAT(bad.error().message, Catch::Contains("GVA 0x7000 maps to GPA 0x8000"));
  }
  SECTION("a hole is an error only when mappings are required") {
    m.put(kPt + 9 * 8, 0);
    auto bad = check_identity(kPml4, all, m);
    REQUIRE_FALSE(bad.ok());
    CHECK_THAT(bad.error().message, Catch::Contains("GVA 0x9000 is not mapped"));
    auto lenient = check_identity(kPml4, all, m, {}, false);
    REQUIRE(lenient.ok());
    CHECK(lenient->unmapped_bytes == 4096);
    CHECK(lenient->pages_4k == 511);
  }
  SECTION("a read-only page is reported") {
    m.put(kPt + 3 * 8, 0x3000 | P | U | A);
    auto r = check_identity(kPml4, all, m);
    REQUIRE(r.ok());
    CHECK_FALSE(r->all_writable);
  }
  SECTION("ranges past the mapping count as unmapped, in large steps") {
    const GvaRange beyond[1] = {{Gva{4u << 20}, std::uint64_t{1} << 39}};
    auto r = check_identity(kPml4, beyond, m, {}, false);
    REQUIRE(r.ok());
    CHECK(r->unmapped_bytes == (std::uint64_t{1} << 39));
  }
}

TEST_CASE("pf_error_text explains the error code", "[guest_walk]") {
  CHECK(pf_error_text(pf::kUser) == "not present, read, user");
  CHECK(pf_error_text(pf::kPresent | pf::kWrite) == "protection, write, supervisor");
  CHECK(pf_error_text(pf::kPresent | pf::kReserved | pf::kFetch | pf::kUser) == "reserved bit, fetch, user");
}
