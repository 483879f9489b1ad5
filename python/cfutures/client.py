"""cfutures.Executor: a concurrent.futures.Executor whose tasks run on a
cfutures cluster (a cf-broker and its cf-workers), over cf/1.

Design note. Two kinds of thread meet here, as in the C client
(lib/cf_client.c):

- Application threads call submit(), map(), Future.cancel(), shutdown().
  They never touch the socket. A submission packs its arguments, takes an
  id and appends the task to the inbox under one lock; only when the actor
  is not already awake (the "signalled" flag) does it write a byte to a
  pipe the actor polls, so a burst of submissions costs one wakeup.
- The client actor, one daemon thread per executor, owns the DEALER socket
  (and its monitor socket), the id map, the outbox and the BUSY-parked
  list. It batches the inbox into SUBMIT messages, reads replies and
  resolves the futures, sends heartbeats, notices a lost or restarted
  broker and resends what that broker may have forgotten.

The actor sleeps in zmq.Poller.poll() on three things at once: the socket,
the wake pipe and the monitor socket, with a timeout until its next
deadline (heartbeat, broker expiry, BUSY backoff). Nothing polls in a loop.

Futures are real concurrent.futures.Future objects (a subclass whose only
change is cancel(), which asks the broker), resolved on the actor thread:
done-callbacks run there. A callback may submit and cancel; it must not
block waiting for another future of the same executor (the actor that
would resolve it is the thread running the callback).

The broker may forget us: it restarted (its boot id changes), our
connection was re-made (the broker sees a new routing id), it judged us
lost, or it went silent and came back. Each sign puts every task that is
at the broker back in the outbox, once per sign (docs/protocol.md,
section 7): delivery is at-least-once, and a result that arrives for a task
already resolved is dropped because its id is no longer pending.

With several endpoints the client stays with one broker while it answers
and moves to the next one (resending everything pending there) when that
broker said DISCONNECT or stayed silent for `liveness` heartbeat intervals
while the client waited for it, or when no connection to it completed its
handshake within one interval while the client waits for a broker (its
constructor, or pending tasks).

No silent waits, as the C client (include/cfutures.h, connect_timeout_ms
and cf_executor_destroy). The constructor waits up to connect_timeout for
a first handshake with a broker and raises TimeoutError when none came.
shutdown(wait=True) waits for every task while the broker answers; once
the broker has been lost (or never heard) for `liveness` intervals it stops
waiting: tasks never sent are cancelled, tasks handed to the broker fail
with "BrokerLost" (they may or may not have run), and a warning says how
many. "Never heard" counts from the moment tasks wait for the broker, not
from the executor's creation: a broker says nothing to a client before its
first SUBMIT. While tasks wait, every WARN_EVERY_S a warning says so when
no broker answers, or when nothing started or finished meanwhile (with a
STATS first on a plaintext broker, to say when it has no workers; under
CURVE STATS is an admin key's, so the warning says less).

STOP (Future.stop, cf_future_stop): the request goes to the actor like a
cancel, never waiting: a task still here is cancelled, one at the broker
gets STOP [id, grace_ms] and its RESULT is the answer (cancelled when it
had not begun, "Interrupted" when it stopped or its process was killed,
its own outcome when it finished first or never looked). A task asked to
stop that a broker then forgot is not resubmitted: it fails with
"Interrupted", as in the C client.

PROGRESS: every task is submitted with flag PROGRESS (this client reads
PROGRESS), so the broker forwards the reports of tasks that make them.
The actor keeps the latest report per future (a report whose seq is not
above the last one kept, or that comes after the result, is dropped),
decodes its partial value (at most 64 KiB, checked by _proto) and calls the
future's progress callbacks, on this thread, as done-callbacks are.
"""

import collections
import concurrent.futures as cf
import itertools
import logging
import math
import os
import random
import threading
import time
import weakref

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import _actor, _keys, _proto
from .errors import AuthError, Busy, TaskError

log = logging.getLogger("cfutures.client")

#  A SUBMIT carries at most this many tasks or about this many bytes (as the
#  C client: docs/protocol.md promises about 1 MiB per SUBMIT).
BATCH_TASKS = 4096
BATCH_BYTES = 1 << 20
#  Replies read per wakeup before the actor looks at its inbox again.
RECV_BURST = 512
#  BUSY backoff: doubles while the broker frees nothing, back to the minimum
#  once it completes tasks again; each resend round sends twice what the
#  broker completed in the last one (slow start), at least RESEND_MIN.
BACKOFF_MIN_S = 0.005
BACKOFF_MAX_S = 1.0
RESEND_MIN = 64
#  How long Future.cancel() waits for the broker's answer to CANCEL.
CANCEL_WAIT_S = 5.0
#  Task defaults, as the C client's (cf_options_t).
DEFAULT_RETRIES = 3
DEFAULT_HEARTBEAT_MS = 1000
DEFAULT_LIVENESS = 3
#  How long the constructor waits for a broker (CF_CONNECT_TIMEOUT_MS).
DEFAULT_CONNECT_TIMEOUT_S = 5.0
#  map() keeps at most this many tasks in flight (the C map's default
#  through a broker: docs/benchmarks.md).
MAP_WINDOW = 1024
#  CURVE handshakes dropped in a row before the broker key counts as wrong.
HANDSHAKE_DROPS_MAX = 3
#  While tasks wait and no broker answers, or nothing starts or finishes, a
#  warning this often (the C client's S_WARN_EVERY_MS).
WARN_EVERY_S = 10.0
#  Future.stop()'s default grace, seconds.
DEFAULT_STOP_GRACE_S = 5.0

#  Where a task is (actor's view).
_INBOX, _OUTBOX, _PARKED, _BROKER, _DONE = range(5)

