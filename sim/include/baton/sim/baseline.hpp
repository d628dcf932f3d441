// The baseline for `baton bench sim`: the same guest image in a bare Unicorn with all memory
// pre-mapped and no hooks but the port I/O that ends the run.
#pragma once

#include <cstdint>
#include <optional>

#include "baton/guests/loader.hpp"
#include "baton/model/result.hpp"

namespace baton::sim {

// What a bare run observed.
struct BareRun {
  double wall_s = 0;                      // time inside uc_emu_start
  std::optional<std::uint32_t> exit_code;
  std::optional<std::uint64_t> checksum;  // the last tag-0 result
};

// Runs an image in a bare Unicorn (no EPT, no counting, no cost model).
Result<BareRun> run_bare_unicorn(const guests::GuestImage& image);

}  // namespace baton::sim
