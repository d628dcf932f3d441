// The handover protocol without KVM: a socketpair and a forked peer. The memfd passed with
// SCM_RIGHTS maps the very same pages in the receiver (a write on one side is seen on the
// other: nothing was copied); truncated, corrupted and half-sent messages from a peer killed
// with SIGKILL are clear errors.
#include "baton/hw/handover.hpp"

#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <functional>
#include <random>

#include "baton/hw/machine.hpp"
#include "baton/hw/worker.hpp"

using namespace baton;
using namespace baton::hw;

namespace {

struct Pair {
  int a = -1, b = -1;
  Pair() { REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, &a) == 0); }
  ~Pair() {
    if (a >= 0) ::close(a);
    if (b >= 0) ::close(b);
  }
  void close_a() { ::close(std::exchange(a, -1)); }
  void close_b() { ::close(std::exchange(b, -1)); }
};

// Builds a state with every field set to something non-default.
model::VcpuState sample_state(std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  model::VcpuState s;
  for (auto& g : s.gpr) g = rng();
  s.rip = rng();
  s.rflags = 0x202;
  s.cs = model::Segment{0, 0xffffffff, 0x2b, 11, 1, 3, 0, 1, 1, 1, 0, 0};
  s.ss = model::Segment{0, 0xffffffff, 0x23, 3, 1, 3, 1, 1, 0, 1, 0, 0};
  s.tr = model::Segment{0x3000, 0x67, 0x28, 11, 1, 0, 0, 0, 0, 0, 0, 0};
  s.ldt.unusable = 1;
  s.gdtr = {0x2000, 0x37};
  s.idtr = {0, 0xfff};
  s.cr0 = 0x80050033;
  s.cr2 = rng();
  s.cr3 = 0x100000;
  s.cr4 = 0x6a0;
  s.efer = 0xd01;
  s.dr[0] = rng();
  s.dr[6] = 0xffff0ff0;
  s.dr[7] = 0x400;
  for (int i = 0; i < 40; ++i) s.msrs[static_cast<std::uint32_t>(rng())] = rng();
  s.xcr0 = 7;
  s.xsave.resize(4096 + 64);
  for (auto& b : s.xsave) b = static_cast<std::uint8_t>(rng());
  s.lapic.resize(1024);
  for (auto& b : s.lapic) b = static_cast<std::uint8_t>(rng());
  s.events = {true, 14, true, 6, true, 0x30, true, true, 1};
  s.activity = model::ActivityState::kHlt;
  s.tsc_offset = rng();
  s.host_tsc_at_capture = rng();
  return s;
}

