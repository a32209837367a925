"""Tests that kill mutants of sgm_ref/plots.py and of sgm_ref/experiments/report.py's text and figures
which test_plots.py, test_evaluation.py, test_audit_score_floor.py and test_rate_report.py let survive.

Each test reads the artists' data (matplotlib Figures made without pyplot, nothing drawn to pixels)
and checks it against an independent reference: numpy's histogram, an explicit loop, scipy's normal
densities, or the behaviour the docstring states. Each names the mutant it kills.
"""

import json
import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

from sgm_ref import GaussianMixture, plots  # noqa: E402

RING = GaussianMixture.ring()  # radius 2, std 0.3
ONE_D = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.09], [0.09]])


# -- the run's figures ----------------------------------------------------------------------------

@pytest.mark.parametrize("x", [[[0.3]], [[0.3], [0.3], [0.3]]], ids=["one", "three equal"])
def test_samples_of_one_value_are_binned_as_numpy_bins_them(x):
    """_bin_edges: samples of a single value get numpy's histogram edges (value -+ 0.5, as its
    docstring says). Mutant: `hi + 1.5` in place of `hi + 0.5` (a range of one value drawn
    twice as wide on the right, its bar at a third of the height)."""
    x = np.array(x)
    fig, ax = plots.samples_figure(ONE_D, x, "t")
    heights, edges = np.histogram(x[:, 0], bins=60, density=True)
    bars = ax.patches
    np.testing.assert_allclose([b.get_x() for b in bars], edges[:-1], rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose([b.get_width() for b in bars], np.diff(edges), rtol=1e-12)
    np.testing.assert_allclose([b.get_height() for b in bars], heights, rtol=1e-12)


def test_a_mode_e_squared_above_the_contour_grid_is_noted():
    """samples_figure, d = 2: a mode too narrow for the contour grid is noted where "the exact
    draws reach a density above e times the grid's peak" (docstring). The ring (80%) with 20% in
    N(0, s^2 I), s half the distance from the centre to the nearest grid point: the draws reach
    e^2.0 times the grid's largest density (closed-form mixture density by hand, on
    samples_figure's own grid: 200 x 200 over the samples and 2,000 draws of default_rng(0),
    0.5 beyond). Mutant: the note only above e^3."""
    def target(s):
        return GaussianMixture(np.r_[0.8 * RING.weights, 0.2], np.vstack([RING.means, [[0.0, 0.0]]]),
                               [0.09 * np.eye(2)] * 8 + [s * s * np.eye(2)])

    def grid(t, x):
        draws = t.sample(2000, np.random.default_rng(0))
        both = np.concatenate([x, draws])
        lo, hi = both.min(axis=0) - 0.5, both.max(axis=0) + 0.5
        u, v = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        return draws, np.column_stack([u.ravel(), v.ravel()]), max((hi - lo) / 199)

    def log_p(points, s):
        w, v = np.r_[0.8 * RING.weights, 0.2], np.r_[[0.09] * 8, s * s]
        r2 = ((points[:, None, :] - np.vstack([RING.means, [[0.0, 0.0]]])[None]) ** 2).sum(-1)
        terms = np.log(w) - np.log(2 * np.pi * v) - r2 / (2 * v)
        top = terms.max(axis=1)
        return top + np.log(np.exp(terms - top[:, None]).sum(axis=1))

    x = RING.sample(50, np.random.default_rng(1))
    _, points, _ = grid(target(0.01), x)  # the grid does not depend on s (the ring's draws span it)
    s = np.hypot(*points.T).min() / 2
    draws, points, spacing = grid(target(s), x)
    above = log_p(draws, s).max() - log_p(points, s).max()
    assert 1.5 < above < 2.5
    fig, ax = plots.samples_figure(target(s), x, "t")
    (note,) = ax.texts
    assert note.get_text() == (f"the target has a mode too narrow for the contour grid (spacing {spacing:.2g}; its "
                               f"density reaches e^{above:.3g} times the contours' peak): not drawn")


def test_loss_running_mean_is_the_mean_of_the_steps_its_label_names():
    """loss_figure: the running curve at step k is the mean of the loss over the w steps ending
    at k (w from its label "mean of w steps"), by an explicit loop. Mutants: the convolution
    normalised by w + 1; the curve drawn at the steps where its windows start, not end."""
    loss = 1.0 + np.random.default_rng(0).standard_normal(500) ** 2
    fig, ax = plots.loss_figure(loss)
    (running,) = [line for line in ax.get_lines() if line.get_label().startswith("mean of")]
    w = int(running.get_label().split()[2])
    assert running.get_label() == f"mean of {w} steps" and w > 1
    steps, means = running.get_xdata(), running.get_ydata()
    np.testing.assert_array_equal(steps, np.arange(w, loss.size + 1))
    expected = [math.fsum(loss[k - w:k]) / w for k in range(w, loss.size + 1)]  # steps are 1-based
    np.testing.assert_allclose(means, expected, rtol=1e-12)
    (raw,) = [line for line in ax.get_lines() if line.get_label() == "per step"]
    np.testing.assert_array_equal(raw.get_xdata(), np.arange(1, loss.size + 1))
    np.testing.assert_array_equal(raw.get_ydata(), loss)


@pytest.mark.parametrize("low, scale", [(0.21, "linear"), (0.2, "log"), (0.19, "log")])
def test_loss_axis_is_logarithmic_from_a_decade_on(low, scale):
    """_log_axis_if_wide: "Log scale when the values span a decade or more" (2 to 0.2 is one
    decade exactly; 2 to 0.21 less). Mutant: 100 in place of 10 (two decades)."""
    fig, ax = plots.loss_figure(np.linspace(2.0, low, 100))
    assert ax.get_yscale() == scale


def test_score_error_plot_draws_the_scale_at_every_t():
    """score_error_figure: the oracle's E|grad log p_t|^2 is drawn at every t, also where the
    model's error is 0 or overflows (those points alone are left out). Mutant: the scale drawn
    only at the t whose error is drawn."""
    t, scale = [0.01, 0.1, 1.0], [10.0, 3.0, 1.0]
    fig, ax = plots.score_error_figure({"t": t, "error": [0.0, None, 0.01], "standard_error": [0.0, None, 0.001],
                                        "oracle_mean_square": scale})
    (line,) = [line for line in ax.get_lines() if line.get_label() == "E|grad log p_t|^2 (scale)"]
    np.testing.assert_array_equal(line.get_xdata(), t)
    np.testing.assert_array_equal(line.get_ydata(), scale)


def _run_report():
    return {"target": "ring", "samples": {"histogram_tv": {"value": 0.0123456}},
            "training": {"exact_score_loss": {"value": 1.25, "standard_error": 0.03}},
            "score_error": {"t": [0.1, 1.0], "error": [0.5, 0.1], "standard_error": [0.01, 0.01],
                            "oracle_mean_square": [3.0, 1.0]}}


def test_plot_run_passes_each_plot_the_report_s_own_fields(tmp_path, monkeypatch):
    """plot_run: the loss plot gets the exact score's loss as (value, standard_error) of the
    report's training.exact_score_loss, the samples' title its histogram TV, the score-error plot
    the report's score_error. Mutant: the standard error read from "value" (a band of ±2 x 1.25)."""
    calls = {}
    monkeypatch.setattr(plots, "plot_samples", lambda target, x, path, title: calls.setdefault("samples", title))
    monkeypatch.setattr(plots, "plot_loss", lambda loss, path, exact=None: calls.setdefault("loss", (loss, exact)))
    monkeypatch.setattr(plots, "plot_score_error", lambda se, path: calls.setdefault("score_error", se))
    (tmp_path / "history.json").write_text(json.dumps({"loss": [2.0, 1.5, 1.2]}), encoding="utf-8")
    report = _run_report()
    written, note = plots.plot_run(str(tmp_path), RING, np.zeros((3, 2)), report)
    assert note is None
    assert [p.split("/")[-1] for p in written] == ["samples.png", "loss.png", "score_error.png"]
    assert calls["loss"] == ([2.0, 1.5, 1.2], (1.25, 0.03))
    assert calls["samples"] == "ring: 3 samples, histogram TV 0.012"
    assert calls["score_error"] is report["score_error"]


def test_plot_run_leaves_out_samples_beyond_the_drawable_range_and_says_so(tmp_path, monkeypatch):
    """plot_run: a sample beyond float64's largest / 64 (1e307: the axes' span overflows) leaves
    samples.png out with a note, the other plots written. Mutant: the check against 10 x that
    limit (1e307 passed on, and samples_figure's "x must be within" refusal stopped plot_run)."""
    monkeypatch.setattr(plots, "_save", lambda fig, path: None)
    x = np.zeros((4, 2))
    x[2, 1] = -1e307
    written, note = plots.plot_run(str(tmp_path), RING, x, _run_report())
    assert [p.split("/")[-1] for p in written] == ["score_error.png"]
    assert note == ("samples.png not drawn: 1 of 4 samples lie beyond +-2.8e+306 (the sampler diverged?), where "
                    "a plot's axes overflow float64")


def test_audit_plot_s_path_kl_axis_spans_four_decades_below_the_larger_total(monkeypatch, tmp_path):
    """plot_score_audit: "Its log axis spans four decades below the larger total and reaches
    below the smaller one" (and up to twice the larger): totals 1000 and 5 give [0.1, 2000].
    Mutant: three decades (1e-3 in place of 1e-4)."""
    t = [0.01, 0.1, 1.0]
    report = {"score_error": {"t": t, "error": [1.0, 0.1, 0.01], "standard_error": [0.01] * 3,
                              "oracle_mean_square": [10.0, 3.0, 1.0]},
              "tv_bound": {"kl_path_per_step": [600.0, 400.0]},
              "floor": {"score_error": {"t": t, "error": [0.0] * 3, "standard_error": [0.0] * 3},
                        "tv_bound": {"kl_path_per_step": [3.0, 2.0]}}}
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.plot_score_audit(report, str(tmp_path / "audit.png"), grid=[5.0, 1.0, 0.01])
    right = figures[0].axes[1]
    assert right.get_yscale() == "log"
    bottom, top = right.get_ylim()
    assert bottom == pytest.approx(0.1, rel=1e-12) and top == pytest.approx(2000.0, rel=1e-12)


# -- the teaching pictures ------------------------------------------------------------------------

def _midpoint_mass(h, n):
    """The ring's p_0 mass on the n x n cell centres of [-h, h]^2 by the midpoint rule, from the
    closed form of its components N(2 (cos a, sin a), 0.09 I), a = 2 pi k / 8, weight 1/8 each."""
    c = -h + (np.arange(n) + 0.5) * 2 * h / n
    u, v = np.meshgrid(c, c)
    p = sum(np.exp(-((u - 2 * np.cos(a)) ** 2 + (v - 2 * np.sin(a)) ** 2) / (2 * 0.09)) / (2 * np.pi * 0.09)
            for a in 2 * np.pi * np.arange(8) / 8) / 8
    return p.sum() * (2 * h / n) ** 2


def test_a_density_image_holding_less_than_half_the_mass_says_so():
    """_density_image: a note "when that mass is below 1/2" (docstring). The ring in the square
    of half-width 1.7 holds about 0.3 of p_0 (midpoint rule on 20 x 20 cells, by hand): noted, with that mass; in
    the square of half-width 2.5, about 0.86: no note. Mutant: the note only below 0.1."""
    mass = _midpoint_mass(1.7, 20)
    assert 0.1 < mass < 0.5
    fig = plots.forward_process_figure(RING, (0.0,), extent=1.7, resolution=20)
    (note,) = fig.axes[0].texts
    assert note.get_text().startswith(f"the image holds {mass:.2g} of p_t's mass:")
    assert _midpoint_mass(2.5, 20) > 0.5
    assert not plots.forward_process_figure(RING, (0.0,), extent=2.5, resolution=20).axes[0].texts


def test_score_field_arrows_put_the_90th_percentile_length_at_one_grid_spacing():
    """score_field_figure: "the 90th percentile of the exact field's length is one grid spacing"
    (docstring): with scale_units "xy", an arrow of length L is drawn L / scale long, so
    percentile(|exact|, 90) / scale is the spacing of the arrows' grid (read from their
    positions). Mutants: the spacing 2h / arrows (not 2h / (arrows + 1)); the median length."""
    fig = plots.score_field_figure(RING, None, ts=(0.3,), arrows=6, resolution=10, extent=3.0)
    (quiver,) = [c for c in fig.axes[0].collections if isinstance(c, Quiver)]
    assert quiver.scale_units == "xy"
    xs = np.unique(np.round(quiver.XY[:, 0], 12))
    spacing = np.diff(xs)
    np.testing.assert_allclose(spacing, spacing[0], rtol=1e-9)
    np.testing.assert_allclose(spacing[0], 6.0 / 7, rtol=1e-12)  # 6 arrows inside [-3, 3]: 7 gaps
    lengths = np.hypot(quiver.U, quiver.V)
    assert np.percentile(lengths, 90) / quiver.scale == pytest.approx(spacing[0], rel=1e-12)


@pytest.mark.parametrize("t0, rule", [(0.1, "t <= 0.3"), (0.01, "second half")])
def test_trajectories_bold_stretch_is_the_times_the_docstring_names(t0, rule):
    """trajectories_figure: the bold last stretch is "t <= 0.3 or the second half of the grid if
    that is shorter" (docstring). The grid and the path's first coordinate are read from the
    time panel; the bold line holds the path's points at those times. T = 5 in 20 geometric
    steps: to t0 = 0.1 the middle time is 0.71, so t <= 0.3 (grid times 0.48, 0.39 and 0.32 lie
    between 0.3 and 0.5); to t0 = 0.01 it is 0.22, so the second half. Mutant: 0.5 for 0.3."""
    fig = plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(4), n_points=3, n_paths=1, T=5.0,
                                    t0=t0, n_steps=20, resolution=10)
    plane, time = fig.axes
    (line,) = time.get_lines()
    grid, first = line.get_xdata(), line.get_ydata()
    assert len(grid) == 21 and grid[0] == 5.0 and grid[-1] == pytest.approx(t0, rel=1e-12)
    late = grid <= 0.3 if rule == "t <= 0.3" else np.arange(21) >= 10
    if rule == "t <= 0.3":
        assert grid[10] > 0.3 and np.sum((grid > 0.3) & (grid <= 0.5)) == 3
    else:
        assert grid[10] < 0.3
    bold = plane.get_lines()[1]
    np.testing.assert_array_equal(bold.get_xdata(), first[late])
    assert plane.get_title().startswith(f"1 reverse path (bold: the last {int(late.sum()) - 1} steps)")


