// baton explore: the subcommand, the interactive terminal (GNU readline: prompt, history file,
// completion, Ctrl-C) and --script.
#include "cmd_explore.hpp"

#include <fcntl.h>
#include <readline/history.h>
#include <readline/readline.h>
#include <sys/select.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <memory>

#include "baton/checker/check.hpp"
#include "baton/guests/registry.hpp"
#include "commands.hpp"

namespace baton::cli {

namespace {

using explore::Session;

struct ExploreOptions {
  SimOptions sim;
  std::string backend = "sim";
  std::string script;
  std::uint64_t budget = 4'000'000'000ull;
  double timeout = 60;  // kvm: seconds before a run counts as a hang
};

// The session the completion callbacks look at.
Session* g_session = nullptr;
// The line readline handed over, and whether input ended.
std::string g_line;
bool g_got = false, g_eof = false;

// SIGINT while a command runs or at the prompt: a flag the loops act on, and on KVM the running
// vCPU leaves KVM_RUN (immediate_exit; this signal interrupts a KVM_RUN already in the guest).
extern "C" void on_sigint(int) {
  explore::g_interrupted = 1;
  explore::kick_running_vcpu();
}

// Installs on_sigint without SA_RESTART, so a prompt's select() wakes up.
void install_sigint() {
  struct sigaction sa {};
  sa.sa_handler = on_sigint;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;
  sigaction(SIGINT, &sa, nullptr);
}

// The history file: $XDG_STATE_HOME/baton/explore_history, else ~/.local/state/baton/...
std::string history_path() {
  std::string dir;
  if (const char* x = std::getenv("XDG_STATE_HOME"); x != nullptr && x[0] == '/') dir = x;
  else if (const char* h = std::getenv("HOME"); h != nullptr && h[0] != '\0') dir = std::string(h) + "/.local/state";
  else return "";
  dir += "/baton";
  for (std::size_t p = 1; p != std::string::npos; p = dir.find('/', p + 1)) (void)mkdir(dir.substr(0, p).c_str(), 0700);
  (void)mkdir(dir.c_str(), 0700);
  return dir + "/explore_history";
}

// Candidates of the word being completed, given the words before it.
std::vector<std::string> candidates(const std::vector<std::string>& w, const std::string& text) {
  std::vector<std::string> c;
  const Session& s = *g_session;
  auto add = [&](std::initializer_list<const char*> l) {
    for (const char* x : l) c.emplace_back(x);
  };
  auto states = [&](bool with_at) {
    c.push_back(with_at ? "@now" : "now");
    for (const auto& [name, sn] : s.snaps) c.push_back((with_at ? "@" : "") + name);
  };
  auto props = [&] {
    for (checker::Property p : checker::kAllProperties) c.emplace_back(checker::to_string(p));
  };
  if (!text.empty() && text[0] == '@') {
    states(true);
    return c;
  }
  if (w.empty()) {
    for (const explore::Command& x : explore::commands()) c.emplace_back(x.name);
    c.emplace_back("quit");
    return c;
  }
  const std::string& cmd = w[0];
  const std::size_t n = w.size();
  if (cmd == "help" && n == 1) {
    for (const explore::Command& x : explore::commands()) c.emplace_back(x.name);
  } else if (cmd == "load" && n == 1) {
    for (const guests::BuiltinGuest& g : guests::builtin_guests()) c.push_back(g.name);
  } else if (cmd == "load" && (w.back() == "-p" || w.back() == "--param")) {
    if (const guests::BuiltinGuest* g = guests::find_builtin(w[1]))
      for (const guests::ParamSpec& p : g->params) c.push_back(p.name + "=");
  } else if (cmd == "load" && w.back() == "--pages") {
    add({"4k", "2m", "1g"});
  } else if (cmd == "load" && w.back() == "--backend") {
    add({"sim", "kvm"});
  } else if (cmd == "load") {
    add({"-p", "--mem", "--pages", "--backend"});
  } else if (cmd == "regs") {
    c = explore::register_names();
  } else if (cmd == "vmcs" && n == 1) {
    c = explore::vmcs_field_names();
    c.emplace_back("eptp");
  } else if (cmd == "run" && n == 1) {
    add({"to"});
  } else if (cmd == "run" && n == 2 && w[1] == "to") {
    if (s.kvm) add({"sync", "exit"});
    else add({"sync", "insn", "exit"});
  } else if (cmd == "break" && n == 1) {
    if (s.kvm) add({"sync", "port", "del", "clear"});  // KVM counts no instructions
    else add({"sync", "insn", "port", "del", "clear"});
  } else if (cmd == "break" && n == 2 && w[1] == "port") {
    add({"console", "sync", "exit", "input", "result-tag", "result-lo", "result-hi"});
  } else if (cmd == "ept" && n == 1) {
    add({"walk", "dump", "diff"});
  } else if (cmd == "ept" && w[1] == "dump") {
    add({"--runs", "--tree"});
  } else if (cmd == "ept" && w[1] == "walk" && n == 3) {
    add({"r", "w", "x"});
  } else if (cmd == "inject" && n == 1) {
    if (text.rfind("vmcs:", 0) == 0)
      for (const std::string& f : explore::vmcs_field_names()) c.push_back("vmcs:" + f);
    else if (text.rfind("memslot:", 0) == 0)
      add({"memslot:0:size", "memslot:0:gpa", "memslot:0:hpa"});
    else
      add({"ept:", "vmcs:", "memslot:"});
  } else if (cmd == "migrate" && n == 1 && s.kvm) {
    add({"local-lazy", "precopy"});  // KVM owns its EPT: no adopt, no rebuild
  } else if (cmd == "migrate" && s.kvm && w.back() != "--policy") {
    add({"--policy", "--max-rounds", "--timeout", "--capture", "--force", "--no-verify"});
  } else if (cmd == "migrate" && n == 1) {
    for (sim::Method m : sim::kAllMethods) c.emplace_back(sim::to_string(m));
  } else if (cmd == "migrate" && w.back() == "--policy") {
    add({"reject", "fallback", "accept"});
  } else if (cmd == "migrate" && w.back() == "--dirty") {
    add({"pml", "wp"});
  } else if (cmd == "migrate") {
    add({"--policy", "--dirty", "--max-rounds", "--timeout", "--no-reference", "--no-verify"});
  } else if (cmd == "check" && s.kvm) {
    add({"vcpu", "no-copy", "all"});
  } else if (cmd == "check") {
    props();
    c.emplace_back("all");
  } else if ((cmd == "restore" || cmd == "snapshot" || cmd == "save") && n == 1) {
    for (const auto& [name, sn] : s.snaps) c.push_back(name);
    if (cmd == "save") c.emplace_back("now");
  } else if (cmd == "expect" && n == 1) {
    add({"checksum", "verdict", "outcome", "stop", "diff", "walk"});
  } else if (cmd == "expect" && n == 2) {
    if (w[1] == "checksum") add({"match", "mismatch"});
    if (w[1] == "verdict") add({"proven", "refuted", "unknown"});
    if (w[1] == "outcome") add({"ok", "rejected", "fell-back", "MISMATCH", "sdc"});
    if (w[1] == "stop") add({"sync-point", "exited", "insn-limit", "port", "hang", "error"});
    if (w[1] == "diff") add({"equal", "differ"});
    if (w[1] == "walk") add({"translated", "violation", "misconfig"});
  } else if (cmd == "expect" && n == 3 && w[1] == "verdict") {
    props();
    add({"contents", "translations", "handover"});
  }
  if (c.empty() || (!text.empty() && text[0] == '-')) c.emplace_back("--json");
  return c;
}

// The matches of the current completion, handed out one by one.
std::vector<std::string> g_matches;

// readline's generator over g_matches.
char* generate(const char*, int state) {
  static std::size_t i = 0;
  if (state == 0) i = 0;
  if (i >= g_matches.size()) return nullptr;
  return strdup(g_matches[i++].c_str());
}

// readline's completion entry: commands first, then what each command takes.
char** complete(const char* text, int start, int) {
  rl_attempted_completion_over = 1;  // never fall back to file names
  const std::vector<std::string> before = explore::split_words(std::string(rl_line_buffer, static_cast<std::size_t>(start)));
  const std::string t = text;
  g_matches.clear();
  for (std::string& c : candidates(before, t))
    if (c.rfind(t, 0) == 0) g_matches.push_back(std::move(c));
  if (g_matches.size() == 1 && !g_matches[0].empty() && (g_matches[0].back() == ':' || g_matches[0].back() == '='))
    rl_completion_append_character = '\0';
  return rl_completion_matches(text, generate);
}

// Runs one line and prints its error; returns the error, if any.
std::optional<std::string> run_line(Session& s, const std::string& line) {
  explore::g_interrupted = 0;
  std::optional<std::string> error;
  try {
    auto r = explore::execute(s, line);
    if (!r) error = r.error().message;
  } catch (const std::exception& e) {  // one command's failure never ends the session
    error = std::string("internal error: ") + e.what();
  }
  explore::g_interrupted = 0;
  std::fflush(stdout);
  return error;
}

// Whether a line leaves the REPL.
bool is_quit(const std::string& line) {
  const auto w = explore::split_words(line);
  return w.size() == 1 && (w[0] == "quit" || w[0] == "exit" || w[0] == "q");
}

// readline's line callback.
void on_line(char* l) {
  if (l == nullptr) g_eof = true;
  else g_line = l;
  std::free(l);
  g_got = true;
  rl_callback_handler_remove();
}

// The interactive loop on a terminal.
void repl(Session& s) {
  g_session = &s;
  rl_readline_name = "baton-explore";
  rl_attempted_completion_function = complete;
  rl_completer_word_break_characters = const_cast<char*>(" \t");
  rl_catch_signals = 0;
  const std::string hist = history_path();
  if (!hist.empty()) {
    (void)read_history(hist.c_str());
    if (int fd = open(hist.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600); fd >= 0) close(fd);
  }
  install_sigint();
  if (s.kvm)
    std::printf("baton explore: %s on kvm (%s, %s pages). help lists the commands; Tab completes; quit leaves.\n",
                s.opts.guest.c_str(), explore::kvm_banner(s).c_str(), s.opts.pages.c_str());
  else
    std::printf("baton explore: %s on sim (mem %s, %s pages). help lists the commands; Tab completes; quit leaves.\n",
                s.opts.guest.c_str(), s.opts.mem.c_str(), s.opts.pages.c_str());
  const std::string prompt = "explore> ";
  for (;;) {
    g_got = g_eof = false;
    explore::g_interrupted = 0;
    rl_callback_handler_install(prompt.c_str(), on_line);
    while (!g_got) {
      fd_set in;
      FD_ZERO(&in);
      FD_SET(STDIN_FILENO, &in);
      const int r = select(STDIN_FILENO + 1, &in, nullptr, nullptr, nullptr);
      if (r < 0 && errno == EINTR) {
        if (explore::g_interrupted != 0) {  // Ctrl-C at the prompt drops the line, as in a shell
          explore::g_interrupted = 0;
          rl_free_line_state();
          rl_callback_sigcleanup();
          rl_replace_line("", 0);
          rl_crlf();
          rl_on_new_line();
          rl_redisplay();
        }
        continue;
      }
      if (r > 0) rl_callback_read_char();
    }
    if (g_eof) {
      std::printf("\n");
      break;
    }
    std::string line = g_line;
    if (explore::split_words(line).empty()) continue;
    line.erase(line.find_last_not_of(" \t") + 1);  // completion leaves a space behind
    const HIST_ENTRY* prev = history_length > 0 ? history_get(history_base + history_length - 1) : nullptr;
    if (prev == nullptr || line != prev->line) {
      add_history(line.c_str());
      if (!hist.empty()) (void)append_history(1, hist.c_str());
    }
    if (is_quit(line)) break;
    if (auto e = run_line(s, line)) std::fprintf(stderr, "baton: %s\n", e->c_str());
  }
  if (!hist.empty()) (void)history_truncate_file(hist.c_str(), 1000);
}

// --script FILE (or commands on a non-terminal stdin): stop at the first error (exit 2) or
// failed expectation (exit 1), naming the line.
// Ctrl-C keeps its default there: it ends the script.
void script(Session& s, std::istream& in, const std::string& name) {
  std::string line;
  for (unsigned no = 1; std::getline(in, line); ++no) {
    if (explore::split_words(line).empty()) continue;
    std::printf("explore> %s\n", line.c_str());
    if (is_quit(line)) break;
    if (auto e = run_line(s, line)) {
      std::fflush(stdout);
      fail(name + ":" + std::to_string(no) + ": " + *e);
      if (s.expect_failed) exit_code() = kExitRefuted;
      return;
    }
  }
}

void run_explore(ExploreOptions& o) {
  if (o.backend != "sim" && o.backend != "kvm") return fail("--backend '" + o.backend + "' is not one of sim, kvm");
  if (o.budget == 0) return fail("--budget must be positive");
  if (!(o.timeout > 0)) return fail("--timeout must be positive");
  Session s;
  s.budget = o.budget;
  s.kvm_timeout_s = o.timeout;
  if (auto r = o.backend == "kvm" ? explore::kvm_load(s, o.sim) : s.load(o.sim); !r) return fail(r.error().message);
  if (!o.script.empty()) {
    std::ifstream f(o.script);
    if (!f) return fail("cannot read " + o.script);
    return script(s, f, o.script);
  }
  if (isatty(STDIN_FILENO) == 0) return script(s, std::cin, "<stdin>");
  repl(s);
}

}  // namespace

void register_explore(CLI::App& app) {
  auto o = std::make_shared<ExploreOptions>();
  o->sim.guest = "memtouch";
  CLI::App* c = app.add_subcommand(
      "explore", "Explore fault scenarios interactively: a debugger-style REPL over the simulator (or KVM), the checker and migration");
  c->add_option("guest", o->sim.guest, "Built-in guest (see `baton guests list`)")->capture_default_str();
  c->add_option("-p,--param", o->sim.params, "Guest parameter key=value (repeatable)");
  c->add_option("--mem", o->sim.mem, "Guest memory size")->capture_default_str();
  c->add_option("--pages", o->sim.pages, "Largest EPT (and guest) leaf: 4k, 2m, 1g")->capture_default_str();
  c->add_option("--backend", o->backend, "sim, or kvm: the same guest on /dev/kvm (no EPT views or faults there)")
      ->capture_default_str();
  c->add_option("--script", o->script, "Run the commands of this file (.bsc) and exit: 2 on an error, 1 on a failed expect");
  c->add_option("--budget", o->budget, "Instructions before a run counts as a hang")->capture_default_str();
  c->add_option("--timeout", o->timeout, "kvm: seconds before a run counts as a hang")->capture_default_str();
  c->callback([o] { run_explore(*o); });
}

}  // namespace baton::cli
