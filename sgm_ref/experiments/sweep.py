"""Running the rate experiment's cells on an Executor, resumably, and writing its outputs.

    OUT/sweep.json     the settings every cell shares, the families' definitions and the
                       sgm_ref version (a restart must match them)
    OUT/results.jsonl  one line per finished cell, appended as cells finish (failed cells
                       too, with their error: a restart skips them unless retry_failed)
    OUT/.lock          held while a sweep writes, so two sweeps cannot share a folder
    OUT/results.csv    the same as a table (rewritten at the end)
    OUT/summary.json   per (family, d): fitted slope of log error against log n, ± se
    OUT/summary.md     the table a reader looks at
    OUT/rate.png       error against n, one line per d, one panel per family (matplotlib)
"""

import concurrent.futures
import concurrent.futures.process
import contextlib
import csv
import io
import json
import multiprocessing
import os
import re
import signal
import threading
import time

from .. import __version__
from .._json import load_json
from .._validation import check_count
from .._lock import folder_lock
from ..io import _fsync_folder, atomic_write
from .rate import (DEFINITIONS, append_result, cell_key, cells, check_settings, load_results, make_grid, run_cell,
                   sweep_summary)

__all__ = ["run_sweep", "write_outputs"]

# SGM_REF_THREADS too: a worker importing sgm_ref with SGM_REF_THREADS=2 beside NUMBA_NUM_THREADS=1
# refused it at import, and every worker died (BrokenProcessPool, "killed, or out of memory?")
_THREAD_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS", "SGM_REF_THREADS")


@contextlib.contextmanager
def _single_threaded_children():
    """Workers start with one BLAS/numba thread each: cells share the cores, not a cell's threads."""
    saved = {k: os.environ.get(k) for k in _THREAD_VARIABLES}
    os.environ.update({k: "1" for k in _THREAD_VARIABLES})
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _exit_with_parent(parent):
    """A pool worker's initializer: the worker ends when the sweep process that started it is gone.

    A sweep killed outright (SIGKILL, SIGTERM, the out-of-memory killer) cannot shut its pool
    down, and a worker of concurrent.futures never notices on its own (it holds both ends of
    its task queue): it went on with its cell, then waited for tasks forever, holding its
    memory, and a rerun's workers shared the cores with it. Its result would be lost anyway
    (only the sweep process writes results.jsonl): the rerun computes the cell again.
    """
    def watch():
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="sgm_ref-exit-with-parent", daemon=True).start()


@contextlib.contextmanager
def _workers_ignore_interrupts():
    """SIGINT ignored while the pool starts its workers, which keep that disposition (an exec
    keeps ignored signals, and Python then installs no KeyboardInterrupt): a Ctrl-C, sent by the
    terminal to the whole process group, reaches the sweep alone, which stops the workers (_run).
    Each worker took it as its cell's error and went on with the queued cells, or printed a
    traceback, or a line of its own, when it landed in its imports. Only from the main thread,
    the one Python lets set a handler. A Ctrl-C in those milliseconds (15-130 ms for 1-8 workers
    here) is lost: the sweep goes on, and a second one stops it."""
    # (and only where the handler is Python's to put back: an embedding program's is None here)
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGINT) is None:
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_text(path, text):
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _check_settings(folder, settings):
    path = os.path.join(folder, "sweep.json")
    current = {"sgm_ref": __version__, "families": DEFINITIONS, "settings": settings}
    if os.path.exists(path):
        try:
            with open(path, encoding="utf-8") as f:
                saved = load_json(f, "the file")
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path} is unreadable ({exc}); put the sweep's own sweep.json back to continue it, or "
                             "use a new output folder") from None
        if not isinstance(saved, dict) or set(saved) != set(current) \
                or not isinstance(saved["settings"], dict) or not isinstance(saved["families"], dict):
            raise ValueError(f"{path} is not a sweep description of this sgm_ref; use a new output folder")
        changed = sorted(k for k in set(saved["settings"]) | set(settings)
                         if saved["settings"].get(k) != settings.get(k))
        changed += ["sgm_ref"] if saved["sgm_ref"] != current["sgm_ref"] else []
        # a family may be added to a sweep; one whose definition changed may not
        changed += [f"family {f}" for f in saved["families"] if f in DEFINITIONS and saved["families"][f] != DEFINITIONS[f]]
        if changed:
            raise ValueError(f"{folder} holds a sweep with other settings ({', '.join(changed)}); "
                             "use a new output folder, or the same settings to continue it")
        if set(DEFINITIONS) - set(saved["families"]):
            _write_text(path, json.dumps({**saved, "families": {**saved["families"], **DEFINITIONS}}, indent=2) + "\n")
    elif os.path.exists(os.path.join(folder, "results.jsonl")):
        raise ValueError(f"{folder} has results.jsonl but no sweep.json: its settings are unknown; "
                         "use a new output folder")
    elif set(os.listdir(folder)) - {".lock"}:
        raise ValueError(f"{folder} is not empty and holds no sweep; use a new or empty output folder")
    else:
        _write_text(path, json.dumps(current, indent=2) + "\n")


