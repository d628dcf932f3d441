// A guest on /dev/kvm (include/baton/hw/machine.hpp).
#include "baton/hw/machine.hpp"

#include "baton/guests/abi.hpp"

#include <errno.h>
#include "kvm_uapi.hpp"
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <cstdio>
#include <algorithm>
#include <cstring>

namespace baton::hw {

namespace {
std::string hex(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}
// CLOCK_MONOTONIC in nanoseconds (the clock of the handover timing and of tracefs's "mono").
std::uint64_t monotonic_ns() {
  timespec ts{};
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1'000'000'000ull + static_cast<std::uint64_t>(ts.tv_nsec);
}
// Where KVM may put the three pages of its real-mode TSS on VMX (the usual spot below 4 GiB).
constexpr std::uint64_t kTssAddr = 0xfffbd000;
}  // namespace

const char* to_string(KvmStop s) {
  switch (s) {
    case KvmStop::kExited: return "exited";
    case KvmStop::kSync: return "sync point";
    case KvmStop::kInterrupted: return "interrupted";
    case KvmStop::kBudget: return "budget";
    case KvmStop::kShutdown: return "shutdown (triple fault)";
    case KvmStop::kGuestFault: return "guest exception";
    case KvmStop::kHalted: return "halted";
    case KvmStop::kFailEntry: return "VM-entry failure";
    case KvmStop::kInternalError: return "KVM internal error";
    case KvmStop::kUnexpected: return "unexpected exit";
    case KvmStop::kPort: return "port";
    case KvmStop::kStep: return "single step";
  }
  return "?";
}

Result<GuestMemory> GuestMemory::try_create(std::uint64_t size, const std::string& name) {
  const int fd = ::memfd_create(name.c_str(), MFD_CLOEXEC);
  if (fd < 0) return make_error(std::string("memfd_create(") + name + ") failed: " + std::strerror(errno));
  Fd owned(fd);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0)
    return make_error("ftruncate(memfd, " + hex(size) + ") failed: " + std::strerror(errno));
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return make_error("mmap(memfd, " + hex(size) + ", MAP_SHARED) failed: " + std::strerror(errno));
  return GuestMemory(std::move(owned), static_cast<std::uint8_t*>(p), size);
}

Result<GuestMemory> GuestMemory::try_adopt(int fd, std::uint64_t size) {
  Fd owned(fd);
  struct stat st {};
  if (::fstat(fd, &st) != 0) return make_error(std::string("fstat(guest memfd) failed: ") + std::strerror(errno));
  if (static_cast<std::uint64_t>(st.st_size) != size)
    return make_error("the guest memfd holds " + hex(static_cast<std::uint64_t>(st.st_size)) + " bytes, not the " +
                      hex(size) + " announced");
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED)
    return make_error("mmap(guest memfd, " + hex(size) + ", MAP_SHARED) failed: " + std::strerror(errno));
  return GuestMemory(std::move(owned), static_cast<std::uint8_t*>(p), size);
}

GuestMemory::GuestMemory(GuestMemory&& o) noexcept
    : fd_(std::move(o.fd_)), data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}

GuestMemory& GuestMemory::operator=(GuestMemory&& o) noexcept {
  if (this != &o) {
    if (data_) ::munmap(data_, size_);
    fd_ = std::move(o.fd_);
    data_ = std::exchange(o.data_, nullptr);
    size_ = std::exchange(o.size_, 0);
  }
  return *this;
}

GuestMemory::~GuestMemory() {
  if (data_) ::munmap(data_, size_);
}

Result<void> GuestMemory::load(const guests::GuestImage& image) {
  for (const guests::MemoryChunk& c : image.chunks) {
    if (c.gpa.value > size_ || c.bytes.size() > size_ - c.gpa.value)
      return make_error("chunk " + c.name + " at gpa " + hex(c.gpa.value) + " lies outside guest memory");
    std::memcpy(data_ + c.gpa.value, c.bytes.data(), c.bytes.size());
  }
  return ok_result();
}

