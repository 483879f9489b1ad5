#!/bin/sh
# The cfutures benchmark, side by side, in one command:
#
#     bench/run.sh [--build-dir DIR] [--rounds N] [--no-build]
#
# Builds Release (cf_bench, zmq_relay, libbench_tasks.so, cf-broker,
# cf-worker), then runs, in N rounds (default 3) interleaved so that noise
# from a shared machine hits every implementation alike:
#     py_futures.py   concurrent.futures (ThreadPoolExecutor, ProcessPoolExecutor)
#     zmq_relay       raw libzmq DEALER -> ROUTER/ROUTER relay -> DEALER echo
#     cf_bench        cfutures on threads, processes and remote
# and once the memory workloads (cf_bench --only mem). Prints the median of
# every figure and the ratios the targets talk about, each with its target
# and whether it is met. Raw lines are kept in DIR/bench-results.txt.
#
# The one-task-per-message figures of processes and remote (submit, map with
# chunksize 1), in Python and in cfutures alike, run 20,000 tasks rather than
# 100,000 (ProcessPoolExecutor does about 6,000 tasks/s: 100,000 would take a
# minute per round on its own); a rate over 20,000 tasks is already steady.
# Threads and chunked maps run the full 100,000. MESSAGE_TASKS=N overrides.

set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
build="$root/build-release"
rounds=3
do_build=1
while [ $# -gt 0 ]; do
    case "$1" in
        --build-dir) build=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --no-build) do_build=0; shift ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

if [ "$do_build" = 1 ]; then
    echo "== building Release in $build"
    mkdir -p "$build"
    cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release >"$build/bench-cmake.log" 2>&1 \
        || { cat "$build/bench-cmake.log"; exit 1; }
    cmake --build "$build" -j2 --target cf_bench zmq_relay bench_tasks cf-broker cf-worker \
        >"$build/bench-build.log" 2>&1 || { tail -40 "$build/bench-build.log"; exit 1; }
fi

results="$build/bench-results.txt"
: >"$results"
export CF_BROKER_BIN="${CF_BROKER_BIN:-$build/cf-broker}"
export CF_WORKER_BIN="${CF_WORKER_BIN:-$build/cf-worker}"
export CF_BENCH_TASKS_LIB="${CF_BENCH_TASKS_LIB:-$build/bench/libbench_tasks.so}"
message_tasks=${MESSAGE_TASKS:-20000}
start=$(date +%s)

# Runs a program, echoing its output (without the daemons' info lines) and
# appending everything to the results.
run() {
    "$@" 2>&1 | tee -a "$results" | grep -v '^[0-9:.]* [DI]: ' | sed 's/^/   /'
}

i=1
while [ "$i" -le "$rounds" ]; do
    echo "== round $i of $rounds"
    run python3 "$here/py_futures.py" --proc-tasks "$message_tasks" || true
    run "$build/bench/zmq_relay" || true
    run "$build/bench/cf_bench" --only threads,processes,remote --message-tasks "$message_tasks" || true
    i=$((i + 1))
done
echo "== memory"
run "$build/bench/cf_bench" --only mem || true
echo "== done in $(( $(date +%s) - start )) s"

python3 - "$results" <<'EOF'
import statistics, sys

samples = {}
units = {}
for line in open(sys.argv[1]):
    parts = line.split()
    if len(parts) != 3 or line[0] in "#| ":
        continue
    try:
        value = float(parts[1])
    except ValueError:
        continue
    samples.setdefault(parts[0], []).append(value)
    units[parts[0]] = parts[2]
med = {k: statistics.median(v) for k, v in samples.items()}

def fmt(v):
    if v is None:
        return "-"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3g}"

print("\nMedians (n = samples)")
print(f"{'figure':34} {'median':>14} {'unit':10} n")
for k in sorted(med):
    print(f"{k:34} {fmt(med[k]):>14} {units[k]:10} {len(samples[k])}")

def ratio(a, b):
    return med[a] / med[b] if a in med and b in med and med[b] else None

def value(a):
    return med.get(a)

# (label, measured, target text, met?)
rows = []
def check(label, got, op, target, unit="x"):
    if got is None:
        rows.append((label, "-", f"{op} {target}{unit}", "NO DATA"))
        return
    met = got >= target if op == ">=" else got <= target if op == "<=" else got < target
    rows.append((label, f"{got:.3g}{unit}", f"{op} {target}{unit}", "met" if met else "MISSED"))

check("threads / ThreadPool, submit", ratio("threads.noop.submit", "python.threads.noop.submit"), ">=", 10)
check("threads / ThreadPool, map", ratio("threads.noop.map1", "python.threads.noop.map1"), ">=", 10)
check("threads p50 / ThreadPool p50", ratio("threads.latency.p50", "python.threads.latency.p50"), "<=", 0.5)
check("processes / ProcessPool, submit", ratio("processes.noop.submit", "python.processes.noop.submit"), ">=", 20)
check("processes / ProcessPool, map chunk 1", ratio("processes.noop.map1", "python.processes.noop.map1"), ">=", 20)
check("processes / ProcessPool, map chunk 1000", ratio("processes.noop.map1000", "python.processes.noop.map1000"), ">=", 1)
check("processes prime speedup, 2 workers", value("processes.prime.speedup"), ">=", 1.95)
check("remote / relay throughput, submit", ratio("remote.noop.submit", "relay.throughput"), ">=", 0.5)
check("remote / relay throughput, map", ratio("remote.noop.map1", "relay.throughput"), ">=", 0.5)
check("remote p50 / relay p50", ratio("remote.latency.p50", "relay.latency.p50"), "<=", 1.25)
# The relay's client sleeps in zmq_recv; cfutures' waiter spins first (see
# cf_set_wait_spin). The same round trip with spinning off, for comparison.
check("  same, waiter spin off", ratio("remote.latency_nospin.p50", "relay.latency.p50"), "<=", 1.25)
check("I/O fan-out wall (ideal 100 ms)", value("threads.io.wall"), "<=", 105, " ms")
check("broker bookkeeping per queued task", value("broker.mem.bookkeeping"), "<=", 256, " B")
check("client peak RSS, map of 10M", value("client.map.peak_rss"), "<", 64, " MiB")

print("\nFor reference: Python prime speedup", fmt(value("python.processes.prime.speedup")),
      "x; cfutures threads prime speedup", fmt(value("threads.prime.speedup")), "x")
print(f"\n{'target':42} {'measured':>12} {'target':>12}  result")
for label, got, target, verdict in rows:
    print(f"{label:42} {got:>12} {target:>12}  {verdict}")
EOF
