"""Tests written by mutation testing of sgm_ref/runs.py: each pins a bound, a message, an order of
writes or a case that the module's own tests (tests/test_runs.py, tests/test_run_integrity.py,
tests/test_faults.py) let a mutated line through in, named in its docstring. The references are
independent: a closed form solved in mpmath, the size of the array the training draws, time_grid's
own refusal, io.load's arrays, and the behaviour the docstrings and messages promise (the remedy a
message names works when followed; what it says will be refused is refused)."""

import json
import os

import mpmath
import numpy as np
import pytest

import sgm_ref.runs as runs_module
from sgm_ref import OU, _validation, metrics
from sgm_ref.targets import GaussianMixture, _checks
from sgm_ref.io import ModelFileError, load, save
from sgm_ref.processes import process_from_dict
from sgm_ref.runs import (RunError, check_total_steps, create, finished_steps, load_model, make_config, read_config,
                          restore_history, train)
from sgm_ref.samplers import time_grid
from sgm_ref.targets.spec import from_spec
import test_run_integrity
from test_run_integrity import SMALL, _copy
from test_runs import _interrupt_extension  # Ctrl-C in `train --resume --steps 60` after a checkpoint at 40

finished = test_run_integrity.finished  # its module-scoped fixture: a finished 30-step run, made for this module


def _edit_config(run, section=None, **values):
    config = json.loads((run / "config.json").read_text())
    (config[section] if section else config).update(values)
    (run / "config.json").write_text(json.dumps(config))


# -- the configuration's bounds ---------------------------------------------------------------

def test_the_steps_bound_takes_2_to_the_53_itself():
    """build's message: "steps must be at most 2**53". Mutant survived: `>= _MAX_STEPS` (2**53 refused)."""
    assert make_config({"train": {"steps": 2**53}})["train"]["steps"] == 2**53
    with pytest.raises(ValueError, match=r"^steps must be at most 2\*\*53, got 9007199254740993$"):
        make_config({"train": {"steps": 2**53 + 1}})


def test_the_training_data_s_size_is_that_of_the_array_training_draws(monkeypatch):
    """The count of training points is refused when their array (n x d float64, as target.sample
    draws it before any cast) exceeds memory: the limit is memory // its bytes per point, measured
    here from a drawn array. Mutant survived: 4 d bytes a point (twice the data accepted)."""
    memory = 2**30
    target = from_spec("ring")
    per_point = target.sample(3, np.random.default_rng(0)).nbytes // 3
    limit = memory // per_point
    monkeypatch.setattr(_validation, "_physical_memory", lambda: memory)
    assert make_config({"data": {"n": limit}})["data"]["n"] == limit
    with pytest.raises(ValueError, match=rf"^n \(training samples\) must be at most {limit} on this machine, "
                                         rf"got {limit + 1}"):
        make_config({"data": {"n": limit + 1}})


def test_a_vp_run_accepts_the_t0_its_refusal_prints():
    """_LIMIT_SLACK: 'the limits are printed to 3 digits: accept what the message says'. For VP the
    printed t0 (4.93e-31) is below the limit (4.9304e-31), which the mpmath root of
    B(t) = -log1p(-eps^2), B(t) = beta_min t + (beta_max - beta_min) t^2 / 2, gives. Mutant survived:
    the slack dropped from the t0 test (OU's printed limits round up, so only T's slack was tested)."""
    vp = {"name": "VP", "beta_min": 0.1, "beta_max": 20.0}
    mpmath.mp.dps = 40
    eps2 = mpmath.mpf(np.finfo(np.float64).eps) ** 2
    b0, b1 = mpmath.mpf("0.1"), mpmath.mpf("20.0")
    exact = mpmath.findroot(lambda t: b0 * t + (b1 - b0) * t**2 / 2 + mpmath.log1p(-eps2), eps2 / b0)
    t0_min, _ = runs_module.horizon_limits(process_from_dict(vp), np.float64)
    assert abs(t0_min - float(exact)) <= 4e-16 * t0_min
    with pytest.raises(ValueError, match=r"^--t0 must be >= 4\.93e-31 for VP") as refusal:
        make_config({"process": vp, "train": {"t0": 1e-40}})
    printed = float(str(refusal.value).split(">= ")[1].split()[0])
    assert printed < t0_min
    assert make_config({"process": vp, "train": {"t0": printed}})["train"]["t0"] == printed


