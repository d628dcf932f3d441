// Decomposition: subtree summaries and the top-down split of a property into regions.
#include "decompose.hpp"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <unordered_set>

#include "baton/model/ept_walk.hpp"

namespace baton::checker::detail {

using model::EntryKind;
using model::EptEntry;
using model::Hfn;
using model::level_span;

namespace {
// Reads entry `i` of a 4 KiB table page.
inline std::uint64_t entry_at(const std::uint8_t* page, unsigned i) {
  std::uint64_t v;
  std::memcpy(&v, page + std::size_t{i} * 8, 8);
  return v;
}
// The bytes a table page at `level` spans (512 entries of that level).
inline std::uint64_t page_span(unsigned level) { return level_span(level) * 512; }
}  // namespace

std::uint64_t ignored_mask(const model::EptConfig& cfg) {
  std::uint64_t m = (std::uint64_t{1} << EptEntry::kBitAccessed) | (std::uint64_t{1} << EptEntry::kBitDirty) |
                    (std::uint64_t{1} << 11) | ~((std::uint64_t{1} << 52) - 1);
  if (!cfg.mode_based_exec) m |= std::uint64_t{1} << EptEntry::kBitUserExec;
  return m;
}

std::uint64_t gpa_limit(const model::EptConfig& cfg) { return std::uint64_t{1} << std::min(cfg.maxphyaddr, 48u); }

Result<void> validate_tree(const TreeRef& t, bool require_valid_eptp) {
  if (t.mem == nullptr) return make_error(t.name + ": no memory holds the tree's pages");
  if (t.cfg.maxphyaddr < 36 || t.cfg.maxphyaddr > 52)
    return make_error(t.name + ": MAXPHYADDR " + std::to_string(t.cfg.maxphyaddr) + " is outside 36..52");
  if (t.eptp.raw() == 0) return make_error(t.name + ": the snapshot has no EPTP (it is 0)");
  if (require_valid_eptp) {
    const std::string why = t.eptp.validate(t.cfg);
    if (!why.empty()) return make_error(t.name + ": " + why + " (the well-formedness property reports it)");
  }
  return ok_result();
}

const char* to_string(OutKind k) {
  switch (k) {
    case OutKind::kNone: return "not mapped";
    case OutKind::kMapped: return "mapped";
    case OutKind::kMisconfig: return "misconfigured";
    case OutKind::kUnknown: return "unknown (absent table frame)";
  }
  return "?";
}

Outcome with_ctx(Outcome o, std::uint8_t ctx) {
  if (o.kind != OutKind::kMapped) return o;
  o.perms = static_cast<std::uint8_t>(o.perms & ctx);
  if (o.perms == 0) return Outcome{};
  return o;
}

Outcome shifted(Outcome o, std::uint64_t delta) {
  if (o.kind == OutKind::kMapped) o.hpa += delta;
  return o;
}

std::string describe(const Outcome& o) {
  if (o.kind != OutKind::kMapped) return to_string(o.kind);
  char buf[96];
  std::snprintf(buf, sizeof buf, "hpa 0x%llx %s %s%s", static_cast<unsigned long long>(o.hpa),
                model::to_string(model::Perms::from_bits(o.perms)).c_str(), model::memtype_name(o.mt).c_str(),
                o.ipat ? " ipat" : "");
  return buf;
}

Outcome concrete_outcome(const TreeRef& t, model::Gpa gpa) {
  const model::WalkResult w = model::walk(t.eptp, gpa, model::Access::kRead, *t.mem, t.cfg);
  switch (w.kind) {
    case model::WalkKind::kMisconfig: return Outcome{OutKind::kMisconfig};
    case model::WalkKind::kAbsentFrame: return Outcome{OutKind::kUnknown};
    case model::WalkKind::kViolation:
      if (w.leaf_level == 0) return Outcome{};
      break;
    case model::WalkKind::kTranslated: break;
  }
  if (w.perms.bits() == 0) return Outcome{};
  return Outcome{OutKind::kMapped, w.hpa.value, static_cast<std::uint8_t>(w.perms.bits()),
                 static_cast<std::uint8_t>(w.memtype), w.ipat};
}

TreeView::TreeView(const TreeRef& t) : ref_(t), limit_(gpa_limit(t.cfg)), ignored_(ignored_mask(t.cfg)) {}

const std::uint64_t* TreeView::page(Hfn h) const { return reinterpret_cast<const std::uint64_t*>(ref_.mem->frame(h)); }

Summary TreeView::entry_summary(std::uint64_t raw, unsigned level) {
  const EptEntry e{raw};
  switch (e.classify(level, ref_.cfg)) {
    case EntryKind::kNotPresent: return Summary{true, Outcome{}};
    case EntryKind::kMisconfigured: return Summary{true, Outcome{OutKind::kMisconfig}};
    case EntryKind::kTable: {
      Summary c = page_summary(e.table_hfn(), level - 1);
      if (c.uniform && c.out.kind == OutKind::kMapped)
        c.out.perms = static_cast<std::uint8_t>(c.out.perms & e.perms().bits());
      c.tables = static_cast<std::uint8_t>(c.tables & e.perms().bits());
      return c;
    }
    default:
      return Summary{true,
                     Outcome{OutKind::kMapped, e.leaf_base(level).value, static_cast<std::uint8_t>(e.perms().bits()),
                             static_cast<std::uint8_t>(e.memory_type()), e.ignore_pat()}};
  }
}

Summary TreeView::page_summary(Hfn h, unsigned level) {
  const std::uint64_t key = (h.value << 3) | level;
  if (auto it = memo_.find(key); it != memo_.end()) return it->second;
  Summary s{false, Outcome{OutKind::kUnknown}, 0};
  const std::uint8_t* p = ref_.mem->frame(h);
  if (p != nullptr) {
    const std::uint64_t e0 = entry_at(p, 0);
    const std::uint64_t span = level_span(level);
    const std::uint64_t present_bits = ref_.cfg.mode_based_exec ? 0x407 : 0x7;
    bool done = false;
    // Fast path 1: a page of 512 leaves whose frames advance by the leaf size (a regular leaf table).
    const EptEntry first{e0};
    const EntryKind k0 = first.classify(level, ref_.cfg);
    if ((k0 == EntryKind::kLeaf4K || k0 == EntryKind::kLeaf2M || k0 == EntryKind::kLeaf1G) &&
        first.addr_bits() + 511 * span <= EptEntry::kAddrBitsMax) {
      bool regular = true;
      for (unsigned i = 1; i < 512 && regular; ++i) regular = ((entry_at(p, i) ^ (e0 + i * span)) & ~ignored_) == 0;
      // Only the address varies, monotonically: if the last entry is as valid as the first, all are.
      if (regular && EptEntry{entry_at(p, 511)}.classify(level, ref_.cfg) == k0) {
        s = Summary{true, entry_summary(e0, level).out};
        done = true;
      }
    }
    // Fast path 2: nothing present.
    if (!done) {
      bool empty = true;
      for (unsigned i = 0; i < 512 && empty; ++i) empty = (entry_at(p, i) & present_bits) == 0;
      if (empty) {
        s = Summary{true, Outcome{}};
        done = true;
      }
    }
    if (!done) {
      // Every entry is summarised (memoised), also past the first irregular one: the AND of
      // the table entries' permissions covers the whole subtree.
      const Summary s0 = entry_summary(e0, level);
      bool uniform = s0.uniform;
      std::uint8_t tables = s0.tables;
      for (unsigned i = 1; i < 512; ++i) {
        const std::uint64_t raw = entry_at(p, i);
        if (!uniform && (raw & present_bits) == 0) continue;  // neither uniform nor a table
        const Summary si = entry_summary(raw, level);
        uniform = uniform && si.uniform && si.out == shifted(s0.out, i * span);
        tables = static_cast<std::uint8_t>(tables & si.tables);
      }
      s = uniform ? s0 : Summary{false, Outcome{OutKind::kUnknown}};
      s.tables = tables;
    }
  }
  memo_.emplace(key, s);
  return s;
}

std::uint8_t slot_perms(const std::vector<model::Memslot>& slots, std::uint64_t base, std::uint64_t size) {
  std::uint8_t p = 0;
  for (const model::Memslot& s : slots)
    if (s.gpa.value < base + size && base < s.end().value) p = static_cast<std::uint8_t>(p | s.max_perms().bits());
  return p;
}

bool is_table_frame(const model::OwnerMap& owners, std::uint32_t vm, Hfn f) {
  const model::OwnerRange r = owners.owner_of(f);
  return r.kind == model::OwnerKind::kEptTable && r.vm == vm;
}

namespace {

// What one tree has for an entry-sized region: its own entry at the region's level, or a
// covering leaf / not-present / misconfigured entry from a level above (never a table).
struct Side {
  std::uint64_t raw = 0;
  unsigned level = 0;
  std::uint8_t ctx = 7;
};

// What one tree has for a page-sized region: a table page, or a covering entry from above.
struct PageSide {
  bool is_page = false;
  Hfn hfn;
  Side cover;
  std::uint8_t ctx = 7;
};

// Converts a side to an obligation node.
Node node_of(const Side& s) { return Node{Node::Kind::kEntry, s.raw, s.level, s.ctx, {}}; }
// Converts a page side to an obligation node for a page-sized region at `level`.
Node node_of(const PageSide& s, unsigned level) {
  if (s.is_page) return Node{Node::Kind::kPage, s.hfn.value, level, s.ctx, {}};
  return node_of(s.cover);
}

// The uniform summary of a side at the region starting at `base`, with the inherited context applied.
Summary side_summary(TreeView& t, const Side& s, std::uint64_t base) {
  Summary sum = t.entry_summary(s.raw, s.level);
  if (!sum.uniform) return sum;
  const std::uint64_t start = base & ~(level_span(s.level) - 1);
  sum.out = with_ctx(shifted(sum.out, base - start), s.ctx);
  return sum;
}

// Appends a linear obligation, merging it into the previous one when both relations continue.
void push_linear(Split& out, std::uint64_t base, std::uint64_t size, Pred pred, const Outcome& a, const Outcome* b) {
  ++out.stats.linear;
  if (!out.obligations.empty()) {
    Obligation& last = out.obligations.back();
    if (last.linear() && last.pred == pred && last.base + last.size == base && shifted(last.a.lin, last.size) == a &&
        (b == nullptr ? last.b.kind == Node::Kind::kNone
                      : (last.b.kind == Node::Kind::kLinear && shifted(last.b.lin, last.size) == *b))) {
      last.size += size;
      return;
    }
  }
  Obligation ob;
  ob.base = base;
  ob.size = size;
  ob.pred = pred;
  ob.a = Node{Node::Kind::kLinear, 0, 0, 7, a};
  if (b != nullptr) ob.b = Node{Node::Kind::kLinear, 0, 0, 7, *b};
  if (out.linear_kept >= out.linear_cap && out.spec != nullptr && linear_holds(ob, *out.spec)) {
    ++out.stats.linear_cpp;
    return;
  }
  ++out.linear_kept;
  out.obligations.push_back(ob);
}

// Returns whether a split may go on; records why not the first time a work bound is passed.
bool within_budget(Split& out, const CheckOptions& opt) {
  if (!out.truncated.empty()) return false;
  if (out.stats.pages > opt.max_split_pages) {
    out.truncated = "the split visited more than " + std::to_string(opt.max_split_pages) +
                    " table pages (tables reached along many walks, shared or cyclic), baton's limit";
  } else if (out.obligations.size() > opt.max_regions || out.pieces.size() / 8 > opt.max_regions) {
    out.truncated = "the split found more than " + std::to_string(opt.max_regions) +
                    " regions to check (tables reached along many walks, shared or cyclic), baton's limit";
  }
  return out.truncated.empty();
}

// The key of a table page (or page pair) with its inherited permissions, for the memo of pages
// whose whole part was discharged.
struct PageKey {
  std::uint64_t a = 0, b = 0;
  std::uint32_t level_ctx = 0;
  friend bool operator==(const PageKey&, const PageKey&) = default;
};
// Hashes a PageKey.
struct PageKeyHash {
  std::size_t operator()(const PageKey& k) const {
    return std::hash<std::uint64_t>{}(k.a * 0x9e3779b97f4a7c15ULL ^ (k.b + 0x7f4a7c15ULL) ^
                                      (std::uint64_t{k.level_ctx} << 52));
  }
};

// Splits a two-tree property top-down.
class PairSplitter {
 public:
  PairSplitter(TreeView& a, TreeView& b, Pred pred, const CheckOptions& opt, Split& out)
      : a_(a),
        b_(b),
        pred_(pred),
        opt_(opt),
        out_(out),
        same_mem_(a.ref().mem == b.ref().mem),
        limit_(std::min(a.limit(), b.limit())),
        ignored_(a.ignored()) {}

