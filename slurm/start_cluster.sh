#!/usr/bin/env bash
# Start a private, single-machine SLURM cluster (munged, MariaDB, slurmdbd, slurmctld, and
# one slurmd per compute node: $DP_HPC_SLURM_NODES of them, default 2, named dphpc-n1, dphpc-n2,
# ...) as root, without systemd, talking over loopback only. Idempotent: daemons that are
# already running (per their pidfiles) are left alone.
#
#   sudo slurm/start_cluster.sh && source /tmp/dp_hpc_slurm/env.sh
#
# State dir: $DP_HPC_SLURM_DIR (default /tmp/dp_hpc_slurm). See slurm/README.md.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=slurm/_common.sh
. "$HERE/_common.sh"

T0=$(now)
[[ $(id -u) -eq 0 ]] || { echo "start_cluster.sh: must run as root" >&2; exit 1; }

fail() { # fail MESSAGE [daemon...]: print message + log tails, exit 1
  local msg=$1 d lf; shift
  echo "start_cluster.sh: FAILED: $msg" >&2
  for d in "$@"; do
    lf=$(logfile_of "$d") || continue
    if [[ -f $lf ]]; then
      echo "----- last 30 lines of $lf -----" >&2
      tail -n 30 "$lf" >&2
    fi
  done
  exit 1
}

# wait_for SECONDS DESCRIPTION CMD...: retry CMD every 0.25 s until it succeeds
wait_for() {
  local limit=$1 what=$2 t; shift 2
  t=$(now)
  until "$@" >/dev/null 2>&1; do
    if awk -v a="$t" -v b="$(now)" -v l="$limit" 'BEGIN{exit !(b-a>l)}'; then
      return 1
    fi
    sleep 0.25
  done
  log "$what ready ($(elapsed "$t") s)"
}

mkdir -p "$DIR"; chmod 755 "$DIR"

# ---------------------------------------------------------------- packages
PKGS=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing: ${missing[*]}"
  # Keep the packages' maintainer scripts from starting the *system* munge/mariadb
  # services: that is what policy-rc.d is for (Docker images ship one already).
  tmp_policy=
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    tmp_policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' > "$tmp_policy"; chmod 755 "$tmp_policy"
    trap '[[ -n $tmp_policy ]] && rm -f "$tmp_policy"' EXIT
  fi
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" > "$DIR/apt.log" 2>&1; then
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } \
      >> "$DIR/apt.log" 2>&1 || { tail -n 30 "$DIR/apt.log" >&2; fail "apt-get install failed (log: $DIR/apt.log)"; }
  fi
  if [[ -n $tmp_policy ]]; then rm -f "$tmp_policy"; tmp_policy=; fi
  log "packages installed ($(elapsed "$T0") s)"
fi
for b in munged mungekey mariadbd mariadb-install-db slurmdbd slurmctld slurmd sbatch sacct sacctmgr; do
  command -v "$b" >/dev/null || fail "$b not found after install"
done

# ---------------------------------------------------------------- one start at a time
# (fd 9 is closed for every daemon started below, or they would hold the lock forever)
exec 9> "$DIR/.lock"
flock -w 120 9 || fail "could not lock $DIR/.lock"

# Compute nodes: several slurmd daemons on this one machine (`slurmd -N <node>`, each with its own
# port, spool, pid and log file: SLURM's multiple-slurmd mode), so that multi-node jobs really
# span nodes: srun starts a task per node, SLURM_NODEID and SLURMD_NODENAME differ.
NODES=${DP_HPC_SLURM_NODES:-2}
[[ $NODES =~ ^[1-8]$ ]] || fail "DP_HPC_SLURM_NODES must be 1-8, got '$NODES'"
NODE_NAMES=()
for i in $(seq 1 "$NODES"); do NODE_NAMES+=("$CLUSTER-n$i"); done
DAEMONS=(munged mariadbd slurmdbd slurmctld)
for n in "${NODE_NAMES[@]}"; do DAEMONS+=("slurmd@$n"); done

