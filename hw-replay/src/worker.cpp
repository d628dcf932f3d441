// The worker side of a local migration (include/baton/hw/worker.hpp).
#include "baton/hw/worker.hpp"

#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <time.h>
#include <unistd.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <x86intrin.h>
#include <xxhash.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>

#include "baton/guests/abi.hpp"
#include "baton/hw/handover.hpp"
#include "baton/hw/machine.hpp"

namespace baton::hw {

namespace {
void put64(std::vector<std::uint8_t>& o, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) o.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
std::uint64_t get64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}
std::uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// Puts the calling thread on SCHED_FIFO priority 1 (`on`) or back on SCHED_OTHER; returns
// whether that worked.
bool set_fifo(bool on) {
  sched_param sp{};
  sp.sched_priority = on ? 1 : 0;
  return ::sched_setscheduler(0, on ? SCHED_FIFO : SCHED_OTHER, &sp) == 0;
}

// Receives one message of the expected type; an error message from the peer becomes ours.
Result<Message> expect(int sock, MsgType type, int timeout_ms) {
  auto m = recv_message(sock, timeout_ms);
  if (!m) return m.error();
  if (m->type == MsgType::kError)
    return make_error("the source reported: " + std::string(m->payload.begin(), m->payload.end()));
  if (m->type != type) return make_error("expected a " + to_string(type) + " message, got " + to_string(m->type));
  return m;
}
}  // namespace

Result<std::shared_ptr<StateMailbox>> StateMailbox::try_create() {
  const int fd = ::memfd_create("baton-state-mailbox", MFD_CLOEXEC);
  if (fd < 0) return make_error(std::string("memfd_create(baton-state-mailbox) failed: ") + std::strerror(errno));
  Fd owned(fd);
  if (::ftruncate(fd, static_cast<off_t>(kSize)) != 0)
    return make_error(std::string("ftruncate(state mailbox) failed: ") + std::strerror(errno));
  void* p = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) return make_error(std::string("mmap(state mailbox) failed: ") + std::strerror(errno));
  return std::shared_ptr<StateMailbox>(new StateMailbox(std::move(owned), static_cast<std::uint8_t*>(p)));
}

Result<std::shared_ptr<StateMailbox>> StateMailbox::try_adopt(int fd) {
  Fd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return make_error(std::string("fstat(state mailbox) failed: ") + std::strerror(errno));
  if (static_cast<std::uint64_t>(st.st_size) != kSize)
    return make_error("the state mailbox holds " + std::to_string(st.st_size) + " bytes, not " + std::to_string(kSize));
  void* p = ::mmap(nullptr, kSize, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
  if (p == MAP_FAILED) return make_error(std::string("mmap(state mailbox) failed: ") + std::strerror(errno));
  return std::shared_ptr<StateMailbox>(new StateMailbox(std::move(owned), static_cast<std::uint8_t*>(p)));
}

StateMailbox::~StateMailbox() {
  if (p_) ::munmap(p_, kSize);
}

Result<void> StateMailbox::post(std::span<const std::uint8_t> payload, std::uint64_t socket_bytes_before) {
  if (payload.size() > kSize - kPayloadAt)
    return make_error("state mailbox: a payload of " + std::to_string(payload.size()) + " bytes does not fit");
  std::atomic_ref<std::uint64_t> published(*reinterpret_cast<std::uint64_t*>(p_));
  if (published.load(std::memory_order_relaxed) != 0) return make_error("state mailbox: already posted");
  std::memcpy(p_ + kPayloadAt, payload.data(), payload.size());
  const std::uint64_t head[3] = {payload.size(), socket_bytes_before, XXH64(payload.data(), payload.size(), 0)};
  std::memcpy(p_ + 8, head, sizeof head);
  published.store(1, std::memory_order_release);
  return ok_result();
}

std::uint64_t StateMailbox::socket_bytes_before() const {
  std::uint64_t v;
  std::memcpy(&v, p_ + 16, sizeof v);
  return v;
}

bool StateMailbox::published() const {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(p_)).load(std::memory_order_acquire) != 0;
}

