// Realistic sample snapshots: a PC-like memslot layout, an EPT built the way KVM's TDP MMU
// leaves it, MMIO marked with misconfigured entries, and an owner map. Tests, benchmarks and
// `baton snapshot make-sample` use it.
#pragma once

#include <cstdint>

#include "baton/model/snapshot.hpp"

namespace baton::model {

struct SampleOptions {
  std::uint64_t mem_bytes = std::uint64_t{256} << 20;  // guest RAM
  unsigned leaf_level = 1;         // 1 = 4 KiB, 2 = 2 MiB, 3 = 1 GiB leaves
  std::uint64_t seed = 1;          // A/D noise, table-frame placement, touched subset
  double touched = 1.0;            // fraction of RAM pages mapped (KVM maps on first touch)
  bool ad = true;                  // EPTP enables accessed/dirty flags
  bool mmio = true;                // mark the IOAPIC and LAPIC pages as MMIO
  bool rom = true;                 // a read-only 1 MiB ROM slot below 4 GiB
};

// Host-physical layout of samples: guest RAM starts at this host address, table frames and
// other owners sit below it.
inline constexpr std::uint64_t kSampleRamHpa = std::uint64_t{1} << 32;    // 4 GiB
inline constexpr std::uint64_t kSampleTableHpa = std::uint64_t{1} << 30;  // 1 GiB

// Builds a sample snapshot. Fails only on impossible options (e.g. no memory).
Result<HandoverSnapshot> make_sample(const SampleOptions& opt);

}  // namespace baton::model
