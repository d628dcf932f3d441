// Snapshot files (docs/formats.md): header, JSON body, zstd-compressed table pages.
#include "baton/model/snapshot_io.hpp"

#include <xxhash.h>
#include <zstd.h>

#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <nlohmann/json.hpp>
#include <unordered_map>

#include "baton/model/file_io.hpp"

namespace baton::model {

using nlohmann::json;

namespace {
inline constexpr char kMagic[8] = {'B', 'A', 'T', 'O', 'N', 'S', 'N', 'P'};
inline constexpr std::size_t kHeaderSize = 48;
inline constexpr std::uint64_t kMaxPages = std::uint64_t{1} << 24;  // 64 GiB of table pages

// The fixed header that starts every snapshot file (all fields little-endian).
struct Header {
  char magic[8];
  std::uint32_t version;
  std::uint32_t header_size;
  std::uint64_t json_len;
  std::uint64_t page_count;
  std::uint64_t pages_len;  // compressed bytes
  std::uint64_t checksum;   // XXH64 of everything after the header, seed 0
};
static_assert(sizeof(Header) == kHeaderSize, "the snapshot header is 48 packed bytes");

std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// Reads an unsigned number given as a JSON number or a "0x..." / decimal string.
std::uint64_t get_u64(const json& j, const char* key) {
  if (!j.is_object()) throw std::invalid_argument(std::string("expected an object holding '") + key + "'");
  if (!j.contains(key)) throw std::invalid_argument(std::string("field '") + key + "' is missing");
  const json& v = j.at(key);
  if (v.is_number_unsigned()) return v.get<std::uint64_t>();
  if (v.is_number_integer() && v.get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v.get<std::int64_t>());
  if (v.is_string()) {
    const std::string s = v.get<std::string>();
    if (s.empty()) throw std::invalid_argument(std::string("field '") + key + "' is empty");
    std::size_t pos = 0;
    std::uint64_t n = 0;
    const bool digits = std::isdigit(static_cast<unsigned char>(s[0])) != 0;
    try {
      n = digits ? std::stoull(s, &pos, 0) : 0;
    } catch (const std::exception&) {
      throw std::invalid_argument(std::string("field '") + key + "' is out of range for 64 bits: " + s);
    }
    if (!digits || pos != s.size())
      throw std::invalid_argument(std::string("field '") + key + "' is not a number: " + s);
    return n;
  }
  throw std::invalid_argument(std::string("field '") + key + "' must be a number or a hex string");
}

std::string to_hex_bytes(const std::vector<std::uint8_t>& b) {
  static const char* const kDigits = "0123456789abcdef";
  std::string s;
  s.reserve(b.size() * 2);
  for (std::uint8_t c : b) {
    s.push_back(kDigits[c >> 4]);
    s.push_back(kDigits[c & 15]);
  }
  return s;
}

std::vector<std::uint8_t> from_hex_bytes(const std::string& s) {
  if (s.size() % 2 != 0) throw std::invalid_argument("hex byte string has odd length");
  std::vector<std::uint8_t> out(s.size() / 2);
  auto nib = [](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    throw std::invalid_argument("bad hex digit in byte string");
  };
  for (std::size_t i = 0; i < out.size(); ++i) out[i] = static_cast<std::uint8_t>(nib(s[2 * i]) << 4 | nib(s[2 * i + 1]));
  return out;
}

json seg_to_json(const Segment& s) {
  return json{{"base", hex(s.base)}, {"limit", s.limit}, {"selector", s.selector}, {"type", s.type},
              {"present", s.present}, {"dpl", s.dpl}, {"db", s.db}, {"s", s.s}, {"l", s.l}, {"g", s.g},
              {"avl", s.avl}, {"unusable", s.unusable}};
}

Segment seg_from_json(const json& j) {
  Segment s;
  s.base = get_u64(j, "base");
  s.limit = static_cast<std::uint32_t>(get_u64(j, "limit"));
  s.selector = static_cast<std::uint16_t>(get_u64(j, "selector"));
  s.type = static_cast<std::uint8_t>(get_u64(j, "type"));
  s.present = static_cast<std::uint8_t>(get_u64(j, "present"));
  s.dpl = static_cast<std::uint8_t>(get_u64(j, "dpl"));
  s.db = static_cast<std::uint8_t>(get_u64(j, "db"));
  s.s = static_cast<std::uint8_t>(get_u64(j, "s"));
  s.l = static_cast<std::uint8_t>(get_u64(j, "l"));
  s.g = static_cast<std::uint8_t>(get_u64(j, "g"));
  s.avl = static_cast<std::uint8_t>(get_u64(j, "avl"));
  s.unusable = static_cast<std::uint8_t>(get_u64(j, "unusable"));
  return s;
}

json vcpu_json(const VcpuState& v) {
  json j;
  json gpr = json::object();
  for (unsigned i = 0; i < VcpuState::kGprCount; ++i) gpr[gpr_name(i)] = hex(v.gpr[i]);
  j["gpr"] = gpr;
  j["rip"] = hex(v.rip);
  j["rflags"] = hex(v.rflags);
  j["cs"] = seg_to_json(v.cs);
  j["ds"] = seg_to_json(v.ds);
  j["es"] = seg_to_json(v.es);
  j["fs"] = seg_to_json(v.fs);
  j["gs"] = seg_to_json(v.gs);
  j["ss"] = seg_to_json(v.ss);
  j["tr"] = seg_to_json(v.tr);
  j["ldt"] = seg_to_json(v.ldt);
  j["gdtr"] = json{{"base", hex(v.gdtr.base)}, {"limit", v.gdtr.limit}};
  j["idtr"] = json{{"base", hex(v.idtr.base)}, {"limit", v.idtr.limit}};
  j["cr0"] = hex(v.cr0);
  j["cr2"] = hex(v.cr2);
  j["cr3"] = hex(v.cr3);
  j["cr4"] = hex(v.cr4);
  j["cr8"] = hex(v.cr8);
  j["efer"] = hex(v.efer);
  json dr = json::array();
  for (std::uint64_t d : v.dr) dr.push_back(hex(d));
  j["dr"] = dr;
  json msrs = json::object();
  for (const auto& [k, val] : v.msrs) msrs[hex(k)] = hex(val);
  j["msrs"] = msrs;
  j["xcr0"] = hex(v.xcr0);
  j["xsave"] = to_hex_bytes(v.xsave);
  j["lapic"] = to_hex_bytes(v.lapic);
  const VcpuEvents& e = v.events;
  j["events"] = json{{"exception_pending", e.exception_pending}, {"exception_nr", e.exception_nr},
                     {"exception_has_error_code", e.exception_has_error_code},
                     {"exception_error_code", e.exception_error_code}, {"interrupt_pending", e.interrupt_pending},
                     {"interrupt_nr", e.interrupt_nr}, {"nmi_pending", e.nmi_pending}, {"nmi_masked", e.nmi_masked},
                     {"interrupt_shadow", e.interrupt_shadow}};
  j["activity"] = to_string(v.activity);
  j["tsc_offset"] = hex(v.tsc_offset);
  j["host_tsc_at_capture"] = hex(v.host_tsc_at_capture);
  return j;
}

VcpuState vcpu_parse(const json& j) {
  VcpuState v;
  const json& gpr = j.at("gpr");
  for (unsigned i = 0; i < VcpuState::kGprCount; ++i) v.gpr[i] = get_u64(gpr, gpr_name(i));
  v.rip = get_u64(j, "rip");
  v.rflags = get_u64(j, "rflags");
  v.cs = seg_from_json(j.at("cs"));
  v.ds = seg_from_json(j.at("ds"));
  v.es = seg_from_json(j.at("es"));
  v.fs = seg_from_json(j.at("fs"));
  v.gs = seg_from_json(j.at("gs"));
  v.ss = seg_from_json(j.at("ss"));
  v.tr = seg_from_json(j.at("tr"));
  v.ldt = seg_from_json(j.at("ldt"));
  v.gdtr = DescriptorTable{get_u64(j.at("gdtr"), "base"), static_cast<std::uint16_t>(get_u64(j.at("gdtr"), "limit"))};
  v.idtr = DescriptorTable{get_u64(j.at("idtr"), "base"), static_cast<std::uint16_t>(get_u64(j.at("idtr"), "limit"))};
  v.cr0 = get_u64(j, "cr0");
  v.cr2 = get_u64(j, "cr2");
  v.cr3 = get_u64(j, "cr3");
  v.cr4 = get_u64(j, "cr4");
  v.cr8 = get_u64(j, "cr8");
  v.efer = get_u64(j, "efer");
  const json& dr = j.at("dr");
  if (!dr.is_array() || dr.size() != 8) throw std::invalid_argument("vcpu 'dr' must list 8 registers");
  for (unsigned i = 0; i < 8; ++i) {
    json tmp{{"v", dr[i]}};
    v.dr[i] = get_u64(tmp, "v");
  }
  for (const auto& [k, val] : j.at("msrs").items()) {
    json tmp{{"k", k}, {"v", val}};
    v.msrs[static_cast<std::uint32_t>(get_u64(tmp, "k"))] = get_u64(tmp, "v");
  }
  v.xcr0 = get_u64(j, "xcr0");
  v.xsave = from_hex_bytes(j.at("xsave").get<std::string>());
  v.lapic = from_hex_bytes(j.at("lapic").get<std::string>());
  const json& e = j.at("events");
  v.events.exception_pending = e.at("exception_pending").get<bool>();
  v.events.exception_nr = static_cast<std::uint8_t>(get_u64(e, "exception_nr"));
  v.events.exception_has_error_code = e.at("exception_has_error_code").get<bool>();
  v.events.exception_error_code = static_cast<std::uint32_t>(get_u64(e, "exception_error_code"));
  v.events.interrupt_pending = e.at("interrupt_pending").get<bool>();
  v.events.interrupt_nr = static_cast<std::uint8_t>(get_u64(e, "interrupt_nr"));
  v.events.nmi_pending = e.at("nmi_pending").get<bool>();
  v.events.nmi_masked = e.at("nmi_masked").get<bool>();
  v.events.interrupt_shadow = static_cast<std::uint8_t>(get_u64(e, "interrupt_shadow"));
  const std::string act = j.at("activity").get<std::string>();
  bool found = false;
  for (ActivityState s : {ActivityState::kActive, ActivityState::kHlt, ActivityState::kShutdown, ActivityState::kWaitForSipi})
    if (act == to_string(s)) {
      v.activity = s;
      found = true;
    }
  if (!found) throw std::invalid_argument("unknown vcpu activity state '" + act + "'");
  v.tsc_offset = get_u64(j, "tsc_offset");
  v.host_tsc_at_capture = get_u64(j, "host_tsc_at_capture");
  return v;
}

json memslots_json(const std::vector<Memslot>& slots) {
  json a = json::array();
  for (const Memslot& s : slots)
    a.push_back(json{{"id", s.id}, {"gpa", hex(s.gpa.value)}, {"size", hex(s.size)}, {"hpa", hex(s.hpa.value)},
                     {"read_only", s.read_only}, {"dirty_log", s.dirty_log}});
  return a;
}

std::vector<Memslot> memslots_parse(const json& a) {
  if (!a.is_array()) throw std::invalid_argument("memslots must be a JSON array");
  std::vector<Memslot> out;
  for (const json& j : a) {
    if (!j.is_object() || !j.contains("id"))
      throw std::invalid_argument("memslot #" + std::to_string(out.size()) + " has no 'id'");
    Memslot s;
    s.id = static_cast<std::uint32_t>(get_u64(j, "id"));
    s.gpa = Gpa{get_u64(j, "gpa")};
    s.size = get_u64(j, "size");
    s.hpa = Hpa{get_u64(j, "hpa")};
    s.read_only = j.contains("read_only") && j.at("read_only").get<bool>();
    s.dirty_log = j.contains("dirty_log") && j.at("dirty_log").get<bool>();
    out.push_back(s);
  }
  if (std::string why = validate_memslots(out); !why.empty()) throw std::invalid_argument(why);
  return out;
}

json owners_json(const OwnerMap& owners) {
  json a = json::array();
  for (const OwnerRange& r : owners.ranges())
    a.push_back(json{{"hpa", hex(hpa_of(r.first).value)}, {"size", hex(r.count << kPageShift)}, {"kind", to_string(r.kind)},
                     {"vm", r.vm}});
  return a;
}

OwnerMap owners_parse(const json& a) {
  if (!a.is_array()) throw std::invalid_argument("owners must be a JSON array");
  OwnerMap m;
  for (const json& j : a) {
    const std::uint64_t hpa = get_u64(j, "hpa");
    const std::uint64_t size = get_u64(j, "size");
    if (((hpa | size) & kPageMask) != 0) throw std::invalid_argument("owner range " + hex(hpa) + " is not 4 KiB-aligned");
    const auto kind = owner_kind_from_string(j.at("kind").get<std::string>());
    if (!kind) throw std::invalid_argument("unknown owner kind '" + j.at("kind").get<std::string>() + "'");
    const std::uint32_t vm = j.contains("vm") ? static_cast<std::uint32_t>(get_u64(j, "vm")) : 0;
    m.assign(hfn_of(Hpa{hpa}), size >> kPageShift, *kind, vm);
  }
  return m;
}

json ranges_json(const std::vector<GpaRange>& rs) {
  json a = json::array();
  for (const GpaRange& r : rs) a.push_back(json{{"gpa", hex(r.gpa.value)}, {"size", hex(r.size)}});
  return a;
}

std::vector<GpaRange> ranges_parse(const json& a) {
  if (!a.is_array()) throw std::invalid_argument("mmio must be a JSON array");
  std::vector<GpaRange> out;
  for (const json& j : a) out.push_back(GpaRange{Gpa{get_u64(j, "gpa")}, get_u64(j, "size")});
  return out;
}

}  // namespace

std::vector<std::uint8_t> encode_snapshot(const HandoverSnapshot& s) {
  const std::vector<Hfn> frames = s.tables.frames();
  json j;
  j["vm_id"] = s.vm_id;
  j["ept_config"] = json{{"maxphyaddr", s.ept_config.maxphyaddr}, {"execute_only", s.ept_config.execute_only},
                         {"mode_based_exec", s.ept_config.mode_based_exec}};
  j["eptp"] = hex(s.eptp.raw());
  j["memslots"] = memslots_json(s.memslots);
  j["mmio"] = ranges_json(s.mmio);
  json vc = json::array();
  for (const VcpuState& v : s.vcpus) vc.push_back(vcpu_json(v));
  j["vcpus"] = vc;
  json vm = json::object();
  for (const auto& [enc, val] : s.vmcs.values()) vm[hex(enc)] = hex(val);
  j["vmcs"] = vm;
  j["owners"] = owners_json(s.owners);
  j["meta"] = s.meta;
  json hfns = json::array();
  for (Hfn f : frames) hfns.push_back(f.value);
  j["table_frames"] = hfns;
  const std::string body = j.dump();

  std::vector<std::uint8_t> raw(frames.size() * kPageSize);
  for (std::size_t i = 0; i < frames.size(); ++i) std::memcpy(raw.data() + i * kPageSize, s.tables.frame(frames[i]), kPageSize);
  std::vector<std::uint8_t> packed(ZSTD_compressBound(raw.size()));
  const std::size_t n = ZSTD_compress(packed.data(), packed.size(), raw.data(), raw.size(), 3);
  BATON_CHECK(!ZSTD_isError(n));
  packed.resize(n);

  std::vector<std::uint8_t> payload;
  payload.reserve(body.size() + packed.size());
  payload.insert(payload.end(), body.begin(), body.end());
  payload.insert(payload.end(), packed.begin(), packed.end());

  Header h{};
  std::memcpy(h.magic, kMagic, 8);
  h.version = kSnapshotFormatVersion;
  h.header_size = kHeaderSize;
  h.json_len = body.size();
  h.page_count = frames.size();
  h.pages_len = packed.size();
  h.checksum = XXH64(payload.data(), payload.size(), 0);
  std::vector<std::uint8_t> out(kHeaderSize + payload.size());
  std::memcpy(out.data(), &h, kHeaderSize);
  std::memcpy(out.data() + kHeaderSize, payload.data(), payload.size());
  return out;
}

namespace {
// The most JSON a snapshot body may hold: far above any real one (a 16 GiB sample's is ~4 KiB).
inline constexpr std::uint64_t kMaxJson = std::uint64_t{1} << 30;

// Checks a snapshot header against the size of what follows it, before anything else is read.
Result<void> check_header(const Header& h, std::uint64_t body) {
  if (std::memcmp(h.magic, kMagic, 8) != 0) return make_error("not a baton snapshot: bad magic");
  if (h.version != kSnapshotFormatVersion)
    return make_error("snapshot format version " + std::to_string(h.version) + " is not supported (this baton reads version " +
                      std::to_string(kSnapshotFormatVersion) + ")");
  if (h.header_size != kHeaderSize) return make_error("corrupt snapshot: header size field is wrong");
  if (h.json_len > body || h.pages_len > body - h.json_len)
    return make_error("truncated snapshot: expected " + std::to_string(h.json_len + h.pages_len) + " bytes after the header, found " +
                      std::to_string(body));
  if (h.json_len + h.pages_len != body) return make_error("corrupt snapshot: trailing bytes after the page data");
  if (h.page_count > kMaxPages) return make_error("corrupt snapshot: page count exceeds 2^24");
  if (h.json_len > kMaxJson) return make_error("corrupt snapshot: the JSON body is larger than 1 GiB");
  if (h.pages_len > ZSTD_compressBound(h.page_count * kPageSize))
    return make_error("corrupt snapshot: the page block is larger than its pages could compress to");
  return ok_result();
}
}  // namespace

Result<HandoverSnapshot> decode_snapshot(std::span<const std::uint8_t> bytes) {
  if (bytes.size() < kHeaderSize) return make_error("not a baton snapshot: file is shorter than the 48-byte header");
  Header h;
  std::memcpy(&h, bytes.data(), kHeaderSize);
  const std::uint64_t body = bytes.size() - kHeaderSize;
  BATON_TRY_VOID(check_header(h, body));
  if (XXH64(bytes.data() + kHeaderSize, body, 0) != h.checksum)
    return make_error("corrupt snapshot: checksum mismatch");

  HandoverSnapshot s;
  try {
    const json j = json::parse(bytes.begin() + kHeaderSize, bytes.begin() + kHeaderSize + static_cast<std::ptrdiff_t>(h.json_len));
    s.vm_id = static_cast<std::uint32_t>(get_u64(j, "vm_id"));
    const json& cfg = j.at("ept_config");
    s.ept_config.maxphyaddr = static_cast<unsigned>(get_u64(cfg, "maxphyaddr"));
    s.ept_config.execute_only = cfg.at("execute_only").get<bool>();
    s.ept_config.mode_based_exec = cfg.at("mode_based_exec").get<bool>();
    s.eptp = Eptp{get_u64(j, "eptp")};
    s.memslots = memslots_parse(j.at("memslots"));
    s.mmio = ranges_parse(j.at("mmio"));
    for (const json& v : j.at("vcpus")) s.vcpus.push_back(vcpu_parse(v));
    for (const auto& [k, val] : j.at("vmcs").items()) {
      json tmp{{"k", k}, {"v", val}};
      if (!s.vmcs.set(static_cast<std::uint32_t>(get_u64(tmp, "k")), get_u64(tmp, "v")))
        return make_error("corrupt snapshot: unknown VMCS field encoding " + k);
    }
    s.owners = owners_parse(j.at("owners"));
    s.meta = j.at("meta").get<std::map<std::string, std::string>>();
    const json& frames = j.at("table_frames");
    if (!frames.is_array() || frames.size() != h.page_count)
      return make_error("corrupt snapshot: table frame list does not match the page count");
    const unsigned long long content = ZSTD_getFrameContentSize(bytes.data() + kHeaderSize + h.json_len, h.pages_len);
    if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN || content != h.page_count * kPageSize)
      return make_error("corrupt snapshot: compressed page block does not hold the declared pages");
    std::vector<std::uint8_t> raw(content);
    const std::size_t n = ZSTD_decompress(raw.data(), raw.size(), bytes.data() + kHeaderSize + h.json_len, h.pages_len);
    if (ZSTD_isError(n) || n != raw.size()) return make_error("corrupt snapshot: page block does not decompress");
    for (std::size_t i = 0; i < frames.size(); ++i) {
      if (!frames[i].is_number_unsigned())
        return make_error("corrupt snapshot: table frame #" + std::to_string(i) + " is not a frame number");
      const Hfn f{frames[i].get<std::uint64_t>()};
      if (f.value > (EptEntry::kAddrBitsMax >> kPageShift))
        return make_error("corrupt snapshot: table frame " + hex(f.value) + " lies beyond 52-bit physical addresses");
      if (i > 0 && f.value <= frames[i - 1].get<std::uint64_t>())
        return make_error(
            "corrupt snapshot: table frames are not in ascending order (the format lists each once, ascending)");
      if (s.tables.contains(f)) return make_error("corrupt snapshot: table frame listed twice");
      std::memcpy(s.tables.frame_mut(f), raw.data() + i * kPageSize, kPageSize);
    }
  } catch (const std::exception& e) {
    return make_error(std::string("corrupt snapshot: ") + exception_text(e.what()));
  }
  if (std::string why = validate_snapshot(s); !why.empty()) return make_error("invalid snapshot: " + why);
  return s;
}

