"""The exceptions of the cfutures package.

A task that failed on a worker (or that the broker failed: WorkerLost,
TimeoutError, ...) raises TaskError from Future.result(), carrying where it
happened. It is deliberately one class: the remote type is a string
(``error.type``), because it names an exception of another process, often
of another language. A remote "TimeoutError" is a TaskError, never the
builtin TimeoutError that ``result(timeout=...)`` raises when the caller's
own wait runs out, so the two cannot be confused.
"""


class TaskError(Exception):
    """A task failed remotely.

    Attributes: ``type`` (the remote error type, e.g. "ValueError",
    "WorkerLost", "UnknownFunction"), ``message``, ``function``, ``host``
    and ``pid`` (where it ran; "" and 0 when unknown).

    The runtime types (docs/protocol.md, section 9) come as the same
    class: from workers "UnknownFunction", "TypeError"; from the broker
    "WorkerLost", "TimeoutError", "ProtocolError", and "NoWorker" (no
    connected worker serves the task's function and its wait,
    ``no_worker_timeout``, ran out: routing by function, issue 10); from
    this client "BrokerLost" (shut down while the broker was unreachable:
    the task may or may not have run), "ExecutorDestroyed", "AuthError".
    """

    def __init__(self, type, message, function="", host="", pid=0):
        super().__init__(type, message, function, host, pid)
        self.type = type
        self.message = message
        self.function = function
        self.host = host
        self.pid = pid

    def __str__(self):
        where = ""
        if self.function:
            where = f" in {self.function}()"
        if self.host:
            where += f" on {self.host}" + (f" (pid {self.pid})" if self.pid else "")
        return f"{self.type}: {self.message}{where}"

    def __repr__(self):
        return (f"TaskError(type={self.type!r}, message={self.message!r}, "
                f"function={self.function!r}, host={self.host!r}, pid={self.pid!r})")

    def __reduce__(self):
        return (TaskError, (self.type, self.message, self.function, self.host, self.pid))


class Busy(RuntimeError):
    """Executor(max_outstanding=..., fail_when_full=True): a submission found
    max_outstanding tasks not done yet (the C library's CF_EBUSY)."""


class AuthError(PermissionError):
    """The broker refused this client's or worker's CURVE key (or its lack of
    one), or a secret key file is readable by others."""
