// baton trace capture: KVM events of one process (or of a command baton spawns) through a
// private tracefs instance, saved as raw ftrace text and optionally converted to trace v1.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <utility>

#include "baton/hw/tracefs.hpp"
#include "baton/model/snapshot_io.hpp"
#include "baton/traces/ftrace.hpp"
#include "baton/traces/trace.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;

struct CaptureOptions {
  std::string out, trace_out, pid;
  std::vector<std::string> command, extra_events;
  double duration = 0;
  std::size_t buffer_kb = 16384;
  bool force = false, json = false, no_follow_forks = false;
};

// The signal that asked the capture to end (0: none yet), and how many arrived.
volatile sig_atomic_t g_stop_signal = 0;
volatile sig_atomic_t g_stop_count = 0;

void on_stop_signal(int sig) {
  g_stop_signal = sig;
  g_stop_count = g_stop_count + 1;
}

// Installs the SIGINT/SIGTERM handlers for the capture's lifetime and restores the old ones.
struct SignalGuard {
  struct sigaction old_int {}, old_term {};
  SignalGuard() {
    g_stop_signal = 0;
    g_stop_count = 0;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: sleeps and waits return early
    ::sigaction(SIGINT, &sa, &old_int);
    ::sigaction(SIGTERM, &sa, &old_term);
  }
  ~SignalGuard() {
    ::sigaction(SIGINT, &old_int, nullptr);
    ::sigaction(SIGTERM, &old_term, nullptr);
  }
  SignalGuard(const SignalGuard&) = delete;
  SignalGuard& operator=(const SignalGuard&) = delete;
};

// The raw text goes to OUT.tmp-XXXXXX in OUT's directory and is renamed into place at the end;
// a capture that fails leaves nothing behind.
struct TempOutput {
  std::string tmp;
  int fd = -1;
  bool published = false;
  ~TempOutput() {
    if (fd >= 0) ::close(fd);
    if (!published && !tmp.empty()) ::unlink(tmp.c_str());
  }
};

Result<void> write_all(int fd, const std::string& s) {
  const char* p = s.data();
  std::size_t n = s.size();
  while (n > 0) {
    const ssize_t w = ::write(fd, p, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return make_error(std::string("writing the capture failed: ") + std::strerror(errno));
    p += w;
    n -= static_cast<std::size_t>(w);
  }
  return ok_result();
}

const char* kRefuse = " already exists (refusing to overwrite; pass --force)";

Result<void> publish(const std::string& tmp, const std::string& path, bool overwrite) {
  if (overwrite) {
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      return make_error("cannot rename into '" + path + "': " + std::strerror(errno));
    return ok_result();
  }
  if (::renameat2(AT_FDCWD, tmp.c_str(), AT_FDCWD, path.c_str(), RENAME_NOREPLACE) == 0) return ok_result();
  if (errno == EEXIST) return make_error("'" + path + "'" + kRefuse);
  if (errno != EINVAL && errno != ENOSYS) return make_error("cannot rename into '" + path + "': " + std::strerror(errno));
  if (::link(tmp.c_str(), path.c_str()) != 0) {
    if (errno == EEXIST) return make_error("'" + path + "'" + kRefuse);
    return make_error("cannot link into '" + path + "': " + std::strerror(errno));
  }
  ::unlink(tmp.c_str());
  return ok_result();
}

// Counts trace lines by event name: the token after the "SECONDS.FRACTION:" timestamp.
std::map<std::string, std::size_t> count_events(const std::string& text, std::size_t& lost) {
  std::map<std::string, std::size_t> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    if (auto p = line.find("[LOST "); p != std::string::npos) {
      lost += std::strtoull(line.c_str() + p + 6, nullptr, 10);
      continue;
    }
    std::istringstream ls(line);
    std::string tok, prev;
    while (ls >> tok) {
      const bool stamp = prev.size() > 2 && prev.back() == ':' && prev.find('.') != std::string::npos &&
                         std::isdigit(static_cast<unsigned char>(prev[0]));
      if (stamp && tok.back() == ':') {
        ++out[tok.substr(0, tok.size() - 1)];
        break;
      }
      prev = tok;
    }
  }
  return out;
}

