"""The rate experiment: cells, resumable sweeps on any Executor (Dask included), the slope fit."""

import concurrent.futures
import concurrent.futures.process
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _peers import peer
from sgm_ref._threads import blas_kernels
from sgm_ref.experiments import rate
from sgm_ref.experiments.rate import (cells, fit_slope, load_results, make_grid, make_target, run_cell,
                                     sweep_summary)
from sgm_ref.experiments.sweep import run_sweep

TINY = {**rate.SETTINGS, "width": 8, "depth": 1, "steps": 20, "batch_size": 16, "n_eval": 200, "n_eval_tilted": 100,
        "bound_n": 4, "bound_steps": 10}
# the settings that came after the first full run; a sweep folder made before them has none
LATER = ("lr_schedule", "lr_final", "time_sampling", "checkpoint", "val_early", "output_init")
GRID = {"families": ["mixture", "product"], "d": [2], "n": [40, 80], "seeds": [0], "settings": TINY}


class CountingExecutor(concurrent.futures.ThreadPoolExecutor):
    """A thread pool that remembers which cells it was given."""

    def __init__(self):
        super().__init__(max_workers=2)
        self.cells = []

    def submit(self, fn, cell):
        self.cells.append(rate.cell_key(cell))
        return super().submit(fn, cell)


def test_targets_of_the_families():
    m, p = make_target("mixture", 5), make_target("product", 5)
    assert np.allclose(np.linalg.norm(m.means, axis=1), rate.RADIUS)  # bounded means in every d
    assert np.allclose(np.abs(p.means), rate.RADIUS / np.sqrt(2))      # mean norm RADIUS sqrt(d / 2)
    tilt = make_target("tilted", 5)
    net = tilt.network
    assert net["path_norm"] == rate.DEFINITIONS["tilted"]["path_norm"]  # the same complexity in every d
    assert np.isclose(np.sum(np.abs(net["a"]) * (1 + np.abs(net["b"]))), net["path_norm"])
    with pytest.raises(ValueError, match="family"):
        make_target("moons", 2)


def test_tilted_cell_has_a_debiased_error_and_no_bound():
    row = run_cell({"family": "tilted", "d": 3, "n": 60, "seed": 0, "settings": TINY})
    assert row["status"] == "ok" and row["tv_bound"] is None and row["score_error_se"] > 0
    assert row["blas_kernels"] == blas_kernels() and row["blas_kernels"]  # what its products ran on
    (summary,) = sweep_summary([row, {**row, "n": 120, "score_error": row["score_error"] / 2}])
    assert summary["points"][0]["tv_bound"] is None


def test_debiasing_removes_the_oracles_own_error():
    """The score -x against oracles with different draws: the debiased errors agree within their se."""
    from sgm_ref import OU
    from sgm_ref.experiments.rate import _integrated_errors

    values = []
    for seed in range(3):
        target = make_target("tilted", 4)
        target._z = np.random.default_rng(50 + seed).standard_normal(target._z.shape)  # another oracle
        out = _integrated_errors({"minus_x": lambda x, t: -x}, lambda x, t: -x, target, OU(), 1e-2, 5.0, 3000, 2,
                                 np.random.default_rng(9))["minus_x"]
        values.append((out["error"], out["se"]))
    (a, se_a), (b, se_b), (c, se_c) = values
    assert abs(a - b) < 5 * np.hypot(se_a, se_b) and abs(a - c) < 5 * np.hypot(se_a, se_c)


def test_a_cell_is_reproducible():
    cell = {"family": "mixture", "d": 2, "n": 40, "seed": 1, "settings": TINY}
    a, b = run_cell(cell), run_cell(cell)
    for key in ("score_error", "score_error_se", "tv_bound", "kl_path", "final_loss"):
        assert a[key] == b[key], key
    other = run_cell({**cell, "seed": 2})
    assert other["score_error"] != a["score_error"]


def test_sweep_appends_and_resume_skips_finished_cells(tmp_path):
    first = CountingExecutor()
    with first:
        results = run_sweep(tmp_path, GRID, executor=first, log=lambda s: None)
    assert len(results) == 4 and sorted(first.cells) == sorted(rate.cell_key(c) for c in cells(GRID))
    lines = (tmp_path / "results.jsonl").read_text().splitlines()
    assert len(lines) == 4
    for name in ("results.csv", "summary.json", "summary.md", "sweep.json"):
        assert (tmp_path / name).is_file(), name

    # a killed sweep: the last line torn in half, and the grid extended by one n
    with open(tmp_path / "results.jsonl", "r+b") as f:
        f.truncate(sum(len(line) + 1 for line in lines[:3]) + 10)
    again = CountingExecutor()
    messages = []
    with again, pytest.warns(UserWarning, match=r"line 4, is incomplete \(a write cut short\) and is cut off; its "
                                                  r"cell runs again"):
        results = run_sweep(tmp_path, {**GRID, "n": [40, 80, 120]}, executor=again, log=messages.append)
    torn = json.loads(lines[3])
    assert messages[0].startswith("3 cells already")
    assert sorted(again.cells) == sorted([rate.cell_key(torn)] + [(f, 2, 120, 0) for f in ("mixture", "product")])
    assert len(load_results(tmp_path / "results.jsonl")) == 6 == len(results)
    redone = next(r for r in results if rate.cell_key(r) == rate.cell_key(torn))
    assert redone["score_error"] == torn["score_error"]  # same cell, same bits, whichever run made it


def test_results_file_is_never_silently_cut(tmp_path):
    path = tmp_path / "results.jsonl"
    good = json.dumps({"family": "mixture", "d": 2, "n": 40, "seed": 0, "score_error": 1.0, "score_error_se": 0.1}) + "\n"
    path.write_text(good + "garbage\n" + good.replace('"n": 40', '"n": 80'))
    with pytest.raises(ValueError, match="line 2, is not a result row"):
        load_results(path, repair=True)
    assert path.read_text().count("\n") == 3  # untouched
    path.write_text(good + good.replace("1.0", "2.0") + '{"family": "mix')
    with pytest.warns(UserWarning, match="line 3, is incomplete .* left out"):
        rows = load_results(path)  # a repeated cell keeps its first row; the torn tail is ignored, and named
    assert [r["score_error"] for r in rows] == [1.0]
    assert path.read_text().endswith('{"family": "mix')  # reading alone changes nothing
    with pytest.warns(UserWarning, match="line 3, is incomplete .* cut off; its cell runs again"):
        load_results(path, repair=True)
    assert path.read_text() == good + good.replace("1.0", "2.0")


ROW = {"family": "mixture", "d": 2, "n": 40, "seed": 0, "status": "ok", "score_error": 1.0, "score_error_se": 0.1,
       "tv_bound": None}


@pytest.mark.parametrize("change", [
    {"score_error": "a"}, {"score_error": None}, {"score_error_se": float("nan")}, {"tv_bound": "high"},
    {"d": 2.5}, {"family": "moons"}, {"status": "failed"}, {"status": "later"},
])
def test_a_damaged_row_is_named_not_half_read(tmp_path, change):
    path = tmp_path / "results.jsonl"
    path.write_text(json.dumps(ROW) + "\n" + json.dumps({**ROW, "n": 80, **change}) + "\n")
    with pytest.raises(ValueError, match="line 2, is not a result row"):
        load_results(path)
    path.write_text(json.dumps({k: v for k, v in ROW.items() if k != "score_error"}) + "\n")
    with pytest.raises(ValueError, match="line 1"):
        load_results(path)


def test_a_retried_row_replaces_the_failure_even_before_the_file_is_tidied(tmp_path):
    # an interrupted --retry-failed leaves the failed row and then the retried one
    failed = {**ROW, "status": "failed", "error": "loss became non-finite"}
    path = tmp_path / "results.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in (failed, {**ROW, "n": 80}, ROW, {**ROW, "score_error": 2.0})))
    rows = load_results(path)
    assert [(r["n"], r["status"], r["score_error"]) for r in rows] == [(40, "ok", 1.0), (80, "ok", 1.0)]
    path.write_text("".join(json.dumps(r) + "\n" for r in (ROW, failed)))  # an ok row is never replaced
    assert load_results(path)[0]["status"] == "ok"


def test_a_sweep_refuses_a_folder_that_holds_something_else(tmp_path):
    (tmp_path / "summary.md").write_text("my notes")
    with pytest.raises(ValueError, match="not empty and holds no sweep"):
        run_sweep(tmp_path, GRID, executor=CountingExecutor(), log=lambda s: None)
    assert (tmp_path / "summary.md").read_text() == "my notes" and not (tmp_path / "sweep.json").exists()


@pytest.mark.parametrize("saved", [{"sgm_ref": 1, "families": 2, "settings": 3}, [1, 2]])
def test_a_damaged_sweep_description_is_refused(tmp_path, saved):
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="is not a sweep description"):
        run_sweep(tmp_path, GRID, executor=CountingExecutor(), log=lambda s: None)


