// The loader refuses every malformed or hostile input with one clear line, never a crash.
#include <catch2/catch.hpp>
#include <functional>

#include "baton/guests/loader.hpp"
#include "baton/guests/registry.hpp"
#include "elf_builder.hpp"

using namespace baton::guests;
using namespace baton::test;

namespace {

// One malformed input: how to make it and a phrase its error must contain.
struct Case {
  const char* reason;
  std::function<void(std::vector<std::uint8_t>&)> mutate;
  const char* expect;
};

// Returns a valid two-segment ELF (text at 2 MiB, data right after).
std::vector<std::uint8_t> valid_elf() {
  TestSegment text;
  TestSegment data;
  data.vaddr = 0x201000;
  data.flags = 6;
  data.memsz = 0x2000;
  return build_elf({text, data});
}

// Loads with an 8 MiB, 4k-paged configuration.
baton::Result<GuestImage> load8(const std::vector<std::uint8_t>& f) {
  GuestConfig cfg;
  cfg.mem_size = 8u << 20;
  return load_guest(f, cfg);
}

}  // namespace

TEST_CASE("the hand-built ELF used as the base of the malformed cases is valid", "[loader][malformed]") {
  auto im = load8(valid_elf());
  INFO((im ? std::string() : im.error().message));
  CHECK(im.ok());
}

