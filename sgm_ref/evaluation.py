"""Reports: every metric of a score function and of a sampler's output, with its error.

score_report:   the score-error profile E_{p_t}|s - grad log p_t|^2 on a time grid, its
                time integral, and the certified TV bound for a sampler (Girsanov +
                Pinsker; sgm_ref.metrics.bound), with floor=True also those of the exact
                score on the same draws (the sampler's floor): what `sgm-ref audit` prints.
sample_report:  sample-based distances between a sampler's output and the target.
evaluate_run:   both for a run folder, written as report.json and report.md (and plots).
exact_score_loss: the training objective's value at the target's exact score (its floor).

Every number in a report is a plain float in a dict {"value": ..., "standard_error": ...}
(or a documented exception), so report.json can be read by any tool.

Non-finite numbers (a score error that overflows float64) are reported as what they
are: the text says "overflows float64" and where (non_finite_notes), and JSON, which has
no inf or NaN, gets null in their place plus a top-level "non_finite" object mapping each
one's JSON pointer to "inf", "-inf" or "nan" (json_ready).
"""

import copy
import math
import os
import re
import sys
import tempfile
import time

import numpy as np

from . import metrics
from ._validation import check_count, check_fits, check_float_dtype, check_points, check_progress, check_rng
from ._json import load_json
from .io import atomic_write
from .losses import TIME_DISTRIBUTIONS, WEIGHTINGS, sample_times
from .metrics.score_error import _check_time_range as _score_time_range
from .processes import VariancePreserving, check_process
from .runs import (_EVALUATION_FILES, RunError, _check_sizes, _recorded_loss, _remove, _shell_path, load_model,
                   load_samples, read_config, streams, update_section, write_json, writing)
from .samplers import check_model_dtype
from .targets import GaussianMixture
from .targets.spec import from_record

__all__ = ["score_report", "sample_report", "evaluate_run", "exact_score_loss", "json_ready", "non_finite_notes",
           "markdown", "summary", "bound_text", "FINAL_LOSS_WINDOW"]

# the training loss a report quotes: the mean over this many last steps (a single step's
# loss is one batch's, noisy); `sgm-ref train` prints the same mean
FINAL_LOSS_WINDOW = 100


def _estimate(value, se):
    return {"value": float(value), "standard_error": float(se)}


def score_report(score, target, process, *, t0, T, method, grid, n_steps, rng, profile_n=2000,
                 profile_times=12, bound_n=256, dtype=np.float64, on_stage=None, floor=False):
    """Score-error profile, its integral and the certified TV bound of a score function.

    With floor=True the same figures are measured for the target's exact score on the same
    grid, times and Monte-Carlo draws (common random numbers: a copy of rng's state before
    the model's figures): the sampler's own floor. Its path KL and bound are the
    discretisation's alone (e.g. on the ring with 300 geometric Euler–Maruyama steps on
    [0.001, 5], path KL 0.18 and bound 0.30, its one-sided upper value 0.31: `sgm-ref
    audit` of the exact score, seeds 0 to 3, bound 0.301 to 0.309), so a model's path KL
    is read against them, not against 0. The exact score is called in `dtype` (float64
    in, rounded once to dtype out), so in float32 its profile shows float32 rounding; in
    float64 it is exactly 0.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    target : the true p_0 with an exact score (e.g. GaussianMixture)
    process : any process of sgm_ref.processes (OU, VP, VPCosine, DDPM, SubVP, VE, EDM, FlowMatching)
        The profile, the integral and the bound are measured on it, in its own time and x:
        the bound is for sgm_ref.samplers' scheme on this process (started from N(0, v_T I)).
    t0, T : float
        The sampler's early-stopping time and horizon, 0 < t0 < T <= process.t_max.
    method, grid, n_steps : the sampler the bound is for (sgm_ref.samplers.sample).
    rng : numpy.random.Generator
    profile_n : int
        Points per time of the profile, and for the integral 4 x profile_n points.
    profile_times : int
        Number of log-spaced times in [t0, T].
    bound_n : int
        Monte-Carlo pairs per step of the bound (sgm_ref.metrics.tv_upper_bound).
    dtype : float64 or float32
        Of the points the score is called with, which must return it (every figure is
        computed in float64): float32 for a float32 model (a ScoreModel of a float32
        network, refused up front with another dtype, or a score returning float32).
    on_stage : callable(str), optional
        Told "TV bound" before the bound's work starts (a progress bar's hook).
    floor : bool
        Also measure the exact score's figures (above) under report["floor"].

    Returns
    -------
    dict with "score_error" (t, error, standard_error, oracle_mean_square, relative,
    relative_standard_error, integral) and
    "tv_bound" (every term of the TVBound with its standard error; None for the
    probability-flow ODE, which has no Girsanov bound); with floor=True also "floor":
    {"score": "exact", "score_error": ..., "tv_bound": ...} of the same form.

    Raises
    ------
    ValueError
        A score or on_stage that is not callable, or a bad process, t0, T, method,
        grid, n_steps, profile_n, profile_times, bound_n, dtype or floor (named), or a
        ScoreModel whose dtype is not dtype, before the score is called; a score returning
        another shape or a non-finite value.
        What the score itself raises is raised as it is.
    """
    if not callable(score):  # else Python's "'NoneType' object is not callable", from inside the profile
        raise ValueError(f"score must be a callable (x (n, d), t (n,)) -> (n, d), got {type(score).__name__}")
    if on_stage is not None and not callable(on_stage):  # else a TypeError once the profile's work is done
        raise ValueError(f"on_stage must be None or a callable taking the stage's name, got {type(on_stage).__name__}")
    process = check_process(process, variance_preserving=False)
    t0, T = _score_time_range(t0, T, process)
    profile_times = check_count(profile_times, "profile_times")
    _check_report_settings(process, t0, T, method, grid, n_steps, profile_n, bound_n, dtype, floor)
    # a ScoreModel of another dtype: named as dtype here, not by the model as "x" inside the profile
    check_model_dtype(score, check_float_dtype(dtype))
    if floor:
        floor_rng = copy.deepcopy(check_rng(rng))  # the same draws as the model's figures
        report = _score_report(score, target, process, t0, T, method, grid, n_steps, rng, profile_n, profile_times,
                               bound_n, dtype, on_stage)
        exact = _exact_score(target, process)
        report["floor"] = {"score": "exact", **_score_report(exact, target, process, t0, T, method, grid, n_steps,
                                                             floor_rng, profile_n, profile_times, bound_n, dtype,
                                                             None)}
        return report
    return _score_report(score, target, process, t0, T, method, grid, n_steps, rng, profile_n, profile_times,
                         bound_n, dtype, on_stage)


