// baton calibrate --out PROFILE.json: measures the costs of docs/cost-model.md on the /dev/kvm
// at hand (exit round trip through port I/O, first touch of a 4 KiB page, dirty-log harvest,
// vCPU state save and restore, memslot registration against size, VM and vCPU creation, copy
// bandwidth), each repeated with min and median, and writes them as a cost profile with
// provenance. Figures from a software or nested KVM are labelled as such, never as hardware.
#include <sched.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <fstream>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <vector>

#include "baton/guests/registry.hpp"
#include "baton/hw/handover.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/hw/machine.hpp"
#include "baton/model/file_io.hpp"
#include "baton/sim/cost_model.hpp"
#include "baton/sim/sim_machine.hpp"
#include "cmd_calibrate.hpp"
#include "commands.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

// Nanoseconds of CLOCK_MONOTONIC.
double now_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) * 1e9 + static_cast<double>(ts.tv_nsec);
}

// Repetitions of one measurement (ns per unit), with min and median.
struct Sample {
  std::vector<double> values;
  double min() const { return *std::min_element(values.begin(), values.end()); }
  double median() const {
    std::vector<double> v = values;
    std::sort(v.begin(), v.end());
    return v.size() % 2 ? v[v.size() / 2] : (v[v.size() / 2 - 1] + v[v.size() / 2]) / 2;
  }
  json to_json(const std::string& unit) const {
    return {{"unit", unit}, {"repetitions", values.size()}, {"min", min()}, {"median", median()}, {"values", values}};
  }
};

// The value of a "key : value" line of /proc/cpuinfo (the first one), or "".
std::string cpuinfo(const std::string& key) {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key, 0) == 0) {
      const auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  return "";
}

struct CalibrateOptions {
  std::string out;
  unsigned reps = 7;
  bool force = false;
  bool json_out = false;
};

// Builds a KVM machine for a built-in guest with these parameters.
Result<std::unique_ptr<hw::KvmMachine>> machine_for(const std::string& device, const std::string& guest,
                                                     std::vector<std::string> params, const std::string& mem = "128M") {
  SimOptions so;
  so.guest = guest;
  so.params = std::move(params);
  so.mem = mem;
  auto image = make_guest_image(so);
  if (!image) return image.error();
  hw::KvmMachineOptions mo;
  mo.device = device;
  return hw::KvmMachine::try_create(*image, mo);
}

// Runs a machine to its exit; returns the wall time in ns and the exits taken.
Result<std::pair<double, std::uint64_t>> run_timed(hw::KvmMachine& m) {
  const double t0 = now_ns();
  auto r = m.run();
  const double t = now_ns() - t0;
  if (!r) return r.error();
  if (r->stop != hw::KvmStop::kExited) return make_error(std::string("the guest stopped: ") + hw::to_string(r->stop));
  return std::make_pair(t, r->exits);
}

// Plans two CPUs as a KVM local migration does (sim/src/kvm_migration.cpp): the calling
// thread stays on the one it runs on, the other is returned (-1 when there is only one).
int pin_here_and_pick_other() {
  cpu_set_t all;
  if (::sched_getaffinity(0, sizeof all, &all) != 0 || CPU_COUNT(&all) < 2) return -1;
  const int here = ::sched_getcpu();
  int other = -1;
  for (int c = 0; c < CPU_SETSIZE && other < 0; ++c)
    if (CPU_ISSET(c, &all) && c != here) other = c;
  if (other < 0 || here < 0) return -1;
  cpu_set_t mine;
  CPU_ZERO(&mine);
  CPU_SET(here, &mine);
  (void)::sched_setaffinity(0, sizeof mine, &mine);
  return other;
}

