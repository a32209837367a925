"""Certified upper bound on TV(p_0, law of a sampler's output), by Girsanov and Pinsker.

The forward process dX = f(t) X dt + g(t) dW (any process of sgm_ref.processes) has the
reverse SDE dY = [-f Y + g^2 grad log p_t(Y)] dtau + g dB. Let P be its law on [t0, T]
started from p_T, and Q the law of sgm_ref's discretised sampler started from its start
law N(0, v_T I) (v_T = 1 on a variance-preserving process, sigma_T^2 on any other:
sgm_ref.samplers.start_variance). Over step k (t from t_k down to t_{k+1}) the sampler is
the continuous process whose drift is frozen at the step's start (y_k = Y_{t_k},
s_k = s(y_k, t_k)) and whose diffusion is the true g(t) (it takes int g^2 as its noise):

    Euler–Maruyama:          drift -f(t) y_k + g(t)^2 s_k
    exponential integrator:  drift -f(t) Y_t + g(t)^2 s_k      (linear part exact)

Both have P's diffusion coefficient, so Girsanov's theorem and the chain rule of KL give,
writing each drift difference as g(t)^2 Delta_k(t),

    KL(p_t0 || q) <= KL(P || Q) = KL(p_T || N(0, v_T I))
                       + 1/2 sum_k int_{t_{k+1}}^{t_k} g(t)^2 E |Delta_k(t)|^2 dt,

    Euler–Maruyama:          Delta_k(t) = grad log p_t(X_t) - s(X_{t_k}, t_k) - (f(t) / g(t)^2) (X_t - X_{t_k})
    exponential integrator:  Delta_k(t) = grad log p_t(X_t) - s(X_{t_k}, t_k)
    residual exponential:    Delta_k(t) = grad log p_t(X_t) + X_t - r(X_{t_k}, t_k)
                                        = grad log p_t(X_t) - s(X_{t_k}, t_k) + (X_t - X_{t_k})

(the residual scheme's drift on the step is beta(t) (-y / 2 + r_k), r = s + y, against the
true beta(t) (y / 2 + grad log p_t(y)): their difference over the diffusion coefficient
sqrt(beta) is sqrt(beta) (y + grad log p_t(y) - r_k), which is small when grad log p_t is
close to -y)

since [-f X_t + g^2 grad log p_t] - [-f X_{t_k} + g^2 s_k] = g^2 [grad log p_t - s_k
- (f / g^2)(X_t - X_{t_k})] and, for the exponential integrator, the -f Y terms agree. On a
variance-preserving process f / g^2 = -1/2, the Euler–Maruyama term is
+(X_t - X_{t_k}) / 2; on VE and EDM f = 0 and the two schemes coincide.

Here (X_t, X_{t_k}), t < t_k, is a pair from the forward process: under P the reverse
path has the forward process's law. Both points are drawn exactly (X_t from p_t, then
X_{t_k} from the forward transition), the oracle gives grad log p_t, and t is uniform on
the step, so the integral is a plain Monte-Carlo average with a standard error, in any
dimension, for the actual grid and scheme. (On VPCosine and FlowMatching, whose g^2 grows
like 2 / (1 - t) toward t_max, and on DDPM schedules with a step whose beta is near 1 (the
capped cosine), t is drawn with density g^2 / int g^2 on the step instead and each draw
weighs int g^2: drawn uniformly, the few draws nearest t_max carried the step, and with
the CLI's T = t_max the standard error understated the spread, 38% of runs more than 3
standard errors below the integral.) Then

    TV(p_0, q) <= TV(p_0, p_t0) + TV(p_t0, q) <= TV(p_0, p_t0) + sqrt(KL(P || Q) / 2).

KL(p_T || N(0, v_T I)) = E_{p_T}[log p_T - log N(0, v_T I)] and TV(p_0, p_t0) =
E_{p_0}[(1 - p_t0 / p_0)_+] are Monte-Carlo averages with the exact log-densities; p_0 is
the target itself (under VE, whose t = 0 already carries sigma_min of noise, the data
before that noise).
What is certified. The inequalities above hold for the expectations: KL(P || Q) is an
expectation over exact forward paths, and kl, the value returned, is an unbiased
Monte-Carlo estimate of it with its standard error kl_se. So E[kl] >= KL(p_t0 || q) is
certain; a single kl is not, and tv is Pinsker's bound evaluated at that estimate. When
the bound is tight, kl's distribution is skewed: each term is a mean of squares
|Delta|^2, a few large draws carry it, and a run that misses them comes out low with a
standard error that is low too, so its lower tail is heavier than a normal's. Measured
(VE, 1-D N(1.5, 0.3), t0 = 1e-3, T = 1, 2 geometric Euler–Maruyama steps, the exact
score, n = 256; 2000 seeds): KL(p_t0 || q) = 4.0137 in closed form, the mean of kl
4.021 ± 0.012 (the bound is tight), its median 3.997; kl + 2 kl_se < KL(p_t0 || q) in
5.9% of seeds (a normal law: 2.3%), kl + 3 kl_se < KL in 1.4% (0.13%). kl_upper =
kl + 3 kl_se is the one-sided upper value to quote, with tv_upper = TV(p_0, p_t0)
+ 3 se + sqrt(kl_upper / 2): in that tight case kl_upper covers KL(p_t0 || q) in 98.6% of
seeds at n = 256 (99.0% with 3 steps), 97.4% at n = 64, 99.75% at n = 2048; where the
bound is loose (20 steps: kl 3.19 against KL 0.76) in every seed.

Cole & Lu (2024) bound the sampler's error by this route (the OU process, Girsanov, then
Pinsker); Chen et al. (2023, "Sampling is as easy as learning the score") make the same
Girsanov argument for Euler–Maruyama and the exponential integrator. Here every term is
estimated for the given grid instead of bounded. See docs/design.md, "Certified error".
"""

