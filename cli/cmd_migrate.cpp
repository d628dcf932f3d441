// baton migrate: runs a guest on the simulator or on KVM, hands it over to a new hypervisor
// instance (a second VMM process on KVM) by one method, checks the handover and finishes the
// run. Prints the timeline, the metrics, the checker's verdicts and the checksum comparison.
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>

#include "baton/guests/registry.hpp"
#include "baton/model/file_io.hpp"
#include "baton/model/snapshot_io.hpp"
#include "baton/hw/kvm.hpp"
#include "baton/sim/kvm_migration.hpp"
#include "baton/sim/migration.hpp"
#include "commands.hpp"
#include "migrate_render.hpp"
#include "migrate_setup.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {

struct MigrateCmd {
  SimOptions sim;
  MigrateOptions mig;
  std::string method = "local-adopt";
  std::string backend = "sim";
  std::string capture;
  std::string trace;
  std::string save;
  bool force = false;
  bool json_out = false;
};

// Prints or emits one migration's result and sets the exit code.
void report(const MigrateCmd& o, const sim::MigrationResult& r) {
  if (o.json_out) {
    nlohmann::json j = migration_json(r);
    j["guest"] = o.sim.guest;
    j["mem"] = o.sim.mem;
    j["pages"] = o.sim.pages;
    std::cout << j.dump(2) << "\n";
  } else {
    if (r.backend == "kvm")
      std::printf("guest        %s on kvm (%s; source VMM pid %u, worker pid %u; mem %s, %s pages)\n",
                  o.sim.guest.c_str(), r.host_flavour.c_str(), r.source_pid, r.worker_pid, o.sim.mem.c_str(),
                  o.sim.pages.c_str());
    else
      std::printf("guest        %s on sim (mem %s, %s pages)\n", o.sim.guest.c_str(), o.sim.mem.c_str(),
                  o.sim.pages.c_str());
    std::fputs(migration_text(r).c_str(), stdout);
  }
  const std::string outcome = migration_outcome(r);
  if (outcome == "ok" || outcome == "fell-back") exit_code() = kExitOk;
  else if (outcome == "rejected" || outcome == "MISMATCH" || r.verdict == checker::Verdict::kRefuted)
    exit_code() = kExitRefuted;
  else exit_code() = kExitError;
}

// baton migrate --backend kvm: a real migration between this process and a vmm-worker.
void run_migrate_kvm(const MigrateCmd& o) {
  const MigrateOptions d;
  if (!o.sim.profile.empty() || o.sim.no_ad || o.mig.dirty != d.dirty || !o.mig.neighbour.empty() ||
      o.mig.at_insn != 0 || o.mig.fault != d.fault || !o.save.empty())
    return fail("--profile, --no-ad, --dirty, --neighbour, --at-insn, --fault and --save apply to --backend sim only");
  auto method = sim::method_from_string(o.method);
  if (!method) return fail("--method '" + o.method + "' is not one of local-lazy, precopy (on kvm)");
  auto opt = make_migration_options(o.mig);
  if (!opt) return fail(opt.error().message);
  opt->method = *method;
  if (!o.capture.empty())
    if (auto c = model::check_output_path(o.capture, o.force, "--capture"); !c) return fail(c.error().message);
  if (!o.trace.empty())
    if (auto c = model::check_output_path(o.trace, o.force, "--trace"); !c) return fail(c.error().message);
  const std::string device = hw::kvm_device();
  if (auto why = hw::kvm_unavailable_reason(device)) return fail(*why);
  auto image = make_guest_image(o.sim);
  if (!image) return fail(image.error().message);
  sim::KvmMigrationConfig kc;
  kc.device = device;
  kc.guest_name = o.sim.guest;
  kc.capture_path = o.capture;
  kc.overwrite_capture = o.force;
  kc.trace_path = o.trace;
  kc.overwrite_trace = o.force;
  kc.trace_params = {{"mem", o.sim.mem}, {"pages", o.sim.pages}, {"method", o.method},
                     {"at_sync", std::to_string(o.mig.at_sync)}};
  kc.timeout_ms = static_cast<int>(o.mig.timeout * 1000);
  if (const char* die = std::getenv("BATON_WORKER_DIE_AT")) kc.worker_die_at = die;  // tests
  const bool tty = isatty(fileno(stderr)) != 0 && !o.json_out;
  if (tty) opt->progress = [](const std::string& s) { std::fprintf(stderr, "  .. %s\n", s.c_str()); };
  auto r = sim::migrate_kvm(*image, kc, *opt);
  if (!r) return fail(r.error().message);
  report(o, *r);
}

