"""Reports: score_report against the oracle itself, sample_report, and the text of report.md."""

import json
import os
import re

import numpy as np
import pytest

from sgm_ref import OU, GaussianMixture
from sgm_ref.evaluation import bound_text, markdown, sample_report, score_report, summary


def test_score_report_of_the_oracle_is_zero_error():
    g = GaussianMixture.paper_family(3, 2, 2.0, rng=0)
    report = score_report(lambda x, t: g.score(x, t), g, OU(), t0=1e-2, T=3.0, method="euler_maruyama",
                          grid="geometric", n_steps=20, rng=np.random.default_rng(0), profile_n=50, profile_times=4,
                          bound_n=4)
    assert report["score_error"]["error"] == [0.0] * 4 and report["score_error"]["integral"]["value"] == 0.0
    assert all(v > 0 for v in report["score_error"]["oracle_mean_square"])
    assert report["tv_bound"]["kl_path"] > 0  # discretisation only
    flow = score_report(lambda x, t: g.score(x, t), g, OU(), t0=1e-2, T=3.0, method="probability_flow",
                        grid="uniform", n_steps=5, rng=np.random.default_rng(0), profile_n=10, profile_times=2)
    assert flow["tv_bound"] is None
    with pytest.raises(ValueError, match="need 0 < t0 < T"):
        score_report(g.score, g, OU(), t0=0.0, T=3.0, method="euler_maruyama", grid="uniform", n_steps=5,
                     rng=np.random.default_rng(0))


def test_score_report_of_a_shifted_oracle_has_the_known_error():
    # s = grad log p_t + c: the error is |c|^2 at every point, and the integral over
    # [t0, T] is |c|^2 (T - t0) (OU: weight beta / 2 = 1), in expectation over the times
    g = GaussianMixture.paper_family(3, 2, 2.0, rng=0)
    c = np.array([0.3, -0.1, 0.2])
    report = score_report(lambda x, t: g.score(x, t) + c, g, OU(), t0=1e-2, T=3.0, method="euler_maruyama",
                          grid="geometric", n_steps=20, rng=np.random.default_rng(0), profile_n=2000,
                          profile_times=4, bound_n=4)
    se = report["score_error"]
    np.testing.assert_allclose(se["error"], c @ c, rtol=1e-12)
    np.testing.assert_allclose(se["relative"], c @ c / np.array(se["oracle_mean_square"]), rtol=1e-12)
    integral = se["integral"]
    assert 0 < integral["standard_error"] < 0.05 * c @ c * (3.0 - 1e-2)
    assert abs(integral["value"] - c @ c * (3.0 - 1e-2)) < 4 * integral["standard_error"]


def test_score_report_relative_error_is_a_same_draw_ratio():
    """s = c x exact has relative error E|s - grad log p_t|^2 / E|grad log p_t|^2 = (1 - c)^2
    exactly. The report divided the profile's error by a scale from other draws: c = 0.5 on
    the ring at profile_n = 300 read 0.216 to 0.287; now the ratio is of means on the same
    points, (1 - c)^2 to rounding, with standard error 0 to rounding."""
    g, process = GaussianMixture.ring(), OU()
    for c, seed in ((0.5, 0), (0.3, 1), (1.7, 2)):
        report = score_report(lambda x, t, c=c: c * g.score(x, t, process), g, process, t0=1e-3, T=5.0,
                              method="euler_maruyama", grid="geometric", n_steps=20, rng=np.random.default_rng(seed),
                              profile_n=300, profile_times=6, bound_n=4, floor=True)
        se = report["score_error"]
        np.testing.assert_allclose(se["relative"], (1 - c) ** 2, rtol=2e-15)
        assert max(se["relative_standard_error"]) <= 1e-15
        np.testing.assert_allclose(se["error"], np.multiply(se["relative"], se["oracle_mean_square"]), rtol=1e-14)
        floor = report["floor"]["score_error"]  # the same points: the same oracle mean square
        assert floor["oracle_mean_square"] == se["oracle_mean_square"]
        assert floor["relative"] == [0.0] * 6 and floor["relative_standard_error"] == [0.0] * 6


def test_sample_report_and_text():
    g = GaussianMixture.ring()
    rng = np.random.default_rng(1)
    samples = sample_report(g.sample(500, rng), g, rng, n_reference=500, two_sample_n=200, bins=10)
    assert samples["histogram_tv"]["value"] < 0.2 and samples["n"] == 500
    assert len(samples["component_weights"]["soft"]) == 8
    report = {"target": "ring", "sampler": {"method": "euler_maruyama", "grid": "uniform", "n_steps": 5, "t0": 0.01,
                                            "T": 3.0}, "samples": samples,
              "score_error": {"t": [0.1], "error": [0.5], "standard_error": [0.01], "relative": [0.1],
                              "integral": {"value": 0.2, "standard_error": 0.01}},
              "tv_bound": {"tv": 0.3, "tv_se": 0.01, "kl": 0.1, "kl_path": 0.1, "kl_path_se": 0.01, "kl_prior": 0.0,
                           "kl_prior_se": 0.0, "tv_early_stopping": 0.01, "tv_early_stopping_se": 0.001}}
    text = markdown(report)
    assert "| certified TV upper bound | 0.3000 ± 0.01 |" in text and "| 0.1 | 0.5 ± 0.01 | 10.00% |" in text
    assert "histogram TV" in summary(report)


def test_a_bound_above_one_says_it_is_vacuous():
    bound = {"tv": 1.0, "tv_se": 0.1, "kl": 8.0, "kl_path": 8.0, "kl_path_se": 0.2, "tv_early_stopping": 0.01}
    assert bound_text(bound).startswith("1 (vacuous: TV(p_0, p_t0) + sqrt(KL / 2) = 2.01;")
    assert bound_text({**bound, "tv": 0.25, "tv_se": 0.01}) == "0.2500 ± 0.01"


# -- the training loss's floor: the loss of the exact score --------------------------

@pytest.mark.parametrize("weighting, time_distribution", [("sigma2", "log-uniform"), ("none", "uniform")])
def test_exact_score_loss_is_dsm_loss_of_the_exact_score(weighting, time_distribution):
    # for p_0 = N(0, I) under OU every p_t is N(0, I), so grad log p_t(x) = -x: a "residual"
    # model (s = -x + net) with all parameters 0 is the exact score, and the run's own loss
    # function on the same draws (x0, t, z) must give the same per-batch loss
    from sgm_ref import MLP, ScoreModel
    from sgm_ref.evaluation import exact_score_loss
    from sgm_ref.losses import dsm_loss, sample_times

    g = GaussianMixture([1.0], [[0.0, 0.0, 0.0]])
    n, t0, T = 4000, 1e-3, 5.0
    value, se = exact_score_loss(g, OU(), t0=t0, T=T, weighting=weighting, time_distribution=time_distribution,
                                 n=n, rng=np.random.default_rng(3))
    rng = np.random.default_rng(3)  # the documented order of the draws: x0, t, z
    x0 = g.sample(n, rng)
    t = sample_times(n, t0, T, rng, time_distribution)
    z = rng.standard_normal(x0.shape)
    model = ScoreModel(MLP(3, (8,), rng=0), OU(), "residual")
    model.network.params[:] = 0.0
    assert np.array_equal(model(x0, t), -x0)
    expected, _ = dsm_loss(model, x0, t, z, weighting, grad=False)
    assert value == pytest.approx(expected, rel=1e-12)
    assert 0 < se < value
    # and it is the floor: a wrong score (here -x + 0.3) has a larger loss on the same draws
    shifted = ScoreModel(MLP(3, (8,), rng=0), OU(), "residual")
    shifted.network.params[:] = 0.0
    shifted.network.params[-3:] = 0.3  # the output layer's biases
    assert np.allclose(shifted(x0, t), -x0 + 0.3)
    assert dsm_loss(shifted, x0, t, z, weighting, grad=False)[0] > value


