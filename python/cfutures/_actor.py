"""The one sleep of the client's and the worker's background threads.

Each thread owns its socket and sleeps in a zmq Poller on it, its socket
monitor and the read end of a wake-up pipe that application (or execution)
threads write when they hand it work. This is the C actor's cf_actor_sleep
(core/cf_actor.h) for Python.
"""

import os

import zmq


def sleep(poller, wake_r, sock, timeout_ms):
    """Polls for at most timeout_ms (None: no limit) and empties the wake-up
    pipe when it fired. Returns (events, sock_events): events maps each
    ready socket or descriptor to its events. After a POLLOUT (the caller
    had asked for it while its sends were refused) the socket is polled for
    POLLIN only again."""
    events = dict(poller.poll(timeout_ms))
    if wake_r in events:
        try:
            while os.read(wake_r, 4096):
                pass
        except BlockingIOError:
            pass
    sock_events = events.get(sock, 0)
    if sock_events & zmq.POLLOUT:
        poller.modify(sock, zmq.POLLIN)
    return events, sock_events
