// Snapshot helpers: collecting reachable table pages, and self-consistency checks.
#include "baton/model/snapshot.hpp"

#include <cstring>
#include <unordered_set>

namespace baton::model {

namespace {
// Copies the table at `t` and, when it is read at a level with table entries (2..4), recurses
// into them. A page reached again is not copied again; a page first reached as a level-1 table
// is expanded when a walk later reads it at a higher level (a table pointing back up the tree),
// since its entries then lead to further tables. Entries are tables at levels 2..4 alike, so one
// expansion per frame is enough.
void collect(Hfn t, unsigned level, const PhysicalMemory& mem, const EptConfig& cfg, FrameStore& out,
             std::unordered_set<std::uint64_t>& expanded, std::uint64_t& n) {
  const std::uint8_t* page = mem.frame(t);
  if (page == nullptr) return;  // absent frames stay absent
  if (!out.contains(t)) {
    std::memcpy(out.frame_mut(t), page, kPageSize);
    ++n;
  }
  if (level == 1 || !expanded.insert(t.value).second) return;
  for (unsigned i = 0; i < 512; ++i) {
    std::uint64_t raw = 0;
    std::memcpy(&raw, page + i * 8, 8);
    const EptEntry e{raw};
    if (e.classify(level, cfg) == EntryKind::kTable) collect(e.table_hfn(), level - 1, mem, cfg, out, expanded, n);
  }
}
}  // namespace

std::uint64_t collect_tables(Eptp eptp, const PhysicalMemory& mem, const EptConfig& cfg, FrameStore& out) {
  std::uint64_t n = 0;
  std::unordered_set<std::uint64_t> expanded;
  collect(eptp.root(), 4, mem, cfg, out, expanded, n);
  return n;
}

std::string validate_snapshot(const HandoverSnapshot& s) {
  if (s.ept_config.maxphyaddr < 36 || s.ept_config.maxphyaddr > 52)
    return "MAXPHYADDR " + std::to_string(s.ept_config.maxphyaddr) + " is outside 36..52";
  if (std::string why = validate_memslots(s.memslots); !why.empty()) return why;
  for (const GpaRange& r : s.mmio)
    if (r.size == 0 || ((r.gpa.value | r.size) & kPageMask) != 0) return "an MMIO range is empty or not 4 KiB-aligned";
  return {};
}

}  // namespace baton::model

namespace baton::model {

namespace {
// Packs a segment's attributes into the VMCS access-rights format (SDM Vol. 3C §25.4.1).
std::uint32_t access_rights(const Segment& s) {
  return (s.type & 0xFu) | (std::uint32_t{s.s & 1u} << 4) | (std::uint32_t{s.dpl & 3u} << 5) |
         (std::uint32_t{s.present & 1u} << 7) | (std::uint32_t{s.avl & 1u} << 12) | (std::uint32_t{s.l & 1u} << 13) |
         (std::uint32_t{s.db & 1u} << 14) | (std::uint32_t{s.g & 1u} << 15) | (std::uint32_t{s.unusable & 1u} << 16);
}
}  // namespace

void sync_vmcs_guest_state(const VcpuState& v, Vmcs& vmcs) {
  // Selector, limit, access rights, base encodings per segment (SDM Appendix B).
  struct SegFields { const Segment VcpuState::*seg; std::uint32_t sel, limit, ar, base; };
  static const SegFields kSegs[] = {
      {&VcpuState::es, 0x0800, 0x4800, 0x4814, 0x6806}, {&VcpuState::cs, 0x0802, 0x4802, 0x4816, 0x6808},
      {&VcpuState::ss, 0x0804, 0x4804, 0x4818, 0x680A}, {&VcpuState::ds, 0x0806, 0x4806, 0x481A, 0x680C},
      {&VcpuState::fs, 0x0808, 0x4808, 0x481C, 0x680E}, {&VcpuState::gs, 0x080A, 0x480A, 0x481E, 0x6810},
      {&VcpuState::ldt, 0x080C, 0x480C, 0x4820, 0x6812}, {&VcpuState::tr, 0x080E, 0x480E, 0x4822, 0x6814}};
  for (const SegFields& f : kSegs) {
    const Segment& s = v.*f.seg;
    vmcs.set(f.sel, s.selector);
    vmcs.set(f.limit, s.limit);
    vmcs.set(f.ar, access_rights(s));
    vmcs.set(f.base, s.base);
  }
  vmcs.set(0x4810, v.gdtr.limit);
  vmcs.set(0x4812, v.idtr.limit);
  vmcs.set(0x6816, v.gdtr.base);
  vmcs.set(0x6818, v.idtr.base);
  vmcs.set(vmcs::kGuestCr0, v.cr0);
  vmcs.set(vmcs::kGuestCr3, v.cr3);
  vmcs.set(vmcs::kGuestCr4, v.cr4);
  vmcs.set(vmcs::kGuestDr7, v.dr[7]);
  vmcs.set(vmcs::kGuestRsp, v.gpr[VcpuState::kRsp]);
  vmcs.set(vmcs::kGuestRip, v.rip);
  vmcs.set(vmcs::kGuestRflags, v.rflags);
  vmcs.set(vmcs::kGuestIa32Efer, v.efer);
  auto pat = v.msrs.find(kMsrPat);
  vmcs.set(vmcs::kGuestIa32Pat, pat != v.msrs.end() ? pat->second : 0x0007040600070406ull);
  vmcs.set(vmcs::kVmcsLinkPointer, ~std::uint64_t{0});
  vmcs.set(vmcs::kGuestActivityState, static_cast<std::uint64_t>(v.activity));
  vmcs.set(vmcs::kGuestInterruptibility, v.events.interrupt_shadow);
}

}  // namespace baton::model
