"""The worker side of cf/1 in Python: serves Python functions to a
cf-broker, for C and Python clients alike.

    python -m cfutures.worker --broker tcp://127.0.0.1:5556 mytasks:resize mytasks:score

or, from Python::

    cfutures.worker.Worker({"square": lambda x: x * x}, "tcp://127.0.0.1:5556").serve()

Design note. One actor (the thread that calls serve(), the main thread
under ``python -m``) owns the DEALER socket, the credit, the heartbeats and
the broker's boot id; a ThreadPoolExecutor of `threads` threads runs the
tasks. Tasks wait in the actor's own queue until a thread is free, so what
has not started is always the actor's to hand back; a thread that finishes
a task appends its RESULT item to a deque and wakes the actor through a
pipe the actor polls beside its socket, so a burst of finished tasks costs
one wakeup and becomes one RESULT batch. Arguments are decoded and results
encoded on the task's thread, not the actor's. Heartbeats come from the
actor, so a task computing for minutes never makes the worker look dead.

Feature BEGUN (docs/protocol.md, "CANCEL, STARTED"): READY says the
worker has it, so the broker hears when a task's function begins and may
ask to cancel a task held here. The actor's queue is the local queue: the
actor alone takes tasks from it (_dispatch, only when a thread is free) and
cancels from it (_on_cancel), so each task is either cancelled or handed
to a thread, never both, with no lock needed. A task handed to a thread
counts as begun for CANCEL (it is answered STARTED: nothing stops it any
more, and its function begins as soon as the thread picks it up). The
unasked STARTED follows the function's real begin: the thread notes it in
`begun` (id and time, under lock), and the actor sends every id noted
there in one STARTED once the oldest has waited BEGUN_HOLD_S; a task that
finishes sooner drops its id, as its RESULT says it began, so tasks
shorter than that cost no STARTED. While a task it handed over is not yet
announced, the actor sleeps at most until that is due, so no begin needs
to wake it. --procs processes are Workers of one thread each, so the same
holds for each process.

Credit (docs/protocol.md, section 6): READY announces the free slots,
threads + prefetch minus the tasks in hand (received, not yet answered);
each RESULT item returns one. So a READY repeated to a broker that still
knows us, or sent to a restarted one while old tasks finish, never grants
more than the worker can take: every task still in hand returns its slot
with its result, known to the broker or not.

The worker announces itself (READY) once per sign that the broker does not
know it: a new boot id, ERROR "unknown worker", the broker speaking again
after a DISCONNECT or a silence, a re-made connection (a new routing id).

Stopping (stop(), SIGTERM under ``python -m``): no task is started any
more; running ones finish and their results go out; then DISCONNECT, which
makes the broker requeue every task it gave us that we did not answer (the
queued ones and any that arrive meanwhile) without using a retry. A second
stop(now=True) (a second signal) sends DISCONNECT at once: the running
tasks are requeued too.

Routing by function (issue 10): READY carries the names of the functions
this worker serves (its 6th field, _ready_body()), so a broker that routes
by function sends it only tasks of those. cf.chunk, which every worker
runs itself, is listed first, as cf-worker lists it: the broker routes by
the task's name, so a chunk may reach a worker that lacks the function it
carries (the chunk then fails with UnknownFunction). A broker older than
that refuses the 6-field READY as malformed (ERROR "malformed message"):
the worker then announces itself again with the 5 fields of before and
gets tasks of any function, as every worker did (a task of a function it
lacks fails with UnknownFunction); a broker that restarts (new boot id)
is offered the list again. The functions are fixed when the Worker is
made, so it never sends FUNCTIONS (the command that replaces the list of
a worker that loads functions later).

--procs N (in __main__) runs N single-threaded workers in forked processes,
each with its own connection, as cf-worker --procs does: a process that
dies takes only its own task with it, which the broker retries elsewhere.

Feature STOP (docs/protocol.md, "STOP"): READY says the worker takes STOP.
A task still in the actor's queue is taken out and answered cancelled, as
for CANCEL; a running one has its stop flag set (its Call, cfutures._task),
which the task reads with cfutures.stop_requested(). The rule is C's: once
that said True to the task, its outcome is "Interrupted" whatever it
returns or raises; a chunk is Interrupted as a whole, its later inputs not
run. On threads that is all (a thread cannot be killed): a task that never
looks runs to its end and keeps its outcome, and grace_ms means nothing.
A --procs process (kill_on_stop) also arms the grace: a task still running
grace_ms after the STOP is answered Interrupted ("... its worker process
was killed"), the process says DISCONNECT (handing back what it queued)
and exits with status 78 (EXIT_STOPPED), which kills the task; the
supervisor replaces it at once.

PROGRESS: a task's reports (cfutures.report_progress) land in its Call
under the lock, latest wins (done and total replaced, the partial value
when one comes). A Call that becomes dirty joins `reporting` and wakes the
actor once; the actor sends at most one item per task per REPORT_INTERVAL_S
(the first at once), all due items in one PROGRESS per turn, after STARTED
and before RESULT, and an ended task's last report at once, so it precedes
that task's RESULT. So a task reporting a million times a second costs
about 20 items a second, and one wakeup per item at most.
"""

