"""bench/py_cf_client.py --quick runs and reports every figure (a smoke
test, like the bench-smoke tests of the C benchmark: never how fast)."""

import os
import subprocess
import sys

import pytest

from conftest import BENCH_TASKS_LIB, BROKER_BIN, ROOT, WORKER_BIN


def test_the_python_client_benchmark_reports_every_figure():
    if not BENCH_TASKS_LIB.exists():
        pytest.skip(f"libbench_tasks.so is not built ({BENCH_TASKS_LIB})")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "py_cf_client.py"), "--quick",
         "--broker", str(BROKER_BIN), "--worker", str(WORKER_BIN),
         "--tasks-lib", str(BENCH_TASKS_LIB)],
        capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = [line.split()[0] for line in proc.stdout.splitlines() if not line.startswith("#")]
    assert names == ["pyclient.noop.submit", "pyclient.noop.map1", "pyclient.prime",
                     "ppe.noop.submit", "ppe.noop.map1", "ppe.prime",
                     "ratio.noop.submit", "ratio.noop.map1", "ratio.prime"], proc.stdout
    assert all(("MET" in line or "MISSED" in line)
               for line in proc.stdout.splitlines() if line.startswith("ratio."))
