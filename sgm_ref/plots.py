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
from .io import atomic_write

__all__ = ["plot_run"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path):
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110, bbox_inches="tight"))


def _principal_directions(target):
    """The target covariance's two leading eigenvectors, shape (d, 2)."""
    _, vectors = np.linalg.eigh(target.covariance())
    return vectors[:, ::-1][:, :2]


def plot_samples(plt, target, x, path, title):
    fig, ax = plt.subplots(figsize=(5.2, 5))
    if target.dim == 1:
        u = np.linspace(x.min() - 1.0, x.max() + 1.0, 400)
        ax.hist(x[:, 0], bins=60, density=True, color="tab:red", alpha=0.5, label="samples")
        ax.plot(u, np.exp(target.log_prob(u[:, None], 0.0)), color="k", lw=1, label="target density")
        ax.set_xlabel("x")
        ax.set_title(title, fontsize=10)
        ax.legend()
        _save(fig, path)
        plt.close(fig)
        return
    if target.dim == 2:
        reference = target.sample(len(x), np.random.default_rng(0))
        both = np.concatenate([x, reference])
        lo, hi = both.min(axis=0) - 0.5, both.max(axis=0) + 0.5
        u, v = np.meshgrid(np.linspace(lo[0], hi[0], 200), np.linspace(lo[1], hi[1], 200))
        log_density = target.log_prob(np.column_stack([u.ravel(), v.ravel()]), 0.0).reshape(u.shape)
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3, color="tab:red", label="samples")
        # contours of the exact density on top, at e^-1, e^-3, e^-5 and e^-7 of its peak
        height = log_density - log_density.max() + 8.0
        ax.contour(u, v, height, levels=[1.0, 3.0, 5.0, 7.0], colors="k", linewidths=0.6)
        labels = ("x1", "x2")
    else:
        basis = _principal_directions(target)
        centre = target.mean()
        shown = (x - centre) @ basis
        reference = (target.sample(len(x), np.random.default_rng(0)) - centre) @ basis
        ax.scatter(reference[:, 0], reference[:, 1], s=1, alpha=0.25, color="tab:blue", label="target")
        ax.scatter(shown[:, 0], shown[:, 1], s=1, alpha=0.35, color="tab:red", label="samples")
        labels = ("first principal direction", "second principal direction")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_title(title, fontsize=10)
    if target.dim != 2:
        ax.legend(markerscale=8, loc="upper right")
    _save(fig, path)
    plt.close(fig)


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


