// Registration of every baton subcommand. Each lives in its own cmd_*.cpp file.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

namespace baton::cli {

// Exit codes shared by all subcommands.
inline constexpr int kExitOk = 0;
inline constexpr int kExitRefuted = 1;  // a proof was refuted / a comparison differs
inline constexpr int kExitError = 2;    // bad input, unknown verdict, or failure

// Each register_* adds one subcommand tree to the app. The callback of a subcommand sets
// `exit_code` via the shared holder below.
void register_ept(CLI::App& app);
void register_snapshot(CLI::App& app);
void register_bench(CLI::App& app);
void register_check(CLI::App& app);
// Adds `bench checker` under the bench subcommand (cli/bench_checker.cpp).
void register_bench_checker(CLI::App& bench);
void register_guests(CLI::App& app);
// `baton run` (cli/cmd_run.cpp) and `bench sim` under the bench subcommand (cli/bench_sim.cpp).
void register_run(CLI::App& app);
void register_bench_sim(CLI::App& bench);
void register_trace(CLI::App& app);
// `trace capture` under the trace subcommand (cli/cmd_trace_capture.cpp).
void register_trace_capture(CLI::App& trace);
// `baton replay` (cli/cmd_replay.cpp): a trace against the simulator, or a foreign capture's isolation.
void register_replay(CLI::App& app);
// `baton migrate` (cli/cmd_migrate.cpp) and `baton compare` (cli/cmd_compare.cpp).
void register_migrate(CLI::App& app);
void register_compare(CLI::App& app);
// `bench migrate` under the bench subcommand (cli/bench_migrate.cpp).
void register_bench_migrate(CLI::App& bench);
void register_bench_kvm(CLI::App& bench);
// `bench trace` under the bench subcommand (cli/bench_trace.cpp).
void register_bench_trace(CLI::App& bench);
// `baton vmm-worker` (cli/cmd_vmm.cpp): the receiving VMM process of a local migration.
void register_vmm_worker(CLI::App& app);
// `baton explore` (cli/cmd_explore*.cpp): the interactive REPL and --script.
void register_explore(CLI::App& app);

// `baton campaign plan|run|merge|slurm` (cli/cmd_campaign.cpp), `baton inject` (cli/cmd_inject.cpp)
// and `bench campaign` under the bench subcommand (cli/bench_campaign.cpp).
void register_campaign(CLI::App& app);
void register_inject(CLI::App& app);
void register_bench_campaign(CLI::App& bench);

// The text of `baton --version`: version, git commit and build type (cli/version.cpp).
std::string version_text();

// Whether long commands report progress on stderr: on a terminal by default, always with
// --progress (plain lines, for logs and CI), never with --quiet.
bool show_progress();
// Whether stderr is a terminal (progress may then redraw one line in place).
bool stderr_is_tty();
// Adds --progress and --quiet to an app and, recursively, to all its subcommands.
void add_progress_flags(CLI::App& app);

// The exit code chosen by whichever subcommand ran.
int& exit_code();

// Prints "baton: <message>" on stderr and sets the error exit code.
void fail(const std::string& message);

}  // namespace baton::cli
