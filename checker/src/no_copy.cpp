// The no-copy property (include/baton/checker/no_copy.hpp, docs/checker.md "No-copy").
#include "z3_context.hpp"
#include "baton/checker/no_copy.hpp"

#include <z3++.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

namespace baton::checker {

namespace {

using Clock = std::chrono::steady_clock;
double since(Clock::time_point t) { return std::chrono::duration<double>(Clock::now() - t).count(); }

std::string hex(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// A mapped run in frame units: gfns [gfn, gfn + count) -> pfns [pfn, pfn + count).
struct FrameRun {
  std::uint64_t gfn = 0, count = 0, pfn = 0;
  std::uint64_t end() const { return gfn + count; }
};

// The mapped runs of a set in frame units; errors on runs that are not 4 KiB aligned.
Result<std::vector<FrameRun>> frame_runs(const model::MappingSet& s, const char* which) {
  std::vector<FrameRun> out;
  for (const model::MappingRun& r : s.runs()) {
    if (r.kind != model::RunKind::kMapped) continue;
    if ((r.gpa.value | r.size | r.hpa.value) & 0xfff)
      return make_error(std::string(which) + " map: run at gpa " + hex(r.gpa.value) + " is not 4 KiB aligned");
    out.push_back(FrameRun{r.gpa.value >> 12, r.size >> 12, r.hpa.value >> 12});
  }
  return out;
}

std::uint64_t frames_of(const std::vector<FrameRun>& v) {
  std::uint64_t n = 0;
  for (const FrameRun& r : v) n += r.count;
  return n;
}

// One stretch of gfns that both maps cover, each with one linear relation pfn = gfn + delta.
struct Segment {
  std::uint64_t lo = 0, hi = 0;          // gfns [lo, hi)
  std::uint64_t delta_a = 0, delta_b = 0;  // pfn - gfn (mod 2^64) in each map
};

// Sweeps two sorted, disjoint run lists into their overlap segments.
std::vector<Segment> overlaps(const std::vector<FrameRun>& a, const std::vector<FrameRun>& b) {
  std::vector<Segment> out;
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const std::uint64_t lo = std::max(a[i].gfn, b[j].gfn);
    const std::uint64_t hi = std::min(a[i].end(), b[j].end());
    if (lo < hi) out.push_back(Segment{lo, hi, a[i].pfn - a[i].gfn, b[j].pfn - b[j].gfn});
    if (a[i].end() < b[j].end()) ++i;
    else ++j;
  }
  return out;
}

// The pfn a run list gives a gfn, if any.
std::optional<std::uint64_t> lookup(const std::vector<FrameRun>& v, std::uint64_t gfn) {
  auto it = std::upper_bound(v.begin(), v.end(), gfn, [](std::uint64_t g, const FrameRun& r) { return g < r.gfn; });
  if (it == v.begin()) return std::nullopt;
  --it;
  if (gfn >= it->end()) return std::nullopt;
  return it->pfn + (gfn - it->gfn);
}

// gfn in [lo, hi).
z3::expr in_range(const z3::expr& g, std::uint64_t lo, std::uint64_t hi) {
  z3::context& c = g.ctx();
  return z3::uge(g, c.bv_val(lo, 64)) && z3::ult(g, c.bv_val(hi, 64));
}

// Whether a run list maps g, and the pfn it gives, as an if-then-else chain.
std::pair<z3::expr, z3::expr> encode_map(const z3::expr& g, const std::vector<FrameRun>& v) {
  z3::context& c = g.ctx();
  z3::expr dom = c.bool_val(false);
  z3::expr pfn = c.bv_val(0, 64);
  for (auto it = v.rbegin(); it != v.rend(); ++it) {
    z3::expr in = in_range(g, it->gfn, it->end());
    dom = in || dom;
    pfn = z3::ite(in, g - c.bv_val(it->gfn, 64) + c.bv_val(it->pfn, 64), pfn);
  }
  return {dom, pfn};
}

}  // namespace

Result<std::optional<NoCopyCounterexample>> concrete_no_copy(const model::MappingSet& source,
                                                             const model::MappingSet& dest) {
  auto a = frame_runs(source, "source");
  if (!a) return a.error();
  auto b = frame_runs(dest, "destination");
  if (!b) return b.error();
  for (const Segment& s : overlaps(*a, *b))
    if (s.delta_a != s.delta_b) return std::optional<NoCopyCounterexample>(
        NoCopyCounterexample{s.lo, s.lo + s.delta_a, s.lo + s.delta_b, true});
  return std::optional<NoCopyCounterexample>{};
}

Result<NoCopyResult> check_no_copy(const model::MappingSet& source, const model::MappingSet& dest,
                                   const NoCopyOptions& opt) {
  const auto start = Clock::now();
  auto a = frame_runs(source, "source");
  if (!a) return a.error();
  auto b = frame_runs(dest, "destination");
  if (!b) return b.error();
  NoCopyResult res;
  res.source_frames = frames_of(*a);
  res.dest_frames = frames_of(*b);
  const std::vector<Segment> segs = overlaps(*a, *b);
  for (const Segment& s : segs) res.shared_frames += s.hi - s.lo;

  detail::ContextLease lease;
  z3::context& c = lease.get();
  const z3::expr g = c.bv_const("gfn", 64);
  // Runs one query; returns sat/unsat/unknown and fills the counterexample gfn when sat.
  auto ask = [&](const z3::expr& f, std::uint64_t* witness) -> z3::check_result {
    ++res.z3_queries;
    z3::solver s(c, "QF_BV");
    z3::params p(c);
    const double left = opt.timeout_s - since(start);
    p.set("timeout", static_cast<unsigned>(std::max(1.0, left * 1000.0)));
    s.set(p);
    s.add(f);
    const z3::check_result r = s.check();
    if (r == z3::sat) *witness = s.get_model().eval(g, true).get_numeral_uint64();
    if (r == z3::unknown) res.unknown_reason = "Z3: " + s.reason_unknown();
    return r;
  };

  std::optional<std::uint64_t> witness;
  if (opt.decompose) {
    res.segments = segs.size();
    const std::size_t per = std::max<std::size_t>(1, opt.segments_per_query);
    for (std::size_t first = 0; first < segs.size() && !witness; first += per) {
      if (since(start) > opt.timeout_s) {
        res.unknown_reason = "timeout after " + std::to_string(res.z3_queries) + " Z3 queries";
        break;
      }
      z3::expr_vector bad(c);
      for (std::size_t k = first; k < std::min(segs.size(), first + per); ++k) {
        const Segment& s = segs[k];
        bad.push_back(in_range(g, s.lo, s.hi) && g + c.bv_val(s.delta_a, 64) != g + c.bv_val(s.delta_b, 64));
      }
      std::uint64_t w = 0;
      const z3::check_result r = ask(z3::mk_or(bad), &w);
      if (r == z3::sat) witness = w;
      if (r == z3::unknown) break;
    }
  } else {
    res.segments = a->size() + b->size();
    auto [dom_a, pfn_a] = encode_map(g, *a);
    auto [dom_b, pfn_b] = encode_map(g, *b);
    std::uint64_t w = 0;
    const z3::check_result r = ask(dom_a && dom_b && pfn_a != pfn_b, &w);
    if (r == z3::sat) witness = w;
  }

  if (witness) {
    NoCopyCounterexample cx;
    cx.gfn = *witness;
    auto pa = lookup(*a, cx.gfn), pb = lookup(*b, cx.gfn);
    cx.confirmed_concretely = pa && pb && *pa != *pb;
    cx.source_pfn = pa.value_or(0);
    cx.dest_pfn = pb.value_or(0);
    if (!cx.confirmed_concretely)
      return make_error("internal: Z3 gave gfn " + hex(cx.gfn) + " as a counterexample that the maps do not confirm");
    res.verdict = Verdict::kRefuted;
    res.summary = "gfn " + hex(cx.gfn) + " maps to pfn " + hex(cx.source_pfn) + " in the source but to pfn " +
                  hex(cx.dest_pfn) + " in the destination: memory was copied or remapped";
    res.counterexample = cx;
  } else if (!res.unknown_reason.empty()) {
    res.verdict = Verdict::kUnknown;
    res.summary = "undecided: " + res.unknown_reason;
  } else if (res.shared_frames == 0) {
    // Nothing was compared, so nothing is proven: a capture without the destination's (or
    // either VM's) mappings must not pass as a proof.
    res.verdict = Verdict::kUnknown;
    res.unknown_reason = res.source_frames == 0 && res.dest_frames == 0 ? "neither VM maps any gfn"
                         : res.source_frames == 0                       ? "the source VM maps no gfn"
                         : res.dest_frames == 0                         ? "the destination VM maps no gfn"
                                                                        : "no gfn is mapped by both VMs";
    res.summary = "inconclusive: " + res.unknown_reason + ", so there is nothing to compare";
  } else {
    res.verdict = Verdict::kProven;
    res.summary = "all " + std::to_string(res.shared_frames) + " gfns mapped by both VMs map to the same host pfn";
  }
  res.seconds = since(start);
  return res;
}

}  // namespace baton::checker
