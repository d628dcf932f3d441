// Replay comparison (traces/include/baton/traces/replay.hpp): a recording against its replay,
// event by event, with each kind of tampering caught at its index and with its class.
#include <catch2/catch.hpp>

#include "baton/traces/replay.hpp"

using namespace baton::traces;

namespace {

constexpr std::uint16_t kConsole = 0x500, kTag = 0x504, kLo = 0x508, kHi = 0x50C, kSync = 0x510, kInput = 0x514,
                        kExit = 0x518;

// The ABI of the guests, with tag 2 positive and tag 1 zero-iff-zero, as the CLI passes it.
ReplayOptions options(MappingMode m = MappingMode::kNone) {
  ReplayOptions o;
  o.abi.result_tag = kTag;
  o.abi.result_lo = kLo;
  o.abi.result_hi = kHi;
  o.abi.input = kInput;
  o.abi.zero_iff_zero = {1};
  o.abi.positive = {2, 4};
  o.abi.at_most = {{2, 4}};
  o.expected_input = [](std::uint64_t n) -> std::optional<std::uint32_t> { return static_cast<std::uint32_t>(100 + n); };
  o.mapping = m;
  return o;
}

// Appends an OUT with its value.
void out(Trace& t, std::uint16_t port, std::uint64_t v, unsigned size = 4) {
  t.events.push_back(io_event(0, t.events.size(), 0, port, false, size, v));
}
// Appends an IN that read `v`.
void in(Trace& t, std::uint16_t port, std::uint64_t v) { t.events.push_back(io_event(0, t.events.size(), 0, port, true, 4, v)); }
// Appends a result (tag, lo, hi).
void result(Trace& t, std::uint32_t tag, std::uint64_t v) {
  out(t, kTag, tag);
  out(t, kLo, v & 0xffffffffu);
  out(t, kHi, v >> 32);
}
// Appends a sync point as the backends write it (the OUT, then the sync event).
void sync(Trace& t, std::uint32_t stage) {
  out(t, kSync, stage);
  t.events.push_back(sync_event(0, t.events.size(), 0, stage));
}

// A small recording: console bytes, two inputs, a sync point, tsc results, the exit.
Trace recording() {
  Trace t;
  t.header.source = "baton-kvm";
  t.header.guest = "io";
  out(t, kConsole, 'h', 1);
  out(t, kConsole, 'i', 1);
  in(t, kInput, 100);
  in(t, kInput, 101);
  sync(t, 1);
  result(t, 1, 0);          // no backward jump
  result(t, 2, 0x5000);     // forward gap
  result(t, 4, 0x123456);   // elapsed
  result(t, 0, 0xabcdef);   // checksum
  out(t, kExit, 0);
  return t;
}

}  // namespace

TEST_CASE("replay: a recording and its faithful replay do not diverge", "[replay]") {
  const Trace r = recording();
  const ReplayReport rep = compare_replay(r, r, options());
  CHECK_FALSE(rep.divergence.has_value());
  CHECK(rep.inputs == 2);
  CHECK(rep.time_relations == 3);
  CHECK(rep.compared == 19);
}

TEST_CASE("replay: time-derived results are compared by relation, not by value", "[replay][timing]") {
  const Trace r = recording();
  Trace s = recording();
  // Another elapsed time and gap: still positive, gap <= elapsed: no divergence.
  s.events[10].a = 0x7777;    // lo of tag 2
  s.events[13].a = 0x999999;  // lo of tag 4
  CHECK_FALSE(compare_replay(r, s, options()).divergence.has_value());
  // A backward jump on one side only: timing, at the commit of tag 1 (index 8).
  Trace b = recording();
  b.events[7].a = 7;
  auto d = compare_replay(r, b, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kTiming);
  CHECK(d->index == 8u);
  // A gap larger than the elapsed time: timing at the commit of tag 4 (index 14).
  Trace g = recording();
  g.events[13].a = 0x10;
  d = compare_replay(r, g, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kTiming);
  CHECK(d->index == 14u);
  // The checksum (tag 0) is no time value: a changed low half is an output divergence.
  Trace c = recording();
  c.events[16].a = 1;
  d = compare_replay(r, c, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kOutput);
  CHECK(d->index == 16u);
}

