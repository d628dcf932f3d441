// The machine interface both backends implement: load an image, run until an event or a
// budget, snapshot, resume. The CLI and the tests treat the simulator and KVM alike.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "baton/guests/loader.hpp"
#include "baton/guests/registry.hpp"
#include "baton/model/result.hpp"
#include "baton/model/snapshot.hpp"

namespace baton::sim {

// Why a run stopped.
enum class StopReason : std::uint8_t {
  kExited,        // the guest wrote the exit port
  kSyncPoint,     // the requested sync point was announced
  kInsnLimit,     // the requested instruction count was reached (at a block boundary)
  kHang,          // the instruction budget ran out before the guest exited
  kTripleFault,   // an exception the guest cannot handle (it has no IDT) or a VMX #UD
  kHlt,           // the guest halted with nothing to wake it
  kEntryFailure,  // VM entry failed a guest-state check
  kError,         // the backend failed (unmapped access, misconfigured non-MMIO entry, ...)
  kPort,          // the guest accessed the requested port (RunLimits::port)
};
// Names a stop reason ("exited", "hang", ...).
const char* to_string(StopReason r);

// When to stop a run. Zero means "no limit".
struct RunLimits {
  std::uint64_t budget = 0;              // total instructions before the run counts as a hang
  std::optional<std::uint32_t> sync;     // stop right after this sync point is announced
  std::uint64_t until_insn = 0;          // stop once this many instructions have retired
  std::optional<std::uint16_t> port;     // stop right after an IN or OUT on this port
};

// What stopped a run.
struct RunEvent {
  StopReason reason = StopReason::kError;
  std::string detail;         // one line: the SDM rule, the fault, the GVA ...
  std::uint32_t stage = 0;    // the last sync point announced
};

// What the guest said on the ABI's ports.
struct GuestOutput {
  std::string console;
  std::vector<guests::ResultRecord> results;
  std::vector<std::uint32_t> stages;
  std::optional<std::uint32_t> exit_code;
  std::uint64_t inputs = 0;
  // Returns the checksum (the last tag-0 result), if one was reported.
  std::optional<std::uint64_t> checksum() const {
    for (auto it = results.rbegin(); it != results.rend(); ++it)
      if (it->tag == 0) return it->value;
    return std::nullopt;
  }
};

class Machine {
 public:
  virtual ~Machine() = default;
  // Creates the VM for an image: memory, initial state.
  virtual Result<void> load(const guests::GuestImage& image) = 0;
  // Runs (or resumes) until an event or a limit.
  virtual RunEvent run(const RunLimits& limits) = 0;
  // Captures the handover snapshot of the paused VM.
  virtual Result<model::HandoverSnapshot> snapshot() = 0;
  // What the guest reported so far.
  virtual const GuestOutput& output() const = 0;
  // Guest instructions retired so far.
  virtual std::uint64_t instructions() const = 0;
};

}  // namespace baton::sim
