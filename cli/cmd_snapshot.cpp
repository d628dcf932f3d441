// baton snapshot: make samples, import raw EPT dumps, inspect, and plant faults.
#include <cstdio>
#include <iostream>
#include <memory>

#include "baton/model/ept_builder.hpp"
#include "baton/model/ept_walk.hpp"
#include "baton/model/file_io.hpp"
#include "baton/model/sample.hpp"
#include "baton/model/snapshot_io.hpp"
#include "commands.hpp"
#include "parse.hpp"
#include "render.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;

struct SnapshotOptions {
  std::string out, in, mem = "128M", pages = "4k", eptp, pages_file, memslots_file, owners_file, gpa;
  std::uint64_t seed = 1;
  double touched = 1.0;
  unsigned level = 1, bit = 0;
  unsigned maxphyaddr = 46;  // import-raw: the dumping host's capabilities
  bool no_execute_only = false, mbec = false;
  bool no_mmio = false, force = false, json = false;
};

// Reads an optional small JSON file; an empty path gives an empty string, an empty file an error
// (it states nothing, and silently importing nothing would look like an answer).
Result<std::string> read_json_text(const std::string& path, const char* what) {
  if (path.empty()) return std::string{};
  auto text = model::read_text_file(path, model::kMaxSmallFile, what);
  if (!text) return text.error();
  if (text->find_first_not_of(" \t\r\n") == std::string::npos)
    return make_error("'" + path + "' is empty; a " + std::string(what) + " file holds a JSON array");
  return text;
}

// baton snapshot make-sample OUT
void run_make_sample(const SnapshotOptions& o) {
  if (auto r = model::check_output_path(o.out, o.force); !r) return fail(r.error().message);
  auto mem = parse_size(o.mem);
  if (!mem) return fail("--mem '" + o.mem + "' is not a size (e.g. 256M, 4G)");
  auto level = parse_page_level(o.pages);
  if (!level) return fail("--pages must be 4k, 2m or 1g, not '" + o.pages + "'");
  model::SampleOptions so;
  so.mem_bytes = *mem;
  so.leaf_level = *level;
  so.seed = o.seed;
  so.touched = o.touched;
  so.mmio = !o.no_mmio;
  auto s = model::make_sample(so);
  if (!s) return fail(s.error().message);
  if (auto r = model::save_snapshot(*s, o.out, o.force); !r) return fail(r.error().message);
  if (o.json) {
    json j = snapshot_summary_json(*s);
    j["file"] = o.out;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("wrote %s\n%s", o.out.c_str(), snapshot_summary_text(*s).c_str());
  }
}

