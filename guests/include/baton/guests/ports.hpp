// The host side of the port ABI, shared by every backend: a recorder that turns the guest's
// IN/OUT accesses into console text, results, sync points and the exit code, answers the
// input port, and compares a run with the host reference (docs/guest-abi.md §4, §7).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace baton::guests {

struct GuestImage;

// One result a guest reported on the result ports.
struct ResultRecord {
  std::uint32_t tag = 0;
  std::uint64_t value = 0;
  friend bool operator==(const ResultRecord&, const ResultRecord&) = default;
};

// Everything a guest did on the ports during one run (or what the reference predicts).
struct GuestRun {
  bool exited = false;
  std::uint32_t exit_code = 0;
  std::uint64_t checksum = 0;         // the last tag-0 result
  std::vector<ResultRecord> results;  // all results, in order
  std::vector<std::uint32_t> stages;  // sync points announced, in order
  std::string console;                // console bytes
  std::uint64_t inputs = 0;           // reads from the input port
  std::vector<std::string> stray;     // accesses outside the ABI ("out 0x80 size 1")
  bool faulted = false;               // the loader's trap handler reported an exception ...
  std::uint32_t fault_vector = 0;     // ... with this vector (the first one counts)
};

// What one port access meant to the backend.
enum class PortEventKind : std::uint8_t { kNone, kConsole, kResult, kSync, kExit, kInput, kStray, kFault };

// One decoded port access; `value` is the byte, stage, exit code, input value or vector.
struct PortEvent {
  PortEventKind kind = PortEventKind::kNone;
  std::uint32_t value = 0;
  ResultRecord result;
};

// Decodes port accesses into a GuestRun and answers the input port.
class PortRecorder {
 public:
  // Supplies the n-th input value (n counts from 0).
  using InputSource = std::function<std::uint32_t(std::uint64_t n)>;

  // Answers inputs with the default sequence for `input_seed`.
  explicit PortRecorder(std::uint64_t input_seed = 0);
  // Answers inputs with the default sequence for the image's `input_seed` parameter (0 if absent).
  explicit PortRecorder(const GuestImage& image);
  // Replaces the input source (e.g. values recorded in a trace).
  void set_input_source(InputSource source) { input_ = std::move(source); }

  // Handles an OUT of `size` bytes (1, 2 or 4); kExit and kFault mean the run is over.
  PortEvent out(std::uint16_t port, unsigned size, std::uint32_t value);
  // Handles an IN of `size` bytes; the event's value is what the guest must read.
  PortEvent in(std::uint16_t port, unsigned size);

  const GuestRun& run() const { return run_; }

  // The ABI state that outlives a handover: the tag and low half latched for the next
  // result, the last sync point announced, and the input reads so far (the next input is
  // value number `inputs`).
  struct State {
    std::uint32_t tag = 0;
    std::uint32_t lo = 0;
    std::uint32_t stage = 0;
    std::uint64_t inputs = 0;
    friend bool operator==(const State&, const State&) = default;
  };
  State state() const { return State{tag_, lo_, stage_, run_.inputs}; }
  // Continues from a state captured by state() on another recorder (a restored VM); what
  // was recorded before stays with that recorder.
  void resume(const State& s);

 private:
  GuestRun run_;
  InputSource input_;
  std::uint32_t tag_ = 0;
  std::uint32_t lo_ = 0;
  std::uint32_t stage_ = 0;
};

// Returns the input-seed parameter of an image (0 if absent).
std::uint64_t input_seed_of(const GuestImage& image);

// Lists how an actual run differs from the expected one in what must be deterministic: exit,
// exit code, a reported exception, deterministic results (tags 0 and >= 0x100), stages,
// console, input count and stray accesses. An empty list means the runs agree.
std::vector<std::string> compare_runs(const GuestRun& expected, const GuestRun& actual);

}  // namespace baton::guests
