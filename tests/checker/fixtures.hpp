// Trees and snapshots for the checker tests, built with EptBuilder so that the tests do not
// depend on sample snapshots.
#pragma once

#include <cstring>
#include <random>
#include <vector>

#include "baton/checker/check.hpp"
#include "baton/model/ept_builder.hpp"
#include "baton/model/ept_walk.hpp"
#include "baton/model/snapshot.hpp"

namespace baton::testing {

inline constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;
inline constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
inline constexpr model::Perms kRwx{true, true, true};
inline constexpr model::Perms kRw{true, true, false};
inline constexpr model::Perms kR{true, false, false};

// A tree in its own memory, with the frames its tables were allocated from.
struct Tree {
  model::FrameStore mem;
  model::Eptp eptp;
  model::EptConfig cfg;
  std::uint64_t first_table = 0;  // first table frame number
  std::uint64_t next_table = 0;   // one past the last table frame number

  // A reference to this tree for the checker.
  checker::TreeRef ref(const std::string& name) const { return checker::TreeRef{name, eptp, &mem, cfg}; }
  // Returns a builder that adds to this tree.
  model::EptBuilder builder() {
    return model::EptBuilder(
        mem, [this] { return model::Hfn{next_table++}; }, eptp.root(), cfg);
  }
  // Returns the host address of the entry for `gpa` at `level`.
  model::Hpa entry_addr(std::uint64_t gpa, unsigned level) {
    auto a = builder().entry_addr(model::Gpa{gpa}, level);
    BATON_CHECK(a.ok());
    return *a;
  }
  // Reads a 64-bit word of the tree's memory.
  std::uint64_t read(model::Hpa a) const {
    std::uint64_t v = 0;
    mem.read_u64(a, &v);
    return v;
  }
  // Flips one bit of the word at `a`.
  void flip(model::Hpa a, unsigned bit) { mem.write_u64(a, read(a) ^ (std::uint64_t{1} << bit)); }
};

// Creates an empty tree whose table frames are allocated from `table_hfn` upwards.
inline Tree empty_tree(std::uint64_t table_hfn = (std::uint64_t{1} << 30) >> 12, model::EptConfig cfg = {}) {
  Tree t;
  t.cfg = cfg;
  t.first_table = t.next_table = table_hfn;
  model::EptBuilder b(
      t.mem, [&t] { return model::Hfn{t.next_table++}; }, cfg);
  t.eptp = b.eptp(true);
  return t;
}

// Maps [gpa, gpa + bytes) to [hpa, ...) with leaves up to `level` into an existing tree.
inline void map(Tree& t, std::uint64_t gpa, std::uint64_t hpa, std::uint64_t bytes, unsigned level,
                model::Perms p = kRwx, unsigned memtype = 6) {
  auto r = t.builder().map_range(model::Gpa{gpa}, model::Hpa{hpa}, bytes, p, level, memtype);
  BATON_CHECK(r.ok());
}

// A tree mapping [0, bytes) to [hpa, ...) with leaves of `level`.
inline Tree contiguous_tree(std::uint64_t bytes, unsigned level, std::uint64_t hpa = std::uint64_t{4} << 30,
                            std::uint64_t table_hfn = (std::uint64_t{1} << 30) >> 12) {
  Tree t = empty_tree(table_hfn);
  map(t, 0, hpa, bytes, level);
  return t;
}

// Sets A and D bits pseudo-randomly on every leaf of a contiguous 4K tree (what hardware does).
inline void scatter_ad(Tree& t, std::uint64_t bytes, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  for (std::uint64_t g = 0; g < bytes; g += model::kPageSize) {
    const model::Hpa a = t.entry_addr(g, 1);
    t.mem.write_u64(a, t.read(a) | ((rng() & 3) << model::EptEntry::kBitAccessed));
  }
}

// A snapshot around a tree: one RAM memslot for [0, bytes) at `hpa`, owners for RAM and tables.
inline model::HandoverSnapshot snapshot_of(const Tree& t, std::uint64_t bytes,
                                           std::uint64_t hpa = std::uint64_t{4} << 30) {
  model::HandoverSnapshot s;
  s.vm_id = 1;
  s.ept_config = t.cfg;
  s.memslots.push_back(model::Memslot{0, model::Gpa{0}, bytes, model::Hpa{hpa}, false, false});
  s.eptp = t.eptp;
  s.tables = t.mem;
  s.owners.assign(model::hfn_of(model::Hpa{hpa}), bytes >> 12, model::OwnerKind::kGuestRam, 1);
  s.owners.assign(model::Hfn{t.first_table}, std::max<std::uint64_t>(1, t.next_table - t.first_table) + 4096,
                  model::OwnerKind::kEptTable, 1);
  s.owners.assign(model::Hfn{1}, 16, model::OwnerKind::kHypervisor, 0);
  s.owners.assign(model::hfn_of(model::Hpa{std::uint64_t{2} << 30}), 1024, model::OwnerKind::kOtherVm, 2);
  model::VcpuState v;
  v.rip = 0x401000;
  v.gpr[model::VcpuState::kRax] = 42;
  v.cr0 = 0x80050033;
  v.cr3 = 0x2000;
  v.efer = 0xD01;
  v.msrs[model::kMsrPat] = 0x0007040600070406ull;
  v.tsc_offset = 0xFFFF000000000000ull;
  v.host_tsc_at_capture = 5'000'000;
  s.vcpus.push_back(v);
  model::sync_vmcs_guest_state(v, s.vmcs);
  s.vmcs.set(model::vmcs::kEptPointer, t.eptp.raw());
  s.vmcs.set(model::vmcs::kTscOffset, v.tsc_offset);
  s.vmcs.set(model::vmcs::kHostRip, 0xFFFFFFFF81000000ull);
  return s;
}

}  // namespace baton::testing
