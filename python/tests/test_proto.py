"""The cf/1 codec (cfutures._proto) and the key files (cfutures._keys),
without any daemon: documented bytes, every field's type and range, and
random garbage, which must raise Malformed and nothing else."""

import os
import random

import msgpack
import pytest
import zmq

from cfutures import _keys, _proto
from cfutures.errors import AuthError
from cfutures.worker import Worker

#  docs/protocol.md, section 10: the SUBMIT of slow_double(21), byte for byte.
DOCUMENTED_SUBMIT = bytes.fromhex(
    "dd00000001" "96" "cf1f2e3d4c5b6a7988" "ab736c6f775f646f75626c65" "c4029115"
    "03" "00" "00")


def test_the_documented_submit_decodes_to_its_fields():
    command, tasks = _proto.decode([b"cf/1", b"SUBMIT", DOCUMENTED_SUBMIT])
    assert command == _proto.SUBMIT
    assert tasks == [(0x1f2e3d4c5b6a7988, "slow_double", b"\x91\x15", 3, 0, 0)]
    #  Our encoder writes minimal headers; the same message decodes the same.
    ours = _proto.frames(_proto.SUBMIT, [list(tasks[0])])
    assert _proto.decode(ours) == (command, tasks)
    assert ours[2] == b"\x91" + DOCUMENTED_SUBMIT[5:]


def test_every_command_round_trips():
    cases = [
        (_proto.RESULT, [[1, 0, b"\x2a"], [2, 1, ["ValueError", "m", "f", "h", 7]], [3, 2],
                         [4, 3]],
         [(1, 0, b"\x2a"), (2, 1, ("ValueError", "m", "f", "h", 7)), (3, 2, None),
          (4, 3, None)]),
        (_proto.STARTED, [1, 2 ** 64 - 1], [1, 2 ** 64 - 1]),
        (_proto.CANCEL, [], []),
        (_proto.TASK, [[17, "f", b"\x90", 0]], [(17, "f", b"\x90", 0)]),
        (_proto.READY, [4, "node", 42, 4, 1, ["f", "g"]], (4, "node", 42, 4, 1, ["f", "g"])),
        (_proto.READY, [4, "node", 42, 4, 1, None], (4, "node", 42, 4, 1, None)),
        (_proto.READY, [4, "node", 42, 4, 1, []], (4, "node", 42, 4, 1, [])),
        (_proto.READY, [4, "node", 42, 4, 1], (4, "node", 42, 4, 1, None)),
        (_proto.READY, [4, "node", 42, 4], (4, "node", 42, 4, None, None)),
        (_proto.READY, [4, "node", 42], (4, "node", 42, None, None, None)),
        (_proto.FUNCTIONS, [["f", "é" * 127]], ["f", "é" * 127]),
        (_proto.FUNCTIONS, [[]], []),
        (_proto.SUBMIT, [[1, "f", b"\x90", 3, 0, 1, -7, 300]],
         [(1, "f", b"\x90", 3, 0, 1, -7, 300)]),
        (_proto.CREDIT, [3], 3),
        (_proto.HEARTBEAT, [0x5eedc0ffee15600d, 1000], (0x5eedc0ffee15600d, 1000)),
        (_proto.DISCONNECT, ["bye"], "bye"),
        (_proto.STATS, [], None),
        (_proto.STATS, {"workers": 2, "queued": 0}, {"workers": 2, "queued": 0}),
        (_proto.ERROR_CMD, [0, "unknown client"], (0, "unknown client")),
        (_proto.STOP, [[7, 0], [2 ** 64 - 1, 2 ** 32 - 1]], [(7, 0), (2 ** 64 - 1, 2 ** 32 - 1)]),
        (_proto.STOP, [], []),
        (_proto.PROGRESS, [[7, 1, 5, 10, None], [8, 2 ** 32 - 1, 2 ** 64 - 1, 0, b"\x01"]],
         [(7, 1, 5, 10, None), (8, 2 ** 32 - 1, 2 ** 64 - 1, 0, b"\x01")]),
        (_proto.PROGRESS, [[7, 1, 0, 0, b"x" * _proto.MAX_PARTIAL]],
         [(7, 1, 0, 0, b"x" * _proto.MAX_PARTIAL)]),
    ]
    for command, body, expected in cases:
        assert _proto.decode(_proto.frames(command, body)) == (command, expected)


