"""The teaching pictures of sgm_ref.plots: each runs, draws what it says, and writes its file.

The exact score stands in for a trained model (no training here), so every test is fast.
"""

import os
import re
import sys

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.collections import PathCollection  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.quiver import Quiver  # noqa: E402

from sgm_ref import OU, VP, GaussianMixture, plots  # noqa: E402

RING = GaussianMixture.ring()  # radius 2, std 0.3


def panel_moments(ax):
    """Mass and E|x|^2 of the density image of a panel, by the midpoint rule on its cells."""
    (image,) = ax.get_images()
    density = np.asarray(image.get_array())
    lo, hi, _, _ = image.get_extent()
    n = density.shape[0]
    c = lo + (np.arange(n) + 0.5) * (hi - lo) / n
    u, v = np.meshgrid(c, c)
    cell = ((hi - lo) / n) ** 2
    return density.sum() * cell, (density * (u * u + v * v)).sum() * cell


@pytest.mark.parametrize("process", [OU(), VP(0.1, 20.0)])
def test_forward_process_panels_hold_the_density_of_p_t(process):
    """Each panel's image integrates to 1 and has the second moment of p_t at its own t:
    E|X_t|^2 = alpha_t^2 (radius^2 + 2 std^2) + 2 sigma_t^2 for the ring (a density drawn
    at the wrong t, or not exponentiated, or not normalised, fails)."""
    ts = (0.0, 0.05, 0.3, 1.0)
    fig = plots.forward_process_figure(RING, ts, process, resolution=160)
    assert len(fig.axes) == len(ts)
    for ax, t in zip(fig.axes, ts):
        mass, second = panel_moments(ax)
        alpha, sigma = process.alpha(t), process.sigma(t)
        expected = alpha**2 * (2.0**2 + 2 * 0.3**2) + 2 * sigma**2
        assert mass == pytest.approx(1.0, abs=3e-3), t
        assert second == pytest.approx(expected, rel=1e-2), t


def test_forward_process_samples_are_drawn_from_rng_and_written(tmp_path):
    fig = plots.forward_process_figure(RING, (0.0, 0.5), rng=np.random.default_rng(0), n_points=50,
                                       resolution=40)
    for ax in fig.axes:
        (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        assert dots.get_offsets().shape == (50, 2)
    path = plots.save_figure(fig, tmp_path / "forward.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    again = plots.forward_process_figure(RING, (0.0, 0.5), rng=np.random.default_rng(0), n_points=50,
                                         resolution=40)
    for a, b in zip(fig.axes, again.axes):  # the same Generator seed draws the same points
        np.testing.assert_array_equal(a.collections[0].get_offsets(), b.collections[0].get_offsets())


def test_forward_process_refuses_bad_arguments():
    with pytest.raises(ValueError, match="rng"):
        plots.forward_process_figure(RING, (0.1,), n_points=10)
    with pytest.raises(ValueError, match="ts"):
        plots.forward_process_figure(RING, (-1.0,))
    with pytest.raises(ValueError, match="two-dimensional"):
        plots.forward_process_figure(GaussianMixture.paper_family(d=3, k=2, radius=1.0, rng=0))
    with pytest.raises(ValueError, match="extent"):
        plots.forward_process_figure(RING, (0.1,), extent=-1.0)


def test_score_field_draws_the_exact_score_and_the_model_on_one_scale():
    model = lambda x, t: 0.5 * RING.score(x, t)  # noqa: E731
    fig = plots.score_field_figure(RING, model, ts=(0.05, 1.0), arrows=6, resolution=30)
    assert len(fig.axes) == 2
    for ax, t in zip(fig.axes, (0.05, 1.0)):
        exact, learned = [c for c in ax.collections if isinstance(c, Quiver)]
        xy = exact.XY
        np.testing.assert_allclose(np.column_stack([exact.U, exact.V]), RING.score(xy, np.full(len(xy), t)))
        np.testing.assert_allclose(np.column_stack([learned.U, learned.V]), 0.5 * RING.score(xy, np.full(len(xy), t)))
        assert exact.scale == learned.scale
    only_exact = plots.score_field_figure(RING, None, ts=(0.5,), arrows=4, resolution=20)
    assert len([c for c in only_exact.axes[0].collections if isinstance(c, Quiver)]) == 1
    with pytest.raises(ValueError, match="ts"):
        plots.score_field_figure(RING, None, ts=(0.0,))


def test_trajectories_figure_draws_the_paths_and_the_end_points():
    fig = plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(1), n_points=100, n_paths=3,
                                    n_steps=20, resolution=30)
    plane, time = fig.axes
    assert len(plane.get_lines()) == 4 * 3  # path, its last stretch, start, end per path
    assert len(time.get_lines()) == 3
    assert len(time.get_lines()[0].get_xdata()) == 21  # the grid's 21 times
    (ends,) = [c for c in plane.collections if isinstance(c, PathCollection)]
    assert ends.get_offsets().shape == (100, 2)
    with pytest.raises(ValueError, match="n_paths"):
        plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(1), n_points=2, n_paths=3)


def test_score_error_profile_figure_one_line_per_score_and_the_oracle_at_zero():
    ts = np.array([0.05, 0.5])
    fig = plots.score_error_profile_figure({"exact": RING.score, "-x": lambda x, t: -x}, RING,
                                           rng=np.random.default_rng(2), ts=ts, n=50)
    (ax,) = fig.axes
    bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 2
    # the oracle against itself: 0 at both times, which a log axis cannot show; the legend says so
    assert len(bars[0].lines[0].get_ydata()) == 0
    assert bars[0].get_label() == "exact (± 2 s.e.): 0 at every t"
    np.testing.assert_array_equal(bars[1].lines[0].get_xdata(), ts)
    assert np.all(bars[1].lines[0].get_ydata() > 0)
    assert bars[1].get_label() == "-x (± 2 s.e.)"
    with pytest.raises(ValueError, match="scores"):
        plots.score_error_profile_figure({}, RING, rng=np.random.default_rng(2))


def test_reverse_process_animation_writes_a_small_gif(tmp_path):
    from PIL import Image

    path = tmp_path / "reverse.gif"
    fig = plots.reverse_process_animation(RING, RING.score, path, rng=np.random.default_rng(3), n_points=200,
                                          n_steps=20, n_frames=5, resolution=30, dpi=40)
    assert fig.axes[0].get_images()
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.n_frames >= 5
    assert os.stat(path).st_mode & 0o044 == 0o044 & ~_umask()  # a plain file's mode, not mkstemp's 0600
    assert [p.name for p in tmp_path.iterdir()] == ["reverse.gif"]  # no temporary file left


def _umask():
    u = os.umask(0)
    os.umask(u)
    return u


def test_reverse_process_animation_refuses_bad_paths_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"\.gif"):
        plots.reverse_process_animation(RING, RING.score, tmp_path / "x.png", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="does not exist"):
        plots.reverse_process_animation(RING, RING.score, tmp_path / "no" / "x.gif", rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="n_frames"):
        plots.reverse_process_animation(RING, RING.score, tmp_path / "x.gif", rng=np.random.default_rng(0),
                                        n_steps=10, n_frames=12)
    assert list(tmp_path.iterdir()) == []


