"""Thread pools that stay fast on a busy machine: sgm_ref's defaults and set_threads.

sgm_ref's arithmetic runs in two thread pools: OpenBLAS's (the matrix products of the
network, numpy's and scipy's copies) and numba's (the parallel loop of the diagonal
mixture oracle, on its OpenMP layer here). Both spin between jobs by default: an idle
OpenBLAS worker busy-waits up to ~2^28 cycles (~0.1 s) for its next job, an idle
libgomp worker 300,000 rounds. When other processes want the cores, the spinning
workers take the time slices the working thread needs: the demo's training took 266 s
at load 5 against 11 s on a quiet machine (benchmarks/load.py and RESULTS.md measure it).

So this module, imported first by sgm_ref/__init__.py before numpy or numba load a
threaded runtime, sets for the process (os.environ, inherited by its children), only
where the user has not set them:

    OPENBLAS_THREAD_TIMEOUT=4    an idle OpenBLAS worker sleeps after 2^4 cycles
    OMP_WAIT_POLICY=PASSIVE      an idle OpenMP worker sleeps at once

Neither changes a result bit. The runtimes read them when they load, so they do not
reach a runtime loaded before sgm_ref (numpy imported first keeps OpenBLAS's spinning;
`environment_defaults()` says what happened); OMP_WAIT_POLICY also applies to other
OpenMP code of the process loaded later (PyTorch's).

Thread counts are left as the libraries choose them (one per core), fastest on a quiet
machine. They are not adapted to the load: the BLAS thread count changes the last bits
of a training run, and the same command must give the same bits whatever else runs
(a resumed run too). On a machine whose other work keeps the cores busy, one thread is
several times faster; that is the user's knob: `set_threads(n)` at run time, or
SGM_REF_THREADS=n in the environment, applied when sgm_ref is imported.
`busy_hint()` words the advice when the machine is busy now.

One more way to use the cores: `run_blocks` runs blocks of rows on Python threads (as
many as numba's count, and no more than OpenBLAS's), each with its own pipeline of BLAS
products and serial numba kernels, with every OpenBLAS on one thread meanwhile (the
full-covariance mixture oracle uses it). Its results do not depend on the thread count.
"""

import contextlib
import os
import sys
import threading

from ._command import is_command_line as _is_command_line

ENV_THREADS = "SGM_REF_THREADS"

# Chosen by measurement (benchmarks/load.py, RESULTS.md "Under load").
SPIN_DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}


def _mapped_libraries():
    """Paths of the shared libraries loaded in this process (Linux; an empty set elsewhere)."""
    try:
        with open("/proc/self/maps") as f:
            return {fields[5].strip() for fields in (line.split(None, 5) for line in f) if len(fields) == 6}
    except OSError:
        return set()


def _runtimes_loaded():
    """Threaded runtimes this process has loaded already (they read the environment then)."""
    names = {os.path.basename(p).lower() for p in _mapped_libraries()}
    loaded = []
    if "numpy" in sys.modules or any("openblas" in n for n in names):
        loaded.append("OpenBLAS (numpy)")
    if any(n.startswith(("libgomp", "libiomp", "libomp")) for n in names):
        loaded.append("an OpenMP runtime")
    return loaded


def _set_spin_defaults(environ):
    """Set SPIN_DEFAULTS in environ where unset; return {name: value} of those set here."""
    applied = {}
    for name, value in SPIN_DEFAULTS.items():
        if name not in environ:  # the user's choice wins, even an empty one
            environ[name] = value
            applied[name] = value
    return applied


def _threads_from_environment(environ):
    """The thread count SGM_REF_THREADS asks for, or None if unset."""
    text = environ.get(ENV_THREADS)
    if text is None:
        return None
    digits = text.strip().removeprefix("+")
    decimal = digits.isascii() and digits.isdigit()  # int() would also read "1_0" as 10 (and non-ASCII digits)
    significant = digits.lstrip("0") or "0"  # int() refuses more than 4300 digits, leading zeros too
    if decimal and len(significant) > 18:  # beyond any pool (int() named nothing past 4300 digits)
        raise ValueError(f"{ENV_THREADS} must be a thread count, at most the size of numba's thread pool (by "
                         f"default the number of cores), got a number of {len(significant)} digits; "
                         f"unset it for the default")
    n = int(significant) if decimal else 0
    if n < 1:
        # a long value is shown by its start and length (5000 zeros or "-" and 5000 digits made a
        # message of 5000 characters, the one line the command line prints)
        shown = repr(text) if len(text) <= 40 else f"{text[:20]!r}... ({len(text)} characters)"
        raise ValueError(f"{ENV_THREADS} must be an integer >= 1 (the thread count), got {shown}; "
                         f"unset it for the default")
    return n


