// Runs the built-in guest ELFs for real, under Unicorn 2.0.1, straight from the GuestImage
// (64-bit entry, ring 3, IOPL=3, the loader's GDT and page tables), and compares what they
// report on the ports with the host reference, through sim/'s bare-Unicorn runner.
#include <catch2/catch.hpp>

#include "baton/guests/abi.hpp"
#include "baton/guests/loader.hpp"
#include "baton/guests/ports.hpp"
#include "baton/guests/registry.hpp"
#include "baton/sim/baseline.hpp"

using namespace baton::guests;

namespace {

// Runs an image in sim/'s bare-Unicorn runner, capped so that a broken guest cannot hang the test.
baton::sim::BareRun run_in_unicorn(const GuestImage& im) {
  auto r = baton::sim::run_bare_unicorn(im, 60'000'000);
  if (!r) FAIL(r.error().message);
  return *r;
}

// Loads a built-in guest, runs it under Unicorn and compares with the host reference.
void run_and_compare(const std::string& name, std::uint64_t mem, PageSize pages, std::vector<Param> params,
                     unsigned ring = 3) {
  CAPTURE(name, mem, to_string(pages), ring);
  GuestConfig cfg;
  cfg.mem_size = mem;
  cfg.page_size = pages;
  cfg.ring = ring;
  cfg.params = params;
  auto im = load_builtin(name, cfg);
  if (!im) FAIL(im.error().message);
  const auto run = run_in_unicorn(*im);
  auto ref = reference_run(name, im->params);
  REQUIRE(ref.ok());
  const GuestRun& got = run.ports;
  CHECK(got.exit_code == kExitOk);
  CHECK(compare_runs(*ref, got) == std::vector<std::string>{});
  CHECK(got.results.size() == ref->results.size());  // the TSC observations are there too
  REQUIRE_FALSE(got.results.empty());
  CHECK(got.results.back() == ResultRecord{kResultChecksum, ref->checksum});
}

}  // namespace

TEST_CASE("every built-in guest runs under Unicorn at every page size and matches the reference", "[unicorn][guests]") {
  for (const BuiltinGuest& g : builtin_guests())
    for (PageSize ps : {PageSize::k4K, PageSize::k2M, PageSize::k1G}) run_and_compare(g.name, 128u << 20, ps, {});
}

TEST_CASE("memtouch in random order over 256 MiB runs with 1 GiB pages", "[unicorn][guests]") {
  run_and_compare("memtouch", std::uint64_t{1} << 31, PageSize::k1G,
                  {{"size", 256u << 20}, {"order", 1}, {"passes", 2}, {"write_pct", 30}});
}

TEST_CASE("checksum with SHA-256 runs under Unicorn", "[unicorn][guests]") {
  run_and_compare("checksum", 64u << 20, PageSize::k2M, {{"algo", 1}, {"size", 64u << 10}});
}

TEST_CASE("a guest entered at ring 0 runs too", "[unicorn][guests]") {
  run_and_compare("io", 64u << 20, PageSize::k4K, {{"count", 300}}, 0);
}

TEST_CASE("a working set that does not fit makes the guest exit with BAD_PARAM", "[unicorn][guests]") {
  // load_builtin refuses this; load_guest (a user ELF path) does not know the workload.
  GuestConfig cfg;
  cfg.mem_size = 16u << 20;
  cfg.params = {{"size", 64u << 20}};
  auto im = load_guest(find_builtin("pagewalk")->elf, cfg);
  REQUIRE(im.ok());
  const auto run = run_in_unicorn(*im);
  CHECK(run.ports.exit_code == kExitBadParam);
  CHECK_THAT(run.ports.console, Catch::Contains("does not fit"));
}

TEST_CASE("a guest given a wrong boot page exits with BAD_BOOT", "[unicorn][guests]") {
  GuestConfig cfg;
  cfg.mem_size = 16u << 20;
  auto im = load_guest(find_builtin("tsc")->elf, cfg);
  REQUIRE(im.ok());
  im->vcpu.gpr[baton::model::VcpuState::kRdi] = im->free_start.value;  // zero memory, no magic
  const auto run = run_in_unicorn(*im);
  CHECK(run.ports.exit_code == kExitBadBoot);
}