def test_a_failing_frame_leaves_no_file(tmp_path):
    """An error while the frames are written (here the density of the third) removes the
    temporary GIF: nothing half-written is left."""

    class Failing:
        dim, mean, covariance = RING.dim, RING.mean, RING.covariance
        calls = 0

        def log_prob(self, x, t, process):
            Failing.calls += 1
            if Failing.calls > 3:
                raise RuntimeError("the density broke")
            return RING.log_prob(x, t, process)

    with pytest.raises(RuntimeError, match="broke"):
        plots.reverse_process_animation(Failing(), RING.score, tmp_path / "x.gif", rng=np.random.default_rng(0),
                                        n_steps=10, n_frames=5, n_points=20, resolution=20)
    assert Failing.calls == 4
    assert list(tmp_path.iterdir()) == []


def test_without_matplotlib_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError, match=r"sgm_ref\[plot\]"):
        plots.forward_process_figure(RING, (0.1,))


def test_save_figure_takes_the_format_from_the_extension_and_refuses_a_missing_folder(tmp_path):
    fig = plots.score_field_figure(RING, ts=(1.0,), arrows=3, resolution=10)
    with open(plots.save_figure(fig, tmp_path / "field.svg"), encoding="utf-8") as f:
        assert "<svg" in f.read(2000)
    with pytest.raises(ValueError, match="does not exist"):
        plots.save_figure(fig, tmp_path / "missing" / "field.png")
    assert [p.name for p in tmp_path.iterdir()] == ["field.svg"]


def test_score_field_refuses_a_score_it_cannot_draw():
    """A model's field is checked before it is drawn: NaN arrows would silently vanish, an
    (n, 3) output lose a column, a (1, 2) one draw one arrow for the whole grid."""
    def nan_at_the_centre(x, t):
        s = RING.score(x, t)
        s[np.linalg.norm(x, axis=1) < 1.0] = np.nan
        return s

    for score, pattern in ((nan_at_the_centre, "non-finite values at t = 0.5 for 9 of 25 points"),
                           (lambda x, t: np.zeros((len(x), 3)), r"shape \(25, 2\), got shape \(25, 3\)"),
                           (lambda x, t: np.zeros((1, 2)), r"got shape \(1, 2\)")):
        with pytest.raises(ValueError, match=pattern):
            plots.score_field_figure(RING, score, ts=(0.5,), arrows=5, resolution=10, extent=2.0)


def test_score_error_profile_figure_names_times_of_zero_error():
    ts = np.array([0.05, 0.5, 1.0])

    def exact_late(x, t):  # the exact score from t = 0.4 on, -x before
        return np.where((t >= 0.4)[:, None], RING.score(x, t), -x)

    fig = plots.score_error_profile_figure(exact_late, RING, rng=np.random.default_rng(2), ts=ts, n=50)
    (bars, *_) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_array_equal(bars.lines[0].get_xdata(), [0.05])
    assert bars.get_label() == "model (± 2 s.e.); 0 at 2 t, not drawn"


def test_trajectories_title_says_which_stretch_is_bold():
    fig = plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(1), n_points=10, n_paths=1,
                                    T=5.0, n_steps=20, resolution=10)
    plane = fig.axes[0]
    bold = plane.get_lines()[1]  # the path's last stretch
    assert plane.get_title() == f"1 reverse path (bold: the last {len(bold.get_xdata()) - 1} steps), 10 end points"


@pytest.mark.parametrize("fps", [0, -2, float("nan"), 1000, "10", True])
def test_reverse_process_animation_refuses_a_bad_fps_before_the_sampler(tmp_path, fps):
    def never(x, t):
        raise AssertionError("the sampler ran")

    with pytest.raises(ValueError, match=r"fps must be a number of frames per second in \[1, 100\]"):
        plots.reverse_process_animation(RING, never, tmp_path / "x.gif", rng=np.random.default_rng(0), fps=fps)
    assert list(tmp_path.iterdir()) == []


def test_save_figure_refuses_a_folder_or_an_empty_name(tmp_path):
    fig = plots.score_field_figure(RING, ts=(1.0,), arrows=3, resolution=10)
    (tmp_path / "sub").mkdir()
    with pytest.raises(ValueError, match="path must name a file to write.*a folder"):
        plots.save_figure(fig, tmp_path / "sub")
    with pytest.raises(ValueError, match="path must name a file to write, got ''"):
        plots.save_figure(fig, "")
    assert [p.name for p in tmp_path.iterdir()] == ["sub"] and not list((tmp_path / "sub").iterdir())


def test_run_plots_and_the_audit_plot_leave_no_pyplot_figure_and_keep_the_backend(tmp_path, monkeypatch):
    """The plots are Figures made without pyplot: a failed write leaks no figure, and a
    notebook's backend is not switched to Agg by a call. Each of the run's three plots and
    the audit's (only plot_loss was called, so the others could use pyplot unnoticed), and
    the session's backend is put back afterwards (it was left at svg for every later test)."""
    import matplotlib
    import matplotlib.pyplot as plt

    backend = matplotlib.get_backend()
    matplotlib.use("svg")
    try:
        before = plt.get_fignums()
        loss = np.linspace(2.0, 1.0, 50)
        plots.plot_loss(loss, str(tmp_path / "loss.png"))  # written as the run writes it
        report = _audit_report([1.0, 0.1, 0.01], [0.0, 0.0, 0.0], [0.5, 0.2], [0.3, 0.1])
        calls = {"loss.png": lambda path: plots.plot_loss(loss, path, exact=(0.9, 0.01)),
                 "samples.png": lambda path: plots.plot_samples(RING, RING.sample(20, np.random.default_rng(0)),
                                                                path, "t"),
                 "score_error.png": lambda path: plots.plot_score_error(report["score_error"], path),
                 "audit.png": lambda path: plots.plot_score_audit(report, path, grid=[5.0, 1.0, 0.01])}
        for name, call in calls.items():
            for _ in range(2):
                with pytest.raises(ValueError, match="does not exist"):
                    call(str(tmp_path / "missing" / name))
        # and made whole (pyplot registers a figure when it is made; the write is the _save above)
        made = []
        monkeypatch.setattr(plots, "_save", lambda fig, path: made.append(fig))
        for name, call in calls.items():
            call(str(tmp_path / name))
            assert plt.get_fignums() == before, name
            assert matplotlib.get_backend().lower() == "svg", name
        assert len(made) == len(calls) and [p.name for p in tmp_path.iterdir()] == ["loss.png"]
    finally:
        matplotlib.use(backend)


@pytest.mark.parametrize("n_steps, bold", [(1, 1), (2, 1), (3, 1)])
def test_trajectories_bold_stretch_has_at_least_one_step(n_steps, bold):
    """n_steps = 1 drew no bold step and titled it 'the last 0 steps' (a review)."""
    fig = plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(1), n_points=10, n_paths=2,
                                    T=5.0, n_steps=n_steps, resolution=10)
    plane = fig.axes[0]
    assert len(plane.get_lines()[1].get_xdata()) == bold + 1
    assert f"(bold: the last {bold} step{'s' if bold != 1 else ''})" in plane.get_title()