// The handshake of a KVM local migration's pause (hw::wake_worker): a child process on the
// other CPU (SCHED_FIFO where permitted, as the worker) sleeps in read() on an eventfd; the
// parent writes it. `notify` is the write's cost to the parent, `wakeup` the time until the
// child runs again, per repetition.
Result<void> measure_wakeup(unsigned reps, std::map<std::string, Sample>& m) {
  cpu_set_t before;
  (void)::sched_getaffinity(0, sizeof before, &before);
  const int other = pin_here_and_pick_other();
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  if (efd < 0) return make_error(std::string("eventfd: ") + std::strerror(errno));
  auto* woke = static_cast<volatile double*>(
      ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
  if (woke == MAP_FAILED) return make_error(std::string("mmap: ") + std::strerror(errno));
  const pid_t pid = ::fork();
  if (pid == 0) {
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (other >= 0) {
      cpu_set_t c;
      CPU_ZERO(&c);
      CPU_SET(other, &c);
      (void)::sched_setaffinity(0, sizeof c, &c);
    }
    sched_param sp{};
    sp.sched_priority = 1;
    (void)::sched_setscheduler(0, SCHED_FIFO, &sp);
    for (unsigned i = 0; i < reps; ++i) {
      std::uint64_t v = 0;
      if (::read(efd, &v, sizeof v) != sizeof v) ::_exit(1);
      woke[i + 1] = now_ns();
    }
    ::_exit(0);
  }
  Result<void> out = ok_result();
  if (pid < 0) out = make_error(std::string("fork: ") + std::strerror(errno));
  for (unsigned i = 0; i < reps && pid > 0 && out; ++i) {
    ::usleep(5000);  // the child is asleep in read() by now
    const std::uint64_t one = 1;
    const double t0 = now_ns();
    const bool wrote = ::write(efd, &one, sizeof one) == sizeof one;
    const double t1 = now_ns();
    if (!wrote) out = make_error(std::string("eventfd write: ") + std::strerror(errno));
    while (out && woke[i + 1] == 0 && now_ns() - t0 < 1e9) {
    }
    if (woke[i + 1] == 0) out = make_error("the woken child did not run within 1 s");
    if (!out) break;
    m["handover_notify"].values.push_back(t1 - t0);
    m["handover_wakeup"].values.push_back(woke[i + 1] - t0);
  }
  if (pid > 0) {
    if (!out) ::kill(pid, SIGKILL);
    int st = 0;
    ::waitpid(pid, &st, 0);
  }
  ::munmap(const_cast<double*>(woke), 4096);
  ::close(efd);
  (void)::sched_setaffinity(0, sizeof before, &before);
  return out;
}

// The channel a KVM precopy sends pages through (hw::send_pages over a socket pair into a
// child process that applies them): bytes per ns, 64 MiB of non-zero pages per repetition.
Result<void> measure_transfer(unsigned reps, std::map<std::string, Sample>& m) {
  constexpr std::uint64_t kBytes = std::uint64_t{64} << 20;
  std::vector<std::uint8_t> src(kBytes);
  for (std::uint64_t i = 0; i < kBytes; i += 64) src[i] = static_cast<std::uint8_t>(i >> 12 | 1);
  const std::vector<std::uint64_t> all(kBytes / 4096 / 64, ~std::uint64_t{0});
  for (unsigned r = 0; r < reps; ++r) {
    int sv[2];
    if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) != 0)
      return make_error(std::string("socketpair: ") + std::strerror(errno));
    const pid_t pid = ::fork();
    if (pid == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      ::close(sv[0]);
      std::vector<std::uint8_t> dst(kBytes);
      std::uint64_t got = 0;
      while (got < kBytes / 4096) {
        auto msg = hw::recv_message(sv[1], 60'000);
        if (!msg) ::_exit(1);
        auto n = hw::apply_pages(msg->payload, dst.data(), kBytes);
        if (!n) ::_exit(1);
        got += *n;
      }
      const char done = 1;
      ::_exit(::write(sv[1], &done, 1) == 1 ? 0 : 1);
    }
    ::close(sv[1]);
    if (pid < 0) {
      ::close(sv[0]);
      return make_error(std::string("fork: ") + std::strerror(errno));
    }
    const double t0 = now_ns();
    auto sent = hw::send_pages(sv[0], src.data(), kBytes, all);
    char done = 0;
    const bool acked = sent && ::read(sv[0], &done, 1) == 1;
    const double t = now_ns() - t0;
    ::close(sv[0]);
    int st = 0;
    ::waitpid(pid, &st, 0);
    if (!sent) return sent.error();
    if (!acked) return make_error("the receiving child did not apply every page");
    m["transfer"].values.push_back(static_cast<double>(kBytes) / t);
  }
  return ok_result();
}