_MONITOR_EVENTS = (zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
                   | zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
                   | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                   | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
_ZAP_ERRORS = range(zmq.PROTOCOL_ERROR_ZAP_UNSPECIFIED,
                    zmq.PROTOCOL_ERROR_ZAP_INVALID_METADATA + 1)


class Progress(collections.namedtuple("Progress", "seq done total partial partial_new")):
    """A task's latest progress report, as Future.progress() returns it and
    progress callbacks get it (the C library's cf_task_report_t): ``seq``
    (1, 2, ...: a later report has a larger one; gaps are reports
    coalesced away), ``done`` and ``total`` (the task's own units; total 0:
    not known), ``partial`` (the latest partial value the task sent, with
    this report or an earlier one, decoded; None when none came) and
    ``partial_new`` (it came with this report)."""

    __slots__ = ()


class Future(cf.Future):
    """A concurrent.futures.Future for one remote task.

    Everything is the standard Future's, except cancel(): a task still on
    this side is cancelled at once; one already sent is cancelled through
    the broker (CANCEL), which succeeds while the task's function has not
    begun: queued at the broker, or in a worker's prefetch queue (the broker
    asks that worker). cancel() waits for that answer (at most
    CANCEL_WAIT_S, and not at all when called from a done-callback or while
    the broker is unreachable) and returns whether the task was cancelled;
    a cancelled task never runs. running() turns true when the broker
    reports that the task's function began (STARTED); a task merely handed
    to a worker is not running. (A worker without feature BEGUN, see
    docs/protocol.md, counts as beginning each task when it receives it.)

    Beyond the standard Future: stop() stops a task even once it runs, and
    progress() / add_progress_callback() show the reports of a task that
    makes them (cfutures.report_progress on the Python worker,
    cf_task_progress in C).
    """

    #  The task this future stands for, set by the executor before the
    #  future is handed out (no __init__ of our own: a future is made per
    #  task, and the standard one's is cost enough).
    _cf_task = None
    #  The latest Progress, and the progress callbacks (under _condition).
    _cf_progress = None
    _cf_progress_callbacks = None

    def cancel(self):
        if self.done() or self.running():
            return self.cancelled()
        return self._cf_task.client.cancel(self)

    def stop(self, grace=DEFAULT_STOP_GRACE_S):
        """Stops the task even when it runs (cf_future_stop); cancel() stays
        Python's and never touches a task that began. Never blocks:

        - not begun (here, queued at the broker or in a worker's queue):
          cancelled, as by cancel() (a round trip later when the broker or
          worker holds it);
        - running: asked to stop. Cooperative: the task sees
          cfutures.stop_requested() (Python worker) or cf_stop_requested
          (C) true and returns, and the future fails with a TaskError of
          type "Interrupted". Forced in worker processes (cf-worker
          --procs, python -m cfutures.worker --procs): a task still
          running ``grace`` seconds after the request has its process
          killed (and replaced), and fails with "Interrupted" too, never
          retried. On threads a task that never looks runs to its end and
          keeps its own outcome; so does any task on a worker too old to
          know STOP;
        - done: nothing changes.

        Returns True when the request was made (the future was not done),
        False when the future was done already. A second call changes
        nothing but may shorten the grace."""
        if isinstance(grace, bool) or not isinstance(grace, (int, float)) \
                or not grace >= 0:
            raise ValueError("grace is a number of seconds >= 0")
        grace_ms = min(int(math.ceil(grace * 1000)), _proto.UINT32_MAX)
        if self.done():
            return False
        return self._cf_task.client.stop(self, grace_ms)

    def progress(self):
        """The task's latest progress report (a Progress), or None when none
        arrived yet. Never blocks; still there once the future is done."""
        with self._condition:
            return self._cf_progress

    def add_progress_callback(self, fn):
        """Calls fn(future, progress) with each report of the task that
        arrives, in seq order, on the executor's thread (as done-callbacks
        run): keep it short, it holds up every future of the executor.
        Reports are coalesced on their way (latest wins, at most about one
        per task every 50 ms), never reordered; none is passed once the
        future is done, and the task's last report before it returned is
        passed before the future completes (unless something on the way was
        lost). When a report arrived already and the future is not done,
        fn is called at once, on this thread, with the latest. An exception
        from fn is logged (cfutures.client) and ignored."""
        with self._condition:
            if self._cf_progress_callbacks is None:
                self._cf_progress_callbacks = []
            self._cf_progress_callbacks.append(fn)
            latest = None if self.done() else self._cf_progress
        if latest is not None:
            _call_progress(fn, self, latest)


def _call_progress(fn, future, progress):
    try:
        fn(future, progress)
    except Exception:
        log.exception("a progress callback of %s raised", future)


class _Task:
    __slots__ = ("id", "function", "wire", "size", "future", "where", "started",
                 "cancel_asked", "waiters", "client", "stop_asked")

    def __init__(self, client, task_id, function, args, options, future):
        self.client = client
        self.id = task_id
        self.function = function
        #  The SUBMIT item, built once by the submitting thread; options are
        #  (retries, timeout_ms, flags, priority, wait_ms) (_task_options).
        self.wire = _proto.submit_task(task_id, function, args, *options)
        self.size = len(function) + len(args) + _proto.TASK_OVERHEAD
        self.future = future
        self.where = _INBOX
        self.started = False        # STARTED seen: a cancel can no longer win
        self.cancel_asked = False   # CANCEL sent
        self.stop_asked = False     # STOP sent: not resubmitted to a broker that forgot it
        self.waiters = None         # Events of cancellers waiting for an answer


def _close_fds(*fds):
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def _set_cancelled(future):
    """Cancels a pending future and notifies its waiters (wait(),
    as_completed()), as an executor's worker does when it finds a
    cancelled work item."""
    try:
        if cf.Future.cancel(future):
            future.set_running_or_notify_cancel()
        elif not future.done():
            future.set_exception(cf.CancelledError("cancelled after it started"))
    except (RuntimeError, cf.InvalidStateError):
        pass                    # cancelled and notified already


class _Client:
    """The client actor and the shared state application threads use."""

    def __init__(self, endpoints, ivl_ms, liveness, curve, context, connecting=False):
        self.endpoints = list(endpoints)
        self.ivl_s = ivl_ms / 1000.0
        self.liveness = liveness
        self.curve = curve                  # (server, public, secret) or None
        self.ctx = context or zmq.Context.instance()

        #  Shared with application threads, under lock.
        self.lock = threading.Lock()
        self.inbox = []                     # new tasks, in submission order
        self.cancels = []                   # (future, Event or None)
        self.stops = []                     # (future, grace_ms)
        self.stats_requests = []            # [Event, reply, error] lists
        self.closed = False                 # no more submissions
        self.cancel_all = False             # shutdown(cancel_futures=True) asked
        self.terminate = False              # resolve everything now and stop
        self.destroying = False             # shutdown(wait=True): give up on a lost broker
        self.signalled = True               # the actor is awake or was woken
        self.finished = False               # the actor has ended
        self.refused = None                 # why the broker refused us (AuthError)
        self.ids = itertools.count(random.getrandbits(63) + 1)
        self.handshake = threading.Event()  # the first handshake's outcome is known
        self.answered = False               # some broker completed a handshake
        #  The constructor waits for a first handshake: move past endpoints
        #  that do not answer meanwhile, as while tasks wait.
        self.connecting = connecting
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        #  Closed only when nothing can write any more (a late cancel() or
        #  submit() may still wake an actor that has ended: the byte goes
        #  nowhere, but never to a descriptor number reused meanwhile).
        weakref.finalize(self, _close_fds, self.wake_r, self.wake_w)
        self.actor_ident = None

        #  Actor only.
        self.sock = None
        self.monitor = None
        self.poller = None
        self.ep_index = 0
        self.pending = {}                   # id -> _Task, every unresolved task
        self.outbox = collections.deque()   # tasks to send (lazily skipped when not _OUTBOX)
        self.parked = collections.deque()   # tasks answered BUSY
        self.cancel_ids = []                # ids to send in CANCEL
        self.stop_items = []                # [id, grace_ms] to send in STOP
        self.cancel_waiting = set()         # tasks with waiting cancellers
        self.stats_waiting = []             # requests sent, waiting for the reply
        self.stats_due = False
        self.boot = 0
        self.broker_ivl_s = 0.0
        self.send_ivl_s = self.ivl_s
        self.last_heard = 0.0
        self.last_sent = 0.0                # 0: nothing sent on this socket yet
        self.next_heartbeat = 0.0
        self.resend_at = None
        self.backoff_s = BACKOFF_MIN_S
        self.freed = 0
        self.blocked = False                # a send hit the high-water mark
        self.connected = False              # heard from the broker, not lost since
        self.lost = False                   # judged lost, not heard since
        self.resend_on_contact = False
        self.transport_up = False
        self.ever_connected = False
        self.known = False                  # a SUBMIT went out on this socket
        self.handshake_drops = 0
        self.answered_here = False          # a handshake completed on this socket
        self.opened_at = 0.0
        self.ever_up = False                # some socket of ours ever connected
        self.silent_since = None            # waiting for a broker that is silent, since
        self.giving_up = False              # destroying, read with the inbox
        self.malformed = 0
        self.stale = 0
        self.next_warn = None               # the next "tasks waiting" warning is due
        self.progress_at = 0.0              # a task last started or finished
        self.warn_stats_asked = False       # a STATS of ours (the warning's) is out

        self.thread = threading.Thread(target=self._run, name="cfutures-client", daemon=True)
        self.thread.start()

    # -----------------------------------------------------------------
    #  Application threads

    def _wake(self):
        try:
            os.write(self.wake_w, b"\0")
        except BlockingIOError:
            pass                            # the pipe is full: the actor is awake anyway
        except OSError:
            pass                            # closed: the actor has ended

    def _signal_locked(self):
        if self.signalled:
            return False
        self.signalled = True
        return True

    def submit(self, function, args, options, future):
        task = _Task(self, next(self.ids), function, args, options, future)
        future._cf_task = task
        with self.lock:
            if self.refused is not None:
                raise AuthError(self.refused)
            if self.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.inbox.append(task)
            wake = self._signal_locked()
        if wake:
            self._wake()

    def submit_many(self, function, args_list, options, futures):
        """Several tasks of one function under one lock and one wakeup
        (map's refills)."""
        tasks = []
        for args, future in zip(args_list, futures):
            task = _Task(self, next(self.ids), function, args, options, future)
            future._cf_task = task
            tasks.append(task)
        with self.lock:
            if self.refused is not None:
                raise AuthError(self.refused)
            if self.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self.inbox.extend(tasks)
            wake = self._signal_locked()
        if wake:
            self._wake()

    def cancel(self, future):
        """Future.cancel() of a pending future: see Future."""
        if threading.get_ident() == self.actor_ident:
            self._handle_cancel(future, None)
            return future.cancelled()
        answered = threading.Event()
        with self.lock:
            if self.finished:
                return future.cancelled()
            self.cancels.append((future, answered))
            wake = self._signal_locked()
        if wake:
            self._wake()
        answered.wait(CANCEL_WAIT_S)
        return future.cancelled()

    def cancel_nowait(self, futures):
        """Asks to cancel futures without waiting for the answers."""
        with self.lock:
            if self.finished:
                return
            self.cancels.extend((f, None) for f in futures)
            wake = self._signal_locked()
        if wake:
            self._wake()

    def stop(self, future, grace_ms):
        """Future.stop() of a pending future: see Future.stop. Never waits."""
        if threading.get_ident() == self.actor_ident:
            self._handle_stop(future, grace_ms)
            return True
        with self.lock:
            if self.finished:
                return not future.done()
            self.stops.append((future, grace_ms))
            wake = self._signal_locked()
        if wake:
            self._wake()
        return True

    def stats(self, timeout):
        request = [threading.Event(), None, None]
        with self.lock:
            if self.finished:
                raise RuntimeError("the executor is shut down")
            self.stats_requests.append(request)
            wake = self._signal_locked()
        if wake:
            self._wake()
        if not request[0].wait(timeout):
            raise TimeoutError("the broker did not answer STATS")
        if request[2] is not None:
            raise request[2]
        if request[1] is None:
            raise RuntimeError("the executor was shut down before the broker answered")
        return request[1]

    def shutdown(self, wait, cancel_futures, terminate=False):
        """No more submissions. wait: join the actor, which then gives up on
        a broker lost for liveness intervals (see the design note)."""
        with self.lock:
            self.closed = True
            if cancel_futures:
                self.cancel_all = True
            if terminate:
                self.terminate = True
            if wait:
                self.destroying = True
            wake = self._signal_locked()
        if wake:
            self._wake()
        if wait and threading.get_ident() != self.actor_ident:
            self.thread.join()

    # -----------------------------------------------------------------
    #  Actor: the loop

    def _run(self):
        self.actor_ident = threading.get_ident()
        try:
            self._open_socket()
            self._loop()
        except Exception:
            log.exception("the client thread failed; failing every pending task")
            self._fail_all("ProtocolError", "the cfutures client thread failed (see the log)")
        finally:
            with self.lock:
                self.finished = True
                self.closed = True
                leftover = self.inbox
                self.inbox = []
                cancels = self.cancels
                self.cancels = []
                stats = self.stats_requests
                self.stats_requests = []
            for task in leftover:
                _set_cancelled(task.future)
            for _future, answered in cancels:
                if answered is not None:
                    answered.set()
            for request in stats + self.stats_waiting:
                request[0].set()
            self.handshake.set()
            self._close_socket(goodbye=True)

    def _loop(self):
        while True:
            terminate, closed = self._drain_inbox()
            if terminate:
                self._finish_all()
                return
            if closed and not self.pending:
                return
            self._run_timers()
            if self.cancel_ids:
                self._send_cancels()
            if self.stop_items:
                self._send_stops()
            self._send_tasks()
            if self.stats_due:
                self._send_stats()
            timeout = self._poll_timeout()
            with self.lock:
                if self.inbox or self.cancels or self.stops or self.stats_requests \
                        or self.cancel_all or self.terminate:
                    timeout = 0
                else:
                    self.signalled = False
            events, sock_events = _actor.sleep(self.poller, self.wake_r, self.sock, timeout)
            if sock_events & zmq.POLLOUT:
                self.blocked = False
            if sock_events & zmq.POLLIN:
                self._recv()
            if self.monitor is not None and self.monitor in events:
                self._on_monitor()

    def _poll_timeout(self):
        now = time.monotonic()
        deadline = self.next_heartbeat
        if self._watching():
            deadline = min(deadline, self.last_heard + self._dead_after() + 0.001)
        if self._may_move_on():
            deadline = min(deadline, self.opened_at + self.ivl_s + 0.001)
        if self.giving_up and self.silent_since is not None and not self.connected \
                and self.pending:
            deadline = min(deadline, self.silent_since + self._dead_after() + 0.001)
        if self.resend_at is not None:
            deadline = min(deadline, self.resend_at)
        if self.next_warn is not None:
            deadline = min(deadline, self.next_warn)
        return max(0, int(math.ceil((deadline - now) * 1000)))

    # -----------------------------------------------------------------
    #  Actor: the socket

    def _open_socket(self):
        endpoint = self.endpoints[self.ep_index]
        sock = self.ctx.socket(zmq.DEALER)
        try:
            _proto.setup_socket(sock)
            if self.curve is not None:
                _keys.apply_client(sock, *self.curve)
            monitor = sock.get_monitor_socket(_MONITOR_EVENTS)
            sock.connect(endpoint)
        except Exception:
            sock.close(linger=0)
            raise
        self.sock, self.monitor = sock, monitor
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)
        self.poller.register(self.wake_r, zmq.POLLIN)
        now = time.monotonic()
        self.boot = 0
        self.broker_ivl_s = 0.0
        self.send_ivl_s = self.ivl_s
        self.last_heard = now
        self.last_sent = 0.0
        self.next_heartbeat = now + self.send_ivl_s
        self.blocked = False
        self.connected = False
        self.lost = False
        self.transport_up = False
        self.ever_connected = False
        self.known = False
        self.handshake_drops = 0
        self.answered_here = False
        self.opened_at = now
        log.debug("connecting to %s", endpoint)

    def _close_socket(self, goodbye):
        if self.sock is None:
            return
        if goodbye and self.known:
            #  Tell the broker to drop what it still queues for us. Best
            #  effort: lost at the high-water mark, its heartbeats find out.
            try:
                _proto.send(self.sock, _proto.DISCONNECT, ["client closed"])
            except zmq.ZMQError:
                pass
        if self.monitor is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.monitor = None
        self.sock.close()
        self.sock = None

    def _failover(self, why, level=logging.WARNING):
        old = self.endpoints[self.ep_index]
        self._close_socket(goodbye=False)
        self.ep_index = (self.ep_index + 1) % len(self.endpoints)
        log.log(level, "broker at %s %s: moving to %s", old, why, self.endpoints[self.ep_index])
        self._open_socket()
        self._resend_all("moved to another broker")

    # -----------------------------------------------------------------
    #  Actor: resolving

    def _forget(self, task):
        del self.pending[task.id]
        task.where = _DONE
        if task.waiters:
            for answered in task.waiters:
                answered.set()
            task.waiters = None
            self.cancel_waiting.discard(task)

    def _resolve_value(self, task, data):
        self._forget(task)
        try:
            value = _proto.unpack_value(data)
        except _proto.BadValue as e:
            self._fail_value(task, e)
            return
        try:
            task.future.set_result(value)
        except cf.InvalidStateError:
            pass                # resolved behind our back (Future.cancel of the base class)

    def _fail_value(self, task, e):
        error = TaskError("ProtocolError", f"the result is not one msgpack value ({e})",
                          task.function)
        try:
            task.future.set_exception(error)
        except cf.InvalidStateError:
            pass

    def _resolve_error(self, task, etype, message, function="", host="", pid=0):
        self._forget(task)
        try:
            task.future.set_exception(
                TaskError(etype, message, function or task.function, host, pid))
        except cf.InvalidStateError:
            pass

    def _resolve_cancelled(self, task):
        self._forget(task)
        _set_cancelled(task.future)

    def _fail_all(self, etype, message):
        for task in list(self.pending.values()):
            self._resolve_error(task, etype, message)
        self.outbox.clear()
        self.parked.clear()

    def _finish_all(self):
        """A forced stop: tasks that never started are cancelled, running
        ones fail, so no future is left pending."""
        for task in list(self.pending.values()):
            if task.started:
                self._resolve_error(task, "ExecutorDestroyed",
                                    "the executor was stopped before the task finished")
            else:
                self._resolve_cancelled(task)
        self.outbox.clear()
        self.parked.clear()

    def _release_cancellers(self):
        """No answer can come soon (the broker is unreachable): cancellers
        stop waiting and report what is known now."""
        for task in self.cancel_waiting:
            for answered in task.waiters or ():
                answered.set()
            task.waiters = None
        self.cancel_waiting.clear()

    # -----------------------------------------------------------------
    #  Actor: the inbox

    def _drain_inbox(self):
        with self.lock:
            tasks = self.inbox
            self.inbox = []
            cancels = self.cancels
            self.cancels = []
            stops = self.stops
            self.stops = []
            stats = self.stats_requests
            self.stats_requests = []
            cancel_all = self.cancel_all
            self.cancel_all = False
            terminate = self.terminate
            self.giving_up = self.destroying
            #  Read with the inbox: every task submitted before shutdown()
            #  is in this drain.
            closed = self.closed
        #  Tasks first: a cancel always follows its task's submission.
        pending = self.pending
        parked = bool(self.parked)
        for task in tasks:
            pending[task.id] = task
            #  Behind parked tasks while the broker pushes back.
            if parked:
                task.where = _PARKED
                self.parked.append(task)
            else:
                task.where = _OUTBOX
                self.outbox.append(task)
        for future, answered in cancels:
            self._handle_cancel(future, answered)
        for future, grace_ms in stops:
            self._handle_stop(future, grace_ms)
        if stats:
            self.stats_waiting.extend(stats)
            self.stats_due = True
        if cancel_all:
            self._cancel_everything_queued()
        return terminate, closed

    def _handle_cancel(self, future, answered):
        task = future._cf_task
        if task is None or task.where == _DONE:
            if answered is not None:
                answered.set()
            return
        if task.where == _INBOX:
            #  Submitted and cancelled by a done-callback on this thread
            #  before the inbox was drained.
            with self.lock:
                try:
                    self.inbox.remove(task)
                except ValueError:
                    pass
            task.where = _DONE
            _set_cancelled(future)
            if answered is not None:
                answered.set()
            return
        if task.where in (_OUTBOX, _PARKED):
            self._resolve_cancelled(task)
            if answered is not None:
                answered.set()
            return
        #  At the broker.
        if not task.started and not task.cancel_asked:
            self.cancel_ids.append(task.id)
            task.cancel_asked = True
        if answered is None:
            return
        if task.started or self.lost or not self.transport_up:
            answered.set()
        else:
            if task.waiters is None:
                task.waiters = []
            task.waiters.append(answered)
            self.cancel_waiting.add(task)

    def _handle_stop(self, future, grace_ms):
        task = future._cf_task
        if task is None or task.where == _DONE:
            return
        if task.where in (_INBOX, _OUTBOX, _PARKED):
            #  Never sent (or back in our hands): it never runs.
            self._handle_cancel(future, None)
            return
        #  At the broker: it cancels a queued task, asks a worker to stop a
        #  held one; the RESULT answers.
        self.stop_items.append(_proto.stop_item(task.id, grace_ms))
        task.stop_asked = True

    def _cancel_everything_queued(self):
        for task in list(self.pending.values()):
            if task.where in (_OUTBOX, _PARKED):
                self._resolve_cancelled(task)
            elif task.where == _BROKER and not task.started and not task.cancel_asked:
                self.cancel_ids.append(task.id)
                task.cancel_asked = True
        self.outbox.clear()
        self.parked.clear()
        self.resend_at = None

    # -----------------------------------------------------------------
    #  Actor: sending

    def _sent(self):
        self.last_sent = time.monotonic()
        self.next_heartbeat = self.last_sent + self.send_ivl_s

    def _send_tasks(self):
        outbox = self.outbox
        while outbox and not self.blocked:
            batch = []
            size = 5
            while outbox and len(batch) < BATCH_TASKS:
                task = outbox[0]
                if task.where != _OUTBOX:
                    outbox.popleft()
                    continue
                if batch and size + task.size > BATCH_BYTES:
                    break
                outbox.popleft()
                batch.append(task)
                size += task.size
            if not batch:
                return
            body = _proto.pack([task.wire for task in batch])
            if not _proto.send_packed(self.sock, _proto.SUBMIT, body):
                self.blocked = True
                self.poller.modify(self.sock, zmq.POLLIN | zmq.POLLOUT)
                outbox.extendleft(reversed(batch))
                return
            for task in batch:
                task.where = _BROKER
            self.known = True
            self._sent()

    def _send_cancels(self):
        if self.blocked:
            return
        while self.cancel_ids:
            ids = self.cancel_ids[:_proto.MAX_BATCH]
            if not _proto.send(self.sock, _proto.CANCEL, ids):
                self.blocked = True
                self.poller.modify(self.sock, zmq.POLLIN | zmq.POLLOUT)
                return
            del self.cancel_ids[:len(ids)]
            self._sent()

    def _send_stops(self):
        if self.blocked:
            return
        while self.stop_items:
            items = self.stop_items[:_proto.MAX_BATCH]
            if not _proto.send(self.sock, _proto.STOP, items):
                self.blocked = True
                self.poller.modify(self.sock, zmq.POLLIN | zmq.POLLOUT)
                return
            del self.stop_items[:len(items)]
            self._sent()

    def _send_stats(self):
        if _proto.send(self.sock, _proto.STATS, []):
            self.stats_due = False

    # -----------------------------------------------------------------
    #  Actor: receiving

    def _recv(self):
        now = time.monotonic()
        for _ in range(RECV_BURST):
            try:
                parts = _proto.recv(self.sock)
                if parts is None:
                    return
                command, fields = _proto.decode(parts)
            except _proto.Malformed as e:
                #  Still a sign of life from the broker.
                self.malformed += 1
                log.debug("malformed message from the broker dropped: %s", e)
                self._contact(now)
                continue
            self._contact(now)
            if command == _proto.RESULT:
                self._on_result(fields, now)
            elif command == _proto.STARTED:
                self._on_started(fields)
            elif command == _proto.PROGRESS:
                self._on_progress(fields)
            elif command == _proto.HEARTBEAT:
                self._on_heartbeat(*fields)
            elif command == _proto.ERROR_CMD:
                self._on_error(*fields)
            elif command == _proto.DISCONNECT:
                self._lost_broker("said goodbye")
                return          # the socket may have been replaced
            elif command == _proto.STATS:
                if fields is not None:
                    self._on_stats_reply(fields)
                    for request in self.stats_waiting:
                        request[1] = fields
                        request[0].set()
                    self.stats_waiting = []
            else:
                self.malformed += 1
                log.debug("unexpected %s from the broker dropped", command.decode())
            if self.sock is None:
                return

    def _contact(self, now):
        self.last_heard = now
        self.silent_since = None
        if not self.connected:
            self.connected = True
            self.lost = False
        if self.resend_on_contact:
            self.resend_on_contact = False
            self._resend_all("broker back after silence")

    def _on_result(self, results, now):
        pending = self.pending
        self.progress_at = now
        unpack = _proto.unpack_value
        for task_id, status, payload in results:
            task = pending.get(task_id)
            if task is None:
                self.stale += 1         # resolved already (a resend's twin)
                continue
            if status == _proto.OK and not task.waiters:
                #  The common case, inline: one task done, no canceller.
                del pending[task_id]
                task.where = _DONE
                self.freed += 1
                try:
                    value = unpack(payload)
                except _proto.BadValue as e:
                    self._fail_value(task, e)
                    continue
                try:
                    task.future.set_result(value)
                except cf.InvalidStateError:
                    pass
                continue
            if status == _proto.OK:
                self._resolve_value(task, payload)
                self.freed += 1
            elif status == _proto.ERROR:
                self._resolve_error(task, *payload)
                self.freed += 1
            elif status == _proto.CANCELLED:
                self._resolve_cancelled(task)
                self.freed += 1
            elif task.where == _BROKER:  # BUSY
                task.where = _PARKED
                self.parked.append(task)
                if self.resend_at is None:
                    self.resend_at = now + self.backoff_s

    def _on_started(self, ids):
        pending = self.pending
        for task_id in ids:
            task = pending.get(task_id)
            if task is None or task.started:
                continue
            self._begun(task)

    def _begun(self, task):
        """The task's function began (STARTED, or a first report)."""
        task.started = True
        self.progress_at = time.monotonic()
        try:
            task.future.set_running_or_notify_cancel()
        except RuntimeError:
            pass            # resolved behind our back (Future.cancel of the base class)
        if task.waiters:
            for answered in task.waiters:
                answered.set()
            task.waiters = None
            self.cancel_waiting.discard(task)

    def _on_progress(self, reports):
        """PROGRESS: the latest report of each task, in seq order, none
        after the result (see the design note)."""
        pending = self.pending
        for task_id, seq, done, total, partial in reports:
            task = pending.get(task_id)
            if task is None:
                self.stale += 1         # resolved already: dropped
                continue
            future = task.future
            latest = future._cf_progress
            if latest is not None and seq <= latest.seq:
                continue
            if not task.started:
                #  A report says the function began.
                self._begun(task)
            value, new = (latest.partial if latest is not None else None), False
            if partial is not None:
                try:
                    value, new = _proto.unpack_value(partial), True
                except _proto.BadValue as e:
                    log.debug("a partial value of task %d dropped: %s", task_id, e)
            report = Progress(seq, done, total, value, new)
            with future._condition:
                if future.done():
                    continue
                future._cf_progress = report
                callbacks = list(future._cf_progress_callbacks or ())
            for fn in callbacks:
                _call_progress(fn, future, report)

    def _on_stats_reply(self, stats):
        """The answer to the STATS the waiting warning sent: a broker
        without workers is worth a warning of its own."""
        if not self.warn_stats_asked:
            return
        self.warn_stats_asked = False
        if stats.get("workers") == 0:
            log.warning("%d tasks waiting: the broker at %s has no workers", len(self.pending),
                        self.endpoints[self.ep_index])

    def _warn_waiting(self, now):
        """No silent waits: while tasks wait, every WARN_EVERY_S a warning
        when no broker answers, or when nothing started or finished (then a
        STATS first, on a plaintext broker, to tell a broker without
        workers; under CURVE STATS is an admin key's)."""
        if not self.pending or self.refused is not None:
            self.next_warn = None
            return
        if self.next_warn is None:
            self.next_warn = now + WARN_EVERY_S
            return
        if now < self.next_warn:
            return
        self.next_warn = now + WARN_EVERY_S
        endpoint = self.endpoints[self.ep_index]
        if not self.connected:
            since = self.silent_since if self.silent_since is not None else now
            log.warning("%d tasks waiting: no broker answers at %s (for %d s)",
                        len(self.pending), endpoint, int(now - since))
            return
        if now - self.progress_at < WARN_EVERY_S or not self.transport_up:
            return
        if self.curve is not None:
            log.warning("%d tasks waiting: nothing started or finished for %d s (workers "
                        "busy, missing, or serving none of these functions)",
                        len(self.pending), int(now - self.progress_at))
            return
        if not self.blocked and _proto.send(self.sock, _proto.STATS, []):
            self.warn_stats_asked = True
            self._sent()

    def _on_heartbeat(self, boot, ivl_ms):
        if ivl_ms:
            self.broker_ivl_s = ivl_ms / 1000.0
            #  The broker expires peers silent for liveness of ITS
            #  intervals: speak at least that often.
            ivl = min(self.ivl_s, self.broker_ivl_s)
            if ivl != self.send_ivl_s:
                self.send_ivl_s = ivl
                self.next_heartbeat = min(self.next_heartbeat, time.monotonic() + ivl)
        if boot == 0:
            return
        if self.boot and boot != self.boot:
            log.warning("broker at %s restarted", self.endpoints[self.ep_index])
            self._resend_all("broker restarted")
        self.boot = boot

    def _on_error(self, ref, text):
        if ref == 0 and text == _proto.UNKNOWN_CLIENT:
            self._resend_all("broker does not know us")
            return
        if ref == 0 and text == _proto.STATS_NEEDS_ADMIN:
            #  Only the STATS request is refused (a CURVE broker answers it
            #  for --admin-keys only): the tasks go on.
            self.warn_stats_asked = False
            fp = _keys.fingerprint(self.curve[1]) if self.curve else "(none)"
            error = AuthError(f"the broker at {self.endpoints[self.ep_index]} refused STATS: "
                              f"{text} (cf-broker --admin-keys; this client's key {fp} is "
                              f"not one)")
            for request in self.stats_waiting:
                request[2] = error
                request[0].set()
            self.stats_waiting = []
            self.stats_due = False
            return
        if ref == 0 and text in (_proto.KEY_REVOKED, _proto.NOT_ALLOWED):
            self._refused(f"the broker at {self.endpoints[self.ep_index]} refused this "
                          f"client: {text}")
            return
        task = self.pending.get(ref) if ref else None
        if task is not None:
            self._resolve_error(task, "ProtocolError", text)
            return
        log.warning("broker refused a message: %s", text[:200])

    def _resend_all(self, why):
        """Every task at the broker goes back to the outbox, oldest first;
        one a canceller waits on is cancelled here instead (it is back in
        our hands)."""
        self.resend_on_contact = False
        resend = []
        cancel = []
        interrupted = []
        for task in self.pending.values():
            if task.where != _BROKER:
                continue
            if task.cancel_asked and not task.started:
                cancel.append(task)
            elif task.stop_asked:
                interrupted.append(task)
            else:
                task.where = _OUTBOX
                resend.append(task)
        if resend or cancel:
            log.info("%s: resending %d tasks", why, len(resend))
        self.outbox.extendleft(reversed(resend))
        for task in cancel:
            self._resolve_cancelled(task)
        #  Asked to stop, then forgotten by the broker: run again it would
        #  not be stopped, so it ends here.
        for task in interrupted:
            self._resolve_error(task, _proto.INTERRUPTED,
                                "the task was asked to stop and the broker forgot it (restarted "
                                "or lost this client): not resubmitted")
        self.stop_items.clear()
        self.blocked = False
        if self.poller is not None and self.sock is not None:
            self.poller.modify(self.sock, zmq.POLLIN)

    def _lost_broker(self, why):
        if self.connected:
            log.warning("broker at %s lost (%s)", self.endpoints[self.ep_index], why)
            self.silent_since = time.monotonic()
        self.connected = False
        self.lost = True
        #  Silent to us, we were probably silent to it as well: it may have
        #  dropped our tasks, and our next SUBMIT would rejoin without a word.
        self.resend_on_contact = True
        self._release_cancellers()
        if len(self.endpoints) > 1:
            self._failover(why)

    def _refused(self, why):
        with self.lock:
            if self.refused is not None:
                return
            self.refused = why
            tasks = self.inbox
            self.inbox = []
        log.error("%s", why)
        for task in tasks:
            self.pending[task.id] = task
        self._fail_all("AuthError", why)
        self.handshake.set()
        try:
            self.sock.disconnect(self.endpoints[self.ep_index])
        except zmq.ZMQError:
            pass
        self.transport_up = False

    def _on_monitor(self):
        while self.monitor is not None:
            try:
                event = recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return
            except Exception as e:   # a monitor message we cannot read
                log.debug("monitor message dropped: %s", e)
                continue
            kind, value = event.get("event"), event.get("value")
            if kind == zmq.EVENT_CONNECTED:
                self.transport_up = True
                self.ever_up = True
                if self.ever_connected:
                    log.info("reconnected to %s", self.endpoints[self.ep_index])
                    self.boot = 0
                    #  The SUBMIT of the resent tasks introduces us again.
                    self._resend_all("reconnected")
                self.ever_connected = True
            elif kind == zmq.EVENT_DISCONNECTED:
                self.transport_up = False
                self._lost_broker("disconnected")
                return          # the socket may have been replaced
            elif kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.handshake_drops = 0
                self.answered_here = True
                self.answered = True
                self.handshake.set()
            elif self.refused is None:
                self._on_handshake_failure(kind, value)

    def _on_handshake_failure(self, kind, value):
        endpoint = self.endpoints[self.ep_index]
        if kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            fp = _keys.fingerprint(self.curve[1]) if self.curve else "(none)"
            self._refused(f"the broker at {endpoint} refused this client's key {fp} "
                          f"(ZAP {value}: not on its client list)")
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL and (
                value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH or value in _ZAP_ERRORS):
            if self.curve:
                self._refused(f"the broker at {endpoint} does not use CURVE, this client "
                              f"does (curve_broker_key, curve_key)")
            else:
                self._refused(f"the broker at {endpoint} requires CURVE authentication: "
                              f"give curve_broker_key and curve_key")
        elif self.curve and kind in (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                                     zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL):
            self.handshake_drops += 1
            if self.handshake_drops >= HANDSHAKE_DROPS_MAX:
                self._refused(f"the broker at {endpoint} dropped {self.handshake_drops} "
                              f"CURVE handshakes in a row: wrong broker key "
                              f"(curve_broker_key), or the broker cannot authenticate")

    # -----------------------------------------------------------------
    #  Actor: timers

    def _dead_after(self):
        return self.liveness * max(self.ivl_s, self.broker_ivl_s)

    def _watching(self):
        """Whether a silent broker counts against it now: once it spoke, or
        while it holds tasks of ours."""
        return not self.lost and (self.connected or bool(self.pending)) \
            and self.refused is None

    def _may_move_on(self):
        """Whether the next endpoint is tried once this one has not
        answered (no handshake) for an interval: with several endpoints,
        while someone waits for a broker."""
        return len(self.endpoints) > 1 and not self.answered_here \
            and self.refused is None and (self.connecting or bool(self.pending))

    def _give_up(self, now):
        """shutdown(wait=True) while the broker has been unreachable for
        liveness intervals: as cf_executor_destroy, tasks the broker may
        have had fail with BrokerLost, the others are cancelled."""
        endpoint = self.endpoints[self.ep_index]
        lost = [t for t in self.pending.values() if t.where == _BROKER and self.ever_up]
        log.warning("executor shut down while the broker at %s was unreachable (%d ms): %d "
                    "tasks failed with BrokerLost, %d never delivered cancelled", endpoint,
                    int((now - self.silent_since) * 1000), len(lost),
                    len(self.pending) - len(lost))
        why = (f"the executor was shut down while the broker at {endpoint} was unreachable: "
               f"the task may or may not have run")
        for task in list(self.pending.values()):
            if task.where == _BROKER and self.ever_up:
                self._resolve_error(task, "BrokerLost", why)
            else:
                self._resolve_cancelled(task)
        self.outbox.clear()
        self.parked.clear()
        self.resend_at = None

    def _run_timers(self):
        now = time.monotonic()
        #  Heartbeats keep our gaps near one interval; a gap past the
        #  broker's expiry means this thread stalled (a C extension holding
        #  the GIL, a stopped process) and the broker may have dropped us.
        expiry = self.liveness * (self.broker_ivl_s or self.ivl_s)
        if self.last_sent and self.transport_up and now - self.last_sent > expiry:
            self._resend_all("we were silent")
            self.last_sent = now
        if now >= self.next_heartbeat:
            #  Not before the first SUBMIT (the broker knows a client from
            #  it and would answer "unknown client"), nor while
            #  disconnected (zmq would queue them ahead of the resent tasks).
            if self.transport_up and self.known and not self.blocked:
                if _proto.send(self.sock, _proto.HEARTBEAT, [0, 0]):
                    self._sent()
            self.next_heartbeat = now + self.send_ivl_s
        if self._watching() and now - self.last_heard > self._dead_after() \
                and not self.sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            #  (Messages waiting unread mean this thread stalled, not the
            #  broker: they are read next.)
            self._lost_broker("silent")
        if self._may_move_on() and now - self.opened_at > self.ivl_s:
            self._failover("does not answer", logging.INFO)
        if not self.connected and self.pending:
            #  Waiting for a broker that says nothing: since it was lost,
            #  or since tasks began to wait for one never heard.
            if self.silent_since is None:
                self.silent_since = now
            if self.giving_up and now - self.silent_since >= self._dead_after():
                self._give_up(now)
        self._warn_waiting(now)
        if self.resend_at is not None and now >= self.resend_at:
            if self.freed == 0:
                self.backoff_s = min(self.backoff_s * 2, BACKOFF_MAX_S)
            else:
                self.backoff_s = BACKOFF_MIN_S
            n = max(self.freed * 2, RESEND_MIN)
            self.freed = 0
            round_ = []
            while n > 0 and self.parked:
                task = self.parked.popleft()
                if task.where != _PARKED:
                    continue
                task.where = _OUTBOX
                round_.append(task)
                n -= 1
            self.outbox.extendleft(reversed(round_))
            self.resend_at = now + self.backoff_s if self.parked else None