TEST_CASE("replay: a changed port value is caught at its index", "[replay][tamper]") {
  const Trace s = recording();
  Trace r = recording();
  r.events[1].a = 'j';  // a console byte
  auto d = compare_replay(r, s, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kOutput);
  CHECK(d->index == 1u);
  CHECK(d->replayed_index == 1u);
  CHECK(d->recorded == "io out port=0x500 size=1 value=0x6a");
  CHECK(d->replayed == "io out port=0x500 size=1 value=0x69");
  REQUIRE(d->context.size() == 1);
  CHECK(d->context[0] == "0: io out port=0x500 size=1 value=0x68");
  // An input the VMM should not have given: input class, even though the replay read the same.
  Trace i = recording();
  i.events[3].a = 555;
  Trace si = recording();
  si.events[3].a = 555;  // the replay is fed the recorded inputs
  d = compare_replay(i, si, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kInput);
  CHECK(d->index == 3u);
}

TEST_CASE("replay: a dropped event and a reordered pair are caught where they happened", "[replay][tamper]") {
  const Trace s = recording();
  Trace r = recording();
  r.events.erase(r.events.begin() + 1);  // drop the 'i'
  auto d = compare_replay(r, s, options()).divergence;
  REQUIRE(d);
  CHECK(d->index == 1u);
  CHECK(d->cls == DivergenceClass::kInput);  // the replay's next event there is the IN
  Trace o = recording();
  std::swap(o.events[0], o.events[1]);
  d = compare_replay(o, s, options()).divergence;
  REQUIRE(d);
  CHECK(d->index == 0u);
  CHECK(d->cls == DivergenceClass::kOutput);
  // A dropped last event: the replay goes on past the end.
  Trace e = recording();
  e.events.pop_back();
  d = compare_replay(e, s, options()).divergence;
  REQUIRE(d);
  CHECK_FALSE(d->index.has_value());
  CHECK(d->replayed_index == s.events.size() - 1);
}

TEST_CASE("replay: mapped frames are compared by inclusion or equality at sync points", "[replay][mapping]") {
  Trace r = recording(), s = recording();
  // Before the sync point (index 4..5): the replay maps gfn 0x10; the recording maps a 2 MiB leaf over it.
  s.events.insert(s.events.begin() + 2, ept_set_event(0, 2, 0x10, 0x9010, 1, 7));
  r.events.insert(r.events.begin() + 2, ept_set_event(0, 2, 0x0, 0x9000, 2, 7));
  auto rep = compare_replay(r, s, options(MappingMode::kInclusion));
  CHECK_FALSE(rep.divergence.has_value());
  CHECK(rep.mapping_checks == 2);
  // Equality refuses the extra frames of the huge leaf: mapping, at the sync event (index 6).
  auto d = compare_replay(r, s, options(MappingMode::kEquality)).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kMapping);
  CHECK(d->index == 6u);
  // A frame the replay maps and the recording does not: a mapping divergence under inclusion too.
  Trace s2 = s;
  s2.events.insert(s2.events.begin() + 3, ept_set_event(0, 3, 0x400, 0x9400, 1, 7));
  d = compare_replay(r, s2, options(MappingMode::kInclusion)).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kMapping);
  CHECK_THAT(d->why, Catch::Contains("gfn 0x400 is mapped in the replay but not in the recording"));
}

TEST_CASE("replay: the migration timeline is compared by its milestones", "[replay][timing]") {
  Trace r = recording(), s = recording();
  for (Trace* t : {&r, &s}) {
    t->events.insert(t->events.begin() + 6, phase_event(0, 6, MigrationPhase::kStart));
    t->events.insert(t->events.begin() + 7, phase_event(0, 7, MigrationPhase::kPause));
    t->events.insert(t->events.begin() + 8, phase_event(0, 8, MigrationPhase::kResume));
  }
  CHECK_FALSE(compare_replay(r, s, options()).divergence.has_value());
  // The recording migrated one guest-visible event later.
  Trace late = r;
  std::rotate(late.events.begin() + 6, late.events.begin() + 9, late.events.begin() + 10);
  auto d = compare_replay(late, s, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kTiming);
  CHECK(d->index == 7u);  // the start, now after one more access
  // A missing resume.
  Trace nores = r;
  nores.events.erase(nores.events.begin() + 8);
  d = compare_replay(nores, s, options()).divergence;
  REQUIRE(d);
  CHECK(d->cls == DivergenceClass::kTiming);
}
