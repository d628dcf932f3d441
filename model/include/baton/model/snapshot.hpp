// HandoverSnapshot: everything a handover hands over, enough to re-walk the tree offline.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "baton/model/ept_entry.hpp"
#include "baton/model/memslot.hpp"
#include "baton/model/phys_mem.hpp"
#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"
#include "baton/model/vmcs.hpp"

namespace baton::model {

// One side of a handover (before or after).
struct HandoverSnapshot {
  std::uint32_t vm_id = 1;
  EptConfig ept_config;                 // MAXPHYADDR and EPT capabilities of the host
  std::vector<Memslot> memslots;
  std::vector<GpaRange> mmio;           // ranges deliberately marked misconfigured
  std::vector<VcpuState> vcpus;
  Vmcs vmcs;                            // guest-state and control fields (per vCPU 0)
  Eptp eptp;
  FrameStore tables;                    // every paging-structure page reachable from eptp
  OwnerMap owners;                      // owner of every host frame
  std::map<std::string, std::string> meta;  // free-form provenance: source, guest, method, ...
};

// Copies into `out` every table page reachable from `eptp` in `mem` (at most 4 levels deep).
// Returns the number of pages copied.
std::uint64_t collect_tables(Eptp eptp, const PhysicalMemory& mem, const EptConfig& cfg, FrameStore& out);

// Writes the guest-state area of a VMCS from a vCPU state (segments, control and
// descriptor-table registers, RSP/RIP/RFLAGS, DR7, EFER/PAT, activity and interruptibility).
void sync_vmcs_guest_state(const VcpuState& v, Vmcs& vmcs);

// Returns an empty string when the snapshot is self-consistent, else the first problem.
std::string validate_snapshot(const HandoverSnapshot& s);

}  // namespace baton::model
