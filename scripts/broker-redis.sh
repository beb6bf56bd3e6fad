#!/usr/bin/env bash
# Provisions a real Redis server on 127.0.0.1:6379 for the integration tests, without Docker:
# redis-server from Debian's packages, run as a dedicated instance whose configuration, data,
# log and pid file live outside the repository.
#
#   scripts/broker-redis.sh up       start it (idempotent; reuses a Redis already answering on :6379)
#   scripts/broker-redis.sh down     stop the instance this script started (idempotent)
#   scripts/broker-redis.sh status   exit 0 when up, 3 when down
#
# Environment:
#   POLYBUS_CACHE          cache root (default ~/.cache/polybus); Redis lives in $POLYBUS_CACHE/redis
#   POLYBUS_REDIS_PORT     port to serve on (default 6379)
#   REDIS_START_TIMEOUT    seconds to wait for the server to answer PING (default 20)
#
# The Debian package starts a system-wide redis-server service on 6379 where an init system
# runs services. When this script installs the package, it stops and disables that service at
# once, so the dedicated instance (known configuration, no persistence) is the one the tests
# reach. A Redis that was already answering on the port before is reused as it is, and left
# alone by `down`.
set -euo pipefail

HOST=127.0.0.1
PORT=${POLYBUS_REDIS_PORT:-6379}
START_TIMEOUT=${REDIS_START_TIMEOUT:-20}
STOP_TIMEOUT=15

CACHE_ROOT=${POLYBUS_CACHE:-${HOME:-/root}/.cache/polybus}/redis
DATA_DIR=$CACHE_ROOT/data
CONF_FILE=$CACHE_ROOT/redis.conf
LOG_FILE=$CACHE_ROOT/redis.log
PID_FILE=$CACHE_ROOT/redis.pid

REDIS_SERVER=redis-server
REDIS_CLI=redis-cli
APT_UPDATED=0

say() { echo "[redis] $*"; }
die() {
    echo "[redis] ERROR: $*" >&2
    exit 1
}

# --------------------------------------------------------------------------------------------
# Probes

# True when a Redis server answers PING with PONG on $HOST:$PORT (no password).
redis_answers() {
    local reply
    reply=$(timeout 3 "$REDIS_CLI" -h "$HOST" -p "$PORT" ping 2>/dev/null) || return 1
    [[ $reply == PONG ]]
}

# True when something accepts TCP connections on $HOST:$PORT.
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$HOST" "$PORT" 2>/dev/null
}

# Prints the pid from the pid file when that process is alive and is a redis-server.
our_pid() {
    local pid
    [[ -f $PID_FILE ]] || return 1
    pid=$(cat "$PID_FILE" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'redis-server' || return 1
    echo "$pid"
}

# --------------------------------------------------------------------------------------------
# Installation

apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        apt-get -o DPkg::Lock::Timeout=300 update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    # Waits for the dpkg lock: another provisioning script may be installing at the same time.
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq "$@" >/dev/null ||
        die "apt-get install $* failed"
}

