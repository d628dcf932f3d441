// A stop at an I/O exit hands over the state after the IN or OUT retired. The SDM's I/O
// exit leaves the VMM to complete the instruction (IN's value into the register, RIP plus the
// VM-exit instruction length); KVM does so before its state can be saved (the note under
// KVM_EXIT_IO in the KVM API documentation). So a migration at a sync point never makes the
// new instance repeat the OUT that announced it: each sync stage appears once in the trace.
#include <cstdio>

#include "baton/guests/abi.hpp"
#include "baton/guests/ports.hpp"
#include "baton/guests/registry.hpp"
#include "baton/sim/migration.hpp"
#include "baton/traces/trace.hpp"
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

namespace {

// Returns the length of the IN or OUT whose opcode starts at `op`, 0 for anything else.
unsigned io_length(const std::vector<std::uint8_t>& op) {
  if (op.empty()) return 0;
  switch (op[0]) {
    case 0xEC: case 0xED: case 0xEE: case 0xEF: return 1;  // IN/OUT with DX
    case 0xE4: case 0xE5: case 0xE6: case 0xE7: return 2;  // IN/OUT with an immediate port
    default: return 0;
  }
}

// The sync stages a trace announces, in order.
std::vector<std::uint32_t> trace_stages(const traces::Trace& t) {
  std::vector<std::uint32_t> s;
  for (const traces::TraceEvent& e : t.events)
    if (e.type == traces::EventType::kSync) s.push_back(static_cast<std::uint32_t>(e.a));
  return s;
}

}  // namespace

TEST_CASE("a run stopped at a sync point stands after the OUT, which retired", "[sim][io]") {
  const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K);
  auto whole = machine(im);
  REQUIRE(run_all(*whole).reason == StopReason::kExited);
  for (std::uint32_t k : {1u, 2u, 3u}) {
    CAPTURE(k);
    auto m = machine(im);
    RunLimits l;
    l.budget = 2'000'000'000;
    l.sync = k;
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    const model::VcpuState st = m->vcpu_state();
    // The byte before RIP is the one-byte "out dx, eax" of the sync port, and the VMCS agrees.
    const std::vector<std::uint8_t> before = m->read_guest(model::Gpa{st.rip - 1}, 1);
    REQUIRE(before.size() == 1);
    CHECK(before[0] == 0xEF);
    CHECK(io_length(before) == 1);
    CHECK(m->hypervisor().vmcs().get_or_zero(model::vmcs::kGuestRip) == st.rip);
    CHECK(m->output().stages.back() == k);
    // Continuing in place and from a snapshot both announce k + 1 next, never k again.
    auto snap = m->snapshot();
    REQUIRE(snap.ok());
    auto second = SimMachine::restore(*snap, m->host(), SimConfig{}, true);
    if (!second) FAIL(second.error().message);
    REQUIRE(run_all(**second).reason == StopReason::kExited);
    REQUIRE_FALSE((*second)->output().stages.empty());
    CHECK((*second)->output().stages.front() == k + 1);
    std::vector<std::uint32_t> joined = m->output().stages;
    for (std::uint32_t s : (*second)->output().stages) joined.push_back(s);
    CHECK(joined == whole->output().stages);
    CHECK((*second)->instructions() == whole->instructions());
    auto in_place = machine(im);  // (the second instance shares the first's memory)
    REQUIRE(in_place->run(l).reason == StopReason::kSyncPoint);
    REQUIRE(run_all(*in_place).reason == StopReason::kExited);
    CHECK(in_place->output().stages == whole->output().stages);
    CHECK(in_place->instructions() == whole->instructions());
  }
}

TEST_CASE("a run stopped at an IN has the input in EAX and RIP past the IN", "[sim][io]") {
  const guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  auto whole = machine(im);
  REQUIRE(run_all(*whole).reason == StopReason::kExited);
  REQUIRE(whole->output().inputs >= 2);
  auto m = machine(im);
  RunLimits l;
  l.budget = 2'000'000'000;
  l.port = static_cast<std::uint16_t>(guests::kPortInput);
  REQUIRE(m->run(l).reason == StopReason::kPort);
  CHECK(m->output().inputs == 1);
  const model::VcpuState st = m->vcpu_state();
  const std::vector<std::uint8_t> before = m->read_guest(model::Gpa{st.rip - 1}, 1);
  REQUIRE(before.size() == 1);
  CHECK(before[0] == 0xED);  // in eax, dx
  // RAX holds the first input of the image's sequence, zero-extended (a 32-bit IN).
  guests::PortRecorder inputs(im);
  const guests::PortEvent first = inputs.in(guests::kPortInput, 4);
  REQUIRE(first.kind == guests::PortEventKind::kInput);
  CHECK(st.gpr[0] == first.value);
  // Continuing reads each input once: same inputs, same checksum, same instruction count.
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  CHECK(m->output().inputs == whole->output().inputs);
  CHECK(m->output().checksum() == whole->output().checksum());
  CHECK(m->instructions() == whole->instructions());
}

TEST_CASE("every method hands over after the sync point's OUT: each stage once in the trace", "[sim][io][migration][trace]") {
  for (const char* g : {"memtouch", "io", "mixed"})
    for (Method meth : kAllMethods)
      for (std::uint32_t k : {1u, 2u}) {
        CAPTURE(g, to_string(meth), k);
        const guests::GuestImage im = image(g, 64u << 20, guests::PageSize::k4K);
        auto ref = guests::reference_run(g, im.params);
        REQUIRE(ref.ok());
        if (ref->stages.size() < k) continue;
        const std::string path = std::string("handover_io_test_") + g + ".trace";
        std::remove(path.c_str());
        SimConfig cfg;
        cfg.guest_name = g;
        cfg.trace_path = path;
        MigrationOptions o;
        o.method = meth;
        o.at_sync = k;
        o.reference = false;
        o.slowdown_window = 10'000;
        auto r = migrate(im, cfg, o);
        if (!r) FAIL(r.error().message);
        REQUIRE(r->switched);
        CHECK(r->checksum_ok());
        auto t = traces::read_trace(path);
        if (!t) FAIL(t.error().message);
        // Each stage exactly once, in order, as the unmigrated reference announces them.
        CHECK(trace_stages(*t) == ref->stages);
        // The handed-over RIP is the one the old instance stopped at.
        REQUIRE_FALSE(r->before.vcpus.empty());
        REQUIRE_FALSE(r->after.vcpus.empty());
        CHECK(r->after.vcpus[0].rip == r->before.vcpus[0].rip);
        if (meth != Method::kPrecopy) {
          // Paused at the sync exit itself: RIP is the OUT's address (the trace's last I/O
          // exit) plus its length.
          std::uint64_t out_rip = 0;
          for (const traces::TraceEvent& e : t->events) {
            if (e.type == traces::EventType::kMigrationPhase) break;
            if (e.type == traces::EventType::kExit && e.code == static_cast<std::uint32_t>(ExitReason::kIo)) out_rip = e.c;
          }
          REQUIRE(out_rip != 0);
          CHECK(r->after.vcpus[0].rip == out_rip + 1);
          CHECK(r->at_stage == k);
        }
        std::remove(path.c_str());
      }
}
