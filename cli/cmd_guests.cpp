// baton guests: list the built-in guests, show a guest image (layout, initial state, page
// tables walked with the model's guest walker), and extract an embedded ELF.
#include <cstdio>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "baton/guests/abi.hpp"
#include "baton/guests/loader.hpp"
#include "baton/guests/registry.hpp"
#include "baton/model/file_io.hpp"
#include "baton/model/guest_walk.hpp"
#include "baton/model/snapshot_io.hpp"
#include "commands.hpp"
#include "parse.hpp"

namespace baton::cli {

namespace {
using nlohmann::json;

// Options of the guests subcommands.
struct GuestsOptions {
  std::string name, elf_path, mem = "128M", pages = "4k", out;
  std::vector<std::string> params, walks;
  unsigned ring = 3;
  bool json = false, force = false;
};

// One sample walk that `show` performs.
struct SampleWalk {
  std::string what;
  std::uint64_t gva = 0;
  model::Access access = model::Access::kRead;
};

// Renders a parameter list as "k=v k=v", using the guest's spelling when known.
std::string params_text(const guests::BuiltinGuest* g, const std::vector<guests::Param>& ps) {
  std::string s;
  for (const guests::Param& p : ps) {
    std::string v = std::to_string(p.value);
    if (g != nullptr)
      for (const guests::ParamSpec& spec : g->params)
        if (spec.name == p.key) v = guests::format_param_value(spec, p.value);
    s += (s.empty() ? "" : " ") + p.key + "=" + v;
  }
  return s.empty() ? "(none)" : s;
}

// baton guests list
void run_list(const GuestsOptions& o) {
  if (o.json) {
    json out = json::array();
    for (const guests::BuiltinGuest& g : guests::builtin_guests()) {
      json params = json::array();
      for (const guests::ParamSpec& p : g.params) {
        json jp{{"name", p.name},
                {"default", p.default_value},
                {"default_text", guests::format_param_value(p, p.default_value)},
                {"help", p.help}};
        if (!p.choices.empty()) jp["choices"] = p.choices;
        params.push_back(jp);
      }
      out.push_back(
          json{{"name", g.name}, {"description", g.description}, {"elf_bytes", g.elf.size()}, {"params", params}});
    }
    std::cout << out.dump(2) << "\n";
    return;
  }
  for (const guests::BuiltinGuest& g : guests::builtin_guests()) {
    std::printf("%-9s %s (%s ELF)\n", g.name.c_str(), g.description.c_str(), format_size(g.elf.size()).c_str());
    for (const guests::ParamSpec& p : g.params) {
      std::string dflt = guests::format_param_value(p, p.default_value);
      if (!p.choices.empty()) {
        std::string all;
        for (const std::string& c : p.choices) all += (all.empty() ? "" : "|") + c;
        dflt += " (" + all + ")";
      }
      std::printf("    %-11s %-18s %s\n", p.name.c_str(), dflt.c_str(), p.help.c_str());
    }
  }
}

// Builds the image `show` describes: a built-in guest, or a user ELF with numeric parameters.
Result<guests::GuestImage> build_image(const GuestsOptions& o, const guests::BuiltinGuest** builtin) {
  guests::GuestConfig cfg;
  auto mem = parse_size(o.mem);
  if (!mem) return make_error("--mem '" + o.mem + "' is not a size (e.g. 256M, 1G, 4096)");
  cfg.mem_size = *mem;
  auto pages = guests::parse_page_size(o.pages);
  if (!pages) return pages.error();
  cfg.page_size = *pages;
  cfg.ring = o.ring;
  *builtin = nullptr;
  if (o.elf_path.empty()) {
    auto g = guests::get_builtin(o.name);
    if (!g) return g.error();
    *builtin = *g;
    auto ps = guests::resolve_params(**g, o.params);
    if (!ps) return ps.error();
    cfg.params = *ps;
    return guests::load_builtin(o.name, cfg);
  }
  for (const std::string& a : o.params) {
    const auto eq = a.find('=');
    if (eq == std::string::npos || eq == 0) return make_error("parameter '" + a + "' is not of the form key=value");
    auto v = guests::parse_number(a.substr(eq + 1));
    if (!v) return make_error("parameter '" + a.substr(0, eq) + "': " + v.error().message);
    cfg.params.push_back(guests::Param{a.substr(0, eq), *v});
  }
  auto bytes = guests::read_file(o.elf_path);
  if (!bytes) return bytes.error();
  auto im = guests::load_guest(*bytes, cfg);
  if (!im) return make_error(o.elf_path + ": " + im.error().message);
  return im;
}

// A guest walk as JSON.
json guest_walk_json(const model::GuestWalkResult& w, const SampleWalk& s) {
  json path = json::array();
  for (unsigned i = 0; i < w.path_len; ++i)
    path.push_back(json{
        {"level", w.path[i].level}, {"entry_gpa", hex(w.path[i].entry_addr.value)}, {"entry", hex(w.path[i].entry)}});
  json j{{"what", s.what},
         {"gva", hex(s.gva)},
         {"access", model::to_string(s.access)},
         {"kind", model::to_string(w.kind)},
         {"path", path}};
  if (w.translated()) {
    j["gpa"] = hex(w.gpa.value);
    j["page_size"] = w.page_size;
    j["user"] = w.user;
    j["writable"] = w.writable;
    j["nx"] = w.nx;
  } else if (w.kind == model::GuestWalkKind::kPageFault) {
    j["error_code"] = hex(w.error_code);
    j["level"] = w.level;
  }
  return j;
}

// Renders one segment register for people.
std::string segment_text(const model::Segment& s) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "sel %#06x base %#llx limit %#x type %#x s %u dpl %u p %u l %u db %u g %u%s",
                s.selector, static_cast<unsigned long long>(s.base), s.limit, s.type, s.s, s.dpl, s.present, s.l, s.db,
                s.g, s.unusable ? " unusable" : "");
  return buf;
}

