"""A run folder's files belong together: nothing from another run, another setting or a
damaged byte is read as this run's (a review of faults and misread data)."""

import io
import json
import os
import re
import struct
import zipfile

import numpy as np
import pytest

import sgm_ref.runs as runs_module
from sgm_ref.io import ModelFileError, atomic_write, load
from sgm_ref.runs import RunError, create, load_samples, make_config, read_config, sample_run, train

SMALL = {"data": {"n": 500}, "model": {"width": 16, "depth": 2}, "train": {"steps": 30, "checkpoint_every": 10},
         "sample": {"n": 50, "n_steps": 10}}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 30-step run (copied by the tests that change it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    create(run, make_config(SMALL))
    train(run, progress=False)
    return run


def _copy(run, to):
    to.mkdir()
    for p in run.iterdir():
        if p.is_file() and p.name != ".lock":
            (to / p.name).write_bytes(p.read_bytes())
    return to


def _edit_config(run, section, **values):
    config = json.loads((run / "config.json").read_text())
    config[section].update(values)
    (run / "config.json").write_text(json.dumps(config))


def _rewrite_npz(path, **replace):
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    np.savez(path, **{**arrays, **replace})


# -- a training state is this run's ----------------------------------------------------------

def test_another_runs_training_state_is_refused(tmp_path, finished):
    other = tmp_path / "other"
    create(other, make_config({**SMALL, "seed": 1}))
    train(other, progress=False)
    (other / "training_state.npz").write_bytes((finished / "training_state.npz").read_bytes())
    with pytest.raises(RunError, match=r"training state .*training_state.npz was written for other settings than "
                                       r"config.json's .*another run's file, or config.json edited since"):
        train(other, progress=False, steps=40)
    assert read_config(other)["train"]["steps"] == 30  # the extension was rolled back
    sample_run(other)  # and the run still samples with its own model


def test_config_edited_between_a_kill_and_the_resume_is_refused(tmp_path, finished):
    """A checkpoint of lr 0.002 resumed under a config.json that now says lr 1e-5 (and batch
    size 8) trained the rest at batch size 8 with the checkpoint's lr, and stamped the model
    as config.json's."""
    run = _copy(finished, tmp_path / "run")
    os.replace(run / "training_state.npz", run / "checkpoint.npz")
    (run / "model.npz").unlink()
    _edit_config(run, "train", steps=60, lr=1e-5, batch_size=8)
    # each cause beside its own fix: removing the file would not help an edited config.json (a review)
    with pytest.raises(RunError, match=r"checkpoint .* was written for other settings than config.json's .*: "
                                       r"another run's file, or config.json edited since; if config.json was edited, "
                                       r"restore it; if the file is another run's, remove it"):
        train(run, progress=False)


@pytest.mark.parametrize("replace, match", [
    ({"lr": np.float64(5.0)}, r"training state .* has optimiser settings \(lr\) other than config.json's: "
                              r"config.json edited since it was written, or the file; if config.json was edited, "
                              r"restore it; if the file was, remove it"),
    ({"beta2": np.float64(0.9)}, r"has optimiser settings \(beta2\) other than config.json's"),
    ({"step_count": np.int64(29)}, r"training state .* is unreadable \(it is inconsistent: step 30, optimiser "
                                   r"step count 29"),
])
def test_a_training_state_edited_by_hand_is_refused(tmp_path, finished, replace, match):
    run = _copy(finished, tmp_path / "run")
    _rewrite_npz(run / "training_state.npz", **replace)
    with pytest.raises(RunError, match=match):
        train(run, progress=False, steps=40)
    assert read_config(run)["train"]["steps"] == 30


def test_a_state_without_a_digest_under_an_edited_config_names_config_json(tmp_path, finished):
    """A checkpoint of a version that wrote no run digest, resumed after config.json's lr was
    edited, was called 'unreadable ... remove it', which throws the training away."""
    run = _copy(finished, tmp_path / "run")
    with np.load(run / "training_state.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "run_digest"}
    np.savez(run / "checkpoint.npz", **arrays)
    (run / "training_state.npz").unlink()
    (run / "model.npz").unlink()
    _edit_config(run, "train", steps=60, lr=1e-5)
    with pytest.raises(RunError, match=r"checkpoint .* has optimiser settings \(lr\) other than config.json's: "
                                       r"config.json edited since it was written, or the file; if config.json was "
                                       r"edited, restore it"):
        train(run, progress=False)


def test_an_extension_from_a_damaged_state_puts_the_run_back(tmp_path, finished):
    """The rollback asked the damaged file for its step (None) and kept config.json's new
    step count, so `sample` refused the still-good model, even after the file was removed."""
    run = _copy(finished, tmp_path / "run")
    state = run / "training_state.npz"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(RunError, match=r"training state .* is unreadable .*remove it \(the run's model.npz stays "
                                       r"usable"):
        train(run, progress=False, steps=60)
    assert read_config(run)["train"]["steps"] == 30
    state.unlink()
    assert sample_run(run).shape == (50, 2)


# -- config.json says what the run is ----------------------------------------------------------

def test_a_target_label_that_is_not_the_definition_is_refused(tmp_path, finished):
    run = _copy(finished, tmp_path / "run")
    config = json.loads((run / "config.json").read_text())
    config["target"] = "gmm:d=8,k=4,radius=3,seed=0"  # the reports' title, over ring data
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"config.json: \"target\" is 'gmm:d=8,k=4,radius=3,seed=0', which is not "
                                       r"the target its \"target_definition\" describes"):
        read_config(run)
    config["target"] = "ring:k=8"  # another spelling of the same target is fine
    (run / "config.json").write_text(json.dumps(config))
    assert read_config(run)["target"] == "ring:k=8"


def test_unknown_keys_in_a_section_and_bad_values_name_the_file(tmp_path, finished):
    run = _copy(finished, tmp_path / "run")
    _edit_config(run, "evaluate", bound_N=5)
    with pytest.raises(RunError, match=r"config.json has unknown key\(s\) \['bound_N'\] in 'evaluate'"):
        read_config(run)
    run = _copy(finished, tmp_path / "run2")
    config = json.loads((run / "config.json").read_text())
    config["train"]["lr"] = float("nan")
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match=r"run2/config.json: lr must be finite, got nan \(fix or restore the file\)"):
        read_config(run)


