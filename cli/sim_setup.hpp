// The simulator set-up shared by `run`, `migrate` and `compare`: a built-in guest image and a
// SimConfig from the usual options (--param, --mem, --pages, --profile, --no-ad).
#pragma once

#include <string>
#include <vector>

#include "baton/guests/loader.hpp"
#include "baton/model/result.hpp"
#include "baton/sim/sim_machine.hpp"

namespace baton::cli {

// The options every simulator subcommand takes.
struct SimOptions {
  std::string guest;
  std::vector<std::string> params;
  std::string mem = "128M";
  std::string pages = "4k";
  std::string profile;
  bool no_ad = false;
};

// A guest image ready to load, and the machine configuration to load it with.
struct SimSetup {
  guests::GuestImage image;
  sim::SimConfig cfg;
};

// Builds the guest image alone (any backend); errors name the option at fault.
Result<guests::GuestImage> make_guest_image(const SimOptions& o);
// Builds the image and configuration; errors name the option at fault.
Result<SimSetup> make_sim_setup(const SimOptions& o);

}  // namespace baton::cli