Result<std::span<const std::uint8_t>> StateMailbox::take() const {
  if (!published()) return make_error("state mailbox: nothing posted");
  std::uint64_t head[3];
  std::memcpy(head, p_ + 8, sizeof head);
  if (head[0] > kSize - kPayloadAt) return make_error("state mailbox: payload length " + std::to_string(head[0]) + " is implausible");
  const std::span<const std::uint8_t> payload(p_ + kPayloadAt, head[0]);
  if (XXH64(payload.data(), payload.size(), 0) != head[2]) return make_error("state mailbox: checksum mismatch");
  return payload;
}

std::vector<std::uint8_t> encode_resume(const ResumeInfo& info, const model::VcpuState& s, const model::VcpuState* base) {
  std::vector<std::uint8_t> o;
  encode_resume_to(info, s, o, base);
  return o;
}

void encode_resume_to(const ResumeInfo& info, const model::VcpuState& s, std::vector<std::uint8_t>& o,
                      const model::VcpuState* base) {
  o.clear();
  put64(o, info.input_seed);
  put64(o, info.inputs_consumed);
  put64(o, info.ports.tag | std::uint64_t{info.ports.lo} << 32);
  put64(o, info.ports.stage);
  if (base == nullptr || !encode_vcpu_delta_to(*base, s, o)) encode_vcpu_state_to(s, o);
}

namespace {
// The ResumeInfo at the head of a vcpu-state payload.
Result<ResumeInfo> decode_resume_info(std::span<const std::uint8_t> p) {
  if (p.size() < 32) return make_error("vcpu-state message: " + std::to_string(p.size()) + " bytes, too short");
  ResumeInfo info{get64(p.data()), get64(p.data() + 8), {}};
  const std::uint64_t latch = get64(p.data() + 16), stage = get64(p.data() + 24);
  if (stage > 0xffffffffu) return make_error("vcpu-state message: stage " + std::to_string(stage) + " is not 32-bit");
  info.ports = guests::PortRecorder::State{static_cast<std::uint32_t>(latch), static_cast<std::uint32_t>(latch >> 32),
                                           static_cast<std::uint32_t>(stage), info.inputs_consumed};
  return info;
}
}  // namespace

Result<std::pair<ResumeInfo, model::VcpuState>> decode_resume(std::span<const std::uint8_t> p) {
  auto info = decode_resume_info(p);
  if (!info) return info.error();
  if (is_vcpu_delta(p.subspan(32))) return make_error("vcpu-state message: a delta, which needs the baseline (decode_resume_into)");
  auto s = decode_vcpu_state(p.subspan(32));
  if (!s) return s.error();
  return std::make_pair(*info, std::move(*s));
}

Result<ResumeDecoded> decode_resume_into(std::span<const std::uint8_t> p, model::VcpuState& s) {
  auto info = decode_resume_info(p);
  if (!info) return info.error();
  ResumeDecoded d{*info, is_vcpu_delta(p.subspan(32))};
  if (d.delta) {
    BATON_TRY_VOID(apply_vcpu_delta(p.subspan(32), s));
    return d;
  }
  auto whole = decode_vcpu_state(p.subspan(32));
  if (!whole) return whole.error();
  s = std::move(*whole);
  return d;
}

std::vector<std::uint8_t> encode_guest_run(const guests::GuestRun& r) {
  std::vector<std::uint8_t> o;
  put64(o, r.exited ? 1 : 0);
  put64(o, r.exit_code);
  put64(o, r.checksum);
  put64(o, r.inputs);
  put64(o, r.results.size());
  for (const guests::ResultRecord& x : r.results) {
    put64(o, x.tag);
    put64(o, x.value);
  }
  put64(o, r.stages.size());
  for (std::uint32_t st : r.stages) put64(o, st);
  put64(o, r.console.size());
  o.insert(o.end(), r.console.begin(), r.console.end());
  put64(o, r.stray.size());
  for (const std::string& x : r.stray) {
    put64(o, x.size());
    o.insert(o.end(), x.begin(), x.end());
  }
  return o;
}

