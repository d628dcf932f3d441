// `baton explore --script` end to end: every shipped scenario (docs/scenarios/*.bsc), exit codes
// (2 at the first error with its line, 1 at a failed expectation), time travel by replay, the
// snapshot files `save` writes (read back by baton check and baton ept), and --json output.
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "cli_run.hpp"

using baton::test::run_baton;
using baton::test::ScratchDir;

namespace {

// Writes a script into the scratch directory and returns its path.
std::string script(const ScratchDir& d, const std::string& name, const std::string& text) {
  const std::string p = d / name;
  std::ofstream(p) << text;
  return p;
}

// The JSON object a single-command script printed (after its "explore> " echo line).
nlohmann::json json_of(const std::string& out) {
  const auto nl = out.find('\n');
  REQUIRE(nl != std::string::npos);
  return nlohmann::json::parse(out.substr(nl + 1));
}

}  // namespace

TEST_CASE("explore: every shipped scenario runs and meets its expectations", "[cli][explore]") {
  ScratchDir d;
  std::vector<std::filesystem::path> files;
  // kvm-* scenarios need /dev/kvm: the kvm suite runs them (tests/cli/explore_kvm_test.cpp).
  for (const auto& e : std::filesystem::directory_iterator(BATON_SCENARIO_DIR))
    if (e.path().extension() == ".bsc" && e.path().filename().string().rfind("kvm-", 0) != 0) files.push_back(e.path());
  std::sort(files.begin(), files.end());
  // The four stories of the paper at least.
  REQUIRE(files.size() >= 4);
  for (const auto& f : files) {
    INFO(f.string());
    auto r = run_baton(d, "explore --script " + f.string());
    INFO(r.out << r.err);
    CHECK(r.code == 0);
    CHECK(r.err.empty());
    CHECK_THAT(r.out, Catch::Contains("explore> expect"));  // each scenario asserts something
  }
}

TEST_CASE("explore: the corrupted-leaf story shows refuted/rejected, then proven/match", "[cli][explore]") {
  ScratchDir d;
  auto r = run_baton(d, "explore --script " BATON_SCENARIO_DIR "/corrupted-leaf.bsc");
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("planted in the running VM: EPT leaf of GPA 0x400000 (level 1) bit 12"));
  CHECK_THAT(r.out, Catch::Contains("conformance refuted: GPA 0x400000"));
  CHECK_THAT(r.out, Catch::Contains("outcome      rejected"));
  CHECK_THAT(r.out, Catch::Contains("outcome      ok"));
  CHECK_THAT(r.out, Catch::Contains("restored clean: insn "));
}

TEST_CASE("explore: a failed expectation exits 1 naming the line; nothing after it runs", "[cli][explore]") {
  ScratchDir d;
  const auto s = script(d, "f.bsc",
                        "load memtouch --mem 64M\nrun to sync 1\n# a comment\n\nexpect stop exited\nregs rip\n");
  auto r = run_baton(d, "explore --script " + s);
  INFO(r.out << r.err);
  CHECK(r.code == 1);
  CHECK_THAT(r.err, Catch::Contains(s + ":5: expectation failed: stop exited, got sync-point"));
  CHECK_THAT(r.out, !Catch::Contains("explore> regs"));
  // Expectations about results that do not exist yet fail too (never pass vacuously).
  for (const char* e : {"expect checksum match", "expect verdict proven", "expect outcome ok", "expect diff equal"}) {
    const auto s2 = script(d, "g.bsc", std::string(e) + "\n");
    auto g = run_baton(d, "explore --script " + s2);
    INFO(e << ": " << g.err);
    CHECK(g.code == 1);
    CHECK_THAT(g.err, Catch::Contains(":1: expectation failed: "));
  }
  // A wrong verdict for a named property.
  const auto s3 = script(d, "h.bsc", "load memtouch --mem 64M\nrun to sync 1\nmigrate local-adopt\nexpect verdict refuted equivalence\n");
  auto h = run_baton(d, "explore --script " + s3);
  CHECK(h.code == 1);
  CHECK_THAT(h.err, Catch::Contains(":4: expectation failed: verdict refuted for equivalence, got proven"));
}

