// Sample snapshots: a PC-like layout with an EPT as KVM's TDP MMU would leave it.
#include "baton/model/sample.hpp"

#include <cstring>
#include <random>

#include "baton/model/ept_builder.hpp"

namespace baton::model {

namespace {
inline constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
inline constexpr std::uint64_t kLowRamLimit = 3 * kGiB;        // RAM below the PCI hole
inline constexpr std::uint64_t kHighRamBase = 4 * kGiB;        // RAM above 4 GiB
inline constexpr std::uint64_t kRomGpa = 0xFFF00000;           // 1 MiB ROM below 4 GiB
inline constexpr std::uint64_t kRomSize = std::uint64_t{1} << 20;
inline constexpr std::uint64_t kIoapicGpa = 0xFEC00000;
inline constexpr std::uint64_t kLapicGpa = 0xFEE00000;
inline constexpr std::uint64_t kTablePoolFrames = std::uint64_t{1} << 18;  // 1 GiB of table frames
inline constexpr std::uint64_t kHypervisorHpa = std::uint64_t{512} << 20;  // hypervisor-private
inline constexpr std::uint64_t kOtherVmHpa = 2 * kGiB;                    // another VM's RAM
// KVM marks MMIO in EPT with write+execute and no read: a deliberate misconfiguration.
inline constexpr std::uint64_t kMmioMarker = 0x6;

// Maps one slot's range leaf by leaf, honouring the touched fraction and A/D noise.
Result<void> map_slot(EptBuilder& b, FrameStore& mem, const Memslot& slot, const SampleOptions& opt,
                      std::mt19937_64& rng) {
  const Perms perms = slot.max_perms();
  std::bernoulli_distribution touch(opt.touched);
  std::uniform_int_distribution<int> noise(0, 7);
  const unsigned max_level = opt.leaf_level;
  std::uint64_t off = 0;
  while (off < slot.size) {
    const Gpa gpa = slot.gpa + off;
    const Hpa hpa = slot.hpa + off;
    unsigned level = max_level;
    while (level > 1 && (((gpa.value | hpa.value) & (level_span(level) - 1)) != 0 || slot.size - off < level_span(level)))
      --level;
    const std::uint64_t span = level_span(level);
    if (level == 1 && (gpa.value & (level_span(2) - 1)) == 0 && slot.size - off >= level_span(2) &&
        opt.touched >= 1.0) {
      // Fast path: a whole page table of 512 leaves, written directly.
      BATON_TRY_VOID(b.map_leaf(gpa, hpa, 1, perms));
      auto ea = b.entry_addr(gpa, 1);
      if (!ea) return ea.error();
      std::uint8_t* pt = mem.frame_mut(hfn_of(*ea));
      for (unsigned i = 0; i < 512; ++i) {
        EptEntry e = EptEntry::leaf(1, hpa + std::uint64_t{i} * kPageSize, perms);
        if (opt.ad) {
          const int n = noise(rng);
          e = e.with_bit(EptEntry::kBitAccessed, n >= 2).with_bit(EptEntry::kBitDirty, n >= 6);
        }
        const std::uint64_t raw = e.raw();
        std::memcpy(pt + i * 8, &raw, 8);
      }
      off += level_span(2);
      continue;
    }
    if (touch(rng)) {
      BATON_TRY_VOID(b.map_leaf(gpa, hpa, level, perms));
      if (opt.ad) {
        const int n = noise(rng);
        auto ea = b.entry_addr(gpa, level);
        if (!ea) return ea.error();
        std::uint64_t raw = 0;
        mem.read_u64(*ea, &raw);
        const EptEntry e = EptEntry{raw}.with_bit(EptEntry::kBitAccessed, n >= 2).with_bit(EptEntry::kBitDirty, n >= 6);
        mem.write_u64(*ea, e.raw());
      }
    }
    off += span;
  }
  return ok_result();
}

// A plausible 64-bit ring-3 vCPU state for a sample.
VcpuState sample_vcpu(std::mt19937_64& rng) {
  VcpuState v;
  for (auto& r : v.gpr) r = rng();
  v.rip = 0x400000 + (rng() & 0xFFF0);
  v.gpr[VcpuState::kRsp] = 0x200000 - 0x100;
  v.rflags = 0x3202;  // IF, IOPL=3, reserved bit 1
  const Segment code{0, 0xFFFFFFFF, 0x2B, 0xB, 1, 3, 0, 1, 1, 1, 0, 0};
  const Segment data{0, 0xFFFFFFFF, 0x33, 0x3, 1, 3, 1, 1, 0, 1, 0, 0};
  v.cs = code;
  v.ss = v.ds = v.es = v.fs = v.gs = data;
  v.tr = Segment{0x1000, 0x67, 0x40, 0xB, 1, 0, 0, 0, 0, 0, 0, 0};
  v.ldt = Segment{0, 0, 0, 0x2, 0, 0, 0, 0, 0, 0, 0, 1};
  v.gdtr = DescriptorTable{0x1000, 0x4F};
  v.cr0 = 0x80050033;
  v.cr3 = 0x2000;
  v.cr4 = 0x6A0;
  v.efer = 0xD01;
  v.dr[6] = 0xFFFF0FF0;
  v.dr[7] = 0x400;
  v.msrs[kMsrPat] = 0x0007040600070406ull;
  v.msrs[kMsrEfer] = v.efer;
  v.tsc_offset = rng();
  v.host_tsc_at_capture = rng() >> 8;
  return v;
}
}  // namespace

Result<HandoverSnapshot> make_sample(const SampleOptions& opt) {
  if (opt.mem_bytes < (std::uint64_t{2} << 20) || (opt.mem_bytes & (level_span(2) - 1)) != 0)
    return make_error("sample memory must be a multiple of 2 MiB and at least 2 MiB");
  if (opt.mem_bytes > (std::uint64_t{1} << 40)) return make_error("sample memory above 1 TiB is not supported");
  if (opt.leaf_level < 1 || opt.leaf_level > 3) return make_error("leaf size must be 4k, 2m or 1g");
  if (!(opt.touched >= 0.0 && opt.touched <= 1.0)) return make_error("touched fraction must be within 0..1");

  HandoverSnapshot s;
  s.vm_id = 1;
  std::mt19937_64 rng(opt.seed);
  const std::uint64_t low = opt.mem_bytes < kLowRamLimit ? opt.mem_bytes : kLowRamLimit;
  s.memslots.push_back(Memslot{0, Gpa{0}, low, Hpa{kSampleRamHpa}, false, false});
  if (opt.mem_bytes > low)
    s.memslots.push_back(Memslot{1, Gpa{kHighRamBase}, opt.mem_bytes - low, Hpa{kSampleRamHpa + low}, false, false});
  if (opt.rom) s.memslots.push_back(Memslot{2, Gpa{kRomGpa}, kRomSize, Hpa{kSampleRamHpa + opt.mem_bytes}, true, false});

  // Table frames come from a pool, in a seeded full-period permutation of its frames.
  const std::uint64_t pool = kSampleTableHpa >> kPageShift;
  const std::uint64_t mult = 4 * (rng() % 1024) + 1;  // a = 1 (mod 4): full period mod 2^k
  const std::uint64_t inc = 2 * (rng() % kTablePoolFrames) + 1;
  std::uint64_t next = rng() % kTablePoolFrames;
  auto alloc = [&]() {
    next = (next * mult + inc) & (kTablePoolFrames - 1);
    return Hfn{pool + next};
  };
  EptBuilder b(s.tables, alloc, s.ept_config);
  for (const Memslot& slot : s.memslots) BATON_TRY_VOID(map_slot(b, s.tables, slot, opt, rng));
  if (opt.mmio) {
    for (std::uint64_t g : {kIoapicGpa, kLapicGpa}) {
      BATON_TRY_VOID(b.set_entry(Gpa{g}, 1, EptEntry{kMmioMarker}));
      s.mmio.push_back(GpaRange{Gpa{g}, kPageSize});
    }
  }
  s.eptp = b.eptp(opt.ad);

  for (const Memslot& slot : s.memslots)
    s.owners.assign(hfn_of(slot.hpa), slot.size >> kPageShift, OwnerKind::kGuestRam, s.vm_id);
  s.owners.assign(Hfn{pool}, kTablePoolFrames, OwnerKind::kEptTable, s.vm_id);
  s.owners.assign(hfn_of(Hpa{kHypervisorHpa}), 1, OwnerKind::kVmcs, s.vm_id);
  s.owners.assign(hfn_of(Hpa{kHypervisorHpa}) + 1, (kSampleTableHpa - kHypervisorHpa) / kPageSize - 1,
                  OwnerKind::kHypervisor, 0);
  s.owners.assign(hfn_of(Hpa{kOtherVmHpa}), kGiB / kPageSize, OwnerKind::kOtherVm, 2);

  s.vcpus.push_back(sample_vcpu(rng));
  sync_vmcs_guest_state(s.vcpus[0], s.vmcs);
  s.vmcs.set(vmcs::kEptPointer, s.eptp.raw());
  s.vmcs.set(vmcs::kTscOffset, s.vcpus[0].tsc_offset);
  s.vmcs.set(vmcs::kPinBasedControls, 0x16);
  s.vmcs.set(vmcs::kProcBasedControls, 0x84006172);
  s.vmcs.set(vmcs::kSecondaryControls, 0x000000A2);  // EPT, RDTSCP, unrestricted guest
  s.meta["source"] = "baton snapshot make-sample";
  s.meta["seed"] = std::to_string(opt.seed);
  s.meta["leaf"] = opt.leaf_level == 1 ? "4k" : opt.leaf_level == 2 ? "2m" : "1g";
  s.meta["mem_bytes"] = std::to_string(opt.mem_bytes);
  return s;
}

}  // namespace baton::model
