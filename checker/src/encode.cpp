// The Z3 encoding of the EPT walk (SDM Vol. 3C §29.3.2-29.3.3) and of the six properties.
//
// Everything here is written from the SDM, not from model::EptEntry::classify, so that tests
// can compare the two; tests/checker/encode_test.cpp does that on random entries.
#include "encode.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>

namespace baton::checker::detail {

using model::EptEntry;
using model::Hfn;
using model::level_span;

namespace {
// Returns a mask of bits [hi:lo].
constexpr std::uint64_t bits(unsigned hi, unsigned lo) {
  return ((hi >= 63) ? ~std::uint64_t{0} : ((std::uint64_t{1} << (hi + 1)) - 1)) & ~((std::uint64_t{1} << lo) - 1);
}

// The symbolic parts of an entry that every rule below reads.
struct EntryBits {
  z3::expr present, leaf, misconfig;
};

// Decodes the class of a symbolic entry at a level (SDM §29.3.2 tables 29-1..29-6, §29.3.3.1).
EntryBits decode(const z3::expr& e, unsigned level, const model::EptConfig& cfg) {
  z3::context& c = e.ctx();
  const z3::expr r = e.extract(0, 0) == 1;
  const z3::expr w = e.extract(1, 1) == 1;
  const z3::expr x = e.extract(2, 2) == 1;
  const z3::expr ps = e.extract(7, 7) == 1;  // bit 7: page size (PDPTE/PDE), must be 0 in a PML4E
  z3::expr present = e.extract(2, 0) != 0;
  if (cfg.mode_based_exec) present = present || e.extract(10, 10) == 1;
  // Level 1 entries are always leaves; levels 2 and 3 are leaves when bit 7 is set; PML4Es never.
  const z3::expr leaf = level == 1 ? c.bool_val(true) : level == 4 ? c.bool_val(false) : ps;
  // Bits 51:MAXPHYADDR are reserved everywhere; table entries reserve 6:3 (7 too, at level 4,
  // reported separately); large leaves reserve the address bits below their size.
  const std::uint64_t common = cfg.maxphyaddr >= 52 ? 0 : bits(51, cfg.maxphyaddr);
  const std::uint64_t table_rsv = common | bits(6, 3);
  const std::uint64_t leaf_rsv = common | (level == 3 ? bits(29, 12) : level == 2 ? bits(20, 12) : 0);
  z3::expr rsv = level == 1   ? c.bv_val(leaf_rsv, 64)
                 : level == 4 ? c.bv_val(table_rsv, 64)
                              : z3::ite(ps, c.bv_val(leaf_rsv, 64), c.bv_val(table_rsv, 64));
  const z3::expr mt = e.extract(5, 3);
  const z3::expr bad_mt = mt == 2 || mt == 3 || mt == 7;
  z3::expr bad = (w && !r) || ((e & rsv) != 0) || (leaf && bad_mt);
  if (!cfg.execute_only) bad = bad || (!r && x);
  if (level == 4) bad = bad || ps;
  return EntryBits{present, leaf, present && bad};
}
}  // namespace

z3::expr entry_class(const z3::expr& e, unsigned level, const model::EptConfig& cfg) {
  z3::context& c = e.ctx();
  const EntryBits b = decode(e, level, cfg);
  return z3::ite(!b.present, c.bv_val(0, 2),
                 z3::ite(b.misconfig, c.bv_val(3, 2), z3::ite(b.leaf, c.bv_val(2, 2), c.bv_val(1, 2))));
}

void table_children(std::uint64_t raw, unsigned level, const model::EptConfig& cfg, std::vector<std::uint64_t>& out) {
  if (level == 1) return;
  const std::uint64_t present_bits = cfg.mode_based_exec ? 0x407 : 0x7;
  if ((raw & present_bits) == 0) return;
  if (level != 4 && ((raw >> EptEntry::kBitPageSize) & 1) != 0) return;
  out.push_back((raw & EptEntry::kAddrBitsMax) >> model::kPageShift);
}

Encoder::Encoder(z3::context& c, TreeView& view, std::string tag, z3::expr gpa, const model::OwnerMap* owners,
                 std::uint32_t vm, bool decompose)
    : c_(c), view_(view), tag_(std::move(tag)), gpa_(std::move(gpa)), owners_(owners), vm_(vm), decompose_(decompose) {}

z3::expr Encoder::table_frame_ok(Hfn h) {
  if (owners_ == nullptr) return c_.bool_val(true);
  return c_.bool_val(is_table_frame(*owners_, vm_, h));
}

ZOut Encoder::unknown(Hfn h, unsigned level) {
  // An absent frame can hold anything: the rest of the walk is unconstrained, except that the
  // page offset of the GPA carries through and the memory type of a mapping is a valid one.
  char name[96];
  std::snprintf(name, sizeof name, "%s.absent_0x%llx.L%u.", tag_.c_str(), static_cast<unsigned long long>(h.value),
                level);
  const std::string n = name;
  const z3::expr k = c_.bv_const((n + "kind").c_str(), 2);
  const z3::expr f = c_.bv_const((n + "frame").c_str(), 64);
  const z3::expr m = c_.bv_const((n + "mt").c_str(), 3);
  const unsigned width = view_.ref().cfg.maxphyaddr;
  ZOut o(c_);
  o.kind = z3::ite(k == 3, c_.bv_val(kZNone, 2), k);
  o.hpa = (f & c_.bv_val(bits(width - 1, 12), 64)) | (gpa_ & c_.bv_val(model::kPageMask, 64));
  o.perms = c_.bv_const((n + "perms").c_str(), 3);
  o.mt = z3::ite(m == 2 || m == 3 || m == 7, c_.bv_val(6, 3), m);
  o.ipat = c_.bv_const((n + "ipat").c_str(), 1);
  o.tables_ok =
      owners_ == nullptr ? c_.bool_val(true) : (table_frame_ok(h) && c_.bool_const((n + "tables_ok").c_str()));
  o.tperms = c_.bv_const((n + "tperms").c_str(), 3);
  return o;
}

ZOut Encoder::linear(const Outcome& o, const z3::expr& offset) {
  ZOut z(c_);
  const unsigned k = o.kind == OutKind::kMapped ? kZMapped : o.kind == OutKind::kMisconfig ? kZMisconfig : kZNone;
  z.kind = c_.bv_val(k, 2);
  z.hpa = c_.bv_val(o.hpa, 64) + offset;
  z.perms = c_.bv_val(o.perms, 3);
  z.mt = c_.bv_val(o.mt, 3);
  z.ipat = c_.bv_val(o.ipat ? 1 : 0, 1);
  z.tables_ok = c_.bool_val(true);
  z.tperms = c_.bv_val(7, 3);  // linear terms stand only for subtrees whose table entries are all rwx
  return z;
}

z3::expr Encoder::select(const std::uint8_t* page, const z3::expr& idx, unsigned bit, unsigned first, unsigned count) {
  // A decision tree over the 9 index bits: a read of the page at a symbolic index.
  if (count == 1) {
    std::uint64_t v;
    std::memcpy(&v, page + std::size_t{first} * 8, 8);
    return c_.bv_val(v, 64);
  }
  const unsigned half = count / 2;
  z3::expr lo = select(page, idx, bit - 1, first, half);
  const z3::expr hi = select(page, idx, bit - 1, first + half, half);
  if (z3::eq(lo, hi)) return lo;
  return z3::ite(idx.extract(bit - 1, bit - 1) == 1, hi, lo);
}

ZOut Encoder::entry(const z3::expr& e, unsigned level, const std::vector<std::uint64_t>& children) {
  const model::EptConfig& cfg = view_.ref().cfg;
  const EntryBits b = decode(e, level, cfg);
  const std::uint64_t span = level_span(level);
  ZOut leaf(c_);
  leaf.kind = c_.bv_val(kZMapped, 2);
  leaf.hpa = (e & c_.bv_val(EptEntry::kAddrBitsMax & ~(span - 1), 64)) | (gpa_ & c_.bv_val(span - 1, 64));
  leaf.perms = e.extract(2, 0);
  leaf.mt = e.extract(5, 3);
  leaf.ipat = e.extract(6, 6);
  leaf.tables_ok = c_.bool_val(true);
  leaf.tperms = c_.bv_val(7, 3);

  ZOut out(c_);
  if (level == 1) {
    out = leaf;
  } else {
    // The next table: the page at the entry's address. Every table entry of the page points
    // to one of `children`; anything else falls back to an absent (unconstrained) frame.
    const z3::expr ptr = e.extract(51, 12);
    ZOut next = unknown(Hfn{(std::uint64_t{1} << 40) - 1}, level - 1);
    for (auto it = children.rbegin(); it != children.rend(); ++it) {
      const ZOut p = page(Hfn{*it}, level - 1);
      const z3::expr hit = ptr == c_.bv_val(*it, 40);
      next.kind = z3::ite(hit, p.kind, next.kind);
      next.hpa = z3::ite(hit, p.hpa, next.hpa);
      next.perms = z3::ite(hit, p.perms, next.perms);
      next.mt = z3::ite(hit, p.mt, next.mt);
      next.ipat = z3::ite(hit, p.ipat, next.ipat);
      next.tables_ok = z3::ite(hit, p.tables_ok, next.tables_ok);
      next.tperms = z3::ite(hit, p.tperms, next.tperms);
    }
    out.kind = z3::ite(b.leaf, leaf.kind, next.kind);
    out.hpa = z3::ite(b.leaf, leaf.hpa, next.hpa);
    out.perms = z3::ite(b.leaf, leaf.perms, e.extract(2, 0) & next.perms);
    out.mt = z3::ite(b.leaf, leaf.mt, next.mt);
    out.ipat = z3::ite(b.leaf, leaf.ipat, next.ipat);
    out.tables_ok = z3::ite(b.leaf, leaf.tables_ok, next.tables_ok);
    out.tperms = z3::ite(b.leaf, leaf.tperms, e.extract(2, 0) & next.tperms);
  }
  // Not present stops the walk (SDM §29.3.3.2); a misconfiguration is its own outcome.
  out.kind = z3::ite(!b.present, c_.bv_val(kZNone, 2), z3::ite(b.misconfig, c_.bv_val(kZMisconfig, 2), out.kind));
  out.tables_ok = !b.present || b.misconfig || out.tables_ok;
  out.tperms = z3::ite(!b.present || b.misconfig, c_.bv_val(7, 3), out.tperms);
  return out;
}

ZOut Encoder::page(Hfn h, unsigned level) {
  const std::uint64_t key = (h.value << 3) | level;
  if (auto it = pages_.find(key); it != pages_.end()) return it->second;
  const std::uint8_t* p = view_.ref().mem->frame(h);
  ZOut out(c_);
  if (p == nullptr) {
    out = unknown(h, level);
  } else {
    Summary s;
    // Uniform pages become one linear term. For isolation only leaf tables do, because a
    // uniform upper-level page still has table frames below it to check.
    // Only a page whose table entries are all rwx, so that its walks' table permissions are known.
    if (decompose_ && (owners_ == nullptr || level == 1)) s = view_.page_summary(h, level);
    if (s.uniform && s.tables == 7) {
      out = linear(s.out, gpa_ & c_.bv_val(level_span(level) * 512 - 1, 64));
    } else {
      ++faithful_pages_;
      const unsigned lo = model::kPageShift + 9 * (level - 1);
      const z3::expr idx = gpa_.extract(lo + 8, lo);
      const z3::expr e = select(p, idx, 9, 0, 512);
      std::vector<std::uint64_t> children;
      for (unsigned i = 0; i < 512; ++i) {
        std::uint64_t raw;
        std::memcpy(&raw, p + std::size_t{i} * 8, 8);
        table_children(raw, level, view_.ref().cfg, children);
      }
      std::sort(children.begin(), children.end());
      children.erase(std::unique(children.begin(), children.end()), children.end());
      out = entry(e, level, children);
    }
    out.tables_ok = table_frame_ok(h) && out.tables_ok;
  }
  pages_.emplace(key, out);
  return out;
}

ZOut Encoder::apply_ctx(const ZOut& o, std::uint8_t ctx) {
  ZOut r = o;
  r.perms = o.perms & c_.bv_val(ctx, 3);
  r.tperms = o.tperms & c_.bv_val(ctx, 3);
  // A mapping left without any permission faults like a not-present entry (MappingSet agrees).
  r.kind = z3::ite(o.kind == kZMapped && r.perms == 0, c_.bv_val(kZNone, 2), o.kind);
  return r;
}

ZOut Encoder::node(const Node& n, std::uint64_t base) {
  switch (n.kind) {
    case Node::Kind::kPage: return apply_ctx(page(Hfn{n.value}, n.level), n.ctx);
    case Node::Kind::kEntry: {
      std::vector<std::uint64_t> children;
      table_children(n.value, n.level, view_.ref().cfg, children);
      return apply_ctx(entry(c_.bv_val(n.value, 64), n.level, children), n.ctx);
    }
    case Node::Kind::kLinear: return linear(n.lin, gpa_ - c_.bv_val(base, 64));
    case Node::Kind::kNone: break;
  }
  return linear(Outcome{}, c_.bv_val(0, 64));
}

z3::expr in_region(const z3::expr& gpa, std::uint64_t base, std::uint64_t size) {
  z3::context& c = gpa.ctx();
  z3::expr lo = z3::uge(gpa, c.bv_val(base, 64));
  if (base + size < base || base + size == 0) return lo;
  return lo && z3::ult(gpa, c.bv_val(base + size, 64));
}

z3::expr same_outcome(const ZOut& a, const ZOut& b) {
  return a.kind == b.kind &&
         z3::implies(a.kind == kZMapped, a.hpa == b.hpa && a.perms == b.perms && a.mt == b.mt && a.ipat == b.ipat);
}

z3::expr subset_outcome(const ZOut& before, const ZOut& after) {
  return after.kind == kZNone || same_outcome(before, after);
}

z3::expr conformance(const ZOut& o, const z3::expr& gpa, const std::vector<model::Memslot>& slots) {
  z3::context& c = gpa.ctx();
  z3::expr_vector ok(c);
  for (const model::Memslot& s : slots) {
    const unsigned max = s.max_perms().bits();
    ok.push_back(in_region(gpa, s.gpa.value, s.size) &&
                 o.hpa == gpa - c.bv_val(s.gpa.value, 64) + c.bv_val(s.hpa.value, 64) &&
                 (o.perms & c.bv_val(~max & 7u, 3)) == 0);
  }
  return z3::implies(o.kind == kZMapped, ok.empty() ? c.bool_val(false) : z3::mk_or(ok));
}

z3::expr tables_cover(const ZOut& o, const z3::expr& gpa, const std::vector<model::Memslot>& slots) {
  z3::context& c = gpa.ctx();
  z3::expr ok = c.bool_val(true);
  for (const model::Memslot& s : slots) {
    const unsigned need = s.max_perms().bits();
    ok = ok && z3::implies(in_region(gpa, s.gpa.value, s.size), (o.tperms & c.bv_val(need, 3)) == c.bv_val(need, 3));
  }
  return ok;
}

z3::expr isolation(const ZOut& o, const model::OwnerMap& owners, std::uint32_t vm) {
  z3::context& c = o.hpa.ctx();
  const z3::expr frame = z3::lshr(o.hpa, c.bv_val(model::kPageShift, 64));
  z3::expr_vector ram(c);
  for (const model::OwnerRange& r : owners.ranges())
    if (r.kind == model::OwnerKind::kGuestRam && r.vm == vm)
      ram.push_back(z3::uge(frame, c.bv_val(r.first.value, 64)) && z3::ult(frame, c.bv_val(r.end().value, 64)));
  return o.tables_ok && z3::implies(o.kind == kZMapped, ram.empty() ? c.bool_val(false) : z3::mk_or(ram));
}

z3::expr no_alias(const ZOut& o1, const z3::expr& g1, const ZOut& o2, const z3::expr& g2) {
  z3::context& c = g1.ctx();
  const z3::expr sh = c.bv_val(model::kPageShift, 64);
  return !(o1.kind == kZMapped && o2.kind == kZMapped && z3::lshr(o1.hpa, sh) == z3::lshr(o2.hpa, sh) &&
           z3::lshr(g1, sh) != z3::lshr(g2, sh));
}

z3::expr wellformed(const ZOut& o, const z3::expr& gpa, const std::vector<model::GpaRange>& mmio) {
  z3::context& c = gpa.ctx();
  z3::expr_vector ok(c);
  for (const model::GpaRange& r : mmio) ok.push_back(in_region(gpa, r.gpa.value, r.size));
  return z3::implies(o.kind == kZMisconfig, ok.empty() ? c.bool_val(false) : z3::mk_or(ok));
}

z3::expr eptp_valid(const z3::expr& eptp, const model::EptConfig& cfg) {
  z3::context& c = eptp.ctx();
  const z3::expr mt = eptp.extract(2, 0);
  z3::expr ok = (mt == 0 || mt == 6) && eptp.extract(5, 3) == 3 && eptp.extract(11, 8) == 0;
  if (cfg.maxphyaddr < 52) ok = ok && (eptp & c.bv_val(bits(63, cfg.maxphyaddr), 64)) == 0;
  return ok;
}

z3::expr tsc_continuous(const z3::expr& off_before, const z3::expr& off_after, const z3::expr& host_before,
                        const z3::expr& host_after) {
  return off_after - off_before == -(host_after - host_before);
}

}  // namespace baton::checker::detail
