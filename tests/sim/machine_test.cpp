// The simulator as a machine: every guest to its checksum at every leaf size, exits of each
// kind, hangs, VM-entry failures, refused paging, bad profiles, and the state_test property.
#include <cstring>

#include "baton/guests/abi.hpp"
#include "baton/model/guest_walk.hpp"
#include "baton/sim/cost_model.hpp"
#include "sim/sim_fixtures.hpp"

using namespace baton;
using namespace baton::sim;
using namespace baton::sim::test;

namespace {

// Overwrites the code at the image's entry point.
void patch_entry(guests::GuestImage& im, std::vector<std::uint8_t> code) {
  for (guests::MemoryChunk& c : im.chunks)
    if (im.entry >= c.gpa.value && im.entry + code.size() <= c.end().value) {
      std::memcpy(c.bytes.data() + (im.entry - c.gpa.value), code.data(), code.size());
      return;
    }
  FAIL("entry not inside a chunk");
}

// Appends "mov dx, 0x518; out dx, eax" (exit with EAX).
void append_exit(std::vector<std::uint8_t>& code) {
  for (std::uint8_t b : {0x66, 0xBA, 0x18, 0x05, 0xEF}) code.push_back(b);
}

}  // namespace

TEST_CASE("every built-in guest runs to its expected checksum at 4K, 2M and 1G leaves", "[sim]") {
  for (const guests::BuiltinGuest& g : guests::builtin_guests())
    for (guests::PageSize ps : {guests::PageSize::k4K, guests::PageSize::k2M, guests::PageSize::k1G}) {
      CAPTURE(g.name, guests::to_string(ps));
      const guests::GuestImage im = image(g.name, 128u << 20, ps);
      SimConfig cfg;
      cfg.hv.max_leaf_level = level_of(ps);
      auto m = machine(im, cfg);
      const RunEvent ev = run_all(*m);
      INFO(ev.detail);
      REQUIRE(ev.reason == StopReason::kExited);
      auto ref = guests::reference_run(g.name, im.params);
      REQUIRE(ref.ok());
      CHECK(m->output().exit_code == guests::kExitOk);
      CHECK(m->output().checksum() == ref->checksum);
      CHECK(m->output().console == ref->console);
      CHECK(m->output().stages == ref->stages);
      const SimStats st = m->stats();
      CHECK(st.instructions > 1000);
      CHECK(st.cost.total() > static_cast<double>(st.instructions));
      CHECK(st.regions <= 2);
    }
}

TEST_CASE("the tsc guest sees the modelled TSC: monotonic, advancing with simulated cycles", "[sim]") {
  const guests::GuestImage im = image("tsc", 64u << 20, guests::PageSize::k2M, {{"iterations", 20000}});
  auto m = machine(im);
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  std::uint64_t backward = 1, elapsed = 0;
  for (const auto& r : m->output().results) {
    if (r.tag == guests::kResultTscBackwardCount) backward = r.value;
    if (r.tag == guests::kResultTscElapsed) elapsed = r.value;
  }
  CHECK(backward == 0);
  CHECK(elapsed > 20000);
  CHECK(static_cast<double>(elapsed) <= m->stats().cost.total());
  CHECK(m->stats().rdtsc_fixed >= 20000);
}

