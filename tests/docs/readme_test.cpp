// The README and the user guide as tests: every `$ baton ...` command runs, in order, in one
// scratch directory per document, and prints what the document shows; every command synopsis
// in the README's table names options that the command's --help lists.
//
// Conventions the README follows (and this test enforces):
// - A tour block is a ``` block whose lines starting with "$ " are commands; the lines after a
//   command, up to the next command or the end of the block, are its stdout.
// - A line "..." in the shown output stands for any number of lines left out (trimmed output is
//   marked that way, never silently).
// - A trailing "# exit code N: ..." comment states the command's exit code (0 otherwise).
// - A trailing "# needs /dev/kvm" comment: the command runs only where KVM is usable. Its exit
//   code may depend on the host flavour: "exit code N on FLAVOUR, M elsewhere" (hw::host_flavour()).
// - Times that vary from run to run (a number directly followed by "s" or "ms", or followed by
//   the word "s", and a speed in MIPS) match any such value; every other word must be equal, so
//   real drift fails.
// - Paths below tests/ are the repository's own files (the scratch directory links tests/).
#include <sys/wait.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "baton/hw/kvm.hpp"

namespace {

namespace fs = std::filesystem;

// Reads a file.
std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Splits text into lines (without the newlines).
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  std::string l;
  while (std::getline(in, l)) out.push_back(l);
  while (!out.empty() && out.back().find_first_not_of(" \t") == std::string::npos) out.pop_back();
  return out;
}

// Splits a line into whitespace-separated words.
std::vector<std::string> words_of(const std::string& line) {
  std::vector<std::string> out;
  std::istringstream in(line);
  std::string w;
  while (in >> w) out.push_back(w);
  return out;
}

// Returns whether a word is a time that varies between runs ("0.152s", "12ms").
bool is_time_word(const std::string& w) {
  static const std::regex re(R"(^[0-9]+(\.[0-9]+)?(s|ms)\)?,?$)");
  return std::regex_match(w, re);
}

// Returns whether a word is a bare number (followed by "s", a time).
bool is_number(const std::string& w) {
  static const std::regex re(R"(^[0-9]+(\.[0-9]+)?$)");
  return std::regex_match(w, re);
}

// Returns whether an output line matches the README line, word by word, times excepted.
bool line_matches(const std::string& shown, const std::string& actual) {
  const auto a = words_of(shown), b = words_of(actual);
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i] == b[i]) continue;
    if (is_time_word(a[i]) && is_time_word(b[i])) continue;
    // A wall time or the speed derived from it: "0.90 s", "0.112 s,", "318.6 MIPS".
    const bool unit_next = i + 1 < a.size() && a[i + 1] == b[i + 1] &&
                           (a[i + 1] == "s" || a[i + 1] == "s," || a[i + 1] == "ms" || a[i + 1] == "MIPS");
    if (unit_next && is_number(a[i]) && is_number(b[i])) continue;
    return false;
  }
  return true;
}

// Matches the README's lines (with "..." gaps) against the actual lines; on failure `where`
// names the first README line that could not be matched.
bool block_matches(const std::vector<std::string>& shown, std::size_t i, const std::vector<std::string>& actual,
                   std::size_t j, std::size_t& deepest) {
  deepest = std::max(deepest, i);
  if (i == shown.size()) return j == actual.size();
  const std::string trimmed = shown[i].substr(std::min(shown[i].find_first_not_of(" \t"), shown[i].size()));
  if (trimmed == "...") {
    for (std::size_t k = j; k <= actual.size(); ++k)
      if (block_matches(shown, i + 1, actual, k, deepest)) return true;
    return false;
  }
  return j < actual.size() && line_matches(shown[i], actual[j]) && block_matches(shown, i + 1, actual, j + 1, deepest);
}

// One command of the tour with the output the README shows.
struct TourCommand {
  std::size_t line = 0;  // README line number of the command
  std::string command;   // without "$ " and the comment
  int exit_code = 0;
  bool needs_kvm = false;
  std::string flavour;        // "exit code N on FLAVOUR, M elsewhere": FLAVOUR,
  int flavour_exit_code = 0;  // and N
  std::vector<std::string> shown;
};

