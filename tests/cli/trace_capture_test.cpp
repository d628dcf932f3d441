// End-to-end tests of `baton trace capture` on this machine's real tracefs (label `tracefs`).
// Without a usable tracefs main() prints "SKIPPED: <reason>" and returns 77 (a CTest skip).
// baton is started with fork/exec so that its pid, and so its instance names
// (baton-<pid>-<n>), are known: after every run no such instance may exist.
#define CATCH_CONFIG_RUNNER
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <chrono>
#include <fstream>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <thread>

#include "baton/hw/tracefs.hpp"
#include "baton/traces/trace.hpp"
#include "cli/cli_run.hpp"  // IWYU pragma: keep

using namespace baton;
using baton::test::ScratchDir;
using baton::test::slurp;
using nlohmann::json;

namespace {

struct Run {
  pid_t pid = -1;
  int code = -1;  // exit code, or -signal
  std::string out, err;
};

// Starts argv (argv[0] a path) with stdout/stderr into files of `dir`.
pid_t start(const ScratchDir& dir, const std::vector<std::string>& argv) {
  const std::string out = dir / "stdout.txt", err = dir / "stderr.txt";
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int o = ::open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    const int e = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(o, 1);
    ::dup2(e, 2);
    std::vector<char*> a;
    for (const auto& s : argv) a.push_back(const_cast<char*>(s.c_str()));
    a.push_back(nullptr);
    ::execv(a[0], a.data());
    ::_exit(127);
  }
  return pid;
}

Run finish(const ScratchDir& dir, pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  Run r;
  r.pid = pid;
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -WTERMSIG(st);
  r.out = slurp(dir / "stdout.txt");
  r.err = slurp(dir / "stderr.txt");
  return r;
}

std::vector<std::string> args(std::initializer_list<std::string> rest) {
  std::vector<std::string> v{BATON_EXE, "trace", "capture"};
  v.insert(v.end(), rest);
  return v;
}

Run baton_run(const ScratchDir& dir, std::initializer_list<std::string> rest) {
  return finish(dir, start(dir, args(rest)));
}

std::vector<std::string> instances_of(pid_t pid) {
  return hw::list_tracefs_instances("baton-" + std::to_string(pid) + "-");
}

bool exists(const std::string& p) {
  struct stat sb {};
  return ::stat(p.c_str(), &sb) == 0;
}

bool have(const char* tool) {
  return std::system((std::string("command -v ") + tool + " >/dev/null 2>&1").c_str()) == 0;
}

}  // namespace

