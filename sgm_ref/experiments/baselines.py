"""Reference scores a trained network is compared with in the rate experiment.

    EmpiricalMeasure(data)    the score of the OU-smoothed empirical measure of the n
                              training samples, p_t^n = (1/n) sum_i N(alpha_t x_i, sigma_t^2 I):

        grad log p_t^n(x) = (alpha_t sum_i w_i(x) x_i - x) / sigma_t^2,
        w_i(x) = softmax_i(-|x - alpha_t x_i|^2 / (2 sigma_t^2)).

        It is the unrestricted minimiser of the empirical denoising score-matching loss
        (for each t, E[-z / sigma_t | x_t] under the empirical measure), so it is what
        "empirical score matching without a function class" learns: the curse baseline.
    minus_x                   the score -x of N(0, I) (p_0's Gaussian part alone)
    fit_identity_mixture      a K-component identity-covariance mixture fitted by EM to the
                              samples: the efficient parametric plug-in for the mixture family,
                              whose score is then exact (GaussianMixture)
"""

import numpy as np

from .._validation import check_count, check_points, check_real, check_rng
from ..processes import OU, check_process
from ..targets import GaussianMixture

__all__ = ["EmpiricalMeasure", "minus_x", "fit_identity_mixture", "EMResult"]

# numbers of one (rows, n) block of log-weights: 2**22 (32 MB in float64)
_BLOCK_ELEMENTS = 2**22


def minus_x(x, t):
    """The score of N(0, I) at every t: -x."""
    return -np.asarray(x)


