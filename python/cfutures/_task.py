"""What a task function running on the Python worker may ask of it: whether
it was asked to stop, and reporting its progress (the C library's
cf_stop_requested, cf_task_progress and cf_task_partialf).

    import cfutures

    @cfutures.task
    def crunch(n):
        for i in range(n):
            if cfutures.stop_requested():
                return None                 # the future fails with Interrupted
            step(i)
            cfutures.report_progress(i + 1, n, partial={"last": i})
        return n

The worker sets the running task's Call in a context variable on the thread
that runs it (cfutures.current_task() returns it; a thread the task starts
itself sees it only when started in a copy of the context, e.g.
``contextvars.copy_context().run``, or when given the Call). Outside a task
stop_requested() is False and report_progress() does nothing, as the C
calls do when the executor takes no reports.
"""

import contextvars

from . import _proto

_UINT64_MAX = 2 ** 64 - 1
#  How often the worker sends a task's reports at most (seconds): the
#  latest one per interval (CF_TASK_REPORT_INTERVAL_MS).
REPORT_INTERVAL_S = 0.050

_current = contextvars.ContextVar("cfutures_task", default=None)


class Call:
    """The task running on this thread, as its worker sees it.

    stop_requested() and report_progress() are its two methods the task
    calls (the module functions of the same names call them on the current
    task). The other attributes are the worker's: it reads them under its
    own lock (``lock``)."""

    __slots__ = ("id", "function", "lock", "wake", "stop", "stop_seen", "done", "total",
                 "partial", "dirty", "seq", "next_send", "ended")

    def __init__(self, task_id, function, lock, wake):
        self.id = task_id
        self.function = function
        self.lock = lock            # the worker's lock, shared by its task threads
        self.wake = wake            # called (under lock) when a report becomes due
        self.stop = False           # STOP arrived for this task
        self.stop_seen = False      # stop_requested() said True: the outcome is Interrupted
        self.done = 0
        self.total = 0
        self.partial = None         # packed partial value not sent yet
        self.dirty = False          # a report not sent yet
        self.seq = 0                # the last seq sent
        self.next_send = 0.0        # monotonic time the next report may go
        self.ended = False          # its result is in the worker's hands

    def stop_requested(self):
        """True once the client asked this task to stop (Future.stop). The
        rule, as cf_stop_requested: once it returned True, the task's
        outcome is the error "Interrupted", whatever it returns or raises
        after; a task that never asks keeps its own outcome."""
        if self.stop:
            self.stop_seen = True
            return True
        return False

    def report_progress(self, done, total=0, partial=None):
        """Reports the task's progress: done of total units (total 0: not
        known), and optionally a partial value (one msgpack-encodable value
        of at most 64 KiB encoded: the client keeps the latest one it got,
        a state rather than a stream; None: no new partial value, the
        client keeps the one it has). Cheap: the worker keeps the latest
        report and sends at most one per task every 50 ms, and the task's
        last report before it returns reaches the client before its result.
        Raises ValueError (out of range, too big) or TypeError (not
        encodable); the task goes on if it catches them."""
        _report(self, done, total, partial)


def _report(call, done, total, partial):
    if type(done) is not int or not 0 <= done <= _UINT64_MAX:
        raise ValueError("done is an int from 0 to 2**64-1")
    if type(total) is not int or not 0 <= total <= _UINT64_MAX:
        raise ValueError("total is an int from 0 to 2**64-1 (0: not known)")
    data = None
    if partial is not None:
        try:
            data = _proto.pack(partial)
        except Exception as e:
            raise TypeError(f"a partial value cannot be encoded as msgpack: {e}") from None
        if len(data) > _proto.MAX_PARTIAL:
            raise ValueError(f"a partial value is at most {_proto.MAX_PARTIAL} bytes encoded, "
                             f"this one is {len(data)}")
    with call.lock:
        call.done = done
        call.total = total
        if data is not None:
            call.partial = data
        if not call.dirty:
            call.dirty = True
            call.wake(call)


def current_task():
    """The Call of the task running in this context, or None outside one."""
    return _current.get()


def stop_requested():
    """In a task on the Python worker: True once the client asked it to
    stop (see Call.stop_requested); False outside a task."""
    call = _current.get()
    return call is not None and call.stop_requested()


def report_progress(done, total=0, partial=None):
    """In a task on the Python worker: reports progress (see
    Call.report_progress). Outside a task: does nothing."""
    call = _current.get()
    if call is not None:
        _report(call, done, total, partial)
