// The guest loader: turns a static x86-64 ELF and a configuration into a GuestImage, the
// backend-neutral description of a freshly booted guest (initial memory as chunks, layout,
// initial vCPU state). Both the simulator and the KVM backend start guests from it.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "baton/model/addr.hpp"
#include "baton/model/guest_walk.hpp"
#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"

namespace baton::guests {

// The largest leaf the loader's identity page tables may use.
enum class PageSize : std::uint8_t { k4K, k2M, k1G };
// Names a page size ("4k", "2m", "1g").
const char* to_string(PageSize p);
// Returns the bytes a leaf of this size maps.
std::uint64_t bytes_of(PageSize p);
// Parses "4k", "2m" or "1g" (case-insensitive; "4K", "2M", "1G", "4096" ... too).
Result<PageSize> parse_page_size(std::string_view s);

// One guest parameter as the boot page carries it.
struct Param {
  std::string key;  // at most kParamKeyMax characters, printable, no '='
  std::uint64_t value = 0;
  friend bool operator==(const Param&, const Param&) = default;
};

inline constexpr std::uint64_t kDefaultMemSize = std::uint64_t{128} << 20;
inline constexpr std::uint64_t kMinMemSize = std::uint64_t{4} << 20;
inline constexpr std::uint64_t kMaxMemSize = std::uint64_t{64} << 30;

// How to boot a guest.
struct GuestConfig {
  std::uint64_t mem_size = kDefaultMemSize;  // bytes; a multiple of 4 KiB in [4 MiB, 64 GiB]
  PageSize page_size = PageSize::k4K;        // largest leaf of the identity mapping
  unsigned ring = 3;                         // CPL at entry: 3 (IOPL=3) or 0
  std::vector<Param> params;                 // written to the boot page in this order
};

// Initial contents of one run of guest-physical memory. Memory outside all chunks is zero.
struct MemoryChunk {
  std::string name;  // "elf[0]", "boot", "gdt+tss", "page-tables"
  model::Gpa gpa;
  std::vector<std::uint8_t> bytes;
  model::Gpa end() const { return gpa + bytes.size(); }
};

// A named range of guest-physical memory in the layout.
struct Region {
  std::string name;
  model::Gpa start;
  std::uint64_t size = 0;
  model::Gpa end() const { return start + size; }
};

// A booted guest: everything a backend needs to create and start the VM.
struct GuestImage {
  std::uint64_t mem_size = 0;
  PageSize page_size = PageSize::k4K;
  unsigned ring = 3;
  std::uint64_t entry = 0;          // ELF entry point (== vcpu.rip)
  std::vector<MemoryChunk> chunks;  // sorted by address, non-overlapping
  std::vector<Region> layout;       // sorted by address, non-overlapping, covers [0, mem_size)
  std::vector<Param> params;        // as written to the boot page
  model::Gpa boot_page, gdt, tss, pml4;
  model::Gpa image_start, image_end;  // ELF segments
  model::Gpa stack_bottom, stack_top;
  model::Gpa page_tables_start, page_tables_end;
  model::Gpa free_start, free_end;     // working-set memory
  std::uint64_t page_table_pages = 0;  // tables the loader built (PML4 + PDPT + PDs + PTs)
  model::VcpuState vcpu;               // the initial state (long mode, CPL = ring)

  // Returns the region with this name, or nullptr.
  const Region* region(std::string_view name) const;
  // Total bytes held in chunks (what a backend must copy in).
  std::uint64_t chunk_bytes() const;
};

// Identifies an image for traces: "fnv1a64:" and 16 hex digits of FNV-1a over the memory size,
// page size, ring, entry point, parameters and every chunk's address and bytes. Two images
// with the same hash boot the same guest in the same memory.
std::string image_hash(const GuestImage& image);

// Builds the image for an ELF. Every malformed input gives one clear one-line error.
Result<GuestImage> load_guest(std::span<const std::uint8_t> elf, const GuestConfig& cfg);

// The largest guest ELF baton reads (guest RAM images are far smaller).
inline constexpr std::uint64_t kMaxElfFile = std::uint64_t{64} << 20;
// Reads a whole regular file of at most kMaxElfFile bytes (e.g. a user ELF) into memory.
Result<std::vector<std::uint8_t>> read_file(const std::string& path);

// The initial guest-physical memory of an image, for the guest page walker: chunk bytes,
// zero elsewhere below mem_size, absent beyond it.
class ImageMemory final : public model::GuestPhysicalMemory {
 public:
  explicit ImageMemory(const GuestImage& image) : image_(image) {}
  bool read_u64(model::Gpa a, std::uint64_t* out) const override;

 private:
  const GuestImage& image_;
};

// Checks an image's page tables with the model's guest walker: every page of [0, mem_size)
// is mapped, identity, user and writable. Returns the mapping summary.
Result<model::IdentityReport> check_image_paging(const GuestImage& image);

}  // namespace baton::guests
