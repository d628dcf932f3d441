// Rendering of migration results.
#include "migrate_render.hpp"

#include <cstdio>

#include "baton/checker/report.hpp"
#include "parse.hpp"

namespace baton::cli {

using nlohmann::json;

namespace {

// printf into a std::string.
template <typename... A>
std::string fmt(const char* f, A... a) {
  char buf[512];
  std::snprintf(buf, sizeof buf, f, a...);
  return buf;
}

}  // namespace

std::string migration_outcome(const sim::MigrationResult& r) {
  if (r.rejected) return "rejected";
  if (!r.switched) return "failed";
  if (r.final_event.reason != sim::StopReason::kExited) return sim::to_string(r.final_event.reason);
  if (r.expected && !r.checksum_ok()) return "MISMATCH";
  if (r.verdict != checker::Verdict::kProven) return std::string("switched-") + checker::to_string(r.verdict);
  return r.fell_back ? "fell-back" : "ok";
}

json migration_json(const sim::MigrationResult& r) {
  json j;
  const bool timed = r.time_base == sim::TimeBase::kMeasuredNs;
  j["backend"] = r.backend;
  j["host_flavour"] = r.host_flavour;
  j["time_base"] = timed ? "measured-ns" : "simulated-cycles";
  if (r.backend == "kvm") {
    j["source_pid"] = r.source_pid;
    j["worker_pid"] = r.worker_pid;
    j["worker_exit"] = r.worker_exit.empty() ? json(nullptr) : json(r.worker_exit);
    j["capture"] = r.capture_path.empty() ? json(nullptr) : json(r.capture_path);
    j["capture_set_spte_events"] = r.capture_mapping_events;
  }
  j["method"] = sim::to_string(r.method);
  j["effective_method"] = sim::to_string(r.effective);
  j["outcome"] = migration_outcome(r);
  j["fault"] = r.fault.empty() ? json(nullptr) : json(r.fault);
  j["at_stage"] = r.at_stage;
  j["at_instruction"] = r.at_insn;
  j["switched"] = r.switched;
  j["rejected"] = r.rejected;
  j["fell_back"] = r.fell_back;
  if (!r.reject_reason.empty()) j["reject_reason"] = r.reject_reason;
  j["frequency_ghz"] = r.frequency_ghz;
  json tl = json::array();
  for (const sim::Phase& p : r.timeline)
    tl.push_back({{"phase", p.name}, {"start_cycles", p.start}, {"cycles", p.cycles}, {"us", r.micros(p.cycles)},
                  {"downtime", p.downtime}});
  j["timeline"] = tl;
  j["downtime_cycles"] = r.downtime;
  j["downtime_us"] = r.micros(r.downtime);
  j["total_cycles"] = r.total;
  j["total_us"] = r.micros(r.total);
  j["bytes_copied"] = r.bytes_copied;
  j["pages_copied"] = r.pages_copied;
  json rounds = json::array();
  for (const sim::CopyRound& c : r.rounds)
    rounds.push_back({{"pages", c.pages}, {"sent", c.sent}, {"cycles", c.cycles}, {"dirtied", c.dirtied},
                      {"guest_instructions", c.guest_insns}});
  j["rounds"] = rounds;
  if (!r.precopy_stop.empty()) j["precopy_stop"] = r.precopy_stop;
  j["refaults"] = r.refaults;
  const bool measured = slowdown_measured(r);
  j["slowdown"] = {{"measured", measured},
                   {"window_instructions", r.window},
                   {"cycles", r.window_cycles},
                   {"reference_cycles", r.reference_window_cycles},
                   {"extra_cycles", measured ? json(r.slowdown()) : json(nullptr)}};
  j["frames_freed"] = r.frames_freed;
  j["frames_handed_over"] = r.frames_handed_over;
  json checks = json::array();
  for (const sim::CheckLine& c : r.checks) {
    json cj{{"check", c.name}, {"verdict", checker::to_string(c.verdict)}, {"summary", c.summary}, {"seconds", c.seconds}};
    if (c.counterexample) cj["counterexample"] = json::parse(checker::to_json(*c.counterexample));
    checks.push_back(cj);
  }
  j["checks"] = checks;
  j["verdict"] = checker::to_string(r.verdict);
  j["final"] = {{"outcome", sim::to_string(r.final_event.reason)}, {"detail", r.final_event.detail}};
  j["console"] = r.console;
  j["checksum"] = r.checksum ? json(hex(*r.checksum)) : json(nullptr);
  j["expected_checksum"] = r.expected ? json(hex(*r.expected)) : json(nullptr);
  j["checksum_matches"] = r.checksum_ok();
  j["finished_before_switch"] = r.finished_before_switch;
  if (r.neighbour) {
    const sim::Neighbour& n = *r.neighbour;
    j["neighbour"] = {{"guest", n.guest},
                      {"tree_verdict", checker::to_string(n.verdict)},
                      {"checksum", n.checksum ? json(hex(*n.checksum)) : json(nullptr)},
                      {"expected_checksum", n.expected ? json(hex(*n.expected)) : json(nullptr)},
                      {"extra_cycles_bound", n.extra_cycles}};
  }
  j["wall_s"] = r.wall_s;
  return j;
}

bool slowdown_measured(const sim::MigrationResult& r) {
  return r.switched && !r.finished_before_switch && r.window > 0 && r.reference_window_cycles > 0;
}

std::string migration_text(const sim::MigrationResult& r) {
  std::string o;
  o += fmt("method       %s", sim::to_string(r.method));
  if (r.effective != r.method) o += fmt(" (fell back to %s)", sim::to_string(r.effective));
  if (r.backend == "kvm") o += fmt(" at sync point %u\n", r.at_stage);  // KVM counts no instructions
  else o += fmt(" at sync point %u, instruction %llu\n", r.at_stage, static_cast<unsigned long long>(r.at_insn));
  if (!r.fault.empty()) o += "fault        " + r.fault + "\n";
  const bool timed = r.time_base == sim::TimeBase::kMeasuredNs;
  const char* unit = timed ? "ns" : "cycles";
  if (timed) o += "timeline     (measured, CLOCK_MONOTONIC ns; * = vCPU paused)\n";
  else o += fmt("timeline     (cycles; us at %.2f GHz; * = vCPU paused)\n", r.frequency_ghz);
  for (const sim::Phase& p : r.timeline)
    o += fmt("  %c %-28s %14.0f %12.2f us\n", p.downtime ? '*' : ' ', p.name.c_str(), p.cycles, r.micros(p.cycles));
  o += fmt("downtime     %.2f us (%.0f %s)%s\n", r.micros(r.downtime), r.downtime, unit,
           timed ? ": the source vCPU's last KVM_RUN return to the worker's first KVM_RUN" : "");
  o += fmt("total        %.2f us (%.0f %s)\n", r.micros(r.total), r.total, unit);
  o += fmt("copied       %s (%llu pages) in %zu rounds\n", format_size(r.bytes_copied).c_str(),
           static_cast<unsigned long long>(r.pages_copied), r.rounds.size());
  if (!r.precopy_stop.empty()) o += "stop         " + r.precopy_stop + "\n";
  if (r.worker_exit == "killed") o += "worker       did not exit after its run; killed after the timeout\n";
  if (r.switched && !timed) {
    o += fmt("refaults     %llu EPT violations on the new instance\n", static_cast<unsigned long long>(r.refaults));
    if (slowdown_measured(r))
      o += fmt("slowdown     %+.0f cycles over the next %llu instructions (%.0f vs %.0f unmigrated, %+.2f%%)\n",
               r.slowdown(), static_cast<unsigned long long>(r.window), r.window_cycles, r.reference_window_cycles,
               r.reference_window_cycles > 0 ? 100.0 * r.slowdown() / r.reference_window_cycles : 0.0);
    o += fmt("old instance freed %llu frames, handed over %llu table frames\n",
             static_cast<unsigned long long>(r.frames_freed), static_cast<unsigned long long>(r.frames_handed_over));
  }
  o += "checks\n";
  for (const sim::CheckLine& c : r.checks)
    o += fmt("  %-30s %-8s %7.3fs  ", c.name.c_str(), checker::to_string(c.verdict), c.seconds) + c.summary + "\n";
  for (const sim::CheckLine& c : r.checks)
    if (c.counterexample) o += "\n" + c.name + " refuted: " + checker::to_text(*c.counterexample);
  if (r.rejected) o += "handover     REJECTED (" + r.reject_reason + "): the old instance kept the VM\n";
  else if (r.switched) o += std::string("handover     ") + (r.fell_back ? "fell back to local-rebuild: " : "") +
                            "the VM runs on the new instance" +
                            (timed ? " (the worker resumed at once; the checks report on it afterwards)" : "") +
                            "\n";
  if (!r.capture_path.empty())
    o += fmt("capture      %s (%llu kvm_mmu_set_spte events of both VMMs)\n", r.capture_path.c_str(),
             static_cast<unsigned long long>(r.capture_mapping_events));
  o += fmt("final        %s (%s)\n", sim::to_string(r.final_event.reason), r.final_event.detail.c_str());
  if (!r.console.empty()) o += "console      " + r.console + (r.console.back() == '\n' ? "" : "\n");
  o += fmt("checksum     %s (expected %s: %s)\n", r.checksum ? hex(*r.checksum).c_str() : "-",
           r.expected ? hex(*r.expected).c_str() : "-", r.checksum_ok() ? "match" : "MISMATCH");
  if (r.neighbour) {
    const sim::Neighbour& n = *r.neighbour;
    o += fmt("neighbour    %s: EPT %s across the migration, checksum %s (%s), memory traffic bound %.0f cycles\n",
             n.guest.c_str(), n.tree_unchanged ? "proven unchanged" : checker::to_string(n.verdict),
             n.checksum ? hex(*n.checksum).c_str() : "-",
             n.checksum && n.expected && *n.checksum == *n.expected ? "match" : "MISMATCH", n.extra_cycles);
  }
  o += fmt("outcome      %s\nwall         %.2f s\n", migration_outcome(r).c_str(), r.wall_s);
  return o;
}

}  // namespace baton::cli