Result<guests::GuestRun> decode_guest_run(std::span<const std::uint8_t> p) {
  std::size_t at = 0;
  bool bad = false;
  auto u = [&]() -> std::uint64_t {
    if (bad || p.size() - at < 8) {
      bad = true;
      return 0;
    }
    const std::uint64_t v = get64(p.data() + at);
    at += 8;
    return v;
  };
  auto text = [&](std::uint64_t n) -> std::string {
    if (bad || n > p.size() - at) {
      bad = true;
      return {};
    }
    std::string s(p.begin() + static_cast<long>(at), p.begin() + static_cast<long>(at + n));
    at += n;
    return s;
  };
  guests::GuestRun r;
  r.exited = u() != 0;
  r.exit_code = static_cast<std::uint32_t>(u());
  r.checksum = u();
  r.inputs = u();
  const std::uint64_t nres = u();
  if (nres > p.size() / 16) return make_error("result message: " + std::to_string(nres) + " results exceed the payload");
  for (std::uint64_t i = 0; i < nres && !bad; ++i) {
    const auto tag = static_cast<std::uint32_t>(u());
    r.results.push_back(guests::ResultRecord{tag, u()});
  }
  const std::uint64_t nst = u();
  if (nst > p.size() / 8) return make_error("result message: " + std::to_string(nst) + " stages exceed the payload");
  for (std::uint64_t i = 0; i < nst && !bad; ++i) r.stages.push_back(static_cast<std::uint32_t>(u()));
  r.console = text(u());
  const std::uint64_t nstray = u();
  if (nstray > p.size() / 8) return make_error("result message: " + std::to_string(nstray) + " stray accesses exceed the payload");
  for (std::uint64_t i = 0; i < nstray && !bad; ++i) r.stray.push_back(text(u()));
  if (bad) return make_error("result message: truncated after " + std::to_string(at) + " of " + std::to_string(p.size()) + " bytes");
  if (at != p.size()) return make_error("result message: " + std::to_string(p.size() - at) + " bytes follow the last field");
  return r;
}

std::vector<std::uint8_t> encode_vmm_events(std::span<const VmmEvent> events) {
  std::vector<std::uint8_t> o;
  o.reserve(8 + events.size() * 32);
  put64(o, events.size());
  for (const VmmEvent& e : events) {
    put64(o, e.ns);
    put64(o, std::uint64_t{e.exit_reason} | std::uint64_t{e.io} << 32 | std::uint64_t{e.first} << 33 |
                 std::uint64_t{e.in} << 34 | std::uint64_t{e.size} << 40 | std::uint64_t{static_cast<std::uint8_t>(e.kind)} << 48);
    put64(o, std::uint64_t{e.port} | std::uint64_t{e.value} << 32);
    put64(o, e.meaning);
  }
  return o;
}

Result<std::vector<VmmEvent>> decode_vmm_events(std::span<const std::uint8_t> p) {
  if (p.size() < 8) return make_error("events message: " + std::to_string(p.size()) + " bytes, too short");
  const std::uint64_t n = get64(p.data());
  if (n > (p.size() - 8) / 32 || p.size() != 8 + n * 32)
    return make_error("events message: " + std::to_string(n) + " events do not fill " + std::to_string(p.size()) + " bytes");
  std::vector<VmmEvent> out;
  out.reserve(n);
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint8_t* q = p.data() + 8 + i * 32;
    const std::uint64_t w = get64(q + 8), x = get64(q + 16), m = get64(q + 24);
    const auto kind = static_cast<std::uint8_t>(w >> 48);
    if (kind > static_cast<std::uint8_t>(guests::PortEventKind::kFault) || m > 0xffffffffu)
      return make_error("events message: event " + std::to_string(i) + " is malformed");
    VmmEvent e;
    e.ns = get64(q);
    e.exit_reason = static_cast<std::uint32_t>(w);
    e.io = (w >> 32 & 1) != 0;
    e.first = (w >> 33 & 1) != 0;
    e.in = (w >> 34 & 1) != 0;
    e.size = static_cast<std::uint8_t>(w >> 40);
    e.kind = static_cast<guests::PortEventKind>(kind);
    e.port = static_cast<std::uint16_t>(x);
    e.value = static_cast<std::uint32_t>(x >> 32);
    e.meaning = static_cast<std::uint32_t>(m);
    out.push_back(e);
  }
  return out;
}

