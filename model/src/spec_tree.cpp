// Spec trees from memslots, and leaf relabelling through a copy map.
#include "baton/model/spec_tree.hpp"

#include <cstring>

#include "baton/model/ept_builder.hpp"

namespace baton::model {

namespace {
// KVM's MMIO marker: W+X without R, a misconfiguration on every EPT (SDM Vol. 3C §29.3.3.1).
constexpr std::uint64_t kMmioMarker = 0x6;

// Rewrites the leaves below one table page; `level` is the level of its entries and `base`
// the first GPA the page covers.
Result<std::uint64_t> rewrite_table(Hfn table, unsigned level, Gpa base, FrameStore& mem, const EptConfig& cfg,
                                    const std::function<Result<EptEntry>(EptEntry, unsigned, Gpa)>& rewrite) {
  std::uint8_t* page = mem.frame_mut(table);
  std::uint64_t leaves = 0;
  for (unsigned i = 0; i < 512; ++i) {
    std::uint64_t raw = 0;
    std::memcpy(&raw, page + i * 8, 8);
    const EptEntry e{raw};
    if (!e.is_present(cfg)) continue;
    const Gpa gpa = base + std::uint64_t{i} * level_span(level);
    if (e.is_leaf_at(level)) {
      auto to = rewrite(e, level, gpa);
      if (!to) return to.error();
      const std::uint64_t moved = to->raw();
      std::memcpy(page + i * 8, &moved, 8);
      ++leaves;
      continue;
    }
    if (level == 1) continue;
    if (mem.frame(e.table_hfn()) == nullptr) continue;  // a dangling table: left for the checker to report
    auto r = rewrite_table(e.table_hfn(), level - 1, gpa, mem, cfg, rewrite);
    if (!r) return r.error();
    leaves += *r;
    page = mem.frame_mut(table);  // the store may have grown
  }
  return leaves;
}
}  // namespace

Result<Eptp> build_spec_tree(const std::vector<Memslot>& slots, const std::vector<GpaRange>& mmio, unsigned max_level,
                             bool ad, const EptConfig& cfg, FrameStore& out, Hfn first_frame) {
  if (max_level < 1 || max_level > 3) return make_error("spec tree: leaf level must be 1, 2 or 3");
  if (std::string why = validate_memslots(slots); !why.empty()) return make_error("spec tree: " + why);
  std::uint64_t next = first_frame.value;
  EptBuilder b(out, [&next] { return Hfn{next++}; }, cfg);
  for (const Memslot& s : slots) {
    auto n = b.map_range(s.gpa, s.hpa, s.size, s.max_perms(), max_level);
    if (!n) return make_error("spec tree: memslot " + std::to_string(s.id) + ": " + n.error().message);
  }
  for (const GpaRange& r : mmio)
    for (std::uint64_t off = 0; off < r.size; off += kPageSize)
      BATON_TRY_VOID(b.set_entry(r.gpa + off, 1, EptEntry{kMmioMarker}));
  return b.eptp(ad);
}

Result<std::uint64_t> rewrite_leaves(Eptp eptp, FrameStore& mem, const EptConfig& cfg,
                                     const std::function<Result<EptEntry>(EptEntry, unsigned, Gpa)>& rewrite) {
  if (mem.frame(eptp.root()) == nullptr) return make_error("relabel: the root table is not in the store");
  return rewrite_table(eptp.root(), 4, Gpa{0}, mem, cfg, rewrite);
}

Result<std::uint64_t> relabel_leaves(Eptp eptp, FrameStore& mem, const EptConfig& cfg,
                                     const std::function<Hpa(Hpa, unsigned)>& move) {
  return rewrite_leaves(eptp, mem, cfg, [&](EptEntry e, unsigned level, Gpa) -> Result<EptEntry> {
    const Hpa to = move(e.leaf_base(level), level);
    if ((to.value & (level_span(level) - 1)) != 0 || (to.value & ~EptEntry::kAddrBitsMax) != 0)
      return make_error("relabel: a level-" + std::to_string(level) + " leaf cannot move to a misaligned frame");
    return EptEntry{(e.raw() & ~(EptEntry::kAddrBitsMax & ~(level_span(level) - 1))) | to.value};
  });
}

}  // namespace baton::model
