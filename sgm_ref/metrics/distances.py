"""Sample-based distances between a sample x (n, d) and a target or a second sample y (m, d).

These bound or estimate the error of a sampler from below (DESIGN.md, "Certified
error"); each returns its value and, where one makes sense, a standard error.

histogram_tv         TV between the histogram of x and the target's exact bin masses (d <= 2)
sliced_wasserstein   SW_p over random directions, exact 1-D W_p per direction
mmd                  unbiased squared MMD, Gaussian kernel
energy_distance      unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'|
mean_error           |mean(x) - E_target X|
covariance_error     ||cov(x) - Cov_target||_F
component_weights    mixture weights recovered from x (soft and hard assignment)

Everything is computed in float64 (float32 input is widened, exactly), in NumPy: the
work is sorting, matrix products and reductions, which NumPy already does at speed.
"""

import math
import warnings
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from .._validation import check_count, check_points, check_real, check_rng
from ..targets import GaussianMixture

__all__ = [
    "Estimate",
    "MMD",
    "HistogramTV",
    "ComponentWeights",
    "histogram_tv",
    "sliced_wasserstein",
    "mmd",
    "energy_distance",
    "mean_error",
    "covariance_error",
    "component_weights",
]

# Numbers per temporary array (kernel blocks, projections): 2**20 float64 = 8 MB.
_BLOCK_ELEMENTS = 2**20
# Two Gauss-Legendre rules per sub-interval; their difference estimates the error of the
# coarser one, and the finer one is returned.
_GL_COARSE, _GL_FINE = 8, 12
# Accept the bin masses when sum_b |fine_b - coarse_b| is below this.
_MASS_TOL = 1e-11
# Largest number of density evaluations (per rule) before refinement gives up.
_MAX_NODES = 2**24
# Sub-intervals no wider than this many standard deviations of the narrowest mixture
# component: the 8-point rule is then exact to ~1e-14 per sub-interval.
_WIDTH_PER_STD = 1.5


class Estimate(NamedTuple):
    """A sample estimate and its standard error (unpacks as value, standard_error)."""

    value: float
    standard_error: float


class MMD(NamedTuple):
    """Unbiased squared MMD, its first-order standard error and the bandwidth h used."""

    value: float
    standard_error: float
    bandwidth: float


@dataclass(frozen=True)
class HistogramTV:
    """Outcome of histogram_tv.

    Attributes
    ----------
    value : float
        1/2 sum_b |phat_b - p_b| over the bins and the outside cell.
    expected_bias : float
        E[value] if x were n exact i.i.d. draws from the target: the floor of the
        plug-in estimate at this n (exact binomial mean absolute deviation, below).
    edges : tuple of ndarray
        Bin edges per axis, shapes (B_0 + 1,) [, (B_1 + 1,)].
    target_mass, sample_mass : ndarray, shape (B_0,) or (B_0, B_1)
        p_b (quadrature) and phat_b (fraction of x in the bin).
    target_outside, sample_outside : float
        Mass outside the range: 1 - sum_b p_b and the fraction of x outside.
    quadrature_error : float
        Estimated sum_b |error of p_b| (difference of two Gauss-Legendre rules; the
        returned masses come from the finer rule and are usually far more accurate).
    """

    value: float
    expected_bias: float
    edges: tuple = field(repr=False)
    target_mass: np.ndarray = field(repr=False)
    sample_mass: np.ndarray = field(repr=False)
    target_outside: float = 0.0
    sample_outside: float = 0.0
    quadrature_error: float = 0.0


@dataclass(frozen=True)
class ComponentWeights:
    """Outcome of component_weights; every array has shape (K,).

    soft: mean_i pi_k(x_i); hard: fraction of x with argmax_k pi_k(x_i) = k; each with
    its standard error std_i / sqrt(n).
    """

    soft: np.ndarray
    soft_standard_error: np.ndarray
    hard: np.ndarray
    hard_standard_error: np.ndarray


