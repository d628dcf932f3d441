// Decomposition (private): C++ summaries of subtrees and the top-down split of a check into
// regions that are identical (discharged), uniform (one linear relation each) or irregular
// (encoded faithfully for Z3). See docs/checker.md, "Decomposition".
#pragma once

#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "baton/checker/check.hpp"
#include "baton/model/ept_entry.hpp"
#include "baton/model/memslot.hpp"

namespace baton::checker::detail {

// Bits that no walk outcome depends on at any level: A (8), D (9), 11, 52-63, and the
// user-execute bit 10 without mode-based execute control. docs/ept-bit-relevance.md confirms it.
std::uint64_t ignored_mask(const model::EptConfig& cfg);
// The first GPA a 4-level walk cannot reach for this configuration: 2^min(MAXPHYADDR, 48).
std::uint64_t gpa_limit(const model::EptConfig& cfg);
// Returns an error when a tree cannot be checked (no EPTP, no memory, MAXPHYADDR out of range);
// with `require_valid_eptp`, an invalid EPTP is an error too.
Result<void> validate_tree(const TreeRef& t, bool require_valid_eptp);

// What a walk does for one GPA, as far as the properties care.
enum class OutKind : std::uint8_t { kNone = 0, kMapped = 1, kMisconfig = 2, kUnknown = 3 };
// Names an outcome kind.
const char* to_string(OutKind k);

// A walk outcome; for kMapped, `hpa` belongs to the first GPA of the region it describes.
struct Outcome {
  OutKind kind = OutKind::kNone;
  std::uint64_t hpa = 0;
  std::uint8_t perms = 0;  // R/W/X bits
  std::uint8_t mt = 0;
  bool ipat = false;
  friend bool operator==(const Outcome&, const Outcome&) = default;
};
// Applies the permissions inherited from the levels above; a mapping left with none reads as kNone.
Outcome with_ctx(Outcome o, std::uint8_t ctx);
// The outcome `delta` bytes further into a uniform region.
Outcome shifted(Outcome o, std::uint64_t delta);
// Renders an outcome in one short phrase.
std::string describe(const Outcome& o);
// The outcome of a concrete walk at one GPA (model::walk), normalised like the Z3 encoding.
Outcome concrete_outcome(const TreeRef& t, model::Gpa gpa);

// A subtree summary: uniform when every GPA of the node's span has the same outcome, with the
// HPA advancing linearly. Permissions are the node's own (not yet ANDed with the levels above).
struct Summary {
  bool uniform = false;
  Outcome out;  // meaningful when uniform; hpa at the node's first GPA
  // The AND of the R/W/X bits of every table entry in the subtree (7 when it holds none, 0 when
  // it reaches an absent frame): where it is 7, no walk below narrows permissions at a non-leaf.
  std::uint8_t tables = 7;
};

// One tree with memoised page summaries (keyed by frame and level: hash-consing of subtrees).
class TreeView {
 public:
  // Wraps a tree; `t.mem` must outlive the view.
  explicit TreeView(const TreeRef& t);
  const TreeRef& ref() const { return ref_; }
  std::uint64_t limit() const { return limit_; }
  std::uint64_t ignored() const { return ignored_; }
  // Returns a table page, or nullptr when the frame is absent from the snapshot.
  const std::uint64_t* page(model::Hfn h) const;
  // Summarises the table page at `level` (its entries are level-`level` entries).
  Summary page_summary(model::Hfn h, unsigned level);
  // Summarises one entry at `level`, descending into its table if it is one.
  Summary entry_summary(std::uint64_t raw, unsigned level);
  // Number of distinct pages summarised.
  std::size_t summarised() const { return memo_.size(); }

 private:
  TreeRef ref_;
  std::uint64_t limit_;
  std::uint64_t ignored_;
  std::unordered_map<std::uint64_t, Summary> memo_;
};

// One side of a region handed to Z3: a table page at `level`, one entry at `level` (which may
// cover more than the region), or a uniform outcome (a linear relation).
struct Node {
  enum class Kind : std::uint8_t { kNone, kPage, kEntry, kLinear };
  Kind kind = Kind::kNone;
  std::uint64_t value = 0;  // kPage: frame number; kEntry: raw entry
  unsigned level = 0;
  std::uint8_t ctx = 7;  // permissions inherited from the levels above
  Outcome lin;           // kLinear: outcome at the region's first GPA, ctx applied
};

// The predicate an obligation asks Z3 to refute.
enum class Pred : std::uint8_t { kSame, kSubset, kConform, kIsolated, kWellFormed, kNoAlias };

// One region [base, base + size) and what each tree has there. kNoAlias uses a second region.
struct Obligation {
  std::uint64_t base = 0;
  std::uint64_t size = 0;
  Pred pred = Pred::kSame;
  Node a, b;
  std::uint64_t base2 = 0, size2 = 0;  // kNoAlias: the second GPA's region (its node is `b`)
  bool linear() const {
    return a.kind == Node::Kind::kLinear && (b.kind == Node::Kind::kLinear || b.kind == Node::Kind::kNone);
  }
};

// The spec a single-tree property checks against.
struct Spec {
  const std::vector<model::Memslot>* slots = nullptr;
  const std::vector<model::GpaRange>* mmio = nullptr;
  const model::OwnerMap* owners = nullptr;
  std::uint32_t vm = 0;
};

// A mapped piece found while splitting (for the aliasing check), with the node that maps it.
struct Piece {
  std::uint64_t gpa = 0, size = 0, hpa = 0;
};

// The split of one property.
struct Split {
  std::vector<Obligation> obligations;
  std::vector<Piece> pieces;  // isolation only
  DecompositionStats stats;
  // Above `linear_cap` kept linear relations, the splitter discharges true ones in C++ at once
  // (CheckOptions::linear_z3_cap) instead of storing millions of them.
  const Spec* spec = nullptr;
  std::size_t linear_cap = ~std::size_t{0};
  std::size_t linear_kept = 0;
  // Set when the split stopped at a work bound (CheckOptions::max_split_pages, max_regions):
  // the obligations cover only part of the space, so they can refute but never prove.
  std::string truncated;
};

// Splits a two-tree property (kSame or kSubset) top-down. With `decompose` false, the whole
// space becomes one faithful region.
Split split_pair(TreeView& a, TreeView& b, Pred pred, const CheckOptions& opt);
// Splits a single-tree property (kConform, kIsolated, kWellFormed) top-down.
Split split_single(TreeView& t, Pred pred, const Spec& spec, const CheckOptions& opt);
// Returns the number of linear obligations a split holds.
std::size_t linear_count(const Split& s);
// Finds host frames mapped from two guest frames and returns kNoAlias obligations for them.
std::vector<Obligation> alias_obligations(TreeView& t, std::vector<Piece> pieces, std::size_t max);
// Decides a linear obligation in C++ (used only above CheckOptions::linear_z3_cap).
bool linear_holds(const Obligation& ob, const Spec& spec);
// Returns the deepest entry a concrete walk uses for `gpa`, as an entry node (or the root page).
Node node_for_gpa(TreeView& t, std::uint64_t gpa);
// The R/W/X bits the memslots that intersect [base, base + size) allow, ORed together.
std::uint8_t slot_perms(const std::vector<model::Memslot>& slots, std::uint64_t base, std::uint64_t size);
// Returns whether a host frame is an EPT table frame of `vm`.
bool is_table_frame(const model::OwnerMap& owners, std::uint32_t vm, model::Hfn f);

}  // namespace baton::checker::detail
