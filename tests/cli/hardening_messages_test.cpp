// Issue 12, items 12-17: one clear line for every error (exit 2), unplantable faults are errors,
// import-raw states the dumping host, small fixes, one spelling per idea, progress and colour.
#include <catch2/catch.hpp>
#include <fstream>
#include <nlohmann/json.hpp>

#include "baton/hw/kvm.hpp"
#include "cli/hardening_fixtures.hpp"

using baton::test::run_limited;
using baton::test::ScratchDir;
namespace model = baton::model;
namespace t = baton::test;

namespace {
// Returns whether a run failed with exactly one "baton: " line on stderr that contains `want`.
bool one_line_error(const t::TimedResult& r, const std::string& want) {
  return r.code == 2 && r.err.rfind("baton: ", 0) == 0 && std::count(r.err.begin(), r.err.end(), '\n') == 1 &&
         r.err.find(want) != std::string::npos;
}

// Writes a raw EPT dump: a root whose entry 0 points at a PDPT holding one 1 GiB leaf `leaf`.
void write_dump(const std::string& path, std::uint64_t leaf) {
  std::ofstream f(path, std::ios::binary);
  auto record = [&](std::uint64_t hpa, std::uint64_t entry0) {
    std::vector<std::uint8_t> page(4096, 0);
    std::memcpy(page.data(), &entry0, 8);
    f.write(reinterpret_cast<const char*>(&hpa), 8);
    f.write(reinterpret_cast<const char*>(page.data()), 4096);
  };
  record(0x100000, 0x101000 | 7);  // root -> PDPT at 0x101000, rwx
  record(0x101000, leaf);
}

// Returns whether a string holds an ASCII control character other than newline.
bool has_control(const std::string& s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\n') || c == 0x7f) return true;
  return false;
}
}  // namespace

TEST_CASE("errors are one line naming the problem, never a library's internals", "[cli][hardening][messages]") {
  ScratchDir d;
  REQUIRE(run_limited(d, "snapshot make-sample " + (d / "s.snap") + " --mem 64M").code == 0);
  write_dump(d / "dump.bin", 0x80000000 | 0x87);  // a 1 GiB leaf at 2 GiB, rwx, bit 7
  t::write_text_file(d / "noid.json", R"([{"gpa": "0x0", "size": "0x40000000", "hpa": "0x80000000"}])");
  t::write_text_file(d / "badowners.json", R"([{"hpa": 4096, "size": "0x1000", "kind": 7}])");
  std::string junk;
  for (int i = 0; i < 4000; ++i) junk += static_cast<char>(1 + (i * 37) % 250);  // random-looking bytes
  t::write_text_file(d / "junk.txt", junk);
  t::write_text_file(d / "bell.txt", "no trace here\a\x1b[31m red\n" + std::string(200, 'x') + "\n");
  const std::pair<std::string, std::string> cases[] = {
      {"snapshot import-raw " + (d / "o.snap") + " --eptp 0x10001e --pages " + (d / "dump.bin") + " --memslots " +
           (d / "noid.json"),
       (d / "noid.json") + ": bad memslots JSON: memslot #0 has no 'id'"},
      {"snapshot import-raw " + (d / "o.snap") + " --eptp 0x10001e --pages " + (d / "dump.bin") + " --owners " +
           (d / "badowners.json"),
       (d / "badowners.json") + ": bad owners JSON"},
      {"trace import " + (d / "junk.txt") + " " + (d / "j.trc"), "is not a text file"},
      {"trace import " + (d / "bell.txt") + " " + (d / "j.trc"), "(line 1: no trace here\\x07\\x1b[31m red)"},
      {"ept dump", "baton: ept dump: snapshot is required (see `baton ept dump --help`)"},
      {"ept dump " + (d / "s.snap") + " --bogus", "baton: ept dump: The following argument was not expected: --bogus"},
      {"bogus", "'bogus' is not a baton command"},
      {"migrat memtouch", "did you mean 'baton migrate'?"},
      {"ept dumb x.snap", "did you mean 'baton ept dump'?"},
      {"migrate memtouch --fault vmcs:bogus", "no VMCS field 'bogus' (give an encoding such as 0x201a"},
  };
  for (const auto& [args, want] : cases) {
    CAPTURE(args);
    auto r = run_limited(d, args, 30, 2048);
    INFO(r.err);
    CHECK(one_line_error(r, want));
    CHECK_THAT(r.err, !Catch::Contains("json.exception") && !Catch::Contains("stoull") &&
                          !Catch::Contains("Run with --help") && !Catch::Contains("`baton` docs"));
    CHECK_FALSE(has_control(r.err));
    CHECK_FALSE(has_control(r.out));
  }
}