TEST_CASE("snapshot at sync point k, restore into a fresh instance, continue: same result (state_test)", "[sim]") {
  for (const char* name : {"memtouch", "mixed", "tsc"})
    for (bool adopt : {true, false})
      for (std::uint32_t k : {1u, 2u}) {
        CAPTURE(name, adopt, k);
        const guests::GuestImage im = image(name, 64u << 20, guests::PageSize::k4K);
        auto whole = machine(im);
        REQUIRE(run_all(*whole).reason == StopReason::kExited);

        auto first = machine(im);
        RunLimits l;
        l.budget = 2'000'000'000;
        l.sync = k;
        const RunEvent ev = first->run(l);
        REQUIRE(ev.reason == StopReason::kSyncPoint);
        auto snap = first->snapshot();
        REQUIRE(snap.ok());
        CHECK(model::validate_snapshot(*snap).empty());
        auto second = SimMachine::restore(*snap, first->host(), SimConfig{}, adopt);
        if (!second) FAIL(second.error().message);
        REQUIRE(run_all(**second).reason == StopReason::kExited);
        std::vector<guests::ResultRecord> joined = first->output().results;
        for (const auto& r : (*second)->output().results) joined.push_back(r);
        std::vector<guests::ResultRecord> det_a, det_b;
        for (const auto& r : whole->output().results) if (guests::is_deterministic_tag(r.tag)) det_a.push_back(r);
        for (const auto& r : joined) if (guests::is_deterministic_tag(r.tag)) det_b.push_back(r);
        CHECK(det_a == det_b);
        CHECK(first->output().console + (*second)->output().console == whole->output().console);
        // The restored instance continues the instruction count where the snapshot left it.
        CHECK((*second)->instructions() == whole->instructions());
        // ... but charges guest cycles only for the instructions it ran itself.
        CHECK((*second)->stats().cost.of(CostCategory::kGuest) ==
              Approx(static_cast<double>(whole->instructions() - first->instructions()) * default_profile().base_cpi));
        if (std::string(name) == "tsc")
          for (const auto& r : (*second)->output().results)
            if (r.tag == guests::kResultTscBackwardCount) CHECK(r.value == 0);
      }
}

TEST_CASE("a guest that never exits within the budget is reported as a hang", "[sim]") {
  const guests::GuestImage im = image("tsc", 64u << 20, guests::PageSize::k4K, {{"iterations", 100000000}});
  auto m = machine(im);
  RunLimits l;
  l.budget = 200000;
  const RunEvent ev = m->run(l);
  CHECK(ev.reason == StopReason::kHang);
  CHECK(m->instructions() >= 200000);
  CHECK(m->instructions() < 200100);
}

TEST_CASE("CPUID exits and returns the modelled vendor", "[sim]") {
  guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  std::vector<std::uint8_t> code = {0xB8, 0, 0, 0, 0, 0x0F, 0xA2, 0x89, 0xD8};
  append_exit(code);
  code.push_back(0xEB);  // jmp $: ends the translated block (a stop takes effect at a block end)
  code.push_back(0xFE);
  patch_entry(im, code);
  auto m = machine(im);
  REQUIRE(run_all(*m).reason == StopReason::kExited);
  CHECK(m->output().exit_code == 0x756E6547u);
  CHECK(m->stats().exits.at(ExitReason::kCpuid) == 1);
  CHECK(m->instructions() == 5);  // mov, cpuid, mov, mov, out: the exit stops right after the OUT
}

TEST_CASE("VMCALL exits and returns -KVM_ENOSYS; VMXON gets #UD, which the simulator ends as a triple fault", "[sim]") {
  guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  std::vector<std::uint8_t> code = {0x0F, 0x01, 0xC1};
  append_exit(code);
  patch_entry(im, code);
  auto m = machine(im);
  const RunEvent ev = run_all(*m);
  INFO(ev.detail);
  REQUIRE(ev.reason == StopReason::kExited);
  CHECK(m->output().exit_code == static_cast<std::uint32_t>(-1000));
  CHECK(m->stats().exits.at(ExitReason::kVmcall) == 1);

  guests::GuestImage im2 = image("io", 64u << 20, guests::PageSize::k4K);
  patch_entry(im2, {0xF3, 0x0F, 0xC7, 0x30});
  auto m2 = machine(im2);
  const RunEvent ev2 = run_all(*m2);
  INFO(ev2.detail);
  CHECK(ev2.reason == StopReason::kTripleFault);
  CHECK(ev2.detail.find("vmxon") != std::string::npos);
}

TEST_CASE("a guest exception ends the simulated run as a triple fault (Unicorn delivers none)", "[sim]") {
  guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  patch_entry(im, {0x0F, 0x0B});  // ud2
  auto m = machine(im);
  const RunEvent ev = run_all(*m);
  INFO(ev.detail);
  CHECK(ev.reason == StopReason::kTripleFault);
}

