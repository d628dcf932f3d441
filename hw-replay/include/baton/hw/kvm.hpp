// Thin wrappers over /dev/kvm: the system, VM and vCPU file descriptors.
//
// Every ioctl comes twice: `try_x(...)` returns a Result whose error names the ioctl, its
// arguments and errno; `x(...)` does the same call and throws KvmError with that message
// (the CLI's main prints it as one `baton:` line). No <linux/kvm.h> type appears here: the
// structures stay in hw-replay/src. docs/kvm-backend.md describes the backend.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"

namespace baton::hw {

// Thrown by the plain (non-try_) calls.
class KvmError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Returns the value of a Result or throws KvmError with its message.
template <typename T>
T or_throw(Result<T> r) {
  if (!r) throw KvmError(r.error().message);
  return std::move(r).value();
}
inline void or_throw(Result<void> r) {
  if (!r) throw KvmError(r.error().message);
}

// An owned file descriptor, closed on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  Fd(Fd&& o) noexcept : fd_(o.release()) {}
  Fd& operator=(Fd&& o) noexcept;
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd();
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_ = -1;
};

inline constexpr const char* kKvmDevice = "/dev/kvm";
// The KVM device baton uses: $BATON_KVM_DEVICE when set (tests point it at a missing file to
// see the no-KVM path on any machine), else /dev/kvm.
std::string kvm_device();

// Why the KVM device at `path` cannot be used here (one line, naming the path, errno and what
// to do), or nullopt when it opens and speaks KVM API version 12. Default: kvm_device().
std::optional<std::string> kvm_unavailable_reason(const std::string& path = kvm_device());

// Checks that an openable device really works: creates a VM and a vCPU and reads the supported
// CPUID and the MSR index list. Returns a one-line summary ("API 12, 1 VM + 1 vCPU created,
// 52 CPUID entries, 39 MSRs"); any failure is an error naming the ioctl. Call it only when
// kvm_unavailable_reason() said the device opens: a failure here is a broken backend.
Result<std::string> probe_kvm(const std::string& path = kvm_device());

// Which KVM serves this host, as figures and test logs name it:
//   "vmx"        kvm_intel on bare metal;
//   "svm"        kvm_amd on bare metal;
//   "nested-vmx" / "nested-svm"  kvm_intel / kvm_amd inside a VM (CPUID's hypervisor bit),
//                e.g. scripts/nested-kvm.sh's QEMU TCG host: correctness only, not speed;
//   "pvm"        the software KVM of PVM hosts (kvm_pvm: ring 0 emulated, ring 3 native);
//   "none"       no KVM module is loaded.
// It reads /sys/module and /proc/cpuinfo only; whether the device opens is
// kvm_unavailable_reason()'s question. BATON_KVM_FLAVOUR overrides it (for a host the
// rules above misname).
std::string host_flavour();

// The KVM_CAP_* names KvmSystem::capabilities() asks about: what a user of baton explore or a
// migration wants to know about the host (memslots, vCPUs, debugging, dirty logging, TSC, XSAVE).
const std::vector<std::pair<const char*, unsigned>>& host_capability_names();

class KvmVm;
class KvmVcpu;

// The KVM system fd (/dev/kvm).
class KvmSystem {
 public:
  // Opens the device and checks KVM_GET_API_VERSION == 12. The error is one line such as
  // "/dev/kvm: No such file or directory — this host has no KVM ...".
  static Result<KvmSystem> try_open(const std::string& path = kKvmDevice);
  static KvmSystem open(const std::string& path = kKvmDevice) { return or_throw(try_open(path)); }

  int fd() const { return fd_.get(); }
  const std::string& path() const { return path_; }

  // KVM_CHECK_EXTENSION on the system fd: 0 when the capability is absent.
  Result<int> try_check_extension(unsigned cap) const;
  int check_extension(unsigned cap) const { return or_throw(try_check_extension(cap)); }
  // KVM_CHECK_EXTENSION of every capability in host_capability_names(), in that order; a
  // capability the ioctl refuses counts as 0.
  std::vector<std::pair<std::string, int>> capabilities() const;
  // KVM_GET_VCPU_MMAP_SIZE.
  Result<std::size_t> try_vcpu_mmap_size() const;
  // KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU.
  Result<std::vector<std::uint32_t>> try_msr_index_list() const;
  std::vector<std::uint32_t> msr_index_list() const { return or_throw(try_msr_index_list()); }
  // KVM_GET_SUPPORTED_CPUID, as the raw bytes of a struct kvm_cpuid2 (for KvmVcpu::try_set_cpuid).
  Result<std::vector<std::uint8_t>> try_supported_cpuid() const;
  // KVM_CREATE_VM (default machine type).
  Result<KvmVm> try_create_vm() const;
  KvmVm create_vm() const;

 private:
  KvmSystem(Fd fd, std::string path) : fd_(std::move(fd)), path_(std::move(path)) {}
  Fd fd_;
  std::string path_;
};