def test_exact_score_loss_refuses_bad_input():
    from sgm_ref.evaluation import exact_score_loss

    g = GaussianMixture.ring()
    kw = dict(t0=1e-3, T=5.0, weighting="sigma2", time_distribution="uniform", n=10, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="weighting must be one of"):
        exact_score_loss(g, OU(), **{**kw, "weighting": "sigma"})
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        exact_score_loss(g, OU(), **{**kw, "n": 1})
    with pytest.raises(ValueError, match="need 0 < t0 < T"):
        exact_score_loss(g, OU(), **{**kw, "t0": 6.0})


# -- non-finite numbers: said in words, and JSON that stays JSON ------------------------

def test_json_ready_replaces_non_finite_numbers_and_says_where():
    import json

    from sgm_ref.evaluation import json_ready

    report = {"a": {"value": float("inf"), "standard_error": float("nan")}, "list": [1.0, -np.inf, np.float64(2)],
              "odd/key~": float("nan"), "fine": 3}
    out = json_ready(report)
    assert out["a"] == {"value": None, "standard_error": None} and out["list"] == [1.0, None, 2.0]
    assert out["non_finite"] == {"/a/value": "inf", "/a/standard_error": "nan", "/list/1": "-inf",
                                 "/odd~1key~0": "nan"}
    json.dumps(out, allow_nan=False)  # valid JSON
    assert report["a"]["value"] == float("inf")  # the report itself is not changed
    assert json_ready({"x": [1.0, 2.0]}) == {"x": [1.0, 2.0]}  # nothing to say: no "non_finite"


def _overflowing_score_report():
    """score_report of a score 1e200 x (its error and path KL overflow) on a 2-component mixture."""
    g = GaussianMixture.paper_family(2, 2, 2.0, rng=0)
    return score_report(lambda x, t: x * 1e200, g, OU(), t0=1e-2, T=3.0, method="euler_maruyama",
                        grid="geometric", n_steps=5, rng=np.random.default_rng(0), profile_n=10, profile_times=3,
                        bound_n=4)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_overflowing_score_error_is_said_in_words():
    from sgm_ref.evaluation import non_finite_notes

    report = _overflowing_score_report()
    notes = non_finite_notes(report)
    assert notes[0].startswith("the score error overflows float64 at every t of the profile (0.01 to 3)")
    assert "TV bound say nothing beyond TV <= 1" in notes[1]
    assert bound_text(report["tv_bound"]) == "1 (vacuous: the path KL overflows float64)"


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_overflowing_score_error_is_bounded_from_below_not_sized():
    """A score 1e200 x off the truth (|s - grad log p_t| ~ 1e200 |x|) was said to reach "about
    1e154", and E|s - grad log p_t|^2 to exceed float64's largest, while the profile is inf as
    soon as one point's square is (one point 2e154 off among n: a mean of 4e308 / n). The
    note says what is known: at some points the square overflows, |s - grad log p_t| >= 1.3e154."""
    from sgm_ref.evaluation import non_finite_notes

    report = _overflowing_score_report()
    assert non_finite_notes(report)[0] == (
        "the score error overflows float64 at every t of the profile (0.01 to 3): |s - grad log p_t|^2 exceeds the "
        f"largest float64 (1.8e308) at some of the points, so |s - grad log p_t| is "
        f"{np.sqrt(np.finfo(np.float64).max):.2g} or more there".replace("+", ""))
    g = GaussianMixture.paper_family(2, 2, 2.0, rng=0)

    def one_point_off(x, t):
        s = g.score(x, t)
        s[0, 0] += 2e154
        return s

    report = score_report(one_point_off, g, OU(), t0=1e-2, T=3.0, method="probability_flow", grid="uniform",
                          n_steps=5, rng=np.random.default_rng(0), profile_n=10, profile_times=2)
    assert report["score_error"]["error"] == [np.inf, np.inf]  # though the mean of the squares is 4e308 / 10
    assert "at every t of the profile (0.01 to 3): |s - grad log p_t|^2 exceeds the largest float64 (1.8e308) " \
           "at some of the points" in non_finite_notes(report)[0]


# -- report.md and the summary explain their numbers --------------------------------------

def _report(mmd2=(0.004, 0.001), energy=(0.04, 0.01), kl_prior=(1e-6, 3e-6)):
    g = GaussianMixture.ring()
    rng = np.random.default_rng(1)
    samples = sample_report(g.sample(300, rng), g, rng, n_reference=300, two_sample_n=100, bins=10, floor=True)
    samples["mmd2"].update(value=mmd2[0], standard_error=mmd2[1])
    samples["energy_distance"].update(value=energy[0], standard_error=energy[1])
    return {"target": "ring", "sampler": {"method": "euler_maruyama", "grid": "geometric", "n_steps": 5, "t0": 0.01,
                                          "T": 3.0}, "samples": samples,
            "score_error": {"t": [0.1], "error": [0.5], "standard_error": [0.01], "relative": [0.1],
                            "integral": {"value": 0.2, "standard_error": 0.01}},
            "tv_bound": {"tv": 0.3, "tv_se": 0.01, "kl": 0.1, "kl_path": 0.1, "kl_path_se": 0.01,
                         "kl_prior": kl_prior[0], "kl_prior_se": kl_prior[1], "tv_early_stopping": 0.01,
                         "tv_early_stopping_se": 0.001},
            "training": {"steps": 300, "first_loss": 2.0, "last_loss": 1.25, "final_loss_mean": 1.4,
                         "final_loss_window": 100, "exact_score_loss": {"value": 1.198, "standard_error": 0.016}}}


def test_negative_estimates_are_explained():
    report = _report(mmd2=(-1.6e-6, 2e-6), kl_prior=(-1.6e-6, 3e-6))
    text, short = markdown(report), summary(report)
    for where in (text, short):
        assert ("MMD^2 = -1.6e-06 ± 2e-06 is below 0 because it is an unbiased estimate (not clipped) of a quantity "
                ">= 0; within 1 standard error of 0, consistent with 0") in where
        assert "KL(p_T || N(0, I)) = -1.6e-06 ± 3e-06 is below 0" in where
    assert "energy distance = " not in text  # positive: nothing to explain
    far = markdown(_report(energy=(-0.05, 0.01)))
    assert "energy distance = -0.05 ± 0.01 is below 0" in far.lower() and "5.0 standard errors below 0" in far
    # an infinite standard error (k = 0) was "within 0 standard error of 0"
    from sgm_ref.evaluation import _below_zero_note
    assert _below_zero_note("MMD^2", -1.0, float("inf")).endswith("; within 1 standard error of 0, consistent with 0")
    assert "## Notes" not in markdown(_report())


def test_report_says_which_loss_is_which():
    report = _report()
    text = markdown(report)
    assert ("loss 2 at the first step, 1.25 at the last step (one batch), 1.4 averaged over the last 100 steps "
            "(the \"final loss\" `sgm-ref train` prints)") in text
    assert "The exact score's loss under the same objective, the floor training approaches, is 1.198 ± 0.016." in text
    assert "final loss          1.4 (mean of the last 100 steps; the exact score's: 1.198 ± 0.016)" in summary(report)


# -- plots ---------------------------------------------------------------------------------

def _visible_tick_labels(fig, ax):
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = list(zip(ax.yaxis.get_majorticklocs(), ax.get_yticklabels()))
    ticks += list(zip(ax.yaxis.get_minorticklocs(), ax.get_yticklabels(minor=True)))
    return [label.get_text() for loc, label in ticks if lo <= loc <= hi and label.get_text()]


@pytest.mark.parametrize("first, last", [(2.0, 1.2), (80.0, 1.2), (3.0, 0.2)])
def test_loss_plot_has_readable_ticks_and_the_exact_score_line(first, last):
    pytest.importorskip("matplotlib")
    from sgm_ref.plots import loss_figure

    loss = np.geomspace(first, last, 300) * (1 + 0.05 * np.random.default_rng(0).standard_normal(300))
    fig, ax = loss_figure(loss, exact=(last * 0.9, 0.01))
    assert len(_visible_tick_labels(fig, ax)) >= 3
    labels = [line.get_label() for line in ax.get_lines()]
    assert any(label.startswith("exact score") for label in labels), labels
    assert ax.get_ylabel()


