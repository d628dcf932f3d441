// baton ept: walk, dump and diff EPT trees held in snapshot files.
#include <algorithm>
#include <cstdio>
#include <iostream>
#include <memory>
#include <set>
#include <tuple>

#include "baton/model/ept_walk.hpp"
#include "baton/model/mapping_set.hpp"
#include "baton/model/snapshot_io.hpp"
#include "commands.hpp"
#include "parse.hpp"
#include "render.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;

// Options shared by the ept subcommands.
struct EptOptions {
  std::string snapshot, other, gpa_text, access = "r";
  bool json = false, runs = false, tree = false;
};

// Parses an access name: r/read, w/write, x/fetch.
std::optional<model::Access> parse_access(const std::string& s) {
  if (s == "r" || s == "read") return model::Access::kRead;
  if (s == "w" || s == "write") return model::Access::kWrite;
  if (s == "x" || s == "fetch" || s == "exec") return model::Access::kFetch;
  return std::nullopt;
}

// baton ept walk SNAPSHOT GPA
void run_walk(const EptOptions& o) {
  auto gpa = parse_u64(o.gpa_text);
  if (!gpa) return fail("GPA '" + o.gpa_text + "' is not a number (use decimal or 0x-hex)");
  auto access = parse_access(o.access);
  if (!access) return fail("--access must be r, w or x, not '" + o.access + "'");
  auto s = model::load_snapshot(o.snapshot);
  if (!s) return fail(s.error().message);
  if (std::string why = s->eptp.validate(s->ept_config); !why.empty()) return fail(o.snapshot + ": " + why);
  // A 4-level walk translates bits 47:0, and no guest can name a GPA at or above 2^MAXPHYADDR.
  const unsigned width = std::min(s->ept_config.maxphyaddr, 48u);
  if (*gpa >> width != 0)
    return fail("GPA " + hex(*gpa) + " has bits set above bit " + std::to_string(width - 1) + " (MAXPHYADDR " +
                std::to_string(s->ept_config.maxphyaddr) + ", 4-level EPT); no guest access can produce it");
  const model::WalkResult w = model::walk(s->eptp, model::Gpa{*gpa}, *access, s->tables, s->ept_config);
  if (o.json) {
    std::cout << walk_json(w, model::Gpa{*gpa}, *access, s->ept_config).dump(2) << "\n";
  } else {
    std::printf("walk of gpa %s (%s) under EPTP %s:\n%s", hex(*gpa).c_str(), model::to_string(*access),
                hex(s->eptp.raw()).c_str(), model::describe(w, model::Gpa{*gpa}, s->ept_config).c_str());
  }
}

// Prints the tree, table by table, depth first. A table page already shown at the same level
// (reached along another walk: shared, or pointing back up the tree) is named, not shown again,
// so the output is bounded by the number of distinct tables.
void print_tree(const model::PhysicalMemory& mem, const model::EptConfig& cfg, model::Hfn t, unsigned level,
                std::uint64_t base, int depth, json* out, std::set<std::pair<std::uint64_t, unsigned>>& shown) {
  const std::uint8_t* page = mem.frame(t);
  if (page == nullptr) {
    if (out == nullptr) std::printf("%*s(table frame %s absent)\n", depth * 2, "", hex(t.value).c_str());
    return;
  }
  if (!shown.emplace(t.value, level).second) {
    if (out == nullptr)
      std::printf("%*s(level-%u table at hfn %s: shown above)\n", depth * 2, "", level, hex(t.value).c_str());
    return;
  }
  for (unsigned i = 0; i < 512; ++i) {
    std::uint64_t raw = 0;
    std::memcpy(&raw, page + i * 8, 8);
    const model::EptEntry e{raw};
    const model::EntryKind k = e.classify(level, cfg);
    if (k == model::EntryKind::kNotPresent) continue;
    const std::uint64_t gpa = base + model::level_span(level) * i;
    if (out != nullptr) {
      out->push_back(json{{"level", level},
                          {"index", i},
                          {"gpa", hex(gpa)},
                          {"table_hfn", hex(t.value)},
                          {"raw", hex(raw)},
                          {"kind", model::to_string(k)}});
    } else {
      std::printf("%*sL%u[%3u] gpa %#14llx  %s\n", depth * 2, "", level, i, static_cast<unsigned long long>(gpa),
                  model::describe(e, level, cfg).c_str());
    }
    if (k == model::EntryKind::kTable) print_tree(mem, cfg, e.table_hfn(), level - 1, gpa, depth + 1, out, shown);
  }
}