class EmpiricalMeasure:
    """The empirical measure (1/n) sum_i delta_{x_i} and its exact forward marginals (module docstring).

    Parameters
    ----------
    data : ndarray, shape (n, d), float64
        The training samples.
    """

    def __init__(self, data):
        self.data = np.ascontiguousarray(check_points(data, "data"), dtype=np.float64)
        if self.data.shape[0] == 0:
            raise ValueError("data must have at least one row")
        self._sq = np.sum(self.data**2, axis=1)

    @property
    def dim(self):
        return self.data.shape[1]

    def __repr__(self):
        return f"EmpiricalMeasure(n={self.data.shape[0]}, d={self.dim})"

    def score(self, x, t, process=OU()):
        """grad log p_t^n(x), shape (m, d), for x of shape (m, d) and t > 0 (scalar or (m,)).

        Computed in blocks of rows so that the (rows, n) log-weights stay within 2**22
        numbers: O(m n d) time, O(n d + 2**22) memory. The log-weights drop |x|^2 (a
        constant of the row) and use x . x_i from one matrix product, the softmax
        subtracts its row maximum (log-sum-exp), so no exp overflows or underflows to
        an all-zero row.

        Raises
        ------
        ValueError
            For x of the wrong shape, t <= 0 (sigma_0 = 0: the empirical measure has no
            score), a non-variance-preserving process, or a t so small (sigma_t^2 near
            float64's smallest numbers, t below ~1e-308 on OU) or x so far from the data
            that |x - alpha_t x_i|^2 / (2 sigma_t^2) overflows.
        """
        return self._evaluate(x, t, process, want_score=True)[1]

    def log_prob(self, x, t, process=OU()):
        """log p_t^n(x) = logsumexp_i [-|x - alpha_t x_i|^2 / (2 sigma_t^2)] - log n - d/2 log(2 pi sigma_t^2).

        The largest term's |x - alpha_t x_i|^2 from the explicit difference (the others enter
        only through the softmax), so no cancellation of |x|^2 / (2 sigma_t^2) at small t.
        """
        return self._evaluate(x, t, process, want_score=False)[0]

    def __call__(self, x, t):
        """The score under OU, as a score function s(x, t)."""
        return self.score(x, t)

    def _evaluate(self, x, t, process, want_score):
        x = check_points(x, "x", d=self.dim).astype(np.float64, copy=False)
        m, d = x.shape
        a, s2 = check_process(process)._coefficients(t, m)
        if np.any(s2 <= 0):
            raise ValueError("t must be > 0: at t = 0 the empirical measure has no density and no score")
        n = self.data.shape[0]
        logp = np.empty(m)
        score = np.empty((m, d)) if want_score else None
        rows = max(1, _BLOCK_ELEMENTS // n)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):  # an overflow is named below
            self._blocks(x, a, s2, rows, logp, score)
            logp -= np.log(n) + 0.5 * d * np.log(2.0 * np.pi * s2)
        bad = ~np.isfinite(logp)
        if want_score:
            bad |= ~np.all(np.isfinite(score), axis=1)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise ValueError(f"the empirical measure at x[{i}] (t = {float(np.broadcast_to(t, (m,))[i]):.3g}, "
                             f"sigma_t^2 = {float(s2[i]):.3g}) overflows float64: |x - alpha_t x_i|^2 / (2 sigma_t^2) "
                             "is beyond its range; use a larger t, or points nearer the data")
        return logp, score

    def _blocks(self, x, a, s2, rows, logp, score):
        """Fill logp (without its constant) and score block by block of rows (_evaluate)."""
        m = x.shape[0]
        for start in range(0, m, rows):
            blk = slice(start, min(start + rows, m))
            ab, vb = a[blk, None], s2[blk, None]
            # -|x - a x_i|^2 / (2 s2) = (a x . x_i - a^2 |x_i|^2 / 2 - |x|^2 / 2) / s2
            L = (ab * (x[blk] @ self.data.T) - 0.5 * ab**2 * self._sq) / vb
            nearest = L.argmax(axis=1)
            top = L[np.arange(L.shape[0]), nearest][:, None]
            np.exp(L - top, out=L)
            total = L.sum(axis=1, keepdims=True)
            # top - |x|^2 / (2 s2) is the nearest point's -|x - a x_i|^2 / (2 s2), but as the
            # difference of two numbers of size |x|^2 / (2 s2) (1e5 at d = 512, t = 1e-3); taken
            # from the explicit difference it keeps float64's precision
            gap = x[blk] - ab * self.data[nearest]
            logp[blk] = np.log(total[:, 0]) - 0.5 * np.sum(gap**2, axis=1) / s2[blk]
            if score is not None:
                L /= total
                score[blk] = (ab * (L @ self.data) - x[blk]) / vb


class EMResult:
    """What fit_identity_mixture returns: the mixture and how EM got there."""

    def __init__(self, mixture, log_likelihood, iterations, converged):
        self.mixture = mixture                # GaussianMixture with identity covariances
        self.log_likelihood = log_likelihood  # mean log-likelihood per sample at the end
        self.iterations = iterations          # EM iterations of the best start
        self.converged = converged            # the best start met the tolerance

    def as_dict(self):
        return {"log_likelihood": float(self.log_likelihood), "iterations": int(self.iterations),
                "converged": bool(self.converged)}


def fit_identity_mixture(x, K, rng, *, n_init=4, max_iter=1000, tol=1e-8):
    """Maximum-likelihood K-component mixture sum_k w_k N(mu_k, I) by EM, from n_init seeded starts.

    E-step: log r_ik = log w_k - |x_i - mu_k|^2 / 2 - logsumexp_j(...) (log-sum-exp);
    M-step: w_k = (1/n) sum_i r_ik, mu_k = sum_i r_ik x_i / sum_i r_ik. Each start is a
    k-means++ seeding (means drawn from the samples, each new one with probability
    proportional to the squared distance to the nearest chosen, equal weights). A start
    stops when the mean log-likelihood per sample rises by less than tol nats in an
    iteration (EM never lowers it; an absolute tolerance, as the value itself holds
    -d/2 log(2 pi e), which grows with d), or after max_iter iterations; the start with the
    largest log-likelihood is kept. A component left with no responsibility keeps its
    mean and gets weight 0.

    Parameters
    ----------
    x : ndarray, shape (n, d)
    K : int >= 1, at most n
    rng : numpy.random.Generator
        The seedings.
    n_init, max_iter : int >= 1
    tol : float > 0
        Stop when an iteration raises the mean log-likelihood by less than this (nats).

    Returns
    -------
    EMResult
        Its log_likelihood is that of the mixture it holds (the parameters after the last
        M-step), and the start kept is the one whose returned mixture has the largest.

    Raises
    ------
    ValueError
        For bad arguments.
    """
    x = check_points(x, "x").astype(np.float64, copy=False)
    n = x.shape[0]
    K = check_count(K, "K")
    if K > n:
        raise ValueError(f"K = {K} components need at least K samples, got n = {n}")
    rng = check_rng(rng)
    n_init, max_iter = check_count(n_init, "n_init"), check_count(max_iter, "max_iter")
    tol = check_real(tol, "tol", low=0.0, low_open=True)
    x_sq = np.sum(x**2, axis=1)
    best = None
    for _ in range(n_init):
        mu = _kmeans_plus_plus(x, x_sq, K, rng)
        logw = np.full(K, -np.log(K))
        ll_old = -np.inf
        converged = False
        for iteration in range(1, max_iter + 1):
            ll, R = _e_step(x, x_sq, mu, logw)
            Nk = R.sum(axis=0)
            alive = Nk > 0
            mu[alive] = (R.T @ x)[alive] / Nk[alive, None]
            with np.errstate(divide="ignore"):  # an empty component: weight 0, log weight -inf
                logw = np.log(Nk / n)
            if ll - ll_old <= tol:
                converged = True
                break
            ll_old = ll
        ll = _e_step(x, x_sq, mu, logw)[0]  # of the parameters returned (the loop's is the step before's)
        if best is None or ll > best[0]:
            best = (ll, mu.copy(), np.exp(logw), iteration, converged)
    ll, mu, w, iterations, converged = best
    w = w / w.sum()  # sums to 1 up to rounding already (Nk sum to n)
    return EMResult(GaussianMixture(w, mu), ll, iterations, converged)


def _e_step(x, x_sq, mu, logw):
    """(mean log-likelihood per sample, responsibilities (n, K)) of sum_k w_k N(mu_k, I), by log-sum-exp."""
    # log w_k + log N(x_i; mu_k, I), without the constant -d/2 log 2 pi
    L = logw + x @ mu.T - 0.5 * np.sum(mu**2, axis=1) - 0.5 * x_sq[:, None]
    top = L.max(axis=1, keepdims=True)
    R = np.exp(L - top)
    total = R.sum(axis=1, keepdims=True)
    ll = float(np.mean(top[:, 0] + np.log(total[:, 0]))) - 0.5 * x.shape[1] * np.log(2.0 * np.pi)
    return ll, R / total


def _kmeans_plus_plus(x, x_sq, K, rng):
    """K means chosen from the rows of x by k-means++ (D^2 sampling)."""
    n = x.shape[0]
    chosen = [int(rng.integers(n))]
    dist = np.maximum(x_sq - 2.0 * x @ x[chosen[0]] + x_sq[chosen[0]], 0.0)
    for _ in range(1, K):
        total = dist.sum()
        i = int(rng.integers(n)) if total <= 0 else int(rng.choice(n, p=dist / total))
        chosen.append(i)
        dist = np.minimum(dist, np.maximum(x_sq - 2.0 * x @ x[i] + x_sq[i], 0.0))
    return x[chosen].copy()
