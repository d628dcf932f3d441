// The EPT walker (SDM Vol. 3C §29.3.2 translation, §29.3.3 misconfigurations and violations).
#include "baton/model/ept_walk.hpp"

#include <cstdio>

namespace baton::model {

const char* to_string(Access a) {
  switch (a) {
    case Access::kRead: return "read";
    case Access::kWrite: return "write";
    case Access::kFetch: return "fetch";
  }
  return "?";
}

const char* to_string(WalkKind k) {
  switch (k) {
    case WalkKind::kTranslated: return "translated";
    case WalkKind::kViolation: return "EPT violation";
    case WalkKind::kMisconfig: return "EPT misconfiguration";
    case WalkKind::kAbsentFrame: return "table frame absent";
  }
  return "?";
}

namespace {
// Builds the violation exit qualification from the access and the permissions found.
std::uint64_t violation_qualification(Access access, Perms found, bool user_exec, AccessContext ctx) {
  std::uint64_t q = 0;
  switch (access) {
    case Access::kRead: q |= qual::kRead; break;
    case Access::kWrite: q |= qual::kWrite; break;
    case Access::kFetch: q |= qual::kFetch; break;
  }
  if (found.r) q |= qual::kReadable;
  if (found.w) q |= qual::kWritable;
  if (found.x) q |= qual::kExecutable;
  if (user_exec) q |= qual::kUserExecutable;
  if (ctx.gla_valid) {
    q |= qual::kGlaValid;
    if (ctx.final_translation) q |= qual::kFinalTranslation;
  }
  return q;
}

// Returns whether effective permissions allow an access.
bool allows(Perms p, Access a) {
  switch (a) {
    case Access::kRead: return p.r;
    case Access::kWrite: return p.w;
    case Access::kFetch: return p.x;
  }
  return false;
}
}  // namespace

namespace {
// Per-walk constants and running state.
struct WalkState {
  const PhysicalMemory& mem;
  const EptConfig& cfg;
  Gpa gpa;
  Access access;
  AccessContext ctx;
  std::uint64_t high_reserved;  // bits 51:MAXPHYADDR, reserved at every level
  unsigned acc = 7;             // AND of bits 2:0 over the entries used
  bool user_x = true;
};

// Screens an entry for misconfiguration with a few masks; returns true when it may be one.
template <unsigned Level>
inline bool may_be_misconfigured(std::uint64_t raw, bool leaf, const WalkState& st) {
  std::uint64_t reserved = st.high_reserved;
  if constexpr (Level == 4) {
    reserved |= 0xF8;  // bits 7:3 of a PML4E
  } else {
    if (!leaf) reserved |= 0x78;
    else if constexpr (Level == 3) reserved |= 0x3FFFF000;
    else if constexpr (Level == 2) reserved |= 0x1FF000;
  }
  return (raw & 3) == 2 || (raw & reserved) != 0 || (leaf && !is_valid_leaf_memtype((raw >> 3) & 7)) ||
         (!st.cfg.execute_only && (raw & 1) == 0);
}

// Performs the walk from `Level` down; the levels are unrolled at compile time.
template <unsigned Level>
void walk_level(Hfn table, WalkState& st, WalkResult& w) {
  const std::uint8_t* page = st.mem.frame(table);
  const unsigned idx = level_index(st.gpa, Level);
  const Hpa entry_addr = hpa_of(table) + std::uint64_t{idx} * 8;
  if (page == nullptr) {
    w.kind = WalkKind::kAbsentFrame;
    w.level = Level;
    w.path[w.path_len++] = WalkStep{Level, entry_addr, EptEntry{}};
    return;
  }
  std::uint64_t raw;
  std::memcpy(&raw, page + std::size_t{idx} * 8, 8);
  const EptEntry e{raw};
  w.path[w.path_len++] = WalkStep{Level, entry_addr, e};
  if (!e.is_present(st.cfg)) {
    // A not-present entry has R=W=X=0, so the AND reported in bits 5:3 is zero.
    w.kind = WalkKind::kViolation;
    w.level = Level;
    w.qualification = violation_qualification(st.access, Perms{}, false, st.ctx);
    return;
  }
  const bool leaf = Level == 1 || ((Level == 2 || Level == 3) && e.page_size());
  if (may_be_misconfigured<Level>(raw, leaf, st)) {
    MisconfigReason reason;
    if (e.classify(Level, st.cfg, &reason) == EntryKind::kMisconfigured) {
      w.kind = WalkKind::kMisconfig;
      w.level = Level;
      w.reason = reason;
      return;
    }
  }
  st.acc &= static_cast<unsigned>(raw & 7);
  st.user_x = st.user_x && e.user_exec();
  if constexpr (Level > 1) {
    if (!leaf) return walk_level<Level - 1>(e.table_hfn(), st, w);
  }
  // A leaf: 4 KiB, 2 MiB or 1 GiB.
  const Perms perms = Perms::from_bits(st.acc);
  w.leaf_level = Level;
  w.level = Level;
  w.perms = perms;
  w.memtype = e.memory_type();
  w.ipat = e.ignore_pat();
  w.hpa = e.leaf_base(Level) + (st.gpa.value & (level_span(Level) - 1));
  bool permitted = allows(perms, st.access);
  if (st.access == Access::kFetch && st.cfg.mode_based_exec) permitted = perms.x || st.user_x;
  if (!permitted) {
    w.kind = WalkKind::kViolation;
    w.qualification = violation_qualification(st.access, perms, st.cfg.mode_based_exec && st.user_x, st.ctx);
    return;
  }
  w.kind = WalkKind::kTranslated;
}
}  // namespace

WalkResult walk(Eptp eptp, Gpa gpa, Access access, const PhysicalMemory& mem, const EptConfig& cfg,
                AccessContext ctx) {
  WalkState st{mem, cfg, gpa, access, ctx,
               cfg.maxphyaddr >= 52 ? 0 : (EptEntry::kAddrBitsMax & ~((std::uint64_t{1} << cfg.maxphyaddr) - 1))};
  WalkResult w;
  walk_level<4>(eptp.root(), st, w);
  return w;
}

unsigned set_accessed_dirty(Eptp eptp, const WalkResult& w, Access access, FrameStore& mem) {
  if (!eptp.ad_enabled() || w.kind != WalkKind::kTranslated) return 0;
  unsigned changed = 0;
  for (unsigned i = 0; i < w.path_len; ++i) {
    const WalkStep& s = w.path[i];
    EptEntry e = s.entry.with_bit(EptEntry::kBitAccessed, true);
    if (i + 1 == w.path_len && access == Access::kWrite) e = e.with_bit(EptEntry::kBitDirty, true);
    if (e != s.entry) {
      mem.write_u64(s.entry_addr, e.raw());
      ++changed;
    }
  }
  return changed;
}

std::string describe(const WalkResult& w, Gpa gpa, const EptConfig& cfg) {
  static const char* const kLevelName[5] = {"", "PTE  ", "PDE  ", "PDPTE", "PML4E"};
  std::string out;
  char buf[256] = {};
  for (unsigned i = 0; i < w.path_len; ++i) {
    const WalkStep& s = w.path[i];
    if (w.kind == WalkKind::kAbsentFrame && i + 1 == w.path_len) {
      std::snprintf(buf, sizeof buf, "  L%u %s [%3u] @hpa 0x%llx: table frame not in memory\n", s.level,
                    kLevelName[s.level], level_index(gpa, s.level),
                    static_cast<unsigned long long>(s.entry_addr.value));
    } else {
      std::snprintf(buf, sizeof buf, "  L%u %s [%3u] @hpa 0x%llx: %s\n", s.level, kLevelName[s.level],
                    level_index(gpa, s.level), static_cast<unsigned long long>(s.entry_addr.value),
                    describe(s.entry, s.level, cfg).c_str());
    }
    out += buf;
  }
  switch (w.kind) {
    case WalkKind::kTranslated:
      std::snprintf(buf, sizeof buf, "  => hpa 0x%llx, %s, %s, %s page\n", static_cast<unsigned long long>(w.hpa.value),
                    to_string(w.perms).c_str(), memtype_name(w.memtype).c_str(),
                    w.leaf_level == 1 ? "4K" : w.leaf_level == 2 ? "2M" : "1G");
      break;
    case WalkKind::kViolation:
      std::snprintf(buf, sizeof buf, "  => EPT violation at level %u, qualification 0x%llx (found %s)\n", w.level,
                    static_cast<unsigned long long>(w.qualification), to_string(w.perms).c_str());
      break;
    case WalkKind::kMisconfig:
      std::snprintf(buf, sizeof buf, "  => EPT misconfiguration at level %u: %s\n", w.level, to_string(w.reason));
      break;
    case WalkKind::kAbsentFrame:
      std::snprintf(buf, sizeof buf, "  => walk stopped at level %u: table frame absent from the snapshot\n", w.level);
      break;
  }
  out += buf;
  return out;
}

}  // namespace baton::model