Result<std::unique_ptr<KvmMachine>> KvmMachine::try_create(const guests::GuestImage& image,
                                                           const KvmMachineOptions& opt) {
  // The device first: on a host without KVM this is the one error the user sees.
  if (auto why = kvm_unavailable_reason(opt.device)) return make_error(*why);
  auto mem = GuestMemory::try_create(image.mem_size);
  if (!mem) return mem.error();
  BATON_TRY_VOID(mem->load(image));
  return build(std::move(*mem), image, opt, true);
}

Result<std::unique_ptr<KvmMachine>> KvmMachine::try_create_on(GuestMemory memory, const guests::GuestImage& image,
                                                              const KvmMachineOptions& opt) {
  if (auto why = kvm_unavailable_reason(opt.device)) return make_error(*why);
  if (memory.size() != image.mem_size)
    return make_error("guest memory holds " + hex(memory.size()) + " bytes, the image needs " + hex(image.mem_size));
  return build(std::move(memory), image, opt, false);
}

Result<std::unique_ptr<KvmMachine>> KvmMachine::build(GuestMemory mem, const guests::GuestImage& image,
                                                      const KvmMachineOptions& opt, bool boot) {
  auto sys = KvmSystem::try_open(opt.device);
  if (!sys) return sys.error();
  auto vm = sys->try_create_vm();
  if (!vm) return vm.error();
  if (image.mem_size <= kTssAddr) {
    auto tss = sys->try_check_extension(KVM_CAP_SET_TSS_ADDR);
    if (tss && *tss > 0) BATON_TRY_VOID(vm->try_set_tss_addr(kTssAddr));
  }
  if (opt.irqchip) {
    auto irq = sys->try_check_extension(KVM_CAP_IRQCHIP);
    if (irq && *irq > 0) BATON_TRY_VOID(vm->try_create_irqchip());
  }
  BATON_TRY_VOID(vm->try_set_user_memory_region(0, 0, 0, mem.size(), mem.data()));
  auto mmap_size = sys->try_vcpu_mmap_size();
  if (!mmap_size) return mmap_size.error();
  auto vcpu = vm->try_create_vcpu(0, *mmap_size);
  if (!vcpu) return vcpu.error();
  auto cpuid = sys->try_supported_cpuid();
  if (!cpuid) return cpuid.error();
  BATON_TRY_VOID(vcpu->try_set_cpuid(*cpuid));

  StateOptions so;
  auto msrs = sys->try_msr_index_list();
  if (!msrs) return msrs.error();
  so.msr_indices = std::move(*msrs);
  auto xs2 = vm->try_check_extension(KVM_CAP_XSAVE2);
  so.xsave_size = xs2 && *xs2 > 0 ? static_cast<std::size_t>(*xs2) : 0;
  so.lapic = vm->has_irqchip();
  auto sync = vm->try_check_extension(KVM_CAP_SYNC_REGS);
  so.sync_regs = sync && (static_cast<unsigned>(*sync) & KVM_SYNC_X86_VALID_FIELDS) == KVM_SYNC_X86_VALID_FIELDS;

  if (boot) BATON_TRY_VOID(vcpu->try_set_boot_state(image.vcpu));
  std::unique_ptr<KvmMachine> m(new KvmMachine(std::move(*sys), std::move(*vm), std::move(mem), std::move(*vcpu),
                                               guests::PortRecorder(image)));
  m->state_opt_ = std::move(so);
  m->input_seed_ = guests::input_seed_of(image);
  m->log_events_ = opt.log_events;
  return m;
}

Result<void> KvmMachine::enable_dirty_log() {
  return vm_.try_set_user_memory_region(0, KVM_MEM_LOG_DIRTY_PAGES, 0, mem_.size(), mem_.data());
}

Result<std::vector<std::uint64_t>> KvmMachine::dirty_bitmap() { return vm_.try_get_dirty_log(0, mem_.size() / 4096); }

