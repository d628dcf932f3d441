// A tiny builder of static x86-64 ELF images for loader tests, plus field pokes for
// producing each kind of malformed input.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

namespace baton::test {

// One PT_LOAD segment to emit.
struct TestSegment {
  std::uint64_t vaddr = 0x200000;
  std::vector<std::uint8_t> bytes = std::vector<std::uint8_t>(64, 0x90);
  std::uint64_t memsz = 0;  // 0: bytes.size()
  std::uint32_t flags = 5;  // R X
  std::uint32_t type = 1;   // PT_LOAD
};

// Offsets of ELF64 header and program-header fields (System V gABI).
namespace elf_off {
inline constexpr std::size_t kClass = 4, kData = 5, kIdentVersion = 6, kType = 16, kMachine = 18, kVersion = 20,
                             kEntry = 24, kPhoff = 32, kPhentsize = 54, kPhnum = 56;
inline constexpr std::size_t kPhType = 0, kPhFlags = 4, kPhOffset = 8, kPhVaddr = 16, kPhPaddr = 24, kPhFilesz = 32,
                             kPhMemsz = 40;
}  // namespace elf_off

// Builds an ELF: header, program headers right after it, then each segment's bytes.
inline std::vector<std::uint8_t> build_elf(const std::vector<TestSegment>& segs, std::uint64_t entry = 0x200000) {
  const std::size_t ph = 64;
  std::size_t data = ph + 56 * segs.size();
  std::vector<std::uint8_t> f(data, 0);
  const std::uint8_t ident[8] = {0x7F, 'E', 'L', 'F', 2, 1, 1, 0};
  std::memcpy(f.data(), ident, sizeof ident);
  auto put16 = [&](std::size_t off, std::uint16_t v) { std::memcpy(f.data() + off, &v, 2); };
  auto put32 = [&](std::size_t off, std::uint32_t v) { std::memcpy(f.data() + off, &v, 4); };
  auto put64 = [&](std::size_t off, std::uint64_t v) { std::memcpy(f.data() + off, &v, 8); };
  put16(elf_off::kType, 2);
  put16(elf_off::kMachine, 62);
  put32(elf_off::kVersion, 1);
  put64(elf_off::kEntry, entry);
  put64(elf_off::kPhoff, ph);
  put16(52, 64);
  put16(elf_off::kPhentsize, 56);
  put16(elf_off::kPhnum, static_cast<std::uint16_t>(segs.size()));
  for (std::size_t i = 0; i < segs.size(); ++i) {
    const std::size_t at = ph + 56 * i;
    put32(at + elf_off::kPhType, segs[i].type);
    put32(at + elf_off::kPhFlags, segs[i].flags);
    put64(at + elf_off::kPhOffset, f.size());
    put64(at + elf_off::kPhVaddr, segs[i].vaddr);
    put64(at + elf_off::kPhPaddr, segs[i].vaddr);
    put64(at + elf_off::kPhFilesz, segs[i].bytes.size());
    put64(at + elf_off::kPhMemsz, segs[i].memsz != 0 ? segs[i].memsz : segs[i].bytes.size());
    put64(at + 48, 0x1000);
    f.insert(f.end(), segs[i].bytes.begin(), segs[i].bytes.end());
  }
  (void)data;
  return f;
}

// Overwrites an integer field of an ELF image in place.
template <typename T>
void poke(std::vector<std::uint8_t>& f, std::size_t off, T v) {
  std::memcpy(f.data() + off, &v, sizeof v);
}

// Returns the offset of program header i (headers at 64, as build_elf lays them out).
inline std::size_t phdr(std::size_t i) { return 64 + 56 * i; }

}  // namespace baton::test
