"""The teaching pictures of sgm_ref.plots: each runs, draws what it says, and writes its file.

The exact score stands in for a trained model (no training here), so every test is fast.
"""

import os
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


def test_run_plots_and_the_audit_plot_leave_no_pyplot_figure_and_keep_the_backend(tmp_path):
    """The plots are Figures made without pyplot: a failed write leaks no figure, and a
    notebook's backend is not switched to Agg by a call."""
    import matplotlib
    import matplotlib.pyplot as plt

    matplotlib.use("svg")
    before = plt.get_fignums()
    loss = np.linspace(2.0, 1.0, 50)
    for _ in range(2):
        with pytest.raises(ValueError, match="does not exist"):
            plots.plot_loss(loss, str(tmp_path / "missing" / "loss.png"))
    plots.plot_loss(loss, str(tmp_path / "loss.png"))
    assert plt.get_fignums() == before
    assert matplotlib.get_backend().lower() == "svg"


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