def test_the_default_square_holds_p_0_to_two_and_a_half_standard_deviations():
    """_half_width: without extent the square reaches |mean| + 2.5 standard deviations of p_0
    (docstring): N((3, 0), I) is drawn on [-5.5, 5.5]^2. Mutant: 2 standard deviations."""
    target = GaussianMixture([1.0], [[3.0, 0.0]], [np.eye(2)])
    fig = plots.forward_process_figure(target, (0.0,), resolution=10)
    (image,) = fig.axes[0].get_images()
    np.testing.assert_allclose(image.get_extent(), [-5.5, 5.5, -5.5, 5.5], rtol=1e-15)


def test_the_animation_holds_its_last_frame_for_a_second(tmp_path):
    """reverse_process_animation: "the last frame is held for a second" (docstring): at fps = 2,
    3 frames of 0.5 s each and then 1 s more of the last, 2.5 s in all (the GIF's frame
    durations, read back with Pillow, which merges repeated frames into one longer frame).
    Mutant: the end held for half a second."""
    from PIL import Image

    path = tmp_path / "a.gif"
    plots.reverse_process_animation(RING, RING.score, path, rng=np.random.default_rng(0), n_points=5, T=1.0,
                                    n_steps=2, n_frames=3, fps=2, resolution=6, size=1.0, dpi=20)
    total = 0
    with Image.open(path) as gif:
        for k in range(gif.n_frames):
            gif.seek(k)
            total += gif.info["duration"]
    assert total == 2500