def _check_report_settings(process, t0, T, method, grid, n_steps, profile_n, bound_n, dtype, floor):
    """Refuse bad settings before any work, each named as score_report's argument (the
    metrics would refuse the sampler's only after the profile and the integral, which call
    the score 2 profile_times times, and call profile_n and bound_n their own "n")."""
    from .metrics.bound import _PATH_METHODS, _explicit_grid
    from .samplers import time_grid

    if not isinstance(floor, (bool, np.bool_)):
        raise ValueError(f"floor must be True or False, got {floor!r}")
    check_count(profile_n, "profile_n", minimum=2)
    check_float_dtype(dtype)
    if method == "probability_flow":  # no Girsanov bound: grid, n_steps and bound_n are not used
        return
    if method not in _PATH_METHODS:
        raise ValueError(f"method must be 'probability_flow' or one of {', '.join(repr(m) for m in _PATH_METHODS)}, "
                         f"got {method!r}")
    if method == "residual_exponential" and not isinstance(process, VariancePreserving):
        raise ValueError(f"method 'residual_exponential' needs a variance-preserving process (OU, VP, VPCosine, "
                         f"DDPM), got {process!r}: sgm_ref.samplers runs it on those only")
    check_count(bound_n, "bound_n", minimum=2)
    if isinstance(grid, str):
        if n_steps is None:
            raise ValueError("grid is a name ('uniform' or 'geometric'): it needs n_steps")
        time_grid(T, t0, n_steps, grid, process)
    else:
        # tv_upper_bound's own checks of an explicit grid, here: they came after the profile and
        # the integral had called the score (a grid ending at 0.01 for t0 = 0.001, or n_steps 7 for 10)
        _explicit_grid(grid, T, t0, n_steps, process)


def _exact_score(target, process):
    """The target's exact score as a score function of any float dtype (computed in float64)."""

    def exact(x, t):
        return target.score(np.asarray(x, dtype=np.float64), t, process).astype(x.dtype)

    return exact


def _score_report(score, target, process, t0, T, method, grid, n_steps, rng, profile_n, profile_times, bound_n,
                  dtype, on_stage):
    ts = np.geomspace(t0, T, profile_times)
    # a score far from the truth overflows float64: said in the report, the rest still measured
    # with the oracle's own E|grad log p_t|^2 on the same points (the scale to read errors
    # against) and their ratio: from separate draws the ratio carried the scale's noise too
    # (s = 0.5 x exact on the ring, exactly 0.25, read 0.216 to 0.287 over 12 times at profile_n = 300, seed 0)
    profile = metrics.score_error_profile(score, target, process, ts, profile_n, rng, dtype=dtype, overflow="inf",
                                          oracle=True)
    integral = metrics.score_error_integral(score, target, process, t0, T, 4 * profile_n, rng, dtype=dtype,
                                            overflow="inf")
    report = {"score_error": {"t": ts.tolist(), "error": profile.errors.tolist(),
                              "standard_error": profile.standard_errors.tolist(),
                              "oracle_mean_square": profile.oracle_mean_square.tolist(),
                              "relative": profile.relative.tolist(),
                              "relative_standard_error": profile.relative_standard_errors.tolist(),
                              "integral": _estimate(*integral)}}
    if method == "probability_flow":
        report["tv_bound"] = None
    else:
        if on_stage is not None:
            on_stage("TV bound")
        bound = metrics.tv_upper_bound(score, target, process, t0, T, grid, method, bound_n, rng, n_steps=n_steps,
                                       dtype=dtype, overflow="inf")
        report["tv_bound"] = {key: value for key, value in bound.as_dict().items() if key != "grid"}
    return report


