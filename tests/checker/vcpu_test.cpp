// Property 6: vCPU/VMCS equivalence with declared allowed differences, and the relational TSC proof.
#include <catch2/catch.hpp>

#include "baton/checker/check.hpp"
#include "fixtures.hpp"

using namespace baton;
using namespace baton::testing;
using checker::Verdict;

namespace {
// A before/after pair of identical snapshots around one small tree.
struct Pair {
  Tree tree = contiguous_tree(2 * kMiB, 1);
  model::HandoverSnapshot before = snapshot_of(tree, 2 * kMiB);
  model::HandoverSnapshot after = snapshot_of(tree, 2 * kMiB);
};
// Runs the vCPU property and requires a result.
checker::PropertyResult vcpu(const Pair& p, Verdict trees = Verdict::kProven) {
  auto r = checker::check_vcpu(p.before, p.after, trees);
  INFO((r ? "" : r.error().message));
  REQUIRE(r.ok());
  CAPTURE(r->summary);
  return std::move(r).value();
}
// Moves the host clock forward by `gap` cycles at the after capture and compensates the offset.
void advance_host(Pair& p, std::uint64_t gap, std::uint64_t error = 0) {
  model::VcpuState& v = p.after.vcpus[0];
  v.host_tsc_at_capture += gap;
  v.tsc_offset = v.tsc_offset - gap + error;
  p.after.vmcs.set(model::vmcs::kTscOffset, v.tsc_offset);
}
}  // namespace

TEST_CASE("Identical vCPU states with the same EPTP are proven", "[checker][vcpu]") {
  Pair p;
  CHECK(vcpu(p).verdict == Verdict::kProven);
}

TEST_CASE("A TSC offset lowered by exactly the host-time gap is proven continuous", "[checker][vcpu]") {
  Pair p;
  advance_host(p, 987'654'321);
  const auto r = vcpu(p);
  CHECK(r.verdict == Verdict::kProven);
  CHECK(r.summary.find("guest TSC continuous") != std::string::npos);
  // The same gap with the offset lowered one cycle too far (the guest TSC steps back) is not.
  Pair q;
  advance_host(q, 987'654'321, std::uint64_t{0} - 1);
  const auto back = vcpu(q);
  REQUIRE(back.verdict == Verdict::kRefuted);
  CHECK(back.counterexample->field == "vcpu0.tsc_offset");
}

TEST_CASE("TSC continuity is proven across a 64-bit wrap of the offset and of the host TSC", "[checker][vcpu]") {
  Pair p;
  p.before.vcpus[0].host_tsc_at_capture = ~std::uint64_t{0} - 100;
  p.before.vcpus[0].tsc_offset = 50;
  p.after.vcpus[0] = p.before.vcpus[0];
  p.before.vmcs.set(model::vmcs::kTscOffset, 50);
  advance_host(p, 1000);  // host wraps to 899; the offset goes below zero
  CHECK(vcpu(p).verdict == Verdict::kProven);
  // Across the same wrap, an offset that compensates one cycle less than the gap is refuted:
  // the relation is modular, not a comparison that the wrap could fool.
  p.after.vcpus[0].tsc_offset += 1;
  p.after.vmcs.set(model::vmcs::kTscOffset, p.after.vcpus[0].tsc_offset);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "vcpu0.tsc_offset");
  CHECK(r.counterexample->confirmed_concretely);
}

TEST_CASE("A TSC offset off by one cycle is refuted, naming the TSC offset", "[checker][vcpu]") {
  Pair p;
  advance_host(p, 5000, 1);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "vcpu0.tsc_offset");
  CHECK(r.counterexample->confirmed_concretely);
}