  // Splits from the two roots.
  void run() {
    const Hfn ra = a_.ref().eptp.root(), rb = b_.ref().eptp.root();
    if (a_.page(ra) == nullptr || b_.page(rb) == nullptr) {
      faithful(0, limit_, Node{Node::Kind::kPage, ra.value, 4, 7, {}}, Node{Node::Kind::kPage, rb.value, 4, 7, {}});
      return;
    }
    visit_page(4, 0, PageSide{true, ra, {}, 7}, PageSide{true, rb, {}, 7});
  }

 private:
  // Records an irregular region, to be encoded faithfully.
  void faithful(std::uint64_t base, std::uint64_t size, const Node& a, const Node& b) {
    ++out_.stats.faithful;
    out_.obligations.push_back(Obligation{base, size, pred_, a, b, 0, 0});
  }

  // Records a region where both sides are uniform, unless it is trivially true.
  void linear(std::uint64_t base, std::uint64_t size, const Outcome& a, const Outcome& b) {
    if (b.kind == OutKind::kNone && (pred_ == Pred::kSubset || a.kind == OutKind::kNone)) {
      ++out_.stats.trivial;  // nothing mapped on the side that matters
      return;
    }
    push_linear(out_, base, size, pred_, a, &b);
  }

  // Compares one entry-sized region at `level`.
  void visit_entry(unsigned level, std::uint64_t base, const Side& a, const Side& b) {
    const bool a_own = a.level == level, b_own = b.level == level;
    if (a_own && b_own && a.ctx == b.ctx && ((a.raw ^ b.raw) & ~ignored_) == 0) {
      const EptEntry e{a.raw};
      if (e.classify(level, a_.ref().cfg) != EntryKind::kTable || same_mem_) {
        ++out_.stats.identical;
        return;
      }
      // The same child frame, read from two memories: compare the two pages.
      const Hfn c = e.table_hfn();
      if (a_.page(c) != nullptr && b_.page(c) != nullptr) {
        const auto ctx = static_cast<std::uint8_t>(a.ctx & e.perms().bits());
        visit_page(level - 1, base, PageSide{true, c, {}, ctx}, PageSide{true, c, {}, ctx});
        return;
      }
    }
    const Summary sa = side_summary(a_, a, base), sb = side_summary(b_, b, base);
    if (pred_ == Pred::kSubset && sb.uniform && sb.out.kind == OutKind::kNone) {
      ++out_.stats.trivial;
      return;
    }
    if (sa.uniform && sb.uniform) {
      linear(base, level_span(level), sa.out, sb.out);
      return;
    }
    const PageSide pa = page_side(a_, a, level), pb = page_side(b_, b, level);
    const bool ta = pa.is_page, tb = pb.is_page;
    if ((ta || tb) && (!ta || a_.page(pa.hfn) != nullptr) && (!tb || b_.page(pb.hfn) != nullptr)) {
      visit_page(level - 1, base, pa, pb);
      return;
    }
    faithful(base, level_span(level), node_of(a), node_of(b));
  }