def _as_sample(x, name, d=None):
    """x checked as an (n, d) array with n >= 2, widened to float64."""
    x = check_points(x, name, d=d)
    if x.shape[0] < 2:
        raise ValueError(f"{name} must have at least 2 rows (points), got {x.shape[0]}")
    return x.astype(np.float64, copy=False)


# -- histogram TV ----------------------------------------------------------------------


def histogram_tv(x, target, bins=20, range=None):
    """Total variation between the histogram of x and the target's exact bin masses.

    TV = 1/2 sum_b |phat_b - p_b|, the sum running over the bins and one cell for
    everything outside the range (p_out = 1 - sum_b p_b). The target masses are

        p_b = int_bin exp(log p(u)) du

    by tensor-product Gauss-Legendre quadrature: each bin is cut into equal
    sub-intervals (no wider than 1.5 standard deviations of the narrowest component
    of a GaussianMixture), integrated with an 8- and a 12-point rule; sub-intervals
    are halved until the two rules agree to sum_b |difference| <= 1e-11, and the 12-point
    result is kept (accurate to ~1e-14 for Gaussian mixtures).

    The plug-in TV is biased upwards: even for an exact sample of the target
    E[TV] = 1/2 sum_b E|phat_b - p_b| > 0. That floor is returned as expected_bias,
    computed exactly with De Moivre's mean absolute deviation of a binomial,
    E|phat - p| = 2 k C(n, k) p^k (1 - p)^(n - k + 1) / n with k = floor(n p) + 1
    (about sqrt(2 p (1 - p) / (pi n)) when n p is large). A value well above it means a
    real difference; a value near it says the difference is below what n can resolve.

    Parameters
    ----------
    x : ndarray, shape (n, d), d in {1, 2}, n >= 2
    target : object with dim and log_prob(x (N, d)) -> (N,) (normalised), e.g.
        GaussianMixture; also mean() and covariance() when range is None.
    bins : int >= 1 or sequence of d ints >= 1
        Number of equal-width bins per axis.
    range : None, (low, high) for d = 1, or ((low_0, high_0), (low_1, high_1))
        None: target.mean() +- 6 sqrt(diag target.covariance()) per axis. It depends on
        the target only, so every sample compared with the same target is binned the
        same way; points beyond it land in the outside cell.

    Returns
    -------
    HistogramTV
        value, expected_bias, edges, target_mass, sample_mass, target_outside,
        sample_outside, quadrature_error.

    Raises
    ------
    ValueError
        If d is not 1 or 2, x has fewer than 2 rows or non-finite values, x and the
        target differ in dimension, bins or range are malformed.

    Warns
    -----
    RuntimeWarning
        If the quadrature did not reach its tolerance within 2**24 nodes per rule
        (quadrature_error then says how far it got).
    """
    bounds = range
    if not hasattr(target, "log_prob") or not hasattr(target, "dim"):
        raise ValueError("target must have dim and log_prob(x), for example a GaussianMixture")
    x = _as_sample(x, "x")
    n, d = x.shape
    if d not in (1, 2):
        raise ValueError(f"x must have d = 1 or 2 columns for histogram_tv, got d = {d}; "
                         "use sliced_wasserstein or mmd in higher dimension")
    if target.dim != d:
        raise ValueError(f"x must have shape (n, {target.dim}) to match the target, got {x.shape}")
    counts = _check_bins(bins, d)
    lows, highs = _check_range(bounds, target, d)
    edges = tuple(np.linspace(lo, hi, b + 1) for lo, hi, b in zip(lows, highs, counts))

    sample_counts = np.histogramdd(x, bins=edges)[0]
    sample_mass = sample_counts / n
    sample_outside = (n - sample_counts.sum()) / n
    target_mass, quad_err = _bin_masses(target, edges, _smallest_std(target))
    target_outside = 1.0 - float(target_mass.sum())
    value = 0.5 * (np.abs(sample_mass - target_mass).sum() + abs(sample_outside - target_outside))
    # rounding can leave the outside mass a few ulps below 0; the bias needs p in [0, 1]
    cells = np.append(target_mass.ravel(), target_outside)
    bias = 0.5 * sum(_binomial_mean_abs_dev(n, p) for p in np.clip(cells, 0.0, 1.0))
    return HistogramTV(float(value), float(bias), edges, target_mass, sample_mass,
                       target_outside, float(sample_outside), float(quad_err))


