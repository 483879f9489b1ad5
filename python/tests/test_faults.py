"""Faults with real processes: a worker killed mid-task, a broker killed and
restarted, and a broker that sends garbage. Every Python future resolves."""

import concurrent.futures as cf
import logging
import signal
import socket
import threading
import time

import msgpack
import pytest
import zmq

import cfutures
from cfutures import _proto
from cfutures.worker import Worker
from conftest import wait_for, wait_workers

FAST = ("--heartbeat-ms", "100")


def _pid_in(path):
    def ready():
        try:
            return int(path.read_text())
        except (OSError, ValueError):
            return 0
    wait_for(ready, what=f"a pid in {path.name}")
    return ready()


@pytest.mark.parametrize("kind", ["c", "python"])
def test_a_worker_killed_mid_task_is_retried_or_reported(cluster, tmp_path, kind):
    broker = cluster.broker(*FAST)
    start = cluster.c_worker if kind == "c" else cluster.py_worker
    doomed = start(broker, "--threads", "2", *FAST)
    ex = cluster.executor(broker, heartbeat_ms=100)
    retried = ex.submit("sleep_pid", 600, str(tmp_path / "a.pid"), retries=1)
    lost = ex.submit("sleep_pid", 600, str(tmp_path / "b.pid"), retries=0)
    assert _pid_in(tmp_path / "a.pid") == doomed.pid
    assert _pid_in(tmp_path / "b.pid") == doomed.pid
    survivor = start(broker, "--threads", "2", *FAST)
    doomed.kill()
    #  The retried task runs again on the survivor; the other fails alone.
    assert retried.result(timeout=30) == survivor.pid
    with pytest.raises(cfutures.TaskError) as info:
        lost.result(timeout=30)
    assert info.value.type == "WorkerLost"
    assert ex.submit("square", 5).result(timeout=30) == 25
    ex.shutdown()


def test_every_future_resolves_across_a_broker_restart(cluster):
    broker = cluster.broker(*FAST)
    port_clients, port_workers = broker.clients, broker.workers
    c_worker = cluster.c_worker(broker, "--threads", "2", *FAST)
    py_worker = cluster.py_worker(broker, "--threads", "2", *FAST)
    ex = cluster.executor(broker, heartbeat_ms=100)
    wait_workers(ex, 2)
    futures = [ex.submit("sleep_pid", 150) for _ in range(16)]
    wait_for(lambda: sum(f.running() for f in futures) >= 2, what="tasks running")
    broker.kill()
    #  Submitted while there is no broker: they wait, then go to the new one.
    more = [ex.submit("slow_double", i) for i in range(8)]
    cluster.broker(*FAST, clients=port_clients, workers=port_workers)
    done, not_done = cf.wait(futures + more, timeout=60)
    assert not not_done
    assert {f.result() for f in futures} <= {c_worker.pid, py_worker.pid}
    assert [f.result() for f in more] == [2 * i for i in range(8)]
    #  Both workers announced themselves to the new broker, and serve it.
    wait_for(lambda: ex.stats()["workers"] == 2, what="both workers at the new broker")
    assert set(ex.map("sleep_pid", [40] * 16)) == {c_worker.pid, py_worker.pid}
    ex.shutdown()


def test_a_broker_that_stops_gracefully_is_left_and_rejoined(cluster):
    broker = cluster.broker(*FAST)
    endpoints = broker.clients, broker.workers
    cluster.c_worker(broker, *FAST)
    ex = cluster.executor(broker, heartbeat_ms=100)
    assert ex.submit("square", 2).result(timeout=30) == 4
    assert broker.stop() == 0               # DISCONNECT to every peer
    pending = ex.submit("square", 3)
    cluster.broker(*FAST, clients=endpoints[0], workers=endpoints[1])
    assert pending.result(timeout=30) == 9
    ex.shutdown()


# ---------------------------------------------------------------------------
#  shutdown(wait=True) with a broker lost or never there: bounded, as
#  cf_executor_destroy (include/cfutures.h)

def _dead_endpoint():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    endpoint = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    s.close()
    return endpoint


def test_shutdown_stops_waiting_for_a_broker_never_there(caplog):
    caplog.set_level(logging.WARNING, logger="cfutures.client")
    ex = cfutures.Executor(_dead_endpoint(), heartbeat_ms=100, connect_timeout=None)
    futures = [ex.submit("square", i) for i in range(3)]
    start = time.monotonic()
    ex.shutdown(wait=True)
    #  Liveness (3) intervals of 100 ms since the tasks began to wait.
    assert 0.25 <= time.monotonic() - start < 10
    #  Never delivered (no connection ever came up): cancelled.
    assert all(f.cancelled() for f in futures)
    assert "0 tasks failed with BrokerLost, 3 never delivered cancelled" in caplog.text