double now_s() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + static_cast<double>(ts.tv_nsec) * 1e-9;
}

void sleep_ms(long ms) {
  timespec ts{ms / 1000, (ms % 1000) * 1'000'000};
  ::nanosleep(&ts, nullptr);  // a signal ends it early, which is what we want
}

// Forks the command stopped on a pipe; it execs only once go() is called, after its pid is in
// the filter and tracing is on, so nothing it does is missed.
struct Child {
  pid_t pid = -1;
  int go_fd = -1, err_fd = -1;
  bool reaped = false;
  int status = 0;

  static Result<Child> spawn(const std::vector<std::string>& argv) {
    int go[2], err[2];
    if (::pipe2(go, O_CLOEXEC) != 0 || ::pipe2(err, O_CLOEXEC) != 0)
      return make_error(std::string("pipe2 failed: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid < 0) return make_error(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      ::signal(SIGINT, SIG_DFL);
      ::signal(SIGTERM, SIG_DFL);
      ::close(go[1]);
      ::close(err[0]);
      char b = 0;
      if (::read(go[0], &b, 1) != 1) ::_exit(127);  // the parent gave up
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execvp(args[0], args.data());
      const int e = errno;
      (void)!::write(err[1], &e, sizeof e);
      ::_exit(127);
    }
    ::close(go[0]);
    ::close(err[1]);
    Child c;
    c.pid = pid;
    c.go_fd = go[1];
    c.err_fd = err[0];
    return c;
  }
  // Lets the command exec; errors if exec failed.
  Result<void> go(const std::string& name) {
    const char b = 1;
    const bool sent = ::write(go_fd, &b, 1) == 1;
    ::close(go_fd);
    go_fd = -1;
    int e = 0;
    ssize_t n;
    do n = ::read(err_fd, &e, sizeof e);
    while (n < 0 && errno == EINTR);
    ::close(err_fd);
    err_fd = -1;
    if (!sent) return make_error("cannot start '" + name + "'");
    if (n == static_cast<ssize_t>(sizeof e)) return make_error("cannot run '" + name + "': " + std::strerror(e));
    return ok_result();
  }
  bool poll_exit() {
    if (reaped) return true;
    if (::waitpid(pid, &status, WNOHANG) == pid) reaped = true;
    return reaped;
  }
  ~Child() {
    if (go_fd >= 0) ::close(go_fd);  // the child reads EOF and exits
    if (err_fd >= 0) ::close(err_fd);
    if (pid > 0 && !reaped) {
      if (::waitpid(pid, &status, WNOHANG) != pid) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
      }
    }
  }
  Child() = default;
  Child(Child&& o) noexcept
      : pid(std::exchange(o.pid, -1)), go_fd(std::exchange(o.go_fd, -1)), err_fd(std::exchange(o.err_fd, -1)),
        reaped(o.reaped), status(o.status) {}
  Child& operator=(Child&&) = delete;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
};

std::string describe_status(int st) {
  if (WIFEXITED(st)) return "exited with code " + std::to_string(WEXITSTATUS(st));
  if (WIFSIGNALED(st)) return std::string("killed by ") + ::strsignal(WTERMSIG(st));
  return "status " + std::to_string(st);
}

bool file_exists(const std::string& p) {
  struct stat sb {};
  return ::lstat(p.c_str(), &sb) == 0;
}

