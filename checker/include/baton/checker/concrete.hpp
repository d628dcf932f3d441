// The concrete cross-check: the same properties decided without Z3, from MappingSet normal
// forms and direct comparisons. Tests require it to agree with the Z3 path on every input.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "baton/checker/check.hpp"
#include "baton/model/mapping_set.hpp"

namespace baton::checker {

// What the concrete path concluded, with one GPA where the property fails.
struct ConcreteVerdict {
  bool holds = true;
  std::optional<model::Gpa> witness;
  std::string detail;  // one line: the first failing run or frame
};

// The runs of a tree's normal form below 2^min(MAXPHYADDR, 48), clipped there. Errors on cycles.
Result<model::MappingSet> normal_form(const TreeRef& t);

// Each decides its property concretely. A run of kind unknown (an absent table frame) is a failure,
// because that frame can hold anything.
Result<ConcreteVerdict> concrete_equivalence(const TreeRef& a, const TreeRef& b);
Result<ConcreteVerdict> concrete_refinement(const TreeRef& before, const TreeRef& after,
                                            const std::vector<model::Memslot>& spec);
Result<ConcreteVerdict> concrete_conformance(const TreeRef& t, const std::vector<model::Memslot>& slots);
Result<ConcreteVerdict> concrete_isolation(const TreeRef& t, const model::OwnerMap& owners, std::uint32_t vm);
Result<ConcreteVerdict> concrete_wellformed(const TreeRef& t, const std::vector<model::GpaRange>& mmio);

}  // namespace baton::checker
