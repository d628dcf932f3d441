// baton explore: a debugger-style REPL over the simulator (or KVM), the checker and the
// migration driver. The session (cmd_explore_session.cpp), the views (cmd_explore_views.cpp),
// the command table and `expect` (cmd_explore_commands.cpp), the terminal (cmd_explore.cpp) and
// the KVM backend of the session (cmd_explore_kvm.cpp).
#pragma once

#include <csignal>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "baton/checker/check.hpp"
#include "baton/guests/ports.hpp"
#include "baton/model/snapshot.hpp"
#include "baton/sim/migration.hpp"
#include "baton/sim/sim_machine.hpp"
#include "sim_setup.hpp"

namespace baton::cli::explore {

// Set by the SIGINT handler while a command runs; a running guest stops at the next chunk.
extern volatile std::sig_atomic_t g_interrupted;

// One thing done to the VM since it was loaded: a run with its exact limits, or a fault.
// Replaying the list on a fresh VM reproduces the state (the simulator is deterministic).
struct Step {
  bool inject = false;
  sim::RunLimits limits;
  sim::Fault fault;
};

// A breakpoint: stop after sync point K is announced, once N instructions retired, or after
// an access to port P.
struct Break {
  enum Kind : std::uint8_t { kSync, kInsn, kPort } kind = kSync;
  std::uint64_t value = 0;
};

// What a KVM snapshot keeps besides its HandoverSnapshot: the vCPU state, a copy of guest
// memory (the pages that are not zero), the port ABI's state and what the guest said so far.
struct KvmSnapData {
  model::VcpuState vcpu;
  std::vector<std::uint64_t> gfns;   // the copied pages, in order ...
  std::vector<std::uint8_t> pages;   // ... 4 KiB each
  guests::PortRecorder::State ports;
  guests::GuestRun output;
  bool at_sync = false;              // taken right after a sync point was announced
  std::uint64_t exits = 0, steps = 0;
};

// A named state: replayable ones (snapshot NAME) can be restored; the others (the two sides of
// the last migration) can only be viewed, checked, diffed and saved.
struct Snap {
  bool replayable = false;
  std::vector<Step> steps;
  std::optional<sim::Fault> pending;  // a package fault waiting for the next migration
  std::string pending_desc;
  std::vector<std::string> faults;    // descriptions of the faults planted so far
  model::HandoverSnapshot state;
  std::uint64_t insns = 0;
  std::uint32_t stage = 0;
  std::string origin;                 // "snapshot", "migration (before)", ...
  std::shared_ptr<const KvmSnapData> kvm;  // KVM: what restore rebuilds the VM from
};

struct KvmSide;  // the KVM VM of a session (cmd_explore_kvm.cpp: hw types stay there)

// What the last commands found, for `expect`.
struct Findings {
  std::optional<std::uint64_t> checksum, expected;
  bool have_checksum = false;
  std::vector<std::pair<std::string, checker::Verdict>> verdicts;  // property -> verdict
  std::optional<checker::Verdict> overall;
  std::string outcome;                 // of the last migration
  std::optional<sim::RunEvent> stop;   // of the last run or step
  std::optional<bool> diff_equal;      // of the last ept diff
  std::string walk;                    // outcome kind of the last ept walk
};

class Session {
 public:
  SimOptions opts;
  SimSetup setup;
  std::unique_ptr<sim::SimMachine> vm;
  std::vector<Step> steps;
  std::optional<sim::Fault> pending;
  std::string pending_desc;
  std::vector<std::string> faults;
  std::vector<Break> breaks;
  std::map<std::string, Snap> snaps;
  Findings last;
  sim::RunEvent last_event{sim::StopReason::kInsnLimit, "loaded", 0};
  std::shared_ptr<KvmSide> kvm;             // set when the session runs on KVM (vm is then null)
  std::uint64_t budget = 4'000'000'000ull;  // instructions before `run to exit` calls it a hang
  double kvm_timeout_s = 60;                // KVM: seconds before a run counts as a hang
  bool json = false;                        // the current command has --json
  bool expect_failed = false;               // set by a failed `expect`

  // Loads the guest of `o` on a fresh simulator VM (the session starts over).
  Result<void> load(const SimOptions& o);
  // Replays `s` on a fresh VM of this session's guest; returns the last stop.
  Result<sim::RunEvent> replay(sim::SimMachine& m, const std::vector<Step>& s) const;
  // Runs the session's VM towards `limits` in interruptible chunks, honouring breakpoints.
  sim::RunEvent run(sim::RunLimits limits);
  // The current state as a handover snapshot (cached until the VM changes).
  Result<const model::HandoverSnapshot*> current();
  // A state by name: "@NAME" or "NAME" of a snapshot, "@now" or "." for the current one.
  Result<const model::HandoverSnapshot*> state(const std::string& name);
  // Forgets the cached snapshot (the VM changed).
  void touched() { cache_.reset(); }
  // Whether the guest has exited (nothing more to run).
  bool exited() const;
  // The vCPU state now (on KVM a capture, which completes a pending I/O exit first).
  Result<model::VcpuState> vcpu_now();
  // Guest-physical memory [gpa, gpa + len) as far as it is RAM (empty when gpa is not).
  std::vector<std::uint8_t> read_guest(std::uint64_t gpa, std::uint64_t len) const;
  // What the guest said on the ports since it was loaded.
  sim::GuestOutput output_now() const;
  // "sim" or "kvm".
  const char* backend_name() const { return kvm ? "kvm" : "sim"; }