_LOADED_BEFORE = _runtimes_loaded()
ENVIRONMENT_ERROR = None  # a bad SGM_REF_THREADS, kept for the command line to report (sgm_ref.cli.main)
try:
    _REQUESTED = _threads_from_environment(os.environ)  # a bad value raises before anything changes
except ValueError as exc:
    if not _is_command_line():
        raise
    ENVIRONMENT_ERROR, _REQUESTED = exc, None  # the script stops with the message before any work
_APPLIED = _set_spin_defaults(os.environ)
_BLAS_COUNT_BEFORE = os.environ.get("OPENBLAS_NUM_THREADS")
if _REQUESTED is not None:  # the sgm_ref knob wins, also for an OpenBLAS loaded later (scipy's)
    os.environ["OPENBLAS_NUM_THREADS"] = str(_REQUESTED)

import numba  # noqa: E402  (after the environment above: numba imports numpy)

from ._validation import check_count  # noqa: E402


def environment_defaults():
    """What sgm_ref set at import, and whether it could take effect.

    Returns
    -------
    dict
        "set": {variable: value} of the wait defaults (module docstring) sgm_ref set (variables the
        user had set are not in it; nor is OPENBLAS_NUM_THREADS, which sgm_ref sets to
        SGM_REF_THREADS's count when that is given: the user's count, not a default);
        "loaded_before": threaded runtimes already loaded when sgm_ref was
        imported, which keep the settings they started with (empty when the defaults
        took effect everywhere).
    """
    return {"set": dict(_APPLIED), "loaded_before": list(_LOADED_BEFORE)}


# -- OpenBLAS at run time -----------------------------------------------------------------

# run_blocks (below) puts OpenBLAS on one thread while blocks run; set_threads keeps to it
_ONE_BLAS_LOCK = threading.Lock()
_ONE_BLAS_HOLDERS = 0  # run_blocks calls in progress in this process (from any thread)
_ONE_BLAS_CALLERS = []  # the thread of each of them (threading.get_ident()), for a fork
_ONE_BLAS_SAVED = []  # the counts the first of them found, restored when the last leaves

# Function names of the OpenBLAS builds numpy and scipy ship (scipy-openblas prefixes and
# 64-bit-integer suffixes) and of a system OpenBLAS.
_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "_64", "")


def _openblas_function(lib, name):
    """lib's OpenBLAS function `name` under whichever prefix and suffix its build uses, or None."""
    for prefix in _PREFIXES:
        for suffix in _SUFFIXES:
            function = getattr(lib, f"{prefix}_{name}{suffix}", None)
            if function is not None:
                return function
    return None


def _openblas_handles():
    """The ctypes handle of each OpenBLAS loaded in this process (Linux; none elsewhere)."""
    import ctypes

    handles = []
    # also libblas.so.3: a distribution's OpenBLAS behind its BLAS alternatives (the reference
    # BLAS of that name has no OpenBLAS functions, and callers look for them)
    for path in sorted(p for p in _mapped_libraries()
                       if "openblas" in os.path.basename(p).lower() or os.path.basename(p).startswith("libblas.")):
        try:
            handles.append(ctypes.CDLL(path, mode=os.RTLD_NOLOAD))  # the copy already loaded, never a new one
        except OSError:
            continue
    return handles


def _openblas_libraries():
    """[(set_num_threads, get_num_threads)] of each OpenBLAS loaded in this process (Linux)."""
    import ctypes

    found = []
    for lib in _openblas_handles():
        setter, getter = _openblas_function(lib, "set_num_threads"), _openblas_function(lib, "get_num_threads")
        if setter is not None and getter is not None:
            setter.argtypes, setter.restype, getter.restype = [ctypes.c_int], None, ctypes.c_int
            found.append((setter, getter))
    return found


def _address(function):
    """The address of a ctypes function: the same for every handle of one loaded library."""
    import ctypes

    return ctypes.cast(function, ctypes.c_void_p).value


def blas_threads():
    """Thread counts of the OpenBLAS libraries loaded in this process (a list; empty if none found)."""
    return [int(getter()) for _, getter in _openblas_libraries()]


