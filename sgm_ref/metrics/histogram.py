"""Histogram total variation against a target's exact bin masses (d <= 2).

TV = 1/2 sum_b |phat_b - p_b| over the bins and the cell outside them, with p_b by
adaptive Gauss-Legendre quadrature of the target density and the estimate's exact
expected bias under exact sampling (De Moivre's binomial mean absolute deviation).
A lower estimate of a sampler's error; see sgm_ref.metrics.distances for the others.
"""

import math
import warnings
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from .._validation import check_count, check_real, fits_in_memory
from ..targets import GaussianMixture, ProductMixture
from .distances import _as_sample

__all__ = ["HistogramTV", "histogram_tv"]

# Numbers per temporary array (density evaluations): 2**20 float64 = 8 MB.
_BLOCK_ELEMENTS = 2**20

# Two Gauss-Legendre rules per sub-interval; their difference estimates the error of the
# coarser one, and the finer one is returned.
_GL_COARSE, _GL_FINE = 8, 12
# Accept the bin masses when sum_b |fine_b - coarse_b| is below this.
_MASS_TOL = 1e-11
# Bin masses of a normalised density sum to at most 1; beyond 1 + their quadrature error
# + this (the rounding of a sum of up to ~1e6 masses) the target's log_prob is not
# normalised or the quadrature has failed, and the outside cell would be negative.
_SUM_TOL = 1e-10
# Largest number of density evaluations (per rule) before refinement gives up.
_MAX_NODES = 2**24
# Sub-intervals no wider than this many standard deviations of the narrowest mixture
# component (GaussianMixture, ProductMixture): the 8-point rule is then exact to ~1e-14
# per sub-interval.
_WIDTH_PER_STD = 1.5


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


