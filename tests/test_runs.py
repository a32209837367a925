"""Target specs, run configurations and run folders (the library under the sgm-ref command)."""

import json
import re
import socket
import stat

import numpy as np
import pytest

from sgm_ref import GaussianMixture
from sgm_ref.runs import RUN_FILES, RunError, create, make_config, read_config, sample_run, streams, train
from sgm_ref.targets import ProductMixture
from sgm_ref.targets.spec import from_record, from_spec, to_record


# -- target specs ----------------------------------------------------------------------

def _same_mixture(a, b):
    return a.to_dict() == b.to_dict()


def test_presets():
    assert _same_mixture(from_spec("ring"), GaussianMixture.ring())
    assert _same_mixture(from_spec(" ring:k=6,radius=3,std=0.2 "), GaussianMixture.ring(6, 3.0, 0.2))
    assert _same_mixture(from_spec("gmm:d=5,k=3,radius=2.5,seed=7"), GaussianMixture.paper_family(5, 3, 2.5, 7))
    assert _same_mixture(from_spec("gmm:radius=2,k=3,d=5"), GaussianMixture.paper_family(5, 3, 2.0, 0))


def test_product_preset_and_records():
    p = from_spec("product:d=3,shift=2,std=0.5")
    assert p.to_dict() == ProductMixture.symmetric(3, 2.0, 0.5).to_dict()
    for target in (p, GaussianMixture.ring(), from_spec("gmm:d=4,k=2,radius=1")):
        again = from_record(to_record(target))
        assert type(again) is type(target) and again.to_dict() == target.to_dict()
    with pytest.raises(ValueError, match="'type'"):
        from_record({"weights": [1.0]})
    with pytest.raises(ValueError, match="product mixture spec"):
        from_record({"type": "ProductMixture", "weights": [[0.5, 0.5]]})


def test_a_record_file_is_a_target(tmp_path):
    """A JSON file holding a record (to_record: what a run's config.json keeps as
    "target_definition") names its target, a ProductMixture too; it was refused with
    "unknown key(s) ['type']", so a run's target could not be passed back as --target."""
    targets = (ProductMixture([[0.3, 0.7], [0.5, 0.5]], [[-1.0, 2.0], [0.0, 1.0]], [[0.5, 1.0], [2.0, 0.25]]),
               GaussianMixture.ring(), from_spec("gmm:d=4,k=2,radius=1"))
    for k, target in enumerate(targets):
        path = tmp_path / f"record{k}.json"
        path.write_text(json.dumps(to_record(target)))
        again = from_spec(str(path))
        assert type(again) is type(target) and again.to_dict() == target.to_dict()
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"type": "Banana", "weights": [1.0]}))
    with pytest.raises(ValueError, match=r"target file .*bad\.json: a target record must be a dict with 'type' one of"):
        from_spec(str(path))


def test_preset_names_win_over_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ring").write_text("not a target")
    assert from_spec("ring").to_dict() == GaussianMixture.ring().to_dict()


def test_json_file(tmp_path):
    mixture = GaussianMixture([0.2, 0.8], [[0.0, 1.0], [2.0, -1.0]], [[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0], [0, 0.2]]])
    path = tmp_path / "m.json"
    path.write_text(json.dumps(mixture.to_dict()))
    assert _same_mixture(from_spec(str(path)), mixture)


@pytest.mark.parametrize("spec, match", [
    ("", "non-empty string"),
    (None, "non-empty string"),
    ("moons", "unknown target 'moons'"),
    ("ring:", "malformed target parameter"),
    ("ring:k=8,,std=1", "malformed target parameter"),
    ("ring:k=8,k=9", "given twice"),
    ("ring:sigma=1", "unknown parameter 'sigma'"),
    ("ring:k=two", "k must be an integer"),
    ("ring:std=wide", "std must be a number"),
    ("ring:std=-1", "std"),
    ("gmm:d=3", "gmm needs k, radius"),
    ("gmm:d=0,k=2,radius=1", "d"),
    ("nowhere.json", "cannot read target file"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        from_spec(spec)


def test_invalid_json_mixture(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    (tmp_path / "b.json").write_text(json.dumps({"weights": [0.5, 0.5], "means": [[0.0], [1.0]],
                                                 "covariances": [[-1.0], [1.0]]}))
    with pytest.raises(ValueError, match="not valid JSON"):
        from_spec(str(tmp_path / "a.json"))
    with pytest.raises(ValueError, match="b.json: .*covariances"):
        from_spec(str(tmp_path / "b.json"))
    (tmp_path / "c.json").write_text(json.dumps({"weights": [1.0], "means": [[0.0]], "covariance": [[2.0]]}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['covariance'\]"):
        from_spec(str(tmp_path / "c.json"))


# -- configurations --------------------------------------------------------------------

def test_defaults_and_derived_times():
    config = make_config()
    assert config["train"]["T"] == 5.0 and config["sample"]["t0"] == config["train"]["t0"] == 1e-3
    vp = make_config({"process": {"name": "VP", "beta_min": 0.1, "beta_max": 20.0}})
    assert vp["train"]["T"] == 1.0 and vp["sample"]["T"] == 1.0
    assert make_config({"train": {"steps": 5, "lr": None}})["train"]["lr"] == 2e-3  # None keeps the default
    json.dumps(config, allow_nan=False)  # JSON-ready


@pytest.mark.parametrize("options, match", [
    ({"colour": 1}, "unknown configuration key 'colour'"),
    ({"train": {"epochs": 3}}, "unknown option"),
    ({"train": 3}, "must be a dict"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"train": {"t0": 5.0}}, "t0"),
    ({"train": {"ema_warmup": "yes"}}, "ema_warmup"),
    ({"sample": {"method": "ddim"}}, "sampler must be one of"),
    ({"sample": {"grid": "cosine"}}, "grid"),
    ({"evaluate": {"bound_n": 1}}, "bound_n"),
    ({"model": {"activation": "gelu"}}, "activation"),
    ({"process": {"name": "VE"}}, "process"),
])
def test_bad_configurations(options, match):
    with pytest.raises(ValueError, match=match):
        make_config(options)


def test_streams_are_independent_and_reproducible():
    a, b = streams(4), streams(4)
    draws = {name: rng.random(3) for name, rng in a.items()}
    assert all(np.array_equal(draws[name], b[name].random(3)) for name in draws)
    assert len({tuple(v) for v in draws.values()}) == len(draws)
    # a stream added later (the sliced floor's) leaves the first five as they were
    first = np.random.SeedSequence(4).spawn(5)
    assert [np.random.default_rng(c).random(3).tolist() for c in first] == \
        [draws[name].tolist() for name in ("data", "init", "train", "sample", "evaluate")]


# -- folders ---------------------------------------------------------------------------

SMALL = {"data": {"n": 500}, "model": {"width": 16, "depth": 2}, "train": {"steps": 30, "checkpoint_every": 10},
         "sample": {"n": 50, "n_steps": 10}}


def test_create_refuses_existing_folder_unless_forced(tmp_path):
    config = make_config(SMALL)
    create(tmp_path / "run", config)
    (tmp_path / "run" / "mine.txt").write_text("keep")
    (tmp_path / "run" / "samples.npy").write_text("stale")
    with pytest.raises(RunError, match="already exists"):
        create(tmp_path / "run", config)
    create(tmp_path / "run", config, force=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "mine.txt"]
    assert "samples.npy" in RUN_FILES
    with pytest.raises(RunError, match="parent .* does not exist"):
        create(tmp_path / "no" / "run", config)
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunError, match="parent .*afile is not a folder"):
        create(tmp_path / "afile" / "run", config)


def test_train_and_sample_reproducible(tmp_path):
    for name in ("a", "b"):
        create(tmp_path / name, make_config(SMALL))
        train(tmp_path / name, progress=False)
    x = sample_run(tmp_path / "a")
    assert np.array_equal(x, sample_run(tmp_path / "b"))
    assert np.array_equal(x, np.load(tmp_path / "a" / "samples.npy"))
    y = sample_run(tmp_path / "a", {"n": 20, "method": "probability_flow"})
    assert y.shape == (20, 2) and read_config(tmp_path / "a")["sample"]["method"] == "probability_flow"


def test_corrupt_checkpoint_is_reported(tmp_path):
    create(tmp_path / "run", make_config(SMALL))
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"garbage")
    (tmp_path / "run" / ".tmp-abcmodel.npz").write_bytes(b"half")
    with pytest.raises(RunError, match="checkpoint .* is unreadable"):
        train(tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / ".tmp-abcmodel.npz").exists()  # a killed write's leftover


def test_read_config_errors(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        read_config(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a run folder"):
        read_config(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"format": "sgm_ref.run", "version": 99}))
    with pytest.raises(RunError, match="version 99"):
        read_config(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"format": "sgm_ref.run", "version": 1}))
    with pytest.raises(RunError, match="incomplete"):
        read_config(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({**make_config(), "trian": {}}))
    with pytest.raises(RunError, match="unknown key"):
        read_config(tmp_path / "empty")


# -- faults (issue 11) ------------------------------------------------------------------

import os  # noqa: E402

import sgm_ref.runs as runs_module  # noqa: E402
from sgm_ref.runs import load_model, load_samples  # noqa: E402
from sgm_ref.train import fit  # noqa: E402

DEEP = "[" * 100_000  # json.loads raises RecursionError on it


def _checkpoint(folder, config, steps, **replace):
    """checkpoint.npz as training leaves it after `steps` steps, with arrays replaced."""
    rngs = streams(config["seed"])
    target, _, model = runs_module.build(config, rngs["init"])
    data = target.sample(config["data"]["n"], rngs["data"], dtype=model.dtype)
    optimizer = runs_module._optimizer(model, config)
    t = config["train"]
    history = fit(model, data, steps=steps, batch_size=t["batch_size"], t0=t["t0"], T=t["T"], rng=rngs["train"],
                  weighting=t["weighting"], time_distribution=t["time_distribution"], optimizer=optimizer,
                  progress=False)
    arrays = {**optimizer.state_dict(), "step": np.int64(steps), "loss": np.asarray(history.loss),
              "rng_state": np.array(json.dumps(rngs["train"].bit_generator.state)), **replace}
    np.savez(folder / "checkpoint.npz", **arrays)


def _params(folder):
    with np.load(folder / "model.npz") as f:
        return f["params"], f["ema"]


def test_a_checkpoint_resumes_bit_for_bit_and_a_fractional_step_is_refused(tmp_path):
    config = make_config(SMALL)
    for name in ("whole", "resumed", "fractional"):
        create(tmp_path / name, config)
    train(tmp_path / "whole", progress=False)
    _checkpoint(tmp_path / "resumed", config, 10)  # a checkpoint of before thread counts were recorded
    train(tmp_path / "resumed", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_params(tmp_path / "whole"), _params(tmp_path / "resumed")))
    _checkpoint(tmp_path / "fractional", config, 3, step=np.float64(3.5))
    with pytest.raises(RunError, match=r"checkpoint .* is unreadable \(its step must be an integer >= 0, got "
                                       r"float64 3.5\); remove it"):
        train(tmp_path / "fractional", progress=False)