def _lock(folder):
    return folder_lock(folder, kind="sweep")


def run_sweep(folder, grid, *, workers=2, scheduler=None, executor=None, retry_failed=False, log=print):
    """Run the cells of grid not yet in folder/results.jsonl; write the outputs; return all results.

    Parameters
    ----------
    folder : str
        Output folder (created if needed; an existing sweep there is continued).
    grid : dict
        {"families": [...], "d": [...], "n": [...], "seeds": [...], "settings": {...}}
        (sgm_ref.experiments.rate.QUICK and FULL are examples).
    workers : int
        Processes of the local pool (ignored with scheduler or executor).
    scheduler : str, optional
        Address of a running Dask distributed scheduler: the same jobs go to its workers.
    executor : concurrent.futures.Executor, optional
        Any executor to submit the cells to (used as is, not shut down).
    retry_failed : bool
        Run again the cells of grid recorded as failed (their old rows are then replaced;
        failed rows of cells outside grid are kept).
    log : callable(str)
    """
    folder = os.fspath(folder)
    if not folder:
        raise ValueError("the sweep folder must be named, got ''")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ValueError(f"the sweep folder {folder} is a file; name a new or existing folder")
    _check_grid(grid)
    if executor is None and scheduler is None:
        check_count(workers, "workers")
    with contextlib.ExitStack() as stack:
        if executor is None and scheduler is not None:  # connected first: a wrong address leaves no folder
            executor = _dask_executor(scheduler, stack)
        return _sweep(folder, grid, workers, executor, retry_failed, log)


_GRID_KEYS = ("families", "d", "n", "seeds", "settings")


def _check_grid(grid):
    """Raise ValueError unless grid is one make_grid could return, with settings that JSON keeps
    and that every cell can run (rate.check_settings).

    sweep.json stores the settings as JSON and a restart compares them with its own: a
    value JSON changes (NaN: NaN != NaN; a tuple, read back as a list; a numpy scalar,
    not written at all) would make the same sweep's restart refused as "other settings";
    so would the corrected settings after a missing or malformed one had made every cell
    raise.
    """
    if not isinstance(grid, dict) or set(grid) != set(_GRID_KEYS):
        raise ValueError(f"grid must be a dict with the keys {', '.join(_GRID_KEYS)} "
                         "(sgm_ref.experiments.rate.make_grid makes one)")
    for key in _GRID_KEYS[:4]:
        if not isinstance(grid[key], (list, tuple)):
            raise ValueError(f"grid[{key!r}] must be a list, got {grid[key]!r}")
    make_grid(families=grid["families"], d=grid["d"], n=grid["n"], seeds=grid["seeds"])  # the lists' checks
    settings = grid["settings"]
    if not isinstance(settings, dict) or not all(isinstance(k, str) for k in settings):
        raise ValueError(f"grid['settings'] must be a dict with str keys, got {settings!r}")
    for key, value in settings.items():
        try:
            same = json.loads(json.dumps(value, allow_nan=False)) == value
        except (TypeError, ValueError):
            same = False
        if not same:
            raise ValueError(f"grid['settings'][{key!r}] = {value!r} is not a plain JSON value (int, finite float, "
                             "str, bool, None, or lists and dicts of them): sweep.json stores the settings and a "
                             "restart compares them")
    check_settings(settings, "grid['settings']")  # before sweep.json stores them: every cell reads them


