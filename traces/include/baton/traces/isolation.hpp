// The isolation replay of a foreign capture (docs/trace-format.md, "Isolation replay"): the
// mapping events of every VM in a trace, applied in order to one model of the host's frames.
// At every ept-set no host frame may be mapped by two VMs at once, unless they are the
// declared migration pair; ept-clear events (unmaps, zaps, SPTEs made non-present) release
// frames. At the handover (the destination's first mapping) the pair must satisfy no-copy:
// every gfn both map, they map to the same frame.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "baton/model/result.hpp"
#include "baton/traces/trace.hpp"

namespace baton::traces {

// The first frame two VMs held at once.
struct IsolationViolation {
  std::uint64_t pfn = 0;
  std::uint32_t vm_a = 0, vm_b = 0;     // the VM that held it first, the one that mapped it too
  std::uint64_t gfn_a = 0, gfn_b = 0;   // through which gfns
  std::size_t event_a = 0, event_b = 0;  // the two installing events
};

// The no-copy relation of the declared pair at the handover.
struct HandoverCheck {
  std::size_t event = 0;              // the destination's first mapping event (the handover)
  std::uint64_t source_frames = 0;    // gfns the source mapped then
  std::uint64_t dest_frames = 0;      // gfns the destination mapped by the end
  std::uint64_t shared = 0;           // gfns both mapped
  std::uint64_t differing = 0;        // of those, mapped to different frames
  std::optional<std::uint64_t> first_gfn;  // the first differing gfn, with both frames
  std::uint64_t source_pfn = 0, dest_pfn = 0;
};

struct IsolationReport {
  std::size_t events = 0;          // mapping events applied (all VMs)
  std::size_t vm_events = 0;       // of those, the chosen VM's
  std::size_t clears = 0;          // ept-clear events applied
  std::uint64_t peak_frames = 0;   // the most frames the chosen VM held at once
  std::optional<IsolationViolation> violation;
  std::optional<HandoverCheck> handover;  // with a pair whose destination mapped anything
};

// Replays the mapping events of `t`, checking the frames of VM `vm` against every other VM
// (and, with `pair` = (source, destination), allowing those two to share and checking no-copy
// at the handover). Errors: `vm` or a VM of the pair has no mapping events.
Result<IsolationReport> replay_isolation(const Trace& t, std::uint32_t vm,
                                         std::optional<std::pair<std::uint32_t, std::uint32_t>> pair = std::nullopt);

}  // namespace baton::traces
