// The EPT bit-relevance study: flip each of the 64 bits of entries sampled at every level and
// kind, prove or refute equivalence with the original tree, and tabulate which bits matter.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "baton/checker/check.hpp"
#include "baton/model/ept_entry.hpp"

namespace baton::checker {

// The kinds of entry the study samples, one table row each.
enum class SampleKind : std::uint8_t {
  kPml4Table,
  kPdptTable,
  kPdTable,
  kLeaf1G,
  kLeaf2M,
  kLeaf4K,
  kEmptyPml4,
  kEmptyPdpt,
  kEmptyPd,
  kEmptyPt,
};
// Names a sample kind ("PML4E -> PDPT", "PTE 4K leaf", "PDE empty", ...).
const char* to_string(SampleKind k);
// The SDM level of entries of a kind (4 = PML4E ... 1 = PTE).
unsigned level_of(SampleKind k);

// The classification of one (kind, bit) cell over its samples.
struct BitCell {
  unsigned harmful = 0;   // refuted: some GPA changes outcome
  unsigned harmless = 0;  // proven equivalent
  unsigned unknown = 0;   // Z3 could not decide in time
  std::string effect;     // the most common effect of a harmful flip ("misconfig", "hpa", "perms", ...)
};

// Options of the study.
struct BitRelevanceOptions {
  unsigned samples = 4;  // entries per kind
  std::uint64_t seed = 1;
  model::EptConfig cfg;                                         // MAXPHYADDR decides which address bits are reserved
  double timeout_s = 10.0;                                      // per check
  std::uint64_t bits = ~std::uint64_t{0};                       // which bits to flip (tests use a subset)
  std::function<void(unsigned done, unsigned total)> progress;  // optional
};

// The study's table: cells[kind][bit].
struct BitRelevanceTable {
  BitRelevanceOptions options;
  std::vector<SampleKind> kinds;
  std::vector<std::array<BitCell, 64>> cells;
  unsigned checks = 0;
  double seconds = 0;
  bool concrete_agrees = true;  // the concrete path agreed with every verdict
};

// Runs the study on a tree holding every kind of entry.
Result<BitRelevanceTable> run_bit_relevance(const BitRelevanceOptions& opt);
// Renders the table as the markdown of docs/ept-bit-relevance.md.
std::string to_markdown(const BitRelevanceTable& t);
// Renders the table as JSON.
std::string to_json(const BitRelevanceTable& t);

}  // namespace baton::checker
