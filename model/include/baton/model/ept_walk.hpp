// The EPT walker: translates a guest-physical address through a 4-level tree held in
// host-physical memory, exactly as SDM Vol. 3C §29.3.2-29.3.3 describes.
#pragma once

#include <array>
#include <cstdint>
#include <string>

#include "baton/model/addr.hpp"
#include "baton/model/ept_entry.hpp"
#include "baton/model/phys_mem.hpp"

namespace baton::model {

// The kind of access being translated.
enum class Access : std::uint8_t { kRead, kWrite, kFetch };
// Names an access kind.
const char* to_string(Access a);

// Exit-qualification bits for EPT violations (SDM Vol. 3C §28.2.1, table 28-7).
namespace qual {
inline constexpr std::uint64_t kRead = 1u << 0;          // the access was a data read
inline constexpr std::uint64_t kWrite = 1u << 1;         // the access was a data write
inline constexpr std::uint64_t kFetch = 1u << 2;         // the access was an instruction fetch
inline constexpr std::uint64_t kReadable = 1u << 3;      // AND of bit 0 over the entries used
inline constexpr std::uint64_t kWritable = 1u << 4;      // AND of bit 1
inline constexpr std::uint64_t kExecutable = 1u << 5;    // AND of bit 2
inline constexpr std::uint64_t kUserExecutable = 1u << 6;  // AND of bit 10 (MBEC only)
inline constexpr std::uint64_t kGlaValid = 1u << 7;      // guest linear-address field valid
inline constexpr std::uint64_t kFinalTranslation = 1u << 8;  // access to the final GPA, not a guest paging entry
inline constexpr std::uint64_t kNmiUnblocking = 1u << 12;
}  // namespace qual

// Context of an access that the exit qualification reports besides the access type.
struct AccessContext {
  bool gla_valid = true;          // a guest-linear address caused the access
  bool final_translation = true;  // to the final GPA (true) or a guest paging-structure entry
};

// One step of a walk: the level, where the entry was read, and its value.
struct WalkStep {
  unsigned level = 0;
  Hpa entry_addr;
  EptEntry entry;
};

// Outcome kinds of a walk.
enum class WalkKind : std::uint8_t { kTranslated, kViolation, kMisconfig, kAbsentFrame };
// Names a walk outcome kind.
const char* to_string(WalkKind k);

// The result of one walk. Which fields are meaningful depends on `kind`:
// - kTranslated: hpa, leaf_level, perms (the AND over levels), memtype, ipat.
// - kViolation: level (where it stopped or the leaf), qualification, perms (AND so far).
// - kMisconfig: level and reason.
// - kAbsentFrame: level whose table frame is not in memory (an answer, not a crash).
struct WalkResult {
  WalkKind kind = WalkKind::kViolation;
  Hpa hpa;
  unsigned leaf_level = 0;
  Perms perms;
  unsigned memtype = 0;
  bool ipat = false;
  unsigned level = 0;
  std::uint64_t qualification = 0;
  MisconfigReason reason = MisconfigReason::kNone;
  std::array<WalkStep, 4> path{};
  unsigned path_len = 0;

  bool translated() const { return kind == WalkKind::kTranslated; }
};

// Walks `gpa` for an access. Does not touch A/D flags (see set_accessed_dirty).
WalkResult walk(Eptp eptp, Gpa gpa, Access access, const PhysicalMemory& mem,
                const EptConfig& cfg = {}, AccessContext ctx = {});

// Sets the accessed flag on every entry of a successful walk's path, and the dirty flag on
// the leaf when the access is a write, if the EPTP enables A/D (SDM §29.3.5). Returns the
// number of entries changed.
unsigned set_accessed_dirty(Eptp eptp, const WalkResult& w, Access access, FrameStore& mem);

// Renders a walk as readable lines, level by level.
std::string describe(const WalkResult& w, Gpa gpa, const EptConfig& cfg = {});

}  // namespace baton::model