def exact_score_loss(target, process, *, t0, T, weighting, time_distribution, n, rng):
    """The denoising score-matching loss of the target's exact score, with its standard error.

        L* = E lambda(t) |grad log p_t(x_t) + z / sigma_t|^2,   x_t = alpha_t x0 + sigma_t z,

    x0 ~ p_0, t ~ time_distribution on [t0, T], z ~ N(0, I): the objective of
    sgm_ref.losses.dsm_loss (same lambda, same times) with s_theta = grad log p_t. Since
    E_{x0, z | x_t} |s + z / sigma_t|^2 = |s - grad log p_t|^2 + C(x_t, t), every score
    has expected loss L* + E lambda |s - grad log p_t|^2: L* is the floor a trained
    model's loss approaches (the loss.png line), not zero.

    Parameters
    ----------
    target : object with sample(n, rng) and score(x, t, process)
    process : any process of sgm_ref.processes
    t0, T : float, 0 < t0 < T <= process.t_max
    weighting : {"none", "sigma2"}
        lambda(t) = 1 or sigma_t^2, as in training.
    time_distribution : {"uniform", "log-uniform"}
    n : int >= 2
        Monte-Carlo draws (x0, t, z), drawn from rng in that order.
    rng : numpy.random.Generator

    Returns
    -------
    value, standard_error : float

    Raises
    ------
    ValueError
        Bad weighting, time_distribution, process, times, n or rng (named in the message),
        before any draw.
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not isinstance(time_distribution, str) or time_distribution not in TIME_DISTRIBUTIONS:
        # sample_times' own error says "distribution", and came after the draws of x0
        raise ValueError(f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got {time_distribution!r}")
    n = check_count(n, "n", minimum=2)
    rng = check_rng(rng)
    process = check_process(process, variance_preserving=False)
    t0, T = _score_time_range(t0, T, process)  # check_time_range asked VE, EDM, SubVP for B(T)
    x0 = target.sample(n, rng)
    t = sample_times(n, t0, T, rng, time_distribution)
    z = rng.standard_normal(x0.shape)
    alpha, sigma = process.marginal(t)
    xt = alpha[:, None] * x0 + sigma[:, None] * z
    lam = sigma**2 if weighting == "sigma2" else np.ones(n)
    rows = lam * np.sum((target.score(xt, t, process) + z / sigma[:, None]) ** 2, axis=1)
    return float(rows.mean()), float(rows.std(ddof=1) / np.sqrt(n))


# exact samples whose sliced Wasserstein distances to the reference make its floor
SLICED_FLOOR_DRAWS = 4


def sample_report(x, target, rng, *, n_reference, two_sample_n=2000, bins=20, floor=False):
    """Distances between samples x (n, d) and the target, each with its standard error.

    Histogram TV (d <= 2, against the target's exact bin masses, with the floor an exact
    sample would show; where histogram_tv refuses the target, a component too narrow for
    the bins, its entry has value None and "not_computed" says why), sliced Wasserstein-1 and -2 against n_reference fresh target
    draws (the reference), unbiased MMD^2 and energy distance (on the first two_sample_n
    points against as many of the reference), the errors of the mean and the covariance,
    and for mixtures the recovered component weights. A figure that cannot be computed in
    float64 for these samples (a point far out, e.g. 1e160 from a sampler that diverged:
    MMD^2's squared distances, the covariance error, the component weights) has value
    None (and standard_error None) and "not_computed" saying why; the others still
    stand. Samples that are not a finite (n >= 2, target.dim) array raise ValueError (a
    non-finite point named by its row), as do n_reference or two_sample_n that are not
    integers >= 2 and (d <= 2) malformed bins.

    The sliced Wasserstein standard error is over the random projections only (x and the
    reference held fixed): the sampling noise of x and the reference is larger (ring,
    n = 2000: SW2 of two exact samples 0.074, spread 0.023 over seeds, stated error
    0.0013). With floor=True each sliced_wasserstein_p entry also gets
    "exact_sample_floor": SW_p between each of 4 fresh exact samples of x's size and the
    same reference, {"value": their mean, "standard_error": std / sqrt(4), "spread":
    their std (ddof 1), "draws": 4}, drawn from rng after everything else (off by
    default, so that rng is left where earlier versions left it; `sgm-ref evaluate` draws
    the floor from a stream of its own). A value within about "spread" of the floor is what
    an exact sample shows.
    """
    if not isinstance(floor, (bool, np.bool_)):
        raise ValueError(f"floor must be True or False, got {floor!r}")
    try:  # bad input raises; only its figures may be "not computed"
        x = check_points(x, "x", d=getattr(target, "dim", None))
    except ValueError as exc:
        _name_non_finite_row(x, exc)
        raise
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"x must have at least 2 rows (points), got {n}")
    # settings, before any draw: bad ones were read as samples "not computable in float64"
    n_reference = check_count(n_reference, "n_reference", minimum=2)
    two_sample_n = check_count(two_sample_n, "two_sample_n", minimum=2)
    if x.shape[1] <= 2:  # the histogram's only
        from .metrics.histogram import _check_bins
        _check_bins(bins, x.shape[1])
    reference = target.sample(n_reference, rng)
    out = _sample_distances(x, target, rng, reference, two_sample_n, bins)
    if floor:
        _sliced_floor(out, target, reference, n, rng)
    return out


def _name_non_finite_row(x, exc):
    """check_points' refusal of a non-finite x (exc) again with the first such row: "x contains
    1 non-finite value(s)" did not say which of 10,000 samples (plots.samples_figure says)."""
    if not str(exc).startswith("x contains "):
        return
    rows = np.flatnonzero(~np.all(np.isfinite(np.asarray(x)), axis=1))
    raise ValueError(f"{exc}: {rows.size} of {len(x)} points are not finite (the first is row {rows[0]}, "
                     f"{np.asarray(x)[rows[0]].tolist()!r:.120}); a sampler that diverged has no distance to the "
                     "target: draw the samples again") from None


def _sliced_floor(samples, target, reference, n, rng, draws=SLICED_FLOOR_DRAWS):
    """Add "exact_sample_floor" to samples["sliced_wasserstein_p"], p = 1, 2 (sample_report).

    draws fresh exact samples of n points, each against the reference with its own
    projections: y_1 (n, d), SW_1 and SW_2 of y_1, then y_2, ... (rng in that order).
    """
    values = {1: [], 2: []}
    for _ in range(draws):
        fresh = target.sample(n, rng)
        for p in (1, 2):
            values[p].append(metrics.sliced_wasserstein(fresh, reference, rng, p=p).value)
    for p, v in values.items():
        v = np.asarray(v)
        spread = float(v.std(ddof=1))
        samples[f"sliced_wasserstein_{p}"]["exact_sample_floor"] = {
            "value": float(v.mean()), "standard_error": spread / math.sqrt(draws), "spread": spread, "draws": draws}
    return samples


def _sample_distances(x, target, rng, reference, two_sample_n, bins):
    n, d = x.shape
    n_reference = reference.shape[0]
    m = min(two_sample_n, n, n_reference)
    out = {"n": n, "d": d}
    if d <= 2:
        try:
            h = metrics.histogram_tv(x, target, bins=bins)
            out["histogram_tv"] = {"value": h.value, "expected_bias": h.expected_bias, "bins": bins}
        except ValueError as exc:  # a component too narrow for the bins: the other figures still stand
            out["histogram_tv"] = {"value": None, "expected_bias": None, "bins": bins, "not_computed": str(exc)}
    # a sampler that diverged leaves points far out (1e160): a figure that cannot be computed in
    # float64 for them gets value None and "not_computed" saying why, the others still stand
    # (each metric draws its projections before it can refuse, so rng moves as before)
    for p in (1, 2):
        out[f"sliced_wasserstein_{p}"] = _or_not_computed(
            lambda p=p: _estimate(*metrics.sliced_wasserstein(x, reference, rng, p=p)))

    def two_sample_mmd():
        mm = metrics.mmd(x[:m], reference[:m])
        return {**_estimate(mm.value, mm.standard_error), "bandwidth": mm.bandwidth}

    out["mmd2"] = _or_not_computed(two_sample_mmd, bandwidth=None)
    out["energy_distance"] = _or_not_computed(lambda: _estimate(*metrics.energy_distance(x[:m], reference[:m])))
    out["mean_error"] = _or_not_computed(lambda: _estimate(*metrics.mean_error(x, target)))
    out["covariance_error"] = _or_not_computed(lambda: _estimate(*metrics.covariance_error(x, target)))
    if isinstance(target, GaussianMixture):  # (a ProductMixture has weights too, per coordinate: not these)
        try:
            w = metrics.component_weights(x, target)
            out["component_weights"] = {"true": target.weights.tolist(), "soft": w.soft.tolist(),
                                        "soft_standard_error": w.soft_standard_error.tolist(),
                                        "hard": w.hard.tolist(), "hard_standard_error": w.hard_standard_error.tolist()}
        except ValueError as exc:
            out["component_weights"] = {"true": target.weights.tolist(), "soft": None, "soft_standard_error": None,
                                        "hard": None, "hard_standard_error": None,
                                        "not_computed": _not_computed_reason(exc)}
    return out


def _not_computed_reason(exc):
    return f"not computable in float64 for these samples ({exc})"


def _or_not_computed(compute, **blank):
    """compute()'s entry, or {"value": None, "standard_error": None, **blank, "not_computed": why}
    when the samples put it beyond float64 (a metric's ValueError on valid samples)."""
    try:
        return compute()
    except ValueError as exc:
        return {"value": None, "standard_error": None, **blank, "not_computed": _not_computed_reason(exc)}


def _check_writable(folder):
    """Refuse a folder the report could not be written into, before the work, not after."""
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".tmp-probe-"):
            pass
    except OSError as exc:
        raise RunError(f"cannot write the report into {os.fspath(folder)}: {exc.strerror or exc}") from None