// A VM fd.
class KvmVm {
 public:
  int fd() const { return fd_.get(); }

  // KVM_CHECK_EXTENSION on the VM fd (e.g. KVM_CAP_XSAVE2 gives the XSAVE buffer size).
  Result<int> try_check_extension(unsigned cap) const;
  // KVM_SET_USER_MEMORY_REGION: slot `slot` maps [gpa, gpa + size) to host memory at `hva`.
  Result<void> try_set_user_memory_region(std::uint32_t slot, std::uint32_t flags, std::uint64_t gpa,
                                          std::uint64_t size, void* hva);
  void set_user_memory_region(std::uint32_t slot, std::uint32_t flags, std::uint64_t gpa, std::uint64_t size,
                              void* hva) {
    or_throw(try_set_user_memory_region(slot, flags, gpa, size, hva));
  }
  // KVM_SET_TSS_ADDR (three pages KVM uses for real-mode emulation on VMX).
  Result<void> try_set_tss_addr(std::uint64_t gpa);
  // KVM_CREATE_IRQCHIP (in-kernel LAPIC/IOAPIC/PIC; needed for KVM_GET_LAPIC).
  Result<void> try_create_irqchip();
  // KVM_GET_DIRTY_LOG for a slot of `pages` pages: one bit per page, and the log is reset.
  Result<std::vector<std::uint64_t>> try_get_dirty_log(std::uint32_t slot, std::uint64_t pages);
  // KVM_CREATE_VCPU with id `id`, and the mmap of its kvm_run area.
  Result<KvmVcpu> try_create_vcpu(unsigned id, std::size_t mmap_size);
  KvmVcpu create_vcpu(unsigned id, std::size_t mmap_size);

  bool has_irqchip() const { return irqchip_; }

 private:
  friend class KvmSystem;
  explicit KvmVm(Fd fd) : fd_(std::move(fd)) {}
  Fd fd_;
  bool irqchip_ = false;
};

// Options of a state capture or restore.
struct StateOptions {
  std::vector<std::uint32_t> msr_indices;  // from KvmSystem::try_msr_index_list(); IA32_TSC is handled apart
  std::size_t xsave_size = 0;              // KVM_CAP_XSAVE2 on the VM fd, or 0 for the 4 KiB KVM_GET_XSAVE
  bool lapic = false;                      // the VM has an in-kernel irqchip
  bool sync_regs = false;                  // KVM_CAP_SYNC_REGS offers regs, sregs and events in kvm_run
};

// What KvmVcpu::try_set_state_changes wrote besides the TSC, regs, sregs and events (always).
struct StateWrite {
  bool all = false;  // the whole state (try_set_state)
  bool xsave = false, xcr0 = false, lapic = false, dr = false, mp = false;
  std::vector<std::uint32_t> msrs;  // the MSRs written
};

// A vCPU fd and its mapped kvm_run area.
class KvmVcpu {
 public:
  KvmVcpu(KvmVcpu&& o) noexcept;
  KvmVcpu& operator=(KvmVcpu&& o) noexcept;
  KvmVcpu(const KvmVcpu&) = delete;
  KvmVcpu& operator=(const KvmVcpu&) = delete;
  ~KvmVcpu();

  int fd() const { return fd_.get(); }
  unsigned id() const { return id_; }
  // The struct kvm_run area (cast in hw-replay/src only).
  void* run_area() const { return run_; }

  // KVM_RUN once. EINTR is not an error: it returns false (the run was interrupted).
  Result<bool> try_run();
  // Sets kvm_run.immediate_exit: while it is set, KVM_RUN completes a pending I/O or MMIO exit
  // and returns EINTR without entering the guest. Safe to call from another thread, which
  // then signals this vCPU's thread so that a KVM_RUN already inside the guest returns too.
  void set_immediate_exit(bool on);
  // KVM_SET_GUEST_DEBUG: with `single_step`, every KVM_RUN returns KVM_EXIT_DEBUG after one
  // guest instruction (KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP); without, debugging off.
  Result<void> try_set_guest_debug(bool single_step);
  // KVM_SET_CPUID2 with the bytes of a struct kvm_cpuid2 (KvmSystem::try_supported_cpuid()).
  Result<void> try_set_cpuid(const std::vector<std::uint8_t>& cpuid2);

