// The isolation replay (traces/include/baton/traces/isolation.hpp): frames shared by two VMs
// at once are caught at the second installing event, unmaps release frames, the declared
// pair may share, and the pair's no-copy relation is checked at the handover.
#include <catch2/catch.hpp>

#include "baton/traces/isolation.hpp"

using namespace baton::traces;

namespace {

Trace with(std::initializer_list<TraceEvent> ev) {
  Trace t;
  t.header.source = "ftrace-import";
  t.header.time_unit = "ns";
  t.events = ev;
  return t;
}

}  // namespace

TEST_CASE("isolation: a frame mapped by two VMs at once is a violation at the second event", "[isolation]") {
  const Trace t = with({ept_set_event(100, 0, 0x10, 0x5000, 1, 7), ept_set_event(200, 1, 0x20, 0x6000, 1, 7),
                        ept_set_event(200, 2, 0x21, 0x5000, 1, 7)});
  auto r = replay_isolation(t, 100);
  REQUIRE(r);
  REQUIRE(r->violation);
  CHECK(r->violation->pfn == 0x5000);
  CHECK(r->violation->vm_a == 100);
  CHECK(r->violation->event_a == 0);
  CHECK(r->violation->vm_b == 200);
  CHECK(r->violation->gfn_b == 0x21);
  CHECK(r->violation->event_b == 2);
  // Inside a 2 MiB leaf: the frame in the middle is found, with its gfn.
  const Trace h = with({ept_set_event(100, 0, 0x200, 0x8000, 2, 7), ept_set_event(200, 1, 0x7, 0x8123, 1, 7)});
  r = replay_isolation(h, 200);
  REQUIRE(r);
  REQUIRE(r->violation);
  CHECK(r->violation->gfn_a == 0x323);
  CHECK(r->violation->pfn == 0x8123);
}

TEST_CASE("isolation: unmaps and zaps release frames, and a VM not watched is not reported", "[isolation]") {
  // VM 100 unmaps gfn 0x10 (a zap of its 2 MiB range) before VM 200 takes the frame.
  const Trace t = with({ept_set_event(100, 0, 0x10, 0x5000, 1, 7), ept_clear_event(100, 1, 0x0, 2),
                        ept_set_event(200, 2, 0x21, 0x5000, 1, 7)});
  auto r = replay_isolation(t, 100);
  REQUIRE(r);
  CHECK_FALSE(r->violation);
  CHECK(r->clears == 1);
  // Two other VMs sharing a frame are not VM 100's business.
  const Trace o = with({ept_set_event(100, 0, 0x1, 0x1000, 1, 7), ept_set_event(200, 1, 0x2, 0x2000, 1, 7),
                        ept_set_event(300, 2, 0x3, 0x2000, 1, 7)});
  r = replay_isolation(o, 100);
  REQUIRE(r);
  CHECK_FALSE(r->violation);
  r = replay_isolation(o, 300);
  REQUIRE(r);
  CHECK(r->violation);
}

TEST_CASE("isolation: the declared pair may share, and no-copy is checked at the handover", "[isolation][pair]") {
  // Source 10 maps gfns 1..3; destination 20 maps 1 and 2 on the same frames, 3 on a copy.
  const Trace t = with({ept_set_event(10, 0, 1, 0x101, 1, 7), ept_set_event(10, 1, 2, 0x102, 1, 7),
                        ept_set_event(10, 2, 3, 0x103, 1, 7), ept_set_event(20, 3, 1, 0x101, 1, 7),
                        ept_set_event(20, 4, 2, 0x102, 1, 7), ept_set_event(20, 5, 3, 0x903, 1, 7)});
  auto without = replay_isolation(t, 10);
  REQUIRE(without);
  REQUIRE(without->violation);  // undeclared sharing
  CHECK(without->violation->event_b == 3);
  auto r = replay_isolation(t, 10, std::make_pair(10u, 20u));
  REQUIRE(r);
  CHECK_FALSE(r->violation);
  REQUIRE(r->handover);
  CHECK(r->handover->event == 3);
  CHECK(r->handover->shared == 3);
  CHECK(r->handover->differing == 1);
  CHECK(r->handover->first_gfn == 3u);
  CHECK(r->handover->dest_pfn == 0x903);
  // A VM without mapping events is an error naming the VMs that have some.
  auto e = replay_isolation(t, 30);
  REQUIRE_FALSE(e);
  CHECK(e.error().message == "--vm 30 has no mapping events in the trace (VMs with some: 10, 20)");
}