def blas_kernels():
    """The kernel set (core name) each OpenBLAS loaded in this process runs, e.g. ["Haswell"].

    OpenBLAS picks its kernels for the CPU when it loads, unless OPENBLAS_CORETYPE names
    them; the choice changes the last bits of matrix products (and their speed), so
    results that must be traced to their arithmetic record it. One name per OpenBLAS
    library found (empty where none is: another BLAS, or not Linux).
    """
    import ctypes

    names = []
    for lib in _openblas_handles():
        corename = _openblas_function(lib, "get_corename")
        if corename is not None:
            corename.restype = ctypes.c_char_p
            names.append(corename().decode("ascii", "replace"))
    return names


def set_threads(n):
    """Use n threads in numba's parallel loops and in every loaded OpenBLAS.

    On a quiet machine the default (one thread per core) is fastest; when other
    processes keep the cores busy, n = 1 avoids waiting on a descheduled worker. The
    same can be asked for without code: SGM_REF_THREADS=n in the environment is
    applied when sgm_ref is imported.

    Parameters
    ----------
    n : int
        1 <= n <= numba.config.NUMBA_NUM_THREADS (the pool size numba fixed at start-up,
        by default the number of cores; set NUMBA_NUM_THREADS before importing sgm_ref
        for more).

    Returns
    -------
    dict
        {"numba": numba's count for the calling thread, "blas": [count of each
        OpenBLAS]} after the change. While run_blocks calls are in progress (from any
        thread), the OpenBLAS they hold on one thread stay on it and get n when the last
        call ends, so "blas" still says 1 for them.

    Raises
    ------
    ValueError
        If n is not an integer in that range (bools refused). Nothing is changed then.

    Notes
    -----
    numba's count is per calling thread (numba.set_num_threads). OpenBLAS is found
    among the libraries loaded in the process (Linux); elsewhere, or for another BLAS,
    set OPENBLAS_NUM_THREADS / OMP_NUM_THREADS / MKL_NUM_THREADS before starting Python.
    The BLAS thread count can change the last bits of results (the same count gives the
    same bits).
    """
    limit = numba.config.NUMBA_NUM_THREADS
    n = check_count(n, "n")
    if n > limit:
        raise ValueError(f"n must be at most {limit}, the size of numba's thread pool (NUMBA_NUM_THREADS, by "
                         f"default the number of cores; set it before importing sgm_ref for more), got {n}")
    numba.set_num_threads(n)
    with _ONE_BLAS_LOCK:
        # run_blocks calls in progress: the OpenBLAS they hold on one thread stay there until the
        # last one ends (their blocks' products are computed on one thread), then get n
        held = {_address(setter) for setter, _ in _OPENBLAS_FOUND or []} if _ONE_BLAS_HOLDERS else set()
        for setter, _ in _openblas_libraries():
            if _address(setter) not in held:
                setter(n)
        if _ONE_BLAS_HOLDERS:  # the count they restore is this one
            _ONE_BLAS_SAVED[:] = [n] * len(_ONE_BLAS_SAVED)
    return {"numba": numba.get_num_threads(), "blas": blas_threads()}


if _REQUESTED is not None:
    try:
        set_threads(_REQUESTED)
    except ValueError as exc:  # more than numba's pool: leave the environment as it was
        if _BLAS_COUNT_BEFORE is None:
            del os.environ["OPENBLAS_NUM_THREADS"]
        else:
            os.environ["OPENBLAS_NUM_THREADS"] = _BLAS_COUNT_BEFORE
        error = ValueError(f"{ENV_THREADS}={_REQUESTED}: {exc}")
        if not _is_command_line():
            raise error from None
        ENVIRONMENT_ERROR = error  # the script says it in one line, exit status 2, as for a non-number


