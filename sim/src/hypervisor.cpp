// Hypervisor: memslots, the TDP-style MMU, A/D + PML + write-protect dirty logging,
// VMCS upkeep, snapshot and restore.
#include "baton/sim/hypervisor.hpp"

#include <algorithm>
#include <cstring>

#include "baton/model/mapping_set.hpp"

namespace baton::sim {

using model::Access;
using model::EptEntry;
using model::Gfn;
using model::Gpa;
using model::Hfn;
using model::Hpa;
using model::Perms;

namespace {
// Secondary processor-based controls (SDM Vol. 3C §25.6.2, table 25-7).
constexpr std::uint64_t kSecEnableEpt = 1u << 1;
constexpr std::uint64_t kSecUnrestricted = 1u << 7;
constexpr std::uint64_t kSecEnablePml = 1u << 17;
// Primary processor-based controls (table 25-6).
constexpr std::uint64_t kProcUseTscOffset = 1u << 3;
constexpr std::uint64_t kProcHltExiting = 1u << 7;
constexpr std::uint64_t kProcUncondIo = 1u << 24;
constexpr std::uint64_t kProcSecondary = 1u << 31;
// Entry controls (table 25-15) and exit controls (table 25-13).
constexpr std::uint64_t kEntryIa32eGuest = 1u << 9;
constexpr std::uint64_t kEntryLoadEfer = 1u << 15;
constexpr std::uint64_t kExitHostAs = 1u << 9;
constexpr std::uint64_t kExitSaveEfer = 1u << 20;
constexpr std::uint64_t kExitLoadEfer = 1u << 21;
constexpr std::uint64_t kPmlEntries = 512;  // SDM §29.3.6: the PML log is one 4 KiB page of 512 GPAs
}  // namespace

const char* to_string(DirtyMode m) {
  switch (m) {
    case DirtyMode::kOff: return "off";
    case DirtyMode::kWriteProtect: return "wp";
    case DirtyMode::kPml: return "pml";
  }
  return "?";
}

const char* to_string(FaultFix f) {
  switch (f) {
    case FaultFix::kInstalled: return "installed";
    case FaultFix::kWriteUnprotect: return "write-unprotect";
    case FaultFix::kSpurious: return "spurious";
    case FaultFix::kNoSlot: return "no-memslot";
    case FaultFix::kReadOnlySlot: return "read-only-memslot";
  }
  return "?";
}

Hypervisor::Hypervisor(HostMemory& host, HypervisorConfig cfg)
    : host_(host), cfg_(cfg), builder_(host.frames(), [this] { return alloc_table(); }, cfg.ept) {
  init_vmcs();
}

Hypervisor::Hypervisor(HostMemory& host, HypervisorConfig cfg, Hfn root)
    : host_(host), cfg_(cfg), builder_(host.frames(), [this] { return alloc_table(); }, root, cfg.ept) {
  init_vmcs();
}

Hypervisor::~Hypervisor() = default;

Hfn Hypervisor::alloc_table() {
  ++stats_.tables;
  const Hfn f = host_.alloc_frame(model::OwnerKind::kEptTable, cfg_.vm_id);
  table_frames_.push_back(f);
  return f;
}

void Hypervisor::init_vmcs() {
  vmcs_frame_ = host_.alloc_frame(model::OwnerKind::kVmcs, cfg_.vm_id);
  pml_frame_ = host_.alloc_frame(model::OwnerKind::kHypervisor, cfg_.vm_id);
  std::uint64_t sec = kSecEnableEpt | kSecUnrestricted;
  if (cfg_.dirty == DirtyMode::kPml) sec |= kSecEnablePml;
  vmcs_.set(model::vmcs::kPinBasedControls, 0x16);  // default1 bits only
  vmcs_.set(model::vmcs::kProcBasedControls, kProcUseTscOffset | kProcHltExiting | kProcUncondIo | kProcSecondary);
  vmcs_.set(model::vmcs::kSecondaryControls, sec);
  vmcs_.set(model::vmcs::kEntryControls, kEntryIa32eGuest | kEntryLoadEfer);
  vmcs_.set(model::vmcs::kExitControls, kExitHostAs | kExitSaveEfer | kExitLoadEfer);
  vmcs_.set(model::vmcs::kEptPointer, eptp().raw());
  vmcs_.set(model::vmcs::kVmcsLinkPointer, ~std::uint64_t{0});
  vmcs_.set(model::vmcs::kPmlAddress, model::hpa_of(pml_frame_).value);
  vmcs_.set(model::vmcs::kGuestPmlIndex, kPmlEntries - 1);
  vmcs_.set(model::vmcs::kTscOffset, 0);
  vmcs_.set(model::vmcs::kHostCr3, 0x1000);
  vmcs_.set(model::vmcs::kHostRip, 0xFFFFFFFF81000000ull);
}

Result<void> Hypervisor::add_memslot(const model::Memslot& slot) {
  std::vector<model::Memslot> all = slots_;
  all.push_back(slot);
  if (std::string why = model::validate_memslots(all); !why.empty()) return make_error(why);
  if (host_.ram_at(slot.hpa) == nullptr || host_.ram_at(slot.hpa + (slot.size - 1)) != host_.ram_at(slot.hpa))
    return make_error("memslot " + std::to_string(slot.id) + " is not backed by one host RAM range");
  slots_ = std::move(all);
  return ok_result();
}

Result<void> Hypervisor::add_mmio(const model::GpaRange& r) {
  if (r.size == 0 || ((r.gpa.value | r.size) & model::kPageMask) != 0) return make_error("MMIO range must be 4 KiB aligned");
  for (std::uint64_t off = 0; off < r.size; off += model::kPageSize) {
    if (slot_of(r.gpa + off) != nullptr) return make_error("MMIO range overlaps a memslot");
    // KVM's MMIO marker: W+X without R is a misconfiguration (SDM §29.3.3.1).
    BATON_TRY_VOID(builder_.set_entry(r.gpa + off, 1, EptEntry{0x6}));
  }
  mmio_.push_back(r);
  return ok_result();
}

bool Hypervisor::is_mmio(Gpa a) const {
  return std::any_of(mmio_.begin(), mmio_.end(), [a](const model::GpaRange& r) { return r.contains(a); });
}

const model::Memslot* Hypervisor::slot_of(Gpa a) const { return model::find_memslot(slots_, a); }

bool Hypervisor::tracks(const model::Memslot& slot) const {
  return cfg_.dirty != DirtyMode::kOff && !slot.read_only;
}

unsigned Hypervisor::leaf_level_for(Gpa gpa, const model::Memslot& slot) const {
  // Dirty-logged slots are mapped with 4 KiB leaves, as KVM disables huge pages for them.
  const unsigned max = tracks(slot) ? 1 : cfg_.max_leaf_level;
  for (unsigned level = max; level > 1; --level) {
    const std::uint64_t span = model::level_span(level);
    const Gpa base{gpa.value & ~(span - 1)};
    if (base < slot.gpa || base + span > slot.end()) continue;
    if ((slot.hpa_at(base).value & (span - 1)) != 0) continue;
    bool overlaps = false;
    for (const model::GpaRange& r : mmio_) overlaps |= r.gpa < base + span && base < r.end();
    if (!overlaps) return level;
  }
  return 1;
}

model::WalkResult Hypervisor::walk(Gpa gpa, Access access) const {
  return model::walk(eptp(), gpa, access, host_, cfg_.ept);
}

FaultResult Hypervisor::handle_violation(Gpa gpa, Access access) {
  ++stats_.violations;
  FaultResult r;
  const model::Memslot* slot = slot_of(gpa);
  if (slot == nullptr) {
    r.fix = FaultFix::kNoSlot;
    return r;
  }
  if (access == Access::kWrite && slot->read_only) {
    r.fix = FaultFix::kReadOnlySlot;
    return r;
  }
  const model::WalkResult w = walk(gpa, access);
  if (w.translated()) {
    r.fix = FaultFix::kSpurious;
    return r;
  }
  // A present leaf that lacks W under write-protect logging: log the page and unprotect it.
  if (w.kind == model::WalkKind::kViolation && access == Access::kWrite && w.path_len > 0) {
    const model::WalkStep& leaf = w.path[w.path_len - 1];
    if (leaf.entry.is_present(cfg_.ept) && leaf.entry.is_leaf_at(leaf.level) && !leaf.entry.writable() &&
        cfg_.dirty == DirtyMode::kWriteProtect) {
      host_.frames().write_u64(leaf.entry_addr, leaf.entry.with_bit(EptEntry::kBitWrite, true).raw());
      dirty_.insert(model::gfn_of(gpa).value);
      ++stats_.wp_faults;
      r.fix = FaultFix::kWriteUnprotect;
      r.level = leaf.level;
      const std::uint64_t span = model::level_span(leaf.level);
      r.gfn = model::gfn_of(Gpa{gpa.value & ~(span - 1)});
      r.hfn = model::hfn_of(leaf.entry.leaf_base(leaf.level));
      r.perms = leaf.entry.perms().bits() | 2;
      return r;
    }
  }
  // Install the largest leaf the slot allows; fall back to smaller ones when a finer
  // mapping already exists there.
  const std::uint64_t tables_before = stats_.tables;
  for (unsigned level = leaf_level_for(gpa, *slot); level >= 1; --level) {
    const std::uint64_t span = model::level_span(level);
    const Gpa base{gpa.value & ~(span - 1)};
    if (level > 1 && (base < slot->gpa || base + span > slot->end())) continue;
    Perms p = slot->max_perms();
    if (cfg_.dirty == DirtyMode::kWriteProtect && tracks(*slot) && !dirty_.count(model::gfn_of(gpa).value)) p.w = false;
    if (cfg_.dirty == DirtyMode::kWriteProtect && tracks(*slot) && access == Access::kWrite) {
      p.w = true;
      dirty_.insert(model::gfn_of(gpa).value);
      ++stats_.wp_faults;
    }
    if (builder_.map_leaf(base, slot->hpa_at(base), level, p).ok()) {
      ++stats_.leaves[level];
      r.fix = FaultFix::kInstalled;
      r.level = level;
      r.gfn = model::gfn_of(base);
      r.hfn = model::hfn_of(slot->hpa_at(base));
      r.perms = p.bits();
      r.tables = static_cast<unsigned>(stats_.tables - tables_before);
      return r;
    }
    if (level == 1) break;
  }
  r.fix = FaultFix::kSpurious;
  return r;
}

bool Hypervisor::complete_access(const model::WalkResult& w, Gpa gpa, Access access) {
  if (!cfg_.ad || !w.translated()) return true;
  const model::WalkStep& leaf = w.path[w.path_len - 1];
  const bool sets_dirty = access == Access::kWrite && !leaf.entry.dirty();
  if (sets_dirty && cfg_.dirty == DirtyMode::kPml) {
    const std::uint64_t index = vmcs_.get_or_zero(model::vmcs::kGuestPmlIndex);
    if (index >= kPmlEntries) return false;  // PML-full exit before the access (SDM §29.3.6)
    const Hpa slot = model::hpa_of(pml_frame_) + index * 8;
    host_.frames().write_u64(slot, gpa.value & ~model::kPageMask);
    vmcs_.set(model::vmcs::kGuestPmlIndex, (index - 1) & 0xFFFF);
    ++stats_.pml_logged;
  }
  model::set_accessed_dirty(eptp(), w, access, host_.frames());
  return true;
}

std::uint64_t Hypervisor::drain_pml() {
  const std::uint64_t index = vmcs_.get_or_zero(model::vmcs::kGuestPmlIndex);
  const std::uint64_t first = index >= kPmlEntries ? 0 : index + 1;
  std::uint64_t n = 0;
  for (std::uint64_t i = first; i < kPmlEntries; ++i) {
    std::uint64_t g = 0;
    host_.frames().read_u64(model::hpa_of(pml_frame_) + i * 8, &g);
    dirty_.insert(g >> model::kPageShift);
    ++n;
  }
  vmcs_.set(model::vmcs::kGuestPmlIndex, kPmlEntries - 1);
  if (index >= kPmlEntries) ++stats_.pml_full;
  return n;
}

std::vector<Gfn> Hypervisor::dirty_log() {
  if (cfg_.dirty == DirtyMode::kPml) drain_pml();
  std::vector<Gfn> out;
  if (cfg_.dirty == DirtyMode::kOff && cfg_.ad) {
    // No logging: report pages whose leaf carries D (leaf granularity).
    for (const model::Memslot& s : slots_)
      for (std::uint64_t off = 0; off < s.size; off += model::kPageSize) {
        const model::WalkResult w = walk(s.gpa + off, Access::kRead);
        if (w.translated() && w.path[w.path_len - 1].entry.dirty()) out.push_back(model::gfn_of(s.gpa + off));
      }
    return out;
  }
  for (std::uint64_t g : dirty_) out.push_back(Gfn{g});
  return out;
}

std::vector<Gfn> Hypervisor::clear_dirty_log() {
  if (cfg_.dirty == DirtyMode::kPml) drain_pml();
  std::vector<Gfn> changed;
  for (std::uint64_t g : dirty_) {
    const Gpa gpa = model::gpa_of(Gfn{g});
    const model::WalkResult w = walk(gpa, Access::kRead);
    if (!w.translated()) continue;
    const model::WalkStep& leaf = w.path[w.path_len - 1];
    EptEntry e = leaf.entry;
    if (cfg_.dirty == DirtyMode::kWriteProtect) e = e.with_bit(EptEntry::kBitWrite, false);
    e = e.with_bit(EptEntry::kBitDirty, false);
    host_.frames().write_u64(leaf.entry_addr, e.raw());
    changed.push_back(Gfn{g});
  }
  dirty_.clear();
  return changed;
}

Result<std::uint64_t> Hypervisor::start_dirty_log(DirtyMode mode) {
  if (mode == DirtyMode::kOff) return make_error("start_dirty_log needs a mode (wp or pml)");
  if (mode == DirtyMode::kPml && !cfg_.ad) return make_error("PML needs EPT A/D flags enabled");
  cfg_.dirty = mode;
  dirty_.clear();
  std::uint64_t sec = vmcs_.get_or_zero(model::vmcs::kSecondaryControls);
  if (mode == DirtyMode::kPml) sec |= kSecEnablePml;
  vmcs_.set(model::vmcs::kSecondaryControls, sec);
  vmcs_.set(model::vmcs::kGuestPmlIndex, kPmlEntries - 1);
  std::uint64_t changed = 0;
  for (model::Memslot& s : slots_) {
    if (s.read_only) continue;
    s.dirty_log = true;
    std::uint64_t off = 0;
    while (off < s.size) {
      const Gpa gpa = s.gpa + off;
      const model::WalkResult w = walk(gpa, Access::kRead);
      if (w.translated()) {
        const model::WalkStep& leaf = w.path[w.path_len - 1];
        const std::uint64_t span = model::level_span(leaf.level);
        if (leaf.level > 1) {
          host_.frames().write_u64(leaf.entry_addr, 0);  // zap: refaults at 4 KiB
        } else {
          EptEntry e = leaf.entry.with_bit(EptEntry::kBitDirty, false);
          if (mode == DirtyMode::kWriteProtect) e = e.with_bit(EptEntry::kBitWrite, false);
          host_.frames().write_u64(leaf.entry_addr, e.raw());
        }
        ++changed;
        off = (gpa.value & ~(span - 1)) + span - s.gpa.value;
      } else if (w.kind == model::WalkKind::kViolation && w.path_len > 0 &&
                 !w.path[w.path_len - 1].entry.is_present(cfg_.ept)) {
        // Nothing is present below a non-present entry: skip what it covers.
        const std::uint64_t span = model::level_span(w.path[w.path_len - 1].level);
        off = (gpa.value & ~(span - 1)) + span - s.gpa.value;
      } else {
        off += model::kPageSize;
      }
    }
  }
  tree_changed_ = true;
  return changed;
}

Result<Hypervisor::PopulateStats> Hypervisor::populate() {
  PopulateStats st;
  const std::uint64_t tables_before = stats_.tables;
  for (const model::Memslot& s : slots_) {
    std::uint64_t off = 0;
    while (off < s.size) {
      const Gpa gpa = s.gpa + off;
      const unsigned level = leaf_level_for(gpa, s);
      const std::uint64_t span = model::level_span(level);
      BATON_TRY_VOID(builder_.map_leaf(gpa, s.hpa_at(gpa), level, s.max_perms()));
      ++stats_.leaves[level];
      ++st.leaves;
      off += span;
    }
  }
  st.tables = stats_.tables - tables_before;
  return st;
}

std::uint64_t Hypervisor::release(bool hand_over_tables) {
  if (released_) return 0;
  released_ = true;
  std::uint64_t n = 0;
  host_.free_frame(vmcs_frame_);
  host_.free_frame(pml_frame_);
  n += 2;
  if (!hand_over_tables) {
    for (Hfn f : table_frames_) host_.free_frame(f);
    n += table_frames_.size();
  }
  table_frames_.clear();
  return n;
}

Result<void> Hypervisor::write_entry(Gpa gpa, unsigned level, EptEntry e) {
  BATON_TRY_VOID(builder_.set_entry(gpa, level, e));
  tree_changed_ = true;
  return ok_result();
}

bool Hypervisor::take_tree_changed() {
  const bool c = tree_changed_;
  tree_changed_ = false;
  return c;
}

model::HandoverSnapshot Hypervisor::snapshot(const model::VcpuState& v) const {
  model::HandoverSnapshot s;
  s.vm_id = cfg_.vm_id;
  s.ept_config = cfg_.ept;
  s.memslots = slots_;
  s.mmio = mmio_;
  s.vcpus = {v};
  s.vmcs = vmcs();  // brings lazily kept fields (exit information) up to date first
  model::sync_vmcs_guest_state(v, s.vmcs);
  s.eptp = eptp();
  model::collect_tables(s.eptp, host_, cfg_.ept, s.tables);
  s.owners = host_.owners();
  s.meta["source"] = "baton-sim";
  s.meta["max_leaf_level"] = std::to_string(cfg_.max_leaf_level);
  s.meta["dirty_mode"] = to_string(cfg_.dirty);
  return s;
}

Result<std::unique_ptr<Hypervisor>> Hypervisor::restore(HostMemory& host, const model::HandoverSnapshot& s,
                                                        HypervisorConfig cfg, bool adopt_tree) {
  if (std::string why = model::validate_snapshot(s); !why.empty()) return make_error("snapshot: " + why);
  cfg.vm_id = s.vm_id;
  cfg.ept = s.ept_config;
  std::unique_ptr<Hypervisor> hv;
  if (adopt_tree) {
    // Take over the table pages of the handed-over tree. Only a frame the package's owner map
    // gives to this VM's EPT becomes this instance's table; any other frame a walk reaches as a
    // table (guest RAM, a VMCS, a free frame: a corrupted pointer) keeps its owner, so the
    // isolation check sees it. A frame host memory lacks is copied in with the package's owner.
    if (s.tables.frame(s.eptp.root()) == nullptr)
      return make_error("the handed-over EPTP " + std::to_string(s.eptp.raw()) + " points at no table in the package");
    std::vector<Hfn> owned;
    for (Hfn f : s.tables.frames()) {
      const model::OwnerRange o = s.owners.owner_of(f);
      const bool table = o.kind == model::OwnerKind::kEptTable && o.vm == s.vm_id;
      if (table) owned.push_back(f);
      if (!table && host.frame(f) != nullptr) continue;
      std::uint8_t* dst = host.claim_frame(f, o.kind, o.vm);
      std::memcpy(dst, s.tables.frame(f), model::kPageSize);
    }
    hv.reset(new Hypervisor(host, cfg, s.eptp.root()));
    hv->table_frames_ = std::move(owned);
  } else {
    hv.reset(new Hypervisor(host, cfg));
  }
  for (const model::Memslot& m : s.memslots) BATON_TRY_VOID(hv->add_memslot(m));
  if (!adopt_tree)
    for (const model::GpaRange& r : s.mmio) BATON_TRY_VOID(hv->add_mmio(r));
  else
    hv->mmio_ = s.mmio;
  hv->vmcs_.set(model::vmcs::kTscOffset, s.vmcs.get_or_zero(model::vmcs::kTscOffset));
  for (const auto& [enc, val] : s.vmcs.area(model::VmcsArea::kGuestState))
    if (enc != model::vmcs::kGuestPmlIndex) hv->vmcs_.set(enc, val);
  return hv;
}

}  // namespace baton::sim
