"""cfutures for Python: the concurrent.futures API over a cfutures cluster.

    import cfutures
    with cfutures.Executor("tcp://127.0.0.1:5555") as ex:
        print(list(ex.map("is_prime", [2, 4, 97])))     # [True, False, True]

Executor sends tasks (functions registered by name on the workers, called
with msgpack values) to a cf-broker over the cf/1 protocol
(docs/protocol.md), and returns real concurrent.futures.Future objects.
cfutures.worker serves Python functions to the same broker, for C and
Python clients alike (``python -m cfutures.worker --help``); inside such a
function, cfutures.stop_requested() says whether the client asked it to
stop (Future.stop) and cfutures.report_progress() reports its progress
(Future.progress, Future.add_progress_callback).
"""

import logging

from ._task import current_task, report_progress, stop_requested
from .client import Executor, Future, Progress
from .errors import AuthError, Busy, TaskError
from .registry import task

#  Silent unless the application configures logging (as the C library is
#  until it sets a handler): the loggers are cfutures.client and
#  cfutures.worker.
logging.getLogger("cfutures").addHandler(logging.NullHandler())

__all__ = ["Executor", "Future", "Progress", "TaskError", "AuthError", "Busy", "task",
           "stop_requested", "report_progress", "current_task"]
__version__ = "0.1.0"
