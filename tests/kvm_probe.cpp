// baton_kvm_probe: says whether this host's /dev/kvm can run the kvm-labelled tests, for
// scripts/kvm-suite.sh. Prints the host flavour (hw::host_flavour()) on the first line; exits 0
// when the device opens, speaks API version 12 and KVM_CREATE_VM succeeds, else prints the
// reason on a second line and exits 1.
#include <cstdio>

#include "baton/hw/kvm.hpp"

// Probes the device and reports as described above.
int main() {
  std::printf("%s\n", baton::hw::host_flavour().c_str());
  auto sys = baton::hw::KvmSystem::try_open();
  if (!sys) {
    std::printf("%s\n", sys.error().message.c_str());
    return 1;
  }
  auto vm = sys->try_create_vm();
  if (!vm) {
    std::printf("%s\n", vm.error().message.c_str());
    return 1;
  }
  return 0;
}
