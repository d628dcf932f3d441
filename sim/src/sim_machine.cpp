// SimMachine: the run loop with its one exit switch, the port-I/O ABI, the slow path of the
// EPT fast path (violations, A/D, PML), cost accounting, tracing, snapshot and restore.
#include "baton/sim/sim_machine.hpp"

#include <unicorn/unicorn.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <optional>
#include <set>

#include "baton/guests/abi.hpp"
#include "hex.hpp"
#include "baton/guests/ports.hpp"
#include "baton/model/guest_walk.hpp"
#include "unicorn_vcpu.hpp"
#ifdef BATON_SIM_HAVE_TRACES
#include "baton/traces/trace.hpp"
#endif

namespace baton::sim {

using model::Access;
using model::Gfn;
using model::Gpa;

const char* to_string(StopReason r) {
  switch (r) {
    case StopReason::kExited: return "exited";
    case StopReason::kSyncPoint: return "sync-point";
    case StopReason::kInsnLimit: return "insn-limit";
    case StopReason::kHang: return "hang";
    case StopReason::kTripleFault: return "triple-fault";
    case StopReason::kHlt: return "hlt";
    case StopReason::kEntryFailure: return "entry-failure";
    case StopReason::kError: return "error";
    case StopReason::kPort: return "port";
  }
  return "?";
}

namespace {

// Guest-physical memory seen through memslots, for the guest page walker.
class SlotMemory final : public model::GuestPhysicalMemory {
 public:
  SlotMemory(const std::vector<model::Memslot>& slots, const HostMemory& host) : slots_(slots), host_(host) {}
  bool read_u64(Gpa a, std::uint64_t* out) const override {
    const model::Memslot* s = model::find_memslot(slots_, a);
    if (s == nullptr) return false;
    const std::uint8_t* p = host_.ram_ptr(s->hpa_at(Gpa{a.value & ~std::uint64_t{7}}));
    if (p == nullptr) return false;
    std::memcpy(out, p, 8);
    return true;
  }

 private:
  const std::vector<model::Memslot>& slots_;
  const HostMemory& host_;
};

// Exit qualification of an I/O instruction (SDM Vol. 3C §28.2.1, table 28-5).
std::uint64_t io_qualification(std::uint16_t port, unsigned size, bool in) {
  return ((size - 1) & 7) | (in ? 1u << 3 : 0u) | (std::uint64_t{port} << 16);
}

// Maps a VMX mnemonic to its exit reason; returns false for anything else.
bool vmx_exit_reason(const std::string& m, ExitReason* r) {
  static const std::pair<const char*, ExitReason> kMap[] = {
      {"vmcall", ExitReason::kVmcall},     {"vmclear", ExitReason::kVmclear}, {"vmlaunch", ExitReason::kVmlaunch},
      {"vmptrld", ExitReason::kVmptrld},   {"vmptrst", ExitReason::kVmptrst}, {"vmread", ExitReason::kVmread},
      {"vmresume", ExitReason::kVmresume}, {"vmwrite", ExitReason::kVmwrite}, {"vmxoff", ExitReason::kVmxoff},
      {"vmxon", ExitReason::kVmxon},       {"invept", ExitReason::kInvept}};
  for (const auto& [name, reason] : kMap)
    if (m == name) {
      *r = reason;
      return true;
    }
  return false;
}


}  // namespace

static_assert(static_cast<unsigned>(ExitReason::kPmlFull) < 64, "Impl::exits is indexed by the basic exit reason");

struct SimMachine::Impl final : VcpuExits {
  SimConfig cfg;
  std::shared_ptr<HostMemory> host;
  std::unique_ptr<Hypervisor> hv;
  std::unique_ptr<UnicornVcpu> vcpu;
  model::VcpuState base;  // fields Unicorn does not hold (segment attributes, ...)
  guests::PortRecorder ports;  // the port ABI (shared with every backend); `out` mirrors what it records
  GuestOutput out;
  std::uint64_t input_seed = 0;
  std::optional<RunEvent> pending;
  RunLimits limits;
  std::array<std::uint64_t, 64> exits{};  // by basic exit reason (all below 64)
  // The last exit's information fields, not yet written into the VMCS (see take_exit).
  struct ExitInfo {
    ExitReason reason;
    std::uint64_t qual, gpa;
  };
  std::optional<ExitInfo> exit_info;
  std::uint64_t tsc_offset = 0;  // the VMCS TSC offset, read when a run starts (nothing changes it while the guest runs)
  CostAccount charged;              // everything but guest instructions and TLB walks
  std::uint64_t host_tsc_start = 0;  // host TSC when this instance started
  std::uint64_t host_synced = 0;     // local cycles already added to the host TSC
  std::uint64_t insn_base = 0;       // guest instructions retired before this instance (a handover)
  unsigned guest_level = 1;          // guest leaf level (from the image's page size)
  std::set<std::uint64_t> deviating;
  MmioDevice device;
  std::map<std::uint64_t, std::uint64_t> device_regs;
#ifdef BATON_SIM_HAVE_TRACES
  std::unique_ptr<traces::TraceWriter> trace;
#endif

  // The last sync point the guest announced (0 before the first).
  std::uint32_t stage() const { return ports.state().stage; }

