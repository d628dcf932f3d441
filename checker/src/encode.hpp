// The Z3 encoding (private): the SDM EPT walk over a symbolic GPA and concrete table pages,
// and the properties as named functions returning z3::expr. docs/checker.md, "Encoding".
#pragma once

#include <z3++.h>

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "decompose.hpp"

namespace baton::checker::detail {

// Outcome kinds as 2-bit values in formulas.
inline constexpr int kZNone = 0, kZMapped = 1, kZMisconfig = 2;

// A walk outcome as formulas over the symbolic GPA.
struct ZOut {
  z3::expr kind;       // bv2: kZNone, kZMapped, kZMisconfig
  z3::expr hpa;        // bv64
  z3::expr perms;      // bv3, the AND over the levels walked
  z3::expr mt;         // bv3
  z3::expr ipat;       // bv1
  z3::expr tables_ok;  // bool: every table frame read is an EPT table of the VM (isolation only)
  z3::expr tperms;     // bv3, the AND of the R/W/X bits of the table (non-leaf) entries walked
  explicit ZOut(z3::context& c) : kind(c), hpa(c), perms(c), mt(c), ipat(c), tables_ok(c), tperms(c) {}
};

// Builds the outcome formulas of one tree for one symbolic GPA. Page encodings are memoised,
// so a page shared by several paths (or obligations) is one term.
class Encoder {
 public:
  // `owners`/`vm` enable the table-frame conjunct for isolation; `decompose` lets uniform pages
  // become linear terms.
  Encoder(z3::context& c, TreeView& view, std::string tag, z3::expr gpa, const model::OwnerMap* owners,
          std::uint32_t vm, bool decompose);
  // The outcome of a node, with its inherited permissions applied. `base` is the region's first GPA.
  ZOut node(const Node& n, std::uint64_t base);
  // Number of distinct pages encoded faithfully.
  std::size_t faithful_pages() const { return faithful_pages_; }

 private:
  // The outcome of the walk from the table page `h` at `level` down (own permissions only).
  ZOut page(model::Hfn h, unsigned level);
  // The outcome of the walk from entry `e` at `level` down; `children` are the pages it may point to.
  ZOut entry(const z3::expr& e, unsigned level, const std::vector<std::uint64_t>& children);
  // The unconstrained outcome below an absent frame.
  ZOut unknown(model::Hfn h, unsigned level);
  // A uniform outcome as a linear term: hpa = o.hpa + offset.
  ZOut linear(const Outcome& o, const z3::expr& offset);
  // Reads entry `idx` of a page as a decision tree over index bits [bit-1 .. 0] of entries [first, first+count).
  z3::expr select(const std::uint8_t* page, const z3::expr& idx, unsigned bit, unsigned first, unsigned count);
  // Whether frame `h` is an EPT table of the VM (true when isolation is not being checked).
  z3::expr table_frame_ok(model::Hfn h);
  // Applies inherited permissions; a mapping left with none reads as not mapped.
  ZOut apply_ctx(const ZOut& o, std::uint8_t ctx);

  z3::context& c_;
  TreeView& view_;
  std::string tag_;
  z3::expr gpa_;
  const model::OwnerMap* owners_;
  std::uint32_t vm_;
  bool decompose_;
  std::unordered_map<std::uint64_t, ZOut> pages_;
  std::size_t faithful_pages_ = 0;
};

// Returns the frame numbers an entry could point to as a table (present, no page-size bit).
void table_children(std::uint64_t raw, unsigned level, const model::EptConfig& cfg, std::vector<std::uint64_t>& out);

// gpa in [base, base + size).
z3::expr in_region(const z3::expr& gpa, std::uint64_t base, std::uint64_t size);

// Property 1 at one GPA: same kind, and for mappings the same HPA, permissions, type and IPAT.
z3::expr same_outcome(const ZOut& a, const ZOut& b);
// Property 2 at one GPA (its tree part): `after` maps nothing, or the same as `before`.
z3::expr subset_outcome(const ZOut& before, const ZOut& after);
// Property 3 at one GPA: a mapping lies in a memslot at its offset with permissions within the slot's.
z3::expr conformance(const ZOut& o, const z3::expr& gpa, const std::vector<model::Memslot>& slots);
// Property 3, non-leaf part, at one GPA: the table entries walked allow all that its memslot allows.
z3::expr tables_cover(const ZOut& o, const z3::expr& gpa, const std::vector<model::Memslot>& slots);
// Property 4 at one GPA: table frames are the VM's EPT frames and a mapping lands in the VM's RAM.
z3::expr isolation(const ZOut& o, const model::OwnerMap& owners, std::uint32_t vm);
// Property 4 for two GPAs: two distinct guest frames never map one host frame.
z3::expr no_alias(const ZOut& o1, const z3::expr& g1, const ZOut& o2, const z3::expr& g2);
// Property 5 at one GPA: a misconfiguration only inside a declared MMIO range.
z3::expr wellformed(const ZOut& o, const z3::expr& gpa, const std::vector<model::GpaRange>& mmio);
// Property 5, EPTP part: memory type UC or WB, 4-level walk, no reserved bit (SDM §25.6.11).
z3::expr eptp_valid(const z3::expr& eptp, const model::EptConfig& cfg);
// Property 6, TSC part: offset_after - offset_before == -(host_after - host_before) (mod 2^64).
z3::expr tsc_continuous(const z3::expr& off_before, const z3::expr& off_after, const z3::expr& host_before,
                        const z3::expr& host_after);
// Classifies a symbolic entry like EptEntry::classify: 0 not present, 1 table, 2 leaf, 3 misconfigured.
z3::expr entry_class(const z3::expr& e, unsigned level, const model::EptConfig& cfg);

}  // namespace baton::checker::detail