# -- --force replaces a run whole ----------------------------------------------------------------

def test_force_interrupted_between_two_removals_leaves_no_half_run(tmp_path, finished, monkeypatch):
    """config.json went first: interrupted after it, the folder held the old model and states
    but could neither be resumed ('not a run folder') nor replaced ('not an sgm_ref run
    folder')."""
    run = _copy(finished, tmp_path / "run")
    unlink, calls = os.unlink, []

    def interrupted(path, *args, **kwargs):  # (os.unlink of every module: the lock's too)
        if os.path.basename(path) in runs_module.RUN_FILES:
            calls.append(os.path.basename(path))
            if len(calls) == 2:
                raise KeyboardInterrupt
        return unlink(path, *args, **kwargs)

    monkeypatch.setattr(runs_module.os, "unlink", interrupted)
    with pytest.raises(KeyboardInterrupt):
        create(run, make_config(SMALL), force=True)
    monkeypatch.setattr(runs_module.os, "unlink", unlink)
    assert calls[0] == "model.npz" and calls[-1] == "config.json"
    assert not [name for name in runs_module.RUN_FILES if (run / name).exists()]
    create(run, make_config(SMALL), force=True)  # and it can be replaced again
    assert (run / "config.json").exists()


def test_force_stopped_by_an_os_error_says_what_is_left(tmp_path, finished, monkeypatch):
    run = _copy(finished, tmp_path / "run")
    unlink = os.unlink

    def read_only(path, *args, **kwargs):
        if os.path.basename(path) == "samples.npy":
            raise PermissionError(13, "Permission denied", path)
        return unlink(path, *args, **kwargs)

    sample_run(run)
    monkeypatch.setattr(runs_module.os, "unlink", read_only)
    with pytest.raises(RunError, match=r"Permission denied: .*samples.npy; --force could not remove the old run's "
                                       r"files from .* \(samples.npy, training_state.npz, history.json, config.json "
                                       r"remain\): fix that and run the command again"):
        create(run, make_config(SMALL), force=True)
    monkeypatch.setattr(runs_module.os, "unlink", unlink)
    assert read_config(run)  # still the old run, unfinished: config.json went last
    assert runs_module.finished_steps(run) is None


