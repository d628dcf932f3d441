// baton replay TRACE --vm PID [--pair SRC:DST]: the isolation replay of a foreign capture (any
// VMM's KVM tracepoints, as tracefs text, `trace-cmd report` or an imported trace): every
// VM's mapping events in order, no host frame shared with another VM except the declared pair,
// no-copy for the pair at the handover (docs/trace-format.md, "Isolation replay").
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/traces/ftrace.hpp"
#include "baton/traces/isolation.hpp"
#include "cmd_replay.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

std::string hexs(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// What the import left out, as issue 12's accounting gives it.
struct Accounting {
  std::uint64_t lines = 0, malformed = 0, unknown = 0, unknown_levels = 0, lost = 0;
  std::vector<std::string> samples;
  bool known = false;  // the counts come from an import (text now, or an imported trace's header)
  std::uint64_t loss() const { return malformed + unknown + unknown_levels + lost; }
};

// Reads the counts an imported trace recorded in its header.
Accounting from_meta(const traces::Trace& t) {
  Accounting a;
  auto get = [&](const char* k) -> std::uint64_t {
    auto it = t.header.meta.find(k);
    if (it == t.header.meta.end()) return 0;
    a.known = true;
    return parse_u64(it->second).value_or(1);  // an unreadable count still counts as a loss
  };
  a.lines = get("lines");
  a.malformed = get("malformed_lines");
  a.unknown = get("unknown_lines");
  a.unknown_levels = get("unknown_levels");
  a.lost = get("lost_events");
  return a;
}

// Parses "SRC:DST" into two VM ids.
std::optional<std::pair<std::uint32_t, std::uint32_t>> parse_pair(const std::string& s) {
  const auto colon = s.find(':');
  if (colon == std::string::npos) return std::nullopt;
  auto a = parse_u64(s.substr(0, colon)), b = parse_u64(s.substr(colon + 1));
  if (!a || !b || *a > 0xffffffffu || *b > 0xffffffffu) return std::nullopt;
  return std::make_pair(static_cast<std::uint32_t>(*a), static_cast<std::uint32_t>(*b));
}

}  // namespace