TEST_CASE("explore: an error stops the script at its line with exit 2", "[cli][explore]") {
  ScratchDir d;
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"frobnicate\n", ":1: unknown command 'frobnicate'"},
      {"run to sync 1\nrun to sync 1\n", ":2: sync point 1 has passed"},
      {"inject ept:zz\n", ":1: fault 'ept:zz': 'zz' is not a GPA"},
      {"inject none\n", ":1: inject none plants nothing"},
      {"inject --id 3 --plan p.json\n", ":1: inject --id/--plan: replay a campaign fault with `baton inject ID --plan PLAN --explain`"},
      {"migrate teleport\n", ":1: 'teleport' is not one of local-adopt"},
      {"migrate local-adopt --policy maybe\n", ":1: --policy 'maybe' is not one of reject, fallback, accept"},
      {"restore nowhere\n", ":1: no snapshot 'nowhere'"},
      {"ept walk banana\n", ":1: GPA 'banana' is not a number"},
      {"vmcs no_such_field_at_all\n", ":1: no VMCS field 'no_such_field_at_all'"},
      {"regs xmm99\n", ":1: no register 'xmm99'"},
      {"check @nowhere @now\n", ":1: no snapshot 'nowhere'"},
      {"expect frobs 1\n", ":1: expect: 'frobs' is not one of"},
      {"load no-such-guest\n", ":1: "},
      {"run to exit\nrun 10\n", ":2: the guest has exited"},
      {"break port 0x10000\n", ":1: break port: ports are 0..0xffff"},
  };
  for (const auto& [text, msg] : bad) {
    const auto s = script(d, "bad.bsc", text + "regs rip\n");
    auto r = run_baton(d, "explore memtouch --mem 64M --script " + s);
    INFO(text << " -> " << r.err);
    CHECK(r.code == 2);
    CHECK_THAT(r.err, Catch::StartsWith("baton: " + s + msg));
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);  // one line
    CHECK_THAT(r.out, !Catch::Contains("explore> regs rip"));
  }
  auto none = run_baton(d, "explore --script " + (d / "missing.bsc"));
  CHECK(none.code == 2);
  CHECK_THAT(none.err, Catch::Contains("cannot read"));
  // Without a KVM device, --backend kvm is one line naming the device (the kvm suite runs the rest).
  auto kvm = run_baton(d, "explore --backend kvm --script " + script(d, "k.bsc", "regs\n"), "BATON_KVM_DEVICE=" + (d / "no-kvm"));
  CHECK(kvm.code == 2);
  CHECK_THAT(kvm.err, Catch::StartsWith("baton: " + (d / "no-kvm") + ": No such file or directory"));
  CHECK(std::count(kvm.err.begin(), kvm.err.end(), '\n') == 1);
  CHECK(kvm.out.empty());
  auto other = run_baton(d, "explore --backend xen");
  CHECK(other.code == 2);
  CHECK_THAT(other.err, Catch::StartsWith("baton: --backend 'xen' is not one of sim, kvm"));
}

TEST_CASE("explore: breakpoints stop runs at sync points, instructions and ports", "[cli][explore]") {
  ScratchDir d;
  const auto s = script(d, "b.bsc",
                        "load memtouch --mem 64M -p passes=3\nbreak sync 2\nrun\nexpect stop sync-point 2\n"
                        "break insn 300000\nrun\nexpect stop insn-limit\nbreak clear\nbreak port sync\nrun\nexpect stop port\n"
                        "run to exit\nexpect stop exited\nexpect checksum match\n");
  auto r = run_baton(d, "explore --script " + s);
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("stopped: insn-limit at insn 300"));
  CHECK_THAT(r.out, Catch::Contains("stopped: port (OUT port "));
}

TEST_CASE("explore: restore replays to the same state, and save writes a snapshot baton check reads", "[cli][explore]") {
  ScratchDir d;
  const std::string snap = d / "a.snap";
  const auto s = script(d, "t.bsc",
                        "load memtouch --mem 64M\nrun to sync 1\nsnapshot a\nrun 300000\nsnapshot b\nrestore a\n"
                        "run 300000\nept diff @b @now\nexpect diff equal\nsave a " + snap + "\nsnapshots\n");
  auto r = run_baton(d, "explore --script " + s);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("restored a: insn "));
  // The same instruction count after the same run from the restored state.
  const auto first = r.out.find("stopped: insn-limit at insn ");
  const auto second = r.out.find("stopped: insn-limit at insn ", first + 1);
  REQUIRE(second != std::string::npos);
  CHECK(r.out.substr(first, 40) == r.out.substr(second, 40));
  auto c = run_baton(d, "check --spec " + snap);
  INFO(c.out << c.err);
  CHECK(c.code == 0);
  auto e = run_baton(d, "ept walk " + snap + " 0x400000");
  CHECK(e.code == 0);
  CHECK_THAT(e.out, Catch::Contains("4K-leaf"));
  // save never overwrites without --force.
  const auto s2 = script(d, "t2.bsc", "save now " + snap + "\n");
  auto again = run_baton(d, "explore --script " + s2);
  CHECK(again.code == 2);
  const auto s3 = script(d, "t3.bsc", "save now " + snap + " --force\n");
  CHECK(run_baton(d, "explore --script " + s3).code == 0);
}