void run_migrate(const MigrateCmd& o) {
  if (o.backend == "kvm") return run_migrate_kvm(o);
  if (o.backend != "sim") return fail("--backend '" + o.backend + "' is not one of sim, kvm");
  if (!o.capture.empty()) return fail("--capture applies to --backend kvm only");
  auto setup = make_sim_setup(o.sim);
  if (!setup) return fail(setup.error().message);
  auto method = sim::method_from_string(o.method);
  if (!method) return fail("--method '" + o.method + "' is not one of local-adopt, local-rebuild, local-lazy, precopy");
  auto opt = make_migration_options(o.mig);
  if (!opt) return fail(opt.error().message);
  opt->method = *method;
  sim::NeighbourOptions nb;
  if (auto r = make_neighbour(o.mig, o.sim, nb); !r) return fail(r.error().message);
  // Every output path is checked before the run.
  if (!o.trace.empty())
    if (auto r = model::check_output_path(o.trace, o.force, "--trace"); !r) return fail(r.error().message);
  if (!o.save.empty())
    for (const char* side : {".before.snap", ".after.snap"})
      if (auto r = model::check_output_path(o.save + side, o.force, "--save"); !r) return fail(r.error().message);
  setup->cfg.trace_path = o.trace;
  setup->cfg.trace_overwrite = o.force;
  setup->cfg.trace_params["method"] = o.method;
  setup->cfg.trace_params["at_sync"] = std::to_string(o.mig.at_sync);
  setup->cfg.trace_params.emplace("mem", o.sim.mem);
  setup->cfg.trace_params.emplace("pages", o.sim.pages);
  const bool tty = show_progress() && !o.json_out;
  if (tty) opt->progress = [](const std::string& s) { std::fprintf(stderr, "  .. %s\n", s.c_str()); };
  auto r = sim::migrate(setup->image, setup->cfg, *opt, nb);
  if (!r) return fail(r.error().message);
  if (!o.save.empty()) {
    // Both files of the pair appear, or neither does.
    if (!r->switched && r->after.eptp.raw() == 0)
      return fail("--save: the handover produced no after snapshot, so no pair was saved");
    if (auto w =
            model::save_snapshot_pair(r->before, o.save + ".before.snap", r->after, o.save + ".after.snap", o.force);
        !w)
      return fail("--save: " + w.error().message);
  }
  report(o, *r);
}

}  // namespace

void register_migrate(CLI::App& app) {
  auto o = std::make_shared<MigrateCmd>();
  CLI::App* c = app.add_subcommand(
      "migrate",
      "Run a guest on the simulator or KVM, hand it over to a new hypervisor instance, check and finish");
  add_sim_options(*c, o->sim);
  c->add_option("--method", o->method, "local-adopt, local-rebuild, local-lazy or precopy (kvm: local-lazy, precopy)")
      ->capture_default_str();
  c->add_option("--backend", o->backend,
                "sim, or kvm: a real migration on /dev/kvm from this process to a `baton vmm-worker` process")
      ->capture_default_str();
  c->add_option("--capture", o->capture,
                "kvm: capture both VMM processes' KVM events (tracefs, root) into this raw text file and prove "
                "no-copy from it");
  add_migrate_options(*c, o->mig);
  c->add_option("--trace", o->trace, "Write a trace (format v1) covering both instances to this file");
  c->add_option("--save", o->save, "Write the handover pair to PREFIX.before.snap and PREFIX.after.snap");
  c->add_flag("--force", o->force, "Replace existing --save, --trace and --capture files");
  c->add_flag("--json", o->json_out, "Print JSON");
  c->callback([o] { run_migrate(*o); });
}

}  // namespace baton::cli
