// Hypervisor: one modelled hypervisor instance with private state — its VMCS, memslot table,
// MMU with its own EPT root, dirty log — over the shared HostMemory. The MMU builds the EPT
// on violations like KVM's TDP MMU (4 KiB / 2 MiB / 1 GiB leaves by option), marks MMIO with
// deliberately misconfigured entries (W+X without R, as KVM does), and emulates EPT A/D
// flags, PML (SDM Vol. 3C §29.3.6) and write-protect dirty logging.
#pragma once

#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "baton/model/ept_builder.hpp"
#include "baton/model/ept_walk.hpp"
#include "baton/model/memslot.hpp"
#include "baton/model/result.hpp"
#include "baton/model/snapshot.hpp"
#include "baton/model/vcpu_state.hpp"
#include "baton/model/vmcs.hpp"
#include "baton/sim/host_memory.hpp"

namespace baton::sim {

// How writes are tracked for the dirty log.
enum class DirtyMode : std::uint8_t {
  kOff,           // no logging (dirty_log() scans EPT D flags when A/D is on)
  kWriteProtect,  // leaves installed without W; the first write faults and is logged
  kPml,           // EPT D flags plus the page-modification log (needs A/D)
};
// Names a dirty mode ("off", "wp", "pml").
const char* to_string(DirtyMode m);

// Options of one hypervisor instance.
struct HypervisorConfig {
  std::uint32_t vm_id = 1;
  unsigned max_leaf_level = 1;  // 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB
  bool ad = true;               // EPTP A/D enable
  DirtyMode dirty = DirtyMode::kOff;
  model::EptConfig ept;
};

// What the MMU did about one EPT violation.
enum class FaultFix : std::uint8_t {
  kInstalled,       // a leaf was installed
  kWriteUnprotect,  // write-protect logging: the page was logged and made writable
  kSpurious,        // the walk already succeeds (another fault fixed it)
  kNoSlot,          // no memslot covers the GPA: the access cannot complete
  kReadOnlySlot,    // a write to a read-only memslot
};
// Names a fault fix.
const char* to_string(FaultFix f);

// The result of handling one EPT violation.
struct FaultResult {
  FaultFix fix = FaultFix::kSpurious;
  unsigned level = 0;   // leaf level installed or changed
  model::Gfn gfn;       // first gfn of the leaf
  model::Hfn hfn;       // first host frame of the leaf
  unsigned perms = 0;   // R/W/X bits of the leaf
  unsigned tables = 0;  // paging-structure pages allocated
};

// EPT statistics of one instance.
struct EptStats {
  std::uint64_t leaves[4] = {0, 0, 0, 0};  // installed, by level 1..3
  std::uint64_t tables = 0;                // paging-structure pages allocated
  std::uint64_t violations = 0;
  std::uint64_t misconfigs = 0;
  std::uint64_t wp_faults = 0;
  std::uint64_t pml_logged = 0;
  std::uint64_t pml_full = 0;
};

class Hypervisor {
 public:
  // Creates an instance with an empty EPT, a VMCS frame and (for PML) a log page in host memory.
  Hypervisor(HostMemory& host, HypervisorConfig cfg);
  ~Hypervisor();
  Hypervisor(const Hypervisor&) = delete;
  Hypervisor& operator=(const Hypervisor&) = delete;

  // Adds a memslot (its RAM must already be in host memory).
  Result<void> add_memslot(const model::Memslot& slot);
  // Declares an MMIO range and marks its pages with misconfigured entries.
  Result<void> add_mmio(const model::GpaRange& r);

  const HypervisorConfig& config() const { return cfg_; }
  const std::vector<model::Memslot>& memslots() const { return slots_; }
  const std::vector<model::GpaRange>& mmio() const { return mmio_; }
  bool is_mmio(model::Gpa a) const;
  model::Eptp eptp() const { return builder_.eptp(cfg_.ad); }
  // The VMCS. When the vCPU ran since the guest-state area was last written, it is brought up
  // to date first (model::sync_vmcs_guest_state of the source's current state), so every
  // reader sees the guest state of the last VM exit or stop. See set_guest_state_source().
  model::Vmcs& vmcs() {
    sync_guest_state();
    return vmcs_;
  }
  const model::Vmcs& vmcs() const {
    sync_guest_state();
    return vmcs_;
  }
  // The VMCS without that sync: for the executor's own accesses while the vCPU runs (exit
  // information, TSC offset — fields the sync never writes).
  model::Vmcs& vmcs_unsynced() { return vmcs_; }
  // Registers where the guest state comes from (the executor's vCPU registers).
  void set_guest_state_source(std::function<model::VcpuState()> source) { guest_state_ = std::move(source); }
  // Records that the vCPU ran (a VM entry or exit): the guest-state area is synced from the
  // source at the next vmcs() call. Costs nothing per exit.
  void mark_guest_state_stale() { guest_state_stale_ = guest_state_ != nullptr; }
  HostMemory& host() { return host_; }
  const EptStats& stats() const { return stats_; }
  // Counts one EPT-misconfiguration exit of an MMIO access (the executor emulates the access).
  void count_mmio_exit() { ++stats_.misconfigs; }

