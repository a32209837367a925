"""Tests that kill surviving mutants of sgm_ref.evaluation and sgm_ref._threads (mutation
testing, review h66).

Each test pins a number or a documented contract that the existing tests left free: the mutant
named in its docstring passed tests/test_evaluation.py (or tests/test_threads.py). Each test
fails on its mutant and passes on the code. References are independent of the code under test:
scipy.stats.sem, a hand computation from the docstring's definition (a mean of known numbers, a
closed-form geometric grid), the text a docstring states, or the random streams the code's
comments name, drawn afresh here.
"""

import json
import re

import numpy as np
import pytest
import scipy.stats

from sgm_ref import OU, GaussianMixture
from sgm_ref import _threads
from sgm_ref import evaluation as ev
from test_mutants_lock_threads import _deadline  # fail, not hang, on a mutant that loops forever


# -- exact_score_loss: its standard error -----------------------------------------------------


def test_exact_score_loss_standard_error_is_the_standard_error_of_the_mean_of_its_rows():
    """For p_0 = N(0, I) under OU, grad log p_t(x) = -x, so each row of the documented loss is
    sigma_t^2 |-x_t + z / sigma_t|^2 (weighting "sigma2") on the draws x0, t, z in that order;
    with n = 5 the standard error must be scipy.stats.sem of those rows (ddof 1, / sqrt(n)).
    Mutants `rows.std(ddof=1)` -> `ddof=0` (0.894x) and `/ np.sqrt(n)` -> `/ np.sqrt(n - 1)`
    (1.118x) passed: the existing test checks 0 < se < value at n = 4000."""
    from sgm_ref.losses import sample_times

    g, n, t0, T = GaussianMixture([1.0], [[0.0, 0.0]]), 5, 1e-3, 5.0
    value, se = ev.exact_score_loss(g, OU(), t0=t0, T=T, weighting="sigma2", time_distribution="uniform", n=n,
                                    rng=np.random.default_rng(7))
    rng = np.random.default_rng(7)
    x0 = g.sample(n, rng)
    t = sample_times(n, t0, T, rng, "uniform")
    z = rng.standard_normal(x0.shape)
    alpha, sigma2 = np.exp(-t), -np.expm1(-2 * t)  # OU: alpha_t = e^-t, sigma_t^2 = 1 - e^-2t
    xt = alpha[:, None] * x0 + np.sqrt(sigma2)[:, None] * z
    rows = sigma2 * np.sum((-xt + z / np.sqrt(sigma2)[:, None]) ** 2, axis=1)
    assert value == pytest.approx(rows.mean(), rel=1e-12)
    assert se == pytest.approx(scipy.stats.sem(rows), rel=1e-12)


# -- sample_report: refusals ---------------------------------------------------------------------


def test_sample_report_refuses_a_single_sample():
    """Its docstring: samples that are not a finite (n >= 2, d) array raise ValueError. Mutant
    `n < 2` -> `n < 1` passed: one point then gave a report whose every figure was "not
    computed" (each metric's own refusal read as "not computable in float64"), no error."""
    g = GaussianMixture.ring()
    x = g.sample(1, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"x must have at least 2 rows \(points\), got 1"):
        ev.sample_report(x, g, np.random.default_rng(1), n_reference=10, two_sample_n=5, bins=5)


# -- score_report: the documented points and times ----------------------------------------------


def test_score_report_calls_the_score_at_profile_times_log_spaced_times_and_4_profile_n_integral_points():
    """Its docstring: profile_n points at each of profile_times log-spaced times in [t0, T], and
    4 x profile_n points for the integral. The score's calls are recorded: the profile's times
    are t0 (T / t0)^(k / (K - 1)) (closed form) and the integral gets 28 = 4 x 7 points.
    Mutants `4 * profile_n` -> `profile_n` (the integral on 7 points) and `np.geomspace` ->
    `np.linspace` (times 0.001, 2.5005, 5) passed."""
    g, p = GaussianMixture.ring(), OU()
    calls = []

    def score(x, t):
        calls.append((x.copy(), np.asarray(t, dtype=np.float64).copy()))
        return 0.5 * g.score(x, t, p)

    t0, T, K, n = 1e-3, 5.0, 3, 7
    report = ev.score_report(score, g, p, t0=t0, T=T, method="probability_flow", grid="geometric", n_steps=4,
                             rng=np.random.default_rng(0), profile_n=n, profile_times=K)
    want = [t0 * (T / t0) ** (k / (K - 1)) for k in range(K)]
    np.testing.assert_allclose(report["score_error"]["t"], want, rtol=1e-14)
    assert [x.shape[0] for x, _ in calls] == [n] * K + [4 * n]
    for (_, t), tk in zip(calls[:K], want):
        np.testing.assert_allclose(t, tk, rtol=1e-14)


