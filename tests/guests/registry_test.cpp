// The registry of built-in guests, parameter parsing, and the host reference that predicts
// each guest's checksum from the same C workload code the guest runs.
#include "baton/guests/registry.hpp"

#include <catch2/catch.hpp>
#include <cstring>

#include "baton/guests/abi.hpp"
#include "workloads/checksum.h"

using namespace baton::guests;

namespace {

// Returns the expected checksum or fails the test.
std::uint64_t expect(const std::string& name, std::vector<Param> params = {}) {
  auto r = expected_result(name, params);
  INFO(name);
  if (!r) FAIL(r.error().message);
  return *r;
}

}  // namespace

TEST_CASE("the registry lists six guests, each with an embedded x86-64 ELF", "[registry]") {
  const std::vector<std::string> names = {"memtouch", "checksum", "pagewalk", "io", "tsc", "mixed"};
  REQUIRE(builtin_guests().size() == names.size());
  for (std::size_t i = 0; i < names.size(); ++i) {
    const BuiltinGuest& g = builtin_guests()[i];
    CAPTURE(g.name);
    CHECK(g.name == names[i]);
    CHECK(find_builtin(g.name) == &g);
    CHECK_FALSE(g.description.empty());
    REQUIRE(g.elf.size() > 64);
    CHECK(std::memcmp(g.elf.data(),
                      "\x7F"
                      "ELF",
                      4) == 0);
    CHECK(g.elf[4] == 2);  // ELFCLASS64
    for (const ParamSpec& p : g.params) {
      CAPTURE(p.name);
      CHECK(p.name.size() <= kParamKeyMax);
      CHECK_FALSE(p.help.empty());
    }
  }
  CHECK(find_builtin("nope") == nullptr);
  auto err = get_builtin("nope");
  REQUIRE_FALSE(err.ok());
  CHECK_THAT(err.error().message, Catch::Contains("known: memtouch, checksum"));
}

TEST_CASE("numbers parse with binary suffixes and reject junk", "[registry]") {
  CHECK(*parse_number("4096") == 4096);
  CHECK(*parse_number("0x1000") == 4096);
  CHECK(*parse_number("16M") == 16u << 20);
  CHECK(*parse_number("1g") == std::uint64_t{1} << 30);
  CHECK(*parse_number("2KiB") == 2048);
  CHECK(*parse_number("4GB") == std::uint64_t{4} << 30);
  CHECK_FALSE(parse_number("").ok());
  CHECK_FALSE(parse_number("12Q").ok());
  CHECK_FALSE(parse_number("0x").ok());
  CHECK_FALSE(parse_number("M").ok());
  CHECK_FALSE(parse_number("99999999999999999999").ok());
  CHECK_FALSE(parse_number("17179869184T").ok());
}

TEST_CASE("parameters resolve against a guest's specification", "[registry]") {
  const BuiltinGuest& mt = *find_builtin("memtouch");
  auto all = resolve_params(mt, std::vector<std::string>{"size=256M", "order=random"});
  REQUIRE(all.ok());
  REQUIRE(all->size() == mt.params.size());
  CHECK((*all)[0] == Param{"size", 256u << 20});
  CHECK((*all)[3] == Param{"order", 1});
  CHECK((*all)[4] == Param{"passes", 4});  // default
  CHECK(format_param_value(mt.params[0], 256u << 20) == "256M");
  CHECK(format_param_value(mt.params[3], 1) == "random");
  CHECK(*parse_param_value(mt.params[3], "1") == 1);
  CHECK_THAT(resolve_params(mt, std::vector<std::string>{"colour=red"}).error().message,
             Catch::Contains("no parameter 'colour'"));
  CHECK_THAT(resolve_params(mt, std::vector<std::string>{"size"}).error().message, Catch::Contains("key=value"));
  CHECK_THAT(resolve_params(mt, std::vector<std::string>{"order=sideways"}).error().message,
             Catch::Contains("seq|random"));
  CHECK_THAT(resolve_params(mt, std::vector<std::string>{"seed=1", "seed=2"}).error().message,
             Catch::Contains("twice"));
  CHECK_THAT(resolve_params(mt, std::vector<std::string>{"size=lots"}).error().message,
             Catch::Contains("parameter 'size'"));
}

TEST_CASE("parameter checks use the guest's own validation and the free memory", "[registry]") {
  const BuiltinGuest& mt = *find_builtin("memtouch");
  auto ps = complete_params(mt, std::vector<Param>{{"size", 1u << 30}});
  REQUIRE(ps.ok());
  CHECK(check_params(mt, *ps, std::uint64_t{2} << 30).ok());
  CHECK_THAT(check_params(mt, *ps, 512u << 20).error().message, Catch::Contains("working set needs"));
  auto bad = complete_params(mt, std::vector<Param>{{"write_pct", 101}});
  REQUIRE(bad.ok());
  CHECK_THAT(check_params(mt, *bad, 1u << 30).error().message, Catch::Contains("write_pct"));
  CHECK_THAT(expected_result("memtouch", *bad).error().message, Catch::Contains("write_pct"));
}

