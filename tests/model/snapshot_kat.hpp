// The snapshot of the known-answer file tests/model/data/known-answer.snap, built by hand:
// one vCPU, one memslot, one MMIO page, two table pages (a PML4 and a PDPT holding one 1 GiB
// leaf), two owner ranges. The file's bytes were checked field by field against
// docs/formats.md with scripts/check-format-kat.py (docs/testing.md, "Known-answer files").
#pragma once

#include <cstring>

#include "baton/model/snapshot.hpp"

namespace baton::testing {

// The hand-built snapshot that the known-answer file holds.
inline model::HandoverSnapshot known_answer_snapshot() {
  using namespace baton::model;
  HandoverSnapshot s;
  s.vm_id = 7;
  s.ept_config = EptConfig{39, true, false};
  s.memslots = {Memslot{0, Gpa{0}, 0x40000000, Hpa{0x40000000}, false, false}};
  s.mmio = {GpaRange{Gpa{0xFEE00000}, 0x1000}};
  VcpuState v;
  v.rip = 0x200000;
  v.gpr[VcpuState::kRsp] = 0x1FF000;
  v.cs = Segment{0, 0xFFFFFFFF, 0x08, 0xB, 1, 0, 0, 1, 1, 1, 0, 0};
  v.cr0 = 0x80050033;
  v.efer = 0xD00;
  v.msrs[kMsrPat] = 0x0007040600070406ull;
  v.tsc_offset = 0x10;
  v.host_tsc_at_capture = 0x1234;
  s.vcpus = {v};
  s.vmcs.set(vmcs::kGuestRip, 0x200000);
  s.eptp = Eptp::make(Hfn{0x1000}, true);  // 0x100005e: WB, 4-level walk, A/D on
  s.vmcs.set(vmcs::kEptPointer, s.eptp.raw());
  const std::uint64_t pml4e = 0x1001007;  // table at frame 0x1001, rwx
  const std::uint64_t pdpte = 0x400000B7;  // 1 GiB leaf at 0x40000000, rwx, WB, bit 7
  std::memcpy(s.tables.frame_mut(Hfn{0x1000}), &pml4e, 8);
  std::memcpy(s.tables.frame_mut(Hfn{0x1001}), &pdpte, 8);
  s.owners.assign(Hfn{0x1000}, 2, OwnerKind::kEptTable, 7);
  s.owners.assign(Hfn{0x40000}, 0x40000, OwnerKind::kGuestRam, 7);
  s.meta["source"] = "known-answer";
  return s;
}

}  // namespace baton::testing
