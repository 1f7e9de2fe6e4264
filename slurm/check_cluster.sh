#!/usr/bin/env bash
# Smoke check of the private SLURM cluster (run after start_cluster.sh):
#   1. a 2-task sbatch array (--array=0-1) writing files; both tasks COMPLETED in sacct
#   2. 'scontrol requeue' of a running job: it runs again and completes (timed)
#   3. 'scancel --batch --signal=USR2' reaches a batch script that traps USR2 (timed)
#   4. with several nodes: a job with one task per node runs on every node (timed)
# Exits non-zero on the first failure. Prints timings.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/_common.sh
. "$HERE/_common.sh"

[[ -f $ENV_FILE ]] || { echo "check_cluster.sh: $ENV_FILE missing; run start_cluster.sh" >&2; exit 1; }
# shellcheck disable=SC1090
. "$ENV_FILE"
T0=$(now)
W=$DIR/check/$(date +%Y%m%d-%H%M%S)-$$
mkdir -p "$W"; chmod 755 "$W"
JOBS=()
cleanup() { ((${#JOBS[@]})) && scancel "${JOBS[@]}" 2>/dev/null || true; }
trap cleanup EXIT

fail() {
  echo "check_cluster.sh: FAILED: $*" >&2
  squeue >&2 || true
  echo "----- job output files in $W -----" >&2
  tail -n 20 "$W"/*.out 2>/dev/null >&2 || true
  echo "----- last 15 lines of slurmctld.log -----" >&2
  tail -n 15 "$(logfile_of slurmctld)" >&2 || true
  exit 1
}
# wait_until SECONDS DESCRIPTION CMD...: poll every 0.2 s
wait_until() {
  local limit=$1 what=$2 t; shift 2
  t=$(now)
  until "$@" >/dev/null 2>&1; do
    awk -v a="$t" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b-a>l)}' && fail "timeout (${limit}s): $what"
    sleep 0.2
  done
}
# sacct_states JOBID: "jobid|state" lines, allocations only
sacct_states() { sacct -n -X -P -j "$1" -o JobID,State 2>/dev/null; }
all_completed() { # all_completed JOBID N: exactly N allocations, all COMPLETED
  local s; s=$(sacct_states "$1")
  [[ $(grep -c . <<<"$s") -eq $2 ]] && ! grep -qv '|COMPLETED$' <<<"$s"
}
job_state() { squeue -h -j "$1" -o %T 2>/dev/null; }

echo "== SLURM $(sinfo -V | awk '{print $2}') cluster $(scontrol show config | awk '/^ClusterName/{print $3}'), state dir $DIR, workdir $W"
sinfo -N -o '%N %T %c %m'

# ---------------------------------------------------------------- 1. array job
t=$(now)
jid=$(sbatch --parsable --array=0-1 -J chk_array -D "$W" -o "$W/array_%A_%a.out" \
  --wrap 'echo "task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname)" > task_$SLURM_ARRAY_TASK_ID.txt')
JOBS+=("$jid")
wait_until 90 "array job $jid: both tasks COMPLETED in sacct" all_completed "$jid" 2
for i in 0 1; do
  grep -q "task $i of job $jid" "$W/task_$i.txt" 2>/dev/null || fail "array task $i did not write task_$i.txt"
done
echo "[ok] array job $jid: tasks ${jid}_0 and ${jid}_1 COMPLETED in sacct, files written; submit->both COMPLETED in sacct: $(elapsed "$t") s"
sacct_states "$jid" | sed 's/^/     /'

# ---------------------------------------------------------------- 2. requeue
cat > "$W/requeue.sh" <<EOF
#!/bin/bash
#SBATCH -J chk_requeue
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH -o $W/requeue.out
n=\${SLURM_RESTART_COUNT:-0}
echo "run \$n start \$(date +%s.%N)" >> $W/requeue.log
if [ "\$n" -ge 1 ]; then echo "run \$n done" >> $W/requeue.log; exit 0; fi
touch $W/requeue.running
sleep 600
EOF
t=$(now)
jid=$(sbatch --parsable "$W/requeue.sh"); JOBS+=("$jid")
wait_until 60 "requeue job $jid running" test -e "$W/requeue.running"
echo "     requeue job $jid running after $(elapsed "$t") s"
t=$(now)
scontrol requeue "$jid"
wait_until 30 "requeue job $jid leaves RUNNING" sh -c "[ \"\$(squeue -h -j $jid -o %T)\" != RUNNING ]"
t_left=$(elapsed "$t")
wait_until 300 "requeued job $jid starts again" grep -q '^run 1 start' "$W/requeue.log"
t_again=$(elapsed "$t")
wait_until 60 "requeued job $jid COMPLETED in sacct" all_completed "$jid" 1
t_done=$(elapsed "$t")
restarts=$(scontrol show job "$jid" 2>/dev/null | grep -o 'Restarts=[0-9]*' || echo 'Restarts=?')
echo "[ok] requeue of job $jid ($restarts): not RUNNING after ${t_left} s, running again after ${t_again} s, COMPLETED in sacct after ${t_done} s (from 'scontrol requeue')"
sacct -n -D -X -P -j "$jid" -o JobID,State,Start,End | sed 's/^/     /'

# ---------------------------------------------------------------- 3. USR2 to the batch script
cat > "$W/usr2.sh" <<EOF
#!/bin/bash
#SBATCH -J chk_usr2
#SBATCH -o $W/usr2.out
trap 'echo "got USR2 \$(date +%s.%N)" > $W/usr2.txt; kill \$SP 2>/dev/null; exit 0' USR2
sleep 600 & SP=\$!
touch $W/usr2.ready
wait \$SP
echo "no USR2" > $W/usr2.txt
exit 3
EOF
jid=$(sbatch --parsable "$W/usr2.sh"); JOBS+=("$jid")
wait_until 60 "USR2 job $jid running" test -e "$W/usr2.ready"
t=$(now)
# Without --batch (-b) or --full, scancel does not signal the batch shell (see man scancel)
scancel --batch --signal=USR2 "$jid"
wait_until 30 "batch script of job $jid received USR2" test -s "$W/usr2.txt"
t_sig=$(elapsed "$t")
grep -q 'got USR2' "$W/usr2.txt" || fail "job $jid: $(cat "$W/usr2.txt")"
wait_until 60 "USR2 job $jid COMPLETED in sacct" all_completed "$jid" 1
echo "[ok] 'scancel --batch --signal=USR2 $jid' reached the trap after ${t_sig} s; job COMPLETED in sacct after $(elapsed "$t") s"

# ---------------------------------------------------------------- 4. a job on every node
nodes=$(sinfo -h -N -o %N | sort -u)
n_nodes=$(grep -c . <<<"$nodes")
if ((n_nodes >= 2)); then
  t=$(now)
  # one task per node: each writes the node it ran on, and the first node's name must resolve
  # (multi-node jobs meet at a rendezvous on it)
  jid=$(sbatch --parsable -N "$n_nodes" --ntasks-per-node=1 -J chk_nodes -D "$W" -o "$W/nodes.out" \
    --wrap 'srun bash -c "echo \$SLURMD_NODENAME > node_\$SLURM_NODEID.txt"; getent hosts $(scontrol show hostnames $SLURM_JOB_NODELIST | head -n 1) > first_node.txt')
  JOBS+=("$jid")
  wait_until 90 "$n_nodes-node job $jid COMPLETED in sacct" all_completed "$jid" 1
  ran=$(cat "$W"/node_*.txt 2>/dev/null | sort -u)
  [[ $ran == "$nodes" ]] || fail "$n_nodes-node job $jid ran on '$(echo $ran)', not on every node ($(echo $nodes))"
  [[ $(awk '{print $1}' "$W/first_node.txt" 2>/dev/null) == 127.* ]] || fail "the first node's name does not resolve to loopback"
  echo "[ok] $n_nodes-node job $jid: one task on each of $(echo $nodes); COMPLETED in sacct after $(elapsed "$t") s"
else
  echo "[--] one node only: no multi-node check"
fi

JOBS=()
echo "== all checks passed in $(elapsed "$T0") s"
