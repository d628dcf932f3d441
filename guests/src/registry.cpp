// The built-in guests: names, parameters, embedded ELFs, parameter parsing and load_builtin.
#include "baton/guests/registry.hpp"

#include <cctype>
#include <cstdio>

#include "baton/guests/abi.hpp"
#include "workloads.hpp"
#include "workloads/mixed.h"  // the parameter defaults of every workload

// The ELF images, embedded by the generated embedded_guests.c (guests/CMakeLists.txt).
#define BATON_DECLARE_EMBEDDED(n)                         \
  extern "C" const unsigned char baton_guest_##n##_elf[]; \
  extern "C" const unsigned char baton_guest_##n##_elf_end[];
BATON_DECLARE_EMBEDDED(memtouch)
BATON_DECLARE_EMBEDDED(checksum)
BATON_DECLARE_EMBEDDED(pagewalk)
BATON_DECLARE_EMBEDDED(io)
BATON_DECLARE_EMBEDDED(tsc)
BATON_DECLARE_EMBEDDED(mixed)
#undef BATON_DECLARE_EMBEDDED

namespace baton::guests {

namespace {

#define BATON_EMBEDDED(n)                              \
  std::span<const std::uint8_t>(baton_guest_##n##_elf, \
                                static_cast<std::size_t>(baton_guest_##n##_elf_end - baton_guest_##n##_elf))

// Builds a numeric parameter.
ParamSpec num(const char* name, std::uint64_t dflt, const char* help) { return ParamSpec{name, dflt, help, {}, false}; }
// Builds a size parameter (shown with a suffix).
ParamSpec size(const char* name, std::uint64_t dflt, const char* help) { return ParamSpec{name, dflt, help, {}, true}; }
// Builds a choice parameter.
ParamSpec choice(const char* name, std::uint64_t dflt, const char* help, std::vector<std::string> names) {
  return ParamSpec{name, dflt, help, std::move(names), false};
}

// Builds the registry (once).
std::vector<BuiltinGuest> make_registry() {
  const ParamSpec input_seed = num(BATON_PARAM_INPUT_SEED, IO_DEFAULT_INPUT_SEED,
                                   "seed of the host's default input sequence (read by the host, not the guest)");
  std::vector<BuiltinGuest> g;
  g.push_back({"memtouch",
               "memory-heavy dirtying workload: touches a working set in passes, reading or writing",
               {size("size", MEMTOUCH_DEFAULT_SIZE, "working-set bytes"),
                size("stride", MEMTOUCH_DEFAULT_STRIDE, "bytes between touched words (4K: one word per page)"),
                num("write_pct", MEMTOUCH_DEFAULT_WRITE_PCT, "percentage of touches that write (0..100)"),
                choice("order", MEMTOUCH_DEFAULT_ORDER, "touch order", {"seq", "random"}),
                num("passes", MEMTOUCH_DEFAULT_PASSES, "passes over the working set"),
                num("seed", MEMTOUCH_DEFAULT_SEED, "seed of values and random order")},
               BATON_EMBEDDED(memtouch)});
  g.push_back({"checksum",
               "compute-heavy: CRC32C or SHA-256 rounds over a generated buffer",
               {size("size", CHECKSUM_DEFAULT_SIZE, "buffer bytes (multiple of 8, at least 64)"),
                num("rounds", CHECKSUM_DEFAULT_ROUNDS, "hash rounds over the buffer"),
                choice("algo", CHECKSUM_DEFAULT_ALGO, "hash function", {"crc32c", "sha256"}),
                num("seed", CHECKSUM_DEFAULT_SEED, "seed of the buffer contents")},
               BATON_EMBEDDED(checksum)});
  g.push_back({"pagewalk",
               "dependent random reads, one word per page, across a large working set (TLB/EPT walks)",
               {size("size", PAGEWALK_DEFAULT_SIZE, "working-set bytes"),
                num("reads", PAGEWALK_DEFAULT_READS, "dependent reads in total"),
                num("phases", PAGEWALK_DEFAULT_PHASES, "groups of reads, a sync point after each"),
                num("seed", PAGEWALK_DEFAULT_SEED, "seed of page contents and the first page")},
               BATON_EMBEDDED(pagewalk)});
  g.push_back(
      {"io",
       "port-I/O heavy: reads the input port, folds and echoes each value",
       {num("count", IO_DEFAULT_COUNT, "input-port reads"), num("batch", IO_DEFAULT_BATCH, "reads between sync points"),
        num("echo", IO_DEFAULT_ECHO, "echo one console letter per read (0 or 1)"), input_seed},
       BATON_EMBEDDED(io)});
  g.push_back({"tsc",
               "reads the TSC in a loop; reports the largest backward jump and forward gap",
               {num("iterations", TSC_DEFAULT_ITERATIONS, "TSC reads in total"),
                num("phases", TSC_DEFAULT_PHASES, "groups of reads, a sync point after each")},
               BATON_EMBEDDED(tsc)});
  g.push_back({"mixed",
               "cycles of memtouch, checksum, pagewalk, io and tsc phases, separated by sync points",
               {size("size", MIXED_DEFAULT_SIZE, "working-set bytes of the memory phases"),
                num("cycles", MIXED_DEFAULT_CYCLES, "repetitions of the five phases"),
                num("seed", MIXED_DEFAULT_SEED, "seed of every phase (plus the cycle number)"), input_seed},
               BATON_EMBEDDED(mixed)});
  return g;
}

// Returns the lower-cased copy of a string.
std::string lower(std::string_view s) {
  std::string t;
  for (char c : s) t += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return t;
}

// Returns the names of a guest's parameters, comma-separated.
std::string param_names(const BuiltinGuest& g) {
  std::string s;
  for (const ParamSpec& p : g.params) s += (s.empty() ? "" : ", ") + p.name;
  return s;
}

// Returns the spec of a parameter, or nullptr.
const ParamSpec* find_spec(const BuiltinGuest& g, std::string_view key) {
  for (const ParamSpec& p : g.params)
    if (p.name == key) return &p;
  return nullptr;
}

}  // namespace

#undef BATON_EMBEDDED

const char* port_name(std::uint16_t port) {
  switch (port) {
    case kPortConsole: return "console";
    case kPortResultTag: return "result-tag";
    case kPortResultLo: return "result-lo";
    case kPortResultHi: return "result-hi";
    case kPortSync: return "sync";
    case kPortInput: return "input";
    case kPortExit: return "exit";
    case kPortFault: return "fault";
    default: return nullptr;
  }
}

std::span<const BuiltinGuest> builtin_guests() {
  static const std::vector<BuiltinGuest> registry = make_registry();
  return registry;
}

const BuiltinGuest* find_builtin(std::string_view name) {
  for (const BuiltinGuest& g : builtin_guests())
    if (g.name == name) return &g;
  return nullptr;
}

Result<const BuiltinGuest*> get_builtin(std::string_view name) {
  if (const BuiltinGuest* g = find_builtin(name)) return g;
  std::string known;
  for (const BuiltinGuest& g : builtin_guests()) known += (known.empty() ? "" : ", ") + g.name;
  return make_error("no built-in guest named '" + std::string(name) + "' (known: " + known + ")");
}

Result<std::uint64_t> parse_number(std::string_view s) {
  const std::string t = lower(s);
  if (t.empty()) return make_error("empty number");
  std::size_t i = 0;
  std::uint64_t v = 0;
  const bool hex = t.size() > 2 && t[0] == '0' && t[1] == 'x';
  const unsigned base = hex ? 16 : 10;
  if (hex) i = 2;
  const std::size_t digits_start = i;
  for (; i < t.size(); ++i) {
    const char c = t[i];
    unsigned d;
    if (c >= '0' && c <= '9')
      d = static_cast<unsigned>(c - '0');
    else if (hex && c >= 'a' && c <= 'f')
      d = static_cast<unsigned>(c - 'a' + 10);
    else
      break;
    if (v > (~std::uint64_t{0} - d) / base) return make_error("number '" + std::string(s) + "' is too large");
    v = v * base + d;
  }
  if (i == digits_start) return make_error("'" + std::string(s) + "' is not a number");
  const std::string suffix = t.substr(i);
  unsigned shift = 0;
  if (suffix.empty() || suffix == "b")
    shift = 0;
  else if (!hex && (suffix == "k" || suffix == "kb" || suffix == "kib"))
    shift = 10;
  else if (!hex && (suffix == "m" || suffix == "mb" || suffix == "mib"))
    shift = 20;
  else if (!hex && (suffix == "g" || suffix == "gb" || suffix == "gib"))
    shift = 30;
  else if (!hex && (suffix == "t" || suffix == "tb" || suffix == "tib"))
    shift = 40;
  else
    return make_error("'" + std::string(s) + "' has an unknown suffix '" + suffix + "' (use K, M, G or T)");
  if (shift != 0 && v > (~std::uint64_t{0} >> shift)) return make_error("number '" + std::string(s) + "' is too large");
  return v << shift;
}

Result<std::uint64_t> parse_param_value(const ParamSpec& spec, std::string_view s) {
  if (!spec.choices.empty()) {
    const std::string t = lower(s);
    for (std::size_t i = 0; i < spec.choices.size(); ++i)
      if (t == spec.choices[i] || t == std::to_string(i)) return static_cast<std::uint64_t>(i);
    std::string all;
    for (const std::string& c : spec.choices) all += (all.empty() ? "" : "|") + c;
    return make_error("parameter '" + spec.name + "' must be one of " + all + ", not '" + std::string(s) + "'");
  }
  auto v = parse_number(s);
  if (!v) return make_error("parameter '" + spec.name + "': " + v.error().message);
  return v;
}

std::string format_param_value(const ParamSpec& spec, std::uint64_t v) {
  if (!spec.choices.empty()) return v < spec.choices.size() ? spec.choices[v] : std::to_string(v);
  if (spec.is_size && v != 0) {
    static const char* const kSuffix[] = {"T", "G", "M", "K"};
    for (unsigned k = 0; k < 4; ++k) {
      const unsigned shift = 40 - 10 * k;
      if (v % (std::uint64_t{1} << shift) == 0) return std::to_string(v >> shift) + kSuffix[k];
    }
  }
  return std::to_string(v);
}

Result<std::vector<Param>> complete_params(const BuiltinGuest& guest, std::span<const Param> given) {
  for (const Param& p : given)
    if (find_spec(guest, p.key) == nullptr)
      return make_error("guest '" + guest.name + "' has no parameter '" + p.key + "' (known: " + param_names(guest) +
                        ")");
  std::vector<Param> out;
  for (const ParamSpec& spec : guest.params) {
    Param p{spec.name, spec.default_value};
    for (const Param& g : given)
      if (g.key == spec.name) p.value = g.value;
    if (!spec.choices.empty() && p.value >= spec.choices.size())
      return make_error("parameter '" + spec.name + "' = " + std::to_string(p.value) + " is not a valid choice");
    out.push_back(p);
  }
  return out;
}

Result<std::vector<Param>> resolve_params(const BuiltinGuest& guest, std::span<const std::string> assignments) {
  std::vector<Param> given;
  for (const std::string& a : assignments) {
    const auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0) return make_error("parameter '" + a + "' is not of the form key=value");
    const std::string key = a.substr(0, eq);
    const ParamSpec* spec = find_spec(guest, key);
    if (spec == nullptr)
      return make_error("guest '" + guest.name + "' has no parameter '" + key + "' (known: " + param_names(guest) +
                        ")");
    for (const Param& g : given)
      if (g.key == key) return make_error("parameter '" + key + "' is given twice");
    auto v = parse_param_value(*spec, std::string_view(a).substr(eq + 1));
    if (!v) return v.error();
    given.push_back(Param{key, *v});
  }
  return complete_params(guest, given);
}

Result<void> check_params(const BuiltinGuest& guest, std::span<const Param> params, std::uint64_t free_bytes) {
  const detail::WorkloadOps* w = detail::find_workload(guest.name);
  if (w == nullptr) return make_error("guest '" + guest.name + "' has no host-side workload");
  const baton_boot boot = detail::boot_with_params(params);
  if (const char* why = w->validate(&boot)) return make_error(guest.name + ": bad parameters: " + why);
  const std::uint64_t need = w->arena_bytes(&boot, 0);
  if (need > free_bytes) {
    char buf[200];
    std::snprintf(buf, sizeof buf,
                  "%s: the working set needs %llu KiB but only %llu KiB of guest memory are free; "
                  "raise the memory size",
                  guest.name.c_str(), static_cast<unsigned long long>((need + 1023) / 1024),
                  static_cast<unsigned long long>(free_bytes / 1024));
    return make_error(buf);
  }
  return ok_result();
}

Result<GuestImage> load_builtin(std::string_view name, const GuestConfig& cfg) {
  auto guest = get_builtin(name);
  if (!guest) return guest.error();
  auto params = complete_params(**guest, cfg.params);
  if (!params) return params.error();
  GuestConfig full = cfg;
  full.params = *params;
  auto image = load_guest((*guest)->elf, full);
  if (!image) return image.error();
  BATON_TRY_VOID(check_params(**guest, image->params, image->free_end - image->free_start));
  return image;
}

}  // namespace baton::guests
