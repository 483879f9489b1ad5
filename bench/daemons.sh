# shellcheck shell=sh
# Sourced by bench scripts that start cf-broker, cf-worker and clients
# themselves (profile.sh, inline_ab.sh): a scratch directory, the PIDs to
# stop on exit, and reading the daemons' "ready" lines. The caller sets
# "name" (for messages) before sourcing.

tmp=$(mktemp -d)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP_TMP:-}" ]; then echo "kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT INT TERM

# Waits until file $1 has a line starting with "ready"; prints that line.
wait_ready() {
    i=0
    while ! grep -q '^ready' "$1" 2>/dev/null; do
        i=$((i + 1))
        # shellcheck disable=SC2154  # name: set by the caller
        [ "$i" -lt 300 ] || { echo "$name: no ready line in $1" >&2; exit 1; }
        sleep 0.1
    done
    grep -m1 '^ready' "$1"
}

# The value of KEY=VALUE field $2 in line $1.
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
