"""The cf/1 wire protocol (docs/protocol.md) in Python: the only module of
the package that touches frames.

A message is three ZeroMQ frames, ``[b"cf/1", COMMAND, body]``, the body
one msgpack value. Encoding builds those frames; decoding checks the
version frame first, reads at most MAX_FRAMES frames of a message (the rest
is drained and dropped), decodes the body with msgpack limits derived from
the protocol's (so no count or length can make it allocate more than the
bytes present allow), and validates every field's exact type and range
before anything else sees it. Anything that breaks the specification raises
Malformed, which callers count and drop: nothing a peer sends can raise
anything else out of decode().

Decoded messages are plain tuples, listed per command in decode()'s
docstring. The msgpack documents inside ``args`` and result values are
decoded separately (unpack_value), so one bad value fails one task, never a
whole batch.

Texts (function names, error types and messages, hosts) are decoded with
invalid UTF-8 replaced rather than refused: the C side does not check UTF-8,
and refusing a RESULT batch over one odd byte in one error message would
leave every future of that batch waiting.

Routing by function (issue 10), additive to cf/1: a SUBMIT task may carry
two more fields, priority and wait_ms (submit_task() writes them only when
one is not 0, so brokers older than them keep serving everyone who does
not use them); READY may carry a 6th field, the functions the worker serves
(nil: every function); FUNCTIONS [functions] replaces that list later.
"""

import msgpack
import zmq

VERSION = b"cf/1"

#  Limits, with the names of core/cf_proto.h and core/cf_mp.h.
MAX_FRAME = 64 * 1024 * 1024        # CF_PROTO_MAX_FRAME: body bytes
MAX_FRAMES = 8                      # CF_PROTO_MAX_FRAMES, routing id included
MAX_BATCH = 65536                   # CF_PROTO_MAX_BATCH: items in one batch
MAX_NAME = 255                      # CF_PROTO_MAX_NAME: function name bytes
MAX_TEXT = 4096                     # CF_PROTO_MAX_TEXT: error texts, host, reasons
MAX_STATS = 64                      # CF_PROTO_MAX_STATS: pairs in a STATS reply
MAX_FUNCTIONS = 4096                # names in READY's function list and in FUNCTIONS
MAX_PARTIAL = 64 * 1024             # CF_PROTO_MAX_PARTIAL: a PROGRESS partial value
#  Socket options (docs/protocol.md, section 1).
LINGER_MS = 100
MAX_MSG_SIZE = MAX_FRAME + 4096
HANDSHAKE_IVL_MS = 5000
HWM = 1000

UINT32_MAX = 2 ** 32 - 1
UINT64_MAX = 2 ** 64 - 1
INT32_MIN, INT32_MAX = -2 ** 31, 2 ** 31 - 1

#  Result statuses.
OK, ERROR, CANCELLED, BUSY = 0, 1, 2, 3
#  SUBMIT flags.
RETRY_ON_ERROR = 0x1
FLAG_PROGRESS = 0x2                 # the client reads PROGRESS for this task
#  READY features (CF_PROTO_FEATURE_*): BEGUN, the worker sends STARTED when
#  a task's function begins and answers the broker's CANCEL; STOP, it takes
#  STOP.
FEATURE_BEGUN = 0x1
FEATURE_STOP = 0x4

SUBMIT = b"SUBMIT"
CANCEL = b"CANCEL"
STARTED = b"STARTED"
RESULT = b"RESULT"
TASK = b"TASK"
READY = b"READY"
CREDIT = b"CREDIT"
HEARTBEAT = b"HEARTBEAT"
DISCONNECT = b"DISCONNECT"
STATS = b"STATS"
ERROR_CMD = b"ERROR"
FUNCTIONS = b"FUNCTIONS"
STOP = b"STOP"
PROGRESS = b"PROGRESS"
COMMANDS = frozenset({SUBMIT, CANCEL, STARTED, RESULT, TASK, READY, CREDIT,
                      HEARTBEAT, DISCONNECT, STATS, ERROR_CMD, FUNCTIONS, STOP, PROGRESS})

