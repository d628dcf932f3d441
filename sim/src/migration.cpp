// The migration engine: run to the migration point, plant a fault, hand over by one method,
// check the handover, tear the old instance down, and finish on the new one.
#include "baton/sim/migration.hpp"

#include <sys/mman.h>
#include <xxhash.h>

#include <algorithm>
#include <chrono>
#include <cstring>

#include "baton/guests/registry.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/spec_tree.hpp"
#include "hex.hpp"
#ifdef BATON_SIM_HAVE_TRACES
#include "baton/traces/trace.hpp"
#endif

namespace baton::sim {

using model::Gfn;
using model::Gpa;
using model::Hpa;

namespace {

// Which pages of a RAM range the host has backed (mincore): a page never backed reads as zero.
std::vector<unsigned char> residency(const RamRange& r) {
  std::vector<unsigned char> v(r.size >> model::kPageShift, 1);
  if (mincore(r.data, r.size, v.data()) != 0) std::fill(v.begin(), v.end(), 1);  // unknown: read everything
  return v;
}

// Names what an op did to a bit ("bit 12", "bit 12 stuck at 1").
std::string bit_words(unsigned bit, FaultOp op) {
  return "bit " + std::to_string(bit) + (op == FaultOp::kFlip ? "" : op == FaultOp::kStuck0 ? " stuck at 0" : " stuck at 1");
}

// Applies an op to one bit of a VMCS field; returns the fault's description.
std::string flip_vmcs_bit(model::Vmcs& vmcs, std::uint32_t field, unsigned bit, FaultOp op) {
  const std::uint64_t v = vmcs.get_or_zero(field);
  const std::uint64_t n = apply_fault_op(v, bit, op);
  vmcs.set(field, n);
  const model::VmcsField* fld = model::find_vmcs_field(field);
  return "VMCS " + std::string(fld != nullptr ? fld->name : hexs(field)) + " " + bit_words(bit, op) + ": " + hexs(v) +
         " -> " + hexs(n);
}

// Applies a RAM fault to the word at its GPA in the VM's memory; returns its description.
Result<std::string> plant_ram_fault(SimMachine& src, const Fault& f) {
  const Gpa gpa{f.gpa.value_or(0)};
  const model::Memslot* slot = model::find_memslot(src.hypervisor().memslots(), gpa);
  std::uint8_t* p = slot != nullptr ? src.host()->ram_ptr(slot->hpa_at(gpa)) : nullptr;
  if (p == nullptr) return make_error("fault ram: GPA " + hexs(gpa.value) + " is not guest RAM");
  std::uint64_t v = 0;
  std::memcpy(&v, p, sizeof v);
  const unsigned bit = f.bit.value_or(0);
  const std::uint64_t n = apply_fault_op(v, bit, f.op);
  std::memcpy(p, &n, sizeof n);
  return "RAM word at GPA " + hexs(gpa.value) + " " + bit_words(bit, f.op) + ": " + hexs(v) + " -> " + hexs(n);
}

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}


}  // namespace

Result<std::string> plant_source_fault(SimMachine& src, const Fault& f) {
  Hypervisor& hv = src.hypervisor();
  if (f.kind == FaultKind::kVmcsBit && model::area_of_encoding(f.vmcs_field) == model::VmcsArea::kGuestState)
    return std::string();  // the guest state is captured from the VMCS at the pause: planted there
  if (f.kind == FaultKind::kVmcsBit)
    return flip_vmcs_bit(hv.vmcs(), f.vmcs_field, f.bit.value_or(f.vmcs_field == model::vmcs::kEptPointer ? 12 : 0),
                         f.op);
  if (f.kind == FaultKind::kRamBit) return plant_ram_fault(src, f);
  if (f.kind != FaultKind::kEptBit) return std::string();
  Gpa gpa;
  if (f.gpa) {
    gpa = Gpa{*f.gpa};
  } else {
    // The middle of what the guest has mapped so far.
    auto set = model::MappingSet::from_tree(hv.eptp(), *src.host(), hv.config().ept);
    if (!set) return set.error();
    std::uint64_t total = 0;
    for (const model::MappingRun& r : set->runs())
      if (r.kind == model::RunKind::kMapped) total += r.size;
    if (total == 0) return make_error("fault ept: the old tree maps nothing yet; migrate later (--at-sync)");
    std::uint64_t half = total / 2;
    for (const model::MappingRun& r : set->runs()) {
      if (r.kind != model::RunKind::kMapped) continue;
      if (half < r.size) {
        gpa = Gpa{(r.gpa.value + half) & ~model::kPageMask};
        break;
      }
      half -= r.size;
    }
  }
  const model::WalkResult w = hv.walk(gpa, model::Access::kRead);
  if (!w.translated())
    return make_error("fault ept: GPA " + hexs(gpa.value) + " has no present leaf in the old tree (it is " +
                      model::to_string(w.kind) + ")");
  const model::WalkStep& leaf = w.path[w.path_len - 1];
  const model::WalkStep* hit = &leaf;
  if (f.level) {
    hit = nullptr;
    for (unsigned i = 0; i < w.path_len; ++i)
      if (w.path[i].level == *f.level) hit = &w.path[i];
    if (hit == nullptr)
      return make_error("fault ept: the walk of GPA " + hexs(gpa.value) + " has no level-" + std::to_string(*f.level) +
                        " entry (its leaf is at level " + std::to_string(leaf.level) + ")");
  }
  const unsigned bit = f.bit.value_or(12 + 9 * (leaf.level - 1));
  const model::EptEntry changed{apply_fault_op(hit->entry.raw(), bit, f.op)};
  BATON_TRY_VOID(hv.write_entry(gpa, hit->level, changed));
  const bool is_leaf = hit == &leaf;
  return std::string(is_leaf ? "EPT leaf" : "EPT level-" + std::to_string(hit->level) + " entry") + " of GPA " +
         hexs(gpa.value & ~(model::level_span(hit->level) - 1)) + " (level " + std::to_string(hit->level) + ") " +
         bit_words(bit, f.op) + ": " + hexs(hit->entry.raw()) + " -> " + hexs(changed.raw());
}

