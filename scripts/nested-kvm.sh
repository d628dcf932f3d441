#!/usr/bin/env bash
# Runs a command on a real /dev/kvm on a machine that has none (docs/kvm-backend.md, "The nested
# KVM host"). Debian's own kernel boots under QEMU's TCG, which emulates an AMD CPU with SVM and
# nested paging, so kvm_amd loads there and offers /dev/kvm. The host's root is shared read-only
# over 9p; the current directory and every --share DIR are shared read-write at the same paths.
# COMMAND runs as root in the same directory, with BATON_KVM_FLAVOUR=nested-svm; its standard
# output and error come back on ours, as it writes them, and its exit status is ours.
#
#   nested-kvm.sh [--share DIR]... [--env NAME[=VALUE]]... [--timeout S] [--boot-timeout S]
#                 [--mem MIB] [--cache DIR] [--console FILE] [--verbose] -- COMMAND [ARG...]
#
# --timeout limits everything (boot included, default 600 s), --boot-timeout the boot alone
# (default 180 s); past either, QEMU is killed and the console's tail is printed.
# Environment passed to COMMAND: PATH, HOME, USER, LOGNAME, LANG, LC_*, TZ, TERM, every BATON_*
# variable, the names in NESTED_KVM_ENV (space-separated) and every --env.
# The kernel package (linux-image-amd64's dependency) is fetched with `apt-get download`, never
# installed; what the boot needs of it is cached in --cache DIR (default $NESTED_KVM_CACHE, else
# build/nested-kvm in the source tree), one directory per package version.
# Exit status: COMMAND's; 124 when the time limit ended it; 125 when the nested host could not
# run it (a missing package, a failed download, a boot that failed or hung).
# Needs (Debian): qemu-system-x86, busybox-static, cpio (scripts/install-deps.sh).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
shares=("$(pwd -P)")
envs=()
timeout_s=600
boot_timeout_s=180
mem=3072
cache=${NESTED_KVM_CACHE:-$here/../build/nested-kvm}
console_out=""
verbose=0

# Prints one `baton: nested-kvm:` error line and exits with 125 (the nested host failed).
die() {
  echo "baton: nested-kvm: $*" >&2
  exit 125
}

# Prints a progress line on stderr with --verbose.
note() {
  [ "$verbose" = 1 ] && echo "nested-kvm: $*" >&2
  return 0
}

while [ $# -gt 0 ]; do
  case "$1" in
    --share) [ -d "${2:-}" ] || die "--share ${2:-}: not a directory"; shares+=("$(cd "$2" && pwd -P)"); shift 2 ;;
    --env) [ -n "${2:-}" ] || die "--env needs NAME or NAME=VALUE"; envs+=("$2"); shift 2 ;;
    --timeout) timeout_s=$2; shift 2 ;;
    --boot-timeout) boot_timeout_s=$2; shift 2 ;;
    --mem) mem=$2; shift 2 ;;
    --cache) cache=$2; shift 2 ;;
    --console) console_out=$2; shift 2 ;;
    --verbose | -v) verbose=1; shift ;;
    --) shift; break ;;
    *) die "unknown option '$1' (usage: nested-kvm.sh [--share DIR]... [--env NAME[=VALUE]]... [--timeout S] [--boot-timeout S] [--mem MIB] [--cache DIR] [--console FILE] [--verbose] -- COMMAND...)" ;;
  esac