TEST_CASE("expected checksums for the default parameters are pinned", "[registry][reference]") {
  // Changing a workload changes these; update them together with docs/guest-abi.md.
  CHECK(expect("memtouch") == 0xbf1e7588baef5bb2ull);
  CHECK(expect("checksum") == 0x29a3c1d927a79386ull);
  CHECK(expect("pagewalk") == 0x61985c674513dff1ull);
  CHECK(expect("io") == 0x3b82744f6737e42full);
  CHECK(expect("tsc") == 0x6a785bb3e96d7996ull);
  CHECK(expect("mixed") == 0xf6c182c25910e350ull);
}

TEST_CASE("expected checksums change with the parameters", "[registry][reference]") {
  const std::uint64_t mt = expect("memtouch");
  CHECK(expect("memtouch", {{"seed", 2}}) != mt);
  CHECK(expect("memtouch", {{"order", 1}}) != mt);
  CHECK(expect("memtouch", {{"write_pct", 0}}) != mt);
  CHECK(expect("memtouch", {{"passes", 5}}) != mt);
  CHECK(expect("memtouch", {{"stride", 64}}) != mt);
  const std::uint64_t cs = expect("checksum");
  CHECK(expect("checksum", {{"algo", 1}}) != cs);
  CHECK(expect("checksum", {{"size", 4096}}) != cs);
  CHECK(expect("checksum", {{"rounds", 1}}) != cs);
  CHECK(expect("pagewalk", {{"reads", 1000}}) != expect("pagewalk"));
  CHECK(expect("io", {{BATON_PARAM_INPUT_SEED, 2}}) != expect("io"));
  CHECK(expect("io", {{"echo", 0}}) == expect("io"));  // the echo is output only
  CHECK(expect("tsc", {{"iterations", 1000}}) != expect("tsc"));
  CHECK(expect("mixed", {{"cycles", 1}}) != expect("mixed"));
}

TEST_CASE("a reference run records sync points, inputs and console output", "[registry][reference]") {
  auto mt = reference_run("memtouch", {});
  REQUIRE(mt.ok());
  CHECK(mt->exit_code == kExitOk);
  CHECK(mt->stages == std::vector<std::uint32_t>{1, 2, 3, 4, 5, 6});  // init, 4 passes, verify
  CHECK_THAT(mt->console, Catch::Contains("memtouch: checksum 0x"));
  REQUIRE(mt->results.size() == 1);
  CHECK(mt->results[0] == ResultRecord{kResultChecksum, mt->checksum});

  auto io = reference_run("io", std::vector<Param>{{"count", 1000}, {"batch", 100}});
  REQUIRE(io.ok());
  CHECK(io->inputs == 1000);
  CHECK(io->stages.size() == 11);
  CHECK(io->console.size() > 1000);

  auto tsc = reference_run("tsc", {});
  REQUIRE(tsc.ok());
  CHECK(tsc->stages.size() == 8);
  REQUIRE(tsc->results.size() == 5);
  CHECK(tsc->results[0].tag == kResultTscMaxBackward);
  CHECK(tsc->results[0].value == 0);
  CHECK(tsc->results[1].value == 1000);  // the synthetic TSC advances by 1000 per read
  CHECK_FALSE(is_deterministic_tag(tsc->results[1].tag));
  CHECK(is_deterministic_tag(tsc->results[4].tag));

  auto mixed = reference_run("mixed", {});
  REQUIRE(mixed.ok());
  unsigned phases = 0;
  for (const ResultRecord& r : mixed->results)
    if (r.tag >= kResultPhaseBase) ++phases;
  CHECK(phases == 10);
}

TEST_CASE("the reference scales to gigabyte working sets with a compact arena", "[registry][reference]") {
  CHECK(expect("memtouch", {{"size", std::uint64_t{4} << 30}, {"order", 1}, {"passes", 1}}) != 0);
  CHECK(expect("pagewalk", {{"size", std::uint64_t{4} << 30}, {"reads", 100000}}) != 0);
}

