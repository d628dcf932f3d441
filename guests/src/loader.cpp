// The guest loader: ELF validation, the boot page, GDT/TSS, identity page tables and the
// initial vCPU state (docs/guest-abi.md describes the result).
#include "baton/guests/loader.hpp"

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>

#include "baton/guests/abi.hpp"
#include "baton/model/file_io.hpp"

// The loader's trap handler, guests/trap/trap.S assembled flat and embedded by guests/CMakeLists.txt.
extern "C" const unsigned char baton_trap_bin[];
extern "C" const unsigned char baton_trap_bin_end[];

namespace baton::guests {

namespace {

using model::Gpa;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = kKiB * 1024;
constexpr std::uint64_t kGiB = kMiB * 1024;
constexpr std::uint64_t k4K = 4 * kKiB;
constexpr std::uint64_t k2M = 2 * kMiB;

// ELF64 constants (System V gABI, x86-64 psABI).
constexpr std::size_t kEhdrSize = 64;
constexpr std::size_t kPhdrSize = 56;
constexpr unsigned kMaxPhdrs = 64;
constexpr std::uint8_t kElfClass64 = 2;
constexpr std::uint8_t kElfData2Lsb = 1;
constexpr std::uint8_t kEvCurrent = 1;
constexpr std::uint16_t kEtExec = 2;
constexpr std::uint16_t kEtDyn = 3;
constexpr std::uint16_t kEmX86_64 = 62;
constexpr std::uint32_t kPtLoad = 1;
constexpr std::uint32_t kPtDynamic = 2;
constexpr std::uint32_t kPtInterp = 3;
constexpr std::uint32_t kPfX = 1;

// Paging-entry flags the loader writes (SDM Vol. 3A tables 4-15 .. 4-20): present, writable,
// user, accessed; leaves also dirty (A and D preset so that no backend ever writes them).
constexpr std::uint64_t kTableFlags = 0x27;    // P | RW | US | A
constexpr std::uint64_t kLeaf4kFlags = 0x67;   // P | RW | US | A | D
constexpr std::uint64_t kLeafBigFlags = 0xE7;  // P | RW | US | A | D | PS

// Control-register bits of the initial state (SDM Vol. 3A §2.5, §2.2.1).
constexpr std::uint64_t kCr0Pe = 1ull << 0, kCr0Mp = 1ull << 1, kCr0Et = 1ull << 4, kCr0Ne = 1ull << 5,
                        kCr0Wp = 1ull << 16, kCr0Am = 1ull << 18, kCr0Pg = 1ull << 31;
constexpr std::uint64_t kCr4Pae = 1ull << 5, kCr4Osfxsr = 1ull << 9, kCr4Osxmmexcpt = 1ull << 10;
constexpr std::uint64_t kEferLme = 1ull << 8, kEferLma = 1ull << 10, kEferNxe = 1ull << 11;
constexpr std::uint64_t kRflagsFixed = 1ull << 1, kRflagsIopl3 = 3ull << 12;

// Formats a one-line message printf-style.
std::string fmt(const char* f, ...) __attribute__((format(printf, 1, 2)));
std::string fmt(const char* f, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, f);
  std::vsnprintf(buf, sizeof buf, f, ap);
  va_end(ap);
  return buf;
}

// Shortens a 64-bit value for %llx.
unsigned long long ull(std::uint64_t v) { return static_cast<unsigned long long>(v); }

// Rounds up to a power-of-two multiple (no overflow for the sizes the loader accepts).
std::uint64_t round_up(std::uint64_t v, std::uint64_t align) { return (v + align - 1) & ~(align - 1); }

// Reads a little-endian integer of type T at an offset the caller has bounds-checked.
template <typename T>
T rd(std::span<const std::uint8_t> b, std::size_t off) {
  T v;
  std::memcpy(&v, b.data() + off, sizeof v);
  return v;
}

// One loadable segment, validated against the file.
struct Segment {
  unsigned index = 0;
  std::uint64_t vaddr = 0, filesz = 0, memsz = 0, offset = 0;
  std::uint32_t flags = 0;
};

// What the ELF checks found: the entry point and the loadable segments.
struct ElfInfo {
  std::uint64_t entry = 0;
  std::vector<Segment> segments;
};

// Checks the ELF header and program headers against the file alone.
Result<ElfInfo> parse_elf(std::span<const std::uint8_t> f) {
  if (f.size() < kEhdrSize)
    return make_error(fmt("ELF: input is %zu bytes, smaller than the 64-byte ELF header", f.size()));
  if (f[0] != 0x7F || f[1] != 'E' || f[2] != 'L' || f[3] != 'F') return make_error("ELF: bad magic (not an ELF file)");
  if (f[4] != kElfClass64) return make_error(fmt("ELF: class %u, expected ELFCLASS64 (2)", f[4]));
  if (f[5] != kElfData2Lsb) return make_error(fmt("ELF: data encoding %u, expected little-endian (1)", f[5]));
  if (f[6] != kEvCurrent) return make_error(fmt("ELF: identification version %u, expected 1", f[6]));
  const auto type = rd<std::uint16_t>(f, 16);
  const auto machine = rd<std::uint16_t>(f, 18);
  const auto version = rd<std::uint32_t>(f, 20);
  ElfInfo info;
  info.entry = rd<std::uint64_t>(f, 24);
  const auto phoff = rd<std::uint64_t>(f, 32);
  const auto phentsize = rd<std::uint16_t>(f, 54);
  const auto phnum = rd<std::uint16_t>(f, 56);
  if (machine != kEmX86_64) return make_error(fmt("ELF: machine %u, expected x86-64 (62)", machine));
  if (type == kEtDyn)
    return make_error("ELF: type ET_DYN (PIE or shared object), expected ET_EXEC: link static and non-PIE");
  if (type != kEtExec) return make_error(fmt("ELF: type %u, expected ET_EXEC (2)", type));
  if (version != kEvCurrent) return make_error(fmt("ELF: version %u, expected 1", version));
  if (phnum == 0) return make_error("ELF: no program headers");
  if (phentsize != kPhdrSize) return make_error(fmt("ELF: program-header size %u, expected 56", phentsize));
  if (phnum > kMaxPhdrs) return make_error(fmt("ELF: %u program headers, at most %u allowed", phnum, kMaxPhdrs));
  const std::uint64_t ph_bytes = std::uint64_t{phnum} * kPhdrSize;
  if (phoff > f.size() || ph_bytes > f.size() - phoff)
    return make_error(fmt("ELF: program headers at offset 0x%llx (%u x 56 bytes) extend beyond the %zu-byte file",
                          ull(phoff), phnum, f.size()));
  for (unsigned i = 0; i < phnum; ++i) {
    const std::size_t at = static_cast<std::size_t>(phoff) + std::size_t{i} * kPhdrSize;
    const auto p_type = rd<std::uint32_t>(f, at);
    if (p_type == kPtInterp || p_type == kPtDynamic)
      return make_error(fmt("ELF: segment %u is %s: the guest must be linked statically", i,
                            p_type == kPtInterp ? "PT_INTERP" : "PT_DYNAMIC"));
    if (p_type != kPtLoad) continue;
    Segment s;
    s.index = i;
    s.flags = rd<std::uint32_t>(f, at + 4);
    s.offset = rd<std::uint64_t>(f, at + 8);
    s.vaddr = rd<std::uint64_t>(f, at + 16);
    const auto paddr = rd<std::uint64_t>(f, at + 24);
    s.filesz = rd<std::uint64_t>(f, at + 32);
    s.memsz = rd<std::uint64_t>(f, at + 40);
    if (s.filesz > s.memsz)
      return make_error(
          fmt("ELF: segment %u: file size 0x%llx exceeds memory size 0x%llx", i, ull(s.filesz), ull(s.memsz)));
    if (s.offset > f.size() || s.filesz > f.size() - s.offset)
      return make_error(fmt("ELF: segment %u: file bytes [0x%llx, +0x%llx) extend beyond the %zu-byte file", i,
                            ull(s.offset), ull(s.filesz), f.size()));
    if (s.memsz == 0) continue;  // an empty segment loads nothing
    if (paddr != s.vaddr)
      return make_error(fmt("ELF: segment %u: p_paddr 0x%llx differs from p_vaddr 0x%llx (guests run identity-mapped)",
                            i, ull(paddr), ull(s.vaddr)));
    info.segments.push_back(s);
  }
  if (info.segments.empty()) return make_error("ELF: no loadable segment");
  return info;
}

// Checks the segments against guest memory, the loader's areas and each other.
Result<void> place_segments(const ElfInfo& elf, std::uint64_t mem_size, std::uint64_t pt_start) {
  for (const Segment& s : elf.segments) {
    if (s.memsz > mem_size)
      return make_error(fmt("ELF: segment %u needs 0x%llx bytes, more than guest memory (0x%llx)", s.index,
                            ull(s.memsz), ull(mem_size)));
    if (s.vaddr >= mem_size || s.memsz > mem_size - s.vaddr)
      return make_error(fmt("ELF: segment %u [0x%llx, +0x%llx) lies outside guest memory [0, 0x%llx)", s.index,
                            ull(s.vaddr), ull(s.memsz), ull(mem_size)));
    const std::uint64_t end = s.vaddr + s.memsz;
    if (s.vaddr < kLowAreaEnd)
      return make_error(
          fmt("ELF: segment %u [0x%llx, 0x%llx) overlaps the boot area [0, 0x%llx) "
              "(boot page, GDT/TSS, stacks); link at 0x%llx or above",
              s.index, ull(s.vaddr), ull(end), ull(kLowAreaEnd), ull(kImageBase)));
    if (end > pt_start)
      return make_error(fmt("ELF: segment %u [0x%llx, 0x%llx) overlaps the page tables [0x%llx, 0x%llx)", s.index,
                            ull(s.vaddr), ull(end), ull(pt_start), ull(mem_size)));
  }
  for (std::size_t i = 0; i < elf.segments.size(); ++i) {
    for (std::size_t j = i + 1; j < elf.segments.size(); ++j) {
      const Segment& a = elf.segments[i];
      const Segment& b = elf.segments[j];
      if (a.vaddr < b.vaddr + b.memsz && b.vaddr < a.vaddr + a.memsz)
        return make_error(fmt("ELF: segments %u [0x%llx, 0x%llx) and %u [0x%llx, 0x%llx) overlap", a.index,
                              ull(a.vaddr), ull(a.vaddr + a.memsz), b.index, ull(b.vaddr), ull(b.vaddr + b.memsz)));
    }
  }
  const bool entry_ok = std::any_of(elf.segments.begin(), elf.segments.end(), [&](const Segment& s) {
    return (s.flags & kPfX) != 0 && elf.entry >= s.vaddr && elf.entry - s.vaddr < s.memsz;
  });
  if (!entry_ok) return make_error(fmt("ELF: entry point 0x%llx is not inside an executable segment", ull(elf.entry)));
  return ok_result();
}

// Checks the configuration: memory size, ring and parameters.
Result<void> check_config(const GuestConfig& cfg) {
  if (cfg.mem_size % k4K != 0) return make_error(fmt("mem size 0x%llx is not a multiple of 4 KiB", ull(cfg.mem_size)));
  if (cfg.mem_size < kMinMemSize)
    return make_error(fmt("mem size %llu KiB is below the minimum of 4 MiB", ull(cfg.mem_size / kKiB)));
  if (cfg.mem_size > kMaxMemSize)
    return make_error(fmt("mem size %llu MiB is above the maximum of 64 GiB", ull(cfg.mem_size / kMiB)));
  if (cfg.ring != 3 && cfg.ring != 0) return make_error(fmt("ring %u is not supported (use 3 or 0)", cfg.ring));
  if (cfg.params.size() > kMaxParams)
    return make_error(fmt("%zu parameters, at most %u fit in the boot page", cfg.params.size(), kMaxParams));
  for (std::size_t i = 0; i < cfg.params.size(); ++i) {
    const std::string& k = cfg.params[i].key;
    if (k.empty()) return make_error("a parameter has an empty key");
    if (k.size() > kParamKeyMax)
      return make_error(fmt("parameter key '%s' is longer than %zu characters", k.c_str(), kParamKeyMax));
    for (char c : k)
      if (!std::isprint(static_cast<unsigned char>(c)) || c == '=' || c == ' ')
        return make_error("parameter key '" + k + "' may hold only printable characters other than '=' and space");
    for (std::size_t j = 0; j < i; ++j)
      if (cfg.params[j].key == k) return make_error("parameter '" + k + "' is given twice");
  }
  return ok_result();
}

// The shape of the identity mapping: which leaves cover what, and where each table lives.
struct PagingPlan {
  std::uint64_t mem_size = 0;
  std::uint64_t leaf = 0;              // largest leaf size
  std::uint64_t gibs = 0;              // 1 GiB slots touched by memory
  std::uint64_t chunks_2m = 0;         // 2 MiB slots touched by memory
  std::vector<std::uint64_t> pd_page;  // per GiB: table index of its PD, or 0 (1 GiB leaf)
  std::vector<std::uint64_t> pt_page;  // per 2 MiB: table index of its PT, or 0 (a larger leaf)
  std::uint64_t pages = 2;             // PML4 (index 0) and PDPT (index 1) first

