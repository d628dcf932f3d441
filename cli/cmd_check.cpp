// baton check: prove or refute the handover properties (checker/), and the EPT bit-relevance study.
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>

#include "baton/checker/check.hpp"
#include "baton/checker/mutation.hpp"
#include "baton/checker/report.hpp"
#include "baton/model/snapshot_io.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

struct CheckCliOptions {
  std::vector<std::string> snapshots;  // BEFORE AFTER
  std::string spec;                    // --spec SNAPSHOT
  std::string properties;              // --properties LIST
  std::string smt2_dir, junit;
  double timeout = 60.0;
  bool json = false;
  bool monolithic = false;
  // bit-relevance
  std::string out;
  unsigned samples = 4;
  std::uint64_t seed = 1;
  unsigned maxphyaddr = 46;
};

// Returns whether stderr is a terminal (progress lines go there).
bool tty() { return isatty(fileno(stderr)) != 0; }

// Writes a text file, replacing it; returns an error naming the file.
Result<void> write_text(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::trunc);
  f << text;
  f.close();
  if (!f) return make_error("cannot write " + path);
  return ok_result();
}

// Prints a report, writes its side files and sets the exit code from its overall verdict.
void finish(const checker::Report& rep, const CheckCliOptions& o) {
  if (o.json)
    std::cout << checker::to_json(rep) << "\n";
  else
    std::cout << checker::to_text(rep);
  if (!o.junit.empty())
    if (auto r = write_text(o.junit, checker::to_junit(rep)); !r) return fail(r.error().message);
  if (!o.smt2_dir.empty()) {
    auto n = checker::write_smt2(rep, o.smt2_dir);
    if (!n) return fail(n.error().message);
    if (tty() && *n != 0) std::fprintf(stderr, "wrote %u SMT-LIB2 file(s) to %s\n", *n, o.smt2_dir.c_str());
  }
  switch (rep.overall()) {
    case checker::Verdict::kProven: exit_code() = kExitOk; break;
    case checker::Verdict::kRefuted: exit_code() = kExitRefuted; break;
    case checker::Verdict::kUnknown: exit_code() = kExitError; break;
  }
}

// Loads a snapshot file, reporting progress on a terminal.
Result<model::HandoverSnapshot> load(const std::string& path) {
  if (tty()) std::fprintf(stderr, "loading %s...\n", path.c_str());
  return model::load_snapshot(path);
}

// baton check BEFORE AFTER | baton check --spec SNAPSHOT
void run_check(const CheckCliOptions& o) {
  checker::CheckOptions co;
  co.timeout_s = o.timeout;
  co.keep_smt2 = !o.smt2_dir.empty();
  co.decompose = !o.monolithic;
  if (o.timeout <= 0) return fail("--timeout must be positive");
  if (!o.spec.empty()) {
    if (!o.snapshots.empty()) return fail("give either --spec SNAPSHOT or BEFORE AFTER, not both");
    std::vector<checker::Property> props = checker::spec_properties();
    if (!o.properties.empty()) {
      auto p = checker::parse_property_list(o.properties);
      if (!p) return fail(p.error().message);
      props = *p;
    }
    auto s = load(o.spec);
    if (!s) return fail(s.error().message);
    if (tty()) std::fprintf(stderr, "checking %zu properties...\n", props.size());
    auto rep = checker::check_spec(*s, props, co);
    if (!rep) return fail(o.spec + ": " + rep.error().message);
    return finish(*rep, o);
  }
  if (o.snapshots.size() != 2) return fail("expected BEFORE AFTER snapshots (or --spec SNAPSHOT)");
  auto before = load(o.snapshots[0]);
  if (!before) return fail(before.error().message);
  auto after = load(o.snapshots[1]);
  if (!after) return fail(after.error().message);
  std::vector<checker::Property> props = checker::default_handover_properties(*after);
  if (!o.properties.empty()) {
    auto p = checker::parse_property_list(o.properties);
    if (!p) return fail(p.error().message);
    props = *p;
  }
  if (tty()) std::fprintf(stderr, "checking %zu properties...\n", props.size());
  auto rep = checker::check_handover(*before, *after, props, co);
  if (!rep) return fail(rep.error().message);
  finish(*rep, o);
}