// Runs every measurement; fills `m` (name -> sample) and returns an error on the first failure.
Result<void> measure(const std::string& device, unsigned reps, std::map<std::string, Sample>& m, json& slots) {
  auto sys = hw::KvmSystem::try_open(device);
  if (!sys) return sys.error();
  auto mmap = sys->try_vcpu_mmap_size();
  if (!mmap) return mmap.error();
  for (unsigned i = 0; i < reps; ++i) {
    double t = now_ns();
    auto vm = sys->try_create_vm();
    m["create_vm"].values.push_back(now_ns() - t);
    if (!vm) return vm.error();
    t = now_ns();
    auto vcpu = vm->try_create_vcpu(0, *mmap);
    m["create_vcpu"].values.push_back(now_ns() - t);
    if (!vcpu) return vcpu.error();
  }
  // Memslot registration against size (the memfd is not touched: KVM pins nothing up front).
  for (std::uint64_t mib : {64ull, 256ull, 1024ull, 4096ull}) {
    Sample s;
    for (unsigned i = 0; i < reps; ++i) {
      auto vm = sys->try_create_vm();
      if (!vm) return vm.error();
      auto mem = hw::GuestMemory::try_create(mib << 20, "baton-calibrate");
      if (!mem) return mem.error();
      const double t = now_ns();
      auto r = vm->try_set_user_memory_region(0, 0, 0, mem->size(), mem->data());
      s.values.push_back(now_ns() - t);
      if (!r) return r.error();
    }
    slots[std::to_string(mib) + "M"] = s.to_json("ns");
  }
  // The exit round trip through port I/O: the io guest, one IN and one OUT per value.
  for (unsigned i = 0; i < reps; ++i) {
    auto mc = machine_for(device, "io", {"count=4096"});
    if (!mc) return mc.error();
    auto r = run_timed(**mc);
    if (!r) return r.error();
    m["exit_io"].values.push_back(r->first / static_cast<double>(r->second));
  }
  // First touch of a 4 KiB page: memtouch over 64 MiB, one pass against two (the second pass
  // touches mapped pages only), per page.
  const double pages = 64.0 * 256;
  for (unsigned i = 0; i < reps; ++i) {
    double t[2] = {0, 0};
    for (int passes = 1; passes <= 2; ++passes) {
      auto mc = machine_for(device, "memtouch", {"size=64M", "passes=" + std::to_string(passes), "write_pct=100"});
      if (!mc) return mc.error();
      auto r = run_timed(**mc);
      if (!r) return r.error();
      t[passes - 1] = r->first;
    }
    m["first_touch"].values.push_back(std::max(0.0, 2 * t[0] - t[1]) / pages);
  }
  // Touches of mapped pages: 200 more passes over the same 16,384 pages, more than any TLB
  // holds, so each touch is a TLB miss and a 2D walk (one pass alone is below the noise).
  for (unsigned i = 0; i < reps; ++i) {
    double t[2] = {0, 0};
    for (int k = 0; k < 2; ++k) {
      auto mc = machine_for(device, "memtouch", {"size=64M", "passes=" + std::to_string(k == 0 ? 1 : 201), "write_pct=100"});
      if (!mc) return mc.error();
      auto r = run_timed(**mc);
      if (!r) return r.error();
      t[k] = r->first;
    }
    m["mapped_touch"].values.push_back(std::max(0.0, t[1] - t[0]) / (200 * pages));
  }
  // Dirty-log harvest: memtouch to its first sync point, dirty logging on, one more pass
  // (sync point 2), then KVM_GET_DIRTY_LOG; per dirty page.
  for (unsigned i = 0; i < reps; ++i) {
    auto mc = machine_for(device, "memtouch", {"size=64M", "passes=4", "write_pct=100"});
    if (!mc) return mc.error();
    hw::KvmMachine& k = **mc;
    auto a = k.run(~std::uint64_t{0}, true);
    if (!a) return a.error();
    BATON_TRY_VOID(k.enable_dirty_log());
    auto b = k.run(~std::uint64_t{0}, true);
    if (!b) return b.error();
    const double t = now_ns();
    auto bm = k.dirty_bitmap();
    const double dt = now_ns() - t;
    if (!bm) return bm.error();
    std::uint64_t dirty = 0;
    for (std::uint64_t w : *bm) dirty += static_cast<std::uint64_t>(__builtin_popcountll(w));
    m["dirty_harvest"].values.push_back(dt / static_cast<double>(std::max<std::uint64_t>(dirty, 1)));
    // The pause's capture and restore, as a KVM local migration does them (hw::hand_over): a
    // capture of what changed since a baseline (it completes the sync point's I/O exit first),
    // and a restore of that on a second vCPU that holds the baseline.
    {
      auto fresh = machine_for(device, "memtouch", {"size=64M", "passes=4", "write_pct=100"});
      if (!fresh) return fresh.error();
      auto other = machine_for(device, "memtouch", {"size=64M", "passes=4", "write_pct=100"});
      if (!other) return other.error();
      auto base = (*fresh)->capture();
      if (!base) return base.error();
      auto at = (*fresh)->run(~std::uint64_t{0}, true);
      if (!at) return at.error();
      const double c0 = now_ns();
      auto st = (*fresh)->capture_changes(*base);
      m["pause_capture"].values.push_back(now_ns() - c0);
      if (!st) return st.error();
      if (auto b = (*other)->restore(*base); !b) return b.error();
      const double r0 = now_ns();
      auto w = (*other)->restore_changes(*base, *st);
      m["pause_restore"].values.push_back(now_ns() - r0);
      if (!w) return w.error();
    }
    // vCPU state save and restore on the same machine.
    for (unsigned j = 0; j < 3; ++j) {
      const double s0 = now_ns();
      auto st = k.capture();
      m["vcpu_state_save"].values.push_back(now_ns() - s0);
      if (!st) return st.error();
      const double r0 = now_ns();
      auto rr = k.restore(*st);
      m["vcpu_state_load"].values.push_back(now_ns() - r0);
      if (!rr) return rr.error();
    }
  }
  // Copy bandwidth: 256 MiB between two touched buffers (bytes per ns).
  const std::size_t n = std::size_t{256} << 20;
  std::vector<std::uint8_t> src(n, 1), dst(n, 0);
  for (unsigned i = 0; i < reps; ++i) {
    src[i] = static_cast<std::uint8_t>(i);
    const double t = now_ns();
    std::memcpy(dst.data(), src.data(), n);
    m["copy"].values.push_back(static_cast<double>(n) / (now_ns() - t));
  }
  if (dst[0] == 0xff) std::fputs("", stderr);  // keeps the copy observable
  BATON_TRY_VOID(measure_wakeup(reps, m));
  BATON_TRY_VOID(measure_transfer(reps, m));
  return ok_result();
}

