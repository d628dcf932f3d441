// baton calibrate (cli/cmd_calibrate.cpp): measures this host's /dev/kvm and writes a cost
// profile with provenance (docs/cost-model.md, "Calibration").
#pragma once

#include <CLI/CLI.hpp>

namespace baton::cli {

// Adds `baton calibrate`.
void register_calibrate(CLI::App& app);
// Adds `bench fidelity` under the bench subcommand (cli/bench_fidelity.cpp).
void register_bench_fidelity(CLI::App& bench);

}  // namespace baton::cli
