// `baton migrate GUEST --backend kvm` end to end on a real KVM: the source VMM is the baton
// process, the new VMM a real `baton vmm-worker` process. Part of the kvm suite: it runs on
// /dev/kvm where that works and inside the nested KVM host elsewhere (tests/kvm_catch_main.cpp
// exits 77 with the reason where the device is unusable).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "../kvm_flavour.hpp"
#include "baton/guests/registry.hpp"
#include "baton/hw/kvm.hpp"
#include "cli_run.hpp"

using baton::test::check_vcpu_line;
using baton::test::CliResult;
using baton::test::expected_kvm_exit;
using baton::test::expected_kvm_outcome;
using baton::test::expected_vcpu_verdict;
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

// The verdict of one named check line ("" when absent).
std::string verdict_of(const json& j, const std::string& check) {
  for (const json& c : j.at("checks"))
    if (c.at("check") == check) return c.at("verdict");
  return "";
}

// The summary of one named check line ("" when absent).
std::string summary_of(const json& j, const std::string& check) {
  for (const json& c : j.at("checks"))
    if (c.at("check") == check) return c.at("summary");
  return "";
}

}  // namespace

TEST_CASE("migrate --backend kvm: every built-in guest runs on KVM with the simulator's checksum", "[kvm][run]") {
  ScratchDir d;
  for (const char* g : {"memtouch", "checksum", "pagewalk", "io", "tsc", "mixed"}) {
    CAPTURE(g);
    auto r = run_baton(d, std::string("run ") + g + " --backend kvm --json");
    INFO(r.err);
    REQUIRE(r.code == 0);
    const json j = parsed(r);
    CHECK(j.at("checksum_matches") == true);
    CHECK(j.at("outcome") == "exited");
    CHECK_FALSE(j.at("host_flavour").get<std::string>().empty());
  }
}

TEST_CASE("migrate --backend kvm: local-lazy hands the memfd to a second process and is proven (refuted on PVM: the guest TSC)",
          "[kvm][migrate][tsc]") {
  ScratchDir d;
  auto r = run_baton(d, "migrate mixed --backend kvm --method local-lazy --json");
  const json j = parsed(r);
  CHECK(r.code == expected_kvm_exit());
  CHECK(j.at("backend") == "kvm");
  CHECK(j.at("time_base") == "measured-ns");
  CHECK(j.at("outcome") == expected_kvm_outcome());
  CHECK(j.at("switched") == true);
  CHECK(j.at("checksum_matches") == true);
  CHECK(j.at("verdict") == expected_vcpu_verdict());
  check_vcpu_line(verdict_of(j, "vcpu"), summary_of(j, "vcpu"));
  CHECK(j.at("bytes_copied") == 0);  // nothing copied: the worker maps the same pages
  CHECK(j.at("worker_pid").get<unsigned>() != j.at("source_pid").get<unsigned>());
  const double down = j.at("downtime_us");
  CHECK(down > 0);
  // The downtime phases add up to the downtime exactly (they are contiguous).
  double sum = 0;
  for (const json& p : j.at("timeline"))
    if (p.at("downtime") == true) sum += p.at("us").get<double>();
  CHECK(sum == Approx(down).epsilon(1e-9));
}

TEST_CASE("migrate --backend kvm: a TSC offset the worker's KVM does not apply refutes the vcpu check, on every host",
          "[kvm][migrate][tsc]") {
  // BATON_WORKER_KEEP_TSC_OFFSET makes the worker leave the baseline's offset in place, as PVM
  // does with the one it writes: the guest TSC then runs on through the downtime (docs/checker.md,
  // the TSC relation), and the check must say so wherever it runs, not only on PVM.
  ScratchDir d;
  auto r = run_baton(d, "migrate tsc --backend kvm --method local-lazy --json", "BATON_WORKER_KEEP_TSC_OFFSET=1");
  const json j = parsed(r);
  CHECK(r.code == 1);
  CHECK(j.at("outcome") == "switched-refuted");
  CHECK(j.at("checksum_matches") == true);  // the tsc guest checks no absolute time
  CHECK(verdict_of(j, "vcpu") == "refuted");
  CHECK_THAT(summary_of(j, "vcpu"), Catch::StartsWith(baton::test::tsc_not_applied_text()));
}

TEST_CASE("migrate --backend kvm: precopy copies in dirty-log rounds while the guest runs, and is proven (refuted on PVM)",
          "[kvm][migrate][precopy][device-only]") {
  ScratchDir d;
  // A downtime limit of 0 ms converges only when nothing is pending (QEMU's condition), and
  // there is no converge-pages floor: the rounds run to --max-rounds, where the switchover is
  // forced, unless the guest dirtied nothing during a round (PVM sometimes stalls it there).
  auto r = run_baton(d, "migrate memtouch --backend kvm --method precopy --mem 64M --param size=16M --param passes=8000 "
                        "--max-rounds 3 --downtime-limit 0 --converge-pages 0 --json");
  const json j = parsed(r);
  CHECK(r.code == expected_kvm_exit());
  CHECK(j.at("outcome") == expected_kvm_outcome());
  CHECK(j.at("checksum_matches") == true);
  // Round 1 sends the pages that hold data (the 16 MiB working set and the image), not the
  // zero or never-backed rest of the 64 MiB; later rounds resend dirty pages.
  CHECK(j.at("bytes_copied").get<std::uint64_t>() >= 16u << 20);
  CHECK(j.at("rounds").at(0).at("sent").get<std::uint64_t>() < (64u << 20) / 4096);
  const std::string stop = j.at("precopy_stop");
  INFO(stop);
  if (stop.rfind("converged", 0) == 0) {
    CHECK_THAT(stop, Catch::StartsWith("converged: 0 pages pending < 0 = 0 ms"));
    CHECK(j.at("rounds").size() <= 4);
  } else {
    CHECK_THAT(stop, Catch::StartsWith("not converged after 3 rounds (--max-rounds)"));
    CHECK(j.at("rounds").size() == 4);  // rounds 1-3 and the stop-and-copy
  }
  check_vcpu_line(verdict_of(j, "vcpu"), summary_of(j, "vcpu"));
}

