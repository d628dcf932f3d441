// The text of `baton --version`: version, git commit and build type.
#include "baton_version.hpp"
#include "commands.hpp"

namespace baton::cli {

std::string version_text() {
  return std::string("baton ") + BATON_VERSION + " (commit " + BATON_COMMIT + ", " + BATON_BUILD_TYPE + " build)";
}

}  // namespace baton::cli
