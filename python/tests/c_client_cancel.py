"""The C client (libcfutures through ctypes) against whatever workers the
broker has, for test_worker.py: run in its own process, so a sanitizer
build whose runtime cannot be loaded into Python fails here, not in pytest.

    c_client_cancel.py LIBCFUTURES ENDPOINT DIR N

Submits N gate tasks (DIR/started-I, DIR/release), prints "submitted",
waits for a line on stdin (the test starts the workers then), waits for a
task to start, then prints one JSON line: which futures report running,
what cancel() of each one not started returned, and the results of the
rest once DIR/release exists.
"""

import ctypes
import json
import os
import pathlib
import sys
import time

import msgpack


def main():
    lib_path, endpoint, directory, n = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3]), \
        int(sys.argv[4])
    lib = ctypes.CDLL(lib_path)
    vp = ctypes.c_void_p
    lib.cf_executor_connect.restype = vp
    lib.cf_executor_connect.argtypes = [ctypes.c_char_p, vp]
    lib.cf_submit_raw.restype = vp
    lib.cf_submit_raw.argtypes = [vp, vp, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    for name in ("cf_future_running", "cf_future_cancel", "cf_future_cancelled",
                 "cf_future_done"):
        getattr(lib, name).restype = ctypes.c_bool
        getattr(lib, name).argtypes = [vp]
    lib.cf_future_int.restype = ctypes.c_int
    lib.cf_future_int.argtypes = [vp, ctypes.c_int, ctypes.POINTER(ctypes.c_int64)]
    lib.cf_future_release.argtypes = [ctypes.POINTER(vp)]
    lib.cf_executor_destroy.argtypes = [ctypes.POINTER(vp)]

    ex = lib.cf_executor_connect(endpoint.encode(), None)
    if not ex:
        print("cf_executor_connect failed", file=sys.stderr)
        return 1
    release = directory / "release"
    marks = [directory / f"started-{i}" for i in range(n)]
    futures = []
    for mark in marks:
        args = msgpack.packb([str(mark), str(release)], use_bin_type=True)
        f = lib.cf_submit_raw(ex, None, b"gate", args, len(args))
        if not f:
            print("cf_submit_raw failed", file=sys.stderr)
            return 1
        futures.append(f)
    print("submitted", flush=True)
    sys.stdin.readline()

    deadline = time.monotonic() + 20
    while not any(m.exists() for m in marks) or \
            not any(lib.cf_future_running(f) for f in futures):
        if time.monotonic() > deadline:
            print("no task started", file=sys.stderr)
            return 1
        time.sleep(0.005)
    #  STARTED of anything that wrongly reports running has had time to come.
    time.sleep(0.3)
    report = {"running": [lib.cf_future_running(f) for f in futures],
              "started": [m.exists() for m in marks], "cancel": {}, "results": {}}
    for i, f in enumerate(futures):
        if not marks[i].exists():
            report["cancel"][i] = [lib.cf_future_cancel(f), lib.cf_future_cancelled(f)]
    release.touch()
    for i, f in enumerate(futures):
        if str(i) in report["cancel"] or i in report["cancel"]:
            continue
        value = ctypes.c_int64()
        rc = lib.cf_future_int(f, 30000, ctypes.byref(value))
        report["results"][i] = value.value if rc == 0 else f"error {rc}"
    report["ran"] = [m.exists() for m in marks]
    for f in futures:
        lib.cf_future_release(ctypes.byref(vp(f)))
    handle = vp(ex)
    lib.cf_executor_destroy(ctypes.byref(handle))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