TEST_CASE("check --spec on an invalid EPTP names the field once, without an empty 'after'",
          "[cli][hardening][messages]") {
  ScratchDir d;
  model::HandoverSnapshot s = t::bare_snapshot();
  s.eptp = model::Eptp{(std::uint64_t{0x1000} << 12) | 0x1f};  // memory type 7: invalid
  t::save_or_fail(s, d / "bad.snap");
  auto r = run_limited(d, "check --spec " + (d / "bad.snap") + " --properties well-formedness");
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.out, Catch::Contains("eptp: 0x100001f"));
  CHECK_THAT(r.out, !Catch::Contains("after"));
}

TEST_CASE("run --backend kvm says what this host's KVM lacks when that explains the failure",
          "[cli][hardening][messages]") {
  ScratchDir d;
  auto r = run_limited(d, "run checksum --backend kvm", 60, 3072);
  INFO(r.out << r.err);
  if (baton::hw::kvm_unavailable_reason()) {
    CHECK(one_line_error(r, "/dev/kvm"));
  } else if (baton::hw::host_flavour() == "pvm" && r.code != 0) {
    CHECK(one_line_error(r, "baton: /dev/kvm: this host's KVM is PVM, which does not honour IOPL=3"));
  } else {
    // This host's KVM can run the guest: then it must, with no error to explain.
    CHECK(r.code == 0);
    CHECK(r.err.empty());
  }
}

TEST_CASE("an unplantable fault is an error (exit 2), as an EPT fault at an unmapped GPA is",
          "[cli][hardening][messages]") {
  ScratchDir d;
  auto r = run_limited(d, "migrate memtouch --mem 64M --fault memslot:99", 120, 3072);
  INFO(r.out << r.err);
  CHECK(one_line_error(r, "--fault: memslot 99 does not exist (memslots: 0"));
  auto ok = run_limited(d, "migrate memtouch --mem 64M --fault memslot:0", 120, 3072);
  CHECK(ok.code != 2);
}

TEST_CASE("import-raw states the dumping host: MAXPHYADDR, execute-only, MBEC; empty spec files are refused",
          "[cli][hardening][messages]") {
  ScratchDir d;
  // A 1 GiB leaf at 2^40 + 2 GiB: fine at MAXPHYADDR 46, a reserved bit at 36.
  write_dump(d / "high.bin", (std::uint64_t{1} << 40) | 0x80000000 | 0x87);
  // An execute-only 1 GiB leaf (X without R or W): legal only with execute-only support.
  write_dump(d / "xonly.bin", 0x80000000 | 0x84);
  REQUIRE(
      run_limited(d, "snapshot import-raw " + (d / "h46.snap") + " --eptp 0x10001e --pages " + (d / "high.bin")).code ==
      0);
  auto i36 = run_limited(d, "snapshot import-raw " + (d / "h36.snap") + " --eptp 0x10001e --pages " + (d / "high.bin") +
                                " --maxphyaddr 36");
  INFO(i36.err);
  REQUIRE(i36.code == 0);
  CHECK_THAT(i36.out, Catch::Contains("MAXPHYADDR 36"));
  auto w46 = run_limited(d, "ept walk --json " + (d / "h46.snap") + " 0x1000");
  REQUIRE(w46.code == 0);
  CHECK(nlohmann::json::parse(w46.out)["outcome"] == "translated");
  auto w36 = run_limited(d, "ept walk --json " + (d / "h36.snap") + " 0x1000");
  REQUIRE(w36.code == 0);
  CHECK(nlohmann::json::parse(w36.out)["outcome"] == "EPT misconfiguration");
  REQUIRE(
      run_limited(d, "snapshot import-raw " + (d / "x1.snap") + " --eptp 0x10001e --pages " + (d / "xonly.bin")).code ==
      0);
  REQUIRE(run_limited(d, "snapshot import-raw " + (d / "x0.snap") + " --eptp 0x10001e --pages " + (d / "xonly.bin") +
                             " --no-execute-only")
              .code == 0);
  auto x1 = run_limited(d, "ept walk --json --access x " + (d / "x1.snap") + " 0x1000");
  auto x0 = run_limited(d, "ept walk --json --access x " + (d / "x0.snap") + " 0x1000");
  CHECK(nlohmann::json::parse(x1.out)["outcome"] == "translated");
  CHECK(nlohmann::json::parse(x0.out)["outcome"] == "EPT misconfiguration");
  auto info = run_limited(d, "snapshot info --json " + (d / "x0.snap"));
  CHECK(nlohmann::json::parse(info.out)["meta"]["execute_only"] == "false");
  // Empty spec files state nothing: refused, naming the file.
  t::write_text_file(d / "empty.json", "\n");
  for (const char* opt : {"--memslots", "--owners"}) {
    auto r = run_limited(d, "snapshot import-raw " + (d / "e.snap") + " --eptp 0x10001e --pages " + (d / "high.bin") +
                                " " + std::string(opt) + " " + (d / "empty.json"));
    CHECK(one_line_error(r, (d / "empty.json") + "' is empty"));
  }
  auto tg = run_limited(d, "trace import " + std::string(BATON_CHECKER_DATA_DIR) + "/nocopy-local.txt " +
                               (d / "t.trc") + " --tgids " + (d / "empty.json"));
  CHECK(one_line_error(tg, "is empty"));
}