from dataclasses import dataclass

import numpy as np

from .._validation import (ResultOverflowError, call_score, check_count, check_float_dtype, check_overflow_policy,
                           check_rng, fits_in_memory, mean_se)
from ..processes import OU, VariancePreserving, check_process
from ..samplers import _check_time_range, check_grid, check_model_dtype, start_variance, time_grid
from .score_error import _points_in, _times_with_g2_density

__all__ = ["tv_upper_bound", "TVBound"]

_BLOCK_ROWS = 2**15
_PATH_METHODS = ("euler_maruyama", "exponential", "residual_exponential")
LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class TVBound:
    """Every term of the certified bound, each with its Monte-Carlo standard error.

    kl and tv are unbiased Monte-Carlo estimates (tv: Pinsker's bound at the estimate),
    certified in expectation; kl_upper and tv_upper are the one-sided upper values with
    3 standard errors on each Monte-Carlo term, whose coverage the module docstring
    measures ("What is certified").
    """

    tv: float                     # TV(p_0, p_t0) + sqrt(kl / 2), capped at 1
    tv_se: float                  # 0 when capped: the trivial bound is exact
    kl: float                     # max(kl_prior, 0) + kl_path >= KL(p_t0 || q) (KL(p_T || .) >= 0)
    kl_se: float
    kl_prior: float               # KL(p_T || N(0, v_T I)), the sampler's start law
    kl_prior_se: float
    kl_path: float                # the Girsanov drift-mismatch integral
    kl_path_se: float
    tv_early_stopping: float      # TV(p_0, p_t0)
    tv_early_stopping_se: float
    kl_path_per_step: np.ndarray  # contribution of each step, shape (N,)
    grid: np.ndarray              # the grid used, shape (N + 1,)
    method: str
    kl_upper: float = np.inf      # kl + 3 kl_se: the one-sided upper value of KL(p_t0 || q)
    tv_upper: float = 1.0         # min(1, tv_early_stopping + 3 tv_early_stopping_se + sqrt(kl_upper / 2))
    # the rounding kl_prior may carry beside its Monte-Carlo noise: each row's log ratio is a
    # difference of terms of size ~ d (log p_T, |x|^2 / 2 v_T, d log(2 pi v_T) / 2), so where
    # p_T is N(0, v_T I) to float64 (large T) kl_prior is that rounding, biased, not noise
    # (-1.8e-17 +- 3.6e-18 for the ring at T = 50: "5 standard errors below 0"). 8 eps times the
    # rows' mean term size.
    kl_prior_rounding: float = 0.0

    def as_dict(self):
        """JSON-ready: every scalar term (the per-step array and the grid as lists)."""
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        out["kl_path_per_step"] = self.kl_path_per_step.tolist()
        out["grid"] = self.grid.tolist()
        return out


