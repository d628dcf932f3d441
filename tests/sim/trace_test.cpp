// The simulator's trace: written through traces/ and read back with the events it promised.
#include <cstdio>

#include "baton/traces/trace.hpp"
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

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
