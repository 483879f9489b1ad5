"""Fixtures for the Python tests: real cf-broker, cf-worker and Python
worker processes on loopback.

Daemons are found through the environment, as the C tests find them
(cmake/cf_test.cmake): CF_BROKER_BIN, CF_WORKER_BIN, CF_TASKS_LIB (the
example task library), CF_EXAMPLES_DIR (the example programs),
CF_KEYGEN_BIN (cf-keygen) and CF_LIB (libcfutures.so, the C client). Run
by hand, they default to the repository's build/ directory. Each daemon
starts on a loopback port below the kernel's ephemeral range (see
_reserved_endpoint) and is waited for through its ready line
(never a sleep); each is stopped by its PID with SIGTERM at the end of its
test, and must then exit 0 (under ASan a leak makes a daemon exit
non-zero, which fails the test that drove it).
"""

import os
import pathlib
import random
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

HERE = pathlib.Path(__file__).resolve().parent
PYTHON_DIR = HERE.parent
ROOT = PYTHON_DIR.parent
sys.path.insert(0, str(PYTHON_DIR))

import cfutures  # noqa: E402

BUILD = ROOT / "build"


def _reserved_endpoint():
    """A free loopback port below the kernel's ephemeral range, as an
    endpoint. Tests restart a broker on the endpoint it had while its peers
    keep dialling it; an ephemeral port could meanwhile go to anyone's
    bind to port 0 (another test's broker, bench_smoke_relay's relay), the
    kernel never hands out these (tests/cf_testkit.c does the same)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return "tcp://127.0.0.1:*"
    first = max(10000, low - 12000)
    if low - first < 1000:
        return "tcp://127.0.0.1:*"
    for _ in range(64):
        port = random.randrange(first, low)
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"tcp://127.0.0.1:{port}"
    return "tcp://127.0.0.1:*"


def _path(env, default):
    value = os.environ.get(env)
    return pathlib.Path(value) if value else default


BROKER_BIN = _path("CF_BROKER_BIN", BUILD / "cf-broker")
WORKER_BIN = _path("CF_WORKER_BIN", BUILD / "cf-worker")
TASKS_LIB = _path("CF_TASKS_LIB", BUILD / "examples" / "libexample_tasks.so")
EXAMPLES_DIR = _path("CF_EXAMPLES_DIR", BUILD / "examples")
KEYGEN_BIN = _path("CF_KEYGEN_BIN", BUILD / "cf-keygen")
BENCH_TASKS_LIB = _path("CF_BENCH_TASKS_LIB", BUILD / "bench" / "libbench_tasks.so")
#  The C client library, for tests that drive it through ctypes.
CF_LIB = _path("CF_LIB", BROKER_BIN.parent / "libcfutures.so")

#  How long a daemon may take to print its ready line (ASan builds are slow
#  to start; a missing line is a failure, never a skip).
READY_S = 30
STOP_S = 30


def pytest_sessionstart(session):
    missing = [f"{name}={path}" for name, path in
               (("CF_BROKER_BIN", BROKER_BIN), ("CF_WORKER_BIN", WORKER_BIN),
                ("CF_TASKS_LIB", TASKS_LIB)) if not path.exists()]
    if missing:
        raise pytest.UsageError("the daemons are not built (set the variables, or build "
                                "into build/): " + ", ".join(missing))


def wait_for(predicate, timeout=20.0, what="a condition"):
    """Waits until predicate() is true, looking every 5 ms (for state that
    has no event to wait on: a file another process creates, a future's
    running() flag)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


def wait_workers(ex, n):
    """Waits until the broker knows n workers (a worker's ready line comes
    before the broker has read its READY)."""
    wait_for(lambda: ex.stats()["workers"] == n, what=f"{n} workers at the broker")