def test_loss_plot_s_exact_score_line_and_band_are_what_its_label_says():
    """The exact score's loss is drawn at its value with a band of 2 standard errors each
    side; the label gave "value ± se" only, so the band, twice as wide, read as one standard
    error. The label now says the band's width."""
    pytest.importorskip("matplotlib")
    from sgm_ref.plots import loss_figure

    value, se = 1.237, 0.092
    fig, ax = loss_figure(np.linspace(2.0, 1.3, 100), exact=(value, se))
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith("exact score")]
    assert list(line.get_ydata()) == [value, value]
    (band,) = ax.patches
    assert band.get_y() == pytest.approx(value - 2 * se, rel=1e-15)
    assert band.get_y() + band.get_height() == pytest.approx(value + 2 * se, rel=1e-15)
    assert line.get_label() == "exact score (the floor in expectation): 1.237 ± 0.092; band ± 2 s.e."


@pytest.mark.parametrize("loss, got", [(np.ones((10, 2)), r"shape \(10, 2\)"), ([], r"shape \(0,\)"),
                                       ([1.0, np.inf, np.nan], "2 of 3 not finite"), (["a", "b"], "not numbers")])
def test_loss_plot_refuses_what_is_not_a_loss_per_step(loss, got):
    """A 2-D loss ended in matplotlib's "x and y must have same first dimension" (no argument
    named); an empty one drew empty axes without a word (a mutation review)."""
    pytest.importorskip("matplotlib")
    from sgm_ref.plots import loss_figure

    with pytest.raises(ValueError, match=rf"^loss must be the training loss per step, a non-empty 1-D sequence of "
                                         rf"finite numbers, got {got}$"):
        loss_figure(loss)


def test_score_error_plot_has_a_y_label():
    pytest.importorskip("matplotlib")
    from sgm_ref.plots import score_error_figure

    fig, ax = score_error_figure({"t": [0.01, 0.1, 1.0], "error": [1.0, 0.1, 0.01],
                                  "standard_error": [0.1, 0.01, 0.001], "oracle_mean_square": [10.0, 3.0, 1.0]})
    assert ax.get_ylabel() == "mean squared score error"


def test_score_error_plot_draws_the_errors_their_2_standard_errors_and_the_scale():
    """score_error.png: each point at (t, error) with a bar from error - 2 se to error + 2 se,
    as its legend says, and the dashed scale at E|grad log p_t|^2 (nothing checked the bars'
    length or the scale's values)."""
    pytest.importorskip("matplotlib")
    from sgm_ref.plots import score_error_figure

    t, error, se, scale = [0.01, 0.1, 1.0], [1.0, 0.1, 0.01], [0.1, 0.02, 0.001], [10.0, 3.0, 1.0]
    fig, ax = score_error_figure({"t": t, "error": error, "standard_error": se, "oracle_mean_square": scale})
    (bars,) = ax.containers
    assert bars.get_label() == "E|s - grad log p_t|^2 (± 2 s.e.)"
    data, _, (segments,) = bars.lines
    np.testing.assert_array_equal(data.get_xdata(), t)
    np.testing.assert_array_equal(data.get_ydata(), error)
    ends = np.array([[a[1], b[1]] for a, b in segments.get_segments()])
    np.testing.assert_allclose(ends, np.column_stack([np.subtract(error, np.multiply(2, se)),
                                                      np.add(error, np.multiply(2, se))]), rtol=1e-15)
    (line,) = [line for line in ax.get_lines() if line.get_label() == "E|grad log p_t|^2 (scale)"]
    np.testing.assert_array_equal(line.get_ydata(), scale)


@pytest.mark.parametrize("overflow", [float("inf"), None])  # in memory, and read back from JSON
def test_score_error_plot_leaves_out_an_overflowing_error_and_says_so(overflow):
    pytest.importorskip("matplotlib")
    from sgm_ref.plots import score_error_figure

    fig, ax = score_error_figure({"t": [0.01, 0.1, 1.0], "error": [1.0, overflow, 0.01],
                                  "standard_error": [0.1, overflow, 0.001], "oracle_mean_square": [10.0, 3.0, 1.0]})
    (bars,) = ax.containers
    np.testing.assert_array_equal(bars.lines[0].get_xdata(), [0.01, 1.0])
    assert [text.get_text() for text in ax.texts] == ["the error overflows float64 at some t (not drawn)"]


# -- evaluate_run ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sampled_run(tmp_path_factory):
    from sgm_ref import runs

    folder = tmp_path_factory.mktemp("run") / "run"
    config = runs.make_config({"data": {"n": 300}, "model": {"width": 8, "depth": 1},
                               "train": {"steps": 40, "checkpoint_every": 1000},
                               "sample": {"n": 200, "n_steps": 10},
                               "evaluate": {"n": 300, "two_sample_n": 100, "profile_n": 50, "profile_times": 3,
                                            "bound_n": 4}})
    runs.create(folder, config)
    runs.train(folder, progress=False)
    runs.sample_run(folder)
    return folder


def test_evaluate_run_shows_progress_only_when_asked_or_on_a_terminal(sampled_run, capsys):
    from sgm_ref.evaluation import evaluate_run

    report, _, _ = evaluate_run(sampled_run, plots=False)  # stderr is not a terminal here
    assert capsys.readouterr().err == ""
    evaluate_run(sampled_run, plots=False, progress=True)
    assert "evaluating" in capsys.readouterr().err
    training = report["training"]
    assert training["steps"] == 40 and training["final_loss_window"] == 40
    assert 0 < training["exact_score_loss"]["standard_error"] < training["exact_score_loss"]["value"]


@pytest.mark.parametrize("kw, match", [({"plots": "no"}, r"^plots must be True or False, got 'no'$"),
                                       ({"plots": None}, r"^plots must be True or False, got None$"),
                                       ({"progress": "no"}, r"^progress must be True, False or None .*got 'no'$"),
                                       ({"progress": 1}, r"^progress must be True, False or None .*got 1$")])
def test_evaluate_run_refuses_flags_that_are_not_bools_before_the_work(sampled_run, monkeypatch, kw, match):
    """plots="no" drew the plots and progress="no" showed the bar (any truthy value did)."""
    from sgm_ref import evaluation

    monkeypatch.setattr(evaluation, "sample_report", lambda *a, **k: pytest.fail("worked before checking"))
    with pytest.raises(ValueError, match=match):
        evaluation.evaluate_run(sampled_run, **{"plots": False, **kw})


