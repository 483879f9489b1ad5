"""STOP and PROGRESS (issue 10) between the Python client, the Python
worker and the C daemons: Future.stop(), cfutures.stop_requested(),
Future.progress() / add_progress_callback(), cfutures.report_progress()."""

import concurrent.futures as cf
import threading
import time

import pytest

import cfutures
from cfutures import _proto
from conftest import wait_for


def _started(f, mark):
    """Waits until the task made its mark and the broker said STARTED."""
    wait_for(mark.exists, what=f"{mark.name} created")
    wait_for(f.running, what="the future running")


def _interrupted(f):
    with pytest.raises(cfutures.TaskError) as info:
        f.result(timeout=30)
    assert info.value.type == "Interrupted", info.value
    return info.value


# ---------------------------------------------------------------------------
#  STOP

@pytest.mark.parametrize("worker", ["c", "py"])
def test_a_running_task_that_looks_is_interrupted(cluster, tmp_path, worker):
    broker = cluster.broker()
    if worker == "c":
        cluster.c_worker(broker, "--threads", "2")
    else:
        cluster.py_worker(broker, "--threads", "2")
    ex = cluster.executor(broker)
    mark = tmp_path / "started"
    f = ex.submit("spin_until_stopped", 120000, str(mark))
    _started(f, mark)
    t0 = time.monotonic()
    assert f.stop(grace=10) is True
    e = _interrupted(f)
    assert time.monotonic() - t0 < 10
    assert "asked to stop and returned early" in e.message
    assert e.function == "spin_until_stopped"
    #  Done: nothing changes.
    assert f.stop() is False
    _interrupted(f)
    #  The worker goes on.
    assert ex.submit("square", 9).result(timeout=30) == 81


@pytest.mark.parametrize("worker", ["c", "py"])
def test_a_queued_task_is_cancelled_and_a_threaded_task_that_never_looks_finishes(
        cluster, tmp_path, worker):
    broker = cluster.broker()
    if worker == "c":
        cluster.c_worker(broker, "--threads", "1")
    else:
        cluster.py_worker(broker, "--threads", "1", "--prefetch", "1")
    ex = cluster.executor(broker)
    mark = tmp_path / "started"
    first = ex.submit("spin_ignoring_stop", 700, str(mark))
    queued = ex.submit("square", 3)
    _started(first, mark)
    assert queued.stop(grace=0) is True
    done, _ = cf.wait([queued], timeout=30)
    assert queued in done and queued.cancelled()
    #  On threads the stop is cooperative only: a task that never looks
    #  keeps its own result (the pid that ran it).
    assert first.stop(grace=0) is True
    assert isinstance(first.result(timeout=30), int)


def test_the_client_side_of_stop_against_a_broker_driven_by_hand():
    """What the client sends and does: STOP [[id, grace_ms]] for a task at
    the broker; a task asked to stop that a restarted broker forgot fails Interrupted, not
    resubmitted; PROGRESS drops old seqs and what follows the result."""
    from test_routing import _expect, _router, _tasks
    router, endpoint = _router()
    try:
        with cfutures.Executor(endpoint, heartbeat_ms=5000) as ex:
            running = ex.submit("square", 2)
            peer, tasks = _tasks(router, 1)

            def send(command, body):
                router.send_multipart([peer] + _proto.frames(command, body))

            send(_proto.HEARTBEAT, [0x1111, 5000])
            send(_proto.PROGRESS, [[tasks[0][0], 2, 5, 10, _proto.pack({"n": 1})]])
            wait_for(lambda: running.progress() is not None, what="a report")
            send(_proto.PROGRESS, [[tasks[0][0], 1, 1, 10, None],      # older: dropped
                                   [tasks[0][0], 3, 6, 10, None]])     # partial kept
            wait_for(lambda: running.progress().seq == 3, what="the second report")
            assert running.progress() == cfutures.Progress(3, 6, 10, {"n": 1}, False)
            assert running.running()            # a report says it began
            assert running.stop(grace=1.5) is True
            _, body = _expect(router, _proto.STOP)
            assert body == [[tasks[0][0], 1500]]
            #  The broker restarted: a task asked to stop is not resubmitted.
            send(_proto.HEARTBEAT, [0x2222, 5000])
            e = _interrupted(running)
            assert "broker forgot it" in e.message
            assert running.progress().seq == 3
    finally:
        router.close(linger=0)


