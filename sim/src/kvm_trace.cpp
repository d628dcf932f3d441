// Trace format v1 for runs on /dev/kvm (include/baton/sim/kvm_trace.hpp).
#include "baton/sim/kvm_trace.hpp"

#include <sys/utsname.h>

#include <algorithm>

#include "baton/guests/ports.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/traces/ftrace.hpp"

namespace baton::sim {

traces::TraceHeader kvm_trace_header(const guests::GuestImage& image, const std::string& guest,
                                     const std::map<std::string, std::string>& run_params) {
  traces::TraceHeader h;
  h.source = "baton-kvm";
  h.guest = guest;
  h.time_unit = "ns";
  h.params = run_params;
  for (const guests::Param& p : image.params) h.params.emplace(p.key, std::to_string(p.value));
  h.meta["image_hash"] = guests::image_hash(image);
  h.meta["input_seed"] = std::to_string(guests::input_seed_of(image));
  h.meta["host_flavour"] = hw::host_flavour();
  utsname u{};
  if (::uname(&u) == 0) h.meta["kernel"] = std::string(u.sysname) + " " + u.release;
  return h;
}

void append_vmm_events(std::vector<traces::TraceEvent>& out, std::span<const hw::VmmEvent> events, std::uint32_t vm,
                       std::uint64_t t0_ns) {
  for (const hw::VmmEvent& e : events) {
    const std::uint64_t t = e.ns > t0_ns ? e.ns - t0_ns : 0;
    if (e.first) out.push_back(traces::userspace_exit_event(vm, t, e.exit_reason));
    if (!e.io) continue;
    out.push_back(traces::io_event(vm, t, 0, e.port, e.in, e.size, e.value));
    if (e.kind == guests::PortEventKind::kSync) out.push_back(traces::sync_event(vm, t, 0, e.meaning));
  }
}

Result<void> append_capture_mappings(std::vector<traces::TraceEvent>& out, std::string_view capture_text,
                                     const std::map<std::uint32_t, std::uint32_t>& vms, std::uint64_t t0_ns,
                                     std::map<std::string, std::string>& meta) {
  traces::FtraceImportOptions io;
  io.allow_empty = true;
  auto imp = traces::parse_ftrace(capture_text, io);
  if (!imp) return make_error("the capture does not import: " + imp.error().message);
  std::uint64_t kept = 0;
  for (const traces::TraceEvent& e : imp->trace.events) {
    if (e.type != traces::EventType::kEptSet && e.type != traces::EventType::kEptClear) continue;
    auto it = vms.find(e.vm);
    if (it == vms.end()) continue;
    traces::TraceEvent c = e;
    c.vm = it->second;
    c.time = e.time > t0_ns ? e.time - t0_ns : 0;
    out.push_back(c);
    ++kept;
  }
  meta["capture.mapping_events"] = std::to_string(kept);
  meta["capture.lost_events"] = std::to_string(imp->stats.lost_events);
  meta["capture.malformed_lines"] = std::to_string(imp->stats.malformed_lines);
  meta["capture.unknown_lines"] = std::to_string(imp->stats.unknown_lines);
  meta["capture.clock"] = "mono";
  for (const auto& [pid, vm] : vms) meta["vm" + std::to_string(vm) + ".pid"] = std::to_string(pid);
  return ok_result();
}

Result<void> write_kvm_trace(const std::string& path, const traces::TraceHeader& header,
                             std::vector<traces::TraceEvent> events, bool overwrite) {
  std::stable_sort(events.begin(), events.end(),
                   [](const traces::TraceEvent& a, const traces::TraceEvent& b) { return a.time < b.time; });
  traces::Trace t{header, std::move(events)};
  return traces::write_trace(path, t, overwrite);
}

}  // namespace baton::sim
