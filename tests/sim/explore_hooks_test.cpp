// The simulator hooks baton explore stands on: a run that stops on a port (RunLimits::port),
// a fault planted in a running VM (plant_source_fault), determinism of a replayed run, and a
// migration whose source is brought to the point by the caller (SourcePrep).
#include <catch2/catch.hpp>

#include "baton/guests/abi.hpp"
#include "baton/model/ept_walk.hpp"
#include "baton/sim/migration.hpp"
#include "sim_fixtures.hpp"

namespace baton::sim {
namespace {

using test::image;
using test::machine;

constexpr std::uint64_t kMem = 64ull << 20;

TEST_CASE("RunLimits::port stops right after the first access to that port", "[sim][explore]") {
  const auto im = image("memtouch", kMem, guests::PageSize::k4K);
  auto m = machine(im);
  RunLimits l;
  l.budget = 2'000'000'000;
  l.port = guests::kPortConsole;
  const RunEvent e = m->run(l);
  CHECK(e.reason == StopReason::kPort);
  CHECK(std::string(to_string(e.reason)) == "port");
  CHECK_THAT(e.detail, Catch::StartsWith("OUT port "));
  CHECK(m->output().console.size() == 1);  // one byte, not the line
  // A port the guest never touches does not stop it: it runs to its exit.
  auto n = machine(im);
  RunLimits k = l;
  k.port = 0x1234;
  CHECK(n->run(k).reason == StopReason::kExited);
  // The exit wins over a port stop on the exit port.
  auto x = machine(im);
  RunLimits p = l;
  p.port = guests::kPortExit;
  CHECK(x->run(p).reason == StopReason::kExited);
}

TEST_CASE("plant_source_fault flips the leaf of a running VM; a replay reaches the same state", "[sim][explore]") {
  const auto im = image("memtouch", kMem, guests::PageSize::k4K);
  auto a = machine(im), b = machine(im);
  RunLimits to1;
  to1.budget = 2'000'000'000;
  to1.sync = 1;
  REQUIRE(a->run(to1).reason == StopReason::kSyncPoint);
  auto f = parse_fault("ept:0x400000");
  REQUIRE(f);
  const model::WalkResult before = a->hypervisor().walk(model::Gpa{0x400000}, model::Access::kRead);
  REQUIRE(before.translated());
  auto d = plant_source_fault(*a, *f);
  REQUIRE(d);
  CHECK_THAT(*d, Catch::Contains("EPT leaf of GPA 0x400000 (level 1) bit 12"));
  const model::WalkResult after = a->hypervisor().walk(model::Gpa{0x400000}, model::Access::kRead);
  CHECK(after.hpa.value == before.hpa.value + 0x1000);
  // A package fault is not planted in the running VM.
  auto ms = parse_fault("memslot:0:size");
  REQUIRE(ms);
  auto none = plant_source_fault(*a, *ms);
  REQUIRE(none);
  CHECK(none->empty());
  // The same runs and the same fault on a second VM: the same instructions and vCPU state.
  RunLimits chunk;
  chunk.until_insn = 200'000;
  (void)a->run(chunk);
  REQUIRE(b->run(to1).reason == StopReason::kSyncPoint);
  REQUIRE(plant_source_fault(*b, *f));
  (void)b->run(chunk);
  CHECK(a->instructions() == b->instructions());
  CHECK(a->vcpu_state() == b->vcpu_state());
}

TEST_CASE("migrate with a SourcePrep starts from the caller's state", "[sim][explore]") {
  const auto im = image("memtouch", kMem, guests::PageSize::k4K);
  SimConfig cfg;
  cfg.guest_name = "memtouch";
  MigrationOptions opt;
  opt.method = Method::kAdopt;
  opt.reference = false;
  auto plain = migrate(im, cfg, opt);
  REQUIRE(plain);
  bool called = false;
  auto prep = [&](SimMachine& m) -> Result<RunEvent> {
    called = true;
    RunLimits l;
    l.budget = 2'000'000'000;
    l.sync = 1;
    return m.run(l);
  };
  auto same = migrate(im, cfg, opt, {}, prep);
  REQUIRE(same);
  CHECK(called);
  CHECK(same->at_insn == plain->at_insn);
  CHECK(same->checksum == plain->checksum);
  CHECK(same->verdict == checker::Verdict::kProven);
  // The caller's fault is in the source the driver migrates: adopt is refuted and rejected.
  auto faulty = [&](SimMachine& m) -> Result<RunEvent> {
    auto e = prep(m);
    if (!e) return e;
    auto d = plant_source_fault(m, *parse_fault("ept:0x400000"));
    if (!d) return d.error();
    return e;
  };
  auto bad = migrate(im, cfg, opt, {}, faulty);
  REQUIRE(bad);
  CHECK(bad->verdict == checker::Verdict::kRefuted);
  CHECK(bad->rejected);
  // A prep that fails is an error of the request, not a result.
  auto broken = migrate(im, cfg, opt, {}, [](SimMachine&) -> Result<RunEvent> { return make_error("no state"); });
  REQUIRE(!broken);
  CHECK(broken.error().message == "no state");
}

}  // namespace
}  // namespace baton::sim
