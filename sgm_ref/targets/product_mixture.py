"""Products of one-dimensional two-component mixtures: the contrast family.

Each coordinate is independent, x_j ~ w_j0 N(mu_j0, s_j0^2) + w_j1 N(mu_j1, s_j1^2), so

    p_t(x) = prod_j sum_c w_jc N(x_j; alpha_t mu_jc, alpha_t^2 s_jc^2 + sigma_t^2)

exactly for every process of sgm_ref.processes, and the score is closed form coordinate by coordinate:

    d/dx_j log p_t(x) = -sum_c pi_jc(x_j) (x_j - alpha_t mu_jc) / (alpha_t^2 s_jc^2 + sigma_t^2),

pi_jc the posterior of component c for coordinate j (a log-sum-exp over c). As a mixture
it has 2^d components; its log-relative density f(x) = sum_j f_j(x_j) is a sum of d
terms, so its complexity grows linearly with d, where the paper's family (K means of
norm r, sgm_ref.targets.GaussianMixture.paper_family) keeps it fixed.
"""

import numpy as np

from .._validation import cast_oracle_output, check_count, check_float_dtype, check_oracle_output, check_points, check_real, check_rng
from ..processes import OU, check_process
from ._predict import ExactOutputs
from ._checks import (MAX_MEAN, MAX_VARIANCE, MIN_VARIANCE, check_float32_range, check_float32_samples,
                      check_means, check_size, check_variances, plain, real_array)

__all__ = ["ProductMixture"]

_LOG_2PI = float(np.log(2.0 * np.pi))
# a coordinate at least sqrt(_FAR_QUAD) standard deviations from both components has its
# posterior logits taken from the components' differences (ProductMixture._relative_terms)
_FAR_QUAD = 64.0
# an entry whose |log v_j0| exceeds this takes its logits with log v_jc - log v_j0
# (ProductMixture._relative_terms), as GaussianMixture._log_dets does per dimension
_LOG_VAR_SHIFT = 16.0