TEST_CASE("each malformed ELF is rejected with a one-line error naming the reason", "[loader][malformed]") {
  namespace o = elf_off;
  const std::uint64_t mem = 8u << 20;
  const std::vector<Case> cases = {
      {"empty input", [](auto& f) { f.clear(); }, "smaller than the 64-byte ELF header"},
      {"truncated header", [](auto& f) { f.resize(40); }, "smaller than the 64-byte ELF header"},
      {"bad magic", [](auto& f) { f[1] = 'X'; }, "bad magic"},
      {"32-bit class", [](auto& f) { f[o::kClass] = 1; }, "ELFCLASS64"},
      {"big-endian", [](auto& f) { f[o::kData] = 2; }, "little-endian"},
      {"identification version", [](auto& f) { f[o::kIdentVersion] = 0; }, "identification version"},
      {"wrong machine (i386)", [](auto& f) { poke<std::uint16_t>(f, o::kMachine, 3); }, "expected x86-64"},
      {"wrong machine (aarch64)", [](auto& f) { poke<std::uint16_t>(f, o::kMachine, 183); }, "machine 183"},
      {"PIE / shared object", [](auto& f) { poke<std::uint16_t>(f, o::kType, 3); }, "ET_DYN"},
      {"relocatable object", [](auto& f) { poke<std::uint16_t>(f, o::kType, 1); }, "expected ET_EXEC"},
      {"ELF version", [](auto& f) { poke<std::uint32_t>(f, o::kVersion, 7); }, "version 7"},
      {"no program headers", [](auto& f) { poke<std::uint16_t>(f, o::kPhnum, 0); }, "no program headers"},
      {"program-header size", [](auto& f) { poke<std::uint16_t>(f, o::kPhentsize, 32); }, "program-header size 32"},
      {"too many program headers", [](auto& f) { poke<std::uint16_t>(f, o::kPhnum, 65535); }, "at most 64"},
      {"program headers beyond the file", [](auto& f) { poke<std::uint64_t>(f, o::kPhoff, f.size() - 10); },
       "extend beyond"},
      {"program-header offset overflow", [](auto& f) { poke<std::uint64_t>(f, o::kPhoff, ~std::uint64_t{0} - 8); },
       "extend beyond"},
      {"segment bytes beyond the file",
       [](auto& f) {
         poke<std::uint64_t>(f, phdr(0) + o::kPhFilesz, 1u << 20);
         poke<std::uint64_t>(f, phdr(0) + o::kPhMemsz, 1u << 20);
       },
       "extend beyond the"},
      {"segment offset overflow",
       [](auto& f) { poke<std::uint64_t>(f, phdr(0) + o::kPhOffset, ~std::uint64_t{0} - 4); }, "extend beyond the"},
      {"file size above memory size", [](auto& f) { poke<std::uint64_t>(f, phdr(0) + o::kPhMemsz, 8); },
       "exceeds memory size"},
      {"physical and virtual address differ", [](auto& f) { poke<std::uint64_t>(f, phdr(0) + o::kPhPaddr, 0x300000); },
       "identity"},
      {"segment outside guest memory",
       [](auto& f) {
         poke<std::uint64_t>(f, phdr(1) + o::kPhVaddr, 0x4000'0000);
         poke<std::uint64_t>(f, phdr(1) + o::kPhPaddr, 0x4000'0000);
       },
       "outside guest memory"},
      {"segment running past the end of memory",
       [](auto& f) {
         poke<std::uint64_t>(f, phdr(1) + o::kPhVaddr, 0x400000);
         poke<std::uint64_t>(f, phdr(1) + o::kPhPaddr, 0x400000);
         poke<std::uint64_t>(f, phdr(1) + o::kPhMemsz, 0x7F0000);
       },
       "outside guest memory"},
      {"segment address wrapping around",
       [](auto& f) {
         poke<std::uint64_t>(f, phdr(1) + o::kPhVaddr, ~std::uint64_t{0} - 0xFFF);
         poke<std::uint64_t>(f, phdr(1) + o::kPhPaddr, ~std::uint64_t{0} - 0xFFF);
       },
       "outside guest memory"},
      {"segment larger than guest memory", [](auto& f) { poke<std::uint64_t>(f, phdr(1) + o::kPhMemsz, 1u << 30); },
       "more than guest memory"},
      {"segment overlapping the boot page",
       [](auto& f) {
         poke<std::uint64_t>(f, phdr(1) + o::kPhVaddr, 0x1000);
         poke<std::uint64_t>(f, phdr(1) + o::kPhPaddr, 0x1000);
       },
       "overlaps the boot area"},
      {"segment overlapping the page tables",
       [mem](auto& f) {
         poke<std::uint64_t>(f, phdr(1) + o::kPhVaddr, mem - 0x2000);
         poke<std::uint64_t>(f, phdr(1) + o::kPhPaddr, mem - 0x2000);
       },
       "overlaps the page tables"},
      {"segments overlapping each other",
       [](auto& f) {
         poke<std::uint64_t>(f, phdr(1) + o::kPhVaddr, 0x200020);
         poke<std::uint64_t>(f, phdr(1) + o::kPhPaddr, 0x200020);
       },
       "overlap"},
      {"entry point outside the code", [](auto& f) { poke<std::uint64_t>(f, o::kEntry, 0x201000); },
       "not inside an executable segment"},
      {"entry point before the image", [](auto& f) { poke<std::uint64_t>(f, o::kEntry, 0); },
       "not inside an executable segment"},
      {"dynamic linking (PT_INTERP)", [](auto& f) { poke<std::uint32_t>(f, phdr(1) + o::kPhType, 3); }, "PT_INTERP"},
      {"dynamic linking (PT_DYNAMIC)", [](auto& f) { poke<std::uint32_t>(f, phdr(1) + o::kPhType, 2); }, "PT_DYNAMIC"},
      {"no loadable segment",
       [](auto& f) {
         poke<std::uint32_t>(f, phdr(0) + o::kPhType, 4);
         poke<std::uint32_t>(f, phdr(1) + o::kPhType, 4);
       },
       "no loadable segment"},
  };
  for (const Case& c : cases) {
    CAPTURE(c.reason);
    std::vector<std::uint8_t> f = valid_elf();
    c.mutate(f);
    auto im = load8(f);
    REQUIRE_FALSE(im.ok());
    CAPTURE(im.error().message);
    CHECK_THAT(im.error().message, Catch::Contains(c.expect));
    CHECK(im.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("a bad configuration is rejected with a one-line error", "[loader][malformed]") {
  const auto elf = valid_elf();
  struct ConfigCase {
    const char* reason;
    std::function<void(GuestConfig&)> mutate;
    const char* expect;
  };
  const std::vector<ConfigCase> cases = {
      {"memory not a multiple of 4 KiB", [](auto& c) { c.mem_size = (8u << 20) + 100; }, "multiple of 4 KiB"},
      {"memory too small", [](auto& c) { c.mem_size = 1u << 20; }, "below the minimum"},
      {"memory too large", [](auto& c) { c.mem_size = std::uint64_t{1} << 40; }, "above the maximum"},
      {"ring 1", [](auto& c) { c.ring = 1; }, "ring 1"},
      {"empty key",
       [](auto& c) {
         c.params = {{"", 1}};
       },
       "empty key"},
      {"long key",
       [](auto& c) {
         c.params = {{std::string(24, 'k'), 1}};
       },
       "longer than 23"},
      {"key with '='",
       [](auto& c) {
         c.params = {{"a=b", 1}};
       },
       "printable"},
      {"duplicate key",
       [](auto& c) {
         c.params = {{"a", 1}, {"a", 2}};
       },
       "given twice"},
      {"too many parameters",
       [](auto& c) {
         for (int i = 0; i < 97; ++i) c.params.push_back({"p" + std::to_string(i), 0});
       },
       "at most 96"},
  };
  for (const ConfigCase& c : cases) {
    CAPTURE(c.reason);
    GuestConfig cfg;
    cfg.mem_size = 8u << 20;
    c.mutate(cfg);
    auto im = load_guest(elf, cfg);
    REQUIRE_FALSE(im.ok());
    CAPTURE(im.error().message);
    CHECK_THAT(im.error().message, Catch::Contains(c.expect));
    CHECK(im.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("a segment reaching into the page tables of a small memory is refused", "[loader][malformed]") {
  GuestConfig cfg;
  cfg.mem_size = 4u << 20;
  cfg.page_size = PageSize::k4K;
  baton::test::TestSegment text;
  text.vaddr = 0x200000;
  text.memsz = 0x1FF000;  // up to 4 MiB - 4 KiB, where the tables must go
  auto im = load_guest(build_elf({text}), cfg);
  REQUIRE_FALSE(im.ok());
  CHECK_THAT(im.error().message, Catch::Contains("overlaps the page tables"));
}

TEST_CASE("every single-byte corruption of a real guest is rejected or loads soundly", "[loader][malformed]") {
  const BuiltinGuest* g = find_builtin("io");
  REQUIRE(g != nullptr);
  const std::vector<std::uint8_t> base(g->elf.begin(), g->elf.end());
  // The headers and the first program headers are where corruption matters.
  const std::size_t limit = std::min<std::size_t>(base.size(), 64 + 56 * 2);
  unsigned loaded = 0, rejected = 0;
  for (std::size_t i = 0; i < limit; ++i) {
    for (std::uint8_t x : {std::uint8_t{0x01}, std::uint8_t{0x80}, std::uint8_t{0xFF}}) {
      std::vector<std::uint8_t> f = base;
      f[i] ^= x;
      auto im = load8(f);
      if (!im) {
        ++rejected;
        CHECK(im.error().message.find('\n') == std::string::npos);
        continue;
      }
      ++loaded;
      CAPTURE(i, x);
      CHECK(check_image_paging(*im).ok());
    }
  }
  CHECK(rejected > 0);
  CHECK(loaded > 0);
}