def _explicit_grid(grid, T, t0, n_steps, process):
    """A sampler's grid given as times, checked (check_grid) and refused unless it runs from T
    to t0 (rtol 1e-12) in n_steps steps (when n_steps is given); returned as checked."""
    grid = check_grid(grid, process)
    if n_steps is not None and check_count(n_steps, "n_steps") != grid.size - 1:
        raise ValueError(f"n_steps={n_steps} but the grid has {grid.size - 1} steps; "
                         "leave n_steps out with an explicit grid")
    if not (np.isclose(grid[0], T, rtol=1e-12, atol=0) and np.isclose(grid[-1], t0, rtol=1e-12, atol=0)):
        raise ValueError(f"grid must run from T = {T} to t0 = {t0}, got {grid[0]} to {grid[-1]}")
    return grid


def tv_upper_bound(score, target, process, t0, T, grid, method, n, rng, *, n_steps=None, n_aux=None,
                   dtype=np.float64, overflow="raise"):
    """Certified upper bound on TV(p_0, q), q the law of a sampler's output (module docstring).

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
        The score the sampler uses (a trained model, the oracle, another library's).
    target : object with sample(n, rng), score(x, t, process) and log_prob(x, t, process)
        The true p_0 with an exact score and log p_t, e.g. a GaussianMixture (a target
        marked monte_carlo, TiltedGaussian, is refused).
    process : any process of sgm_ref.processes
    t0, T : float
        Early-stopping time and horizon, 0 < t0 < T <= process.t_max.
    grid : "uniform", "geometric" or ndarray of shape (N + 1,)
        The sampler's time grid (decreasing from T to t0); a name needs n_steps.
    method : {"euler_maruyama", "exponential", "residual_exponential"}
        The scheme of sgm_ref.samplers whose drift is compared (the probability-flow ODE
        has no Girsanov bound; nor has the textbook replay sgm_ref.replays.euler_maruyama,
        whose step noise g(t_k)^2 h_k is not int g^2). "residual_exponential" runs on the
        variance-preserving processes only, as in sgm_ref.samplers.
    n : int >= 2
        Monte-Carlo pairs per step.
    rng : numpy.random.Generator
    n_steps : int, needed when grid is a name; with an explicit grid, if given, its step count.
    n_aux : int, optional
        Points for KL(p_T || N(0, v_T I)) and TV(p_0, p_t0); default 16 n.
    dtype : float64 or float32
        The dtype the score is called with (every term is computed in float64): float32
        for a float32 model (a ScoreModel of a float32 network, refused up front with
        another dtype, or a score returning float32).
    overflow : {"raise", "inf"}
        A path term beyond the float64 range (a score far from the truth) raises
        ResultOverflowError, or with "inf" gives kl_path = inf: the bound is then the
        trivial TV <= 1 and the other terms are measured as usual.

    Returns
    -------
    TVBound
        Unbiased Monte-Carlo estimates of every term with their standard errors; the
        certified inequality holds for their expectations, and kl_upper = kl + 3 kl_se,
        tv_upper are the one-sided upper values (module docstring, "What is certified").

    Raises
    ------
    ValueError
        For bad arguments (a target with monte_carlo = True; a ScoreModel whose dtype is
        not dtype, named as dtype before anything is drawn), points beyond the range of
        dtype, a score that fails or returns non-finite values, or a term beyond the
        float64 range (the message names the term and the step).
    """
    process = check_process(process, variance_preserving=False)
    if getattr(target, "monte_carlo", False):  # TiltedGaussian: the bound would certify its estimates' errors away
        raise ValueError(f"target {type(target).__name__} has a Monte-Carlo score and log p_t (monte_carlo = True): "
                         "the bound would take those estimates for the truth and certify nothing; it needs a target "
                         "with exact ones (GaussianMixture, ProductMixture)")
    overflow = check_overflow_policy(overflow)
    t0, T = _check_time_range(t0, T, process)
    if method not in _PATH_METHODS:
        raise ValueError(f"method must be one of {', '.join(repr(m) for m in _PATH_METHODS)}, got {method!r}")
    if method == "residual_exponential" and not isinstance(process, VariancePreserving):
        raise ValueError(f"method 'residual_exponential' needs a variance-preserving process (OU, VP, VPCosine, "
                         f"DDPM), got {process!r}: sgm_ref.samplers runs it on those only")
    n = check_count(n, "n", minimum=2)
    n_aux = check_count(16 * n if n_aux is None else n_aux, "n_aux", minimum=2)
    rng = check_rng(rng)
    dtype = check_float_dtype(dtype)
    # a ScoreModel of another dtype: named as dtype here, not by the model as "x" in the path term
    check_model_dtype(score, dtype)
    if isinstance(grid, str):
        if n_steps is None:
            raise ValueError("a named grid needs n_steps")
        grid = time_grid(T, t0, n_steps, grid, process)
    else:
        grid = _explicit_grid(grid, T, t0, n_steps, process)

    d = getattr(target, "dim", 1)
    with np.errstate(over="ignore", invalid="ignore"), fits_in_memory("n", n, max(n, 2**15) * d, per_item=8 * 6):
        per_step, per_step_se = _path_term(score, target, process, grid, method, n, rng, dtype)
    bad = ~(np.isfinite(per_step) & np.isfinite(per_step_se))
    if np.any(bad) and overflow == "raise":
        k = int(np.argmax(bad))
        raise ResultOverflowError(f"the path term of the bound overflows float64 at step {k} (t = {float(grid[k]):.6g}): "
                         "the step's mean of 1/2 g^2 |Delta|^2 (the squared drift mismatch) or its standard error is "
                         "beyond the float64 range; the score is too far from the truth for a bound")
    if np.any(bad):
        kl_path, kl_path_se = np.inf, np.nan
    else:
        kl_path = float(per_step.sum())
        with np.errstate(over="ignore"):
            kl_path_se = float(np.sqrt(np.sum(per_step_se**2)))
        if not np.isfinite(kl_path_se):  # the squares overflowed: the same root for se / c, c a power of two
            c = float(np.ldexp(1.0, int(np.frexp(per_step_se.max())[1])))
            kl_path_se = c * float(np.sqrt(np.sum((per_step_se / c) ** 2)))

    with fits_in_memory("n_aux", n_aux, n_aux * d, per_item=8 * 4):
        xT, _ = process.perturb(target.sample(n_aux, rng), T, rng)
        log_p = target.log_prob(xT, T, process)
        log_ratio = _log_ratio_to_start(log_p, xT, process, T)
        kl_prior_rounding = _rounding_of_ratio(log_p, xT, process, T)
    kl_prior, kl_prior_se = _mean_se(log_ratio)

    # p_0 is the data: under VE (sigma_0 = sigma_min > 0) the law at t = 0 is already noised
    data_process = process if process.sigma(process.t_min) == 0 else OU()
    with fits_in_memory("n_aux", n_aux, n_aux * d, per_item=8 * 4):
        x0 = target.sample(n_aux, rng)
        log_ratio = target.log_prob(x0, t0, process) - target.log_prob(x0, 0.0, data_process)
    # (1 - p_t0 / p_0)_+ = -expm1(min(log ratio, 0)): no cancellation near ratio 1, no overflow
    tv_es, tv_es_se = _mean_se(-np.expm1(np.minimum(log_ratio, 0.0)))

    # KL(p_T || start law) >= 0; a negative Monte-Carlo average only means it is below its error
    kl = max(kl_prior, 0.0) + kl_path
    kl_se = float(np.hypot(kl_prior_se, kl_path_se))
    root = np.sqrt(kl / 2.0)
    tv = min(1.0, tv_es + root)
    # capped at the trivial bound TV <= 1, the value no longer depends on the draws
    tv_se = 0.0 if tv == 1.0 else float(np.hypot(tv_es_se, kl_se / (4.0 * root) if root > 0 else 0.0))
    # one-sided upper values, 3 standard errors on each Monte-Carlo term (an overflowed path
    # term has kl = inf and kl_se = nan: kl_upper is inf, the bound the trivial TV <= 1)
    kl_upper = float(kl + 3.0 * kl_se) if np.isfinite(kl) else np.inf
    tv_upper = float(min(1.0, tv_es + 3.0 * tv_es_se + np.sqrt(kl_upper / 2.0)))
    return TVBound(tv=tv, tv_se=tv_se, kl=kl, kl_se=kl_se, kl_prior=kl_prior, kl_prior_se=kl_prior_se,
                   kl_path=kl_path, kl_path_se=kl_path_se, tv_early_stopping=tv_es,
                   tv_early_stopping_se=tv_es_se, kl_path_per_step=per_step, grid=grid, method=method,
                   kl_upper=kl_upper, tv_upper=tv_upper, kl_prior_rounding=kl_prior_rounding)


