"""The rate experiment's cells and rows: results.jsonl's last line, a cell out of memory, fit_slope."""

import concurrent.futures
import json
import math
import warnings

import numba
import numpy as np
import pytest

from sgm_ref.experiments import rate
from sgm_ref.experiments.rate import append_result, fit_slope, load_results, run_cell, sweep_summary
from sgm_ref.experiments.sweep import run_sweep

TINY = {**rate.SETTINGS, "width": 8, "depth": 1, "steps": 20, "batch_size": 16, "n_eval": 200, "n_eval_tilted": 100,
        "bound_n": 4, "bound_steps": 10, "val_n": 256}
ROW = {"family": "mixture", "d": 2, "n": 40, "seed": 0, "status": "ok", "score_error": 1.0, "score_error_se": 0.1,
       "tv_bound": None}


def test_a_complete_last_row_without_its_newline_is_read_and_given_its_newline(tmp_path):
    """A last row lacking only its newline was taken for a torn write: the report left the
    finished cell out without a word, and a sweep's repair cut the finished row off the file
    (a review). A write cut short cannot leave a whole JSON object: the object's text ends at
    its closing brace (checked below on every prefix of a row)."""
    path = tmp_path / "results.jsonl"
    first, last = json.dumps(ROW) + "\n", json.dumps({**ROW, "n": 80, "score_error": 0.5})
    path.write_text(first + last)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is dropped, so nothing to warn about
        rows = load_results(path)
    assert rows == [json.loads(first), json.loads(last)]
    assert path.read_text() == first + last  # reading alone changes nothing
    assert load_results(path, repair=True) == rows
    assert path.read_text() == first + last + "\n"  # repaired: the next append starts a line of its own
    append_result(path, {**ROW, "n": 160})
    assert [r["n"] for r in load_results(path)] == [40, 80, 160]
    for k in range(1, len(last)):  # no proper prefix of a row is a whole JSON object
        with pytest.raises(ValueError):
            json.loads(last[:k])


def test_the_first_row_fsyncs_the_new_results_file_s_folder_too(tmp_path, monkeypatch):
    """A new results.jsonl's entry in its folder is fsynced after its first line (a power cut could
    lose the file with its fsynced row); later rows fsync the file alone."""
    import os

    events = []
    fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(os.readlink(f"/proc/self/fd/{fd}")), fsync(fd))[1])
    path = tmp_path / "results.jsonl"
    append_result(path, ROW)
    append_result(path, {**ROW, "n": 80})
    assert events == [str(path), str(tmp_path), str(path)]


def test_a_torn_last_line_is_named_when_it_is_left_out_or_cut_off(tmp_path):
    """A torn last line was dropped without a word, by the report too (a review)."""
    path = tmp_path / "results.jsonl"
    first = json.dumps(ROW) + "\n"
    path.write_text(first + '{"family": "mix')
    with pytest.warns(UserWarning, match=r"results.jsonl, line 2, is incomplete \(a write cut short\) and is left "
                                         r"out: b'\{\"family\": \"mix'"):
        assert [r["n"] for r in load_results(path)] == [40]
    assert path.read_text() == first + '{"family": "mix'
    with pytest.warns(UserWarning, match="line 2, is incomplete .* cut off; its cell runs again"):
        load_results(path, repair=True)
    assert path.read_text() == first


def test_a_whole_last_object_that_is_no_row_is_refused_not_cut_off(tmp_path):
    """A last line that is a whole JSON object but no result row is no torn write: it was
    ignored, and repair=True removed it from the file."""
    path = tmp_path / "results.jsonl"
    text = json.dumps(ROW) + "\n" + json.dumps({**ROW, "family": "moons"})
    path.write_text(text)
    for repair in (False, True):
        with pytest.raises(ValueError, match="line 2, is not a result row"):
            load_results(path, repair=repair)
        assert path.read_text() == text  # untouched


MEMORY = "Unable to allocate 262. MiB for an array with shape (32000, 1024) and data type float64"


_REAL = rate._train_and_measure


def _out_of_memory_at(n):
    def train_and_measure(cell):
        if cell["n"] == n:
            raise MemoryError(MEMORY)
        return _REAL(cell)

    return train_and_measure


def test_a_cell_out_of_memory_is_a_failed_row_not_the_end_of_the_sweep(tmp_path, monkeypatch):
    """A MemoryError inside a cell ended the whole sweep ("sgm-ref: error: out of memory",
    naming no cell), dropped the running cells, left summary.* as before, and every rerun met
    the cell again (a review). It is now that cell's failed row, as a diverged cell is."""
    monkeypatch.setattr(rate, "_train_and_measure", _out_of_memory_at(80))
    threads = numba.get_num_threads()
    row = run_cell({"family": "mixture", "d": 2, "n": 80, "seed": 0, "settings": TINY})
    assert numba.get_num_threads() == threads
    assert row["status"] == "failed" and (row["family"], row["d"], row["n"], row["seed"]) == ("mixture", 2, 80, 0)
    assert row["error"] == (f"out of memory ({MEMORY}): rerun with --retry-failed and fewer --workers, "
                            "or a smaller --d or --n")
    assert row["sgm_ref"] and "host" in row  # the environment it ran in, as every row
    grid = {"families": ["mixture"], "d": [2], "n": [40, 80], "seeds": [0], "settings": TINY}
    messages = []
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        results = run_sweep(tmp_path / "sweep", grid, executor=executor, log=messages.append)
    assert sorted((r["n"], r["status"]) for r in results) == [(40, "ok"), (80, "failed")]
    assert any("n=80" in m and "FAILED: out of memory" in m for m in messages)
    assert (tmp_path / "sweep" / "summary.json").is_file()
    monkeypatch.setattr(rate, "_train_and_measure", _out_of_memory_at(None))  # memory enough now: the retry
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        results = run_sweep(tmp_path / "sweep", grid, executor=executor, retry_failed=True, log=lambda s: None)
    assert sorted((r["n"], r["status"]) for r in results) == [(40, "ok"), (80, "ok")]


