// EptBuilder: writes SDM-format EPT trees into host frames.
//
// Used by the simulator's MMU, by `baton snapshot make-sample`, and by tests. Table frames
// come from a caller-supplied allocator, so the owner map can record them.
#pragma once

#include <cstdint>
#include <functional>

#include "baton/model/addr.hpp"
#include "baton/model/ept_entry.hpp"
#include "baton/model/phys_mem.hpp"
#include "baton/model/result.hpp"

namespace baton::model {

class EptBuilder {
 public:
  using FrameAllocator = std::function<Hfn()>;

  // Creates a builder with a fresh, empty root table.
  EptBuilder(FrameStore& mem, FrameAllocator alloc, EptConfig cfg = {});
  // Adopts an existing root table.
  EptBuilder(FrameStore& mem, FrameAllocator alloc, Hfn root, EptConfig cfg = {});

  Hfn root() const { return root_; }
  // Returns an EPTP for this tree.
  Eptp eptp(bool ad) const { return Eptp::make(root_, ad); }

  // Installs one leaf at `level` (1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB) for an aligned GPA/HPA,
  // creating intermediate tables with RWX. Replaces a leaf at the same level. Fails if a
  // larger leaf covers the range, a table sits where the leaf goes, or addresses are misaligned.
  Result<void> map_leaf(Gpa gpa, Hpa hpa, unsigned level, Perms perms, unsigned memtype = 6, bool ipat = false);
  // Maps [gpa, gpa + size) to [hpa, ...) using the largest leaves up to `max_level` that
  // alignment allows. Returns the number of leaves written.
  Result<std::uint64_t> map_range(Gpa gpa, Hpa hpa, std::uint64_t size, Perms perms, unsigned max_level,
                                  unsigned memtype = 6);
  // Writes a raw entry at a level for a GPA, creating tables above it. For MMIO markers and
  // fault injection.
  Result<void> set_entry(Gpa gpa, unsigned level, EptEntry e);
  // Returns the host address of the entry for `gpa` at `level`, if the tables above exist.
  Result<Hpa> entry_addr(Gpa gpa, unsigned level) const;
  // Clears the entry that maps `gpa` at its leaf level; returns whether one was present.
  bool unmap(Gpa gpa);
  // Number of table frames allocated by this builder.
  std::uint64_t tables_allocated() const { return tables_; }

 private:
  // Returns the table at `level` that holds `gpa`'s entry, creating missing tables.
  Result<Hfn> table_for(Gpa gpa, unsigned level);

  FrameStore& mem_;
  FrameAllocator alloc_;
  EptConfig cfg_;
  Hfn root_;
  std::uint64_t tables_ = 0;
};

}  // namespace baton::model