@pytest.mark.parametrize("replace, match", [
    ({"rng_state": np.array(DEEP)}, "its rng_state is nested too deeply"),
    ({"loss": np.zeros(3, np.float16)}, "its losses must be finite float64"),
    ({"step": np.int64(4)}, "inconsistent: step 4, 3 losses"),
])
def test_hostile_checkpoints_are_run_errors(tmp_path, replace, match):
    config = make_config(SMALL)
    create(tmp_path / "run", config)
    _checkpoint(tmp_path / "run", config, 3, **replace)
    with pytest.raises(RunError, match=match):
        train(tmp_path / "run", progress=False)


def test_a_truncated_checkpoint_names_the_file_and_the_remedy(tmp_path):
    config = make_config(SMALL)
    create(tmp_path / "run", config)
    _checkpoint(tmp_path / "run", config, 3)
    path = tmp_path / "run" / "checkpoint.npz"
    path.write_bytes(path.read_bytes()[:-200])
    with pytest.raises(RunError, match=r"checkpoint .*checkpoint.npz is unreadable \(a truncated or damaged .npz "
                                       r"archive.*\); remove it to restart training from step 0"):
        train(tmp_path / "run", progress=False)


def test_deeply_nested_config_is_a_run_error(tmp_path):
    create(tmp_path / "run", make_config(SMALL))
    (tmp_path / "run" / "config.json").write_text(DEEP)
    with pytest.raises(RunError, match="config.json is nested too deeply"):
        read_config(tmp_path / "run")
    # nesting that parses but is no configuration either
    (tmp_path / "run" / "config.json").write_text(json.dumps({**make_config(SMALL), "seed": json.loads(
        "[" * 500 + "]" * 500)}))
    with pytest.raises(RunError, match="nested more than 64 levels"):
        read_config(tmp_path / "run")


def test_float16_and_non_finite_samples_are_refused(tmp_path):
    create(tmp_path / "run", make_config(SMALL))
    train(tmp_path / "run", progress=False)
    x = sample_run(tmp_path / "run")
    assert load_samples(tmp_path / "run", 2).dtype == np.float64
    np.save(tmp_path / "run" / "samples.npy", x.astype(np.float16))
    with pytest.raises(RunError, match=r"dtype float16; expected \(n, 2\) float64 or float32"):
        load_samples(tmp_path / "run", 2)
    x[3, 1] = np.nan
    np.save(tmp_path / "run" / "samples.npy", x)
    with pytest.raises(RunError, match="non-finite"):
        load_samples(tmp_path / "run", 2)


@pytest.mark.parametrize("options, match", [
    ({"train": {"T": 1e308}}, r"--T must be <= 72.1 for OU\(\), got 1e\+308: beyond it alpha_T < 4.9e-32"),
    ({"train": {"T": 73.0}}, r"--T must be <= 72.1"),
    ({"train": {"t0": 1e-300}}, r"--t0 must be >= 2.47e-32 for OU\(\) in float64"),
    ({"train": {"t0": 1e-20}, "model": {"dtype": "float32"}}, r"--t0 must be >= 7.11e-15 for OU\(\) in float32"),
    ({"sample": {"T": 1e4}}, r"the sampler's T \(--T of sgm-ref sample\) must be <= 72.1"),
    ({"sample": {"t0": 1e-40}}, r"the sampler's t0 \(--t0 of sgm-ref sample\) must be >= 2.47e-32"),
    ({"process": {"name": "VP", "beta_min": 0.1, "beta_max": 1e5}}, r"--T must be <= 0.0537 for VP"),
])
def test_absurd_horizons_are_refused_with_the_limit(options, match):
    with pytest.raises(ValueError, match=match):
        make_config(options)


def test_a_sampler_t0_below_the_limit_is_explained_as_sampling_not_as_the_loss():
    # `sgm-ref sample --t0 0` ended "the loss asks for what the input does not hold", which is said of
    # training: the sampler's refusal says what the rounding costs its steps; training's keeps its words
    with pytest.raises(ValueError, match=r"^the sampler's t0 .* got 0: .* the sampler's steps below it") as info:
        make_config({"sample": {"t0": 0.0}})
    assert "loss" not in str(info.value)
    with pytest.raises(ValueError, match=r"^--t0 must be >= .* the loss asks for what the input does not hold$"):
        make_config({"train": {"t0": 1e-40}})