Result<std::vector<std::uint8_t>> read_file_bytes(const std::string& path) {
  return read_file(path, kMaxSmallFile, "input");
}

Result<void> save_snapshot(const HandoverSnapshot& s, const std::string& path, bool overwrite) {
  auto out = OutputFile::create(path, overwrite);
  if (!out) return out.error();
  const std::vector<std::uint8_t> bytes = encode_snapshot(s);
  BATON_TRY_VOID(out->write(bytes.data(), bytes.size()));
  return out->commit();
}

Result<void> save_snapshot_pair(const HandoverSnapshot& a, const std::string& path_a, const HandoverSnapshot& b,
                                const std::string& path_b, bool overwrite) {
  auto fa = OutputFile::create(path_a, overwrite);
  if (!fa) return fa.error();
  auto fb = OutputFile::create(path_b, overwrite);
  if (!fb) return fb.error();
  const std::vector<std::uint8_t> ba = encode_snapshot(a);
  BATON_TRY_VOID(fa->write(ba.data(), ba.size()));
  const std::vector<std::uint8_t> bb = encode_snapshot(b);
  BATON_TRY_VOID(fb->write(bb.data(), bb.size()));
  return OutputFile::publish_all({&*fa, &*fb});
}

Result<HandoverSnapshot> load_snapshot(const std::string& path) {
  // The header first: a huge or foreign file is refused before its body is read.
  auto f = InputFile::open(path, kHeaderSize + kMaxJson + ZSTD_compressBound(kMaxPages * kPageSize), "snapshot");
  if (!f) return f.error();
  if (f->size() < kHeaderSize)
    return make_error(path + ": not a baton snapshot: file is shorter than the 48-byte header");
  Header h;
  BATON_TRY_VOID(f->read(0, &h, kHeaderSize));
  if (auto r = check_header(h, f->size() - kHeaderSize); !r) return make_error(path + ": " + r.error().message);
  auto bytes = f->read_all();
  if (!bytes) return bytes.error();
  auto s = decode_snapshot(*bytes);
  if (!s) return make_error(path + ": " + s.error().message);
  return s;
}

