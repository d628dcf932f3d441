// baton bench migrate: the migration figures of issue 6 in simulated time (default cost
// profile), each against its baseline in the same run: local-adopt downtime at a small and a
// large memory size; precopy against local-adopt on memtouch at 1 GiB; precopy downtime and
// total time against the dirty rate and the memory size.
#include <unistd.h>

#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/sim/migration.hpp"
#include "commands.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

struct BenchMigrateOptions {
  std::string small = "64M";
  std::string large = "16G";
  std::string precopy_mem = "1G";
  bool quick = false;
};

// Runs one migration; the JSON carries the figures or the error.
json one(const std::string& guest, const std::string& mem, std::vector<std::string> params, sim::Method m,
         double* downtime_us = nullptr, bool tty = false) {
  if (tty) std::fprintf(stderr, "  .. %s %s at %s\n", guest.c_str(), sim::to_string(m), mem.c_str());
  SimOptions so;
  so.guest = guest;
  so.mem = mem;
  so.params = std::move(params);
  auto setup = make_sim_setup(so);
  if (!setup) return json{{"error", setup.error().message}};
  sim::MigrationOptions o;
  o.method = m;
  o.reference = false;
  auto r = sim::migrate(setup->image, setup->cfg, o);
  if (!r) return json{{"error", r.error().message}};
  if (downtime_us != nullptr) *downtime_us = r->micros(r->downtime);
  json j{{"guest", guest},
         {"mem", mem},
         {"params", so.params},
         {"method", sim::to_string(m)},
         {"downtime_us", r->micros(r->downtime)},
         {"total_us", r->micros(r->total)},
         {"bytes_copied", r->bytes_copied},
         {"rounds", r->rounds.size()},
         {"verdict", checker::to_string(r->verdict)},
         {"checksum_matches", r->checksum_ok()},
         {"guest_exited_during_precopy", r->finished_before_switch},
         {"wall_s", r->wall_s}};
  return j;
}

void run_bench_migrate(const BenchMigrateOptions& o) {
  const bool tty = show_progress();
  json out;
  out["profile"] = "default";
  // 1. local-adopt downtime is flat in memory size.
  double small = 0, large = 0;
  json flat = json::array();
  flat.push_back(one("memtouch", o.small, {}, sim::Method::kAdopt, &small, tty));
  flat.push_back(one("memtouch", o.large, {}, sim::Method::kAdopt, &large, tty));
  out["adopt_flat"] = {{"runs", flat},
                       {"large_over_small", small > 0 ? large / small : 0.0},
                       {"goal", "within 5% (0.95..1.05)"},
                       {"met", small > 0 && large / small >= 0.95 && large / small <= 1.05}};
  // 2. precopy against local-adopt at 1 GiB on memtouch: a 256 MiB working set that keeps
  //    running through the pre-copy rounds.
  if (!o.quick) {
    const std::vector<std::string> p = {"size=256M", "passes=400"};
    double adopt = 0, pre = 0;
    json a = one("memtouch", o.precopy_mem, p, sim::Method::kAdopt, &adopt, tty);
    json b = one("memtouch", o.precopy_mem, p, sim::Method::kPrecopy, &pre, tty);
    out["precopy_over_adopt"] = {{"adopt", a},
                                 {"precopy", b},
                                 {"ratio", adopt > 0 ? pre / adopt : 0.0},
                                 {"goal", ">= 100"},
                                 {"met", adopt > 0 && pre / adopt >= 100}};
  }
  // 3. precopy downtime grows with the dirty rate (memtouch's working set: the pages it keeps
  //    dirtying; passes keep it running through the rounds); total time with memory size.
  json rate = json::array();
  const std::pair<const char*, const char*> sets[] = {{"size=4M", "passes=4000"}, {"size=16M", "passes=1200"},
                                                      {"size=64M", "passes=300"}};
  for (const auto& [sz, passes] : sets)
    rate.push_back(one("memtouch", "256M", {sz, passes}, sim::Method::kPrecopy, nullptr, tty));
  out["precopy_vs_dirty_rate"] = rate;
  json size = json::array();
  for (const char* m : {"64M", "256M", "1G"})
    size.push_back(one("memtouch", m, {"size=16M", "passes=3000"}, sim::Method::kPrecopy, nullptr, tty));
  out["precopy_vs_memory"] = size;
  std::cout << out.dump(2) << "\n";
}

}  // namespace

void register_bench_migrate(CLI::App& bench) {
  auto o = std::make_shared<BenchMigrateOptions>();
  CLI::App* c = bench.add_subcommand(
      "migrate", "Migration figures: adopt downtime flat in memory size, precopy/adopt ratio, precopy vs dirty rate");
  c->add_option("--small", o->small, "Small memory size for the flatness figure")->capture_default_str();
  c->add_option("--large", o->large, "Large memory size for the flatness figure")->capture_default_str();
  c->add_option("--precopy-mem", o->precopy_mem, "Memory size for the precopy/adopt ratio")->capture_default_str();
  c->add_flag("--quick", o->quick, "Skip the precopy/adopt ratio run (the slowest)");
  c->callback([o] { run_bench_migrate(*o); });
}

}  // namespace baton::cli