class _Stages:
    """A progress bar over the stages of an evaluation (tqdm on stderr), or nothing."""

    NAMES = ("sample distances", "score-error profile and integral", "TV bound", "exact-score loss",
             "likelihood", "sliced-Wasserstein floor", "report and plots")

    def __init__(self, progress):
        if progress is None:
            progress = sys.stderr.isatty()  # as training: only on a terminal
        self.bar = None
        if progress:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=len(self.NAMES), desc="evaluating", unit="stage", leave=False)

    def start(self, name):
        if self.bar is not None:
            self.bar.n = self.NAMES.index(name)
            self.bar.set_postfix_str(name)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def evaluate_run(folder, options=None, plots=True, progress=None, nll=0):
    """Evaluate a sampled run: write report.json, report.md and (with matplotlib) the plots.

    options update config["evaluate"], which report.json records (its "evaluate"). Once
    the figures are computed, the old report and plots are removed, then the updated
    config.json, report.json and report.md are written, then the plots (none with
    plots=False): a kill in between leaves no report rather than a mixed one. nll > 0
    adds report["likelihood"] (sgm_ref.likelihood.nll_report): the
    model's NLL by the probability-flow ODE on nll fresh exact samples of p_t0, the
    target's exact NLL and their gap, an estimate of KL(p_t0 || model); 0 (the default)
    skips it (it solves an ODE with the network's exact divergence, about d forward
    passes per evaluation). The folder is checked to be writable before any work. progress: a
    progress bar over the stages on stderr; None shows it only when stderr is a terminal.

    Returns
    -------
    report : dict
    written : list of str, the plot files written ([] without matplotlib)
    plot_note : str or None, why plots (all, or samples.png) were not written

    Raises
    ------
    ValueError
        Another command is writing into the folder (its lock names it), the run's
        files are missing or damaged, options hold an unknown or bad setting, nll
        is not 0 or an integer >= 2 (or its samples do not fit in memory), plots is
        not True or False, or progress not True, False or None; all before any work.
    """
    with writing(folder):  # library callers get the lock and the clean-up the command has
        return _evaluate(folder, options, plots, progress, nll)