#  The ERROR texts with a meaning (broker/cf_broker.h).
UNKNOWN_CLIENT = "unknown client"
UNKNOWN_WORKER = "unknown worker"
NOT_ALLOWED = "not allowed: this key's role may not use this endpoint"
KEY_REVOKED = "not allowed: this key was revoked"
#  A CURVE broker's answer to STATS from a key not on --admin-keys: it
#  refuses that request only, nothing else of the client.
STATS_NEEDS_ADMIN = "not allowed: STATS needs an admin key"

#  The text of the ERROR a broker answers a message it cannot read with
#  (its first words; more may follow).
MALFORMED_TEXT = "malformed message"
#  The error type of a task no connected worker serves (issue 10).
NO_WORKER = "NoWorker"
#  The error type of a task stopped by STOP (cf_future_stop, CF_INTERRUPTED).
INTERRUPTED = "Interrupted"

#  Envelope bytes per SUBMIT task beyond its name and arguments (array
#  header, id, str/bin headers, retries, timeout, flags, priority,
#  wait_ms: 42 at most), rounded up.
TASK_OVERHEAD = 48
#  Function names starting with this are the workers' own (cf.chunk).
RESERVED_PREFIX = "cf."
CHUNK_FUNCTION = "cf.chunk"


class Malformed(Exception):
    """A message that breaks the cf/1 specification; the text says how."""


def setup_socket(sock, router=False):
    """The options docs/protocol.md recommends, on a new socket."""
    sock.setsockopt(zmq.LINGER, LINGER_MS)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_MSG_SIZE)
    sock.setsockopt(zmq.HANDSHAKE_IVL, HANDSHAKE_IVL_MS)
    sock.setsockopt(zmq.SNDHWM, HWM)
    sock.setsockopt(zmq.RCVHWM, HWM)
    if router:
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)


# ---------------------------------------------------------------------------
#  Encoding

_packer_options = dict(use_bin_type=True)


def pack(obj):
    """One msgpack document (str as str, bytes as bin)."""
    return msgpack.packb(obj, **_packer_options)


def frames(command, body):
    """The three frames of a message; body is packed here."""
    return [VERSION, command, msgpack.packb(body, **_packer_options)]


def send(sock, command, body):
    """Sends one message without blocking. True when ZeroMQ took it, False
    when the socket is at its high-water mark (zmq.Again); other zmq
    errors propagate. Taken never means delivered."""
    try:
        sock.send_multipart(frames(command, body), flags=zmq.DONTWAIT, copy=True)
        return True
    except zmq.Again:
        return False


def send_packed(sock, command, body_bytes):
    """As send(), with a body already packed."""
    try:
        sock.send_multipart([VERSION, command, body_bytes], flags=zmq.DONTWAIT, copy=True)
        return True
    except zmq.Again:
        return False


def text_clip(text, limit=MAX_TEXT):
    """text cut to at most limit UTF-8 bytes at a character boundary."""
    if len(text) * 4 <= limit:
        return text
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def check_function_name(name, reserved_ok=False):
    """Raises ValueError (TypeError for a non-str) unless name can travel as
    a function name: 1..255 UTF-8 bytes without NUL (the broker refuses
    either), not starting with "cf." unless reserved_ok."""
    if not isinstance(name, str):
        raise TypeError(f"a function name is a str, not {type(name).__name__}")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError("a function name is UTF-8: this one holds a lone surrogate") from None
    if "\0" in name:
        raise ValueError("a function name holds no NUL character")
    if size < 1 or size > MAX_NAME:
        raise ValueError(f"a function name is 1 to {MAX_NAME} bytes, this one is {size}")
    if not reserved_ok and name.startswith(RESERVED_PREFIX):
        raise ValueError(f"function names starting with {RESERVED_PREFIX!r} are reserved")


def check_function_list(names):
    """Raises ValueError (TypeError for a wrong type) unless names can
    travel as READY's function list or a FUNCTIONS body: a list of at most
    MAX_FUNCTIONS function names (reserved ones included: a worker lists
    cf.chunk, which the broker routes by that name like any other)."""
    if type(names) is not list:
        raise TypeError(f"a function list is a list, not {type(names).__name__}")
    if len(names) > MAX_FUNCTIONS:
        raise ValueError(f"a function list holds at most {MAX_FUNCTIONS} names, this one "
                         f"{len(names)}")
    for name in names:
        check_function_name(name, reserved_ok=True)


