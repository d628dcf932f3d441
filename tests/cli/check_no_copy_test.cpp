// `baton check --no-copy` end to end: hand-written ftrace captures imported with
// `baton trace import`, then proven (exit 0), refuted with the gfn and both pfns (exit 1), or
// rejected with one clear error line (exit 2).
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "cli_run.hpp"

using baton::test::run_baton;
using baton::test::ScratchDir;

namespace {
std::string capture(const std::string& name) { return std::string(BATON_CHECKER_DATA_DIR) + "/" + name; }

// Imports a capture into DIR/out and returns the trace path.
std::string import(const ScratchDir& d, const std::string& name, const std::string& out) {
  auto r = run_baton(d, "trace import " + capture(name) + " " + (d / out));
  INFO(r.err);
  REQUIRE(r.code == 0);
  return d / out;
}

// Counts the lines of a text.
std::size_t lines(const std::string& s) {
  std::size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}
}  // namespace

TEST_CASE("check --no-copy: same pfns in both VMs is proven (exit 0)", "[cli][no-copy]") {
  ScratchDir d;
  const std::string t = import(d, "nocopy-local.txt", "local.trc");
  auto r = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 4300");
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("no-copy   proven") && Catch::Contains("all 4 gfns mapped by both VMs"));
  auto j = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 4300 --json");
  CHECK(j.code == 0);
  CHECK_THAT(j.out, Catch::Contains("\"verdict\": \"proven\"") && Catch::Contains("\"shared_frames\": 4"));
  auto m = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 4300 --monolithic");
  CHECK(m.code == 0);
}

TEST_CASE("check --no-copy: one gfn mapped to another pfn is refuted naming it (exit 1)", "[cli][no-copy]") {
  ScratchDir d;
  const std::string t = import(d, "nocopy-onediff.txt", "onediff.trc");
  auto r = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 4300");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Catch::Contains("no-copy refuted at gfn 0x402") && Catch::Contains("source VM 4242: pfn 0x1a2b02") &&
                        Catch::Contains("dest   VM 4300: pfn 0x1a2f02"));
  auto j = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 4300 --json");
  CHECK(j.code == 1);
  CHECK_THAT(j.out, Catch::Contains("\"gfn\": \"0x402\"") && Catch::Contains("\"dest_pfn\": \"0x1a2f02\""));
}

TEST_CASE("check --no-copy: a precopy capture is refuted (exit 1)", "[cli][no-copy]") {
  ScratchDir d;
  const std::string t = import(d, "nocopy-precopy-report.txt", "pre.trc");
  auto r = run_baton(d, "check --no-copy " + t + " --source 3105 --dest 3209");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Catch::Contains("refuted"));
}

TEST_CASE("check --no-copy: an unknown VM id is one clear error (exit 2)", "[cli][no-copy][bad-input]") {
  ScratchDir d;
  const std::string t = import(d, "nocopy-local.txt", "local.trc");
  auto r = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 777");
  CHECK(r.code == 2);
  CHECK(lines(r.err) == 1);
  CHECK_THAT(r.err, Catch::StartsWith("baton: ") && Catch::Contains("no VM 777 in the trace") &&
                        Catch::Contains("VMs present: 4242, 4300"));
  CHECK(r.out.empty());
  auto same = run_baton(d, "check --no-copy " + t + " --source 4242 --dest 4242");
  CHECK(same.code == 2);
  CHECK_THAT(same.err, Catch::Contains("both name VM 4242"));
  auto missing = run_baton(d, "check --no-copy " + t + " --source 4242");
  CHECK(missing.code == 2);
  CHECK_THAT(missing.err, Catch::Contains("needs --source VM and --dest VM"));
  auto bad = run_baton(d, "check --no-copy " + t + " --source pid42 --dest 4300");
  CHECK(bad.code == 2);
  CHECK_THAT(bad.err, Catch::Contains("--source 'pid42' is not a number"));
}

TEST_CASE("check --no-copy: a truncated or absent trace is one clear error (exit 2)", "[cli][no-copy][bad-input]") {
  ScratchDir d;
  const std::string t = import(d, "nocopy-local.txt", "local.trc");
  const auto size = std::filesystem::file_size(t);
  for (std::uintmax_t cut : {std::uintmax_t{10}, std::uintmax_t{100}, size / 2, size - 1}) {
    std::filesystem::copy_file(t, d / "cut.trc", std::filesystem::copy_options::overwrite_existing);
    std::filesystem::resize_file(d / "cut.trc", cut);
    auto r = run_baton(d, "check --no-copy " + (d / "cut.trc") + " --source 4242 --dest 4300");
    INFO("cut at " << cut << ": " << r.err);
    CHECK(r.code == 2);
    CHECK(lines(r.err) == 1);
    CHECK_THAT(r.err, Catch::Contains("truncated trace"));
  }
  auto r = run_baton(d, "check --no-copy " + (d / "nope.trc") + " --source 4242 --dest 4300");
  CHECK(r.code == 2);
  CHECK_THAT(r.err, Catch::Contains("cannot open"));
  // An ftrace text given where a trace is expected.
  auto txt = run_baton(d, "check --no-copy " + capture("nocopy-local.txt") + " --source 4242 --dest 4300");
  CHECK(txt.code == 2);
  CHECK_THAT(txt.err, Catch::Contains("not a baton trace"));
}
