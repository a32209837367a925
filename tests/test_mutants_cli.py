"""Mutation tests of sgm_ref/cli.py: each test kills a mutant of the command that the other
command-line tests let survive (described in its docstring; the ids are those of the review
that made them), against an independent reference: a closed form, diffusers' documented
spacing, the library's own size check, or the behaviour --help and the code's comments state.

All in this process (sgm_ref.cli.main or the command's own helpers), no subprocess and no
training: the library calls a command makes are replaced by recorders where only what the
command passes on is under test."""

import json
import os

import numpy as np
import pytest

from sgm_ref import cli

SCRATCH = '''def minus_x(x, t):  # the exact score of N(0, I) under OU at every t
    return -x
'''


def _main(argv, capsys):
    status = cli.main([str(a) for a in argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A folder holding scores.py (the function above), made the working folder."""
    (tmp_path / "scores.py").write_text(SCRATCH)
    monkeypatch.chdir(tmp_path)
    return tmp_path


AUDIT_SMALL = ["--target", "product:d=2,shift=0,std=1", "--profile-n", 8, "--bound-n", 4, "--n-steps", 4]


def test_each_training_sampling_and_evaluation_option_reaches_its_config_key():
    """Mutants m02 (VP's default beta_min read from beta_max) and m04 (--no-ema-warmup dropped);
    also m05 (--n-steps read from --n-samples) and m06 (--bound-n and --profile-n swapped),
    which a slower demo test kills: what a demo
    passes to runs.make_config, against the options typed and the defaults --help states
    (VP beta(0) = 0.1, beta(1) = 20, Song et al.'s)."""
    args = cli.build_parser().parse_args(
        ["demo", "r", "--process", "vp", "--beta-max", "15", "--no-ema-warmup", "--ema-decay", "0.5",
         "--n", "123", "--n-samples", "9", "--n-steps", "7", "--bound-n", "11", "--profile-n", "13",
         "--sampler", "exponential", "--grid", "uniform", "--width", "5", "--depth", "3", "--steps", "17",
         "--batch-size", "19", "--lr", "0.25", "--t0", "0.01", "--T", "2", "--checkpoint-every", "4"])
    options = cli._training_options(args)
    assert options["process"] == {"name": "VP", "beta_min": 0.1, "beta_max": 15.0}
    assert options["data"] == {"n": 123}
    assert options["train"]["ema_warmup"] is False and options["train"]["ema_decay"] == 0.5
    assert {k: options["train"][k] for k in ("steps", "batch_size", "lr", "t0", "T", "checkpoint_every")} == {
        "steps": 17, "batch_size": 19, "lr": 0.25, "t0": 0.01, "T": 2.0, "checkpoint_every": 4}
    assert options["model"]["width"] == 5 and options["model"]["depth"] == 3
    assert cli._sampling_options(args) == {"n": 9, "method": "exponential", "grid": "uniform", "n_steps": 7}
    assert cli._evaluation_options(args) == {"bound_n": 11, "profile_n": 13}
    args = cli.build_parser().parse_args(["demo", "r", "--process", "vp", "--beta-min", "0.3"])
    assert cli._training_options(args)["process"] == {"name": "VP", "beta_min": 0.3, "beta_max": 20.0}
    assert cli._training_options(args)["train"]["ema_warmup"] is None  # not given: the library's default
    args = cli.build_parser().parse_args(["demo", "r", "--ema-warmup"])
    assert cli._training_options(args)["train"]["ema_warmup"] is True


def test_sample_passes_every_given_option_to_the_library_a_zero_too(tmp_path, capsys, monkeypatch):
    """Mutant m11 (sample's options kept `if v` instead of `if v is not None`): `sample RUN --t0 0`
    dropped the 0, sampled with the run's t0 and said nothing; --help says the options given are
    saved (and so checked by runs.sample_run, which refuses t0 = 0)."""
    from sgm_ref import runs

    seen = []

    def sample_run(folder, options=None, progress=None):
        seen.append((folder, options))
        return np.zeros((3, 2))

    monkeypatch.setattr(runs, "sample_run", sample_run)
    status, out, _ = _main(["sample", tmp_path / "r", "--t0", "0", "--T", "0.5", "--n-steps", "6"], capsys)
    assert status == 0 and out.startswith("3 samples in ")
    assert seen == [(str(tmp_path / "r"), {"t0": 0.0, "T": 0.5, "n_steps": 6})]
    seen.clear()
    assert _main(["sample", tmp_path / "r"], capsys)[0] == 0 and seen == [(str(tmp_path / "r"), {})]


def test_rate_experiment_runs_two_local_workers_by_default_and_refuses_none(tmp_path, capsys, monkeypatch):
    """Mutants m12 (the default --workers 1, where --help says 2) and m13 (--workers 0 let through
    to the library, whose refusal names no option of the command): what `experiment rate` hands
    to rate.make_grid and sweep.run_sweep (both recorders here: sgm_ref.experiments' imports,
    scipy.stats among them, take seconds)."""
    import sys
    import types

    seen = []

    def make_grid(*args):
        seen.append(("grid", args))
        return "GRID"

    def run_sweep(folder, grid, *, workers=2, scheduler=None, retry_failed=False, log=print, **kwargs):
        seen.append(("sweep", grid, workers, scheduler, retry_failed))
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "summary.md"), "w") as f:
            f.write("summary\n")

    fake = types.ModuleType("sgm_ref.experiments")
    fake.rate, fake.sweep = types.SimpleNamespace(make_grid=make_grid), types.SimpleNamespace(run_sweep=run_sweep)
    monkeypatch.setitem(sys.modules, "sgm_ref.experiments", fake)
    base = ["experiment", "rate", tmp_path / "out", "--d", "2,8", "--n", "500", "--seeds", "0,3"]
    assert _main(base, capsys)[0] == 0
    assert _main([*base, "--quick", "--workers", "3", "--retry-failed", "--steps", "7"], capsys)[0] == 0
    assert seen == [("grid", (False, None, [2, 8], [500], [0, 3], None, None, None)),
                    ("sweep", "GRID", 2, None, False),
                    ("grid", (True, None, [2, 8], [500], [0, 3], 7, None, None)),
                    ("sweep", "GRID", 3, None, True)]
    status, out, err = _main([*base, "--workers", "0"], capsys)
    assert (status, out, err) == (2, "", "sgm-ref: error: --workers must be >= 1, got 0\n")
    assert seen[-1][0] == "grid"  # the sweep is not started


@pytest.mark.parametrize("extra, message", [
    (["--seed", "-1"], "--seed must be an integer >= 0, got -1"),  # m14: refused with numpy's words, unnamed
    (["--profile-n", "1"], "--profile-n must be an integer >= 2, got 1"),  # m15: a standard error of 1 point
    (["--nll", "1"], "--nll must be 0 or at least 2 points, with --dtype float64 (its finite-difference "
                     "Jacobian-vector products need float64), got --nll 1 --dtype float64"),  # m16
    (["--t0", "0"], "need 0 < t0 < T, got t0=0.0, T=5.0"),  # m17: t0 = 0 let through
    (["--process", "vp:beta_min=0.2", "--beta-min", "0.3"],
     "--process vp:beta_min=0.2 already sets beta_min; drop --beta-min"),  # m22: the option silently won
    (["--process", "ddpm", "--time", "timestep", "--t0", "0.0009"],
     "--t0 must be >= 1/N = 0.001 with --time timestep (timestep 0 is t = 1/N), got 0.0009"),
])
def test_audit_refuses_each_bad_option_by_its_name_before_the_work(scratch, capsys, extra, message):
    """Mutants m15 and m17 (m14, m16 and m22 too, which the subprocess tests also kill): each
    check of cmd_audit dropped or loosened. Each option
    is refused by its own name before the work (cmd_audit's comments), the --score module not
    yet imported: a loosened check let the count through to the library, whose refusal came
    after the import of the user's model (a torch model's import can take seconds) and, for
    --nll, after the whole audit."""
    (scratch / "boom.py").write_text("raise RuntimeError('imported')\n")
    status, out, err = _main(["audit", "--score", "boom.py:f", *AUDIT_SMALL, *extra], capsys)
    assert (status, out, err) == (2, "", f"sgm-ref: error: {message}\n")


@pytest.mark.parametrize("extra, T", [
    (["--process", "vp", "--T", "1"], 1.0),  # m18: T = t_max is the process's own horizon
    (["--process", "ddpm", "--time", "timestep", "--t0", "0.001"], 1.0),  # m19: t0 = 1/N is timestep 0
    ([], 5.0),  # m20: OU's default horizon, 5 (--help)
    (["--process", "edm:t_max=10"], 10.0), (["--process", "edm"], 80.0), (["--process", "vp"], 1.0),
])
def test_audit_takes_the_limits_its_checks_allow_and_the_documented_horizons(scratch, capsys, extra, T):
    """Mutant m18 (T = t_max refused; also m19, t0 = 1/N refused with --time timestep, and m20,
    OU's default T not 5, which slower tests kill too): the boundaries are accepted, and the
    report's T is --help's default (5 for ou, 80 for edm or its t_max if smaller, else the
    process's largest time)."""
    status, out, err = _main(["audit", "--score", "scores.py:minus_x", *AUDIT_SMALL, *extra, "--json", "r.json"],
                             capsys)
    assert status == 0, err
    report = json.loads((scratch / "r.json").read_text())
    assert report["T"] == T and report["score_error"]["t"][-1] == pytest.approx(T, rel=1e-15)


def test_numpy_score_passes_the_documented_time_argument_and_converts_in_closed_form():
    """Mutant m50 (--time timestep handed N t instead of N t - 1; also m25, --time sigma handed
    alpha_t, and m26, the sign of A in score = A x + B value, which test_audit_conventions
    kills): what _numpy_score hands the
    function and what it makes of its value, against the closed forms of OU (alpha = e^-t,
    sigma^2 = -expm1(-2t)) and --help's timestep N t - 1 of a ddpm process."""
    from sgm_ref.processes import from_spec

    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 3))
    t = np.array([1e-3, 0.01, 0.3, 1.0, 4.0])
    alpha, var = np.exp(-t), -np.expm1(-2 * t)
    value = rng.standard_normal((5, 3))
    seen = []

    def fn(x_, arg):
        seen.append(arg.copy())
        return value.copy()

    ou = from_spec("ou")
    s = cli._numpy_score(fn, "m:f", ou, "x0", "sigma")(x, t)
    np.testing.assert_allclose(seen.pop(), np.sqrt(var), rtol=2e-16, atol=0)
    np.testing.assert_allclose(s, (alpha[:, None] * value - x) / var[:, None], rtol=1e-14, atol=0)
    s = cli._numpy_score(fn, "m:f", ou, "eps", "t")(x, t)
    assert np.array_equal(seen.pop(), t)
    np.testing.assert_allclose(s, -value / np.sqrt(var)[:, None], rtol=1e-14, atol=0)
    ddpm = from_spec("ddpm")
    i = np.array([0, 1, 17, 500, 999])
    cli._numpy_score(fn, "m:f", ddpm, "eps", "timestep")(x, (i + 1) / 1000)
    np.testing.assert_allclose(seen.pop(), i, rtol=0, atol=1e-12)