TEST_CASE("small ones: --at-insn 0, GPAs beyond the walk, n/a slowdown", "[cli][hardening][messages]") {
  ScratchDir d;
  REQUIRE(run_limited(d, "snapshot make-sample " + (d / "s.snap") + " --mem 64M").code == 0);
  CHECK(one_line_error(run_limited(d, "migrate memtouch --at-insn 0"), "--at-insn"));
  auto w = run_limited(d, "ept walk " + (d / "s.snap") + " 0x1000000001000");
  CHECK(one_line_error(w, "has bits set above bit 45 (MAXPHYADDR 46"));
  CHECK(run_limited(d, "ept walk " + (d / "s.snap") + " 0x1000").code == 0);
  // A rejected handover measured no slowdown: "n/a" in the table, null in the JSON.
  auto c = run_limited(d, "compare memtouch --mem 64M --methods adopt --fault ept", 120, 3072);
  INFO(c.out << c.err);
  CHECK(c.code == 1);
  CHECK_THAT(c.out, Catch::Contains(" n/a ") && !Catch::Contains("nan"));
  auto j = run_limited(d, "compare memtouch --mem 64M --methods adopt,rebuild --fault ept --json", 120, 3072);
  REQUIRE(j.code == 1);
  const auto runs = nlohmann::json::parse(j.out)["runs"];
  CHECK(runs[0]["slowdown"]["measured"] == false);
  CHECK(runs[0]["slowdown"]["extra_cycles"].is_null());
  CHECK(runs[1]["slowdown"]["measured"] == true);
  CHECK(runs[1]["slowdown"]["extra_cycles"].is_number());
}

TEST_CASE("one spelling per idea: bench --json, --version, positional OUT, --timeout in seconds",
          "[cli][hardening][consistency]") {
  ScratchDir d;
  auto v = run_limited(d, "--version");
  CHECK(v.code == 0);
  CHECK_THAT(v.out, Catch::Matches("baton [0-9.]+ \\(commit [0-9a-f]+(-dirty)?, [A-Za-z]+ build\\)\n"));
  for (const char* b : {"bench model", "bench sim", "bench checker", "bench migrate"}) {
    auto h = run_limited(d, std::string(b) + " --help");
    CAPTURE(b);
    CHECK_THAT(h.out, Catch::Contains("--json"));
  }
  auto e = run_limited(d, "guests extract checksum " + (d / "c.elf"));
  CHECK(e.code == 0);
  CHECK(std::filesystem::file_size(d / "c.elf") > 1000);
  CHECK_THAT(run_limited(d, "vmm-worker --help").out, Catch::Contains("--timeout") && !Catch::Contains("--timeout-ms"));
  // Where defaults differ, --help says why.
  CHECK_THAT(run_limited(d, "run --help").out, Catch::Contains("a plain run needs none"));
  CHECK_THAT(run_limited(d, "migrate --help").out, Catch::Contains("precopy needs one"));
}

TEST_CASE("progress: on a terminal by default, with --progress in logs (compare has an ETA), never with --quiet",
          "[cli][hardening][progress]") {
  ScratchDir d;
  auto p = run_limited(d, "compare memtouch --mem 64M,128M --methods adopt --progress", 120, 3072);
  INFO(p.err);
  REQUIRE(p.code == 0);
  CHECK_THAT(p.err, Catch::Contains("[1/2] memtouch local-adopt at 64M") && Catch::Contains("[2/2]") &&
                        Catch::Contains("ETA"));
  auto q = run_limited(d, "compare memtouch --mem 64M,128M --methods adopt --quiet", 120, 3072);
  CHECK(q.code == 0);
  CHECK(q.err.empty());
  auto n = run_limited(d, "compare memtouch --mem 64M --methods adopt", 120, 3072);  // not a terminal
  CHECK(n.err.empty());
}

TEST_CASE("the demo writes no escape codes into a log or under NO_COLOR", "[cli][hardening][progress]") {
  ScratchDir d;
  // Only the first step: a fake baton that prints its arguments keeps this test fast.
  t::write_text_file(d / "fake-baton", "#!/bin/sh\necho \"baton $*\"\nexit 0\n");
  REQUIRE(t::shell("chmod +x " + (d / "fake-baton")) == 0);
  const std::string demo = std::string(BATON_SOURCE_DIR) + "/scripts/demo.sh";
  const std::string cmd = "bash " + demo + " " + (d / "fake-baton") + " " + (d / "out") + " > " + (d / "log") + " 2>&1";
  t::shell(cmd);
  const std::string log = t::slurp(d / "log");
  CHECK_THAT(log, Catch::Contains("downtime-us") && Catch::Contains("local-adopt"));
  CHECK(log.find('\033') == std::string::npos);
}
