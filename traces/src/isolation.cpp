// The isolation replay of a foreign capture (include/baton/traces/isolation.hpp).
#include "baton/traces/isolation.hpp"

#include <map>
#include <set>
#include <unordered_map>
#include <vector>

namespace baton::traces {

namespace {

// One leaf a VM holds: `frames` gfns from its key gfn, to frames from `pfn`.
struct Leaf {
  std::uint64_t pfn = 0, frames = 1;
  std::size_t event = 0;
};

// Who holds a host frame: the VM, through which gfn, installed by which event.
struct Holder {
  std::uint32_t vm = 0;
  std::uint64_t gfn = 0;
  std::size_t event = 0;
};

// Frames a leaf of this level covers (1, 512, 262144); 0 for an unknown level.
std::uint64_t frames_of(std::uint32_t level) { return level == 1 ? 1 : level == 2 ? 512 : level == 3 ? 262144 : 0; }

class HostModel {
 public:
  // Removes VM `vm`'s leaves overlapping [gfn, gfn + n) and releases their frames.
  void remove(std::uint32_t vm, std::uint64_t gfn, std::uint64_t n) {
    auto& m = leaves_[vm];
    auto it = m.lower_bound(gfn >= 262144 ? gfn - 262143 : 0);
    while (it != m.end() && it->first < gfn + n) {
      if (it->first + it->second.frames <= gfn) {
        ++it;
        continue;
      }
      for (std::uint64_t k = 0; k < it->second.frames; ++k) release(vm, it->second.pfn + k);
      held_[vm] -= it->second.frames;
      it = m.erase(it);
    }
  }
  // Installs a leaf; returns the first other VM's holder of one of its frames, if any
  // (excluding `allowed`), after installing it anyway.
  std::optional<std::pair<Holder, std::uint64_t>> install(std::uint32_t vm, std::uint64_t gfn, std::uint64_t pfn,
                                                          std::uint64_t n, std::size_t event,
                                                          const std::set<std::uint32_t>& watched,
                                                          const std::set<std::uint32_t>& allowed) {
    std::optional<std::pair<Holder, std::uint64_t>> clash;
    leaves_[vm][gfn] = Leaf{pfn, n, event};
    held_[vm] += n;
    for (std::uint64_t k = 0; k < n; ++k) {
      std::vector<Holder>& hs = holders_[pfn + k];
      if (!clash)
        for (const Holder& h : hs)
          if (h.vm != vm && (watched.count(h.vm) || watched.count(vm)) && !(allowed.count(h.vm) && allowed.count(vm))) {
            clash = std::make_pair(h, pfn + k);
            break;
          }
      hs.push_back(Holder{vm, gfn + k, event});
    }
    return clash;
  }
  // The gfn -> pfn map of one VM, frame by frame.
  std::map<std::uint64_t, std::uint64_t> frames(std::uint32_t vm) const {
    std::map<std::uint64_t, std::uint64_t> out;
    auto it = leaves_.find(vm);
    if (it == leaves_.end()) return out;
    for (const auto& [g, l] : it->second)
      for (std::uint64_t k = 0; k < l.frames; ++k) out[g + k] = l.pfn + k;
    return out;
  }
  std::uint64_t held(std::uint32_t vm) const {
    auto it = held_.find(vm);
    return it == held_.end() ? 0 : it->second;
  }

 private:
  void release(std::uint32_t vm, std::uint64_t pfn) {
    auto it = holders_.find(pfn);
    if (it == holders_.end()) return;
    std::vector<Holder>& hs = it->second;
    for (auto h = hs.begin(); h != hs.end(); ++h)
      if (h->vm == vm) {
        hs.erase(h);
        break;
      }
    if (hs.empty()) holders_.erase(it);
  }

  std::map<std::uint32_t, std::map<std::uint64_t, Leaf>> leaves_;
  std::unordered_map<std::uint64_t, std::vector<Holder>> holders_;
  std::map<std::uint32_t, std::uint64_t> held_;
};

}  // namespace

Result<IsolationReport> replay_isolation(const Trace& t, std::uint32_t vm,
                                         std::optional<std::pair<std::uint32_t, std::uint32_t>> pair) {
  std::set<std::uint32_t> mapping_vms;
  for (const TraceEvent& e : t.events)
    if (e.type == EventType::kEptSet) mapping_vms.insert(e.vm);
  auto need = [&](std::uint32_t v, const char* what) -> Result<void> {
    if (mapping_vms.count(v)) return ok_result();
    std::string have;
    for (std::uint32_t x : mapping_vms) have += (have.empty() ? "" : ", ") + std::to_string(x);
    return make_error(std::string(what) + " " + std::to_string(v) + " has no mapping events in the trace (VMs with some: " +
                      (have.empty() ? "none" : have) + ")");
  };
  BATON_TRY_VOID(need(vm, "--vm"));
  std::set<std::uint32_t> allowed;
  if (pair) {
    BATON_TRY_VOID(need(pair->first, "--pair source"));
    if (pair->first == pair->second) return make_error("--pair: the source and the destination are the same VM");
    allowed = {pair->first, pair->second};
  }
  const std::set<std::uint32_t> watched = {vm};
  IsolationReport rep;
  HostModel host;
  std::map<std::uint64_t, std::uint64_t> source_at_handover;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const TraceEvent& e = t.events[i];
    if (e.type != EventType::kEptSet && e.type != EventType::kEptClear) continue;
    const std::uint64_t n = frames_of(e.code);
    if (n == 0) continue;  // the importer drops unknown levels; nothing to apply
    ++rep.events;
    if (e.vm == vm) ++rep.vm_events;
    if (e.type == EventType::kEptClear) {
      ++rep.clears;
      host.remove(e.vm, e.a, n);
      continue;
    }
    if (pair && e.vm == pair->second && !rep.handover) {
      rep.handover = HandoverCheck{};
      rep.handover->event = i;
      source_at_handover = host.frames(pair->first);
    }
    host.remove(e.vm, e.a, n);
    auto clash = host.install(e.vm, e.a, e.b, n, i, watched, allowed);
    if (e.vm == vm) rep.peak_frames = std::max(rep.peak_frames, host.held(vm));
    if (clash && !rep.violation) {
      IsolationViolation v;
      v.pfn = clash->second;
      v.vm_a = clash->first.vm;
      v.gfn_a = clash->first.gfn;
      v.event_a = clash->first.event;
      v.vm_b = e.vm;
      v.gfn_b = e.a + (clash->second - e.b);
      v.event_b = i;
      rep.violation = v;
    }
  }
  if (rep.handover) {
    HandoverCheck& h = *rep.handover;
    const auto dest = host.frames(pair->second);
    h.source_frames = source_at_handover.size();
    h.dest_frames = dest.size();
    for (const auto& [g, p] : dest) {
      auto s = source_at_handover.find(g);
      if (s == source_at_handover.end()) continue;
      ++h.shared;
      if (s->second != p) {
        if (!h.first_gfn) {
          h.first_gfn = g;
          h.source_pfn = s->second;
          h.dest_pfn = p;
        }
        ++h.differing;
      }
    }
  }
  return rep;
}

}  // namespace baton::traces