import collections
import logging
import math
import os
import socket as _socket
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import msgpack
import zmq
from zmq.utils.monitor import recv_monitor_message

from .. import _actor, _keys, _proto, _task
from ..errors import AuthError, TaskError
from ..registry import load, registered, task

__all__ = ["Worker", "task", "load", "registered"]

log = logging.getLogger("cfutures.worker")

#  A result larger than this cannot ride in a RESULT body with its
#  envelope: it becomes an error instead (as cf-worker's S_MAX_RESULT).
MAX_RESULT = _proto.MAX_FRAME - 64 * 1024
#  A RESULT message carries results up to about this many bytes.
BATCH_BYTES = 1 << 20
#  Tasks queued beyond threads + prefetch + this (a broker ignoring our
#  credit) are handed back.
QUEUE_SLACK = 64
#  The shortest heartbeat interval a broker may impose.
MIN_IVL_S = 0.010
#  A task's begin is announced (STARTED) about this long after it, unless
#  its RESULT goes first (cf-worker's S_BEGUN_HOLD_MS).
BEGUN_HOLD_S = 0.010
#  "broker refused a message" is logged at most this often.
REFUSAL_LOG_EVERY_S = 10.0
#  A --procs process whose stopped task outran its grace exits with this
#  status (as cf-worker's processes): its supervisor replaces it at once.
EXIT_STOPPED = 78
HANDSHAKE_DROPS_MAX = 3

_MONITOR_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                   | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)


