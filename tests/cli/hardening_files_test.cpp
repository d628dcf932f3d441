// Issue 12, items 5-11: bounded resources for every input (cost profiles, non-regular and huge
// files), and one writer for every output (refuse without --force, check paths before the
// work, no 0-byte or temporary debris on a full disk or a signal, the --save pair whole).
#include <catch2/catch.hpp>
#include <thread>

#include "cli/hardening_fixtures.hpp"

using baton::test::run_limited;
using baton::test::ScratchDir;
namespace t = baton::test;

namespace {
// Returns whether a run failed with exactly one "baton: " line on stderr that contains `want`.
bool one_line_error(const t::TimedResult& r, const std::string& want) {
  return r.code == 2 && r.err.rfind("baton: ", 0) == 0 && std::count(r.err.begin(), r.err.end(), '\n') == 1 &&
         r.err.find(want) != std::string::npos;
}
}  // namespace

TEST_CASE("cost profiles: every field is checked against its documented range, duplicates refused",
          "[cli][hardening][resources]") {
  ScratchDir d;
  const std::pair<std::string, std::string> cases[] = {
      {R"({"tlb_entries_4k": 9223372036854775808})", "\"tlb_entries_4k\" must be an integer within 1..65536"},
      {R"({"tlb_entries_4k": 1073741824})", "\"tlb_entries_4k\" must be an integer within 1..65536"},
      {R"({"base_cpi": 1e300})", "\"base_cpi\" must be a number within 0.01..100"},
      {R"({"frequency_ghz": 1e308})", "\"frequency_ghz\" must be a number within 0.1..10"},
      {R"({"exit_round_trip": 18446744073709551615})", "\"exit_round_trip\" must be an integer within 0..10000000"},
      {R"({"handover_wakeup": 1000000001})", "\"handover_wakeup\" must be an integer within 0..1000000000"},
      {R"({"handover_notify": -1})", "\"handover_notify\" must be an integer within 0..1000000000"},
      {R"({"transfer_bytes_per_cycle": 4097})", "\"transfer_bytes_per_cycle\" must be a number within 0..4096"},
      {R"({"base_cpi": 1.0, "base_cpi": 2.0})", "key \"base_cpi\" is given twice"},
      {R"({"name": "a\u0007b"})", "\"name\" must not hold control characters"},
      {R"({"base_cpi": )", "not valid JSON"},
  };
  for (const auto& [json, want] : cases) {
    CAPTURE(json);
    t::write_text_file(d / "p.json", json);
    auto r = run_limited(d, "run checksum --profile " + (d / "p.json"), 20, 2048);
    INFO(r.err);
    CHECK(one_line_error(r, want));
    CHECK_THAT(r.err, !Catch::Contains("[json.exception"));
  }
  // A profile inside the ranges runs.
  t::write_text_file(d / "ok.json", R"({"name": "slow", "base_cpi": 1.5, "tlb_entries_4k": 64})");
  auto ok = run_limited(d, "run checksum --profile " + (d / "ok.json"), 60, 2048);
  INFO(ok.err);
  CHECK(ok.code == 0);
}

TEST_CASE("readers refuse non-regular files at once and check headers before reading", "[cli][hardening][resources]") {
  ScratchDir d;
  REQUIRE(t::shell("mkfifo " + (d / "fifo") + " && mkdir " + (d / "dir") + " && truncate -s 2G " + (d / "big.snap") +
                   " && truncate -s 2G " + (d / "big.trc") + " && truncate -s 100G " + (d / "huge.trc") +
                   " && truncate -s 100G " + (d / "huge.txt")) == 0);
  t::write_text_file(d / "memslots.json", "[]");
  const std::pair<std::string, std::string> cases[] = {
      {"snapshot info " + (d / "fifo"), "is a FIFO"},
      {"snapshot info " + (d / "dir"), "is a directory"},
      {"snapshot info /dev/zero", "is a character device"},
      {"snapshot info /proc/self/mem", "/proc/self/mem"},
      {"ept dump " + (d / "big.snap"), "bad magic"},
      {"trace show " + (d / "big.trc"), "bad magic"},
      {"trace show " + (d / "huge.trc"), "is 100 GiB; a trace holds at most 16 GiB"},
      {"snapshot import-raw " + (d / "o.snap") + " --eptp 0x100e --pages " + (d / "big.snap"),
       "not a multiple of 4104"},
      {"trace show " + (d / "fifo"), "is a FIFO"},
      {"trace import " + (d / "fifo") + " " + (d / "out.trc"), "is a FIFO"},
      {"trace import " + (d / "huge.txt") + " " + (d / "out.trc"), "is 100 GiB"},
      {"check --no-copy " + (d / "dir") + " --source 1 --dest 2", "is a directory"},
      {"run checksum --profile " + (d / "fifo"), "is a FIFO"},
      {"run checksum --profile /dev/zero", "is a character device"},
      {"guests show --elf " + (d / "fifo"), "is a FIFO"},
      {"guests show --elf " + (d / "big.snap"), "is 2 GiB"},
      {"snapshot import-raw " + (d / "o.snap") + " --eptp 0x100e --pages " + (d / "fifo"), "is a FIFO"},
      {"snapshot import-raw " + (d / "o.snap") + " --eptp 0x100e --pages /dev/zero", "is a character device"},
      {"snapshot import-raw " + (d / "o.snap") + " --eptp 0x100e --pages " + (d / "big.snap") + " --memslots " +
           (d / "dir"),
       "is a directory"},
  };
  for (const auto& [args, want] : cases) {
    CAPTURE(args);
    auto r = run_limited(d, args, 20, 1024);
    INFO(r.err);
    CHECK(one_line_error(r, want));
    CHECK(r.seconds < 5);
  }
}

