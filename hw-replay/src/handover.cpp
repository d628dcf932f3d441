// The handover protocol (include/baton/hw/handover.hpp).
#include "baton/hw/handover.hpp"

#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>

namespace baton::hw {

namespace {

void put(std::vector<std::uint8_t>& o, std::uint64_t v, unsigned bytes) {
  for (unsigned i = 0; i < bytes; ++i) o.push_back(static_cast<std::uint8_t>(v >> (8 * i)));
}
std::uint64_t get(const std::uint8_t* p, unsigned bytes) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < bytes; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

std::uint64_t checksum(const std::uint8_t* header, std::span<const std::uint8_t> payload) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, header, 24);
  if (!payload.empty()) XXH64_update(st, payload.data(), payload.size());
  const std::uint64_t h = XXH64_digest(st);
  XXH64_freeState(st);
  return h;
}

// Reads exactly n bytes (the first read may carry an fd). `got` counts what arrived.
Result<void> read_exact(int sock, std::uint8_t* buf, std::size_t n, int timeout_ms, std::size_t& got, Fd* fd) {
  while (got < n) {
    if (timeout_ms >= 0) {
      pollfd p{sock, POLLIN, 0};
      const int r = ::poll(&p, 1, timeout_ms);
      if (r == 0) return make_error("no data from the peer within " + std::to_string(timeout_ms) + " ms");
      if (r < 0 && errno != EINTR) return make_error(std::string("poll on the handover socket failed: ") + std::strerror(errno));
      if (r < 0) continue;
    }
    iovec iov{buf + got, n - got};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (fd && !fd->valid()) {
      m.msg_control = ctrl;
      m.msg_controllen = sizeof ctrl;
    }
    const ssize_t r = ::recvmsg(sock, &m, MSG_CMSG_CLOEXEC);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == ECONNRESET) return make_error("connection reset by peer");
      return make_error(std::string("recvmsg on the handover socket failed: ") + std::strerror(errno));
    }
    if (m.msg_controllen > 0) {
      for (cmsghdr* c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
          int f;
          std::memcpy(&f, CMSG_DATA(c), sizeof f);
          *fd = Fd(f);
        }
      if (m.msg_flags & MSG_CTRUNC) return make_error("an fd arrived truncated (MSG_CTRUNC)");
    }
    if (r == 0) return make_error("eof");
    got += static_cast<std::size_t>(r);
  }
  return ok_result();
}

// Writes all bytes; the first sendmsg carries the fd.
Result<void> write_all(int sock, const std::uint8_t* buf, std::size_t n, int fd) {
  std::size_t done = 0;
  while (done < n) {
    iovec iov{const_cast<std::uint8_t*>(buf + done), n - done};
    alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))];
    msghdr m{};
    m.msg_iov = &iov;
    m.msg_iovlen = 1;
    if (fd >= 0 && done == 0) {
      std::memset(ctrl, 0, sizeof ctrl);
      m.msg_control = ctrl;
      m.msg_controllen = sizeof ctrl;
      cmsghdr* c = CMSG_FIRSTHDR(&m);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int));
      std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    const ssize_t r = ::sendmsg(sock, &m, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      if (errno == EPIPE || errno == ECONNRESET) return make_error("the peer closed the connection (it exited or died)");
      return make_error(std::string("sendmsg failed: ") + std::strerror(errno));
    }
    done += static_cast<std::size_t>(r);
  }
  return ok_result();
}

bool known_type(std::uint16_t t) { return t >= 1 && t <= static_cast<std::uint16_t>(MsgType::kWakeup); }

}  // namespace

std::string to_string(MsgType t) {
  switch (t) {
    case MsgType::kHello: return "hello";
    case MsgType::kMemory: return "memory";
    case MsgType::kVcpuState: return "vcpu-state";
    case MsgType::kAck: return "ack";
    case MsgType::kError: return "error";
    case MsgType::kPages: return "pages";
    case MsgType::kDone: return "done";
    case MsgType::kResumed: return "resumed";
    case MsgType::kResult: return "result";
    case MsgType::kEvents: return "events";
    case MsgType::kBaseline: return "baseline";
    case MsgType::kWakeup: return "wakeup";
  }
  return "type " + std::to_string(static_cast<unsigned>(t));
}