def _check_bins(bins, d):
    if isinstance(bins, (int, np.integer)) and not isinstance(bins, (bool, np.bool_)):
        return [check_count(bins, "bins")] * d
    try:
        seq = list(bins)
    except TypeError:
        raise ValueError(f"bins must be an integer >= 1 or a sequence of {d} integers, got {bins!r}") from None
    if len(seq) != d:
        raise ValueError(f"bins must be an integer or a sequence of d = {d} integers, got {bins!r}")
    return [check_count(b, "bins") for b in seq]


def _check_range(bounds, target, d):
    if bounds is None:
        if not (hasattr(target, "mean") and hasattr(target, "covariance")):
            raise ValueError("range is required when the target has no mean() and covariance()")
        mean = np.asarray(target.mean(), dtype=np.float64).reshape(d)
        std = np.sqrt(np.diag(np.asarray(target.covariance(), dtype=np.float64).reshape(d, d)))
        return mean - 6.0 * std, mean + 6.0 * std
    arr = np.asarray(bounds, dtype=object)
    if d == 1 and arr.shape == (2,):
        arr = arr[None, :]
    if arr.shape != (d, 2):
        want = "(low, high)" if d == 1 else "((low_0, high_0), (low_1, high_1))"
        raise ValueError(f"range must be None or {want}, got {bounds!r}")
    lows = np.array([check_real(v, "range") for v in arr[:, 0]])
    highs = np.array([check_real(v, "range") for v in arr[:, 1]])
    if np.any(lows >= highs):
        raise ValueError(f"range must have low < high on every axis, got {bounds!r}")
    return lows, highs


def _smallest_std(target):
    """Smallest component standard deviation of a GaussianMixture (None for other targets)."""
    if not isinstance(target, GaussianMixture):
        return None
    active = target.weights > 0
    if target.covariance_type == "identity":
        return 1.0
    if target.covariance_type == "diagonal":
        return float(np.sqrt(target.covariances[active].min()))
    return float(np.sqrt(np.linalg.eigvalsh(target.covariances[active])[:, 0].min()))


def _gauss_legendre(edges, parts, q):
    """Nodes and weights of a q-point rule on each of `parts` equal pieces of every bin."""
    t, w = np.polynomial.legendre.leggauss(q)
    cuts = np.linspace(edges[:-1], edges[1:], parts + 1, axis=1)  # (B, parts + 1)
    half = 0.5 * (cuts[:, 1:] - cuts[:, :-1])  # (B, parts)
    mid = 0.5 * (cuts[:, 1:] + cuts[:, :-1])
    nodes = mid[:, :, None] + half[:, :, None] * t
    return nodes.ravel(), (half[:, :, None] * w).ravel()