def test_non_minimal_headers_are_accepted():
    body = b"\xdd\x00\x00\x00\x02\x01\xcf\x00\x00\x00\x00\x00\x00\x00\x02"
    assert _proto.decode([b"cf/1", b"STARTED", body]) == (_proto.STARTED, [1, 2])
    stats = b"\xdf\x00\x00\x00\x01\xa1a\x05"
    assert _proto.decode([b"cf/1", b"STATS", stats]) == (_proto.STATS, {"a": 5})


MALFORMED = [
    [b"cf/1", b"STARTED"],
    [b"cf/2", b"STARTED", b"\x90"],
    [b"cf/1", b"started", b"\x90"],
    [b"cf/1", b"STARTED", b""],
    [b"cf/1", b"STARTED", b"\x90\x90"],
    [b"cf/1", b"STARTED", b"\xdd\xff\xff\xff\xff"],
    [b"cf/1", b"STARTED", b"\x91" * 3000 + b"\x01"],
    [b"cf/1", b"STARTED", msgpack.packb([True])],
    [b"cf/1", b"STARTED", msgpack.packb([-1])],
    [b"cf/1", b"STARTED", msgpack.packb([2 ** 64 - 1]) + b"\x00"],
    [b"cf/1", b"RESULT", msgpack.packb([[1, False, b"x"]])],
    [b"cf/1", b"RESULT", msgpack.packb([[1, 0]])],
    [b"cf/1", b"RESULT", msgpack.packb([[1, 2, b"x"]])],
    [b"cf/1", b"RESULT", msgpack.packb([[1, 0, "str"]], use_bin_type=True)],
    [b"cf/1", b"RESULT", msgpack.packb([[1, 1, ["", "m", "f", "h", 1]]])],
    [b"cf/1", b"RESULT", msgpack.packb([[1, 1, ["T", "m", "f", "h", 2 ** 31]]])],
    [b"cf/1", b"RESULT", msgpack.packb([[1, 1, ["T", "m" * 4097, "f", "h", 1]]])],
    [b"cf/1", b"TASK", msgpack.packb([[1, "", b"", 0]], use_bin_type=True)],
    [b"cf/1", b"TASK", msgpack.packb([[1, "f" * 256, b"", 0]], use_bin_type=True)],
    [b"cf/1", b"TASK", msgpack.packb([[1, "f", b"", 2 ** 32]], use_bin_type=True)],
    [b"cf/1", b"READY", msgpack.packb([1, "h"])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, 1])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, ["f"], 1])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, [""]])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, ["f" * 256]])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, ["f\0g"]])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, [b"f"]], use_bin_type=True)],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, "f"])],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, 1, [str(i) for i in range(4097)]])],
    [b"cf/1", b"FUNCTIONS", msgpack.packb([None])],
    [b"cf/1", b"FUNCTIONS", msgpack.packb([])],
    [b"cf/1", b"FUNCTIONS", msgpack.packb(["f"])],
    [b"cf/1", b"FUNCTIONS", msgpack.packb([["f"], ["g"]])],
    [b"cf/1", b"FUNCTIONS", msgpack.packb([[1]])],
    [b"cf/1", b"FUNCTIONS", msgpack.packb([[str(i) for i in range(4097)]])],
    [b"cf/1", b"SUBMIT", msgpack.packb([[1, "f", b"", 0, 0, 0, 0]], use_bin_type=True)],
    [b"cf/1", b"SUBMIT", msgpack.packb([[1, "f", b"", 0, 0, 0, 0, 0, 0]], use_bin_type=True)],
    [b"cf/1", b"SUBMIT", msgpack.packb([[1, "f", b"", 0, 0, 0, 2 ** 31, 0]], use_bin_type=True)],
    [b"cf/1", b"SUBMIT", msgpack.packb([[1, "f", b"", 0, 0, 0, 0, -1]], use_bin_type=True)],
    [b"cf/1", b"SUBMIT", msgpack.packb([[1, "f", b"", 0, 0, 0, 0, 2 ** 32]], use_bin_type=True)],
    [b"cf/1", b"SUBMIT", msgpack.packb([[1, "f", b"", 0, 0, 0, 1.0, 0]], use_bin_type=True)],
    [b"cf/1", b"READY", msgpack.packb([1, "h", 1, 1, -1])],
    [b"cf/1", b"HEARTBEAT", msgpack.packb([1])],
    [b"cf/1", b"HEARTBEAT", msgpack.packb([1.0, 2])],
    [b"cf/1", b"STATS", msgpack.packb([1])],
    [b"cf/1", b"STATS", msgpack.packb({"": 1})],
    [b"cf/1", b"STATS", msgpack.packb({str(i): i for i in range(65)})],
    [b"cf/1", b"ERROR", msgpack.packb([0, "x", 1])],
    [b"cf/1", b"DISCONNECT", msgpack.packb([b"bin"], use_bin_type=True)],
    [b"cf/1", b"STARTED", b"\xd4\x01\x00"],          # an extension type in the envelope
    [b"cf/1", b"STOP", msgpack.packb([7, 0])],
    [b"cf/1", b"STOP", msgpack.packb([[7]])],
    [b"cf/1", b"STOP", msgpack.packb([[7, 0, 0]])],
    [b"cf/1", b"STOP", msgpack.packb([[7, -1]])],
    [b"cf/1", b"STOP", msgpack.packb([[7, 2 ** 32]])],
    [b"cf/1", b"STOP", b"\xdd\xff\xff\xff\xff"],
    [b"cf/1", b"PROGRESS", msgpack.packb([[7, 1, 5, 10]])],
    [b"cf/1", b"PROGRESS", msgpack.packb([[7, 2 ** 32, 5, 10, None]])],
    [b"cf/1", b"PROGRESS", msgpack.packb([[7, 1, -5, 10, None]])],
    [b"cf/1", b"PROGRESS", msgpack.packb([[7, 1, 5, 10, "str"]], use_bin_type=True)],
    [b"cf/1", b"PROGRESS", msgpack.packb([[7, 1, 5, 10, b""]], use_bin_type=True)],
    [b"cf/1", b"PROGRESS", msgpack.packb([[7, 1, 5, 10, b"x" * (_proto.MAX_PARTIAL + 1)]],
                                         use_bin_type=True)],
]


