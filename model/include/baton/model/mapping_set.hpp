// MappingSet: the normal form of an EPT tree, after pKVM's "maplets".
//
// A sorted list of coalesced runs, each a GPA range with one walk outcome: translated to a
// contiguous HPA range with effective permissions and memory type, misconfigured, or
// unknown (the walk reached a frame that is not in memory). Not-present ranges are absent.
// Page size plays no part: a 2 MiB leaf and the same range as 512 contiguous 4 KiB leaves
// normalise to the same run.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "baton/model/addr.hpp"
#include "baton/model/ept_entry.hpp"
#include "baton/model/phys_mem.hpp"
#include "baton/model/result.hpp"

namespace baton::model {

// The outcome a run stands for.
enum class RunKind : std::uint8_t { kMapped, kMisconfig, kUnknown };
// Names a run kind.
const char* to_string(RunKind k);

// One run: [gpa, gpa + size) with one outcome.
struct MappingRun {
  Gpa gpa;
  std::uint64_t size = 0;
  RunKind kind = RunKind::kMapped;
  Hpa hpa;                // host address of `gpa` (kMapped only)
  Perms perms;            // effective permissions, the AND over levels (kMapped only)
  std::uint8_t memtype = 0;  // leaf memory type (kMapped only)
  bool ipat = false;      // leaf ignore-PAT (kMapped only)

  Gpa end() const { return gpa + size; }
  // Returns whether two runs give the same outcome per address (ignoring where they start).
  bool same_outcome_shape(const MappingRun& o) const {
    return kind == o.kind && perms == o.perms && memtype == o.memtype && ipat == o.ipat;
  }
  // Returns the host address this run gives to a GPA inside it.
  Hpa hpa_at(Gpa a) const { return hpa + (a - gpa); }
  friend bool operator==(const MappingRun&, const MappingRun&) = default;
};

// A GPA range where two mapping sets disagree, with the outcome of each at its start.
struct MappingDiff {
  Gpa gpa;
  std::uint64_t size = 0;
  std::optional<MappingRun> a;  // run of the first set covering `gpa`, if any
  std::optional<MappingRun> b;  // run of the second set covering `gpa`, if any
};

// Counts of what a tree traversal found.
struct TreeStats {
  std::uint64_t tables = 0;                // paging-structure pages visited (with multiplicity, saturating)
  std::uint64_t leaves[4] = {0, 0, 0, 0};  // index 1..3 = 4K, 2M, 1G leaves
  std::uint64_t misconfigured = 0;
  std::uint64_t absent_frames = 0;
};

// The most runs a normal form may hold (320 MiB of runs): a tree expressing more, which takes
// shared or cyclic table pointers, is refused with one error line rather than exhausting memory.
// A 64 GiB tree of 4 KiB leaves with a random half of its pages mapped holds ~4M runs.
inline constexpr std::uint64_t kMaxNormalFormRuns = std::uint64_t{1} << 23;

class MappingSet {
 public:
  MappingSet() = default;

  // Normalises the tree under `eptp`, following every walk as the SDM does: four bounded steps,
  // so a table that points to itself or to an ancestor is read again one level lower (legal:
  // a self-referencing PML4 maps the tables themselves). A table page reached along several
  // walks is normalised once per permission context and replayed. Fails with one line when the
  // normal form would exceed `max_runs` runs.
  static Result<MappingSet> from_tree(Eptp eptp, const PhysicalMemory& mem, const EptConfig& cfg = {},
                                      TreeStats* stats = nullptr, std::uint64_t max_runs = kMaxNormalFormRuns);

  // Appends a run that starts at or after the end of the last one, coalescing when possible.
  void append(const MappingRun& r);
  // Builds a set from runs in any order; overlapping runs are a caller error (returns Error).
  static Result<MappingSet> from_runs(std::vector<MappingRun> runs);

  const std::vector<MappingRun>& runs() const { return runs_; }
  bool empty() const { return runs_.empty(); }
  // Bytes covered by kMapped runs.
  std::uint64_t mapped_bytes() const;
  // Returns the run covering `a`, if any.
  std::optional<MappingRun> lookup(Gpa a) const;
  // Returns whether both sets give every GPA the same known outcome: an unknown run (absent
  // table frame) can hold anything, so a set with one is equal to no set, not even itself.
  bool equal(const MappingSet& o) const;
  // Lists the GPA ranges whose outcomes differ or are unknown on either side, coalesced.
  std::vector<MappingDiff> diff(const MappingSet& o) const;
  // Returns whether every run of this set appears with the same known outcome in `o`.
  bool is_subset_of(const MappingSet& o) const;

  // Returns whether both sets hold the same runs (the same normal form, unknown runs included).
  friend bool operator==(const MappingSet& a, const MappingSet& b) { return a.runs_ == b.runs_; }

 private:
  std::vector<MappingRun> runs_;
};

// Renders a run as one table line.
std::string describe(const MappingRun& r);

}  // namespace baton::model
