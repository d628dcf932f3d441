// `baton calibrate` and `baton bench fidelity` end to end on a real KVM (kvm suite): the
// profile has every measurement with min and median, says whether its figures are hardware
// figures, and is a profile the simulator accepts; fidelity prints both sides for both methods.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include "baton/hw/kvm.hpp"
#include "cli_run.hpp"

using baton::test::run_baton;
using baton::test::ScratchDir;
using baton::test::slurp;
using nlohmann::json;

TEST_CASE("calibrate: a profile with provenance that the simulator accepts", "[kvm][calibrate]") {
  ScratchDir d;
  auto r = run_baton(d, "calibrate --reps 2 --out " + (d / "p.json"));
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const json p = json::parse(slurp(d / "p.json"));
  const json& prov = p.at("provenance");
  const std::string flavour = baton::hw::host_flavour();
  CHECK(prov.at("host_flavour") == flavour);
  CHECK(p.at("name") == "calibrated-" + flavour);
  // Only VT-x and SVM figures are hardware figures; PVM and nested hosts are labelled.
  if (flavour == "vmx" || flavour == "svm") CHECK(prov.at("figures") == "hardware");
  else CHECK_THAT(prov.at("figures").get<std::string>(), Catch::StartsWith("not hardware: " + flavour));
  for (const char* k : {"create_vm", "create_vcpu", "exit_io_round_trip", "first_touch_4k", "dirty_log_harvest",
                        "vcpu_state_save", "vcpu_state_load", "copy_bandwidth"}) {
    CAPTURE(k);
    const json& m = prov.at("measurements").at(k);
    // vCPU state save and restore are timed 3 times per repetition.
    CHECK(m.at("repetitions") == (std::string(k).rfind("vcpu_state", 0) == 0 ? 6 : 2));
    CHECK(m.at("min").get<double>() > 0);
    CHECK(m.at("min").get<double>() <= m.at("median").get<double>());
  }
  CHECK(prov.at("measurements").at("memslot_register_by_size").size() == 4);
  CHECK(p.at("exit_round_trip").get<std::uint64_t>() > 0);
  // The simulator runs with it (provenance is accepted and ignored).
  auto run = run_baton(d, "run checksum --profile " + (d / "p.json"));
  INFO(run.err);
  CHECK(run.code == 0);
}

TEST_CASE("bench fidelity: KVM and the simulator, both methods, with the ratios", "[kvm][calibrate][fidelity]") {
  ScratchDir d;
  REQUIRE(run_baton(d, "calibrate --reps 1 --out " + (d / "p.json")).code == 0);
  auto r = run_baton(d, "bench fidelity --profile " + (d / "p.json") + " --mem 64M --size 1M --passes 200 --json");
  INFO(r.out << r.err);
  REQUIRE((r.code == 0 || r.code == 1));  // 1: the 2x goal is not met (a verdict, not an error)
  const json j = json::parse(r.out);
  REQUIRE(j.at("rows").size() == 3);  // local-lazy, precopy, the ratio row
  CHECK(j.at("rows")[0].at("method") == "local-lazy");
  CHECK(j.at("rows")[0].at("kvm").at("downtime_us").get<double>() > 0);
  CHECK(j.at("rows")[0].at("sim").at("downtime_us").get<double>() > 0);
  CHECK(j.at("rows")[1].at("method") == "precopy");
  CHECK(j.at("rows")[2].at("method") == "precopy/local-lazy");
  CHECK(j.at("met") == (r.code == 0));
}