def _evaluate(folder, options, plots, progress, nll=0):
    # (plots="no" drew the plots, and a progress of "no" showed the bar: any truthy value did)
    if not isinstance(plots, (bool, np.bool_)):
        raise ValueError(f"plots must be True or False, got {plots!r}")
    check_progress(progress)
    nll = check_count(nll, "nll", minimum=0)
    if nll == 1:
        raise ValueError("nll must be 0 (no likelihood) or at least 2 points (a standard error needs two)")
    config = read_config(folder)
    if options:
        config = update_section(config, "evaluate", options)  # which checks the sizes
    target = from_record(config["target_definition"])
    if not options:  # `sgm-ref evaluate RUN`: the run's own counts, asked before the work (read_config asks none)
        _check_sizes(config, target.dim, ("evaluate",))
    model = load_model(folder, config)
    if nll:  # the likelihood's exact samples, checked before every stage (they were refused last, as "n")
        # the most a target's sample asks per point (GaussianMixture 2 (d + 1) numbers, ProductMixture
        # 4 d); the ODE that follows needs more (rk45's 7 stages of d + 1 numbers per point)
        per_point = 8 * max(2 * (target.dim + 1), 4 * target.dim)
        check_fits("nll", nll, per_point, f"its exact samples in d = {target.dim}")
    x = load_samples(folder, target.dim)
    _check_writable(folder)
    rng = streams(config["seed"])["evaluate"]
    e, s, tr = config["evaluate"], config["sample"], config["train"]
    training = _training_summary(folder, config["train"]["steps"])
    tic = time.perf_counter()
    stages = _Stages(progress)
    try:
        stages.start("sample distances")
        # sample_report(..., floor=False) in its parts, so that its reference serves the floor below
        reference = target.sample(e["n"], rng)
        report = {"target": config["target"], "sampler": dict(s), "evaluate": dict(e), "samples": _sample_distances(
            x.astype(np.float64), target, rng, reference, e["two_sample_n"], e["bins"])}
        stages.start("score-error profile and integral")
        report.update(score_report(model, target, model.process, t0=s["t0"], T=s["T"], method=s["method"],
                                   grid=s["grid"], n_steps=s["n_steps"], rng=rng, profile_n=e["profile_n"],
                                   profile_times=e["profile_times"], bound_n=e["bound_n"], dtype=model.dtype,
                                   on_stage=stages.start))
        stages.start("exact-score loss")
        # drawn last from the stream, so the figures above are those of earlier versions
        training["exact_score_loss"] = _estimate(*exact_score_loss(
            target, model.process, t0=tr["t0"], T=tr["T"], weighting=tr["weighting"],
            time_distribution=tr["time_distribution"], n=e["n"], rng=rng))
        report["training"] = training
        if nll:
            from .likelihood import nll_report
            stages.start("likelihood")
            # drawn after everything else from the stream, so the figures above do not change
            report["likelihood"] = nll_report(model, target, model.process, t0=s["t0"], T=s["T"], n=nll, rng=rng)
        stages.start("sliced-Wasserstein floor")
        # from its own stream, so every figure above is unchanged and the floor does not depend on --nll
        _sliced_floor(report["samples"], target, reference, len(x), streams(config["seed"])["sliced floor"])
        report["seconds"] = time.perf_counter() - tic
        stages.start("report and plots")
        text = markdown(report)
        # the old report and plots go first, then the settings, then the new report: a kill
        # in between leaves no report rather than one beside another's settings or plots
        _remove(folder, _EVALUATION_FILES)
        if options:
            write_json(os.path.join(folder, "config.json"), config)
        write_json(os.path.join(folder, "report.json"), json_ready(report))
        atomic_write(os.path.join(folder, "report.md"), lambda f: f.write(text.encode("utf-8")))
        written, note = [], None
        if plots:
            from .plots import plot_run
            written, note = plot_run(folder, target, x, report)
    finally:
        stages.close()
    return report, written, note


def _training_summary(folder, steps=None):
    path = os.path.join(folder, "history.json")
    try:
        with open(path, encoding="utf-8") as f:
            raw = load_json(f, path)["loss"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunError(f"{path} is missing or unreadable: train the run first, or, if it is trained, "
                       f"`sgm-ref train {_shell_path(folder)} --resume` restores it") from None
    numbers = isinstance(raw, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in raw)
    loss = np.asarray(raw if numbers else [], dtype=np.float64)
    if loss.size == 0 or not np.all(np.isfinite(loss)):
        raise RunError(f"{path} is damaged (its loss must be a non-empty list of finite numbers, as "
                       f"training writes it): `sgm-ref train {_shell_path(folder)} --resume` restores it from the "
                       "run's final state")
    if steps is not None and len(loss) != steps:
        raise RunError(f"{path} holds {len(loss)} losses, but the run is trained for {steps} steps: it is another "
                       f"training's; `sgm-ref train {_shell_path(folder)} --resume` restores it from the run's final "
                       "state")
    recorded = _recorded_loss(folder)
    if recorded is not None and raw != recorded:  # the very numbers: JSON reads each float64 back exactly
        # a changed digit (damage, an edit) kept the length and finiteness, and the report's losses were
        # another training's; the training state holds them, checked by its zip's CRC
        raise RunError(f"{path} is not the losses the run's training state records (damaged or edited): "
                       f"`sgm-ref train {_shell_path(folder)} --resume` restores it from the run's final state")
    window = min(FINAL_LOSS_WINDOW, len(loss))
    return {"steps": len(loss), "first_loss": float(loss[0]), "last_loss": float(loss[-1]),
            "final_loss_mean": float(np.mean(loss[-window:])), "final_loss_window": window}


def json_ready(report):
    """report with every non-finite float replaced by None, and where they were listed.

    JSON has no inf or NaN. Each one becomes null, and report["non_finite"] maps its
    JSON pointer (RFC 6901, e.g. "/score_error/integral/value") to "inf", "-inf" or
    "nan". A report without non-finite numbers is returned unchanged (no "non_finite").
    """
    found = {}

    def clean(obj, pointer):
        if isinstance(obj, dict):
            return {k: clean(v, f"{pointer}/{str(k).replace('~', '~0').replace('/', '~1')}") for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v, f"{pointer}/{i}") for i, v in enumerate(obj)]
        if isinstance(obj, (float, np.floating)) and not math.isfinite(obj):
            found[pointer] = "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
            return None
        return obj

    out = clean(report, "")
    if found:
        out["non_finite"] = found
    return out