// Collects the tour commands of a markdown text.
std::vector<TourCommand> tour_of(const std::string& md) {
  std::vector<TourCommand> out;
  const std::vector<std::string> ls = lines_of(md);
  bool in_block = false;
  std::size_t indent = 0;  // a block inside a list item is indented as its fence
  TourCommand* cur = nullptr;
  for (std::size_t n = 0; n < ls.size(); ++n) {
    const std::size_t lead = std::min(ls[n].find_first_not_of(' '), ls[n].size());
    if (ls[n].compare(lead, 3, "```") == 0) {
      in_block = !in_block;
      indent = lead;
      cur = nullptr;
      continue;
    }
    if (!in_block) continue;
    const std::string l = ls[n].substr(std::min(indent, lead));
    if (l.rfind("$ baton ", 0) == 0) {
      TourCommand c;
      c.line = n + 1;
      std::string cmd = l.substr(2);
      const auto hash = cmd.find("  #");
      if (hash != std::string::npos) {
        const std::string comment = cmd.substr(hash);
        std::smatch m;
        if (std::regex_search(comment, m, std::regex(R"(exit code ([0-9]+) on ([a-z-]+), ([0-9]+) elsewhere)"))) {
          c.exit_code = std::stoi(m[3]);
          c.flavour = m[2];
          c.flavour_exit_code = std::stoi(m[1]);
        } else if (std::regex_search(comment, m, std::regex(R"(exit code ([0-9]+))"))) {
          c.exit_code = std::stoi(m[1]);
        }
        c.needs_kvm = comment.find("needs /dev/kvm") != std::string::npos;
        cmd = cmd.substr(0, hash);
      }
      c.command = cmd.substr(0, cmd.find_last_not_of(' ') + 1);
      out.push_back(c);
      cur = &out.back();
      continue;
    }
    if (cur != nullptr) cur->shown.push_back(l);
  }
  for (TourCommand& c : out)
    while (!c.shown.empty() && c.shown.back().find_first_not_of(" \t") == std::string::npos) c.shown.pop_back();
  return out;
}

