// The VMCS field catalog (SDM Vol. 3D Appendix B) and a Vmcs store keyed by field.
//
// A field encoding (SDM Vol. 3C §25.11.2, table 25-21) packs: bit 0 access type (full/high),
// bits 9:1 index, bits 11:10 type (control, read-only data, guest state, host state),
// bits 14:13 width (16-bit, 64-bit, 32-bit, natural width).
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace baton::model {

enum class VmcsWidth : std::uint8_t { k16 = 0, k64 = 1, k32 = 2, kNatural = 3 };
enum class VmcsArea : std::uint8_t { kControl = 0, kReadOnly = 1, kGuestState = 2, kHostState = 3 };

// Names a width ("16", "32", "64", "natural") and an area ("control", "read-only", ...).
const char* to_string(VmcsWidth w);
const char* to_string(VmcsArea a);

// Decodes the width and area that an encoding itself carries.
constexpr VmcsWidth width_of_encoding(std::uint32_t enc) { return static_cast<VmcsWidth>((enc >> 13) & 3); }
constexpr VmcsArea area_of_encoding(std::uint32_t enc) { return static_cast<VmcsArea>((enc >> 10) & 3); }

// One catalogued field.
struct VmcsField {
  std::uint32_t encoding;
  const char* name;  // SDM name in snake_case; 64-bit fields carry no _full/_high suffix
  VmcsWidth width;
  VmcsArea area;
};

// Returns every field of SDM Appendix B (64-bit fields once, by their full encoding).
std::span<const VmcsField> vmcs_catalog();
// Finds a field by encoding (a 64-bit field's high encoding maps to its full field), or nullptr.
const VmcsField* find_vmcs_field(std::uint32_t encoding);
// Finds a field by name, or nullptr.
const VmcsField* find_vmcs_field(std::string_view name);

// Well-known encodings used across baton.
namespace vmcs {
inline constexpr std::uint32_t kEptPointer = 0x201A;
inline constexpr std::uint32_t kTscOffset = 0x2010;
inline constexpr std::uint32_t kPmlAddress = 0x200E;
inline constexpr std::uint32_t kGuestPmlIndex = 0x0812;
inline constexpr std::uint32_t kVmcsLinkPointer = 0x2800;
inline constexpr std::uint32_t kGuestIa32Efer = 0x2806;
inline constexpr std::uint32_t kGuestIa32Pat = 0x2804;
inline constexpr std::uint32_t kPinBasedControls = 0x4000;
inline constexpr std::uint32_t kProcBasedControls = 0x4002;
inline constexpr std::uint32_t kSecondaryControls = 0x401E;
inline constexpr std::uint32_t kExitControls = 0x400C;
inline constexpr std::uint32_t kEntryControls = 0x4012;
inline constexpr std::uint32_t kExitReason = 0x4402;
inline constexpr std::uint32_t kExitQualification = 0x6400;
inline constexpr std::uint32_t kGuestLinearAddress = 0x640A;
inline constexpr std::uint32_t kGuestPhysicalAddress = 0x2400;
inline constexpr std::uint32_t kVmExitInstructionLength = 0x440C;
inline constexpr std::uint32_t kGuestCr0 = 0x6800;
inline constexpr std::uint32_t kGuestCr3 = 0x6802;
inline constexpr std::uint32_t kGuestCr4 = 0x6804;
inline constexpr std::uint32_t kGuestDr7 = 0x681A;
inline constexpr std::uint32_t kGuestRsp = 0x681C;
inline constexpr std::uint32_t kGuestRip = 0x681E;
inline constexpr std::uint32_t kGuestRflags = 0x6820;
inline constexpr std::uint32_t kGuestActivityState = 0x4826;
inline constexpr std::uint32_t kGuestInterruptibility = 0x4824;
inline constexpr std::uint32_t kHostCr3 = 0x6C02;
inline constexpr std::uint32_t kHostRip = 0x6C16;
}  // namespace vmcs

// A VMCS: values keyed by field encoding. Values are truncated to the field's width.
class Vmcs {
 public:
  // Sets a catalogued field; returns false (and stores nothing) for an unknown encoding.
  bool set(std::uint32_t encoding, std::uint64_t value);
  // Returns a field's value, or nullopt when never set.
  std::optional<std::uint64_t> get(std::uint32_t encoding) const;
  // Returns a field's value or 0.
  std::uint64_t get_or_zero(std::uint32_t encoding) const { return get(encoding).value_or(0); }
  bool contains(std::uint32_t encoding) const { return values_.count(encoding) != 0; }
  const std::map<std::uint32_t, std::uint64_t>& values() const { return values_; }
  // Returns only the fields of one area.
  std::map<std::uint32_t, std::uint64_t> area(VmcsArea a) const;
  friend bool operator==(const Vmcs&, const Vmcs&) = default;

 private:
  std::map<std::uint32_t, std::uint64_t> values_;
};

}  // namespace baton::model
