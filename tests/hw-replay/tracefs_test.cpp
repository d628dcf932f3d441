// The tracefs capture module on this machine's real tracefs (label `tracefs`). Without a usable
// tracefs (not root and not mounted writable) main() prints "SKIPPED: <reason>" and returns 77,
// which CTest reports as a skip (SKIP_RETURN_CODE), never as a pass.
//
// No KVM event fires without /dev/kvm, so the tests that need events to flow also enable a
// scheduler event (sched:sched_process_exec) which any exec produces.
#define CATCH_CONFIG_RUNNER
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <stdexcept>

#include "baton/hw/tracefs.hpp"
#include "baton/traces/ftrace.hpp"

using namespace baton;
using namespace baton::hw;

namespace {

std::string my_prefix() { return "baton-" + std::to_string(::getpid()) + "-"; }

bool instance_exists(const std::string& name) {
  const auto v = list_tracefs_instances(name);
  return std::find(v.begin(), v.end(), name) != v.end();
}

// A child that waits for a byte on a pipe, then runs `sh -c script`.
struct Held {
  pid_t pid = -1;
  int go = -1;
  explicit Held(const std::string& script) {
    int p[2];
    REQUIRE(::pipe(p) == 0);
    pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(p[1]);
      char b;
      if (::read(p[0], &b, 1) != 1) ::_exit(126);
      ::execl("/bin/sh", "sh", "-c", script.c_str(), static_cast<char*>(nullptr));
      ::_exit(127);
    }
    ::close(p[0]);
    go = p[1];
  }
  int release_and_wait() {
    const char b = 1;
    REQUIRE(::write(go, &b, 1) == 1);
    ::close(go);
    go = -1;
    int st = 0;
    ::waitpid(pid, &st, 0);
    pid = -1;
    return st;
  }
  ~Held() {
    if (go >= 0) ::close(go);
    if (pid > 0) ::waitpid(pid, nullptr, 0);
  }
};

std::size_t count(const std::string& text, const std::string& needle) {
  std::size_t n = 0;
  for (auto p = text.find(needle); p != std::string::npos; p = text.find(needle, p + 1)) ++n;
  return n;
}

// Captures `script` run by a held child, with the exec event added to the KVM ones.
std::string capture_script(const std::string& script, bool follow_forks) {
  Held h(script);
  TracefsOptions o;
  o.events.push_back("sched:sched_process_exec");
  o.pids = {h.pid};
  o.follow_forks = follow_forks;
  o.buffer_kb = 1024;
  auto c = TracefsCapture::open(o);
  INFO((c ? "" : c.error().message));
  REQUIRE(c);
  REQUIRE((*c)->start());
  const int st = h.release_and_wait();
  REQUIRE(WIFEXITED(st));
  REQUIRE(WEXITSTATUS(st) == 0);
  REQUIRE((*c)->stop());
  std::string text = (*c)->header();
  REQUIRE((*c)->drain(text));
  REQUIRE((*c)->remove());
  return text;
}

}  // namespace

TEST_CASE("an instance is created, configured and removed") {
  std::string name;
  {
    auto c = TracefsCapture::open();
    INFO((c ? "" : c.error().message));
    REQUIRE(c);
    name = (*c)->name();
    CHECK(name.rfind(my_prefix(), 0) == 0);
    CHECK(instance_exists(name));
    // All nine KVM events exist on this kernel (even without /dev/kvm).
    CHECK((*c)->enabled_events() == kvm_capture_events());
    CHECK((*c)->header().rfind("# tracer: nop", 0) == 0);
    CHECK((*c)->header().find("TGID") != std::string::npos);  // record-tgid is on
    REQUIRE((*c)->remove());
    CHECK((*c)->removed());
    CHECK_FALSE(instance_exists(name));
    REQUIRE((*c)->remove());  // idempotent
  }
  CHECK_FALSE(instance_exists(name));
}

TEST_CASE("two captures at once get two instances") {
  auto a = TracefsCapture::open();
  auto b = TracefsCapture::open();
  REQUIRE(a);
  REQUIRE(b);
  CHECK((*a)->name() != (*b)->name());
  CHECK(instance_exists((*a)->name()));
  CHECK(instance_exists((*b)->name()));
}

TEST_CASE("the destructor removes the instance when an exception unwinds") {
  std::string name;
  try {
    auto c = TracefsCapture::open();
    REQUIRE(c);
    name = (*c)->name();
    REQUIRE((*c)->start());
    REQUIRE(instance_exists(name));
    throw std::runtime_error("injected failure mid-capture");
  } catch (const std::runtime_error&) {
  }
  REQUIRE_FALSE(name.empty());
  CHECK_FALSE(instance_exists(name));
}

