// baton bench kvm: the KVM migration figures of issue 11, measured on the /dev/kvm at hand,
// each against its baseline in the same run: local-lazy downtime at 64 MiB, 1 GiB and 4 GiB
// (flat in memory size), precopy against local-lazy on memtouch at 1 GiB with a dirtying
// working set, and the vCPU state capture and restore that set the floor. Every figure carries
// the host flavour; figures from a nested host test correctness, not speed.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "baton/guests/registry.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/hw/machine.hpp"
#include "baton/sim/kvm_migration.hpp"
#include "commands.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

struct BenchKvmOptions {
  unsigned reps = 5;
  std::vector<std::string> sizes = {"64M", "1G", "4G"};
  std::string precopy_mem = "1G";
  bool quick = false;
  double downtime_limit_ms = 300;  // QEMU's default downtime-limit
  unsigned max_rounds = 30;        // a forced switchover after this many rounds (libvirt's --timeout)
  bool json_out = true;  // bench always prints JSON; --json is accepted for symmetry
};

// The median of a list (0 when empty).
double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Runs one KVM migration `reps` times; the JSON carries the downtimes or the first error.
json migrations(const std::string& guest, const std::string& mem, const std::vector<std::string>& params,
                sim::Method m, const BenchKvmOptions& bo, double* median_us, bool tty) {
  const unsigned reps = bo.reps;
  SimOptions so;
  so.guest = guest;
  so.mem = mem;
  so.params = params;
  auto image = make_guest_image(so);
  if (!image) return json{{"error", image.error().message}};
  std::vector<double> down, total;
  std::map<std::string, std::vector<double>> phases;  // the downtime phases, by name
  std::uint64_t copied = 0;
  std::vector<std::size_t> rounds;
  std::vector<std::string> stops;  // why each precopy stopped
  bool checksums_ok = true;        // every run switched and finished with the expected checksum
  std::map<std::string, unsigned> vcpu = {{"proven", 0}, {"refuted", 0}, {"unknown", 0}};
  std::string refuted_why;  // the first refuted vcpu check's reason (PVM: the TSC offset)
  for (unsigned i = 0; i < reps; ++i) {
    if (tty) std::fprintf(stderr, "  .. %s %s at %s, %u/%u\n", guest.c_str(), sim::to_string(m), mem.c_str(), i + 1, reps);
    sim::KvmMigrationConfig kc;
    kc.device = hw::kvm_device();
    kc.guest_name = guest;
    sim::MigrationOptions o;
    o.method = m;
    o.max_rounds = bo.max_rounds;  // precopy: QEMU's stop condition decides (below); this only bounds it
    o.downtime_limit_ms = bo.downtime_limit_ms;
    auto r = sim::migrate_kvm(*image, kc, o);
    if (!r) return json{{"error", r.error().message}};
    checksums_ok = checksums_ok && r->switched && r->checksum_ok();
    for (const sim::CheckLine& c : r->checks) {
      if (c.name != "vcpu") continue;
      ++vcpu[checker::to_string(c.verdict)];
      if (c.verdict == checker::Verdict::kRefuted && refuted_why.empty())
        refuted_why = c.summary.substr(0, c.summary.find(" (the worker set"));
    }
    down.push_back(r->micros(r->downtime));
    for (const sim::Phase& ph : r->timeline)
      if (ph.downtime) phases[ph.name].push_back(r->micros(ph.cycles));
    total.push_back(r->micros(r->total));
    copied = r->bytes_copied;
    rounds.push_back(r->rounds.size());
    if (!r->precopy_stop.empty()) stops.push_back(r->precopy_stop);
  }
  if (median_us != nullptr) *median_us = median(down);
  json phase_medians = json::object();
  for (const auto& [name, v] : phases) phase_medians[name] = median(v);
  return json{{"guest", guest},
              {"mem", mem},
              {"params", params},
              {"method", sim::to_string(m)},
              {"reps", reps},
              {"downtime_us_median", median(down)},
              {"downtime_us_min", *std::min_element(down.begin(), down.end())},
              {"downtime_us_all", down},
              {"downtime_phases_us_median", phase_medians},
              {"total_us_median", median(total)},
              {"bytes_copied", copied},
              {"rounds", rounds},
              {"precopy_stop", stops},
              {"checksums_match", checksums_ok},
              {"vcpu_verdicts", vcpu},
              {"vcpu_refuted_reason", refuted_why.empty() ? json(nullptr) : json(refuted_why)}};
}

