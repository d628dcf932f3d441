// Importing ftrace text captures of KVM events (tracefs `trace` files and `trace-cmd report`
// output) into trace format v1, and reconstructing each VM's gfn->pfn map from a trace.
// See docs/trace-format.md, section "ftrace import".
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "baton/model/mapping_set.hpp"
#include "baton/model/result.hpp"
#include "baton/traces/trace.hpp"

namespace baton::traces {

// What the importer should keep.
struct FtraceImportOptions {
  std::optional<std::uint32_t> pid = std::nullopt;  // keep only this VMM process (matches the TGID or the thread id)
  std::string input_name = {};                      // recorded in the header's meta ("input"), e.g. the file name
  // Thread id -> process id, for captures without a TGID column (`trace-cmd report`): without
  // it each vCPU thread of such a capture counts as its own VM. See parse_saved_tgids().
  std::map<std::uint32_t, std::uint32_t> tgids = {};
  // Accept a capture without a single event line (e.g. `baton trace capture` of a process that
  // made no KVM call) as an empty trace instead of failing.
  bool allow_empty = false;
};

// Counts of what the importer saw; nothing here makes an import fail.
struct FtraceImportStats {
  std::string style;                             // "tracefs", "trace-cmd" or "plain" (no recognisable preamble)
  std::size_t lines = 0;                         // all lines, including blank and comment lines
  std::size_t comment_lines = 0;                 // blank lines, '#' comments and report preambles ("cpus=2")
  std::size_t event_lines = 0;                   // trace lines of the nine KVM events handled
  std::size_t other_event_lines = 0;             // well-formed trace lines of other events (ignored)
  std::size_t unknown_lines = 0;                 // lines that are not trace lines at all
  std::size_t malformed_lines = 0;               // lines of a handled event whose fields did not parse
  std::size_t filtered_lines = 0;                // handled event lines dropped by the pid filter
  std::size_t lost_events = 0;                   // from "[LOST n EVENTS]" markers
  std::size_t skipped_sptes = 0;                 // SPTE changes that install nothing (tables, SMM, MMIO, no-ops)
  std::size_t unknown_levels = 0;                // leaf SPTE events with a level outside 1..3 (dropped)
  std::size_t backfilled_gpas = 0;               // exits given a GPA by the following kvm_page_fault / kvm_mmio
  std::map<std::string, std::size_t> per_event;  // handled event lines by event name
  std::vector<std::string> samples;              // the first few unknown or malformed lines, with their line numbers
  std::set<std::uint32_t> vms;                   // VM ids (VMM pids) that produced events
  std::string isa;                               // "vmx", "svm" or "" if no kvm_exit told
  std::size_t events = 0;                        // trace events made
  std::map<std::string, std::size_t> events_by_type;  // trace events by type name (to_string(EventType))
};

// The result of an import: a trace whose events have time in nanoseconds.
struct FtraceImport {
  Trace trace;
  FtraceImportStats stats;
};

// Parses ftrace text. Fails only when the text holds no trace line at all (unless
// allow_empty), or the pid filter matches none of the handled events.
Result<FtraceImport> parse_ftrace(std::string_view text, const FtraceImportOptions& options = {});
// The largest ftrace text capture baton imports (it is parsed in memory).
inline constexpr std::uint64_t kMaxFtraceText = std::uint64_t{4} << 30;
// Reads and parses an ftrace text file; errors name the file.
Result<FtraceImport> import_ftrace_file(const std::string& path, const FtraceImportOptions& options = {});
// Imports an ftrace text file and writes the trace to `out` (as write_trace would, byte for
// byte), compressing on a second thread while it parses. Nothing is written on an error. The
// events are not kept in the result (trace.events is empty; stats.events counts them): only
// those still open to change are in memory at any time.
Result<FtraceImport> import_ftrace_to(const std::string& path, const std::string& out, bool overwrite,
                                      const FtraceImportOptions& options = {});

// Parses tracefs's `saved_tgids` text ("PID TGID" per line) into a thread -> process map.
Result<std::map<std::uint32_t, std::uint32_t>> parse_saved_tgids(std::string_view text);

// The shape of a synthetic capture (synthetic_ftrace): by default like a real QEMU capture of
// 525,651 lines with two VMs and about half the lines kvm_mmu_set_spte.
struct SynthOptions {
  std::size_t lines = 525'651;             // lines in all, the tracefs preamble included
  unsigned vms = 2;                        // QEMU processes (TGIDs 4242, 5242, ...)
  unsigned vcpus = 2;                      // "CPU n/KVM" threads per VM
  std::uint64_t guest_pages = 1u << 20;    // gfns of faults lie below this (4 GiB)
  std::uint64_t seed = 1;
};
// What a synthetic capture holds.
struct SynthStats {
  std::size_t lines = 0, bytes = 0;
  std::map<std::string, std::size_t> per_event;  // event lines by event name
};
// Generates a synthetic tracefs capture (deterministic for a seed).
std::string synthetic_ftrace(const SynthOptions& o, SynthStats* stats = nullptr);
// Writes synthetic_ftrace() to a file.
Result<SynthStats> write_synthetic_ftrace(const std::string& path, const SynthOptions& o);

// Maps a VMX basic exit reason name ("EPT_VIOLATION") or an SVM one ("npf") to its number.
std::optional<std::uint32_t> exit_reason_from_name(std::string_view name, bool* is_svm = nullptr);
// Names an exit reason number for the given ISA ("EPT_VIOLATION", "npf"), or "" if unknown.
std::string exit_reason_name(std::uint32_t reason, bool svm = false);

// One leaf of a reconstructed gfn->pfn map. A leaf of level L covers 512^(L-1) frames starting
// at its key gfn (aligned) and maps them to consecutive frames starting at `pfn`.
struct Mapping {
  std::uint64_t pfn = 0;
  unsigned level = 1;  // 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB
  unsigned perms = 0;  // bit 0 read, bit 1 write, bit 2 execute (when perms_known)
  bool perms_known = true;
  std::size_t event = 0;  // index of the event that installed it
  friend bool operator==(const Mapping&, const Mapping&) = default;
};

// Frames covered by one leaf of `level` (1, 512 or 262144).
std::uint64_t frames_per_leaf(unsigned level);

// Rebuilds the gfn->pfn leaves of one VM by applying its kEptSet / kEptClear events in order,
// over all events or only those with index < *upto. Keys are leaf-aligned base gfns.
Result<std::map<std::uint64_t, Mapping>> mappings(const Trace& t, std::uint32_t vm,
                                                  std::optional<std::size_t> upto = std::nullopt);
// Returns the pfn a gfn maps to in a reconstructed map (looking inside large leaves), if any.
std::optional<std::uint64_t> lookup_pfn(const std::map<std::uint64_t, Mapping>& m, std::uint64_t gfn);
// Converts a reconstructed map into the model's normal form (one kMapped run per leaf,
// coalesced where gfns and pfns are both contiguous with equal permissions; unknown
// permissions become rwx). Errors when a gfn or pfn lies beyond 52 bits of physical address.
Result<model::MappingSet> to_mapping_set(const std::map<std::uint64_t, Mapping>& m);
// Lists the VM ids that appear in a trace, ascending.
std::vector<std::uint32_t> trace_vms(const Trace& t);

}  // namespace baton::traces
