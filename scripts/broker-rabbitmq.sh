#!/usr/bin/env bash
# Provisions a real RabbitMQ broker (a single node, AMQP 0-9-1) on 127.0.0.1:5672 for the
# integration tests, without Docker or systemd: the server from Debian's rabbitmq-server package,
# run as a dedicated node (polybus@localhost) whose data, logs and configuration are cached
# outside the repository. The default user guest/guest on vhost / works from loopback.
#
#   scripts/broker-rabbitmq.sh up           start it (idempotent; reuses a RabbitMQ already
#                                           answering AMQP with guest/guest on :5672)
#   scripts/broker-rabbitmq.sh down         stop the node this script started (idempotent)
#   scripts/broker-rabbitmq.sh status       exit 0 when up, 3 when down
#   scripts/broker-rabbitmq.sh stop-app     stop the RabbitMQ application (the broker goes away:
#                                           connections drop, :5672 closes) but keep the node
#   scripts/broker-rabbitmq.sh start-app    start it again and wait until AMQP answers
#   scripts/broker-rabbitmq.sh restart-app  stop-app then start-app: a broker restart as clients
#                                           see it (durable queues and persistent messages survive)
#   scripts/broker-rabbitmq.sh ctl ARGS...  rabbitmqctl against the node (e.g. ctl list_queues)
#
# Environment:
#   POLYBUS_CACHE            cache root (default ~/.cache/polybus); RabbitMQ lives in $POLYBUS_CACHE/rabbitmq
#   RABBITMQ_START_TIMEOUT   seconds to wait for the broker to start (default 90)
#   RABBITMQ_MEMORY_LIMIT    memory high watermark, above which publishers are blocked (default 1GB)
#   POLYBUS_KEEP_BROKER_DATA=1  keep the queues of the previous run when the node starts (by
#                            default a new node starts empty; restart-app always keeps them)
set -euo pipefail

# shellcheck disable=SC2034 # read by lib/common.sh
LOG_TAG=rabbitmq
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

NODENAME=polybus@localhost
HOST=127.0.0.1
PORT=5672
DIST_PORT=25672
AMQP_USER=guest
AMQP_PASSWORD=guest
START_TIMEOUT=${RABBITMQ_START_TIMEOUT:-90}
STOP_TIMEOUT=30
MEMORY_LIMIT=${RABBITMQ_MEMORY_LIMIT:-1GB}

CACHE_ROOT=${POLYBUS_CACHE:-${HOME:-/root}/.cache/polybus}/rabbitmq
NODE_HOME=$CACHE_ROOT/home
COOKIE_FILE=$NODE_HOME/.erlang.cookie
CONF_DIR=$CACHE_ROOT/conf
MNESIA_BASE=$CACHE_ROOT/mnesia
LOG_DIR=$CACHE_ROOT/logs
SERVER_LOG=$LOG_DIR/rabbit.log
CONSOLE_LOG=$LOG_DIR/console.out
# Written by the node itself (the Erlang VM's pid) once it boots.
NODE_PID_FILE=$CACHE_ROOT/rabbitmq.pid
# Written by this script: the launcher shell that becomes rabbitmq-server and waits on the VM.
LAUNCHER_PID_FILE=$CACHE_ROOT/launcher.pid
LOCK_FILE=$CACHE_ROOT/.lock

# The package's scripts, called directly: /usr/sbin/rabbitmq-server and /usr/sbin/rabbitmqctl are
# wrappers that switch to the rabbitmq user, the package's cookie and its default node.
RABBITMQ_BIN=/usr/lib/rabbitmq/bin
POLICY_RC_D=/usr/sbin/policy-rc.d

