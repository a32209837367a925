"""Plots of a run (matplotlib, an optional extra: pip install "sgm_ref[plot]").

samples.png      the sampler's output over the target's density contours (d = 2), its
                 histogram over the exact density (d = 1), or both projected on the
                 target's first two principal directions (d > 2)
loss.png         the training loss per step (and a running mean), with the loss of the
                 target's exact score under the same objective: the floor it approaches
score_error.png  E|s - grad log p_t|^2 against t with 2-standard-error bars, beside the
                 oracle's own E|grad log p_t|^2 for scale
"""

import os

import numpy as np

from ._json import load_json
from ._validation import check_float_dtype, check_real
from .io import atomic_path, atomic_write

__all__ = ["plot_run"]


def have_matplotlib():
    """Whether matplotlib (the optional "plot" extra) can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(figsize, ncols=1):
    """A Figure made without pyplot, with 1 x ncols axes: no global figure to leak when a
    write fails, and no backend switch in the caller's session (a notebook keeps its own)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:  # samples_figure, loss_figure, score_error_figure called without the extra
        raise ModuleNotFoundError(_MISSING) from None
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols, squeeze=False)[0]


def _save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _values(seq):
    """A sequence of numbers as float64, JSON's null (a non-finite number) as NaN."""
    return np.array([np.nan if v is None else v for v in seq], dtype=np.float64)


def _principal_directions(target):
    """The target covariance's two leading eigenvectors, shape (d, 2)."""
    _, vectors = np.linalg.eigh(target.covariance())
    return vectors[:, ::-1][:, :2]


def _grid_log_density(target, points, x):
    """log p_0 at a drawing grid's points, or None (and why) if the grid, spanning samples
    too far from the target (a diverged sampler's 1e160), is beyond what log p_0 can
    evaluate in float64. Any other error of log_prob is raised."""
    try:
        return target.log_prob(points, 0.0), None
    except ValueError:
        target.log_prob(np.asarray(target.mean(), dtype=np.float64)[None, :], 0.0)  # raises if the target fails
        return None, (f"target density not drawn: the samples reach |x| = {np.max(np.abs(x)):.3g}, too far "
                      "from the target to evaluate it over their range")


_REFERENCE_N = 2000  # at least this many exact draws fix the range of samples.png


def _sample_points(x, d):
    """x as an (n, d) float64 array of finite numbers, n >= 1, else a ValueError naming x."""
    try:
        points = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError):
        points = None
    if points is None or points.ndim != 2 or points.shape[1] != d or points.shape[0] == 0:
        got = f"shape {points.shape}" if points is not None else f"{type(x).__name__} {x!r:.60}"
        raise ValueError(f"x must be the samples, an array of shape (n, {d}) with n >= 1, got {got}")
    bad = np.flatnonzero(~np.all(np.isfinite(points), axis=1))
    if bad.size:
        raise ValueError(f"x must hold finite numbers: {bad.size} of {len(points)} points are not (the first "
                         f"is row {bad[0]}); a picture cannot show them")
    far = np.flatnonzero(np.max(np.abs(points), axis=1) > _DRAWABLE)
    if far.size:  # matplotlib's span, margins and ticks overflow: "Axis limits cannot be NaN or Inf"
        raise ValueError(f"x must be within +-{_DRAWABLE:.2g} to be drawn (beyond, the axes' span overflows "
                         f"float64): {far.size} of {len(points)} points are not (the first is row {far[0]}, "
                         f"|x| = {np.max(np.abs(points[far[0]])):.3g})")
    return points


_DRAWABLE = float(np.finfo(np.float64).max) / 64  # the largest |x| samples_figure draws: 2.8e306


