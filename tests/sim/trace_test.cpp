// The simulator's trace: written through traces/ and read back with the events it promised.
#include <cstdio>

#include "baton/traces/trace.hpp"
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

namespace {

// Zaps the leaves of every page of [gpa, gpa + size) and resynchronises the executor.
void zap(SimMachine& m, std::uint64_t gpa, std::uint64_t size) {
  for (std::uint64_t off = 0; off < size; off += model::kPageSize)
    REQUIRE(m.hypervisor().write_entry(model::Gpa{gpa + off}, 1, model::EptEntry{}).ok());
  REQUIRE(m.invept().ok());
}

}  // namespace

TEST_CASE("a simulator run writes a trace with exits, EPT installs, I/O and sync points", "[sim][trace]") {
  const guests::GuestImage im = image("memtouch", 32u << 20, guests::PageSize::k4K, {{"size", 1u << 20}});
  const std::string path = "sim_trace_test.trace";
  std::remove(path.c_str());
  SimConfig cfg;
  cfg.trace_path = path;
  cfg.guest_name = "memtouch";
  auto m = machine(im, cfg);
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  REQUIRE(m->close_trace().ok());
  auto t = traces::read_trace(path);
  if (!t) FAIL(t.error().message);
  CHECK(t->header.source == "baton-sim");
  CHECK(t->header.guest == "memtouch");
  CHECK(t->header.cost_profile.find("exit_round_trip") != std::string::npos);
  std::size_t exits = 0, sets = 0, ios = 0, syncs = 0;
  for (const traces::TraceEvent& e : t->events) {
    exits += e.type == traces::EventType::kExit;
    sets += e.type == traces::EventType::kEptSet;
    ios += e.type == traces::EventType::kIo;
    syncs += e.type == traces::EventType::kSync;
  }
  const SimStats st = m->stats();
  std::uint64_t total_exits = 0;
  for (const auto& [r, n] : st.exits) total_exits += n;
  CHECK(exits == total_exits);
  CHECK(sets == st.ept.leaves[1] + st.ept.leaves[2] + st.ept.leaves[3]);
  CHECK(ios == st.exits.at(ExitReason::kIo));
  CHECK(syncs == m->output().stages.size());
  std::remove(path.c_str());
}

TEST_CASE("hook-less blocks take the same exits as hooked ones, at the same RIPs", "[sim][fast][trace]") {
  // The leaves under a hot loop are zapped, so its loads and stores fault again. With the
  // hooks every access runs through them and Unicorn's RIP is exact: the reference for the
  // hook-less run. memtouch's pass loop (half the touches write) and pagewalk's dependent read
  // start their blocks with the load; mixed has loads in the middle of blocks.
  struct Case {
    const char* guest;
    std::vector<guests::Param> params;
    std::uint64_t size;
    bool stores;
  };
  const Case cases[] = {
      {"memtouch", {{"size", 512u << 10}, {"write_pct", 50}, {"passes", 4}}, 512u << 10, true},
      {"pagewalk", {{"size", 1u << 20}, {"reads", 40000}, {"phases", 4}}, 1u << 20, false},
      {"mixed", {{"size", 1u << 20}, {"cycles", 2}}, 1u << 20, true},
  };
  for (const Case& c : cases) {
    CAPTURE(c.guest);
    const guests::GuestImage im = image(c.guest, 64u << 20, guests::PageSize::k4K, c.params);
    std::vector<traces::TraceEvent> exits[2];
    SimStats stats[2];
    for (int hookless = 0; hookless < 2; ++hookless) {
      const std::string path = "fast_path_rip_test_" + std::to_string(hookless) + ".trace";
      std::remove(path.c_str());
      SimConfig cfg;
      cfg.hookless = hookless == 1;
      cfg.trace_path = path;
      auto m = machine(im, cfg);
      RunLimits l;
      l.budget = 1'000'000'000;
      l.sync = 3;
      REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
      zap(*m, im.free_start.value, c.size);
      REQUIRE(run_all(*m).reason == StopReason::kExited);
      CHECK(m->output().checksum() == guests::expected_result(c.guest, im.params).value());
      stats[hookless] = m->stats();
      REQUIRE(m->close_trace().ok());
      auto t = traces::read_trace(path);
      if (!t) FAIL(t.error().message);
      for (const traces::TraceEvent& e : t->events)
        if (e.type == traces::EventType::kExit) exits[hookless].push_back(e);
      std::remove(path.c_str());
    }
    CHECK(stats[0].hookless_execs == 0);
    CHECK(stats[1].hookless_execs * 10 > stats[1].block_execs * 8);
    CHECK(stats[0].instructions == stats[1].instructions);
    CHECK(stats[0].exits == stats[1].exits);
    REQUIRE(exits[0].size() == exits[1].size());
    std::size_t loads = 0, stores = 0;
    for (std::size_t i = 0; i < exits[0].size(); ++i) {
      const traces::TraceEvent &a = exits[0][i], &b = exits[1][i];
      CAPTURE(i, a.code, a.a, a.b, a.c, b.c);
      CHECK(a.code == b.code);
      CHECK(a.a == b.a);  // qualification: read or write
      CHECK(a.b == b.b);  // GPA
      CHECK(a.c == b.c);  // RIP
      if (a.code == 48 && a.b >= im.free_start.value) (((a.a & 2) != 0) ? stores : loads) += 1;
    }
    CHECK(loads > 0);  // pages whose first touch after the zap was a read
    if (c.stores) CHECK(stores > 0);  // and a write
  }
}