namespace {
// WorkerOptions::keep_tsc_offset: restores `s` but writes the baseline's TSC offset, as a KVM
// that ignores KVM_VCPU_TSC_OFFSET would leave it; reports the write as restore_changes would.
Result<StateWrite> restore_keeping_tsc_offset(KvmMachine& m, const model::VcpuState& baseline, const model::VcpuState& s) {
  model::VcpuState written = s;
  written.tsc_offset = baseline.tsc_offset;
  return m.restore_changes(baseline, written);
}
}  // namespace

Result<WorkerReport> serve_worker(int sock, const WorkerOptions& opt) {
  // Test fault injection: a real SIGKILL at the named point.
  auto maybe_die = [&](const char* point) {
    if (opt.die_at == point) ::kill(::getpid(), SIGKILL);
  };
  // Reports a failure to the source (best effort) and returns it.
  auto failed = [&](const Error& e) -> Result<WorkerReport> {
    (void)send_message(sock, MsgType::kError, e.message);
    return e;
  };
  if (auto why = kvm_unavailable_reason(opt.device)) return failed(make_error(*why));
  const std::uint32_t pid = static_cast<std::uint32_t>(::getpid());
  const std::uint8_t hello[4] = {static_cast<std::uint8_t>(pid), static_cast<std::uint8_t>(pid >> 8),
                                 static_cast<std::uint8_t>(pid >> 16), static_cast<std::uint8_t>(pid >> 24)};
  BATON_TRY_VOID(send_message(sock, MsgType::kHello, hello));
  maybe_die("hello");

  // Before the pause: adopt the memfd and build the VM around the same pages.
  auto mm = expect(sock, MsgType::kMemory, opt.timeout_ms);
  if (!mm) return failed(mm.error());
  auto ann = decode_memory_announce(mm->payload);
  if (!ann) return failed(ann.error());
  if (ann->gpa != 0 || ann->slot != 0) return failed(make_error("only one memslot at gpa 0 is supported"));
  WorkerReport rep;
  rep.shared_memory = mm->fd.valid();
  // Local: the source's own pages. Precopy: private memory that the pages messages fill.
  auto mem = rep.shared_memory ? GuestMemory::try_adopt(mm->fd.release(), ann->size)
                               : GuestMemory::try_create(ann->size, "baton-worker-private");
  if (!mem) return failed(mem.error());
  guests::GuestImage shell;  // no image to load: the memory already holds the running guest
  shell.mem_size = ann->size;
  KvmMachineOptions mo;
  mo.device = opt.device;
  mo.log_events = true;  // sent after the result, for the source's trace
  auto machine = KvmMachine::try_create_on(std::move(*mem), shell, mo);
  if (!machine) return failed(machine.error());
  BATON_TRY_VOID(send_message(sock, MsgType::kAck, std::string("vm ready")));
  maybe_die("vm");

  // Still before the pause: pre-load the source's baseline state and map the mailbox, so that
  // at the pause only what changed since is written.
  auto bm = expect(sock, MsgType::kBaseline, opt.timeout_ms);
  if (!bm) return failed(bm.error());
  if (!bm->fd.valid()) return failed(make_error("the baseline message came without the state mailbox"));
  auto mailbox = StateMailbox::try_adopt(bm->fd.release());
  if (!mailbox) return failed(mailbox.error());
  auto baseline = decode_vcpu_state(bm->payload);
  if (!baseline) return failed(make_error("baseline message: " + baseline.error().message));
  auto wm = expect(sock, MsgType::kWakeup, opt.timeout_ms);
  if (!wm) return failed(wm.error());
  if (!wm->fd.valid()) return failed(make_error("the wakeup message came without its eventfd"));
  const Fd wakeup = std::move(wm->fd);
  if (auto r = (*machine)->restore(*baseline); !r) return failed(r.error());
  // The state to restore, as the baseline now: a delta from the source applies to it in place,
  // without allocating inside the downtime.
  model::VcpuState state = *baseline;
  BATON_TRY_VOID(send_message(sock, MsgType::kAck, std::string("baseline loaded")));
  // From the wake-up to the first KVM_RUN the worker must not wait for a CPU: at real-time
  // priority the wake-up preempts whatever runs there (without it, 3 ms waits on a loaded
  // machine). Where that is not permitted, or opt.realtime is off, it stays as it is.
  const bool realtime = opt.realtime && rep.shared_memory && set_fifo(true);  // local only: precopy copies for seconds

  // Until the pause: asleep in poll() on the socket (precopy pages, an error, the source gone)
  // and the eventfd, or with opt.spin_before_ms spinning on the mailbox already. The source
  // writes the eventfd as the pause begins, so a wake-up overlaps its capture; from then on
  // spin on the mailbox for opt.spin_ms (no second wake-up inside the downtime), looking at the
  // socket every ~20 us. With spin_ms 0 sleep on: the source writes the eventfd again once the
  // state is posted.
  std::uint64_t spin_until = 0, next_look = 0;
  std::uint64_t deadline = monotonic_ns() + static_cast<std::uint64_t>(opt.timeout_ms) * 1'000'000ull;
  if (opt.spin_before_ms > 0) spin_until = monotonic_ns() + static_cast<std::uint64_t>(opt.spin_before_ms) * 1'000'000ull;
  for (;;) {
    bool pages_due = false;  // the state is posted, but pages sent before it are still on the socket
    if ((*mailbox)->published()) {
      const std::uint64_t before = (*mailbox)->socket_bytes_before();
      if (before == rep.bytes_received) break;  // every page sent before the state is in
      if (before < rep.bytes_received)
        return failed(make_error("the state follows " + std::to_string(before) + " bytes of pages, but " +
                                 std::to_string(rep.bytes_received) + " arrived"));
      pages_due = true;
    }
    if (!pages_due) {
      const std::uint64_t now = monotonic_ns();
      if (now < spin_until && now < next_look) {
        _mm_pause();
        continue;
      }
      if (now > deadline)
        return failed(make_error("no vCPU state from the source within " + std::to_string(opt.timeout_ms) + " ms"));
      next_look = now + 20'000;
      pollfd p[2] = {{sock, POLLIN, 0}, {wakeup.get(), POLLIN, 0}};
      if (::poll(p, 2, now < spin_until ? 0 : 100) <= 0) continue;
      if (p[1].revents & POLLIN) {
        std::uint64_t n = 0;
        if (::read(wakeup.get(), &n, sizeof n) == static_cast<ssize_t>(sizeof n))
          spin_until = std::max<std::uint64_t>(spin_until, monotonic_ns() + static_cast<std::uint64_t>(opt.spin_ms) * 1'000'000ull);
      }
      if (p[0].revents == 0) continue;
    }
    auto pm = recv_message(sock, opt.timeout_ms);
    if (!pm) return failed(pm.error());
    if (pm->type == MsgType::kError)
      return failed(make_error("the source reported: " + std::string(pm->payload.begin(), pm->payload.end())));
    if (pm->type != MsgType::kPages) return failed(make_error("expected pages or the vCPU state, got a " + to_string(pm->type) + " message"));
    if (rep.shared_memory) return failed(make_error("pages message in a local migration (memory is shared)"));
    auto n = apply_pages(pm->payload, (*machine)->memory().data(), (*machine)->memory().size());
    if (!n) return failed(n.error());
    rep.bytes_received += *n * 4096;
    const std::uint64_t now = monotonic_ns();
    deadline = now + static_cast<std::uint64_t>(opt.timeout_ms) * 1'000'000ull;
    if (spin_until != 0)  // woken: the stop-and-copy; keep spinning while its pages arrive
      spin_until = std::max<std::uint64_t>(spin_until, now + static_cast<std::uint64_t>(opt.spin_ms) * 1000000ull);
    next_look = 0;  // drain what follows at once
  }
  const std::uint64_t received_ns = monotonic_ns();
  auto payload = (*mailbox)->take();
  if (!payload) return failed(payload.error());
  auto resume = decode_resume_into(*payload, state);
  if (!resume) return failed(resume.error());
  maybe_die("state");
  // The guest TSC continues from its value at the capture: the downtime is not seen by the
  // guest (the TSC relation of the vCPU property, docs/checker.md).
  const std::uint64_t guest_tsc = state.guest_tsc();
  state.host_tsc_at_capture = __rdtsc();
  state.tsc_offset = guest_tsc - state.host_tsc_at_capture;
  auto wrote = opt.keep_tsc_offset ? restore_keeping_tsc_offset(**machine, *baseline, state)
                                   : (*machine)->restore_changes(*baseline, state);
  if (!wrote) return failed(wrote.error());
  const ResumeInfo info = resume->info;
  (*machine)->recorder().resume(info.ports);  // inputs continue at value number info.inputs_consumed
  (*machine)->recorder().set_input_source(
      [seed = info.input_seed](std::uint64_t n) { return guests::input_value(seed, n); });
  // The downtime ends here: the first KVM_RUN follows the stamp at once (KVM applies the regs,
  // sregs and events restore_changes left in the run area, then enters the guest); the source
  // hears of it once that KVM_RUN has returned.
  rep.resumed_ns = monotonic_ns();
  auto first = (*machine)->run(1);
  std::vector<std::uint8_t> resumed;
  put64(resumed, rep.resumed_ns);
  put64(resumed, received_ns);
  // What the vCPU holds: what was written, with the TSC offset KVM really applies (PVM accepts
  // a new offset and keeps the guest on the host TSC: the check must see that, not the request).
  model::VcpuState held = (*machine)->vcpu().state_after(*baseline, state, *wrote);
  if (auto applied = (*machine)->vcpu().read_tsc_offset()) held.tsc_offset = *applied;
  const auto holds = encode_vcpu_state(held);
  resumed.insert(resumed.end(), holds.begin(), holds.end());
  BATON_TRY_VOID(send_message(sock, MsgType::kResumed, resumed));
  maybe_die("resumed");
  if (realtime) set_fifo(false);
  if (!first) return failed(first.error());
  auto run = first->stop == KvmStop::kBudget ? (*machine)->run() : first;
  if (!run) return failed(run.error());
  rep.ports = (*machine)->ports();
  if (run->stop != KvmStop::kExited)
    return failed(make_error(std::string("the guest stopped on the worker: ") + to_string(run->stop) + ": " + run->detail));
  BATON_TRY_VOID(send_message(sock, MsgType::kResult, encode_guest_run(rep.ports)));
  // Best effort: a source that only wanted the result may have closed the socket already.
  (void)send_message(sock, MsgType::kEvents, encode_vmm_events((*machine)->events()));
  return rep;
}

