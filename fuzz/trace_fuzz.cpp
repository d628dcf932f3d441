// Fuzz target: the trace reader and the ftrace importer must reject malformed input with an
// error, never crash. Each input is tried as a trace as it is and with its checksums repaired
// (so that mutations reach the JSON, zstd and record decoders behind them), and as ftrace text;
// whatever decodes is then pushed through mapping reconstruction and a re-encode round trip.
// One input in 32 (by length) is also imported as a file, as `baton trace import` reads it
// (model::open_text_file's checks, then the block reader), which must agree with parse_ftrace.
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "baton/traces/ftrace.hpp"
#include "baton/traces/trace.hpp"

namespace {
using namespace baton::traces;

std::size_t reached = 0;  // repaired inputs whose prelude and header checksum are sound
std::size_t decoded = 0;  // inputs that decoded as a binary trace, as they were or repaired
std::size_t parsed = 0;   // inputs that parse_ftrace turned into at least one event
std::size_t imported = 0; // inputs imported as a file (import_ftrace_file) with at least one event

// Reads a little-endian integer of `n` bytes.
std::uint64_t le(const std::uint8_t* p, unsigned n) {
  std::uint64_t v = 0;
  for (unsigned i = 0; i < n; ++i) v |= std::uint64_t{p[i]} << (8 * i);
  return v;
}

// Writes a little-endian 64-bit integer.
void put64(std::uint8_t* p, std::uint64_t v) {
  for (unsigned i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}

// XXH64 of two byte ranges in sequence.
std::uint64_t xxh2(const std::uint8_t* a, std::size_t na, const std::uint8_t* b, std::size_t nb) {
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, a, na);
  XXH64_update(st, b, nb);
  const std::uint64_t h = XXH64_digest(st);
  XXH64_freeState(st);
  return h;
}

// Recomputes every checksum the layout lets us find (docs/trace-format.md), leaving counts
// alone; returns whether the prelude is sound (magic, version 1, flags 0, `json_len` inside the
// file), so that the input reaches the header JSON decoder behind the checksum.
bool repair(std::vector<std::uint8_t>& d) {
  if (d.size() < 32) return false;
  const std::uint64_t json_len = le(d.data() + 16, 8);
  if (json_len > d.size() - 32) return false;
  put64(d.data() + 24, xxh2(d.data() + 8, 16, d.data() + 32, json_len));
  const bool prelude_ok = std::memcmp(d.data(), "BATONTRC", 8) == 0 && le(d.data() + 8, 4) == 1 &&
                          le(d.data() + 12, 4) == 0 && json_len <= (std::uint64_t{16} << 20);
  std::size_t at = 32 + json_len;
  std::uint64_t chain = 0;
  while (d.size() - at >= 4) {
    const std::uint64_t tag = le(d.data() + at, 4);
    if (tag == 0x4b4e4843 && d.size() - at >= 24) {
      const std::uint64_t comp = le(d.data() + at + 12, 4);
      if (comp > d.size() - at - 24) return prelude_ok;
      const std::uint64_t sum = xxh2(d.data() + at + 4, 12, d.data() + at + 24, comp);
      put64(d.data() + at + 16, sum);
      std::uint8_t buf[16];
      put64(buf, chain);
      put64(buf + 8, sum);
      chain = XXH64(buf, 16, 0);
      at += 24 + comp;
    } else if (tag == 0x444e4554 && d.size() - at >= 32) {
      put64(d.data() + at + 16, chain);
      put64(d.data() + at + 24, XXH64(d.data() + at, 24, 0));
      return prelude_ok;
    } else {
      return prelude_ok;
    }
  }
  return prelude_ok;
}

// Exercises what a decoded trace feeds: maps of every VM and a re-encode that must read back.
void use(const Trace& t) {
  for (std::uint32_t vm : trace_vms(t)) {
    (void)mappings(t, vm);
    (void)mappings(t, vm, t.events.size() / 2);
  }
  auto back = decode_trace(encode_trace(t));
  if (!back.ok() || back->events != t.events || !(back->header == t.header)) std::abort();
}

// Imports `text` from a file, as `baton trace import` does, and checks that the file path
// agrees with the in-memory parse `mem`: the same events and counts, or a refusal that the
// file layer made (a binary head) or that both made.
void import_as_file(std::string_view text, const baton::Result<FtraceImport>& mem) {
  static const int fd = memfd_create("baton-trace-fuzz", MFD_CLOEXEC);
  static const std::string path = "/proc/self/fd/" + std::to_string(fd);
  if (fd < 0 || ftruncate(fd, 0) != 0) std::abort();
  if (!text.empty() && pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size())) std::abort();
  auto f = import_ftrace_file(path);
  if (!f.ok()) {
    const std::string& why = f.error().message;
    if (mem.ok() && why.find("is not a text file") == std::string::npos) std::abort();
    return;
  }
  if (!mem.ok() || f->trace.events != mem->trace.events) std::abort();
  const FtraceImportStats &a = f->stats, &b = mem->stats;
  if (a.lines != b.lines || a.event_lines != b.event_lines || a.unknown_lines != b.unknown_lines ||
      a.malformed_lines != b.malformed_lines || a.events != b.events || a.style != b.style || a.vms != b.vms)
    std::abort();
  imported += !f->trace.events.empty();
}
}  // namespace

// The inputs that reached the decoders and that decoded (read by the standalone driver).
extern "C" void BatonFuzzCounts(std::size_t* r, std::size_t* d) {
  *r = reached;
  *d = decoded;
}

// The inputs parsed as ftrace text into events (read by the standalone driver), and in its
// label how many were also imported as files.
extern "C" const char* BatonFuzzExtraCount(std::size_t* n) {
  static std::string label;
  *n = parsed;
  label = "parsed as ftrace text with events (" + std::to_string(imported) + " of them also imported as files)";
  return label.c_str();
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> bytes(data, data + size);
  bool ok = false;
  if (auto t = decode_trace(bytes); t.ok()) {
    use(*t);
    ok = true;
  }
  reached += repair(bytes);
  if (auto t = decode_trace(bytes); t.ok()) {
    use(*t);
    ok = true;
  }
  decoded += ok;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto f = parse_ftrace(text);
  if (f.ok()) {
    use(f->trace);
    parsed += !f->trace.events.empty();
  }
  if (size % 32 == 0) import_as_file(text, f);
  (void)parse_saved_tgids(text);
  return 0;
}
