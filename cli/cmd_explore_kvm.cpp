// baton explore on KVM: loading a guest on /dev/kvm, the session's state helpers, run and step
// (Ctrl-C and a time limit interrupt the vCPU through immediate_exit and a signal), breakpoints,
// and time travel by snapshot (vCPU state + a copy of guest memory) and restore (a fresh VM).
#include <signal.h>
#include <sys/time.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <iostream>
#include <nlohmann/json.hpp>

#include "baton/guests/registry.hpp"
#include "baton/hw/kvm.hpp"
#include "cmd_explore_kvm.hpp"
#include "parse.hpp"

namespace baton::cli::explore {

using nlohmann::json;

namespace {

constexpr std::uint64_t kPage = 4096;
// The most instructions one `run N` or `step N` single-steps (each is a KVM_RUN round trip).
constexpr std::uint64_t kMaxSteps = 1'000'000;

// The vCPU inside KVM_RUN now (for the signal handlers), or null.
std::atomic<hw::KvmVcpu*> g_running{nullptr};
static_assert(std::atomic<hw::KvmVcpu*>::is_always_lock_free, "the signal handlers read it");
// Set by SIGALRM when a run exceeds the session's time limit.
volatile std::sig_atomic_t g_timed_out = 0;

// SIGALRM during a run: the time limit passed.
extern "C" void on_alarm(int) {
  g_timed_out = 1;
  kick_running_vcpu();
}

// Marks the vCPU as running and arms the time limit for one command; undoes both at the end.
class RunGuard {
 public:
  RunGuard(hw::KvmVcpu& v, double seconds) : v_(v) {
    g_timed_out = 0;
    struct sigaction sa {};
    sa.sa_handler = on_alarm;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN returns EINTR
    sigaction(SIGALRM, &sa, &old_);
    itimerval t{};
    t.it_value.tv_sec = static_cast<long>(seconds);
    t.it_value.tv_usec = static_cast<long>((seconds - static_cast<double>(t.it_value.tv_sec)) * 1e6);
    if (t.it_value.tv_sec == 0 && t.it_value.tv_usec == 0) t.it_value.tv_usec = 1;
    setitimer(ITIMER_REAL, &t, nullptr);
    g_running.store(&v_);
  }
  ~RunGuard() {
    itimerval t{};
    setitimer(ITIMER_REAL, &t, nullptr);
    g_running.store(nullptr);
    sigaction(SIGALRM, &old_, nullptr);
    v_.set_immediate_exit(false);
  }
  RunGuard(const RunGuard&) = delete;
  RunGuard& operator=(const RunGuard&) = delete;

