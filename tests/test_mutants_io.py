"""Tests written by mutation testing of sgm_ref/io.py (atomic writes, model files) and
sgm_ref/experiments/sweep.py (the rate sweep's folder, resumption, interruption): each pins a
promise of a docstring that the modules' own tests (tests/test_io.py, tests/test_experiments.py,
tests/test_rate_cells.py, tests/test_rate_faults.py, tests/test_faults.py and the io tests of
tests/test_mutants_validation.py) let a mutated line through in, named in its docstring. The
references are what open() does, the documented refusals and messages, and the inputs themselves.
No cell is trained: the sweeps below are refused before any runs, or run on rows made up here."""
import concurrent.futures
import concurrent.futures.process
import json
import os
import stat

import numpy as np
import pytest

from sgm_ref import OU, ScoreModel, __version__
from sgm_ref.experiments import rate, sweep
from sgm_ref.io import atomic_write, load, read_header, save
from sgm_ref.nn import MLP

SETTINGS = {**rate.SETTINGS, "width": 8, "depth": 1, "steps": 20, "batch_size": 16, "n_eval": 200,
            "n_eval_tilted": 100, "bound_n": 4, "bound_steps": 10}
GRID = {"families": ["mixture"], "d": [2], "n": [40, 80], "seeds": [0], "settings": SETTINGS}


def _model(dtype=np.float64):
    return ScoreModel(MLP(2, (3,), dtype=dtype, rng=0), OU())


# -- io.py -----------------------------------------------------------------------------------

def test_a_write_through_a_symbolic_link_gives_the_new_file_the_mode_open_would_keep(tmp_path):
    """atomic_path: "An existing file keeps its permission bits, as with open()" - open() writes into
    the link's target and keeps its mode, so the new file gets the target's 0o600. Mutant survived:
    os.lstat for os.stat (the link's own mode, 0o777 on Linux: a private file's replacement made
    world-writable)."""
    target = tmp_path / "target"
    target.write_bytes(b"old")
    os.chmod(target, 0o600)
    os.symlink("target", tmp_path / "link")
    with open(tmp_path / "link", "r+b") as f:  # the independent reference: open() through the link
        f.write(b"OLD")
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    atomic_write(tmp_path / "link", lambda f: f.write(b"new"))
    assert not os.path.islink(tmp_path / "link") and (tmp_path / "link").read_bytes() == b"new"
    assert stat.S_IMODE(os.lstat(tmp_path / "link").st_mode) == 0o600
    assert target.read_bytes() == b"OLD"


def test_the_new_file_is_flushed_and_synced_whole_before_it_replaces_the_old(tmp_path, monkeypatch):
    """atomic_write: "Readers see either the old file or the complete new one" - after a crash too,
    which needs the temporary's bytes on disk before the rename: fsync sees the whole file (the
    reference: its length), then os.replace. Mutant survived: f.flush() dropped (fsync saw 0 of the
    130 bytes, still in Python's buffer; close wrote them after it, unsynced). Also fails with fsync
    dropped, which tests/test_io.py catches only through an fsync made to raise."""
    calls = []
    fsync, replace = os.fsync, os.replace

    def fsync_seen(fd):
        calls.append(("fsync", os.fstat(fd).st_size))
        fsync(fd)

    def replace_seen(source, target):
        calls.append(("replace", os.path.getsize(source), os.fspath(target)))
        replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync_seen)
    monkeypatch.setattr(os, "replace", replace_seen)
    data = b"new contents " * 10
    (tmp_path / "f.bin").write_bytes(b"old")
    atomic_write(tmp_path / "f.bin", lambda f: f.write(data))
    assert calls[:2] == [("fsync", len(data)), ("replace", len(data), os.fspath(tmp_path / "f.bin"))]
    assert len(calls) == 3 and calls[2][0] == "fsync"  # then the folder's (tests/test_io.py)
    assert (tmp_path / "f.bin").read_bytes() == data


def test_a_writers_error_that_names_another_file_keeps_that_name(tmp_path):
    """atomic_write gives path's name to an OSError from writing that names no file (a full disk); an
    error that names a file of its own (a writer's missing font or input) keeps it, as os_error_text
    then says. Mutant survived: the filename test dropped (the error was said to be about the target,
    "No such file or directory: .../f.png", a file the user never asked to read)."""
    import errno

    from sgm_ref.io import os_error_text

    (tmp_path / "f.png").write_bytes(b"old")
    missing = os.fspath(tmp_path / "fonts" / "DejaVuSans.ttf")

    def write(f):
        f.write(b"half")
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), missing)
    with pytest.raises(FileNotFoundError) as info:
        atomic_write(tmp_path / "f.png", write)
    assert info.value.filename == missing
    assert os_error_text(info.value) == f"No such file or directory: {missing}"
    assert (tmp_path / "f.png").read_bytes() == b"old" and os.listdir(tmp_path) == ["f.png"]