def test_a_report_path_ending_in_dotdot_names_a_folder(tmp_path):
    """Mutant m28 ('..' dropped from the names of no file): `--json missing/..` names the folder
    above, not a file; it passed the check, since missing/ is not there to be a folder."""
    with pytest.raises(ValueError, match=r"names a folder, not a file; give a file name$"):
        cli._check_json_path(str(tmp_path / "missing" / ".."))
    with pytest.raises(ValueError, match=r"names a folder, not a file; give a file name$"):
        cli._check_json_path(os.path.join(str(tmp_path), "missing", "."), "--plot")


def test_the_fail_line_lists_four_times_and_counts_the_rest():
    """Mutants m37 (three times shown) and m47 (the rest counted from six on): with five times
    over, the line shows four and says "and 1 more": shown + counted = exceeded."""
    t = [0.001, 0.01, 0.1, 0.5, 1.0, 2.0]
    checked = {"spec": "0.01", "t": t, "relative": [0.5, 0.25, 0.125, 0.0625, 0.03125, 0.001],
               "allowed": [0.01] * 6, "exceeded": t[:5], "passed": False}
    text = cli._tolerance_text(checked)
    assert text == ("FAIL: the relative score error exceeds --max-relative-error 0.01 at 5 of 6 profile times: "
                    "t = 0.001 (0.5 > 0.01), t = 0.01 (0.25 > 0.01), t = 0.1 (0.125 > 0.01), "
                    "t = 0.5 (0.0625 > 0.01), and 1 more")
    checked["exceeded"] = t[:4]
    assert cli._tolerance_text(checked).endswith("t = 0.5 (0.0625 > 0.01)")