@pytest.mark.parametrize("parts", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_messages_are_refused(parts):
    with pytest.raises(_proto.Malformed):
        _proto.decode(parts)


def test_invalid_utf8_in_texts_is_replaced_not_fatal():
    body = b"\x92\x00\xa3a\xffb"
    command, (ref, text) = _proto.decode([b"cf/1", b"ERROR", body])
    assert ref == 0 and text == "a\ufffdb"


def test_random_garbage_raises_only_malformed():
    rng = random.Random(13)
    commands = sorted(_proto.COMMANDS)
    valid = _proto.frames(_proto.RESULT, [[1, 1, ["T", "m", "f", "h", 1]], [2, 0, b"\x01"]])[2]
    for i in range(3000):
        if i % 2:
            body = bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 64)))
        else:
            body = bytearray(valid)
            for _ in range(rng.randrange(1, 4)):
                body[rng.randrange(len(body))] = rng.getrandbits(8)
            body = bytes(body[:rng.randrange(1, len(body) + 1)])
        try:
            _proto.decode([b"cf/1", rng.choice(commands), body])
        except _proto.Malformed:
            pass


def test_values_outside_the_envelope_fail_alone():
    assert _proto.unpack_value(b"\x92\x01\xa1x") == [1, "x"]
    for bad in (b"", b"\xc1", b"\x92\x01", b"\x01\x02", b"\xa1\xff", b"\x91" * 3000 + b"\x00"):
        with pytest.raises(_proto.BadValue):
            _proto.unpack_value(bad)