def busy_cpus():
    """Tasks other than this process's running or waiting for a CPU now, or None if unknown.

    The running-task count of /proc/loadavg (Linux), the median of a few reads a
    millisecond apart, minus the reading thread; a thread of another process counts
    as one, whether it computes or spins.
    """
    import time

    counts = []
    for _ in range(5):
        try:
            with open("/proc/loadavg") as f:
                counts.append(int(f.read().split()[3].split("/")[0]))
        except (OSError, ValueError, IndexError):
            return None
        time.sleep(0.001)
    return max(0, sorted(counts)[len(counts) // 2] - 1)


def busy_hint(busy=None, cpus=None, threads=None):
    """One line advising fewer threads when other work leaves too few CPUs free, else None.

    busy: other runnable tasks (default busy_cpus()); cpus: os.cpu_count(); threads:
    numba's current count. Advice when busy + threads > cpus (the pools would wait for
    descheduled workers; with busy = 0, worded as more threads than CPUs), suggesting
    max(1, cpus - busy) threads. None when the user chose a count (SGM_REF_THREADS,
    OPENBLAS_NUM_THREADS or OMP_NUM_THREADS set), when already at one thread, or when
    the load is unknown.
    """
    if any(name in os.environ for name in (ENV_THREADS, "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")):
        return None
    busy = busy_cpus() if busy is None else busy
    cpus = os.cpu_count() if cpus is None else cpus
    threads = numba.get_num_threads() if threads is None else threads
    if busy is None or not cpus or threads <= 1 or busy + threads <= cpus:
        return None
    n = max(1, cpus - busy)
    tasks = "task" if busy == 1 else "tasks"
    # nothing else running: more threads than CPUs (NUMBA_NUM_THREADS above the CPU count)
    why = (f"the machine is busy ({busy} other running {tasks} on {cpus} CPUs)" if busy > 0 else
           f"more threads than CPUs ({cpus})")
    return (f"note: {why}: with {threads} threads "
            f"each parallel step waits for a descheduled worker; SGM_REF_THREADS={n} is usually faster now "
            f"(results then differ in the last bits from a {threads}-thread run)")


# -- blocks of rows on several threads, each with one BLAS thread -------------------------

_OPENBLAS_FOUND = None  # _openblas_libraries() at the first run_blocks call (numpy's is loaded by then)


def _numpy_blas_name():
    """The BLAS NumPy was built with, lower case ("scipy-openblas", "openblas", "mkl",
    "accelerate", ...), or "" where NumPy does not say (before 1.25)."""
    import numpy as np

    try:
        return str(np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]).lower()
    except Exception:  # an older NumPy, or another layout of its build record
        return ""


def _openblas_once():
    """The OpenBLAS libraries run_blocks sets, found once: [] unless NumPy's own BLAS is an
    OpenBLAS (SciPy's OpenBLAS beside NumPy's MKL would leave NumPy's products threaded)."""
    global _OPENBLAS_FOUND
    if _OPENBLAS_FOUND is None:
        _OPENBLAS_FOUND = _openblas_libraries() if "openblas" in _numpy_blas_name() else []
    return _OPENBLAS_FOUND


def blas_settable():
    """Whether run_blocks can put NumPy's BLAS on one thread here (an OpenBLAS, on Linux)."""
    return bool(_openblas_once())


def _after_fork_in_child():
    """A fork while threads were inside run_blocks: the child has only the thread that
    forked, so it keeps that thread's calls (they go on, with OpenBLAS on one thread, and
    the last of them restores the counts when it ends), drops the other threads' and, if
    none is left, gives back the saved counts; it starts with a fresh lock."""
    global _ONE_BLAS_LOCK, _ONE_BLAS_HOLDERS, _ONE_BLAS_CALLERS
    _ONE_BLAS_LOCK = threading.Lock()
    me = threading.get_ident()  # the forking thread's identity, kept in the child
    _ONE_BLAS_CALLERS = [caller for caller in _ONE_BLAS_CALLERS if caller == me]
    if _ONE_BLAS_HOLDERS and not _ONE_BLAS_CALLERS:
        for (setter, _), count in zip(_OPENBLAS_FOUND or [], _ONE_BLAS_SAVED):
            setter(count)
    _ONE_BLAS_HOLDERS = len(_ONE_BLAS_CALLERS)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _default_block_threads(libraries):
    """numba's count for the calling thread, but no more than the OpenBLAS count outside
    run_blocks calls: set_threads(1), SGM_REF_THREADS=1 or OPENBLAS_NUM_THREADS=1 give one
    thread also to calls from other Python threads, whose numba count is numba's default."""
    with _ONE_BLAS_LOCK:
        counts = list(_ONE_BLAS_SAVED) if _ONE_BLAS_HOLDERS else [int(getter()) for _, getter in libraries]
    return min([numba.get_num_threads()] + counts)


@contextlib.contextmanager
def _one_blas_thread(libraries):
    """Every OpenBLAS in `libraries` on one thread while any caller is inside; the counts
    found by the first caller are restored when the last one leaves (concurrent calls from
    several Python threads nest, so none restores a count another still relies on)."""
    global _ONE_BLAS_HOLDERS, _ONE_BLAS_SAVED
    with _ONE_BLAS_LOCK:
        if _ONE_BLAS_HOLDERS == 0:
            _ONE_BLAS_SAVED = [int(getter()) for _, getter in libraries]
            for (setter, _), count in zip(libraries, _ONE_BLAS_SAVED):
                if count != 1:  # a library on one thread already (set_threads(1)) is left alone: ~2 us each
                    setter(1)
        _ONE_BLAS_HOLDERS += 1
        _ONE_BLAS_CALLERS.append(threading.get_ident())
    try:
        yield
    finally:
        with _ONE_BLAS_LOCK:
            _ONE_BLAS_HOLDERS -= 1
            _ONE_BLAS_CALLERS.remove(threading.get_ident())
            if _ONE_BLAS_HOLDERS == 0:
                for (setter, getter), count in zip(libraries, _ONE_BLAS_SAVED):
                    # on one thread now, unless changed another way meanwhile (threadpoolctl):
                    # the getter costs ~0.2 us, the setter ~0.5-2 us
                    if count != 1 or getter() != 1:
                        setter(count)


def run_blocks(n_blocks, make_worker, threads=None):
    """Run work(b) once for each block b in range(n_blocks), on up to `threads` threads.

    make_worker() is called once per thread and returns its work(b) (so each thread can
    own its buffers); blocks are handed out in order to whichever thread is free, and
    the calling thread is one of them. While the blocks run, every OpenBLAS loaded in the
    process computes on one thread: a pipeline of BLAS products and serial numba kernels
    per thread then keeps every core busy, where one pipeline with threaded products
    leaves all cores but one idle during its serial kernels (and a second thread pool
    would fight BLAS's for the cores). The gain is measured in benchmarks/RESULTS.md
    (the full-covariance mixture oracle).

    What each block computes does not depend on the thread that runs it, and its products
    always run on one BLAS thread, so results are the same bits for every thread count.
    Serial (one thread, the caller's) when threads <= 1 or when there is one block, with
    OpenBLAS on one thread all the same (OpenBLAS's count changes the last bits of larger
    products: a 600 x 600 x 600 one differs by up to 1e-13 between one and two threads);
    serial too where NumPy's BLAS cannot be set at run time (not an OpenBLAS, or not
    Linux): that BLAS keeps its own threads, whose count may change the last bits.

    The OpenBLAS counts are process-wide: other Python threads' products also run on one
    thread meanwhile. Concurrent calls share the change, and the last to end restores the
    counts the first found (or the count set_threads set meanwhile; a change made another
    way during a call, such as threadpoolctl's, is undone when it ends).

    Parameters
    ----------
    n_blocks : int
        Number of blocks, >= 0.
    make_worker : callable
        make_worker() -> work; work(b) computes block b. Both run outside the GIL for
        their long parts (NumPy's products, numba kernels compiled with nogil=True), or
        the threads run in turn.
    threads : int or None
        Threads to use, the caller's included. Default: numba's count for the calling
        thread (set_threads, SGM_REF_THREADS), but no more than OpenBLAS's count outside
        run_blocks calls, so that one thread asked of either is kept from any Python
        thread. Each thread holds its own buffers (memory grows with the count).

    Raises
    ------
    BaseException
        After every thread has stopped: the calling thread's own exception if it raised
        one, else the first of the other threads'. On an error or an interrupt the other
        threads finish the block they are in and take no more. The BLAS thread counts
        are restored in every case.
    """
    libraries = _openblas_once() if n_blocks > 0 else []
    if libraries and threads is None and n_blocks > 1:  # one block is serial whatever the count
        threads = _default_block_threads(libraries)
    if not libraries or n_blocks == 1 or threads <= 1:
        # serial; the products on one OpenBLAS thread as in the threaded case (the same bits)
        with _one_blas_thread(libraries) if libraries else contextlib.nullcontext():
            work = make_worker()
            for b in range(n_blocks):
                work(b)
        return
    lock, handed_out = threading.Lock(), [0]
    stop = threading.Event()
    errors = []

    def next_block():
        with lock:  # no two threads get the same block
            b = handed_out[0]
            handed_out[0] = b + 1
        return b

    def loop():
        work = make_worker()
        while not stop.is_set():
            b = next_block()
            if b >= n_blocks:
                return
            work(b)

    def helper():
        try:
            loop()
        except BaseException as exc:  # handed to the caller's thread, which raises it
            errors.append(exc)
            stop.set()

    with _one_blas_thread(libraries):
        helpers = []
        try:
            for i in range(min(threads, n_blocks) - 1):
                h = threading.Thread(target=helper, name=f"sgm_ref-block-{i + 1}", daemon=True)
                h.start()
                helpers.append(h)
            loop()
            for h in helpers:
                h.join()
        finally:
            stop.set()  # all blocks done: no effect; after an error or an interrupt: no more blocks
            for h in helpers:
                h.join()
    if errors:
        raise errors[0]
