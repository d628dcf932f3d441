// Tests that need a usable /dev/kvm (CTest label `kvm`). Without one, main() prints
// "SKIPPED: /dev/kvm is not usable here: <reason>" and returns 77, which CTest reports as a
// skip (SKIP_RETURN_CODE), never as a pass.
#define CATCH_CONFIG_RUNNER
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>

#include "baton/guests/abi.hpp"
#include "baton/guests/registry.hpp"
#include "baton/hw/machine.hpp"
#include "baton/hw/worker.hpp"
#include "baton/sim/baseline.hpp"

using namespace baton;
using namespace baton::hw;

namespace {

guests::GuestImage image_of(const std::string& name, guests::PageSize pages = guests::PageSize::k4K) {
  guests::GuestConfig gc;
  gc.mem_size = 64 << 20;
  gc.page_size = pages;
  auto g = guests::get_builtin(name);
  REQUIRE(g);
  auto ps = guests::resolve_params(**g, std::vector<std::string>{});
  REQUIRE(ps);
  gc.params = *ps;
  auto im = guests::load_builtin(name, gc);
  INFO((im ? "" : im.error().message));
  REQUIRE(im);
  return *im;
}

// Runs an image to its exit on KVM and returns what it reported.
guests::GuestRun run_to_exit(const guests::GuestImage& im) {
  auto m = KvmMachine::try_create(im);
  INFO((m ? "" : m.error().message));
  REQUIRE(m);
  auto r = (*m)->run();
  REQUIRE(r);
  INFO(r->detail);
  REQUIRE(r->stop == KvmStop::kExited);
  return (*m)->ports();
}

// diff_vcpu without the fields a capture cannot hold still: the TSC moves on.
std::vector<model::VcpuFieldDiff> state_diff(const model::VcpuState& a, const model::VcpuState& b) {
  std::vector<model::VcpuFieldDiff> out;
  for (auto& d : model::diff_vcpu(a, b))
    if (d.field.find("tsc") == std::string::npos) out.push_back(d);
  return out;
}

}  // namespace

TEST_CASE("kvm: every built-in guest matches the host reference and bare Unicorn", "[kvm][differential]") {
  for (const guests::BuiltinGuest& g : guests::builtin_guests()) {
    INFO("guest " << g.name);
    const guests::GuestImage im = image_of(g.name);
    const guests::GuestRun kvm = run_to_exit(im);
    CHECK(kvm.exited);
    CHECK(kvm.exit_code == guests::kExitOk);
    auto expected = guests::expected_result(g.name, im.params);
    REQUIRE(expected);
    CHECK(kvm.checksum == *expected);
    auto bare = sim::run_bare_unicorn(im);
    REQUIRE(bare);
    CHECK(guests::compare_runs(bare->ports, kvm).empty());
  }
}

TEST_CASE("kvm: capture, restore and capture again gives the same state", "[kvm][state]") {
  const guests::GuestImage im = image_of("mixed");
  auto m = KvmMachine::try_create(im);
  REQUIRE(m);
  auto r = (*m)->run(~std::uint64_t{0}, true);
  REQUIRE(r);
  REQUIRE(r->stop == KvmStop::kSync);
  auto s1 = (*m)->capture();
  REQUIRE(s1);
  CHECK_FALSE(s1->msrs.empty());
  CHECK_FALSE(s1->xsave.empty());
  REQUIRE((*m)->restore(*s1));
  auto s2 = (*m)->capture();
  REQUIRE(s2);
  CHECK(state_diff(*s1, *s2).empty());
  // The guest TSC keeps its offset to the host TSC.
  CHECK(s2->tsc_offset - s1->tsc_offset + 1000000 < 2000000);
}

TEST_CASE("kvm: save, recreate on the same memfd, restore and continue equals an uninterrupted run at every sync point",
          "[kvm][state]") {
  const guests::GuestImage im = image_of("mixed");
  const guests::GuestRun straight = run_to_exit(im);
  REQUIRE(straight.stages.size() >= 2);
  for (std::size_t cut = 1; cut <= straight.stages.size(); ++cut) {
    INFO("migrating at sync point " << cut);
    auto m = KvmMachine::try_create(im);
    REQUIRE(m);
    for (std::size_t k = 0; k < cut; ++k) {
      auto r = (*m)->run(~std::uint64_t{0}, true);
      REQUIRE(r);
      REQUIRE(r->stop == KvmStop::kSync);
    }
    auto state = (*m)->capture();
    REQUIRE(state);
    auto shared = GuestMemory::try_adopt(::dup((*m)->memory().fd()), im.mem_size);
    REQUIRE(shared);
    auto m2 = KvmMachine::try_create_on(std::move(*shared), im);
    REQUIRE(m2);
    REQUIRE((*m2)->restore(*state));
    (*m2)->recorder() = (*m)->recorder();
    m->reset();  // the source VM is gone; the memory lives on in the memfd
    auto r = (*m2)->run();
    REQUIRE(r);
    INFO(r->detail);
    REQUIRE(r->stop == KvmStop::kExited);
    CHECK(guests::compare_runs(straight, (*m2)->ports()).empty());
  }
}

