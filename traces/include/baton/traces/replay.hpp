// Replay comparison (docs/trace-format.md, "Replay"): a recorded trace of a baton guest (on
// KVM or the simulator) against the simulator's trace of the same guest fed the recorded
// inputs. Compares the guest-visible sequence event by event (port accesses and values, sync
// points, the exit), values derived from time by their relations, the growth of the mapped
// guest frames at every sync point, and the migration timeline; reports the first divergence.
// Knows nothing of the guests: the port ABI comes in ReplayAbi.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "baton/traces/trace.hpp"

namespace baton::traces {

// The ports and result tags of the guests' port ABI that the comparison needs.
struct ReplayAbi {
  std::uint16_t result_tag = 0, result_lo = 0, result_hi = 0, input = 0;
  // Result tags whose values derive from time, compared by relations instead of equality:
  std::set<std::uint32_t> zero_iff_zero;  // zero on one side exactly when zero on the other (backward jumps)
  std::set<std::uint32_t> positive;       // greater than zero on both sides (gaps, elapsed time)
  std::vector<std::pair<std::uint32_t, std::uint32_t>> at_most;  // (a, b): value of a <= value of b on each side
};

// What kind of difference the first divergence is.
enum class DivergenceClass : std::uint8_t {
  kInput,   // the guest was given something else: an input value, the image
  kOutput,  // the guest did something else: a port access, a value, a sync point, the exit
  kMapping, // the mapped guest frames grew differently
  kTiming,  // a time-derived relation or the migration timeline differs
};
const char* to_string(DivergenceClass c);

// How the mapped-frame sets are compared.
enum class MappingMode : std::uint8_t {
  kNone,       // the recorded trace has no mapping events (a KVM run without --capture)
  kEquality,   // simulator against simulator: the same gfns at every sync point
  kInclusion,  // KVM against simulator: every gfn the simulator mapped, KVM mapped too (KVM may map more)
};
const char* to_string(MappingMode m);

struct ReplayOptions {
  ReplayAbi abi;
  // The n-th input the VMM should have answered (the seed's sequence), when known.
  std::function<std::optional<std::uint32_t>(std::uint64_t n)> expected_input;
  MappingMode mapping = MappingMode::kNone;
  std::size_t context = 5;  // recorded events shown before the divergence
};

// The first divergence. Indexes are event indexes in each trace; no recorded index means the
// header (the guest's identity).
struct Divergence {
  DivergenceClass cls = DivergenceClass::kOutput;
  std::optional<std::size_t> index;           // in the recorded trace
  std::optional<std::size_t> replayed_index;  // in the replayed trace
  std::string recorded, replayed;             // both sides, one line each ("(end of trace)" past the end)
  std::string why;
  std::vector<std::string> context;  // the last few recorded events before it ("INDEX: text")
};

struct ReplayReport {
  std::optional<Divergence> divergence;
  std::size_t compared = 0;         // guest-visible events that agreed
  std::size_t inputs = 0;           // recorded inputs checked against the expected sequence
  std::size_t time_relations = 0;   // time-derived results compared by relation
  std::size_t mapping_checks = 0;   // sync points (and the end) where the mapped sets were compared
  std::size_t timeline_phases = 0;  // migration milestones compared
  MappingMode mapping = MappingMode::kNone;
};

// Compares a recorded trace with its replay.
ReplayReport compare_replay(const Trace& recorded, const Trace& replayed, const ReplayOptions& opt);

// A divergence of the header: the rebuilt guest is not the recorded one.
Divergence header_divergence(const std::string& recorded, const std::string& replayed, const std::string& why);

}  // namespace baton::traces
