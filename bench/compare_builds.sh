#!/bin/sh
# Two builds of cfutures side by side: did a change cost speed?
#
#     bench/compare_builds.sh OLD_BUILD_DIR NEW_BUILD_DIR [ROUNDS]
#
# Each directory is a Release build holding bench/cf_bench,
# bench/libbench_tasks.so, cf-broker and cf-worker (bench/run.sh --build-dir
# makes one; for an old commit: git worktree add /tmp/old REV, then build
# there). Runs cf_bench on threads, processes and remote, and its memory
# workloads, ROUNDS times (default 5) for each build, interleaved old, new,
# new, old, ... so that a shared machine's noise hits both alike; then prints,
# per figure, the median of each build, new / old, the min-max of the
# per-round ratios, and whether new is within 5% of old (or better) in the
# figure's own direction: tasks/s and speedups up, latencies, times and
# bytes down. ONLY=GROUPS runs those cf_bench groups only; BENCH_BUILD=DIR
# runs DIR's cf_bench for both (see bench() below).
set -eu

[ $# -ge 2 ] || { sed -n '2,14p' "$0"; exit 2; }
old=$1
new=$2
rounds=${3:-5}
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# ONLY=GROUPS (cf_bench --only) narrows the groups; BENCH_BUILD=DIR runs
# that build's cf_bench (and client library) against both builds' cf-broker,
# cf-worker and task library: a workload the old cf_bench lacks, or a
# change of the daemons alone.
groups=${ONLY:-threads,processes,remote,mem}
bench() {       # bench BUILD TAG ROUND
    CF_BROKER_BIN="$1/cf-broker" CF_WORKER_BIN="$1/cf-worker" \
    CF_BENCH_TASKS_LIB="$1/bench/libbench_tasks.so" \
        "${BENCH_BUILD:-$1}/bench/cf_bench" --only "$groups" --message-tasks 20000 \
        >"$out/$2.$3.txt" 2>/dev/null || echo "compare_builds: $2 round $3 failed" >&2
}

i=1
while [ "$i" -le "$rounds" ]; do
    echo "== round $i of $rounds" >&2
    if [ $((i % 2)) = 1 ]; then
        bench "$old" old "$i"; bench "$new" new "$i"
    else
        bench "$new" new "$i"; bench "$old" old "$i"
    fi
    i=$((i + 1))
done

python3 - "$out" "$rounds" <<'EOF'
import os, statistics, sys

out, rounds = sys.argv[1], int(sys.argv[2])
def load(tag, r):
    figures, units = {}, {}
    path = os.path.join(out, f"{tag}.{r}.txt")
    if not os.path.exists(path):
        return figures, units
    for line in open(path):
        parts = line.split()
        if len(parts) != 3 or line[0] in "#| ":
            continue
        try:
            figures[parts[0]] = float(parts[1])
            units[parts[0]] = parts[2]
        except ValueError:
            pass
    return figures, units

old = [load("old", r)[0] for r in range(1, rounds + 1)]
new = [load("new", r) for r in range(1, rounds + 1)]
units = {}
for _, u in new:
    units.update(u)
new = [f for f, _ in new]
higher_better = lambda name, unit: unit.endswith("/s") or unit == "x"
print(f"{'figure':34} {'old':>12} {'new':>12} {'new/old':>8} {'min-max':>13}  within 5%?")
worse = 0
for name in sorted(units):
    o = [f[name] for f in old if name in f]
    n = [f[name] for f in new if name in f]
    if not o or not n:
        continue
    mo, mn = statistics.median(o), statistics.median(n)
    ratios = [b / a for a, b in zip(o, n) if a]
    ratio = mn / mo if mo else float("nan")
    up = higher_better(name, units[name])
    ok = ratio >= 0.95 if up else ratio <= 1.05
    worse += not ok
    span = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
    print(f"{name:34} {mo:12.4g} {mn:12.4g} {ratio:8.3f} {span:>13}  "
          f"{'yes' if ok else 'NO'} ({'higher' if up else 'lower'} is better)")
print(f"\n{rounds} interleaved rounds; {worse} figures more than 5% worse in the median")
EOF
