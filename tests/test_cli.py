"""The sgm-ref command, driven as a user drives it: each command a process of its own.

tests/_cli.py's run forks the commands from one interpreter that has imported sgm_ref;
test_a_forked_command_is_the_installed_script checks that this is the installed script's
behaviour (exit status, stdout, stderr, files), and the tests of the script's own start,
its environment, signals and terminals run the installed script itself."""

import ast
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from sgm_ref import load
from sgm_ref.targets.spec import from_spec, to_record

from _cli import SCRIPT, Forks, run
from _cli import assert_one_line_error as _assert_one_line_error

# a budget small enough for the test suite
SMALL = ["--n", "1000", "--width", "32", "--depth", "2", "--steps", "300", "--checkpoint-every", "100"]
SMALL_SAMPLING = ["--n-samples", "600", "--n-steps", "30"]
SMALL_EVALUATION = ["--bound-n", "16", "--profile-n", "200"]


def test_script_is_installed():
    assert SCRIPT.exists(), f"the console script {SCRIPT} is missing: install with pip install -e ."
    assert run("--version").stdout.startswith("sgm-ref ")


def test_demo_end_to_end(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", out, *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION)
    assert "histogram TV" in result.stdout and "certified TV bound" in result.stdout
    for name in ("config.json", "model.npz", "history.json", "samples.npy", "report.json", "report.md"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.npz").exists()  # removed once model.npz is written
    config = json.loads((out / "config.json").read_text())
    assert config["target"] == "ring" and config["train"]["steps"] == 300 and config["model"]["width"] == 32
    report = json.loads((out / "report.json").read_text())
    for key in ("sliced_wasserstein_1", "sliced_wasserstein_2", "mmd2", "energy_distance", "mean_error",
                "covariance_error"):
        assert set(report["samples"][key]) >= {"value", "standard_error"}
    assert 0 <= report["samples"]["histogram_tv"]["value"] <= 1
    assert report["tv_bound"]["tv"] >= report["tv_bound"]["tv_early_stopping"]
    assert len(report["score_error"]["t"]) == len(report["score_error"]["standard_error"]) == 12
    assert np.load(out / "samples.npy").shape == (600, 2)
    assert "# sgm_ref run: ring" in (out / "report.md").read_text()
    pytest.importorskip("matplotlib")
    for name in ("samples.png", "loss.png", "score_error.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def test_without_matplotlib_everything_but_the_plots(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib blocked by the test')\n")
    out = tmp_path / "run"
    result = run("demo", out, *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION, env={"PYTHONPATH": str(blocker)})
    assert "matplotlib is not installed" in result.stdout
    assert (out / "report.json").is_file() and (out / "report.md").is_file()
    assert not list(out.glob("*.png"))


def test_train_sample_evaluate_on_the_paper_family(tmp_path):
    out = tmp_path / "gmm"
    run("train", out, "--target", "gmm:d=4,k=3,radius=2,seed=1", *SMALL, "--seed", "5")
    assert (out / "model.npz").is_file() and not (out / "samples.npy").exists()
    model = load(out / "model.npz")
    assert model.network.d == 4
    run("sample", out, "--n-samples", "500", "--n-steps", "20", "--sampler", "exponential", "--grid", "uniform")
    config = json.loads((out / "config.json").read_text())
    assert config["sample"]["method"] == "exponential" and config["sample"]["n"] == 500
    x = np.load(out / "samples.npy")
    assert x.shape == (500, 4)
    result = run("evaluate", out, *SMALL_EVALUATION)
    report = json.loads((out / "report.json").read_text())
    assert "histogram_tv" not in report["samples"]  # d > 2
    assert len(report["samples"]["component_weights"]["soft"]) == 3
    assert "sliced W2" in result.stdout
    # sampling again with the same settings gives the same bits (its own seeded stream)
    run("sample", out, "--n-samples", "500", "--n-steps", "20", "--sampler", "exponential", "--grid", "uniform")
    assert np.array_equal(np.load(out / "samples.npy"), x)


def test_json_target_file_is_recorded_in_the_run(tmp_path):
    spec = {"weights": [0.4, 0.6], "means": [[-1.0, 0.0], [1.5, 0.5]], "covariances": [[0.2, 0.3], [0.5, 0.1]]}
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "mix.json").write_text(json.dumps(spec))
    run("train", "run", "--target", "mix.json", *SMALL, cwd=tmp_path / "work")
    config = json.loads((tmp_path / "work" / "run" / "config.json").read_text())
    assert config["target"] == "mix.json"
    assert config["target_definition"] == {"type": "GaussianMixture", **spec}
    # the file changes and the run is used from elsewhere: the run keeps its own target
    (tmp_path / "work" / "mix.json").write_text(json.dumps({**spec, "weights": [0.9, 0.1]}))
    run("sample", "work/run", *SMALL_SAMPLING, cwd=tmp_path)
    run("evaluate", "work/run", *SMALL_EVALUATION, cwd=tmp_path)
    report = json.loads((tmp_path / "work" / "run" / "report.json").read_text())
    assert report["samples"]["component_weights"]["true"] == [0.4, 0.6]


def test_one_dimensional_target(tmp_path):
    (tmp_path / "line.json").write_text(json.dumps({"weights": [0.5, 0.5], "means": [[-2.0], [2.0]]}))
    out = tmp_path / "run"
    run("demo", out, "--target", tmp_path / "line.json", *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION)
    assert np.load(out / "samples.npy").shape == (600, 1)
    pytest.importorskip("matplotlib")
    assert (out / "samples.png").read_bytes()[:4] == b"\x89PNG"


AUDITED = '''
import numpy as np
from sgm_ref import GaussianMixture

_target = GaussianMixture.paper_family(d=3, k=2, radius=2.0, rng=0)

def oracle(x, t):
    return _target.score(x, t)

def wrong(x, t):
    return -x  # the score of N(0, I): right only as t -> infinity
'''


@pytest.mark.parametrize("how", ["module", "file"])
def test_audit_the_oracle_and_a_wrong_score(tmp_path, how):
    (tmp_path / "audited.py").write_text(AUDITED)
    where = "audited" if how == "module" else str(tmp_path / "audited.py")
    reports = {}
    for name in ("oracle", "wrong"):
        path = tmp_path / f"{name}.json"
        result = run("audit", "--score", f"{where}:{name}", "--target", "gmm:d=3,k=2,radius=2,seed=0",
                     "--n-steps", "300", "--profile-n", "300", "--bound-n", "32", "--json", path, cwd=tmp_path)
        assert "certified TV bound" in result.stdout
        reports[name] = json.loads(path.read_text())
    # the report says what its numbers depend on, the target by its full definition
    assert {"seed": 0, "profile_n": 300, "bound_n": 32}.items() <= reports["oracle"].items()
    expected = json.loads(json.dumps(to_record(from_spec("gmm:d=3,k=2,radius=2,seed=0"))))
    assert reports["oracle"]["target_definition"] == expected
    oracle, wrong = reports["oracle"]["score_error"], reports["wrong"]["score_error"]
    assert max(oracle["error"]) == 0.0 and oracle["integral"]["value"] == 0.0  # the oracle against itself
    assert min(wrong["relative"][:3]) > 0.1 and wrong["integral"]["value"] > 1.0
    # the oracle's path term is discretisation only (~0.26 here); the wrong score's ~2.0
    bounds = reports["oracle"]["tv_bound"], reports["wrong"]["tv_bound"]
    assert bounds[1]["kl_path"] - bounds[0]["kl_path"] > 10 * np.hypot(bounds[0]["kl_path_se"], bounds[1]["kl_path_se"])
    assert bounds[1]["kl_path"] > 4 * bounds[0]["kl_path"] and bounds[1]["tv"] > bounds[0]["tv"]


def _params(path):
    return load(path).params


def test_resume_after_sigkill_is_bit_identical(tmp_path):
    options = ["--target", "ring", "--n", "2000", "--width", "64", "--depth", "2", "--steps", "6000",
               "--checkpoint-every", "200", "--ema-decay", "0.99", "--seed", "3"]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([str(SCRIPT), "train", str(killed), *options], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    checkpoint = killed / "checkpoint.npz"
    deadline = time.monotonic() + 120
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)  # a little further into training than the checkpoint
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "training finished before it could be killed; raise --steps"
    assert checkpoint.exists() and not (killed / "model.npz").exists()
    run("train", killed, "--resume")
    assert not checkpoint.exists() and not list(killed.glob(".tmp-*"))
    whole = tmp_path / "whole"
    run("train", whole, *options)
    with np.load(killed / "model.npz") as a, np.load(whole / "model.npz") as b:
        for key in ("params", "ema"):
            assert np.array_equal(a[key], b[key]), key
    assert json.loads((killed / "history.json").read_text()) == json.loads((whole / "history.json").read_text())
    result = run("train", killed, "--resume")
    assert "already trained" in result.stdout


def test_ctrl_c_keeps_the_run_and_says_how_to_go_on(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.Popen([str(SCRIPT), "demo", str(out), *SMALL[:-4], "--steps", "20000", "--checkpoint-every",
                             "100"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            # a suite started in the background of a non-interactive shell ignores SIGINT, and a
                            # Python started with SIGINT ignored never raises KeyboardInterrupt: undo it
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.npz").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate()
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines()[-1] == (f"sgm-ref: interrupted; continue with `sgm-ref train {out} --resume`, "
                                               f"then `sgm-ref sample {out}` and `sgm-ref evaluate {out}`")
    assert (out / "config.json").exists() and (out / "checkpoint.npz").exists()


def test_ctrl_c_before_a_new_run_s_config_says_to_rerun_with_force(tmp_path, capsys, monkeypatch):
    """Ctrl-C after train (or demo) made the run's folder and before its config.json was
    written keeps the empty folder, and said "run the command again": the same command is
    then refused, "output folder ... already exists; pass --force"."""
    from sgm_ref import runs

    def interrupted(path, data):
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "write_json", interrupted)
    for command in ("train", "demo"):
        run_folder = tmp_path / command
        status, out, err = _main([command, run_folder, "--steps", "5"], capsys)
        assert status == 130 and err == f"sgm-ref: interrupted; no run is left in {run_folder}; run the command " \
                                        "again with --force\n", err
        assert os.listdir(run_folder) == []
    monkeypatch.undo()
    status, _, err = _main(["train", tmp_path / "train", "--steps", "5"], capsys)
    assert status == 2 and "already exists; pass --force" in err


def test_ctrl_c_in_a_demo_s_evaluation_keeps_no_plots_and_quotes_the_folder(tmp_path, capsys, monkeypatch):
    """`sgm-ref demo RUN --no-plots` stopped while evaluating was told to run `sgm-ref evaluate RUN`,
    which draws the plots the demo was told to skip, and the folder was shown bare: for
    "it's a run", a command the shell splits. The hint, split as the shell does, is that command."""
    import shlex

    from sgm_ref import cli, evaluation

    run_folder = tmp_path / "it's a run"

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "evaluate_run", interrupted)
    status, _, err = _main(["demo", run_folder, "--n", "200", "--width", "8", "--depth", "1", "--steps", "5",
                            "--n-samples", "20", "--n-steps", "5", "--bound-n", "4", "--profile-n", "10",
                            "--no-plots"], capsys)
    assert status == 130 and err.startswith("sgm-ref: interrupted; continue with `"), err
    argv = shlex.split(err.strip().split("`")[1])
    assert argv == ["sgm-ref", "evaluate", str(run_folder), "--no-plots"], err
    args = cli.build_parser().parse_args(argv[1:])
    assert (args.command, args.run, args.no_plots) == ("evaluate", str(run_folder), True)


# -- errors: one line on stderr, exit status 2, nothing left behind ---------------------

@pytest.mark.parametrize("args, pattern", [
    (["--target", "moon"], "unknown target 'moon'"),
    (["--target", "gmm:d=3,k"], "malformed target parameter"),
    (["--target", "gmm:d=3,k=2"], "gmm needs radius"),
    (["--target", "ring:colour=red"], "unknown parameter 'colour'"),
    (["--target", "gmm:d=x,k=2,radius=1"], "d must be an integer"),
    (["--target", "gmm:d=3,k=0,radius=1"], "target gmm:d=3,k=0,radius=1: k must be an integer >= 1, got 0"),
    (["--target", "ring:std=-1"], "target ring:std=-1: std must be > 0.0"),
    # the library's checks, in the names of the options the user typed
    (["--steps", "0"], "--steps must be an integer >= 1, got 0"),
    (["--lr", "-1"], "--lr must be > 0.0, got -1.0"),
    (["--lr", "inf"], "--lr must be finite, got inf"),
    (["--t0", "nan"], "--t0 must be finite, got nan"),
    (["--checkpoint-every", "0"], "--checkpoint-every must be an integer >= 1, got 0"),
    (["--t0", "6"], "need 0 < t0 < T, got t0=6.0, T=5.0"),
    (["--T", "7", "--process", "vp"], "T must be <= 1.0 for VP"),
    (["--batch-size", "0"], "--batch-size must be an integer >= 1"),
    (["--ema-decay", "1"], "--ema-decay (0 turns the parameter average off) must be < 1.0"),
    (["--width", "0"], "--width must be an integer >= 1"),
    (["--beta-min", "0.2"], "add --process vp"),
    (["--target", "gmm:d=3,k=2,radius=1,seed=-1"], "target parameter seed must be >= 0"),
    # fails during training, after the folder was made: the folder goes again, and the message
    # does not say (as fit's does of the model in memory) that the parameters of step 1 are kept
    (["--lr", "1e300", "--steps", "50", "--n", "500", "--width", "8", "--depth", "1"],
     "error: training diverged: the loss became non-finite at step 2 (try a smaller --lr or a larger --t0); the "
     "batch: "),
    (["--lr", "1e300", "--steps", "50", "--n", "500", "--width", "8", "--depth", "1", "--weighting", "none"],
     "(try a smaller --lr, a larger --t0, or --weighting sigma2)"),
    (["--activation", "gelu"], "invalid choice: 'gelu'"),
    (["--steps", "ten"], "invalid int value: 'ten'"),
    (["--n-samples", "0"], "sample n"),
    (["--n-samples", "1"], "sample n (--n-samples) must be an integer >= 2"),  # refused before training
    (["--n-samples", "2", "--n-steps", "0"], "error: --n-steps must be an integer >= 1, got 0"),
    (["--n-samples", "2", "--bound-n", "1"], "error: --bound-n must be an integer >= 2, got 1"),
    (["--depth", str(10**30)], "argument --depth: " + str(10**30) + " is too large"),
])
def test_impossible_options(tmp_path, args, pattern):
    out = tmp_path / "run"
    command = "demo" if "--n-samples" in args else "train"
    _assert_one_line_error(run(command, out, *args, check=False), pattern)
    assert not out.exists()


def test_malformed_and_missing_json_target(tmp_path):
    (tmp_path / "bad.json").write_text("{ not json")
    (tmp_path / "wrong.json").write_text(json.dumps({"weights": [1.0]}))
    for target, pattern in ((tmp_path / "bad.json", "is not valid JSON"), (tmp_path / "missing.json", "cannot read"),
                            (tmp_path / "wrong.json", "weights")):
        _assert_one_line_error(run("train", tmp_path / "run", "--target", target, check=False), pattern)
        assert not (tmp_path / "run").exists()


def test_force_only_replaces_a_run(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.json").write_text('{"my": "settings"}')
    (other / "report.md").write_text("my report")
    _assert_one_line_error(run("train", other, *SMALL, "--force", check=False), "is not an sgm_ref run folder")
    assert (other / "config.json").read_text() == '{"my": "settings"}' and (other / "report.md").exists()


def test_failure_after_force_removes_only_the_run_files(tmp_path):
    out = tmp_path / "run"
    run("train", out, *SMALL)
    (out / "notes.txt").write_text("mine")
    result = run("train", out, "--force", "--lr", "1e300", "--steps", "50", "--n", "500", check=False)
    _assert_one_line_error(result, "loss became non-finite")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_existing_folder_needs_force(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    _assert_one_line_error(run("train", out, *SMALL, check=False), "already exists; pass --force")
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    run("train", out, *SMALL, "--force")
    assert (out / "model.npz").is_file() and (out / "notes.txt").read_text() == "mine"  # only run files replaced


def test_corrupt_or_missing_model_and_run_files(tmp_path):
    out = tmp_path / "run"
    run("train", out, *SMALL)
    model = (out / "model.npz").read_bytes()
    (out / "model.npz").write_bytes(model[: len(model) // 2])
    _assert_one_line_error(run("sample", out, check=False), "model.npz")
    assert not (out / "samples.npy").exists()
    (out / "model.npz").write_bytes(b"not a zip file at all")
    _assert_one_line_error(run("sample", out, check=False), "model.npz")
    (out / "model.npz").unlink()
    _assert_one_line_error(run("sample", out, check=False), "has no model.npz")
    _assert_one_line_error(run("evaluate", out, check=False), "model.npz")
    _assert_one_line_error(run("sample", tmp_path / "nowhere", check=False), "does not exist")
    (out / "config.json").write_text("{}")
    _assert_one_line_error(run("sample", out, check=False), "not an sgm_ref run configuration")


def test_evaluate_before_sample_and_resume_with_options(tmp_path):
    out = tmp_path / "run"
    run("train", out, *SMALL)
    config = (out / "config.json").read_text()
    _assert_one_line_error(run("evaluate", out, "--bound-n", "5", check=False), "no samples.npy")
    assert not (out / "report.json").exists()
    assert (out / "config.json").read_text() == config  # the failed evaluation changed no setting
    run("sample", out, *SMALL_SAMPLING)
    sampled = (out / "config.json").read_text()
    _assert_one_line_error(run("evaluate", out, "--bound-n", "1", check=False), "--bound-n must be an integer >= 2, got 1")
    assert (out / "config.json").read_text() == sampled
    for extra, flag in ((["--steps", "10"], "--steps"), (["--beta-min", "0.2"], "--beta-min"),
                        (["--no-ema-warmup"], "--no-ema-warmup"), (["--force"], "--force")):
        _assert_one_line_error(run("train", out, "--resume", *extra, check=False), f"drop {flag}")


def test_resampling_removes_the_stale_report(tmp_path):
    out = tmp_path / "run"
    run("demo", out, *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION)
    assert (out / "report.json").exists()
    run("sample", out, "--n-samples", "300")
    assert not (out / "report.json").exists() and not (out / "report.md").exists()
    assert np.load(out / "samples.npy").shape == (300, 2)
    run("sample", out)  # the run's current settings: 300 points again
    assert np.load(out / "samples.npy").shape == (300, 2)


def test_model_from_another_run_is_refused(tmp_path):
    run("train", tmp_path / "a", *SMALL)
    run("train", tmp_path / "b", *SMALL, "--target", "gmm:d=3,k=2,radius=1")
    (tmp_path / "a" / "model.npz").write_bytes((tmp_path / "b" / "model.npz").read_bytes())
    _assert_one_line_error(run("sample", tmp_path / "a", check=False), "does not match the run's config.json")


@pytest.mark.parametrize("score, pattern", [
    ("nomodule_xyz:f", "cannot import nomodule_xyz"),
    ("audited:missing", "has no attribute 'missing'"),
    ("audited", "MODULE:CALLABLE"),
    ("audited:CONSTANT", "is not callable"),
    ("audited:bad_shape", "score returned shape"),
    ("audited:raises", "raised ZeroDivisionError"),
    ("broken:f", "importing broken failed: SyntaxError"),
])
def test_audit_errors(tmp_path, score, pattern):
    (tmp_path / "audited.py").write_text(AUDITED + "CONSTANT = 3\n\ndef bad_shape(x, t):\n    return x[:, :1]\n"
                                         "\ndef raises(x, t):\n    return 1 / 0\n")
    (tmp_path / "broken.py").write_text("def f(x, t) return x\n")
    result = run("audit", "--score", score, "--target", "gmm:d=3,k=2,radius=2,seed=0", "--n-steps", "5",
                 "--profile-n", "10", "--bound-n", "4", cwd=tmp_path, check=False)
    _assert_one_line_error(result, pattern)


@pytest.mark.parametrize("args, pattern", [
    (["--t0", "0"], "need 0 < t0 < T"),
    (["--process", "vp", "--T", "2"], "T must be <= 1.0"),
    (["--beta-max", "30"], "add --process vp"),
    (["--json", "/nonexistent-folder/x.json"], "folder /nonexistent-folder does not exist"),
    (["--json", "."], "--json .: is a folder"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--bound-n", "1"], "--bound-n must be an integer >= 2"),
    (["--bound-n", str(10**30)], "is too large"),
])
def test_audit_bad_options(tmp_path, args, pattern):
    (tmp_path / "audited.py").write_text(AUDITED)
    result = run("audit", "--score", "audited:oracle", "--target", "gmm:d=3,k=2,radius=2,seed=0", "--n-steps", "5",
                 "--profile-n", "10", "--bound-n", "4", *args, cwd=tmp_path, check=False)
    _assert_one_line_error(result, pattern)


# -- issue 11: nothing silent, nothing misread, one line per error -----------------------

@pytest.mark.parametrize("args, pattern", [
    (["train", "{out}", "--step", "10"], "unrecognized arguments: --step 10"),  # was read as --steps
    (["train", "{out}", "--resum"], "unrecognized arguments: --resum"),
    (["sample", "{out}", "--n-sample", "5"], "unrecognized arguments: --n-sample 5"),
    (["audit", "--scor", "m:f", "--target", "ring"], "the following arguments are required: --score"),
    (["experiment", "rate", "{out}", "--quic"], "unrecognized arguments: --quic"),
])
def test_options_are_never_abbreviated(tmp_path, args, pattern):
    out = tmp_path / "run"
    result = run(*[a.format(out=out) for a in args], check=False)
    _assert_one_line_error(result, pattern)
    assert not out.exists()


def test_every_option_has_help_and_the_defaults_are_the_library_s():
    import argparse
    import inspect

    from sgm_ref.cli import build_parser
    from sgm_ref.runs import DEFAULTS
    from sgm_ref.samplers import sample

    def parsers(parser):
        yield parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    yield from parsers(sub)

    for parser in parsers(build_parser()):
        assert not parser.allow_abbrev, parser.prog
        for action in parser._actions:
            if not isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                assert action.help, f"{parser.prog} {action.option_strings or action.dest} has no help"
    audit = {a.dest: a.default for a in parsers(build_parser()) if a.prog == "sgm-ref audit" for a in a._actions}
    # one default sampler grid: the library's sample(), a run's config, and `audit`
    assert inspect.signature(sample).parameters["grid"].default == DEFAULTS["sample"]["grid"] == audit["grid"]
    assert (audit["n_steps"], audit["sampler"], audit["t0"]) == (
        DEFAULTS["sample"]["n_steps"], DEFAULTS["sample"]["method"], DEFAULTS["train"]["t0"])
    assert (audit["profile_n"], audit["bound_n"]) == (DEFAULTS["evaluate"]["profile_n"],
                                                      DEFAULTS["evaluate"]["bound_n"])
    assert "(default geometric)" in run("audit", "--help").stdout
    # the rate experiment's help quotes its grids' training lengths (the command does not import
    # the experiment to build its help)
    from sgm_ref.experiments import rate

    helps = {a.dest: a.help for a in parsers(build_parser()) if a.prog == "sgm-ref experiment rate"
             for a in a._actions}
    full, quick = rate.FULL["settings"], rate.QUICK["settings"]
    assert (f"default: max({full['min_steps']}, {full['epochs']} epochs); quick: max({quick['min_steps']}, "
            f"{quick['epochs']} epochs)") in helps["steps"]
    assert f"({len(rate.cells(rate.FULL))} cells;" in helps["full"]


OVERFLOWING = '''
def huge(x, t):
    return x * 1e200  # finite, but |s - grad log p_t|^2 overflows float64
'''


def test_audit_of_an_overflowing_score_says_so_and_writes_valid_json(tmp_path):
    (tmp_path / "big.py").write_text(OVERFLOWING)
    path = tmp_path / "report.json"
    result = run("audit", "--score", "big:huge", "--target", "ring", "--n-steps", "5", "--profile-n", "10",
                 "--bound-n", "4", "--json", path, cwd=tmp_path)
    assert "inf" not in result.stdout.replace("info", "") and "nan" not in result.stdout, result.stdout
    assert "integral over [0.001, 5]: overflows float64" in result.stdout
    assert "note: the score error overflows float64 at every t of the profile (0.001 to 5)" in result.stdout
    assert "1 (vacuous: the path KL overflows float64)" in result.stdout

    def no_constants(name):
        raise AssertionError(f"{name} in the JSON")

    report = json.loads(path.read_text(), parse_constant=no_constants)
    assert report["score_error"]["integral"] == {"value": None, "standard_error": None}
    assert report["non_finite"]["/score_error/integral/value"] == "inf"
    assert report["non_finite"]["/score_error/error/0"] == "inf"
    assert report["score_error"]["t"][0] == 0.001  # the finite numbers are kept


@pytest.mark.parametrize("score, pattern", [
    # a call's failure says at which t it was called (the first call is at t0 = 0.001)
    ("audited:exits", "--score audited:exits called sys.exit(3) (called at t = 0.001)"),
    ("exits_on_import:f", "--score: importing exits_on_import called sys.exit(4)"),
    ("audited:own_value_error", "--score audited:own_value_error raised ValueError: the user's own message "
                                "(called at t = 0.001)"),
    ("audited:bare", "--score audited:bare raised RuntimeError (called at t = 0.001)"),
    ("imports_missing:f", "--score: importing imports_missing failed: ModuleNotFoundError: No module named "
                          "'not_installed_xyz'"),
    ("missing.py:f", "--score: no file missing.py"),
])
def test_audit_user_code_failures_are_named_as_theirs(tmp_path, score, pattern):
    (tmp_path / "audited.py").write_text(AUDITED + "\nimport sys\n\ndef exits(x, t):\n    sys.exit(3)\n\n"
                                         "def own_value_error(x, t):\n    raise ValueError(\"the user's own message\")\n"
                                         "\ndef bare(x, t):\n    raise RuntimeError()\n")
    (tmp_path / "exits_on_import.py").write_text("import sys\nsys.exit(4)\n")
    (tmp_path / "imports_missing.py").write_text("import not_installed_xyz\n")
    result = run("audit", "--score", score, "--target", "gmm:d=3,k=2,radius=2,seed=0", "--n-steps", "5",
                 "--profile-n", "10", "--bound-n", "4", cwd=tmp_path, check=False)
    _assert_one_line_error(result, pattern)
    assert result.stderr.strip() == f"sgm-ref: error: {pattern}"  # not nested in another message


def test_audit_names_the_t_of_a_failing_call_the_row_of_a_nan_and_keeps_prints_off_stdout(tmp_path):
    """A score that fails at one t only was reported without the t; a NaN in one row named the
    whole batch's range of t; and a score's prints ran into the report on stdout (a review)."""
    (tmp_path / "quirky.py").write_text(AUDITED + """
import numpy as np

def late(x, t):
    if np.any(t > 1.0):
        raise RuntimeError("too late")
    print("called")
    return oracle(x, t)

def one_nan(x, t):
    out = oracle(x, t)
    if t.min() != t.max():  # the integral's batch of many t: row 3 is NaN
        out[3, 0] = np.nan
    return out
""")
    common = ["--target", "gmm:d=3,k=2,radius=2,seed=0", "--n-steps", "5", "--profile-n", "10", "--bound-n", "4"]
    result = run("audit", "--score", "quirky:late", *common, cwd=tmp_path, check=False)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert set(lines[:-1]) == {"called"}  # its prints: on stderr, not in the report on stdout
    error = re.fullmatch(r"sgm-ref: error: --score quirky:late raised RuntimeError: too late "
                         r"\(called at t = ([0-9.e+-]+)\)", lines[-1])
    assert error and float(error.group(1)) > 1.0, lines[-1]
    result = run("audit", "--score", "quirky:one_nan", *common, cwd=tmp_path, check=False)
    _assert_one_line_error(result, "returned 1 non-finite value(s) at t from ")
    assert re.search(r"the first in row 3 \(t = [0-9.e+-]+\)$", result.stderr.strip()), result.stderr


def test_audit_traceback_option_shows_the_user_s_traceback(tmp_path):
    (tmp_path / "audited.py").write_text(AUDITED + "\ndef own_value_error(x, t):\n    raise ValueError('mine')\n")
    result = run("audit", "--score", "audited:own_value_error", "--target", "gmm:d=3,k=2,radius=2,seed=0",
                 "--n-steps", "5", "--profile-n", "10", "--bound-n", "4", "--traceback", cwd=tmp_path, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and "audited.py" in result.stderr
    assert lines[-1] == "sgm-ref: error: --score audited:own_value_error raised ValueError: mine (called at t = 0.001)"


def test_a_torch_attribute_asked_of_a_numpy_array_suggests_inputs_torch(tmp_path, capsys, monkeypatch):
    """A torch function that --inputs auto gives NumPy arrays (its own code names no torch
    object) failed with "'numpy.ndarray' object has no attribute 'detach'" and no hint: the
    hint to pass --inputs torch came only where the message said "tensor" (a review); and the
    word counted in the --score spec too, so any error of a file named tensor_*.py got it. A
    typo's AttributeError, or a function where torch was never imported, gets none. (In this
    process, as sgm_ref.cli.main: a command of its own would import torch afresh each time.)"""
    model = ("import torch\n\nclass Net(torch.nn.Module):\n    def forward(self, x, t):\n        return -x\n\n"
             "net = Net()\n\ndef detached(x, t):\n    return net(x.detach(), t)\n\n"
             "def typo(x, t):\n    return x.shapee\n\ndef own(x, t):\n    raise ValueError('mine')\n")
    (tmp_path / "model.py").write_text(model)
    (tmp_path / "tensor_model.py").write_text(model)
    (tmp_path / "plain.py").write_text("def detached(x, t):\n    return x.detach()\n")
    hint = " (it was given NumPy arrays: if it takes torch tensors, pass --inputs torch)"
    assert "tensor" not in str(tmp_path).lower()  # else every message of the old code had the hint
    for name, message, hinted in (
            ("model.py:detached", "AttributeError: 'numpy.ndarray' object has no attribute 'detach'", True),
            ("model.py:typo", "AttributeError: 'numpy.ndarray' object has no attribute 'shapee'", False),
            ("tensor_model.py:own", "ValueError: mine", False),
            ("plain.py:detached", "AttributeError: 'numpy.ndarray' object has no attribute 'detach'", False)):
        if name.startswith("plain"):  # torch imported by none of the user's code
            monkeypatch.delitem(sys.modules, "torch")
        spec = f"{tmp_path / name}"
        status, out, err = _main(["audit", "--score", spec, "--target", "ring", "--n-steps", "2", "--profile-n", "4",
                                  "--bound-n", "2"], capsys)
        assert err.strip() == (f"sgm-ref: error: --score {spec} raised {message} (called at t = 0.001)"
                               + (hint if hinted else "")), err
        assert status == 2 and out == ""


@pytest.mark.parametrize("json_path, pattern", [("", "--json needs a file name, got ''"),
                                                ("{tmp}", "is a folder; give a file name")])
def test_audit_json_path_refused_before_the_work(tmp_path, json_path, pattern):
    (tmp_path / "audited.py").write_text("def f(x, t):\n    raise AssertionError('the work started')\n")
    result = run("audit", "--score", "audited:f", "--target", "ring", "--json", json_path.format(tmp=tmp_path),
                 cwd=tmp_path, check=False)
    _assert_one_line_error(result, pattern)


def test_errors_are_one_line_without_numpy_reprs(tmp_path):
    # numpy >= 2 prints np.float64(0.8999999999999999) for a scalar's repr
    (tmp_path / "w.json").write_text(json.dumps({"weights": [0.3, 0.3, 0.3], "means": [[0.0], [1.0], [2.0]]}))
    result = run("train", tmp_path / "run", "--target", tmp_path / "w.json", check=False)
    _assert_one_line_error(result, "got sum 0.8999999999999999;")
    assert "np.float64" not in result.stderr


def test_oversized_npy_header_is_one_line(tmp_path):
    out = tmp_path / "run"
    run("demo", out, *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION, "--no-plots")
    # a valid version-2 .npy header longer than numpy's 10000-byte safety limit
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2), }"
    header = header + " " * (20_000 - len(header) - 1) + "\n"
    (out / "samples.npy").write_bytes(b"\x93NUMPY\x02\x00" + len(header).to_bytes(4, "little") + header.encode()
                                      + np.zeros(6).tobytes())
    result = run("evaluate", out, check=False)
    _assert_one_line_error(result, "samples.npy is unreadable")


def test_report_and_train_quote_the_same_final_loss(tmp_path):
    out = tmp_path / "demo"
    result = run("demo", out, *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION)
    report = json.loads((out / "report.json").read_text())
    training = report["training"]
    printed = result.stdout.split("final loss ")[1].split()[0].rstrip(",")
    assert printed == f"{training['final_loss_mean']:.4g}"
    assert f"{training['final_loss_mean']:.4g} averaged over the last 100 steps" in (out / "report.md").read_text()
    exact = training["exact_score_loss"]
    assert 0 < exact["standard_error"] < 0.1 * exact["value"]
    # trained for 300 steps only: its loss stays above the exact score's
    assert training["final_loss_mean"] > exact["value"]


def test_evaluate_shows_progress_on_a_terminal_only(tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    out = tmp_path / "run"
    run("demo", out, *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION, "--no-plots")
    assert run("evaluate", out).stderr == ""  # not a terminal: no bar
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # tqdm draws nothing in 0 columns
    try:
        proc = subprocess.Popen([str(SCRIPT), "evaluate", str(out)], stdout=subprocess.DEVNULL, stderr=slave)
        os.close(slave)
        seen = b""
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=600) == 0
    finally:
        os.close(master)
    assert b"evaluating" in seen, seen


def test_os_errors_are_one_line_naming_the_file_or_folder():
    from sgm_ref.cli import _one_line
    from sgm_ref.io import os_error_text as _os_error_text

    # an atomic write's temporary file is not the user's: its folder is
    assert (_os_error_text(PermissionError(13, "Permission denied", "/ro/run/.tmp-x1y2report.json"))
            == "cannot write into /ro/run: Permission denied")
    assert _os_error_text(FileNotFoundError(2, "No such file or directory", "x.json")) == (
        "No such file or directory: x.json")
    assert _one_line("first\n  second\n\nthird np.float64(0.5) np.int64(3)") == "first second third 0.5 3"


def test_audit_json_folder_must_be_writable(tmp_path, monkeypatch):
    # (a read-only folder cannot be made for root, who runs CI's containers: the probe is refused instead)
    from sgm_ref import cli

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path))

    monkeypatch.setattr(cli.tempfile, "TemporaryFile", refuse)
    with pytest.raises(ValueError, match=r"--json .*x.json: cannot write into .* \(Permission denied\)"):
        cli._check_json_path(str(tmp_path / "x.json"))


class _Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stderr, argv, shown", [
    (_Terminal, [], True),                      # a person at a terminal, no count chosen
    (_Terminal, ["--threads", "1"], False),     # the user chose a count
    (io.StringIO, [], False),                   # a script reading stderr: left as it was
])
def test_busy_machine_hint_on_a_terminal_only(monkeypatch, tmp_path, stderr, argv, shown):
    """The advice to use fewer threads on a busy machine (`_threads.busy_hint`) reaches a
    person: one line on a terminal before the command runs; never in a script's stderr,
    never over a count the user chose."""
    from sgm_ref import _threads, cli

    err = stderr()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(_threads, "busy_hint", lambda: "note: the machine is busy (stand-in)")
    monkeypatch.setattr(_threads, "set_threads", lambda n: None)  # leave this process's counts alone
    status = cli.main(argv + ["sample", str(tmp_path / "no-such-run")])
    lines = err.getvalue().splitlines()
    assert status == 2 and lines[-1].startswith("sgm-ref: ")  # the command still runs and fails as before
    assert (lines[0] == "note: the machine is busy (stand-in)") is shown
    assert len(lines) == (2 if shown else 1)


# -- audit: the exact score's floor beside the model, per-time tolerances, the plot (issue 13 item 4) ----

DEMO_MODELS = '''
import numpy as np
import sgm_ref
from sgm_ref import OU
from sgm_ref.targets.spec import from_spec

_ring, _ou = from_spec("ring"), OU()


def demo(x, t):
    return _demo(x, t)


def _demo(x, t):
    global _model
    try:
        model = _model
    except NameError:
        model = _model = sgm_ref.load("demo/model.npz")
    return model(x, t)


def exact(x, t):
    return _ring.score(x, t, _ou)


def sigma2_bug(x, t):
    # a conversion that multiplies by sigma_t^2 where it should not: exact at large t, wrong near 0
    return exact(x, t) * (_ou.sigma(t) ** 2)[:, None]
'''
AUDIT_SMALL = ["--target", "ring", "--profile-n", "300", "--bound-n", "32"]
TOLERANCE = ["--max-relative-error", "0.001=0.5,0.1=0.05"]


def test_audit_of_the_demo_model_prints_the_exact_score_floor_and_plots(tmp_path):
    run("demo", tmp_path / "demo", *SMALL, *SMALL_SAMPLING, *SMALL_EVALUATION, "--no-plots")
    (tmp_path / "models.py").write_text(DEMO_MODELS)
    pytest.importorskip("matplotlib")
    result = run("audit", "--score", "models:demo", *AUDIT_SMALL, "--json", "a.json", "--plot", "a.png",
                 cwd=tmp_path)
    out = result.stdout
    # the existing lines, and the floor beside them
    assert "       t      E|s - grad log p_t|^2     relative   exact score" in out
    assert "certified TV bound for euler_maruyama, 300 geometric steps: " in out
    assert "exact score, same grid and draws (the sampler's own floor): certified TV bound 0." in out
    assert "(exact score: 0)" in out
    report = json.loads((tmp_path / "a.json").read_text())
    floor = report["floor"]
    assert floor["score"] == "exact" and floor["score_error"]["t"] == report["score_error"]["t"]
    assert max(floor["score_error"]["error"]) == 0.0 and floor["score_error"]["integral"]["value"] == 0.0
    # the floor is the discretisation's: well above 0, below the trained model's path KL
    assert 0.1 < floor["tv_bound"]["kl_path"] < report["tv_bound"]["kl_path"]
    assert f"the model adds path KL {report['tv_bound']['kl_path'] - floor['tv_bound']['kl_path']:.3g}" in out
    assert "tolerance" not in report and result.returncode == 0
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_audit_tolerance_fails_a_planted_sigma2_bug_and_passes_the_exact_score(tmp_path):
    (tmp_path / "models.py").write_text(DEMO_MODELS)
    bug = run("audit", "--score", "models:sigma2_bug", *AUDIT_SMALL, *TOLERANCE, "--json", "bug.json",
              cwd=tmp_path, check=False)
    assert bug.returncode == 1, bug.stderr
    assert bug.stderr == ""
    assert "FAIL: the relative score error exceeds --max-relative-error 0.001=0.5,0.1=0.05 at " in bug.stdout
    assert "EXCEEDED" in bug.stdout
    checked = json.loads((tmp_path / "bug.json").read_text())["tolerance"]  # written, though it failed
    assert checked["passed"] is False and checked["exceeded"][0] == 0.001
    # (1 - sigma_t^2)^2 of the oracle's mean square: ~100% near t0, ~0 by t = 5
    assert checked["relative"][0] > 0.5 and checked["relative"][-1] < 1e-6
    # the terminal's relative column keeps two digits below 1% (it printed 0.00% for e^-20 = 2.1e-9)
    last = next(line for line in bug.stdout.splitlines() if line.lstrip().startswith(f"{checked['t'][-1]:.4g} "))
    assert f"{100 * checked['relative'][-1]:.2g}%" in last and "0.00%" not in last
    # and exactly that at every t, the ratio being of means on the same points (its scale came
    # from other draws: 108.55% at t = 0.0102, where (1 - sigma_t^2)^2 = 96.00%)
    t = np.array(checked["t"])
    # (1 - sigma_t^2 = e^{-2t}; the model's sigma_t^2 x s - s loses eps / e^{-2t}: 5e-12 at t = 5)
    np.testing.assert_allclose(checked["relative"], np.exp(-2 * t) ** 2, rtol=1e-10)
    score_error = json.loads((tmp_path / "bug.json").read_text())["score_error"]
    assert score_error["relative"] == checked["relative"] and max(score_error["relative_standard_error"]) < 1e-15
    assert checked["allowed"][0] == 0.5 and checked["allowed"][-1] == 0.05

    exact = run("audit", "--score", "models:exact", *AUDIT_SMALL, *TOLERANCE, "--json", "exact.json",
                cwd=tmp_path, check=False)
    assert exact.returncode == 0, exact.stderr
    assert "PASS: the relative score error is within --max-relative-error 0.001=0.5,0.1=0.05 at all 12 " \
           "profile times" in exact.stdout
    report = json.loads((tmp_path / "exact.json").read_text())
    assert report["tolerance"]["passed"] is True and report["tolerance"]["exceeded"] == []
    # common random numbers: the exact score audited is its own floor, to the bit
    assert report["floor"]["tv_bound"] == report["tv_bound"]
    assert "the model adds path KL 0;" not in exact.stdout and "the model adds path KL 0" in exact.stdout
    # one number is a tolerance at every time: the bug passes a loose one
    assert run("audit", "--score", "models:sigma2_bug", *AUDIT_SMALL, "--max-relative-error", "2",
               cwd=tmp_path).returncode == 0


@pytest.mark.parametrize("args, pattern", [
    (["--max-relative-error", "five"], "--max-relative-error: tolerance spec 'five'"),
    (["--max-relative-error", "0.1=-1"], "tolerance must be >= 0.0, got -1.0"),
    (["--max-relative-error", "1=0.1,0.5=0.2"], "the tolerance's times must increase"),
    (["--max-relative-error", "0.1,0.2"], "write each piece as T=VALUE"),
    (["--max-relative-error", "0.1=nan"], "tolerance must be finite"),
    (["--plot", "{tmp}/no/such/a.png"], "--plot {tmp}/no/such/a.png: its folder"),
    (["--plot", "{tmp}"], "is a folder; give a file name"),
])
def test_audit_tolerance_and_plot_bad_usage_exit_2_before_the_work(tmp_path, args, pattern):
    (tmp_path / "audited.py").write_text("def f(x, t):\n    raise AssertionError('the work started')\n")
    args = [a.format(tmp=tmp_path) for a in args]
    result = run("audit", "--score", "audited:f", "--target", "ring", *args, cwd=tmp_path, check=False)
    _assert_one_line_error(result, pattern.format(tmp=tmp_path))


def test_audit_json_and_plot_naming_one_file_exit_2_before_the_work(tmp_path):
    # review: --json same.png --plot same.png replaced the report with the plot, exit 0
    (tmp_path / "audited.py").write_text("def f(x, t):\n    raise AssertionError('the work started')\n")
    (tmp_path / "sub").mkdir()
    result = run("audit", "--score", "audited:f", "--target", "ring", "--json", "same.png", "--plot",
                 "sub/../same.png", cwd=tmp_path, check=False)
    _assert_one_line_error(result, "--json and --plot name the same file (sub/../same.png): the plot would "
                                   "replace the report; give two names")
    assert not (tmp_path / "same.png").exists()


def test_audit_plot_without_matplotlib_is_refused_before_the_work(tmp_path):
    blocker = tmp_path / "block"
    (blocker / "matplotlib").mkdir(parents=True)
    (blocker / "matplotlib" / "__init__.py").write_text("raise ImportError('matplotlib blocked by the test')\n")
    (tmp_path / "audited.py").write_text("def f(x, t):\n    raise AssertionError('the work started')\n")
    result = run("audit", "--score", "audited:f", "--target", "ring", "--plot", "a.png", cwd=tmp_path,
                 env={"PYTHONPATH": f"{blocker}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}, check=False)
    _assert_one_line_error(result, '--plot needs matplotlib, which is not installed: pip install "sgm_ref[plot]"')


def test_audit_plot_that_is_not_png_exits_2_before_the_work(tmp_path):
    # review: --plot audit.pdf wrote PNG bytes under a PDF name, after the work
    (tmp_path / "audited.py").write_text("def f(x, t):\n    raise AssertionError('the work started')\n")
    result = run("audit", "--score", "audited:f", "--target", "ring", "--plot", "audit.pdf", cwd=tmp_path, check=False)
    _assert_one_line_error(result, "--plot writes a PNG: give a file name ending in .png, got audit.pdf")
    assert not (tmp_path / "audit.pdf").exists()


@pytest.mark.parametrize("n, pattern", [("0", "--threads: n must be an integer >= 1, got 0"),
                                        ("64", "--threads: n must be at most")])
def test_a_bad_thread_count_names_threads(tmp_path, n, pattern):
    # a review: the message said "n must be ...", which no option of the command is called
    result = run("--threads", n, "audit", "--score", "x:y", "--target", "ring", cwd=tmp_path, check=False)
    _assert_one_line_error(result, pattern)


def test_docs_cli_lists_every_option_as_the_parser_has_it():
    """docs/cli.md's "Every option" is the parser's own list (a review found 40 options of
    --help missing from the page, which promises them all)."""
    from sgm_ref.cli import options_markdown

    page = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = page[page.index("## Every option"):]
    assert section[section.index("**`sgm-ref`**"):] == options_markdown()
    for option in ("--version", "--batch-size", "--nll", "--inputs", "--option", "--retry-failed", "--compare"):
        assert f"`{option}" in section, option


def test_messages_a_cli_review_found_wrong_or_empty(tmp_path):
    """Each named what the user did not do, or nothing at all (a review)."""
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for extra in ([], ["--force"]):  # it said 'already exists; pass --force', then 'does not exist'
        result = run("train", tmp_path / "dangling", "--steps", "1", *extra, check=False)
        _assert_one_line_error(result, "is a symbolic link to")
    _assert_one_line_error(run("train", "", "--steps", "1", check=False), "the run folder must be named, got ''")
    _assert_one_line_error(run("experiment", "rate", "", "--d", "2", "--n", "50", "--seeds", "0", "--steps", "1",
                               "--families", "mixture-iso", check=False), "the sweep folder must be named")
    result = run("audit-sampler", "--sampler", "x:y", "--replay", "ddim", "--process", "ddpm", "--grid", "leading",
                 "--steps-offset", "999", "--target", "ring", check=False)
    _assert_one_line_error(result, "--grid leading with --n-steps 10 and --steps-offset 999 on 1000 timesteps")
    out = tmp_path / "sweep"
    result = run("experiment", "rate", out, "--d", "2", "--n", "50", "--seeds", "0", "--steps", "1", "--families",
                 "mixture-iso", "--scheduler", "bogus", check=False)
    _assert_one_line_error(result, "--scheduler bogus: cannot connect to a Dask scheduler there")
    assert not out.exists()  # connected before the folder is made
    result = run("experiment", "rate", out, "--d", "2", "--n", "50", "--seeds", "0", "--steps", "1", "--families",
                 "mixture-iso", "--scheduler", "bogus", "--workers", "3", check=False)
    _assert_one_line_error(result, "with --scheduler the cluster's workers run the cells: drop --workers")


def test_resume_names_a_no_flag_as_typed(tmp_path):
    run("train", tmp_path / "r", *SMALL)
    result = run("train", tmp_path / "r", "--resume", "--no-ema-warmup", check=False)
    _assert_one_line_error(result, "drop --no-ema-warmup")  # it said 'drop --ema-warmup'


@pytest.mark.parametrize("option, value, pattern", [("--t0", "-1e-3", "--t0 must be >= "),
                                                    ("--lr", "-inf", "must be finite, got -inf"),
                                                    ("--T", "-1E5", "T")])
def test_a_negative_value_in_exponent_form_is_a_value_not_an_option(tmp_path, option, value, pattern):
    """argparse took -1e-3 and -inf for options ('expected one argument'), where -1 and -.5
    were values (a review): the value now reaches the check that says what it must be."""
    result = run("train", tmp_path / "r", "--steps", "1", option, value, check=False)
    _assert_one_line_error(result, pattern)
    assert "expected one argument" not in result.stderr and not (tmp_path / "r").exists()


def test_library_names_become_options_only_where_they_are_options():
    """The library's "batch_size must be ..." reads "--batch-size must be ..." on the command line,
    but only for a name that opens the sentence (or a "(try ...)" hint) and is an option of
    that command: a file's key or another command's name is left as written."""
    from sgm_ref import cli
    parser = cli.build_parser()
    names = cli._option_names
    assert names("batch_size must be an integer >= 1, got 0", parser, "train") == \
        "--batch-size must be an integer >= 1, got 0"
    assert names("evaluate bound_n must be an integer >= 2, got 1", parser, "demo") == \
        "--bound-n must be an integer >= 2, got 1"
    assert names("ema_decay (0 turns it off) must be < 1.0", parser, "train") == "--ema-decay (0 turns it off) must be < 1.0"
    for message, command in [("batch_size must be an integer >= 1, got 0", "sample"),  # not an option of sample
                             ("batch_size must be an integer >= 1, got 0", None),
                             ("run.json: batch_size must be an integer", "train"),  # a file's key
                             ("the run's batch_size must be an integer", "train"),
                             ("sample n (--n-samples) must be an integer >= 2, got 1", "demo"),  # named already
                             ("weights must be positive", "train")]:
        assert names(message, parser, command) == message
    assert names("diverged (try a smaller lr, a larger t0, or weighting='sigma2')", parser, "train") == \
        "diverged (try a smaller --lr, a larger --t0, or --weighting sigma2)"
    assert names("diverged (try a smaller lr or a larger t0)", parser, "train") == \
        "diverged (try a smaller --lr or a larger --t0)"
    assert names("lr diverged (try a smaller foo)", parser, "train") == "lr diverged (try a smaller foo)"


def test_a_count_beyond_memory_is_refused_before_the_old_run_goes_or_a_demo_trains(tmp_path):
    """`train --force --batch-size HUGE` removed the old run, then fit refused the batch:
    neither run was left. `demo --bound-n HUGE` trained, sampled, then had the evaluation
    refuse "n = ...; lower n" (--n is the training samples) and removed the trained run."""
    out = tmp_path / "r"
    tiny = ["--n", "100", "--width", "8", "--depth", "1", "--steps", "5"]
    run("train", out, *tiny)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    result = run("train", out, "--force", *tiny, "--batch-size", 2**50, check=False)
    _assert_one_line_error(result, "--batch-size must be at most")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    demo = tmp_path / "demo"
    for option, name in (("--bound-n", "--bound-n"), ("--profile-n", "--profile-n"),
                         ("--n-samples", "sample n (--n-samples)")):
        result = run("demo", demo, *tiny, option, 2**50, check=False)
        _assert_one_line_error(result, f"{name} must be at most")
        assert "training" not in result.stdout and not demo.exists()


def test_a_closed_stdout_stops_the_printing_not_the_work(tmp_path):
    # `sgm-ref train RUN | head -1`: the reader goes away, and the next line printed raised
    # BrokenPipeError: a finished training exited 2 ("error: Broken pipe ... once that is
    # fixed"), and a new run stopped at its first line was removed
    for folder, steps in (("R", 300), ("R2", 1200)):
        proc = subprocess.Popen([str(SCRIPT), "train", str(tmp_path / folder), "--steps", str(steps), "--n", "300"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdout.close()  # no reader: the first line printed meets a broken pipe
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=600) == 0, stderr
        assert "Broken pipe" not in stderr and "Traceback" not in stderr and "Exception ignored" not in stderr, stderr
        assert load(tmp_path / folder / "model.npz") is not None
    # the work is the same as with a reader
    run("train", tmp_path / "R3", "--steps", 300, "--n", 300)
    assert (tmp_path / "R" / "model.npz").read_bytes() == (tmp_path / "R3" / "model.npz").read_bytes()


JAX_MODELS = '''
import jax
import jax.numpy as jnp
import numpy as np

_leaked = []


@jax.jit
def _traced(x):
    _leaked.append(x)  # a tracer, kept past the trace
    return x


def minus_x(x, t):  # the score of N(0, I) under OU, in JAX
    return -jnp.asarray(x)


def minus_x_as_float64(x, t):  # JAX's float32 digits handed back as float64
    return np.asarray(-jnp.asarray(x), dtype=np.float64)


def tracer(x, t):
    _traced(jnp.asarray(x))
    return _leaked[-1]
'''


@pytest.fixture(scope="module")
def jax_forks(tmp_path_factory):
    """Commands forked from a server that has imported jax (tests/_cli.py's Forks, preload):
    the test below runs six, each of which imported jax again (~1.3 s of CPU each)."""
    from _peers import peer
    peer("jax")
    server = Forks(tmp_path_factory.mktemp("jax-forks"), preload=["jax"])
    yield server
    server.close()


def test_audit_of_a_jax_function_refuses_float32_digits_as_float64_and_names_a_tracer(tmp_path, jax_forks):
    def run(*args, check=True):
        result = jax_forks.run(*args, cwd=tmp_path, remove_output=True)
        assert not check or result.returncode == 0, result.stderr
        return result

    (tmp_path / "jaxmodels.py").write_text(JAX_MODELS)
    small = ["--target", "ring", "--n-steps", "5", "--profile-n", "20", "--bound-n", "4"]
    # without jax_enable_x64 JAX computes in float32: a float64 audit of it measured float32's
    # rounding as the model's error (and a function that casts back to float64 passed every check)
    for fn in ("minus_x", "minus_x_as_float64"):
        _assert_one_line_error(run("audit", "--score", f"jaxmodels:{fn}", *small, check=False),
                               "uses JAX, which computes in float32 unless jax_enable_x64 is on")
    # --inputs numpy: the user says it computes in the points' dtype (a score reading a global JAX array)
    assert run("audit", "--score", "jaxmodels:minus_x_as_float64", *small, "--inputs", "numpy",
               check=False).returncode == 0
    ok = run("audit", "--score", "jaxmodels:minus_x", *small, "--dtype", "float32")
    assert "score jaxmodels:minus_x (float32) against the exact score of ring" in ok.stdout
    # a traced value that escaped jax.jit: a traceback and exit 1 before
    _assert_one_line_error(run("audit", "--score", "jaxmodels:tracer", *small, "--dtype", "float32", check=False),
                           "a traced value that escaped jax.jit")
    (tmp_path / "jax64.py").write_text("import jax\njax.config.update('jax_enable_x64', True)\n"
                                       "from jaxmodels import minus_x\n")
    assert "(float32)" not in run("audit", "--score", "jax64:minus_x", *small).stdout


def test_force_with_an_option_the_training_would_refuse_keeps_the_old_run(tmp_path):
    """`train RUN --force --lr 1e308` (Adam's first step lr / (1 - beta1) overflows float64) and
    `--force --dtype float32` on a target with means of 1e50 (beyond float32) removed the old run,
    then failed in the training: neither run was left. Both are refused before the old run goes;
    `sgm-ref evaluate` of samples drawn under settings config.json no longer has (its "sample"
    section edited by hand) is refused until they are drawn again."""
    out = tmp_path / "r"
    tiny = ["--n", "100", "--width", "8", "--depth", "1", "--steps", "5"]
    run("train", out, *tiny)
    run("sample", out, "--n-samples", "50", "--n-steps", "5")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    big = tmp_path / "big.json"
    big.write_text(json.dumps({"weights": [1.0], "means": [[1e50, 0.0]], "covariances": None}))
    for args, pattern in [(["--lr", "1e308"], "--lr must be below 1.8e+307, got 1e+308"),
                          (["--target", big, "--dtype", "float32"], "dtype is float32, but GaussianMixture")]:
        _assert_one_line_error(run("train", out, "--force", *tiny, *args, check=False), pattern)
        assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    config = json.loads((out / "config.json").read_text())
    config["sample"]["n_steps"] = 7
    (out / "config.json").write_text(json.dumps(config))
    _assert_one_line_error(run("evaluate", out, "--bound-n", "4", "--profile-n", "10", "--no-plots", check=False),
                           "samples.npy was drawn with other sampler settings than config.json's \"sample\" section")
    run("sample", out)  # the edited settings: 7 steps
    run("evaluate", out, "--bound-n", "4", "--profile-n", "10", "--no-plots")
    report = json.loads((out / "report.json").read_text())
    assert report["sampler"]["n_steps"] == 7 and len(report["tv_bound"]["kl_path_per_step"]) == 7


def test_a_forked_command_is_the_installed_script(tmp_path):
    """tests/_cli.py's run forks each command from one interpreter that has imported sgm_ref (the
    ~0.8 s of CPU a start of the script costs, ~400 times in the suite). A command run so is the
    installed script's: the same exit status, stdout (less its timings) and stderr, the same
    files and arrays, on no command, a bad option, a training, a sampling and an audit of a
    module in the working folder, which sees the script's sys.argv and sys.path."""
    probe = ("import os, sys\n"
             "here = os.getcwd()\n"
             "open('seen.txt', 'w').write(repr((sys.argv, [p.replace(here, '.') for p in sys.path])))\n"
             "def minus_x(x, t):\n    return -x\n")
    commands = [[], ["train", "r", "--n", "-1"], ["train", "r", "--n", "100", "--width", "8", "--depth", "1", "--steps", "5"],
                ["sample", "r", "--n-samples", "50", "--n-steps", "5"], ["audit", "--score", "probe:minus_x", "--target",
                "ring", "--n-steps", "5", "--profile-n", "20", "--bound-n", "4"]]
    seen = {}
    for how in ("script", "fork"):
        folder = tmp_path / how
        folder.mkdir()
        (folder / "probe.py").write_text(probe)
        outcomes = []
        for args in commands:
            result = run(*args, cwd=folder, check=False, script=how == "script")
            outcomes.append((result.returncode, re.sub(r"\d+\.\d+ s\b", "_ s", result.stdout), result.stderr))
        run_files = {p.name: p for p in (folder / "r").iterdir()}
        arrays = {name: dict(np.load(path)) if path.suffix == ".npz" else np.load(path)
                  for name, path in run_files.items() if path.suffix in (".npz", ".npy")}
        texts = {name: re.sub(r'"seconds": [0-9.e+-]+', '"seconds": _', path.read_text())
                 for name, path in run_files.items() if path.suffix not in (".npz", ".npy")}
        seen[how] = (outcomes, texts, arrays, (folder / "seen.txt").read_text())
    (outcomes, texts, arrays, probed), forked = seen["script"], seen["fork"]
    assert [o[0] for o in outcomes] == [0, 2, 0, 0, 0], outcomes
    assert forked[0] == outcomes and forked[1] == texts and forked[3] == probed
    assert forked[2].keys() == arrays.keys() == {"model.npz", "samples.npy", "training_state.npz"}
    for name, value in arrays.items():
        if isinstance(value, dict):
            assert value.keys() == forked[2][name].keys()
            for key in value:
                np.testing.assert_array_equal(forked[2][name][key], value[key], strict=True)
        else:
            np.testing.assert_array_equal(forked[2][name], value, strict=True)
    assert ast.literal_eval(probed)[0][0] == str(SCRIPT)


def test_a_command_under_a_changed_environment_runs_as_the_script(tmp_path, monkeypatch):
    """A test that changes the environment gets the installed script, which reads it at its start
    (a fork of the interpreter that imported sgm_ref under the session's environment would not):
    a bad SGM_REF_THREADS is the script's one-line error, exit status 2."""
    monkeypatch.setenv("SGM_REF_THREADS", "0")
    _assert_one_line_error(run("sample", tmp_path / "none", check=False), "SGM_REF_THREADS must be an integer >= 1")


def test_the_command_line_starts_without_scipy_stats_or_the_frameworks():
    """Every sgm-ref command imports sgm_ref.cli first: a module-level `from scipy.stats import
    binom` (metrics.histogram) added 0.5 s to each command's start (0.6 -> 1.0 s). scipy.stats,
    torch and jax load only where a command uses them."""
    code = ("import sys, sgm_ref.cli, sgm_ref.interop, sgm_ref.audit, sgm_ref.evaluation, sgm_ref.metrics; "
            "print(sorted(m for m in ('scipy.stats', 'torch', 'jax', 'diffusers', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("option", ["--profile-n", "--bound-n", "--nll"])
def test_audit_sizes_beyond_memory_are_refused_as_the_options_before_the_work(tmp_path, option):
    """The metrics refused these as their own "n" ("n = ... asks for ... GiB; lower n": audit
    has no --n), --bound-n only after the profile and the integral, --nll only after the whole
    report was printed. Refused first, named as the option, with the limit of
    runs._check_sizes / evaluate_run (the same per-point sizes as a run's)."""
    from sgm_ref._validation import _physical_memory

    (tmp_path / "audited.py").write_text(AUDITED)
    result = run("audit", "--score", "audited:oracle", "--target", "gmm:d=3,k=2,radius=2,seed=0", "--n-steps", "5",
                 "--profile-n", "10", "--bound-n", "4", option, 2**50, cwd=tmp_path, check=False)
    _assert_one_line_error(result, f"{option} must be at most ")
    assert result.stdout == ""
    per_unit = {"--profile-n": 4 * 8 * 4 * 3, "--bound-n": 16 * 8 * 4 * 3, "--nll": 8 * 4 * 3}[option]
    memory = min(_physical_memory() or np.iinfo(np.intp).max, np.iinfo(np.intp).max)
    assert f"{option} must be at most {memory // per_unit} on this machine, got {2**50}" in result.stderr


def test_library_sizes_and_the_kind_hint_are_named_as_options(tmp_path):
    """fits_in_memory's "n_steps = N asks for ... GiB ...; lower n_steps" reached the user
    as the library's name (--n-steps of audit and audit-sampler), and audit-sampler's
    "or pass kind=" named the library's argument, not --kind."""
    from sgm_ref import cli
    parser = cli.build_parser()
    message = "n_steps = 99 asks for 2.24e+03 GiB of working arrays, more than this machine's 23.5 GiB; lower n_steps"
    for command in ("audit", "audit-sampler", "sample"):
        assert cli._option_names(message, parser, command) == message.replace("n_steps", "--n-steps")
    assert cli._option_names(message, parser, "train") == message  # not an option of train
    message = "n = 99 (1.2 GiB of working arrays) does not fit in memory; lower n"
    for command in ("audit", "demo", "audit-sampler"):  # a bare n: the profile's n is not a demo's --n
        assert cli._option_names(message, parser, command) == message
    message = "batch_size = 99 (1.2 GiB of working arrays) does not fit in memory; lower batch_size"
    assert cli._option_names(message, parser, "train") == message.replace("batch_size", "--batch-size")
    (tmp_path / "peer.py").write_text("def loop(*args):\n    return args[2]\n")
    base = ["audit-sampler", "--replay", "euler_maruyama", "--target", "ring", "--n", "20"]
    result = run(*base, "--sampler", "peer:loop", "--n-steps", 2**50, cwd=tmp_path, check=False)
    _assert_one_line_error(result, f"--n-steps = {2**50} asks for ")
    assert result.stderr.rstrip().endswith("; lower --n-steps")
    result = run(*base, "--sampler", "peer:loop", cwd=tmp_path, check=False)
    _assert_one_line_error(result, "takes 0 required arguments")
    assert result.stderr.rstrip().endswith("or pass --kind loop or --kind step") and "kind=" not in result.stderr
    assert run(*base, "--sampler", "peer:loop", "--kind", "loop", cwd=tmp_path, check=False).returncode == 1


def test_audit_sampler_json_of_an_overflowing_law_is_written_with_nulls(tmp_path):
    """A peer whose output law overflows float64 (x 1e200: its covariance is inf) was reported
    on stdout, then `--json` failed with "Out of range float values are not JSON compliant:
    inf", exit 2 and no file. It is written as audit --json writes one: null and "non_finite"
    naming where; the exit status is the discrepancy's, 1."""
    (tmp_path / "peer.py").write_text("def huge(score, grid, x, noises):\n    return x * 1e200\n")
    out = tmp_path / "a.json"
    result = run("audit-sampler", "--sampler", "peer:huge", "--replay", "euler_maruyama", "--process", "vp",
                 "--target", "gaussian:d=2,mean=1,std=0.5", "--n", "50", "--json", out, cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stderr == "", result.stderr
    assert result.stdout.startswith("DISCREPANCY")
    report = json.loads(out.read_text())  # strict JSON: no Infinity
    assert report["matches"] is False
    # the peer is x -> 1e200 x of the start x ~ N(0, I) (vp): its law N(0, 1e400 I) overflows on the diagonal
    assert report["laws"]["peer"]["cov"] == [[None, 0.0], [0.0, None]]
    assert report["laws"]["peer"]["mean"] == [0.0, 0.0]
    # and the KLs to and from that law, infinite, are named too (they were nulls "non_finite" left out,
    # like a figure not computed; the review of audit.py)
    kls = {f"/laws/{pair}/{kl}": "inf" for pair in ("peer_vs_replay", "peer_vs_target") for kl in ("kl", "kl_reverse")}
    assert report["non_finite"] == {"/laws/peer/cov/0/0": "inf", "/laws/peer/cov/1/1": "inf", **kls}
    assert np.isfinite(report["laws"]["replay"]["cov"]).all()


def test_edm_default_horizon_is_80_within_its_t_max():
    """audit-sampler's default T was 80 for every edm process: `--process edm:t_max=10` without
    --T was refused as "--grid must start at T <= 10.0, got 80.0" (no --grid given) or, with
    --grid karras, as "sigma_max must be <= 10.0" (no such option); audit took t_max itself
    for a finite one (1000 for edm:t_max=1000, where --help says 80). Both now take 80, or
    t_max if smaller, as --help says; karras' sigma_min/sigma_max are named --t0/--T."""
    import mpmath

    from sgm_ref import cli
    parser = cli.build_parser()
    base = ["--sampler", "m:f", "--replay", "karras_euler", "--target", "ring"]
    for t_max, T in ((10.0, 10.0), (1000.0, 80.0), (np.inf, 80.0)):
        spec = "edm" if t_max == np.inf else f"edm:t_max={t_max:g}"
        args = parser.parse_args(["audit-sampler", *base, "--process", spec])
        from sgm_ref.audit import process_from_spec
        process = process_from_spec(spec)
        grid = cli._sampler_grid(args, process)
        # uniform, 10 steps from T (within rounding of T's size: the grid is T - k h)
        np.testing.assert_allclose(grid, np.linspace(T, 0.002, 11), rtol=0, atol=2 * 2.0**-52 * T)
        assert grid[0] == T and grid[-1] == 0.002
        args = parser.parse_args(["audit-sampler", *base, "--process", spec, "--grid", "karras", "--n-steps", "5"])
        grid = cli._sampler_grid(args, process)
        # Karras et al. (5) with rho = 7, from sigma_max = T to sigma_min = 0.002, then 0 (50 digits)
        with mpmath.workdps(50):
            a, b = mpmath.mpf(T) ** (mpmath.mpf(1) / 7), mpmath.mpf(0.002) ** (mpmath.mpf(1) / 7)
            expected = np.array([float((a + mpmath.mpf(i) / 4 * (b - a)) ** 7) for i in range(5)])
        np.testing.assert_allclose(grid[:-1], expected, rtol=4 * 2.0**-52, atol=0)
        assert grid[0] == T and grid[-1] == 0
        args = parser.parse_args(["audit", "--score", "m:f", "--target", "ring", "--process", spec])
        assert cli._audit_process(args)[1] == T
    args = parser.parse_args(["audit-sampler", *base, "--process", "edm:t_max=10", "--grid", "karras", "--T", "80"])
    with pytest.raises(ValueError, match=r"^--T \(sigma_max\) must be <= 10.0, got 80.0$"):
        cli._sampler_grid(args, process_from_spec("edm:t_max=10"))


def test_a_report_never_replaces_an_input_file(tmp_path):
    """`audit --target t.json --json t.json` replaced the user's target definition with the
    report (exit 0), and --json naming the --score or --sampler .py file or --grid-file
    replaced those: refused before the work, the inputs left byte for byte."""
    target = tmp_path / "t.json"
    target.write_text(json.dumps(to_record(from_spec("gmm:d=3,k=2,radius=2,seed=0"))))
    (tmp_path / "audited.py").write_text(AUDITED)
    (tmp_path / "g.txt").write_text("1 0.5 0.001\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    audit = ["audit", "--score", "audited.py:oracle", "--n-steps", "5", "--profile-n", "10", "--bound-n", "4"]
    sampler = ["audit-sampler", "--sampler", "audited.py:oracle", "--replay", "euler_maruyama", "--n", "20"]
    for args, pattern in [
            ([*audit, "--target", "t.json", "--json", target], "--json "),
            ([*audit, "--target", "t.json", "--json", "./audited.py"], "--json ./audited.py is the file of --score"),
            ([*audit, "--target", "t.json", "--plot", "audited.py"], "the plot would replace it"),
            ([*sampler, "--target", str(target), "--json", "t.json"], "--json t.json is the file of --target"),
            ([*sampler, "--target", "ring", "--grid-file", "g.txt", "--json", "g.txt"], "is the file of --grid-file"),
            ([*sampler, "--target", "ring", "--json", "audited.py"], "--json audited.py is the file of --sampler")]:
        result = run(*args, cwd=tmp_path, check=False)
        _assert_one_line_error(result, pattern)
        assert "would replace it; give another name" in result.stderr and result.stdout == ""
        assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    # MODULE:NAME by its dotted name (imported from the working folder): its file was overwritten
    # by the report, exit 0 (only the MODULE.py: form was refused)
    for args, pattern in [
            (["audit", "--score", "audited:oracle", *audit[3:], "--target", "t.json", "--json", "audited.py"],
             "--json audited.py is the file of --score"),
            (["audit-sampler", "--sampler", "audited:oracle", *sampler[3:], "--target", "t.json", "--json",
              "audited.py"], "--json audited.py is the file of --sampler")]:
        result = run(*args, cwd=tmp_path, check=False)
        _assert_one_line_error(result, pattern)
        assert result.stdout == "" and (tmp_path / "audited.py").read_bytes() == before["audited.py"]


def test_the_input_check_compares_what_the_report_would_replace(tmp_path):
    """--target " t.json" (read as t.json) with --json t.json replaced the target with the
    report, exit 0: the check compared " t.json", no file. A file named like a preset
    (--target ring, a report of an earlier run written as 'ring') was refused as the file of
    --target, which is not read; a --json symbolic link to the target was refused as
    replacing it, where the atomic write replaces the link and leaves the target as it was."""
    target = tmp_path / "t.json"
    target.write_text(json.dumps(to_record(from_spec("gmm:d=3,k=2,radius=2,seed=0"))))
    (tmp_path / "audited.py").write_text(AUDITED)
    (tmp_path / "models.py").write_text(DEMO_MODELS)
    original = target.read_bytes()
    sizes = ["--n-steps", "5", "--profile-n", "10", "--bound-n", "4"]
    audit = ["audit", "--score", "audited.py:oracle", *sizes]
    result = run(*audit, "--target", " t.json", "--json", "t.json", cwd=tmp_path, check=False)
    _assert_one_line_error(result, "--json t.json is the file of --target: the report would replace it")
    assert target.read_bytes() == original
    (tmp_path / "ring").write_text('{"an earlier": "report"}')  # not read: --target ring is the preset
    run("audit", "--score", "models:exact", *sizes, "--target", "ring", "--json", "ring", cwd=tmp_path)
    assert json.loads((tmp_path / "ring").read_text())["target"] == "ring"
    link = tmp_path / "link.json"
    for target_name, output in (("t.json", "link.json"), ("link.json", "t.json"), ("link.json", "link.json")):
        if not link.is_symlink():
            link.unlink(missing_ok=True)
            link.symlink_to("t.json")
        result = run(*audit, "--target", target_name, "--json", output, cwd=tmp_path, check=False)
        if target_name == "t.json":  # the link is replaced by the report, t.json kept
            assert result.returncode == 0, result.stderr
            assert not link.is_symlink() and json.loads(link.read_text())["target"] == "t.json"
        else:  # the target's file through its link, or the link the user named: refused as before
            _assert_one_line_error(result, f"--json {output} is the file of --target: the report would replace it")
            assert link.is_symlink()
        assert target.read_bytes() == original


def test_audit_says_a_vacuous_bound_s_path_kl_once(tmp_path):
    """With 2 steps the bound is vacuous (TV <= 1) with a finite path KL, which bound_text
    gives in its explanation: the bound's line and the floor's repeated it ("...; path KL
    5.49 ± 1.2) (path KL 5.49 ± 1.2)"). Each line says it once; a bound that is not vacuous
    keeps its path KL in the parentheses."""
    (tmp_path / "models.py").write_text(DEMO_MODELS)
    out = run("audit", "--score", "models:exact", "--target", "ring", "--n-steps", "2", "--profile-n", "50",
              "--bound-n", "8", cwd=tmp_path).stdout
    lines = [line for line in out.splitlines() if "certified TV bound" in line]
    assert len(lines) == 2 and all("vacuous" in line and line.count("path KL") == 1 + line.count("adds path KL")
                                   for line in lines), lines
    out = run("audit", "--score", "models:exact", "--target", "ring", "--n-steps", "20", "--profile-n", "50",
              "--bound-n", "8", cwd=tmp_path).stdout
    lines = [line for line in out.splitlines() if "certified TV bound" in line]
    assert all("vacuous" not in line and line.count("path KL") == 1 + line.count("adds path KL") for line in lines)


def test_audit_explains_a_negative_kl_prior_as_evaluate_does(tmp_path):
    """audit printed "KL prior -2.03e-06" in its bound line (the ring's exact score, --seed 2,
    --bound-n 4) with no word on it, where evaluate adds why a KL can read below 0: a Monte-Carlo
    estimate, not clipped, and whether it is within its standard errors of 0."""
    (tmp_path / "ringscore.py").write_text("from sgm_ref import OU, GaussianMixture\n_ring = GaussianMixture.ring()\n\n"
                                           "def oracle(x, t):\n    return _ring.score(x, t, OU())\n")
    path = tmp_path / "report.json"
    result = run("audit", "--score", "ringscore:oracle", "--target", "ring", "--n-steps", "5", "--profile-n", "10",
                 "--bound-n", "4", "--seed", "2", "--json", path, cwd=tmp_path)
    bound = json.loads(path.read_text())["tv_bound"]
    assert bound["kl_prior"] < 0 and f"KL prior {bound['kl_prior']:.3g})" in result.stdout
    note = (f"note: the KL prior KL(p_T || N(0, I)) = {bound['kl_prior']:.2g} ± {bound['kl_prior_se']:.2g} is below 0 "
            "because it is an unbiased estimate (not clipped) of a quantity >= 0; within 1 standard error of 0, "
            "consistent with 0")
    assert note in result.stdout.splitlines(), result.stdout


@pytest.mark.parametrize("model_dtype, option, fix", [
    ("float32", [], ""),
    ("float32", ["--nll", "10"], " and drop --nll 10 (its Jacobian-vector products need float64)"),
    ("float64", ["--dtype", "float32"], "")])
def test_audit_names_a_score_model_of_another_dtype_as_the_dtype_option(tmp_path, model_dtype, option, fix):
    """A ScoreModel of a float32 network audited at the default --dtype float64 failed at its first
    call with its own message, "--score models:model raised ValueError: x must have dtype float32
    (the network's), got float64; pass np.asarray(x, dtype=np.float32) (called at t = 0.001)":
    an x the user does not pass. It is refused before the work as the command's option, as a torch
    module of float32 parameters and a function returning float32 are; the fix it names runs."""
    (tmp_path / "models.py").write_text(
        "import numpy as np\nfrom sgm_ref import MLP, ScoreModel\n"
        f"model = ScoreModel(MLP(2, widths=(4,), dtype=np.{model_dtype}, rng=0))\n")
    common = ("audit", "--score", "models:model", "--target", "ring", "--n-steps", "2", "--profile-n", "4",
              "--bound-n", "4")
    result = run(*common, *option, cwd=tmp_path, check=False)
    _assert_one_line_error(result, f"--score models:model is a ScoreModel of a {model_dtype} network, which takes "
                                   f"{model_dtype} points only: pass --dtype {model_dtype}{fix}")
    assert "np.asarray" not in result.stderr
    if model_dtype == "float32" and not option:  # the fix it names runs (one run: each costs a process)
        assert "certified TV bound" in run(*common, "--dtype", model_dtype, cwd=tmp_path).stdout


def test_a_grid_file_whose_magic_is_damaged_is_not_called_pickled_data(tmp_path):
    """A flipped bit of an .npy grid's magic made NumPy take it for a pickle and advise loading it
    "unsafely" with allow_pickle (the second fuzz of the day's changes)."""
    from sgm_ref import OU
    from sgm_ref.cli import _read_grid_file

    path = tmp_path / "g.npy"
    np.save(path, np.array([1.0, 0.5, 0.1]))
    np.testing.assert_array_equal(_read_grid_file(str(path), OU()), [1.0, 0.5, 0.1])
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError) as info:
        _read_grid_file(str(path), OU())
    assert str(info.value) == (f"--grid-file {path}: not a readable .npy array: its first bytes are not NumPy's (a "
                               "damaged or foreign file)")


def _main(argv, capsys):
    """sgm_ref.cli.main in this process: (status, stdout, stderr)."""
    from sgm_ref import cli

    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_a_report_path_that_names_no_regular_file_is_refused_before_the_work(tmp_path, capsys):
    """`--json out/` passed the check, ran the whole audit and printed it, then failed to write
    (sgm_ref.io.atomic_path refuses a trailing '/'); `--json PATH` on a pipe or a device passed,
    and the write's rename replaced it with a regular file (run as root, `--json /dev/null` turned
    the system's /dev/null into a file: found in a review, and put back by hand)."""
    import stat

    started = tmp_path / "started.py"
    started.write_text("def f(*args):\n    raise AssertionError('the work started')\n")
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    (tmp_path / "to-pipe.json").symlink_to(fifo)
    (tmp_path / "a-file").write_text("")
    cases = [(tmp_path / "nosuch", "/", "names a folder, not a file"),
             (tmp_path / "nosuch", "/.", "names a folder, not a file"),
             (fifo, "", "is not a regular file (a device, a pipe or a socket)"),
             (tmp_path / "to-pipe.json", "", "is not a regular file"),
             (tmp_path / "a-file", "/x.json", f"{tmp_path / 'a-file'} is not a folder")]  # said 'does not exist'
    commands = (["audit", "--score", f"{started}:f", "--target", "ring"],
                ["audit-sampler", "--sampler", f"{started}:f", "--replay", "euler_maruyama", "--target", "ring",
                 "--kind", "loop"])
    for path, tail, pattern in cases:
        for command in commands:
            for option in ("--json", "--plot") if command[0] == "audit" else ("--json",):
                name = f"{path}{tail}"
                status, out, err = _main([*command, option, name], capsys)
                assert status == 2 and out == "", (name, out, err)
                assert err.count("\n") == 1 and err.startswith(f"sgm-ref: error: {option} {name}: "), err
                assert pattern in err and "the work started" not in err, err
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and os.path.islink(tmp_path / "to-pipe.json")
    assert not (tmp_path / "nosuch").exists()


def test_out_of_memory_for_the_layers_names_depth(tmp_path, capsys, monkeypatch):
    """`train --depth 2**53` ran out of memory building the layer widths and was told to use a
    smaller --n, --width or --batch-size: not the option that asked for it. The network's size
    check refuses it first (naming width and depth); where the machine's memory is unknown, the
    MemoryError names --depth."""
    from sgm_ref import _validation
    for command in ("train", "demo"):
        status, _, err = _main([command, tmp_path / "r", "--depth", 2**53, "--steps", "1"], capsys)
        assert status == 2 and err.startswith(f"sgm-ref: error: the network of width 128 and depth {2**53} is too "
                                              "large for this machine in any dimension") and "--depth" in err, err
        assert not (tmp_path / "r").exists()
    monkeypatch.setattr(_validation, "_physical_memory", lambda: None)
    for command in ("train", "demo"):
        status, _, err = _main([command, tmp_path / "r", "--depth", 2**53, "--steps", "1"], capsys)
        assert status == 2 and err.startswith("sgm-ref: error: out of memory: use a smaller ") and "--depth" in err, err
        assert not (tmp_path / "r").exists()


def test_rate_report_names_an_empty_or_missing_folder_as_its_option(tmp_path, capsys):
    """`rate-report ''` said "error:  has no results.jsonl" (no folder named), and a missing
    --compare folder's error did not say it was --compare's."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.jsonl").write_text("")
    for argv, message in ((["", "--out", tmp_path / "r.md"], "the sweep folder must be named, got ''"),
                          ([sweep, "--compare", ""], "--compare must name another sweep's folder, got ''"),
                          ([sweep, "--compare", tmp_path / "nope"], f"--compare {tmp_path / 'nope'}: no results.jsonl")):
        status, out, err = _main(["experiment", "rate-report", *argv], capsys)
        assert status == 2 and out == "" and err.startswith(f"sgm-ref: error: {message}"), err
    assert sorted(os.listdir(tmp_path)) == ["sweep"]


def test_rate_report_refuses_to_compare_a_sweep_with_itself(tmp_path, capsys):
    """`rate-report RUN --compare RUN` wrote a comparison section of ratios of 1 (a sweep
    against its own rows); the same folder by another path (RUN/., a link) too."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    (sweep / "results.jsonl").write_text("")
    (tmp_path / "link").symlink_to(sweep)
    for other in (sweep, f"{sweep}{os.sep}.", tmp_path / "link"):
        status, out, err = _main(["experiment", "rate-report", sweep, "--out", tmp_path / "r.md", "--compare", other],
                                 capsys)
        assert status == 2 and out == "" and err == (f"sgm-ref: error: --compare {other} is the sweep {sweep} itself: "
                                                     "give the folder of another sweep (one run with other settings)\n")
    assert sorted(os.listdir(tmp_path)) == ["link", "sweep"] and os.listdir(sweep) == ["results.jsonl"]


def test_an_unrecognized_option_points_at_its_command_s_help(tmp_path, capsys):
    """Every command's typo was refused with "(see sgm-ref --help)", a page that lists the
    commands but none of their options; a --threads given after the command is said to be
    sgm-ref's own."""
    for argv, expected in (
            (["train", tmp_path / "r", "--stesp", "5"], "unrecognized arguments: --stesp 5 (see sgm-ref train --help)"),
            (["experiment", "rate", tmp_path / "r", "--quic"],
             "unrecognized arguments: --quic (see sgm-ref experiment rate --help)"),
            (["sample", tmp_path / "r", "--threads", "1"], "unrecognized arguments: --threads 1; --threads is an "
                                                           "option of sgm-ref itself: give it before the command "
                                                           "(see sgm-ref sample --help)"),
            (["--bogus"], "unrecognized arguments: --bogus (see sgm-ref --help)")):
        status, out, err = _main(argv, capsys)
        assert (status, out, err) == (2, "", f"sgm-ref: error: {expected}\n")
    assert not (tmp_path / "r").exists()


def test_audit_says_its_integral_is_weighted_by_g2_over_2(tmp_path, capsys):
    """The audit printed "integral over [t0, T]: V" beside a profile of E|s - grad log p_t|^2,
    while V is int g(t)^2/2 E|s - grad log p_t|^2 dt (the Girsanov term): the profile's own
    integral on OU only; on VP the weight beta(t)/2 runs from 0.05 to 10."""
    (tmp_path / "minus_x.py").write_text("def score(x, t):\n    return -x\n")
    status, out, err = _main(["audit", "--score", f"{tmp_path / 'minus_x.py'}:score", "--target", "ring", "--process",
                              "vp", "--n-steps", "2", "--profile-n", "4", "--bound-n", "4", "--seed", "1"], capsys)
    assert status == 0, err
    line = next(line for line in out.splitlines() if "integral over" in line)
    assert line.startswith("g(t)^2/2-weighted integral over [0.001, 1]: "), line


def test_a_replay_option_given_twice_is_refused(tmp_path, capsys):
    """`--option eta=0 --option eta=1` ran the replay with eta = 1, the first value silently
    dropped (a target spec's repeated parameter is refused)."""
    from sgm_ref.cli import _replay_options

    assert _replay_options(["eta=0", "alphas_cumprod=diffusers"]) == {"eta": 0, "alphas_cumprod": "diffusers"}
    status, out, err = _main(["audit-sampler", "--sampler", "x:y", "--replay", "ddim", "--process", "ddpm",
                              "--target", "ring", "--option", "eta=0", "--option", "eta=1"], capsys)
    assert (status, out, err) == (2, "", "sgm-ref: error: --option eta is given twice (eta=0 and eta=1); give it once\n")


def test_audit_sampler_names_a_horizon_past_the_process_s_as_t(tmp_path, capsys):
    """`audit-sampler --process vp --T 2` (no --grid) was refused as "--grid must start at T <= 1.0
    for VP(...), got 2.0": the grid's check (compare_sampler's) in the library's word, which the
    command reads as its --grid option. The option given is --T, with either grid of times."""
    (tmp_path / "peer.py").write_text("def loop(score, grid, x, noises):\n    return x\n")
    for process, grid, t_max in (("vp", [], "1.0"), ("edm:t_max=100", ["--grid", "geometric"], "100.0")):
        status, out, err = _main(["audit-sampler", "--sampler", f"{tmp_path / 'peer.py'}:loop", "--replay",
                                  "euler_maruyama", "--process", process, *grid, "--target", "ring", "--T", "200",
                                  "--n", "4"], capsys)
        assert (status, out) == (2, ""), err
        assert re.fullmatch(rf"sgm-ref: error: --T must be <= {t_max} for \w+\([^)]*\), got 200\.0\n", err), err


def test_evaluate_help_says_which_options_config_json_keeps():
    """`evaluate --help` said every option given is saved in config.json; --no-plots and --nll
    are not (config.json's "evaluate" section has no key for them: the next evaluate without them
    draws the plots and skips the likelihood). The help names the options that are not kept."""
    import argparse

    from sgm_ref.cli import build_parser
    from sgm_ref.runs import DEFAULTS

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    evaluate = commands.choices["evaluate"]
    options = {a.dest: max(a.option_strings, key=len) for a in evaluate._actions if a.option_strings
               and a.dest != "help"}
    kept = {dest for dest in options if dest in DEFAULTS["evaluate"]}
    assert kept == {"bound_n", "profile_n"}
    description = " ".join(evaluate.description.split())
    assert all(options[dest] not in description for dest in kept), description
    assert all(options[dest] in description for dest in options.keys() - kept), description


def test_audit_prints_a_huge_relative_error_in_three_digits(tmp_path, capsys):
    """-x audited on edm up to T = 1e5 (its score is -x / (1 + t^2) there) printed the relative
    error at T as "10000000002179999989760.00%": 24 digits of a Monte-Carlo estimate, run past
    its column. From 10,000% on the column gives three significant digits, as the report's JSON
    holds them; below, _percent's two decimals (and two digits below 1%) as before."""
    (tmp_path / "minus_x.py").write_text("def score(x, t):\n    return -x\n")
    path = tmp_path / "a.json"
    status, out, err = _main(["audit", "--score", f"{tmp_path / 'minus_x.py'}:score", "--target", "ring", "--process",
                              "edm", "--T", "1e5", "--n-steps", "2", "--profile-n", "4", "--bound-n", "4", "--json",
                              path], capsys)
    assert status == 0, err
    relative = json.loads(path.read_text())["score_error"]["relative"]
    assert relative[-1] > 1e15  # the column's case
    rows = [line.split() for line in out.splitlines()[2:2 + len(relative)]]
    for r, row in zip(relative, rows):
        expected = f"{100 * r:.3g}%" if r >= 100 else f"{100 * r:.2g}%" if 0 < r < 0.01 else f"{r:.2%}"
        assert row[4] == expected and len(row[4]) <= 9, (r, row)


def test_train_asks_only_training_s_sizes_of_the_machine(tmp_path, capsys, monkeypatch):
    """`train` checked the array sizes of every stage of the run, sampling's and evaluation's at
    the run's defaults too: a target whose training fits but whose default 10,000 samples or 256
    bound pairs do not was refused ("evaluate bound_n must be at most 246 on this machine, got
    256" for gmm:d=200000 in 23.5 GiB, whose --n 100 points are 160 MB), naming a setting train has no
    option for. It trains; `sample` refuses its own count as its option, and takes a smaller one."""
    from sgm_ref import _validation

    monkeypatch.setattr(_validation, "_physical_memory", lambda: 4 * 2**20)  # 10,000 samples in d = 64: 5 MiB
    run_ = tmp_path / "r"
    tiny = ["--target", "gmm:d=64,k=2,radius=1", "--n", "100", "--width", "4", "--depth", "1", "--steps", "2",
            "--batch-size", "4"]
    status, out, err = _main(["train", run_, *tiny], capsys)
    assert status == 0 and err == "", err
    assert (run_ / "model.npz").is_file()
    status, out, err = _main(["sample", run_, "--n-steps", "2"], capsys)
    assert status == 2 and err.startswith("sgm-ref: error: sample n (--n-samples) must be at most "), err
    assert _main(["sample", run_, "--n-steps", "2", "--n-samples", "100"], capsys)[0] == 0
    assert np.load(run_ / "samples.npy").shape == (100, 64)
    # a demo runs every stage: it still refuses before training what its sampling cannot hold
    status, out, err = _main(["demo", tmp_path / "d", *tiny], capsys)
    assert status == 2 and err.startswith("sgm-ref: error: sample n (--n-samples) must be at most "), err
    assert not (tmp_path / "d").exists()


def test_a_py_file_s_own_imports_are_found_beside_it(tmp_path):
    """`--score models/wrapper.py:score`, whose file imports a module beside it (`from helper
    import minus_x`, as a wrapper imports its network's module), failed "No module named
    'helper'" unless run from models/: `python models/wrapper.py` finds it. So do audit and
    audit-sampler now, from any working folder."""
    models = tmp_path / "models"
    models.mkdir()
    (models / "helper_mod_h55.py").write_text("def minus_x(x):\n    return -x\n")
    (models / "wrapper.py").write_text("from helper_mod_h55 import minus_x\n\n\ndef score(x, t):\n    return minus_x(x)\n"
                                       "\n\ndef loop(score, grid, x, noises):\n    return minus_x(minus_x(x))\n")
    result = run("audit", "--score", "models/wrapper.py:score", "--target", "ring", "--n-steps", "2", "--profile-n",
                 "4", "--bound-n", "4", cwd=tmp_path, check=False)
    assert result.returncode == 0 and "certified TV bound" in result.stdout, result.stderr
    result = run("audit-sampler", "--sampler", f"{models / 'wrapper.py'}:loop", "--replay", "euler_maruyama",
                 "--target", "ring", "--n", "4", "--n-steps", "2", cwd=tmp_path, check=False)
    assert result.returncode == 1 and result.stdout.startswith("DISCREPANCY"), result.stderr  # x, not a sampler
