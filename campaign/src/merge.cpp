// The merge of campaign results: one summary (JSON), the same bytes whatever the sharding and
// the order the results arrived in; a text table; SVG plots (gnuplot); JUnit.
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>
#include <nlohmann/json.hpp>

#include "baton/campaign/campaign.hpp"
#include "baton/model/file_io.hpp"
#include "classify.hpp"

namespace baton::campaign {

using nlohmann::json;

namespace {

// Every outcome, in the order tables and plots show them.
constexpr const char* kOutcomes[] = {"masked", "detected-checker", "detected-hypervisor", "sdc",
                                     "crash",  "hang",             "isolation-breach",    "error"};

// Outcome counts with every outcome present (zeros included), so that rows line up.
json zero_counts() {
  json j = json::object();
  for (const char* o : kOutcomes) j[o] = 0;
  return j;
}

void count(json& row, const std::string& outcome) {
  if (!row.contains(outcome)) row[outcome] = 0;
  row[outcome] = row[outcome].get<std::uint64_t>() + 1;
}

// A ratio as fixed text ("12 of 40 (30.0%)").
std::string ratio(std::uint64_t a, std::uint64_t b) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%llu of %llu (%.1f%%)", static_cast<unsigned long long>(a),
                static_cast<unsigned long long>(b), b == 0 ? 0.0 : 100.0 * static_cast<double>(a) / static_cast<double>(b));
  return buf;
}

// What the guest would have suffered without the checker: the accept policy's outcome where
// the checker stopped the handover, else the outcome itself.
const PolicyOutcome& unchecked(const InjectionResult& r) {
  auto it = r.policy.find("accept");
  return it != r.policy.end() ? it->second : r.policy.at("reject");
}

std::string xml_escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    switch (c) {
      case '<': o += "&lt;"; break;
      case '>': o += "&gt;"; break;
      case '&': o += "&amp;"; break;
      case '"': o += "&quot;"; break;
      default: o += (static_cast<unsigned char>(c) < 0x20 && c != '\n') ? ' ' : c;
    }
  }
  return o;
}

// Writes the JUnit file: one test case per fault; a silent corruption (sdc, isolation breach)
// under the reject policy is a failure.
Result<void> write_junit(const Plan& plan, const std::map<std::size_t, InjectionResult>& res, const std::string& path) {
  std::map<std::string, std::string> suites;
  std::map<std::string, std::pair<std::uint64_t, std::uint64_t>> counts;  // tests, failures
  for (const auto& [i, r] : res) {
    const PlannedFault& f = plan.faults[i];
    const PolicyOutcome& o = r.policy.at("reject");
    const std::string suite = to_string(f.target);
    std::string& s = suites[suite];
    s += "  <testcase classname=\"campaign." + suite + "\" name=\"" + xml_escape(f.id) + "\">";
    ++counts[suite].first;
    if (o.outcome == "sdc" || o.outcome == "isolation-breach") {
      ++counts[suite].second;
      s += "<failure message=\"" + xml_escape(o.outcome + ": " + o.evidence) + "\"/>";
    }
    s += "</testcase>\n";
  }
  std::string x = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"baton campaign " + plan.hash + "\">\n";
  for (const auto& [name, body] : suites)
    x += "<testsuite name=\"" + name + "\" tests=\"" + std::to_string(counts[name].first) + "\" failures=\"" +
         std::to_string(counts[name].second) + "\">\n" + body + "</testsuite>\n";
  x += "</testsuites>\n";
  return model::write_text(path, x, true);
}

// Runs gnuplot on a script; the error names what failed.
Result<void> gnuplot(const std::string& script) {
  const pid_t pid = ::fork();
  if (pid < 0) return make_error("--svg: cannot start gnuplot (fork failed)");
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", script.c_str(), static_cast<char*>(nullptr));
    ::_exit(127);
  }
  int st = 0;
  while (::waitpid(pid, &st, 0) < 0) {
  }
  if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
    return make_error(WIFEXITED(st) && WEXITSTATUS(st) == 127
                          ? "--svg: gnuplot is not installed (Debian package gnuplot-nox; `make deps` installs it)"
                          : "--svg: gnuplot failed on " + script);
  return ok_result();
}

