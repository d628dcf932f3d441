// Trace format v1: round trips, truncation at every byte, corruption, versioning and the
// writer's overwrite and atomicity rules.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "baton/traces/trace.hpp"

using namespace baton::traces;
namespace fs = std::filesystem;

namespace {
// Makes a header with every field set.
TraceHeader sample_header() {
  TraceHeader h;
  h.source = "baton-sim";
  h.guest = "checksum";
  h.params = {{"n", "1000"}, {"pages", "2m"}};
  h.cost_profile = R"({"base_cpi":1.0,"exit_roundtrip":1500})";
  h.time_unit = "cycles";
  h.meta = {{"host", "test"}, {"unicode", "gr\xc3\xbc\xc3\x9f"}};
  return h;
}

// Makes `n` random events of every known type.
std::vector<TraceEvent> random_events(std::size_t n, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<TraceEvent> out;
  out.reserve(n);
  for (std::size_t i = 0; i < n; ++i) {
    TraceEvent e;
    e.type = static_cast<EventType>(1 + rng() % 9);
    e.vm = static_cast<std::uint32_t>(rng() % 4);
    e.vcpu = static_cast<std::uint32_t>(rng() % 8);
    e.time = i * 100 + rng() % 100;
    e.insn = rng();
    e.code = static_cast<std::uint32_t>(rng());
    e.flags = static_cast<std::uint32_t>(rng());
    e.a = rng();
    e.b = rng() % 3 == 0 ? 0 : rng();
    e.c = rng();
    out.push_back(e);
  }
  return out;
}

// A fresh, empty temporary directory removed at scope exit.
struct TempDir {
  fs::path path;
  TempDir() {
    path = fs::temp_directory_path() /
           ("baton-traces-test-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}()));
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};
}  // namespace

TEST_CASE("A trace with many chunks of random events reads back identically", "[traces][io]") {
  for (std::size_t n :
       {std::size_t{0}, std::size_t{1}, std::size_t{4095}, std::size_t{4096}, std::size_t{4097}, std::size_t{20000}}) {
    CAPTURE(n);
    Trace t{sample_header(), random_events(n, n + 7)};
    auto back = decode_trace(encode_trace(t));
    REQUIRE(back.ok());
    CHECK(back->header == t.header);
    CHECK(back->events == t.events);
  }
}

TEST_CASE("The streaming writer produces the same bytes as the in-memory encoder", "[traces][io]") {
  TempDir dir;
  Trace t{sample_header(), random_events(10000, 3)};
  const auto path = (dir.path / "a.trace").string();
  auto w = TraceWriter::open(path, t.header);
  REQUIRE(w.ok());
  for (const auto& e : t.events) (*w)->write(e);
  REQUIRE((*w)->close().ok());
  std::ifstream in(path, std::ios::binary);
  std::vector<std::uint8_t> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  CHECK(bytes == encode_trace(t));
  auto back = read_trace(path);
  REQUIRE(back.ok());
  CHECK(back->events == t.events);
}

TEST_CASE("Every truncation of a small trace is rejected with one truncation error", "[traces][io]") {
  Trace t{sample_header(), {}};  // two chunks of regular (well compressible, so small) events
  for (std::uint64_t i = 0; i < 4100; ++i)
    t.events.push_back(exit_event(1, i * 1500, i * 300, 48, 0x181, i << 12, 0x401000));
  const auto bytes = encode_trace(t);
  for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
    std::vector<std::uint8_t> part(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(cut));
    auto r = decode_trace(part);
    CAPTURE(cut, bytes.size());
    REQUIRE_FALSE(r.ok());
    INFO(r.error().message);
    CHECK(r.error().message.rfind("truncated trace", 0) == 0);
    CHECK(r.error().message.find('\n') == std::string::npos);
  }
}

TEST_CASE("A flipped bit anywhere in a trace is detected", "[traces][io]") {
  Trace t{sample_header(), random_events(300, 5)};
  const auto bytes = encode_trace(t);
  std::mt19937_64 rng(99);
  for (int i = 0; i < 2000; ++i) {
    auto bad = bytes;
    const std::size_t at = rng() % bad.size();
    bad[at] ^= static_cast<std::uint8_t>(1u << (rng() % 8));
    auto r = decode_trace(bad);
    CAPTURE(at);
    REQUIRE_FALSE(r.ok());
  }
}

TEST_CASE("A corrupted chunk is reported as a checksum mismatch naming the chunk", "[traces][io]") {
  Trace t{sample_header(), random_events(9000, 8)};
  auto bytes = encode_trace(t);
  bytes[bytes.size() - 100] ^= 0x40;  // inside the last chunk's payload
  auto r = decode_trace(bytes);
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message == "corrupted trace: checksum mismatch in chunk 2 (events from 8192)");
}

