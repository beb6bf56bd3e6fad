#!/usr/bin/env bash
# Runs the benchmark suite (benches/README.md): starts the brokers (scripts/brokers.sh up),
# builds and installs what it compares (scripts/bench-tools.sh: cached, a second run installs
# nothing), then runs the harness, which prints the summary table and writes
# benches/results/<UTC time>.{json,md} with PNG plots.
#
#   scripts/bench.sh [--messages N] [--sizes 100,1024] [--only GLOB] [--smoke] [--out DIR] ...
#
# `--smoke` (what `make test` runs): every scenario once with tiny counts, on debug builds (the
# ones the tests made), results in a temporary directory; exits 1 when a Polybus run fails.
# Everything else is measured on release builds. BENCH_PROFILE=release|debug overrides.
set -euo pipefail
cd "$(dirname "$0")/.."

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polybus/target}
VENV=${POLYBUS_BENCH_VENV:-$HOME/.cache/polybus/bench-venv}

profile=release
provision=1
for arg in "$@"; do
    case "$arg" in
        --smoke) profile=debug ;;
        -h | --help | --list) provision=0 ;;
    esac
done
export BENCH_PROFILE=${BENCH_PROFILE:-$profile}

python=$VENV/bin/python
if [[ $provision -eq 1 ]]; then
    scripts/brokers.sh up
    if [[ $profile == release ]]; then
        # The tests' node blocks publishers above 1 GB (RABBITMQ_MEMORY_LIMIT), which a backlog
        # of 100,000 persistent 1 KiB messages can reach while it is written: clients then wait
        # (Polybus) or fail (php-amqplib). Measured runs get RabbitMQ's own default, 40% of RAM,
        # until the node restarts. Not for a RabbitMQ this project did not start.
        scripts/broker-rabbitmq.sh ctl set_vm_memory_high_watermark 0.4 >/dev/null ||
            echo "bench: could not raise RabbitMQ's memory watermark; large backlogs may block publishers" >&2
    fi
    scripts/bench-tools.sh all
elif [[ ! -x $python ]]; then
    python=python3 # --help and --list need nothing installed
fi
cd benches
exec "$python" -m harness "$@"