def _close_fds(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _error_item(task_id, etype, message, function, host, pid):
    return [task_id, _proto.ERROR,
            [_proto.text_clip(etype or "Error") or "Error", _proto.text_clip(message),
             _proto.text_clip(function, _proto.MAX_NAME), _proto.text_clip(host), pid]]


def _describe(e):
    """(type, message) of an exception raised by a task."""
    if isinstance(e, TaskError):
        return e.type, e.message
    return type(e).__name__, str(e)


def _type_name(value):
    return {bool: "bool", int: "int", float: "float", str: "str", bytes: "bytes",
            list: "array", dict: "map", type(None): "nil"}.get(type(value), type(value).__name__)


class Worker:
    """Serves `functions` ({name: callable}) to the broker at `broker` (its
    worker endpoint) until stop() is called.

    threads: tasks run at once. prefetch: tasks accepted beyond that,
    queued here (0: the broker sends a task only to a free thread).
    heartbeat_ms, liveness: how often we speak when idle and how many
    silent broker intervals make it lost. curve_broker_key, curve_key: the
    broker's public key file and this worker's secret key file (cf-keygen).
    host: the name reported in READY and in errors. kill_on_stop: a task
    still running grace_ms after a STOP ends serve() (returning
    EXIT_STOPPED after answering it Interrupted and saying DISCONNECT),
    for a process that then exits (``--procs``); otherwise STOP is
    cooperative only (see the design note).
    """

    def __init__(self, functions, broker="tcp://127.0.0.1:5556", *, threads=1, prefetch=0,
                 heartbeat_ms=1000, liveness=3, curve_broker_key=None, curve_key=None,
                 host=None, context=None, kill_on_stop=False):
        if type(threads) is not int or threads < 1:
            raise ValueError("threads is a positive int")
        if type(prefetch) is not int or prefetch < 0:
            raise ValueError("prefetch is an int >= 0")
        if type(heartbeat_ms) is not int or heartbeat_ms < 1:
            raise ValueError("heartbeat_ms is a positive int")
        if type(liveness) is not int or liveness < 1:
            raise ValueError("liveness is a positive int")
        self.functions = {}
        for name, fn in dict(functions).items():
            _proto.check_function_name(name)
            if not callable(fn):
                raise TypeError(f"the function served as {name!r} is not callable")
            self.functions[name] = fn
        self.endpoint = broker
        self.threads = threads
        self.prefetch = prefetch
        self.ivl_s = heartbeat_ms / 1000.0
        self.liveness = liveness
        self.curve = _keys.load_client_keys(curve_broker_key, curve_key)
        self.host = _proto.text_clip(host if host is not None else _socket.gethostname())
        self.pid = os.getpid()
        self.ctx = context             # zmq.Context.instance() at serve() when None
        self.identity = f"py-{self.host}-{self.pid}"

        #  Shared with task threads and stop(), under lock.
        self.lock = threading.Lock()
        self.done = collections.deque()     # RESULT items of finished tasks
        self.begun = {}                     # id -> when its function began, not yet told
        self.reporting = set()              # Calls with a report not sent yet
        self.stop_asked = 0                 # 1 graceful, 2 now
        self.signalled = True
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        #  Closed with the Worker, not at the end of serve(): stop() may come
        #  later (a signal), and must never write to a reused descriptor.
        weakref.finalize(self, _close_fds, self.wake_r, self.wake_w)

        #  Actor only.
        self.queue = collections.deque()    # (id, function name, args) waiting for a thread
        self.running = 0
        self.in_threads = set()             # ids handed to a thread, result not collected
        self.calls = {}                     # id -> Call of each task in a thread
        self.kill_on_stop = kill_on_stop
        self.kill_at = {}                   # id -> (when its grace ends, grace_ms)
        self.unsent_progress = {}           # id -> PROGRESS item not yet taken by zmq
        self.unannounced = set()            # of those, the ones no STARTED was sent for
        self.in_hand = 0                    # received and not yet answered
        self.started_answers = []           # ids answering a CANCEL with STARTED
        self.unsent = []                    # RESULT items not yet taken by zmq
        self.stopping = False
        self.declined = 0
        self.announce = True
        #  READY lists the functions (issue 10) unless the broker refused
        #  that form; unconfirmed: sent, and no task came since.
        self.list_functions = len(self.functions) < _proto.MAX_FUNCTIONS
        self.functions_unconfirmed = False
        #  After that refusal, an "unknown worker" answering a heartbeat
        #  sent before it is no new sign (the READY that follows the
        #  refusal answers it): ignored until then.
        self.unknown_is_old_until = 0.0
        if not self.list_functions:
            log.warning("%d functions and cf.chunk are more than a READY lists (%d): "
                        "announcing every function (the broker may send tasks of functions "
                        "this worker lacks)", len(self.functions), _proto.MAX_FUNCTIONS)
        self.boot = 0
        self.broker_ivl_s = 0.0
        self.last_heard = 0.0
        self.next_heartbeat = 0.0
        self.idle_since = None              # stopping with nothing running, since
        self.lost = False
        self.transport_up = False
        self.ever_connected = False
        self.blocked = False
        self.handshake_drops = 0
        self.refused = None
        self.malformed = 0
        self.started = threading.Event()    # serve() is connected and looping
        self.killed = False                 # a stopped task outran its grace
        self.refusal_logged_at = -REFUSAL_LOG_EVERY_S
        self.sent_progress = False          # some PROGRESS went out
        self.pool = None
        self.sock = None
        self.monitor = None

    # -----------------------------------------------------------------
    #  Any thread

    def stop(self, now=False):
        """Asks serve() to return: gracefully (running tasks finish first),
        or now. Safe from any thread and from a signal handler."""
        self.stop_asked = max(self.stop_asked, 2 if now else 1)
        self._wake()

    def _wake(self):
        try:
            os.write(self.wake_w, b"\0")
        except OSError:
            pass                # full (the actor is awake anyway) or closed

    # -----------------------------------------------------------------
    #  Task threads

    def _on_report(self, call):
        """A Call's first report since its last was sent (under lock)."""
        self.reporting.add(call)
        if not self.signalled:
            self.signalled = True
            self._wake()

    def _execute(self, call, fn, args):
        task_id, name = call.id, call.function
        with self.lock:
            self.begun[task_id] = time.monotonic()
        token = _task._current.set(call)
        try:
            item = self._call(task_id, name, fn, args)
        except BaseException as e:          # never lose a task's answer
            etype, message = _describe(e)
            item = _error_item(task_id, etype, message, name, self.host, self.pid)
        finally:
            _task._current.reset(token)
        if call.stop_seen:
            #  The cooperative rule: it saw its stop flag, so whatever it
            #  returned it was stopped.
            item = _error_item(task_id, _proto.INTERRUPTED,
                               f"{name}() was asked to stop and returned early",
                               name, self.host, self.pid)
        with self.lock:
            #  Its RESULT says it began: no STARTED needed any more (and
            #  none may follow the RESULT). Its last report goes at once,
            #  ahead of the RESULT (_flush).
            self.begun.pop(task_id, None)
            call.ended = True
            self.done.append(item)
            wake = not self.signalled
            self.signalled = True
        if wake:
            self._wake()

    def _decode_args(self, name, args):
        try:
            values = _proto.unpack_value(args)
        except _proto.BadValue as e:
            raise TaskError("ProtocolError", f"{name}(): the arguments are not one msgpack "
                            f"value ({e})") from None
        if type(values) is not list:
            raise TaskError("ProtocolError", f"{name}(): the arguments are not one msgpack "
                            f"array (got {_type_name(values)})")
        return values

    def _call(self, task_id, name, fn, args):
        if name == _proto.CHUNK_FUNCTION:
            return [task_id, _proto.OK, self._run_chunk(self._decode_args(name, args))]
        values = self._decode_args(name, args)
        try:
            value = fn(*values)
        except BaseException as e:
            etype, message = _describe(e)
            return _error_item(task_id, etype, message, name, self.host, self.pid)
        try:
            data = _proto.pack(value)
        except Exception as e:
            return _error_item(task_id, "TypeError", f"the result of {name}() cannot be "
                               f"encoded as msgpack: {e}", name, self.host, self.pid)
        if len(data) > MAX_RESULT:
            return _error_item(task_id, "ProtocolError", f"the result of {name}() is "
                               f"{len(data)} bytes, over the {MAX_RESULT}-byte limit",
                               name, self.host, self.pid)
        return [task_id, _proto.OK, data]

    def _run_chunk(self, values):
        """cf.chunk: [function, [args1, args2, ...]] -> one [0, value] or
        [1, type, message, host, pid] per input (docs/protocol.md)."""
        if len(values) != 2 or not isinstance(values[0], str) or type(values[1]) is not list:
            raise TaskError("TypeError", "cf.chunk() takes [function, [args, ...]]")
        name, lists = values
        fn = self.functions.get(name)
        if fn is None:
            raise TaskError("UnknownFunction", f"no task named '{name[:255]}' is registered "
                            f"on host {self.host}")
        packer = msgpack.Packer(use_bin_type=True)
        parts = [packer.pack_array_header(len(lists))]
        size = 5
        call = _task._current.get()
        for i, item_args in enumerate(lists):
            if call is not None and call.stop_seen:
                #  Seen by an input: the chunk is Interrupted, the rest not run.
                raise TaskError(_proto.INTERRUPTED, f"cf.chunk of {name}() was asked to stop "
                                f"and returned early (after {i} of {len(lists)} inputs)")
            if type(item_args) is not list:
                part = packer.pack([1, "TypeError", f"{name}() input {i} of the chunk: "
                                    f"arguments must be an array, got "
                                    f"{_type_name(item_args)}", self.host, self.pid])
            else:
                try:
                    part = packer.pack([0, fn(*item_args)])
                except BaseException as e:
                    if isinstance(e, (TypeError, ValueError, OverflowError)) and \
                            "msgpack" in type(e).__module__:
                        etype, message = "TypeError", f"the result cannot be encoded: {e}"
                    else:
                        etype, message = _describe(e)
                    part = packer.pack([1, _proto.text_clip(etype) or "Error",
                                        _proto.text_clip(message), self.host, self.pid])
            size += len(part)
            if size > MAX_RESULT:
                raise TaskError("ProtocolError", f"the results of a chunk of {name}() exceed "
                                f"the {MAX_RESULT}-byte limit")
            parts.append(part)
        return b"".join(parts)

    # -----------------------------------------------------------------
    #  The actor

    def serve(self):
        """Serves until stop(). Returns 0 after a graceful stop, 1 after
        stop(now=True); raises AuthError when the broker refuses this
        worker (its CURVE key, or its lack of one)."""
        self.pool = ThreadPoolExecutor(max_workers=self.threads,
                                       thread_name_prefix="cfutures-task")
        try:
            self._open_socket()
            self.started.set()
            return self._loop()
        finally:
            self.pool.shutdown(wait=self.stop_asked < 2 and self.refused is None
                               and not self.killed)
            self._close_socket()
            if self.malformed:
                log.debug("%d malformed messages from the broker dropped", self.malformed)

    def _open_socket(self):
        if self.ctx is None:
            #  Not before: a --procs supervisor makes Workers before it forks.
            self.ctx = zmq.Context.instance()
        sock = self.ctx.socket(zmq.DEALER)
        try:
            _proto.setup_socket(sock)
            if self.curve is not None:
                _keys.apply_client(sock, *self.curve)
            self.monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.connect(self.endpoint)
        except Exception:
            sock.close(linger=0)
            raise
        self.sock = sock
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.poller.register(self.wake_r, zmq.POLLIN)
        self.last_heard = time.monotonic()
        self.next_heartbeat = self.last_heard + self._send_ivl()

    def _close_socket(self):
        if self.sock is None:
            return
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.monitor = None
        self.sock.close()
        self.sock = None

    def _loop(self):
        while True:
            if self.stop_asked and not self.stopping:
                self._begin_stop()
            self._collect()
            if self.refused is not None:
                raise AuthError(self.refused)
            if self.stop_asked >= 2:
                self._send_disconnect("worker stopped")
                return 1
            if self.kill_at and self._grace_over():
                return EXIT_STOPPED
            if self.stopping and self.running == 0:
                now = time.monotonic()
                if self.idle_since is None:
                    self.idle_since = now
                if self.unsent and now - self.idle_since > max(1.0, self._expiry()):
                    log.warning("%d results not taken by the broker: giving up",
                                len(self.unsent))
                    self.unsent.clear()
                if not self.unsent:
                    self._send_disconnect("worker stopping")
                    if self.declined:
                        log.info("%d tasks not taken, handed back by DISCONNECT",
                                 self.declined)
                    return 0
            self._dispatch()
            self._flush()
            #  Not to a broker judged lost (silent, or it said DISCONNECT):
            #  its next word sets announce again, and one READY answers both.
            if self.announce and not self.stopping and not self.blocked and not self.lost:
                body = self._ready_body()
                if self._send(_proto.READY, body):
                    self.announce = False
                    self.functions_unconfirmed = len(body) > 5
            self._run_timers()
            timeout = self._poll_timeout()
            with self.lock:
                if self.done or self.stop_asked and not self.stopping:
                    timeout = 0
                else:
                    self.signalled = False
                if self.reporting:
                    due = min(c.next_send for c in self.reporting)
                    if any(c.ended for c in self.reporting):
                        due = 0
                    timeout = min(timeout, max(0, int(math.ceil((due - time.monotonic())
                                                                * 1000))))
                if self.unannounced:
                    #  Due BEGUN_HOLD_S after the oldest begin noted, or
                    #  after now for tasks not begun yet.
                    now = time.monotonic()
                    due = next(iter(self.begun.values()), now) + BEGUN_HOLD_S
                    timeout = min(timeout, max(0, int(math.ceil((due - now) * 1000))))
            events, sock_events = _actor.sleep(self.poller, self.wake_r, self.sock, timeout)
            if sock_events & zmq.POLLOUT:
                self.blocked = False
            if sock_events & zmq.POLLIN:
                self._read()
            if self.monitor in events:
                self._on_monitor()

    def _ready_body(self):
        """READY [credit, host, pid, threads, features, functions]: credit
        is the free slots now (see the design note), features BEGUN,
        functions cf.chunk and the names served (sorted), left out for a
        broker that refused them (see the design note)."""
        credit = max(0, self.threads + self.prefetch - self.in_hand)
        functions = None
        if self.list_functions:
            functions = [_proto.CHUNK_FUNCTION] + sorted(self.functions)
        return _proto.ready_body(min(credit, _proto.UINT32_MAX), self.host, self.pid,
                                 self.threads, _proto.FEATURE_BEGUN | _proto.FEATURE_STOP,
                                 functions)

    def _send(self, command, body):
        if self.blocked:
            return False
        if _proto.send(self.sock, command, body):
            self.next_heartbeat = time.monotonic() + self._send_ivl()
            return True
        self.blocked = True
        self.poller.modify(self.sock, zmq.POLLIN | zmq.POLLOUT)
        return False

    def _send_disconnect(self, reason):
        try:
            _proto.send(self.sock, _proto.DISCONNECT, [reason])
        except zmq.ZMQError:
            pass

    def _begin_stop(self):
        self.stopping = True
        dropped = len(self.queue)
        self.queue.clear()
        self.in_hand -= dropped
        self.declined += dropped
        log.info("stopping: %d running, %d queued handed back", self.running, dropped)

    def _collect(self):
        """Moves finished tasks' results to the unsent list."""
        done = self.done
        while done:
            item = done.popleft()
            self.unsent.append(item)
            self.in_threads.discard(item[0])
            self.unannounced.discard(item[0])
            self.calls.pop(item[0], None)
            self.kill_at.pop(item[0], None)
            self.running -= 1

    def _dispatch(self):
        #  From here a CANCEL cannot find the task in the queue: it has begun
        #  (see the design note).
        while self.queue and self.running < self.threads and not self.stopping:
            task_id, name, args = self.queue.popleft()
            fn = self.functions.get(name)
            self.running += 1
            self.in_threads.add(task_id)
            self.unannounced.add(task_id)
            call = _task.Call(task_id, name, self.lock, self._on_report)
            self.calls[task_id] = call
            self.pool.submit(self._execute, call, fn, args)

    def _announce_begun(self):
        """Tells the broker which tasks began (once the oldest begin not
        told has waited BEGUN_HOLD_S, or with answers), and which ones a
        CANCEL asked for too late (STARTED). A refused send loses the
        unasked news, not the task: the broker asks again with CANCEL, and
        the RESULT says it too; the answers to a CANCEL are kept for the
        next try."""
        if not self.unannounced and not self.started_answers:
            return
        begun = []
        with self.lock:
            if self.begun and (self.started_answers or next(iter(self.begun.values()))
                               <= time.monotonic() - BEGUN_HOLD_S):
                begun = list(self.begun)
                self.begun.clear()
        for task_id in begun:
            self.unannounced.discard(task_id)
        ids = self.started_answers + begun
        sent = 0
        while sent < len(ids) and not self.blocked:
            if not self._send(_proto.STARTED, ids[sent:sent + _proto.MAX_BATCH]):
                break
            sent += _proto.MAX_BATCH
        del self.started_answers[:sent]

    def _take_reports(self):
        """The reports due now (latest wins): every ended task's, and those
        of running tasks whose last one went REPORT_INTERVAL_S ago, into
        unsent_progress (one item per task: a newer one replaces an unsent
        older one, keeping its partial value unless it brings one)."""
        now = time.monotonic()
        with self.lock:
            if not self.reporting:
                return
            due = [c for c in self.reporting if c.ended or c.next_send <= now]
            for call in due:
                self.reporting.discard(call)
                call.dirty = False
                call.seq = min(call.seq + 1, _proto.UINT32_MAX)
                call.next_send = now + _task.REPORT_INTERVAL_S
                partial, call.partial = call.partial, None
                old = self.unsent_progress.get(call.id)
                if partial is None and old is not None:
                    partial = old[4]
                self.unsent_progress[call.id] = _proto.progress_item(
                    call.id, call.seq, call.done, call.total, partial)

    def _send_reports(self):
        while self.unsent_progress and not self.blocked:
            items = []
            size = 0
            for item in self.unsent_progress.values():
                item_size = 48 + (len(item[4]) if item[4] is not None else 0)
                if items and (size + item_size > BATCH_BYTES
                              or len(items) == _proto.MAX_BATCH):
                    break
                items.append(item)
                size += item_size
            if not self._send(_proto.PROGRESS, items):
                return
            self.sent_progress = True
            for item in items:
                del self.unsent_progress[item[0]]

    def _flush(self):
        """Sends STARTED for tasks that began, then the reports due, then
        the results of finished tasks, in RESULT batches (so a task's last
        report precedes its result)."""
        if not self.blocked:
            self._announce_begun()
        self._take_reports()
        self._send_reports()
        while self.unsent and not self.blocked:
            size = 0
            n = 0
            for item in self.unsent:
                item_size = len(item[2]) if item[1] == _proto.OK else 256
                if n and size + item_size > BATCH_BYTES:
                    break
                size += item_size
                n += 1
            if not self._send(_proto.RESULT, self.unsent[:n]):
                return
            del self.unsent[:n]
            self.in_hand -= n

    # -----------------------------------------------------------------
    #  Receiving

    def _read(self):
        now = time.monotonic()
        for _ in range(256):
            try:
                parts = _proto.recv(self.sock)
                if parts is None:
                    return
                command, fields = _proto.decode(parts)
            except _proto.Malformed as e:
                self.malformed += 1
                log.debug("malformed message from the broker dropped: %s", e)
                self._contact(now)
                continue
            self._contact(now)
            if command == _proto.TASK:
                self._on_tasks(fields)
            elif command == _proto.CANCEL:
                self._on_cancel(fields)
            elif command == _proto.STOP:
                self._on_stop(fields, now)
            elif command == _proto.HEARTBEAT:
                boot, ivl_ms = fields
                if boot:
                    if self.boot and boot != self.boot:
                        log.info("broker restarted (new boot id): announcing again")
                        self.announce = True
                        #  Perhaps a newer one: offer the function list again.
                        self.list_functions = len(self.functions) < _proto.MAX_FUNCTIONS
                    self.boot = boot
                if ivl_ms:
                    self.broker_ivl_s = max(ivl_ms / 1000.0, MIN_IVL_S)
            elif command == _proto.ERROR_CMD:
                ref, text = fields
                if text == _proto.UNKNOWN_WORKER:
                    if now < self.unknown_is_old_until:
                        log.debug("'unknown worker' answering a heartbeat before the READY "
                                  "without the function list: ignored")
                        continue
                    log.info("broker does not know this worker: announcing again")
                    self.announce = True
                elif ref == 0 and text.startswith(_proto.MALFORMED_TEXT) \
                        and self.functions_unconfirmed:
                    #  The READY with the function list, refused by a broker
                    #  that predates it (issue 10).
                    log.warning("broker %s refused READY with the function list (it does "
                                "not route by function): announcing every function",
                                self.endpoint)
                    self.list_functions = False
                    self.functions_unconfirmed = False
                    self.announce = True
                    self.unknown_is_old_until = now + self._send_ivl()
                elif text in (_proto.KEY_REVOKED, _proto.NOT_ALLOWED):
                    self.refused = f"the broker at {self.endpoint} refused this worker: {text}"
                elif now >= self.refusal_logged_at + REFUSAL_LOG_EVERY_S:
                    #  Rate-limited: a broker older than PROGRESS refuses
                    #  each report (the tasks still run).
                    self.refusal_logged_at = now
                    log.warning("broker refused a message: %s%s", text[:200],
                                " (a broker older than PROGRESS refuses task reports)"
                                if self.sent_progress and
                                text.startswith(_proto.MALFORMED_TEXT) else "")
            elif command == _proto.DISCONNECT:
                log.warning("broker %s said DISCONNECT: waiting for it", self.endpoint)
                self.lost = True
                #  Whoever answers next has forgotten us.
                self.announce = True
            else:
                self.malformed += 1
                log.debug("unexpected %s from the broker ignored", command.decode())

    def _contact(self, now):
        self.last_heard = now
        if self.lost:
            log.info("broker %s is back: announcing again", self.endpoint)
            self.lost = False
            self.announce = True

    def _on_tasks(self, tasks):
        self.functions_unconfirmed = False      # the broker took our READY
        limit = self.threads + self.prefetch + QUEUE_SLACK
        for task_id, name, args, _timeout_ms in tasks:
            if self.stopping:
                #  Not answered: the DISCONNECT at the end hands it back
                #  (answering BUSY would return the slot and bring it back).
                self.declined += 1
                continue
            self.in_hand += 1
            if name != _proto.CHUNK_FUNCTION and name not in self.functions:
                self.unsent.append(_error_item(
                    task_id, "UnknownFunction",
                    f"no task named '{name}' is registered on host {self.host}",
                    name, self.host, self.pid))
            elif len(self.queue) + self.running >= limit:
                #  Past our credit: handed back unrun, without using a retry.
                self.unsent.append([task_id, _proto.BUSY])
            else:
                self.queue.append((task_id, name, args))

    def _on_cancel(self, ids):
        """CANCEL from the broker: a task still queued here is taken out and
        answered RESULT cancelled (it never runs); any other id is answered
        STARTED, as its function began (its RESULT follows, or went
        already). Only the actor takes tasks from the queue, so each task is
        either cancelled here or begun in _dispatch, never both."""
        wanted = dict.fromkeys(ids)         # in order, once each
        cancelled = set()
        if self.queue:
            kept = collections.deque()
            for entry in self.queue:
                if entry[0] in wanted:
                    cancelled.add(entry[0])
                    self.unsent.append([entry[0], _proto.CANCELLED])
                else:
                    kept.append(entry)
            self.queue = kept
        for task_id in wanted:
            if task_id in cancelled:
                continue
            #  Stopping, a task not in a thread was handed back (the
            #  DISCONNECT at the end says so) or is answered already.
            if not self.stopping or task_id in self.in_threads:
                self.started_answers.append(task_id)
        if cancelled:
            log.debug("%d queued tasks cancelled", len(cancelled))

    def _on_stop(self, items, now):
        """STOP from the broker: a task still queued here is cancelled (as
        for CANCEL); a running one has its stop flag set, and with
        kill_on_stop its grace armed (a second STOP may shorten it); any
        other id (finished, unknown) is ignored."""
        wanted = {}
        for task_id, grace_ms in items:
            wanted[task_id] = min(grace_ms, wanted.get(task_id, grace_ms))
        if self.queue:
            kept = collections.deque()
            for entry in self.queue:
                if entry[0] in wanted:
                    self.unsent.append([entry[0], _proto.CANCELLED])
                    del wanted[entry[0]]
                else:
                    kept.append(entry)
            self.queue = kept
        for task_id, grace_ms in wanted.items():
            call = self.calls.get(task_id)
            if call is None:
                continue
            call.stop = True
            log.debug("task %d (%s) asked to stop (grace %d ms)", task_id, call.function,
                      grace_ms)
            if self.kill_on_stop:
                at = (now + grace_ms / 1000.0, grace_ms)
                self.kill_at[task_id] = min(at, self.kill_at.get(task_id, at))

    def _grace_over(self):
        """kill_on_stop: when a stopped task still runs past its grace,
        answers it Interrupted, hands back the rest (DISCONNECT) and tells
        serve() to return EXIT_STOPPED (the process exits, killing it)."""
        now = time.monotonic()
        late = [i for i, (at, _) in self.kill_at.items() if at <= now and i in self.calls
                and not self.calls[i].ended]
        if not late:
            return False
        for task_id in late:
            call = self.calls[task_id]
            self.unsent.append(_error_item(
                task_id, _proto.INTERRUPTED,
                f"{call.function}() was asked to stop and did not return within its grace "
                f"of {self.kill_at[task_id][1]} ms: its worker process was killed (and "
                f"replaced); the task is not retried", call.function, self.host, self.pid))
        #  Its last reports first, then the RESULT; DISCONNECT hands back
        #  whatever else is held.
        self._flush()
        self._send_disconnect("a stopped task outran its grace")
        log.warning("a stopped task outran its grace: this worker process exits")
        self.killed = True
        return True

    def _on_monitor(self):
        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except Exception as e:
                log.debug("monitor message dropped: %s", e)
                continue
            kind, value = event.get("event"), event.get("value")
            if kind == zmq.EVENT_CONNECTED:
                self.transport_up = True
                if self.ever_connected:
                    #  The broker sees a new routing id: a new worker to it.
                    log.info("reconnected to %s: announcing again", self.endpoint)
                    self.announce = True
                self.ever_connected = True
            elif kind == zmq.EVENT_DISCONNECTED:
                self.transport_up = False
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_drops = 0
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                fp = _keys.fingerprint(self.curve[1]) if self.curve else "(none)"
                self.refused = (f"the broker at {self.endpoint} refused this worker's key "
                                f"{fp} (not on its worker list)")
            elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and \
                    value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
                self.refused = (f"the broker at {self.endpoint} does not use CURVE (drop "
                                f"--broker-key and --key)" if self.curve else
                                f"the broker at {self.endpoint} requires CURVE: give "
                                f"--broker-key and --key")
            elif self.curve and kind in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                                         zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
                self.handshake_drops += 1
                if self.handshake_drops >= HANDSHAKE_DROPS_MAX:
                    self.refused = (f"the broker at {self.endpoint} dropped "
                                    f"{self.handshake_drops} CURVE handshakes in a row: wrong "
                                    f"--broker-key, or the broker cannot authenticate workers")

    # -----------------------------------------------------------------
    #  Timers

    def _send_ivl(self):
        return min(self.ivl_s, self.broker_ivl_s) if self.broker_ivl_s else self.ivl_s

    def _expiry(self):
        #  The broker is judged on its own interval once it announced one.
        return self.liveness * (self.broker_ivl_s or self.ivl_s)

    def _run_timers(self):
        now = time.monotonic()
        if now >= self.next_heartbeat:
            #  Not while disconnected (zmq would queue them ahead of the
            #  READY a reconnection calls for), nor instead of a READY that
            #  can go; but to a broker judged lost, yes: its answer (a
            #  HEARTBEAT, and "unknown worker" if it restarted) is the word
            #  the READY waits for.
            if self.transport_up and (self.lost or not self.announce):
                self._send(_proto.HEARTBEAT, [0, 0])
            if now >= self.next_heartbeat:
                self.next_heartbeat = now + self._send_ivl()
        if not self.lost and now - self.last_heard > self._expiry():
            log.warning("broker %s silent: waiting for it", self.endpoint)
            self.lost = True

    def _poll_timeout(self):
        now = time.monotonic()
        deadline = self.next_heartbeat
        if self.kill_at:
            deadline = min(deadline, min(at for at, _ in self.kill_at.values()))
        if not self.lost:
            deadline = min(deadline, self.last_heard + self._expiry() + 0.001)
        if self.stopping and self.running == 0:
            #  Leave as soon as the results are out (or look again for the
            #  give-up check while the socket holds them back).
            deadline = min(deadline, now + (0.1 if self.unsent else 0))
        return max(0, int(math.ceil((deadline - now) * 1000)))