def test_without_matplotlib_every_entry_point_says_how_to_install_it(tmp_path):
    """`import matplotlib` failing in a fresh interpreter: the run's plots are skipped with a
    note, the audit plot and every picture say how to install it (reverse_process_animation
    raised a bare "No module named 'matplotlib.animation'"), and nothing is written."""
    import subprocess
    import textwrap

    code = textwrap.dedent(f"""
        import builtins, numpy as np
        real = builtins.__import__
        def fake(name, *args, **kwargs):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return real(name, *args, **kwargs)
        builtins.__import__ = fake
        from sgm_ref import plots, GaussianMixture
        ring, rng, folder = GaussianMixture.ring(), np.random.default_rng(0), {str(tmp_path)!r}
        print(plots.plot_run(folder, ring, np.zeros((3, 2)), {{}}))
        calls = [lambda: plots.plot_score_audit({{}}, folder + "/audit.png"),
                 lambda: plots.forward_process_figure(ring),
                 lambda: plots.score_field_figure(ring),
                 lambda: plots.trajectories_figure(ring, ring.score, rng=rng),
                 lambda: plots.score_error_profile_figure(ring.score, ring, rng=rng),
                 lambda: plots.reverse_process_animation(ring, ring.score, folder + "/a.gif", rng=rng)]
        for call in calls:
            try:
                call()
            except (ValueError, ModuleNotFoundError) as exc:
                print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "([], 'matplotlib is not installed: plots skipped (pip install \"sgm_ref[plot]\")')"
    assert len(lines) == 7
    assert all('pip install "sgm_ref[plot]"' in line for line in lines[1:]), lines
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("call, name", [
    (lambda: plots.score_field_figure(RING, arrows=float("nan")), "arrows"),
    (lambda: plots.score_field_figure(RING, arrows=float("inf")), "arrows"),
    (lambda: plots.score_field_figure(RING, ts=(1.0,), arrows=3, resolution=float("nan")), "resolution"),
    (lambda: plots.forward_process_figure(RING, (0.1,), resolution=float("inf")), "resolution"),
    (lambda: plots.forward_process_figure(RING, "abc"), "ts"),
    (lambda: plots.forward_process_figure(RING, (0.1, float("nan"))), "ts"),
    (lambda: plots.score_field_figure(RING, ts=[[0.5, 1.0]]), "ts"),
    (lambda: plots.forward_process_figure(RING, (0.1,), extent="abc"), "extent"),
    (lambda: plots.forward_process_figure(RING, (0.1,), extent=True), "extent"),
    (lambda: plots.forward_process_figure(RING, (0.1,), n_points=-1, rng=np.random.default_rng(0)), "n_points"),
    (lambda: plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(0), n_paths=float("nan")),
     "n_paths"),
    (lambda: plots.reverse_process_animation(RING, RING.score, "x.gif", rng=np.random.default_rng(0),
                                             n_frames=float("inf")), "n_frames"),
])
def test_bad_picture_arguments_are_named(call, name):
    """NaN or inf counts raised "cannot convert float NaN to integer" or an OverflowError,
    ts of strings numpy's "could not convert string to float": no argument named."""
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        call()


@pytest.mark.parametrize("target", [RING, GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.09], [0.09]])],
                         ids=["d=2", "d=1"])
def test_samples_too_far_to_draw_the_density_over_are_drawn_without_it(tmp_path, target):
    """A diverged sampler's points at 1e160: the density grid over their range overflows
    log p_0, and samples.png raised the oracle's "x[1] ... is too far from the target" about
    a grid point. Now the samples are drawn, without the density, and a note says why."""
    x = np.zeros((3, target.dim))
    x[1, 0] = 1e160
    plots.plot_samples(target, x, str(tmp_path / "samples.png"), "title")
    assert [p.name for p in tmp_path.iterdir()] == ["samples.png"]
    fig, ax = plots.samples_figure(target, x, "title")
    (note,) = ax.texts
    assert note.get_text() == ("target density not drawn: the samples reach |x| = 1e+160, too far from the target "
                               "to evaluate it over their range")
    assert not ax.get_lines() and not [c for c in ax.collections if type(c).__name__.startswith("Contour")] \
        and not [c for c in ax.collections if type(c).__name__ == "QuadContourSet"]
    near = target.sample(50, np.random.default_rng(0))  # as before: the density drawn, no note
    fig, ax = plots.samples_figure(target, near, "title")
    assert not ax.texts
    if target.dim == 1:
        (line,) = ax.get_lines()
        np.testing.assert_array_equal(line.get_ydata(), np.exp(target.log_prob(line.get_xdata()[:, None])))
    else:
        assert any(type(c).__name__ == "QuadContourSet" for c in ax.collections)


def _audit_report(error, floor_error, model_steps, floor_steps):
    """A minimal sgm-ref audit report: the fields plot_score_audit draws."""
    t = [0.01, 0.1, 1.0]
    return {"score_error": {"t": t, "error": error, "standard_error": [0.01 * e for e in error],
                            "oracle_mean_square": [10.0, 3.0, 1.0]},
            "tv_bound": {"kl_path_per_step": model_steps},
            "floor": {"score_error": {"t": t, "error": floor_error, "standard_error": [0.0] * 3},
                      "tv_bound": {"kl_path_per_step": floor_steps}}}


def _audit_figure(monkeypatch, tmp_path, report, grid=None):
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    plots.plot_score_audit(report, str(tmp_path / "audit.png"), grid)
    (fig,) = figures
    return fig


def test_audit_plot_keeps_the_floor_in_view_beside_a_model_far_above_it(monkeypatch, tmp_path):
    """The path-KL axis started four decades below the larger total: a model's path KL of
    2e6 beside the floor's 4.4 (a VE audit of a wrong score) put the floor's whole curve
    below the axis, listed in the legend but not drawn. Each curve is the running sum of its
    steps' KL, and both totals are within the axis."""
    model_steps, floor_steps = [2e6, 3e4, 1e3, 10.0], [1.5, 1.2, 1.0, 0.7]
    report = _audit_report([1.0, 0.1, 0.01], [0.0, 0.0, 0.0], model_steps, floor_steps)
    fig = _audit_figure(monkeypatch, tmp_path, report, grid=[5.0, 1.0, 0.2, 0.04, 0.01])
    right = fig.axes[1]
    lines = {line.get_label().split(":")[0]: line for line in right.get_lines()}
    bottom, top = right.get_ylim()
    for name, steps in (("model", model_steps), ("exact score (the floor)", floor_steps)):
        running, total = [], 0.0
        for v in steps:
            total += v
            running.append(total)
        np.testing.assert_allclose(lines[name].get_ydata(), running, rtol=1e-15)
        np.testing.assert_array_equal(lines[name].get_xdata(), [1.0, 0.2, 0.04, 0.01])
        assert bottom <= running[-1] <= top, (name, bottom, top)
    assert right.get_yscale() == "log"