  // Returns whether the 1 GiB slot g is one 1 GiB leaf.
  bool gib_leaf(std::uint64_t g) const { return leaf >= kGiB && (g + 1) * kGiB <= mem_size; }
  // Returns whether the 2 MiB slot m is covered by a 2 MiB or 1 GiB leaf.
  bool big_leaf(std::uint64_t m) const {
    return gib_leaf(m * k2M / kGiB) || (leaf >= k2M && (m + 1) * k2M <= mem_size);
  }
};

// Plans the identity page tables for [0, mem_size) (at most 512 GiB: one PML4 entry).
PagingPlan plan_paging(std::uint64_t mem_size, std::uint64_t leaf) {
  PagingPlan p;
  p.mem_size = mem_size;
  p.leaf = leaf;
  p.gibs = round_up(mem_size, kGiB) / kGiB;
  p.chunks_2m = round_up(mem_size, k2M) / k2M;
  p.pd_page.assign(p.gibs, 0);
  p.pt_page.assign(p.chunks_2m, 0);
  for (std::uint64_t g = 0; g < p.gibs; ++g)
    if (!p.gib_leaf(g)) p.pd_page[g] = p.pages++;
  for (std::uint64_t m = 0; m < p.chunks_2m; ++m)
    if (!p.big_leaf(m)) p.pt_page[m] = p.pages++;
  return p;
}

// Writes one 64-bit entry into the table area.
void put_entry(std::vector<std::uint8_t>& area, std::uint64_t table, unsigned index, std::uint64_t value) {
  std::memcpy(area.data() + table * k4K + std::uint64_t{index} * 8, &value, 8);
}

// Builds the table area at `base` following the plan.
std::vector<std::uint8_t> build_tables(const PagingPlan& p, std::uint64_t base) {
  std::vector<std::uint8_t> area(p.pages * k4K, 0);
  auto table_gpa = [&](std::uint64_t t) { return base + t * k4K; };
  put_entry(area, 0, 0, table_gpa(1) | kTableFlags);
  for (std::uint64_t g = 0; g < p.gibs; ++g) {
    const auto gi = static_cast<unsigned>(g);
    if (p.gib_leaf(g)) {
      put_entry(area, 1, gi, (g * kGiB) | kLeafBigFlags);
      continue;
    }
    put_entry(area, 1, gi, table_gpa(p.pd_page[g]) | kTableFlags);
    for (unsigned i = 0; i < 512; ++i) {
      const std::uint64_t m = g * 512 + i;
      if (m >= p.chunks_2m) break;
      if (p.big_leaf(m)) {
        put_entry(area, p.pd_page[g], i, (m * k2M) | kLeafBigFlags);
        continue;
      }
      put_entry(area, p.pd_page[g], i, table_gpa(p.pt_page[m]) | kTableFlags);
      for (unsigned j = 0; j < 512; ++j) {
        const std::uint64_t page = m * k2M + std::uint64_t{j} * k4K;
        if (page >= p.mem_size) break;
        put_entry(area, p.pt_page[m], j, page | kLeaf4kFlags);
      }
    }
  }
  return area;
}

// Encodes a code or data segment descriptor (SDM Vol. 3A §3.4.5, figure 3-8).
std::uint64_t seg_desc(unsigned type, unsigned dpl, bool l, bool db) {
  std::uint64_t d = 0xFFFF;                // limit 15:0
  d |= std::uint64_t{type & 0xF} << 40;    // type
  d |= std::uint64_t{1} << 44;             // S = code/data
  d |= std::uint64_t{dpl & 3} << 45;       // DPL
  d |= std::uint64_t{1} << 47;             // P
  d |= std::uint64_t{0xF} << 48;           // limit 19:16
  d |= std::uint64_t{l ? 1u : 0u} << 53;   // L
  d |= std::uint64_t{db ? 1u : 0u} << 54;  // D/B
  d |= std::uint64_t{1} << 55;             // G
  return d;
}

// Builds the GDT (null, kernel code/data, user data/code, busy 64-bit TSS) and the TSS with an
// I/O permission bitmap that grants exactly the ABI's ports 0x500-0x51F.
std::vector<std::uint8_t> build_gdt_tss() {
  const std::size_t tss = kTssGpa - kGdtGpa;
  std::vector<std::uint8_t> b(tss + kTssLimit + 1, 0);
  const std::uint64_t gdt[5] = {0, seg_desc(0xB, 0, true, false), seg_desc(0x3, 0, false, true),
                                seg_desc(0x3, 3, false, true), seg_desc(0xB, 3, true, false)};
  std::memcpy(b.data(), gdt, sizeof gdt);
  // 16-byte TSS descriptor (SDM Vol. 3A §8.2.3, figure 8-4): limit, type 0xB (busy), P.
  const std::uint64_t base = kTssGpa;
  const std::uint64_t lo = kTssLimit | ((base & 0xFFFFFF) << 16) | (std::uint64_t{0xB} << 40) |
                           (std::uint64_t{1} << 47) | (((base >> 24) & 0xFF) << 56);
  const std::uint64_t hi = base >> 32;
  std::memcpy(b.data() + kSelTss, &lo, 8);
  std::memcpy(b.data() + kSelTss + 8, &hi, 8);
  // TSS (figure 8-11): RSP0 at offset 4, the trap handler's stack; the I/O map base at 102.
  const std::uint64_t rsp0 = kRing0StackTop;
  std::memcpy(b.data() + tss + 4, &rsp0, 8);
  const std::uint16_t iomap = kTssIomap;
  std::memcpy(b.data() + tss + 102, &iomap, 2);
  // The bitmap (SDM Vol. 1 §19.5.2): bit p clear allows port p when CPL > IOPL. Ports below
  // 0x500 are refused, 0x500-0x51F allowed, and the last byte is 0xFF as the SDM requires;
  // ports past the limit are refused. IOPL = 3 makes it moot on VT-x, SVM and Unicorn; PVM,
  // which runs ring 3 at IOPL 0, honours it (docs/guest-abi.md §2.1).
  std::uint8_t* map = b.data() + tss + kTssIomap;
  std::memset(map, 0xFF, kTssLimit + 1 - kTssIomap);
  for (unsigned port = BATON_PORT_FIRST; port <= BATON_PORT_LAST; ++port)
    map[port / 8] &= static_cast<std::uint8_t>(~(1u << (port % 8)));
  return b;
}

// The trap handler's header (guests/trap/trap.S): magic, vectors, fault port, fault record,
// then one 16-bit entry offset per vector.
constexpr std::size_t kTrapHeaderSize = 16 + 2 * BATON_IDT_VECTORS;

// Returns the embedded trap handler, its header checked against the ABI (a build invariant).
std::span<const std::uint8_t> trap_blob() {
  const std::span<const std::uint8_t> b(baton_trap_bin, static_cast<std::size_t>(baton_trap_bin_end - baton_trap_bin));
  BATON_CHECK(b.size() >= kTrapHeaderSize && b.size() <= k4K);
  BATON_CHECK(std::memcmp(b.data(), "BTNTRAP1", 8) == 0);
  BATON_CHECK(rd<std::uint16_t>(b, 8) == kIdtVectors);
  BATON_CHECK(rd<std::uint16_t>(b, 10) == kPortFault);
  BATON_CHECK(rd<std::uint32_t>(b, 12) == kFaultRecordGpa);
  return b;
}

// Builds the IDT: vector v is a 64-bit interrupt gate (type 0xE, DPL 0, P, IST 0) through the
// kernel code segment to the trap handler's entry for v (SDM Vol. 3A §6.14.1, figure 6-8).
std::vector<std::uint8_t> build_idt() {
  const std::span<const std::uint8_t> trap = trap_blob();
  std::vector<std::uint8_t> idt(16 * kIdtVectors, 0);
  for (unsigned v = 0; v < kIdtVectors; ++v) {
    const std::uint16_t entry = rd<std::uint16_t>(trap, 16 + 2 * v);
    BATON_CHECK(entry >= kTrapHeaderSize && entry < trap.size());
    const std::uint64_t target = kTrapGpa + entry;
    const std::uint64_t lo = (target & 0xFFFF) | (std::uint64_t{kSelKernelCs} << 16) | (std::uint64_t{0xE} << 40) |
                             (std::uint64_t{1} << 47) | (((target >> 16) & 0xFFFF) << 48);
    const std::uint64_t hi = target >> 32;
    std::memcpy(idt.data() + 16 * v, &lo, 8);
    std::memcpy(idt.data() + 16 * v + 8, &hi, 8);
  }
  return idt;
}

// Builds the boot page for an image.
std::vector<std::uint8_t> build_boot_page(const GuestImage& im) {
  std::vector<std::uint8_t> page(k4K, 0);
  BootPage b{};
  b.magic = kBootMagic;
  b.version = kBootVersion;
  b.size = sizeof(BootPage);
  b.mem_size = im.mem_size;
  b.boot_page = im.boot_page.value;
  b.image_start = im.image_start.value;
  b.image_end = im.image_end.value;
  b.stack_bottom = im.stack_bottom.value;
  b.stack_top = im.stack_top.value;
  b.page_tables_start = im.page_tables_start.value;
  b.page_tables_end = im.page_tables_end.value;
  b.free_start = im.free_start.value;
  b.free_end = im.free_end.value;
  b.page_size = bytes_of(im.page_size);
  b.ring = im.ring;
  b.param_count = static_cast<std::uint32_t>(im.params.size());
  for (std::size_t i = 0; i < im.params.size(); ++i) {
    std::memcpy(b.params[i].key, im.params[i].key.data(), im.params[i].key.size());
    b.params[i].value = im.params[i].value;
  }
  std::memcpy(page.data(), &b, sizeof b);
  return page;
}

// Returns a flat 64-bit code/data segment in KVM's struct kvm_segment form.
model::Segment flat_segment(std::uint16_t sel, unsigned type, unsigned dpl, bool code) {
  model::Segment s;
  s.base = 0;
  s.limit = 0xFFFFFFFF;
  s.selector = sel;
  s.type = static_cast<std::uint8_t>(type);
  s.present = 1;
  s.dpl = static_cast<std::uint8_t>(dpl);
  s.db = code ? 0 : 1;
  s.s = 1;
  s.l = code ? 1 : 0;
  s.g = 1;
  return s;
}

// Builds the initial vCPU state: 64-bit long mode at `ring`, IOPL=3, paging on at the PML4.
model::VcpuState initial_state(const GuestImage& im) {
  model::VcpuState s;
  s.rip = im.entry;
  s.gpr[model::VcpuState::kRsp] = im.stack_top.value;
  s.gpr[model::VcpuState::kRdi] = im.boot_page.value;
  s.rflags = kRflagsFixed | kRflagsIopl3;
  const bool user = im.ring == 3;
  const std::uint16_t cs = user ? kSelUserCs : kSelKernelCs;
  const std::uint16_t ds = user ? kSelUserDs : kSelKernelDs;
  const unsigned dpl = user ? 3 : 0;
  s.cs = flat_segment(cs, 0xB, dpl, true);
  s.ss = s.ds = s.es = s.fs = s.gs = flat_segment(ds, 0x3, dpl, false);
  s.tr.base = kTssGpa;
  s.tr.limit = kTssLimit;
  s.tr.selector = kSelTss;
  s.tr.type = 0xB;  // busy 64-bit TSS, as VM entry requires (SDM Vol. 3C §27.3.1.2)
  s.tr.present = 1;
  s.ldt.type = 0x2;
  s.ldt.unusable = 1;  // no LDT
  s.gdtr.base = kGdtGpa;
  s.gdtr.limit = static_cast<std::uint16_t>(kSelTss + 16 - 1);
  s.idtr.base = kIdtGpa;
  s.idtr.limit = static_cast<std::uint16_t>(16 * kIdtVectors - 1);  // gates 0..31 into the trap handler
  s.cr0 = kCr0Pe | kCr0Mp | kCr0Et | kCr0Ne | kCr0Wp | kCr0Am | kCr0Pg;
  s.cr3 = im.pml4.value;
  s.cr4 = kCr4Pae | kCr4Osfxsr | kCr4Osxmmexcpt;  // TSD = 0: RDTSC works at ring 3
  s.efer = kEferLme | kEferLma | kEferNxe;
  s.dr[6] = 0xFFFF0FF0;  // architectural reset values
  s.dr[7] = 0x400;
  return s;
}

}  // namespace

