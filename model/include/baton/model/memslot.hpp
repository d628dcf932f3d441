// Memslots (guest-physical ranges and their host backing) and the owner map of host frames.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "baton/model/addr.hpp"
#include "baton/model/ept_entry.hpp"

namespace baton::model {

// One memslot: a GPA range backed by a contiguous range of host-physical memory.
struct Memslot {
  std::uint32_t id = 0;
  Gpa gpa;
  std::uint64_t size = 0;  // bytes, a multiple of 4 KiB
  Hpa hpa;                 // host backing of `gpa`
  bool read_only = false;
  bool dirty_log = false;

  Gpa end() const { return gpa + size; }
  bool contains(Gpa a) const { return a >= gpa && a < end(); }
  // Returns the host address the slot gives to a GPA inside it.
  Hpa hpa_at(Gpa a) const { return hpa + (a - gpa); }
  // The most permissions a translation of this slot may carry.
  Perms max_perms() const { return Perms{true, !read_only, true}; }
  friend bool operator==(const Memslot&, const Memslot&) = default;
};

// A guest-physical range declared as MMIO (marked with misconfigured entries on purpose).
struct GpaRange {
  Gpa gpa;
  std::uint64_t size = 0;
  Gpa end() const { return gpa + size; }
  bool contains(Gpa a) const { return a >= gpa && a < end(); }
  friend bool operator==(const GpaRange&, const GpaRange&) = default;
};

// Returns the memslot covering a GPA, if any.
const Memslot* find_memslot(const std::vector<Memslot>& slots, Gpa a);
// Returns an empty string if the slots are page-aligned and disjoint in GPA and HPA, else why not.
std::string validate_memslots(const std::vector<Memslot>& slots);

// Who owns a host frame.
enum class OwnerKind : std::uint8_t { kFree, kGuestRam, kEptTable, kVmcs, kHypervisor, kOtherVm };
// Names an owner kind ("guest-ram", "ept-table", ...).
const char* to_string(OwnerKind k);
// Parses an owner-kind name; returns nullopt when unknown.
std::optional<OwnerKind> owner_kind_from_string(const std::string& s);

// A range of host frames with one owner; `vm` names the VM for per-VM kinds.
struct OwnerRange {
  Hfn first;
  std::uint64_t count = 0;
  OwnerKind kind = OwnerKind::kFree;
  std::uint32_t vm = 0;
  Hfn end() const { return first + count; }
  friend bool operator==(const OwnerRange&, const OwnerRange&) = default;
};

// The owner of every host frame: sorted, disjoint ranges; frames not covered are kFree.
class OwnerMap {
 public:
  // Sets the owner of [first, first + count), replacing what was there.
  void assign(Hfn first, std::uint64_t count, OwnerKind kind, std::uint32_t vm = 0);
  // Returns the owner of one frame.
  OwnerRange owner_of(Hfn f) const;
  const std::vector<OwnerRange>& ranges() const { return ranges_; }
  friend bool operator==(const OwnerMap&, const OwnerMap&) = default;

 private:
  std::vector<OwnerRange> ranges_;
};

}  // namespace baton::model
