// The loader: every built-in guest image, its page tables (checked with the model walker),
// its layout, boot page and initial vCPU state, exactly as docs/guest-abi.md specifies.
#include "baton/guests/loader.hpp"

#include <catch2/catch.hpp>
#include <cstring>
#include <set>

#include "baton/guests/abi.hpp"
#include "baton/guests/registry.hpp"
#include "elf_builder.hpp"

using namespace baton::guests;
using baton::model::Gpa;

namespace {

constexpr std::uint64_t kMiB = 1 << 20;
constexpr std::uint64_t kGiB = std::uint64_t{1} << 30;

// Loads a built-in guest with a memory size and page size, failing the test on error.
GuestImage load(const std::string& name, std::uint64_t mem, PageSize pages, unsigned ring = 3) {
  GuestConfig cfg;
  cfg.mem_size = mem;
  cfg.page_size = pages;
  cfg.ring = ring;
  auto im = load_builtin(name, cfg);
  INFO(name << " mem " << mem << " pages " << to_string(pages));
  if (!im) FAIL(im.error().message);
  return std::move(im).value();
}

// Returns the chunk with a name.
const MemoryChunk& chunk(const GuestImage& im, const std::string& name) {
  for (const MemoryChunk& c : im.chunks)
    if (c.name == name) return c;
  FAIL("no chunk " << name);
  return im.chunks.front();
}

// Reads the 8-byte GDT descriptor at a selector.
std::uint64_t gdt_entry(const GuestImage& im, std::uint16_t sel) {
  const MemoryChunk& c = chunk(im, "gdt+tss");
  std::uint64_t d = 0;
  std::memcpy(&d, c.bytes.data() + (sel & ~7u), 8);
  return d;
}

}  // namespace

TEST_CASE("every built-in guest loads at 4k, 2m and 1g with identity paging for every page", "[loader]") {
  for (const BuiltinGuest& g : builtin_guests()) {
    for (PageSize ps : {PageSize::k4K, PageSize::k2M, PageSize::k1G}) {
      const GuestImage im = load(g.name, 256 * kMiB, ps);
      CAPTURE(g.name, to_string(ps));
      auto rep = check_image_paging(im);
      INFO((rep ? std::string("ok") : rep.error().message));
      REQUIRE(rep.ok());
      CHECK(rep->unmapped_bytes == 0);
      if (ps == PageSize::k4K)
        CHECK(rep->pages_4k == 256 * kMiB / 4096);
      else
        CHECK(rep->pages_2m == 128);  // 256 MiB cannot hold a 1 GiB leaf
    }
  }
}

TEST_CASE("leaf sizes follow the request and fall back at the unaligned tail", "[loader]") {
  SECTION("1g over 3 GiB + 6 MiB: three 1 GiB and three 2 MiB leaves") {
    const GuestImage im = load("memtouch", 3 * kGiB + 6 * kMiB, PageSize::k1G);
    auto rep = check_image_paging(im);
    REQUIRE(rep.ok());
    CHECK(rep->pages_1g == 3);
    CHECK(rep->pages_2m == 3);
    CHECK(rep->pages_4k == 0);
    CHECK(im.page_table_pages == 3);  // PML4, PDPT, one PD
  }
  SECTION("2m over 128 MiB + 12 KiB: 64 large leaves and three 4 KiB pages") {
    const GuestImage im = load("io", 128 * kMiB + 12 * 1024, PageSize::k2M);
    auto rep = check_image_paging(im);
    REQUIRE(rep.ok());
    CHECK(rep->pages_2m == 64);
    CHECK(rep->pages_4k == 3);
  }
  SECTION("4k over 4 GiB: a million PTEs in 8 MiB of tables, never a mem-size buffer") {
    const GuestImage im = load("memtouch", 4 * kGiB, PageSize::k4K);
    CHECK(im.page_table_pages == 1 + 1 + 4 + 2048);
    CHECK(im.chunk_bytes() < 9 * kMiB);
    auto rep = check_image_paging(im);
    REQUIRE(rep.ok());
    CHECK(rep->pages_4k == 4 * kGiB / 4096);
  }
}

