"""The Python worker (python -m cfutures.worker) behind a real cf-broker:
serving the C example programs, Python clients, beside C workers, in
processes, and stopping gracefully."""

import concurrent.futures as cf
import os
import json
import signal
import socket
import subprocess
import sys
import time

import pytest

import cfutures
from conftest import CF_LIB, HERE, PYTHON_DIR, wait_for, wait_workers


def test_c_example_programs_run_on_a_python_worker(cluster):
    broker = cluster.broker()
    cluster.py_worker(broker, "--threads", "5")
    code, out, err = cluster.example("map_slow", "remote", broker.clients)
    assert code == 0, err
    assert "[0, 2, 4, 6, 8, 10, 12, 14, 16, 18]\n" in out
    assert "10 results on remote in " in out

    code, out, err = cluster.example("as_completed", "remote", broker.clients)
    assert code == 0, err
    assert out == "B raised ValueError('B failed')\nA done\nC done\n"

    code, out, err = cluster.example("primes", "remote", broker.clients)
    assert code == 0, err
    for number, prime in [("2", True), ("11111111111111111", False),
                          ("112272535095293", True), ("999999999999999989", True),
                          ("1000000000000000001", False), ("1000000000000000003", True),
                          ("9999999999999999", False)]:
        assert f" {number}  {'is prime' if prime else 'is not prime'}\n" in out
    assert "1e18  failed: TypeError: is_prime() argument 0: expected non-negative int, " \
           "got str" in out
    assert "(1 failed)" in out

    code, out, err = cluster.example("fanout", "remote", broker.clients)
    assert code == 0, err
    assert "[1, 4, 9, 16, 25, 36, 49, 64]\n" in out
    assert "failed: !boom  -> ValueError: cannot shout '!boom'\n" in out
    assert "3 succeeded, 2 failed\n" in out


def test_python_functions_serve_python_clients(cluster):
    broker = cluster.broker()
    worker = cluster.py_worker(broker, "--threads", "3",
                               specs=("pytasks", "mul=pytasks:not_decorated"))
    with cluster.executor(broker) as ex:
        assert ex.submit("py_upper", "héllo").result(timeout=30) == "HÉLLO"
        assert ex.submit("py_pid").result(timeout=30) == worker.pid
        assert ex.submit("mul", 6, 7).result(timeout=30) == 42
        with pytest.raises(cfutures.TaskError) as info:
            ex.submit("py_lookup", "b").result(timeout=30)
        e = info.value
        assert (e.type, e.message, e.function) == ("KeyError", "'b'", "py_lookup")
        assert (e.host, e.pid) == (socket.gethostname(), worker.pid)
        with pytest.raises(cfutures.TaskError) as info:
            ex.submit("py_unencodable").result(timeout=30)
        assert info.value.type == "TypeError" and "msgpack" in info.value.message
        with pytest.raises(cfutures.TaskError) as info:
            ex.submit("py_upper").result(timeout=30)
        assert info.value.type == "TypeError"
        #  (A function this worker lacks: UnknownFunction from it, see
        #  test_faults.py's hand-driven broker; a broker that routes by
        #  function never sends it here, see test_routing.py.)
        #  cf.chunk, served by the Python worker itself.
        results = ex.map("py_lookup", ["a", "a", "a", "zz", "a"], chunksize=2)
        assert [next(results) for _ in range(3)] == [1, 1, 1]
        with pytest.raises(cfutures.TaskError) as info:
            next(results)
        assert info.value.type == "KeyError" and info.value.pid == worker.pid
        assert list(ex.map("py_upper", "abcdefg", chunksize=3)) == list("ABCDEFG")