void run_capture(const CaptureOptions& o) {
  std::optional<pid_t> pid;
  if (!o.pid.empty()) {
    auto v = parse_u64(o.pid);
    if (!v || *v == 0 || *v > 0x7fffffff) return fail("--pid '" + o.pid + "' is not a process id");
    pid = static_cast<pid_t>(*v);
  }
  if (pid.has_value() == !o.command.empty())
    return fail("give exactly one of --pid PID or -- COMMAND [ARGS...] (the process whose KVM events to capture)");
  if (!(o.duration >= 0) || !std::isfinite(o.duration)) return fail("--duration must be a number of seconds >= 0");
  if (o.buffer_kb == 0) return fail("--buffer-kb must be > 0");
  if (!o.force && file_exists(o.out)) return fail("'" + o.out + "'" + kRefuse);
  if (!o.trace_out.empty() && !o.force && file_exists(o.trace_out)) return fail("'" + o.trace_out + "'" + kRefuse);
  if (pid && ::kill(*pid, 0) != 0 && errno == ESRCH) return fail("--pid " + o.pid + ": no such process");

  TempOutput tmp;
  tmp.tmp = o.out + ".tmp-XXXXXX";
  tmp.fd = ::mkstemp(tmp.tmp.data());
  if (tmp.fd < 0) {
    const std::string why = std::strerror(errno);
    tmp.tmp.clear();
    return fail("cannot create '" + o.out + "': " + why);
  }
  ::fchmod(tmp.fd, 0644);

  SignalGuard signals;  // from here SIGINT/SIGTERM end the capture; the instance is removed either way
  hw::TracefsOptions to;
  to.events = hw::kvm_capture_events();
  for (const auto& e : o.extra_events) to.events.push_back(e);
  to.follow_forks = !o.no_follow_forks;
  to.buffer_kb = o.buffer_kb;
  auto cap = hw::TracefsCapture::open(to);
  if (!cap) return fail(cap.error().message);
  hw::TracefsCapture& c = **cap;
  for (const auto& w : c.warnings()) std::fprintf(stderr, "baton: warning: %s\n", w.c_str());

  std::optional<Child> child;
  std::vector<pid_t> filtered;
  if (pid) {
    if (auto r = c.add_process(*pid); !r) return fail(r.error().message);
    filtered.push_back(*pid);
  } else {
    auto ch = Child::spawn(o.command);
    if (!ch) return fail(ch.error().message);
    child.emplace(std::move(*ch));
    if (auto r = c.add_pid(child->pid); !r) return fail(r.error().message);
    filtered.push_back(child->pid);
  }
  if (auto r = write_all(tmp.fd, c.header()); !r) return fail(r.error().message);
  if (auto r = c.start(); !r) return fail(r.error().message);
  const double t0 = now_s();
  if (child)
    if (auto r = child->go(o.command.front()); !r) return fail(r.error().message);

  std::string buf;
  std::string stopped_by = child ? "command exited" : "process exited";
  int forwarded = 0;
  for (;;) {
    auto d = c.drain(buf);
    if (!d) return fail(d.error().message);
    if (!buf.empty()) {
      if (auto r = write_all(tmp.fd, buf); !r) return fail(r.error().message);
      buf.clear();
    }
    if (child ? child->poll_exit() : (::kill(*pid, 0) != 0 && errno == ESRCH)) break;
    if (o.duration > 0 && now_s() - t0 >= o.duration) {
      stopped_by = "--duration elapsed";
      if (!child) break;
      if (forwarded == 0) {
        ::kill(child->pid, SIGTERM);
        forwarded = 1;
      }
    }
    if (g_stop_count > 0) {
      stopped_by = std::string("stopped by ") + (g_stop_signal == SIGINT ? "SIGINT" : "SIGTERM");
      if (!child) break;
      // The first signal asks the command to end; a second one kills it.
      if (forwarded < g_stop_count) {
        ::kill(child->pid, forwarded == 0 ? SIGTERM : SIGKILL);
        forwarded = g_stop_count;
      }
    }
    sleep_ms(50);
  }
  const double elapsed = now_s() - t0;
  if (auto r = c.stop(); !r) return fail(r.error().message);
  auto d = c.drain(buf);
  if (!d) return fail(d.error().message);
  if (auto r = write_all(tmp.fd, buf); !r) return fail(r.error().message);
  buf.clear();
  const std::uint64_t overruns = c.overruns();
  const std::string instance = c.instance_path();
  const std::vector<std::string> enabled = c.enabled_events(), warnings = c.warnings();
  if (auto r = c.remove(); !r) return fail(r.error().message);
  cap->reset();

  if (::fsync(tmp.fd) != 0 || ::close(tmp.fd) != 0) {
    tmp.fd = -1;
    return fail("writing '" + o.out + "' failed: " + std::strerror(errno));
  }
  tmp.fd = -1;
  if (auto r = publish(tmp.tmp, o.out, o.force); !r) return fail(r.error().message);
  tmp.published = true;

  auto raw = model::read_file_bytes(o.out);
  if (!raw) return fail(raw.error().message);
  const std::string text(raw->begin(), raw->end());
  std::size_t lost = 0;
  const auto per_event = count_events(text, lost);
  std::size_t total = 0;
  for (const auto& [k, n] : per_event) total += n;

  json conv = nullptr;
  std::string conv_text;
  if (!o.trace_out.empty()) {
    traces::FtraceImportOptions io;
    io.input_name = o.out;
    io.allow_empty = true;
    auto imp = traces::parse_ftrace(text, io);
    if (!imp) return fail("captured into '" + o.out + "', but converting it failed: " + imp.error().message);
    if (auto r = traces::write_trace(o.trace_out, imp->trace, o.force); !r)
      return fail("captured into '" + o.out + "', but writing the trace failed: " + r.error().message);
    conv = json{{"output", o.trace_out}, {"events", imp->trace.events.size()}, {"style", imp->stats.style},
                {"vms", imp->stats.vms},  {"malformed_lines", imp->stats.malformed_lines}};
    conv_text = "converted to " + o.trace_out + " (trace v1): " + std::to_string(imp->trace.events.size()) +
                " events";
  }

  std::string status = child && child->reaped ? describe_status(child->status) : "";
  if (o.json) {
    json j{{"output", o.out},
           {"bytes", text.size()},
           {"pids", filtered},
           {"command", o.command},
           {"command_status", status},
           {"seconds", elapsed},
           {"stopped", stopped_by},
           {"events_enabled", enabled},
           {"events", per_event},
           {"event_lines", total},
           {"lost_events", lost},
           {"overruns", overruns},
           {"instance", instance},
           {"instance_removed", true},
           {"warnings", warnings},
           {"trace", conv}};
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("captured %zu events (%zu bytes) from pid %d in %.3f s into %s (%s%s%s)\n", total, text.size(),
              static_cast<int>(filtered.front()), elapsed, o.out.c_str(), stopped_by.c_str(),
              status.empty() ? "" : ": ", status.c_str());
  std::printf("  events          ");
  for (const auto& ev : enabled) {
    const std::string name = ev.substr(ev.find(':') + 1);
    const auto it = per_event.find(name);
    std::printf(" %s %zu", name.c_str(), it == per_event.end() ? 0 : it->second);
  }
  std::printf("\n");
  if (lost || overruns)
    std::printf("  WARNING: %zu events lost, %llu overwritten: enlarge --buffer-kb\n", lost,
                static_cast<unsigned long long>(overruns));
  if (!conv_text.empty()) std::printf("  %s\n", conv_text.c_str());
  std::printf("  tracefs instance %s removed\n", instance.c_str());
  if (total == 0)
    std::printf("  (no event: the process made no KVM call while traced%s)\n",
                ::access("/dev/kvm", F_OK) != 0 ? ", and this host has no /dev/kvm" : "");
}

}  // namespace

