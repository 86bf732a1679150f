#!/usr/bin/env bash
# Throwaway single-node SLURM cluster on localhost, for tests and CI (Debian 12, as root, no systemd).
#
#   bash scripts/slurm_cluster.sh up       # install packages if missing, write configs, start daemons, wait idle
#   bash scripts/slurm_cluster.sh status   # daemons, sinfo, squeue
#   bash scripts/slurm_cluster.sh down     # cancel jobs, stop every daemon, remove all state (safe to repeat)
#
# Daemons: munged (system key and socket /run/munge), a private MariaDB (own datadir, 127.0.0.1 only),
# slurmdbd (accounting: sacct, and CANCELLED states), slurmctld, slurmd (node "localhost").
# Everything the cluster writes lives under $LANDSCAPE_SLURM_DIR (default /tmp/landscape-slurm):
#   etc/ (slurm.conf, slurmdbd.conf)  log/ (one log per daemon)  run/ (pid files, DB socket)  state/  mysql/
# /etc/slurm/slurm.conf becomes a symlink to etc/slurm.conf so that sbatch/squeue/sacct work without
# SLURM_CONF in the environment; `down` removes that symlink again.
#
# Environment knobs:
#   LANDSCAPE_SLURM_DIR        private directory (default /tmp/landscape-slurm)
#   LANDSCAPE_SLURM_MAX_ARRAY  MaxArraySize (default 1001, SLURM's own default): lower it to test chunking
#   LANDSCAPE_SLURM_DB_PORT    TCP port of the private MariaDB on 127.0.0.1 (default 13306)
#   LANDSCAPE_SLURM_TIMEOUT    seconds to wait for each daemon / for the node to become idle (default 60)
set -euo pipefail

DIR="${LANDSCAPE_SLURM_DIR:-/tmp/landscape-slurm}"
MAX_ARRAY="${LANDSCAPE_SLURM_MAX_ARRAY:-1001}"
DB_PORT="${LANDSCAPE_SLURM_DB_PORT:-13306}"
TIMEOUT="${LANDSCAPE_SLURM_TIMEOUT:-60}"
CLUSTER=landscape
CONF_CHANGED=0
PARTITION=debug
NODE=localhost
MARKER="# written by landscape scripts/slurm_cluster.sh"
SYS_CONF=/etc/slurm/slurm.conf

ETC="$DIR/etc"
LOG="$DIR/log"
RUN="$DIR/run"
STATE="$DIR/state"
DBDATA="$DIR/mysql"
DBSOCK="$RUN/mysql/mysqld.sock"
export SLURM_CONF="$ETC/slurm.conf"

say() { echo "[slurm_cluster] $*"; }
die() {
    say "ERROR: $*" >&2
    show_logs >&2
    exit 1
}

