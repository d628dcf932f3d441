// Fault campaigns (docs/user-guide.md, "Fault campaigns"): a deterministic plan of single-bit
// faults in hypervisor state (EPT entries and the EPTP, VMCS fields, saved vCPU registers,
// memslots) and, for contrast, guest RAM; a runner that injects each one into a local migration
// on the simulator and classifies what happened, with its evidence; a merge that turns result
// files into one summary, bit-identical however the run was sharded; and Slurm scripts.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "baton/guests/loader.hpp"
#include "baton/model/result.hpp"
#include "baton/sim/migration.hpp"
#include "baton/sim/sim_machine.hpp"

namespace baton::campaign {

// What a fault hits.
enum class Target : std::uint8_t { kEpt, kVmcs, kRegs, kMemslot, kRam };
inline constexpr Target kAllTargets[] = {Target::kEpt, Target::kVmcs, Target::kRegs, Target::kMemslot, Target::kRam};
// Names a target ("ept", "vmcs", "regs", "memslot", "ram").
const char* to_string(Target t);
// Parses a target name.
std::optional<Target> target_from_string(std::string_view s);

// One planned injection. Its id is stable: the same arguments give the same ids.
struct PlannedFault {
  std::string id;       // METHOD/TRIGGER/SPEC, e.g. "local-adopt/handover/ept:0x7fe000:12:1"
  sim::Method method = sim::Method::kAdopt;
  std::string trigger;  // "handover", "sync:N" or "insn:N"
  Target target = Target::kEpt;
  std::string field;    // "L1".."L4" or "eptp"; a VMCS field; a register; "slot0.size"; "word"
  unsigned bit = 0;
  sim::FaultOp op = sim::FaultOp::kFlip;
  std::string spec;     // the fault as `baton migrate --fault` takes it
};

// The guest a campaign runs, as typed on the command line.
struct GuestSpec {
  std::string guest;
  std::vector<std::string> params;
  std::string mem = "64M";
  std::string pages = "4k";
  bool no_ad = false;
};

// A guest image and the machine configuration to load it with (built by the caller).
struct Setup {
  guests::GuestImage image;
  sim::SimConfig cfg;
};

// The arguments of `baton campaign plan`.
struct PlanOptions {
  GuestSpec guest;
  std::vector<sim::Method> methods;
  std::vector<Target> targets;
  std::vector<std::string> triggers = {"handover"};
  std::vector<sim::FaultOp> ops = {sim::FaultOp::kFlip};
  bool exhaustive = false;
  std::uint64_t samples = 0;
  std::uint64_t seed = 1;
  std::uint32_t at_sync = 1;          // the migration point
  std::optional<std::uint64_t> gpa;   // the walk (and RAM page) of the exhaustive EPT target
};

// A campaign plan: the guest, the migration point, the budget and every fault.
struct Plan {
  GuestSpec guest;
  std::uint32_t at_sync = 1;
  std::uint64_t budget = 0;           // instructions per run; a guest still running then hangs
  std::uint64_t walk_gpa = 0;         // the GPA of the exhaustive walk
  std::string mode;                   // "exhaustive" or "samples N seed S"
  std::vector<PlannedFault> faults;
  std::string hash;                   // XXH3 of the plan's text (results and summaries carry it)
};

// Builds a plan: runs the guest once to the migration point to learn its state (the walk, the
// VMCS fields, the registers, the memslots) and once to the end (the budget).
Result<Plan> make_plan(const PlanOptions& o, const Setup& setup);
// The plan as JSON text (one fault per line), and reading it back.
std::string plan_text(const Plan& p);
Result<Plan> parse_plan(const std::string& text);
Result<Plan> load_plan(const std::string& path);
// Finds a fault by id or by its index in the plan ("#17" or "17"); nullptr when there is none.
const PlannedFault* find_fault(const Plan& p, const std::string& id, std::size_t* index = nullptr);

// What happened to the guest and its handover under one policy.
struct PolicyOutcome {
  std::string outcome;   // masked, detected-checker, detected-hypervisor, sdc, crash, hang, isolation-breach, error
  std::string guest;     // the guest's own fate: ok, sdc, crash, hang, detected-hypervisor, isolation-breach
  std::vector<std::string> properties;  // the refuted (or unknown) checker properties
  std::string evidence;  // one line
};

// One injection's result, one line of RESULTS.jsonl.
struct InjectionResult {
  std::size_t index = 0;
  std::string id;
  std::string fault;                           // what was planted ("EPT leaf of GPA ... bit 12: a -> b")
  std::map<std::string, PolicyOutcome> policy;  // "reject" always; "fallback" and "accept" when they differ
  double wall_ms = 0;                          // not part of any summary
};
// One result as a JSON line (no newline), and back.
std::string result_line(const InjectionResult& r);
Result<InjectionResult> parse_result_line(const std::string& line);

// The arguments of `baton campaign run`.
struct RunOptions {
  unsigned shard = 0, shards = 1;  // this run does the faults whose index is shard mod shards
  unsigned jobs = 1;
  std::string out;                 // RESULTS.jsonl: appended to, resumed from
  std::size_t chunk = 32;          // injections per pre-fault snapshot (one forked zygote each)
  double timeout_s = 30;           // wall-clock limit of one injection (a hang the budget missed)
  bool fast = true;                // false: every check, a fresh Z3 context per check (bench campaign)
  bool all_policies = true;        // false: the reject policy only (bench campaign's like-for-like figure)
  std::function<void(std::size_t done, std::size_t total)> progress;
};
// What a run did.
struct RunStats {
  std::size_t planned = 0;   // faults of this shard
  std::size_t resumed = 0;   // already in the results file
  std::size_t ran = 0;
  double seconds = 0;
};
// Runs a shard of a plan: every fault not yet in `o.out`, in parallel, appending one line per
// result. An interrupted run resumes where it stopped; nothing is repeated or lost.
Result<RunStats> run_campaign(const Plan& plan, const Setup& setup, const RunOptions& o);

// Runs one fault in this process, with every check, for `baton inject --explain`.
struct Explained {
  InjectionResult result;
  sim::MigrationResult migration;            // under the reject policy
  std::optional<model::HandoverSnapshot> pre;  // the source just before the fault
  std::string early;                         // set when the guest stopped before the migration point
};
Result<Explained> explain_fault(const Plan& plan, const Setup& setup, const PlannedFault& f);

// Merges result files into the summary (JSON text, bit-identical for the same results whatever
// the sharding and order). `missing` gets the number of planned faults without a result.
struct MergeOptions {
  std::string svg_dir;   // write by-target.svg and by-bit.svg here (gnuplot)
  std::string junit;     // write JUnit XML here
};
Result<std::string> merge_results(const Plan& plan, const std::vector<std::string>& files, const MergeOptions& o,
                                  std::string& table, std::size_t& missing);

// Slurm: the sbatch scripts of a campaign (an array of `campaign run --shard`, then a merge).
struct SlurmOptions {
  std::string baton;       // the baton executable (absolute)
  std::string plan;        // the plan (absolute; on a shared filesystem)
  std::string dir;         // where scripts, results and the summary go (shared)
  std::size_t chunk = 1000;
  std::string partition, time = "01:00:00", mem = "2G";
  unsigned cpus = 1;
};
struct SlurmScripts {
  unsigned tasks = 0;
  std::string run, merge;  // script texts
};
Result<SlurmScripts> slurm_scripts(const Plan& plan, const SlurmOptions& o);

}  // namespace baton::campaign
