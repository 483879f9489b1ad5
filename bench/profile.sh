#!/bin/sh
# Where the time of a saturated remote path goes, per task:
#
#     bench/profile.sh [--build-dir DIR] [--seconds N] [--no-trace]
#
# 1. cfutures remote: a cf-broker, a cf-worker --threads 2 and one client
#    keeping 1,000 no-op tasks in flight (cf_bench --load, map with a window
#    of 1,000 and chunksize 1), on loopback. For N seconds (default 5)
#    `perf stat` counts, in each of the three processes, system calls
#    (raw_syscalls:sys_enter), context switches and CPU time; the client
#    reports how many tasks it completed. Printed per task.
# 2. Then (unless --no-trace) `perf trace -s` for N seconds on each process,
#    with a fresh client: which system calls, as shares of each process's
#    calls (tracing slows everything down, which makes batches larger: the
#    per-task counts are those of step 1, not of this step).
# 3. One task at a time, 20,000 round trips (cf_bench --rtt), the waiter's
#    spin on and off: the same counters per round trip, each process.
# 4. The raw relay doing the same work, drain (one task per message) and
#    batch (256 tasks per message), one worker, saturated and one task at a
#    time: the same counters for the three processes together (perf stat
#    follows the relay's forks), per task.
#
# Needs perf (linux-perf) and permission to trace (root, or
# kernel.perf_event_paranoid <= 1). Uses the Release build of bench/run.sh.

set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build="$root/build-release"
seconds=5
trace=1
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) build=$2; shift 2 ;;
        --seconds) seconds=$2; shift 2 ;;
        --no-trace) trace=0; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) echo "profile.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

name=profile.sh
# shellcheck source=bench/daemons.sh
. "$here/daemons.sh"

events=raw_syscalls:sys_enter,context-switches,cpu-migrations,task-clock

echo "== cfutures remote, saturated: 1 client (window 1,000), cf-broker, cf-worker --threads 2"
# shellcheck disable=SC2119  # no extra worker flags
start_cluster

# Starts a loader; sets $loader.
start_loader() {
    "$build/bench/cf_bench" --load "$clients" >"$tmp/loader.out" 2>"$tmp/loader.err" &
    loader=$!
    pids="$pids $loader"
    wait_ready "$tmp/loader.out" >/dev/null
}
# Stops the loader (not in a subshell: it waits for it); sets $tasks to the
# number of tasks it did after ready.
stop_loader() {
    kill -TERM "$loader"
    wait "$loader" 2>/dev/null || true
    tasks=$(sed -n 's/^loader: \([0-9]*\) tasks.*/\1/p' "$tmp/loader.err")
}

start_loader
perfs=""
for who in broker worker loader; do
    eval pid=\$$who
    # shellcheck disable=SC2154  # pid: set by the eval
    perf stat -x, -e "$events" -p "$pid" -o "$tmp/stat.$who" -- sleep "$seconds" &
    perfs="$perfs $!"
done
# shellcheck disable=SC2086
wait $perfs
stop_loader
rate=$(sed -n 's/.*: \([0-9]*\) tasks\/s/\1/p' "$tmp/loader.err")
echo "client: $tasks tasks after ready ($rate tasks/s)"
printf '%-8s %14s %14s %14s %14s\n' process syscalls/task switches/task migr/task "CPU us/task"
for who in broker worker loader; do
    awk -F, -v who="$who" -v tasks="$tasks" '
        $3 == "raw_syscalls:sys_enter" { sc = $1 }
        $3 == "context-switches" { cs = $1 }
        $3 == "cpu-migrations" { mg = $1 }
        $3 == "task-clock" { tc = $1 }
        END { name = who == "loader" ? "client" : who;
              printf "%-8s %14.3f %14.3f %14.4f %14.3f\n", name, sc / tasks, cs / tasks, mg / tasks,
                     tc * 1000 / tasks }' "$tmp/stat.$who"
done

