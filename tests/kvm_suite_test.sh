#!/usr/bin/env bash
# Tests scripts/kvm-suite.sh's partition of the kvm tests without a KVM: a fake probe says the
# device works, fake executables answer Catch2's --list-test-names-only "[device-only]" and record
# the test spec they were run with. Checks what a real device runs (every case), what a nested
# boot runs (its executables, without the [device-only] cases), what the leftover boot runs (only
# those), that both logs name the cases with the reason, and that cases tagged without a reason
# fail the suite. Exit 0 when every check holds, 1 otherwise.
set -uo pipefail

suite=$(cd "$(dirname "${BASH_SOURCE[0]}")/../scripts" && pwd)/kvm-suite.sh
work=$(mktemp -d "${TMPDIR:-/tmp}/kvm-suite-test.XXXXXX")
trap 'rm -rf "$work"' EXIT
failures=0

# Reports one failed check with the log it looked at.
fail() {
  echo "FAILED: $1"
  sed 's/^/  | /' "$work/log"
  failures=$((failures + 1))
}

printf '#!/bin/sh\necho pvm\n' >"$work/probe" && chmod +x "$work/probe"
# A fake Catch2 executable NAME whose [device-only] cases are DEVICE_ONLY (newline-separated).
fake() {
  cat >"$work/$1" <<EOF
#!/bin/sh
if [ "\$1" = --list-test-names-only ]; then
  echo "KVM host flavour pvm: the line a main prints first"
  printf '%s' "$2"
  exit 0
fi
shift 2  # --durations yes
echo "\$*" >>"$work/ran.$1"
exit 0
EOF
  chmod +x "$work/$1"
}
fake a "heavy case one
heavy case two
"
fake b ""
fake c ""
printf '%s\t1\t%s\n%s\t1\t\n%s\t2\t\n' "$work/a" "they are slow there" "$work/b" "$work/c" >"$work/list"

# Runs the suite on the fake list with the given options and environment assignments first.
run() {
  rm -f "$work"/ran.*
  env "$@" >"$work/log" 2>&1
}

# 1. A real device: every case of every executable, no test spec; the log names a's cases.
run "$suite" --probe "$work/probe" --list "$work/list" --host device
[ $? = 0 ] || fail "device: exit status"
[ "$(cat "$work/ran.a" 2>/dev/null)" = "" ] && [ -e "$work/ran.a" ] || fail "device: a ran with a spec or not at all"
[ -e "$work/ran.b" ] && [ -e "$work/ran.c" ] || fail "device: b or c did not run"
grep -q "^== a (every case; the nested host does not run these, because they are slow there: 'heavy case one'; 'heavy case two')$" "$work/log" ||
  fail "device: a's line does not name its [device-only] cases and the reason"

# 2. Nested boot 1 (as inside the nested host): a and b without the [device-only] cases, not c.
run NESTED_KVM=1 "$suite" --probe "$work/probe" --list "$work/list" --host device --boot 1 --nested-cases nested
[ $? = 0 ] || fail "boot 1: exit status"
[ "$(cat "$work/ran.a" 2>/dev/null)" = "~[device-only]" ] || fail "boot 1: a did not run with ~[device-only]"
[ "$(cat "$work/ran.b" 2>/dev/null)" = "~[device-only]" ] || fail "boot 1: b did not run with ~[device-only]"
[ ! -e "$work/ran.c" ] || fail "boot 1: c (boot 2) ran"
grep -q "^== a (not here but on a real /dev/kvm only, because they are slow there: 'heavy case one'; 'heavy case two')$" "$work/log" ||
  fail "boot 1: a's line does not say what is left to the device and why"
grep -q "^== c: in nested boot 2, not this one$" "$work/log" || fail "boot 1: c's line is missing"

# 3. The leftover boot where there is no device: only a's [device-only] cases.
run NESTED_KVM=1 "$suite" --probe "$work/probe" --list "$work/list" --host device --nested-cases device-only
[ $? = 0 ] || fail "device-only: exit status"
[ "$(cat "$work/ran.a" 2>/dev/null)" = "[device-only]" ] || fail "device-only: a did not run with [device-only]"
[ ! -e "$work/ran.b" ] && [ ! -e "$work/ran.c" ] || fail "device-only: b or c ran"

# 4. Cases tagged [device-only] without a reason fail the suite (exit 1), naming them.
printf '%s\t1\t\n' "$work/a" >"$work/list"
run "$suite" --probe "$work/probe" --list "$work/list" --host device
[ $? = 1 ] || fail "no reason: the suite did not fail"
grep -q "a tags cases \[device-only\] but gives no reason" "$work/log" || fail "no reason: no error line"
[ ! -e "$work/ran.a" ] || fail "no reason: a ran anyway"

# 5. Bad options are one line and exit 1.
run "$suite" --probe "$work/probe" --list "$work/list" --boot 3
[ $? = 1 ] && grep -q "^baton: kvm-suite: --boot '3' is neither 1 nor 2$" "$work/log" || fail "--boot 3 accepted"

[ $failures = 0 ] && echo "kvm-suite.sh: all checks passed"
[ $failures = 0 ]
