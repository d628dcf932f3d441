#!/usr/bin/env bash
# Starts a real single-node Slurm (munged, slurmctld, slurmd from Debian's munge and slurm-wlm)
# under a temporary directory, runs a small campaign through `baton campaign slurm` as an array
# of shards plus a dependent merge, and checks that the merged summary equals the unsharded
# local run byte for byte. Tears everything down. Exit 77 with the reason only where the
# daemons cannot start. Settings: docs/user-guide.md, "Campaigns on a cluster".
set -u
BATON=${1:?usage: slurm_test.sh BATON}
skip() { echo "SKIPPED: $*"; exit 77; }
die() { echo "FAILED: $*"; for f in "$T"/*.log "$T"/c/logs/*; do [ -f "$f" ] && { echo "--- $f"; tail -n 15 "$f"; }; done; exit 1; }

[ "$(id -u)" -eq 0 ] || skip "a single-node Slurm needs root (slurmd, and munged as user munge)"
for b in munged slurmctld slurmd sbatch squeue scontrol runuser; do
  command -v "$b" >/dev/null || skip "$b is not installed (Debian packages munge and slurm-wlm; scripts/install-deps.sh)"
done
id munge >/dev/null 2>&1 || skip "there is no user munge (the munge package creates it)"

T=$(mktemp -d /tmp/baton-slurm-XXXXXX)
chmod 755 "$T"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
  [ -f "$T/munge/munged.pid" ] && kill "$(cat "$T/munge/munged.pid")" 2>/dev/null
  sleep 0.2
  rm -rf "$T"
}
trap cleanup EXIT

# munge: its own key and socket, in a directory of mode 755 owned by munge.
mkdir -p "$T/munge"
head -c 1024 /dev/urandom >"$T/munge/munge.key"
chown -R munge:munge "$T/munge"
chmod 755 "$T/munge"
chmod 400 "$T/munge/munge.key"
runuser -u munge -- munged -S "$T/munge/munge.socket.2" --key-file="$T/munge/munge.key" \
  --pid-file="$T/munge/munged.pid" --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed" \
  >"$T/munged.out" 2>&1 || skip "munged did not start: $(tail -n 3 "$T/munged.out" "$T/munge/munged.log" 2>/dev/null | tr '\n' ' ')"

HOST=$(hostname -s)
PORT=$((20000 + RANDOM % 20000))
CPUS=$(nproc)
mkdir -p "$T/state" "$T/spool"
cat >"$T/slurm.conf" <<CONF
ClusterName=baton
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$T/munge/munge.socket.2
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
ReturnToService=2
SlurmctldPort=$PORT
SlurmdPort=$((PORT + 1))
StateSaveLocation=$T/state
SlurmdSpoolDir=$T/spool
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=4096 State=UNKNOWN
PartitionName=debug Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
CONF
export SLURM_CONF=$T/slurm.conf
slurmctld -D -i -f "$SLURM_CONF" >"$T/slurmctld.out" 2>&1 &
PIDS+=($!)
slurmd -D -f "$SLURM_CONF" >"$T/slurmd.out" 2>&1 &
PIDS+=($!)
ok=0
for _ in $(seq 1 100); do
  if scontrol show node "$HOST" 2>/dev/null | grep -q "State=IDLE"; then ok=1; break; fi
  for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null || skip "a Slurm daemon exited at start: $(tail -n 3 "$T"/slurm*.out "$T"/slurm*.log 2>/dev/null | tr '\n' ' ')"; done
  sleep 0.1
done
[ $ok -eq 1 ] || skip "the node never became idle: $(tail -n 3 "$T/slurmd.log" "$T/slurmctld.log" 2>/dev/null | tr '\n' ' ')"

# The campaign: 12 sampled faults, local and as an array of 3 shards.
cd "$T" || exit 1
"$BATON" campaign plan memtouch --mem 16M -p size=1M -p passes=2 --method local-adopt,local-lazy \
  --samples 12 --seed 3 -o "$T/p.plan" --quiet >/dev/null || die "campaign plan failed"
"$BATON" campaign run "$T/p.plan" -o "$T/local.jsonl" --quiet >/dev/null || die "the local run failed"
"$BATON" campaign merge "$T/local.jsonl" --plan "$T/p.plan" -o "$T/local.json" --quiet >/dev/null || die "the local merge failed"
"$BATON" campaign slurm "$T/p.plan" --chunk 4 --dir "$T/c" --mem 200M --time 00:05:00 || die "campaign slurm failed"
for _ in $(seq 1 600); do
  [ -s "$T/c/summary.json" ] && [ -z "$(squeue -h 2>/dev/null)" ] && break
  sleep 0.2
done
[ -s "$T/c/summary.json" ] || die "no summary from the merge job within 120 s"
ls "$T"/c/results-*.jsonl | wc -l | grep -qx 3 || die "expected 3 shard result files"
cmp "$T/local.json" "$T/c/summary.json" || die "the sharded summary differs from the local one"
echo "PASSED: 3 array tasks and the merge job gave the local run's summary, byte for byte"
