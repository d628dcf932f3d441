// The trace of the known-answer file tests/traces/data/known-answer.trace, built by hand: a
// header and five events of different types in one chunk. The file's bytes were checked field
// by field against docs/trace-format.md with scripts/check-format-kat.py (docs/testing.md,
// "Known-answer files").
#pragma once

#include "baton/traces/trace.hpp"

namespace baton::testing {

// The hand-built trace that the known-answer file holds.
inline traces::Trace known_answer_trace() {
  using namespace baton::traces;
  Trace t;
  t.header.source = "baton-sim";
  t.header.guest = "io";
  t.header.params = {{"pages", "4k"}};
  t.header.cost_profile = "";
  t.header.time_unit = "cycles";
  t.header.meta = {{"note", "known answer"}};
  t.events = {
      exit_event(1, 100, 10, 48, 0x181, 0x5000, 0x401000),  // EPT violation at gpa 0x5000
      ept_set_event(1, 200, 0x5, 0x1005, 1, 7),               // gfn 5 -> pfn 0x1005, rwx
      io_event(1, 300, 20, 0x510, false, 4, 0xCAFE),          // OUT of 4 bytes to port 0x510
      sync_event(1, 400, 30, 2),                              // sync point, stage 2
      ept_clear_event(1, 500, 0x200, 2),                      // gfns [0x200, 0x400) unmapped
  };
  return t;
}

}  // namespace baton::testing
