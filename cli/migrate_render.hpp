// Rendering of migration results (baton migrate, baton compare): text for people, JSON.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "baton/sim/migration.hpp"

namespace baton::cli {

// One migration as JSON (schema in docs/user-guide.md).
nlohmann::json migration_json(const sim::MigrationResult& r);
// One migration for people: timeline, metrics, verdicts with counterexamples, outcome.
std::string migration_text(const sim::MigrationResult& r);
// Returns whether the slowdown after the switch was measured: the guest ran on the new instance
// for a window and the unmigrated reference ran too. Otherwise it is "n/a", not 0 (0 means
// "measured: no slowdown").
bool slowdown_measured(const sim::MigrationResult& r);
// The one-word outcome of a migration: "ok", "rejected", "fell-back", "MISMATCH", ...
std::string migration_outcome(const sim::MigrationResult& r);

}  // namespace baton::cli