const char* to_string(PageSize p) {
  switch (p) {
    case PageSize::k4K: return "4k";
    case PageSize::k2M: return "2m";
    case PageSize::k1G: return "1g";
  }
  return "?";
}

std::uint64_t bytes_of(PageSize p) {
  switch (p) {
    case PageSize::k4K: return k4K;
    case PageSize::k2M: return k2M;
    case PageSize::k1G: return kGiB;
  }
  return k4K;
}

Result<PageSize> parse_page_size(std::string_view s) {
  std::string t;
  for (char c : s) t += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (t == "4k" || t == "4kib" || t == "4096") return PageSize::k4K;
  if (t == "2m" || t == "2mib" || t == "2097152") return PageSize::k2M;
  if (t == "1g" || t == "1gib" || t == "1073741824") return PageSize::k1G;
  return make_error("page size '" + std::string(s) + "' is not one of 4k, 2m, 1g");
}

const Region* GuestImage::region(std::string_view name) const {
  for (const Region& r : layout)
    if (r.name == name) return &r;
  return nullptr;
}

std::uint64_t GuestImage::chunk_bytes() const {
  std::uint64_t n = 0;
  for (const MemoryChunk& c : chunks) n += c.bytes.size();
  return n;
}

std::string image_hash(const GuestImage& image) {
  std::uint64_t h = 0xcbf29ce484222325ull;
  auto byte = [&h](std::uint8_t b) { h = (h ^ b) * 0x100000001b3ull; };
  auto u64 = [&byte](std::uint64_t v) {
    for (int i = 0; i < 8; ++i) byte(static_cast<std::uint8_t>(v >> (8 * i)));
  };
  u64(image.mem_size);
  u64(static_cast<std::uint64_t>(image.page_size));
  u64(image.ring);
  u64(image.entry);
  u64(image.params.size());
  for (const Param& p : image.params) {
    u64(p.key.size());
    for (char c : p.key) byte(static_cast<std::uint8_t>(c));
    u64(p.value);
  }
  u64(image.chunks.size());
  for (const MemoryChunk& c : image.chunks) {
    u64(c.gpa.value);
    u64(c.bytes.size());
    for (std::uint8_t b : c.bytes) byte(b);
  }
  char out[32];
  std::snprintf(out, sizeof out, "fnv1a64:%016llx", static_cast<unsigned long long>(h));
  return out;
}