namespace {
// A raw dump's pages read in place, by host frame.
class DumpView final : public PhysicalMemory {
 public:
  std::unordered_map<std::uint64_t, const std::uint8_t*> pages;
  const std::uint8_t* frame(Hfn f) const override {
    auto it = pages.find(f.value);
    return it == pages.end() ? nullptr : it->second;
  }
};
}  // namespace

Result<HandoverSnapshot> import_raw(std::span<const std::uint8_t> pages, const RawImport& in) {
  constexpr std::size_t kRecord = kRawRecordSize;
  if (pages.size() % kRecord != 0)
    return make_error("raw dump size " + std::to_string(pages.size()) + " is not a multiple of 4104-byte records (truncated?)");
  if (pages.size() / kRecord > kMaxPages)
    return make_error("raw dump holds " + std::to_string(pages.size() / kRecord) + " pages; at most 2^24 are imported");
  if (in.cfg.maxphyaddr < 36 || in.cfg.maxphyaddr > 52)
    return make_error("MAXPHYADDR " + std::to_string(in.cfg.maxphyaddr) + " is outside 36..52");
  // The pages are read in place; only the reachable ones are copied into the snapshot.
  DumpView all;
  all.pages.reserve(pages.size() / kRecord);
  for (std::size_t off = 0; off < pages.size(); off += kRecord) {
    std::uint64_t hpa;
    std::memcpy(&hpa, pages.data() + off, 8);
    if (hpa & kPageMask) return make_error("raw dump record " + std::to_string(off / kRecord) + ": hpa " + hex(hpa) + " is not page-aligned");
    if (hpa > EptEntry::kAddrBitsMax)
      return make_error("raw dump record " + std::to_string(off / kRecord) + ": hpa " + hex(hpa) +
                        " lies beyond 52 bits");
    if (!all.pages.emplace(hpa >> kPageShift, pages.data() + off + 8).second)
      return make_error("raw dump: page at hpa " + hex(hpa) + " appears twice");
  }
  HandoverSnapshot s;
  s.ept_config = in.cfg;
  s.eptp = Eptp{in.eptp};
  if (std::string why = s.eptp.validate(s.ept_config); !why.empty()) return make_error("--eptp: " + why);
  if (all.frame(s.eptp.root()) == nullptr)
    return make_error("raw dump does not contain the EPT root page at hpa " + hex(hpa_of(s.eptp.root()).value));
  s.memslots = in.memslots;
  s.mmio = in.mmio;
  s.owners = in.owners;
  if (std::string why = validate_snapshot(s); !why.empty()) return make_error(why);
  collect_tables(s.eptp, all, s.ept_config, s.tables);
  s.meta["source"] = "baton snapshot import-raw";
  s.meta["maxphyaddr"] = std::to_string(in.cfg.maxphyaddr);
  s.meta["execute_only"] = in.cfg.execute_only ? "true" : "false";
  s.meta["mode_based_exec"] = in.cfg.mode_based_exec ? "true" : "false";
  return s;
}

