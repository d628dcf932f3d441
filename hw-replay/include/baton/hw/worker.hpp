// The receiving side of a local migration: what `baton vmm-worker` runs (docs/kvm-backend.md).
//
// Precopy differs in one step: the memory message comes without an fd, the worker creates
// private memory, and pages messages follow (all of memory, then dirty rounds, then the
// stop-and-copy after the pause) until the vcpu-state message.
// Sequence (source -> worker unless noted):
//   worker -> hello (its pid)            once /dev/kvm is open; or error (one line) and exit
//   memory + memfd (MemoryAnnounce)      the worker maps the memfd, creates its VM and vCPU and
//   worker -> ack                        registers the same pages as its memslot: all before the pause
//   baseline + mailbox memfd             a full vCPU state the source captured before the pause;
//   wakeup + eventfd                     the worker restores it, maps the mailbox (StateMailbox)
//   worker -> ack                        and sleeps in poll() on the socket and the eventfd
//   [the pause] the source writes the eventfd as the pause begins, so the worker wakes while
//             the state is captured; then the state (ResumeInfo + VcpuState) in the mailbox,
//             not on the socket: the worker spins on it, writes only what differs from the
//             baseline, and enters KVM_RUN
//   worker -> resumed (CLOCK_MONOTONIC ns just before its first KVM_RUN, ns when the state
//             arrived, then the state its vCPU holds: the received one with the TSC offset it
//             chose), sent once that first KVM_RUN has returned
//   worker -> result (encode_guest_run: what the guest did on the ports after the resume)
// Any failure is sent to the source as an error message (one line) and returned.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
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
// The vcpu-state payload: ResumeInfo (32 bytes: seed, inputs, tag, lo, stage, 0) then the
// state: with a `base` the worker holds, its delta from it where one can say it
// (encode_vcpu_delta_to), else encode_vcpu_state().
std::vector<std::uint8_t> encode_resume(const ResumeInfo& info, const model::VcpuState& s,
                                        const model::VcpuState* base = nullptr);
// The same bytes into `o` (cleared first; its capacity is kept).
void encode_resume_to(const ResumeInfo& info, const model::VcpuState& s, std::vector<std::uint8_t>& o,
                      const model::VcpuState* base = nullptr);
// Decodes a payload that carries a whole state (a delta is an error here).
Result<std::pair<ResumeInfo, model::VcpuState>> decode_resume(std::span<const std::uint8_t> p);
// How decode_resume_into left its state.
struct ResumeDecoded {
  ResumeInfo info;
  bool delta = false;  // a delta was applied (so only its fields and XSAVE pieces changed)
};
// Decodes either form into `s`: a whole state replaces it; a delta applies to it in place, so
// `s` must then hold the baseline the delta was taken against.
Result<ResumeDecoded> decode_resume_into(std::span<const std::uint8_t> p, model::VcpuState& s);

struct WorkerOptions {
  std::string device = kKvmDevice;
  int timeout_ms = 60'000;  // per message
  // How long the worker spins on the mailbox once the source has woken it at the pause,
  // before it sleeps again (a source that woke it and then failed). 0: it never spins and
  // waits for the source's second wake-up, after the state is posted (HandoverTiming::
  // worker_spins false): on a CPU it shares with the source, a spinning real-time worker would
  // keep the source from capturing the state (1 s pauses in the one-CPU nested host).
  int spin_ms = 1'000;
  // How long the worker spins on the mailbox from the baseline on, before the pause, instead
  // of sleeping until the source wakes it (0: it sleeps). A spinning worker needs no wake-up:
  // where idle CPUs halt (this machine's cpuidle polls for 0 ns), waking a sleeping one costs
  // the source an inter-processor interrupt inside the downtime. The source asks for
  // it only where it pinned the worker to a CPU of its own (`baton vmm-worker --spin-before-ms`).
  int spin_before_ms = 0;
  // local-lazy: run at SCHED_FIFO priority 1 from the baseline until the first KVM_RUN returns, so that the
  // wake-up at the pause preempts other processes (where permitted; BATON_KVM_RT=0 of
  // `baton vmm-worker` turns it off).
  bool realtime = true;
  // Fault injection for tests (BATON_WORKER_DIE_AT of `baton vmm-worker`): the worker kills
  // itself with SIGKILL at this point: "hello" (after hello), "vm" (after its VM is ready),
  // "state" (the vCPU state received, before the restore), "resumed" (right after it told
  // the source it resumed), "" never.
  std::string die_at;
  // Fault injection for tests (BATON_WORKER_KEEP_TSC_OFFSET=1 of `baton vmm-worker`): the worker
  // writes the baseline's TSC offset instead of the one that continues the guest TSC, as PVM
  // does (it ignores the write), and reports what KVM holds: the vcpu check must be refuted on
  // every host, which a worker reporting the offset it meant to set would hide.
  bool keep_tsc_offset = false;
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

class KvmMachine;

// The one message of the pause, in shared memory (a 64 KiB memfd that the baseline message
// carries), so that no socket wake-up lies inside the downtime: the source writes the payload
// and then publishes it with a release store; the worker spins on it with acquire loads.
// Layout: u64 published (0/1), u64 length, u64 precopy bytes the source sent over the socket
// before it (the worker applies them all first), u64 XXH64 of the payload, then the payload at 64.
class StateMailbox {
 public:
  static constexpr std::uint64_t kSize = 64 * 1024;
  static constexpr std::uint64_t kPayloadAt = 64;
  // A new mailbox (memfd + shared mapping).
  static Result<std::shared_ptr<StateMailbox>> try_create();
  // Maps a mailbox received from the peer; its size must be kSize.
  static Result<std::shared_ptr<StateMailbox>> try_adopt(int fd);
  ~StateMailbox();
  StateMailbox(const StateMailbox&) = delete;
  StateMailbox& operator=(const StateMailbox&) = delete;
  int fd() const { return fd_.get(); }
  // Source: writes the payload, then publishes it (once).
  Result<void> post(std::span<const std::uint8_t> payload, std::uint64_t socket_bytes_before);
  // Worker: whether a payload is published (one acquire load; cheap enough to spin on).
  bool published() const;
  // Worker, once published: the precopy bytes the source sent over the socket before the state.
  std::uint64_t socket_bytes_before() const;
  // Worker: the published payload (in the mailbox, valid while it lives), checked against its
  // length and checksum.
  Result<std::span<const std::uint8_t>> take() const;

