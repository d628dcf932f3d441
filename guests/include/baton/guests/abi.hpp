// The guest boot ABI for host code: port numbers, result tags, exit codes and the fixed
// layout, as typed C++ constants over the one C header that guests compile too
// (guests/abi/baton_abi.h). docs/guest-abi.md documents every number.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "baton_abi.h"

namespace baton::guests {

// Ports (all 32-bit accesses except the console byte).
inline constexpr std::uint16_t kPortConsole = BATON_PORT_CONSOLE;       // OUT8: console byte
inline constexpr std::uint16_t kPortResultTag = BATON_PORT_RESULT_TAG;  // OUT32: tag of the next result
inline constexpr std::uint16_t kPortResultLo = BATON_PORT_RESULT_LO;    // OUT32: low half (latched)
inline constexpr std::uint16_t kPortResultHi = BATON_PORT_RESULT_HI;    // OUT32: high half, commits
inline constexpr std::uint16_t kPortSync = BATON_PORT_SYNC;             // OUT32: sync point "stage N"
inline constexpr std::uint16_t kPortInput = BATON_PORT_INPUT;           // IN32: host-supplied value
inline constexpr std::uint16_t kPortExit = BATON_PORT_EXIT;             // OUT32: exit code
inline constexpr std::uint16_t kPortFault = BATON_PORT_FAULT;           // OUT32: trap handler: unhandled vector

// Result tags.
inline constexpr std::uint32_t kResultChecksum = BATON_RESULT_CHECKSUM;
inline constexpr std::uint32_t kResultTscMaxBackward = BATON_RESULT_TSC_MAX_BACKWARD;
inline constexpr std::uint32_t kResultTscMaxForward = BATON_RESULT_TSC_MAX_FORWARD;
inline constexpr std::uint32_t kResultTscBackwardCount = BATON_RESULT_TSC_BACKWARD_COUNT;
inline constexpr std::uint32_t kResultTscElapsed = BATON_RESULT_TSC_ELAPSED;
inline constexpr std::uint32_t kResultPhaseBase = BATON_RESULT_PHASE_BASE;
// Returns whether results with this tag must be identical on every run (tag 0 and >= 0x100).
constexpr bool is_deterministic_tag(std::uint32_t tag) { return BATON_RESULT_IS_DETERMINISTIC(tag); }

// Exit codes.
inline constexpr std::uint32_t kExitOk = BATON_EXIT_OK;
inline constexpr std::uint32_t kExitBadBoot = BATON_EXIT_BAD_BOOT;
inline constexpr std::uint32_t kExitBadParam = BATON_EXIT_BAD_PARAM;
inline constexpr std::uint32_t kExitSelfcheck = BATON_EXIT_SELFCHECK;

// Fixed guest-physical layout.
inline constexpr std::uint64_t kBootPageGpa = BATON_GPA_BOOT_PAGE;
inline constexpr std::uint64_t kGdtGpa = BATON_GPA_GDT;
inline constexpr std::uint64_t kTssGpa = BATON_GPA_TSS;
inline constexpr std::uint32_t kTssIomap = BATON_TSS_IOMAP;  // offset of the I/O permission bitmap
inline constexpr std::uint32_t kTssLimit = BATON_TSS_LIMIT;  // 104 + 164 bitmap bytes + the 0xFF byte - 1
static_assert(kTssLimit == 0x10C, "docs/guest-abi.md gives the TSS limit as 0x10C");
inline constexpr std::uint64_t kIdtGpa = BATON_GPA_IDT;
inline constexpr std::uint64_t kTrapGpa = BATON_GPA_TRAP;
inline constexpr std::uint64_t kFaultRecordGpa = BATON_GPA_FAULT_RECORD;
inline constexpr std::uint32_t kIdtVectors = BATON_IDT_VECTORS;
inline constexpr std::uint64_t kRing0StackTop = BATON_GPA_RING0_STACK_TOP;
inline constexpr std::uint64_t kStackBottom = BATON_GPA_STACK_BOTTOM;
inline constexpr std::uint64_t kStackTop = BATON_GPA_STACK_TOP;
inline constexpr std::uint64_t kImageBase = BATON_GPA_IMAGE_BASE;
inline constexpr std::uint64_t kLowAreaEnd = BATON_LOW_AREA_END;

// GDT selectors.
inline constexpr std::uint16_t kSelKernelCs = BATON_SEL_KERNEL_CS;
inline constexpr std::uint16_t kSelKernelDs = BATON_SEL_KERNEL_DS;
inline constexpr std::uint16_t kSelUserDs = BATON_SEL_USER_DS;
inline constexpr std::uint16_t kSelUserCs = BATON_SEL_USER_CS;
inline constexpr std::uint16_t kSelTss = BATON_SEL_TSS;

// Boot page.
inline constexpr std::uint64_t kBootMagic = BATON_BOOT_MAGIC;
inline constexpr std::uint32_t kBootVersion = BATON_BOOT_VERSION;
inline constexpr std::uint32_t kMaxParams = BATON_BOOT_MAX_PARAMS;
inline constexpr std::size_t kParamKeyMax = BATON_PARAM_KEY_LEN - 1;  // characters, without the NUL
inline constexpr std::string_view kParamInputSeed = BATON_PARAM_INPUT_SEED;

using BootPage = ::baton_boot;
static_assert(sizeof(BootPage) <= 4096, "the boot parameters must fit in one page");
static_assert(offsetof(BootPage, params) == 0x80, "docs/guest-abi.md fixes params at offset 0x80");
static_assert(sizeof(BootPage) == 0xC80, "docs/guest-abi.md gives the boot page size as 0xC80");
static_assert(offsetof(BootPage, free_start) == 0x50 && offsetof(BootPage, ring) == 0x68, "docs/guest-abi.md offsets");

using FaultRecord = ::baton_fault;
static_assert(sizeof(FaultRecord) == 0x60 && offsetof(FaultRecord, cr2) == 0x38 && offsetof(FaultRecord, rax) == 0x40,
              "guests/trap/trap.S writes the record at these offsets");
// Names an exception vector ("#GP", "#PF", ...), or "vector N" for a reserved one.
std::string vector_name(std::uint32_t vector);
// Describes a fault record in one line: vector, error code, RIP, CS, RSP, CR2.
std::string fault_text(const FaultRecord& f);

// Returns the n-th (0-based) value of the default input sequence for a seed.
inline std::uint32_t input_value(std::uint64_t seed, std::uint64_t n) { return baton_input_value(seed, n); }

// Names a port of the ABI ("console", "sync", ...), or nullptr for a port outside it.
const char* port_name(std::uint16_t port);

}  // namespace baton::guests
