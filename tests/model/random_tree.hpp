// Random EPT trees for property tests: a mix of 4K/2M/1G leaves, permissions, memory types,
// misconfigured and not-present entries, concentrated in a small GPA window so that random
// addresses hit them.
#pragma once

#include <random>

#include "baton/model/ept_builder.hpp"
#include "baton/model/ept_entry.hpp"
#include "baton/model/phys_mem.hpp"

namespace baton::testing {

struct RandomTree {
  model::FrameStore mem;
  model::Eptp eptp;
  std::uint64_t window = 0;  // GPAs of interest are below this
};

// Builds a random tree covering [0, 8 GiB) sparsely. Table frames are allocated at 16 GiB up.
inline RandomTree make_random_tree(std::uint64_t seed, bool allow_misconfig = true) {
  using namespace model;
  RandomTree t;
  t.window = std::uint64_t{8} << 30;
  std::mt19937_64 rng(seed);
  std::uint64_t next_table = (std::uint64_t{16} << 30) >> kPageShift;
  EptBuilder b(t.mem, [&] { return Hfn{next_table++}; });
  const unsigned items = 40 + static_cast<unsigned>(rng() % 80);
  for (unsigned i = 0; i < items; ++i) {
    const unsigned level = 1 + static_cast<unsigned>(rng() % 3);
    const std::uint64_t span = level_span(level);
    const Gpa gpa{(rng() % (t.window / span)) * span};
    const Hpa hpa{(rng() % ((std::uint64_t{1} << 40) / span)) * span};
    const unsigned perm_bits = 1 + static_cast<unsigned>(rng() % 7);
    if (!allow_misconfig && (perm_bits & 3) == 2) continue;
    static const unsigned kTypes[] = {6, 6, 6, 0, 1, 4, 5};
    unsigned memtype = kTypes[rng() % 7];
    if (allow_misconfig && rng() % 20 == 0) memtype = 2 + static_cast<unsigned>(rng() % 2);
    EptEntry e = EptEntry::leaf(level, hpa, Perms::from_bits(perm_bits), memtype, rng() % 4 == 0);
    if (rng() % 3 == 0) e = e.with_bit(EptEntry::kBitAccessed, true);
    if (rng() % 5 == 0) e = e.with_bit(EptEntry::kBitDirty, true);
    (void)b.set_entry(gpa, level, e);  // may fail when a larger leaf already covers it: fine
  }
  // Restrict some table entries' permissions so that the AND over levels matters.
  for (unsigned i = 0; i < 6; ++i) {
    const unsigned level = 2 + static_cast<unsigned>(rng() % 2);
    const Gpa gpa{(rng() % (t.window / level_span(level))) * level_span(level)};
    auto addr = b.entry_addr(gpa, level);
    if (!addr) continue;
    std::uint64_t raw = 0;
    t.mem.read_u64(*addr, &raw);
    const EptEntry e{raw};
    if (e.classify(level, EptConfig{}) != EntryKind::kTable) continue;
    static const unsigned kMasks[] = {0x1, 0x5, 0x3, 0x4};  // r, rx, rw, x
    t.mem.write_u64(*addr, (raw & ~std::uint64_t{7}) | kMasks[rng() % 4]);
  }
  t.eptp = b.eptp(true);
  return t;
}

}  // namespace baton::testing
