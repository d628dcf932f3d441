// VcpuState: everything KVM's vCPU state ioctls carry, in backend-neutral form.
//
// The simulator fills it from Unicorn and its modelled VMCS; the KVM backend fills it from
// KVM_GET_REGS/SREGS/XSAVE/XCRS/MSRS/LAPIC/VCPU_EVENTS/DEBUGREGS. The checker compares two.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace baton::model {

// One segment register as KVM's struct kvm_segment describes it.
struct Segment {
  std::uint64_t base = 0;
  std::uint32_t limit = 0;
  std::uint16_t selector = 0;
  std::uint8_t type = 0;     // 4-bit type field
  std::uint8_t present = 0;  // P
  std::uint8_t dpl = 0;      // descriptor privilege level
  std::uint8_t db = 0;       // default operation size
  std::uint8_t s = 0;        // code/data (1) or system (0)
  std::uint8_t l = 0;        // 64-bit code segment
  std::uint8_t g = 0;        // granularity
  std::uint8_t avl = 0;
  std::uint8_t unusable = 0;
  friend bool operator==(const Segment&, const Segment&) = default;
};

// A descriptor-table register (GDTR or IDTR).
struct DescriptorTable {
  std::uint64_t base = 0;
  std::uint16_t limit = 0;
  friend bool operator==(const DescriptorTable&, const DescriptorTable&) = default;
};

// Pending exception/interrupt/NMI state (KVM_GET_VCPU_EVENTS).
struct VcpuEvents {
  bool exception_pending = false;
  std::uint8_t exception_nr = 0;
  bool exception_has_error_code = false;
  std::uint32_t exception_error_code = 0;
  bool interrupt_pending = false;
  std::uint8_t interrupt_nr = 0;
  bool nmi_pending = false;
  bool nmi_masked = false;
  std::uint8_t interrupt_shadow = 0;
  friend bool operator==(const VcpuEvents&, const VcpuEvents&) = default;
};

// Architectural activity state of a logical processor (SDM Vol. 3C §25.4.2).
enum class ActivityState : std::uint8_t { kActive = 0, kHlt = 1, kShutdown = 2, kWaitForSipi = 3 };

// Names an activity state.
const char* to_string(ActivityState s);

// The complete state of one vCPU.
struct VcpuState {
  // General-purpose registers in the order rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15.
  enum Gpr : unsigned { kRax, kRbx, kRcx, kRdx, kRsi, kRdi, kRsp, kRbp,
                        kR8, kR9, kR10, kR11, kR12, kR13, kR14, kR15, kGprCount };
  std::array<std::uint64_t, kGprCount> gpr{};
  std::uint64_t rip = 0;
  std::uint64_t rflags = 0x2;  // bit 1 is reserved and always 1

  Segment cs, ds, es, fs, gs, ss, tr, ldt;
  DescriptorTable gdtr, idtr;

  std::uint64_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0, cr8 = 0;
  std::uint64_t efer = 0;
  std::array<std::uint64_t, 8> dr{};  // DR0-DR7; DR4/DR5 are aliases and kept at 0

  std::map<std::uint32_t, std::uint64_t> msrs;  // index -> value
  std::uint64_t xcr0 = 1;                       // x87 state is always enabled
  std::vector<std::uint8_t> xsave;              // XSAVE image as KVM_GET_XSAVE returns it
  std::vector<std::uint8_t> lapic;              // 1 KiB LAPIC register page, or empty

  VcpuEvents events;
  ActivityState activity = ActivityState::kActive;

  // The TSC is modelled as guest = host + offset.
  std::uint64_t tsc_offset = 0;
  // Host TSC at the moment the state was captured.
  std::uint64_t host_tsc_at_capture = 0;

  // Returns the guest TSC at capture time: host TSC plus the offset (mod 2^64).
  std::uint64_t guest_tsc() const { return host_tsc_at_capture + tsc_offset; }

  friend bool operator==(const VcpuState&, const VcpuState&) = default;
};

// Well-known MSR indices (SDM Vol. 4).
inline constexpr std::uint32_t kMsrEfer = 0xC0000080;
inline constexpr std::uint32_t kMsrStar = 0xC0000081;
inline constexpr std::uint32_t kMsrLstar = 0xC0000082;
inline constexpr std::uint32_t kMsrFsBase = 0xC0000100;
inline constexpr std::uint32_t kMsrGsBase = 0xC0000101;
inline constexpr std::uint32_t kMsrKernelGsBase = 0xC0000102;
inline constexpr std::uint32_t kMsrTsc = 0x10;
inline constexpr std::uint32_t kMsrPat = 0x277;
inline constexpr std::uint32_t kMsrHvVpRuntime = 0x40000010;     // Hyper-V TLFS: virtual processor run time
inline constexpr std::uint32_t kMsrHvTimeRefCount = 0x40000020;  // Hyper-V TLFS: partition reference time

// Returns whether an MSR is a clock: its value moves on by itself, so two captures of the same
// vCPU differ in it. IA32_TSC travels as tsc_offset instead. Of the Hyper-V MSRs in KVM's list,
// the VP run time counts the vCPU thread's run time (a host write sets its offset, so a restore
// carries it on) and the reference time counter counts the VM's kvmclock (read-only to the
// host), both in 100 ns units.
inline constexpr std::array<std::uint32_t, 3> kClockMsrs = {kMsrTsc, kMsrHvVpRuntime, kMsrHvTimeRefCount};
constexpr bool is_clock_msr(std::uint32_t index) {
  for (std::uint32_t c : kClockMsrs)
    if (index == c) return true;
  return false;
}

// Names a general-purpose register ("rax" ...).
const char* gpr_name(unsigned index);

// One field that differs between two vCPU states, with both values rendered.
struct VcpuFieldDiff {
  std::string field;
  std::string before;
  std::string after;
};

// Lists every field in which two states differ. The TSC fields are compared as stored.
std::vector<VcpuFieldDiff> diff_vcpu(const VcpuState& a, const VcpuState& b);

}  // namespace baton::model
