// `baton explore` on a real pseudo-terminal (tmux): the prompt, tab completion, the history
// file, Ctrl-C during `run` (the guest stops, the REPL stays), a bad command (one error line,
// the REPL stays) and Ctrl-C at the prompt. Exits 77 with the reason when tmux is missing.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#include "cli_run.hpp"

using baton::test::ScratchDir;
using baton::test::slurp;

namespace {

// Panes made so far by this process: each gets a socket of its own.
int g_panes = 0;

// One tmux server of its own (-L), running baton explore in a 160x50 pane. Each pane has its
// own server: a second pane on the first one's socket could reach that server while it is
// still shutting down (seen under make sanitize on a loaded machine).
struct Pane {
  std::string sock;
  explicit Pane(const ScratchDir& d, const std::string& args)
      : sock("baton-explore-" + std::to_string(getpid()) + "-" + std::to_string(++g_panes)) {
    sh("new-session -d -x 160 -y 50 \"env XDG_STATE_HOME=" + d.path.string() + "/state " + BATON_EXE + " explore " + args + "\"");
  }
  ~Pane() { (void)std::system(("tmux -L " + sock + " kill-server >/dev/null 2>&1").c_str()); }
  // Runs a tmux command on this server.
  void sh(const std::string& c) const { (void)std::system(("tmux -L " + sock + " -f /dev/null " + c + " >/dev/null 2>&1").c_str()); }
  // Sends keys (tmux key names or literal text).
  void keys(const std::string& k) const { sh("send-keys -t 0 " + k); }
  // The visible text of the pane.
  std::string screen() const {
    const std::string out = "/tmp/" + sock + ".screen";
    (void)std::system(("tmux -L " + sock + " capture-pane -p -t 0 > " + out + " 2>/dev/null").c_str());
    std::string s = slurp(out);
    std::remove(out.c_str());
    return s;
  }
  // Waits up to `seconds` for `text` to appear on the screen.
  bool wait_for(const std::string& text, double seconds = 20) const {
    const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
    while (std::chrono::steady_clock::now() < end) {
      if (screen().find(text) != std::string::npos) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  // Counts the occurrences of `text` on the screen.
  std::size_t count(const std::string& text) const {
    const std::string s = screen();
    std::size_t n = 0;
    for (auto p = s.find(text); p != std::string::npos; p = s.find(text, p + 1)) ++n;
    return n;
  }
};

}  // namespace

TEST_CASE("explore on a terminal: completion, errors, Ctrl-C during run, history", "[cli][explore][tty]") {
  ScratchDir d;
  Pane p(d, "memtouch --mem 64M -p passes=1000000");
  REQUIRE(p.wait_for("explore>"));
  // Tab completes a command, a VMCS field, a method.
  p.keys("'vmcs ept_poi' Tab Enter");
  CHECK(p.wait_for("0x201a ept_pointer"));
  p.keys("'migrate local-r' Tab");
  CHECK(p.wait_for("migrate local-rebuild"));
  p.keys("C-u");
  p.keys("'he' Tab Enter");
  CHECK(p.wait_for("commands (each takes --json"));
  // A bad command: one error line, and the REPL goes on.
  p.keys("'frobnicate' Enter");
  CHECK(p.wait_for("baton: unknown command 'frobnicate' (type help for the list)"));
  p.keys("'regs rip' Enter");
  CHECK(p.wait_for("rip    0x"));
  // Ctrl-C during a long run stops the guest, not the REPL.
  p.keys("'run to exit' Enter");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  p.keys("C-c");
  CHECK(p.wait_for("stopped: interrupted (Ctrl-C) at insn "));
  p.keys("'step' Enter");
  CHECK(p.wait_for("=> 0x"));
  // Ctrl-C at the prompt drops the line; the REPL stays.
  p.keys("'half a line' C-c");
  p.keys("'backend' Enter");
  CHECK(p.wait_for("backend  sim:"));
  // History: Up recalls the previous line.
  const std::size_t before = p.count("backend  sim:");
  p.keys("Up Enter");
  CHECK(p.wait_for("explore> backend"));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  CHECK(p.count("backend  sim:") == before + 1);
  p.keys("'quit' Enter");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  const std::string hist = slurp(d / "state/baton/explore_history");
  CHECK_THAT(hist, Catch::Contains("vmcs ept_pointer\n") && Catch::Contains("run to exit\n") &&
                       Catch::Contains("frobnicate\n") && Catch::Contains("quit\n"));
  CHECK_THAT(hist, !Catch::Contains("half a line"));
}

TEST_CASE("explore on a terminal: the history file carries over to the next session", "[cli][explore][tty]") {
  ScratchDir d;
  {
    Pane p(d, "memtouch --mem 64M");
    REQUIRE(p.wait_for("explore>"));
    p.keys("'memslots' Enter");
    REQUIRE(p.wait_for("slot 0"));
    p.keys("C-d");
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
  }
  Pane q(d, "memtouch --mem 64M");
  REQUIRE(q.wait_for("explore>"));
  q.keys("Up Enter");
  CHECK(q.wait_for("slot 0  gpa 0x0"));
}

int main(int argc, char** argv) {
  if (std::system("tmux -V >/dev/null 2>&1") != 0) {
    std::printf("SKIPPED: tmux is not installed (scripts/install-deps.sh installs it)\n");
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