TEST_CASE("A wrong magic and an unknown version are named as such", "[traces][io]") {
  const auto bytes = encode_trace(Trace{sample_header(), random_events(10, 1)});
  auto bad_magic = bytes;
  bad_magic[0] = 'X';
  auto r1 = decode_trace(bad_magic);
  REQUIRE_FALSE(r1.ok());
  CHECK(r1.error().message == "not a baton trace (bad magic)");
  auto v2 = bytes;
  v2[8] = 2;
  auto r2 = decode_trace(v2);
  REQUIRE_FALSE(r2.ok());
  CHECK(r2.error().message == "unsupported trace format version 2 (this baton reads version 1)");
  auto r3 = decode_trace(std::vector<std::uint8_t>{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
  REQUIRE_FALSE(r3.ok());
  CHECK(r3.error().message == "not a baton trace (bad magic)");
}

TEST_CASE("Bytes after the end marker and dropped chunks are rejected", "[traces][io]") {
  const auto bytes = encode_trace(Trace{sample_header(), random_events(9000, 2)});
  auto extra = bytes;
  extra.push_back(0);
  REQUIRE_FALSE(decode_trace(extra).ok());
  // Duplicate the whole file body: the end marker then disagrees with the chunks seen.
  auto longer = bytes;
  longer.insert(longer.end() - 32, bytes.end() - 32 - 50, bytes.end() - 32);
  REQUIRE_FALSE(decode_trace(longer).ok());
}

TEST_CASE("The writer refuses to overwrite an existing file unless asked", "[traces][io]") {
  TempDir dir;
  const auto path = (dir.path / "t.trace").string();
  { std::ofstream(path) << "precious"; }
  auto w = TraceWriter::open(path, sample_header());
  REQUIRE_FALSE(w.ok());
  CHECK(w.error().message.find("already exists") != std::string::npos);
  auto w2 = TraceWriter::open(path, sample_header(), true);
  REQUIRE(w2.ok());
  (*w2)->write(sync_event(0, 1, 2, 3));
  REQUIRE((*w2)->close().ok());
  auto back = read_trace(path);
  REQUIRE(back.ok());
  CHECK(back->events.size() == 1);
}

TEST_CASE("A file created while the writer runs is not overwritten at close", "[traces][io]") {
  TempDir dir;
  const auto path = (dir.path / "race.trace").string();
  auto w = TraceWriter::open(path, sample_header());
  REQUIRE(w.ok());
  { std::ofstream(path) << "someone else"; }
  auto r = (*w)->close();
  REQUIRE_FALSE(r.ok());
  std::ifstream in(path);
  std::string s;
  std::getline(in, s);
  CHECK(s == "someone else");
  CHECK(std::distance(fs::directory_iterator(dir.path), fs::directory_iterator{}) == 1);
}

TEST_CASE("Nothing appears at the target path until the writer is closed", "[traces][io]") {
  TempDir dir;
  const auto path = (dir.path / "late.trace").string();
  {
    auto w = TraceWriter::open(path, sample_header());
    REQUIRE(w.ok());
    for (const auto& e : random_events(5000, 4)) (*w)->write(e);
    CHECK_FALSE(fs::exists(path));
  }  // dropped without close: the temporary file goes too
  CHECK_FALSE(fs::exists(path));
  CHECK(fs::is_empty(dir.path));
}

TEST_CASE("Closing twice is an error and reading a missing file names it", "[traces][io]") {
  TempDir dir;
  const auto path = (dir.path / "x.trace").string();
  auto w = TraceWriter::open(path, sample_header());
  REQUIRE(w.ok());
  REQUIRE((*w)->close().ok());
  CHECK_FALSE((*w)->close().ok());
  auto r = read_trace((dir.path / "missing.trace").string());
  REQUIRE_FALSE(r.ok());
  CHECK(r.error().message.find("missing.trace") != std::string::npos);
}

TEST_CASE("Event factories fill the documented fields", "[traces][io]") {
  auto e = exit_event(1, 10, 20, 48, 0x181, 0x1000, 0x401000);
  CHECK(e.type == EventType::kExit);
  CHECK(e.code == 48);
  CHECK(e.a == 0x181);
  CHECK(e.b == 0x1000);
  CHECK(e.c == 0x401000);
  auto s = ept_set_event(1, 10, 0x200, 0x1234, 2, 7);
  CHECK(s.code == 2);
  CHECK(s.flags == 7);
  auto io = io_event(1, 10, 20, 0x3f8, true, 1, 0x41);
  CHECK(io.code == 0x3f8);
  CHECK(io.flags == (kAccessIn | 1u << kAccessSizeShift));
  CHECK(describe(io) == "io in port=0x3f8 size=1 value=0x41");
  CHECK(describe(s) == "ept-set gfn=0x200 pfn=0x1234 level=2 perms=rwx");
  CHECK(std::string(to_string(MigrationPhase::kStopAndCopy)) == "stop-and-copy");
}

TEST_CASE("write_trace compresses chunks on several threads and writes the streaming writer's bytes", "[traces][io]") {
  TempDir dir;
  Trace t;
  t.header = sample_header();
  t.events = random_events(20 * 4096 + 123, 11);  // 21 chunks, the last one short
  const fs::path a = dir.path / "parallel.trace", b = dir.path / "streamed.trace";
  REQUIRE(write_trace(a.string(), t).ok());
  auto w = TraceWriter::open(b.string(), t.header);
  REQUIRE(w.ok());
  for (const TraceEvent& e : t.events) (*w)->write(e);
  REQUIRE((*w)->close().ok());
  auto bytes = [](const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  };
  const std::vector<char> pa = bytes(a), pb = bytes(b);
  CHECK(pa.size() == pb.size());
  CHECK(pa == pb);
  auto back = read_trace(a.string());
  REQUIRE(back.ok());
  CHECK(back->events == t.events);
}
