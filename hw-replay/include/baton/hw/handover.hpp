// The handover protocol between the source VMM and `baton vmm-worker` over a UNIX stream
// socket (docs/kvm-backend.md, "Handover protocol").
//
// Every message is a 32-byte header and a payload:
//   0  u32 magic "BHOV"        4 u16 version (1)     6 u16 type
//   8  u32 flags (bit 0: an fd travels with the header as SCM_RIGHTS)   12 u32 reserved (0)
//   16 u64 payload length      24 u64 XXH64 of header bytes 0..24 followed by the payload
// Guest memory never travels as bytes in a local migration: its memfd does, so the worker
// maps the very same pages. A message cut short (the peer closed or died mid-message), a bad
// checksum or a bad header is one clear error; received fds are closed on every error path.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "baton/hw/kvm.hpp"
#include "baton/model/result.hpp"
#include "baton/model/vcpu_state.hpp"

namespace baton::hw {

inline constexpr std::uint32_t kHandoverMagic = 0x564f4842;  // "BHOV" little-endian
inline constexpr std::uint16_t kHandoverVersion = 3;
inline constexpr std::size_t kHandoverHeaderSize = 32;
inline constexpr std::uint64_t kHandoverMaxPayload = std::uint64_t{1} << 30;

enum class MsgType : std::uint16_t {
  kHello = 1,      // worker -> source: ready (payload: pid as u32)
  kMemory = 2,     // source -> worker: the guest memfd (payload: MemoryAnnounce), fd attached
  kVcpuState = 3,  // source -> worker: a serialized model::VcpuState
  kAck = 4,        // either way: the previous message was applied (payload: free text)
  kError = 5,      // either way: the previous message failed (payload: one line)
  kPages = 6,      // precopy: u64 first gfn, u64 count, then count pages of 4 KiB
  kDone = 7,       // source -> worker: no more messages
  kResumed = 8,    // worker -> source: the first KVM_RUN begins (u64 CLOCK_MONOTONIC ns, then the restored state)
  kResult = 9,     // worker -> source: the guest exited (payload: encode_guest_run)
  kEvents = 10,    // worker -> source, after the result: what its VMM saw (payload: encode_vmm_events)
  kBaseline = 11,  // source -> worker: the vCPU state to pre-load before the pause, mailbox memfd attached
  kWakeup = 12,    // source -> worker: an eventfd the source writes when the pause begins (no payload)
};
// Names a message type ("vcpu-state", ...), or "type N" for an unknown one.
std::string to_string(MsgType t);

// A received message: its type, payload and the fd that came with it (if any).
struct Message {
  MsgType type = MsgType::kAck;
  std::vector<std::uint8_t> payload;
  Fd fd;
};

// Sends one message, with `fd` attached when it is >= 0. Errors name the type and errno.
Result<void> send_message(int sock, MsgType type, std::span<const std::uint8_t> payload, int fd = -1);
inline Result<void> send_message(int sock, MsgType type, const std::string& text) {
  return send_message(sock, type, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
}
// Receives one whole message. timeout_ms < 0 waits forever. Errors: "the peer closed the
// connection" before a message; "truncated message: ..." when the peer closed (or died)
// inside one; "corrupted message: ..." for a bad magic, version, length or checksum.
Result<Message> recv_message(int sock, int timeout_ms = -1);

// The payload of kMemory: where the memfd goes in the guest-physical address space.
struct MemoryAnnounce {
  std::uint64_t size = 0;
  std::uint64_t gpa = 0;
  std::uint32_t slot = 0;
};
std::vector<std::uint8_t> encode_memory_announce(const MemoryAnnounce& m);
Result<MemoryAnnounce> decode_memory_announce(std::span<const std::uint8_t> p);

// Precopy: guest pages crossing the socket as bytes. A kPages payload is u64 first gfn, u64
// count, then count * 4 KiB. send_pages() sends every page whose bit is set in a dirty bitmap
// (bit i of word w = gfn 64w + i, as KVM_GET_DIRTY_LOG returns it), in runs of at most
// kMaxPagesPerMessage, and returns the bytes of guest memory sent. apply_pages() copies one
// message into memory of `size` bytes at `base`, checking the bounds, and returns its pages.
inline constexpr std::uint64_t kMaxPagesPerMessage = 256;
Result<std::uint64_t> send_pages(int sock, const std::uint8_t* base, std::uint64_t size,
                                 const std::vector<std::uint64_t>& dirty_bitmap);
Result<std::uint64_t> apply_pages(std::span<const std::uint8_t> payload, std::uint8_t* base, std::uint64_t size);

// A compact binary form of a vCPU state (magic "VCPU", version 1, then every field).
std::vector<std::uint8_t> encode_vcpu_state(const model::VcpuState& s);
// The same bytes appended to `o` (a warm buffer of enough capacity allocates nothing).
void encode_vcpu_state_to(const model::VcpuState& s, std::vector<std::uint8_t>& o);
Result<model::VcpuState> decode_vcpu_state(std::span<const std::uint8_t> p);

// A vCPU state as its changes from a baseline both sides hold (magic "VDLT", version 1): the
// fields an unprivileged guest changes (registers, segments, descriptor tables, control
// registers, events, the TSC fields) and the kXsaveChunk-byte pieces of the XSAVE image that
// differ (u16 index, then the bytes); every other field is the baseline's. Appends it to `o`
// and returns true, or appends nothing and returns false where `s` differs from `base` elsewhere
// (MSRs, LAPIC, debug registers, XCR0, activity state, XSAVE size): send it whole then.
inline constexpr std::size_t kXsaveChunk = 64;
bool encode_vcpu_delta_to(const model::VcpuState& base, const model::VcpuState& s, std::vector<std::uint8_t>& o);
// Whether an encoded state is a delta (its magic is "VDLT") rather than a whole state.
bool is_vcpu_delta(std::span<const std::uint8_t> p);
// Applies a delta in place to `s`, which must hold the baseline it was taken against (it then
// holds the state; nothing is allocated). A malformed delta (bad magic or version, truncated, a
// piece outside the XSAVE area) is an error, with `s` then partly written.
Result<void> apply_vcpu_delta(std::span<const std::uint8_t> p, model::VcpuState& s);

}  // namespace baton::hw