  // Returns the page side below a side: its table page if it is a table entry, else itself as a cover.
  static PageSide page_side(TreeView& t, const Side& s, unsigned level) {
    const EptEntry e{s.raw};
    if (s.level == level && e.classify(level, t.ref().cfg) == EntryKind::kTable)
      return PageSide{true, e.table_hfn(), {}, static_cast<std::uint8_t>(s.ctx & e.perms().bits())};
    return PageSide{false, Hfn{}, s, s.ctx};
  }

  // Compares a page-sized region at `level` entry by entry. A page pair whose whole region was
  // discharged (identical or trivial) is discharged again at once wherever it recurs.
  void visit_page(unsigned level, std::uint64_t base, const PageSide& a, const PageSide& b) {
    if (!within_budget(out_, opt_)) return;
    ++out_.stats.pages;
    if (a.is_page && b.is_page && same_mem_ && a.hfn == b.hfn && a.ctx == b.ctx) {
      ++out_.stats.identical;
      return;
    }
    const bool memoable = a.is_page && b.is_page && base + page_span(level) <= limit_;
    const PageKey key{a.hfn.value, b.hfn.value, (level << 16) | (std::uint32_t{a.ctx} << 8) | b.ctx};
    if (memoable && discharged_.contains(key)) {
      ++out_.stats.identical;
      return;
    }
    const std::uint8_t* pa = a.is_page ? a_.ref().mem->frame(a.hfn) : nullptr;
    const std::uint8_t* pb = b.is_page ? b_.ref().mem->frame(b.hfn) : nullptr;
    const std::size_t mark = out_.obligations.size();
    const std::uint64_t faithful_before = out_.stats.faithful, linear_before = out_.stats.linear;
    const std::uint64_t span = level_span(level);
    for (unsigned i = 0; i < 512; ++i) {
      const std::uint64_t g = base + i * span;
      if (g >= limit_) break;
      const Side sa = pa != nullptr ? Side{entry_at(pa, i), level, a.ctx} : a.cover;
      const Side sb = pb != nullptr ? Side{entry_at(pb, i), level, b.ctx} : b.cover;
      visit_entry(level, g, sa, sb);
    }
    if (out_.stats.faithful - faithful_before > opt_.page_collapse) {
      out_.obligations.resize(mark);
      out_.stats.faithful = faithful_before;
      faithful(base, page_span(level), node_of(a, level), node_of(b, level));
    }
    if (memoable && out_.truncated.empty() && out_.stats.faithful == faithful_before &&
        out_.stats.linear == linear_before)
      discharged_.insert(key);
  }