def test_evaluate_run_refuses_an_unwritable_folder_before_the_work(sampled_run, monkeypatch):
    from sgm_ref import evaluation
    from sgm_ref.runs import RunError

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(sampled_run))

    monkeypatch.setattr(evaluation.tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(evaluation, "sample_report", lambda *a, **k: pytest.fail("worked before checking"))
    with pytest.raises(RunError, match="cannot write the report into .*: Permission denied"):
        evaluation.evaluate_run(sampled_run, plots=False)


def test_evaluate_run_holds_the_run_lock(sampled_run):
    """A library call is refused while another process writes into the run, as the command is."""
    import subprocess
    import sys

    from sgm_ref.evaluation import evaluate_run

    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from sgm_ref import runs\n"
        f"with runs.writing({str(sampled_run)!r}):\n"
        "    print('held', flush=True); time.sleep(60)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ValueError, match=f"pid {holder.pid}"):
            evaluate_run(sampled_run, plots=False)
    finally:
        holder.kill()
        holder.wait()


def test_a_deeply_nested_history_is_a_run_error(tmp_path, sampled_run):
    import shutil

    from sgm_ref.evaluation import evaluate_run
    from sgm_ref.runs import RunError

    run = tmp_path / "run"
    shutil.copytree(sampled_run, run)
    (run / "history.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(RunError, match="history.json is missing or unreadable"):
        evaluate_run(run, plots=False)


@pytest.mark.parametrize("loss", ["[1.0, NaN]", "[]", "[true, 1.0]", "[[1.0]]", '["1.0"]'])
def test_a_damaged_history_is_a_run_error(tmp_path, sampled_run, loss):
    import shutil

    from sgm_ref.evaluation import evaluate_run
    from sgm_ref.runs import RunError

    run = tmp_path / "run"
    shutil.copytree(sampled_run, run)
    (run / "history.json").write_text('{"loss": ' + loss + "}")
    with pytest.raises(RunError, match="history.json is (damaged|missing or unreadable)"):
        evaluate_run(run, plots=False)


# -- the sliced-Wasserstein floor (a review of the metrics) -------------------------------------


def test_sliced_wasserstein_floor_is_drawn_after_everything_else():
    """floor=True adds the floor and changes no other figure: the other entries equal floor=False's,
    and the floor is 4 fresh exact samples against the same reference, from rng where floor=False
    left it (each its sample, then its SW_1 and SW_2 projections)."""
    from sgm_ref.metrics import sliced_wasserstein

    g = GaussianMixture.ring()
    x = g.sample(400, np.random.default_rng(5))
    plain_rng, floor_rng = np.random.default_rng(1), np.random.default_rng(1)
    reference = g.sample(600, np.random.default_rng(1))  # sample_report's first draw
    plain = sample_report(x, g, plain_rng, n_reference=600, two_sample_n=100, bins=10, floor=False)
    with_floor = sample_report(x, g, floor_rng, n_reference=600, two_sample_n=100, bins=10, floor=True)
    values = {1: [], 2: []}
    for _ in range(4):
        fresh = g.sample(400, plain_rng)
        for p in (1, 2):
            values[p].append(sliced_wasserstein(fresh, reference, plain_rng, p=p).value)
    for p in (1, 2):
        floor = with_floor[f"sliced_wasserstein_{p}"].pop("exact_sample_floor")
        v = np.array(values[p])
        assert floor == {"value": v.mean(), "standard_error": v.std(ddof=1) / 2.0, "spread": v.std(ddof=1),
                         "draws": 4}
    assert with_floor == plain
    assert "exact_sample_floor" not in plain["sliced_wasserstein_2"]


def test_sliced_wasserstein_spread_is_the_sampling_noise_its_standard_error_is_not():
    """The review: two exact samples of the ring at n = 2000 are SW2 0.074 apart with spread 0.023
    over seeds, against a stated standard error of 0.0013 (the projections only). The floor's spread
    is of the size of the sampling noise; the stated error is several times smaller."""
    g = GaussianMixture.ring()
    sw, se, spread, floor = [], [], [], []
    for seed in range(30):
        rng = np.random.default_rng(seed)
        r = sample_report(g.sample(500, rng), g, rng, n_reference=500, two_sample_n=50, bins=5,
                          floor=True)["sliced_wasserstein_2"]
        sw.append(r["value"])
        se.append(r["standard_error"])
        spread.append(r["exact_sample_floor"]["spread"])
        floor.append(r["exact_sample_floor"]["value"])
    noise = np.std(sw, ddof=1)
    assert noise > 5 * np.sqrt(np.mean(np.square(se)))
    assert 0.5 * noise < np.sqrt(np.mean(np.square(spread))) < 1.5 * noise
    # x is exact too: its SW is the floor's, within their noise (the mean of 30 seeds to ~ noise / 5)
    assert abs(np.mean(sw) - np.mean(floor)) < noise / 2


def test_report_labels_the_sliced_wasserstein_error_and_shows_its_floor():
    report = _report()
    text, short = markdown(report), summary(report)
    floor = report["samples"]["sliced_wasserstein_2"]["exact_sample_floor"]
    assert (f"(± over the random projections only; 4 exact samples of this size show {floor['value']:.3g}, "
            f"spread {floor['spread']:.2g})") in text
    assert f"(± projections only; exact-sample floor {floor['value']:.3g}, spread {floor['spread']:.2g})" in short
    # a report of an earlier version, without the floor, still says what the ± covers
    for key in ("sliced_wasserstein_1", "sliced_wasserstein_2"):
        del report["samples"][key]["exact_sample_floor"]
    assert "(± over the random projections only) |" in markdown(report)
    assert "(± projections only)" in summary(report)


def test_evaluate_run_adds_the_floor_and_keeps_the_sample_figures(sampled_run):
    from sgm_ref.evaluation import evaluate_run
    from sgm_ref.runs import load_samples, read_config, streams
    from sgm_ref.targets.spec import from_record

    report, _, _ = evaluate_run(sampled_run, plots=False)
    config = read_config(sampled_run)
    target, e = from_record(config["target_definition"]), config["evaluate"]
    x = load_samples(sampled_run, target.dim).astype(np.float64)
    alone = sample_report(x, target, streams(config["seed"])["evaluate"], n_reference=e["n"],
                          two_sample_n=e["two_sample_n"], bins=e["bins"], floor=False)
    samples = report["samples"]
    for p in (1, 2):
        floor = samples[f"sliced_wasserstein_{p}"].pop("exact_sample_floor")
        assert floor["draws"] == 4 and floor["spread"] > 0 and floor["value"] > 0
    assert samples == alone  # the sample figures are those drawn before the floor existed


def test_sample_report_of_a_product_mixture():
    """A ProductMixture has per-coordinate weights: component_weights (GaussianMixture's) raised."""
    from sgm_ref.targets.spec import from_spec

    t = from_spec("product:d=2")
    rng = np.random.default_rng(0)
    r = sample_report(t.sample(300, rng), t, rng, n_reference=300, two_sample_n=100, bins=10)
    assert "component_weights" not in r and r["histogram_tv"]["value"] < 0.2


def test_report_gives_the_bound_s_one_sided_upper_value():
    report = _report()
    report["tv_bound"].update(kl_upper=0.13, tv_upper=0.2650)
    assert ("- the bound is certified in expectation; its one-sided upper value, 3 standard errors on each "
            "Monte-Carlo term: TV <= 0.2650 (KL <= 0.13)") in markdown(report)
    del report["tv_bound"]["tv_upper"], report["tv_bound"]["kl_upper"]
    assert "one-sided" not in markdown(report)  # an earlier version's report


def test_a_target_too_narrow_for_the_histogram_keeps_the_other_figures():
    """A product target of std 0.001: histogram_tv refuses its bins (too narrow to integrate),
    and evaluate failed outright; the report now says why the histogram is missing."""
    from sgm_ref.targets.spec import from_spec

    t = from_spec("product:d=2,shift=1.5,std=0.001")
    rng = np.random.default_rng(0)
    r = sample_report(t.sample(300, rng), t, rng, n_reference=300, two_sample_n=100, bins=20)
    h = r["histogram_tv"]
    assert h["value"] is None and h["expected_bias"] is None and "too narrow" in h["not_computed"]
    assert np.isfinite(r["sliced_wasserstein_2"]["value"]) and np.isfinite(r["mmd2"]["value"])
    report = _report()
    report["samples"]["histogram_tv"] = h
    assert "| histogram TV (20 bins per axis) | not computed: the target's narrowest component" in markdown(report)
    assert "histogram TV        not computed (report.md says why)" in summary(report)
    json.dumps(report, allow_nan=False)


def test_sample_report_refuses_a_floor_that_is_not_a_bool():
    g = GaussianMixture.ring()
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="floor must be True or False, got 'yes'"):
        sample_report(g.sample(50, rng), g, rng, n_reference=50, two_sample_n=20, bins=5, floor="yes")


def _replace_samples(folder, x):
    """Write x as the run's samples.npy, as `sgm-ref sample` would have drawn them (a sampler that
    diverged): config.json's record of its numbers ("samples_sha256", where the run has one) too,
    or evaluate refuses the file as damaged."""
    import hashlib

    np.save(folder / "samples.npy", x)
    path = folder / "config.json"
    config = json.loads(path.read_text())
    if "samples_sha256" in config:
        config["samples_sha256"] = hashlib.sha256(np.ascontiguousarray(x).data).hexdigest()
        path.write_text(json.dumps(config, indent=2))


def test_a_far_outlier_in_the_samples_keeps_the_other_figures(sampled_run, tmp_path):
    """A sampler that diverged leaves a point at 1e160: MMD^2 (squared distances), the covariance
    error and the component weights cannot be computed in float64. `sgm-ref evaluate` failed
    outright with "entries of x must be below 7.07e+149 ... rescale x and y (and the bandwidth)",
    no report; now those three say "not computed" and why, and every other figure stands."""
    import shutil

    from sgm_ref.evaluation import evaluate_run

    folder = tmp_path / "run"
    shutil.copytree(sampled_run, folder)
    x = np.load(folder / "samples.npy")
    x[0, 0] = 1e160
    _replace_samples(folder, x)
    report, _, _ = evaluate_run(folder, plots=False)
    smp = report["samples"]
    for key in ("mmd2", "covariance_error"):
        assert smp[key]["value"] is None and smp[key]["standard_error"] is None
        assert "not computable in float64" in smp[key]["not_computed"]
    assert smp["component_weights"]["soft"] is None and "too far" in smp["component_weights"]["not_computed"]
    assert smp["sliced_wasserstein_2"]["value"] > 1e150 and smp["mean_error"]["value"] > 1e150
    assert np.isfinite(smp["histogram_tv"]["value"]) and np.isfinite(report["score_error"]["integral"]["value"])
    text = (folder / "report.md").read_text()
    assert "| MMD^2 (unbiased) | not computed: not computable in float64 for these samples (entries of x" in text
    assert "| covariance error (Frobenius) | not computed:" in text
    assert "Not computed: not computable in float64" in text
    assert "MMD^2 (unbiased)    not computed (report.md says why)" in summary(report)
    json.loads((folder / "report.json").read_text())


def test_sample_report_still_refuses_bad_samples():
    """Figures may be "not computed" for valid samples; samples that are not valid are an error."""
    g = GaussianMixture.ring()
    rng = np.random.default_rng(0)
    x = g.sample(50, rng)
    x[3, 1] = np.nan
    with pytest.raises(ValueError, match="x contains 1 non-finite"):
        sample_report(x, g, rng, n_reference=50, two_sample_n=20, bins=5)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        sample_report(np.zeros((50, 3)), g, rng, n_reference=50, two_sample_n=20, bins=5)


@pytest.mark.parametrize("n_reference, two_sample_n, m", [(11, 8, 8), (7, 20, 7), (11, 20, 9)],
                         ids=["two_sample_n", "n_reference", "n"])
def test_sample_report_figures_are_those_of_the_documented_points_by_scipy(n_reference, two_sample_n, m):
    """Each figure of sample_report against an independent computation on the points its
    docstring names: the reference is rng's first n_reference target draws; MMD^2 and the
    energy distance are the U-statistics of the first m = min(two_sample_n, n, n_reference)
    points of x and of the reference (scipy's cdist; the bandwidth the median of the pooled
    pairwise distances); the sliced Wasserstein distances are sgm_ref's on x and the whole
    reference with rng next; mean, covariance and component weights by numpy and scipy."""
    from scipy.spatial.distance import cdist
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal

    from sgm_ref.metrics import histogram_tv, sliced_wasserstein

    g = GaussianMixture.ring()
    x = 1.3 * g.sample(9, np.random.default_rng(3))
    report = sample_report(x, g, np.random.default_rng(11), n_reference=n_reference, two_sample_n=two_sample_n,
                           bins=5)
    rng = np.random.default_rng(11)
    reference = g.sample(n_reference, rng)
    for p in (1, 2):
        expected = sliced_wasserstein(x, reference, rng, p=p)
        assert report[f"sliced_wasserstein_{p}"] == {"value": expected.value, "standard_error": expected.standard_error}
    a, b = x[:m], reference[:m]  # m = min(two_sample_n, n = 9, n_reference)
    pairs = cdist(np.vstack([a, b]), np.vstack([a, b]))
    h = np.median(pairs[np.triu_indices(2 * m, 1)])
    assert report["mmd2"]["bandwidth"] == pytest.approx(h, rel=1e-14)

    def u_statistic(k):
        kaa, kbb, kab = k(cdist(a, a)), k(cdist(b, b)), k(cdist(a, b))
        off = m * (m - 1)
        return (kaa.sum() - np.trace(kaa)) / off + (kbb.sum() - np.trace(kbb)) / off - 2 * kab.mean()

    assert report["mmd2"]["value"] == pytest.approx(u_statistic(lambda r: np.exp(-r**2 / (2 * h * h))), abs=1e-15)
    assert report["energy_distance"]["value"] == pytest.approx(u_statistic(lambda r: -r), abs=1e-14)
    assert report["mean_error"]["value"] == pytest.approx(np.linalg.norm(x.mean(axis=0) - g.mean()), rel=1e-14)
    assert report["covariance_error"]["value"] == pytest.approx(np.linalg.norm(np.cov(x.T) - g.covariance()),
                                                               rel=1e-13)
    log_joint = np.stack([np.log(w) + multivariate_normal(mu, 0.09 * np.eye(2)).logpdf(x)
                          for w, mu in zip(g.weights, g.means)], axis=1)
    posterior = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    weights = report["component_weights"]
    np.testing.assert_allclose(weights["soft"], posterior.mean(axis=0), rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights["soft_standard_error"], posterior.std(axis=0, ddof=1) / 3, rtol=1e-12,
                               atol=1e-17)
    np.testing.assert_array_equal(weights["hard"], np.bincount(posterior.argmax(axis=1), minlength=8) / 9)
    assert weights["true"] == g.weights.tolist()
    expected = histogram_tv(x, g, bins=5)
    assert report["histogram_tv"] == {"value": expected.value, "expected_bias": expected.expected_bias, "bins": 5}
    assert (report["n"], report["d"]) == (9, 2)


def test_sample_report_names_the_first_non_finite_row():
    """NaN or inf in the samples (a sampler that diverged) was refused as "x contains 2
    non-finite value(s) (NaN or inf)": which of the points, it did not say (samples.png's
    figure names the row). It names the first such row and the count of such points now."""
    g = GaussianMixture.ring()
    x = g.sample(40, np.random.default_rng(0))
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[7, 1], y[12, 0] = bad, bad
        for given in (y, y.tolist(), y.astype(np.float32)):
            with pytest.raises(ValueError, match=r"^x contains 2 non-finite value\(s\) \(NaN or inf\): 2 of 40 "
                                                 r"points are not finite \(the first is row 7, \[.*\]\); "):
                sample_report(given, g, np.random.default_rng(0), n_reference=50, two_sample_n=20, bins=5)
    with pytest.raises(ValueError, match=r"^x must have shape \(n, 2\), got shape \(3, 3\)$"):  # others as they were
        sample_report(np.zeros((3, 3)), g, np.random.default_rng(0), n_reference=50)


@pytest.mark.parametrize("option, value, message", [
    ("method", "heun", "method must be 'probability_flow' or one of 'euler_maruyama'"),
    ("grid", "log", "grid kind must be 'uniform' or 'geometric'"),
    ("n_steps", 0, "n_steps must be an integer >= 1"),
    ("bound_n", 1, "bound_n must be an integer >= 2"),
    ("profile_n", 1, "profile_n must be an integer >= 2"),
    ("floor", "yes", "floor must be True or False"),
])
def test_score_report_refuses_bad_settings_before_calling_the_score(option, value, message):
    """The sampler's settings were checked by tv_upper_bound only after the profile and the
    integral had called the score (minutes for a large model), and profile_n and bound_n were
    named "n"."""
    g = GaussianMixture.ring()
    calls = []

    def score(x, t):
        calls.append(t)
        return g.score(x, t)

    settings = dict(t0=1e-2, T=3.0, method="euler_maruyama", grid="geometric", n_steps=5,
                    rng=np.random.default_rng(0), profile_n=10, profile_times=2, bound_n=4)
    settings[option] = value
    with pytest.raises(ValueError, match=message):
        score_report(score, g, OU(), **settings)
    assert calls == []


def test_an_nll_beyond_memory_is_refused_first_for_a_product_target(tmp_path, monkeypatch):
    """ProductMixture.sample asks 4 d numbers per point, more than the 2 (d + 1) of a Gaussian
    mixture that the up-front --nll check used: a count between the two passed it, and after
    every other stage the likelihood's sampling refused it as "n = ... is too large"."""
    from sgm_ref import _validation, runs
    from sgm_ref.evaluation import evaluate_run
    from sgm_ref.targets import _checks

    folder = tmp_path / "run"
    config = runs.make_config({"target": "product:d=8", "data": {"n": 100}, "model": {"width": 8, "depth": 1},
                               "train": {"steps": 5}, "sample": {"n": 20, "n_steps": 5},
                               "evaluate": {"n": 50, "two_sample_n": 20, "profile_n": 20, "profile_times": 2,
                                            "bound_n": 4}})
    runs.create(folder, config)
    runs.train(folder, progress=False)
    runs.sample_run(folder)
    memory = 100 * 2**20
    monkeypatch.setattr(_validation, "_physical_memory", lambda: memory)
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: memory)
    nll = memory // (8 * 4 * 8) + 1  # beyond ProductMixture.sample's 4 d numbers per point, within 2 (d + 1)
    with pytest.raises(ValueError, match=r"^nll must be at most"):
        evaluate_run(folder, plots=False, nll=nll)
    assert not (folder / "report.json").exists()


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_overflowing_path_kl_is_said_in_words_in_the_bound_s_terms():
    """The bound's terms printed "path KL ... = inf ± nan" and "KL <= overflows float64"."""
    scores = _overflowing_score_report()
    bound = scores["tv_bound"]
    assert np.isinf(bound["kl_path"]) and np.isnan(bound["kl_path_se"]) and np.isinf(bound["kl_upper"])
    report = {**_report(), **scores}
    text = markdown(report)
    assert "- path KL (score error and discretisation) = overflows float64\n" in text
    assert "TV <= 1.0000 (KL overflows float64)" in text
    assert "inf" not in text.replace("Monte-Carlo", "").replace("information", "") and "nan" not in text
    # the finite terms are printed as before
    assert (f"- TV(p_0, p_t0) = {bound['tv_early_stopping']:.3g} ± {bound['tv_early_stopping_se']:.2g}\n"
            f"- KL(p_T || N(0, I)) = {bound['kl_prior']:.3g} ± {bound['kl_prior_se']:.2g}\n") in text