  // Local simulated cycles after `insns` instructions.
  double local_cycles(std::uint64_t insns) const {
    return charged.total() + static_cast<double>(insns - insn_base) * cfg.profile.base_cpi +
           static_cast<double>(vcpu->tlb_walk_refs()) * cfg.profile.mem_ref_cycles;
  }
  // Host TSC after `insns` instructions of this instance.
  std::uint64_t host_tsc(std::uint64_t insns) const { return host_tsc_start + static_cast<std::uint64_t>(local_cycles(insns)); }
  // Brings the shared host TSC up to date.
  void sync_host_tsc() {
    const std::uint64_t now = static_cast<std::uint64_t>(local_cycles(vcpu->instructions()));
    if (now > host_synced) host->advance_tsc(now - host_synced);
    host_synced = now;
  }
  std::uint64_t guest_tsc(std::uint64_t insns) override { return host_tsc(insns) + tsc_offset; }

  // Returns the handler cost of an exit reason.
  std::uint64_t handler_cost(ExitReason r) const {
    const CostProfile& p = cfg.profile;
    switch (r) {
      case ExitReason::kEptViolation: return p.handler_ept_violation;
      case ExitReason::kEptMisconfig: return p.handler_ept_misconfig;
      case ExitReason::kIo: return p.handler_io;
      case ExitReason::kCpuid: return p.handler_cpuid;
      case ExitReason::kHlt: return p.handler_hlt;
      case ExitReason::kVmcall: return p.handler_vmcall;
      case ExitReason::kException: return p.handler_exception;
      case ExitReason::kPmlFull: return p.handler_pml_full;
      case ExitReason::kVmclear: case ExitReason::kVmlaunch: case ExitReason::kVmptrld: case ExitReason::kVmptrst:
      case ExitReason::kVmread: case ExitReason::kVmresume: case ExitReason::kVmwrite: case ExitReason::kVmxoff:
      case ExitReason::kVmxon: case ExitReason::kInvept: return p.handler_vmx_ud;
      default: return p.handler_other;
    }
  }

  // Records one VM exit: counts, charges, notes the exit-information fields, traces.
  //
  // Neither the guest-state area nor the exit-information fields are written here: a full
  // sync (UnicornVcpu::get_state and ~50 Vmcs::set) cost ~14,700 host instructions per exit
  // against ~1,700 for the whole exit, and the three exit fields alone ~600 of ~1,700 (a
  // catalog search and a map insert each, callgrind on the io guest). The exit marks the VMCS
  // stale instead, and Hypervisor::vmcs() brings both up to date at the first read (the guest
  // state of the last exit or stop, the fields of the last exit), so every reader (tests,
  // snapshot, the migration engine) sees them. Nothing in the sim reads either while the vCPU
  // runs (vmcs_unsynced() is for control fields).
  void take_exit(ExitReason r, std::uint64_t qual, std::uint64_t gpa) {
    ++exits[static_cast<std::size_t>(r) & 63];
    charged.charge(CostCategory::kExitRoundTrip, static_cast<double>(cfg.profile.exit_round_trip));
    charged.charge(CostCategory::kExitHandler, static_cast<double>(handler_cost(r)));
    exit_info = ExitInfo{r, qual, gpa};
    hv->mark_guest_state_stale();
#ifdef BATON_SIM_HAVE_TRACES
    if (trace)
      trace->write(traces::exit_event(hv->config().vm_id, host_tsc(vcpu->instructions()), vcpu->instructions(),
                                      static_cast<std::uint32_t>(r), qual, gpa, vcpu->exit_rip()));
#endif
  }

  // Writes the noted exit-information fields into the VMCS.
  void flush_exit_info() {
    if (!exit_info) return;
    model::Vmcs& v = hv->vmcs_unsynced();
    v.set(model::vmcs::kExitReason, static_cast<std::uint64_t>(exit_info->reason));
    v.set(model::vmcs::kExitQualification, exit_info->qual);
    v.set(model::vmcs::kGuestPhysicalAddress, exit_info->gpa);
    exit_info.reset();
  }

  // Makes the hypervisor's VMCS guest-state area follow this vCPU (see take_exit).
  void attach_guest_state() {
    hv->set_guest_state_source([this] {
      flush_exit_info();
      return vcpu ? vcpu->get_state(base) : base;
    });
  }

  // Recomputes the executor's flags for the leaf that maps `gpa`; returns the pages covered.
  std::uint64_t refresh(Gpa gpa) {
    const model::WalkResult wr = hv->walk(gpa, Access::kRead);
    const model::WalkResult ww = hv->walk(gpa, Access::kWrite);
    const model::WalkResult wx = hv->walk(gpa, Access::kFetch);
    const model::WalkResult* any = wr.translated() ? &wr : wx.translated() ? &wx : ww.translated() ? &ww : nullptr;
    std::uint64_t span = model::kPageSize;
    std::uint8_t f = 0;
    unsigned ept_level = 1;
    if (any != nullptr) {
      ept_level = any->leaf_level;
      span = model::level_span(ept_level);
      const model::EptEntry leaf = any->path[any->path_len - 1].entry;
      const bool ad = hv->config().ad;
      if (wr.translated() && (!ad || leaf.accessed())) f |= pageflag::kRead;
      if (ww.translated() && (!ad || leaf.dirty())) f |= pageflag::kWrite;
      if (wx.translated() && (!ad || leaf.accessed())) f |= pageflag::kFetch;
    } else if (wr.kind == model::WalkKind::kViolation && wr.level > 1) {
      span = model::level_span(wr.level);  // nothing present below this level
    }
    const unsigned gl = std::min(guest_level, 3u) - 1, el = std::min(ept_level, 3u) - 1;
    f |= static_cast<std::uint8_t>((gl | (el << 2)) << pageflag::kGeoShift);
    const std::uint64_t base = gpa.value & ~(span - 1);
    vcpu->set_flags(base >> model::kPageShift, span >> model::kPageShift, f);
    return span >> model::kPageShift;
  }

