// baton bench checker: proof time for equivalence and for refutation at several tree sizes,
// measured in the same run as the concrete MappingSet diff (the baseline).
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <ctime>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>

#include "baton/checker/check.hpp"
#include "baton/checker/concrete.hpp"
#include "baton/checker/overlay.hpp"
#include "baton/model/ept_builder.hpp"
#include "baton/model/sample.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;
using Clock = std::chrono::steady_clock;

struct BenchCheckerOptions {
  std::string sizes = "256K,1M,4M,16M";  // leaf counts (binary suffixes: 16M = 16,777,216 leaves = 64 GiB)
  std::uint64_t seed = 1;
  double timeout = 120.0;
  bool json = true;
};

// Seconds elapsed since `t0`.
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Prints a progress line on a terminal.
void progress(const std::string& s) {
  if (show_progress()) std::fprintf(stderr, "%s\n", s.c_str());
}

// Times the Z3 path and the concrete diff on one pair of trees and returns the JSON case.
json run_case(const std::string& name, const checker::TreeRef& a, const checker::TreeRef& b, double timeout,
              std::optional<std::uint64_t> expect_page) {
  progress("  " + name + "...");
  checker::CheckOptions co;
  co.timeout_s = timeout;
  auto t0 = Clock::now();
  const std::clock_t c0 = std::clock();
  auto r = checker::check_equivalence(a, b, co);
  const double z3_total = since(t0);
  const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  json j{{"case", name}};
  if (!r) {
    j["error"] = r.error().message;
    return j;
  }
  t0 = Clock::now();
  auto c = checker::concrete_equivalence(a, b);
  const double concrete_s = since(t0);
  j["verdict"] = checker::to_string(r->verdict);
  j["seconds"] = z3_total;
  j["cpu_s"] = cpu;  // the machine is shared: CPU time shows the cost without the contention
  j["decompose_s"] = r->stats.decompose_s;
  j["z3_s"] = r->stats.z3_s;
  j["z3_queries"] = r->stats.z3_queries;
  j["regions"] = {{"identical", r->stats.identical}, {"linear", r->stats.linear}, {"irregular", r->stats.faithful}};
  j["baseline_concrete_diff_s"] = concrete_s;
  j["concrete_verdict"] = c ? (c->holds ? "proven" : "refuted") : "error: " + c.error().message;
  j["agree"] = c && (c->holds == (r->verdict == checker::Verdict::kProven));
  if (expect_page) {
    const bool ok = r->counterexample && r->counterexample->gpa &&
                    (r->counterexample->gpa->value & ~model::kPageMask) == *expect_page;
    j["flipped_gpa"] = *expect_page;
    j["counterexample_gpa"] = r->counterexample && r->counterexample->gpa ? r->counterexample->gpa->value : 0;
    j["right_gpa"] = ok;
  }
  return j;
}

// Times conformance, isolation and well-formedness of one snapshot, and their concrete checks.
json run_spec_case(const model::HandoverSnapshot& s, double timeout) {
  progress("  spec properties...");
  checker::CheckOptions co;
  co.timeout_s = timeout;
  auto t0 = Clock::now();
  const std::clock_t c0 = std::clock();
  auto rep = checker::check_spec(s, checker::spec_properties(), co);
  const double wall = since(t0);
  const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
  json j{{"case", "spec: conformance + isolation + well-formedness"}};
  if (!rep) {
    j["error"] = rep.error().message;
    return j;
  }
  const checker::TreeRef t = checker::tree_of(s, "sample");
  t0 = Clock::now();
  auto cc = checker::concrete_conformance(t, s.memslots);
  auto ci = checker::concrete_isolation(t, s.owners, s.vm_id);
  auto cw = checker::concrete_wellformed(t, s.mmio);
  const double concrete_s = since(t0);
  std::uint64_t queries = 0;
  double split = 0, z3 = 0;
  for (const auto& r : rep->results) {
    queries += r.stats.z3_queries;
    split += r.stats.decompose_s;
    z3 += r.stats.z3_s;
  }
  j["verdict"] = checker::to_string(rep->overall());
  j["seconds"] = wall;
  j["cpu_s"] = cpu;
  j["decompose_s"] = split;
  j["z3_s"] = z3;
  j["z3_queries"] = queries;
  j["baseline_concrete_diff_s"] = concrete_s;
  const bool holds = cc && ci && cw && cc->holds && ci->holds && cw->holds;
  j["concrete_verdict"] = holds ? "proven" : "refuted";
  j["agree"] = holds == (rep->overall() == checker::Verdict::kProven);
  return j;
}

