// Local migration in the simulator: every method on every guest reaches the unmigrated
// checksum and is proven; the fault story (EPT bit flip, VMCS EPT pointer, memslot table);
// the timeline's accounting; frames freed or handed over; precopy rounds; bad requests.
#include <catch2/catch.hpp>

#include "baton/model/mapping_set.hpp"
#include "baton/sim/kvm_migration.hpp"
#include "baton/sim/migration.hpp"
#include "sim_fixtures.hpp"

namespace baton::sim {
namespace {

using test::image;

constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// Migrates a guest, or fails the test on a request error.
MigrationResult migrate_ok(const std::string& guest, MigrationOptions opt, std::uint64_t mem = 64 * kMiB,
                           std::vector<guests::Param> params = {}, unsigned level = 1) {
  const guests::PageSize ps = level == 1 ? guests::PageSize::k4K : level == 2 ? guests::PageSize::k2M : guests::PageSize::k1G;
  const guests::GuestImage im = image(guest, mem, ps, std::move(params));
  SimConfig cfg;
  cfg.guest_name = guest;
  cfg.hv.max_leaf_level = level;
  auto r = migrate(im, cfg, opt);
  if (!r) FAIL(r.error().message);
  return std::move(*r);
}

// Returns the named check line, or fails.
const CheckLine& line(const MigrationResult& r, const std::string& name) {
  for (const CheckLine& l : r.checks)
    if (l.name == name) return l;
  FAIL("no check line '" << name << "'");
  return r.checks.front();
}

MigrationOptions method(Method m) {
  MigrationOptions o;
  o.method = m;
  o.slowdown_window = 200'000;
  return o;
}

TEST_CASE("every method on every guest reaches the unmigrated checksum and is proven", "[migration]") {
  const char* guests[] = {"memtouch", "checksum", "pagewalk", "io", "tsc", "mixed"};
  for (const char* g : guests)
    for (Method m : kAllMethods) {
      CAPTURE(g, to_string(m));
      MigrationOptions o = method(m);
      o.reference = false;
      const MigrationResult r = migrate_ok(g, o, 128 * kMiB);
      CHECK(r.switched);
      CHECK_FALSE(r.rejected);
      CHECK(r.verdict == checker::Verdict::kProven);
      REQUIRE(r.expected.has_value());
      CHECK(r.checksum_ok());
      CHECK(r.final_event.reason == StopReason::kExited);
      // The vCPU property (TSC continuity included) runs for every method.
      CHECK(line(r, "vcpu").verdict == checker::Verdict::kProven);
    }
}

TEST_CASE("each method runs the properties it requires", "[migration]") {
  auto names = [](const MigrationResult& r) {
    std::vector<std::string> n;
    for (const CheckLine& l : r.checks) n.push_back(l.name);
    return n;
  };
  using V = std::vector<std::string>;
  CHECK(names(migrate_ok("memtouch", method(Method::kAdopt))) ==
        V{"equivalence", "isolation", "conformance", "well-formedness", "vcpu"});
  CHECK(names(migrate_ok("memtouch", method(Method::kRebuild))) ==
        V{"conformance", "isolation", "well-formedness", "equivalence to spec", "vcpu", "conformance (after run)"});
  CHECK(names(migrate_ok("memtouch", method(Method::kLazy))) ==
        V{"refinement", "isolation", "well-formedness", "vcpu", "conformance (after run)"});
  CHECK(names(migrate_ok("memtouch", method(Method::kPrecopy))) == V{"contents", "translations", "vcpu"});
}

TEST_CASE("methods work at 2M and 1G leaves", "[migration]") {
  for (unsigned level : {2u, 3u})
    for (Method m : kAllMethods) {
      CAPTURE(level, to_string(m));
      MigrationOptions o = method(m);
      o.reference = false;
      const MigrationResult r = migrate_ok("mixed", o, level == 3 ? 1024 * kMiB : 64 * kMiB, {}, level);
      CHECK(r.verdict == checker::Verdict::kProven);
      CHECK(r.checksum_ok());
    }
}

TEST_CASE("the timeline adds up: downtime is the paused phases, total all of them", "[migration]") {
  for (Method m : kAllMethods) {
    CAPTURE(to_string(m));
    const MigrationResult r = migrate_ok("memtouch", method(m));
    double down = 0, total = 0, at = 0;
    for (const Phase& p : r.timeline) {
      CHECK(p.start == Approx(at));
      at += p.cycles;
      total += p.cycles;
      if (p.downtime) down += p.cycles;
    }
    CHECK(r.downtime == Approx(down));
    CHECK(r.total == Approx(total));
    CHECK(r.downtime > 0);
    CHECK(r.total >= r.downtime);
  }
}

// Returns the cycles of the named phase, or fails.
double phase_cycles(const MigrationResult& r, const std::string& name) {
  for (const Phase& p : r.timeline)
    if (p.name == name) return p.cycles;
  FAIL("no phase '" << name << "'");
  return 0;
}

TEST_CASE("the handshake terms: the notify is on the save, the wake-up only beyond it", "[migration][profile]") {
  // docs/cost-model.md: state-save = handover_notify + vcpu_state_save; state-transfer waits
  // max(0, handover_wakeup - vcpu_state_save) more for a new instance still waking up.
  auto run = [](std::uint64_t notify, std::uint64_t wakeup) {
    const guests::GuestImage im = image("memtouch", 64 * kMiB, guests::PageSize::k4K);
    SimConfig cfg;
    cfg.guest_name = "memtouch";
    cfg.profile.handover_notify = notify;
    cfg.profile.handover_wakeup = wakeup;
    MigrationOptions o = method(Method::kLazy);
    o.reference = false;
    auto r = migrate(im, cfg, o);
    if (!r) FAIL(r.error().message);
    return std::move(*r);
  };
  const MigrationResult none = run(0, 0);
  const std::uint64_t save = default_profile().vcpu_state_save;
  const MigrationResult hidden = run(7000, save / 2);      // the wake-up hides behind the save
  const MigrationResult longer = run(7000, save + 50000);  // it outlasts the save by 50,000 cycles
  CHECK(phase_cycles(hidden, "state-save") == Approx(phase_cycles(none, "state-save") + 7000));
  CHECK(phase_cycles(hidden, "state-transfer") == Approx(phase_cycles(none, "state-transfer")));
  CHECK(phase_cycles(longer, "state-transfer") == Approx(phase_cycles(none, "state-transfer") + 50000));
  CHECK(longer.downtime == Approx(none.downtime + 57000));
}

TEST_CASE("precopy sends its pages at the transfer bandwidth, reads them at the copy's", "[migration][profile]") {
  auto run = [](double transfer) {
    const guests::GuestImage im = image("memtouch", 64 * kMiB, guests::PageSize::k4K, {{"passes", 3000}});
    SimConfig cfg;
    cfg.guest_name = "memtouch";
    cfg.profile.transfer_bytes_per_cycle = transfer;
    MigrationOptions o = method(Method::kPrecopy);
    o.reference = false;
    o.max_rounds = 1;
    auto r = migrate(im, cfg, o);
    if (!r) FAIL(r.error().message);
    return std::move(*r);
  };
  const MigrationResult same = run(0);  // 0: the copy bandwidth
  const MigrationResult slow = run(1.0);
  REQUIRE_FALSE(same.rounds.empty());
  const CopyRound& a = same.rounds.front();
  const CopyRound& b = slow.rounds.front();
  const double mb = default_profile().memcpy_bytes_per_cycle;
  // Round 1 reads and sends the same pages either way; only the sending costs differ.
  CHECK(a.sent == b.sent);
  CHECK(a.sent > 0);
  CHECK(b.cycles - a.cycles == Approx(static_cast<double>(a.sent) * 4096.0 * (1.0 / 1.0 - 1.0 / mb)));
  CHECK(b.cycles > 2 * a.cycles);
}

TEST_CASE("local-adopt downtime does not depend on memory size", "[migration]") {
  MigrationOptions o = method(Method::kAdopt);
  o.reference = false;
  const MigrationResult small = migrate_ok("memtouch", o, 64 * kMiB);
  const MigrationResult big = migrate_ok("memtouch", o, 2048 * kMiB);
  CHECK(big.downtime == Approx(small.downtime).epsilon(0.05));
  // local-rebuild grows with memory (a leaf per 4 KiB page).
  MigrationOptions rb = method(Method::kRebuild);
  rb.reference = false;
  CHECK(migrate_ok("memtouch", rb, 256 * kMiB).downtime > 3 * migrate_ok("memtouch", rb, 64 * kMiB).downtime);
}

TEST_CASE("local-lazy refaults what the guest touches again and is slower afterwards", "[migration]") {
  const MigrationResult lazy = migrate_ok("memtouch", method(Method::kLazy));
  const MigrationResult adopt = migrate_ok("memtouch", method(Method::kAdopt));
  CHECK(lazy.refaults > 1000);  // memtouch's 16 MiB working set is 4096 pages
  CHECK(adopt.refaults == 0);
  CHECK(lazy.window > 0);
  CHECK(lazy.slowdown() > adopt.slowdown());
  CHECK(lazy.downtime == Approx(adopt.downtime).epsilon(0.05));
}

TEST_CASE("the old instance's frames are freed, or its tables handed over", "[migration]") {
  const MigrationResult adopt = migrate_ok("memtouch", method(Method::kAdopt));
  CHECK(adopt.frames_handed_over == adopt.before.tables.size());
  CHECK(adopt.frames_freed == 2);  // its VMCS and PML page
  const MigrationResult lazy = migrate_ok("memtouch", method(Method::kLazy));
  CHECK(lazy.frames_handed_over == 0);
  CHECK(lazy.frames_freed >= lazy.before.tables.size() + 2);
  // The new instance's tables are all owned by the VM as EPT tables (isolation proves it).
  CHECK(line(lazy, "isolation").verdict == checker::Verdict::kProven);
}

TEST_CASE("precopy copies in rounds while the guest runs, then stops and copies the rest", "[migration]") {
  MigrationOptions o = method(Method::kPrecopy);
  o.max_rounds = 3;
  o.converge_pages = 0;
  // A long-running memtouch keeps dirtying its 4 MiB while memory is copied.
  const MigrationResult r =
      migrate_ok("memtouch", o, 64 * kMiB, {{"size", 4 * kMiB}, {"passes", 600}});
  REQUIRE_FALSE(r.finished_before_switch);
  CHECK(r.rounds.size() == 4);  // three rounds and the stop-and-copy
  CHECK(r.rounds[0].pages == 64 * kMiB / 4096);
  CHECK(r.rounds[0].sent < r.rounds[0].pages);  // zero pages are not sent
  CHECK(r.rounds[1].dirtied > 0);
  CHECK(r.bytes_copied == r.pages_copied * 4096);
  CHECK(line(r, "contents").verdict == checker::Verdict::kProven);
  CHECK(line(r, "translations").verdict == checker::Verdict::kProven);
  CHECK(r.checksum_ok());
  // Its downtime is the final copy; local-adopt's is not.
  MigrationOptions a = method(Method::kAdopt);
  const MigrationResult adopt = migrate_ok("memtouch", a, 64 * kMiB, {{"size", 4 * kMiB}, {"passes", 600}});
  CHECK(r.downtime > 5 * adopt.downtime);
  // Write-protect tracking gives the same result.
  o.dirty = DirtyMode::kWriteProtect;
  const MigrationResult wp = migrate_ok("memtouch", o, 64 * kMiB, {{"size", 4 * kMiB}, {"passes", 600}});
  CHECK(wp.verdict == checker::Verdict::kProven);
  CHECK(wp.checksum_ok());
}

TEST_CASE("fault story: a flipped frame bit in a leaf EPT entry", "[migration][fault]") {
  MigrationOptions o;
  o.fault.kind = FaultKind::kEptBit;
  o.reference = false;
  SECTION("local-adopt is refuted at the corrupted GPA and the handover rejected") {
    o.method = Method::kAdopt;
    const MigrationResult r = migrate_ok("memtouch", o);
    CHECK(r.rejected);
    CHECK_FALSE(r.switched);
    CHECK(r.verdict == checker::Verdict::kRefuted);
    const CheckLine& c = line(r, "conformance");
    CHECK(c.verdict == checker::Verdict::kRefuted);
    REQUIRE(c.counterexample);
    REQUIRE(c.counterexample->gpa);
    CHECK(r.fault.find("GPA 0x" + [&] {
      char b[32];
      std::snprintf(b, sizeof b, "%llx", static_cast<unsigned long long>(c.counterexample->gpa->value));
      return std::string(b);
    }()) != std::string::npos);
    CHECK(line(r, "isolation").verdict == checker::Verdict::kRefuted);  // the frame is now aliased
  }
  SECTION("the fallback policy rebuilds instead, and the guest finishes correctly") {
    o.method = Method::kAdopt;
    o.policy = Policy::kFallback;
    const MigrationResult r = migrate_ok("memtouch", o);
    CHECK(r.fell_back);
    CHECK(r.switched);
    CHECK(r.effective == Method::kRebuild);
    CHECK(r.verdict == checker::Verdict::kProven);
    CHECK(r.checksum_ok());
  }
  SECTION("accepting the refuted handover corrupts the guest's result") {
    o.method = Method::kAdopt;
    o.policy = Policy::kAccept;
    o.at_sync = 2;
    const MigrationResult r = migrate_ok("memtouch", o);
    CHECK(r.switched);
    CHECK(r.verdict == checker::Verdict::kRefuted);
    CHECK_FALSE(r.checksum_ok());
  }
  SECTION("local-rebuild and local-lazy wash it out") {
    for (Method m : {Method::kRebuild, Method::kLazy}) {
      o.method = m;
      const MigrationResult r = migrate_ok("memtouch", o);
      CHECK(r.switched);
      CHECK(r.verdict == checker::Verdict::kProven);
      CHECK(line(r, "conformance (after run)").verdict == checker::Verdict::kProven);
      CHECK(r.checksum_ok());
    }
  }
  SECTION("precopy copies through the corrupted mapping and the relation check shows it") {
    o.method = Method::kPrecopy;
    const MigrationResult r = migrate_ok("memtouch", o);
    const CheckLine& t = line(r, "translations");
    CHECK(t.verdict == checker::Verdict::kRefuted);
    REQUIRE(t.counterexample);
    CHECK(t.counterexample->gpa.has_value());
    CHECK(r.rejected);
  }
}

TEST_CASE("fault story: a flipped bit in the old VMCS's EPT pointer", "[migration][fault]") {
  MigrationOptions o;
  o.fault.kind = FaultKind::kVmcsBit;  // default field: the EPT pointer, bit 12
  o.reference = false;
  o.method = Method::kAdopt;
  const MigrationResult a = migrate_ok("memtouch", o);
  CHECK(a.rejected);  // adopt follows the corrupted pointer to the wrong root
  for (Method m : {Method::kRebuild, Method::kLazy, Method::kPrecopy}) {
    CAPTURE(to_string(m));
    o.method = m;
    const MigrationResult r = migrate_ok("memtouch", o);  // a new VMCS, a new EPTP
    CHECK(r.switched);
    CHECK(r.verdict == checker::Verdict::kProven);
    CHECK(r.checksum_ok());
  }
}

TEST_CASE("fault story: an adopted table pointer redirected onto a guest-RAM, VMCS or hypervisor frame is an isolation breach",
          "[migration][fault]") {
  // Bit 32 of the PDE moves the page table into guest RAM (a zeroed frame: the tree looks
  // lazily unfilled); bits 13 and 12 of the PML4E move the PDPT onto the VMCS and a hypervisor
  // frame. The new instance must not relabel those frames as its EPT tables when it adopts.
  const std::pair<const char*, const char*> cases[] = {
      {"ept:0xbfe000:32:2", "guest-ram"}, {"ept:0xbfe000:13:4", "vmcs"}, {"ept:0xbfe000:12:4", "hypervisor"}};
  for (const auto& [spec, owner] : cases) {
    CAPTURE(spec);
    auto f = parse_fault(spec);
    REQUIRE(f);
    MigrationOptions o;
    o.fault = *f;
    o.reference = false;
    o.method = Method::kAdopt;
    const MigrationResult r = migrate_ok("memtouch", o);
    const CheckLine& iso = line(r, "isolation");
    CAPTURE(iso.summary);
    CHECK(iso.verdict == checker::Verdict::kRefuted);
    CHECK(iso.summary.find(std::string("owned by ") + owner) != std::string::npos);
    CHECK(r.rejected);
  }
  // Negative control: without the fault the adopted tables are this VM's EPT frames.
  MigrationOptions o;
  o.reference = false;
  o.method = Method::kAdopt;
  CHECK(line(migrate_ok("memtouch", o), "isolation").verdict == checker::Verdict::kProven);
}

TEST_CASE("fault story: a flipped bit in a VMCS guest-state field is caught by the vCPU property", "[migration][fault]") {
  auto f = parse_fault("vmcs:guest_rip:3");
  REQUIRE(f);
  MigrationOptions o;
  o.fault = *f;
  o.reference = false;
  for (Method m : kAllMethods) {
    CAPTURE(to_string(m));
    o.method = m;
    const MigrationResult r = migrate_ok("memtouch", o);
    CHECK(line(r, "vcpu").verdict == checker::Verdict::kRefuted);
    CHECK(r.rejected);
    CHECK(r.checksum_ok());  // the old instance resumes from its registers
  }
}

TEST_CASE("fault story: a corrupted memslot table is refused by every method", "[migration][fault]") {
  MigrationOptions o;
  o.fault.kind = FaultKind::kMemslotBit;  // default: the top bit of slot 0's size
  o.reference = false;
  for (Method m : kAllMethods) {
    CAPTURE(to_string(m));
    o.method = m;
    const MigrationResult r = migrate_ok("memtouch", o);
    CHECK(r.rejected);
    CHECK_FALSE(r.switched);
    CHECK(r.checksum_ok());  // the old instance keeps the VM
  }
}

TEST_CASE("a memslot moved away from the guest's tables is refused before Unicorn sees it", "[migration][fault]") {
  auto f = parse_fault("memslot:0:gpa:27");
  REQUIRE(f);
  MigrationOptions o;
  o.fault = *f;
  o.reference = false;
  for (Method m : kAllMethods) {
    CAPTURE(to_string(m));
    o.method = m;
    const MigrationResult r = migrate_ok("memtouch", o, 256 * kMiB);
    CHECK(r.rejected);
    REQUIRE_FALSE(r.checks.empty());
    CHECK_THAT(r.checks.front().summary, Catch::Contains("outside every memslot"));
    CHECK(r.checksum_ok());
  }
}

TEST_CASE("restoring a snapshot whose vCPU points outside its memslots is an error", "[migration][negative]") {
  const guests::GuestImage im = image("memtouch", 64 * kMiB, guests::PageSize::k4K);
  auto m = test::machine(im);
  RunLimits l;
  l.sync = 1;
  REQUIRE(m->run(l).reason == StopReason::kSyncPoint);
  auto s = m->snapshot();
  REQUIRE(s);
  for (int which = 0; which < 3; ++which) {
    model::HandoverSnapshot bad = *s;
    if (which == 0) bad.vcpus[0].cr3 = 0x7FF000000;
    if (which == 1) bad.vcpus[0].gdtr.base = 0x7FF000000;
    if (which == 2) bad.vcpus[0].rip = 0x7FF000000;
    auto r = SimMachine::restore(bad, m->host(), SimConfig{}, false);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("outside every memslot"));
  }
}

TEST_CASE("a co-located VM keeps its translations and its result", "[migration]") {
  const guests::GuestImage im = image("memtouch", 64 * kMiB, guests::PageSize::k4K);
  NeighbourOptions nb;
  nb.image = image("checksum", 64 * kMiB, guests::PageSize::k4K);
  nb.guest_name = "checksum";
  SimConfig cfg;
  cfg.guest_name = "memtouch";
  for (Method m : kAllMethods) {
    CAPTURE(to_string(m));
    MigrationOptions o = method(m);
    o.reference = false;
    auto r = migrate(im, cfg, o, nb);
    REQUIRE(r);
    REQUIRE(r->neighbour);
    CHECK(r->neighbour->tree_unchanged);
    CHECK(r->neighbour->checksum == r->neighbour->expected);
    CHECK(r->verdict == checker::Verdict::kProven);  // isolation holds with two VMs on the host
  }
}

TEST_CASE("bad requests are errors, not crashes", "[migration][negative]") {
  const guests::GuestImage im = image("memtouch", 64 * kMiB, guests::PageSize::k4K);
  SimConfig cfg;
  cfg.guest_name = "memtouch";
  MigrationOptions o;
  o.at_sync = 999;
  auto r = migrate(im, cfg, o);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("never reached the migration point"));
  o.at_sync = 1;
  o.fault.kind = FaultKind::kEptBit;
  o.fault.gpa = 0x3F00000;  // beyond what the guest has touched
  r = migrate(im, cfg, o);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("has no present leaf"));
  o.fault = {};
  o.method = Method::kPrecopy;
  o.dirty = DirtyMode::kOff;
  CHECK_FALSE(migrate(im, cfg, o));
  for (const char* bad : {"ept:zz", "ept:0x1000:99", "vmcs:no_such_field", "memslot:0:flags", "bitflip", "ept:1:2:3:4",
                          "ept:1:2:5", "reg:nope", "ram"})
    CHECK_FALSE(parse_fault(bad));
  CHECK(parse_fault("vmcs:eptp:3"));
  CHECK(parse_fault("memslot:0:gpa:27"));
  CHECK(parse_fault("none"));
}