  // The slow path of an access the flags do not allow (see VcpuExits).
  bool slow_access(std::uint64_t addr, Access a) override {
    const Gpa gpa{addr};
    if (hv->is_mmio(gpa)) return true;  // the MMIO callbacks take the exit
    for (int attempt = 0; attempt < 4; ++attempt) {
      const model::WalkResult w = hv->walk(gpa, a);
      switch (w.kind) {
        case model::WalkKind::kTranslated:
          if (!hv->complete_access(w, gpa, a)) {  // PML full: exit, drain, retry
            take_exit(ExitReason::kPmlFull, 0, gpa.value);
            const std::uint64_t n = hv->drain_pml();
            charged.charge(CostCategory::kDirtyTracking, static_cast<double>(n * cfg.profile.pml_drain_per_entry));
            continue;
          }
          refresh(gpa);
          return true;
        case model::WalkKind::kViolation: {
          take_exit(ExitReason::kEptViolation, w.qualification, gpa.value);
          const FaultResult fr = hv->handle_violation(gpa, a);
          if (fr.fix == FaultFix::kNoSlot || fr.fix == FaultFix::kReadOnlySlot) {
            pending = RunEvent{StopReason::kError, std::string("EPT violation at GPA ") + hexs(gpa.value) + " (" +
                                                       model::to_string(a) + "): " + to_string(fr.fix), stage()};
            return false;
          }
          if (fr.fix == FaultFix::kInstalled) {
            charged.charge(CostCategory::kEptBuild, static_cast<double>(cfg.profile.ept_install_leaf +
                                                                        fr.tables * cfg.profile.ept_table_alloc));
#ifdef BATON_SIM_HAVE_TRACES
            if (trace)
              trace->write(traces::ept_set_event(hv->config().vm_id, host_tsc(vcpu->instructions()), fr.gfn.value,
                                                 fr.hfn.value, fr.level, fr.perms));
#endif
          }
          continue;
        }
        case model::WalkKind::kMisconfig:
          take_exit(ExitReason::kEptMisconfig, 0, gpa.value);
          pending = RunEvent{StopReason::kError, "EPT misconfiguration at GPA " + hexs(gpa.value) + " outside MMIO: " +
                                                     model::to_string(w.reason), stage()};
          return false;
        case model::WalkKind::kAbsentFrame:
          pending = RunEvent{StopReason::kError, "EPT walk of GPA " + hexs(gpa.value) + " reached a host frame that does not exist",
                             stage()};
          return false;
      }
    }
    pending = RunEvent{StopReason::kError, "EPT violation at GPA " + hexs(gpa.value) + " keeps recurring", stage()};
    return false;
  }

  void port_out(std::uint16_t port, unsigned size, std::uint32_t value) override {
    take_exit(ExitReason::kIo, io_qualification(port, size, false), 0);
#ifdef BATON_SIM_HAVE_TRACES
    if (trace)
      trace->write(traces::io_event(hv->config().vm_id, host_tsc(vcpu->instructions()), vcpu->instructions(), port, false,
                                    size, value));
#endif
    const guests::PortEvent ev = ports.out(port, size, value);
    stop_on_port(port, "OUT", value);
    switch (ev.kind) {
      case guests::PortEventKind::kConsole: out.console.push_back(static_cast<char>(ev.value)); break;
      case guests::PortEventKind::kResult: out.results.push_back(ev.result); break;
      case guests::PortEventKind::kSync:
        out.stages.push_back(ev.value);
#ifdef BATON_SIM_HAVE_TRACES
        if (trace) trace->write(traces::sync_event(hv->config().vm_id, host_tsc(vcpu->instructions()), vcpu->instructions(), ev.value));
#endif
        if (limits.sync && *limits.sync == ev.value) {
          pending = RunEvent{StopReason::kSyncPoint, "stage " + std::to_string(ev.value), ev.value};
          vcpu->request_stop();
        }
        break;
      case guests::PortEventKind::kExit:
        out.exit_code = ports.run().exit_code;  // the first exit code counts
        pending = RunEvent{StopReason::kExited, "exit code " + std::to_string(*out.exit_code), stage()};
        vcpu->request_stop();
        break;
      default: break;  // a latched tag or low half; writes outside the ABI are dropped, as with no device behind them
    }
  }

  // Stops the run after this access when RunLimits::port asks for it (a later stop wins).
  void stop_on_port(std::uint16_t port, const char* dir, std::uint64_t value) {
    if (!limits.port || *limits.port != port || pending) return;
    pending = RunEvent{StopReason::kPort, std::string(dir) + " port " + hexs(port) + " value " + hexs(value), stage()};
    vcpu->request_stop();
  }

  std::uint32_t port_in(std::uint16_t port, unsigned size) override {
    take_exit(ExitReason::kIo, io_qualification(port, size, true), 0);
    const guests::PortEvent ev = ports.in(port, size);
    std::uint32_t v = 0xFFFFFFFFu;  // no device: the bus floats high
    if (ev.kind == guests::PortEventKind::kInput) {
      v = ev.value;
      out.inputs = ports.run().inputs;
    }
    stop_on_port(port, "IN", v);
#ifdef BATON_SIM_HAVE_TRACES
    if (trace)
      trace->write(traces::io_event(hv->config().vm_id, host_tsc(vcpu->instructions()), vcpu->instructions(), port, true,
                                    size, v));
#endif
    return v;
  }