// Waits for a child and returns its exit code (or 128 + signal).
int reap(pid_t pid) {
  int st = 0;
  ::waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace

TEST_CASE("handover: a memfd passed over the socket maps the same pages in the receiver (no copy)",
          "[handover][memfd]") {
  constexpr std::uint64_t kSize = 8 << 20;
  auto mem = GuestMemory::try_create(kSize, "baton-test-guest");
  REQUIRE(mem);
  for (std::uint64_t i = 0; i < kSize; i += 4096) std::memcpy(mem->data() + i, &i, sizeof i);
  struct stat mine {};
  REQUIRE(::fstat(mem->fd(), &mine) == 0);

  Pair p;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    // The worker: receive the memfd, map it, check every page, write a marker, report the inode.
    p.close_a();
    auto m = recv_message(p.b, 10'000);
    if (!m || m->type != MsgType::kMemory || !m->fd.valid()) _exit(10);
    auto ann = decode_memory_announce(m->payload);
    if (!ann || ann->size != kSize) _exit(11);
    struct stat st {};
    if (::fstat(m->fd.get(), &st) != 0) _exit(12);
    auto adopted = GuestMemory::try_adopt(m->fd.release(), ann->size);
    if (!adopted) _exit(13);
    for (std::uint64_t i = 0; i < kSize; i += 4096) {
      std::uint64_t v;
      std::memcpy(&v, adopted->data() + i, sizeof v);
      if (v != i) _exit(14);
    }
    std::memcpy(adopted->data() + 4096 * 100 + 8, "worker!", 8);
    const std::string ino = std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
    if (!send_message(p.b, MsgType::kAck, ino)) _exit(15);
    _exit(0);
  }
  p.close_b();
  const MemoryAnnounce ann{kSize, 0, 0};
  REQUIRE(send_message(p.a, MsgType::kMemory, encode_memory_announce(ann), mem->fd()));
  auto ack = recv_message(p.a, 10'000);
  INFO((ack ? "" : ack.error().message));
  REQUIRE(ack);
  CHECK(ack->type == MsgType::kAck);
  CHECK(std::string(ack->payload.begin(), ack->payload.end()) ==
        std::to_string(mine.st_dev) + ":" + std::to_string(mine.st_ino));  // the same file, not a copy
  CHECK(reap(child) == 0);
  CHECK(std::memcmp(mem->data() + 4096 * 100 + 8, "worker!", 8) == 0);  // the worker's write shows here
}

TEST_CASE("handover: a vCPU state survives the socket bit for bit", "[handover][vcpu]") {
  Pair p;
  const model::VcpuState s = sample_state(7);
  REQUIRE(send_message(p.a, MsgType::kVcpuState, encode_vcpu_state(s)));
  auto m = recv_message(p.b, 1000);
  REQUIRE(m);
  CHECK(m->type == MsgType::kVcpuState);
  CHECK_FALSE(m->fd.valid());
  auto back = decode_vcpu_state(m->payload);
  REQUIRE(back);
  CHECK(*back == s);
  CHECK(model::diff_vcpu(*back, s).empty());
}

TEST_CASE("handover: every cut of a serialized vCPU state is a clear error", "[handover][vcpu][bad-input]") {
  const auto bytes = encode_vcpu_state(sample_state(3));
  for (std::size_t cut = 0; cut < bytes.size(); cut += 97) {
    auto r = decode_vcpu_state(std::span<const std::uint8_t>(bytes.data(), cut));
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::StartsWith("vCPU state: "));
  }
  auto extra = bytes;
  extra.push_back(0);
  auto r = decode_vcpu_state(extra);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("follow the last field"));
}

TEST_CASE("handover: a truncated message is detected", "[handover][bad-input]") {
  const auto payload = encode_vcpu_state(sample_state(1));
  SECTION("cut inside the payload") {
    Pair p;
    // Encode a whole message on a scratch pair, then forward only part of it.
    Pair scratch;
    REQUIRE(send_message(scratch.a, MsgType::kVcpuState, payload));
    std::vector<std::uint8_t> whole(kHandoverHeaderSize + payload.size());
    REQUIRE(::recv(scratch.b, whole.data(), whole.size(), MSG_WAITALL) == static_cast<ssize_t>(whole.size()));
    REQUIRE(::send(p.a, whole.data(), 100, 0) == 100);
    p.close_a();
    auto m = recv_message(p.b, 1000);
    REQUIRE_FALSE(m);
    CHECK(m.error().message == "truncated message: the peer closed the connection after 68 of " +
                                   std::to_string(payload.size()) +
                                   " payload bytes of a vcpu-state message (did it exit or die?)");
  }
  SECTION("cut inside the header") {
    Pair p;
    const std::uint8_t part[10] = {0x42, 0x48, 0x4f, 0x56, 1, 0, 3, 0, 0, 0};
    REQUIRE(::send(p.a, part, sizeof part, 0) == 10);
    p.close_a();
    auto m = recv_message(p.b, 1000);
    REQUIRE_FALSE(m);
    CHECK_THAT(m.error().message, Catch::StartsWith("truncated message") && Catch::Contains("10 of 32 header bytes"));
  }
  SECTION("closed between messages") {
    Pair p;
    p.close_a();
    auto m = recv_message(p.b, 1000);
    REQUIRE_FALSE(m);
    CHECK(m.error().message == "the peer closed the connection");
  }
}

