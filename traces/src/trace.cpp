// Trace format v1: event factories, the in-memory encoder and decoder, and the streaming
// file writer (docs/trace-format.md).
#include "baton/traces/trace.hpp"

#include <xxhash.h>
#include <zstd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <thread>

#include "baton/model/file_io.hpp"
#include "baton/traces/ftrace.hpp"
#include "trace_codec.hpp"

namespace baton::traces {

using namespace detail;

const char* to_string(EventType t) {
  switch (t) {
    case EventType::kExit: return "exit";
    case EventType::kEptSet: return "ept-set";
    case EventType::kEptClear: return "ept-clear";
    case EventType::kIo: return "io";
    case EventType::kSync: return "sync";
    case EventType::kMigrationPhase: return "migration-phase";
    case EventType::kMmio: return "mmio";
    case EventType::kEntry: return "entry";
    case EventType::kUserspaceExit: return "userspace-exit";
  }
  return "unknown";
}

bool is_known_event_type(std::uint8_t raw) {
  return raw >= static_cast<std::uint8_t>(EventType::kExit) &&
         raw <= static_cast<std::uint8_t>(EventType::kUserspaceExit);
}

const char* to_string(MigrationPhase p) {
  switch (p) {
    case MigrationPhase::kStart: return "start";
    case MigrationPhase::kPause: return "pause";
    case MigrationPhase::kStateTransfer: return "state-transfer";
    case MigrationPhase::kEptWork: return "ept-work";
    case MigrationPhase::kResume: return "resume";
    case MigrationPhase::kCopyRound: return "copy-round";
    case MigrationPhase::kStopAndCopy: return "stop-and-copy";
    case MigrationPhase::kDone: return "done";
  }
  return "unknown";
}

TraceEvent exit_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint32_t reason,
                      std::uint64_t qualification, std::uint64_t gpa, std::uint64_t rip) {
  return TraceEvent{.type = EventType::kExit,
                    .vm = vm,
                    .time = time,
                    .insn = insn,
                    .code = reason,
                    .a = qualification,
                    .b = gpa,
                    .c = rip};
}

TraceEvent ept_set_event(std::uint32_t vm, std::uint64_t time, std::uint64_t gfn, std::uint64_t hfn, unsigned level,
                         unsigned perms) {
  return TraceEvent{
      .type = EventType::kEptSet, .vm = vm, .time = time, .code = level, .flags = perms & 7u, .a = gfn, .b = hfn};
}

TraceEvent ept_clear_event(std::uint32_t vm, std::uint64_t time, std::uint64_t gfn, unsigned level) {
  return TraceEvent{.type = EventType::kEptClear, .vm = vm, .time = time, .code = level, .a = gfn};
}

TraceEvent io_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint16_t port, bool in,
                    unsigned size, std::uint64_t value) {
  return TraceEvent{.type = EventType::kIo,
                    .vm = vm,
                    .time = time,
                    .insn = insn,
                    .code = port,
                    .flags = (in ? kAccessIn : 0u) | (size & 0xffu) << kAccessSizeShift,
                    .a = value};
}

TraceEvent sync_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint64_t stage) {
  return TraceEvent{.type = EventType::kSync, .vm = vm, .time = time, .insn = insn, .a = stage};
}

TraceEvent phase_event(std::uint32_t vm, std::uint64_t time, MigrationPhase phase, std::uint64_t value) {
  return TraceEvent{.type = EventType::kMigrationPhase,
                    .vm = vm,
                    .time = time,
                    .code = static_cast<std::uint32_t>(phase),
                    .a = value};
}

TraceEvent mmio_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint64_t gpa, bool read,
                      unsigned size, std::uint64_t value) {
  return TraceEvent{.type = EventType::kMmio,
                    .vm = vm,
                    .time = time,
                    .insn = insn,
                    .flags = (read ? kAccessIn : 0u) | (size & 0xffu) << kAccessSizeShift,
                    .a = gpa,
                    .b = value};
}

TraceEvent entry_event(std::uint32_t vm, std::uint64_t time, std::uint64_t insn, std::uint64_t rip) {
  return TraceEvent{.type = EventType::kEntry, .vm = vm, .time = time, .insn = insn, .c = rip};
}