TEST_CASE("the initial vCPU state is exactly what the ABI says", "[loader]") {
  const GuestImage im = load("checksum", 128 * kMiB, PageSize::k2M);
  const auto& v = im.vcpu;
  CHECK(v.rip == 0x200000);
  CHECK(v.rip == im.entry);
  for (unsigned r = 0; r < baton::model::VcpuState::kGprCount; ++r) {
    CAPTURE(baton::model::gpr_name(r));
    if (r == baton::model::VcpuState::kRsp)
      CHECK(v.gpr[r] == kStackTop);
    else if (r == baton::model::VcpuState::kRdi)
      CHECK(v.gpr[r] == kBootPageGpa);
    else
      CHECK(v.gpr[r] == 0);
  }
  CHECK(v.rflags == 0x3002);   // reserved bit 1, IOPL=3, IF=0
  CHECK(v.cr0 == 0x80050033);  // PG AM WP NE ET MP PE
  CHECK(v.cr4 == 0x620);       // OSXMMEXCPT OSFXSR PAE; TSD=0
  CHECK(v.efer == 0xD00);      // NXE LMA LME
  CHECK(v.cr3 == im.pml4.value);
  CHECK(im.pml4 == im.page_tables_start);
  CHECK(v.cs.selector == 0x23);
  CHECK(v.cs.type == 0xB);
  CHECK(v.cs.dpl == 3);
  CHECK(v.cs.l == 1);
  CHECK(v.cs.db == 0);
  CHECK(v.cs.s == 1);
  CHECK(v.cs.present == 1);
  for (const auto* s : {&v.ss, &v.ds, &v.es, &v.fs, &v.gs}) {
    CHECK(s->selector == 0x1B);
    CHECK(s->type == 0x3);
    CHECK(s->dpl == 3);
    CHECK(s->present == 1);
    CHECK(s->base == 0);
  }
  CHECK(v.tr.selector == 0x28);
  CHECK(v.tr.type == 0xB);  // busy 64-bit TSS
  CHECK(v.tr.base == kTssGpa);
  CHECK(v.tr.limit == kTssLimit);
  CHECK(v.tr.s == 0);
  CHECK(v.tr.present == 1);
  CHECK(v.tr.unusable == 0);
  CHECK(v.ldt.unusable == 1);
  CHECK(v.gdtr.base == kGdtGpa);
  CHECK(v.gdtr.limit == 0x37);
  CHECK(v.idtr.base == kIdtGpa);
  CHECK(v.idtr.limit == 16 * kIdtVectors - 1);  // gates 0..31
  CHECK(v.dr[7] == 0x400);
  CHECK(v.tsc_offset == 0);

  SECTION("the GDT in memory agrees with the segment registers") {
    const std::uint64_t cs = gdt_entry(im, v.cs.selector);
    CHECK(((cs >> 40) & 0xF) == 0xB);
    CHECK(((cs >> 45) & 3) == 3);
    CHECK(((cs >> 47) & 1) == 1);
    CHECK(((cs >> 53) & 1) == 1);  // L
    const std::uint64_t ss = gdt_entry(im, v.ss.selector);
    CHECK(((ss >> 40) & 0xF) == 0x3);
    CHECK(((ss >> 45) & 3) == 3);
    const std::uint64_t tss_lo = gdt_entry(im, kSelTss);
    CHECK(((tss_lo >> 40) & 0xF) == 0xB);
    CHECK((((tss_lo >> 16) & 0xFFFFFF) | (((tss_lo >> 56) & 0xFF) << 24)) == kTssGpa);
    std::uint64_t rsp0 = 0;
    std::memcpy(&rsp0, chunk(im, "gdt+tss").bytes.data() + (kTssGpa - kGdtGpa) + 4, 8);
    CHECK(rsp0 == kRing0StackTop);
    // The I/O permission bitmap (SDM Vol. 1 §19.5.2) grants exactly the ABI's ports.
    CHECK((((tss_lo & 0xFFFF) | (((tss_lo >> 48) & 0xF) << 16))) == kTssLimit);
    const std::uint8_t* tss = chunk(im, "gdt+tss").bytes.data() + (kTssGpa - kGdtGpa);
    REQUIRE(chunk(im, "gdt+tss").bytes.size() == (kTssGpa - kGdtGpa) + kTssLimit + 1);
    std::uint16_t iomap = 0;
    std::memcpy(&iomap, tss + 102, 2);
    CHECK(iomap == 104);
    auto allowed = [&](unsigned port) {
      const unsigned byte = iomap + port / 8;
      return byte <= kTssLimit && (tss[byte] & (1u << (port % 8))) == 0;
    };
    for (unsigned port : {0x500u, 0x504u, 0x514u, 0x518u, 0x51Cu, 0x51Fu}) CHECK(allowed(port));
    for (unsigned port : {0x0u, 0x20u, 0x80u, 0x3F8u, 0x4FFu, 0x520u, 0xCF8u, 0xFFFFu}) CHECK_FALSE(allowed(port));
    CHECK(tss[kTssLimit] == 0xFF);  // the byte the SDM requires after the bitmap
  }
  SECTION("the IDT sends every exception vector to the trap handler at ring 0") {
    // 64-bit interrupt gates (SDM Vol. 3A §6.14.1, figure 6-8): type 0xE, DPL 0, P, IST 0,
    // the kernel code selector, a target inside the trap handler's page.
    const MemoryChunk& idt = chunk(im, "idt");
    REQUIRE(idt.gpa == Gpa{kIdtGpa});
    REQUIRE(idt.bytes.size() == 16 * kIdtVectors);
    const MemoryChunk& trap = chunk(im, "trap");
    REQUIRE(trap.gpa == Gpa{kTrapGpa});
    CHECK(trap.bytes.size() <= 4096);
    CHECK(std::memcmp(trap.bytes.data(), "BTNTRAP1", 8) == 0);
    std::set<std::uint64_t> targets;
    for (unsigned vec = 0; vec < kIdtVectors; ++vec) {
      CAPTURE(vec);
      std::uint64_t lo = 0, hi = 0;
      std::memcpy(&lo, idt.bytes.data() + 16 * vec, 8);
      std::memcpy(&hi, idt.bytes.data() + 16 * vec + 8, 8);
      CHECK(((lo >> 16) & 0xFFFF) == kSelKernelCs);
      CHECK(((lo >> 32) & 7) == 0);    // IST
      CHECK(((lo >> 40) & 0xF) == 0xE);  // 64-bit interrupt gate
      CHECK(((lo >> 45) & 3) == 0);    // DPL 0: INT n from ring 3 is #GP, not a way in
      CHECK(((lo >> 47) & 1) == 1);
      const std::uint64_t target = (lo & 0xFFFF) | (((lo >> 48) & 0xFFFF) << 16) | ((hi & 0xFFFFFFFF) << 32);
      CHECK(target >= kTrapGpa + 16 + 2 * kIdtVectors);
      CHECK(target < kTrapGpa + trap.bytes.size());
      targets.insert(target);
    }
    CHECK(targets.size() == kIdtVectors);  // one entry per vector: the handler knows which one
    REQUIRE(im.region("fault-record") != nullptr);
    CHECK(im.region("fault-record")->start == Gpa{kFaultRecordGpa});
  }
  SECTION("ring 0 is available as an option") {
    const GuestImage k = load("checksum", 128 * kMiB, PageSize::k2M, 0);
    CHECK(k.vcpu.cs.selector == kSelKernelCs);
    CHECK(k.vcpu.cs.dpl == 0);
    CHECK(k.vcpu.ss.selector == kSelKernelDs);
    CHECK(k.vcpu.ss.dpl == 0);
    CHECK(((gdt_entry(k, kSelKernelCs) >> 45) & 3) == 0);
    CHECK(check_image_paging(k).ok());
  }
}