// Requested: the paused guest TSC less the worker's host TSC at the restore (worker.cpp).
TEST_CASE("kvm vcpu check: the TSC reason names both offsets only when KVM applied another one than the worker set",
          "[migrate][tsc]") {
  model::VcpuState paused, held;
  paused.host_tsc_at_capture = 1'000'000;
  paused.tsc_offset = 0;  // guest TSC 1,000,000 at the pause
  held.host_tsc_at_capture = 1'097'396;  // 97,396 cycles of downtime
  held.tsc_offset = paused.guest_tsc() - held.host_tsc_at_capture;  // honoured: -97,396
  CHECK(tsc_offset_not_applied(paused, held, "svm").empty());
  held.tsc_offset = 0;  // PVM: the guest stays on the host TSC
  CHECK(tsc_offset_not_applied(paused, held, "pvm") ==
        "the guest TSC ran on through the downtime: this host's KVM (pvm) does not apply KVM_VCPU_TSC_OFFSET "
        "(the worker set 0xfffffffffffe838c, KVM applies 0x0); ");
  held.tsc_offset = std::uint64_t{0} - 200'000;  // further back than asked
  CHECK_THAT(tsc_offset_not_applied(paused, held, "vmx"), Catch::StartsWith("the guest TSC went back: this host's KVM (vmx)"));
}

}  // namespace
}  // namespace baton::sim