// baton snapshot import-raw OUT --eptp HEX --pages FILE
void run_import_raw(const SnapshotOptions& o) {
  if (auto r = model::check_output_path(o.out, o.force); !r) return fail(r.error().message);
  auto eptp = parse_u64(o.eptp);
  if (!eptp) return fail("--eptp '" + o.eptp + "' is not a number");
  model::RawImport in;
  in.eptp = *eptp;
  if (o.maxphyaddr < 36 || o.maxphyaddr > 52) return fail("--maxphyaddr must be within 36..52");
  in.cfg.maxphyaddr = o.maxphyaddr;
  in.cfg.execute_only = !o.no_execute_only;
  in.cfg.mode_based_exec = o.mbec;
  auto slots = read_json_text(o.memslots_file, "memslots");
  if (!slots) return fail(slots.error().message);
  if (!slots->empty()) {
    auto m = model::memslots_and_mmio_from_json(*slots);
    if (!m) return fail(o.memslots_file + ": " + m.error().message);
    in.memslots = std::move(m->first);
    in.mmio = std::move(m->second);
  }
  auto owners = read_json_text(o.owners_file, "owners");
  if (!owners) return fail(owners.error().message);
  if (!owners->empty()) {
    auto m = model::owners_from_json(*owners);
    if (!m) return fail(o.owners_file + ": " + m.error().message);
    in.owners = std::move(*m);
  }
  // The dump last (the small files are cheap to check), read in place: only the pages reachable
  // from the root are copied.
  auto dump = model::InputFile::open(o.pages_file, model::kMaxRawPages * model::kRawRecordSize, "raw EPT dump");
  if (!dump) return fail(dump.error().message);
  if (dump->size() % model::kRawRecordSize != 0)
    return fail(o.pages_file + ": raw dump size " + std::to_string(dump->size()) +
                " is not a multiple of 4104-byte records (truncated?)");
  auto pages = dump->map();
  if (!pages) return fail(pages.error().message);
  auto s = model::import_raw(*pages, in);
  if (!s) return fail(o.pages_file + ": " + s.error().message);
  if (auto r = model::save_snapshot(*s, o.out, o.force); !r) return fail(r.error().message);
  if (o.json) {
    json j = snapshot_summary_json(*s);
    j["file"] = o.out;
    std::cout << j.dump(2) << "\n";
  } else {
    std::printf("imported %zu reachable table pages into %s (host: MAXPHYADDR %u, execute-only %s, MBEC %s)\n%s",
                s->tables.size(), o.out.c_str(), in.cfg.maxphyaddr, in.cfg.execute_only ? "on" : "off",
                in.cfg.mode_based_exec ? "on" : "off", snapshot_summary_text(*s).c_str());
  }
}

// baton snapshot info SNAPSHOT
void run_info(const SnapshotOptions& o) {
  auto s = model::load_snapshot(o.in);
  if (!s) return fail(s.error().message);
  if (o.json) std::cout << snapshot_summary_json(*s).dump(2) << "\n";
  else std::printf("%s", snapshot_summary_text(*s).c_str());
}

// baton snapshot flip-bit IN OUT --gpa GPA --level L --bit N
void run_flip_bit(const SnapshotOptions& o) {
  auto gpa = parse_u64(o.gpa);
  if (!gpa) return fail("--gpa '" + o.gpa + "' is not a number");
  if (o.level < 1 || o.level > 4) return fail("--level must be 1 (PTE) .. 4 (PML4E)");
  if (o.bit > 63) return fail("--bit must be 0..63");
  if (o.in == o.out && !o.force) return fail("refusing to overwrite the input snapshot; give another OUT or --force");
  if (auto r = model::check_output_path(o.out, o.force); !r) return fail(r.error().message);
  auto s = model::load_snapshot(o.in);
  if (!s) return fail(s.error().message);
  // Follow the walk to the entry at the requested level.
  const model::WalkResult w = model::walk(s->eptp, model::Gpa{*gpa}, model::Access::kRead, s->tables, s->ept_config);
  const model::WalkStep* step = nullptr;
  for (unsigned i = 0; i < w.path_len; ++i)
    if (w.path[i].level == o.level && !(w.kind == model::WalkKind::kAbsentFrame && i + 1 == w.path_len)) step = &w.path[i];
  if (step == nullptr)
    return fail("the walk of gpa " + hex(*gpa) + " does not reach a level-" + std::to_string(o.level) + " entry");
  const model::EptEntry before = step->entry;
  const model::EptEntry after = before.flipped(o.bit);
  s->tables.write_u64(step->entry_addr, after.raw());
  s->meta["fault"] = "flipped bit " + std::to_string(o.bit) + " of the level-" + std::to_string(o.level) +
                     " entry for gpa " + hex(*gpa);
  if (auto r = model::save_snapshot(*s, o.out, o.force); !r) return fail(r.error().message);
  if (o.json) {
    std::cout << json{{"file", o.out}, {"gpa", hex(*gpa)}, {"level", o.level}, {"bit", o.bit},
                      {"entry_hpa", hex(step->entry_addr.value)}, {"before", hex(before.raw())}, {"after", hex(after.raw())}}
                     .dump(2)
              << "\n";
  } else {
    std::printf("flipped bit %u of the level-%u entry at hpa %s for gpa %s\n  before: %s\n  after:  %s\nwrote %s\n", o.bit,
                o.level, hex(step->entry_addr.value).c_str(), hex(*gpa).c_str(),
                model::describe(before, o.level, s->ept_config).c_str(),
                model::describe(after, o.level, s->ept_config).c_str(), o.out.c_str());
  }
}
}  // namespace