@pytest.mark.parametrize("value, shown", [(-3.04e-6, "3.04"), (-3.0001e-6, "3.0001"), (-3.06e-6, "3.1"),
                                          (-5e-6, "5.0")])
def test_a_negative_estimate_just_beyond_3_standard_errors_is_not_shown_as_3(value, shown):
    """k = 3.04 standard errors below 0 was printed "3.0 standard errors below 0: more than the
    estimator's noise", while 3.0 itself is called "within 3 standard errors, consistent with 0"."""
    text = markdown(_report(kl_prior=(value, 1e-6)))
    k = -value / 1e-6
    assert k > 3 and float(shown) > 3 and abs(float(shown) - k) <= 0.05
    assert f"; {shown} standard errors below 0: more than the estimator's noise, please report it." in text
    exact = markdown(_report(kl_prior=(-2.5e-6, 1e-6)))  # within 3: consistent with 0, as before
    assert "KL(p_T || N(0, I)) = -2.5e-06 ± 1e-06" in exact
    assert "within 3 standard errors of 0, consistent with 0" in exact


@pytest.mark.parametrize("se, shown", [(1e-20, "1e15"), (1e-300, "1e295"), (2.5e-10, "4e4"), (7.7e-10, "1.3e4"), (1.001e-9, "9990.0")])
def test_a_negative_estimate_far_beyond_its_standard_error_is_not_printed_digit_by_digit(se, shown):
    """k = 1e15 standard errors below 0 printed "1000000000000000.1", and k = 1e295 some 300
    digits, in report.md and the summary: beyond 1e4 two significant digits say it."""
    from sgm_ref.evaluation import _below_zero_note

    note = _below_zero_note("KL(p_T || N(0, I))", -1e-5, se)
    assert f"; {shown} standard errors below 0: more than the estimator's noise, please report it" in note
    assert float(shown) == pytest.approx(1e-5 / se, rel=0.05) and len(note) < 200