class Daemon:
    """A process that prints one 'ready key=value ...' line to stdout once
    it serves."""

    def __init__(self, name, argv, log_dir, env=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = log_dir / f"{name}.log"
        self.expected_exit = 0
        self.stopped = False
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=log,
                                         stdin=subprocess.DEVNULL, env=env)
        self.pid = self.proc.pid
        self.ready = self._wait_ready()

    def _wait_ready(self):
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + READY_S
        data = b""
        while b"\n" not in data:
            left = deadline - time.monotonic()
            if left <= 0:
                self.kill()
                raise AssertionError(f"{self.name} printed no ready line in {READY_S} s:\n"
                                     f"{self.log()}")
            readable, _, _ = select.select([fd], [], [], left)
            if readable:
                chunk = os.read(fd, 4096)
                if not chunk:
                    self.proc.wait()
                    raise AssertionError(f"{self.name} exited ({self.proc.returncode}) "
                                         f"before its ready line:\n{data.decode()}\n{self.log()}")
                data += chunk
        line = data.split(b"\n", 1)[0].decode()
        if not line.startswith("ready"):
            self.kill()
            raise AssertionError(f"{self.name}: unexpected first line {line!r}")
        #  Whatever it prints later must not fill the pipe and block it.
        threading.Thread(target=self._drain, daemon=True).start()
        return dict(re.findall(r"(\w+)=(\S+)", line))

    def _drain(self):
        try:
            while self.proc.stdout.read(4096):
                pass
        except (OSError, ValueError):
            pass

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")[-6000:]
        except OSError:
            return ""

    def alive(self):
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=STOP_S):
        """Signals the process (by PID) and waits for it: its exit status."""
        if self.proc.poll() is None:
            os.kill(self.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait()
                raise AssertionError(f"{self.name} did not stop within {timeout} s "
                                     f"after signal {sig}:\n{self.log()}")
        self.stopped = True
        return self.proc.returncode

    def kill(self):
        """SIGKILL, as a crash: no exit status is expected."""
        self.expected_exit = None
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGKILL)
            self.proc.wait()
        self.stopped = True


class Cluster:
    """Starts daemons and executors for one test and stops them after it."""

    def __init__(self, tmp_path):
        self.dir = tmp_path
        self.daemons = []
        self.executors = []
        self.counter = 0

    def _name(self, kind):
        self.counter += 1
        return f"{self.counter:02d}-{kind}"

    def broker(self, *extra, clients="tcp://127.0.0.1:*", workers="tcp://127.0.0.1:*"):
        clients = _reserved_endpoint() if clients == "tcp://127.0.0.1:*" else clients
        workers = _reserved_endpoint() if workers == "tcp://127.0.0.1:*" else workers
        d = Daemon(self._name("broker"),
                   [BROKER_BIN, "--clients", clients, "--workers", workers, *extra], self.dir)
        d.clients = d.ready["clients"]
        d.workers = d.ready["workers"]
        self.daemons.append(d)
        return d

    def c_worker(self, broker, *extra):
        endpoint = broker if isinstance(broker, str) else broker.workers
        if not any(a in ("--threads", "--procs") for a in extra):
            extra = ("--threads", "2", *extra)
        d = Daemon(self._name("cworker"),
                   [WORKER_BIN, "--broker", endpoint, "--tasks", TASKS_LIB, *extra], self.dir)
        self.daemons.append(d)
        return d

    def py_worker(self, broker, *args, specs=("cfutures.example_tasks",)):
        endpoint = broker if isinstance(broker, str) else broker.workers
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(PYTHON_DIR), str(HERE)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH")
                                            else []))
        d = Daemon(self._name("pyworker"),
                   [sys.executable, "-m", "cfutures.worker", "--broker", endpoint, *args,
                    *specs], self.dir, env=env)
        self.daemons.append(d)
        return d

    def executor(self, broker, **options):
        endpoint = broker if isinstance(broker, (str, list)) else broker.clients
        ex = cfutures.Executor(endpoint, **options)
        self.executors.append(ex)
        return ex

    def example(self, name, *args, timeout=120):
        """Runs an example program to its end: (exit status, stdout, stderr)."""
        proc = subprocess.run([str(EXAMPLES_DIR / name), *map(str, args)],
                              capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
        return proc.returncode, proc.stdout, proc.stderr

    def close(self):
        for ex in self.executors:
            #  A test that left its broker dead must not hang here: what is
            #  still pending is resolved (cancelled or failed) at once.
            ex._client.shutdown(wait=True, cancel_futures=True, terminate=True)
        problems = []
        #  Workers first, then brokers: a worker's DISCONNECT finds its broker.
        for d in sorted(self.daemons, key=lambda d: "broker" in d.name):
            if d.stopped:
                code = d.proc.returncode
            else:
                try:
                    code = d.stop()
                except AssertionError as e:
                    problems.append(str(e))
                    continue
            if d.expected_exit is not None and code != d.expected_exit:
                problems.append(f"{d.name} exited {code}, expected {d.expected_exit}:\n"
                                f"{d.log()}")
        if problems:
            raise AssertionError("\n\n".join(problems))


@pytest.fixture
def cluster(tmp_path):
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()