def test_the_profile_s_scale_is_drawn_from_the_caller_s_generator():
    """score_error_profile_figure: everything random takes the caller's Generator, the scale
    E|grad log p_t|^2 too: the same seed gives the same line, another seed another Monte-Carlo
    estimate. Mutant: the scale drawn from a Generator of its own (default_rng(0))."""
    def scale(seed):
        fig = plots.score_error_profile_figure(lambda x, t: -x, RING, rng=np.random.default_rng(seed), ts=[0.5], n=20)
        return fig.axes[0].get_lines()[-1].get_ydata()

    np.testing.assert_array_equal(scale(5), scale(5))
    assert scale(5)[0] != scale(6)[0]


# -- the rate report's text and figures (sgm_ref/experiments/report.py) ---------------------------

def _points(by_n):
    """a["points"][d] of a one-d family from {n: {method: [mean, se]}} (the seed count 5 appended)."""
    return {str(n): {m: [*v, 5] for m, v in p.items()} for n, p in by_n.items()}


def test_a_rise_within_two_standard_errors_is_not_named():
    """_rising_sentences: a rise is named only "by more than RISE and by more than two standard
    errors of the difference" (docstring): 1 to 1.15 (15%) with se 0.1 each (2 se of the
    difference: 0.28) is within the noise; with se 0.01 it is named. Mutant: the two standard
    errors dropped (0 x hypot)."""
    from sgm_ref.experiments import report

    for se, named in ((0.1, False), (0.01, True)):
        a = {"d": [2], "points": {"2": _points({500: {"network": [1.0, se]}, 1000: {"network": [1.15, se]}})}}
        not_shows = []
        report._rising_sentences("fam", a, not_shows)
        assert bool(not_shows) is named, (se, not_shows)