Result<void> await_hello(int sock, HandoverTiming& t, int timeout_ms) {
  if (t.start_ns == 0) t.start_ns = monotonic_ns();
  auto hello = expect(sock, MsgType::kHello, timeout_ms);
  if (!hello) return make_error("worker: " + hello.error().message);
  if (hello->payload.size() != 4) return make_error("worker: a hello message of " + std::to_string(hello->payload.size()) + " bytes");
  t.worker_pid = static_cast<std::uint32_t>(hello->payload[0] | hello->payload[1] << 8 | hello->payload[2] << 16 |
                                            hello->payload[3] << 24);
  return ok_result();
}

namespace {

// The bitmap of round 1: the pages that hold data. A page the memfd never backed (mincore) or
// that reads as zero is not sent: the worker's private memory starts zeroed (QEMU likewise
// sends a zero page as a flag, and the simulator's precopy skips them too).
std::vector<std::uint64_t> nonzero_pages(std::uint8_t* base, std::uint64_t size) {
  const std::uint64_t pages = size / 4096;
  std::vector<std::uint64_t> bits((pages + 63) / 64, 0);
  std::vector<unsigned char> resident(pages, 1);
  if (::mincore(base, size, resident.data()) != 0) std::fill(resident.begin(), resident.end(), 1);
  for (std::uint64_t g = 0; g < pages; ++g) {
    if ((resident[g] & 1) == 0) continue;
    const auto* w = reinterpret_cast<const std::uint64_t*>(base + g * 4096);
    bool zero = true;
    for (std::size_t i = 0; i < 512 && zero; ++i) zero = w[i] == 0;
    if (!zero) bits[g / 64] |= std::uint64_t{1} << (g % 64);
  }
  return bits;
}

}  // namespace