def test_score_report_profile_standard_error_is_that_of_the_mean_of_the_squared_errors():
    """score_error["standard_error"][k] is the standard error of the mean of |s - grad log p_t|^2
    over the profile's points at t_k (scipy.stats.sem of the rows, by hand from the points the
    score was called with, float64). Mutant `"standard_error": profile.standard_errors` ->
    `profile.relative_standard_errors` passed (for s = 0.5 x exact those are ~1e-17, not 0.82)."""
    g, p = GaussianMixture.ring(), OU()
    calls = []

    def score(x, t):
        calls.append((x.copy(), np.asarray(t, dtype=np.float64).copy()))
        return 0.5 * g.score(x, t, p)

    report = ev.score_report(score, g, p, t0=1e-3, T=5.0, method="probability_flow", grid="geometric", n_steps=4,
                             rng=np.random.default_rng(0), profile_n=7, profile_times=3)
    se = report["score_error"]
    for k, (x, t) in enumerate(calls[:3]):
        rows = np.sum((0.5 * g.score(x, t, p) - g.score(x, t, p)) ** 2, axis=1)
        assert se["error"][k] == pytest.approx(rows.mean(), rel=1e-13)
        assert se["standard_error"][k] == pytest.approx(scipy.stats.sem(rows), rel=1e-12)
        assert se["relative"][k] == pytest.approx(0.25, rel=1e-13)  # (1 - 0.5)^2 on the same points


# -- the training summary: the final loss's window -------------------------------------------------


def test_final_loss_mean_is_the_mean_of_the_last_100_losses(tmp_path):
    """FINAL_LOSS_WINDOW: the report's final loss is the mean over the last 100 steps (as
    `sgm-ref train` prints it). Losses 0, 1, ..., 149: the last 100 are 50..149, mean 99.5 (by
    hand). Mutants `loss[-window:]` -> `loss[-window - 1:]` (99.0) and `FINAL_LOSS_WINDOW = 99`
    (100.0) passed tests/test_evaluation.py, whose runs train fewer than 100 steps (the window is
    then all of them); only test_cli.py's 300-step demo, a CLI run of several seconds, caught them."""
    (tmp_path / "history.json").write_text(json.dumps({"loss": [float(i) for i in range(150)]}))
    summary = ev._training_summary(str(tmp_path), 150)
    assert summary == {"steps": 150, "first_loss": 0.0, "last_loss": 149.0, "final_loss_mean": 99.5,
                       "final_loss_window": 100}


# -- the percent format ------------------------------------------------------------------------------


def test_percent_is_two_decimals_from_1_percent_and_two_significant_digits_below():
    """_percent's docstring: two decimals, or two significant digits below 1%. At exactly 1%
    it is "1.00%"; 0.1234% is "0.12%". Mutants `abs(value) < 0.01` -> `<= 0.01` ("1%") and
    `.2g` -> `.3g` below 1% ("0.123%") passed."""
    assert ev._percent(0.01) == "1.00%"
    assert ev._percent(-0.01) == "-1.00%"
    assert ev._percent(1.234e-3) == "0.12%"
    assert ev._percent(-4.567e-5) == "-0.0046%"
    # two significant digits where the second is a zero (it printed "0.5%" and "0.004%")
    assert [ev._percent(v) for v in (0.005, 4e-5, 1e-9, 0.00999)] == ["0.50%", "0.0040%", "1.0e-07%", "1.0%"]


