// baton check: prove or refute the handover properties (checker/), and the EPT bit-relevance study.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <tuple>

#include "baton/checker/check.hpp"
#include "baton/checker/mutation.hpp"
#include "baton/checker/no_copy.hpp"
#include "baton/checker/report.hpp"
#include "baton/model/file_io.hpp"
#include "baton/model/snapshot_io.hpp"
#include "baton/traces/ftrace.hpp"
#include "baton/traces/trace.hpp"
#include "commands.hpp"
#include "parse.hpp"

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
  bool force = false;  // replace existing --junit, --smt2-dir files and --out
  // bit-relevance
  std::string out;
  unsigned samples = 4;
  std::uint64_t seed = 1;
  unsigned maxphyaddr = 46;
  // --no-copy TRACE --source VM --dest VM [--source-at N] [--dest-at N]
  std::string no_copy, source, dest, source_at, dest_at;
};

// Returns whether stderr is a terminal (progress lines go there).
bool tty() { return show_progress(); }

// Checks the output paths of a check before any work: --junit, --smt2-dir, --out.
Result<void> check_outputs(const CheckCliOptions& o) {
  if (!o.junit.empty()) BATON_TRY_VOID(model::check_output_path(o.junit, o.force, "--junit"));
  if (!o.smt2_dir.empty()) BATON_TRY_VOID(model::check_output_dir(o.smt2_dir, "--smt2-dir"));
  if (!o.out.empty()) BATON_TRY_VOID(model::check_output_path(o.out, o.force, "--out"));
  return ok_result();
}

