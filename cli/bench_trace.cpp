// baton bench trace: `baton trace import` on a synthetic capture shaped like a real QEMU one
// (traces::synthetic_ftrace), against a plain line-splitting read of the same file in the
// same run; lines per second and the import's peak RSS against the input size.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/traces/ftrace.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Counts the lines of a file with read() and memchr: the baseline. Returns -1 on error.
long long count_lines(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  std::vector<char> buf(std::size_t{1} << 20);
  long long n = 0;
  for (;;) {
    const ssize_t got = ::read(fd, buf.data(), buf.size());
    if (got < 0) n = -1;
    if (got <= 0) break;
    const char* p = buf.data();
    const char* end = p + got;
    while ((p = static_cast<const char*>(std::memchr(p, '\n', static_cast<std::size_t>(end - p)))) != nullptr) {
      ++n;
      ++p;
    }
  }
  ::close(fd);
  return n;
}

// What one child run of `baton trace import` took.
struct ChildRun {
  bool ok = false;
  double wall_s = 0;
  double cpu_s = 0;  // user + system, all threads
  long max_rss_kb = 0;
};

// Runs this executable with `args` (stdout and stderr to /dev/null), timing it and reading
// its peak RSS from wait4().
ChildRun run_child(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  std::string self = "/proc/self/exe";
  argv.push_back(self.data());
  std::vector<std::string> copy = args;
  for (std::string& a : copy) argv.push_back(a.data());
  argv.push_back(nullptr);
  ChildRun r;
  const auto t0 = Clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) return r;
  if (pid == 0) {
    const int null = ::open("/dev/null", O_WRONLY);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    ::execv("/proc/self/exe", argv.data());
    ::_exit(127);
  }
  int status = 0;
  struct rusage ru {};
  if (::wait4(pid, &status, 0, &ru) != pid) return r;
  r.wall_s = std::chrono::duration<double>(Clock::now() - t0).count();
  r.max_rss_kb = ru.ru_maxrss;
  r.cpu_s = static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
            static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
  r.ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  return r;
}

struct BenchTraceOptions {
  std::size_t lines = traces::SynthOptions{}.lines;
  unsigned reps = 3;
  std::string keep;  // keep the capture here
  bool json_out = false;
};

