"""Gaussian mixtures with the exact density and score of every forward marginal p_t.

If p_0 = sum_k w_k N(mu_k, Sigma_k) and X_t = alpha_t X_0 + sigma_t Z, then

    p_t = sum_k w_k N(alpha_t mu_k, alpha_t^2 Sigma_k + sigma_t^2 I),

exactly, for OU and VP alike. Relative to the standard Gaussian gamma_d the target is
p_0 = exp(f) gamma_d / Z with f entering with a plus sign (Cole & Lu's exponential
tilting); for identity covariances f(x) = log sum_k w_k exp(mu_k . x - |mu_k|^2 / 2).
"""

import numpy as np

from .._validation import (check_count, check_float_dtype, check_oracle_output, check_points, check_real,
                           check_real_array, check_rng, eigh_spd)
from ..kernels.mixture import diagonal_mixture, full_mixture_responsibilities
from ..processes import OU, check_process

__all__ = ["GaussianMixture"]

# Rows per block of the full-covariance oracle: bounds the (rows, K d) buffer to
# about 2**20 numbers (8 MB in float64) so it stays in cache and memory stays flat.
_BLOCK_ELEMENTS = 2**20


class GaussianMixture:
    """Mixture sum_k w_k N(mu_k, Sigma_k) in R^d with an exact score oracle at any t.

    Parameters
    ----------
    weights : array_like, shape (K,)
        Non-negative, summing to 1 within 1e-8 (never renormalised). A zero weight is
        allowed and the component then has no effect.
    means : array_like, shape (K, d)
    covariances : None, array_like of shape (K, d) or (K, d, d)
        None: identity covariances (the paper's family). (K, d): diagonal, positive
        variances. (K, d, d): full, symmetric positive definite. There is no shared
        (d, d) form: one covariance for all components is repeated K times (when
        K = d a (d, d) array would be read as K rows of variances).

    Notes
    -----
    Full covariances are factorised once, Sigma_k = U_k diag(lam_k) U_k^T; at time t
    the covariance is U_k diag(alpha_t^2 lam_k + sigma_t^2) U_k^T, so a batch with one
    t per row costs O(n K d^2) and no factorisation per t; diagonal and identity
    covariances cost O(n K d). Work is done by sgm_ref.kernels.mixture.

    Raises
    ------
    ValueError
        For negative or non-normalised weights, non-finite values, mismatched shapes,
        non-symmetric or non-positive-definite covariances.
    """

    def __init__(self, weights, means, covariances=None):
        w = check_real_array(weights, "weights")
        mu = check_real_array(means, "means")
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"weights must have shape (K,) with K >= 1, got shape {w.shape}")
        K = w.shape[0]
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] == 0:
            raise ValueError(f"means must have shape (K, d) = ({K}, d) with d >= 1, got shape {mu.shape}")
        d = mu.shape[1]
        if np.any(w < 0):
            raise ValueError(f"weights must be >= 0, got min {w.min()!r}")
        if abs(w.sum() - 1.0) > 1e-8:
            raise ValueError(
                f"weights must sum to 1 (within 1e-8), got sum {w.sum()!r}; "
                "divide them by their sum yourself if that is what you mean"
            )
        active = w > 0
        self.weights, self.means = w, mu
        if covariances is None:
            self.covariance_type = "identity"
            self.covariances = None
            lam = np.ones((K, d))
            U = None
        else:
            cov = check_real_array(covariances, "covariances")
            if cov.shape == (K, d):
                self.covariance_type = "diagonal"
                if np.any(cov <= 0):
                    raise ValueError("covariances (diagonal, shape (K, d)) must be > 0 everywhere")
                lam, U = cov, None
            elif cov.shape == (K, d, d):
                self.covariance_type = "full"
                lam, U = eigh_spd(cov, "covariances")
            else:
                raise ValueError(
                    f"covariances must be None, shape (K, d) = ({K}, {d}) or (K, d, d) = "
                    f"({K}, {d}, {d}); got shape {cov.shape}"
                )
            self.covariances = cov
        for arr in (self.weights, self.means, self.covariances):
            if arr is not None:
                arr.setflags(write=False)
        # Components of weight zero are dropped from the oracle: log 0 would only add
        # -inf terms to the log-sum-exp.
        self._logw = np.log(w[active])
        self._mu = np.ascontiguousarray(mu[active])
        self._lam = np.ascontiguousarray(lam[active])
        self._U = None if U is None else np.ascontiguousarray(U[active])
        self._centre = np.exp(self._logw) @ self._mu
        # how many factors v = alpha^2 lam + sigma^2 (between min(lam, 1) and max(lam, 1))
        # the kernel may multiply before one log without leaving the float64 range
        spread = max(1.0, float(np.max(np.abs(np.log(self._lam)))))
        self._log_group = int(max(1, min(8, 600.0 // spread)))
        self._by_dtype = {}

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
            f"covariances={self.covariance_type!r})"
        )

    # -- presets ------------------------------------------------------------------
    @classmethod
    def ring(cls, k=8, radius=2.0, std=0.3):
        """k equal-weight isotropic Gaussians of standard deviation std on a circle in R^2.

        The classic two-dimensional test target (default: 8 modes, radius 2, std 0.3).
        """
        k = check_count(k, "k")
        radius = check_real(radius, "radius", low=0.0, low_open=True)
        std = check_real(std, "std", low=0.0, low_open=True)
        angles = 2.0 * np.pi * np.arange(k) / k
        means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return cls(np.full(k, 1.0 / k), means, np.full((k, 2), float(std) ** 2))

    @classmethod
    def paper_family(cls, d, k, radius, rng):
        """Cole & Lu's example: k equal weights, identity covariances, means of norm radius.

        The directions are uniform on the sphere S^{d-1}, drawn from rng (a Generator,
        or an int seed given to numpy.random.default_rng). f(x) = log sum_k w_k
        exp(mu_k . x - radius^2 / 2) is Lipschitz with constant radius in every d.
        """
        d = check_count(d, "d")
        k = check_count(k, "k")
        radius = check_real(radius, "radius", low=0.0)
        if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
            rng = np.random.default_rng(rng)
        rng = check_rng(rng, "rng (a Generator or an int seed)")
        directions = rng.standard_normal((k, d))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        return cls(np.full(k, 1.0 / k), radius * directions)

    # -- serialisation --------------------------------------------------------------
    def to_dict(self):
        """JSON-ready dict with weights, means and covariances (None for identity)."""
        cov = None if self.covariances is None else self.covariances.tolist()
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "covariances": cov}

    @classmethod
    def from_dict(cls, spec):
        """Inverse of to_dict; validates like the constructor."""
        if not isinstance(spec, dict) or not {"weights", "means"} <= set(spec):
            raise ValueError("a mixture spec must be a dict with keys 'weights', 'means' and optionally 'covariances'")
        unknown = set(spec) - {"weights", "means", "covariances"}
        if unknown:
            raise ValueError(f"unknown key(s) {sorted(unknown)} in a mixture spec; the keys are 'weights', 'means' "
                             "and 'covariances'")
        return cls(spec["weights"], spec["means"], spec.get("covariances"))

    # -- the law at time t --------------------------------------------------------------
    def at(self, t, process=OU()):
        """The forward marginal p_t as a GaussianMixture (t a scalar).

        Means alpha_t mu_k, covariances alpha_t^2 Sigma_k + sigma_t^2 I; identity
        covariances stay the identity because alpha_t^2 + sigma_t^2 = 1.
        """
        a, s2 = check_process(process)._coefficients(t, 1)
        a, s2 = a[0], s2[0]
        if self.covariance_type == "identity":
            cov = None
        elif self.covariance_type == "diagonal":
            cov = a * a * self.covariances + s2
        else:
            cov = a * a * self.covariances + s2 * np.eye(self.dim)
        return GaussianMixture(self.weights, a * self.means, cov)

    def mean(self):
        """Mean of p_0: sum_k w_k mu_k, shape (d,)."""
        return self.weights @ self.means

    def covariance(self):
        """Covariance of p_0: sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T, shape (d, d)."""
        m = self.mean()
        if self.covariance_type == "identity":
            within = np.eye(self.dim)
        elif self.covariance_type == "diagonal":
            within = np.diag(self.weights @ self.covariances)
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
        rng : numpy.random.Generator
        dtype : float64 or float32
        return_labels : bool
            Also return the component index of each point.

        Returns
        -------
        x : ndarray, shape (n, d)
        labels : ndarray of int, shape (n,), only if return_labels
        """
        n = check_count(n, "n")
        rng = check_rng(rng)
        dtype = check_float_dtype(dtype)
        labels = rng.choice(self.n_components, size=n, p=self.weights)
        z = rng.standard_normal((n, self.dim))
        if self.covariance_type == "identity":
            x = self.means[labels] + z
        elif self.covariance_type == "diagonal":
            x = self.means[labels] + z * np.sqrt(self.covariances[labels])
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
        t : float or ndarray of shape (n,)
            One time for all rows or one per row, >= 0 (and <= process.t_max).
        process : OU or VP

        Returns
        -------
        ndarray, shape (n,), dtype of x
        """
        return self._evaluate(x, t, process, want_score=False)[0]

    def score(self, x, t=0.0, process=OU()):
        """Exact score grad_x log p_t(x) at each row of x.

        grad log p_t(x) = -sum_k pi_k(x) (alpha_t^2 Sigma_k + sigma_t^2 I)^{-1} (x - alpha_t mu_k),
        pi_k(x) the posterior probability of component k (computed by log-sum-exp).

        Parameters and shapes as log_prob; returns ndarray of shape (n, d), dtype of x.
        """
        return self._evaluate(x, t, process, want_score=True)[1]

    def log_prob_and_score(self, x, t=0.0, process=OU()):
        """(log_prob, score) from one pass over the components."""
        return self._evaluate(x, t, process, want_score=True)

    def _params(self, dtype):
        """Component arrays in the dtype of the points (cast once per dtype)."""
        if dtype not in self._by_dtype:
            mu = self._mu.astype(dtype)
            lam = self._lam.astype(dtype)
            if self._U is None:
                extra = (None, None, None)
            else:
                K, d = self._lam.shape
                U_all = np.ascontiguousarray(self._U.transpose(1, 0, 2).reshape(d, K * d))
                # projected about the centre c of the means (x - a c is formed before the
                # product), so means far from 0 do not cost digits in U^T x - a U^T mu
                m_proj = np.einsum("kji,kj->ki", self._U, self._mu - self._centre)
                extra = (U_all.astype(dtype), np.ascontiguousarray(m_proj.astype(dtype)), self._centre.astype(dtype))
            self._by_dtype[dtype] = (mu, lam) + extra
        return self._by_dtype[dtype]

    def _evaluate(self, x, t, process, want_score):
        x = check_points(x, "x", d=self.dim)
        n, d = x.shape
        a, s2 = check_process(process)._coefficients(t, n)
        mu, lam, U_all, m_proj, centre = self._params(x.dtype)
        logp = np.empty(n, dtype=x.dtype)
        score = np.empty((n, d), dtype=x.dtype) if want_score else None
        if U_all is None:
            out = score if want_score else np.empty((1, 1), dtype=x.dtype)
            identity = self.covariance_type == "identity"
            diagonal_mixture(x, a, s2, self._logw, mu, lam, identity, want_score, logp, out)
            check_oracle_output(logp, x)
            return logp, score
        K = lam.shape[0]
        rows = max(1, _BLOCK_ELEMENTS // (K * d))
        for start in range(0, n, rows):
            block = slice(start, min(start + rows, n))
            P = (x[block] - a[block, None].astype(x.dtype) * centre) @ U_all
            logc = np.empty((P.shape[0], K))
            full_mixture_responsibilities(P, a[block], s2[block], self._logw, m_proj, lam, self._log_group,
                                          logp[block], logc)
            if want_score:
                np.matmul(P, U_all.T, out=score[block])
                np.negative(score[block], out=score[block])
        check_oracle_output(logp, x)
        return logp, score