TEST_CASE("the boot page carries the layout and the parameters", "[loader]") {
  GuestConfig cfg;
  cfg.mem_size = 512 * kMiB;
  cfg.page_size = PageSize::k2M;
  cfg.params = {{"size", 64 * kMiB}, {"order", 1}};
  auto im = load_builtin("memtouch", cfg);
  REQUIRE(im.ok());
  const MemoryChunk& c = chunk(*im, "boot");
  REQUIRE(c.gpa == Gpa{kBootPageGpa});
  REQUIRE(c.bytes.size() == 4096);
  BootPage b;
  std::memcpy(&b, c.bytes.data(), sizeof b);
  CHECK(b.magic == kBootMagic);
  CHECK(b.version == kBootVersion);
  CHECK(b.size == sizeof(BootPage));
  CHECK(b.mem_size == 512 * kMiB);
  CHECK(b.boot_page == kBootPageGpa);
  CHECK(b.stack_top == kStackTop);
  CHECK(b.free_start == im->free_start.value);
  CHECK(b.free_end == im->free_end.value);
  CHECK(b.free_start % (2 * kMiB) == 0);
  CHECK(b.page_tables_start == im->page_tables_start.value);
  CHECK(b.page_tables_end == 512 * kMiB);
  CHECK(b.page_size == 2 * kMiB);
  CHECK(b.ring == 3);
  CHECK(baton_param(&b, "size", 0) == 64 * kMiB);
  CHECK(baton_param(&b, "order", 0) == 1);
  CHECK(baton_param(&b, "passes", 0) == 4);  // completed with the default
  CHECK(baton_param(&b, "nonexistent", 77) == 77);
  CHECK(b.param_count == 6);
}