def test_fit_slope_against_scipy_linregress_on_the_seed_means():
    """Slope, se and intercept = scipy.stats.linregress of the seed means of log(error) on log(n)."""
    from scipy import stats

    rng = np.random.default_rng(0)
    for _ in range(50):
        ns = np.unique(rng.integers(10, 10**6, size=rng.integers(3, 9)))
        n = np.repeat(ns, rng.integers(1, 4))
        error = np.exp(rng.normal() - rng.uniform(0.2, 1.2) * np.log(n) + rng.normal(0.0, 0.3, n.size))
        slope, se, intercept = fit_slope(n, error)
        ref = stats.linregress(np.log(ns), [np.log(error[n == v]).mean() for v in ns])
        assert slope == pytest.approx(ref.slope, rel=1e-12, abs=0)
        assert se == pytest.approx(ref.stderr, rel=1e-10, abs=0)
        assert intercept == pytest.approx(ref.intercept, rel=1e-10, abs=0)


def test_fit_slope_is_nan_as_its_docstring_says():
    """Two distinct n: a slope and intercept, no standard error; fewer: nothing (all nan)."""
    slope, se, intercept = fit_slope([10, 100, 100], [1.0, 0.2, 0.05])  # seed means: log 1, log 0.1
    assert slope == pytest.approx(-1.0, rel=1e-15) and intercept == pytest.approx(1.0 * math.log(10), rel=1e-15)
    assert math.isnan(se)
    for n, error in (([10, 10], [1.0, 0.5]), ([10], [1.0]), ([], [])):
        assert all(math.isnan(v) for v in fit_slope(n, error))
    doc = " ".join(fit_slope.__doc__.split())
    assert "fewer than two (one n, or none) there is no line, and all three are nan" in doc


def test_sweep_summary_points_against_numpy():
    """Each n's mean error, its standard error over seeds and the mean bound = NumPy's; the
    local slopes are those of the means."""
    rng = np.random.default_rng(3)
    rows = [{**ROW, "n": n, "seed": s, "score_error": float(np.exp(rng.normal()) / math.sqrt(n)),
             "tv_bound": float(rng.uniform(0.2, 1.2))} for n in (100, 400, 1600) for s in range(4)]
    (summary,) = sweep_summary(rows + [{**ROW, "n": 100, "seed": 9, "status": "failed", "error": "x"}])
    for point in summary["points"]:
        e = np.array([r["score_error"] for r in rows if r["n"] == point["n"]])
        tv = np.array([r["tv_bound"] for r in rows if r["n"] == point["n"]])
        assert point["seeds"] == 4
        assert point["score_error"] == pytest.approx(np.mean(e), rel=1e-15, abs=0)
        assert point["score_error_se"] == pytest.approx(np.std(e, ddof=1) / 2.0, rel=1e-14, abs=0)
        assert point["tv_bound"] == pytest.approx(np.mean(tv), rel=1e-15, abs=0)
        assert point["tv_bound_vacuous"] == bool(np.any(tv >= 1.0))
    means = [p["score_error"] for p in summary["points"]]
    assert summary["local_slopes"] == pytest.approx([math.log(means[k + 1] / means[k]) / math.log(4.0)
                                                     for k in range(2)], rel=1e-13, abs=0)


def test_sweep_summary_does_not_depend_on_the_order_of_the_rows():
    """write_outputs sorts the rows before summarising them, but sweep_summary itself (public)
    summed the seeds in the order given: the same rows shuffled moved the means, the standard
    errors and the fitted slope in the last bits (5.9e-16 relative in a review). Each shuffle
    now gives the same numbers, bit for bit, as the rows in the order of their cells."""
    rng = np.random.default_rng(5)
    rows = [{**ROW, "d": d, "n": n, "seed": s, "score_error": float(np.exp(rng.normal()) * n ** -0.7),
             "tv_bound": float(rng.uniform(0.1, 0.9))}
            for d in (2, 8) for n in (100, 200, 400, 800, 1600) for s in range(5)]
    rows.append({**ROW, "n": 100, "seed": 9, "status": "failed", "error": "x"})
    reference = json.dumps(sweep_summary(sorted(rows, key=rate.cell_key)))
    for k in range(10):
        np.random.default_rng(k).shuffle(rows)
        assert json.dumps(sweep_summary(rows)) == reference