def test_save_refuses_an_ema_of_the_other_float_dtype_and_writes_nothing(tmp_path):
    """save's Raises: "an ema of another shape or dtype than params". Mutant survived: the dtype test
    dropped (a float32 average beside float64 parameters was written, a file whose use_ema load then
    refused as damaged)."""
    for dtype, other in ((np.float64, np.float32), (np.float32, np.float64)):
        model = _model(dtype)
        n = model.params.size
        with pytest.raises(ValueError, match=rf"^ema must have shape \({n},\) and dtype {np.dtype(dtype).name} "
                                             rf"\(the model's\), got \({n},\) {np.dtype(other).name}$"):
            save(model, tmp_path / "m.npz", ema=model.params.astype(other))
        assert os.listdir(tmp_path) == []
    model = _model()
    save(model, tmp_path / "m.npz", ema=model.params.astype(np.float64) * 0.5)  # the same dtype is taken
    assert load(tmp_path / "m.npz", use_ema=True).params.tobytes() == (model.params * 0.5).tobytes()


def test_save_refuses_a_non_str_key_inside_a_tuple_of_extra(tmp_path):
    """save's Raises: a key that is not a str, at any depth (_check_keys), is refused - JSON would
    give it back as another key; "a tuple is taken, and comes back a list". Mutant survived:
    _check_keys looked into lists only ({"runs": ({1: "a"},)} was written, read back as {"1": "a"})."""
    for extra in ({"runs": ({1: "a"},)}, {"runs": [({"ok": {2.5: "b"}},)]}):
        with pytest.raises(ValueError, match=r"^extra's keys must be str, got the key (1|2\.5):"):
            save(_model(), tmp_path / "m.npz", extra=extra)
        assert os.listdir(tmp_path) == []
    save(_model(), tmp_path / "m.npz", extra={"runs": ({"1": "a"},)})
    assert read_header(tmp_path / "m.npz")["extra"] == {"runs": [{"1": "a"}]}


# -- sweep.py: the folder's description ---------------------------------------------------------

class _Unused(concurrent.futures.Executor):
    """An executor the sweep must not reach: its refusals come before any cell."""

    def submit(self, fn, *args, **kwargs):
        raise AssertionError("a cell was submitted")


def _description(**change):
    return {"sgm_ref": __version__, "families": json.loads(json.dumps(rate.DEFINITIONS)), "settings": SETTINGS,
            **change}


