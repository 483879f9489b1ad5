"""The example task library in Python: the functions of
examples/tasks_example.c (libexample_tasks.so), under the same names, with
the same arguments, results and errors, so a Python worker can serve the C
example programs and stand beside C workers in one cluster:

    python -m cfutures.worker --broker tcp://127.0.0.1:5556 cfutures.example_tasks

docs/protocol.md has the table of these functions. One difference, on
purpose: is_prime answers with a deterministic Miller-Rabin test instead of
trial division (the same answer for every 64-bit number; trial division of
an 18-digit prime takes CPython about 30 seconds), and crash() aborts the
Python worker process, as the C one aborts cf-worker's.

count_primes and report_loop report progress (cfutures.report_progress),
spin_until_stopped looks at its stop flag (cfutures.stop_requested), as the
C ones do; spin_ignoring_stop never looks (on threads it runs to its end,
under --procs its process is killed once the stop's grace is over).
"""

import os
import time

from ._task import report_progress, stop_requested
from .registry import task

_UINT64_MAX = 2 ** 64 - 1
_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


def _type_name(value):
    return {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes",
            list: "array", dict: "map", type(None): "nil"}.get(type(value), type(value).__name__)


def _int_arg(fn, index, value):
    if type(value) is not int or not _INT64_MIN <= value <= _INT64_MAX:
        raise TypeError(f"{fn}() argument {index}: expected int, got {_type_name(value)}")
    return value


def _str_arg(fn, index, value):
    if type(value) is not str:
        raise TypeError(f"{fn}() argument {index}: expected str, got {_type_name(value)}")
    return value


def _sleep_ms(ms):
    if ms > 0:
        time.sleep(ms / 1000.0)


def _is_prime(n):
    if n < 2:
        return False
    small = (2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37)
    for p in small:
        if n % p == 0:
            return n == p
    d, s = n - 1, 0
    while d % 2 == 0:
        d //= 2
        s += 1
    #  These bases decide every n < 3.3e24, so every 64-bit n.
    for a in small:
        x = pow(a, d, n)
        if x in (1, n - 1):
            continue
        for _ in range(s - 1):
            x = x * x % n
            if x == n - 1:
                break
        else:
            return False
    return True


@task
def is_prime(n):
    """is_prime(n: non-negative int) -> bool."""
    if type(n) is not int or not 0 <= n <= _UINT64_MAX:
        raise TypeError(f"is_prime() argument 0: expected non-negative int, got "
                        f"{_type_name(n)}")
    return _is_prime(n)


@task
def slow_double(x):
    """slow_double(x: int) -> 2 * x, after 100 ms."""
    x = _int_arg("slow_double", 0, x)
    _sleep_ms(100)
    return 2 * x


@task
def square(x):
    """square(x: int) -> x * x, at once."""
    x = _int_arg("square", 0, x)
    return x * x


@task
def sleep_ms(ms):
    """sleep_ms(ms: int) -> ms, after sleeping that long."""
    ms = _int_arg("sleep_ms", 0, ms)
    _sleep_ms(ms)
    return ms


@task
def sleep_pid(ms, pid_file=None):
    """sleep_pid(ms: int[, pid_file: str]) -> the pid of the process that ran
    it, after sleeping ms; with pid_file it first writes that pid there."""
    ms = _int_arg("sleep_pid", 0, ms)
    if pid_file is not None:
        pid_file = _str_arg("sleep_pid", 1, pid_file)
        tmp = f"{pid_file}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.rename(tmp, pid_file)     # a reader never sees half
    _sleep_ms(ms)
    return os.getpid()


@task
def fail(message, type="ValueError"):
    """fail(message: str[, type: str]) raises ValueError (or the given type)
    with that message."""
    from .errors import TaskError
    message = _str_arg("fail", 0, message)
    type = _str_arg("fail", 1, type)
    raise TaskError(type, message)


@task
def crash():
    """crash() aborts the process running it: a worker that dies mid-task."""
    os.abort()


@task
def echo(x):
    """echo(x: any) -> x."""
    return x


@task
def add(a, b):
    """add(a, b) -> a + b: ints stay ints (OverflowError past 64 bits), a
    float makes a float."""
    if type(a) is int and type(b) is int:
        total = a + b
        if not _INT64_MIN <= total <= _INT64_MAX:
            raise OverflowError(f"{a} + {b} does not fit in 64 bits")
        return total
    if type(a) in (int, float) and type(b) in (int, float):
        return float(a) + float(b)
    raise TypeError(f"add() takes numbers, got {_type_name(a)} and {_type_name(b)}")


