// `baton replay` of simulator-written traces end to end: a faithful trace replays without a
// divergence, and each kind of tampering (a changed port value, a changed input, a dropped
// event, a reordered pair, a wrong image hash) is reported at its index with its class.
// The KVM side (every guest recorded on KVM, then replayed) is in replay_kvm_test.cpp.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "baton/traces/trace.hpp"
#include "cli_run.hpp"

using baton::test::CliResult;
using baton::test::run_baton;
using baton::test::ScratchDir;
using nlohmann::json;
namespace tr = baton::traces;

namespace {

// Parses stdout as JSON; fails the test with both streams when it is not.
json parsed(const CliResult& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  json j;
  REQUIRE_NOTHROW(j = json::parse(r.out));
  return j;
}

// Reads a trace or fails the test.
tr::Trace load(const std::string& path) {
  auto t = tr::read_trace(path);
  REQUIRE(t);
  return *t;
}

// Writes a tampered trace and replays it; returns the JSON report (exit code must be 1).
json replay_tampered(const ScratchDir& d, const tr::Trace& t, const std::string& name) {
  REQUIRE(tr::write_trace(d / name, t, true));
  auto r = run_baton(d, "replay " + (d / name) + " --json");
  INFO(r.err);
  CHECK(r.code == 1);
  const json j = parsed(r);
  CHECK(j.at("diverged") == true);
  return j;
}

// Index of the n-th event (from 0) that is an io of this direction.
std::size_t nth_io(const tr::Trace& t, std::size_t n, bool in) {
  for (std::size_t i = 0; i < t.events.size(); ++i)
    if (t.events[i].type == tr::EventType::kIo && ((t.events[i].flags & tr::kAccessIn) != 0) == in && n-- == 0) return i;
  FAIL("no such io event");
  return 0;
}

// Index of the first guest-visible event (io or sync) at or after `i`.
std::size_t next_visible(const tr::Trace& t, std::size_t i) {
  while (i < t.events.size() && t.events[i].type != tr::EventType::kIo && t.events[i].type != tr::EventType::kSync) ++i;
  return i;
}

}  // namespace

TEST_CASE("replay: a simulator trace replays without a divergence", "[cli][replay]") {
  ScratchDir d;
  REQUIRE(run_baton(d, "run io --param count=64 --trace " + (d / "io.trc")).code == 0);
  auto r = run_baton(d, "replay " + (d / "io.trc") + " --json");
  INFO(r.err);
  CHECK(r.code == 0);
  const json j = parsed(r);
  CHECK(j.at("diverged") == false);
  CHECK(j.at("inputs_checked") == 64);
  CHECK(j.at("mapping") == "equality");
  CHECK(j.at("compared").get<std::size_t>() > 64);
  // The text report says so in one line.
  auto t = run_baton(d, "replay " + (d / "io.trc"));
  CHECK(t.code == 0);
  CHECK_THAT(t.out, Catch::Contains("result       no divergence"));
}

TEST_CASE("replay: tampered traces are caught at the right index with the right class", "[cli][replay][tamper]") {
  ScratchDir d;
  REQUIRE(run_baton(d, "run io --param count=64 --trace " + (d / "io.trc")).code == 0);
  const tr::Trace base = load(d / "io.trc");

  SECTION("a changed port value (a console byte): guest-visible output at that event") {
    tr::Trace t = base;
    const std::size_t i = nth_io(t, 3, false);
    t.events[i].a ^= 0x20;
    const json j = replay_tampered(d, t, "value.trc");
    CHECK(j.at("divergence").at("class") == "guest-visible output");
    CHECK(j.at("divergence").at("index") == i);
    CHECK(j.at("divergence").at("context").size() == 5);
  }
  SECTION("a changed input value: input at that event") {
    tr::Trace t = base;
    const std::size_t i = nth_io(t, 5, true);
    t.events[i].a += 1;
    const json j = replay_tampered(d, t, "input.trc");
    CHECK(j.at("divergence").at("class") == "input");
    CHECK(j.at("divergence").at("index") == i);
    CHECK_THAT(j.at("divergence").at("why").get<std::string>(), Catch::Contains("input number 5"));
  }
  SECTION("a dropped event: at the first guest-visible event after the gap") {
    tr::Trace t = base;
    const std::size_t i = nth_io(t, 2, false);
    t.events.erase(t.events.begin() + static_cast<long>(i));
    const json j = replay_tampered(d, t, "dropped.trc");
    CHECK(j.at("divergence").at("index") == next_visible(t, i));
    CHECK(j.at("divergence").at("class") == "guest-visible output");
  }
  SECTION("a reordered pair: at the first of the two") {
    tr::Trace t = base;
    const std::size_t i = nth_io(t, 0, false), k = nth_io(t, 1, false);
    REQUIRE(t.events[i].a != t.events[k].a);
    std::swap(t.events[i], t.events[k]);
    const json j = replay_tampered(d, t, "reordered.trc");
    CHECK(j.at("divergence").at("index") == i);
    CHECK(j.at("divergence").at("class") == "guest-visible output");
  }
  SECTION("a wrong image hash: input, at the header") {
    tr::Trace t = base;
    t.header.meta["image_hash"] = "fnv1a64:0000000000000000";
    const json j = replay_tampered(d, t, "hash.trc");
    CHECK(j.at("divergence").at("class") == "input");
    CHECK(j.at("divergence").at("where") == "header");
    CHECK(j.at("divergence").at("index").is_null());
  }
}