def test_procs_runs_tasks_in_separate_processes_and_replaces_a_crashed_one(cluster):
    broker = cluster.broker("--heartbeat-ms", "100")
    worker = cluster.py_worker(broker, "--procs", "2", "--heartbeat-ms", "100",
                               specs=("pytasks", "cfutures.example_tasks"))
    assert worker.ready == {"procs": "2"}
    with cluster.executor(broker, heartbeat_ms=100) as ex:
        wait_workers(ex, 2)
        pids = {pid for pid, _ in ex.map("py_spin", [200000] * 12, timeout=60)}
        assert len(pids) == 2 and worker.pid not in pids
        #  A task that kills its process fails alone (no retries left); the
        #  supervisor replaces the process and the pool serves on.
        crash = ex.submit("crash", retries=0)
        with pytest.raises(cfutures.TaskError) as info:
            crash.result(timeout=30)
        assert info.value.type == "WorkerLost"
        wait_for(lambda: ex.stats()["workers"] == 2, what="the crashed process replaced")
        after = {pid for pid, _ in ex.map("py_spin", [200000] * 12, timeout=60)}
        assert len(after) == 2 and after != pids


def test_a_mixed_cluster_serves_the_same_functions_from_c_and_python(cluster):
    broker = cluster.broker()
    c_worker = cluster.c_worker(broker, "--threads", "2")
    py_worker = cluster.py_worker(broker, "--threads", "2")
    with cluster.executor(broker) as ex:
        wait_workers(ex, 2)
        pids = list(ex.map("sleep_pid", [30] * 24, timeout=60))
        assert set(pids) == {c_worker.pid, py_worker.pid}
        #  The same answers whoever runs them.
        assert list(ex.map("is_prime", [2, 4, 97, 1099726899285419, 112272535095293] * 4)) \
            == [True, False, True, False, True] * 4
        assert list(ex.map("shout", ["ab", "cd"] * 10)) == ["AB", "CD"] * 10


def test_tasks_go_only_to_workers_that_serve_their_function(cluster):
    broker = cluster.broker()
    cluster.c_worker(broker, "--threads", "4")      # idle threads the broker fills first
    cluster.py_worker(broker, "--threads", "1", specs=("pytasks",))
    with cluster.executor(broker) as ex:
        wait_workers(ex, 2)
        futures = [ex.submit("py_upper", "x") for _ in range(20)]
        assert [f.result(timeout=30) for f in futures] == ["X"] * 20


def test_sigterm_lets_running_tasks_finish_and_hands_back_the_rest(cluster, tmp_path):
    broker = cluster.broker()
    worker = cluster.py_worker(broker, "--threads", "2")
    ex = cluster.executor(broker, retries=0)
    started, release = tmp_path / "started", tmp_path / "release"
    running = ex.submit("gate", str(started), str(release))
    wait_for(started.exists, what="the gate task to start")
    os.kill(worker.pid, signal.SIGTERM)
    #  Submitted while the worker stops: the broker may give one to its free
    #  thread; the worker does not run it, and its DISCONNECT hands it back.
    later = [ex.submit("sleep_pid", 10) for _ in range(3)]
    wait_for(lambda: ex.stats()["queued"] + ex.stats()["running"] == 4,
             what="the later tasks at the broker")
    release.touch()
    assert running.result(timeout=30) == worker.pid
    assert worker.proc.wait(30) == 0
    assert not any(f.done() for f in later)
    #  No retry was used (retries=0): handed back, not lost.
    other = cluster.c_worker(broker)
    assert [f.result(timeout=30) for f in later] == [other.pid] * 3
    ex.shutdown()


@pytest.mark.parametrize("mode", [("--threads", "2", "--prefetch", "3"),
                                  ("--procs", "2", "--prefetch", "2")],
                         ids=["threads", "procs"])