def test_horizon_limits_accept_what_they_print():
    make_config({"train": {"T": 72.1, "t0": 2.47e-32}})  # the printed limits themselves
    make_config({"train": {"T": 72.0, "t0": 1e-31}, "model": {"dtype": "float64"}})
    make_config({"process": {"name": "VP", "beta_min": 0.1, "beta_max": 20.0}})  # T = t_max = 1 is fine


# the lock, as another process holds it: flock on a second open file description
fcntl = pytest.importorskip("fcntl")


def _hold(folder, record=None):
    held = open(folder / ".lock", "a+")
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    if record is not None:
        held.write(json.dumps(record))
        held.flush()
    return held


def test_a_held_run_is_refused_and_its_writes_in_progress_kept(tmp_path):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    (run / ".tmp-xcheckpoint.npz").write_bytes(b"the holder's checkpoint, being written")
    pid = os.getpid()  # a live process
    with _hold(run, {"pid": pid, "command": "sgm-ref train run", "since": "noon"}):
        for call in (lambda: train(run, progress=False), lambda: sample_run(run),
                     lambda: create(run, make_config(SMALL), force=True)):
            with pytest.raises(ValueError, match=rf"another sgm-ref command is writing to .*run: pid {pid} "
                                                 r"\(sgm-ref train run\), since noon; wait for it to finish"):
                call()
        assert (run / ".tmp-xcheckpoint.npz").exists() and (run / "config.json").exists()
    (run / ".lock").write_text(json.dumps({"pid": 999_999_999, "command": "sgm-ref train run", "since": "then"}))
    with _hold(run):  # a holder that has not yet replaced a dead one's record
        with pytest.raises(ValueError, match=r"another sgm-ref command is writing to \S+; wait"):
            train(run, progress=False)
    train(run, progress=False)  # released: the leftover of a killed writer is cleared first
    assert not (run / ".tmp-xcheckpoint.npz").exists() and not (run / ".lock").exists()


def test_a_dead_holders_lock_file_is_taken_over(tmp_path):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    (run / ".lock").write_text(json.dumps({"pid": 999_999_999, "command": "sgm-ref train run", "since": "then"}))
    train(run, progress=False)
    assert (run / "model.npz").exists() and not (run / ".lock").exists()


def test_the_lock_is_reentrant_and_names_this_process(tmp_path):
    from sgm_ref._lock import folder_lock

    with folder_lock(tmp_path, kind="test"):
        record = json.loads((tmp_path / ".lock").read_text())
        assert record["pid"] == os.getpid()
        with folder_lock(tmp_path, kind="test"):  # sampling inside the demo, say
            pass
        assert (tmp_path / ".lock").exists()  # still held by the outer block
    assert not (tmp_path / ".lock").exists()


def test_a_lock_path_that_is_another_file_is_refused_and_left_as_it_is(tmp_path):
    """FOLDER/.lock a hard link of another file: the lock's record (ftruncate + pwrite) replaced
    that file's contents ('precious' became {"pid": ...}) and the release removed the link; a
    FIFO there: the record's ftruncate failed with a bare OSError (EINVAL, no file named) and
    the release removed the FIFO. Both are refused by name now, and left in place."""
    from sgm_ref._lock import folder_lock

    (tmp_path / "data.txt").write_text("precious")
    os.link(tmp_path / "data.txt", tmp_path / ".lock")
    with pytest.raises(ValueError, match=r"\.lock is a hard link of another file \(2 names\), whose contents the "
                                         r"lock's record would overwrite; remove it"):
        with folder_lock(tmp_path, kind="test"):
            pass
    assert (tmp_path / "data.txt").read_text() == "precious" and (tmp_path / ".lock").exists()
    os.unlink(tmp_path / ".lock")
    os.mkfifo(tmp_path / ".lock")
    with pytest.raises(ValueError, match=r"\.lock is not a regular file \(a FIFO, socket or device\); remove it"):
        with folder_lock(tmp_path, kind="test"):
            pass
    assert stat.S_ISFIFO(os.lstat(tmp_path / ".lock").st_mode)
    os.unlink(tmp_path / ".lock")
    # a socket cannot be opened (ENXIO): it was 'cannot lock FOLDER for writing (No such device or
    # address): a command that writes into it needs a writable folder', of a writable folder
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(os.fspath(tmp_path / ".lock"))
        with pytest.raises(ValueError, match=r"\.lock is not a regular file \(a FIFO, socket or device\); remove it"):
            with folder_lock(tmp_path, kind="test"):
                pass
    assert stat.S_ISSOCK(os.lstat(tmp_path / ".lock").st_mode)
    os.unlink(tmp_path / ".lock")
    with folder_lock(tmp_path, kind="test"):  # once removed, the folder is locked as usual
        assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
    assert not (tmp_path / ".lock").exists()


def test_sample_run_clears_temporaries_and_shows_progress_without_changing_bits(tmp_path, capsys, monkeypatch):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    (run / ".tmp-k9samples.npy").write_bytes(b"a killed sample's write")
    quiet = sample_run(run, progress=False)
    assert not list(run.glob(".tmp-*"))
    assert capsys.readouterr().err == ""
    assert np.array_equal(quiet, sample_run(run, progress=True))
    assert "sampling:   0%|          | 0/10" in capsys.readouterr().err  # over the sampler's 10 steps

    class Bar:
        def __init__(self, total, progress, desc):
            self.total, self.n, self.closed = total, 0, False
            bars.append(self)

        def update(self, k):
            self.n += k

        def close(self):
            self.closed = True

    bars = []
    monkeypatch.setattr(runs_module, "progress_bar", Bar)
    for method in ("euler_maruyama", "exponential", "probability_flow"):  # 1, 1 and 2 scores per step
        sample_run(run, {"method": method}, progress=True)
    assert [(bar.total, bar.n, bar.closed) for bar in bars] == [(10, 10, True)] * 3


def test_a_new_run_that_fails_removes_only_what_it_made(tmp_path):
    config = make_config(SMALL)
    with pytest.raises(ZeroDivisionError):
        with runs_module.new_run(tmp_path / "made", config):
            assert (tmp_path / "made" / "config.json").exists() and (tmp_path / "made" / ".lock").exists()
            1 / 0
    assert not (tmp_path / "made").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(ZeroDivisionError):
        with runs_module.new_run(tmp_path / "mine", config, force=True):
            1 / 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
    with pytest.raises(KeyboardInterrupt):  # interrupted: kept for --resume
        with runs_module.new_run(tmp_path / "kept", config):
            raise KeyboardInterrupt
    assert (tmp_path / "kept" / "config.json").exists()


# -- extending a run (issue 11, item 15) and thread counts (item 12) ----------------------

def test_extending_a_run_equals_training_it_longer(tmp_path):
    create(tmp_path / "run", make_config(SMALL))
    train(tmp_path / "run", progress=False)
    sample_run(tmp_path / "run")
    assert runs_module.finished_steps(tmp_path / "run") == 30
    history = train(tmp_path / "run", progress=False, steps=45)
    assert len(history.loss) == 45 and runs_module.finished_steps(tmp_path / "run") == 45
    assert read_config(tmp_path / "run")["train"]["steps"] == 45
    assert not (tmp_path / "run" / "samples.npy").exists()  # they were the 30-step model's
    create(tmp_path / "whole", make_config({**SMALL, "train": {**SMALL["train"], "steps": 45}}))
    train(tmp_path / "whole", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_params(tmp_path / "run"), _params(tmp_path / "whole")))
    with pytest.raises(RunError, match="--steps 40 is fewer than the 45 steps .* can be extended, not shortened"):
        train(tmp_path / "run", progress=False, steps=40)


