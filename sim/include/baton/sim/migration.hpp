// Local migration in the simulator: a running VM is handed from one hypervisor instance to a
// fresh one on the same host, by one of four methods, and every handover is checked.
//
//   local-adopt    the new instance points its EPTP at the old tree as it stands
//   local-rebuild  the new instance builds a whole tree from the memslots before resuming
//   local-lazy     the new instance starts with an empty tree and refills it on violations
//   precopy        memory is copied to new frames in dirty-tracking rounds, then stop-and-copy
//
// The two instances are separate objects (their own VMCS, memslot table and EPT, or the
// adopted one) over one HostMemory; the old one is torn down and its frames are freed or
// handed over. Times are simulated cycles from the cost profile (docs/cost-model.md).
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "baton/checker/check.hpp"
#include "baton/guests/loader.hpp"
#include "baton/model/result.hpp"
#include "baton/model/snapshot.hpp"
#include "baton/sim/sim_machine.hpp"

namespace baton::sim {

// A migration method.
enum class Method : std::uint8_t { kAdopt, kRebuild, kLazy, kPrecopy };
inline constexpr Method kAllMethods[] = {Method::kAdopt, Method::kRebuild, Method::kLazy, Method::kPrecopy};
// Names a method ("local-adopt", "local-rebuild", "local-lazy", "precopy").
const char* to_string(Method m);
// Parses a method name; also accepts "adopt", "rebuild", "lazy".
std::optional<Method> method_from_string(std::string_view s);

// A fault planted in the source instance before the handover (docs/user-guide.md, "Faults").
enum class FaultKind : std::uint8_t {
  kNone,
  kEptBit,      // a bit of an EPT entry of the old tree, at any level of one walk (default: the leaf)
  kVmcsBit,     // a bit of a field of the old instance's VMCS
  kMemslotBit,  // a bit of a field of the old instance's memslot table (as handed over)
  kRegBit,      // a bit of a saved vCPU register in the handover package (GPRs, RIP, CRs, MSRs, TSC offset)
  kRamBit,      // a bit of a guest-RAM word (not hypervisor state: for contrast)
};
// What the fault does to its bit: a transient flip, or stuck at 0 or 1 (until the handover).
enum class FaultOp : std::uint8_t { kFlip, kStuck0, kStuck1 };
// Names an op ("flip", "stuck0", "stuck1").
const char* to_string(FaultOp op);
// Applies an op to bit `bit` of `v`.
constexpr std::uint64_t apply_fault_op(std::uint64_t v, unsigned bit, FaultOp op) {
  const std::uint64_t m = std::uint64_t{1} << bit;
  return op == FaultOp::kFlip ? v ^ m : op == FaultOp::kStuck0 ? v & ~m : v | m;
}
struct Fault {
  FaultKind kind = FaultKind::kNone;
  FaultOp op = FaultOp::kFlip;
  std::optional<std::uint64_t> gpa;  // kEptBit: the GPA whose walk is hit (default: the middle present leaf); kRamBit: the word
  std::optional<unsigned> bit;       // the bit (default: the lowest frame bit of the leaf, bit 12 of the EPTP, ...)
  std::optional<unsigned> level;     // kEptBit: the level of the entry on the walk (4..1; default: the leaf)
  std::uint32_t vmcs_field = 0x201A; // kVmcsBit: the field's encoding (default: the EPT pointer)
  std::uint32_t slot = 0;            // kMemslotBit: the memslot id
  std::string slot_field = "size";   // kMemslotBit: gpa, size or hpa
  std::string reg = "rax";           // kRegBit: rax..r15, rip, rflags, cr0, cr2, cr3, cr4, efer, tsc_offset, msr:INDEX
};
// Parses a fault: "ept[:GPA[:BIT[:LEVEL]]]", "vmcs[:FIELD[:BIT]]" (FIELD: an SDM name such as
// ept_pointer or guest_rip, or an encoding), "memslot[:ID[:gpa|size|hpa[:BIT]]]",
// "reg[:NAME[:BIT]]", "ram:GPA[:BIT]" or "none"; a prefix "stuck0:" or "stuck1:" makes the
// bit stuck instead of flipped.
Result<Fault> parse_fault(const std::string& spec);
// The saved register a kRegBit fault names, in a vCPU state (nullptr when there is no such register).
std::uint64_t* saved_register(model::VcpuState& v, const std::string& name);

// What to do when the checker refutes (or cannot prove) a handover.
enum class Policy : std::uint8_t {
  kReject,    // the handover is rejected: the VM stays on (and resumes on) the old instance
  kFallback,  // the new instance discards the handed-over tree and rebuilds from the memslots
  kAccept,    // resume anyway (to show what the checker prevented)
};
const char* to_string(Policy p);
std::optional<Policy> policy_from_string(std::string_view s);

// Which handover checks run.
enum class CheckScope : std::uint8_t {
  kAll,   // every property of the method
  kVcpu,  // the vCPU property only (the trees were proven on a fault-free handover of the same run)
  kNone,  // nothing (the fault cannot reach the handed-over state)
};

struct MigrationResult;

// Options of one migration.
struct MigrationOptions {
  Method method = Method::kAdopt;
  std::optional<std::uint32_t> at_sync;  // migrate when this sync point is announced (default 1)
  std::uint64_t at_insn = 0;             // or once this many instructions have retired
  std::uint64_t budget = 4'000'000'000;  // total instructions before the run counts as a hang
  Fault fault;
  Policy policy = Policy::kReject;
  bool verify = true;                    // run the checker on the handover
  checker::CheckOptions check;
  // precopy
  DirtyMode dirty = DirtyMode::kPml;     // how rounds track writes (wp or pml)
  unsigned max_rounds = 8;               // rounds before stop-and-copy, converged or not
  std::uint64_t converge_pages = 256;    // stop-and-copy once a round leaves this few dirty pages
  // KVM: QEMU's stop condition (its `downtime-limit`, default 300 ms): stop-and-copy once the
  // pages left dirty could be sent within this time at the bandwidth the last round measured.
  double downtime_limit_ms = 300;
  // After the switch.
  std::uint64_t slowdown_window = 2'000'000;  // instructions compared against the unmigrated run
  bool reference = true;                      // run the unmigrated reference (slowdown)
  // Reports progress lines ("precopy round 3: 1204 pages") on long runs.
  std::function<void(const std::string&)> progress;
  // Which checks run on the handover. A campaign narrows them to what its fault's target can
  // break, where a fault-free handover of the same run was proven (docs/user-guide.md).
  CheckScope scope = CheckScope::kAll;
  // Called once the source is at the migration point: the fault to plant there (unset: `fault`).
  std::function<Fault(const MigrationResult&)> choose_fault;
  // Called once the checks have run and did not prove the handover: the policy (unset: `policy`).
  // A campaign forks here, so that every policy continues from one checked handover.
  std::function<Policy(const MigrationResult&)> choose_policy;
};

// One phase of the migration timeline.
struct Phase {
  std::string name;   // "precopy-round-1", "pause", "state-save", "state-transfer", "ept-work", ...
  double start = 0;   // cycles since the migration started
  double cycles = 0;
  bool downtime = false;  // the vCPU is paused during this phase
};

// One pre-copy round.
struct CopyRound {
  std::uint64_t pages = 0;        // pages scanned
  std::uint64_t sent = 0;         // pages whose data was copied (zero pages are not)
  double cycles = 0;
  std::uint64_t dirtied = 0;      // pages dirtied while it ran
  std::uint64_t guest_insns = 0;  // guest instructions retired while it ran
};

// One verdict line: a checker property or a concrete check.
struct CheckLine {
  std::string name;  // "equivalence", "contents", "conformance (after run)", ...
  checker::Verdict verdict = checker::Verdict::kUnknown;
  std::string summary;
  double seconds = 0;
  std::optional<checker::Counterexample> counterexample;
};

// The co-located VM's view of the migration.
struct Neighbour {
  std::string guest;
  bool tree_unchanged = false;            // its EPT, proven equivalent before and after
  checker::Verdict verdict = checker::Verdict::kUnknown;
  std::optional<std::uint64_t> checksum, expected;
  double extra_cycles = 0;                // cycles the migration's memory traffic cost it
};

// Where a migration's times come from.
enum class TimeBase : std::uint8_t {
  kSimulatedCycles,  // the simulator's cost model: cycles at `frequency_ghz`
  kMeasuredNs,       // measured on the host (CLOCK_MONOTONIC): the "cycles" fields hold ns, frequency_ghz is 1
};

// Everything one migration produced.
struct MigrationResult {
  std::string backend = "sim";       // "sim" or "kvm"
  std::string host_flavour = "sim";  // KVM: vmx, svm, nested-svm, pvm (hw::host_flavour())
  TimeBase time_base = TimeBase::kSimulatedCycles;
  Method method = Method::kAdopt;
  Method effective = Method::kAdopt;  // the method that resumed the VM (after a fallback)
  std::string fault;                  // the planted fault, described ("" when none)
  bool switched = false;              // the VM resumed on the new instance
  bool rejected = false;              // the checker refuted the handover and the policy rejected it
  bool fell_back = false;
  std::string reject_reason;
  std::uint32_t at_stage = 0;
  std::uint64_t at_insn = 0;
  // Timeline and metrics, in simulated cycles.
  std::vector<Phase> timeline;
  std::vector<CopyRound> rounds;
  double downtime = 0;
  double total = 0;
  std::uint64_t bytes_copied = 0;
  std::string precopy_stop;  // KVM precopy: why the rounds stopped (the stop condition that held)
  std::uint64_t pages_copied = 0;
  std::uint64_t refaults = 0;         // EPT violations of the new instance after the switch
  std::uint64_t frames_freed = 0;     // frames the old instance gave back
  std::uint64_t frames_handed_over = 0;
  double frequency_ghz = 2.1;
  // Slowdown over the next `slowdown_window` instructions against the unmigrated run.
  std::uint64_t window = 0;
  double window_cycles = 0, reference_window_cycles = 0;
  // Verification.
  std::vector<CheckLine> checks;
  checker::Verdict verdict = checker::Verdict::kUnknown;
  // Outcome.
  RunEvent final_event;
  std::string console;
  std::optional<std::uint64_t> checksum, expected;
  bool finished_before_switch = false;  // the guest exited during pre-copy rounds
  std::optional<Neighbour> neighbour;
  model::HandoverSnapshot before, after;
  SimStats source, dest;
  // KVM: the receiving VMM process, and the tracefs capture of both processes (--capture).
  std::uint32_t worker_pid = 0, source_pid = 0;
  // KVM: how the worker ended after its run: "exited" by itself, or "killed" when it had not
  // exited within the timeout (a worker stuck, e.g. in a send nobody reads).
  std::string worker_exit;
  std::string capture_path;
  std::uint64_t capture_mapping_events = 0;
  double wall_s = 0;