TEST_CASE("migrate --backend kvm: without --trace the worker exits by itself after a run of many exits",
          "[kvm][migrate][device-only][worker-exit]") {
  // Regression: the worker sends its event log after the run whether or not it is wanted. With
  // more events than a socket buffer holds (about 8,000 exits) it blocked in send() until the
  // source killed it at the end of the timeout. The source now closes its end instead.
  ScratchDir d;
  auto r = run_baton(d, "migrate io --backend kvm --method local-lazy --param count=40000 --timeout 20 --json");
  const json j = parsed(r);
  CHECK(r.code == expected_kvm_exit());
  CHECK(j.at("outcome") == expected_kvm_outcome());
  CHECK(j.at("checksum_matches") == true);
  CHECK(j.at("worker_exit") == "exited");
}

TEST_CASE("migrate --backend kvm: local-adopt and local-rebuild are refused: KVM owns its EPT", "[kvm][bad-input]") {
  ScratchDir d;
  for (const char* m : {"local-adopt", "local-rebuild"}) {
    auto r = run_baton(d, std::string("migrate memtouch --backend kvm --method ") + m);
    CHECK(r.code == 2);
    CHECK(r.out.empty());
    CHECK_THAT(r.err, Catch::StartsWith(std::string("baton: ") + m + " is not available on KVM: KVM builds and owns its EPT"));
    CHECK(r.err.find('\n') == r.err.size() - 1);
  }
  auto dl = run_baton(d, "migrate memtouch --backend kvm --method precopy --downtime-limit -1");
  CHECK(dl.code == 2);
  CHECK_THAT(dl.err, Catch::StartsWith("baton: --downtime-limit must be 0..3600000 ms"));
  auto f = run_baton(d, "migrate memtouch --backend kvm --method local-lazy --fault ept");
  CHECK(f.code == 2);
  CHECK_THAT(f.err, Catch::Contains("apply to --backend sim only"));
}

TEST_CASE("migrate --backend kvm: a worker killed with SIGKILL before it resumes leaves the guest with the source",
          "[kvm][migrate][fault]") {
  ScratchDir d;
  // hello: before the handover; vm: its VM is ready, before the pause; state: the vCPU state
  // arrived, before the restore (during the state transfer).
  for (const char* at : {"hello", "vm", "state"}) {
    CAPTURE(at);
    auto r = run_baton(d, "migrate memtouch --mem 64M --param size=4M --backend kvm --method local-lazy --json",
                       std::string("BATON_WORKER_DIE_AT=") + at);
    const json j = parsed(r);
    CHECK(r.code == 1);
    CHECK(j.at("outcome") == "rejected");
    CHECK(j.at("switched") == false);
    CHECK(j.at("checksum_matches") == true);  // the source resumed and finished: nothing lost
    CHECK(j.at("final").at("outcome") == "exited");
  }
  auto p = run_baton(d, "migrate memtouch --backend kvm --method precopy --mem 64M --param size=4M --json",
                     "BATON_WORKER_DIE_AT=vm");
  const json pj = parsed(p);
  CHECK(p.code == 1);
  CHECK(pj.at("outcome") == "rejected");
  CHECK(pj.at("checksum_matches") == true);
}

TEST_CASE("migrate --backend kvm: a worker killed after the resume owns the guest: reported lost, no checksum claimed",
          "[kvm][migrate][fault]") {
  ScratchDir d;
  for (const char* m : {"local-lazy", "precopy"}) {
    CAPTURE(m);
    // Long enough a guest that a precopy's rounds end before it does.
    auto r = run_baton(d, std::string("migrate memtouch --mem 64M --param size=16M --param passes=8000 --max-rounds 3 --backend kvm "
                                      "--json --method ") + m,
                       "BATON_WORKER_DIE_AT=resumed");
    const json j = parsed(r);
    // 2 (an error: the guest is lost), but a refuted check sets 1 first (cli/cmd_migrate.cpp):
    // on PVM the vcpu check of the resumed worker is refuted (the guest TSC).
    CHECK(r.code == (baton::test::kvm_applies_tsc_offset() ? 2 : 1));
    CHECK(j.at("switched") == true);
    CHECK(j.at("outcome") == "error");
    CHECK(j.at("checksum").is_null());
    CHECK(j.at("checksum_matches") == false);
    CHECK_THAT(j.at("final").at("detail").get<std::string>(), Catch::Contains("the guest is lost"));
  }
}