  void cpuid() override {
    take_exit(ExitReason::kCpuid, 0, 0);
    const std::uint32_t leaf = static_cast<std::uint32_t>(vcpu->reg(UC_X86_REG_RAX));
    std::uint32_t a = 0, b = 0, c = 0, d = 0;
    switch (leaf) {
      case 0: a = 0xD; b = 0x756E6547; d = 0x49656E69; c = 0x6C65746E; break;  // "GenuineIntel"
      case 1: a = 0x00050654; d = (1u << 0) | (1u << 4) | (1u << 5) | (1u << 6) | (1u << 8) | (1u << 15) | (1u << 19) |
                                  (1u << 24) | (1u << 25) | (1u << 26);
              c = (1u << 0) | (1u << 9) | (1u << 13) | (1u << 19) | (1u << 20) | (1u << 23); break;  // no VMX for the guest
      case 0x80000000: a = 0x80000008; break;
      case 0x80000001: d = (1u << 11) | (1u << 20) | (1u << 26) | (1u << 27) | (1u << 29); break;
      case 0x80000008: a = hv->config().ept.maxphyaddr | (48u << 8); break;
      default: break;
    }
    vcpu->set_reg(UC_X86_REG_RAX, a);
    vcpu->set_reg(UC_X86_REG_RBX, b);
    vcpu->set_reg(UC_X86_REG_RCX, c);
    vcpu->set_reg(UC_X86_REG_RDX, d);
  }

  std::uint64_t mmio_read(std::uint64_t gpa, unsigned size) override {
    take_exit(ExitReason::kEptMisconfig, 0, gpa);
    hv->count_mmio_exit();
    return device.read(Gpa{gpa}, size);
  }

  void mmio_write(std::uint64_t gpa, unsigned size, std::uint64_t value) override {
    take_exit(ExitReason::kEptMisconfig, 0, gpa);
    hv->count_mmio_exit();
    device.write(Gpa{gpa}, size, value);
  }

  void exception(std::uint32_t vector) override {
    take_exit(ExitReason::kException, vector, 0);
    // Unicorn delivers no exception through the IDT, so the simulator stops at every guest
    // exception and calls it a triple fault (on KVM the loader's trap handler reports it).
    take_exit(ExitReason::kTripleFault, 0, 0);
    pending = RunEvent{StopReason::kTripleFault,
                       "exception vector " + std::to_string(vector) + " at RIP " + hexs(vcpu->reg(UC_X86_REG_RIP)) +
                           ": the simulator delivers no exception (triple fault)", stage()};
  }

  // Installs the default MMIO device: an echoing register file, offset 0 reads a magic value.
  void default_device() {
    device.read = [this](Gpa g, unsigned) -> std::uint64_t {
      auto it = device_regs.find(g.value);
      if (it != device_regs.end()) return it->second;
      return (g.value & 0xFFF) == 0 ? 0x5A5A5A5Au : 0;
    };
    device.write = [this](Gpa g, unsigned, std::uint64_t v) { device_regs[g.value] = v; };
  }

  // Opens the trace, when one was asked for.
  Result<void> open_trace(const guests::GuestImage* image) {
    if (cfg.trace_path.empty()) return ok_result();
#ifdef BATON_SIM_HAVE_TRACES
    traces::TraceHeader h;
    h.source = "baton-sim";
    h.guest = cfg.guest_name;
    h.params = cfg.trace_params;
    if (image != nullptr) {
      for (const guests::Param& p : image->params) h.params.emplace(p.key, std::to_string(p.value));
      h.meta["image_hash"] = guests::image_hash(*image);
    }
    h.cost_profile = profile_json(cfg.profile);
    h.time_unit = "cycles";
    auto w = traces::TraceWriter::open(cfg.trace_path, h, cfg.trace_overwrite);
    if (!w) return w.error();
    trace = std::move(*w);
    return ok_result();
#else
    (void)image;
    return make_error("--trace: this build has no trace writer (traces/ library not built)");
#endif
  }

  // Creates the executor, maps the memslots and MMIO ranges.
  Result<void> open_vcpu() {
    std::uint64_t limit = 0;
    for (const model::Memslot& s : hv->memslots()) limit = std::max(limit, s.end().value);
    for (const model::GpaRange& r : hv->mmio()) limit = std::max(limit, r.end().value);
    vcpu = std::make_unique<UnicornVcpu>(*this, limit);
    BATON_TRY_VOID(vcpu->open());
    for (const model::Memslot& s : hv->memslots()) BATON_TRY_VOID(vcpu->map_ram(s.gpa.value, s.size, host->ram_ptr(s.hpa)));
    for (const model::GpaRange& r : hv->mmio()) BATON_TRY_VOID(vcpu->map_mmio(r.gpa.value, r.size));
    vcpu->set_tlb(cfg.profile.tlb_enabled, cfg.profile.tlb_entries_4k, cfg.profile.tlb_entries_2m, cfg.profile.tlb_entries_1g);
    vcpu->set_record_writes(cfg.record_writes);
    vcpu->set_hookless(cfg.hookless);
    default_device();
    return ok_result();
  }

