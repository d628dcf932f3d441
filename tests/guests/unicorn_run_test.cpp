// Runs the built-in guest ELFs for real, under Unicorn 2.0.1, straight from the GuestImage
// (64-bit entry, ring 3, IOPL=3, the loader's GDT and page tables), and compares what they
// report on the ports with the host reference. This is a test-only harness; the simulator
// proper lives in sim/.
#include <unicorn/unicorn.h>

#include <catch2/catch.hpp>

#include "baton/guests/abi.hpp"
#include "baton/guests/loader.hpp"
#include "baton/guests/ports.hpp"
#include "baton/guests/registry.hpp"

using namespace baton::guests;

namespace {

// One Unicorn run: the shared port recorder, plus Unicorn's own errors.
struct UcRun {
  explicit UcRun(const GuestImage& im) : ports(im) {}
  PortRecorder ports;
  std::string error;  // empty when Unicorn set up and ran without error
};

// Handles an OUT through the recorder; the exit port stops the run.
void on_out(uc_engine* uc, std::uint32_t port, int size, std::uint32_t value, void* user) {
  UcRun& r = *static_cast<UcRun*>(user);
  const PortEvent ev = r.ports.out(static_cast<std::uint16_t>(port), static_cast<unsigned>(size), value);
  if (ev.kind == PortEventKind::kExit) uc_emu_stop(uc);
}

// Handles an IN through the recorder (the default input sequence).
std::uint32_t on_in(uc_engine*, std::uint32_t port, int size, void* user) {
  UcRun& r = *static_cast<UcRun*>(user);
  return r.ports.in(static_cast<std::uint16_t>(port), static_cast<unsigned>(size)).value;
}

// Loads an image into a fresh Unicorn instance and runs it until the exit port.
UcRun run_in_unicorn(const GuestImage& im) {
  UcRun r(im);
  uc_engine* uc = nullptr;
  auto check = [&](uc_err e, const char* what) {
    if (e != UC_ERR_OK && r.error.empty()) r.error = std::string(what) + ": " + uc_strerror(e);
    return e == UC_ERR_OK;
  };
  if (!check(uc_open(UC_ARCH_X86, UC_MODE_64, &uc), "uc_open")) return r;
  check(uc_mem_map(uc, 0, im.mem_size, UC_PROT_ALL), "map");
  for (const MemoryChunk& c : im.chunks) check(uc_mem_write(uc, c.gpa.value, c.bytes.data(), c.bytes.size()), "write");
  const auto& v = im.vcpu;
  uc_x86_mmr gdtr{0, v.gdtr.base, v.gdtr.limit, 0};
  uc_x86_msr efer{baton::model::kMsrEfer, v.efer};
  std::uint64_t cs = v.cs.selector, ss = v.ss.selector, ds = v.ds.selector;
  check(uc_reg_write(uc, UC_X86_REG_GDTR, &gdtr), "gdtr");
  check(uc_reg_write(uc, UC_X86_REG_MSR, &efer), "efer");
  check(uc_reg_write(uc, UC_X86_REG_CR3, &v.cr3), "cr3");
  check(uc_reg_write(uc, UC_X86_REG_CR4, &v.cr4), "cr4");
  check(uc_reg_write(uc, UC_X86_REG_CR0, &v.cr0), "cr0");
  check(uc_reg_write(uc, UC_X86_REG_CS, &cs), "cs");
  check(uc_reg_write(uc, UC_X86_REG_SS, &ss), "ss");
  check(uc_reg_write(uc, UC_X86_REG_DS, &ds), "ds");
  check(uc_reg_write(uc, UC_X86_REG_ES, &ds), "es");
  check(uc_reg_write(uc, UC_X86_REG_RFLAGS, &v.rflags), "rflags");
  check(uc_reg_write(uc, UC_X86_REG_RSP, &v.gpr[baton::model::VcpuState::kRsp]), "rsp");
  check(uc_reg_write(uc, UC_X86_REG_RDI, &v.gpr[baton::model::VcpuState::kRdi]), "rdi");
  uc_hook h_out, h_in;
  check(uc_hook_add(uc, &h_out, UC_HOOK_INSN, reinterpret_cast<void*>(on_out), &r, 1, 0, UC_X86_INS_OUT), "hook out");
  check(uc_hook_add(uc, &h_in, UC_HOOK_INSN, reinterpret_cast<void*>(on_in), &r, 1, 0, UC_X86_INS_IN), "hook in");
  if (r.error.empty()) check(uc_emu_start(uc, v.rip, 0, 60'000'000, 0), "run");
  uc_close(uc);
  return r;
}

// Loads a built-in guest, runs it under Unicorn and compares with the host reference.
void run_and_compare(const std::string& name, std::uint64_t mem, PageSize pages, std::vector<Param> params,
                     unsigned ring = 3) {
  CAPTURE(name, mem, to_string(pages), ring);
  GuestConfig cfg;
  cfg.mem_size = mem;
  cfg.page_size = pages;
  cfg.ring = ring;
  cfg.params = params;
  auto im = load_builtin(name, cfg);
  if (!im) FAIL(im.error().message);
  const UcRun run = run_in_unicorn(*im);
  auto ref = reference_run(name, im->params);
  REQUIRE(ref.ok());
  CHECK(run.error == "");
  const GuestRun& got = run.ports.run();
  CHECK(got.exit_code == kExitOk);
  CHECK(compare_runs(*ref, got) == std::vector<std::string>{});
  CHECK(got.results.size() == ref->results.size());  // the TSC observations are there too
  REQUIRE_FALSE(got.results.empty());
  CHECK(got.results.back() == ResultRecord{kResultChecksum, ref->checksum});
}

}  // namespace

