// A bare Unicorn run: memory pre-mapped, only IN/OUT hooked (the ABI needs them to end).
#include "baton/sim/baseline.hpp"

#include <sys/resource.h>
#include <unicorn/unicorn.h>

#include <chrono>
#include <string>


namespace baton::sim {

namespace {
// Handles OUT through the shared port recorder; the exit port ends the run.
void bare_out(uc_engine* uc, std::uint32_t port, int size, std::uint32_t value, void* user) {
  auto& ports = *static_cast<guests::PortRecorder*>(user);
  if (ports.out(static_cast<std::uint16_t>(port), static_cast<unsigned>(size), value).kind == guests::PortEventKind::kExit)
    uc_emu_stop(uc);
}

// Handles IN through the shared port recorder (the default input sequence).
std::uint32_t bare_in(uc_engine*, std::uint32_t port, int size, void* user) {
  auto& ports = *static_cast<guests::PortRecorder*>(user);
  return ports.in(static_cast<std::uint16_t>(port), static_cast<unsigned>(size)).value;
}
// CPU seconds (user + system) the calling thread has used so far.
double thread_cpu_s() {
  struct rusage ru {};
  getrusage(RUSAGE_THREAD, &ru);
  return static_cast<double>(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
         static_cast<double>(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}
}  // namespace

Result<BareRun> run_bare_unicorn(const guests::GuestImage& im, std::uint64_t max_insns) {
  guests::PortRecorder ports(im);
  BareRun run;
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
  // Every GPR of the initial state, in the model's order (rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15).
  const int gprs[model::VcpuState::kGprCount] = {
      UC_X86_REG_RAX, UC_X86_REG_RBX, UC_X86_REG_RCX, UC_X86_REG_RDX, UC_X86_REG_RSI, UC_X86_REG_RDI,
      UC_X86_REG_RSP, UC_X86_REG_RBP, UC_X86_REG_R8,  UC_X86_REG_R9,  UC_X86_REG_R10, UC_X86_REG_R11,
      UC_X86_REG_R12, UC_X86_REG_R13, UC_X86_REG_R14, UC_X86_REG_R15};
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) check(uc_reg_write(uc, gprs[i], &v.gpr[i]), "gpr");
  uc_hook h1, h2;
  check(uc_hook_add(uc, &h1, UC_HOOK_INSN, reinterpret_cast<void*>(bare_out), &ports, 1, 0, UC_X86_INS_OUT), "hook out");
  check(uc_hook_add(uc, &h2, UC_HOOK_INSN, reinterpret_cast<void*>(bare_in), &ports, 1, 0, UC_X86_INS_IN), "hook in");
  if (err.empty()) {
    const auto t0 = std::chrono::steady_clock::now();
    const double c0 = thread_cpu_s();
    check(uc_emu_start(uc, v.rip, ~std::uint64_t{0}, 0, max_insns), "run");
    run.wall_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run.cpu_s = thread_cpu_s() - c0;
  }
  uc_close(uc);
  if (!err.empty()) return make_error("bare Unicorn: " + err);
  run.ports = ports.run();
  return run;
}

}  // namespace baton::sim