def _bin_edges(values, bins):
    """bins + 1 edges over the values' range, as numpy's histogram would take them, fewer
    where float64 has fewer numbers there: samples all near 1e20 (a sampler collapsed far
    out) made numpy raise "Too many bins for data range" (and 0.5 beside a range of 0 is
    below their spacing: then the edges are the floats either side)."""
    lo, hi = float(values.min()), float(values.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    edges = np.unique(np.linspace(lo, hi, bins + 1))
    if edges.size < 2:
        edges = np.array([np.nextafter(edges[0], -np.inf), np.nextafter(edges[0], np.inf)])
    return edges


def samples_figure(target, x, title):
    """samples.png's figure: the samples over the target's density (module docstring);
    returns (fig, ax). The range drawn holds the samples and 2,000 (or, if more, as many
    as samples) exact draws of the target, so a mode the sampler missed is in the picture.
    Samples too far out to evaluate the density over their range are drawn without it,
    and a note says so. For d = 1 the curve also passes through the exact draws (a narrow
    mode is drawn); for d = 2 a mode too narrow for the 200 x 200 contour grid (the exact
    draws reach a density above e times the grid's peak) gets no contour, and a note says so.

    x : array_like, shape (n, target.dim), n >= 1 finite points (any float dtype).
    Raises ValueError for another shape or a non-finite point (a log axis, a histogram
    or a scatter would drop it without a word), or a point beyond |x| = 2.8e306 (float64's
    largest / 64), where the axes' span and margins overflow."""
    x = _sample_points(x, target.dim)
    fig, (ax,) = _figure((5.2, 5))
    # exact draws of the target (a fixed seed: the picture does not depend on the caller's
    # stream), so that the range drawn holds the target as well as the samples: a mode
    # the sampler missed is shown, not cut off
    reference = target.sample(max(len(x), _REFERENCE_N), np.random.default_rng(0))
    if target.dim == 1:
        r = reference[:, 0]
        # a grid over the samples' and the target's range, and a fine one over the target's
        # alone: samples far out (one at 1e3) must not coarsen the curve where the mass is;
        # and the exact draws themselves, where the mass is: a component narrower than the
        # grid's spacing (std 1e-4) fell between its points, and the curve showed no mode there
        u = np.union1d(np.linspace(min(x.min(), r.min()) - 1.0, max(x.max(), r.max()) + 1.0, 400),
                       np.union1d(np.linspace(r.min() - 1.0, r.max() + 1.0, 400), r[:_REFERENCE_N]))
        ax.hist(x[:, 0], bins=_bin_edges(x[:, 0], 60), density=True, color="tab:red", alpha=0.5, label="samples")
        log_density, note = _grid_log_density(target, u[:, None], x)
        if note is None:
            ax.plot(u, np.exp(log_density), color="k", lw=1, label="target density")
        else:
            ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=7, color="tab:red")
        ax.set_xlabel("x")
        # the bars (density=True) and the curve share this scale: probability per unit of x
        ax.set_ylabel("density")
        ax.set_title(title, fontsize=10)
        ax.legend()
        return fig, ax
    if target.dim == 2:
        both = np.concatenate([x, reference])
        lo, hi = both.min(axis=0) - 0.5, both.max(axis=0) + 0.5
        u, v = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        log_density, note = _grid_log_density(target, np.column_stack([u.ravel(), v.ravel()]), x)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3, color="tab:red", label="samples")
        if note is None:
            log_density = log_density.reshape(u.shape)
            # contours of the exact density on top, at e^-1, e^-3, e^-5 and e^-7 of its peak
            height = log_density - log_density.max() + 8.0
            ax.contour(u, v, height, levels=[1.0, 3.0, 5.0, 7.0], colors="k", linewidths=0.6)
            ax.plot([], [], color="k", lw=0.6, label="target density: e^-1, e^-3, e^-5, e^-7 of its peak")
            # a component narrower than the grid's spacing falls between its points and gets no
            # contour (a 20% mode of std 1e-4 was not drawn): the exact draws find it, and a note says so
            above = float(np.max(target.log_prob(reference[:_REFERENCE_N], 0.0))) - float(np.max(log_density))
            if above > 1.0:
                spacing = float(np.max((hi - lo) / 199))
                ax.text(0.02, 0.02, f"the target has a mode too narrow for the contour grid (spacing {spacing:.2g}; "
                        f"its density reaches e^{above:.3g} times the contours' peak): not drawn",
                        transform=ax.transAxes, fontsize=7, color="tab:red")
        else:
            ax.text(0.02, 0.02, note, transform=ax.transAxes, fontsize=7, color="tab:red")
        labels = ("x1", "x2")
    else:
        basis = _principal_directions(target)
        centre = target.mean()
        shown = (x - centre) @ basis
        # every exact draw (as d = 1 and 2 span them): only as many as samples (one for one
        # sample) left the target a few dots, and a mode the sampler missed out of the picture
        reference = (reference - centre) @ basis
        ax.scatter(reference[:, 0], reference[:, 1], s=1, alpha=0.25, color="tab:blue", label="target")
        ax.scatter(shown[:, 0], shown[:, 1], s=1, alpha=0.35, color="tab:red", label="samples")
        # what is drawn: x - E[X] on the target covariance's two leading eigenvectors, of d
        labels = tuple(f"x - E[X] on the target's {k} principal direction (of d = {target.dim})"
                       for k in ("first", "second"))
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title, fontsize=10)
    if target.dim == 2:  # what the dots and the contours are, below the axes: the points fill the square
        ax.legend(markerscale=8, loc="upper center", bbox_to_anchor=(0.5, -0.11), fontsize=8, frameon=False)
    else:
        ax.legend(markerscale=8, loc="upper right")
    return fig, ax


def plot_samples(target, x, path, title):
    fig, _ = samples_figure(target, x, title)
    _save(fig, path)