// Times vCPU state capture and restore on one guest stopped at its first sync point: the full
// ones, and the pause's: a capture of what changed since a baseline taken before the guest ran,
// and a restore of only that on a second vCPU that holds the baseline.
json capture_restore(unsigned reps) {
  SimOptions so;
  so.guest = "memtouch";
  so.mem = "64M";
  auto image = make_guest_image(so);
  if (!image) return json{{"error", image.error().message}};
  hw::KvmMachineOptions mo;
  mo.device = hw::kvm_device();
  auto m = hw::KvmMachine::try_create(*image, mo);
  if (!m) return json{{"error", m.error().message}};
  auto base = (*m)->capture();
  if (!base) return json{{"error", base.error().message}};
  auto run = (*m)->run(~std::uint64_t{0}, true);
  if (!run) return json{{"error", run.error().message}};
  auto m2 = hw::KvmMachine::try_create(*image, mo);  // the worker's side (its memory is not used)
  if (!m2) return json{{"error", m2.error().message}};
  std::vector<double> cap, res, cap_changes, res_changes;
  std::size_t msrs = 0;
  const auto us = [](auto a, auto b) { return std::chrono::duration<double, std::micro>(b - a).count(); };
  for (unsigned i = 0; i < std::max(reps, 20u); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    auto s = (*m)->capture();
    const auto t1 = std::chrono::steady_clock::now();
    if (!s) return json{{"error", s.error().message}};
    auto r = (*m)->restore(*s);
    const auto t2 = std::chrono::steady_clock::now();
    if (!r) return json{{"error", r.error().message}};
    auto f = (*m)->capture_changes(*base);
    const auto t3 = std::chrono::steady_clock::now();
    if (!f) return json{{"error", f.error().message}};
    if (auto b = (*m2)->restore(*base); !b) return json{{"error", b.error().message}};
    const auto t4 = std::chrono::steady_clock::now();
    auto w = (*m2)->restore_changes(*base, *f);
    const auto t5 = std::chrono::steady_clock::now();
    if (!w) return json{{"error", w.error().message}};
    cap.push_back(us(t0, t1));
    res.push_back(us(t1, t2));
    cap_changes.push_back(us(t2, t3));
    res_changes.push_back(us(t4, t5));
    msrs = s->msrs.size();
  }
  return json{{"capture_us_median", median(cap)},
              {"restore_us_median", median(res)},
              {"capture_us_min", *std::min_element(cap.begin(), cap.end())},
              {"restore_us_min", *std::min_element(res.begin(), res.end())},
              {"capture_changes_us_median", median(cap_changes)},
              {"restore_changes_us_median", median(res_changes)},
              {"msrs", msrs},
              {"reps", cap.size()}};
}

void run_bench_kvm(const BenchKvmOptions& o) {
  const std::string device = hw::kvm_device();
  if (auto why = hw::kvm_unavailable_reason(device)) return fail(*why);
  const bool tty = isatty(fileno(stderr)) != 0;
  const std::string flavour = hw::host_flavour();
  const bool nested = flavour.rfind("nested-", 0) == 0;
  json out;
  out["host_flavour"] = flavour;
  out["figures_are"] = nested ? "from a nested KVM host (QEMU TCG): they test correctness, not speed"
                              : "measured on this host's KVM";
  out["capture_restore"] = capture_restore(o.reps);
  // 1. local-lazy downtime is flat in memory size: the memfd is handed over, nothing copied.
  json flat = json::array();
  std::vector<double> medians;
  for (const std::string& mem : o.sizes) {
    double m = 0;
    flat.push_back(migrations("memtouch", mem, {"size=8M"}, sim::Method::kLazy, o, &m, tty));
    medians.push_back(m);
  }
  const double first = medians.empty() ? 0 : medians.front(), last = medians.empty() ? 0 : medians.back();
  out["lazy_flat"] = {{"runs", flat},
                      {"largest_over_smallest", first > 0 ? last / first : 0.0},
                      {"goal", "median <= 150 us at the smallest size, largest within 1.1x of it"},
                      {"met", first > 0 && first <= 150 && last / first <= 1.1}};
  // 2. precopy against local-lazy at 1 GiB on memtouch with a 256 MiB working set that keeps
  //    dirtying pages through the rounds.
  if (!o.quick) {
    // Enough passes that the guest outlives the rounds (1 GiB crosses the socket in seconds).
    const std::vector<std::string> p = {"size=256M", "passes=2000", "write_pct=100"};
    double lazy = 0, pre = 0;
    json a = migrations("memtouch", o.precopy_mem, p, sim::Method::kLazy, o, &lazy, tty);
    json b = migrations("memtouch", o.precopy_mem, p, sim::Method::kPrecopy, o, &pre, tty);
    out["precopy_over_lazy"] = {{"workload", "memtouch at " + o.precopy_mem + ": a 256 MiB working set, one write per page, "
                                             "rewritten pass after pass (2000 passes) through the rounds"},
                                {"policy", {{"stop", "QEMU's: stop-and-copy once the pages left dirty could be sent within "
                                                     "downtime_limit_ms at the bandwidth the last round measured"},
                                            {"downtime_limit_ms", o.downtime_limit_ms},
                                            {"max_rounds", o.max_rounds}}},
                                {"local_lazy", a},
                                {"precopy", b},
                                {"ratio", lazy > 0 ? pre / lazy : 0.0},
                                {"goal", ">= 50"},
                                {"met", lazy > 0 && pre / lazy >= 50}};
  }
  std::cout << out.dump(2) << "\n";
}

}  // namespace

void register_bench_kvm(CLI::App& bench) {
  auto o = std::make_shared<BenchKvmOptions>();
  CLI::App* c = bench.add_subcommand(
      "kvm", "KVM migration figures: local-lazy downtime flat in memory size, precopy/lazy, capture and restore");
  c->add_option("--reps", o->reps, "Migrations per figure (the median is reported)")->capture_default_str();
  c->add_option("--sizes", o->sizes, "Memory sizes for the local-lazy flatness figure")->capture_default_str();
  c->add_option("--precopy-mem", o->precopy_mem, "Memory size for the precopy/lazy ratio")->capture_default_str();
  c->add_flag("--quick", o->quick, "Skip the precopy/lazy ratio (the slowest)");
  c->add_option("--downtime-limit", o->downtime_limit_ms,
                "Precopy's stop condition: the dirty pages left fit in this many ms at the measured bandwidth (QEMU's downtime-limit)")
      ->capture_default_str();
  c->add_option("--max-rounds", o->max_rounds, "Precopy rounds before a forced stop-and-copy")->capture_default_str();
  c->add_flag("--json", o->json_out, "Print JSON (the default; accepted for symmetry with the other commands)");
  c->callback([o] { run_bench_kvm(*o); });
}

}  // namespace baton::cli