# Stops and disables the system-wide service the package may have started, so it does not
# hold the port now or after a reboot. Only called right after this script installed Redis.
stop_system_service() {
    if [[ -d /run/systemd/system ]] && command -v systemctl >/dev/null; then
        if systemctl is-active --quiet redis-server 2>/dev/null; then
            say "stopping the redis-server system service the package started"
            systemctl stop redis-server || say "could not stop the redis-server service"
        fi
        systemctl disable --quiet redis-server 2>/dev/null || true
        return 0
    fi
    local pid_file=/run/redis/redis-server.pid pid
    if [[ -f $pid_file ]]; then
        pid=$(cat "$pid_file" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            say "stopping the redis-server system service the package started (pid $pid)"
            if command -v service >/dev/null; then
                service redis-server stop >/dev/null 2>&1 || kill -TERM "$pid" 2>/dev/null || true
            else
                kill -TERM "$pid" 2>/dev/null || true
            fi
            wait_gone "$pid"
        fi
    fi
    if command -v update-rc.d >/dev/null; then
        update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
}

ensure_redis() {
    if command -v redis-server >/dev/null && command -v redis-cli >/dev/null; then
        REDIS_SERVER=$(command -v redis-server)
        REDIS_CLI=$(command -v redis-cli)
        return 0
    fi
    say "redis-server not found; installing it from Debian packages"
    apt_install redis-server
    command -v redis-server >/dev/null || die "redis-server is still missing after installing redis-server"
    command -v redis-cli >/dev/null || die "redis-cli is still missing after installing redis-server"
    REDIS_SERVER=$(command -v redis-server)
    REDIS_CLI=$(command -v redis-cli)
    stop_system_service
}

# --------------------------------------------------------------------------------------------
# Start / stop

write_config() {
    mkdir -p "$DATA_DIR"
    cat >"$CONF_FILE" <<EOF
# Generated by polybus scripts/broker-redis.sh: a dedicated test instance on loopback.
bind $HOST
port $PORT
protected-mode yes
daemonize yes
pidfile $PID_FILE
logfile $LOG_FILE
loglevel notice
dir $DATA_DIR
# Test data only: no snapshots, no append-only file.
save ""
appendonly no
databases 16
# Pub/sub subscribers that fall far behind are disconnected rather than exhausting memory.
client-output-buffer-limit pubsub 256mb 64mb 60
EOF
}

show_log() {
    if [[ -s $LOG_FILE ]]; then
        echo "[redis] ---- last 30 lines of $LOG_FILE ----" >&2
        tail -n 30 "$LOG_FILE" >&2
    fi
}

# Waits (bounded) until the process $1 is gone.
wait_gone() {
    local pid=$1 deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
}

wait_started() {
    local deadline=$((SECONDS + START_TIMEOUT)) pid
    while ((SECONDS < deadline)); do
        if redis_answers; then
            return 0
        fi
        sleep 0.2
    done
    show_log
    if pid=$(our_pid); then
        say "stopping the server that did not answer (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid"
    fi
    die "Redis did not answer PING on $HOST:$PORT within ${START_TIMEOUT}s (log: $LOG_FILE)"
}

cmd_up() {
    local started=$SECONDS pid
    ensure_redis
    if redis_answers; then
        if pid=$(our_pid); then
            say "already up on $HOST:$PORT (pid $pid)"
        else
            say "a Redis server already answers on $HOST:$PORT (not started by this script); reusing it"
        fi
        return 0
    fi
    if port_open; then
        die "port $HOST:$PORT is taken by something that does not answer Redis PING (a Redis with a password?)"
    fi
    if pid=$(our_pid); then
        say "a server started earlier (pid $pid) does not answer; restarting it"
        kill -TERM "$pid" 2>/dev/null || true
        wait_gone "$pid"
    fi
    rm -f "$PID_FILE"
    write_config
    say "starting $("$REDIS_SERVER" --version | sed -n 's/.*v=\([0-9.]*\).*/Redis \1/p') on $HOST:$PORT"
    if ! "$REDIS_SERVER" "$CONF_FILE" >>"$LOG_FILE" 2>&1; then
        show_log
        die "redis-server $CONF_FILE failed to start"
    fi
    wait_started
    pid=$(our_pid || echo "?")
    say "up on $HOST:$PORT (pid $pid) after $((SECONDS - started))s; log: $LOG_FILE"
}

cmd_down() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PID_FILE"
        if command -v redis-cli >/dev/null && redis_answers; then
            say "not started by this script (a Redis server on $HOST:$PORT is left alone)"
        else
            say "not running"
        fi
        return 0
    fi
    say "stopping server (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    wait_gone "$pid"
    rm -f "$PID_FILE"
    say "stopped"
}

cmd_status() {
    local pid
    if command -v redis-cli >/dev/null && redis_answers; then
        if pid=$(our_pid); then
            say "running on $HOST:$PORT (pid $pid)"
        else
            say "running on $HOST:$PORT (not started by this script)"
        fi
        return 0
    fi
    if pid=$(our_pid); then
        say "process $pid exists but does not answer on $HOST:$PORT"
    else
        say "not running"
    fi
    return 3
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