TraceEvent userspace_exit_event(std::uint32_t vm, std::uint64_t time, std::uint32_t kvm_reason, bool error,
                                std::uint64_t err) {
  return TraceEvent{.type = EventType::kUserspaceExit,
                    .vm = vm,
                    .time = time,
                    .code = kvm_reason,
                    .flags = error ? 1u : 0u,
                    .a = err};
}

namespace {
// Formats a number as 0x-hex.
std::string hx(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// Names permission bits 2:0 as "rwx" with dashes.
std::string perms_text(std::uint32_t p) {
  std::string s = "---";
  if (p & 1) s[0] = 'r';
  if (p & 2) s[1] = 'w';
  if (p & 4) s[2] = 'x';
  return s;
}
}  // namespace

std::string describe(const TraceEvent& e) {
  std::string s = to_string(e.type);
  const unsigned size = (e.flags >> kAccessSizeShift) & 0xff;
  switch (e.type) {
    case EventType::kExit:
      s += " reason=" + std::to_string(e.code);
      if (auto name = exit_reason_name(e.code, e.flags & kExitSvm); !name.empty()) s += " (" + name + ")";
      if (e.flags & kExitFailedVmentry) s += " failed-vmentry";
      s += " qual=" + hx(e.a) + " gpa=" + hx(e.b) + " rip=" + hx(e.c);
      break;
    case EventType::kEptSet:
      s += " gfn=" + hx(e.a) + " pfn=" + hx(e.b) + " level=" + std::to_string(e.code) +
           " perms=" + ((e.flags & kEptPermsUnknown) ? std::string("?") : perms_text(e.flags));
      break;
    case EventType::kEptClear: s += " gfn=" + hx(e.a) + " level=" + std::to_string(e.code); break;
    case EventType::kIo:
      s += std::string((e.flags & kAccessIn) ? " in" : " out") + " port=" + hx(e.code) +
           " size=" + std::to_string(size) + " value=" + hx(e.a);
      break;
    case EventType::kSync: s += " stage=" + std::to_string(e.a); break;
    case EventType::kMigrationPhase:
      s += std::string(" phase=") + to_string(static_cast<MigrationPhase>(e.code)) + " value=" + std::to_string(e.a);
      break;
    case EventType::kMmio:
      s += std::string((e.flags & kAccessIn) ? " read" : " write") + " gpa=" + hx(e.a) +
           " size=" + std::to_string(size) + " value=" + ((e.flags & kMmioUnsatisfied) ? std::string("?") : hx(e.b));
      break;
    case EventType::kEntry: s += " rip=" + hx(e.c); break;
    case EventType::kUserspaceExit:
      s += " reason=" + std::to_string(e.code);
      if (e.flags & 1) s += " errno=" + std::to_string(e.a);
      break;
  }
  return s;
}

std::vector<std::uint8_t> encode_trace(const Trace& t) {
  std::vector<std::uint8_t> out = encode_prelude(t.header);
  ZSTD_CCtx* cctx = ZSTD_createCCtx();
  std::vector<std::uint8_t> raw;
  std::uint32_t chunks = 0;
  std::uint64_t chain = 0;
  for (std::size_t i = 0; i < t.events.size(); i += kEventsPerChunk) {
    const std::size_t n = std::min<std::size_t>(kEventsPerChunk, t.events.size() - i);
    raw.clear();
    for (std::size_t k = 0; k < n; ++k) encode_event(raw, t.events[i + k]);
    chain = chain_next(chain, encode_chunk(out, raw, static_cast<std::uint32_t>(n), cctx));
    ++chunks;
  }
  ZSTD_freeCCtx(cctx);
  encode_end(out, chunks, t.events.size(), chain);
  return out;
}

namespace {
// Decodes the raw records of one chunk into `events`; fails on unknown types or nonzero reserved bytes.
Result<void> decode_records(const std::vector<std::uint8_t>& raw, std::vector<TraceEvent>& events) {
  for (std::size_t at = 0; at + kEventSize <= raw.size(); at += kEventSize) {
    const std::uint8_t* p = raw.data() + at;
    if (!is_known_event_type(p[0]))
      return make_error("corrupted trace: unknown event type " + std::to_string(p[0]) + " at event " +
                        std::to_string(events.size()));
    if (get_le(p + 1, 3) != 0 || get_le(p + 20, 4) != 0)
      return make_error("corrupted trace: reserved bytes set in event " + std::to_string(events.size()));
    TraceEvent e;
    e.type = static_cast<EventType>(p[0]);
    e.vm = static_cast<std::uint32_t>(get_le(p + 4, 4));
    e.vcpu = static_cast<std::uint32_t>(get_le(p + 8, 4));
    e.code = static_cast<std::uint32_t>(get_le(p + 12, 4));
    e.flags = static_cast<std::uint32_t>(get_le(p + 16, 4));
    e.time = get_le(p + 24, 8);
    e.insn = get_le(p + 32, 8);
    e.a = get_le(p + 40, 8);
    e.b = get_le(p + 48, 8);
    e.c = get_le(p + 56, 8);
    events.push_back(e);
  }
  return ok_result();
}

// Decodes bytes into a trace; the single workhorse behind decode_trace and read_trace.
Result<Trace> decode(const std::uint8_t* data, std::size_t size) {
  const auto truncated = [](const std::string& where) { return make_error("truncated trace: the file ends " + where); };
  if (size < 8) {
    if (size == 0 || std::memcmp(data, kMagic, size) == 0) return truncated("inside the header");
    return make_error("not a baton trace (bad magic)");
  }
  if (std::memcmp(data, kMagic, 8) != 0) return make_error("not a baton trace (bad magic)");
  if (size < 12) return truncated("inside the header");
  const std::uint64_t version = get_le(data + 8, 4);
  if (version != kTraceFormatVersion)
    return make_error("unsupported trace format version " + std::to_string(version) + " (this baton reads version " +
                      std::to_string(kTraceFormatVersion) + ")");
  if (size < kPreludeSize) return truncated("inside the header");
  if (get_le(data + 12, 4) != 0) return make_error("corrupted trace: unknown header flags " + hx(get_le(data + 12, 4)));
  const std::uint64_t json_len = get_le(data + 16, 8);
  if (json_len > kMaxHeaderJson)
    return make_error("corrupted trace: header length " + std::to_string(json_len) + " is implausible");
  if (size - kPreludeSize < json_len) return truncated("inside the header JSON");
  XXH64_state_t* st = XXH64_createState();
  XXH64_reset(st, 0);
  XXH64_update(st, data + 8, 16);
  XXH64_update(st, data + kPreludeSize, json_len);
  const std::uint64_t sum = XXH64_digest(st);
  XXH64_freeState(st);
  if (sum != get_le(data + 24, 8)) return make_error("corrupted trace: header checksum mismatch");
  auto header = header_from_json(std::string(reinterpret_cast<const char*>(data + kPreludeSize), json_len));
  if (!header) return header.error();

  Trace t;
  t.header = std::move(*header);
  std::size_t at = kPreludeSize + json_len;
  std::uint32_t chunks = 0;
  std::uint64_t chain = 0;
  ZSTD_DCtx* dctx = ZSTD_createDCtx();
  std::vector<std::uint8_t> raw;
  Result<Trace> result = make_error("");
  for (;;) {
    if (size - at < 4) {
      result = truncated(size == at ? "after " + std::to_string(t.events.size()) +
                                          " events without the end marker (was the writer closed?)"
                                    : "inside a record");
      break;
    }
    const std::uint32_t tag = static_cast<std::uint32_t>(get_le(data + at, 4));
    if (tag == kChunkTag) {
      if (size - at < kChunkHeaderSize) {
        result = truncated("inside chunk " + std::to_string(chunks));
        break;
      }
      const std::uint32_t count = static_cast<std::uint32_t>(get_le(data + at + 4, 4));
      const std::uint32_t raw_len = static_cast<std::uint32_t>(get_le(data + at + 8, 4));
      const std::uint32_t comp_len = static_cast<std::uint32_t>(get_le(data + at + 12, 4));
      if (size - at - kChunkHeaderSize < comp_len) {
        result = truncated("inside chunk " + std::to_string(chunks));
        break;
      }
      const std::uint64_t chunk_sum = get_le(data + at + 16, 8);
      st = XXH64_createState();
      XXH64_reset(st, 0);
      XXH64_update(st, data + at + 4, 12);
      XXH64_update(st, data + at + kChunkHeaderSize, comp_len);
      const std::uint64_t got = XXH64_digest(st);
      XXH64_freeState(st);
      if (got != chunk_sum) {
        result = make_error("corrupted trace: checksum mismatch in chunk " + std::to_string(chunks) + " (events from " +
                            std::to_string(t.events.size()) + ")");
        break;
      }
      if (count == 0 || count > kMaxEventsPerChunk || raw_len != std::uint64_t{count} * kEventSize) {
        result = make_error("corrupted trace: chunk " + std::to_string(chunks) + " has an implausible size");
        break;
      }
      raw.resize(raw_len);
      const std::size_t n = ZSTD_decompressDCtx(dctx, raw.data(), raw.size(), data + at + kChunkHeaderSize, comp_len);
      if (ZSTD_isError(n) || n != raw_len) {
        result = make_error("corrupted trace: chunk " + std::to_string(chunks) + " does not decompress");
        break;
      }
      auto r = decode_records(raw, t.events);
      if (!r) {
        result = r.error();
        break;
      }
      chain = chain_next(chain, chunk_sum);
      ++chunks;
      at += kChunkHeaderSize + comp_len;
    } else if (tag == kEndTag) {
      if (size - at < kEndSize) {
        result = truncated("inside the end marker");
        break;
      }
      if (XXH64(data + at, 24, 0) != get_le(data + at + 24, 8)) {
        result = make_error("corrupted trace: end marker checksum mismatch");
        break;
      }
      if (get_le(data + at + 4, 4) != chunks || get_le(data + at + 8, 8) != t.events.size() ||
          get_le(data + at + 16, 8) != chain) {
        result = make_error("corrupted trace: the end marker counts " + std::to_string(get_le(data + at + 8, 8)) +
                            " events in " + std::to_string(get_le(data + at + 4, 4)) + " chunks, the file holds " +
                            std::to_string(t.events.size()) + " in " + std::to_string(chunks));
        break;
      }
      if (at + kEndSize != size) {
        result = make_error("corrupted trace: " + std::to_string(size - at - kEndSize) + " bytes after the end marker");
        break;
      }
      result = std::move(t);
      break;
    } else {
      result = make_error("corrupted trace: unknown record at byte " + std::to_string(at));
      break;
    }
  }
  ZSTD_freeDCtx(dctx);
  return result;
}
}  // namespace

Result<Trace> decode_trace(const std::vector<std::uint8_t>& bytes) { return decode(bytes.data(), bytes.size()); }

Result<Trace> read_trace(const std::string& path) {
  auto f = model::InputFile::open(path, kMaxTraceFile, "trace");
  if (!f) return f.error();
  // The magic first: a foreign or huge file is refused before it is read.
  std::uint8_t head[8] = {};
  const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(f->size(), 8));
  BATON_TRY_VOID(f->read(0, head, n));
  if (n == 8 && std::memcmp(head, kMagic, 8) != 0) return make_error(path + ": not a baton trace (bad magic)");
  auto data = f->read_all();
  if (!data) return data.error();
  auto t = decode(data->data(), data->size());
  if (!t) return make_error(path + ": " + t.error().message);
  return t;
}

