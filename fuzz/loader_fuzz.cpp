// Fuzz target: the guest loader must reject any malformed ELF with an error, never crash, and
// every image it accepts must have sound identity page tables and segments inside memory.
#include <cstdint>
#include <cstdlib>
#include <span>

#include "baton/guests/abi.hpp"
#include "baton/guests/loader.hpp"

namespace {
std::size_t runs = 0;    // inputs tried
std::size_t loaded = 0;  // inputs the loader accepted
}  // namespace

// Every input reaches the loader (an ELF has no checksum); `decoded` counts the images it
// accepted (read by the standalone driver).
extern "C" void BatonFuzzCounts(std::size_t* reached, std::size_t* decoded) {
  *reached = runs;
  *decoded = loaded;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace baton::guests;
  ++runs;
  GuestConfig cfg;
  cfg.mem_size = std::uint64_t{8} << 20;
  // The input's length picks the page size, so that every table shape gets exercised.
  cfg.page_size = size % 3 == 0 ? PageSize::k4K : size % 3 == 1 ? PageSize::k2M : PageSize::k1G;
  cfg.params = {{"size", 4096}};
  auto im = load_guest(std::span<const std::uint8_t>(data, size), cfg);
  if (!im.ok()) return 0;
  ++loaded;
  if (!check_image_paging(*im).ok()) std::abort();
  for (const MemoryChunk& c : im->chunks)
    if (c.end().value > im->mem_size || c.end() < c.gpa) std::abort();
  if (im->image_start.value < kImageBase || im->image_end > im->page_tables_start) std::abort();
  return 0;
}
