// The Catch2 main of the kvm-labelled test executables (baton_add_kvm_tests in
// tests/CMakeLists.txt): without a usable /dev/kvm it prints "SKIPPED: /dev/kvm is not usable
// here: <reason>" and returns 77, which scripts/kvm-suite.sh and CTest report as a skip, never as
// a pass. The suite runs these executables only where the device works (or in the nested host).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <cstdio>

#include "baton/hw/kvm.hpp"

// Runs the Catch2 session when /dev/kvm is usable, otherwise reports the skip.
int main(int argc, char** argv) {
  if (auto why = baton::hw::kvm_unavailable_reason()) {
    std::printf("SKIPPED: /dev/kvm is not usable here: %s\n", why->c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