TEST_CASE("capture around a spawned command: raw text, trace v1, instance removed") {
  ScratchDir d;
  const Run r = baton_run(d, {d / "cap.txt", "--trace", d / "cap.trc", "--json", "--", "sleep", "0.2"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(instances_of(r.pid).empty());
  const json j = json::parse(r.out);
  CHECK(j["instance_removed"] == true);
  CHECK(j["stopped"] == "command exited");
  CHECK(j["command_status"] == "exited with code 0");
  CHECK(j["events_enabled"].size() == 9);
  CHECK(j["event_lines"] == 0);  // no /dev/kvm here: no KVM event fires
  CHECK(j["trace"]["events"] == 0);
  const std::string raw = slurp(d / "cap.txt");
  CHECK(raw.rfind("# tracer: nop", 0) == 0);
  auto t = traces::read_trace(d / "cap.trc");
  INFO((t ? "" : t.error().message));
  REQUIRE(t);
  CHECK(t->header.source == "ftrace-import");
  CHECK(t->events.empty());
  // And the plain `trace import` of the raw text refuses it (no event line), as it always did.
  const auto imp = test::run_baton(d, "trace import " + d / "cap.txt" + " " + d / "again.trc");
  CHECK(imp.code == 2);
}

TEST_CASE("the text summary names each event and the removed instance") {
  ScratchDir d;
  const Run r = baton_run(d, {d / "cap.txt", "--event", "sched:sched_process_exec", "--", "sh", "-c", "/bin/true"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("kvm_exit 0") != std::string::npos);
  CHECK(r.out.find("sched_process_exec 2") != std::string::npos);  // sh, then its child /bin/true
  CHECK(r.out.find("removed") != std::string::npos);
  CHECK(instances_of(r.pid).empty());
}

TEST_CASE("an existing output is kept without --force") {
  ScratchDir d;
  { std::ofstream(d / "cap.txt") << "keep me\n"; }
  Run r = baton_run(d, {d / "cap.txt", "--", "true"});
  CHECK(r.code == 2);
  CHECK(r.err.find("refusing to overwrite") != std::string::npos);
  CHECK(slurp(d / "cap.txt") == "keep me\n");
  r = baton_run(d, {d / "cap.txt", "--force", "--", "true"});
  CHECK(r.code == 0);
  CHECK(slurp(d / "cap.txt").rfind("# tracer", 0) == 0);
  CHECK(instances_of(r.pid).empty());
}

TEST_CASE("failures mid-capture remove the instance") {
  ScratchDir d;
  SECTION("the command cannot be run (after the instance exists and tracing is on)") {
    const Run r = baton_run(d, {d / "cap.txt", "--", "/nonexistent/command"});
    CHECK(r.code == 2);
    // One error line (after the private-mount warning when tracefs was not mounted).
    CHECK(r.err.find("baton: cannot run '/nonexistent/command': No such file or directory\n") != std::string::npos);
    CHECK(r.err.find("baton: ", r.err.find("cannot run") + 1) == std::string::npos);
    CHECK_FALSE(exists(d / "cap.txt"));
    CHECK(instances_of(r.pid).empty());
  }
  SECTION("the trace v1 output lies in a missing directory (after the capture)") {
    const Run r = baton_run(d, {d / "cap.txt", "--trace", d / "no/such/dir/cap.trc", "--", "true"});
    CHECK(r.code == 2);
    CHECK(r.err.find("captured into") != std::string::npos);
    CHECK(exists(d / "cap.txt"));  // the raw capture is kept
    CHECK(instances_of(r.pid).empty());
  }
  SECTION("a --pid that does not exist") {
    const Run r = baton_run(d, {d / "cap.txt", "--pid", "2147483647"});
    CHECK(r.code == 2);
    CHECK(r.err.find("no such process") != std::string::npos);
    CHECK(instances_of(r.pid).empty());
  }
  SECTION("neither --pid nor a command") {
    const Run r = baton_run(d, {d / "cap.txt"});
    CHECK(r.code == 2);
    CHECK(r.err.find("exactly one of --pid") != std::string::npos);
  }
}

TEST_CASE("SIGTERM or SIGINT mid-capture ends it and removes the instance") {
  for (int sig : {SIGTERM, SIGINT}) {
    ScratchDir d;
    const pid_t pid = start(d, args({d / "cap.txt", "--json", "--", "sleep", "30"}));
    bool seen = false;
    for (int i = 0; i < 200 && !seen; ++i) {
      seen = !instances_of(pid).empty();
      if (!seen) std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    REQUIRE(seen);  // the capture is running
    const auto t0 = std::chrono::steady_clock::now();
    ::kill(pid, sig);
    const Run r = finish(d, pid);
    INFO(r.err);
    CHECK(std::chrono::steady_clock::now() - t0 < std::chrono::seconds(10));
    CHECK(r.code == 0);
    CHECK(instances_of(pid).empty());
    const json j = json::parse(r.out);
    CHECK(j["stopped"] == (sig == SIGTERM ? "stopped by SIGTERM" : "stopped by SIGINT"));
    CHECK(j["command_status"] == "killed by Terminated");
    CHECK(slurp(d / "cap.txt").rfind("# tracer", 0) == 0);
  }
}

TEST_CASE("--pid captures a running process until it exits or --duration") {
  ScratchDir d;
  const pid_t target = start(d, {"/bin/sleep", "30"});
  Run r = baton_run(d, {d / "cap.txt", "--pid", std::to_string(target), "--duration", "0.3", "--json"});
  INFO(r.err);
  REQUIRE(r.code == 0);
  json j = json::parse(r.out);
  CHECK(j["stopped"] == "--duration elapsed");
  CHECK(j["pids"] == json::array({target}));
  CHECK(j["seconds"].get<double>() >= 0.3);
  CHECK(::kill(target, 0) == 0);  // a --pid process is left alone
  CHECK(instances_of(r.pid).empty());
  ::kill(target, SIGKILL);
  ::waitpid(target, nullptr, 0);
}

TEST_CASE("a missing event name is skipped with a warning") {
  ScratchDir d;
  const Run r = baton_run(d, {d / "cap.txt", "--event", "kvm:no_such_event", "--", "true"});
  REQUIRE(r.code == 0);
  CHECK(r.err.find("baton: warning: event kvm:no_such_event does not exist on this kernel; skipped") !=
        std::string::npos);
  CHECK(instances_of(r.pid).empty());
  const Run bad = baton_run(d, {d / "cap2.txt", "--event", "nocolon", "--", "true"});
  CHECK(bad.code == 2);
  CHECK(bad.err.find("not of the form system:name") != std::string::npos);
  CHECK(instances_of(bad.pid).empty());
}

namespace {
// Runs `baton trace capture` as nobody (uid 65534) through `prefix`, and checks the one error line.
std::string capture_as_nobody(const ScratchDir& d, const std::string& prefix_open, const std::string& prefix_close) {
  ::chmod(d.path.c_str(), 0777);
  const std::string nobody = "setpriv --reuid=65534 --regid=65534 --clear-groups ";
  const std::string cap = std::string(BATON_EXE) + " trace capture " + d / "cap.txt" + " -- true";
  const int st = std::system((prefix_open + nobody + cap + prefix_close + " >" + d / "o.txt" + " 2>" + d / "e.txt").c_str());
  const std::string err = slurp(d / "e.txt");
  INFO(err);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 2);
  CHECK(err.find("needs root") != std::string::npos);
  CHECK(std::count(err.begin(), err.end(), '\n') == 1);
  CHECK_FALSE(exists(d / "cap.txt"));
  return err;
}
}  // namespace

// Hidden cases, each run by its own CTest entry (tests/cli/CMakeLists.txt) that main() turns
// into a skip (77) when root, setpriv or a private mount namespace is missing.
TEST_CASE("not root: one clear line naming the need for root", "[.nobody]") {
  ScratchDir d;
  capture_as_nobody(d, "", "");  // tracefs as it is on this machine (mounted or not)
}

TEST_CASE("not root with tracefs mounted: the line names the need for root and the mount", "[.nobody-mounted]") {
  ScratchDir d;
  // tracefs mounted in a private mount namespace (gone with it), baton run there as nobody. Where
  // the host has it mounted already (perf mounts it, for one), the namespace inherits that mount.
  const std::string err = capture_as_nobody(
      d,
      "unshare --mount --propagation private sh -c '{ mountpoint -q /sys/kernel/tracing || "
      "mount -t tracefs nodev /sys/kernel/tracing; } && exec ",
      "'");
  CHECK(err.find("/sys/kernel/tracing") != std::string::npos);
}

TEST_CASE("--help lists the options") {
  ScratchDir d;
  const auto r = test::run_baton(d, "trace capture --help");
  CHECK(r.code == 0);
  for (const char* opt : {"--pid", "--duration", "--trace", "--force", "--json", "--event", "COMMAND"})
    CHECK(r.out.find(opt) != std::string::npos);
}

namespace {
// Why the hidden "as nobody" cases cannot run here (empty when they can): they need root to
// drop to nobody, setpriv, and for `mounted` a private mount namespace.
std::string nobody_unusable_reason(bool mounted) {
  if (::geteuid() != 0) return "running baton as nobody needs root";
  if (!have("setpriv")) return "setpriv (util-linux) is missing";
  if (mounted && !have("unshare")) return "unshare (util-linux) is missing";
  if (mounted && std::system("unshare --mount --propagation private true >/dev/null 2>&1") != 0)
    return "no private mount namespace (unshare --mount failed)";
  return {};
}
}  // namespace

// Usage: cli_capture_tests [--as-nobody | --as-nobody-mounted] [Catch2 arguments]. The two
// options select the hidden "as nobody" cases and skip (77) when they cannot run.
int main(int argc, char** argv) {
  const std::string why = hw::tracefs_unusable_reason();
  if (!why.empty()) {
    std::printf("SKIPPED: tracefs is not usable here: %s\n", why.c_str());
    return 77;
  }
  std::vector<char*> args(argv, argv + argc);
  std::string tag;
  if (args.size() > 1 && (std::strcmp(args[1], "--as-nobody") == 0 || std::strcmp(args[1], "--as-nobody-mounted") == 0)) {
    const bool mounted = std::strcmp(args[1], "--as-nobody-mounted") == 0;
    const std::string no = nobody_unusable_reason(mounted);
    if (!no.empty()) {
      std::printf("SKIPPED: %s\n", no.c_str());
      return 77;
    }
    tag = mounted ? "[nobody-mounted]" : "[nobody]";
    args.erase(args.begin() + 1);
    args.push_back(tag.data());
  }
  return Catch::Session().run(static_cast<int>(args.size()), args.data());
}