  TreeView& a_;
  TreeView& b_;
  Pred pred_;
  const CheckOptions& opt_;
  Split& out_;
  bool same_mem_;
  std::uint64_t limit_;
  std::uint64_t ignored_;
  std::unordered_set<PageKey, PageKeyHash> discharged_;  // page pairs whose whole region was discharged
};

// Splits a single-tree property top-down.
class SingleSplitter {
 public:
  SingleSplitter(TreeView& t, Pred pred, const Spec& spec, const CheckOptions& opt, Split& out)
      : t_(t), pred_(pred), spec_(spec), opt_(opt), out_(out), limit_(t.limit()) {
    if (pred_ == Pred::kConform) all_slots_ = slot_perms(*spec_.slots, 0, limit_);
  }

  // Splits from the root.
  void run() {
    const Hfn r = t_.ref().eptp.root();
    const Node root{Node::Kind::kPage, r.value, 4, 7, {}};
    if (t_.page(r) == nullptr || (pred_ == Pred::kIsolated && !is_table_frame(*spec_.owners, spec_.vm, r))) {
      faithful(0, limit_, root);
      return;
    }
    visit_page(4, 0, r, 7);
  }

 private:
  // Records an irregular region, to be encoded faithfully.
  void faithful(std::uint64_t base, std::uint64_t size, const Node& a) {
    ++out_.stats.faithful;
    out_.obligations.push_back(Obligation{base, size, pred_, a, Node{}, 0, 0});
  }

