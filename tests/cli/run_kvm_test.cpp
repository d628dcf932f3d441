// `baton run GUEST --backend kvm`: on a host without a usable /dev/kvm, one clear line and
// exit 2; with one, the guest's checksum matches. The sim path is untouched.
#include <sys/stat.h>

#include <catch2/catch.hpp>

#include "cli_run.hpp"

using baton::test::run_baton;
using baton::test::ScratchDir;

TEST_CASE("run --backend kvm: no KVM gives one clear error line and exit 2", "[cli][kvm-device]") {
  ScratchDir d;
  auto r = run_baton(d, "run checksum --backend kvm");
  struct stat st {};
  if (::stat("/dev/kvm", &st) != 0) {
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK(r.err == "baton: /dev/kvm: No such file or directory — this host has no KVM (no kvm_intel/kvm_amd module "
                   "bound: no VT-x/AMD-V, or a guest without nested virtualization); run on a KVM host\n");
  } else {
    // A host with a device: either the run works or the device is refused in one line.
    INFO(r.out << r.err);
    if (r.code == 0)
      CHECK_THAT(r.out, Catch::Contains("on kvm") && Catch::Contains(": match)"));
    else
      CHECK((r.code == 2 && r.err.rfind("baton: /dev/kvm: ", 0) == 0));
  }
}

TEST_CASE("run --backend: unknown backends and sim-only options are refused", "[cli][bad-input]") {
  ScratchDir d;
  auto r = run_baton(d, "run checksum --backend xen");
  CHECK(r.code == 2);
  CHECK(r.err == "baton: --backend 'xen' is not one of sim, kvm\n");
  auto t = run_baton(d, "run checksum --backend kvm --trace " + (d / "x.trc"));
  CHECK(t.code == 2);
  CHECK_THAT(t.err, Catch::Contains("apply to --backend sim only"));
}

TEST_CASE("vmm-worker: bad invocations are one clear line", "[cli][bad-input]") {
  ScratchDir d;
  auto r = run_baton(d, "vmm-worker");
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("exactly one of --socket PATH or --fd N"));
  auto c = run_baton(d, "vmm-worker --socket " + (d / "no.sock"));
  CHECK(c.code == 2);
  CHECK_THAT(c.err, Catch::StartsWith("baton: cannot connect to ") && Catch::Contains("No such file or directory"));
}
