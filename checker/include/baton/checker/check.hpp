// The checker's contract: six properties of a handover, each proven, refuted (with a
// counterexample) or left unknown, over model values only. Z3 stays inside checker/src.
//
// Properties (docs/checker.md explains the encoding and its limits):
//   equivalence  every GPA has the same walk outcome in both trees
//   refinement   wherever the new tree maps, the old one maps the same way, inside the memslots
//   conformance  every translation lands on its memslot's frames with at most its permissions
//   isolation    only this VM's RAM is reachable; table frames are EPT-owned; no aliasing
//   well-formed  the EPTP is valid and misconfigurations appear only on declared MMIO
//   vcpu         guest state is preserved; TSC continuous; EPTP root changes only with proof
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "baton/model/addr.hpp"
#include "baton/model/ept_entry.hpp"
#include "baton/model/memslot.hpp"
#include "baton/model/phys_mem.hpp"
#include "baton/model/result.hpp"
#include "baton/model/snapshot.hpp"

namespace baton::checker {

// The six properties of issue 5.
enum class Property : std::uint8_t { kEquivalence, kRefinement, kConformance, kIsolation, kWellFormed, kVcpu };
inline constexpr Property kAllProperties[] = {Property::kEquivalence, Property::kRefinement, Property::kConformance,
                                              Property::kIsolation,   Property::kWellFormed, Property::kVcpu};
// Names a property as the CLI spells it ("equivalence", "well-formedness", ...).
const char* to_string(Property p);
// Parses a property name (also accepts short forms such as "wf", "equiv", "iso"); nullopt when unknown.
std::optional<Property> property_from_string(std::string_view name);
// Parses a comma-separated property list; "all" selects every property.
Result<std::vector<Property>> parse_property_list(const std::string& list);

// The verdict of one property. Unknown (a timeout or an unsupported input) is never a pass.
enum class Verdict : std::uint8_t { kProven, kRefuted, kUnknown };
// Names a verdict ("proven", "refuted", "unknown").
const char* to_string(Verdict v);

// One tree to check: its EPTP, the memory that holds its paging-structure pages, and the
// machine's EPT configuration. `mem` must outlive the check.
struct TreeRef {
  std::string name = "tree";  // shown in counterexamples: "before", "after", ...
  model::Eptp eptp;
  const model::PhysicalMemory* mem = nullptr;
  model::EptConfig cfg;
};

// One entry of a concrete walk, as shown in a counterexample.
struct WalkStepView {
  unsigned level = 0;
  std::uint64_t entry_addr = 0;
  std::uint64_t raw = 0;
  std::string text;  // model::describe() of the entry
};

// The concrete walk of one tree at the counterexample's GPA (model::walk), level by level.
struct WalkView {
  std::string tree;
  std::uint64_t gpa = 0;
  std::string outcome;  // "hpa 0x... rw- WB", "not mapped", "misconfigured", "unknown frame 0x..."
  std::vector<WalkStepView> steps;
  std::string text;  // model::describe() of the whole walk
};

// Why a property was refuted: a GPA (or two, for aliasing) with each tree's walk, or a field.
struct Counterexample {
  std::optional<model::Gpa> gpa;
  std::optional<model::Gpa> gpa2;  // the second GPA of an aliased frame
  std::string field;               // a vCPU/VMCS field or "eptp" when the problem is not a GPA
  std::string before;              // the field's value before (or the only value)
  std::string after;               // the field's value after
  std::string explanation;         // one sentence for people
  std::vector<WalkView> walks;
  bool confirmed_concretely = false;  // the concrete walks show the same violation
};

// How the decomposition split a check (docs/checker.md, "Decomposition").
struct DecompositionStats {
  std::uint64_t pages = 0;       // table pages (or page pairs) visited
  std::uint64_t identical = 0;   // entries discharged as identical modulo ignored bits (hash-consing)
  std::uint64_t trivial = 0;     // regions true by shape alone (nothing mapped, nothing to check)
  std::uint64_t linear = 0;      // uniform regions reduced to one linear relation hpa = base + offset
  std::uint64_t linear_cpp = 0;  // of those, discharged by C++ arithmetic because there were too many for Z3
  std::uint64_t faithful = 0;    // irregular regions encoded as the faithful SDM walk over their pages
  std::uint64_t z3_queries = 0;
  double decompose_s = 0;  // time spent splitting
  double z3_s = 0;         // time spent in Z3 (encoding and solving)
};

// The result of one property.
struct PropertyResult {
  Property property = Property::kEquivalence;
  Verdict verdict = Verdict::kUnknown;
  double seconds = 0;
  std::string summary;  // one line for people
  std::optional<Counterexample> counterexample;
  std::string unknown_reason;  // Z3's reason_unknown() or why the check could not decide
  DecompositionStats stats;
  std::string smt2;  // the refuted/unknown query (when CheckOptions::keep_smt2)
};

// Options of a check.
struct CheckOptions {
  double timeout_s = 60.0;              // per property; exceeding it gives kUnknown
  unsigned rlimit = 0;                  // Z3 resource limit per query (0: none); deterministic, unlike time
  bool keep_smt2 = false;               // keep the SMT-LIB2 text of refuted/unknown queries
  bool decompose = true;                // false: one faithful formula over whole trees (small trees only)
  std::size_t faithful_per_query = 32;  // irregular regions per Z3 query
  std::size_t linear_per_query = 512;   // linear relations per Z3 query
  std::size_t linear_z3_cap = 4096;     // above this many linear relations C++ discharges the true ones
  std::size_t page_collapse = 16;       // entry regions of one page pair before the page becomes one region
  // Work bounds of the split. A table page reached along several walks (shared, or a table that
  // points back at an ancestor) is split again at each place unless its part was discharged
  // whole; past these bounds the split stops and, unless Z3 refutes the regions found so far,
  // the verdict is unknown with the reason (never a proof).
  std::uint64_t max_split_pages = std::uint64_t{1} << 22;  // table pages (or page pairs) visited
  std::size_t max_regions = std::size_t{1} << 20;          // regions (and mapped pieces / 8) kept for Z3
};

// The results of several properties.
struct Report {
  std::vector<PropertyResult> results;
  double seconds = 0;
  // Refuted if any property is refuted, else unknown if any is unknown, else proven.
  Verdict overall() const;
};

// Property 1: both trees give every GPA below 2^min(MAXPHYADDR, 48) the same outcome.
Result<PropertyResult> check_equivalence(const TreeRef& a, const TreeRef& b, const CheckOptions& opt = {});
// Property 2: wherever `after` translates (or is misconfigured), `before` does the same, and
// every translation of `after` conforms to `spec`.
Result<PropertyResult> check_refinement(const TreeRef& before, const TreeRef& after,
                                        const std::vector<model::Memslot>& spec, const CheckOptions& opt = {});
// Property 3: every translation falls in a memslot, at the slot's offset, with no more than its permissions.
Result<PropertyResult> check_conformance(const TreeRef& t, const std::vector<model::Memslot>& slots,
                                         const CheckOptions& opt = {});
// Property 4: every translation lands in RAM owned by `vm`, every table frame on a walk is an
// EPT table of `vm`, and no two guest frames share one host frame.
Result<PropertyResult> check_isolation(const TreeRef& t, const model::OwnerMap& owners, std::uint32_t vm,
                                       const CheckOptions& opt = {});
// Property 5: the EPTP is valid and misconfigured outcomes occur only inside `mmio`.
Result<PropertyResult> check_wellformed(const TreeRef& t, const std::vector<model::GpaRange>& mmio,
                                        const CheckOptions& opt = {});
// The meta["ept"] value of a KVM handover snapshot: it has no EPTP (eptp 0) because KVM builds
// and owns the EPT on both sides; check_vcpu then compares everything but the EPTP.
inline constexpr const char* kEptOwnedByKvm = "owned-by-kvm";
// Property 6: vCPU and VMCS guest state are preserved with the declared allowed differences.
// `trees` is the verdict of the tree comparison that licenses a different EPTP root.
Result<PropertyResult> check_vcpu(const model::HandoverSnapshot& before, const model::HandoverSnapshot& after,
                                  Verdict trees, const CheckOptions& opt = {});

// Keeps one Z3 context per thread and reuses it for every later check on that thread (on), or
// gives every check a context of its own (off, the default). Creating a context costs
// milliseconds, more than many checks; a campaign warms one before it forks each injection.
void reuse_z3_contexts(bool on);
// Creates the calling thread's kept context now, when reuse is on.
void warm_z3_context();

// The tree of a snapshot as a TreeRef named `name`.
TreeRef tree_of(const model::HandoverSnapshot& s, std::string name);
// The properties `baton check BEFORE AFTER` runs by default: refinement replaces equivalence
// when the after snapshot records meta["method"] == "local-lazy".
std::vector<Property> default_handover_properties(const model::HandoverSnapshot& after);
// The properties `baton check --spec` runs: conformance, isolation, well-formedness.
std::vector<Property> spec_properties();

// Checks a handover pair. Single-tree properties are checked on `after` against its own spec.
Result<Report> check_handover(const model::HandoverSnapshot& before, const model::HandoverSnapshot& after,
                              const std::vector<Property>& props, const CheckOptions& opt = {});
// Checks one snapshot against its own spec (conformance, isolation, well-formedness only).
Result<Report> check_spec(const model::HandoverSnapshot& s, const std::vector<Property>& props,
                          const CheckOptions& opt = {});

}  // namespace baton::checker