  // Checks that what Unicorn reads while it takes a state (the page tables at CR3, the GDT,
  // the TSS, the code at RIP) lies in RAM: Unicorn cannot report a fault there, it crashes.
  Result<void> check_state_in_ram(const model::VcpuState& v) const {
    auto in_ram = [&](const char* what, std::uint64_t a, std::uint64_t len) -> Result<void> {
      for (std::uint64_t p = a & ~model::kPageMask; p < a + std::max<std::uint64_t>(len, 1); p += model::kPageSize)
        if (model::find_memslot(hv->memslots(), Gpa{p}) == nullptr)
          return make_error(std::string("the vCPU's ") + what + " at GPA " + hexs(a) + " lies outside every memslot");
      return ok_result();
    };
    BATON_TRY_VOID(in_ram("page tables (CR3)", v.cr3 & ~std::uint64_t{0xFFF}, model::kPageSize));
    BATON_TRY_VOID(in_ram("GDT", v.gdtr.base, std::uint64_t{v.gdtr.limit} + 1));
    if (!v.tr.unusable) BATON_TRY_VOID(in_ram("TSS", v.tr.base, std::uint64_t{v.tr.limit} + 1));
    return in_ram("code (RIP)", v.rip, 1);
  }

  // Checks that guest paging is the identity wherever memslots are (Unicorn's address
  // space is guest-physical); the error names the first GVA that is not.
  Result<void> check_identity(const model::VcpuState& v) {
    SlotMemory mem(hv->memslots(), *host);
    std::vector<model::GvaRange> ranges;
    for (const model::Memslot& s : hv->memslots()) ranges.push_back(model::GvaRange{model::Gva{s.gpa.value}, s.size});
    auto r = model::check_identity(v.cr3, ranges, mem, model::paging_config_of(v), false);
    if (!r) return make_error("guest paging is not the identity, which the simulator requires (Unicorn's address space is "
                              "guest-physical): " + r.error().message);
    guest_level = r->pages_1g > 0 && r->pages_2m == 0 && r->pages_4k == 0 ? 3 : (r->pages_4k == 0 ? 2 : 1);
    return ok_result();
  }