def test_force_on_a_run_whose_config_json_is_damaged_says_so_and_keeps_it(tmp_path, finished):
    """One flipped bit made config.json invalid JSON, and --force refused the run as 'not an
    sgm_ref run folder' alone: the user was told to choose another folder, not that the file
    was damaged. The refusal (nothing removed) stays; it says why now."""
    run = _copy(finished, tmp_path / "run")
    damaged = bytearray((run / "config.json").read_bytes())
    damaged[damaged.index(b'"target_definition"') - 1] ^= 0x04  # a space -> '$'
    (run / "config.json").write_bytes(bytes(damaged))
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    with pytest.raises(RunError, match=r"holds config.json, .* but is not an sgm_ref run folder \(its config.json is "
                                       r"not valid JSON \(.*\)\); --force only replaces the files of a run: choose "
                                       r"another folder, or remove those files first$"):
        create(run, make_config(SMALL), force=True)
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before


# -- damaged bytes ----------------------------------------------------------------------------

def _flag_encrypted(path, member):
    """Set the 'encrypted' bit of one member's central directory entry (a single flipped bit)."""
    b = bytearray(path.read_bytes())
    i = 0
    while (i := b.find(b"PK\x01\x02", i)) >= 0:
        n = struct.unpack("<H", b[i + 28:i + 30])[0]
        if b[i + 46:i + 46 + n] == member.encode():
            b[i + 8] |= 1
        i += 4
    path.write_bytes(bytes(b))


def test_an_encrypted_flag_is_a_damaged_file_not_a_traceback(tmp_path, finished):
    run = _copy(finished, tmp_path / "run")
    _flag_encrypted(run / "model.npz", "params.npy")
    with pytest.raises(ModelFileError, match=r"model.npz: the parameter array is corrupt \(.*encrypted"):
        load(run / "model.npz")
    _flag_encrypted(run / "training_state.npz", "m.npy")
    with pytest.raises(RunError, match=r"training state .* is unreadable \(.*encrypted"):
        train(run, progress=False, steps=40)


def _npy(shape, dtype="<f8"):
    b = io.BytesIO()
    np.lib.format.write_array_header_1_0(b, {"descr": dtype, "fortran_order": False, "shape": shape})
    return b.getvalue() + b"\0" * 64


def test_a_header_declaring_a_huge_array_names_the_file(tmp_path, finished):
    """numpy allocates the declared shape before reading: the command line said 'out of
    memory: use a smaller --n-samples' about a damaged model file."""
    run = _copy(finished, tmp_path / "run")
    with zipfile.ZipFile(finished / "model.npz") as zi, zipfile.ZipFile(run / "model.npz", "w") as zo:
        for name in zi.namelist():
            zo.writestr(name, _npy((10**13,)) if name == "ema.npy" else zi.read(name))
    with pytest.raises(ModelFileError, match=r"model.npz: the parameter array is corrupt \(Unable to allocate"):
        load(run / "model.npz", use_ema=True)


def test_a_short_write_names_the_file(tmp_path):
    """numpy's tofile on a full disk raises OSError('8000 requested and 5104 written'): no
    errno, no file name; the command line printed just that."""
    def short(f):
        raise OSError("8000 requested and 5104 written")

    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "samples.npy", short)
    assert info.value.filename == os.fspath(tmp_path / "samples.npy")
    assert "the write stopped short (8000 requested and 5104 written): a full disk or a file-size limit?" \
        in info.value.strerror
    assert os.listdir(tmp_path) == []


# -- the history and the samples are this run's -----------------------------------------------

def test_an_edited_history_is_restored_from_the_final_state(tmp_path, finished):
    run = _copy(finished, tmp_path / "run")
    history = json.loads((run / "history.json").read_text())
    original = list(history["loss"])
    history["loss"][5] = 123.0  # the right length, a wrong number
    (run / "history.json").write_text(json.dumps(history))
    assert runs_module.restore_history(run)
    assert json.loads((run / "history.json").read_text())["loss"] == original
    assert not runs_module.restore_history(run)  # nothing more to do


def test_evaluate_refuses_a_history_with_one_changed_digit(tmp_path, finished):
    """A changed digit of history.json (finite, the right length) was read as the run's losses:
    evaluate reported the final loss of a training that never ran; --resume restores it."""
    from sgm_ref.evaluation import _training_summary

    run = _copy(finished, tmp_path / "run")
    text = (run / "history.json").read_text()
    history = json.loads(text)
    assert _training_summary(str(run), len(history["loss"]))["last_loss"] == history["loss"][-1]
    history["loss"][-1] = float(np.nextafter(history["loss"][-1], np.inf))  # one ulp: still a loss it could be
    (run / "history.json").write_text(json.dumps(history))
    with pytest.raises(RunError, match=r"history.json is not the losses the run's training state records \(damaged "
                                       r"or edited\): `sgm-ref train .*run --resume` restores it"):
        _training_summary(str(run), len(history["loss"]))
    assert runs_module.restore_history(run)
    assert json.loads((run / "history.json").read_text()) == json.loads(text)