  // KVM_RUN with immediate_exit: completes a pending I/O or MMIO exit without entering the
  // guest (KVM returns EINTR) and applies a restore left for the next KVM_RUN. With
  // `sync_out`, KVM also stores regs, sregs and events in the run area (KVM_CAP_SYNC_REGS),
  // and the next try_get_state() takes them from there instead of three ioctls.
  Result<void> try_complete_io(bool sync_out, bool debug_exit_ok = false);
  // Forgets the regs, sregs and events in the run area, so that the next capture reads them by ioctl.
  void forget_sync() { synced_ = false; }
  // Captures the whole state: regs, sregs, XSAVE and XCRs, the MSRs of the list, the LAPIC,
  // vCPU events, debug registers, MP state and the TSC (guest = host + offset). With a
  // `baseline`, reads only what an unprivileged guest changes (regs, sregs, events, XSAVE and
  // the TSC) and takes XCR0, the MSRs, the LAPIC, the debug registers and the MP state from
  // it: the caller must prove those against a full capture of the stopped vCPU later.
  Result<model::VcpuState> try_get_state(const StateOptions& opt, const model::VcpuState* baseline = nullptr);
  // try_get_state with a `baseline`, into `s`, which must hold the baseline's XCR0, MSRs,
  // LAPIC, debug registers and MP state already (a copy of it, or an earlier capture into it):
  // only the rest is written, in place, so that a prepared `s` allocates nothing.
  Result<void> try_get_changes_into(const StateOptions& opt, const model::VcpuState& baseline, model::VcpuState& s);
  model::VcpuState get_state(const StateOptions& opt) { return or_throw(try_get_state(opt)); }
  // The listed MSRs that KVM_GET_MSRS refused in the last capture (not in its state): empty on
  // every host measured so far (PVM, nested SVM); tests assert it, so a refusal is never silent.
  const std::vector<std::uint32_t>& unreadable_msrs() const { return unreadable_msrs_; }
  // The guest's TSC offset as KVM holds it (KVM_GET_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET)), read by
  // the last full capture where the kernel has that attribute and the guest TSC is the host
  // TSC plus it (no TSC scaling: checked against IA32_TSC in the same capture); else nullopt.
  // A capture with a baseline and no other clock MSRs then takes the guest TSC as RDTSC plus
  // this offset, without an ioctl, and says so (tsc_from_offset()); the caller checks that
  // the offset still holds with a full capture later.
  std::optional<std::uint64_t> kvm_tsc_offset() const { return kvm_tsc_offset_; }
  bool tsc_from_offset() const { return tsc_from_offset_; }
  // Reads the TSC offset KVM applies now (the attribute), nullopt where the kernel lacks it.
  std::optional<std::uint64_t> read_tsc_offset();
  // Restores a captured state (XSAVE, XCRs, sregs, MSRs, TSC, LAPIC, events, MP state, debug
  // registers, regs; sregs before the MSRs and the LAPIC, regs last). The guest TSC
  // keeps its offset to the host TSC, so it stays monotonic and continuous.
  Result<void> try_set_state(const model::VcpuState& s, const StateOptions& opt);
  void set_state(const model::VcpuState& s, const StateOptions& opt) { or_throw(try_set_state(s, opt)); }
  // Restores `s` on a vCPU that holds `loaded` (set by try_set_state and not run since):
  // writes only the parts of `s` that differ, the TSC offset, and regs, sregs and events, which
  // go in the run area for the next KVM_RUN where KVM_CAP_SYNC_REGS exists (KVM applies them
  // before it enters the guest). A new APIC base, or no try_set_state before, restores all of
  // `s`. Returns what it wrote; state_after() turns that into the state the vCPU holds.
  Result<StateWrite> try_set_state_changes(const model::VcpuState& loaded, const model::VcpuState& s,
                                           const StateOptions& opt);
  // The state the vCPU holds after try_set_state_changes(loaded, s) wrote `w`: each part from
  // `s` where it was written, from `loaded` where it was kept.
  model::VcpuState state_after(const model::VcpuState& loaded, const model::VcpuState& s, const StateWrite& w) const;
  // Sets only what a freshly loaded guest needs: segments, control registers, EFER, GPRs, RIP, RFLAGS.
  Result<void> try_set_boot_state(const model::VcpuState& s);

 private:
  friend class KvmVm;
  KvmVcpu(Fd fd, unsigned id, void* run, std::size_t run_size) : fd_(std::move(fd)), id_(id), run_(run), run_size_(run_size) {}
  Fd fd_;
  unsigned id_ = 0;
  void* run_ = nullptr;
  std::size_t run_size_ = 0;
  std::vector<std::uint32_t> unreadable_msrs_;
  // Reads regs, sregs and events (from the run area where synced_) and the XSAVE area into `s`.
  Result<void> read_unprivileged(const StateOptions& opt, model::VcpuState& s);
  bool synced_ = false;  // the run area holds regs, sregs and events of the stopped vCPU
  int has_tsc_attr_ = -1;  // KVM_HAS_DEVICE_ATTR(KVM_VCPU_TSC_OFFSET): -1 not asked yet
  std::optional<std::uint64_t> kvm_tsc_offset_;
  bool tsc_from_offset_ = false;  // the last capture took the TSC from kvm_tsc_offset_
 public:
  static constexpr std::size_t kSregsBytes = 312;  // sizeof(struct kvm_sregs), pinned in state.cpp
 private:
  std::optional<std::array<std::uint8_t, kSregsBytes>> sregs_loaded_;  // the struct kvm_sregs last set
};

}  // namespace baton::hw
