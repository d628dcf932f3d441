// Spec trees: the EPT a memslot table prescribes, built concretely so the checker can compare a
// handed-over tree against it; and leaf relabelling, which moves a tree's translations through
// a copy map (old host frames to new ones) so a pre-copy handover can be checked as a relation.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "baton/model/ept_entry.hpp"
#include "baton/model/memslot.hpp"
#include "baton/model/phys_mem.hpp"
#include "baton/model/result.hpp"

namespace baton::model {

// Builds into `out` the tree the memslots prescribe: every page of every slot mapped to its
// backing with the slot's maximum permissions (write-back), in the largest leaves up to
// `max_level` that alignment allows, and every MMIO page marked misconfigured (W+X without R,
// as KVM does). Table frames are numbered from `first_frame`. Returns the tree's EPTP.
Result<Eptp> build_spec_tree(const std::vector<Memslot>& slots, const std::vector<GpaRange>& mmio, unsigned max_level,
                             bool ad, const EptConfig& cfg, FrameStore& out, Hfn first_frame = Hfn{1});

// Rewrites, in place, the frame address of every present leaf reachable from `eptp` in `mem`
// as `move(leaf base, level)` gives it; every other bit is kept. Returns the leaves visited.
// A move that returns a misaligned base for a large leaf is an error.
Result<std::uint64_t> relabel_leaves(Eptp eptp, FrameStore& mem, const EptConfig& cfg,
                                     const std::function<Hpa(Hpa, unsigned)>& move);
// The general form: `rewrite(leaf, level, gpa of the leaf)` returns the new entry.
Result<std::uint64_t> rewrite_leaves(Eptp eptp, FrameStore& mem, const EptConfig& cfg,
                                     const std::function<Result<EptEntry>(EptEntry, unsigned, Gpa)>& rewrite);

}  // namespace baton::model