// baton guests show NAME | --elf PATH
void run_show(const GuestsOptions& o) {
  if (o.name.empty() == o.elf_path.empty()) return fail("give either a built-in guest NAME or --elf PATH");
  const guests::BuiltinGuest* builtin = nullptr;
  auto im = build_image(o, &builtin);
  if (!im) return fail(im.error().message);
  auto paging = guests::check_image_paging(*im);

  std::vector<SampleWalk> samples = {
      {"entry point", im->entry, model::Access::kFetch},
      {"stack top - 8", im->stack_top.value - 8, model::Access::kWrite},
      {"boot page", im->boot_page.value, model::Access::kRead},
      {"free start", im->free_start.value, model::Access::kWrite},
      {"free end - 8", im->free_end.value - 8, model::Access::kWrite},
      {"PML4", im->pml4.value, model::Access::kRead},
      {"last byte", im->mem_size - 1, model::Access::kRead},
      {"beyond memory", im->mem_size, model::Access::kRead},
  };
  for (const std::string& w : o.walks) {
    auto gva = parse_u64(w);
    if (!gva) return fail("--walk '" + w + "' is not an address (use decimal or 0x-hex)");
    samples.push_back({"requested", *gva, model::Access::kRead});
  }
  const guests::ImageMemory mem(*im);
  const model::GuestPagingConfig pcfg = model::paging_config_of(im->vcpu);
  const bool user = im->ring == 3;

  Result<guests::GuestRun> ref = make_error("not a built-in guest");
  if (builtin != nullptr) ref = guests::reference_run(builtin->name, im->params);

  if (o.json) {
    json params = json::object();
    for (const guests::Param& p : im->params) params[p.key] = p.value;
    json layout = json::array();
    for (const guests::Region& r : im->layout)
      layout.push_back(
          json{{"name", r.name}, {"start", hex(r.start.value)}, {"end", hex(r.end().value)}, {"size", r.size}});
    json chunks = json::array();
    for (const guests::MemoryChunk& c : im->chunks)
      chunks.push_back(json{{"name", c.name}, {"gpa", hex(c.gpa.value)}, {"size", c.bytes.size()}});
    json pj{{"tables", im->page_table_pages}, {"pml4", hex(im->pml4.value)}};
    if (paging) {
      pj["identity"] = true;
      pj["pages_4k"] = paging->pages_4k;
      pj["pages_2m"] = paging->pages_2m;
      pj["pages_1g"] = paging->pages_1g;
    } else {
      pj["identity"] = false;
      pj["error"] = paging.error().message;
    }
    json walks = json::array();
    for (const SampleWalk& s : samples)
      walks.push_back(
          guest_walk_json(model::guest_walk(im->vcpu.cr3, model::Gva{s.gva}, s.access, user, mem, pcfg), s));
    json out{{"guest", builtin != nullptr ? builtin->name : o.elf_path},
             {"builtin", builtin != nullptr},
             {"params", params},
             {"mem_size", im->mem_size},
             {"page_size", guests::to_string(im->page_size)},
             {"ring", im->ring},
             {"entry", hex(im->entry)},
             {"free", {{"start", hex(im->free_start.value)}, {"end", hex(im->free_end.value)}}},
             {"layout", layout},
             {"chunks", chunks},
             {"chunk_bytes", im->chunk_bytes()},
             {"vcpu", json::parse(model::vcpu_to_json(im->vcpu))},
             {"paging", pj},
             {"walks", walks}};
    if (ref)
      out["expected"] =
          json{{"checksum", hex(ref->checksum)}, {"sync_points", ref->stages.size()}, {"exit_code", ref->exit_code}};
    std::cout << out.dump(2) << "\n";
  } else {
    if (builtin != nullptr)
      std::printf("guest %s (built-in): %s\n", builtin->name.c_str(), builtin->description.c_str());
    else
      std::printf("guest %s\n", o.elf_path.c_str());
    std::printf("parameters: %s\n", params_text(builtin, im->params).c_str());
    std::printf("memory %s, pages %s, ring %u, entry %s\n\nlayout:\n", format_size(im->mem_size).c_str(),
                guests::to_string(im->page_size), im->ring, hex(im->entry).c_str());
    for (const guests::Region& r : im->layout)
      std::printf("  %#14llx - %#14llx  %10s  %s\n", static_cast<unsigned long long>(r.start.value),
                  static_cast<unsigned long long>(r.end().value), format_size(r.size).c_str(), r.name.c_str());
    std::printf("\ninitial contents (%s in %zu chunks; all other memory is zero):\n",
                format_size(im->chunk_bytes()).c_str(), im->chunks.size());
    for (const guests::MemoryChunk& c : im->chunks)
      std::printf("  %#14llx  %10s  %s\n", static_cast<unsigned long long>(c.gpa.value),
                  format_size(c.bytes.size()).c_str(), c.name.c_str());
    const model::VcpuState& v = im->vcpu;
    std::printf("\ninitial vCPU state:\n  rip %s  rsp %s  rdi %s (boot page)  rflags %s (IOPL=%llu)\n",
                hex(v.rip).c_str(), hex(v.gpr[model::VcpuState::kRsp]).c_str(),
                hex(v.gpr[model::VcpuState::kRdi]).c_str(), hex(v.rflags).c_str(),
                static_cast<unsigned long long>((v.rflags >> 12) & 3));
    std::printf("  cr0 %s  cr3 %s  cr4 %s  efer %s\n", hex(v.cr0).c_str(), hex(v.cr3).c_str(), hex(v.cr4).c_str(),
                hex(v.efer).c_str());
    std::printf("  cs   %s\n  ss   %s\n  ds/es/fs/gs as ss\n  tr   %s\n  ldt  %s\n", segment_text(v.cs).c_str(),
                segment_text(v.ss).c_str(), segment_text(v.tr).c_str(), segment_text(v.ldt).c_str());
    std::printf("  gdtr %s/%#x  idtr %s/%#x\n", hex(v.gdtr.base).c_str(), v.gdtr.limit, hex(v.idtr.base).c_str(),
                v.idtr.limit);
    std::printf("\npage tables: %llu tables at %s (PML4 first)\n",
                static_cast<unsigned long long>(im->page_table_pages), hex(im->pml4.value).c_str());
    if (paging)
      std::printf("  identity over [0, %s): %llu x 4K, %llu x 2M, %llu x 1G leaves; all user, writable, executable\n",
                  hex(im->mem_size).c_str(), static_cast<unsigned long long>(paging->pages_4k),
                  static_cast<unsigned long long>(paging->pages_2m), static_cast<unsigned long long>(paging->pages_1g));
    else
      std::printf("  NOT a valid identity mapping: %s\n", paging.error().message.c_str());
    std::printf("\nsample walks (CPL %u):\n", user ? 3u : 0u);
    for (const SampleWalk& s : samples) {
      const auto w = model::guest_walk(im->vcpu.cr3, model::Gva{s.gva}, s.access, user, mem, pcfg);
      std::printf("  %s %s (%s):\n%s", hex(s.gva).c_str(), model::to_string(s.access), s.what.c_str(),
                  model::describe(w, model::Gva{s.gva}).c_str());
    }
    if (ref)
      std::printf("\nexpected checksum %s (host reference, %zu sync points, exit code %u)\n",
                  hex(ref->checksum).c_str(), ref->stages.size(), ref->exit_code);
  }
  if (!paging) exit_code() = kExitRefuted;
}

