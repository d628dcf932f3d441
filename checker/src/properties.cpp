// The tree properties: split by the decomposition, residual regions refuted or proven by Z3,
// counterexamples rebuilt from concrete walks.
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "z3_context.hpp"
#include "baton/checker/check.hpp"
#include "baton/model/ept_walk.hpp"
#include "decompose.hpp"
#include "encode.hpp"

namespace baton::checker {

using detail::Node;
using detail::Obligation;
using detail::Outcome;
using detail::OutKind;
using detail::Pred;
using detail::Spec;
using detail::Split;
using detail::TreeView;
using Clock = std::chrono::steady_clock;

namespace {

// Seconds since `t0`.
double since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// Formats a number as 0x-hex.
std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// One property check in progress: the trees, the spec and the result being filled.
struct Job {
  Property property;
  TreeView* a = nullptr;
  TreeView* b = nullptr;  // the second tree of kSame/kSubset
  Spec spec;
  const CheckOptions* opt = nullptr;
  Clock::time_point start;
  PropertyResult result;
};

// The frame a walk stopped at when its table frame was absent.
std::uint64_t absent_frame_of(const model::WalkResult& w) {
  return w.path_len == 0 ? 0 : model::hfn_of(w.path[w.path_len - 1].entry_addr).value;
}

// The concrete walk of a tree at a GPA, level by level, for a counterexample.
WalkView walk_view(const TreeRef& t, std::uint64_t gpa) {
  const model::WalkResult w = model::walk(t.eptp, model::Gpa{gpa}, model::Access::kRead, *t.mem, t.cfg);
  WalkView v;
  v.tree = t.name;
  v.gpa = gpa;
  const Outcome o = detail::concrete_outcome(t, model::Gpa{gpa});
  v.outcome = detail::describe(o);
  if (w.kind == model::WalkKind::kMisconfig) v.outcome += std::string(" (") + model::to_string(w.reason) + ")";
  if (w.kind == model::WalkKind::kAbsentFrame)
    v.outcome = "unknown: table frame " + hex(absent_frame_of(w)) + " is absent";
  for (unsigned i = 0; i < w.path_len; ++i) {
    const model::WalkStep& s = w.path[i];
    const bool absent = w.kind == model::WalkKind::kAbsentFrame && i + 1 == w.path_len;
    v.steps.push_back(WalkStepView{s.level, s.entry_addr.value, s.entry.raw(),
                                   absent ? "table frame not in memory" : model::describe(s.entry, s.level, t.cfg)});
  }
  v.text = model::describe(w, model::Gpa{gpa}, t.cfg);
  return v;
}

// Returns whether a GPA's concrete outcome satisfies a single-tree predicate; `why` explains a failure.
bool single_holds(const Job& job, Pred pred, const TreeRef& t, std::uint64_t gpa, std::string* why) {
  const Outcome o = detail::concrete_outcome(t, model::Gpa{gpa});
  const model::WalkResult w = model::walk(t.eptp, model::Gpa{gpa}, model::Access::kRead, *t.mem, t.cfg);
  if (o.kind == OutKind::kUnknown) {
    *why = "the walk reaches table frame " + hex(absent_frame_of(w)) + " at level " + std::to_string(w.level) +
           ", which is absent from the snapshot; an absent frame can hold anything";
    return false;
  }
  switch (pred) {
    case Pred::kConform: {
      const model::Memslot* s = model::find_memslot(*job.spec.slots, model::Gpa{gpa});
      // The table entries walked (all but the last step) AND their permissions into every leaf below.
      unsigned tables = 7;
      for (unsigned i = 0; i + 1 < w.path_len; ++i) tables &= static_cast<unsigned>(w.path[i].entry.raw() & 7);
      if (s != nullptr && !s->max_perms().subset_of(model::Perms::from_bits(tables))) {
        *why = "memslot " + std::to_string(s->id) + " allows " + model::to_string(s->max_perms()) +
               " but the table (non-leaf) entries of its walk allow only " +
               model::to_string(model::Perms::from_bits(tables)) +
               " (permissions AND down the walk: no leaf can grant the rest)";
        return false;
      }
      if (o.kind != OutKind::kMapped) return true;
      if (s == nullptr) {
        *why = "it is mapped to hpa " + hex(o.hpa) + " but lies in no memslot";
        return false;
      }
      if (s->hpa_at(model::Gpa{gpa}).value != o.hpa) {
        *why = "memslot " + std::to_string(s->id) + " puts it at hpa " + hex(s->hpa_at(model::Gpa{gpa}).value) +
               " but the tree maps it to hpa " + hex(o.hpa);
        return false;
      }
      if (!model::Perms::from_bits(o.perms).subset_of(s->max_perms())) {
        *why = "the tree grants " + model::to_string(model::Perms::from_bits(o.perms)) + " but memslot " +
               std::to_string(s->id) + " allows only " + model::to_string(s->max_perms());
        return false;
      }
      return true;
    }
    case Pred::kIsolated: {
      // Every table frame read on the way must be an EPT table of this VM.
      for (unsigned i = 0; i < w.path_len; ++i) {
        const model::Hfn f = model::hfn_of(w.path[i].entry_addr);
        if (!detail::is_table_frame(*job.spec.owners, job.spec.vm, f)) {
          const model::OwnerRange r = job.spec.owners->owner_of(f);
          *why = "its walk reads the level-" + std::to_string(w.path[i].level) + " table from host frame " +
                 hex(f.value) + ", owned by " + model::to_string(r.kind) + " (vm " + std::to_string(r.vm) +
                 "), not by this VM's EPT";
          return false;
        }
      }
      if (o.kind != OutKind::kMapped) return true;
      const model::OwnerRange r = job.spec.owners->owner_of(model::hfn_of(model::Hpa{o.hpa}));
      if (r.kind != model::OwnerKind::kGuestRam || r.vm != job.spec.vm) {
        *why = "it maps host frame " + hex(o.hpa >> model::kPageShift) + ", owned by " + model::to_string(r.kind) +
               " (vm " + std::to_string(r.vm) + "), not by this VM's RAM";
        return false;
      }
      return true;
    }
    case Pred::kWellFormed: {
      if (o.kind != OutKind::kMisconfig) return true;
      for (const model::GpaRange& r : *job.spec.mmio)
        if (r.contains(model::Gpa{gpa})) return true;
      *why = std::string("it is an EPT misconfiguration (") + model::to_string(w.reason) +
             ") outside every declared MMIO range";
      return false;
    }
    default: return true;
  }
}

// Builds the counterexample for a satisfying GPA (and a second one for aliasing).
Counterexample make_counterexample(const Job& job, Pred pred, std::uint64_t g1, std::uint64_t g2) {
  Counterexample cx;
  cx.gpa = model::Gpa{g1};
  const TreeRef& ta = job.a->ref();
  cx.walks.push_back(walk_view(ta, g1));
  const std::string at = "GPA " + hex(g1);
  switch (pred) {
    case Pred::kSame:
    case Pred::kSubset: {
      const TreeRef& tb = job.b->ref();
      cx.walks.push_back(walk_view(tb, g1));
      const Outcome oa = detail::concrete_outcome(ta, model::Gpa{g1});
      const Outcome ob = detail::concrete_outcome(tb, model::Gpa{g1});
      const bool unknown = oa.kind == OutKind::kUnknown || ob.kind == OutKind::kUnknown;
      cx.confirmed_concretely =
          pred == Pred::kSame ? (oa != ob || unknown) : (ob.kind != OutKind::kNone && (oa != ob || unknown));
      cx.explanation =
          at + (pred == Pred::kSame ? " translates differently: " : " is mapped by " + tb.name + " differently: ") +
          ta.name + " gives " + cx.walks[0].outcome + ", " + tb.name + " gives " + cx.walks[1].outcome;
      if (unknown) cx.explanation += "; an absent table frame can hold anything";
      break;
    }
    case Pred::kNoAlias: {
      cx.gpa2 = model::Gpa{g2};
      cx.walks.push_back(walk_view(ta, g2));
      const Outcome o1 = detail::concrete_outcome(ta, model::Gpa{g1});
      const Outcome o2 = detail::concrete_outcome(ta, model::Gpa{g2});
      cx.confirmed_concretely = o1.kind == OutKind::kMapped && o2.kind == OutKind::kMapped &&
                                (o1.hpa >> model::kPageShift) == (o2.hpa >> model::kPageShift) &&
                                (g1 >> model::kPageShift) != (g2 >> model::kPageShift);
      cx.explanation = "GPAs " + hex(g1) + " and " + hex(g2) + " both map host frame " +
                       hex(o1.hpa >> model::kPageShift) + " (aliasing the spec does not declare)";
      break;
    }
    default: {
      std::string why;
      cx.confirmed_concretely = !single_holds(job, pred, ta, g1, &why);
      cx.explanation = at + ": " + (why.empty() ? "Z3's model violates the property, the concrete walk does not" : why);
      break;
    }
  }
  return cx;
}

// The negation of an obligation's predicate, restricted to its region.
z3::expr violation(const Job& job, const Obligation& ob, detail::Encoder& ea, detail::Encoder* eb, detail::Encoder* ea2,
                   const z3::expr& gpa, const z3::expr& gpa2) {
  const z3::expr region = detail::in_region(gpa, ob.base, ob.size);
  switch (ob.pred) {
    case Pred::kSame: return region && !detail::same_outcome(ea.node(ob.a, ob.base), eb->node(ob.b, ob.base));
    case Pred::kSubset: return region && !detail::subset_outcome(ea.node(ob.a, ob.base), eb->node(ob.b, ob.base));
    case Pred::kConform: {
      const detail::ZOut o = ea.node(ob.a, ob.base);
      return region && !(detail::conformance(o, gpa, *job.spec.slots) && detail::tables_cover(o, gpa, *job.spec.slots));
    }
    case Pred::kIsolated: return region && !detail::isolation(ea.node(ob.a, ob.base), *job.spec.owners, job.spec.vm);
    case Pred::kWellFormed: return region && !detail::wellformed(ea.node(ob.a, ob.base), gpa, *job.spec.mmio);
    case Pred::kNoAlias:
      return region && detail::in_region(gpa2, ob.base2, ob.size2) &&
             !detail::no_alias(ea.node(ob.a, ob.base), gpa, ea2->node(ob.b, ob.base2), gpa2);
  }
  return gpa.ctx().bool_val(false);
}

// Hands the obligations of a split to Z3 in batches and sets the verdict: refuted at the first
// satisfiable batch, unknown if any batch is unknown, proven when every batch is unsat.
void solve(Job& job, Split split) {
  const CheckOptions& opt = *job.opt;
  PropertyResult& res = job.result;
  res.stats = split.stats;
  std::vector<Obligation>& obs = split.obligations;
  // Too many linear relations for one solver: C++ discharges the ones that hold.
  if (res.stats.linear_cpp != 0 || detail::linear_count(split) > opt.linear_z3_cap) {
    std::vector<Obligation> keep;
    for (Obligation& ob : obs) {
      if (ob.linear() && detail::linear_holds(ob, job.spec)) {
        ++res.stats.linear_cpp;
        continue;
      }
      keep.push_back(ob);
    }
    obs.swap(keep);
  }
  const auto t0 = Clock::now();
  // A split stopped at a work bound covers only part of the space: it can refute, never prove.
  const auto undecided = [&] {
    res.verdict = Verdict::kUnknown;
    res.unknown_reason = split.truncated;
  };
  if (obs.empty()) {
    // The decomposition discharged every region: nothing is left for Z3.
    if (!split.truncated.empty()) return undecided();
    res.verdict = Verdict::kProven;
    return;
  }
  detail::ContextLease lease;  // one context per property check, or the thread's kept one
  z3::context& c = lease.get();
  const z3::expr gpa = c.bv_const("gpa", 64);
  const z3::expr gpa2 = c.bv_const("gpa2", 64);
  const bool iso = job.property == Property::kIsolation;
  const bool dec = opt.decompose;
  const model::OwnerMap* owners = iso ? job.spec.owners : nullptr;
  // The tags keep the unknown contents of absent frames apart per side, even for equal names.
  detail::Encoder ea(c, *job.a, "a." + job.a->ref().name, gpa, owners, job.spec.vm, dec);
  detail::Encoder ea2(c, *job.a, "a2." + job.a->ref().name, gpa2, owners, job.spec.vm, dec);
  std::optional<detail::Encoder> eb;
  if (job.b != nullptr) eb.emplace(c, *job.b, "b." + job.b->ref().name, gpa, nullptr, 0, dec);
  const std::uint64_t limit = job.b != nullptr ? std::min(job.a->limit(), job.b->limit()) : job.a->limit();

  bool unknown = false;
  std::size_t i = 0;
  while (i < obs.size()) {
    const double left = opt.timeout_s - since(job.start);
    if (left <= 0) {
      unknown = true;
      res.unknown_reason = "timeout after " + std::to_string(res.stats.z3_queries) + " Z3 queries (" +
                           std::to_string(obs.size() - i) + " regions left)";
      break;
    }
    // One batch: consecutive regions up to the per-query limits.
    std::size_t nf = 0, nl = 0, j = i;
    while (j < obs.size() && nf < opt.faithful_per_query && nl < opt.linear_per_query) {
      (obs[j].linear() ? nl : nf) += 1;
      ++j;
    }
    z3::solver s(c, "QF_BV");  // the logic solver starts ~15x faster than the default one
    z3::params p(c);
    p.set("timeout", static_cast<unsigned>(std::max(1.0, left * 1000.0)));
    if (opt.rlimit != 0) p.set("rlimit", opt.rlimit);
    s.set(p);
    s.add(z3::ult(gpa, c.bv_val(limit, 64)));
    s.add(z3::ult(gpa2, c.bv_val(limit, 64)));
    z3::expr_vector cases(c);
    for (std::size_t k = i; k < j; ++k)
      cases.push_back(violation(job, obs[k], ea, eb ? &*eb : nullptr, &ea2, gpa, gpa2));
    s.add(z3::mk_or(cases));
    ++res.stats.z3_queries;
    const z3::check_result r = s.check();
    if (r == z3::sat) {
      const z3::model m = s.get_model();
      const std::uint64_t g1 = m.eval(gpa, true).get_numeral_uint64();
      const std::uint64_t g2 = m.eval(gpa2, true).get_numeral_uint64();
      std::size_t hit = i;
      for (std::size_t k = i; k < j; ++k)
        if (m.eval(cases[static_cast<int>(k - i)], true).is_true()) {
          hit = k;
          break;
        }
      res.verdict = Verdict::kRefuted;
      res.counterexample = make_counterexample(job, obs[hit].pred, g1, g2);
      if (opt.keep_smt2) res.smt2 = s.to_smt2("sat");
      res.stats.z3_s = since(t0);
      return;
    }
    if (r == z3::unknown) {
      unknown = true;
      res.unknown_reason = "Z3: " + s.reason_unknown();
      if (opt.keep_smt2) res.smt2 = s.to_smt2("unknown");
    }
    i = j;
  }
  res.stats.z3_s = since(t0);
  res.verdict = unknown ? Verdict::kUnknown : Verdict::kProven;
  if (res.verdict == Verdict::kProven && !split.truncated.empty()) undecided();
}

// Fills the summary line and timing of a finished job.
PropertyResult finish(Job& job) {
  PropertyResult& r = job.result;
  r.seconds = since(job.start);
  const DecompositionStats& s = r.stats;
  char buf[320];
  if (r.verdict == Verdict::kRefuted && r.counterexample) {
    r.summary = r.counterexample->explanation;
  } else if (r.verdict == Verdict::kUnknown) {
    r.summary = "unknown: " + r.unknown_reason;
  } else {
    std::snprintf(buf, sizeof buf,
                  "%llu identical, %llu trivial, %llu linear relation(s)%s, %llu irregular region(s); %llu Z3 quer%s",
                  static_cast<unsigned long long>(s.identical), static_cast<unsigned long long>(s.trivial),
                  static_cast<unsigned long long>(s.linear),
                  s.linear_cpp != 0 ? (" (" + std::to_string(s.linear_cpp) + " by C++)").c_str() : "",
                  static_cast<unsigned long long>(s.faithful), static_cast<unsigned long long>(s.z3_queries),
                  s.z3_queries == 1 ? "y" : "ies");
    r.summary = buf;
  }
  return r;
}

// Starts a job.
Job start_job(Property p, const CheckOptions& opt) {
  Job j;
  j.property = p;
  j.opt = &opt;
  j.start = Clock::now();
  j.result.property = p;
  return j;
}

// Returns an error when two trees cannot be compared.
Result<void> validate_pair(const TreeRef& a, const TreeRef& b) {
  BATON_TRY_VOID(detail::validate_tree(a, true));
  BATON_TRY_VOID(detail::validate_tree(b, true));
  if (a.cfg.maxphyaddr != b.cfg.maxphyaddr)
    return make_error(a.name + " has MAXPHYADDR " + std::to_string(a.cfg.maxphyaddr) + " and " + b.name + " has " +
                      std::to_string(b.cfg.maxphyaddr) + ": the trees translate different GPA widths");
  if (!(a.cfg == b.cfg))
    return make_error(a.name + " and " + b.name +
                      " have different EPT capabilities (execute-only / mode-based execute)");
  return ok_result();
}

// Splits the work of a job in a timed step.
template <typename F>
Split timed_split(F&& f) {
  const auto t0 = Clock::now();
  Split s = f();
  s.stats.decompose_s = since(t0);
  return s;
}

}  // namespace

Result<PropertyResult> check_equivalence(const TreeRef& a, const TreeRef& b, const CheckOptions& opt) {
  BATON_TRY_VOID(validate_pair(a, b));
  Job job = start_job(Property::kEquivalence, opt);
  TreeView va(a), vb(b);
  job.a = &va;
  job.b = &vb;
  solve(job, timed_split([&] { return detail::split_pair(va, vb, Pred::kSame, opt); }));
  return finish(job);
}

Result<PropertyResult> check_refinement(const TreeRef& before, const TreeRef& after,
                                        const std::vector<model::Memslot>& spec, const CheckOptions& opt) {
  BATON_TRY_VOID(validate_pair(before, after));
  if (std::string why = model::validate_memslots(spec); !why.empty()) return make_error("memslots: " + why);
  Job job = start_job(Property::kRefinement, opt);
  TreeView va(before), vb(after);
  job.a = &va;
  job.b = &vb;
  job.spec.slots = &spec;
  Split split = timed_split([&] { return detail::split_pair(va, vb, Pred::kSubset, opt); });
  // The spec part: every translation of `after` conforms. Its regions name `after` as tree a.
  Job conform = start_job(Property::kRefinement, opt);
  conform.a = &vb;
  conform.spec.slots = &spec;
  Split cs = timed_split([&] { return detail::split_single(vb, Pred::kConform, conform.spec, opt); });
  // Solve the subset part first, then (if it held) the conformance part with `after` as tree a.
  solve(job, std::move(split));
  if (job.result.verdict != Verdict::kRefuted) {
    conform.start = job.start;
    const Verdict first = job.result.verdict;
    const std::string first_reason = job.result.unknown_reason;
    solve(conform, std::move(cs));
    DecompositionStats s = job.result.stats;
    job.result = conform.result;
    job.result.property = Property::kRefinement;
    const DecompositionStats& m = conform.result.stats;
    s.pages += m.pages;
    s.identical += m.identical;
    s.trivial += m.trivial;
    s.linear += m.linear;
    s.linear_cpp += m.linear_cpp;
    s.faithful += m.faithful;
    s.z3_queries += m.z3_queries;
    s.decompose_s += m.decompose_s;
    s.z3_s += m.z3_s;
    job.result.stats = s;
    if (job.result.verdict == Verdict::kProven && first == Verdict::kUnknown) {
      job.result.verdict = Verdict::kUnknown;
      job.result.unknown_reason = first_reason;
    }
  }
  return finish(job);
}

Result<PropertyResult> check_conformance(const TreeRef& t, const std::vector<model::Memslot>& slots,
                                         const CheckOptions& opt) {
  BATON_TRY_VOID(detail::validate_tree(t, true));
  if (std::string why = model::validate_memslots(slots); !why.empty()) return make_error("memslots: " + why);
  Job job = start_job(Property::kConformance, opt);
  TreeView v(t);
  job.a = &v;
  job.spec.slots = &slots;
  solve(job, timed_split([&] { return detail::split_single(v, Pred::kConform, job.spec, opt); }));
  return finish(job);
}

Result<PropertyResult> check_isolation(const TreeRef& t, const model::OwnerMap& owners, std::uint32_t vm,
                                       const CheckOptions& opt) {
  BATON_TRY_VOID(detail::validate_tree(t, true));
  if (owners.ranges().empty()) return make_error(t.name + ": isolation needs an owner map, and this one is empty");
  Job job = start_job(Property::kIsolation, opt);
  TreeView v(t);
  job.a = &v;
  job.spec.owners = &owners;
  job.spec.vm = vm;
  Split split = timed_split([&] {
    Split s = detail::split_single(v, Pred::kIsolated, job.spec, opt);
    std::vector<Obligation> alias = detail::alias_obligations(v, std::move(s.pieces), 64);
    s.pieces.clear();
    s.stats.faithful += alias.size();
    s.obligations.insert(s.obligations.end(), alias.begin(), alias.end());
    return s;
  });
  solve(job, std::move(split));
  return finish(job);
}

Result<PropertyResult> check_wellformed(const TreeRef& t, const std::vector<model::GpaRange>& mmio,
                                        const CheckOptions& opt) {
  BATON_TRY_VOID(detail::validate_tree(t, false));
  Job job = start_job(Property::kWellFormed, opt);
  job.spec.mmio = &mmio;
  // The EPTP first: without a valid EPTP, VM entry fails and the tree is never walked.
  {
    detail::ContextLease lease;
    z3::context& c = lease.get();
    z3::solver s(c, "QF_BV");  // the logic solver starts ~15x faster than the default one
    const z3::expr eptp = c.bv_const("eptp", 64);
    s.add(eptp == c.bv_val(t.eptp.raw(), 64));
    s.add(!detail::eptp_valid(eptp, t.cfg));
    ++job.result.stats.z3_queries;
    if (s.check() == z3::sat) {
      job.result.verdict = Verdict::kRefuted;
      Counterexample cx;
      cx.field = "eptp";
      cx.before = hex(t.eptp.raw());
      const std::string why = t.eptp.validate(t.cfg);
      cx.confirmed_concretely = !why.empty();
      cx.explanation = t.name + ": the EPTP " + hex(t.eptp.raw()) + " is invalid" + (why.empty() ? "" : ": " + why);
      job.result.counterexample = cx;
      if (opt.keep_smt2) job.result.smt2 = s.to_smt2("sat");
      return finish(job);
    }
  }
  TreeView v(t);
  job.a = &v;
  Split split = timed_split([&] { return detail::split_single(v, Pred::kWellFormed, job.spec, opt); });
  const std::uint64_t eptp_queries = job.result.stats.z3_queries;
  solve(job, std::move(split));
  job.result.stats.z3_queries += eptp_queries;
  return finish(job);
}

}  // namespace baton::checker