def test_an_extension_that_fails_leaves_the_finished_run(tmp_path, monkeypatch):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    before = _params(run)

    def diverge(model, data, *, callback, optimizer, history, **kwargs):
        callback(40, model, optimizer, history)  # a checkpoint of the extension, then a failure
        assert (run / "checkpoint.npz").exists()
        raise ValueError("the loss became non-finite")

    monkeypatch.setattr(runs_module, "fit", diverge)
    with pytest.raises(ValueError, match="non-finite"):
        train(run, progress=False, steps=60)
    assert read_config(run)["train"]["steps"] == 30 and runs_module.finished_steps(run) == 30
    assert not (run / "checkpoint.npz").exists()
    assert all(np.array_equal(a, b) for a, b in zip(_params(run), before))


def _interrupt_extension(run, monkeypatch, steps=60, checkpointed=True):
    """Extend the finished run to `steps` and interrupt it (a KeyboardInterrupt in training, after
    a checkpoint at step 40 when checkpointed), as Ctrl-C in `train --resume --steps` does."""
    def interrupted(model, data, *, callback, optimizer, history, **kwargs):
        if checkpointed:
            callback(40, model, optimizer, history)
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runs_module, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(run, progress=False, steps=steps)


@pytest.mark.parametrize("checkpointed", [True, False])
def test_an_interrupted_extension_can_be_given_up_for_the_run_it_was(tmp_path, monkeypatch, checkpointed):
    """Ctrl-C in `train --resume --steps N` keeps the extension (config.json asks for N, a
    checkpoint may hold its progress): `--resume` continues it. A user who meant fewer steps had
    no way back ("fewer than the N steps RUN is trained for", of a run of 30): --steps 30, the
    finished run's, gives it up, every file as before the extension."""
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    sample_run(run)
    before = {name: (run / name).read_bytes() for name in ("model.npz", "training_state.npz", "samples.npy",
                                                         "history.json", "config.json")}
    _interrupt_extension(run, monkeypatch, checkpointed=checkpointed)
    assert read_config(run)["train"]["steps"] == 60 and (run / "checkpoint.npz").exists() == checkpointed
    with pytest.raises(RunError, match=r"trained for 30 steps but config.json asks for 60: finish the training with "
                                       r"`sgm-ref train .*run --resume`, or give it up with `sgm-ref train .*run "
                                       r"--resume --steps 30`$"):
        load_model(run)
    assert runs_module._continuation(str(run)).endswith(f"(or give the extension up with `sgm-ref train {run} "
                                                        "--resume --steps 30`)")
    with pytest.raises(RunError, match=r"--steps 45 is fewer than the 60 steps of .*run's config.json: an extension "
                                       r"of its 30 trained steps to 60 was interrupted; `sgm-ref train .*run "
                                       r"--resume` continues it, `sgm-ref train .*run --resume --steps 30` gives it "
                                       r"up"):
        train(run, progress=False, steps=45)
    history = train(run, progress=False, steps=30)
    assert len(history.loss) == 30 and not (run / "checkpoint.npz").exists()
    assert {name: (run / name).read_bytes() for name in before} == before
    assert runs_module.finished_steps(run) == 30


