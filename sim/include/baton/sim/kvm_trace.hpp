// Trace format v1 for runs on /dev/kvm (docs/trace-format.md, "Traces of KVM runs"): the
// guest's identity in the header, every event the VMM saw (returns from KVM_RUN, port
// accesses with their values, sync points) in order, the migration timeline, and, with a
// tracefs capture, KVM's mapping events merged in by time. Used by `baton run --backend kvm`
// and `baton migrate --backend kvm`.
#pragma once

#include <cstdint>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "baton/guests/loader.hpp"
#include "baton/hw/machine.hpp"
#include "baton/model/result.hpp"
#include "baton/traces/trace.hpp"

namespace baton::sim {

// The header of a KVM trace of `image`: source baton-kvm, time in ns, the guest's name and
// parameters (plus `run_params` such as mem, pages, method), and meta with the image hash,
// the input seed, the host flavour and kernel.
traces::TraceHeader kvm_trace_header(const guests::GuestImage& image, const std::string& guest,
                                     const std::map<std::string, std::string>& run_params);

// Appends one VMM's events as events of VM `vm`, time in ns since `t0_ns`: a userspace-exit
// per return from KVM_RUN, an io event per port access (an IN with the value answered), and a
// sync event after the access that announced a sync point.
void append_vmm_events(std::vector<traces::TraceEvent>& out, std::span<const hw::VmmEvent> events, std::uint32_t vm,
                       std::uint64_t t0_ns);

// Appends the mapping events (ept-set, ept-clear) of a tracefs capture taken with trace_clock
// "mono", for the processes in `vms` (pid -> VM id), time in ns since `t0_ns`. Records the
// import's counts in `meta` (capture.*) so that a reader knows what was lost.
Result<void> append_capture_mappings(std::vector<traces::TraceEvent>& out, std::string_view capture_text,
                                     const std::map<std::uint32_t, std::uint32_t>& vms, std::uint64_t t0_ns,
                                     std::map<std::string, std::string>& meta);

// Orders the events by time (events of equal time keep their order) and writes the trace
// atomically; refuses an existing file unless `overwrite`.
Result<void> write_kvm_trace(const std::string& path, const traces::TraceHeader& header,
                             std::vector<traces::TraceEvent> events, bool overwrite);

}  // namespace baton::sim
