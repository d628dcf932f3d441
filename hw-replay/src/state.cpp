// vCPU state capture and restore between KVM and model::VcpuState (include/baton/hw/kvm.hpp).
#include <errno.h>
#include "kvm_uapi.hpp"
#include <sys/ioctl.h>
#include <x86intrin.h>

#include <algorithm>
#include <optional>
#include <cstdio>
#include <cstring>

#include "baton/hw/kvm.hpp"

namespace baton::hw {

static_assert(sizeof(kvm_sregs) == KvmVcpu::kSregsBytes);

namespace {

// kvmclock's system-time MSRs (Documentation/virt/kvm/x86/msr.rst): bit 0 enables the clock.
constexpr std::uint32_t kMsrKvmSystemTime = 0x12;
constexpr std::uint32_t kMsrKvmSystemTimeNew = 0x4b564d01;

// Formats a 32-bit value as 0x...
std::string hex32(std::uint32_t v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%x", v);
  return b;
}

Result<void> xio(int fd, unsigned long req, const char* name, unsigned vcpu, void* arg) {
  for (;;) {
    if (::ioctl(fd, req, arg) >= 0) return ok_result();
    if (errno == EINTR) continue;
    return make_error(std::string(name) + "(vcpu=" + std::to_string(vcpu) + ") failed: " + std::strerror(errno));
  }
}

model::Segment from_kvm(const kvm_segment& k) {
  model::Segment s;
  s.base = k.base;
  s.limit = k.limit;
  s.selector = k.selector;
  s.type = k.type;
  s.present = k.present;
  s.dpl = k.dpl;
  s.db = k.db;
  s.s = k.s;
  s.l = k.l;
  s.g = k.g;
  s.avl = k.avl;
  s.unusable = k.unusable;
  return s;
}

kvm_segment to_kvm(const model::Segment& s) {
  kvm_segment k{};
  k.base = s.base;
  k.limit = s.limit;
  k.selector = s.selector;
  k.type = s.type;
  k.present = s.present;
  k.dpl = s.dpl;
  k.db = s.db;
  k.s = s.s;
  k.l = s.l;
  k.g = s.g;
  k.avl = s.avl;
  k.unusable = s.unusable;
  return k;
}

// A struct kvm_msrs with room for n entries.
struct MsrBuffer {
  std::vector<std::uint64_t> words;
  explicit MsrBuffer(std::size_t n) : words((sizeof(kvm_msrs) + n * sizeof(kvm_msr_entry)) / 8 + 1) {}
  kvm_msrs* get() { return reinterpret_cast<kvm_msrs*>(words.data()); }
};

void fill_sregs(kvm_sregs& k, const model::VcpuState& s) {
  k.cs = to_kvm(s.cs);
  k.ds = to_kvm(s.ds);
  k.es = to_kvm(s.es);
  k.fs = to_kvm(s.fs);
  k.gs = to_kvm(s.gs);
  k.ss = to_kvm(s.ss);
  k.tr = to_kvm(s.tr);
  k.ldt = to_kvm(s.ldt);
  k.gdt.base = s.gdtr.base;
  k.gdt.limit = s.gdtr.limit;
  k.idt.base = s.idtr.base;
  k.idt.limit = s.idtr.limit;
  k.cr0 = s.cr0;
  k.cr2 = s.cr2;
  k.cr3 = s.cr3;
  k.cr4 = s.cr4;
  k.cr8 = s.cr8;
  k.efer = s.efer;
  std::memset(k.interrupt_bitmap, 0, sizeof k.interrupt_bitmap);  // pending interrupts travel in the events
}

void fill_regs(kvm_regs& r, const model::VcpuState& s) {
  // struct kvm_regs lists rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8..r15: the model's order.
  __u64* g[] = {&r.rax, &r.rbx, &r.rcx, &r.rdx, &r.rsi, &r.rdi, &r.rsp, &r.rbp,
                        &r.r8,  &r.r9,  &r.r10, &r.r11, &r.r12, &r.r13, &r.r14, &r.r15};
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) *g[i] = s.gpr[i];
  r.rip = s.rip;
  r.rflags = s.rflags;
}

// Copies struct kvm_regs into the model (its order is the model's: rax, rbx, rcx, ... r15).
void regs_to_model(const kvm_regs& regs, model::VcpuState& s) {
  const std::uint64_t g[] = {regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp, regs.rbp,
                             regs.r8,  regs.r9,  regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15};
  for (unsigned i = 0; i < model::VcpuState::kGprCount; ++i) s.gpr[i] = g[i];
  s.rip = regs.rip;
  s.rflags = regs.rflags;
}

// Copies struct kvm_sregs into the model (apic_base travels as MSR 0x1b, the interrupt bitmap as events).
void sregs_to_model(const kvm_sregs& sr, model::VcpuState& s) {
  s.cs = from_kvm(sr.cs);
  s.ds = from_kvm(sr.ds);
  s.es = from_kvm(sr.es);
  s.fs = from_kvm(sr.fs);
  s.gs = from_kvm(sr.gs);
  s.ss = from_kvm(sr.ss);
  s.tr = from_kvm(sr.tr);
  s.ldt = from_kvm(sr.ldt);
  s.gdtr = {sr.gdt.base, sr.gdt.limit};
  s.idtr = {sr.idt.base, sr.idt.limit};
  s.cr0 = sr.cr0;
  s.cr2 = sr.cr2;
  s.cr3 = sr.cr3;
  s.cr4 = sr.cr4;
  s.cr8 = sr.cr8;
  s.efer = sr.efer;
}

// Copies struct kvm_vcpu_events into the model.
void events_to_model(const kvm_vcpu_events& ev, model::VcpuState& s) {
  s.events.exception_pending = ev.exception.injected || ev.exception.pending;
  s.events.exception_nr = ev.exception.nr;
  s.events.exception_has_error_code = ev.exception.has_error_code;
  s.events.exception_error_code = ev.exception.error_code;
  s.events.interrupt_pending = ev.interrupt.injected;
  s.events.interrupt_nr = ev.interrupt.nr;
  s.events.interrupt_shadow = ev.interrupt.shadow;
  s.events.nmi_pending = ev.nmi.injected || ev.nmi.pending;
  s.events.nmi_masked = ev.nmi.masked;
}

// The struct kvm_vcpu_events that restores the model's events (with the interrupt shadow).
kvm_vcpu_events events_from_model(const model::VcpuState& s) {
  kvm_vcpu_events ev{};
  ev.exception.injected = s.events.exception_pending;
  ev.exception.nr = s.events.exception_nr;
  ev.exception.has_error_code = s.events.exception_has_error_code;
  ev.exception.error_code = s.events.exception_error_code;
  ev.interrupt.injected = s.events.interrupt_pending;
  ev.interrupt.nr = s.events.interrupt_nr;
  ev.interrupt.shadow = s.events.interrupt_shadow;
  ev.nmi.injected = s.events.nmi_pending;
  ev.nmi.masked = s.events.nmi_masked;
  ev.flags = KVM_VCPUEVENT_VALID_SHADOW;
  return ev;
}

// Reads the guest TSC through IA32_TSC, bracketed by host RDTSCs: guest = host + offset. The
// `clocks` (other clock MSRs, model::is_clock_msr) come in the same KVM_GET_MSRS into s.msrs.
Result<void> read_tsc(int fd, unsigned vcpu, model::VcpuState& s, const std::vector<std::uint32_t>& clocks = {}) {
  MsrBuffer b(1 + clocks.size());
  b.get()->nmsrs = static_cast<std::uint32_t>(1 + clocks.size());
  b.get()->entries[0].index = model::kMsrTsc;
  for (std::size_t i = 0; i < clocks.size(); ++i) b.get()->entries[1 + i].index = clocks[i];
  const std::uint64_t h0 = __rdtsc();
  const int got = ::ioctl(fd, KVM_GET_MSRS, b.get());
  const std::uint64_t h1 = __rdtsc();
  if (got != static_cast<int>(1 + clocks.size()))
    return make_error("KVM_GET_MSRS(vcpu=" + std::to_string(vcpu) + ", IA32_TSC and " + std::to_string(clocks.size()) +
                      " clock MSRs) failed");
  s.host_tsc_at_capture = h0 + (h1 - h0) / 2;
  s.tsc_offset = b.get()->entries[0].data - s.host_tsc_at_capture;
  for (std::size_t i = 0; i < clocks.size(); ++i) s.msrs[clocks[i]] = b.get()->entries[1 + i].data;
  return ok_result();
}

// Reads the XSAVE area: KVM_GET_XSAVE2 with the size KVM_CAP_XSAVE2 gave (AMX and friends), else 4 KiB.
Result<void> read_xsave(int fd, unsigned vcpu, const StateOptions& opt, model::VcpuState& s) {
  const std::size_t xs = std::max<std::size_t>(opt.xsave_size, sizeof(kvm_xsave));
  s.xsave.resize(xs);  // in place where it has that size already (a capture into a prepared state)
  if (opt.xsave_size > sizeof(kvm_xsave))
    BATON_TRY_VOID(xio(fd, KVM_GET_XSAVE2, "KVM_GET_XSAVE2", vcpu, s.xsave.data()));
  else
    BATON_TRY_VOID(xio(fd, KVM_GET_XSAVE, "KVM_GET_XSAVE", vcpu, s.xsave.data()));
  return ok_result();
}

// Writes the XSAVE area (at least 4 KiB, as KVM_SET_XSAVE reads).
Result<void> write_xsave(int fd, unsigned vcpu, const StateOptions& opt, const model::VcpuState& s) {
  const std::size_t xs = std::max<std::size_t>({opt.xsave_size, sizeof(kvm_xsave), s.xsave.size()});
  std::vector<std::uint64_t> xbuf((xs + 7) / 8);
  std::memcpy(xbuf.data(), s.xsave.data(), s.xsave.size());
  return xio(fd, KVM_SET_XSAVE, "KVM_SET_XSAVE", vcpu, xbuf.data());
}

// Sets the listed MSRs in one KVM_SET_MSRS; an MSR KVM refuses is named with its value.
Result<void> write_msrs(int fd, unsigned vcpu, const std::vector<std::pair<std::uint32_t, std::uint64_t>>& msrs) {
  if (msrs.empty()) return ok_result();
  MsrBuffer b(msrs.size());
  for (std::size_t n = 0; n < msrs.size(); ++n) {
    b.get()->entries[n].index = msrs[n].first;
    b.get()->entries[n].data = msrs[n].second;
  }
  const std::size_t n = msrs.size();
  b.get()->nmsrs = static_cast<std::uint32_t>(n);
  const int set = ::ioctl(fd, KVM_SET_MSRS, b.get());
  if (set < 0)
    return make_error("KVM_SET_MSRS(vcpu=" + std::to_string(vcpu) + ", nmsrs=" + std::to_string(n) +
                      ") failed: " + std::strerror(errno));
  if (static_cast<std::size_t>(set) != n) {
    char m[160];
    std::snprintf(m, sizeof m, "KVM_SET_MSRS(vcpu=%u, nmsrs=%zu) stopped at MSR 0x%x (value 0x%llx)", vcpu, n,
                  b.get()->entries[set].index, static_cast<unsigned long long>(b.get()->entries[set].data));
    return make_error(m);
  }
  return ok_result();
}

// The vCPU attribute of the TSC offset, reading or writing *offset; `has_attr` caches whether
// the kernel has it (KVM_HAS_DEVICE_ATTR; -1: not asked yet).
kvm_device_attr tsc_offset_attr(int fd, std::uint64_t* offset, int& has_attr) {
  kvm_device_attr attr{};
  attr.group = KVM_VCPU_TSC_CTRL;
  attr.attr = KVM_VCPU_TSC_OFFSET;
  attr.addr = reinterpret_cast<std::uint64_t>(offset);
  if (has_attr < 0) has_attr = ::ioctl(fd, KVM_HAS_DEVICE_ATTR, &attr) == 0 ? 1 : 0;
  return attr;
}

// The TSC offset KVM holds for the vCPU, where the kernel has the attribute; nullopt where it
// has not, or the read fails.
std::optional<std::uint64_t> read_tsc_offset_attr(int fd, int& has_attr) {
  std::uint64_t offset = 0;
  kvm_device_attr attr = tsc_offset_attr(fd, &offset, has_attr);
  if (has_attr != 1 || ::ioctl(fd, KVM_GET_DEVICE_ATTR, &attr) != 0) return std::nullopt;
  return offset;
}

// Gives the guest TSC the state's offset to the host TSC: the vCPU attribute where the kernel
// has it (exact; `has_attr` caches KVM_HAS_DEVICE_ATTR), else a write of IA32_TSC from the host TSC now.
Result<void> write_tsc(int fd, unsigned vcpu, const model::VcpuState& s, int& has_attr) {
  std::uint64_t offset = s.tsc_offset;
  kvm_device_attr attr = tsc_offset_attr(fd, &offset, has_attr);
  if (has_attr == 1) return xio(fd, KVM_SET_DEVICE_ATTR, "KVM_SET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)", vcpu, &attr);
  MsrBuffer b(1);
  b.get()->nmsrs = 1;
  b.get()->entries[0].index = model::kMsrTsc;
  b.get()->entries[0].data = __rdtsc() + s.tsc_offset;
  if (::ioctl(fd, KVM_SET_MSRS, b.get()) != 1)
    return make_error("KVM_SET_MSRS(vcpu=" + std::to_string(vcpu) + ", IA32_TSC) failed");
  return ok_result();
}

// Refuses a state whose guest enabled kvmclock: per-VM state (KVM_GET/SET_CLOCK) that a vCPU
// state does not carry, so a guest using it would see its clock jump in a new VM.
Result<void> refuse_kvmclock(const model::VcpuState& s) {
  for (std::uint32_t m : {kMsrKvmSystemTime, kMsrKvmSystemTimeNew})
    if (auto it = s.msrs.find(m); it != s.msrs.end() && (it->second & 1) != 0)
      return make_error("the guest enabled kvmclock (MSR " + hex32(m) +
                        " bit 0); carrying the VM clock (KVM_SET_CLOCK) is not implemented");
  return ok_result();
}

// The struct kvm_debugregs of a state (DR6/DR7 at their reset values when zero).
kvm_debugregs debugregs_from_model(const model::VcpuState& s) {
  kvm_debugregs dr{};
  for (int i = 0; i < 4; ++i) dr.db[i] = s.dr[i];
  dr.dr6 = s.dr[6] ? s.dr[6] : 0xffff0ff0;
  dr.dr7 = s.dr[7] ? s.dr[7] : 0x400;
  return dr;
}

// The struct kvm_mp_state of a state's activity.
kvm_mp_state mp_from_model(const model::VcpuState& s) {
  kvm_mp_state mp{};
  mp.mp_state = s.activity == model::ActivityState::kHlt           ? KVM_MP_STATE_HALTED
                : s.activity == model::ActivityState::kWaitForSipi ? KVM_MP_STATE_INIT_RECEIVED
                                                                   : KVM_MP_STATE_RUNNABLE;
  return mp;
}

}  // namespace