TEST_CASE("explore: --json output of the views and of migrate", "[cli][explore]") {
  ScratchDir d;
  auto one = [&](const std::string& pre, const std::string& cmd) {
    const auto s = script(d, "j.bsc", pre + cmd + "\n");
    auto r = run_baton(d, "explore memtouch --mem 64M --script " + s);
    INFO(cmd << ": " << r.out << r.err);
    REQUIRE(r.code == 0);
    // Skip the echo lines of the set-up commands and their output.
    const auto at = r.out.find("explore> " + cmd);
    REQUIRE(at != std::string::npos);
    return json_of(r.out.substr(at));
  };
  const std::string pre = "run to sync 1\n";
  CHECK(one("", "run to sync 1 --json")["stop"] == "sync-point");
  CHECK(one(pre, "regs --json").contains("rip"));
  CHECK(one(pre, "ept walk 0x400000 --json")["outcome"].is_string());
  CHECK(one(pre, "ept dump --json")["runs"].size() >= 1);
  CHECK(one(pre, "vmcs ept_pointer --json")["ept_pointer"].is_string());
  CHECK(one(pre, "memslots --json")["memslots"].size() == 1);
  CHECK(one(pre, "disas --json")["instructions"].size() == 8);
  CHECK(one(pre, "mem 0x400000 32 --json")["length"] == 32);
  CHECK(one(pre, "console --json")["stages"].size() == 1);
  CHECK(one(pre, "check --json")["verdict"] == "proven");
  auto m = one(pre + "inject ept:0x400000\n", "migrate local-adopt --json");
  CHECK(m["outcome"] == "rejected");
  CHECK(m["verdict"] == "refuted");
  CHECK(one(pre, "backend --json")["backend"] == "sim");
}

TEST_CASE("explore: help lists every command on one screen, help CMD explains one", "[cli][explore]") {
  ScratchDir d;
  const auto s = script(d, "h.bsc", "help\nhelp migrate\n");
  auto r = run_baton(d, "explore --script " + s);
  REQUIRE(r.code == 0);
  for (const char* c : {"run", "step", "break", "regs", "disas", "mem", "console", "ept", "vmcs", "memslots", "inject",
                        "migrate", "check", "snapshot", "restore", "snapshots", "save", "backend", "expect", "help"})
    CHECK_THAT(r.out, Catch::Contains(std::string("\n  ") + c + " "));
  const auto help = r.out.substr(0, r.out.find("explore> help migrate"));
  CHECK(std::count(help.begin(), help.end(), '\n') <= 26);
  CHECK_THAT(r.out, Catch::Contains("METHOD: local-adopt, local-rebuild, local-lazy, precopy"));
}

TEST_CASE("explore: migrate from the session gives baton migrate's timeline, checks and outcome", "[cli][explore]") {
  ScratchDir d;
  auto m = run_baton(d, "migrate memtouch --mem 64M --method local-adopt --fault ept:0x400000 --json");
  REQUIRE(m.code == 1);
  const auto a = nlohmann::json::parse(m.out);
  const auto s = script(d, "m.bsc", "run to sync 1\ninject ept:0x400000\nmigrate local-adopt --json\n");
  auto r = run_baton(d, "explore memtouch --mem 64M --script " + s);
  INFO(r.out << r.err);
  REQUIRE(r.code == 0);
  const auto b = json_of(r.out.substr(r.out.find("explore> migrate")));
  for (const char* k : {"timeline", "fault", "outcome", "verdict", "checksum", "expected_checksum", "method", "downtime_us", "guest", "mem"})
    CHECK(a[k] == b[k]);
  REQUIRE(a["checks"].size() == b["checks"].size());
  for (std::size_t i = 0; i < a["checks"].size(); ++i) {
    CHECK(a["checks"][i]["check"] == b["checks"][i]["check"]);
    CHECK(a["checks"][i]["verdict"] == b["checks"][i]["verdict"]);
    CHECK(a["checks"][i]["summary"] == b["checks"][i]["summary"]);
  }
}

TEST_CASE("explore: check @A @B proves or refutes a handover between two states", "[cli][explore]") {
  ScratchDir d;
  const auto s = script(d, "c.bsc",
                        "load memtouch --mem 64M\nrun to sync 1\nsnapshot clean\ninject ept:0x400000\n"
                        "migrate local-adopt\ncheck @migrate.before @migrate.after\nexpect verdict refuted conformance\n"
                        "check @clean @now equivalence\nexpect verdict refuted equivalence\n"
                        "check @clean @clean equivalence\nexpect verdict proven equivalence\n"
                        "vmcs ept_pointer @migrate.after\nmemslots @clean\nept dump --tree @clean\n");
  auto r = run_baton(d, "explore --script " + s);
  INFO(r.out << r.err);
  CHECK(r.code == 0);
  CHECK_THAT(r.out, Catch::Contains("L1[  0] gpa"));
  // A view of a migration's side cannot be restored: it has no history to replay.
  const auto s2 = script(d, "c2.bsc", "run to sync 1\nmigrate local-adopt\nrestore migrate.after\n");
  auto r2 = run_baton(d, "explore memtouch --mem 64M --script " + s2);
  CHECK(r2.code == 2);
  CHECK_THAT(r2.err, Catch::Contains(":3: @migrate.after comes from a migration: it can be viewed, checked and saved, not restored"));
}
