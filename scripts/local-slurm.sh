#!/usr/bin/env bash
# local-slurm.sh - a real Slurm cluster of N nodes on this host (Debian 12 packages, Slurm 22.05) for tests.
#
# Usage (as root; no systemd needed):
#   eval "$(scripts/local-slurm.sh start)"   # exports SLURM_CONF (all that clients need)
#
# Verbs:
#   start    install the packages if missing, write the config (only while none of our Slurm
#            daemons runs), start munged [+ mariadbd + slurmdbd] + slurmctld + one slurmd per
#            node (`slurmd -N n1`, ...), create the unprivileged user, wait until the nodes are idle. Idempotent: on a running cluster it only prints the exports.
#            Prints `export VAR=...` lines on stdout; all progress goes to stderr.
#   restart  stop the Slurm daemons (cancelling all jobs), rewrite the config from the current
#            settings, start again. Use it to change MaxArraySize or accounting.
#   stop     cancel all jobs, stop the daemons this script started (by its own pid files).
#            State (job ids, accounting DB) is kept.
#   status   which daemons run, the active settings and sinfo. Exit 1 if the cluster is not up.
#   env      print the export lines.
#   install  only install the Debian packages (used by docker/Dockerfile).
#   purge    stop, then delete $LOCAL_SLURM_DIR (next start: fresh job ids and DB).
#
# Settings (environment variables; they take effect on `start` of a stopped cluster or `restart`):
#   LOCAL_SLURM_DIR             state/config/log directory, default /tmp/slurm-test
#   LOCAL_SLURM_MAX_ARRAY_SIZE  MaxArraySize, default 10001 (highest array index = value - 1)
#   LOCAL_SLURM_ACCOUNTING      1 (default) = MariaDB + slurmdbd, so `sacct` works
#                               0 = no accounting; sacct fails ("accounting storage is disabled")
#   LOCAL_SLURM_NODES           nodes n1..nN, each its own slurmd on this host (own Port=), default 2
#   LOCAL_SLURM_CPUS            CPUs declared per node (may oversubscribe the real cores), default 4
#   LOCAL_SLURM_MEM_MB          RealMemory per node in MB, default 16000
#   LOCAL_SLURM_MEMLIMIT        how --mem is enforced: cgroup (default where cgroup v1 memory is
#                               mounted: the kernel OOM-kills, state OUT_OF_MEMORY; memory becomes a
#                               consumable resource, DefMemPerCPU=500) or none (checked at submit only)
#   LOCAL_SLURM_USER            unprivileged submitter created by `start`, default bayesim (with an
#                               association; AccountingStorageEnforce=associations,limits,qos)
#   LOCAL_SLURM_CRED_EXPIRE     seconds before a requeued job may start again, default 10
#   LOCAL_SLURM_MIN_JOB_AGE     seconds slurmctld (squeue/scontrol) keeps finished jobs, default 300
#   LOCAL_SLURM_CTLD_PORT / _SLURMD_PORT / _DBD_PORT / _MYSQL_PORT  6817 / 6818 / 6819 / 16033
#                               (node k listens on _SLURMD_PORT + 10 + k)
#   LOCAL_SLURM_TIMEOUT         seconds to wait for each daemon, default 60
#   LOCAL_SLURM_CLUSTER_NAME    ClusterName, default localtest
#   LOCAL_SLURM_NODE_PREFIX     node names are PREFIX1..PREFIXN, default n
#   LOCAL_SLURM_FIRST_JOB_ID    FirstJobId (a second cluster's job ids then differ), default 1
#   LOCAL_SLURM_SHARE_DBD       directory of a running cluster of this script whose munged and slurmdbd
#                               this one uses (no own munged/MariaDB/slurmdbd): both clusters are then
#                               registered in one slurmdbd, so `sbatch/squeue/sacct --clusters=NAME` work
#                               from either. Give the second cluster its own LOCAL_SLURM_DIR, ports,
#                               cluster name and node prefix. See "Two clusters" below.
#
# Two clusters on one host (for --clusters tests), sharing the first one's slurmdbd:
#   LOCAL_SLURM_DIR=/tmp/slurm-test2 LOCAL_SLURM_SHARE_DBD=/tmp/slurm-test LOCAL_SLURM_CLUSTER_NAME=localtest2 \
#   LOCAL_SLURM_NODE_PREFIX=m LOCAL_SLURM_NODES=1 LOCAL_SLURM_CTLD_PORT=6827 LOCAL_SLURM_SLURMD_PORT=6828 \
#   LOCAL_SLURM_FIRST_JOB_ID=500000 LOCAL_SLURM_MEMLIMIT=none bash scripts/local-slurm.sh start
# `stop` of the second cluster stops only its slurmctld and slurmd.
#
# Partitions: debug (Default) and other, both MaxTime=INFINITE; short: MaxTime=30 min,
# DefaultTime=10, MaxMemPerNode=4000 (all on every node).
# Containers: where runc is installed, oci.conf lets srun --container=BUNDLE run a step in an
# OCI bundle (tests/slurm/test_container.py).
# Node loss drill: kill one node's slurmd (pid file run/slurmd-n1.pid) and its slurmstepds; after
# SlurmdTimeout (10 s) the node is DOWN and its jobs NODE_FAIL. `start` brings it back.
# Everything lives under $LOCAL_SLURM_DIR; nothing in /etc or /run is written by this script
# (apt-get install writes its usual places). Calls are serialised with a lock file.
set -euo pipefail
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"   # the daemons live in sbin