TEST_CASE("handover: corrupted headers and payloads are detected", "[handover][bad-input]") {
  Pair scratch;
  const std::string text = "resume at stage 3";
  REQUIRE(send_message(scratch.a, MsgType::kAck, text));
  std::vector<std::uint8_t> whole(kHandoverHeaderSize + text.size());
  REQUIRE(::recv(scratch.b, whole.data(), whole.size(), MSG_WAITALL) == static_cast<ssize_t>(whole.size()));
  struct Case {
    std::size_t byte;
    std::uint8_t xor_mask;
    const char* expect;
  };
  for (const Case& c : {Case{0, 0xff, "bad magic"}, Case{4, 0x02, "protocol version"}, Case{6, 0x40, "unknown message type"},
                        Case{8, 0x04, "unknown header flags"}, Case{20, 0x10, "implausible"},
                        Case{24, 0x01, "checksum mismatch"}, Case{33, 0x01, "checksum mismatch"}}) {
    Pair p;
    auto bad = whole;
    bad[c.byte] ^= c.xor_mask;
    REQUIRE(::send(p.a, bad.data(), bad.size(), 0) == static_cast<ssize_t>(bad.size()));
    auto m = recv_message(p.b, 1000);
    INFO("byte " << c.byte);
    REQUIRE_FALSE(m);
    CHECK_THAT(m.error().message, Catch::StartsWith("corrupted message") && Catch::Contains(c.expect));
  }
}

TEST_CASE("handover: a peer killed with SIGKILL in the middle of a message is detected", "[handover][fault]") {
  const auto payload = encode_vcpu_state(sample_state(9));
  Pair p;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    p.close_b();
    Pair scratch;
    if (!send_message(scratch.a, MsgType::kVcpuState, payload)) _exit(1);
    std::vector<std::uint8_t> whole(kHandoverHeaderSize + payload.size());
    if (::recv(scratch.b, whole.data(), whole.size(), MSG_WAITALL) != static_cast<ssize_t>(whole.size())) _exit(2);
    // Half a message, then hang until killed.
    if (::send(p.a, whole.data(), whole.size() / 2, 0) != static_cast<ssize_t>(whole.size() / 2)) _exit(3);
    for (;;) ::pause();
  }
  p.close_a();
  // Wait until the half message has arrived, then kill the sender mid-message.
  std::uint8_t peek[kHandoverHeaderSize];
  REQUIRE(::recv(p.b, peek, sizeof peek, MSG_PEEK | MSG_WAITALL) == static_cast<ssize_t>(sizeof peek));
  REQUIRE(::kill(child, SIGKILL) == 0);
  CHECK(reap(child) == 128 + SIGKILL);
  auto m = recv_message(p.b, 5000);
  REQUIRE_FALSE(m);
  CHECK_THAT(m.error().message, Catch::StartsWith("truncated message: the peer closed the connection after") &&
                                    Catch::Contains("vcpu-state"));
  // Sending to the dead peer is a clear error too, not a SIGPIPE.
  auto s = send_message(p.b, MsgType::kAck, "still there?");
  REQUIRE_FALSE(s);
  CHECK_THAT(s.error().message, Catch::Contains("the peer closed the connection"));
}

TEST_CASE("handover: a silent peer times out instead of hanging", "[handover][fault]") {
  Pair p;
  auto m = recv_message(p.b, 50);
  REQUIRE_FALSE(m);
  CHECK_THAT(m.error().message, Catch::Contains("within 50 ms"));
}