def _log_axis_if_wide(ax, values):
    """Log scale when the values span a decade or more, with 1-2-5 labels (at least three
    of them in any decade); linear otherwise, where a log axis would show one or two."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0 or values.max() < 10 * values.min():
        return
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def loss_figure(loss, exact=None):
    """The training loss per step, its running mean and, given exact = (value, standard
    error), the loss of the exact score with a 2-standard-error band.

    loss : sequence of finite numbers, shape (steps,), steps >= 1 (History.loss). ValueError
    otherwise: a 2-D array ended in matplotlib's "x and y must have same first dimension", and
    an empty one drew empty axes without a word."""
    try:
        loss = np.asarray(loss, dtype=np.float64)
    except (TypeError, ValueError):
        loss = None
    if loss is None or loss.ndim != 1 or loss.size == 0 or not np.all(np.isfinite(loss)):
        got = ("not numbers" if loss is None else f"shape {loss.shape}" if loss.ndim != 1 or loss.size == 0
               else f"{int(np.sum(~np.isfinite(loss)))} of {loss.size} not finite")
        raise ValueError(f"loss must be the training loss per step, a non-empty 1-D sequence of finite numbers, "
                         f"got {got}")
    fig, (ax,) = _figure((6, 3.6))
    steps = np.arange(1, loss.size + 1)
    ax.plot(steps, loss, lw=0.4, alpha=0.5, color="tab:gray", label="per step")
    window = max(1, loss.size // 50)
    if window > 1:
        running = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], running, color="tab:blue", label=f"mean of {window} steps")
    shown = [loss]
    if exact is not None:
        value, se = exact
        # the band is 2 standard errors each side: the label says so (its "± se" beside a band
        # twice as wide read as a band of one standard error)
        ax.axhspan(value - 2 * se, value + 2 * se, color="tab:green", alpha=0.2, lw=0)
        ax.axhline(value, color="tab:green", lw=1, ls="--",
                   label=f"exact score (the floor in expectation): {value:.4g} ± {se:.2g}; band ± 2 s.e.")
        shown.append([value])
    _log_axis_if_wide(ax, np.concatenate(shown))
    ax.set_xlabel("step")
    ax.set_ylabel("denoising score-matching loss")
    ax.legend()
    return fig, ax


def plot_loss(loss, path, exact=None):
    fig, _ = loss_figure(loss, exact)
    _save(fig, path)


def score_error_figure(score_error):
    """E|s - grad log p_t|^2 against t (± 2 standard errors) beside the oracle's scale.

    score_error as in a report, in memory or read back from JSON: an error that overflows
    float64 (inf, or null in JSON) is not drawn, and a note says so."""
    t = _values(score_error["t"])
    error, se = _values(score_error["error"]), _values(score_error["standard_error"])
    fig, (ax,) = _figure((6, 3.6))
    shown = np.isfinite(error) & (error > 0)
    ax.errorbar(t[shown], error[shown], yerr=2 * se[shown], marker="o", ms=3, capsize=2,
                label="E|s - grad log p_t|^2 (± 2 s.e.)")
    ax.plot(t, _values(score_error["oracle_mean_square"]), ls="--", color="tab:gray",
            label="E|grad log p_t|^2 (scale)")
    y = 0.02  # one note per kind of point left out (both can happen: an error of 0 at one t, inf at another)
    if not np.all(np.isfinite(error)):
        ax.text(0.02, y, "the error overflows float64 at some t (not drawn)", transform=ax.transAxes,
                fontsize=8, color="tab:red")
        y += 0.07
    if np.any(error == 0):
        ax.text(0.02, y, "the error is 0 at some t (not drawn on a log axis)", transform=ax.transAxes,
                fontsize=8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("mean squared score error")
    ax.legend()
    return fig, ax


def plot_score_error(score_error, path):
    fig, _ = score_error_figure(score_error)
    _save(fig, path)


def plot_run(folder, target, x, report):
    """Write the run's PNGs; returns (written paths, None), or (the paths written, why the
    others were not): ([], why) without matplotlib; without samples.png for samples beyond
    +-2.8e306 (a sampler that diverged), which no axes can span, the other plots written."""
    if not have_matplotlib():
        return [], "matplotlib is not installed: plots skipped (pip install \"sgm_ref[plot]\")"
    written, note = [], None
    # samples_figure refuses them (its "x must be within ..."): `sgm-ref evaluate` failed after
    # writing the report, naming an x the user never passed, and wrote neither of the other plots
    far = int(np.sum(np.max(np.abs(np.asarray(x, dtype=np.float64)), axis=1) > _DRAWABLE))
    if far:
        note = (f"samples.png not drawn: {far} of {len(x)} samples lie beyond +-{_DRAWABLE:.2g} (the sampler "
                "diverged?), where a plot's axes overflow float64")
    else:
        title = f"{report['target']}: {len(x)} samples"
        if report["samples"].get("histogram_tv", {}).get("value") is not None:
            title += f", histogram TV {report['samples']['histogram_tv']['value']:.3f}"
        path = os.path.join(folder, "samples.png")
        plot_samples(target, x, path, title)
        written.append(path)
    history = os.path.join(folder, "history.json")
    if os.path.exists(history):
        with open(history, encoding="utf-8") as f:
            loss = load_json(f, history)["loss"]
        path = os.path.join(folder, "loss.png")
        exact = report.get("training", {}).get("exact_score_loss")
        plot_loss(loss, path, None if exact is None else (exact["value"], exact["standard_error"]))
        written.append(path)
    path = os.path.join(folder, "score_error.png")
    plot_score_error(report["score_error"], path)
    written.append(path)
    return written, note


# -- `sgm-ref audit --plot`: the model against the exact score's floor ---------------------------


def _zeros_note(error):
    """The legend's note on errors of exactly 0, which a log axis cannot show: "" if none."""
    zeros = int(np.sum(error == 0))
    if zeros == 0:
        return ""
    return ": 0 at every t" if zeros == error.size else f"; 0 at {zeros} t, not drawn"


def plot_score_audit(report, path, grid=None):
    """The score audit's plot: the model against the exact score on the same grid (the floor).

    Left: E|s - grad log p_t|^2 against t (log-log) with 2-standard-error bars, for the
    model and for the target's exact score (exactly 0 in float64, so absent from a log
    axis and said so in the legend; float32 rounding in float32; an error of 0 at some t,
    the model's or the floor's, is likewise named in the legend), beside the oracle's
    E|grad log p_t|^2 for scale and, if the report has a "tolerance", the error it allows
    at each of the profile's times, tol(t) E|grad log p_t|^2, where it is checked. Right
    (given the bound and the grid): the path KL accumulated from T down to t, 1/2 sum of
    int beta E|Delta|^2 over the steps taken, model and exact score: the exact score's is
    the sampler's own discretisation floor. Its log axis spans four decades below the
    larger total and reaches below the smaller one, so both curves stay in view.

    Parameters
    ----------
    report : dict
        sgm-ref audit's report (evaluation.score_report(..., floor=True) plus its fields),
        as returned or as read back from its JSON (non-finite numbers as null).
    path : str
        The PNG to write (atomically).
    grid : array_like, shape (N + 1,), optional
        The sampler's grid (in the audited process's time): the right panel's times.

    Raises
    ------
    ValueError
        path does not end in .png or its folder does not exist; matplotlib is not
        installed (pip install "sgm_ref[plot]"); the report has no "floor"
        (score_report(..., floor=True)); grid's length is not the bound's steps + 1.
        All before anything is drawn or written.
    """
    if not str(path).lower().endswith(".png"):  # PNG bytes under another extension would misname the file
        raise ValueError(f"path must name a PNG file (ending in .png), got {path!r}")
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    if not have_matplotlib():
        raise ValueError("the plot needs matplotlib, which is not installed: pip install \"sgm_ref[plot]\"")
    if "floor" not in report:
        raise ValueError("the report has no exact-score floor: make it with score_report(..., floor=True)")
    bound, floor_bound = report.get("tv_bound"), report["floor"].get("tv_bound")
    right = bound is not None and floor_bound is not None and grid is not None
    if right:
        g = np.asarray(grid, dtype=np.float64)
        steps = len(bound["kl_path_per_step"])
        if g.ndim != 1 or g.size != steps + 1:
            raise ValueError(f"grid must be the sampler's {steps + 1} times (the bound has {steps} steps), "
                             f"got shape {g.shape}")

    se, floor = report["score_error"], report["floor"]["score_error"]
    t = _values(se["t"])
    fig, axes = _figure((11.5 if right else 6, 4.2), 2 if right else 1)
    ax = axes[0]
    error, error_se = _values(se["error"]), _values(se["standard_error"])
    shown = np.isfinite(error) & (error > 0)
    ax.errorbar(t[shown], error[shown], yerr=2 * error_se[shown], marker="o", ms=3, capsize=2, color="tab:blue",
                label="model (± 2 s.e.)" + _zeros_note(error))
    f_error, f_se = _values(floor["error"]), _values(floor["standard_error"])
    f_shown = np.isfinite(f_error) & (f_error > 0)
    if np.any(f_shown):
        ax.errorbar(t[f_shown], f_error[f_shown], yerr=2 * f_se[f_shown], marker="s", ms=3, capsize=2,
                    color="tab:green", label="exact score (± 2 s.e.): the floor" + _zeros_note(f_error))
    else:
        ax.plot([], [], color="tab:green", marker="s", ls="", label="exact score: 0 at every t")
    scale = _values(se["oracle_mean_square"])
    ax.plot(t, scale, ls="--", color="tab:gray", label="E|grad log p_t|^2 (scale)")
    tolerance = report.get("tolerance")
    if tolerance is not None:
        # the tolerance is checked at the profile's times only: drawn there, not as a curve
        # between them (it may jump at a knot between two of them)
        allowed = _values(tolerance["allowed"]) * scale
        ax.plot(t, allowed, ls="", marker="_", ms=12, mew=1.5, color="tab:red",
                label=f"allowed at each t ({tolerance['spec']})")
        over = np.isin(t, _values(tolerance["exceeded"])) & shown
        if np.any(over):
            ax.plot(t[over], error[over], ls="", marker="x", ms=9, color="tab:red", label="exceeds")
    if not np.all(np.isfinite(error)):
        ax.text(0.02, 0.02, "model's error overflows float64 at some t (not drawn)", transform=ax.transAxes,
                fontsize=8, color="tab:red")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("E|s - grad log p_t|^2")
    ax.set_title("score error: model vs exact score", fontsize=10)
    ax.legend(fontsize=8)
    if right:
        ax = axes[1]
        totals = []
        for b, label, color in ((bound, "model", "tab:blue"), (floor_bound, "exact score (the floor)", "tab:green")):
            cumulative = np.cumsum(_values(b["kl_path_per_step"]))
            if np.all(np.isfinite(cumulative)):
                ax.step(g[1:], cumulative, where="post", color=color, label=f"{label}: path KL {cumulative[-1]:.3g}")
                totals.append(cumulative[-1])
            else:
                ax.plot([], [], color=color, label=f"{label}: path KL overflows float64")
        ax.set_xscale("log")
        ax.invert_xaxis()  # the sampler runs from T down to t0
        totals = [v for v in totals if v > 0]
        if totals:
            # from four decades below the larger total (where the KL is made, not its first
            # crumbs), and at least half the smaller one: a model far above the floor does
            # not push the floor's curve off the axis
            ax.set_yscale("log")
            ax.set_ylim(bottom=min(1e-4 * max(totals), 0.5 * min(totals)), top=2 * max(totals))
        via = " (OU time)" if "audited_as" in report else ""
        ax.set_xlabel(f"t{via}, the sampler running from T to t0")
        ax.set_ylabel("path KL accumulated from T")
        ax.set_title(f"{report.get('sampler', {}).get('method', 'sampler')}: model vs discretisation floor",
                     fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"audit of {report.get('score', 'a score')} on {report.get('target', 'the target')}", fontsize=10)
    _save(fig, path)


