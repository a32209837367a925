"""Targets that are the same up to isometry in every dimension d.

A target p_0 = exp(f) gamma_d / Z whose f depends on x only through P^T x, with P a
(d, k) matrix of orthonormal columns, is the k-dimensional law exp(f_k) gamma_k / Z_k on
the subspace range(P) times the standard Gaussian on its orthogonal complement. Fixing
f_k and drawing P from a seeded Haar (uniformly random) frame, d changes nothing but the
ambient dimension: distances between means, path norms, the k-dimensional marginal and
every error that lives in the subspace are the same in every d.

    embedding(d, k, rng)      P: QR of a (d, k) Gaussian matrix, signs fixed so that
                              R has a positive diagonal (then P is Haar distributed)
    isometric_mixture(...)    K identity-covariance components, means P m_k with fixed
                              m_k in R^k (a GaussianMixture: exact oracle)
    SubspaceTilt              exp(f_k(P^T x)) gamma_d / Z with f_k a two-layer tanh network
                              in R^k; exact samples and a Monte-Carlo oracle in R^k

For SubspaceTilt the forward marginal factorises the same way (the OU semigroup acts
coordinate-wise), so with u = P^T x

    grad log p_t(x) = -x + P (grad log q_t(u) + u),

q_t the k-dimensional marginal of exp(f_k) gamma_k: its Mehler form
grad log q_t(u) = -u + alpha_t E_Z[e^{f_k(y)} grad f_k(y)] / E_Z[e^{f_k(y)}],
y = alpha_t u + sigma_t Z, Z ~ N(0, I_k), is estimated over n_mc draws of Z fixed at
construction. The oracle's cost and error do not depend on d.
"""

import numpy as np

from .._validation import check_count, check_float_dtype, check_oracle_output, check_points, check_rng
from ..processes import OU, VariancePreserving, check_process
from ..targets import GaussianMixture
from ..targets._checks import check_size

__all__ = ["embedding", "isometric_mixture", "SubspaceTilt"]

_LOG_2PI = float(np.log(2.0 * np.pi))
_BLOCK = 2**21  # numbers per block of (rows, n_mc, k) Monte-Carlo points
_MAX_PROPOSALS = 2**40  # rejection sampling refused beyond about 10^12 expected proposals (hours of work)


def embedding(d, k, rng):
    """A Haar-random (d, k) matrix with orthonormal columns, k <= d.

    P = Q diag(sign(diag R)) from the reduced QR decomposition G = Q R of a standard
    Gaussian (d, k) matrix drawn from rng; the sign fix makes the law of P exactly
    uniform on the Stiefel manifold (Mezzadri 2007).

    Raises
    ------
    ValueError
        For k > d, non-integers, or rng not a Generator.
    """
    d, k = check_count(d, "d"), check_count(k, "k")
    if k > d:
        raise ValueError(f"the subspace dimension k = {k} must be <= d = {d}; use d >= {k}")
    G = check_rng(rng).standard_normal((d, k))
    Q, R = np.linalg.qr(G)
    return Q * np.where(np.diag(R) < 0, -1.0, 1.0)


def isometric_mixture(d, means_k, rng):
    """Equal-weight identity-covariance mixture with means P m_k, P = embedding(d, k, rng).

    Parameters
    ----------
    d : int >= k
    means_k : array_like, shape (K, k)
        The means in the subspace (the fixed geometry).
    rng : numpy.random.Generator or int seed >= 0
        Draws the embedding only (a seed through numpy.random.default_rng).

    Returns
    -------
    GaussianMixture

    Raises
    ------
    ValueError
        For means_k not of shape (K, k), d < k, or an rng that is neither a Generator nor
        an int seed >= 0 (named as rng).
    """
    m = np.asarray(means_k, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"means_k must have shape (K, k) with K, k >= 1, got shape {m.shape}")
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:  # numpy's own message ('expected non-negative integer') names no argument
            raise ValueError(f"rng (a Generator or an int seed) must be a seed >= 0, got {int(rng)}")
        rng = np.random.default_rng(rng)
    P = embedding(d, m.shape[1], check_rng(rng, "rng (a Generator or an int seed)"))
    return GaussianMixture(np.full(m.shape[0], 1.0 / m.shape[0]), m @ P.T)


