"""The Python client against a real cf-broker and C cf-workers (the example
task library): the classic concurrent.futures scenarios, through
concurrent.futures.as_completed and wait themselves."""

import concurrent.futures as cf
import itertools
import socket
import threading

import pytest

import cfutures
from conftest import wait_for

#  The prime list of the concurrent.futures documentation.
PRIMES = [112272535095293, 112582705942171, 112272535095293, 115280095190773,
          115797848077099, 1099726899285419]
PRIME_ANSWERS = [True, True, True, True, True, False]


def test_executor_and_future_are_the_standard_classes(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    ex = cluster.executor(broker)
    assert isinstance(ex, cf.Executor)
    f = ex.submit("square", 7)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=30) == 49


def test_map_over_the_prime_list_gives_true_and_false(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "2")
    with cluster.executor(broker) as ex:
        assert list(ex.map("is_prime", PRIMES, timeout=60)) == PRIME_ANSWERS
        assert list(ex.map("is_prime", PRIMES, chunksize=4, timeout=60)) == PRIME_ANSWERS
        futures = {ex.submit("is_prime", n): i for i, n in enumerate(PRIMES)}
        done, not_done = cf.wait(futures, timeout=60)
        assert not not_done
        assert [f.result() for f in sorted(done, key=futures.get)] == PRIME_ANSWERS


def test_twenty_submits_with_as_completed_and_one_remote_failure(cluster):
    broker = cluster.broker()
    worker = cluster.c_worker(broker, "--threads", "4")
    with cluster.executor(broker) as ex:
        futures = {ex.submit("timed_task", f"t{i}", 5 * (i % 4), i == 7): i for i in range(20)}
        outcomes = {}
        for f in cf.as_completed(futures, timeout=60):
            try:
                outcomes[futures[f]] = f.result()
            except cfutures.TaskError as e:
                outcomes[futures[f]] = e
    assert len(outcomes) == 20
    for i, outcome in outcomes.items():
        if i == 7:
            assert isinstance(outcome, cfutures.TaskError)
            assert outcome.type == "ValueError"
            assert outcome.message == "t7 failed"
            assert outcome.function == "timed_task"
            assert outcome.host == socket.gethostname()
            assert outcome.pid == worker.pid
            assert str(outcome).startswith("ValueError: t7 failed")
        else:
            assert outcome == f"t{i} done"


def test_a_queued_task_is_cancelled_through_the_broker(cluster, tmp_path):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "1")
    ex = cluster.executor(broker)
    started, release = tmp_path / "started", tmp_path / "release"
    blocker = ex.submit("gate", str(started), str(release))
    wait_for(started.exists, what="the gate task to start")
    wait_for(blocker.running, what="STARTED for the gate task")
    queued = ex.submit("square", 3)
    wait_for(lambda: ex.stats()["queued"] == 1, what="the second task queued at the broker")
    assert blocker.cancel() is False            # on a worker: runs to its end
    assert queued.cancel() is True
    assert queued.cancelled() and queued.done()
    done, not_done = cf.wait([queued, blocker], timeout=0.01)
    assert queued in done and blocker in not_done
    assert list(cf.as_completed([queued], timeout=5)) == [queued]
    with pytest.raises(cf.CancelledError):
        queued.result()
    release.touch()
    assert blocker.result(timeout=30) > 0
    stats = ex.stats()
    assert stats["cancelled"] == 1 and stats["completed"] == 1
    ex.shutdown()


def test_timeouts_of_the_wait_and_of_the_task_are_told_apart(cluster, tmp_path):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "2")
    with cluster.executor(broker) as ex:
        #  Held until released: the waits below time out whatever the load.
        slow = ex.submit("gate", str(tmp_path / "started"), str(tmp_path / "release"))
        with pytest.raises(cf.TimeoutError):
            slow.result(timeout=0.05)
        done, not_done = cf.wait([slow], timeout=0.05)
        assert slow in not_done and not done
        with pytest.raises(cf.TimeoutError):
            list(cf.as_completed([slow], timeout=0.05))
        (tmp_path / "release").touch()
        assert slow.result(timeout=30) > 0
        #  The broker ends a task that runs past its own timeout.
        limited = ex.submit("sleep_ms", 3000, timeout=0.2)
        with pytest.raises(cfutures.TaskError) as info:
            limited.result(timeout=30)
        assert info.value.type == "TimeoutError"
        assert not isinstance(info.value, TimeoutError)
        with pytest.raises(cf.TimeoutError):
            list(ex.map("sleep_ms", [300, 300], timeout=0.05))