def loss_figure(plt, loss, exact=None):
    """The training loss per step, its running mean and, given exact = (value, standard
    error), the loss of the exact score with a 2-standard-error band."""
    loss = np.asarray(loss)
    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = np.arange(1, loss.size + 1)
    ax.plot(steps, loss, lw=0.4, alpha=0.5, color="tab:gray", label="per step")
    window = max(1, loss.size // 50)
    if window > 1:
        running = np.convolve(loss, np.ones(window) / window, mode="valid")
        ax.plot(steps[window - 1:], running, color="tab:blue", label=f"mean of {window} steps")
    shown = [loss]
    if exact is not None:
        value, se = exact
        ax.axhspan(value - 2 * se, value + 2 * se, color="tab:green", alpha=0.2, lw=0)
        ax.axhline(value, color="tab:green", lw=1, ls="--",
                   label=f"exact score (the floor in expectation): {value:.4g} ± {se:.2g}")
        shown.append([value])
    _log_axis_if_wide(ax, np.concatenate(shown))
    ax.set_xlabel("step")
    ax.set_ylabel("denoising score-matching loss")
    ax.legend()
    return fig, ax


def plot_loss(plt, loss, path, exact=None):
    fig, _ = loss_figure(plt, loss, exact)
    _save(fig, path)
    plt.close(fig)


def score_error_figure(plt, score_error):
    """E|s - grad log p_t|^2 against t (± 2 standard errors) beside the oracle's scale."""
    t = np.asarray(score_error["t"])
    error, se = np.asarray(score_error["error"]), np.asarray(score_error["standard_error"])
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.errorbar(t, error, yerr=2 * se, marker="o", ms=3, capsize=2, label="E|s - grad log p_t|^2 (± 2 s.e.)")
    ax.plot(t, score_error["oracle_mean_square"], ls="--", color="tab:gray", label="E|grad log p_t|^2 (scale)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("t")
    ax.set_ylabel("mean squared score error")
    ax.legend()
    return fig, ax


def plot_score_error(plt, score_error, path):
    fig, _ = score_error_figure(plt, score_error)
    _save(fig, path)
    plt.close(fig)


def plot_run(folder, target, x, report):
    """Write the run's PNGs; returns (written paths, None) or ([], why not)."""
    plt = _pyplot()
    if plt is None:
        return [], "matplotlib is not installed: plots skipped (pip install \"sgm_ref[plot]\")"
    written = []
    title = f"{report['target']}: {len(x)} samples"
    if "histogram_tv" in report["samples"]:
        title += f", histogram TV {report['samples']['histogram_tv']['value']:.3f}"
    path = os.path.join(folder, "samples.png")
    plot_samples(plt, target, x, path, title)
    written.append(path)
    history = os.path.join(folder, "history.json")
    if os.path.exists(history):
        with open(history, encoding="utf-8") as f:
            loss = load_json(f, history)["loss"]
        path = os.path.join(folder, "loss.png")
        exact = report.get("training", {}).get("exact_score_loss")
        plot_loss(plt, loss, path, None if exact is None else (exact["value"], exact["standard_error"]))
        written.append(path)
    path = os.path.join(folder, "score_error.png")
    plot_score_error(plt, report["score_error"], path)
    written.append(path)
    return written, None


# -- `sgm-ref audit --plot`: the model against the exact score's floor ---------------------------


def plot_score_audit(report, path, grid=None):
    """The score audit's plot: the model against the exact score on the same grid (the floor).

    Left: E|s - grad log p_t|^2 against t (log-log) with 2-standard-error bars, for the
    model and for the target's exact score (exactly 0 in float64, so absent from a log
    axis and said so in the legend; float32 rounding in float32), beside the oracle's
    E|grad log p_t|^2 for scale and, if the report has a "tolerance", the error it allows
    (tol(t) E|grad log p_t|^2). Right (given the bound and the grid): the path KL
    accumulated from T down to t, 1/2 sum of int beta E|Delta|^2 over the steps taken,
    model and exact score: the exact score's is the sampler's own discretisation floor.

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
        matplotlib is not installed (pip install "sgm_ref[plot]"), or the report has no
        "floor" (score_report(..., floor=True)).
    """
    plt = _pyplot()
    if plt is None:
        raise ValueError("the plot needs matplotlib, which is not installed: pip install \"sgm_ref[plot]\"")
    if "floor" not in report:
        raise ValueError("the report has no exact-score floor: make it with score_report(..., floor=True)")

    def values(seq):  # JSON's null (a non-finite number) as NaN, dropped from the axes
        return np.array([np.nan if v is None else v for v in seq], dtype=np.float64)

    se, floor = report["score_error"], report["floor"]["score_error"]
    t = values(se["t"])
    bound, floor_bound = report.get("tv_bound"), report["floor"].get("tv_bound")
    right = bound is not None and floor_bound is not None and grid is not None
    fig, axes = plt.subplots(1, 2 if right else 1, figsize=(11.5 if right else 6, 4.2), squeeze=False)
    ax = axes[0, 0]
    error, error_se = values(se["error"]), values(se["standard_error"])
    shown = np.isfinite(error) & (error > 0)
    ax.errorbar(t[shown], error[shown], yerr=2 * error_se[shown], marker="o", ms=3, capsize=2, color="tab:blue",
                label="model (± 2 s.e.)")
    f_error, f_se = values(floor["error"]), values(floor["standard_error"])
    f_shown = np.isfinite(f_error) & (f_error > 0)
    if np.any(f_shown):
        ax.errorbar(t[f_shown], f_error[f_shown], yerr=2 * f_se[f_shown], marker="s", ms=3, capsize=2,
                    color="tab:green", label="exact score (± 2 s.e.): the floor")
    else:
        ax.plot([], [], color="tab:green", marker="s", ls="", label="exact score: 0 at every t")
    scale = values(se["oracle_mean_square"])
    ax.plot(t, scale, ls="--", color="tab:gray", label="E|grad log p_t|^2 (scale)")
    tolerance = report.get("tolerance")
    if tolerance is not None:
        allowed = values(tolerance["allowed"]) * scale
        ax.step(t, allowed, where="post", color="tab:red", lw=1, ls=":", label=f"allowed ({tolerance['spec']})")
        over = np.isin(t, values(tolerance["exceeded"])) & shown
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
        ax = axes[0, 1]
        g = np.asarray(grid, dtype=np.float64)
        top = 0.0
        for b, label, color in ((bound, "model", "tab:blue"), (floor_bound, "exact score (the floor)", "tab:green")):
            per_step = values(b["kl_path_per_step"])
            if np.all(np.isfinite(per_step)) and per_step.size == g.size - 1:
                cumulative = np.cumsum(per_step)
                ax.step(g[1:], cumulative, where="post", color=color, label=f"{label}: path KL {cumulative[-1]:.3g}")
                top = max(top, cumulative[-1])
            else:
                ax.plot([], [], color=color, label=f"{label}: path KL overflows float64")
        ax.set_xscale("log")
        ax.invert_xaxis()  # the sampler runs from T down to t0
        if top > 0:  # four decades below the total: where the KL is made, not its first crumbs
            ax.set_yscale("log")
            ax.set_ylim(bottom=1e-4 * top, top=2 * top)
        via = " (OU time)" if "audited_as" in report else ""
        ax.set_xlabel(f"t{via}, the sampler running from T to t0")
        ax.set_ylabel("path KL accumulated from T")
        ax.set_title(f"{report.get('sampler', {}).get('method', 'sampler')}: model vs discretisation floor",
                     fontsize=10)
        ax.legend(fontsize=8)
    fig.suptitle(f"audit of {report.get('score', 'a score')} on {report.get('target', 'the target')}", fontsize=10)
    _save(fig, path)
    plt.close(fig)