def test_a_zero_relative_error_and_a_zero_estimate_read_as_zero():
    """The exact score's relative error is 0 exactly (float64): "0.00%", the two-decimal form
    (0 is not "below 1%" in _percent's sense); an estimate of exactly 0 is not "below 0" and
    gets no note. Mutants `0 < abs(value) < 0.01` -> `0 <= abs(value)` ("0%") and `not value <
    0` -> `not value <= 0` ("MMD^2 = 0 ± 0.1 is below 0 ...") passed."""
    assert ev._percent(0.0) == "0.00%"
    assert ev._below_zero_note("MMD^2", 0.0, 0.1) is None
    assert ev._below_zero_note("MMD^2", -0.0, 0.1) is None


# -- negative estimates: the verdict's thresholds --------------------------------------------------


def test_a_negative_estimate_exactly_3_standard_errors_below_0_is_within_3():
    """_below_zero_note: k = -value / se <= 3 is "within 3 standard errors of 0, consistent with
    0". At k = 3 exactly (value -3, se 1) mutant `k <= 3` -> `k < 3` passed the tests and then
    looked for the decimals that show 3.0 above 3 forever (an endless loop)."""
    with _deadline(2.0):
        note = ev._below_zero_note("MMD^2", -3.0, 1.0)
    assert note.endswith("within 3 standard errors of 0, consistent with 0")


@pytest.mark.parametrize("points, consistent", [(49, True), (50, False)])
def test_a_likelihood_gap_from_fewer_than_50_points_gets_no_verdict(points, consistent):
    """VERDICT_POINTS = 50: from fewer points a gap 5 standard errors below 0 is "still
    consistent with 0", from 50 on "please report it" (the docstring's "50 or more points give
    a verdict"). Mutant `VERDICT_POINTS = 49` passed (the tests use 4 and 3000 points)."""
    note = ev._below_zero_note("the likelihood gap", -5.0, 1.0, points=points)
    assert ("still consistent with 0" in note) is consistent
    assert ("please report it" in note) is not consistent
    if consistent:
        assert note.endswith("50 or more points give a verdict")


# -- non-finite notes ---------------------------------------------------------------------------------


def test_an_overflowing_profile_of_one_time_names_that_time():
    """non_finite_notes: "every t of the profile (a to b)" is for several times; a profile of
    one time (profile_times = 1) names it, "t = 0.1". Mutant `len(bad) == len(t) > 1` ->
    `>= 1` passed and wrote "every t of the profile (0.1 to 0.1)"."""
    notes = ev.non_finite_notes({"score_error": {"t": [0.1], "error": [float("inf")]}})
    assert len(notes) == 1 and notes[0].startswith("the score error overflows float64 at t = 0.1: ")


# -- evaluate_run: settings and what feeds each figure ---------------------------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A sampled run whose training times (t0 0.02, T 3) differ from the sampler's (0.01, 2.5)
    and whose evaluate n (60) differs from its profile_n (5)."""
    from sgm_ref import runs

    folder = tmp_path_factory.mktemp("run") / "run"
    config = runs.make_config({"data": {"n": 100}, "model": {"width": 4, "depth": 1},
                               "train": {"steps": 3, "checkpoint_every": 1000, "t0": 0.02, "T": 3.0},
                               "sample": {"n": 40, "n_steps": 3, "t0": 0.01, "T": 2.5},
                               "evaluate": {"n": 60, "two_sample_n": 20, "profile_n": 5, "profile_times": 2,
                                            "bound_n": 2}})
    runs.create(folder, config)
    runs.train(folder, progress=False)
    runs.sample_run(folder)
    return folder


def test_evaluate_run_refuses_nll_1_before_the_work(tmp_path):
    """evaluate_run: nll must be 0 or an integer >= 2, refused before any work. Mutant `nll ==
    1` refusal dropped passed tests/test_evaluation.py (only test_likelihood_cli.py's CLI run, after
    a demo, asks nll = 1): the folder (a run never trained) was then read, and the refusal was
    another, about the run's files."""
    from sgm_ref import runs

    folder = tmp_path / "run"
    runs.create(folder, runs.make_config({"data": {"n": 100}, "model": {"width": 4, "depth": 1}}))
    with pytest.raises(ValueError, match=r"^nll must be 0 \(no likelihood\) or at least 2 points"):
        ev.evaluate_run(folder, plots=False, progress=False, nll=1)