def _dask_executor(scheduler, stack):
    """An executor of the Dask scheduler at this address, closed with stack."""
    try:
        from distributed import Client
    except ImportError:
        raise ValueError("--scheduler needs Dask distributed: pip install \"sgm_ref[dask]\"") from None
    try:
        client = stack.enter_context(Client(scheduler))  # Dask's own connect timeout (30 s by default)
    except (OSError, ValueError, TypeError) as exc:  # a malformed address, nothing listening, a timeout
        raise ValueError(f"--scheduler {scheduler}: cannot connect to a Dask scheduler there "
                         f"({type(exc).__name__}: {exc})") from None
    return client.get_executor()


# the files a sweep writes through atomic_write (results.jsonl is appended to, and rewritten by retry_failed)
_WRITTEN = ("sweep.json", "results.jsonl", "results.csv", "summary.json", "summary.md", "rate.png")
_TEMPORARY = re.compile(r"\.tmp-[a-z0-9_]{8}(" + "|".join(re.escape(name) for name in _WRITTEN) + ")")


def _remove_stale_temporaries(folder):
    """The temporaries (".tmp-" + random + one of _WRITTEN) of writes a killed sweep left.

    Called under the folder's lock, so none is a write in progress. Left there, one of
    sweep.json's made the folder "not empty and holds no sweep" for the rerun.
    """
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        # mkstemp's 8 random characters exactly: a report's ".tmp-XXXXXXXXmy_summary.md" is not ours
        if _TEMPORARY.fullmatch(name) and os.path.isfile(path) and not os.path.islink(path):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


def _sweep(folder, grid, workers, executor, retry_failed, log):
    missing, up = [], os.path.abspath(folder)
    while not os.path.isdir(up):  # the folders makedirs makes, deepest first
        missing.append(up)
        up = os.path.dirname(up)
    os.makedirs(folder, exist_ok=True)
    for made in reversed(missing):  # each new folder's entry in its parent on disk, as its files'
        _fsync_folder(os.path.dirname(made))
    with _lock(folder):
        _remove_stale_temporaries(folder)
        _check_settings(folder, grid["settings"])
        results_path = os.path.join(folder, "results.jsonl")
        results = load_results(results_path, repair=True)
        if retry_failed:  # the failed cells of this grid run again; failures outside it are kept
            in_grid = {cell_key(c) for c in cells(grid)}
            results = [r for r in results if r.get("status", "ok") == "ok" or cell_key(r) not in in_grid]
        done = {cell_key(r) for r in results}
        todo = [c for c in cells(grid) if cell_key(c) not in done]
        failed = sum(r.get("status", "ok") != "ok" for r in results)
        log(f"{len(done)} cells already in {results_path}" + (f" ({failed} failed)" if failed else "")
            + f"; {len(todo)} to run")
        if todo:
            try:
                _run(todo, results, results_path, workers, executor, log)
            except concurrent.futures.process.BrokenProcessPool:
                write_outputs(folder, results)
                raise ValueError(f"a worker process died (killed, or out of memory?); the {len(results)} finished "
                                 "cells are kept: rerun the same command to continue, with fewer --workers if "
                                 "memory ran out") from None
        if retry_failed:  # one row per cell in the file too
            _write_text(results_path, "".join(json.dumps(r, allow_nan=False) + "\n" for r in results))
        write_outputs(folder, results)
    return results