# -- pictures that teach (docs/tutorial.md) ------------------------------------------------------
# Each function below returns a matplotlib Figure made without pyplot (no global figure
# state, no backend switch: a notebook shows the returned figure, a script saves it with
# save_figure). Everything random takes an explicit numpy Generator.
__all__ += ["save_figure", "forward_process_figure", "score_field_figure", "trajectories_figure",
            "score_error_profile_figure", "reverse_process_animation"]

_MISSING = 'sgm_ref.plots needs matplotlib, an optional extra: pip install "sgm_ref[plot]"'


def _new_figure(n_panels, size=3.2, height=None):
    """A Figure (not registered with pyplot) with n_panels axes side by side."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ModuleNotFoundError(_MISSING) from None
    fig = Figure(figsize=(size * n_panels, size if height is None else height), layout="constrained")
    return fig, fig.subplots(1, n_panels, squeeze=False)[0]


def save_figure(fig, path, dpi=110):
    """Write fig to path (the format from its extension, e.g. .png or .svg), atomically.

    Parameters
    ----------
    fig : matplotlib.figure.Figure, e.g. from forward_process_figure
    path : str or os.PathLike; no extension means PNG
    dpi : float, dots per inch of raster formats

    Returns
    -------
    path, as given

    Raises
    ------
    ValueError
        If fig is not a Figure, path is not a file name (str, bytes or os.PathLike) or is
        empty or names a folder, the folder of path does not exist, matplotlib has no
        writer for the extension, or dpi is not a positive number. path is then untouched
        (a temporary file is written and renamed).
    """
    if not callable(getattr(fig, "savefig", None)):  # else "'NoneType' object has no attribute 'savefig'"
        raise ValueError(f"fig must be a matplotlib Figure (e.g. from forward_process_figure), got "
                         f"{type(fig).__name__}")
    name = _file_name(path)
    _check_positive(dpi, "dpi", "dots per inch of raster formats")
    if not name or os.path.isdir(name):
        raise ValueError(f"path must name a file to write, got {name!r}" + (" (a folder)" if name else ""))
    fmt = os.path.splitext(name)[1].lstrip(".").lower() or "png"
    atomic_write(name, lambda f: fig.savefig(f, format=fmt, dpi=dpi, bbox_inches="tight"))
    return path


def _file_name(path, name="path"):
    """path (str, bytes or os.PathLike) as a str, else a ValueError naming it (os.fspath's
    TypeError named no argument, and a bytes name failed later at its extension)."""
    try:
        return os.fsdecode(path)
    except TypeError:
        raise ValueError(f"{name} must be a file name (a str or os.PathLike), got {type(path).__name__} "
                         f"{path!r:.60}") from None


def _is_integer(value):
    """Whether value is a finite real number with an integer value (2 or 2.0; not True, NaN,
    inf or "2"), so int(value) neither raises nor changes it."""
    return (not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, float, np.integer, np.floating))
            and bool(np.isfinite(value)) and int(value) == value)


def _check_positive(value, name, what):
    """A ValueError naming name unless value is a finite real number > 0 (not True or "2")."""
    try:
        check_real(value, name, low=0.0, low_open=True)
    except ValueError:
        raise ValueError(f"{name} must be a positive number ({what}), got {value!r}") from None


def _time_list(ts, what, admissible):
    """ts as a list of floats, each finite and admissible, else a ValueError naming ts."""
    try:
        times = [float(t) for t in np.atleast_1d(np.asarray(ts, dtype=float))]
    except (TypeError, ValueError):  # strings, ragged or nested lists: numpy's error names no argument
        times = None
    if times is None or np.ndim(ts) > 1 or not times or not all(np.isfinite(t) and admissible(t) for t in times):
        raise ValueError(f"ts must be a non-empty sequence of {what}, got {times if times is not None else ts!r}")
    return times


def _check_plane(target):
    if getattr(target, "dim", None) != 2:
        raise ValueError(f"target must be two-dimensional for these pictures (e.g. GaussianMixture.ring()), "
                         f"got dim={getattr(target, 'dim', None)!r}")


def _half_width(target, extent):
    """Half the side of the square [-h, h]^2 shown: extent if given, else wide enough for
    p_0 (mean +- 2.5 standard deviations) and for N(0, I), the forward process's limit."""
    if extent is not None:
        real = not isinstance(extent, (bool, np.bool_)) and isinstance(extent, (int, float, np.integer, np.floating))
        h = float(extent) if real else np.nan
        if not (np.isfinite(h) and h > 0):
            raise ValueError(f"extent must be a positive number (the half-width of the square shown), got {extent!r}")
        return h
    spread = np.abs(target.mean()).max() + 2.5 * np.sqrt(np.diag(target.covariance()).max())
    return float(max(3.5, spread))


