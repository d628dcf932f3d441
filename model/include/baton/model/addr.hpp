// Strong address types: guest-physical, host-physical, guest-virtual, and frame numbers.
//
// Each kind is a one-member struct so that mixing kinds fails to compile. Conversions are
// named functions; translation between guest and host exists only as a walk (ept_walk.hpp).
#pragma once

#include <compare>
#include <cstdint>
#include <functional>

namespace baton::model {

inline constexpr unsigned kPageShift = 12;
inline constexpr std::uint64_t kPageSize = std::uint64_t{1} << kPageShift;
inline constexpr std::uint64_t kPageMask = kPageSize - 1;

// Declares one strong 64-bit address or frame type with ordering and offset arithmetic.
#define BATON_STRONG_U64(Name)                                                        \
  struct Name {                                                                       \
    std::uint64_t value = 0;                                                          \
    constexpr Name() = default;                                                       \
    constexpr explicit Name(std::uint64_t v) : value(v) {}                            \
    friend constexpr auto operator<=>(const Name&, const Name&) = default;            \
    constexpr Name operator+(std::uint64_t d) const { return Name{value + d}; }       \
    constexpr Name operator-(std::uint64_t d) const { return Name{value - d}; }       \
    constexpr std::uint64_t operator-(Name o) const { return value - o.value; }       \
  };                                                                                  \
  static_assert(sizeof(Name) == 8, #Name " must stay one 64-bit word")

BATON_STRONG_U64(Gpa);  // guest-physical address
BATON_STRONG_U64(Hpa);  // host-physical address
BATON_STRONG_U64(Gva);  // guest-virtual (linear) address
BATON_STRONG_U64(Gfn);  // guest frame number (Gpa >> 12)
BATON_STRONG_U64(Hfn);  // host frame number (Hpa >> 12)

#undef BATON_STRONG_U64

// Returns the guest frame that holds a guest-physical address.
constexpr Gfn gfn_of(Gpa a) { return Gfn{a.value >> kPageShift}; }
// Returns the host frame that holds a host-physical address.
constexpr Hfn hfn_of(Hpa a) { return Hfn{a.value >> kPageShift}; }
// Returns the first guest-physical address of a guest frame.
constexpr Gpa gpa_of(Gfn f) { return Gpa{f.value << kPageShift}; }
// Returns the first host-physical address of a host frame.
constexpr Hpa hpa_of(Hfn f) { return Hpa{f.value << kPageShift}; }
// Returns the offset of an address inside its 4 KiB page.
constexpr std::uint64_t page_offset(std::uint64_t a) { return a & kPageMask; }
// Reinterprets a guest-virtual address as guest-physical under identity paging only.
constexpr Gpa gpa_identity(Gva a) { return Gpa{a.value}; }

}  // namespace baton::model

// Hash support so that the strong types can key unordered containers.
#define BATON_STRONG_HASH(Name)                                                   \
  template <>                                                                     \
  struct std::hash<baton::model::Name> {                                          \
    std::size_t operator()(baton::model::Name v) const noexcept {                 \
      return std::hash<std::uint64_t>{}(v.value);                                 \
    }                                                                             \
  }
BATON_STRONG_HASH(Gpa);
BATON_STRONG_HASH(Hpa);
BATON_STRONG_HASH(Gva);
BATON_STRONG_HASH(Gfn);
BATON_STRONG_HASH(Hfn);
#undef BATON_STRONG_HASH
