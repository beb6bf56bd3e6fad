#!/usr/bin/env bash
# Makes sure the build tools the tests need are present. Idempotent.
set -euo pipefail

say() { printf '[install-toolchain] %s\n' "$*"; }

if ! command -v cargo >/dev/null 2>&1; then
    say "cargo is missing: install Rust (rustup) 1.85 or newer, then run make test again" >&2
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    for component in rustfmt clippy; do
        if ! rustup component list --installed 2>/dev/null | grep -q "^${component}"; then
            say "adding rustup component ${component}"
            rustup component add "${component}"
        fi
    done
fi
say "cargo $(cargo --version | cut -d' ' -f2) ready"