// baton bench trace
void run_bench_trace(const BenchTraceOptions& o) {
  const bool tty = isatty(fileno(stderr)) != 0;
  std::error_code ec;
  const std::filesystem::path dir = std::filesystem::temp_directory_path(ec) / ("baton-bench-trace-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir, ec);
  if (ec) return fail("cannot create " + dir.string() + ": " + ec.message());
  const std::string capture = o.keep.empty() ? (dir / "capture.txt").string() : o.keep;
  const std::string out = (dir / "capture.trace").string();
  traces::SynthOptions so;
  so.lines = o.lines;
  if (tty) std::fprintf(stderr, "writing a synthetic capture of %zu lines...\n", so.lines);
  auto synth = traces::write_synthetic_ftrace(capture, so);
  if (!synth) return fail(synth.error().message);
  // The import must see every line the generator wrote, each event where it belongs.
  if (tty) std::fprintf(stderr, "checking the import of the capture...\n");
  auto check = traces::import_ftrace_file(capture);
  if (!check) return fail(check.error().message);
  static constexpr const char* kIgnored[] = {"kvm_fpu"};
  std::size_t handled = 0, ignored = 0;
  for (const auto& [name, n] : synth->per_event)
    (std::find(std::begin(kIgnored), std::end(kIgnored), name) != std::end(kIgnored) ? ignored : handled) += n;
  const bool counts_ok = check->stats.lines == synth->lines && check->stats.event_lines == handled &&
                         check->stats.other_event_lines == ignored && check->stats.malformed_lines == 0 &&
                         check->stats.unknown_lines == 0 && check->stats.vms.size() == so.vms &&
                         check->stats.per_event.at("kvm_mmu_set_spte") == synth->per_event.at("kvm_mmu_set_spte");
  check.value() = {};
  json base_all = json::array(), imp_all = json::array(), rss_all = json::array(), cpu_all = json::array();
  double best_base = 0, best_imp = 0, best_cpu = 0;
  long best_rss = 0;
  bool imports_ok = true;
  const unsigned reps = std::max(o.reps, 1u);
  for (unsigned r = 0; r < reps; ++r) {
    if (tty) std::fprintf(stderr, "line-splitting baseline (%u/%u)...\n", r + 1, reps);
    const auto t0 = Clock::now();
    const long long n = count_lines(capture);
    const double base = std::chrono::duration<double>(Clock::now() - t0).count();
    if (n != static_cast<long long>(synth->lines)) return fail("the baseline counted " + std::to_string(n) + " lines");
    if (tty) std::fprintf(stderr, "baton trace import (%u/%u)...\n", r + 1, reps);
    const ChildRun c = run_child({"trace", "import", capture, out, "--force"});
    imports_ok = imports_ok && c.ok;
    base_all.push_back(base);
    imp_all.push_back(c.wall_s);
    rss_all.push_back(c.max_rss_kb);
    cpu_all.push_back(c.cpu_s);
    if (r == 0 || c.cpu_s < best_cpu) best_cpu = c.cpu_s;
    if (r == 0 || base < best_base) best_base = base;
    if (r == 0 || c.wall_s < best_imp) best_imp = c.wall_s;
    if (r == 0 || c.max_rss_kb > best_rss) best_rss = c.max_rss_kb;
  }
  const double lines = static_cast<double>(synth->lines), bytes = static_cast<double>(synth->bytes);
  const double rss_ratio = static_cast<double>(best_rss) * 1024.0 / bytes;
  const double lps = lines / best_imp;
  json j{{"bench", "trace"},
         {"capture", {{"lines", synth->lines}, {"bytes", synth->bytes}, {"vms", so.vms}, {"per_event", synth->per_event}}},
         {"import", {{"wall_s", best_imp}, {"wall_s_all", imp_all}, {"lines_per_s", lps}, {"cpu_s", best_cpu},
                     {"cpu_s_all", cpu_all}, {"peak_rss_kb", best_rss},
                     {"peak_rss_kb_all", rss_all}, {"rss_over_input", rss_ratio}, {"exit_ok", imports_ok},
                     {"counts_match_capture", counts_ok}}},
         {"baseline_line_split", {{"wall_s", best_base}, {"wall_s_all", base_all}, {"lines_per_s", lines / best_base}}},
         {"import_over_baseline", best_base / best_imp},
         {"targets", {{"lines_per_s_min", 3e6}, {"rss_over_input_max", 2.0}}},
         {"met", imports_ok && counts_ok && lps >= 3e6 && rss_ratio <= 2.0}};
  std::filesystem::remove(out, ec);
  if (o.keep.empty()) std::filesystem::remove(capture, ec);
  std::filesystem::remove(dir, ec);
  if (o.json_out) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("capture          %zu lines, %.1f MB, %u VMs, %zu kvm_mmu_set_spte\n", synth->lines, bytes / 1e6, so.vms,
              synth->per_event.at("kvm_mmu_set_spte"));
  std::printf("trace import     %.3f s, %.2fM lines/s (%.3f s CPU, both threads), peak RSS %.1f MB (%.2fx the input)%s\n",
              best_imp, lps / 1e6, best_cpu, static_cast<double>(best_rss) / 1024.0, rss_ratio,
              counts_ok && imports_ok ? "" : "  COUNTS DIFFER");
  std::printf("line splitting   %.3f s, %.2fM lines/s (baseline, same run)\n", best_base, lines / best_base / 1e6);
  std::printf("met: %s (targets: >= 3M lines/s, RSS <= 2x the input)\n", j["met"].get<bool>() ? "yes" : "no");
}

}  // namespace

void register_bench_trace(CLI::App& bench) {
  auto o = std::make_shared<BenchTraceOptions>();
  CLI::App* c =
      bench.add_subcommand("trace", "trace import of a synthetic QEMU-shaped capture against plain line splitting");
  c->add_option("--lines", o->lines, "Lines of the synthetic capture")->capture_default_str();
  c->add_option("--reps", o->reps, "Runs of each side (alternating); the best counts")->capture_default_str();
  c->add_option("--keep", o->keep, "Write the capture to this file and keep it");
  c->add_flag("--json", o->json_out, "Print JSON");
  c->callback([o] { run_bench_trace(*o); });
}

}  // namespace baton::cli
