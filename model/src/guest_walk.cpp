// The guest page-table walker (SDM Vol. 3A §4.5 4-level paging, §4.6 access rights, §4.7 #PF).
#include "baton/model/guest_walk.hpp"

#include <cstdio>

namespace baton::model {

namespace {

constexpr std::uint64_t bit(unsigned b) { return std::uint64_t{1} << b; }

// CR0.WP (bit 16), CR4.SMEP (bit 20), CR4.SMAP (bit 21), EFER.NXE (bit 11), RFLAGS.AC (bit 18).
constexpr std::uint64_t kCr0Wp = bit(16);
constexpr std::uint64_t kCr4Smep = bit(20);
constexpr std::uint64_t kCr4Smap = bit(21);
constexpr std::uint64_t kEferNxe = bit(11);
constexpr std::uint64_t kRflagsAc = bit(18);

// Returns the mask of physical-address bits below MAXPHYADDR (at most bit 51).
std::uint64_t phys_mask(const GuestPagingConfig& cfg) {
  const unsigned m = cfg.maxphyaddr > 52 ? 52 : cfg.maxphyaddr;
  return (bit(m) - 1) & pte::kAddrBitsMax;
}

// Returns the index of a GVA's entry in the table at a level (bits 47:39, 38:30, 29:21, 20:12).
unsigned gva_index(Gva gva, unsigned level) {
  return static_cast<unsigned>((gva.value >> (kPageShift + 9 * (level - 1))) & 0x1FF);
}

// Returns whether a present entry at a level maps a page rather than referencing a table.
bool is_leaf(std::uint64_t entry, unsigned level) {
  return level == 1 || ((level == 2 || level == 3) && (entry & bit(pte::kBitPageSize)) != 0);
}

// Returns the error-code bits that describe the access itself (W/R, U/S, I/D).
std::uint32_t access_bits(Access access, bool user_mode, const GuestPagingConfig& cfg) {
  std::uint32_t ec = 0;
  if (access == Access::kWrite) ec |= pf::kWrite;
  if (user_mode) ec |= pf::kUser;
  // I/D is reported only when SMEP is on or NXE is on with PAE/4-level paging (SDM §4.7).
  if (access == Access::kFetch && (cfg.smep || cfg.nxe)) ec |= pf::kFetch;
  return ec;
}

// Returns whether the effective rights of a translation permit the access (SDM §4.6.1).
bool permitted(const GuestWalkResult& w, Access access, bool user_mode, const GuestPagingConfig& cfg) {
  if (user_mode) {
    if (!w.user) return false;
    if (access == Access::kWrite) return w.writable;
    if (access == Access::kFetch) return !w.nx;
    return true;
  }
  const bool user_page = w.user;
  switch (access) {
    case Access::kRead: return !(user_page && cfg.smap && !cfg.ac);
    case Access::kWrite:
      if (user_page && cfg.smap && !cfg.ac) return false;
      return !cfg.wp || w.writable;
    case Access::kFetch:
      if (w.nx) return false;
      return !(user_page && cfg.smep);
  }
  return false;
}

// Names the flags set in an entry ("P W U A D PS XD"), or "not present".
std::string entry_flags(std::uint64_t e, unsigned level) {
  if ((e & bit(pte::kBitPresent)) == 0) return "not present";
  std::string f = "P";
  if (e & bit(pte::kBitWritable)) f += " W";
  if (e & bit(pte::kBitUser)) f += " U";
  if (e & bit(pte::kBitAccessed)) f += " A";
  if (is_leaf(e, level) && (e & bit(pte::kBitDirty))) f += " D";
  if (level > 1 && (e & bit(pte::kBitPageSize))) f += " PS";
  if (e & bit(pte::kBitNx)) f += " XD";
  return f;
}

}  // namespace

const char* to_string(GuestWalkKind k) {
  switch (k) {
    case GuestWalkKind::kTranslated: return "translated";
    case GuestWalkKind::kPageFault: return "#PF";
    case GuestWalkKind::kNonCanonical: return "non-canonical (#GP)";
    case GuestWalkKind::kAbsentMemory: return "paging structure outside guest memory";
  }
  return "?";
}

GuestPagingConfig paging_config_of(const VcpuState& s) {
  GuestPagingConfig cfg;
  cfg.wp = (s.cr0 & kCr0Wp) != 0;
  cfg.smep = (s.cr4 & kCr4Smep) != 0;
  cfg.smap = (s.cr4 & kCr4Smap) != 0;
  cfg.nxe = (s.efer & kEferNxe) != 0;
  cfg.ac = (s.rflags & kRflagsAc) != 0;
  return cfg;
}

std::uint64_t guest_reserved_mask(std::uint64_t entry, unsigned level, const GuestPagingConfig& cfg) {
  // Bits 51:MAXPHYADDR are reserved at every level (tables 4-15 .. 4-20).
  std::uint64_t mask = pte::kAddrBitsMax & ~phys_mask(cfg);
  if (!cfg.nxe) mask |= bit(pte::kBitNx);
  const bool ps = (entry & bit(pte::kBitPageSize)) != 0;
  if (level == 4) {
    mask |= bit(pte::kBitPageSize);  // table 4-15: PS must be 0 in a PML4E
  } else if (level == 3 && ps) {
    if (!cfg.page_1g) mask |= bit(pte::kBitPageSize);
    mask |= ((bit(30) - 1) & ~(bit(13) - 1));  // table 4-16: bits 29:13 of a 1 GiB leaf
  } else if (level == 2 && ps) {
    mask |= ((bit(21) - 1) & ~(bit(13) - 1));  // table 4-18: bits 20:13 of a 2 MiB leaf
  }
  return mask;
}

GuestWalkResult guest_walk(std::uint64_t cr3, Gva gva, Access access, bool user_mode, const GuestPhysicalMemory& mem,
                           const GuestPagingConfig& cfg) {
  GuestWalkResult w;
  if (!is_canonical(gva)) {
    w.kind = GuestWalkKind::kNonCanonical;
    return w;
  }
  const std::uint64_t addr_mask = phys_mask(cfg);
  const std::uint32_t ec_access = access_bits(access, user_mode, cfg);
  std::uint64_t table = cr3 & addr_mask;  // CR3 bits 11:0 (PCID or PWT/PCD) do not locate the PML4
  w.user = true;
  w.writable = true;
  w.nx = false;
  for (unsigned level = 4; level >= 1; --level) {
    const Gpa entry_addr{table + std::uint64_t{gva_index(gva, level)} * 8};
    std::uint64_t e = 0;
    w.level = level;
    if (!mem.read_u64(entry_addr, &e)) {
      w.kind = GuestWalkKind::kAbsentMemory;
      w.path[w.path_len++] = GuestWalkStep{level, entry_addr, 0};
      return w;
    }
    w.path[w.path_len++] = GuestWalkStep{level, entry_addr, e};
    if ((e & bit(pte::kBitPresent)) == 0) {
      w.kind = GuestWalkKind::kPageFault;
      w.error_code = ec_access;  // P = 0: not present
      return w;
    }
    if ((e & guest_reserved_mask(e, level, cfg)) != 0) {
      w.kind = GuestWalkKind::kPageFault;
      w.error_code = ec_access | pf::kPresent | pf::kReserved;
      return w;
    }
    w.user = w.user && (e & bit(pte::kBitUser)) != 0;
    w.writable = w.writable && (e & bit(pte::kBitWritable)) != 0;
    w.nx = w.nx || (cfg.nxe && (e & bit(pte::kBitNx)) != 0);
    if (!is_leaf(e, level)) {
      table = e & addr_mask;
      continue;
    }
    const std::uint64_t span = level_span(level);
    w.leaf_level = level;
    w.page_size = span;
    w.gpa = Gpa{(e & addr_mask & ~(span - 1)) | (gva.value & (span - 1))};
    if (!permitted(w, access, user_mode, cfg)) {
      w.kind = GuestWalkKind::kPageFault;
      w.error_code = ec_access | pf::kPresent;
      return w;
    }
    w.kind = GuestWalkKind::kTranslated;
    return w;
  }
  return w;  // unreachable: level 1 is always a leaf or stops earlier
}

std::string pf_error_text(std::uint32_t ec) {
  std::string t = (ec & pf::kReserved) ? "reserved bit" : (ec & pf::kPresent) ? "protection" : "not present";
  t += (ec & pf::kFetch) ? ", fetch" : (ec & pf::kWrite) ? ", write" : ", read";
  t += (ec & pf::kUser) ? ", user" : ", supervisor";
  return t;
}

std::string describe(const GuestWalkResult& w, Gva gva) {
  static const char* const kLevelName[5] = {"", "PTE  ", "PDE  ", "PDPTE", "PML4E"};
  std::string out;
  char buf[256] = {};
  for (unsigned i = 0; i < w.path_len; ++i) {
    const GuestWalkStep& s = w.path[i];
    if (w.kind == GuestWalkKind::kAbsentMemory && i + 1 == w.path_len) {
      std::snprintf(buf, sizeof buf, "  L%u %s [%3u] @gpa 0x%llx: outside guest memory\n", s.level, kLevelName[s.level],
                    gva_index(gva, s.level), static_cast<unsigned long long>(s.entry_addr.value));
    } else {
      std::snprintf(buf, sizeof buf, "  L%u %s [%3u] @gpa 0x%llx: 0x%016llx %s\n", s.level, kLevelName[s.level],
                    gva_index(gva, s.level), static_cast<unsigned long long>(s.entry_addr.value),
                    static_cast<unsigned long long>(s.entry), entry_flags(s.entry, s.level).c_str());
    }
    out += buf;
  }
  switch (w.kind) {
    case GuestWalkKind::kTranslated:
      std::snprintf(buf, sizeof buf, "  => gpa 0x%llx, %s page, %s %s %s\n",
                    static_cast<unsigned long long>(w.gpa.value),
                    w.leaf_level == 1   ? "4K"
                    : w.leaf_level == 2 ? "2M"
                                        : "1G",
                    w.user ? "user" : "supervisor", w.writable ? "rw" : "ro", w.nx ? "nx" : "exec");
      break;
    case GuestWalkKind::kPageFault:
      std::snprintf(buf, sizeof buf, "  => #PF at level %u, error code 0x%x (%s)\n", w.level, w.error_code,
                    pf_error_text(w.error_code).c_str());
      break;
    case GuestWalkKind::kNonCanonical:
      std::snprintf(buf, sizeof buf, "  => 0x%llx is not canonical (#GP)\n",
                    static_cast<unsigned long long>(gva.value));
      break;
    case GuestWalkKind::kAbsentMemory:
      std::snprintf(buf, sizeof buf, "  => walk stopped at level %u: entry outside guest memory\n", w.level);
      break;
  }
  out += buf;
  return out;
}

Result<IdentityReport> check_identity(std::uint64_t cr3, std::span<const GvaRange> ranges,
                                      const GuestPhysicalMemory& mem, const GuestPagingConfig& cfg,
                                      bool require_mapped) {
  IdentityReport rep;
  GuestPagingConfig plain = cfg;
  plain.smap = false;  // a supervisor read must not fault for reasons other than the mapping
  char buf[256];
  for (const GvaRange& r : ranges) {
    if (r.size == 0) continue;
    const std::uint64_t end = r.start.value + r.size;  // may wrap to 0 at the very top
    std::uint64_t gva = r.start.value;
    while (true) {
      const GuestWalkResult w = guest_walk(cr3, Gva{gva}, Access::kRead, false, mem, plain);
      std::uint64_t span = 0;
      switch (w.kind) {
        case GuestWalkKind::kNonCanonical:
          std::snprintf(buf, sizeof buf, "GVA 0x%llx is not canonical", static_cast<unsigned long long>(gva));
          return make_error(buf);
        case GuestWalkKind::kAbsentMemory:
          std::snprintf(buf, sizeof buf, "GVA 0x%llx: level-%u paging entry at GPA 0x%llx is outside guest memory",
                        static_cast<unsigned long long>(gva), w.level,
                        static_cast<unsigned long long>(w.path[w.path_len - 1].entry_addr.value));
          return make_error(buf);
        case GuestWalkKind::kPageFault:
          if ((w.error_code & pf::kReserved) != 0) {
            std::snprintf(buf, sizeof buf, "GVA 0x%llx: reserved bit set in level-%u entry 0x%llx",
                          static_cast<unsigned long long>(gva), w.level,
                          static_cast<unsigned long long>(w.path[w.path_len - 1].entry));
            return make_error(buf);
          }
          if (require_mapped) {
            std::snprintf(buf, sizeof buf, "GVA 0x%llx is not mapped (not-present entry at level %u)",
                          static_cast<unsigned long long>(gva), w.level);
            return make_error(buf);
          }
          span = level_span(w.level);
          break;
        case GuestWalkKind::kTranslated:
          if (w.gpa.value != gva) {
            std::snprintf(buf, sizeof buf, "GVA 0x%llx maps to GPA 0x%llx, not to itself (%s page)",
                          static_cast<unsigned long long>(gva), static_cast<unsigned long long>(w.gpa.value),
                          w.leaf_level == 1   ? "4K"
                          : w.leaf_level == 2 ? "2M"
                                              : "1G");
            return make_error(buf);
          }
          span = w.page_size;
          break;
      }
      const std::uint64_t next = (gva | (span - 1)) + 1;  // 0 when the span reaches the top
      const std::uint64_t stop = (next == 0 || (end != 0 && next > end)) ? end : next;
      if (w.kind == GuestWalkKind::kTranslated) {
        if (w.leaf_level == 1) ++rep.pages_4k;
        if (w.leaf_level == 2) ++rep.pages_2m;
        if (w.leaf_level == 3) ++rep.pages_1g;
        rep.all_user = rep.all_user && w.user;
        rep.all_writable = rep.all_writable && w.writable;
        rep.any_nx = rep.any_nx || w.nx;
      } else {
        rep.unmapped_bytes += stop - gva;
      }
      if (stop == end) break;
      gva = stop;
    }
  }
  return rep;
}

}  // namespace baton::model