def test_audit_plot_names_errors_of_zero_in_the_legend(monkeypatch, tmp_path):
    """A model exact at some t (error 0 there) lost those points from the log axis without a
    word, and a model exact at every t drew nothing under a plain "model" label."""
    fig = _audit_figure(monkeypatch, tmp_path, _audit_report([0.0, 0.1, 0.0], [0.0, 1e-20, 0.0], [1.0], [1.0]))
    bars = {c.get_label(): c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)}
    assert set(bars) == {"model (± 2 s.e.); 0 at 2 t, not drawn",
                         "exact score (± 2 s.e.): the floor; 0 at 2 t, not drawn"}
    np.testing.assert_array_equal(bars["model (± 2 s.e.); 0 at 2 t, not drawn"].lines[0].get_xdata(), [0.1])
    fig = _audit_figure(monkeypatch, tmp_path, _audit_report([0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0], [1.0]))
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert bars.get_label() == "model (± 2 s.e.): 0 at every t" and len(bars.lines[0].get_xdata()) == 0
    fig = _audit_figure(monkeypatch, tmp_path, _audit_report([1.0, 0.1, 0.01], [0.0, 0.0, 0.0], [1.0], [1.0]))
    labels = [c.get_label() for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    assert labels == ["model (± 2 s.e.)"]  # as before: nothing to say


def test_audit_plot_s_left_panel_draws_the_numbers_of_the_report(monkeypatch, tmp_path):
    """The score panel: the model's and the floor's errors with bars of 2 standard errors each
    side (as the legend says), the scale E|grad log p_t|^2, the error the tolerance allows at
    each t (tol(t) times the scale; also test_audit_score_floor.py) and a cross on each time
    that exceeds it (the bars' length was not checked: bars of 1 standard error passed)."""
    report = _audit_report([1.0, 0.1, 0.01], [1e-3, 2e-4, 0.0], [1.0], [1.0])
    report["floor"]["score_error"]["standard_error"] = [1e-4, 5e-5, 0.0]
    report["tolerance"] = {"spec": "0.01=0.5,0.1=0.002", "allowed": [0.5, 0.002, 0.002], "exceeded": [0.1, 1.0]}
    ax = _audit_figure(monkeypatch, tmp_path, report).axes[0]
    t = np.array([0.01, 0.1, 1.0])
    bars = {c.get_label(): c for c in ax.containers if isinstance(c, ErrorbarContainer)}
    for label, error, se in (("model (± 2 s.e.)", [1.0, 0.1, 0.01], [0.01, 0.001, 1e-4]),
                             ("exact score (± 2 s.e.): the floor; 0 at 1 t, not drawn", [1e-3, 2e-4], [1e-4, 5e-5])):
        data, _, (segments,) = bars[label].lines
        np.testing.assert_array_equal(data.get_xdata(), t[:len(error)])
        np.testing.assert_array_equal(data.get_ydata(), error)
        ends = np.array([[a[1], b[1]] for a, b in segments.get_segments()])
        np.testing.assert_allclose(ends, np.column_stack([np.subtract(error, np.multiply(2, se)),
                                                          np.add(error, np.multiply(2, se))]), rtol=1e-15)
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_array_equal(lines["E|grad log p_t|^2 (scale)"].get_ydata(), [10.0, 3.0, 1.0])
    allowed = lines["allowed at each t (0.01=0.5,0.1=0.002)"]
    np.testing.assert_array_equal(allowed.get_xdata(), t)
    np.testing.assert_allclose(allowed.get_ydata(), [5.0, 0.006, 0.002], rtol=1e-15)
    np.testing.assert_array_equal(lines["exceeds"].get_xdata(), [0.1, 1.0])
    np.testing.assert_array_equal(lines["exceeds"].get_ydata(), [0.1, 0.01])


ONE_D = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.09], [0.09]])
FIVE_D = GaussianMixture([0.3, 0.7], [[2.0, 0.0, 1.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 0.0, 0.3]],
                         [np.diag([0.5, 1.5, 0.2, 0.1, 0.05]), np.diag([0.4, 1.2, 0.3, 0.2, 0.1])])


@pytest.mark.parametrize("target", [ONE_D, RING, FIVE_D], ids=["d=1", "d=2", "d=5"])
def test_samples_figure_refuses_points_it_cannot_draw(target):
    """A NaN sample was said to be "too far from the target" (d = 1, 2) or dropped without a
    word (d = 5); inf raised numpy's "supplied range of [...] is not finite" (d = 1); an
    (n, 2) array for a one-dimensional target drew its first column only; no points raised
    "zero-size array to reduction operation minimum"."""
    d = target.dim
    good = target.sample(20, np.random.default_rng(0))
    for bad_value in (np.nan, np.inf, -np.inf):
        x = good.copy()
        x[7, d - 1] = bad_value
        with pytest.raises(ValueError, match=r"^x must hold finite numbers: 1 of 20 points are not \(the first "
                                             r"is row 7\)"):
            plots.samples_figure(target, x, "t")
    for x in (np.zeros((0, d)), np.zeros((5, d + 1)), np.zeros(5), [["a"] * d]):
        with pytest.raises(ValueError, match=rf"^x must be the samples, an array of shape \(n, {d}\) with n >= 1"):
            plots.samples_figure(target, x, "t")
    fig, ax = plots.samples_figure(target, good[:1].astype(np.float32), "t")  # one float32 point: drawn
    assert not ax.texts