TEST_CASE("no output is ever overwritten without --force", "[cli][hardening][files]") {
  ScratchDir d;
  REQUIRE(run_limited(d, "snapshot make-sample " + (d / "before.snap") + " --mem 64M").code == 0);
  REQUIRE(run_limited(d, "snapshot make-sample " + (d / "b2.snap") + " --mem 64M --seed 2").code == 0);
  const std::string original = t::slurp(d / "before.snap");
  const std::string keep = d / "before.snap";
  const std::string cases[] = {
      "run checksum --trace " + keep,
      "migrate memtouch --mem 64M --trace " + keep,
      "check " + (d / "b2.snap") + " " + (d / "b2.snap") + " --junit " + keep,
      "check " + (d / "b2.snap") + " " + (d / "b2.snap") + " --smt2-dir " + (d / "before.snap"),
      "guests extract checksum " + keep,
      "check bit-relevance --samples 1 --out " + keep,
      "trace import " + std::string(BATON_CHECKER_DATA_DIR) + "/nocopy-local.txt " + keep,
      "snapshot make-sample " + keep,
  };
  for (const std::string& args : cases) {
    CAPTURE(args);
    auto r = run_limited(d, args, 60, 3072);
    INFO(r.err);
    CHECK(r.code == 2);
    CHECK(r.err.find("baton: ") == 0);
    CHECK(t::slurp(keep) == original);
  }
  // With --force the JUnit report replaces the file.
  auto f = run_limited(d, "check " + (d / "b2.snap") + " " + (d / "b2.snap") + " --junit " + keep + " --force");
  INFO(f.err);
  CHECK(f.code == 0);
  CHECK_THAT(t::slurp(keep), Catch::Contains("<testsuites"));
  CHECK(t::names_with_prefix(d.path.string(), "before.snap.tmp").empty());
}

TEST_CASE("two concurrent writers of one path: exactly one wins, the other is refused", "[cli][hardening][files]") {
  ScratchDir d;
  const std::string out = d / "same.snap";
  const std::string cmd = "cd " + d.path.string() + " && { (" + t::baton_exe() + " snapshot make-sample " + out +
                          " --mem 8G --seed 1 >/dev/null 2>e1; echo $? >c1) & (" + t::baton_exe() +
                          " snapshot make-sample " + out + " --mem 8G --seed 2 >/dev/null 2>e2; echo $? >c2) & wait; }";
  for (int round = 0; round < 3; ++round) {
    std::filesystem::remove(out);
    REQUIRE(t::shell("bash -c '" + cmd + "'") == 0);
    const std::string c1 = t::slurp(d / "c1"), c2 = t::slurp(d / "c2");
    CAPTURE(round, c1, c2, t::slurp(d / "e1"), t::slurp(d / "e2"));
    CHECK(((c1 == "0\n" && c2 == "2\n") || (c1 == "2\n" && c2 == "0\n")));
    CHECK_THAT(t::slurp(d / "e1") + t::slurp(d / "e2"), Catch::Contains("already exists"));
    CHECK(t::names_with_prefix(d.path.string(), "same.snap.tmp").empty());
  }
}

TEST_CASE("SIGTERM or SIGINT during a run leaves neither the output nor a temporary file", "[cli][hardening][files]") {
  ScratchDir d;
  for (const char* sig : {"TERM", "INT"}) {
    CAPTURE(sig);
    const std::string out = d / "t.trc";
    // A run long enough to be interrupted while its trace is being written. Job control (set -m)
    // keeps SIGINT deliverable to a background job, as for a command typed at a terminal.
    const std::string cmd = "bash -c 'set -m; " + t::baton_exe() + " run memtouch --param passes=200000 --trace " +
                            out + " >/dev/null 2>&1 & pid=$!; sleep 2; kill -" + sig + " $pid; wait $pid; exit 0'";
    REQUIRE(t::shell(cmd) == 0);
    CHECK_FALSE(std::filesystem::exists(out));
    CHECK(t::names_with_prefix(d.path.string(), "t.trc").empty());
  }
}