def test_the_commands_of_the_messages_name_an_unusual_folder_as_the_shell_needs_it(tmp_path, monkeypatch):
    """The hints showed the run folder bare: for a folder "it's a run" the shell split
    `sgm-ref train it's a run --resume` (and waited for the quote to close). Each command shown,
    split as the shell splits it, is the argv meant; an ordinary folder reads as before."""
    import shlex

    run = tmp_path / "it's a run"
    create(run, make_config(SMALL))
    train(run, progress=False)

    def interrupted(model, data, *, callback, optimizer, history, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(runs_module, "fit", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(run, progress=False, steps=60)

    def commands(text):
        return [shlex.split(c) for c in re.findall(r"`([^`]*)`", text)]

    resume, give_up = ["sgm-ref", "train", str(run), "--resume"], ["sgm-ref", "train", str(run), "--resume",
                                                                   "--steps", "30"]
    assert commands(runs_module._continuation(run)) == [resume, give_up]  # the Ctrl-C hint
    with pytest.raises(RunError) as refusal:
        load_model(run)
    assert commands(str(refusal.value)) == [resume, give_up]
    with pytest.raises(RunError) as refusal:
        runs_module.check_total_steps(run, read_config(run), 45)
    assert commands(str(refusal.value)) == [resume, give_up]
    assert [runs_module._shell_path(p) for p in ("/tmp/run", "runs/a_1", "-run", "a$b")] == [
        "/tmp/run", "runs/a_1", "./-run", "'a$b'"]


def test_a_state_written_again_without_a_step_keeps_its_thread_counts(tmp_path, monkeypatch):
    """Giving up an extension, or writing a damaged model.npz again, takes no step: the training
    state is rewritten as it was. Under other thread counts than the state's, it recorded this
    process's (training_state.npz's bits changed, and its record no longer said what its steps
    were taken with) and a note said the result 'may differ in the last bits'."""
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    before = {name: (run / name).read_bytes() for name in ("model.npz", "training_state.npz", "history.json",
                                                         "config.json")}
    _interrupt_extension(run, monkeypatch)
    saved = runs_module.thread_counts()
    monkeypatch.setattr(runs_module, "thread_counts", lambda: {"blas": saved["blas"] + 3, "numba": saved["numba"] + 2})
    notes = []
    train(run, progress=False, steps=30, log=notes.append)  # the extension given up
    assert notes == [] and {name: (run / name).read_bytes() for name in before} == before
    (run / "model.npz").unlink()  # as a damaged one: written again from the state
    train(run, progress=False, log=notes.append)
    assert notes == [] and {name: (run / name).read_bytes() for name in before} == before


def test_an_interrupted_extension_can_be_given_up_beside_a_damaged_training_state(tmp_path, monkeypatch):
    """A training_state.npz that no longer reads (cut short here) hid the interrupted extension:
    --steps 30, the finished run's, was "a run can be extended, not shortened (drop --steps, or
    give 60 or more)", and load_model offered no way back. Given up, config.json is back at 30,
    the checkpoint gone and the model as it was; the damaged state is then named with its fix."""
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    model = (run / "model.npz").read_bytes()
    _interrupt_extension(run, monkeypatch)
    state = run / "training_state.npz"
    state.write_bytes(state.read_bytes()[:200])
    with pytest.raises(RunError, match=r"or give it up with `sgm-ref train .*run --resume --steps 30`$"):
        load_model(run)
    with pytest.raises(RunError, match=r"training state .*training_state.npz is unreadable .*; remove it \(the run's "
                                       r"model.npz stays usable"):
        train(run, progress=False, steps=30)
    assert read_config(run)["train"]["steps"] == 30 and not (run / "checkpoint.npz").exists()
    assert (run / "model.npz").read_bytes() == model
    state.unlink()
    assert runs_module.finished_steps(run) == 30 and load_model(run).network.d == 2


def test_an_interrupted_extension_is_not_sampled_with_the_old_model(tmp_path):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    config = runs_module.update_section(read_config(run), "train", {"steps": 50})
    runs_module.write_json(run / "config.json", config)  # as an extension killed before its first checkpoint
    with pytest.raises(RunError, match=r"trained for 30 steps but config.json asks for 50: finish the training"):
        load_model(run)
    train(run, progress=False)  # --resume: continues from the finished state
    assert runs_module.finished_steps(run) == 50


def test_an_old_run_without_its_final_state_cannot_be_extended(tmp_path):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    (run / "training_state.npz").unlink()
    # it said only "trained by an older sgm_ref", of a run whose file had been removed
    with pytest.raises(RunError, match=r"has no training_state.npz \(removed, or the run was trained by an older "
                                       r"sgm_ref, which kept none\)"):
        train(run, progress=False, steps=40)


def test_thread_counts_are_recorded_and_a_change_is_said_once(tmp_path, monkeypatch):
    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    with np.load(run / "training_state.npz") as f:
        assert json.loads(str(f["threads"])) == runs_module.thread_counts()
    monkeypatch.setattr(runs_module, "thread_counts", lambda: {"blas": 7, "numba": 5})
    notes = []
    train(run, progress=False, steps=40, log=notes.append)
    assert len(notes) == 1 and "written with" in notes[0] and "this process has 7 BLAS and 5 numba threads" in notes[0]
    notes.clear()
    train(run, progress=False, steps=50, log=notes.append)
    assert notes == []
    monkeypatch.setattr(runs_module, "thread_counts", lambda: {"blas": 1, "numba": 1})
    with pytest.warns(UserWarning, match="7 BLAS and 5 numba threads"):
        train(run, progress=False, steps=55)


def _without_threadpoolctl(monkeypatch):
    """Make `import threadpoolctl` fail, as where it is not installed."""
    import builtins

    real_import = builtins.__import__

    def no_threadpoolctl(name, *args, **kwargs):
        if name == "threadpoolctl":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_threadpoolctl)


def test_thread_counts_read_the_environment_without_threadpoolctl(monkeypatch):
    _without_threadpoolctl(monkeypatch)
    # the live counts of the OpenBLAS loaded come first: set_threads (--threads) changes them
    # after the environment was read, which recorded 2 for a run trained on 1
    import numba

    from sgm_ref import _threads

    if _threads.blas_threads():
        numba_before, blas_before = numba.get_num_threads(), _threads.blas_threads()
        _threads.set_threads(1)
        try:
            assert runs_module.thread_counts()["blas"] == 1
        finally:  # the counts the test found, each library its own
            numba.set_num_threads(numba_before)
            for (setter, _), count in zip(_threads._openblas_libraries(), blas_before):
                setter(count)
        assert _threads.blas_threads() == blas_before
    # without an OpenBLAS found, the variables it reads
    monkeypatch.setattr(_threads, "blas_threads", lambda: [])
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "3")
    assert runs_module.thread_counts()["blas"] == 3
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    for name in ("GOTO_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "4,2")
    assert runs_module.thread_counts()["blas"] == 4


def test_an_oversized_npy_header_is_one_line(tmp_path):
    """numpy's own message spans three lines; a library caller gets one."""
    from sgm_ref.runs import RunError, load_samples

    header = b"{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), " + b" " * 20_000 + b"}\n"
    (tmp_path / "samples.npy").write_bytes(b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header
                                           + np.zeros(4).tobytes())
    with pytest.raises(RunError) as info:
        load_samples(tmp_path, 2)
    assert "\n" not in str(info.value) and "samples.npy is unreadable" in str(info.value)


@pytest.mark.parametrize("options, match", [
    ({"train": {"batch_size": 2**50}}, r"^batch_size must be at most \d+ on this machine, got 1125899906842624"),
    ({"data": {"n": 2**50}}, r"^n \(training samples\) must be at most \d+ on this machine"),
    ({"sample": {"n": 2**50}}, r"^sample n \(--n-samples\) must be at most \d+ on this machine"),
    ({"sample": {"n_steps": 2**50}}, r"^sample n_steps must be at most \d+ on this machine"),
    ({"evaluate": {"bound_n": 2**50}}, r"^evaluate bound_n must be at most \d+ on this machine"),
    ({"evaluate": {"profile_n": 2**50}}, r"^evaluate profile_n must be at most \d+ on this machine"),
])
def test_counts_beyond_memory_are_refused_by_the_configuration(options, match):
    """Each stage refused these, but only when it came: `train --force` after removing the
    old run, a demo after training (its refusal then removed the trained run), and named
    as the metric's own argument ("n = ... lower n", which on the demo's command line is
    --n, the training samples)."""
    with pytest.raises(ValueError, match=match):
        make_config(options)


def test_a_batch_beyond_memory_through_the_width_names_the_network_too(monkeypatch):
    """`--width 10000000 --depth 1` was refused as '--batch-size must be at most 52, got 256',
    of a default batch size: the message now says the width and depth that make it so."""
    from sgm_ref import _validation
    monkeypatch.setattr(_validation, "_physical_memory", lambda: 2**30)  # 1 GiB
    per_row = 8 * 6 * (2 + 2_000_000)  # train.fit's working arrays per batch row, d = 2
    with pytest.raises(ValueError, match=rf"^batch_size must be at most {2**30 // per_row} on this machine, got 256: "
                                         r"its working arrays at width 2000000 and depth 1 \(a narrower or "
                                         r"shallower network needs less\) would need"):
        make_config({"model": {"width": 2_000_000, "depth": 1}})


def test_a_run_is_sampled_without_its_training_sizes_being_asked_about(tmp_path, monkeypatch):
    """update_section checks the sizes of the section it changes only: a run trained on a
    machine with more memory is sampled and evaluated here."""
    from sgm_ref import _validation, runs
    config = make_config({"train": {"batch_size": 4096}})
    monkeypatch.setattr(_validation, "_physical_memory", lambda: 2**20)  # 1 MiB: too little for that batch
    updated = runs.update_section(config, "sample", {"n": 100})
    assert updated["sample"]["n"] == 100 and updated["train"]["batch_size"] == 4096
    with pytest.raises(ValueError, match="batch_size must be at most"):
        runs.update_section(config, "train", {"steps": 20_000})


def test_a_file_given_as_the_run_is_not_said_to_be_missing(tmp_path):
    """`sgm-ref sample FILE` said "run folder FILE does not exist", of a file that exists,
    and an empty name read "run folder  does not exist"."""
    from sgm_ref.runs import writing
    (tmp_path / "afile").write_text("x")
    for call in (read_config, writing):
        with pytest.raises(RunError, match=r"afile is not a folder: a run is the folder `sgm-ref train` made"):
            call(tmp_path / "afile")
        with pytest.raises(RunError, match=r"^run folder '' does not exist$"):
            call("")


def test_only_the_temporaries_of_run_files_are_cleared(tmp_path):
    """The lock is taken before the folder is known to be a run: `sgm-ref sample FOLDER` of
    a folder that is not one (a typo, /tmp) removed every .tmp-* file in it, another
    program's too, before saying it was not a run."""
    from sgm_ref.runs import writing
    others = [tmp_path / ".tmp-precious", tmp_path / ".tmp-abc123notes.txt"]
    for path in others:
        path.write_text("not sgm_ref's")
    (tmp_path / ".tmp-abc123samples.npy").write_bytes(b"a killed write's leftover")
    (tmp_path / "config.json").write_text("{}")  # another tool's: the lock is taken, then it is read
    with pytest.raises(RunError, match="not an sgm_ref run configuration"):
        with writing(tmp_path):
            read_config(tmp_path)
    assert all(path.read_text() == "not sgm_ref's" for path in others)
    assert not (tmp_path / ".tmp-abc123samples.npy").exists()


def test_a_folder_without_a_run_is_refused_before_its_lock_file_is_written(tmp_path):
    """`sgm-ref sample FOLDER` of a folder holding no run wrote its lock record over the
    folder's own .lock (another tool's) and removed it on the way out."""
    from sgm_ref.evaluation import evaluate_run
    (tmp_path / ".lock").write_text("another tool's lock")
    for call in (sample_run, evaluate_run, lambda folder: train(folder, progress=False)):
        with pytest.raises(RunError, match=r"is not a run folder \(no (readable )?config.json\); create one with"):
            call(tmp_path)
        assert (tmp_path / ".lock").read_text() == "another tool's lock"


def test_the_largest_bound_n_the_configuration_accepts_is_one_the_bound_accepts(monkeypatch):
    """The configuration's check counted 6 d numbers per bound_n point (the path term's), but
    tv_upper_bound also draws n_aux = 16 bound_n auxiliary points of 4 d numbers: a count
    the configuration accepted was refused by the evaluation, as "n_aux", after a demo had
    trained and sampled (and the refusal removed the run)."""
    import re

    from sgm_ref import OU, _validation
    from sgm_ref.metrics import tv_upper_bound
    from sgm_ref.targets import _checks

    memory = 2**22
    monkeypatch.setattr(_validation, "_physical_memory", lambda: memory)
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: memory)
    small = {"model": {"width": 8, "depth": 1}, "sample": {"n": 100}}  # 10,000 samples' arrays: 7.3 MiB
    with pytest.raises(ValueError, match=r"^evaluate bound_n must be at most \d+ on this machine") as info:
        make_config({**small, "evaluate": {"bound_n": 2**40}})
    largest = int(re.search(r"at most (\d+)", str(info.value)).group(1))
    config = make_config({**small, "evaluate": {"bound_n": largest}})
    ring, t = GaussianMixture.ring(), config["train"]
    bound = tv_upper_bound(ring.score, ring, OU(), t["t0"], t["T"], "geometric", "euler_maruyama", largest,
                           np.random.default_rng(0), n_steps=2)
    assert np.isfinite(bound.tv)


