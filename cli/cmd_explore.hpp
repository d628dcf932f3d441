// baton explore: a debugger-style REPL over the simulator, the checker and the migration
// driver. The session (cmd_explore_session.cpp), the views (cmd_explore_views.cpp), the command
// table and `expect` (cmd_explore_commands.cpp) and the terminal (cmd_explore.cpp).
#pragma once

#include <csignal>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "baton/checker/check.hpp"
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
};

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
  std::uint64_t budget = 4'000'000'000ull;  // instructions before `run to exit` calls it a hang
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

}  // namespace baton::cli::explore
