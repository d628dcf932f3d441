// baton bench sim: simulator speed against a bare-Unicorn baseline in the same run, and the
// region count of a 4 GiB memslot under dirty tracking.
#include <unistd.h>

#include <algorithm>
#include <chrono>
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
json sim_run(const std::string& name, const guests::GuestImage& im, sim::SimConfig cfg, double* wall_out) {
  cfg.guest_name = name;
  auto m = sim::SimMachine::create(cfg);
  if (!m) return json{{"error", m.error().message}};
  if (auto r = (*m)->load(im); !r) return json{{"error", r.error().message}};
  const auto t0 = std::chrono::steady_clock::now();
  sim::RunLimits lim;
  lim.budget = 50'000'000'000ull;
  const sim::RunEvent ev = (*m)->run(lim);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const sim::SimStats st = (*m)->stats();
  if (wall_out != nullptr) *wall_out = wall;
  auto expected = guests::expected_result(name, im.params);
  const auto sum = (*m)->output().checksum();
  return json{{"outcome", sim::to_string(ev.reason)},
              {"checksum_matches", expected && sum && *expected == *sum},
              {"instructions", st.instructions},
              {"wall_s", wall},
              {"mips", static_cast<double>(st.instructions) / wall / 1e6},
              {"simulated_cycles", st.cost.total()},
              {"ept_violations", st.ept.violations},
              {"tlb_misses", st.tlb_misses},
              {"hook_toggles", st.hook_toggles},
              {"unicorn_regions", st.regions}};
}

// Measures one guest: simulator (EPT, cost model, A/D on) against bare Unicorn. Each side runs
// `reps` times, alternating, each time in a fresh instance; the best (shortest) wall time of
// each side gives the MIPS, so that other load on the shared cores disturbs the ratio less.
// The simulated figures of every repetition must agree (they are deterministic).
json compare(const std::string& label, const std::string& name, std::uint64_t mem, std::vector<std::string> params,
             bool tlb, bool tty, unsigned reps) {
  auto im = image_of(name, mem, guests::PageSize::k4K, std::move(params));
  if (!im) return json{{"error", im.error().message}};
  sim::SimConfig cfg;
  cfg.hv.ad = true;
  cfg.profile.tlb_enabled = tlb;
  json s, sim_walls = json::array(), bare_walls = json::array();
  double best_sim = 0, best_bare = 0;
  bool same = true, bare_exited = true;
  for (unsigned r = 0; r < reps; ++r) {
    if (tty) std::fprintf(stderr, "%s: simulator (%u/%u)...\n", label.c_str(), r + 1, reps);
    double wall = 0;
    json one = sim_run(name, *im, cfg, &wall);
    if (one.contains("error")) return one;
    if (r == 0) {
      s = one;
    } else {
      for (const char* k : {"instructions", "simulated_cycles", "ept_violations", "tlb_misses", "checksum_matches"})
        same = same && one[k] == s[k];
    }
    sim_walls.push_back(wall);
    if (r == 0 || wall < best_sim) best_sim = wall;
    if (tty) std::fprintf(stderr, "%s: bare Unicorn baseline (%u/%u)...\n", label.c_str(), r + 1, reps);
    auto bare = sim::run_bare_unicorn(*im);
    if (!bare) return json{{"error", bare.error().message}};
    bare_exited = bare_exited && bare->ports.exited;
    bare_walls.push_back(bare->wall_s);
    if (r == 0 || bare->wall_s < best_bare) best_bare = bare->wall_s;
  }
  const double insns = s.value("instructions", 0.0);
  s["wall_s"] = best_sim;
  s["mips"] = insns / best_sim / 1e6;
  s["wall_s_all"] = sim_walls;
  s["deterministic"] = same;
  const double base_mips = insns / best_bare / 1e6;
  const double ratio = s.value("mips", 0.0) / base_mips;
  return json{{"guest", name}, {"tlb_model", tlb}, {"repetitions", reps}, {"sim", s},
              {"baseline_bare_unicorn", {{"wall_s", best_bare}, {"wall_s_all", bare_walls}, {"mips", base_mips},
                                         {"checksum_matches", bare_exited && s.value("checksum_matches", false)}}},
              {"ratio", ratio}, {"goal_ratio", 0.5}, {"aim_ratio", 0.8}, {"met", ratio >= 0.5 && same}};
}

// baton bench sim
void run_bench_sim(bool quick, unsigned reps) {
  const bool tty = isatty(fileno(stderr)) != 0;
  reps = std::max(reps, 1u);
  json j;
  j["bench"] = "sim";
  j["checksum"] = compare("checksum", "checksum", 128u << 20, {}, true, tty, reps);
  j["checksum_no_tlb_model"] = compare("checksum (TLB model off)", "checksum", 128u << 20, {}, false, tty, reps);
  j["memtouch_256m"] = compare("memtouch 256 MiB", "memtouch", 384u << 20, {"size=256M"}, true, tty, reps);
  j["memtouch_256m_no_tlb_model"] =
      compare("memtouch 256 MiB (TLB model off)", "memtouch", 384u << 20, {"size=256M"}, false, tty, reps);
  // Regions stay constant over a 4 GiB memslot under dirty tracking.
  const std::uint64_t big = quick ? std::uint64_t{1} << 30 : std::uint64_t{4} << 30;
  auto im = image_of("memtouch", big, guests::PageSize::k4K, {quick ? "size=768M" : "size=3G", "passes=1"});
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
  j["met"] = j["checksum"].value("met", false) && j["memtouch_256m"].value("met", false) &&
             big_run.value("unicorn_regions", 999) < 16;
  std::cout << j.dump(2) << "\n";
}

}  // namespace

void register_bench_sim(CLI::App& bench) {
  auto quick = std::make_shared<bool>(false);
  auto reps = std::make_shared<unsigned>(3);
  CLI::App* c = bench.add_subcommand("sim", "Simulator MIPS against bare Unicorn; regions over a 4 GiB memslot");
  c->add_flag("--quick", *quick, "Use a 1 GiB memslot for the region figure");
  c->add_option("--reps", *reps, "Runs of each side per figure (alternating); the best wall time of each counts")
      ->capture_default_str();
  c->callback([quick, reps] { run_bench_sim(*quick, *reps); });
}

}  // namespace baton::cli
