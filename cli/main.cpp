// baton: simulate and model-check local VM migration.
#include <cstdio>
#include <exception>

#include "baton/model/file_io.hpp"
#include "commands.hpp"

namespace baton::cli {

int& exit_code() {
  static int code = kExitOk;
  return code;
}

void fail(const std::string& message) {
  std::fprintf(stderr, "baton: %s\n", message.c_str());
  exit_code() = kExitError;
}

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
  baton::cli::register_bench(app);
  baton::cli::register_check(app);
  baton::cli::register_guests(app);
  baton::cli::register_run(app);
  baton::cli::register_trace(app);
  baton::cli::register_migrate(app);
  baton::cli::register_compare(app);
  baton::cli::register_vmm_worker(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // CLI11 prints help/version on stdout with code 0, usage errors on stderr.
    if (e.get_exit_code() != 0) {
      std::fprintf(stderr, "baton: %s\n", e.what());
      std::fprintf(stderr, "Run with --help for usage.\n");
      return baton::cli::kExitError;
    }
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "baton: %s\n", e.what());
    return baton::cli::kExitError;
  }
  return baton::cli::exit_code();
}
