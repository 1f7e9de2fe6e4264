#!/usr/bin/env bash
# Stop the private SLURM cluster started by start_cluster.sh: cancel all jobs, then stop
# exactly the daemons named in its pidfiles (every node's slurmd, slurmctld, slurmdbd, mariadbd,
# munged, in that order) and wait for them to exit, and remove the node names it added to
# /etc/hosts. Other processes are left alone. Idempotent.
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/_common.sh
. "$HERE/_common.sh"

T0=$(now)
[[ $(id -u) -eq 0 ]] || { echo "stop_cluster.sh: must run as root" >&2; exit 1; }
if [[ ! -d $DIR ]]; then log "nothing to stop ($DIR does not exist)"; exit 0; fi
exec 9> "$DIR/.lock"
flock -w 120 9 || { echo "stop_cluster.sh: could not lock $DIR/.lock" >&2; exit 1; }
export SLURM_CONF=$SLURM_CONF_FILE
rc=0

# ---------------------------------------------------------------- cancel all jobs
if ours_pid slurmctld >/dev/null && [[ -f $SLURM_CONF_FILE ]]; then
  users=$(squeue -h -o %u 2>/dev/null | sort -u)
  if [[ -n $users ]]; then
    log "cancelling all jobs of: $(echo $users)"
    for u in $users; do scancel -u "$u" || true; done
    t=$(now)
    # wait until no job is left (KillWait=5, so this is quick) so that slurmdbd records
    # the final states before it goes away
    while [[ -n $(squeue -h -o %A 2>/dev/null) ]]; do
      if awk -v a="$t" -v b="$(now)" 'BEGIN{exit !(b-a>60)}'; then
        log "WARNING: jobs still listed 60 s after scancel:"; squeue >&2; rc=1; break
      fi
      sleep 0.5
    done
    log "jobs gone ($(elapsed "$t") s)"
  fi
fi

# ---------------------------------------------------------------- stop daemons
stop_daemon() { # stop_daemon NAME TIMEOUT_S
  local name=$1 limit=$2 pid t pf
  pf=$(pidfile_of "$name")
  if ! pid=$(ours_pid "$name"); then
    [[ -e $pf ]] && { log "$name: stale pidfile removed"; rm -f "$pf"; }
    return 0
  fi
  t=$(now)
  kill -TERM "$pid" 2>/dev/null || true
  while [[ -d /proc/$pid ]] && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]]; do
    if awk -v a="$t" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b-a>l)}'; then
      log "$name (pid $pid) ignored SIGTERM for ${limit}s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      sleep 0.5
      rc=1
      break
    fi
    sleep 0.2
  done
  rm -f "$pf"
  log "$name (pid $pid) stopped ($(elapsed "$t") s)"
}
# slurmstepd processes of our slurmd carry our SLURM_CONF in their environment
our_stepds() {
  local p
  for p in $(pgrep -x slurmstepd 2>/dev/null); do
    { tr '\0' '\n' < "/proc/$p/environ"; } 2>/dev/null | grep -qxF "SLURM_CONF=$SLURM_CONF_FILE" && echo "$p"
  done
  return 0
}
# let step daemons of just-ended jobs finish their cleanup before slurmd goes
t=$(now)
while [[ -n $(our_stepds) ]]; do
  awk -v a="$t" -v b="$(now)" 'BEGIN{exit !(b-a>15)}' && break
  sleep 0.2
done
# one slurmd per node of the generated slurm.conf, and the single slurmd of the older layout
for n in $(cluster_nodes); do stop_daemon "slurmd@$n" 30; done
stop_daemon slurmd 30
for p in $(our_stepds); do
  log "WARNING: killing leftover slurmstepd $p"; kill -KILL "$p" 2>/dev/null || true; rc=1
done
stop_daemon slurmctld 30
stop_daemon slurmdbd 30
stop_daemon mariadbd 60
stop_daemon munged 15
rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock"

# the node names start_cluster.sh added to /etc/hosts (rewritten in place, not replaced: in a
# container /etc/hosts is often a bind mount)
if grep -qF -- "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
  kept=$(grep -vF -- "$HOSTS_MARK" /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts && log "node names removed from /etc/hosts" || rc=1
fi

log "cluster stopped in $(elapsed "$T0") s"
exit $rc
