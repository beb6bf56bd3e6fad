#!/usr/bin/env bash
# Provisions a real Apache Kafka broker (one combined broker+controller, KRaft mode) on
# 127.0.0.1:9092 for the integration tests, without Docker: Java from Debian's packages,
# the broker jars from Maven Central through `mvn`, everything cached outside the repository.
#
#   scripts/broker-kafka.sh up       start it (idempotent; reuses a Kafka already answering on :9092)
#   scripts/broker-kafka.sh down     stop the broker this script started (idempotent)
#   scripts/broker-kafka.sh status   exit 0 when up, 3 when down
#
# Environment:
#   KAFKA_VERSION           Kafka release to run (default below)
#   KAFKA_FALLBACK_VERSION  3.9.x release used only if $KAFKA_VERSION cannot be resolved from Maven
#   POLYBUS_CACHE           cache root (default ~/.cache/polybus); Kafka lives in $POLYBUS_CACHE/kafka
#   KAFKA_HEAP_OPTS         JVM heap flags (default -Xms256m -Xmx768m)
#   KAFKA_START_TIMEOUT     seconds to wait for the broker to start (default 90)
#   POLYBUS_KEEP_BROKER_DATA=1  keep the topics of the previous run when the broker starts
#                           (by default every start begins with empty storage: the tests make
#                           thousands of uniquely named topics, and a broker loading all of them
#                           again takes minutes to start on a small machine)
set -euo pipefail

# shellcheck disable=SC2034 # read by lib/common.sh
LOG_TAG=kafka
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/common.sh"

KAFKA_VERSION=${KAFKA_VERSION:-4.4.0}
KAFKA_FALLBACK_VERSION=${KAFKA_FALLBACK_VERSION:-3.9.2}
SCALA_BINARY=2.13
DEPENDENCY_PLUGIN_VERSION=3.6.1

HOST=127.0.0.1
PORT=9092
CONTROLLER_PORT=9093
START_TIMEOUT=${KAFKA_START_TIMEOUT:-90}
STOP_TIMEOUT=30
HEAP_OPTS=${KAFKA_HEAP_OPTS:--Xms256m -Xmx768m}

CACHE_ROOT=${POLYBUS_CACHE:-${HOME:-/root}/.cache/polybus}/kafka
DATA_DIR=$CACHE_ROOT/data
LOG_DIR=$CACHE_ROOT/logs
CONF_DIR=$CACHE_ROOT/conf
SERVER_LOG=$LOG_DIR/server.log
CONSOLE_LOG=$LOG_DIR/console.out
PID_FILE=$CACHE_ROOT/kafka.pid
SERVER_PROPERTIES=$CONF_DIR/server.properties
CLUSTER_ID_FILE=$CACHE_ROOT/cluster.id
# Which Kafka version formatted $DATA_DIR (KRaft metadata cannot be downgraded).
FORMATTED_BY_FILE=$DATA_DIR/.polybus-formatted-by

JAVA=java
STARTED_PID=""


# --------------------------------------------------------------------------------------------
# Probes