def test_samples_of_another_count_or_dtype_are_refused(tmp_path, finished):
    run = _copy(finished, tmp_path / "run")
    sample_run(run)
    assert load_samples(run, 2).shape == (50, 2)
    for x in (np.zeros((300, 2)), np.zeros((50, 2), np.float32)):
        np.save(run / "samples.npy", x)
        with pytest.raises(RunError, match=rf"samples.npy holds {len(x)} {x.dtype} points, but config.json's "
                                           r"sampler draws 50 float64 points: not this run's samples"):
            load_samples(run, 2)


def test_non_finite_samples_are_refused_naming_their_rows(tmp_path, finished):
    """'holds non-finite values' did not say which of the points, nor how many."""
    run = _copy(finished, tmp_path / "run")
    x = sample_run(run)
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[7, 1] = bad
        y[31, 0] = bad
        np.save(run / "samples.npy", y)
        want = f"samples.npy holds non-finite values (2 of 50 rows, the first row 7: {[float(x[7, 0]), bad]!r}); run"
        with pytest.raises(RunError, match=re.escape(want)):
            load_samples(run, 2)


def test_a_damaged_history_points_to_resume_which_restores_it(tmp_path, finished):
    """evaluate said 'train the run again' for a NaN in history.json; --resume restores it."""
    from sgm_ref.evaluation import _training_summary

    run = _copy(finished, tmp_path / "run")
    original = (run / "history.json").read_text()
    (run / "history.json").write_text(original.replace("[", "[NaN, ", 1))
    with pytest.raises(RunError, match=r"history.json is damaged .*`sgm-ref train .*run --resume` restores it from "
                                       r"the run's final state"):
        _training_summary(str(run))
    assert runs_module.restore_history(run)
    assert json.loads((run / "history.json").read_text()) == json.loads(original)


@pytest.mark.parametrize("damage, match", [
    # the first member's name length (its local header's bytes 26-27) raised by 2048: zipfile's
    # message quoted the next 2048 bytes of the archive (a 6,000-character line)
    (lambda b: b.__setitem__(27, b[27] ^ 8), r"is unreadable \(a truncated or damaged .npz archive: File name in "
                                             r"directory 'params.npy' and header b.{100,200}\.\.\.\); remove it"),
    # its extra field's length raised by 32768: a bare EOFError, said as "unreadable ()"
    (lambda b: b.__setitem__(29, b[29] ^ 128), r"is unreadable \(cut short\); remove it"),
])
def test_a_damaged_training_state_is_said_in_one_short_line(tmp_path, finished, damage, match):
    run = _copy(finished, tmp_path / "run")
    state = run / "training_state.npz"
    data = bytearray(state.read_bytes())
    damage(data)
    state.write_bytes(bytes(data))
    with pytest.raises(RunError, match=r"training state .*training_state.npz " + match) as info:
        train(run, progress=False, steps=40)
    assert len(str(info.value)) < 200 + 250 + len(os.fspath(state)) and "\n" not in str(info.value)
    assert read_config(run)["train"]["steps"] == 30