def test_function_names_are_checked():
    _proto.check_function_name("f")
    _proto.check_function_name("é" * 127)
    for name in ("", "é" * 128, "cf.chunk", "cf.anything", "f\0g", "f\ud800"):
        with pytest.raises(ValueError):
            _proto.check_function_name(name)
    with pytest.raises(TypeError):
        _proto.check_function_name(b"f")
    _proto.check_function_name("cf.chunk", reserved_ok=True)


# ---------------------------------------------------------------------------
#  Issue 10: SUBMIT's priority and wait_ms, READY's functions, FUNCTIONS

def test_submit_tasks_take_the_longer_form_only_when_they_need_it():
    assert _proto.submit_task(5, "f", b"\x90", 3, 0, 0) == (5, "f", b"\x90", 3, 0, 0)
    assert _proto.submit_task(5, "f", b"\x90", 3, 0, 0, 0, 0) == (5, "f", b"\x90", 3, 0, 0)
    assert _proto.submit_task(5, "f", b"\x90", 3, 0, 1, -2, 0) == \
        (5, "f", b"\x90", 3, 0, 1, -2, 0)
    assert _proto.submit_task(5, "f", b"\x90", 3, 0, 0, 0, 300) == \
        (5, "f", b"\x90", 3, 0, 0, 0, 300)
    #  The 8 fields, byte for byte after the 6 of the documented example.
    task = _proto.submit_task(0x1f2e3d4c5b6a7988, "slow_double", b"\x91\x15", 3, 0, 0,
                              2 ** 31 - 1, 2 ** 32 - 1)
    body = _proto.frames(_proto.SUBMIT, [task])[2]
    assert body == b"\x91\x98" + DOCUMENTED_SUBMIT[6:] + b"\xce\x7f\xff\xff\xff" \
        + b"\xce\xff\xff\xff\xff"
    assert _proto.decode([b"cf/1", b"SUBMIT", body])[1] == [task]
    low = _proto.frames(_proto.SUBMIT, [_proto.submit_task(1, "f", b"\x90", 0, 0, 0,
                                                            -2 ** 31, 1)])[2]
    assert low.endswith(b"\xd2\x80\x00\x00\x00\x01")
    assert _proto.decode([b"cf/1", b"SUBMIT", low])[1][0][6:] == (-2 ** 31, 1)


def test_the_client_turns_task_options_into_wire_fields():
    from cfutures.client import _task_options
    base = _task_options((0, 0, 0, 0, 0), {"retries": 3})
    assert base == (3, 0, 0, 0, 0)
    assert _task_options(base, {"priority": -5}) == (3, 0, 0, -5, 0)
    assert _task_options(base, {"no_worker_timeout": 0.3}) == (3, 0, 0, 0, 300)
    assert _task_options(base, {"no_worker_timeout": 0.0001}) == (3, 0, 0, 0, 1)
    assert _task_options(base, {"no_worker_timeout": None}) == base
    assert _task_options(base, {"priority": 2 ** 31 - 1, "timeout": 1.5,
                                "retry_on_error": True}) == (3, 1500, 1, 2 ** 31 - 1, 0)
    for bad in ({"priority": 2 ** 31}, {"priority": -2 ** 31 - 1},
                {"no_worker_timeout": -1}, {"no_worker_timeout": "1"},
                {"no_worker_timeout": 2 ** 32}):
        with pytest.raises(ValueError):
            _task_options(base, bad)
    for bad in ({"priority": 1.0}, {"priority": True}, {"priority": None}, {"wait_ms": 1}):
        with pytest.raises(TypeError):
            _task_options(base, bad)


def test_function_lists_are_checked_before_they_travel():
    assert _proto.ready_body(2, "h", 7, 2, 1) == [2, "h", 7, 2, 1]
    assert _proto.ready_body(2, "h", 7, 2, 1, ["a", "b"]) == [2, "h", 7, 2, 1, ["a", "b"]]
    assert _proto.functions_body(["a"]) == [["a"]]
    names = [f"f{i}" for i in range(_proto.MAX_FUNCTIONS)]
    assert _proto.decode(_proto.frames(_proto.FUNCTIONS, _proto.functions_body(names)))[1] \
        == names
    assert _proto.functions_body(["cf.chunk"]) == [["cf.chunk"]]
    for bad in (names + ["x"], [""], ["x" * 256], ["f\0"], ["f\ud800"]):
        with pytest.raises(ValueError):
            _proto.functions_body(bad)
        with pytest.raises(ValueError):
            _proto.ready_body(1, "h", 1, 1, 1, bad)
    for bad in (("a",), "a", [b"a"], [1]):
        with pytest.raises(TypeError):
            _proto.functions_body(bad)


