#!/usr/bin/env python3
"""The Python baseline of the cfutures benchmark: the same workloads as
bench/cf_bench.c, run on concurrent.futures (ThreadPoolExecutor and
ProcessPoolExecutor), standard library only.

Prints one line per figure, `python.<name> <value> <unit>`, the same names
cf_bench prints without the prefix, so bench/run.sh can set them side by
side. Each run prints one sample of each figure; run.sh runs the programs in
rounds and takes medians.

Worker counts match cf_bench: threads min(32, cores + 4) (Python's own
default), processes = cores; the I/O fan-out uses 20 threads and the prime
speedup 2 processes.

Usage: py_futures.py [--quick] [--only threads,processes] [--tasks N]
                     [--proc-tasks N] [--samples DIR]

--samples DIR writes each latency measurement's samples (us, sorted, one
per line) to DIR/python.KIND.latency.txt, for bench/run.sh's CDF plots.
"""

import argparse
import concurrent.futures as cf
import os
import statistics
import sys
import time


def double(x):
    return x * 2


def sleep_ms(ms):
    time.sleep(ms / 1000.0)
    return ms


def is_prime(n):
    """Trial division by 6k +/- 1: the same loop as the C task."""
    if n < 2:
        return False
    if n < 4:
        return True
    if n % 2 == 0 or n % 3 == 0:
        return False
    i = 5
    while i * i <= n:
        if n % i == 0 or n % (i + 2) == 0:
            return False
        i += 6
    return True


# Primes of 15 digits: about 0.2 s each in CPython on this machine, so the
# sequential run of the 16 takes a few seconds (the C side uses 17-digit
# primes for the same reason: a few seconds in its own language).
PY_PRIMES = [
    125000000000011, 125000000000017, 125000000000021, 125000000000059,
    125000000000069, 125000000000111, 125000000000159, 125000000000167,
    125000000000203, 125000000000207, 125000000000219, 125000000000257,
    125000000000297, 125000000000321, 125000000000363, 125000000000387,
]
# --quick: small primes, fractions of a millisecond.
QUICK_PRIMES = [1000003, 1000033, 1000037, 1000039]


def emit(name, value, unit):
    if isinstance(value, float):
        text = f"{value:.6g}" if abs(value) < 1e6 else f"{value:.0f}"
    else:
        text = str(value)
    print(f"python.{name} {text} {unit}", flush=True)


def bench_noop(ex, kind, n, chunked, chunked_n):
    """n tasks one per message (submit, map chunksize 1); chunked_n tasks
    through map with each chunk size in chunked."""
    # Workers up before the clock starts (ProcessPoolExecutor starts its
    # processes on demand).
    for f in [ex.submit(double, i) for i in range(64)]:
        f.result()
    # submit + as_completed
    start = time.perf_counter()
    futures = [ex.submit(double, i) for i in range(n)]
    total = 0
    for f in cf.as_completed(futures):
        total += f.result()
    elapsed = time.perf_counter() - start
    assert total == n * (n - 1), "wrong results"
    emit(f"{kind}.noop.submit", n / elapsed, "tasks/s")
    del futures

    for chunksize in chunked:
        if chunksize > 1:
            n = chunked_n
        start = time.perf_counter()
        total = sum(ex.map(double, range(n), chunksize=chunksize))
        elapsed = time.perf_counter() - start
        assert total == n * (n - 1), "wrong results"
        emit(f"{kind}.noop.map{chunksize}", n / elapsed, "tasks/s")


SAMPLES_DIR = None


def bench_latency(ex, kind, rounds):
    for i in range(min(100, rounds)):       # warm up every worker
        ex.submit(double, i).result()
    samples = []
    for i in range(rounds):
        start = time.perf_counter()
        value = ex.submit(double, i).result()
        samples.append((time.perf_counter() - start) * 1e6)
        assert value == 2 * i
    samples.sort()
    emit(f"{kind}.latency.p50", samples[len(samples) // 2], "us")
    emit(f"{kind}.latency.p99", samples[min(len(samples) - 1, len(samples) * 99 // 100)], "us")
    if SAMPLES_DIR:
        with open(os.path.join(SAMPLES_DIR, f"python.{kind}.latency.txt"), "w") as out:
            out.writelines(f"{v:.2f}\n" for v in samples)


def bench_primes(primes):
    start = time.perf_counter()
    expected = [is_prime(n) for n in primes]
    sequential = time.perf_counter() - start
    with cf.ProcessPoolExecutor(max_workers=2) as ex:
        for f in [ex.submit(double, i) for i in range(4)]:   # workers up
            f.result()
        start = time.perf_counter()
        futures = [ex.submit(is_prime, n) for n in primes]
        got = [f.result() for f in futures]
        parallel = time.perf_counter() - start
    assert got == expected, "wrong results"
    emit("processes.prime.sequential", sequential, "s")
    emit("processes.prime.parallel", parallel, "s")
    emit("processes.prime.speedup", sequential / parallel, "x")


def bench_io(tasks, threads, ms):
    with cf.ThreadPoolExecutor(max_workers=threads) as ex:
        for f in [ex.submit(double, i) for i in range(threads)]:
            f.result()
        start = time.perf_counter()
        futures = [ex.submit(sleep_ms, ms) for _ in range(tasks)]
        cf.wait(futures)
        wall = time.perf_counter() - start
    emit("threads.io.wall", wall * 1000.0, "ms")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    ap.add_argument("--only", default="threads,processes",
                    help="comma-separated groups: threads, processes")
    ap.add_argument("--tasks", type=int, help="no-op tasks on threads (default 100000)")
    ap.add_argument("--proc-tasks", type=int,
                    help="no-op tasks on processes one per message (submit, map "
                         "chunksize 1; default: --tasks); chunked map runs --tasks")
    ap.add_argument("--samples", metavar="DIR", help="write latency samples to DIR")
    args = ap.parse_args()
    global SAMPLES_DIR
    if args.samples:
        os.makedirs(args.samples, exist_ok=True)
        SAMPLES_DIR = args.samples

    cores = os.cpu_count() or 1
    groups = set(args.only.split(","))
    n = args.tasks or (2000 if args.quick else 100_000)
    proc_n = args.proc_tasks or n
    rounds = 200 if args.quick else 2000
    primes = QUICK_PRIMES if args.quick else PY_PRIMES

    print(f"# python {sys.version.split()[0]}, cores {cores}, threads "
          f"{min(32, cores + 4)}, processes {cores}, tasks {n}/{proc_n}", flush=True)
    if "threads" in groups:
        with cf.ThreadPoolExecutor(max_workers=min(32, cores + 4)) as ex:
            bench_noop(ex, "threads", n, [1, 1000], n)
            bench_latency(ex, "threads", rounds)
        bench_io(200 if not args.quick else 40, 20, 10)
    if "processes" in groups:
        with cf.ProcessPoolExecutor(max_workers=cores) as ex:
            bench_noop(ex, "processes", proc_n, [1, 1000], n)
            bench_latency(ex, "processes", rounds)
        bench_primes(primes)
    return 0


if __name__ == "__main__":
    sys.exit(main())
