"""The suite's small cases pass with numba's JIT disabled (the kernels as plain Python).

This runs the kernels' Python source, so a kernel whose compiled and interpreted
behaviour differ (typing, integer division, parallel reductions) is caught.

The interpreted run takes a minute or two and needs one core; it starts in the
background as soon as pytest has collected this test (conftest.py's
pytest_collection_finish calls start()), so on a machine with two cores it overlaps
the rest of the suite, and the test waits for it. In pytest-xdist's workers (the
README's `-n 2`) it starts when the test does, in the worker that runs it, while the
other worker goes on with the suite.
"""

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent
# modules whose kernels are small enough to run interpreted
NOJIT_MODULES = [
    "test_targets.py", "test_processes.py", "test_optim.py", "test_gradcheck.py",
    "test_nn.py", "test_losses.py", "test_score_model.py", "test_samplers.py",
    "test_gaussian_closed_form.py", "test_distances.py",
]
TIMEOUT = 900  # seconds from the start of the interpreted run to the end of the test's wait
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
    _RUN["log"], _RUN["deadline"] = log, time.monotonic() + TIMEOUT
    # its own process group, so that stop() ends whatever it started too
    _RUN["process"] = subprocess.Popen(cmd, cwd=TESTS.parent, env=env, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)


def stop():
    """End the interpreted run if it is still going (the session ended before its test, or it
    timed out) and close its log."""
    process = _RUN.get("process")
    if process is not None and process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    if "log" in _RUN and not _RUN["log"].closed:
        _RUN["log"].close()


def _output():
    log = _RUN["log"]
    log.seek(0)
    return log.read()


def test_suite_passes_without_jit():
    start()  # not started yet when this file is run on its own without conftest's hook
    process = _RUN["process"]
    try:
        code = process.wait(timeout=max(0.0, _RUN["deadline"] - time.monotonic()))
    except subprocess.TimeoutExpired:
        output = _output()
        stop()
        raise AssertionError(f"pytest with NUMBA_DISABLE_JIT=1 took more than {TIMEOUT} s:\n{output[-3000:]}") from None
    output = _output()
    if code != 0:
        print(output)
    assert code == 0, f"pytest with NUMBA_DISABLE_JIT=1 exited with {code}:\n{output[-3000:]}"