void register_snapshot(CLI::App& app) {
  auto o = std::make_shared<SnapshotOptions>();
  CLI::App* snap = app.add_subcommand("snapshot", "Create, import, inspect and corrupt handover snapshots");
  snap->require_subcommand(1);

  CLI::App* m = snap->add_subcommand("make-sample", "Write a realistic sample snapshot (PC layout, KVM-style EPT)");
  m->add_option("out", o->out, "Output snapshot file")->required();
  m->add_option("--mem", o->mem, "Guest RAM size (e.g. 256M, 4G, 64G; the default is run's)")->capture_default_str();
  m->add_option("--pages", o->pages, "Leaf size: 4k, 2m or 1g")->capture_default_str();
  m->add_option("--seed", o->seed, "Seed for A/D noise, table placement and the touched subset")->capture_default_str();
  m->add_option("--touched", o->touched, "Fraction of RAM pages mapped, 0..1")->capture_default_str();
  m->add_flag("--no-mmio", o->no_mmio, "Do not mark IOAPIC/LAPIC pages as MMIO");
  m->add_flag("--force", o->force, "Overwrite OUT if it exists");
  m->add_flag("--json", o->json, "Print JSON");
  m->callback([o] { run_make_sample(*o); });

  CLI::App* r = snap->add_subcommand("import-raw", "Build a snapshot from a raw EPT dump (see docs/formats.md)");
  r->add_option("out", o->out, "Output snapshot file")->required();
  r->add_option("--eptp", o->eptp, "EPT pointer value (hex)")->required();
  r->add_option("--pages", o->pages_file, "Raw dump: records of 8-byte LE HPA + 4096-byte page")->required();
  r->add_option("--memslots", o->memslots_file, "Memslots JSON file");
  r->add_option("--owners", o->owners_file, "Owner map JSON file");
  r->add_option("--maxphyaddr", o->maxphyaddr, "MAXPHYADDR of the host the dump comes from (36..52)")
      ->capture_default_str();
  r->add_flag("--no-execute-only", o->no_execute_only,
              "The host does not support execute-only EPT entries (IA32_VMX_EPT_VPID_CAP bit 0 clear)");
  r->add_flag("--mbec", o->mbec, "The host uses mode-based execute control (bit 10 is user-execute)");
  r->add_flag("--force", o->force, "Overwrite OUT if it exists");
  r->add_flag("--json", o->json, "Print JSON");
  r->callback([o] { run_import_raw(*o); });

  CLI::App* i = snap->add_subcommand("info", "Summarise a snapshot");
  i->add_option("snapshot", o->in, "Snapshot file")->required();
  i->add_flag("--json", o->json, "Print JSON");
  i->callback([o] { run_info(*o); });

  CLI::App* f = snap->add_subcommand("flip-bit", "Plant a fault: flip one bit of the EPT entry a GPA's walk uses");
  f->add_option("in", o->in, "Input snapshot")->required();
  f->add_option("out", o->out, "Output snapshot")->required();
  f->add_option("--gpa", o->gpa, "Guest-physical address whose walk selects the entry")->required();
  f->add_option("--level", o->level, "Level of the entry: 1 PTE, 2 PDE, 3 PDPTE, 4 PML4E")->capture_default_str();
  f->add_option("--bit", o->bit, "Bit to flip, 0..63")->required();
  f->add_flag("--force", o->force, "Overwrite OUT if it exists");
  f->add_flag("--json", o->json, "Print JSON");
  f->callback([o] { run_flip_bit(*o); });
}

}  // namespace baton::cli