 private:
  StateMailbox(Fd fd, std::uint8_t* p) : fd_(std::move(fd)), p_(p) {}
  Fd fd_;
  std::uint8_t* p_ = nullptr;
};

// The source side, in three steps so that everything slow happens before the pause:
// 1. prepare_worker: wait for hello, send the memfd, wait until the worker's VM is ready.
// 2. hand_over: the vCPU has left KVM_RUN for good (the caller stopped running it); capture
//    what changed since the baseline, post it, wait for "resumed". Downtime = resumed_ns -
//    pause_ns. The caller proves the baseline's parts with a full capture afterwards
//    (the source vCPU stays stopped): KvmMachine::capture() against the state the worker holds.
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
  // The full state captured before the pause (prepare_worker takes it when empty: give it
  // yourself when the vCPU runs in another thread then); the worker pre-loads it, hand_over
  // captures only what differs from it (KvmMachine::capture_changes).
  std::optional<model::VcpuState> baseline;
  std::shared_ptr<StateMailbox> mailbox;  // created by prepare_worker
  Fd wakeup;                              // the eventfd that wakes the worker (prepare_worker)
  // Whether the worker spins on the mailbox once woken (WorkerOptions::spin_ms > 0); if not,
  // send_state wakes it again once the state is posted.
  bool worker_spins = false;
  // send_state's encoding buffer: allocated and touched by prepare_worker, so that encoding the
  // state inside the downtime neither allocates nor faults pages in.
  std::vector<std::uint8_t> state_buf;
  // The pause's capture target: a copy of the baseline made by prepare_worker, so that
  // KvmMachine::capture_changes_into() writes only what changed, allocating nothing.
  model::VcpuState pause_state;
  // precopy: pages the dirty log reported (sync_dirty) that no round has sent yet, one bit each
  std::vector<std::uint64_t> pending_dirty;
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
// Reads the dirty log into t.pending_dirty without sending anything and returns how many pages
// are pending (QEMU's bitmap sync before it decides whether to stop); the next precopy_round or
// the stop-and-copy sends them with whatever was dirtied after.
Result<std::uint64_t> sync_dirty(KvmMachine& m, HandoverTiming& t);
// hand_over returns the state the worker's vCPU holds (what await_resumed returns).
Result<model::VcpuState> hand_over(KvmMachine& m, int sock, HandoverTiming& t, int timeout_ms = 60'000);
// Wakes the worker as the pause begins (one eventfd write), so that its wake-up overlaps the
// capture; hand_over does it itself, a driver that captures the state itself calls it first.
void wake_worker(const HandoverTiming& t);
Result<std::string> wait_worker_result(int sock, int timeout_ms = 60'000);
// The same result as the guest's port activity after the resume.
Result<guests::GuestRun> wait_worker_run(int sock, int timeout_ms = 60'000);
// The events message that follows the result: every exit and port access of the worker's VMM.
Result<std::vector<VmmEvent>> wait_worker_events(int sock, int timeout_ms = 60'000);

// hand_over in its pieces, for a driver that captures the state itself:
// send_state posts it in t.mailbox (with the ResumeInfo of `m`), await_resumed waits for the worker's
// resumed message and returns the state the worker restored (TSC fields as it set them).
Result<void> send_state(KvmMachine& m, HandoverTiming& t, const model::VcpuState& state);
// Whether send_state(m, t, state) is what was sent (the source vCPU not run since).
bool state_sent_is(KvmMachine& m, const HandoverTiming& t, const model::VcpuState& state);
Result<model::VcpuState> await_resumed(int sock, HandoverTiming& t, int timeout_ms = 60'000);

}  // namespace baton::hw
