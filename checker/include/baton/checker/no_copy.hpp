// The no-copy property of a local migration: every guest frame mapped by both the source VM
// and the destination VM maps to the same host frame, so no guest memory was copied.
//
// The inputs are two gfn->pfn maps in normal form (model::MappingSet, built for example from a
// trace by traces::to_mapping_set). Only translated runs count; permissions, memory types and
// misconfigured or unknown runs play no part. Z3 decides the property (docs/checker.md,
// "No-copy"); a refutation names a gfn and both host frames, confirmed concretely.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "baton/checker/check.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/result.hpp"

namespace baton::checker {

// How to decide the no-copy property.
struct NoCopyOptions {
  double timeout_s = 60.0;
  // true: sweep both run lists into overlap segments (each a linear relation pfn = gfn + delta)
  // and ask Z3 about batches of segments; false: one formula over both whole maps as
  // if-then-else chains (small maps only).
  bool decompose = true;
  std::size_t segments_per_query = 512;
};

// A gfn mapped by both VMs to different host frames.
struct NoCopyCounterexample {
  std::uint64_t gfn = 0;
  std::uint64_t source_pfn = 0;
  std::uint64_t dest_pfn = 0;
  bool confirmed_concretely = false;  // a direct lookup in both maps shows the same difference
};

// The verdict of the no-copy property.
struct NoCopyResult {
  Verdict verdict = Verdict::kUnknown;
  double seconds = 0;
  std::string summary;                 // one line for people
  std::uint64_t source_frames = 0;     // gfns the source maps
  std::uint64_t dest_frames = 0;       // gfns the destination maps
  std::uint64_t shared_frames = 0;     // gfns both map (the property's domain)
  std::uint64_t segments = 0;          // overlap segments (decomposed) or runs (monolithic)
  std::uint64_t z3_queries = 0;
  std::optional<NoCopyCounterexample> counterexample;
  std::string unknown_reason;
};

// Proves or refutes that every gfn mapped by both sets maps to the same pfn; unknown (never
// proven) when no gfn is mapped by both. Errors when a mapped run is not 4 KiB aligned.
Result<NoCopyResult> check_no_copy(const model::MappingSet& source, const model::MappingSet& dest,
                                   const NoCopyOptions& opt = {});

// The same property decided without Z3 (the cross-check): the lowest shared gfn whose pfns
// differ, or nullopt when it holds.
Result<std::optional<NoCopyCounterexample>> concrete_no_copy(const model::MappingSet& source,
                                                             const model::MappingSet& dest);

}  // namespace baton::checker
