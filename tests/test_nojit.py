"""The suite's small cases pass with numba's JIT disabled (the kernels as plain Python).

This runs the kernels' Python source, so a kernel whose compiled and interpreted
behaviour differ (typing, integer division, parallel reductions) is caught.

The interpreted run takes a minute or two and needs one core; it starts in the
background as soon as pytest has collected this test (conftest.py's
pytest_collection_finish calls start()), so on a machine with two cores it overlaps
the rest of the suite, and the test waits for it.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# modules whose kernels are small enough to run interpreted
NOJIT_MODULES = [
    "test_targets.py", "test_processes.py", "test_optim.py", "test_gradcheck.py",
    "test_nn.py", "test_losses.py", "test_score_model.py", "test_samplers.py",
    "test_gaussian_closed_form.py", "test_distances.py",
]
TIMEOUT = 900  # seconds, from the start of the interpreted run
_RUN = {}


def start():
    """Start the interpreted run in the background (once); its output goes to a temporary file."""
    if "process" in _RUN:
        return
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    cmd = [
        sys.executable, "-m", "pytest",
        *(str(TESTS / name) for name in NOJIT_MODULES),
        "-m", "not slow", "-p", "no:cacheprovider", "-q",
        # 20,000 particles through 20 steps each, 75 s interpreted; the sampler kernels they
        # use run interpreted in test_samplers.py's bit-for-bit tests
        "-k", "not test_closed_form_matches_sampler_monte_carlo",
    ]
    log = tempfile.TemporaryFile(mode="w+", encoding="utf-8")
    _RUN["log"] = log
    _RUN["process"] = subprocess.Popen(cmd, cwd=TESTS.parent, env=env, stdout=log, stderr=subprocess.STDOUT)


def stop():
    """Kill the interpreted run if it is still going (the session ended without this test)."""
    process = _RUN.get("process")
    if process is not None and process.poll() is None:
        process.kill()
        process.wait()


def test_suite_passes_without_jit():
    start()  # not started yet when this file is run on its own without conftest's hook
    process = _RUN["process"]
    try:
        code = process.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        stop()
        raise
    log = _RUN["log"]
    log.seek(0)
    output = log.read()
    if code != 0:
        print(output)
    assert code == 0, f"pytest with NUMBA_DISABLE_JIT=1 exited with {code}:\n{output[-3000:]}"