def test_samples_figure_for_d_above_2_projects_on_the_leading_principal_directions():
    """d = 5: the points drawn are (x - mean) @ V, V the covariance's two leading
    eigenvectors (checked against numpy's SVD of the covariance, up to each column's sign;
    the target's eigenvalues are distinct, so the directions are unique)."""
    x = FIVE_D.sample(40, np.random.default_rng(1))
    fig, ax = plots.samples_figure(FIVE_D, x, "t")
    shown = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() == "samples"]
    (dots,) = shown
    w, mu = np.array([0.3, 0.7]), np.array([[2.0, 0.0, 1.0, 0.0, 0.0], [-1.0, 0.5, 0.0, 0.0, 0.3]])
    sigma = [np.diag([0.5, 1.5, 0.2, 0.1, 0.05]), np.diag([0.4, 1.2, 0.3, 0.2, 0.1])]
    mean = w @ mu  # the mixture's moments by hand: sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T
    covariance = sum(wk * (sk + np.outer(mk, mk)) for wk, sk, mk in zip(w, sigma, mu)) - np.outer(mean, mean)
    u, singular, _ = np.linalg.svd(covariance)
    assert np.all(np.diff(singular) < -0.05)
    expected = (x - mean) @ u[:, :2]
    got = np.asarray(dots.get_offsets())
    signs = np.sign(np.sum(got * expected, axis=0))
    np.testing.assert_allclose(got, expected * signs, rtol=0, atol=1e-12)
    assert ax.get_xlabel() == "x - E[X] on the target's first principal direction (of d = 5)"
    assert ax.get_ylabel() == "x - E[X] on the target's second principal direction (of d = 5)"


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(size=(4, 3)), r"^size must be a positive number"),
    (dict(size=-1.0), r"^size must be a positive number"),
    (dict(dpi=0), r"^dpi must be a positive number"),
    (dict(dpi=float("nan")), r"^dpi must be a positive number"),
    (dict(n_steps="10"), r"^n_steps must be an integer >= 1, got '10'"),
])
def test_reverse_process_animation_refuses_a_bad_size_dpi_or_n_steps_before_the_sampler(tmp_path, kwargs,
                                                                                          pattern):
    """dpi=0 raised an IndexError from the GIF writer, size=(4, 3) a TypeError, both after
    the sampler had run; n_steps="10" a TypeError from n_steps + 1."""
    def never(x, t):
        raise AssertionError("the sampler ran")

    with pytest.raises(ValueError, match=pattern):
        plots.reverse_process_animation(RING, never, tmp_path / "x.gif", rng=np.random.default_rng(0), **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_save_figure_refuses_a_bad_dpi_and_an_unknown_extension(tmp_path):
    fig = plots.score_field_figure(RING, ts=(1.0,), arrows=3, resolution=10)
    for dpi in (0, -1, float("nan"), "100"):
        with pytest.raises(ValueError, match=r"^dpi must be a positive number"):
            plots.save_figure(fig, tmp_path / "a.png", dpi=dpi)
    with pytest.raises(ValueError, match="Format 'xyz' is not supported"):
        plots.save_figure(fig, tmp_path / "a.xyz")
    assert list(tmp_path.iterdir()) == []


def _ring_density_by_hand(points, t):
    """p_t of the ring under OU, by scipy: sum_k w_k N(alpha mu_k, (alpha^2 0.3^2 + sigma^2) I)."""
    from scipy.stats import multivariate_normal

    angles = 2 * np.pi * np.arange(8) / 8
    alpha, var = np.exp(-t), np.exp(-2 * t) * 0.09 - np.expm1(-2 * t)
    return sum(multivariate_normal(alpha * 2.0 * np.array([np.cos(a), np.sin(a)]), var * np.eye(2)).pdf(points)
               for a in angles) / 8


def test_density_images_are_p_t_at_the_cell_centres_by_an_independent_computation(tmp_path):
    """forward_process_figure's panels and the animation's last frame hold p_t at the cell
    centres of [-h, h]^2 (row = second coordinate, origin lower), against scipy's normal
    densities of the ring's closed form."""
    h, n = 3.0, 12
    c = -h + (np.arange(n) + 0.5) * 2 * h / n
    u, v = np.meshgrid(c, c)
    cells = np.column_stack([u.ravel(), v.ravel()])
    fig = plots.forward_process_figure(RING, (0.0, 0.2), extent=h, resolution=n)
    for ax, t in zip(fig.axes, (0.0, 0.2)):
        (image,) = ax.get_images()
        assert image.get_extent() == [-h, h, -h, h] and image.origin == "lower"
        np.testing.assert_allclose(np.asarray(image.get_array()), _ring_density_by_hand(cells, t).reshape(n, n),
                                   rtol=1e-12, atol=0)
    last = plots.reverse_process_animation(RING, RING.score, tmp_path / "r.gif", rng=np.random.default_rng(0),
                                           n_points=10, T=1.0, t0=0.05, n_steps=4, n_frames=2, fps=1,
                                           extent=h, resolution=n, size=1.0, dpi=20)
    (image,) = last.axes[0].get_images()
    np.testing.assert_allclose(np.asarray(image.get_array()), _ring_density_by_hand(cells, 0.05).reshape(n, n),
                               rtol=1e-12, atol=0)


def test_samples_contours_are_where_the_legend_says_by_an_independent_density():
    """d = 2: the contour lines lie where p_0 is e^-1, e^-3, e^-5 and e^-7 of its peak, as
    the legend says (scipy's normal densities, peak by scipy.optimize; a transposed grid
    would fail: the target has no x1 <-> x2 symmetry), within the drawing grid's accuracy."""
    from scipy.optimize import minimize
    from scipy.stats import multivariate_normal

    w, mu = [0.3, 0.7], [[-1.0, 0.5], [1.5, -0.5]]
    cov = [np.diag([0.2, 0.6]), np.array([[0.5, 0.2], [0.2, 0.3]])]
    target = GaussianMixture(w, mu, cov)

    def log_p(x):
        return np.log(sum(wk * multivariate_normal(m, c).pdf(x) for wk, m, c in zip(w, mu, cov)))

    peak = max(-minimize(lambda x: -log_p(x), m, method="Nelder-Mead", options=dict(xatol=1e-10, fatol=1e-13)).fun
               for m in mu)
    fig, ax = plots.samples_figure(target, target.sample(300, np.random.default_rng(0)), "t")
    (contours,) = [c for c in ax.collections if type(c).__name__ == "QuadContourSet"]
    np.testing.assert_array_equal(contours.levels, [1.0, 3.0, 5.0, 7.0])
    for level, path in zip(contours.levels, contours.get_paths()):
        vertices = path.vertices
        assert len(vertices) > 20
        np.testing.assert_allclose(log_p(vertices) - peak, level - 8.0, atol=0.02)
    (legend_line,) = ax.get_lines()
    assert legend_line.get_label() == "target density: e^-1, e^-3, e^-5, e^-7 of its peak"
    assert [text.get_text() for text in ax.get_legend().get_texts()] == ["samples", legend_line.get_label()]


def test_points_outside_the_square_are_counted_not_dropped_silently():
    """The axes end at [-h, h]^2: samples of p_t (or a sampler's end points) beyond it were
    not drawn and nothing said so. The note counts them, as numpy does from the drawn points."""
    fig = plots.forward_process_figure(RING, (0.0, 3.0), rng=np.random.default_rng(0), n_points=200, extent=2.2,
                                       resolution=10)
    for ax in fig.axes:
        (dots,) = [c for c in ax.collections if isinstance(c, PathCollection)]
        xy = np.asarray(dots.get_offsets())
        outside = int(np.sum((np.abs(xy[:, 0]) > 2.2) | (np.abs(xy[:, 1]) > 2.2)))
        assert outside > 0
        assert [text.get_text() for text in ax.texts] == [f"{outside} of 200 points outside, not shown"]
    inside = plots.forward_process_figure(RING, (0.0,), rng=np.random.default_rng(0), n_points=200, extent=10.0,
                                          resolution=10)
    assert not inside.axes[0].texts
    fig = plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(1), n_points=50,
                                    n_paths=2, n_steps=10, extent=1.8, resolution=10)
    plane = fig.axes[0]
    (ends,) = [c for c in plane.collections if isinstance(c, PathCollection)]
    outside = int(np.sum(np.any(np.abs(np.asarray(ends.get_offsets())) > 1.8, axis=1)))
    assert 0 < outside < 50
    assert [t.get_text() for t in plane.texts] == [f"{outside} of 50 end points outside, not shown"]


def test_density_colours_start_at_zero():
    """A nearly flat density over a small square was drawn with the colour map's full
    contrast (its colours ran from the smallest value shown); now from 0 to the largest."""
    fig = plots.forward_process_figure(RING, (3.0,), extent=0.1, resolution=10)
    (image,) = fig.axes[0].get_images()
    density = np.asarray(image.get_array())
    assert density.min() > 0.99 * density.max()  # flat within 1% over the square
    assert image.get_clim() == (0.0, density.max())


@pytest.mark.parametrize("overflow", [float("inf"), None])  # in memory, and read back from JSON
def test_run_score_error_plot_says_both_an_overflow_and_a_zero(overflow):
    """An error of 0 at one t and an overflow at another: only the overflow was said, the
    point at 0 left out of the log axis without a word."""
    fig, ax = plots.score_error_figure({"t": [0.01, 0.1, 1.0], "error": [0.0, overflow, 0.01],
                                        "standard_error": [0.0, overflow, 0.001],
                                        "oracle_mean_square": [10.0, 3.0, 1.0]})
    (bars,) = ax.containers
    np.testing.assert_array_equal(bars.lines[0].get_xdata(), [1.0])
    assert [text.get_text() for text in ax.texts] == ["the error overflows float64 at some t (not drawn)",
                                                      "the error is 0 at some t (not drawn on a log axis)"]


@pytest.mark.parametrize("call", [
    lambda: plots.samples_figure(RING, np.zeros((3, 2)), "title"),
    lambda: plots.loss_figure([2.0, 1.0]),
    lambda: plots.score_error_figure({"t": [0.1], "error": [1.0], "standard_error": [0.1],
                                      "oracle_mean_square": [2.0]}),
], ids=["samples_figure", "loss_figure", "score_error_figure"])
def test_the_run_figures_without_matplotlib_say_how_to_install_it(monkeypatch, call):
    """The run's figures (documented in the API pages) raised a bare "import of
    matplotlib.figure halted" / "No module named 'matplotlib'", naming no extra."""
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # import fails as if not installed
    with pytest.raises(ModuleNotFoundError, match=r'pip install "sgm_ref\[plot\]"'):
        call()