Result<void> prepare_worker(KvmMachine& m, int sock, HandoverTiming& t, int timeout_ms) {
  if (t.start_ns == 0) t.start_ns = monotonic_ns();
  if (t.worker_pid == 0) BATON_TRY_VOID(await_hello(sock, t, timeout_ms));
  const MemoryAnnounce ann{m.memory().size(), 0, 0};
  BATON_TRY_VOID(send_message(sock, MsgType::kMemory, encode_memory_announce(ann), t.precopy ? -1 : m.memory().fd()));
  auto ack = expect(sock, MsgType::kAck, timeout_ms);
  if (!ack) return make_error("worker: " + ack.error().message);
  if (!t.baseline) {
    auto b = m.capture();
    if (!b) return b.error();
    t.baseline = std::move(*b);
  }
  auto mailbox = StateMailbox::try_create();
  if (!mailbox) return mailbox.error();
  t.mailbox = std::move(*mailbox);
  t.state_buf.assign(StateMailbox::kSize, 0);  // allocated and touched now, not in the downtime
  t.state_buf.clear();
  t.pause_state = *t.baseline;
  BATON_TRY_VOID(send_message(sock, MsgType::kBaseline, encode_vcpu_state(*t.baseline), t.mailbox->fd()));
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) return make_error(std::string("eventfd failed: ") + std::strerror(errno));
  t.wakeup = Fd(efd);
  BATON_TRY_VOID(send_message(sock, MsgType::kWakeup, std::span<const std::uint8_t>(), t.wakeup.get()));
  auto loaded = expect(sock, MsgType::kAck, timeout_ms);
  if (!loaded) return make_error("worker: " + loaded.error().message);
  if (!t.precopy) return ok_result();
  // Round 1: log from now on, then send everything.
  BATON_TRY_VOID(m.enable_dirty_log());
  auto reset = m.dirty_bitmap();
  if (!reset) return reset.error();
  const std::vector<std::uint64_t> data = nonzero_pages(m.memory().data(), m.memory().size());
  auto sent = send_pages(sock, m.memory().data(), m.memory().size(), data);
  if (!sent) return make_error("worker: " + sent.error().message);
  t.bytes_copied += *sent;
  t.rounds = 1;
  return ok_result();
}

