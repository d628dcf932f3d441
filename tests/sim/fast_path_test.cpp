// The simulator's fast path: hot load-only blocks run without Unicorn's memory hooks (their
// loads use Unicorn's own TLB), and still every first touch of a page is an EPT violation,
// also after the EPT lost entries under them (the executor flushes Unicorn's TLB then).
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

namespace {

// Zaps the leaves of every page of [gpa, gpa + size) and resynchronises the executor.
void zap(SimMachine& m, std::uint64_t gpa, std::uint64_t size) {
  Hypervisor& hv = m.hypervisor();
  for (std::uint64_t off = 0; off < size; off += model::kPageSize)
    REQUIRE(hv.write_entry(model::Gpa{gpa + off}, 1, model::EptEntry{}).ok());
  REQUIRE(m.invept().ok());
}

// Counts the pages of [gpa, gpa + size) that the EPT translates.
std::uint64_t translated(SimMachine& m, std::uint64_t gpa, std::uint64_t size) {
  std::uint64_t n = 0;
  for (std::uint64_t off = 0; off < size; off += model::kPageSize)
    n += m.hypervisor().walk(model::Gpa{gpa + off}, model::Access::kRead).translated() ? 1 : 0;
  return n;
}

}  // namespace

TEST_CASE("reads from hot load-only loops still exit on every untranslated page, after the EPT lost its leaves",
          "[sim][ept][fast]") {
  for (bool tlb : {true, false}) {
    CAPTURE(tlb);
    // 128 pages, read-only passes in order: the pass loop is load-only and hot after pass 0.
    // The working set is smaller than Unicorn's own TLB (256 entries), so its entries for the
    // zapped pages survive unless the executor flushes them.
    const std::uint64_t size = 512u << 10, pages = size >> model::kPageShift;
    const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K,
                                        {{"size", size}, {"write_pct", 0}, {"passes", 3}});
    SimConfig cfg;
    cfg.profile.tlb_enabled = tlb;
    auto m = machine(im, cfg);
    const std::uint64_t arena = im.free_start.value;
    RunLimits l;
    l.budget = 1'000'000'000;
    l.sync = 2;  // init and pass 0 done
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    REQUIRE(translated(*m, arena, size) == pages);

    // Pass 1 reads every page once: one violation per zapped page, and the leaves are back.
    zap(*m, arena, size);
    CHECK(translated(*m, arena, size) == 0);
    const std::uint64_t v1 = m->hypervisor().stats().violations;
    l.sync = 3;
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    CHECK(m->hypervisor().stats().violations - v1 == pages);
    CHECK(translated(*m, arena, size) == pages);

    // Again for pass 2 and the verify loop (which reads each page once more, without exits).
    zap(*m, arena, size);
    const std::uint64_t v2 = m->hypervisor().stats().violations;
    REQUIRE(run_all(*m).reason == StopReason::kExited);
    CHECK(m->hypervisor().stats().violations - v2 == pages);
    CHECK(m->output().checksum() == guests::expected_result("memtouch", im.params).value());
  }
}

TEST_CASE("the TLB model on or off changes only TLB cycles: same instructions, exits and result", "[sim][fast]") {
  const guests::GuestImage im = image("checksum", 64u << 20, guests::PageSize::k4K);
  SimStats st[2];
  for (int tlb = 0; tlb < 2; ++tlb) {
    SimConfig cfg;
    cfg.hv.ad = true;
    cfg.profile.tlb_enabled = tlb == 1;
    auto m = machine(im, cfg);
    REQUIRE(run_all(*m).reason == StopReason::kExited);
    CHECK(m->output().checksum() == guests::expected_result("checksum", im.params).value());
    st[tlb] = m->stats();
  }
  CHECK(st[0].instructions == st[1].instructions);
  CHECK(st[0].exits == st[1].exits);
  CHECK(st[0].ept.violations == st[1].ept.violations);
  CHECK(st[0].tlb_misses == 0);
  CHECK(st[1].tlb_misses > 0);
}