DIR=${LOCAL_SLURM_DIR:-/tmp/slurm-test}
DIR=${DIR%/}
MAX_ARRAY_SIZE=${LOCAL_SLURM_MAX_ARRAY_SIZE:-10001}
ACCOUNTING=${LOCAL_SLURM_ACCOUNTING:-1}
NODES=${LOCAL_SLURM_NODES:-2}
CPUS=${LOCAL_SLURM_CPUS:-4}
SUBMIT_USER=${LOCAL_SLURM_USER:-bayesim}
if [ -z "${LOCAL_SLURM_MEMLIMIT:-}" ] && [ -d /sys/fs/cgroup/memory ] && [ -w /sys/fs/cgroup/memory ]; then
  LOCAL_SLURM_MEMLIMIT=cgroup
fi
MEMLIMIT=${LOCAL_SLURM_MEMLIMIT:-none}
MEM_MB=${LOCAL_SLURM_MEM_MB:-16000}
CRED_EXPIRE=${LOCAL_SLURM_CRED_EXPIRE:-10}
MIN_JOB_AGE=${LOCAL_SLURM_MIN_JOB_AGE:-300}
CTLD_PORT=${LOCAL_SLURM_CTLD_PORT:-6817}
SLURMD_PORT=${LOCAL_SLURM_SLURMD_PORT:-6818}
DBD_PORT=${LOCAL_SLURM_DBD_PORT:-6819}
MYSQL_PORT=${LOCAL_SLURM_MYSQL_PORT:-16033}
WAIT_S=${LOCAL_SLURM_TIMEOUT:-60}
CLUSTER_NAME=${LOCAL_SLURM_CLUSTER_NAME:-localtest}
NODE_PREFIX=${LOCAL_SLURM_NODE_PREFIX:-n}
FIRST_JOB_ID=${LOCAL_SLURM_FIRST_JOB_ID:-1}
SHARE_DBD=${LOCAL_SLURM_SHARE_DBD:-}
SHARE_DBD=${SHARE_DBD%/}

ETC=$DIR/etc RUN=$DIR/run LOG=$DIR/log STATE=$DIR/state
MUNGE_DIR=$DIR/munge
[ -n "$SHARE_DBD" ] && MUNGE_DIR=$SHARE_DBD/munge
MUNGE_SOCK=$MUNGE_DIR/munge.socket.2
if [ -n "$SHARE_DBD" ]; then   # the shared cluster's slurmdbd port
  DBD_PORT=$(sed -n 's/^DbdPort=//p' "$SHARE_DBD/etc/slurmdbd.conf" 2>/dev/null || true)
  DBD_PORT=${DBD_PORT:-6819}
fi
DB_DIR=$DIR/mysql
SETTINGS=$ETC/settings.env          # the settings the written config was made from
APT_LOG=${TMPDIR:-/tmp}/local-slurm-apt.log
HOST=$(hostname -s)
NODE_NAMES=$(seq -f "$NODE_PREFIX%g" 1 "$NODES" | tr '\n' ' ')
NODE_LIST="$NODE_PREFIX[1-$NODES]"
[ "$NODES" = 1 ] && NODE_LIST=${NODE_PREFIX}1
export SLURM_CONF=$ETC/slurm.conf