std::string KvmMachine::dump_state() {
  auto s = vcpu_.try_get_state(state_opt_);
  if (!s) return "(state unavailable: " + s.error().message + ")";
  char b[512];
  std::snprintf(b, sizeof b,
                "rip %s rsp %s rflags %s cs %#x ss %#x cr0 %s cr2 %s cr3 %s cr4 %s efer %s rax %s rdi %s",
                hex(s->rip).c_str(), hex(s->gpr[model::VcpuState::kRsp]).c_str(), hex(s->rflags).c_str(),
                s->cs.selector, s->ss.selector, hex(s->cr0).c_str(), hex(s->cr2).c_str(), hex(s->cr3).c_str(),
                hex(s->cr4).c_str(), hex(s->efer).c_str(), hex(s->gpr[model::VcpuState::kRax]).c_str(),
                hex(s->gpr[model::VcpuState::kRdi]).c_str());
  return b;
}

Result<void> KvmMachine::complete_pending_io(bool sync_out) {
  // Where KVM stores regs, sregs and events at KVM_RUN's end, the completing KVM_RUN replaces
  // three GET ioctls, so it runs even with no I/O pending (it never enters the guest).
  if (!io_pending_ && !sync_out) return ok_result();
  // While single-stepping, the completed IN/OUT is a retired instruction: KVM may report its
  // debug exit instead of EINTR (measured on nested SVM); the I/O is complete either way.
  BATON_TRY_VOID(vcpu_.try_complete_io(sync_out, single_step_));
  io_pending_ = false;
  return ok_result();
}

Result<model::VcpuState> KvmMachine::capture() {
  BATON_TRY_VOID(complete_pending_io(state_opt_.sync_regs));
  return vcpu_.try_get_state(state_opt_);
}

Result<model::VcpuState> KvmMachine::capture_changes(const model::VcpuState& baseline) {
  BATON_TRY_VOID(complete_pending_io(state_opt_.sync_regs));
  return vcpu_.try_get_state(state_opt_, &baseline);
}

Result<void> KvmMachine::capture_changes_into(const model::VcpuState& baseline, model::VcpuState& s) {
  BATON_TRY_VOID(complete_pending_io(state_opt_.sync_regs));
  return vcpu_.try_get_changes_into(state_opt_, baseline, s);
}

Result<model::VcpuState> KvmMachine::capture_again() {
  if (io_pending_) return make_error("capture_again: an I/O exit is pending (capture first)");
  vcpu_.forget_sync();
  return vcpu_.try_get_state(state_opt_);
}

Result<void> KvmMachine::restore(const model::VcpuState& s) {
  BATON_TRY_VOID(complete_pending_io(false));
  return vcpu_.try_set_state(s, state_opt_);
}

Result<StateWrite> KvmMachine::restore_changes(const model::VcpuState& loaded, const model::VcpuState& s) {
  BATON_TRY_VOID(complete_pending_io(false));
  return vcpu_.try_set_state_changes(loaded, s, state_opt_);
}

std::string KvmMachine::fault_detail() {
  guests::FaultRecord f{};
  if (mem_.size() < guests::kFaultRecordGpa + sizeof f) return "no fault record (guest memory too small)";
  std::memcpy(&f, mem_.data() + guests::kFaultRecordGpa, sizeof f);
  return guests::fault_text(f);
}

Result<void> KvmMachine::set_single_step(bool on) {
  BATON_TRY_VOID(vcpu_.try_set_guest_debug(on));
  single_step_ = on;
  return ok_result();
}

Result<KvmRunResult> KvmMachine::run(std::uint64_t max_exits, bool stop_at_sync) {
  KvmRunLimits l;
  l.max_exits = max_exits;
  l.stop_at_sync = stop_at_sync;
  return run(l);
}

