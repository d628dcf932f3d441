// EptEntry classification and EPTP validation (SDM Vol. 3C §29.3.2, §29.3.3.1, §25.6.11).
#include "baton/model/ept_entry.hpp"

#include <cstdio>

namespace baton::model {

std::string memtype_name(unsigned t) {
  switch (t) {
    case 0: return "UC";
    case 1: return "WC";
    case 4: return "WT";
    case 5: return "WP";
    case 6: return "WB";
    default: return "reserved(" + std::to_string(t) + ")";
  }
}

std::string to_string(Perms p) {
  std::string s = "---";
  if (p.r) s[0] = 'r';
  if (p.w) s[1] = 'w';
  if (p.x) s[2] = 'x';
  return s;
}

const char* to_string(EntryKind k) {
  switch (k) {
    case EntryKind::kNotPresent: return "not-present";
    case EntryKind::kTable: return "table";
    case EntryKind::kLeaf4K: return "4K-leaf";
    case EntryKind::kLeaf2M: return "2M-leaf";
    case EntryKind::kLeaf1G: return "1G-leaf";
    case EntryKind::kMisconfigured: return "misconfigured";
  }
  return "?";
}

const char* to_string(MisconfigReason r) {
  switch (r) {
    case MisconfigReason::kNone: return "none";
    case MisconfigReason::kWriteWithoutRead: return "write permitted without read";
    case MisconfigReason::kExecuteOnlyUnsupported: return "execute-only entry but execute-only is unsupported";
    case MisconfigReason::kReservedBits: return "reserved bits set";
    case MisconfigReason::kInvalidMemType: return "invalid leaf memory type";
    case MisconfigReason::kLargePageAtPml4: return "page-size bit set in a PML4E";
  }
  return "?";
}

namespace {
// Returns a mask of bits [hi:lo].
constexpr std::uint64_t bits(unsigned hi, unsigned lo) {
  return ((hi >= 63) ? ~std::uint64_t{0} : ((std::uint64_t{1} << (hi + 1)) - 1)) & ~((std::uint64_t{1} << lo) - 1);
}
}  // namespace

std::string describe(EptEntry e, unsigned level, const EptConfig& cfg) {
  MisconfigReason r;
  const EntryKind k = e.classify(level, cfg, &r);
  char buf[160];
  switch (k) {
    case EntryKind::kNotPresent:
      std::snprintf(buf, sizeof buf, "not present (raw 0x%016llx)", static_cast<unsigned long long>(e.raw()));
      break;
    case EntryKind::kTable:
      std::snprintf(buf, sizeof buf, "table -> hfn 0x%llx %s%s (raw 0x%016llx)",
                    static_cast<unsigned long long>(e.table_hfn().value), to_string(e.perms()).c_str(),
                    e.accessed() ? " A" : "", static_cast<unsigned long long>(e.raw()));
      break;
    case EntryKind::kMisconfigured:
      std::snprintf(buf, sizeof buf, "MISCONFIGURED: %s (raw 0x%016llx)", to_string(r),
                    static_cast<unsigned long long>(e.raw()));
      break;
    default:
      std::snprintf(buf, sizeof buf, "%s -> hpa 0x%llx %s %s%s%s%s (raw 0x%016llx)", to_string(k),
                    static_cast<unsigned long long>(e.leaf_base(level).value), to_string(e.perms()).c_str(),
                    memtype_name(e.memory_type()).c_str(), e.ignore_pat() ? " ipat" : "",
                    e.accessed() ? " A" : "", e.dirty() ? " D" : "", static_cast<unsigned long long>(e.raw()));
      break;
  }
  return buf;
}

std::string Eptp::validate(const EptConfig& cfg) const {
  if (memory_type() != 0 && memory_type() != 6)
    return "EPTP memory type " + std::to_string(memory_type()) + " is not UC(0) or WB(6)";
  if (walk_length() != 4)
    return "EPTP page-walk length " + std::to_string(walk_length()) + " is not supported (only 4-level EPT)";
  if ((raw_ & bits(11, 8)) != 0) return "EPTP reserved bits 11:8 are set";
  if (cfg.maxphyaddr < 52 && (raw_ & bits(63, cfg.maxphyaddr)) != 0)
    return "EPTP reserved bits above MAXPHYADDR (" + std::to_string(cfg.maxphyaddr) + ") are set";
  return {};
}

}  // namespace baton::model