Result<void> send_message(int sock, MsgType type, std::span<const std::uint8_t> payload, int fd) {
  if (payload.size() > kHandoverMaxPayload)
    return make_error(to_string(type) + " message: payload of " + std::to_string(payload.size()) + " bytes is too large");
  std::vector<std::uint8_t> buf;
  buf.reserve(kHandoverHeaderSize + payload.size());
  put(buf, kHandoverMagic, 4);
  put(buf, kHandoverVersion, 2);
  put(buf, static_cast<std::uint16_t>(type), 2);
  put(buf, fd >= 0 ? 1u : 0u, 4);
  put(buf, 0, 4);
  put(buf, payload.size(), 8);
  put(buf, checksum(buf.data(), payload), 8);
  buf.insert(buf.end(), payload.begin(), payload.end());
  auto r = write_all(sock, buf.data(), buf.size(), fd);
  if (!r) return make_error("sending a " + to_string(type) + " message: " + r.error().message);
  return ok_result();
}

Result<Message> recv_message(int sock, int timeout_ms) {
  Message msg;
  std::uint8_t h[kHandoverHeaderSize];
  std::size_t got = 0;
  if (auto r = read_exact(sock, h, sizeof h, timeout_ms, got, &msg.fd); !r) {
    if (r.error().message != "eof") return r.error();
    if (got == 0) return make_error("the peer closed the connection");
    return make_error("truncated message: the peer closed the connection after " + std::to_string(got) + " of " +
                      std::to_string(kHandoverHeaderSize) + " header bytes (did it exit or die?)");
  }
  if (get(h, 4) != kHandoverMagic) return make_error("corrupted message: bad magic (not the baton handover protocol)");
  if (get(h + 4, 2) != kHandoverVersion)
    return make_error("corrupted message: handover protocol version " + std::to_string(get(h + 4, 2)) +
                      " (this baton speaks " + std::to_string(kHandoverVersion) + ")");
  const auto type = static_cast<std::uint16_t>(get(h + 6, 2));
  const std::uint64_t flags = get(h + 8, 4);
  const std::uint64_t len = get(h + 16, 8);
  msg.type = static_cast<MsgType>(type);
  if (!known_type(type)) return make_error("corrupted message: unknown message type " + std::to_string(type));
  if (flags > 1 || get(h + 12, 4) != 0) return make_error("corrupted message: unknown header flags");
  if (len > kHandoverMaxPayload)
    return make_error("corrupted message: payload length " + std::to_string(len) + " is implausible");
  if ((flags & 1) != msg.fd.valid())
    return make_error(std::string("corrupted message: the ") + to_string(msg.type) + " message " +
                      (msg.fd.valid() ? "brought an fd it does not declare" : "declares an fd that did not arrive"));
  msg.payload.resize(len);
  got = 0;
  if (auto r = read_exact(sock, msg.payload.data(), len, timeout_ms, got, nullptr); !r) {
    if (r.error().message != "eof") return make_error(to_string(msg.type) + " message: " + r.error().message);
    return make_error("truncated message: the peer closed the connection after " + std::to_string(got) + " of " +
                      std::to_string(len) + " payload bytes of a " + to_string(msg.type) +
                      " message (did it exit or die?)");
  }
  if (checksum(h, msg.payload) != get(h + 24, 8))
    return make_error("corrupted message: checksum mismatch in a " + to_string(msg.type) + " message");
  return msg;
}

std::vector<std::uint8_t> encode_memory_announce(const MemoryAnnounce& m) {
  std::vector<std::uint8_t> o;
  put(o, m.size, 8);
  put(o, m.gpa, 8);
  put(o, m.slot, 4);
  return o;
}

Result<MemoryAnnounce> decode_memory_announce(std::span<const std::uint8_t> p) {
  if (p.size() != 20) return make_error("memory message: payload of " + std::to_string(p.size()) + " bytes, expected 20");
  return MemoryAnnounce{get(p.data(), 8), get(p.data() + 8, 8), static_cast<std::uint32_t>(get(p.data() + 16, 4))};
}

// ---- precopy pages ----