Result<GuestImage> load_guest(std::span<const std::uint8_t> elf, const GuestConfig& cfg) {
  BATON_TRY_VOID(check_config(cfg));
  auto info = parse_elf(elf);
  if (!info) return info.error();

  const PagingPlan plan = plan_paging(cfg.mem_size, bytes_of(cfg.page_size));
  const std::uint64_t pt_bytes = plan.pages * k4K;
  if (pt_bytes + kLowAreaEnd > cfg.mem_size)
    return make_error(fmt("mem size %llu KiB leaves no room for the loader area and %llu KiB of page tables",
                          ull(cfg.mem_size / kKiB), ull(pt_bytes / kKiB)));
  const std::uint64_t pt_start = cfg.mem_size - pt_bytes;
  BATON_TRY_VOID(place_segments(*info, cfg.mem_size, pt_start));

  GuestImage im;
  im.mem_size = cfg.mem_size;
  im.page_size = cfg.page_size;
  im.ring = cfg.ring;
  im.entry = info->entry;
  im.params = cfg.params;
  im.boot_page = Gpa{kBootPageGpa};
  im.gdt = Gpa{kGdtGpa};
  im.tss = Gpa{kTssGpa};
  im.stack_bottom = Gpa{kStackBottom};
  im.stack_top = Gpa{kStackTop};
  im.page_tables_start = Gpa{pt_start};
  im.page_tables_end = Gpa{cfg.mem_size};
  im.pml4 = Gpa{pt_start};
  im.page_table_pages = plan.pages;
  std::uint64_t lo = ~std::uint64_t{0}, hi = 0;
  for (const Segment& s : info->segments) {
    lo = std::min(lo, s.vaddr);
    hi = std::max(hi, s.vaddr + s.memsz);
  }
  im.image_start = Gpa{lo};
  im.image_end = Gpa{hi};
  std::uint64_t free_start = round_up(hi, k2M);
  if (free_start > pt_start) free_start = round_up(hi, k4K);
  im.free_start = Gpa{free_start};
  im.free_end = Gpa{pt_start};

  // Chunks, in address order: boot page, GDT/TSS, IDT, trap handler, ELF segments, page tables.
  im.chunks.push_back(MemoryChunk{"boot", im.boot_page, build_boot_page(im)});
  im.chunks.push_back(MemoryChunk{"gdt+tss", im.gdt, build_gdt_tss()});
  im.chunks.push_back(MemoryChunk{"idt", Gpa{kIdtGpa}, build_idt()});
  const std::span<const std::uint8_t> trap = trap_blob();
  im.chunks.push_back(MemoryChunk{"trap", Gpa{kTrapGpa}, std::vector<std::uint8_t>(trap.begin(), trap.end())});
  std::vector<Segment> segs = info->segments;
  std::sort(segs.begin(), segs.end(), [](const Segment& a, const Segment& b) { return a.vaddr < b.vaddr; });
  for (const Segment& s : segs) {
    if (s.filesz == 0) continue;  // bss-only: guest memory starts zeroed
    const auto* first = elf.data() + s.offset;
    im.chunks.push_back(
        MemoryChunk{fmt("elf[%u]", s.index), Gpa{s.vaddr}, std::vector<std::uint8_t>(first, first + s.filesz)});
  }
  im.chunks.push_back(MemoryChunk{"page-tables", im.page_tables_start, build_tables(plan, pt_start)});

  // Layout, covering [0, mem_size) without gaps.
  auto add = [&](const char* name, std::uint64_t start, std::uint64_t end) {
    if (end > start) im.layout.push_back(Region{name, Gpa{start}, end - start});
  };
  add("null", 0, kBootPageGpa);
  add("boot", kBootPageGpa, kBootPageGpa + k4K);
  add("gdt+tss", kGdtGpa, kGdtGpa + k4K);
  add("idt", kIdtGpa, kIdtGpa + k4K);
  add("trap", kTrapGpa, kTrapGpa + k4K);
  add("fault-record", kFaultRecordGpa, kFaultRecordGpa + k4K);
  add("reserved", kFaultRecordGpa + k4K, kRing0StackTop - 16 * k4K);
  add("ring0-stack", kRing0StackTop - 16 * k4K, kRing0StackTop);
  add("stack", kStackBottom, kStackTop);
  add("unused", kImageBase, lo);
  add("image", lo, hi);
  add("unused", hi, free_start);
  add("free", free_start, pt_start);
  add("page-tables", pt_start, cfg.mem_size);

  im.vcpu = initial_state(im);
  return im;
}

