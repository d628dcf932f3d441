// Private helpers of the campaign library: outcome classification and its JSON.
#pragma once

#include <string>

#include "baton/campaign/campaign.hpp"

namespace baton::campaign {

// Classifies one finished migration; `tree_fault`: the fault may have changed the EPT, so look
// for frames the VM does not own in the tree the guest ran on.
PolicyOutcome classify(const sim::MigrationResult& r, bool tree_fault);
// An outcome that is only an error or a process death, with its reason.
PolicyOutcome error_outcome(const std::string& why, const char* outcome = "error");
// The first GPA the snapshot's tree maps to a host frame the VM does not own ("" when none).
std::string foreign_frame(const model::HandoverSnapshot& s);
// One policy outcome as JSON text, and back.
std::string outcome_json(const PolicyOutcome& o);
Result<PolicyOutcome> parse_outcome_json(const std::string& s);

}  // namespace baton::campaign
