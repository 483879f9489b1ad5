#!/bin/sh
# cf-worker running short tasks in its actor, against --no-inline, side by side:
#
#     bench/inline_ab.sh [--build-dir DIR] [--rounds N]
#
# Per round, for each worker (inline first, then --no-inline, each with a
# fresh cf-broker and cf-worker --threads 2 on loopback):
#   - saturated: cf_bench --load (map, window 1,000, no-op tasks) for 4 s;
#     tasks/s, and CPU time and context switches per task of the broker, the
#     worker and the client (perf stat -p);
#   - one task at a time: cf_bench --rtt, 20,000 round trips, p50 with the
#     waiter's spin on and off.
# Prints one line per worker and round, then the medians and the min-max of
# the per-round ratios inline / --no-inline. Needs perf; uses the Release
# build of bench/run.sh (default build-release/).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
build="$(dirname "$here")/build-release"
rounds=5
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) build=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "inline_ab.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

name=inline_ab.sh
# shellcheck source=bench/daemons.sh
. "$here/daemons.sh"

# one_round TAG [WORKER FLAGS]: prints "TAG key value ..." on one line.
one_round() {
    tag=$1
    shift
    start_cluster "$@"
    "$build/bench/cf_bench" --load "$clients" >"$tmp/loader.out" 2>"$tmp/loader.err" &
    loader=$!
    pids="$pids $loader"
    wait_ready "$tmp/loader.out" >/dev/null
    perfs=""
    for pid in "$broker" "$worker" "$loader"; do
        case $pid in "$broker") who=broker ;; "$worker") who=worker ;; *) who=loader ;; esac
        perf stat -x, -e task-clock,context-switches -p "$pid" -o "$tmp/stat.$who" -- sleep 4 &
        perfs="$perfs $!"
    done
    # shellcheck disable=SC2086
    wait $perfs
    kill -TERM "$loader"
    wait "$loader" 2>/dev/null || true
    tasks=$(sed -n 's/^loader: \([0-9]*\) tasks.*/\1/p' "$tmp/loader.err")
    rate=$(sed -n 's/.*: \([0-9]*\) tasks\/s/\1/p' "$tmp/loader.err")
    out="$tag rate $rate"
    for who in broker worker loader; do
        out="$out $(awk -F, -v who="$who" -v n="$tasks" '
            $3 == "task-clock" { tc = $1 } $3 == "context-switches" { cs = $1 }
            END { printf "%s.cpu_us %.3f %s.switches %.4f", who, tc * 1000 / n, who, cs / n }' \
            "$tmp/stat.$who")"
    done
    on=$("$build/bench/cf_bench" --rtt "$clients" --rounds 20000 | awk '/p50/ { print $2 }')
    off=$(CF_WAIT_SPIN_US=0 "$build/bench/cf_bench" --rtt "$clients" --rounds 20000 |
          awk '/p50/ { print $2 }')
    echo "$out p50_spin_on $on p50_spin_off $off"
    kill "$worker" "$broker"
    wait "$worker" "$broker" 2>/dev/null || true
    pids=""
}

for _ in $(seq "$rounds"); do
    one_round inline
    one_round no_inline --no-inline
done | tee "$tmp/lines"
echo
printf '%-22s %12s %12s %8s %14s\n' figure inline no-inline ratio min-max
awk '
    { for (i = 2; i < NF; i += 2) { v[$1, $i, ++n[$1, $i]] = $(i + 1); keys[$i] = 1 } }
    function median(a, m,    i, j, t) {
        for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return m % 2 ? a[(m + 1) / 2] : (a[m / 2] + a[m / 2 + 1]) / 2
    }
    END {
        for (k in keys) {
            m = n["inline", k]
            delete a; delete b; delete r
            lo = 1e300; hi = -1e300
            for (i = 1; i <= m; i++) {
                a[i] = v["inline", k, i]; b[i] = v["no_inline", k, i]
                r[i] = b[i] ? a[i] / b[i] : 0
                if (r[i] < lo) lo = r[i]
                if (r[i] > hi) hi = r[i]
            }
            printf "%-22s %12.4g %12.4g %8.3f %6.2f-%.2f\n", k, median(a, m), median(b, m), median(r, m), lo, hi
        }
    }' "$tmp/lines" | sort
