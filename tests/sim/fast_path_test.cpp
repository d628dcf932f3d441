// The simulator's fast path: hot blocks run without Unicorn's memory hooks in their
// translation (their loads use Unicorn's own TLB, their stores still reach the hook), and still
// every first touch of a page is an EPT violation, also after the EPT lost entries under them
// (the executor flushes Unicorn's TLB then); long runs stay on that path (the regression guard).
#include <set>

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

// The regression guard of the fast path (not a timing test): a long steady-state run must
// spend its block executions on hook-less translations, and its loads must reach the memory
// hook only on misses of Unicorn's own TLB. Each half fails on its own when hooks come back
// silently: a block retranslated with the hooks behind the executor's back (it once happened
// when a promotion removed an overlapping hook-less block, after round 7 of this run) still
// counts as hook-less but sends every load through the hook.
TEST_CASE("a long checksum run spends its blocks on the hook-less path, its loads off the hook", "[sim][fast]") {
  for (bool tlb : {true, false}) {
    CAPTURE(tlb);
    const guests::GuestImage im = image("checksum", 64u << 20, guests::PageSize::k4K, {{"rounds", 16}});
    SimConfig cfg;
    cfg.profile.tlb_enabled = tlb;
    auto m = machine(im, cfg);
    REQUIRE(run_all(*m).reason == StopReason::kExited);
    CHECK(m->output().checksum() == guests::expected_result("checksum", im.params).value());
    const SimStats st = m->stats();
    CAPTURE(st.instructions, st.block_execs, st.hookless_execs, st.read_hooks, st.promotions, st.hookless_lost);
    REQUIRE(st.block_execs > 0);
    // 16 rounds over 1 MiB: about 2 loads per 8 instructions, all but the start-up hook-less.
    CHECK(static_cast<double>(st.hookless_execs) / static_cast<double>(st.block_execs) > 0.95);
    CHECK(st.read_hooks * 100 < st.instructions);
    CHECK(st.promotions >= 1);
  }
}

TEST_CASE("the guard's counters see hooked runs: stores and start-up blocks take the hook", "[sim][fast]") {
  // memtouch writes every page it touches: its stores reach the hook, one call per store.
  const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K,
                                      {{"size", 1u << 20}, {"write_pct", 100}, {"passes", 2}});
  auto m = machine(im);
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  const SimStats st = m->stats();
  CAPTURE(st.block_execs, st.hookless_execs, st.write_hooks);
  CHECK(st.write_hooks >= 3 * (1u << 20) / model::kPageSize);  // init + 2 passes, one word per page
  CHECK(st.hookless_execs < st.block_execs);
}

TEST_CASE("stores of hook-less blocks reach dirty logging: every written page is logged, no other", "[sim][fast][dirty]") {
  for (DirtyMode mode : {DirtyMode::kWriteProtect, DirtyMode::kPml}) {
    CAPTURE(to_string(mode));
    // 256 slots 8 KiB apart, all written in each pass: every other page of a 2 MiB arena. The
    // expectation comes from the workload's layout, not from the hooks under test.
    const std::uint64_t size = 2u << 20, stride = 8u << 10;
    const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K,
                                        {{"size", size}, {"stride", stride}, {"write_pct", 100}, {"passes", 4}});
    SimConfig cfg;
    cfg.hv.dirty = mode;
    auto m = machine(im, cfg);
    RunLimits l;
    l.budget = 1'000'000'000;
    l.sync = 3;  // init, pass 0 and pass 1: the pass loop is hot and hook-less by now
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    m->clear_dirty_log();
    const SimStats s0 = m->stats();
    l.sync = 4;  // pass 2
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    const SimStats s1 = m->stats();
    CAPTURE(s1.block_execs - s0.block_execs, s1.hookless_execs - s0.hookless_execs);
    CHECK(s1.hookless_execs - s0.hookless_execs > (s1.block_execs - s0.block_execs) * 9 / 10);
    std::set<std::uint64_t> dirty;
    for (model::Gfn g : m->dirty_log()) dirty.insert(g.value);
    const std::uint64_t first = im.free_start.value >> model::kPageShift;
    std::uint64_t written = 0, clean = 0;
    for (std::uint64_t k = 0; k < size / model::kPageSize; ++k) {
      const bool expect = k % (stride / model::kPageSize) == 0;
      CAPTURE(k);
      CHECK(dirty.count(first + k) == (expect ? 1u : 0u));
      (expect ? written : clean) += 1;
    }
    CHECK(written == size / stride);
    CHECK(clean == written);
    REQUIRE(run_all(*m).reason == StopReason::kExited);
    CHECK(m->output().checksum() == guests::expected_result("memtouch", im.params).value());
  }
}