namespace {
// The streaming writer: a temporary file next to the target (model::OutputFile), published by
// close(); a writer destroyed unclosed, an error, or SIGINT/SIGTERM removes the temporary file.
class FileTraceWriter final : public TraceWriter {
 public:
  explicit FileTraceWriter(model::OutputFile out) : out_(std::move(out)), cctx_(ZSTD_createCCtx()) {
    raw_.reserve(std::size_t{kEventsPerChunk} * kEventSize);
  }

  ~FileTraceWriter() override { ZSTD_freeCCtx(cctx_); }

  // Writes the prelude and header.
  Result<void> start(const TraceHeader& h) {
    const auto prelude = encode_prelude(h);
    return out_.write(prelude.data(), prelude.size());
  }

  void write(const TraceEvent& e) override {
    if (closed_) {
      if (error_.empty()) error_ = "write after close";
      return;
    }
    encode_event(raw_, e);
    if (++pending_ == kEventsPerChunk) flush();
  }

  // Writes a chunk compressed elsewhere (encode_chunk bytes of `count` events, checksum `sum`).
  void write_chunk(const std::vector<std::uint8_t>& bytes, std::uint32_t count, std::uint64_t sum) {
    if (closed_ || pending_ != 0) {
      if (error_.empty()) error_ = "chunk written after close or between events";
      return;
    }
    chain_ = chain_next(chain_, sum);
    ++chunks_;
    events_ += count;
    if (error_.empty())
      if (auto r = out_.write(bytes.data(), bytes.size()); !r) error_ = r.error().message;
  }

