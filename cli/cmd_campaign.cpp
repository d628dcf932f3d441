// baton campaign plan|run|merge|slurm: fault campaigns on the simulator (campaign/).
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "baton/campaign/campaign.hpp"
#include "baton/model/file_io.hpp"
#include "campaign_setup.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

struct PlanCmd {
  SimOptions sim;
  std::string methods = "local-adopt,local-rebuild,local-lazy,precopy";
  std::string targets = "ept,vmcs,regs,memslot,ram";
  std::string triggers = "handover";
  std::string kinds = "flip";
  bool exhaustive = false;
  std::uint64_t samples = 0, seed = 1;
  std::uint32_t at_sync = 1;
  std::string gpa;
  std::string out;
  bool force = false;
};

struct RunCmd {
  std::string plan, shard = "0/1", out;
  unsigned jobs = 0;
  std::size_t chunk = 32;
  double timeout = 30;
};

struct MergeCmd {
  std::string plan, out, svg, junit;
  std::vector<std::string> results;
  bool force = false;
};

struct SlurmCmd {
  std::string plan, dir = "campaign-slurm", partition, time = "01:00:00", mem = "2G";
  std::size_t chunk = 1000;
  unsigned cpus = 1;
  bool dry_run = false;
};

// Splits "a,b,c".
std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t c = s.find(',', pos);
    std::string w = s.substr(pos, c == std::string::npos ? std::string::npos : c - pos);
    if (!w.empty()) out.push_back(w);
    if (c == std::string::npos) break;
    pos = c + 1;
  }
  return out;
}

void run_plan(const PlanCmd& c) {
  campaign::PlanOptions o;
  o.guest = campaign::GuestSpec{c.sim.guest, c.sim.params, c.sim.mem, c.sim.pages, c.sim.no_ad};
  for (const std::string& w : words(c.methods)) {
    auto m = sim::method_from_string(w);
    if (!m) return fail("--method '" + w + "' is not one of local-adopt, local-rebuild, local-lazy, precopy");
    o.methods.push_back(*m);
  }
  for (const std::string& w : words(c.targets)) {
    auto t = campaign::target_from_string(w);
    if (!t) return fail("--targets: '" + w + "' is not one of ept, vmcs, regs, memslot, ram");
    o.targets.push_back(*t);
  }
  o.triggers = words(c.triggers);
  o.ops.clear();
  for (const std::string& w : words(c.kinds)) {
    if (w == "flip") o.ops.push_back(sim::FaultOp::kFlip);
    else if (w == "stuck0") o.ops.push_back(sim::FaultOp::kStuck0);
    else if (w == "stuck1") o.ops.push_back(sim::FaultOp::kStuck1);
    else return fail("--kinds: '" + w + "' is not one of flip, stuck0, stuck1");
  }
  o.exhaustive = c.exhaustive;
  o.samples = c.samples;
  o.seed = c.seed;
  o.at_sync = c.at_sync;
  if (!c.gpa.empty()) {
    try {
      o.gpa = std::stoull(c.gpa, nullptr, 0);
    } catch (...) {
      return fail("--gpa '" + c.gpa + "' is not a number");
    }
  }
  if (auto r = model::check_output_path(c.out, c.force, "-o"); !r) return fail(r.error().message);
  auto setup = campaign_setup(o.guest);
  if (!setup) return fail(setup.error().message);
  auto plan = campaign::make_plan(o, *setup);
  if (!plan) return fail(plan.error().message);
  if (auto w = model::write_text(c.out, campaign::plan_text(*plan), c.force); !w) return fail(w.error().message);
  std::map<std::string, std::size_t> per;
  for (const campaign::PlannedFault& f : plan->faults) ++per[campaign::to_string(f.target)];
  std::printf("plan %s: %zu faults (%s) on %s, migration at sync point %u, budget %llu instructions\n",
              plan->hash.c_str(), plan->faults.size(), plan->mode.c_str(), o.guest.guest.c_str(), plan->at_sync,
              static_cast<unsigned long long>(plan->budget));
  for (const auto& [t, n] : per) std::printf("  %-8s %zu\n", t.c_str(), n);
}

void run_run(const RunCmd& c) {
  auto plan = campaign::load_plan(c.plan);
  if (!plan) return fail(plan.error().message);
  campaign::RunOptions o;
  unsigned i = 0, n = 0;
  char extra = 0;
  if (std::sscanf(c.shard.c_str(), "%u/%u%c", &i, &n, &extra) != 2 || n == 0 || i >= n)
    return fail("--shard '" + c.shard + "' is not I/N with 0 <= I < N");
  o.shard = i;
  o.shards = n;
  o.jobs = c.jobs != 0 ? c.jobs : std::max(1u, static_cast<unsigned>(sysconf(_SC_NPROCESSORS_ONLN)));
  o.out = c.out;
  o.chunk = c.chunk;
  o.timeout_s = c.timeout;
  if (show_progress())
    o.progress = [](std::size_t done, std::size_t total) {
      if (done % 50 == 0 || done == total) std::fprintf(stderr, "  .. %zu of %zu injections\n", done, total);
    };
  auto setup = campaign_setup(plan->guest);
  if (!setup) return fail(setup.error().message);
  auto st = campaign::run_campaign(*plan, *setup, o);
  if (!st) return fail(st.error().message);
  std::printf("shard %u/%u of plan %s: %zu faults, %zu already done, %zu run in %.1f s (%.0f injections/min with %u jobs)\n",
              i, n, plan->hash.c_str(), st->planned, st->resumed, st->ran, st->seconds,
              st->seconds > 0 ? 60.0 * static_cast<double>(st->ran) / st->seconds : 0.0, o.jobs);
}

