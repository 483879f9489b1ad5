"""Python-only tasks the tests serve with python -m cfutures.worker."""

import os

import cfutures


@cfutures.task
def py_upper(text):
    return text.upper()


@cfutures.task(name="py_pid")
def pid_of_worker(ms=0):
    if ms:
        import time
        time.sleep(ms / 1000)
    return os.getpid()


@cfutures.task
def py_lookup(key):
    return {"a": 1}[key]            # KeyError for anything else


@cfutures.task
def py_unencodable():
    return object()


@cfutures.task
def py_spin(n):
    """CPU-bound: a loop of n steps, then the pid that ran it."""
    total = 0
    for i in range(n):
        total += i
    return [os.getpid(), total]


def not_decorated(a, b):
    return a * b


@cfutures.task
def py_mark(path, ms):
    """Creates path as soon as it runs (proof that it ran), sleeps ms, then
    returns the pid that ran it."""
    with open(path, "a"):
        pass
    if ms:
        import time
        time.sleep(ms / 1000)
    return os.getpid()
