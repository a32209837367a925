"""Sample-based distances between a sample x (n, d) and a target or a second sample y (m, d).

These bound or estimate the error of a sampler from below (docs/design.md, "Certified
error"); each returns its value and, where one makes sense, a standard error. The
histogram TV against exact bin masses is in sgm_ref.metrics.histogram.

sliced_wasserstein   SW_p over random directions, exact 1-D W_p per direction
mmd                  unbiased squared MMD, Gaussian kernel (Gretton et al. 2012); paired=True
                     for samples drawn in pairs (x_i, y_i)
energy_distance      unbiased energy distance 2 E|X - Y| - E|X - X'| - E|Y - Y'|
                     (Székely & Rizzo 2013)
mean_error           |mean(x) - E_target X|
covariance_error     ||cov(x) - Cov_target||_F
component_weights    mixture weights recovered from x (soft and hard assignment)

Everything is computed in float64 (float32 input is widened, exactly), in NumPy: the
work is sorting, matrix products and reductions, which NumPy already does at speed.
"""

from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from .._validation import check_count, check_points, check_real, check_rng, fits_in_memory, mean_se
from ..targets import GaussianMixture

__all__ = [
    "Estimate",
    "MMD",
    "ComponentWeights",
    "sliced_wasserstein",
    "mmd",
    "energy_distance",
    "mean_error",
    "covariance_error",
    "component_weights",
]

# Numbers per temporary array (kernel blocks, projections): 2**20 float64 = 8 MB.
_BLOCK_ELEMENTS = 2**20

# Below this mean of W_p^p the squared deviations behind sliced_wasserstein's standard
# error reach the subnormal range (W_p^p of 1e-300 gave a standard error of exactly 0):
# the computation then runs in logarithms. 2^-400 ~ 3.9e-121 keeps the squares above 2^-800.
_SMALLEST_MEAN_WPP = 2.0**-400

# log 2: Gaussian-kernel values above 1/2 are summed as k - 1 (_gaussian_kernel).
_LOG_2 = float(np.log(2.0))

# Smallest Gaussian-kernel bandwidth h: 1 / (2 h^2) must be a finite float64.
_MIN_BANDWIDTH = 1e-150


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
    """x checked as an (n, d) array with n >= 2 and d >= 1, widened to float64."""
    x = check_points(x, name, d=d)
    if x.shape[0] < 2:
        raise ValueError(f"{name} must have at least 2 rows (points), got {x.shape[0]}")
    if x.shape[1] == 0:  # numpy's "zero-size array to reduction operation maximum" otherwise
        raise ValueError(f"{name} must have at least 1 column (coordinate), got shape {x.shape}")
    return x.astype(np.float64, copy=False)


def _power_of_two_near(*arrays):
    """2^k > half the largest |entry|: dividing by it is exact and brings every entry into (-2, 2)."""
    top = max(float(np.max(np.abs(a))) for a in arrays)
    return float(np.ldexp(1.0, int(np.frexp(top)[1]) - 1)) if top > 0 else 1.0