// baton ept dump SNAPSHOT [--runs|--tree]
void run_dump(const EptOptions& o) {
  auto s = model::load_snapshot(o.snapshot);
  if (!s) return fail(s.error().message);
  if (o.tree) {
    if (o.json) {
      json entries = json::array();
      std::set<std::pair<std::uint64_t, unsigned>> shown;
      print_tree(s->tables, s->ept_config, s->eptp.root(), 4, 0, 0, &entries, shown);
      std::cout << json{{"eptp", hex(s->eptp.raw())}, {"entries", entries}}.dump(2) << "\n";
    } else {
      std::printf("EPT tree under EPTP %s\n", hex(s->eptp.raw()).c_str());
      std::set<std::pair<std::uint64_t, unsigned>> shown;
      print_tree(s->tables, s->ept_config, s->eptp.root(), 4, 0, 0, nullptr, shown);
    }
    return;
  }
  model::TreeStats st;
  auto ms = model::MappingSet::from_tree(s->eptp, s->tables, s->ept_config, &st);
  if (!ms) return fail(o.snapshot + ": " + ms.error().message);
  if (o.json) {
    json runs = json::array();
    for (const auto& r : ms->runs()) runs.push_back(run_json(r));
    std::cout << json{{"eptp", hex(s->eptp.raw())},
                      {"tables", st.tables},
                      {"leaves", {{"4k", st.leaves[1]}, {"2m", st.leaves[2]}, {"1g", st.leaves[3]}}},
                      {"misconfigured", st.misconfigured},
                      {"absent_frames", st.absent_frames},
                      {"mapped_bytes", ms->mapped_bytes()},
                      {"runs", runs}}
                     .dump(2)
              << "\n";
    return;
  }
  std::printf("EPTP %s: %llu tables, leaves 4K=%llu 2M=%llu 1G=%llu, %llu misconfigured, %s mapped in %zu runs\n",
              hex(s->eptp.raw()).c_str(), static_cast<unsigned long long>(st.tables),
              static_cast<unsigned long long>(st.leaves[1]), static_cast<unsigned long long>(st.leaves[2]),
              static_cast<unsigned long long>(st.leaves[3]), static_cast<unsigned long long>(st.misconfigured),
              format_size(ms->mapped_bytes()).c_str(), ms->runs().size());
  for (const auto& r : ms->runs()) std::printf("  %s\n", model::describe(r).c_str());
}

// Describes one side of a differing range: its run, or "not mapped"; an unknown run names the
// absent table frame its walk reaches.
std::string side_text(const std::optional<model::MappingRun>& run, const model::HandoverSnapshot& s, model::Gpa g) {
  if (!run) return "not mapped";
  if (run->kind != model::RunKind::kUnknown) return model::describe(*run);
  const model::WalkResult w = model::walk(s.eptp, g, model::Access::kRead, s.tables, s.ept_config);
  const std::uint64_t frame = w.path_len > 0 ? w.path[w.path_len - 1].entry_addr.value & ~model::kPageMask : 0;
  return model::describe(*run) + ": the walk reaches table frame " + hex(frame) +
         ", absent from the snapshot; an absent frame can hold anything";
}

