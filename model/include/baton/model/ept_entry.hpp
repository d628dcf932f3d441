// EptEntry: one 64-bit EPT paging-structure entry, and its classification by level.
//
// Bit layout from Intel SDM Vol. 3C §29.3.2, tables 29-1 (PML4E), 29-2 (PDPTE mapping a
// 1 GiB page), 29-3 (PDPTE referencing a PD), 29-4 (PDE mapping a 2 MiB page), 29-5 (PDE
// referencing a PT) and 29-6 (PTE). Misconfiguration rules from §29.3.3.1.
// Levels are numbered as the SDM walks them: 4 = PML4E, 3 = PDPTE, 2 = PDE, 1 = PTE.
#pragma once

#include <cstdint>
#include <string>
#include <type_traits>

#include "baton/model/addr.hpp"

namespace baton::model {

// Machine parameters that decide which entry bits are reserved.
struct EptConfig {
  unsigned maxphyaddr = 46;      // MAXPHYADDR (CPUID.80000008H:EAX[7:0]); 36..52
  bool execute_only = true;      // IA32_VMX_EPT_VPID_CAP[0]: execute-only entries allowed
  bool mode_based_exec = false;  // "mode-based execute control for EPT" (bit 10 = user X)
  friend bool operator==(const EptConfig&, const EptConfig&) = default;
};

// Memory types (SDM Vol. 3A §12.3, table 12-2 encodings as used in EPT bits 5:3).
enum class MemType : std::uint8_t { kUC = 0, kWC = 1, kWT = 4, kWP = 5, kWB = 6 };

// Returns whether a 3-bit memory-type encoding is valid in an EPT leaf (2, 3, 7 are not).
constexpr bool is_valid_leaf_memtype(unsigned t) { return t == 0 || t == 1 || t == 4 || t == 5 || t == 6; }
// Names a memory-type encoding ("WB", or "reserved(2)").
std::string memtype_name(unsigned t);

// R/W/X permission bits, as in EPT bits 2:0.
struct Perms {
  bool r = false, w = false, x = false;
  constexpr unsigned bits() const { return (r ? 1u : 0u) | (w ? 2u : 0u) | (x ? 4u : 0u); }
  static constexpr Perms from_bits(unsigned b) { return Perms{(b & 1) != 0, (b & 2) != 0, (b & 4) != 0}; }
  constexpr Perms operator&(Perms o) const { return Perms{r && o.r, w && o.w, x && o.x}; }
  // Returns whether every permission in `this` is also in `o`.
  constexpr bool subset_of(Perms o) const { return (bits() & ~o.bits()) == 0; }
  friend constexpr bool operator==(Perms, Perms) = default;
};
// Renders permissions as "rwx" with dashes for missing ones.
std::string to_string(Perms p);

// What an entry is at a given level.
enum class EntryKind : std::uint8_t { kNotPresent, kTable, kLeaf4K, kLeaf2M, kLeaf1G, kMisconfigured };
// Names an entry kind.
const char* to_string(EntryKind k);

// Why an entry is misconfigured (SDM §29.3.3.1).
enum class MisconfigReason : std::uint8_t {
  kNone,
  kWriteWithoutRead,         // bit 0 clear, bit 1 set (write-only or write+execute)
  kExecuteOnlyUnsupported,   // bit 0 clear, bit 2 set, and execute-only is not supported
  kReservedBits,             // a reserved bit is set for this level / MAXPHYADDR
  kInvalidMemType,           // leaf memory type 2, 3 or 7
  kLargePageAtPml4,          // bit 7 set in a PML4E
};
// Names a misconfiguration reason in a short phrase.
const char* to_string(MisconfigReason r);

// The bytes covered by a leaf at a level: 4 KiB, 2 MiB, 1 GiB.
constexpr std::uint64_t level_span(unsigned level) { return std::uint64_t{1} << (kPageShift + 9 * (level - 1)); }
// The index of a GPA's entry in the table at a level (bits 47:39, 38:30, 29:21, 20:12).
constexpr unsigned level_index(Gpa gpa, unsigned level) {
  return static_cast<unsigned>((gpa.value >> (kPageShift + 9 * (level - 1))) & 0x1FF);
}

// One EPT paging-structure entry, a value class around the raw 64 bits.
class EptEntry {
 public:
  // Bit positions, each defined once (tables 29-1 .. 29-6).
  static constexpr unsigned kBitRead = 0;
  static constexpr unsigned kBitWrite = 1;
  static constexpr unsigned kBitExec = 2;            // supervisor-mode execute under MBEC
  static constexpr unsigned kMemTypeShift = 3;       // bits 5:3, leaves only
  static constexpr unsigned kBitIgnorePat = 6;       // leaves only
  static constexpr unsigned kBitPageSize = 7;        // PDPTE/PDE: 1 = leaf; PML4E: must be 0
  static constexpr unsigned kBitAccessed = 8;
  static constexpr unsigned kBitDirty = 9;           // leaves only
  static constexpr unsigned kBitUserExec = 10;       // user-mode execute under MBEC
  static constexpr unsigned kBitVerifyGuestPaging = 57;
  static constexpr unsigned kBitPagingWrite = 58;
  static constexpr unsigned kBitSupervisorShadowStack = 60;
  static constexpr unsigned kBitSubPageWrite = 61;
  static constexpr unsigned kBitSuppressVe = 63;     // leaves only
  static constexpr std::uint64_t kAddrBitsMax = 0x000FFFFFFFFFF000ull;  // bits 51:12