// The guest instructions of one touch of a mapped page: memtouch over 64 MiB in the simulator,
// 21 passes against 1 (0 when the simulator cannot run it).
double touch_instructions() {
  std::uint64_t n[2] = {0, 0};
  for (int k = 0; k < 2; ++k) {
    SimOptions so;
    so.guest = "memtouch";
    so.mem = "128M";
    so.params = {"size=64M", "passes=" + std::to_string(k == 0 ? 1 : 21), "write_pct=100"};
    auto setup = make_sim_setup(so);
    if (!setup) return 0;
    auto mc = sim::SimMachine::create(setup->cfg);
    if (!mc || !(*mc)->load(setup->image)) return 0;
    sim::RunLimits l;
    l.budget = 4'000'000'000;
    if ((*mc)->run(l).reason != sim::StopReason::kExited) return 0;
    n[k] = (*mc)->instructions();
  }
  return n[1] > n[0] ? static_cast<double>(n[1] - n[0]) / (20.0 * 64 * 256) : 0;
}

void run_calibrate(const CalibrateOptions& o) {
  if (o.reps < 1 || o.reps > 1000) return fail("--reps must be 1..1000");
  if (auto r = model::check_output_path(o.out, o.force, "--out"); !r) return fail(r.error().message);
  const std::string device = hw::kvm_device();
  if (auto why = hw::kvm_unavailable_reason(device)) return fail(*why);
  const std::string flavour = hw::host_flavour();
  std::map<std::string, Sample> m;
  json slots = json::object();
  if (show_progress()) std::fprintf(stderr, "calibrating %s (%s), %u repetitions each ...\n", device.c_str(), flavour.c_str(), o.reps);
  if (auto r = measure(device, o.reps, m, slots); !r) return fail(r.error().message);
  // The profile: measured ns at the host's clock, as cycles of that clock.
  const std::string mhz_text = cpuinfo("cpu MHz");
  double ghz = mhz_text.empty() ? 1.0 : std::atof(mhz_text.c_str()) / 1000.0;
  if (ghz < 0.1 || ghz > 10) ghz = 1.0;
  sim::CostProfile p = sim::default_profile();
  auto cycles = [&](double ns) { return static_cast<std::uint64_t>(ns * ghz + 0.5); };
  const bool hardware = flavour == "vmx" || flavour == "svm";
  p.name = std::string("calibrated-") + flavour;
  p.frequency_ghz = ghz;
  // An I/O exit = the round trip plus the handler; the split keeps the default handler share.
  const std::uint64_t io = cycles(m["exit_io"].median());
  p.handler_io = std::min<std::uint64_t>(p.handler_io, io / 2);
  p.exit_round_trip = io - p.handler_io;
  const std::uint64_t touch = cycles(m["first_touch"].median());
  p.handler_ept_violation = touch > p.ept_install_leaf + p.exit_round_trip ? touch - p.ept_install_leaf - p.exit_round_trip : touch / 2;
  p.dirty_clear_per_page = std::max<std::uint64_t>(1, cycles(m["dirty_harvest"].median()));
  // The pause saves and loads what a KVM local migration does there (the full figures are
  // in the provenance), and the two instances' handshake and page channel are its own.
  p.vcpu_state_save = cycles(m["pause_capture"].median());
  p.vcpu_state_load = cycles(m["pause_restore"].median());
  p.handover_notify = cycles(m["handover_notify"].median());
  p.handover_wakeup = cycles(m["handover_wakeup"].median());
  p.transfer_bytes_per_cycle = m["transfer"].median() / ghz;
  // A touch of a mapped page is the guest's instructions for it (counted by the simulator on
  // the same guest) and a TLB miss: a 2D walk of 24 references (4K guest pages, 4K EPT).
  const double insns = touch_instructions();
  p.mem_ref_cycles = std::clamp((static_cast<double>(cycles(m["mapped_touch"].median())) - insns * p.base_cpi) /
                                    sim::walk_refs_2d(4, 4), 0.1, 10000.0);
  // memslot_register stays: the model charges only the new instance's table insert on the
  // downtime, because KVM_SET_USER_MEMORY_REGION happens before the pause (docs/cost-model.md);
  // the measured registration is in the provenance.
  p.memcpy_bytes_per_cycle = m["copy"].median() / ghz;
  json j = json::parse(sim::profile_json(p));
  utsname u{};
  ::uname(&u);
  char date[32];
  const std::time_t now = std::time(nullptr);
  std::strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  json prov;
  prov["host_flavour"] = flavour;
  prov["figures"] = hardware ? "hardware" : "not hardware: " + flavour + (flavour == "pvm" ? " (software KVM: ring 0 emulated, ring 3 native)" : " (nested KVM)");
  prov["kernel"] = std::string(u.sysname) + " " + u.release;
  prov["cpu"] = cpuinfo("model name");
  prov["cpu_mhz"] = ghz * 1000;
  prov["date"] = date;
  prov["device"] = device;
  json meas = json::object();
  meas["create_vm"] = m["create_vm"].to_json("ns");
  meas["create_vcpu"] = m["create_vcpu"].to_json("ns");
  meas["memslot_register_by_size"] = slots;
  meas["exit_io_round_trip"] = m["exit_io"].to_json("ns per exit (io guest)");
  meas["first_touch_4k"] = m["first_touch"].to_json("ns per page (memtouch 64M, 1 pass against 2)");
  meas["dirty_log_harvest"] = m["dirty_harvest"].to_json("ns per dirty page (KVM_GET_DIRTY_LOG)");
  meas["vcpu_state_save"] = m["vcpu_state_save"].to_json("ns");
  meas["vcpu_state_load"] = m["vcpu_state_load"].to_json("ns");
  meas["pause_capture"] = m["pause_capture"].to_json("ns (capture_changes at a sync point)");
  meas["pause_restore"] = m["pause_restore"].to_json("ns (restore_changes on a vCPU holding the baseline)");
  meas["handover_notify"] = m["handover_notify"].to_json("ns (eventfd write that wakes a process on the other CPU)");
  meas["handover_wakeup"] = m["handover_wakeup"].to_json("ns (from that write until the woken process runs)");
  meas["transfer_bandwidth"] = m["transfer"].to_json("bytes per ns (hw::send_pages of 64 MiB to a child process)");
  meas["mapped_touch_4k"] = m["mapped_touch"].to_json("ns per touch (memtouch 64M, 201 passes against 1)");
  meas["copy_bandwidth"] = m["copy"].to_json("bytes per ns (memcpy 256 MiB)");
  prov["measurements"] = meas;
  j["provenance"] = prov;
  if (auto w = model::write_text(o.out, j.dump(2) + "\n", o.force); !w) return fail(w.error().message);
  if (o.json_out) {
    std::cout << j.dump(2) << "\n";
    return;
  }
  std::printf("calibrated   %s on %s (%s), %s\n", device.c_str(), flavour.c_str(), prov["figures"].get<std::string>().c_str(), date);
  std::printf("cpu          %s, %.0f MHz; kernel %s\n", prov["cpu"].get<std::string>().c_str(), ghz * 1000, prov["kernel"].get<std::string>().c_str());
  std::printf("%-26s %12s %12s  (%u repetitions)\n", "measurement", "min", "median", o.reps);
  const std::pair<const char*, const char*> rows[] = {
      {"create_vm", "VM creation (us)"},           {"create_vcpu", "vCPU creation (us)"},
      {"exit_io", "exit via port I/O (us)"},
      {"first_touch", "first touch 4K (us)"},     {"dirty_harvest", "dirty harvest/page (ns)"},
      {"mapped_touch", "mapped touch 4K (ns)"},
      {"vcpu_state_save", "vCPU state save (us)"}, {"vcpu_state_load", "vCPU state load (us)"},
      {"pause_capture", "pause capture (us)"},    {"pause_restore", "pause restore (us)"},
      {"handover_notify", "wake notify (us)"},    {"handover_wakeup", "wake-up (us)"},
      {"copy", "copy (GB/s)"},                    {"transfer", "page transfer (GB/s)"}};
  for (const auto& [k, label] : rows) {
    const double div = std::string(k) == "dirty_harvest" || std::string(k) == "mapped_touch" || std::string(k) == "copy" || std::string(k) == "transfer" ? 1.0 : 1000.0;
    std::printf("%-26s %12.2f %12.2f\n", label, m[k].min() / div, m[k].median() / div);
  }
  for (const char* size : {"64M", "256M", "1024M", "4096M"}) {
    const json& s = slots[size];
    std::printf("  memslot %-17s %12.2f %12.2f\n", (std::string(size) + " (us)").c_str(), s["min"].get<double>() / 1000,
                s["median"].get<double>() / 1000);
  }
  std::printf("profile      %s (%s)\n", o.out.c_str(), p.name.c_str());
}

}  // namespace

void register_calibrate(CLI::App& app) {
  auto o = std::make_shared<CalibrateOptions>();
  CLI::App* c = app.add_subcommand("calibrate", "Measure this host's /dev/kvm and write a cost profile with provenance");
  c->add_option("--out", o->out, "Cost profile to write (JSON, docs/cost-model.md)")->required();
  c->add_option("--reps", o->reps, "Repetitions of each measurement")->capture_default_str();
  c->add_flag("--force", o->force, "Replace an existing --out file");
  c->add_flag("--json", o->json_out, "Print the profile as JSON");
  c->callback([o] { run_calibrate(*o); });
}

}  // namespace baton::cli