def _task_options(defaults, options):
    """The wire options (retries, timeout_ms, flags, priority, wait_ms) of
    defaults overridden by the keyword task options given."""
    retries, timeout_ms, flags, priority, wait_ms = defaults
    for key, value in options.items():
        if key == "retries":
            if type(value) is not int:
                raise TypeError("retries is an int")
            retries = max(-1, min(value, _proto.INT32_MAX))
        elif key == "timeout":
            timeout_ms = _timeout_ms(value)
        elif key == "retry_on_error":
            flags = (flags | _proto.RETRY_ON_ERROR) if value else (flags & ~_proto.RETRY_ON_ERROR)
        elif key == "priority":
            if type(value) is not int:
                raise TypeError("priority is an int")
            if not _proto.INT32_MIN <= value <= _proto.INT32_MAX:
                raise ValueError(f"priority is an int from {_proto.INT32_MIN} to "
                                 f"{_proto.INT32_MAX}")
            priority = value
        elif key == "no_worker_timeout":
            wait_ms = _timeout_ms(value, "no_worker_timeout")
        else:
            raise TypeError(f"unknown task option {key!r} (task options are retries, timeout, "
                            f"retry_on_error, priority and no_worker_timeout; a task's own "
                            f"arguments are positional)")
    return retries, timeout_ms, flags, priority, wait_ms