def _bin_masses_rule(target, edges, parts, q):
    """Tensor-product rule of q points on each sub-interval; masses of shape (B_0[, B_1])."""
    rules = [_gauss_legendre(e, s, q) for e, s in zip(edges, parts)]
    per_bin = [s * q for s in parts]
    if len(edges) == 1:
        (u, w), = rules
        dens = np.exp(target.log_prob(u[:, None]))
        return (w * dens).reshape(-1, per_bin[0]).sum(axis=1)
    (u0, w0), (u1, w1) = rules
    B0, B1 = len(edges[0]) - 1, len(edges[1]) - 1
    masses = np.empty((B0, B1))
    # whole bins of axis 0 at a time, so each block reduces to finished masses
    step = max(1, _BLOCK_ELEMENTS // (per_bin[0] * u1.size))
    for b in np.arange(0, B0, step):
        rows = slice(b * per_bin[0], min(b + step, B0) * per_bin[0])
        grid = np.empty((rows.stop - rows.start, u1.size, 2))
        grid[:, :, 0] = u0[rows, None]
        grid[:, :, 1] = u1[None, :]
        dens = np.exp(target.log_prob(grid.reshape(-1, 2))).reshape(grid.shape[:2])
        block = (w0[rows, None] * dens * w1[None, :]).reshape(-1, per_bin[0], B1, per_bin[1])
        masses[b:b + step] = block.sum(axis=(1, 3))
    return masses


def _bin_masses(target, edges, scale):
    widths = [e[1] - e[0] for e in edges]
    parts = [1 if scale is None else max(1, math.ceil(wd / (_WIDTH_PER_STD * scale))) for wd in widths]
    while max(parts) > 1 and _node_count(edges, parts) > _MAX_NODES:
        parts = [max(1, s // 2) for s in parts]
    while True:
        coarse = _bin_masses_rule(target, edges, parts, _GL_COARSE)
        fine = _bin_masses_rule(target, edges, parts, _GL_FINE)
        err = float(np.abs(fine - coarse).sum())
        if err <= _MASS_TOL:
            return fine, err
        if _node_count(edges, [2 * s for s in parts]) > _MAX_NODES:
            warnings.warn(f"histogram_tv: bin masses reached only ~{err:.1e} (sum of errors) within "
                          f"{_MAX_NODES} quadrature nodes; use fewer bins or a smaller range",
                          RuntimeWarning, stacklevel=3)
            return fine, err
        parts = [2 * s for s in parts]


def _node_count(edges, parts):
    return math.prod((len(e) - 1) * s * _GL_FINE for e, s in zip(edges, parts))


def _binomial_mean_abs_dev(n, p):
    """E|X/n - p| for X ~ Binomial(n, p), exactly (De Moivre)."""
    if p <= 0.0 or p >= 1.0:
        return 0.0
    k = math.floor(n * p) + 1
    if k > n:
        return 0.0
    log_mad = (math.log(2.0 * k) + math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)
               + k * math.log(p) + (n - k + 1) * math.log1p(-p))
    return math.exp(log_mad) / n


# -- sliced Wasserstein ----------------------------------------------------------------


def sliced_wasserstein(x, y, rng, n_projections=256, p=2):
    """Sliced Wasserstein-p distance between the empirical laws of x and y.

    SW_p = (mean_l W_p^p(theta_l . x, theta_l . y))^(1/p), with directions
    theta_l = g_l / |g_l|, g = rng.standard_normal((n_projections, d)). Per direction the
    1-D distance between the empirical laws of the projections is exact for any sizes:

        W_p^p = int_0^1 |F^-1(u) - G^-1(u)|^p du,

    and both quantile functions are constant between consecutive points of the merged
    grid {i/n} U {j/m}, so the integral is a finite sum over n + m - 1 pieces at most.

    The standard error is Monte-Carlo error over the directions only (x and y held
    fixed): s = std_l(W_p^p) / sqrt(L) for the mean M of W_p^p, carried to SW_p = M^(1/p)
    by the delta method, SE = s M^(1/p - 1) / p (0 when M = 0). It says nothing of the
    sampling error of x and y themselves (in d = 1 every direction is +-1 and it is 0).

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    y : ndarray, shape (m, d), m >= 2
    rng : numpy.random.Generator
    n_projections : int >= 2
    p : float >= 1
        Usually 1 or 2.

    Returns
    -------
    Estimate
        value SW_p, standard_error.

    Raises
    ------
    ValueError
        For fewer than 2 rows, a dimension mismatch, non-finite values, a bad rng,
        n_projections < 2 or p < 1.
    """
    x = _as_sample(x, "x")
    y = _as_sample(y, "y", d=x.shape[1])
    rng = check_rng(rng)
    L = check_count(n_projections, "n_projections", minimum=2)
    p = check_real(p, "p", low=1.0)
    n, m = x.shape[0], y.shape[0]
    theta = rng.standard_normal((L, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)

    # the merged grid in units of 1/(n m), so that it is exact integer arithmetic
    grid = np.union1d(np.arange(n + 1, dtype=np.int64) * m, np.arange(m + 1, dtype=np.int64) * n)
    du = np.diff(grid) / (n * m)
    twice_mid = grid[:-1] + grid[1:]
    ix, iy = twice_mid // (2 * m), twice_mid // (2 * n)

    wpp = np.empty(L)
    step = max(1, _BLOCK_ELEMENTS // (n + m + du.size))
    for start in np.arange(0, L, step):
        block = theta[start:start + step]
        px = np.sort(x @ block.T, axis=0)
        py = np.sort(y @ block.T, axis=0)
        gap = np.abs(px[ix] - py[iy])
        wpp[start:start + step] = du @ (gap if p == 1.0 else gap**p)

    M = float(wpp.mean())
    s = float(wpp.std(ddof=1) / np.sqrt(L))
    value = M ** (1.0 / p)
    se = 0.0 if M == 0.0 else s * M ** (1.0 / p - 1.0) / p
    return Estimate(value, se)


# -- kernel two-sample statistics --------------------------------------------------------


def mmd(x, y, bandwidth=None):
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel.

    k(a, b) = exp(-|a - b|^2 / (2 h^2)),
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m),

    an unbiased U-statistic, so it can be negative when the laws are close. Computed in
    row blocks: memory O(block * max(n, m)), time O((n + m)^2 d).

    Standard error (first order, Hoeffding): with f_i = mean_{j != i} k(x_i, x_j) -
    mean_j k(x_i, y_j) and g_j = mean_{i != j} k(y_j, y_i) - mean_i k(x_i, y_j),
    SE = 2 sqrt(var(f) / n + var(g) / m). It is calibrated when the laws differ; when
    they are equal the statistic is degenerate (fluctuations O(1/n), not O(1/sqrt n))
    and this SE gives only the order of magnitude.

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    y : ndarray, shape (m, d), m >= 2
    bandwidth : float > 0 or None
        h. None: the median heuristic, h = median |a - b| over distinct pairs of a
        deterministic subsample, the first min(500, n) rows of x and the first
        min(500, m) rows of y (at most 1000 points, so it costs little and does not
        depend on any random draw).

    Returns
    -------
    MMD
        value MMD^2_u, standard_error, bandwidth h.

    Raises
    ------
    ValueError
        For fewer than 2 rows, a dimension mismatch, non-finite values, a bandwidth
        that is not a positive number, or a median heuristic of 0 (pass bandwidth).

    References
    ----------
    Gretton et al., "A kernel two-sample test", JMLR 13 (2012), Lemma 6 and Section 5.
    """
    x = _as_sample(x, "x")
    y = _as_sample(y, "y", d=x.shape[1])
    if bandwidth is None:
        h = _median_distance(np.concatenate([x[:500], y[:500]]))
        if h == 0.0:
            raise ValueError("bandwidth: the median heuristic gave 0 (most points coincide); "
                             "pass bandwidth explicitly")
    else:
        h = check_real(bandwidth, "bandwidth", low=0.0, low_open=True)
    scale = -0.5 / (h * h)
    value, se = _two_sample_u(x, y, lambda d2: np.exp(scale * d2))
    return MMD(value, se, h)


def energy_distance(x, y):
    """Unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'|.

    E_u = 2 sum_{i, j} |x_i - y_j| / (n m) - sum_{i != j} |x_i - x_j| / (n (n-1))
          - sum_{i != j} |y_i - y_j| / (m (m-1)),

    the U-statistic, unbiased (can be negative when the laws are close). It is the
    squared MMD of the kernel k(a, b) = -|a - b|, so it shares mmd's blocked computation
    and first-order standard error (calibrated when the laws differ, only the order of
    magnitude when they are equal). scipy.stats.energy_distance (1-D) is the square
    root of the V-statistic version, whose within-sample terms carry (n-1)/n, (m-1)/m.

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    y : ndarray, shape (m, d), m >= 2

    Returns
    -------
    Estimate
        value E_u, standard_error.

    Raises
    ------
    ValueError
        For fewer than 2 rows, a dimension mismatch or non-finite values.

    References
    ----------
    Szekely & Rizzo, "Energy statistics", J. Stat. Plann. Inference 143 (2013).
    """
    x = _as_sample(x, "x")
    y = _as_sample(y, "y", d=x.shape[1])
    value, se = _two_sample_u(x, y, lambda d2: -np.sqrt(d2))
    return Estimate(value, se)


def _median_distance(z):
    z = z - z.mean(axis=0)
    z2 = np.einsum("ij,ij->i", z, z)
    d2 = _sq_dists(z, z2, z, z2)
    return float(np.median(np.sqrt(d2[np.triu_indices(z.shape[0], k=1)])))


def _sq_dists(a, a2, b, b2):
    """|a_i - b_j|^2 (rows of a against rows of b); a2, b2 the squared row norms."""
    d2 = a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    # |a|^2 + |b|^2 - 2 a.b loses about d eps (|a|^2 + |b|^2) to cancellation. Pairs closer
    # than 1e-3 of their norms (rare after centring) are recomputed from differences, so
    # every d2 keeps a relative error below ~d 1e-10 and duplicates give exactly 0.
    close = d2 <= 1e-6 * (a2[:, None] + b2[None, :])
    i, j = np.nonzero(close)
    if i.size:
        diff = a[i] - b[j]
        d2[i, j] = np.einsum("ij,ij->i", diff, diff)
    return d2


def _two_sample_u(x, y, kernel):
    """(MMD^2_u, first-order SE) for kernel(squared distance), in row blocks."""
    n, m = x.shape[0], y.shape[0]
    # centred on the pooled mean, so |a|^2 + |b|^2 - 2 a.b cancels as little as possible
    c = (x.sum(axis=0) + y.sum(axis=0)) / (n + m)
    x, y = x - c, y - c
    x2, y2 = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    row_xx, row_xy = np.empty(n), np.empty(n)
    row_yy, col_xy = np.empty(m), np.zeros(m)
    step = max(1, _BLOCK_ELEMENTS // max(n, m))
    for start in np.arange(0, n, step):
        b = slice(start, min(start + step, n))
        K = kernel(_sq_dists(x[b], x2[b], x, x2))
        K[np.arange(K.shape[0]), np.arange(b.start, b.stop)] = 0.0  # i = j left out
        row_xx[b] = K.sum(axis=1)
        K = kernel(_sq_dists(x[b], x2[b], y, y2))
        row_xy[b] = K.sum(axis=1)
        col_xy += K.sum(axis=0)
    for start in np.arange(0, m, step):
        b = slice(start, min(start + step, m))
        K = kernel(_sq_dists(y[b], y2[b], y, y2))
        K[np.arange(K.shape[0]), np.arange(b.start, b.stop)] = 0.0
        row_yy[b] = K.sum(axis=1)
    value = row_xx.sum() / (n * (n - 1)) + row_yy.sum() / (m * (m - 1)) - 2.0 * row_xy.sum() / (n * m)
    f = row_xx / (n - 1) - row_xy / m
    g = row_yy / (m - 1) - col_xy / n
    se = 2.0 * np.sqrt(f.var(ddof=1) / n + g.var(ddof=1) / m)
    return float(value), float(se)


# -- moments ---------------------------------------------------------------------------------


def _target_moment(target, name, shape):
    if not hasattr(target, name):
        raise ValueError(f"target must have a {name}() method, for example a GaussianMixture")
    value = np.asarray(getattr(target, name)(), dtype=np.float64)
    if value.shape != shape:
        raise ValueError(f"target.{name}() must have shape {shape} to match x, got {value.shape}")
    return value


def mean_error(x, target):
    """Euclidean error of the sample mean, |xbar - m|, m = target.mean().

    Standard error by the delta method: with u = (xbar - m) / |xbar - m| and S the
    sample covariance, SE = sqrt(u^T S u / n). It is valid when the error is large
    compared with sqrt(trace(S) / n); below that the value is dominated by noise (for
    an exact sample E|xbar - m|^2 = trace(Cov) / n, the floor to compare with). When the
    value is exactly 0 the SE returned is that floor, sqrt(trace(S) / n).

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    target : object with mean() -> (d,), e.g. GaussianMixture

    Returns
    -------
    Estimate
        value |xbar - m|, standard_error.
    """
    x = _as_sample(x, "x")
    n, d = x.shape
    diff = x.mean(axis=0) - _target_moment(target, "mean", (d,))
    value = float(np.linalg.norm(diff))
    centred = x - x.mean(axis=0)
    if value == 0.0:
        return Estimate(0.0, float(np.sqrt(np.sum(centred**2) / ((n - 1) * n))))
    proj = centred @ (diff / value)
    return Estimate(value, float(proj.std(ddof=1) / np.sqrt(n)))


def covariance_error(x, target):
    """Frobenius error of the sample covariance, ||S - Sigma||_F, Sigma = target.covariance().

    S = sum_i c_i c_i^T / (n - 1), c_i = x_i - xbar (unbiased). Standard error by the
    delta method: with D = (S - Sigma) / ||S - Sigma||_F, the value moves to first order
    as tr(D S), the mean of psi_i = c_i^T D c_i, so SE = std_i(psi_i) / sqrt(n). Like
    mean_error it is valid when the error is large compared with the noise floor
    sqrt(mean_i ||c_i c_i^T - S||_F^2 / n), the SE returned when the value is exactly 0.

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    target : object with covariance() -> (d, d), e.g. GaussianMixture

    Returns
    -------
    Estimate
        value ||S - Sigma||_F, standard_error.
    """
    x = _as_sample(x, "x")
    n, d = x.shape
    sigma = _target_moment(target, "covariance", (d, d))
    c = x - x.mean(axis=0)
    S = c.T @ c / (n - 1)
    diff = S - sigma
    value = float(np.linalg.norm(diff))
    if value == 0.0:
        outer = c[:, :, None] * c[:, None, :] - S
        return Estimate(0.0, float(np.sqrt(np.mean(np.sum(outer**2, axis=(1, 2))) / n)))
    psi = np.einsum("ij,jk,ik->i", c, diff / value, c)
    return Estimate(value, float(psi.std(ddof=1) / np.sqrt(n)))


# -- mixture weights -----------------------------------------------------------------------


def component_weights(x, mixture):
    """Mixture weights recovered from a sample, by soft and by hard assignment.

    pi_k(x) = w_k N_k(x) / sum_j w_j N_j(x) (log-sum-exp of log w_k + log N_k(x));
    soft_k = mean_i pi_k(x_i), hard_k = mean_i 1[argmax_j pi_j(x_i) = k] (ties go to the
    lower k). For an exact sample of the mixture E[pi_k(X)] = w_k, so soft is unbiased;
    hard is biased towards the larger components where they overlap. Standard errors
    std_i / sqrt(n) (ddof = 1) of the averaged quantity. Zero-weight components get 0.

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    mixture : GaussianMixture

    Returns
    -------
    ComponentWeights
        soft, soft_standard_error, hard, hard_standard_error, each shape (K,).
    """
    if not isinstance(mixture, GaussianMixture):
        raise ValueError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
    x = _as_sample(x, "x", d=mixture.dim)
    n, K = x.shape[0], mixture.n_components
    log_joint = np.full((n, K), -np.inf)
    for k in np.flatnonzero(mixture.weights > 0):
        cov = None if mixture.covariances is None else mixture.covariances[k:k + 1]
        single = GaussianMixture([1.0], mixture.means[k:k + 1], cov)
        log_joint[:, k] = np.log(mixture.weights[k]) + single.log_prob(x)
    top = log_joint.max(axis=1, keepdims=True)
    resp = np.exp(log_joint - top)
    resp /= resp.sum(axis=1, keepdims=True)
    hard = np.zeros((n, K))
    hard[np.arange(n), resp.argmax(axis=1)] = 1.0
    root_n = np.sqrt(n)
    return ComponentWeights(resp.mean(axis=0), resp.std(axis=0, ddof=1) / root_n,
                            hard.mean(axis=0), hard.std(axis=0, ddof=1) / root_n)