@pytest.mark.parametrize("text", ['{"sgm_ref": ', "", "\x00"])
def test_an_unreadable_sweep_description_is_named_with_the_fix(tmp_path, text):
    """A review: a sweep.json that is not JSON was named ("is unreadable (...)") with no way out;
    now with it, as the other refusals of the folder's description give theirs."""
    (tmp_path / "sweep.json").write_text(text)
    with pytest.raises(ValueError, match=r"sweep.json is unreadable \(the file is not valid JSON \(.*\)\); put the "
                                         r"sweep's own sweep.json back to continue it, or use a new output folder$"):
        run_sweep(tmp_path, GRID, executor=CountingExecutor(), log=lambda s: None)
    assert (tmp_path / "sweep.json").read_text() == text and not (tmp_path / "results.jsonl").exists()


class OtherVersionExecutor(concurrent.futures.Executor):
    """A cluster's worker with another sgm_ref installed: its rows carry that version."""

    def submit(self, fn, cell):
        future = concurrent.futures.Future()
        future.set_result({**fn(cell), "sgm_ref": "0.0.1"})
        return future


def test_a_worker_on_another_sgm_ref_is_refused_before_its_row_is_kept(tmp_path):
    """Each row records the worker's sgm_ref; a Dask worker on another version had its rows
    mixed into the sweep silently (a review)."""
    with pytest.raises(ValueError, match=r"a worker runs sgm_ref 0\.0\.1 and this sweep .*install the same sgm_ref"):
        run_sweep(tmp_path, GRID, executor=OtherVersionExecutor(), log=lambda s: None)
    assert not (tmp_path / "results.jsonl").exists()


class DyingExecutor(concurrent.futures.Executor):
    """Every cell's worker is killed (as the out-of-memory killer would)."""

    def submit(self, fn, cell):
        future = concurrent.futures.Future()
        future.set_exception(concurrent.futures.process.BrokenProcessPool("a child process terminated abruptly"))
        return future


def test_a_dead_worker_is_reported_and_the_sweep_can_be_rerun(tmp_path):
    with pytest.raises(ValueError, match="a worker process died .* rerun the same command"):
        run_sweep(tmp_path, GRID, executor=DyingExecutor(), log=lambda s: None)
    assert not (tmp_path / "results.jsonl").exists()
    with CountingExecutor() as executor:
        assert len(run_sweep(tmp_path, GRID, executor=executor, log=lambda s: None)) == 4


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the diverging cell overflows on purpose
def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path):
    grid = {**GRID, "settings": {**TINY, "lr": 1e300}, "n": [40], "families": ["mixture"]}
    messages = []
    with CountingExecutor() as executor:
        results = run_sweep(tmp_path, grid, executor=executor, log=messages.append)
    (row,) = results
    assert row["status"] == "failed" and ("non-finite" in row["error"] or "overflows" in row["error"])
    assert any("FAILED" in m for m in messages)
    with CountingExecutor() as executor:
        run_sweep(tmp_path, grid, executor=executor, log=messages.append)
        assert executor.cells == []  # skipped on restart...
    with CountingExecutor() as executor:
        results = run_sweep(tmp_path, grid, executor=executor, retry_failed=True, log=messages.append)
        assert executor.cells == [("mixture", 2, 40, 0)]  # ...unless asked
    assert len(load_results(tmp_path / "results.jsonl")) == 1 == len((tmp_path / "results.jsonl").read_text().splitlines())


def test_retry_failed_with_a_narrower_grid_keeps_the_failures_outside_it(tmp_path, monkeypatch):
    """--retry-failed dropped every failed row before the grid was applied, and rewrote
    results.jsonl without the ones the new grid does not hold (a review): 18 rows with 6
    failures became 12 with none. Only the grid's failed cells are retried."""
    import concurrent.futures

    from sgm_ref.experiments import rate as rate_module
    from sgm_ref.experiments import sweep as sweep_module

    def fake_cell(cell):
        f, d, n, s = rate_module.cell_key(cell)
        row = {"family": f, "d": d, "n": n, "seed": s}
        if n == max(rate_module.make_grid(quick=True)["n"]):
            return {**row, "status": "failed", "error": "ValueError: diverged"}
        return {**row, "status": "ok", "score_error": n ** -0.5, "score_error_se": 1e-4, "tv_bound": None,
                "tv_bound_se": None, "train_seconds": 1.0, "eval_seconds": 1.0}

    monkeypatch.setattr(sweep_module, "run_cell", fake_cell)
    grid = rate_module.make_grid(quick=True)
    with concurrent.futures.ThreadPoolExecutor(1) as executor:
        before = run_sweep(tmp_path, grid, executor=executor, log=lambda m: None)
        failed = [r for r in before if r["status"] == "failed"]
        assert failed
        narrow = rate_module.make_grid(quick=True, n=[min(grid["n"])])
        after = run_sweep(tmp_path, narrow, executor=executor, retry_failed=True, log=lambda m: None)
    assert sorted(map(rate_module.cell_key, after)) == sorted(map(rate_module.cell_key, before))
    assert len(load_results(tmp_path / "results.jsonl")) == len(before)
    assert sum(r["status"] == "failed" for r in after) == len(failed)