def test_a_training_state_without_an_array_names_the_array(tmp_path, finished):
    """A state without its 'step' array was 'unreadable ('step')': KeyError's text alone."""
    run = _copy(finished, tmp_path / "run")
    with np.load(run / "training_state.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "step"}
    np.savez(run / "training_state.npz", **arrays)
    with pytest.raises(RunError, match=r"training state .* is unreadable \('step' missing\); remove it"):
        train(run, progress=False, steps=40)


def test_a_training_state_with_arrays_for_numbers_or_a_bad_rng_state_is_unreadable(tmp_path, finished):
    """An lr or step count stored as an array was 'unreadable (The truth value of an array with
    more than one element is ambiguous ...)'; an rng_state whose increment is negative escaped as
    a bare OverflowError (no file named, and no ValueError)."""
    for replace, match in (({"lr": np.array([0.002, 0.002])}, r"its lr must be a single number, got an array of "
                                                               r"shape \(2,\)"),
                           ({"step_count": np.array([30, 30])}, r"its step_count must be a single number"),
                           ("rng_state", r"Python int(eger -\d+ out of bounds for uint64| too large to convert)")):
        run = _copy(finished, tmp_path / f"run{len(os.listdir(tmp_path))}")
        if replace == "rng_state":
            with np.load(run / "training_state.npz") as f:
                state = json.loads(str(f["rng_state"]))
            state["state"]["inc"] = -state["state"]["inc"]
            replace = {"rng_state": np.array(json.dumps(state))}
        _rewrite_npz(run / "training_state.npz", **replace)
        with pytest.raises(RunError, match=r"training state .*training_state.npz is unreadable \(" + match):
            train(run, progress=False, steps=40)
        assert read_config(run)["train"]["steps"] == 30


def test_samples_whose_numbers_changed_are_refused(tmp_path, finished):
    """A flipped bit keeps samples.npy's shape, dtype and finiteness: load_samples read it as other
    numbers, which evaluate reported on. config.json records their SHA-256; a run of an older
    version (no "samples_sha256") is read as before."""
    run = _copy(finished, tmp_path / "run")
    x = sample_run(run)
    assert np.array_equal(load_samples(run, 2), x)
    raw = bytearray((run / "samples.npy").read_bytes())
    raw[-3] ^= 0x01  # the last number's mantissa: finite, and 1e-10 of it off
    (run / "samples.npy").write_bytes(bytes(raw))
    flipped = np.load(run / "samples.npy")
    assert np.all(np.isfinite(flipped)) and not np.array_equal(flipped, x)
    with pytest.raises(RunError, match=r"samples.npy does not hold the numbers `sgm-ref sample` wrote \(its SHA-256 is "
                                       r"not config.json's \"samples_sha256\": damaged or replaced since\)"):
        load_samples(run, 2)
    config = json.loads((run / "config.json").read_text())
    del config["samples_sha256"]
    (run / "config.json").write_text(json.dumps(config))
    assert np.array_equal(load_samples(run, 2), flipped)


def test_a_samples_header_that_no_longer_parses_is_named(tmp_path, finished):
    """A flipped bit in samples.npy's header ('<f8' -> ',f8') was NumPy's SyntaxError, a
    traceback from evaluate; a damaged header can also make its parser warn ("invalid decimal
    literal"), which the command line used to print before the error."""
    import subprocess
    import sys

    run = _copy(finished, tmp_path / "run")
    sample_run(run)
    good = (run / "samples.npy").read_bytes()
    raw = bytearray(good)
    raw[raw.index(b"'<f8'") + 1] ^= 0x10
    (run / "samples.npy").write_bytes(bytes(raw))
    with pytest.raises(RunError, match=r"samples.npy is unreadable \(invalid syntax"):
        load_samples(run, 2)
    raw = bytearray(good)
    i = raw.index(b"'fortran_order'")
    raw[i:i + 5] = b"7for|"  # "'fort" -> "7for|": a number run into a name, the parser's SyntaxWarning
    (run / "samples.npy").write_bytes(bytes(raw))
    result = subprocess.run([sys.executable, "-m", "sgm_ref.cli", "evaluate", str(run), "--no-plots"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "samples.npy is unreadable (Cannot parse header" in result.stderr


def test_a_state_that_lost_its_thread_counts_is_damaged_not_an_older_version(tmp_path, finished):
    """A flipped bit of the zip directory can swallow threads.npy: the state read as one of a version
    before thread counts were recorded, and the resume note about them was lost. Every version that
    writes the run digest writes them."""
    run = _copy(finished, tmp_path / "run")
    with np.load(run / "training_state.npz") as f:
        arrays = {k: f[k] for k in f.files if k != "threads"}
    np.savez(run / "training_state.npz", **arrays)
    with pytest.raises(RunError, match=r"training state .* is unreadable \(it records its run digest but not its "
                                       r"thread counts \(a damaged archive\)\)"):
        train(run, progress=False, steps=40)


@pytest.mark.parametrize("record", ['[1, 2]', '"2"', '{"blas": 2}', '{"blas": 2, "numba": 0}',
                                    '{"blas": true, "numba": 2}', '{"blas": 2.0, "numba": 2}'])
def test_a_thread_count_record_of_another_form_is_a_damaged_archive(tmp_path, finished, record):
    """A record that is not thread_counts()' {"blas": n, "numba": n} was read as "no counts": the
    resume went on without its note that other counts may change the last bits."""
    run = _copy(finished, tmp_path / "run")
    _rewrite_npz(run / "training_state.npz", threads=np.array(record))
    with pytest.raises(RunError, match=r"training state .* is unreadable \(its thread counts must be "
                                       r"\{'blas': n, 'numba': n\} with counts >= 1 \(blas may be null\), got .* "
                                       r"\(a damaged archive\)\)"):
        train(run, progress=False, steps=40)


def test_a_thread_count_record_with_blas_unknown_is_taken(tmp_path, finished):
    """blas is null where threadpoolctl finds no BLAS: that record is thread_counts()' own, and the
    resume's note shows it as "?" (it printed "None BLAS") and asks for the numba count alone (it said
    "OPENBLAS_NUM_THREADS=?", no setting: a review)."""
    run = _copy(finished, tmp_path / "run")
    _rewrite_npz(run / "training_state.npz", threads=np.array('{"blas": null, "numba": 1}'))
    with pytest.warns(UserWarning, match=r"written with \? BLAS and 1 numba threads, this process has \d+ BLAS "
                                         r"and \d+ numba threads: .* \(run with NUMBA_NUM_THREADS=1 set, without "
                                         r"--threads or SGM_REF_THREADS \(its BLAS thread count was not recorded\) "
                                         r"for the same bits\)"):
        train(run, progress=False, steps=32)


def test_a_samples_file_whose_magic_is_damaged_is_not_called_pickled_data(tmp_path, finished):
    """A flipped bit of samples.npy's magic made NumPy take it for a pickle and advise loading it
    "unsafely" with allow_pickle, for a file sgm_ref wrote."""
    run = _copy(finished, tmp_path / "run")
    sample_run(run)
    raw = bytearray((run / "samples.npy").read_bytes())
    raw[0] ^= 0x01
    (run / "samples.npy").write_bytes(bytes(raw))
    with pytest.raises(RunError, match=r"samples.npy is unreadable \(not an .npy array: its first bytes are not "
                                       r"NumPy's \(a damaged or foreign file\)\)$"):
        load_samples(run, 2)


def _flip_in_member(path, member):
    """path with one bit flipped in the data of an .npz member (its last byte)."""
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo(member)
    n, m = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])  # the local header's
    raw[info.header_offset + 30 + n + m + info.compress_size - 1] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage, state, source", [
    ("ema", True, r"from training_state.npz, the same bits"),
    ("params", True, r"from training_state.npz, the same bits"),
    ("cut", False, r"by training the run again from step 0"),
])
def test_a_damaged_model_is_written_again_by_resume(tmp_path, finished, damage, state, source):
    """A flipped bit in model.npz's arrays (not its header): sample and evaluate refused the file
    naming no way out, and `sgm-ref train --resume` said the run was "already trained" (only a
    damaged header made finished_steps take the run for unfinished), though the training state
    holds the very parameters. A damaged member that sampling does not read (the parameters beside
    their average) counts too: the archive is damaged."""
    from sgm_ref.cli import main
    from sgm_ref.runs import finished_steps, load_model

    run = _copy(finished, tmp_path / "run")
    if not state:
        (run / "training_state.npz").unlink()
    if damage == "cut":
        (run / "model.npz").write_bytes((finished / "model.npz").read_bytes()[:1000])
    else:
        _flip_in_member(run / "model.npz", f"{damage}.npy")
    assert finished_steps(run) is None  # `train --resume` trains, rather than "already trained"
    what = "File is not a zip file" if damage == "cut" else f"its member '{damage}.npy' fails its CRC-32 check"
    with pytest.raises(RunError, match=rf"model.npz is damaged \({what}\): `sgm-ref train {run} --resume` writes it "
                                       rf"again \({source}\)$"):
        load_model(run)  # also for the parameters, which it does not read beside their average
    assert main(["train", str(run), "--resume"]) == 0
    assert (run / "model.npz").read_bytes() == (finished / "model.npz").read_bytes()
    assert finished_steps(run) == 30


