"""Error measures of a score function against an exact (or Monte-Carlo) oracle.

score_error_integral is the score's share of the Girsanov path KL of a sampler (Cole & Lu
2024; Chen et al. 2023): see sgm_ref.metrics.bound and docs/design.md, "Certified error".
"""

from typing import NamedTuple

import numpy as np

from .._validation import (ResultOverflowError, call_score, check_count, check_float_dtype, check_overflow_policy,
                           check_real_array, check_rng, check_time_range, fits_in_memory, mean_se)
from ..processes import VariancePreserving, check_process
from ..samplers import _check_sigma2, check_model_dtype

__all__ = ["score_error_integral", "score_error_profile", "ScoreErrorProfile"]


def score_error_integral(score, target, process, t0, T, n, rng, *, time_distribution="log-uniform",
                         dtype=np.float64, overflow="raise"):
    """Monte-Carlo estimate of int_{t0}^{T} g(t)^2/2 E_{p_t} |s(x, t) - grad log p_t(x)|^2 dt.

    For dX = f X dt + g dW the reverse SDE's drift is -f y + g^2 s, its noise g dW, so by
    Girsanov a score error contributes 1/2 int g^2 |s - grad log p_t|^2 dt to
    KL(path of the true reverse process || path of the sampler) (Cole & Lu). For a
    variance-preserving process g^2 = beta(t) (for OU, beta = 2 and the weight is 1) and
    beta is used as before; for SubVP, VE, EDM and FlowMatching g^2 = process.g2(t).

    Draws x0_i ~ p_0, t_i ~ q on [t0, T] and x_i = alpha_{t_i} x0_i + sigma_{t_i} z_i
    (exact samples of p_{t_i}), and averages e_i / q(t_i) with
    e_i = g(t_i)^2/2 |s(x_i, t_i) - grad log p_{t_i}(x_i)|^2. With q log-uniform,
    q(t) = 1 / (t log(T / t0)), which puts more points near t0 where the score and its
    error are largest; with q uniform, q = 1 / (T - t0). For VPCosine and FlowMatching,
    whose g^2 grows like 2 / (1 - t) toward t_max, and DDPM's capped cosine schedule
    (g^2 ~ 6900 on its last step), half the times are drawn with density
    g^2 / int_t0^T g^2 instead (q is then the mixture of the two): with q alone a few
    draws near t_max carried the integral and the standard error understated its spread
    (FlowMatching at T = t_max: spread 5.9 across seeds against a stated 1.8).

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    target : object with sample(n, rng) and score(x, t, process), e.g. GaussianMixture
    process : any process of sgm_ref.processes
    t0, T : float, 0 < t0 < T <= process.t_max
    n : int >= 2
    rng : numpy.random.Generator
    time_distribution : {"log-uniform", "uniform"}
    dtype : float64 or float32
        The dtype the score function is called with (the oracle is always float64).
    overflow : {"raise", "inf"}
        An integral beyond the float64 range raises ResultOverflowError (a ValueError),
        or with "inf" is returned as (inf, nan).

    Returns
    -------
    value, standard_error : float

    Raises
    ------
    ValueError
        For bad arguments (a ScoreModel's dtype must be dtype, checked before any draw; T
        must keep B(T) (sigma_T^2 and g^2(T) for other processes) finite, and
        with log-uniform times T log(T / t0) finite), points x_t beyond the range of dtype, a
        score that fails or returns non-finite values (the message names score_error_integral
        and the first such row's time), or an integral beyond the float64 range (a score error
        of ~1e150 or more).
    """
    process = check_process(process, variance_preserving=False)
    n = check_count(n, "n", minimum=2)
    t0, T = _check_time_range(t0, T, process)
    rng = check_rng(rng)
    dtype = check_float_dtype(dtype)
    check_model_dtype(score, dtype)  # a ScoreModel's own refusal names an x the caller did not pass
    overflow = check_overflow_policy(overflow)
    if time_distribution not in ("log-uniform", "uniform"):
        raise ValueError(f"time_distribution must be 'log-uniform' or 'uniform', got {time_distribution!r}")
    span = None
    if time_distribution == "log-uniform":
        with np.errstate(over="ignore"):
            # T / t0 itself can overflow where its log does not
            span = np.log(T / t0) if np.isfinite(T / t0) else np.log(T) - np.log(t0)
            weight_at_T = T * span
        if not np.isfinite(weight_at_T):
            raise ValueError(f"T = {T:g} and t0 = {t0:g} are too far apart for log-uniform times: the weight "
                             "1 / q(T) = T log(T / t0) overflows float64; use a smaller T or time_distribution='uniform'")
    with fits_in_memory("n", n, n * getattr(target, "dim", 1), per_item=8 * 4):
        return _score_error_integral(score, target, process, t0, T, n, rng, time_distribution, dtype, span, overflow)