Result<void> KvmVcpu::try_complete_io(bool sync_out, bool debug_exit_ok) {
  auto* run = static_cast<kvm_run*>(run_);
  run->kvm_valid_regs = sync_out ? KVM_SYNC_X86_VALID_FIELDS : 0;
  run->immediate_exit = 1;  // KVM completes the I/O (and applies dirty sync regs), then returns EINTR
  const int r = ::ioctl(fd(), KVM_RUN, 0);
  const int err = errno;
  run->immediate_exit = 0;
  run->kvm_valid_regs = 0;
  synced_ = false;
  if (r == 0 && debug_exit_ok && run->exit_reason == KVM_EXIT_DEBUG) {
    synced_ = sync_out;
    return ok_result();
  }
  if (r == 0)
    return make_error("KVM_RUN with immediate_exit entered the guest (exit reason " +
                      std::to_string(run->exit_reason) + ") instead of returning EINTR");
  if (err != EINTR) return make_error("KVM_RUN(vcpu " + std::to_string(id_) + ", immediate_exit) failed: " + std::strerror(err));
  synced_ = sync_out;
  return ok_result();
}

Result<void> KvmVcpu::read_unprivileged(const StateOptions& opt, model::VcpuState& s) {
  const int fd = this->fd();
  auto* run = static_cast<kvm_run*>(run_);
  if (run->kvm_dirty_regs != 0)
    return make_error("vCPU " + std::to_string(id_) + ": a restore is pending for the next KVM_RUN; capture after it");

  // regs, sregs and events: from the run area when the last KVM_RUN stored them (KVM_CAP_SYNC_REGS).
  if (synced_) {
    regs_to_model(run->s.regs.regs, s);
    sregs_to_model(run->s.regs.sregs, s);
    events_to_model(run->s.regs.events, s);
  } else {
    kvm_regs regs{};
    BATON_TRY_VOID(xio(fd, KVM_GET_REGS, "KVM_GET_REGS", id_, &regs));
    regs_to_model(regs, s);
    kvm_sregs sr{};
    BATON_TRY_VOID(xio(fd, KVM_GET_SREGS, "KVM_GET_SREGS", id_, &sr));
    sregs_to_model(sr, s);
    kvm_vcpu_events ev{};
    BATON_TRY_VOID(xio(fd, KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS", id_, &ev));
    events_to_model(ev, s);
  }
  return read_xsave(fd, id_, opt, s);
}

Result<void> KvmVcpu::try_get_changes_into(const StateOptions& opt, const model::VcpuState& baseline,
                                           model::VcpuState& s) {
  BATON_TRY_VOID(read_unprivileged(opt, s));
  // The clocks run on by themselves: they come with the TSC, in one KVM_GET_MSRS.
  std::vector<std::uint32_t> clocks;
  for (std::uint32_t c : model::kClockMsrs)
    if (baseline.msrs.contains(c)) clocks.push_back(c);
  tsc_from_offset_ = clocks.empty() && kvm_tsc_offset_.has_value();
  if (tsc_from_offset_) {
    // Guest TSC = host TSC + the offset KVM holds, which an unprivileged guest cannot change:
    // no KVM_GET_MSRS inside the pause (the caller checks the offset with a full capture).
    s.host_tsc_at_capture = __rdtsc();
    s.tsc_offset = *kvm_tsc_offset_;
    return ok_result();
  }
  return read_tsc(fd(), id_, s, clocks);
}

Result<model::VcpuState> KvmVcpu::try_get_state(const StateOptions& opt, const model::VcpuState* baseline) {
  model::VcpuState s;
  if (baseline != nullptr) {
    // The parts a guest changes only with privileged instructions (XSETBV, WRMSR, MOV DR, HLT,
    // the APIC page): the baseline's. The caller proves them later against a full capture.
    s.xcr0 = baseline->xcr0;
    s.msrs = baseline->msrs;
    s.lapic = baseline->lapic;
    s.dr = baseline->dr;
    s.activity = baseline->activity;
    BATON_TRY_VOID(try_get_changes_into(opt, *baseline, s));
    return s;
  }
  const int fd = this->fd();
  BATON_TRY_VOID(read_unprivileged(opt, s));
  tsc_from_offset_ = false;
  BATON_TRY_VOID(read_tsc(fd, id_, s));
  // The offset KVM holds, where it is what IA32_TSC shows: the guest TSC read above, less the
  // host TSC around it, within a bracket of the ioctl's length (TSC scaling would put it far off).
  kvm_tsc_offset_ = read_tsc_offset_attr(fd, has_tsc_attr_);
  if (kvm_tsc_offset_) {
    const std::int64_t gap = static_cast<std::int64_t>(*kvm_tsc_offset_ - s.tsc_offset);
    if (gap > 1'000'000 || gap < -1'000'000) kvm_tsc_offset_.reset();
  }

  kvm_xcrs xcrs{};
  BATON_TRY_VOID(xio(fd, KVM_GET_XCRS, "KVM_GET_XCRS", id_, &xcrs));
  for (std::uint32_t i = 0; i < xcrs.nr_xcrs && i < KVM_MAX_XCRS; ++i)
    if (xcrs.xcrs[i].xcr == 0) s.xcr0 = xcrs.xcrs[i].value;

  // MSRs: KVM_GET_MSRS stops at the first MSR it cannot read and returns how many it read;
  // record that one in unreadable_msrs() and go on, so one unreadable MSR does not hide the rest.
  unreadable_msrs_.clear();
  std::vector<std::uint32_t> idx;
  for (std::uint32_t m : opt.msr_indices)
    if (m != model::kMsrTsc) idx.push_back(m);
  std::size_t from = 0;
  while (from < idx.size()) {
    const std::size_t n = idx.size() - from;
    MsrBuffer b(n);
    b.get()->nmsrs = static_cast<std::uint32_t>(n);
    for (std::size_t i = 0; i < n; ++i) b.get()->entries[i].index = idx[from + i];
    const int got = ::ioctl(fd, KVM_GET_MSRS, b.get());
    if (got < 0)
      return make_error("KVM_GET_MSRS(vcpu=" + std::to_string(id_) + ", nmsrs=" + std::to_string(n) +
                        ") failed: " + std::strerror(errno));
    for (int i = 0; i < got; ++i) s.msrs[b.get()->entries[i].index] = b.get()->entries[i].data;
    if (static_cast<std::size_t>(got) < n) unreadable_msrs_.push_back(idx[from + static_cast<std::size_t>(got)]);
    from += static_cast<std::size_t>(got) + 1;  // the MSR at `got` could not be read
  }

  if (opt.lapic) {
    kvm_lapic_state l{};
    BATON_TRY_VOID(xio(fd, KVM_GET_LAPIC, "KVM_GET_LAPIC", id_, &l));
    s.lapic.assign(reinterpret_cast<std::uint8_t*>(l.regs), reinterpret_cast<std::uint8_t*>(l.regs) + sizeof l.regs);
  }

  kvm_debugregs dr{};
  BATON_TRY_VOID(xio(fd, KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS", id_, &dr));
  for (int i = 0; i < 4; ++i) s.dr[i] = dr.db[i];
  s.dr[6] = dr.dr6;
  s.dr[7] = dr.dr7;

  kvm_mp_state mp{};
  BATON_TRY_VOID(xio(fd, KVM_GET_MP_STATE, "KVM_GET_MP_STATE", id_, &mp));
  switch (mp.mp_state) {
    case KVM_MP_STATE_HALTED: s.activity = model::ActivityState::kHlt; break;
    case KVM_MP_STATE_INIT_RECEIVED:
    case KVM_MP_STATE_SIPI_RECEIVED:
    case KVM_MP_STATE_UNINITIALIZED: s.activity = model::ActivityState::kWaitForSipi; break;
    default: s.activity = model::ActivityState::kActive; break;
  }
  return s;
}

Result<void> KvmVcpu::try_set_boot_state(const model::VcpuState& s) {
  synced_ = false;
  kvm_sregs sr{};
  BATON_TRY_VOID(xio(fd(), KVM_GET_SREGS, "KVM_GET_SREGS", id_, &sr));  // keeps apic_base
  fill_sregs(sr, s);
  BATON_TRY_VOID(xio(fd(), KVM_SET_SREGS, "KVM_SET_SREGS", id_, &sr));
  kvm_regs regs{};
  fill_regs(regs, s);
  BATON_TRY_VOID(xio(fd(), KVM_SET_REGS, "KVM_SET_REGS", id_, &regs));
  return ok_result();
}

Result<void> KvmVcpu::try_set_state(const model::VcpuState& s, const StateOptions& opt) {
  const int fd = this->fd();
  synced_ = false;
  sregs_loaded_.reset();
  BATON_TRY_VOID(refuse_kvmclock(s));
  // XSAVE and XCRs first; the sregs (with the APIC base) before the MSRs and the LAPIC; the
  // regs last. KVM checks XSAVE against what it supports, not against the current XCR0.
  if (!s.xsave.empty()) BATON_TRY_VOID(write_xsave(fd, id_, opt, s));
  kvm_xcrs xcrs{};
  xcrs.nr_xcrs = 1;
  xcrs.xcrs[0].xcr = 0;
  xcrs.xcrs[0].value = s.xcr0;
  BATON_TRY_VOID(xio(fd, KVM_SET_XCRS, "KVM_SET_XCRS", id_, &xcrs));

  kvm_sregs sr{};
  BATON_TRY_VOID(xio(fd, KVM_GET_SREGS, "KVM_GET_SREGS", id_, &sr));
  fill_sregs(sr, s);
  if (auto it = s.msrs.find(0x1b); it != s.msrs.end()) sr.apic_base = it->second;  // IA32_APIC_BASE
  BATON_TRY_VOID(xio(fd, KVM_SET_SREGS, "KVM_SET_SREGS", id_, &sr));

  std::vector<std::pair<std::uint32_t, std::uint64_t>> msrs(s.msrs.begin(), s.msrs.end());
  BATON_TRY_VOID(write_msrs(fd, id_, msrs));
  BATON_TRY_VOID(write_tsc(fd, id_, s, has_tsc_attr_));

  if (opt.lapic && !s.lapic.empty()) {
    kvm_lapic_state l{};
    std::memcpy(l.regs, s.lapic.data(), std::min(sizeof l.regs, s.lapic.size()));
    BATON_TRY_VOID(xio(fd, KVM_SET_LAPIC, "KVM_SET_LAPIC", id_, &l));
  }
  kvm_vcpu_events ev = events_from_model(s);
  BATON_TRY_VOID(xio(fd, KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", id_, &ev));
  kvm_mp_state mp = mp_from_model(s);
  BATON_TRY_VOID(xio(fd, KVM_SET_MP_STATE, "KVM_SET_MP_STATE", id_, &mp));
  kvm_debugregs dr = debugregs_from_model(s);
  BATON_TRY_VOID(xio(fd, KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", id_, &dr));
  kvm_regs regs{};
  fill_regs(regs, s);
  BATON_TRY_VOID(xio(fd, KVM_SET_REGS, "KVM_SET_REGS", id_, &regs));
  std::memcpy(sregs_loaded_.emplace().data(), &sr, sizeof sr);
  return ok_result();
}

Result<StateWrite> KvmVcpu::try_set_state_changes(const model::VcpuState& loaded, const model::VcpuState& s,
                                                  const StateOptions& opt) {
  const int fd = this->fd();
  BATON_TRY_VOID(refuse_kvmclock(s));
  const auto apic_base = [](const model::VcpuState& x) {
    auto it = x.msrs.find(0x1b);
    return it == x.msrs.end() ? std::optional<std::uint64_t>{} : std::optional<std::uint64_t>{it->second};
  };
  StateWrite w;
  // The sregs go after the MSRs and the LAPIC here; that is only right while the APIC base
  // stays. Without a known loaded sregs, or with a new APIC base, restore everything.
  if (!sregs_loaded_ || apic_base(loaded) != apic_base(s)) {
    BATON_TRY_VOID(try_set_state(s, opt));
    w.all = true;
    return w;
  }
  if (s.xsave != loaded.xsave) {
    BATON_TRY_VOID(write_xsave(fd, id_, opt, s));
    w.xsave = true;
  }
  if (s.xcr0 != loaded.xcr0) {
    kvm_xcrs xcrs{};
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = s.xcr0;
    BATON_TRY_VOID(xio(fd, KVM_SET_XCRS, "KVM_SET_XCRS", id_, &xcrs));
    w.xcr0 = true;
  }
  std::vector<std::pair<std::uint32_t, std::uint64_t>> msrs;
  for (const auto& [index, value] : s.msrs)
    if (auto it = loaded.msrs.find(index); it == loaded.msrs.end() || it->second != value) msrs.emplace_back(index, value);
  BATON_TRY_VOID(write_msrs(fd, id_, msrs));
  for (const auto& m : msrs) w.msrs.push_back(m.first);
  BATON_TRY_VOID(write_tsc(fd, id_, s, has_tsc_attr_));
  if (opt.lapic && !s.lapic.empty() && s.lapic != loaded.lapic) {
    kvm_lapic_state l{};
    std::memcpy(l.regs, s.lapic.data(), std::min(sizeof l.regs, s.lapic.size()));
    BATON_TRY_VOID(xio(fd, KVM_SET_LAPIC, "KVM_SET_LAPIC", id_, &l));
    w.lapic = true;
  }
  if (s.dr != loaded.dr) {
    kvm_debugregs dr = debugregs_from_model(s);
    BATON_TRY_VOID(xio(fd, KVM_SET_DEBUGREGS, "KVM_SET_DEBUGREGS", id_, &dr));
    w.dr = true;
  }
  if (s.activity != loaded.activity) {
    kvm_mp_state mp = mp_from_model(s);
    BATON_TRY_VOID(xio(fd, KVM_SET_MP_STATE, "KVM_SET_MP_STATE", id_, &mp));
    w.mp = true;
  }
  // regs, sregs and events: always written, in the run area for the next KVM_RUN where KVM
  // offers KVM_CAP_SYNC_REGS (it applies them before it enters the guest), else by ioctl.
  kvm_sregs sr{};
  std::memcpy(&sr, sregs_loaded_->data(), sizeof sr);
  fill_sregs(sr, s);
  kvm_regs regs{};
  fill_regs(regs, s);
  const kvm_vcpu_events ev = events_from_model(s);
  if (opt.sync_regs) {
    auto* run = static_cast<kvm_run*>(run_);
    run->s.regs.regs = regs;
    run->s.regs.sregs = sr;
    run->s.regs.events = ev;
    run->kvm_dirty_regs = KVM_SYNC_X86_VALID_FIELDS;
  } else {
    BATON_TRY_VOID(xio(fd, KVM_SET_SREGS, "KVM_SET_SREGS", id_, &sr));
    kvm_vcpu_events e = ev;
    BATON_TRY_VOID(xio(fd, KVM_SET_VCPU_EVENTS, "KVM_SET_VCPU_EVENTS", id_, &e));
    BATON_TRY_VOID(xio(fd, KVM_SET_REGS, "KVM_SET_REGS", id_, &regs));
  }
  synced_ = false;
  std::memcpy(sregs_loaded_->data(), &sr, sizeof sr);
  return w;
}

std::optional<std::uint64_t> KvmVcpu::read_tsc_offset() { return read_tsc_offset_attr(fd(), has_tsc_attr_); }

model::VcpuState KvmVcpu::state_after(const model::VcpuState& loaded, const model::VcpuState& s, const StateWrite& w) const {
  if (w.all) return s;
  // Every part from `s` where it was written and from `loaded` where it was kept, so that a
  // part skipped wrongly shows in a comparison with the state captured at the pause.
  model::VcpuState now = loaded;
  if (w.xsave) now.xsave = s.xsave;
  if (w.xcr0) now.xcr0 = s.xcr0;
  for (std::uint32_t i : w.msrs) now.msrs[i] = s.msrs.at(i);
  if (w.lapic) now.lapic = s.lapic;
  if (w.dr) now.dr = s.dr;
  if (w.mp) now.activity = s.activity;
  now.tsc_offset = s.tsc_offset;
  now.host_tsc_at_capture = s.host_tsc_at_capture;
  // regs, sregs and events as written: the struct kvm_sregs last set, the regs and events of s.
  if (sregs_loaded_) {
    kvm_sregs sr{};
    std::memcpy(&sr, sregs_loaded_->data(), sizeof sr);
    sregs_to_model(sr, now);
  }
  kvm_regs regs{};
  fill_regs(regs, s);
  regs_to_model(regs, now);
  events_to_model(events_from_model(s), now);
  return now;
}

}  // namespace baton::hw