def _refused(folder, match, grid=GRID):
    before = {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"}
    with pytest.raises(ValueError, match=match):
        sweep.run_sweep(folder, grid, executor=_Unused(), log=lambda s: None)
    assert {p.name: p.read_bytes() for p in folder.iterdir() if p.name != ".lock"} == before


def test_a_sweep_folder_of_another_sgm_ref_version_is_refused(tmp_path):
    """sweep.json records the sgm_ref version and "a restart must match" it (module docstring). Mutant
    survived: the version comparison dropped (a folder of 0.0.1 continued with this version's cells)."""
    (tmp_path / "sweep.json").write_text(json.dumps(_description(sgm_ref="0.0.1")))
    _refused(tmp_path, r"holds a sweep with other settings \(sgm_ref\); use a new output folder")
    (tmp_path / "sweep.json").write_text(json.dumps(_description()))  # the control: this version's own
    sweep._check_settings(str(tmp_path), SETTINGS)


@pytest.mark.parametrize("change", [lambda d: d.pop("sgm_ref"), lambda d: d.update(note="mine"),
                                    lambda d: d.update(settings=3), lambda d: d.update(families=["mixture"])])
def test_a_sweep_description_with_a_key_missing_or_added_is_refused(tmp_path, change):
    """A sweep.json without the version (a KeyError traceback), with a key of another program's, or
    whose settings or families are not a dict (a TypeError traceback) is "not a sweep description of
    this sgm_ref". Mutants survived: the test of its key set dropped; either dict test dropped (the
    existing test's description had both wrong at once)."""
    description = _description()
    change(description)
    (tmp_path / "sweep.json").write_text(json.dumps(description))
    _refused(tmp_path, r"sweep.json is not a sweep description of this sgm_ref; use a new output folder$")


def test_a_setting_the_folder_has_and_the_grid_lacks_is_a_change(tmp_path):
    """The settings of _LATER_SETTINGS may be missing from a grid (an older sweep's), and a missing one
    means its old behaviour: a folder made with val_early = 3 continued by a grid without it would mix
    cells trained two ways. Mutant survived: only the grid's keys compared (the folder's val_early
    not seen)."""
    assert SETTINGS["val_early"] == 3 and "val_early" in rate._LATER_SETTINGS
    (tmp_path / "sweep.json").write_text(json.dumps(_description()))
    older = {k: v for k, v in SETTINGS.items() if k != "val_early"}
    _refused(tmp_path, r"other settings \(val_early\)", grid={**GRID, "settings": older})
    (tmp_path / "sweep.json").write_text(json.dumps(_description(settings=older)))
    _refused(tmp_path, r"other settings \(val_early\)")  # and the other way round


@pytest.mark.parametrize("make", [
    lambda folder: (folder / ".tmp-a1b2c3d4summary.md.orig").write_text("a user's copy"),  # not a name of ours
    lambda folder: os.symlink("notes", folder / ".tmp-a1b2c3d4summary.md"),  # mkstemp makes no link
])
def test_only_the_sweeps_own_temporaries_are_removed(tmp_path, make):
    """_remove_stale_temporaries removes ".tmp-" + mkstemp's 8 characters + a name of _WRITTEN, as a
    regular file, and nothing else: here the folder then holds another program's file and is refused
    as "not empty" with it kept. Mutants survived: fullmatch -> match (".tmp-a1b2c3d4summary.md.orig"
    deleted, and the folder taken as empty); the islink test dropped (the link deleted)."""
    (tmp_path / "notes").write_text("kept")
    make(tmp_path)
    _refused(tmp_path, "is not empty and holds no sweep")
    assert (tmp_path / "notes").read_text() == "kept"


def test_a_folder_whose_temporaries_are_all_the_sweeps_is_taken_as_empty(tmp_path):
    """The control of the test above: a stale temporary of each file the sweep writes goes, and the
    refusal is then about the grid's cells (the unused executor), not the folder."""
    for name in sweep._WRITTEN:
        (tmp_path / f".tmp-k1l2m3n4{name}").write_bytes(b"half")
    with pytest.raises(AssertionError, match="a cell was submitted"):
        sweep.run_sweep(tmp_path, GRID, executor=_Unused(), log=lambda s: None)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != ".lock") == ["sweep.json"]


# -- sweep.py: running, stopping ----------------------------------------------------------------

def test_the_worker_environment_is_put_back_as_it_was_unset_ones_unset(monkeypatch):
    """_single_threaded_children sets the thread variables to 1 for the pool's workers and puts the
    parent's environment back. Mutant survived: a variable that was unset left at "1" (the rest of
    the program, and every process it starts, then single-threaded)."""
    for name in sweep._THREAD_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with sweep._single_threaded_children():
        assert {name: os.environ.get(name) for name in sweep._THREAD_VARIABLES} == \
            dict.fromkeys(sweep._THREAD_VARIABLES, "1")
    assert os.environ["OMP_NUM_THREADS"] == "3"
    assert [name for name in sweep._THREAD_VARIABLES if name in os.environ] == ["OMP_NUM_THREADS"]


def _row(cell, error):
    f, d, n, s = rate.cell_key(cell)
    return {"family": f, "d": d, "n": n, "seed": s, "status": "ok", "score_error": error, "score_error_se": 1e-3,
            "tv_bound": None, "tv_bound_se": None, "train_seconds": 1.0, "eval_seconds": 1.0}


class _DiesAfterTheFirstCell(concurrent.futures.Executor):
    """The first cell finishes; the workers of the others are then killed (the out-of-memory killer)."""

    def __init__(self):
        self.submitted, self.pending = 0, []

    def submit(self, fn, cell):
        future = concurrent.futures.Future()
        self.submitted += 1
        if self.submitted == 1:
            future.set_result(_row(cell, 0.25))
        else:
            self.pending.append(future)
        return future

    def die(self, message):
        if message.startswith("[1/"):  # the first cell's row is in results.jsonl and the results
            for future in self.pending:
                future.set_exception(concurrent.futures.process.BrokenProcessPool("terminated abruptly"))


def test_a_dead_worker_leaves_the_outputs_of_the_cells_that_finished(tmp_path, monkeypatch):
    """run_sweep on a dead worker: "the N finished cells are kept", and the outputs are written from
    them before the error (a rerun is not needed to read them). Mutant survived: write_outputs dropped
    on BrokenProcessPool (the existing test's sweep had no finished cell, whose outputs are none)."""
    monkeypatch.setattr(sweep, "plot_rate", lambda path, summary: False)  # (matplotlib's import: seconds)
    executor = _DiesAfterTheFirstCell()
    with pytest.raises(ValueError, match=r"^a worker process died \(killed, or out of memory\?\); the 1 finished "
                                         r"cells are kept: rerun the same command"):
        sweep.run_sweep(tmp_path, {**GRID, "n": [40, 80, 160]}, executor=executor, log=executor.die)
    (row,) = rate.load_results(tmp_path / "results.jsonl")
    assert row["score_error"] == 0.25
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [(p["n"], p["score_error"]) for s in summary for p in s["points"]] == [(row["n"], 0.25)]
    assert (tmp_path / "results.csv").read_text().count("\n") == 2 and (tmp_path / "summary.md").is_file()


