// Shared pieces of the hardening tests (issue 12): running baton with limits, and crafting
// small snapshots and captures that a hostile user could hand to it.
#pragma once

#include <sys/wait.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "baton/model/ept_entry.hpp"
#include "baton/model/snapshot.hpp"
#include "baton/model/snapshot_io.hpp"
#include "cli/cli_run.hpp"

namespace baton::test {

// The baton under test: BATON_TEST_EXE when set (to run these tests against another build,
// e.g. the code before a fix), else the one this build made.
inline std::string baton_exe() {
  const char* e = std::getenv("BATON_TEST_EXE");
  return e != nullptr && *e != '\0' ? e : BATON_EXE;
}

// A run's result with its wall time.
struct TimedResult : CliResult {
  double seconds = 0;
};

// Runs `baton args` in a shell under a time limit (seconds) and an address-space limit (MiB),
// so that a hang or a runaway allocation fails the test instead of the machine.
// `shell_prefix` runs first in the same shell (e.g. "trap '' XFSZ; ulimit -f 0;").
inline TimedResult run_limited(const ScratchDir& dir, const std::string& args, int timeout_s = 60, int mem_mib = 3072,
                               const std::string& shell_prefix = "") {
  const std::string out = dir / "stdout.txt", err = dir / "stderr.txt";
#ifdef BATON_SANITIZED
  (void)mem_mib;  // AddressSanitizer reserves terabytes of shadow address space: no -v limit
  const std::string limit = "";
#else
  const std::string limit = "ulimit -v " + std::to_string(mem_mib * 1024) + "; ";
#endif
  const std::string cmd = shell_prefix + limit + "timeout -s KILL " + std::to_string(timeout_s) + " " + baton_exe() +
                          " " + args + " >" + out + " 2>" + err;
  const auto t0 = std::chrono::steady_clock::now();
  const int st = std::system(cmd.c_str());
  TimedResult r;
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.out = slurp(out);
  r.err = slurp(err);
  return r;
}

// Runs a shell command and returns its exit status (for set-up steps and background runs).
inline int shell(const std::string& cmd) {
  const int st = std::system(cmd.c_str());
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Lists the names in a directory that start with `prefix`.
inline std::vector<std::string> names_with_prefix(const std::string& dir, const std::string& prefix) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string n = e.path().filename().string();
    if (n.rfind(prefix, 0) == 0) out.push_back(n);
  }
  return out;
}

// Writes a text file.
inline void write_text_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << text;
}

// Writes one 8-byte entry into a table frame.
inline void put_entry(model::FrameStore& m, model::Hfn table, unsigned index, std::uint64_t raw) {
  m.write_u64(model::Hpa{(table.value << model::kPageShift) + index * 8ull}, raw);
}

// A table entry pointing at `child` with RWX.
inline std::uint64_t table_entry(model::Hfn child) {
  return model::EptEntry::table(child, model::Perms{true, true, true}).raw();
}

// A snapshot with one 1 GiB memslot at GPA 0 (HPA 4 GiB), an owner map of its RAM and of the
// frames 0x1000..0x10ff as EPT tables, and an EPTP at root frame 0x1000. The tree is empty.
inline model::HandoverSnapshot bare_snapshot() {
  model::HandoverSnapshot s;
  s.memslots.push_back(model::Memslot{0, model::Gpa{0}, std::uint64_t{1} << 30, model::Hpa{std::uint64_t{4} << 30}});
  s.owners.assign(model::Hfn{0x1000}, 0x100, model::OwnerKind::kEptTable, s.vm_id);
  s.owners.assign(model::Hfn{(std::uint64_t{4} << 30) >> model::kPageShift}, (std::uint64_t{1} << 30) >> 12,
                  model::OwnerKind::kGuestRam, s.vm_id);
  s.eptp = model::Eptp::make(model::Hfn{0x1000}, false);
  s.tables.frame_mut(model::Hfn{0x1000});
  return s;
}

// Saves a snapshot or fails the test.
inline void save_or_fail(const model::HandoverSnapshot& s, const std::string& path) {
  auto r = model::save_snapshot(s, path, true);
  if (!r) FAIL(r.error().message);
}

}  // namespace baton::test