_FLOAT64_MAX = float(np.finfo(np.float64).max)


def _num(value, spec):
    """value formatted, or what it is when it is not a number a float64 can hold."""
    if value is None:
        return "undefined"
    if math.isinf(value):
        return "overflows float64" if value > 0 else "-inf (overflows float64)"
    if math.isnan(value):
        return "undefined (nan)"
    return format(value, spec)


def _percent(value):
    """A ratio as a percentage: two decimals, or two significant digits below 1% (a relative
    error of 4e-5, a float32 model's, showed as "0.00%", read as none), or three significant
    digits from 10,000% on (a ratio of 1e20 showed all its 23 digits and two decimals,
    "10000000002179999989760.00%": digits a Monte-Carlo estimate does not have).

    From 10,000% as printed: a ratio of 99.999999 rounds to it ("10000.00%" was two decimals).
    A finite ratio past float64's largest / 100 is shown by its own digits, the exponent moved
    by 2 (100 x 1e307 overflows: "inf%" of a finite ratio)."""
    if _finite(value) and 0 < abs(value) < 0.01:
        return f"{100 * value:#.2g}%"  # "#": 0.50%, not 0.5% (the trailing zero is a digit)
    text = _num(value, ".2%")
    if _finite(value) and abs(float(text[:-1])) >= 10_000:
        if math.isfinite(100 * value):
            return f"{100 * value:.3g}%"
        digits, exponent = f"{value:.3g}".split("e")  # |value| > 1.7e306: always "d.dde+NNN"
        return f"{digits}e{int(exponent) + 2:+d}%"
    return text


def _finite(value):
    return value is not None and math.isfinite(value)


def _pm_values(value, se, digits=3):
    if not _finite(value):
        return _num(value, "")
    return f"{value:.{digits}g} ± {_num(se, '.2g')}"


def non_finite_notes(report):
    """Plain statements of the report's non-finite numbers (empty when there are none)."""
    notes = []
    se = report.get("score_error") or {}
    bad = [t for t, v in zip(se.get("t", []), se.get("error", [])) if not math.isfinite(v)]
    if bad:
        where = (f"every t of the profile ({bad[0]:.3g} to {bad[-1]:.3g})" if len(bad) == len(se["t"]) > 1
                 else "t = " + ", ".join(f"{t:.3g}" for t in bad))
        # the profile's error is inf where a point's |s - grad log p_t|^2 is (its mean of finite
        # squares is scaled, never inf): a bound from below on |s - grad log p_t|, not its size (a
        # score 1e200 off was said to reach "about 1e154"), and on that point, not on the mean
        largest, root = (f"{v:.2g}".replace("+", "") for v in (_FLOAT64_MAX, math.sqrt(_FLOAT64_MAX)))
        notes.append(f"the score error overflows float64 at {where}: |s - grad log p_t|^2 exceeds the largest "
                     f"float64 ({largest}) at some of the points, so |s - grad log p_t| is {root} or more there")
    integral = se.get("integral")
    if integral is not None and not math.isfinite(integral["value"]):
        bound = report.get("tv_bound")
        if bound is None:  # the probability-flow ODE: no bound to speak of
            notes.append("the integrated score error overflows float64")
        elif _finite(bound.get("kl_path")):
            # the integral's random times can meet a t where the score is far off and the grid's
            # times not (1e160 below t = 1.01e-3 on [1e-3, 5], 300 geometric steps): "say nothing
            # beyond TV <= 1" stood beside a finite bound, 0.3048
            notes.append("the integrated score error overflows float64; the path KL and the TV bound, which call "
                         "the score at the sampler's grid times only, do not: they stand as given")
        else:
            notes.append("the integrated score error overflows float64, so the path KL and the TV bound say "
                         "nothing beyond TV <= 1")
    return notes


def bound_text(bound):
    """The bound ± its standard error, or why it says nothing: TV <= 1 always."""
    if bound["tv"] >= 1.0:
        if not math.isfinite(bound["kl_path"]):
            return "1 (vacuous: the path KL overflows float64)"
        return (f"1 (vacuous: TV(p_0, p_t0) + sqrt(KL / 2) = {bound['tv_early_stopping'] + (bound['kl'] / 2) ** 0.5:.3g};"
                f" path KL {bound['kl_path']:.3g} ± {bound['kl_path_se']:.2g})")
    return f"{bound['tv']:.4f} ± {bound['tv_se']:.2g}"


def _pm(entry, digits=3):
    return _pm_values(entry["value"], entry["standard_error"], digits)


# a sample mean over fewer points than this (the likelihood gap's nll points) is not called a
# fault beyond 3 standard errors (_below_zero_note's points)
VERDICT_POINTS = 50