void register_trace_capture(CLI::App& trace) {
  auto o = std::make_shared<CaptureOptions>();
  CLI::App* c = trace.add_subcommand(
      "capture", "Capture the KVM events of a process (or of a command) through a private tracefs instance (root)");
  c->add_option("out_text", o->out, "Raw ftrace text to write (kept as captured)")->required();
  c->add_option("--pid", o->pid, "Capture this running process (all its threads) until it exits or --duration");
  c->add_option("--duration", o->duration, "Seconds to capture (0: until the process or command exits, or Ctrl-C)");
  c->add_option("--trace", o->trace_out, "Also convert the capture into this trace v1 file (as trace import does)");
  c->add_option("--event", o->extra_events, "Also enable this event (system:name); repeatable")->allow_extra_args(false);
  c->add_option("--buffer-kb", o->buffer_kb, "Ring buffer per CPU in KiB")->capture_default_str();
  c->add_flag("--no-follow-forks", o->no_follow_forks, "Do not add threads and children of the traced process");
  c->add_flag("--force", o->force, "Overwrite OUT_TEXT and the --trace file if they exist");
  c->add_flag("--json", o->json, "Print JSON");
  c->add_option("command", o->command, "-- COMMAND [ARGS...]: run it and capture its events until it exits");
  c->callback([o] { run_capture(*o); });
}

}  // namespace baton::cli
