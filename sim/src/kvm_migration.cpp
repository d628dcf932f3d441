// KVM under the migration driver (include/baton/sim/kvm_migration.hpp): a source VM in this
// process, a `baton vmm-worker` process as the new VMM, measured times.
#include "baton/sim/kvm_migration.hpp"

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <thread>

#include "baton/checker/no_copy.hpp"
#include "baton/guests/registry.hpp"
#include "baton/hw/handover.hpp"
#include "baton/hw/machine.hpp"
#include "baton/hw/tracefs.hpp"
#include "baton/hw/worker.hpp"
#include "baton/model/file_io.hpp"
#include "baton/sim/kvm_trace.hpp"
#include "baton/traces/ftrace.hpp"

namespace baton::sim {

namespace {

std::uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// An empty handler: SIGUSR1 only has to interrupt KVM_RUN (EINTR) on the vCPU thread.
void on_kick(int) {}

// Installs the kick handler once, without SA_RESTART so that KVM_RUN returns EINTR.
void install_kick_handler() {
  static const bool done = [] {
    struct sigaction sa {};
    sa.sa_handler = on_kick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;
    ::sigaction(SIGUSR1, &sa, nullptr);
    return true;
  }();
  (void)done;
}

// What the guest said on the ports, in the driver's terms.
GuestOutput output_of(const guests::GuestRun& r) {
  GuestOutput o;
  o.console = r.console;
  o.results = r.results;
  o.stages = r.stages;
  if (r.exited) o.exit_code = r.exit_code;
  o.inputs = r.inputs;
  return o;
}

// The VMM worker as a child process on one end of a socketpair.
struct Worker {
  pid_t pid = -1;
  hw::Fd sock;
  bool reaped = false;

  // Kills the worker (if it still runs) and reaps it.
  void stop() {
    if (pid <= 0 || reaped) return;
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    reaped = true;
  }
  // Reaps a worker that ends by itself (true); kills it after `timeout_ms` (false).
  bool reap(int timeout_ms) {
    if (pid <= 0 || reaped) return true;
    for (int waited = 0; waited < timeout_ms; waited += 5) {
      if (::waitpid(pid, nullptr, WNOHANG) == pid) {
        reaped = true;
        return true;
      }
      ::usleep(5000);
    }
    stop();
    return false;
  }
  ~Worker() { stop(); }
};

// The CPUs of a migration: the source's vCPU on the CPU it runs on, the worker on another one
// it may use, so that neither the worker's wake-up at the pause nor its spinning takes the
// source's CPU. Empty (no pinning) with a single allowed CPU, or with BATON_KVM_PIN=0.
struct CpuPlan {
  bool pinned = false;
  bool spin = false;  // the worker spins until the pause (pinned, and BATON_KVM_SPIN is not 0)
  cpu_set_t original{};  // the source thread's mask before
  cpu_set_t source{}, worker{};
};

// How long a worker on a CPU of its own spins before the pause, at most (then it sleeps until woken).
constexpr const char* kSpinBeforeMs = "10000";

// Plans the CPUs from the calling thread's affinity and pins the calling thread.
CpuPlan pin_source_thread() {
  CpuPlan p;
  if (const char* e = std::getenv("BATON_KVM_PIN"); e != nullptr && std::string(e) == "0") return p;
  if (::sched_getaffinity(0, sizeof p.original, &p.original) != 0 || CPU_COUNT(&p.original) < 2) return p;
  int here = ::sched_getcpu();
  if (here < 0 || !CPU_ISSET(here, &p.original)) here = -1;
  int other = -1;
  for (int c = 0; c < CPU_SETSIZE && (here < 0 || other < 0); ++c) {
    if (!CPU_ISSET(c, &p.original)) continue;
    if (here < 0) here = c;
    else if (c != here) other = c;
  }
  if (other < 0) return p;
  CPU_ZERO(&p.source);
  CPU_SET(here, &p.source);
  CPU_ZERO(&p.worker);
  CPU_SET(other, &p.worker);
  p.pinned = ::sched_setaffinity(0, sizeof p.source, &p.source) == 0;
  const char* spin = std::getenv("BATON_KVM_SPIN");
  p.spin = p.pinned && (spin == nullptr || std::string(spin) != "0");
  return p;
}

// Starts `exe vmm-worker --fd 3` with its stdout and stderr on /dev/null (it reports over
// the socket), on `cpus.worker` when the plan pins.
Result<std::unique_ptr<Worker>> spawn_worker(const std::string& exe, const std::string& die_at, int timeout_ms,
                                             const CpuPlan& cpus) {
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
    return make_error(std::string("socketpair(AF_UNIX) failed: ") + std::strerror(errno));
  const std::string timeout = std::to_string(timeout_ms);
  const pid_t parent = ::getpid();
  const pid_t pid = ::fork();
  if (pid < 0) {
    const int e = errno;
    ::close(sv[0]);
    ::close(sv[1]);
    return make_error(std::string("fork failed: ") + std::strerror(e));
  }
  if (pid == 0) {
    // The child: only async-signal-safe calls until exec. Its own process group keeps a
    // terminal's Ctrl-C (meant for baton explore's REPL) away from it; it dies with its parent.
    ::setpgid(0, 0);
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != parent) ::_exit(127);  // the parent died before the prctl
    if (cpus.pinned) (void)::sched_setaffinity(0, sizeof cpus.worker, &cpus.worker);
    const int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 1);
      ::dup2(null, 2);
    }
    if (::dup2(sv[1], 3) < 0) ::_exit(127);
    ::fcntl(3, F_SETFD, 0);  // keep fd 3 across exec, even if sv[1] was 3 already
    if (!die_at.empty()) ::setenv("BATON_WORKER_DIE_AT", die_at.c_str(), 1);
    else ::unsetenv("BATON_WORKER_DIE_AT");
    // On a CPU of its own the worker spins from the baseline to the pause (no wake-up inside
    // the downtime); elsewhere it never spins (it may share the source's CPU), and the source
    // wakes it once the state is posted (HandoverTiming::worker_spins).
    const char* argv[] = {"baton",           "vmm-worker", "--fd",     "3", "--timeout-ms", timeout.c_str(),
                          "--spin-before-ms", cpus.spin ? kSpinBeforeMs : "0", "--spin-ms", cpus.spin ? "1000" : "0",
                          nullptr};
    ::execv(exe.c_str(), const_cast<char* const*>(argv));
    ::_exit(127);
  }
  ::close(sv[1]);
  auto w = std::make_unique<Worker>();
  w->pid = pid;
  w->sock = hw::Fd(sv[0]);
  return w;
}