def test_the_worker_lists_its_functions_in_ready():
    w = Worker({"b": len, "a": len, "é" * 100: len}, "tcp://127.0.0.1:9", threads=3)
    body = w._ready_body()
    #  cf.chunk first, as cf-worker lists it: the broker routes it by name.
    names = ["cf.chunk", "a", "b", "é" * 100]
    assert body == [3, w.host, os.getpid(), 3, _proto.FEATURE_BEGUN | _proto.FEATURE_STOP,
                    names]
    assert _proto.decode(_proto.frames(_proto.READY, body))[1][5] == names
    #  More names than a READY lists: every function is announced (5 fields).
    most = Worker({f"f{i}": len for i in range(_proto.MAX_FUNCTIONS - 1)}, "tcp://127.0.0.1:9")
    assert len(most._ready_body()[5]) == _proto.MAX_FUNCTIONS
    many = Worker({f"f{i}": len for i in range(_proto.MAX_FUNCTIONS)}, "tcp://127.0.0.1:9")
    assert len(many._ready_body()) == 5


def test_text_clip_cuts_at_a_character_boundary():
    assert _proto.text_clip("abc") == "abc"
    clipped = _proto.text_clip("é" * 3000)
    assert len(clipped.encode()) <= 4096 and clipped == "é" * 2048


# ---------------------------------------------------------------------------
#  The worker's task execution, without a broker

def test_chunk_results_have_one_item_per_input():
    w = Worker({"inv": lambda x: 1 / x}, "tcp://127.0.0.1:9")
    data = w._run_chunk(["inv", [[1], [0], "bad", [4]]])
    items = msgpack.unpackb(data, raw=False)
    assert items[0] == [0, 1.0] and items[3] == [0, 0.25]
    assert items[1][:3] == [1, "ZeroDivisionError", "division by zero"]
    assert items[1][3:] == [w.host, os.getpid()]
    assert items[2][:2] == [1, "TypeError"]


# ---------------------------------------------------------------------------
#  Key files

def _write(path, text, mode=0o600):
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_key_files_as_cf_keygen_writes_them(tmp_path):
    public, secret = zmq.curve_keypair()
    _write(tmp_path / "k.key", f"# cfutures public key: k\n{public.decode()}\n", 0o644)
    _write(tmp_path / "k.key_secret", f"# comment\n\n  {secret.decode()}  \r\n")
    assert _keys.read_public(tmp_path / "k.key") == public
    assert _keys.read_pair(tmp_path / "k.key_secret") == (public, secret)
    assert _keys.fingerprint(public) == public.decode()[:8]


def test_bad_key_files_are_refused_without_quoting_the_key(tmp_path):
    public, secret = zmq.curve_keypair()
    cases = {
        "empty": "",
        "comments": "# nothing\n",
        "two": f"{public.decode()}\n{public.decode()}\n",
        "short": public.decode()[:-1] + "\n",
        "bad": public.decode()[:-1] + "~\n",
        "big": "#" * 5000 + "\n",
    }
    for name, text in cases.items():
        path = _write(tmp_path / name, text, 0o644)
        with pytest.raises(ValueError) as info:
            _keys.read_public(path)
        assert public.decode() not in str(info.value)
    loose = _write(tmp_path / "loose.key_secret", secret.decode() + "\n", 0o644)
    with pytest.raises(AuthError) as info:
        _keys.read_pair(loose)
    assert "chmod 600" in str(info.value) and secret.decode() not in str(info.value)
    with pytest.raises(FileNotFoundError):
        _keys.read_public(tmp_path / "missing")
    with pytest.raises(ValueError):
        _keys.read_public(tmp_path)                 # a directory
    with pytest.raises(ValueError):
        _keys.load_client_keys(tmp_path / "x", None)
