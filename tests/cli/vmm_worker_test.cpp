// `baton vmm-worker --socket PATH` as a real second process: it connects to the source's
// listening socket, and without a usable KVM device it tells the source so in one error message
// over the handover protocol and exits 2 with the same line on stderr.
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>

#include "baton/hw/handover.hpp"
#include "cli_run.hpp"

using baton::test::ScratchDir;
using baton::test::slurp;

TEST_CASE("vmm-worker: without KVM the worker reports the reason to the source over the socket", "[cli][worker]") {
  // BATON_KVM_DEVICE points at a missing file, so this runs on every machine; a real worker on
  // a real KVM is exercised by the kvm suite (migrate_kvm_test.cpp).
  ScratchDir d;
  const std::string dev = d / "no-kvm";
  const std::string path = d / "src.sock";
  const int ls = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(ls >= 0);
  sockaddr_un a{};
  a.sun_family = AF_UNIX;
  REQUIRE(path.size() < sizeof a.sun_path);
  std::memcpy(a.sun_path, path.c_str(), path.size() + 1);
  REQUIRE(::bind(ls, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  REQUIRE(::listen(ls, 1) == 0);
  const std::string err = d / "worker.err";
  const pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int fd = ::open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 2);
    ::setenv("BATON_KVM_DEVICE", dev.c_str(), 1);
    ::execl(BATON_EXE, BATON_EXE, "vmm-worker", "--socket", path.c_str(), "--timeout-ms", "3000",
            static_cast<char*>(nullptr));
    _exit(127);
  }
  pollfd pf{ls, POLLIN, 0};
  REQUIRE(::poll(&pf, 1, 10'000) == 1);
  const int s = ::accept4(ls, nullptr, nullptr, SOCK_CLOEXEC);
  REQUIRE(s >= 0);
  auto m = baton::hw::recv_message(s, 10'000);
  REQUIRE(m);
  CHECK(m->type == baton::hw::MsgType::kError);
  const std::string reason(m->payload.begin(), m->payload.end());
  CHECK_THAT(reason, Catch::StartsWith(dev + ": No such file or directory — this host has no KVM"));
  int wst = 0;
  ::waitpid(pid, &wst, 0);
  CHECK(WIFEXITED(wst));
  CHECK(WEXITSTATUS(wst) == 2);
  CHECK(slurp(err) == "baton: " + reason + "\n");
  ::close(s);
  ::close(ls);
}