log() { echo "[local-slurm] $*" >&2; }
die() { echo "[local-slurm] ERROR: $*" >&2; exit 1; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }
check_settings() {
  if ! is_uint "$MAX_ARRAY_SIZE" || [ "$MAX_ARRAY_SIZE" -lt 1 ] || [ "$MAX_ARRAY_SIZE" -gt 4000001 ]; then
    die "LOCAL_SLURM_MAX_ARRAY_SIZE must be an integer in 1..4000001, got '$MAX_ARRAY_SIZE'"
  fi
  [[ $ACCOUNTING = [01] ]] || die "LOCAL_SLURM_ACCOUNTING must be 0 or 1, got '$ACCOUNTING'"
  local v
  [[ $MEMLIMIT = cgroup || $MEMLIMIT = none ]] || die "LOCAL_SLURM_MEMLIMIT must be cgroup or none, got '$MEMLIMIT'"
  [[ $SUBMIT_USER =~ ^[a-z_][a-z0-9_-]*$ ]] || die "LOCAL_SLURM_USER must be a plain user name, got '$SUBMIT_USER'"
  { is_uint "$NODES" && [ "$NODES" -ge 1 ] && [ "$NODES" -le 64 ]; } || die "LOCAL_SLURM_NODES must be 1..64, got '$NODES'"
  [[ $CLUSTER_NAME =~ ^[a-z][a-z0-9_]*$ ]] \
    || die "LOCAL_SLURM_CLUSTER_NAME must be lower-case letters, digits and _, got '$CLUSTER_NAME'"
  [[ $NODE_PREFIX =~ ^[a-z]+$ ]] || die "LOCAL_SLURM_NODE_PREFIX must be lower-case letters, got '$NODE_PREFIX'"
  if [ -n "$SHARE_DBD" ] && [ ! -S "$SHARE_DBD/munge/munge.socket.2" ]; then
    die "LOCAL_SLURM_SHARE_DBD=$SHARE_DBD: no running cluster there (start it first)"
  fi
  for v in CPUS MEM_MB CRED_EXPIRE MIN_JOB_AGE CTLD_PORT SLURMD_PORT DBD_PORT MYSQL_PORT WAIT_S FIRST_JOB_ID; do
    is_uint "${!v}" || die "LOCAL_SLURM_$v must be a non-negative integer, got '${!v}'"
  done
}

# ---------------------------------------------------------------- daemons and pid files
# Only PIDs from our own pid files are ever signalled, and only if /proc/PID/exe is the expected
# program (guards against PID reuse). Debian installs slurmd/slurmctld as *-wlm alternatives.
pidfile() { echo "$RUN/$1.pid"; }
running() {  # daemon name (slurmd-n1 for a node's slurmd) -> prints its pid, or fails
  local f pid exe want=${1%%-*}
  f=$(pidfile "$1")
  [ -s "$f" ] || return 1
  pid=$(tr -dc '0-9' <"$f")
  [ -n "$pid" ] && [ -d "/proc/$pid" ] || return 1
  exe=$(basename "$(readlink "/proc/$pid/exe" 2>/dev/null)")
  [ "$exe" = "$want" ] || [ "$exe" = "$want-wlm" ] || return 1
  echo "$pid"
}
any_running() { local n; for n in "$@"; do running "$n" >/dev/null && return 0; done; return 1; }

wait_for() {  # description command...
  local what=$1 t0 i
  shift
  t0=$(now)
  for ((i = 0; i < WAIT_S * 5; i++)); do
    if "$@" >/dev/null 2>&1; then log "$what ready after $(since "$t0")s"; return 0; fi
    sleep 0.2
  done
  die "$what not ready after ${WAIT_S}s (logs in $LOG)"
}

slurmds() { local n; for n in $NODE_NAMES; do echo "slurmd-$n"; done; }
node_state() { sinfo -h -N -n "$1" -o %T 2>/dev/null | head -1; }
node_usable() { node_state "$1" | grep -qxE 'idle|mixed|allocated|completing'; }
nodes_usable() { local n; for n in $NODE_NAMES; do node_usable "$n" || return 1; done; }