// Writes a data file of outcome shares (percent) per row, and a gnuplot script drawing it as
// stacked bars into `svg`.
Result<void> plot(const std::string& dir, const std::string& name, const std::string& title, const std::string& xlabel,
                  const std::vector<std::pair<std::string, json>>& rows) {
  std::string dat = "label";
  for (const char* o : kOutcomes) dat += std::string(" ") + o;
  dat += "\n";
  for (const auto& [label, c] : rows) {
    std::uint64_t total = 0;
    for (const char* o : kOutcomes) total += c.value(o, std::uint64_t{0});
    dat += label;
    for (const char* o : kOutcomes) {
      char b[32];
      std::snprintf(b, sizeof b, " %.3f", total == 0 ? 0.0 : 100.0 * static_cast<double>(c.value(o, std::uint64_t{0})) / static_cast<double>(total));
      dat += b;
    }
    dat += "\n";
  }
  BATON_TRY_VOID(model::write_text(dir + "/" + name + ".dat", dat, true));
  std::string gp = "set terminal svg size 960,480 dynamic enhanced font 'sans,11' background '#ffffff'\n"
                   "set output '" + dir + "/" + name + ".svg'\n"
                   "set title '" + title + "'\nset xlabel '" + xlabel + "'\nset ylabel 'share of injections (%)'\n"
                   "set yrange [0:100]\nset style data histograms\nset style histogram rowstacked\n"
                   "set style fill solid 0.9 border -1\nset boxwidth 0.8\nset key outside right top\n"
                   "set xtics rotate by -45 nomirror\n";
  if (rows.size() > 20) gp += "set xtics 4\n";
  gp += "plot '" + dir + "/" + name + ".dat' using 2:xtic(1) title columnheader(2)";
  for (std::size_t k = 3; k < 2 + std::size(kOutcomes); ++k)
    gp += ", '' using " + std::to_string(k) + " title columnheader(" + std::to_string(k) + ")";
  gp += "\n";
  BATON_TRY_VOID(model::write_text(dir + "/" + name + ".gp", gp, true));
  return gnuplot(dir + "/" + name + ".gp");
}

}  // namespace

