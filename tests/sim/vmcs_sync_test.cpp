// The VMCS stays in sync with the vCPU at every VM exit and stop: after each stop the
// guest-state area equals model::sync_vmcs_guest_state(vcpu_state()) field by field, and the
// exit-information fields describe the last exit (SDM Vol. 3C §28.2.1).
#include <set>

#include "baton/guests/abi.hpp"
#include "baton/model/snapshot.hpp"
#include "baton/model/vmcs.hpp"
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

namespace {

// Checks every field sync_vmcs_guest_state writes against the machine's VMCS; returns the
// number of fields compared.
std::size_t check_guest_state_synced(SimMachine& m) {
  model::Vmcs expected;
  model::sync_vmcs_guest_state(m.vcpu_state(), expected);
  const model::Vmcs& actual = m.hypervisor().vmcs();
  for (const auto& [enc, value] : expected.values()) {
    const model::VmcsField* f = model::find_vmcs_field(enc);
    CAPTURE(f != nullptr ? f->name : "?", enc);
    CHECK(actual.get(enc) == value);
  }
  return expected.values().size();
}

// Exit qualification of a 4-byte OUT DX, EAX (SDM table 28-5): bits 2:0 size - 1, bit 3
// direction (0 = OUT), bit 4 string, bit 5 REP, bit 6 operand encoding (0 = DX), 31:16 port.
constexpr std::uint64_t out_dx_eax_qualification(std::uint16_t port) { return 3u | (std::uint64_t{port} << 16); }

}  // namespace

TEST_CASE("the VMCS guest-state area and exit fields are synced at every sync-point stop", "[sim][vmcs]") {
  const guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  auto m = machine(im);
  CHECK(check_guest_state_synced(*m) >= 40);  // right after load, before any exit
  const std::uint64_t entry_rip = m->vcpu_state().rip;
  for (std::uint32_t k = 1; k <= 4; ++k) {
    CAPTURE(k);
    RunLimits l;
    l.budget = 2'000'000'000;
    l.sync = k;
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    check_guest_state_synced(*m);
    const model::Vmcs& v = m->hypervisor().vmcs();
    CHECK(v.get(model::vmcs::kExitReason) == static_cast<std::uint64_t>(ExitReason::kIo));
    CHECK(v.get(model::vmcs::kExitQualification) == out_dx_eax_qualification(guests::kPortSync));
    CHECK(v.get(model::vmcs::kExitQualification) == 0x05100003u);
    CHECK(v.get(model::vmcs::kGuestPhysicalAddress) == 0u);
    // The guest moved on: a VMCS synced only at load would still hold the entry RIP (every
    // stage is announced by the same OUT, so the RIP of later stops is the same).
    CHECK(v.get_or_zero(model::vmcs::kGuestRip) != entry_rip);
  }
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  check_guest_state_synced(*m);
  const model::Vmcs& v = m->hypervisor().vmcs();
  CHECK(v.get(model::vmcs::kExitReason) == static_cast<std::uint64_t>(ExitReason::kIo));
  CHECK(v.get(model::vmcs::kExitQualification) == out_dx_eax_qualification(guests::kPortExit));
}

TEST_CASE("the VMCS is synced at instruction-limit stops, between exits of every kind", "[sim][vmcs]") {
  // mixed: EPT violations, port I/O and RDTSC; stops at instruction limits fall between exits.
  const guests::GuestImage im = image("mixed", 64u << 20, guests::PageSize::k4K);
  auto m = machine(im);
  std::uint64_t stops = 0, exits_before = 0;
  std::set<std::uint64_t> rips;
  for (std::uint64_t at = 1000;; at *= 3) {
    CAPTURE(at);
    RunLimits l;
    l.budget = 2'000'000'000;
    l.until_insn = at;
    const RunEvent e = m->run(l);
    if (e.reason == StopReason::kExited) break;
    REQUIRE(e.reason == StopReason::kInsnLimit);
    ++stops;
    check_guest_state_synced(*m);
    const SimStats st = m->stats();
    std::uint64_t exits = 0;
    for (const auto& [r, n] : st.exits) exits += n;
    if (exits > exits_before) {
      // The exit reason is that of some exit taken so far.
      const auto reason = static_cast<ExitReason>(m->hypervisor().vmcs().get_or_zero(model::vmcs::kExitReason));
      CHECK(st.exits.count(reason) == 1);
    }
    exits_before = exits;
    rips.insert(m->hypervisor().vmcs().get_or_zero(model::vmcs::kGuestRip));
  }
  CHECK(stops >= 5);
  CHECK(rips.size() >= 3);
  check_guest_state_synced(*m);
}

TEST_CASE("a snapshot, a restored instance and a torn-down one see the synced guest state", "[sim][vmcs]") {
  const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K);
  auto m = machine(im);
  RunLimits l;
  l.budget = 2'000'000'000;
  l.sync = 1;
  REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
  auto snap = m->snapshot();
  REQUIRE(snap.ok());
  model::Vmcs expected;
  model::sync_vmcs_guest_state(m->vcpu_state(), expected);
  for (const auto& [enc, value] : expected.values()) {
    CAPTURE(enc);
    CHECK(snap->vmcs.get(enc) == value);
  }
  auto r = SimMachine::restore(*snap, m->host(), SimConfig{}, true);
  REQUIRE(r.ok());
  check_guest_state_synced(**r);
  CHECK((*r)->hypervisor().vmcs().get(model::vmcs::kGuestRip) == snap->vmcs.get(model::vmcs::kGuestRip));
  l.sync = 2;
  REQUIRE((*r)->run(l).reason == StopReason::kSyncPoint);
  const model::VcpuState at_stop = (*r)->vcpu_state();
  (void)(*r)->teardown(false);  // the VMCS keeps the state of the last stop
  CHECK((*r)->hypervisor().vmcs().get(model::vmcs::kGuestRip) == at_stop.rip);
  CHECK((*r)->hypervisor().vmcs().get(model::vmcs::kGuestRsp) == at_stop.gpr[model::VcpuState::kRsp]);
}