 private:
  std::optional<model::HandoverSnapshot> cache_;
};

// A command line split into words; --json is taken out.
struct Args {
  std::vector<std::string> words;  // words[0] is the command
  bool json = false;
};

// One REPL command.
struct Command {
  const char* name;
  const char* usage;
  const char* summary;
  const char* help;  // the longer text of `help CMD`
  Result<void> (*fn)(Session&, const Args&);
  Result<void> (*kvm)(Session&, const Args&) = nullptr;  // on KVM, when it differs from fn
};

// The command table (in the order of `help`).
const std::vector<Command>& commands();
// Runs one line. Errors are one line; `s.expect_failed` tells a failed expectation apart.
Result<void> execute(Session& s, const std::string& line);
// Splits a line into words (double quotes group, # starts a comment).
std::vector<std::string> split_words(const std::string& line);

// Register names `regs` knows, and the VMCS field names, for completion.
std::vector<std::string> register_names();
std::vector<std::string> vmcs_field_names();

// The handlers of the views (cmd_explore_views.cpp).
Result<void> cmd_regs(Session& s, const Args& a);
Result<void> cmd_disas(Session& s, const Args& a);
Result<void> cmd_mem(Session& s, const Args& a);
Result<void> cmd_console(Session& s, const Args& a);
Result<void> cmd_ept(Session& s, const Args& a);
Result<void> cmd_vmcs(Session& s, const Args& a);
Result<void> cmd_memslots(Session& s, const Args& a);
// The handlers of the actions (cmd_explore_session.cpp).
Result<void> cmd_run(Session& s, const Args& a);
Result<void> cmd_step(Session& s, const Args& a);
Result<void> cmd_break(Session& s, const Args& a);
Result<void> cmd_inject(Session& s, const Args& a);
Result<void> cmd_migrate(Session& s, const Args& a);
Result<void> cmd_check(Session& s, const Args& a);
Result<void> cmd_snapshot(Session& s, const Args& a);
Result<void> cmd_restore(Session& s, const Args& a);
Result<void> cmd_snapshots(Session& s, const Args& a);
Result<void> cmd_save(Session& s, const Args& a);
Result<void> cmd_load(Session& s, const Args& a);
Result<void> cmd_backend(Session& s, const Args& a);

// The KVM side (cmd_explore_kvm.cpp): loading, the state helpers of Session, and the handlers
// that differ on KVM, or refuse with one line saying why.
Result<void> kvm_load(Session& s, const SimOptions& o);
bool kvm_exited(const Session& s);
Result<model::VcpuState> kvm_vcpu_now(Session& s);
std::vector<std::uint8_t> kvm_read_guest(const Session& s, std::uint64_t gpa, std::uint64_t len);
sim::GuestOutput kvm_output_now(const Session& s);
Result<model::HandoverSnapshot> kvm_snapshot(Session& s);
// A one-line description of the session's VM for banners: "pvm, mem 128M".
std::string kvm_banner(const Session& s);
// Async-signal-safe: makes the vCPU that is running now (if any) leave KVM_RUN (immediate_exit;
// the signal that called it interrupts a KVM_RUN already inside the guest).
void kick_running_vcpu();
Result<void> kvm_run(Session& s, const Args& a);
Result<void> kvm_step(Session& s, const Args& a);
Result<void> kvm_break(Session& s, const Args& a);
Result<void> kvm_ept(Session& s, const Args& a);
Result<void> kvm_inject(Session& s, const Args& a);
Result<void> kvm_vmcs(Session& s, const Args& a);
Result<void> kvm_memslots(Session& s, const Args& a);
Result<void> kvm_migrate(Session& s, const Args& a);
Result<void> kvm_check(Session& s, const Args& a);
Result<void> kvm_snapshot_cmd(Session& s, const Args& a);
Result<void> kvm_restore(Session& s, const Args& a);
Result<void> kvm_save(Session& s, const Args& a);
Result<void> kvm_backend(Session& s, const Args& a);
// Shared with the KVM side (cmd_explore_session.cpp).
Result<std::string> snap_name(const std::string& text);
void report_check(Session& s, const checker::Report& rep);
Result<std::uint64_t> number(const std::string& text, const std::string& what);

}  // namespace baton::cli::explore