Result<std::string> merge_results(const Plan& plan, const std::vector<std::string>& files, const MergeOptions& mo,
                                  std::string& table, std::size_t& missing) {
  std::map<std::size_t, InjectionResult> res;
  for (const std::string& path : files) {
    auto text = model::read_text_file(path, std::uint64_t{16} << 30, "results");
    if (!text) return text.error();
    const std::size_t nl = text->find('\n');
    json h;
    try {
      h = json::parse(text->substr(0, nl));
    } catch (...) {
      return make_error(path + ": not a campaign results file (no header line)");
    }
    if (!h.contains("campaign-results") || !h.contains("plan")) return make_error(path + ": not a campaign results file");
    if (h["plan"] != plan.hash)
      return make_error(path + ": results of plan " + h["plan"].get<std::string>() + ", not of this plan (" + plan.hash + ")");
    std::size_t pos = nl == std::string::npos ? text->size() : nl + 1, line_no = 1;
    while (pos < text->size()) {
      const std::size_t e = text->find('\n', pos);
      ++line_no;
      if (e == std::string::npos) break;  // a torn last line: that fault runs again on resume
      auto r = parse_result_line(text->substr(pos, e - pos));
      if (!r) return make_error(path + ":" + std::to_string(line_no) + ": " + r.error().message);
      if (r->index >= plan.faults.size() || plan.faults[r->index].id != r->id)
        return make_error(path + ":" + std::to_string(line_no) + ": fault " + r->id + " is not fault #" +
                          std::to_string(r->index) + " of the plan");
      r->wall_ms = 0;
      auto [it, fresh] = res.emplace(r->index, *r);
      if (!fresh && result_line(it->second) != result_line(*r))
        return make_error(path + ":" + std::to_string(line_no) + ": a second, different result for " + r->id);
      pos = e + 1;
    }
  }
  missing = plan.faults.size() - res.size();
  json s;
  s["format"] = "baton-campaign-summary";
  s["plan"] = plan.hash;
  s["guest"] = plan.guest.guest;
  s["params"] = plan.guest.params;
  s["mem"] = plan.guest.mem;
  s["mode"] = plan.mode;
  s["faults"] = plan.faults.size();
  s["results"] = res.size();
  s["missing"] = missing;
  json outcomes = zero_counts(), by_method = json::object(), by_target = json::object(), by_field = json::object(),
       by_bit = json::object(), props = json::object(), policies = json::object();
  std::map<std::string, std::map<std::string, std::uint64_t>> harmful, detected, alarms;
  std::map<std::pair<std::string, std::string>, std::map<unsigned, json>> cells;
  for (const auto& [i, r] : res) {
    const PlannedFault& f = plan.faults[i];
    const PolicyOutcome& o = r.policy.at("reject");
    const std::string m = sim::to_string(f.method), t = to_string(f.target);
    count(outcomes, o.outcome);
    if (!by_method.contains(m)) by_method[m] = zero_counts();
    count(by_method[m], o.outcome);
    if (!by_target.contains(t)) by_target[t] = zero_counts();
    count(by_target[t], o.outcome);
    const std::string tf = t + " " + f.field;
    if (!by_field.contains(tf)) by_field[tf] = zero_counts();
    count(by_field[tf], o.outcome);
    const std::string tb = t + " bit " + (f.bit < 10 ? "0" : "") + std::to_string(f.bit);
    if (!by_bit.contains(tb)) by_bit[tb] = zero_counts();
    count(by_bit[tb], o.outcome);
    json& cell = cells[{t, f.field}][f.bit];
    if (cell.is_null()) cell = json::object();
    count(cell, o.outcome);
    for (const std::string& p : o.properties) count(props, p);
    for (const auto& [pol, po] : r.policy) {
      if (!policies.contains(pol)) policies[pol] = zero_counts();
      count(policies[pol], po.outcome);
    }
    // Coverage: of the faults that harm the guest without the checker, how many were stopped.
    const std::string harm = unchecked(r).outcome;
    const bool stopped = o.outcome == "detected-checker" || o.outcome == "detected-hypervisor";
    for (const std::string& k : {std::string("all"), "method " + m, "target " + t}) {
      if (harm != "masked" && harm != "detected-hypervisor" && harm != "error") {
        ++harmful[k]["n"];
        if (stopped) ++detected[k]["n"];
      }
      if (o.outcome == "detected-checker" && harm == "masked") ++alarms[k]["n"];
    }
  }
  s["outcomes"] = outcomes;
  s["by_method"] = by_method;
  s["by_target"] = by_target;
  s["by_field"] = by_field;
  s["by_bit"] = by_bit;
  json tab = json::array();
  for (const auto& [tf, bits] : cells)
    for (const auto& [bit, c] : bits) tab.push_back(json{{"target", tf.first}, {"field", tf.second}, {"bit", bit}, {"outcomes", c}});
  s["table"] = tab;
  s["properties"] = props;
  s["policies"] = policies;
  json cov = json::object();
  for (const auto& [k, v] : harmful) {
    const std::uint64_t h = v.at("n"), d = detected[k]["n"];
    cov[k] = {{"harmful_unchecked", h}, {"stopped", d}, {"coverage", ratio(d, h)}, {"false_alarms", alarms[k]["n"]}};
  }
  s["coverage"] = cov;

  // The text table: outcome counts by target and by method, then coverage.
  char line[512];
  table.clear();
  std::snprintf(line, sizeof line, "%-22s %7s", "", "faults");
  table += line;
  // Short column names: masked, detected by the checker / the hypervisor, sdc, crash, hang,
  // isolation breach, error.
  for (const char* o : {"masked", "checker", "hyperv", "sdc", "crash", "hang", "breach", "error"}) {
    std::snprintf(line, sizeof line, " %9.9s", o);
    table += line;
  }
  table += "\n";
  auto row = [&](const std::string& label, const json& c) {
    std::uint64_t total = 0;
    for (const char* o : kOutcomes) total += c.value(o, std::uint64_t{0});
    std::snprintf(line, sizeof line, "%-22s %7llu", label.c_str(), static_cast<unsigned long long>(total));
    table += line;
    for (const char* o : kOutcomes) {
      std::snprintf(line, sizeof line, " %9llu", static_cast<unsigned long long>(c.value(o, std::uint64_t{0})));
      table += line;
    }
    table += "\n";
  };
  for (const auto& [k, c] : by_target.items()) row("target " + k, c);
  for (const auto& [k, c] : by_method.items()) row("method " + k, c);
  for (const auto& [k, c] : policies.items())
    if (k != "reject") row("policy " + k + " (*)", c);
  row("all (policy reject)", outcomes);
  table += "(*) only the faults whose handover the checks did not prove (checker: detected by the checker, hyperv: by "
           "the hypervisor, breach: isolation breach)\n";
  for (const auto& [k, c] : cov.items())
    table += "coverage " + k + ": " + c["coverage"].get<std::string>() + " of the faults that harm the guest without "
             "the checker are stopped; " + std::to_string(c["false_alarms"].get<std::uint64_t>()) + " refusals of harmless faults\n";
  if (missing > 0) table += std::to_string(missing) + " of " + std::to_string(plan.faults.size()) + " faults have no result yet\n";

  if (!mo.svg_dir.empty()) {
    if (::mkdir(mo.svg_dir.c_str(), 0755) != 0 && errno != EEXIST)
      return make_error("--svg: cannot create " + mo.svg_dir + " (" + std::strerror(errno) + ")");
    BATON_TRY_VOID(model::check_output_dir(mo.svg_dir, "--svg"));
    std::vector<std::pair<std::string, json>> tr, br;
    for (const auto& [k, c] : by_target.items()) tr.emplace_back(k, c);
    for (const auto& [k, c] : by_method.items()) tr.emplace_back(k, c);
    std::map<unsigned, json> bits;
    for (const auto& [i, r] : res) {
      json& c = bits[plan.faults[i].bit];
      if (c.is_null()) c = zero_counts();
      count(c, r.policy.at("reject").outcome);
    }
    for (const auto& [b, c] : bits) br.emplace_back(std::to_string(b), c);
    BATON_TRY_VOID(plot(mo.svg_dir, "by-target", "Outcome share by target and by method (policy reject)", "", tr));
    BATON_TRY_VOID(plot(mo.svg_dir, "by-bit", "Outcome share by bit position (policy reject)", "bit", br));
  }
  if (!mo.junit.empty()) BATON_TRY_VOID(write_junit(plan, res, mo.junit));
  return s.dump(1) + "\n";
}

}  // namespace baton::campaign
