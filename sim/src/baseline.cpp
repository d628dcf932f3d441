// A bare Unicorn run: memory pre-mapped, only IN/OUT hooked (the ABI needs them to end).
#include "baton/sim/baseline.hpp"

#include <unicorn/unicorn.h>

#include <chrono>
#include <string>

#include "baton/guests/abi.hpp"

namespace baton::sim {

namespace {
// Port state of a bare run.
struct BareState {
  BareRun run;
  std::uint32_t tag = 0, lo = 0;
  std::uint64_t seed = 0, inputs = 0;
};

// Handles OUT: results and the exit port.
void bare_out(uc_engine* uc, std::uint32_t port, int, std::uint32_t value, void* user) {
  auto& s = *static_cast<BareState*>(user);
  if (port == guests::kPortResultTag) s.tag = value;
  if (port == guests::kPortResultLo) s.lo = value;
  if (port == guests::kPortResultHi && s.tag == 0) s.run.checksum = (std::uint64_t{value} << 32) | s.lo;
  if (port == guests::kPortExit) {
    s.run.exit_code = value;
    uc_emu_stop(uc);
  }
}

// Handles IN from the input port.
std::uint32_t bare_in(uc_engine*, std::uint32_t port, int, void* user) {
  auto& s = *static_cast<BareState*>(user);
  return port == guests::kPortInput ? guests::input_value(s.seed, s.inputs++) : 0xFFFFFFFFu;
}
}  // namespace

Result<BareRun> run_bare_unicorn(const guests::GuestImage& im) {
  BareState s;
  for (const guests::Param& p : im.params)
    if (p.key == guests::kParamInputSeed) s.seed = p.value;
  uc_engine* uc = nullptr;
  if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc) != UC_ERR_OK) return make_error("uc_open failed");
  std::string err;
  auto check = [&](uc_err e, const char* what) {
    if (e != UC_ERR_OK && err.empty()) err = std::string(what) + ": " + uc_strerror(e);
  };
  check(uc_mem_map(uc, 0, im.mem_size, UC_PROT_ALL), "map");
  for (const guests::MemoryChunk& c : im.chunks) check(uc_mem_write(uc, c.gpa.value, c.bytes.data(), c.bytes.size()), "write");
  const auto& v = im.vcpu;
  uc_x86_mmr gdtr{0, v.gdtr.base, v.gdtr.limit, 0};
  uc_x86_msr efer{model::kMsrEfer, v.efer};
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
  check(uc_reg_write(uc, UC_X86_REG_RSP, &v.gpr[model::VcpuState::kRsp]), "rsp");
  check(uc_reg_write(uc, UC_X86_REG_RDI, &v.gpr[model::VcpuState::kRdi]), "rdi");
  uc_hook h1, h2;
  check(uc_hook_add(uc, &h1, UC_HOOK_INSN, reinterpret_cast<void*>(bare_out), &s, 1, 0, UC_X86_INS_OUT), "hook out");
  check(uc_hook_add(uc, &h2, UC_HOOK_INSN, reinterpret_cast<void*>(bare_in), &s, 1, 0, UC_X86_INS_IN), "hook in");
  if (err.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    check(uc_emu_start(uc, v.rip, ~std::uint64_t{0}, 0, 0), "run");
    s.run.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  uc_close(uc);
  if (!err.empty()) return make_error("bare Unicorn: " + err);
  return s.run;
}

}  // namespace baton::sim