def test_a_single_sample_is_refused_by_the_configuration():
    """build: the report's statistics need two points. Mutant survived: minimum=1 (n = 1 accepted)."""
    with pytest.raises(ValueError, match=r"^sample n \(--n-samples\) must be an integer >= 2, got 1$"):
        make_config({"sample": {"n": 1}})
    assert make_config({"sample": {"n": 2}})["sample"]["n"] == 2


def test_the_sampler_s_grid_bound_is_time_grid_s(monkeypatch):
    """build refuses n_steps whose time grid (n_steps + 1 points of 24 bytes) exceeds memory, said as the
    sampler's: the largest it accepts is the largest time_grid accepts under the same memory. Mutant
    survived: n_steps * 24 (one step more accepted than time_grid takes)."""
    memory = 24 * 1001
    monkeypatch.setattr(_validation, "_physical_memory", lambda: memory)  # build's and time_grid's
    small = {"data": {"n": 100}, "model": {"width": 4, "depth": 1}, "train": {"batch_size": 16},  # within 24 kB
             "evaluate": {"n": 20, "two_sample_n": 20, "profile_n": 20, "bound_n": 16}}
    assert make_config({**small, "sample": {"n": 20, "n_steps": 1000}})["sample"]["n_steps"] == 1000
    with pytest.raises(ValueError, match=r"^sample n_steps must be at most 1000 on this machine, got 1001"):
        make_config({**small, "sample": {"n": 20, "n_steps": 1001}})
    process = process_from_dict({"name": "OU"})
    assert len(time_grid(5.0, 1e-3, 1000, "geometric", process)) == 1001
    with pytest.raises(ValueError, match=r"n_steps"):
        time_grid(5.0, 1e-3, 1001, "geometric", process)


def test_the_largest_profile_n_the_configuration_accepts_is_one_the_integral_accepts(monkeypatch):
    """_check_sizes counts profile_n by the evaluation's integral (score_error_integral over 4 profile_n
    points, its own fits_in_memory check): the largest the configuration accepts is one the integral
    accepts under the same memory. Mutant survived: half the bytes per point counted (a count the
    configuration accepted refused by the evaluation, after training and sampling)."""
    import re

    memory = 2**22
    monkeypatch.setattr(_validation, "_physical_memory", lambda: memory)
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: memory)
    small = {"model": {"width": 8, "depth": 1}, "sample": {"n": 100}}
    with pytest.raises(ValueError, match=r"^evaluate profile_n must be at most \d+ on this machine") as info:
        make_config({**small, "evaluate": {"profile_n": 2**40}})
    largest = int(re.search(r"at most (\d+)", str(info.value)).group(1))
    t = make_config({**small, "evaluate": {"profile_n": largest}})["train"]
    ring = GaussianMixture.ring()
    integral = metrics.score_error_integral(ring.score, ring, OU(), t["t0"], t["T"], 4 * largest,
                                            np.random.default_rng(0))
    assert integral == (0.0, 0.0)  # (estimate, standard error) of the exact score against itself