TEST_CASE("handover: an fd the header does not declare is refused and closed", "[handover][bad-input]") {
  Pair p;
  auto mem = GuestMemory::try_create(4096);
  REQUIRE(mem);
  // Forge: declare no fd but attach one, by sending a valid no-fd message with SCM_RIGHTS on its first byte.
  Pair scratch;
  REQUIRE(send_message(scratch.a, MsgType::kAck, std::string("x")));
  std::vector<std::uint8_t> whole(kHandoverHeaderSize + 1);
  REQUIRE(::recv(scratch.b, whole.data(), whole.size(), MSG_WAITALL) == static_cast<ssize_t>(whole.size()));
  iovec iov{whole.data(), whole.size()};
  alignas(cmsghdr) char ctrl[CMSG_SPACE(sizeof(int))] = {};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = ctrl;
  msg.msg_controllen = sizeof ctrl;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  const int fd = mem->fd();
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  REQUIRE(::sendmsg(p.a, &msg, 0) == static_cast<ssize_t>(whole.size()));
  auto m = recv_message(p.b, 1000);
  REQUIRE_FALSE(m);
  CHECK_THAT(m.error().message, Catch::Contains("brought an fd it does not declare"));
}

TEST_CASE("guest memory: a memfd of the wrong size is refused, and images load into it", "[memfd]") {
  auto mem = GuestMemory::try_create(1 << 20);
  REQUIRE(mem);
  const int dup = ::dup(mem->fd());
  auto wrong = GuestMemory::try_adopt(dup, 2 << 20);
  REQUIRE_FALSE(wrong);
  CHECK_THAT(wrong.error().message, Catch::Contains("not the 0x200000 announced"));
  guests::GuestImage im;
  im.mem_size = 1 << 20;
  im.chunks.push_back(guests::MemoryChunk{"boot", model::Gpa{0x1000}, {1, 2, 3}});
  REQUIRE(mem->load(im));
  CHECK(mem->data()[0x1001] == 2);
  im.chunks.push_back(guests::MemoryChunk{"past", model::Gpa{(1 << 20) - 1}, {1, 2}});
  auto r = mem->load(im);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("outside guest memory"));
}

TEST_CASE("worker: without a usable KVM device the worker tells the source in one error message", "[worker][fault]") {
  Pair p;
  WorkerOptions wo;
  wo.device = "/nonexistent/kvm";
  wo.timeout_ms = 1000;
  auto r = serve_worker(p.b, wo);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::StartsWith("/nonexistent/kvm: No such file or directory"));
  auto m = recv_message(p.a, 1000);
  REQUIRE(m);
  CHECK(m->type == MsgType::kError);
  CHECK(std::string(m->payload.begin(), m->payload.end()) == r.error().message);
}

TEST_CASE("worker: the resume payload carries the input position and the state", "[worker][vcpu]") {
  const model::VcpuState s = sample_state(11);
  const auto bytes = encode_resume(ResumeInfo{42, 1234, {0x101, 0xdeadbeef, 3, 0}}, s);
  auto back = decode_resume(bytes);
  REQUIRE(back);
  CHECK(back->first.input_seed == 42);
  CHECK(back->first.inputs_consumed == 1234);
  // The port ABI's latches cross too, so a result half written before the pause completes after.
  CHECK(back->first.ports.tag == 0x101);
  CHECK(back->first.ports.lo == 0xdeadbeef);
  CHECK(back->first.ports.stage == 3);
  CHECK(back->first.ports.inputs == 1234);
  CHECK(back->second == s);
  auto cut = decode_resume(std::span<const std::uint8_t>(bytes.data(), 10));
  REQUIRE_FALSE(cut);
  CHECK_THAT(cut.error().message, Catch::Contains("too short"));
}