class SubspaceTilt:
    """p_0 = exp(f(P^T x)) gamma_d / Z, f(u) = sum_j a_j tanh(w_j . u + b_j) in R^k (module docstring).

    Parameters
    ----------
    W : array_like, shape (width, k)
        Unit directions in R^k (not renormalised: their norms enter the path norm).
    b, a : array_like, shape (width,)
    P : ndarray, shape (d, k)
        Orthonormal columns (embedding()); checked to 1e-10.
    n_mc : int
        Monte-Carlo draws of Z in R^k for the oracle.
    rng : numpy.random.Generator
        Draws the oracle's Z and the normaliser's points (once, here).
    n_normaliser : int
        Points of gamma_k for log Z = log E[e^f].
    """

    def __init__(self, W, b, a, P, *, n_mc=4096, rng, n_normaliser=2**16):
        self.W, self.b, self.a = (np.asarray(v, dtype=np.float64) for v in (W, b, a))
        self.P = np.asarray(P, dtype=np.float64)
        if self.W.ndim != 2 or self.W.shape[1] < 1:
            raise ValueError(f"W must have shape (width, k) with k >= 1, got shape {self.W.shape}")
        width, k = self.W.shape
        if self.b.shape != (width,) or self.a.shape != (width,) or self.P.ndim != 2 or self.P.shape[1] != k:
            raise ValueError(f"W (width, k), b (width,), a (width,) and P (d, k) must agree; got shapes "
                             f"{self.W.shape}, {self.b.shape}, {self.a.shape}, {self.P.shape}")
        for name, v in (("W", self.W), ("b", self.b), ("a", self.a), ("P", self.P)):
            if not np.all(np.isfinite(v)):
                raise ValueError(f"{name} contains non-finite values (NaN or inf)")
        if not np.allclose(self.P.T @ self.P, np.eye(k), rtol=0, atol=1e-10):
            raise ValueError("P must have orthonormal columns (P^T P = I); build it with embedding(d, k, rng)")
        self.d, self.k = self.P.shape
        self.f_max = float(np.sum(np.abs(self.a)))
        rng = check_rng(rng)
        self._z = rng.standard_normal((check_count(n_mc, "n_mc", minimum=2), k))
        fu = self._f(rng.standard_normal((check_count(n_normaliser, "n_normaliser", minimum=2), k)))
        top = fu.max()
        self.log_normaliser = float(top + np.log(np.mean(np.exp(fu - top))))

    @property
    def dim(self):
        return self.d

    @property
    def path_norm(self):
        return float(np.sum(np.abs(self.a) * (np.linalg.norm(self.W, axis=1) + np.abs(self.b))))

    def __repr__(self):
        return f"SubspaceTilt(d={self.d}, k={self.k}, width={self.W.shape[0]}, n_mc={self._z.shape[0]})"

    def _f(self, u):
        return np.tanh(u @ self.W.T + self.b) @ self.a

    def _grad_f(self, u):
        return (self.a * (1.0 - np.tanh(u @ self.W.T + self.b) ** 2)) @ self.W

    def sample_subspace(self, n, rng):
        """n exact draws of u = P^T X_0 from exp(f) gamma_k / Z_k, by rejection from gamma_k.

        A proposal u ~ gamma_k is kept with probability e^{f(u) - f_max}, f_max = sum_j |a_j|
        >= f, so the expected number of proposals is n e^{f_max - log Z}.

        Raises
        ------
        ValueError
            When that is more than _MAX_PROPOSALS (f_max far above f's largest values, e.g.
            units that cancel): the loop would not end in any useful time.
        """
        n, rng = check_count(n, "n"), check_rng(rng)
        expected = n * np.exp(min(self.f_max - self.log_normaliser, 700.0))
        if expected > _MAX_PROPOSALS:
            raise ValueError(f"rejection sampling would need about {expected:.3g} proposals for n = {n}: the "
                             f"acceptance rate e^(log Z - sum|a|) = e^({self.log_normaliser - self.f_max:.4g}) is "
                             "too small (units whose tanh terms cancel?); use smaller or fewer units a")
        accepted, count, proposed, rate = [], 0, 0, 0.5
        while count < n:
            m = int(min(max(1024, 1.2 * (n - count) / rate), _BLOCK // self.k))  # bounded memory
            u = rng.standard_normal((m, self.k))
            keep = u[np.log(rng.random(m)) < self._f(u) - self.f_max]
            accepted.append(keep)
            count += keep.shape[0]
            proposed += m
            rate = max(count / proposed, 1e-6)
        return np.concatenate(accepted)[:n]

    def sample(self, n, rng, dtype=np.float64):
        """n exact draws from p_0: X = P u + (I - P P^T) z, u from sample_subspace, z ~ N(0, I_d).

        dtype: float64 or float32 (as the targets' sample; an integer dtype truncated the draws).
        """
        n, rng, dtype = check_count(n, "n"), check_rng(rng), check_float_dtype(dtype)
        check_size(n, 2 * self.d, "n", f"{n} draws in d = {self.d} (and the noise that makes them)")
        u = self.sample_subspace(n, rng)
        z = rng.standard_normal((n, self.d))
        x = z + (u - z @ self.P) @ self.P.T
        return x.astype(dtype, copy=False)

    def score_and_se(self, x, t=0.0, process=OU()):
        """Monte-Carlo score of p_t and the standard errors of its coordinates, both (n, d), float64.

        se_i^2 = (P C P^T)_ii with C the delta-method covariance of the k-dimensional
        estimate, so sum_i se_i^2 = tr C: the oracle's own mean squared error.
        """
        return self._evaluate(x, t, process, want_score=True)[1:]

    def score(self, x, t=0.0, process=OU()):
        """Monte-Carlo estimate of grad log p_t(x), shape (n, d), dtype of x (computed in
        float64 and rounded once, as the targets' score: float32 points got a float64 score,
        which the samplers refuse for float32 points)."""
        x = check_points(x, "x", d=self.d)
        return _in_dtype_of(self._evaluate(x, t, process, want_score=True)[1], x, "score")

    def log_prob(self, x, t=0.0, process=OU()):
        """Monte-Carlo estimate of log p_t(x) = log gamma_d(x) + log E_Z[e^{f(y)}] - log Z, shape (n,),
        dtype of x (computed in float64 and rounded once).

        Raises ValueError for a point so far out that |x|^2 overflows float64 (|x| beyond
        about 1.3e154; log p_t, about -|x|^2 / 2, is then below -9e307; it returned -inf with
        a RuntimeWarning), as GaussianMixture.log_prob does, and for float32 points whose
        log p_t is beyond float32's range (|x| beyond about 2.6e19).
        """
        x = check_points(x, "x", d=self.d)
        return _in_dtype_of(self._evaluate(x, t, process, want_score=False)[0], x, "log p_t")

    def _evaluate(self, x, t, process, want_score):
        """(log p_t, score, se) in float64 at points x (checked here if not already)."""
        x = check_points(x, "x", d=self.d).astype(np.float64, copy=False)
        process = check_process(process)
        if not isinstance(process, VariancePreserving):
            raise ValueError(f"process must be variance-preserving for SubspaceTilt, got {process!r}")
        n = x.shape[0]
        a, s2 = process._coefficients(t, n)
        sigma = np.sqrt(s2)
        u = x @ self.P
        n_mc = self._z.shape[0]
        logp = np.empty(n)
        score = np.empty((n, self.d)) if want_score else None
        se = np.empty((n, self.d)) if want_score else None
        rows = max(1, _BLOCK // (n_mc * self.k))
        for start in range(0, n, rows):
            blk = slice(start, min(start + rows, n))
            y = a[blk, None, None] * u[blk, None, :] + sigma[blk, None, None] * self._z  # (r, n_mc, k)
            h = np.tanh(y.reshape(-1, self.k) @ self.W.T + self.b)        # one tanh for f and grad f
            fy = (h @ self.a).reshape(-1, n_mc)
            top = fy.max(axis=1, keepdims=True)
            w = np.exp(fy - top)
            logp[blk] = top[:, 0] + np.log(w.mean(axis=1))
            if not want_score:
                continue
            w /= w.sum(axis=1, keepdims=True)
            g = (((1.0 - h * h) * self.a) @ self.W).reshape(y.shape) * a[blk, None, None]
            R = np.einsum("ri,rik->rk", w, g)                     # alpha E[e^f grad f] / E[e^f]
            wd = w[:, :, None] * (g - R[:, None, :])
            C = np.matmul(wd.transpose(0, 2, 1), wd)              # delta-method covariance (r, k, k)
            score[blk] = -x[blk] + R @ self.P.T
            se[blk] = np.sqrt(np.maximum(np.einsum("ik,rki->ri", self.P, C @ self.P.T), 0.0))
        with np.errstate(over="ignore"):  # |x|^2 past float64 (|x| beyond ~1e154): named below
            logp += -0.5 * (self.d * _LOG_2PI + np.sum(x**2, axis=1)) - self.log_normaliser
        if not want_score:  # the score stays finite there (-x plus a bounded term); log p_t does not
            check_oracle_output(logp, x)
        return logp, score, se


def _in_dtype_of(values, x, what):
    """values (computed in float64) in the dtype of the points x, refusing a value beyond that
    dtype's range (a float32 point far out: its log p_t, about -|x|^2 / 2, is below -3.4e38)."""
    with np.errstate(over="ignore"):  # named just below
        out = values.astype(x.dtype, copy=False)
    bad = ~np.all(np.isfinite(out.reshape(out.shape[0], -1)), axis=1) if out.size else np.zeros(0, bool)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"the {what} at x[{i}] (largest |entry| {float(np.max(np.abs(x[i]))):.3g}) is beyond "
                         f"{x.dtype}'s range: the point is too far out for {x.dtype}; pass float64 points")
    return out
