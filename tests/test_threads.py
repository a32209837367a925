"""Thread-pool defaults (sgm_ref/_threads.py) and the set_threads / SGM_REF_THREADS knob.

Nothing here is timed (benchmarks/load.py measures the effect): the tests check that the
defaults reach the environment before numpy and numba load their runtimes, that a
user's own settings win, and that the knob is validated and applied.
"""

import json
import os
import pickle
import platform
import subprocess
import sys
import textwrap

import numba
import pytest

import sgm_ref
from sgm_ref import _threads

# this process imported sgm_ref (conftest), which set the defaults in its os.environ:
# every child starts from an environment without any of them
THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "OMP_DISPLAY_ENV",
                    "OPENBLAS_THREAD_TIMEOUT", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "SGM_REF_THREADS")

REPORT = """
import json, os, sys
{before}
import sgm_ref, numba
from sgm_ref import _threads
print(json.dumps({{"env": {{k: os.environ.get(k) for k in {names!r}}},
                  "defaults": _threads.environment_defaults(), "numba": numba.get_num_threads(),
                  "blas": _threads.blas_threads()}}))
"""


def child(env=None, before="", code=None):
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    return subprocess.run([sys.executable, "-c", code or REPORT.format(before=before, names=THREAD_VARIABLES)],
                          env={**clean, **(env or {})}, capture_output=True, text=True, timeout=300)


def restore_threads(numba_count, blas_counts):
    """Give numba and every OpenBLAS back the counts a test found."""
    if numba_count is not None:
        numba.set_num_threads(numba_count)
    for (setter, _), count in zip(_threads._openblas_libraries(), blas_counts):
        setter(count)


def report(env=None, before=""):
    result = child(env, before)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_defaults_are_set_when_unset_before_the_runtimes_load():
    out = report()
    for name, value in _threads.SPIN_DEFAULTS.items():
        assert out["env"][name] == value
    assert out["defaults"] == {"set": _threads.SPIN_DEFAULTS, "loaded_before": []}
    assert out["env"]["OPENBLAS_NUM_THREADS"] is None and out["env"]["SGM_REF_THREADS"] is None  # counts untouched


def test_a_users_settings_win():
    out = report({"OMP_WAIT_POLICY": "ACTIVE", "OPENBLAS_THREAD_TIMEOUT": "20"})
    assert out["env"]["OMP_WAIT_POLICY"] == "ACTIVE" and out["env"]["OPENBLAS_THREAD_TIMEOUT"] == "20"
    assert out["defaults"]["set"] == {}
    out = report({"OMP_WAIT_POLICY": "active"})  # one set, the other still defaulted
    assert out["env"]["OMP_WAIT_POLICY"] == "active"
    assert out["defaults"]["set"] == {"OPENBLAS_THREAD_TIMEOUT": _threads.SPIN_DEFAULTS["OPENBLAS_THREAD_TIMEOUT"]}


def test_numpy_imported_first_is_reported():
    out = report(before="import numpy")
    assert any("OpenBLAS" in name for name in out["defaults"]["loaded_before"])


def test_the_openmp_runtime_reads_the_wait_policy():
    # libgomp prints the settings it started with when OMP_DISPLAY_ENV is set: the policy
    # must be there when numba first loads it (a parallel kernel's first call)
    code = ("import numpy as np, sgm_ref, numba; from sgm_ref import GaussianMixture, OU; "
            "GaussianMixture.ring().score(np.zeros((64, 2)), np.full(64, 0.5), OU()); "
            "print(numba.threading_layer())")
    result = child({"OMP_DISPLAY_ENV": "TRUE"}, code=code)
    assert result.returncode == 0, result.stderr
    if result.stdout.split()[-1] != "omp":
        pytest.skip(f"numba's threading layer here is {result.stdout.split()[-1]}, not OpenMP")
    assert "OMP_WAIT_POLICY = 'PASSIVE'" in result.stderr


@pytest.mark.parametrize("n", [0, -1, True, 1.5, "2", None, numba.config.NUMBA_NUM_THREADS + 1])
def test_set_threads_refuses_and_changes_nothing(n):
    numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()
    with pytest.raises(ValueError, match="^n must be"):
        sgm_ref.set_threads(n)
    assert numba.get_num_threads() == numba_before and _threads.blas_threads() == blas_before


def test_set_threads_sets_numba_and_every_openblas():
    numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()
    try:
        assert sgm_ref.set_threads(1) == {"numba": 1, "blas": [1] * len(blas_before)}
        assert numba.get_num_threads() == 1
        n = numba.config.NUMBA_NUM_THREADS
        assert sgm_ref.set_threads(n) == {"numba": n, "blas": [n] * len(blas_before)}
    finally:
        restore_threads(numba_before, blas_before)
    assert blas_before, "no OpenBLAS found in this process: numpy's wheels ship one"


def test_sgm_ref_threads_applies_at_import():
    out = report({"SGM_REF_THREADS": "1"})
    assert out["numba"] == 1 and out["blas"] and set(out["blas"]) == {1}
    assert out["env"]["OPENBLAS_NUM_THREADS"] == "1"  # also for an OpenBLAS loaded later (scipy's)
    out = report({"SGM_REF_THREADS": "1"}, before="import numpy")  # numpy's OpenBLAS loaded first: set at run time
    assert out["numba"] == 1 and set(out["blas"]) == {1}