# ---------------------------------------------------------------- install
install_packages() {  # accounting(0/1)
  local need=()
  command -v slurmctld >/dev/null || need+=(slurmctld)
  command -v slurmd >/dev/null || need+=(slurmd)
  command -v sbatch >/dev/null || need+=(slurm-client)
  command -v munged >/dev/null || need+=(munge)
  if [ "$1" = 1 ]; then
    command -v slurmdbd >/dev/null || need+=(slurmdbd)
    command -v mariadbd >/dev/null || need+=(mariadb-server)
  fi
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "missing ${need[*]} and no apt-get to install them"
  log "installing ${need[*]} (log: $APT_LOG) ..."
  local t0 made_policy=0
  t0=$(now)
  # keep the packages' maintainer scripts from starting system services
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    made_policy=1
  fi
  local ok=1
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y --no-install-recommends "${need[@]}" >"$APT_LOG" 2>&1; then
    log "apt-get install failed; running apt-get update and retrying"
    { apt-get update && apt-get install -y --no-install-recommends "${need[@]}"; } >>"$APT_LOG" 2>&1 || ok=0
  fi
  [ $made_policy = 1 ] && rm -f /usr/sbin/policy-rc.d
  [ $ok = 1 ] || die "apt-get install ${need[*]} failed, see $APT_LOG"
  log "installed in $(since "$t0")s"
}

# ---------------------------------------------------------------- config
write_configs() {
  mkdir -p "$ETC" "$RUN" "$LOG" "$STATE/ctld" "$STATE/d" "$MUNGE_DIR"
  chmod 755 "$DIR" "$MUNGE_DIR"   # munged refuses a socket dir that is not world-executable
  if [ -z "$SHARE_DBD" ]; then
    [ -s "$MUNGE_DIR/munge.key" ] || dd if=/dev/urandom of="$MUNGE_DIR/munge.key" bs=1024 count=1 status=none
    chmod 600 "$MUNGE_DIR/munge.key"
  fi

  local acct track nodes="" k n
  if [ "$MEMLIMIT" = cgroup ]; then
    track="ProctrackType=proctrack/cgroup
TaskPlugin=task/cgroup
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500"
    cat >"$ETC/cgroup.conf" <<EOF
# generated by local-slurm.sh (cgroup v1 hierarchy as mounted here)
CgroupPlugin=cgroup/v1
CgroupMountpoint=/sys/fs/cgroup
CgroupAutomount=no
ConstrainRAMSpace=yes
ConstrainCores=no
ConstrainDevices=no
EOF
  else
    track="ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectTypeParameters=CR_Core"
    rm -f "$ETC/cgroup.conf"
  fi
  k=0
  for n in $NODE_NAMES; do
    k=$((k + 1))
    nodes+="NodeName=$n NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + 10 + k)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
"
  done
  if [ "$ACCOUNTING" = 1 ]; then
    # AccountingStoragePass is the MUNGE socket for the slurmdbd connection (AuthInfo is ignored there)
    acct="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$DBD_PORT
AccountingStoragePass=$MUNGE_SOCK
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
AccountingStorageEnforce=associations,limits,qos"
  else
    acct="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
  fi

  cat >"$SLURM_CONF" <<EOF
# generated by local-slurm.sh
ClusterName=$CLUSTER_NAME
FirstJobId=$FIRST_JOB_ID
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$MUNGE_SOCK,cred_expire=$CRED_EXPIRE
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d/%n
SlurmctldPidFile=$(pidfile slurmctld)
SlurmdPidFile=$RUN/slurmd-%n.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
MailProg=/bin/true
MpiDefault=none
SelectType=select/cons_tres
$track
$acct
JobCompType=jobcomp/filetxt
JobCompLoc=$LOG/jobcomp.txt
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,bf_interval=5
# trust the CPU count below even if the machine has fewer cores (oversubscription)
SlurmdParameters=config_overrides
ReturnToService=2
MaxArraySize=$MAX_ARRAY_SIZE
MaxJobCount=100000
MinJobAge=$MIN_JOB_AGE
KillWait=5
InactiveLimit=0
SlurmctldTimeout=30
SlurmdTimeout=10
Waittime=0
${nodes%$'\n'}
PartitionName=debug Nodes=$NODE_LIST Default=YES MaxTime=INFINITE State=UP
PartitionName=other Nodes=$NODE_LIST Default=NO MaxTime=INFINITE State=UP
# smaller limits, so that partition choice has something to choose (tests/slurm/test_partitions.py)
PartitionName=short Nodes=$NODE_LIST Default=NO MaxTime=30 DefaultTime=10 MaxMemPerNode=4000 State=UP
EOF

  if command -v runc >/dev/null; then
    # srun/sbatch --container=BUNDLE (an OCI bundle) runs the step with runc; steps without
    # --container are not affected. slurmstepd reads this file at each step launch.
    cat >"$ETC/oci.conf" <<EOF
# generated by local-slurm.sh
RunTimeQuery="runc --root=$DIR/runc state %n.%u.%j.%s.%t"
RunTimeKill="runc --root=$DIR/runc kill -a %n.%u.%j.%s.%t"
RunTimeDelete="runc --root=$DIR/runc delete --force %n.%u.%j.%s.%t"
RunTimeRun="runc --root=$DIR/runc run %n.%u.%j.%s.%t -b %b"
EOF
  else
    rm -f "$ETC/oci.conf"
  fi

  if [ "$ACCOUNTING" = 1 ] && [ -z "$SHARE_DBD" ]; then
    # slurmdbd reads slurmdbd.conf next to $SLURM_CONF; it must be mode 600
    cat >"$ETC/slurmdbd.conf" <<EOF
# generated by local-slurm.sh
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCK
DbdHost=$HOST
DbdAddr=127.0.0.1
DbdPort=$DBD_PORT
SlurmUser=root
PidFile=$(pidfile slurmdbd)
LogFile=$LOG/slurmdbd.log
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$MYSQL_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$ETC/slurmdbd.conf"
  else
    rm -f "$ETC/slurmdbd.conf"
  fi

  cat >"$SETTINGS" <<EOF
ACTIVE_MAX_ARRAY_SIZE=$MAX_ARRAY_SIZE
ACTIVE_ACCOUNTING=$ACCOUNTING
ACTIVE_CPUS=$CPUS
ACTIVE_NODES=$NODES
ACTIVE_MEMLIMIT=$MEMLIMIT
ACTIVE_MEM_MB=$MEM_MB
EOF
  echo "export SLURM_CONF=$SLURM_CONF" >"$DIR/env.sh"
  log "wrote $SLURM_CONF ($NODES node(s) x $CPUS CPUs, MaxArraySize=$MAX_ARRAY_SIZE, accounting=$ACCOUNTING, memory limit: $MEMLIMIT)"
}

