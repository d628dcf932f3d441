// Exit reason names as KVM's kvm_exit tracepoint prints them: VMX_EXIT_REASONS
// (arch/x86/include/uapi/asm/vmx.h; Intel SDM Vol. 3D, appendix C) and SVM_EXIT_REASONS
// (arch/x86/include/uapi/asm/svm.h; AMD APM Vol. 2, appendix C).
#include <string>
#include <string_view>

#include "baton/traces/ftrace.hpp"

namespace baton::traces {

namespace {
struct ReasonName {
  std::uint32_t code;
  std::string_view name;  // its length known at compile time: lookups compare lengths first
};

// VMX basic exit reasons (bits 15:0 of the exit reason field).
constexpr ReasonName kVmxReasons[] = {
    {0, "EXCEPTION_NMI"},
    {1, "EXTERNAL_INTERRUPT"},
    {2, "TRIPLE_FAULT"},
    {3, "INIT_SIGNAL"},
    {4, "SIPI_SIGNAL"},
    {7, "INTERRUPT_WINDOW"},
    {7, "PENDING_INTERRUPT"},
    {8, "NMI_WINDOW"},
    {9, "TASK_SWITCH"},
    {10, "CPUID"},
    {11, "GETSEC"},
    {12, "HLT"},
    {13, "INVD"},
    {14, "INVLPG"},
    {15, "RDPMC"},
    {16, "RDTSC"},
    {17, "RSM"},
    {18, "VMCALL"},
    {19, "VMCLEAR"},
    {20, "VMLAUNCH"},
    {21, "VMPTRLD"},
    {22, "VMPTRST"},
    {23, "VMREAD"},
    {24, "VMRESUME"},
    {25, "VMWRITE"},
    {26, "VMOFF"},
    {27, "VMON"},
    {28, "CR_ACCESS"},
    {29, "DR_ACCESS"},
    {30, "IO_INSTRUCTION"},
    {31, "MSR_READ"},
    {32, "MSR_WRITE"},
    {33, "INVALID_STATE"},
    {34, "MSR_LOAD_FAIL"},
    {36, "MWAIT_INSTRUCTION"},
    {37, "MONITOR_TRAP_FLAG"},
    {39, "MONITOR_INSTRUCTION"},
    {40, "PAUSE_INSTRUCTION"},
    {41, "MCE_DURING_VMENTRY"},
    {43, "TPR_BELOW_THRESHOLD"},
    {44, "APIC_ACCESS"},
    {45, "EOI_INDUCED"},
    {46, "GDTR_IDTR"},
    {47, "LDTR_TR"},
    {48, "EPT_VIOLATION"},
    {49, "EPT_MISCONFIG"},
    {50, "INVEPT"},
    {51, "RDTSCP"},
    {52, "PREEMPTION_TIMER"},
    {53, "INVVPID"},
    {54, "WBINVD"},
    {55, "XSETBV"},
    {56, "APIC_WRITE"},
    {57, "RDRAND"},
    {58, "INVPCID"},
    {59, "VMFUNC"},
    {60, "ENCLS"},
    {61, "RDSEED"},
    {62, "PML_FULL"},
    {63, "XSAVES"},
    {64, "XRSTORS"},
    {67, "UMWAIT"},
    {68, "TPAUSE"},
    {74, "BUS_LOCK"},
    {75, "NOTIFY"},
    {77, "TDCALL"},
};

// SVM exit codes.
constexpr ReasonName kSvmReasons[] = {
    {0x000, "read_cr0"},
    {0x003, "read_cr3"},
    {0x004, "read_cr4"},
    {0x008, "read_cr8"},
    {0x010, "write_cr0"},
    {0x013, "write_cr3"},
    {0x014, "write_cr4"},
    {0x018, "write_cr8"},
    {0x020, "read_dr0"},
    {0x021, "read_dr1"},
    {0x022, "read_dr2"},
    {0x023, "read_dr3"},
    {0x024, "read_dr4"},
    {0x025, "read_dr5"},
    {0x026, "read_dr6"},
    {0x027, "read_dr7"},
    {0x030, "write_dr0"},
    {0x031, "write_dr1"},
    {0x032, "write_dr2"},
    {0x033, "write_dr3"},
    {0x034, "write_dr4"},
    {0x035, "write_dr5"},
    {0x036, "write_dr6"},
    {0x037, "write_dr7"},
    {0x040, "DE excp"},
    {0x041, "DB excp"},
    {0x043, "BP excp"},
    {0x046, "UD excp"},
    {0x047, "NM excp"},
    {0x04d, "GP excp"},
    {0x04e, "PF excp"},
    {0x050, "MF excp"},
    {0x051, "AC excp"},
    {0x052, "MC excp"},
    {0x060, "interrupt"},
    {0x061, "nmi"},
    {0x062, "smi"},
    {0x063, "init"},
    {0x064, "vintr"},
    {0x065, "cr0_sel_write"},
    {0x06e, "rdtsc"},
    {0x06f, "rdpmc"},
    {0x070, "pushf"},
    {0x071, "popf"},
    {0x072, "cpuid"},
    {0x073, "rsm"},
    {0x074, "iret"},
    {0x075, "swint"},
    {0x076, "invd"},
    {0x077, "pause"},
    {0x078, "hlt"},
    {0x079, "invlpg"},
    {0x07a, "invlpga"},
    {0x07b, "io"},
    {0x07c, "msr"},
    {0x07d, "task_switch"},
    {0x07e, "ferr_freeze"},
    {0x07f, "shutdown"},
    {0x080, "vmrun"},
    {0x081, "hypercall"},
    {0x082, "vmload"},
    {0x083, "vmsave"},
    {0x084, "stgi"},
    {0x085, "clgi"},
    {0x086, "skinit"},
    {0x087, "rdtscp"},
    {0x088, "icebp"},
    {0x089, "wbinvd"},
    {0x08a, "monitor"},
    {0x08b, "mwait"},
    {0x08c, "mwait_cond"},
    {0x08d, "xsetbv"},
    {0x08e, "rdpru"},
    {0x08f, "write_efer_trap"},
    {0x0a2, "invpcid"},
    {0x400, "npf"},
    {0x401, "avic_incomplete_ipi"},
    {0x402, "avic_unaccelerated_access"},
    {0x403, "vmgexit"},
};
}  // namespace

std::optional<std::uint32_t> exit_reason_from_name(std::string_view name, bool* is_svm) {
  for (const auto& r : kVmxReasons)
    if (name == r.name) {
      if (is_svm) *is_svm = false;
      return r.code;
    }
  for (const auto& r : kSvmReasons)
    if (name == r.name) {
      if (is_svm) *is_svm = true;
      return r.code;
    }
  return std::nullopt;
}

std::string exit_reason_name(std::uint32_t reason, bool svm) {
  if (svm) {
    for (const auto& r : kSvmReasons)
      if (r.code == reason) return std::string(r.name);
  } else {
    for (const auto& r : kVmxReasons)
      if (r.code == reason) return std::string(r.name);
  }
  return "";
}

}  // namespace baton::traces