def test_a_kl_prior_below_0_within_its_rounding_is_not_called_a_fault():
    """-1.8e-17 +- 3.6e-18 (the ring at T = 50, where p_T is N(0, I) to float64) was "5.0 standard
    errors below 0: more than the estimator's noise, please report it"; within the rounding the
    bound records (kl_prior_rounding) it is consistent with 0. Beyond it the verdict stands, and a
    report without the field (older versions) is read as before."""
    report = _report()
    report["tv_bound"].update(kl_prior=-1.8e-17, kl_prior_se=3.6e-18, kl_prior_rounding=5e-15)
    for where in (markdown(report), summary(report)):
        assert ("KL(p_T || N(0, I)) = -1.8e-17 ± 3.6e-18 is below 0 by less than the rounding of its terms (5e-15): "
                "consistent with 0 (p_T is its start law to float64's precision)") in where
    report["tv_bound"]["kl_prior_rounding"] = 1e-17
    assert "5.0 standard errors below 0: more than the estimator's noise" in markdown(report)
    del report["tv_bound"]["kl_prior_rounding"]
    assert "5.0 standard errors below 0: more than the estimator's noise" in markdown(report)


def test_a_negative_likelihood_gap_is_explained():
    """report.md printed a KL(p_t0 || model) estimate below 0 with no word of why."""
    report = _report()
    entry = {"value": -0.004, "standard_error": 0.003}
    report["likelihood"] = {"n": 50, "t0": 0.001, "T": 5.0, "divergence": "exact", "n_probes": None, "rtol": 1e-5,
                            "atol": 1e-5, "model_nll": {"value": 2.1, "standard_error": 0.2},
                            "target_nll": {"value": 2.104, "standard_error": 0.2}, "kl_gap": entry}
    text, short = markdown(report), summary(report)
    k = -entry["value"] / entry["standard_error"]
    assert 1 < k <= 2
    for where in (text, short):
        assert ("he likelihood gap = -0.004 ± 0.003 is below 0 because it is a sample mean (not clipped) of "
                "log p_t0 - log q over the points, an estimate of KL(p_t0 || model) >= 0; within 2 standard errors "
                "of 0, consistent with 0") in where
    entry["value"] = 0.004
    assert "likelihood gap" not in markdown(report)


def test_a_negative_estimate_with_a_zero_standard_error_is_not_called_infinitely_far():
    report = _report(energy=(-0.05, 0.0))
    text = markdown(report)
    assert ("Energy distance = -0.05 ± 0 is below 0 with no estimator noise to explain it (its standard error is "
            "not above 0): please report it.") in text
    assert "inf standard errors" not in text


@pytest.mark.parametrize("option, value, message", [
    ("n_reference", 1, "n_reference must be an integer >= 2, got 1"),
    ("n_reference", 0, "n_reference must be an integer >= 2, got 0"),
    ("two_sample_n", 1, "two_sample_n must be an integer >= 2, got 1"),
    ("two_sample_n", 2.5, "two_sample_n must be an integer >= 2, got 2.5"),
    ("bins", 0, "bins must be an integer >= 1, got 0"),
])
def test_sample_report_refuses_bad_settings_before_any_draw(option, value, message):
    """n_reference = 1, two_sample_n = 1 or bins = 0 gave a report whose figures were "not
    computable in float64 for these samples", as if the samples were at fault; two_sample_n = 2.5
    a TypeError from slicing; n_reference = 0 an error naming "n"."""
    g = GaussianMixture.ring()
    x = g.sample(50, np.random.default_rng(0))
    rng = np.random.default_rng(1)
    state = rng.bit_generator.state
    settings = {"n_reference": 100, "two_sample_n": 50, "bins": 10, option: value}
    with pytest.raises(ValueError) as info:
        sample_report(x, g, rng, **settings)
    assert str(info.value) == message
    assert rng.bit_generator.state == state  # refused before the reference was drawn
    # in d = 3 bins is not used (no histogram), and not checked
    g3 = GaussianMixture.paper_family(3, 2, 2.0, rng=0)
    if option == "bins":
        r = sample_report(g3.sample(50, rng), g3, rng, **settings)
        assert "histogram_tv" not in r