@pytest.mark.parametrize("worker", ["c", "py"])
def test_a_worker_process_is_killed_when_its_task_ignores_the_stop(cluster, tmp_path, worker):
    broker = cluster.broker()
    if worker == "c":
        cluster.c_worker(broker, "--procs", "1")
    else:
        cluster.py_worker(broker, "--procs", "1")
    ex = cluster.executor(broker)
    mark = tmp_path / "started"
    f = ex.submit("spin_ignoring_stop", 120000, str(mark), retries=3)
    _started(f, mark)
    assert f.stop(grace=0.2) is True
    e = _interrupted(f)
    assert "killed" in e.message
    #  Replaced: the next task runs (and the stopped one was not retried).
    assert ex.submit("square", 7).result(timeout=30) == 49


#  The C client's side, in its own process (as c_client_cancel.py: a
#  sanitizer build whose runtime cannot be loaded into pytest fails there):
#  cf_future_stop of a running spin_until_stopped; prints the error type.
_C_CLIENT_STOP = r"""
import ctypes, pathlib, sys, time
import msgpack
lib = ctypes.CDLL(sys.argv[1])
vp = ctypes.c_void_p
class Error(ctypes.Structure):
    _fields_ = [("type", ctypes.c_char_p), ("message", ctypes.c_char_p),
                ("function", ctypes.c_char_p), ("host", ctypes.c_char_p),
                ("pid", ctypes.c_int)]
lib.cf_executor_connect.restype = vp
lib.cf_executor_connect.argtypes = [ctypes.c_char_p, vp]
lib.cf_submit_raw.restype = vp
lib.cf_submit_raw.argtypes = [vp, vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
lib.cf_future_stop.argtypes = [vp, ctypes.c_int]
lib.cf_future_wait.argtypes = [vp, ctypes.c_int]
lib.cf_future_error.restype = ctypes.POINTER(Error)
lib.cf_future_error.argtypes = [vp]
lib.cf_future_release.argtypes = [ctypes.POINTER(vp)]
lib.cf_executor_destroy.argtypes = [ctypes.POINTER(vp)]
ex = vp(lib.cf_executor_connect(sys.argv[2].encode(), None))
mark = pathlib.Path(sys.argv[3])
args = msgpack.packb([120000, str(mark)], use_bin_type=True)
f = vp(lib.cf_submit_raw(ex, None, b"spin_until_stopped", args, len(args)))
deadline = time.monotonic() + 30
while not mark.exists() and time.monotonic() < deadline:
    time.sleep(0.005)
assert lib.cf_future_stop(f, 5000) == 0
assert lib.cf_future_wait(f, 30000) == 0
error = lib.cf_future_error(f)
print(error.contents.type.decode() if error else "no error")
lib.cf_future_release(ctypes.byref(f))
lib.cf_executor_destroy(ctypes.byref(ex))
"""


def test_a_c_client_stops_a_python_workers_task(cluster, tmp_path):
    import subprocess
    import sys

    from conftest import CF_LIB
    if not CF_LIB.exists():
        pytest.fail(f"libcfutures is not built: {CF_LIB} (set CF_LIB)")
    broker = cluster.broker()
    cluster.py_worker(broker, "--threads", "2")
    proc = subprocess.run([sys.executable, "-c", _C_CLIENT_STOP, str(CF_LIB), broker.clients,
                           str(tmp_path / "started")], capture_output=True, text=True,
                          timeout=90, stdin=subprocess.DEVNULL)
    if proc.returncode != 0 and "runtime does not come first" in proc.stderr:
        pytest.skip("a sanitizer build: libcfutures cannot be loaded into Python")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Interrupted"], proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
#  PROGRESS