// baton guests extract NAME OUT
void run_extract(const GuestsOptions& o) {
  auto g = guests::get_builtin(o.name);
  if (!g) return fail(g.error().message);
  if (auto r = model::write_file(o.out, (*g)->elf, o.force); !r) return fail(r.error().message);
  std::printf("wrote %s (%zu bytes)\n", o.out.c_str(), (*g)->elf.size());
}

}  // namespace

void register_guests(CLI::App& app) {
  auto o = std::make_shared<GuestsOptions>();
  CLI::App* cmd = app.add_subcommand("guests", "Built-in guest programs and the images the loader builds");
  cmd->require_subcommand(1);

  CLI::App* list = cmd->add_subcommand("list", "List the built-in guests and their parameters");
  list->add_flag("--json", o->json, "Print JSON");
  list->callback([o] { run_list(*o); });

  CLI::App* show =
      cmd->add_subcommand("show", "Show a guest image: layout, initial state, page tables and sample walks");
  show->add_option("name", o->name, "Built-in guest name (see 'baton guests list')");
  show->add_option("--elf", o->elf_path, "Load this static x86-64 ELF instead of a built-in guest");
  show->add_option("--param,-p", o->params, "Guest parameter key=value (repeatable), e.g. size=256M");
  show->add_option("--mem", o->mem, "Guest memory size (e.g. 256M, 1G, 4096)")->capture_default_str();
  show->add_option("--pages", o->pages, "Largest leaf of the identity page tables: 4k, 2m or 1g")
      ->capture_default_str();
  show->add_option("--ring", o->ring, "CPL at entry: 3 (IOPL=3) or 0")->capture_default_str();
  show->add_option("--walk", o->walks, "Also walk this GVA (repeatable)");
  show->add_flag("--json", o->json, "Print JSON");
  show->callback([o] { run_show(*o); });

  CLI::App* extract = cmd->add_subcommand("extract", "Write a built-in guest's embedded ELF to a file");
  extract->add_option("name", o->name, "Built-in guest name")->required();
  extract->add_option("out", o->out, "Output ELF file (a positional OUT, as every command's main output)")->required();
  extract->add_flag("--force", o->force, "Replace an existing output file");
  extract->callback([o] { run_extract(*o); });
}

}  // namespace baton::cli