Result<std::uint64_t> send_pages(int sock, const std::uint8_t* base, std::uint64_t size,
                                 const std::vector<std::uint64_t>& dirty_bitmap) {
  const std::uint64_t pages = size / 4096;
  std::uint64_t sent = 0;
  std::vector<std::uint8_t> msg;
  std::uint64_t g = 0;
  while (g < pages) {
    const bool dirty = g / 64 < dirty_bitmap.size() && (dirty_bitmap[g / 64] >> (g % 64) & 1);
    if (!dirty) {
      ++g;
      continue;
    }
    std::uint64_t n = 1;
    while (g + n < pages && n < kMaxPagesPerMessage && (g + n) / 64 < dirty_bitmap.size() &&
           (dirty_bitmap[(g + n) / 64] >> ((g + n) % 64) & 1))
      ++n;
    msg.clear();
    put(msg, g, 8);
    put(msg, n, 8);
    msg.insert(msg.end(), base + g * 4096, base + (g + n) * 4096);
    BATON_TRY_VOID(send_message(sock, MsgType::kPages, msg));
    sent += n * 4096;
    g += n;
  }
  return sent;
}

Result<std::uint64_t> apply_pages(std::span<const std::uint8_t> payload, std::uint8_t* base, std::uint64_t size) {
  if (payload.size() < 16) return make_error("pages message: " + std::to_string(payload.size()) + " bytes, too short");
  const std::uint64_t g = get(payload.data(), 8), n = get(payload.data() + 8, 8);
  if (n == 0 || n > kMaxPagesPerMessage || payload.size() != 16 + n * 4096)
    return make_error("pages message: " + std::to_string(n) + " pages do not match a payload of " +
                      std::to_string(payload.size()) + " bytes");
  if (g > size / 4096 || n > size / 4096 - g)
    return make_error("pages message: gfns " + std::to_string(g) + ".." + std::to_string(g + n - 1) +
                      " lie outside guest memory");
  std::memcpy(base + g * 4096, payload.data() + 16, n * 4096);
  return n;
}

// ---- vCPU state ----