def test_running_means_begun_and_a_prefetched_task_can_be_cancelled(cluster, tmp_path, mode):
    broker = cluster.broker()
    ex = cluster.executor(broker, retries=0)
    release = tmp_path / "release"
    marks = [tmp_path / f"started-{i}" for i in range(5)]
    #  Queued at the broker before any worker is there, so the first READY
    #  takes them all: two run, three wait in the workers' local queues.
    futures = [ex.submit("gate", str(m), str(release)) for m in marks]
    wait_for(lambda: ex.stats()["queued"] == 5, what="the tasks queued at the broker")
    worker = cluster.py_worker(broker, *mode)
    wait_for(lambda: ex.stats()["queued"] == 0, what="every task on a worker")
    try:
        wait_for(lambda: sum(m.exists() for m in marks) == 2, what="two tasks to start")
        wait_for(lambda: sum(f.running() for f in futures) >= 2, what="STARTED for them")
        time.sleep(0.3)         # a wrong STARTED for the others would have come
        assert [f.running() for f in futures] == [m.exists() for m in marks]
        assert sum(m.exists() for m in marks) == 2
        runner = next(f for f, m in zip(futures, marks) if m.exists())
        assert runner.cancel() is False
        waiting = [i for i, m in enumerate(marks) if not m.exists()]
        assert futures[waiting[0]].cancel() is True
        assert futures[waiting[0]].cancelled()
    finally:
        release.touch()         # a failure above must not leave the workers busy
    pids = {futures[i].result(timeout=30) for i in range(5) if i != waiting[0]}
    if mode[0] == "--threads":
        assert pids == {worker.pid}
    else:
        assert worker.pid not in pids
    #  Never run, on that worker or another.
    assert not marks[waiting[0]].exists()
    assert ex.stats()["cancelled"] == 1


def test_cancels_racing_the_starts_either_cancel_a_task_or_let_it_run(cluster, tmp_path):
    broker = cluster.broker()
    ex = cluster.executor(broker, retries=0)
    marks = [tmp_path / f"ran-{i}" for i in range(30)]
    futures = [ex.submit("py_mark", str(m), 10) for m in marks]
    wait_for(lambda: ex.stats()["queued"] == 30, what="the tasks queued at the broker")
    worker = cluster.py_worker(broker, "--threads", "2", "--prefetch", "28",
                               specs=("pytasks",))
    wait_for(lambda: ex.stats()["queued"] == 0, what="every task on the worker")
    answers = [f.cancel() for f in reversed(futures)][::-1]
    cf.wait(futures, timeout=30)
    for f, m, answer in zip(futures, marks, answers):
        assert answer == f.cancelled()
        if f.cancelled():
            assert not m.exists()
        else:
            assert f.result() == worker.pid and m.exists()
    assert 0 < sum(answers) < 30
    assert ex.stats()["cancelled"] == sum(answers)


def test_a_c_client_sees_begun_and_cancels_a_prefetched_task(cluster, tmp_path):
    broker = cluster.broker()
    client = subprocess.Popen([sys.executable, str(HERE / "c_client_cancel.py"), str(CF_LIB),
                               broker.clients, str(tmp_path), "3"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = client.stdout.readline()
        if line != "submitted\n":
            err = client.stderr.read()
            if "runtime does not come first" in err:
                pytest.skip("a sanitizer build: libcfutures cannot be loaded into Python")
            raise AssertionError(f"the C client failed: {line!r} {err}")
        with cluster.executor(broker) as ex:
            wait_for(lambda: ex.stats()["queued"] == 3, what="the tasks queued at the broker")
        worker = cluster.py_worker(broker, "--threads", "1", "--prefetch", "2")
        out, err = client.communicate("go\n", timeout=60)
    finally:
        (tmp_path / "release").touch()
        if client.poll() is None:
            client.kill()
            client.wait()
    assert client.returncode == 0, err
    report = json.loads(out)
    assert report["running"] == report["started"] and sum(report["started"]) == 1
    assert report["cancel"] == {str(i): [True, True]
                                for i, started in enumerate(report["started"]) if not started}
    assert list(report["results"].values()) == [worker.pid]
    assert sum(report["ran"]) == 1


def test_worker_command_line_errors_are_one_line(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(PYTHON_DIR))
    for args, message in [(["no_such_module"], "cannot import no_such_module"),
                          (["cfutures.example_tasks:nope"], "has no nope"),
                          (["os"], "no @cfutures.task function"),
                          (["--broker-key", "/nonexistent", "--key", "/nonexistent",
                            "cfutures.example_tasks"], "no such file")]:
        proc = subprocess.run([sys.executable, "-m", "cfutures.worker",
                               "--broker", "tcp://127.0.0.1:9", *args],
                              capture_output=True, text=True, env=env, timeout=30)
        assert proc.returncode == 1, proc.stderr
        assert message in proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stdout == ""