def _tv_family(first, last, exact=None):
    p = {500: {"tv": first}, 4000: {"tv": last}}
    if exact is not None:
        p[4000]["tv_exact"] = exact
    return {"d": [2], "n": [500, 4000], "points": {"2": _points(p)}}


def test_the_tv_bound_falls_only_by_more_than_two_standard_errors_at_each_end():
    """_tv_sentences: "falls" needs the last mean + 2 se below the first mean - 2 se: 0.5 ± 0.02
    to 0.43 ± 0.02 (0.47 > 0.46) is not shown to fall; to 0.40 ± 0.02 it falls. Mutant: one
    standard error at each end."""
    from sgm_ref.experiments import report

    for last, falls in ((0.43, False), (0.40, True)):
        not_shows = []
        shows = report._tv_sentences("fam", _tv_family([0.5, 0.02], [last, 0.02]), not_shows)
        assert any("falls from the smallest to the largest n" in s for s in shows) is falls, last
        assert any("not shown to fall with n in d = 2" in s for s in not_shows) is not falls, last


def test_the_exact_score_s_bound_is_a_floor_from_half_the_learned_one():
    """_tv_sentences: the exact score's bound at the largest n is said to measure the sampler
    more than the learning where it is "at least half the learned one": 0.3 of 0.4 is, 0.15 of
    0.4 is not. Mutant: a quarter in place of a half."""
    from sgm_ref.experiments import report

    for exact, floor in ((0.3, True), (0.15, False)):
        not_shows = []
        report._tv_sentences("fam", _tv_family([0.9, 0.01], [0.4, 0.01], exact=[exact, 0.01]), not_shows)
        assert any("the exact score's bound is at least half the learned one" in s for s in not_shows) is floor