  double micros(double cycles) const { return cycles / (frequency_ghz * 1e3); }
  double slowdown() const { return window_cycles - reference_window_cycles; }
  bool checksum_ok() const { return checksum && expected && *checksum == *expected; }
};

// Options of the co-located VM (its guest runs beside the migrating one on the same host).
struct NeighbourOptions {
  std::optional<guests::GuestImage> image;
  std::string guest_name;
  double host_bw_bytes_per_cycle = 32.0;  // memory bandwidth the two VMs and the copy share
};

// The backend under the migration driver: the mechanism and the clock of one migration, while
// the driver owns the sequence, the fault and policy decisions and the result. The simulator
// and KVM both implement it (sim/src/migration.cpp, sim/src/kvm_migration.cpp); what one
// cannot do is a capability it declares, never a question the driver asks about its type.
class MigrationBackend {
 public:
  struct Capabilities {
    // Per Method (indexed by its value): "" when supported, else one line saying why not.
    std::string refuses[4];
    bool faults = true;                // --fault can be planted
    bool checks_before_resume = true;  // false: the new instance resumes at once, checks report afterwards
  };
  virtual ~MigrationBackend() = default;
  virtual Capabilities capabilities() const = 0;
  // Binds the result this migration writes its timeline, metrics and checks into, and fills
  // its backend, host flavour, time base and frequency. Called first, once.
  virtual void begin(MigrationResult& r) = 0;