def test_evaluate_run_feeds_the_exact_score_loss_the_training_objective_and_the_floor_its_own_stream(
        tiny_run, monkeypatch):
    """report["training"]["exact_score_loss"] is the loss of the training objective: the run's
    train t0, T, weighting and time distribution, on evaluate n draws (the spy records the call).
    The sliced-Wasserstein floor is drawn from the stream "sliced floor" (so it does not depend
    on --nll): recomputed here from fresh streams, it is the report's to the bit. Mutants
    `n=e["n"]` -> `n=e["profile_n"]`, `t0=tr["t0"], T=tr["T"]` -> the sampler's, and the floor
    drawn from the evaluate stream passed."""
    from sgm_ref.metrics import sliced_wasserstein
    from sgm_ref.runs import load_samples, read_config, streams
    from sgm_ref.targets.spec import from_record

    seen = []
    real = ev.exact_score_loss

    def spy(*args, **kw):
        seen.append(kw)
        return real(*args, **kw)

    monkeypatch.setattr(ev, "exact_score_loss", spy)
    report, _, _ = ev.evaluate_run(tiny_run, plots=False, progress=False)
    config = read_config(tiny_run)
    tr, e = config["train"], config["evaluate"]
    (kw,) = seen
    assert {k: kw[k] for k in ("t0", "T", "weighting", "time_distribution", "n")} == {
        "t0": 0.02, "T": 3.0, "weighting": tr["weighting"], "time_distribution": tr["time_distribution"], "n": 60}
    target = from_record(config["target_definition"])
    x = load_samples(tiny_run, target.dim).astype(np.float64)
    reference = target.sample(e["n"], streams(config["seed"])["evaluate"])  # the evaluation's first draw
    floor_rng, values = streams(config["seed"])["sliced floor"], {1: [], 2: []}
    for _ in range(4):  # the floor's documented draws: a fresh sample, its SW_1, its SW_2
        fresh = target.sample(len(x), floor_rng)
        for p in (1, 2):
            values[p].append(sliced_wasserstein(fresh, reference, floor_rng, p=p).value)
    for p in (1, 2):
        v = np.array(values[p])
        floor = report["samples"][f"sliced_wasserstein_{p}"]["exact_sample_floor"]
        assert floor["value"] == v.mean() and floor["spread"] == v.std(ddof=1)


# -- _threads: the documented defaults ---------------------------------------------------------------


def test_spin_defaults_are_the_values_the_module_docstring_states():
    """The module docstring (and docs/cli.md, docs/speed.md): OPENBLAS_THREAD_TIMEOUT=4 and
    OMP_WAIT_POLICY=PASSIVE. Mutant `"OPENBLAS_THREAD_TIMEOUT": "4"` -> `"5"` passed: the
    tests compare the environment with SPIN_DEFAULTS itself."""
    stated = dict(re.findall(r"^    ([A-Z_]+)=(\S+) ", _threads.__doc__, flags=re.M))
    assert stated == {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "PASSIVE"}
    assert _threads.SPIN_DEFAULTS == stated


def test_an_empty_spin_setting_of_the_user_is_kept():
    """_set_spin_defaults: "the user's choice wins, even an empty one": OMP_WAIT_POLICY="" is
    left as it is and not reported as set. Mutant `name not in environ` -> `not
    environ.get(name)` passed (the tests' user values are non-empty) and overwrote it."""
    environ = {"OMP_WAIT_POLICY": ""}
    assert _threads._set_spin_defaults(environ) == {"OPENBLAS_THREAD_TIMEOUT": "4"}
    assert environ == {"OMP_WAIT_POLICY": "", "OPENBLAS_THREAD_TIMEOUT": "4"}


@pytest.mark.parametrize("chosen", ["SGM_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"])
def test_busy_hint_gives_no_advice_when_the_user_chose_a_count(monkeypatch, chosen):
    """busy_hint's docstring: None when the user chose a count (SGM_REF_THREADS,
    OPENBLAS_NUM_THREADS or OMP_NUM_THREADS set). Mutant dropping OMP_NUM_THREADS from that
    list passed (the test sets OPENBLAS_NUM_THREADS only)."""
    for name in ("SGM_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert "SGM_REF_THREADS=1 " in _threads.busy_hint(busy=2, cpus=2, threads=2)
    monkeypatch.setenv(chosen, "2")
    assert _threads.busy_hint(busy=2, cpus=2, threads=2) is None