def test_samples_drawn_with_other_settings_than_config_json_s_are_refused(tmp_path):
    """config.json's "sample" section edited by hand after sampling (n_steps 10 -> 3 here):
    `sgm-ref evaluate` evaluated the old samples and reported them, with their certified TV
    bound, as drawn by the edited sampler (3 steps, bound for 3 steps) though 10 steps drew
    them; only n and the dtype were checked. Now refused until they are drawn again, and the
    samples then drawn are those of the edited settings (samplers.sample, by itself)."""
    from sgm_ref.evaluation import evaluate_run
    from sgm_ref.runs import load_model
    from sgm_ref.samplers import sample

    folder = tmp_path / "run"
    create(folder, make_config(SMALL))
    train(folder, progress=False)
    sample_run(folder)
    evaluate_run(folder, {"bound_n": 8, "profile_n": 20}, plots=False)  # the run's own samples: accepted
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in (("n_steps", 3), ("method", "exponential"), ("grid", "uniform"), ("t0", 2e-3), ("T", 4.0)):
        edited = {**config, "sample": {**config["sample"], key: value}}
        path.write_text(json.dumps(edited))
        with pytest.raises(RunError, match=r"samples.npy was drawn with other sampler settings than config.json's "
                                           r"\"sample\" section \(edited since sampling\): draw the samples of these "
                                           r"settings with `sgm-ref sample .*run`, or restore config.json"):
            evaluate_run(folder, plots=False)
        assert (folder / "report.json").exists()  # the old report stays
    x = sample_run(folder)  # the edited settings (T = 4), drawn now
    s = read_config(folder)["sample"]
    model = load_model(folder)
    y = sample(model, model.process, s["n"], 2, streams(SMALL.get("seed", 0))["sample"], T=s["T"], t0=s["t0"],
               n_steps=s["n_steps"], method=s["method"], grid=s["grid"])
    assert s["T"] == 4.0 and np.array_equal(x, y)
    report, _, _ = evaluate_run(folder, {"bound_n": 8, "profile_n": 20}, plots=False)
    assert report["sampler"] == s


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_an_lr_whose_first_adam_step_overflows_is_refused_by_the_configuration(tmp_path, dtype):
    """lr / (1 - beta1) must be finite in the network's dtype (Adam's first step). make_config let
    --lr 1e308 through; Adam refused it in the training, after `train --force` had removed the
    old run: neither run was left. The limit is max(dtype) (1 - 0.9), from NumPy's finfo."""
    limit = float(np.finfo(dtype).max) * (1 - 0.9)
    small = {**SMALL, "model": {**SMALL["model"], "dtype": dtype}}
    make_config({**small, "train": {**SMALL["train"], "lr": limit * (1 - 1e-6)}})  # below the limit: accepted
    with pytest.raises(ValueError, match=r"^lr must be below .*: the bias-corrected step size lr / \(1 - beta1\)"):
        make_config({**small, "train": {**SMALL["train"], "lr": limit * (1 + 1e-6)}})
    folder = tmp_path / "run"
    create(folder, make_config(small))
    config = json.loads((folder / "config.json").read_text())
    config["train"]["lr"] = limit * 2  # config.json edited by hand: its reader says so
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"config.json: lr must be below .*\(fix or restore the file\)"):
        read_config(folder)


def test_a_target_too_large_for_a_float32_model_is_refused_by_the_configuration(tmp_path):
    """Means beyond 1e37 cannot be drawn in float32 (largest 3.4e38): the data's draw refused them,
    in the training, after `train --force` had removed the old run. Now make_config refuses them
    (the target's own check, on one point), and float64 takes the same target."""
    from sgm_ref import GaussianMixture

    record = to_record(GaussianMixture([1.0], [[1e50, 0.0]]))
    options = {**SMALL, "target": "big", "target_definition": record}
    make_config(options)  # float64: fine
    with pytest.raises(ValueError, match=r"dtype is float32, but .* has means up to 1e\+50 .* float32 samples need "
                                         r"means within \+-1e37"):
        make_config({**options, "model": {**SMALL["model"], "dtype": "float32"}})


def test_a_run_folder_that_is_not_a_path_is_a_run_error(tmp_path):
    """None, a number or a bytes path as the run folder gave os's bare TypeError ("expected str,
    bytes or os.PathLike object, not NoneType", "Can't mix strings and bytes in path components")."""
    from sgm_ref.runs import finished_steps, load_model, load_samples, writing

    run = tmp_path / "run"
    create(run, make_config(SMALL))
    calls = (read_config, load_model, sample_run, lambda f: train(f, progress=False), finished_steps,
             lambda f: load_samples(f, 2), lambda f: create(f, make_config(SMALL)), writing)
    for bad in (None, 3, os.fsencode(run)):
        for call in calls:
            with pytest.raises(RunError, match=r"run folder must be a path \(a str or os.PathLike\), got "
                                               + re.escape(repr(bad))):
                call(bad)
    assert read_config(str(run)) == read_config(run)


def test_a_lock_record_that_cannot_be_written_does_not_stop_the_command(tmp_path, monkeypatch):
    """On a full disk the lock's record (pwrite of 80 bytes into FOLDER/.lock) failed first, and
    `sgm-ref sample` stopped with 'No space left on device', no file named, although removing the
    old samples would have made room. The lock is flock's: it is held without its record."""
    import errno
    import threading

    from sgm_ref._lock import folder_lock

    run = tmp_path / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    expected = sample_run(run)

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwrite", full)
    with folder_lock(run, kind="test"):
        assert (run / ".lock").read_bytes() == b""
        other = open(run / ".lock", "rb")  # another open file description: as another process
        with pytest.raises(BlockingIOError):
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        other.close()
        refused = []  # asked from another thread, which this one's re-entry does not let in
        thread = threading.Thread(target=lambda: refused.append(_refusal(run)))
        thread.start()
        thread.join()
        assert refused == ["another sgm-ref command is writing to " + os.fspath(run) + "; wait for it to finish, or "
                           "stop it"]
    assert np.array_equal(sample_run(run), expected) and not (run / ".lock").exists()


def _refusal(run):
    from sgm_ref.runs import writing

    try:
        with writing(run):
            return None
    except ValueError as exc:
        return str(exc)


def _as_another_user(monkeypatch, lock):
    """os.open as a user other than the lock file's owner sees it: a file without its owner's
    write bit (0o444 here, as another user's 0o644 to this one) opens for reading only; an
    exclusive creation of it is EEXIST, checked first. (The tests run as root, whom no
    permission stops.)"""
    import errno

    real = os.open

    def open_(path, flags, *args, **kwargs):
        writing = flags & (os.O_WRONLY | os.O_RDWR) and not flags & os.O_EXCL
        if writing and os.fspath(path) == os.fspath(lock) and os.path.isfile(lock) and not (
                os.stat(lock).st_mode & stat.S_IWUSR):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_)