  // Returns whether a uniform outcome can matter to the property.
  bool relevant(const Outcome& o) const {
    switch (pred_) {
      case Pred::kConform:
      case Pred::kIsolated: return o.kind == OutKind::kMapped || o.kind == OutKind::kUnknown;
      case Pred::kWellFormed: return o.kind == OutKind::kMisconfig || o.kind == OutKind::kUnknown;
      default: return true;
    }
  }

  // Records a uniform region whose outcome can matter to the property.
  void linear(std::uint64_t base, std::uint64_t size, const Outcome& o) {
    if (!relevant(o)) {
      ++out_.stats.trivial;
      return;
    }
    if (pred_ == Pred::kIsolated && o.kind == OutKind::kMapped) add_piece(base, size, o.hpa);
    push_linear(out_, base, size, pred_, o, nullptr);
  }

  // Records a mapped piece for the aliasing check, merging it with a contiguous predecessor.
  void add_piece(std::uint64_t gpa, std::uint64_t size, std::uint64_t hpa) {
    auto& v = out_.pieces;
    if (!v.empty() && v.back().gpa + v.back().size == gpa && v.back().hpa + v.back().size == hpa) {
      v.back().size += size;
      return;
    }
    v.push_back(Piece{gpa, size, hpa});
  }

  // Returns whether the table entries above (`tables`, ANDed) allow what every memslot in
  // [base, base + size) allows: always true for the properties other than conformance.
  bool tables_cover(std::uint64_t base, std::uint64_t size, std::uint8_t tables) const {
    if (pred_ != Pred::kConform || (all_slots_ & ~tables) == 0) return true;
    return (slot_perms(*spec_.slots, base, size) & ~tables) == 0;
  }

