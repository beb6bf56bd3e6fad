# shellcheck shell=bash
# Helpers shared by the provisioning scripts. Set LOG_TAG before sourcing this file.

APT_UPDATED=0

# Prints a progress line tagged with the script's name.
say() { echo "[$LOG_TAG] $*"; }

# Prints an error line and exits 1.
die() {
    echo "[$LOG_TAG] ERROR: $*" >&2
    exit 1
}

# True when something accepts TCP connections on $1:$2.
port_open() {
    # shellcheck disable=SC2016 # expanded by the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# Prints the pid in file $1 when that process is alive and its command line matches the
# extended regular expression $2.
pid_from_file() {
    local pid
    [[ -f $1 ]] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qE "$2" || return 1
    echo "$pid"
}

# Installs Debian packages, running `apt-get update` once per script run and waiting for a
# dpkg lock another installer holds (the provisioning scripts may run side by side).
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found; install $* by hand"
    local -a apt=(apt-get -o DPkg::Lock::Timeout=300)
    if [[ $APT_UPDATED -eq 0 ]]; then
        say "apt-get update"
        "${apt[@]}" update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    say "apt-get install $*"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "$@" >/dev/null ||
        die "apt-get install $* failed"
}
