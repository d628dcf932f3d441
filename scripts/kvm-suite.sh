#!/usr/bin/env bash
# Runs the kvm test executables (tests/CMakeLists.txt, baton_add_kvm_tests) on a real KVM: this
# host's /dev/kvm when it works, otherwise inside one boot of the nested host
# (scripts/nested-kvm.sh). The first line names the KVM that runs them, e.g.
#   kvm host flavour: pvm (/dev/kvm)
#
#   kvm-suite.sh --probe BATON_KVM_PROBE --list FILE [--build DIR] [--host auto|device|nested]
#                [--boot 1|2] [--nested-cases nested|device-only|all]
#                [--timeout S] [--exe-timeout S] [--no-nested REASON]
#
# --list FILE holds one executable per line: its path, then optionally a tab, its nested boot
# (1 or 2) and a tab and why its cases tagged [device-only] run on a real /dev/kvm only.
# --build DIR is the build tree (default: the list's parent directory's parent), shared
# read-write with the nested host, which caches its kernel in DIR/nested-kvm ($NESTED_KVM_CACHE
# overrides). --host (else $BATON_KVM_HOST, else auto) forces this host's device or the nested
# host. On the device every case of every executable runs. In the nested host --boot N runs
# only the executables of boot N, and --nested-cases which of their cases: `nested` (default)
# those not tagged [device-only], `device-only` only those (where the device is unusable, the
# nested boots run the rest), `all` every one. Each log names the cases one host runs and the
# other does not, with the reason. --timeout bounds the nested host (boot included, default
# 900 s); --exe-timeout bounds each executable (default 600 s). --no-nested REASON: where auto
# would pick the nested host, skip instead (exit 77) and say why (make sanitize).
# Exit status: 0 when every executable passed; 1 when one failed, timed out or the KVM could not
# be reached; 77 when none failed but one skipped (exit 77: it prints why).
set -uo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
probe="" list="" build="" host=${BATON_KVM_HOST:-auto} timeout_s=900 exe_timeout_s=600 no_nested=""
boot="" nested_cases=nested
while [ $# -gt 0 ]; do
  case "$1" in
    --probe) probe=$2; shift 2 ;;
    --list) list=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --host) host=$2; shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --exe-timeout) exe_timeout_s=$2; shift 2 ;;
    --no-nested) no_nested=$2; shift 2 ;;
    --boot) boot=$2; shift 2 ;;
    --nested-cases) nested_cases=$2; shift 2 ;;
    *) echo "baton: kvm-suite: unknown argument '$1'" >&2; exit 1 ;;
  esac
done
[ -x "$probe" ] || { echo "baton: kvm-suite: --probe '$probe' is not an executable (build baton_kvm_probe)" >&2; exit 1; }
[ -r "$list" ] || { echo "baton: kvm-suite: --list '$list' cannot be read (re-run cmake)" >&2; exit 1; }
case "$host" in auto | device | nested) ;; *)
  echo "baton: kvm-suite: host '$host' is none of auto, device, nested (--host or BATON_KVM_HOST)" >&2; exit 1 ;;
esac
case "$boot" in "" | 1 | 2) ;; *) echo "baton: kvm-suite: --boot '$boot' is neither 1 nor 2" >&2; exit 1 ;; esac
case "$nested_cases" in nested | device-only | all) ;; *)
  echo "baton: kvm-suite: --nested-cases '$nested_cases' is none of nested, device-only, all" >&2; exit 1 ;;
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
  case "$nested_cases" in
    nested) part="the cases not tagged [device-only]${boot:+ of the executables of boot $boot of 2}" ;;
    device-only) part="only the cases tagged [device-only]${boot:+ of boot $boot}: 'kvm suite, nested 1/2' and '2/2' run the others" ;;
    all) part="every case${boot:+ of the executables of boot $boot}" ;;
  esac
  echo "kvm suite part: $part"
  # One boot for the whole list; the build tree (where the list and the executables live), the
  # source tree (this script, the scenarios and test data the executables name) and the working
  # directory are shared at their paths, so the suite inside sees the same paths. The host's
  # root alone would not do: the nested host has its own /tmp, where a clone may live.
  [ -n "$build" ] || build=$(dirname "$list")/..
  build=$(cd "$build" && pwd -P)
  src=$(cd "$here/.." && pwd -P)
  exec "$here/nested-kvm.sh" --verbose --timeout "$timeout_s" --share "$build" --share "$src" \
    --cache "${NESTED_KVM_CACHE:-$build/nested-kvm}" -- \
    "$here/kvm-suite.sh" --host device --probe "$probe" --list "$list" --exe-timeout "$exe_timeout_s" \
    ${boot:+--boot "$boot"} --nested-cases "$nested_cases"
fi

if [ $probe_rc != 0 ]; then
  echo "baton: kvm-suite: the device was asked for (--host device or BATON_KVM_HOST=device) but $why" >&2
  exit 1
fi
where="/dev/kvm"
[ -z "${NESTED_KVM:-}" ] || where="/dev/kvm of the nested host, QEMU TCG: correctness, not speed"
echo "kvm host flavour: $flavour ($where)"

# On a real device every case runs; inside the nested host, the part the caller asked for.
cases=all
[ -z "${NESTED_KVM:-}" ] || cases=$nested_cases
[ -n "${NESTED_KVM:-}" ] || boot=""

passed=() failed=() skipped=()
start=$(date +%s%N)
while IFS=$'\t' read -r exe exe_boot why_device || [ -n "$exe" ]; do
  [ -n "$exe" ] || continue
  name=$(basename "$exe")
  if [ -n "$boot" ] && [ "${exe_boot:-1}" != "$boot" ]; then
    echo "== $name: in nested boot ${exe_boot:-1}, not this one"
    continue
  fi
  # The cases this executable leaves to a real /dev/kvm: Catch2 lists their names, one a line
  # (a main's own first line, "KVM host flavour ..." or "SKIPPED: ...", is not a name).
  device_only=$("$exe" --list-test-names-only "[device-only]" 2>/dev/null | grep -v -i -e '^$' -e '^kvm host flavour' -e '^SKIPPED:')
  listed=""
  if [ -n "$device_only" ]; then
    listed=$(sed "s/.*/'&'/" <<<"$device_only" | paste -sd ';' | sed 's/;/; /g')
    if [ -z "$why_device" ]; then
      echo "baton: kvm-suite: $name tags cases [device-only] but gives no reason (DEVICE_ONLY_WHY in baton_add_kvm_tests): $listed"
      failed+=("$name (no reason for its [device-only] cases)")
      continue
    fi
  fi
  spec=()
  case "$cases" in
    all) if [ -n "$device_only" ]; then echo "== $name (every case; the nested host does not run these, because $why_device: $listed)"
         else echo "== $name"; fi ;;
    nested) spec=("~[device-only]")
         if [ -n "$device_only" ]; then echo "== $name (not here but on a real /dev/kvm only, because $why_device: $listed)"
         else echo "== $name (every case)"; fi ;;
    device-only)
      if [ -z "$device_only" ]; then
        echo "== $name: no case tagged [device-only] (the nested boots run all of it)"
        continue
      fi
      spec=("[device-only]")
      echo "== $name (only its [device-only] cases, which the nested boots leave out because $why_device: $listed)" ;;
  esac
  t0=$(date +%s%N)
  timeout -k 10 "$exe_timeout_s" "$exe" --durations yes "${spec[@]}"
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
[ ${#passed[@]} -gt 0 ] || { echo "baton: kvm-suite: no executable of $list ran (none listed, or none in this part: boot ${boot:-any}, cases $cases)"; exit 1; }
exit 0