class ProductMixture(ExactOutputs):
    """Independent coordinates, each a 1-D mixture of two Gaussians; exact oracle at any t.

    Parameters
    ----------
    weights : array_like, shape (d, 2)
        Row j: the weights of coordinate j's components, >= 0, summing to 1 within 1e-8
        (never renormalised).
    means : array_like, shape (d, 2)
        Entries within +-1e150.
    stds : array_like, shape (d, 2)
        In [1e-150, 1e150] (variances in [1e-300, 1e300], as GaussianMixture).

    Raises
    ------
    ValueError
        Wrong shapes, booleans, non-finite or out-of-range entries, negative weights or
        rows not summing to 1, non-positive standard deviations.
    """

    def __init__(self, weights, means, stds):
        w = real_array(weights, "weights")
        if w.ndim != 2 or w.shape[1] != 2 or w.shape[0] == 0:
            raise ValueError(f"weights must have shape (d, 2) with d >= 1, got {w.shape}")
        d = w.shape[0]
        mu = real_array(means, "means")
        s = real_array(stds, "stds")
        for name, arr in (("means", mu), ("stds", s)):
            if arr.shape != (d, 2):
                raise ValueError(f"{name} must have shape (d, 2) = {(d, 2)} like weights, got {arr.shape}")
        if np.any(w < 0):
            raise ValueError("weights must be >= 0")
        if np.any(np.abs(w.sum(axis=1) - 1.0) > 1e-8):
            j = int(np.argmax(np.abs(w.sum(axis=1) - 1.0)))
            raise ValueError(f"each row of weights must sum to 1; row {j} sums to {plain(w[j].sum())} "
                             "(not renormalised)")
        if np.any(s <= 0):
            raise ValueError("stds must be > 0")
        check_means(mu)
        with np.errstate(over="ignore", under="ignore"):  # out of range either way: named below
            check_variances(s * s, "stds", "squared stds (variances)")
        with np.errstate(divide="ignore"):
            self._logw = np.log(w)  # -inf for a zero weight: that component never contributes
        for arr in (w, mu, s, self._logw):
            arr.flags.writeable = False  # the oracle's arrays must not drift from each other
        self.weights, self.means, self.stds = w, mu, s

    @classmethod
    def symmetric(cls, d, shift=1.5, std=1.0):
        """Every coordinate 1/2 N(-shift, std^2) + 1/2 N(shift, std^2).

        With std = 1 this is the identity-covariance mixture of the 2^d means
        {-shift, shift}^d, whose norms shift sqrt(d) grow with d; f(x) = sum_j
        (log cosh(shift x_j) - shift^2 / 2). |shift| <= 1e150, std in [1e-150, 1e150].
        """
        d = check_size(check_count(d, "d"), 8, "d", "d coordinates")
        shift = check_real(shift, "shift", low=-MAX_MEAN, high=MAX_MEAN)
        std = check_real(std, "std", low=0.0, low_open=True)
        if not np.sqrt(MIN_VARIANCE) <= std <= np.sqrt(MAX_VARIANCE):
            raise ValueError(f"std must be in [{np.sqrt(MIN_VARIANCE):g}, {np.sqrt(MAX_VARIANCE):g}] (its square is a "
                             f"variance), got {plain(std)}")
        return cls(np.full((d, 2), 0.5), np.tile([-shift, shift], (d, 1)), np.full((d, 2), std))

    @property
    def dim(self):
        return self.weights.shape[0]

    def __repr__(self):
        return f"ProductMixture(d={self.dim})"

    @property
    def n_components(self):
        """Components of the equivalent mixture, 2^d."""
        return 2**self.dim

    def to_dict(self):
        """JSON-ready dict with weights, means and stds."""
        return {"weights": self.weights.tolist(), "means": self.means.tolist(), "stds": self.stds.tolist()}

    @classmethod
    def from_dict(cls, spec):
        """Inverse of to_dict; validates like the constructor."""
        keys = {"weights", "means", "stds"}
        if not isinstance(spec, dict) or set(spec) != keys:
            # name what is wrong, as GaussianMixture.from_dict does: a misspelt "std" or an extra key
            wrong = ("" if not isinstance(spec, dict) else
                     "".join(f"; {what} {sorted(found, key=str)}" for what, found in
                             (("unknown key(s)", set(spec) - keys), ("missing key(s)", keys - set(spec))) if found))
            raise ValueError(f"a product mixture spec must be a dict with exactly the keys 'weights', 'means', "
                             f"'stds'{wrong}")
        return cls(spec["weights"], spec["means"], spec["stds"])

    def mean(self):
        """Mean of p_0, shape (d,)."""
        return np.sum(self.weights * self.means, axis=1)

    def covariance(self):
        """Covariance of p_0 (diagonal), shape (d, d)."""
        # about the mean, not E[x^2] - E[x]^2, which cancels when the means are far from 0
        centred = self.means - self.mean()[:, None]
        return np.diag(np.sum(self.weights * (self.stds**2 + centred**2), axis=1))

    def sample(self, n, rng, dtype=np.float64):
        """n points of p_0, shape (n, d): per coordinate a component, then its Gaussian.

        n is at most what this machine's memory holds (about 4 n d numbers).
        """
        n = check_size(check_count(n, "n"), 4 * self.dim, "n", f"n points in d = {self.dim}")
        rng = check_rng(rng)
        dtype = check_float_dtype(dtype)
        if dtype == np.float32:
            check_float32_samples(self.means, self.stds**2, repr(self))
        c = (rng.random((n, self.dim)) >= self.weights[:, 0]).astype(np.intp)  # component 1 with prob w_j1
        cols = np.arange(self.dim)
        z = rng.standard_normal((n, self.dim))
        return (self.means[cols, c] + self.stds[cols, c] * z).astype(dtype, copy=False)

    def log_prob(self, x, t=0.0, process=OU()):
        """Exact log p_t(x), shape (n,) (module docstring); t a float or one per row."""
        return self._evaluate(x, t, process)[0]

    def score(self, x, t=0.0, process=OU()):
        """Exact grad log p_t(x), shape (n, d), dtype of x (module docstring)."""
        return self._evaluate(x, t, process)[1]

    def log_prob_and_score(self, x, t=0.0, process=OU()):
        return self._evaluate(x, t, process)

    def _coordinates(self, x, t, process):
        """x checked, and each coordinate's component variances and offsets, shape (n, d, 2)."""
        x = check_points(x, "x", d=self.dim)
        n = x.shape[0]
        a, s2 = check_process(process, variance_preserving=False)._coefficients(t, n)
        if x.dtype == np.float32:
            check_float32_range(self.means, self.stds**2, repr(self))
        a, s2 = a[:, None, None], s2[:, None, None]
        var = a**2 * self.stds**2 + s2                            # (n, d, 2)
        diff = x.astype(np.float64)[:, :, None] - a * self.means  # (n, d, 2)
        return x, var, diff

    def _relative_terms(self, a, var, diff):
        """(top, rel), shapes (n, d, 1) and (n, d, 2): each coordinate's larger log term
        l_r = log w_r + log N(x_j; alpha mu_r, v_r) and both terms relative to it (0 and
        l_c - l_r), the posterior's logits.

        At an entry at least 8 standard deviations from both components (_FAR_QUAD), l_c - l_r
        is taken from the differences of the components, not of the two log terms, which are
        each ~ (x_j - alpha mu)^2 / (2 v) and lose its digits far out (FlowMatching's
        t = 0.99999 at x = 1e4: terms of 5e7, logits 2e-9 off, and so x0):

            l_c - l_r = log(w_c / w_r) - log1p((v_c - v_r) / v_r) / 2
                        - [(d_c - d_r)(d_c + d_r) / v_c - (d_r / v_r) d_r (v_c - v_r) / v_c] / 2,

        d = x_j - alpha mu, d_c - d_r = alpha (mu_r - mu_c), v_c - v_r = alpha^2 (s_c^2 - s_r^2)
        (where that overflows, or its two parts exceed the terms, the difference of the terms:
        a point too far out is named by the callers). Where it is positive (the rounded terms
        tied, as with equal variances beyond |x_j| ~ 2 alpha |mu_c - mu_r| / eps, and the
        argmax took r), the terms are taken relative to c and top moves to l_r + logit.

        Where |log v_j0| > _LOG_VAR_SHIFT (v beyond e^{+-16}: EDM's or VE's sigma_t past
        about 3000), rel takes log v_jc - log v_j0 = log1p(alpha^2 (s_c^2 - s_0^2) / v_j0) (or
        the difference of the logs where that ratio is beyond +-1/2) in place of log v_jc: the
        log terms round at eps |log v| / 2 (x0 at EDM's sigma = 1e100 was 1.2e-14 off, the
        variances' difference 1e-200 of them). top keeps the plain terms; other entries keep
        their bits.
        """
        with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
            quad = diff * (diff / var)                                      # (x_j - alpha mu)^2 / v
            log_var = np.log(var)
            log_terms = self._logw - 0.5 * (_LOG_2PI + log_var + quad)
            top = np.max(log_terms, axis=2, keepdims=True)
            rel = log_terms - top
            bi, bj = np.nonzero(np.abs(log_var[:, :, 0]) > _LOG_VAR_SHIFT)
            if bi.size:
                s2 = self.stds[bj] ** 2                                      # (m, 2)
                a_b = np.asarray(a, dtype=np.float64)[bi, None]
                ratio = a_b * a_b * (s2 - s2[:, :1]) / var[bi, bj, :1]
                shifted = np.where(np.abs(ratio) <= 0.5, np.log1p(ratio), log_var[bi, bj] - log_var[bi, bj, :1])
                terms = self._logw[bj] - 0.5 * (shifted + quad[bi, bj])
                rel[bi, bj] = terms - np.max(terms, axis=1, keepdims=True)
            # the difference form only where both quadratic terms exceed _FAR_QUAD: below, the
            # direct difference loses at most a few eps _FAR_QUAD (computed at every entry, the
            # difference form had made the oracle 1.7x slower at d = 32)
            i, j = np.nonzero(np.minimum(quad[:, :, 0], quad[:, :, 1]) > _FAR_QUAD)  # (np.min over axis 2 is slow)
            if i.size == 0:
                return top, rel
            r = np.argmax(log_terms[i, j], axis=1)[:, None]                 # (m, 1); 0 where nan
            c = 1 - r

            def pick(values, k):  # values (m, 2): the entry of component k in each row
                return np.take_along_axis(values, k, axis=1)[:, 0]

            ai = np.asarray(a, dtype=np.float64)[i]
            mu, sd, logw = self.means[j], self.stds[j], self._logw[j]
            v, dd, rl = var[i, j], diff[i, j], rel[i, j]
            mu_r, mu_c, s_r, s_c = pick(mu, r), pick(mu, c), pick(sd, r), pick(sd, c)
            v_r, v_c, d_r, d_c = pick(v, r), pick(v, c), pick(dd, r), pick(dd, c)
            dv = ai * ai * ((s_c - s_r) * (s_c + s_r))                      # v_c - v_r
            first, second = ai * (mu_r - mu_c) * ((d_c + d_r) / v_c), (d_r / v_r) * (d_r * (dv / v_c))
            logit = pick(logw, c) - pick(logw, r) - 0.5 * np.log1p(dv / v_r) - 0.5 * (first - second)
            # the form whose parts are smaller rounds less: with variances far apart the two parts
            # can exceed the terms themselves
            better = np.abs(first) + np.abs(second) < d_c * (d_c / v_c) + d_r * (d_r / v_r)
            # a component of no weight stays at -inf (its other terms may be inf: -inf + inf was nan)
            none = pick(logw, c) == -np.inf
            logit = np.where(none, -np.inf, logit)
            use = ((np.isfinite(logit) & better) | none) & np.isfinite(top[i, j, 0])
            np.put_along_axis(rl, c, np.where(use, logit, pick(rl, c))[:, None], axis=1)
            # a positive logit: c is the larger term, though the rounded terms made r the argmax (they
            # tie once 2 alpha |mu_c - mu_r| |x_j| is below an ulp of x_j^2 / (2 v): at x = 3e16, shift
            # 1.5 the logit 6.7e16 overflowed exp and a finite log p of -4.5e32 was refused as too far
            # out); the terms relative to c instead, and top moved to l_c = l_r + logit
            flip = use & (logit > 0)
            if np.any(flip):
                np.put_along_axis(rl, r, np.where(flip, -logit, pick(rl, r))[:, None], axis=1)
                np.put_along_axis(rl, c, np.where(flip, 0.0, pick(rl, c))[:, None], axis=1)
                top[i, j, 0] += np.where(flip, logit, 0.0)
            rel[i, j] = rl
        return top, rel

    def _evaluate(self, x, t, process):
        x, var, diff = self._coordinates(x, t, process)
        a = check_process(process, variance_preserving=False)._coefficients(t, x.shape[0])[0]
        top, rel = self._relative_terms(a, var, diff)
        with np.errstate(over="ignore", invalid="ignore"):  # a point too far out is named below
            post = np.exp(rel)
            total = post.sum(axis=2, keepdims=True)
            log_coord = top[:, :, 0] + np.log(total[:, :, 0])        # log p_t of each coordinate
            # left to right: a component of no weight gives (0 * diff) / var = 0, never 0 * inf
            score = -np.sum(post / total * diff / var, axis=2)
            logp, score = log_coord.sum(axis=1).astype(x.dtype), score.astype(x.dtype)
        check_oracle_output(logp, x)
        return logp, score

    def _posterior_mean(self, x, t, process):
        """E[x0 | x_t = x], float64 (n, d): coordinate by coordinate
        sum_c pi_jc (mu_jc + alpha_t s_jc^2 (x_j - alpha_t mu_jc) / v_jc), with no
        cancellation where alpha_t is small (ExactOutputs.predict)."""
        x, var, diff = self._coordinates(x, t, process)
        n = x.shape[0]
        a = check_process(process, variance_preserving=False)._coefficients(t, n)[0]
        rel = self._relative_terms(a, var, diff)[1]
        a = a[:, None, None]
        with np.errstate(over="ignore", invalid="ignore"):  # a point too far out is named below
            post = np.exp(rel)
            post /= post.sum(axis=2, keepdims=True)
            each = self.means + a * (self.stds**2 / var) * diff  # s^2 / v <= 1 / alpha^2; s^2 diff may overflow
            out = np.sum(np.where(post > 0, post * each, 0.0), axis=2)
        check_oracle_output(out.sum(axis=1), x)
        return out

    def divergence(self, x, t=0.0, process=OU()):
        """Exact divergence of the score (the Laplacian of log p_t), shape (n,), dtype of x.

        Coordinate by coordinate, with g_c = -(x_j - alpha_t mu_jc) / v_jc the score of
        component c, v_jc = alpha_t^2 s_jc^2 + sigma_t^2 and s_j = sum_c pi_jc g_c,

            d^2/dx_j^2 log p_t = -sum_c pi_jc / v_jc + sum_c pi_jc (g_c - s_j)^2,

        (the second sum a variance about s_j, free of the cancellation in
        sum_c pi_jc g_c^2 - s_j^2), summed over j. Raises as log_prob, and for float32 points
        where the divergence is beyond float32's range (never an inf).
        """
        x, var, diff = self._coordinates(x, t, process)
        a = check_process(process, variance_preserving=False)._coefficients(t, x.shape[0])[0]
        rel = self._relative_terms(a, var, diff)[1]
        with np.errstate(over="ignore", invalid="ignore"):  # a point too far out is named below
            post = np.exp(rel)
            post /= post.sum(axis=2, keepdims=True)
            g = -diff / var
            s = np.sum(np.where(post > 0, post * g, 0.0), axis=2, keepdims=True)
            spread = np.where(post > 0, (g - s) ** 2, 0.0)
            out = np.sum(post * (spread - 1.0 / var), axis=(1, 2))
        check_oracle_output(out, x)
        return cast_oracle_output(out, x, "divergence")
