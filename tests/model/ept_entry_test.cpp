// EptEntry classification, one or more cases per SDM rule (Vol. 3C §29.3.2, §29.3.3.1).
#include <catch2/catch.hpp>

#include "baton/model/ept_entry.hpp"

using namespace baton::model;

namespace {
const EptConfig kCfg{};  // MAXPHYADDR 46, execute-only supported, no MBEC
EntryKind kind(std::uint64_t raw, unsigned level, MisconfigReason* r = nullptr, const EptConfig& cfg = kCfg) {
  return EptEntry{raw}.classify(level, cfg, r);
}
}  // namespace

TEST_CASE("an entry with R, W and X all clear is not present at every level") {
  for (unsigned level = 1; level <= 4; ++level) {
    CAPTURE(level);
    CHECK(kind(0, level) == EntryKind::kNotPresent);
    // Other bits do not make an entry present (§29.3.2: present iff any of bits 2:0).
    CHECK(kind(0x123456789000ull | (1u << 8) | (1u << 7), level) == EntryKind::kNotPresent);
  }
}

TEST_CASE("write permitted without read is a misconfiguration at every level") {
  for (unsigned level = 1; level <= 4; ++level) {
    for (std::uint64_t rwx : {0x2ull, 0x6ull}) {  // write-only, write+execute
      CAPTURE(level, rwx);
      MisconfigReason r;
      CHECK(kind(0x1000 | rwx, level, &r) == EntryKind::kMisconfigured);
      CHECK(r == MisconfigReason::kWriteWithoutRead);
    }
  }
}

TEST_CASE("execute-only entries are valid only when the processor supports them") {
  MisconfigReason r;
  CHECK(kind(0x1000 | 0x4, 1, &r) == EntryKind::kLeaf4K);
  EptConfig no_xo;
  no_xo.execute_only = false;
  CHECK(kind(0x1000 | 0x4, 1, &r, no_xo) == EntryKind::kMisconfigured);
  CHECK(r == MisconfigReason::kExecuteOnlyUnsupported);
}

TEST_CASE("leaf memory types 2, 3 and 7 are misconfigurations; 0, 1, 4, 5, 6 are valid") {
  for (unsigned t = 0; t < 8; ++t) {
    CAPTURE(t);
    MisconfigReason r;
    const std::uint64_t raw = 0x1000 | 0x7 | (std::uint64_t{t} << 3);
    const EntryKind k = kind(raw, 1, &r);
    if (t == 2 || t == 3 || t == 7) {
      CHECK(k == EntryKind::kMisconfigured);
      CHECK(r == MisconfigReason::kInvalidMemType);
    } else {
      CHECK(k == EntryKind::kLeaf4K);
    }
  }
}

TEST_CASE("memory-type bits of a table entry are reserved, not a memory type") {
  // In table entries bits 6:3 are reserved (tables 29-3, 29-5), so any value there is a
  // reserved-bit misconfiguration rather than a memory-type one.
  for (unsigned level = 2; level <= 3; ++level) {
    MisconfigReason r;
    CHECK(kind(0x1000 | 0x7 | (6u << 3), level, &r) == EntryKind::kMisconfigured);
    CHECK(r == MisconfigReason::kReservedBits);
  }
}

TEST_CASE("bit 7 set in a PML4E is a misconfiguration") {
  MisconfigReason r;
  CHECK(kind(0x1000 | 0x7 | 0x80, 4, &r) == EntryKind::kMisconfigured);
  CHECK(r == MisconfigReason::kLargePageAtPml4);
}

TEST_CASE("bit 7 selects a leaf at levels 3 and 2 and is ignored in a PTE") {
  CHECK(kind(0x40000000 | 0x7 | (6u << 3) | 0x80, 3) == EntryKind::kLeaf1G);
  CHECK(kind(0x200000 | 0x7 | (6u << 3) | 0x80, 2) == EntryKind::kLeaf2M);
  CHECK(kind(0x1000 | 0x7 | (6u << 3) | 0x80, 1) == EntryKind::kLeaf4K);
  CHECK(kind(0x1000 | 0x7, 3) == EntryKind::kTable);
  CHECK(kind(0x1000 | 0x7, 2) == EntryKind::kTable);
  CHECK(kind(0x1000 | 0x7, 4) == EntryKind::kTable);
}

TEST_CASE("address bits below the page size of a large leaf are reserved") {
  MisconfigReason r;
  // 2 MiB leaf: bits 20:12 reserved (table 29-4).
  CHECK(kind(0x200000 | 0x1000 | 0x7 | (6u << 3) | 0x80, 2, &r) == EntryKind::kMisconfigured);
  CHECK(r == MisconfigReason::kReservedBits);
  CHECK(kind(0x200000 | 0x100000 | 0x7 | (6u << 3) | 0x80, 2) == EntryKind::kMisconfigured);
  // 1 GiB leaf: bits 29:12 reserved (table 29-2).
  CHECK(kind(0x40000000 | 0x200000 | 0x7 | (6u << 3) | 0x80, 3, &r) == EntryKind::kMisconfigured);
  CHECK(kind(0x40000000 | 0x1000 | 0x7 | (6u << 3) | 0x80, 3) == EntryKind::kMisconfigured);
}

