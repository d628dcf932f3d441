// baton bench campaign: injections per minute per core of `campaign run` (a forked pre-fault
// snapshot per injection, checks narrowed to what the target can break) against the naive
// baseline in the same run: one `baton migrate --fault` process per injection.
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <climits>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/campaign/campaign.hpp"
#include "campaign_setup.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// CPU seconds (user + system) of this process and of its reaped children so far.
double cpu_seconds() {
  double t = 0;
  for (int who : {RUSAGE_SELF, RUSAGE_CHILDREN}) {
    rusage u{};
    getrusage(who, &u);
    t += static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec) / 1e6;
  }
  return t;
}

// The 1-minute load average (/proc/loadavg), or -1 when it cannot be read.
double load_average() {
  FILE* f = std::fopen("/proc/loadavg", "r");
  if (f == nullptr) return -1;
  double l = -1;
  if (std::fscanf(f, "%lf", &l) != 1) l = -1;
  std::fclose(f);
  return l;
}

struct BenchCampaignOptions {
  std::string guest = "memtouch", mem = "64M", targets = "ept,vmcs,regs,memslot,ram";
  std::uint64_t samples = 100;
};

// Runs one `baton migrate` process for a fault and waits for it.
bool run_naive(const std::string& self, const campaign::Plan& plan, const campaign::PlannedFault& f) {
  const pid_t pid = fork();
  if (pid < 0) return false;
  if (pid == 0) {
    std::vector<std::string> a = {self, "migrate", plan.guest.guest, "--mem", plan.guest.mem, "--pages", plan.guest.pages,
                                  "--method", sim::to_string(f.method), "--fault", f.spec, "--at-sync",
                                  std::to_string(plan.at_sync), "--budget", std::to_string(plan.budget),
                                  "--no-reference", "--json", "--quiet"};
    for (const std::string& p : plan.guest.params) {
      a.push_back("--param");
      a.push_back(p);
    }
    std::vector<char*> argv;
    for (std::string& s : a) argv.push_back(s.data());
    argv.push_back(nullptr);
    if (freopen("/dev/null", "w", stdout) == nullptr || freopen("/dev/null", "w", stderr) == nullptr) _exit(126);
    alarm(30);  // the campaign's wall-clock limit: a spinning injection is killed as a hang
    execv(self.c_str(), argv.data());
    _exit(127);
  }
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) && WEXITSTATUS(st) != 127 && WEXITSTATUS(st) != 126;
}

void run_bench_campaign(const BenchCampaignOptions& o) {
  const bool tty = show_progress();
  campaign::PlanOptions po;
  po.guest = campaign::GuestSpec{o.guest, {}, o.mem, "4k", false};
  po.methods = {sim::Method::kAdopt};
  for (const char* t : {"ept", "vmcs", "regs", "memslot", "ram"})
    if (o.targets.find(t) != std::string::npos) po.targets.push_back(*campaign::target_from_string(t));
  po.samples = o.samples;
  po.seed = 1;
  auto setup = campaign_setup(po.guest);
  if (!setup) return fail(setup.error().message);
  auto plan = campaign::make_plan(po, *setup);
  if (!plan) return fail(plan.error().message);
  char dir[] = "/tmp/baton-bench-campaign-XXXXXX";
  if (mkdtemp(dir) == nullptr) return fail("bench campaign: cannot make a temporary directory");
  json out;
  out["guest"] = o.guest;
  out["mem"] = o.mem;
  out["method"] = "local-adopt";
  out["targets"] = o.targets;
  out["cores"] = 1;
  out["load_average_start"] = load_average();
  auto measure = [&](bool fast, bool policies, const char* name) -> double {
    if (tty) std::fprintf(stderr, "  .. %s: %zu injections, 1 job\n", name, plan->faults.size());
    campaign::RunOptions ro;
    ro.jobs = 1;
    ro.fast = fast;
    ro.all_policies = policies;
    ro.out = std::string(dir) + "/" + name + ".jsonl";
    const double c0 = cpu_seconds();
    auto st = campaign::run_campaign(*plan, *setup, ro);
    const double cpu = cpu_seconds() - c0;
    unlink(ro.out.c_str());
    if (!st) {
      out[name] = {{"error", st.error().message}};
      return 0;
    }
    const double rate = 60.0 * static_cast<double>(st->ran) / st->seconds;
    const double per_cpu = cpu > 0 ? 60.0 * static_cast<double>(st->ran) / cpu : 0;
    out[name] = {{"injections", st->ran}, {"wall_s", st->seconds}, {"cpu_s", cpu}, {"per_min_wall", rate},
                 {"per_cpu_min", per_cpu}};
    return per_cpu;
  };
  const double fast = measure(true, false, "campaign");
  const double full = measure(false, false, "campaign_all_checks");
  measure(true, true, "campaign_all_policies");
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  const std::string me = n > 0 ? std::string(self, static_cast<std::size_t>(n)) : "baton";
  const std::size_t k = plan->faults.size();
  if (tty) std::fprintf(stderr, "  .. naive: %zu processes of baton migrate --fault\n", k);
  const auto t0 = Clock::now();
  const double c0 = cpu_seconds();
  std::size_t ok = 0;
  for (std::size_t i = 0; i < k; ++i) ok += run_naive(me, *plan, plan->faults[i]) ? 1 : 0;
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = cpu_seconds() - c0;
  const double naive = cpu > 0 ? 60.0 * static_cast<double>(k) / cpu : 0;
  out["naive_process_per_injection"] = {{"injections", k}, {"completed", ok}, {"wall_s", secs}, {"cpu_s", cpu},
                                        {"per_min_wall", secs > 0 ? 60.0 * static_cast<double>(k) / secs : 0.0},
                                        {"per_cpu_min", naive}};
  out["load_average_end"] = load_average();
  out["speedup_over_naive"] = naive > 0 ? fast / naive : 0.0;
  out["speedup_of_narrowed_checks"] = full > 0 ? fast / full : 0.0;
  out["goal"] = ">= 1000 injections per CPU-minute (one core), fast path";
  out["met"] = fast >= 1000;
  out["note"] = "rates per CPU-minute count the CPU time of the run and of every process it forked; wall rates "
                "depend on how loaded the machine is";
  rmdir(dir);
  std::cout << out.dump(2) << "\n";
}

}  // namespace

void register_bench_campaign(CLI::App& bench) {
  auto o = std::make_shared<BenchCampaignOptions>();
  CLI::App* c = bench.add_subcommand(
      "campaign", "Campaign injections/min/core against one baton-migrate process per injection (same run)");
  c->add_option("--guest", o->guest, "Guest")->capture_default_str();
  c->add_option("--mem", o->mem, "Guest memory")->capture_default_str();
  c->add_option("--targets", o->targets, "Targets of the sampled plan")->capture_default_str();
  c->add_option("--samples", o->samples, "Injections of each run (the same faults in every run)")->capture_default_str();
  c->callback([o] { run_bench_campaign(*o); });
}

}  // namespace baton::cli
