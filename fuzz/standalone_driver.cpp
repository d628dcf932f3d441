// A standalone driver for libFuzzer targets, used where libFuzzer is not linked: it feeds
// every file of the given corpus directories, then bounded deterministic mutations of them
// (bit flips, truncations, byte overwrites), to LLVMFuzzerTestOneInput.
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

int main(int argc, char** argv) {
  long iterations = 1000;
  std::vector<std::vector<std::uint8_t>> corpus;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
      iterations = std::strtol(argv[++i], nullptr, 10);
      continue;
    }
    std::filesystem::path p(argv[i]);
    std::vector<std::filesystem::path> files;
    if (std::filesystem::is_directory(p)) {
      for (const auto& e : std::filesystem::directory_iterator(p))
        if (e.is_regular_file()) files.push_back(e.path());
    } else if (std::filesystem::is_regular_file(p)) {
      files.push_back(p);
    }
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      corpus.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
    }
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
  std::printf("fuzz smoke: %ld inputs from %zu corpus files, no crash\n", runs, corpus.size() - 1);
  return 0;
}
