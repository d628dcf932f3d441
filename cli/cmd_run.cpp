// baton run: runs a built-in guest (or a guest ELF) on a backend and reports what happened.
#include <time.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "baton/guests/registry.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/hw/machine.hpp"
#include "baton/model/file_io.hpp"
#include "baton/sim/kvm_trace.hpp"
#include "baton/sim/sim_machine.hpp"
#include "commands.hpp"
#include "parse.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

namespace {

using nlohmann::json;

struct RunOptions {
  std::string guest;
  std::vector<std::string> params;
  std::string mem = "128M";
  std::string pages = "4k";
  std::string profile;
  std::string trace;
  std::uint64_t budget = 20'000'000'000ull;
  std::string backend = "sim";
  std::string dirty = "off";
  bool no_ad = false;
  bool all_hooked = false;
  bool json_out = false;
  bool force = false;  // replace an existing --trace file
};

// CLOCK_MONOTONIC in nanoseconds (the clock of the KVM backend's events).
std::uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}

// The simulator options within the run options.
SimOptions sim_options(const RunOptions& o) {
  SimOptions s;
  s.guest = o.guest;
  s.params = o.params;
  s.mem = o.mem;
  s.pages = o.pages;
  s.profile = o.profile;
  s.no_ad = o.no_ad;
  return s;
}

// Runs one guest on /dev/kvm and prints the report (docs/kvm-backend.md).
void run_guest_kvm(const RunOptions& o) {
  if (!parse_size(o.mem)) return fail("--mem '" + o.mem + "' is not a size (e.g. 256M, 4G)");
  if (!parse_page_level(o.pages)) return fail("--pages '" + o.pages + "' is not one of 4k, 2m, 1g");
  if (!o.profile.empty() || o.dirty != "off" || o.no_ad || o.all_hooked)
    return fail("--profile, --dirty, --no-ad and --all-hooked apply to --backend sim only");
  if (!o.trace.empty())
    if (auto r = model::check_output_path(o.trace, o.force, "--trace"); !r) return fail(r.error().message);
  // The device first: without KVM this one line is all the user needs to see.
  const std::string device = hw::kvm_device();
  if (auto why = hw::kvm_unavailable_reason(device)) return fail(*why);
  auto image = make_guest_image(sim_options(o));
  if (!image) return fail(image.error().message);
  hw::KvmMachineOptions mo;
  mo.device = device;
  mo.log_events = !o.trace.empty();
  auto m = hw::KvmMachine::try_create(*image, mo);
  if (!m) return fail(m.error().message);
  const std::uint64_t t0_ns = monotonic_ns();
  const auto t0 = std::chrono::steady_clock::now();
  auto r = (*m)->run(o.budget);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!r) return fail(r.error().message);
  if (!o.trace.empty()) {
    // Written whatever the outcome: a trace of a failed run is evidence too.
    std::vector<traces::TraceEvent> ev;
    sim::append_vmm_events(ev, (*m)->events(), 0, t0_ns);
    traces::TraceHeader h = sim::kvm_trace_header(*image, o.guest, {{"mem", o.mem}, {"pages", o.pages}});
    h.meta["outcome"] = hw::to_string(r->stop);
    if (auto w = sim::write_kvm_trace(o.trace, h, std::move(ev), o.force); !w) return fail("--trace: " + w.error().message);
  }
  const guests::GuestRun& out = (*m)->ports();
  auto expected = guests::expected_result(o.guest, image->params);
  const bool match = expected && out.exited && out.checksum == *expected;
  // What this host's KVM lacks, when that explains the failure (design.md, PVM).
  std::string why;
  if (r->stop == hw::KvmStop::kShutdown && !out.exited && out.stages.empty() && hw::host_flavour() == "pvm")
    why =
        "this host's KVM is PVM, which does not honour IOPL=3: a ring-3 guest's first port I/O raises #GP and, "
        "without an IDT, triple-faults (docs/kvm-backend.md)";
  if (o.json_out) {
    json j;
    j["guest"] = o.guest;
    j["backend"] = "kvm";
    j["host_flavour"] = hw::host_flavour();
    j["outcome"] = hw::to_string(r->stop);
    j["detail"] = r->detail;
    j["exit_code"] = out.exited ? json(out.exit_code) : json(nullptr);
    j["console"] = out.console;
    j["checksum"] = out.exited ? json(hex(out.checksum)) : json(nullptr);
    j["expected_checksum"] = expected ? json(hex(*expected)) : json(nullptr);
    j["checksum_matches"] = match;
    j["stages"] = out.stages;
    j["exits"] = r->exits;
    j["wall_s"] = wall;
    if (!why.empty()) j["why"] = why;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("guest        %s on kvm (%s, %s pages, mem %s)\n", o.guest.c_str(), hw::host_flavour().c_str(),
                o.pages.c_str(), o.mem.c_str());
    std::printf("outcome      %s%s%s\n", hw::to_string(r->stop), r->detail.empty() ? "" : ": ", r->detail.c_str());
    std::printf("exit code    %s\n", out.exited ? std::to_string(out.exit_code).c_str() : "-");
    std::printf("console      %s", out.console.empty() ? "(empty)\n" : "\n");
    if (!out.console.empty()) std::printf("%s%s", out.console.c_str(), out.console.back() == '\n' ? "" : "\n");
    std::printf("checksum     %s (expected %s: %s)\n", out.exited ? hex(out.checksum).c_str() : "-",
                expected ? hex(*expected).c_str() : "-", match ? "match" : "MISMATCH");
    std::printf("exits        %llu to user space\n", static_cast<unsigned long long>(r->exits));
    std::printf("wall         %.3f s\n", wall);
  }
  if (!why.empty()) return fail("/dev/kvm: " + why);  // the one line that says what is missing
  if (r->stop != hw::KvmStop::kExited) exit_code() = kExitError;
  else if (!match) exit_code() = kExitRefuted;
}