// The KVM backend of the migration driver.
class KvmBackend final : public MigrationBackend {
 public:
  KvmBackend(const guests::GuestImage& image, const KvmMigrationConfig& cfg, const MigrationOptions& opt)
      : image_(image), cfg_(cfg), opt_(opt) {}
  ~KvmBackend() override {
    if (vcpu_thread_.joinable()) {
      stop_vcpu_thread();
    }
    unpin();
  }

  Capabilities capabilities() const override {
    Capabilities c;
    c.refuses[static_cast<unsigned>(Method::kAdopt)] =
        "local-adopt is not available on KVM: KVM builds and owns its EPT, so a new VMM cannot point at the old "
        "tree (use local-lazy or precopy)";
    c.refuses[static_cast<unsigned>(Method::kRebuild)] =
        "local-rebuild is not available on KVM: KVM builds and owns its EPT, and baton does not pre-build it with "
        "KVM_PRE_FAULT_MEMORY (use local-lazy or precopy)";
    c.faults = false;
    c.checks_before_resume = false;
    return c;
  }
  void begin(MigrationResult& r) override {
    res_ = &r;
    r.backend = "kvm";
    r.host_flavour = hw::host_flavour();
    r.time_base = TimeBase::kMeasuredNs;
    r.frequency_ghz = 1.0;  // the "cycles" fields hold nanoseconds
    r.source_pid = static_cast<std::uint32_t>(::getpid());
    r.capture_path = cfg_.capture_path;
    t0_ns_ = monotonic_ns();
  }
  Result<RunEvent> run_to_point(const RunLimits& point) override;
  std::uint64_t source_instructions() const override { return 0; }
  Result<std::string> plant_source_fault(const Fault&) override {
    return make_error("faults cannot be planted on the kvm backend");
  }
  Result<std::string> plant_package_fault(const Fault&, model::HandoverSnapshot&) override {
    return make_error("faults cannot be planted on the kvm backend");
  }
  Result<void> precopy() override;
  Result<model::HandoverSnapshot> pause_and_capture() override;
  Result<void> stop_and_copy() override;
  Result<model::HandoverSnapshot> hand_over(Method m, const model::HandoverSnapshot& pkg) override;
  void verify(Method m, const model::HandoverSnapshot& before, const model::HandoverSnapshot& after) override;
  void discard_new(Method) override {
    if (worker_) worker_->stop();
  }
  Result<void> resume_source() override;
  Result<void> finish_on_new(Method m) override;
  Result<void> epilogue() override { return ok_result(); }
  // Writes the trace of the whole run (KvmMigrationConfig::trace_path), once the run is over.
  Result<void> write_trace();

