#!/bin/sh
# The cfutures benchmark, side by side, in one command:
#
#     bench/run.sh [--build-dir DIR] [--rounds N] [--no-build] [--out DIR]
#                  [--plots DIR] [--quick]
#
# Builds Release (cf_bench, zmq_relay, libbench_tasks.so, cf-broker,
# cf-worker), then runs, in N rounds (default 5) interleaved so that noise
# from a shared machine hits every implementation alike:
#     py_futures.py   concurrent.futures (ThreadPoolExecutor, ProcessPoolExecutor)
#     zmq_relay       raw libzmq relays: every variant, 1 and 2 workers,
#                     payloads, under load
#     cf_bench        cfutures on threads, processes and remote (with
#                     payloads and under load)
# and once the memory workloads (cf_bench --only mem). Then
# bench_report.py prints the median and min-max of every figure and of
# every ratio the targets talk about (each ratio taken within a round), with
# met or MISSED, and draws the plots (gnuplot) into the plots directory
# (default OUT/bench-plots; the last round's latency samples are in
# OUT/bench-samples). Raw lines are kept in OUT/bench-results.txt (OUT:
# --out, default the build directory); `bench/bench_report.py
# OUT/bench-results.txt --samples OUT/bench-samples --plots DIR` prints the
# report and draws the plots again.
#
# --quick: one round of every program's --quick mode (tiny sizes, seconds):
# checks that every figure and plot is produced, never how fast; exits 1 if
# a figure is missing.
#
# The one-task-per-message figures of processes and remote (submit, map with
# chunksize 1), in Python and in cfutures alike, run 20,000 tasks rather than
# 100,000 (ProcessPoolExecutor does about 6,000 tasks/s: 100,000 would take a
# minute per round on its own); a rate over 20,000 tasks is already steady.
# Threads and chunked maps run the full 100,000. MESSAGE_TASKS=N overrides.
# PYTHON=... picks the Python (default python3).

set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build="$root/build-release"
rounds=5
do_build=1
quick=0
plots=""
out=""
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) build=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --no-build) do_build=0; shift ;;
        --plots) plots=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --quick) quick=1; shift ;;
        -h|--help) sed -n '2,36p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[ -n "$out" ] || out="$build"
[ -n "$plots" ] || plots="$out/bench-plots"
mkdir -p "$out"
python=${PYTHON:-python3}

if [ "$do_build" = 1 ]; then
    echo "== building Release in $build"
    mkdir -p "$build"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build/bench-cmake.log" 2>&1 \
        || { cat "$build/bench-cmake.log"; exit 1; }
    cmake --build "$build" -j2 --target cf_bench zmq_relay bench_tasks cf-broker cf-worker \
        >"$build/bench-build.log" 2>&1 || { tail -40 "$build/bench-build.log"; exit 1; }
fi

results="$out/bench-results.txt"
samples="$out/bench-samples"
: >"$results"
rm -rf "$samples"
mkdir -p "$samples"
export CF_BROKER_BIN="${CF_BROKER_BIN:-$build/cf-broker}"
export CF_WORKER_BIN="${CF_WORKER_BIN:-$build/cf-worker}"
export CF_BENCH_TASKS_LIB="${CF_BENCH_TASKS_LIB:-$build/bench/libbench_tasks.so}"
message_tasks=${MESSAGE_TASKS:-20000}
if [ "$quick" = 1 ]; then
    rounds=1
    q=--quick
    py_sizes=""
    cf_sizes=""
else
    q=""
    py_sizes="--proc-tasks $message_tasks"
    cf_sizes="--message-tasks $message_tasks"
fi
start=$(date +%s)

# Runs a program, echoing its output (without the daemons' info lines) and
# appending everything to the results.
run() {
    "$@" 2>&1 | tee -a "$results" | grep -v '^[0-9:.]* [DI]: ' | sed 's/^/   /'
}
load() {
    echo "# load $1: $(cut -d' ' -f1-3 /proc/loadavg) (1, 5, 15 min)" | tee -a "$results"
}

echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) cores, $rounds round(s)$([ "$quick" = 1 ] && echo ', quick')" \
    | tee -a "$results"
i=1
while [ "$i" -le "$rounds" ]; do
    echo "# round $i" >>"$results"
    echo "== round $i of $rounds"
    load "round $i start"
    # shellcheck disable=SC2086
    run "$python" "$here/py_futures.py" $q $py_sizes --samples "$samples" || true
    # shellcheck disable=SC2086
    run "$build/bench/zmq_relay" $q --samples "$samples" || true
    # shellcheck disable=SC2086
    run "$build/bench/cf_bench" $q --only threads,processes,remote $cf_sizes --samples "$samples" || true
    load "round $i end"
    i=$((i + 1))
done
echo "== memory"
echo "# memory" >>"$results"
# shellcheck disable=SC2086
run "$build/bench/cf_bench" $q --only mem || true
echo "== done in $(( $(date +%s) - start )) s"

report_quick=""
[ "$quick" = 1 ] && report_quick=--quick
# shellcheck disable=SC2086
"$python" "$here/bench_report.py" "$results" --samples "$samples" --plots "$plots" $report_quick