def _mean_se(values):
    mean, se = mean_se(values)
    if not (np.isfinite(mean) and np.isfinite(se)):
        raise ValueError("a Monte-Carlo term of the bound (KL(p_T || N(0, v_T I)) or TV(p_0, p_t0)) overflows "
                         "float64: the target's log-densities are beyond its range; rescale the target")
    return mean, se


def _log_ratio_to_start(log_p, x, process, T):
    """log p_T(x) - log N(x; 0, v_T I) per row, v_T the variance of the sampler's start law."""
    d = x.shape[1]
    if isinstance(process, VariancePreserving):  # v_T = 1
        return log_p + 0.5 * np.sum(x**2, axis=1) + 0.5 * d * LOG_2PI
    v = start_variance(process, T)
    return log_p + 0.5 * np.sum(x**2, axis=1) / v + 0.5 * d * (LOG_2PI + np.log(v))


def _rounding_of_ratio(log_p, x, process, T):
    """8 eps times the mean size of the terms _log_ratio_to_start adds per row: the rounding its
    mean may carry (TVBound.kl_prior_rounding)."""
    d = x.shape[1]
    v = 1.0 if isinstance(process, VariancePreserving) else start_variance(process, T)
    with np.errstate(over="ignore"):
        size = np.abs(log_p) + 0.5 * np.sum(x**2, axis=1) / v + 0.5 * d * abs(LOG_2PI + np.log(v))
    return float(8.0 * np.finfo(np.float64).eps * np.mean(size))


