#!/usr/bin/env bash
# Provisions what the benchmark suite compares Polybus with, once, cached under
# ~/.cache/polybus/bench (a second run installs nothing):
#   - the bench virtual environment: a polybus wheel built with maturin and the Python
#     comparators from PyPI (confluent-kafka, aiokafka, FastStream, aio-pika, redis-py with
#     hiredis) plus matplotlib for the plots;
#   - the PHP comparators from Debian's packages (php-amqplib, php-amqp, php-redis);
#   - the brokers' own perf tools: Kafka's ProducerPerformance (org.apache.kafka:kafka-tools)
#     and RabbitMQ PerfTest (com.rabbitmq:perf-test) from Maven Central, redis-benchmark from
#     Debian's redis-tools;
#   - the builds of the PHP extension and of the Rust ceiling bench (benches/rust).
#
#   scripts/bench-tools.sh [all|venv|php|jars|rust]   (default all)
#
# Environment: BENCH_PROFILE (release, the default, or debug), POLYBUS_CACHE (default
# ~/.cache/polybus), POLYBUS_BENCH_VENV (default $POLYBUS_CACHE/bench-venv), CARGO_TARGET_DIR
# (default $POLYBUS_CACHE/target),
# KAFKA_TOOLS_VERSION (default: the version of the Kafka broker scripts/broker-kafka.sh runs),
# PERF_TEST_VERSION. A comparator that cannot be installed is reported and skipped: the suite
# marks its scenarios as failed with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck disable=SC2034 # read by lib/common.sh
LOG_TAG=bench
# shellcheck source-path=SCRIPTDIR source=lib/common.sh
source scripts/lib/common.sh

CACHE=${POLYBUS_CACHE:-$HOME/.cache/polybus}
VENV=${POLYBUS_BENCH_VENV:-$CACHE/bench-venv}
JARS=$CACHE/bench/jars
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$CACHE/target}
CARGO=${CARGO:-cargo}
PERF_TEST_VERSION=${PERF_TEST_VERSION:-2.22.1}
# release for measurements; debug for the smoke run of `make test` (it reuses the test builds).
PROFILE=${BENCH_PROFILE:-release}
case "$PROFILE" in
    release) CARGO_PROFILE=(--release) ;;
    debug) CARGO_PROFILE=() ;;
    *) die "BENCH_PROFILE must be release or debug, not $PROFILE" ;;
esac
DEPENDENCY_PLUGIN_VERSION=3.6.1
# Bump to reinstall the Python comparators.
VENV_MARKER=$VENV/.polybus-bench-1
PY_PACKAGES=(
    "maturin>=1.7,<2"
    "confluent-kafka>=2.3"
    "aiokafka>=0.10"
    "faststream[kafka,rabbit,redis]>=0.5"
    "aio-pika>=9"
    "redis[hiredis]>=5"
    "matplotlib>=3.7"
)

# The Kafka version the broker script runs (its generated config says which).
kafka_version() {
    if [[ -n ${KAFKA_TOOLS_VERSION:-} ]]; then
        echo "$KAFKA_TOOLS_VERSION"
        return
    fi
    local v
    v=$(sed -n '1s/.*(Kafka \([0-9][0-9.]*\)).*/\1/p' "$CACHE/kafka/conf/server.properties" 2>/dev/null || true)
    echo "${v:-4.4.0}"
}

# Quiet, bounded: a command that runs longer than $1 seconds is stopped.
bounded() {
    local seconds=$1
    shift
    timeout --kill-after=10 "$seconds" "$@"
}

# The interpreter the extension module is built for: the test venv's when there is one (same
# Python; an abi3 wheel), so a debug build here reuses the build `make test` made instead of
# rebuilding pyo3 for another interpreter path.
build_python() {
    local test_venv=${POLYBUS_VENV:-$CACHE/venv}
    if [[ -x $test_venv/bin/python ]]; then
        echo "$test_venv/bin/python"
    else
        echo "$VENV/bin/python"
    fi
}