  // Checks one entry-sized region at `level`.
  void visit_entry(unsigned level, std::uint64_t base, std::uint64_t raw, std::uint8_t ctx) {
    const EptEntry e{raw};
    const Side side{raw, level, ctx};
    if (e.classify(level, t_.ref().cfg) == EntryKind::kTable) {
      const Hfn c = e.table_hfn();
      if (t_.page(c) == nullptr || (pred_ == Pred::kIsolated && !is_table_frame(*spec_.owners, spec_.vm, c))) {
        faithful(base, level_span(level), node_of(side));
        return;
      }
      const Summary s = side_summary(t_, side, base);
      const auto below = static_cast<std::uint8_t>(ctx & e.perms().bits());
      // A uniform subtree is one relation only where no table entry in it narrows what the
      // memslots allow (conformance's non-leaf clause then holds throughout).
      if (s.uniform && (pred_ != Pred::kIsolated || level == 2) &&
          tables_cover(base, level_span(level), static_cast<std::uint8_t>(below & s.tables))) {
        linear(base, level_span(level), s.out);
        return;
      }
      visit_page(level - 1, base, c, below);
      return;
    }
    // A walk ends here: the table entries above must allow what the memslots allow (else Z3
    // gets the region faithfully and refutes it).
    if (!tables_cover(base, level_span(level), ctx)) {
      faithful(base, level_span(level), node_of(side));
      return;
    }
    linear(base, level_span(level), side_summary(t_, side, base).out);
  }

