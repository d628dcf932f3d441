// Replay comparison (include/baton/traces/replay.hpp).
#include "baton/traces/replay.hpp"

#include <algorithm>
#include <cstdio>
#include <map>

namespace baton::traces {

namespace {

// Whether an event is part of the guest-visible sequence.
bool is_visible(const TraceEvent& e) { return e.type == EventType::kIo || e.type == EventType::kSync; }

// Whether an event is a port read.
bool is_in(const TraceEvent& e) { return e.type == EventType::kIo && (e.flags & kAccessIn) != 0; }

std::string hexs(std::uint64_t v) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%llx", static_cast<unsigned long long>(v));
  return b;
}

// The migration milestones the timelines are compared by (copy rounds and the state
// transfer's pieces differ by backend and by time, so they are not).
bool is_milestone(std::uint32_t code) {
  const auto p = static_cast<MigrationPhase>(code);
  return p == MigrationPhase::kStart || p == MigrationPhase::kPause || p == MigrationPhase::kResume ||
         p == MigrationPhase::kDone;
}

struct Milestone {
  std::uint32_t code = 0;
  std::size_t index = 0;    // event index
  std::size_t visible = 0;  // guest-visible events before it
};

// One trace walked in order: the mapped gfns of each VM (a VM is a side of the migration:
// by VM id when the guest-visible events come from two VMs, else by resumes seen) and the
// migration milestones.
class Cursor {
 public:
  explicit Cursor(const Trace& t) : t_(t) {
    for (const TraceEvent& e : t.events)
      if (is_visible(e) && !rank_.count(e.vm)) rank_.emplace(e.vm, static_cast<int>(rank_.size()));
    by_vm_ = rank_.size() >= 2;
    for (std::size_t i = 0; i < t.events.size(); ++i)
      if (is_visible(t.events[i])) visible_.push_back(i);
  }
  const std::vector<std::size_t>& visible() const { return visible_; }
  const std::map<int, std::set<std::uint64_t>>& mapped() const { return mapped_; }
  const std::vector<Milestone>& milestones() const { return milestones_; }
  bool has_copy_rounds() const { return copy_rounds_; }

  // Applies every event before index `end`.
  void advance_to(std::size_t end) {
    for (; next_ < end && next_ < t_.events.size(); ++next_) apply(next_);
  }

 private:
  void apply(std::size_t i) {
    const TraceEvent& e = t_.events[i];
    switch (e.type) {
      case EventType::kIo:
      case EventType::kSync: ++seen_; break;
      case EventType::kMigrationPhase:
        if (e.code == static_cast<std::uint32_t>(MigrationPhase::kCopyRound)) copy_rounds_ = true;
        if (is_milestone(e.code)) milestones_.push_back(Milestone{e.code, i, seen_});
        if (e.code == static_cast<std::uint32_t>(MigrationPhase::kResume)) ++epoch_;
        break;
      case EventType::kEptSet: {
        int side = epoch_;
        if (by_vm_) {
          auto it = rank_.find(e.vm);
          if (it == rank_.end()) return;  // a VM that never ran the guest
          side = it->second;
        }
        const std::uint64_t n = e.code == 3 ? 262144 : e.code == 2 ? 512 : 1;
        std::set<std::uint64_t>& s = mapped_[side];
        for (std::uint64_t g = e.a; g < e.a + n; ++g) s.insert(g);
        break;
      }
      default: break;
    }
  }

  const Trace& t_;
  std::map<std::uint32_t, int> rank_;
  bool by_vm_ = false;
  std::vector<std::size_t> visible_;
  std::size_t next_ = 0, seen_ = 0;
  int epoch_ = 0;
  bool copy_rounds_ = false;
  std::map<int, std::set<std::uint64_t>> mapped_;
  std::vector<Milestone> milestones_;
};

// The per-side state of the result ports: the latched tag and low half, the time-derived
// values reported so far.
struct ResultLatch {
  std::uint64_t tag = 0, lo = 0;
  std::map<std::uint32_t, std::uint64_t> time_values;
};

}  // namespace

const char* to_string(DivergenceClass c) {
  switch (c) {
    case DivergenceClass::kInput: return "input";
    case DivergenceClass::kOutput: return "guest-visible output";
    case DivergenceClass::kMapping: return "mapping";
    case DivergenceClass::kTiming: return "timing";
  }
  return "?";
}

const char* to_string(MappingMode m) {
  switch (m) {
    case MappingMode::kNone: return "none";
    case MappingMode::kEquality: return "equality";
    case MappingMode::kInclusion: return "inclusion";
  }
  return "?";
}

