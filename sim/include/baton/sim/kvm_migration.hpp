// Local migration on /dev/kvm between two real VMM processes, under the same migration driver
// and result as the simulator's (baton/sim/migration.hpp).
//
// baton is the source VMM. It spawns `baton vmm-worker` as a second process, which opens
// /dev/kvm and creates its VM, vCPU and memslot before the pause. local-lazy hands the guest
// memfd over (SCM_RIGHTS): the worker maps the very same pages and KVM refaults its EPT.
// precopy copies memory into the worker's private memory in dirty-log rounds while the source
// vCPU keeps running on its own thread, then stops it and copies the rest. KVM owns its EPT,
// so local-adopt and local-rebuild are refused (a declared capability). Times are measured
// (CLOCK_MONOTONIC ns): downtime runs from the source vCPU's last return from KVM_RUN to the
// worker's first KVM_RUN. docs/kvm-backend.md describes it.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "baton/guests/loader.hpp"
#include "baton/model/result.hpp"
#include "baton/sim/migration.hpp"

namespace baton::hw {
class KvmMachine;
}

namespace baton::sim {

// Builds the source VM at a state of its own choosing (baton explore: a copy of its session's VM,
// memory and vCPU) instead of loading the image and running it to the migration point.
using KvmSourcePrep = std::function<Result<std::unique_ptr<hw::KvmMachine>>()>;

struct KvmMigrationConfig {
  std::string device = "/dev/kvm";
  std::string guest_name;
  // The executable run as `EXE vmm-worker --fd 3` (default: this process's own, /proc/self/exe).
  std::string worker_exe;
  // Captures both processes' KVM events through a private tracefs instance into this raw
  // ftrace text file (root only), and proves the no-copy property from it.
  std::string capture_path;
  bool overwrite_capture = false;  // replace an existing capture_path (else it is never touched)
  int timeout_ms = 60'000;  // per handover message
  // Writes a trace (format v1, docs/trace-format.md) of both VMMs' events, the migration
  // timeline and (with capture_path) KVM's mapping events to this file; "" for none.
  std::string trace_path;
  bool overwrite_trace = false;
  std::map<std::string, std::string> trace_params;  // run options recorded in the header (mem, pages, method, ...)
  // Test fault injection: BATON_WORKER_DIE_AT for the worker (see hw::WorkerOptions::die_at).
  std::string worker_die_at;
  // When set, the source VM comes from here and migrates where it stands (opt.at_sync unused).
  KvmSourcePrep source;
};

// Runs `image` on KVM, migrates it to a `baton vmm-worker` process by `opt.method`, checks the
// handover and lets the worker run it to the end. Errors are problems with the request or the
// host; a refuted or failed handover is a result.
Result<MigrationResult> migrate_kvm(const guests::GuestImage& image, const KvmMigrationConfig& cfg,
                                    const MigrationOptions& opt);

// Why a vcpu proof of a KVM handover failed the TSC relation when the worker's vCPU holds
// another TSC offset than the one it set (the paused guest TSC less the worker's host TSC at
// the restore, hw-replay/src/worker.cpp): KVM accepted KVM_VCPU_TSC_OFFSET but does not apply
// it (PVM keeps the guest on the host TSC), so the guest TSC ran on through the downtime.
// One clause ending in "; " to put before the checker's summary, naming `flavour`; empty when
// the offsets agree (then the refutation has another cause).
std::string tsc_offset_not_applied(const model::VcpuState& paused, const model::VcpuState& held,
                                   const std::string& flavour);
// Puts that clause before the summary of `r`, a vcpu check of the pair (paused, held), where it
// was refuted at vcpu0.tsc_offset; leaves any other result as it is.
void explain_tsc_refutation(checker::PropertyResult& r, const model::VcpuState& paused, const model::VcpuState& held,
                            const std::string& flavour);

}  // namespace baton::sim