namespace {
constexpr std::uint32_t kVcpuMagic = 0x55504356;  // "VCPU"
constexpr std::uint32_t kVcpuVersion = 1;
constexpr std::uint32_t kDeltaMagic = 0x544c4456;  // "VDLT"
constexpr std::uint32_t kDeltaVersion = 1;

void put_seg(std::vector<std::uint8_t>& o, const model::Segment& s) {
  put(o, s.base, 8);
  put(o, s.limit, 4);
  put(o, s.selector, 2);
  for (std::uint8_t b : {s.type, s.present, s.dpl, s.db, s.s, s.l, s.g, s.avl, s.unusable}) put(o, b, 1);
}

// Reads fields in order; the first read past the end records the field's name.
struct Reader {
  std::span<const std::uint8_t> p;
  std::size_t at = 0;
  const char* failed = nullptr;
  std::uint64_t u(unsigned bytes, const char* what) {
    if (failed) return 0;
    if (p.size() - at < bytes) {
      failed = what;
      return 0;
    }
    const std::uint64_t v = get(p.data() + at, bytes);
    at += bytes;
    return v;
  }
  model::Segment seg(const char* what) {
    model::Segment s;
    s.base = u(8, what);
    s.limit = static_cast<std::uint32_t>(u(4, what));
    s.selector = static_cast<std::uint16_t>(u(2, what));
    std::uint8_t* f[] = {&s.type, &s.present, &s.dpl, &s.db, &s.s, &s.l, &s.g, &s.avl, &s.unusable};
    for (std::uint8_t* b : f) *b = static_cast<std::uint8_t>(u(1, what));
    return s;
  }
  std::vector<std::uint8_t> bytes(const char* what) {
    const std::uint64_t n = u(4, what);
    if (failed) return {};
    if (p.size() - at < n) {
      failed = what;
      return {};
    }
    std::vector<std::uint8_t> v(p.begin() + static_cast<long>(at), p.begin() + static_cast<long>(at + n));
    at += n;
    return v;
  }
};

// The fields an unprivileged guest changes, in the order both encodings use: the registers,
// segments, descriptor tables and control registers, then (put_events) the events.
void put_regs(std::vector<std::uint8_t>& o, const model::VcpuState& s) {
  for (std::uint64_t g : s.gpr) put(o, g, 8);
  put(o, s.rip, 8);
  put(o, s.rflags, 8);
  for (const model::Segment* g : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt}) put_seg(o, *g);
  for (const model::DescriptorTable* d : {&s.gdtr, &s.idtr}) {
    put(o, d->base, 8);
    put(o, d->limit, 2);
  }
  for (std::uint64_t v : {s.cr0, s.cr2, s.cr3, s.cr4, s.cr8, s.efer}) put(o, v, 8);
}
void put_events(std::vector<std::uint8_t>& o, const model::VcpuEvents& e) {
  put(o, e.exception_pending, 1);
  put(o, e.exception_nr, 1);
  put(o, e.exception_has_error_code, 1);
  put(o, e.exception_error_code, 4);
  put(o, e.interrupt_pending, 1);
  put(o, e.interrupt_nr, 1);
  put(o, e.nmi_pending, 1);
  put(o, e.nmi_masked, 1);
  put(o, e.interrupt_shadow, 1);
}
void read_regs(Reader& r, model::VcpuState& s) {
  for (auto& g : s.gpr) g = r.u(8, "general-purpose registers");
  s.rip = r.u(8, "rip");
  s.rflags = r.u(8, "rflags");
  for (model::Segment* g : {&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss, &s.tr, &s.ldt}) *g = r.seg("segments");
  for (model::DescriptorTable* d : {&s.gdtr, &s.idtr}) {
    d->base = r.u(8, "descriptor tables");
    d->limit = static_cast<std::uint16_t>(r.u(2, "descriptor tables"));
  }
  for (std::uint64_t* v : {&s.cr0, &s.cr2, &s.cr3, &s.cr4, &s.cr8, &s.efer}) *v = r.u(8, "control registers");
}
void read_events(Reader& r, model::VcpuEvents& e) {
  e.exception_pending = r.u(1, "events") != 0;
  e.exception_nr = static_cast<std::uint8_t>(r.u(1, "events"));
  e.exception_has_error_code = r.u(1, "events") != 0;
  e.exception_error_code = static_cast<std::uint32_t>(r.u(4, "events"));
  e.interrupt_pending = r.u(1, "events") != 0;
  e.interrupt_nr = static_cast<std::uint8_t>(r.u(1, "events"));
  e.nmi_pending = r.u(1, "events") != 0;
  e.nmi_masked = r.u(1, "events") != 0;
  e.interrupt_shadow = static_cast<std::uint8_t>(r.u(1, "events"));
}
// Checks the magic and version of an encoding.
Result<void> read_header(Reader& r, std::uint32_t magic, std::uint32_t version, const char* what) {
  if (r.u(4, "magic") != magic || r.failed) return make_error(std::string(what) + ": bad magic");
  const std::uint64_t ver = r.u(4, "version");
  if (r.failed || ver != version)
    return make_error(std::string(what) + ": version " + std::to_string(ver) + " (this baton reads " +
                      std::to_string(version) + ")");
  return ok_result();
}
}  // namespace

std::vector<std::uint8_t> encode_vcpu_state(const model::VcpuState& s) {
  std::vector<std::uint8_t> o;
  encode_vcpu_state_to(s, o);
  return o;
}

void encode_vcpu_state_to(const model::VcpuState& s, std::vector<std::uint8_t>& o) {
  o.reserve(o.size() + 512 + s.xsave.size() + s.lapic.size() + 12 * s.msrs.size());
  put(o, kVcpuMagic, 4);
  put(o, kVcpuVersion, 4);
  put_regs(o, s);
  for (std::uint64_t d : s.dr) put(o, d, 8);
  put(o, s.msrs.size(), 4);
  for (const auto& [i, v] : s.msrs) {
    put(o, i, 4);
    put(o, v, 8);
  }
  put(o, s.xcr0, 8);
  put(o, s.xsave.size(), 4);
  o.insert(o.end(), s.xsave.begin(), s.xsave.end());
  put(o, s.lapic.size(), 4);
  o.insert(o.end(), s.lapic.begin(), s.lapic.end());
  put_events(o, s.events);
  put(o, static_cast<std::uint8_t>(s.activity), 1);
  put(o, s.tsc_offset, 8);
  put(o, s.host_tsc_at_capture, 8);
}