def test_a_lock_file_this_user_cannot_write_is_taken_over_when_stale_and_names_its_live_holder(tmp_path,
                                                                                                monkeypatch):
    """A lock file made by another user's command (0o644 under umask 022) in a folder both may
    write: `sgm-ref sample` said 'cannot lock RUN for writing (Permission denied): a command that
    writes into it needs a writable folder', of a writable folder, both while that command ran (it
    named no holder) and after it was killed (its lock was never taken over, as the docs promise).
    Checked by hand as uid 65534 against root's lock file, with the same messages."""
    from sgm_ref._lock import folder_lock

    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "command": "sgm-ref train run", "since": "noon"}))
    os.chmod(lock, 0o444)
    _as_another_user(monkeypatch, lock)
    with open(lock, "rb") as held:  # its command is running
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(ValueError, match=rf"another test is writing to \S+: pid {os.getpid()} \(sgm-ref train "
                                             r"run\), since noon; wait for it to finish"):
            with folder_lock(tmp_path, kind="test"):
                pass
    assert json.loads(lock.read_text())["command"] == "sgm-ref train run"  # left as it was
    with folder_lock(tmp_path, kind="test"):  # killed: taken over, as a lock of this user's
        assert json.loads(lock.read_text())["pid"] == os.getpid() and os.stat(lock).st_mode & stat.S_IWUSR
    assert not lock.exists()


def test_a_read_only_folder_is_said_to_be_one_with_or_without_a_killed_command_s_lock(tmp_path, monkeypatch):
    """As another user sees a folder it may not write: no lock file can be made there, and a
    killed command's (0o444) cannot be taken over (removed): both are the folder's fault."""
    import errno

    from sgm_ref._lock import folder_lock

    lock = tmp_path / ".lock"
    _as_another_user(monkeypatch, lock)
    open_, unlink, access = os.open, os.unlink, os.access

    def denied(path):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))

    monkeypatch.setattr(os, "open", lambda path, flags, *args, **kwargs: denied(path) if (
        flags & os.O_CREAT and os.fspath(path) == os.fspath(lock) and not lock.exists()) else open_(
        path, flags, *args, **kwargs))
    monkeypatch.setattr(os, "unlink", lambda path, *args, **kwargs: denied(path) if os.fspath(path) == os.fspath(
        lock) else unlink(path, *args, **kwargs))
    monkeypatch.setattr(os, "access", lambda path, mode, **kwargs: False if os.fspath(path) == os.fspath(tmp_path)
                        else access(path, mode, **kwargs))
    message = (rf"cannot lock {re.escape(os.fspath(tmp_path))} for writing \(Permission denied\): a command that "
               r"writes into it needs a writable folder")
    with pytest.raises(ValueError, match=message):
        with folder_lock(tmp_path, kind="test"):
            pass
    assert not lock.exists()
    lock.write_text("a killed command's")
    os.chmod(lock, 0o444)
    with pytest.raises(ValueError, match=message):
        with folder_lock(tmp_path, kind="test"):
            pass
    assert lock.read_text() == "a killed command's"


def test_a_file_system_that_refuses_locks_is_said_and_leaves_no_lock_file(tmp_path, monkeypatch):
    """flock failing otherwise than 'held' (ENOLCK: an NFS mount without its lock service) was
    'cannot lock FOLDER for writing (No locks available): a command that writes into it needs a
    writable folder', of a writable folder, and left the .lock it had just created behind."""
    import errno

    from sgm_ref._lock import folder_lock

    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    message = (r"cannot lock \S+: its file system refuses a lock on \.lock \(No locks available; an NFS mount "
               r"without its lock service, say\), and sgm_ref writes into a folder only under its lock: work in a "
               r"folder on a local file system")
    with pytest.raises(ValueError, match=message):
        with folder_lock(tmp_path, kind="test"):
            pass
    assert os.listdir(tmp_path) == []
    (tmp_path / ".lock").write_text("a killed command's")  # not this call's: left as it was
    with pytest.raises(ValueError, match=message):
        with folder_lock(tmp_path, kind="test"):
            pass
    assert (tmp_path / ".lock").read_text() == "a killed command's"


def test_a_holder_on_another_machine_is_named_with_it(tmp_path):
    """A folder shared over NFS: the holder's pid is another machine's. It was looked for among
    this machine's processes, so the refusal named no holder (no such pid here) or named the
    other machine's command under the pid of an unrelated process here."""
    from sgm_ref._lock import folder_lock

    with folder_lock(tmp_path, kind="test"):
        assert json.loads((tmp_path / ".lock").read_text())["host"] == socket.gethostname()
    record = {"pid": 999_999_999, "host": "elsewhere", "command": "sgm-ref train run", "since": "noon"}
    with _hold(tmp_path, record):
        with pytest.raises(ValueError, match=r"another test is writing to \S+: pid 999999999 on elsewhere \(sgm-ref "
                                             r"train run\), since noon; wait for it to finish"):
            with folder_lock(tmp_path, kind="test"):
                pass
    (tmp_path / ".lock").unlink()
    with _hold(tmp_path, {**record, "host": socket.gethostname()}):  # this machine's, and gone
        with pytest.raises(ValueError, match=r"another test is writing to \S+; wait for it to finish"):
            with folder_lock(tmp_path, kind="test"):
                pass


def test_a_holder_with_a_long_command_line_is_named(tmp_path):
    """The record was read up to 4096 bytes only: a command line beyond that (long paths, or
    non-ASCII ones, 6 bytes a character in JSON) gave a refusal that named no holder."""
    command = "sgm-ref train " + "/données" * 600
    with _hold(tmp_path, {"pid": os.getpid(), "command": command, "since": "noon"}):
        assert os.path.getsize(tmp_path / ".lock") > 4096
        from sgm_ref._lock import folder_lock

        with pytest.raises(ValueError, match=rf"another test is writing to \S+: pid {os.getpid()} \(sgm-ref train "
                                             r"/données/données.*\), since noon"):
            with folder_lock(tmp_path, kind="test"):
                pass


def test_the_resume_note_names_a_way_to_the_saved_thread_counts():
    """The note said 'set OPENBLAS_NUM_THREADS and NUMBA_NUM_THREADS as then', which --threads
    and SGM_REF_THREADS override; one count is --threads N, two different ones the variables."""
    from sgm_ref.runs import _same_threads_hint
    assert _same_threads_hint({"blas": 2, "numba": 2}) == "run with --threads 2 (SGM_REF_THREADS=2, or sgm_ref.set_threads(2))"
    assert _same_threads_hint({"blas": 1, "numba": 2}) == ("run with OPENBLAS_NUM_THREADS=1 and NUMBA_NUM_THREADS=2 set, "
                                                         "without --threads or SGM_REF_THREADS")
    # a BLAS count threadpoolctl did not find: the numba count alone ("OPENBLAS_NUM_THREADS=?" is no setting)
    assert _same_threads_hint({"blas": None, "numba": 2}) == ("run with NUMBA_NUM_THREADS=2 set, without --threads or "
                                                            "SGM_REF_THREADS (its BLAS thread count was not recorded)")


