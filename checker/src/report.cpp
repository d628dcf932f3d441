// Rendering of checker reports: text table, JSON, JUnit XML, and SMT-LIB2 files.
#include "baton/checker/report.hpp"

#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "baton/model/file_io.hpp"

namespace baton::checker {

namespace {

using nlohmann::json;

// Formats a number as 0x-hex.
std::string hex(std::uint64_t v) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%llx", static_cast<unsigned long long>(v));
  return buf;
}

// A counterexample as JSON.
json cex_json(const Counterexample& c) {
  json j;
  if (c.gpa) j["gpa"] = hex(c.gpa->value);
  if (c.gpa2) j["gpa2"] = hex(c.gpa2->value);
  if (!c.field.empty()) {
    j["field"] = c.field;
    j["before"] = c.before;
    j["after"] = c.after.empty() ? nlohmann::json(nullptr) : nlohmann::json(c.after);
  }
  j["explanation"] = c.explanation;
  j["confirmed_concretely"] = c.confirmed_concretely;
  json walks = json::array();
  for (const WalkView& w : c.walks) {
    json steps = json::array();
    for (const WalkStepView& s : w.steps)
      steps.push_back({{"level", s.level}, {"entry_addr", hex(s.entry_addr)}, {"raw", hex(s.raw)}, {"entry", s.text}});
    walks.push_back({{"tree", w.tree}, {"gpa", hex(w.gpa)}, {"outcome", w.outcome}, {"steps", steps}});
  }
  j["walks"] = walks;
  return j;
}

// The stats of a property as JSON.
json stats_json(const DecompositionStats& s) {
  return json{{"pages", s.pages},           {"identical", s.identical},     {"trivial", s.trivial},
              {"linear", s.linear},         {"linear_cpp", s.linear_cpp},   {"irregular", s.faithful},
              {"z3_queries", s.z3_queries}, {"decompose_s", s.decompose_s}, {"z3_s", s.z3_s}};
}

// Pads a string to a width.
std::string pad(std::string s, std::size_t w) {
  if (s.size() < w) s.append(w - s.size(), ' ');
  return s;
}

}  // namespace

std::string to_text(const Counterexample& c) {
  std::string out = c.explanation + "\n";
  // A single-snapshot counterexample (an invalid EPTP) has one value only.
  if (!c.field.empty() && c.walks.empty())
    out += "  " + c.field + ": " + (c.after.empty() ? c.before : "before " + c.before + ", after " + c.after) + "\n";
  for (const WalkView& w : c.walks) out += " " + w.tree + " at gpa " + hex(w.gpa) + ":\n" + w.text;
  if (!c.confirmed_concretely) out += "  (warning: the concrete walks do not show this violation)\n";
  return out;
}

std::string to_json(const Counterexample& c) { return cex_json(c).dump(); }

std::string to_text(const Report& r) {
  std::string out = pad("property", 17) + pad("verdict", 9) + pad("time", 10) + "detail\n";
  char t[32];
  for (const PropertyResult& p : r.results) {
    std::snprintf(t, sizeof t, "%.3fs", p.seconds);
    out += pad(to_string(p.property), 17) + pad(to_string(p.verdict), 9) + pad(t, 10) + p.summary + "\n";
  }
  for (const PropertyResult& p : r.results) {
    if (!p.counterexample) continue;
    out += "\n" + std::string(to_string(p.property)) + " refuted: " + to_text(*p.counterexample);
  }
  std::snprintf(t, sizeof t, "%.3fs", r.seconds);
  out += std::string("\noverall: ") + to_string(r.overall()) + " in " + t + "\n";
  return out;
}

std::string to_json(const Report& r) {
  json props = json::array();
  for (const PropertyResult& p : r.results) {
    json j{{"property", to_string(p.property)},
           {"verdict", to_string(p.verdict)},
           {"seconds", p.seconds},
           {"summary", p.summary},
           {"stats", stats_json(p.stats)}};
    if (p.counterexample) j["counterexample"] = cex_json(*p.counterexample);
    if (!p.unknown_reason.empty()) j["unknown_reason"] = p.unknown_reason;
    props.push_back(j);
  }
  return json{{"verdict", to_string(r.overall())}, {"seconds", r.seconds}, {"properties", props}}.dump(2);
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char ch : s) {
    switch (ch) {
      case '&': o += "&amp;"; break;
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '"': o += "&quot;"; break;
      case '\'': o += "&apos;"; break;
      default: o += ch;
    }
  }
  return o;
}

std::string to_junit(const Report& r, const std::string& suite) {
  unsigned failures = 0, errors = 0;
  for (const PropertyResult& p : r.results) {
    failures += p.verdict == Verdict::kRefuted ? 1 : 0;
    errors += p.verdict == Verdict::kUnknown ? 1 : 0;
  }
  char head[256];
  std::snprintf(head, sizeof head,
                "<testsuite name=\"%s\" tests=\"%zu\" failures=\"%u\" errors=\"%u\" time=\"%.3f\">\n",
                xml_escape(suite).c_str(), r.results.size(), failures, errors, r.seconds);
  std::string out = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites>\n";
  out += head;
  for (const PropertyResult& p : r.results) {
    char tc[160];
    std::snprintf(tc, sizeof tc, "  <testcase classname=\"baton.check\" name=\"%s\" time=\"%.3f\"",
                  to_string(p.property), p.seconds);
    out += tc;
    if (p.verdict == Verdict::kProven) {
      out += "/>\n";
      continue;
    }
    out += ">\n";
    std::string body = p.summary;
    if (p.counterexample)
      for (const WalkView& w : p.counterexample->walks) body += "\n" + w.tree + ":\n" + w.text;
    const char* tag = p.verdict == Verdict::kRefuted ? "failure" : "error";
    out += std::string("    <") + tag + " message=\"" + xml_escape(p.summary) + "\" type=\"" + to_string(p.verdict) +
           "\">" + xml_escape(body) + "</" + tag + ">\n  </testcase>\n";
  }
  out += "</testsuite>\n</testsuites>\n";
  return out;
}

Result<unsigned> write_smt2(const Report& r, const std::string& dir, bool overwrite) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error("cannot create '" + dir + "': " + ec.message());
  unsigned n = 0;
  for (const PropertyResult& p : r.results) {
    if (p.verdict == Verdict::kProven || p.smt2.empty()) continue;
    std::string name = to_string(p.property);
    const std::string path = (std::filesystem::path(dir) / (name + ".smt2")).string();
    const std::string text = "; baton check: " + name + " " + to_string(p.verdict) + "\n; " + p.summary + "\n" + p.smt2;
    BATON_TRY_VOID(model::write_text(path, text, overwrite));
    ++n;
  }
  return n;
}

}  // namespace baton::checker