@pytest.mark.parametrize("value", ["0", "two", "", "1.5", str(numba.config.NUMBA_NUM_THREADS + 1)])
def test_a_bad_sgm_ref_threads_is_refused_at_import(value):
    result = child({"SGM_REF_THREADS": value})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: ") and ("SGM_REF_THREADS" in last or "NUMBA_NUM_THREADS" in last), last


def test_an_sgm_ref_threads_of_thousands_of_digits_is_refused_by_name():
    """int() refuses more than 4300 digits ("Exceeds the limit (4300 digits) for integer
    string conversion ..."), a ValueError that named neither the variable nor the fix;
    leading zeros still read as the number they write."""
    for value in ("9" * 5000, "1" + "0" * 19):
        with pytest.raises(ValueError, match=r"^SGM_REF_THREADS must be a thread count, at most the size of "
                                             r"numba's thread pool .*got a number of (5000|20) digits; unset it"):
            _threads._threads_from_environment({"SGM_REF_THREADS": value})
    assert _threads._threads_from_environment({"SGM_REF_THREADS": "0" * 5000 + "2"}) == 2
    result = child({"SGM_REF_THREADS": "9" * 5000})
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("ValueError: SGM_REF_THREADS must be a thread count"), last


def test_busy_hint_only_when_the_pools_oversubscribe(monkeypatch):
    for name in ("SGM_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert _threads.busy_hint(busy=0, cpus=2, threads=2) is None
    assert _threads.busy_hint(busy=3, cpus=2, threads=1) is None  # nothing to give up
    assert _threads.busy_hint(busy=4, cpus=16, threads=12) is None
    hint = _threads.busy_hint(busy=2, cpus=2, threads=2)
    assert "SGM_REF_THREADS=1" in hint and "\n" not in hint and "(2 other running tasks on 2 CPUs)" in hint
    assert "(1 other running task on 2 CPUs)" in _threads.busy_hint(busy=1, cpus=2, threads=2)
    assert "SGM_REF_THREADS=10" in _threads.busy_hint(busy=6, cpus=16, threads=16)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")  # the user chose: no advice
    assert _threads.busy_hint(busy=2, cpus=2, threads=2) is None


def test_busy_cpus_counts_others_or_says_unknown(monkeypatch):
    busy = _threads.busy_cpus()
    assert busy is None or (isinstance(busy, int) and busy >= 0)
    # the count itself, from reads of /proc/loadavg given here (the check above held for any
    # int >= 0, a busy_cpus that always said 0 included): the median of five reads, less the
    # reading thread, never below 0; unknown (None) when a read fails or does not parse
    import io

    def reads(*running):
        counts = iter(running)

        def fake_open(path, *args, **kwargs):
            assert path == "/proc/loadavg"
            count = next(counts)
            if count is None:
                raise OSError("no /proc")
            return io.StringIO(f"0.52 0.58 0.59 {count}/517 12345\n")
        return fake_open

    for running, busy in [((3, 9, 4, 1, 4), 3), ((1, 1, 1, 1, 1), 0), ((0, 0, 0, 0, 0), 0), ((7, 2, 6, 5, 8), 5)]:
        monkeypatch.setattr(_threads, "open", reads(*running), raising=False)
        assert _threads.busy_cpus() == busy, running
    for running in (("x", 1, 1, 1, 1), (2, None, 1, 1, 1)):
        monkeypatch.setattr(_threads, "open", reads(*running), raising=False)
        assert _threads.busy_cpus() is None, running


def test_the_command_line_threads_option(tmp_path):
    """--threads N sets the pools before the command runs; a bad N is one line and exit 2."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(sys.executable).with_name("sgm-ref")
    bad = subprocess.run([str(script), "--threads", "0", "sample", str(tmp_path / "no-run")], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert bad.stderr.startswith("sgm-ref: error: ") and "0" in bad.stderr
    (tmp_path / "s.py").write_text("import numba\n\ndef score(x, t):\n    assert numba.get_num_threads() == 1\n"
                                   "    return -x\n")
    ok = subprocess.run([str(script), "--threads", "1", "audit", "--score", "s:score", "--target", "ring",
                         "--n-steps", "3", "--profile-n", "10", "--bound-n", "2"], capture_output=True, text=True,
                        cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr


@pytest.mark.parametrize("value", ["0", "abc"])
def test_a_bad_sgm_ref_threads_is_one_line_on_the_command_line(tmp_path, value):
    """The script reports a bad SGM_REF_THREADS like any bad input (it is read at import), and does no work."""
    from _cli import assert_one_line_error, run

    result = run("demo", tmp_path / "run", env={"SGM_REF_THREADS": value}, check=False)
    assert_one_line_error(result, "SGM_REF_THREADS must be an integer >= 1")
    assert not (tmp_path / "run").exists()


def test_a_bad_sgm_ref_threads_is_one_line_from_python_m_sgm_ref_cli(tmp_path, monkeypatch):
    """`python -m sgm_ref.cli` is the command line too (cli.py runs main() as __main__): a bad
    SGM_REF_THREADS was a traceback and exit status 1 there, as sys.argv[0] is "-m" while the
    module is found (when sgm_ref is imported), not "sgm-ref"."""
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    result = subprocess.run([sys.executable, "-X", "utf8", "-m", "sgm_ref.cli", "sample", str(tmp_path / "run")],
                            env={**clean, "SGM_REF_THREADS": "abc"}, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and result.stderr == ("sgm-ref: error: SGM_REF_THREADS must be an integer >= 1 (the "
                                                        "thread count), got 'abc'; unset it for the default\n"), result
    # which interpreter command lines run the command line (sys.argv[0] as seen when sgm_ref is imported)
    for argv0, orig, expected in [
            ("-m", ["python", "-m", "sgm_ref.cli", "sample", "run"], True),
            ("-m", ["python", "-msgm_ref.cli"], True),
            ("-m", ["python", "-X", "dev", "-W", "error", "-I", "-m", "sgm_ref.cli"], True),
            ("/usr/bin/sgm-ref", ["python", "/usr/bin/sgm-ref", "demo"], True),
            ("-m", ["python", "-m", "mypackage", "-m", "sgm_ref.cli"], False),  # another module, imports sgm_ref
            ("-c", ["python", "-c", "import sgm_ref", "-m", "sgm_ref.cli"], False),
            ("script.py", ["python", "script.py", "-m", "sgm_ref.cli"], False),
            ("-m", ["python", "-m", "sgm_ref.experiments.rate"], False)]:
        monkeypatch.setattr(sys, "argv", [argv0])
        monkeypatch.setattr(sys, "orig_argv", orig)
        assert _threads._is_command_line() is expected, orig


def test_an_sgm_ref_threads_beyond_numbas_pool_is_one_line_on_the_command_line(tmp_path):
    """A count beyond NUMBA_NUM_THREADS is refused when set_threads applies it at import:
    before, that refusal escaped as a traceback from the script (only a non-number or a
    count below 1, refused while parsing, was kept for the one-line report)."""
    from _cli import assert_one_line_error, run

    limit = numba.config.NUMBA_NUM_THREADS
    result = run("demo", tmp_path / "run", env={"SGM_REF_THREADS": str(limit + 1)}, check=False)
    assert_one_line_error(result, f"SGM_REF_THREADS={limit + 1}: n must be at most {limit}, the size of numba's "
                                  "thread pool")
    assert not (tmp_path / "run").exists()


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the kernel names asked for are x86's")
@pytest.mark.parametrize("coretype", ["Haswell", "Nehalem"])
def test_blas_kernels_names_the_kernels_openblas_runs(coretype):
    """OPENBLAS_CORETYPE picks OpenBLAS's kernels when it loads; blas_kernels() reads the
    choice back from every OpenBLAS loaded (numpy's, and scipy's once scipy is imported)."""
    code = ("import json, sgm_ref, numpy, scipy.linalg\nfrom sgm_ref import _threads\n"
            "print(json.dumps([_threads.blas_kernels(), _threads.blas_threads()]))")
    result = child({"OPENBLAS_CORETYPE": coretype}, code=code)
    assert result.returncode == 0, result.stderr
    kernels, threads = json.loads(result.stdout.strip().splitlines()[-1])
    assert kernels == [coretype] * len(threads) and len(threads) >= 1


# -- run_blocks: blocks of rows on Python threads, OpenBLAS on one thread meanwhile -------

needs_settable_blas = pytest.mark.skipif(not _threads.blas_settable(),
                                         reason="NumPy's BLAS is not an OpenBLAS found at run time: run_blocks is serial")


def _block_threads_alive():
    import threading
    return [t for t in threading.enumerate() if t.name.startswith("sgm_ref-block")]


def _recording_worker():
    """make_worker and what it records: each worker's blocks, and the BLAS counts seen."""
    import threading
    lock, workers, blas_seen = threading.Lock(), [], set()

    def make_worker():
        own = []  # a worker's state is its own: each thread calls make_worker once
        with lock:
            workers.append(own)

        def work(b):
            own.append(b)
            with lock:
                blas_seen.update(_threads.blas_threads())
        return work
    return make_worker, workers, blas_seen


@pytest.mark.parametrize("threads", [1, 2, 3, 5])
@pytest.mark.parametrize("n_blocks", [0, 1, 2, 7, 50])
def test_run_blocks_runs_every_block_once_and_restores_blas(threads, n_blocks):
    blas_before = _threads.blas_threads()
    make_worker, workers, blas_seen = _recording_worker()
    _threads.run_blocks(n_blocks, make_worker, threads=threads)
    assert sorted(b for own in workers for b in own) == list(range(n_blocks))
    assert _threads.blas_threads() == blas_before
    if threads > 1 and n_blocks > 1 and _threads.blas_settable():
        assert blas_seen == {1} and len(workers) == min(threads, n_blocks)
    elif _threads.blas_settable():  # serial: the caller's thread, OpenBLAS on one thread all the same
        assert len(workers) == 1 and blas_seen <= {1}
    else:  # serial on a BLAS that cannot be set: left as it was
        assert len(workers) == 1 and blas_seen <= set(blas_before)
    assert not _block_threads_alive()


@needs_settable_blas
def test_run_blocks_gives_the_same_bits_for_every_thread_count_and_one_block():
    """The serial cases (threads=1, one block) ran their products on OpenBLAS's own threads,
    the threaded case on one: a 600 x 600 x 600 product differed by 9e-14 between them (and the
    full-covariance oracle at d = 600, K = 1 by 4e-15 between set_threads(1) and 2 on one
    block), against the promise of the same bits for every thread count."""
    import numpy as np

    blas_before = _threads.blas_threads()
    rng = np.random.default_rng(0)
    m = 600
    A, B = rng.standard_normal((2 * m, m)), rng.standard_normal((m, m))

    def run(threads, n_blocks=2):
        out = np.empty((n_blocks * m, m))

        def make_worker():
            def work(b):
                np.matmul(A[b * m:(b + 1) * m], B, out=out[b * m:(b + 1) * m])
            return work
        _threads.run_blocks(n_blocks, make_worker, threads=threads)
        return out
    try:
        for setter, _ in _threads._openblas_once():
            setter(2)  # OpenBLAS threaded outside the call, as on a quiet machine
        reference = run(2)
        np.testing.assert_array_equal(run(1), reference)
        np.testing.assert_array_equal(run(None), reference)
        np.testing.assert_array_equal(run(2, n_blocks=1), reference[:m])
        np.testing.assert_array_equal(run(1, n_blocks=1), reference[:m])
        # and the blocks' products are those of one OpenBLAS thread (an independent evaluation)
        for setter, _ in _threads._openblas_once():
            setter(1)
        np.testing.assert_array_equal(np.vstack([A[:m] @ B, A[m:] @ B]), reference)
    finally:
        restore_threads(None, blas_before)


@needs_settable_blas
def test_run_blocks_by_default_uses_no_more_threads_than_openblas_has(monkeypatch):
    blas_before = _threads.blas_threads()
    monkeypatch.setattr(numba, "get_num_threads", lambda: 2)
    try:
        for setter, _ in _threads._openblas_once():
            setter(1)  # as set_threads(1) or OPENBLAS_NUM_THREADS=1 leave it, seen from another Python thread
        make_worker, workers, _ = _recording_worker()
        _threads.run_blocks(6, make_worker)
        assert len(workers) == 1
        for setter, _ in _threads._openblas_once():
            setter(2)
        make_worker, workers, _ = _recording_worker()
        _threads.run_blocks(6, make_worker)
        assert len(workers) == 2
    finally:
        restore_threads(None, blas_before)


@needs_settable_blas
def test_run_blocks_runs_blocks_at_the_same_time():
    import threading
    both = threading.Barrier(2, timeout=30)  # breaks (BrokenBarrierError) unless two blocks overlap
    ran = []

    def make_worker():
        def work(b):
            both.wait()
            ran.append((b, threading.get_ident()))
        return work

    _threads.run_blocks(2, make_worker, threads=2)
    assert sorted(b for b, _ in ran) == [0, 1] and len({ident for _, ident in ran}) == 2


def test_run_blocks_is_serial_where_numpys_blas_cannot_be_set(monkeypatch):
    import threading
    monkeypatch.setattr(_threads, "_OPENBLAS_FOUND", None)
    monkeypatch.setattr(_threads, "_numpy_blas_name", lambda: "mkl")  # SciPy's OpenBLAS may be loaded: not enough
    assert not _threads.blas_settable()
    idents = set()

    def make_worker():
        return lambda b: idents.add(threading.get_ident())

    _threads.run_blocks(9, make_worker, threads=4)
    assert idents == {threading.get_ident()}


def test_numpys_blas_is_named():
    name = _threads._numpy_blas_name()
    assert isinstance(name, str)
    if sys.platform.startswith("linux") and "openblas" in name:
        assert _threads.blas_settable()


@pytest.mark.parametrize("failing", ["helper", "caller"])
@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_run_blocks_raises_the_error_stops_and_restores(failing, error):
    import threading
    if failing == "helper" and not _threads.blas_settable():
        pytest.skip("no helper threads where NumPy's BLAS cannot be set")
    blas_before = _threads.blas_threads()
    caller = threading.get_ident()
    started = []

    def make_worker():
        def work(b):
            started.append(b)
            if (threading.get_ident() == caller) == (failing == "caller"):
                raise error(f"block {b}")
            threading.Event().wait(0.002)
        return work

    with pytest.raises(error, match="block"):
        _threads.run_blocks(200, make_worker, threads=2)
    assert len(started) < 200  # no thread took more blocks after the error
    assert _threads.blas_threads() == blas_before
    assert not _block_threads_alive()


@needs_settable_blas
def test_concurrent_run_blocks_restore_the_counts_the_first_found():
    # A enters first, B second, A leaves first, then B reads the counts: a call that
    # restored its own saved counts on leaving would give B two threads (A's restore) and
    # leave one thread behind (B's saved counts, A's change)
    import threading
    blas_before = _threads.blas_threads()
    a_inside, b_inside, a_done = threading.Event(), threading.Event(), threading.Event()
    seen = []

    def worker(block0):
        def make_worker():
            def work(b):
                if b == 0:
                    block0()
            return work
        return make_worker

    def call_a():
        _threads.run_blocks(2, worker(lambda: (a_inside.set(), b_inside.wait(30))), threads=2)
        a_done.set()

    def call_b():
        a_inside.wait(30)
        _threads.run_blocks(2, worker(lambda: (b_inside.set(), a_done.wait(30),
                                               seen.append(tuple(_threads.blas_threads())))), threads=2)

    callers = [threading.Thread(target=call_a), threading.Thread(target=call_b)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert a_done.is_set() and seen == [(1,) * len(blas_before)]
    assert _threads.blas_threads() == blas_before


@needs_settable_blas
def test_set_threads_during_run_blocks_is_kept():
    import threading
    numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()

    def make_worker():
        def work(b):
            if b == 0:
                sgm_ref.set_threads(1)
        return work

    try:
        caller = threading.Thread(target=_threads.run_blocks, args=(4, make_worker), kwargs={"threads": 2})
        caller.start()
        caller.join()
        assert _threads.blas_threads() == [1] * len(blas_before)  # not undone when the call ended
    finally:
        restore_threads(numba_before, blas_before)


@needs_settable_blas
@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="set_threads(2) needs a pool of 2")
def test_set_threads_during_run_blocks_leaves_its_blocks_on_one_blas_thread():
    # before: set_threads(2) from a block (or any thread) put OpenBLAS on 2 threads at once,
    # so the call's later blocks ran threaded products (docs/limits.md: one thread meanwhile)
    import threading
    numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()
    seen, lock = [], threading.Lock()

    def make_worker():
        def work(b):
            if b == 0:
                assert sgm_ref.set_threads(2)["blas"] == [1] * len(blas_before)
            threading.Event().wait(0.01)
            with lock:
                seen.append(tuple(_threads.blas_threads()))
        return work

    try:
        sgm_ref.set_threads(1)
        _threads.run_blocks(8, make_worker, threads=2)
        assert seen == [(1,) * len(blas_before)] * 8
        assert _threads.blas_threads() == [2] * len(blas_before)  # given when the call ended
    finally:
        restore_threads(numba_before, blas_before)


@needs_settable_blas
@pytest.mark.parametrize("threads, n_blocks", [(1, 1), (1, 3), (2, 3)])
def test_a_change_made_another_way_during_run_blocks_is_undone_also_from_one_thread(threads, n_blocks):
    """run_blocks' docstring: a change made during a call other than by set_threads (as
    threadpoolctl's) is undone when it ends. With OpenBLAS on one thread before the call,
    the exit skipped the setters (it is on one thread now) and left the change: [3, 3]
    after set_threads(1)."""
    numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()

    def make_worker():
        def work(b):
            if b == 0:
                for setter, _ in _threads._openblas_once():
                    setter(3)  # as threadpoolctl's threadpool_limits would
        return work

    try:
        sgm_ref.set_threads(1)
        _threads.run_blocks(n_blocks, make_worker, threads=threads)
        assert _threads.blas_threads() == [1] * len(blas_before)
        if numba.config.NUMBA_NUM_THREADS >= 2:  # from two threads: undone too, as before
            sgm_ref.set_threads(2)
            _threads.run_blocks(n_blocks, make_worker, threads=threads)
            assert _threads.blas_threads() == [2] * len(blas_before)
    finally:
        restore_threads(numba_before, blas_before)


@needs_settable_blas
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_fork_inside_run_blocks_gives_the_child_its_counts_back():
    import threading
    blas_before = _threads.blas_threads()
    inside, forked = threading.Event(), threading.Event()

    def make_worker():
        def work(b):
            if b == 0:
                inside.set()
                forked.wait(30)
        return work

    caller = threading.Thread(target=_threads.run_blocks, args=(2, make_worker), kwargs={"threads": 2})
    caller.start()
    inside.wait(30)
    assert _threads.blas_threads() == [1] * len(blas_before)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once
        try:
            os.write(write, json.dumps([_threads.blas_threads(), _threads._ONE_BLAS_HOLDERS]).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = json.loads(f.read())
    os.waitpid(pid, 0)
    forked.set()
    caller.join()
    assert child == [blas_before, 0]
    assert _threads.blas_threads() == blas_before


@needs_settable_blas
@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork")
def test_a_fork_from_the_thread_inside_run_blocks_keeps_its_call_in_the_child():
    """A fork from the thread running the blocks (in a block): the child goes on with the
    call. Before, the child gave the counts back at once (its later blocks ran threaded
    products) and the call's end took the holders to -1, after which run_blocks no longer
    set OpenBLAS to one thread and set_threads no longer set it at all."""
    numba_before, found = numba.get_num_threads(), _threads.blas_threads()
    if found == [1] * len(found):  # on one thread the counts would not tell
        if numba.config.NUMBA_NUM_THREADS < 2:
            pytest.skip("set_threads(2) needs a pool of 2")
        sgm_ref.set_threads(2)
    blas_before = _threads.blas_threads()
    read, write = os.pipe()
    pid, seen = [None], []

    def make_worker():
        def work(b):
            if b == 0:
                pid[0] = os.fork()
            seen.append(_threads.blas_threads())
        return work

    try:
        _threads.run_blocks(3, make_worker, threads=1)  # serial: the forking thread is the only one
        if pid[0] == 0:  # the child: report and leave at once
            try:
                report = {"in_blocks": seen, "after": _threads.blas_threads(), "holders": _threads._ONE_BLAS_HOLDERS}
                _threads.run_blocks(2, lambda: lambda b: report.setdefault("again", _threads.blas_threads()), threads=1)
                report["set_1"] = sgm_ref.set_threads(1)["blas"]
                os.write(write, json.dumps(report).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            child = json.loads(f.read())
        os.waitpid(pid[0], 0)
        assert _threads.blas_threads() == blas_before and _threads._ONE_BLAS_HOLDERS == 0
    finally:
        restore_threads(numba_before, found)
    ones = [1] * len(blas_before)
    assert child == {"in_blocks": [ones] * 3, "after": blas_before, "holders": 0, "again": ones, "set_1": ones}


# -- the folder lock (sgm_ref/_lock.py) across threads of one process ---------------------

def test_the_folder_lock_refuses_another_thread_of_the_process(tmp_path):
    # Re-entrant in one thread only: a second thread let in (as before) kept writing after
    # the first one's release had unlocked the folder and removed its lock file, so a third
    # writer (another process) could take it meanwhile.
    import threading
    from sgm_ref._lock import FolderLockedError, folder_lock
    inside, done = threading.Event(), threading.Event()
    outcome = []

    def holder():
        with folder_lock(tmp_path, kind="test"):
            inside.set()
            done.wait(30)

    def second():
        inside.wait(30)
        try:
            with folder_lock(tmp_path, kind="test"):
                outcome.append("entered")
        except FolderLockedError as exc:
            outcome.append(str(exc))
        finally:
            done.set()

    threads = [threading.Thread(target=holder), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(outcome) == 1 and outcome[0].startswith(f"another test is writing to {tmp_path}: another thread "
                                                       f"of this process, pid {os.getpid()}")
    assert not (tmp_path / ".lock").exists()
    with folder_lock(tmp_path, kind="test"):  # free again; and re-entrant in one thread
        with folder_lock(tmp_path, kind="test"):
            assert (tmp_path / ".lock").exists()
        assert (tmp_path / ".lock").exists()
    assert not (tmp_path / ".lock").exists()


def test_another_thread_waits_for_the_folder_lock(tmp_path):
    import threading
    from sgm_ref._lock import folder_lock
    inside, events = threading.Event(), []

    def holder():
        with folder_lock(tmp_path, kind="test"):
            inside.set()
            threading.Event().wait(0.3)
            events.append("first out")

    t = threading.Thread(target=holder)
    t.start()
    inside.wait(30)
    with folder_lock(tmp_path, kind="test", wait=30):
        events.append("second in")
    t.join()
    assert events == ["first out", "second in"]


# -- the folder lock across processes, and the lock file's odd states ------------------------

HOLD_LOCK = """
import sys, time
from sgm_ref._lock import folder_lock
with folder_lock(sys.argv[1], kind="test"):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_the_folder_lock_refuses_another_process_and_takes_over_from_a_killed_one(tmp_path):
    """A second process is refused with the holder's pid; SIGKILL frees the lock (flock), the
    dead holder's record stays in .lock, and the next command takes it over at once."""
    import signal
    import time

    from sgm_ref._lock import FolderLockedError, folder_lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.monotonic()
        with pytest.raises(FolderLockedError, match=rf"another test is writing to {tmp_path}: pid {holder.pid} "):
            with folder_lock(tmp_path, kind="test", wait=0.2):
                pass
        assert time.monotonic() - start >= 0.2
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == holder.pid  # the stale record
        acquired = []
        with folder_lock(tmp_path, kind="test", on_acquire=lambda: acquired.append(1)):
            assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid() and acquired == [1]
        assert os.listdir(tmp_path) == []
    finally:
        holder.kill()
        holder.wait()


def test_an_unreadable_lock_record_still_gives_the_refusal(tmp_path, monkeypatch):
    """A lock file that could not be opened for reading (PermissionError) raised
    UnboundLocalError ('pid') out of _holder, a traceback instead of the refusal."""
    from sgm_ref import _lock
    from sgm_ref._lock import FolderLockedError, folder_lock
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"

        def unreadable(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", path)
        monkeypatch.setattr(_lock, "open", unreadable, raising=False)
        with pytest.raises(FolderLockedError, match=rf"^another test is writing to {tmp_path}; wait for it"):
            with folder_lock(tmp_path, kind="test"):
                pass
    finally:
        holder.kill()
        holder.wait()


def test_the_holders_pid_under_another_user_is_named(tmp_path, monkeypatch):
    from sgm_ref import _lock
    (tmp_path / ".lock").write_text('{"pid": 4242, "command": "sgm-ref train r", "since": "today"}\n')

    def other_user(pid, sig):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(_lock.os, "kill", other_user)
    assert _lock._holder(str(tmp_path / ".lock")) == "pid 4242 (sgm-ref train r), since today"
    monkeypatch.undo()
    (tmp_path / ".lock").write_text('{"pid": 1e400, "command": "x", "since": "y"}')
    assert _lock._holder(str(tmp_path / ".lock")) is None  # (int(inf): OverflowError)
    for pid in (-1, 0):  # os.kill(-1, 0) and os.kill(0, 0) succeed (every process, the process group)
        (tmp_path / ".lock").write_text(f'{{"pid": {pid}, "command": "x", "since": "y"}}')
        assert _lock._holder(str(tmp_path / ".lock")) is None


def test_a_lock_path_that_is_a_folder_or_a_folder_that_is_a_file_is_said_so(tmp_path, monkeypatch):
    """Both were 'cannot lock FOLDER for writing (Is a directory / Not a directory): a command
    that writes into it needs a writable folder', about a folder that was writable."""
    import errno

    from sgm_ref import _lock
    from sgm_ref._lock import folder_lock
    (tmp_path / ".lock").mkdir()
    with pytest.raises(ValueError, match=rf"^{tmp_path}/.lock is a folder, not a lock file; remove it"):
        with folder_lock(tmp_path):
            pass
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match=rf"^cannot lock {tmp_path}/file: it is a file, not a folder$"):
        with folder_lock(tmp_path / "file"):
            pass
    os.rmdir(tmp_path / ".lock")
    real_open = os.open

    def read_only(path, flags, mode=0o777):  # (simulated: root is not stopped by a mode)
        if os.path.basename(path) == ".lock":
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, mode)
    monkeypatch.setattr(_lock.os, "open", read_only)
    with pytest.raises(ValueError, match=rf"^cannot lock {tmp_path} for writing \(Read-only file system\): a "
                                         "command that writes into it needs a writable folder$"):
        with folder_lock(tmp_path):
            pass
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["file"]


def test_the_folder_lock_is_re_entrant_under_every_spelling_of_the_folder(tmp_path):
    from sgm_ref._lock import folder_lock
    (tmp_path / "run").mkdir()
    os.symlink("run", tmp_path / "alias")
    acquired = []
    with folder_lock(tmp_path / "run", on_acquire=lambda: acquired.append("outer")):
        for spelling in (f"{tmp_path}/run/", f"{tmp_path}/run/../run", tmp_path / "alias"):
            with folder_lock(spelling, on_acquire=lambda: acquired.append("inner")):
                assert (tmp_path / "run" / ".lock").exists()
        assert (tmp_path / "run" / ".lock").exists()
    assert acquired == ["outer"] and os.listdir(tmp_path / "run") == []


# -- SGM_REF_THREADS is read as decimal digits ----------------------------------------------

@pytest.mark.parametrize("text, expected", [("1", 1), (" 2\n", 2), ("+1", 1), ("1_0", None), ("٢", None),
                                            ("１", None), ("0x2", None), ("2.0", None), ("-1", None), ("", None)])
def test_sgm_ref_threads_is_read_as_decimal_digits(text, expected):
    """int() read "1_0" as 10 threads (and Arabic-Indic or full-width digits as numbers)."""
    if expected is None:
        with pytest.raises(ValueError, match=f"SGM_REF_THREADS must be an integer >= 1 .*got {text!r}"):
            _threads._threads_from_environment({"SGM_REF_THREADS": text})
    else:
        assert _threads._threads_from_environment({"SGM_REF_THREADS": text}) == expected
    assert _threads._threads_from_environment({}) is None


def test_an_underscored_sgm_ref_threads_is_refused_at_import():
    result = child({"SGM_REF_THREADS": "1_0"})
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == ("ValueError: SGM_REF_THREADS must be an integer >= 1 (the "
                                                      "thread count), got '1_0'; unset it for the default")


def test_busy_hint_with_nothing_else_running_does_not_call_the_machine_busy(monkeypatch):
    """More threads than CPUs (NUMBA_NUM_THREADS above the count) and no other task: the hint
    said 'the machine is busy (0 other running tasks on 2 CPUs)'."""
    for name in ("SGM_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    hint = _threads.busy_hint(busy=0, cpus=2, threads=4)
    assert hint == ("note: more threads than CPUs (2): with 4 threads each parallel step waits for a descheduled "
                    "worker; SGM_REF_THREADS=2 is usually faster now (results then differ in the last bits from a "
                    "4-thread run)")
    assert "busy" not in hint
    assert _threads.busy_hint(busy=1, cpus=2, threads=4).startswith("note: the machine is busy (1 other running "
                                                                      "task on 2 CPUs): with 4 threads")


COUNT_UNDER_LOCK = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("lock", sys.argv[1])  # the module alone: stdlib only, fast
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
folder = sys.argv[2]
for _ in range(40):
    with lock.folder_lock(folder, wait=30):
        with open(os.path.join(folder, "counter")) as f:
            count = int(f.read())
        os.sched_yield()  # invite another process in, were the lock not exclusive
        with open(os.path.join(folder, "counter"), "w") as f:
            f.write(str(count + 1))
"""


def test_processes_contending_for_the_folder_lock_never_overlap(tmp_path):
    """Three processes each take and release the lock 40 times around a read-increment-write
    of a counter: every release removes .lock while the others wait on it (the inode check
    in _try_lock), and the count comes out exact, 120, with no .lock left."""
    import sgm_ref._lock as lock_module

    (tmp_path / "counter").write_text("0")
    children = [subprocess.Popen([sys.executable, "-c", COUNT_UNDER_LOCK, lock_module.__file__, str(tmp_path)])
                for _ in range(3)]
    assert [child.wait(timeout=60) for child in children] == [0, 0, 0]
    assert (tmp_path / "counter").read_text() == "120"
    assert sorted(os.listdir(tmp_path)) == ["counter"]


def test_a_nan_wait_is_refused_not_an_endless_loop(tmp_path):
    """wait=NaN made the deadline monotonic() + NaN, which no time reaches: a held folder was
    waited for forever."""
    import threading

    from sgm_ref._lock import folder_lock
    for wait in (float("nan"), -1.0, "1", True, None):
        with pytest.raises(ValueError, match=r"^wait must be a number of seconds >= 0, got "):
            with folder_lock(tmp_path, wait=wait):
                pass
    inside, done, outcome = threading.Event(), threading.Event(), []

    def holder():
        with folder_lock(tmp_path, kind="test"):
            inside.set()
            done.wait(30)

    def waiter():
        try:
            with folder_lock(tmp_path, kind="test", wait=float("nan")):
                outcome.append("entered")
        except ValueError as exc:
            outcome.append(str(exc))
    first = threading.Thread(target=holder)
    first.start()
    try:
        inside.wait(30)
        second = threading.Thread(target=waiter, daemon=True)
        second.start()
        second.join(2.0)
        assert outcome == ["wait must be a number of seconds >= 0, got nan"]
    finally:
        done.set()
        first.join()
    with folder_lock(tmp_path, wait=float("inf")):  # free: taken at once
        pass
    assert os.listdir(tmp_path) == []


# numpy's legacy global-state functions: sgm_ref's randomness comes from the Generator passed in only
_GLOBAL_RNG_FUNCTIONS = ("seed", "rand", "randn", "random", "random_sample", "normal", "standard_normal", "uniform",
                         "randint", "choice", "shuffle", "permutation", "get_state", "set_state")


def test_randomised_functions_use_only_their_generator_and_the_same_draws_on_every_thread_count(monkeypatch):
    """Each randomised step of a run (training, sampling with every scheme, the reports, the time
    draws) gives the same bits and leaves its Generator in the same state with one thread and
    with numba's whole pool (numba and OpenBLAS counts both set), and never touches numpy's
    global RandomState (its legacy functions raise here): a draw there would break
    "same seed, same bits" silently. Small sizes: the mixture oracle's block and row splits are
    covered at scale in tests/test_kernels_mixture.py."""
    import numpy as np

    from sgm_ref import MLP, OU, VP, GaussianMixture, ScoreModel, fit
    from sgm_ref.evaluation import exact_score_loss, sample_report, score_report
    from sgm_ref.losses import importance_times, sample_times
    from sgm_ref.samplers import METHODS, sample

    for name in _GLOBAL_RNG_FUNCTIONS:
        def refuse(*args, _name=name, **kwargs):
            raise AssertionError(f"numpy.random.{_name} (the global RandomState) was called")
        monkeypatch.setattr(np.random, name, refuse)
    ring = GaussianMixture.ring()
    full = GaussianMixture([0.3, 0.7], [[0.0, 1.0], [1.0, -1.0]],
                           [[[1.0, 0.3], [0.3, 0.5]], [[0.4, -0.1], [-0.1, 0.9]]])

    def run():
        out = []

        def draw(fn):
            rng = np.random.default_rng(7)
            out.append((fn(rng), rng.bit_generator.state))

        model = ScoreModel(MLP(2, (8, 8), rng=0, dtype=np.float32), OU(), "noise")
        draw(lambda rng: (fit(model, ring.sample(64, rng, dtype=np.float32), steps=3, batch_size=1600, rng=rng,
                              time_sampling="defensive", progress=False).loss, model.params.copy()))
        for method in METHODS:
            draw(lambda rng, method=method: sample(lambda x, t: full.score(x, t, VP()), VP(), 300, 2, rng, T=1.0,
                                                   t0=1e-3, n_steps=4, method=method))
        draw(lambda rng: sample(model, OU(), 300, 2, rng, T=2.0, t0=1e-2, n_steps=3, dtype=np.float32))
        draw(lambda rng: score_report(model, ring, OU(), t0=1e-2, T=2.0, method="exponential", grid="geometric",
                                      n_steps=3, rng=rng, profile_n=20, profile_times=2, bound_n=8, dtype=np.float32,
                                      floor=True))
        draw(lambda rng: sample_report(ring.sample(40, rng), ring, rng, n_reference=50, two_sample_n=20, floor=True))
        draw(lambda rng: exact_score_loss(full, OU(), t0=1e-3, T=2.0, weighting="none", time_distribution="uniform",
                                          n=50, rng=rng))
        draw(lambda rng: (sample_times(9, 1e-3, 2.0, rng, "log-uniform"), importance_times(9, 1e-3, 2.0, rng)))
        return out

    numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()
    try:
        results = []
        for n in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            sgm_ref.set_threads(n)
            results.append(run())
    finally:
        restore_threads(numba_before, blas_before)
    bits = [[pickle.dumps(case) for case in result] for result in results + [run()]]  # every bit (repr rounds)
    for case, (first, other) in enumerate(zip(bits[0], bits[-2])):
        assert first == other, f"case {case} differs between thread counts"
    assert bits[0] == bits[-1], "the same seed gave other bits"


@pytest.mark.parametrize("as_command", [True, False])
def test_an_interrupt_during_the_package_import_is_one_line_in_the_command(as_command):
    """Ctrl-C in a command's first second lands in sgm_ref's imports (numba, scipy), before
    cli.main can catch it: it was a 40-line traceback and death by SIGINT. The command line
    says "sgm-ref: interrupted" and exits 130; a program importing sgm_ref gets the
    KeyboardInterrupt. (An import hook raises it where the signal lands.)"""
    code = textwrap.dedent(f"""
        import sys

        class Interrupt:
            def find_spec(self, name, path=None, target=None):
                if name == "numba":
                    raise KeyboardInterrupt
                return None

        sys.meta_path.insert(0, Interrupt())
        if {as_command}:
            sys.argv[0] = "/somewhere/bin/sgm-ref"
        import sgm_ref.cli
        """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    if as_command:
        assert (result.returncode, result.stderr) == (130, "sgm-ref: interrupted\n")
    else:
        assert result.returncode != 130 and result.stderr.rstrip().endswith("KeyboardInterrupt")
