// The simulator set-up shared by the simulator subcommands.
#include "sim_setup.hpp"

#include "baton/guests/registry.hpp"
#include "parse.hpp"

namespace baton::cli {

Result<guests::GuestImage> make_guest_image(const SimOptions& o) {
  auto mem = parse_size(o.mem);
  if (!mem) return make_error("--mem '" + o.mem + "' is not a size (e.g. 256M, 4G)");
  auto level = parse_page_level(o.pages);
  if (!level) return make_error("--pages '" + o.pages + "' is not one of 4k, 2m, 1g");
  auto g = guests::get_builtin(o.guest);
  if (!g) return g.error();
  auto ps = guests::resolve_params(**g, o.params);
  if (!ps) return ps.error();
  guests::GuestConfig gc;
  gc.mem_size = *mem;
  gc.page_size = *level == 1 ? guests::PageSize::k4K : *level == 2 ? guests::PageSize::k2M : guests::PageSize::k1G;
  gc.params = *ps;
  return guests::load_builtin(o.guest, gc);
}

Result<SimSetup> make_sim_setup(const SimOptions& o) {
  auto image = make_guest_image(o);
  if (!image) return image.error();
  SimSetup s;
  s.cfg.hv.max_leaf_level = *parse_page_level(o.pages);
  s.cfg.hv.ad = !o.no_ad;
  if (!o.profile.empty()) {
    auto p = sim::load_profile(o.profile);
    if (!p) return p.error();
    s.cfg.profile = *p;
  }
  s.image = std::move(*image);
  s.cfg.guest_name = o.guest;
  s.cfg.trace_params = {{"mem", o.mem}, {"pages", o.pages}};
  return s;
}

}  // namespace baton::cli
