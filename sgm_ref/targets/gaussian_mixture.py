"""Gaussian mixtures with the exact density and score of every forward marginal p_t.

If p_0 = sum_k w_k N(mu_k, Sigma_k) and X_t = alpha_t X_0 + sigma_t Z, then

    p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I),

exactly, for every (alpha_t, sigma_t): OU, VP and every other process of
sgm_ref.processes (VE, EDM, FlowMatching, ...). predict() gives the exact denoiser, eps,
v and velocity from the score. Relative to the standard Gaussian gamma_d the target is
p_0 = exp(f) gamma_d / Z with f entering with a plus sign (Cole & Lu's exponential
tilting); for identity covariances f(x) = log sum_k w_k exp(mu_k . x - |mu_k|^2 / 2).
"""

import numpy as np

from .._threads import blas_settable, run_blocks
from .._validation import (cast_oracle_output, check_count, check_float_dtype, check_oracle_output, check_points, check_real, check_rng,
                           eigh_spd)
from ..kernels.mixture import (centred_rows_into, diagonal_mixture, diagonal_mixture_serial, full_mixture_direct,
                               full_mixture_responsibilities, rotate_rows)
from ..processes import OU, VariancePreserving, check_process
from ._predict import ExactOutputs
from ._checks import (MAX_MEAN, MAX_VARIANCE, MIN_VARIANCE, check_float32_range, check_float32_samples,
                      check_means, check_size, check_variances, plain, real_array, shown)

__all__ = ["GaussianMixture"]

# covariance_type as given -> the attribute's spelling; and back, for messages
_KIND = {"full": "full", "diag": "diagonal", "diagonal": "diagonal", "tied": "tied", "spherical": "spherical",
         "identity": "identity"}
_SKLEARN_NAME = {"full": "full", "diagonal": "diag", "tied": "tied", "spherical": "spherical", "identity": "identity"}


def _kind_name(covariance_type):
    if covariance_type is None:
        return None
    if not isinstance(covariance_type, str) or covariance_type not in _KIND:
        raise ValueError(f"covariance_type must be None, 'full', 'diag', 'tied' or 'spherical' (as in scikit-learn), "
                         f"got {shown(covariance_type)}")
    return _KIND[covariance_type]


def _infer_kind(cov, K, d):
    """The form of covariances from its shape, when only one form fits (class docstring)."""
    if cov.ndim == 3 and cov.shape == (K, d, d):
        return "full"
    if cov.shape == (K, d):
        if K == d >= 2 and _is_spd(cov):
            raise ValueError(
                f"covariances of shape ({d}, {d}) with K = d = {d} is ambiguous: it could be K rows of diagonal "
                "variances or one covariance shared by all components; pass covariance_type='diag' or "
                "covariance_type='tied'")
        return "diagonal"
    hint = ""
    if cov.shape == (d, d):
        hint = "; a (d, d) array is one shared covariance only with covariance_type='tied'"
    elif cov.shape == (K,):
        hint = "; a (K,) array is one variance per component only with covariance_type='spherical'"
    raise ValueError(f"covariances must be None, shape (K, d) = ({K}, {d}) or (K, d, d) = ({K}, {d}, {d}), or name "
                     f"its form with covariance_type ('tied': (d, d), 'spherical': (K,)); got shape {cov.shape}{hint}")


def _eigh_spd(cov, name):
    """eigh_spd, with the reason named when a positive smallest eigenvalue fails its test.

    eigh_spd refuses lam_min <= d eps lam_max as 'not positive definite'; for diag(1e-300, 1)
    as a full covariance that read as a wrong claim (its eigenvalues are positive). Such a
    matrix is positive definite only below float64's resolution: rounding its entries moves
    lam_min by about eps lam_max, so the message says so and what to pass instead.
    """
    try:
        return eigh_spd(cov, name)
    except ValueError as exc:
        if "is not positive definite" not in str(exc):
            raise
        stack = cov if cov.ndim == 3 else cov[None]
        d = stack.shape[-1]
        lam = np.linalg.eigvalsh(0.5 * (stack + stack.transpose(0, 2, 1)))
        bad = np.flatnonzero(~(lam[:, 0] > d * np.finfo(np.float64).eps * lam[:, -1]))
        if bad.size == 0 or not lam[bad[0], 0] > 0:
            raise
        k, lo, hi = bad[0], float(lam[bad[0], 0]), float(lam[bad[0], -1])
        label = f"{name}[{k}]" if cov.ndim == 3 else name
        raise ValueError(f"{label} is not positive definite to float64 precision: its smallest eigenvalue {lo:.3g} "
                         f"is below d eps = {d * np.finfo(np.float64).eps:.3g} times its largest, {hi:.3g} (condition "
                         f"number {hi / lo:.3g}), where the rounding of its entries decides it; pass diagonal "
                         "variances with covariance_type='diag', or a better conditioned matrix") from None


def _is_spd(a):
    """Whether a square array passes eigh_spd's checks (a valid shared covariance)."""
    try:
        eigh_spd(a, "covariances")
    except ValueError:
        return False
    return True