TEST_CASE("handover: random bytes on the socket are an error, never a crash or a hang", "[handover][bad-input]") {
  std::mt19937_64 rng(77);
  for (int i = 0; i < 300; ++i) {
    Pair p;
    std::vector<std::uint8_t> junk(rng() % 200);
    for (auto& b : junk) b = static_cast<std::uint8_t>(rng());
    if (i % 3 == 0 && junk.size() >= 8) {  // a plausible start, so the later checks are reached too
      const std::uint8_t start[8] = {0x42, 0x48, 0x4f, 0x56, 1, 0, static_cast<std::uint8_t>(1 + rng() % 8), 0};
      std::memcpy(junk.data(), start, 8);
    }
    if (!junk.empty()) REQUIRE(::send(p.a, junk.data(), junk.size(), 0) == static_cast<ssize_t>(junk.size()));
    p.close_a();
    auto m = recv_message(p.b, 1000);
    REQUIRE_FALSE(m);
    CHECK(m.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("precopy pages: exactly the dirty pages cross the socket, as bytes, into private memory", "[handover][precopy]") {
  constexpr std::uint64_t kSize = 4 << 20;  // 1024 pages
  auto src = GuestMemory::try_create(kSize), dst = GuestMemory::try_create(kSize);
  REQUIRE(src);
  REQUIRE(dst);
  std::mt19937_64 rng(5);
  for (std::uint64_t i = 0; i < kSize; i += 8) {
    const std::uint64_t v = rng();
    std::memcpy(src->data() + i, &v, 8);
  }
  std::vector<std::uint64_t> bitmap(kSize / 4096 / 64);
  std::vector<bool> dirty(kSize / 4096);
  for (int k = 0; k < 300; ++k) {  // scattered pages and a long run (split into several messages)
    const std::uint64_t g = rng() % (kSize / 4096);
    dirty[g] = true;
  }
  for (std::uint64_t g = 100; g < 700; ++g) dirty[g] = true;
  for (std::uint64_t g = 0; g < dirty.size(); ++g)
    if (dirty[g]) bitmap[g / 64] |= std::uint64_t{1} << (g % 64);

  Pair p;
  const pid_t child = ::fork();
  REQUIRE(child >= 0);
  if (child == 0) {  // the sender, so that a full socket buffer cannot deadlock the test
    p.close_b();
    auto sent = send_pages(p.a, src->data(), src->size(), bitmap);
    if (!sent) _exit(1);
    if (!send_message(p.a, MsgType::kDone, std::string())) _exit(2);
    _exit(0);
  }
  p.close_a();
  std::uint64_t pages = 0, messages = 0;
  for (;;) {
    auto m = recv_message(p.b, 10'000);
    REQUIRE(m);
    if (m->type == MsgType::kDone) break;
    REQUIRE(m->type == MsgType::kPages);
    auto n = apply_pages(m->payload, dst->data(), dst->size());
    REQUIRE(n);
    pages += *n;
    ++messages;
  }
  CHECK(reap(child) == 0);
  std::uint64_t expected_pages = 0;
  for (std::uint64_t g = 0; g < dirty.size(); ++g) {
    expected_pages += dirty[g];
    const bool same = std::memcmp(src->data() + g * 4096, dst->data() + g * 4096, 4096) == 0;
    INFO("gfn " << g);
    CHECK(same == dirty[g]);  // dirty pages copied, clean ones untouched (still zero)
  }
  CHECK(pages == expected_pages);
  CHECK(messages >= 3);  // the 600-page run needs three messages of at most 256 pages
}

TEST_CASE("precopy pages: malformed pages messages are clear errors", "[handover][precopy][bad-input]") {
  auto mem = GuestMemory::try_create(64 << 10);  // 16 pages
  REQUIRE(mem);
  auto payload = [](std::uint64_t gfn, std::uint64_t count, std::size_t bytes) {
    std::vector<std::uint8_t> v(16 + bytes);
    std::memcpy(v.data(), &gfn, 8);
    std::memcpy(v.data() + 8, &count, 8);
    return v;
  };
  auto short_msg = apply_pages(std::vector<std::uint8_t>(8), mem->data(), mem->size());
  REQUIRE_FALSE(short_msg);
  CHECK_THAT(short_msg.error().message, Catch::Contains("too short"));
  auto mismatch = apply_pages(payload(0, 2, 4096), mem->data(), mem->size());
  REQUIRE_FALSE(mismatch);
  CHECK_THAT(mismatch.error().message, Catch::Contains("do not match"));
  auto outside = apply_pages(payload(15, 2, 8192), mem->data(), mem->size());
  REQUIRE_FALSE(outside);
  CHECK_THAT(outside.error().message, Catch::Contains("outside guest memory"));
  auto huge = apply_pages(payload(~std::uint64_t{0}, 1, 4096), mem->data(), mem->size());
  REQUIRE_FALSE(huge);
  auto fits = apply_pages(payload(15, 1, 4096), mem->data(), mem->size());
  REQUIRE(fits);
  CHECK(*fits == 1);
}

TEST_CASE("handover: the worker's events message round-trips and refuses malformed payloads", "[handover][events]") {
  using baton::hw::VmmEvent;
  std::vector<VmmEvent> ev(3);
  ev[0] = VmmEvent{1000, 2, true, true, true, 0x514, 4, 0xdeadbeef, baton::guests::PortEventKind::kInput, 0xdeadbeef};
  ev[1] = VmmEvent{2000, 2, true, true, false, 0x510, 4, 3, baton::guests::PortEventKind::kSync, 3};
  ev[2] = VmmEvent{3000, 8, false, true, false, 0, 0, 0, baton::guests::PortEventKind::kNone, 0};  // KVM_EXIT_SHUTDOWN
  const auto bytes = baton::hw::encode_vmm_events(ev);
  CHECK(bytes.size() == 8 + 3 * 32);
  auto back = baton::hw::decode_vmm_events(bytes);
  REQUIRE(back);
  CHECK(*back == ev);
  // One byte short, one byte more, and an unknown port-event kind are refused.
  auto cut = bytes;
  cut.pop_back();
  CHECK_FALSE(baton::hw::decode_vmm_events(cut));
  auto more = bytes;
  more.push_back(0);
  CHECK_FALSE(baton::hw::decode_vmm_events(more));
  auto bad = bytes;
  bad[8 + 8 + 6] = 0x7f;  // the kind byte of event 0
  auto r = baton::hw::decode_vmm_events(bad);
  REQUIRE_FALSE(r);
  CHECK(r.error().message == "events message: event 0 is malformed");
}

// ---- the pause's delta: a state as its changes from the baseline the worker holds ----

namespace {
// A state an unprivileged guest can reach from `base`: new registers, segments' bases, events
// and TSC fields, and `chunks` random 64-byte pieces of the XSAVE image rewritten (some maybe
// the same piece twice, some maybe with the same bytes).
model::VcpuState guest_moves_on(const model::VcpuState& base, std::mt19937_64& rng, unsigned chunks) {
  model::VcpuState s = base;
  for (auto& g : s.gpr) g = rng();
  s.rip = rng();
  s.rflags = 0x2 | (rng() & 0x8d5);
  s.fs.base = rng();
  s.gs.base = rng();
  s.cr2 = rng();
  s.cr8 = rng() % 16;
  s.events.interrupt_shadow = static_cast<std::uint8_t>(rng() % 2);
  s.events.exception_pending = rng() % 2 == 0;
  s.events.exception_nr = static_cast<std::uint8_t>(rng() % 32);
  s.events.exception_error_code = static_cast<std::uint32_t>(rng());
  s.tsc_offset = rng();
  s.host_tsc_at_capture = rng();
  for (unsigned i = 0; i < chunks; ++i) {
    const std::size_t at = rng() % s.xsave.size();
    s.xsave[at] = static_cast<std::uint8_t>(rng());
  }
  return s;
}
}  // namespace

TEST_CASE("worker: a state sent as its delta from the baseline arrives whole", "[worker][vcpu][delta]") {
  std::mt19937_64 rng(2026);
  const ResumeInfo info{42, 1234, {0x101, 0xdeadbeef, 3, 0}};
  for (int round = 0; round < 300; ++round) {
    const model::VcpuState base = sample_state(rng());
    const model::VcpuState s = guest_moves_on(base, rng, static_cast<unsigned>(rng() % 12));
    const auto bytes = encode_resume(info, s, &base);
    model::VcpuState got = base;
    auto d = decode_resume_into(bytes, got);
    REQUIRE(d);
    CHECK(d->delta);
    REQUIRE(got == s);
    CHECK(d->info.inputs_consumed == 1234);
    CHECK(d->info.ports.stage == 3);
    // Only what changed crosses: far less than the whole state (its MSRs, LAPIC and XSAVE image).
    CHECK(bytes.size() < encode_resume(info, s).size() / 4);
  }
}

TEST_CASE("worker: a state that differs from the baseline where a delta cannot say it is sent whole",
          "[worker][vcpu][delta]") {
  std::mt19937_64 rng(7);
  const model::VcpuState base = sample_state(5);
  // What an unprivileged guest cannot change: each makes the encoding the whole state.
  std::vector<std::pair<const char*, std::function<void(model::VcpuState&)>>> privileged = {
      {"an MSR's value", [](model::VcpuState& s) { s.msrs.begin()->second ^= 1; }},
      {"one more MSR", [](model::VcpuState& s) { s.msrs[0x277] = 0x0007040600070406; }},
      {"one MSR fewer", [](model::VcpuState& s) { s.msrs.erase(s.msrs.begin()); }},
      {"the LAPIC page", [](model::VcpuState& s) { s.lapic.at(0x80) ^= 0x10; }},
      {"DR7", [](model::VcpuState& s) { s.dr[7] |= 1; }},
      {"XCR0", [](model::VcpuState& s) { s.xcr0 = 3; }},
      {"the activity state", [](model::VcpuState& s) { s.activity = model::ActivityState::kActive; }},
      {"the XSAVE size", [](model::VcpuState& s) { s.xsave.resize(s.xsave.size() + 64); }},
  };
  for (const auto& [what, change] : privileged) {
    INFO(what);
    model::VcpuState s = guest_moves_on(base, rng, 3);
    change(s);
    const auto bytes = encode_resume(ResumeInfo{}, s, &base);
    CHECK(bytes == encode_resume(ResumeInfo{}, s));
    model::VcpuState got = base;
    auto d = decode_resume_into(bytes, got);
    REQUIRE(d);
    CHECK_FALSE(d->delta);
    CHECK(got == s);
  }
}

TEST_CASE("worker: a truncated, padded or out-of-range delta is an error", "[worker][vcpu][delta][bad-input]") {
  std::mt19937_64 rng(99);
  const model::VcpuState base = sample_state(8);
  model::VcpuState s = guest_moves_on(base, rng, 0);
  s.xsave.back() ^= 0xff;  // the last piece changes
  const auto bytes = encode_resume(ResumeInfo{}, s, &base);
  // A delta needs the baseline: the decoder of whole states says so instead of misreading it.
  auto whole = decode_resume(bytes);
  REQUIRE_FALSE(whole);
  CHECK_THAT(whole.error().message, Catch::Contains("delta"));
  for (std::size_t cut = 32; cut < bytes.size(); ++cut) {
    model::VcpuState got = base;
    INFO("cut at " << cut);
    CHECK_FALSE(decode_resume_into(std::span<const std::uint8_t>(bytes.data(), cut), got));
  }
  auto padded = bytes;
  padded.push_back(0);
  model::VcpuState got = base;
  CHECK_FALSE(decode_resume_into(padded, got));
  // The piece index is the last 66 bytes' first two: point it past the baseline's XSAVE area.
  auto outside = bytes;
  const std::size_t idx_at = outside.size() - 2 - kXsaveChunk;
  const std::uint16_t past = static_cast<std::uint16_t>(base.xsave.size() / kXsaveChunk);
  outside[idx_at] = static_cast<std::uint8_t>(past);
  outside[idx_at + 1] = static_cast<std::uint8_t>(past >> 8);
  got = base;
  auto r = decode_resume_into(outside, got);
  REQUIRE_FALSE(r);
  CHECK_THAT(r.error().message, Catch::Contains("outside"));
  // Random byte flips: an error or some state, never a crash or a write outside the XSAVE area.
  for (int i = 0; i < 2000; ++i) {
    auto flipped = bytes;
    flipped[32 + rng() % (flipped.size() - 32)] ^= static_cast<std::uint8_t>(1 + rng() % 255);
    got = base;
    (void)decode_resume_into(flipped, got);
    CHECK(got.xsave.size() == base.xsave.size());
  }
}