def test_exact_samples_far_below_0_in_mmd_are_not_called_a_fault():
    """MMD^2 and energy distance of two exact samples (the laws equal: the U-statistics are
    degenerate) fall more than 3 first-order standard errors below 0 in a few percent of draws
    (ring, 2 x 300 points: seeds 31, 157, 185, 186, 199 of 0..199); report.md called that "more
    than the estimator's noise, please report it"."""
    from sgm_ref import metrics

    g = GaussianMixture.ring()
    rng = np.random.default_rng(185)
    x, y = g.sample(300, rng), g.sample(300, rng)
    m, e = metrics.mmd(x, y), metrics.energy_distance(x, y)
    k_mmd, k_energy = -m.value / m.standard_error, -e.value / e.standard_error
    assert k_mmd > 5 and k_energy > 4  # the exact samples' own figures
    report = _report(mmd2=(m.value, m.standard_error), energy=(e.value, e.standard_error))
    for where in (markdown(report), summary(report)):
        assert "please report it" not in where
        assert (f"MMD^2 = {m.value:.2g} ± {m.standard_error:.2g} is below 0 because it is an unbiased estimate (not "
                f"clipped) of a quantity >= 0; {k_mmd:.1f} standard errors below 0, still consistent with 0: when the "
                "two laws are equal the statistic is degenerate and its first-order standard error understates the "
                "noise") in where
        assert f"nergy distance = {e.value:.2g} ± {e.standard_error:.2g} is below 0" in where
        assert f"; {k_energy:.1f} standard errors below 0, still consistent with 0" in where
    # a plain mean's standard error is not degenerate: there it is still said
    assert "please report it" in markdown(_report(kl_prior=(-5e-6, 1e-6)))


def test_exact_score_loss_names_a_bad_time_distribution_before_any_draw():
    """A bad time_distribution was refused by sample_times as "distribution must be one
    of ...", after p_0's draws had moved rng; it is now named as exact_score_loss's own
    argument, and rng is left where it was."""
    from sgm_ref.evaluation import exact_score_loss

    rng = np.random.default_rng(0)
    kw = dict(t0=1e-3, T=5.0, weighting="none", n=10, rng=rng)
    for bad in ("loguniform", None, ["uniform"]):
        with pytest.raises(ValueError, match=r"^time_distribution must be one of \('uniform', 'log-uniform'\), "
                                             rf"got {re.escape(repr(bad))}$"):
            exact_score_loss(GaussianMixture.ring(), OU(), time_distribution=bad, **kw)
    assert rng.random() == np.random.default_rng(0).random()


def test_score_report_refuses_a_score_that_is_not_callable_by_name():
    """score=None raised Python's "'NoneType' object is not callable" from inside the profile,
    and a bad on_stage its TypeError after the profile's work."""
    kw = dict(t0=1e-2, T=1.0, method="euler_maruyama", grid="geometric", n_steps=5, rng=np.random.default_rng(0),
              profile_n=20, profile_times=2, bound_n=4)
    for bad in (None, "ring.score", np.zeros(3)):
        with pytest.raises(ValueError, match=rf"^score must be a callable .* got {type(bad).__name__}$"):
            score_report(bad, GaussianMixture.ring(), OU(), **kw)
    calls = []

    def score(x, t):
        calls.append(t)
        return -x

    # on_stage="TV bound" raised "'str' object is not callable" after the profile and the integral
    with pytest.raises(ValueError, match=r"^on_stage must be None or a callable .* got str$"):
        score_report(score, GaussianMixture.ring(), OU(), on_stage="TV bound", **kw)
    assert calls == []


def test_a_reason_with_pipes_stays_in_its_table_cell():
    """The covariance error's reason names ||S - Sigma||_F: its pipes split report.md's row,
    and a Markdown renderer dropped the cells beyond the header's two, so the cell read "not
    computable ... (the covariance error" and the rest was lost. Parsed here by markdown-it
    (GitHub's table rules) when installed, and by counting unescaped pipes otherwise."""
    g = GaussianMixture.ring()
    x = g.sample(200, np.random.default_rng(0))
    x[0] = 1e160
    samples = sample_report(x, g, np.random.default_rng(1), n_reference=300, two_sample_n=100)
    reason = samples["covariance_error"]["not_computed"]
    assert "||S - Sigma||_F" in reason
    samples["histogram_tv"] = {"value": None, "expected_bias": None, "bins": 20, "not_computed": "a |b| reason"}
    report = {"target": "ring", "sampler": {"method": "euler_maruyama", "grid": "uniform", "n_steps": 5, "t0": 0.01,
                                            "T": 3.0}, "samples": samples,
              "score_error": {"t": [0.1], "error": [0.5], "standard_error": [0.01], "relative": [0.1],
                              "integral": {"value": 0.2, "standard_error": 0.01}}}
    text = markdown(report)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "not computed" in line]
    assert len(rows) == 3  # histogram TV, MMD^2, covariance error
    for row in rows:
        assert len(re.findall(r"(?<!\\)\|", row)) == 3, row  # | label | value |
    try:
        from markdown_it import MarkdownIt
    except ImportError:
        return
    cells, row = [], None
    for token in MarkdownIt("commonmark").enable("table").parse(text):
        if token.type == "tr_open":
            row = []
        elif token.type == "inline" and row is not None:
            row.append(token.content)
        elif token.type == "tr_close":
            cells.append(row)
            row = None
    assert ["covariance error (Frobenius)", f"not computed: {reason}"] in cells
    assert ["histogram TV (20 bins per axis)", "not computed: a |b| reason"] in cells


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_an_overflowing_integral_beside_a_finite_bound_is_not_called_vacuous():
    # the score is exact except below the grid's last time it is called at (1.0288e-3 on
    # [1e-3, 5], 300 geometric steps), where it is 1e160 off: the profile at t0 and the
    # integral's random times meet that, the bound's steps do not, and its path KL is the
    # exact score's (0.18, the discretisation's). The note said "the path KL and the TV bound
    # say nothing beyond TV <= 1" beside that bound
    from sgm_ref.evaluation import non_finite_notes
    from sgm_ref.samplers import time_grid

    g, ou = GaussianMixture.ring(), OU()
    below = time_grid(5.0, 1e-3, 300, "geometric", ou)[-2]

    def score(x, t):
        s = g.score(x, t, ou)
        s[t < below] += 1e160
        return s

    kw = dict(t0=1e-3, T=5.0, grid="geometric", n_steps=300, profile_n=500, profile_times=3, bound_n=4)
    report = score_report(score, g, ou, method="euler_maruyama", rng=np.random.default_rng(0), **kw)
    exact = score_report(lambda x, t: g.score(x, t, ou), g, ou, method="euler_maruyama",
                         rng=np.random.default_rng(0), **kw)
    assert report["score_error"]["integral"]["value"] == np.inf and report["score_error"]["error"][0] == np.inf
    assert report["tv_bound"]["kl_path"] == exact["tv_bound"]["kl_path"] < 1  # the same draws, the same figure
    notes = non_finite_notes(report)
    assert "say nothing" not in notes[1] and "TV bound, which call the score at the sampler's grid times" in notes[1]
    assert not bound_text(report["tv_bound"]).startswith("1 (vacuous")
    flow = score_report(score, g, ou, method="probability_flow", rng=np.random.default_rng(0), **kw)
    assert non_finite_notes(flow)[1] == "the integrated score error overflows float64"  # no bound to speak of