show_logs() {
    local f
    [ -d "$LOG" ] || return 0
    say "logs are under $LOG:"
    for f in "$LOG"/*.log; do
        [ -f "$f" ] || continue
        echo "----- $f (last 25 lines) -----"
        tail -n 25 "$f" || true
    done
}

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

pid_alive() { # pidfile -> 0 when the process it names is running
    local pid
    [ -f "$1" ] || return 1
    pid="$(cat "$1" 2>/dev/null || true)"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null
}

wait_until() { # description, command... : retry the command every 0.5 s for $TIMEOUT seconds
    local what="$1"
    shift
    local deadline=$((SECONDS + TIMEOUT))
    until "$@" >/dev/null 2>&1; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            die "timed out after ${TIMEOUT}s waiting for $what"
        fi
        sleep 0.5
    done
}

# ---------------------------------------------------------------- packages
install_packages() {
    local missing=() cmd pkg pair
    for pair in sinfo:slurm-wlm slurmctld:slurm-wlm slurmd:slurm-wlm munged:munge slurmdbd:slurmdbd \
        mariadbd:mariadb-server; do
        cmd="${pair%%:*}"
        pkg="${pair##*:}"
        if ! command -v "$cmd" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$cmd" ]; then
            case " ${missing[*]-} " in *" $pkg "*) ;; *) missing+=("$pkg") ;; esac
        fi
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "packages missing (${missing[*]}) and not root: cannot apt-get install"
    local t0
    t0="$(now)"
    # Debian packages start their services on install; this cluster starts its own daemons, so forbid it
    # for the duration of the install (unless the machine already forbids it, as Docker images do).
    local own_policy=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    local ok=1
    apt-get update -qq || ok=0
    if [ "$ok" -eq 1 ]; then
        apt-get install -y -qq --no-install-recommends \
            -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
            slurm-wlm munge slurmdbd mariadb-server mariadb-client >/dev/null || ok=0
    fi
    [ "$own_policy" -eq 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$ok" -eq 1 ] || die "apt-get failed"
    say "packages installed in $(elapsed "$t0") s"
}

# ---------------------------------------------------------------- configuration
real_memory_mb() { # a little below the machine's memory, so that slurmd never reports less than configured
    awk '/^MemTotal:/ { printf "%d", $2 / 1024 * 0.9 }' /proc/meminfo
}

write_configs() {
    mkdir -p "$ETC" "$LOG" "$RUN" "$STATE/slurmctld" "$STATE/slurmd"
    chmod 755 "$DIR" "$ETC" "$LOG" "$RUN"
    local cpus mem max_jobs
    cpus="$(nproc)"
    mem="$(real_memory_mb)"
    max_jobs=$((MAX_ARRAY * 2 > 10000 ? MAX_ARRAY * 2 : 10000))
    cat >"$ETC/slurm.conf.new" <<EOF
$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$NODE
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# a requeued job waits cred_expire seconds before it may start again (default 120)
AuthInfo=cred_expire=10
MailProg=/bin/true
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=$RUN/slurmctld.pid
SlurmdPidFile=$RUN/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
# no cgroups on this kind of machine
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
# fast turnaround for tests: schedule at once, kill quickly, forget finished jobs quickly (sacct keeps them)
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0,sched_interval=2,sched_min_interval=100000,bf_interval=2
KillWait=2
MinJobAge=5
InactiveLimit=0
Waittime=0
JobRequeue=1
MaxArraySize=$MAX_ARRAY
MaxJobCount=$max_jobs
PreemptType=preempt/none
# accounting through slurmdbd: sacct, and cancelled jobs that end as CANCELLED instead of UNKNOWN
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$NODE
AccountingStoragePort=6819
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=$PARTITION Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
    CONF_CHANGED=0
    cmp -s "$ETC/slurm.conf.new" "$ETC/slurm.conf" || CONF_CHANGED=1
    mv -f "$ETC/slurm.conf.new" "$ETC/slurm.conf"
    chmod 644 "$ETC/slurm.conf"

    local pass
    if [ -f "$ETC/db.pass" ]; then
        pass="$(cat "$ETC/db.pass")"
    else
        pass="$(head -c 18 /dev/urandom | od -An -tx1 | tr -d ' \n')"
        (umask 077 && printf '%s' "$pass" >"$ETC/db.pass")
    fi
    (
        umask 077
        cat >"$ETC/slurmdbd.conf.new" <<EOF
$MARKER
AuthType=auth/munge
DbdHost=$NODE
DbdPort=6819
SlurmUser=root
LogFile=$LOG/slurmdbd.log
PidFile=$RUN/slurmdbd.pid
DebugLevel=info
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$pass
StorageLoc=slurm_acct_db
EOF
    )
    mv -f "$ETC/slurmdbd.conf.new" "$ETC/slurmdbd.conf"
    chmod 600 "$ETC/slurmdbd.conf"

    # client commands (sbatch, squeue, sacct, submitit) read /etc/slurm/slurm.conf
    mkdir -p /etc/slurm
    if [ -e "$SYS_CONF" ] && [ ! -L "$SYS_CONF" ] && ! grep -qF "$MARKER" "$SYS_CONF"; then
        die "$SYS_CONF exists and was not written by this script; move it aside first"
    fi
    ln -sfn "$ETC/slurm.conf" "$SYS_CONF"
}

# ---------------------------------------------------------------- daemons
start_munge() {
    if munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge /etc/munge
    chown munge:munge /run/munge /var/lib/munge /var/log/munge
    chmod 755 /run/munge
    chmod 700 /var/lib/munge /var/log/munge
    if [ ! -s /etc/munge/munge.key ]; then
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        fi
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 400 /etc/munge/munge.key
    : >"$LOG/munged.log"
    chown munge:munge "$LOG/munged.log"
    rm -f /run/munge/munged.pid
    setsid runuser -u munge -- /usr/sbin/munged --log-file="$LOG/munged.log" --pid-file=/run/munge/munged.pid \
        </dev/null >>"$LOG/munged.log" 2>&1 || die "munged failed to start"
    wait_until "munged" sh -c 'munge -n </dev/null | unmunge'
}

db_ping() { mariadb-admin --no-defaults --socket="$DBSOCK" --user=root ping; }

start_mariadb() {
    if pid_alive "$RUN/mysql/mariadb.pid" && db_ping >/dev/null 2>&1; then
        return 0
    fi
    mkdir -p "$RUN/mysql"
    chown mysql:mysql "$RUN/mysql"
    if [ ! -d "$DBDATA/mysql" ]; then
        mkdir -p "$DBDATA"
        chown mysql:mysql "$DBDATA"
        mariadb-install-db --no-defaults --user=mysql --datadir="$DBDATA" --auth-root-authentication-method=socket \
            --skip-test-db >"$LOG/mariadb-install.log" 2>&1 || die "mariadb-install-db failed (see $LOG/mariadb-install.log)"
    fi
    touch "$LOG/mariadb.log"
    chown mysql:mysql "$LOG/mariadb.log"
    setsid /usr/sbin/mariadbd --no-defaults --user=mysql --datadir="$DBDATA" --socket="$DBSOCK" \
        --pid-file="$RUN/mysql/mariadb.pid" --port="$DB_PORT" --bind-address=127.0.0.1 \
        --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=64M --innodb-log-file-size=16M --innodb-lock-wait-timeout=900 \
        --innodb-flush-log-at-trx-commit=0 --innodb-doublewrite=0 --innodb-flush-method=nosync \
        --skip-name-resolve </dev/null >>"$LOG/mariadb.log" 2>&1 &
    wait_until "mariadb (socket $DBSOCK)" db_ping
    local pass
    pass="$(cat "$ETC/db.pass")"
    mariadb --no-defaults --socket="$DBSOCK" --user=root <<EOF || die "could not create the accounting database user"
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$pass';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$pass';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
FLUSH PRIVILEGES;
EOF
}

start_slurmdbd() {
    if ! pid_alive "$RUN/slurmdbd.pid"; then
        setsid /usr/sbin/slurmdbd </dev/null >>"$LOG/slurmdbd.log" 2>&1 || die "slurmdbd failed to start"
    fi
    wait_until "slurmdbd (sacctmgr list cluster)" sacctmgr -n list cluster
}

register_cluster() {
    if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null || die "sacctmgr add cluster $CLUSTER failed"
    fi
    if ! sacctmgr -n -P list account format=account | grep -qx "$CLUSTER"; then
        sacctmgr -i add account "$CLUSTER" cluster="$CLUSTER" description=tests organization=landscape >/dev/null ||
            die "sacctmgr add account failed"
    fi
    if ! sacctmgr -n -P list association cluster="$CLUSTER" user=root format=user | grep -qx root; then
        sacctmgr -i add user root account="$CLUSTER" cluster="$CLUSTER" >/dev/null || die "sacctmgr add user root failed"
    fi
}

start_slurmctld() {
    if ! pid_alive "$RUN/slurmctld.pid"; then
        setsid /usr/sbin/slurmctld </dev/null >>"$LOG/slurmctld.log" 2>&1 || die "slurmctld failed to start"
    fi
    wait_until "slurmctld (scontrol ping)" sh -c 'scontrol ping | grep -q UP'
}

start_slurmd() {
    if ! pid_alive "$RUN/slurmd.pid"; then
        setsid /usr/sbin/slurmd -N "$NODE" </dev/null >>"$LOG/slurmd.log" 2>&1 || die "slurmd failed to start"
    fi
}

node_state() { sinfo -h -N -n "$NODE" -o %T 2>/dev/null | head -n 1; }
node_usable() { case "$(node_state)" in idle | mixed | allocated | completing) return 0 ;; *) return 1 ;; esac; }

healthy() {
    [ -f "$ETC/slurm.conf" ] && pid_alive "$RUN/slurmctld.pid" && pid_alive "$RUN/slurmd.pid" &&
        pid_alive "$RUN/slurmdbd.pid" && node_usable && sacctmgr -n list cluster >/dev/null 2>&1
}

step() { # name function: run one start-up step and say how long it took
    local t
    t="$(now)"
    "$2"
    say "$1 ready ($(elapsed "$t") s)"
}

cmd_up() {
    local t0
    t0="$(now)"
    [ "$(id -u)" -eq 0 ] || die "run as root (the daemons run as root/munge/mysql)"
    if command -v sinfo >/dev/null 2>&1 && healthy 2>/dev/null; then
        write_configs
        if [ "$CONF_CHANGED" -eq 1 ]; then
            # `scontrol reconfigure` does not apply every key (MaxArraySize keeps its old value): restart the
            # controller instead; it recovers its jobs from the state directory
            stop_pidfile slurmctld "$RUN/slurmctld.pid"
            start_slurmctld
            wait_until "node $NODE after the controller restart" node_usable
            say "already up; configuration changed, slurmctld restarted with it (MaxArraySize=$MAX_ARRAY)"
        else
            say "already up (node $NODE: $(node_state)); nothing to do"
        fi
        return 0
    fi
    install_packages
    local t1
    t1="$(now)"
    write_configs
    step munged start_munge
    step mariadb start_mariadb
    step slurmdbd start_slurmdbd
    step "cluster registration" register_cluster
    step slurmctld start_slurmctld
    step slurmd start_slurmd
    local deadline=$((SECONDS + TIMEOUT))
    until [ "$(node_state)" = idle ]; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            sinfo -N -l >&2 || true
            die "node $NODE not idle after ${TIMEOUT}s (state: '$(node_state)')"
        fi
        sleep 0.5
    done
    say "cluster '$CLUSTER' up: partition $PARTITION, node $NODE idle, $(nproc) CPUs, MaxArraySize=$MAX_ARRAY"
    say "daemons started in $(elapsed "$t1") s (total $(elapsed "$t0") s); logs in $LOG"
}

stop_pidfile() { # name pidfile: SIGTERM, wait up to 20 s, then SIGKILL
    local name="$1" pidfile="$2" pid i t
    t="$(now)"
    [ -f "$pidfile" ] || return 0
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for i in $(seq 1 80); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.25
        done
        if kill -0 "$pid" 2>/dev/null; then
            say "$name (pid $pid) ignored SIGTERM; killing"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        say "stopped $name ($(elapsed "$t") s)"
    fi
    rm -f "$pidfile"
}

cmd_down() {
    if [ -f "$ETC/slurm.conf" ] && pid_alive "$RUN/slurmctld.pid"; then
        # end the jobs first so that no slurmstepd outlives its slurmd
        if [ -n "$(squeue -h -o %i 2>/dev/null)" ]; then
            scancel --full --user=root 2>/dev/null || true
            local i
            for i in $(seq 1 40); do
                [ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ] && break
                sleep 0.25
            done
        fi
    fi
    stop_pidfile slurmd "$RUN/slurmd.pid"
    stop_pidfile slurmctld "$RUN/slurmctld.pid"
    stop_pidfile slurmdbd "$RUN/slurmdbd.pid"
    stop_pidfile mariadb "$RUN/mysql/mariadb.pid"
    stop_pidfile munged /run/munge/munged.pid
    if [ -L "$SYS_CONF" ] && [ "$(readlink "$SYS_CONF")" = "$ETC/slurm.conf" ]; then
        rm -f "$SYS_CONF"
    fi
    rm -rf "$DIR"
    say "down; removed $DIR"
}

cmd_status() {
    local name pidfile
    for name in slurmctld slurmd slurmdbd mysql/mariadb; do
        pidfile="$RUN/$name.pid"
        if pid_alive "$pidfile"; then echo "$name: running (pid $(cat "$pidfile"))"; else echo "$name: stopped"; fi
    done
    if pid_alive /run/munge/munged.pid; then echo "munged: running (pid $(cat /run/munge/munged.pid))"; else echo "munged: stopped"; fi
    if [ -f "$ETC/slurm.conf" ] && command -v sinfo >/dev/null 2>&1; then
        sinfo || true
        squeue || true
    fi
    healthy 2>/dev/null && say "healthy" && return 0
    say "not up"
    return 1
}

case "${1:-}" in
up) cmd_up ;;
down) cmd_down ;;
status) cmd_status ;;
*)
    echo "usage: $0 up|down|status" >&2
    exit 2
    ;;
esac
