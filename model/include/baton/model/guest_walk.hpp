// The guest page-table walker: translates a guest-virtual address to a guest-physical one
// through 4-level IA-32e paging held in guest-physical memory, as Intel SDM Vol. 3A §4.5
// (translation), §4.6 (access rights) and §4.7 (page-fault exceptions) describe.
//
// The walk is read-only: it neither sets accessed/dirty flags nor caches anything. Protection
// keys, shadow stacks, HLAT and 5-level paging are not modelled (baton's guests never enable
// them); PCIDs in CR3 bits 11:0 are ignored.
#pragma once

#include <array>
#include <cstdint>
#include <span>
#include <string>

#include "baton/model/addr.hpp"
#include "baton/model/ept_walk.hpp"  // Access
#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"

namespace baton::model {

// Read access to guest-physical memory, as the guest's page walker sees it.
class GuestPhysicalMemory {
 public:
  virtual ~GuestPhysicalMemory() = default;
  // Reads the aligned 64-bit little-endian word holding `a`; returns false when no memory backs it.
  virtual bool read_u64(Gpa a, std::uint64_t* out) const = 0;
};

// Bits of an IA-32e paging-structure entry (SDM Vol. 3A §4.5, tables 4-15 .. 4-20).
namespace pte {
inline constexpr unsigned kBitPresent = 0;
inline constexpr unsigned kBitWritable = 1;  // R/W
inline constexpr unsigned kBitUser = 2;      // U/S
inline constexpr unsigned kBitPwt = 3;
inline constexpr unsigned kBitPcd = 4;
inline constexpr unsigned kBitAccessed = 5;
inline constexpr unsigned kBitDirty = 6;                              // leaves only
inline constexpr unsigned kBitPageSize = 7;                           // PDPTE/PDE: maps a page; PML4E: reserved
inline constexpr unsigned kBitGlobal = 8;                             // leaves only
inline constexpr unsigned kBitPatLarge = 12;                          // PAT bit of a 2 MiB / 1 GiB leaf
inline constexpr unsigned kBitNx = 63;                                // XD; reserved unless EFER.NXE = 1
inline constexpr std::uint64_t kAddrBitsMax = 0x000FFFFFFFFFF000ull;  // bits 51:12
}  // namespace pte

// Control-register state that decides how a guest walk checks access rights (SDM §4.1.3, §4.6).
struct GuestPagingConfig {
  unsigned maxphyaddr = 46;  // MAXPHYADDR; bits 51:MAXPHYADDR of every entry are reserved
  bool nxe = true;           // IA32_EFER.NXE: bit 63 is XD (else reserved)
  bool wp = true;            // CR0.WP: supervisor writes honour R/W
  bool smep = false;         // CR4.SMEP: no supervisor fetch from user pages
  bool smap = false;         // CR4.SMAP: no supervisor data access to user pages unless AC
  bool ac = false;           // RFLAGS.AC (only matters with SMAP)
  bool page_1g = true;       // CPUID.80000001H:EDX.Page1GB: 1 GiB pages supported
  friend bool operator==(const GuestPagingConfig&, const GuestPagingConfig&) = default;
};

// Derives the paging configuration from a vCPU state (CR0.WP, CR4.SMEP/SMAP, EFER.NXE, RFLAGS.AC).
GuestPagingConfig paging_config_of(const VcpuState& s);

// #PF error-code bits (SDM Vol. 3A §4.7, figure 4-12).
namespace pf {
inline constexpr std::uint32_t kPresent = 1u << 0;   // 0: not-present page; 1: protection or reserved bit
inline constexpr std::uint32_t kWrite = 1u << 1;     // the access was a write
inline constexpr std::uint32_t kUser = 1u << 2;      // the access was a user-mode access (CPL = 3)
inline constexpr std::uint32_t kReserved = 1u << 3;  // a reserved bit was set in some entry
inline constexpr std::uint32_t kFetch = 1u << 4;     // instruction fetch (only with NXE or SMEP)
}  // namespace pf

// Outcome kinds of a guest walk.
enum class GuestWalkKind : std::uint8_t {
  kTranslated,    // gpa and the leaf are valid and the access is permitted
  kPageFault,     // #PF with `error_code`
  kNonCanonical,  // the GVA is not canonical: #GP (or #SS), not a page fault
  kAbsentMemory,  // a paging-structure entry lies outside guest memory (an answer, not a crash)
};
// Names a guest-walk outcome kind.
const char* to_string(GuestWalkKind k);

// One step of a guest walk: the level (4 = PML4E ... 1 = PTE), where the entry was read, its value.
struct GuestWalkStep {
  unsigned level = 0;
  Gpa entry_addr;
  std::uint64_t entry = 0;
};

// The result of one guest walk. For kTranslated, every field but error_code is meaningful;
// for kPageFault, `level` is where the walk stopped and user/writable/nx hold the rights
// gathered so far (the full rights when a protection check failed).
struct GuestWalkResult {
  GuestWalkKind kind = GuestWalkKind::kPageFault;
  Gpa gpa;
  std::uint64_t page_size = 0;   // 4 KiB, 2 MiB or 1 GiB
  unsigned leaf_level = 0;       // 1, 2 or 3
  unsigned level = 0;            // level at which the walk ended
  bool user = false;             // effective U/S: 1 at every level
  bool writable = false;         // effective R/W: 1 at every level
  bool nx = false;               // effective XD: 1 at some level (with NXE)
  std::uint32_t error_code = 0;  // #PF error code
  std::array<GuestWalkStep, 4> path{};
  unsigned path_len = 0;