def test_an_estimate_of_zero_keeps_its_standard_error():
    """Mutant m38 (`value == 0 or se == 0`): "0" alone is an exact zero (value and standard error
    both 0, the exact score's column); a mean of 0 with a spread, or a value with none, is shown
    with it."""
    assert cli._pm_short(0.0, 0.0) == "0"
    assert cli._pm_short(0.0, 0.02) == "0 ± 0.02"
    assert cli._pm_short(0.5, 0.0) == "0.5 ± 0"
    assert cli._pm_short(float("inf"), 0.0) == cli._pm_short(None, 0.0) == "overflows float64"


def test_audit_prints_the_path_kl_the_model_adds_and_records_its_options(scratch, capsys):
    """Mutant m24 (the report's bound_n read from --profile-n; also m41, the model's excess path
    KL printed as a sum, which a slower test kills): the printed excess is the JSON report's kl_path minus the floor's,
    and the report records the options given."""
    (scratch / "wrong.py").write_text("def f(x, t):\n    return -1.5 * x\n")
    status, out, err = _main(["audit", "--score", "wrong.py:f", *AUDIT_SMALL, "--seed", 3, "--json", "r.json"],
                             capsys)
    assert status == 0, err
    report = json.loads((scratch / "r.json").read_text())
    assert (report["profile_n"], report["bound_n"], report["seed"]) == (8, 4, 3)
    assert report["sampler"] == {"method": "euler_maruyama", "grid": "geometric", "n_steps": 4}
    excess = report["tv_bound"]["kl_path"] - report["floor"]["tv_bound"]["kl_path"]
    assert excess > 0 and f"; the model adds path KL {excess:.3g}\n" in out