def test_shutdown_fails_the_tasks_of_a_lost_broker_with_broker_lost(cluster, caplog):
    caplog.set_level(logging.WARNING, logger="cfutures.client")
    broker = cluster.broker(*FAST)
    ex = cluster.executor(broker, heartbeat_ms=100)
    #  No worker: the tasks wait in the broker's queue.
    futures = [ex.submit("square", i) for i in range(4)]
    wait_for(lambda: ex.stats()["queued"] == 4, what="the tasks queued at the broker")
    broker.kill()
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start < 10
    for f in futures:
        error = f.exception(timeout=0)
        assert isinstance(error, cfutures.TaskError) and error.type == "BrokerLost"
        assert "may or may not have run" in error.message and broker.clients in error.message
    assert "4 tasks failed with BrokerLost, 0 never delivered cancelled" in caplog.text


def test_shutdown_waits_for_every_task_while_the_broker_answers(cluster, caplog):
    caplog.set_level(logging.WARNING, logger="cfutures.client")
    broker = cluster.broker(*FAST)
    worker = cluster.c_worker(broker, "--threads", "1", *FAST)
    ex = cluster.executor(broker, heartbeat_ms=100)
    #  One thread: 8 x 100 ms, far longer than liveness x 100 ms.
    futures = [ex.submit("sleep_pid", 100) for _ in range(8)]
    start = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - start >= 0.7
    assert [f.result(timeout=0) for f in futures] == [worker.pid] * 8
    assert "BrokerLost" not in caplog.text


# ---------------------------------------------------------------------------
#  A broker that sends garbage: a ROUTER driven by hand.

GARBAGE = [
    [b"cf/2", b"RESULT", b"\x90"],                      # another version
    [b"cf/1", b"RESULT"],                               # two frames
    [b"cf/1", b"RESULT", b"\x90", b"x"],                # four frames
    [b"cf/1"] + [b"x"] * 20,                            # far too many frames
    [b"cf/1", b"NONSENSE", b"\x90"],
    [b"cf/1", b"RESULT", b""],
    [b"cf/1", b"RESULT", b"\xdd\xff\xff\xff\xff"],       # 4 billion items announced
    [b"cf/1", b"RESULT", b"\x91" * 5000 + b"\x00"],     # nested far too deep
    [b"cf/1", b"RESULT", b"\x90\x90"],                  # trailing bytes
    [b"cf/1", b"RESULT", b"\xc1"],                      # never-used byte
    [b"cf/1", b"RESULT", msgpack.packb([[1, 0]])],      # success without a value
    [b"cf/1", b"RESULT", msgpack.packb([[1, 9, b"x"]])],  # unknown status
    [b"cf/1", b"RESULT", msgpack.packb([[-1, 2]])],     # negative id
    [b"cf/1", b"RESULT", msgpack.packb([[1, 1, ["T", "m"]]])],  # short error
    [b"cf/1", b"RESULT", msgpack.packb([[1, 0, "str, not bin"]])],
    [b"cf/1", b"HEARTBEAT", msgpack.packb([1, 2 ** 40])],
    [b"cf/1", b"HEARTBEAT", msgpack.packb({"boot": 1})],
    [b"cf/1", b"STARTED", msgpack.packb([1.5])],
    [b"cf/1", b"ERROR", msgpack.packb([0, b"bin text"])],
    [b"cf/1", b"STATS", msgpack.packb({"x": -1})],
    [b"cf/1", b"TASK", msgpack.packb([[1, "square", b"\x91\x02", 0]])],   # not for clients
    [b"cf/1", b"RESULT", bytes(range(256))],
]


def _router():
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    _proto.setup_socket(router, router=True)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def _recv(router, timeout_ms=10000):
    assert router.poll(timeout_ms), "nothing arrived"
    parts = router.recv_multipart()
    return parts[0], _proto.decode(parts[1:])