  constexpr EptEntry() = default;
  constexpr explicit EptEntry(std::uint64_t raw) : raw_(raw) {}

  constexpr std::uint64_t raw() const { return raw_; }
  constexpr bool bit(unsigned b) const { return ((raw_ >> b) & 1) != 0; }

  constexpr bool readable() const { return bit(kBitRead); }
  constexpr bool writable() const { return bit(kBitWrite); }
  constexpr bool executable() const { return bit(kBitExec); }
  constexpr Perms perms() const { return Perms::from_bits(static_cast<unsigned>(raw_ & 7)); }
  constexpr unsigned memory_type() const { return static_cast<unsigned>((raw_ >> kMemTypeShift) & 7); }
  constexpr bool ignore_pat() const { return bit(kBitIgnorePat); }
  constexpr bool page_size() const { return bit(kBitPageSize); }
  constexpr bool accessed() const { return bit(kBitAccessed); }
  constexpr bool dirty() const { return bit(kBitDirty); }
  constexpr bool user_exec() const { return bit(kBitUserExec); }
  constexpr bool suppress_ve() const { return bit(kBitSuppressVe); }
  // Bits 51:12 as an address; callers mask by level via leaf_base/table_hfn.
  constexpr std::uint64_t addr_bits() const { return raw_ & kAddrBitsMax; }

  // Returns whether the entry is present: any of R/W/X (or user-execute under MBEC) set.
  constexpr bool is_present(const EptConfig& cfg) const {
    return (raw_ & 7) != 0 || (cfg.mode_based_exec && user_exec());
  }
  // Returns whether, at this level, a present entry maps a page (rather than a table).
  constexpr bool is_leaf_at(unsigned level) const { return level == 1 || ((level == 2 || level == 3) && page_size()); }
  // Returns the reserved-bit mask for this entry at a level (depends on leaf/table and MAXPHYADDR).
  constexpr std::uint64_t reserved_mask(unsigned level, const EptConfig& cfg) const {
    // Bits 51:MAXPHYADDR are reserved in every entry (tables 29-1..29-6).
    std::uint64_t m = cfg.maxphyaddr >= 52 ? 0 : (kAddrBitsMax | 0xFFF) & ~((std::uint64_t{1} << cfg.maxphyaddr) - 1);
    if (!is_leaf_at(level)) m |= 0x78;                  // tables: bits 6:3 (PML4E 7:3; bit 7 checked apart)
    else if (level == 3) m |= 0x3FFFF000;               // 1 GiB page: bits 29:12 (table 29-2)
    else if (level == 2) m |= 0x1FF000;                 // 2 MiB page: bits 20:12 (table 29-4)
    return m;
  }
  // Classifies the entry at a level; `reason` receives the misconfiguration reason, if any.
  constexpr EntryKind classify(unsigned level, const EptConfig& cfg, MisconfigReason* reason = nullptr) const {
    MisconfigReason r = MisconfigReason::kNone;
    EntryKind k;
    if (!is_present(cfg)) {
      k = EntryKind::kNotPresent;
    } else {
      if (writable() && !readable()) r = MisconfigReason::kWriteWithoutRead;
      else if (!readable() && executable() && !cfg.execute_only) r = MisconfigReason::kExecuteOnlyUnsupported;
      else if (level == 4 && page_size()) r = MisconfigReason::kLargePageAtPml4;
      else if ((raw_ & reserved_mask(level, cfg)) != 0) r = MisconfigReason::kReservedBits;
      else if (is_leaf_at(level) && !is_valid_leaf_memtype(memory_type())) r = MisconfigReason::kInvalidMemType;
      if (r != MisconfigReason::kNone) k = EntryKind::kMisconfigured;
      else if (!is_leaf_at(level)) k = EntryKind::kTable;
      else k = level == 1 ? EntryKind::kLeaf4K : level == 2 ? EntryKind::kLeaf2M : EntryKind::kLeaf1G;
    }
    if (reason != nullptr) *reason = r;
    return k;
  }
  // Returns the host frame of the next table (for table entries).
  constexpr Hfn table_hfn() const { return Hfn{addr_bits() >> kPageShift}; }
  // Returns the host-physical base of the page a leaf at `level` maps.
  constexpr Hpa leaf_base(unsigned level) const { return Hpa{addr_bits() & ~(level_span(level) - 1)}; }

