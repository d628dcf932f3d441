#!/usr/bin/env bash
# Runs every kvm test executable (tests/CMakeLists.txt, baton_add_kvm_tests) on a real KVM: this
# host's /dev/kvm when it works, otherwise all of them inside one boot of the nested host
# (scripts/nested-kvm.sh). The first line names the KVM that runs them, e.g.
#   kvm host flavour: pvm (/dev/kvm)
#
#   kvm-suite.sh --probe BATON_KVM_PROBE --list FILE [--build DIR] [--host auto|device|nested]
#                [--timeout S] [--exe-timeout S] [--no-nested REASON]
#
# --list FILE holds one executable per line; --build DIR is the build tree (default: the
# list's parent directory's parent), shared read-write with the nested host, which caches its
# kernel in DIR/nested-kvm ($NESTED_KVM_CACHE overrides). --host (else $BATON_KVM_HOST, else auto) forces
# this host's device or the nested host. --timeout bounds the nested host (boot included,
# default 900 s); --exe-timeout bounds each executable (default 600 s). --no-nested REASON: where
# auto would pick the nested host, skip instead (exit 77) and say why (make sanitize).
# Exit status: 0 when every executable passed; 1 when one failed, timed out or the KVM could not
# be reached; 77 when none failed but one skipped (exit 77: it prints why).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
probe="" list="" build="" host=${BATON_KVM_HOST:-auto} timeout_s=900 exe_timeout_s=600 no_nested=""
while [ $# -gt 0 ]; do
  case "$1" in
    --probe) probe=$2; shift 2 ;;
    --list) list=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --exe-timeout) exe_timeout_s=$2; shift 2 ;;
    --no-nested) no_nested=$2; shift 2 ;;
    *) echo "baton: kvm-suite: unknown argument '$1'" >&2; exit 1 ;;
  esac
done
[ -x "$probe" ] || { echo "baton: kvm-suite: --probe '$probe' is not an executable (build baton_kvm_probe)" >&2; exit 1; }
[ -r "$list" ] || { echo "baton: kvm-suite: --list '$list' cannot be read (re-run cmake)" >&2; exit 1; }
case "$host" in auto | device | nested) ;; *)
  echo "baton: kvm-suite: host '$host' is none of auto, device, nested (--host or BATON_KVM_HOST)" >&2; exit 1 ;;
esac

# The flavour on the probe's first line, and why the device is unusable on its second.
probe_out=$("$probe")
probe_rc=$?
flavour=$(sed -n 1p <<<"$probe_out")
why=$(sed -n 2p <<<"$probe_out")

if [ "$host" = auto ]; then
  if [ $probe_rc = 0 ]; then host=device; else host=nested; fi
fi
if [ "$host" = nested ] && [ -n "$no_nested" ]; then
  if [ $probe_rc = 0 ]; then here_is="the nested host was asked for"; else here_is="this machine: $flavour, $why"; fi
  echo "SKIPPED: the kvm tests need the nested host here ($here_is), which is not used: $no_nested"
  exit 77
fi

if [ "$host" = nested ]; then
  if [ $probe_rc = 0 ]; then here_is="this machine: $flavour, its /dev/kvm not used"
  else here_is="this machine: $flavour, $why"; fi
  echo "kvm host flavour: nested-svm (the nested host, QEMU TCG: scripts/nested-kvm.sh; $here_is)"
  # One boot for the whole list; the build tree (where the list and the executables live) and
  # the working directory are shared read-write, so the suite inside sees the same paths.
  [ -n "$build" ] || build=$(dirname "$list")/..
  build=$(cd "$build" && pwd -P)
  exec "$here/nested-kvm.sh" --verbose --timeout "$timeout_s" --share "$build" \
    --cache "${NESTED_KVM_CACHE:-$build/nested-kvm}" -- \
    "$here/kvm-suite.sh" --host device --probe "$probe" --list "$list" --exe-timeout "$exe_timeout_s"
fi

if [ $probe_rc != 0 ]; then
  echo "baton: kvm-suite: the device was asked for (--host device or BATON_KVM_HOST=device) but $why" >&2
  exit 1
fi
where="/dev/kvm"
[ -z "${NESTED_KVM:-}" ] || where="/dev/kvm of the nested host, QEMU TCG: correctness, not speed"
echo "kvm host flavour: $flavour ($where)"

passed=() failed=() skipped=()
start=$(date +%s%N)
while IFS= read -r exe || [ -n "$exe" ]; do
  [ -n "$exe" ] || continue
  name=$(basename "$exe")
  echo "== $name"
  t0=$(date +%s%N)
  timeout -k 10 "$exe_timeout_s" "$exe" --durations yes
  rc=$?
  secs=$(awk -v n=$(($(date +%s%N) - t0)) 'BEGIN {printf "%.1f", n / 1e9}')
  case $rc in
    0) passed+=("$name ${secs} s") ;;
    77) skipped+=("$name") ;;
    124 | 137) echo "baton: kvm-suite: $name did not finish within ${exe_timeout_s} s (--exe-timeout)"; failed+=("$name (timed out)") ;;
    *) failed+=("$name (exit $rc, ${secs} s)") ;;
  esac
done <"$list"
total=$(awk -v n=$(($(date +%s%N) - start)) 'BEGIN {printf "%.1f", n / 1e9}')

# Prints its arguments separated by "; ", or "none".
join() {
  local out="" x
  for x in "$@"; do out+="${out:+; }$x"; done
  echo "${out:-none}"
}
echo "kvm suite on $flavour: ${#passed[@]} passed ($(join "${passed[@]}")), ${#failed[@]} failed ($(join "${failed[@]}")) in ${total} s"
if [ ${#failed[@]} -gt 0 ]; then exit 1; fi
if [ ${#skipped[@]} -gt 0 ]; then
  echo "kvm suite on $flavour: SKIPPED ${#skipped[@]} executable(s) that exited 77: $(join "${skipped[@]}")"
  exit 77
fi
[ ${#passed[@]} -gt 0 ] || { echo "baton: kvm-suite: the list $list names no executable"; exit 1; }
exit 0
