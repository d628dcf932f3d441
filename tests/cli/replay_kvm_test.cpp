// `baton replay` of KVM traces: every built-in guest recorded with `run --backend kvm --trace`
// replays in the simulator without a divergence, and so does a migrated run. Part of the kvm
// suite (on /dev/kvm where it works, in the nested KVM host elsewhere).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "baton/traces/trace.hpp"
#include "cli_run.hpp"

using baton::test::CliResult;
using baton::test::run_baton;
using baton::test::ScratchDir;
using nlohmann::json;

namespace {

// Parses stdout as JSON; fails the test with both streams when it is not.
json parsed(const CliResult& r) {
  INFO("stdout: " << r.out << "\nstderr: " << r.err);
  json j;
  REQUIRE_NOTHROW(j = json::parse(r.out));
  return j;
}

}  // namespace

TEST_CASE("replay: every built-in guest recorded on KVM replays in the simulator without a divergence",
          "[kvm][replay]") {
  ScratchDir d;
  for (const char* g : {"memtouch", "checksum", "pagewalk", "io", "tsc", "mixed"}) {
    CAPTURE(g);
    const std::string trc = d / (std::string(g) + ".trc");
    auto run = run_baton(d, std::string("run ") + g + " --backend kvm --trace " + trc);
    INFO(run.out << run.err);
    REQUIRE(run.code == 0);
    auto r = run_baton(d, "replay " + trc + " --json");
    const json j = parsed(r);
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(j.at("source") == "baton-kvm");
    CHECK(j.at("diverged") == false);
    CHECK(j.at("compared").get<std::size_t>() > 10);
    if (std::string(g) == "tsc") CHECK(j.at("time_relations") == 4);
    if (std::string(g) == "io") CHECK(j.at("inputs_checked").get<std::size_t>() > 0);
  }
}

TEST_CASE("replay: a tampered KVM trace diverges at the tampered event", "[kvm][replay][tamper]") {
  ScratchDir d;
  REQUIRE(run_baton(d, "run io --param count=64 --backend kvm --trace " + (d / "io.trc")).code == 0);
  auto t = baton::traces::read_trace(d / "io.trc");
  REQUIRE(t);
  // The 4th OUT the VMM saw gets another value.
  std::size_t i = 0, outs = 0;
  for (; i < t->events.size(); ++i)
    if (t->events[i].type == baton::traces::EventType::kIo && (t->events[i].flags & baton::traces::kAccessIn) == 0 &&
        outs++ == 3)
      break;
  REQUIRE(i < t->events.size());
  t->events[i].a ^= 0x20;
  REQUIRE(baton::traces::write_trace(d / "tampered.trc", *t));
  auto r = run_baton(d, "replay " + (d / "tampered.trc") + " --json");
  const json j = parsed(r);
  CHECK(r.code == 1);
  CHECK(j.at("divergence").at("index") == i);
  CHECK(j.at("divergence").at("class") == "guest-visible output");
}

TEST_CASE("replay: a run migrated on KVM replays up to the handover; the simulator's re-announced sync point is the one divergence",
          "[kvm][replay][migrate]") {
  // Known simulator divergence (reported by this replay, not hidden): a simulator migration at a
  // sync point resumes the new instance at the OUT that announced it (Unicorn stops inside the
  // I/O hook with RIP on the instruction), so the replay announces sync point 1 again after the
  // resume; KVM completes the I/O before the state is captured (hw::KvmMachine::capture), so the
  // recording goes on with sync point 2. Until the simulator completes the I/O too, the replay of
  // a migrated KVM run must agree up to the resume and diverge exactly there.
  ScratchDir d;
  const std::string trc = d / "m.trc";
  auto m = run_baton(d, "migrate io --param count=256 --backend kvm --method local-lazy --trace " + trc);
  INFO(m.out << m.err);
  REQUIRE(m.code == 0);
  auto r = run_baton(d, "replay " + trc + " --json");
  const json j = parsed(r);
  INFO(r.out);
  REQUIRE(r.code == 1);
  const json& x = j.at("divergence");
  CHECK(x.at("class") == "guest-visible output");
  CHECK(x.at("recorded") == "io out port=0x510 size=4 value=0x2");
  CHECK(x.at("replayed") == "io out port=0x510 size=4 value=0x1");
  // Everything before it agreed: the sequence up to the migration point, the inputs, the resume.
  CHECK(j.at("compared").get<std::size_t>() > 256);
  bool resumed_before = false;
  for (const json& c : x.at("context")) resumed_before |= c.get<std::string>().find("phase=resume") != std::string::npos;
  CHECK(resumed_before);
}