def test_a_baseline_equal_to_the_network_is_not_beaten():
    """_baseline_sentences: "the network's error is below the baseline's" where the ratio
    baseline / network is above 1; at exactly 1 (equal errors) it is below in no d. Mutant:
    ratio >= 1."""
    from sgm_ref.experiments import report

    a = {"d": [2], "n": [500], "fits": {},
         "points": {"2": _points({500: {"network": [0.25, 0.01], "empirical measure (curse)": [0.25, 0.01]}})}}
    (sentence,) = report._baseline_sentences("fam", a)
    assert sentence.startswith("**fam**: at n = 500 the network's error is below the empirical-measure (curse) "
                               "baseline's in no d; the ratio baseline / network is 1 (d = 2)")


@pytest.mark.parametrize("differs, longer", [({"steps": [1000, 2000], "epochs": [10, 5]}, False),
                                             ({"steps": [1000, 2000], "epochs": [10, 10]}, True),
                                             ({"steps": [1000, 2000]}, True), ({"steps": [2000, 1000]}, False)])
def test_a_longer_training_is_longer_in_one_setting_and_shorter_in_none(differs, longer):
    """_longer: "at least as long in every length setting and longer in one" (docstring): more
    steps but fewer epochs is not longer. Mutant: longer in any one setting."""
    from sgm_ref.experiments import report

    assert report._longer(differs) is longer