  // Re-derives flags and remapped pages from the EPT in host memory (INVEPT).
  Result<void> invept() {
    charged.charge(CostCategory::kExitHandler, static_cast<double>(cfg.profile.invept));
    for (const model::Memslot& s : hv->memslots()) {
      std::uint64_t off = 0;
      while (off < s.size) {
        const Gpa g = s.gpa + off;
        const model::WalkResult w = hv->walk(g, Access::kRead);
        const std::uint64_t pages = refresh(g);
        const std::uint64_t step = std::min<std::uint64_t>(pages, (s.size - off) >> model::kPageShift);
        for (std::uint64_t i = 0; i < step && w.translated(); ++i) {
          const Gpa p = g + i * model::kPageSize;
          const model::Hpa want = s.hpa_at(p);
          const model::Hpa got = w.hpa + i * model::kPageSize;
          const bool dev = got != want;
          if (dev || deviating.count(p.value)) {
            std::uint8_t* target = host->ram_ptr(got);
            if (target == nullptr) target = host->frame_mut(model::hfn_of(got));
            BATON_TRY_VOID(vcpu->remap_page(p.value, dev ? target : host->ram_ptr(want)));
            if (dev) deviating.insert(p.value);
            else deviating.erase(p.value);
          }
        }
        if (!w.translated())
          for (auto it = deviating.lower_bound(g.value); it != deviating.end() && *it < g.value + step * model::kPageSize;) {
            BATON_TRY_VOID(vcpu->remap_page(*it, host->ram_ptr(s.hpa_at(Gpa{*it}))));
            it = deviating.erase(it);
          }
        off += std::max<std::uint64_t>(step, 1) << model::kPageShift;
      }
    }
    return ok_result();
  }
};

SimMachine::SimMachine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
SimMachine::~SimMachine() {
  if (impl_) (void)close_trace();
}

Result<std::unique_ptr<SimMachine>> SimMachine::create(SimConfig cfg, std::shared_ptr<HostMemory> host) {
  if (cfg.hv.max_leaf_level < 1 || cfg.hv.max_leaf_level > 3) return make_error("leaf level must be 4k, 2m or 1g");
  if (cfg.hv.dirty == DirtyMode::kPml && !cfg.hv.ad) return make_error("PML needs EPT A/D flags enabled");
  auto impl = std::make_unique<Impl>();
  impl->cfg = std::move(cfg);
  impl->host = host ? std::move(host) : std::make_shared<HostMemory>();
  impl->hv = std::make_unique<Hypervisor>(*impl->host, impl->cfg.hv);
  impl->attach_guest_state();
  impl->host_tsc_start = impl->host->tsc();
  return std::unique_ptr<SimMachine>(new SimMachine(std::move(impl)));
}

Result<void> SimMachine::load(const guests::GuestImage& image) {
  Impl& m = *impl_;
  if (m.vcpu) return make_error("a guest is already loaded");
  auto ram = m.host->alloc_ram(image.mem_size, m.hv->config().vm_id);
  if (!ram) return ram.error();
  // One memslot for [0, mem_size), split around MMIO ranges.
  std::vector<model::GpaRange> holes = m.cfg.mmio;
  std::sort(holes.begin(), holes.end(), [](const auto& a, const auto& b) { return a.gpa < b.gpa; });
  std::uint64_t at = 0;
  std::uint32_t id = 0;
  auto add_slot = [&](std::uint64_t from, std::uint64_t to) -> Result<void> {
    if (to <= from) return ok_result();
    return m.hv->add_memslot(model::Memslot{id++, Gpa{from}, to - from, ram->base + from, false, m.cfg.hv.dirty != DirtyMode::kOff});
  };
  for (const model::GpaRange& h : holes) {
    if (h.end().value > image.mem_size) return make_error("MMIO range " + hexs(h.gpa.value) + " lies beyond guest memory");
    BATON_TRY_VOID(add_slot(at, h.gpa.value));
    at = h.end().value;
  }
  BATON_TRY_VOID(add_slot(at, image.mem_size));
  for (const model::GpaRange& h : holes) BATON_TRY_VOID(m.hv->add_mmio(h));
  for (const guests::MemoryChunk& c : image.chunks) {
    for (const model::GpaRange& h : holes)
      if (c.gpa < h.end() && h.gpa < c.end()) return make_error("MMIO range overlaps the guest's " + c.name);
    std::memcpy(ram->data + c.gpa.value, c.bytes.data(), c.bytes.size());
  }
  m.input_seed = guests::input_seed_of(image);
  m.ports = guests::PortRecorder(m.input_seed);
  if (m.cfg.input_source) m.ports.set_input_source(m.cfg.input_source);
  m.base = image.vcpu;
  BATON_TRY_VOID(m.check_state_in_ram(m.base));
  BATON_TRY_VOID(m.check_identity(m.base));
  BATON_TRY_VOID(m.open_vcpu());
  BATON_TRY_VOID(m.vcpu->set_state(m.base));
  model::sync_vmcs_guest_state(m.base, m.hv->vmcs());
  m.hv->mark_guest_state_stale();  // readers get the state as the vCPU holds it (Unicorn normalises some bits)
  return m.open_trace(&image);
}

Result<std::unique_ptr<SimMachine>> SimMachine::restore(const model::HandoverSnapshot& s, std::shared_ptr<HostMemory> host,
                                                        SimConfig cfg, bool adopt_tree) {
  if (!host) return make_error("restore needs the host memory that holds the guest RAM");
  if (s.vcpus.empty()) return make_error("snapshot has no vCPU");
  auto hv = Hypervisor::restore(*host, s, cfg.hv, adopt_tree);
  if (!hv) return hv.error();
  auto impl = std::make_unique<Impl>();
  Impl& m = *impl;
  m.cfg = std::move(cfg);
  m.cfg.hv = (*hv)->config();
  m.host = std::move(host);
  m.hv = std::move(*hv);
  m.host_tsc_start = m.host->tsc();
  m.base = s.vcpus[0];
  // The guest TSC continues from its value at capture (as when a VMM restores IA32_TSC): the
  // offset absorbs the host time that passed during the handover.
  m.base.tsc_offset = s.vcpus[0].guest_tsc() - m.host->tsc();
  m.hv->vmcs().set(model::vmcs::kTscOffset, m.base.tsc_offset);
  auto meta = [&](const char* k) -> std::uint64_t {
    auto it = s.meta.find(k);
    return it == s.meta.end() ? 0 : std::stoull(it->second);
  };
  m.input_seed = meta("abi.input_seed");
  m.ports = guests::PortRecorder(m.input_seed);
  m.ports.resume(guests::PortRecorder::State{static_cast<std::uint32_t>(meta("abi.tag")),
                                             static_cast<std::uint32_t>(meta("abi.lo")),
                                             static_cast<std::uint32_t>(meta("abi.stage")), meta("abi.inputs")});
  if (m.cfg.input_source) m.ports.set_input_source(m.cfg.input_source);
  m.out.inputs = m.ports.state().inputs;
  BATON_TRY_VOID(m.check_state_in_ram(m.base));
  BATON_TRY_VOID(m.check_identity(m.base));
  BATON_TRY_VOID(m.open_vcpu());
  BATON_TRY_VOID(m.vcpu->set_state(m.base));
  m.insn_base = meta("instructions");  // the count continues across the handover
  m.vcpu->set_instructions(m.insn_base);
  if (adopt_tree) BATON_TRY_VOID(m.invept());
  m.attach_guest_state();
  m.hv->mark_guest_state_stale();  // the snapshot's guest-state area, re-derived from the restored vCPU
  BATON_TRY_VOID(m.open_trace(nullptr));
  return std::unique_ptr<SimMachine>(new SimMachine(std::move(impl)));
}

RunEvent SimMachine::run(const RunLimits& limits) {
  Impl& m = *impl_;
  if (!m.vcpu) return RunEvent{StopReason::kError, "no guest loaded", 0};
  if (m.out.exit_code) return RunEvent{StopReason::kExited, "exit code " + std::to_string(*m.out.exit_code), m.stage()};
  m.limits = limits;
  // VM entry: the guest-state checks first.
  const model::VcpuState st = m.vcpu->get_state(m.base);
  if (std::string why = m.hv->check_vm_entry(st); !why.empty()) {
    m.take_exit(ExitReason::kEntryFailGuestState, 0, 0);
    return RunEvent{StopReason::kEntryFailure, "VM entry failed: " + why, m.stage()};
  }
  if (m.hv->take_tree_changed())
    if (auto r = m.invept(); !r) return RunEvent{StopReason::kError, r.error().message, m.stage()};
  // The guest runs from here: whatever stops it (an exit, or an instruction limit or budget
  // with no exit), the next reader of the VMCS gets the guest state at that stop.
  m.hv->mark_guest_state_stale();
  m.tsc_offset = m.hv->vmcs_unsynced().get_or_zero(model::vmcs::kTscOffset);
  std::uint64_t limit = ~std::uint64_t{0};
  if (limits.budget) limit = std::min(limit, limits.budget);
  if (limits.until_insn) limit = std::min(limit, limits.until_insn);
  for (;;) {
    m.pending.reset();
    const VcpuStop s = m.vcpu->run(limit);
    m.sync_host_tsc();
    if (m.pending) {
      RunEvent e = *m.pending;
      m.pending.reset();
      return e;
    }
    if (s.uc_error == UC_ERR_OK && s.maintenance && !s.budget) continue;
    if (s.budget) {
      if (limits.until_insn && m.vcpu->instructions() >= limits.until_insn)
        return RunEvent{StopReason::kInsnLimit, std::to_string(m.vcpu->instructions()) + " instructions", m.stage()};
      return RunEvent{StopReason::kHang, "no exit within " + std::to_string(limits.budget) + " instructions", m.stage()};
    }
    switch (s.uc_error) {
      case UC_ERR_OK: {
        if (s.requested || s.maintenance) continue;
        std::uint8_t byte = 0;
        const model::Memslot* slot = model::find_memslot(m.hv->memslots(), Gpa{s.rip - 1});
        if (slot != nullptr) byte = *m.host->ram_ptr(slot->hpa_at(Gpa{s.rip - 1}));
        if (byte == 0xF4) {
          m.take_exit(ExitReason::kHlt, 0, 0);
          return RunEvent{StopReason::kHlt, "HLT at " + hexs(s.rip - 1) + " with interrupts that never come", m.stage()};
        }
        continue;
      }
      case UC_ERR_INSN_INVALID: {
        const auto [len, mnemonic] = m.vcpu->decode_one(s.rip);
        ExitReason r;
        if (mnemonic == "vmcall") {
          m.take_exit(ExitReason::kVmcall, 0, 0);
          m.vcpu->set_reg(UC_X86_REG_RAX, static_cast<std::uint64_t>(-1000));  // KVM: -KVM_ENOSYS for unknown hypercalls
          m.vcpu->set_reg(UC_X86_REG_RIP, s.rip + len);
          m.vcpu->set_instructions(m.vcpu->instructions() + 1);
          continue;
        }
        if (vmx_exit_reason(mnemonic, &r)) {
          m.take_exit(r, 0, 0);  // no nested VMX: the hypervisor injects #UD
          m.take_exit(ExitReason::kTripleFault, 0, 0);
          return RunEvent{StopReason::kTripleFault, mnemonic + " at " + hexs(s.rip) + ": #UD injected (no nested VMX), not delivered",
                          m.stage()};
        }
        m.exception(6);
        return RunEvent{StopReason::kTripleFault, "invalid opcode" + (mnemonic.empty() ? "" : " (" + mnemonic + ")") +
                                                      " at " + hexs(s.rip) + ": the simulator delivers no exception (triple fault)", m.stage()};
      }
      case UC_ERR_READ_UNMAPPED: case UC_ERR_WRITE_UNMAPPED: case UC_ERR_FETCH_UNMAPPED:
        m.take_exit(ExitReason::kEptViolation, 0, 0);
        return RunEvent{StopReason::kError, std::string("access outside every memslot near RIP ") + hexs(s.rip) + " (" +
                                                uc_strerror(static_cast<uc_err>(s.uc_error)) + ")", m.stage()};
      default:
        return RunEvent{StopReason::kError, std::string("Unicorn: ") + uc_strerror(static_cast<uc_err>(s.uc_error)) +
                                                " at RIP " + hexs(s.rip), m.stage()};
    }
  }
}

Result<model::HandoverSnapshot> SimMachine::snapshot() {
  Impl& m = *impl_;
  if (!m.vcpu) return make_error("no guest loaded");
  m.sync_host_tsc();
  model::VcpuState v = vcpu_state();
  v.tsc_offset = m.hv->vmcs().get_or_zero(model::vmcs::kTscOffset);
  v.host_tsc_at_capture = m.host->tsc();
  model::HandoverSnapshot s = m.hv->snapshot(v);  // the VMCS was synced from the vCPU by vmcs() above
  s.meta["guest"] = m.cfg.guest_name;
  s.meta["abi.input_seed"] = std::to_string(m.input_seed);
  const guests::PortRecorder::State abi = m.ports.state();
  s.meta["abi.inputs"] = std::to_string(abi.inputs);
  s.meta["abi.tag"] = std::to_string(abi.tag);
  s.meta["abi.lo"] = std::to_string(abi.lo);
  s.meta["abi.stage"] = std::to_string(abi.stage);
  s.meta["instructions"] = std::to_string(m.vcpu->instructions());
  return s;
}

const GuestOutput& SimMachine::output() const { return impl_->out; }
std::uint64_t SimMachine::instructions() const { return impl_->vcpu ? impl_->vcpu->instructions() : 0; }
model::VcpuState SimMachine::vcpu_state() const { return impl_->vcpu ? impl_->vcpu->get_state(impl_->base) : impl_->base; }
Hypervisor& SimMachine::hypervisor() { return *impl_->hv; }
std::shared_ptr<HostMemory> SimMachine::host() const { return impl_->host; }
void SimMachine::set_mmio_device(MmioDevice d) { impl_->device = std::move(d); }
std::vector<Gfn> SimMachine::dirty_log() { return impl_->hv->dirty_log(); }

void SimMachine::clear_dirty_log() {
  Impl& m = *impl_;
  const std::vector<Gfn> changed = m.hv->clear_dirty_log();
  m.charged.charge(CostCategory::kDirtyTracking, static_cast<double>(changed.size() * m.cfg.profile.dirty_clear_per_page));
  for (Gfn g : changed) m.refresh(model::gpa_of(g));
  if (m.vcpu) m.vcpu->clear_written();
}

std::vector<Gfn> SimMachine::written_pages() const {
  if (!impl_->vcpu) return {};
  std::vector<std::uint64_t> w = impl_->vcpu->written_gfns();
  std::sort(w.begin(), w.end());
  w.erase(std::unique(w.begin(), w.end()), w.end());
  std::vector<Gfn> out;
  for (std::uint64_t g : w) out.push_back(Gfn{g});
  return out;
}

std::vector<std::uint8_t> SimMachine::read_guest(Gpa gpa, std::size_t n) const {
  std::vector<std::uint8_t> out(n);
  if (!impl_->vcpu || !impl_->vcpu->read(gpa.value, out.data(), n)) return {};
  return out;
}

Result<void> SimMachine::invept() { return impl_->invept(); }

double SimMachine::cycles() const {
  const Impl& m = *impl_;
  return m.vcpu ? m.local_cycles(m.vcpu->instructions()) : m.charged.total();
}

void SimMachine::charge(CostCategory c, double cycles) {
  impl_->charged.charge(c, cycles);
  if (impl_->vcpu) impl_->sync_host_tsc();
}

void SimMachine::set_guest_tsc(std::uint64_t value) {
  Impl& m = *impl_;
  if (m.vcpu) m.sync_host_tsc();
  m.base.tsc_offset = value - m.host->tsc();
  m.hv->vmcs().set(model::vmcs::kTscOffset, m.base.tsc_offset);
}

Result<std::uint64_t> SimMachine::start_dirty_log(DirtyMode mode) {
  Impl& m = *impl_;
  auto n = m.hv->start_dirty_log(mode);
  if (!n) return n.error();
  m.charged.charge(CostCategory::kDirtyTracking, static_cast<double>(*n * m.cfg.profile.dirty_clear_per_page));
  m.cfg.hv = m.hv->config();
  if (m.vcpu) {
    (void)m.hv->take_tree_changed();
    BATON_TRY_VOID(m.invept());
    m.vcpu->clear_written();
  }
  return n;
}

Result<Hypervisor::PopulateStats> SimMachine::populate() {
  Impl& m = *impl_;
  auto st = m.hv->populate();
  if (!st) return st.error();
  m.charged.charge(CostCategory::kEptBuild, static_cast<double>(st->leaves * m.cfg.profile.ept_install_leaf +
                                                                 st->tables * m.cfg.profile.ept_table_alloc));
  if (m.vcpu) BATON_TRY_VOID(m.invept());
  return st;
}

std::uint64_t SimMachine::teardown(bool hand_over_tables) {
  Impl& m = *impl_;
  (void)close_trace();
  (void)m.hv->vmcs();  // sync the guest-state area while the vCPU still exists
  m.vcpu.reset();
  return m.hv->release(hand_over_tables);
}

void SimMachine::trace_phase(std::uint32_t phase, std::uint64_t value) {
#ifdef BATON_SIM_HAVE_TRACES
  Impl& m = *impl_;
  if (m.trace)
    m.trace->write(traces::phase_event(m.hv->config().vm_id, m.host->tsc(), static_cast<traces::MigrationPhase>(phase), value));
#else
  (void)phase;
  (void)value;
#endif
}

void SimMachine::hand_trace_to(SimMachine& dest) {
#ifdef BATON_SIM_HAVE_TRACES
  if (impl_->trace && !dest.impl_->trace) dest.impl_->trace = std::move(impl_->trace);
#else
  (void)dest;
#endif
}

Result<void> SimMachine::close_trace() {
#ifdef BATON_SIM_HAVE_TRACES
  if (impl_->trace) {
    auto r = impl_->trace->close();
    impl_->trace.reset();
    return r;
  }
#endif
  return ok_result();
}

SimStats SimMachine::stats() const {
  const Impl& m = *impl_;
  SimStats s;
  s.instructions = instructions();
  s.cost = m.charged;
  s.cost.charge(CostCategory::kGuest, static_cast<double>(s.instructions - m.insn_base) * m.cfg.profile.base_cpi);
  for (std::size_t r = 0; r < m.exits.size(); ++r)
    if (m.exits[r] != 0) s.exits[static_cast<ExitReason>(r)] = m.exits[r];
  s.ept = m.hv->stats();
  s.frequency_ghz = m.cfg.profile.frequency_ghz;
  s.deviating_pages = m.deviating.size();
  if (m.vcpu) {
    s.cost.charge(CostCategory::kTlbWalk, static_cast<double>(m.vcpu->tlb_walk_refs()) * m.cfg.profile.mem_ref_cycles);
    s.regions = m.vcpu->regions();
    s.tlb_misses = m.vcpu->tlb_misses();
    s.tlb_walk_refs = m.vcpu->tlb_walk_refs();
    s.blocks_decoded = m.vcpu->blocks_decoded();
    s.rdtsc_fixed = m.vcpu->rdtsc_fixed();
    s.hook_toggles = m.vcpu->hook_toggles();
    s.block_execs = m.vcpu->block_execs();
    s.hookless_execs = m.vcpu->hookless_execs();
    s.promotions = m.vcpu->promotions();
    s.hookless_lost = m.vcpu->fast_lost();
    s.read_hooks = m.vcpu->read_hooks();
    s.write_hooks = m.vcpu->write_hooks();
    s.store_mismatches = m.vcpu->store_mismatches();
  }
  return s;
}

}  // namespace baton::sim