def _timeout_ms(seconds, what="timeout"):
    if seconds is None or seconds == 0:
        return 0
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or seconds < 0:
        raise ValueError(f"{what} is a number of seconds >= 0, or None")
    ms = int(math.ceil(seconds * 1000))
    if ms > _proto.UINT32_MAX:
        raise ValueError(f"{what} is at most {_proto.UINT32_MAX // 1000} s")
    return max(ms, 1)


def _connect_wait(connect_timeout):
    """The constructor's wait for a broker, in seconds (None: no wait), as
    connect_timeout_ms: 0 the default, negative (or None) no wait."""
    if connect_timeout is None:
        return None
    if isinstance(connect_timeout, bool) or not isinstance(connect_timeout, (int, float)) \
            or not math.isfinite(connect_timeout):
        raise ValueError("connect_timeout is a number of seconds, or None")
    if connect_timeout < 0:
        return None
    return float(connect_timeout) or DEFAULT_CONNECT_TIMEOUT_S


def _pack_args(function, args):
    try:
        data = _proto.pack(list(args))
    except Exception as e:
        raise TypeError(f"the arguments of {function}() cannot be encoded as msgpack: {e}") \
            from None
    if len(data) + len(function) + _proto.TASK_OVERHEAD > _proto.MAX_FRAME:
        raise ValueError(f"the arguments of {function}() ({len(data)} bytes) exceed the "
                         f"message limit")
    return data


