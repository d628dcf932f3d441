#!/usr/bin/env bash
# make mutants: plants each one-line bug of scripts/mutants.txt, one at a time, in a scratch
# copy of the source tree, rebuilds only the test executables that mutant names (ccache keeps
# the rest cached), runs its tests, and prints a table: mutant, killed or survived, and by
# which test. Exit status 0 when every mutant was killed, 1 otherwise. Not part of `make test`.
#
# Usage: scripts/mutants.sh [--list] [ID...]       (IDs select mutants; default: all)
# Environment: BATON_MUTANTS_DIR (scratch directory, default build-mutants/ in the tree, which
#              .gitignore ignores), BATON_MUTANT_TIMEOUT (seconds per test command, default 600).
# The scratch copy is synced from the working tree (tracked and untracked files, not ignored
# ones) and keeps its build directory, configured once, at src/build: the same layout as the
# tree's own build/, so that ccache (base_dir) serves the unchanged files from the tree's builds.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
list="$here/scripts/mutants.txt"
work=${BATON_MUTANTS_DIR:-$here/build-mutants}
timeout_s=${BATON_MUTANT_TIMEOUT:-600}
src="$work/src"
build="$src/build"
logs="$work/logs"

# --- parse the list: records of "key: value" lines separated by blank lines -----------------
ids=() files=() whys=() builds=() tests=() subs=()
parse() {
  local id="" file="" why="" bld="" tst="" sub="" from="" line key val n=0
  flush() {
    if [[ -n $id ]]; then
      [[ -n $file && -n $sub && -n $bld && -n $tst ]] || { echo "baton: mutant $id in $list lacks file, from/to, build or test" >&2; exit 2; }
      ids+=("$id"); files+=("$file"); whys+=("$why"); builds+=("$bld"); tests+=("$tst"); subs+=("$sub")
    fi
    id="" file="" why="" bld="" tst="" sub="" from=""
  }
  while IFS= read -r line || [[ -n $line ]]; do
    n=$((n + 1))
    [[ $line =~ ^# ]] && continue
    if [[ -z ${line// /} ]]; then flush; continue; fi
    key=${line%%:*}
    val=${line#*: }
    case $key in
      id) id=$val ;;
      file) file=$val ;;
      why) why=$val ;;
      build) bld=$val ;;
      test) tst+="$val"$'\n' ;;
      from) from=$val ;;
      to) sub+="$from"$'\x1f'"$val"$'\x1e' ;;
      *) echo "baton: $list:$n: unknown key '$key'" >&2; exit 2 ;;
    esac
  done <"$list"
  flush
}
parse

if [[ ${1:-} == --list ]]; then
  for i in "${!ids[@]}"; do printf '%-22s %-34s %s\n' "${ids[$i]}" "${files[$i]}" "${whys[$i]}"; done
  exit 0