# ---------------------------------------------------------------- start
start_munged() {
  running munged >/dev/null && return 0
  munged --socket="$MUNGE_SOCK" --key-file="$MUNGE_DIR/munge.key" --pid-file="$(pidfile munged)" \
    --seed-file="$MUNGE_DIR/munged.seed" --log-file="$LOG/munged.log" </dev/null >>"$LOG/munged.out" 2>&1 9>&-
  wait_for munged bash -c "munge --socket='$MUNGE_SOCK' -n | unmunge --socket='$MUNGE_SOCK'"
}

start_mariadb() {
  running mariadbd >/dev/null && return 0
  mkdir -p "$DB_DIR"
  if [ ! -d "$DB_DIR/data/mysql" ]; then
    mariadb-install-db --no-defaults --datadir="$DB_DIR/data" --user=root \
      --auth-root-authentication-method=normal --skip-test-db >"$LOG/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed, see $LOG/mariadb-install.log"
  fi
  # mariadbd does not daemonize: detach it (setsid, no inherited stdio); it writes its pid file
  setsid /usr/sbin/mariadbd --no-defaults --datadir="$DB_DIR/data" --socket="$DB_DIR/mysqld.sock" \
    --pid-file="$(pidfile mariadbd)" --port="$MYSQL_PORT" --bind-address=127.0.0.1 --user=root \
    --skip-name-resolve --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=256M \
    --innodb-log-file-size=64M --innodb-lock-wait-timeout=900 </dev/null >>"$LOG/mariadb.out" 2>&1 9>&- &
  wait_for mariadbd mariadb --no-defaults -h127.0.0.1 -P"$MYSQL_PORT" -uroot -e 'select 1'
  wait_for "mariadbd pid file" running mariadbd
}

start_slurmdbd() {
  running slurmdbd >/dev/null && return 0
  slurmdbd </dev/null >>"$LOG/slurmdbd.out" 2>&1 9>&-
  wait_for slurmdbd sacctmgr -n -P list cluster format=cluster
}