namespace {

checker::Verdict overall(const std::vector<CheckLine>& lines, std::size_t from = 0) {
  return overall_verdict(lines, from);
}

// The simulator under the migration driver: two modelled hypervisor instances over one
// HostMemory, with times in simulated cycles from the cost profile.
class SimBackend final : public MigrationBackend {
 public:
  SimBackend(const guests::GuestImage& image, const SimConfig& base, const MigrationOptions& opt,
             const NeighbourOptions& nb, const SourcePrep& source)
      : image_(image), base_(base), opt_(opt), nb_(nb), source_(source), prof_(base.profile) {}

  Capabilities capabilities() const override { return {}; }
  void begin(MigrationResult& r) override {
    res_ = &r;
    r.backend = r.host_flavour = "sim";
    r.time_base = TimeBase::kSimulatedCycles;
    r.frequency_ghz = prof_.frequency_ghz;
  }
  Result<RunEvent> run_to_point(const RunLimits& point) override;
  std::uint64_t source_instructions() const override { return src_->instructions(); }
  Result<std::string> plant_source_fault(const Fault& f) override;
  Result<std::string> plant_package_fault(const Fault& f, model::HandoverSnapshot& pkg) override;
  Result<void> precopy() override { return precopy_rounds(*src_); }
  Result<model::HandoverSnapshot> pause_and_capture() override;
  Result<void> stop_and_copy() override;
  Result<model::HandoverSnapshot> hand_over(Method m, const model::HandoverSnapshot& pkg) override;
  void verify(Method m, const model::HandoverSnapshot& before, const model::HandoverSnapshot& after) override;
  void discard_new(Method m) override {
    if (dest_) (void)dest_->teardown(m == Method::kAdopt);  // adopt's tables were the old instance's
    dest_.reset();
  }
  Result<void> resume_source() override;
  Result<void> finish_on_new(Method m) override;
  Result<void> epilogue() override;

 private:
  void progress(const std::string& s) const {
    if (opt_.progress) opt_.progress(s);
  }
  // Adds a phase to the timeline.
  // `on_host_tsc`: the cycles are already on the host TSC (an instance charged them).
  void phase(const std::string& name, double cycles, bool down, std::uint32_t trace_code = 0, bool on_host_tsc = false) {
    res_->timeline.push_back(Phase{name, clock_, cycles, down});
    clock_ += cycles;
    if (down) res_->downtime += cycles;
    if (!on_host_tsc) host_->advance_tsc(static_cast<std::uint64_t>(cycles));
    if (trace_code != 0 && tracer_ != nullptr) tracer_->trace_phase(trace_code, static_cast<std::uint64_t>(cycles));
  }
  double copy_cycles(std::uint64_t bytes) const { return static_cast<double>(bytes) / prof_.memcpy_bytes_per_cycle; }
  Result<void> run_reference(std::uint64_t switch_insn);
  Result<std::string> plant_fault_in_tree(SimMachine& src, const Fault& f);
  Result<void> precopy_rounds(SimMachine& src);
  std::uint64_t copy_pages(const std::vector<Gfn>& gfns, CopyRound& round);
  Result<std::unique_ptr<SimMachine>> restore_new(Method m, const model::HandoverSnapshot& pkg);
  void add_report(const Result<checker::Report>& r, const std::string& suffix = "");
  void add_line(CheckLine l) { res_->checks.push_back(std::move(l)); }
  // Adds the line of one checker property run (unknown, with the reason, when it could not run).
  void add_result(const std::string& name, const Result<checker::PropertyResult>& r,
                  std::chrono::steady_clock::time_point t0, const std::string& proven_summary = "") {
    if (!r) return add_line(CheckLine{name, checker::Verdict::kUnknown, r.error().message, since(t0), std::nullopt});
    add_line(CheckLine{name, r->verdict,
                       r->verdict == checker::Verdict::kProven && !proven_summary.empty() ? proven_summary : r->summary,
                       since(t0), r->counterexample});
  }
  // The tree the new memslots prescribe, built into `out`.
  Result<model::Eptp> spec_tree_of(const model::HandoverSnapshot& after, model::FrameStore& out) const {
    return model::build_spec_tree(after.memslots, after.mmio, base_.hv.max_leaf_level, base_.hv.ad, after.ept_config,
                                  out);
  }
  void check_contents(const model::HandoverSnapshot& before);
  void check_relation(const model::HandoverSnapshot& before, const model::HandoverSnapshot& after);
  void check_final_conformance(SimMachine& dest);
  Result<void> finish(SimMachine& m, const RunLimits& l);
  Result<model::HandoverSnapshot> prepare(SimMachine& dest, Method m, const model::HandoverSnapshot& before);