mkdir -p "$ETC" "$MUNGE_DIR" "$DB_DIR" "$DBD_DIR" "$CTLD_DIR/state" "$SLURMD_DIR"
chmod 755 "$ETC" "$MUNGE_DIR" "$DBD_DIR" "$CTLD_DIR" "$SLURMD_DIR"
for n in "${NODE_NAMES[@]}"; do mkdir -p "$SLURMD_DIR/$n/spool"; chmod 755 "$SLURMD_DIR/$n" "$SLURMD_DIR/$n/spool"; done
chown slurm:slurm "$DBD_DIR" "$CTLD_DIR" "$CTLD_DIR/state"
chmod 700 "$CTLD_DIR/state"
chown mysql:mysql "$DB_DIR"; chmod 750 "$DB_DIR"

declare -A PID
running=0
for d in "${DAEMONS[@]}"; do
  if p=$(ours_pid "$d"); then PID[$d]=$p; running=$((running + 1)); fi
done
if ((running == ${#DAEMONS[@]})); then
  log "all ${#DAEMONS[@]} daemons already running (pids: ${PID[*]})"
fi
ours_pid slurmd >/dev/null && fail "a slurmd of the older one-node layout is running; run stop_cluster.sh first"

# ---------------------------------------------------------------- ports
listening_ports() { ss -Hltn 2>/dev/null | awk '{n=split($4,a,":"); print a[n]}' | sort -un; }
port_free() { ! listening_ports | grep -qx "$1"; }
N_PORTS=$((3 + NODES))  # mariadb, slurmdbd, slurmctld, then one slurmd per node
pick_ports() { # N_PORTS consecutive free ports in 20000-32767 (below the ephemeral range)
  local base i ok try
  for try in $(seq 1 200); do
    base=$((20000 + (RANDOM % 1276) * 10))
    ok=1
    for i in $(seq 0 $((N_PORTS - 1))); do port_free $((base + i)) || { ok=0; break; }; done
    if ((ok)); then
      MYSQL_PORT=$base DBD_PORT=$((base + 1)) CTLD_PORT=$((base + 2)) SLURMD_PORT=$((base + 3))
      return 0
    fi
  done
  return 1
}
if [[ -f $PORTS_FILE ]]; then . "$PORTS_FILE"; fi
if ((running > 0)); then
  [[ -n ${MYSQL_PORT:-} ]] || fail "daemons are running but $PORTS_FILE is missing; run stop_cluster.sh first"
else
  reuse=0
  if [[ -n ${MYSQL_PORT:-} ]]; then
    reuse=1
    for i in $(seq 0 $((N_PORTS - 1))); do port_free $((MYSQL_PORT + i)) || reuse=0; done
    ((DBD_PORT == MYSQL_PORT + 1 && CTLD_PORT == MYSQL_PORT + 2 && SLURMD_PORT == MYSQL_PORT + 3)) || reuse=0
  fi
  ((reuse)) || pick_ports || fail "no free ports found"
  printf 'MYSQL_PORT=%s\nDBD_PORT=%s\nCTLD_PORT=%s\nSLURMD_PORT=%s\n' \
    "$MYSQL_PORT" "$DBD_PORT" "$CTLD_PORT" "$SLURMD_PORT" > "$PORTS_FILE"
fi
log "ports: mariadb=$MYSQL_PORT slurmdbd=$DBD_PORT slurmctld=$CTLD_PORT slurmd=$SLURMD_PORT-$((SLURMD_PORT + NODES - 1))"

# ---------------------------------------------------------------- config files
NODE=$(hostname -s)
# Lifetime of job credentials; also how long a requeued job waits before it may start
# again (measured here: default 120 s -> requeue ~122 s; 10 -> ~11-12 s; 5 -> ~6 s).
CRED_EXPIRE=${DP_HPC_SLURM_CRED_EXPIRE:-10}
[[ $CRED_EXPIRE =~ ^[0-9]+$ ]] || fail "DP_HPC_SLURM_CRED_EXPIRE must be an integer"
# NoInAddrAny/NoCtldInAddrAny make the daemons bind to the address the host name resolves
# to instead of 0.0.0.0. That is loopback-only exactly when the name resolves to 127.x;
# otherwise slurmd would listen on a public address that NodeAddr=127.0.0.1 cannot reach,
# so fall back to binding all addresses.
HOST_ADDR=$(getent ahostsv4 "$(hostname)" 2>/dev/null | awk 'NR==1{print $1}')
if [[ $HOST_ADDR == 127.* ]]; then
  COMM_LINE="CommunicationParameters=NoCtldInAddrAny,NoInAddrAny"
  DBD_COMM_LINE="CommunicationParameters=NoInAddrAny"
else
  log "WARNING: $(hostname) resolves to '${HOST_ADDR:-nothing}', not loopback: slurmctld/slurmd/slurmdbd will listen on all addresses"
  COMM_LINE="# CommunicationParameters: not set, $(hostname) does not resolve to loopback"
  DBD_COMM_LINE=$COMM_LINE
fi
# "NodeName=vm CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=..."
HW=$(env -u SLURM_CONF slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
[[ $HW == *CPUs=* && $HW == *RealMemory=* ]] || fail "unexpected 'slurmd -C' output: $HW"
# Test jobs mostly wait (imports, polling): let the node offer more CPU slots than it has cores,
# so that a coordinator job and several workers fit at once on a 2-core CI machine.
OVERRIDES_LINE="# SlurmdParameters: the node's real hardware"
if [[ -n ${DP_HPC_SLURM_CPUS:-} ]]; then
  [[ $DP_HPC_SLURM_CPUS =~ ^[1-9][0-9]*$ ]] || fail "DP_HPC_SLURM_CPUS must be a positive integer, got '$DP_HPC_SLURM_CPUS'"
  MEM=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<< "$HW")
  HW="CPUs=$DP_HPC_SLURM_CPUS Boards=1 SocketsPerBoard=1 CoresPerSocket=$DP_HPC_SLURM_CPUS ThreadsPerCore=1 RealMemory=$MEM"
  OVERRIDES_LINE="SlurmdParameters=config_overrides"
fi

if [[ ! -s $DBPASS_FILE ]]; then
  (umask 077; head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' > "$DBPASS_FILE")
fi
DBPASS=$(cat "$DBPASS_FILE")

write_if_changed() { # write_if_changed FILE (content on stdin)
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat > "$tmp"
  if [[ -f $1 ]] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 0; fi
  mv -f "$tmp" "$1"
  if ((running > 0)); then
    log "WARNING: $1 changed while daemons are running; run stop_cluster.sh + start_cluster.sh to apply"
  fi
}

write_if_changed "$SLURM_CONF_FILE" <<EOF
# Generated by slurm/start_cluster.sh -- private single-machine cluster. Do not edit.
ClusterName=$CLUSTER
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
$COMM_LINE
StateSaveLocation=$CTLD_DIR/state
SlurmdSpoolDir=$SLURMD_DIR/%n/spool
SlurmctldPidFile=$(pidfile_of slurmctld)
SlurmdPidFile=$SLURMD_DIR/%n/slurmd.pid
SlurmctldLogFile=$(logfile_of slurmctld)
SlurmdLogFile=$SLURMD_DIR/%n/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig=$ETC/plugstack.conf
MailProg=/bin/true
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=2,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
ReturnToService=2
JobRequeue=1
KillWait=5
$OVERRIDES_LINE
$(for i in "${!NODE_NAMES[@]}"; do
  echo "NodeName=${NODE_NAMES[$i]} NodeAddr=127.0.0.1 NodeHostname=$NODE Port=$((SLURMD_PORT + i)) $HW State=UNKNOWN"
done)
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
chmod 644 "$SLURM_CONF_FILE"
[[ -f $ETC/plugstack.conf ]] || : > "$ETC/plugstack.conf"

write_if_changed "$DBD_CONF_FILE" <<EOF
# Generated by slurm/start_cluster.sh. Must be owned by SlurmUser and mode 600.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$NODE
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
$DBD_COMM_LINE
SlurmUser=slurm
DebugLevel=info
LogFile=$(logfile_of slurmdbd)
PidFile=$(pidfile_of slurmdbd)
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=slurm
StoragePass=$DBPASS
StorageLoc=slurm_acct_db
EOF
chown slurm:slurm "$DBD_CONF_FILE"; chmod 600 "$DBD_CONF_FILE"

write_if_changed "$DB_CNF" <<EOF
# Generated by slurm/start_cluster.sh -- private MariaDB for slurmdbd only.
[client]
socket=$DB_SOCK
port=$MYSQL_PORT
[mariadbd]
user=mysql
datadir=$DB_DIR/data
socket=$DB_SOCK
port=$MYSQL_PORT
bind-address=127.0.0.1
pid-file=$(pidfile_of mariadbd)
log-error=$(logfile_of mariadbd)
skip-name-resolve
skip-log-bin
performance_schema=OFF
max_connections=50
innodb_buffer_pool_size=64M
innodb_log_file_size=64M
innodb_lock_wait_timeout=900
EOF
chmod 644 "$DB_CNF"

cat > "$ENV_FILE.tmp" <<EOF
# source me: points the SLURM client commands at the private cluster in $DIR
export SLURM_CONF=$SLURM_CONF_FILE
export DP_HPC_SLURM_DIR=$DIR
EOF
chmod 644 "$ENV_FILE.tmp"; mv -f "$ENV_FILE.tmp" "$ENV_FILE"

export SLURM_CONF=$SLURM_CONF_FILE   # this script and the daemons it starts only

# ---------------------------------------------------------------- munged
if [[ -z ${PID[munged]:-} ]]; then
  if [[ ! -s $MUNGE_KEY ]]; then mungekey --create --keyfile="$MUNGE_KEY"; fi
  chown root:root "$MUNGE_KEY"; chmod 600 "$MUNGE_KEY"
  rm -f "$MUNGE_SOCK" "$MUNGE_SOCK.lock" "$(pidfile_of munged)"
  munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_KEY" --pid-file="$(pidfile_of munged)" \
    --log-file="$(logfile_of munged)" --seed-file="$MUNGE_DIR/munged.seed" </dev/null 9>&- >> "$(logfile_of munged)" 2>&1 \
    || fail "munged did not start" munged
fi
wait_for 15 munged sh -c "munge -n -S '$MUNGE_SOCK' | unmunge -S '$MUNGE_SOCK'" \
  || fail "munged not answering on $MUNGE_SOCK" munged

# ---------------------------------------------------------------- mariadb
db_ping() { mariadb-admin --defaults-file="$DB_CNF" --protocol=socket -uroot ping; }
if [[ -z ${PID[mariadbd]:-} ]]; then
  if [[ ! -d $DB_DIR/data/mysql ]]; then
    log "initialising MariaDB datadir"
    rm -rf "$DB_DIR/data"
    mariadb-install-db --defaults-file="$DB_CNF" --auth-root-authentication-method=socket \
      --skip-test-db > "$DB_DIR/install-db.log" 2>&1 \
      || { tail -n 30 "$DB_DIR/install-db.log" >&2; fail "mariadb-install-db failed"; }
  fi
  rm -f "$(pidfile_of mariadbd)" "$DB_SOCK"
  setsid mariadbd --defaults-file="$DB_CNF" </dev/null 9>&- >> "$(logfile_of mariadbd)" 2>&1 &
fi
wait_for 60 mariadbd db_ping || fail "MariaDB not answering" mariadbd
wait_for 10 "mariadbd pidfile" ours_pid mariadbd || fail "MariaDB pidfile missing" mariadbd
mariadb --defaults-file="$DB_CNF" --protocol=socket -uroot <<EOF || fail "MariaDB user/db setup failed" mariadbd
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DBPASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

# ---------------------------------------------------------------- slurmdbd
if [[ -z ${PID[slurmdbd]:-} ]]; then
  rm -f "$(pidfile_of slurmdbd)"
  setsid slurmdbd </dev/null 9>&- >> "$(logfile_of slurmdbd)" 2>&1 || fail "slurmdbd did not start" slurmdbd
fi
wait_for 60 slurmdbd sacctmgr -n list cluster format=cluster || fail "slurmdbd not answering" slurmdbd
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >/dev/null || fail "sacctmgr add cluster failed" slurmdbd
  log "registered cluster $CLUSTER in slurmdbd"
fi
# Default association (root account + root user) is created by 'add cluster'; no
# AccountingStorageEnforce, so other users need no association.

# ---------------------------------------------------------------- slurmctld
if [[ -z ${PID[slurmctld]:-} ]]; then
  rm -f "$(pidfile_of slurmctld)"
  setsid slurmctld -f "$SLURM_CONF_FILE" </dev/null 9>&- >> "$(logfile_of slurmctld)" 2>&1 \
    || fail "slurmctld did not start" slurmctld
fi
wait_for 60 slurmctld sh -c 'scontrol ping | grep -q UP' || fail "slurmctld not answering" slurmctld

# ---------------------------------------------------------------- node names
# Multi-node jobs find their nodes by name (the job's node list: the torchrun rendezvous is on the
# first one), so the names must resolve: to 127.0.0.1, through a line appended to /etc/hosts that
# ends with $HOSTS_MARK (stop_cluster.sh removes it).
unresolved=()
for n in "${NODE_NAMES[@]}"; do getent ahostsv4 "$n" >/dev/null 2>&1 || unresolved+=("$n"); done
if ((${#unresolved[@]})); then
  printf '127.0.0.1 %s %s\n' "${unresolved[*]}" "$HOSTS_MARK" >> /etc/hosts \
    || fail "cannot add the node names ${unresolved[*]} to /etc/hosts"
  log "added ${unresolved[*]} (127.0.0.1) to /etc/hosts"
fi
for n in "${NODE_NAMES[@]}"; do
  [[ $(getent ahostsv4 "$n" | awk 'NR==1{print $1}') == 127.* ]] || fail "node name $n does not resolve to loopback"
done

# ---------------------------------------------------------------- slurmd, one per node
declare -A SLURMD_T
for n in "${NODE_NAMES[@]}"; do
  SLURMD_T[$n]=0
  if [[ -z ${PID[slurmd@$n]:-} ]]; then
    rm -f "$(pidfile_of "slurmd@$n")"
    SLURMD_T[$n]=$(date +%s)
    setsid slurmd -f "$SLURM_CONF_FILE" -N "$n" </dev/null 9>&- >> "$(logfile_of "slurmd@$n")" 2>&1 \
      || fail "slurmd of $n did not start" "slurmd@$n"
  fi
done
# idle, and registered by the slurmd we just started (slurmctld restores the node's old
# state from StateSaveLocation, so "idle" alone can predate the new slurmd)
node_idle() {
  local info st
  info=$(scontrol -o show node "$1") || return 1
  [[ $info =~ \ State=([A-Z_+]+) ]] && [[ ${BASH_REMATCH[1]} == IDLE ]] || return 1
  [[ $info =~ SlurmdStartTime=([0-9T:-]+) ]] || return 1
  st=$(date -d "${BASH_REMATCH[1]}" +%s) || return 1
  ((st >= SLURMD_T[$1] - 1))
}
for n in "${NODE_NAMES[@]}"; do
  wait_for 60 "node $n idle" node_idle "$n" \
    || { sinfo -N -l >&2 || true; fail "node $n not idle" "slurmd@$n" slurmctld; }
done
wait_for 30 sacct sacct -n -X -a -S now-1hour -o JobID \
  || fail "sacct not answering" slurmdbd slurmctld

for d in "${DAEMONS[@]}"; do
  ours_pid "$d" >/dev/null || fail "$d has no valid pidfile $(pidfile_of "$d")" "$d"
done
log "cluster $CLUSTER up in $(elapsed "$T0") s: nodes ${NODE_NAMES[*]} (state dir $DIR; source $ENV_FILE)"