// baton bench checker
void run_bench_checker(const BenchCheckerOptions& o) {
  std::vector<std::uint64_t> sizes;
  std::size_t pos = 0;
  while (pos <= o.sizes.size()) {
    const std::size_t comma = std::min(o.sizes.find(',', pos), o.sizes.size());
    const std::string item = o.sizes.substr(pos, comma - pos);
    auto n = parse_size(item);
    if (!n || *n < 512 || *n % 512 != 0)
      return fail("--sizes: '" + item + "' is not a leaf count that is a multiple of 512");
    sizes.push_back(*n);
    pos = comma + 1;
  }
  json cases = json::array();
  bool met = true, agree = true;
  for (const std::uint64_t leaves : sizes) {
    const std::uint64_t mem = leaves * model::kPageSize;
    progress("building samples for " + std::to_string(leaves) + " leaves (" + format_size(mem) + ")...");
    model::SampleOptions so;
    so.mem_bytes = mem;
    so.seed = o.seed;
    auto t0 = Clock::now();
    auto a = model::make_sample(so);
    if (!a) return fail(a.error().message);
    so.leaf_level = 2;
    auto b = model::make_sample(so);
    if (!b) return fail(b.error().message);
    so.leaf_level = 1;
    so.seed = o.seed + 1;  // other table frames, other A/D bits: a rebuilt tree
    auto c = model::make_sample(so);
    if (!c) return fail(c.error().message);
    const double build_s = since(t0);
    const checker::TreeRef ta = checker::tree_of(*a, "4K"), tb = checker::tree_of(*b, "2M"),
                           tc = checker::tree_of(*c, "4K-rebuilt");

    // One flipped bit in a random RAM leaf: a frame-number bit, then a permission bit.
    std::mt19937_64 rng(o.seed * 7919 + leaves);
    const model::Memslot& slot = a->memslots[0];
    auto leaf_of = [&](std::uint64_t gpa) {
      model::FrameStore& m = a->tables;
      model::EptBuilder bld(
          m, [] { return model::Hfn{0}; }, a->eptp.root(), a->ept_config);
      return bld.entry_addr(model::Gpa{gpa}, 1);
    };
    const std::uint64_t g1 = slot.gpa.value + (rng() % (slot.size / model::kPageSize)) * model::kPageSize;
    const std::uint64_t g2 = slot.gpa.value + (rng() % (slot.size / model::kPageSize)) * model::kPageSize;
    auto e1 = leaf_of(g1), e2 = leaf_of(g2);
    if (!e1 || !e2) return fail("sample leaf not found: " + (e1 ? e2.error().message : e1.error().message));
    checker::OverlayMemory frame_flip(a->tables), perm_flip(a->tables);
    frame_flip.flip_bit(*e1, 12 + static_cast<unsigned>(rng() % (a->ept_config.maxphyaddr - 12)));
    perm_flip.flip_bit(*e2, static_cast<unsigned>(rng() % 3));
    const checker::TreeRef tf{"frame-bit-flipped", a->eptp, &frame_flip, a->ept_config};
    const checker::TreeRef tp{"perm-bit-flipped", a->eptp, &perm_flip, a->ept_config};

    const double target = leaves <= (std::uint64_t{1} << 20) ? 5.0 : 60.0;
    for (json j : {run_case("equivalence 4K vs 2M", ta, tb, o.timeout, std::nullopt),
                   run_case("equivalence 4K vs 4K rebuilt", ta, tc, o.timeout, std::nullopt),
                   run_case("refutation frame-number bit", ta, tf, o.timeout, g1),
                   run_case("refutation permission bit", ta, tp, o.timeout, g2), run_spec_case(*a, o.timeout)}) {
      j["leaves"] = leaves;
      j["mem_bytes"] = mem;
      j["sample_build_s"] = build_s;
      j["target_s"] = target;
      const bool expect_proven = j["case"].get<std::string>().rfind("refutation", 0) != 0;
      const bool right = j.contains("verdict") && j["verdict"] == (expect_proven ? "proven" : "refuted") &&
                         (!j.contains("right_gpa") || j["right_gpa"].get<bool>());
      j["met"] = right && j["seconds"].get<double>() <= target;
      met = met && j["met"].get<bool>();
      agree = agree && j.value("agree", false);
      cases.push_back(j);
    }
  }
  json out{{"bench", "checker"}, {"machine_cores", sysconf(_SC_NPROCESSORS_ONLN)},
           {"cases", cases},     {"targets", {{"leaves_1M_s", 5.0}, {"leaves_16M_s", 60.0}}},
           {"met", met},         {"concrete_agrees", agree}};
  std::cout << out.dump(2) << "\n";
  if (!agree) fail("the checker and the concrete diff disagree");
}

}  // namespace

void register_bench_checker(CLI::App& bench) {
  auto o = std::make_shared<BenchCheckerOptions>();
  CLI::App* c =
      bench.add_subcommand("checker", "Equivalence proof and refutation time vs the concrete diff, by tree size");
  c->add_option("--sizes", o->sizes, "Comma-separated leaf counts (16M = 16.7M leaves = 64 GiB)")
      ->capture_default_str();
  c->add_option("--seed", o->seed, "Sample and mutation seed")->capture_default_str();
  c->add_option("--timeout", o->timeout, "Seconds per proof")->capture_default_str();
  c->add_flag("--json,!--no-json", o->json, "Print JSON (the only output format; accepted for uniformity)");
  c->callback([o] { run_bench_checker(*o); });
}

}  // namespace baton::cli
