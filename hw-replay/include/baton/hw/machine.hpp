// A guest on /dev/kvm: guest memory in a memfd (MAP_SHARED, so a second VMM process can map
// the same pages), the same GuestImage the simulator loads, and a run loop with one switch on
// the exit reason that speaks the guests' port-I/O ABI through guests::PortRecorder.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "baton/guests/loader.hpp"
#include "baton/guests/ports.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"

namespace baton::hw {

// Guest-physical memory as one memfd mapped MAP_SHARED.
class GuestMemory {
 public:
  // A new memfd of `size` bytes (zero-filled), mapped read-write.
  static Result<GuestMemory> try_create(std::uint64_t size, const std::string& name = "baton-guest");
  // Maps an existing memfd (e.g. one received over a UNIX socket); its size must be `size`.
  // Takes ownership of `fd`.
  static Result<GuestMemory> try_adopt(int fd, std::uint64_t size);
  GuestMemory(GuestMemory&& o) noexcept;
  GuestMemory& operator=(GuestMemory&& o) noexcept;
  GuestMemory(const GuestMemory&) = delete;
  GuestMemory& operator=(const GuestMemory&) = delete;
  ~GuestMemory();

  int fd() const { return fd_.get(); }
  std::uint8_t* data() const { return data_; }
  std::uint64_t size() const { return size_; }
  // Writes the image's chunks (memory outside them stays zero).
  Result<void> load(const guests::GuestImage& image);

 private:
  GuestMemory(Fd fd, std::uint8_t* data, std::uint64_t size) : fd_(std::move(fd)), data_(data), size_(size) {}
  Fd fd_;
  std::uint8_t* data_ = nullptr;
  std::uint64_t size_ = 0;
};

// Why a run stopped.
enum class KvmStop : std::uint8_t {
  kExited,         // the guest wrote the exit port
  kSync,           // the guest announced a sync point (only when run() was asked to stop there)
  kInterrupted,    // KVM_RUN returned EINTR (a signal, e.g. to pause for migration)
  kBudget,         // the exit budget ran out
  kShutdown,       // KVM_EXIT_SHUTDOWN: a triple fault
  kGuestFault,     // the loader's trap handler reported an exception on the fault port
  kHalted,         // KVM_EXIT_HLT without an in-kernel LAPIC
  kFailEntry,      // KVM_EXIT_FAIL_ENTRY
  kInternalError,  // KVM_EXIT_INTERNAL_ERROR
  kUnexpected,     // any other exit reason (MMIO, debug, ...)
  kPort,           // the guest accessed the port KvmRunLimits::port asked to stop at
  kStep,           // KVM_EXIT_DEBUG while single-stepping: one instruction retired
};
const char* to_string(KvmStop s);

struct KvmRunResult {
  KvmStop stop = KvmStop::kBudget;
  std::string detail;  // for faults: the exit's data and a dump of the vCPU state
  std::uint64_t exits = 0;
};

// When KvmMachine::run() stops, besides the guest's exit and its faults.
struct KvmRunLimits {
  std::uint64_t max_exits = ~std::uint64_t{0};  // exits to user space
  bool stop_at_sync = false;                    // right after the guest announces a sync point
  std::optional<std::uint16_t> port;            // right after an IN or OUT on this port
};

struct KvmMachineOptions {
  std::string device = kKvmDevice;
  bool irqchip = true;  // create an in-kernel irqchip (LAPIC state capture needs it)
  bool log_events = false;  // keep a VmmEvent per exit to user space and per port access (traces)
};

// One thing the VMM saw: a return from KVM_RUN and, for KVM_EXIT_IO, one port access with its
// value (for an IN, the value the VMM answered). A string I/O exit gives one event per element.
struct VmmEvent {
  std::uint64_t ns = 0;           // CLOCK_MONOTONIC when KVM_RUN returned
  std::uint32_t exit_reason = 0;  // KVM_EXIT_*
  bool io = false;                // a port access: the fields below are valid
  bool first = true;              // the first access of its exit (the exit itself is traced once)
  bool in = false;
  std::uint16_t port = 0;
  std::uint8_t size = 0;
  std::uint32_t value = 0;
  guests::PortEventKind kind = guests::PortEventKind::kNone;  // what the access meant in the port ABI
  std::uint32_t meaning = 0;                                   // its value: the stage of a sync point, ...
  friend bool operator==(const VmmEvent&, const VmmEvent&) = default;
};

// One VM with one vCPU running a GuestImage.
class KvmMachine {
 public:
  // Opens the device, creates the VM, the memfd memslot and the vCPU, loads the image and
  // sets the boot state. The first error is returned as one line.
  static Result<std::unique_ptr<KvmMachine>> try_create(const guests::GuestImage& image,
                                                        const KvmMachineOptions& opt = {});
  // Creates the VM and vCPU around memory that already holds a running guest (e.g. a memfd
  // received from another VMM process), without loading anything. The vCPU state comes
  // from restore().
  static Result<std::unique_ptr<KvmMachine>> try_create_on(GuestMemory memory, const guests::GuestImage& image,
                                                           const KvmMachineOptions& opt = {});

