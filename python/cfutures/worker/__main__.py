"""python -m cfutures.worker: serve Python functions to a cf-broker.

Prints one line to stdout once serving, for scripts and tests (as cf-worker):
    ready worker=<identity> threads=<N>      or      ready procs=<N>
SIGINT/SIGTERM: running tasks finish and their results go out, tasks not
started are handed back to the broker (DISCONNECT), exit 0; a second signal
stops at once (exit 1; the broker requeues what was running). A startup
failure, or a broker that refuses this worker's key, prints one line to
stderr and exits 1.

STOP (a client's Future.stop / cf_future_stop): cooperative on threads (the
task reads cfutures.stop_requested()); with --procs, a task still running
its grace after the STOP is answered Interrupted and its process exits
(status 78) and is replaced at once, as cf-worker --procs does.
"""

import argparse
import logging
import os
import select
import signal
import sys
import time

from . import EXIT_STOPPED, Worker
from .. import _keys
from ..errors import AuthError
from ..registry import load

#  A --procs process that exits sooner than this after its start is
#  replaced after a growing delay, so a worker that cannot run does not
#  become a fork loop (as cf-worker --procs).
QUICK_EXIT_S = 1.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
#  How long --procs waits for its processes to report that they serve.
START_WAIT_S = 30.0
#  A --procs process that exits with this status was refused by the broker:
#  it is not replaced.
EXIT_REFUSED = 77

USAGE_EPILOG = """\
SPEC is module:function (served under the function's name, or the name
given to @cfutures.task), name=module:function, or module (every
@cfutures.task function defined in it).

example:
  python -m cfutures.worker --broker tcp://127.0.0.1:5556 --threads 4 \\
      cfutures.example_tasks
"""