void replay_foreign(const ReplayCmd& o) {
  std::optional<std::pair<std::uint32_t, std::uint32_t>> pair;
  if (!o.pair.empty()) {
    pair = parse_pair(o.pair);
    if (!pair) return fail("--pair '" + o.pair + "' is not SRC:DST (two VM ids, e.g. 4242:4250)");
    if (*o.vm != pair->first && *o.vm != pair->second)
      return fail("--pair " + o.pair + " does not include --vm " + std::to_string(*o.vm));
  }
  traces::Trace t;
  Accounting acc;
  auto rt = traces::read_trace(o.trace);
  if (rt) {
    t = std::move(*rt);
    acc = from_meta(t);
  } else if (rt.error().message.find("bad magic") != std::string::npos) {
    // Not a baton trace: ftrace text of any VMM.
    auto imp = traces::import_ftrace_file(o.trace);
    if (!imp) return fail(imp.error().message);
    t = std::move(imp->trace);
    acc.known = true;
    acc.lines = imp->stats.lines;
    acc.malformed = imp->stats.malformed_lines;
    acc.unknown = imp->stats.unknown_lines;
    acc.unknown_levels = imp->stats.unknown_levels;
    acc.lost = imp->stats.lost_events;
    acc.samples = imp->stats.samples;
  } else {
    return fail(rt.error().message);
  }
  auto r = traces::replay_isolation(t, *o.vm, pair);
  if (!r) return fail(r.error().message);
  const bool copied = r->handover && r->handover->differing != 0;
  const bool violated = r->violation.has_value() || copied;
  // A clean replay of an incomplete capture proves nothing (docs/checker.md): inconclusive.
  const std::string verdict = violated ? "violated" : acc.loss() != 0 ? "inconclusive" : "holds";
  if (o.json_out) {
    json j;
    j["trace"] = o.trace;
    j["vm"] = *o.vm;
    j["pair"] = pair ? json{pair->first, pair->second} : json(nullptr);
    j["mapping_events"] = r->events;
    j["vm_mapping_events"] = r->vm_events;
    j["clears"] = r->clears;
    j["peak_frames"] = r->peak_frames;
    j["verdict"] = verdict;
    j["import"] = {{"lines", acc.lines},          {"malformed_lines", acc.malformed}, {"unknown_lines", acc.unknown},
                   {"unknown_levels", acc.unknown_levels}, {"lost_events", acc.lost}, {"samples", acc.samples}};
    if (r->violation) {
      const auto& v = *r->violation;
      j["violation"] = {{"pfn", hexs(v.pfn)},
                        {"first", {{"vm", v.vm_a}, {"gfn", hexs(v.gfn_a)}, {"event", v.event_a}, {"text", traces::describe(t.events[v.event_a])}}},
                        {"second", {{"vm", v.vm_b}, {"gfn", hexs(v.gfn_b)}, {"event", v.event_b}, {"text", traces::describe(t.events[v.event_b])}}}};
    }
    if (r->handover) {
      const auto& h = *r->handover;
      j["handover"] = {{"event", h.event},   {"source_frames", h.source_frames}, {"dest_frames", h.dest_frames},
                       {"shared", h.shared}, {"differing", h.differing}};
      if (h.first_gfn)
        j["handover"]["first_differing"] = {{"gfn", hexs(*h.first_gfn)}, {"source_pfn", hexs(h.source_pfn)}, {"dest_pfn", hexs(h.dest_pfn)}};
    }
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("capture      %s, VM %u%s\n", o.trace.c_str(), *o.vm, pair ? (", pair " + o.pair).c_str() : "");
    std::printf("replayed     %zu mapping events (%zu of VM %u, %zu clears); VM %u held at most %llu frames\n",
                r->events, r->vm_events, *o.vm, r->clears, *o.vm, static_cast<unsigned long long>(r->peak_frames));
    if (acc.known)
      std::printf("import       %llu lines: %llu malformed, %llu unknown, %llu of unknown levels, %llu lost events\n",
                  static_cast<unsigned long long>(acc.lines), static_cast<unsigned long long>(acc.malformed),
                  static_cast<unsigned long long>(acc.unknown), static_cast<unsigned long long>(acc.unknown_levels),
                  static_cast<unsigned long long>(acc.lost));
    for (const std::string& s : acc.samples) std::printf("  %s\n", s.c_str());
    if (r->violation) {
      const auto& v = *r->violation;
      std::printf("VIOLATION    host pfn %s mapped by VM %u and VM %u at once\n", hexs(v.pfn).c_str(), v.vm_a, v.vm_b);
      std::printf("  first      event %zu: VM %u gfn %s: %s\n", v.event_a, v.vm_a, hexs(v.gfn_a).c_str(),
                  traces::describe(t.events[v.event_a]).c_str());
      std::printf("  second     event %zu: VM %u gfn %s: %s\n", v.event_b, v.vm_b, hexs(v.gfn_b).c_str(),
                  traces::describe(t.events[v.event_b]).c_str());
    } else {
      std::printf("isolation    no host frame of VM %u was mapped by another VM%s\n", *o.vm,
                  pair ? " outside the declared pair" : "");
    }
    if (r->handover) {
      const auto& h = *r->handover;
      std::printf("handover     at event %zu: %llu gfns shared by source and destination, %llu on different frames\n",
                  h.event, static_cast<unsigned long long>(h.shared), static_cast<unsigned long long>(h.differing));
      if (h.first_gfn)
        std::printf("  first      gfn %s: source pfn %s, destination pfn %s (copied, not shared)\n",
                    hexs(*h.first_gfn).c_str(), hexs(h.source_pfn).c_str(), hexs(h.dest_pfn).c_str());
    } else if (pair) {
      std::printf("handover     the destination VM %u has no mapping events: no-copy not checked\n", pair->second);
    }
    std::printf("verdict      %s%s\n", verdict.c_str(),
                verdict == "inconclusive" ? " (the import left lines or events out; a clean replay of an incomplete "
                                            "capture proves nothing)"
                                          : "");
  }
  exit_code() = verdict == "holds" ? kExitOk : verdict == "violated" ? kExitRefuted : kExitError;
}

}  // namespace baton::cli