  // Checks a table page entry by entry. A page whose whole region was trivial is trivial again
  // at once wherever it recurs.
  void visit_page(unsigned level, std::uint64_t base, Hfn h, std::uint8_t ctx) {
    if (!within_budget(out_, opt_)) return;
    ++out_.stats.pages;
    const bool memoable = base + page_span(level) <= limit_;
    const PageKey key{h.value, 0, (level << 16) | ctx};
    if (memoable && trivial_.contains(key)) {
      ++out_.stats.trivial;
      return;
    }
    const std::uint8_t* p = t_.ref().mem->frame(h);
    const std::size_t mark = out_.obligations.size(), pieces_before = out_.pieces.size();
    const std::uint64_t faithful_before = out_.stats.faithful, linear_before = out_.stats.linear;
    const std::uint64_t span = level_span(level);
    for (unsigned i = 0; i < 512; ++i) {
      const std::uint64_t g = base + i * span;
      if (g >= limit_) break;
      visit_entry(level, g, entry_at(p, i), ctx);
    }
    if (out_.stats.faithful - faithful_before > opt_.page_collapse) {
      out_.obligations.resize(mark);
      out_.stats.faithful = faithful_before;
      faithful(base, page_span(level), Node{Node::Kind::kPage, h.value, level, ctx, {}});
    }
    // Whether a page is trivial for conformance depends on where it lies (which memslots)
    // unless no table entry above or inside it narrows any slot's permissions.
    const bool placeless =
        pred_ != Pred::kConform || (all_slots_ & ~(ctx & t_.page_summary(h, level).tables)) == 0;
    if (memoable && placeless && out_.truncated.empty() && out_.stats.faithful == faithful_before &&
        out_.stats.linear == linear_before && out_.pieces.size() == pieces_before)
      trivial_.insert(key);
  }

