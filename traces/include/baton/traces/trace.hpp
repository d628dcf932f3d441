// Trace format v1 (docs/trace-format.md): a header naming the source, guest, parameters and
// cost profile, then a stream of fixed-shape events. Written by the simulator and by the
// KVM backend, produced from ftrace captures by the importer, consumed by replay and the
// checker. No third-party type appears here.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "baton/model/result.hpp"

namespace baton::traces {

inline constexpr std::uint32_t kTraceFormatVersion = 1;
// The largest trace file baton reads (it decodes the whole file in memory).
inline constexpr std::uint64_t kMaxTraceFile = std::uint64_t{16} << 30;

// The kinds of event.
enum class EventType : std::uint8_t {
  kExit = 1,            // a VM exit: code = basic exit reason, a = qualification, b = GPA, c = RIP
  kEptSet = 2,          // an EPT leaf installed: a = gfn, b = hfn (pfn), code = level (1..3), flags = perms (bits 2:0)
  kEptClear = 3,        // gfns [a, a + 512^(code-1)) unmapped: a = gfn, code = level
  kIo = 4,              // port I/O: code = port, flags = dir (bit 0: 1 = in) | size << 8, a = value, b = count
  kSync = 5,            // a sync point: a = stage
  kMigrationPhase = 6,  // a migration phase boundary: code = MigrationPhase, a = phase-specific value
  kMmio = 7,            // an MMIO access: a = GPA, flags = dir | size << 8, b = value
  kEntry = 8,           // a VM entry: c = RIP
  kUserspaceExit = 9,   // KVM_RUN returned to the VMM: code = KVM_EXIT_* reason, flags bit 0 = error (a = errno)
};
// Returns whether `raw` is the value of a known EventType.
bool is_known_event_type(std::uint8_t raw);

// Flag bits of kEptSet events beyond the permissions in bits 2:0.
inline constexpr std::uint32_t kEptPermsUnknown = 1u << 3;   // the source did not give permissions
inline constexpr std::uint32_t kEptOriginShift = 8;          // bits 15:8 = where the mapping came from:
inline constexpr std::uint32_t kEptOriginModel = 0;          //   the simulator or a KVM backend
inline constexpr std::uint32_t kEptOriginSetSpte = 1;        //   ftrace kvmmmu:kvm_mmu_set_spte
inline constexpr std::uint32_t kEptOriginSpteRequested = 2;  //   ftrace kvmmmu:kvm_mmu_spte_requested
inline constexpr std::uint32_t kEptOriginTdpChanged = 3;     //   ftrace kvmmmu:kvm_tdp_mmu_spte_changed
inline constexpr std::uint32_t kEptOriginTdpSplit = 4;       //   a huge leaf split by kvm_tdp_mmu_spte_changed
// Flag bits of kExit events.
inline constexpr std::uint32_t kExitFailedVmentry = 1u << 0;  // VMX exit reason bit 31 (VM-entry failure)
inline constexpr std::uint32_t kExitSvm = 1u << 1;            // `code` is an SVM exit code, not a VMX reason
// Flag bits of kIo and kMmio events: bit 0 = in/read, bits 15:8 = size in bytes.
inline constexpr std::uint32_t kAccessIn = 1u << 0;
inline constexpr std::uint32_t kMmioUnsatisfied = 1u << 1;  // a read whose value was not known yet
inline constexpr std::uint32_t kAccessSizeShift = 8;
// Names an event type ("exit", "ept-set", ...).
const char* to_string(EventType t);

// Phases of a migration, as recorded in kMigrationPhase events.
enum class MigrationPhase : std::uint32_t {
  kStart = 1,
  kPause = 2,
  kStateTransfer = 3,
  kEptWork = 4,
  kResume = 5,
  kCopyRound = 6,
  kStopAndCopy = 7,
  kDone = 8,
};
// Names a migration phase ("pause", ...).
const char* to_string(MigrationPhase p);

// One event. Field meaning depends on `type` (see EventType).
struct TraceEvent {
  EventType type = EventType::kExit;
  std::uint32_t vm = 0;  // VM id (for ftrace imports: the VMM's pid)
  std::uint32_t vcpu = 0;
  std::uint64_t time = 0;  // simulated cycles (simulator) or nanoseconds (hardware)
  std::uint64_t insn = 0;  // guest instructions retired so far (simulator), else 0
  std::uint32_t code = 0;
  std::uint32_t flags = 0;
  std::uint64_t a = 0, b = 0, c = 0;
  friend bool operator==(const TraceEvent&, const TraceEvent&) = default;
};

// Factories for each event kind.
TraceEvent exit_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint32_t reason,
                      std::uint64_t qualification, std::uint64_t gpa, std::uint64_t rip);
TraceEvent ept_set_event(std::uint32_t vm, std::uint64_t time, std::uint64_t gfn, std::uint64_t hfn, unsigned level,
                         unsigned perms);
TraceEvent ept_clear_event(std::uint32_t vm, std::uint64_t time, std::uint64_t gfn, unsigned level);
TraceEvent io_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint16_t port, bool in,
                    unsigned size, std::uint64_t value);
TraceEvent sync_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint64_t stage);
TraceEvent phase_event(std::uint32_t vm, std::uint64_t time, MigrationPhase phase, std::uint64_t value = 0);
TraceEvent mmio_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint64_t gpa, bool read,
                      unsigned size, std::uint64_t value);
TraceEvent entry_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint64_t rip);
TraceEvent userspace_exit_event(std::uint32_t vm, std::uint64_t time, std::uint32_t kvm_reason, bool error = false,
                                std::uint64_t err = 0);

// The header at the start of every trace.
struct TraceHeader {
  std::string source;                         // "baton-sim", "baton-kvm", "ftrace-import", ...
  std::string guest;                          // guest name or ELF path
  std::map<std::string, std::string> params;  // guest parameters and run options
  std::string cost_profile;                   // the cost profile as JSON text (simulator), or ""
  std::string time_unit = "cycles";           // "cycles" or "ns"
  std::map<std::string, std::string> meta;    // free-form: host, kernel, VMM, pids ...
  friend bool operator==(const TraceHeader&, const TraceHeader&) = default;
};

// Streams events into a trace file. Events are buffered and written in checksummed,
// compressed chunks; close() writes the end marker. A file without it reads as truncated.
class TraceWriter {
 public:
  virtual ~TraceWriter() = default;
  // Appends one event.
  virtual void write(const TraceEvent& e) = 0;
  // Flushes and writes the end marker; returns an error if any write failed.
  virtual Result<void> close() = 0;
  // Creates a writer; refuses to overwrite an existing file unless `overwrite`.
  static Result<std::unique_ptr<TraceWriter>> open(const std::string& path, const TraceHeader& header,
                                                   bool overwrite = false);
};

// Reads a whole trace. Truncated or corrupted files give one clear error and no partial result.
struct Trace {
  TraceHeader header;
  std::vector<TraceEvent> events;
};
Result<Trace> read_trace(const std::string& path);
// Decodes a trace held in memory (for tests and fuzzing).
Result<Trace> decode_trace(const std::vector<std::uint8_t>& bytes);
// Encodes a trace into memory.
std::vector<std::uint8_t> encode_trace(const Trace& t);
// Writes a whole trace to a file atomically; refuses to overwrite unless `overwrite`.
Result<void> write_trace(const std::string& path, const Trace& t, bool overwrite = false);
// Describes one event in one line for people ("exit reason=48 qual=0x181 gpa=0x1000 rip=0x401000").
std::string describe(const TraceEvent& e);

}  // namespace baton::traces