def test_a_blas_count_of_zero_in_the_environment_is_the_default(monkeypatch):
    """thread_counts without threadpoolctl and without an OpenBLAS found: a variable of 0 (or below) is
    ignored as OpenBLAS ignores it, and the default of one thread per available core is recorded.
    Mutant survived: the `blas < 1` fallback dropped (0 threads recorded)."""
    from sgm_ref import _threads
    from test_runs import _without_threadpoolctl

    _without_threadpoolctl(monkeypatch)
    monkeypatch.setattr(_threads, "blas_threads", lambda: [])
    for name in ("GOTO_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    for value in ("0", "-2"):
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", value)
        assert runs_module.thread_counts()["blas"] == cores


# -- config.json and model.npz read as they are ------------------------------------------------

def test_a_format_version_of_true_is_refused(tmp_path, finished):
    """read_config: `true == 1 in Python`. Mutant survived: the type test dropped (version true read)."""
    run = _copy(finished, tmp_path / "run")
    _edit_config(run, version=True)
    with pytest.raises(RunError, match=r"config.json has run format version True; this sgm_ref reads 1$"):
        read_config(run)


def test_a_preset_label_that_no_longer_parses_is_not_the_definition(tmp_path, finished):
    """_check_target_label: a "target" naming a preset whose options do not parse (edited by hand) does
    not describe "target_definition". Mutant survived: a label that does not parse taken as the same."""
    run = _copy(finished, tmp_path / "run")
    _edit_config(run, target="ring:nonsense=1")
    with pytest.raises(RunError, match=r"\"target\" is 'ring:nonsense=1', which is not the target its "
                                       r"\"target_definition\" describes"):
        read_config(run)


def test_a_model_header_s_step_count_of_true_is_none(tmp_path, finished):
    """_model_steps: the step count 'an integer'. Mutant survived: the bool test dropped (true read as
    1 step: finished_steps 1)."""
    run = _copy(finished, tmp_path / "run")
    save(load(run / "model.npz"), run / "model.npz", extra={"steps": True})
    assert finished_steps(run) is None
    save(load(run / "model.npz"), run / "model.npz", extra={"steps": 30})
    assert finished_steps(run) == 30


def test_a_config_edited_to_one_step_fewer_than_trained_names_the_way_back(tmp_path, finished):
    """load_model: a model of more steps than config.json's is not 'an extension under way'. Mutant
    survived: `trained > steps + 1` (29 of 30 said 'finish the training with --resume', which refuses)."""
    run = _copy(finished, tmp_path / "run")
    _edit_config(run, "train", steps=29)
    with pytest.raises(RunError, match=r"trained for 30 steps but config.json asks for 29, fewer .*restore its "
                                       r"\"steps\" to 30"):
        load_model(run)


def test_how_often_a_run_checkpoints_is_not_a_setting_of_its_model(tmp_path, finished):
    """_run_digest: 'not its step count ... nor how often it checkpoints'. Mutant survived:
    checkpoint_every in the digest (a model refused as 'trained under other settings')."""
    run = _copy(finished, tmp_path / "run")
    reference = load_model(finished)
    _edit_config(run, "train", checkpoint_every=7)
    model = load_model(run)
    assert all(np.array_equal(a, b) for a, b in zip(model.params, reference.params))


def test_a_run_with_a_parameter_average_loads_the_average(finished):
    """load_model: 'the run's trained model (its parameter average when one was kept)', the ema arrays
    io.load reads, not the parameters (which differ). Mutant survived: use_ema=False (every run sampled
    and evaluated with its last parameters; no test compares them)."""
    path = finished / "model.npz"
    model, ema, last = load_model(finished), load(path, use_ema=True), load(path, use_ema=False)
    assert all(np.array_equal(a, b) for a, b in zip(model.params, ema.params))
    assert not all(np.array_equal(a, b) for a, b in zip(model.params, last.params))


def test_a_run_without_a_parameter_average_loads_its_parameters(tmp_path):
    """load_model: 'its parameter average when one was kept'; ema_decay 0 keeps none and the model is
    the trained parameters, as io.load reads them, and model.npz holds no average ('0 turns the
    parameter average off'). Mutants survived: use_ema=True (the run refused as 'saved without ema');
    _optimizer's `not ema_decay` as `ema_decay is None` (an average of decay 0 kept and saved)."""
    run = tmp_path / "run"
    create(run, make_config({**SMALL, "train": {"steps": 10, "ema_decay": 0.0}}))
    train(run, progress=False)
    model, plain = load_model(run), load(run / "model.npz", use_ema=False)
    assert all(np.array_equal(a, b) for a, b in zip(model.params, plain.params))
    with pytest.raises(ModelFileError, match=r"has no 'ema' array \(saved without ema\)"):
        load(run / "model.npz", use_ema=True)


# -- training states and the remedies of an extension ------------------------------------------

def test_a_digestless_state_under_an_edited_ema_warmup_names_the_setting(tmp_path, finished):
    """_load_state compares every optimiser setting config.json builds, ema_warmup too (a state of a
    version without the run digest, which alone would have told). Mutant survived: ema_warmup left
    out of the settings compared (the extension trained on with the file's warm-up)."""
    run = _copy(finished, tmp_path / "run")
    with np.load(run / "training_state.npz") as f:
        arrays = {k: f[k] for k in f.files if k not in ("run_digest", "threads")}
    np.savez(run / "training_state.npz", **arrays)
    _edit_config(run, "train", ema_warmup=False)
    with pytest.raises(RunError, match=r"training state .* has optimiser settings \(ema_warmup\) other than "
                                       r"config.json's"):
        train(run, progress=False, steps=40)
    assert read_config(run)["train"]["steps"] == 30


def test_a_state_whose_step_is_not_the_finished_runs_is_not_restored_from(tmp_path, finished):
    """_state_loss: the losses 'if it is whole for `steps` steps (at that step, ...)'. Mutant survived:
    the step test dropped (a state at step 31 holding 30 losses restored history.json)."""
    run = _copy(finished, tmp_path / "run")
    with np.load(run / "training_state.npz") as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(run / "training_state.npz", **{**arrays, "step": np.int64(31)})
    (run / "history.json").unlink()
    assert restore_history(run) is False and not (run / "history.json").exists()


def test_a_training_state_that_is_a_bare_array_or_of_a_negative_step_is_named_so(tmp_path, finished):
    """_load_state's refusals name the damage: 'a bare array, not an .npz archive'; 'its step must be an
    integer >= 0'. Mutants survived: the bare-array test dropped (the message was numpy's AttributeError
    text); the step's `< 0` dropped (a step of -1 called 'inconsistent: step -1, 30 losses')."""
    run = _copy(finished, tmp_path / "run")
    state = run / "training_state.npz"
    with np.load(state) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(state, **{**arrays, "step": np.int64(-1)})
    with pytest.raises(RunError, match=r"training state .* is unreadable \(its step must be an integer >= 0, got "
                                       r"int64 -1\)"):
        train(run, progress=False, steps=40)
    with open(state, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(RunError, match=r"training state .* is unreadable \(a bare array, not an .npz archive\)"):
        train(run, progress=False, steps=40)


def test_restoring_the_history_waits_for_no_lock_another_command_holds(tmp_path, finished):
    """restore_history: 'Takes the folder's lock only to write'. Mutant survived: the write made without
    the lock (history.json written while another command held the run)."""
    fcntl = pytest.importorskip("fcntl")
    run = _copy(finished, tmp_path / "run")
    (run / "history.json").unlink()
    with open(run / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=r"another"):
            restore_history(run)
        assert not (run / "history.json").exists()
    assert restore_history(run) is True and (run / "history.json").read_bytes() == (
        finished / "history.json").read_bytes()


def test_steps_equal_to_the_configured_ones_are_the_run_s_own(tmp_path, finished):
    """check_total_steps: 'steps if >= config's'. Mutant survived: `steps <= configured` taken as fewer
    (`train --resume --steps 30` of a run of 30 refused as 'a run can be extended, not shortened')."""
    run = _copy(finished, tmp_path / "run")
    assert check_total_steps(run, read_config(run), 30) == 30
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"}
    assert len(train(run, progress=False, steps=30).loss) == 30
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.name != ".lock"} == before


def test_giving_an_extension_up_killed_between_its_two_writes_can_be_given_up_again(tmp_path, finished,
                                                                                    monkeypatch):
    """train: giving up removes the checkpoint first, then writes config.json, 'so that a kill between
    the two writes leaves an extension that this or --resume still completes'; while the extension is
    pending there is no finished training (finished_steps: 'no checkpoint pending'). Mutants survived:
    the two writes swapped (config.json back at 30 beside the extension's checkpoint at 40: every
    train then refused 'past the 30 steps'); finished_steps ignoring the checkpoint."""
    run = _copy(finished, tmp_path / "run")
    model = (run / "model.npz").read_bytes()
    _interrupt_extension(run, monkeypatch)
    assert finished_steps(run) is None and (run / "checkpoint.npz").exists()
    done = []

    def second_killed(what, act):
        if done:
            raise KeyboardInterrupt
        done.append(what)
        return act()

    unlink, write = runs_module.os.unlink, runs_module.write_json
    with monkeypatch.context() as m:
        m.setattr(runs_module.os, "unlink", lambda p, *a, **k: second_killed("unlink", lambda: unlink(p, *a, **k))
                  if str(p).endswith("checkpoint.npz") else unlink(p, *a, **k))
        m.setattr(runs_module, "write_json", lambda p, o: second_killed("write", lambda: write(p, o))
                  if str(p).endswith("config.json") else write(p, o))
        with pytest.raises(KeyboardInterrupt):
            train(run, progress=False, steps=30)
    assert len(done) == 1
    assert len(train(run, progress=False, steps=30).loss) == 30  # given up after all
    assert finished_steps(run) == 30 and (run / "model.npz").read_bytes() == model


def test_a_resume_one_step_before_the_end_under_other_threads_says_so(tmp_path, monkeypatch):
    """_train keeps the saved thread counts only when no step is taken (start == steps); a checkpoint one
    step before the end takes one, under this process's counts: the note says so and the state records
    them. Mutant survived: `start >= steps - 1` (no note, and the last step recorded as taken with the
    checkpoint's counts)."""
    run = tmp_path / "run"
    create(run, make_config({**SMALL, "train": {"steps": 31, "checkpoint_every": 10}}))

    fit = runs_module.fit

    def interrupted(*args, callback, **kwargs):  # Ctrl-C once the checkpoint at step 30 is written
        def checkpoint_then_stop(step, *rest):
            callback(step, *rest)
            if step == 30:
                raise KeyboardInterrupt
        return fit(*args, callback=checkpoint_then_stop, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(runs_module, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(run, progress=False)
    assert runs_module._state_step(run / "checkpoint.npz") == 30
    saved = runs_module.thread_counts()
    other = {"blas": saved["blas"] + 3, "numba": saved["numba"] + 2}
    monkeypatch.setattr(runs_module, "thread_counts", lambda: other)
    notes = []
    train(run, progress=False, log=notes.append)
    assert len(notes) == 1 and notes[0].startswith("note: checkpoint.npz was written with ")
    with np.load(run / "training_state.npz") as f:
        assert json.loads(str(f["threads"])) == other


def test_a_removed_state_beside_an_interrupted_extension_is_not_offered_giving_up(tmp_path, finished):
    """_state_remedy: with the state removed, '--steps trained would no longer be accepted', and
    _interrupted_extension names a missing state no extension. Mutant survived: `step is None` alone
    (load_model offered `--steps 30`, which check_total_steps then refuses)."""
    run = _copy(finished, tmp_path / "run")
    _edit_config(run, "train", steps=60)  # an extension killed before its first checkpoint
    (run / "training_state.npz").unlink()
    with pytest.raises(RunError) as refusal:
        load_model(run)
    assert "trained for 30 steps but config.json asks for 60" in str(refusal.value)
    assert "--steps 30" not in str(refusal.value)
    with pytest.raises(RunError, match=r"--steps 30 is fewer than the 60 steps .*a run can be extended, not "
                                       r"shortened"):
        check_total_steps(run, read_config(run), 30)


def test_an_extension_whose_model_write_fails_keeps_its_final_state_for_resume(tmp_path, finished, monkeypatch):
    """train: a failure is rolled back to the finished run 'unless the new final state is already written
    (then the extension is complete but for its model: --resume writes it)'; written, it is the model an
    unbroken extension writes. Mutant survived: the rollback also then (config.json back at 30 beside a
    state at 40: --resume refused 'past the 30 steps')."""
    run, whole = _copy(finished, tmp_path / "run"), _copy(finished, tmp_path / "whole")
    train(whole, progress=False, steps=40)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(runs_module, "save", full_disk)
        with pytest.raises(OSError):
            train(run, progress=False, steps=40)
    assert read_config(run)["train"]["steps"] == 40
    train(run, progress=False)
    assert finished_steps(run) == 40
    for name in ("model.npz", "training_state.npz", "history.json"):
        assert (run / name).read_bytes() == (whole / name).read_bytes(), name


def test_a_new_sampling_removes_the_evaluation_of_the_old_samples(tmp_path, finished):
    """sample_run: 'old samples and their evaluation go first' (_EVALUATION_FILES: 'what a new sampling
    makes stale'). Mutant survived: the removal dropped (report.json and the plots of the old samples
    stayed beside the new ones, read as their evaluation)."""
    run = _copy(finished, tmp_path / "run")
    runs_module.sample_run(run)
    for name in runs_module._EVALUATION_FILES:
        (run / name).write_text("the evaluation of the samples drawn before")
    runs_module.sample_run(run, {"n_steps": 12})
    assert [name for name in runs_module._EVALUATION_FILES if (run / name).exists()] == []
    assert runs_module.load_samples(run, 2).shape == (50, 2)


def test_a_sampling_killed_between_its_two_writes_leaves_no_samples_to_misread(tmp_path, finished, monkeypatch):
    """sample_run writes config.json (the new samples' digest and SHA-256) before samples.npy: 'a kill in
    between leaves no samples rather than samples beside the wrong settings'. Mutant survived: the two
    writes swapped (a first `sample --n-steps 12` killed between them left its samples beside a
    config.json of 10 steps recording no digest, and load_samples read them as that sampler's)."""
    run = _copy(finished, tmp_path / "run")
    done = []
    write, atomic = runs_module.write_json, runs_module.atomic_write

    def second_killed(act):
        if done:
            raise KeyboardInterrupt
        done.append(1)
        return act()

    monkeypatch.setattr(runs_module, "write_json", lambda p, o: second_killed(lambda: write(p, o)))
    monkeypatch.setattr(runs_module, "atomic_write", lambda p, w: second_killed(lambda: atomic(p, w))
                        if str(p).endswith("samples.npy") else atomic(p, w))
    with pytest.raises(KeyboardInterrupt):
        runs_module.sample_run(run, {"n_steps": 12})
    monkeypatch.undo()
    with pytest.raises(RunError, match=r"has no samples.npy: run `sgm-ref sample` first"):
        runs_module.load_samples(run, 2)
    assert read_config(run)["sample"]["n_steps"] == 12


def test_samples_of_another_shape_with_the_same_numbers_are_refused(tmp_path, finished):
    """load_samples: 'the (n, d) array'. An (n, 1, d) array holds the same bytes (its SHA-256 is
    config.json's) and n rows. Mutant survived: the ndim test relaxed to the last axis (read whole)."""
    run = _copy(finished, tmp_path / "run")
    x = runs_module.sample_run(run)
    np.save(run / "samples.npy", x.reshape(50, 1, 2))
    with pytest.raises(RunError, match=r"samples.npy has shape \(50, 1, 2\) and dtype float64; expected \(n, 2\)"):
        runs_module.load_samples(run, 2)


# -- the folder ------------------------------------------------------------------------------

def test_a_run_created_while_the_new_folder_waited_for_its_lock_is_kept(tmp_path, finished, monkeypatch):
    """new_run: a folder this call made that holds run files once its lock is taken is 'someone else's
    run, written while we waited for the lock'. Mutant survived: that test dropped (the other command's
    config.json taken for a run to --force away, and removed)."""
    run = tmp_path / "run"
    theirs = (finished / "config.json").read_bytes()
    writing = runs_module.writing

    def writing_after_another(folder, **kwargs):
        (run / "config.json").write_bytes(theirs)  # the other command, while this one waited
        return writing(folder, **kwargs)

    monkeypatch.setattr(runs_module, "writing", writing_after_another)
    with pytest.raises(RunError, match=r"another command created a run in .*run meanwhile; choose another folder"):
        create(run, make_config(SMALL))
    assert (run / "config.json").read_bytes() == theirs
