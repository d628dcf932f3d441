// The receiving side of a local migration: what `baton vmm-worker` runs (docs/kvm-backend.md).
//
// Precopy differs in one step: the memory message comes without an fd, the worker creates
// private memory, and pages messages follow (all of memory, then dirty rounds, then the
// stop-and-copy after the pause) until the vcpu-state message.
// Sequence on the socket (source -> worker unless noted):
//   worker -> hello (its pid)            once /dev/kvm is open; or error (one line) and exit
//   memory + memfd (MemoryAnnounce)      the worker maps the memfd, creates its VM and vCPU and
//   worker -> ack                        registers the same pages as its memslot: all before the pause
//   vcpu-state (ResumeInfo + VcpuState)  sent once the source vCPU has left KVM_RUN for good
//   worker -> resumed (CLOCK_MONOTONIC ns just before its first KVM_RUN, ns when the state
//             arrived, then the state it restored: the received one with the TSC offset it chose)
//   worker -> result (encode_guest_run: what the guest did on the ports after the resume)
// Any failure is sent to the source as an error message (one line) and returned.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "baton/guests/ports.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/hw/machine.hpp"
#include "baton/model/result.hpp"

namespace baton::hw {

// What the worker needs besides the vCPU state to continue the guest's port conversation.
struct ResumeInfo {
  std::uint64_t input_seed = 0;       // the guest's input sequence
  std::uint64_t inputs_consumed = 0;  // values of it the guest has read already
  guests::PortRecorder::State ports;  // the port ABI's latches (tag, low half, stage); .inputs is ignored
};
// The vcpu-state payload: ResumeInfo (32 bytes: seed, inputs, tag, lo, stage, 0) then
// encode_vcpu_state().
std::vector<std::uint8_t> encode_resume(const ResumeInfo& info, const model::VcpuState& s);
Result<std::pair<ResumeInfo, model::VcpuState>> decode_resume(std::span<const std::uint8_t> p);

struct WorkerOptions {
  std::string device = kKvmDevice;
  int timeout_ms = 60'000;  // per message
  // How long the worker polls (spinning, yielding between polls) for the vCPU state once its VM
  // is ready, before it sleeps in poll(): a sleeping worker adds its wake-up to the downtime.
  int spin_ms = 10'000;
  // Fault injection for tests (BATON_WORKER_DIE_AT of `baton vmm-worker`): the worker kills
  // itself with SIGKILL at this point: "hello" (after hello), "vm" (after its VM is ready),
  // "state" (the vCPU state received, before the restore), "resumed" (right after it told
  // the source it resumed), "" never.
  std::string die_at;
};

// A guest's port activity as bytes (the result message), and back.
std::vector<std::uint8_t> encode_guest_run(const guests::GuestRun& r);
Result<guests::GuestRun> decode_guest_run(std::span<const std::uint8_t> p);

// The worker's VmmEvents as bytes (the events message: a count, then 32 bytes each), and back.
std::vector<std::uint8_t> encode_vmm_events(std::span<const VmmEvent> events);
Result<std::vector<VmmEvent>> decode_vmm_events(std::span<const std::uint8_t> p);

// What the worker saw after the migration.
struct WorkerReport {
  guests::GuestRun ports;           // the guest's port activity after the resume
  std::uint64_t resumed_ns = 0;     // CLOCK_MONOTONIC just before the first KVM_RUN
  bool shared_memory = true;        // local (the source's memfd) or precopy (private memory)
  std::uint64_t bytes_received = 0;  // guest memory that crossed the socket (precopy)
};

// Runs the worker's side of the protocol on a connected socket until the guest exits.
Result<WorkerReport> serve_worker(int sock, const WorkerOptions& opt = {});

// The source side, in three steps so that everything slow happens before the pause:
// 1. prepare_worker: wait for hello, send the memfd, wait until the worker's VM is ready.
// 2. hand_over: the vCPU has left KVM_RUN for good (the caller stopped running it); capture
//    the state, send it, wait for "resumed". Downtime = resumed_ns - pause_ns.
// 3. wait_worker_result: the worker's final "exit N checksum 0x..." line.
// When step 1 or 2 fails (the worker died, or sent an error), the source VM is untouched:
// the caller resumes it with KvmMachine::run() and nothing is lost.
struct HandoverTiming {
  bool precopy = false;
  std::uint32_t worker_pid = 0;
  std::uint64_t start_ns = 0;      // CLOCK_MONOTONIC when prepare_worker began
  std::uint64_t rounds = 0;        // precopy rounds sent (the first one is all of memory)
  std::uint64_t bytes_copied = 0;  // guest memory sent as bytes (0 for a local migration)
  std::uint64_t pause_ns = 0;    // CLOCK_MONOTONIC when hand_over began (vCPU out of KVM_RUN)
  std::uint64_t state_received_ns = 0;  // the worker's CLOCK_MONOTONIC once the vCPU state arrived
  std::uint64_t resumed_ns = 0;  // the worker's CLOCK_MONOTONIC just before its first KVM_RUN
  double downtime_us() const { return static_cast<double>(resumed_ns - pause_ns) / 1000.0; }
};
// With t.precopy, prepare_worker also enables dirty logging and sends all of memory (round 1),
// precopy_round sends the pages dirtied since (call it between runs of the guest), and
// hand_over first sends the last dirty pages (stop-and-copy, inside the downtime).
Result<void> prepare_worker(KvmMachine& m, int sock, HandoverTiming& t, int timeout_ms = 60'000);
// Step 1's first half alone: waits for the worker's hello (its pid into t.worker_pid), so that a
// worker can be started long before the migration point; prepare_worker then skips it.
Result<void> await_hello(int sock, HandoverTiming& t, int timeout_ms = 60'000);
Result<std::uint64_t> precopy_round(KvmMachine& m, int sock, HandoverTiming& t);
Result<void> hand_over(KvmMachine& m, int sock, HandoverTiming& t, int timeout_ms = 60'000);
Result<std::string> wait_worker_result(int sock, int timeout_ms = 60'000);
// The same result as the guest's port activity after the resume.
Result<guests::GuestRun> wait_worker_run(int sock, int timeout_ms = 60'000);
// The events message that follows the result: every exit and port access of the worker's VMM.
Result<std::vector<VmmEvent>> wait_worker_events(int sock, int timeout_ms = 60'000);

// hand_over in its pieces, for a driver that captures the state itself:
// send_state sends it (with the ResumeInfo of `m`), await_resumed waits for the worker's
// resumed message and returns the state the worker restored (TSC fields as it set them).
Result<void> send_state(KvmMachine& m, int sock, const model::VcpuState& state);
Result<model::VcpuState> await_resumed(int sock, HandoverTiming& t, int timeout_ms = 60'000);

}  // namespace baton::hw
