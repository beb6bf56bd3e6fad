#!/usr/bin/env bash
# Starts (up) or stops (down) the real broker servers the backend tests use, on loopback.
# Each backend's provisioning script lives beside this one as scripts/broker-<name>.sh and is
# picked up here as it lands. Idempotent: a server already running is reused.
set -euo pipefail
cd "$(dirname "$0")"

action=${1:-}
case "$action" in
    up | down) ;;
    *)
        echo "usage: $0 up|down" >&2
        exit 2
        ;;
esac

shopt -s nullglob
scripts=(broker-*.sh)
if [ ${#scripts[@]} -eq 0 ]; then
    echo "[brokers] no broker backend is provisioned yet (the memory broker needs no server)"
    exit 0
fi
for script in "${scripts[@]}"; do
    "./$script" "$action"
done