  // Walks a GPA through this instance's EPT in host memory.
  model::WalkResult walk(model::Gpa gpa, model::Access access) const;
  // Handles an EPT violation for an access: installs a leaf (largest allowed size), or
  // unprotects a write-protected page and logs it.
  FaultResult handle_violation(model::Gpa gpa, model::Access access);
  // Completes a translated access as hardware does: sets A (and D on a write) when A/D is
  // on. Returns false when a PML-full exit must happen first (nothing was changed).
  bool complete_access(const model::WalkResult& w, model::Gpa gpa, model::Access access);
  // Handles a PML-full exit: drains the log into the dirty set and resets the index.
  std::uint64_t drain_pml();

  // Returns the dirty log: every gfn written since the last clear, sorted.
  std::vector<model::Gfn> dirty_log();
  // Clears the dirty log and re-arms tracking (write-protect or clear D flags). Returns the
  // gfns whose entries changed (the caller must resynchronise its view of them).
  std::vector<model::Gfn> clear_dirty_log();

  // Starts dirty logging in `mode` on a running instance, as KVM does when a migration begins:
  // large leaves of logged slots are zapped (they refault as 4 KiB leaves), 4 KiB leaves lose
  // W (write-protect) or D (PML), and the log starts empty. Marks the tree changed. Returns the
  // number of leaves changed.
  Result<std::uint64_t> start_dirty_log(DirtyMode mode);

  // What populate() built.
  struct PopulateStats {
    std::uint64_t leaves = 0;
    std::uint64_t tables = 0;
  };
  // Builds the whole tree from the memslot table before the guest runs (local-rebuild): every
  // page of every slot, in the largest leaves the slot allows.
  Result<PopulateStats> populate();

  // Tears the instance down: frees its VMCS and PML frames, and its table frames unless
  // `hand_over_tables` (local-adopt hands them to the new instance). Returns the frames freed.
  std::uint64_t release(bool hand_over_tables);

  // Overwrites the entry of `gpa` at `level` (fault injection, tests). Marks the tree changed.
  Result<void> write_entry(model::Gpa gpa, unsigned level, model::EptEntry e);
  // Returns the host address of the entry for `gpa` at `level`, if the tables exist.
  Result<model::Hpa> entry_addr(model::Gpa gpa, unsigned level) const { return builder_.entry_addr(gpa, level); }
  // Returns whether the tree changed outside the MMU since the last call (and resets the flag).
  bool take_tree_changed();

  // Runs the VM-entry checks on the guest-state area (SDM Vol. 3C §27.3.1) for 64-bit guests.
  // Returns an empty string when entry succeeds, else the rule that failed.
  std::string check_vm_entry(const model::VcpuState& v) const;

  // Builds a handover snapshot of this instance and the given vCPU state.
  model::HandoverSnapshot snapshot(const model::VcpuState& v) const;
  // Restores an instance from a snapshot on the same host memory: memslots, MMIO, VMCS and
  // TSC offset; `adopt_tree` points the EPTP at the snapshot's tree (copying its table pages
  // into host frames that are missing), otherwise the EPT starts empty and refills lazily.
  static Result<std::unique_ptr<Hypervisor>> restore(HostMemory& host, const model::HandoverSnapshot& s,
                                                     HypervisorConfig cfg, bool adopt_tree);

 private:
  Hypervisor(HostMemory& host, HypervisorConfig cfg, model::Hfn root);
  void init_vmcs();
  // Writes the guest-state area from the source when it is stale.
  void sync_guest_state() const {
    if (!guest_state_stale_) return;
    guest_state_stale_ = false;
    model::sync_vmcs_guest_state(guest_state_(), vmcs_);
  }
  // Returns the memslot covering a GPA, or nullptr.
  const model::Memslot* slot_of(model::Gpa a) const;
  // Chooses the largest leaf level that maps `gpa` inside one slot with aligned backing.
  unsigned leaf_level_for(model::Gpa gpa, const model::Memslot& slot) const;
  // Returns whether writes to a slot are tracked by faults or PML (forces 4 KiB leaves).
  bool tracks(const model::Memslot& slot) const;
  // Allocates one paging-structure frame for the builder.
  model::Hfn alloc_table();

  HostMemory& host_;
  HypervisorConfig cfg_;
  std::vector<model::Hfn> table_frames_;  // every table frame this instance owns (before builder_: it allocates the root)
  model::EptBuilder builder_;
  mutable model::Vmcs vmcs_;  // mutable: its guest-state area is a cache of the vCPU (sync_guest_state)
  std::function<model::VcpuState()> guest_state_;
  mutable bool guest_state_stale_ = false;
  model::Hfn vmcs_frame_;
  model::Hfn pml_frame_;
  bool released_ = false;
  std::vector<model::Memslot> slots_;
  std::vector<model::GpaRange> mmio_;
  std::set<std::uint64_t> dirty_;  // gfns logged (write-protect faults, drained PML)
  EptStats stats_;
  bool tree_changed_ = false;
};

}  // namespace baton::sim