  bool translated() const { return kind == GuestWalkKind::kTranslated; }
};

// Walks `gva` for an access at CPL 3 (`user_mode`) or CPL < 3 under the 4-level tree at `cr3`.
GuestWalkResult guest_walk(std::uint64_t cr3, Gva gva, Access access, bool user_mode, const GuestPhysicalMemory& mem,
                           const GuestPagingConfig& cfg = {});

// Returns the reserved-bit mask of an entry at a level (depends on PS, MAXPHYADDR, NXE).
std::uint64_t guest_reserved_mask(std::uint64_t entry, unsigned level, const GuestPagingConfig& cfg);

// Returns whether a GVA is canonical for 48-bit linear addresses (bits 63:47 all equal).
constexpr bool is_canonical(Gva a) {
  const std::uint64_t top = a.value >> 47;
  return top == 0 || top == 0x1FFFF;
}

// Explains a #PF error code in a short phrase ("protection, write, user").
std::string pf_error_text(std::uint32_t error_code);

// Renders a guest walk as readable lines, level by level.
std::string describe(const GuestWalkResult& w, Gva gva);

// A half-open range of guest-virtual addresses [start, start + size).
struct GvaRange {
  Gva start;
  std::uint64_t size = 0;
};

// What check_identity found: how the ranges are mapped.
struct IdentityReport {
  std::uint64_t pages_4k = 0;  // leaves of each size that intersect the ranges
  std::uint64_t pages_2m = 0;
  std::uint64_t pages_1g = 0;
  std::uint64_t unmapped_bytes = 0;  // bytes of the ranges with no translation
  bool all_user = true;              // every leaf is reachable with U/S = 1 at every level
  bool all_writable = true;          // ... and R/W = 1 at every level
  bool any_nx = false;               // some leaf is execute-disabled
};

// Checks that every mapped page inside the ranges translates to GPA == GVA. With
// `require_mapped`, an unmapped page is an error too. The error names the first offending GVA.
Result<IdentityReport> check_identity(std::uint64_t cr3, std::span<const GvaRange> ranges,
                                      const GuestPhysicalMemory& mem, const GuestPagingConfig& cfg = {},
                                      bool require_mapped = true);

}  // namespace baton::model