def _below_zero_note(label, value, se, why="it is an unbiased estimate (not clipped) of a quantity >= 0",
                     degenerate=False, points=None, rounding=None):
    """Why an estimate of a quantity >= 0 came out negative: it is unbiased, not clipped.

    degenerate: a two-sample U-statistic (MMD^2, energy distance), whose first-order standard
    error understates its noise when the two laws are equal: exact samples then fall more
    than 3 of those standard errors below 0 in a few percent of draws (ring, 2 x 300 points:
    5 seeds in 200, down to 5.4), so that is no sign of a fault.

    points: the number of terms of a sample mean (the likelihood gap's). Below VERDICT_POINTS
    its standard error is itself too uncertain, and the terms too skewed, for a verdict beyond
    3 of them: the target's own score as the model (the exact oracle, ring, OU, t0 = 0.001)
    falls more than 3 below 0 in 21% of draws of 2 points, 11.5% of 4, 2.6% of 12, 1.7% of
    20, 0.6% of 30, 0.25% of 50 (0 of 400 beyond 3.1).

    rounding: the rounding the estimate may carry beside its noise (TVBound.kl_prior_rounding);
    a value within it is rounding, consistent with 0, however many standard errors below.
    """
    if value is None or not value < 0:
        return None
    if rounding is not None and -value <= rounding:
        return (f"{label} = {value:.2g} ± {_num(se, '.2g')} is below 0 by less than the rounding of its terms "
                f"({rounding:.2g}): consistent with 0 (p_T is its start law to float64's precision)")
    if not se > 0:  # 0 or nan: no noise to be within
        return (f"{label} = {value:.2g} ± {_num(se, '.2g')} is below 0 with no estimator noise to explain it "
                "(its standard error is not above 0): please report it")
    k = -value / se
    if k <= 3:
        within = max(1, math.ceil(k))  # k = 0 for an infinite standard error: "within 0 standard error" was said
        verdict = f"within {within} standard error{'s' if within > 1 else ''} of 0, consistent with 0"
    elif degenerate:
        verdict = (f"{_above_three(k)} standard errors below 0, still consistent with 0: when the two laws are equal "
                   "the statistic is degenerate and its first-order standard error understates the noise (exact "
                   "samples fall more than 3 of them below 0 a few times in a hundred)")
    elif points is not None and points < VERDICT_POINTS:
        verdict = (f"{_above_three(k)} standard errors below 0, still consistent with 0: a standard error from "
                   f"{points} points is itself uncertain (the exact score as the model falls more than 3 of them "
                   f"below 0 in 11.5% of draws of 4 points, 2.6% of 12); {VERDICT_POINTS} or more points give a verdict")
    else:
        verdict = f"{_above_three(k)} standard errors below 0: more than the estimator's noise, please report it"
    return f"{label} = {value:.2g} ± {se:.2g} is below 0 because {why}; {verdict}"


def _above_three(k):
    """k > 3 with as many decimals as it takes to show it above 3 (3.04 is "3.04", not "3.0",
    which would read as within the 3 standard errors called consistent with 0)."""
    if not math.isfinite(k):  # value / se beyond float64
        return "more than 1.8e308"
    if k >= 1e4:  # far above 3 (a standard error of 1e-20): two digits, not every digit of k ("1e15", not
        return re.sub(r"e\+0*", "e", f"{k:.2g}")  # "1000000000000000.1", or ~300 digits for a standard error of 1e-300)
    digits = 1
    while float(f"{k:.{digits}f}") <= 3.0:
        digits += 1
    return f"{k:.{digits}f}"


def _below_zero_notes(report):
    smp, notes = report["samples"], []
    for key, label in (("mmd2", "MMD^2"), ("energy_distance", "energy distance")):
        notes.append(_below_zero_note(label, smp[key]["value"], smp[key]["standard_error"], degenerate=True))
    bound = report.get("tv_bound")
    if bound is not None:
        notes.append(_below_zero_note("KL(p_T || N(0, I))", bound["kl_prior"], bound["kl_prior_se"],
                                      rounding=bound.get("kl_prior_rounding")))  # (reports before 2026-12-06: none)
    gap = (report.get("likelihood") or {}).get("kl_gap")
    if gap is not None:  # the likelihood's paired estimate of KL(p_t0 || model) (sgm_ref.likelihood.nll_report)
        notes.append(_below_zero_note("the likelihood gap", gap["value"], gap["standard_error"],
                                      "it is a sample mean (not clipped) of log p_t0 - log q over the points, "
                                      "an estimate of KL(p_t0 || model) >= 0", points=report["likelihood"].get("n")))
    return [note for note in notes if note]


