#!/usr/bin/env bash
# Runs every test suite and ends with one tally line: "all: N passed, N failed".
# Each suite's output is shown as it runs; a failing suite fails the run after the tally.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

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
VENV=${POLYBUS_VENV:-$HOME/.cache/polybus/venv}
run_suite rust "$CARGO" test --workspace --all-targets --no-fail-fast
run_suite rust-doc "$CARGO" test --workspace --doc
run_suite python "$VENV/bin/pytest" -q -p no:cacheprovider bindings-python/tests
run_suite php bindings-php/run-tests.sh
# The benchmark harness once with tiny counts, so it never rots; no timing is asserted.
run_suite bench-smoke scripts/bench.sh --smoke

# cargo: "test result: ok. 18 passed; 0 failed; 0 ignored; ..."
# pytest: "2 failed, 43 passed in 26.54s" / "45 passed in 26.54s"
# PHPUnit: "OK (66 tests, 273 assertions)" / "Tests: 66, Assertions: 270, Failures: 2."
read -r passed failed < <(cat "$logs"/*.log | awk '
    /^test result:/ { p += $4; f += $6; next }
    /^OK \([0-9]+ tests?,/ { sub(/^OK \(/, ""); p += $1; next }
    /^Tests: [0-9]+, Assertions:/ {
        t = $2 + 0; bad = 0
        for (i = 3; i <= NF; i++) if ($i ~ /^(Failures|Errors):$/) bad += $(i + 1) + 0
        p += t - bad; f += bad; next
    }
    /^[= ]*[0-9]+ (passed|failed).* in [0-9.]+s/ {
        for (i = 1; i < NF; i++) {
            if ($(i + 1) ~ /^passed/) p += $i
            if ($(i + 1) ~ /^failed/) f += $i
        }
    }
    END { print p + 0, f + 0 }')
echo
echo "all: ${passed} passed, ${failed} failed"
if [ "$status" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$passed" -eq 0 ]; then
    exit 1
fi