  const guests::GuestImage& image_;
  SimConfig base_;
  const MigrationOptions& opt_;  // the caller's: it outlives the migration, and a campaign sets its scope late
  const NeighbourOptions& nb_;
  const SourcePrep& source_;
  CostProfile prof_;
  std::shared_ptr<HostMemory> host_;
  MigrationResult* res_ = nullptr;
  double clock_ = 0;
  SimMachine* tracer_ = nullptr;
  std::unique_ptr<SimMachine> src_, dest_, nb_vm_;
  std::optional<model::HandoverSnapshot> nb_before_;
  // Pre-copy state.
  std::vector<Gfn> pending_;  // pages dirtied since the last round copied them
  const RamRange* old_ram_ = nullptr;
  RamRange new_ram_{};
  std::vector<bool> sent_;  // per gfn: data was sent (the destination page is not zero)
  GuestOutput pre_output_;
  std::optional<model::HandoverSnapshot> before_;  // what the old instance held at the pause
};

Result<void> SimBackend::run_reference(std::uint64_t switch_insn) {
  // The unmigrated run over the same instructions: from where the VM switched instances.
  SimConfig rc = base_;
  rc.trace_path.clear();
  auto ref = SimMachine::create(rc);
  if (!ref) return ref.error();
  BATON_TRY_VOID((*ref)->load(image_));
  RunLimits to;
  to.budget = opt_.budget;
  to.until_insn = switch_insn;
  const RunEvent e = (*ref)->run(to);
  if (e.reason != StopReason::kInsnLimit) return ok_result();
  const double c0 = (*ref)->cycles();
  const std::uint64_t i0 = (*ref)->instructions();
  RunLimits w;
  w.budget = opt_.budget;
  w.until_insn = i0 + res_->window;
  (void)(*ref)->run(w);
  res_->reference_window_cycles = (*ref)->cycles() - c0;
  return ok_result();
}

Result<std::string> SimBackend::plant_source_fault(const Fault& f) { return plant_fault_in_tree(*src_, f); }

Result<std::string> SimBackend::plant_fault_in_tree(SimMachine& src, const Fault& f) {
  return sim::plant_source_fault(src, f);
}

Result<std::string> SimBackend::plant_package_fault(const Fault& f, model::HandoverSnapshot& pkg) {
  if (f.kind == FaultKind::kVmcsBit && model::area_of_encoding(f.vmcs_field) == model::VmcsArea::kGuestState)
    return flip_vmcs_bit(pkg.vmcs, f.vmcs_field, f.bit.value_or(0), f.op);
  if (f.kind == FaultKind::kRegBit) {
    if (pkg.vcpus.empty()) return make_error("--fault: the package has no vCPU");
    std::uint64_t* r = saved_register(pkg.vcpus[0], f.reg);
    if (r == nullptr) return make_error("--fault: the saved vCPU state has no register '" + f.reg + "'");
    const unsigned bit = f.bit.value_or(0);
    const std::uint64_t old = *r;
    *r = apply_fault_op(old, bit, f.op);
    return "saved register " + f.reg + " " + bit_words(bit, f.op) + ": " + hexs(old) + " -> " + hexs(*r);
  }
  if (f.kind != FaultKind::kMemslotBit) return std::string();
  for (model::Memslot& s : pkg.memslots) {
    if (s.id != f.slot) continue;
    std::uint64_t* field = f.slot_field == "gpa" ? &s.gpa.value : f.slot_field == "hpa" ? &s.hpa.value : &s.size;
    // Default: the top bit of the size (halves the slot), bit 21 of an address (moves it 2 MiB).
    unsigned bit = 21;
    if (f.slot_field == "size") bit = 63 - static_cast<unsigned>(__builtin_clzll(s.size | 1));
    bit = f.bit.value_or(bit);
    const std::uint64_t old = *field;
    *field = apply_fault_op(old, bit, f.op);
    return "memslot " + std::to_string(s.id) + " " + f.slot_field + " " + bit_words(bit, f.op) + ": " + hexs(old) +
           " -> " + hexs(*field);
  }
  // An unplantable fault is an error, as an EPT fault at an unmapped GPA is.
  std::string ids;
  for (const model::Memslot& s : pkg.memslots) ids += (ids.empty() ? "" : ", ") + std::to_string(s.id);
  return make_error("--fault: memslot " + std::to_string(f.slot) + " does not exist (memslots: " + ids + ")");
}

std::uint64_t SimBackend::copy_pages(const std::vector<Gfn>& gfns, CopyRound& round) {
  static const std::uint8_t kZero[model::kPageSize] = {};
  // Pages the host never backed are zero without reading them (reading would back them).
  const std::vector<unsigned char> resident = residency(*old_ram_);
  std::uint64_t sent = 0, read = 0;
  for (Gfn g : gfns) {
    const std::uint64_t off = g.value << model::kPageShift;
    if (off >= old_ram_->size) continue;
    const std::uint8_t* from = old_ram_->data + off;
    std::uint8_t* to = new_ram_.data + off;
    ++round.pages;
    read += resident[g.value] & 1;
    // Zero pages are sent as a flag, as QEMU does; a page once sent must be overwritten.
    if (!sent_[g.value] && ((resident[g.value] & 1) == 0 || std::memcmp(from, kZero, model::kPageSize) == 0)) continue;
    std::memcpy(to, from, model::kPageSize);
    sent_[g.value] = true;
    ++sent;
  }
  round.sent += sent;
  res_->pages_copied += sent;
  res_->bytes_copied += sent * model::kPageSize;
  // Every page the host backed is read once (the zero test; one it never backed is known zero,
  // as baton's KVM precopy asks mincore too); sent pages cross to the new instance (at the
  // transfer bandwidth, the copy's when the profile has none).
  const double transfer = prof_.transfer_bytes_per_cycle > 0 ? prof_.transfer_bytes_per_cycle : prof_.memcpy_bytes_per_cycle;
  round.cycles = copy_cycles(read * model::kPageSize) + static_cast<double>(sent * model::kPageSize) / transfer;
  return sent;
}

Result<void> SimBackend::precopy_rounds(SimMachine& src) {
  old_ram_ = host_->ram_at(src.hypervisor().memslots().front().hpa);
  if (old_ram_ == nullptr) return make_error("precopy: the guest RAM is not in host memory");
  auto nr = host_->alloc_ram(old_ram_->size, src.hypervisor().config().vm_id);
  if (!nr) return nr.error();
  new_ram_ = *nr;
  old_ram_ = host_->ram_at(src.hypervisor().memslots().front().hpa);  // alloc_ram may move the vector
  sent_.assign(old_ram_->size >> model::kPageShift, false);
  auto changed = src.start_dirty_log(opt_.dirty);
  if (!changed) return changed.error();
  phase("dirty-log-start", static_cast<double>(*changed * prof_.dirty_clear_per_page), false,
        0);
  std::vector<Gfn> todo;
  for (std::uint64_t g = 0; g < (old_ram_->size >> model::kPageShift); ++g) todo.push_back(Gfn{g});
  for (unsigned r = 1; r <= opt_.max_rounds; ++r) {
    CopyRound round;
    copy_pages(todo, round);
    // The guest runs on while the round copies: for as many cycles as the copy takes.
    const double target = src.cycles() + round.cycles;
    const std::uint64_t i0 = src.instructions();
    while (src.cycles() < target) {
      RunLimits l;
      l.budget = opt_.budget;
      // In chunks of at most 100,000 instructions, so that the cycles its exits cost (a
      // write-protect fault per page it dirties) come out of the round's time as they would.
      l.until_insn = src.instructions() + std::clamp<std::uint64_t>(
                                              static_cast<std::uint64_t>((target - src.cycles()) / prof_.base_cpi), 1000,
                                              100'000);
      const RunEvent e = src.run(l);
      if (e.reason == StopReason::kInsnLimit) continue;
      if (e.reason == StopReason::kExited) {
        res_->finished_before_switch = true;
        break;
      }
      return make_error(std::string("precopy round ") + std::to_string(r) + ": the guest stopped: " + to_string(e.reason) +
                        " (" + e.detail + ")");
    }
    round.guest_insns = src.instructions() - i0;
    todo = src.dirty_log();
    src.clear_dirty_log();
    round.dirtied = todo.size();
    pending_ = todo;
    res_->rounds.push_back(round);
    phase("precopy-round-" + std::to_string(r), round.cycles, false, tracer_ != nullptr ? 6 : 0);
    progress("precopy round " + std::to_string(r) + ": " + std::to_string(round.pages) + " pages scanned, " +
             std::to_string(round.sent) + " sent, " + std::to_string(round.dirtied) + " dirtied meanwhile");
    if (res_->finished_before_switch || todo.size() <= opt_.converge_pages) break;
  }
  return ok_result();
}

Result<std::unique_ptr<SimMachine>> SimBackend::restore_new(Method m, const model::HandoverSnapshot& pkg) {
  SimConfig dc = base_;
  dc.trace_path.clear();  // the source's trace is handed over instead
  dc.hv.dirty = DirtyMode::kOff;
  model::HandoverSnapshot p = pkg;
  p.meta["method"] = to_string(m);
  if (m == Method::kAdopt) {
    // Adopt takes the tree the old instance's VMCS points at.
    p.eptp = model::Eptp{pkg.vmcs.get_or_zero(model::vmcs::kEptPointer)};
  }
  if (m == Method::kPrecopy) {
    for (model::Memslot& s : p.memslots) s.hpa = new_ram_.base + (s.hpa - old_ram_->base);
  }
  return SimMachine::restore(p, host_, dc, m == Method::kAdopt);
}

void SimBackend::add_report(const Result<checker::Report>& r, const std::string& suffix) {
  if (!r) {
    add_line(CheckLine{"handover" + suffix, checker::Verdict::kUnknown, "the checker could not run: " + r.error().message, 0, std::nullopt});
    return;
  }
  for (const checker::PropertyResult& p : r->results)
    add_line(CheckLine{std::string(checker::to_string(p.property)) + suffix, p.verdict, p.summary, p.seconds,
                       p.counterexample});
}

void SimBackend::check_contents(const model::HandoverSnapshot& before) {
  // Every page of every old memslot hashes the same as the page the new memslot gives it.
  const auto t0 = std::chrono::steady_clock::now();
  CheckLine l{"contents", checker::Verdict::kProven, "", 0, std::nullopt};
  std::uint64_t pages = 0;
  for (const model::Memslot& s : before.memslots) {
    const std::uint8_t* a = host_->ram_ptr(s.hpa);
    const std::uint8_t* b = host_->ram_ptr(new_ram_.base + (s.hpa - old_ram_->base));
    if (a == nullptr || b == nullptr) {
      l.verdict = checker::Verdict::kUnknown;
      l.summary = "memslot " + std::to_string(s.id) + " is not backed by host RAM on both sides";
      break;
    }
    const RamRange* ra = host_->ram_at(s.hpa);
    const RamRange* rb = host_->ram_at(new_ram_.base + (s.hpa - old_ram_->base));
    const std::vector<unsigned char> res_a = residency(*ra), res_b = residency(*rb);
    const std::uint64_t first_a = (s.hpa - ra->base) >> model::kPageShift;
    const std::uint64_t first_b = (new_ram_.base + (s.hpa - old_ram_->base) - rb->base) >> model::kPageShift;
    for (std::uint64_t off = 0; off < s.size; off += model::kPageSize, ++pages) {
      const std::uint64_t k = off >> model::kPageShift;
      // Two pages the host never backed are both zero: equal without reading them.
      if ((res_a[first_a + k] & 1) == 0 && (res_b[first_b + k] & 1) == 0) continue;
      if (XXH3_64bits(a + off, model::kPageSize) == XXH3_64bits(b + off, model::kPageSize)) continue;
      l.verdict = checker::Verdict::kRefuted;
      checker::Counterexample c;
      c.gpa = s.gpa + off;
      c.confirmed_concretely = true;  // a concrete comparison, nothing symbolic
      c.explanation = "the page at GPA " + hexs((s.gpa + off).value) + " hashes " +
                      hexs(XXH3_64bits(a + off, model::kPageSize)) + " on the old frame and " +
                      hexs(XXH3_64bits(b + off, model::kPageSize)) + " on the new one";
      l.summary = c.explanation;
      l.counterexample = c;
      break;
    }
    if (l.verdict != checker::Verdict::kProven) break;
  }
  if (l.verdict == checker::Verdict::kProven)
    l.summary = std::to_string(pages) + " pages hash equal (XXH3) on the old and the new frames";
  l.seconds = since(t0);
  add_line(std::move(l));
}

void SimBackend::check_relation(const model::HandoverSnapshot& before, const model::HandoverSnapshot& after) {
  // The old tree, moved through the copy map, must translate exactly as the new memslots say:
  // refinement of the relabelled old tree against the new spec tree (Z3).
  const auto t0 = std::chrono::steady_clock::now();
  model::FrameStore moved = before.tables;
  const std::uint64_t old_base = old_ram_->base.value, old_end = old_base + old_ram_->size;
  // Write-protection for dirty tracking is not a permission: leaves of writable slots get W back.
  const bool wp = opt_.dirty == DirtyMode::kWriteProtect;
  auto rl = model::rewrite_leaves(
      before.eptp, moved, before.ept_config,
      [&](model::EptEntry e, unsigned level, Gpa g) -> Result<model::EptEntry> {
        const Hpa h = e.leaf_base(level);
        const Hpa to = h.value >= old_base && h.value < old_end ? new_ram_.base + (h.value - old_base) : h;
        model::EptEntry out{(e.raw() & ~(model::EptEntry::kAddrBitsMax & ~(model::level_span(level) - 1))) | to.value};
        const model::Memslot* slot = model::find_memslot(before.memslots, g);
        if (wp && slot != nullptr && !slot->read_only) out = out.with_bit(model::EptEntry::kBitWrite, true);
        return out;
      });
  if (!rl) return add_result("translations", rl.error(), t0);
  model::FrameStore spec;
  auto ep = spec_tree_of(after, spec);
  if (!ep) return add_result("translations", ep.error(), t0);
  const checker::TreeRef spec_ref{"new-spec", *ep, &spec, after.ept_config};
  const checker::TreeRef old_ref{"old-moved", before.eptp, &moved, before.ept_config};
  add_result("translations", checker::check_refinement(spec_ref, old_ref, after.memslots, opt_.check), t0,
             "every old translation, moved to the new frames, is the new VM's translation (" + std::to_string(*rl) +
                 " leaves)");
}

void SimBackend::verify(Method m, const model::HandoverSnapshot& before, const model::HandoverSnapshot& after) {
  using checker::Property;
  const std::size_t from = res_->checks.size();
  if (opt_.scope == CheckScope::kNone) return;
  if (opt_.scope == CheckScope::kVcpu) {
    // The trees are those a fault-free handover of the same run proved (the caller knows it).
    const auto t0 = std::chrono::steady_clock::now();
    add_result("vcpu", checker::check_vcpu(before, after, checker::Verdict::kProven, opt_.check), t0);
    return;
  }
  switch (m) {
    case Method::kAdopt:
      add_report(checker::check_handover(before, after,
                                         {Property::kEquivalence, Property::kIsolation, Property::kConformance,
                                          Property::kWellFormed, Property::kVcpu},
                                         opt_.check));
      return;
    case Method::kLazy:
      add_report(checker::check_handover(before, after,
                                         {Property::kRefinement, Property::kIsolation, Property::kWellFormed,
                                          Property::kVcpu},
                                         opt_.check));
      return;
    case Method::kRebuild: {
      add_report(checker::check_handover(before, after, {Property::kConformance, Property::kIsolation,
                                                         Property::kWellFormed}, opt_.check));
      // Equivalence to the spec: the rebuilt tree translates exactly as the memslots say.
      const auto t0 = std::chrono::steady_clock::now();
      model::FrameStore spec;
      auto ep = spec_tree_of(after, spec);
      if (!ep) add_result("equivalence to spec", ep.error(), t0);
      else
        add_result("equivalence to spec",
                   checker::check_equivalence(checker::TreeRef{"spec", *ep, &spec, after.ept_config},
                                              checker::tree_of(after, "after"), opt_.check),
                   t0);
      break;
    }
    case Method::kPrecopy:
      check_contents(before);
      check_relation(before, after);
      break;
  }
  // The new root is licensed by the tree checks above (conformance and spec equivalence, or
  // contents and the moved translations).
  const auto t0 = std::chrono::steady_clock::now();
  add_result("vcpu", checker::check_vcpu(before, after, overall(res_->checks, from), opt_.check), t0);
}

void SimBackend::check_final_conformance(SimMachine& dest) {
  // The tree the new instance refilled while the guest ran must still conform to its memslots.
  auto s = dest.snapshot();
  if (!s) {
    add_line(CheckLine{"conformance (after run)", checker::Verdict::kUnknown, s.error().message, 0, std::nullopt});
    return;
  }
  auto r = checker::check_spec(*s, {checker::Property::kConformance}, opt_.check);
  add_report(r, " (after run)");
}

Result<model::HandoverSnapshot> SimBackend::prepare(SimMachine& dest, Method m, const model::HandoverSnapshot& before) {
  // The new instance's own EPT work before it resumes: INVEPT of its root, or the rebuild.
  if (m == Method::kRebuild) {
    auto st = dest.populate();
    if (!st) return st.error();
  } else if (m != Method::kAdopt) {
    dest.charge(CostCategory::kExitHandler, static_cast<double>(prof_.invept));
  }
  // The guest TSC continues from its value at the pause (the VMM restores IA32_TSC).
  dest.set_guest_tsc(before.vcpus.at(0).guest_tsc());
  auto a = dest.snapshot();
  if (!a) return a.error();
  a->meta["method"] = to_string(m);
  return a;
}

Result<void> SimBackend::finish(SimMachine& m, const RunLimits& l) {
  const RunEvent e = m.run(l);
  res_->final_event = e;
  return ok_result();
}

// Appends b's output to a.
void append_output(GuestOutput& a, const GuestOutput& b) {
  a.console += b.console;
  a.results.insert(a.results.end(), b.results.begin(), b.results.end());
  a.stages.insert(a.stages.end(), b.stages.begin(), b.stages.end());
  if (b.exit_code) a.exit_code = b.exit_code;
}

Result<RunEvent> SimBackend::run_to_point(const RunLimits& point) {
  if (opt_.method == Method::kPrecopy && opt_.dirty == DirtyMode::kOff)
    return make_error("precopy needs dirty tracking (wp or pml)");
  if (opt_.method == Method::kPrecopy && opt_.dirty == DirtyMode::kPml && !base_.hv.ad)
    return make_error("precopy with PML needs EPT A/D flags");
  if (base_.hv.dirty != DirtyMode::kOff) return make_error("the source starts without dirty logging; precopy turns it on");

  host_ = std::make_shared<HostMemory>();
  // The co-located VM first, so both share the host from the start.
  if (nb_.image) {
    SimConfig nc = base_;
    nc.hv.vm_id = base_.hv.vm_id + 1;
    nc.trace_path.clear();
    nc.guest_name = nb_.guest_name;
    auto n = SimMachine::create(nc, host_);
    if (!n) return n.error();
    nb_vm_ = std::move(*n);
    BATON_TRY_VOID(nb_vm_->load(*nb_.image));
    RunLimits l;
    l.budget = opt_.budget;
    l.sync = 1;
    const RunEvent e = nb_vm_->run(l);
    if (e.reason != StopReason::kSyncPoint) return make_error("the co-located guest did not reach sync point 1: " + e.detail);
    auto s = nb_vm_->snapshot();
    if (!s) return s.error();
    nb_before_ = std::move(*s);
  }

  auto srcr = SimMachine::create(base_, host_);
  if (!srcr) return srcr.error();
  src_ = std::move(*srcr);
  tracer_ = src_.get();
  BATON_TRY_VOID(src_->load(image_));
  progress("running " + base_.guest_name + " to the migration point");
  RunEvent at;
  if (source_) {
    auto e = source_(*src_);
    if (!e) return e.error();
    at = *e;
  } else {
    at = src_->run(point);
  }
  src_->trace_phase(1, 0);  // start
  return at;
}

Result<model::HandoverSnapshot> SimBackend::pause_and_capture() {
  phase("pause", static_cast<double>(prof_.migrate_pause), true, 2);
  auto before = src_->snapshot();
  if (!before) return before.error();
  before->meta["guest"] = base_.guest_name;
  // The new instance is woken first, so that its wake-up overlaps the save (handover_notify
  // is the old instance's share of it).
  phase("state-save", static_cast<double>(prof_.handover_notify + prof_.vcpu_state_save), true, 3);
  before_ = *before;
  return before;
}

Result<void> SimBackend::stop_and_copy() {
  CopyRound last;
  std::vector<Gfn> dirty = src_->dirty_log();  // written since the last round's log was taken
  dirty.insert(dirty.end(), pending_.begin(), pending_.end());
  std::sort(dirty.begin(), dirty.end());
  dirty.erase(std::unique(dirty.begin(), dirty.end()), dirty.end());
  copy_pages(dirty, last);
  phase("stop-and-copy", last.cycles, true, 7);
  res_->rounds.push_back(last);
  return ok_result();
}

Result<model::HandoverSnapshot> SimBackend::hand_over(Method m, const model::HandoverSnapshot& pkg) {
  if (!res_->fell_back) {
    // The package crosses once (a fallback reuses it): vCPU state, VMCS and memslot table;
    // the tables stay where they are.
    const std::uint64_t pkg_bytes = sizeof(model::VcpuState) + pkg.vmcs.values().size() * 12 +
                                    pkg.memslots.size() * sizeof(model::Memslot);
    // The new instance may still be waking up when the package is posted.
    const double still_waking = prof_.handover_wakeup > prof_.vcpu_state_save
                                    ? static_cast<double>(prof_.handover_wakeup - prof_.vcpu_state_save) : 0.0;
    phase("state-transfer",
          still_waking + copy_cycles(pkg_bytes) + static_cast<double>(pkg.memslots.size() * prof_.memslot_register), true, 3);
  }
  const std::string work = res_->fell_back ? "ept-work (fallback rebuild)" : "ept-work";
  auto dest = restore_new(m, pkg);
  if (!dest) {
    if (!res_->fell_back) phase(work, 0, true, 4);
    return dest.error();
  }
  dest_ = std::move(*dest);
  auto a = prepare(*dest_, m, *before_);
  // The new instance's EPT work (INVEPT, the rebuild's installs) is on its own account.
  phase(work, dest_->cycles(), true, 4, true);
  return a;
}

Result<void> SimBackend::resume_source() {
  phase("resume (old instance)", static_cast<double>(prof_.exit_round_trip), true, 5);
  RunLimits rest;
  rest.budget = opt_.budget;
  if (!res_->finished_before_switch) BATON_TRY_VOID(finish(*src_, rest));
  else res_->final_event = RunEvent{StopReason::kExited, "the guest exited during pre-copy", res_->at_stage};
  res_->source = src_->stats();
  const GuestOutput& o = src_->output();
  res_->console = o.console;
  res_->checksum = o.checksum();
  res_->total = clock_;
  BATON_TRY_VOID(src_->close_trace());  // a trace that cannot be written is an error, not silence
  return ok_result();
}

Result<void> SimBackend::finish_on_new(Method m) {
  pre_output_ = src_->output();
  std::unique_ptr<SimMachine> d = std::move(dest_);
  phase("state-load", static_cast<double>(prof_.vcpu_state_load), true, 3);
  phase("resume", static_cast<double>(prof_.exit_round_trip), true, 5);
  // The old instance is torn down; adopt hands its tables over.
  src_->hand_trace_to(*d);
  tracer_ = d.get();
  res_->source = src_->stats();
  const bool handed = m == Method::kAdopt;
  res_->frames_handed_over = handed ? res_->before.tables.size() : 0;
  res_->frames_freed = src_->teardown(handed);
  if (m == Method::kPrecopy) {
    // The old RAM goes back to the host.
    host_->set_owner(old_ram_->first(), old_ram_->size >> model::kPageShift, model::OwnerKind::kFree, 0);
    res_->frames_freed += old_ram_->size >> model::kPageShift;
  }
  d->trace_phase(8, static_cast<std::uint64_t>(res_->downtime));
  const double c0 = d->cycles();
  GuestOutput out = pre_output_;
  RunLimits rest;
  rest.budget = opt_.budget;
  if (!res_->finished_before_switch) {
    progress("running to the end on the new instance");
    RunLimits w;
    w.budget = opt_.budget;
    const std::uint64_t s0 = d->instructions();
    w.until_insn = s0 + opt_.slowdown_window;
    if (opt_.reference && opt_.slowdown_window > 0) {
      const RunEvent e = d->run(w);
      res_->window_cycles = d->cycles() - c0;
      res_->window = d->instructions() - s0;
      if (e.reason == StopReason::kInsnLimit) BATON_TRY_VOID(finish(*d, rest));
      else res_->final_event = e;
      progress("reference run (unmigrated) over the same instructions");
      BATON_TRY_VOID(run_reference(s0));
    } else {
      BATON_TRY_VOID(finish(*d, rest));
    }
  } else {
    res_->final_event = RunEvent{StopReason::kExited, "the guest exited during pre-copy", res_->at_stage};
  }
  if (opt_.verify && opt_.scope == CheckScope::kAll && (m == Method::kLazy || m == Method::kRebuild))
    check_final_conformance(*d);
  res_->refaults = d->stats().ept.violations;
  res_->dest = d->stats();
  append_output(out, d->output());
  res_->console = out.console;
  res_->checksum = out.checksum();
  BATON_TRY_VOID(d->close_trace());  // a trace that cannot be written is an error, not silence
  res_->total = clock_;
  return ok_result();
}

Result<void> SimBackend::epilogue() {
  if (!nb_vm_) return ok_result();
  Neighbour n;
  n.guest = nb_.guest_name;
  if (auto ex = guests::expected_result(nb_.guest_name, nb_.image->params)) n.expected = *ex;
  auto s = nb_vm_->snapshot();
  if (s) {
    auto r = checker::check_equivalence(checker::tree_of(*nb_before_, "before"), checker::tree_of(*s, "after"), opt_.check);
    n.verdict = r ? r->verdict : checker::Verdict::kUnknown;
    n.tree_unchanged = n.verdict == checker::Verdict::kProven;
  }
  RunLimits l;
  l.budget = opt_.budget;
  (void)nb_vm_->run(l);
  n.checksum = nb_vm_->output().checksum();
  // The migration's copies occupy the shared memory bus: an upper bound on what a
  // memory-bound neighbour waits (docs/cost-model.md).
  n.extra_cycles = static_cast<double>(res_->bytes_copied * 2) / nb_.host_bw_bytes_per_cycle;
  res_->neighbour = n;
  return ok_result();
}

}  // namespace

Result<MigrationResult> migrate(const guests::GuestImage& image, const SimConfig& base, const MigrationOptions& opt,
                                const NeighbourOptions& neighbour, const SourcePrep& source) {
  SimBackend b(image, base, opt, neighbour, source);
  std::optional<std::uint64_t> expected;
  if (auto ex = guests::expected_result(base.guest_name, image.params)) expected = *ex;
  return drive_migration(b, opt, expected);
}

}  // namespace baton::sim
