// baton trace: import ftrace captures, show traces and reconstruct gfn->pfn maps.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "baton/model/file_io.hpp"
#include "baton/model/snapshot_io.hpp"
#include "baton/traces/ftrace.hpp"
#include "baton/traces/trace.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;
using traces::EventType;
using traces::Trace;
using traces::TraceEvent;

struct TraceOptions {
  std::string in, out, pid, tgids, vm, at;
  std::size_t limit = 50;
  bool force = false, json = false;
};

// Reads a small text file that must state something (an empty one is an error).
Result<std::string> read_text(const std::string& path, const char* what) {
  auto text = model::read_text_file(path, model::kMaxSmallFile, what);
  if (!text) return text.error();
  if (text->find_first_not_of(" \t\r\n") == std::string::npos) return make_error("'" + path + "' is empty");
  return text;
}

// Names permission bits as "rwx" with dashes, or "?" when unknown.
std::string perms_text(unsigned p, bool known) {
  if (!known) return "?";
  std::string s = "---";
  if (p & 1) s[0] = 'r';
  if (p & 2) s[1] = 'w';
  if (p & 4) s[2] = 'x';
  return s;
}

// Names a leaf size.
const char* leaf_size(unsigned level) { return level == 3 ? "1G" : level == 2 ? "2M" : "4K"; }

// Parses an optional u32 option value; false (after failing) when malformed.
bool parse_u32_opt(const std::string& text, const char* flag, std::optional<std::uint32_t>& out) {
  if (text.empty()) return true;
  auto v = parse_u64(text);
  if (!v || *v > 0xffffffffu) {
    fail(std::string(flag) + " '" + text + "' is not a 32-bit number");
    return false;
  }
  out = static_cast<std::uint32_t>(*v);
  return true;
}