def _check_squares_finite(x, y):
    """Raise unless |a - b|^2 stays finite for rows a, b of x and y (|entries| <= 1e150 / sqrt(d))."""
    limit = 1e150 / np.sqrt(x.shape[1])
    for name, arr in (("x", x), ("y", y)):
        top = float(np.max(np.abs(arr)))
        if top > limit:
            raise ValueError(f"entries of {name} must be below {limit:.3g} in magnitude (1e150 / sqrt(d)) so "
                             f"that squared distances are finite in float64, got {top:.3g}; rescale x and y "
                             "(and the bandwidth) by one factor")


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
    sampling error of x and y themselves (in d = 1 every direction is +-1 and it is 0
    up to rounding, ~1e-16 of the value).

    x and y are first shifted by one vector, their pooled mean (a common shift leaves every
    gap unchanged): projected where they lie, points far from the origin lost eps |offset|
    of each gap (two samples of spread 1 at 1e12: SW_2 8.6e-6 off, at 1e9 5.7e-9).

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
        n_projections < 2 or p < 1, or a distance beyond the float64 range. Powers
        gap^p that leave the float64 range (huge entries, large p, tiny gaps) are
        handled in logarithms.
    """
    x = _as_sample(x, "x")
    y = _as_sample(y, "y", d=x.shape[1])
    rng = check_rng(rng)
    L = check_count(n_projections, "n_projections", minimum=2)
    p = check_real(p, "p", low=1.0)
    n, m = x.shape[0], y.shape[0]
    with fits_in_memory("n_projections", L, L * x.shape[1]):
        theta = rng.standard_normal((L, x.shape[1]))
    theta /= np.linalg.norm(theta, axis=1, keepdims=True)
    x, y = _shifted_to_pooled_mean(x, y)

    # the merged grid in units of 1/(n m), so that it is exact integer arithmetic
    grid = np.union1d(np.arange(n + 1, dtype=np.int64) * m, np.arange(m + 1, dtype=np.int64) * n)
    du = np.diff(grid) / (n * m)
    twice_mid = grid[:-1] + grid[1:]
    ix, iy = twice_mid // (2 * m), twice_mid // (2 * n)

    wpp = np.empty(L)
    step = max(1, _BLOCK_ELEMENTS // (n + m + du.size))
    with np.errstate(over="ignore", under="ignore", invalid="ignore"):
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
    if np.isfinite(value) and np.isfinite(se) and M >= _SMALLEST_MEAN_WPP:
        return Estimate(value, se)
    # gap^p left the float64 range (huge entries or a large p overflow it, tiny gaps
    # underflow it to 0), or the squares behind the standard error would underflow: the
    # same sums in logarithms
    return _sliced_wasserstein_logs(x, y, theta, p, du, ix, iy, step)


def _shifted_to_pooled_mean(x, y):
    """(x - c, y - c) with c the pooled mean of the rows (sums formed on a power-of-two scale,
    so they cannot overflow), or (x, y) as given where a difference would overflow (entries
    of both signs near 1e308: the projections then go through the logarithms anyway)."""
    s = _power_of_two_near(x, y)
    with np.errstate(over="ignore", invalid="ignore"):
        c = s * (((x / s).sum(axis=0) + (y / s).sum(axis=0)) / (x.shape[0] + y.shape[0]))
        xc, yc = x - c, y - c
    if np.all(np.isfinite(xc)) and np.all(np.isfinite(yc)):
        return xc, yc
    return x, y


def _sliced_wasserstein_logs(x, y, theta, p, du, ix, iy, step):
    """sliced_wasserstein's value and SE with W_p^p kept as logarithms.

    x, y are divided by a power of two c (exactly) so that projections cannot overflow;
    per direction l, log W_l = p log G_l + log sum du (gap / G_l)^p with G_l the largest
    gap; then M = e^{w} mean_l r_l, r_l = W_l / e^{w}, w = max_l log W_l, and
    SW = c M^(1/p), SE = c e^{w/p} std(r) / sqrt(L) mean(r)^(1/p - 1) / p.
    """
    c = _power_of_two_near(x, y)
    x, y = x / c, y / c
    L = theta.shape[0]
    log_w = np.empty(L)
    with np.errstate(divide="ignore", under="ignore", invalid="ignore"):
        for start in np.arange(0, L, step):
            block = theta[start:start + step]
            gap = np.abs(np.sort(x @ block.T, axis=0)[ix] - np.sort(y @ block.T, axis=0)[iy])
            top = gap.max(axis=0)
            ratio = np.divide(gap, top, out=np.zeros_like(gap), where=top > 0)
            log_w[start:start + step] = p * np.log(top) + np.log(du @ ratio**p)
    if np.all(log_w == -np.inf):
        return Estimate(0.0, 0.0)
    w = float(log_w.max())
    r = np.exp(log_w - w)
    mean_r = float(r.mean())
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float64 (inf, or inf * 0): refused below
        value = c * np.exp((w + np.log(mean_r)) / p)
        se = c * np.exp(w / p) * float(r.std(ddof=1)) / np.sqrt(L) * mean_r ** (1.0 / p - 1.0) / p
    if not (np.isfinite(value) and np.isfinite(se)):
        raise ValueError(f"the sliced Wasserstein distance of x and y exceeds float64 (about {c:.3g} times "
                         f"{np.exp((w + np.log(mean_r)) / p):.3g}); rescale x and y by one factor")
    return Estimate(float(value), float(se))


# -- kernel two-sample statistics --------------------------------------------------------


def mmd(x, y, bandwidth=None, *, paired=False):
    """Unbiased squared maximum mean discrepancy with a Gaussian kernel.

    k(a, b) = exp(-|a - b|^2 / (2 h^2)),
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (n (n-1)) + sum_{i != j} k(y_i, y_j) / (m (m-1))
              - 2 sum_{i, j} k(x_i, y_j) / (n m),

    an unbiased U-statistic for independent samples x and y, so it can be negative when
    the laws are close. For paired samples (paired=True: n = m, the pairs z_i = (x_i, y_i)
    independent and identically distributed, x_i and y_i drawn together, e.g. a sampler
    and its replay driven by the same start point and noise) the cross terms i = j are
    dependent and bias MMD^2_u (identical x and y: -2 (1 - mean_{i != j} k(x_i, x_j)) / n,
    in [-2/n, 0], instead of 0); the statistic is then the one-sample U-statistic in the
    z_i (Gretton et al. 2012, Lemma 6),

        MMD^2_p = sum_{i != j} h(z_i, z_j) / (n (n-1)),
        h(z_i, z_j) = k(x_i, x_j) + k(y_i, y_j) - k(x_i, y_j) - k(x_j, y_i),

    unbiased whatever the dependence within a pair (0 exactly for y = x; for pairs that
    differ only in their last digits the rounding of the kernel values, eps each, is an
    absolute floor: 12 pairs 1e-9 apart, h = 0.1, gave -5.8e-17 ± 7.9e-17 for 6.5e-19 ±
    8.7e-19). Computed in
    row blocks: memory O(block * max(n, m)), time O((n + m)^2 d). Kernel values above
    1/2 are summed as k - 1 = expm1(-|a - b|^2 / (2 h^2)) and their unit parts counted
    exactly (the three weights sum to 0), so a bandwidth far above the distances, where
    every k is within eps of 1, keeps the statistic's digits. Squared distances come from
    |a|^2 + |b|^2 - 2 a.b about the pooled mean, off by ~eps (|a|^2 + |b|^2), which the
    kernel multiplies by 1 / (2 h^2); they come from differences of the points as given
    for pairs closer than 1e-3 of their norms, and for pairs whose kernel value is not 0
    where (|a|^2 + |b|^2) / (2 h^2) > 1024 (points far from the pooled mean compared with
    the bandwidth), so each kernel value keeps a relative error of order d 1e-13 (clusters
    1e3 widths apart, h = 1: MMD^2 to 1e-15, 1.4e-10 before; points 1e3 apart in pairs 0.8
    apart, h = 0.05: to 1e-17, 3e-9 before, with a standard error 800 times the true one).

    Standard error (first order, Hoeffding): with f_i = mean_{j != i} k(x_i, x_j) -
    mean_j k(x_i, y_j) and g_j = mean_{i != j} k(y_j, y_i) - mean_i k(x_i, y_j),
    SE = 2 sqrt(var(f) / n + var(g) / m); paired, with h1_i = mean_{j != i} h(z_i, z_j),
    SE = 2 sqrt(var(h1) / n) (Hoeffding 1948; Gretton et al. 2012, Section 5); variances
    with ddof = 1 (on a power-of-two scale where every f, g, h1 is below 2^-400, a bandwidth
    far below the distances, so that their squares do not underflow). It is calibrated
    when the laws differ; when they are equal the statistic is degenerate (fluctuations
    O(1/n), not O(1/sqrt n)) and this SE gives only the order of magnitude.

    Parameters
    ----------
    x : ndarray, shape (n, d), n >= 2
    y : ndarray, shape (m, d), m >= 2
    bandwidth : float >= 1e-150 or None
        h (1 / (2 h^2) must be finite). None: the median heuristic, h = median |a - b| over distinct pairs of a
        deterministic subsample, the first min(500, n) rows of x and the first
        min(500, m) rows of y (at most 1000 points, so it costs little and does not
        depend on any random draw).
    paired : bool, default False
        True: x_i and y_i are a pair (n = m >= 3 required), the statistic MMD^2_p above.
        False: x and y are independent samples, MMD^2_u (the same bits as without it).

    Returns
    -------
    MMD
        value MMD^2_u (MMD^2_p when paired), standard_error, bandwidth h.

    Raises
    ------
    ValueError
        For fewer than 2 rows, a dimension mismatch, non-finite values, entries above
        1e150 / sqrt(d) in magnitude (squared distances would overflow; rescale), a
        bandwidth that is not a number >= 1e-150, a median heuristic of 0 or below
        1e-150 (pass bandwidth), paired not True or False, or paired with n != m or
        n < 3.

    References
    ----------
    Gretton et al., "A kernel two-sample test", JMLR 13 (2012), Lemma 6 and Section 5.
    Hoeffding, "A class of statistics with asymptotically normal distribution", Ann.
    Math. Statist. 19 (1948): the first-order variance 4 var(h1) / n of a U-statistic.
    """
    if not isinstance(paired, (bool, np.bool_)):
        raise ValueError(f"paired must be True or False, got {paired!r}")
    x = _as_sample(x, "x")
    y = _as_sample(y, "y", d=x.shape[1])
    if paired and x.shape[0] != y.shape[0]:
        raise ValueError(f"paired=True needs x and y with the same number of rows (the pairs (x_i, y_i)), got "
                         f"{x.shape[0]} and {y.shape[0]}; pass paired=False for independent samples")
    if paired and x.shape[0] < 3:
        raise ValueError("paired=True needs at least 3 pairs (x_i, y_i), got 2: with 2 the statistic is the one "
                         "value h(z_1, z_2) and its standard error would read 0 (h1_1 = h1_2)")
    _check_squares_finite(x, y)
    if bandwidth is None:
        h = _median_distance(np.concatenate([x[:500], y[:500]]))
        if h == 0.0:
            raise ValueError("bandwidth: the median heuristic gave 0 (most points coincide, or lie closer than "
                             "~1e-154, where squared distances underflow); pass bandwidth explicitly or rescale x and y")
        if h < _MIN_BANDWIDTH:
            raise ValueError(f"bandwidth: the median heuristic gave {h:.3g}, below {_MIN_BANDWIDTH:g} "
                             "(1 / h^2 would overflow); rescale x and y by one factor, or pass bandwidth")
    else:
        h = check_real(bandwidth, "bandwidth", low=0.0, low_open=True)
        if h < _MIN_BANDWIDTH:
            raise ValueError(f"bandwidth must be >= {_MIN_BANDWIDTH:g} (1 / (2 h^2) must be finite), got {h:g}; "
                             "rescale x and y by one factor instead")
    scale = -0.5 / (h * h)
    value, se = _two_sample_u(x, y, _gaussian_kernel(scale), paired=bool(paired))
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
        For fewer than 2 rows, a dimension mismatch or non-finite values, or a value
        beyond the float64 range. Entries whose squared distances overflow or underflow
        are handled by scaling (the statistic is homogeneous of degree 1).

    References
    ----------
    Szekely & Rizzo, "Energy statistics", J. Stat. Plann. Inference 143 (2013).
    """
    x = _as_sample(x, "x")
    y = _as_sample(y, "y", d=x.shape[1])
    c = _power_of_two_near(x, y)
    if c < 2.0**-400:  # squared distances would underflow (entries of 1e-165 gave exactly 0): scale first
        scaled, scaled_se = _two_sample_u(x / c, y / c, _energy_kernel)
        return Estimate(float(c * scaled), float(c * scaled_se))
    with np.errstate(over="ignore", invalid="ignore"):
        value, se = _two_sample_u(x, y, _energy_kernel)
    if np.isfinite(value) and np.isfinite(se):
        return Estimate(value, se)
    # squared distances overflowed: E_u is homogeneous of degree 1, so compute it for
    # x / c, y / c (c a power of two, exact) and scale back
    scaled, scaled_se = _two_sample_u(x / c, y / c, _energy_kernel)
    value, se = c * scaled, c * scaled_se
    if not (np.isfinite(value) and np.isfinite(se)):
        raise ValueError(f"the energy distance of x and y exceeds float64 ({scaled:.3g} times {c:.3g}); "
                         "rescale x and y by one factor")
    return Estimate(float(value), float(se))