TEST_CASE("a guest state that breaks an SDM entry rule fails VM entry with the rule named", "[sim]") {
  guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  im.vcpu.cs.db = 1;  // CS.L = 1 and CS.D = 1
  auto m = machine(im);
  const RunEvent ev = run_all(*m);
  CHECK(ev.reason == StopReason::kEntryFailure);
  CHECK(ev.detail.find("27.3.1.2") != std::string::npos);
  CHECK(m->stats().exits.at(ExitReason::kEntryFailGuestState) == 1);
}

TEST_CASE("non-identity guest paging is refused, naming the GVA", "[sim]") {
  guests::GuestImage im = image("io", 64u << 20, guests::PageSize::k4K);
  const guests::ImageMemory mem(im);
  const model::Gva gva{im.free_start.value + 0x10000};
  const model::GuestWalkResult w = model::guest_walk(im.vcpu.cr3, gva, model::Access::kRead, true, mem);
  REQUIRE(w.translated());
  const model::Gpa entry = w.path[w.path_len - 1].entry_addr;
  for (guests::MemoryChunk& c : im.chunks)
    if (entry >= c.gpa && entry < c.end()) {
      std::uint64_t e = 0;
      std::memcpy(&e, c.bytes.data() + (entry - c.gpa), 8);
      e += 0x1000;  // points at the next frame: GVA != GPA
      std::memcpy(c.bytes.data() + (entry - c.gpa), &e, 8);
    }
  auto m = SimMachine::create(SimConfig{});
  REQUIRE(m.ok());
  auto r = (*m)->load(im);
  REQUIRE_FALSE(r.ok());
  char buf[32];
  std::snprintf(buf, sizeof buf, "%llx", static_cast<unsigned long long>(gva.value));
  INFO(r.error().message);
  CHECK(r.error().message.find("identity") != std::string::npos);
  CHECK(r.error().message.find(buf) != std::string::npos);
}

TEST_CASE("bad cost profiles are rejected with one clear error", "[sim]") {
  CHECK_FALSE(parse_profile("{").ok());
  CHECK_FALSE(parse_profile("[]").ok());
  auto unknown = parse_profile(R"({"base_cpii": 1})");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message.find("base_cpii") != std::string::npos);
  CHECK_FALSE(parse_profile(R"({"base_cpi": -1})").ok());
  CHECK_FALSE(parse_profile(R"({"exit_round_trip": "fast"})").ok());
  CHECK_FALSE(parse_profile(R"({"tlb_entries_4k": 0})").ok());
  auto missing = load_profile("/nonexistent/profile.json");
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message.find("/nonexistent/profile.json") != std::string::npos);
  auto good = parse_profile(R"({"base_cpi": 0.5, "exit_round_trip": 1100})");
  REQUIRE(good.ok());
  CHECK(good->base_cpi == 0.5);
  CHECK(parse_profile(profile_json(default_profile())).ok());
}

TEST_CASE("stopping at a sync point retires exactly the instructions of an uninterrupted run", "[sim]") {
  const guests::GuestImage im = image("tsc", 64u << 20, guests::PageSize::k4K);
  auto whole = machine(im);
  REQUIRE(run_all(*whole).reason == StopReason::kExited);
  auto first = machine(im);
  RunLimits l;
  l.budget = 2'000'000'000;
  l.sync = 1;
  REQUIRE(first->run(l).reason == StopReason::kSyncPoint);
  const auto at = first->instructions();
  const auto st = first->vcpu_state();
  REQUIRE(run_all(*first).reason == StopReason::kExited);
  CHECK(first->instructions() == whole->instructions());
  auto snapm = machine(im);
  REQUIRE(snapm->run(l).reason == StopReason::kSyncPoint);
  auto snap = snapm->snapshot();
  auto second = SimMachine::restore(*snap, snapm->host(), SimConfig{}, true);
  CHECK((*second)->vcpu_state().rip == st.rip);
  REQUIRE(run_all(**second).reason == StopReason::kExited);
  CHECK(at > 0);
  CHECK((*second)->instructions() == whole->instructions());  // the count continues across the restore
  CHECK((*second)->output().stages.size() + 1 == whole->output().stages.size());
}
