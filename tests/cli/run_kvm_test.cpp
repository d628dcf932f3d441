// `baton run|migrate GUEST --backend kvm` without a usable KVM device (BATON_KVM_DEVICE points
// elsewhere, so this runs on every machine): one clear line and exit 2. Runs on a real KVM are
// in the kvm suite (migrate_kvm_test.cpp).
#include <catch2/catch.hpp>
#include <fstream>

#include "cli_run.hpp"

using baton::test::run_baton;
using baton::test::ScratchDir;

TEST_CASE("run --backend kvm: no KVM gives one clear error line and exit 2", "[cli][kvm-device]") {
  // BATON_KVM_DEVICE points at a missing file: the no-KVM path on every machine.
  ScratchDir d;
  const std::string dev = d / "no-kvm";
  auto r = run_baton(d, "run checksum --backend kvm", "BATON_KVM_DEVICE=" + dev);
  CHECK(r.code == 2);
  CHECK(r.out.empty());
  CHECK(r.err == "baton: " + dev +
                     ": No such file or directory — this host has no KVM (no kvm_intel/kvm_amd module "
                     "bound: no VT-x/AMD-V, or a guest without nested virtualization); run on a KVM host\n");
  // A file that is not a KVM device: one line naming it.
  const std::string notkvm = d / "not-kvm";
  { std::ofstream(notkvm) << "x"; }
  auto n = run_baton(d, "run checksum --backend kvm", "BATON_KVM_DEVICE=" + notkvm);
  CHECK(n.code == 2);
  CHECK_THAT(n.err, Catch::StartsWith("baton: " + notkvm + ": KVM_GET_API_VERSION failed"));
  CHECK(n.err.find('\n') == n.err.size() - 1);
}

TEST_CASE("migrate --backend kvm: no KVM gives one clear error line and exit 2", "[cli][kvm-device]") {
  ScratchDir d;
  const std::string dev = d / "no-kvm";
  auto r = run_baton(d, "migrate memtouch --backend kvm --method local-lazy", "BATON_KVM_DEVICE=" + dev);
  CHECK(r.code == 2);
  CHECK(r.out.empty());
  CHECK_THAT(r.err, Catch::StartsWith("baton: " + dev + ": No such file or directory — this host has no KVM"));
  CHECK(r.err.find('\n') == r.err.size() - 1);
}

TEST_CASE("run --backend: unknown backends and sim-only options are refused", "[cli][bad-input]") {
  ScratchDir d;
  auto r = run_baton(d, "run checksum --backend xen");
  CHECK(r.code == 2);
  CHECK(r.err == "baton: --backend 'xen' is not one of sim, kvm\n");
  auto t = run_baton(d, "run checksum --backend kvm --dirty wp");
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
  auto s = run_baton(d, "vmm-worker --fd 3 --spin-before-ms -1");
  CHECK(s.code == 2);
  CHECK(s.err == "baton: --spin-before-ms must be within 0..3600000\n");
  auto m = run_baton(d, "vmm-worker --fd 3 --spin-ms 3600001");
  CHECK(m.code == 2);
  CHECK(m.err == "baton: --spin-ms must be within 0..3600000\n");
}