  Result<void> close() override {
    if (closed_) return make_error("trace writer for '" + out_.path() + "' is already closed");
    closed_ = true;
    flush();
    out_buf_.clear();
    encode_end(out_buf_, chunks_, events_, chain_);
    if (error_.empty())
      if (auto r = out_.write(out_buf_.data(), out_buf_.size()); !r) error_ = r.error().message;
    if (!error_.empty()) {
      model::OutputFile dropped = std::move(out_);  // removes the temporary file
      return make_error(error_);
    }
    return out_.commit();
  }

 private:
  // Compresses and writes the buffered events as one chunk.
  void flush() {
    if (pending_ == 0) return;
    out_buf_.clear();
    chain_ = chain_next(chain_, encode_chunk(out_buf_, raw_, pending_, cctx_));
    ++chunks_;
    events_ += pending_;
    pending_ = 0;
    raw_.clear();
    if (error_.empty())
      if (auto r = out_.write(out_buf_.data(), out_buf_.size()); !r) error_ = r.error().message;
  }

  model::OutputFile out_;
  ZSTD_CCtx* cctx_;
  std::vector<std::uint8_t> raw_, out_buf_;
  std::uint32_t pending_ = 0, chunks_ = 0;
  std::uint64_t events_ = 0, chain_ = 0;
  std::string error_;
  bool closed_ = false;
};
}  // namespace