def test_audit_of_one_step_says_step(scratch, capsys):
    """"1 uniform steps" (noticed by the mutation review): one step is a step."""
    (scratch / "wrong.py").write_text("def f(x, t):\n    return -1.5 * x\n")
    status, out, err = _main(["audit", "--score", "wrong.py:f", *AUDIT_SMALL[:-1], 1, "--grid", "uniform"], capsys)
    assert status == 0, err
    assert "certified TV bound for euler_maruyama, 1 uniform step: " in out


def _sampler_grid(*argv):
    from sgm_ref.audit import process_from_spec

    args = cli.build_parser().parse_args(["audit-sampler", "--sampler", "m:f", "--replay", "ddim", "--target", "ring",
                                          *map(str, argv)])
    return cli._sampler_grid(args, process_from_spec(args.process))


def test_audit_sampler_grids_reach_their_documented_limits(tmp_path):
    """Mutants m31 (--n-steps N refused with diffusers' spacings), m36 (a --grid-file starting at
    t_max refused) and m51 (one ending below 0 let through, to be refused later naming no file);
    m34 (--T = t_max refused) is killed elsewhere too. The limits themselves are grids. --n-steps
    1000 of --grid leading is diffusers' "leading" spacing arange(n) * (N // n), reversed, at
    step ratio 1: every timestep 999..0 (as times (i + 1) / N), then the data. (The installed
    DDIMScheduler's own timesteps are tests/test_audit.py's; its import alone takes seconds.)"""
    expected = np.append((np.arange(999, -1, -1) + 1) / 1000, 0.0)
    np.testing.assert_array_equal(_sampler_grid("--process", "ddpm", "--grid", "leading", "--n-steps", 1000), expected)
    grid = _sampler_grid("--process", "vp", "--T", 1, "--n-steps", 4)
    np.testing.assert_allclose(grid, np.linspace(1.0, 1e-3, 5), rtol=4e-16, atol=0)
    assert grid[0] == 1.0
    (tmp_path / "grid.txt").write_text("1.0, 0.5, 0.001\n")
    np.testing.assert_array_equal(_sampler_grid("--process", "vp", "--grid-file", tmp_path / "grid.txt"),
                                  [1.0, 0.5, 0.001])
    (tmp_path / "below.txt").write_text("1.0, 0.5, -0.001\n")
    with pytest.raises(ValueError, match=r"^--grid-file .*below\.txt: its times must lie in \[0, 1\.0\] for VP\("):
        _sampler_grid("--process", "vp", "--grid-file", tmp_path / "below.txt")


