// baton: simulate and model-check local VM migration.
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "baton/model/file_io.hpp"
#include "cmd_calibrate.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

int& exit_code() {
  static int code = kExitOk;
  return code;
}

namespace {
// 0 = on a terminal only, 1 = always (--progress), -1 = never (--quiet).
int g_progress = 0;
}  // namespace

bool stderr_is_tty() { return isatty(fileno(stderr)) != 0; }

bool show_progress() { return g_progress > 0 || (g_progress == 0 && stderr_is_tty()); }

void add_progress_flags(CLI::App& app) {
  auto* p = app.add_flag_callback(
      "--progress", [] { g_progress = 1; }, "Report progress on stderr even when it is not a terminal (plain lines)");
  auto* q = app.add_flag_callback(
      "--quiet", [] { g_progress = -1; }, "Never report progress");
  p->excludes(q);
  for (CLI::App* sc : app.get_subcommands([](CLI::App*) { return true; })) add_progress_flags(*sc);
}

void fail(const std::string& message) {
  std::fprintf(stderr, "baton: %s\n", printable(message).c_str());
  exit_code() = kExitError;
}

namespace {

// The edit distance between two words (for "did you mean").
std::size_t distance(const std::string& a, const std::string& b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// Checks the leading command words before CLI11 sees them: an unknown one is named, with the
// nearest known command, instead of CLI11's "A subcommand is required". Returns "" when fine.
std::string unknown_command(CLI::App& app, int argc, char** argv) {
  CLI::App* at = &app;
  std::string path = "baton";
  for (int i = 1; i < argc; ++i) {
    const std::string word = argv[i];
    if (word.empty() || word[0] == '-') return "";
    const auto subs = at->get_subcommands([](CLI::App*) { return true; });
    if (subs.empty()) return "";
    CLI::App* next = nullptr;
    for (CLI::App* sc : subs)
      if (sc->get_name() == word) next = sc;
    if (next != nullptr) {
      at = next;
      path += " " + word;
      continue;
    }
    if (at->get_require_subcommand_min() == 0) return "";  // a positional argument, not a command
    std::string best, names;
    std::size_t best_d = ~std::size_t{0};
    for (CLI::App* sc : subs) {
      names += (names.empty() ? "" : ", ") + sc->get_name();
      const std::size_t d = distance(word, sc->get_name());
      if (d < best_d) {
        best_d = d;
        best = sc->get_name();
      }
    }
    std::string msg = "'" + word + "' is not a " + path + " command";
    if (best_d <= std::max<std::size_t>(2, word.size() / 3)) return msg + "; did you mean '" + path + " " + best + "'?";
    return msg + " (commands: " + names + ")";
  }
  return "";
}

// The command path the arguments reached ("baton ept dump"), for pointing at its --help.
std::string reached(CLI::App& app) {
  std::string path = "baton";
  CLI::App* at = &app;
  for (;;) {
    CLI::App* next = nullptr;
    for (CLI::App* sc : at->get_subcommands([](CLI::App*) { return true; }))
      if (sc->parsed()) next = sc;
    if (next == nullptr) return path;
    path += " " + next->get_name();
    at = next;
  }
}

}  // namespace

}  // namespace baton::cli

int main(int argc, char** argv) {
  // SIGINT/SIGTERM remove temporary output files before the process ends.
  baton::model::install_output_cleanup();
  CLI::App app{"baton: simulate and model-check local VM migration (EPT handover, vCPU state, faults)"};
  app.set_version_flag("--version", baton::cli::version_text());
  app.require_subcommand(1);
  app.fallthrough(false);
  baton::cli::register_ept(app);
  baton::cli::register_snapshot(app);
#ifndef BATON_DEMO  // make demo's reduced executable (cli/CMakeLists.txt) leaves these out
  baton::cli::register_bench(app);
#endif
  baton::cli::register_check(app);
  baton::cli::register_guests(app);
  baton::cli::register_run(app);
  baton::cli::register_trace(app);
  baton::cli::register_migrate(app);
  baton::cli::register_compare(app);
#ifndef BATON_DEMO
  baton::cli::register_vmm_worker(app);
  baton::cli::register_explore(app);
  baton::cli::register_campaign(app);
  baton::cli::register_inject(app);
  baton::cli::register_replay(app);
  baton::cli::register_calibrate(app);
#endif
  baton::cli::add_progress_flags(app);
  if (const std::string bad = baton::cli::unknown_command(app, argc, argv); !bad.empty()) {
    baton::cli::fail(bad);
    return baton::cli::kExitError;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints help/version on stdout with code 0; a usage error is one line on stderr.
    if (e.get_exit_code() != 0) {
      const std::string where = baton::cli::reached(app);
      const std::string sub = where == "baton" ? "" : where.substr(6) + ": ";
      baton::cli::fail(sub + e.what() + " (see `" + where + " --help`)");
      return baton::cli::kExitError;
    }
    return app.exit(e);
  } catch (const std::exception& e) {
    baton::cli::fail(baton::exception_text(e.what()));
    return baton::cli::kExitError;
  }
  return baton::cli::exit_code();
}