def _score_error_integral(score, target, process, t0, T, n, rng, time_distribution, dtype, span, overflow):
    x0 = target.sample(n, rng)
    u = rng.random(n)
    if time_distribution == "log-uniform":
        # (e^{span u} overflows where T / t0 does; then the log of t is interpolated)
        t = t0 * np.exp(span * u) if np.isfinite(T / t0) else np.minimum(np.exp(np.log(t0) + span * u), T)
        inv_q = t * span
    else:
        t = t0 + (T - t0) * u
        inv_q = np.full(n, T - t0)
    if process._times_by_g2:
        # half the times with density g^2 / G on [t0, T] (a defensive mixture with q): the
        # weight 1 / q_mix stays below 2 G / g^2 near T, where g^2 has no bound
        lo, hi = np.full(n, t0), np.full(n, T)
        by_g2 = rng.random(n) < 0.5
        t_g2, G = _times_with_g2_density(process, lo, hi, u)
        t = np.where(by_g2, t_g2, t)
        q = 1.0 / (t * span) if time_distribution == "log-uniform" else np.full(n, 1.0 / (T - t0))
        inv_q = 1.0 / (0.5 * q + 0.5 * process.g2(t) / G)
    xt, _ = process.perturb(x0, t, rng)
    # the score gets copies: t is used below (a score that scaled its t in place, as a unit
    # conversion might, made the exact score's error 0.47 instead of 0)
    where = (f" in score_error_integral (one call with its {n} times drawn in [t0, T] = [{t0:.6g}, {T:.6g}])")
    s = call_score(_naming_the_time(score, t, where), _points_in(xt, dtype, t, "a smaller T"), t.copy(),
                   where).astype(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        # variance-preserving processes keep beta (g^2 = beta), bit for bit as before
        g2 = process.beta(t) if isinstance(process, VariancePreserving) else process.g2(t)
        e = np.sum((s - target.score(xt, t, process)) ** 2, axis=1) * (0.5 * g2 * inv_q)
    value, se = mean_se(e)
    if not (np.isfinite(value) and np.isfinite(se)):
        if overflow == "inf":
            return np.inf, np.nan
        i = int(np.argmax(~np.isfinite(e))) if not np.all(np.isfinite(e)) else int(np.argmax(e))
        raise ResultOverflowError(f"the score error integral overflows float64: at t = {float(t[i]):.3g} the weighted squared "
                         f"error g(t)^2 / (2 q(t)) |s - grad log p_t|^2 is {float(e[i]):.3g} (the score there is "
                         f"as large as {float(np.max(np.abs(s[i]))):.3g}); the score is too far from the truth to "
                         "measure in float64")
    return value, se


def _naming_the_time(score, t, where):
    """score, but a non-finite output is refused naming the first such row's time t[i]
    (t (n,): the rows' own times, drawn apart, which call_score's message cannot name: a NaN
    met only in the integral read "score returned non-finite values", no t, no function).
    Any other fault is left to call_score, in its order (its type, shape and dtype checks
    come first)."""

    def named(x, tt):
        out = score(x, tt)
        if isinstance(out, np.ndarray) and not isinstance(out, np.ma.MaskedArray):
            a = np.asarray(out)
            if a.shape == x.shape and a.dtype.kind in "biufc":
                bad = ~np.all(np.isfinite(a), axis=1)
                if np.any(bad):
                    i = int(np.argmax(bad))
                    raise ValueError(f"score returned non-finite values at t = {float(t[i]):.6g} (row {i}, "
                                     f"{int(np.count_nonzero(bad))} of {len(bad)} rows non-finite){where}")
        return out

    return named


def _points_in(x, dtype, t, fix):
    """The points x (n, d), float64, in the dtype the score is called with, refusing a point
    beyond that dtype's range: a bare cast made it inf (float32 beyond |x| ~ 3.4e38: EDM at
    t = 1e39, say), and the score was given inf points with a RuntimeWarning and then blamed
    for non-finite output, or measured there. t (n,): the rows' times; fix: what to make
    smaller ("a smaller T"; "smaller times" for the profile, whose ts score_report takes up
    to T), for the message."""
    with np.errstate(over="ignore"):
        out = x.astype(dtype)
    bad = ~np.all(np.isfinite(out), axis=1)
    if np.any(bad):
        i = int(np.argmax(bad))
        if not np.all(np.isfinite(x[i])):  # not the cast's doing: float64 points that are inf or nan already
            raise ValueError(f"at t = {float(t[i]):.6g} the points x_t are not finite in float64 (a coordinate "
                             f"is {float(x[i][~np.isfinite(x[i])][0])!r}); use {fix} (or a smaller target)")
        raise ValueError(f"at t = {float(t[i]):.6g} the points x_t reach {float(np.max(np.abs(x[i]))):.3g}, beyond "
                         f"{np.dtype(dtype).name}'s range (the score is called in dtype {np.dtype(dtype).name}): "
                         f"use dtype float64, or {fix} (or a smaller target)")
    return out


def _times_with_g2_density(process, lo, hi, u):
    """Times in [lo, hi] with density g(t)^2 / G, G = int_lo^hi g^2, from u uniform on [0, 1).

    The inverse of the distribution function int_lo^t g^2 / G, by bisection (64 halvings
    shrink any step below one ulp: the root is as exact as int g^2's own rounding, about
    1e-11 relative near t_max). lo, hi, u: float64 arrays of one shape. Returns
    (t, G). For a process whose g^2 peaks far above its mean (its _times_by_g2: VPCosine
    and FlowMatching, g^2 ~ 2 / (1 - t), and DDPM's squaredcos_cap_v2, whose capped last
    beta makes g^2 ~ 6900), a time drawn uniformly makes an integral of g^2 |...|^2
    heavy-tailed: a few draws near t_max carry it, and the standard error of n draws
    understates the spread. Drawn with density g^2 / G, the weight of a draw is G itself,
    bounded.
    """
    total = process._int_g2(hi, lo)
    goal = u * total
    a, b = lo.copy(), hi.copy()
    for _ in range(64):
        mid = 0.5 * (a + b)
        below = process._int_g2(mid, lo) < goal
        a, b = np.where(below, mid, a), np.where(below, b, mid)
    return 0.5 * (a + b), total


def _check_time_range(t0, T, process):
    """check_time_range for variance-preserving processes (B(T) finite); for the others
    0 < t0 < T <= t_max with sigma_T^2 finite (EDM at T = 1e200 was refused by the
    perturbation at a drawn time, "t = 4.67e+164 ... use a smaller t") and g^2 finite at
    both ends."""
    if isinstance(process, VariancePreserving):
        return check_time_range(t0, T, process)
    t0, T = check_time_range(t0, T)
    if T > process.t_max:
        raise ValueError(f"T must be <= {process.t_max} for {process!r}, got {T!r}")
    _check_sigma2(process, T, "T")
    with np.errstate(over="ignore", invalid="ignore"):  # the private _g2: g2 raises naming its own "t"
        g2 = process._g2(np.array([t0, T]))
    if not np.all(np.isfinite(g2)):
        raise ValueError(f"T = {T!r} is too large for {process!r}: g(T)^2 overflows float64; use a smaller T")
    return t0, T


class ScoreErrorProfile(NamedTuple):
    """score_error_profile(..., oracle=True): per time t (arrays of shape (m,)), on the same
    n points x_i ~ p_t, with e_i = |s(x_i, t) - grad log p_t(x_i)|^2 and q_i = |grad log p_t(x_i)|^2:

    errors, standard_errors        mean(e), std(e, ddof=1) / sqrt(n) (as without oracle)
    oracle_mean_square             mean(q), the oracle's E|grad log p_t|^2
    relative                       R = mean(e) / mean(q), the same-draw ratio
    relative_standard_errors       the delta method's std(e - R q, ddof=1) / (sqrt(n) mean(q))
                                   (var(e) - 2 R cov(e, q) + R^2 var(q), over n mean(q)^2)
    """
    errors: np.ndarray
    standard_errors: np.ndarray
    oracle_mean_square: np.ndarray
    relative: np.ndarray
    relative_standard_errors: np.ndarray


def score_error_profile(score, target, process, ts, n, rng, *, dtype=np.float64, overflow="raise", oracle=False):
    """E_{p_t} |s(x, t) - grad log p_t(x)|^2 at each t in ts, with standard errors.

    For each t, n fresh points x = alpha_t x0 + sigma_t z with x0 ~ p_0 (exact samples of
    p_t) are scored by s and by the target's oracle.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    target : object with sample(n, rng) and score(x, t, process)
    process : any process of sgm_ref.processes
    ts : array_like, shape (m,)
        Times in (0, process.t_max].
    n : int >= 2
        Points per time.
    rng : numpy.random.Generator
    dtype : float64 or float32, the dtype the score function is called with.
    overflow : {"raise", "inf"}
        A squared error beyond the float64 range raises ResultOverflowError (a
        ValueError), or with "inf" is inf at that t (standard error nan), the other
        times measured as usual.
    oracle : bool
        Also return the oracle's mean square E|grad log p_t|^2 on the same points, and the
        relative error E|s - grad log p_t|^2 / E|grad log p_t|^2 as a ratio of means over
        those points with its delta-method standard error (no extra draws: rng moves as
        without it, and errors and standard_errors keep their bits). A ratio whose
        numerator and denominator come from separate draws carried the denominator's
        noise: s = 0.5 x exact on the ring, whose relative error is exactly 0.25, read
        0.216 to 0.287 over 12 times at n = 300 (seed 0); on the same points it is 0.25 to rounding.

    Returns
    -------
    errors, standard_errors : ndarray, shape (m,)
        Or, with oracle=True, a ScoreErrorProfile (errors, standard_errors,
        oracle_mean_square, relative, relative_standard_errors), each of shape (m,). Where
        the error overflows (overflow="inf") the relative error is inf and its standard
        error nan.

    Raises
    ------
    ValueError
        For bad arguments (a ScoreModel's dtype must be dtype, checked before any draw),
        points x_t beyond the range of dtype, a score that fails or returns non-finite
        values, or a squared error beyond the float64 range.
    """
    process = check_process(process, variance_preserving=False)
    n = check_count(n, "n", minimum=2)
    rng = check_rng(rng)
    dtype = check_float_dtype(dtype)
    check_model_dtype(score, dtype)
    overflow = check_overflow_policy(overflow)
    if not isinstance(oracle, (bool, np.bool_)):
        raise ValueError(f"oracle must be True or False, got {oracle!r}")
    ts = check_real_array(ts, "ts")
    if ts.ndim != 1 or ts.size == 0:
        raise ValueError(f"ts must be a non-empty 1-D array of times, got shape {ts.shape}")
    if np.any(ts <= 0) or np.any(ts > process.t_max):
        raise ValueError(f"ts must lie in (0, {process.t_max}]")
    with fits_in_memory("n", n, n * getattr(target, "dim", 1), per_item=8 * 4):
        out = _score_error_profile(score, target, process, ts, n, rng, dtype, overflow, oracle)
    return ScoreErrorProfile(*out) if oracle else out


def _score_error_profile(score, target, process, ts, n, rng, dtype, overflow, oracle=False):
    errors = np.empty(ts.size)
    standard_errors = np.empty(ts.size)
    mean_square, relative, relative_se = np.empty(ts.size), np.empty(ts.size), np.empty(ts.size)
    for k, t in enumerate(ts):
        tk = np.full(n, t)
        xt, _ = process.perturb(target.sample(n, rng), tk, rng)
        s = call_score(score, _points_in(xt, dtype, tk, "smaller times"), tk.copy(),  # copies: tk is used below
                       f" at t = {t:.6g}").astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            exact = target.score(xt, tk, process)
            e = np.sum((s - exact) ** 2, axis=1)
            q = np.sum(exact**2, axis=1) if oracle else None
        errors[k], standard_errors[k] = mean_se(e)
        if oracle:
            mean_square[k], relative[k], relative_se[k] = _same_draw_ratio(e, q, t, k, overflow)
        if not (np.isfinite(errors[k]) and np.isfinite(standard_errors[k])):
            if overflow == "inf":
                errors[k], standard_errors[k] = np.inf, np.nan
                relative[k], relative_se[k] = np.inf, np.nan
                continue
            raise ResultOverflowError(f"the squared score error overflows float64 at t = {t:.6g} (ts[{k}]): the score "
                             f"there is as large as {float(np.max(np.abs(s))):.3g}, too far from the truth to "
                             "measure in float64")
    if oracle:
        return errors, standard_errors, mean_square, relative, relative_se
    return errors, standard_errors


def _same_draw_ratio(e, q, t, k, overflow):
    """(mean(q), R = mean(e) / mean(q), its delta-method standard error) of the paired
    terms e_i, q_i >= 0 (n,) on the same points: se(R) = std(e - R q, ddof=1) / (sqrt(n)
    mean(q)), the linearised ratio's, here computed as the standard error of the mean of
    e / mean(q) - R q / mean(q). t, k: the time and its index, for the message. A mean(q)
    beyond float64 raises ResultOverflowError, or with overflow "inf" gives (inf, nan, nan)."""
    with np.errstate(over="ignore", invalid="ignore"):
        q_mean, _ = mean_se(q)
    if not np.isfinite(q_mean):
        if overflow == "inf":
            return np.inf, np.nan, np.nan
        raise ResultOverflowError(f"the oracle's mean square |grad log p_t|^2 overflows float64 at t = {t:.6g} "
                                  f"(ts[{k}]): no relative error can be formed there; use larger times")
    if not q_mean > 0:
        raise ValueError(f"the oracle's mean square |grad log p_t|^2 is 0 at t = {t:.6g} (ts[{k}]): no relative "
                         "error can be formed there")
    with np.errstate(over="ignore", invalid="ignore"):
        e_mean, _ = mean_se(e)
        ratio = e_mean / q_mean
        _, ratio_se = mean_se(e / q_mean - ratio * (q / q_mean))
    return q_mean, ratio, ratio_se