# Rows per block of the full-covariance oracle's score (_full_block_rows): each thread's
# (rows, K d) buffer P holds about 2**18 numbers (2 MB in float64), but a block has at
# least 256 rows (products of fewer rows run well below BLAS's speed) unless that would
# pass 2**21 numbers; memory stays flat in n (one buffer per thread). The blocks run on
# Python threads, as many as numba's thread count and no more than OpenBLAS's, each with
# single-threaded BLAS (sgm_ref._threads.run_blocks).
# Measured on 2026-12-04 (AMD EPYC, 2 cores, AVX-512 kernels; paired medians of 7-11
# calls, benchmarks/RESULTS.md) against the former blocks of 2**20 numbers run in turn
# with two BLAS threads: 0.67 of the time at d = 32, K = 8; 0.78 at d = 32, K = 64 and at
# d = 16, K = 8; 0.89 at d = 128, K = 8; 0.93 at d = 128, K = 64. Blocks of 2**19 with at
# least 128 rows were as fast; 2**17 slower at d = 32 and 128, and 2**18 without the
# floor 1.1x slower at d = 128, K = 64 (32-row products). With the products on two BLAS
# threads, blocks this small had cost 3-4x on a loaded machine (each product waited for
# its second thread); here no product waits for another thread: beside one busy process,
# 0.53x (d = 32) and 0.69x (d = 128, K = 8) of the old loop's time, where the small blocks
# in turn on two BLAS threads took 0.86x and 1.32x. So where NumPy's BLAS cannot be set at
# run time (not an OpenBLAS, or not Linux), and the blocks run in turn on that BLAS's
# threads, they keep their former size, 2**20 numbers (_SHARED_BLAS_BLOCK_ELEMENTS).
_BLOCK_ELEMENTS = 2**18
_BLOCK_MIN_ROWS = 256
_SHARED_BLAS_BLOCK_ELEMENTS = 2**20
# Rows per block of the tied-covariance oracle (_tied_block_rows): its blocks run like the
# full one's, rotated in, through the serial diagonal kernel and back, so the bits do not
# depend on the thread count (its two products on OpenBLAS's threads had: 4e-15 in the
# score and 4.5e-13 in log p between one and two threads at d = 600). Blocks of 2**16
# numbers, at least 256 rows (2048 rows at d = 32, 256 at d >= 256; the buffers, two of
# (rows, d) per thread, stay within 1 MB at d <= 256).
# Measured on 2026-12-05 (AMD EPYC, 2 cores, beside other work at load 1-2, so noisy;
# interleaved calls, min of 41, n = 4096, t = 0.3) against the former whole-batch
# products on two BLAS threads around the parallel diagonal kernel: d = 32 1.37 against
# 1.26 ms (K = 2) and 2.27 against 2.15 ms (K = 8); d = 128 8.65 against 8.16 ms (K = 2)
# and 11.8 against 17.1 ms (K = 8); d = 600 70.6 against 79.0 ms (K = 2) and 92 against
# 115 ms (K = 8). Blocks of 2**14 and 2**15 numbers were no faster. With one thread
# (set_threads(1)) 0.8-1.0x the former time; with two beside a process that keeps one
# core busy, 0.16-0.25x at d = 32 (the former parallel kernel waited for its descheduled
# worker), 0.85x at d = 128, 1.0-1.1x at d = 600 (medians of 25).
_TIED_BLOCK_ELEMENTS = 2**16
_TIED_BLOCK_MIN_ROWS = 256
# The divergence's NumPy path, in blocks of (rows, K, d[, d]) numbers.
_DIVERGENCE_BLOCK_ELEMENTS = 2**20
# The divergence and the denoiser take a row again about a reference component
# (GaussianMixture._far_rows) where every quadratic form sum_j y_kj^2 / v_kj exceeds
# this + 16 d: more than 32 standard deviations from every mean, far beyond where points
# of p_t lie (a chi-square of d degrees of freedom), so their bits are unchanged. Beyond
# it the direct forms lose eps q of the log-weights (all of the cross terms once
# |x| >> |alpha mu| / eps) and eps^2 q / d of the divergence.
_FAR_QUADRATIC = 1024.0
# rows whose |log det C_k| exceeds this times d take the log-determinants relative to
# component 0 (GaussianMixture._log_dets)
_LOG_DET_SHIFT = 16.0
# Up to this dimension the full-covariance oracle projects in its own kernel
# (full_mixture_direct, 2 d^2 multiply-adds per pair, no BLAS call); above it, two BLAS
# products around full_mixture_responsibilities. Measured single-threaded (NumPy's BLAS
# and numba, K in {8, 64}): direct 4.5x as fast at d = 2, 1.3-1.5x at d = 4, 1.4-2.2x
# at d = 6, 0.7x at d = 8, 0.55x at d = 16.
_DIRECT_MAX_DIM = 6