def test_rows_without_a_status_are_finished_rows(tmp_path):
    """load_sweep: rows of an old sweep have no "status" (module docstring: an old sweep gives the
    same report); they are finished cells, not failures. Mutant: a row without status left out
    (and the folder refused as having "no finished cell")."""
    from sgm_ref.experiments import report

    row = {"family": "mixture", "d": 2, "n": 500, "seed": 0, "score_error": 0.1, "score_error_se": 0.01}
    failed = {"family": "mixture", "d": 2, "n": 500, "seed": 1, "status": "failed", "error": "boom"}
    (tmp_path / "results.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(failed) + "\n", encoding="utf-8")
    rows, settings = report.load_sweep(tmp_path)
    assert [r["seed"] for r in rows] == [0] and settings == {}


def test_no_better_than_minus_x_means_not_below_it_by_two_standard_errors():
    """_no_better_than_minus_x_at_first: "not below the -x baseline's by more than two standard
    errors of the difference": 0.95 ± 0.02 against 1.0 ± 0.02 (2 hypot = 0.057) is no better at
    n = 500; 0.5 at n = 1000 is. Mutant: one standard error."""
    from sgm_ref.experiments import report

    a = {"d": [2], "n": [500, 1000],
         "points": {"2": _points({500: {"network": [0.95, 0.02], "score -x": [1.0, 0.02]},
                                  1000: {"network": [0.5, 0.02], "score -x": [1.0, 0.02]}})}}
    assert report._no_better_than_minus_x_at_first(a) == {2: 500}


def test_the_error_ends_below_half_the_minus_x_baseline_only_below_half():
    """_minus_x_end: "ends_below: whether the mean error there is below half the baseline's":
    0.7 against 1.0 is not. Mutant: below the baseline itself."""
    from sgm_ref.experiments import report

    by_n = _points({500: {"network": [0.3, 0.01], "score -x": [1.0, 0.01]},
                    1000: {"network": [0.7, 0.01], "score -x": [1.0, 0.01]}})
    assert report._minus_x_end(by_n) == {"n_last": 1000, "ends_below": False}


def test_the_exponent_after_the_initial_network_needs_three_n_above_it():
    """_after_the_initial_network: None "with after_initial_reason if fewer than three n are
    left" above the largest n where the initial network was kept. Mutant: two n suffice."""
    from sgm_ref.experiments import report

    rows = [{"d": 2, "n": n, "seed": s, "score_error": n ** -0.5 * (1 + 0.01 * s),
             "checkpoint_step": 0 if n == 500 else 100} for n in (500, 1000, 2000) for s in range(3)]
    out = report._after_the_initial_network(rows)
    assert out["initial_kept"] == {"500": [3, 3]}
    assert out["after_initial"] is None
    assert out["after_initial_reason"] == ("fewer than three n above n = 500, the largest where the initial network "
                                           "was kept")


def test_the_report_refuses_an_out_that_is_not_markdown(tmp_path):
    """write_report: --out must name a .md file (docstring: nothing is written then). Mutant: the
    check dropped (the page written under any name, its numbers beside it as STEM.json)."""
    from sgm_ref.experiments import report

    row = {"family": "mixture", "d": 2, "n": 500, "seed": 0, "status": "ok", "score_error": 0.1,
           "score_error_se": 0.01}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "results.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"^--out must name a \.md file, got '.*rate\.txt'$"):
        report.write_report(tmp_path / "run", out=str(tmp_path / "rate.txt"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["results.jsonl"]


def _bars(ax):
    """{label: (x, y, lower ends, upper ends)} of an axes' error bars."""
    out = {}
    for c in ax.containers:
        if isinstance(c, ErrorbarContainer):
            data, _, (segments,) = c.lines
            ends = np.array([[a[1], b[1]] for a, b in segments.get_segments()])
            out[c.get_label()] = (data.get_xdata(), data.get_ydata(), ends[:, 0], ends[:, 1])
    return out


def test_the_rate_figures_draw_bars_of_two_standard_errors(monkeypatch):
    """plot_error_vs_n and plot_tv_vs_n: each point at its mean with a bar of 2 standard errors
    each side (the page's "mean ± se" tables, drawn as 95% bars), at its n. Mutants: bars of one
    standard error in either figure."""
    from sgm_ref.experiments import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig))
    points = _points({500: {"network": [1.0, 0.1], "score -x": [2.0, 0.05], "tv": [0.8, 0.02]},
                      2000: {"network": [0.5, 0.04], "score -x": [2.0, 0.03], "tv": [0.6, 0.01]}})
    analysis = {"families": {"fam": {"d": [2], "n": [500, 2000], "methods": ["network", "score -x"],
                                     "points": {"2": points}}}}
    report.plot_error_vs_n("unused.png", analysis)
    assert report.plot_tv_vs_n("unused.png", analysis) is True
    error_bars, tv_bars = (_bars(fig.axes[0]) for fig in figures)
    for bars, label, key in ((error_bars, "network", "network"), (error_bars, "score -x", "score -x"),
                             (tv_bars, "d = 2", "tv")):
        x, y, low, high = bars[label]
        mean, se = (np.array([points[n][key][k] for n in ("500", "2000")]) for k in (0, 1))
        np.testing.assert_array_equal(x, [500, 2000])
        np.testing.assert_array_equal(y, mean)
        np.testing.assert_allclose(low, mean - 2 * se, rtol=1e-15)
        np.testing.assert_allclose(high, mean + 2 * se, rtol=1e-15)


def _row(seed=0, **kw):
    return {"family": "mixture", "d": 2, "n": 500, "seed": seed, "status": "ok", "score_error": 0.1,
            "score_error_se": 0.01, **kw}


def test_analyse_refuses_a_cell_given_twice():
    """analyse: "a cell (family, d, n, seed) given twice" raises (docstring): it would count as
    two seeds, halving the standard error. Mutant: the check skipped."""
    from sgm_ref.experiments import report

    with pytest.raises(ValueError, match=r"^rows hold the cell family=mixture, d=2, n=500, seed=0 twice: it would "
                                         r"count as two seeds \(load the rows with load_sweep\)$"):
        report.analyse([_row(), _row(score_error=0.2)])


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), None, True])
def test_analyse_refuses_a_score_error_that_is_not_a_finite_number(bad):
    """analyse: "a score_error that is not a finite number" raises, naming the cell (docstring);
    NaN or inf would make every mean and fit of its (d, n) NaN. Mutant: the finiteness check
    dropped (NaN and inf passed)."""
    from sgm_ref.experiments import report

    with pytest.raises(ValueError, match=r"^rows: the cell family=mixture, d=2, n=500, seed=1 has score_error "
                                         rf"{bad!r}, not a finite number"):
        report.analyse([_row(), _row(seed=1, score_error=bad)])