def _cell_centres(h, resolution):
    """Cell centres of a resolution x resolution grid over [-h, h]^2, as (u, v, points (m, 2))."""
    if not _is_integer(resolution) or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2 (cells per side), got {resolution!r}")
    c = -h + (np.arange(resolution) + 0.5) * (2 * h / resolution)
    u, v = np.meshgrid(c, c)
    return u, v, np.column_stack([u.ravel(), v.ravel()])


def _density_image(ax, target, t, process, h, resolution, cmap="Blues", note=True):
    """Draw the exact density p_t on [-h, h]^2 (cell-centre values) and return the image.

    Its array is p_t at the cell centres, so array.sum() * (2 h / resolution)^2 is the
    midpoint rule for the mass p_t puts in the square; its colours run from 0 to the
    array's largest value. With note, when that mass is below 1/2 (p_t narrower than the
    cells, between their centres, or outside the square: a blank panel) a note in the
    lower right corner says how much of p_t the image holds."""
    u, _, points = _cell_centres(h, resolution)
    density = np.exp(target.log_prob(points, float(t), process)).reshape(u.shape)
    mass = float(density.sum()) * (2 * h / resolution) ** 2
    if note and mass < 0.5:  # a density between the cell centres (std 1e-5) drew an empty panel without a word
        ax.text(0.98, 0.02, f"the image holds {mass:.2g} of p_t's mass:\nnarrower than the cells "
                f"({2 * h / resolution:.2g})\nor outside the square", transform=ax.transAxes, fontsize=6, ha="right",
                va="bottom", color="tab:red")
    # colours from 0 (not from the smallest value shown: a nearly flat density over a small
    # square would get the colour map's full contrast) to the largest value
    image = ax.imshow(density, origin="lower", extent=(-h, h, -h, h), cmap=cmap, interpolation="bilinear",
                      vmin=0.0, vmax=density.max())
    ax.set_xlim(-h, h)
    ax.set_ylim(-h, h)
    ax.set_aspect("equal")
    return image


def _note_outside(ax, x, h, what):
    """Say in the corner how many of the points x (n, 2) fall outside [-h, h]^2, where the
    axes cannot show them; nothing if none does."""
    outside = int(np.sum(~np.all(np.abs(x) <= h, axis=1)))
    if outside:
        ax.text(0.02, 0.02, f"{outside} of {len(x)} {what} outside, not shown", transform=ax.transAxes,
                fontsize=7, color="tab:red")


def _default_process(process):
    from .processes import OU

    return OU() if process is None else process


def _score_dtype(scores, dtype):
    """dtype, checked, and each score that is a ScoreModel checked to take it, before any work
    (a float32 model under the default float64 was refused by the model as "x must have dtype
    float32", an x the caller never passed; a sample-drawing figure said "pass dtype=np.float32",
    an argument it did not take). scores: {label: score}, labels named when there are several."""
    from .samplers import check_model_dtype

    dtype = check_float_dtype(dtype)
    for label, score in scores.items():
        try:
            check_model_dtype(score, dtype)
        except ValueError as exc:
            if len(scores) == 1:
                raise
            raise ValueError(f"scores[{label!r}]: {exc}") from None
    return dtype


