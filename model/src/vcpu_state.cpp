// VcpuState naming and field-by-field comparison.
#include "baton/model/vcpu_state.hpp"

#include <cstdio>

namespace baton::model {

const char* to_string(ActivityState s) {
  switch (s) {
    case ActivityState::kActive: return "active";
    case ActivityState::kHlt: return "hlt";
    case ActivityState::kShutdown: return "shutdown";
    case ActivityState::kWaitForSipi: return "wait-for-sipi";
  }
  return "?";
}

const char* gpr_name(unsigned index) {
  static const char* const kNames[] = {"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp",
                                       "r8",  "r9",  "r10", "r11", "r12", "r13", "r14", "r15"};
  return index < VcpuState::kGprCount ? kNames[index] : "?";
}

namespace {
// Renders a number as hex.
std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}
// Renders a segment register compactly.
std::string seg(const Segment& s) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "sel=0x%x base=0x%llx limit=0x%x type=%u s=%u dpl=%u p=%u db=%u l=%u g=%u avl=%u unusable=%u",
                s.selector, static_cast<unsigned long long>(s.base), s.limit, s.type, s.s, s.dpl, s.present, s.db,
                s.l, s.g, s.avl, s.unusable);
  return buf;
}
}  // namespace

std::vector<VcpuFieldDiff> diff_vcpu(const VcpuState& a, const VcpuState& b) {
  std::vector<VcpuFieldDiff> out;
  auto num = [&](const std::string& name, std::uint64_t x, std::uint64_t y) {
    if (x != y) out.push_back({name, hex(x), hex(y)});
  };
  for (unsigned i = 0; i < VcpuState::kGprCount; ++i) num(gpr_name(i), a.gpr[i], b.gpr[i]);
  num("rip", a.rip, b.rip);
  num("rflags", a.rflags, b.rflags);
  const std::pair<const char*, const Segment VcpuState::*> segs[] = {
      {"cs", &VcpuState::cs}, {"ds", &VcpuState::ds}, {"es", &VcpuState::es}, {"fs", &VcpuState::fs},
      {"gs", &VcpuState::gs}, {"ss", &VcpuState::ss}, {"tr", &VcpuState::tr}, {"ldt", &VcpuState::ldt}};
  for (const auto& [name, m] : segs)
    if (!(a.*m == b.*m)) out.push_back({name, seg(a.*m), seg(b.*m)});
  num("gdtr.base", a.gdtr.base, b.gdtr.base);
  num("gdtr.limit", a.gdtr.limit, b.gdtr.limit);
  num("idtr.base", a.idtr.base, b.idtr.base);
  num("idtr.limit", a.idtr.limit, b.idtr.limit);
  num("cr0", a.cr0, b.cr0);
  num("cr2", a.cr2, b.cr2);
  num("cr3", a.cr3, b.cr3);
  num("cr4", a.cr4, b.cr4);
  num("cr8", a.cr8, b.cr8);
  num("efer", a.efer, b.efer);
  for (unsigned i = 0; i < 8; ++i) num("dr" + std::to_string(i), a.dr[i], b.dr[i]);
  for (const auto& [idx, v] : a.msrs) {
    auto it = b.msrs.find(idx);
    if (it == b.msrs.end()) out.push_back({"msr " + hex(idx), hex(v), "absent"});
    else num("msr " + hex(idx), v, it->second);
  }
  for (const auto& [idx, v] : b.msrs)
    if (a.msrs.count(idx) == 0) out.push_back({"msr " + hex(idx), "absent", hex(v)});
  num("xcr0", a.xcr0, b.xcr0);
  if (a.xsave != b.xsave)
    out.push_back({"xsave", std::to_string(a.xsave.size()) + " bytes", std::to_string(b.xsave.size()) + " bytes (differs)"});
  if (a.lapic != b.lapic)
    out.push_back({"lapic", std::to_string(a.lapic.size()) + " bytes", std::to_string(b.lapic.size()) + " bytes (differs)"});
  if (!(a.events == b.events)) out.push_back({"events", "pending/masked state", "differs"});
  if (a.activity != b.activity) out.push_back({"activity", to_string(a.activity), to_string(b.activity)});
  num("tsc_offset", a.tsc_offset, b.tsc_offset);
  num("host_tsc_at_capture", a.host_tsc_at_capture, b.host_tsc_at_capture);
  return out;
}

}  // namespace baton::model
