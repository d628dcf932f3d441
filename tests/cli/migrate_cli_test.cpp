// `baton migrate` and `baton compare` end to end: exit codes, JSON, the saved handover pair
// re-proven by `baton check`, the plot, and one clear error line for bad input.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"

using baton::test::run_baton;
using baton::test::ScratchDir;

TEST_CASE("migrate: a clean local-adopt is proven and reaches the checksum (exit 0)", "[cli][migrate]") {
  ScratchDir d;
  auto r = run_baton(d, "migrate memtouch --mem 64M --method local-adopt --json --save " + (d / "h"));
  INFO(r.err);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(r.out);
  CHECK(j["outcome"] == "ok");
  CHECK(j["verdict"] == "proven");
  CHECK(j["checksum_matches"] == true);
  CHECK(j["downtime_us"].get<double>() > 0);
  CHECK(j["timeline"].size() >= 5);
  // The saved pair is an ordinary snapshot pair: baton check proves it again.
  auto c = run_baton(d, "check " + (d / "h.before.snap") + " " + (d / "h.after.snap"));
  INFO(c.out << c.err);
  CHECK(c.code == 0);
  // --save never overwrites without --force.
  auto again = run_baton(d, "migrate memtouch --mem 64M --save " + (d / "h"));
  CHECK(again.code == 2);
  CHECK_THAT(again.err, Catch::Contains("already exists (refusing to overwrite; pass --force)"));
}

TEST_CASE("migrate: a planted EPT fault refutes local-adopt (exit 1) and fallback recovers (exit 0)", "[cli][migrate]") {
  ScratchDir d;
  auto r = run_baton(d, "migrate memtouch --mem 64M --method local-adopt --fault ept");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Catch::Contains("conformance refuted: GPA 0x") && Catch::Contains("REJECTED"));
  auto f = run_baton(d, "migrate memtouch --mem 64M --method local-adopt --fault ept --policy fallback");
  INFO(f.out << f.err);
  CHECK(f.code == 0);
  CHECK_THAT(f.out, Catch::Contains("fell back to local-rebuild") && Catch::Contains("match"));
}

TEST_CASE("compare: all methods in one table, and an SVG plot that is never overwritten silently", "[cli][compare]") {
  ScratchDir d;
  const std::string svg = d / "c.svg";
  auto r = run_baton(d, "compare memtouch --mem 64M,128M --plot " + svg);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  for (const char* m : {"local-adopt", "local-rebuild", "local-lazy", "precopy"}) CHECK_THAT(r.out, Catch::Contains(m));
  std::ifstream f(svg);
  std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  CHECK_THAT(text, Catch::Contains("<svg") && Catch::Contains("downtime") && Catch::Contains("local-adopt"));
  auto again = run_baton(d, "compare memtouch --mem 64M --plot " + svg);
  CHECK(again.code == 2);
  CHECK_THAT(again.err, Catch::Contains("already exists (refusing to overwrite; pass --force)"));
  auto j = run_baton(d, "compare memtouch --mem 64M --methods adopt,lazy --json");
  REQUIRE(j.code == 0);
  CHECK(nlohmann::json::parse(j.out)["runs"].size() == 2);
}

TEST_CASE("migrate and compare: bad input is one clear error line (exit 2)", "[cli][migrate][negative]") {
  ScratchDir d;
  const std::pair<const char*, const char*> cases[] = {
      {"migrate memtouch --method teleport", "--method 'teleport'"},
      {"migrate memtouch --fault cosmic-ray", "unknown fault"},
      {"migrate memtouch --fault ept:0x1000:77", "bit must be"},
      {"migrate memtouch --policy maybe", "--policy 'maybe'"},
      {"migrate memtouch --dirty off --method precopy", "--dirty 'off'"},
      {"migrate memtouch --at-sync 99", "never reached the migration point"},
      {"migrate memtouch --mem 12Q", "--mem '12Q'"},
      {"migrate no-such-guest", "no-such-guest"},
      {"compare memtouch --mem 64M,lots", "'lots' is not a size"},
      {"compare memtouch --methods adopt,teleport", "'teleport'"},
  };
  for (const auto& [args, want] : cases) {
    CAPTURE(args);
    auto r = run_baton(d, args);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::Contains(want));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
}