void run_merge(const MergeCmd& c) {
  auto plan = campaign::load_plan(c.plan);
  if (!plan) return fail(plan.error().message);
  if (auto r = model::check_output_path(c.out, c.force, "-o"); !r) return fail(r.error().message);
  campaign::MergeOptions mo{c.svg, c.junit};
  std::string table;
  std::size_t missing = 0;
  auto s = campaign::merge_results(*plan, c.results, mo, table, missing);
  if (!s) return fail(s.error().message);
  if (auto w = model::write_text(c.out, *s, c.force); !w) return fail(w.error().message);
  std::fputs(table.c_str(), stdout);
  if (missing > 0) exit_code() = kExitRefuted;
}

// Runs sbatch with a script; returns the job id (sbatch --parsable) or sbatch's own message.
Result<std::string> sbatch(const std::vector<std::string>& args) {
  int p[2];
  if (pipe(p) != 0) return make_error("sbatch: pipe failed");
  const pid_t pid = fork();
  if (pid < 0) return make_error("sbatch: fork failed");
  if (pid == 0) {
    dup2(p[1], 1);
    dup2(p[1], 2);
    close(p[0]);
    close(p[1]);
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execvp(argv[0], argv.data());
    _exit(127);
  }
  close(p[1]);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = read(p[0], buf, sizeof buf)) > 0) out.append(buf, static_cast<std::size_t>(n));
  close(p[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  while (!out.empty() && (out.back() == '\n' || out.back() == ' ')) out.pop_back();
  if (WIFEXITED(st) && WEXITSTATUS(st) == 127)
    return make_error("sbatch is not installed (Debian package slurm-client; a cluster's login node has it)");
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
    for (char& ch : out)
      if (ch == '\n') ch = ' ';
    return make_error("sbatch failed: " + (out.empty() ? std::string("no message") : out));
  }
  return out.substr(0, out.find(';'));  // --parsable: "JOBID[;CLUSTER]"
}

// An absolute form of a path.
std::string absolute(const std::string& p) {
  char buf[PATH_MAX];
  if (!p.empty() && p[0] == '/') return p;
  if (getcwd(buf, sizeof buf) == nullptr) return p;
  return std::string(buf) + "/" + p;
}

void run_slurm(const SlurmCmd& c) {
  auto plan = campaign::load_plan(c.plan);
  if (!plan) return fail(plan.error().message);
  campaign::SlurmOptions o;
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  o.baton = n > 0 ? std::string(self, static_cast<std::size_t>(n)) : "baton";
  o.plan = absolute(c.plan);
  o.dir = absolute(c.dir);
  o.chunk = c.chunk;
  o.partition = c.partition;
  o.time = c.time;
  o.mem = c.mem;
  o.cpus = c.cpus;
  auto s = campaign::slurm_scripts(*plan, o);
  if (!s) return fail(s.error().message);
  if (c.dry_run) {
    std::printf("# %s/run.sbatch\n%s\n# %s/merge.sbatch\n%s\n# submit:\n#   sbatch --parsable %s/run.sbatch\n"
                "#   sbatch --parsable --dependency=afterok:JOBID %s/merge.sbatch\n",
                o.dir.c_str(), s->run.c_str(), o.dir.c_str(), s->merge.c_str(), o.dir.c_str(), o.dir.c_str());
    return;
  }
  for (const std::string& d : {o.dir, o.dir + "/logs"})
    if (mkdir(d.c_str(), 0755) != 0 && errno != EEXIST)
      return fail("--dir: cannot create " + d + " (" + std::strerror(errno) + ")");
  if (auto r = model::check_output_dir(o.dir + "/logs", "--dir"); !r) return fail(r.error().message);
  if (auto w = model::write_text(o.dir + "/run.sbatch", s->run, true); !w) return fail(w.error().message);
  if (auto w = model::write_text(o.dir + "/merge.sbatch", s->merge, true); !w) return fail(w.error().message);
  auto job = sbatch({"sbatch", "--parsable", o.dir + "/run.sbatch"});
  if (!job) return fail(job.error().message);
  auto merge = sbatch({"sbatch", "--parsable", "--dependency=afterok:" + *job, o.dir + "/merge.sbatch"});
  if (!merge) return fail("array job " + *job + " was submitted, but the merge was not: " + merge.error().message);
  std::printf("submitted array job %s (%u tasks of up to %zu faults) and merge job %s; the summary will be %s/summary.json\n",
              job->c_str(), s->tasks, c.chunk, merge->c_str(), o.dir.c_str());
}

}  // namespace

