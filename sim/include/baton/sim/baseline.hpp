// The baseline for `baton bench sim`: the same guest image in a bare Unicorn with all memory
// pre-mapped and no hooks but the port I/O that ends the run.
#pragma once

#include <cstdint>

#include "baton/guests/loader.hpp"
#include "baton/guests/ports.hpp"
#include "baton/model/result.hpp"

namespace baton::sim {

// What a bare run observed.
struct BareRun {
  double wall_s = 0;       // time inside uc_emu_start
  double cpu_s = 0;        // CPU time (user + system) of the thread inside uc_emu_start
  guests::GuestRun ports;  // what the guest reported, decoded by the shared PortRecorder
};

// Runs an image in a bare Unicorn (no EPT, no counting, no cost model) until the exit port,
// or for at most `max_insns` instructions when that is not 0.
Result<BareRun> run_bare_unicorn(const guests::GuestImage& image, std::uint64_t max_insns = 0);

}  // namespace baton::sim
