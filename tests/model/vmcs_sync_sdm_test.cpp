// Known answers for model::sync_vmcs_guest_state, taken from the Intel SDM and not from the
// function itself: the access-rights format of Vol. 3C §25.4.1 (table 25-2) and the field
// encodings of Vol. 3D Appendix B (tables B-1, B-7, B-10, B-12 and B-13). Every expected
// value below is a literal worked out by hand from those tables.
#include <catch2/catch.hpp>

#include <map>

#include "baton/model/snapshot.hpp"
#include "baton/model/vmcs.hpp"

using namespace baton::model;

namespace {

// A 64-bit long-mode vCPU whose segments all differ, so that a field written to another
// segment's encoding shows up as a wrong value.
VcpuState long_mode_vcpu() {
  VcpuState v;
  // CS: 64-bit ring-0 code, execute/read, accessed (type 0xB), S=1, P=1, L=1, D/B=0, G=1.
  v.cs = Segment{0, 0xFFFFFFFF, 0x0010, 0xB, 1, 0, 0, 1, 1, 1, 0, 0};
  // SS: ring-0 data, read/write, accessed (type 3), S=1, P=1, D/B=1, G=1.
  v.ss = Segment{0, 0xFFFFFFFF, 0x0018, 0x3, 1, 0, 1, 1, 0, 1, 0, 0};
  // DS: ring-3 data with AVL set, byte granular, a base and a small limit.
  v.ds = Segment{0x1000, 0xFFFF, 0x002B, 0x3, 1, 3, 1, 1, 0, 0, 1, 0};
  // ES: unusable (a null selector loaded in 64-bit mode); every other attribute zero.
  v.es = Segment{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  // FS and GS: usable data segments with distinct 64-bit bases.
  v.fs = Segment{0x00007F0000001000ull, 0xFFFFF, 0x0033, 0x3, 1, 3, 1, 1, 0, 1, 0, 0};
  v.gs = Segment{0xFFFF888000000000ull, 0xFFFFF, 0x003B, 0x3, 1, 3, 1, 1, 0, 1, 0, 0};
  // TR: a busy 64-bit TSS (type 0xB, S=0), P=1, byte granular.
  v.tr = Segment{0xFFFFFE0000001000ull, 0x67, 0x0040, 0xB, 1, 0, 0, 0, 0, 0, 0, 0};
  // LDTR: an LDT (type 2, S=0), P=1.
  v.ldt = Segment{0xFFFFFE0000002000ull, 0x1F, 0x0048, 0x2, 1, 0, 0, 0, 0, 0, 0, 0};
  v.gdtr = DescriptorTable{0xFFFFFE0000000000ull, 0x7F};
  v.idtr = DescriptorTable{0xFFFFFE0000003000ull, 0xFFF};
  v.cr0 = 0x80050033;
  v.cr3 = 0x1234000;
  v.cr4 = 0x3406E0;
  v.dr[7] = 0x400;
  v.gpr[VcpuState::kRsp] = 0x7FFFFFFFE000ull;
  v.rip = 0x401234;
  v.rflags = 0x246;
  v.efer = 0xD01;
  v.msrs[kMsrPat] = 0x0007010600070106ull;
  v.activity = ActivityState::kHlt;
  v.events.interrupt_shadow = 1;
  return v;
}

// Every guest-state field and its expected value, keyed by the Appendix B encoding.
std::map<std::uint32_t, std::uint64_t> expected_fields() {
  return {
      // Table B-1, 16-bit guest-state fields: selectors.
      {0x0800, 0x0000}, {0x0802, 0x0010}, {0x0804, 0x0018}, {0x0806, 0x002B},
      {0x0808, 0x0033}, {0x080A, 0x003B}, {0x080C, 0x0048}, {0x080E, 0x0040},
      // Table B-7, 64-bit guest-state fields.
      {0x2800, 0xFFFFFFFFFFFFFFFFull},  // VMCS link pointer: all ones when not used
      {0x2804, 0x0007010600070106ull},  // IA32_PAT
      {0x2806, 0xD01},                  // IA32_EFER
      // Table B-10, 32-bit guest-state fields: limits.
      {0x4800, 0}, {0x4802, 0xFFFFFFFF}, {0x4804, 0xFFFFFFFF}, {0x4806, 0xFFFF},
      {0x4808, 0xFFFFF}, {0x480A, 0xFFFFF}, {0x480C, 0x1F}, {0x480E, 0x67},
      {0x4810, 0x7F},   // GDTR limit
      {0x4812, 0xFFF},  // IDTR limit
      // Access rights (table 25-2): type 3:0, S 4, DPL 6:5, P 7, AVL 12, L 13, D/B 14, G 15, unusable 16.
      {0x4814, 0x10000},  // ES: unusable, bit 16 alone
      {0x4816, 0xA09B},   // CS: 0xB | S | P | L | G
      {0x4818, 0xC093},   // SS: 0x3 | S | P | D/B | G
      {0x481A, 0x50F3},   // DS: 0x3 | S | DPL 3 | P | AVL | D/B
      {0x481C, 0xC0F3},   // FS: 0x3 | S | DPL 3 | P | D/B | G
      {0x481E, 0xC0F3},   // GS: the same attributes as FS
      {0x4820, 0x0082},   // LDTR: type 2 | P
      {0x4822, 0x008B},   // TR: type 0xB | P
      {0x4824, 1},        // interruptibility state: blocking by STI
      {0x4826, 1},        // activity state: HLT
      // Table B-13, natural-width guest-state fields.
      {0x6800, 0x80050033}, {0x6802, 0x1234000}, {0x6804, 0x3406E0},
      {0x6806, 0},                                                           // ES base
      {0x6808, 0},                                                           // CS base
      {0x680A, 0},                                                           // SS base
      {0x680C, 0x1000},                                                      // DS base
      {0x680E, 0x00007F0000001000ull}, {0x6810, 0xFFFF888000000000ull},      // FS, GS base
      {0x6812, 0xFFFFFE0000002000ull}, {0x6814, 0xFFFFFE0000001000ull},      // LDTR, TR base
      {0x6816, 0xFFFFFE0000000000ull}, {0x6818, 0xFFFFFE0000003000ull},      // GDTR, IDTR base
      {0x681A, 0x400},                                                       // DR7
      {0x681C, 0x7FFFFFFFE000ull}, {0x681E, 0x401234}, {0x6820, 0x246},      // RSP, RIP, RFLAGS
  };
}

}  // namespace

TEST_CASE("a 64-bit code segment packs to access rights 0xA09B at encoding 0x4816 (SDM table 25-2)", "[vmcs][sdm]") {
  Vmcs v;
  sync_vmcs_guest_state(long_mode_vcpu(), v);
  CHECK(v.get(0x4816) == 0xA09Bu);
  // Bit 13 is L and bit 14 is D/B: a 32-bit code segment (L=0, D=1) is 0xC09B.
  VcpuState compat = long_mode_vcpu();
  compat.cs.l = 0;
  compat.cs.db = 1;
  sync_vmcs_guest_state(compat, v);
  CHECK(v.get(0x4816) == 0xC09Bu);
  // A ring-3 64-bit code segment has DPL 3 in bits 6:5.
  VcpuState user = long_mode_vcpu();
  user.cs.dpl = 3;
  user.cs.selector = 0x33;
  sync_vmcs_guest_state(user, v);
  CHECK(v.get(0x4816) == 0xA0FBu);
  CHECK(v.get(0x0802) == 0x33u);
}

TEST_CASE("an unusable segment sets bit 16 of its access rights and nothing else", "[vmcs][sdm]") {
  Vmcs v;
  sync_vmcs_guest_state(long_mode_vcpu(), v);
  CHECK(v.get(0x4814) == 0x10000u);
  // Unusable keeps the other attributes: an unusable SS of DPL 0 with type 3 and S is 0x10013.
  VcpuState s = long_mode_vcpu();
  s.ss = Segment{0, 0, 0, 0x3, 0, 0, 0, 1, 0, 0, 0, 1};
  sync_vmcs_guest_state(s, v);
  CHECK(v.get(0x4818) == 0x10013u);
  // Each attribute on its own lands on its own bit.
  struct One { std::uint8_t Segment::*field; std::uint8_t value; std::uint32_t bits; };
  const One ones[] = {{&Segment::type, 0xF, 0xF},    {&Segment::s, 1, 1u << 4},    {&Segment::dpl, 3, 3u << 5},
                      {&Segment::present, 1, 1u << 7}, {&Segment::avl, 1, 1u << 12}, {&Segment::l, 1, 1u << 13},
                      {&Segment::db, 1, 1u << 14},     {&Segment::g, 1, 1u << 15},   {&Segment::unusable, 1, 1u << 16}};
  for (const One& o : ones) {
    VcpuState x = long_mode_vcpu();
    x.gs = Segment{};
    x.gs.*o.field = o.value;
    sync_vmcs_guest_state(x, v);
    CAPTURE(o.bits);
    CHECK(v.get(0x481E) == o.bits);
  }
}

TEST_CASE("selector, base, limit and access rights of every segment land at their Appendix B encodings",
          "[vmcs][sdm]") {
  Vmcs v;
  sync_vmcs_guest_state(long_mode_vcpu(), v);
  const auto want = expected_fields();
  for (const auto& [enc, value] : want) {
    const VmcsField* f = find_vmcs_field(enc);
    CAPTURE(enc, f != nullptr ? f->name : "?");
    REQUIRE(f != nullptr);
    CHECK(f->area == VmcsArea::kGuestState);
    CHECK(v.get(enc) == value);
  }
  // Nothing else is written: no host-state, control or read-only field, no stray guest field.
  for (const auto& [enc, value] : v.values()) {
    CAPTURE(enc, value);
    CHECK(want.count(enc) == 1);
  }
  CHECK(v.values().size() == want.size());
}

TEST_CASE("a PAT MSR missing from the vCPU syncs as the power-up default 0x0007040600070406", "[vmcs][sdm]") {
  VcpuState s = long_mode_vcpu();
  s.msrs.erase(kMsrPat);
  Vmcs v;
  sync_vmcs_guest_state(s, v);
  CHECK(v.get(0x2804) == 0x0007040600070406ull);  // SDM Vol. 3A §11.12.4, table 11-12
}