TEST_CASE("the guest hashes give their published test vectors", "[registry][reference]") {
  std::uint32_t table[256];
  crc32c_table(table);
  CHECK(checksum_selftest(table) == 1);
  const char* msg = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  sha256_ctx c;
  std::uint8_t d[32];
  sha256_init(&c);
  sha256_update(&c, reinterpret_cast<const std::uint8_t*>(msg), std::strlen(msg));
  sha256_final(&c, d);
  const std::uint8_t want[8] = {0x24, 0x8d, 0x6a, 0x61, 0xd2, 0x06, 0x38, 0xb8};
  CHECK(std::memcmp(d, want, 8) == 0);
  CHECK(d[31] == 0xc1);
  // One million 'a' in uneven pieces (FIPS 180-2 appendix B.3): cdc76e5c ... c7112cd0.
  std::vector<std::uint8_t> a(1000000, 'a');
  sha256_init(&c);
  sha256_update(&c, a.data(), 1);
  sha256_update(&c, a.data() + 1, 63);
  sha256_update(&c, a.data() + 64, 999936 - 1000);
  sha256_update(&c, a.data() + 999000, 1000);
  sha256_final(&c, d);
  CHECK(d[0] == 0xcd);
  CHECK(d[1] == 0xc7);
  CHECK(d[31] == 0xd0);
  std::uint8_t digits[] = {'1', '2', '3', '4', '5', '6', '7', '8', '9'};
  CHECK((crc32c_update(table, 0xFFFFFFFFu, digits, 9) ^ 0xFFFFFFFFu) == 0xE3069283u);
}

TEST_CASE("the default input sequence is a pure function of seed and index", "[registry]") {
  CHECK(input_value(1, 0) == input_value(1, 0));
  CHECK(input_value(1, 0) != input_value(1, 1));
  CHECK(input_value(1, 5) != input_value(2, 5));
  CHECK(port_name(kPortSync) == std::string("sync"));
  CHECK(port_name(0x80) == nullptr);
}

TEST_CASE("the port recorder decodes the ABI and reports differences from the reference", "[ports]") {
  PortRecorder p(1);
  CHECK(p.out(kPortConsole, 1, 'h').kind == PortEventKind::kConsole);
  CHECK(p.out(kPortSync, 4, 1).kind == PortEventKind::kSync);
  CHECK(p.out(kPortResultTag, 4, 2).kind == PortEventKind::kNone);
  p.out(kPortResultLo, 4, 0x89ABCDEF);
  const PortEvent r = p.out(kPortResultHi, 4, 0x01234567);
  CHECK(r.kind == PortEventKind::kResult);
  CHECK(r.result == ResultRecord{2, 0x0123456789ABCDEFull});
  p.out(kPortResultLo, 4, 7);
  p.out(kPortResultHi, 4, 0);  // the tag was reset to 0: this is the checksum
  CHECK(p.run().checksum == 7);
  const PortEvent in = p.in(kPortInput, 4);
  CHECK(in.kind == PortEventKind::kInput);
  CHECK(in.value == input_value(1, 0));
  CHECK(p.in(0x60, 1).kind == PortEventKind::kStray);
  CHECK(p.out(kPortExit, 4, 0).kind == PortEventKind::kExit);
  CHECK(p.run().exited);
  CHECK(p.run().stray == std::vector<std::string>{"in 0x60 size 1"});

  auto ref = reference_run("io", std::vector<Param>{{"count", 10}});
  REQUIRE(ref.ok());
  CHECK(compare_runs(*ref, *ref).empty());
  GuestRun bad = *ref;
  bad.results.back().value ^= 1;
  bad.stages.pop_back();
  bad.console += "x";
  const auto diffs = compare_runs(*ref, bad);
  REQUIRE(diffs.size() == 3);
  CHECK_THAT(diffs[0], Catch::Contains("deterministic result"));
  CHECK_THAT(diffs[1], Catch::Contains("sync points"));
  CHECK_THAT(diffs[2], Catch::Contains("console output differs from byte"));
}

TEST_CASE("the port recorder's ABI state carries a half-reported result and the input count to another recorder", "[ports]") {
  PortRecorder a(3);
  a.out(kPortSync, 4, 5);
  (void)a.in(kPortInput, 4);
  (void)a.in(kPortInput, 4);
  a.out(kPortResultTag, 4, 0x101);
  a.out(kPortResultLo, 4, 0xDEADBEEF);  // the handover falls between the low and the high half
  const PortRecorder::State st = a.state();
  CHECK(st == PortRecorder::State{0x101, 0xDEADBEEF, 5, 2});

  PortRecorder b(3);
  b.resume(st);
  CHECK(b.state() == st);
  CHECK(b.run().stages.empty());  // what was recorded before stays with the first recorder
  const PortEvent r = b.out(kPortResultHi, 4, 1);
  CHECK(r.result == ResultRecord{0x101, 0x1DEADBEEFull});
  CHECK(b.in(kPortInput, 4).value == input_value(3, 2));
  CHECK(b.out(kPortSync, 4, 6).kind == PortEventKind::kSync);
  CHECK(b.state() == PortRecorder::State{0, 0xDEADBEEF, 6, 3});
}