Divergence header_divergence(const std::string& recorded, const std::string& replayed, const std::string& why) {
  Divergence d;
  d.cls = DivergenceClass::kInput;
  d.recorded = recorded;
  d.replayed = replayed;
  d.why = why;
  return d;
}

ReplayReport compare_replay(const Trace& recorded, const Trace& replayed, const ReplayOptions& opt) {
  ReplayReport rep;
  rep.mapping = opt.mapping;
  Cursor cr(recorded), cs(replayed);
  const std::vector<std::size_t>& vr = cr.visible();
  const std::vector<std::size_t>& vs = cs.visible();
  auto diverge = [&](DivergenceClass cls, std::optional<std::size_t> ri, std::optional<std::size_t> si,
                     std::string why) {
    Divergence d;
    d.cls = cls;
    d.index = ri;
    d.replayed_index = si;
    d.recorded = ri ? describe(recorded.events[*ri]) : "(end of trace)";
    d.replayed = si ? describe(replayed.events[*si]) : "(end of trace)";
    d.why = std::move(why);
    const std::size_t end = ri ? *ri : recorded.events.size();
    for (std::size_t i = end > opt.context ? end - opt.context : 0; i < end; ++i)
      d.context.push_back(std::to_string(i) + ": " + describe(recorded.events[i]));
    rep.divergence = std::move(d);
    return rep;
  };
  // Compares the mapped sets of every side; returns the reason for a difference, or "".
  auto mapping_difference = [&]() -> std::string {
    for (const auto& [side, sim] : cs.mapped()) {
      static const std::set<std::uint64_t> kEmpty;
      auto it = cr.mapped().find(side);
      const std::set<std::uint64_t>& rec = it == cr.mapped().end() ? kEmpty : it->second;
      for (std::uint64_t g : sim)
        if (!rec.count(g))
          return "VM " + std::to_string(side) + ": gfn " + hexs(g) + " is mapped in the replay but not in the recording (" +
                 std::to_string(rec.size()) + " gfns recorded, " + std::to_string(sim.size()) + " replayed)";
      if (opt.mapping == MappingMode::kEquality && rec.size() != sim.size())
        for (std::uint64_t g : rec)
          if (!sim.count(g))
            return "VM " + std::to_string(side) + ": gfn " + hexs(g) + " is mapped in the recording but not in the replay";
    }
    if (opt.mapping == MappingMode::kEquality)
      for (const auto& [side, rec] : cr.mapped())
        if (!cs.mapped().count(side) && !rec.empty())
          return "VM " + std::to_string(side) + ": " + std::to_string(rec.size()) + " gfns recorded, none replayed";
    return "";
  };
  auto is_time_tag = [&](std::uint64_t tag) {
    const auto t = static_cast<std::uint32_t>(tag);
    if (opt.abi.zero_iff_zero.count(t) || opt.abi.positive.count(t)) return true;
    return std::any_of(opt.abi.at_most.begin(), opt.abi.at_most.end(),
                       [t](const auto& p) { return p.first == t || p.second == t; });
  };
  ResultLatch lr, ls;
  std::uint64_t inputs = 0;
  const std::size_t n = std::max(vr.size(), vs.size());
  for (std::size_t k = 0; k < n; ++k) {
    if (k >= vr.size())
      return diverge(DivergenceClass::kOutput, std::nullopt, vs[k], "the replay goes on after the recording ends");
    if (k >= vs.size())
      return diverge(is_in(recorded.events[vr[k]]) ? DivergenceClass::kInput : DivergenceClass::kOutput, vr[k],
                     std::nullopt, "the replay ended before this recorded event");
    const std::size_t ri = vr[k], si = vs[k];
    cr.advance_to(ri + 1);
    cs.advance_to(si + 1);
    const TraceEvent& re = recorded.events[ri];
    const TraceEvent& se = replayed.events[si];
    const DivergenceClass cls = is_in(re) || is_in(se) ? DivergenceClass::kInput : DivergenceClass::kOutput;
    if (is_in(re) && re.code == opt.abi.input) {
      const std::uint64_t nth = inputs++;
      ++rep.inputs;
      if (opt.expected_input)
        if (auto want = opt.expected_input(nth); want && *want != static_cast<std::uint32_t>(re.a))
          return diverge(DivergenceClass::kInput, ri, si,
                         "input number " + std::to_string(nth) + " was " + hexs(re.a) + ", but the input sequence gives " +
                             hexs(*want));
    }
    if (re.type != se.type) return diverge(cls, ri, si, "a different kind of event");
    if (re.type == EventType::kSync) {
      if (re.a != se.a) return diverge(DivergenceClass::kOutput, ri, si, "a different sync point");
    } else {
      if (re.code != se.code || (re.flags & kAccessIn) != (se.flags & kAccessIn) ||
          (re.flags >> kAccessSizeShift & 0xff) != (se.flags >> kAccessSizeShift & 0xff))
        return diverge(cls, ri, si, "a different port access");
      const bool out = (re.flags & kAccessIn) == 0;
      bool by_relation = false;
      if (out && re.code == opt.abi.result_lo && is_time_tag(lr.tag) && lr.tag == ls.tag) {
        lr.lo = re.a;
        ls.lo = se.a;
        by_relation = true;
      } else if (out && re.code == opt.abi.result_hi && is_time_tag(lr.tag) && lr.tag == ls.tag) {
        const auto tag = static_cast<std::uint32_t>(lr.tag);
        const std::uint64_t a = (lr.lo & 0xffffffffu) | re.a << 32, b = (ls.lo & 0xffffffffu) | se.a << 32;
        ++rep.time_relations;
        std::string bad;
        if (opt.abi.zero_iff_zero.count(tag) && (a == 0) != (b == 0))
          bad = "result tag " + std::to_string(tag) + " is " + hexs(a) + " recorded and " + hexs(b) +
                " replayed: zero on one side only";
        if (opt.abi.positive.count(tag) && (a == 0 || b == 0))
          bad = "result tag " + std::to_string(tag) + " is " + hexs(a) + " recorded and " + hexs(b) +
                " replayed: it must be positive on both sides";
        lr.time_values[tag] = a;
        ls.time_values[tag] = b;
        for (const auto& [x, y] : opt.abi.at_most)
          for (const ResultLatch* l : {&lr, &ls})
            if (bad.empty() && l->time_values.count(x) && l->time_values.count(y) && l->time_values.at(x) > l->time_values.at(y))
              bad = std::string(l == &lr ? "recorded" : "replayed") + ": result tag " + std::to_string(x) + " (" +
                    hexs(l->time_values.at(x)) + ") exceeds result tag " + std::to_string(y) + " (" +
                    hexs(l->time_values.at(y)) + ")";
        if (!bad.empty()) return diverge(DivergenceClass::kTiming, ri, si, bad);
        lr.tag = ls.tag = 0;  // a commit clears the latched tag
        by_relation = true;
      }
      if (!by_relation && re.a != se.a) return diverge(cls, ri, si, "a different value");
      if (out && re.code == opt.abi.result_tag) {
        lr.tag = re.a;
        ls.tag = se.a;
      } else if (out && re.code == opt.abi.result_hi) {
        lr.tag = ls.tag = 0;
      }
    }
    ++rep.compared;
    if (re.type == EventType::kSync && opt.mapping != MappingMode::kNone) {
      ++rep.mapping_checks;
      if (std::string why = mapping_difference(); !why.empty())
        return diverge(DivergenceClass::kMapping, ri, si, "by this sync point: " + why);
    }
  }
  cr.advance_to(recorded.events.size());
  cs.advance_to(replayed.events.size());
  if (opt.mapping != MappingMode::kNone) {
    ++rep.mapping_checks;
    if (std::string why = mapping_difference(); !why.empty())
      return diverge(DivergenceClass::kMapping, std::nullopt, std::nullopt, "at the end: " + why);
  }
  // The timeline: the same milestones in the same order; the migration point at the same place
  // in the guest-visible sequence (with precopy the guest runs on during the rounds, so only the
  // start is compared there).
  const auto& mr = cr.milestones();
  const auto& ms = cs.milestones();
  const bool precopy = cr.has_copy_rounds() || cs.has_copy_rounds();
  for (std::size_t i = 0; i < std::max(mr.size(), ms.size()); ++i) {
    const std::optional<std::size_t> ri = i < mr.size() ? std::optional(mr[i].index) : std::nullopt;
    const std::optional<std::size_t> si = i < ms.size() ? std::optional(ms[i].index) : std::nullopt;
    if (!ri || !si) return diverge(DivergenceClass::kTiming, ri, si, "the migration timelines have different milestones");
    if (mr[i].code != ms[i].code) return diverge(DivergenceClass::kTiming, ri, si, "a different migration milestone");
    const bool placed = mr[i].code == static_cast<std::uint32_t>(MigrationPhase::kStart) || !precopy;
    if (placed && mr[i].code != static_cast<std::uint32_t>(MigrationPhase::kDone) && mr[i].visible != ms[i].visible)
      return diverge(DivergenceClass::kTiming, ri, si,
                     "the milestone comes after " + std::to_string(mr[i].visible) + " guest-visible events recorded, " +
                         std::to_string(ms[i].visible) + " replayed");
    ++rep.timeline_phases;
  }
  return rep;
}

}  // namespace baton::traces
