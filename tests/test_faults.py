"""Faults a run folder must survive (issue 11): concurrent writers, killed predecessors'
leftovers, damaged and hostile files, resuming and extending, thread counts.

Command-line behaviour is checked through commands in processes of their own, as a user
meets them; errors must be one line on stderr with exit status 2. The commands run
sgm_ref.cli.main in processes forked from one interpreter that has imported sgm_ref
(tests/_cli.py's run and Forks; test_cli.py checks that this is the installed script's
behaviour), the ones a test starts at a chosen moment, kills, or runs with a function
patched through a Forks of the test's own.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sgm_ref.experiments import rate
from sgm_ref.experiments.sweep import run_sweep

from _cli import SCRIPT, Forks, assert_one_line_error, run

TINY = ["--n", "200", "--width", "8", "--depth", "1", "--batch-size", "16", "--seed", "2"]
TINY_SAMPLING = ["--n-samples", "40", "--n-steps", "5"]
TINY_EVALUATION = ["--bound-n", "4", "--profile-n", "20", "--no-plots"]
DEEP = "[" * 100_000  # json.loads raises RecursionError on it


def trained(folder, steps=40, *extra, env=None):
    run("train", folder, *TINY, "--steps", steps, "--checkpoint-every", "10", *extra, env=env)
    return folder


def model_bits(folder):
    with np.load(folder / "model.npz") as f:
        arrays = {key: f[key] for key in ("params", "ema")}
    return arrays, json.loads((folder / "history.json").read_text())


def assert_same_model(a, b):
    (arrays_a, history_a), (arrays_b, history_b) = model_bits(a), model_bits(b)
    for key in arrays_a:
        assert np.array_equal(arrays_a[key], arrays_b[key]), key
    assert history_a == history_b


# -- item 1: one writer per run folder ----------------------------------------------------

HOLDER = """
import sys
from sgm_ref._lock import folder_lock
with folder_lock(sys.argv[1], kind="sgm-ref command"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    out = trained(tmp_path / "run")
    run("sample", out, *TINY_SAMPLING)
    (out / ".tmp-abcsamples.npy").write_bytes(b"the holder's write in progress")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        for args in (["sample", out, *TINY_SAMPLING], ["evaluate", out, *TINY_EVALUATION],
                     ["train", out, "--resume", "--steps", "50"], ["train", out, *TINY, "--force"]):
            result = run(*args, check=False)
            assert_one_line_error(result, f"another sgm-ref command is writing to {out}: pid {holder.pid} (")
        assert (out / ".tmp-abcsamples.npy").exists()  # not another command's to remove
        assert (out / "samples.npy").exists() and not (out / "report.json").exists()
    finally:
        holder.communicate("")
    # released (and a lock file left by a holder that died is just taken over)
    (out / ".lock").write_text(json.dumps({"pid": 999_999_999, "command": "sgm-ref train x", "since": "then"}))
    run("evaluate", out, *TINY_EVALUATION)
    assert (out / "report.json").exists()
    assert not (out / ".lock").exists() and not list(out.glob(".tmp-*"))


# The command line of the installed script, run by a process that has done its imports and
# waits for a go: two commands can then be started at a chosen moment. Forked from one
# interpreter (tests/_cli.py's Forks): each command is a process of its own, as before,
# without an import of sgm_ref each (40 of them were most of this test's CPU).


@pytest.fixture(scope="module")
def forks(tmp_path_factory):
    server = Forks(tmp_path_factory.mktemp("forks"))
    yield server
    server.close()


# when the resume starts: with the train, once the folder exists, once config.json
# does, once checkpoints are being written (the reported case)
_MOMENTS = (None, "", "config.json", "checkpoint.npz")


def _race(forks, folder, options, moment):
    """A fresh train and a --resume on one folder; their (code, stdout, stderr) and the train's pid."""
    train = forks.start("train", folder, *options, wait_for_go=True)
    resume = forks.start("train", folder, "--resume", wait_for_go=True)
    train.go()
    if moment is not None:
        while not (folder / moment).exists() and train.poll() is None:
            time.sleep(0.001)
    resume.go()
    outcome = {}
    for name, proc in (("train", train), ("resume", resume)):
        stdout, stderr = proc.communicate()
        outcome[name] = (proc.returncode, stdout, stderr)
    return outcome, train.pid


@pytest.mark.slow  # 12 pairs of commands
def test_a_fresh_train_and_a_resume_started_together(tmp_path, forks):
    options = [*TINY, "--steps", "60", "--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    run("train", whole, *options)
    for attempt in range(3 * len(_MOMENTS)):  # each moment three times (20 races were 12 s of CI)
        out = tmp_path / f"race{attempt}"
        moment = _MOMENTS[attempt % len(_MOMENTS)]
        outcome, pid = _race(forks, out, options, moment)
        assert out.is_dir(), outcome  # the folder survives
        assert sorted(code for code, _, _ in outcome.values()) == [0, 2], outcome  # one refused
        (_, _, refusal), = [o for o in outcome.values() if o[0] == 2]
        lines = refusal.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sgm-ref: error: "), refusal
        if moment in ("config.json", "checkpoint.npz"):  # the train holds the lock by then
            assert outcome["resume"][0] == 2
            assert f"another sgm-ref command is writing to {out}: pid {pid} (sgm-ref train {out} " in lines[0]
        else:  # before it: the folder is missing, or empty for an instant
            assert any(reason in lines[0] for reason in ("another sgm-ref command is writing to", "does not exist",
                                                         "is not a run folder")), lines[0]
        assert_same_model(out, whole)  # the one that ran: bit for bit an uninterrupted run
        assert not (out / "checkpoint.npz").exists() and not list(out.glob(".tmp-*"))
        assert not (out / ".lock").exists()


def killed_run(folder, options):
    """A training SIGKILLed just after its first checkpoint."""
    proc = subprocess.Popen([str(SCRIPT), "train", str(folder), *options], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    while not (folder / "checkpoint.npz").exists() and proc.poll() is None:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed; raise --steps"
    return folder


def test_two_resumes_of_a_killed_run(tmp_path):
    options = [*TINY, "--steps", "300", "--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    run("train", whole, *options)
    killed = killed_run(tmp_path / "killed", options)
    resumes = [subprocess.Popen([str(SCRIPT), "train", str(killed), "--resume"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outcome = [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in resumes]
    assert sorted(code for code, _, _ in outcome) in ([0, 2], [0, 0]), outcome
    for code, stdout, stderr in outcome:
        if code == 2:  # refused while the other trains
            lines = stderr.strip().splitlines()
            assert len(lines) == 1 and "another sgm-ref command is writing to" in lines[0], stderr
        else:  # trained it, or came after it had finished
            assert "trained in" in stdout or "already trained" in stdout, stdout
    assert_same_model(killed, whole)


def test_a_failing_new_run_never_removes_a_folder_it_did_not_make(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    result = run("train", out, *TINY, "--steps", "20", "--force", "--lr", "1e300", check=False)
    assert_one_line_error(result, "non-finite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


# -- item 11: every writer clears what a killed predecessor left ------------------------------

def test_sample_and_evaluate_clear_a_killed_commands_temporaries(tmp_path):
    out = trained(tmp_path / "run")
    (out / ".tmp-k1samples.npy").write_bytes(b"half")
    run("sample", out, *TINY_SAMPLING)
    assert not list(out.glob(".tmp-*"))
    (out / ".tmp-k2samples.png").write_bytes(b"\x89PNG half")  # a kill during evaluate's plots
    run("evaluate", out, *TINY_EVALUATION)
    assert not list(out.glob(".tmp-*"))


# -- items 4, 5, 6: hostile and damaged files, absurd options ----------------------------------

@pytest.mark.parametrize("option, value, pattern", [
    ("--T", "1e308", "--T must be <= 72.1"),
    ("--t0", "1e-300", "--t0 must be >= 2.47e-32"),
])
def test_absurd_horizons_are_refused(tmp_path, option, value, pattern):
    assert_one_line_error(run("train", tmp_path / "run", *TINY, "--steps", "5", option, value, check=False),
                          pattern)
    assert not (tmp_path / "run").exists()


def test_deeply_nested_json_is_one_line(tmp_path):
    (tmp_path / "deep.json").write_text(DEEP)
    assert_one_line_error(run("train", tmp_path / "new", "--target", tmp_path / "deep.json", check=False),
                          "nested too deeply")
    out = trained(tmp_path / "run")
    config = (out / "config.json").read_text()
    (out / "config.json").write_text(DEEP)
    for command in ("sample", "evaluate"):
        assert_one_line_error(run(command, out, check=False), "config.json is nested too deeply")
    (out / "config.json").write_text(config)
    with np.load(out / "model.npz") as f:
        arrays = {key: f[key] for key in f.files}
    np.savez(out / "model.npz", **{**arrays, "header": np.array(DEEP)})
    for command in ("sample", "evaluate"):
        assert_one_line_error(run(command, out, check=False), "model.npz: unreadable header")


def test_a_truncated_checkpoint_is_one_line_naming_it(tmp_path):
    out = killed_run(tmp_path / "run", [*TINY, "--steps", "300", "--checkpoint-every", "1"])
    state = (out / "checkpoint.npz").read_bytes()
    (out / "checkpoint.npz").write_bytes(state[: len(state) // 2])  # cut short: a full disk, an interrupted copy
    result = run("train", out, "--resume", check=False)
    assert_one_line_error(result, f"checkpoint {out / 'checkpoint.npz'} is unreadable (a truncated or damaged")
    assert "remove it to restart training from step 0" in result.stderr


def test_float16_samples_are_refused(tmp_path):
    out = trained(tmp_path / "run")
    run("sample", out, *TINY_SAMPLING)
    np.save(out / "samples.npy", np.load(out / "samples.npy").astype(np.float16))
    assert_one_line_error(run("evaluate", out, *TINY_EVALUATION, check=False), "expected (n, 2) float64 or float32")


def test_a_deeply_nested_sweep_description(tmp_path):
    (tmp_path / "sweep.json").write_text(DEEP)
    with pytest.raises(ValueError, match="sweep.json is unreadable .*nested too deeply"):
        run_sweep(tmp_path, rate.QUICK, log=lambda s: None)


# -- items 12 and 15: thread counts, extending a run ---------------------------------------------

def test_resume_extends_a_run_bit_for_bit(tmp_path):
    out = trained(tmp_path / "run", 40)
    run("sample", out, *TINY_SAMPLING)
    result = run("train", out, "--resume", "--steps", "70")
    assert "continuing the training to 70 steps" in result.stdout
    assert not (out / "samples.npy").exists()  # the samples of the 40-step model go with it
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 70
    assert_same_model(out, trained(tmp_path / "whole", 70))
    assert "already trained (70 steps)" in run("train", out, "--resume").stdout
    assert "already trained" in run("train", out, "--resume", "--steps", "70").stdout
    assert_one_line_error(run("train", out, "--resume", "--steps", "50", check=False),
                          "--steps 50 is fewer than the 70 steps")
    assert_one_line_error(run("train", out, "--resume", "--lr", "0.1", check=False), "drop --lr")


def test_resume_with_other_thread_counts_says_so_once(tmp_path):
    import shutil

    out = trained(tmp_path / "run", 20, env={"NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    advised = tmp_path / "advised"
    shutil.copytree(out, advised)
    one = {"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    result = run("train", out, "--resume", "--steps", "30", env=one)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sgm-ref: note: training_state.npz was written with 2 BLAS and 2 numba threads, "
                               "this process has 1 BLAS and 1 numba threads"), lines[0]
    # the way to the same counts: --threads (the variables alone do not override --threads or SGM_REF_THREADS),
    # with numba's pool of 2 (NUMBA_NUM_THREADS=1 here: it said '--threads 2' alone, which is refused)
    assert lines[0].endswith("(run with --threads 2 (SGM_REF_THREADS=2, or sgm_ref.set_threads(2)) and "
                             "NUMBA_NUM_THREADS=2 set (numba's pool here has 1) for the same bits)")
    assert_one_line_error(run("--threads", "2", "train", advised, "--resume", "--steps", "30", env=one, check=False),
                          "--threads: n must be at most 1")
    result = run("--threads", "2", "train", advised, "--resume", "--steps", "30", env={**one, "NUMBA_NUM_THREADS": "2"})
    assert result.stderr == ""  # as the note says: the saved counts, no note
    assert_same_model(advised, trained(tmp_path / "whole", 30, env={"NUMBA_NUM_THREADS": "2",
                                                                    "OPENBLAS_NUM_THREADS": "2"}))
    result = run("train", out, "--resume", "--steps", "40", env={"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert result.stderr == ""  # same counts as the state it continues


# -- found by a fault review: kills between the final writes, full disks, foreign files -----------

KILLER = """
import os, signal
N, count = {n}, 0
_replace, _unlink = os.replace, os.unlink

def hit(path):
    global count
    if os.path.basename(os.fspath(path)) == ".lock":
        return False
    count += 1
    return count == N

def replace(src, dst, **kwargs):
    _replace(src, dst, **kwargs)
    if hit(dst):
        os.kill(os.getpid(), signal.SIGKILL)

def unlink(path, **kwargs):
    _unlink(path, **kwargs)
    if hit(path):
        os.kill(os.getpid(), signal.SIGKILL)

os.replace, os.unlink = replace, unlink
"""


def killed_after(n, forks, *argv):
    """Run `sgm-ref argv` and SIGKILL it right after its n-th rename or removal (the lock's
    aside); returns the exit status (0: it finished with fewer than n). sgm_ref calls both as
    os.replace and os.unlink, looked up at the call: patched after its import, as here in a
    forked command (tests/_cli.py's Forks), they are patched for every call of the command."""
    return forks.run(*argv, prelude=KILLER.format(n=n)).returncode


@pytest.mark.parametrize("steps, extend", [(5, None), (20, None), (20, 25)])
def test_a_kill_after_any_write_leaves_a_run_that_resume_completes_bit_for_bit(tmp_path, forks, steps, extend):
    """A run of 5 steps (no checkpoint), of 20 (a checkpoint at 10) and an extension 20 -> 25,
    killed after each of its writes in turn: whenever model.npz reads as finished, its history
    and final state are there for it, and `train --resume` ends with the uninterrupted run's
    bits. model.npz used to be written first: killed after it, a short run had no history
    ('train the run first') and could not be extended, and a killed extension's evaluate
    read the old history silently."""
    from sgm_ref.runs import finished_steps

    total = extend or steps
    reference = trained(tmp_path / "reference", total)
    start = trained(tmp_path / "start", steps) if extend else None  # the run each extension starts from
    for n in range(1, 20):
        out = tmp_path / f"run{n}"
        if extend:
            shutil.copytree(start, out)  # the same bytes as a training of its own (it has no path in it)
            status = killed_after(n, forks, "train", out, "--resume", "--steps", extend)
        else:
            status = killed_after(n, forks, "train", out, *TINY, "--steps", steps, "--checkpoint-every", "10")
        if status == 0:
            break
        assert status == -signal.SIGKILL
        finished = finished_steps(out)
        if finished == json.loads((out / "config.json").read_text())["train"]["steps"]:  # reads as finished: whole
            assert len(json.loads((out / "history.json").read_text())["loss"]) == finished
            with np.load(out / "training_state.npz") as f:
                assert int(f["step"]) == finished
        result = forks.run("train", out, "--resume", *(["--steps", extend] if extend else []))
        assert result.returncode == 0, result.stderr
        assert "already trained" in result.stdout or "continuing the training" in result.stdout
        assert_same_model(out, reference)
    assert n > 3  # the sweep reached the end of the writes


PATCHED = """
import errno
import sgm_ref.runs as runs
if what == "interrupt-fit":
    def fit(*args, **kwargs):
        raise KeyboardInterrupt
    runs.fit = fit
elif what == "interrupt-sample":
    def sample(*args, **kwargs):
        raise KeyboardInterrupt
    runs.sample = sample
elif what == "full-history":  # as a full disk fails the file's write
    write_json = runs.write_json
    def no_space(f):
        raise OSError(errno.ENOSPC, "No space left on device")
    def full(path, obj):
        if str(path).endswith("history.json"):
            runs.atomic_write(path, no_space)
        write_json(path, obj)
    runs.write_json = full
elif what == "full-samples":
    atomic_write = runs.atomic_write
    def full(path, write):
        if str(path).endswith("samples.npy"):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write(path, write)
    runs.atomic_write = full
elif what == "full-extended-state":  # the final state of an extension to 25 steps
    save_state = runs._save_state
    def full(path, step, *args):
        if str(path).endswith("training_state.npz") and step == 25:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        save_state(path, step, *args)
    runs._save_state = full
"""


def patched(forks, what, *argv):
    """`sgm-ref argv` with one of sgm_ref.runs's functions replaced (PATCHED), in a forked command
    (tests/_cli.py's Forks): runs's functions look these names up at the call, so patched after
    the import as before it."""
    return forks.run(*argv, prelude=f"what = {what!r}\n" + PATCHED)


def test_a_full_disk_after_a_checkpoint_keeps_the_new_run_for_resume(tmp_path, forks):
    """A write failing with ENOSPC once a checkpoint exists used to remove the new run's whole
    folder, the checkpoint with it; now the run stays and the one line says so."""
    out = tmp_path / "run"
    result = patched(forks, "full-history", "train", out, *TINY, "--steps", "20", "--checkpoint-every", "10")
    assert_one_line_error(result, f"No space left on device: {out / 'history.json'}; the run in {out} is kept "
                                  "(checkpoint.npz): once that is fixed, continue it with")
    run("train", out, "--resume")
    assert_same_model(out, trained(tmp_path / "reference", 20))
    # before any checkpoint, nothing resumable: the new folder goes, as before
    short = tmp_path / "short"
    result = patched(forks, "full-history", "train", short, *TINY, "--steps", "5", "--checkpoint-every", "10")
    assert_one_line_error(result, "No space left on device")
    assert not short.exists()


def test_an_evaluation_never_leaves_a_report_beside_other_settings(tmp_path, monkeypatch):
    """report.json records its settings; the old report and plots go before the new settings
    and report are written, so an evaluation failing after them leaves no report.md of other
    settings (a kill used to leave the new report.json beside the old report.md and config)."""
    from sgm_ref import evaluation

    out = trained(tmp_path / "run", 20)
    run("sample", out, *TINY_SAMPLING)
    run("evaluate", out, *TINY_EVALUATION)
    report = json.loads((out / "report.json").read_text())
    assert report["evaluate"] == json.loads((out / "config.json").read_text())["evaluate"]
    assert "Evaluated with n = 10000" in (out / "report.md").read_text()
    atomic_write = evaluation.atomic_write

    def failing(path, write):
        if str(path).endswith("report.md"):
            raise OSError(28, "No space left on device")
        atomic_write(path, write)

    monkeypatch.setattr(evaluation, "atomic_write", failing)
    with pytest.raises(OSError):
        evaluation.evaluate_run(out, {"bound_n": 6, "profile_n": 20}, plots=False, progress=False)
    assert not (out / "report.md").exists()
    assert json.loads((out / "report.json").read_text())["evaluate"]["bound_n"] == 6
    assert json.loads((out / "config.json").read_text())["evaluate"]["bound_n"] == 6


def test_a_model_from_another_run_is_refused(tmp_path):
    """load_model compared only d, process, dtype and parameterization: another architecture,
    seed or training setting was sampled with exit 0."""
    out = trained(tmp_path / "run", 20)
    wide = trained(tmp_path / "wide", 20, "--width", "16")
    other_seed = trained(tmp_path / "seed", 20, "--seed", "3")
    for source, pattern in ((wide, "another architecture"), (other_seed, "trained under other settings")):
        copy = tmp_path / f"copy_of_{source.name}"
        subprocess.run(["cp", "-r", str(out), str(copy)], check=True)
        (copy / "model.npz").write_bytes((source / "model.npz").read_bytes())
        assert_one_line_error(run("sample", copy, *TINY_SAMPLING, check=False), pattern)
    config = json.loads((out / "config.json").read_text())
    config["train"]["lr"] = 0.5  # edited after training
    (out / "config.json").write_text(json.dumps(config))
    assert_one_line_error(run("sample", out, *TINY_SAMPLING, check=False), "config.json edited after training")


def test_a_symlinked_lock_is_not_followed_and_a_tmp_folder_is_left_alone(tmp_path):
    out = trained(tmp_path / "run", 20)
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me")
    (out / ".lock").symlink_to(precious)
    assert_one_line_error(run("sample", out, *TINY_SAMPLING, check=False), ".lock is a symbolic link")
    assert precious.read_text() == "keep me"
    (out / ".lock").unlink()
    (out / ".tmp-keep").mkdir()  # not a temporary of sgm_ref's: commands used to fail on it
    run("sample", out, *TINY_SAMPLING)
    assert (out / ".tmp-keep").is_dir()


@pytest.mark.parametrize("edit, pattern", [
    (lambda text: text.replace('"seed": 2,', '"seed": 2, "seed": 5,'), "has the key 'seed' twice"),
    (lambda text: text.replace('"version": 1', '"version": true'), "run format version True"),
    (lambda text: text.replace('"steps": 20', f'"steps": {2**64}'), "steps must be at most 2**53"),
    (lambda text: text.replace('"seed": 2', '"seed": ' + "9" * 5000), "config.json is not readable JSON"),
])
def test_hand_edited_configs_are_not_misread(tmp_path, edit, pattern):
    out = trained(tmp_path / "run", 20)
    path = out / "config.json"
    text = path.read_text()
    edited = edit(text)
    assert edited != text
    path.write_text(edited)
    assert_one_line_error(run("train", out, "--resume", check=False), pattern)


def test_a_folder_name_the_terminal_cannot_encode_is_printed_escaped(tmp_path):
    """Under a strict UTF-8 stdout a Latin-1 folder name failed the command after its work
    (and made `demo` remove the run it had trained)."""
    out = trained(tmp_path / "run", 20)
    latin = os.fsencode(tmp_path) + b"/bn_\xe9"
    os.rename(out, latin)
    result = subprocess.run([str(SCRIPT), b"sample", latin, *TINY_SAMPLING], capture_output=True, timeout=600,
                            env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    assert result.returncode == 0, result.stderr
    assert b"bn_\\udce9" in result.stdout


def test_a_failed_extension_restores_the_history_of_the_run_it_was(tmp_path, forks):
    """Extending 20 -> 25 steps with the final state's write failing: config.json went back to
    20 steps but history.json kept the extension's 25 losses, which evaluate reported (found by
    a review). The history comes back from the old final state, and evaluate refuses a history
    of another length than the run's."""
    out = trained(tmp_path / "run", 20)
    before = (out / "history.json").read_text()
    result = patched(forks, "full-extended-state", "train", out, "--resume", "--steps", "25")
    assert_one_line_error(result, "No space left on device")
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 20
    assert (out / "history.json").read_text() == before
    run("sample", out, *TINY_SAMPLING)
    run("evaluate", out, *TINY_EVALUATION)
    (out / "history.json").write_text(json.dumps({"loss": [1.0] * 25}))  # as the rollback of older versions left it
    assert_one_line_error(run("evaluate", out, *TINY_EVALUATION, check=False), "holds 25 losses, but the run is "
                                                                                  "trained for 20 steps")
    # the remedy the message names does restore it (a review: it answered 'already trained' only)
    assert "history.json restored from training_state.npz (20 losses)" in run("train", out, "--resume").stdout
    assert (out / "history.json").read_text() == before
    run("evaluate", out, *TINY_EVALUATION)
    assert "restored" not in run("train", out, "--resume").stdout


def test_a_demo_failing_after_training_says_what_finishes_it(tmp_path, forks):
    """The kept demo's line said `train --resume`, which only answers 'already trained'."""
    out = tmp_path / "demo"
    result = patched(forks, "full-samples", "demo", out, *TINY, "--steps", "20", *TINY_SAMPLING, *TINY_EVALUATION)
    # the demo's --no-plots, which config.json does not hold, kept in its evaluate
    assert_one_line_error(result, f"continue it with `sgm-ref sample {out}`, then `sgm-ref evaluate {out} --no-plots`")
    run("sample", out, *TINY_SAMPLING)
    from sgm_ref.runs import _continuation
    assert _continuation(str(out)) == f"`sgm-ref evaluate {out}`"
    run("evaluate", out, *TINY_EVALUATION)
    (out / "model.npz").unlink()  # as if killed before the model: training is what is left
    assert _continuation(str(out), then_evaluate=True) == (f"`sgm-ref train {out} --resume`, then `sgm-ref sample "
                                                          f"{out}` and `sgm-ref evaluate {out}`")


def test_an_interrupted_command_names_what_is_left_to_do(tmp_path, forks):
    """Ctrl-C's line comes from what is on disk (a review: the first version named `evaluate`
    for an extension interrupted in training, whose model is the old one, and a test could not
    tell the handler's new branch from the old fixed text)."""
    out = trained(tmp_path / "run", 20)
    run("sample", out, *TINY_SAMPLING)
    result = patched(forks, "interrupt-fit", "train", out, "--resume", "--steps", "30")
    assert result.returncode == 130
    assert result.stderr.strip() == (f"sgm-ref: interrupted; continue with `sgm-ref train {out} --resume` (or give "
                                     f"the extension up with `sgm-ref train {out} --resume --steps 20`)")
    demo = tmp_path / "demo"
    result = patched(forks, "interrupt-sample", "demo", demo, *TINY, "--steps", "20", *TINY_SAMPLING,
                     *TINY_EVALUATION)
    assert result.returncode == 130
    assert result.stderr.strip() == (f"sgm-ref: interrupted; continue with `sgm-ref sample {demo}`, then "
                                      f"`sgm-ref evaluate {demo} --no-plots`")


def test_a_demo_kept_during_training_names_train_then_sample_and_evaluate(tmp_path, forks):
    demo = tmp_path / "demo"
    result = patched(forks, "full-history", "demo", demo, *TINY, "--steps", "20", "--checkpoint-every", "10",
                     *TINY_SAMPLING, *TINY_EVALUATION)
    assert_one_line_error(result, f"continue it with `sgm-ref train {demo} --resume`, then `sgm-ref sample {demo}` "
                                  f"and `sgm-ref evaluate {demo} --no-plots`")


def test_a_damaged_final_state_is_not_restored_from(tmp_path):
    """restore_history writes only losses a final state holds whole for the run's steps (a
    review: 25 losses at step 20 were written and called '20 losses'; a missing member was a
    traceback)."""
    from sgm_ref.runs import restore_history

    out = trained(tmp_path / "run", 20)
    (out / "history.json").write_text(json.dumps({"loss": [1.0] * 25}))
    with np.load(out / "training_state.npz") as f:
        arrays = {key: f[key] for key in f.files}
    for damage in ({"loss": np.ones(25)}, {"loss": np.full(20, np.nan)}, {"loss": np.ones((20, 1))}):
        np.savez(out / "training_state.npz", **{**arrays, **damage})
        assert not restore_history(out)
    np.savez(out / "training_state.npz", **{k: v for k, v in arrays.items() if k != "loss"})
    assert not restore_history(out)
    assert len(json.loads((out / "history.json").read_text())["loss"]) == 25
    np.savez(out / "training_state.npz", **arrays)
    assert restore_history(out) and len(json.loads((out / "history.json").read_text())["loss"]) == 20
    for bad in (None, 3, tmp_path / "missing"):
        with pytest.raises(ValueError, match="run folder must be an existing folder"):
            restore_history(bad)


def test_writing_onto_a_folder_names_the_folder_not_a_temporary(tmp_path):
    """A figure or file written onto a path that is a folder failed at the final rename, with an
    IsADirectoryError naming the temporary .tmp-... file (a review); it is refused up front now,
    before the work, and no temporary is left."""
    from sgm_ref.io import atomic_path, atomic_write

    (tmp_path / "out.png").mkdir()
    for attempt in (lambda: atomic_write(tmp_path / "out.png", lambda f: f.write(b"x")),
                    lambda: atomic_path(tmp_path / "out.png").__enter__()):
        with pytest.raises(ValueError, match=r"cannot write .*out\.png: it is a folder; give a file name"):
            attempt()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]
