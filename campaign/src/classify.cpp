// Outcomes of one injection: what the checker, the hypervisor and the guest did, with the
// evidence, and the JSON line of a result.
#include <nlohmann/json.hpp>

#include "baton/campaign/campaign.hpp"
#include "baton/model/mapping_set.hpp"
#include "classify.hpp"

namespace baton::campaign {

using nlohmann::json;

namespace {

std::string hex(std::uint64_t v) {
  char b[24];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

}  // namespace

std::string foreign_frame(const model::HandoverSnapshot& s) {
  auto set = model::MappingSet::from_tree(s.eptp, s.tables, s.ept_config);
  if (!set) return "";
  for (const model::MappingRun& r : set->runs()) {
    if (r.kind != model::RunKind::kMapped) continue;
    const model::Hfn end = model::hfn_of(r.hpa + r.size);
    for (model::Hfn f = model::hfn_of(r.hpa); f.value < end.value;) {
      const model::OwnerRange o = s.owners.owner_of(f);
      if (o.kind != model::OwnerKind::kGuestRam || o.vm != s.vm_id)
        return "GPA " + hex(r.gpa.value + ((f.value - model::hfn_of(r.hpa).value) << model::kPageShift)) +
               " maps host frame " + hex(f.value) + ", owned by " + model::to_string(o.kind) +
               (o.kind == model::OwnerKind::kGuestRam || o.kind == model::OwnerKind::kOtherVm ? " of VM " + std::to_string(o.vm) : "");
      f.value = std::max(f.value + 1, std::min(o.end().value, end.value));
    }
  }
  return "";
}

PolicyOutcome classify(const sim::MigrationResult& r, bool tree_fault) {
  PolicyOutcome o;
  // The guest's own fate, on whichever instance ran it to the end.
  const sim::RunEvent& e = r.final_event;
  switch (e.reason) {
    case sim::StopReason::kExited:
      if (r.checksum_ok()) {
        o.guest = "ok";
      } else {
        o.guest = "sdc";
        o.evidence = "checksum " + (r.checksum ? hex(*r.checksum) : std::string("none")) + ", expected " +
                     (r.expected ? hex(*r.expected) : std::string("?"));
      }
      break;
    case sim::StopReason::kHang:
      o.guest = "hang";
      o.evidence = "no exit within the instruction budget";
      break;
    case sim::StopReason::kEntryFailure:
      o.guest = "detected-hypervisor";
      o.evidence = e.detail;
      break;
    case sim::StopReason::kError:
      o.guest = e.detail.find("misconfig") != std::string::npos ? "detected-hypervisor" : "crash";
      o.evidence = e.detail;
      break;
    default:
      o.guest = "crash";
      o.evidence = std::string(sim::to_string(e.reason)) + (e.detail.empty() ? "" : ": " + e.detail);
      break;
  }
  if (tree_fault && o.guest != "detected-hypervisor") {
    // The tree the guest ran on after the decision: the old one, or the new instance's.
    const std::string f = foreign_frame(r.switched ? r.after : r.before);
    if (!f.empty()) {
      o.guest = "isolation-breach";
      o.evidence = f;
    }
  }
  for (const sim::CheckLine& l : r.checks)
    if (l.verdict != checker::Verdict::kProven && l.name.find("(fallback)") == std::string::npos)
      o.properties.push_back(l.name + (l.verdict == checker::Verdict::kUnknown ? " (unknown)" : ""));
  if (r.rejected || r.fell_back) {
    const bool refused = !r.checks.empty() && r.checks.front().name == "handover";
    o.outcome = refused ? "detected-hypervisor" : "detected-checker";
    std::string first;
    for (const sim::CheckLine& l : r.checks)
      if (l.verdict != checker::Verdict::kProven) {
        first = l.name + ": " + l.summary;
        break;
      }
    o.evidence = (r.fell_back ? "fell back to local-rebuild; " : "handover rejected; ") + first +
                 (o.evidence.empty() ? "" : "; guest " + o.guest + ": " + o.evidence);
  } else {
    o.outcome = o.guest == "ok" ? "masked" : o.guest;
  }
  if (o.evidence.size() > 400) o.evidence = o.evidence.substr(0, 397) + "...";
  return o;
}

PolicyOutcome error_outcome(const std::string& why, const char* outcome) {
  PolicyOutcome o;
  o.outcome = o.guest = outcome;
  o.evidence = why.size() > 400 ? why.substr(0, 397) + "..." : why;
  return o;
}

std::string outcome_json(const PolicyOutcome& o) {
  return json{{"outcome", o.outcome}, {"guest", o.guest}, {"properties", o.properties}, {"evidence", o.evidence}}.dump();
}

Result<PolicyOutcome> parse_outcome_json(const std::string& s) {
  try {
    const json j = json::parse(s);
    PolicyOutcome o;
    o.outcome = j.at("outcome");
    o.guest = j.at("guest");
    o.properties = j.at("properties").get<std::vector<std::string>>();
    o.evidence = j.at("evidence");
    return o;
  } catch (const std::exception& e) {
    return make_error(std::string("malformed outcome (") + e.what() + ")");
  }
}

std::string result_line(const InjectionResult& r) {
  json j;
  j["i"] = r.index;
  j["id"] = r.id;
  j["fault"] = r.fault;
  for (const auto& [name, o] : r.policy) j["policy"][name] = json::parse(outcome_json(o));
  j["wall_ms"] = static_cast<double>(static_cast<long long>(r.wall_ms * 100)) / 100;
  return j.dump();
}

Result<InjectionResult> parse_result_line(const std::string& line) {
  try {
    const json j = json::parse(line);
    InjectionResult r;
    r.index = j.at("i");
    r.id = j.at("id");
    r.fault = j.at("fault");
    for (const auto& [name, o] : j.at("policy").items()) {
      auto p = parse_outcome_json(o.dump());
      if (!p) return p.error();
      r.policy[name] = *p;
    }
    if (r.policy.count("reject") == 0) return make_error("result without the reject policy");
    r.wall_ms = j.value("wall_ms", 0.0);
    return r;
  } catch (const std::exception& e) {
    return make_error(std::string("malformed result line (") + e.what() + ")");
  }
}

}  // namespace baton::campaign