start_slurmctld() {
  running slurmctld >/dev/null && return 0
  slurmctld </dev/null >>"$LOG/slurmctld.out" 2>&1 9>&-
  wait_for slurmctld scontrol ping
}

start_slurmd() {
  local n
  for n in $NODE_NAMES; do
    running "slurmd-$n" >/dev/null && continue
    mkdir -p "$STATE/d/$n"
    slurmd -N "$n" </dev/null >>"$LOG/slurmd-$n.out" 2>&1 9>&-
  done
}

make_user() {  # the unprivileged submitter, with an association when accounting is on
  id -u "$SUBMIT_USER" >/dev/null 2>&1 || useradd -m -s /bin/bash "$SUBMIT_USER" \
    || die "could not create user $SUBMIT_USER"
  [ "$(active ACCOUNTING)" = 1 ] || return 0
  local u
  for u in root "$SUBMIT_USER"; do
    sacctmgr -n -P show assoc where user="$u" cluster="$CLUSTER_NAME" format=user 2>/dev/null | grep -qx "$u" \
      || sacctmgr -i add user "$u" account=root cluster="$CLUSTER_NAME" >/dev/null 2>&1 \
      || log "WARNING: no association for $u"
  done
}

active() {  # setting name (MAX_ARRAY_SIZE, ACCOUNTING, ...) -> value the written config uses
  local v
  v=$(sed -n "s/^ACTIVE_$1=//p" "$SETTINGS" 2>/dev/null)
  echo "${v:-?}"
}

print_env() {
  echo "export SLURM_CONF=$SLURM_CONF"
  echo "export LOCAL_SLURM_DIR=$DIR"
  echo "export LOCAL_SLURM_USER=$SUBMIT_USER"
}

cmd_start() {
  local t0 acct
  t0=$(now)
  install_packages "$ACCOUNTING"
  # shellcheck disable=SC2046
  if ! any_running slurmctld slurmd slurmdbd $(slurmds) || [ ! -s "$SETTINGS" ]; then
    write_configs
  elif [ "$(active MAX_ARRAY_SIZE)" != "$MAX_ARRAY_SIZE" ] || [ "$(active ACCOUNTING)" != "$ACCOUNTING" ]; then
    log "WARNING: cluster already runs with MaxArraySize=$(active MAX_ARRAY_SIZE) accounting=$(active ACCOUNTING);" \
        "requested $MAX_ARRAY_SIZE/$ACCOUNTING is ignored (use 'restart' to apply it)"
  fi
  acct=$(active ACCOUNTING)
  if [ -n "$SHARE_DBD" ]; then   # the other cluster's munged and slurmdbd; register this cluster there
    wait_for "munged of $SHARE_DBD" bash -c "munge --socket='$MUNGE_SOCK' -n | unmunge --socket='$MUNGE_SOCK'"
    if [ "$acct" = 1 ]; then
      sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER_NAME" \
        || sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null || die "could not register cluster $CLUSTER_NAME"
    fi
  else
    start_munged
    if [ "$acct" = 1 ]; then
      install_packages 1
      start_mariadb
      start_slurmdbd
    fi
  fi
  start_slurmctld
  make_user
  start_slurmd
  local n i
  for ((i = 0; i < 25; i++)); do nodes_usable && break; sleep 0.2; done
  for n in $NODE_NAMES; do
    if ! node_usable "$n"; then   # e.g. left DOWN by a node-loss drill
      log "node $n is $(node_state "$n"); resuming it"
      scontrol update nodename="$n" state=resume >/dev/null 2>&1 || true
    fi
  done
  wait_for "nodes $NODE_LIST" nodes_usable
  log "cluster up in $(since "$t0")s ($(active NODES) node(s), MaxArraySize=$(active MAX_ARRAY_SIZE), accounting=$acct," \
      "memory limit: $(active MEMLIMIT), submitter: $SUBMIT_USER)"
  print_env
}