Result<std::uint64_t> sync_dirty(KvmMachine& m, HandoverTiming& t) {
  auto dirty = m.dirty_bitmap();
  if (!dirty) return dirty.error();
  if (t.pending_dirty.size() < dirty->size()) t.pending_dirty.resize(dirty->size(), 0);
  std::uint64_t pages = 0;
  for (std::size_t i = 0; i < t.pending_dirty.size(); ++i) {
    if (i < dirty->size()) t.pending_dirty[i] |= (*dirty)[i];
    pages += static_cast<std::uint64_t>(std::popcount(t.pending_dirty[i]));
  }
  return pages;
}

Result<std::uint64_t> precopy_round(KvmMachine& m, int sock, HandoverTiming& t) {
  BATON_TRY_VOID(sync_dirty(m, t));
  auto sent = send_pages(sock, m.memory().data(), m.memory().size(), t.pending_dirty);
  if (!sent) return make_error("worker: " + sent.error().message);
  std::fill(t.pending_dirty.begin(), t.pending_dirty.end(), 0);
  t.bytes_copied += *sent;
  ++t.rounds;
  return *sent;
}

Result<void> send_state(KvmMachine& m, HandoverTiming& t, const model::VcpuState& state) {
  if (!t.mailbox) return make_error("no state mailbox: prepare_worker did not run");
  const ResumeInfo info{m.input_seed(), m.ports().inputs, m.recorder().state()};
  encode_resume_to(info, state, t.state_buf, t.baseline ? &*t.baseline : nullptr);
  BATON_TRY_VOID(t.mailbox->post(t.state_buf, t.bytes_copied));
  if (!t.worker_spins) wake_worker(t);  // a worker that does not spin sleeps until told the state is there
  return ok_result();
}