TEST_CASE("every built-in guest runs under Unicorn at every page size and matches the reference", "[unicorn][guests]") {
  for (const BuiltinGuest& g : builtin_guests())
    for (PageSize ps : {PageSize::k4K, PageSize::k2M, PageSize::k1G}) run_and_compare(g.name, 128u << 20, ps, {});
}

TEST_CASE("memtouch in random order over 256 MiB runs with 1 GiB pages", "[unicorn][guests]") {
  run_and_compare("memtouch", std::uint64_t{1} << 31, PageSize::k1G,
                  {{"size", 256u << 20}, {"order", 1}, {"passes", 2}, {"write_pct", 30}});
}

TEST_CASE("checksum with SHA-256 runs under Unicorn", "[unicorn][guests]") {
  run_and_compare("checksum", 64u << 20, PageSize::k2M, {{"algo", 1}, {"size", 64u << 10}});
}

TEST_CASE("a guest entered at ring 0 runs too", "[unicorn][guests]") {
  run_and_compare("io", 64u << 20, PageSize::k4K, {{"count", 300}}, 0);
}

TEST_CASE("a working set that does not fit makes the guest exit with BAD_PARAM", "[unicorn][guests]") {
  // load_builtin refuses this; load_guest (a user ELF path) does not know the workload.
  GuestConfig cfg;
  cfg.mem_size = 16u << 20;
  cfg.params = {{"size", 64u << 20}};
  auto im = load_guest(find_builtin("pagewalk")->elf, cfg);
  REQUIRE(im.ok());
  const UcRun run = run_in_unicorn(*im);
  CHECK(run.ports.run().exit_code == kExitBadParam);
  CHECK_THAT(run.ports.run().console, Catch::Contains("does not fit"));
}

TEST_CASE("a guest given a wrong boot page exits with BAD_BOOT", "[unicorn][guests]") {
  GuestConfig cfg;
  cfg.mem_size = 16u << 20;
  auto im = load_guest(find_builtin("tsc")->elf, cfg);
  REQUIRE(im.ok());
  im->vcpu.gpr[baton::model::VcpuState::kRdi] = im->free_start.value;  // zero memory, no magic
  const UcRun run = run_in_unicorn(*im);
  CHECK(run.ports.run().exit_code == kExitBadBoot);
}