TEST_CASE("a failure half-way through open() leaves no instance") {
  const auto before = list_tracefs_instances(my_prefix());
  TracefsOptions o;
  o.events = {"kvm:kvm_exit", "not-an-event-name"};  // the second fails after mkdir and the first enable
  auto c = TracefsCapture::open(o);
  REQUIRE_FALSE(c);
  CHECK(c.error().message.find("system:name") != std::string::npos);
  CHECK(list_tracefs_instances(my_prefix()) == before);

  o.events = {"kvm:kvm_exit"};
  o.pids = {0x7ffffff0};  // beyond PID_MAX_LIMIT: set_event_pid refuses it, after mkdir
  auto d = TracefsCapture::open(o);
  REQUIRE_FALSE(d);
  CHECK(d.error().message.find("set_event_pid") != std::string::npos);
  CHECK(list_tracefs_instances(my_prefix()) == before);
}

TEST_CASE("a missing event is skipped with a warning; none at all is an error") {
  TracefsOptions o;
  o.events = {"kvm:kvm_exit", "kvm:no_such_event_here", "nosuchsystem:foo"};
  auto c = TracefsCapture::open(o);
  REQUIRE(c);
  CHECK((*c)->enabled_events() == std::vector<std::string>{"kvm:kvm_exit"});
  const auto& w = (*c)->warnings();
  CHECK(std::count_if(w.begin(), w.end(), [](const std::string& s) {
          return s.find("does not exist on this kernel; skipped") != std::string::npos;
        }) == 2);
  const std::string name = (*c)->name();
  c = make_error("dropped");
  CHECK_FALSE(instance_exists(name));

  o.events = {"kvm:no_such_event_here"};
  const auto before = list_tracefs_instances(my_prefix());
  auto d = TracefsCapture::open(o);
  REQUIRE_FALSE(d);
  CHECK(d.error().message.find("none of the requested events") != std::string::npos);
  CHECK(list_tracefs_instances(my_prefix()) == before);
}

TEST_CASE("the pid filter keeps the traced process and, with follow-forks, its children") {
  // sh execs itself (one exec), then forks /bin/true twice (two more execs in children).
  const std::string script = "/bin/true; /bin/true; exit 0";
  const std::string with = capture_script(script, true);
  const std::string without = capture_script(script, false);
  INFO(with);
  INFO(without);
  CHECK(count(with, "sched_process_exec:") == 3);
  CHECK(count(without, "sched_process_exec:") == 1);
  // Nothing from other processes: every exec line names sh or true.
  CHECK(count(with, "filename=/bin/true") == 2);
  CHECK(count(with, "filename=/bin/sh") == 1);

  // The raw text imports: no KVM event, three other events, tracefs style.
  auto imp = traces::parse_ftrace(with);
  INFO((imp ? "" : imp.error().message));
  REQUIRE(imp);
  CHECK(imp->stats.style == "tracefs");
  CHECK(imp->stats.event_lines == 0);
  CHECK(imp->stats.other_event_lines == 3);
  CHECK(imp->stats.unknown_lines == 0);
  CHECK(imp->trace.events.empty());
}

TEST_CASE("an event-less KVM capture imports as an empty trace when allowed") {
  Held h("exit 0");
  TracefsOptions o;
  o.pids = {h.pid};
  auto c = TracefsCapture::open(o);
  REQUIRE(c);
  REQUIRE((*c)->start());
  h.release_and_wait();
  REQUIRE((*c)->stop());
  std::string text = (*c)->header();
  REQUIRE((*c)->drain(text));
  CHECK((*c)->overruns() == 0);
  REQUIRE((*c)->remove());
  CHECK_FALSE(traces::parse_ftrace(text));  // the importer's default: no event line is an error
  traces::FtraceImportOptions io;
  io.allow_empty = true;
  auto imp = traces::parse_ftrace(text, io);
  INFO((imp ? "" : imp.error().message));
  REQUIRE(imp);
  CHECK(imp->trace.events.empty());
  CHECK(imp->stats.style == "tracefs");
}

TEST_CASE("add_process of a missing pid is an error, the instance still goes") {
  auto c = TracefsCapture::open();
  REQUIRE(c);
  auto r = (*c)->add_process(0x7ffffff0);
  REQUIRE_FALSE(r);
  CHECK(r.error().message.find("no process") != std::string::npos);
  REQUIRE((*c)->add_process(::getpid()));
}

int main(int argc, char** argv) {
  const std::string why = tracefs_unusable_reason();
  if (!why.empty()) {
    std::printf("SKIPPED: tracefs is not usable here: %s\n", why.c_str());
    return 77;
  }
  const int rc = Catch::Session().run(argc, argv);
  const auto left = list_tracefs_instances(my_prefix());
  if (!left.empty()) {
    std::printf("FAILED: tracefs instances left behind:");
    for (const auto& n : left) std::printf(" %s", n.c_str());
    std::printf("\n");
    return 1;
  }
  return rc;
}
