// Options shared by `baton migrate` and `baton compare`.
#include "migrate_setup.hpp"

namespace baton::cli {

void add_sim_options(CLI::App& c, SimOptions& o) {
  c.add_option("guest", o.guest, "Built-in guest (see `baton guests list`)")->required();
  c.add_option("--param,-p", o.params, "Guest parameter key=value (repeatable)");
  c.add_option("--mem", o.mem, "Guest memory size")->capture_default_str();
  c.add_option("--pages", o.pages, "Largest EPT (and guest) leaf: 4k, 2m, 1g")->capture_default_str();
  c.add_option("--profile", o.profile, "Cost profile (JSON, see docs/cost-model.md)");
  c.add_flag("--no-ad", o.no_ad, "Disable EPT accessed/dirty flags");
}

void add_migrate_options(CLI::App& c, MigrateOptions& o) {
  c.add_option("--at-sync", o.at_sync, "Migrate when the guest announces this sync point")->capture_default_str();
  c.add_option("--at-insn", o.at_insn, "Migrate once this many instructions have retired (overrides --at-sync)")
      ->check(CLI::Range(std::uint64_t{1}, ~std::uint64_t{0}));
  c.add_option("--fault", o.fault,
               "Plant a fault in the old instance: none, ept[:GPA[:BIT[:LEVEL]]], vmcs[:FIELD[:BIT]], "
               "memslot[:ID[:FIELD[:BIT]]], reg[:NAME[:BIT]], ram:GPA[:BIT] (prefix stuck0: or stuck1: to force the bit)")
      ->capture_default_str();
  c.add_option("--policy", o.policy, "When the checker refutes: reject, fallback (rebuild) or accept")
      ->capture_default_str();
  c.add_option("--dirty", o.dirty, "Precopy dirty tracking: pml or wp (precopy needs one, so not off as in run)")
      ->capture_default_str();
  c.add_option("--max-rounds", o.max_rounds, "Precopy rounds before stop-and-copy")->capture_default_str();
  c.add_option("--converge-pages", o.converge_pages, "Precopy stops early once a round leaves this few dirty pages")
      ->capture_default_str();
  c.add_option("--downtime-limit", o.downtime_limit_ms,
               "KVM precopy stops once the dirty pages left could be sent within this many ms at the measured bandwidth "
               "(QEMU's downtime-limit)")
      ->capture_default_str();
  c.add_option("--window", o.window, "Instructions after the switch compared with the unmigrated run")
      ->capture_default_str();
  c.add_flag("--no-reference", o.no_reference, "Skip the unmigrated reference run (no slowdown figure)");
  c.add_flag("--no-verify", o.no_verify, "Do not run the checker on the handover");
  c.add_option("--neighbour", o.neighbour, "Run this built-in guest as a co-located VM and report the interference");
  c.add_option("--budget", o.budget,
               "Instruction budget of each run (source, destination, reference); a guest still running then is a hang")
      ->capture_default_str();
  c.add_option("--timeout", o.timeout, "Seconds per checker property")->capture_default_str();
}

Result<sim::MigrationOptions> make_migration_options(const MigrateOptions& o) {
  sim::MigrationOptions m;
  m.at_sync = o.at_sync;
  m.at_insn = o.at_insn;
  auto f = sim::parse_fault(o.fault);
  if (!f) return make_error("--fault: " + f.error().message);
  m.fault = *f;
  auto p = sim::policy_from_string(o.policy);
  if (!p) return make_error("--policy '" + o.policy + "' is not one of reject, fallback, accept");
  m.policy = *p;
  if (o.dirty == "pml") m.dirty = sim::DirtyMode::kPml;
  else if (o.dirty == "wp") m.dirty = sim::DirtyMode::kWriteProtect;
  else return make_error("--dirty '" + o.dirty + "' is not one of pml, wp");
  if (o.max_rounds == 0 || o.max_rounds > 1000) return make_error("--max-rounds must be 1..1000");
  m.max_rounds = o.max_rounds;
  m.converge_pages = o.converge_pages;
  if (!(o.downtime_limit_ms >= 0 && o.downtime_limit_ms <= 3'600'000)) return make_error("--downtime-limit must be 0..3600000 ms");
  m.downtime_limit_ms = o.downtime_limit_ms;
  m.slowdown_window = o.window;
  m.reference = !o.no_reference;
  m.verify = !o.no_verify;
  if (o.budget == 0) return make_error("--budget must be positive");
  m.budget = o.budget;
  if (!(o.timeout > 0)) return make_error("--timeout must be positive");
  m.check.timeout_s = o.timeout;
  return m;
}

Result<void> make_neighbour(const MigrateOptions& o, const SimOptions& s, sim::NeighbourOptions& out) {
  if (o.neighbour.empty()) return ok_result();
  SimOptions n = s;
  n.guest = o.neighbour;
  n.params.clear();
  auto setup = make_sim_setup(n);
  if (!setup) return make_error("--neighbour: " + setup.error().message);
  out.image = std::move(setup->image);
  out.guest_name = o.neighbour;
  return ok_result();
}

}  // namespace baton::cli
