// baton calibrate --out PROFILE.json: measures the costs of docs/cost-model.md on the /dev/kvm
// at hand (exit round trip through port I/O, first touch of a 4 KiB page, dirty-log harvest,
// vCPU state save and restore, memslot registration against size, VM and vCPU creation, copy
// bandwidth), each repeated with min and median, and writes them as a cost profile with
// provenance. Figures from a software or nested KVM are labelled as such, never as hardware.
#include <sys/utsname.h>
#include <time.h>

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
#include "baton/hw/kvm.hpp"
#include "baton/hw/machine.hpp"
#include "baton/model/file_io.hpp"
#include "baton/sim/cost_model.hpp"
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
  return ok_result();
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
  p.vcpu_state_save = cycles(m["vcpu_state_save"].median());
  p.vcpu_state_load = cycles(m["vcpu_state_load"].median());
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
      {"vcpu_state_save", "vCPU state save (us)"}, {"vcpu_state_load", "vCPU state load (us)"},
      {"copy", "copy (GB/s)"}};
  for (const auto& [k, label] : rows) {
    const double div = std::string(k) == "dirty_harvest" || std::string(k) == "copy" ? 1.0 : 1000.0;
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
