// baton replay (cli/cmd_replay.cpp, cli/cmd_replay_foreign.cpp): options shared by the replay
// of a baton guest's trace and the isolation replay of a foreign capture.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "baton/traces/trace.hpp"

namespace baton::cli {

struct ReplayCmd {
  std::string trace;
  std::optional<std::uint32_t> vm;  // foreign capture: the VMM pid replayed
  std::string pair;                 // foreign capture: "SRC:DST", the declared migration pair
  std::string save_replay;
  bool json_out = false;
};

// Replays a foreign capture's mapping events with the isolation check (cli/cmd_replay_foreign.cpp).
void replay_foreign(const ReplayCmd& o);

}  // namespace baton::cli
