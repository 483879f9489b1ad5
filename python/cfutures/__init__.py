"""cfutures for Python: the concurrent.futures API over a cfutures cluster.

    import cfutures
    with cfutures.Executor("tcp://127.0.0.1:5555") as ex:
        print(list(ex.map("is_prime", [2, 4, 97])))     # [True, False, True]

Executor sends tasks (functions registered by name on the workers, called
with msgpack values) to a cf-broker over the cf/1 protocol
(docs/protocol.md), and returns real concurrent.futures.Future objects.
cfutures.worker serves Python functions to the same broker, for C and
Python clients alike (``python -m cfutures.worker --help``).
"""

import logging

from .client import Executor, Future
from .errors import AuthError, Busy, TaskError
from .registry import task

#  Silent unless the application configures logging (as the C library is
#  until it sets a handler): the loggers are cfutures.client and
#  cfutures.worker.
logging.getLogger("cfutures").addHandler(logging.NullHandler())

__all__ = ["Executor", "Future", "TaskError", "AuthError", "Busy", "task"]
__version__ = "0.1.0"