fi
selected=()
if [[ $# -gt 0 ]]; then
  for want in "$@"; do
    found=""
    for i in "${!ids[@]}"; do [[ ${ids[$i]} == "$want" ]] && selected+=("$i") && found=1; done
    [[ -n $found ]] || { echo "baton: no mutant '$want' in $list (see --list)" >&2; exit 2; }
  done
else
  selected=("${!ids[@]}")
fi

start=$(date +%s)
mkdir -p "$work" "$logs"

# --- the scratch copy: the working tree's files with their times, synced on every run --------
echo "mutants: syncing the working tree to $src"
mkdir -p "$src"
(cd "$here" && git ls-files -z --cached --others --exclude-standard) >"$work/files"
(cd "$here" && tar --null --ignore-failed-read -T "$work/files" -cf - 2>/dev/null) | tar -C "$src" -xf -
# Files gone from the tree go from the copy too (its build directory stays).
(cd "$src" && find . -path ./build -prune -o -type f -printf '%P\0') |
  sort -z | comm -z -23 - <(sort -z "$work/files") | (cd "$src" && xargs -0 -r rm -f)
# Earlier runs may have left mutant objects behind whose sources now look older: touch every
# file the list mutates so that the baseline build recompiles it (a ccache hit).
for i in "${!ids[@]}"; do touch "$src/${files[$i]}"; done
if [[ ! -f $build/build.ninja ]]; then
  echo "mutants: configuring $build (once)"
  cmake -S "$src" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DBATON_WERROR=ON \
    -DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache >"$logs/configure.log" 2>&1 ||
    { echo "baton: configuring the scratch build failed; see $logs/configure.log" >&2; exit 2; }
fi

# Builds the given targets; returns ninja's status.
build_targets() { ninja -C "$build" "$@" >>"$logs/build.log" 2>&1; }

# Finds a test executable in the scratch build by target name.
exe_of() {
  local p
  p=$(find "$build/tests" "$build/fuzz" -maxdepth 2 -type f -name "$1" -perm -u+x 2>/dev/null | head -n 1)
  [[ -n $p ]] || { echo "baton: no test executable '$1' in $build" >&2; return 1; }
  echo "$p"
}

# Runs one test command ("EXE [Catch2 args]") with a timeout; on failure prints which test
# failed ("EXE: test case name", "EXE: timeout", "EXE: crash (signal N)").
run_test() {
  local cmd=$1 log=$2 exe path st name
  local -a argv
  read -r -a argv <<<"$cmd"  # no globbing: "[vcpu]" stays a Catch2 tag
  exe=${argv[0]}
  path=$(exe_of "$exe") || return 2
  set +e
  (cd "$build" && timeout --signal=KILL "$timeout_s" "$path" "${argv[@]:1}" -a) >"$log" 2>&1
  st=$?
  set -e
  [[ $st -eq 0 ]] && return 0
  if [[ $st -eq 77 ]]; then
    # The test cannot run here (e.g. no usable /dev/kvm): its executable says why, last.
    echo "$exe: skipped here: $(grep -v '^[[:space:]]*$' "$log" | tail -n 1)"
    return 3
  elif [[ $st -eq 137 ]]; then
    echo "$exe: timeout after ${timeout_s}s"
  elif [[ $st -gt 128 ]]; then
    echo "$exe: crash (signal $((st - 128)))"
  else
    # Catch2's console reporter prints the failing test case's name (wrapped at 79 columns,
    # then its sections, indented) between two lines of dashes.
    name=$(awk '/^-+$/ && length($0) == 79 { if (inside) { print name; exit } inside = 1; next }
                inside { sep = (name == "" ? "" : (/^ / ? " / " : " ")); sub(/^ +/, ""); name = name sep $0 }' "$log")
    echo "$exe: ${name:-exit status $st}"
  fi
  return 1
}

# Applies (or checks) the substitutions of mutant $1 to the scratch copy; each "from" must
# occur exactly once in the file.
apply_mutant() {
  local i=$1 f="$src/${files[$1]}" rest=${subs[$1]} rec from to
  while [[ -n $rest ]]; do
    rec=${rest%%$'\x1e'*}
    rest=${rest#*$'\x1e'}
    from=${rec%%$'\x1f'*}
    to=${rec#*$'\x1f'}
    FROM=$from TO=$to perl -0777 -i -pe '
      my $n = () = /\Q$ENV{FROM}\E/g;
      die "occurs $n times\n" unless $n == 1;
      s/\Q$ENV{FROM}\E/$ENV{TO}/;' "$f" || { echo "baton: mutant ${ids[$i]}: '$from' must occur once in ${files[$i]}" >&2; return 1; }
  done
}

# --- baseline: every selected target builds and every test command passes unmutated ---------
all_targets=()
for i in "${selected[@]}"; do
  for t in ${builds[$i]}; do [[ " ${all_targets[*]} " == *" $t "* ]] || all_targets+=("$t"); done
done
echo "mutants: baseline build of ${all_targets[*]}"
: >"$logs/build.log"
build_targets "${all_targets[@]}" || { echo "baton: the unmutated scratch copy does not build; see $logs/build.log" >&2; exit 2; }
declare -A baseline_ok=() baseline_skip=()
for i in "${selected[@]}"; do
  while IFS= read -r cmd; do
    [[ -n $cmd && -z ${baseline_ok[$cmd]:-} && -z ${baseline_skip[$cmd]:-} ]] || continue
    st=0
    why=$(run_test "$cmd" "$logs/baseline.log") || st=$?
    if [[ $st -eq 3 ]]; then
      baseline_skip[$cmd]=$why
      echo "mutants: $why" >&2
      continue
    elif [[ $st -ne 0 ]]; then
      echo "baton: the unmutated code fails '$cmd' ($why); see $logs/baseline.log" >&2
      exit 2
    fi
    baseline_ok[$cmd]=1
  done <<<"${tests[$i]}"
done
skip_note=""
((${#baseline_skip[@]} == 0)) || skip_note=", ${#baseline_skip[@]} cannot run here (their mutants are reported as skipped)"
echo "mutants: baseline passes ${#baseline_ok[@]} test commands$skip_note"

# --- one mutant at a time --------------------------------------------------------------------
results=() killed=0 survived=0 broken=0 skipped=0
printf '\n%-22s %-9s %s\n' "mutant" "result" "by"
for i in "${selected[@]}"; do
  id=${ids[$i]}
  f="$src/${files[$i]}"
  cp -p "$f" "$work/original"
  t0=$(date +%s)
  result="" by=""
  skip_why=""
  while IFS= read -r cmd; do
    if [[ -n $cmd && -n ${baseline_skip[$cmd]:-} ]]; then skip_why=${baseline_skip[$cmd]}; fi
  done <<<"${tests[$i]}"
  if [[ -n $skip_why ]]; then
    result="skipped" by=$skip_why
  elif ! apply_mutant "$i"; then
    result="stale" by="the mutant no longer applies"
  elif ! build_targets ${builds[$i]}; then
    result="no-build" by="does not compile; see $logs/build.log"
  else
    result="survived" by="-"
    while IFS= read -r cmd; do
      [[ -n $cmd ]] || continue
      if ! by=$(run_test "$cmd" "$logs/$id.log"); then
        result="killed"
        break
      fi
      by="-"
    done <<<"${tests[$i]}"
  fi
  # Put the original back with a fresh time so that the next build recompiles it.
  cp "$work/original" "$f"
  touch "$f"
  case $result in
    killed) killed=$((killed + 1)) ;;
    survived) survived=$((survived + 1)) ;;
    skipped) skipped=$((skipped + 1)) ;;
    *) broken=$((broken + 1)) ;;
  esac
  secs=$(($(date +%s) - t0))
  printf '%-22s %-9s %s (%ss)\n' "$id" "$result" "$by" "$secs"
  results+=("| \`$id\` | \`${files[$i]}\` | ${whys[$i]} | **$result** | ${by//|/\\|} |")
done
# Leave the scratch build unmutated.
build_targets "${all_targets[@]}" || true

total=$(($(date +%s) - start))
{
  echo "| mutant | file | planted bug | result | killed by |"
  echo "|---|---|---|---|---|"
  printf '%s\n' "${results[@]}"
} >"$work/mutants.md"
printf '\nmutants: %d killed, %d survived, %d stale or not compiling, %d cannot be tested here, of %d, in %dm%02ds (table: %s)\n' \
  "$killed" "$survived" "$broken" "$skipped" "${#selected[@]}" $((total / 60)) $((total % 60)) "$work/mutants.md"
[[ $survived -eq 0 && $broken -eq 0 ]]