def test_the_audit_plot_crosses_only_drawn_errors_that_exceed_the_tolerance(monkeypatch, tmp_path):
    """plot_score_audit: a cross on each drawn error above what the tolerance allows; an error
    that overflowed (null in the JSON; the panel's note says it is not drawn) gets none, and
    with it alone exceeding there is no "exceeds" entry for a cross that cannot be seen.
    Mutant: the crosses at every exceeded t, drawn or not."""
    t = [0.01, 0.1, 1.0]
    report = {"score_error": {"t": t, "error": [1.0, None, 0.01], "standard_error": [0.01, None, 1e-4],
                              "oracle_mean_square": [10.0, 3.0, 1.0]},
              "floor": {"score_error": {"t": t, "error": [0.0] * 3, "standard_error": [0.0] * 3}},
              "tolerance": {"spec": "0.1", "allowed": [0.1, 0.1, 0.001], "exceeded": [0.1, 1.0]}}
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.plot_score_audit(report, str(tmp_path / "a.png"))
    (cross,) = [line for line in figures[0].axes[0].get_lines() if line.get_label() == "exceeds"]
    np.testing.assert_array_equal(cross.get_xdata(), [1.0])
    np.testing.assert_array_equal(cross.get_ydata(), [0.01])
    report["tolerance"]["exceeded"] = [0.1]
    plots.plot_score_audit(report, str(tmp_path / "a.png"))
    assert "exceeds" not in [line.get_label() for line in figures[1].axes[0].get_lines()]


def test_a_floor_test_at_p_equal_to_the_level_does_not_reject():
    """_floor_sentences: "c = 0 rejected at level 0.05" needs p < 0.05, the report's convention
    throughout (its p values are printed on their side of the level); p = 0.05 exactly leaves
    the flattening undecided. Mutant: p <= ALPHA."""
    from sgm_ref.experiments import report

    a = {"d": [8], "network": {"8": {"floor_share": 0.5, "saturating": {"floor_test": {"p": report.ALPHA}}}}}
    not_shows = []
    report._floor_sentences("fam", a, not_shows)
    (sentence,) = not_shows
    assert sentence.startswith("**fam**: whether the error flattens is undecided in d = 8")