@pytest.mark.parametrize("checkpointed", [True, False])
def test_a_damaged_model_beside_an_interrupted_extension_names_both_ways_on(tmp_path, finished, monkeypatch,
                                                                            checkpointed):
    """model.npz damaged while an extension of it is pending: the fix named was "`train --resume`
    writes it again (from checkpoint.npz)" (or "(from training_state.npz, the same bits)"), but
    --resume trains the extension on, a model of 60 steps; --steps 30 gives it up and writes the
    damaged model of 30 steps again."""
    from test_runs import _interrupt_extension

    from sgm_ref.runs import load_model

    run = _copy(finished, tmp_path / "run")
    _interrupt_extension(run, monkeypatch, checkpointed=checkpointed)
    _flip_in_member(run / "model.npz", "params.npy")
    with pytest.raises(RunError, match=rf"model.npz is damaged \(its member 'params.npy' fails its CRC-32 check\): "
                                       rf"`sgm-ref train {run} --resume` continues the interrupted extension to 60 "
                                       rf"steps and writes its model; `sgm-ref train {run} --resume --steps 30` gives "
                                       rf"the extension up and writes the model of 30 steps again"):
        load_model(run)
    train(run, progress=False, steps=30)
    assert (run / "model.npz").read_bytes() == (finished / "model.npz").read_bytes()