// baton check bit-relevance
void run_bit_relevance(const CheckCliOptions& o) {
  checker::BitRelevanceOptions bo;
  bo.samples = o.samples;
  bo.seed = o.seed;
  bo.cfg.maxphyaddr = o.maxphyaddr;
  bo.timeout_s = o.timeout;
  if (o.samples == 0) return fail("--samples must be at least 1");
  if (o.maxphyaddr < 36 || o.maxphyaddr > 52) return fail("--maxphyaddr must be within 36..52");
  if (tty())
    bo.progress = [](unsigned done, unsigned total) {
      if (done % 64 == 0 || done == total) std::fprintf(stderr, "\rflipping bits: %u/%u checks", done, total);
      if (done == total) std::fprintf(stderr, "\n");
    };
  auto t = checker::run_bit_relevance(bo);
  if (!t) return fail(t.error().message);
  const std::string md = checker::to_markdown(*t);
  if (!o.out.empty()) {
    if (auto r = write_text(o.out, md); !r) return fail(r.error().message);
    if (tty()) std::fprintf(stderr, "wrote %s\n", o.out.c_str());
  }
  if (o.json)
    std::cout << checker::to_json(*t) << "\n";
  else if (o.out.empty())
    std::cout << md;
  if (!t->concrete_agrees) fail("the concrete cross-check disagreed with the checker on some flip");
}

}  // namespace

void register_check(CLI::App& app) {
  auto o = std::make_shared<CheckCliOptions>();
  CLI::App* c = app.add_subcommand(
      "check",
      "Prove or refute a handover: tree equivalence/refinement, conformance, isolation, well-formedness, vCPU");
  c->add_option("snapshots", o->snapshots, "BEFORE AFTER handover snapshots")->expected(0, 2);
  c->add_option("--spec", o->spec, "Check one snapshot against its own spec (conformance, isolation, well-formedness)");
  c->add_option("--properties", o->properties,
                "Comma-separated: equivalence, refinement, conformance, isolation, well-formedness, vcpu, all "
                "(default: all but refinement; refinement instead of equivalence for a local-lazy handover)");
  c->add_flag("--json", o->json, "Print the report as JSON");
  c->add_option("--smt2-dir", o->smt2_dir, "Save the SMT-LIB2 query of every refuted or unknown property here");
  c->add_option("--timeout", o->timeout, "Seconds per property before the verdict is unknown")->capture_default_str();
  c->add_option("--junit", o->junit, "Write a JUnit XML report (one testcase per property)");
  c->add_flag("--monolithic", o->monolithic, "One faithful formula per property, no decomposition (small trees only)");

  CLI::App* b = c->add_subcommand(
      "bit-relevance", "Flip each of the 64 bits of sampled entries at every level; tabulate harmful vs harmless");
  b->add_option("--out", o->out, "Write the markdown table here (docs/ept-bit-relevance.md)");
  b->add_option("--samples", o->samples, "Entries sampled per kind")->capture_default_str();
  b->add_option("--seed", o->seed, "Sampling seed")->capture_default_str();
  b->add_option("--maxphyaddr", o->maxphyaddr, "MAXPHYADDR of the modelled machine")->capture_default_str();
  b->add_option("--timeout", o->timeout, "Seconds per check")->capture_default_str();
  b->add_flag("--json", o->json, "Print the table as JSON");
  b->callback([o] { run_bit_relevance(*o); });

  c->callback([o, b] {
    if (b->parsed()) return;  // the bit-relevance subcommand ran instead
    run_check(*o);
  });
}

}  // namespace baton::cli