def _path_term(score, target, process, grid, method, n, rng, dtype):
    """Per-step 1/2 int g^2 E|Delta|^2 dt and its standard error, n pairs per step."""
    from ..replays._common import transition  # lazily: replays imports sgm_ref.metrics
    N = grid.size - 1
    h = grid[:-1] - grid[1:]
    mean = np.empty(N)
    se = np.empty(N)
    rows_per_block = max(n, (_BLOCK_ROWS // n) * n)
    steps_per_block = rows_per_block // n
    for first in range(0, N, steps_per_block):
        k = np.repeat(np.arange(first, min(first + steps_per_block, N)), n)
        if process._times_by_g2:  # t with density g^2 / G_k on the step: the weight G_k is bounded
            t, weight = _times_with_g2_density(process, grid[k + 1], grid[k], rng.random(k.size))
        else:
            t = grid[k + 1] + h[k] * rng.random(k.size)
            weight = h[k] * process.g2(t)
        x0 = target.sample(k.size, rng)
        xt, _ = process.perturb(x0, t, rng)
        # forward transition from t up to the grid point t_k: x_grid = r xt + sqrt(v) z
        decay, variance = transition(process, grid[k], t)
        x_grid = decay[:, None] * xt + np.sqrt(variance)[:, None] * rng.standard_normal(xt.shape)
        s = call_score(score, _points_in(x_grid, dtype, grid[k], "a smaller T"), grid[k],
                       " in the path term").astype(np.float64)
        delta = target.score(xt, t, process) - s
        if method == "euler_maruyama":
            delta -= process._f_over_g2(t)[:, None] * (xt - x_grid)
        elif method == "residual_exponential":  # variance-preserving only: g^2 = beta
            delta += xt - x_grid
        e = (0.5 * weight * np.sum(delta**2, axis=1)).reshape(-1, n)  # (steps, n)
        steps = slice(first, first + e.shape[0])
        with np.errstate(over="ignore", invalid="ignore"):
            mean[steps] = e.mean(axis=1)
            se[steps] = e.std(axis=1, ddof=1) / np.sqrt(n)
        # a step whose squares behind the standard error overflow (terms of 1e280 gave se = inf,
        # read as an overflow of the term itself): mean_se rescales it by a power of two
        for i in np.flatnonzero(~(np.isfinite(mean[steps]) & np.isfinite(se[steps]))):
            mean[first + i], se[first + i] = mean_se(e[i])
    return mean, se