# The whole environment of every RabbitMQ command: nothing leaks in from the caller (RABBITMQ_*
# variables of the tests, /etc/rabbitmq/rabbitmq-env.conf, /etc/rabbitmq/enabled_plugins).
RMQ_ENV=(
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
    LANG=C.UTF-8
    LC_ALL=C.UTF-8
    HOME="$NODE_HOME"
    ERL_EPMD_ADDRESS=127.0.0.1
    ERL_CRASH_DUMP="$LOG_DIR/erl_crash.dump"
    RABBITMQ_NODENAME="$NODENAME"
    RABBITMQ_USE_LONGNAME=false
    RABBITMQ_NODE_IP_ADDRESS="$HOST"
    RABBITMQ_NODE_PORT="$PORT"
    RABBITMQ_DIST_PORT="$DIST_PORT"
    RABBITMQ_CONF_ENV_FILE="$CONF_DIR/rabbitmq-env.conf"
    RABBITMQ_CONFIG_FILE="$CONF_DIR/rabbitmq.conf"
    RABBITMQ_ADVANCED_CONFIG_FILE="$CONF_DIR/advanced.config"
    RABBITMQ_ENABLED_PLUGINS_FILE="$CONF_DIR/enabled_plugins"
    RABBITMQ_MNESIA_BASE="$MNESIA_BASE"
    RABBITMQ_MNESIA_DIR="$MNESIA_BASE/$NODENAME"
    RABBITMQ_LOG_BASE="$LOG_DIR"
    RABBITMQ_LOGS="$SERVER_LOG"
    RABBITMQ_PID_FILE="$NODE_PID_FILE"
    # Erlang distribution (rabbitmqctl's channel to the node) on loopback only.
    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS=-kernel inet_dist_use_interface {127,0,0,1}"
)

POLICY_GUARD=0


# --------------------------------------------------------------------------------------------
# Probes