  TreeView& t_;
  Pred pred_;
  const Spec& spec_;
  std::uint8_t all_slots_ = 0;  // conformance: what the memslots allow, ORed
  const CheckOptions& opt_;
  Split& out_;
  std::uint64_t limit_;
  std::unordered_set<PageKey, PageKeyHash> trivial_;  // pages whose whole region was trivial
};

}  // namespace

Split split_pair(TreeView& a, TreeView& b, Pred pred, const CheckOptions& opt) {
  static const Spec kNoSpec;
  Split out;
  out.spec = &kNoSpec;
  out.linear_cap = opt.linear_z3_cap;
  if (!opt.decompose) {
    out.stats.faithful = 1;
    out.obligations.push_back(Obligation{0, std::min(a.limit(), b.limit()), pred,
                                         Node{Node::Kind::kPage, a.ref().eptp.root().value, 4, 7, {}},
                                         Node{Node::Kind::kPage, b.ref().eptp.root().value, 4, 7, {}}, 0, 0});
    return out;
  }
  PairSplitter(a, b, pred, opt, out).run();
  return out;
}

Split split_single(TreeView& t, Pred pred, const Spec& spec, const CheckOptions& opt) {
  Split out;
  out.spec = &spec;
  out.linear_cap = opt.linear_z3_cap;
  if (!opt.decompose) {
    out.stats.faithful = 1;
    out.obligations.push_back(
        Obligation{0, t.limit(), pred, Node{Node::Kind::kPage, t.ref().eptp.root().value, 4, 7, {}}, Node{}, 0, 0});
    if (pred == Pred::kIsolated) {
      // The aliasing check still needs the mapped pieces; take them from a decomposed split.
      CheckOptions o = opt;
      o.decompose = true;
      out.pieces = split_single(t, pred, spec, o).pieces;
    }
    return out;
  }
  SingleSplitter(t, pred, spec, opt, out).run();
  return out;
}

std::size_t linear_count(const Split& s) {
  std::size_t n = 0;
  for (const Obligation& ob : s.obligations) n += ob.linear() ? 1 : 0;
  return n;
}

Node node_for_gpa(TreeView& t, std::uint64_t gpa) {
  Hfn table = t.ref().eptp.root();
  std::uint8_t ctx = 7;
  if (t.page(table) == nullptr) return Node{Node::Kind::kPage, table.value, 4, 7, {}};
  for (unsigned level = 4; level >= 1; --level) {
    const std::uint8_t* p = t.ref().mem->frame(table);
    const std::uint64_t raw = entry_at(p, model::level_index(model::Gpa{gpa}, level));
    const EptEntry e{raw};
    if (level > 1 && e.classify(level, t.ref().cfg) == EntryKind::kTable && t.page(e.table_hfn()) != nullptr) {
      ctx = static_cast<std::uint8_t>(ctx & e.perms().bits());
      table = e.table_hfn();
      continue;
    }
    return Node{Node::Kind::kEntry, raw, level, ctx, {}};
  }
  return Node{};
}

std::vector<Obligation> alias_obligations(TreeView& t, std::vector<Piece> pieces, std::size_t max) {
  std::vector<Obligation> out;
  std::sort(pieces.begin(), pieces.end(), [](const Piece& x, const Piece& y) { return x.hpa < y.hpa; });
  std::size_t widest = 0;  // the piece reaching furthest so far
  for (std::size_t i = 1; i < pieces.size() && out.size() < max; ++i) {
    const Piece& p = pieces[widest];
    const Piece& q = pieces[i];
    if (q.hpa < p.hpa + p.size) {
      const std::uint64_t frame = q.hpa & ~model::kPageMask;
      const std::uint64_t g1 = (p.gpa + (frame - p.hpa)) & ~model::kPageMask;
      const std::uint64_t g2 = q.gpa & ~model::kPageMask;
      Obligation ob;
      ob.pred = Pred::kNoAlias;
      ob.base = g1;
      ob.size = model::kPageSize;
      ob.a = node_for_gpa(t, g1);
      ob.base2 = g2;
      ob.size2 = model::kPageSize;
      ob.b = node_for_gpa(t, g2);
      out.push_back(ob);
    }
    if (q.hpa + q.size > p.hpa + p.size) widest = i;
  }
  return out;
}

namespace {
// Returns whether a mapped range [gpa, gpa+size) -> hpa sits in one slot at its offset with allowed perms.
bool conforms(const std::vector<model::Memslot>& slots, std::uint64_t gpa, std::uint64_t size, const Outcome& o) {
  for (const model::Memslot& s : slots) {
    if (gpa >= s.gpa.value && gpa + size <= s.end().value)
      return o.hpa == s.hpa_at(model::Gpa{gpa}).value && model::Perms::from_bits(o.perms).subset_of(s.max_perms());
  }
  return false;
}
}  // namespace

bool linear_holds(const Obligation& ob, const Spec& spec) {
  const Outcome& a = ob.a.lin;
  const Outcome& b = ob.b.lin;
  switch (ob.pred) {
    case Pred::kSame: return a == b && a.kind != OutKind::kUnknown;
    case Pred::kSubset: return b.kind == OutKind::kNone || (a == b && a.kind != OutKind::kUnknown);
    case Pred::kConform:
      return a.kind == OutKind::kNone || a.kind == OutKind::kMisconfig ||
             (a.kind == OutKind::kMapped && conforms(*spec.slots, ob.base, ob.size, a));
    case Pred::kIsolated: {
      if (a.kind != OutKind::kMapped) return a.kind != OutKind::kUnknown;
      const model::OwnerRange r = spec.owners->owner_of(model::hfn_of(model::Hpa{a.hpa}));
      return r.kind == model::OwnerKind::kGuestRam && r.vm == spec.vm &&
             model::hpa_of(r.end()).value >= a.hpa + ob.size;
    }
    case Pred::kWellFormed: {
      if (a.kind != OutKind::kMisconfig) return a.kind != OutKind::kUnknown;
      for (const model::GpaRange& r : *spec.mmio)
        if (ob.base >= r.gpa.value && ob.base + ob.size <= r.end().value) return true;
      return false;
    }
    case Pred::kNoAlias: return false;
  }
  return false;
}

}  // namespace baton::checker::detail
