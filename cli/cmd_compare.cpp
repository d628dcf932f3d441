// baton compare: every migration method side by side on one guest, at one or more memory
// sizes, in one table with the checker's verdicts; optionally a gnuplot SVG of downtime and
// total migration time against memory size.
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>

#include "baton/model/file_io.hpp"
#include "baton/sim/migration.hpp"
#include "commands.hpp"
#include "migrate_render.hpp"
#include "migrate_setup.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {

struct CompareCmd {
  SimOptions sim;
  MigrateOptions mig;
  std::string mems = "64M,256M,1G,4G,16G";
  std::string methods = "local-adopt,local-rebuild,local-lazy,precopy";
  std::string plot;
  bool force = false;
  bool json_out = false;
};

// One cell of the comparison.
struct Row {
  std::string mem;
  std::uint64_t bytes = 0;
  sim::MigrationResult r;
};

// Splits a comma-separated list.
std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::size_t pos = 0;
  while (pos <= s.size()) {
    const std::size_t c = std::min(s.find(',', pos), s.size());
    if (c > pos) out.push_back(s.substr(pos, c - pos));
    pos = c + 1;
  }
  return out;
}

// Writes the gnuplot script and data next to each other in a temporary directory, runs
// gnuplot, and moves the SVG into place. Returns an error naming what failed.
Result<void> write_plot(const std::vector<Row>& rows, const std::vector<sim::Method>& methods, const std::string& guest,
                        const std::string& out, bool overwrite) {
  char tmpl[] = "/tmp/baton-plot-XXXXXX";
  if (mkdtemp(tmpl) == nullptr) return make_error("--plot: cannot create a temporary directory");
  const std::filesystem::path dir(tmpl);
  struct Cleanup {
    std::filesystem::path d;
    ~Cleanup() {
      std::error_code ec;
      std::filesystem::remove_all(d, ec);
    }
  } cleanup{dir};
  std::string plots_down, plots_total;
  for (std::size_t mi = 0; mi < methods.size(); ++mi) {
    const std::string data = (dir / (std::string(sim::to_string(methods[mi])) + ".dat")).string();
    std::ofstream f(data);
    for (const Row& row : rows)
      if (row.r.method == methods[mi])
        f << static_cast<double>(row.bytes) / (1 << 20) << " " << row.r.micros(row.r.downtime) << " "
          << row.r.micros(row.r.total) << "\n";
    if (!f) return make_error("--plot: cannot write " + data);
    const std::string sep = mi == 0 ? "" : ", ";
    plots_down += sep + "'" + data + "' using 1:2 with linespoints lw 2 title '" + sim::to_string(methods[mi]) + "'";
    plots_total += sep + "'" + data + "' using 1:3 with linespoints lw 2 title '" + sim::to_string(methods[mi]) + "'";
  }
  const std::string svg = (dir / "plot.svg").string();
  const std::string script = (dir / "plot.gp").string();
  {
    std::ofstream g(script);
    g << "set terminal svg size 1100,460 dynamic font 'sans,12'\n"
      << "set output '" << svg << "'\n"
      << "set multiplot layout 1,2 title 'baton compare: " << guest << " (simulated, default cost profile)'\n"
      << "set logscale xy\nset grid\nset key top left\n"
      << "set xlabel 'guest memory (MiB)'\nset ylabel 'microseconds'\n"
      << "set title 'downtime'\nplot " << plots_down << "\n"
      << "set title 'total migration time'\nplot " << plots_total << "\n"
      << "unset multiplot\n";
    if (!g) return make_error("--plot: cannot write the gnuplot script");
  }
  const pid_t pid = fork();
  if (pid < 0) return make_error("--plot: cannot start gnuplot (fork failed)");
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    return make_error(WIFEXITED(status) && WEXITSTATUS(status) == 127
                          ? "--plot: gnuplot is not installed (Debian package gnuplot-nox; `make deps` installs it)"
                          : "--plot: gnuplot failed");
  auto bytes = model::read_file(svg, std::uint64_t{64} << 20, "gnuplot SVG");
  if (!bytes) return make_error("--plot: " + bytes.error().message);
  return model::write_file(out, *bytes, overwrite);
}

