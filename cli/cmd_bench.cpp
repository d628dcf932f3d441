// baton bench: measured figures, printed as JSON, each against a baseline from the same run.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <unistd.h>

#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/sample.hpp"
#include "cmd_calibrate.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Seconds elapsed since `t0`.
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Returns the median of a small sample.
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Normalises by brute force: one walk per 4 KiB page of every memslot. The baseline that
// MappingSet::from_tree is compared with.
model::MappingSet brute_force_normalize(const model::HandoverSnapshot& s) {
  model::MappingSet out;
  for (const model::Memslot& slot : s.memslots) {
    for (std::uint64_t off = 0; off < slot.size; off += model::kPageSize) {
      const model::Gpa g = slot.gpa + off;
      const model::WalkResult w = model::walk(s.eptp, g, model::Access::kRead, s.tables, s.ept_config);
      if (w.translated())
        out.append(model::MappingRun{g, model::kPageSize, model::RunKind::kMapped, w.hpa, w.perms,
                                     static_cast<std::uint8_t>(w.memtype), w.ipat});
    }
  }
  return out;
}

// Receives walk results so that the timed loops cannot be optimised away.
volatile std::uint64_t g_walk_sink = 0;

// Times `n` walks of random GPAs inside the snapshot's memslots; returns ns per walk.
double time_random_walks(const model::HandoverSnapshot& s, std::uint64_t n) {
  std::mt19937_64 rng(7);
  std::vector<model::Gpa> gpas(n);
  for (auto& g : gpas) {
    const model::Memslot& slot = s.memslots[rng() % s.memslots.size()];
    g = slot.gpa + (rng() % slot.size);
  }
  std::uint64_t sink = 0;
  const auto t0 = Clock::now();
  for (const model::Gpa g : gpas) sink += model::walk(s.eptp, g, model::Access::kRead, s.tables, s.ept_config).hpa.value;
  const double ns = since(t0) * 1e9 / static_cast<double>(std::max<std::uint64_t>(1, n));
  g_walk_sink = sink;  // the walks' results must be used
  return ns;
}

struct BenchModelOptions {
  std::string mem = "64G";
  unsigned repeats = 3;
  std::uint64_t walks = 2'000'000;
};

// baton bench model
void run_bench_model(const BenchModelOptions& o) {
  auto mem = parse_size(o.mem);
  if (!mem) return fail("--mem '" + o.mem + "' is not a size");
  const bool tty = show_progress();
  if (tty) std::fprintf(stderr, "building a %s sample with 4 KiB leaves...\n", format_size(*mem).c_str());
  model::SampleOptions so;
  so.mem_bytes = *mem;
  so.rom = false;
  so.mmio = false;
  auto t0 = Clock::now();
  auto s = model::make_sample(so);
  if (!s) return fail(s.error().message);
  const double build_s = since(t0);

  std::vector<double> norm;
  model::TreeStats st;
  std::size_t runs = 0;
  for (unsigned i = 0; i < std::max(1u, o.repeats); ++i) {
    if (tty) std::fprintf(stderr, "normalising (%u/%u)...\n", i + 1, o.repeats);
    st = model::TreeStats{};
    t0 = Clock::now();
    auto ms = model::MappingSet::from_tree(s->eptp, s->tables, s->ept_config, &st);
    norm.push_back(since(t0));
    if (!ms) return fail(ms.error().message);
    runs = ms->runs().size();
  }
  if (tty) std::fprintf(stderr, "brute-force baseline (one walk per page)...\n");
  t0 = Clock::now();
  const model::MappingSet brute = brute_force_normalize(*s);
  const double brute_s = since(t0);
  auto ms = model::MappingSet::from_tree(s->eptp, s->tables, s->ept_config);
  const bool agree = ms && *ms == brute;

  // Random walks over all of RAM of the big tree (DRAM-bound once tables exceed the caches),
  // and over a small tree whose tables stay in cache (the walker's own cost).
  const double walk_ns = time_random_walks(*s, o.walks);
  so.mem_bytes = std::uint64_t{256} << 20;
  auto small = model::make_sample(so);
  if (!small) return fail(small.error().message);
  const double walk_cached_ns = time_random_walks(*small, o.walks);
  std::uint64_t leaves = st.leaves[1] + st.leaves[2] + st.leaves[3];
  const double brute_walk_ns = brute_s * 1e9 / static_cast<double>(std::max<std::uint64_t>(1, leaves));
  const bool met = median(norm) <= 2.0 && walk_cached_ns <= 50.0 && agree;

  json j{{"bench", "model"},
         {"mem_bytes", *mem},
         {"leaves", leaves},
         {"tables", st.tables},
         {"sample_build_s", build_s},
         {"normalize_s_median", median(norm)},
         {"normalize_s_all", norm},
         {"normalize_runs", runs},
         {"baseline_brute_force_normalize_s", brute_s},
         {"speedup_vs_brute_force", brute_s / std::max(1e-9, median(norm))},
         {"normalize_agrees_with_brute_force", agree},
         {"walk_ns_random_256M_tree", walk_cached_ns},
         {"walk_ns_random_full_tree", walk_ns},
         {"walk_ns_sequential_full_tree", brute_walk_ns},
         {"targets", {{"normalize_s_max", 2.0}, {"walk_ns_random_256M_tree_max", 50.0}}},
         {"met", met}};
  std::cout << j.dump(2) << "\n";
  if (!agree) fail("normal form disagrees with the brute-force baseline");
}
}  // namespace

void register_bench(CLI::App& app) {
  CLI::App* bench = app.add_subcommand("bench", "Measure baton's figures (JSON), each against a same-run baseline");
  bench->require_subcommand(1);

  auto mo = std::make_shared<BenchModelOptions>();
  CLI::App* m = bench->add_subcommand("model", "Tree normalisation and walk speed on a large 4 KiB-leaf tree");
  m->add_option("--mem", mo->mem, "Guest RAM covered by the tree (64G = 16.7M leaves)")->capture_default_str();
  m->add_option("--repeats", mo->repeats, "Normalisation repetitions")->capture_default_str();
  m->add_option("--walks", mo->walks, "Random walks to time")->capture_default_str();
  m->callback([mo] { run_bench_model(*mo); });

  register_bench_checker(*bench);
  register_bench_sim(*bench);
  register_bench_migrate(*bench);
  register_bench_kvm(*bench);
  register_bench_trace(*bench);
  register_bench_fidelity(*bench);
  register_bench_campaign(*bench);
  // The benches without a table print JSON only; --json is accepted by every one of them.
  for (CLI::App* sc : bench->get_subcommands([](CLI::App*) { return true; }))
    if (sc->get_option_no_throw("--json") == nullptr)
      sc->add_flag("--json")->description("Print JSON (the only output format)");
}

}  // namespace baton::cli
