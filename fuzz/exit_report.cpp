// Linked into the libFuzzer builds only: when the fuzzer exits (after -runs or
// -max_total_time), prints how many inputs reached the decoders and decoded in full, so that a
// long run shows it got past the container checks (docs/benchmarks.md, "Fuzzing").
#include <cstddef>
#include <cstdio>

extern "C" void BatonFuzzCounts(std::size_t* reached, std::size_t* decoded) __attribute__((weak));
extern "C" const char* BatonFuzzExtraCount(std::size_t* n) __attribute__((weak));

namespace {
// Prints the target's counts from its destructor, which runs at exit().
struct ExitReport {
  ~ExitReport() {
    if (BatonFuzzCounts == nullptr) return;
    std::size_t reached = 0, decoded = 0, extra = 0;
    BatonFuzzCounts(&reached, &decoded);
    if (BatonFuzzExtraCount != nullptr) (void)BatonFuzzExtraCount(&extra);
    // Nothing counted: the -jobs/-fork parent, which runs no input itself, stays quiet.
    if (reached == 0 && decoded == 0 && extra == 0) return;
    std::fprintf(stderr, "baton fuzz counts: %zu reached the decoders, %zu decoded", reached, decoded);
    if (BatonFuzzExtraCount != nullptr) {
      const char* what = BatonFuzzExtraCount(&extra);
      std::fprintf(stderr, ", %zu %s", extra, what);
    }
    std::fprintf(stderr, "\n");
  }
};
const ExitReport report;
}  // namespace