def forward_process_figure(target, ts=(0.0, 0.1, 0.3, 1.0, 3.0), process=None, *, rng=None, n_points=0,
                           extent=None, resolution=200):
    """The forward process: the exact density p_t of X_t = alpha_t X_0 + sigma_t Z at several t.

    For a mixture p_0 = sum_k w_k N(mu_k, Sigma_k),
    p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I): the modes slide
    towards 0 and blur into N(0, I). One panel per t, the density drawn from
    target.log_prob(x, t, process) on a square grid, optionally with n_points exact
    samples of p_t on top (a note in the corner counts those outside the square). Each
    panel's colours run from 0 to its own largest density: they compare shapes, not
    heights, across panels.

    Parameters
    ----------
    target : a two-dimensional target with log_prob(x, t, process), mean(), covariance()
        (and sample(n, rng) if n_points > 0), e.g. GaussianMixture.ring()
    ts : sequence of float
        Times t >= 0, one panel each.
    process : a process of sgm_ref.processes (OU() by default)
    rng : numpy.random.Generator, needed if n_points > 0
    n_points : int
        Samples of p_t drawn on each panel (x0 ~ p_0 pushed through the process).
    extent : float, optional
        Half-width h of the square [-h, h]^2 shown (default: p_0's and N(0, I)'s spread).
    resolution : int
        Grid cells per side. Each panel's image holds p_t at the cell centres.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        For a target that is not two-dimensional, an empty ts, a negative time or one
        beyond the process's horizon t_max, a bad extent or resolution, or n_points > 0
        without rng.
    ModuleNotFoundError
        If matplotlib is not installed.
    """
    _check_plane(target)
    process = _default_process(process)
    t_max = float(getattr(process, "t_max", np.inf))  # beyond, log_prob's refusal named its "t", not ts
    ts = _time_list(ts, "times >= 0" + (f" and <= {t_max:g} (the process's horizon)" if t_max < np.inf else ""),
                    lambda t: 0 <= t <= t_max)
    if not _is_integer(n_points) or n_points < 0:
        raise ValueError(f"n_points must be an integer >= 0 (samples drawn on each panel), got {n_points!r}")
    n_points = int(n_points)
    if n_points and rng is None:
        raise ValueError("rng is needed to draw n_points samples (pass a numpy.random.Generator)")
    h = _half_width(target, extent)
    fig, axes = _new_figure(len(ts), size=2.6)
    for ax, t in zip(axes, ts):
        _density_image(ax, target, t, process, h, resolution)
        if n_points:
            x = target.sample(n_points, rng)
            if t > 0:
                x, _ = process.perturb(x, t, rng)
            ax.scatter(x[:, 0], x[:, 1], s=2, color="tab:red", alpha=0.6, linewidths=0)
            _note_outside(ax, x, h, "points")
        ax.set_title(f"$p_t$ at t = {t:g}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def _arrow_grid(h, arrows):
    c = np.linspace(-h, h, arrows + 2)[1:-1]
    u, v = np.meshgrid(c, c)
    return np.column_stack([u.ravel(), v.ravel()]), 2 * h / (arrows + 1)


def score_field_figure(target, score=None, ts=(0.05, 1.0), process=None, *, extent=None, arrows=15,
                       resolution=120, label="model", dtype=np.float64):
    """The exact score grad log p_t as arrows (black) and, if given, another score s(x, t) (red).

    One panel per t, over the density p_t. The score points towards higher density;
    its length grows like distance / variance, so at small t it is long near each mode's
    edge and at large t it is close to -x (the score of N(0, I)). Both fields of a panel
    share one arrow scale (the 90th percentile of the exact field's length is one grid
    spacing), so their lengths compare.

    Parameters
    ----------
    target : a two-dimensional target with score(x, t, process) and log_prob
    score : callable (x (n, 2), t (n,)) -> (n, 2), optional
        E.g. a trained sgm_ref.ScoreModel.
    ts : sequence of float, times > 0
    process : a process of sgm_ref.processes (OU() by default)
    extent : float, optional, half-width of the square shown
    arrows : int, arrows per side
    resolution : int, cells per side of the density image
    label : str, the legend's name for score
    dtype : float64 or float32
        Of the points score is called with (the arrows are drawn in float64): float32 for a
        float32 model (a ScoreModel of a float32 network is refused up front with another
        dtype).

    Returns
    -------
    matplotlib.figure.Figure (each axes holds one quiver per field)

    Raises
    ------
    ValueError
        For a target that is not two-dimensional, times <= 0 or beyond the process's
        horizon t_max, or a bad extent, arrows, resolution or dtype (or a ScoreModel of
        another dtype); a score returning another shape than (n, 2) or a non-finite
        value; what the score function raises.
    ModuleNotFoundError
        If matplotlib is not installed.
    """
    _check_plane(target)
    process = _default_process(process)
    dtype = _score_dtype({} if score is None else {"model": score}, dtype)
    t_max = float(getattr(process, "t_max", np.inf))
    horizon = f" and <= {t_max:g} (the process's horizon)" if t_max < np.inf else ""
    ts = _time_list(ts, "times > 0 (the score of p_0 itself may not exist)" + horizon, lambda t: 0 < t <= t_max)
    if not _is_integer(arrows) or arrows < 2:
        raise ValueError(f"arrows must be an integer >= 2 (arrows per side), got {arrows!r}")
    h = _half_width(target, extent)
    points, spacing = _arrow_grid(h, int(arrows))
    fig, axes = _new_figure(len(ts), size=3.6)
    for ax, t in zip(axes, ts):
        _density_image(ax, target, t, process, h, resolution, cmap="Greys")
        tt = np.full(len(points), t)
        exact = target.score(points, tt, process)
        scale = np.percentile(np.linalg.norm(exact, axis=1), 90) / spacing
        quiver = dict(angles="xy", scale_units="xy", scale=scale, width=0.006)
        ax.quiver(points[:, 0], points[:, 1], exact[:, 0], exact[:, 1], color="k", label="exact", **quiver)
        if score is not None:
            s = np.asarray(score(points.astype(dtype, copy=False), tt), dtype=np.float64)
            if s.shape != points.shape:
                raise ValueError(f"score must return one 2-vector per point, shape {points.shape}, "
                                 f"got shape {s.shape} at t = {t:g}")
            if not np.all(np.isfinite(s)):
                bad = np.flatnonzero(~np.all(np.isfinite(s), axis=1))
                raise ValueError(f"score returned non-finite values at t = {t:g} for {bad.size} of {len(s)} "
                                 f"points, e.g. x = {points[bad[0]].tolist()}: such arrows cannot be drawn")
            ax.quiver(points[:, 0], points[:, 1], s[:, 0], s[:, 1], color="tab:red", alpha=0.8, label=label,
                      **quiver)
        ax.set_title(f"score of $p_t$ at t = {t:g}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0].legend(loc="upper left", fontsize=8, framealpha=0.9)
    return fig


def _check_n_points(n_points):
    """The sampler's point count, checked under its own name (the sampler's error says "n")."""
    if not _is_integer(n_points) or n_points < 1:
        raise ValueError(f"n_points must be an integer >= 1 (points the sampler draws), got {n_points!r}")


def _run_sampler(score, process, rng, n_points, T, t0, n_steps, method, dtype):
    from .samplers import sample, time_grid

    grid = time_grid(T, t0, n_steps, "geometric", process)
    _, path = sample(score, process, n_points, 2, rng, T=T, t0=t0, n_steps=n_steps, method=method,
                     grid=grid, dtype=dtype, trajectory=True)
    return grid, path


def trajectories_figure(target, score, process=None, *, rng, n_points=2000, n_paths=6, T=5.0, t0=1e-2,
                        n_steps=200, method="euler_maruyama", extent=None, resolution=200, dtype=np.float64):
    """Reverse-time paths of a sampler, from N(0, I) at t = T down to t0, over p_0.

    Left: n_paths paths in the plane (start o, end *; the last stretch, t <= 0.3 or the
    second half of the grid if that is shorter, in bold) and the n_points end points, over
    the exact density of p_0 (a note in the corner counts end points outside the square).
    Right: the first coordinate of the same paths against t (T on the left, t0 on the
    right), the reverse process's time running left to right.

    Parameters
    ----------
    target : a two-dimensional target with log_prob, mean(), covariance()
    score : callable (x (n, 2), t (n,)) -> (n, 2), the score the sampler uses
    process : a variance-preserving process (OU() by default)
    rng : numpy.random.Generator (the prior draw and every step's noise)
    n_points : int >= n_paths, points sampled (the first n_paths are drawn as paths)
    n_paths : int
    T, t0, n_steps, method : as sgm_ref.samplers.sample, on a geometric grid
    dtype : float64 or float32
        The sampler's (sgm_ref.samplers.sample): float32 for a float32 model (a ScoreModel
        of a float32 network is refused up front with another dtype).

    Returns
    -------
    matplotlib.figure.Figure (two axes)

    Raises
    ------
    ValueError
        For bad arguments (as sgm_ref.samplers.sample; a ScoreModel of another dtype
        than dtype before any work), a target that is not two-dimensional, or
        n_paths > n_points.
    ModuleNotFoundError
        If matplotlib is not installed.
    """
    _check_plane(target)
    process = _default_process(process)
    _check_n_points(n_points)
    if not _is_integer(n_paths) or not 1 <= n_paths <= n_points:
        raise ValueError(f"n_paths must be an integer in [1, n_points = {n_points!r}], got {n_paths!r}")
    dtype = _score_dtype({"model": score}, dtype)
    h = _half_width(target, extent)
    fig, (plane, time) = _new_figure(2, size=3.8)
    _density_image(plane, target, 0.0, process, h, resolution)
    grid, path = _run_sampler(score, process, rng, n_points, T, t0, n_steps, method, dtype)
    end = path[-1]
    plane.scatter(end[:, 0], end[:, 1], s=1, color="tab:red", alpha=0.3, linewidths=0)
    _note_outside(plane, end, h, "end points")
    colours = [f"C{i % 10}" for i in range(int(n_paths))]
    # the last stretch (t <= last_stretch) drawn bold: the early, large-t steps jump widely
    last_stretch = float(max(min(0.3, grid[grid.size // 2]), grid[-2]))  # at least the last step
    late = grid <= last_stretch
    for i, c in enumerate(colours):
        plane.plot(path[:, i, 0], path[:, i, 1], lw=0.5, alpha=0.35, color=c)
        plane.plot(path[late, i, 0], path[late, i, 1], lw=1.1, color=c)
        plane.plot(*path[0, i], "o", ms=3, color=c)
        plane.plot(*path[-1, i], "*", ms=7, color=c, mec="k", mew=0.3)
        time.plot(grid, path[:, i, 0], lw=0.7, color=c)
    paths = f"{int(n_paths)} reverse path" + ("s" if n_paths != 1 else "")
    bold = int(late.sum()) - 1
    plane.set_title(f"{paths} (bold: the last {bold} step{'s' if bold != 1 else ''}), {len(end)} end points",
                    fontsize=10)
    time.set_xscale("log")
    time.invert_xaxis()
    time.set_xlabel("t (reverse time runs left to right)")
    time.set_ylabel("first coordinate")
    time.set_title(f"{method.replace('_', '-')}: {n_steps} steps from T = {T:g} to t0 = {t0:g}", fontsize=10)
    return fig


def score_error_profile_figure(scores, target, process=None, *, rng, ts=None, n=2000, dtype=np.float64):
    """E_{p_t} |s(x, t) - grad log p_t(x)|^2 against t, with 2-standard-error bars.

    Measured by sgm_ref.metrics.score_error_profile (n exact samples of p_t per t),
    for one score or several; the dashed line is E_{p_t} |grad log p_t|^2, the error of
    the score s = 0, for scale. (For a model beside the floor of its training objective,
    see the audit's own plots.)

    Parameters
    ----------
    scores : callable (x (n, d), t (n,)) -> (n, d), or dict {label: callable}
    target : object with sample(n, rng) and score(x, t, process)
    process : a process of sgm_ref.processes (OU() by default)
    rng : numpy.random.Generator
    ts : array_like of times > 0 (default: 12 geometric times in [0.01, 5], or in
        [0.01, process.t_max] for a process that ends before 5: VP's t <= 1; in
        [t_max / 500, t_max] for one that ends before 0.01)
    n : int >= 2, points per time
    dtype : float64 or float32
        Of the points every score is called with (score_error_profile's dtype; the scale
        is the oracle's, measured in float64): float32 for float32 models (a ScoreModel of
        a float32 network is refused up front with another dtype, named by its label when
        there are several; scores of both dtypes need a figure each).

    Returns
    -------
    matplotlib.figure.Figure (one axes: a line with error bars per score, then the scale)

    Raises
    ------
    ValueError
        As score_error_profile (bad times, n, rng, dtype; a failing or non-finite score;
        a ScoreModel of another dtype, before any draw).
    ModuleNotFoundError
        If matplotlib is not installed.
    """
    from .metrics import score_error_profile

    process = _default_process(process)
    if callable(scores):
        scores = {"model": scores}
    if not isinstance(scores, dict) or not scores or not all(callable(s) for s in scores.values()):
        raise ValueError("scores must be a score function s(x, t) or a non-empty dict {label: score function}")
    dtype = _score_dtype(scores, dtype)
    if ts is None:  # [0.01, 5] was refused for VP as "ts must lie in (0, 1.0]", a ts never passed
        end = min(5.0, float(getattr(process, "t_max", np.inf)))
        # a process that ends before 0.01 (EDM(t_max=0.005)): [end / 500, end], the same span of times
        ts = np.geomspace(1e-2 if end > 1e-2 else end / 500, end, 12)
    else:
        try:
            ts = np.asarray(ts, dtype=float)
        except (TypeError, ValueError):  # numpy's "could not convert string to float: 'a'" named no argument
            raise ValueError(f"ts must be a 1-D array of times > 0, got {ts!r:.60}") from None
    fig, (ax,) = _new_figure(1, size=5.6, height=3.6)
    for label, s in scores.items():
        error, se = score_error_profile(s, target, process, ts, n, rng, dtype=dtype)
        drawn = error > 0  # a log axis cannot show 0: such times are left out, and the legend says so
        zeros = int(np.sum(~drawn))
        note = "" if zeros == 0 else (": 0 at every t" if zeros == error.size else f"; 0 at {zeros} t, not drawn")
        ax.errorbar(ts[drawn], error[drawn], yerr=2 * se[drawn], marker="o", ms=3, capsize=2,
                    label=f"{label} (± 2 s.e.){note}")
    zero = lambda x, t: np.zeros_like(x)  # its error is E|grad log p_t|^2  # noqa: E731
    scale, _ = score_error_profile(zero, target, process, ts, n, rng)
    ax.plot(ts, scale, ls="--", color="tab:gray", label=r"$E|\nabla \log p_t|^2$ (scale)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel(r"$E_{p_t}|s - \nabla \log p_t|^2$")
    ax.legend(fontsize=8)
    return fig


def reverse_process_animation(target, score, path, process=None, *, rng, n_points=1500, T=3.0, t0=1e-2,
                              n_steps=120, n_frames=30, fps=10, method="euler_maruyama", extent=None,
                              resolution=80, size=3.0, dpi=60, dtype=np.float64):
    """A GIF of the reverse process: the sampler's points moving from N(0, I) to p_0.

    Each frame shows the points at one time of the sampler's grid over the exact density
    p_t at that time: a good score keeps them distributed as p_t all the way down.
    Written with matplotlib.animation.PillowWriter (Pillow comes with matplotlib), to a
    temporary file renamed onto path, so path is never half-written.

    Parameters
    ----------
    target : a two-dimensional target with log_prob, mean(), covariance()
    score : callable (x (n, 2), t (n,)) -> (n, 2)
    path : str or os.PathLike, the .gif to write (its folder must exist)
    process : a variance-preserving process (OU() by default)
    rng : numpy.random.Generator
    n_points, T, t0, n_steps, method : as sgm_ref.samplers.sample, on a geometric grid
    n_frames : int in [2, n_steps + 1], frames (grid times evenly spread over the steps;
        the last frame is held for a second)
    fps : float in [1, 100], frames per second (a GIF stores each frame's time in
        hundredths of a second)
    resolution, size, dpi : cells per side of the density, figure size in inches, dots per inch
    dtype : float64 or float32
        The sampler's (sgm_ref.samplers.sample): float32 for a float32 model (a ScoreModel
        of a float32 network is refused up front with another dtype).

    Returns
    -------
    matplotlib.figure.Figure (the last frame)

    Raises
    ------
    ValueError
        For bad arguments (as sgm_ref.samplers.sample), a path not ending in .gif or in a
        folder that does not exist, n_frames outside [2, n_steps + 1], fps outside
        [1, 100], a size or dpi that is not a positive number, or a dtype that is not the
        dtype of a ScoreModel score; all before the sampler runs.
    ModuleNotFoundError
        If matplotlib is not installed.
    """
    _check_plane(target)
    process = _default_process(process)
    path = _file_name(path)
    if not path.lower().endswith(".gif"):
        raise ValueError(f"path must end in .gif, got {path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"cannot write {path}: folder {folder} does not exist")
    _check_n_points(n_points)
    if not _is_integer(n_steps) or n_steps < 1:  # before n_steps + 1 below ("10" + 1 is a TypeError)
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not _is_integer(n_frames) or not 2 <= n_frames <= n_steps + 1:
        raise ValueError(f"n_frames must be an integer in [2, n_steps + 1 = {n_steps + 1}], got {n_frames!r}")
    if isinstance(fps, bool) or not isinstance(fps, (int, float, np.integer, np.floating)) \
            or not (np.isfinite(fps) and 1 <= fps <= 100):
        raise ValueError(f"fps must be a number of frames per second in [1, 100], got {fps!r}")
    _check_positive(size, "size", "the figure's side in inches")  # (4, 3) or dpi=0 failed after the sampler ran
    _check_positive(dpi, "dpi", "dots per inch")
    dtype = _score_dtype({"model": score}, dtype)
    try:
        from matplotlib.animation import PillowWriter
    except ImportError:
        raise ModuleNotFoundError(_MISSING) from None

    h = _half_width(target, extent)
    grid, trajectory = _run_sampler(score, process, rng, n_points, T, t0, n_steps, method, dtype)
    frames = list(np.unique(np.round(np.linspace(0, n_steps, int(n_frames))).astype(int)))
    frames += [frames[-1]] * int(fps)  # hold the end
    fig, (ax,) = _new_figure(1, size=size)
    from matplotlib import colormaps

    # eight shades, not a smooth ramp: GIF frames of flat colour areas compress ~3x better
    image = _density_image(ax, target, grid[0], process, h, resolution, cmap=colormaps["Blues"].resampled(8),
                           note=False)  # a note would stay on every frame, each of another p_t
    dots = ax.scatter(trajectory[0, :, 0], trajectory[0, :, 1], s=1.5, color="tab:red", linewidths=0)
    ax.set_xticks([])
    ax.set_yticks([])
    _, _, cells = _cell_centres(h, resolution)
    from matplotlib import rc_context

    with atomic_path(path) as tmp:  # no half-written GIF if a frame fails
        writer = PillowWriter(fps=fps)
        # not writer.saving(): its finish() runs on an error too, and on a failure at the
        # first frame it raised matplotlib's "list index out of range" (no frames to save)
        # in place of the error itself
        writer.setup(fig, tmp, dpi)
        with rc_context({"savefig.bbox": None}):  # as saving(): a tight box would vary the frame size
            for k in frames:
                density = np.exp(target.log_prob(cells, float(grid[k]), process)).reshape(resolution, resolution)
                image.set_data(density)
                image.set_clim(0.0, density.max())
                dots.set_offsets(trajectory[k])
                ax.set_title(f"reverse process, t = {grid[k]:.3g}", fontsize=9)
                writer.grab_frame()
        writer.finish()
    return fig