// baton trace import FTRACE_TEXT OUT [--pid PID] [--tgids FILE] [--force] [--json]
void run_import(const TraceOptions& o) {
  if (auto r = model::check_output_path(o.out, o.force); !r) return fail(r.error().message);
  traces::FtraceImportOptions io;
  if (!parse_u32_opt(o.pid, "--pid", io.pid)) return;
  if (!o.tgids.empty()) {
    auto text = read_text(o.tgids, "saved_tgids");
    if (!text) return fail(text.error().message);
    auto m = traces::parse_saved_tgids(*text);
    if (!m) return fail(o.tgids + ": " + m.error().message);
    io.tgids = std::move(*m);
  }
  auto imp = traces::import_ftrace_to(o.in, o.out, o.force, io);
  if (!imp) return fail(imp.error().message);
  const auto& st = imp->stats;
  const std::map<std::string, std::size_t>& kinds = st.events_by_type;
  if (o.json) {
    json j{{"input", o.in},
           {"output", o.out},
           {"style", st.style},
           {"isa", st.isa},
           {"vms", st.vms},
           {"events", st.events},
           {"events_by_type", kinds},
           {"lines", st.lines},
           {"event_lines", st.per_event},
           {"comment_lines", st.comment_lines},
           {"other_event_lines", st.other_event_lines},
           {"unknown_lines", st.unknown_lines},
           {"malformed_lines", st.malformed_lines},
           {"filtered_lines", st.filtered_lines},
           {"skipped_sptes", st.skipped_sptes},
           {"unknown_levels", st.unknown_levels},
           {"backfilled_gpas", st.backfilled_gpas},
           {"lost_events", st.lost_events},
           {"samples", [&] {
              std::vector<std::string> v;
              for (const auto& s : st.samples) v.push_back(printable(s));
              return v;
            }()}};
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("imported %s (%s format%s%s) into %s\n", o.in.c_str(), st.style.c_str(), st.isa.empty() ? "" : ", ",
              st.isa.c_str(), o.out.c_str());
  std::string vms;
  for (auto v : st.vms) vms += (vms.empty() ? "" : ", ") + std::to_string(v);
  std::printf("  VMs (VMM pids)   %s\n", vms.c_str());
  std::printf("  lines            %zu: %zu KVM events, %zu other events, %zu comments, %zu unknown, %zu malformed\n",
              st.lines, st.event_lines, st.other_event_lines, st.comment_lines, st.unknown_lines, st.malformed_lines);
  if (st.filtered_lines) std::printf("  filtered out     %zu lines of other pids\n", st.filtered_lines);
  std::printf("  trace events     %zu:", st.events);
  for (const auto& [k, n] : kinds) std::printf(" %s %zu", k.c_str(), n);
  std::printf("\n");
  if (st.lost_events) std::printf("  WARNING: the capture lost %zu events; maps may be incomplete\n", st.lost_events);
  if (st.unknown_levels)
    std::printf("  WARNING: %zu leaf SPTE event(s) with a level outside 1..3 were dropped; maps may be incomplete\n",
                st.unknown_levels);
  for (const auto& s : st.samples) std::printf("  skipped %s\n", printable(s).c_str());
}

// Builds the JSON rows of one VM's map.
json leaves_json(const std::map<std::uint64_t, traces::Mapping>& m) {
  json rows = json::array();
  for (const auto& [gfn, l] : m)
    rows.push_back(json{{"gfn", hex(gfn)},
                        {"pfn", hex(l.pfn)},
                        {"level", l.level},
                        {"size", leaf_size(l.level)},
                        {"perms", l.perms_known ? json(perms_text(l.perms, true)) : json(nullptr)},
                        {"event", l.event}});
  return rows;
}

// baton trace mappings TRACE [--vm ID] [--at EVENT] [--json]
void run_mappings(const TraceOptions& o) {
  std::optional<std::uint32_t> vm;
  if (!parse_u32_opt(o.vm, "--vm", vm)) return;
  std::optional<std::size_t> at;
  if (!o.at.empty()) {
    auto v = parse_u64(o.at);
    if (!v) return fail("--at '" + o.at + "' is not an event index");
    at = static_cast<std::size_t>(*v);
  }
  auto t = traces::read_trace(o.in);
  if (!t) return fail(t.error().message);
  std::vector<std::uint32_t> vms = vm ? std::vector<std::uint32_t>{*vm} : traces::trace_vms(*t);
  const std::size_t upto = at.value_or(t->events.size());
  json out{{"trace", o.in}, {"at", upto}, {"events", t->events.size()}, {"vms", json::array()}};
  std::string text;
  for (std::uint32_t id : vms) {
    auto m = traces::mappings(*t, id, at);
    if (!m) return fail(o.in + ": " + m.error().message);
    out["vms"].push_back(json{{"vm", id}, {"leaves", leaves_json(*m)}});
    char line[160];
    std::snprintf(line, sizeof line, "VM %u: %zu leaves after %zu of %zu events\n", id, m->size(), upto,
                  t->events.size());
    text += line;
    if (m->empty()) continue;
    std::snprintf(line, sizeof line, "  %-18s %-18s %-5s %-5s %s\n", "gfn", "pfn", "size", "perms", "event");
    text += line;
    for (const auto& [gfn, l] : *m) {
      std::snprintf(line, sizeof line, "  %-18s %-18s %-5s %-5s %zu\n", hex(gfn).c_str(), hex(l.pfn).c_str(),
                    leaf_size(l.level), perms_text(l.perms, l.perms_known).c_str(), l.event);
      text += line;
    }
  }
  if (o.json)
    std::cout << out.dump(2) << "\n";
  else
    std::fputs(text.c_str(), stdout);
}

// One event as JSON.
json event_json(std::size_t index, const TraceEvent& e) {
  return json{{"index", index}, {"type", traces::to_string(e.type)},
              {"vm", e.vm},     {"vcpu", e.vcpu},
              {"time", e.time}, {"insn", e.insn},
              {"code", e.code}, {"flags", e.flags},
              {"a", hex(e.a)},  {"b", hex(e.b)},
              {"c", hex(e.c)},  {"text", traces::describe(e)}};
}

// baton trace show TRACE [--limit N] [--json]
void run_show(const TraceOptions& o) {
  auto t = traces::read_trace(o.in);
  if (!t) return fail(t.error().message);
  const auto& h = t->header;
  std::map<std::string, std::size_t> kinds;
  for (const TraceEvent& e : t->events) ++kinds[traces::to_string(e.type)];
  const std::size_t n = o.limit == 0 ? t->events.size() : std::min(o.limit, t->events.size());
  if (o.json) {
    json j{{"trace", o.in},
           {"header",
            {{"source", h.source},
             {"guest", h.guest},
             {"time_unit", h.time_unit},
             {"params", h.params},
             {"meta", h.meta},
             {"cost_profile", h.cost_profile}}},
           {"events", t->events.size()},
           {"events_by_type", kinds},
           {"vms", traces::trace_vms(*t)},
           {"shown", json::array()}};
    for (std::size_t i = 0; i < n; ++i) j["shown"].push_back(event_json(i, t->events[i]));
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("trace %s (format v%u)\n", o.in.c_str(), traces::kTraceFormatVersion);
  std::printf("  source       %s\n", h.source.c_str());
  if (!h.guest.empty()) std::printf("  guest        %s\n", h.guest.c_str());
  std::printf("  time unit    %s\n", h.time_unit.c_str());
  for (const auto& [k, v] : h.params) std::printf("  param        %s = %s\n", k.c_str(), v.c_str());
  for (const auto& [k, v] : h.meta)
    if (!v.empty()) std::printf("  meta         %s = %s\n", k.c_str(), v.c_str());
  if (!h.cost_profile.empty()) std::printf("  cost profile %zu bytes of JSON\n", h.cost_profile.size());
  std::printf("  events       %zu:", t->events.size());
  for (const auto& [k, c] : kinds) std::printf(" %s %zu", k.c_str(), c);
  std::printf("\n\n  %8s %16s %8s %5s  %s\n", "index", "time", "vm", "vcpu", "event");
  for (std::size_t i = 0; i < n; ++i) {
    const TraceEvent& e = t->events[i];
    std::printf("  %8zu %16llu %8u %5u  %s\n", i, static_cast<unsigned long long>(e.time), e.vm, e.vcpu,
                traces::describe(e).c_str());
  }
  if (n < t->events.size()) std::printf("  ... %zu more (use --limit 0 for all)\n", t->events.size() - n);
}
}  // namespace

void register_trace(CLI::App& app) {
  auto o = std::make_shared<TraceOptions>();
  CLI::App* tr = app.add_subcommand("trace", "Capture and import ftrace KVM events, show traces, rebuild gfn->pfn maps");
  tr->require_subcommand(1);

  CLI::App* i = tr->add_subcommand("import", "Convert ftrace/trace-cmd text of KVM events into a trace (v1)");
  i->add_option("ftrace_text", o->in, "tracefs 'trace' file or 'trace-cmd report' output")->required();
  i->add_option("out", o->out, "Output trace file")->required();
  i->add_option("--pid", o->pid, "Keep only this VMM process (or thread) id");
  i->add_option("--tgids", o->tgids, "Thread->process map in tracefs saved_tgids format (for trace-cmd output)");
  i->add_flag("--force", o->force, "Overwrite OUT if it exists");
  i->add_flag("--json", o->json, "Print JSON");
  i->callback([o] { run_import(*o); });

  CLI::App* m = tr->add_subcommand("mappings", "Print each VM's gfn->pfn leaves at the end or before an event");
  m->add_option("trace", o->in, "Trace file")->required();
  m->add_option("--vm", o->vm, "Only this VM id (for imports: the VMM pid)");
  m->add_option("--at", o->at, "Apply only events with index < EVENT");
  m->add_flag("--json", o->json, "Print JSON");
  m->callback([o] { run_mappings(*o); });

  CLI::App* s = tr->add_subcommand("show", "Print a trace's header and its first events");
  s->add_option("trace", o->in, "Trace file")->required();
  s->add_option("--limit", o->limit, "Events to print (0 = all)")->capture_default_str();
  s->add_flag("--json", o->json, "Print JSON");
  s->callback([o] { run_show(*o); });

#ifndef BATON_DEMO  // make demo's reduced executable has no `trace capture`
  register_trace_capture(*tr);
#endif
}

}  // namespace baton::cli
