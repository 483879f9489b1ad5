#!/usr/bin/env python3
"""The Python client benchmark: cfutures.Executor sending tasks to C workers
through a real cf-broker, against Python's own ProcessPoolExecutor doing the
same work on the same machine, side by side.

Workloads (the same in both, as in py_futures.py and cf_bench):
  noop.submit   N no-op tasks (x -> 2x) submitted one by one, then collected
                with concurrent.futures.as_completed: one task per message
                (each input its own task; the client may batch several
                tasks into one SUBMIT, as the C client does)
  noop.map1     the same through map(chunksize=1)
  prime         the 16 15-digit primes of py_futures.py, one task each
                (trial division: bench_is_prime in C on the cluster,
                py_futures.is_prime in the pool's processes), wall time

The cluster is one cf-broker and one cf-worker --threads CORES loading
libbench_tasks.so, started here on tcp://127.0.0.1:* and found through
their ready lines; the pool has CORES processes. Rounds interleave the two
(cluster, pool, cluster, pool, ...), so load from elsewhere hits both
alike; each round yields one ratio per workload, and the summary gives the
median and the min-max of the ratios across rounds against the targets:

  noop (submit and map1): cfutures >= 3x ProcessPoolExecutor's tasks/s
  prime: cfutures at least as fast (pool time / cluster time >= 1)

and prints MET or MISSED for each.

Usage: py_cf_client.py [--rounds N] [--tasks N] [--quick]
                       [--broker BIN] [--worker BIN] [--tasks-lib LIB]
Binaries default to CF_BROKER_BIN, CF_WORKER_BIN, CF_BENCH_TASKS_LIB, else
build-release/ (bench/run.sh builds it), else build/.
Run with the interpreter that has pyzmq and msgpack (Debian: /usr/bin/python3).
"""

import argparse
import concurrent.futures as cf
import os
import pathlib
import re
import select
import signal
import statistics
import subprocess
import sys
import time

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "python"))
sys.path.insert(0, str(HERE))

import cfutures  # noqa: E402
import py_futures  # noqa: E402  (double, is_prime, PY_PRIMES, QUICK_PRIMES)

TARGETS = {"noop.submit": 3.0, "noop.map1": 3.0, "prime": 1.0}


def _default(env, *names):
    if os.environ.get(env):
        return os.environ[env]
    for build in ("build-release", "build"):
        path = ROOT / build / pathlib.Path(*names)
        if path.exists():
            return str(path)
    return str(ROOT / "build-release" / pathlib.Path(*names))


def _start(argv):
    """Starts a daemon and waits for its ready line: (process, fields)."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            stdin=subprocess.DEVNULL)
    fd = proc.stdout.fileno()
    data = b""
    deadline = time.monotonic() + 30
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            proc.kill()
            raise SystemExit(f"py_cf_client: {argv[0]} printed no ready line")
        chunk = os.read(fd, 4096)
        if not chunk:
            raise SystemExit(f"py_cf_client: {argv[0]} exited before its ready line")
        data += chunk
    return proc, dict(re.findall(r"(\w+)=(\S+)", data.split(b"\n")[0].decode()))


def _stop(proc):
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def emit(name, value, unit):
    text = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    print(f"{name} {text} {unit}", flush=True)


def run_noop(ex, fn, n, prefix):
    for f in [ex.submit(fn, i) for i in range(64)]:     # everything up first
        f.result()
    start = time.perf_counter()
    futures = [ex.submit(fn, i) for i in range(n)]
    total = sum(f.result() for f in cf.as_completed(futures))
    submit_rate = n / (time.perf_counter() - start)
    assert total == n * (n - 1), "wrong results"
    del futures
    start = time.perf_counter()
    total = sum(ex.map(fn, range(n), chunksize=1))
    map_rate = n / (time.perf_counter() - start)
    assert total == n * (n - 1), "wrong results"
    emit(f"{prefix}.noop.submit", submit_rate, "tasks/s")
    emit(f"{prefix}.noop.map1", map_rate, "tasks/s")
    return {"noop.submit": submit_rate, "noop.map1": map_rate}


def run_prime(ex, fn, primes, prefix):
    start = time.perf_counter()
    got = [f.result() for f in [ex.submit(fn, n) for n in primes]]
    elapsed = time.perf_counter() - start
    assert got == [True] * len(primes), "wrong results"
    emit(f"{prefix}.prime", elapsed, "s")
    return elapsed


def cluster_round(endpoint, n, primes):
    with cfutures.Executor(endpoint) as ex:
        figures = run_noop(ex, "bench_double", n, "pyclient")
        figures["prime"] = run_prime(ex, "bench_is_prime", primes, "pyclient")
    return figures


def pool_round(cores, n, primes):
    with cf.ProcessPoolExecutor(max_workers=cores) as ex:
        figures = run_noop(ex, py_futures.double, n, "ppe")
        figures["prime"] = run_prime(ex, py_futures.is_prime, primes, "ppe")
    return figures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument("--tasks", type=int, help="no-op tasks per figure (default 20000)")
    ap.add_argument("--quick", action="store_true", help="one small round: checks it runs")
    ap.add_argument("--broker", default=_default("CF_BROKER_BIN", "cf-broker"))
    ap.add_argument("--worker", default=_default("CF_WORKER_BIN", "cf-worker"))
    ap.add_argument("--tasks-lib", default=_default("CF_BENCH_TASKS_LIB", "bench",
                                                    "libbench_tasks.so"))
    args = ap.parse_args()
    cores = os.cpu_count() or 1
    rounds = 1 if args.quick else args.rounds
    n = args.tasks or (500 if args.quick else 20000)
    primes = py_futures.QUICK_PRIMES if args.quick else py_futures.PY_PRIMES

    broker, ready = _start([args.broker, "--clients", "tcp://127.0.0.1:*",
                            "--workers", "tcp://127.0.0.1:*"])
    worker = None
    try:
        worker, _ = _start([args.worker, "--broker", ready["workers"], "--tasks",
                            args.tasks_lib, "--threads", str(cores)])
        print(f"# python {sys.version.split()[0]}, cores {cores}, cluster: cf-broker + "
              f"cf-worker --threads {cores}, pool: ProcessPoolExecutor({cores}), "
              f"{n} no-op tasks, {len(primes)} primes, {rounds} rounds", flush=True)
        ratios = {name: [] for name in TARGETS}
        for i in range(rounds):
            print(f"# round {i + 1} of {rounds}", flush=True)
            ours = cluster_round(ready["clients"], n, primes)
            theirs = pool_round(cores, n, primes)
            ratios["noop.submit"].append(ours["noop.submit"] / theirs["noop.submit"])
            ratios["noop.map1"].append(ours["noop.map1"] / theirs["noop.map1"])
            ratios["prime"].append(theirs["prime"] / ours["prime"])
    finally:
        if worker is not None:
            _stop(worker)
        _stop(broker)

    print("# cfutures Python client vs ProcessPoolExecutor: median ratio [min - max] "
          "over the rounds", flush=True)
    missed = 0
    for name, target in TARGETS.items():
        values = ratios[name]
        median = statistics.median(values)
        verdict = "MET" if median >= target else "MISSED"
        missed += verdict == "MISSED"
        what = "throughput" if name.startswith("noop") else "speed (pool time / cluster time)"
        print(f"ratio.{name} {median:.2f} x  [{min(values):.2f} - {max(values):.2f}]  "
              f"{what}, target >= {target:g}x: {verdict}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
