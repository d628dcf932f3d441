#!/bin/sh
# Prints the deterministic figures of many simulator runs, one "NAME JSON" line each (wall
# time, MIPS and executor counters left out), so that two binaries can be compared with diff:
#   scripts/sim-figures.sh OLD/baton > old.txt; scripts/sim-figures.sh NEW/baton > new.txt; diff old.txt new.txt
# Every guest at 4k/2m/1g, without A/D, with WP and PML dirty logging; longer and other
# variants; the four migration methods on mixed. EXTRA="--all-hooked" runs the per-access
# reference of the fast path (the migrations are skipped then).
B=${1:-./build/cli/baton}
strip() {
  python3 -c '
import json, sys
j = json.load(sys.stdin)
for k in ("wall_s", "mips", "blocks_decoded", "hook_toggles", "executor"):
    j.pop(k, None)
print(sys.argv[1], json.dumps(j, sort_keys=True))' "$1"
}
for g in checksum memtouch pagewalk io tsc mixed; do
  for pages in 4k 2m 1g; do $B run $g --pages $pages $EXTRA --json | strip "$g/$pages"; done
  $B run $g --no-ad $EXTRA --json | strip "$g/no-ad"
  $B run $g --dirty wp $EXTRA --json | strip "$g/wp"
  $B run $g --dirty pml $EXTRA --json | strip "$g/pml"
  $B run $g --dirty pml --pages 2m $EXTRA --json | strip "$g/pml-2m"
done
$B run checksum --param rounds=20 $EXTRA --json | strip "checksum-r20"
$B run checksum --param rounds=6 --param algo=sha256 $EXTRA --json | strip "checksum-sha"
$B run memtouch --param order=random --param write_pct=10 $EXTRA --json | strip "memtouch-rand"
$B run memtouch --param write_pct=0 --param passes=8 $EXTRA --json | strip "memtouch-ro"
$B run pagewalk --param size=16M --param reads=1000000 $EXTRA --json | strip "pagewalk-16m"
$B run mixed --param cycles=4 --dirty pml $EXTRA --json | strip "mixed-c4-pml"
[ -n "$EXTRA" ] && exit 0
for m in local-adopt local-rebuild local-lazy precopy; do
  $B migrate mixed --method $m --json 2>/dev/null | python3 -c '
import json, sys
def clean(o):
    if isinstance(o, dict):
        return {k: clean(v) for k, v in o.items() if not any(w in k for w in ("wall", "seconds", "_ms", "time_s", "mips"))}
    if isinstance(o, list):
        return [clean(x) for x in o]
    return o
print(sys.argv[1], json.dumps(clean(json.load(sys.stdin)), sort_keys=True))' "migrate/$m"
done