// Runs one guest on the simulator and prints the report.
void run_guest(const RunOptions& o) {
  if (o.backend == "kvm") return run_guest_kvm(o);
  if (o.backend != "sim") return fail("--backend '" + o.backend + "' is not one of sim, kvm");
  sim::DirtyMode dirty = sim::DirtyMode::kOff;
  if (o.dirty == "wp") dirty = sim::DirtyMode::kWriteProtect;
  else if (o.dirty == "pml") dirty = sim::DirtyMode::kPml;
  else if (o.dirty != "off") return fail("--dirty '" + o.dirty + "' is not one of off, wp, pml");
  if (!o.trace.empty())
    if (auto r = model::check_output_path(o.trace, o.force, "--trace"); !r) return fail(r.error().message);
  auto setup = make_sim_setup(sim_options(o));
  if (!setup) return fail(setup.error().message);
  const guests::GuestImage* image = &setup->image;
  sim::SimConfig& cfg = setup->cfg;
  cfg.hv.dirty = dirty;
  cfg.hookless = !o.all_hooked;
  cfg.trace_path = o.trace;
  cfg.trace_overwrite = o.force;
  cfg.guest_name = o.guest;
  cfg.trace_params = {{"mem", o.mem}, {"pages", o.pages}, {"dirty", o.dirty}};
  auto m = sim::SimMachine::create(cfg);
  if (!m) return fail(m.error().message);
  if (auto r = (*m)->load(*image); !r) return fail(r.error().message);

  const bool tty = show_progress(), redraw = stderr_is_tty();
  double next_line = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  sim::RunEvent ev;
  std::uint64_t step = 100'000'000;
  bool shown = false;
  for (;;) {
    sim::RunLimits lim;
    lim.budget = o.budget;
    lim.until_insn = std::min(o.budget, (*m)->instructions() + step);
    ev = (*m)->run(lim);
    if (ev.reason != sim::StopReason::kInsnLimit) break;
    if ((*m)->instructions() >= o.budget) {
      ev = sim::RunEvent{sim::StopReason::kHang, "no exit within " + std::to_string(o.budget) + " instructions", ev.stage};
      break;
    }
    if (tty && elapsed() > 2.0) {
      // On a terminal one line is redrawn; in a log (--progress) a line every 5 s.
      if (redraw) {
        std::fprintf(stderr, "\r%s: %.0fM instructions, stage %u, %.1f s", o.guest.c_str(), (*m)->instructions() / 1e6,
                     ev.stage, elapsed());
        shown = true;
      } else if (elapsed() >= next_line) {
        std::fprintf(stderr, "%s: %.0fM instructions, stage %u, %.1f s\n", o.guest.c_str(), (*m)->instructions() / 1e6,
                     ev.stage, elapsed());
        next_line = elapsed() + 5.0;
      }
    }
  }
  if (shown) std::fprintf(stderr, "\n");
  const double wall = elapsed();
  if (auto r = (*m)->close_trace(); !r) fail(r.error().message);
  const sim::SimStats st = (*m)->stats();
  const sim::GuestOutput& out = (*m)->output();
  auto expected = guests::expected_result(o.guest, image->params);
  const auto checksum = out.checksum();
  const bool match = expected && checksum && *checksum == *expected;
  const double mips = wall > 0 ? static_cast<double>(st.instructions) / wall / 1e6 : 0.0;

  json j;
  j["guest"] = o.guest;
  j["backend"] = "sim";
  j["outcome"] = sim::to_string(ev.reason);
  j["detail"] = ev.detail;
  j["exit_code"] = out.exit_code ? json(*out.exit_code) : json(nullptr);
  j["console"] = out.console;
  j["checksum"] = checksum ? json(hex(*checksum)) : json(nullptr);
  j["expected_checksum"] = expected ? json(hex(*expected)) : json(nullptr);
  j["checksum_matches"] = match;
  j["stages"] = out.stages;
  j["instructions"] = st.instructions;
  j["simulated_cycles"] = st.cost.total();
  j["simulated_us"] = st.micros();
  json cats = json::object();
  for (std::size_t c = 0; c < static_cast<std::size_t>(sim::CostCategory::kCount); ++c)
    cats[sim::to_string(static_cast<sim::CostCategory>(c))] = st.cost.cycles[c];
  j["cycles_by_category"] = cats;
  json ex = json::object();
  for (const auto& [r, n] : st.exits) ex[sim::to_string(r)] = n;
  j["exits"] = ex;
  j["ept"] = {{"leaves_4k", st.ept.leaves[1]}, {"leaves_2m", st.ept.leaves[2]}, {"leaves_1g", st.ept.leaves[3]},
              {"tables", st.ept.tables}, {"violations", st.ept.violations}, {"misconfigurations", st.ept.misconfigs},
              {"wp_faults", st.ept.wp_faults}, {"pml_logged", st.ept.pml_logged}, {"pml_full", st.ept.pml_full}};
  j["tlb"] = {{"misses", st.tlb_misses}, {"walk_refs", st.tlb_walk_refs}};
  j["unicorn_regions"] = st.regions;
  j["blocks_decoded"] = st.blocks_decoded;
  j["rdtsc_fixed"] = st.rdtsc_fixed;
  j["executor"] = {{"block_executions", st.block_execs}, {"hookless_executions", st.hookless_execs},
                   {"promotions", st.promotions}, {"hookless_lost", st.hookless_lost},
                   {"read_hooks", st.read_hooks}, {"write_hooks", st.write_hooks},
                   {"store_mismatches", st.store_mismatches}};
  j["wall_s"] = wall;
  j["mips"] = mips;
  if (o.json_out) {
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("guest        %s on sim (%s pages, mem %s)\n", o.guest.c_str(), o.pages.c_str(), o.mem.c_str());
    std::printf("outcome      %s (%s)\n", sim::to_string(ev.reason), ev.detail.c_str());
    std::printf("exit code    %s\n", out.exit_code ? std::to_string(*out.exit_code).c_str() : "-");
    std::printf("console      %s", out.console.empty() ? "(empty)\n" : "\n");
    if (!out.console.empty()) std::printf("%s%s", out.console.c_str(), out.console.back() == '\n' ? "" : "\n");
    std::printf("checksum     %s (expected %s: %s)\n", checksum ? hex(*checksum).c_str() : "-",
                expected ? hex(*expected).c_str() : "-", match ? "match" : "MISMATCH");
    std::printf("instructions %llu\n", static_cast<unsigned long long>(st.instructions));
    std::printf("simulated    %.0f cycles = %.1f us at %.2f GHz\n", st.cost.total(), st.micros(), st.frequency_ghz);
    for (std::size_t c = 0; c < static_cast<std::size_t>(sim::CostCategory::kCount); ++c)
      if (st.cost.cycles[c] > 0)
        std::printf("  %-16s %14.0f cycles\n", sim::to_string(static_cast<sim::CostCategory>(c)), st.cost.cycles[c]);
    std::printf("exits\n");
    for (const auto& [r, n] : st.exits) std::printf("  %-16s %10llu\n", sim::to_string(r), static_cast<unsigned long long>(n));
    std::printf("EPT          leaves 4k/2m/1g %llu/%llu/%llu, tables %llu, violations %llu, misconfigurations %llu\n",
                static_cast<unsigned long long>(st.ept.leaves[1]), static_cast<unsigned long long>(st.ept.leaves[2]),
                static_cast<unsigned long long>(st.ept.leaves[3]), static_cast<unsigned long long>(st.ept.tables),
                static_cast<unsigned long long>(st.ept.violations), static_cast<unsigned long long>(st.ept.misconfigs));
    std::printf("TLB          %llu misses, %llu walk references\n", static_cast<unsigned long long>(st.tlb_misses),
                static_cast<unsigned long long>(st.tlb_walk_refs));
    std::printf("unicorn      %llu regions\n", static_cast<unsigned long long>(st.regions));
    std::printf("wall         %.3f s, %.1f MIPS\n", wall, mips);
  }
  if (ev.reason != sim::StopReason::kExited) exit_code() = kExitError;
  else if (!match) exit_code() = kExitRefuted;
}

}  // namespace