 private:
  // Adds a measured phase [from_ns, to_ns) to the timeline.
  void phase(const std::string& name, std::uint64_t from_ns, std::uint64_t to_ns, bool down) {
    const double ns = static_cast<double>(to_ns > from_ns ? to_ns - from_ns : 0);
    res_->timeline.push_back(Phase{name, static_cast<double>(from_ns - t0_ns_), ns, down});
    if (down) res_->downtime += ns;
  }
  // Runs the source vCPU until `stop_at_sync` or the end; stamps the last return from KVM_RUN.
  Result<hw::KvmRunResult> run_source(bool stop_at_sync) {
    auto r = machine_->run(~std::uint64_t{0}, stop_at_sync);
    last_run_ns_ = monotonic_ns();
    return r;
  }
  void start_vcpu_thread();
  // Gives the source thread back its CPU mask of before the migration.
  void unpin() {
    if (cpus_.pinned) (void)::sched_setaffinity(0, sizeof cpus_.original, &cpus_.original);
    cpus_.pinned = false;
  }
  // The pause begins: a worker that spins once woken (timing_.worker_spins; it normally spins
  // already, since the baseline) is woken in case that spin ran out, so that its wake-up
  // overlaps the capture. One that does not spin is woken by send_state once the state is
  // posted; waking it here as well would cost the source an IPI for nothing.
  void wake_at_pause() {
    if (timing_.worker_spins) hw::wake_worker(timing_);
  }
  // Kicks the vCPU thread out of KVM_RUN and joins it.
  void stop_vcpu_thread();
  // Reports where the guest ended up when the source keeps it.
  void finish_output(const guests::GuestRun& before, const std::optional<guests::GuestRun>& after);
  void check_no_copy();

  const guests::GuestImage& image_;
  KvmMigrationConfig cfg_;
  MigrationOptions opt_;
  MigrationResult* res_ = nullptr;
  std::uint64_t t0_ns_ = 0;
  std::unique_ptr<hw::KvmMachine> machine_;
  std::unique_ptr<Worker> worker_;
  CpuPlan cpus_;
  std::string worker_error_;  // the worker failed before the handover
  hw::HandoverTiming timing_;
  std::uint64_t last_run_ns_ = 0;
  std::uint64_t capture_done_ns_ = 0;
  bool state_sent_ = false;  // local-lazy: pause_and_capture posted the state
  std::uint64_t down_mark_ = 0;  // where the next downtime phase begins
  std::unique_ptr<hw::TracefsCapture> capture_;
  std::string capture_text_;
  std::size_t source_cut_ = std::string::npos;  // the capture text before the source's teardown
  // the trace (KvmMigrationConfig::trace_path)
  std::vector<hw::VmmEvent> source_events_, worker_events_;
  std::vector<traces::TraceEvent> phases_;  // migration-phase events, time in CLOCK_MONOTONIC ns
  std::string worker_events_error_;
  // Notes a migration phase for the trace.
  void trace_phase(std::uint64_t ns, traces::MigrationPhase p, std::uint64_t value = 0) {
    if (!cfg_.trace_path.empty()) phases_.push_back(traces::phase_event(0, ns, p, value));
  }
  // precopy
  std::thread vcpu_thread_;
  std::atomic<bool> vcpu_done_{false};
  Result<hw::KvmRunResult> vcpu_result_ = make_error("not run");
};

Result<RunEvent> KvmBackend::run_to_point(const RunLimits& point) {
  if (opt_.at_insn != 0 || point.until_insn != 0)
    return make_error("--at-insn is not available on KVM: it does not count guest instructions; use --at-sync");
  if (cfg_.worker_exe.empty()) cfg_.worker_exe = "/proc/self/exe";
  if (!cfg_.capture_path.empty()) {
    hw::TracefsOptions to;
    to.follow_forks = true;  // the worker (a child) and the precopy vCPU thread
    if (!cfg_.trace_path.empty()) to.clock = "mono";  // merged with the VMMs' own events by time
    auto cap = hw::TracefsCapture::open(to);
    if (!cap) return make_error("--capture: " + cap.error().message);
    capture_ = std::move(*cap);
    BATON_TRY_VOID(capture_->add_process(::getpid()));
    capture_text_ = capture_->header();
    BATON_TRY_VOID(capture_->start());
  }
  if (cfg_.source) {
    auto m = cfg_.source();
    if (!m) return m.error();
    machine_ = std::move(*m);
  } else {
    hw::KvmMachineOptions mo;
    mo.device = cfg_.device;
    mo.log_events = !cfg_.trace_path.empty();
    auto m = hw::KvmMachine::try_create(image_, mo);
    if (!m) return m.error();
    machine_ = std::move(*m);
  }
  // local-lazy only: precopy's rounds need every CPU the scheduler can give them (pinned, its
  // round 1 took 3x as long on a loaded machine), and its downtime is the stop-and-copy's.
  if (opt_.method != Method::kPrecopy) cpus_ = pin_source_thread();
  auto w = spawn_worker(cfg_.worker_exe, cfg_.worker_die_at, cfg_.timeout_ms, cpus_);
  if (!w) return w.error();
  worker_ = std::move(*w);
  timing_.worker_spins = cpus_.spin;
  res_->worker_pid = static_cast<std::uint32_t>(worker_->pid);
  // The worker starts (exec, /dev/kvm) while the guest runs to the migration point. local-lazy:
  // it also builds its VM, vCPU and memslot around the same memfd before the pause; precopy
  // does that at the migration point, where its first round begins.
  if (auto r = opt_.method == Method::kPrecopy ? hw::await_hello(worker_->sock.get(), timing_, cfg_.timeout_ms)
                                               : hw::prepare_worker(*machine_, worker_->sock.get(), timing_,
                                                                    cfg_.timeout_ms);
      !r)
    worker_error_ = r.error().message;
  if (cfg_.source) {  // the source stands where its builder put it
    last_run_ns_ = monotonic_ns();
    wake_at_pause();  // the pause begins here
    const std::uint32_t stage = machine_->recorder().state().stage;
    return RunEvent{StopReason::kInsnLimit, "where the explore session stands", stage};
  }
  const std::uint32_t want = point.sync.value_or(1);
  for (;;) {
    auto r = run_source(true);
    if (!r) return r.error();
    const std::uint32_t stage = machine_->ports().stages.empty() ? 0 : machine_->ports().stages.back();
    if (r->stop == hw::KvmStop::kSync && stage >= want) {
      trace_phase(last_run_ns_, traces::MigrationPhase::kStart);
      wake_at_pause();
      return RunEvent{StopReason::kSyncPoint, "", stage};
    }
    if (r->stop == hw::KvmStop::kSync) continue;
    const StopReason why = r->stop == hw::KvmStop::kExited ? StopReason::kExited
                           : r->stop == hw::KvmStop::kShutdown ? StopReason::kTripleFault
                           : r->stop == hw::KvmStop::kFailEntry ? StopReason::kEntryFailure
                                                                 : StopReason::kError;
    return RunEvent{why, std::string(hw::to_string(r->stop)) + (r->detail.empty() ? "" : ": " + r->detail), stage};
  }
}