setup_venv() {
    if [[ ! -x $VENV/bin/python ]]; then
        say "creating the bench virtual environment $VENV"
        python3 -m venv "$VENV"
    fi
    if [[ ! -f $VENV_MARKER ]]; then
        say "installing the Python comparators into $VENV (first run only)"
        local log=$VENV/pip.log
        if bounded 900 "$VENV/bin/pip" install --quiet --upgrade pip >"$log" 2>&1 &&
            bounded 900 "$VENV/bin/pip" install --quiet "${PY_PACKAGES[@]}" >>"$log" 2>&1; then
            touch "$VENV_MARKER"
        else
            # Install what can be installed, one at a time; the others' scenarios fail with
            # "not installed".
            say "pip could not install everything at once (see $log); trying one at a time"
            local pkg
            for pkg in "${PY_PACKAGES[@]}"; do
                bounded 600 "$VENV/bin/pip" install --quiet "$pkg" >>"$log" 2>&1 ||
                    say "  could not install $pkg"
            done
        fi
    fi
    # Polybus itself, as a wheel of its own (not an editable install: the test venv's editable
    # install shares the checkout's copy of the extension module, in another profile).
    local wheels=$CACHE/bench/wheels/$PROFILE log
    log=$(mktemp)
    say "building the polybus wheel ($PROFILE)"
    rm -rf "$wheels"
    local flags=()
    [[ $PROFILE == release ]] && flags=(--release)
    if ! "$VENV/bin/maturin" build --quiet --auditwheel skip "${flags[@]}" -i "$(build_python)" -o "$wheels" \
        >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        die "maturin build failed"
    fi
    rm -f "$log"
    local wheel sum
    wheel=$(find "$wheels" -name 'polybus-*.whl' | head -n1)
    sum=$(sha256sum "$wheel" | cut -d' ' -f1)
    if [[ $(cat "$VENV/.polybus-wheel" 2>/dev/null) != "$sum" ]]; then
        "$VENV/bin/pip" install --quiet --no-deps --force-reinstall "$wheel"
        echo "$sum" >"$VENV/.polybus-wheel"
    fi
}

setup_php() {
    local missing=() pkg
    for pkg in php-amqplib php-amqp php-redis; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("$pkg")
    done
    if [[ ${#missing[@]} -gt 0 ]]; then
        # Not fatal: the scenarios of a missing comparator are reported as failed.
        (apt_install "${missing[@]}") || say "could not install ${missing[*]}"
    fi
    say "building the PHP extension ($PROFILE)"
    "$CARGO" build --quiet "${CARGO_PROFILE[@]}" -p polybus-php
}

setup_rust() {
    say "building the Rust ceiling bench ($PROFILE)"
    "$CARGO" build --quiet "${CARGO_PROFILE[@]}" -p polybus-bench --example ceiling
}

# resolve_jars DIR GROUP:ARTIFACT:VERSION: the artifact and its runtime dependencies into
# $JARS/DIR/libs, once.
resolve_jars() {
    local name=$1 gav=$2 g a v
    IFS=: read -r g a v <<<"$gav"
    local dir=$JARS/$name
    [[ -f $dir/.complete ]] && return 0
    command -v mvn >/dev/null || apt_install maven
    say "resolving $gav and its dependencies from Maven Central into $dir (first run only)"
    mkdir -p "$dir"
    cat >"$dir/pom.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by polybus scripts/bench-tools.sh: the classpath of $gav. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>polybus.local</groupId>
  <artifactId>bench-$name</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>$g</groupId><artifactId>$a</artifactId><version>$v</version></dependency>
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
    rm -rf "$dir/libs"
    if bounded 600 mvn -B -q -Dstyle.color=never -f "$dir/pom.xml" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$dir/libs" >"$dir/mvn.log" 2>&1; then
        date -u +%FT%TZ >"$dir/.complete"
        say "  $(find "$dir/libs" -name '*.jar' | wc -l) jars"
    else
        say "  Maven could not resolve $gav (see $dir/mvn.log)"
        return 1
    fi
}

# The tools jar of the broker's Kafka version, else the newest one Maven Central has (a
# version range, resolved by Maven from the artifact's metadata; the producer protocol is
# compatible both ways).
setup_kafka_tools() {
    local kv
    kv=$(kafka_version)
    if [[ -n $(find "$JARS" -maxdepth 2 -path "$JARS/kafka-tools-*/.complete" 2>/dev/null) ]]; then
        return 0
    fi
    resolve_jars kafka-tools-"$kv" "org.apache.kafka:kafka-tools:$kv" && return 0
    rm -rf "$JARS/kafka-tools-$kv"
    say "trying the newest kafka-tools release instead"
    resolve_jars kafka-tools-newest "org.apache.kafka:kafka-tools:[${kv%%.*}.0,)" && return 0
    say "no kafka-tools: the ProducerPerformance comparison will be reported as failed"
    return 1
}

setup_jars() {
    setup_kafka_tools || true
    resolve_jars perf-test-"$PERF_TEST_VERSION" "com.rabbitmq:perf-test:$PERF_TEST_VERSION" || true
    command -v redis-benchmark >/dev/null || (apt_install redis-tools) || true
}

case "${1:-all}" in
    all)
        setup_php
        setup_rust
        setup_venv
        setup_jars
        ;;
    venv) setup_venv ;;
    php) setup_php ;;
    jars) setup_jars ;;
    rust) setup_rust ;;
    *)
        echo "usage: $0 [all|venv|php|jars|rust]" >&2
        exit 2
        ;;
esac
