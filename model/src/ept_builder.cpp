// EptBuilder: creating tables on demand and writing leaves in SDM format.
#include "baton/model/ept_builder.hpp"

#include <cstdio>

namespace baton::model {

namespace {
// Reads the entry at index `idx` of table `t`.
EptEntry read_entry(const FrameStore& mem, Hfn t, unsigned idx) {
  std::uint64_t raw = 0;
  mem.read_u64(hpa_of(t) + std::uint64_t{idx} * 8, &raw);
  return EptEntry{raw};
}
std::string hex(std::uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

EptBuilder::EptBuilder(FrameStore& mem, FrameAllocator alloc, EptConfig cfg)
    : mem_(mem), alloc_(std::move(alloc)), cfg_(cfg) {
  root_ = alloc_();
  mem_.frame_mut(root_);
  ++tables_;
}

EptBuilder::EptBuilder(FrameStore& mem, FrameAllocator alloc, Hfn root, EptConfig cfg)
    : mem_(mem), alloc_(std::move(alloc)), cfg_(cfg), root_(root) {
  mem_.frame_mut(root_);
}

Result<Hfn> EptBuilder::table_for(Gpa gpa, unsigned level) {
  Hfn t = root_;
  for (unsigned l = 4; l > level; --l) {
    const unsigned idx = level_index(gpa, l);
    const EptEntry e = read_entry(mem_, t, idx);
    const EntryKind k = e.classify(l, cfg_);
    if (k == EntryKind::kTable) {
      t = e.table_hfn();
      continue;
    }
    if (k != EntryKind::kNotPresent)
      return make_error("gpa " + hex(gpa.value) + " is already covered at level " + std::to_string(l) + " by " +
                        describe(e, l, cfg_));
    const Hfn next = alloc_();
    mem_.frame_mut(next);  // zero-filled: all entries not present
    ++tables_;
    mem_.write_u64(hpa_of(t) + std::uint64_t{idx} * 8, EptEntry::table(next, Perms{true, true, true}).raw());
    t = next;
  }
  return t;
}

Result<void> EptBuilder::map_leaf(Gpa gpa, Hpa hpa, unsigned level, Perms perms, unsigned memtype, bool ipat) {
  if (level < 1 || level > 3) return make_error("leaf level must be 1, 2 or 3");
  const std::uint64_t span = level_span(level);
  if ((gpa.value | hpa.value) & (span - 1))
    return make_error("gpa " + hex(gpa.value) + " / hpa " + hex(hpa.value) + " not aligned to the leaf size");
  auto t = table_for(gpa, level);
  if (!t) return t.error();
  const Hpa at = hpa_of(*t) + std::uint64_t{level_index(gpa, level)} * 8;
  std::uint64_t old = 0;
  mem_.read_u64(at, &old);
  if (EptEntry{old}.classify(level, cfg_) == EntryKind::kTable)
    return make_error("gpa " + hex(gpa.value) + " already has a table at level " + std::to_string(level) +
                      "; unmap it before mapping a larger leaf");
  mem_.write_u64(at, EptEntry::leaf(level, hpa, perms, memtype, ipat).raw());
  return ok_result();
}

Result<std::uint64_t> EptBuilder::map_range(Gpa gpa, Hpa hpa, std::uint64_t size, Perms perms, unsigned max_level,
                                            unsigned memtype) {
  if ((gpa.value | hpa.value | size) & kPageMask) return make_error("map_range needs 4 KiB-aligned arguments");
  std::uint64_t leaves = 0;
  std::uint64_t off = 0;
  while (off < size) {
    unsigned level = max_level;
    while (level > 1) {
      const std::uint64_t span = level_span(level);
      if (((gpa.value + off) & (span - 1)) == 0 && ((hpa.value + off) & (span - 1)) == 0 && size - off >= span) break;
      --level;
    }
    BATON_TRY_VOID(map_leaf(gpa + off, hpa + off, level, perms, memtype));
    off += level_span(level);
    ++leaves;
  }
  return leaves;
}

Result<void> EptBuilder::set_entry(Gpa gpa, unsigned level, EptEntry e) {
  if (level < 1 || level > 4) return make_error("entry level must be 1..4");
  auto t = level == 4 ? Result<Hfn>(root_) : table_for(gpa, level);
  if (!t) return t.error();
  mem_.write_u64(hpa_of(*t) + std::uint64_t{level_index(gpa, level)} * 8, e.raw());
  return ok_result();
}

Result<Hpa> EptBuilder::entry_addr(Gpa gpa, unsigned level) const {
  Hfn t = root_;
  for (unsigned l = 4; l > level; --l) {
    const EptEntry e = read_entry(mem_, t, level_index(gpa, l));
    if (e.classify(l, cfg_) != EntryKind::kTable)
      return make_error("no table at level " + std::to_string(l - 1) + " for gpa " + hex(gpa.value));
    t = e.table_hfn();
  }
  return hpa_of(t) + std::uint64_t{level_index(gpa, level)} * 8;
}

bool EptBuilder::unmap(Gpa gpa) {
  Hfn t = root_;
  for (unsigned l = 4; l >= 1; --l) {
    const unsigned idx = level_index(gpa, l);
    const EptEntry e = read_entry(mem_, t, idx);
    const EntryKind k = e.classify(l, cfg_);
    if (k == EntryKind::kTable) {
      t = e.table_hfn();
      continue;
    }
    if (k == EntryKind::kNotPresent) return false;
    mem_.write_u64(hpa_of(t) + std::uint64_t{idx} * 8, 0);
    return true;
  }
  return false;
}

}  // namespace baton::model