def _run(todo, results, results_path, workers, executor, log):
    with contextlib.ExitStack() as stack:
        own_pool = None
        if executor is None:
            stack.enter_context(_single_threaded_children())
            executor = own_pool = concurrent.futures.ProcessPoolExecutor(
                max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=_exit_with_parent, initargs=(os.getpid(),))
        with _workers_ignore_interrupts() if own_pool is not None else contextlib.nullcontext():
            futures = [executor.submit(run_cell, c) for c in todo]  # which starts the pool's workers
        finished = False
        try:
            for k, future in enumerate(concurrent.futures.as_completed(futures), start=1):
                r = future.result()
                if r.get("sgm_ref", __version__) != __version__:  # a cluster's worker on other code
                    raise ValueError(f"a worker runs sgm_ref {r['sgm_ref']} and this sweep {__version__}: its cells "
                                     "would be mixed with this version's; install the same sgm_ref on every worker")
                append_result(results_path, r)
                results.append(r)
                log(f"[{k}/{len(todo)}] " + _describe(r))
            finished = True
        finally:
            for f in futures:
                f.cancel()
            if own_pool is not None:
                if not finished:
                    # interrupted (Ctrl-C, an error): the running cells are rerun next time, so their
                    # workers are stopped, not waited for. A worker takes a Ctrl-C to the process group
                    # as its cell's error and went on with the queued cells, and the interpreter's exit
                    # waits for the pool: the command returned 12-32 s after its "interrupted" line
                    # (minutes with the full grid's cells). (No public call stops a pool's workers
                    # before Python 3.14's terminate_workers.)
                    for process in list((getattr(own_pool, "_processes", None) or {}).values()):
                        with contextlib.suppress(OSError, ValueError):
                            process.terminate()
                own_pool.shutdown(wait=finished, cancel_futures=True)


def _describe(r):
    head = f"{r['family']:8s} d={r['d']:<4d} n={r['n']:<6d} seed={r['seed']}  "
    if r.get("status", "ok") != "ok":
        return head + f"FAILED: {r['error']}"
    bound = "" if r.get("tv_bound") is None else f"TV bound {r['tv_bound']:.3g}  "
    return head + (f"score error {r['score_error']:.4g} ± {r['score_error_se']:.2g}  {bound}"
                   f"({r['train_seconds']:.0f} s training)")


def write_outputs(folder, results):
    """results.csv, summary.json, summary.md and (with matplotlib) rate.png from the results.

    A nested value of a row (a dict or list: tv, em, the baselines) is one CSV cell holding
    its JSON, as in results.jsonl: the same text whether the row was just computed (numpy
    scalars inside) or read back from results.jsonl by a resumed sweep. The rows are taken
    in the order of their cells, not of the list: its order is that in which the cells
    finished (and a resumed sweep's rows come after those of the file), and it moved the
    CSV's columns (a failed row's keys before an ok row's) and the last bits of the means
    and slopes of summary.json.
    """
    if not results:
        return
    results = sorted(results, key=cell_key)
    columns = list(dict.fromkeys(k for r in results for k in r))
    rows = [{k: json.dumps(v, allow_nan=False) if isinstance(v, (dict, list)) else v for k, v in r.items()}
            for r in results]

    def write_csv(f):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
        f.write(text.getvalue().encode("utf-8"))

    atomic_write(os.path.join(folder, "results.csv"), write_csv)
    summary = sweep_summary(results)
    _write_text(os.path.join(folder, "summary.json"), json.dumps(summary, indent=2, allow_nan=False) + "\n")
    # the samplers of the rows that have a bound (a Monte-Carlo family has none: it names no sampler)
    methods = sorted({(r.get("tv") or {}).get("method") or "euler_maruyama" for r in results
                      if r.get("status", "ok") == "ok" and r.get("tv_bound") is not None})
    _write_text(os.path.join(folder, "summary.md"), summary_markdown(summary, methods))
    if summary:  # nothing to plot when every cell failed
        plot_rate(os.path.join(folder, "rate.png"), summary)


def _row(cells):
    """A Markdown table row: one cell per entry (an empty list of n adds no empty cell)."""
    return "| " + " | ".join(cells) + " |"


def _fixed(v):
    """A slope with two decimals; '–' for one that could not be computed (None)."""
    return "–" if v is None else f"{v:.2f}"


def _tv_mean(point):
    """A point's mean certified bound: "1" when it is vacuous in every seed; else the mean with
    three decimals (more where three would print 1.000), marked * when some seed's bound is
    vacuous. The point's tv_bound_vacuous says "some seed": it printed "1" for a mean of
    0.6 over five seeds of which one was vacuous."""
    mean = point["tv_bound"]
    if mean is None:  # no row of the point has a bound
        return "–"
    if mean >= 1.0:
        return "1"
    digits = 3
    while digits < 17 and float(f"{mean:.{digits}f}") >= 1.0:
        digits += 1
    return f"{mean:.{digits}f}" + ("*" if point["tv_bound_vacuous"] else "")