Result<std::vector<std::uint8_t>> read_file(const std::string& path) {
  return model::read_file(path, kMaxElfFile, "guest ELF");
}

bool ImageMemory::read_u64(model::Gpa a, std::uint64_t* out) const {
  const std::uint64_t w = a.value & ~std::uint64_t{7};
  if (w >= image_.mem_size) return false;
  // The last chunk starting at or below w, if it covers the whole word, answers directly.
  const auto& cs = image_.chunks;
  auto it =
      std::upper_bound(cs.begin(), cs.end(), w, [](std::uint64_t v, const MemoryChunk& c) { return v < c.gpa.value; });
  if (it != cs.begin()) {
    const MemoryChunk& c = *std::prev(it);
    if (w - c.gpa.value + 8 <= c.bytes.size()) {
      std::memcpy(out, c.bytes.data() + (w - c.gpa.value), 8);
      return true;
    }
  }
  // Otherwise assemble the word byte by byte (chunk edges), zero where no chunk lies.
  std::uint8_t b[8] = {};
  for (const MemoryChunk& c : cs)
    for (unsigned i = 0; i < 8; ++i)
      if (w + i >= c.gpa.value && w + i < c.end().value) b[i] = c.bytes[w + i - c.gpa.value];
  std::memcpy(out, b, 8);
  return true;
}