@pytest.mark.parametrize("n_points", ["10", float("nan"), 0, 2.5])
def test_sampler_pictures_name_a_bad_n_points(tmp_path, n_points):
    """n_points="10" raised a TypeError ('<=' between int and str), NaN an error blaming
    n_paths, 0 the sampler's "n must be an integer >= 1", naming an argument not passed."""
    with pytest.raises(ValueError, match=r"^n_points must be an integer >= 1"):
        plots.trajectories_figure(RING, RING.score, rng=np.random.default_rng(0), n_points=n_points, n_paths=1)
    with pytest.raises(ValueError, match=r"^n_points must be an integer >= 1"):
        plots.reverse_process_animation(RING, RING.score, tmp_path / "x.gif", rng=np.random.default_rng(0),
                                        n_points=n_points)
    assert list(tmp_path.iterdir()) == []


def test_one_dimensional_samples_show_the_whole_target_density():
    """d = 1: the exact density was drawn over the samples' range only, on 400 points: a
    mode the sampler missed was cut off the picture (modes at -5 and 1, samples near 1),
    and one sample far out (at 1e3) spread the 400 points so thin that the curve missed
    the peaks. The curve now reaches both modes' peaks, 0.5 / sqrt(2 pi 0.25) by hand."""
    target = GaussianMixture([0.5, 0.5], [[-5.0], [1.0]], [[0.25], [0.25]])
    peak = 0.5 / np.sqrt(2 * np.pi * 0.25)  # each mode's height (the other's tail adds < 1e-15)
    one_mode = 1.0 + 0.5 * np.random.default_rng(0).standard_normal((300, 1))
    far = np.vstack([target.sample(300, np.random.default_rng(1)), [[1e3]]])
    for x in (one_mode, far):
        fig, ax = plots.samples_figure(target, x, "t")
        (line,) = ax.get_lines()
        u, p = line.get_xdata(), line.get_ydata()
        np.testing.assert_allclose(p, np.exp(target.log_prob(u[:, None])), rtol=1e-13)
        assert u.min() < -7.0 and u.max() > max(3.0, x.max())
        for mode in (-5.0, 1.0):
            near = np.abs(u - mode) < 0.5
            assert peak * (1 - 2e-3) < p[near].max() <= peak * (1 + 1e-15), (mode, p[near].max(), peak)


def test_a_failure_at_the_first_frame_is_raised_as_itself(tmp_path):
    """matplotlib's writer.saving() calls finish() on an error as well: a failure at the
    first frame (here the density) came out as its "IndexError: list index out of range"
    (no frame to save), the real error hidden in __context__. Nothing is left behind."""

    class FailsAtOnce:
        dim, mean, covariance = RING.dim, RING.mean, RING.covariance
        calls = 0

        def log_prob(self, x, t, process):
            FailsAtOnce.calls += 1
            if FailsAtOnce.calls > 1:  # the first call draws the empty image; the second is frame 0
                raise RuntimeError("the density broke")
            return RING.log_prob(x, t, process)

    with pytest.raises(RuntimeError, match="the density broke"):
        plots.reverse_process_animation(FailsAtOnce(), RING.score, tmp_path / "x.gif", rng=np.random.default_rng(0),
                                        n_steps=4, n_frames=2, n_points=5, resolution=5)
    assert FailsAtOnce.calls == 2 and list(tmp_path.iterdir()) == []


def test_two_dimensional_contours_cover_the_target_for_few_samples():
    """d = 2: the contour grid spanned the samples and as many exact draws as samples: for
    one sample it was two points' box, and the ring's contours were cut at its edges. The
    outer e^-7 contour of the ring reaches radius about 2 + 0.3 sqrt(14) = 3.12 on every side."""
    fig, ax = plots.samples_figure(RING, np.array([[2.0, 0.0]]), "one point")
    (contours,) = [c for c in ax.collections if type(c).__name__ == "QuadContourSet"]
    outer = contours.get_paths()[0].vertices  # level 1: log p - log peak = 1 - 8 = -7
    radius = np.hypot(outer[:, 0], outer[:, 1])
    assert radius.max() == pytest.approx(2 + 0.3 * np.sqrt(14), abs=0.01)  # the other modes add < e^-27
    for direction in np.eye(2):
        assert (outer @ direction).max() > 3.0 and (outer @ direction).min() < -3.0


def test_samples_figure_for_d_above_2_shows_the_whole_target_for_few_samples():
    """d > 2: the target's dots were as many exact draws as samples, so for two samples the
    target was two dots and the range left out its second mode; the docstring says the
    range holds 2,000 exact draws, as for d = 1 and 2. The dots are now the 2,000 draws of
    target.sample(2000, default_rng(0)) projected by hand on the leading eigenvectors
    (numpy's SVD of the covariance, up to each column's sign)."""
    target = GaussianMixture([0.5, 0.5], [[0.0, 0.0, 0.0], [6.0, 2.0, 0.0]], [np.diag([1.0, 2.0, 0.5])] * 2)
    fig, ax = plots.samples_figure(target, np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.2]]), "two points")
    (dots,) = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_label() == "target"]
    draws = target.sample(2000, np.random.default_rng(0))
    u, _, _ = np.linalg.svd(target.covariance())
    expected = (draws - target.mean()) @ u[:, :2]
    got = np.asarray(dots.get_offsets())
    assert got.shape == (2000, 2)
    signs = np.sign(np.sum(got * expected, axis=0))
    np.testing.assert_allclose(got, expected * signs, rtol=0, atol=1e-12)
    fig.savefig(__import__("io").BytesIO(), format="png")  # the limits as drawn
    for k, limits in enumerate((ax.get_xlim(), ax.get_ylim())):
        assert limits[0] <= got[:, k].min() and got[:, k].max() <= limits[1]


@pytest.mark.parametrize("target", [ONE_D, RING, FIVE_D], ids=["d=1", "d=2", "d=5"])
def test_samples_too_far_for_the_axes_are_refused_by_name(target):
    """Finite samples at +-8e307 raised matplotlib's or numpy's own errors ("Axis limits
    cannot be NaN or Inf", "arange: cannot compute length", an OverflowError for d = 5),
    naming no argument: the axes' span overflows float64. Up to float64's largest / 64 =
    2.8e306 they are drawn (and saved); beyond, x is named with its first such row."""
    import io

    x = target.sample(20, np.random.default_rng(0))
    limit = np.finfo(np.float64).max / 64
    x[3, 0], x[5, 0] = limit, -limit
    fig, _ = plots.samples_figure(target, x, "t")
    fig.savefig(io.BytesIO(), format="png")
    for far in (8e307, np.finfo(np.float64).max, np.nextafter(limit, np.inf)):
        x[3, 0], x[5, 0] = far, -far
        with pytest.raises(ValueError, match=r"^x must be within \+-2\.8e\+306 to be drawn .*: 2 of 20 points are "
                                             rf"not \(the first is row 3, \|x\| = {re.escape(f'{far:.3g}')}\)$"):
            plots.samples_figure(target, x, "t")


@pytest.mark.parametrize("ts", ["a", [0.1, "x"], [[0.1], [0.2, 0.3]]])
def test_score_error_profile_figure_names_times_it_cannot_read(ts):
    """Times that are not numbers raised numpy's "could not convert string to float: 'a'" (or
    "inhomogeneous shape"), naming no argument."""
    with pytest.raises(ValueError, match=r"^ts must be a 1-D array of times > 0, got "):
        plots.score_error_profile_figure(lambda x, t: -x, RING, rng=np.random.default_rng(0), ts=ts, n=20)