def _median_distance(z):
    raw, z = z, z - z.mean(axis=0)
    z2 = np.einsum("ij,ij->i", z, z)
    d2 = _sq_dists(z, z2, z, z2, raw, raw)
    return float(np.median(np.sqrt(d2[np.triu_indices(z.shape[0], k=1)])))


def _sq_dists(a, a2, b, b2, a_raw, b_raw, scale=None):
    """|a_i - b_j|^2 (rows of a against rows of b); a2, b2 the squared row norms.

    a, b are the rows centred (shifted by one vector c), a_raw, b_raw the same rows as
    given: a close pair's difference is taken from those, exactly as the data has it.
    scale (the Gaussian kernel's -1 / (2 h^2), or None): the kernel exp(scale d2) turns an
    absolute error of d2 into a relative error |scale| times it, so pairs whose kernel value
    is not 0 (|scale| d2 < 746) are also taken from differences where |scale| (|a|^2 + |b|^2)
    > 1024, the exponent's rounding otherwise above ~1e-12.
    """
    d2 = a2[:, None] + b2[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    # |a|^2 + |b|^2 - 2 a.b loses about d eps (|a|^2 + |b|^2) to cancellation. Pairs closer
    # than 1e-3 of their norms (rare after centring) are recomputed from differences, so
    # every d2 keeps a relative error below ~d 1e-10 and duplicates give exactly 0. The
    # differences are of the rows as given, not centred: the shift rounds each entry to
    # eps |c|, which for two samples 1e15 of their widths apart took the digits of every
    # distance within either (MMD^2 1.4% off; 9e-6 at 1e12, 6e-9 at 1e9).
    # The differences are taken a chunk of pairs at a time: clustered data can make most
    # pairs close, and all at once they took d times the block's memory (1.8 GB for
    # n = m = 2000, d = 200 and two clusters 2e5 apart).
    norms = a2[:, None] + b2[None, :]
    close = d2 <= 1e-6 * norms
    with np.errstate(over="ignore", invalid="ignore"):
        if scale is not None and abs(scale) * (a2.max() + b2.max()) > 1024.0:
            # |a|^2 + |b|^2 - 2 a.b is off by ~eps (|a|^2 + |b|^2), and the kernel by |scale| times that:
            # points 1e3 apart (about the pooled mean) in pairs 0.8 apart, h = 0.05 (e^{-128} each), gave
            # MMD^2 3e-9 off and a standard error 800 times the true one (the rounding's spread)
            close |= (abs(scale) * norms > 1024.0) & (abs(scale) * d2 < 746.0)
    i, j = np.nonzero(close)
    chunk = max(1, _BLOCK_ELEMENTS // a.shape[1])
    for start in range(0, i.size, chunk):
        ii, jj = i[start:start + chunk], j[start:start + chunk]
        diff = a_raw[ii] - b_raw[jj]
        d2[ii, jj] = np.einsum("ij,ij->i", diff, diff)
    return d2


def _gaussian_kernel(scale):
    """kernel(d2) for _two_sample_u: k = exp(scale d2) as (K, near), k = K + near.

    Where k > 1/2 (near) K = expm1(scale d2) = k - 1, which keeps the digits of 1 - k that
    exp loses: with a bandwidth far above the distances every k rounds to within eps of 1
    and the statistic, a difference of kernel means, cancelled to noise (h = 1e7 times the
    spread gave 6.7e-16 for 4.7e-16, h = 1e9 gave 0 +- 0).
    """
    def kernel(d2):
        # d2 is a fresh array: reused, as is e below. d2 / (2 h^2) beyond float64 (h = 1e-140, points
        # 1e20 apart) is -inf, whose kernel value 0 is exact: no overflow warning
        with np.errstate(over="ignore"):
            e = np.multiply(d2, scale, out=d2)
        near = e > -_LOG_2
        K = np.exp(e)
        np.copyto(K, np.expm1(e, out=e), where=near)
        return K, near
    kernel.scale = scale  # for _sq_dists: the pairs whose d2 it must take from differences
    return kernel


def _energy_kernel(d2):
    """kernel(d2) = -|a - b| for _two_sample_u (no near part)."""
    return -np.sqrt(d2), None


def _two_sample_u(x, y, kernel, paired=False):
    """(MMD^2_u, first-order SE) for kernel(squared distance), in row blocks.

    kernel(d2) returns (K, near) with k = K + near (near a boolean array, or None for 0):
    the unit parts enter as exact integer counts, so a kernel near 1 is summed as k - 1
    (the counts' combination, a rational number, is rounded once). paired (n = m): the
    cross pairs i = j are left out, giving mmd's MMD^2_p and its SE 2 sqrt(var(h1) / n).
    """
    n, m = x.shape[0], y.shape[0]
    # centred on the pooled mean, so |a|^2 + |b|^2 - 2 a.b cancels as little as possible
    # (close pairs are recomputed from the rows as given, xr and yr)
    c = (x.sum(axis=0) + y.sum(axis=0)) / (n + m)
    xr, yr = x, y
    x, y = x - c, y - c
    x2, y2 = np.einsum("ij,ij->i", x, x), np.einsum("ij,ij->i", y, y)
    row_xx, row_xy = np.empty(n), np.empty(n)
    row_yy, col_xy = np.empty(m), np.zeros(m)
    row_yx = np.empty(m) if paired else None  # paired: sum_{j != i} k(y_i, x_j)
    # within-sample blocks against a copy: x[b] @ x.T of one buffer can go to BLAS's syrk,
    # x[b] @ y.T to gemm, whose last digits differ (paired, y = x read 8e-19, not 0)
    x_right, y_right = (x.copy(), y.copy()) if paired else (x, y)
    # counts of unit parts: per row of x (within x, against y), per row of y (within y, against x)
    ones_xx, ones_xy = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    ones_yy, ones_yx = np.zeros(m, dtype=np.int64), np.zeros(m, dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // max(n, m))

    def block(a, a2, b, b2, ar, br, rows, leave_out_diagonal):
        """Kernel values of rows of a against all of b and their near-1 mask (kernel), with the
        pairs (i, i) set to 0 and not counted where leave_out_diagonal."""
        K, near = kernel(_sq_dists(a[rows], a2[rows], b, b2, ar[rows], br, getattr(kernel, "scale", None)))
        if leave_out_diagonal:
            diag = (np.arange(rows.stop - rows.start), np.arange(rows.start, rows.stop))
            K[diag] = 0.0
            if near is not None:
                near[diag] = False
        return K, near

    for start in np.arange(0, n, step):
        b = slice(start, min(start + step, n))
        K, near = block(x, x2, x_right, x2, xr, xr, b, True)  # i = j left out
        row_xx[b] = K.sum(axis=1)
        if near is not None:
            ones_xx[b] = near.sum(axis=1)
        # paired: (x_i, y_i) drawn together, left out as i = j within a sample
        K, near = block(x, x2, y, y2, xr, yr, b, paired)
        row_xy[b] = K.sum(axis=1)
        col_xy += K.sum(axis=0)
        if near is not None:
            ones_xy[b] = near.sum(axis=1)
            ones_yx += near.sum(axis=0)
    for start in np.arange(0, m, step):
        b = slice(start, min(start + step, m))
        K, near = block(y, y2, y_right, y2, yr, yr, b, True)
        row_yy[b] = K.sum(axis=1)
        if near is not None:
            ones_yy[b] = near.sum(axis=1)
        if paired:
            # sum_{j != i} k(x_j, y_i) as a row sum, as row_yy is: for y = x the two are then
            # the same bits and every h1_i is exactly 0 (col_xy, summed by columns, differed
            # from row_yy in its last digits: SE 4e-18 for a value of exactly 0)
            K, near = block(y, y2, x, x2, yr, xr, b, True)
            row_yx[b] = K.sum(axis=1)
            if near is not None:
                ones_yx[b] = near.sum(axis=1)
    if paired:
        # h1_i = mean_{j != i} h(z_i, z_j) and MMD^2_p = mean_i h1_i, each k - k' pair cancelled
        # first; the unit parts exact integers, the total one fraction rounded once
        ones = (ones_xx - ones_xy) + (ones_yy - ones_yx)
        rest = (row_xx - row_xy) + (row_yy - row_yx)
        value = float(Fraction(int(ones.sum()), n * (n - 1))) + rest.sum() / (n * (n - 1))
        h1 = ones / (n - 1) + rest / (n - 1)
        return float(value), _first_order_se((h1, n))
    units = (Fraction(int(ones_xx.sum()), n * (n - 1)) + Fraction(int(ones_yy.sum()), m * (m - 1))
             - Fraction(2 * int(ones_xy.sum()), n * m))
    value = float(units) + (row_xx.sum() / (n * (n - 1)) + row_yy.sum() / (m * (m - 1))
                            - 2.0 * row_xy.sum() / (n * m))
    # the unit parts of f and g as one integer over one denominator (exact below 2^53), rounded once
    f = (ones_xx * m - ones_xy * (n - 1)) / ((n - 1) * m) + row_xx / (n - 1) - row_xy / m
    g = (ones_yy * n - ones_yx * (m - 1)) / ((m - 1) * n) + row_yy / (m - 1) - col_xy / n
    return float(value), _first_order_se((f, n), (g, m))


def _first_order_se(*parts):
    """2 sqrt(sum var(v, ddof=1) / k) over the (v, k) in parts; where every |v| is below 2^-400
    (kernel values all below ~1e-121: a bandwidth far below the distances) on a power-of-two
    scale, as their squares would underflow (h = 0.03, values ~1e-155: 0 for 3e-166)."""
    top = max(float(np.max(np.abs(v))) for v, _ in parts)
    c = float(np.ldexp(1.0, int(np.frexp(top)[1]))) if 0.0 < top < 2.0**-400 else 1.0
    return float(c * (2.0 * np.sqrt(sum((v / c).var(ddof=1) / k for v, k in parts))))


# -- moments ---------------------------------------------------------------------------------


def _target_moment(target, name, shape):
    if not hasattr(target, name):
        raise ValueError(f"target must have a {name}() method, for example a GaussianMixture")
    value = np.asarray(getattr(target, name)(), dtype=np.float64)
    if value.shape != shape:
        raise ValueError(f"target.{name}() must have shape {shape} to match x, got {value.shape}")
    if not np.all(np.isfinite(value)):
        raise ValueError(f"target.{name}() has non-finite entries (it overflows float64); rescale the target")
    return value


def mean_error(x, target):
    """Euclidean error of the sample mean, |xbar - m|, m = target.mean().

    xbar - m is formed as the mean of the x_i - m, exact where the points lie near m (a
    sample far from the origin keeps its digits: xbar alone rounds to eps |xbar|).

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

    Raises
    ------
    ValueError
        For fewer than 2 rows, non-finite values, a target without a finite mean of
        shape (d,), or an error beyond the float64 range (sums that merely overflow, and
        squares that would underflow when every entry is below 2^-400 ~ 4e-121, are
        handled by scaling by a power of two).
    """
    x = _as_sample(x, "x")
    n, d = x.shape
    mean = _target_moment(target, "mean", (d,))
    c = _power_of_two_near(x, mean)
    if c < 2.0**-400:
        # squares of the error (|xbar - m|^2, its projections' variance) would underflow:
        # entries of 1e-170 gave exactly 0, of 1e-160 a relative error of 8e-4. The error is
        # homogeneous of degree 1, so compute it for (x / c, m / c), c a power of two (exact)
        scaled, scaled_se = _mean_error(x / c, mean / c)
        return Estimate(float(c * scaled), float(c * scaled_se))
    with np.errstate(over="ignore", invalid="ignore"):
        value, se = _mean_error(x, mean)
    if np.isfinite(value) and np.isfinite(se):
        return Estimate(value, se)
    # a sum or a square overflowed: the error is homogeneous of degree 1 in (x, m), so
    # compute it for (x / c, m / c), c a power of two (exact), and scale back
    scaled, scaled_se = _mean_error(x / c, mean / c)
    value, se = c * scaled, c * scaled_se
    if not (np.isfinite(value) and np.isfinite(se)):
        raise ValueError(f"the mean error |xbar - m| exceeds float64 ({scaled:.3g} times {c:.3g}); "
                         "rescale x and the target")
    return Estimate(float(value), float(se))


def _mean_error(x, mean):
    # xbar - m as the mean of x - m: each x - m is exact where x lies near m, while xbar of points
    # far from the origin rounds to eps |xbar| (offset 1e12, spread 1, n = 1e4: 45% of the error lost)
    n = x.shape[0]
    dev = x - mean
    diff = dev.mean(axis=0)
    value = float(np.linalg.norm(diff))
    centred = dev - diff
    if value == 0.0:
        return 0.0, float(np.sqrt(np.sum(centred**2) / ((n - 1) * n)))
    proj = centred @ (diff / value)
    return value, float(proj.std(ddof=1) / np.sqrt(n))


def covariance_error(x, target):
    """Frobenius error of the sample covariance, ||S - Sigma||_F, Sigma = target.covariance().

    S = sum_i c_i c_i^T / (n - 1), c_i = x_i - xbar (unbiased; centred in two passes, so
    that the rounding of xbar, eps |xbar| far from the origin, does not enter S). Standard
    error by the delta method: with D = (S - Sigma) / ||S - Sigma||_F, the value moves to
    first order as tr(D S), the mean of psi_i = c_i^T D c_i, so SE = std_i(psi_i) / sqrt(n). Like
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

    Raises
    ------
    ValueError
        For fewer than 2 rows, non-finite values, a target without a finite covariance
        of shape (d, d), or an error beyond the float64 range (entries of x around 1e154
        and above; products that merely overflow, and squared errors that would
        underflow when x and sqrt|Sigma| are below 2^-200 ~ 6e-61, are handled by
        scaling by a power of two).
    """
    x = _as_sample(x, "x")
    n, d = x.shape
    sigma = _target_moment(target, "covariance", (d, d))
    # the error is homogeneous of degree 2 in (x, sqrt(Sigma)): computed for (x / c,
    # Sigma / c^2), c a power of two (exact), and scaled back when squares would leave the range
    c = _power_of_two_near(x, np.sqrt(np.abs(sigma)))
    if c < 2.0**-200:
        # ||S - Sigma||_F^2 and var(psi) are of order c^4 and would underflow: entries of x of
        # 1e-100 (Sigma of 1e-200) gave exactly 0, of 1e-80 a relative error of 6e-5
        value, se = _covariance_error(x / c, sigma / c / c)
        return Estimate(float(c * c * value), float(c * c * se))
    with np.errstate(over="ignore", invalid="ignore"):
        value, se = _covariance_error(x, sigma)
    if np.isfinite(value) and np.isfinite(se):
        return Estimate(value, se)
    # squares overflowed: the same, scaled down
    with np.errstate(under="ignore"):
        value, se = _covariance_error(x / c, sigma / c / c)
    value, se = c * c * value, c * c * se
    if not (np.isfinite(value) and np.isfinite(se)):
        raise ValueError(f"the covariance error ||S - Sigma||_F exceeds float64 (x has entries up to "
                         f"{float(np.max(np.abs(x))):.3g}; squared deviations beyond ~1.3e154 overflow); "
                         "rescale x and the target")
    return Estimate(float(value), float(se))


def _covariance_error(x, sigma):
    n = x.shape[0]
    # centred in two passes: xbar of points far from the origin rounds to eps |xbar|, and that
    # shift delta entered S as delta delta^T (offset 1e12, spread 1: the error 1.7e-6 off); the
    # x - xbar are exact there, and their mean is -delta
    c = x - x.mean(axis=0)
    c -= c.mean(axis=0)
    S = c.T @ c / (n - 1)
    diff = S - sigma
    value = float(np.linalg.norm(diff))
    if value == 0.0:
        outer = c[:, :, None] * c[:, None, :] - S
        return 0.0, float(np.sqrt(np.mean(np.sum(outer**2, axis=(1, 2))) / n))
    psi = np.einsum("ij,jk,ik->i", c, diff / value, c)
    return value, float(psi.std(ddof=1) / np.sqrt(n))


# -- mixture weights -----------------------------------------------------------------------


def component_weights(x, mixture):
    """Mixture weights recovered from a sample, by soft and by hard assignment.

    pi_k(x) = w_k N_k(x) / sum_j w_j N_j(x) (log-sum-exp of log w_k + log N_k(x));
    soft_k = mean_i pi_k(x_i), hard_k = mean_i 1[argmax_j pi_j(x_i) = k] (ties go to the
    lower k). For an exact sample of the mixture E[pi_k(X)] = w_k, so soft is unbiased;
    hard is biased towards the larger components where they overlap. Standard errors
    std_i / sqrt(n) (ddof = 1) of the averaged quantity (for responsibilities below
    2^-400 ~ 4e-121, a component of tiny weight, formed on a power-of-two scale so that
    their squares do not underflow). Zero-weight components get 0.

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
        single = mixture.component(k)  # its own covariance whatever the kind (tied, spherical, ...)
        log_joint[:, k] = np.log(mixture.weights[k]) + single.log_prob(x)
    top = log_joint.max(axis=1, keepdims=True)
    resp = np.exp(log_joint - top)
    resp /= resp.sum(axis=1, keepdims=True)
    hard = np.zeros((n, K))
    hard[np.arange(n), resp.argmax(axis=1)] = 1.0
    root_n = np.sqrt(n)
    soft, soft_se = resp.mean(axis=0), resp.std(axis=0, ddof=1) / root_n
    # a component of tiny weight has responsibilities whose squared deviations underflow
    # (weight 1e-200: pi_k ~ 1e-190, soft_standard_error 0 for 8.9e-190): those on a
    # power-of-two scale (mean_se), the other components' bits as before
    for k in np.flatnonzero((soft < 2.0**-400) & (soft_se < 2.0**-400)):
        soft_se[k] = mean_se(resp[:, k].copy())[1]
    return ComponentWeights(soft, soft_se, hard.mean(axis=0), hard.std(axis=0, ddof=1) / root_n)