bool state_sent_is(KvmMachine& m, const HandoverTiming& t, const model::VcpuState& state) {
  if (!t.mailbox || !t.mailbox->published()) return false;
  auto posted = t.mailbox->take();
  if (!posted) return false;
  const ResumeInfo info{m.input_seed(), m.ports().inputs, m.recorder().state()};
  const auto bytes = encode_resume(info, state, t.baseline ? &*t.baseline : nullptr);
  return std::equal(bytes.begin(), bytes.end(), posted->begin(), posted->end());
}

Result<model::VcpuState> await_resumed(int sock, HandoverTiming& t, int timeout_ms) {
  auto resumed = expect(sock, MsgType::kResumed, timeout_ms);
  if (!resumed) return make_error("worker: " + resumed.error().message);
  if (resumed->payload.size() < 16)
    return make_error("worker: a resumed message of " + std::to_string(resumed->payload.size()) + " bytes");
  t.resumed_ns = get64(resumed->payload.data());
  t.state_received_ns = get64(resumed->payload.data() + 8);
  auto s = decode_vcpu_state(std::span<const std::uint8_t>(resumed->payload).subspan(16));
  if (!s) return make_error("worker: resumed message: " + s.error().message);
  return s;
}

void wake_worker(const HandoverTiming& t) {
  const std::uint64_t one = 1;
  if (t.wakeup.valid()) (void)!::write(t.wakeup.get(), &one, sizeof one);  // a lost wake-up costs only time
}

Result<model::VcpuState> hand_over(KvmMachine& m, int sock, HandoverTiming& t, int timeout_ms) {
  t.pause_ns = monotonic_ns();
  wake_worker(t);
  if (t.precopy) {  // stop-and-copy: the pages dirtied since the last round, inside the downtime
    auto last = precopy_round(m, sock, t);
    if (!last) return last.error();
  }
  if (!t.baseline) return make_error("no baseline state: prepare_worker did not run");
  BATON_TRY_VOID(m.capture_changes_into(*t.baseline, t.pause_state));
  BATON_TRY_VOID(send_state(m, t, t.pause_state));
  return await_resumed(sock, t, timeout_ms);
}

Result<guests::GuestRun> wait_worker_run(int sock, int timeout_ms) {
  auto done = expect(sock, MsgType::kResult, timeout_ms);
  if (!done) return make_error("worker: " + done.error().message);
  auto r = decode_guest_run(done->payload);
  if (!r) return make_error("worker: " + r.error().message);
  return r;
}

Result<std::vector<VmmEvent>> wait_worker_events(int sock, int timeout_ms) {
  auto m = expect(sock, MsgType::kEvents, timeout_ms);
  if (!m) return make_error("worker: " + m.error().message);
  auto e = decode_vmm_events(m->payload);
  if (!e) return make_error("worker: " + e.error().message);
  return e;
}

Result<std::string> wait_worker_result(int sock, int timeout_ms) {
  auto r = wait_worker_run(sock, timeout_ms);
  if (!r) return r.error();
  char done[96];
  std::snprintf(done, sizeof done, "exit %u checksum 0x%llx", r->exit_code, static_cast<unsigned long long>(r->checksum));
  return std::string(done);
}

}  // namespace baton::hw