TEST_CASE("the layout covers memory without gaps and chunks lie inside their regions", "[loader]") {
  for (PageSize ps : {PageSize::k4K, PageSize::k1G}) {
    const GuestImage im = load("mixed", 2 * kGiB, ps);
    std::uint64_t at = 0;
    for (const Region& r : im.layout) {
      CAPTURE(r.name);
      CHECK(r.start.value == at);
      CHECK(r.size > 0);
      at = r.end().value;
    }
    CHECK(at == im.mem_size);
    for (std::size_t i = 0; i < im.chunks.size(); ++i) {
      const MemoryChunk& c = im.chunks[i];
      CAPTURE(c.name);
      CHECK(c.end().value <= im.mem_size);
      if (i > 0) CHECK(im.chunks[i - 1].end() <= c.gpa);
      const Region* inside = nullptr;
      for (const Region& r : im.layout)
        if (r.start <= c.gpa && c.end() <= r.end()) inside = &r;
      CHECK(inside != nullptr);
    }
    REQUIRE(im.region("page-tables") != nullptr);
    CHECK(im.region("page-tables")->start == im.page_tables_start);
    CHECK(chunk(im, "page-tables").bytes.size() == im.page_table_pages * 4096);
    REQUIRE(im.region("free") != nullptr);
    CHECK(im.region("free")->start == im.free_start);
    CHECK(im.region("image")->start == Gpa{kImageBase});
  }
}

TEST_CASE("ImageMemory reads chunks, zero elsewhere, nothing beyond memory", "[loader]") {
  const GuestImage im = load("tsc", 64 * kMiB, PageSize::k4K);
  const ImageMemory mem(im);
  std::uint64_t v = 1;
  REQUIRE(mem.read_u64(Gpa{kBootPageGpa}, &v));
  CHECK(v == kBootMagic);
  REQUIRE(mem.read_u64(im.free_start + 4096, &v));
  CHECK(v == 0);
  CHECK_FALSE(mem.read_u64(Gpa{im.mem_size}, &v));
  REQUIRE(mem.read_u64(Gpa{kImageBase}, &v));
  std::uint64_t first = 0;
  std::memcpy(&first, chunk(im, "elf[0]").bytes.data(), 8);
  CHECK(v == first);
}

TEST_CASE("a working set that does not fit is refused by name", "[loader]") {
  GuestConfig cfg;
  cfg.mem_size = 16 * kMiB;
  auto im = load_builtin("pagewalk", cfg);
  REQUIRE_FALSE(im.ok());
  CHECK_THAT(im.error().message, Catch::Contains("working set needs"));
  cfg.params = {{"size", 4 * kMiB}};
  CHECK(load_builtin("pagewalk", cfg).ok());
}

TEST_CASE("a user ELF built by hand loads, with bss beyond its file bytes", "[loader]") {
  baton::test::TestSegment text;
  baton::test::TestSegment data;
  data.vaddr = 0x201000;
  data.bytes = std::vector<std::uint8_t>(16, 0xAB);
  data.memsz = 0x3000;
  data.flags = 6;
  const auto elf = baton::test::build_elf({text, data});
  GuestConfig cfg;
  cfg.mem_size = 8 * kMiB;
  auto im = load_guest(elf, cfg);
  REQUIRE(im.ok());
  CHECK(im->image_start == Gpa{0x200000});
  CHECK(im->image_end == Gpa{0x204000});
  CHECK(im->free_start == Gpa{0x400000});
  CHECK(chunk(*im, "elf[1]").bytes.size() == 16);
  CHECK(check_image_paging(*im).ok());
}