def _parse(argv):
    ap = argparse.ArgumentParser(
        prog="python -m cfutures.worker",
        description="Serve Python functions as cfutures tasks to a cf-broker (cf/1).",
        epilog=USAGE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("specs", nargs="+", metavar="SPEC", help="functions to serve")
    ap.add_argument("--broker", default="tcp://127.0.0.1:5556",
                    help="the broker's worker endpoint (default %(default)s)")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--threads", type=int, help="tasks run at once in threads (default 1)")
    mode.add_argument("--procs", type=int,
                      help="run N worker processes, one task each at a time (CPU-bound "
                           "Python functions)")
    ap.add_argument("--prefetch", type=int, default=0,
                    help="tasks accepted beyond the running ones (default 0)")
    ap.add_argument("--heartbeat-ms", type=int, default=1000,
                    help="heartbeat interval in ms (default %(default)s)")
    ap.add_argument("--liveness", type=int, default=3,
                    help="silent broker intervals before it counts as lost (default "
                         "%(default)s)")
    ap.add_argument("--broker-key", help="the broker's public key file (cf-keygen)")
    ap.add_argument("--key", help="this worker's secret key file (cf-keygen)")
    ap.add_argument("--path", action="append", default=[], metavar="DIR",
                    help="add DIR to the module search path (repeatable)")
    ap.add_argument("--verbose", action="store_true", help="log debug messages too")
    args = ap.parse_args(argv)
    for name in ("threads", "procs"):
        value = getattr(args, name)
        if value is not None and value < 1:
            ap.error(f"--{name} must be a positive number")
    if args.prefetch < 0 or args.heartbeat_ms < 1 or args.liveness < 1:
        ap.error("--prefetch must be >= 0, --heartbeat-ms and --liveness positive")
    if (args.broker_key is None) != (args.key is None):
        ap.error("--broker-key and --key go together")
    return args


def _fail(message):
    print(f"cfutures.worker: {message}", file=sys.stderr, flush=True)
    return 1


def _make_worker(args, functions, threads, kill_on_stop=False):
    return Worker(functions, args.broker, threads=threads, prefetch=args.prefetch,
                  heartbeat_ms=args.heartbeat_ms, liveness=args.liveness,
                  curve_broker_key=args.broker_key, curve_key=args.key,
                  kill_on_stop=kill_on_stop)


def _serve_threads(args, functions):
    try:
        worker = _make_worker(args, functions, args.threads or 1)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        return _fail(str(e))
    signals = {"count": 0}

    def on_signal(signum, frame):
        signals["count"] += 1
        worker.stop(now=signals["count"] > 1)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    #  The ready line once the socket is up and the loop runs: serve() runs
    #  here, so a helper thread waits for it.
    import threading

    def announce():
        if worker.started.wait(30):
            print(f"ready worker={worker.identity} threads={worker.threads}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    try:
        return worker.serve()
    except AuthError as e:
        return _fail(str(e))


def _serve_procs(args, functions):
    """The supervisor: forks args.procs single-threaded workers (before any
    zmq context exists here), replaces those that die, forwards SIGTERM."""
    try:
        #  The key files, checked once here (each process reads them again).
        _keys.load_client_keys(args.broker_key, args.key)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        return _fail(str(e))
    ready_r, ready_w = os.pipe()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    os.set_blocking(ready_r, False)
    state = {"signals": 0}

    def on_signal(signum, frame):
        state["signals"] += 1

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.set_wakeup_fd(wake_w)

    children = {}           # pid -> started at

    def spawn():
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                signal.set_wakeup_fd(-1)
                for fd in (wake_r, wake_w, ready_r):
                    os.close(fd)
                worker = _make_worker(args, functions, 1, kill_on_stop=True)
                got = {"count": 0}

                def child_signal(signum, frame):
                    got["count"] += 1
                    worker.stop(now=got["count"] > 1)

                signal.signal(signal.SIGTERM, child_signal)
                signal.signal(signal.SIGINT, signal.SIG_IGN)   # the supervisor decides
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                import threading

                def report():
                    if worker.started.wait(START_WAIT_S):
                        os.write(ready_w, b"r")

                threading.Thread(target=report, daemon=True).start()
                code = worker.serve()
                if code == EXIT_STOPPED and worker.ctx is not None:
                    #  os._exit below would drop the Interrupted RESULT and
                    #  the DISCONNECT still in zmq's queue: let them leave
                    #  (its sockets are closed, with their linger).
                    worker.ctx.term()
            except AuthError as e:
                _fail(str(e))
                code = EXIT_REFUSED
            except BaseException as e:
                _fail(f"worker process {os.getpid()}: {e}")
                code = 1
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        children[pid] = time.monotonic()

    for _ in range(args.procs):
        spawn()
    os.close(ready_w)
    ready_w = -1

    #  Wait for every first process to report, or to fail.
    reported = 0
    deadline = time.monotonic() + START_WAIT_S
    status = 0
    while reported < args.procs:
        left = deadline - time.monotonic()
        if left <= 0 or state["signals"]:
            status = 1 if left <= 0 else 0
            break
        readable, _, _ = select.select([ready_r, wake_r], [], [], left)
        if ready_r in readable:
            try:
                reported += len(os.read(ready_r, 64))
            except BlockingIOError:
                pass
        _drain(wake_r)
        pid, code = _reap_one()
        if pid:
            children.pop(pid, None)
            _fail(f"a worker process exited during startup (status {code})")
            status = 1
            break
    if status == 0 and not state["signals"]:
        print(f"ready procs={args.procs}", flush=True)
    else:
        state["signals"] = max(state["signals"], 1)

    backoff = BACKOFF_MIN_S
    respawn_at = []         # monotonic times of replacements due
    refused = False
    forwarded = 0
    while children or (respawn_at and not state["signals"]):
        if state["signals"] > forwarded:
            #  First signal: graceful stop of every process; second: at once.
            for pid in children:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            forwarded = state["signals"]
            respawn_at.clear()
        timeout = None
        if respawn_at:
            timeout = max(0.0, min(respawn_at) - time.monotonic())
        select.select([wake_r], [], [], timeout)
        _drain(wake_r)
        while True:
            pid, code = _reap_one()
            if not pid:
                break
            started = children.pop(pid, None)
            if started is None:
                continue
            if code == EXIT_REFUSED:
                refused = True
            if state["signals"] or refused:
                continue
            if code == EXIT_STOPPED:
                #  It ended a stopped task that outran its grace: at once.
                logging.getLogger("cfutures.worker").info(
                    "worker process %d killed a stopped task: replacing it", pid)
                respawn_at.append(time.monotonic())
                continue
            logging.getLogger("cfutures.worker").warning(
                "worker process %d exited (status %s): replacing it", pid, code)
            if time.monotonic() - started < QUICK_EXIT_S:
                backoff = min(backoff * 2, BACKOFF_MAX_S)
            else:
                backoff = BACKOFF_MIN_S
            respawn_at.append(time.monotonic() + backoff)
        now = time.monotonic()
        due = [t for t in respawn_at if t <= now]
        if due and not state["signals"] and not refused:
            respawn_at = [t for t in respawn_at if t > now]
            for _ in due:
                spawn()
    os.close(ready_r)
    if refused:
        return 1
    return status if status else (0 if forwarded <= 1 else 1)


def _drain(fd):
    try:
        while os.read(fd, 4096):
            pass
    except BlockingIOError:
        pass


def _reap_one():
    """(pid, exit status or -signal) of one exited child, or (0, None)."""
    try:
        pid, status = os.waitpid(-1, os.WNOHANG)
    except ChildProcessError:
        return 0, None
    if pid == 0:
        return 0, None
    if os.WIFSIGNALED(status):
        return pid, -os.WTERMSIG(status)
    return pid, os.WEXITSTATUS(status)


def main(argv=None):
    args = _parse(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname).1s: %(name)s: %(message)s",
                        datefmt="%H:%M:%S", stream=sys.stderr)
    for path in reversed(args.path):
        sys.path.insert(0, os.path.abspath(path))
    functions = {}
    for spec in args.specs:
        try:
            found = load(spec)
        except (ImportError, ValueError) as e:
            return _fail(str(e))
        except Exception as e:              # the module itself failed to import
            return _fail(f"{spec!r}: {type(e).__name__}: {e}")
        for name, fn in found.items():
            if name in functions and functions[name] is not fn:
                return _fail(f"two functions are served as {name!r}")
            functions[name] = fn
    if args.procs:
        return _serve_procs(args, functions)
    return _serve_threads(args, functions)


if __name__ == "__main__":
    sys.exit(main())
