// Opening a KVM device that is missing or is not KVM gives one clear line, never a crash.
// These run everywhere; the tests that need a working /dev/kvm are in kvm_test.cpp.
#include <catch2/catch.hpp>

#include "baton/hw/kvm.hpp"
#include "baton/hw/machine.hpp"

using namespace baton;
using namespace baton::hw;

TEST_CASE("kvm device: a missing device names the path, errno and what it means", "[kvm-device][bad-input]") {
  auto s = KvmSystem::try_open("/nonexistent/kvm");
  REQUIRE_FALSE(s);
  CHECK_THAT(s.error().message, Catch::StartsWith("/nonexistent/kvm: No such file or directory — this host has no KVM"));
  CHECK(s.error().message.find('\n') == std::string::npos);
  CHECK(kvm_unavailable_reason("/nonexistent/kvm") == s.error().message);
  CHECK_THROWS_WITH(KvmSystem::open("/nonexistent/kvm"), Catch::Contains("No such file or directory"));
}

TEST_CASE("kvm device: a device that is not KVM is named as such", "[kvm-device][bad-input]") {
  auto s = KvmSystem::try_open("/dev/null");
  REQUIRE_FALSE(s);
  CHECK_THAT(s.error().message, Catch::Contains("/dev/null: KVM_GET_API_VERSION failed") &&
                                    Catch::Contains("not a KVM device"));
}

TEST_CASE("kvm device: creating a machine without KVM fails before touching anything", "[kvm-device][bad-input]") {
  guests::GuestImage im;
  im.mem_size = 4 << 20;
  KvmMachineOptions o;
  o.device = "/nonexistent/kvm";
  auto m = KvmMachine::try_create(im, o);
  REQUIRE_FALSE(m);
  CHECK_THAT(m.error().message, Catch::StartsWith("/nonexistent/kvm: No such file or directory"));
}