def test_the_client_survives_garbage_from_its_broker():
    router, endpoint = _router()
    try:
        with cfutures.Executor(endpoint, heartbeat_ms=5000) as ex:
            first = ex.submit("square", 7)
            second = ex.submit("value", 1)
            peer, (command, tasks) = _recv(router)
            while len(tasks) < 2:
                _, (command, more) = _recv(router)
                tasks += more
            assert command == _proto.SUBMIT
            ids = [t[0] for t in tasks]
            for message in GARBAGE:
                router.send_multipart([peer] + message)
            #  Garbage inside a valid envelope fails its task alone.
            router.send_multipart([peer, b"cf/1", b"RESULT",
                                   msgpack.packb([[ids[1], 0, b"\xc1"]])])
            router.send_multipart([peer, b"cf/1", b"RESULT",
                                   msgpack.packb([[ids[0], 0, b"\x31"], [12345, 0, b"\x01"]])])
            assert first.result(timeout=10) == 49
            with pytest.raises(cfutures.TaskError) as info:
                second.result(timeout=10)
            assert info.value.type == "ProtocolError"
            assert ex._client.malformed >= len(GARBAGE) - 2
    finally:
        router.close(linger=0)


def test_the_worker_survives_garbage_from_its_broker():
    router, endpoint = _router()
    worker = Worker({"square": lambda x: x * x}, endpoint, threads=2)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        peer, (command, ready) = _recv(router)
        assert command == _proto.READY and ready[0] == 2 and ready[3] == 2
        for message in GARBAGE:
            router.send_multipart([peer] + message)
        bad_args = [[1, "square", b"\xc1", 0], [2, "square", b"\x02", 0],
                    [3, "square", b"\x91\xa1x", 0], [4, "nope", b"\x90", 0],
                    [5, "square", b"\x91\x07", 0]]
        router.send_multipart([peer, b"cf/1", b"TASK", msgpack.packb(bad_args)])
        results = {}
        deadline = time.monotonic() + 10
        while len(results) < 5 and time.monotonic() < deadline:
            _, (command, fields) = _recv(router)
            if command == _proto.RESULT:
                results.update((r[0], r) for r in fields)
        assert results[5] == (5, _proto.OK, b"\x31")
        assert results[1][1] == _proto.ERROR and results[1][2][0] == "ProtocolError"
        assert results[2][1] == _proto.ERROR and results[2][2][0] == "ProtocolError"
        assert results[3][1] == _proto.ERROR and results[3][2][0] == "TypeError"
        assert results[4][1] == _proto.ERROR and results[4][2][0] == "UnknownFunction"
        assert worker.malformed >= len(GARBAGE) - 2
    finally:
        worker.stop()
        thread.join(10)
        router.close(linger=0)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------
#  The protocol's rules, against a broker driven by hand

def _expect(router, command, timeout_ms=10000):
    """The next message of that command (heartbeats skipped, and STARTED:
    it is advice, tests that care ask for it)."""
    while True:
        peer, (got, fields) = _recv(router, timeout_ms)
        if got == command:
            return peer, fields
        assert got in (_proto.HEARTBEAT, _proto.STARTED), f"expected {command}, got {got}"


def test_the_client_resends_on_every_sign_of_a_forgetful_broker_and_after_busy():
    router, endpoint = _router()
    try:
        with cfutures.Executor(endpoint, heartbeat_ms=5000) as ex:
            futures = [ex.submit("square", 2), ex.submit("square", 3)]
            peer, tasks = _expect(router, _proto.SUBMIT)
            while len(tasks) < 2:
                tasks += _expect(router, _proto.SUBMIT)[1]
            ids = [t[0] for t in tasks]
            assert 0 not in ids and ids[1] == ids[0] + 1
            send = lambda command, body: router.send_multipart(  # noqa: E731
                [peer] + _proto.frames(command, body))
            send(_proto.HEARTBEAT, [0x1111, 1000])
            send(_proto.STARTED, [ids[0]])
            wait_for(futures[0].running, what="STARTED to set running()")
            #  A new boot id: the broker restarted; both go again, in order.
            send(_proto.HEARTBEAT, [0x2222, 1000])
            assert [t[0] for t in _expect(router, _proto.SUBMIT)[1]] == ids
            #  The broker forgot us: again.
            send(_proto.ERROR_CMD, [0, _proto.UNKNOWN_CLIENT])
            assert [t[0] for t in _expect(router, _proto.SUBMIT)[1]] == ids
            #  BUSY: the task comes back after the back-off, nothing lost.
            send(_proto.RESULT, [[ids[0], _proto.BUSY], [ids[1], _proto.OK, b"\x09"]])
            assert futures[1].result(timeout=10) == 9
            again = _expect(router, _proto.SUBMIT)[1]
            assert [t[0] for t in again] == [ids[0]]
            send(_proto.RESULT, [[ids[0], _proto.OK, b"\x04"], [ids[0], _proto.OK, b"\x05"]])
            assert futures[0].result(timeout=10) == 4      # the twin result is dropped
            assert ex._client.stale == 1
            #  An error answering a task id fails that task alone.
            late = ex.submit("square", 4)
            late_id = _expect(router, _proto.SUBMIT)[1][0][0]
            send(_proto.ERROR_CMD, [late_id, "refused for a test"])
            with pytest.raises(cfutures.TaskError) as info:
                late.result(timeout=10)
            assert (info.value.type, info.value.message) == ("ProtocolError",
                                                             "refused for a test")
    finally:
        router.close(linger=0)