class _Watcher:
    """A progress callback recording what it gets (and whether the future
    was done then)."""

    def __init__(self):
        self.reports = []
        self.after_done = 0
        self.lock = threading.Lock()

    def __call__(self, future, progress):
        with self.lock:
            if future.done():
                self.after_done += 1
            self.reports.append(progress)


def _check_order(reports):
    seqs = [r.seq for r in reports]
    assert seqs == sorted(set(seqs)), seqs


@pytest.mark.parametrize("worker", ["c", "py"])
def test_count_primes_reports_its_progress_and_its_partial_value(cluster, worker):
    broker = cluster.broker()
    if worker == "c":
        cluster.c_worker(broker)
        lo, hi, every = 0, 3_000_000, 1000
    else:
        cluster.py_worker(broker, "--threads", "2")
        lo, hi, every = 0, 200_000, 1000
    ex = cluster.executor(broker)
    watcher = _Watcher()
    f = ex.submit("count_primes", lo, hi, every)
    f.add_progress_callback(watcher)
    primes = f.result(timeout=60)
    assert watcher.after_done == 0
    assert watcher.reports, "no report came"
    _check_order(watcher.reports)
    last = watcher.reports[-1]
    #  The last report precedes the result, and progress() keeps it.
    assert (last.done, last.total) == (hi - lo, hi - lo)
    assert last.partial["primes"] == primes
    assert f.progress() == last
    #  A callback added once done is kept but never called.
    late = _Watcher()
    f.add_progress_callback(late)
    assert late.reports == []


@pytest.mark.parametrize("worker", ["c", "py"])
def test_a_million_reports_do_not_flood(cluster, worker):
    broker = cluster.broker()
    if worker == "c":
        cluster.c_worker(broker)
    else:
        cluster.py_worker(broker, "--threads", "2")
    n = 1_000_000
    ex = cluster.executor(broker)
    watcher = _Watcher()
    t0 = time.monotonic()
    f = ex.submit("report_loop", n, 1000, 0)
    f.add_progress_callback(watcher)
    assert f.result(timeout=120) == n
    elapsed = time.monotonic() - t0
    assert watcher.after_done == 0
    _check_order(watcher.reports)
    #  At most about one report per 50 ms at each hop, plus the first and
    #  the last ones.
    assert len(watcher.reports) <= 10 + 2 * elapsed / 0.050, (len(watcher.reports), elapsed)
    last = watcher.reports[-1]
    assert (last.done, last.total, last.partial) == (n, n, n)
    assert f.progress() == last


def test_progress_of_a_task_that_reports_nothing_is_none(cluster):
    broker = cluster.broker()
    cluster.py_worker(broker)
    ex = cluster.executor(broker)
    f = ex.submit("square", 5)
    assert f.result(timeout=30) == 25
    assert f.progress() is None


def test_a_task_reports_outside_the_worker_as_a_no_op():
    assert cfutures.stop_requested() is False
    assert cfutures.current_task() is None
    cfutures.report_progress(1, 2, {"x": 1})        # nothing to report to


# ---------------------------------------------------------------------------
#  The worker's side, against a broker driven by hand

def _hand_worker(functions, **options):
    from cfutures.worker import Worker
    from test_faults import _router
    router, endpoint = _router()
    worker = Worker(functions, endpoint, **options)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    return router, worker, thread