void register_run(CLI::App& app) {
  auto o = std::make_shared<RunOptions>();
  CLI::App* c = app.add_subcommand("run", "Run a built-in guest on the simulator (or /dev/kvm) and report exits, EPT and cycles");
  c->add_option("guest", o->guest, "Built-in guest (see `baton guests list`)")->required();
  c->add_option("--param,-p", o->params, "Guest parameter key=value (repeatable)");
  c->add_option("--mem", o->mem, "Guest memory size")->capture_default_str();
  c->add_option("--pages", o->pages, "Largest EPT (and guest) leaf: 4k, 2m, 1g")->capture_default_str();
  c->add_option("--profile", o->profile, "Cost profile (JSON, see docs/cost-model.md)");
  c->add_option("--trace", o->trace, "Write a trace (format v1) to this file");
  c->add_flag("--force", o->force, "Replace an existing --trace file");
  c->add_option("--budget", o->budget,
                "Instruction budget; a guest still running then is a hang (larger than migrate's, which runs the "
                "guest up to three times)")
      ->capture_default_str();
  c->add_option("--backend", o->backend, "Backend: sim, or kvm (needs /dev/kvm; --budget counts exits there)")
      ->capture_default_str();
  c->add_option("--dirty", o->dirty, "Dirty tracking: off (a plain run needs none), wp, pml")->capture_default_str();
  c->add_flag("--no-ad", o->no_ad, "Disable EPT accessed/dirty flags");
  c->add_flag("--all-hooked", o->all_hooked,
              "Keep every access on the memory hooks (the per-access reference of the hook-less fast path; slow)");
  c->add_flag("--json", o->json_out, "Print JSON");
  c->callback([o] { run_guest(*o); });
}

}  // namespace baton::cli
