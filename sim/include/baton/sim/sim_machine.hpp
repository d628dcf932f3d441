// SimMachine: the simulator backend of the machine interface — a Hypervisor instance and one
// Unicorn vCPU over shared HostMemory, with the cost model and an optional trace.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "baton/sim/cost_model.hpp"
#include "baton/sim/host_memory.hpp"
#include "baton/sim/hypervisor.hpp"
#include "baton/sim/machine.hpp"

namespace baton::sim {

// Options of one simulated VM.
struct SimConfig {
  HypervisorConfig hv;
  CostProfile profile = default_profile();
  std::string trace_path;                    // empty: no trace
  bool trace_overwrite = false;              // replace an existing trace_path (else refuse it)
  std::string guest_name;                    // recorded in the trace header
  std::map<std::string, std::string> trace_params;
  std::vector<model::GpaRange> mmio;         // carved out of RAM, served by the MMIO device
  bool record_writes = false;                // remember every written gfn (tests)
  // Answers the guest's n-th input instead of the seed's sequence (replay feeds recorded inputs).
  std::function<std::uint32_t(std::uint64_t n)> input_source;
  bool hookless = true;                      // hot blocks run without memory hooks (false: every access hooked, a reference)
};

// An MMIO device: reads and writes at a GPA with a size in bytes.
struct MmioDevice {
  std::function<std::uint64_t(model::Gpa, unsigned)> read;
  std::function<void(model::Gpa, unsigned, std::uint64_t)> write;
};

// Everything a run report shows.
struct SimStats {
  std::uint64_t instructions = 0;
  CostAccount cost;
  std::map<ExitReason, std::uint64_t> exits;
  EptStats ept;
  std::uint64_t regions = 0;
  std::uint64_t tlb_misses = 0;
  std::uint64_t tlb_walk_refs = 0;
  std::uint64_t blocks_decoded = 0;
  std::uint64_t rdtsc_fixed = 0;
  std::uint64_t hook_toggles = 0;
  // The executor's fast path: block executions, those on hook-less translations, the
  // retranslations without hooks (and those Unicorn undid), memory-hook calls by kind.
  std::uint64_t block_execs = 0, hookless_execs = 0, promotions = 0, hookless_lost = 0;
  std::uint64_t read_hooks = 0, write_hooks = 0, store_mismatches = 0;
  std::uint64_t deviating_pages = 0;
  double frequency_ghz = 1.0;
  // Simulated microseconds at the profile's frequency.
  double micros() const { return cost.total() / (frequency_ghz * 1e3); }
};

class SimMachine final : public Machine {
 public:
  // Creates a machine on `host` (a fresh HostMemory when null).
  static Result<std::unique_ptr<SimMachine>> create(SimConfig cfg, std::shared_ptr<HostMemory> host = nullptr);
  // Restores a fresh instance from a snapshot on the same host memory (the guest RAM stays
  // where it is). `adopt_tree` reuses the snapshot's EPT; otherwise it refills on violations.
  static Result<std::unique_ptr<SimMachine>> restore(const model::HandoverSnapshot& s, std::shared_ptr<HostMemory> host,
                                                     SimConfig cfg, bool adopt_tree);
  ~SimMachine() override;

  Result<void> load(const guests::GuestImage& image) override;
  RunEvent run(const RunLimits& limits) override;
  Result<model::HandoverSnapshot> snapshot() override;
  const GuestOutput& output() const override;
  std::uint64_t instructions() const override;

  // The current vCPU state (registers read back from the executor).
  model::VcpuState vcpu_state() const;
  Hypervisor& hypervisor();
  std::shared_ptr<HostMemory> host() const;
  SimStats stats() const;
  // Replaces the MMIO device (default: a register file that echoes writes; offset 0 reads 0x5A5A5A5A).
  void set_mmio_device(MmioDevice d);
  // The dirty log of the hypervisor (sorted gfns), and clearing it (re-arms tracking).
  std::vector<model::Gfn> dirty_log();
  void clear_dirty_log();
  // Gfns of every guest data write seen (with SimConfig::record_writes), sorted and unique.
  std::vector<model::Gfn> written_pages() const;
  // Reads guest-physical memory as the guest sees it (empty when unreadable).
  std::vector<std::uint8_t> read_guest(model::Gpa gpa, std::size_t n) const;
  // Re-derives the executor's view from the EPT in host memory (an INVEPT): flags and
  // remapped pages. Runs automatically before resuming when the tree changed.
  Result<void> invept();
  // Simulated cycles this instance has charged so far (guest, exits, EPT work, TLB walks).
  double cycles() const;
  // Charges cycles of outside work (migration phases) to this instance's account.
  void charge(CostCategory c, double cycles);
  // Sets the guest TSC to `value` now (the TSC offset absorbs the host time so far), as a VMM
  // does when it restores IA32_TSC into a new instance.
  void set_guest_tsc(std::uint64_t value);
  // Starts dirty logging on the running VM (a migration begins): see Hypervisor::start_dirty_log.
  // Returns the leaves changed; the executor's view is refreshed.
  Result<std::uint64_t> start_dirty_log(DirtyMode mode);
  // Builds the whole EPT from the memslots before resuming (local-rebuild) and refreshes the
  // executor's view. Charges the installs at the profile's costs.
  Result<Hypervisor::PopulateStats> populate();
  // Tears the instance down: closes Unicorn and the trace and releases the hypervisor's frames
  // (keeping the table frames when `hand_over_tables`). The machine cannot run afterwards.
  std::uint64_t teardown(bool hand_over_tables);
  // Writes a migration-phase event (traces::MigrationPhase code, phase value) into the trace.
  void trace_phase(std::uint32_t phase, std::uint64_t value);
  // Hands this machine's open trace to `dest` (a migration: one trace covers both instances).
  void hand_trace_to(SimMachine& dest);

  // Closes the trace, if any; returns an error if writing failed.
  Result<void> close_trace();

 private:
  struct Impl;
  explicit SimMachine(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace baton::sim