def test_the_resume_note_for_more_threads_than_numba_s_pool_here():
    """Counts of a bigger machine (4 and 4 here, numba's pool p): '--threads 4' alone is refused
    ('n must be at most p, the size of numba's thread pool'); the note names NUMBA_NUM_THREADS
    too, and a process started as it says has the saved counts."""
    import subprocess
    import sys

    import numba

    from sgm_ref.runs import _same_threads_hint

    pool = numba.config.NUMBA_NUM_THREADS
    k = pool + 2
    hint = _same_threads_hint({"blas": k, "numba": k})
    assert hint == (f"run with --threads {k} (SGM_REF_THREADS={k}, or sgm_ref.set_threads({k})) and "
                    f"NUMBA_NUM_THREADS={k} set (numba's pool here has {pool})")
    assert _same_threads_hint({"blas": pool, "numba": pool}).endswith(f"sgm_ref.set_threads({pool}))")
    code = "import json, sgm_ref.runs as r; print(json.dumps(r.thread_counts()))"
    env = {key: value for key, value in os.environ.items()
           if key not in ("NUMBA_NUM_THREADS", "OPENBLAS_NUM_THREADS", "SGM_REF_THREADS")}
    result = subprocess.run([sys.executable, "-c", code], env={**env, "SGM_REF_THREADS": str(k)},
                            capture_output=True, text=True)
    assert result.returncode != 0 and f"n must be at most {pool}" in result.stderr  # what the note advised
    result = subprocess.run([sys.executable, "-c", code], env={**env, "SGM_REF_THREADS": str(k),
                                                             "NUMBA_NUM_THREADS": str(k)},
                            capture_output=True, text=True, check=True)
    assert json.loads(result.stdout) == {"blas": k, "numba": k}


def _tiny_run(tmp_path, d=64):
    from sgm_ref import runs
    config = runs._make_config({"target": f"gmm:d={d},k=2,radius=1", "data": {"n": 100},
                                "model": {"width": 4, "depth": 1}, "train": {"steps": 2, "batch_size": 4}}, ("train",))
    folder = tmp_path / "run"
    with runs.new_run(folder, config, False):
        train(folder)
    return folder


def test_sampling_is_refused_by_its_measured_working_arrays_also_without_options(tmp_path, monkeypatch):
    """`sgm-ref sample RUN` in d = 200000 at the default 10,000 samples was killed for memory: the
    check counted the start points (8 d bytes a point) where sample_run peaks at ~7 arrays of n x d
    (runs._SAMPLING_ARRAYS, measured), and was not asked at all without options. 10,000 points in
    d = 64 need 5 MB by the old count, ~47 MB by the new: refused in 16 MiB, with the option to lower."""
    from sgm_ref import _validation, runs
    folder = _tiny_run(tmp_path)
    monkeypatch.setattr(_validation, "_physical_memory", lambda: 16 * 2**20)
    per_point = 8 * 8 * 64 + runs._SAMPLING_PER_POINT
    limit = 16 * 2**20 // per_point
    with pytest.raises(ValueError, match=rf"^sample n \(--n-samples\) must be at most {limit} on this machine, got "
                                         r"10000: the sampler's working arrays \(about 8 arrays of n x 64 float64"):
        sample_run(folder)
    assert not (folder / "samples.npy").exists()
    with pytest.raises(ValueError, match=r"^sample n \(--n-samples\) must be at most \d+ .* \(about 10 arrays"):
        sample_run(folder, {"n": limit, "method": "probability_flow"})  # its two score calls a step: more
    assert sample_run(folder, {"n": limit, "n_steps": 2}).shape == (limit, 64)  # what the message allows


def test_the_network_s_size_is_refused_before_the_target_and_its_record_are_built(monkeypatch):
    """`train --target gmm:d=100000000,k=2,radius=1` was killed for memory: the target (13 GB) and
    its record (lists of Python floats, 6.4 GB more) were built before the network's size was asked.
    The preset's d is read from the spec and refused first, naming the limit."""
    from sgm_ref import _validation, runs

    def built(spec):
        raise AssertionError(f"the target {spec} was built before its size was refused")

    monkeypatch.setattr(_validation, "_physical_memory", lambda: 64 * 2**20)
    monkeypatch.setattr(runs, "from_spec", built)
    params = 257 * 20000 + 256  # (d + 2) w + (w + 1) d, width 128 and depth 1
    d_max = (64 * 2**20 // 40 - 256) // 257
    for spec in ("gmm:d=20000,k=2,radius=1", "product:d=20000"):
        with pytest.raises(ValueError, match=rf"^target {spec} has d = 20000, too large for this machine: the "
                                             rf"network of width 128 and depth 1 has {params} parameters, .* use a "
                                             rf"target of dimension d <= {d_max} at this width, or a narrower "
                                             r"network \(--width\)$"):
            runs._make_config({"target": spec, "model": {"depth": 1}, "data": {"n": 2}}, ("train",))
    monkeypatch.undo()
    assert make_config({"target": f"gmm:d={d_max},k=2,radius=1", "model": {"depth": 1}, "data": {"n": 2}})  # fits


def test_a_network_too_large_in_any_dimension_is_refused_for_its_width_and_depth(monkeypatch):
    """Width 20000 and depth 3 on 24 GiB (here width 1000 on 16 MiB) passed make_config: the size
    check left "layers too large in any d" to build, whose np.zeros reserves pages it does not
    touch, and training was then killed for memory (a review). It is refused naming width and
    depth, with a lower bound of the built network's parameters at d = 1."""
    from sgm_ref import _validation
    from sgm_ref.nn import MLP

    monkeypatch.setattr(_validation, "_physical_memory", lambda: 2**24)
    with pytest.raises(ValueError, match=r"^the network of width 1000 and depth 3 is too large for this machine in "
                                         r"any dimension: at d = 1 it has (\d+) parameters, and training keeps 5 "
                                         r"arrays of as many \(0.0747 GiB of 64-bit numbers\), more than this "
                                         r"machine's memory \(0.0156 GiB\); use a narrower or shallower network "
                                         r"\(--width, --depth\)$") as refused:
        make_config({"model": {"width": 1000, "depth": 3}})
    least = int(re.search(r"it has (\d+) parameters", str(refused.value)).group(1))
    built = MLP(1, [1000] * 3, "silu", "log", rng=0).params.size  # make_config's default network at d = 1
    assert least <= built < 1.01 * least and 5 * 8 * least > 2**24
    monkeypatch.undo()
    assert make_config({"model": {"width": 1000, "depth": 3}})  # fits this machine


def test_the_evaluation_s_reference_count_is_asked_naming_where_it_is_set():
    """The reference points of an evaluation (config.json's "evaluate" "n") were refused only by the
    target's sampling, as "n = 10000 is too large ...; use n <= 7898", naming an option evaluate does
    not have; the configuration's check names where it is set, and a demo's message is not turned
    into its --n (the training samples)."""
    from sgm_ref.cli import _option_names, build_parser
    with pytest.raises(ValueError, match=r"^evaluate n \(config.json's \"n\" of \"evaluate\", the exact reference "
                                         r"points: sgm-ref evaluate has --bound-n and --profile-n, no option for "
                                         r"it\) must be at most \d+ on this machine, got 1125899906842624") as info:
        make_config({"evaluate": {"n": 2**50}})
    for command in ("demo", "evaluate"):
        assert _option_names(str(info.value), build_parser(), command) == str(info.value)


def test_evaluation_without_options_asks_its_sizes_before_the_work(tmp_path, monkeypatch):
    """`sgm-ref evaluate RUN` read the run's counts without asking their sizes (only options went
    through update_section's check), so the reference points' sampling refused late, as "n = 10000
    is too large ...; use n <= 7898", naming no option evaluate has."""
    from sgm_ref import _validation
    from sgm_ref.evaluation import evaluate_run

    folder = _tiny_run(tmp_path)
    sample_run(folder, {"n": 50, "n_steps": 2})
    # 24 MiB: bound_n's 8 MiB and profile_n's 16 fit, 10,000 reference points in d = 64 (36 MB) do not
    monkeypatch.setattr(_validation, "_physical_memory", lambda: 24 * 2**20)
    with pytest.raises(ValueError, match=r"^evaluate n \(config.json's \"n\" of \"evaluate\""):
        evaluate_run(folder, plots=False, progress=False)
    assert not (folder / "report.json").exists()