# True when a Kafka broker answers on $1:$2: sends an ApiVersions v0 request (api key 18,
# correlation id 0x504f4c59 "POLY", empty client id) and checks the response echoes the id.
kafka_answers() {
    local reply
    # shellcheck disable=SC2016 # expanded by the inner shell
    reply=$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/$1/$2" || exit 1
        printf "\x00\x00\x00\x0a\x00\x12\x00\x00\x50\x4f\x4c\x59\x00\x00" >&3
        head -c 8 <&3 | od -An -tx1
    ' _ "$1" "$2" 2>/dev/null) || return 1
    reply=$(echo "$reply" | tr -d ' \n')
    # 4 bytes of length, then the correlation id.
    [[ ${#reply} -eq 16 && ${reply:8:8} == 504f4c59 ]]
}

# Prints the pid from the pid file when that process is alive and is a Kafka server.
our_pid() { pid_from_file "$PID_FILE" 'kafka\.Kafka'; }

# --------------------------------------------------------------------------------------------
# Tools


java_major() {
    "$1" -version 2>&1 | sed -n 's/.*version "\([0-9]*\)[."].*/\1/p' | head -n1
}

ensure_java() {
    local major=""
    if command -v java >/dev/null; then
        major=$(java_major java)
    fi
    if [[ -n $major && $major -ge 17 ]]; then
        JAVA=java
        return
    fi
    if [[ -x /usr/lib/jvm/java-17-openjdk-amd64/bin/java ]]; then
        JAVA=/usr/lib/jvm/java-17-openjdk-amd64/bin/java
        return
    fi
    say "Java 17+ not found (java on PATH: ${major:-none}); installing openjdk-17-jre-headless"
    apt_install openjdk-17-jre-headless
    local candidate
    for candidate in java /usr/lib/jvm/java-17-openjdk-*/bin/java; do
        if command -v "$candidate" >/dev/null && [[ $(java_major "$candidate") -ge 17 ]]; then
            JAVA=$candidate
            return
        fi
    done
    die "Java 17 is still missing after installing openjdk-17-jre-headless"
}

ensure_maven() {
    command -v mvn >/dev/null && return
    say "mvn not found; installing maven"
    apt_install maven
    command -v mvn >/dev/null || die "mvn is still missing after installing maven"
}

mvn_quiet() {
    mvn -B -q -Dstyle.color=never "$@"
}

# --------------------------------------------------------------------------------------------
# Jars

libs_dir() { echo "$CACHE_ROOT/$1/libs"; }
libs_marker() { echo "$CACHE_ROOT/$1/.libs-complete"; }

# The first lines of Maven's complaint, without colour codes.
mvn_errors() {
    sed 's/\x1b\[[0-9;]*m//g' "$1" | grep -E '^\[ERROR\] .*(Could not|Failed|error)' |
        head -n 3 | sed 's/^/[kafka]   /' || true
}

# Resolves the broker's runtime classpath for Kafka $1 into $CACHE_ROOT/$1/libs.
# Returns non-zero (after saying why) when Maven cannot provide it.
resolve_libs() {
    local version=$1 major=${1%%.*}
    local vdir=$CACHE_ROOT/$version libs marker
    libs=$(libs_dir "$version")
    marker=$(libs_marker "$version")
    if [[ -f $marker && -f $libs/kafka_$SCALA_BINARY-$version.jar ]]; then
        return 0
    fi
    ensure_maven
    say "resolving Kafka $version jars with Maven into $libs (first run only)"
    mkdir -p "$vdir"
    local mvn_log=$vdir/mvn.log
    rm -rf "$libs.tmp"
    # The broker itself; its pom pulls in server, storage, metadata, raft, coordinators, clients,
    # log4j-core/api (4.x) and the compression codecs.
    write_pom "$vdir/pom.xml" "$version" ""
    if ! mvn_quiet -f "$vdir/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$libs.tmp" >"$mvn_log" 2>&1; then
        say "Maven could not resolve org.apache.kafka:kafka_$SCALA_BINARY:$version:"
        mvn_errors "$mvn_log"
        return 1
    fi
    # An SLF4J 1.x binding for the broker's logging, matching what the broker's pom brought in.
    local binding
    if [[ $major -ge 4 ]]; then
        local log4j_core log4j_version
        log4j_core=$(find "$libs.tmp" -maxdepth 1 -name 'log4j-core-*.jar' | head -n1)
        log4j_version=$(basename "${log4j_core:-log4j-core-2.24.3.jar}" .jar)
        log4j_version=${log4j_version#log4j-core-}
        binding="org.apache.logging.log4j:log4j-slf4j-impl:$log4j_version"
        # log4j-core is already there when the broker's pom brought it; add it otherwise.
        [[ -n $log4j_core ]] || binding="$binding org.apache.logging.log4j:log4j-core:$log4j_version"
    else
        local slf4j slf4j_version
        slf4j=$(find "$libs.tmp" -maxdepth 1 -name 'slf4j-api-*.jar' | head -n1)
        slf4j_version=$(basename "${slf4j:-slf4j-api-1.7.36.jar}" .jar)
        slf4j_version=${slf4j_version#slf4j-api-}
        binding="org.slf4j:slf4j-reload4j:$slf4j_version"
    fi
    write_pom "$vdir/pom.xml" "$version" "$binding"
    if ! mvn_quiet -f "$vdir/pom.xml" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$libs.tmp" >>"$mvn_log" 2>&1; then
        say "Maven could not resolve the logging binding ($binding):"
        mvn_errors "$mvn_log"
        return 1
    fi
    [[ -f $libs.tmp/kafka_$SCALA_BINARY-$version.jar ]] || {
        say "kafka_$SCALA_BINARY-$version.jar missing after resolution (see $mvn_log)"
        return 1
    }
    rm -rf "$libs"
    mv "$libs.tmp" "$libs"
    date -u +%FT%TZ >"$marker"
    say "resolved $(find "$libs" -name '*.jar' | wc -l) jars ($(du -sh "$libs" | cut -f1))"
}

# write_pom FILE KAFKA_VERSION "G:A:V G:A:V ..." (extra dependencies)
write_pom() {
    local file=$1 version=$2 extra=$3 gav g a v deps=""
    for gav in $extra; do
        IFS=: read -r g a v <<<"$gav"
        deps+="
    <dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>"
    done
    cat >"$file" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by polybus scripts/broker-kafka.sh: the runtime classpath of a Kafka broker. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>polybus.local</groupId>
  <artifactId>kafka-broker-libs</artifactId>
  <version>$version</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_$SCALA_BINARY</artifactId>
      <version>$version</version>
    </dependency>$deps
  </dependencies>
  <build>
    <pluginManagement>
      <plugins>
        <plugin>
          <groupId>org.apache.maven.plugins</groupId>
          <artifactId>maven-dependency-plugin</artifactId>
          <version>$DEPENDENCY_PLUGIN_VERSION</version>
        </plugin>
      </plugins>
    </pluginManagement>
  </build>
</project>
EOF
}

# --------------------------------------------------------------------------------------------
# Configuration

write_config() {
    local version=$1
    mkdir -p "$CONF_DIR" "$DATA_DIR" "$LOG_DIR"
    cat >"$SERVER_PROPERTIES" <<EOF
# Generated by polybus scripts/broker-kafka.sh (Kafka $version): one combined broker+controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT

log.dirs=$DATA_DIR
num.partitions=1
default.replication.factor=1
min.insync.replicas=1
auto.create.topics.enable=true
delete.topic.enable=true

offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Small machine (2 cores), tests run beside it.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
background.threads=4
log.retention.hours=24
log.cleaner.threads=1
EOF
    local major=${version%%.*}
    if [[ $major -ge 4 ]]; then
        cat >"$CONF_DIR/log4j2.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by polybus scripts/broker-kafka.sh: broker logs go to $SERVER_LOG. -->
<Configuration status="WARN">
  <Appenders>
    <File name="server" fileName="$SERVER_LOG" append="true">
      <PatternLayout pattern="[%d] %p %m (%c)%n"/>
    </File>
  </Appenders>
  <Loggers>
    <Root level="INFO"><AppenderRef ref="server"/></Root>
    <Logger name="org.apache.kafka" level="INFO"/>
    <Logger name="kafka" level="INFO"/>
    <Logger name="kafka.request.logger" level="WARN"/>
    <Logger name="kafka.log.LogCleaner" level="WARN"/>
    <Logger name="state.change.logger" level="WARN"/>
    <Logger name="org.apache.kafka.storage.internals.log" level="WARN"/>
    <Logger name="org.apache.kafka.clients" level="WARN"/>
  </Loggers>
</Configuration>
EOF
        cat >"$CONF_DIR/log4j2-tool.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<Configuration status="WARN">
  <Appenders>
    <Console name="stderr" target="SYSTEM_ERR"><PatternLayout pattern="[%d] %p %m (%c)%n"/></Console>
  </Appenders>
  <Loggers><Root level="WARN"><AppenderRef ref="stderr"/></Root></Loggers>
</Configuration>
EOF
    else
        cat >"$CONF_DIR/log4j.properties" <<EOF
# Generated by polybus scripts/broker-kafka.sh: broker logs go to $SERVER_LOG.
log4j.rootLogger=INFO, server
log4j.appender.server=org.apache.log4j.FileAppender
log4j.appender.server.File=$SERVER_LOG
log4j.appender.server.Append=true
log4j.appender.server.layout=org.apache.log4j.PatternLayout
log4j.appender.server.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.log.LogCleaner=WARN
log4j.logger.state.change.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
EOF
        cat >"$CONF_DIR/log4j-tool.properties" <<EOF
log4j.rootLogger=WARN, stderr
log4j.appender.stderr=org.apache.log4j.ConsoleAppender
log4j.appender.stderr.Target=System.err
log4j.appender.stderr.layout=org.apache.log4j.PatternLayout
log4j.appender.stderr.layout.ConversionPattern=[%d] %p %m (%c)%n
EOF
    fi
}

# jvm_logging_opts VERSION [tool]: the broker logs to $SERVER_LOG; a tool (the storage
# formatter) logs warnings and errors to its console instead.
jvm_logging_opts() {
    local major=${1%%.*} suffix=""
    [[ ${2:-} == tool ]] && suffix=-tool
    if [[ $major -ge 4 ]]; then
        echo "-Dlog4j2.configurationFile=$CONF_DIR/log4j2$suffix.xml"
    else
        echo "-Dlog4j.configuration=file:$CONF_DIR/log4j$suffix.properties"
    fi
}

# Formats the KRaft storage: empty on every start, unless POLYBUS_KEEP_BROKER_DATA=1 asks to keep
# what the same Kafka version left (another version's storage is always wiped).
format_storage() {
    local version=$1 libs
    libs=$(libs_dir "$version")
    if [[ -f $DATA_DIR/meta.properties && -f $FORMATTED_BY_FILE ]]; then
        local previous
        previous=$(cat "$FORMATTED_BY_FILE")
        if [[ $previous != "$version" ]]; then
            say "data dir was formatted by Kafka $previous; wiping it for $version (test data only)"
        elif [[ ${POLYBUS_KEEP_BROKER_DATA:-0} == 1 ]]; then
            say "keeping the topics of the previous run (POLYBUS_KEEP_BROKER_DATA=1)"
            return 0
        else
            say "starting with empty storage (test data only; POLYBUS_KEEP_BROKER_DATA=1 keeps it)"
        fi
    elif [[ -f $DATA_DIR/meta.properties ]]; then
        say "data dir has no version marker; wiping it"
    fi
    rm -rf "$DATA_DIR"
    mkdir -p "$DATA_DIR"
    if [[ ! -s $CLUSTER_ID_FILE ]]; then
        # A Kafka UUID: 16 random bytes, URL-safe base64 without padding.
        head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$CLUSTER_ID_FILE"
    fi
    local cluster_id
    cluster_id=$(cat "$CLUSTER_ID_FILE")
    say "formatting KRaft storage in $DATA_DIR (cluster id $cluster_id)"
    # shellcheck disable=SC2046 # the logging option is one word
    if ! "$JAVA" -Xmx256m $(jvm_logging_opts "$version" tool) -cp "$libs/*" kafka.tools.StorageTool \
        format --cluster-id "$cluster_id" --config "$SERVER_PROPERTIES" --ignore-formatted \
        >"$LOG_DIR/format.log" 2>&1; then
        cat "$LOG_DIR/format.log" >&2
        die "formatting the KRaft storage failed (kafka.tools.StorageTool format, see above)"
    fi
    echo "$version" >"$FORMATTED_BY_FILE"
}

# --------------------------------------------------------------------------------------------
# Start / stop

show_logs() {
    if [[ -s $SERVER_LOG ]]; then
        echo "[kafka] ---- last 50 lines of $SERVER_LOG ----" >&2
        tail -n 50 "$SERVER_LOG" >&2
    fi
    if [[ -s $CONSOLE_LOG ]]; then
        echo "[kafka] ---- last 20 lines of $CONSOLE_LOG ----" >&2
        tail -n 20 "$CONSOLE_LOG" >&2
    fi
}

# Waits until the broker logged that it started and answers Kafka requests on $PORT.
wait_started() {
    local pid=$1 deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            show_logs
            rm -f "$PID_FILE"
            die "the Kafka broker (pid $pid) exited during startup"
        fi
        if grep -q 'Kafka Server started' "$SERVER_LOG" 2>/dev/null && kafka_answers "$HOST" "$PORT"; then
            return 0
        fi
        sleep 0.5
    done
    show_logs
    say "stopping the broker that did not come up (pid $pid)"
    stop_pid "$pid"
    die "the Kafka broker did not start within ${START_TIMEOUT}s (logs: $LOG_DIR)"
}

start_broker() {
    local version=$1 libs
    libs=$(libs_dir "$version")
    mkdir -p "$LOG_DIR"
    # Fresh log per start so the readiness check only sees this run's "started" line.
    [[ -f $SERVER_LOG ]] && mv -f "$SERVER_LOG" "$SERVER_LOG.1"
    : >"$CONSOLE_LOG"
    local -a cmd
    # shellcheck disable=SC2206 # heap options are meant to split into words
    cmd=("$JAVA" $HEAP_OPTS -server -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent
        -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true
        "-Dkafka.logs.dir=$LOG_DIR" "$(jvm_logging_opts "$version")"
        -cp "$libs/*" kafka.Kafka "$SERVER_PROPERTIES")
    say "starting Kafka $version on $HOST:$PORT (controller $HOST:$CONTROLLER_PORT)"
    # setsid: its own session, so it outlives this script and its terminal; the inner shell
    # records its own pid and then becomes the JVM, so the pid file names the broker itself.
    # shellcheck disable=SC2016 # expanded by the inner shell
    setsid nohup bash -c 'echo $$ >"$0"; exec "$@"' "$PID_FILE" "${cmd[@]}" \
        >>"$CONSOLE_LOG" 2>&1 </dev/null &
    local pid=""
    for _ in $(seq 1 50); do
        pid=$(cat "$PID_FILE" 2>/dev/null || true)
        [[ -n $pid ]] && break
        sleep 0.1
    done
    [[ -n $pid ]] || die "the Kafka broker did not record its pid in $PID_FILE"
    STARTED_PID=$pid
}

cmd_up() {
    local started=$SECONDS pid
    if kafka_answers "$HOST" "$PORT"; then
        if pid=$(our_pid); then
            say "already up on $HOST:$PORT (pid $pid)"
        else
            say "a Kafka broker already answers on $HOST:$PORT (not started by this script); reusing it"
        fi
        return 0
    fi
    if pid=$(our_pid); then
        say "broker (pid $pid) is starting; waiting for it"
        wait_started "$pid"
        say "up on $HOST:$PORT (pid $pid) after $((SECONDS - started))s"
        return 0
    fi
    rm -f "$PID_FILE"
    if port_open "$HOST" "$PORT"; then
        die "port $HOST:$PORT is taken by something that is not a Kafka broker"
    fi
    if port_open "$HOST" "$CONTROLLER_PORT"; then
        die "controller port $HOST:$CONTROLLER_PORT is already in use"
    fi

    ensure_java
    local version=$KAFKA_VERSION
    if ! resolve_libs "$version"; then
        say "Kafka $version cannot run from Maven artifacts here (see above); falling back to $KAFKA_FALLBACK_VERSION"
        version=$KAFKA_FALLBACK_VERSION
        resolve_libs "$version" || die "could not resolve Kafka $KAFKA_VERSION nor $version from Maven Central (logs: $CACHE_ROOT/<version>/mvn.log)"
    fi
    write_config "$version"
    format_storage "$version"
    start_broker "$version"
    pid=$STARTED_PID
    wait_started "$pid"
    say "up on $HOST:$PORT (Kafka $version, pid $pid) after $((SECONDS - started))s; logs: $SERVER_LOG"
}

# SIGTERM (a controlled shutdown), then SIGKILL after $STOP_TIMEOUT s.
stop_pid() {
    local pid=$1 deadline=$((SECONDS + STOP_TIMEOUT))
    kill -TERM "$pid" 2>/dev/null || true
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.5
    done
    if kill -0 "$pid" 2>/dev/null; then
        say "pid $pid still running after ${STOP_TIMEOUT}s; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    rm -f "$PID_FILE"
}

cmd_down() {
    local pid
    if ! pid=$(our_pid); then
        rm -f "$PID_FILE"
        if kafka_answers "$HOST" "$PORT"; then
            say "not started by this script (a Kafka broker on $HOST:$PORT is left alone)"
        else
            say "not running"
        fi
        return 0
    fi
    say "stopping broker (pid $pid)"
    stop_pid "$pid"
    say "stopped"
}

cmd_status() {
    local pid
    if kafka_answers "$HOST" "$PORT"; then
        if pid=$(our_pid); then
            say "running on $HOST:$PORT (pid $pid)"
        else
            say "running on $HOST:$PORT (not started by this script)"
        fi
        return 0
    fi
    if pid=$(our_pid); then
        say "starting (pid $pid), not answering on $HOST:$PORT yet"
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