  // Runs until the guest exits, a fault, an interruption, `max_exits` exits, or (when
  // `stop_at_sync`) right after the guest announces a sync point.
  Result<KvmRunResult> run(std::uint64_t max_exits = ~std::uint64_t{0}, bool stop_at_sync = false);
  // The same with every limit (a port to stop at too).
  Result<KvmRunResult> run(const KvmRunLimits& limits);
  // Turns single-stepping on or off (KVM_SET_GUEST_DEBUG): while on, run() stops with kStep
  // after each guest instruction. An I/O exit comes first for an IN or OUT: the step ends
  // once KVM completes it on the next KVM_RUN.
  Result<void> set_single_step(bool on);
  bool single_stepping() const { return single_step_; }
  // Captures the vCPU. An I/O exit is completed first (one KVM_RUN with immediate_exit), so
  // the state is past the IN/OUT: KVM finishes an I/O exit only on the next KVM_RUN, and a
  // state taken before that would make a restored VM execute the instruction again.
  // Where KVM has KVM_CAP_SYNC_REGS that KVM_RUN always runs, and regs, sregs and events
  // come back in the run area with it.
  Result<model::VcpuState> capture();
  // The capture of a pause: the same, but reads only what an unprivileged guest changes and
  // takes the rest from `baseline` (KvmVcpu::try_get_state); prove it with capture() later.
  Result<model::VcpuState> capture_changes(const model::VcpuState& baseline);
  // The same into `s`, a copy of `baseline` made before the pause (or an earlier capture into
  // it): nothing is allocated (KvmVcpu::try_get_changes_into).
  Result<void> capture_changes_into(const model::VcpuState& baseline, model::VcpuState& s);
  // The proof of a capture_changes(): a full capture of the same vCPU, not run since, by ioctls
  // only and without a KVM_RUN (one would reload and save the guest FPU, and XSAVE's header may
  // then record the same register state differently: XSTATE_BV's init optimization).
  Result<model::VcpuState> capture_again();
  // Restores a captured state; a pending I/O exit is completed first, so that KVM cannot
  // apply it to the restored registers on the next KVM_RUN.
  Result<void> restore(const model::VcpuState& s);
  // Restores `s` on a vCPU that holds `loaded` (restored with restore() and not run since),
  // writing only what differs; regs, sregs and events take effect with the next KVM_RUN.
  // Returns what it wrote: vcpu().state_after(loaded, s, w) is the state the vCPU then holds.
  Result<StateWrite> restore_changes(const model::VcpuState& loaded, const model::VcpuState& s);

  // Dirty logging on guest RAM (memslot 0) for precopy: enable it, then fetch and reset the
  // bitmap of pages written since the last fetch (KVM_GET_DIRTY_LOG).
  Result<void> enable_dirty_log();
  Result<std::vector<std::uint64_t>> dirty_bitmap();

  const guests::GuestRun& ports() const { return ports_.run(); }
  // The events logged so far (KvmMachineOptions::log_events), in order.
  const std::vector<VmmEvent>& events() const { return events_; }
  guests::PortRecorder& recorder() { return ports_; }
  std::uint64_t input_seed() const { return input_seed_; }
  GuestMemory& memory() { return mem_; }
  KvmVm& vm() { return vm_; }
  KvmVcpu& vcpu() { return vcpu_; }

 private:
  KvmMachine(KvmSystem sys, KvmVm vm, GuestMemory mem, KvmVcpu vcpu, guests::PortRecorder ports)
      : sys_(std::move(sys)), vm_(std::move(vm)), mem_(std::move(mem)), vcpu_(std::move(vcpu)), ports_(std::move(ports)) {}
  static Result<std::unique_ptr<KvmMachine>> build(GuestMemory mem, const guests::GuestImage& image,
                                                   const KvmMachineOptions& opt, bool boot);
  std::string dump_state();
  // Describes the fault record the trap handler wrote (docs/guest-abi.md §2.1).
  std::string fault_detail();
  // Completes a pending I/O exit without running the guest further; with `sync_out` always,
  // so that KVM stores regs, sregs and events in the run area (otherwise a no-op with none pending).
  Result<void> complete_pending_io(bool sync_out);

  KvmSystem sys_;
  KvmVm vm_;
  GuestMemory mem_;
  KvmVcpu vcpu_;
  guests::PortRecorder ports_;
  StateOptions state_opt_;
  std::uint64_t input_seed_ = 0;
  bool io_pending_ = false;  // the last exit was an IN/OUT or MMIO that KVM completes on the next KVM_RUN
  bool single_step_ = false;
  bool log_events_ = false;
  std::vector<VmmEvent> events_;
};

}  // namespace baton::hw
