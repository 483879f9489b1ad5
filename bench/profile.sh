#!/bin/sh
# Where the time of a saturated remote path goes, per task:
#
#     bench/profile.sh [--build-dir DIR] [--seconds N] [--no-trace]
#
# 1. cfutures remote: a cf-broker, a cf-worker --threads 2 and one client
#    keeping 1,000 no-op tasks in flight (cf_bench --load, map with a window
#    of 1,000 and chunksize 1), on loopback. For N seconds (default 5)
#    `perf stat` counts, in each of the three processes, system calls
#    (raw_syscalls:sys_enter), context switches, CPU time (split into user
#    and system by /proc/PID/stat) and, where perf can place a uprobe on
#    cf_proto_enc_send, the cf/1 messages each process sends; the client
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

# Messages each process sends: a uprobe on cf_proto_enc_send (every cf/1
# message but the broker's large task bodies) where perf can place one;
# the client (cf_bench) has the library linked in, the daemons load it.
probe_group=cfprofile$$
probes=""
add_probe() {    # $1 name, $2 binary
    addr=$(nm -D --defined-only "$2" 2>/dev/null | awk '$3 == "cf_proto_enc_send" { print $1; exit }')
    [ -n "$addr" ] || addr=$(nm --defined-only "$2" 2>/dev/null | awk '$3 == "cf_proto_enc_send" { print $1; exit }')
    [ -n "$addr" ] || return 0
    if perf probe -q -x "$2" -a "$probe_group:$1=0x$addr" >/dev/null 2>&1; then
        probes="$probes $probe_group:$1"
    fi
}
remove_probes() { [ -z "$probes" ] || perf probe -q -d "$probe_group:*" >/dev/null 2>&1 || true; }
add_probe lib "$(readlink -f "$build/libcfutures.so.1")"
add_probe bench "$build/bench/cf_bench"
# User and system CPU of a process so far, in clock ticks: "utime stime".
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12, $13 }' "/proc/$1/stat"; }

start_loader
perfs=""
for who in broker worker loader; do
    eval pid=\$$who
    msg_events=""
    for probe in $probes; do msg_events="$msg_events,$probe"; done
    # shellcheck disable=SC2154  # pid: set by the eval
    cpu_ticks "$pid" >"$tmp/ticks0.$who"
    perf stat -x, -e "$events$msg_events" -p "$pid" -o "$tmp/stat.$who" -- sleep "$seconds" &
    perfs="$perfs $!"
done
# shellcheck disable=SC2086
wait $perfs
for who in broker worker loader; do
    eval pid=\$$who
    cpu_ticks "$pid" >"$tmp/ticks1.$who"
done
stop_loader
remove_probes
rate=$(sed -n 's/.*: \([0-9]*\) tasks\/s/\1/p' "$tmp/loader.err")
echo "client: $tasks tasks after ready ($rate tasks/s)"
printf '%-8s %14s %14s %14s %14s %12s %12s %14s\n' process syscalls/task switches/task \
    migr/task "CPU us/task" "user us" "system us" "msgs sent/task"
for who in broker worker loader; do
    # Ticks over the whole window, scaled to the tasks of perf's window
    # (the same seconds): user and system shares of the CPU per task.
    read -r u0 s0 <"$tmp/ticks0.$who"
    read -r u1 s1 <"$tmp/ticks1.$who"
    awk -F, -v who="$who" -v tasks="$tasks" -v du=$((u1 - u0)) -v ds=$((s1 - s0)) '
        $3 == "raw_syscalls:sys_enter" { sc = $1 }
        $3 == "context-switches" { cs = $1 }
        $3 == "cpu-migrations" { mg = $1 }
        $3 == "task-clock" { tc = $1 }
        $3 ~ /^cfprofile/ && $1 ~ /^[0-9]+$/ { msgs += $1; probed = 1 }
        END { name = who == "loader" ? "client" : who;
              cpu = tc * 1000 / tasks; user = du + ds > 0 ? cpu * du / (du + ds) : 0;
              printf "%-8s %14.3f %14.3f %14.4f %14.3f %12.3f %12.3f %14s\n", name, sc / tasks,
                     cs / tasks, mg / tasks, cpu, user, cpu - user,
                     probed ? sprintf("%.4f", msgs / tasks) : "-" }' "$tmp/stat.$who"
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
    # /usr/bin/time (package time), where present, splits the CPU into user
    # and system for the three processes (the relay waits for its forks).
    timer=""
    [ -x /usr/bin/time ] && timer="/usr/bin/time -o $tmp/time.relay -f %U,%S"
    echo "-,-" >"$tmp/time.relay"
    # shellcheck disable=SC2086  # timer: a command and its arguments, or nothing
    perf stat -x, -e "$events" -o "$tmp/stat.relay" -- $timer \
        "$build/bench/zmq_relay" --variant "$variant" --workers 1 --messages "$messages" \
        --rounds 1 --no-payload --no-load | grep throughput | head -1
    times=$(tail -n 1 "$tmp/time.relay")
    awk -F, -v tasks="$messages" -v times="$times" '
        $3 == "raw_syscalls:sys_enter" { sc = $1 }
        $3 == "context-switches" { cs = $1 }
        $3 == "cpu-migrations" { mg = $1 }
        $3 == "task-clock" { tc = $1 }
        END { split(times, t, ",");
              user = t[1] == "-" ? "-" : sprintf("%.3f", t[1] * 1e6 / tasks);
              sys = t[2] == "-" ? "-" : sprintf("%.3f", t[2] * 1e6 / tasks);
              printf "%-8s %14s %14s %14s %14s %12s %12s\n", "", "syscalls/task", "switches/task",
                     "migr/task", "CPU us/task", "user us", "system us";
              printf "%-8s %14.3f %14.3f %14.4f %14.3f %12s %12s\n", "all 3", sc / tasks, cs / tasks,
                     mg / tasks, tc * 1000 / tasks, user, sys }' "$tmp/stat.relay"
done