Result<KvmRunResult> KvmMachine::run(const KvmRunLimits& limits) {
  auto* run = static_cast<kvm_run*>(vcpu_.run_area());
  KvmRunResult res;
  const bool stop_at_sync = limits.stop_at_sync;
  while (res.exits < limits.max_exits) {
    auto r = vcpu_.try_run();
    if (!r) return r.error();
    io_pending_ = false;  // KVM_RUN completed whatever was pending
    if (!*r) {
      res.stop = KvmStop::kInterrupted;
      return res;
    }
    ++res.exits;
    const std::uint64_t exit_ns = log_events_ ? monotonic_ns() : 0;
    if (log_events_ && run->exit_reason != KVM_EXIT_IO) {
      VmmEvent e;
      e.ns = exit_ns;
      e.exit_reason = run->exit_reason;
      events_.push_back(e);
    }
    switch (run->exit_reason) {
      case KVM_EXIT_IO: {
        io_pending_ = true;
        auto* data = reinterpret_cast<std::uint8_t*>(run) + run->io.data_offset;
        const unsigned size = run->io.size;
        bool exited = false, sync = false, fault = false;
        for (std::uint32_t i = 0; i < run->io.count; ++i, data += size) {
          const bool out = run->io.direction == KVM_EXIT_IO_OUT;
          std::uint32_t v = 0;
          guests::PortEvent ev;
          if (out) {
            std::memcpy(&v, data, std::min<unsigned>(size, 4));
            ev = ports_.out(run->io.port, size, v);
            exited |= ev.kind == guests::PortEventKind::kExit;
            sync |= ev.kind == guests::PortEventKind::kSync;
            fault |= ev.kind == guests::PortEventKind::kFault;
          } else {
            ev = ports_.in(run->io.port, size);
            v = ev.value;
            std::memcpy(data, &v, std::min<unsigned>(size, 4));
          }
          if (log_events_)
            events_.push_back(VmmEvent{exit_ns, KVM_EXIT_IO, true, i == 0, !out, run->io.port,
                                       static_cast<std::uint8_t>(size), v, ev.kind, ev.value});
        }
        if (fault) {
          res.stop = KvmStop::kGuestFault;
          res.detail = fault_detail();
          return res;
        }
        if (exited || (sync && stop_at_sync)) {
          res.stop = exited ? KvmStop::kExited : KvmStop::kSync;
          return res;
        }
        if (limits.port && run->io.port == *limits.port) {
          res.stop = KvmStop::kPort;
          res.detail = std::string(run->io.direction == KVM_EXIT_IO_OUT ? "out" : "in") + " port " + hex(run->io.port);
          return res;
        }
        break;
      }
      case KVM_EXIT_DEBUG:
        if (single_step_) {
          res.stop = KvmStop::kStep;
          return res;
        }
        res.stop = KvmStop::kUnexpected;
        res.detail = "debug exit (exception " + std::to_string(run->debug.arch.exception) + ") with debugging off; " +
                     dump_state();
        return res;
      case KVM_EXIT_INTR:
        res.stop = KvmStop::kInterrupted;
        return res;
      case KVM_EXIT_HLT:
        res.stop = KvmStop::kHalted;
        res.detail = dump_state();
        return res;
      case KVM_EXIT_SHUTDOWN:
        res.stop = KvmStop::kShutdown;
        res.detail = "the guest triple-faulted; " + dump_state();
        return res;
      case KVM_EXIT_FAIL_ENTRY:
        res.stop = KvmStop::kFailEntry;
        res.detail = "hardware entry failure reason " + hex(run->fail_entry.hardware_entry_failure_reason) + "; " +
                     dump_state();
        return res;
      case KVM_EXIT_INTERNAL_ERROR:
        res.stop = KvmStop::kInternalError;
        res.detail = "suberror " + std::to_string(run->internal.suberror) + "; " + dump_state();
        return res;
      case KVM_EXIT_MMIO:
        io_pending_ = true;
        res.stop = KvmStop::kUnexpected;
        res.detail = std::string("MMIO ") + (run->mmio.is_write ? "write" : "read") + " at gpa " +
                     hex(run->mmio.phys_addr) + " (outside guest RAM); " + dump_state();
        return res;
      default:
        res.stop = KvmStop::kUnexpected;
        res.detail = "exit reason " + std::to_string(run->exit_reason) + "; " + dump_state();
        return res;
    }
  }
  res.stop = KvmStop::kBudget;
  return res;
}

}  // namespace baton::hw
