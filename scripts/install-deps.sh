#!/usr/bin/env bash
# Installs the Debian packages baton needs. Idempotent: does nothing when all are present.
set -euo pipefail

packages=(
  build-essential cmake ninja-build pkg-config git
  clang libclang-rt-14-dev           # libFuzzer targets and sanitizer runtimes
  libunicorn-dev                     # simulator: x86-64 emulation
  libz3-dev                          # checker: SMT proofs
  libcli11-dev                       # command line
  catch2                             # unit and property tests
  libcapstone-dev                    # block decoding (instruction counts, RDTSC)
  nlohmann-json3-dev                 # --json output, memslot/owner files, cost profiles
  libzstd-dev                        # compressed snapshot pages
  libxxhash-dev                      # page hashes
  libtbb-dev                         # parallel normalisation and proofs
  libbenchmark-dev                   # baton bench baselines
  libreadline-dev                    # interactive explore
  tmux                               # explore tests on a real pseudo-terminal
  gnuplot-nox                        # baton compare --plot, campaign merge --svg
  slurm-wlm munge                    # the campaign test's single-node Slurm (tests/campaign/slurm_test.sh)
  qemu-system-x86 busybox-static cpio xz-utils   # the nested KVM host (scripts/nested-kvm.sh)
)

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} Debian packages present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-deps: missing packages (${missing[*]}); run as root or install them with apt-get" >&2
  exit 1
fi

echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
# Quiet unless something fails; then apt's own output says what.
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
  tail -n 20 "$log" >&2
  echo "install-deps: apt-get failed (its output is above)" >&2
  exit 1
fi
echo "install-deps: installed ${#missing[@]} packages"
