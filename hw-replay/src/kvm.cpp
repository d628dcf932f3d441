// The /dev/kvm wrappers (include/baton/hw/kvm.hpp). Every ioctl goes through call(), which
// names the ioctl and its arguments in the error.
#include "baton/hw/kvm.hpp"

#include <errno.h>
#include <fcntl.h>
#include "kvm_uapi.hpp"
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <x86intrin.h>

#include <cstdio>
#include <cstdlib>
#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>

namespace baton::hw {

namespace {

std::string hex(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// Runs one ioctl, retrying on EINTR unless `eintr_ok`; the error names it, its arguments and errno.
Result<int> call(int fd, unsigned long req, const char* name, const std::string& args, void* arg) {
  for (;;) {
    const int r = ::ioctl(fd, req, arg);
    if (r >= 0) return r;
    if (errno == EINTR) continue;
    const int e = errno;
    return make_error(std::string(name) + "(" + args + ") failed: " + std::strerror(e));
  }
}
Result<int> call(int fd, unsigned long req, const char* name, const std::string& args, unsigned long arg) {
  return call(fd, req, name, args, reinterpret_cast<void*>(arg));
}

}  // namespace

Fd& Fd::operator=(Fd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

Fd::~Fd() {
  if (fd_ >= 0) ::close(fd_);
}

std::optional<std::string> kvm_unavailable_reason(const std::string& path) {
  auto s = KvmSystem::try_open(path);
  if (s) return std::nullopt;
  return s.error().message;
}

std::string kvm_device() {
  const char* d = std::getenv("BATON_KVM_DEVICE");
  return d != nullptr && *d != '\0' ? std::string(d) : std::string(kKvmDevice);
}

Result<std::string> probe_kvm(const std::string& path) {
  auto sys = KvmSystem::try_open(path);
  if (!sys) return sys.error();
  auto vm = sys->try_create_vm();
  if (!vm) return vm.error();
  auto mmap_size = sys->try_vcpu_mmap_size();
  if (!mmap_size) return mmap_size.error();
  auto vcpu = vm->try_create_vcpu(0, *mmap_size);
  if (!vcpu) return vcpu.error();
  auto cpuid = sys->try_supported_cpuid();
  if (!cpuid) return cpuid.error();
  const std::size_t entries = (cpuid->size() - sizeof(kvm_cpuid2)) / sizeof(kvm_cpuid_entry2);
  if (entries == 0) return make_error(path + ": KVM_GET_SUPPORTED_CPUID returned no entries");
  BATON_TRY_VOID(vcpu->try_set_cpuid(*cpuid));
  auto msrs = sys->try_msr_index_list();
  if (!msrs) return msrs.error();
  return "API " + std::to_string(KVM_API_VERSION) + ", 1 VM + 1 vCPU created, " + std::to_string(entries) +
         " CPUID entries set, " + std::to_string(msrs->size()) + " MSRs listed";
}

std::string host_flavour() {
  if (const char* f = std::getenv("BATON_KVM_FLAVOUR"); f != nullptr && *f != '\0') return f;
  auto loaded = [](const char* m) { return ::access((std::string("/sys/module/") + m).c_str(), F_OK) == 0; };
  auto under_hypervisor = [] {
    std::FILE* f = std::fopen("/proc/cpuinfo", "r");
    if (f == nullptr) return false;
    char line[4096];
    bool hv = false;
    while (!hv && std::fgets(line, sizeof line, f) != nullptr)
      if (std::strncmp(line, "flags", 5) == 0) hv = std::strstr(line, " hypervisor") != nullptr;
    std::fclose(f);
    return hv;
  };
  if (loaded("kvm_pvm")) return "pvm";
  const char* base = loaded("kvm_intel") ? "vmx" : loaded("kvm_amd") ? "svm" : nullptr;
  if (base == nullptr) return "none";
  return under_hypervisor() ? std::string("nested-") + base : std::string(base);
}

Result<KvmSystem> KvmSystem::try_open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) {
    const int e = errno;
    std::string why = path + ": " + std::strerror(e);
    if (e == ENOENT || e == ENXIO || e == ENODEV)
      why += " — this host has no KVM (no kvm_intel/kvm_amd module bound: no VT-x/AMD-V, or a guest without "
             "nested virtualization); run on a KVM host";
    else if (e == EACCES || e == EPERM)
      why += " — add this user to the group that owns " + path + " (usually 'kvm') or run as root";
    return make_error(why);
  }
  Fd owned(fd);
  const int v = ::ioctl(fd, KVM_GET_API_VERSION, 0);
  if (v < 0) {
    const int e = errno;
    return make_error(path + ": KVM_GET_API_VERSION failed: " + std::strerror(e) + " — not a KVM device");
  }
  if (v != KVM_API_VERSION)
    return make_error(path + ": KVM API version " + std::to_string(v) + ", baton needs " +
                      std::to_string(KVM_API_VERSION));
  return KvmSystem(std::move(owned), path);
}

Result<int> KvmSystem::try_check_extension(unsigned cap) const {
  return call(fd(), KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION", "cap=" + std::to_string(cap), cap);
}

const std::vector<std::pair<const char*, unsigned>>& host_capability_names() {
  static const std::vector<std::pair<const char*, unsigned>> names = {
      {"KVM_CAP_NR_VCPUS", KVM_CAP_NR_VCPUS},
      {"KVM_CAP_MAX_VCPUS", KVM_CAP_MAX_VCPUS},
      {"KVM_CAP_NR_MEMSLOTS", KVM_CAP_NR_MEMSLOTS},
      {"KVM_CAP_USER_MEMORY", KVM_CAP_USER_MEMORY},
      {"KVM_CAP_READONLY_MEM", KVM_CAP_READONLY_MEM},
      {"KVM_CAP_SYNC_MMU", KVM_CAP_SYNC_MMU},
      {"KVM_CAP_IRQCHIP", KVM_CAP_IRQCHIP},
      {"KVM_CAP_SET_TSS_ADDR", KVM_CAP_SET_TSS_ADDR},
      {"KVM_CAP_IMMEDIATE_EXIT", KVM_CAP_IMMEDIATE_EXIT},
      {"KVM_CAP_SET_GUEST_DEBUG", KVM_CAP_SET_GUEST_DEBUG},
      {"KVM_CAP_X86_ROBUST_SINGLESTEP", KVM_CAP_X86_ROBUST_SINGLESTEP},
      {"KVM_CAP_VCPU_EVENTS", KVM_CAP_VCPU_EVENTS},
      {"KVM_CAP_XSAVE", KVM_CAP_XSAVE},
      {"KVM_CAP_XSAVE2", KVM_CAP_XSAVE2},
      {"KVM_CAP_TSC_CONTROL", KVM_CAP_TSC_CONTROL},
      {"KVM_CAP_GET_TSC_KHZ", KVM_CAP_GET_TSC_KHZ},
      {"KVM_CAP_ADJUST_CLOCK", KVM_CAP_ADJUST_CLOCK},
      {"KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2},
      {"KVM_CAP_DIRTY_LOG_RING", KVM_CAP_DIRTY_LOG_RING},
      {"KVM_CAP_EXCEPTION_PAYLOAD", KVM_CAP_EXCEPTION_PAYLOAD},
      {"KVM_CAP_X86_SMM", KVM_CAP_X86_SMM},
  };
  return names;
}

std::vector<std::pair<std::string, int>> KvmSystem::capabilities() const {
  std::vector<std::pair<std::string, int>> out;
  for (const auto& [name, cap] : host_capability_names()) {
    const int r = ::ioctl(fd(), KVM_CHECK_EXTENSION, static_cast<unsigned long>(cap));
    out.emplace_back(name, r < 0 ? 0 : r);
  }
  return out;
}

Result<std::size_t> KvmSystem::try_vcpu_mmap_size() const {
  auto r = call(fd(), KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE", "", 0ul);
  if (!r) return r.error();
  return static_cast<std::size_t>(*r);
}

Result<std::vector<std::uint32_t>> KvmSystem::try_msr_index_list() const {
  // The first call with room for none fails with E2BIG and says how many there are.
  kvm_msr_list probe{};
  if (::ioctl(fd(), KVM_GET_MSR_INDEX_LIST, &probe) < 0 && errno != E2BIG)
    return make_error(std::string("KVM_GET_MSR_INDEX_LIST(nmsrs=0) failed: ") + std::strerror(errno));
  const std::uint32_t n = probe.nmsrs;
  std::vector<std::uint32_t> buf(1 + n);  // nmsrs, then the indices
  auto* list = reinterpret_cast<kvm_msr_list*>(buf.data());
  list->nmsrs = n;
  BATON_TRY_VOID(call(fd(), KVM_GET_MSR_INDEX_LIST, "KVM_GET_MSR_INDEX_LIST", "nmsrs=" + std::to_string(n), list));
  return std::vector<std::uint32_t>(buf.begin() + 1, buf.begin() + 1 + list->nmsrs);
}

Result<std::vector<std::uint8_t>> KvmSystem::try_supported_cpuid() const {
  for (std::uint32_t n = 64; n <= 4096; n *= 2) {
    std::vector<std::uint8_t> buf(sizeof(kvm_cpuid2) + n * sizeof(kvm_cpuid_entry2));
    auto* c = reinterpret_cast<kvm_cpuid2*>(buf.data());
    c->nent = n;
    if (::ioctl(fd(), KVM_GET_SUPPORTED_CPUID, c) == 0) {
      buf.resize(sizeof(kvm_cpuid2) + c->nent * sizeof(kvm_cpuid_entry2));
      return buf;
    }
    if (errno != E2BIG)
      return make_error("KVM_GET_SUPPORTED_CPUID(nent=" + std::to_string(n) + ") failed: " + std::strerror(errno));
  }
  return make_error("KVM_GET_SUPPORTED_CPUID(nent=4096) failed: more than 4096 entries");
}

Result<KvmVm> KvmSystem::try_create_vm() const {
  auto r = call(fd(), KVM_CREATE_VM, "KVM_CREATE_VM", "type=0", 0ul);
  if (!r) return r.error();
  return KvmVm(Fd(*r));
}

KvmVm KvmSystem::create_vm() const { return or_throw(try_create_vm()); }

Result<int> KvmVm::try_check_extension(unsigned cap) const {
  return call(fd(), KVM_CHECK_EXTENSION, "KVM_CHECK_EXTENSION(vm)", "cap=" + std::to_string(cap), cap);
}

Result<void> KvmVm::try_set_user_memory_region(std::uint32_t slot, std::uint32_t flags, std::uint64_t gpa,
                                               std::uint64_t size, void* hva) {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = flags;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<std::uint64_t>(hva);
  BATON_TRY_VOID(call(fd(), KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION",
                      "slot=" + std::to_string(slot) + ", flags=" + hex(flags) + ", gpa=" + hex(gpa) +
                          ", size=" + hex(size) + ", hva=" + hex(r.userspace_addr),
                      &r));
  return ok_result();
}

Result<void> KvmVm::try_set_tss_addr(std::uint64_t gpa) {
  BATON_TRY_VOID(call(fd(), KVM_SET_TSS_ADDR, "KVM_SET_TSS_ADDR", "gpa=" + hex(gpa), static_cast<unsigned long>(gpa)));
  return ok_result();
}

Result<void> KvmVm::try_create_irqchip() {
  BATON_TRY_VOID(call(fd(), KVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP", "", 0ul));
  irqchip_ = true;
  return ok_result();
}

Result<std::vector<std::uint64_t>> KvmVm::try_get_dirty_log(std::uint32_t slot, std::uint64_t pages) {
  std::vector<std::uint64_t> bitmap((pages + 63) / 64);
  kvm_dirty_log d{};
  d.slot = slot;
  d.dirty_bitmap = bitmap.data();
  BATON_TRY_VOID(call(fd(), KVM_GET_DIRTY_LOG, "KVM_GET_DIRTY_LOG",
                      "slot=" + std::to_string(slot) + ", pages=" + std::to_string(pages), &d));
  return bitmap;
}

Result<KvmVcpu> KvmVm::try_create_vcpu(unsigned id, std::size_t mmap_size) {
  auto r = call(fd(), KVM_CREATE_VCPU, "KVM_CREATE_VCPU", "id=" + std::to_string(id), static_cast<unsigned long>(id));
  if (!r) return r.error();
  Fd vfd(*r);
  void* run = ::mmap(nullptr, mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vfd.get(), 0);
  if (run == MAP_FAILED)
    return make_error("mmap of the kvm_run area (vcpu " + std::to_string(id) + ", size " + std::to_string(mmap_size) +
                      ") failed: " + std::strerror(errno));
  return KvmVcpu(std::move(vfd), id, run, mmap_size);
}

KvmVcpu KvmVm::create_vcpu(unsigned id, std::size_t mmap_size) { return or_throw(try_create_vcpu(id, mmap_size)); }

KvmVcpu::KvmVcpu(KvmVcpu&& o) noexcept
    : fd_(std::move(o.fd_)),
      id_(o.id_),
      run_(std::exchange(o.run_, nullptr)),
      run_size_(o.run_size_),
      unreadable_msrs_(std::move(o.unreadable_msrs_)),
      synced_(o.synced_),
      has_tsc_attr_(o.has_tsc_attr_),
      kvm_tsc_offset_(o.kvm_tsc_offset_),
      tsc_from_offset_(o.tsc_from_offset_),
      sregs_loaded_(o.sregs_loaded_) {}

KvmVcpu& KvmVcpu::operator=(KvmVcpu&& o) noexcept {
  if (this != &o) {
    if (run_) ::munmap(run_, run_size_);
    fd_ = std::move(o.fd_);
    id_ = o.id_;
    run_ = std::exchange(o.run_, nullptr);
    run_size_ = o.run_size_;
    unreadable_msrs_ = std::move(o.unreadable_msrs_);
    synced_ = o.synced_;
    has_tsc_attr_ = o.has_tsc_attr_;
    kvm_tsc_offset_ = o.kvm_tsc_offset_;
    tsc_from_offset_ = o.tsc_from_offset_;
    sregs_loaded_ = o.sregs_loaded_;
  }
  return *this;
}

KvmVcpu::~KvmVcpu() {
  if (run_) ::munmap(run_, run_size_);
}

void KvmVcpu::set_immediate_exit(bool on) {
  std::atomic_ref<std::uint8_t>(static_cast<kvm_run*>(run_)->immediate_exit).store(on ? 1 : 0);
}

Result<bool> KvmVcpu::try_run() {
  synced_ = false;  // the guest moves on (or a pending restore is applied): the run area is stale
  if (::ioctl(fd(), KVM_RUN, 0) == 0) return true;
  if (errno == EINTR) return false;
  return make_error("KVM_RUN(vcpu " + std::to_string(id_) + ") failed: " + std::strerror(errno));
}

Result<void> KvmVcpu::try_set_guest_debug(bool single_step) {
  kvm_guest_debug d{};
  d.control = single_step ? KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP : 0;
  BATON_TRY_VOID(call(fd(), KVM_SET_GUEST_DEBUG, "KVM_SET_GUEST_DEBUG",
                      "vcpu=" + std::to_string(id_) + ", control=" + hex(d.control), &d));
  return ok_result();
}

Result<void> KvmVcpu::try_set_cpuid(const std::vector<std::uint8_t>& cpuid2) {
  if (cpuid2.size() < sizeof(kvm_cpuid2)) return make_error("KVM_SET_CPUID2: empty CPUID table");
  std::vector<std::uint8_t> copy = cpuid2;
  auto* c = reinterpret_cast<kvm_cpuid2*>(copy.data());
  BATON_TRY_VOID(call(fd(), KVM_SET_CPUID2, "KVM_SET_CPUID2",
                      "vcpu=" + std::to_string(id_) + ", nent=" + std::to_string(c->nent), c));
  return ok_result();
}

}  // namespace baton::hw
