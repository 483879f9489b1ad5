#!/usr/bin/env python3
"""The CTest entry of the Python tests (python/CMakeLists.txt): runs
pytest on python/tests against the daemons of the build that registered it
(CF_BROKER_BIN, CF_WORKER_BIN, CF_TASKS_LIB, CF_EXAMPLES_DIR, CF_KEYGEN_BIN
in the environment).

Exits 77, which CTest reports as skipped, with a line saying why, when this
interpreter lacks what the tests need (Python >= 3.9, pyzmq, msgpack,
pytest); never passes without running them. pytest's own exit status
otherwise, so "no tests collected" (5) fails.
"""

import os
import pathlib
import sys

SKIP = 77


def main():
    if sys.version_info < (3, 9):
        print(f"python_tests: SKIPPED: {sys.executable} is Python "
              f"{sys.version.split()[0]}, the package needs 3.9 or newer", flush=True)
        return SKIP
    missing = []
    for module in ("zmq", "msgpack", "pytest"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        print(f"python_tests: SKIPPED: {sys.executable} cannot import {', '.join(missing)} "
              f"(Debian: apt-get install python3-zmq python3-msgpack python3-pytest)",
              flush=True)
        return SKIP
    import pytest
    tests = pathlib.Path(__file__).resolve().parent
    #  Nothing written into the source tree.
    sys.dont_write_bytecode = True
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    return pytest.main(["-q", "-rfEsxX", "-p", "no:cacheprovider", str(tests)])


if __name__ == "__main__":
    sys.exit(main())