def test_a_slope_of_two_n_shows_zero_degrees_of_freedom():
    """summary.md: "dof = number of n fitted - 2, ... – below 0": two n fitted is a line with 0 degrees
    of freedom (and no se), shown as (0). Mutant survived: `> 0` for `>= 0` (shown as (–), as for no
    line at all)."""
    rows = [{"family": "mixture", "d": 2, "n": n, "seed": 0, "status": "ok", "score_error": e, "score_error_se": 0.01,
             "tv_bound": None} for n, e in ((40, 0.04), (80, 0.02))]
    (summary,) = rate.sweep_summary(rows)
    assert summary["slope_dof"] == 0
    slope = (np.log(0.02) - np.log(0.04)) / (np.log(80) - np.log(40))  # the line through the two points: -1
    assert f"| mixture | 2 | {slope:.2f} ± – (0) | [–, –] |" in sweep.summary_markdown([summary])


@pytest.mark.parametrize("key", ["d", "n", "seeds"])
def test_a_grid_list_given_as_a_number_is_refused_before_the_folder_is_made(tmp_path, key):
    """run_sweep's grid: "d", "n" and "seeds" are lists (_check_grid). Mutant survived: seeds left out
    of the list test (seeds=3, meaning three seeds, was a TypeError traceback from make_grid)."""
    with pytest.raises(ValueError, match=rf"^grid\['{key}'\] must be a list, got 3$"):
        sweep.run_sweep(tmp_path / "out", {**GRID, key: 3}, executor=_Unused(), log=lambda s: None)
    assert not (tmp_path / "out").exists()


def test_a_resumed_sweep_says_how_many_of_its_cells_failed(tmp_path, monkeypatch):
    """The first line of a resumed sweep counts the cells already done and, of them, the failed ones
    (a restart skips them unless retry_failed). Mutant survived: the failed count dropped (the line
    said "2 cells already in ...; 0 to run", as for two good cells)."""
    monkeypatch.setattr(sweep, "plot_rate", lambda path, summary: False)  # (matplotlib's import: seconds)
    (tmp_path / "sweep.json").write_text(json.dumps(_description()))
    ok, failed = rate.cells(GRID)
    with open(tmp_path / "results.jsonl", "w", encoding="utf-8") as f:
        f.write(json.dumps(_row(ok, 0.5)) + "\n")
        f.write(json.dumps({**_row(failed, 0.5), "status": "failed", "error": "ValueError: diverged"}) + "\n")
    messages = []
    sweep.run_sweep(tmp_path, GRID, executor=_Unused(), log=messages.append)
    assert messages == [f"2 cells already in {tmp_path / 'results.jsonl'} (1 failed); 0 to run"]


def test_the_tv_table_names_the_old_rows_sampler_and_leaves_out_a_family_without_bounds(tmp_path, monkeypatch):
    """summary_markdown: the TV table is of "the sampler(s) named in methods (the tv["method"] of the rows
    with a bound; older rows: Euler-Maruyama)", and a family none of whose rows has a bound (a Monte-Carlo
    oracle's) has no row in it. Mutants survived: the older rows' default named residual_exponential;
    the family without bounds given a row of dashes."""
    monkeypatch.setattr(sweep, "plot_rate", lambda path, summary: False)  # (matplotlib's import: seconds)

    def row(family, n, bound):  # an older row: a bound without its tv record
        return {"family": family, "d": 2, "n": n, "seed": 0, "status": "ok", "score_error": 1.0 / n,
                "score_error_se": 1e-4, "tv_bound": bound}

    sweep.write_outputs(str(tmp_path), [row("mixture", 40, 0.5), row("mixture", 80, 0.25),
                                        row("tilted", 40, None), row("tilted", 80, None)])
    text = (tmp_path / "summary.md").read_text(encoding="utf-8")
    scores, bounds = text.split("\n\nCertified upper bound on TV(p_0, output of euler_maruyama), mean over seeds")
    assert "| tilted | 2 |" in scores and "| mixture | 2 |" in scores
    assert [line for line in bounds.splitlines() if line.startswith("| ") and "n = " not in line] == \
        ["| mixture | 2 | 0.500 | 0.250 |"]