TEST_CASE("replay: a migrated simulator run replays with its timeline", "[cli][replay][migrate]") {
  ScratchDir d;
  REQUIRE(run_baton(d, "migrate io --param count=64 --method local-lazy --trace " + (d / "m.trc")).code == 0);
  auto r = run_baton(d, "replay " + (d / "m.trc") + " --json");
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  const json j = parsed(r);
  CHECK(j.at("timeline_milestones") == 4);  // start, pause, resume, done
}

TEST_CASE("replay: bad input is one line and exit 2", "[cli][replay][bad-input]") {
  ScratchDir d;
  auto r = run_baton(d, "replay " + (d / "missing.trc"));
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::StartsWith("baton: "));
  CHECK(r.err.find('\n') == r.err.size() - 1);
  tr::Trace t;
  t.header.source = "ftrace-import";
  t.header.time_unit = "ns";
  REQUIRE(tr::write_trace(d / "foreign.trc", t));
  auto f = run_baton(d, "replay " + (d / "foreign.trc"));
  CHECK(f.code == 2);
  CHECK_THAT(f.err, Catch::Contains("replay a foreign capture with --vm PID"));
}

TEST_CASE("replay --vm: a foreign capture replays with the isolation check", "[cli][replay][foreign]") {
  ScratchDir d;
  const std::string data = BATON_CHECKER_DATA_DIR;
  // A local migration: the source (4242) and the worker (4300) share frames; declared, it holds.
  auto ok = run_baton(d, "replay " + data + "/nocopy-local.txt --vm 4242 --pair 4242:4300 --json");
  INFO(ok.err);
  CHECK(ok.code == 0);
  json j = parsed(ok);
  CHECK(j.at("verdict") == "holds");
  CHECK(j.at("handover").at("shared") == 4);
  CHECK(j.at("handover").at("differing") == 0);
  CHECK(j.at("import").at("malformed_lines") == 0);
  // Undeclared, the same sharing is a violation at the worker's first install of a source frame.
  auto bad = run_baton(d, "replay " + data + "/nocopy-local.txt --vm 4242 --json");
  CHECK(bad.code == 1);
  j = parsed(bad);
  CHECK(j.at("verdict") == "violated");
  CHECK(j.at("violation").at("pfn") == "0x1a2b01");
  CHECK(j.at("violation").at("first").at("vm") == 4242);
  CHECK(j.at("violation").at("first").at("event") == 3);
  CHECK(j.at("violation").at("second").at("vm") == 4300);
  CHECK(j.at("violation").at("second").at("event") == 21);
  // One gfn copied to another frame: no-copy fails at the handover.
  auto diff = run_baton(d, "replay " + data + "/nocopy-onediff.txt --vm 4242 --pair 4242:4300 --json");
  CHECK(diff.code == 1);
  j = parsed(diff);
  CHECK(j.at("handover").at("differing") == 1);
  CHECK(j.at("handover").at("first_differing").at("gfn") == "0x402");
}

TEST_CASE("replay --vm: malformed lines are counted and make a clean replay inconclusive", "[cli][replay][foreign]") {
  ScratchDir d;
  auto r = run_baton(d, "replay " + std::string(BATON_TRACES_DATA_DIR) + "/malformed.txt --vm 4242 --json");
  CHECK(r.code == 2);
  const json j = parsed(r);
  CHECK(j.at("verdict") == "inconclusive");
  CHECK(j.at("import").at("malformed_lines") == 7);
  CHECK(j.at("import").at("unknown_lines") == 3);
  CHECK(j.at("import").at("lost_events") == 17);
  CHECK(j.at("import").at("samples").size() == 5);
  // A VM that has no mapping events, and a pair without --vm in it: one line, exit 2.
  auto none = run_baton(d, "replay " + std::string(BATON_TRACES_DATA_DIR) + "/malformed.txt --vm 1");
  CHECK(none.code == 2);
  CHECK(none.err == "baton: --vm 1 has no mapping events in the trace (VMs with some: 4242)\n");
  auto pair = run_baton(d, "replay " + std::string(BATON_TRACES_DATA_DIR) + "/malformed.txt --vm 1 --pair 2:3");
  CHECK(pair.code == 2);
  CHECK(pair.err == "baton: --pair 2:3 does not include --vm 1\n");
}