Result<model::IdentityReport> check_image_paging(const GuestImage& image) {
  const ImageMemory mem(image);
  const model::GuestPagingConfig pcfg = model::paging_config_of(image.vcpu);
  const model::GvaRange all[1] = {model::GvaRange{model::Gva{0}, image.mem_size}};
  auto rep = model::check_identity(image.vcpu.cr3, all, mem, pcfg, true);
  if (!rep) return rep.error();
  if (!rep->all_user) return make_error("some guest page is not user-accessible (U/S = 0 at some level)");
  if (!rep->all_writable) return make_error("some guest page is read-only (R/W = 0 at some level)");
  if (rep->any_nx) return make_error("some guest page is execute-disabled");
  // Nothing beyond guest memory may be mapped, up to the end of the PML4 entry's 512 GiB.
  const std::uint64_t top = std::uint64_t{512} << 30;
  const model::GvaRange beyond[1] = {model::GvaRange{model::Gva{image.mem_size}, top - image.mem_size}};
  auto outside = model::check_identity(image.vcpu.cr3, beyond, mem, pcfg, false);
  if (!outside) return outside.error();
  if (outside->pages_4k + outside->pages_2m + outside->pages_1g != 0)
    return make_error(fmt("pages beyond guest memory (0x%llx) are mapped", ull(image.mem_size)));
  return rep;
}

}  // namespace baton::guests
