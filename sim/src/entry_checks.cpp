// VM-entry checks on the guest-state area for 64-bit guests (SDM Vol. 3C §27.3.1). One
// check per rule; a failure names the rule. Entry with the "IA-32e mode guest" control set
// and unrestricted guest enabled is assumed (the controls Hypervisor::init_vmcs writes).
#include <cstdio>
#include <string>

#include "baton/model/guest_walk.hpp"
#include "baton/sim/hypervisor.hpp"

namespace baton::sim {

namespace {

constexpr std::uint64_t kCr0Pe = 1u << 0, kCr0Ne = 1u << 5, kCr0Pg = 1u << 31;
constexpr std::uint64_t kCr4Pae = 1u << 5;
constexpr std::uint64_t kEferLme = 1u << 8, kEferLma = 1u << 10;

// Formats one failed rule.
std::string rule(const char* section, const char* text) { return std::string("SDM ") + section + ": " + text; }

// Returns whether a base address is canonical (48-bit linear addresses).
bool canonical(std::uint64_t a) { return model::is_canonical(model::Gva{a}); }

}  // namespace

std::string Hypervisor::check_vm_entry(const model::VcpuState& v) const {
  const std::uint64_t maxpa_mask = ~((std::uint64_t{1} << cfg_.ept.maxphyaddr) - 1);
  // §27.3.1.1 control registers, debug registers and MSRs.
  if ((v.cr0 & kCr0Pg) && !(v.cr0 & kCr0Pe)) return rule("27.3.1.1", "CR0.PG = 1 requires CR0.PE = 1");
  if (!(v.cr0 & kCr0Ne)) return rule("27.3.1.1", "CR0 must have the IA32_VMX_CR0_FIXED0 bit NE set");
  if (!(v.cr0 & kCr0Pg)) return rule("27.3.1.1", "an IA-32e mode guest must have CR0.PG = 1");
  if (!(v.cr4 & kCr4Pae)) return rule("27.3.1.1", "an IA-32e mode guest must have CR4.PAE = 1");
  if ((v.cr3 & maxpa_mask) != 0) return rule("27.3.1.1", "CR3 bits beyond MAXPHYADDR must be 0");
  if ((v.dr[7] >> 32) != 0) return rule("27.3.1.1", "DR7 bits 63:32 must be 0");
  if (!(v.efer & kEferLma)) return rule("27.3.1.1", "IA32_EFER.LMA must equal the IA-32e mode guest control (1)");
  if (!(v.efer & kEferLme)) return rule("27.3.1.1", "IA32_EFER.LME must equal LMA when CR0.PG = 1");
  if ((v.efer & ~std::uint64_t{0xD01}) != 0) return rule("27.3.1.1", "IA32_EFER reserved bits must be 0");
  // §27.3.1.2 segment registers.
  const model::Segment& cs = v.cs;
  if (cs.unusable || !cs.present) return rule("27.3.1.2", "CS must be usable and present");
  if (cs.type != 9 && cs.type != 11 && cs.type != 13 && cs.type != 15)
    return rule("27.3.1.2", "CS type must be 9, 11, 13 or 15 (accessed code)");
  if (!cs.s) return rule("27.3.1.2", "CS must be a code/data segment (S = 1)");
  if (cs.l && cs.db) return rule("27.3.1.2", "CS.L = 1 in an IA-32e mode guest requires CS.D/B = 0");
  if (!v.ss.unusable && v.ss.dpl != (v.ss.selector & 3)) return rule("27.3.1.2", "SS.DPL must equal the RPL of SS");
  if (!v.ss.unusable && v.ss.type != 3 && v.ss.type != 7) return rule("27.3.1.2", "SS type must be 3 or 7");
  if ((cs.type == 9 || cs.type == 11) && cs.dpl != v.ss.dpl)
    return rule("27.3.1.2", "for a non-conforming CS, CS.DPL must equal SS.DPL");
  const model::Segment* data[] = {&v.ds, &v.es, &v.fs, &v.gs};
  for (const model::Segment* s : data)
    if (!s->unusable && (!(s->type & 1) || !s->present)) return rule("27.3.1.2", "usable DS/ES/FS/GS must be accessed and present");
  if (v.tr.unusable || v.tr.type != 11 || v.tr.s || !v.tr.present)
    return rule("27.3.1.2", "TR must be a usable, present, busy 64-bit TSS (type 11, S = 0)");
  if ((v.tr.selector & 4) != 0) return rule("27.3.1.2", "TR selector TI flag must be 0");
  if (!v.ldt.unusable && (v.ldt.type != 2 || v.ldt.s || !v.ldt.present))
    return rule("27.3.1.2", "a usable LDTR must be a present LDT (type 2, S = 0)");
  if (!canonical(v.fs.base) || !canonical(v.gs.base) || !canonical(v.tr.base) || (!v.ldt.unusable && !canonical(v.ldt.base)))
    return rule("27.3.1.2", "FS, GS, TR and LDTR bases must be canonical");
  // §27.3.1.3 descriptor-table registers.
  if (!canonical(v.gdtr.base) || !canonical(v.idtr.base)) return rule("27.3.1.3", "GDTR and IDTR bases must be canonical");
  // §27.3.1.4 RIP and RFLAGS.
  if (cs.l && !canonical(v.rip)) return rule("27.3.1.4", "RIP must be canonical when CS.L = 1");
  if ((v.rflags >> 22) != 0 || (v.rflags & (1u << 15)) || (v.rflags & (1u << 5)) || (v.rflags & (1u << 3)))
    return rule("27.3.1.4", "RFLAGS reserved bits 63:22, 15, 5, 3 must be 0");
  if (!(v.rflags & 2)) return rule("27.3.1.4", "RFLAGS bit 1 must be 1");
  if (v.rflags & (1u << 17)) return rule("27.3.1.4", "RFLAGS.VM must be 0 for an IA-32e mode guest");
  // §27.3.1.5 non-register state.
  if (static_cast<unsigned>(v.activity) > 3) return rule("27.3.1.5", "the activity state must be 0..3");
  if (vmcs_.get_or_zero(model::vmcs::kVmcsLinkPointer) != ~std::uint64_t{0})
    return rule("27.3.1.5", "the VMCS link pointer must be FFFFFFFF_FFFFFFFFH without VMCS shadowing");
  return {};
}

}  // namespace baton::sim
