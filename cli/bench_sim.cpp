// baton bench sim: simulator speed in steady state against a bare-Unicorn baseline in the same
// run (every built-in guest, long enough to take at least a second in bare Unicorn), a short
// run that shows the start-up cost apart, and the region count of a 4 GiB memslot under PML.
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/guests/registry.hpp"
#include "baton/sim/baseline.hpp"
#include "baton/sim/sim_machine.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

// One measured configuration: a guest with parameters, simulator against bare Unicorn.
struct SimCase {
  std::string name;                 // JSON key and table row
  std::string guest;
  std::uint64_t mem = 128u << 20;
  std::vector<std::string> params;
  bool tlb = true;                  // the TLB model (the default profile has it on)
  bool steady = true;               // part of the steady-state geometric mean
};

// The cases: six steady-state runs (each takes at least a second in bare Unicorn on an idle
// machine), the headline (checksum, crc32c, 100 rounds) with and without the TLB model, and
// the short default run (35.7M instructions, start-up included).
std::vector<SimCase> all_cases() {
  return {
      {"checksum", "checksum", 128u << 20, {"rounds=200"}, true, true},
      {"memtouch", "memtouch", 384u << 20, {"size=256M", "passes=72"}, true, true},
      {"pagewalk", "pagewalk", 384u << 20, {"size=256M", "reads=24000000"}, true, true},
      {"io", "io", 128u << 20, {"count=6400000", "batch=4096"}, true, true},
      {"tsc", "tsc", 128u << 20, {"iterations=18000000"}, true, true},
      {"mixed", "mixed", 128u << 20, {"size=32M", "cycles=13"}, true, true},
      {"checksum_r100", "checksum", 128u << 20, {"rounds=100"}, true, false},
      {"checksum_r100_no_tlb_model", "checksum", 128u << 20, {"rounds=100"}, false, false},
      {"checksum_short", "checksum", 128u << 20, {}, true, false},
  };
}

