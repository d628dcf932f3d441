// Property names, and the checks of a handover pair or a single snapshot.
#include <chrono>

#include "baton/checker/check.hpp"

namespace baton::checker {

const char* to_string(Property p) {
  switch (p) {
    case Property::kEquivalence: return "equivalence";
    case Property::kRefinement: return "refinement";
    case Property::kConformance: return "conformance";
    case Property::kIsolation: return "isolation";
    case Property::kWellFormed: return "well-formedness";
    case Property::kVcpu: return "vcpu";
  }
  return "?";
}

std::optional<Property> property_from_string(std::string_view n) {
  if (n == "equivalence" || n == "equiv" || n == "eq") return Property::kEquivalence;
  if (n == "refinement" || n == "refine") return Property::kRefinement;
  if (n == "conformance" || n == "conform") return Property::kConformance;
  if (n == "isolation" || n == "iso") return Property::kIsolation;
  if (n == "well-formedness" || n == "wellformedness" || n == "well-formed" || n == "wellformed" || n == "wf")
    return Property::kWellFormed;
  if (n == "vcpu" || n == "vmcs") return Property::kVcpu;
  return std::nullopt;
}

Result<std::vector<Property>> parse_property_list(const std::string& list) {
  std::vector<Property> out;
  std::size_t pos = 0;
  while (pos <= list.size()) {
    const std::size_t comma = std::min(list.find(',', pos), list.size());
    std::string item = list.substr(pos, comma - pos);
    while (!item.empty() && item.front() == ' ') item.erase(item.begin());
    while (!item.empty() && item.back() == ' ') item.pop_back();
    if (item == "all") {
      out.assign(std::begin(kAllProperties), std::end(kAllProperties));
    } else if (!item.empty()) {
      auto p = property_from_string(item);
      if (!p)
        return make_error("unknown property '" + item +
                          "' (expected equivalence, refinement, conformance, isolation, well-formedness, vcpu or all)");
      bool seen = false;
      for (Property q : out) seen = seen || q == *p;
      if (!seen) out.push_back(*p);
    }
    pos = comma + 1;
  }
  if (out.empty()) return make_error("the property list is empty");
  return out;
}

const char* to_string(Verdict v) {
  switch (v) {
    case Verdict::kProven: return "proven";
    case Verdict::kRefuted: return "refuted";
    case Verdict::kUnknown: return "unknown";
  }
  return "?";
}

Verdict Report::overall() const {
  bool unknown = false;
  for (const PropertyResult& r : results) {
    if (r.verdict == Verdict::kRefuted) return Verdict::kRefuted;
    unknown = unknown || r.verdict == Verdict::kUnknown;
  }
  return unknown ? Verdict::kUnknown : Verdict::kProven;
}

TreeRef tree_of(const model::HandoverSnapshot& s, std::string name) {
  return TreeRef{std::move(name), s.eptp, &s.tables, s.ept_config};
}

std::vector<Property> default_handover_properties(const model::HandoverSnapshot& after) {
  auto it = after.meta.find("method");
  const bool lazy = it != after.meta.end() && it->second == "local-lazy";
  return {lazy ? Property::kRefinement : Property::kEquivalence, Property::kConformance, Property::kIsolation,
          Property::kWellFormed, Property::kVcpu};
}

std::vector<Property> spec_properties() {
  return {Property::kConformance, Property::kIsolation, Property::kWellFormed};
}

namespace {

// A property that could not run on this input: unknown, with the error as the reason.
PropertyResult errored(Property p, const Error& e) {
  PropertyResult r;
  r.property = p;
  r.verdict = Verdict::kUnknown;
  r.unknown_reason = "error: " + e.message;
  r.summary = r.unknown_reason;
  return r;
}

// Runs one single-tree property on a snapshot against its own spec.
PropertyResult run_single(Property p, const model::HandoverSnapshot& s, const TreeRef& t, const CheckOptions& opt) {
  Result<PropertyResult> r = make_error("not a single-tree property");
  switch (p) {
    case Property::kConformance: r = check_conformance(t, s.memslots, opt); break;
    case Property::kIsolation: r = check_isolation(t, s.owners, s.vm_id, opt); break;
    case Property::kWellFormed: r = check_wellformed(t, s.mmio, opt); break;
    default: break;
  }
  return r ? std::move(r).value() : errored(p, r.error());
}

// Seconds since `t0`.
double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

Result<Report> check_handover(const model::HandoverSnapshot& before, const model::HandoverSnapshot& after,
                              const std::vector<Property>& props, const CheckOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (std::string why = model::validate_snapshot(before); !why.empty()) return make_error("before: " + why);
  if (std::string why = model::validate_snapshot(after); !why.empty()) return make_error("after: " + why);
  if (before.eptp.raw() == 0) return make_error("before: the snapshot has no EPTP (it is 0)");
  if (after.eptp.raw() == 0) return make_error("after: the snapshot has no EPTP (it is 0)");
  if (before.ept_config.maxphyaddr != after.ept_config.maxphyaddr)
    return make_error("before has MAXPHYADDR " + std::to_string(before.ept_config.maxphyaddr) + " and after has " +
                      std::to_string(after.ept_config.maxphyaddr) + ": the trees translate different GPA widths");
  if (!(before.ept_config == after.ept_config))
    return make_error("before and after have different EPT capabilities (execute-only / mode-based execute)");
  if (before.vm_id != after.vm_id)
    return make_error("before is VM " + std::to_string(before.vm_id) + " and after is VM " +
                      std::to_string(after.vm_id));

  const TreeRef tb = tree_of(before, "before"), ta = tree_of(after, "after");
  Report rep;
  std::optional<Verdict> trees;  // the verdict that licenses a different EPTP root
  const bool lazy = after.meta.count("method") != 0 && after.meta.at("method") == "local-lazy";
  for (Property p : props) {
    switch (p) {
      case Property::kEquivalence: {
        auto r = check_equivalence(tb, ta, opt);
        rep.results.push_back(r ? std::move(r).value() : errored(p, r.error()));
        if (!lazy) trees = rep.results.back().verdict;
        break;
      }
      case Property::kRefinement: {
        auto r = check_refinement(tb, ta, after.memslots, opt);
        rep.results.push_back(r ? std::move(r).value() : errored(p, r.error()));
        if (lazy) trees = rep.results.back().verdict;
        break;
      }
      case Property::kVcpu: break;  // last: it needs the tree verdict
      default: rep.results.push_back(run_single(p, after, ta, opt)); break;
    }
  }
  for (Property p : props) {
    if (p != Property::kVcpu) continue;
    if (!trees && before.eptp.root() != after.eptp.root()) {
      // The root changed and the trees were not compared yet: compare them now.
      auto r = lazy ? check_refinement(tb, ta, after.memslots, opt) : check_equivalence(tb, ta, opt);
      trees = r ? r->verdict : Verdict::kUnknown;
    }
    auto r = check_vcpu(before, after, trees.value_or(Verdict::kUnknown), opt);
    rep.results.push_back(r ? std::move(r).value() : errored(p, r.error()));
  }
  rep.seconds = since(t0);
  return rep;
}

Result<Report> check_spec(const model::HandoverSnapshot& s, const std::vector<Property>& props,
                          const CheckOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  if (std::string why = model::validate_snapshot(s); !why.empty()) return make_error(why);
  if (s.eptp.raw() == 0) return make_error("the snapshot has no EPTP (it is 0)");
  const TreeRef t = tree_of(s, "snapshot");
  Report rep;
  for (Property p : props) {
    if (p == Property::kEquivalence || p == Property::kRefinement || p == Property::kVcpu)
      return make_error(std::string("--spec checks one snapshot; ") + to_string(p) + " needs a BEFORE and an AFTER");
    rep.results.push_back(run_single(p, s, t, opt));
  }
  rep.seconds = since(t0);
  return rep;
}

}  // namespace baton::checker
