#!/usr/bin/env bash
# Makes sure what the PHP extension and its tests need is present, from Debian packages only
# (Packagist is not used): PHP's CLI and headers, clang (ext-php-rs generates its bindings
# with bindgen), PHPUnit, and Laravel for the package's integration test. Idempotent: when
# everything is there it only checks and returns.
#
#   scripts/install-php.sh
#
# Environment:
#   POLYBUS_SKIP_PHP=1   do nothing (machines that do not build the PHP extension)
set -euo pipefail

say() { printf '[install-php] %s\n' "$*"; }
die() {
    printf '[install-php] ERROR: %s\n' "$*" >&2
    exit 1
}

if [[ ${POLYBUS_SKIP_PHP:-0} == 1 ]]; then
    say "POLYBUS_SKIP_PHP=1: skipped"
    exit 0
fi

# Debian package -> a file that proves it is installed (cheaper and clearer than dpkg queries).
declare -A PROBES=(
    [php-cli]=/usr/bin/php
    [php-dev]=/usr/bin/php-config
    [clang]=/usr/bin/clang
    [libclang-dev]=/usr/lib/llvm-14/lib/libclang.so
    [phpunit]=/usr/bin/phpunit
    [php-laravel-framework]=/usr/share/php/Illuminate/Foundation/Application.php
)

missing=()
for package in "${!PROBES[@]}"; do
    probe=${PROBES[$package]}
    if [[ $package == libclang-dev ]]; then
        # The llvm version moves with the Debian release: accept any libclang.so.
        compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null && continue
    elif [[ -e $probe ]]; then
        continue
    fi
    missing+=("$package")
done

if ((${#missing[@]} > 0)); then
    command -v apt-get >/dev/null 2>&1 ||
        die "missing ${missing[*]} and apt-get is not available: install them with your package manager"
    sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null 2>&1 || die "missing ${missing[*]}: run as root or install sudo"
        sudo=(sudo)
    fi
    say "installing ${missing[*]} from Debian packages"
    export DEBIAN_FRONTEND=noninteractive
    timeout 600 "${sudo[@]}" apt-get update -qq || die "apt-get update failed"
    timeout 1200 "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" ||
        die "apt-get install ${missing[*]} failed"
fi

for package in "${!PROBES[@]}"; do
    if [[ $package == libclang-dev ]]; then
        compgen -G '/usr/lib/llvm-*/lib/libclang.so' >/dev/null ||
            die "libclang-dev is installed but no libclang.so was found under /usr/lib/llvm-*/lib"
    elif [[ ! -e ${PROBES[$package]} ]]; then
        die "$package is installed but ${PROBES[$package]} is missing"
    fi
done
say "php $(php -r 'echo PHP_VERSION;'), phpunit $(phpunit --version | awk '/^PHPUnit/ {print $2}'), $(clang --version | head -n1) ready"