def test_one_dimensional_density_curve_shows_a_narrow_mode():
    """d = 1: the curve was the density on 800 evenly spaced points, so a component of std
    1e-4 fell between them: at x = 3, where half the target's mass is, the curve rose to
    0.0028 against a peak of 0.5 / (1e-4 sqrt(2 pi)) = 1995, beside the samples' tall bar:
    the picture said the target had no mode where it has one. The curve now also passes
    through the exact draws: it reaches the peak within 1% (scipy.stats.norm by hand) and
    is the density at each of its points."""
    from scipy import stats

    target = GaussianMixture([0.5, 0.5], [[0.0], [3.0]], [[[1.0]], [[1e-8]]])
    fig, ax = plots.samples_figure(target, target.sample(500, np.random.default_rng(0)), "t")
    (line,) = ax.get_lines()
    u, p = line.get_xdata(), line.get_ydata()
    np.testing.assert_allclose(p, 0.5 * stats.norm.pdf(u, 0.0, 1.0) + 0.5 * stats.norm.pdf(u, 3.0, 1e-4),
                               rtol=1e-12, atol=0)
    peak = 0.5 / (1e-4 * np.sqrt(2 * np.pi))
    assert 0.99 * peak < p[np.abs(u - 3.0) < 1e-3].max() <= peak + 0.5 * stats.norm.pdf(2.999)  # the wide one's tail
    assert np.all(np.diff(u) > 0)


def test_two_dimensional_contours_say_when_a_mode_is_too_narrow_to_draw():
    """d = 2: the ring (80%) with a fifth of the mass in N(0, 1e-8 I) at its centre. The
    200 x 200 contour grid (spacing ~0.04) falls around that mode, which got no contour at
    all, without a word: the samples there looked like mass where the target has none.
    The contours (all the ring's: none comes within 0.8 of the centre) stay as they were,
    and a note now says the target's density reaches e^k times their peak, with k =
    max log p over the exact draws - max over the grid (by hand with scipy's logpdf)."""
    from scipy import stats
    from scipy.special import logsumexp

    means = np.vstack([RING.means, [[0.0, 0.0]]])
    weights = np.r_[0.8 * RING.weights, 0.2]
    target = GaussianMixture(weights, means, [0.09 * np.eye(2)] * 8 + [1e-8 * np.eye(2)])
    x = target.sample(300, np.random.default_rng(1))
    fig, ax = plots.samples_figure(target, x, "t")
    (contours,) = [c for c in ax.collections if type(c).__name__ == "QuadContourSet"]
    for path in contours.get_paths():
        assert np.hypot(*path.vertices.T).min() > 0.8

    def log_p(points):
        return logsumexp([np.log(w) + stats.multivariate_normal(m, c).logpdf(points)
                          for w, m, c in zip(weights, means, [0.09 * np.eye(2)] * 8 + [1e-8 * np.eye(2)])], axis=0)

    draws = target.sample(2000, np.random.default_rng(0))  # samples_figure's own exact draws
    both = np.concatenate([x, draws])
    lo, hi = both.min(axis=0) - 0.5, both.max(axis=0) + 0.5  # the grid: 200 x 200 over both, 0.5 beyond
    u, v = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
    above = log_p(draws).max() - log_p(np.column_stack([u.ravel(), v.ravel()])).max()
    assert above > 10
    (note,) = ax.texts
    spacing = max((hi - lo) / 199)
    assert note.get_text() == (f"the target has a mode too narrow for the contour grid (spacing {spacing:.2g}; its "
                               f"density reaches e^{above:.3g} times the contours' peak): not drawn")
    fig, ax = plots.samples_figure(RING, RING.sample(300, np.random.default_rng(0)), "t")
    assert not ax.texts  # every mode of the ring is resolved


def test_times_beyond_the_process_horizon_are_named_as_ts():
    """VP's horizon is t = 1: ts = (0, 2) was refused by log_prob as "t must be <= 1.0 (the
    process's horizon T), got max 2.0", naming the t of another function."""
    vp = VP(0.1, 20.0)
    with pytest.raises(ValueError, match=r"^ts must be a non-empty sequence of times >= 0 and <= 1 \(the process's "
                                         r"horizon\), got \[0\.0, 2\.0\]$"):
        plots.forward_process_figure(RING, (0.0, 2.0), vp, resolution=10)
    with pytest.raises(ValueError, match=r"^ts must be .* and <= 1 \(the process's horizon\), got \[2\.0\]$"):
        plots.score_field_figure(RING, None, ts=(2.0,), process=vp, arrows=3, resolution=10)
    fig = plots.forward_process_figure(RING, (0.0, 1.0), vp, resolution=10)  # the horizon itself is drawn
    assert len(fig.axes) == 2


def test_one_dimensional_samples_collapsed_far_out_are_drawn():
    """d = 1: samples all at 1e20 (or within 1e5 of it: fewer floats there than 60 bins) made
    numpy's histogram raise "Too many bins for data range. Cannot create 60 finite-sized
    bins". They are drawn now, in as many bins as float64 has edges there (numpy's own
    edges, linspace(min, max, 61), wherever those are distinct: compared for a plain sample),
    each histogram of total mass 1."""
    import io

    for x in (np.full((5, 1), 1e20), np.full((1, 1), 1e17), np.array([[1e20], [1e20 + 1e5], [1e20 + 3e5]])):
        fig, ax = plots.samples_figure(ONE_D, x, "t")
        fig.savefig(io.BytesIO(), format="png")
        bars = ax.patches
        assert 1 <= len(bars) <= 60
        assert sum(b.get_height() * b.get_width() for b in bars) == pytest.approx(1.0, rel=1e-12)
        assert min(b.get_x() for b in bars) <= x.min() and x.max() <= max(b.get_x() + b.get_width() for b in bars)
    x = ONE_D.sample(300, np.random.default_rng(0))
    fig, ax = plots.samples_figure(ONE_D, x, "t")
    heights, edges = np.histogram(x[:, 0], bins=60, density=True)
    np.testing.assert_array_equal([b.get_height() for b in ax.patches], heights)
    np.testing.assert_allclose([b.get_x() for b in ax.patches], edges[:-1], rtol=1e-15, atol=0)  # matplotlib's float


def test_a_density_between_the_cell_centres_is_not_a_silent_blank_panel():
    """p_0 = N((0.01, 0.01), 1e-10 I) on 20 cells of 0.35 per side: the density at every cell
    centre underflows to 0 and the panel was blank without a word. A note now gives the
    mass the image holds by the midpoint rule (here 0; computed by hand with scipy), while
    p_t at t = 0.01 (std 0.14), of which the image holds 0.84, gets none. The
    ring with a square of half-width 1 (the ring has radius 2) holds 0.0037: noted too."""
    from scipy import stats

    narrow = GaussianMixture([1.0], [[0.01, 0.01]], [np.eye(2) * 1e-10])
    fig = plots.forward_process_figure(narrow, (0.0, 0.01), resolution=20)
    blank, seen = fig.axes
    assert np.asarray(blank.get_images()[0].get_array()).max() == 0.0
    (note,) = blank.texts
    assert note.get_text() == "the image holds 0 of p_t's mass:\nnarrower than the cells (0.35)\nor outside the square"
    assert not seen.texts
    assert 0.5 < panel_moments(seen)[0] < 1.0  # 0.84: coarse cells, but p_t is drawn
    fig = plots.forward_process_figure(RING, (0.0,), extent=1.0, resolution=50)
    c = -1.0 + (np.arange(50) + 0.5) * 2.0 / 50
    u, v = np.meshgrid(c, c)
    cells = np.column_stack([u.ravel(), v.ravel()])
    mass = sum(w * stats.multivariate_normal(m, 0.09 * np.eye(2)).pdf(cells) for w, m in zip(RING.weights, RING.means))
    mass = mass.sum() * (2.0 / 50) ** 2
    assert 1e-3 < mass < 0.5
    (note,) = fig.axes[0].texts
    assert note.get_text().startswith(f"the image holds {mass:.2g} of p_t's mass:")
    fig = plots.score_field_figure(narrow, None, ts=(1e-6,), arrows=3, resolution=20)  # the same for the scores
    assert len(fig.axes[0].texts) == 1


