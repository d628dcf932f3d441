// A standalone driver for libFuzzer targets, used where libFuzzer is not linked: it feeds
// every file of the given corpus directories, then bounded deterministic mutations of them
// (bit flips, truncations, byte overwrites), to LLVMFuzzerTestOneInput.
//
// Usage: TARGET [--iterations N] [--min-reached N] [--min-decoded N] [--min-extra N] CORPUS...
// A corpus path that does not exist, or a directory without files, is an error: a smoke run
// over nothing would pass vacuously. A target may count its inputs (BatonFuzzCounts): those
// that got past the container checks (magic, lengths, checksums) into the decoders behind
// them, and those that decoded in full; --min-reached and --min-decoded fail the run when
// fewer than N did, so that mutations demonstrably reach the decoders. A target with a second
// input format may count a third thing (BatonFuzzExtraCount, e.g. inputs parsed as ftrace
// text), which --min-extra bounds likewise.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);
// The inputs so far that reached the decoders and that decoded; defined by targets that count.
extern "C" void BatonFuzzCounts(std::size_t* reached, std::size_t* decoded) __attribute__((weak));
// A third count and what it counts; defined by targets with a second input format.
extern "C" const char* BatonFuzzExtraCount(std::size_t* n) __attribute__((weak));

int main(int argc, char** argv) {
  long iterations = 1000;
  long min_reached = -1, min_decoded = -1, min_extra = -1;
  std::size_t corpus_files = 0;
  std::vector<std::vector<std::uint8_t>> corpus;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    if (std::strcmp(argv[i], "--min-reached") == 0 && i + 1 < argc) {
      min_reached = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    if (std::strcmp(argv[i], "--min-decoded") == 0 && i + 1 < argc) {
      min_decoded = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    if (std::strcmp(argv[i], "--min-extra") == 0 && i + 1 < argc) {
      min_extra = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    std::filesystem::path p(argv[i]);
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (std::filesystem::is_regular_file(p)) {
      files.push_back(p);
    } else {
      std::fprintf(stderr, "baton: fuzz corpus %s does not exist\n", argv[i]);
      return 1;
    }
    if (files.empty()) {
      std::fprintf(stderr, "baton: fuzz corpus directory %s holds no file\n", argv[i]);
      return 1;
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
      ++corpus_files;
    }
  }
  if ((min_reached >= 0 || min_decoded >= 0) && BatonFuzzCounts == nullptr) {
    std::fprintf(stderr, "baton: --min-reached/--min-decoded given but this target does not count its inputs\n");
    return 1;
  }
  if (min_extra >= 0 && BatonFuzzExtraCount == nullptr) {
    std::fprintf(stderr, "baton: --min-extra given but this target has no third count\n");
    return 1;
  }
  corpus.emplace_back();  // the empty input
  std::mt19937_64 rng(12345);
  long runs = 0;
  for (const auto& c : corpus) {
    LLVMFuzzerTestOneInput(c.data(), c.size());
    ++runs;
  }
  for (long it = 0; it < iterations; ++it) {
    std::vector<std::uint8_t> d = corpus[rng() % corpus.size()];
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < n; ++k) {
      switch (rng() % 4) {
        case 0: if (!d.empty()) d[rng() % d.size()] ^= static_cast<std::uint8_t>(1u << (rng() % 8)); break;
        case 1: if (!d.empty()) d.resize(rng() % d.size()); break;
        case 2: if (!d.empty()) d[rng() % d.size()] = static_cast<std::uint8_t>(rng()); break;
        case 3: d.push_back(static_cast<std::uint8_t>(rng())); break;
      }
    }
    LLVMFuzzerTestOneInput(d.data(), d.size());
    ++runs;
  }
  if (BatonFuzzCounts == nullptr) {
    std::printf("fuzz smoke: %ld inputs from %zu corpus files, no crash\n", runs, corpus_files);
    return 0;
  }
  std::size_t reached = 0, decoded = 0;
  BatonFuzzCounts(&reached, &decoded);
  std::size_t extra = 0;
  const char* extra_what = BatonFuzzExtraCount != nullptr ? BatonFuzzExtraCount(&extra) : nullptr;
  std::printf("fuzz smoke: %ld inputs from %zu corpus files, %zu reached the decoders, %zu decoded", runs, corpus_files,
              reached, decoded);
  if (extra_what != nullptr) std::printf(", %zu %s", extra, extra_what);
  std::printf(", no crash\n");
  if (min_reached >= 0 && reached < static_cast<std::size_t>(min_reached)) {
    std::fprintf(stderr, "baton: only %zu inputs reached the decoders, fewer than --min-reached %ld\n", reached,
                 min_reached);
    return 1;
  }
  if (min_decoded >= 0 && decoded < static_cast<std::size_t>(min_decoded)) {
    std::fprintf(stderr, "baton: only %zu inputs decoded, fewer than --min-decoded %ld\n", decoded, min_decoded);
    return 1;
  }
  if (min_extra >= 0 && extra < static_cast<std::size_t>(min_extra)) {
    std::fprintf(stderr, "baton: only %zu inputs %s, fewer than --min-extra %ld\n", extra, extra_what, min_extra);
    return 1;
  }
  return 0;
}