def test_a_small_relative_score_error_is_not_shown_as_none():
    # a relative error of 4.2e-5 (E|s - grad log p_t|^2 / E|grad log p_t|^2, e.g. a float32 model's
    # rounding) showed as "0.00%", read as no error at all
    report = _report()
    error, scale = 2.1e-4, 5.0
    report["score_error"].update(t=[0.1, 1.0], error=[error, 0.5], standard_error=[1e-5, 0.01],
                                 relative=[error / scale, 0.1])
    text = markdown(report)
    assert f"| 0.1 | 0.00021 ± 1e-05 | {100 * error / scale:.2g}% |" in text and "0.0042%" in text
    assert "| 1 | 0.5 ± 0.01 | 10.00% |" in text  # 1% and above: as before


def test_a_huge_relative_score_error_is_shown_to_three_digits_in_report_md():
    # a relative error of 1e20 (a score far off at a large t) printed every digit of its float64,
    # "10000000002179999989760.00%", digits a Monte-Carlo estimate does not have; the audit's
    # table showed three, and report.md now does too (below 10,000%: two decimals, as before)
    report = _report()
    huge = 100000000021799999897.6  # the ratio whose percentage read as 23 digits and two decimals
    report["score_error"].update(t=[0.1, 1.0, 2.0], error=[1.0, 2.0, 3.0], standard_error=[0.1, 0.1, 0.1],
                                 relative=[huge, 99.99, -250.0])
    text = markdown(report)
    assert "| 0.1 | 1 ± 0.1 | 1e+22% |" in text and "10000000002179999989760" not in text
    assert "| 1 | 2 ± 0.1 | 9999.00% |" in text  # below 10,000%: as before
    assert "| 2 | 3 ± 0.1 | -2.5e+04% |" in text


def test_a_relative_error_past_float64_over_100_is_not_shown_as_inf_nor_10000_with_decimals():
    # 100 x 1e307 overflows: a finite ratio read "inf%" (in report.md and the audit's table, which
    # share _percent); and 99.999999 rounds to "10000.00%", two decimals from 10,000% on
    from sgm_ref.evaluation import _percent
    assert [_percent(v) for v in (1e307, -5e306, np.finfo(np.float64).max, 99.999999, 99.99, 1e20)] == \
        ["1e+309%", "-5e+308%", "1.8e+310%", "1e+04%", "9999.00%", "1e+22%"]
    report = _report()
    report["score_error"].update(t=[0.1], error=[1.0], standard_error=[0.1], relative=[1e307])
    assert "| 0.1 | 1 ± 0.1 | 1e+309% |" in markdown(report)


@pytest.mark.parametrize("grid, n_steps, message", [
    (np.geomspace(3.0, 0.1, 6), None, r"grid must run from T = 3.0 to t0 = 0.01, got 3.0 to 0.1"),
    (np.geomspace(2.0, 0.01, 6), None, r"grid must run from T = 3.0 to t0 = 0.01, got 2.0 to 0.01"),
    (np.geomspace(3.0, 0.01, 6), 7, r"n_steps=7 but the grid has 5 steps"),
])
def test_score_report_refuses_an_explicit_grid_that_is_not_the_sampler_s_before_calling_the_score(
        grid, n_steps, message):
    """An explicit grid not running from T to t0, or beside another n_steps, was refused by
    tv_upper_bound only after the profile and the integral had called the score."""
    g = GaussianMixture.ring()
    calls = []

    def score(x, t):
        calls.append(t)
        return g.score(x, t)

    with pytest.raises(ValueError, match=message):
        score_report(score, g, OU(), t0=1e-2, T=3.0, method="euler_maruyama", grid=grid, n_steps=n_steps,
                     rng=np.random.default_rng(0), profile_n=10, profile_times=2, bound_n=4)
    assert calls == []
    # the sampler's own grid (n_steps given or not) is taken as before
    for steps in (None, 5):
        report = score_report(g.score, g, OU(), t0=1e-2, T=3.0, method="euler_maruyama",
                              grid=np.geomspace(3.0, 0.01, 6), n_steps=steps, rng=np.random.default_rng(0),
                              profile_n=10, profile_times=2, bound_n=4)
        assert len(report["tv_bound"]["kl_path_per_step"]) == 5


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
def test_samples_too_far_to_draw_leave_out_samples_png_only(sampled_run, tmp_path):
    """A sampler that diverged to 1e307 (finite, but beyond what samples_figure's axes can span,
    2.8e306): evaluate_run wrote report.json and report.md, then failed with samples_figure's
    "x must be within +-2.8e+306 to be drawn", naming an x `sgm-ref evaluate` was never given,
    and wrote neither loss.png nor score_error.png. Now samples.png alone is left out, and
    the note says why."""
    pytest.importorskip("matplotlib")
    import shutil

    from sgm_ref.evaluation import evaluate_run

    folder = tmp_path / "run"
    shutil.copytree(sampled_run, folder)
    x = np.load(folder / "samples.npy")
    x[3, 1] = -1e307
    _replace_samples(folder, x)
    report, written, note = evaluate_run(folder)
    assert sorted(os.path.basename(p) for p in written) == ["loss.png", "score_error.png"]
    assert note == (f"samples.png not drawn: 1 of {len(x)} samples lie beyond +-2.8e+306 (the sampler diverged?), "
                    "where a plot's axes overflow float64")
    assert not (folder / "samples.png").exists() and (folder / "report.md").exists()
    assert report["samples"]["mean_error"]["value"] > 1e304  # the figures stand
    x[3, 1] = -2.8e306  # within: drawn as before
    _replace_samples(folder, x)
    _, written, note = evaluate_run(folder)
    assert note is None and sorted(os.path.basename(p) for p in written) == ["loss.png", "samples.png",
                                                                            "score_error.png"]


def test_the_exact_score_s_likelihood_gap_from_few_points_is_not_called_a_fault():
    """The gap is a mean over the nll points of log p_t0 - log q, whose terms are skewed: with
    the target's own score as the model, 4 points fall more than 3 standard errors below 0 in
    11.5% of draws (seed 16: 11.5 of them), and report.md said "more than the estimator's
    noise, please report it" (`sgm-ref evaluate --nll 4`)."""
    from sgm_ref.likelihood import nll_report

    g, ou = GaussianMixture.ring(), OU()
    likelihood = nll_report(g, g, ou, t0=1e-3, T=5.0, n=4, rng=np.random.default_rng(16))
    gap = likelihood["kl_gap"]
    k = -gap["value"] / gap["standard_error"]
    assert k > 10  # the exact oracle's own figure
    report = _report()
    report["likelihood"] = likelihood
    for where in (markdown(report), summary(report)):
        assert "please report it" not in where
        assert (f"he likelihood gap = {gap['value']:.2g} ± {gap['standard_error']:.2g} is below 0 because it is a "
                f"sample mean (not clipped) of log p_t0 - log q over the points, an estimate of KL(p_t0 || model) "
                f">= 0; {k:.1f} standard errors below 0, still consistent with 0: a standard error from 4 points is "
                "itself uncertain") in where
    report["likelihood"] = {**likelihood, "n": 50}  # from 50 points on: said, as before
    assert f"; {k:.1f} standard errors below 0: more than the estimator's noise, please report it." in markdown(report)


def test_score_report_names_a_score_model_of_another_dtype_as_its_dtype_argument():
    """A float32 ScoreModel with the default dtype=float64 was refused by the model, inside the
    profile, as "x must have dtype float32 (the network's), got float64; cast it explicitly": no x
    is score_report's argument; its dtype is, and the error now names it before the score is called."""
    from sgm_ref.nn import MLP
    from sgm_ref.score_model import ScoreModel

    g = GaussianMixture.ring()
    model = ScoreModel(MLP(2, (4,), rng=0, dtype=np.float32), OU(), "noise")
    args = dict(t0=1e-2, T=1.0, method="euler_maruyama", grid="geometric", n_steps=3, profile_n=10, profile_times=2,
                bound_n=4)
    with pytest.raises(ValueError, match=r"^dtype must be the model's dtype, float32, got float64: .* "
                                         r"pass dtype=np.float32$"):
        score_report(model, g, OU(), rng=np.random.default_rng(0), **args)
    report = score_report(model, g, OU(), rng=np.random.default_rng(0), dtype=np.float32, **args)
    assert np.all(np.isfinite(report["score_error"]["error"]))
