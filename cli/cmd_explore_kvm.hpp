// baton explore on KVM: the session's KVM VM and what both KVM files share. The run, step,
// snapshot and restore side is cmd_explore_kvm.cpp; migrate, check, the views that differ,
// `backend` and the refusals are cmd_explore_kvm_actions.cpp.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "baton/hw/machine.hpp"
#include "baton/sim/migration.hpp"
#include "cmd_explore.hpp"

namespace baton::cli::explore {

// The KVM VM of a session, and what it remembers about it.
struct KvmSide {
  guests::GuestImage image;
  std::string device;
  std::unique_ptr<hw::KvmMachine> m;
  guests::GuestRun prefix;         // what the guest said before `m` was built (by a restore)
  std::uint64_t exits = 0;         // exits to user space since the load
  std::uint64_t steps = 0;         // instructions single-stepped since the load (KVM counts no others)
  bool at_sync = false;            // the last run stopped right after a sync point was announced
  bool migrated = false;           // a migration has run: its checks are in `migration_checks`
  std::vector<sim::CheckLine> migration_checks;
  std::string migration_capture;   // its tracefs capture ("" when it had none)
};

// The KVM side of a session (which must run on KVM).
inline KvmSide& side(Session& s) { return *s.kvm; }
inline const KvmSide& side(const Session& s) { return *s.kvm; }

// Captures the session's VM: vCPU state, the pages of guest memory that are not zero, the
// port ABI's state and what the guest said so far.
Result<std::shared_ptr<KvmSnapData>> kvm_capture(Session& s);
// Builds a fresh KVM VM (its own memfd) holding the state `d` describes.
Result<std::unique_ptr<hw::KvmMachine>> kvm_build(const KvmSide& k, const KvmSnapData& d);

}  // namespace baton::cli::explore
