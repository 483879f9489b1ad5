"""Routing by function, task priorities and NoWorker (issue 10), Python
side: what the client and the worker send, against a broker driven by
hand; and the behaviour of a cluster, against a real cf-broker.

The cluster tests run against the broker's side of issue 10: it routes
tasks (and map's chunks, by the function they carry) by the functions a
worker's READY lists, dispatches a client's tasks by priority, and fails a
task no connected worker serves with NoWorker."""

import concurrent.futures as cf
import threading
import time

import msgpack
import pytest
import zmq

import cfutures
from cfutures import _proto
from cfutures.worker import Worker
from conftest import wait_for, wait_workers

# ---------------------------------------------------------------------------
#  A broker driven by hand: a ROUTER

def _router():
    router = zmq.Context.instance().socket(zmq.ROUTER)
    _proto.setup_socket(router, router=True)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    return router, f"tcp://127.0.0.1:{port}"


def _expect(router, command, timeout_ms=10000):
    """(peer, raw body) of the next message of that command: HEARTBEAT,
    STARTED and DISCONNECT (of an executor closed before) are skipped. The body is the msgpack value as sent, so the
    number of fields shows."""
    while True:
        assert router.poll(timeout_ms), f"no {command.decode()} arrived"
        peer, *parts = router.recv_multipart()
        got, _ = _proto.decode(parts)           # valid cf/1, or Malformed
        if got == command:
            return peer, msgpack.unpackb(parts[2], raw=False)
        assert got in (_proto.HEARTBEAT, _proto.STARTED, _proto.DISCONNECT), \
            f"expected {command}, got {got}"


def _tasks(router, n):
    """The next n SUBMIT tasks, whatever the batching: (peer, [task, ...])."""
    tasks = []
    while len(tasks) < n:
        peer, body = _expect(router, _proto.SUBMIT)
        tasks += body
    assert len(tasks) == n
    return peer, tasks


def _answer(router, peer, tasks, value_of):
    results = [[t[0], _proto.OK, _proto.pack(value_of(t))] for t in tasks]
    router.send_multipart([peer] + _proto.frames(_proto.RESULT, results))


def _square(task):
    args = msgpack.unpackb(task[2], raw=False)
    if task[1] == _proto.CHUNK_FUNCTION:
        return [[0, a[0] * a[0]] for a in args[1]]
    return args[0] * args[0]


def test_the_client_sends_the_longer_submit_only_for_tasks_that_need_it():
    router, endpoint = _router()
    try:
        with cfutures.Executor(endpoint, heartbeat_ms=5000) as ex:
            futures = [ex.submit("square", 2), ex.submit("square", 3, priority=7),
                       ex.submit("square", 4, no_worker_timeout=0.3),
                       ex.submit("square", 5, priority=-1, no_worker_timeout=2),
                       ex.submit("square", 6, priority=0, no_worker_timeout=None, retries=1)]
            peer, tasks = _tasks(router, 5)
            #  Flags 0x2: the client reads PROGRESS.
            p = _proto.FLAG_PROGRESS
            assert [t[3:] for t in tasks] == [[3, 0, p], [3, 0, p, 7, 0], [3, 0, p, 0, 300],
                                              [3, 0, p, -1, 2000], [1, 0, p]]
            _answer(router, peer, tasks, _square)
            assert [f.result(timeout=10) for f in futures] == [4, 9, 16, 25, 36]

            #  map: the options of every input, of every chunk.
            mapped = ex.map("square", [1, 2, 3], priority=3)
            peer, tasks = _tasks(router, 3)
            assert [t[6:] for t in tasks] == [[3, 0]] * 3
            _answer(router, peer, tasks, _square)
            assert list(mapped) == [1, 4, 9]
            chunked = ex.map("square", range(5), chunksize=2, no_worker_timeout=1)
            peer, tasks = _tasks(router, 3)
            assert [(t[1], t[6:]) for t in tasks] == [(_proto.CHUNK_FUNCTION, [0, 1000])] * 3
            _answer(router, peer, tasks, _square)
            assert list(chunked) == [0, 1, 4, 9, 16]
            plain = ex.map("square", [7])
            peer, tasks = _tasks(router, 1)
            assert len(tasks[0]) == 6
            _answer(router, peer, tasks, _square)
            assert list(plain) == [49]

        #  Executor defaults, overridden per task (back to 6 fields at 0).
        with cfutures.Executor(endpoint, heartbeat_ms=5000, priority=2,
                               no_worker_timeout=0.05) as ex:
            futures = [ex.submit("square", 2), ex.submit("square", 3, priority=0),
                       ex.submit("square", 4, priority=0, no_worker_timeout=0)]
            peer, tasks = _tasks(router, 3)
            p = _proto.FLAG_PROGRESS
            assert [t[3:] for t in tasks] == [[3, 0, p, 2, 50], [3, 0, p, 0, 50], [3, 0, p]]
            _answer(router, peer, tasks, _square)
            assert [f.result(timeout=10) for f in futures] == [4, 9, 16]
        with pytest.raises(ValueError):
            cfutures.Executor(endpoint, priority=2 ** 31)
        with pytest.raises(TypeError):
            cfutures.Executor(endpoint, priority="high")
    finally:
        router.close(linger=0)