def histogram_tv(x, target, bins=20, range=None):
    """Total variation between the histogram of x and the target's exact bin masses.

    TV = 1/2 sum_b |phat_b - p_b|, the sum running over the bins and one cell for
    everything outside the range (p_out = 1 - sum_b p_b). The target masses are

        p_b = int_bin exp(log p(u)) du

    by tensor-product Gauss-Legendre quadrature: each bin is cut into equal
    sub-intervals (no wider than 1.5 standard deviations of the narrowest component of
    positive weight of a GaussianMixture or a ProductMixture), integrated with an 8- and
    a 12-point rule; sub-intervals are halved until the two rules agree to
    sum_b |difference| <= 1e-11, and the 12-point result is kept (accurate to ~1e-14 for
    Gaussian mixtures).

    Any other target (a TiltedGaussian, an object with dim and log_prob) has no known
    scale: each bin starts as one sub-interval and only the two rules' agreement decides
    the refinement. A feature much narrower than a bin that falls between the nodes of
    both rules is then missed with both agreeing (its mass lands in the outside cell, and
    quadrature_error does not show it): the refinement alone found a component 100 times
    narrower than a bin in the tests, but not one 700 times narrower. For such a target
    pass a range and bins whose width is a few times its narrowest feature.

    Sum check: the bin masses of a normalised density sum to at most 1. A sum beyond
    1 + quadrature_error + 1e-10 (and, for a target whose log_prob carries a Monte-Carlo
    normaliser, e.g. TiltedGaussian, + 5 log_normaliser_se) is refused: log_prob is not
    normalised, or the quadrature failed. A sum above 1 within that tolerance leaves
    target_outside a little below 0, reported as it is; the expected bias reads it as 0.

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
        target differ in dimension, bins or range are malformed, the range cannot be
        cut into distinct float64 bin edges (width overflowing, or below the spacing of
        floats at its location), the narrowest component of a mixture is too narrow for
        the bins within 2**24 quadrature nodes per rule, the quadrature's pieces are so
        few floats wide where they lie that their nodes coincide (a unit Gaussian at
        1e15), or the bin masses sum beyond 1 (above).

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
    # the histogram, the bin masses and their quadrature nodes: a few arrays of (bins + 2)^d cells
    with fits_in_memory("bins", bins, math.prod(c + 2 for c in counts), per_item=8 * 8):
        return _histogram_tv(x, target, counts, lows, highs)


def _histogram_tv(x, target, counts, lows, highs):
    n, d = x.shape
    with np.errstate(over="ignore", invalid="ignore"):
        edges = tuple(np.linspace(lo, hi, b + 1) for lo, hi, b in zip(lows, highs, counts))
        usable = [bool(np.isfinite(hi - lo) and np.all(np.isfinite(e)) and np.all(np.diff(e) > 0))
                  for e, lo, hi in zip(edges, lows, highs)]
    for axis, (e, lo, hi) in enumerate(zip(edges, lows, highs)):
        if not usable[axis]:
            raise ValueError(f"range on axis {axis}, [{float(lo):.6g}, {float(hi):.6g}], cannot be cut into {len(e) - 1} "
                             "bins in float64 (its width overflows, or bins narrower than the spacing of floats there "
                             "would coincide); pass a range of finite width and fewer bins, or rescale x and the target")

    sample_counts = np.histogramdd(x, bins=edges)[0]
    sample_mass = sample_counts / n
    sample_outside = (n - sample_counts.sum()) / n
    target_mass, quad_err = _bin_masses(target, edges, _smallest_std(target))
    total = float(target_mass.sum())
    tolerance = quad_err + _SUM_TOL
    if getattr(target, "log_normaliser_se", None) is not None:  # a Monte-Carlo normaliser (TiltedGaussian)
        tolerance += math.expm1(5.0 * float(target.log_normaliser_se))
    if not total <= 1.0 + tolerance:
        raise ValueError(f"the target's bin masses sum to {total:.12g}, beyond 1 + {tolerance:.2g} (the quadrature's "
                         "error and rounding): target.log_prob must be a normalised log-density (it integrates to "
                         "more than 1 over the range), or the quadrature failed on it; check log_prob, or pass a "
                         "range and bins that resolve its narrowest feature")
    target_outside = 1.0 - total
    value = 0.5 * (np.abs(sample_mass - target_mass).sum() + abs(sample_outside - target_outside))
    # a sum of masses within its tolerance above 1 leaves the outside mass a little below 0
    # (reported as it is); the binomial bias needs p in [0, 1] and reads it as 0
    cells = np.append(target_mass.ravel(), target_outside)
    bias = 0.5 * math.fsum(_binomial_mean_abs_dev(n, np.clip(cells, 0.0, 1.0)))
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
    """Smallest standard deviation of a component of positive weight, or None (no known scale).

    GaussianMixture: of its components' covariances (smallest eigenvalue); ProductMixture:
    min over coordinates j and components k with weights[j, k] > 0 of stds[j, k] (its
    density is a product of 1-D two-component mixtures, so no feature is narrower). Any
    other target: None (histogram_tv's docstring says what that means).
    """
    if isinstance(target, ProductMixture):
        return float(target.stds[target.weights > 0].min())
    if not isinstance(target, GaussianMixture):
        return None
    active = target.weights > 0
    if target.covariance_type == "identity":
        return 1.0
    if target.covariance_type in ("diagonal", "spherical"):
        return float(np.sqrt(target.covariances[active].min()))
    if target.covariance_type == "tied":
        return float(np.sqrt(np.linalg.eigvalsh(target.covariances)[0]))
    return float(np.sqrt(np.linalg.eigvalsh(target.covariances[active])[:, 0].min()))


def _gauss_legendre(edges, parts, q):
    """Nodes and weights of a q-point rule on each of `parts` equal pieces of every bin.

    The nodes are floats: far from the origin (|x| >> the piece's width) they round to
    eps |x| off the Gauss-Legendre points, and the rule then lost its order without its
    two sizes noticing (a unit Gaussian at 1e12, 20 bins: masses 1.7e-9 off with
    quadrature_error 6e-17; at 1e6 8e-12). Where a node sits more than 1e-14 (in units of
    the half-width) off its point, that piece's weights are those of the interpolatory rule
    on the nodes as they are, exact for degree q - 1 over the piece as it is
    (_interpolatory_weights). Pieces so few floats wide that fewer than q / 2 distinct
    nodes remain (a unit Gaussian at 1e15: masses 1.7e-3 off, with both rules agreeing)
    are refused.
    """
    t, w = np.polynomial.legendre.leggauss(q)
    cuts = np.linspace(edges[:-1], edges[1:], parts + 1, axis=1)  # (B, parts + 1)
    half = 0.5 * (cuts[:, 1:] - cuts[:, :-1])  # (B, parts)
    mid = 0.5 * (cuts[:, 1:] + cuts[:, :-1])
    nodes = mid[:, :, None] + half[:, :, None] * t
    weights = half[:, :, None] * w
    # where the nodes are (s), and the piece [lo, hi], in units of the half-width about mid (exact
    # differences: mid, the nodes and the cuts are within a factor 2 of one another, or near 0)
    with np.errstate(divide="ignore", invalid="ignore"):  # a piece of width 0 (cuts that coincide) has weights 0
        s = (nodes - mid[:, :, None]) / half[:, :, None]
        off = np.any(np.abs(s - t) > 1e-14, axis=2) & (half > 0)
        if np.any(off):
            distinct = 1 + np.sum(np.diff(np.sort(s[off], axis=1), axis=1) > 0, axis=1)
            merged = distinct < q / 2
            if np.any(merged):  # the nodes merged onto a few floats: no rule of useful order there
                # (the pieces, not the bins: bins 19 floats wide were refined into pieces of 5)
                where = mid[off][merged]
                where = float(where[np.argmax(np.abs(where))])
                raise ValueError(f"quadrature pieces of width {float(2 * np.max(half[off][merged])):.3g} (cut from "
                                 f"bins of width {float(edges[1] - edges[0]):.3g}) hold fewer than {q // 2} floats "
                                 f"near {where:.3g}: the quadrature nodes coincide in float64; shift x and the target "
                                 "towards the origin (or rescale them), or use a wider range and fewer bins")
            lo = (cuts[:, :-1] - mid) / half
            hi = (cuts[:, 1:] - mid) / half
            weights[off] = half[off][:, None] * _interpolatory_weights(s[off], lo[off], hi[off])
    return nodes.ravel(), weights.ravel()


# rows of (q, q) systems solved at a time by _interpolatory_weights
_SOLVE_ROWS = 2**14


def _interpolatory_weights(s, lo, hi):
    """Weights W (R, q) with sum_i W_i P_k(s_i) = int_lo^hi P_k for k < q, row by row.

    P_k are the Legendre polynomials; int_lo^hi P_0 = hi - lo and, for k >= 1,
    int P_k = (P_{k+1} - P_{k-1}) / (2k + 1). s (R, q) lies close to the Gauss-Legendre
    points, where these systems are well conditioned. A row whose nodes have merged (a
    piece a few dozen floats wide) gets the rule on its u distinct nodes, exact for degree
    u - 1 (the minimum-norm solution of the first u equations); _gauss_legendre refuses
    pieces with u < q / 2.
    """
    from numpy.polynomial import legendre

    q = s.shape[1]
    out = np.empty_like(s)
    distinct = 1 + np.sum(np.diff(np.sort(s, axis=1), axis=1) > 0, axis=1)
    for start in range(0, s.shape[0], _SOLVE_ROWS):  # chunks: memory of R (q, q) systems
        chunk = slice(start, start + _SOLVE_ROWS)
        S, a, b = s[chunk], lo[chunk], hi[chunk]
        V = legendre.legvander(S, q - 1)  # (R, q nodes, q degrees)
        Pa, Pb = legendre.legvander(a, q), legendre.legvander(b, q)  # (R, q + 1)
        moments = np.empty(S.shape)
        moments[:, 0] = b - a
        k = np.arange(1, q)
        moments[:, 1:] = ((Pb[:, k + 1] - Pb[:, k - 1]) - (Pa[:, k + 1] - Pa[:, k - 1])) / (2 * k + 1)
        full = distinct[chunk] == q
        W = np.empty(S.shape)
        if np.any(full):
            W[full] = np.linalg.solve(np.transpose(V[full], (0, 2, 1)), moments[full][:, :, None])[:, :, 0]
        for r in np.flatnonzero(~full):
            u = int(distinct[chunk][r])
            W[r] = np.linalg.lstsq(V[r][:, :u].T, moments[r, :u], rcond=None)[0]
        out[chunk] = W
    return out


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
    # (the ratio is capped so that a component far narrower than a bin is refused below,
    # not turned into an OverflowError)
    with np.errstate(over="ignore"):  # a ratio beyond float64 is capped like any other above 2^62
        parts = [1 if scale is None else max(1, math.ceil(min(wd / (_WIDTH_PER_STD * scale), 2.0**62)))
                 for wd in widths]
    halvings = 0
    while max(parts) > 1 and _node_count(edges, parts) > _MAX_NODES:
        parts = [max(1, s // 2) for s in parts]
        halvings += 1
    if halvings > 4 and scale is not None:
        # sub-intervals beyond 24 std: nodes several std apart can step over the narrowest
        # component, and both rules then agree on a wrong mass (0 for a spike between them)
        raise ValueError(f"the target's narrowest component (std {scale:.3g}) is too narrow to integrate over bins "
                         f"of width {max(widths):.3g} within {_MAX_NODES} quadrature nodes; use a narrower range "
                         "(the nodes it needs grow as (range / std)^d, whatever the number of bins)")
    while True:
        coarse = _bin_masses_rule(target, edges, parts, _GL_COARSE)
        fine = _bin_masses_rule(target, edges, parts, _GL_FINE)
        err = float(np.abs(fine - coarse).sum())
        if err <= _MASS_TOL:
            return fine, err
        if _node_count(edges, [2 * s for s in parts]) > _MAX_NODES:
            warnings.warn(f"histogram_tv: bin masses reached only ~{err:.1e} (sum of errors) within "
                          f"{_MAX_NODES} quadrature nodes; use a smaller range (the nodes it "
                          "needs grow with the range, not with the number of bins)",
                          RuntimeWarning, stacklevel=3)
            return fine, err
        parts = [2 * s for s in parts]


def _node_count(edges, parts):
    return math.prod((len(e) - 1) * s * _GL_FINE for e, s in zip(edges, parts))


def _binomial_mean_abs_dev(n, p):
    """E|X/n - p| for X ~ Binomial(n, p), exactly (De Moivre), for an array of p.

    E|X/n - p| = 2 k (1 - p) P(X = k) / n with k = floor(n p) + 1 (0 for p = 0 or 1), the
    binomial probability from scipy.stats.binom.pmf (Boost), accurate to a few eps for any n;
    for k = 1 it is 2 p (1 - p)^n.
    Its logarithm through lgamma(n + 1) - lgamma(k + 1) - lgamma(n - k + 1), terms of size
    n log n, lost eps n log n: a relative error of 1e-9 at n = 1e6 and 4e-6 at n = 1e9.
    """
    from scipy.stats import binom  # here: scipy.stats takes 0.5 s to import, at every command's start

    p = np.asarray(p, dtype=np.float64)
    k = np.floor(n * p) + 1.0
    # n p rounded up onto an integer (exactly below it): floor took one too many, and the closed
    # form, exact for k = floor(n p) + 1 only, was off by 2 (k - n p) P(X = k) / n (n = 1e5,
    # p = 0.99999 - 1e-16: 6.6e-12 of the cell's value). Only an n p that came out an integer can
    # have crossed one: those k from the exact product
    whole = np.flatnonzero((k - 1.0 == n * p) & (p > 0.0) & (p < 1.0))
    for i in whole:
        k.flat[i] = math.floor(Fraction(float(p.flat[i])) * n) + 1
    out = np.zeros_like(p)
    # k = 1 (n p < 1): 2 p (1 - p)^n directly (Boost's pmf lost 2e-13 for p below 1e-200)
    one = (p > 0.0) & (k == 1.0)
    out[one] = 2.0 * p[one] * np.exp(n * np.log1p(-p[one]))
    many = (k > 1.0) & (p < 1.0) & (k <= n)
    out[many] = 2.0 * k[many] * (1.0 - p[many]) * binom.pmf(k[many], n, p[many]) / n
    return out
