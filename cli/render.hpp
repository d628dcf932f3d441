// Rendering of model values for people (tables) and machines (JSON), shared by subcommands.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/snapshot.hpp"

namespace baton::cli {

// A walk as JSON: outcome, translation or fault details, and the path of entries.
nlohmann::json walk_json(const model::WalkResult& w, model::Gpa gpa, model::Access access, const model::EptConfig& cfg);
// A mapping run as JSON.
nlohmann::json run_json(const model::MappingRun& r);
// A summary of a snapshot (memslots, EPTP, table pages, vCPUs, owners) as JSON.
nlohmann::json snapshot_summary_json(const model::HandoverSnapshot& s);
// A summary of a snapshot for people.
std::string snapshot_summary_text(const model::HandoverSnapshot& s);

}  // namespace baton::cli