def submit_task(task_id, function, args, retries, timeout_ms, flags, priority=0, wait_ms=0):
    """One SUBMIT task as a tuple: the 6 fields of cf/1, or the 8 of issue
    10 when priority or wait_ms is not 0 (so a broker older than them
    refuses only the tasks that use them)."""
    if priority or wait_ms:
        return (task_id, function, args, retries, timeout_ms, flags, priority, wait_ms)
    return (task_id, function, args, retries, timeout_ms, flags)


def ready_body(credit, host, pid, threads, features, functions=None):
    """READY [credit, host, pid, threads, features] (5 fields, every
    function served) or, with functions a list of names, the 6-field READY
    of issue 10. Checks the list (check_function_list)."""
    if functions is None:
        return [credit, host, pid, threads, features]
    check_function_list(functions)
    return [credit, host, pid, threads, features, functions]


def stop_item(task_id, grace_ms):
    """One STOP item, [id, grace_ms]."""
    return [task_id, grace_ms]


def progress_item(task_id, seq, done, total, partial):
    """One PROGRESS report, [id, seq, done, total, partial bin | None]."""
    return [task_id, seq, done, total, partial]


def functions_body(functions):
    """FUNCTIONS [functions]: the worker's new function list."""
    check_function_list(functions)
    return [functions]


# ---------------------------------------------------------------------------
#  Receiving and decoding

def recv(sock):
    """Reads one message without blocking: its frames (bytes), or None when
    none is waiting. A message of more than MAX_FRAMES frames is read to its
    end and Malformed is raised; its frames are not kept."""
    try:
        first = sock.recv(zmq.DONTWAIT, copy=True)
    except zmq.Again:
        return None
    parts = [first]
    too_many = False
    #  The parts of a message arrive together: once the first is here none
    #  of the others can be EAGAIN.
    while sock.getsockopt(zmq.RCVMORE):
        part = sock.recv(copy=True)
        if len(parts) < MAX_FRAMES:
            parts.append(part)
        else:
            too_many = True
    if too_many:
        raise Malformed(f"more than {MAX_FRAMES} frames")
    return parts


def _unpack_body(body):
    try:
        return msgpack.unpackb(
            body, raw=False, unicode_errors="replace", strict_map_key=False,
            use_list=True, max_str_len=MAX_TEXT, max_bin_len=MAX_FRAME,
            max_array_len=MAX_BATCH, max_map_len=MAX_STATS, max_ext_len=0)
    except Exception as e:      # ExtraData, StackError, FormatError, TypeError, ...
        raise Malformed(f"body is not one msgpack value ({type(e).__name__}: {e})"[:200]) from None


def _uint(v, limit, what):
    if type(v) is not int or v < 0 or v > limit:
        raise Malformed(f"{what} is not an integer from 0 to {limit}")
    return v


def _int32(v, what):
    if type(v) is not int or v < INT32_MIN or v > INT32_MAX:
        raise Malformed(f"{what} is not an int32")
    return v


def _str(v, lo, hi, what):
    if type(v) is not str:
        raise Malformed(f"{what} is not a str")
    #  len() counts characters; a character is 1 to 4 bytes (replacement
    #  characters 3), so only near the limits is the UTF-8 size needed.
    n = len(v)
    if n * 4 > hi or n < lo:
        size = len(v.encode("utf-8", "replace"))
        if size < lo or size > hi:
            raise Malformed(f"{what} is not {lo} to {hi} bytes")
    return v


def _bin(v, what):
    if type(v) is not bytes:
        raise Malformed(f"{what} is not a bin")
    return v


def _array(v, lo, hi, what):
    if type(v) is not list or len(v) < lo or len(v) > hi:
        raise Malformed(f"{what} is not an array of {lo}..{hi} items")
    return v


def _name(v, what):
    """A function name: a str of 1..MAX_NAME bytes without NUL."""
    _str(v, 1, MAX_NAME, what)
    if "\0" in v:
        raise Malformed(f"{what} holds a NUL")
    return v