Result<model::VcpuState> decode_vcpu_state(std::span<const std::uint8_t> p) {
  Reader r{p};
  BATON_TRY_VOID(read_header(r, kVcpuMagic, kVcpuVersion, "vCPU state"));
  model::VcpuState s;
  read_regs(r, s);
  for (auto& d : s.dr) d = r.u(8, "debug registers");
  const std::uint64_t nmsr = r.u(4, "MSR count");
  if (!r.failed && nmsr > (p.size() - r.at) / 12) return make_error("vCPU state: MSR count " + std::to_string(nmsr) + " exceeds the payload");
  for (std::uint64_t i = 0; i < nmsr && !r.failed; ++i) {
    const auto idx = static_cast<std::uint32_t>(r.u(4, "MSRs"));
    s.msrs[idx] = r.u(8, "MSRs");
  }
  s.xcr0 = r.u(8, "xcr0");
  s.xsave = r.bytes("XSAVE area");
  s.lapic = r.bytes("LAPIC page");
  read_events(r, s.events);
  const std::uint64_t act = r.u(1, "activity state");
  s.tsc_offset = r.u(8, "TSC");
  s.host_tsc_at_capture = r.u(8, "TSC");
  if (r.failed) return make_error(std::string("vCPU state: truncated in the ") + r.failed);
  if (act > 3) return make_error("vCPU state: activity state " + std::to_string(act) + " is not 0..3");
  s.activity = static_cast<model::ActivityState>(act);
  if (r.at != p.size())
    return make_error("vCPU state: " + std::to_string(p.size() - r.at) + " bytes follow the last field");
  return s;
}

bool encode_vcpu_delta_to(const model::VcpuState& base, const model::VcpuState& s, std::vector<std::uint8_t>& o) {
  if (s.dr != base.dr || s.xcr0 != base.xcr0 || s.activity != base.activity || s.xsave.size() != base.xsave.size() ||
      s.xsave.size() % kXsaveChunk != 0 || s.xsave.size() / kXsaveChunk > 0xffff || s.lapic != base.lapic ||
      s.msrs != base.msrs)
    return false;
  put(o, kDeltaMagic, 4);
  put(o, kDeltaVersion, 4);
  put_regs(o, s);
  put_events(o, s.events);
  put(o, s.tsc_offset, 8);
  put(o, s.host_tsc_at_capture, 8);
  const std::size_t count_at = o.size();
  put(o, 0, 2);
  std::uint64_t n = 0;
  for (std::size_t c = 0; c < s.xsave.size(); c += kXsaveChunk) {
    if (std::memcmp(s.xsave.data() + c, base.xsave.data() + c, kXsaveChunk) == 0) continue;
    put(o, c / kXsaveChunk, 2);
    o.insert(o.end(), s.xsave.begin() + static_cast<long>(c), s.xsave.begin() + static_cast<long>(c + kXsaveChunk));
    ++n;
  }
  o[count_at] = static_cast<std::uint8_t>(n);
  o[count_at + 1] = static_cast<std::uint8_t>(n >> 8);
  return true;
}

bool is_vcpu_delta(std::span<const std::uint8_t> p) { return p.size() >= 4 && get(p.data(), 4) == kDeltaMagic; }

Result<void> apply_vcpu_delta(std::span<const std::uint8_t> p, model::VcpuState& s) {
  Reader r{p};
  BATON_TRY_VOID(read_header(r, kDeltaMagic, kDeltaVersion, "vCPU delta"));
  read_regs(r, s);
  read_events(r, s.events);
  s.tsc_offset = r.u(8, "TSC");
  s.host_tsc_at_capture = r.u(8, "TSC");
  const std::uint64_t n = r.u(2, "XSAVE chunk count");
  if (r.failed) return make_error(std::string("vCPU delta: truncated in the ") + r.failed);
  if (p.size() - r.at != n * (2 + kXsaveChunk))
    return make_error("vCPU delta: " + std::to_string(n) + " XSAVE chunks need " + std::to_string(n * (2 + kXsaveChunk)) +
                      " bytes, " + std::to_string(p.size() - r.at) + " follow");
  for (std::uint64_t i = 0; i < n; ++i) {
    const std::uint64_t c = r.u(2, "XSAVE chunk");
    if ((c + 1) * kXsaveChunk > s.xsave.size())
      return make_error("vCPU delta: XSAVE chunk " + std::to_string(c) + " lies outside the " +
                        std::to_string(s.xsave.size()) + "-byte XSAVE area of the baseline");
    std::memcpy(s.xsave.data() + c * kXsaveChunk, p.data() + r.at, kXsaveChunk);
    r.at += kXsaveChunk;
  }
  return ok_result();
}

}  // namespace baton::hw