Result<std::unique_ptr<TraceWriter>> TraceWriter::open(const std::string& path, const TraceHeader& header,
                                                       bool overwrite) {
  auto out = model::OutputFile::create(path, overwrite);
  if (!out) return out.error();
  auto w = std::make_unique<FileTraceWriter>(std::move(*out));
  BATON_TRY_VOID(w->start(header));
  return std::unique_ptr<TraceWriter>(std::move(w));
}

Result<void> detail::write_encoded_trace(const std::string& path, const TraceHeader& header,
                                         std::vector<EncodedChunk>& chunks, bool overwrite) {
  auto w = TraceWriter::open(path, header, overwrite);
  if (!w) return w.error();
  auto* fw = static_cast<FileTraceWriter*>(w->get());
  for (EncodedChunk& c : chunks) {
    fw->write_chunk(c.bytes, c.count, c.sum);
    std::vector<std::uint8_t>().swap(c.bytes);
  }
  return fw->close();
}

Result<void> write_trace(const std::string& path, const Trace& t, bool overwrite) {
  // Chunks compress independently: a few threads compress them (zstd was as dear as parsing a
  // capture for `trace import`), then the file is written in order, as the streaming writer
  // writes it, byte for byte.
  const std::size_t n = t.events.size(), count = (n + kEventsPerChunk - 1) / kEventsPerChunk;
  const unsigned threads = static_cast<unsigned>(
      std::min<std::size_t>({count / 4, std::max(1u, std::thread::hardware_concurrency()), 4}));
  if (threads < 2) {
    auto w = TraceWriter::open(path, t.header, overwrite);
    if (!w) return w.error();
    for (const TraceEvent& e : t.events) (*w)->write(e);
    return (*w)->close();
  }
  std::vector<EncodedChunk> chunks(count);
  std::atomic<std::size_t> next{0};
  auto work = [&] {
    ZSTD_CCtx* cctx = ZSTD_createCCtx();
    std::vector<std::uint8_t> raw;
    raw.reserve(std::size_t{kEventsPerChunk} * kEventSize);
    for (std::size_t c; (c = next.fetch_add(1)) < count;) {
      const std::size_t first = c * kEventsPerChunk, last = std::min(n, first + kEventsPerChunk);
      raw.resize((last - first) * kEventSize);
      for (std::size_t i = first; i < last; ++i) encode_event_at(raw.data() + (i - first) * kEventSize, t.events[i]);
      chunks[c].count = static_cast<std::uint32_t>(last - first);
      chunks[c].sum = encode_chunk(chunks[c].bytes, raw, chunks[c].count, cctx);
    }
    ZSTD_freeCCtx(cctx);
  };
  std::vector<std::thread> pool;
  for (unsigned i = 1; i < threads; ++i) pool.emplace_back(work);
  work();
  for (std::thread& th : pool) th.join();
  return write_encoded_trace(path, t.header, chunks, overwrite);
}

}  // namespace baton::traces
