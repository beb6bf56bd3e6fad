#!/usr/bin/env bash
# Creates (once) the virtual environment the Python package is built and tested in, with the
# tools it needs, and builds the package into it with maturin (debug, incremental).
# Usage: scripts/python-env.sh [--release]
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${POLYBUS_VENV:-$HOME/.cache/polybus/venv}
say() { printf '[python] %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
    say "creating virtual environment $VENV"
    python3 -m venv "$VENV"
fi
marker="$VENV/.polybus-tools-2"
if [ ! -f "$marker" ]; then
    say "installing maturin, pytest, pydantic, ruff, uvloop"
    "$VENV/bin/pip" install --quiet --upgrade pip
    "$VENV/bin/pip" install --quiet "maturin>=1.7,<2" "pytest>=8" "pydantic>=2" "ruff>=0.6" "uvloop>=0.19"
    touch "$marker"
fi
say "building polybus into $VENV"
log=$(mktemp)
if ! VIRTUAL_ENV="$VENV" PATH="$VENV/bin:$PATH" "$VENV/bin/maturin" develop --quiet "$@" >"$log" 2>&1; then
    cat "$log" >&2
    rm -f "$log"
    say "maturin develop failed" >&2
    exit 1
fi
rm -f "$log"
"$VENV/bin/python" -c "import polybus, sys; print('[python] polybus', polybus.__version__, 'on Python', sys.version.split()[0])"