// Prints a report, writes its side files and sets the exit code from its overall verdict.
void finish(const checker::Report& rep, const CheckCliOptions& o) {
  if (o.json)
    std::cout << checker::to_json(rep) << "\n";
  else
    std::cout << checker::to_text(rep);
  if (!o.junit.empty())
    if (auto r = model::write_text(o.junit, checker::to_junit(rep), o.force); !r) return fail(r.error().message);
  if (!o.smt2_dir.empty()) {
    auto n = checker::write_smt2(rep, o.smt2_dir, o.force);
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

// Parses a VM id or an event index given to `flag`; nullopt (after failing) when malformed.
std::optional<std::uint64_t> parse_id(const std::string& text, const char* flag, std::uint64_t max) {
  auto v = parse_u64(text);
  if (!v || *v > max) {
    fail(std::string(flag) + " '" + text + "' is not a number within 0.." + std::to_string(max));
    return std::nullopt;
  }
  return v;
}

// One side of a no-copy check: a VM's reconstructed map and its normal form.
struct NoCopySide {
  std::uint32_t vm = 0;
  std::size_t at = 0;
  std::map<std::uint64_t, traces::Mapping> leaves;
  model::MappingSet set;
};

// Describes the leaf of `side` that maps `gfn`.
std::string leaf_text(const NoCopySide& side, std::uint64_t gfn) {
  auto it = side.leaves.upper_bound(gfn);
  if (it == side.leaves.begin()) return "";
  --it;
  const char* size = it->second.level == 3 ? "1G" : it->second.level == 2 ? "2M" : "4K";
  return std::string(size) + " leaf at gfn " + hex(it->first) + ", installed by event " +
         std::to_string(it->second.event);
}

// What an ftrace import left out of a trace, from the counts it recorded in the header.
struct ImportLoss {
  std::uint64_t malformed_lines = 0, unknown_lines = 0, unknown_levels = 0, lost_events = 0;
  // The sum of all counts.
  std::uint64_t total() const { return malformed_lines + unknown_lines + unknown_levels + lost_events; }
  // Lists the non-zero counts: "2 malformed lines, 1 lost event".
  std::string text() const {
    std::string out;
    const std::tuple<std::uint64_t, const char*, const char*> parts[] = {
        {malformed_lines, "malformed line", "malformed lines"},
        {unknown_lines, "unknown line", "unknown lines"},
        {unknown_levels, "leaf event of an unknown level", "leaf events of unknown levels"},
        {lost_events, "lost event", "lost events"}};
    for (const auto& [n, one, many] : parts)
      if (n != 0) out += (out.empty() ? "" : ", ") + std::to_string(n) + " " + (n == 1 ? one : many);
    return out;
  }
};

// Reads the import counts from a trace header (0 when absent, as in simulator traces).
ImportLoss import_loss(const traces::Trace& t) {
  auto get = [&](const char* key) -> std::uint64_t {
    auto it = t.header.meta.find(key);
    if (it == t.header.meta.end()) return 0;
    return parse_u64(it->second).value_or(1);  // an unreadable count still counts as a loss
  };
  return ImportLoss{get("malformed_lines"), get("unknown_lines"), get("unknown_levels"), get("lost_events")};
}

// baton check --no-copy TRACE --source VM --dest VM
void run_no_copy(const CheckCliOptions& o) {
  if (!o.snapshots.empty() || !o.spec.empty() || !o.properties.empty() || !o.junit.empty() || !o.smt2_dir.empty())
    return fail("--no-copy takes a trace and --source/--dest VMs, not snapshots, --spec, --properties, --junit or "
                "--smt2-dir");
  if (o.source.empty() || o.dest.empty()) return fail("--no-copy needs --source VM and --dest VM (see `baton trace mappings`)");
  if (o.timeout <= 0) return fail("--timeout must be positive");
  auto src_id = parse_id(o.source, "--source", 0xffffffffu);
  if (!src_id) return;
  auto dst_id = parse_id(o.dest, "--dest", 0xffffffffu);
  if (!dst_id) return;
  if (*src_id == *dst_id) return fail("--source and --dest both name VM " + o.source + "; give two different VMs");
  auto t = traces::read_trace(o.no_copy);
  if (!t) return fail(t.error().message);
  const std::vector<std::uint32_t> present = traces::trace_vms(*t);
  std::string present_text;
  for (std::uint32_t v : present) present_text += (present_text.empty() ? "" : ", ") + std::to_string(v);
  NoCopySide sides[2];
  const std::string* at_text[2] = {&o.source_at, &o.dest_at};
  const char* at_flag[2] = {"--source-at", "--dest-at"};
  const std::uint64_t ids[2] = {*src_id, *dst_id};
  for (int k = 0; k < 2; ++k) {
    NoCopySide& sd = sides[k];
    sd.vm = static_cast<std::uint32_t>(ids[k]);
    if (std::find(present.begin(), present.end(), sd.vm) == present.end())
      return fail(o.no_copy + ": no VM " + std::to_string(sd.vm) + " in the trace (VMs present: " +
                  (present_text.empty() ? "none" : present_text) + ")");
    std::optional<std::size_t> at;
    if (!at_text[k]->empty()) {
      auto v = parse_id(*at_text[k], at_flag[k], t->events.size());
      if (!v) return;
      at = static_cast<std::size_t>(*v);
    }
    sd.at = at.value_or(t->events.size());
    auto m = traces::mappings(*t, sd.vm, at);
    if (!m) return fail(o.no_copy + ": " + m.error().message);
    sd.leaves = std::move(*m);
    auto set = traces::to_mapping_set(sd.leaves);
    if (!set) return fail(o.no_copy + ": VM " + std::to_string(sd.vm) + ": " + set.error().message);
    sd.set = std::move(*set);
  }
  checker::NoCopyOptions no;
  no.timeout_s = o.timeout;
  no.decompose = !o.monolithic;
  auto r = checker::check_no_copy(sides[0].set, sides[1].set, no);
  if (!r) return fail(r.error().message);
  // What the import left out: a proof over a trace that lost lines is no proof.
  const ImportLoss loss = import_loss(*t);
  if (loss.total() != 0 && r->verdict == checker::Verdict::kProven) {
    r->verdict = checker::Verdict::kUnknown;
    r->unknown_reason = "the trace import skipped " + loss.text() +
                        "; the events read agree, but a proof over an "
                        "incomplete trace is no proof";
    r->summary = "inconclusive: " + r->unknown_reason;
  }
  const char* verdict = checker::to_string(r->verdict);
  if (o.json) {
    nlohmann::json j{
        {"trace", o.no_copy},
        {"property", "no-copy"},
        {"verdict", verdict},
        {"seconds", r->seconds},
        {"summary", r->summary},
        {"source",
         {{"vm", sides[0].vm}, {"at", sides[0].at}, {"leaves", sides[0].leaves.size()}, {"frames", r->source_frames}}},
        {"dest",
         {{"vm", sides[1].vm}, {"at", sides[1].at}, {"leaves", sides[1].leaves.size()}, {"frames", r->dest_frames}}},
        {"shared_frames", r->shared_frames},
        {"segments", r->segments},
        {"z3_queries", r->z3_queries},
        {"import_skipped",
         {{"malformed_lines", loss.malformed_lines},
          {"unknown_lines", loss.unknown_lines},
          {"unknown_levels", loss.unknown_levels},
          {"lost_events", loss.lost_events}}},
        {"counterexample", nullptr}};
    if (r->counterexample) {
      const auto& cx = *r->counterexample;
      j["counterexample"] = {{"gfn", hex(cx.gfn)},
                             {"source_pfn", hex(cx.source_pfn)},
                             {"dest_pfn", hex(cx.dest_pfn)},
                             {"source_leaf", leaf_text(sides[0], cx.gfn)},
                             {"dest_leaf", leaf_text(sides[1], cx.gfn)},
                             {"confirmed_concretely", cx.confirmed_concretely}};
    }
    if (!r->unknown_reason.empty()) j["unknown_reason"] = r->unknown_reason;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("%-9s %-8s %-9s %s\n", "property", "verdict", "time", "detail");
    std::printf("%-9s %-8s %-9s %s\n", "no-copy", verdict, (std::to_string(r->seconds).substr(0, 5) + "s").c_str(),
                r->summary.c_str());
    for (int k = 0; k < 2; ++k)
      std::printf("  %-6s VM %u: %zu leaves, %llu gfns mapped (after %zu of %zu events)\n", k == 0 ? "source" : "dest",
                  sides[k].vm, sides[k].leaves.size(),
                  static_cast<unsigned long long>(k == 0 ? r->source_frames : r->dest_frames), sides[k].at,
                  t->events.size());
    std::printf("  shared %llu gfns in %llu segment(s), %llu Z3 quer%s\n",
                static_cast<unsigned long long>(r->shared_frames), static_cast<unsigned long long>(r->segments),
                static_cast<unsigned long long>(r->z3_queries), r->z3_queries == 1 ? "y" : "ies");
    if (loss.total() != 0) std::printf("  import skipped %s (see `baton trace import`)\n", loss.text().c_str());
    if (r->counterexample) {
      const auto& cx = *r->counterexample;
      std::printf("\nno-copy refuted at gfn %s (gpa %s):\n", hex(cx.gfn).c_str(), hex(cx.gfn << 12).c_str());
      std::printf("  source VM %u: pfn %s (%s)\n", sides[0].vm, hex(cx.source_pfn).c_str(),
                  leaf_text(sides[0], cx.gfn).c_str());
      std::printf("  dest   VM %u: pfn %s (%s)\n", sides[1].vm, hex(cx.dest_pfn).c_str(),
                  leaf_text(sides[1], cx.gfn).c_str());
    }
  }
  switch (r->verdict) {
    case checker::Verdict::kProven: exit_code() = kExitOk; break;
    case checker::Verdict::kRefuted: exit_code() = kExitRefuted; break;
    case checker::Verdict::kUnknown: exit_code() = kExitError; break;
  }
}

// baton check BEFORE AFTER | baton check --spec SNAPSHOT
void run_check(const CheckCliOptions& o) {
  if (auto r = check_outputs(o); !r) return fail(r.error().message);
  if (!o.no_copy.empty()) return run_no_copy(o);
  if (!o.source.empty() || !o.dest.empty() || !o.source_at.empty() || !o.dest_at.empty())
    return fail("--source, --dest, --source-at and --dest-at go with --no-copy TRACE");
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
  if (auto r = check_outputs(o); !r) return fail(r.error().message);
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
    if (auto r = model::write_text(o.out, md, o.force); !r) return fail(r.error().message);
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
  c->add_flag("--force", o->force, "Replace an existing --junit file or --smt2-dir files");
  c->add_flag("--monolithic", o->monolithic, "One faithful formula per property, no decomposition (small trees only)");
  c->add_option("--no-copy", o->no_copy,
                "Prove from a trace (format v1) that every gfn mapped by both --source and --dest maps to the same "
                "host pfn (no memory copied); refute with a gfn and both pfns");
  c->add_option("--source", o->source, "--no-copy: the source VM id (for ftrace imports, the VMM's pid)");
  c->add_option("--dest", o->dest, "--no-copy: the destination VM id");
  c->add_option("--source-at", o->source_at,
                "--no-copy: take the source map before this event index (as `trace mappings --at`; default: end)");
  c->add_option("--dest-at", o->dest_at,
                "--no-copy: take the destination map before this event index (as `trace mappings --at`; default: end)");

  CLI::App* b = c->add_subcommand(
      "bit-relevance", "Flip each of the 64 bits of sampled entries at every level; tabulate harmful vs harmless");
  b->add_option("--out", o->out, "Write the markdown table here (docs/ept-bit-relevance.md)");
  b->add_flag("--force", o->force, "Replace an existing --out file");
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