# ---------------------------------------------------------------- stop
stop_group() {  # daemon names: SIGTERM together, wait up to 10 s, then SIGKILL
  local n pid t0 i alive pids=() names=()
  t0=$(now)
  for n in "$@"; do
    pid=$(running "$n") || continue
    kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
    names+=("$n")
  done
  [ ${#pids[@]} -eq 0 ] && return 0
  for ((i = 0; i < 100; i++)); do
    alive=0
    for pid in "${pids[@]}"; do [ -d "/proc/$pid" ] && alive=1; done
    [ $alive = 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    if [ -d "/proc/$pid" ]; then
      log "pid $pid still alive after 10s: SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
    fi
  done
  log "stopped ${names[*]} in $(since "$t0")s"
}

cancel_all_jobs() {  # so no slurmstepd or job process outlives slurmd
  running slurmctld >/dev/null || return 0
  local jobs i
  jobs=$(squeue -h -o %A 2>/dev/null | sort -u | tr '\n' ' ')
  [ -n "${jobs// /}" ] || return 0
  log "cancelling jobs: $jobs"
  # shellcheck disable=SC2086
  scancel $jobs 2>/dev/null || true
  for ((i = 0; i < 75; i++)); do
    [ -z "$(squeue -h -o %A 2>/dev/null)" ] && break
    sleep 0.2
  done
}

stop_slurm() {  # Slurm daemons only; munged and mariadbd keep running
  cancel_all_jobs
  # shellcheck disable=SC2046
  stop_group $(slurmds) slurmd slurmctld
  stop_group slurmdbd   # after slurmctld, so it has received the last job records
  local c n   # cgroup mode: remove the (now empty) cgroup dirs our slurmds created (not another cluster's)
  for n in $NODE_NAMES; do
    for c in /sys/fs/cgroup/*/slurm_"$n"; do
      [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null || true
    done
  done
}

cmd_stop() {
  stop_slurm
  stop_group mariadbd munged
}

cmd_restart() {
  local t0
  t0=$(now)
  stop_slurm
  [ "$ACCOUNTING" = 1 ] || stop_group mariadbd
  cmd_start
  log "restarted in $(since "$t0")s"
}

cmd_status() {
  local n pid rc=0 acct
  acct=$(active ACCOUNTING)
  # shellcheck disable=SC2046
  for n in munged mariadbd slurmdbd slurmctld $(slurmds); do
    if pid=$(running "$n"); then
      echo "$n: running (pid $pid)"
    else
      echo "$n: not running"
      case $n in mariadbd | slurmdbd) [ "$acct" = 1 ] && rc=1 ;; *) rc=1 ;; esac
    fi
  done
  echo "settings: nodes=$(active NODES) CPUs/node=$(active CPUS) MaxArraySize=$(active MAX_ARRAY_SIZE)" \
       "accounting=$acct memlimit=$(active MEMLIMIT) dir=$DIR"
  if [ $rc = 0 ]; then sinfo || rc=1; fi
  return $rc
}

cmd_purge() {
  cmd_stop
  if [ -e "$DIR" ] && ! grep -qs 'generated by local-slurm.sh' "$SLURM_CONF"; then
    die "refusing to delete $DIR: it has no $SLURM_CONF written by this script"
  fi
  rm -rf "$DIR"
  log "removed $DIR"
}

# ---------------------------------------------------------------- main
verb=${1:-}
case $verb in
  env) print_env; exit 0 ;;
  status) cmd_status; exit ;;   # read-only: no lock
  start | restart | stop | install | purge) ;;
  *) echo "usage: $0 start|restart|stop|status|env|install|purge" >&2; exit 2 ;;
esac
[ "$(id -u)" = 0 ] || die "must run as root (slurmd and this setup need root)"
check_settings

# Close every descriptor inherited from the caller (above stderr): a daemon started below would
# keep it open for its whole life -- e.g. the lock of `flock -x LOCKFILE local-slurm.sh restart`,
# which then stays held by slurmdbd/slurmctld and blocks every later test session.
for fd in $(ls /proc/$$/fd 2>/dev/null); do
  [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null || true
done
# One verb at a time per cluster directory (the lock file lives next to it, so purge can remove it).
# fd 9 holds the lock; every daemon is started with 9>&- so that it does not inherit it.
mkdir -p "$(dirname "$DIR")"
exec 9>"$DIR.lock"
flock -w 300 9 || die "another local-slurm.sh call holds $DIR.lock"

case $verb in
  start) cmd_start ;;
  restart) cmd_restart ;;
  stop) cmd_stop ;;
  install) install_packages "$ACCOUNTING" ;;
  purge) cmd_purge ;;
esac