void register_campaign(CLI::App& app) {
  CLI::App* c = app.add_subcommand("campaign", "Fault campaigns: plan, run (sharded, resumable), merge, Slurm");
  c->require_subcommand(1);

  auto p = std::make_shared<PlanCmd>();
  CLI::App* pl = c->add_subcommand("plan", "Write a deterministic plan of faults with stable ids");
  pl->add_option("guest", p->sim.guest, "Built-in guest (see `baton guests list`)")->required();
  pl->add_option("--param,-p", p->sim.params, "Guest parameter key=value (repeatable)");
  pl->add_option("--mem", p->sim.mem, "Guest memory size")->capture_default_str();
  pl->add_option("--pages", p->sim.pages, "Largest EPT (and guest) leaf: 4k, 2m, 1g")->capture_default_str();
  pl->add_flag("--no-ad", p->sim.no_ad, "Disable EPT accessed/dirty flags");
  pl->add_option("--method", p->methods, "Migration methods, comma-separated")->capture_default_str();
  pl->add_option("--targets", p->targets, "ept, vmcs, regs, memslot, ram (comma-separated)")->capture_default_str();
  pl->add_option("--triggers", p->triggers, "handover, sync:N, insn:N (comma-separated; early ones hit ept, vmcs controls, ram)")
      ->capture_default_str();
  pl->add_option("--kinds", p->kinds, "flip, stuck0, stuck1 (comma-separated)")->capture_default_str();
  pl->add_flag("--exhaustive", p->exhaustive, "Every bit: of every entry of one walk and the EPTP, of every VMCS field, "
               "register and memslot field, of one RAM word");
  pl->add_option("--samples", p->samples, "Draw this many faults at random (any mapped page, any level)");
  pl->add_option("--seed", p->seed, "Seed of --samples")->capture_default_str();
  pl->add_option("--at-sync", p->at_sync, "Migrate when the guest announces this sync point")->capture_default_str();
  pl->add_option("--gpa", p->gpa, "The walk (and RAM page) of --exhaustive (default: the middle mapped page)");
  pl->add_option("-o,--out", p->out, "The plan file")->required();
  pl->add_flag("--force", p->force, "Replace an existing plan");
  pl->callback([p] { run_plan(*p); });

  auto r = std::make_shared<RunCmd>();
  CLI::App* ru = c->add_subcommand("run", "Run a plan (or one shard of it), appending to a resumable results file");
  ru->add_option("plan", r->plan, "The plan")->required();
  ru->add_option("--shard", r->shard, "Run the faults whose index is I mod N")->capture_default_str();
  ru->add_option("--jobs,-j", r->jobs, "Parallel zygotes (default: the cores)");
  ru->add_option("--chunk", r->chunk, "Injections per pre-fault snapshot")->capture_default_str();
  ru->add_option("--timeout", r->timeout, "Wall-clock seconds per injection before it counts as a hang")->capture_default_str();
  ru->add_option("-o,--out", r->out, "RESULTS.jsonl (appended to; an interrupted run resumes from it)")->required();
  ru->callback([r] { run_run(*r); });

  auto m = std::make_shared<MergeCmd>();
  CLI::App* me = c->add_subcommand("merge", "Merge result files into one summary, the same bytes however the run was sharded");
  me->add_option("results", m->results, "RESULTS.jsonl files")->required();
  me->add_option("--plan", m->plan, "The plan the results belong to")->required();
  me->add_option("-o,--out", m->out, "The summary (JSON)")->required();
  me->add_option("--svg", m->svg, "Write by-target.svg and by-bit.svg (gnuplot) into this directory");
  me->add_option("--junit", m->junit, "Write JUnit XML: a silent corruption (sdc, isolation breach) fails its fault");
  me->add_flag("--force", m->force, "Replace an existing summary");
  me->callback([m] { run_merge(*m); });

  auto s = std::make_shared<SlurmCmd>();
  CLI::App* sl = c->add_subcommand("slurm", "Write and submit an sbatch array of `campaign run --shard` and a merge job");
  sl->add_option("plan", s->plan, "The plan (on a filesystem the nodes share)")->required();
  sl->add_option("--chunk", s->chunk, "Faults per array task")->capture_default_str();
  sl->add_option("--dir", s->dir, "Scripts, results, logs and the summary (shared)")->capture_default_str();
  sl->add_option("--partition", s->partition, "Slurm partition");
  sl->add_option("--time", s->time, "Time limit per task")->capture_default_str();
  sl->add_option("--mem", s->mem, "Memory per task")->capture_default_str();
  sl->add_option("--cpus", s->cpus, "CPUs per task (campaign run --jobs)")->capture_default_str();
  sl->add_flag("--dry-run", s->dry_run, "Print the scripts and the sbatch commands; submit nothing");
  sl->callback([s] { run_slurm(*s); });
}

}  // namespace baton::cli