def test_callbacks_run_and_the_with_block_waits(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    seen = []
    lock = threading.Lock()
    with cluster.executor(broker) as ex:
        for i in range(10):
            f = ex.submit("slow_double", i)
            f.add_done_callback(lambda f, i=i: (lock.acquire(), seen.append((i, f.result())),
                                                lock.release()))
    #  shutdown(wait=True) at the end of the block: every task resolved.
    assert sorted(seen) == [(i, 2 * i) for i in range(10)]
    with pytest.raises(RuntimeError):
        ex.submit("square", 1)


def test_map_reads_its_input_lazily_within_a_window(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    consumed = itertools.count()

    def numbers():
        for i in itertools.count():
            next(consumed)
            yield i

    with cluster.executor(broker) as ex:
        results = ex.map("square", numbers(), window=16)
        first = list(itertools.islice(results, 100))
        assert first == [i * i for i in range(100)]
        #  100 taken, at most a window more pulled from the endless input.
        assert next(consumed) <= 100 + 16 + 1
        results.close()             # cancels what is still in flight


def test_chunked_map_fails_at_the_failing_input(cluster):
    broker = cluster.broker()
    worker = cluster.c_worker(broker)
    words = ["alpha", "beta", "gamma", "delta", "!boom", "zeta", "eta"]
    with cluster.executor(broker) as ex:
        results = ex.map("shout", words, chunksize=3)
        assert [next(results) for _ in range(4)] == ["ALPHA", "BETA", "GAMMA", "DELTA"]
        with pytest.raises(cfutures.TaskError) as info:
            next(results)
        assert info.value.type == "ValueError"
        assert info.value.message == "cannot shout '!boom'"
        assert info.value.pid == worker.pid and info.value.host == socket.gethostname()
        assert list(ex.map("shout", ["a", "b", "c", "d"], chunksize=3)) == ["A", "B", "C", "D"]


def test_values_travel_unchanged(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    values = [0, -1, 2 ** 64 - 1, -2 ** 63, 1.5, "", "héllo ✓", b"\x00\xffbytes", None,
              True, False, [1, [2, [3]]], {"a": 1, "b": [None, 2.5]}, {1: "one"},
              list(range(1000)), "x" * 100000]
    with cluster.executor(broker) as ex:
        assert list(ex.map("echo", values)) == values
        assert ex.submit("add", 2, 3).result() == 5
        assert ex.submit("add", 2, 0.5).result() == 2.5
        with pytest.raises(cfutures.TaskError) as info:
            ex.submit("add", 2 ** 62, 2 ** 62).result()
        assert info.value.type == "OverflowError"
        with pytest.raises(cfutures.TaskError) as info:
            ex.submit("square").result()
        assert info.value.type == "TypeError"
        #  (A function no worker serves: the worker's UnknownFunction before
        #  routing by function, the broker's NoWorker with it: test_routing.py.)


def test_submit_refuses_what_cannot_travel(cluster):
    broker = cluster.broker()
    ex = cluster.executor(broker)
    with pytest.raises(TypeError):
        ex.submit(len, 1)
    with pytest.raises(ValueError):
        ex.submit("")
    with pytest.raises(ValueError):
        ex.submit("x" * 256)
    with pytest.raises(ValueError):
        ex.submit("cf.chunk", "square", [[1]])
    with pytest.raises(TypeError):
        ex.submit("echo", object())
    with pytest.raises(TypeError):
        ex.submit("echo", 2 ** 64)
    with pytest.raises(TypeError):
        ex.submit("echo", 1, n=2)          # cf/1 arguments are positional
    with pytest.raises(ValueError):
        ex.submit("echo", 1, timeout=-1)
    with pytest.raises(ValueError):
        ex.map("echo", [1], chunksize=0)
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit("echo", 1)


def test_a_task_the_broker_refuses_fails_alone_with_protocol_error(cluster):
    """Past the client's own checks (as from another client), a task whose
    name holds NUL is refused by the broker alone: its future fails with
    ProtocolError, the task sent with it runs."""
    import msgpack
    import zmq
    from cfutures import _proto
    broker = cluster.broker()
    cluster.c_worker(broker)
    with cluster.executor(broker) as ex:
        options = ex._defaults
        bad = ex._submit("squ\0are", msgpack.packb([7]), options)
        good = ex.submit("square", 7)
        assert good.result(timeout=30) == 49
        error = bad.exception(timeout=30)
        assert isinstance(error, cfutures.TaskError)
        assert error.type == "ProtocolError"
        assert "NUL" in error.message
    # A raw SUBMIT with a name that is not UTF-8: the RESULT error comes back
    # readable by msgpack-python's strict default.
    sock = zmq.Context.instance().socket(zmq.DEALER)
    try:
        sock.connect(broker.clients)
        task = b"\x96\x05\xa2f\xff\xc4\x02\x91\x07\x00\x00\x00"
        sock.send_multipart([b"cf/1", b"SUBMIT", b"\x91" + task])
        while True:
            assert sock.poll(30000), "no RESULT"
            version, command, body = sock.recv_multipart()
            if command == b"RESULT":
                break
        assert msgpack.unpackb(body, raw=False) == [
            [5, 1, ["ProtocolError", "task refused by the broker: the function name is not "
                    "valid UTF-8", "", "", 0]]]
        # A task whose error is made of bytes it was given that are not
        # UTF-8 (args are the application's, never checked): cf-worker's
        # RESULT still reads, with U+FFFD in their place.
        args = b"\x92\xa5\xff bad\xa4Bad\xfe"
        task = b"\x96\x06\xa4fail\xc4" + bytes([len(args)]) + args + b"\x00\x00\x00"
        sock.send_multipart([b"cf/1", b"SUBMIT", b"\x91" + task])
        while True:
            assert sock.poll(30000), "no RESULT"
            version, command, body = sock.recv_multipart()
            if command == b"RESULT":
                break
        [[task_id, status, error]] = msgpack.unpackb(body, raw=False)
        assert (task_id, status, error[:3]) == (6, 1, ["Bad\ufffd", "\ufffd bad", "fail"])
    finally:
        sock.close(linger=0)


def test_shutdown_cancels_what_has_not_started(cluster, tmp_path):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "1")
    ex = cluster.executor(broker)
    started, release = tmp_path / "started", tmp_path / "release"
    blocker = ex.submit("gate", str(started), str(release))
    wait_for(started.exists, what="the gate task to start")
    queued = [ex.submit("square", i) for i in range(5)]
    wait_for(lambda: ex.stats()["queued"] == 5, what="five tasks queued at the broker")
    ex.shutdown(wait=False, cancel_futures=True)
    done, _ = cf.wait(queued, timeout=30)
    assert done == set(queued) and all(f.cancelled() for f in queued)
    assert not blocker.done()
    release.touch()
    assert blocker.result(timeout=30) > 0
    ex.shutdown(wait=True)


def test_a_list_of_endpoints_moves_past_a_dead_broker(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    #  A port nobody listens on: the first endpoint never answers.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    with cluster.executor([dead, broker.clients], heartbeat_ms=100) as ex:
        assert ex.endpoints == [dead, broker.clients]
        assert list(ex.map("square", range(20), timeout=30)) == [i * i for i in range(20)]


def test_many_tasks_from_several_threads(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    with cluster.executor(broker) as ex:
        def run(base):
            futures = [ex.submit("square", base + i) for i in range(2000)]
            return sum(f.result(timeout=60) for f in futures)

        with cf.ThreadPoolExecutor(4) as threads:
            totals = list(threads.map(run, [0, 10000, 20000, 30000]))
        assert totals == [sum((b + i) ** 2 for i in range(2000)) for b in (0, 10000, 20000,
                                                                           30000)]
        assert ex.stats()["completed"] == 8000


EXIT_SCRIPT = """
import sys
sys.path.insert(0, {path!r})
import cfutures
ex = cfutures.Executor({endpoint!r}, heartbeat_ms=100, connect_timeout=None)
f = ex.submit("slow_double", 21)
f.add_done_callback(lambda f: print("cancelled" if f.cancelled() else f.result(), flush=True))
"""


def test_at_exit_submitted_tasks_complete_unless_the_broker_is_lost(cluster):
    import subprocess
    import sys
    import time

    from conftest import PYTHON_DIR
    broker = cluster.broker()
    cluster.c_worker(broker)
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    for endpoint, expected in ((broker.clients, "42"), (dead, "cancelled")):
        start = time.monotonic()
        proc = subprocess.run([sys.executable, "-c",
                               EXIT_SCRIPT.format(path=str(PYTHON_DIR), endpoint=endpoint)],
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.split() == [expected]
        assert time.monotonic() - start < 15


def test_a_full_broker_pushes_back_and_nothing_is_lost(cluster):
    broker = cluster.broker("--max-queued", "50")
    cluster.c_worker(broker, "--threads", "2")
    with cluster.executor(broker) as ex:
        futures = [ex.submit("square", i) for i in range(3000)]
        assert [f.result(timeout=60) for f in futures] == [i * i for i in range(3000)]
        stats = ex.stats()
    assert stats["busy"] > 0                    # the broker did push back
    assert stats["completed"] == 3000


def test_max_outstanding_bounds_the_tasks_not_done(cluster, tmp_path):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "2")
    ex = cluster.executor(broker, max_outstanding=2, fail_when_full=True)
    gates = []
    for i in range(2):
        started, release = tmp_path / f"started{i}", tmp_path / f"release{i}"
        gates.append((ex.submit("gate", str(started), str(release)), release))
        wait_for(started.exists, what="a gate task to start")
    with pytest.raises(cfutures.Busy):
        ex.submit("square", 3)
    gates[0][1].touch()
    assert gates[0][0].result(timeout=30) > 0
    assert ex.submit("square", 3).result(timeout=30) == 9
    gates[1][1].touch()
    assert gates[1][0].result(timeout=30) > 0

    #  Without fail_when_full the submission waits for a slot.
    waiting = cluster.executor(broker, max_outstanding=1)
    started, release = tmp_path / "started_w", tmp_path / "release_w"
    held = waiting.submit("gate", str(started), str(release))
    wait_for(started.exists, what="the gate task to start")
    box = {}
    thread = threading.Thread(target=lambda: box.setdefault("f", waiting.submit("square", 4)))
    thread.start()
    thread.join(0.2)
    assert thread.is_alive()          # no slot while the gate task holds it
    release.touch()
    thread.join(30)
    assert not thread.is_alive()
    assert box["f"].result(timeout=30) == 16
    assert held.result(timeout=30) > 0
    with pytest.raises(ValueError):
        cfutures.Executor(broker.clients, max_outstanding=0)


def _dead_endpoint():
    """A port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    return endpoint


def test_the_constructor_waits_for_a_broker_and_says_when_none_answers(cluster):
    import time
    dead = _dead_endpoint()
    start = time.monotonic()
    with pytest.raises(TimeoutError) as info:
        cfutures.Executor(dead, connect_timeout=0.3)
    assert 0.3 <= time.monotonic() - start < 10
    assert f"no cf-broker answered at {dead} within 300 ms (connect_timeout" \
        in str(info.value)
    with pytest.raises(TimeoutError) as info:
        cfutures.Executor([dead, _dead_endpoint()], connect_timeout=0.2, heartbeat_ms=50)
    assert dead in str(info.value)
    #  None (or a negative number): no wait, the executor connects in the
    #  background and its tasks wait for a broker.
    start = time.monotonic()
    ex = cluster.executor(dead, connect_timeout=None)
    ex2 = cluster.executor(dead, connect_timeout=-1)
    assert time.monotonic() - start < 2
    assert not ex._client.answered and not ex2._client.answered
    for bad in ("5", True, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            cfutures.Executor(dead, connect_timeout=bad)
    #  A broker that is there answers at once (0: the default wait, 5 s).
    broker = cluster.broker()
    cluster.c_worker(broker)
    start = time.monotonic()
    ex = cluster.executor(broker, connect_timeout=0)
    assert ex._client.answered and time.monotonic() - start < 5
    assert ex.submit("square", 6).result(timeout=30) == 36
    #  With several endpoints it moves past those that do not answer, one
    #  heartbeat interval each, within the same wait.
    ex = cluster.executor([dead, _dead_endpoint(), broker.clients], connect_timeout=30,
                          heartbeat_ms=200)
    assert ex._client.ep_index == 2
    assert ex.submit("square", 7).result(timeout=30) == 49