  // Factories.
  static constexpr EptEntry table(Hfn next, Perms p) {
    return EptEntry{(next.value << kPageShift) | p.bits()};
  }
  static constexpr EptEntry leaf(unsigned level, Hpa base, Perms p, unsigned memtype = 6,
                                 bool ipat = false) {
    std::uint64_t v = (base.value & kAddrBitsMax) | p.bits() | (std::uint64_t{memtype & 7} << kMemTypeShift);
    if (ipat) v |= std::uint64_t{1} << kBitIgnorePat;
    if (level > 1) v |= std::uint64_t{1} << kBitPageSize;
    return EptEntry{v};
  }
  constexpr EptEntry with_bit(unsigned b, bool on) const {
    return EptEntry{on ? (raw_ | (std::uint64_t{1} << b)) : (raw_ & ~(std::uint64_t{1} << b))};
  }
  constexpr EptEntry flipped(unsigned b) const { return EptEntry{raw_ ^ (std::uint64_t{1} << b)}; }

  friend constexpr bool operator==(EptEntry, EptEntry) = default;

 private:
  std::uint64_t raw_ = 0;
};
static_assert(sizeof(EptEntry) == 8 && std::is_trivially_copyable_v<EptEntry>,
              "an EptEntry must be exactly one raw 64-bit word");

// Describes an entry at a level in one line ("table -> hfn 0x1234 rwx", "2M leaf ...").
std::string describe(EptEntry e, unsigned level, const EptConfig& cfg);

// The EPT pointer (VMCS field 0x201A), SDM Vol. 3C §25.6.11, table 25-9.
class Eptp {
 public:
  static constexpr unsigned kWalkLengthShift = 3;  // bits 5:3 = walk length - 1
  static constexpr unsigned kBitAd = 6;            // enable accessed/dirty flags
  static constexpr unsigned kBitSss = 7;           // supervisor shadow-stack control

  constexpr Eptp() = default;
  constexpr explicit Eptp(std::uint64_t raw) : raw_(raw) {}
  // Builds a 4-level EPTP with write-back memory type.
  static constexpr Eptp make(Hfn root, bool ad, unsigned memtype = 6) {
    return Eptp{(root.value << kPageShift) | (3u << kWalkLengthShift) | (ad ? 1u << kBitAd : 0u) | memtype};
  }
  constexpr std::uint64_t raw() const { return raw_; }
  constexpr unsigned memory_type() const { return static_cast<unsigned>(raw_ & 7); }
  constexpr unsigned walk_length() const { return static_cast<unsigned>((raw_ >> kWalkLengthShift) & 7) + 1; }
  constexpr bool ad_enabled() const { return ((raw_ >> kBitAd) & 1) != 0; }
  constexpr Hfn root() const { return Hfn{(raw_ & EptEntry::kAddrBitsMax) >> kPageShift}; }
  // Returns an empty string when valid (UC/WB type, 4-level walk, no reserved bits), else why not.
  std::string validate(const EptConfig& cfg) const;
  friend constexpr bool operator==(Eptp, Eptp) = default;

 private:
  std::uint64_t raw_ = 0;
};

}  // namespace baton::model
