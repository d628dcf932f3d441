// The simulator set-up of a campaign's guest (shared by campaign, inject and bench campaign).
#pragma once

#include "baton/campaign/campaign.hpp"
#include "sim_setup.hpp"

namespace baton::cli {

// Builds the guest image and machine configuration a plan's guest runs with.
inline Result<campaign::Setup> campaign_setup(const campaign::GuestSpec& g) {
  SimOptions o;
  o.guest = g.guest;
  o.params = g.params;
  o.mem = g.mem;
  o.pages = g.pages;
  o.no_ad = g.no_ad;
  auto s = make_sim_setup(o);
  if (!s) return s.error();
  return campaign::Setup{std::move(s->image), std::move(s->cfg)};
}

}  // namespace baton::cli