def test_the_exact_score_s_loss_counts_in_the_decade_of_the_loss_axis():
    """loss_figure: the axis is logarithmic when the values drawn span a decade, the exact
    score's loss among them: losses 2 to 1.5 (linear alone) beside an exact loss of 0.1 (a
    span of 20) make it logarithmic. Mutant: the exact value left out of that decision."""
    fig, ax = plots.loss_figure(np.linspace(2.0, 1.5, 100))
    assert ax.get_yscale() == "linear"
    fig, ax = plots.loss_figure(np.linspace(2.0, 1.5, 100), exact=(0.1, 0.01))
    assert ax.get_yscale() == "log"


def test_an_unbounded_interval_end_is_shown_as_the_page_says():
    """_interval: the page says "(– or ∞: that end is not bounded by the data)": an unbounded
    lower end is –, an unbounded upper end ∞ (a profile-likelihood interval open at either end).
    Mutant: the two marks swapped."""
    from sgm_ref.experiments import report

    assert report._interval([None, None]) == "[–, ∞]"
    assert report._interval([0.1234, None]) == "[0.12, ∞]"
    assert report._interval([None, 0.5]) == "[–, 0.50]"
    assert report._interval([0.1234, 0.5], digits=3) == "[0.123, 0.500]"


def _fitted_family(seeds):
    """A minimal analysed family: one d whose straight line was fitted, nothing else computed."""
    network = {"n_star": None, "minus_x_end": None, "lack_of_fit": None, "lack_of_fit_reason": "one seed",
               "line_claim": {"b_interval": [0.4, 0.6], "basis": "seeds"}, "saturating": None,
               "saturating_claim": None, "curse_slope": None, "curse_saturating": None,
               "saturating_lack_of_fit": None}
    return {"d": [2], "n": [500, 1000, 2000], "seeds": seeds, "methods": ["network"], "tv_samplers": [],
            "points": {"2": {str(n): {"network": [1.0 / n, 1e-5, seeds]} for n in (500, 1000, 2000)}},
            "fits": {"network": {"by_d": {"2": {"b": 0.5, "b_se": 0.05, "b_interval": [0.4, 0.6], "dof": 7}},
                                 "joint": None}},
            "network": {"2": network}}


@pytest.mark.parametrize("seeds, said", [(4, True), (5, False)])
def test_fewer_than_five_seeds_are_named_as_fewer_than_the_statistics_need(seeds, said):
    """_conclusions: "at most k seed(s) per cell, fewer than the 5 the statistics here are designed
    for" where a family has fewer than 5 seeds: 4 is named, 5 is not. Mutant: named below 4 only."""
    from sgm_ref.experiments import report

    lines = report._conclusions({"fam": _fitted_family(seeds)}, (), True)
    sentence = ("- **fam**: at most 4 seed(s) per cell, fewer than the 5 the statistics here are designed for.")
    assert (sentence in lines) is said


@pytest.mark.parametrize("share, cell", [(1e-4, "2.00e-05 (0%; p = 0.4)"), (1e-7, "0 (0%)")])
def test_a_small_floor_is_printed_and_only_the_optimiser_s_zero_is_0(share, cell):
    """_family_section: the floor column prints c with its share and p, except where the floor is
    below 1e-6 of the error, "the optimiser's zero (its digits are noise)", printed 0: a floor of
    1e-4 of the error is a fitted floor. Mutant: 1e-3 for 1e-6 (a floor of 0.01% shown as 0)."""
    from sgm_ref.experiments import report

    a = _fitted_family(5)
    a.update(left_out=0, schedule={})
    a["network"]["2"].update(
        saturating={"b": 0.5, "b_interval": [0.3, 0.7], "c": 2e-5, "floor_test": {"p": 0.4}}, floor_share=share,
        curse_rate=2 / 6, saturating_reason=None, n_star_reason=None)
    (row,) = [line for line in report._family_section("fam", a) if line.startswith("| 2 | 0.500")]
    assert row.split(" | ")[4] == cell
