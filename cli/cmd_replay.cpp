// baton replay: rebuilds the guest of a baton trace (KVM or simulator), runs it in the
// simulator fed the recorded inputs, and reports the first divergence (docs/trace-format.md,
// "Replay"; docs/user-guide.md).
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "baton/guests/abi.hpp"
#include "baton/guests/ports.hpp"
#include "baton/sim/migration.hpp"
#include "baton/sim/sim_machine.hpp"
#include "baton/traces/replay.hpp"
#include "baton/traces/trace.hpp"
#include "cmd_replay.hpp"
#include "commands.hpp"
#include "migrate_setup.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

// Header parameters that are run options, not guest parameters.
const std::set<std::string> kRunParams = {"mem", "pages", "dirty", "method", "at_sync"};

// A private temporary directory, removed with everything in it when dropped.
struct TempDir {
  std::string path;
  TempDir() {
    char tmpl[] = "/tmp/baton-replay-XXXXXX";
    if (::mkdtemp(tmpl) != nullptr) path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

// The port ABI as the comparison needs it (docs/guest-abi.md §4): the tsc results 1..4 are
// time-derived; backward jumps are zero on both sides or on neither, the forward gap and the
// elapsed time are positive, and the gap never exceeds the elapsed time.
traces::ReplayAbi replay_abi() {
  traces::ReplayAbi a;
  a.result_tag = guests::kPortResultTag;
  a.result_lo = guests::kPortResultLo;
  a.result_hi = guests::kPortResultHi;
  a.input = guests::kPortInput;
  a.zero_iff_zero = {guests::kResultTscMaxBackward, guests::kResultTscBackwardCount};
  a.positive = {guests::kResultTscMaxForward, guests::kResultTscElapsed};
  a.at_most = {{guests::kResultTscMaxForward, guests::kResultTscElapsed}};
  return a;
}

// Runs the rebuilt guest in the simulator (migrating it as the recording did), writing its trace.
Result<void> run_replay_sim(const traces::Trace& rec, const SimOptions& so, const std::string& out,
                            const std::vector<std::uint32_t>& inputs) {
  auto setup = make_sim_setup(so);
  if (!setup) return setup.error();
  sim::SimConfig& cfg = setup->cfg;
  cfg.trace_path = out;
  cfg.trace_params["replay_of"] = rec.header.source;
  const std::uint64_t seed = guests::input_seed_of(setup->image);
  cfg.input_source = [inputs, seed](std::uint64_t n) {
    return n < inputs.size() ? inputs[n] : guests::input_value(seed, n);
  };
  auto it = rec.header.params.find("method");
  if (it != rec.header.params.end()) {
    MigrateOptions mo;
    if (auto s = rec.header.params.find("at_sync"); s != rec.header.params.end()) mo.at_sync = std::stoul(s->second);
    auto opt = make_migration_options(mo);
    if (!opt) return opt.error();
    auto method = sim::method_from_string(it->second);
    if (!method) return make_error("the trace's method '" + it->second + "' is not one the simulator knows");
    opt->method = *method;
    opt->reference = false;
    auto r = sim::migrate(setup->image, cfg, *opt);
    if (!r) return r.error();
    return ok_result();
  }
  auto m = sim::SimMachine::create(cfg);
  if (!m) return m.error();
  BATON_TRY_VOID((*m)->load(setup->image));
  sim::RunLimits lim;
  lim.budget = 20'000'000'000ull;
  const sim::RunEvent ev = (*m)->run(lim);
  BATON_TRY_VOID((*m)->close_trace());
  if (ev.reason != sim::StopReason::kExited && ev.reason != sim::StopReason::kTripleFault)
    return make_error(std::string("the replay stopped: ") + sim::to_string(ev.reason) + " (" + ev.detail + ")");
  return ok_result();
}

// Prints the report (text or JSON) and sets the exit code: 1 on a divergence, 0 without.
void print_report(const ReplayCmd& o, const traces::Trace& rec, const traces::ReplayReport& r,
                  const std::vector<std::string>& notes) {
  const auto& d = r.divergence;
  if (o.json_out) {
    json j;
    j["trace"] = o.trace;
    j["source"] = rec.header.source;
    j["guest"] = rec.header.guest;
    j["events"] = rec.events.size();
    j["compared"] = r.compared;
    j["inputs_checked"] = r.inputs;
    j["time_relations"] = r.time_relations;
    j["mapping"] = traces::to_string(r.mapping);
    j["mapping_checks"] = r.mapping_checks;
    j["timeline_milestones"] = r.timeline_phases;
    j["notes"] = notes;
    j["diverged"] = d.has_value();
    if (d) {
      json x;
      x["class"] = traces::to_string(d->cls);
      x["index"] = d->index ? json(*d->index) : json(nullptr);
      x["where"] = d->index ? "event" : "header";
      x["replayed_index"] = d->replayed_index ? json(*d->replayed_index) : json(nullptr);
      x["recorded"] = d->recorded;
      x["replayed"] = d->replayed;
      x["why"] = d->why;
      x["context"] = d->context;
      j["divergence"] = x;
    }
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("trace        %s (%s, guest %s, %zu events)\n", o.trace.c_str(), rec.header.source.c_str(),
                rec.header.guest.c_str(), rec.events.size());
    std::printf("compared     %zu guest-visible events, %zu inputs checked, %zu time-derived results by relation\n",
                r.compared, r.inputs, r.time_relations);
    std::printf("mapping      %s%s\n", traces::to_string(r.mapping),
                r.mapping == traces::MappingMode::kNone
                    ? " (the recording has no mapping events)"
                    : (", " + std::to_string(r.mapping_checks) + " checks (every sync point and the end)").c_str());
    std::printf("timeline     %zu migration milestones\n", r.timeline_phases);
    for (const std::string& n : notes) std::printf("note         %s\n", n.c_str());
    if (!d) {
      std::printf("result       no divergence\n");
    } else {
      std::printf("DIVERGENCE   %s at %s\n", traces::to_string(d->cls),
                  d->index ? ("event " + std::to_string(*d->index)).c_str() : "the header");
      std::printf("  recorded   %s\n", d->recorded.c_str());
      std::printf("  replayed   %s%s\n", d->replayed.c_str(),
                  d->replayed_index ? (" (replay event " + std::to_string(*d->replayed_index) + ")").c_str() : "");
      std::printf("  why        %s\n", d->why.c_str());
      if (!d->context.empty()) std::printf("  before it\n");
      for (const std::string& c : d->context) std::printf("    %s\n", c.c_str());
    }
  }
  exit_code() = d ? kExitRefuted : kExitOk;
}

// Replays a trace of a baton guest.
void replay_own(const ReplayCmd& o, const traces::Trace& rec) {
  const traces::TraceHeader& h = rec.header;
  if (h.guest.empty()) return fail("the trace names no guest; replay a foreign capture with --vm PID");
  SimOptions so;
  so.guest = h.guest;
  for (const auto& [k, v] : h.params) {
    if (k == "mem") so.mem = v;
    else if (k == "pages") so.pages = v;
    else if (!kRunParams.count(k) && k != "replay_of") so.params.push_back(k + "=" + v);
  }
  auto image = make_guest_image(so);
  if (!image) return fail("cannot rebuild the guest: " + image.error().message);
  std::vector<std::string> notes;
  const std::string hash = guests::image_hash(*image);
  auto ih = h.meta.find("image_hash");
  if (ih == h.meta.end()) {
    notes.push_back("the trace records no image hash: the guest's identity is not checked");
  } else if (ih->second != hash) {
    traces::ReplayReport r;
    r.divergence = traces::header_divergence("image_hash " + ih->second, "image_hash " + hash,
                                             "the rebuilt guest is not the recorded one (name, parameters, memory or "
                                             "page size differ, or another baton built it)");
    return print_report(o, rec, r, notes);
  }
  std::vector<std::uint32_t> inputs;
  for (const traces::TraceEvent& e : rec.events)
    if (e.type == traces::EventType::kIo && (e.flags & traces::kAccessIn) != 0 && e.code == guests::kPortInput)
      inputs.push_back(static_cast<std::uint32_t>(e.a));
  TempDir tmp;
  if (tmp.path.empty()) return fail("cannot create a temporary directory in /tmp");
  const std::string out = o.save_replay.empty() ? tmp.path + "/replay.trc" : o.save_replay;
  if (auto r = run_replay_sim(rec, so, out, inputs); !r) return fail("the replay failed: " + r.error().message);
  auto rep = traces::read_trace(out);
  if (!rep) return fail("the replay's trace: " + rep.error().message);
  traces::ReplayOptions opt;
  opt.abi = replay_abi();
  const std::uint64_t seed = guests::input_seed_of(*image);
  opt.expected_input = [seed](std::uint64_t n) -> std::optional<std::uint32_t> { return guests::input_value(seed, n); };
  const bool has_maps = std::any_of(rec.events.begin(), rec.events.end(),
                                    [](const traces::TraceEvent& e) { return e.type == traces::EventType::kEptSet; });
  opt.mapping = !has_maps ? traces::MappingMode::kNone
                : h.source == "baton-sim" ? traces::MappingMode::kEquality
                                          : traces::MappingMode::kInclusion;
  if (opt.mapping == traces::MappingMode::kInclusion)
    notes.push_back("mapping by inclusion: every 4 KiB gfn the simulator mapped by a sync point, KVM mapped by then "
                    "too; KVM may map more (huge pages, prefetch)");
  if (h.guest == "tsc" || h.guest == "mixed")
    notes.push_back("tsc results (tags 1-4) are compared by relations, not values: backward jumps zero on both sides "
                    "or neither, gap and elapsed positive, gap <= elapsed");
  print_report(o, rec, traces::compare_replay(rec, *rep, opt), notes);
}

void run_replay(const ReplayCmd& o) {
  if (o.vm) return replay_foreign(o);
  if (!o.pair.empty()) return fail("--pair applies to a foreign capture, with --vm PID");
  auto t = traces::read_trace(o.trace);
  if (!t) return fail(t.error().message);
  if (t->header.source != "baton-sim" && t->header.source != "baton-kvm")
    return fail("'" + o.trace + "' comes from '" + t->header.source +
                "', not from a baton guest: replay a foreign capture with --vm PID");
  replay_own(o, *t);
}

}  // namespace

void register_replay(CLI::App& app) {
  auto o = std::make_shared<ReplayCmd>();
  CLI::App* c = app.add_subcommand(
      "replay", "Replay a trace: a baton guest's run in the simulator with the recorded inputs, or a foreign "
                "capture's mapping events with --vm (isolation check)");
  c->add_option("trace", o->trace, "Trace file (format v1); with --vm also ftrace text (tracefs, trace-cmd report)")->required();
  c->add_option("--vm", o->vm, "Foreign capture: the VMM pid whose mapping events are replayed");
  c->add_option("--pair", o->pair, "Foreign capture: the declared migration pair SRC:DST (pids)");
  c->add_option("--save-replay", o->save_replay, "Keep the simulator's trace of the replay in this file");
  c->add_flag("--json", o->json_out, "Print JSON");
  c->callback([o] { run_replay(*o); });
}

}  // namespace baton::cli
