// The built-in guests: their names, parameters and embedded ELF images, and the host-side
// reference that runs the very same workload code to predict each guest's checksum.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "baton/guests/loader.hpp"
#include "baton/guests/ports.hpp"
#include "baton/model/result.hpp"

namespace baton::guests {

// One parameter a built-in guest reads from its boot page.
struct ParamSpec {
  std::string name;
  std::uint64_t default_value = 0;
  std::string help;
  std::vector<std::string> choices;  // value i is spelled choices[i]; empty for plain numbers
  bool is_size = false;              // shown with a size suffix (16M)
};

// A guest program built with baton and embedded in the library.
struct BuiltinGuest {
  std::string name;
  std::string description;
  std::vector<ParamSpec> params;
  std::span<const std::uint8_t> elf;  // the embedded ELF image
};

// Returns every built-in guest, in a fixed order.
std::span<const BuiltinGuest> builtin_guests();
// Returns the built-in guest with this name, or nullptr.
const BuiltinGuest* find_builtin(std::string_view name);
// Returns the built-in guest with this name, or an error listing the known names.
Result<const BuiltinGuest*> get_builtin(std::string_view name);

// Parses a number with an optional binary suffix: "4096", "0x1000", "16M", "1g", "2KiB".
Result<std::uint64_t> parse_number(std::string_view s);
// Parses a value for a parameter: a number, or for a choice parameter its name or index.
Result<std::uint64_t> parse_param_value(const ParamSpec& spec, std::string_view s);
// Renders a parameter value the way parse_param_value reads it ("16M", "random", "4").
std::string format_param_value(const ParamSpec& spec, std::uint64_t v);

// Resolves "key=value" assignments for a guest into its full parameter list: every
// parameter in spec order, defaults for those not given. Unknown keys are errors.
Result<std::vector<Param>> resolve_params(const BuiltinGuest& guest, std::span<const std::string> assignments);
// Completes numeric parameters for a guest: defaults for absent keys; unknown keys are errors.
Result<std::vector<Param>> complete_params(const BuiltinGuest& guest, std::span<const Param> given);

// Checks a guest's parameters, and that its working set fits in `free_bytes` of free memory.
Result<void> check_params(const BuiltinGuest& guest, std::span<const Param> params, std::uint64_t free_bytes);

// Loads a built-in guest: completes cfg.params with defaults, loads the ELF, and checks
// that the working set fits the image's free memory.
Result<GuestImage> load_builtin(std::string_view name, const GuestConfig& cfg);

// Runs a built-in guest's workload on the host (same C code, densely packed working set)
// through a PortRecorder, with the default input sequence and a synthetic TSC that advances
// by 1000 per read. The TSC observations (tags 1..4) are therefore synthetic.
Result<GuestRun> reference_run(std::string_view name, std::span<const Param> params);
// Returns the checksum a built-in guest reports for these parameters (defaults for the rest).
Result<std::uint64_t> expected_result(std::string_view name, std::span<const Param> params = {});

}  // namespace baton::guests
