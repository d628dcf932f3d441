// Helpers shared by the simulator tests: load a built-in guest and run it to the end.
#pragma once

#include <catch2/catch.hpp>

#include "baton/guests/registry.hpp"
#include "baton/sim/sim_machine.hpp"

namespace baton::sim::test {

// Loads a built-in guest with given parameters, or fails the test.
inline guests::GuestImage image(const std::string& name, std::uint64_t mem, guests::PageSize ps,
                                std::vector<guests::Param> params = {}) {
  guests::GuestConfig gc;
  gc.mem_size = mem;
  gc.page_size = ps;
  gc.params = std::move(params);
  auto im = guests::load_builtin(name, gc);
  if (!im) FAIL(im.error().message);
  return *im;
}

// Creates a machine for an image, or fails the test.
inline std::unique_ptr<SimMachine> machine(const guests::GuestImage& im, SimConfig cfg = {}) {
  auto m = SimMachine::create(cfg);
  if (!m) FAIL(m.error().message);
  if (auto r = (*m)->load(im); !r) FAIL(r.error().message);
  return std::move(*m);
}

// Runs to the end with a generous budget.
inline RunEvent run_all(Machine& m, std::uint64_t budget = 2'000'000'000) {
  RunLimits l;
  l.budget = budget;
  return m.run(l);
}

// Returns the leaf level for a page size.
inline unsigned level_of(guests::PageSize ps) {
  return ps == guests::PageSize::k4K ? 1 : ps == guests::PageSize::k2M ? 2 : 3;
}

}  // namespace baton::sim::test
