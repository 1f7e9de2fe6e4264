# Shared helpers for start_cluster.sh / stop_cluster.sh / check_cluster.sh.
# Sourced, never executed. Defines paths under the state dir and pidfile helpers.

DIR=${DP_HPC_SLURM_DIR:-/tmp/dp_hpc_slurm}
DIR=${DIR%/}
CLUSTER=${DP_HPC_SLURM_CLUSTER:-dphpc}

ETC=$DIR/etc
SLURM_CONF_FILE=$ETC/slurm.conf
DBD_CONF_FILE=$ETC/slurmdbd.conf
PORTS_FILE=$ETC/ports.env
DBPASS_FILE=$ETC/db_password
MUNGE_DIR=$DIR/munge
MUNGE_SOCK=$MUNGE_DIR/munged.sock
MUNGE_KEY=$MUNGE_DIR/munge.key
DB_DIR=$DIR/mariadb
DB_CNF=$DB_DIR/my.cnf
DB_SOCK=$DB_DIR/mariadbd.sock
DBD_DIR=$DIR/slurmdbd
CTLD_DIR=$DIR/slurmctld
SLURMD_DIR=$DIR/slurmd
ENV_FILE=$DIR/env.sh
# /etc/hosts lines naming the cluster's nodes (127.0.0.1) end with this; stop_cluster.sh removes them
HOSTS_MARK="# dp_hpc local SLURM cluster $DIR"

# The compute nodes (one slurmd each, `slurmd -N <node>`): "slurmd@<node>" is the daemon's name
# below. Read from the generated slurm.conf, so that stop_cluster.sh stops what start_cluster.sh
# started whatever DP_HPC_SLURM_NODES says now.
cluster_nodes() {
  [[ -f $SLURM_CONF_FILE ]] || return 0
  sed -n 's/^NodeName=\([^ ]*\) .*/\1/p' "$SLURM_CONF_FILE"
}

# daemon name -> pidfile / log (the daemons write their own pidfiles)
pidfile_of() {
  case $1 in
    munged)    echo "$MUNGE_DIR/munged.pid" ;;
    mariadbd)  echo "$DB_DIR/mariadbd.pid" ;;
    slurmdbd)  echo "$DBD_DIR/slurmdbd.pid" ;;
    slurmctld) echo "$CTLD_DIR/slurmctld.pid" ;;
    slurmd)    echo "$SLURMD_DIR/slurmd.pid" ;;  # the single slurmd of an older layout
    slurmd@*)  echo "$SLURMD_DIR/${1#slurmd@}/slurmd.pid" ;;
    *) return 1 ;;
  esac
}
logfile_of() {
  case $1 in
    munged)    echo "$MUNGE_DIR/munged.log" ;;
    mariadbd)  echo "$DB_DIR/mariadbd.log" ;;
    slurmdbd)  echo "$DBD_DIR/slurmdbd.log" ;;
    slurmctld) echo "$CTLD_DIR/slurmctld.log" ;;
    slurmd)    echo "$SLURMD_DIR/slurmd.log" ;;
    slurmd@*)  echo "$SLURMD_DIR/${1#slurmd@}/slurmd.log" ;;
    *) return 1 ;;
  esac
}

# Print the pid of daemon $1 (slurmd@<node>: that node's slurmd) if its pidfile names a live
# (non-zombie) process whose executable is that daemon AND whose command line or environment mentions our state
# dir -- so a recycled pid or someone else's daemon is never taken for ours.
ours_pid() {
  local name=${1%%@*} pf pid exe state
  pf=$(pidfile_of "$1") || return 1
  [[ -s $pf ]] || return 1
  read -r pid < "$pf" || return 1
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  [[ -d /proc/$pid ]] || return 1
  state=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) || return 1
  [[ $state != Z && $state != X ]] || return 1
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}
  exe=${exe##*/}
  # Debian installs slurmctld as /usr/sbin/slurmctld-wlm (slurmctld is an alternatives link)
  [[ $exe == "$name" || $exe == "$name-wlm" ]] || return 1
  if tr '\0' '\n' < "/proc/$pid/cmdline" 2>/dev/null | grep -qF -- "$DIR/" \
     || tr '\0' '\n' < "/proc/$pid/environ" 2>/dev/null | grep -qxF -- "SLURM_CONF=$SLURM_CONF_FILE"; then
    echo "$pid"
    return 0
  fi
  return 1
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