def _full_block_rows(K, d, n):
    """Rows per block of the full-covariance score above _DIRECT_MAX_DIM (see _BLOCK_ELEMENTS):
    at least 1 and at most n. The same for every thread count where NumPy's BLAS can be set."""
    kd = K * d
    if blas_settable():
        rows = max(_BLOCK_ELEMENTS // kd, min(_BLOCK_MIN_ROWS, 8 * _BLOCK_ELEMENTS // kd))
    else:
        rows = _SHARED_BLAS_BLOCK_ELEMENTS // kd
    return max(1, min(rows, n))


def _tied_block_rows(d, n):
    """Rows per block of the tied-covariance oracle (_TIED_BLOCK_ELEMENTS): at least 1 and
    at most n. The same for every thread count where NumPy's BLAS can be set."""
    if blas_settable():
        rows = max(_TIED_BLOCK_ELEMENTS // d, _TIED_BLOCK_MIN_ROWS)
    else:
        rows = _SHARED_BLAS_BLOCK_ELEMENTS // d
    return max(1, min(rows, n))


def _log_group_size(spread):
    """How many factors v, each within exp(+-spread), the full-covariance kernels may multiply
    before one log: their product stays within exp(+-600), inside the float64 normal range
    (exp(-708) to exp(709)). A spread that is not finite (not reachable from validated
    input) gives 1, the safe end, never the largest group."""
    if not np.isfinite(spread):
        return 1
    return int(max(1, 600.0 // max(1.0, spread)))


class GaussianMixture(ExactOutputs):
    """Mixture sum_k w_k N(mu_k, Sigma_k) in R^d with an exact score oracle at any t.

    Parameters
    ----------
    weights : array_like, shape (K,)
        Non-negative, summing to 1 within 1e-8 (never renormalised). A zero weight is
        allowed and the component then has no effect.
    means : array_like, shape (K, d)
        Entries within +-1e150.
    covariances : None or array_like
        None: identity covariances (the paper's family). Otherwise its shape follows
        covariance_type, as in scikit-learn:

        ============  ============  =======================================
        "full"        (K, d, d)     one symmetric positive-definite matrix each
        "diag"        (K, d)        the variances of each component
        "tied"        (d, d)        one covariance shared by all components
        "spherical"   (K,)          one variance per component, Sigma_k = s_k I
        ============  ============  =======================================

        Variances and eigenvalues must lie in [1e-300, 1e300]; a full or tied covariance's
        smallest eigenvalue must also exceed d eps = 2.2e-16 d times its largest (a
        condition number below about 4.5e15 / d), as its entries determine it no better.
        Below that limit a full or tied oracle near t = 0 is as uncertain as the entries
        make it: relative errors up to about kappa eps, kappa the condition number
        (against mpmath, d = 4, at t = 0: the score 2e-7 and 1.3e-6 off at kappa = 1e10,
        2e-2 and 9e-2 at 1e15; 5e-11 at 1e6; from t = 1e-6 on, alpha_t^2 Sigma + sigma_t^2 I
        is better conditioned and the errors 2e-10 or less).
    covariance_type : None, "full", "diag", "tied" or "spherical"
        The form of covariances ("diagonal" is accepted for "diag", and "identity"
        with covariances None, the spellings of the covariance_type attribute). None
        reads the two forms this class has always accepted from the shape: (K, d)
        diagonal, (K, d, d) full. A (d, d) array with K = d >= 2 that is also a valid
        shared covariance (symmetric positive definite) could be either and is
        refused; "tied" and "spherical" are never guessed.

    Attributes
    ----------
    covariance_type : {"identity", "diagonal", "full", "tied", "spherical"}
    covariances : None or read-only ndarray, in the shape of its covariance_type

    Notes
    -----
    Full covariances are factorised once, Sigma_k = U_k diag(lam_k) U_k^T; at time t
    the covariance is U_k diag(alpha_t^2 lam_k + sigma_t^2) U_k^T, so a batch with one
    t per row costs O(n K d^2) and no factorisation per t. A tied covariance is
    factorised once for all components, Sigma = U diag(lam) U^T: in the coordinates
    U^T x the mixture is diagonal, so it costs O(n d^2 + n K d). Diagonal, spherical
    and identity covariances cost O(n K d). Work is done by sgm_ref.kernels.mixture.

    Raises
    ------
    ValueError
        For negative or non-normalised weights, booleans, non-finite or out-of-range
        values, mismatched shapes, an ambiguous or unknown covariance_type,
        non-symmetric or non-positive-definite covariances.
    """

    def __init__(self, weights, means, covariances=None, covariance_type=None):
        w = real_array(weights, "weights")
        mu = real_array(means, "means")
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got shape {w.shape}")
        K = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] == 0:
            raise ValueError(f"means must have shape (K, d) = ({K}, d) with d >= 1, got shape {mu.shape}")
        d = mu.shape[1]
        if np.any(w < 0):
            raise ValueError(f"weights must be >= 0, got min {plain(w.min())}")
        if abs(w.sum() - 1.0) > 1e-8:
            raise ValueError(
                f"weights must sum to 1 (within 1e-8), got sum {plain(w.sum())}; "
                "divide them by their sum yourself if that is what you mean"
            )
        check_means(mu)
        kind = _kind_name(covariance_type)
        active = w > 0
        self.weights, self.means = w, mu
        U = rotation = None
        if covariances is None:
            if kind not in (None, "identity"):
                raise ValueError(f"covariance_type={shown(covariance_type)} needs covariances; covariances=None means "
                                 "identity covariances (covariance_type None or 'identity')")
            kind, cov, lam = "identity", None, np.ones((K, d))
        else:
            if kind == "identity":
                raise ValueError("covariance_type='identity' takes covariances=None")
            cov = real_array(covariances, "covariances")
            if kind is None:
                kind = _infer_kind(cov, K, d)
            expected = {"full": (K, d, d), "diagonal": (K, d), "tied": (d, d), "spherical": (K,)}[kind]
            if cov.shape != expected:
                raise ValueError(f"covariances with covariance_type={_SKLEARN_NAME[kind]!r} must have shape "
                                 f"{expected}, got shape {cov.shape}")
            if kind == "diagonal":
                if np.any(cov <= 0):
                    raise ValueError("covariances (diagonal, shape (K, d)) must be > 0 everywhere")
                lam = cov
            elif kind == "spherical":
                if np.any(cov <= 0):
                    raise ValueError("covariances (spherical, shape (K,)) must be > 0 everywhere")
                lam = np.repeat(cov[:, None], d, axis=1)
            elif kind in ("full", "tied") and np.max(np.abs(cov)) > np.finfo(np.float64).max / 2:
                # eigh_spd's (C + C^T) / 2 would overflow ('not positive definite, smallest
                # eigenvalue nan' and a RuntimeWarning); such an entry is far beyond the range
                raise ValueError(f"covariances: eigenvalues must lie in [{MIN_VARIANCE:g}, {MAX_VARIANCE:g}] (so the "
                                 f"oracle's quadratic forms stay finite in float64), got an entry of size "
                                 f"{float(np.max(np.abs(cov))):.3g} (a symmetric positive-definite matrix has an "
                                 "eigenvalue at least its largest entry); rescale the target")
            elif kind == "full":
                lam, U = _eigh_spd(cov, "covariances")
            else:
                lam_tied, rotation = _eigh_spd(cov, "covariances")
                lam = np.broadcast_to(lam_tied, (K, d))
            check_variances(lam, "covariances", "variances" if U is None and rotation is None else "eigenvalues")
        self.covariance_type, self.covariances = kind, cov
        for arr in (self.weights, self.means, self.covariances):
            if arr is not None:
                arr.setflags(write=False)
        # Components of weight zero are dropped from the oracle: log 0 would only add
        # -inf terms to the log-sum-exp.
        self._logw = np.log(w[active])
        self._mu = np.ascontiguousarray(mu[active])
        self._lam = np.ascontiguousarray(lam[active])
        self._U = None if U is None else np.ascontiguousarray(U[active])
        # the full covariances themselves, for _far_rows' exact differences Sigma_k* - Sigma_k: the
        # (C + C^T) / 2 eigh_spd factorised (a C accepted with |C - C^T| up to 1e-10 |C| put that
        # asymmetry into the far rows' r^T (P_k - P_k*) r: 6e-13 of the divergence off)
        self._full = (None if kind != "full" else
                      np.ascontiguousarray(0.5 * (cov[active] + cov[active].transpose(0, 2, 1))))
        self._rotation = rotation
        # one covariance for all components (identity, tied, or equal rows): _far_rows' brackets are 0
        self._shared = bool(np.all(self._lam == self._lam[0]) and (U is None or np.all(self._U == self._U[0])))
        self._centre = np.exp(self._logw) @ self._mu
        # how many factors v = alpha^2 lam + sigma^2 (between min(lam, 1) and max(lam, 1))
        # the kernel may multiply before one log without leaving the float64 range: their
        # product lies within exp(+-600) (float64 reaches exp(+-708)); all d of them unless
        # the eigenvalues span more than exp(+-600 / d)
        self._log_group = _log_group_size(float(np.max(np.abs(np.log(self._lam)))))
        self._by_dtype = {}
        self._back_by_dtype = {}  # -U_all^T of the full-covariance oracle, per dtype

    # -- shape --------------------------------------------------------------------
    @property
    def n_components(self):
        return self.weights.shape[0]

    @property
    def dim(self):
        return self.means.shape[1]

    def __repr__(self):
        return (
            f"GaussianMixture(K={self.n_components}, d={self.dim}, "
            f"covariance_type={self.covariance_type!r})"
        )

    def component(self, k):
        """Component k alone, as a one-component GaussianMixture of the same covariance_type."""
        k = check_count(k, "k", minimum=0)
        if k >= self.n_components:
            raise ValueError(f"k must be < K = {self.n_components}, got {k}")
        if self.covariances is None or self.covariance_type == "tied":
            cov = self.covariances
        else:
            cov = self.covariances[k:k + 1]
        return GaussianMixture([1.0], self.means[k:k + 1], cov, self.covariance_type)

    # -- presets ------------------------------------------------------------------
    @classmethod
    def ring(cls, k=8, radius=2.0, std=0.3):
        """k equal-weight isotropic Gaussians of standard deviation std on a circle in R^2.

        The classic two-dimensional test target (default: 8 modes, radius 2, std 0.3).
        radius in [1e-150, 1e150] and std in [1e-150, 1e150] (the limits of the constructor).
        """
        k = check_size(check_count(k, "k"), 4, "k", "k modes")
        radius = check_real(radius, "radius", low=0.0, low_open=True, high=MAX_MEAN)
        if radius < 1e-150:  # subnormal-scale means lose their digits (|mu| is not radius)
            raise ValueError(f"radius must be at least 1e-150 (means at a smaller scale lose their digits in "
                             f"float64), got {radius:g}")
        std = check_real(std, "std", low=0.0, low_open=True)
        if not np.sqrt(MIN_VARIANCE) <= std <= np.sqrt(MAX_VARIANCE):
            raise ValueError(f"std must be in [{np.sqrt(MIN_VARIANCE):g}, {np.sqrt(MAX_VARIANCE):g}] (its square is a "
                             f"variance), got {plain(std)}")
        angles = 2.0 * np.pi * np.arange(k) / k
        means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return cls(np.full(k, 1.0 / k), means, np.full((k, 2), std * std), covariance_type="diag")

    @classmethod
    def paper_family(cls, d, k, radius, rng):
        """Cole & Lu's example: k equal weights, identity covariances, means of norm radius.

        The directions are uniform on the sphere S^{d-1}, drawn from rng (a Generator,
        or an int seed given to numpy.random.default_rng). f(x) = log sum_k w_k
        exp(mu_k . x - radius^2 / 2) is Lipschitz with constant radius in every d.
        radius 0 or in [1e-150, 1e150].
        """
        d = check_count(d, "d")
        k = check_count(k, "k")
        check_size(k, 2 * d, "k", f"k means in d = {d}")
        radius = check_real(radius, "radius", low=0.0, high=MAX_MEAN)
        if 0 < radius < 1e-150:  # subnormal-scale means lose their digits (|mu| is not radius)
            raise ValueError(f"radius must be 0 or at least 1e-150 (means at a smaller scale lose their digits in "
                             f"float64), got {radius:g}")
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            if rng < 0:  # numpy's own message ('expected non-negative integer') names no argument
                raise ValueError(f"rng (a Generator or an int seed) must be a seed >= 0, got {int(rng)}")
            rng = np.random.default_rng(rng)
        rng = check_rng(rng, "rng (a Generator or an int seed)")
        directions = rng.standard_normal((k, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return cls(np.full(k, 1.0 / k), radius * directions)

    # -- serialisation --------------------------------------------------------------
    def to_dict(self):
        """JSON-ready dict: weights, means, covariances (None for identity), and covariance_type
        in scikit-learn's spelling when the shape alone would not read back as this form
        (tied, spherical, and a diagonal (d, d) array that could be a shared covariance),
        so the records of the forms read from their shape stay as they always were."""
        spec = {"weights": self.weights.tolist(), "means": self.means.tolist(),
                "covariances": None if self.covariances is None else self.covariances.tolist()}
        if self.covariances is not None:
            try:
                inferred = _infer_kind(self.covariances, self.n_components, self.dim)
            except ValueError:
                inferred = None
            if inferred != self.covariance_type:
                spec["covariance_type"] = _SKLEARN_NAME[self.covariance_type]
        return spec

    @classmethod
    def from_dict(cls, spec):
        """Inverse of to_dict; validates like the constructor (covariance_type optional, as there)."""
        keys = "'weights', 'means' and optionally 'covariances' and 'covariance_type'"
        if not isinstance(spec, dict) or not {"weights", "means"} <= set(spec):
            raise ValueError(f"a mixture spec must be a dict with keys {keys}")
        unknown = set(spec) - {"weights", "means", "covariances", "covariance_type"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in a mixture spec; the keys are {keys}")
        return cls(spec["weights"], spec["means"], spec.get("covariances"), spec.get("covariance_type"))

    # -- the law at time t --------------------------------------------------------------
    def at(self, t, process=OU()):
        """The forward marginal p_t as a GaussianMixture (t a scalar), of the same covariance_type.

        Means alpha_t mu_k, covariances alpha_t^2 Sigma_k + sigma_t^2 I, under any process
        of sgm_ref.processes. Identity covariances stay the identity under a
        variance-preserving process (OU, VP, VPCosine or DDPM: alpha_t^2 + sigma_t^2 = 1);
        under any other (VE, EDM, SubVP, FlowMatching) they become spherical, of variance
        alpha_t^2 + sigma_t^2.
        """
        try:
            several = isinstance(t, (list, tuple, np.ndarray)) and np.size(t) != 1
        except ValueError:  # ragged: the process's check names it
            several = False
        if several:  # the oracle's check would ask for 'one value per row', rows at() does not have
            raise ValueError(f"t must be a scalar: at() gives p_t at one time, got shape {np.shape(t)}; for one "
                             "t per point use log_prob or score")
        # any process (it asked for a variance-preserving one, refusing EDM's exact marginal of a full
        # covariance with "process must be OU(), VP(...), ...", a review)
        process = check_process(process, variance_preserving=False)
        a, s2 = process._coefficients(t, 1)
        a, s2 = a[0], s2[0]
        kind = self.covariance_type
        if kind == "identity" and isinstance(process, VariancePreserving):
            cov = None
        elif kind == "identity":
            kind, cov = "spherical", np.full(self.n_components, a * a + s2)
        elif kind in ("diagonal", "spherical"):
            cov = a * a * self.covariances + s2
        else:
            cov = a * a * self.covariances + s2 * np.eye(self.dim)
        return GaussianMixture(self.weights, a * self.means, cov, kind)

    def mean(self):
        """Mean of p_0: sum_k w_k mu_k, shape (d,)."""
        return self.weights @ self.means

    def covariance(self):
        """Covariance of p_0: sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T, shape (d, d)."""
        m = self.mean()
        kind = self.covariance_type
        if kind == "identity":
            within = np.eye(self.dim)
        elif kind == "diagonal":
            within = np.diag(self.weights @ self.covariances)
        elif kind == "spherical":
            within = (self.weights @ self.covariances) * np.eye(self.dim)
        elif kind == "tied":
            within = self.covariances.copy()
        else:
            within = np.einsum("k,kij->ij", self.weights, self.covariances)
        centred = self.means - m
        return within + (centred.T * self.weights) @ centred

    # -- sampling -----------------------------------------------------------------------
    def sample(self, n, rng, dtype=np.float64, return_labels=False):
        """Draw n points from p_0.

        Parameters
        ----------
        n : int >= 1
            At most what this machine's memory holds (about 2 n (d + 1) numbers).
        rng : numpy.random.Generator
        dtype : float64 or float32
        return_labels : bool
            Also return the component index of each point.

        Returns
        -------
        x : ndarray, shape (n, d)
        labels : ndarray of int, shape (n,), only if return_labels
        """
        n = check_size(check_count(n, "n"), 2 * (self.dim + 1), "n", f"n points in d = {self.dim}")
        rng = check_rng(rng)
        dtype = check_float_dtype(dtype)
        if dtype == np.float32:
            check_float32_samples(self._mu, self._lam, repr(self))
        labels = rng.choice(self.n_components, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        kind = self.covariance_type
        if kind == "identity":
            x = self.means[labels] + z
        elif kind == "diagonal":
            x = self.means[labels] + z * np.sqrt(self.covariances[labels])
        elif kind == "spherical":
            x = self.means[labels] + z * np.sqrt(self.covariances[labels])[:, None]
        elif kind == "tied":
            x = self.means[labels] + (z * np.sqrt(self._lam[0])) @ self._rotation.T
        else:
            # the eigen-factorisation of the active components; zero-weight ones are never drawn
            active = np.flatnonzero(self.weights > 0)
            x = np.empty_like(z)
            for row, k in enumerate(active):
                idx = labels == k
                x[idx] = self.means[k] + (z[idx] * np.sqrt(self._lam[row])) @ self._U[row].T
        x = x.astype(dtype, copy=False)
        return (x, labels) if return_labels else x

    # -- the oracle ---------------------------------------------------------------------
    def log_prob(self, x, t=0.0, process=OU()):
        """Exact log-density of the forward marginal p_t at each row of x.

        log p_t(x) = logsumexp_k [log w_k + log N(x; alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I)]

        Parameters
        ----------
        x : ndarray, shape (n, d), float64 or float32
            float32 points need means within +-1e15 and variances in [1e-30, 1e30].
        t : float or ndarray of shape (n,)
            One time for all rows or one per row, >= 0 (and <= process.t_max).
        process : any process of sgm_ref.processes (OU by default)

        Returns
        -------
        ndarray, shape (n,), dtype of x

        Raises
        ------
        ValueError
            For bad x or t, and for a point so far out that log p_t overflows the dtype.
        """
        return self._evaluate(x, t, process, want_score=False)[0]

    def score(self, x, t=0.0, process=OU()):
        """Exact score grad_x log p_t(x) at each row of x.

        grad log p_t(x) = -sum_k pi_k(x) (alpha_t^2 Sigma_k + sigma_t^2 I)^{-1} (x - alpha_t mu_k),
        pi_k(x) the posterior probability of component k (computed by log-sum-exp).

        Parameters, Raises and shapes as log_prob; returns ndarray of shape (n, d), dtype of x.
        With float32 points and full or tied covariances (d > 6 for full) the projections
        are float32 products, whose rounding acts like moving x by about
        6e-8 sqrt(d) |x - alpha_t c|, c = sum_k w_k mu_k. Where the means lie within their
        components' spread of c the relative error of a row is about 6e-8 sqrt(kappa_t)
        and below 6e-8 (32 + kappa_t), kappa_t the condition number of a component
        covariance at time t: 2e-4 at worst for eigenvalues 1e-4 to 1 at t = 0. For modes
        far apart it is larger whatever kappa_t: up to 2.8e-4 over 400 points for two
        modes at (+-1000, 0) with kappa_t < 2, more over more points (sgm_ref.kernels.mixture
        has the bound and the measurements).
        """
        return self._evaluate(x, t, process, want_score=True)[1]

    def log_prob_and_score(self, x, t=0.0, process=OU()):
        """(log_prob, score) from one pass over the components."""
        return self._evaluate(x, t, process, want_score=True)

    def _params(self, dtype):
        """Component arrays for points of dtype (made once per dtype).

        Returns (mu, lam, U_all, centre): identity, diagonal and spherical have U_all
        None and mu the means; tied has U_all its (d, d) eigenbasis and mu the means
        rotated into it about the centre c; full has U_all = [U_1, ..., U_K] (d, K d)
        and mu the projections U_k^T (mu_k - c). Only U_all, the matrix products'
        operand, is in dtype: mu, lam and centre stay float64 whatever the points, since
        the kernels compute in float64 and rounding them to float32 cost up to
        u |mu| / sqrt(lam) (a 1.4% score error for unit variances about means of 1e4).
        """
        if dtype not in self._by_dtype:
            if dtype == np.float32:
                check_float32_range(self._mu, self._lam, repr(self))
            lam, centre = self._lam, self._centre
            if self._U is not None:
                K, d = self._lam.shape
                U_all = np.ascontiguousarray(self._U.transpose(1, 0, 2).reshape(d, K * d))
                # projected about the centre c of the means (x - a c is formed before the
                # product), so means far from 0 do not cost digits in U^T x - a U^T mu
                mu = np.einsum("kji,kj->ki", self._U, self._mu - self._centre)
            elif self._rotation is not None:
                U_all = self._rotation
                mu = (self._mu - self._centre) @ self._rotation
            else:
                U_all, mu = None, self._mu
            U_all = None if U_all is None else U_all.astype(dtype)
            self._by_dtype[dtype] = (np.ascontiguousarray(mu), lam, U_all, centre)
        return self._by_dtype[dtype]

    def _group_for(self, a, s2):
        """The log-determinant's group size when alpha^2 + sigma^2 is not 1 (VE, EDM, ...).

        Then v = alpha^2 lam + sigma^2 is no longer between min(lam, 1) and max(lam, 1);
        it lies between its values at the smallest and largest eigenvalue, so the group
        is set from those.
        """
        a2 = a * a
        with np.errstate(divide="ignore", over="ignore"):
            ends = np.log(np.concatenate([a2 * self._lam.min() + s2, a2 * self._lam.max() + s2]))
        return _log_group_size(float(np.max(np.abs(ends), initial=0.0)))  # no points: any group

    def _evaluate(self, x, t, process, want_score):
        x = check_points(x, "x", d=self.dim)
        n, d = x.shape
        a, s2 = check_process(process, variance_preserving=False)._coefficients(t, n)
        mu, lam, U_all, centre = self._params(x.dtype)
        logp = np.empty(n, dtype=x.dtype)
        score = np.empty((n, d), dtype=x.dtype) if want_score else None
        out = score if want_score else np.empty((1, 1), dtype=x.dtype)
        if U_all is None:
            identity = self.covariance_type == "identity"
            diagonal_mixture(x, a, s2, self._logw, mu, lam, identity, want_score, logp, out)
        elif self.covariance_type == "tied":
            # in the shared eigenbasis every component is diagonal; rotate in, and back, by
            # blocks of rows on Python threads with the products on one BLAS thread each
            # (run_blocks), so the bits do not depend on the thread count
            rows = _tied_block_rows(d, n)
            U_back = U_all.T

            def make_worker():
                # two block buffers per thread: x - a c, then the rotated score (in Z, free once
                # rotated), and the rotation; three cost ~1.5x at d = 8, n = 4096 (malloc gave the
                # freed megabyte back to the system, and every call faulted its pages in again)
                Z, R = np.empty((rows, d), x.dtype), np.empty((rows, d), x.dtype)

                def work(b):
                    block = slice(b * rows, min(b * rows + rows, n))
                    r = block.stop - block.start
                    # x - a c in float64 (float32 points widened), rounded once to x's dtype
                    centred_rows_into(x[block], a[block], centre, Z[:r])
                    np.matmul(Z[:r], U_all, out=R[:r])
                    diagonal_mixture_serial(R[:r], a[block], s2[block], self._logw, mu, lam, False, want_score,
                                            logp[block], Z[:r] if want_score else out)
                    if want_score:
                        np.matmul(Z[:r], U_back, out=score[block])
                return work

            run_blocks(-(-n // rows), make_worker)
        else:
            K = lam.shape[0]
            group = self._log_group if isinstance(process, VariancePreserving) else self._group_for(a, s2)
            if d <= _DIRECT_MAX_DIM:  # projects in float64: the float64 eigenbases whatever x's dtype
                U64 = self._params(np.float64)[2]
                full_mixture_direct(x, a, s2, self._logw, centre, mu, lam, U64, group, want_score, logp, out)
                check_oracle_output(logp, x)
                return logp, score
            rows = _full_block_rows(K, d, n)
            # the score is -P U_all^T: multiplying by -U_all^T gives it in one product
            # (the same bits: a sign flip commutes with every rounding); made once per dtype
            if want_score and x.dtype not in self._back_by_dtype:
                self._back_by_dtype[x.dtype] = np.negative(U_all).T
            U_back = self._back_by_dtype.get(x.dtype)

            def make_worker():
                # one set of block buffers per thread, not a new projection array per block
                Z, P_all, logc = np.empty((rows, d), x.dtype), np.empty((rows, K * d), x.dtype), np.empty((rows, K))

                def work(b):
                    block = slice(b * rows, min(b * rows + rows, n))
                    r = block.stop - block.start
                    centred_rows_into(x[block], a[block], centre, Z[:r])
                    P = P_all[:r]
                    np.matmul(Z[:r], U_all, out=P)
                    full_mixture_responsibilities(P, a[block], s2[block], self._logw, mu, lam, group,
                                                  logp[block], logc[:r])
                    if want_score:
                        np.matmul(P, U_back, out=score[block])
                return work

            run_blocks(-(-n // rows), make_worker)
        check_oracle_output(logp, x)
        return logp, score

    # -- per component, in NumPy: the denoiser and the Laplacian ------------------------------
    def _component_blocks(self, x, t, process, want_delta=False):
        """x checked, and an iterator over blocks of its rows, each (rows, alpha (r, 1, 1),
        v (r, K, d), y (r, K, d), u = y / v, pi (r, K), far): v = alpha^2 lam_k + sigma^2, y the
        residual U_k^T (x - alpha mu_k) in component k's eigenbasis, pi the posterior weights
        (log-sum-exp), far None or (rows far out, their g_k - g_k* (m, K, d)) (_far_rows; with
        want_delta, else None in place of g_k - g_k*). In float64 whatever x's dtype; a point
        too far out gives non-finite values, which the callers name (check_oracle_output)."""
        x = check_points(x, "x", d=self.dim)
        n, d = x.shape
        a, s2 = check_process(process, variance_preserving=False)._coefficients(t, n)
        if x.dtype == np.float32:
            check_float32_range(self._mu, self._lam, repr(self))
        return x, self._blocks_of(x.astype(np.float64, copy=False), a, s2, want_delta)

    def _blocks_of(self, xx, a, s2, want_delta=False):
        n, d = xx.shape
        lam, mu, U, R = self._lam, self._mu, self._U, self._rotation
        rows = max(1, _DIVERGENCE_BLOCK_ELEMENTS // (lam.shape[0] * d * (d if U is not None else 1)))
        far_q = _FAR_QUADRATIC + 16.0 * d
        for start in range(0, n, rows):
            blk = slice(start, min(start + rows, n))
            ab, sb = a[blk, None, None], s2[blk, None, None]
            v = ab * ab * lam + sb                                          # (r, K, d)
            diff = xx[blk, None, :] - ab * mu                               # x - alpha mu_k
            if U is not None:
                y = np.einsum("rkj,kji->rki", diff, U)                     # U_k^T (x - alpha mu_k)
            elif R is not None:  # without BLAS: a BLAS product's bits depend on the thread count
                y = rotate_rows(diff.reshape(-1, d), R).reshape(diff.shape)
            else:
                y = diff
            with np.errstate(over="ignore", invalid="ignore"):           # a point too far out: named later
                u = y / v
                q = np.sum(y * u, axis=2)
                logc = self._logw - 0.5 * (q + self._log_dets(ab * ab, v))
                top = np.max(logc, axis=1, keepdims=True)
                pi = np.exp(logc - top)
                pi /= np.sum(pi, axis=1, keepdims=True)
            # rows far from every component (and not too far for float64) again about a reference
            # component: there x - alpha mu_k rounds alike for all k (_far_rows)
            far, idx = None, ()
            if q.max(initial=-np.inf) > far_q:  # (the minimum over k column by column: np.min(q, axis=1)
                closest = q[:, 0].copy()         # over K = 8 took as long as the rest at d = 2)
                for k in range(1, q.shape[1]):
                    np.fmin(closest, q[:, k], out=closest)
                idx = np.flatnonzero((closest > far_q) & np.isfinite(top[:, 0]))
            if len(idx):
                pi_far, delta = self._far_rows(xx[blk][idx], a[blk][idx], v[idx], np.argmax(logc[idx], axis=1),
                                               want_delta)
                # where a term overflowed (variances 1e600 apart), the row keeps its direct forms
                ok = np.all(np.isfinite(pi_far), axis=1)
                if want_delta:
                    ok &= np.all(np.isfinite(delta) | (pi_far[:, :, None] == 0), axis=(1, 2))
                idx, pi_far = idx[ok], pi_far[ok]
                pi[idx] = pi_far
                far = (idx, None if delta is None else delta[ok]) if idx.size else None
            yield blk, ab, v, y, u, pi, far

    def _log_dets(self, a2, v):
        """log det C_k = sum_j log v_kj (r, K), up to a constant per row; a2 = alpha^2 (r, 1, 1).

        Rows where some |log det C_k| exceeds _LOG_DET_SHIFT d (a geometric-mean variance
        beyond e^{+-16}: EDM's sigma_t past about 3000) get log det C_k - log det C_0, the
        common part dropped before it meets log w_k: there the rounding of log w_k - log det / 2
        (eps |log det| / 2, 1.4e-14 of the means' scale in x0 at EDM's sigma = 1e100, d = 3)
        moved the weights although the determinants' differences are tiny. The difference is
        sum_j log1p(alpha^2 (lam_kj - lam_0j) / v_0j), from the variances, not from the rounded
        v (as _far_rows), and log v_kj - log v_0j where the ratio is far from 1. Other rows
        keep the plain sum, bit for bit.
        """
        with np.errstate(divide="ignore", over="ignore", invalid="ignore"):  # non-finite: named by the callers
            logv = np.log(v)
            L = np.sum(logv, axis=2)
            big = np.flatnonzero(np.max(np.abs(L), axis=1, initial=0.0) > _LOG_DET_SHIFT * v.shape[2])
            if big.size:
                L = L.copy()
                ratio = a2[big] * (self._lam - self._lam[0]) / v[big][:, :1, :]
                plain = logv[big] - logv[big][:, :1, :]
                L[big] = np.sum(np.where(np.abs(ratio) <= 0.5, np.log1p(ratio), plain), axis=2)
        return L

    def _far_rows(self, x, a, v, ref, want_delta):
        """Posteriors pi (m, K) and, with want_delta, g_k - g_k* (m, K, d) at rows far out.

        Once |x| >> |alpha mu_k| / eps the residuals x - alpha mu_k round to the same
        numbers for every k: the quadratic forms lose their cross terms 2 alpha x . mu_k / v
        (the wrong component gets the weight) and g_k - s becomes a difference of rounded
        scores of size |x| / v. Here everything is taken relative to a reference component
        k* (ref, the largest log-weight of the first pass) with r = x - alpha mu_k* and
        f_k = alpha (mu_k* - mu_k), in component k's eigenbasis (r_k = U_k^T r,
        f_k = U_k^T f_k), so that y_k = r_k + f_k is never formed:

            q_k - q_k* = (r_k^T r_k / v_k - r_k*^T r_k* / v_k*) + f_k . (2 r_k + f_k) / v_k,
            g_k - g_k* = (U_k* (r_k* / v_k*) - U_k (r_k / v_k)) - U_k (f_k / v_k).

        The first brackets are taken from the covariances' differences, with
        P_k - P_k* = P_k alpha^2 (Sigma_k* - Sigma_k) P_k*: sum_j r_j^2 alpha^2 (lam_k*j -
        lam_kj) / (v_kj v_k*j) and its vector form where the eigenbasis is shared (diagonal,
        spherical), r^T P_k alpha^2 (Sigma_k* - Sigma_k) P_k* r for full covariances (the
        difference of the rounded v or P_k r carried eps q, beside a difference of size
        alpha^2 |Sigma_k* - Sigma_k| q), and exactly 0 for components of equal covariances;
        what is left is of size |f| |r| / v and |f| / v, without cancellation. x (m, d), a
        (m,), v (m, K, d) float64.

        Left as it is: f_k . r carries an absolute error of about eps |f| |r| / v (the rounding
        of r and of the products), as much as one ulp of x moves the exact value. Within that
        of a bisector (|x . (mu_k - mu_l)| below about eps |x| |mu_k - mu_l|) the weights are
        as uncertain as x's last bit makes them, and once eps |f| |r| / v >> 1 there they can
        come out balanced where the exact ones are 0 and 1 (three identity-covariance components
        in d = 3, x at 1e30 on the bisector of two means 3.3 apart, OU at t = 0.5: a divergence
        of -2.03 for -3).
        """
        m, d = x.shape
        mu, U, R = self._mu, self._U, self._rotation
        rows = np.arange(m)
        vs = v[rows, ref][:, None, :]                                       # v_k*, (m, 1, d)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            r = x - a[:, None] * mu[ref]                                    # x - alpha mu_k*
            f = a[:, None, None] * (mu[ref][:, None, :] - mu)               # alpha (mu_k* - mu_k)
            if self._shared:  # the brackets are 0: q_k - q_k* = f_k . (2 r + f_k) / v, g_k - g_k* = -P f_k
                if R is not None:
                    rk, fk = rotate_rows(r, R)[:, None, :], rotate_rows(f.reshape(-1, d), R).reshape(f.shape)
                elif U is not None:
                    rk, fk = np.einsum("rj,ji->ri", r, U[0])[:, None, :], np.einsum("rkj,ji->rki", f, U[0])
                else:
                    rk, fk = r[:, None, :], f
                rc = quad = 0.0
            elif U is not None:
                rk = np.einsum("rj,kji->rki", r, U)
                fk = np.einsum("rkj,kji->rki", f, U)
                back = np.einsum("kij,rkj->rki", U, rk / v)                 # P_k r = U_k (r_k / v_k)
                # P_k - P_k* = P_k alpha^2 (Sigma_k* - Sigma_k) P_k*, the covariances' difference taken
                # from the covariances (exact where they are close), not from the rounded P_k r - P_k* r
                # (rows grouped by k*: one (K, d, d) difference per reference, not one (m, K, d, d) array;
                # d = 128, K = 8, all rows far: the divergence's peak 10.1 -> 2.2 MiB, time unchanged)
                spread = np.empty_like(back)
                for k in np.unique(ref):
                    on = np.flatnonzero(ref == k)
                    spread[on] = (a[on] * a[on])[:, None, None] * np.einsum(
                        "kij,rj->rki", self._full[k] - self._full, back[on, k])
                quad = np.sum(back * spread, axis=2)                        # r^T (P_k - P_k*) r
            else:
                if R is not None:
                    r = rotate_rows(r, R)
                    f = rotate_rows(f.reshape(-1, d), R).reshape(f.shape)
                rk, fk = r[:, None, :], f
                # r (1 / v_k - 1 / v_k*) = r (v_k* - v_k) / (v_k v_k*) with v_k* - v_k = alpha^2 (lam_k* -
                # lam_k) from the variances (the rounded v's difference carried eps v: the weights of two
                # variances 1 and 2 at OU's t = 15 were 1.2e-4 off); divided in turn, as v_k v_k* may
                # underflow (variances of 1e-200); 0 where r_j = 0 (the coefficient may be inf)
                dv = (a * a)[:, None, None] * (self._lam[ref][:, None, :] - self._lam)
                rc = np.where(rk == 0.0, 0.0, rk * ((dv / v) / vs))
                quad = np.sum(rk * rc, axis=2)
            logc = self._logw - 0.5 * ((quad + np.sum(fk * ((2.0 * rk + fk) / v), axis=2))
                                       + self._log_dets((a * a)[:, None, None], v))
            pi = np.exp(logc - np.max(logc, axis=1, keepdims=True))
            pi /= np.sum(pi, axis=1, keepdims=True)
            delta = None
            if want_delta:
                if self._shared:
                    delta = -(fk / v) if U is None else -np.einsum("ij,rkj->rki", U[0], fk / v)
                elif U is not None:  # P_k* r - P_k r = -P_k alpha^2 (Sigma_k* - Sigma_k) P_k* r
                    delta = -np.einsum("kij,rkj->rki", U, (np.einsum("rkj,kji->rki", spread, U) + fk) / v)
                else:
                    delta = -rc - fk / v
        return pi, delta

    def _posterior_mean(self, x, t, process):
        """E[x0 | x_t = x], float64 (n, d), without Tweedie's cancellation.

        x0 = sum_k pi_k (mu_k + alpha_t Sigma_k C_k^{-1} (x - alpha_t mu_k)), C_k =
        alpha_t^2 Sigma_k + sigma_t^2 I, Sigma_k C_k^{-1} = U_k diag(lam_k / v_k) U_k^T:
        each term is well conditioned, where (x + sigma_t^2 score) / alpha_t loses the
        digits of x / alpha_t that cancel (all of them by OU's t = 40). In NumPy, by
        blocks of rows, as divergence (ExactOutputs.predict); far from every component the
        weights pi_k are taken about a reference component (_far_rows), where the rounded
        |x - alpha_t mu_k|^2 had put x0 6.5e-9 off at |x| = 1e8.
        """
        x, blocks = self._component_blocks(x, t, process)
        lam, mu, U, R = self._lam, self._mu, self._U, self._rotation
        out = np.empty(x.shape)
        R_back = None if R is None else np.ascontiguousarray(R.T)
        for blk, ab, v, y, _, pi, _ in blocks:
            with np.errstate(over="ignore", invalid="ignore"):
                # alpha (lam / v) y in the eigenbasis: lam / v <= 1 / alpha^2, where lam y may overflow
                shrunk = ab * (lam / v) * y
                if R is not None:
                    # one shared eigenbasis: sum_k pi_k R s_k = R sum_k pi_k s_k, one rotation back per row
                    inner = np.einsum("rk,rki->ri", pi, np.where(pi[:, :, None] > 0, shrunk, 0.0))
                    out[blk] = np.einsum("rk,ki->ri", pi, mu) + rotate_rows(inner, R_back)
                    continue
                if U is not None:
                    shrunk = np.einsum("kij,rkj->rki", U, shrunk)
                each = mu + shrunk                                          # E[x0 | x_t = x, component k]
                out[blk] = np.einsum("rk,rki->ri", pi, np.where(pi[:, :, None] > 0, each, 0.0))
        check_oracle_output(out.sum(axis=1), x)
        return out

    def divergence(self, x, t=0.0, process=OU()):
        """Exact divergence of the score, the Laplacian of log p_t, at each row of x.

        With g_k = -P_k (x - alpha_t mu_k) the score of component k (P_k its precision
        (alpha_t^2 Sigma_k + sigma_t^2 I)^{-1}), pi_k the posteriors and s = sum_k pi_k g_k
        the mixture's score, the Hessian of log p_t is sum_k pi_k (-P_k + g_k g_k^T) - s s^T,
        so its trace is

            div s(x) = -sum_k pi_k tr P_k + sum_k pi_k |g_k - s|^2,

        the second sum written as a variance about s rather than as
        sum_k pi_k |g_k|^2 - |s|^2, which cancels where one component dominates. Far from
        every component (sum_j y_kj^2 / v_kj > 1024 + 16 d for every k), where x - alpha_t mu_k
        rounds alike for all k, the weights and g_k - s are taken about a reference component
        instead (_far_rows): the ring under VE at x = (1e20, 0) had +1.7e10 for -22.2.
        tr P_k = sum_j 1 / (alpha_t^2 lam_kj + sigma_t^2) from the eigenvalues lam_kj.

        Parameters, shapes and Raises as log_prob, and for float32 points where the divergence
        is beyond float32's range (never an inf); returns ndarray of shape (n,), dtype of x
        (computed in float64). Costs O(n K d^2) for full and tied covariances (the tied
        residuals x - alpha_t mu_k rotated into the shared eigenbasis one by one, in a numba
        kernel rather than a BLAS product, so that no bit depends on the thread count),
        O(n K d) otherwise, in NumPy.
        """
        x, blocks = self._component_blocks(x, t, process, want_delta=True)
        U = self._U
        out = np.empty(x.shape[0])
        for blk, _, v, _, u, pi, far in blocks:
            with np.errstate(over="ignore", invalid="ignore"):
                # the component scores in the original coordinates (orthogonal maps keep norms,
                # so tied covariances can stay in their shared eigenbasis)
                g = -np.einsum("kij,rkj->rki", U, u) if U is not None else -u
                s = np.einsum("rk,rki->ri", pi, g)
                # a component of no weight may have an infinite score (variances 1e-300 beside
                # 1e300): 0 * inf is not its share of s
                if not np.isfinite(np.sum(s)):
                    bad = np.flatnonzero(~np.all(np.isfinite(s), axis=1))
                    s[bad] = np.einsum("rk,rki->ri", pi[bad], np.where(pi[bad, :, None] > 0, g[bad], 0.0))
                spread = np.sum((g - s[:, None, :]) ** 2, axis=2)
                if far is not None:
                    # rows far out: the same spread from g_k - g_k* (_far_rows), where g_k - s
                    # would be the difference of two rounded scores of size |x| / v
                    idx, delta = far
                    pf = pi[idx]
                    delta = np.where(pf[:, :, None] > 0, delta, 0.0)
                    mean = np.einsum("rk,rki->ri", pf, delta)
                    spread[idx] = np.sum((delta - mean[:, None, :]) ** 2, axis=2)
                # a component of no weight may have an infinite residual: leave it out (0 * inf)
                spread = np.where(pi > 0, spread, 0.0)
                out[blk] = np.sum(pi * (spread - np.sum(1.0 / v, axis=2)), axis=1)
        check_oracle_output(out, x)
        return cast_oracle_output(out, x, "divergence")