def test_the_worker_stops_a_running_task_and_cancels_a_queued_one():
    from test_faults import _expect, _recv

    def wait_stop(then_raise):
        while not cfutures.stop_requested():
            time.sleep(0.001)
        if then_raise:
            raise ValueError("whatever it does after")
        return "ignored"

    router, worker, thread = _hand_worker({"wait_stop": wait_stop}, threads=1, prefetch=1)
    try:
        peer, ready = _expect(router, _proto.READY)
        assert ready[4] & _proto.FEATURE_STOP

        def send(command, body):
            router.send_multipart([peer] + _proto.frames(command, body))

        send(_proto.HEARTBEAT, [0xAAAA, 1000])
        for raising in (False, True):
            send(_proto.TASK, [[7, "wait_stop", _proto.pack([raising]), 0],
                               [8, "wait_stop", _proto.pack([raising]), 0]])
            while True:
                _, (command, fields) = _recv(router)
                if command == _proto.STARTED:
                    assert fields == [7]
                    break
            #  Queued: cancelled (never run); running: its flag set; an
            #  unknown id: ignored.
            send(_proto.STOP, [[8, 0], [7, 100], [42, 0]])
            results = []
            while len(results) < 2:
                results += _expect(router, _proto.RESULT)[1]
            assert results[0] == (8, _proto.CANCELLED, None)
            task_id, status, error = results[1]
            assert (task_id, status, error[0], error[2]) == (7, _proto.ERROR, "Interrupted",
                                                             "wait_stop")
            assert error[1] == "wait_stop() was asked to stop and returned early"
    finally:
        worker.stop()
        thread.join(10)
        router.close(linger=0)
    assert not thread.is_alive()


def test_the_worker_coalesces_reports_and_sends_the_last_before_the_result():
    from test_faults import _expect, _recv
    n = 200_000

    def rep(n):
        for i in range(1, n + 1):
            cfutures.report_progress(i, n, {"i": i} if i % 1000 == 0 else None)
        return n

    def bad_partials():
        with pytest.raises(ValueError):
            cfutures.report_progress(1, 2, b"x" * _proto.MAX_PARTIAL)
        with pytest.raises(TypeError):
            cfutures.report_progress(1, 2, object())
        with pytest.raises(ValueError):
            cfutures.report_progress(-1, 2)
        cfutures.report_progress(3, 4)
        return cfutures.current_task().function

    router, worker, thread = _hand_worker({"rep": rep, "bad": bad_partials}, threads=2)
    try:
        peer, _ = _expect(router, _proto.READY)

        def send(command, body):
            router.send_multipart([peer] + _proto.frames(command, body))

        send(_proto.HEARTBEAT, [0xAAAA, 1000])
        t0 = time.monotonic()
        send(_proto.TASK, [[7, "rep", _proto.pack([n]), 0]])
        reports = []
        while True:
            _, (command, fields) = _recv(router)
            if command == _proto.PROGRESS:
                reports += fields
            elif command == _proto.RESULT:
                assert fields == [(7, _proto.OK, _proto.pack(n))]
                break
        elapsed = time.monotonic() - t0
        assert [r[1] for r in reports] == list(range(1, len(reports) + 1))
        assert len(reports) <= 2 + elapsed / 0.050, (len(reports), elapsed)
        last = reports[-1]
        assert last[:4] == (7, len(reports), n, n)
        assert _proto.unpack_value(last[4]) == {"i": n}
        #  Refused reports raise in the task, which goes on.
        send(_proto.TASK, [[8, "bad", _proto.pack([]), 0]])
        _, progress = _expect(router, _proto.PROGRESS)
        assert progress == [(8, 1, 3, 4, None)]
        _, result = _expect(router, _proto.RESULT)
        assert result == [(8, _proto.OK, _proto.pack("bad"))]
    finally:
        worker.stop()
        thread.join(10)
        router.close(linger=0)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------
#  No silent waits

def test_waiting_tasks_are_warned_about(cluster, monkeypatch, caplog):
    import cfutures.client
    monkeypatch.setattr(cfutures.client, "WARN_EVERY_S", 0.2)
    caplog.set_level("WARNING", logger="cfutures.client")

    def warned(text):
        return any(text in r.getMessage() for r in caplog.records)

    #  A broker without workers: it answers, nothing starts, STATS says why.
    broker = cluster.broker()
    ex = cluster.executor(broker)
    f = ex.submit("square", 2)
    wait_for(lambda: warned("the broker at"), what="the 'no workers' warning")
    assert warned("1 tasks waiting: the broker at") and warned("has no workers")
    #  No broker at all.
    broker.stop()
    wait_for(lambda: warned("no broker answers at"), what="the 'no broker' warning")
    f.cancel()