def _chunk_item(function, item):
    """The value of one input of a cf.chunk result, or raises its error."""
    if type(item) is list and item:
        if item[0] == 0 and len(item) == 2:
            return item[1]
        if item[0] == 1 and len(item) in (3, 5) and isinstance(item[1], str) \
                and isinstance(item[2], str):
            host, pid = (item[3], item[4]) if len(item) == 5 else ("", 0)
            if not isinstance(host, str) or type(pid) is not int:
                host, pid = "", 0
            raise TaskError(item[1], item[2], function, host, pid)
    raise TaskError("ProtocolError", "a chunk result item is not [0, value] or "
                    "[1, type, message, host, pid]", function)


_live_executors = weakref.WeakSet()


class Executor(cf.Executor):
    """An executor whose tasks run on a cfutures cluster.

    ``Executor(endpoint)`` connects to a cf-broker's client endpoint
    (default ``tcp://127.0.0.1:5555``); a list of endpoints is tried in
    order, moving on when a broker is lost. Tasks are functions registered
    by name on the workers, called with msgpack-encodable arguments::

        with cfutures.Executor("tcp://127.0.0.1:5555") as ex:
            print(ex.submit("square", 7).result())              # 49
            print(list(ex.map("is_prime", [2, 4, 97])))         # [True, False, True]

    Task options, defaults for every task here and per-task keyword
    arguments of submit(): ``retries`` (how often a task may run again
    after its worker was lost; default 3, negative: never), ``timeout`` (a
    task's run time limit in seconds, enforced by the broker: the task
    fails with a TaskError of type "TimeoutError"), ``retry_on_error``
    (also retry tasks that failed, within ``retries``), ``priority`` (an
    int32, default 0: the broker dispatches a client's higher-priority
    tasks first) and ``no_worker_timeout`` (seconds a task may wait while
    no connected worker serves its function before it fails with a
    TaskError of type "NoWorker"; None or 0: the broker's default,
    cf-broker --no-worker-timeout). A task with a priority or a
    no_worker_timeout travels in the longer SUBMIT form of issue 10, which
    brokers older than it refuse (that task alone fails, ProtocolError);
    tasks without them reach every broker.

    ``connect_timeout`` (seconds, default 5; 0: the default; None or
    negative: do not wait) is how long the constructor waits for a broker
    to answer at ``endpoint`` (any of them, for a list); it raises
    TimeoutError, naming the endpoint, when none did. ``heartbeat_ms`` and
    ``liveness`` set how fast a silent broker counts as lost.
    ``curve_broker_key`` and ``curve_key`` are the broker's public key file
    and this client's secret key file (cf-keygen); with them the
    constructor raises AuthError if the broker refuses the key (waiting at
    least ``liveness`` heartbeat intervals for the handshake even without
    connect_timeout). ``map_window`` bounds the tasks map() keeps in
    flight. ``max_outstanding`` bounds the tasks submit() has not seen done:
    a submission over it waits for one, or, with ``fail_when_full``, raises
    cfutures.Busy at once (a done callback never waits: it raises Busy), as
    the C library's options of the same names do.

    An executor is shut down by ``with``, shutdown(), or at interpreter
    exit: there, as with ThreadPoolExecutor, its tasks still complete.
    shutdown(wait=True) (and the exit) waits for every task while the
    broker answers, however long they take; but once the broker has been
    lost, or never heard, for ``liveness`` heartbeat intervals, it stops
    waiting, as cf_executor_destroy does: tasks never sent are cancelled,
    tasks handed to the broker fail with a TaskError of type "BrokerLost"
    (they may or may not have run), and a warning is logged
    (cfutures.client) saying how many.

    submit() and map() raise TypeError or ValueError at once for arguments
    that cannot travel; everything that happens remotely comes back through
    the futures: TaskError for a task that failed (its remote type,
    message, function, host and pid), CancelledError for a cancelled one.
    """

    def __init__(self, endpoint="tcp://127.0.0.1:5555", *, retries=DEFAULT_RETRIES,
                 timeout=None, retry_on_error=False, priority=0, no_worker_timeout=None,
                 connect_timeout=DEFAULT_CONNECT_TIMEOUT_S,
                 heartbeat_ms=DEFAULT_HEARTBEAT_MS, liveness=DEFAULT_LIVENESS,
                 curve_broker_key=None, curve_key=None, map_window=MAP_WINDOW,
                 max_outstanding=None, fail_when_full=False, context=None):
        endpoints = [endpoint] if isinstance(endpoint, str) else list(endpoint)
        if not endpoints or not all(isinstance(e, str) and e for e in endpoints):
            raise ValueError("endpoint is a non-empty str or a list of them")
        if type(heartbeat_ms) is not int or heartbeat_ms < 1:
            raise ValueError("heartbeat_ms is a positive int")
        if type(liveness) is not int or liveness < 1:
            raise ValueError("liveness is a positive int")
        if type(map_window) is not int or map_window < 1:
            raise ValueError("map_window is a positive int")
        if max_outstanding is not None and (type(max_outstanding) is not int
                                            or max_outstanding < 1):
            raise ValueError("max_outstanding is None or a positive int")
        #  submit()'s bound on tasks not done (map() has its own window).
        self._slots = None if max_outstanding is None else threading.Semaphore(max_outstanding)
        self._max_outstanding = max_outstanding
        self._fail_when_full = fail_when_full
        #  Every task asks for PROGRESS: this client reads it.
        self._defaults = _task_options((0, 0, _proto.FLAG_PROGRESS, 0, 0), {
            "retries": retries, "timeout": timeout, "retry_on_error": retry_on_error,
            "priority": priority, "no_worker_timeout": no_worker_timeout})
        connect_wait = _connect_wait(connect_timeout)
        self._map_window = map_window
        self._names = set()         # function names checked already
        curve = _keys.load_client_keys(curve_broker_key, curve_key)
        self._client = _Client(endpoints, heartbeat_ms, liveness, curve, context,
                               connecting=connect_wait is not None)
        #  Without connect_timeout, with CURVE: a refused key says so within
        #  a few heartbeat intervals; a broker that is not up yet is no error.
        wait = connect_wait
        if wait is None and curve is not None:
            wait = heartbeat_ms * liveness / 1000.0
        if wait is not None:
            self._client.handshake.wait(wait)
            self._client.connecting = False
            error = None
            if self._client.refused is not None:
                error = AuthError(self._client.refused)
            elif connect_wait is not None and not self._client.answered:
                where = ", ".join(endpoints)
                error = TimeoutError(
                    f"no cf-broker answered at {where} within {int(connect_wait * 1000)} ms "
                    f"(connect_timeout; is the broker running and the endpoint right?)")
            if error is not None:
                self._client.shutdown(wait=True, cancel_futures=True, terminate=True)
                raise error
        _live_executors.add(self)
        weakref.finalize(self, _Client.shutdown, self._client, False, False)

    @property
    def endpoints(self):
        return list(self._client.endpoints)

    def submit(self, fn, /, *args, **task_options):
        """Schedules fn(*args) on a worker; fn is the task's registered
        name. Keyword arguments are task options (retries, timeout,
        retry_on_error, priority, no_worker_timeout: see the class), never
        arguments of the task: cf/1 has positional arguments only. Returns
        a Future."""
        if fn not in self._names:
            _proto.check_function_name(fn)
            if len(self._names) < 4096:
                self._names.add(fn)
        options = _task_options(self._defaults, task_options) if task_options else self._defaults
        return self._submit(fn, _pack_args(fn, args), options)

    def _submit(self, fn, args_bytes, options):
        future = Future()
        if self._slots is not None:
            self._take_slot(fn)
            future.add_done_callback(lambda _: self._slots.release())
        try:
            self._client.submit(fn, args_bytes, options, future)
        except BaseException:
            if self._slots is not None and not future.done():
                self._slots.release()
            raise
        return future

    def _take_slot(self, fn):
        #  Never waits on the client's own thread (a done callback): the
        #  slot it waits for is freed on that thread. A shutdown ends the
        #  wait, as it ends every submission.
        may_wait = (not self._fail_when_full
                    and threading.current_thread() is not self._client.thread)
        while not self._slots.acquire(timeout=0.1 if may_wait else 0):
            if not may_wait:
                raise Busy(f"cannot submit {fn}: {self._max_outstanding} tasks outstanding "
                           "(max_outstanding)")
            if self._client.closed:
                raise RuntimeError("cannot schedule new futures after shutdown")

    def map(self, fn, *iterables, timeout=None, chunksize=1, window=None, priority=None,
            no_worker_timeout=None):
        """Like Executor.map: fn(*args) for args in zip(*iterables), results
        in order, the first failing input's error raised where it stands.
        Unlike it, inputs are read lazily: at most `window` tasks
        (map_window) are in flight, so an endless iterable takes bounded
        memory; the first window is submitted at once. chunksize > 1 sends
        that many inputs per task (cf.chunk, run by every worker). timeout
        counts from this call (it is the wait's, not a task option).
        priority and no_worker_timeout, when given, are the task options of
        every input (see the class); the others are the executor's.
        Closing the iterator early cancels the tasks still in flight."""
        _proto.check_function_name(fn)
        if type(chunksize) is not int or chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        window = self._map_window if window is None else window
        if type(window) is not int or window < 1:
            raise ValueError("window must be >= 1")
        overrides = {}
        if priority is not None:
            overrides["priority"] = priority
        if no_worker_timeout is not None:
            overrides["no_worker_timeout"] = no_worker_timeout
        options = _task_options(self._defaults, overrides) if overrides else self._defaults
        end = None if timeout is None else time.monotonic() + timeout
        inputs = zip(*iterables)
        in_flight = collections.deque()
        state = {"exhausted": False}
        #  Refills go out in batches: one lock, one wakeup and one SUBMIT for
        #  many tasks, where refilling slot by slot would cost a wakeup of
        #  the client thread per result.
        refill = max(1, min(256, window // 4))

        def fill(first=False):
            if state["exhausted"] or (not first and len(in_flight) > window - refill):
                return
            name, packed, counts = fn, [], []
            while not state["exhausted"] and len(in_flight) + len(packed) < window:
                if chunksize == 1:
                    try:
                        args = next(inputs)
                    except StopIteration:
                        state["exhausted"] = True
                        break
                    packed.append(_pack_args(fn, args))
                    counts.append(0)
                else:
                    chunk = [list(args) for args in itertools.islice(inputs, chunksize)]
                    if len(chunk) < chunksize:
                        state["exhausted"] = True
                    if not chunk:
                        break
                    name = _proto.CHUNK_FUNCTION
                    packed.append(_pack_args(fn, [fn, chunk]))
                    counts.append(len(chunk))
            if packed:
                futures = [Future() for _ in packed]
                self._client.submit_many(name, packed, options, futures)
                in_flight.extend(zip(futures, counts))

        fill(first=True)
        return self._map_results(fn, in_flight, fill, end)

    def _map_results(self, fn, in_flight, fill, end):
        try:
            while in_flight:
                future, n = in_flight[0]
                value = future.result(None if end is None else max(0.0, end - time.monotonic()))
                in_flight.popleft()
                fill()              # keep the window full while the caller works
                if n == 0:
                    yield value
                    continue
                if type(value) is not list or len(value) != n:
                    raise TaskError("ProtocolError",
                                    "a chunk result does not have one item per input", fn)
                for item in value:
                    yield _chunk_item(fn, item)
        finally:
            if in_flight:
                self._client.cancel_nowait([f for f, _ in in_flight])

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more submissions. wait: return once every task has resolved
        and the connection is closed. cancel_futures: cancel every task not
        yet on a worker (on this side, and through the broker)."""
        _live_executors.discard(self)
        self._client.shutdown(wait, cancel_futures)

    def stats(self, timeout=5.0):
        """The broker's counters (STATS): a dict such as {"workers": 2,
        "queued": 0, "completed": 41, ...}. Raises TimeoutError when the
        broker does not answer in time. Under CURVE a broker answers STATS
        only for the keys of its --admin-keys: with any other key this
        raises AuthError at once (the executor's tasks are not affected)."""
        return self._client.stats(timeout)

    def __repr__(self):
        return f"<cfutures.Executor {self._client.endpoints[self._client.ep_index]}>"


def _shutdown_at_exit():
    #  As ThreadPoolExecutor: at interpreter exit, work submitted to an
    #  executor nobody shut down still completes; but not waiting for a
    #  broker that is lost (or never heard) for liveness intervals: then
    #  what is pending is cancelled or fails with BrokerLost, as
    #  shutdown(wait=True) and cf_executor_destroy do, and the interpreter
    #  exits. Every executor is told first, so their waits run together.
    clients = [executor._client for executor in list(_live_executors)]
    for client in clients:
        client.shutdown(wait=False, cancel_futures=False)
        with client.lock:
            client.destroying = True
        client._wake()
    for client in clients:
        client.shutdown(wait=True, cancel_futures=False)


if hasattr(threading, "_register_atexit"):
    threading._register_atexit(_shutdown_at_exit)
else:                                       # pragma: no cover
    import atexit
    atexit.register(_shutdown_at_exit)