def test_the_worker_offers_its_function_list_and_drops_it_for_an_older_broker():
    router, endpoint = _router()
    worker = Worker({"b": lambda: 2, "a": lambda: 1}, endpoint, threads=1)
    thread = threading.Thread(target=worker.serve, daemon=True)
    thread.start()
    send = lambda peer, command, body: router.send_multipart(  # noqa: E731
        [peer] + _proto.frames(command, body))

    def nothing_but_heartbeats():
        while router.poll(200):
            _, *parts = router.recv_multipart()
            assert parts[1] == _proto.HEARTBEAT
        return True

    try:
        peer, ready = _expect(router, _proto.READY)
        assert ready == [1, worker.host, worker.pid, 1,
                         _proto.FEATURE_BEGUN | _proto.FEATURE_STOP,
                         ["cf.chunk", "a", "b"]]
        #  A broker older than issue 10 refuses it: the 5 fields of before,
        #  once (the "unknown worker" answering a heartbeat sent meanwhile
        #  is not a second sign).
        send(peer, _proto.ERROR_CMD, [0, _proto.MALFORMED_TEXT])
        peer, ready = _expect(router, _proto.READY)
        assert ready == [1, worker.host, worker.pid, 1,
                         _proto.FEATURE_BEGUN | _proto.FEATURE_STOP]
        send(peer, _proto.HEARTBEAT, [0xAAAA, 1000])
        send(peer, _proto.ERROR_CMD, [0, _proto.UNKNOWN_WORKER])
        assert nothing_but_heartbeats()
        send(peer, _proto.TASK, [[1, "a", _proto.pack([]), 0]])
        assert _expect(router, _proto.RESULT)[1] == [[1, _proto.OK, b"\x01"]]
        #  A restarted broker, perhaps a newer one, is offered the list again.
        send(peer, _proto.HEARTBEAT, [0xBBBB, 1000])
        peer, ready = _expect(router, _proto.READY)
        assert ready[5] == ["cf.chunk", "a", "b"]
        send(peer, _proto.TASK, [[2, "b", _proto.pack([]), 0]])
        assert _expect(router, _proto.RESULT)[1] == [[2, _proto.OK, b"\x02"]]
        #  Taken (a task came): a later "malformed" is about something else.
        send(peer, _proto.ERROR_CMD, [0, _proto.MALFORMED_TEXT])
        assert nothing_but_heartbeats()
        assert worker.list_functions
    finally:
        worker.stop()
        thread.join(10)
        router.close(linger=0)
    assert not thread.is_alive()


# ---------------------------------------------------------------------------
#  A real cluster (needs the broker's side)