def _names(v, what):
    """A function list: an array of at most MAX_FUNCTIONS names."""
    return [_name(n, "a function name of " + what)
            for n in _array(v, 0, MAX_FUNCTIONS, what)]


def _task(item, submit):
    if submit:
        if type(item) is not list or len(item) not in (6, 8):
            raise Malformed("a SUBMIT task is not an array of 6 or 8 fields")
        fields = (_uint(item[0], UINT64_MAX, "task id"),
                  _str(item[1], 1, MAX_NAME, "function"),
                  _bin(item[2], "args"),
                  _int32(item[3], "retries"),
                  _uint(item[4], UINT32_MAX, "timeout_ms"),
                  _uint(item[5], UINT32_MAX, "flags"))
        if len(item) == 8:
            fields += (_int32(item[6], "priority"), _uint(item[7], UINT32_MAX, "wait_ms"))
        return fields
    _array(item, 4, 4, "a TASK task")
    return (_uint(item[0], UINT64_MAX, "task id"),
            _str(item[1], 1, MAX_NAME, "function"),
            _bin(item[2], "args"),
            _uint(item[3], UINT32_MAX, "timeout_ms"))


def _result(item):
    _array(item, 2, 3, "a result")
    task_id = _uint(item[0], UINT64_MAX, "result id")
    status = item[1]
    if status == OK and type(status) is int:
        if len(item) != 3:
            raise Malformed("a success result has no value")
        return (task_id, OK, _bin(item[2], "result value"))
    if status == ERROR and type(status) is int:
        if len(item) != 3:
            raise Malformed("an error result has no error")
        e = _array(item[2], 5, 5, "an error")
        return (task_id, ERROR, (_str(e[0], 1, MAX_TEXT, "error type"),
                                 _str(e[1], 0, MAX_TEXT, "error message"),
                                 _str(e[2], 0, MAX_NAME, "error function"),
                                 _str(e[3], 0, MAX_TEXT, "error host"),
                                 _int32(e[4], "error pid")))
    if (status == CANCELLED or status == BUSY) and type(status) is int:
        if len(item) != 2:
            raise Malformed("a cancelled or busy result has extra fields")
        return (task_id, status, None)
    raise Malformed("unknown result status")


def _stop(item):
    _array(item, 2, 2, "a STOP item")
    return (_uint(item[0], UINT64_MAX, "STOP id"), _uint(item[1], UINT32_MAX, "grace_ms"))


def _progress(item):
    _array(item, 5, 5, "a PROGRESS report")
    partial = item[4]
    if partial is not None:
        if type(partial) is not bytes or not 1 <= len(partial) <= MAX_PARTIAL:
            raise Malformed(f"a partial value is not nil or a bin of 1..{MAX_PARTIAL} bytes")
    return (_uint(item[0], UINT64_MAX, "PROGRESS id"), _uint(item[1], UINT32_MAX, "seq"),
            _uint(item[2], UINT64_MAX, "done"), _uint(item[3], UINT64_MAX, "total"), partial)


def decode(parts):
    """Decodes the frames of one message (after any routing id) into
    (command, fields):

        SUBMIT      [(id, function, args, retries, timeout_ms, flags), ...],
                    each task with (..., priority, wait_ms) after flags when
                    it came with the 8 fields of issue 10
        TASK        [(id, function, args, timeout_ms), ...]
        RESULT      [(id, status, value bytes | error tuple | None), ...],
                    error tuple = (type, message, function, host, pid)
        CANCEL, STARTED   [id, ...]
        READY       (credit, host, pid, threads or None, features or None,
                     functions: [name, ...], or None for every function)
        FUNCTIONS   [name, ...]
        STOP        [(id, grace_ms), ...]
        PROGRESS    [(id, seq, done, total, partial bytes | None), ...]
        CREDIT      credit
        HEARTBEAT   (boot, ivl_ms)
        DISCONNECT  reason
        STATS       None (a request) or {name: value} (a reply)
        ERROR       (ref, text)

    Raises Malformed, and nothing else, for anything that breaks the
    specification."""
    if len(parts) != 3:
        raise Malformed(f"{len(parts)} frames instead of 3")
    if parts[0] != VERSION:
        raise Malformed("not a cf/1 message")
    command = bytes(parts[1])
    if command not in COMMANDS:
        raise Malformed("unknown command")
    body = parts[2]
    if len(body) == 0 or len(body) > MAX_FRAME:
        raise Malformed("body empty or over the limit")
    obj = _unpack_body(body)
    try:
        return command, _fields(command, obj)
    except Malformed:
        raise
    except Exception as e:      # a shape this validation missed: still malformed
        raise Malformed(f"{command.decode()}: {type(e).__name__}") from None