done
[ $# -gt 0 ] || die "no command given (nested-kvm.sh [OPTIONS] -- COMMAND...)"
for n in "$timeout_s" "$boot_timeout_s" "$mem"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive whole number"
done

# --- What the host needs -------------------------------------------------------------------
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing: apt-get install qemu-system-x86"
command -v cpio >/dev/null || die "cpio is missing: apt-get install cpio"
busybox=/bin/busybox
# A dynamic busybox (package busybox) cannot run in an initramfs without its libraries.
{ [ -x "$busybox" ] && ! ldd "$busybox" >/dev/null 2>&1; } ||
  die "a static $busybox is missing: apt-get install busybox-static"
command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null || die "apt-get and dpkg-deb are needed (a Debian host)"

# --- The kernel, cached by package version ---------------------------------------------------
mkdir -p "$cache" || die "cannot create the cache directory $cache"
cache=$(cd "$cache" && pwd -P)
# The metapackage depends on exactly one version of the kernel package: "linux-image-V (= X)".
# apt-cache takes seconds, so the answer is kept until the package lists change.
lists_stamp=$(stat -c %Y /var/lib/apt/lists 2>/dev/null || echo 0)
pkg="" ver=""
if [ -s "$cache/resolved" ] && [ "$(head -n1 "$cache/resolved")" = "$lists_stamp" ]; then
  read -r pkg ver < <(sed -n 2p "$cache/resolved") || true
else
  read -r pkg ver < <(apt-cache show --no-all-versions linux-image-amd64 2>/dev/null |
    sed -n 's/^Depends:.*\(linux-image-[0-9][^ ,]*\) (= \([^)]*\)).*/\1 \2/p' | head -n1) || true
  [ -z "$ver" ] || { printf '%s\n%s %s\n' "$lists_stamp" "$pkg" "$ver" >"$cache/resolved.$$" &&
    mv "$cache/resolved.$$" "$cache/resolved"; }
fi
if [ -n "$ver" ]; then
  kdir="$cache/${pkg}_${ver//:/%3a}"
else
  # No package lists (apt-get update never ran): a kernel cached earlier still serves.
  kdir=$(ls -d "$cache"/linux-image-*/ 2>/dev/null | sort -V | tail -n1)
  kdir=${kdir%/}
  [ -n "$kdir" ] && [ -e "$kdir/complete" ] ||
    die "cannot resolve the kernel package of linux-image-amd64 (run apt-get update)"
  note "apt cannot resolve linux-image-amd64; using the cached $(basename "$kdir")"
fi

# Modules the nested host loads: KVM for AMD, virtio PCI and the 9p file system; the
# dependencies are added from each module's own modinfo, so the order is always loadable.
roots="kvm_amd virtio_pci 9pnet_virtio 9p"

# Fills $kdir from the kernel package: vmlinuz, the modules in load order (uncompressed) and
# modules.order; run under the cache lock.
fetch_kernel() {
  local tmp="$kdir.tmp.$$" log
  rm -rf "$kdir" "$kdir".tmp.* && mkdir -p "$tmp/deb"
  note "fetching $pkg $ver with apt-get download (once per version)"
  if ! log=$(cd "$tmp/deb" && apt-get download -q "$pkg" 2>&1); then
    rm -rf "$tmp"
    die "apt-get download $pkg failed: $(printf '%s\n' "$log" | grep -E '^(E|Err):' | tail -n1)"
  fi
  dpkg-deb -x "$tmp"/deb/*.deb "$tmp/x" || { rm -rf "$tmp"; die "dpkg-deb -x of $pkg failed"; }
  local mroot
  mroot=$(ls -d "$tmp"/x/lib/modules/*/kernel | head -n1)
  cp "$(ls "$tmp"/x/boot/vmlinuz-* | head -n1)" "$tmp/vmlinuz"
  # TCG takes about 10 s to decompress an xz bzImage; QEMU boots the uncompressed ELF kernel
  # directly through its PVH entry, so keep that when the kernel has one.
  local off
  off=$(LC_ALL=C grep -abo $'\xfd7zXZ' "$tmp/vmlinuz" | head -n1 | cut -d: -f1) || true
  if [ -n "$off" ] && grep -q '^CONFIG_PVH=y' "$tmp"/x/boot/config-* && command -v xz >/dev/null &&
     { tail -c +$((off + 1)) "$tmp/vmlinuz" || true; } | xz -dcq --single-stream >"$tmp/vmlinux" 2>/dev/null &&
     [ "$(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ]; then
    rm "$tmp/vmlinuz"
  else
    rm -f "$tmp/vmlinux"
    note "booting the compressed kernel (no xz or no PVH entry): about 10 s slower"
  fi
  declare -A path_of=()
  local f n
  while IFS= read -r f; do
    n=$(basename "$f"); n=${n%%.ko*}; path_of[${n//-/_}]=$f
  done < <(find "$mroot" -name '*.ko*')
  mkdir -p "$tmp/modules"
  declare -A seen=()
  # Appends module $1 after its dependencies.
  add_module() {
    local m=${1//-/_} d deps file
    [ -z "${seen[$m]:-}" ] || return 0
    seen[$m]=1
    file=${path_of[$m]:-}
    [ -n "$file" ] || { rm -rf "$tmp"; die "module $m is not in $pkg"; }
    case "$file" in
      *.ko) cp "$file" "$tmp/modules/$m.ko" ;;
      *.ko.xz) xz -dcq "$file" >"$tmp/modules/$m.ko" || die "cannot decompress $file (apt-get install xz-utils)" ;;
      *.ko.gz) "$busybox" zcat "$file" >"$tmp/modules/$m.ko" ;;
      *.ko.zst) command -v zstd >/dev/null || die "$pkg has zstd modules: apt-get install zstd"
        zstd -dcq "$file" >"$tmp/modules/$m.ko" ;;
    esac
    deps=$(tr '\0' '\n' <"$tmp/modules/$m.ko" | sed -n 's/^depends=//p' | head -n1)
    for d in ${deps//,/ }; do add_module "$d"; done
    echo "$m" >>"$tmp/modules.order"
  }
  for n in $roots; do add_module "$n"; done
  rm -rf "$tmp/deb" "$tmp/x"
  touch "$tmp/complete" && mv "$tmp" "$kdir"
}

if [ ! -e "$kdir/complete" ]; then
  exec 9>"$cache/.lock"
  flock 9
  [ -e "$kdir/complete" ] || fetch_kernel
  flock -u 9
  exec 9>&-
fi

# --- The run's own files: initramfs and control share ----------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/nested-kvm.XXXXXX")
qpid=""
tails=()
# Stops QEMU and the output followers, and removes the run's files.
cleanup() {
  [ -z "$qpid" ] || { kill -KILL "$qpid" 2>/dev/null; wait "$qpid" 2>/dev/null; } || true
  for t in "${tails[@]}"; do kill "$t" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

ir="$work/initramfs"
ctl="$work/ctl"
mkdir -p "$ir/bin" "$ir/modules" "$ir/proc" "$ir/sys" "$ir/dev" "$ir/host" "$ir/ctl" "$ctl"
cp "$busybox" "$ir/bin/busybox"
ln -s busybox "$ir/bin/sh"
cp "$kdir"/modules/*.ko "$kdir/modules.order" "$ir/modules/"

# The init script: load the modules, mount the shares, check /dev/kvm, run the job, power off.
# Failures are written to the control share (and the console), never left to a timeout.
cat >"$ir/init" <<'EOF'
#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc && mount -t sysfs sys /sys && mount -t devtmpfs dev /dev
fail() {
  echo "nested-kvm: error: $*"
  [ -d /ctl/ok ] && echo "$*" >/ctl/error
  poweroff -f
}
for m in $(cat /modules/modules.order); do
  case $m in
    kvm) insmod /modules/kvm.ko tdp_mmu=0 ;;  # the shadow MMU: kvm_mmu_set_spte fires
    *) insmod /modules/$m.ko ;;
  esac || fail "insmod $m failed"
done
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 ctl /ctl || fail "cannot mount the control share"
mkdir -p /ctl/ok
echo booted >/ctl/booted
[ -c /dev/kvm ] || fail "kvm_amd loaded but there is no /dev/kvm: $(dmesg | grep -i -E 'kvm|svm' | tail -n 3)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,ro,cache=loose hostroot /host ||
  fail "cannot mount the host's root"
mount -t proc proc /host/proc && mount -t sysfs sys /host/sys && mount -o bind /dev /host/dev &&
  mount -t tmpfs -o mode=1777 tmp /host/tmp && mount -t tmpfs run /host/run || fail "cannot mount /proc, /sys, /dev, /tmp or /run"
mkdir -p /host/dev/shm /host/dev/pts /host/run/nested-kvm
mount -t tmpfs -o mode=1777 shm /host/dev/shm; mount -t devpts devpts /host/dev/pts
mount -t tracefs tracefs /host/sys/kernel/tracing 2>/dev/null
mount -o bind /ctl /host/run/nested-kvm
while read -r tag dir; do
  mkdir -p "/host$dir" 2>/dev/null
  mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "$tag" "/host$dir" || fail "cannot mount the share $dir"
done </ctl/shares
echo "nested-kvm: running the command"
chroot /host /bin/bash /run/nested-kvm/job </dev/null >/ctl/stdout 2>/ctl/stderr
echo $? >/ctl/status.tmp && mv /ctl/status.tmp /ctl/status
sync
poweroff -f
EOF
chmod +x "$ir/init"
(cd "$ir" && find . | cpio -o -H newc --quiet >"$work/initrd") || die "cpio could not build the initramfs"

# Shares: parents before children, and none inside another (it is writable already).
qemu_shares=(-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
             -virtfs "local,path=${ctl//,/,,},mount_tag=ctl,security_model=none,multidevs=remap")
mapfile -t sorted < <(printf '%s\n' "${shares[@]}" | sort -u)
kept=()
for d in "${sorted[@]}"; do
  inside=0
  for k in "${kept[@]}"; do case "$d/" in "$k"/*) inside=1 ;; esac; done
  # The root is shared read-only already; a writable root would expose the whole host.
  [ "$d" = / ] || [ $inside = 1 ] || kept+=("$d")
done
i=0
: >"$ctl/shares"
for d in "${kept[@]}"; do
  qemu_shares+=(-virtfs "local,path=${d//,/,,},mount_tag=share$i,security_model=none,multidevs=remap")
  echo "share$i $d" >>"$ctl/shares"
  i=$((i + 1))
done

# The job: the environment, the working directory and the command, quoted for bash.
{
  echo "# written by nested-kvm.sh"
  names=(PATH HOME USER LOGNAME LANG TZ TERM ${NESTED_KVM_ENV:-})
  names+=($(compgen -e | grep -E '^(LC_|BATON_)' || true))
  for n in "${names[@]}"; do
    [ -z "${!n+x}" ] || printf 'export %s=%q\n' "$n" "${!n}"
  done
  for e in "${envs[@]}"; do
    if [[ "$e" == *=* ]]; then printf 'export %s=%q\n' "${e%%=*}" "${e#*=}"
    elif [ -n "${!e+x}" ]; then printf 'export %s=%q\n' "$e" "${!e}"; fi
  done
  echo "export BATON_KVM_FLAVOUR=nested-svm NESTED_KVM=1"
  printf 'cd %q || exit 125\n' "$PWD"
  printf 'exec'; printf ' %q' "$@"; echo
} >"$ctl/job"
: >"$ctl/stdout"
: >"$ctl/stderr"

# --- Boot, follow, wait ----------------------------------------------------------------------
note "booting $(basename "$kdir") under QEMU TCG (-cpu max, -smp 1, ${mem} MiB)"
qemu-system-x86_64 -accel tcg -cpu max -smp 1 -m "$mem" -nodefaults -no-user-config \
  -display none -monitor none -serial "file:$work/console" -no-reboot \
  -kernel "$(ls "$kdir"/vmlinux "$kdir"/vmlinuz 2>/dev/null | head -n1)" -initrd "$work/initrd" \
  -append "console=ttyS0 ${NESTED_KVM_APPEND:-quiet} panic=-1 mitigations=off" \
  "${qemu_shares[@]}" </dev/null >"$work/qemu.log" 2>&1 &
qpid=$!
tail -n +1 -s 0.2 --pid="$qpid" -f "$ctl/stdout" &
tails+=($!)
tail -n +1 -s 0.2 --pid="$qpid" -f "$ctl/stderr" >&2 &
tails+=($!)

# Prints the console's last lines (without the firmware's escape codes) on stderr.
console_tail() {
  if [ -s "$work/console" ]; then
    echo "nested-kvm: console tail:" >&2
    tr -d '\r' <"$work/console" | sed 's/\x1b\[[0-9;?]*[A-Za-z]//g; s/\x1bc//g' | tail -n 20 | sed 's/^/  | /' >&2
  else
    echo "nested-kvm: the console is empty (the kernel had printed nothing)" >&2
  fi
  [ ! -s "$work/qemu.log" ] || sed 's/^/  qemu: /' "$work/qemu.log" | tail -n 5 >&2
}

t0=$(date +%s%N)
booted_ms=""
ms() { echo $((($(date +%s%N) - t0) / 1000000)); }
outcome=""
while :; do
  if [ -z "$booted_ms" ] && [ -e "$ctl/booted" ]; then
    booted_ms=$(ms)
    note "booted in $((booted_ms / 1000)).$((booted_ms % 1000 / 100)) s"
  fi
  [ ! -e "$ctl/status" ] || { outcome=done; break; }
  [ ! -s "$ctl/error" ] || { outcome=error; break; }
  kill -0 "$qpid" 2>/dev/null || { outcome=died; break; }
  now=$(ms)
  [ -n "$booted_ms" ] || [ "$now" -lt $((boot_timeout_s * 1000)) ] || { outcome=boot-timeout; break; }
  [ "$now" -lt $((timeout_s * 1000)) ] || { outcome=timeout; break; }
  sleep 0.2
done
total_ms=$(ms)

# After the job QEMU powers off by itself: give it a moment. Otherwise stop it at once.
if [ "$outcome" = done ]; then
  for _ in $(seq 50); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.1; done
fi
kill -KILL "$qpid" 2>/dev/null || true
wait "$qpid" 2>/dev/null || true
for t in "${tails[@]}"; do wait "$t" 2>/dev/null || true; done
tails=()
qpid=""
[ -z "$console_out" ] || cp "$work/console" "$console_out"

case $outcome in
  done)
    rc=$(cat "$ctl/status")
    note "command exit $rc; boot $((booted_ms / 1000)).$((booted_ms % 1000 / 100)) s, total $((total_ms / 1000)).$((total_ms % 1000 / 100)) s"
    exit "$rc" ;;
  error) echo "baton: nested-kvm: the nested host failed: $(head -n1 "$ctl/error")" >&2; console_tail; exit 125 ;;
  died) echo "baton: nested-kvm: the nested host stopped before the command finished (QEMU exited)" >&2; console_tail; exit 125 ;;
  boot-timeout) echo "baton: nested-kvm: the nested host did not boot within ${boot_timeout_s} s (--boot-timeout)" >&2; console_tail; exit 125 ;;
  timeout) echo "baton: nested-kvm: the command did not finish within ${timeout_s} s, boot included (--timeout); QEMU was killed" >&2; console_tail; exit 124 ;;
esac