// baton ept diff A B
void run_diff(const EptOptions& o) {
  auto a = model::load_snapshot(o.snapshot);
  if (!a) return fail(a.error().message);
  auto b = model::load_snapshot(o.other);
  if (!b) return fail(b.error().message);
  auto ma = model::MappingSet::from_tree(a->eptp, a->tables, a->ept_config);
  if (!ma) return fail(o.snapshot + ": " + ma.error().message);
  auto mb = model::MappingSet::from_tree(b->eptp, b->tables, b->ept_config);
  if (!mb) return fail(o.other + ": " + mb.error().message);
  // Ranges where either side is unknown are reported as differing, as `baton check` refutes them.
  const auto diffs = ma->diff(*mb);
  std::size_t unknown = 0;
  for (const auto& d : diffs)
    unknown += (d.a && d.a->kind == model::RunKind::kUnknown) || (d.b && d.b->kind == model::RunKind::kUnknown);
  if (o.json) {
    json arr = json::array();
    for (const auto& d : diffs) {
      json j{{"gpa", hex(d.gpa.value)}, {"size", hex(d.size)}};
      j["a"] = d.a ? run_json(*d.a) : json(nullptr);
      j["b"] = d.b ? run_json(*d.b) : json(nullptr);
      j["unknown"] = (d.a && d.a->kind == model::RunKind::kUnknown) || (d.b && d.b->kind == model::RunKind::kUnknown);
      j["walk_a"] = walk_json(model::walk(a->eptp, d.gpa, model::Access::kRead, a->tables, a->ept_config), d.gpa,
                              model::Access::kRead, a->ept_config);
      j["walk_b"] = walk_json(model::walk(b->eptp, d.gpa, model::Access::kRead, b->tables, b->ept_config), d.gpa,
                              model::Access::kRead, b->ept_config);
      arr.push_back(j);
    }
    std::cout << json{{"equal", diffs.empty()},
                      {"unknown_ranges", unknown},
                      {"runs_a", ma->runs().size()},
                      {"runs_b", mb->runs().size()},
                      {"diffs", arr}}
                     .dump(2)
              << "\n";
  } else if (diffs.empty()) {
    std::printf("equal: both trees give every GPA the same outcome (%zu vs %zu runs)\n", ma->runs().size(), mb->runs().size());
  } else {
    if (unknown == 0)
      std::printf("%zu differing GPA range(s):\n", diffs.size());
    else
      std::printf("%zu differing GPA range(s), %zu of them unknown (an absent table frame can hold anything):\n",
                  diffs.size(), unknown);
    std::size_t shown = 0;
    for (const auto& d : diffs) {
      std::printf("\n  gpa %s .. %s (%s)\n", hex(d.gpa.value).c_str(), hex(d.gpa.value + d.size - 1).c_str(),
                  format_size(d.size).c_str());
      std::printf("  A: %s\n", side_text(d.a, *a, d.gpa).c_str());
      std::printf("  B: %s\n", side_text(d.b, *b, d.gpa).c_str());
      for (const auto& [side, run, snap] : {std::tuple{"A", &d.a, &*a}, std::tuple{"B", &d.b, &*b}}) {
        if (!*run || (*run)->kind != model::RunKind::kMapped) continue;
        const model::Hpa h = (*run)->hpa_at(d.gpa);
        const model::OwnerRange owner = snap->owners.owner_of(model::hfn_of(h));
        std::printf("  %s's frame %s is owned by: %s (vm %u)\n", side, hex(h.value).c_str(), model::to_string(owner.kind), owner.vm);
      }
      if (shown++ < 8) {
        std::printf("  walk in A (%s):\n%s", o.snapshot.c_str(),
                    model::describe(model::walk(a->eptp, d.gpa, model::Access::kRead, a->tables, a->ept_config), d.gpa,
                                    a->ept_config)
                        .c_str());
        std::printf("  walk in B (%s):\n%s", o.other.c_str(),
                    model::describe(model::walk(b->eptp, d.gpa, model::Access::kRead, b->tables, b->ept_config), d.gpa,
                                    b->ept_config)
                        .c_str());
      }
    }
  }
  if (!diffs.empty()) exit_code() = kExitRefuted;
}
}  // namespace

void register_ept(CLI::App& app) {
  auto opts = std::make_shared<EptOptions>();
  CLI::App* ept = app.add_subcommand("ept", "Walk, dump and diff EPT trees in snapshot files");
  ept->require_subcommand(1);

  CLI::App* w = ept->add_subcommand("walk", "Walk one guest-physical address through the snapshot's EPT, level by level");
  w->add_option("snapshot", opts->snapshot, "Snapshot file")->required();
  w->add_option("gpa", opts->gpa_text, "Guest-physical address (decimal or 0x-hex)")->required();
  w->add_option("--access", opts->access, "Access type: r, w or x")->capture_default_str();
  w->add_flag("--json", opts->json, "Print JSON");
  w->callback([opts] { run_walk(*opts); });

  CLI::App* d = ept->add_subcommand("dump", "Print the tree's normal form (coalesced runs) or every entry");
  d->add_option("snapshot", opts->snapshot, "Snapshot file")->required();
  auto* runs = d->add_flag("--runs", opts->runs, "Print coalesced mapping runs (default)");
  d->add_flag("--tree", opts->tree, "Print every present entry, table by table")->excludes(runs);
  d->add_flag("--json", opts->json, "Print JSON");
  d->callback([opts] { run_dump(*opts); });

  CLI::App* f = ept->add_subcommand(
      "diff", "Compare two trees semantically; exit 1 when some GPA differs or reaches an absent table frame");
  f->add_option("a", opts->snapshot, "First snapshot")->required();
  f->add_option("b", opts->other, "Second snapshot")->required();
  f->add_flag("--json", opts->json, "Print JSON");
  f->callback([opts] { run_diff(*opts); });
}

}  // namespace baton::cli