TEST_CASE("bits from MAXPHYADDR up to 51 are reserved at every level") {
  for (unsigned maxphy : {36u, 39u, 46u, 52u}) {
    EptConfig cfg;
    cfg.maxphyaddr = maxphy;
    for (unsigned level = 1; level <= 4; ++level) {
      CAPTURE(maxphy, level);
      const std::uint64_t ok_raw = 0x7 | (level == 1 ? (6u << 3) : 0u);
      CHECK(kind(ok_raw, level, nullptr, cfg) != EntryKind::kMisconfigured);
      for (unsigned b = maxphy; b <= 51; ++b) {
        MisconfigReason r;
        CHECK(kind(ok_raw | (std::uint64_t{1} << b), level, &r, cfg) == EntryKind::kMisconfigured);
        CHECK(r == MisconfigReason::kReservedBits);
      }
      if (maxphy > 12) CHECK(kind(ok_raw | (std::uint64_t{1} << (maxphy - 1)), level, nullptr, cfg) != EntryKind::kMisconfigured);
    }
  }
}

TEST_CASE("ignored and software bits never change the classification") {
  const std::uint64_t leaf = 0x1000 | 0x7 | (6u << 3);
  // Bits 8 (A), 9 (D), 10 (user-exec without MBEC), 11, 52-62 and 63 (suppress #VE) are not reserved.
  for (unsigned b : {8u, 9u, 10u, 11u, 52u, 53u, 54u, 55u, 56u, 57u, 58u, 59u, 60u, 61u, 62u, 63u}) {
    CAPTURE(b);
    CHECK(kind(leaf | (std::uint64_t{1} << b), 1) == EntryKind::kLeaf4K);
  }
}

TEST_CASE("mode-based execute makes bit 10 alone a present entry") {
  EptConfig mbec;
  mbec.mode_based_exec = true;
  CHECK(kind(0x1000 | 0x400 | (6u << 3), 1, nullptr, mbec) == EntryKind::kLeaf4K);
  CHECK(kind(0x1000 | 0x400 | (6u << 3), 1) == EntryKind::kNotPresent);
}

TEST_CASE("factories build entries whose accessors read back what was given") {
  const EptEntry t = EptEntry::table(Hfn{0x1234}, Perms{true, true, false});
  CHECK(t.table_hfn() == Hfn{0x1234});
  CHECK(t.perms() == Perms{true, true, false});
  CHECK(t.classify(3, kCfg) == EntryKind::kTable);
  const EptEntry l = EptEntry::leaf(2, Hpa{0x40200000}, Perms{true, false, true}, 4, true);
  CHECK(l.leaf_base(2) == Hpa{0x40200000});
  CHECK(l.memory_type() == 4);
  CHECK(l.ignore_pat());
  CHECK(l.page_size());
  CHECK(l.classify(2, kCfg) == EntryKind::kLeaf2M);
  CHECK(l.flipped(0).readable() == false);
}

TEST_CASE("the EPTP accepts UC/WB 4-level pointers and rejects everything else") {
  CHECK(Eptp::make(Hfn{0x100}, true).validate(kCfg).empty());
  CHECK(Eptp::make(Hfn{0x100}, false, 0).validate(kCfg).empty());
  CHECK(Eptp::make(Hfn{0x100}, true).ad_enabled());
  CHECK(Eptp::make(Hfn{0x100}, true).root() == Hfn{0x100});
  CHECK(Eptp::make(Hfn{0x100}, true).walk_length() == 4);
  for (unsigned t : {1u, 2u, 3u, 4u, 5u, 7u}) CHECK_FALSE(Eptp::make(Hfn{0x100}, true, t).validate(kCfg).empty());
  CHECK_FALSE(Eptp{(0x100ull << 12) | (4u << 3) | 6}.validate(kCfg).empty());  // 5-level
  // Bits 5:3 hold the walk length minus 1: every value but 3 (4 levels) is refused.
  for (unsigned len_minus_1 = 0; len_minus_1 < 8; ++len_minus_1) {
    CAPTURE(len_minus_1);
    CHECK(Eptp{(0x100ull << 12) | (len_minus_1 << 3) | 6}.validate(kCfg).empty() == (len_minus_1 == 3));
  }
  CHECK_FALSE(Eptp{(0x100ull << 12) | (3u << 3) | 6 | 0x100}.validate(kCfg).empty());  // bit 8 reserved
  CHECK_FALSE(Eptp{(std::uint64_t{1} << 46) | (3u << 3) | 6}.validate(kCfg).empty());  // above MAXPHYADDR
}