void run_compare(const CompareCmd& o) {
  std::vector<sim::Method> methods;
  for (const std::string& m : split_list(o.methods)) {
    auto mm = sim::method_from_string(m);
    if (!mm) return fail("--methods: '" + m + "' is not one of local-adopt, local-rebuild, local-lazy, precopy");
    methods.push_back(*mm);
  }
  if (methods.empty()) return fail("--methods is empty");
  std::vector<std::pair<std::string, std::uint64_t>> mems;
  for (const std::string& m : split_list(o.mems)) {
    auto b = parse_size(m);
    if (!b) return fail("--mem: '" + m + "' is not a size (e.g. 64M, 16G)");
    mems.emplace_back(m, *b);
  }
  if (mems.empty()) return fail("--mem is empty");
  if (!o.plot.empty())
    if (auto r = model::check_output_path(o.plot, o.force, "--plot"); !r) return fail(r.error().message);
  auto opt = make_migration_options(o.mig);
  if (!opt) return fail(opt.error().message);
  const bool tty = show_progress();
  std::vector<Row> rows;
  const std::size_t n = mems.size() * methods.size();
  // The ETA weighs each run by its memory size (rebuild and precopy grow with it) plus a fixed part.
  auto weight = [](std::uint64_t bytes) { return 1.0 + static_cast<double>(bytes) / double(1ull << 30); };
  double total_weight = 0, done_weight = 0;
  for (const auto& mb : mems) total_weight += weight(mb.second) * static_cast<double>(methods.size());
  const auto t0 = std::chrono::steady_clock::now();
  for (const auto& [mem, bytes] : mems) {
    SimOptions so = o.sim;
    so.mem = mem;
    auto setup = make_sim_setup(so);
    if (!setup) return fail(setup.error().message);
    for (sim::Method m : methods) {
      if (tty) {
        const double spent = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        std::string eta = "";
        if (done_weight > 0)
          eta = ", ETA " + std::to_string(std::lround(spent / done_weight * (total_weight - done_weight))) + " s";
        std::fprintf(stderr, "[%zu/%zu] %s %s at %s (%.0f s elapsed%s) ...\n", rows.size() + 1, n, o.sim.guest.c_str(),
                     sim::to_string(m), mem.c_str(), spent, eta.c_str());
      }
      sim::MigrationOptions mo = *opt;
      mo.method = m;
      auto r = sim::migrate(setup->image, setup->cfg, mo);
      if (!r) return fail(std::string(sim::to_string(m)) + " at " + mem + ": " + r.error().message);
      rows.push_back(Row{mem, bytes, std::move(*r)});
      done_weight += weight(bytes);
    }
  }
  bool all_ok = true;
  for (const Row& row : rows) {
    const std::string oc = migration_outcome(row.r);
    all_ok = all_ok && (oc == "ok" || oc == "fell-back");
  }
  if (!o.plot.empty())
    if (auto p = write_plot(rows, methods, o.sim.guest, o.plot, o.force); !p) return fail(p.error().message);
  if (o.json_out) {
    nlohmann::json j;
    j["guest"] = o.sim.guest;
    j["pages"] = o.sim.pages;
    j["fault"] = o.mig.fault;
    nlohmann::json arr = nlohmann::json::array();
    for (const Row& row : rows) {
      nlohmann::json r = migration_json(row.r);
      r["mem"] = row.mem;
      r["mem_bytes"] = row.bytes;
      r.erase("console");
      arr.push_back(r);
    }
    j["runs"] = arr;
    if (!o.plot.empty()) j["plot"] = o.plot;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("%s, %s pages%s%s\n", o.sim.guest.c_str(), o.sim.pages.c_str(),
                o.mig.fault == "none" ? "" : ", fault ", o.mig.fault == "none" ? "" : o.mig.fault.c_str());
    std::printf("%-6s %-14s %12s %12s %10s %9s %12s %-8s %-10s %s\n", "mem", "method", "downtime-us", "total-us", "copied",
                "refaults", "slowdown-cyc", "verdict", "checksum", "outcome");
    for (const Row& row : rows) {
      const sim::MigrationResult& r = row.r;
      const std::string slow = slowdown_measured(r) ? std::to_string(static_cast<long long>(std::llround(r.slowdown())))
                                                    : std::string("n/a");
      std::printf("%-6s %-14s %12.1f %12.1f %10s %9llu %12s %-8s %-10s %s\n", row.mem.c_str(), sim::to_string(r.method),
                  r.micros(r.downtime), r.micros(r.total), format_size(r.bytes_copied).c_str(),
                  static_cast<unsigned long long>(r.refaults), slow.c_str(), checker::to_string(r.verdict),
                  r.checksum_ok() ? "match" : "MISMATCH", migration_outcome(r).c_str());
    }
    for (const Row& row : rows)
      if (row.r.finished_before_switch)
        std::printf("note: at %s the guest exited during pre-copy; its downtime is the final copy of what it dirtied\n",
                    row.mem.c_str());
    if (!o.plot.empty()) std::printf("plot: %s\n", o.plot.c_str());
  }
  exit_code() = all_ok ? kExitOk : kExitRefuted;
}

}  // namespace

void register_compare(CLI::App& app) {
  auto o = std::make_shared<CompareCmd>();
  CLI::App* c = app.add_subcommand("compare", "Run every migration method side by side, with checker verdicts and a plot");
  add_sim_options(*c, o->sim);
  c->remove_option(c->get_option("--mem"));
  c->add_option("--mem", o->mems, "Comma-separated guest memory sizes (e.g. 64M,256M,1G,4G,16G)")->capture_default_str();
  c->add_option("--methods", o->methods, "Comma-separated methods to compare")->capture_default_str();
  add_migrate_options(*c, o->mig);
  c->add_option("--plot", o->plot, "Write an SVG plot of downtime and total time against memory size");
  c->add_flag("--force", o->force, "Overwrite an existing --plot file");
  c->add_flag("--json", o->json_out, "Print JSON");
  c->callback([o] { run_compare(*o); });
}

}  // namespace baton::cli
