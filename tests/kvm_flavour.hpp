// What a two-process KVM migration's vcpu check must say on this host, by flavour
// (hw::host_flavour()). The KVM API documentation defines KVM_VCPU_TSC_OFFSET as
// guest_tsc = host_tsc + offset; VT-x, SVM and the nested SVM host apply it, so a worker that
// sets the offset keeps the guest TSC continuous and the check is proven. PVM accepts the
// attribute but keeps the guest on the host TSC (the read-back stays 0): the guest TSC runs on
// through the downtime, and the check is refuted, saying so (sim::tsc_offset_not_applied).
#pragma once

#include <catch2/catch.hpp>
#include <string>

#include "baton/hw/kvm.hpp"

namespace baton::test {

// Whether this host's KVM applies KVM_VCPU_TSC_OFFSET (every flavour measured but PVM).
inline bool kvm_applies_tsc_offset() { return hw::host_flavour() != "pvm"; }

// The vcpu verdict (and the overall one) of an otherwise sound KVM migration here.
inline std::string expected_vcpu_verdict() { return kvm_applies_tsc_offset() ? "proven" : "refuted"; }

// The migration outcome that goes with it: ok, or switched-refuted on PVM.
inline std::string expected_kvm_outcome() { return kvm_applies_tsc_offset() ? "ok" : "switched-refuted"; }

// The exit code of `baton migrate --backend kvm` that goes with it: 0, or 1 (refuted) on PVM.
inline int expected_kvm_exit() { return kvm_applies_tsc_offset() ? 0 : 1; }

// The start of the summary of a vcpu check refuted because KVM ignored the offset.
inline std::string tsc_not_applied_text() {
  return "the guest TSC ran on through the downtime: this host's KVM (" + hw::host_flavour() +
         ") does not apply KVM_VCPU_TSC_OFFSET (the worker set 0x";
}

// Checks one vcpu check line, its verdict and summary, against this host's flavour.
inline void check_vcpu_line(const std::string& verdict, const std::string& summary) {
  INFO("vcpu " << verdict << ": " << summary);
  CHECK(verdict == expected_vcpu_verdict());
  if (kvm_applies_tsc_offset()) {
    CHECK_THAT(summary, Catch::Contains("guest TSC continuous"));
  } else {
    CHECK_THAT(summary, Catch::StartsWith(tsc_not_applied_text()));
    CHECK_THAT(summary, Catch::Contains(", KVM applies 0x"));
    CHECK_THAT(summary, Catch::Contains("vcpu0.tsc_offset: the TSC offset must change"));
  }
}

// Checks the vcpu line of a migration's text report (`  vcpu   VERDICT   TIME  SUMMARY`).
inline void check_vcpu_text(const std::string& out) {
  const std::string head = "\n  vcpu ";
  const auto at = out.find(head);
  INFO(out);
  REQUIRE(at != std::string::npos);
  const auto end = out.find('\n', at + 1);
  const std::string line = out.substr(at + head.size(), end - at - head.size());
  const auto v = line.find_first_not_of(' ');
  const auto ve = line.find(' ', v);
  const auto t = line.find_first_not_of(' ', ve);  // the time, then two spaces and the summary
  const auto s = line.find("  ", t);
  REQUIRE(s != std::string::npos);
  check_vcpu_line(line.substr(v, ve - v), line.substr(s + 2));
}

}  // namespace baton::test