void KvmBackend::start_vcpu_thread() {
  install_kick_handler();
  vcpu_done_ = false;
  machine_->vcpu().set_immediate_exit(false);
  vcpu_thread_ = std::thread([this] {
    // The guest runs on during the rounds wherever it may, not on the CPU that sends them.
    if (cpus_.pinned) (void)::sched_setaffinity(0, sizeof cpus_.original, &cpus_.original);
    vcpu_result_ = run_source(false);
    vcpu_done_ = true;
  });
}

void KvmBackend::stop_vcpu_thread() {
  // immediate_exit covers a kick that lands just before KVM_RUN; the signal one inside it.
  while (!vcpu_done_) {
    machine_->vcpu().set_immediate_exit(true);
    ::pthread_kill(vcpu_thread_.native_handle(), SIGUSR1);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
  vcpu_thread_.join();
  machine_->vcpu().set_immediate_exit(false);
}

Result<void> KvmBackend::precopy() {
  timing_.precopy = true;
  // The worker's baseline, while the vCPU is stopped (a capture waits for KVM_RUN to end).
  auto baseline = machine_->capture();
  if (!baseline) return baseline.error();
  timing_.baseline = std::move(*baseline);
  start_vcpu_thread();  // the guest runs on while memory is copied
  const std::uint64_t r1 = monotonic_ns();
  if (auto r = hw::prepare_worker(*machine_, worker_->sock.get(), timing_, cfg_.timeout_ms); !r) {
    worker_error_ = r.error().message;
    return ok_result();  // the handover fails; the source keeps the guest
  }
  const std::uint64_t pages = machine_->memory().size() / 4096;
  CopyRound first;
  first.pages = pages;
  first.sent = timing_.bytes_copied / 4096;
  first.cycles = static_cast<double>(monotonic_ns() - r1);
  res_->rounds.push_back(first);
  phase("precopy-round-1", r1, monotonic_ns(), false);
  trace_phase(r1, traces::MigrationPhase::kCopyRound, 1);
  // QEMU's stop condition (migration_iteration_run): sync the dirty log, and stop once what is
  // pending could be sent within the downtime limit at the bandwidth the last round measured
  // (none pending, or fewer than bandwidth x downtime-limit); otherwise send it as the next round. --max-rounds
  // bounds the rounds as libvirt's --timeout bounds QEMU's (a forced switchover), and
  // --converge-pages is kept as a floor.
  double bytes_per_s = first.cycles > 0 ? static_cast<double>(timing_.bytes_copied) * 1e9 / first.cycles : 0;
  const auto threshold_pages = [&] { return bytes_per_s * opt_.downtime_limit_ms / 1e3 / 4096; };
  for (unsigned round = 2;; ++round) {
    if (vcpu_done_) {
      res_->precopy_stop = "the guest finished during the rounds";
      break;
    }
    auto pending = hw::sync_dirty(*machine_, timing_);
    if (!pending) {
      worker_error_ = pending.error().message;
      return ok_result();
    }
    res_->rounds.back().dirtied = *pending;  // what the previous round left dirty
    char why[200];
    if (*pending == 0 || static_cast<double>(*pending) < threshold_pages()) {  // QEMU: !pending || pending < threshold
      std::snprintf(why, sizeof why, "converged: %llu pages pending < %.0f = %.0f ms at %.1f MB/s (--downtime-limit)",
                    static_cast<unsigned long long>(*pending), threshold_pages(), opt_.downtime_limit_ms, bytes_per_s / 1e6);
    } else if (*pending <= opt_.converge_pages) {
      std::snprintf(why, sizeof why, "converged: %llu pages pending <= %llu (--converge-pages)",
                    static_cast<unsigned long long>(*pending), static_cast<unsigned long long>(opt_.converge_pages));
    } else if (round > opt_.max_rounds) {
      std::snprintf(why, sizeof why, "not converged after %u rounds (--max-rounds): %llu pages pending > %.0f = %.0f ms at %.1f MB/s",
                    opt_.max_rounds, static_cast<unsigned long long>(*pending), threshold_pages(), opt_.downtime_limit_ms,
                    bytes_per_s / 1e6);
    } else {
      why[0] = '\0';
    }
    if (why[0] != '\0') {
      res_->precopy_stop = why;
      break;
    }
    const std::uint64_t a = monotonic_ns(), before = timing_.bytes_copied;
    auto sent = hw::precopy_round(*machine_, worker_->sock.get(), timing_);
    if (!sent) {
      worker_error_ = sent.error().message;
      return ok_result();
    }
    CopyRound c;
    c.pages = c.sent = (timing_.bytes_copied - before) / 4096;
    c.cycles = static_cast<double>(monotonic_ns() - a);
    if (c.cycles > 0 && c.sent > 0) bytes_per_s = static_cast<double>(c.sent * 4096) * 1e9 / c.cycles;
    res_->rounds.push_back(c);
    phase("precopy-round-" + std::to_string(round), a, monotonic_ns(), false);
    trace_phase(a, traces::MigrationPhase::kCopyRound, round);
    if (opt_.progress)
      opt_.progress("precopy round " + std::to_string(round) + ": " + std::to_string(c.sent) + " dirty pages sent");
  }
  if (opt_.progress) opt_.progress("precopy stops: " + res_->precopy_stop);
  return ok_result();
}

Result<model::HandoverSnapshot> KvmBackend::pause_and_capture() {
  if (vcpu_thread_.joinable()) {
    stop_vcpu_thread();
    if (!vcpu_result_) return vcpu_result_.error();
    if (vcpu_result_->stop == hw::KvmStop::kExited) res_->finished_before_switch = true;
  }
  // A prepared worker holds the baseline: capture only what the guest changes without
  // privileges; verify() proves the rest with a full capture of this stopped vCPU.
  // The capture goes into the prepared timing_.pause_state (no copy inside the pause) where a
  // worker holds the baseline, else into `full`.
  Result<model::VcpuState> full = make_error("not captured");
  const model::VcpuState* state = nullptr;
  if (timing_.baseline && worker_error_.empty()) {
    if (auto c = machine_->capture_changes_into(*timing_.baseline, timing_.pause_state); !c) return c.error();
    state = &timing_.pause_state;
  } else {
    full = machine_->capture();
    if (!full) return full.error();
    state = &*full;
  }
  capture_done_ns_ = monotonic_ns();
  if (opt_.method != Method::kPrecopy && timing_.baseline && worker_error_.empty()) {
    // local-lazy: nothing more goes before the state, so it leaves at once (precopy posts it
    // after the stop-and-copy). KVM refuses --fault, so the package hand_over gets is this state.
    if (auto sent = hw::send_state(*machine_, timing_, *state); sent) state_sent_ = true;
    else worker_error_ = sent.error().message;
  }
  timing_.pause_ns = last_run_ns_;
  down_mark_ = capture_done_ns_;
  phase("state-save", last_run_ns_, capture_done_ns_, true);
  trace_phase(last_run_ns_, traces::MigrationPhase::kPause);
  model::HandoverSnapshot s;
  s.vcpus.push_back(*state);
  s.memslots.push_back(model::Memslot{0, model::Gpa{0}, machine_->memory().size(), model::Hpa{0}, false});
  s.meta["ept"] = checker::kEptOwnedByKvm;
  s.meta["backend"] = "kvm";
  s.meta["guest"] = cfg_.guest_name;
  s.meta["host_flavour"] = res_->host_flavour;
  return s;
}

Result<void> KvmBackend::stop_and_copy() {
  if (!worker_error_.empty() || res_->finished_before_switch) return ok_result();
  const std::uint64_t a = monotonic_ns(), before = timing_.bytes_copied;
  auto sent = hw::precopy_round(*machine_, worker_->sock.get(), timing_);
  if (!sent) {
    worker_error_ = sent.error().message;
    return ok_result();
  }
  CopyRound c;
  c.pages = c.sent = (timing_.bytes_copied - before) / 4096;
  c.cycles = static_cast<double>(monotonic_ns() - a);
  if (!res_->rounds.empty()) res_->rounds.back().dirtied = c.pages;
  res_->rounds.push_back(c);
  const std::uint64_t done = monotonic_ns();
  phase("stop-and-copy", down_mark_, done, true);  // contiguous: the downtime phases add up exactly
  trace_phase(a, traces::MigrationPhase::kStopAndCopy, c.pages);
  down_mark_ = done;
  return ok_result();
}

Result<model::HandoverSnapshot> KvmBackend::hand_over(Method m, const model::HandoverSnapshot& pkg) {
  if (!worker_error_.empty()) return make_error(worker_error_);
  if (res_->finished_before_switch) return make_error("the guest exited during pre-copy: nothing to hand over");
  if (!state_sent_) BATON_TRY_VOID(hw::send_state(*machine_, timing_, pkg.vcpus.at(0)));
  auto restored = hw::await_resumed(worker_->sock.get(), timing_, cfg_.timeout_ms);
  if (!restored) return restored.error();
  BATON_CHECK(hw::state_sent_is(*machine_, timing_, pkg.vcpus.at(0)));  // the worker got this package
  // Contiguous: the downtime phases add up to resumed - pause exactly.
  phase("state-transfer", down_mark_, timing_.state_received_ns, true);
  phase("state-restore", timing_.state_received_ns, timing_.resumed_ns, true);
  trace_phase(down_mark_, traces::MigrationPhase::kStateTransfer);
  trace_phase(timing_.resumed_ns, traces::MigrationPhase::kResume);
  res_->bytes_copied = timing_.bytes_copied;
  res_->pages_copied = timing_.bytes_copied / 4096;
  model::HandoverSnapshot after = pkg;
  after.vcpus[0] = *restored;
  after.meta["method"] = to_string(m);
  after.meta["vmm_pid"] = std::to_string(worker_->pid);
  return after;
}

void KvmBackend::verify(Method, const model::HandoverSnapshot& before, const model::HandoverSnapshot& after) {
  // The worker resumed at once; the state it restored must be the captured one, with the
  // guest TSC continuous. The no-copy property follows from the capture after the run.
  // The pause read only what an unprivileged guest changes (capture_changes); the rest came
  // from the baseline. The source vCPU has not run since, so a full capture now is its state at
  // the pause: the property is checked against that, with the TSC fields read at the pause.
  const auto t0 = std::chrono::steady_clock::now();
  const bool tsc_from_offset = machine_->vcpu().tsc_from_offset();
  auto full = machine_->capture_again();
  if (!full) {
    res_->checks.push_back(CheckLine{"vcpu", checker::Verdict::kUnknown,
                                     "the full capture of the stopped source vCPU failed: " + full.error().message,
                                     seconds_since(t0), std::nullopt});
    return;
  }
  const model::VcpuState& paused = before.vcpus.at(0);
  if (tsc_from_offset && machine_->vcpu().kvm_tsc_offset() != paused.tsc_offset) {
    // The pause took the guest TSC as RDTSC plus the offset of the baseline's capture: that
    // holds only if KVM still has that offset now (the source vCPU has not run since).
    const auto now = machine_->vcpu().kvm_tsc_offset();
    res_->checks.push_back(CheckLine{
        "vcpu", checker::Verdict::kUnknown,
        "the pause took the guest TSC from the TSC offset " + std::to_string(paused.tsc_offset) +
            ", but KVM holds " + (now ? std::to_string(*now) : std::string("none readable")) + " now",
        seconds_since(t0), std::nullopt});
    return;
  }
  model::HandoverSnapshot proof = before;
  proof.vcpus.at(0) = *full;
  proof.vcpus.at(0).tsc_offset = paused.tsc_offset;
  proof.vcpus.at(0).host_tsc_at_capture = paused.host_tsc_at_capture;
  auto r = checker::check_vcpu(proof, after, checker::Verdict::kProven, opt_.check);
  if (!r) {
    res_->checks.push_back(CheckLine{"vcpu", checker::Verdict::kUnknown, r.error().message, seconds_since(t0), std::nullopt});
    return;
  }
  explain_tsc_refutation(*r, paused, after.vcpus.at(0), res_->host_flavour);
  res_->checks.push_back(CheckLine{"vcpu", r->verdict, r->summary, seconds_since(t0), r->counterexample});
}

void KvmBackend::finish_output(const guests::GuestRun& before, const std::optional<guests::GuestRun>& after) {
  GuestOutput out = output_of(before);
  if (after) {
    const GuestOutput a = output_of(*after);
    out.console += a.console;
    out.results.insert(out.results.end(), a.results.begin(), a.results.end());
    out.stages.insert(out.stages.end(), a.stages.begin(), a.stages.end());
    if (a.exit_code) out.exit_code = a.exit_code;
  }
  res_->console = out.console;
  res_->checksum = out.checksum();
}

Result<void> KvmBackend::resume_source() {
  unpin();
  // The handover did not happen (the worker failed before it resumed the guest), so the
  // guest's memory and vCPU are as the source left them: it resumes here.
  if (worker_) worker_->stop();
  const std::uint64_t a = monotonic_ns();
  if (!res_->finished_before_switch) {
    auto r = run_source(false);
    if (!r) return r.error();
    const bool exited = r->stop == hw::KvmStop::kExited;
    res_->final_event = RunEvent{exited ? StopReason::kExited : StopReason::kError,
                                 exited ? "exit code " + std::to_string(machine_->ports().exit_code) + " on the source"
                                        : std::string(hw::to_string(r->stop)) + ": " + r->detail,
                                 res_->at_stage};
  } else {
    res_->final_event = RunEvent{StopReason::kExited, "the guest exited during pre-copy", res_->at_stage};
  }
  phase("run to the end (old VMM)", a, monotonic_ns(), false);
  finish_output(machine_->ports(), std::nullopt);
  source_events_ = machine_->events();
  res_->total = static_cast<double>(monotonic_ns() - t0_ns_);
  if (capture_) check_no_copy();
  return ok_result();
}

Result<void> KvmBackend::finish_on_new(Method) {
  unpin();
  // The old VMM tears its VM down; the guest memory stays with the memfd the worker mapped.
  const guests::GuestRun before = machine_->ports();
  source_events_ = machine_->events();
  if (capture_) {
    // The source map is taken before its teardown (which may zap its SPTEs).
    (void)capture_->drain(capture_text_);
    source_cut_ = capture_text_.size();
  }
  machine_.reset();
  auto run = hw::wait_worker_run(worker_->sock.get(), std::max(cfg_.timeout_ms, 600'000));
  if (run && !cfg_.trace_path.empty()) {
    auto ev = hw::wait_worker_events(worker_->sock.get(), cfg_.timeout_ms);
    if (ev) worker_events_ = std::move(*ev);
    else worker_events_error_ = ev.error().message;
  } else {
    // Its events are not wanted: say so by closing this end, so that a worker blocked sending
    // them (more than a socket buffer holds: about 8,000 exits) fails at once and exits. Reaping
    // without it waited out the whole timeout (60 s) with the worker stuck in send().
    ::shutdown(worker_->sock.get(), SHUT_RDWR);
  }
  res_->worker_exit = worker_->reap(cfg_.timeout_ms) ? "exited" : "killed";
  if (!run) {
    // The worker owned the guest when it failed: the source must not resume it (its memory
    // may have moved on), so no checksum is claimed.
    res_->final_event = RunEvent{StopReason::kError,
                                 "the worker owned the guest and failed after the resume: " + run.error().message +
                                     "; the guest is lost (the source does not resume it)",
                                 res_->at_stage};
    finish_output(before, std::nullopt);
    res_->checksum.reset();
  } else {
    res_->final_event = RunEvent{run->exited ? StopReason::kExited : StopReason::kError,
                                 run->exited ? "exit code " + std::to_string(run->exit_code) + " on the worker"
                                             : "the worker's guest did not exit",
                                 res_->at_stage};
    finish_output(before, *run);
  }
  phase("run to the end (new VMM)", timing_.resumed_ns, monotonic_ns(), false);
  trace_phase(monotonic_ns(), traces::MigrationPhase::kDone, static_cast<std::uint64_t>(res_->downtime));
  res_->total = static_cast<double>(monotonic_ns() - t0_ns_);
  if (capture_) check_no_copy();
  return ok_result();
}

void KvmBackend::check_no_copy() {
  const auto t0 = std::chrono::steady_clock::now();
  auto unknown = [&](const std::string& why) {
    res_->checks.push_back(CheckLine{"no-copy", checker::Verdict::kUnknown, why, seconds_since(t0), std::nullopt});
  };
  (void)capture_->stop();
  auto d = capture_->drain(capture_text_);
  const std::uint64_t overruns = capture_->overruns();
  (void)capture_->remove();
  if (!d) return unknown("the capture failed: " + d.error().message);
  // The raw capture is the user's evidence: written whatever the verdict.
  if (auto w = model::write_text(cfg_.capture_path, capture_text_, cfg_.overwrite_capture); !w)
    return unknown(w.error().message);
  traces::FtraceImportOptions io;
  io.allow_empty = true;
  io.input_name = cfg_.capture_path;
  auto imp = traces::parse_ftrace(capture_text_, io);
  if (!imp) return unknown("the capture does not import: " + imp.error().message);
  auto src_imp = source_cut_ < capture_text_.size()
                     ? traces::parse_ftrace(std::string_view(capture_text_).substr(0, source_cut_), io)
                     : imp;
  if (!src_imp) return unknown("the capture does not import: " + src_imp.error().message);
  std::string lost;
  if (overruns != 0 || imp->stats.lost_events != 0 || imp->stats.malformed_lines != 0)
    lost = " (" + std::to_string(overruns + imp->stats.lost_events) + " events lost, " +
           std::to_string(imp->stats.malformed_lines) + " malformed lines)";
  model::MappingSet sets[2];
  std::uint64_t gfns[2] = {0, 0};
  const std::uint32_t vms[2] = {res_->source_pid, res_->worker_pid};
  for (int k = 0; k < 2; ++k) {
    const traces::FtraceImport& from = k == 0 ? *src_imp : *imp;
    if (from.stats.vms.count(vms[k]) == 0) continue;
    auto m = traces::mappings(from.trace, vms[k]);
    if (!m) return unknown("VM " + std::to_string(vms[k]) + ": " + m.error().message);
    auto set = traces::to_mapping_set(*m);
    if (!set) return unknown("VM " + std::to_string(vms[k]) + ": " + set.error().message);
    for (const model::MappingRun& r : set->runs())
      if (r.kind == model::RunKind::kMapped) gfns[k] += r.size / 4096;
    sets[k] = std::move(*set);
  }
  res_->capture_mapping_events = imp->stats.per_event.count("kvm_mmu_set_spte") != 0
                                     ? imp->stats.per_event.at("kvm_mmu_set_spte")
                                     : 0;
  if (gfns[0] == 0 || gfns[1] == 0)
    return unknown("inconclusive: the capture has no mapping events for the " +
                   std::string(gfns[0] == 0 ? "source" : "destination") + " VM (pid " +
                   std::to_string(vms[gfns[0] == 0 ? 0 : 1]) + ")" + lost);
  auto r = checker::check_no_copy(sets[0], sets[1]);
  if (!r) return unknown(r.error().message);
  CheckLine l{"no-copy", r->verdict, r->summary + lost, seconds_since(t0), std::nullopt};
  if (r->verdict == checker::Verdict::kProven && (!lost.empty() || r->shared_frames == 0)) {
    l.verdict = checker::Verdict::kUnknown;  // a proof over lost events, or over nothing, is no proof
    l.summary = "inconclusive: " + r->summary + lost;
  }
  if (r->counterexample) {
    checker::Counterexample c;
    c.gpa = model::Gpa{r->counterexample->gfn << 12};
    c.confirmed_concretely = r->counterexample->confirmed_concretely;
    c.explanation = l.summary;
    l.counterexample = c;
  }
  res_->checks.push_back(std::move(l));
}

Result<void> KvmBackend::write_trace() {
  if (cfg_.trace_path.empty()) return ok_result();
  if (!worker_events_error_.empty()) return make_error("--trace: the worker's events: " + worker_events_error_);
  std::map<std::string, std::string> params = cfg_.trace_params;
  traces::TraceHeader h = kvm_trace_header(image_, cfg_.guest_name, params);
  h.meta["vm0.pid"] = std::to_string(res_->source_pid);
  if (res_->worker_pid != 0) h.meta["vm1.pid"] = std::to_string(res_->worker_pid);
  std::vector<traces::TraceEvent> ev;
  append_vmm_events(ev, source_events_, 0, t0_ns_);
  append_vmm_events(ev, worker_events_, 1, t0_ns_);
  for (traces::TraceEvent p : phases_) {
    p.time = p.time > t0_ns_ ? p.time - t0_ns_ : 0;
    ev.push_back(p);
  }
  if (capture_ && !capture_text_.empty()) {
    std::map<std::uint32_t, std::uint32_t> vms{{res_->source_pid, 0}};
    if (res_->worker_pid != 0) vms[res_->worker_pid] = 1;
    if (auto r = append_capture_mappings(ev, capture_text_, vms, t0_ns_, h.meta); !r)
      return make_error("--trace: " + r.error().message);
  }
  if (auto r = write_kvm_trace(cfg_.trace_path, h, std::move(ev), cfg_.overwrite_trace); !r)
    return make_error("--trace: " + r.error().message);
  return ok_result();
}

}  // namespace

Result<MigrationResult> migrate_kvm(const guests::GuestImage& image, const KvmMigrationConfig& cfg,
                                    const MigrationOptions& opt) {
  KvmBackend b(image, cfg, opt);
  std::optional<std::uint64_t> expected;
  if (auto ex = guests::expected_result(cfg.guest_name, image.params)) expected = *ex;
  auto r = drive_migration(b, opt, expected);
  if (!r) return r;
  BATON_TRY_VOID(b.write_trace());
  return r;
}

std::string tsc_offset_not_applied(const model::VcpuState& paused, const model::VcpuState& held,
                                   const std::string& flavour) {
  const std::uint64_t requested = paused.guest_tsc() - held.host_tsc_at_capture;
  if (held.tsc_offset == requested) return "";
  // A larger applied offset puts the guest TSC ahead of its paused value (PVM: the downtime).
  const bool ahead = static_cast<std::int64_t>(held.tsc_offset - requested) > 0;
  char buf[256];
  std::snprintf(buf, sizeof buf,
                "the guest TSC %s: this host's KVM (%s) does not apply "
                "KVM_VCPU_TSC_OFFSET (the worker set 0x%llx, KVM applies 0x%llx); ",
                ahead ? "ran on through the downtime" : "went back", flavour.c_str(),
                static_cast<unsigned long long>(requested), static_cast<unsigned long long>(held.tsc_offset));
  return buf;
}

void explain_tsc_refutation(checker::PropertyResult& r, const model::VcpuState& paused, const model::VcpuState& held,
                            const std::string& flavour) {
  if (r.verdict == checker::Verdict::kRefuted && r.counterexample && r.counterexample->field == "vcpu0.tsc_offset")
    r.summary = tsc_offset_not_applied(paused, held, flavour) + r.summary;
}

}  // namespace baton::sim