namespace {
// Forks a worker process that serves the handover on one end of a socketpair.
pid_t spawn_worker(int& source_end) {
  int sv[2];
  REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(sv[0]);
    auto r = serve_worker(sv[1]);
    _exit(r ? 0 : 1);
  }
  ::close(sv[1]);
  source_end = sv[0];
  return pid;
}
}  // namespace

TEST_CASE("kvm: local migration to a second process shares the memfd and reaches the same checksum",
          "[kvm][migration]") {
  const guests::GuestImage im = image_of("mixed");
  auto expected = guests::expected_result("mixed", im.params);
  REQUIRE(expected);
  int sock = -1;
  const pid_t worker = spawn_worker(sock);
  auto m = KvmMachine::try_create(im);
  REQUIRE(m);
  HandoverTiming t;
  REQUIRE(prepare_worker(**m, sock, t));  // before the pause: VM, vCPU and memslot on the worker
  auto r = (*m)->run(~std::uint64_t{0}, true);
  REQUIRE(r);
  REQUIRE(r->stop == KvmStop::kSync);
  auto h = hand_over(**m, sock, t);
  INFO((h ? "" : h.error().message));
  REQUIRE(h);
  m->reset();  // the source tears its VM down
  auto done = wait_worker_result(sock);
  REQUIRE(done);
  char want[64];
  std::snprintf(want, sizeof want, "checksum 0x%llx", static_cast<unsigned long long>(*expected));
  CHECK_THAT(*done, Catch::Contains(want));
  CHECK(t.resumed_ns > t.pause_ns);
  WARN("local migration downtime " << t.downtime_us() << " us");
  int st = 0;
  ::waitpid(worker, &st, 0);
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  ::close(sock);
}

TEST_CASE("kvm: precopy to a second process copies memory in rounds and reaches the same checksum",
          "[kvm][migration][precopy]") {
  const guests::GuestImage im = image_of("mixed");
  auto expected = guests::expected_result("mixed", im.params);
  REQUIRE(expected);
  int sock = -1;
  const pid_t worker = spawn_worker(sock);
  auto m = KvmMachine::try_create(im);
  REQUIRE(m);
  HandoverTiming t;
  t.precopy = true;
  REQUIRE(prepare_worker(**m, sock, t));  // round 1: all of memory
  CHECK(t.bytes_copied == im.mem_size);
  auto r = (*m)->run(~std::uint64_t{0}, true);  // the guest dirties pages meanwhile
  REQUIRE(r);
  REQUIRE(r->stop == KvmStop::kSync);
  REQUIRE(precopy_round(**m, sock, t));
  auto h = hand_over(**m, sock, t);  // stop-and-copy, then the state
  INFO((h ? "" : h.error().message));
  REQUIRE(h);
  m->reset();
  auto done = wait_worker_result(sock);
  REQUIRE(done);
  char want[64];
  std::snprintf(want, sizeof want, "checksum 0x%llx", static_cast<unsigned long long>(*expected));
  CHECK_THAT(*done, Catch::Contains(want));
  CHECK(t.rounds == 3);
  WARN("precopy: " << t.bytes_copied << " bytes in " << t.rounds << " rounds, downtime " << t.downtime_us() << " us");
  int st = 0;
  ::waitpid(worker, &st, 0);
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
  ::close(sock);
}

TEST_CASE("kvm: a worker killed with SIGKILL before the handover leaves the source running to its checksum",
          "[kvm][migration][fault]") {
  const guests::GuestImage im = image_of("mixed");
  auto expected = guests::expected_result("mixed", im.params);
  REQUIRE(expected);
  int sock = -1;
  const pid_t worker = spawn_worker(sock);
  auto m = KvmMachine::try_create(im);
  REQUIRE(m);
  HandoverTiming t;
  REQUIRE(prepare_worker(**m, sock, t));
  auto r = (*m)->run(~std::uint64_t{0}, true);
  REQUIRE(r);
  REQUIRE(::kill(worker, SIGKILL) == 0);
  ::waitpid(worker, nullptr, 0);
  auto h = hand_over(**m, sock, t, 5000);
  REQUIRE_FALSE(h);  // reported ...
  CHECK_THAT(h.error().message, Catch::Contains("closed the connection") || Catch::Contains("reset"));
  auto rest = (*m)->run();  // ... and the source resumes: nothing was lost
  REQUIRE(rest);
  REQUIRE(rest->stop == KvmStop::kExited);
  CHECK((*m)->ports().checksum == *expected);
  ::close(sock);
}

int main(int argc, char** argv) {
  if (auto why = kvm_unavailable_reason()) {
    std::printf("SKIPPED: /dev/kvm is not usable here: %s\n", why->c_str());
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