def test_two_sweeps_cannot_share_a_folder(tmp_path):
    fcntl = pytest.importorskip("fcntl")
    tmp_path.joinpath(".lock").touch()
    with open(tmp_path / ".lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ValueError, match="another sweep is writing"):
            run_sweep(tmp_path, GRID, executor=CountingExecutor(), log=lambda s: None)


def test_sweep_refuses_other_settings(tmp_path):
    with CountingExecutor() as executor:
        run_sweep(tmp_path, {**GRID, "n": [40], "families": ["mixture"]}, executor=executor, log=lambda s: None)
    with pytest.raises(ValueError, match="other settings \\(steps\\)"):
        run_sweep(tmp_path, {**GRID, "settings": {**TINY, "steps": 21}}, log=lambda s: None)
    # a family may be added to a sweep folder; a changed definition is refused
    saved = json.loads((tmp_path / "sweep.json").read_text())
    del saved["families"]["tilted"]
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    with CountingExecutor() as executor:
        run_sweep(tmp_path, {**GRID, "n": [40], "families": ["mixture"]}, executor=executor, log=lambda s: None)
    assert "tilted" in json.loads((tmp_path / "sweep.json").read_text())["families"]
    saved["families"]["mixture"] = {**saved["families"]["mixture"], "radius": 3.0}
    (tmp_path / "sweep.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="family mixture"):
        run_sweep(tmp_path, GRID, log=lambda s: None)
    (tmp_path / "sweep.json").unlink()
    with pytest.raises(ValueError, match="no sweep.json"):
        run_sweep(tmp_path, GRID, log=lambda s: None)


def test_dask_scheduler_runs_the_same_cells(tmp_path):
    distributed = peer("distributed")  # the [dask] extra: CI installs it, so a missing one fails there
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        grid = {**GRID, "families": ["mixture"]}
        dask_results = run_sweep(tmp_path / "dask", grid, scheduler=cluster.scheduler_address, log=lambda s: None)
    with CountingExecutor() as executor:
        local = run_sweep(tmp_path / "local", grid, executor=executor, log=lambda s: None)
    key = rate.cell_key
    assert {key(r): r["score_error"] for r in dask_results} == {key(r): r["score_error"] for r in local}


def test_make_grid():
    grid = make_grid(quick=True, d=[2, 4], steps=10)
    assert grid["d"] == [2, 4] and grid["n"] == rate.QUICK["n"] and grid["settings"]["steps"] == 10
    assert rate.QUICK["settings"]["steps"] is None  # the presets are not changed (None: epochs-based)
    assert make_grid(objective="sigma2")["settings"]["weighting"] == "sigma2"
    assert rate.FULL["settings"]["weighting"] == "none"  # the paper's objective by default
    for kwargs, match in (({"families": ["moons"]}, "unknown family 'moons'"), ({"d": [0]}, "--d must be"),
                          ({"n": [5, 5]}, "--n must be distinct"), ({"seeds": []}, "--seeds"),
                          ({"families": ["mixture", "mixture"]}, "--families must be distinct"),
                          ({"families": []}, "--families must be distinct"),
                          ({"steps": 0}, "--steps must be"), ({"objective": "l1"}, "--objective must be"),
                          ({"families": ["tilt-iso"], "d": [1]}, "tilt-iso needs d >= 2"),
                          ({"budget": 0}, "--budget must be a number > 0"),
                          ({"budget": float("inf")}, "--budget must be"), ({"budget": "2"}, "--budget must be"),
                          ({"budget": 2, "steps": 10}, "--budget scales the default training length"),
                          # a review: a --d no cell can hold failed every cell and exited 0
                          ({"d": [10**20], "n": [50]}, "--d 100000000000000000000 with --n 50: a cell's data"),
                          ({"d": [2], "n": [10**20]}, "use a smaller --d or --n")):
        with pytest.raises(ValueError, match=match):
            make_grid(**kwargs)


@pytest.mark.parametrize("budget", [1e308, 1e200])
def test_a_budget_too_large_to_train_is_refused_before_the_sweep_starts(tmp_path, budget):
    """--budget 1e308 was accepted: the sweep wrote sweep.json, then stopped at its first cell
    with "integer division result too large for a float" (naming no option), and the folder
    refused every later command with a sane --budget ("other settings")."""
    with pytest.raises(ValueError, match="--budget .* would train a cell for more than 2\\^53 steps"):
        make_grid(quick=True, budget=budget)


def test_a_budget_factor_scales_every_cells_steps():
    s = make_grid(budget=2)["settings"]
    assert (s["epochs"], s["min_steps"]) == (2 * rate.EPOCHS, 2 * rate.MIN_STEPS) and isinstance(s["epochs"], int)
    for n in (500, 32000):
        assert rate.training_steps(n, s) == 2 * rate.training_steps(n, rate.SETTINGS)
    tenth = make_grid(budget=1.1)["settings"]  # exact: not ceil(13200.000000000002)
    assert tenth["min_steps"] == 13200 and tenth["epochs"] == 220 and make_grid(budget=np.int64(3))["settings"][
        "min_steps"] == 3 * rate.MIN_STEPS
    half = make_grid(quick=True, budget=0.5)["settings"]
    assert half["min_steps"] == rate.QUICK["settings"]["min_steps"] // 2 and half["epochs"] == 10.0
    assert rate.FULL["settings"]["min_steps"] == rate.MIN_STEPS  # the preset is not changed


def test_a_cell_keeps_the_last_checkpoint_or_a_clearly_better_one():
    cell = {"family": "mixture-iso", "d": 3, "n": 60, "seed": 0, "settings": {**TINY, "steps": 200}}
    row = run_cell(cell)
    # every 200 // val_points = 10 steps, and before that at steps 0, 1, 2 and 5 (val_early 3)
    assert TINY["val_early"] == 3 and rate.HeldOut.early_steps(10, 3) == {5, 2, 1}
    assert row["val_steps"] == [0, 1, 2, 5] + list(range(10, 201, 10)) and row["checkpoint_step"] in row["val_steps"]
    kept = row["val_steps"].index(row["checkpoint_step"])
    assert kept == len(row["val_steps"]) - 1 or row["val_loss"][kept] < row["val_loss"][-1]
    last = run_cell({**cell, "settings": {**cell["settings"], "checkpoint": None}})
    assert last["checkpoint_step"] == 200 and last["val_loss"] == row["val_loss"]  # the same training
    assert (last["score_error"] == row["score_error"]) == (row["checkpoint_step"] == 200)
    bad = run_cell({**cell, "settings": {**cell["settings"], "checkpoint": "best"}})
    assert bad["status"] == "failed" and "settings checkpoint must be 'held-out'" in bad["error"]


def test_early_checkpoints_and_the_zero_output_layer():
    assert rate.HeldOut.early_steps(600, 3) == {300, 150, 75}
    assert rate.HeldOut.early_steps(3, 3) == {1} and rate.HeldOut.early_steps(600, 0) == set()
    from sgm_ref import OU, ScoreModel

    s = {**TINY, "width": 16, "depth": 2}
    zero = rate._network(5, s, np.random.default_rng(3))
    random = rate._network(5, {**s, "output_init": None}, np.random.default_rng(3))
    # the same draws; only the output layer differs, and it is 0
    last = zero.weights[-1].size + zero.biases[-1].size
    np.testing.assert_array_equal(zero.params[:-last], random.params[:-last])
    assert not np.any(zero.params[-last:]) and np.any(random.params[-last:])
    x, t = np.random.default_rng(4).standard_normal((7, 5)), np.linspace(0.1, 2.0, 7)
    np.testing.assert_array_equal(ScoreModel(zero, OU(), "residual")(x, t), -x)  # starts as -x
    with pytest.raises(ValueError, match="settings output_init must be 'zero' or None"):
        rate._network(5, {**s, "output_init": "small"}, np.random.default_rng(3))
    for bad in (-1, 2.5, True, "3"):
        row = run_cell({"family": "mixture-iso", "d": 2, "n": 40, "seed": 0, "settings": {**TINY, "val_early": bad}})
        assert row["status"] == "failed" and "settings val_early must be a whole number >= 0" in row["error"], bad
    # the row's step 0 is that model: its held-out loss is -x's on the same draws
    cell = {"family": "mixture-iso", "d": 3, "n": 60, "seed": 0, "settings": {**TINY, "steps": 40}}
    row = run_cell(cell)
    ss = np.random.SeedSequence(TINY["base_seed"], spawn_key=(rate._FAMILY_IDS["mixture-iso"], 3, 60, 0))
    val_seq = ss.spawn(7)[6]
    target = make_target("mixture-iso", 3)
    t0, T = rate.schedule(60, TINY)
    model = ScoreModel(rate._network(3, TINY, np.random.default_rng(0)), OU(), "residual")
    held_out = rate.HeldOut(model, None, target, t0, T, TINY, np.random.default_rng(val_seq))
    minus_x = -held_out.xt - held_out.target
    assert row["val_steps"][0] == 0
    assert row["val_loss"][0] == pytest.approx(float(np.mean(np.sum(minus_x**2, axis=1))), rel=1e-12)


def test_held_out_keeps_the_last_checkpoint_unless_an_earlier_one_is_clearly_better():
    from types import SimpleNamespace

    from sgm_ref import OU, ScoreModel
    from sgm_ref.nn import MLP

    model = ScoreModel(MLP(2, (8,), rng=0), OU(), "residual")
    target = make_target("mixture-iso", 2)

    def run(sequence):
        optimizer = SimpleNamespace(ema=None, step_count=0)
        held_out = rate.HeldOut(model, optimizer, target, 0.01, 5.0, {**TINY, "val_n": 2048},
                                np.random.default_rng(0))
        values = []
        for step, params in enumerate(sequence, start=1):
            optimizer.ema, optimizer.step_count = params, step
            values.append(held_out(model))
        return held_out.choose(), values

    good = model.params.copy()
    blown = good * 30.0  # a far larger loss
    (params, step), values = run([blown, good, blown])
    assert step == 2 and np.array_equal(params, good) and values[1] < values[0] == values[2]
    (params, step), _ = run([good, good])  # equal: the last
    assert step == 2
    (params, step), _ = run([blown, good])
    assert step == 2
    # the lowest of several clearly better ones
    (params, step), values = run([good * 2.0, good, good * 1.5, blown])
    assert step == 2 and values[1] < values[2] < values[0]
    np.testing.assert_array_equal(model.params, good)  # evaluations leave the model's own parameters
    # the rule on per-sample losses with known noise: an earlier checkpoint lower by 1 standard
    # error of the paired difference stays unchosen, one lower by 3 is chosen
    held_out = rate.HeldOut(model, SimpleNamespace(ema=None, step_count=0), target, 0.01, 5.0,
                            {**TINY, "val_n": 64}, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    base = rng.exponential(size=10_000)
    noise = rng.standard_normal(10_000)
    noise = (noise - noise.mean()) / noise.std(ddof=1)  # sd 1 exactly: se of the mean 0.01
    for shift, chosen in ((0.01, 2), (0.03, 1)):
        held_out.checkpoints = [(1, "early", base - shift + noise), (2, "last", base)]
        assert held_out.choose() == (("early", 1) if chosen == 1 else ("last", 2)), shift
    # the mean it returns is the objective: dsm_loss on the same draws
    from sgm_ref.losses import dsm_loss

    optimizer = SimpleNamespace(ema=None, step_count=1)
    rng = np.random.default_rng(5)
    held_out = rate.HeldOut(model, optimizer, target, 0.01, 5.0, {**TINY, "val_n": 512}, rng)
    twin = np.random.default_rng(5)
    x0 = target.sample(512, twin)
    t = rate._draw_times(512, 0.01, 5.0, twin, "uniform")
    z = twin.standard_normal(x0.shape)
    assert held_out(model) == pytest.approx(dsm_loss(model, x0, t, z, grad=False)[0], rel=1e-12)


def test_a_sweep_made_before_the_schedule_trains_as_it_did():
    # the numbers of this cell under the code of commit c8a1640 (before the rate schedule and
    # the importance-weighted times), settings without those keys: a resumed old folder's new
    # cells must be the old code's cells (rtol: another BLAS may round differently)
    old = {**{k: v for k, v in TINY.items() if k not in LATER},
           "val_n": 4096, "val_points": 10}
    row = run_cell({"family": "mixture-iso", "d": 3, "n": 60, "seed": 0, "settings": old})
    assert row["score_error"] == pytest.approx(1.567851750306286, rel=1e-9)
    assert row["final_loss"] == pytest.approx(2.7563049350709483, rel=1e-9)
    assert row["tv_bound"] == pytest.approx(0.8525646485768208, rel=1e-9)
    assert row["val_loss"][-1] == pytest.approx(1.5116037619287601, rel=1e-9)
    assert row["val_steps"] == list(range(2, 21, 2))  # no step 0, no early checkpoints


def test_cells_decay_the_rate_and_older_sweeps_keep_the_constant_one():
    # the cosine-decayed rate and importance-weighted times are this grid's; a sweep folder
    # made before either existed (no such settings) continues with the constant rate and direct draws
    cell = {"family": "mixture-iso", "d": 2, "n": 60, "seed": 0, "settings": TINY}
    decayed = run_cell(cell)
    old = {k: v for k, v in TINY.items() if k not in LATER}
    constant = run_cell({**cell, "settings": old})
    assert (decayed["lr_schedule"], decayed["time_sampling"]) == ("cosine", "defensive")
    assert (constant["lr_schedule"], constant["time_sampling"]) == (None, "direct")
    assert decayed["final_loss"] != constant["final_loss"]
    direct = run_cell({**cell, "settings": {**TINY, "time_sampling": "direct"}})
    assert direct["final_loss"] not in (decayed["final_loss"], constant["final_loss"])
    # the same cell again: the same bits
    assert run_cell(cell)["score_error"] == decayed["score_error"]


def test_summary_leaves_non_positive_errors_out_of_the_fit():
    rows = [{"family": "tilted", "d": 2, "n": n, "seed": 0, "score_error": e, "score_error_se": 0.01, "tv_bound": None}
            for n, e in ((100, 0.1), (1000, 0.01), (10000, -0.001))]
    (summary,) = sweep_summary(rows)
    assert summary["slope"] == pytest.approx(-1.0) and summary["local_slopes"][1] is None
    assert [p["score_error"] for p in summary["points"]] == [0.1, 0.01, -0.001]  # still in the table


def test_summary_counts_the_degrees_of_freedom_of_the_n_fitted_and_writes_valid_json(tmp_path):
    """An n whose every error is <= 0 is not in the fit: its degrees of freedom are those of
    the n fitted (they were counted from every n, an interval 25% too narrow); what cannot
    be computed is null in summary.json and '–' in summary.md, where NaN made the JSON
    invalid and the table read '± nan' (found by a review). Against scipy's linregress."""
    from scipy import stats

    from sgm_ref.experiments.sweep import write_outputs

    rng = np.random.default_rng(0)
    rows = [{"family": "tilted", "d": 2, "n": n, "seed": s, "score_error_se": 0.01, "tv_bound": None,
             "score_error": (3.0 * n ** -0.5 * float(np.exp(0.05 * rng.standard_normal()))) if n != 4000 else -0.01}
            for n in (500, 1000, 2000, 4000, 8000) for s in range(3)]
    (summary,) = sweep_summary(rows)
    ns = [500, 1000, 2000, 8000]
    means = [np.mean([np.log(r["score_error"]) for r in rows if r["n"] == n]) for n in ns]
    fit = stats.linregress(np.log(ns), means)
    half = stats.t.ppf(0.975, 2) * fit.stderr
    assert summary["slope_dof"] == 2
    assert summary["slope"] == pytest.approx(fit.slope, rel=1e-12)
    assert summary["slope_95"] == pytest.approx([fit.slope - half, fit.slope + half], rel=1e-12)
    two = [r for r in rows if r["n"] in (500, 1000)]
    (short,) = sweep_summary(two)
    assert short["slope_se"] is None and short["slope_95"] == [None, None] and short["slope_dof"] == 0
    write_outputs(str(tmp_path), two)
    with open(tmp_path / "summary.json", encoding="utf-8") as f:
        assert json.load(f, parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))[0]["slope_se"] is None
    assert "nan" not in (tmp_path / "summary.md").read_text(encoding="utf-8")


def test_summary_names_only_the_samplers_of_the_rows_with_a_bound(tmp_path):
    """A tilt family has no certified bound (tv null): summary.md named Euler–Maruyama for its
    rows beside the residual sampler every bound was made with ("output of euler_maruyama /
    residual_exponential", `--quick`; a review). The samplers named are those the rows with a
    bound record; without any bound there is no TV table."""
    from sgm_ref.experiments.sweep import write_outputs

    def row(family, n, seed, bound):
        tv = {"tv": 0.5 / n ** 0.25, "tv_se": 0.01, "method": "residual_exponential"} if bound else None
        return {"family": family, "d": 2, "n": n, "seed": seed, "status": "ok", "score_error": 1.0 / n,
                "score_error_se": 1e-4, "tv": tv, "tv_bound": tv["tv"] if bound else None}

    rows = [row(f, n, s, f == "mixture-iso") for f in ("mixture-iso", "tilt-iso") for n in (100, 1000) for s in (0, 1)]
    rows.append({"family": "tilt-iso", "d": 2, "n": 100, "seed": 9, "status": "failed", "error": "ValueError: x"})
    write_outputs(str(tmp_path), rows)
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "Certified upper bound on TV(p_0, output of residual_exponential), mean over seeds" in text
    assert "euler_maruyama" not in text
    tilt = [r for r in rows if r["family"] == "tilt-iso"]
    (tmp_path / "tilt").mkdir()
    write_outputs(str(tmp_path / "tilt"), tilt)
    text = (tmp_path / "tilt" / "summary.md").read_text(encoding="utf-8")
    assert "Certified upper bound" not in text and "| tilt-iso | 2 |" in text


def test_results_csv_is_the_same_for_a_resumed_sweep_and_holds_json(tmp_path):
    """A row's nested values (tv, em, the baselines) went into results.csv as Python reprs:
    "{'tv': np.float64(0.748...), ...}" for a row just computed, "{'tv': 0.748...}" for the
    same row read back from results.jsonl, so an interrupted and resumed sweep wrote another
    results.csv than an unbroken one (found by comparing the two), and neither cell was JSON."""
    import csv

    from sgm_ref.experiments.sweep import write_outputs

    def row(n, value):
        tv = {"tv": np.float64(value), "tv_se": 0.01, "method": "residual_exponential", "terms": [np.float64(0.25), 1]}
        return {"family": "mixture-iso", "d": 2, "n": n, "seed": 0, "status": "ok", "score_error": 1.0 / n,
                "score_error_se": 1e-4, "tv": tv, "tv_bound": tv["tv"], "em": None}

    fresh = [row(100, 0.7483926460991861), row(1000, 0.1 + 0.2)]
    (tmp_path / "fresh").mkdir()
    (tmp_path / "resumed").mkdir()
    write_outputs(str(tmp_path / "fresh"), fresh)
    for r in fresh:
        rate.append_result(tmp_path / "resumed" / "results.jsonl", r)
    write_outputs(str(tmp_path / "resumed"), load_results(tmp_path / "resumed" / "results.jsonl"))
    text = (tmp_path / "fresh" / "results.csv").read_text(encoding="utf-8")
    assert text == (tmp_path / "resumed" / "results.csv").read_text(encoding="utf-8")
    with open(tmp_path / "fresh" / "results.csv", encoding="utf-8", newline="") as f:
        table = list(csv.DictReader(f))
    for r, written in zip(fresh, table):
        assert json.loads(written["tv"]) == json.loads(json.dumps(r["tv"]))  # every float to the last bit
        assert float(written["tv_bound"]) == r["tv_bound"] and written["em"] == ""


@pytest.mark.parametrize("grid, workers, match", [
    ({**GRID, "settings": {**TINY, "lr_final": float("nan")}}, 2, r"grid\['settings'\]\['lr_final'\] = nan is not a plain"),
    ({**GRID, "settings": {**TINY, "sizes": (1, 2)}}, 2, r"\['sizes'\] = \(1, 2\) is not a plain JSON value"),
    ({**GRID, "settings": {**TINY, "epochs": np.int64(20)}}, 2, r"\['epochs'\] = np.int64\(20\) is not a plain"),
    ({**GRID, "settings": {**TINY, 3: 1}}, 2, "must be a dict with str keys"),
    ({k: v for k, v in GRID.items() if k != "settings"}, 2, "grid must be a dict with the keys"),
    ([GRID], 2, "grid must be a dict with the keys"),
    ({**GRID, "families": ["moons"]}, 2, "unknown family 'moons'"),
    ({**GRID, "families": "mixture"}, 2, r"grid\['families'\] must be a list"),
    ({**GRID, "d": ["2"]}, 2, "must be distinct integers >= 1"),
    (GRID, 0, "workers must be an integer >= 1, got 0"),
    (GRID, "2", "workers must be an integer >= 1, got '2'"),
])
def test_a_grid_a_sweep_could_not_run_or_restart_is_refused_before_the_folder_is_made(tmp_path, grid, workers, match):
    """A grid of the Python API is checked as make_grid checks the command line's. A NaN
    setting was written into sweep.json and the restart of the same sweep then refused as
    "other settings (lr_final)" (NaN != NaN), a tuple (read back as a list) the same; a
    numpy scalar, an unknown family, a bad workers count gave a traceback."""
    with pytest.raises(ValueError, match=match):
        run_sweep(tmp_path / "out", grid, workers=workers, log=lambda s: None)
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is a file"):
        run_sweep(tmp_path / "file", GRID, log=lambda s: None)


def test_a_sweep_killed_while_writing_can_be_rerun_and_leaves_no_temporaries(tmp_path):
    """A sweep killed while atomic_write wrote sweep.json left only ".tmp-XXXXsweep.json": the
    rerun refused the folder as "not empty and holds no sweep". Killed later, temporaries of
    results.csv or summary.md stayed in the folder for good. Another program's file stays."""
    out = tmp_path / "out"
    out.mkdir()
    (out / ".tmp-k1l2m3n4sweep.json").write_text('{"sgm_ref": ')
    executor = CountingExecutor()
    with executor:
        run_sweep(out, {**GRID, "n": [40]}, executor=executor, log=lambda s: None)
    assert not list(out.glob(".tmp-*"))
    for name in (".tmp-a1b2c3d4results.csv", ".tmp-c3d4e5f6summary.md", ".tmp-e5f6g7_8rate.png"):
        (out / name).write_bytes(b"half")
    (out / ".tmp-other.txt").write_text("not the sweep's")
    (out / ".tmp-g7h8i9j0my_summary.md").write_text("a report's write in progress")
    with CountingExecutor() as again:
        run_sweep(out, {**GRID, "n": [40]}, executor=again, log=lambda s: None)
    assert again.cells == []
    assert sorted(p.name for p in out.glob(".tmp-*")) == [".tmp-g7h8i9j0my_summary.md", ".tmp-other.txt"]


def test_fit_slope():
    n = np.array([500, 1000, 2000, 4000] * 2)
    error = 3.0 * n ** -0.7 * np.exp(np.tile([0.01, -0.01], 4))
    slope, se, intercept = fit_slope(n, error)
    assert slope == pytest.approx(-0.7, abs=0.01) and 0 < se < 0.02
    exact = fit_slope([10, 100, 1000], [1.0, 0.1, 0.01])
    assert exact[0] == pytest.approx(-1.0, rel=1e-12) and exact[1] == pytest.approx(0.0, abs=1e-12)
    assert np.isnan(fit_slope([10, 100], [1.0, 0.5])[1])  # two points: no scatter to judge by
    assert np.isnan(fit_slope([10, 10], [1.0, 0.5])[0])
    for n, error in (([10, 100], [1.0]), ([10, 100], [1.0, 0.0]), ([10, -1], [1.0, 0.5]), ([10, 100], [1.0, np.nan])):
        with pytest.raises(ValueError, match="n and error"):
            fit_slope(n, error)


def test_summary_groups_by_family_and_d():
    rows = [{"family": "mixture", "d": 2, "n": n, "seed": s, "score_error": 1.0 / n * (1 + 0.1 * s),
             "score_error_se": 0.01, "tv_bound": 0.5} for n in (100, 1000) for s in (0, 1)]
    (summary,) = sweep_summary(rows)
    assert summary["slope"] == pytest.approx(-1.0, abs=0.05)
    assert [p["seeds"] for p in summary["points"]] == [2, 2]


SCRIPT = Path(sys.executable).with_name("sgm-ref")


def test_command_line_sweep_and_restart(tmp_path):
    out = tmp_path / "sweep"
    args = [str(SCRIPT), "experiment", "rate", str(out), "--quick", "--families", "mixture", "--d", "2",
            "--n", "60,90", "--steps", "30", "--workers", "1"]
    first = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    assert "0 cells already" in first.stdout and "| mixture | 2 |" in first.stdout
    second = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert "2 cells already" in second.stdout and "0 to run" in second.stdout
    bad = subprocess.run(args[:4] + ["--families", "moons"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.strip() == (
        "sgm-ref: error: --families: unknown family 'moons'; use mixture, product, tilted, mixture-iso, tilt-iso")


def test_a_deeply_nested_result_row_is_named(tmp_path):
    path = tmp_path / "results.jsonl"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ValueError, match="line 1, is not a result row"):
        load_results(path)


def test_an_isometric_mixture_cell_records_the_baselines_and_the_residual_bound():
    row = run_cell({"family": "mixture-iso", "d": 3, "n": 60, "seed": 0, "settings": TINY})
    assert row["status"] == "ok", row.get("error")
    for key in ("baseline_empirical", "baseline_minus_x", "baseline_em"):
        assert set(row[key]) == {"error", "se"} and row[key]["se"] > 0, key
    # with 60 samples in d = 3 the EM plug-in is far better than the curse baseline
    assert row["baseline_em"]["error"] < row["baseline_empirical"]["error"]
    assert row["tv"]["method"] == "residual_exponential" and "grid" not in row["tv"]
    assert row["tv"]["tv"] == row["tv_bound"] and row["tv_oracle"]["kl_path"] < row["tv"]["kl_path"]
    assert (row["t0"], row["T"]) == rate.schedule(60, TINY) and row["objective"] == "paper"
    assert row["steps"] == TINY["steps"]
    # the held-out objective along training: step 0, the early steps and val_points more, the last at the end
    assert row["val_steps"][-1] == TINY["steps"] and len(row["val_loss"]) == len(row["val_steps"])
    json.dumps(row, allow_nan=False)
    tilt = run_cell({"family": "tilt-iso", "d": 3, "n": 60, "seed": 0, "settings": {**TINY, "n_eval_tilted": 50}})
    assert tilt["status"] == "ok" and tilt["baseline_em"] is None and tilt["tv"] is None
    assert tilt["baseline_empirical"]["se"] > 0


def test_schedules_and_training_length():
    s = rate.SETTINGS
    assert rate.schedule(100, s) == (s["t0"], s["T"])  # below n_ref: the fixed window
    t0, T = rate.schedule(4 * s["schedule_n_ref"], s)
    assert t0 == pytest.approx(s["t0"] / 2) and T == pytest.approx(s["T"] + np.log(4) / 2)
    assert rate.training_steps(500, s) == s["min_steps"]
    assert rate.training_steps(32000, s) == int(np.ceil(s["epochs"] * 32000 / s["batch_size"]))
    assert rate.training_steps(32000, {**s, "steps": 7}) == 7


def test_the_stored_full_run_continues_under_the_current_full_settings(tmp_path):
    # docs/rate_iso_cosine holds rows of `sgm-ref experiment rate RUN --full` as it was before the
    # zero output layer; a copy must resume under that FULL grid (a changed setting would make
    # the sweep refuse it)
    import shutil

    from sgm_ref.experiments.sweep import _check_settings

    stored = Path(__file__).parent.parent / "docs" / "rate_iso_cosine"
    folder = tmp_path / "run"
    shutil.copytree(stored, folder)

    def before_zero_init(settings):  # the protocol before the zero output layer and early checkpoints
        return {k: v for k, v in settings.items() if k not in ("val_early", "output_init")}

    _check_settings(str(folder), before_zero_init(rate.FULL["settings"]))
    rows = load_results(str(folder / "results.jsonl"))
    full = {rate.cell_key(c) for c in cells(rate.FULL)}
    assert rows and {rate.cell_key(r) for r in rows} <= full
    assert all(r["status"] == "ok" for r in rows)
    # and docs/rate_iso_budget2 is `--full --budget 2` on some of those cells (the budget check)
    budget2 = tmp_path / "budget2"
    shutil.copytree(stored.parent / "rate_iso_budget2", budget2)
    _check_settings(str(budget2), before_zero_init(make_grid(budget=2)["settings"]))
    rows2 = load_results(str(budget2 / "results.jsonl"))
    assert rows2 and {rate.cell_key(r) for r in rows2} <= {rate.cell_key(r) for r in rows}


@pytest.mark.parametrize("folder, grid", [("rate_iso_rerun", {}), ("rate_iso_rerun_budget2", {"budget": 2}),
                                          ("rate_iso_rerun_sigma2", {"objective": "sigma2"})])
def test_the_stored_rerun_continues_under_todays_full_settings(tmp_path, folder, grid):
    # docs/rate_iso_rerun holds rows of today's `sgm-ref experiment rate RUN --full` and of
    # `--full --d 1024` run into the same folder, the next two the budget check (--budget 2)
    # and the sigma^2 objective on some of the same cells
    import shutil

    from sgm_ref.experiments.sweep import _check_settings

    docs = Path(__file__).parent.parent / "docs"
    copy = tmp_path / "run"
    shutil.copytree(docs / folder, copy)
    _check_settings(str(copy), make_grid(**grid)["settings"])
    rows = load_results(str(copy / "results.jsonl"))
    assert rows and all(r["status"] == "ok" for r in rows)
    allowed = {rate.cell_key(c) for c in cells(make_grid(**grid))}
    if not grid:  # the rerun: `--full` and `--full --d 1024`
        allowed |= {rate.cell_key(c) for c in cells(make_grid(d=[1024]))}
    assert {rate.cell_key(r) for r in rows} <= allowed
    if "budget" in grid or "objective" in grid:
        main = {rate.cell_key(r) for r in load_results(str(docs / "rate_iso_rerun" / "results.jsonl"))}
        assert {rate.cell_key(r) for r in rows} <= main  # paired with the rerun's own cells


def test_a_summary_of_failed_cells_is_a_well_formed_table():
    """Every cell failed: no n, and the header had one cell more than its separator (a review)."""
    from sgm_ref.experiments.sweep import summary_markdown

    for line in summary_markdown([]).splitlines():
        if line.startswith("|"):
            assert line.count("|") in (6, 3), line  # five and two columns, each line alike


def test_sweep_workers_start_with_one_thread_under_sgm_ref_threads(monkeypatch):
    """With SGM_REF_THREADS=2 in the environment the sweep's workers (NUMBA_NUM_THREADS=1) raised
    "SGM_REF_THREADS=2: n must be at most 1" at import: every worker died, reported as "a worker
    process died (killed, or out of memory?)". The workers now get SGM_REF_THREADS=1 too, and
    run on one BLAS and one numba thread; the parent's environment is restored."""
    import multiprocessing
    import os

    from sgm_ref import _threads
    from sgm_ref.experiments.sweep import _single_threaded_children

    monkeypatch.setenv("SGM_REF_THREADS", "2")
    with _single_threaded_children():
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            counts = pool.submit(_threads.blas_threads).result(timeout=120)
    assert counts and set(counts) == {1}
    assert os.environ["SGM_REF_THREADS"] == "2"


def test_a_grid_of_a_family_no_cell_could_run_is_refused():
    """A review: make_grid checked d >= 2 for tilt-iso only, and nothing of n against the EM
    baseline's K = 4 components, so --families mixture-iso --d 1 or --families mixture --n 3
    started a sweep whose every such cell failed ("the subspace dimension k = 2 must be <= d = 1",
    "K = 4 components need at least K samples")."""
    for kwargs, match in (({"families": ["mixture-iso"], "d": [1, 4]}, "--d: the family mixture-iso needs d >= 2"),
                          ({"families": ["tilt-iso"], "d": [1]}, "--d: the family tilt-iso needs d >= 2"),
                          ({"families": ["mixture"], "n": [3, 40]}, "--n: the family mixture needs n >= 4 \\(its EM"),
                          ({"families": ["product", "mixture-iso"], "n": [2]}, "--n: the family mixture-iso needs")):
        with pytest.raises(ValueError, match=match):
            make_grid(quick=True, **kwargs)
    # the cells those grids would have run: each a failure
    small = {**TINY, "val_n": 64}
    assert "K = 4 components" in run_cell({"family": "mixture", "d": 2, "n": 3, "seed": 0, "settings": small})["error"]
    assert "k = 2 must be <= d = 1" in run_cell({"family": "mixture-iso", "d": 1, "n": 40, "seed": 0,
                                                  "settings": small})["error"]
    # the families without such limits keep d = 1 and n = 2, and the limits themselves pass
    assert make_grid(families=["product", "tilted"], d=[1], n=[2])["n"] == [2]
    assert make_grid(families=["mixture", "mixture-iso", "tilt-iso"], d=[2], n=[4])["d"] == [2]


def test_a_malformed_cell_is_refused_not_run_as_another():
    """A review: run_cell of a family outside FAMILIES raised KeyError 'moons' from inside the
    training, and d, n or seed of 2.7, "2" or True ran as the cell int(value) and wrote that key
    into its row (d = 2.7 made the row of d = 2)."""
    small = {**TINY, "val_n": 64}
    good = {"family": "mixture", "d": 2, "n": 40, "seed": 0, "settings": small}
    for change, match in (({"family": "moons"}, "cell family must be one of mixture, product"),
                          ({"d": 2.7}, "cell d must be an integer >= 1, got 2.7"),
                          ({"d": True}, "cell d must be an integer >= 1, got True"),
                          ({"n": "40"}, "cell n must be an integer >= 2, got '40'"),
                          ({"n": 40.0}, "cell n must be an integer >= 2"),
                          ({"seed": 1.5}, "cell seed must be an integer >= 0, got 1.5"),
                          ({"seed": -1}, "cell seed must be an integer >= 0"),
                          ({"settings": None}, "cell settings must be a dict")):
        with pytest.raises(ValueError, match=match):
            run_cell({**good, **change})
    with pytest.raises(ValueError, match="cell must be a dict with keys family, d, n, seed and settings"):
        run_cell({k: v for k, v in good.items() if k != "seed"})
    # a NumPy integer is an integer: the same cell, the same bits
    a, b = run_cell(good), run_cell({**good, "d": np.int64(2), "seed": np.int64(0)})
    assert (b["d"], b["seed"]) == (2, 0) and type(b["d"]) is int and a["score_error"] == b["score_error"]


def test_settings_a_cell_cannot_run_are_refused_before_the_folder_is_made(tmp_path):
    """A review: a grid whose settings lacked a key (here val_n) wrote sweep.json, then every
    cell raised KeyError 'val_n' out of the sweep, and the folder refused the corrected settings
    ("other settings (val_n)"); a misspelt key ran every cell without it, and values such as
    t0 None or val_points 0 were a TypeError or ZeroDivisionError out of every cell. All are
    named now, before anything is written; a sweep made before the later settings still runs."""
    def without(*keys, **changed):
        return {**{k: v for k, v in TINY.items() if k not in keys}, **changed}

    def refused(settings, message, attached):
        """The sweep refuses settings before making its folder, and a cell refuses them too, both
        with message after the name (directly after it when message starts with `attached`)."""
        space = "" if message[0] == attached else " "
        with pytest.raises(ValueError, match=re.escape("grid['settings']" + space + message)):
            run_sweep(tmp_path / "out", {**GRID, "settings": settings}, executor=CountingExecutor(), log=lambda s: None)
        assert not (tmp_path / "out").exists()
        with pytest.raises(ValueError, match=re.escape("cell settings" + space + message)):
            run_cell({"family": "mixture", "d": 2, "n": 40, "seed": 0, "settings": settings})

    for settings, message in ((without("val_n"), "must set 'val_n' (every cell reads it)"),
                              (without("T", "bound_n"), "must set 'T', 'bound_n' (every cell reads them)"),
                              (without("epochs", steps=None), "must set 'epochs'"),
                              (without("lr_final"), "must set 'lr_final'"),
                              ({**TINY, "val_erly": 3}, ": unknown setting 'val_erly' (misspelt?)")):
        refused(settings, message, ":")
    # values a cell raised TypeError or ZeroDivisionError on, or misread (2.5 steps trained 2; a
    # base_seed of None drew the cell from the operating system's entropy: another cell each run)
    for key, value, message in (("steps", 2.5, "['steps'] must be an integer >= 1, got 2.5"),
                                ("steps", "5", "['steps'] must be an integer >= 1, got '5'"),
                                ("base_seed", None, "['base_seed'] must be an integer >= 0, got None"),
                                ("t0", None, "['t0'] must be a finite number > 0, got None"),
                                ("T", 0.005, "must have t0 < T (the score errors' window [t0, T]), got t0 = 0.01"),
                                ("val_points", 0, "['val_points'] must be an integer >= 1, got 0"),
                                ("schedule_n_ref", "500", "['schedule_n_ref'] must be a finite number > 0, got '500'"),
                                ("weight_decay_times_n", None, "['weight_decay_times_n'] must be a finite number >= 0"),
                                ("n_eval", 1, "['n_eval'] must be an integer >= 2, got 1")):
        settings = {**TINY, key: value}
        refused(settings, message, "[")
    # without the later settings (and, with steps set, without epochs and min_steps) a cell runs as before
    old = without(*LATER, "epochs", "min_steps")
    rate.check_settings(old)
    rate.check_settings(rate.SETTINGS)
    with pytest.raises(ValueError, match="must set 'epochs', 'min_steps'"):
        rate.check_settings({**old, "steps": None})
    row = run_cell({"family": "mixture", "d": 2, "n": 40, "seed": 0, "settings": {**old, "val_n": 64}})
    assert row["status"] == "ok" and (row["lr_schedule"], row["time_sampling"]) == (None, "direct")


def test_adams_rate_and_averaging_settings_are_refused_before_the_folder_is_made(tmp_path):
    """A review: lr 0, -2e-3 or "2e-3", ema_decay 1.5 or None and lr_final 1 passed
    check_settings; sweep.json stored them, every cell became a failed row (Adam's or the
    cosine's ValueError), and the folder then refused the corrected settings ("other settings
    (lr)"). Now refused before anything is written, as the other numbers a cell computes with."""
    for key, value, message in (("lr", 0.0, "['lr'] must be a finite number > 0, got 0.0"),
                                ("lr", -2e-3, "['lr'] must be a finite number > 0, got -0.002"),
                                ("lr", "2e-3", "['lr'] must be a finite number > 0, got '2e-3'"),
                                ("ema_decay", 1.5, "['ema_decay'] (the EMA's decay) must be a number in [0, 1), "
                                                   "got 1.5"),
                                ("ema_decay", None, "['ema_decay'] (the EMA's decay) must be a number in [0, 1)"),
                                ("lr_final", 1.0, "['lr_final'] (the cosine's final rate / lr) must be a number in "
                                                  "[0, 1), got 1.0"),
                                # Adam's first step lr / (1 - 0.9) past float64 (a later review)
                                ("lr", 1e308, "['lr']: lr must be below 1.8e+307, got 1e+308"),
                                # an int past float64's range raised OverflowError out of the check (a review)
                                ("lr", 10**400, "['lr'] must be a finite number > 0, got 1000"),
                                ("weight_decay_times_n", -10**400, "['weight_decay_times_n'] must be a finite number "
                                                                   ">= 0, got -1000")):
        with pytest.raises(ValueError, match=re.escape("grid['settings']" + message)):
            run_sweep(tmp_path / "out", {**GRID, "settings": {**TINY, key: value}}, executor=CountingExecutor(),
                      log=lambda s: None)
        assert not (tmp_path / "out").exists()
        with pytest.raises(ValueError, match=re.escape("cell settings" + message)):
            run_cell({"family": "mixture", "d": 2, "n": 40, "seed": 0, "settings": {**TINY, key: value}})
    # lr_final is read only with the cosine schedule: a sweep of the constant rate may leave it out
    rate.check_settings({**TINY, "lr_schedule": None, "lr_final": None})
    rate.check_settings({k: v for k, v in TINY.items() if k not in ("lr_schedule", "lr_final")})


def test_settings_of_numbers_no_cell_computes_with_are_refused():
    """A Fraction is a numbers.Real: check_settings let t0, weight_decay_times_n and ema_decay of
    Fractions through, and the cell failed ("t must be a real number or an array of float64, ...",
    Adam's "weight_decay must be a real number"); a sweep refuses them as JSON values first, a
    cell by itself did not. An int or a float, NumPy's too, is what a cell computes with."""
    from fractions import Fraction
    for key, value, message in (("t0", Fraction(1, 100), "['t0'] must be a finite number > 0, got Fraction(1, 100)"),
                                ("weight_decay_times_n", Fraction(5), "['weight_decay_times_n'] must be a finite "
                                                                      "number >= 0, got Fraction(5, 1)"),
                                ("ema_decay", Fraction(999, 1000), "['ema_decay'] (the EMA's decay) must be a number "
                                                                   "in [0, 1), got Fraction(999, 1000)"),
                                ("lr", Fraction(1, 500), "['lr'] must be a finite number > 0, got Fraction(1, 500)")):
        with pytest.raises(ValueError, match=re.escape("cell settings" + message)):
            run_cell({"family": "mixture", "d": 2, "n": 40, "seed": 0, "settings": {**TINY, key: value}})
    rate.check_settings({**TINY, "t0": np.float32(0.01), "lr": np.float64(2e-3), "ema_decay": 0, "T": 3,
                         "weight_decay_times_n": np.int64(5)})
    # a longdouble wider than float64 (x86's 80 bits) was checked in its own precision and used in
    # float64: ema_decay 1 - 2**-60 passed [0, 1) and was 1.0 in every cell's Adam (a review)
    assert np.finfo(np.longdouble).nmant > 52, "this check needs an extended longdouble (x86)"
    for key, value, near in (("ema_decay", np.longdouble(1) - np.longdouble(2) ** -60, "1.0"),
                             ("t0", np.longdouble("1e-4000"), "0.0"), ("lr", np.longdouble("1e309"), "inf")):
        with pytest.raises(ValueError, match=re.escape(f"settings[{key!r}] = {value!r} is not a float64 number (a cell "
                                                       f"computes in float64, where it is {near}); pass a float")):
            rate.check_settings({**TINY, key: value})
    rate.check_settings({**TINY, "t0": np.longdouble(0.01), "ema_decay": np.longdouble(0.5)})  # float64's exactly


def _mixture_1d_per_t_error(t, weights, means, score_of_g):
    """int p_t(x) |score_of_g(x, g_t(x)) - g_t(x)|^2 dx by scipy.integrate.quad, p_t of
    sum_k w_k N(m_k, 1) under OU (sigma_t^2 = 1 for identity components, means e^-t m_k)."""
    from scipy import integrate

    a = np.exp(-t)

    def integrand(x):
        comps = np.array([w * np.exp(-0.5 * (x - a * m) ** 2) for w, m in zip(weights, means)]) / np.sqrt(2 * np.pi)
        p = comps.sum()
        g = float(np.sum(comps * (a * np.asarray(means) - x)) / p)
        return p * (score_of_g(x, g) - g) ** 2

    return integrate.quad(integrand, -15.0, 15.0, epsabs=1e-13, epsrel=1e-12, limit=200)[0]


def test_integrated_error_matches_quadrature_and_its_standard_error_the_spread():
    """_integrated_errors against int_{t0}^{T} beta/2 E_{p_t}|s - grad log p_t|^2 dt by nested
    scipy quad (beta = 2 for OU) on a 1-D two-component mixture, for the scaled exact score
    1.3 grad log p_t and for -x; its se against the spread of the estimate over seeds."""
    from scipy import integrate

    from sgm_ref import OU
    from sgm_ref.experiments.baselines import EmpiricalMeasure, minus_x
    from sgm_ref.targets import GaussianMixture

    weights, means = [0.3, 0.7], [-1.5, 2.0]
    target, process = GaussianMixture(np.array(weights), np.array(means)[:, None]), OU()
    t0, T = 1e-2, 5.0
    exact = {name: integrate.quad(lambda t: _mixture_1d_per_t_error(t, weights, means, f), t0, T,
                                  epsabs=1e-12, epsrel=1e-11, limit=200)[0]
             for name, f in (("scaled", lambda x, g: 1.3 * g), ("minus_x", lambda x, g: -x))}
    scores = {"scaled": lambda x, t: 1.3 * target.score(x, t, process), "minus_x": minus_x}
    empirical = EmpiricalMeasure(target.sample(20, np.random.default_rng(0)))
    runs = [rate._integrated_errors(scores, empirical, target, process, t0, T, 1000, 10, np.random.default_rng(s))
            for s in range(100)]
    for name in scores:
        values = np.array([r[name]["error"] for r in runs])
        se = np.array([r[name]["se"] for r in runs])
        spread = values.std(ddof=1)
        # unbiased: the mean of 100 estimates within 4 of its standard errors of the exact value
        assert abs(values.mean() - exact[name]) < 4 * spread / np.sqrt(values.size), name
        # the reported se is the estimate's spread (the spread of a 100-sample sd is about 7%)
        assert 0.75 < se.mean() / spread < 1.33, name


def test_the_tilt_oracles_own_error_is_what_the_cells_subtract():
    """tilt-iso's Monte-Carlo oracle over fresh draws of its Z: its mean squared error against the
    exact score (a 140 x 140 Gauss-Hermite rule in R^2, converged to 1e-11) is the mean of
    sum_j se_j^2 that _integrated_errors subtracts, so the subtraction is unbiased."""
    from sgm_ref import OU

    target, process = make_target("tilt-iso", 2), OU()
    z, w = np.polynomial.hermite_e.hermegauss(140)
    Z = np.stack(np.meshgrid(z, z, indexing="ij"), -1).reshape(-1, 2)
    W = np.outer(w, w).ravel() / np.sum(w) ** 2

    def exact(x, t):
        a, s = np.exp(-t), np.sqrt(-np.expm1(-2 * t))
        out = []
        for u in x @ target.P:
            y = a * u + s * Z
            e = W * np.exp(target._f(y) - target._f(y).max())
            out.append(a * (e @ target._grad_f(y)) / e.sum())  # grad log q_t(u) + u (Mehler)
        return -x + np.array(out) @ target.P.T

    x0 = target.sample(4, np.random.default_rng(2))
    mse, tr = [], []
    for t in (0.01, 0.5):
        xt = np.exp(-t) * x0 + np.sqrt(-np.expm1(-2 * t)) * np.random.default_rng(3).standard_normal(x0.shape)
        g, tt = exact(xt, t), np.full(4, t)
        for r in range(400):
            target._z = np.random.default_rng(100 + r).standard_normal(target._z.shape)
            s, se = target.score_and_se(xt, tt, process)
            mse.append(np.sum((s - g) ** 2, axis=1))
            tr.append(np.sum(se**2, axis=1))
    mse, tr = np.array(mse).reshape(2, 400, 4), np.array(tr).reshape(2, 400, 4)
    ratio = mse.mean(axis=1) / tr.mean(axis=1)  # per (t, point)
    rel_se = mse.std(axis=1, ddof=1) / mse.mean(axis=1) / np.sqrt(400)
    assert np.all(np.abs(ratio - 1) < 4 * rel_se), (ratio, rel_se)
    total = mse.sum(axis=(0, 2))  # per draw of Z, summed over the 8 points
    assert abs(total.mean() / tr.sum(axis=(0, 2)).mean() - 1) < 4 * total.std(ddof=1) / total.mean() / np.sqrt(400)


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract")  # HeldOut.choose's inf - inf
def test_a_non_finite_held_out_loss_fails_the_cell_instead_of_the_sweeps_write(monkeypatch):
    """A review: _all_finite looked into dicts but not lists, so a row whose val_loss held an inf
    (a checkpoint whose outputs overflow) passed as "ok", and append_result's
    json.dumps(allow_nan=False) then raised in the sweep's parent, stopping the sweep."""
    assert not rate._all_finite({"val_loss": [1.0, float("inf")]}) and rate._all_finite({"val_loss": [1.0, None]})
    original = rate.HeldOut.__call__

    def overflowing_at_step_0(self, model):
        value = original(self, model)
        if self.optimizer.step_count == 0:
            step, params, losses = self.checkpoints[-1]
            self.checkpoints[-1] = (step, params, np.full_like(losses, np.inf))
            return float("inf")
        return value

    monkeypatch.setattr(rate.HeldOut, "__call__", overflowing_at_step_0)
    row = run_cell({"family": "mixture-iso", "d": 2, "n": 40, "seed": 0, "settings": {**TINY, "val_n": 64}})
    assert row["status"] == "failed" and row["error"].startswith("non-finite result")
    json.dumps(row, allow_nan=False)  # the row the sweep writes


def test_a_d_whose_evaluation_draws_cannot_fit_is_refused_before_the_sweep():
    """A review: make_grid checked only the n x d training data, so a d for which that fits but
    the val_n = 16384 held-out and n_eval = 10000 evaluation points do not (at n = 500 they are
    33 times the data) started a sweep whose every cell failed after drawing its data."""
    from sgm_ref.targets._checks import _memory_bytes

    memory = _memory_bytes() or float(np.iinfo(np.intp).max)
    d = int(memory / 8 / 1000)  # the data of n = 500: half the memory
    with pytest.raises(ValueError, match=f"--d {d}: a cell's evaluation draws alone \\(16384 points"):
        make_grid(quick=True, d=[d], n=[500])
    settings = make_grid(quick=True)["settings"]
    assert 8.0 * d * 500 < memory < 8.0 * d * max(settings["val_n"], settings["n_eval"])
    # what the cell would meet: its held-out draws refused by the sampler
    with pytest.raises(ValueError, match="too large"):
        make_target("mixture", d).sample(settings["val_n"], np.random.default_rng(0))


def test_the_outputs_do_not_depend_on_the_order_in_which_the_cells_finished(tmp_path):
    """A review: write_outputs took the columns of results.csv in the order of the list (the
    order in which the cells finished; a resumed sweep's new rows after the file's), so a failed
    row that came first put "error" and the versions before score_error; and sweep_summary
    averaged the seeds in that order, so summary.json's means moved in the last bit (0.1, 0.2
    and 0.3 average to 0.20000000000000004 or to 0.19999999999999998)."""
    from sgm_ref.experiments.sweep import write_outputs

    env = {"sgm_ref": "x", "numpy": np.__version__, "host": "h"}
    rows = [{"family": "mixture-iso", "d": 2, "n": n, "seed": seed, "status": "ok", "score_error": e,
             "score_error_se": 0.01, "tv_bound": None, **env}
            for n, errors in ((40, (0.1, 0.2, 0.3)), (80, (0.05, 0.07, 0.11))) for seed, e in enumerate(errors)]
    failed = {"family": "mixture-iso", "d": 2, "n": 160, "seed": 0, "status": "failed", "error": "ValueError: x", **env}
    texts = []
    for k, order in enumerate((rows + [failed], [failed] + rows[::-1])):
        folder = tmp_path / str(k)
        folder.mkdir()
        write_outputs(str(folder), order)
        texts.append([(folder / name).read_text(encoding="utf-8")
                      for name in ("results.csv", "summary.json", "summary.md")])
    assert texts[0] == texts[1]
    assert texts[0][0].splitlines()[0].startswith("family,d,n,seed,status,score_error,score_error_se,")
    (summary,) = json.loads(texts[0][1])
    assert summary["points"][0]["score_error"] == np.mean([0.1, 0.2, 0.3])  # the seeds in their order


def test_the_summary_says_which_standard_error_each_point_has():
    """A sweep still running its second seed has points of one seed, whose ± is that seed's
    Monte-Carlo standard error (sweep_summary): the table said "standard error over seeds"."""
    from sgm_ref.experiments.sweep import summary_markdown

    def point(n, seeds):
        return {"n": n, "seeds": seeds, "score_error": 1.0 / n, "score_error_se": 0.1 / n, "tv_bound": None,
                "tv_bound_vacuous": False}

    def summary(*seeds):
        return [{"family": "mixture-iso", "d": 2, "slope": -1.0, "slope_se": None, "slope_dof": 0,
                 "slope_95": [None, None], "local_slopes": [-1.0], "intercept": 0.0,
                 "points": [point(40, seeds[0]), point(80, seeds[1])]}]

    head = "mean over seeds ± "
    assert head + "standard error over seeds (a point of one seed: its Monte-Carlo standard error)." \
        in summary_markdown(summary(2, 1))
    assert head + "standard error over seeds.\n" in summary_markdown(summary(2, 2))
    assert head + "Monte-Carlo standard error of the one seed" in summary_markdown(summary(1, 1))


def test_a_slope_of_fewer_than_two_n_shows_no_degrees_of_freedom(tmp_path):
    """A review: a (family, d) whose errors were all <= 0 (a debiased Monte-Carlo error below its
    noise) or that had one n so far was printed with "(-2)" or "(-1)" degrees of freedom."""
    from sgm_ref.experiments.sweep import write_outputs

    def row(d, n, e):
        return {"family": "tilt-iso", "d": d, "n": n, "seed": 0, "status": "ok", "score_error": e,
                "score_error_se": 0.01, "tv_bound": None}

    write_outputs(str(tmp_path), [row(2, 40, 0.04), row(2, 80, 0.02), row(2, 160, 0.011),
                                  row(3, 40, -0.01), row(3, 80, -0.02), row(4, 40, 0.03)])
    table = (tmp_path / "summary.md").read_text(encoding="utf-8")
    assert "| tilt-iso | 3 | – ± – (–) | [–, –] | – |" in table and "| tilt-iso | 4 | – ± – (–) |" in table
    from scipy import stats as scipy_stats

    fit = scipy_stats.linregress(np.log([40, 80, 160]), np.log([0.04, 0.02, 0.011]))
    assert f"| tilt-iso | 2 | {fit.slope:.2f} ± {fit.stderr:.2f} (1) |" in table


def test_the_tv_table_shows_the_mean_and_marks_a_vacuous_seed():
    """A review: summary.md printed "1" (vacuous) for a point where any seed's bound was 1, beside
    "mean over seeds": a mean of 0.6 over five seeds with one vacuous read as a vacuous bound;
    and a mean of 0.99996 was printed "1.000"."""
    from sgm_ref.experiments.rate import sweep_summary
    from sgm_ref.experiments.sweep import summary_markdown

    def row(n, seed, tv):
        return {"family": "mixture-iso", "d": 2, "n": n, "seed": seed, "status": "ok", "score_error": 1.0 / n,
                "score_error_se": 1e-4, "tv_bound": tv}

    bounds = {100: [1.0, 0.5, 0.5, 0.5, 0.5], 200: [1.0] * 5, 400: [0.99996] * 5, 800: [0.25, 0.5, 0.75, 0.5, 0.5]}
    summary = sweep_summary([row(n, s, tv) for n, tvs in bounds.items() for s, tv in enumerate(tvs)])
    table = summary_markdown(summary, ["residual_exponential"]).split("Certified upper bound")[1]
    assert f"| mixture-iso | 2 | {np.mean(bounds[100]):.3f}* | 1 | 0.99996 | 0.500 |" in table


def test_settings_with_epochs_zero_train_min_steps():
    """A review of check_settings: it refused epochs = 0 ("must be a finite number > 0"), which a
    cell ran before the check as max(min_steps, 0) = min_steps steps. It runs again; with
    min_steps 0 as well no step would be trained, and that is named."""
    settings = {**TINY, "steps": None, "epochs": 0, "min_steps": 3, "val_n": 64, "val_points": 3}
    rate.check_settings(settings)
    assert rate.training_steps(80, settings) == 3 and rate.training_steps(10**6, settings) == 3
    row = run_cell({"family": "mixture", "d": 2, "n": 40, "seed": 0, "settings": settings})
    assert row["status"] == "ok" and row["steps"] == 3
    with pytest.raises(ValueError, match=re.escape("settings trains no step: epochs and min_steps are both 0")):
        rate.check_settings({**settings, "min_steps": 0})
    with pytest.raises(ValueError, match=re.escape("settings['epochs'] must be a finite number >= 0, got -1")):
        rate.check_settings({**settings, "epochs": -1})
    rate.check_settings({**settings, "epochs": 0.5, "min_steps": 0})  # ceil(0.5 n / batch) >= 1 step


@pytest.mark.parametrize("settings", [None, ["width", "depth"], "width"])
def test_check_settings_names_settings_that_are_not_a_dict(settings):
    """A review: rate.check_settings (public) raised TypeError ("'NoneType' object is not
    iterable", or a list index error) for settings that are not a dict, naming nothing."""
    with pytest.raises(ValueError, match=r"^grid settings must be a dict of the keys of rate.SETTINGS \(a grid's "
                                         r"settings\), got (NoneType|list|str)$"):
        rate.check_settings(settings, "grid settings")
