# shellcheck shell=sh
# shellcheck disable=SC2034,SC2154  # build, name: the caller's; what is set: for it
# Sourced by bench scripts that start cf-broker, cf-worker and clients
# themselves (profile.sh, inline_ab.sh): a scratch directory, the PIDs to
# stop on exit, reading the daemons' "ready" lines, starting the two. The
# caller sets "name" (for messages) and "build" before sourcing.

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
        [ "$i" -lt 300 ] || { echo "$name: no ready line in $1" >&2; exit 1; }
        sleep 0.1
    done
    grep -m1 '^ready' "$1"
}

# The value of KEY=VALUE field $2 in line $1.
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

# Starts a cf-broker on loopback and a cf-worker --threads 2 (plus the
# arguments given) of $build, and waits for both; sets broker, worker (their
# PIDs), clients and workers (the broker's endpoints).
start_cluster() {
    "$build/cf-broker" --clients 'tcp://127.0.0.1:*' --workers 'tcp://127.0.0.1:*' \
        >"$tmp/broker.out" 2>/dev/null &
    broker=$!
    pids="$pids $broker"
    line=$(wait_ready "$tmp/broker.out")
    clients=$(field "$line" clients)
    workers=$(field "$line" workers)
    "$build/cf-worker" --broker "$workers" --tasks "$build/bench/libbench_tasks.so" --threads 2 \
        "$@" >"$tmp/worker.out" 2>/dev/null &
    worker=$!
    pids="$pids $worker"
    wait_ready "$tmp/worker.out" >/dev/null
}