  // Builds the source VM and runs it to the migration point.
  virtual Result<RunEvent> run_to_point(const RunLimits& point) = 0;
  // Guest instructions the source has retired (0 where the backend cannot count them).
  virtual std::uint64_t source_instructions() const = 0;
  // Plants a fault in the running source (its EPT, or a VMCS field outside the guest state);
  // returns its description ("" when this fault belongs in the package instead).
  virtual Result<std::string> plant_source_fault(const Fault& f) = 0;
  // Plants a fault in the handover package (VMCS guest state, memslots); returns its
  // description ("" when it was planted in the source).
  virtual Result<std::string> plant_package_fault(const Fault& f, model::HandoverSnapshot& pkg) = 0;
  // Pre-copy rounds while the guest runs (rounds, bytes copied, finished_before_switch).
  virtual Result<void> precopy() = 0;
  // Pauses the source vCPU and captures the handover snapshot.
  virtual Result<model::HandoverSnapshot> pause_and_capture() = 0;
  // Pre-copy's stop-and-copy, inside the downtime.
  virtual Result<void> stop_and_copy() = 0;
  // Hands the package to a new instance by method m, which prepares itself (and, without
  // checks_before_resume, resumes the guest). Returns its snapshot; an error is a refusal.
  virtual Result<model::HandoverSnapshot> hand_over(Method m, const model::HandoverSnapshot& pkg) = 0;
  // Appends the checks method m needs.
  virtual void verify(Method m, const model::HandoverSnapshot& before, const model::HandoverSnapshot& after) = 0;
  // Drops the new instance of method m (a rejected handover, or before a fallback).
  virtual void discard_new(Method m) = 0;
  // The old instance resumes the guest and runs it to the end (final event, console, checksum).
  virtual Result<void> resume_source() = 0;
  // The new instance of method m takes over: the old one is torn down and the guest runs to
  // the end there (final event, console, checksum, refaults, checks after the run).
  virtual Result<void> finish_on_new(Method m) = 0;
  // Anything after the guest's end (the simulator's co-located VM).
  virtual Result<void> epilogue() = 0;
};

// Drives one migration by `opt.method` over a backend: run to the point, plant the fault,
// pre-copy, pause and capture, hand over, check, apply the policy, finish. `expected` is the
// guest's reference checksum. Errors are problems with the request; a refuted handover is a
// result.
Result<MigrationResult> drive_migration(MigrationBackend& backend, const MigrationOptions& opt,
                                        std::optional<std::uint64_t> expected);

// The overall verdict of check lines [from, end): refuted beats unknown beats proven.
checker::Verdict overall_verdict(const std::vector<CheckLine>& lines, std::size_t from = 0);

// Runs `image` on the simulator, migrates it at the chosen point by `opt.method`, checks the
// handover, and runs it to the end on the new instance. `base` configures both instances
// (vm ids, pages, profile, trace). Errors are problems with the request; a refuted handover is
// a result.
// `source`, when set, brings the freshly loaded source to the migration point instead of
// running it to `opt.at_sync`/`opt.at_insn` (baton explore replays its session through it).
using SourcePrep = std::function<Result<RunEvent>(SimMachine& source)>;
Result<MigrationResult> migrate(const guests::GuestImage& image, const SimConfig& base, const MigrationOptions& opt,
                                const NeighbourOptions& neighbour = {}, const SourcePrep& source = {});

// Plants the source part of a fault in a running simulator VM (an EPT leaf bit, or a bit of a
// VMCS field outside the guest state), as the migration does; returns its description, or ""
// when the fault belongs in the handover package (memslots, VMCS guest state).
Result<std::string> plant_source_fault(SimMachine& vm, const Fault& f);

}  // namespace baton::sim
