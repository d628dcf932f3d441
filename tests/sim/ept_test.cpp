// The simulator's EPT: the tree the MMU builds, violations, MMIO misconfigurations, dirty
// logs (write-protect and PML, with negative checks) and corrupted entries.
#include <cstring>
#include <set>

#include "baton/model/mapping_set.hpp"
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

namespace {

// The mapping the memslots specify: every slot mapped RWX, write-back, to its backing.
model::MappingSet spec_of(const std::vector<model::Memslot>& slots) {
  std::vector<model::MappingRun> runs;
  for (const model::Memslot& s : slots)
    runs.push_back(model::MappingRun{s.gpa, s.size, model::RunKind::kMapped, s.hpa, s.max_perms(), 6, false});
  auto ms = model::MappingSet::from_runs(runs);
  REQUIRE(ms.ok());
  return *ms;
}

}  // namespace

TEST_CASE("once every page is touched the EPT equals the memslot spec, and violations equal leaves", "[sim][ept]") {
  for (guests::PageSize ps : {guests::PageSize::k4K, guests::PageSize::k2M, guests::PageSize::k1G}) {
    CAPTURE(guests::to_string(ps));
    const guests::GuestImage im = image("memtouch", 64u << 20, ps, {{"size", 8u << 20}});
    SimConfig cfg;
    cfg.hv.max_leaf_level = level_of(ps);
    auto m = machine(im, cfg);
    REQUIRE(run_all(*m).reason == StopReason::kExited);
    Hypervisor& hv = m->hypervisor();
    // Violations so far: one per leaf installed, and the tree holds exactly those leaves.
    model::TreeStats ts;
    auto partial = model::MappingSet::from_tree(hv.eptp(), *m->host(), hv.config().ept, &ts);
    REQUIRE(partial.ok());
    const EptStats& st = hv.stats();
    CHECK(st.violations == st.leaves[1] + st.leaves[2] + st.leaves[3]);
    CHECK(ts.leaves[1] == st.leaves[1]);
    CHECK(ts.leaves[2] == st.leaves[2]);
    CHECK(ts.leaves[3] == st.leaves[3]);
    CHECK(partial->is_subset_of(spec_of(hv.memslots())));
    if (ps != guests::PageSize::k4K) CHECK(st.leaves[1] == 0);
    // Touch every remaining page through the MMU, as first accesses would.
    for (const model::Memslot& s : hv.memslots())
      for (std::uint64_t off = 0; off < s.size; off += model::kPageSize)
        if (!hv.walk(s.gpa + off, model::Access::kRead).translated()) hv.handle_violation(s.gpa + off, model::Access::kRead);
    auto full = model::MappingSet::from_tree(hv.eptp(), *m->host(), hv.config().ept);
    REQUIRE(full.ok());
    CHECK(*full == spec_of(hv.memslots()));
  }
}

TEST_CASE("an MMIO access exits as an EPT misconfiguration and reaches the device", "[sim][ept]") {
  guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  const std::uint64_t mmio = 32u << 20;
  // mov rbx, mmio; mov eax, [rbx]; mov [rbx+8], eax; mov dx, 0x518; out dx, eax
  std::vector<std::uint8_t> code = {0x48, 0xBB};
  for (int i = 0; i < 8; ++i) code.push_back(static_cast<std::uint8_t>(mmio >> (8 * i)));
  for (std::uint8_t b : {0x8B, 0x03, 0x89, 0x43, 0x08, 0x66, 0xBA, 0x18, 0x05, 0xEF}) code.push_back(b);
  for (guests::MemoryChunk& c : im.chunks)
    if (im.entry >= c.gpa.value && im.entry < c.end().value) std::memcpy(c.bytes.data() + (im.entry - c.gpa.value), code.data(), code.size());
  SimConfig cfg;
  cfg.mmio = {model::GpaRange{model::Gpa{mmio}, model::kPageSize}};
  auto m = machine(im, cfg);
  std::uint64_t written = 0;
  MmioDevice dev;
  dev.read = [](model::Gpa, unsigned) -> std::uint64_t { return 0x1234ABCD; };
  dev.write = [&](model::Gpa g, unsigned, std::uint64_t v) { written = g.value == mmio + 8 ? v : 0; };
  m->set_mmio_device(dev);
  const RunEvent ev = run_all(*m);
  INFO(ev.detail);
  REQUIRE(ev.reason == StopReason::kExited);
  CHECK(m->output().exit_code == 0x1234ABCDu);
  CHECK(written == 0x1234ABCD);
  CHECK(m->stats().exits.at(ExitReason::kEptMisconfig) == 2);
  CHECK(m->hypervisor().walk(model::Gpa{mmio}, model::Access::kRead).kind == model::WalkKind::kMisconfig);
}