@pytest.mark.parametrize("process, law", [("ou", "N(0, I)"), ("edm", "N(0, sigma_T^2 I)"),
                                          ("ve", "N(0, sigma_T^2 I)")])
def test_audit_names_the_sampler_s_start_law_in_the_kl_prior_note(scratch, capsys, monkeypatch, process, law):
    """Mutant m42 (the KL prior's note said N(0, I) for every process): the sampler of a process
    that is not variance-preserving starts from N(0, sigma_T^2 I) (cmd_audit's comment, and
    sgm_ref.samplers), and the note on a KL prior below 0 names that law."""
    from sgm_ref import evaluation

    labels = []
    monkeypatch.setattr(evaluation, "_below_zero_note", lambda label, value, se, **kw: labels.append(label) or "")
    status, _, err = _main(["audit", "--score", "scores.py:minus_x", *AUDIT_SMALL, "--process", process], capsys)
    assert status == 0, err
    assert labels == [f"the KL prior KL(p_T || {law})"]


def test_audit_sampler_refuses_a_negative_seed_by_name_before_importing_the_sampler(scratch, capsys):
    """Mutant m43 (audit-sampler's --seed check dropped): NumPy's refusal of the seed came after
    the --sampler module was imported, and named no option."""
    (scratch / "boom.py").write_text("raise RuntimeError('imported')\n")
    status, out, err = _main(["audit-sampler", "--sampler", "boom.py:loop", "--replay", "ddim", "--target", "ring",
                              "--seed", "-1"], capsys)
    assert (status, out, err) == (2, "", "sgm-ref: error: --seed must be an integer >= 0, got -1\n")


@pytest.mark.parametrize("value", ["-nan", "-NaN", "-inf", "-Infinity", "-1e-3", "-.5E+2"])
def test_a_negative_non_number_is_a_value_of_the_option(scratch, capsys, value):
    """Mutant m45 (nan left out of the parser's negative-number pattern): `--t0 -nan` was
    'expected one argument' instead of what t0 must be."""
    status, _, err = _main(["audit", "--score", "scores.py:minus_x", "--target", "ring", "--t0", value], capsys)
    assert status == 2 and err.startswith("sgm-ref: error: need 0 < t0 < T, got t0="), err