// CPU seconds (user + system) this thread has used so far: unlike wall time, other load on
// the shared cores barely moves it.
double thread_cpu_s() {
  struct rusage ru {};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

// Loads a built-in guest with parameters.
Result<guests::GuestImage> image_of(const std::string& name, std::uint64_t mem, guests::PageSize ps,
                                    std::vector<std::string> params) {
  auto g = guests::get_builtin(name);
  if (!g) return g.error();
  auto p = guests::resolve_params(**g, params);
  if (!p) return p.error();
  guests::GuestConfig gc;
  gc.mem_size = mem;
  gc.page_size = ps;
  gc.params = *p;
  return guests::load_builtin(name, gc);
}

// Runs an image on the simulator; returns JSON with MIPS and the figures of the run.
json sim_run(const std::string& name, const guests::GuestImage& im, sim::SimConfig cfg, double* wall_out,
             double* cpu_out = nullptr) {
  cfg.guest_name = name;
  auto m = sim::SimMachine::create(cfg);
  if (!m) return json{{"error", m.error().message}};
  if (auto r = (*m)->load(im); !r) return json{{"error", r.error().message}};
  const auto t0 = std::chrono::steady_clock::now();
  const double c0 = thread_cpu_s();
  sim::RunLimits lim;
  lim.budget = 50'000'000'000ull;
  const sim::RunEvent ev = (*m)->run(lim);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (cpu_out != nullptr) *cpu_out = thread_cpu_s() - c0;
  const sim::SimStats st = (*m)->stats();
  if (wall_out != nullptr) *wall_out = wall;
  auto expected = guests::expected_result(name, im.params);
  const auto sum = (*m)->output().checksum();
  std::uint64_t exits = 0;
  for (const auto& [r, n] : st.exits) exits += n;
  const double execs = static_cast<double>(std::max<std::uint64_t>(st.block_execs, 1));
  return json{{"outcome", sim::to_string(ev.reason)},
              {"checksum_matches", expected && sum && *expected == *sum},
              {"instructions", st.instructions},
              {"wall_s", wall},
              {"mips", static_cast<double>(st.instructions) / wall / 1e6},
              {"simulated_cycles", st.cost.total()},
              {"exits", exits},
              {"ept_violations", st.ept.violations},
              {"tlb_misses", st.tlb_misses},
              {"hook_toggles", st.hook_toggles},
              {"hookless_block_share", static_cast<double>(st.hookless_execs) / execs},
              {"read_hooks", st.read_hooks},
              {"write_hooks", st.write_hooks},
              {"unicorn_regions", st.regions}};
}

// Which sides a measurement runs.
struct Sides {
  bool sim = true, bare = true;
};

// Measures one case: simulator (EPT, cost model, A/D on) against bare Unicorn. Each side runs
// `reps` times, alternating, each time in a fresh instance; the best (shortest) wall time of
// each side gives the MIPS, so that other load on the shared cores disturbs the ratio less.
// The simulated figures of every repetition must agree (they are deterministic).
json measure(const SimCase& c, Sides sides, bool tty, unsigned reps) {
  auto im = image_of(c.guest, c.mem, guests::PageSize::k4K, c.params);
  if (!im) return json{{"error", im.error().message}};
  sim::SimConfig cfg;
  cfg.hv.ad = true;
  cfg.profile.tlb_enabled = c.tlb;
  json s, sim_walls = json::array(), bare_walls = json::array(), sim_cpus = json::array(), bare_cpus = json::array();
  double best_sim = 0, best_bare = 0, best_sim_cpu = 0, best_bare_cpu = 0;
  bool same = true, bare_exited = true;
  for (unsigned r = 0; r < reps; ++r) {
    if (sides.sim) {
      if (tty) std::fprintf(stderr, "%s: simulator (%u/%u)...\n", c.name.c_str(), r + 1, reps);
      double wall = 0, cpu = 0;
      json one = sim_run(c.guest, *im, cfg, &wall, &cpu);
      if (one.contains("error")) return one;
      if (r == 0) {
        s = one;
      } else {
        for (const char* k : {"instructions", "simulated_cycles", "exits", "ept_violations", "tlb_misses", "checksum_matches"})
          same = same && one[k] == s[k];
      }
      sim_walls.push_back(wall);
      sim_cpus.push_back(cpu);
      if (r == 0 || wall < best_sim) best_sim = wall;
      if (r == 0 || cpu < best_sim_cpu) best_sim_cpu = cpu;
    }
    if (sides.bare) {
      if (tty) std::fprintf(stderr, "%s: bare Unicorn baseline (%u/%u)...\n", c.name.c_str(), r + 1, reps);
      auto bare = sim::run_bare_unicorn(*im);
      if (!bare) return json{{"error", bare.error().message}};
      const double cpu = bare->cpu_s;
      bare_cpus.push_back(cpu);
      if (r == 0 || cpu < best_bare_cpu) best_bare_cpu = cpu;
      bare_exited = bare_exited && bare->ports.exited;
      bare_walls.push_back(bare->wall_s);
      if (r == 0 || bare->wall_s < best_bare) best_bare = bare->wall_s;
    }
  }
  json out{{"guest", c.guest}, {"params", c.params}, {"tlb_model", c.tlb}, {"repetitions", reps}};
  if (sides.sim) {
    s["wall_s"] = best_sim;
    s["mips"] = s.value("instructions", 0.0) / best_sim / 1e6;
    s["wall_s_all"] = sim_walls;
    s["cpu_s"] = best_sim_cpu;
    s["cpu_s_all"] = sim_cpus;
    out["sim"] = s;
    out["deterministic"] = same;
  }
  if (sides.bare) {
    json b{{"wall_s", best_bare}, {"wall_s_all", bare_walls}, {"cpu_s", best_bare_cpu}, {"cpu_s_all", bare_cpus},
           {"exited", bare_exited}};
    if (sides.sim) {
      const double insns = s.value("instructions", 0.0);
      b["mips"] = insns / best_bare / 1e6;
      b["checksum_matches"] = bare_exited && s.value("checksum_matches", false);
      out["ratio"] = best_bare / best_sim;  // same instruction count on both sides
      out["ratio_cpu"] = best_sim_cpu > 0 ? best_bare_cpu / best_sim_cpu : 0.0;
    }
    out["baseline_bare_unicorn"] = b;
  }
  return out;
}

// Prints the readable table of a finished bench.
void print_table(const json& j) {
  std::printf("%-26s %13s %9s %9s %8s %7s %9s %8s\n", "case", "instructions", "sim MIPS", "bare MIPS", "bare s", "ratio",
              "CPU ratio", "hookless");
  for (const auto& [name, one] : j["cases"].items()) {
    const json& c = one;  // a plain reference: clang 14 (make fuzz) cannot capture a structured binding
    if (c.contains("error")) {
      std::printf("%-22s error: %s\n", name.c_str(), c["error"].get<std::string>().c_str());
      continue;
    }
    auto num = [&](const char* side, const char* key) {
      return c.contains(side) ? c[side].value(key, 0.0) : 0.0;
    };
    std::printf("%-26s %13.0f %9.1f %9.1f %8.3f %6.2fx %8.2fx %7.1f%%\n", name.c_str(), num("sim", "instructions"),
                num("sim", "mips"), num("baseline_bare_unicorn", "mips"), num("baseline_bare_unicorn", "wall_s"),
                c.value("ratio", 0.0), c.value("ratio_cpu", 0.0), 100.0 * num("sim", "hookless_block_share"));
  }
  if (j.contains("steady_state"))
    std::printf("steady state: geometric mean %.2fx, lowest %.2fx (goal >= 0.5x each, aim 0.8x mean); by CPU time %.2fx, "
                "lowest %.2fx\n",
                j["steady_state"].value("geomean_ratio", 0.0), j["steady_state"].value("min_ratio", 0.0),
                j["steady_state"].value("geomean_ratio_cpu", 0.0), j["steady_state"].value("min_ratio_cpu", 0.0));
  if (j.contains("memtouch_big_dirty_pml")) {
    const json& b = j["memtouch_big_dirty_pml"];
    std::printf("memtouch over a %.0f GiB memslot with PML: %llu Unicorn region(s), %.0f EPT violations, checksum %s, %.1f s\n",
                b.value("memslot_bytes", 0.0) / 1073741824.0,
                static_cast<unsigned long long>(b.value("unicorn_regions", std::uint64_t{0})),
                b.value("ept_violations", 0.0), b.value("checksum_matches", false) ? "matches" : "MISMATCH",
                b.value("wall_s", 0.0));
  }
  std::printf("met: %s\n", j.value("met", false) ? "yes" : "no");
}

struct BenchSimOptions {
  bool quick = false;       // a 1 GiB memslot for the region figure
  unsigned reps = 3;
  bool json_out = false;
  std::vector<std::string> only;  // case names; empty: all, with the region figure
  std::vector<std::string> params;  // key=value added to (or replacing in) every case run
  std::string side = "both";
};

// baton bench sim
void run_bench_sim(const BenchSimOptions& o) {
  const bool tty = isatty(fileno(stderr)) != 0;
  const unsigned reps = std::max(o.reps, 1u);
  Sides sides;
  if (o.side == "sim") sides.bare = false;
  else if (o.side == "bare") sides.sim = false;
  else if (o.side != "both") return fail("--side must be both, sim or bare");
  std::vector<SimCase> cases = all_cases();
  for (const std::string& n : o.only)
    if (std::none_of(cases.begin(), cases.end(), [&](const SimCase& c) { return c.name == n; }))
      return fail("no bench sim case named '" + n + "'");
  json j;
  j["bench"] = "sim";
  j["cases"] = json::object();
  double log_sum = 0, min_ratio = 0, log_sum_cpu = 0, min_ratio_cpu = 0;
  unsigned steady = 0;
  bool deterministic = true, checksums = true;
  for (const SimCase& c : cases) {
    if (!o.only.empty() && std::find(o.only.begin(), o.only.end(), c.name) == o.only.end()) continue;
    SimCase run = c;
    for (const std::string& p : o.params) {  // replaces the case's value of the same key
      const std::string key = p.substr(0, p.find('='));
      std::erase_if(run.params, [&](const std::string& q) { return q.substr(0, q.find('=')) == key; });
      run.params.push_back(p);
    }
    json r = measure(run, sides, tty, reps);
    if (r.contains("error")) return fail(c.name + ": " + r["error"].get<std::string>());
    deterministic = deterministic && r.value("deterministic", true);
    if (r.contains("sim")) checksums = checksums && r["sim"].value("checksum_matches", false);
    if (c.steady && r.contains("ratio")) {
      const double ratio = r["ratio"].get<double>(), ratio_cpu = r.value("ratio_cpu", 0.0);
      log_sum += std::log(ratio);
      log_sum_cpu += std::log(std::max(ratio_cpu, 1e-9));
      min_ratio = steady == 0 ? ratio : std::min(min_ratio, ratio);
      min_ratio_cpu = steady == 0 ? ratio_cpu : std::min(min_ratio_cpu, ratio_cpu);
      ++steady;
    }
    j["cases"][c.name] = r;
  }
  j["deterministic"] = deterministic;
  bool met = deterministic && checksums;
  if (steady > 0) {
    const double geo = std::exp(log_sum / steady);
    j["steady_state"] = {{"cases", steady}, {"geomean_ratio", geo}, {"min_ratio", min_ratio},
                         {"geomean_ratio_cpu", std::exp(log_sum_cpu / steady)}, {"min_ratio_cpu", min_ratio_cpu},
                         {"goal_min_ratio", 0.5}, {"aim_geomean_ratio", 0.8}};
    met = met && min_ratio >= 0.5;
  }
  if (o.only.empty() && sides.sim) {
    // Regions stay constant over a 4 GiB memslot under dirty tracking.
    const std::uint64_t big = o.quick ? std::uint64_t{1} << 30 : std::uint64_t{4} << 30;
    auto im = image_of("memtouch", big, guests::PageSize::k4K, {o.quick ? "size=768M" : "size=3G", "passes=1"});
    if (!im) return fail(im.error().message);
    if (tty) std::fprintf(stderr, "memtouch over a %llu GiB memslot with PML dirty tracking...\n",
                          static_cast<unsigned long long>(big >> 30));
    sim::SimConfig cfg;
    cfg.hv.dirty = sim::DirtyMode::kPml;
    cfg.profile.tlb_enabled = false;
    json big_run = sim_run("memtouch", *im, cfg, nullptr);
    big_run["memslot_bytes"] = big;
    big_run["pages"] = big >> 12;
    j["memtouch_big_dirty_pml"] = big_run;
    met = met && big_run.value("unicorn_regions", 999) == 1 && big_run.value("checksum_matches", false);
  }
  j["met"] = met;
  if (o.json_out) std::cout << j.dump(2) << "\n";
  else print_table(j);
}

}  // namespace

void register_bench_sim(CLI::App& bench) {
  auto o = std::make_shared<BenchSimOptions>();
  CLI::App* c = bench.add_subcommand(
      "sim", "Simulator MIPS against bare Unicorn in steady state (every guest), start-up apart; regions over 4 GiB");
  c->add_flag("--quick", o->quick, "Use a 1 GiB memslot for the region figure");
  c->add_option("--reps", o->reps, "Runs of each side per case (alternating); the best wall time of each counts")
      ->capture_default_str();
  c->add_option("--case", o->only,
                "Only these cases (checksum, memtouch, pagewalk, io, tsc, mixed, checksum_r100, checksum_r100_no_tlb_model, "
                "checksum_short)");
  c->add_option("--param", o->params, "Guest parameter key=value added to the selected cases (profiling)");
  c->add_option("--side", o->side, "both, or only sim or bare (for profilers)")->capture_default_str();
  c->add_flag("--json", o->json_out, "Print JSON");
  c->callback([o] { run_bench_sim(*o); });
}

}  // namespace baton::cli