TEST_CASE("write-protect and PML dirty logs equal the pages written; unwritten pages are never reported", "[sim][dirty]") {
  for (DirtyMode mode : {DirtyMode::kWriteProtect, DirtyMode::kPml}) {
    CAPTURE(to_string(mode));
    // 4 MiB working set of 1024 pages, random order, half the touches write; 2 passes.
    const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K,
                                        {{"size", 4u << 20}, {"order", 1}, {"write_pct", 50}, {"passes", 2}});
    SimConfig cfg;
    cfg.hv.dirty = mode;
    cfg.record_writes = true;
    auto m = machine(im, cfg);
    RunLimits l;
    l.budget = 1'000'000'000;
    l.sync = 1;  // after the init pass
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    m->clear_dirty_log();
    l.sync = 2;  // one random pass
    REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
    const std::vector<model::Gfn> log = m->dirty_log();
    const std::vector<model::Gfn> written = m->written_pages();
    CHECK(log == written);
    CHECK(log.size() > 100);
    // Negative checks: pages beyond the working set and the code are never reported.
    const std::set<std::uint64_t> dirty = [&] {
      std::set<std::uint64_t> s;
      for (model::Gfn g : log) s.insert(g.value);
      return s;
    }();
    const std::uint64_t beyond = (im.free_start.value + (8u << 20)) >> model::kPageShift;
    for (std::uint64_t g = beyond; g < beyond + 256; ++g) CHECK(dirty.count(g) == 0);
    CHECK(dirty.count(im.image_start.value >> model::kPageShift) == 0);
    // Some working-set pages were only read in this pass: they must not be in the log.
    std::uint64_t only_read = 0;
    for (std::uint64_t g = im.free_start.value >> model::kPageShift; g < (im.free_start.value + (4u << 20)) >> model::kPageShift; ++g)
      only_read += dirty.count(g) == 0 ? 1 : 0;
    CHECK(only_read > 50);
    // Clearing empties the log; the run still reaches the right checksum.
    m->clear_dirty_log();
    CHECK(m->dirty_log().empty());
    REQUIRE(run_all(*m).reason == StopReason::kExited);
    CHECK(m->output().checksum() == guests::expected_result("memtouch", im.params).value());
    if (mode == DirtyMode::kPml) CHECK(m->hypervisor().stats().pml_full > 0);
  }
}

TEST_CASE("a flipped PFN bit makes the guest read another frame, and the owner map says whose", "[sim][ept]") {
  const guests::GuestImage im = image("memtouch", 64u << 20, guests::PageSize::k4K, {{"size", 4u << 20}});
  auto m = machine(im);
  RunLimits l;
  l.budget = 1'000'000'000;
  l.sync = 1;
  REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
  Hypervisor& hv = m->hypervisor();
  const model::Gpa page{im.free_start.value + 16 * model::kPageSize};
  const model::WalkResult before = hv.walk(page, model::Access::kRead);
  REQUIRE(before.translated());
  const model::WalkStep leaf = before.path[before.path_len - 1];
  std::vector<std::uint8_t> original = m->read_guest(page, 64);

  // Flip PFN bit 12: the leaf now points at the neighbouring host frame.
  REQUIRE(hv.write_entry(page, 1, leaf.entry.flipped(12)).ok());
  REQUIRE(m->invept().ok());
  const model::WalkResult after = hv.walk(page, model::Access::kRead);
  REQUIRE(after.translated());
  CHECK(after.hpa != before.hpa);
  const model::OwnerRange owner = m->host()->owners().owner_of(model::hfn_of(after.hpa));
  CHECK(owner.kind == model::OwnerKind::kGuestRam);
  CHECK(owner.vm == hv.config().vm_id);
  const std::uint8_t* frame = m->host()->frame(model::hfn_of(after.hpa));
  REQUIRE(frame != nullptr);
  const std::vector<std::uint8_t> seen = m->read_guest(page, 64);
  CHECK(std::memcmp(seen.data(), frame, 64) == 0);
  CHECK(seen != original);
  CHECK(m->stats().deviating_pages == 1);

  // Point the leaf at the EPT root: the guest now reads paging-structure entries.
  REQUIRE(hv.write_entry(page, 1, model::EptEntry::leaf(1, model::hpa_of(hv.eptp().root()), model::Perms{true, true, true})).ok());
  REQUIRE(m->invept().ok());
  const model::OwnerRange root_owner = m->host()->owners().owner_of(hv.eptp().root());
  CHECK(root_owner.kind == model::OwnerKind::kEptTable);
  const std::vector<std::uint8_t> table = m->read_guest(page, 8);
  std::uint64_t e0 = 0;
  std::memcpy(&e0, table.data(), 8);
  CHECK(model::EptEntry{e0}.classify(4, hv.config().ept) == model::EntryKind::kTable);

  // Repair the leaf: the guest sees its own data again and finishes with the right checksum.
  REQUIRE(hv.write_entry(page, 1, leaf.entry).ok());
  REQUIRE(m->invept().ok());
  CHECK(m->read_guest(page, 64) == original);
  CHECK(m->stats().deviating_pages == 0);
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  CHECK(m->output().checksum() == guests::expected_result("memtouch", im.params).value());
  CHECK(m->stats().regions <= 4);
}