def _results(obj):
    out = []
    append = out.append
    for item in _array(obj, 0, MAX_BATCH, "RESULT body"):
        #  The common case, a success, checked inline; anything else in full.
        if type(item) is list and len(item) == 3 and item[1] == 0 \
                and type(item[1]) is int and type(item[0]) is int \
                and 0 <= item[0] <= UINT64_MAX and type(item[2]) is bytes:
            append((item[0], OK, item[2]))
        else:
            append(_result(item))
    return out


def _fields(command, obj):
    if command == RESULT:
        return _results(obj)
    if command == STARTED or command == CANCEL:
        return [_uint(i, UINT64_MAX, "id") for i in _array(obj, 0, MAX_BATCH, "id list")]
    if command == TASK or command == SUBMIT:
        submit = command == SUBMIT
        return [_task(t, submit) for t in _array(obj, 0, MAX_BATCH, "task list")]
    if command == HEARTBEAT:
        _array(obj, 2, 2, "HEARTBEAT body")
        return (_uint(obj[0], UINT64_MAX, "boot"), _uint(obj[1], UINT32_MAX, "ivl_ms"))
    if command == READY:
        _array(obj, 3, 6, "READY body")
        return (_uint(obj[0], UINT32_MAX, "credit"), _str(obj[1], 0, MAX_TEXT, "host"),
                _int32(obj[2], "pid"),
                _uint(obj[3], UINT32_MAX, "threads") if len(obj) >= 4 else None,
                _uint(obj[4], UINT32_MAX, "features") if len(obj) >= 5 else None,
                None if len(obj) < 6 or obj[5] is None else _names(obj[5], "READY's functions"))
    if command == STOP:
        return [_stop(item) for item in _array(obj, 0, MAX_BATCH, "STOP body")]
    if command == PROGRESS:
        return [_progress(item) for item in _array(obj, 0, MAX_BATCH, "PROGRESS body")]
    if command == FUNCTIONS:
        _array(obj, 1, 1, "FUNCTIONS body")
        return _names(obj[0], "FUNCTIONS' list")
    if command == CREDIT:
        _array(obj, 1, 1, "CREDIT body")
        return _uint(obj[0], UINT32_MAX, "credit")
    if command == DISCONNECT:
        _array(obj, 1, 1, "DISCONNECT body")
        return _str(obj[0], 0, MAX_TEXT, "reason")
    if command == ERROR_CMD:
        _array(obj, 2, 2, "ERROR body")
        return (_uint(obj[0], UINT64_MAX, "ref"), _str(obj[1], 0, MAX_TEXT, "text"))
    if command == STATS:
        if type(obj) is list:
            if obj:
                raise Malformed("a STATS request is an empty array")
            return None
        if type(obj) is not dict or len(obj) > MAX_STATS:
            raise Malformed("a STATS reply is a map of at most 64 pairs")
        return {_str(k, 1, MAX_NAME, "stat name"): _uint(v, UINT64_MAX, "stat value")
                for k, v in obj.items()}
    raise Malformed("unknown command")      # not reached: COMMANDS was checked


# ---------------------------------------------------------------------------
#  Values inside args and results

class BadValue(Exception):
    """An args or result document that is not one valid msgpack value."""


def unpack_value(data):
    """One msgpack value from args or a result (bounded by len(data) and by
    msgpack's own nesting limit). Raises BadValue."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
    except Exception as e:
        raise BadValue(f"{type(e).__name__}: {e}"[:300]) from None
