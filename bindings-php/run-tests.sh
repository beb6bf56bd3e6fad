#!/usr/bin/env bash
# Builds the PHP extension and runs every PHP test (PHPUnit 9.6 from Debian) with it loaded.
# Arguments go to PHPUnit (e.g. --filter Memory, --testsuite laravel).
#
# Environment: CARGO_TARGET_DIR (default ~/.cache/polybus/target), CARGO (default cargo),
# POLYBUS_TEST_REDIS_URL, POLYBUS_TEST_AMQP_URL, POLYBUS_TEST_KAFKA_URL (real brokers; the
# defaults are the loopback servers `make brokers-up` starts).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/polybus/target}

"${CARGO:-cargo}" build --quiet -p polybus-php
extension=$CARGO_TARGET_DIR/debug/libpolybus_php.so
[[ -f $extension ]] || { echo "run-tests: $extension was not built" >&2; exit 1; }

cd "$here"
exec php -d "extension=$extension" -d memory_limit=512M /usr/bin/phpunit --configuration phpunit.xml "$@"
