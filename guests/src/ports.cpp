// The host side of the port ABI: recording, the input port, and run comparison.
#include "baton/guests/ports.hpp"

#include <algorithm>
#include <cstdio>

#include "baton/guests/abi.hpp"
#include "baton/guests/loader.hpp"

namespace baton::guests {

namespace {

// Formats a port access that lies outside the ABI.
std::string stray_text(const char* dir, std::uint16_t port, unsigned size) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%s 0x%x size %u", dir, port, size);
  return buf;
}

// Returns the deterministic results of a run, in order.
std::vector<ResultRecord> deterministic(const std::vector<ResultRecord>& all) {
  std::vector<ResultRecord> out;
  for (const ResultRecord& r : all)
    if (is_deterministic_tag(r.tag)) out.push_back(r);
  return out;
}

// Formats a result for a difference report.
std::string result_text(const ResultRecord& r) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "tag 0x%x = 0x%llx", r.tag, static_cast<unsigned long long>(r.value));
  return buf;
}

}  // namespace

std::uint64_t input_seed_of(const GuestImage& image) {
  for (const Param& p : image.params)
    if (p.key == kParamInputSeed) return p.value;
  return 0;
}

PortRecorder::PortRecorder(std::uint64_t input_seed)
    : input_([input_seed](std::uint64_t n) { return input_value(input_seed, n); }) {}

PortRecorder::PortRecorder(const GuestImage& image) : PortRecorder(input_seed_of(image)) {}

PortEvent PortRecorder::out(std::uint16_t port, unsigned size, std::uint32_t value) {
  PortEvent ev;
  if (port == kPortConsole) {
    run_.console.push_back(static_cast<char>(value & 0xFF));
    return PortEvent{PortEventKind::kConsole, value & 0xFF, {}};
  }
  if (size != 4) {
    run_.stray.push_back(stray_text("out", port, size));
    return PortEvent{PortEventKind::kStray, value, {}};
  }
  switch (port) {
    case kPortResultTag: tag_ = value; return ev;
    case kPortResultLo: lo_ = value; return ev;
    case kPortResultHi: {
      const ResultRecord r{tag_, (std::uint64_t{value} << 32) | lo_};
      run_.results.push_back(r);
      if (r.tag == kResultChecksum) run_.checksum = r.value;
      tag_ = 0;
      return PortEvent{PortEventKind::kResult, 0, r};
    }
    case kPortSync:
      stage_ = value;
      run_.stages.push_back(value);
      return PortEvent{PortEventKind::kSync, value, {}};
    case kPortExit:
      if (!run_.exited) {
        run_.exited = true;
        run_.exit_code = value;
      }
      return PortEvent{PortEventKind::kExit, value, {}};
    case kPortFault:
      if (!run_.faulted) {
        run_.faulted = true;
        run_.fault_vector = value;
      }
      return PortEvent{PortEventKind::kFault, value, {}};
    default: run_.stray.push_back(stray_text("out", port, size)); return PortEvent{PortEventKind::kStray, value, {}};
  }
}

void PortRecorder::resume(const State& s) {
  tag_ = s.tag;
  lo_ = s.lo;
  stage_ = s.stage;
  run_.inputs = s.inputs;
}

PortEvent PortRecorder::in(std::uint16_t port, unsigned size) {
  if (port != kPortInput || size != 4) {
    run_.stray.push_back(stray_text("in", port, size));
    return PortEvent{PortEventKind::kStray, 0, {}};
  }
  const std::uint32_t v = input_(run_.inputs++);
  return PortEvent{PortEventKind::kInput, v, {}};
}

std::string vector_name(std::uint32_t vector) {
  // SDM Vol. 3A table 6-1.
  static const char* const names[32] = {"#DE", "#DB", "NMI", "#BP", "#OF", "#BR", "#UD", "#NM", "#DF", "vector 9",
                                        "#TS", "#NP", "#SS", "#GP", "#PF", "vector 15", "#MF", "#AC", "#MC", "#XM",
                                        "#VE", "#CP", "vector 22", "vector 23", "vector 24", "vector 25",
                                        "vector 26", "vector 27", "#HV", "#VC", "#SX", "vector 31"};
  return vector < 32 ? names[vector] : "vector " + std::to_string(vector);
}

std::string fault_text(const FaultRecord& f) {
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "%s (error code 0x%llx) at rip 0x%llx, cs 0x%llx, rsp 0x%llx, rflags 0x%llx, cr2 0x%llx",
                vector_name(static_cast<std::uint32_t>(f.vector)).c_str(), static_cast<unsigned long long>(f.error_code),
                static_cast<unsigned long long>(f.rip), static_cast<unsigned long long>(f.cs),
                static_cast<unsigned long long>(f.rsp), static_cast<unsigned long long>(f.rflags),
                static_cast<unsigned long long>(f.cr2));
  return buf;
}

std::vector<std::string> compare_runs(const GuestRun& expected, const GuestRun& actual) {
  std::vector<std::string> d;
  if (expected.exited != actual.exited)
    d.push_back(actual.exited ? "the guest exited, but was not expected to" : "the guest did not exit");
  if (expected.exit_code != actual.exit_code)
    d.push_back("exit code " + std::to_string(actual.exit_code) + ", expected " + std::to_string(expected.exit_code));
  if (expected.faulted != actual.faulted || expected.fault_vector != actual.fault_vector)
    d.push_back(actual.faulted ? "the guest took exception " + vector_name(actual.fault_vector) +
                                     (expected.faulted ? ", expected " + vector_name(expected.fault_vector) : "")
                               : "the guest took no exception, expected " + vector_name(expected.fault_vector));
  const auto re = deterministic(expected.results), ra = deterministic(actual.results);
  for (std::size_t i = 0; i < std::max(re.size(), ra.size()); ++i) {
    if (i < re.size() && i < ra.size() && re[i] == ra[i]) continue;
    d.push_back("deterministic result " + std::to_string(i) + ": " + (i < ra.size() ? result_text(ra[i]) : "missing") +
                ", expected " + (i < re.size() ? result_text(re[i]) : "none"));
    break;
  }
  if (expected.stages != actual.stages)
    d.push_back(std::to_string(actual.stages.size()) + " sync points, expected " +
                std::to_string(expected.stages.size()) + " (or their numbers differ)");
  if (expected.console != actual.console) {
    std::size_t i = 0;
    while (i < expected.console.size() && i < actual.console.size() && expected.console[i] == actual.console[i]) ++i;
    d.push_back("console output differs from byte " + std::to_string(i));
  }
  if (expected.inputs != actual.inputs)
    d.push_back(std::to_string(actual.inputs) + " input reads, expected " + std::to_string(expected.inputs));
  for (const std::string& s : actual.stray) d.push_back("port access outside the ABI: " + s);
  return d;
}

}  // namespace baton::guests
