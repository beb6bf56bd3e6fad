#!/usr/bin/env bash
# Runs every test suite and ends with one tally line: "all: N passed, N failed".
# Each suite's output is shown as it runs; a failing suite fails the run after the tally.
set -uo pipefail
cd "$(dirname "$0")/.."

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
status=0

run_suite() {
    local name=$1
    shift
    echo "==> $name: $*"
    if ! "$@" 2>&1 | tee "$logs/$name.log"; then
        echo "==> $name FAILED"
        status=1
    fi
}

CARGO=${CARGO:-cargo}
run_suite rust "$CARGO" test --workspace --all-targets
run_suite rust-doc "$CARGO" test --workspace --doc

# cargo: "test result: ok. 18 passed; 0 failed; 0 ignored; ..."
read -r passed failed < <(cat "$logs"/*.log | awk '
    /^test result:/ { p += $4; f += $6 }
    END { print p + 0, f + 0 }')
echo
echo "all: ${passed} passed, ${failed} failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
    exit 1
fi