@task
def timed_task(name, delay_ms, should_fail):
    """timed_task(name: str, delay_ms: int, fail: bool) -> "<name> done"
    after delay_ms, or raises ValueError("<name> failed")."""
    name = _str_arg("timed_task", 0, name)
    delay_ms = _int_arg("timed_task", 1, delay_ms)
    if type(should_fail) is not bool:
        raise TypeError(f"timed_task() argument 2: expected bool, got "
                        f"{_type_name(should_fail)}")
    _sleep_ms(delay_ms)
    if should_fail:
        raise ValueError(f"{name} failed")
    return f"{name} done"


@task
def shout(word):
    """shout(word: str) -> the word in capitals; a word starting with '!'
    raises ValueError."""
    word = _str_arg("shout", 0, word)
    if word.startswith("!"):
        raise ValueError(f"cannot shout '{word}'")
    return "".join(chr(ord(c) - 32) if "a" <= c <= "z" else c for c in word)


@task
def gate(started_path, release_path):
    """gate(started_path: str, release_path: str) -> the pid of the process
    that ran it. Creates started_path as soon as it runs, then waits until
    release_path exists (at most a minute, then TimeoutError)."""
    started_path = _str_arg("gate", 0, started_path)
    release_path = _str_arg("gate", 1, release_path)
    with open(started_path, "a"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(release_path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{release_path} was not created within a minute")
        time.sleep(0.002)
    return os.getpid()


def _uint_arg(fn, index, value):
    if type(value) is not int or not 0 <= value <= _UINT64_MAX:
        raise TypeError(f"{fn}() argument {index}: expected non-negative int, got "
                        f"{_type_name(value)}")
    return value


def _mark_started(fn, path):
    if path:
        path = _str_arg(fn, 1, path)
        try:
            with open(path, "a"):
                pass
        except OSError as e:
            from .errors import TaskError
            raise TaskError("OSError", f"cannot create {path}: {e.strerror}") from None


def _now_ms():
    return int(time.monotonic() * 1000)


@task
def spin_until_stopped(ms, started_path=""):
    """spin_until_stopped(ms: int[, started_path: str]) -> the ms it ran,
    after ms; looks at its stop flag every millisecond and returns when
    asked (the future then fails with Interrupted). With started_path it
    creates that file first."""
    ms = _int_arg("spin_until_stopped", 0, ms)
    _mark_started("spin_until_stopped", started_path)
    start = _now_ms()
    while _now_ms() - start < ms:
        if stop_requested():
            return _now_ms() - start        # Interrupted all the same
        time.sleep(0.001)
    return _now_ms() - start


@task
def spin_ignoring_stop(ms, started_path=""):
    """spin_ignoring_stop(ms: int[, started_path: str]) -> the pid that ran
    it, after keeping a CPU busy ms without ever looking at its stop flag.
    With started_path it creates that file first."""
    ms = _int_arg("spin_ignoring_stop", 0, ms)
    _mark_started("spin_ignoring_stop", started_path)
    end = time.monotonic() + ms / 1000.0
    spins = 0
    while time.monotonic() < end:
        spins += 1
    return os.getpid()


@task
def count_primes(lo, hi, every):
    """count_primes(lo, hi, every: int) -> how many primes lie in [lo, hi),
    reporting progress (numbers checked of hi - lo) every `every` numbers
    with the partial value {"primes": found, "last": largest}, and once at
    the end (every 0: only at the end)."""
    lo = _uint_arg("count_primes", 0, lo)
    hi = _uint_arg("count_primes", 1, hi)
    every = _uint_arg("count_primes", 2, every)
    total = hi - lo if hi > lo else 0
    found = last = 0
    for n in range(lo, hi):
        if _is_prime(n):
            found += 1
            last = n
        done = n - lo + 1
        if every and done % every == 0 and done < total:
            report_progress(done, total, {"primes": found, "last": last})
    report_progress(total, total, {"primes": found, "last": last})
    return found


@task
def report_loop(n, partial_every, pause_us):
    """report_loop(n, partial_every, pause_us: int) -> n: reports progress i
    of n for i = 1..n, with the partial value i every partial_every reports
    and with the last (0: none), pausing pause_us between reports."""
    n = _uint_arg("report_loop", 0, n)
    partial_every = _uint_arg("report_loop", 1, partial_every)
    pause_us = _uint_arg("report_loop", 2, pause_us)
    for i in range(1, n + 1):
        if partial_every and (i % partial_every == 0 or i == n):
            report_progress(i, n, i)
        else:
            report_progress(i, n)
        if pause_us:
            time.sleep(pause_us / 1e6)
    return n