def test_the_worker_announces_its_free_slots_once_per_sign():
    router, endpoint = _router()
    release = threading.Event()
    worker = Worker({"hold": lambda: release.wait(10), "one": lambda: 1}, endpoint,
                    threads=2, prefetch=1)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        peer, ready = _expect(router, _proto.READY)
        assert ready[0] == 3 and ready[3] == 2              # threads + prefetch, threads
        assert ready[4] == (_proto.FEATURE_BEGUN | _proto.FEATURE_STOP)
        send = lambda command, body: router.send_multipart(  # noqa: E731
            [peer] + _proto.frames(command, body))
        send(_proto.HEARTBEAT, [0xAAAA, 1000])
        send(_proto.TASK, [[7, "hold", _proto.pack([]), 0]])
        wait_for(lambda: worker.running == 1, what="the task to start")
        #  Repeated READYs give the free slots: one task is in hand.
        send(_proto.ERROR_CMD, [0, _proto.UNKNOWN_WORKER])
        assert _expect(router, _proto.READY)[1][0] == 2
        send(_proto.HEARTBEAT, [0xBBBB, 1000])              # a restart
        assert _expect(router, _proto.READY)[1][0] == 2
        send(_proto.DISCONNECT, ["broker stopping"])
        send(_proto.HEARTBEAT, [0xBBBB, 1000])              # it speaks again: once
        assert _expect(router, _proto.READY)[1][0] == 2
        release.set()
        _, results = _expect(router, _proto.RESULT)
        assert results == [(7, _proto.OK, b"\xc3")]
        send(_proto.TASK, [[8, "one", _proto.pack([]), 0]])
        _, results = _expect(router, _proto.RESULT)
        assert results == [(8, _proto.OK, b"\x01")]
        #  No further READY came meanwhile: only heartbeats may follow.
        assert not router.poll(200) or _recv(router)[1][0] == _proto.HEARTBEAT
    finally:
        worker.stop()
        thread.join(10)
        router.close(linger=0)
    assert not thread.is_alive()


def test_the_worker_says_started_and_cancels_only_what_waits_in_its_queue():
    router, endpoint = _router()
    release = threading.Event()
    ran = []
    worker = Worker({"hold": lambda: release.wait(10), "one": lambda: ran.append(1) or 1},
                    endpoint, threads=1, prefetch=2)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    try:
        peer, ready = _expect(router, _proto.READY)
        assert ready[4] == (_proto.FEATURE_BEGUN | _proto.FEATURE_STOP)
        send = lambda command, body: router.send_multipart(  # noqa: E731
            [peer] + _proto.frames(command, body))
        send(_proto.HEARTBEAT, [0xAAAA, 1000])
        send(_proto.TASK, [[7, "hold", _proto.pack([]), 0], [8, "one", _proto.pack([]), 0],
                           [9, "one", _proto.pack([]), 0]])
        #  Unasked, for the task whose function began, and for it alone.
        assert _expect(router, _proto.STARTED)[1] == [7]
        #  The running task, a queued one, one never seen.
        send(_proto.CANCEL, [7, 8, 42])
        assert _expect(router, _proto.STARTED)[1] == [7, 42]
        assert _expect(router, _proto.RESULT)[1] == [(8, _proto.CANCELLED, None)]
        release.set()
        results = []
        while len(results) < 2:
            results += _expect(router, _proto.RESULT)[1]
        assert sorted(results) == [(7, _proto.OK, b"\xc3"), (9, _proto.OK, b"\x01")]
        assert ran == [1]                                   # 9 ran, 8 never did
    finally:
        worker.stop()
        thread.join(10)
        router.close(linger=0)
    assert not thread.is_alive()
