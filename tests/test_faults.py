"""Faults a run folder must survive (issue 11): concurrent writers, killed predecessors'
leftovers, damaged and hostile files, resuming and extending, thread counts.

Command-line behaviour is checked through the installed script in a subprocess, as a
user meets it; errors must be one line on stderr with exit status 2.
"""

import json
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from sgm_ref.experiments import rate
from sgm_ref.experiments.sweep import run_sweep

from _cli import SCRIPT, assert_one_line_error, run

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


# The command line of the installed script, run by an interpreter that has done its
# imports and waits for a go: two commands can then be started at a chosen moment.
READY = """
import sys
import sgm_ref.cli, sgm_ref.runs, sgm_ref.evaluation
print("ready", flush=True)
sys.stdin.readline()
sys.argv[0] = "sgm-ref"
sys.exit(sgm_ref.cli.main(sys.argv[1:]))
"""


def _ready(*args):
    proc = subprocess.Popen([sys.executable, "-c", READY, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "ready\n"
    return proc


def _go(proc):
    proc.stdin.write("\n")
    proc.stdin.flush()


# when the resume starts: with the train, once the folder exists, once config.json
# does, once checkpoints are being written (the reported case)
_MOMENTS = (None, "", "config.json", "checkpoint.npz")


def _race(folder, options, moment):
    """A fresh train and a --resume on one folder; their (code, stdout, stderr) and the train's pid."""
    train, resume = _ready("train", folder, *options), _ready("train", folder, "--resume")
    _go(train)
    if moment is not None:
        while not (folder / moment).exists() and train.poll() is None:
            time.sleep(0.001)
    _go(resume)
    outcome = {}
    for name, proc in (("train", train), ("resume", resume)):
        stdout, stderr = proc.communicate(timeout=600)
        outcome[name] = (proc.returncode, stdout, stderr)
    return outcome, train.pid


@pytest.mark.slow  # 20 pairs of commands: ~50 s of CPU (imports, mostly); longer on a busy machine
def test_a_fresh_train_and_a_resume_started_together(tmp_path):
    options = [*TINY, "--steps", "60", "--checkpoint-every", "1"]
    whole = tmp_path / "whole"
    run("train", whole, *options)
    for attempt in range(20):
        out = tmp_path / f"race{attempt}"
        moment = _MOMENTS[attempt % len(_MOMENTS)]
        outcome, pid = _race(out, options, moment)
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
    out = trained(tmp_path / "run", 20, env={"NUMBA_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2"})
    result = run("train", out, "--resume", "--steps", "30", env={"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sgm-ref: note: training_state.npz was written with 2 BLAS and 2 numba threads, "
                               "this process has 1 BLAS and 1 numba threads"), lines[0]
    result = run("train", out, "--resume", "--steps", "40", env={"NUMBA_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    assert result.stderr == ""  # same counts as the state it continues