// Runs a shell command in `dir`; returns the exit code and fills stdout and stderr.
int run_in(const fs::path& dir, const std::string& cmd, std::string& out, std::string& err) {
  const std::string o = (dir / ".doc-stdout").string(), e = (dir / ".doc-stderr").string();
  const int st = std::system(("cd '" + dir.string() + "' && " + cmd + " >'" + o + "' 2>'" + e + "'").c_str());
  out = slurp(o);
  err = slurp(e);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// Returns whether a --help text lists an option by its exact name ("-p" is not "--pages").
bool help_lists(const std::string& help, const std::string& opt) {
  for (std::size_t at = help.find(opt); at != std::string::npos; at = help.find(opt, at + 1)) {
    const char before = at == 0 ? ' ' : help[at - 1];
    const char after = at + opt.size() < help.size() ? help[at + opt.size()] : ' ';
    if ((before == ' ' || before == ',') && (after == ' ' || after == ',' || after == '=' || after == '\n'))
      return true;
  }
  return false;
}

// Returns whether /dev/kvm can be opened for reading and writing.
bool kvm_usable() { return std::system("test -r /dev/kvm -a -w /dev/kvm") == 0; }

// A scratch directory with tests/ linked from the source tree, removed at the end.
struct Scratch {
  fs::path path;
  Scratch() {
    std::string tmpl = (fs::temp_directory_path() / "baton-doc-XXXXXX").string();
    path = mkdtemp(tmpl.data());
    fs::create_directory_symlink(fs::path(BATON_SOURCE_DIR) / "tests", path / "tests");
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("doc test: the line matcher tolerates times only, and '...' gaps", "[docs]") {
  CHECK(
      line_matches("equivalence      refuted  0.152s    GPA 0x12345000", "equivalence refuted 1.020s GPA 0x12345000"));
  CHECK_FALSE(
      line_matches("equivalence      refuted  0.152s    GPA 0x12345000", "equivalence proven 0.152s GPA 0x12345000"));
  CHECK_FALSE(line_matches("64M    local-adopt            84.6", "64M    local-adopt            84.7"));
  CHECK(line_matches("wall         0.90 s", "wall 12.31 s"));
  CHECK(line_matches("wall         0.112 s, 318.6 MIPS", "wall 0.2 s, 200.1 MIPS"));
  CHECK_FALSE(line_matches("instructions 35678755", "instructions 35678756"));
  CHECK_FALSE(line_matches("mapped 0.90 GiB", "mapped 0.91 GiB"));
  std::size_t deepest = 0;
  CHECK(block_matches({"a", "...", "d"}, 0, {"a", "b", "c", "d"}, 0, deepest));
  CHECK(block_matches({"a", "...", "d"}, 0, {"a", "d"}, 0, deepest));
  CHECK_FALSE(block_matches({"a", "...", "d"}, 0, {"a", "b", "c"}, 0, deepest));
  CHECK_FALSE(block_matches({"a", "b"}, 0, {"a", "b", "c"}, 0, deepest));
}

TEST_CASE("doc test: an exit code may depend on the host flavour", "[docs]") {
  const auto t = tour_of("```\n$ baton x  # needs /dev/kvm; exit code 1 on pvm, 0 elsewhere\nout\n"
                         "$ baton y  # exit code 2: bad input\n```\n");
  REQUIRE(t.size() == 2);
  CHECK(t[0].needs_kvm);
  CHECK(t[0].flavour == "pvm");
  CHECK(t[0].flavour_exit_code == 1);
  CHECK(t[0].exit_code == 0);
  CHECK(t[0].shown == std::vector<std::string>{"out"});
  CHECK_FALSE(t[1].needs_kvm);
  CHECK(t[1].flavour.empty());
  CHECK(t[1].exit_code == 2);
}

// Runs every tour command of a markdown file in order, in one scratch directory, and compares.
void check_tour(const std::string& doc, std::size_t min_commands) {
  const auto tour = tour_of(slurp(std::string(BATON_SOURCE_DIR) + "/" + doc));
  REQUIRE(tour.size() >= min_commands);
  Scratch dir;
  const bool kvm = kvm_usable();
  for (const TourCommand& c : tour) {
    CAPTURE(doc, c.line, c.command);
    if (c.needs_kvm && !kvm) {
      WARN(doc << " line " << c.line << " not run: /dev/kvm is not usable here");
      continue;
    }
    std::string out, err;
    const int code = run_in(dir.path, std::string(BATON_EXE) + c.command.substr(std::string("baton").size()), out, err);
    INFO("stderr: " << err);
    CHECK(code == (!c.flavour.empty() && baton::hw::host_flavour() == c.flavour ? c.flavour_exit_code : c.exit_code));
    const std::vector<std::string> actual = lines_of(out);
    std::size_t deepest = 0;
    const bool ok = block_matches(c.shown, 0, actual, 0, deepest);
    if (!ok) {
      std::string shown_line = deepest < c.shown.size() ? c.shown[deepest] : "(end of the block)";
      INFO("first shown line not matched: " << shown_line << "\nactual output:\n" << out);
      CHECK(ok);
    }
  }
}

TEST_CASE("README: every tour command runs and prints what the README shows", "[docs]") { check_tour("README.md", 10); }

TEST_CASE("user guide: every command runs and prints what the guide shows", "[docs]") {
  check_tour("docs/user-guide.md", 7);
}

TEST_CASE("README: every option in the command table is one the command accepts", "[docs]") {
  const std::string md = slurp(std::string(BATON_SOURCE_DIR) + "/README.md");
  std::regex cell(R"(`(baton [^`]+)`)");
  std::size_t checked = 0;
  for (const std::string& l : lines_of(md)) {
    if (l.rfind("| `baton ", 0) != 0) continue;
    const std::string first_cell = l.substr(0, l.find(" |", 2));
    for (auto it = std::sregex_iterator(first_cell.begin(), first_cell.end(), cell); it != std::sregex_iterator();
         ++it) {
      const std::vector<std::string> w = words_of((*it)[1].str());
      // The command path: the words before the first placeholder or option.
      std::string path = "";
      std::size_t k = 1;
      for (; k < w.size() && std::regex_match(w[k], std::regex(R"([a-z][a-z0-9-]*)")); ++k) path += " " + w[k];
      std::string help, err;
      Scratch dir;
      CAPTURE(l, path);
      REQUIRE(run_in(dir.path, std::string(BATON_EXE) + path + " --help", help, err) == 0);
      std::smatch m;
      for (; k < w.size(); ++k) {
        const std::string tok = w[k];
        static const std::regex opt_re(R"((^|[\[|])(--?[a-z][a-z0-9-]*))");
        for (auto pos = tok.cbegin(); std::regex_search(pos, tok.cend(), m, opt_re); pos = m.suffix().first) {
          const std::string opt = m[2].str();
          CAPTURE(opt);
          CHECK(help_lists(help, opt));
          ++checked;
        }
      }
    }
  }
  CHECK(checked > 20);
}