TEST_CASE("A stale VMCS TSC offset (0x2010) is refuted even when the vCPU's offset is right", "[checker][vcpu]") {
  Pair p;
  advance_host(p, 5000);
  p.after.vmcs.set(model::vmcs::kTscOffset, *p.before.vmcs.get(model::vmcs::kTscOffset));  // not adjusted
  REQUIRE(p.after.vcpus[0].tsc_offset != *p.after.vmcs.get(model::vmcs::kTscOffset));
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "vmcs.tsc_offset (0x2010)");
  CHECK(r.counterexample->confirmed_concretely);
  // And the other way round: the VMCS field adjusted, the vCPU's offset stale.
  Pair q;
  advance_host(q, 5000);
  q.after.vcpus[0].tsc_offset = q.before.vcpus[0].tsc_offset;
  const auto s = vcpu(q);
  REQUIRE(s.verdict == Verdict::kRefuted);
  CHECK(s.counterexample->field == "vcpu0.tsc_offset");
}

TEST_CASE("A VMCS TSC offset adjusted by the gap while the vCPU's differs from it is judged on the VMCS value",
          "[checker][vcpu]") {
  // The VMCS field starts from its own value (not the vCPU's): it must move by minus the gap.
  Pair p;
  p.before.vmcs.set(model::vmcs::kTscOffset, 0x1000);
  p.after.vmcs.set(model::vmcs::kTscOffset, 0x1000);
  advance_host(p, 300);  // sets the after VMCS field to the vCPU's new offset
  p.after.vmcs.set(model::vmcs::kTscOffset, 0x1000 - 300);
  CHECK(vcpu(p).verdict == Verdict::kProven);
  p.after.vmcs.set(model::vmcs::kTscOffset, 0x1000 - 299);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "vmcs.tsc_offset (0x2010)");
}

TEST_CASE("A TSC offset left unchanged while host time moved on is refuted", "[checker][vcpu]") {
  Pair p;
  p.after.vcpus[0].host_tsc_at_capture += 1'000'000;
  CHECK(vcpu(p).verdict == Verdict::kRefuted);
}

TEST_CASE("A changed guest register is refuted, naming the register", "[checker][vcpu]") {
  Pair p;
  p.after.vcpus[0].gpr[model::VcpuState::kRbx] ^= 0x10;
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "vcpu0.rbx");
  CHECK(r.counterexample->before == "0x0");
  CHECK(r.counterexample->after == "0x10");
}

TEST_CASE("A dropped MSR is refuted", "[checker][vcpu]") {
  Pair p;
  p.after.vcpus[0].msrs.erase(model::kMsrPat);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field.find("msr[0x277]") != std::string::npos);
}

TEST_CASE("A changed host-state VMCS field is allowed", "[checker][vcpu]") {
  Pair p;
  p.after.vmcs.set(model::vmcs::kHostRip, 0xFFFFFFFFA0000000ull);
  p.after.vmcs.set(model::vmcs::kHostCr3, 0x7000);
  CHECK(vcpu(p).verdict == Verdict::kProven);
}

TEST_CASE("A changed guest-state VMCS field is refuted", "[checker][vcpu]") {
  Pair p;
  p.after.vmcs.set(model::vmcs::kGuestRip, 0x401002);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field.find("0x681e") != std::string::npos);
}

TEST_CASE("A different EPTP root is allowed only when the trees are proven equivalent", "[checker][vcpu]") {
  Pair p;
  p.after.eptp = model::Eptp::make(model::Hfn{p.before.eptp.root().value + 77}, true);
  CHECK(vcpu(p, Verdict::kProven).verdict == Verdict::kProven);
  const auto refuted = vcpu(p, Verdict::kRefuted);
  REQUIRE(refuted.verdict == Verdict::kRefuted);
  CHECK(refuted.counterexample->field == "eptp.root");
  const auto unknown = vcpu(p, Verdict::kUnknown);
  CHECK(unknown.verdict == Verdict::kUnknown);
  CHECK(unknown.unknown_reason.find("unknown") != std::string::npos);
}

TEST_CASE("A changed EPTP memory type is refuted even with equivalent trees", "[checker][vcpu]") {
  Pair p;
  p.after.eptp = model::Eptp::make(p.before.eptp.root(), true, 0);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "eptp.flags");
}

TEST_CASE("A missing vCPU is refuted", "[checker][vcpu]") {
  Pair p;
  p.before.vcpus.push_back(p.before.vcpus[0]);
  const auto r = vcpu(p);
  REQUIRE(r.verdict == Verdict::kRefuted);
  CHECK(r.counterexample->field == "vcpus.count");
}