if [ "$trace" = 1 ]; then
    echo
    echo "== cfutures remote, which system calls (perf trace -s, a fresh client)"
    start_loader
    perfs=""
    for who in broker worker loader; do
        eval pid=\$$who
        perf trace -s -p "$pid" -o "$tmp/trace.$who" -- sleep "$seconds" >/dev/null 2>&1 &
        perfs="$perfs $!"
    done
    # shellcheck disable=SC2086
    wait $perfs
    stop_loader
    echo "client: $tasks tasks after ready while traced"
    for who in broker worker loader; do
        name=$who
        [ "$who" = loader ] && name=client
        echo "-- $name: share of its system calls (all threads)"
        awk '
            $1 ~ /^[a-z_0-9]+$/ && $2 ~ /^[0-9]+$/ && NF >= 8 { calls[$1] += $2; total += $2 }
            END { for (s in calls) printf "   %-16s %5.1f%%\n", s, 100 * calls[s] / total }' \
            "$tmp/trace.$who" | sort -k2 -n -r | head -8
    done
fi

# One task at a time: the client is cf_bench --rtt (R round trips after
# 100 to warm up), the broker and worker are counted for that client's life.
rtt_rounds=20000
for spin in on off; do
    echo
    echo "== cfutures remote, one task at a time, waiter spin $spin: $rtt_rounds round trips (all 3 processes)"
    if [ "$spin" = off ]; then export CF_WAIT_SPIN_US=0; else unset CF_WAIT_SPIN_US; fi
    perfs=""
    for who in broker worker; do
        eval pid=\$$who
        perf stat -x, -e "$events" -p "$pid" -o "$tmp/rstat.$who" &
        perfs="$perfs $!"
    done
    perf stat -x, -e "$events" -o "$tmp/rstat.client" -- \
        "$build/bench/cf_bench" --rtt "$clients" --rounds "$rtt_rounds" | grep 'p50'
    # shellcheck disable=SC2086
    kill -INT $perfs 2>/dev/null || true
    # shellcheck disable=SC2086
    wait $perfs 2>/dev/null || true
    printf '%-8s %14s %14s %14s %14s\n' process syscalls/rtt switches/rtt migr/rtt "CPU us/rtt"
    for who in broker worker client; do
        awk -F, -v who="$who" -v n="$rtt_rounds" '
            $3 == "raw_syscalls:sys_enter" { sc = $1 }
            $3 == "context-switches" { cs = $1 }
            $3 == "cpu-migrations" { mg = $1 }
            $3 == "task-clock" { tc = $1 }
            END { n += 100;
                  printf "%-8s %14.1f %14.2f %14.3f %14.1f\n", who, sc / n, cs / n, mg / n, tc * 1000 / n }' \
            "$tmp/rstat.$who"
    done
done

kill "$worker" "$broker" 2>/dev/null || true

echo
echo "== raw relay, drain, 1 worker, one task at a time: $rtt_rounds round trips (client, relay, worker together)"
perf stat -x, -e "$events" -o "$tmp/rstat.relay" -- \
    "$build/bench/zmq_relay" --variant drain --workers 1 --messages 1 --rounds "$rtt_rounds" \
    --no-payload --no-load --no-spin | grep 'latency.p50'
awk -F, -v n="$rtt_rounds" '
    $3 == "raw_syscalls:sys_enter" { sc = $1 }
    $3 == "context-switches" { cs = $1 }
    $3 == "cpu-migrations" { mg = $1 }
    $3 == "task-clock" { tc = $1 }
    END { n += 101;
          printf "%-8s %14s %14s %14s %14s\n", "", "syscalls/rtt", "switches/rtt", "migr/rtt", "CPU us/rtt";
          printf "%-8s %14.1f %14.2f %14.3f %14.1f\n", "all 3", sc / n, cs / n, mg / n, tc * 1000 / n }' \
    "$tmp/rstat.relay"

for variant in drain batch; do
    messages=2000000
    echo
    echo "== raw relay, $variant, 1 worker: $messages tasks, 1,000 in flight (client, relay, worker together)"
    perf stat -x, -e "$events" -o "$tmp/stat.relay" -- \
        "$build/bench/zmq_relay" --variant "$variant" --workers 1 --messages "$messages" \
        --rounds 1 --no-payload --no-load | grep throughput | head -1
    awk -F, -v tasks="$messages" '
        $3 == "raw_syscalls:sys_enter" { sc = $1 }
        $3 == "context-switches" { cs = $1 }
        $3 == "cpu-migrations" { mg = $1 }
        $3 == "task-clock" { tc = $1 }
        END { printf "%-8s %14s %14s %14s %14s\n", "", "syscalls/task", "switches/task", "migr/task", "CPU us/task";
              printf "%-8s %14.3f %14.3f %14.4f %14.3f\n", "all 3", sc / tasks, cs / tasks, mg / tasks,
                     tc * 1000 / tasks }' "$tmp/stat.relay"
done