Result<HandoverSnapshot> import_raw(std::uint64_t eptp, std::span<const std::uint8_t> pages,
                                    const std::string& memslots_json, const std::string& owners_json) {
  RawImport in;
  in.eptp = eptp;
  if (!memslots_json.empty()) {
    auto m = memslots_and_mmio_from_json(memslots_json);
    if (!m) return m.error();
    in.memslots = std::move(m->first);
    in.mmio = std::move(m->second);
  }
  if (!owners_json.empty()) {
    auto o = owners_from_json(owners_json);
    if (!o) return o.error();
    in.owners = std::move(*o);
  }
  return import_raw(pages, in);
}

Result<std::pair<std::vector<Memslot>, std::vector<GpaRange>>> memslots_and_mmio_from_json(const std::string& text) {
  try {
    const json j = json::parse(text);
    if (j.is_object()) {
      if (!j.contains("memslots")) throw std::invalid_argument("the object has no \"memslots\" array");
      return std::pair{memslots_parse(j.at("memslots")),
                       j.contains("mmio") ? ranges_parse(j.at("mmio")) : std::vector<GpaRange>{}};
    }
    return std::pair{memslots_parse(j), std::vector<GpaRange>{}};
  } catch (const std::exception& e) {
    return make_error(std::string("bad memslots JSON: ") + exception_text(e.what()));
  }
}

std::string memslots_to_json(const std::vector<Memslot>& slots) { return memslots_json(slots).dump(2); }
Result<std::vector<Memslot>> memslots_from_json(const std::string& text) {
  try {
    return memslots_parse(json::parse(text));
  } catch (const std::exception& e) {
    return make_error(std::string("bad memslots JSON: ") + exception_text(e.what()));
  }
}
std::string owners_to_json(const OwnerMap& owners) { return owners_json(owners).dump(2); }
Result<OwnerMap> owners_from_json(const std::string& text) {
  try {
    return owners_parse(json::parse(text));
  } catch (const std::exception& e) {
    return make_error(std::string("bad owners JSON: ") + exception_text(e.what()));
  }
}
std::string vcpu_to_json(const VcpuState& v) { return vcpu_json(v).dump(2); }
Result<VcpuState> vcpu_from_json(const std::string& text) {
  try {
    return vcpu_parse(json::parse(text));
  } catch (const std::exception& e) {
    return make_error(std::string("bad vcpu JSON: ") + exception_text(e.what()));
  }
}

}  // namespace baton::model