def test_save_figure_and_the_animation_name_a_bad_fig_or_path(tmp_path):
    """A fig that is not a Figure gave "'NoneType' object has no attribute 'savefig'", a path
    that is not a file name os.fspath's "expected str, bytes or os.PathLike object, not int",
    and a bytes name failed at its extension ("a bytes-like object is required")."""
    fig = plots.score_field_figure(RING, ts=(1.0,), arrows=3, resolution=10)
    with pytest.raises(ValueError, match="^fig must be a matplotlib Figure .*got NoneType"):
        plots.save_figure(None, tmp_path / "a.png")
    for path in (3, None):
        with pytest.raises(ValueError, match=r"^path must be a file name \(a str or os.PathLike\)"):
            plots.save_figure(fig, path)
        with pytest.raises(ValueError, match=r"^path must be a file name \(a str or os.PathLike\)"):
            plots.reverse_process_animation(RING, RING.score, path, rng=np.random.default_rng(0))
    assert list(tmp_path.iterdir()) == []
    name = os.fsencode(tmp_path / "a.svg")
    assert plots.save_figure(fig, name) == name  # returned as given
    with open(tmp_path / "a.svg", encoding="utf-8") as f:
        assert "<svg" in f.read(2000)


def test_score_error_profile_figure_s_default_times_stay_within_the_process():
    """The default times, 12 in [0.01, 5], were refused for VP (t <= 1) as "ts must lie in
    (0, 1.0]", naming a ts the caller never passed; they end at t_max there."""
    for process, end in ((VP(0.1, 20.0), 1.0), (OU(), 5.0)):
        fig = plots.score_error_profile_figure(lambda x, t: -x, RING, process, rng=np.random.default_rng(0), n=20)
        scale = fig.axes[0].get_lines()[-1]
        np.testing.assert_array_equal(scale.get_xdata(), np.geomspace(0.01, end, 12))


def test_score_error_profile_figure_s_default_times_for_a_process_ending_before_0_01():
    """A review: the default times ran from 0.01 to min(5, t_max), so on a process ending
    before 0.01 (EDM(t_max=0.005)) they ran backwards past t_max and were refused as "ts must
    lie in (0, 0.005]", a ts never passed. They span [t_max / 500, t_max] there."""
    from sgm_ref.processes import EDM

    fig = plots.score_error_profile_figure(lambda x, t: -x, RING, EDM(t_max=0.005), rng=np.random.default_rng(0), n=20)
    np.testing.assert_array_equal(fig.axes[0].get_lines()[-1].get_xdata(), np.geomspace(1e-5, 0.005, 12))


def test_a_float32_score_model_is_drawn_with_dtype_float32_and_named_as_dtype_otherwise(tmp_path):
    """A float32 ScoreModel could not be drawn: trajectories_figure said "pass dtype=np.float32",
    an argument it did not take, and the profile and the score field let the model refuse "x must
    have dtype float32", an x the caller never passed. Each figure now takes dtype (default
    float64), refuses a model of another dtype under that name before any draw, and draws a float32
    model with dtype=np.float32: the same numbers as the model itself gives at those points."""
    from sgm_ref.metrics import score_error_profile
    from sgm_ref.nn import MLP
    from sgm_ref.samplers import sample, time_grid
    from sgm_ref.score_model import ScoreModel

    model = ScoreModel(MLP(2, (4,), rng=0, dtype=np.float32), OU(), "residual")
    rng = np.random.default_rng(0)
    wrong = r"^dtype must be the model's dtype, float32, got float64: .* pass dtype=np.float32$"
    for draw in (lambda: plots.trajectories_figure(RING, model, rng=rng, n_points=4, n_paths=1, n_steps=2),
                 lambda: plots.score_error_profile_figure(model, RING, rng=rng, ts=[0.5], n=4),
                 lambda: plots.score_field_figure(RING, model, ts=(0.5,), arrows=3, resolution=10),
                 lambda: plots.reverse_process_animation(RING, model, tmp_path / "x.gif", rng=rng, n_steps=2,
                                                         n_frames=2)):
        with pytest.raises(ValueError, match=wrong):
            draw()
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn
    with pytest.raises(ValueError, match=r"^scores\['f32'\]: dtype must be the model's dtype, float32, got float64"):
        plots.score_error_profile_figure({"exact": RING.score, "f32": model}, RING, rng=rng, ts=[0.5], n=4)
    with pytest.raises(ValueError, match="dtype must be float64 or float32"):
        plots.trajectories_figure(RING, RING.score, rng=rng, n_points=4, n_paths=1, n_steps=2, dtype=np.float16)

    fig = plots.trajectories_figure(RING, model, rng=np.random.default_rng(1), n_points=5, n_paths=1, n_steps=3,
                                    resolution=10, dtype=np.float32)
    _, path = sample(model, OU(), 5, 2, np.random.default_rng(1), T=5.0, t0=1e-2, n_steps=3, method="euler_maruyama",
                     grid=time_grid(5.0, 1e-2, 3, "geometric", OU()), dtype=np.float32, trajectory=True)
    np.testing.assert_array_equal(fig.axes[1].get_lines()[0].get_ydata(), path[:, 0, 0])

    ts = np.array([0.1, 1.0])
    fig = plots.score_error_profile_figure(model, RING, rng=np.random.default_rng(2), ts=ts, n=8, dtype=np.float32)
    error, _ = score_error_profile(model, RING, OU(), ts, 8, np.random.default_rng(2), dtype=np.float32)
    (bars,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    np.testing.assert_array_equal(bars.lines[0].get_ydata(), error)

    fig = plots.score_field_figure(RING, model, ts=(0.5,), arrows=3, resolution=10, dtype=np.float32)
    _, learned = [c for c in fig.axes[0].collections if isinstance(c, Quiver)]
    np.testing.assert_array_equal(np.column_stack([learned.U, learned.V]),
                                  model(learned.XY.astype(np.float32), np.full(len(learned.XY), 0.5)))

    plots.reverse_process_animation(RING, model, tmp_path / "f32.gif", rng=np.random.default_rng(3), n_points=10,
                                    n_steps=2, n_frames=2, fps=1, resolution=10, dpi=20, dtype=np.float32)
    assert [p.name for p in tmp_path.iterdir()] == ["f32.gif"]


def test_one_dimensional_samples_figure_labels_its_density_axis_and_draws_the_histogram_of_x():
    """d = 1: the y axis (the samples' density histogram and the target's density, on one
    scale) had no label; the bars are numpy's density histogram of x (60 bins over its
    range), whose area is 1, as the target curve's."""
    target = GaussianMixture([0.3, 0.7], [[-1.0], [2.0]], [[0.25], [1.0]])
    x = target.sample(500, np.random.default_rng(0))
    fig, ax = plots.samples_figure(target, x, "t")
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("x", "density")
    heights = np.array([bar.get_height() for bar in ax.patches])
    widths = np.array([bar.get_width() for bar in ax.patches])
    expected, edges = np.histogram(x[:, 0], bins=60, density=True)
    np.testing.assert_allclose(heights, expected, rtol=1e-12)
    np.testing.assert_allclose([bar.get_x() for bar in ax.patches], edges[:-1], rtol=1e-12)
    assert np.sum(heights * widths) == pytest.approx(1.0, rel=1e-12)
