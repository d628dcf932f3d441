// The EPT bit-relevance study behind docs/ept-bit-relevance.md.
#include "baton/checker/mutation.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>
#include <random>

#include "baton/checker/concrete.hpp"
#include "baton/checker/overlay.hpp"
#include "baton/model/ept_builder.hpp"
#include "decompose.hpp"

namespace baton::checker {

using model::EntryKind;
using model::EptEntry;
using model::Gpa;
using model::Hfn;
using model::Hpa;
using model::Perms;

const char* to_string(SampleKind k) {
  switch (k) {
    case SampleKind::kPml4Table: return "PML4E -> PDPT";
    case SampleKind::kPdptTable: return "PDPTE -> PD";
    case SampleKind::kPdTable: return "PDE -> PT";
    case SampleKind::kLeaf1G: return "PDPTE 1G leaf";
    case SampleKind::kLeaf2M: return "PDE 2M leaf";
    case SampleKind::kLeaf4K: return "PTE 4K leaf";
    case SampleKind::kEmptyPml4: return "PML4E empty";
    case SampleKind::kEmptyPdpt: return "PDPTE empty";
    case SampleKind::kEmptyPd: return "PDE empty";
    case SampleKind::kEmptyPt: return "PTE empty";
  }
  return "?";
}

unsigned level_of(SampleKind k) {
  switch (k) {
    case SampleKind::kPml4Table:
    case SampleKind::kEmptyPml4: return 4;
    case SampleKind::kPdptTable:
    case SampleKind::kLeaf1G:
    case SampleKind::kEmptyPdpt: return 3;
    case SampleKind::kPdTable:
    case SampleKind::kLeaf2M:
    case SampleKind::kEmptyPd: return 2;
    case SampleKind::kLeaf4K:
    case SampleKind::kEmptyPt: return 1;
  }
  return 0;
}

namespace {

constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;
constexpr std::uint64_t kMiB = std::uint64_t{1} << 20;

// The study's tree: every kind of entry, with a few permission and memory-type variants.
struct StudyTree {
  model::FrameStore mem;
  model::Eptp eptp;
  std::map<SampleKind, std::vector<Hpa>> entries;  // where each kind's entries sit
};

// Returns the kind an entry at a level counts as in the study, if any.
std::optional<SampleKind> kind_at(EptEntry e, unsigned level, const model::EptConfig& cfg) {
  const EntryKind k = e.classify(level, cfg);
  if (e.raw() == 0) {
    static const SampleKind kEmpty[5] = {SampleKind::kEmptyPt, SampleKind::kEmptyPt, SampleKind::kEmptyPd,
                                         SampleKind::kEmptyPdpt, SampleKind::kEmptyPml4};
    return kEmpty[level];
  }
  switch (k) {
    case EntryKind::kTable:
      return level == 4 ? SampleKind::kPml4Table : level == 3 ? SampleKind::kPdptTable : SampleKind::kPdTable;
    case EntryKind::kLeaf1G: return SampleKind::kLeaf1G;
    case EntryKind::kLeaf2M: return SampleKind::kLeaf2M;
    case EntryKind::kLeaf4K: return SampleKind::kLeaf4K;
    default: return std::nullopt;
  }
}

// Records the entries of a table page and its subtree by kind. Entries for GPAs at or above
// 2^MAXPHYADDR are left out: no walk reaches them, so every flip there is trivially harmless.
void collect(StudyTree& t, Hfn h, unsigned level, std::uint64_t base, const model::EptConfig& cfg) {
  const std::uint8_t* p = t.mem.frame(h);
  if (p == nullptr) return;
  for (unsigned i = 0; i < 512; ++i) {
    const std::uint64_t gpa = base + i * model::level_span(level);
    if (gpa >= detail::gpa_limit(cfg)) break;
    std::uint64_t raw;
    std::memcpy(&raw, p + std::size_t{i} * 8, 8);
    const EptEntry e{raw};
    if (auto k = kind_at(e, level, cfg)) t.entries[*k].push_back(model::hpa_of(h) + std::uint64_t{i} * 8);
    if (level > 1 && e.classify(level, cfg) == EntryKind::kTable) collect(t, e.table_hfn(), level - 1, gpa, cfg);
  }
}

// Drops the value of a successful result.
Result<void> as_void(const Result<std::uint64_t>& r) {
  if (!r) return r.error();
  return ok_result();
}

// Builds the study tree: 4K, 2M and 1G leaves in three PML4 slots, with varied attributes.
Result<void> build(StudyTree& t, const model::EptConfig& cfg) {
  std::uint64_t next = (std::uint64_t{3} << 30) >> model::kPageShift;  // table frames at 3 GiB
  model::EptBuilder b(
      t.mem, [&] { return Hfn{next++}; }, cfg);
  const Perms rwx{true, true, true}, rw{true, true, false}, rx{true, false, true}, r{true, false, false};
  const std::uint64_t ram = std::uint64_t{64} << 30;  // guest RAM backing at 64 GiB
  // 4K leaves: 8 MiB in four page tables, the second one read-only and uncacheable.
  BATON_TRY_VOID(as_void(b.map_range(Gpa{0}, Hpa{ram}, 2 * kMiB, rwx, 1)));
  for (std::uint64_t off = 2 * kMiB; off < 4 * kMiB; off += model::kPageSize)
    BATON_TRY_VOID(b.map_leaf(Gpa{off}, Hpa{ram + off}, 1, r, 0));
  BATON_TRY_VOID(as_void(b.map_range(Gpa{4 * kMiB}, Hpa{ram + 4 * kMiB}, 4 * kMiB, rw, 1)));
  // 2M leaves: 64 MiB at 1 GiB, some read-execute.
  BATON_TRY_VOID(as_void(b.map_range(Gpa{kGiB}, Hpa{ram + kGiB}, 32 * kMiB, rwx, 2)));
  BATON_TRY_VOID(as_void(b.map_range(Gpa{kGiB + 32 * kMiB}, Hpa{ram + kGiB + 32 * kMiB}, 32 * kMiB, rx, 2)));
  // 1G leaves: two at 4 GiB.
  BATON_TRY_VOID(b.map_leaf(Gpa{4 * kGiB}, Hpa{ram + 4 * kGiB}, 3, rwx));
  BATON_TRY_VOID(b.map_leaf(Gpa{5 * kGiB}, Hpa{ram + 5 * kGiB}, 3, rw, 6, true));
  // Two more PML4 slots (512 GiB and 1 TiB) so that PML4E samples vary.
  BATON_TRY_VOID(as_void(b.map_range(Gpa{512 * kGiB}, Hpa{ram + 8 * kGiB}, 2 * kMiB, rwx, 2)));
  BATON_TRY_VOID(as_void(b.map_range(Gpa{1024 * kGiB}, Hpa{ram + 10 * kGiB}, 4 * kMiB, rw, 1)));
  // A partly filled page table, so that empty PTEs exist.
  BATON_TRY_VOID(as_void(b.map_range(Gpa{1024 * kGiB + 8 * kMiB}, Hpa{ram + 11 * kGiB}, std::uint64_t{64} * 1024, rwx, 1)));
  t.eptp = b.eptp(true);
  collect(t, t.eptp.root(), 4, 0, cfg);
  return ok_result();
}

// Names the effect of a harmful flip from the two concrete outcomes at the counterexample.
std::string effect_of(const detail::Outcome& before, const detail::Outcome& after) {
  using detail::OutKind;
  if (after.kind == OutKind::kUnknown) return "absent frame";
  if (after.kind == OutKind::kMisconfig && before.kind != OutKind::kMisconfig) return "misconfig";
  if (before.kind == OutKind::kMapped && after.kind == OutKind::kNone) return "unmapped";
  if (before.kind != OutKind::kMapped && after.kind == OutKind::kMapped) return "mapped";
  if (before.kind == OutKind::kMapped && after.kind == OutKind::kMapped) {
    if (before.hpa != after.hpa) return "hpa";
    if (before.perms != after.perms) return "perms";
    if (before.mt != after.mt) return "memtype";
    if (before.ipat != after.ipat) return "ipat";
  }
  return "other";
}

// Names a bit of an EPT entry (SDM tables 29-1..29-6) for the table's first column.
std::string bit_name(unsigned b, unsigned maxphy) {
  switch (b) {
    case 0: return "R";
    case 1: return "W";
    case 2: return "X";
    case 3:
    case 4:
    case 5: return "memtype (leaf) / reserved (table)";
    case 6: return "IPAT (leaf) / reserved (table)";
    case 7: return "PS (PDPTE/PDE) / ignored (PTE) / reserved (PML4E)";
    case 8: return "A";
    case 9: return "D (leaf) / ignored (table)";
    case 10: return "user-mode X (MBEC only)";
    case 11: return "ignored";
    case 57: return "verify guest paging";
    case 58: return "paging-write access";
    case 60: return "supervisor shadow stack";
    case 61: return "sub-page write";
    case 63: return "suppress #VE";
    default: break;
  }
  if (b >= 12 && b < maxphy) return "address";
  if (b >= maxphy && b <= 51) return "reserved (above MAXPHYADDR)";
  return "ignored";
}

// Renders one cell of the markdown table.
std::string cell_text(const BitCell& c) {
  const unsigned n = c.harmful + c.harmless + c.unknown;
  if (n == 0) return "-";
  if (c.unknown != 0) return "unknown " + std::to_string(c.unknown) + "/" + std::to_string(n);
  if (c.harmful == n) return "**harmful** (" + c.effect + ")";
  if (c.harmless == n) return "harmless";
  return "mixed " + std::to_string(c.harmful) + "/" + std::to_string(n) + " (" + c.effect + ")";
}

}  // namespace

Result<BitRelevanceTable> run_bit_relevance(const BitRelevanceOptions& opt) {
  const auto t0 = std::chrono::steady_clock::now();
  StudyTree tree;
  BATON_TRY_VOID(build(tree, opt.cfg));
  BitRelevanceTable table;
  table.options = opt;
  const TreeRef orig{"original", tree.eptp, &tree.mem, opt.cfg};
  OverlayMemory overlay(tree.mem);
  const TreeRef mutated{"mutated", tree.eptp, &overlay, opt.cfg};
  CheckOptions co;
  co.timeout_s = opt.timeout_s;
  std::mt19937_64 rng(opt.seed);
  std::vector<std::pair<std::size_t, Hpa>> work;  // (row, entry address)
  for (const auto& [kind, addrs] : tree.entries) {
    std::vector<Hpa> pick = addrs;
    std::shuffle(pick.begin(), pick.end(), rng);
    if (pick.size() > opt.samples) pick.resize(opt.samples);
    table.kinds.push_back(kind);
    for (Hpa a : pick) work.emplace_back(table.kinds.size() - 1, a);
  }
  table.cells.resize(table.kinds.size());
  std::vector<std::map<std::string, unsigned>> effects(table.kinds.size() * 64);
  const unsigned total = static_cast<unsigned>(work.size()) * static_cast<unsigned>(__builtin_popcountll(opt.bits));
  for (const auto& [row, addr] : work) {
    for (unsigned bit = 0; bit < 64; ++bit) {
      if (((opt.bits >> bit) & 1) == 0) continue;
      overlay.clear();
      overlay.flip_bit(addr, bit);
      auto r = check_equivalence(orig, mutated, co);
      if (!r) return r.error();
      BitCell& cell = table.cells[row][bit];
      if (r->verdict == Verdict::kProven) ++cell.harmless;
      if (r->verdict == Verdict::kUnknown) ++cell.unknown;
      if (r->verdict == Verdict::kRefuted) {
        ++cell.harmful;
        if (r->counterexample && r->counterexample->gpa) {
          const Gpa g = *r->counterexample->gpa;
          ++effects[row * 64 + bit][effect_of(detail::concrete_outcome(orig, g), detail::concrete_outcome(mutated, g))];
        }
      }
      // The concrete path must agree (it cannot follow table cycles; those are skipped).
      if (auto c = concrete_equivalence(orig, mutated); c && r->verdict != Verdict::kUnknown)
        if (c->holds != (r->verdict == Verdict::kProven)) table.concrete_agrees = false;
      ++table.checks;
      if (opt.progress) opt.progress(table.checks, total);
    }
  }
  for (std::size_t row = 0; row < table.kinds.size(); ++row)
    for (unsigned bit = 0; bit < 64; ++bit) {
      const auto& e = effects[row * 64 + bit];
      unsigned best = 0;
      for (const auto& [name, n] : e)
        if (n > best) {
          best = n;
          table.cells[row][bit].effect = name;
        }
    }
  table.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return table;
}

std::string to_markdown(const BitRelevanceTable& t) {
  const BitRelevanceOptions& o = t.options;
  char buf[512];
  std::string md = "# Which EPT entry bits matter, by level and kind\n\n";
  std::snprintf(
      buf, sizeof buf,
      "Generated by `baton check bit-relevance --samples %u --seed %llu --out docs/ept-bit-relevance.md`; "
      "do not edit by hand. %u equivalence checks (up to %u sampled entries per kind, each bit flipped alone) took "
      "%.1f s. "
      "Machine: MAXPHYADDR %u, execute-only %s, mode-based execute %s.\n\n",
      o.samples, static_cast<unsigned long long>(o.seed), t.checks, o.samples, t.seconds, o.cfg.maxphyaddr,
      o.cfg.execute_only ? "supported" : "unsupported", o.cfg.mode_based_exec ? "on" : "off");
  md += buf;
  md +=
      "Each cell flips one bit in each sampled entry of that kind, in a tree with 4 KiB, 2 MiB and 1 GiB leaves, "
      "and asks `baton check` whether the mutated tree is still equivalent to the original (same outcome, HPA, "
      "effective permissions, memory type and IPAT for every GPA). **harmful** means refuted for every sample, "
      "with the most common effect at the counterexample GPA; *harmless* means proven equivalent for every "
      "sample; *mixed h/n* means harmful for h of n samples.\n\n"
      "Effects: `misconfig` (the walk now ends in an EPT misconfiguration), `unmapped` / `mapped` (translation "
      "lost or gained), `hpa`, `perms`, `memtype`, `ipat` (the translation changed), `absent frame` (a table "
      "pointer now leads to a frame outside the snapshot, which can hold anything).\n\n";
  md += "| bit | meaning |";
  for (SampleKind k : t.kinds) md += std::string(" ") + to_string(k) + " |";
  md += "\n|---|---|";
  for (std::size_t i = 0; i < t.kinds.size(); ++i) md += "---|";
  md += "\n";
  unsigned b = 0;
  while (b < 64) {
    // Group consecutive bits with the same meaning and the same cells.
    unsigned e = b;
    auto row_of = [&](unsigned bit) {
      std::string r;
      for (std::size_t k = 0; k < t.kinds.size(); ++k) r += " " + cell_text(t.cells[k][bit]) + " |";
      return r;
    };
    const std::string cells = row_of(b);
    const std::string name = bit_name(b, o.cfg.maxphyaddr);
    while (e + 1 < 64 && bit_name(e + 1, o.cfg.maxphyaddr) == name && row_of(e + 1) == cells) ++e;
    md += "| " + (e == b ? std::to_string(b) : std::to_string(b) + "-" + std::to_string(e)) + " | " + name + " |" +
          cells + "\n";
    b = e + 1;
  }
  // The hash-consing mask must only contain bits that are harmless everywhere.
  const std::uint64_t ignored = detail::ignored_mask(o.cfg);
  std::string bad;
  for (unsigned bit = 0; bit < 64; ++bit) {
    if (((ignored >> bit) & 1) == 0) continue;
    for (std::size_t k = 0; k < t.kinds.size(); ++k)
      if (t.cells[k][bit].harmful != 0) bad += " " + std::to_string(bit);
  }
  md += "\n## Reading the table\n\n";
  md +=
      "- Bits 0-2 matter everywhere: clearing R while W stays set is a misconfiguration, and in an empty entry "
      "any of them makes the entry present.\n"
      "- In table entries, bits 3-6 are reserved (misconfiguration) and the address bits select another table "
      "page; in leaves, bits 3-6 are the memory type and IPAT.\n"
      "- Bit 7 turns a PDPTE/PDE table pointer into a large leaf (usually misconfigured by its reserved low "
      "address bits) and is reserved in a PML4E; in a PTE it is ignored.\n"
      "- Bits from MAXPHYADDR to 51 are reserved in every present entry. Bits 52-63 and 8, 9, 11 never change "
      "a translation; the SDM gives some of them meaning for #VE, sub-page permissions, shadow stacks and "
      "guest-paging verification, which baton does not model.\n"
      "- An empty (not-present) entry only becomes harmful through bits 0-2 (and bit 10 under MBEC). Only entries "
      "for GPAs below 2^MAXPHYADDR are sampled: no walk reaches the others, so every flip there is harmless.\n"
      "- A flip can be harmless where the levels below already lack what it removes: clearing X in a PDE above "
      "leaves that are not executable changes no outcome, hence *mixed* cells.\n\n";
  md += bad.empty() ? "The checker's hash-consing treats entries that differ only in bits 8, 9, 10 (without MBEC), 11 "
                      "and 52-63 as identical (`detail::ignored_mask`); every one of those bits is harmless in every "
                      "row above, which is what makes that shortcut sound.\n"
                    : "WARNING: bits of the checker's ignored mask were harmful:" + bad + "\n";
  md += t.concrete_agrees ? "The concrete cross-check (MappingSet diff) agreed with every verdict.\n"
                          : "WARNING: the concrete cross-check disagreed with at least one verdict.\n";
  return md;
}

std::string to_json(const BitRelevanceTable& t) {
  nlohmann::json rows = nlohmann::json::array();
  for (std::size_t k = 0; k < t.kinds.size(); ++k) {
    nlohmann::json bits = nlohmann::json::array();
    for (unsigned b = 0; b < 64; ++b) {
      const BitCell& c = t.cells[k][b];
      bits.push_back(
          {{"bit", b}, {"harmful", c.harmful}, {"harmless", c.harmless}, {"unknown", c.unknown}, {"effect", c.effect}});
    }
    rows.push_back({{"kind", to_string(t.kinds[k])}, {"level", level_of(t.kinds[k])}, {"bits", bits}});
  }
  return nlohmann::json{{"checks", t.checks},
                        {"seconds", t.seconds},
                        {"samples", t.options.samples},
                        {"maxphyaddr", t.options.cfg.maxphyaddr},
                        {"concrete_agrees", t.concrete_agrees},
                        {"rows", rows}}
      .dump(2);
}

}  // namespace baton::checker