def summary_markdown(summary, methods=("euler_maruyama",)):
    """Two tables: the score error with the fitted slopes, and the certified TV bound of the
    sampler(s) named in methods (the tv["method"] of the rows with a bound; older rows: Euler–Maruyama);
    no TV table when no row has a bound."""
    ns = sorted({p["n"] for s in summary for p in s["points"]})
    counts = {p["seeds"] for s in summary for p in s["points"]} or {1}
    # a point of one seed (a sweep still running its other seeds) has its Monte-Carlo se (sweep_summary)
    spread = ("Monte-Carlo standard error of the one seed (seed-to-seed spread not measured)" if counts == {1}
              else "standard error over seeds" if 1 not in counts
              else "standard error over seeds (a point of one seed: its Monte-Carlo standard error)")
    lines = ["Integrated score error int E|s - grad log p_t|^2 dt, mean over seeds ± " + spread + ".",
             "Slope: least squares of the mean log error against log n, ± its standard error from the",
             "scatter about the line (dof = number of n fitted - 2, an n with no error > 0 not fitted,",
             "– below 0; 95% interval by Student's t; – where it cannot be computed); local slopes",
             "between neighbouring n show any bend.", "",
             _row(["family", "d", "slope ± se (dof)", "95% interval", "local slopes"] + [f"n = {n}" for n in ns]),
             "|" + "---|" * (5 + len(ns))]
    for s in summary:
        by_n = {p["n"]: p for p in s["points"]}
        values = [f"{by_n[n]['score_error']:.3g} ± {by_n[n]['score_error_se']:.1g}" if n in by_n else "" for n in ns]
        low, high = (_fixed(v) for v in s["slope_95"])
        local = ", ".join(_fixed(v) for v in s["local_slopes"])
        dof = s["slope_dof"] if s["slope_dof"] >= 0 else "–"  # fewer than two n fitted: no line at all
        lines.append(f"| {s['family']} | {s['d']} | {_fixed(s['slope'])} ± {_fixed(s['slope_se'])} "
                     f"({dof}) | [{low}, {high}] | {local} | " + " | ".join(values) + " |")
    if not methods or all(p["tv_bound"] is None for s in summary for p in s["points"]):
        return "\n".join(lines) + "\n"  # no row has a certified bound: no table of them
    lines += ["", f"Certified upper bound on TV(p_0, output of {' / '.join(methods)}), mean over seeds "
                  "(1: every seed's bound vacuous, TV <= 1 always; * the mean of seeds some of whose bounds "
                  "are vacuous).", "",
              _row(["family", "d"] + [f"n = {n}" for n in ns]), "|" + "---|" * (2 + len(ns))]
    for s in summary:
        by_n = {p["n"]: p for p in s["points"]}
        if all(p["tv_bound"] is None for p in s["points"]):
            continue  # a family without a certified bound (a Monte-Carlo oracle)
        values = [_tv_mean(by_n[n]) if n in by_n else "" for n in ns]
        lines.append(f"| {s['family']} | {s['d']} | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def plot_rate(path, summary):
    try:
        from matplotlib.figure import Figure  # made without pyplot: no backend switch, nothing to close
    except ImportError:
        return False

    families = sorted({s["family"] for s in summary})
    fig = Figure(figsize=(5.5 * len(families), 4.2))
    axes = fig.subplots(1, len(families), sharey=True, squeeze=False)
    for ax, family in zip(axes[0], families):
        for s in (s for s in summary if s["family"] == family):
            n = [p["n"] for p in s["points"]]
            e = [p["score_error"] for p in s["points"]]
            se = [p["score_error_se"] for p in s["points"]]
            ax.errorbar(n, e, yerr=[2 * v for v in se], marker="o", ms=3, capsize=2,
                        label=f"d = {s['d']}: slope {_fixed(s['slope'])} ± {_fixed(s['slope_se'])}")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("n (training samples)")
        ax.set_title(family)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("int E|s - grad log p_t|^2 dt")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))
    return True