def test_a_config_edited_to_fewer_steps_than_trained_names_the_way_back(tmp_path, finished):
    """config.json's steps lowered by hand below the model's: the refusal said "finish the training
    with `sgm-ref train RUN --resume`", which then refused too (the state is past config.json's
    steps); the way that works is to give the trained count back."""
    run = _copy(finished, tmp_path / "run")
    _edit_config(run, "train", steps=20)
    with pytest.raises(RunError, match=rf"model.npz is trained for 30 steps but config.json asks for 20, fewer .*"
                                       rf"restore its \"steps\" to 30, or run `sgm-ref train {run} --resume --steps "
                                       rf"30`$"):
        sample_run(run)
    train(run, progress=False, steps=30)  # the remedy named
    assert (run / "model.npz").read_bytes() == (finished / "model.npz").read_bytes()
    sample_run(run)


def test_a_damaged_model_beside_a_damaged_state_is_not_called_usable(tmp_path, finished, capsys):
    """model.npz and training_state.npz damaged together: the state's refusal said "the run's
    model.npz stays usable", which it was not (a review). It says the model is damaged as well, and
    the way it names, the state removed and `train --resume`, trains the run again (here, with
    config.json unchanged, the finished run's bits)."""
    from sgm_ref.cli import main

    run = _copy(finished, tmp_path / "run")
    _flip_in_member(run / "model.npz", "params.npy")
    state = run / "training_state.npz"
    state.write_bytes(state.read_bytes()[:1000])
    assert main(["train", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert "stays usable" not in err
    assert (f"training state {state} is unreadable (a truncated or damaged .npz archive: File is not a zip file); "
            f"remove training_state.npz (model.npz is missing or damaged as well): `sgm-ref train {run} --resume` "
            "would then train the run again from step 0 under config.json's settings") in err
    state.unlink()
    assert main(["train", str(run), "--resume"]) == 0
    assert (run / "model.npz").read_bytes() == (finished / "model.npz").read_bytes()  # config.json unchanged
    # the model whole (an extension past a damaged state): it does stay usable
    other = _copy(finished, tmp_path / "other")
    (other / "training_state.npz").write_bytes((finished / "training_state.npz").read_bytes()[:1000])
    assert main(["train", str(other), "--resume", "--steps", "40"]) == 2
    assert "the run's model.npz stays usable, but the run can no longer be extended" in capsys.readouterr().err
    assert read_config(other)["train"]["steps"] == 30  # this call's extension rolled back: the message holds


def test_a_damaged_state_beside_an_interrupted_extension_names_both_ways_on(tmp_path, finished, monkeypatch):
    """An extension to 60 interrupted before its first checkpoint, then training_state.npz damaged:
    the refusal said "remove it (the run's model.npz stays usable, but the run can no longer be
    extended)", but with the state gone the model of 30 steps did not sample (config.json asks
    for 60), --steps 30 was "a run can be extended, not shortened", and --resume trained a new
    model over it (a review). It names both ways, and each does what it says."""
    from test_runs import _interrupt_extension

    from sgm_ref.runs import load_model

    run = _copy(finished, tmp_path / "run")
    _interrupt_extension(run, monkeypatch, checkpointed=False)
    state = run / "training_state.npz"
    state.write_bytes(state.read_bytes()[:1000])
    other = _copy(run, tmp_path / "other")
    with pytest.raises(RunError) as refused:
        train(run, progress=False)
    assert str(refused.value).endswith(
        f"; give the interrupted extension up first with `sgm-ref train {run} --resume --steps 30`, then remove "
        f"it: the model of 30 steps stays usable, but the run can no longer be extended; or remove it now, and "
        f"`sgm-ref train {run} --resume` trains the run for its 60 steps from step 0 (a new model.npz)")
    # a further extension (--steps 90) fails the same way and is rolled back to the interrupted one's 60
    with pytest.raises(RunError) as again:
        train(run, progress=False, steps=90)
    assert str(again.value) == str(refused.value) and read_config(run)["train"]["steps"] == 60
    # the first way: given up, the state still refused, now as a finished run's, and removed
    with pytest.raises(RunError, match=r"remove it \(the run's model.npz stays usable, but the run can no longer "
                                       r"be extended\)$"):
        train(run, progress=False, steps=30)
    state.unlink()
    assert (run / "model.npz").read_bytes() == (finished / "model.npz").read_bytes()
    assert runs_module.finished_steps(run) == 30 and load_model(run).network.d == 2
    # the second way: the run of 60 steps, the bits of one trained for 60 from the start
    (other / "training_state.npz").unlink()
    train(other, progress=False)
    fresh = tmp_path / "fresh"
    create(fresh, make_config({**SMALL, "train": {**SMALL["train"], "steps": 60}}))
    train(fresh, progress=False)
    assert (other / "model.npz").read_bytes() == (fresh / "model.npz").read_bytes()


def test_a_damaged_checkpoint_of_an_extension_names_the_finished_state(tmp_path, finished, monkeypatch):
    """An extension's checkpoint damaged: the refusal said "remove it to restart training from step
    0", but --resume then goes on from the finished run's training_state.npz (step 30), to the
    bits of an unbroken extension; beside a damaged state too, it says so instead."""
    from test_runs import _interrupt_extension

    run = _copy(finished, tmp_path / "run")
    _interrupt_extension(run, monkeypatch)
    checkpoint = run / "checkpoint.npz"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(RunError, match=rf"checkpoint .*checkpoint.npz is unreadable .*; remove it: `sgm-ref train "
                                       rf"{run} --resume` then goes on from training_state.npz \(step 30\)$"):
        train(run, progress=False)
    both = _copy(run, tmp_path / "both")
    checkpoint.unlink()
    train(run, progress=False)
    extended = _copy(finished, tmp_path / "extended")
    train(extended, progress=False, steps=60)
    assert (run / "model.npz").read_bytes() == (extended / "model.npz").read_bytes()
    state = both / "training_state.npz"
    state.write_bytes(state.read_bytes()[:1000])
    with pytest.raises(RunError, match=rf"remove it; training_state.npz beside it is unreadable as well "
                                       rf"\(`sgm-ref train {both} --resume` then names what to do about it\)$"):
        train(both, progress=False)
    (both / "checkpoint.npz").unlink()
    with pytest.raises(RunError, match=r"give the interrupted extension up first"):
        train(both, progress=False)


def test_a_damaged_model_beside_an_extension_killed_before_its_model_names_the_steps_it_writes(tmp_path, finished,
                                                                                             monkeypatch):
    """An extension to 60 killed after its final state, before its checkpoint's removal and its
    model; then the old model.npz (30 steps) damaged: the remedy said "`--resume` writes it again
    (from checkpoint.npz)", but it finishes the training and writes the model of 60 steps (found by
    mutation testing). It says so, and following it gives an unbroken extension's bits."""
    from sgm_ref.runs import load_model

    run = _copy(finished, tmp_path / "run")
    unlink = os.unlink

    def killed(path, *args, **kwargs):
        if os.fspath(path).endswith("checkpoint.npz"):
            raise KeyboardInterrupt
        return unlink(path, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(os, "unlink", killed)
        with pytest.raises(KeyboardInterrupt):
            train(run, progress=False, steps=60)
    assert runs_module._state_step(run / "training_state.npz") == 60 and (run / "checkpoint.npz").exists()
    _flip_in_member(run / "model.npz", "params.npy")
    with pytest.raises(RunError, match=rf"model.npz is damaged \(.*\): `sgm-ref train {run} --resume` finishes the "
                                       rf"training to config.json's 60 steps from checkpoint.npz and writes its "
                                       rf"model$"):
        load_model(run)
    train(run, progress=False)
    extended = _copy(finished, tmp_path / "extended")
    train(extended, progress=False, steps=60)
    assert (run / "model.npz").read_bytes() == (extended / "model.npz").read_bytes()