 private:
  hw::KvmVcpu& v_;
  struct sigaction old_ {};
};

// Appends run `b` to run `a` (b continues a: a restored VM's recorder counts inputs on).
guests::GuestRun combined(const guests::GuestRun& a, const guests::GuestRun& b) {
  guests::GuestRun r = a;
  r.console += b.console;
  r.results.insert(r.results.end(), b.results.begin(), b.results.end());
  r.stages.insert(r.stages.end(), b.stages.begin(), b.stages.end());
  r.stray.insert(r.stray.end(), b.stray.begin(), b.stray.end());
  r.inputs = b.inputs;
  if (b.exited) {
    r.exited = true;
    r.exit_code = b.exit_code;
  }
  for (const guests::ResultRecord& x : b.results)
    if (x.tag == 0) r.checksum = x.value;
  if (b.faulted && !r.faulted) {
    r.faulted = true;
    r.fault_vector = b.fault_vector;
  }
  return r;
}

// What the guest said since the load.
guests::GuestRun run_now(const KvmSide& k) { return combined(k.prefix, k.m->ports()); }

// The last sync point the guest announced.
std::uint32_t stage_of(const KvmSide& k) { return k.m->recorder().state().stage; }

// Whether a page is all zero.
bool is_zero(const std::uint8_t* p) {
  for (std::size_t i = 0; i < kPage; i += 8) {
    std::uint64_t w = 0;
    std::memcpy(&w, p + i, 8);
    if (w != 0) return false;
  }
  return true;
}

// The runs of guest memory the memfd has data in ([from, to) byte ranges): tmpfs keeps pages
// never written as holes. All of it when the file system cannot say.
std::vector<std::pair<std::uint64_t, std::uint64_t>> data_ranges(int fd, std::uint64_t size) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> out;
  off_t at = 0;
  while (static_cast<std::uint64_t>(at) < size) {
    const off_t data = ::lseek(fd, at, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // no data after `at`
      return {{0, size}};
    }
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = static_cast<off_t>(size);
    out.emplace_back(static_cast<std::uint64_t>(data) & ~(kPage - 1), std::min<std::uint64_t>(static_cast<std::uint64_t>(hole), size));
    at = hole;
  }
  return out;
}

// A KVM stop in the session's terms (the simulator's stop reasons, for `expect stop`).
sim::RunEvent event_of(const hw::KvmRunResult& r, const KvmSide& k) {
  const std::uint32_t stage = stage_of(k);
  const std::string detail = r.detail;
  switch (r.stop) {
    case hw::KvmStop::kExited:
      return {sim::StopReason::kExited, "exit code " + std::to_string(k.m->ports().exit_code), stage};
    case hw::KvmStop::kSync: return {sim::StopReason::kSyncPoint, "sync point " + std::to_string(stage), stage};
    case hw::KvmStop::kPort: return {sim::StopReason::kPort, detail, stage};
    case hw::KvmStop::kStep: return {sim::StopReason::kInsnLimit, "single step", stage};
    case hw::KvmStop::kShutdown: return {sim::StopReason::kTripleFault, detail, stage};
    case hw::KvmStop::kHalted: return {sim::StopReason::kHlt, detail, stage};
    case hw::KvmStop::kFailEntry: return {sim::StopReason::kEntryFailure, detail, stage};
    default: break;
  }
  return {sim::StopReason::kError, std::string(hw::to_string(r.stop)) + (detail.empty() ? "" : ": " + detail), stage};
}

// Prints how a run stopped and records it for `expect` (the KVM form of the simulator's line:
// exits to user space instead of instructions).
void report_stop(Session& s, const sim::RunEvent& e, bool interrupted, std::uint64_t stepped) {
  KvmSide& k = side(s);
  s.last.stop = e;
  s.last_event = e;
  const guests::GuestRun out = run_now(k);
  const bool exited = e.reason == sim::StopReason::kExited;
  std::optional<std::uint64_t> expected;
  if (exited)
    if (auto ex = guests::expected_result(s.opts.guest, k.image.params)) expected = *ex;
  if (exited) {
    s.last.have_checksum = true;
    s.last.checksum = out.checksum;
    s.last.expected = expected;
  }
  auto v = s.vcpu_now();
  const std::string rip = v ? hex(v->rip) : "?";
  if (s.json) {
    json j{{"stop", interrupted ? "interrupted" : sim::to_string(e.reason)},
           {"detail", e.detail},
           {"stage", e.stage},
           {"exits", k.exits},
           {"single_steps", stepped},
           {"rip", rip}};
    if (exited) {
      j["checksum"] = hex(out.checksum);
      j["expected"] = expected ? json(hex(*expected)) : json(nullptr);
      j["checksum_match"] = expected && out.checksum == *expected;
    }
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::string what = interrupted ? "interrupted (Ctrl-C)" : std::string(sim::to_string(e.reason));
  if (!interrupted && e.reason != sim::StopReason::kInsnLimit && e.reason != sim::StopReason::kSyncPoint) what += " (" + e.detail + ")";
  std::string steps = stepped == 0 ? "" : std::to_string(stepped) + " instruction(s) single-stepped, ";
  std::printf("stopped: %s after %s%llu exits to user space, stage %u, rip %s\n", what.c_str(), steps.c_str(),
              static_cast<unsigned long long>(k.exits), e.stage, rip.c_str());
  if (exited)
    std::printf("checksum %s (expected %s: %s)\n", hex(out.checksum).c_str(), expected ? hex(*expected).c_str() : "none",
                expected && out.checksum == *expected ? "match" : "MISMATCH");
}

// What stops a run besides the guest's end: a sync point and a port, from the breakpoints
// unless the command names its own target.
struct Target {
  std::optional<std::uint32_t> sync;
  std::optional<std::uint16_t> port;
  std::uint64_t steps = 0;  // single-step this many instructions (0: run freely)
};

// Runs the session's VM towards `t`; `interrupted` tells Ctrl-C apart. Errors of KVM_RUN
// itself are returned; every stop of the guest is an event.
Result<sim::RunEvent> go(Session& s, const Target& t, bool& interrupted, std::uint64_t& stepped) {
  KvmSide& k = side(s);
  s.touched();
  interrupted = false;
  stepped = 0;
  if (t.steps != 0) {
    // Measured on PVM (2026-11-30): with KVM_GUESTDBG_SINGLESTEP the #DB of a ring-3 step is
    // delivered to the guest's IDT (the loader's trap handler reports it as a fault) instead of
    // ending KVM_RUN, so the guest is damaged rather than stepped.
    if (hw::host_flavour() == "pvm")
      return make_error("this host's KVM is PVM, which delivers the single-step #DB to the guest instead of exiting to the "
                        "VMM, so KVM cannot bound a run by instructions here; run to sync K, or break port P");
    if (auto r = k.m->set_single_step(true); !r)
      return make_error("this host's KVM refuses single-stepping, so KVM cannot bound a run by instructions (" +
                        r.error().message + "); run to sync K or break port P instead");
  }
  struct StepOff {  // single-stepping ends with the command, whatever happens
    hw::KvmMachine& m;
    ~StepOff() {
      if (m.single_stepping()) (void)m.set_single_step(false);
    }
  } step_off{*k.m};
  RunGuard guard(k.m->vcpu(), s.kvm_timeout_s);
  hw::KvmRunLimits l;
  l.stop_at_sync = t.sync.has_value();
  l.port = t.port;
  for (;;) {
    if (g_interrupted != 0) {
      interrupted = true;
      return sim::RunEvent{sim::StopReason::kInsnLimit, "interrupted", stage_of(k)};
    }
    auto r = k.m->run(l);
    if (!r) return r.error();
    k.exits += r->exits;
    k.at_sync = r->stop == hw::KvmStop::kSync;
    switch (r->stop) {
      case hw::KvmStop::kSync:
        if (stage_of(k) >= *t.sync) return event_of(*r, k);
        continue;
      case hw::KvmStop::kStep:
        if (++stepped >= t.steps) return event_of(*r, k);
        continue;
      case hw::KvmStop::kInterrupted:
        k.m->vcpu().set_immediate_exit(false);
        if (g_timed_out != 0)
          return sim::RunEvent{sim::StopReason::kHang, "no exit within " + std::to_string(s.kvm_timeout_s).substr(0, 6) + " s",
                               stage_of(k)};
        continue;  // Ctrl-C is seen at the top; another signal just resumes
      default: return event_of(*r, k);
    }
  }
}

// The breakpoints' target beyond the current stage (the KVM side honours sync and port).
Target from_breaks(const Session& s, std::uint32_t stage) {
  Target t;
  for (const Break& b : s.breaks) {
    if (b.kind == Break::kSync && b.value > stage && (!t.sync || b.value < *t.sync)) t.sync = static_cast<std::uint32_t>(b.value);
    if (b.kind == Break::kPort && !t.port) t.port = static_cast<std::uint16_t>(b.value);
  }
  return t;
}

// Why KVM cannot do what needs instruction counts.
const char* kNoInsnCount = "KVM does not count guest instructions; `run N` and `step N` single-step N of them";

}  // namespace

void kick_running_vcpu() {
  if (hw::KvmVcpu* v = g_running.load()) v->set_immediate_exit(true);
}

Result<void> kvm_load(Session& s, const SimOptions& o) {
  if (!parse_size(o.mem)) return make_error("--mem '" + o.mem + "' is not a size (e.g. 256M, 4G)");
  if (!parse_page_level(o.pages)) return make_error("--pages '" + o.pages + "' is not one of 4k, 2m, 1g");
  if (!o.profile.empty() || o.no_ad) return make_error("--profile and --no-ad apply to the simulator only");
  const std::string device = hw::kvm_device();
  if (auto why = hw::kvm_unavailable_reason(device)) return make_error(*why);
  auto image = make_guest_image(o);
  if (!image) return image.error();
  hw::KvmMachineOptions mo;
  mo.device = device;
  auto m = hw::KvmMachine::try_create(*image, mo);
  if (!m) return m.error();
  auto k = std::make_shared<KvmSide>();
  k->image = std::move(*image);
  k->device = device;
  k->m = std::move(*m);
  s.kvm = std::move(k);
  s.vm.reset();
  s.opts = o;
  s.steps.clear();
  s.pending.reset();
  s.pending_desc.clear();
  s.faults.clear();
  s.breaks.clear();
  s.snaps.clear();
  s.last = Findings{};
  s.last_event = sim::RunEvent{sim::StopReason::kInsnLimit, "loaded", 0};
  s.touched();
  return ok_result();
}

bool kvm_exited(const Session& s) { return side(s).m->ports().exited || side(s).prefix.exited; }

Result<model::VcpuState> kvm_vcpu_now(Session& s) { return side(s).m->capture(); }

std::vector<std::uint8_t> kvm_read_guest(const Session& s, std::uint64_t gpa, std::uint64_t len) {
  const hw::GuestMemory& mem = side(s).m->memory();
  if (gpa >= mem.size()) return {};
  const std::uint64_t n = std::min(len, mem.size() - gpa);
  return std::vector<std::uint8_t>(mem.data() + gpa, mem.data() + gpa + n);
}

sim::GuestOutput kvm_output_now(const Session& s) {
  const guests::GuestRun r = run_now(side(s));
  sim::GuestOutput o;
  o.console = r.console;
  o.results = r.results;
  o.stages = r.stages;
  if (r.exited) o.exit_code = r.exit_code;
  o.inputs = r.inputs;
  return o;
}

Result<model::HandoverSnapshot> kvm_snapshot(Session& s) {
  auto v = kvm_vcpu_now(s);
  if (!v) return v.error();
  const KvmSide& k = side(s);
  // The form of the KVM migration driver's snapshots: the vCPU and the memslot, no EPT.
  model::HandoverSnapshot h;
  h.vcpus.push_back(*v);
  h.memslots.push_back(model::Memslot{0, model::Gpa{0}, k.m->memory().size(), model::Hpa{0}, false});
  h.meta["ept"] = checker::kEptOwnedByKvm;
  h.meta["backend"] = "kvm";
  h.meta["guest"] = s.opts.guest;
  h.meta["host_flavour"] = hw::host_flavour();
  return h;
}

std::string kvm_banner(const Session& s) {
  return hw::host_flavour() + ", " + side(s).device + ", mem " + s.opts.mem;
}

Result<std::shared_ptr<KvmSnapData>> kvm_capture(Session& s) {
  KvmSide& k = side(s);
  auto v = k.m->capture();
  if (!v) return v.error();
  auto d = std::make_shared<KvmSnapData>();
  d->vcpu = *v;
  const hw::GuestMemory& mem = k.m->memory();
  for (const auto& [from, to] : data_ranges(mem.fd(), mem.size()))
    for (std::uint64_t a = from; a + kPage <= to; a += kPage)
      if (!is_zero(mem.data() + a)) {
        d->gfns.push_back(a / kPage);
        d->pages.insert(d->pages.end(), mem.data() + a, mem.data() + a + kPage);
      }
  d->ports = k.m->recorder().state();
  d->output = run_now(k);
  d->at_sync = k.at_sync;
  d->exits = k.exits;
  d->steps = k.steps;
  return d;
}

Result<std::unique_ptr<hw::KvmMachine>> kvm_build(const KvmSide& k, const KvmSnapData& d) {
  auto mem = hw::GuestMemory::try_create(k.image.mem_size, "baton-explore");
  if (!mem) return mem.error();
  for (std::size_t i = 0; i < d.gfns.size(); ++i)
    std::memcpy(mem->data() + d.gfns[i] * kPage, d.pages.data() + i * kPage, kPage);
  hw::KvmMachineOptions mo;
  mo.device = k.device;
  auto m = hw::KvmMachine::try_create_on(std::move(*mem), k.image, mo);
  if (!m) return m.error();
  BATON_TRY_VOID((*m)->restore(d.vcpu));
  (*m)->recorder().resume(d.ports);
  return m;
}

// run [N | to sync K | to exit] on KVM
Result<void> kvm_run(Session& s, const Args& a) {
  if (s.exited()) return make_error("the guest has exited; `restore` a snapshot or `load` a guest to run again");
  KvmSide& k = side(s);
  const std::vector<std::string>& w = a.words;
  const std::uint32_t stage = stage_of(k);
  Target t = from_breaks(s, stage);
  if (w.size() >= 2 && w[1] == "to") {
    if (w.size() == 3 && w[2] == "exit") {
      t = Target{};  // an explicit target: breakpoints do not apply
    } else if (w.size() == 4 && w[2] == "sync") {
      auto v = number(w[3], "sync point");
      if (!v) return v.error();
      if (*v == 0 || *v > 0xFFFFFFFFu) return make_error("sync point must be 1..2^32-1");
      if (*v <= stage) return make_error("sync point " + w[3] + " has passed (the guest is at stage " + std::to_string(stage) + ")");
      if (!t.sync || *v < *t.sync) t.sync = static_cast<std::uint32_t>(*v);
    } else if (w.size() == 4 && w[2] == "insn") {
      return make_error(std::string("run to insn: ") + kNoInsnCount);
    } else {
      return make_error("usage: run [N | to sync K | to exit]");
    }
  } else if (w.size() == 2 || (w.size() == 3 && (w[2] == "insns" || w[2] == "insn"))) {
    auto n = number(w[1], "instruction count");
    if (!n) return n.error();
    if (*n == 0) return make_error("run 0 does nothing; give a positive count");
    if (*n > kMaxSteps) return make_error("on KVM `run N` single-steps, one KVM_RUN each: at most " + std::to_string(kMaxSteps));
    t.steps = *n;
  } else if (w.size() != 1) {
    return make_error("usage: run [N | to sync K | to exit]");
  }
  bool interrupted = false;
  std::uint64_t stepped = 0;
  auto e = go(s, t, interrupted, stepped);
  if (!e) return e.error();
  k.steps += stepped;
  report_stop(s, *e, interrupted, stepped);
  return ok_result();
}

// step [N] on KVM: single-steps N instructions (KVM_SET_GUEST_DEBUG), then shows the next one.
Result<void> kvm_step(Session& s, const Args& a) {
  if (s.exited()) return make_error("the guest has exited; `restore` a snapshot or `load` a guest to run again");
  if (a.words.size() > 2) return make_error("usage: step [N]");
  Target t = from_breaks(s, stage_of(side(s)));
  t.steps = 1;
  if (a.words.size() == 2) {
    auto v = number(a.words[1], "step count");
    if (!v) return v.error();
    if (*v == 0) return make_error("step 0 does nothing; give a positive count");
    if (*v > kMaxSteps) return make_error("step: at most " + std::to_string(kMaxSteps) + " instructions (one KVM_RUN each)");
    t.steps = *v;
  }
  bool interrupted = false;
  std::uint64_t stepped = 0;
  auto e = go(s, t, interrupted, stepped);
  if (!e) return e.error();
  side(s).steps += stepped;
  report_stop(s, *e, interrupted, stepped);
  if (s.json || s.exited()) return ok_result();
  return cmd_disas(s, Args{{"disas", "rip", "1"}, false});
}

// break on KVM: sync and port as on the simulator; instruction breakpoints need counts.
Result<void> kvm_break(Session& s, const Args& a) {
  if (a.words.size() >= 2 && a.words[1] == "insn") return make_error(std::string("break insn: ") + kNoInsnCount);
  return cmd_break(s, a);
}

// snapshot NAME on KVM: the vCPU state and a copy of guest memory.
Result<void> kvm_snapshot_cmd(Session& s, const Args& a) {
  if (a.words.size() != 2) return make_error("usage: snapshot NAME");
  auto n = snap_name(a.words[1]);
  if (!n) return n.error();
  auto d = kvm_capture(s);
  if (!d) return d.error();
  s.touched();  // the capture completed a pending I/O exit
  auto cur = s.current();
  if (!cur) return cur.error();
  Snap sn;
  sn.replayable = true;
  sn.state = **cur;
  sn.stage = stage_of(side(s));
  sn.origin = "snapshot";
  sn.kvm = *d;
  const bool replaced = s.snaps.count(*n) != 0;
  const std::size_t pages = (*d)->gfns.size();
  s.snaps[*n] = std::move(sn);
  if (s.json) {
    std::cout << json{{"name", *n}, {"stage", s.snaps[*n].stage}, {"exits", (*d)->exits}, {"pages_copied", pages},
                      {"origin", "snapshot"}}.dump(2)
              << "\n";
  } else {
    std::printf("snapshot %s%s: stage %u, %llu exits, vCPU state and %zu non-zero page(s) of guest memory copied (%s)\n",
                n->c_str(), replaced ? " (replaced)" : "", s.snaps[*n].stage, static_cast<unsigned long long>((*d)->exits), pages,
                format_size(pages * kPage).c_str());
  }
  return ok_result();
}

// restore NAME on KVM: a fresh VM with the snapshot's memory and vCPU state.
Result<void> kvm_restore(Session& s, const Args& a) {
  if (a.words.size() != 2) return make_error("usage: restore NAME");
  auto n = snap_name(a.words[1]);
  if (!n) return n.error();
  auto it = s.snaps.find(*n);
  if (it == s.snaps.end()) return make_error("no snapshot '" + *n + "' (see `snapshots`)");
  const Snap& sn = it->second;
  if (!sn.replayable || !sn.kvm)
    return make_error("@" + *n + " comes from a migration: it holds vCPU states only; it can be viewed, checked and saved, not restored");
  KvmSide& k = side(s);
  auto m = kvm_build(k, *sn.kvm);
  if (!m) return m.error();
  k.m = std::move(*m);
  k.prefix = sn.kvm->output;
  k.prefix.inputs = 0;
  k.exits = sn.kvm->exits;
  k.steps = sn.kvm->steps;
  k.at_sync = sn.kvm->at_sync;
  s.last_event = sim::RunEvent{sim::StopReason::kInsnLimit, "restored", sn.stage};
  s.touched();
  if (s.json)
    std::cout << json{{"name", *n}, {"stage", sn.stage}, {"exits", sn.kvm->exits}, {"pages", sn.kvm->gfns.size()}}.dump(2) << "\n";
  else
    std::printf("restored %s: stage %u, %llu exits, on a new KVM VM (%zu page(s) written back)\n", n->c_str(), sn.stage,
                static_cast<unsigned long long>(sn.kvm->exits), sn.kvm->gfns.size());
  return ok_result();
}

}  // namespace baton::cli::explore