def test_evaluate_passes_no_plots_nll_and_only_the_options_given(tmp_path, capsys, monkeypatch):
    """Mutant m55 (evaluate drew the plots whatever --no-plots said): what cmd_evaluate hands to
    evaluation.evaluate_run (a recorder here), and the files it then names."""
    import contextlib

    from sgm_ref import evaluation, runs

    seen = []

    def evaluate_run(folder, options=None, plots=True, progress=None, nll=0):
        seen.append((folder, options, plots, nll))
        return {}, [os.path.join(folder, "samples.png")] if plots else [], None

    monkeypatch.setattr(evaluation, "evaluate_run", evaluate_run)
    monkeypatch.setattr(evaluation, "summary", lambda report: "SUMMARY")
    monkeypatch.setattr(runs, "writing", lambda folder: contextlib.nullcontext())
    run = str(tmp_path / "r")
    status, out, _ = _main(["evaluate", run, "--no-plots", "--nll", "3", "--bound-n", "5"], capsys)
    assert status == 0 and out.startswith("SUMMARY\nevaluated in ") and out.endswith("report.md\n")
    status, out, _ = _main(["evaluate", run, "--profile-n", "7"], capsys)
    assert status == 0 and out.endswith("report.md, samples.png\n")
    assert seen == [(run, {"bound_n": 5}, False, 3), (run, {"profile_n": 7}, True, 0)]


def test_the_beta_options_set_a_sub_vp_process_too():
    """Mutant m57 (--beta-min/--beta-max taken for VP only): the sub-VP SDE of Song et al. has the
    same beta(t) (its process takes beta_min and beta_max, as cmd_audit's check allows), and
    the options set it; a process without a beta is refused."""
    from sgm_ref.processes import SubVP

    parser = cli.build_parser()
    args = parser.parse_args(["audit", "--score", "m:f", "--target", "ring", "--process", "subvp", "--beta-min", "0.2",
                              "--beta-max", "15"])
    process, T = cli._audit_process(args)
    assert isinstance(process, SubVP) and (process.beta_min, process.beta_max, T) == (0.2, 15.0, process.t_max)
    args = parser.parse_args(["audit", "--score", "m:f", "--target", "ring", "--process", "edm", "--beta-min", "0.2"])
    with pytest.raises(ValueError, match="^--beta-min and --beta-max set the VP process: add --process vp$"):
        cli._audit_process(args)


def test_audit_figures_are_the_library_s_at_the_seed_given(scratch, capsys):
    """Mutant m58 (score_report handed default_rng(seed + 1)): the report of `audit --seed 3` is
    evaluation.score_report's with np.random.default_rng(3), bit for bit (same seed, same
    bits; the report says seed 3, so its figures must be those of seed 3)."""
    from sgm_ref.evaluation import score_report
    from sgm_ref.processes import OU
    from sgm_ref.targets.spec import from_spec

    (scratch / "wrong.py").write_text("def f(x, t):\n    return -1.5 * x\n")
    status, _, err = _main(["audit", "--score", "wrong.py:f", *AUDIT_SMALL, "--seed", 3, "--json", "r.json"], capsys)
    assert status == 0, err
    report = json.loads((scratch / "r.json").read_text())
    expected = score_report(lambda x, t: -1.5 * x, from_spec("product:d=2,shift=0,std=1"), OU(), t0=1e-3, T=5.0,
                            method="euler_maruyama", grid="geometric", n_steps=4, rng=np.random.default_rng(3),
                            profile_n=8, bound_n=4, floor=True)
    assert report["score_error"]["error"] == list(expected["score_error"]["error"])
    assert report["tv_bound"]["kl_path"] == expected["tv_bound"]["kl_path"] > 0
