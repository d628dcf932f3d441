// The cost model: a profile of cycle costs (JSON, defaults sourced in docs/cost-model.md)
// and the account that charges simulated cycles by category.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "baton/model/result.hpp"

namespace baton::sim {

// VMX basic exit reasons the simulator produces (SDM Vol. 3D Appendix C).
enum class ExitReason : std::uint16_t {
  kException = 0,
  kTripleFault = 2,
  kCpuid = 10,
  kHlt = 12,
  kVmcall = 18,
  kVmclear = 19,
  kVmlaunch = 20,
  kVmptrld = 21,
  kVmptrst = 22,
  kVmread = 23,
  kVmresume = 24,
  kVmwrite = 25,
  kVmxoff = 26,
  kVmxon = 27,
  kIo = 30,
  kEntryFailGuestState = 33,
  kEptViolation = 48,
  kEptMisconfig = 49,
  kInvept = 50,
  kPmlFull = 62,
};
// Names an exit reason ("ept-violation", "io", ...).
const char* to_string(ExitReason r);
// Every exit reason, in a fixed order, for reports.
const std::array<ExitReason, 20>& all_exit_reasons();

// The cycle costs of one modelled machine.
struct CostProfile {
  std::string name = "default";
  double frequency_ghz = 2.1;         // reports convert cycles to µs at this clock
  double base_cpi = 1.0;              // cycles per guest instruction outside modelled events
  std::uint64_t exit_round_trip = 1500;  // VM exit + VM entry, hardware part
  // Handler cost (hypervisor software) per exit reason, on top of the round trip.
  std::uint64_t handler_ept_violation = 2500;  // TDP MMU fault path, without the leaf install
  std::uint64_t handler_ept_misconfig = 3000;  // MMIO emulation fast path
  std::uint64_t handler_io = 1200;
  std::uint64_t handler_cpuid = 100;
  std::uint64_t handler_hlt = 500;
  std::uint64_t handler_vmcall = 300;
  std::uint64_t handler_exception = 800;
  std::uint64_t handler_pml_full = 1000;  // plus pml_drain_per_entry for each logged GPA
  std::uint64_t handler_vmx_ud = 800;     // VMX instruction: inject #UD
  std::uint64_t handler_other = 1000;
  std::uint64_t ept_install_leaf = 400;   // write one leaf (and missing tables) in the MMU
  std::uint64_t ept_table_alloc = 300;    // allocate and zero one paging-structure page
  std::uint64_t pml_drain_per_entry = 20;
  std::uint64_t dirty_clear_per_page = 30;  // write-protect / D-clear one leaf when the log is cleared
  std::uint64_t invept = 1000;
  // Migration (docs/cost-model.md, "Migration").
  std::uint64_t migrate_pause = 5000;     // kick the vCPU out of guest mode (IPI + exit) and park it
  std::uint64_t vcpu_state_save = 84000;  // read the full vCPU state (regs, sregs, FPU, MSRs, LAPIC, events)
  std::uint64_t vcpu_state_load = 84000;  // write it into the new instance
  std::uint64_t memslot_register = 2000;  // the new instance registers one memslot from the package
  // The two instances' handshake at the pause (0: none; a KVM local migration pays both).
  std::uint64_t handover_notify = 0;  // the old instance wakes the new one's waiting thread (eventfd write + IPI)
  std::uint64_t handover_wakeup = 0;  // until that thread runs; overlaps the state save, the rest waits
  // TLB model: entries per page size (rounded down to a power of two, direct mapped).
  bool tlb_enabled = true;
  std::uint64_t tlb_entries_4k = 1536;
  std::uint64_t tlb_entries_2m = 1536;
  std::uint64_t tlb_entries_1g = 16;
  double mem_ref_cycles = 12.0;           // average latency of one paging-structure reference
  double memcpy_bytes_per_cycle = 8.0;    // host copy bandwidth for migration work
  double transfer_bytes_per_cycle = 0;    // pages sent to the new instance (precopy); 0: memcpy_bytes_per_cycle
};

// Returns the built-in profile (every value sourced in docs/cost-model.md).
CostProfile default_profile();
// Parses a profile from JSON text; unknown keys and wrong types are errors.
Result<CostProfile> parse_profile(const std::string& json_text);
// Loads a profile file; a bad file gives one clear error naming the file.
Result<CostProfile> load_profile(const std::string& path);
// Renders a profile as JSON text (what traces record).
std::string profile_json(const CostProfile& p);

// Categories of simulated cycles.
enum class CostCategory : std::uint8_t {
  kGuest,          // guest instructions at base CPI
  kExitRoundTrip,  // VM exit + entry hardware cost
  kExitHandler,    // hypervisor handlers
  kEptBuild,       // leaf installs and table allocation
  kTlbWalk,        // 2D page walks on TLB misses
  kDirtyTracking,  // PML drains, write-protect / D-bit clearing
  kCopy,           // memory copies (migration)
  kCount,
};
// Names a category ("guest", "exit-round-trip", ...).
const char* to_string(CostCategory c);

// The cycles charged so far, by category.
struct CostAccount {
  std::array<double, static_cast<std::size_t>(CostCategory::kCount)> cycles{};
  // Adds cycles to a category.
  void charge(CostCategory c, double n) { cycles[static_cast<std::size_t>(c)] += n; }
  // Returns the cycles of one category.
  double of(CostCategory c) const { return cycles[static_cast<std::size_t>(c)]; }
  // Returns the total.
  double total() const {
    double t = 0;
    for (double c : cycles) t += c;
    return t;
  }
};

// The number of memory references of a 2D walk: (g + 1)(e + 1) - 1 for a guest walk of g
// levels through an EPT of e levels (Bhargava et al., ASPLOS'08: 24 for 4 + 4).
constexpr unsigned walk_refs_2d(unsigned guest_levels, unsigned ept_levels) {
  return (guest_levels + 1) * (ept_levels + 1) - 1;
}

}  // namespace baton::sim