def test_each_task_lands_on_a_worker_that_serves_its_function(cluster):
    broker = cluster.broker()
    #  Idle threads, which a broker that does not route fills first.
    c_worker = cluster.c_worker(broker, "--threads", "4")
    py_worker = cluster.py_worker(broker, "--threads", "2", specs=("pytasks",))
    with cluster.executor(broker) as ex:
        wait_workers(ex, 2)
        py, c = [], []
        for i in range(30):
            py.append(ex.submit("py_pid"))
            c.append(ex.submit("sleep_pid", 5))
        assert {f.result(timeout=30) for f in py} == {py_worker.pid}
        assert {f.result(timeout=30) for f in c} == {c_worker.pid}
        assert list(ex.map("py_upper", "abcdef")) == list("ABCDEF")
        assert list(ex.map("square", range(10))) == [i * i for i in range(10)]


def test_chunks_go_to_a_worker_that_serves_their_function(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "4")
    py_worker = cluster.py_worker(broker, "--threads", "1", specs=("pytasks",))
    with cluster.executor(broker) as ex:
        wait_workers(ex, 2)
        words = [f"w{i}" for i in range(40)]
        assert list(ex.map("py_upper", words, chunksize=3, timeout=60)) == \
            [w.upper() for w in words]
        assert set(ex.map("py_pid", [0] * 12, chunksize=4, timeout=60)) == {py_worker.pid}
        assert list(ex.map("square", range(12), chunksize=5, timeout=60)) == \
            [i * i for i in range(12)]


def test_a_function_no_worker_serves_fails_with_no_worker(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker)
    with cluster.executor(broker) as ex:
        wait_workers(ex, 1)
        start = time.monotonic()
        f = ex.submit("py_upper", "x", no_worker_timeout=0.3)
        with pytest.raises(cfutures.TaskError) as info:
            f.result(timeout=30)
        waited = time.monotonic() - start
        assert info.value.type == "NoWorker"
        assert "no connected worker serves function 'py_upper'" in info.value.message
        assert info.value.function == "py_upper"
        assert 0.3 <= waited < 20
        #  map: every input has the wait.
        with pytest.raises(cfutures.TaskError) as info:
            list(ex.map("py_upper", "ab", no_worker_timeout=0.3, timeout=30))
        assert info.value.type == "NoWorker"
        #  The functions that are served meanwhile run as ever.
        assert ex.submit("square", 7).result(timeout=30) == 49
        #  A task whose worker comes within its wait runs there.
        late = ex.submit("py_upper", "late", no_worker_timeout=60)
        wait_for(lambda: ex.stats()["queued"] == 1, what="the task waiting at the broker")
        cluster.py_worker(broker, specs=("pytasks",))
        assert late.result(timeout=30) == "LATE"


def test_higher_priority_tasks_are_dispatched_first(cluster, tmp_path):
    broker = cluster.broker()
    #  One thread and no prefetch: the order tasks run in is the order the
    #  broker sends them.
    cluster.py_worker(broker, "--threads", "1")
    with cluster.executor(broker) as ex:
        started, release = tmp_path / "started", tmp_path / "release"
        gate = ex.submit("gate", str(started), str(release))
        try:
            wait_for(started.exists, what="the gate task to hold the only thread")
            order = []              # done callbacks run one at a time, in RESULT order
            futures = []
            for i in range(4):
                for priority, tag in ((0, "default"), (5, "high"), (-3, "low")):
                    if tag == "low" and i >= 2:
                        continue
                    f = ex.submit("echo", f"{tag}{i}", priority=priority)
                    f.add_done_callback(lambda f: order.append(
                        "error" if f.exception() else f.result()))
                    futures.append(f)
            #  (A task the broker refused is done already: no use waiting.)
            wait_for(lambda: ex.stats()["queued"] + sum(f.done() for f in futures)
                     >= len(futures), what="every task queued at the broker")
            assert not [f.exception() for f in futures if f.done()]
        finally:
            release.touch()         # a failure above must not leave the worker held
        assert gate.result(timeout=30) > 0
        done, not_done = cf.wait(futures, timeout=30)
        assert not not_done
        #  Higher first; equal ones in submission order.
        assert order == [f"high{i}" for i in range(4)] + [f"default{i}" for i in range(4)] \
            + ["low0", "low1"]