# Prints how an AMQP 0-9-1 handshake as guest/guest on vhost / goes on $1:$2: "ok", "closed"
# (nothing listens), "noamqp" (something else listens), "refused" (login refused) or "novhost".
# Connection.Start -> Start-Ok (PLAIN) -> Tune -> Tune-Ok, Open "/" -> Open-Ok -> Close.
amqp_state() {
    local state
    # shellcheck disable=SC2016 # expanded by the inner shell
    state=$(timeout 5 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || { echo closed; exit; }
        # Reads one frame; prints its type, class id and method id in hex ("01000a000a").
        frame() {
            local header size payload
            header=$(head -c 7 <&3 | od -An -tx1 | tr -d " \n")
            [[ ${#header} -eq 14 ]] || return 1
            size=$((16#${header:6:8}))
            payload=$(head -c $((size + 1)) <&3 | od -An -tx1 | tr -d " \n")
            [[ ${#payload} -eq $(((size + 1) * 2)) ]] || return 1
            echo "${header:0:2}${payload:0:8}"
        }
        printf "AMQP\x00\x00\x09\x01" >&3
        [[ $(frame) == 01000a000a ]] || { echo noamqp; exit; }
        # Start-Ok: no client properties, PLAIN "\0user\0password", locale en_US.
        user=$3 password=$4
        response_size=$((2 + ${#user} + ${#password}))
        printf -v size "%08x" $((4 + 4 + 6 + 4 + response_size + 6))
        printf -v rsize "%08x" "$response_size"
        printf "\x01\x00\x00\x${size:0:2}\x${size:2:2}\x${size:4:2}\x${size:6:2}" >&3
        printf "\x00\x0a\x00\x0b\x00\x00\x00\x00\x05PLAIN" >&3
        printf "\x${rsize:0:2}\x${rsize:2:2}\x${rsize:4:2}\x${rsize:6:2}\x00%s\x00%s" "$user" "$password" >&3
        printf "\x05en_US\xce" >&3
        # Tune; a refused login ends in Connection.Close or a closed socket instead.
        [[ $(frame) == 01000a001e ]] || { echo refused; exit; }
        # Tune-Ok (channel-max 1, frame-max 4096, no heartbeat), then Open "/".
        printf "\x01\x00\x00\x00\x00\x00\x0c\x00\x0a\x00\x1f\x00\x01\x00\x00\x10\x00\x00\x00\xce" >&3
        printf "\x01\x00\x00\x00\x00\x00\x08\x00\x0a\x00\x28\x01/\x00\x00\xce" >&3
        [[ $(frame) == 01000a0029 ]] || { echo novhost; exit; }
        # Close (200), and wait for Close-Ok so the broker does not log an abrupt disconnect.
        printf "\x01\x00\x00\x00\x00\x00\x0b\x00\x0a\x00\x32\x00\xc8\x00\x00\x00\x00\x00\xce" >&3
        frame >/dev/null || true
        echo ok
    ' _ "$1" "$2" "$AMQP_USER" "$AMQP_PASSWORD" 2>/dev/null) || true
    echo "${state:-closed}"
}

amqp_answers() { [[ $(amqp_state "$HOST" "$PORT") == ok ]]; }

# True when $1 is a live process of our node (the launcher or the Erlang VM): its environment
# names our pid file.
owned_pid() {
    [[ $1 =~ ^[0-9]+$ ]] && kill -0 "$1" 2>/dev/null &&
        tr '\0' '\n' 2>/dev/null <"/proc/$1/environ" | grep -qxF "RABBITMQ_PID_FILE=$NODE_PID_FILE"
}

# Prints the pid of our node: the Erlang VM once it wrote its pid file, else the launcher.
our_pid() {
    local file pid
    for file in "$NODE_PID_FILE" "$LAUNCHER_PID_FILE"; do
        pid=$(cat "$file" 2>/dev/null) || continue
        if owned_pid "$pid"; then
            echo "$pid"
            return 0
        fi
    done
    return 1
}

# rabbitmqctl against our node, in its environment (cookie, node name), bounded in time.
ctl() {
    env -i "${RMQ_ENV[@]}" timeout "${CTL_TIMEOUT:-60}" "$RABBITMQ_BIN/rabbitmqctl" -n "$NODENAME" "$@" 9>&-
}

# Prints running (the broker is up), booting, stopped (node up, app stopped) or unreachable.
node_state() {
    local state
    state=$(CTL_TIMEOUT=20 ctl eval \
        'case rabbit:is_running() of true -> running; false -> case rabbit:is_booting() of true -> booting; false -> stopped end end.' \
        2>/dev/null) || state=unreachable
    case "$state" in
        running | booting | stopped) echo "$state" ;;
        *) echo unreachable ;;
    esac
}

# --------------------------------------------------------------------------------------------
# Installation

installed() {
    [[ -x $RABBITMQ_BIN/rabbitmq-server && -x $RABBITMQ_BIN/rabbitmqctl ]] &&
        command -v erl >/dev/null &&
        [[ $(dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null) == "install ok installed" ]]
}

# While the package installs, /usr/sbin/policy-rc.d forbids starting services: its postinst would
# otherwise start the default node (rabbit@$HOSTNAME, as user rabbitmq, on 0.0.0.0:5672), or fail
# the installation when that start fails. An existing policy-rc.d (Docker images have one) is kept.
guard_services() {
    [[ -e $POLICY_RC_D ]] && return 0
    printf '#!/bin/sh\n# Temporary, from polybus scripts/broker-rabbitmq.sh: no service starts during install.\nexit 101\n' \
        >"$POLICY_RC_D"
    chmod 755 "$POLICY_RC_D"
    POLICY_GUARD=1
    trap unguard_services EXIT
}

unguard_services() {
    if [[ $POLICY_GUARD -eq 1 ]]; then
        rm -f "$POLICY_RC_D"
        POLICY_GUARD=0
    fi
}


# Stops the package's default node if its installation started one anyway (a policy-rc.d that
# allows starts): it would hold :5672 and epmd's name table with another cookie.
stop_default_node() {
    local beam
    beam=$(pgrep -u rabbitmq -f beam 2>/dev/null | head -n1 || true)
    [[ -n $beam ]] || return 0
    say "the package started its default node (pid $beam); stopping it"
    timeout "$STOP_TIMEOUT" /usr/sbin/rabbitmqctl stop >/dev/null 2>&1 || true
    if kill -0 "$beam" 2>/dev/null; then
        kill -TERM "$beam" 2>/dev/null || true
        sleep 2
    fi
    kill -0 "$beam" 2>/dev/null && die "could not stop the package's default RabbitMQ node (pid $beam)"
    return 0
}

ensure_rabbitmq() {
    installed && return 0
    say "rabbitmq-server not installed; installing it from Debian packages (first run only)"
    guard_services
    if dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q 'half\|unpacked'; then
        say "finishing an interrupted installation (dpkg --configure -a)"
        DEBIAN_FRONTEND=noninteractive dpkg --configure -a >/dev/null || true
    fi
    apt_install rabbitmq-server
    unguard_services
    stop_default_node
    installed || die "rabbitmq-server is still missing after installing it (dpkg-query -W rabbitmq-server)"
    say "installed $(dpkg-query -W -f='rabbitmq-server ${Version}' rabbitmq-server)"
}

# --------------------------------------------------------------------------------------------
# Configuration

write_config() {
    mkdir -p "$CONF_DIR" "$MNESIA_BASE" "$LOG_DIR" "$NODE_HOME"
    # The Erlang cookie that rabbitmqctl shares with the node: made once, kept.
    if [[ ! -s $COOKIE_FILE ]]; then
        (
            umask 077
            od -An -N20 -tx1 /dev/urandom | tr -d ' \n' | tr '[:lower:]' '[:upper:]' >"$COOKIE_FILE"
        )
    fi
    chmod 400 "$COOKIE_FILE"
    : >"$CONF_DIR/rabbitmq-env.conf"
    # No plugins (no management UI): a smaller, faster node.
    echo '[].' >"$CONF_DIR/enabled_plugins"
    cat >"$CONF_DIR/rabbitmq.conf" <<EOF
# Generated by polybus scripts/broker-rabbitmq.sh: one node for the integration tests.
# Listener ($HOST:$PORT), node name and paths come from the environment the script sets.
# guest/guest (the default user, vhost /) may only log in from loopback.
loopback_users.guest = true
# Small machine, tests run beside it: publishers are blocked above this much memory.
vm_memory_high_watermark.absolute = $MEMORY_LIMIT
disk_free_limit.absolute = 50MB
log.file.level = info
log.console = false
EOF
}

# --------------------------------------------------------------------------------------------
# Start / stop

show_logs() {
    if [[ -s $SERVER_LOG ]]; then
        echo "[rabbitmq] ---- last 50 lines of $SERVER_LOG ----" >&2
        tail -n 50 "$SERVER_LOG" >&2
    fi
    if [[ -s $CONSOLE_LOG ]]; then
        echo "[rabbitmq] ---- last 20 lines of $CONSOLE_LOG ----" >&2
        tail -n 20 "$CONSOLE_LOG" >&2
    fi
}

# Waits until the node finished booting and answers AMQP as guest/guest on $PORT.
wait_started() {
    local deadline=$((SECONDS + START_TIMEOUT)) state=closed
    while ((SECONDS < deadline)); do
        if ! our_pid >/dev/null; then
            show_logs
            die "the RabbitMQ node exited during startup (logs: $LOG_DIR)"
        fi
        state=$(amqp_state "$HOST" "$PORT")
        [[ $state == ok ]] && break
        sleep 0.5
    done
    if [[ $state != ok ]]; then
        show_logs
        say "stopping the node that did not come up"
        stop_node
        die "RabbitMQ did not answer AMQP on $HOST:$PORT within ${START_TIMEOUT}s (last probe: $state; logs: $LOG_DIR)"
    fi
    local left=$((deadline - SECONDS))
    ((left >= 10)) || left=10
    if ! CTL_TIMEOUT=$((left + 10)) ctl await_startup --timeout "$left" >/dev/null 2>&1; then
        show_logs
        die "rabbitmqctl -n $NODENAME await_startup failed although AMQP answers (logs: $LOG_DIR)"
    fi
}

start_node() {
    mkdir -p "$LOG_DIR"
    # Fresh log per start, so the tail shown on failure is this run's.
    [[ -f $SERVER_LOG ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.1"
    [[ -f $CONSOLE_LOG ]] && mv -f "$CONSOLE_LOG" "$CONSOLE_LOG.1"
    rm -f "$NODE_PID_FILE" "$LAUNCHER_PID_FILE"
    say "starting node $NODENAME on $HOST:$PORT (distribution port $DIST_PORT)"
    # setsid: its own session, so it outlives this script and its terminal. The launcher records
    # its pid, then becomes rabbitmq-server (a shell that waits on the Erlang VM), in $CACHE_ROOT
    # (where a crash dump would land). 9>&-: the node does not hold this script's lock; nor does it
    # hold the caller's stdout/stderr open.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid nohup bash -c 'cd "$1" || exit 1; echo $$ >"$0"; shift; exec "$@"' \
        "$LAUNCHER_PID_FILE" "$CACHE_ROOT" env -i "${RMQ_ENV[@]}" "$RABBITMQ_BIN/rabbitmq-server" \
        >>"$CONSOLE_LOG" 2>&1 </dev/null 9>&- &
    local _
    # The launcher is ours once it became rabbitmq-server (with our environment).
    for _ in $(seq 1 100); do
        our_pid >/dev/null && return 0
        sleep 0.1
    done
    show_logs
    die "the RabbitMQ node did not start (no live pid in $LAUNCHER_PID_FILE; see $CONSOLE_LOG)"
}

# Stops our node: rabbitmqctl stop (waits for the VM to exit), then SIGTERM, then SIGKILL.
stop_node() {
    local -a pids=()
    local file pid
    for file in "$NODE_PID_FILE" "$LAUNCHER_PID_FILE"; do
        pid=$(cat "$file" 2>/dev/null) || continue
        if owned_pid "$pid"; then
            pids+=("$pid")
        fi
    done
    if [[ -s $NODE_PID_FILE ]]; then
        CTL_TIMEOUT=$STOP_TIMEOUT ctl stop "$NODE_PID_FILE" >/dev/null 2>&1 || true
    fi
    local signal deadline
    for signal in TERM KILL; do
        if [[ $signal == TERM ]]; then
            deadline=$((SECONDS + STOP_TIMEOUT))
        else
            deadline=$((SECONDS + 5))
        fi
        for pid in "${pids[@]}"; do
            owned_pid "$pid" || continue
            if [[ $signal == KILL ]]; then
                say "pid $pid still running after ${STOP_TIMEOUT}s; sending SIGKILL"
            fi
            kill "-$signal" "$pid" 2>/dev/null || true
        done
        while ((SECONDS < deadline)); do
            local alive=0
            for pid in "${pids[@]}"; do
                if owned_pid "$pid"; then
                    alive=1
                fi
            done
            ((alive)) || break
            sleep 0.3
        done
    done
    rm -f "$NODE_PID_FILE" "$LAUNCHER_PID_FILE"
}

# Holds $LOCK_FILE while the script changes anything (two `up` at once start one node).
take_lock() {
    mkdir -p "$CACHE_ROOT"
    exec 9>"$LOCK_FILE"
    flock -w $((START_TIMEOUT + 300)) 9 || die "another broker-rabbitmq.sh holds $LOCK_FILE"
}

require_our_node() {
    our_pid >/dev/null && return 0
    if amqp_answers; then
        die "the broker on $HOST:$PORT was not started by this script; cannot $1 its application (only node $NODENAME, started by \`$0 up\`, can be)"
    fi
    die "the RabbitMQ node is not running (start it with: $0 up)"
}

# Waits until AMQP answers again after start_app.
wait_amqp() {
    local deadline=$((SECONDS + START_TIMEOUT)) state=closed
    while ((SECONDS < deadline)); do
        state=$(amqp_state "$HOST" "$PORT")
        [[ $state == ok ]] && return 0
        sleep 0.3
    done
    show_logs
    die "RabbitMQ did not answer AMQP on $HOST:$PORT within ${START_TIMEOUT}s after start_app (last probe: $state)"
}

cmd_up() {
    local started=$SECONDS pid state
    if amqp_answers; then
        if pid=$(our_pid); then
            say "already up on $HOST:$PORT (node $NODENAME, pid $pid)"
        else
            say "a RabbitMQ already answers on $HOST:$PORT as $AMQP_USER (not started by this script); reusing it"
        fi
        return 0
    fi
    take_lock
    # Another `up` may have finished while this one waited for the lock.
    amqp_answers && {
        say "already up on $HOST:$PORT"
        return 0
    }
    if pid=$(our_pid); then
        state=$(node_state)
        case "$state" in
            stopped)
                say "node $NODENAME (pid $pid) is up with its application stopped; starting it"
                CTL_TIMEOUT=$((START_TIMEOUT + 10)) ctl start_app >/dev/null || die "rabbitmqctl start_app failed"
                wait_amqp
                ;;
            *)
                say "node $NODENAME (pid $pid) is starting ($state); waiting for it"
                wait_started
                ;;
        esac
        say "up on $HOST:$PORT (node $NODENAME, pid $(our_pid || echo "?")) after $((SECONDS - started))s"
        return 0
    fi
    rm -f "$NODE_PID_FILE" "$LAUNCHER_PID_FILE"
    state=$(amqp_state "$HOST" "$PORT")
    case "$state" in
        closed) ;;
        refused | novhost) die "a broker on $HOST:$PORT does not let $AMQP_USER/$AMQP_PASSWORD in on vhost / ($state); stop it first" ;;
        *) die "port $HOST:$PORT is taken by something that is not an AMQP broker ($state)" ;;
    esac
    if port_open "$HOST" "$DIST_PORT"; then
        die "distribution port $HOST:$DIST_PORT is already in use"
    fi

    ensure_rabbitmq
    write_config
    if [[ ${POLYBUS_KEEP_BROKER_DATA:-0} != 1 && -d $MNESIA_BASE/$NODENAME ]]; then
        say "starting with an empty node (test data only; POLYBUS_KEEP_BROKER_DATA=1 keeps it)"
        rm -rf "${MNESIA_BASE:?}/$NODENAME" "$MNESIA_BASE/$NODENAME"-*
    fi
    start_node
    wait_started
    say "up on $HOST:$PORT (node $NODENAME, pid $(our_pid || echo "?")) after $((SECONDS - started))s; logs: $SERVER_LOG"
}

cmd_down() {
    local pid
    take_lock
    if ! pid=$(our_pid); then
        rm -f "$NODE_PID_FILE" "$LAUNCHER_PID_FILE"
        if amqp_answers; then
            say "not started by this script (the RabbitMQ on $HOST:$PORT is left alone)"
        else
            say "not running"
        fi
        return 0
    fi
    say "stopping node $NODENAME (pid $pid)"
    stop_node
    say "stopped"
}

cmd_status() {
    local pid
    if amqp_answers; then
        if pid=$(our_pid); then
            say "running on $HOST:$PORT (node $NODENAME, pid $pid)"
        else
            say "running on $HOST:$PORT (not started by this script)"
        fi
        return 0
    fi
    if pid=$(our_pid); then
        case "$(node_state)" in
            stopped) say "node $NODENAME (pid $pid) is up but its application is stopped; $HOST:$PORT closed" ;;
            *) say "starting (node $NODENAME, pid $pid), not answering on $HOST:$PORT yet" ;;
        esac
    else
        say "not running"
    fi
    return 3
}

cmd_stop_app() {
    take_lock
    require_our_node stop
    say "stopping the RabbitMQ application (node $NODENAME stays up)"
    CTL_TIMEOUT=$((STOP_TIMEOUT + 30)) ctl stop_app >/dev/null || die "rabbitmqctl -n $NODENAME stop_app failed"
    say "application stopped; $HOST:$PORT is closed"
}

cmd_start_app() {
    local started=$SECONDS
    take_lock
    require_our_node start
    say "starting the RabbitMQ application"
    CTL_TIMEOUT=$((START_TIMEOUT + 10)) ctl start_app >/dev/null || die "rabbitmqctl -n $NODENAME start_app failed"
    wait_amqp
    say "application up on $HOST:$PORT after $((SECONDS - started))s"
}

case "${1:-}" in
    up) cmd_up ;;
    down) cmd_down ;;
    status) cmd_status ;;
    stop-app) cmd_stop_app ;;
    start-app) cmd_start_app ;;
    restart-app)
        cmd_stop_app
        cmd_start_app
        ;;
    ctl)
        shift
        installed || die "rabbitmq-server is not installed (run: $0 up)"
        ctl "$@"
        ;;
    *)
        echo "usage: $0 up|down|status|stop-app|start-app|restart-app|ctl ARGS..." >&2
        exit 2
        ;;
esac