TEST_CASE("output paths are checked before the work", "[cli][hardening][files]") {
  ScratchDir d;
  const std::pair<std::string, std::string> cases[] = {
      {"compare memtouch --mem 64M,128M --plot /nonexistent-dir/x.svg",
       "--plot: cannot write '/nonexistent-dir/x.svg'"},
      {"run memtouch --param passes=50000 --trace /nonexistent-dir/t.trc", "--trace: cannot write"},
      {"migrate memtouch --mem 64M --save /nonexistent-dir/p", "--save: cannot write"},
      {"check bit-relevance --out /nonexistent-dir/b.md", "--out: cannot write"},
      {"snapshot make-sample /nonexistent-dir/s.snap --mem 64G", "cannot write '/nonexistent-dir/s.snap'"},
  };
  for (const auto& [args, want] : cases) {
    CAPTURE(args);
    auto r = run_limited(d, args, 120, 3072);
    INFO(r.err);
    CHECK(one_line_error(r, want));
    CHECK(r.seconds < 2);
    CHECK(r.out.empty());
  }
}

TEST_CASE("a full disk names the reason and leaves no 0-byte file and no temporary file", "[cli][hardening][files]") {
  ScratchDir d;
  REQUIRE(run_limited(d, "snapshot make-sample " + (d / "a.snap") + " --mem 64M").code == 0);
  // RLIMIT_FSIZE 0 with SIGXFSZ ignored: every write to a file fails with EFBIG, as on a full
  // disk. stderr goes through a pipe to a process outside the limit.
  const std::pair<std::string, std::string> cases[] = {
      {"check " + (d / "a.snap") + " " + (d / "a.snap") + " --junit " + (d / "j.xml"), "j.xml"},
      {"snapshot make-sample " + (d / "s.snap") + " --mem 64M", "s.snap"},
      {"guests extract checksum " + (d / "g.elf"), "g.elf"},
      {"run checksum --trace " + (d / "r.trc"), "r.trc"},
  };
  for (const auto& [args, name] : cases) {
    CAPTURE(args);
    const std::string cmd = "bash -c \"( trap '' XFSZ; ulimit -f 0; exec " + t::baton_exe() + " " + args +
                            " >/dev/null ) 2>&1 | cat > " + (d / "err.txt") + "; exit \\${PIPESTATUS[0]}\"";
    const int code = t::shell(cmd);
    const std::string err = t::slurp(d / "err.txt");
    INFO(err);
    CHECK(code == 2);
    CHECK_THAT(err, Catch::Contains("cannot write '" + (d / name) + "': File too large"));
    CHECK_FALSE(std::filesystem::exists(d / name));
    CHECK(t::names_with_prefix(d.path.string(), name + ".tmp").empty());
  }
}

TEST_CASE("the --save pair appears whole or not at all, and a rerun after a failure works", "[cli][hardening][files]") {
  ScratchDir d;
  const std::string prefix = d / "p";
  // The after file appears while the migration runs (another program got there first).
  const std::string cmd =
      "bash -c '" + t::baton_exe() + " migrate memtouch --mem 256M --param size=8M --param passes=3000 " +
      "--method local-adopt --save " + prefix + " >/dev/null 2>" + (d / "err") + " & pid=$!; sleep 1; echo keep > " +
      prefix + ".after.snap; wait $pid; echo $? > " + (d / "code") + "'";
  REQUIRE(t::shell(cmd) == 0);
  INFO(t::slurp(d / "err"));
  CHECK(t::slurp(d / "code") == "2\n");
  CHECK_THAT(t::slurp(d / "err"), Catch::Contains("already exists"));
  CHECK_FALSE(std::filesystem::exists(prefix + ".before.snap"));
  CHECK(t::slurp(prefix + ".after.snap") == "keep\n");
  CHECK(t::names_with_prefix(d.path.string(), "p.").size() == 1);
  // Once the other file is gone, a rerun writes the pair.
  std::filesystem::remove(prefix + ".after.snap");
  auto again = run_limited(d, "migrate memtouch --mem 64M --method local-adopt --save " + prefix, 120, 3072);
  INFO(again.err);
  CHECK(again.code == 0);
  CHECK(std::filesystem::exists(prefix + ".before.snap"));
  CHECK(std::filesystem::exists(prefix + ".after.snap"));
}

TEST_CASE("migrate --trace and run --trace given a directory fail before the run", "[cli][hardening][files]") {
  ScratchDir d;
  std::filesystem::create_directory(d / "tdir");
  for (const std::string& args :
       {"migrate memtouch --mem 64M --trace " + (d / "tdir"), "run checksum --trace " + (d / "tdir")}) {
    CAPTURE(args);
    auto r = run_limited(d, args, 60, 3072);
    INFO(r.err);
    CHECK(one_line_error(r, "is a directory"));
    CHECK(r.seconds < 2);
    CHECK(std::filesystem::is_empty(d / "tdir"));
  }
  // A migrate --trace to a file writes a readable trace of both instances.
  auto ok = run_limited(d, "migrate memtouch --mem 64M --trace " + (d / "m.trc"), 120, 3072);
  INFO(ok.err);
  REQUIRE(ok.code == 0);
  auto show = run_limited(d, "trace show " + (d / "m.trc") + " --limit 1");
  CHECK(show.code == 0);
}
