// Options shared by `baton migrate` and `baton compare`: the simulator set-up (--mem, --pages,
// ...) and the migration (--at-sync, --fault, --policy, precopy limits, ...).
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "baton/sim/migration.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

// Migration options as typed on the command line.
struct MigrateOptions {
  std::uint32_t at_sync = 1;
  std::uint64_t at_insn = 0;
  std::string fault = "none";
  std::string policy = "reject";
  std::string dirty = "pml";
  unsigned max_rounds = 8;
  std::uint64_t converge_pages = 256;
  double downtime_limit_ms = 300;
  std::uint64_t window = 2'000'000;
  bool no_reference = false;
  bool no_verify = false;
  std::string neighbour;
  std::uint64_t budget = 4'000'000'000ull;
  double timeout = 60;
};

// Adds GUEST, --param, --mem, --pages, --profile, --no-ad.
void add_sim_options(CLI::App& c, SimOptions& o);
// Adds the migration options.
void add_migrate_options(CLI::App& c, MigrateOptions& o);
// Turns them into engine options (the method is set by the caller).
Result<sim::MigrationOptions> make_migration_options(const MigrateOptions& o);
// Builds the co-located guest of --neighbour (same memory and pages as the migrating one).
Result<void> make_neighbour(const MigrateOptions& o, const SimOptions& s, sim::NeighbourOptions& out);

}  // namespace baton::cli