def markdown(report):
    """report.md: the figures a reader looks at first, then the score-error table."""
    smp, lines = report["samples"], []
    sampler = report["sampler"]
    lines += [f"# sgm_ref run: {report['target']}", "",
              f"{smp['n']} samples in d = {smp['d']} from {sampler['method']} on a {sampler['grid']} grid of "
              f"{sampler['n_steps']} steps, t0 = {sampler['t0']:g}, T = {sampler['T']:g}."]
    if "evaluate" in report:  # reports of older versions did not record their settings
        lines.append("Evaluated with " + ", ".join(f"{k} = {v}" for k, v in report["evaluate"].items()) + ".")
    lines += ["", "## Distance to the target", "", "| metric | value ± standard error |", "|---|---|"]
    if "histogram_tv" in smp:
        h = smp["histogram_tv"]
        if h["value"] is None:
            lines.append(f"| histogram TV ({h['bins']} bins per axis) | "
                         f"not computed: {_cell(h.get('not_computed', ''))} |")
        else:
            lines.append(f"| histogram TV ({h['bins']} bins per axis) | {h['value']:.4f} "
                         f"(an exact sample of this size shows {h['expected_bias']:.4f}) |")
    bound = report.get("tv_bound")
    if bound is not None:
        lines.append(f"| certified TV upper bound | {bound_text(bound)} |")
    for key, label in (("sliced_wasserstein_1", "sliced Wasserstein-1"), ("sliced_wasserstein_2", "sliced Wasserstein-2"),
                       ("mmd2", "MMD^2 (unbiased)"), ("energy_distance", "energy distance"),
                       ("mean_error", "mean error \\|m_hat - m\\|"), ("covariance_error", "covariance error (Frobenius)")):
        if smp[key]["value"] is None and "not_computed" in smp[key]:
            lines.append(f"| {label} | not computed: {_cell(smp[key]['not_computed'])} |")
            continue
        lines.append(f"| {label} | {_pm(smp[key])}{_sliced_floor_text(smp[key]) if key.startswith('sliced') else ''} |")
    if bound is not None:
        lines += ["", "The bound: TV <= TV(p_0, p_t0) + sqrt(KL / 2), KL = max(KL(p_T || N(0, I)), 0) + path KL", "",
                  f"- TV(p_0, p_t0) = {_pm_values(bound['tv_early_stopping'], bound['tv_early_stopping_se'])}",
                  f"- KL(p_T || N(0, I)) = {_pm_values(bound['kl_prior'], bound['kl_prior_se'])}",
                  f"- path KL (score error and discretisation) = {_pm_values(bound['kl_path'], bound['kl_path_se'])}"]
        if bound.get("tv_upper") is not None:  # reports of earlier versions have no upper values
            kl_upper = (f"KL <= {bound['kl_upper']:.3g}" if _finite(bound["kl_upper"])
                        else f"KL {_num(bound['kl_upper'], '')}")
            lines.append(f"- the bound is certified in expectation; its one-sided upper value, 3 standard errors on "
                         f"each Monte-Carlo term: TV <= {bound['tv_upper']:.4f} ({kl_upper})")
    if "component_weights" in smp and smp["component_weights"].get("soft") is None:
        lines += ["", "## Component weights (posterior assignment)", "",
                  f"Not computed: {smp['component_weights'].get('not_computed', '')}"]
    elif "component_weights" in smp:
        cw = smp["component_weights"]
        lines += ["", "## Component weights (posterior assignment)", "", "| k | true | recovered (soft) |", "|---|---|---|"]
        lines += [f"| {k} | {w:.4f} | {s:.4f} ± {se:.1g} |"
                  for k, (w, s, se) in enumerate(zip(cw["true"], cw["soft"], cw["soft_standard_error"]))]
    se = report["score_error"]
    lines += ["", "## Score error E|s - grad log p_t|^2", "",
              f"Integrated over [t0, T] with weight beta(t)/2 (its Girsanov term): {_pm(se['integral'])}.", "",
              "| t | error ± standard error | relative to E\\|grad log p_t\\|^2 |", "|---|---|---|"]
    lines += [f"| {t:.3g} | {_pm_values(v, s)} | {_percent(r)} |"
              for t, v, s, r in zip(se["t"], se["error"], se["standard_error"], se["relative"])]
    if "training" in report:
        lines += ["", _training_text(report["training"])]
    if "likelihood" in report:
        from .likelihood import nll_lines
        lines += ["", "## Likelihood", ""] + [f"- {line.strip()}" for line in nll_lines(report["likelihood"])]
    notes = non_finite_notes(report) + _below_zero_notes(report)
    if notes:
        lines += ["", "## Notes", ""] + [f"- {note[0].upper()}{note[1:]}." for note in notes]
    return "\n".join(lines) + "\n"


def _cell(text):
    """text for a cell of a Markdown table: its pipes escaped (a reason's "||S - Sigma||_F"
    split the row, and renderers dropped the cells beyond the header's two)."""
    return str(text).replace("|", "\\|")


def _sliced_floor_text(entry):
    """What a sliced Wasserstein ± covers, and the exact-sample floor beside it (when measured)."""
    floor = entry.get("exact_sample_floor")
    if floor is None:
        return " (± over the random projections only)"
    return (f" (± over the random projections only; {floor['draws']} exact samples of this size show "
            f"{floor['value']:.3g}, spread {floor['spread']:.2g})")


def _training_text(tr):
    text = (f"Training: {tr['steps']} steps; loss {tr['first_loss']:.4g} at the first step, "
            f"{tr['last_loss']:.4g} at the last step (one batch), {tr['final_loss_mean']:.4g} averaged over the "
            f"last {tr['final_loss_window']} steps (the \"final loss\" `sgm-ref train` prints).")
    if "exact_score_loss" in tr:
        text += (f" The exact score's loss under the same objective, the floor training approaches, is "
                 f"{_pm(tr['exact_score_loss'], 4)}.")
    return text


def summary(report):
    """A few lines for the terminal."""
    smp, out = report["samples"], []
    if "histogram_tv" in smp:
        h = smp["histogram_tv"]
        out.append("histogram TV        not computed (report.md says why)" if h["value"] is None else
                   f"histogram TV        {h['value']:.4f}   (exact-sample floor {h['expected_bias']:.4f})")
    if report.get("tv_bound") is not None:
        b = report["tv_bound"]
        out.append(f"certified TV bound  {bound_text(b)}")
    sw2 = smp["sliced_wasserstein_2"]
    floor = sw2.get("exact_sample_floor")
    if sw2["value"] is None:
        out.append("sliced W2           not computed (report.md says why)")
    else:
        out.append(f"sliced W2           {_pm(sw2)} (± projections only" + (
            f"; exact-sample floor {floor['value']:.3g}, spread {floor['spread']:.2g})" if floor is not None else ")"))
    out.append("MMD^2 (unbiased)    " + ("not computed (report.md says why)" if smp["mmd2"]["value"] is None
                                         else _pm(smp["mmd2"])))
    out.append(f"score error (int.)  {_pm(report['score_error']['integral'])}")
    tr = report.get("training")
    if tr and "exact_score_loss" in tr:
        out.append(f"final loss          {tr['final_loss_mean']:.4g} (mean of the last {tr['final_loss_window']} "
                   f"steps; the exact score's: {_pm(tr['exact_score_loss'], 4)})")
    if "likelihood" in report:
        from .likelihood import nll_lines
        out += nll_lines(report["likelihood"])
    out += [f"note: {note}" for note in non_finite_notes(report) + _below_zero_notes(report)]
    return "\n".join(out)

