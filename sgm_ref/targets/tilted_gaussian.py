"""Tilted Gaussians p_0 = exp(f) gamma_d / Z, the paper's general class, with a Monte-Carlo oracle.

Sampling is exact, by rejection from gamma_d: propose x ~ N(0, I), accept with probability
exp(f(x) - f_max), f_max >= sup f. The score of p_t comes from the Ornstein–Uhlenbeck
(Mehler) semigroup: with y = alpha_t x + sigma_t Z, Z ~ N(0, I),

    grad log p_t(x) = -x + alpha_t E_Z[e^{f(y)} grad f(y)] / E_Z[e^{f(y)}]          ("gradient")
                    = -x + (alpha_t / sigma_t) E_Z[Z e^{f(y)}] / E_Z[e^{f(y)}]      ("stein")

(the second by Gaussian integration by parts; it needs no gradient but its variance grows
like 1 / sigma_t^2 as t -> 0). Both are estimated by self-normalised Monte Carlo over
n_mc draws of Z fixed at construction (common random numbers: the oracle is a smooth,
deterministic function of x and t), with the delta-method standard error

    se^2 = sum_i w_i^2 (g_i - R)^2 / (sum_i w_i)^2,   w_i = e^{f(y_i) - max f},  R the estimate.

The same draws give log p_t(x) = log gamma_d(x) + log E_Z[e^{f(y)}] - log Z, with log Z =
log E_gamma[e^f] estimated once from n_normaliser draws (log_normaliser, its se); those
draws, weighted by e^f, also give the mean and covariance of p_0 (mean(), covariance(),
self-normalised estimates).

Any other process (alpha_t^2 + sigma_t^2 = q_t != 1: SubVP, VE, EDM, FlowMatching). Under
gamma_d, X_0 given X_t = x is N(alpha x / q, sigma^2 / q I) and X_t ~ N(0, q I), so with
y = alpha x / q + (sigma / sqrt q) Z

    p_t(x) = N(x; 0, q I) E_Z[e^{f(y)}] / Z,
    grad log p_t(x) = -x / q + (alpha / q) E_Z[e^{f(y)} grad f(y)] / E_Z[e^{f(y)}]
                    = -x / q + alpha / (sigma sqrt q) E_Z[Z e^{f(y)}] / E_Z[e^{f(y)}],

the same draws of Z. For variance-preserving processes (q = 1) the formulas above are
used as written (no rounding of q).
"""

import numpy as np

from .._validation import check_count, check_float_dtype, check_oracle_output, check_points, check_real, check_rng
from ..processes import OU, VariancePreserving, check_process
from ._predict import ExactOutputs
from ._checks import check_size, plain, shown

__all__ = ["TiltedGaussian"]

_LOG_2PI = float(np.log(2.0 * np.pi))
_BLOCK = 2**21  # numbers per block of (rows, n_mc, d) proposals
_U = float(np.finfo(np.float64).eps) / 2  # unit roundoff of float64


def _check_finite(values, x, what):
    # per row, over the other axes (values.reshape(n, -1) fails for n = 0: no points, no error)
    bad = ~np.all(np.isfinite(values), axis=tuple(range(1, values.ndim)))
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"the Monte-Carlo {what} at x[{i}] overflows {values.dtype} (grad_f, or 1 / sigma_t at "
                         f"this t, too large there); use float64 points, a larger t, or rescale f")


def _cast(values, x, what):
    """values in the dtype of the points, refusing what float32 cannot hold."""
    with np.errstate(over="ignore"):  # named just below
        out = values.astype(x.dtype, copy=False)
    _check_finite(out, x, what)
    return out


def _real(values, name):
    """values as float64, refusing complex ones: a bare cast drops the imaginary part with only a warning."""
    values = np.asarray(values)
    if np.iscomplexobj(values):
        raise ValueError(f"{name} must return real values, got {values.dtype} (a complex result would lose its "
                         "imaginary part); return the real part yourself if that is what you mean")
    return values.astype(np.float64, copy=False)


def _norm(v):
    """Euclidean norm over the last axis, scaled by the largest entry (no overflow for finite v)."""
    top = np.max(np.abs(v), axis=-1, keepdims=True)
    safe = np.where(top > 0, top, 1.0)
    return np.squeeze(top, -1) * np.sqrt(np.sum((v / safe) ** 2, axis=-1))


def _logmeanexp(v, axis):
    top = np.max(v, axis=axis, keepdims=True)
    with np.errstate(over="ignore"):  # v - top = -inf where v spans more than the float range: exp gives 0
        return np.squeeze(top, axis) + np.log(np.mean(np.exp(v - top), axis=axis))


class TiltedGaussian(ExactOutputs):
    """p_0(x) = exp(f(x)) gamma_d(x) / Z for a user-supplied f; exact samples, Monte-Carlo score.

    monte_carlo = True: its score, log_prob and divergence are estimates from fixed draws
    (sgm_ref.likelihood.log_prob labels its divergence "monte carlo", not "exact").

    Parameters
    ----------
    f : callable, (m, d) float64 -> (m,)
        The log-relative density (plus sign: p_0 is proportional to exp(f) gamma_d).
    grad_f : callable, (m, d) -> (m, d), or None
        Its gradient; None allows only the "stein" estimator.
    d : int
    f_max : float or None
        An upper bound of f, needed for sampling (a draw with f > f_max raises).
    n_mc : int, default 4096
        Monte-Carlo draws of Z for the score and log-density.
    rng : numpy.random.Generator
        Draws the Z of the oracle and the normaliser's points (once, here).
    estimator : {"gradient", "stein"}
    n_normaliser : int, default 2**16

    n_mc d and n_normaliser d numbers must fit in this machine's memory.

    Raises
    ------
    ValueError
        For arguments of the wrong kind or size; the oracle and sampler also raise when
        f or grad_f return non-finite values or the estimates overflow.
    """

    monte_carlo = True

    def __init__(self, f, grad_f, d, f_max=None, *, n_mc=4096, rng, estimator="gradient", n_normaliser=2**16):
        if not callable(f):
            raise ValueError(f"f must be callable (m, d) -> (m,), got {type(f).__name__}")
        if grad_f is not None and not callable(grad_f):
            raise ValueError(f"grad_f must be callable (m, d) -> (m, d) or None, got {type(grad_f).__name__}")
        if estimator not in ("gradient", "stein"):
            raise ValueError(f"estimator must be 'gradient' or 'stein', got {shown(estimator)}")
        if estimator == "gradient" and grad_f is None:
            raise ValueError("the 'gradient' estimator needs grad_f; pass it or use estimator='stein'")
        self.f, self.grad_f, self.estimator = f, grad_f, estimator
        self.d = check_count(d, "d")
        self.f_max = None if f_max is None else check_real(f_max, "f_max")
        n_mc = check_size(check_count(n_mc, "n_mc", minimum=2), self.d, "n_mc", f"n_mc draws in d = {self.d}")
        n_normaliser = check_count(n_normaliser, "n_normaliser", minimum=2)
        check_size(n_normaliser, 2 * self.d, "n_normaliser", f"n_normaliser points in d = {self.d}")
        rng = check_rng(rng)
        self._z = rng.standard_normal((n_mc, self.d))
        x = rng.standard_normal((n_normaliser, self.d))
        fx = self._f(x)
        top = fx.max()
        with np.errstate(over="ignore"):  # f spanning more than the float range: exp(-inf) = 0 is right
            w = np.exp(fx - top)
        self.log_normaliser = float(top + np.log(w.mean()))
        self.log_normaliser_se = float(w.std(ddof=1) / np.sqrt(w.size) / w.mean())  # delta method on log
        w /= w.sum()
        self._mean = w @ x
        centred = x - self._mean
        self._covariance = (centred.T * w) @ centred

    # -- construction -------------------------------------------------------------------
    @classmethod
    def barron(cls, d, width=16, path_norm=2.0, activation="tanh", *, rng, **kwargs):
        """f(x) = sum_j a_j phi(w_j . x + b_j), a two-layer network of path norm sum_j |a_j| (|w_j| + |b_j|).

        w_j uniform on the unit sphere, b_j ~ N(0, 1), a_j of random sign, scaled so the
        path norm is exactly path_norm; phi = tanh or cos, so f_max = sum_j |a_j|. The
        complexity (the path norm) does not depend on d. kwargs go to the constructor.
        """
        d = check_count(d, "d")
        width = check_size(check_count(width, "width"), d, "width", f"width units in d = {d}")
        path_norm = check_real(path_norm, "path_norm", low=0.0)
        if activation not in ("tanh", "cos"):
            raise ValueError(f"activation must be 'tanh' or 'cos', got {shown(activation)}")
        rng = check_rng(rng)
        W = rng.standard_normal((width, d))
        W /= np.linalg.norm(W, axis=1, keepdims=True)
        b = rng.standard_normal(width)
        a = rng.choice([-1.0, 1.0], size=width) * rng.uniform(0.5, 1.0, size=width)
        a *= path_norm / np.sum(np.abs(a) * (1.0 + np.abs(b)))
        if activation == "tanh":
            def f(x):
                return np.tanh(x @ W.T + b) @ a

            def grad_f(x):
                return (a * (1.0 - np.tanh(x @ W.T + b) ** 2)) @ W
        else:
            def f(x):
                return np.cos(x @ W.T + b) @ a

            def grad_f(x):
                return (-a * np.sin(x @ W.T + b)) @ W
        target = cls(f, grad_f, d, float(np.sum(np.abs(a))), rng=rng, **kwargs)
        target.network = {"W": W, "b": b, "a": a, "activation": activation, "path_norm": path_norm}
        return target

    @property
    def dim(self):
        return self.d

    def __repr__(self):
        return f"TiltedGaussian(d={self.d}, n_mc={self._z.shape[0]}, estimator={self.estimator!r})"

    def mean(self):
        """Self-normalised estimate of the mean of p_0, shape (d,)."""
        return self._mean.copy()

    def covariance(self):
        """Self-normalised estimate of the covariance of p_0, shape (d, d)."""
        return self._covariance.copy()

    def _f(self, x):
        v = _real(self.f(x), "f")
        if v.shape != (x.shape[0],):
            raise ValueError(f"f must return {x.shape[0]} finite values for {x.shape[0]} points, got shape {v.shape}")
        if not np.all(np.isfinite(v)):  # the shape was right: say which value, not the shape
            i = int(np.argmax(~np.isfinite(v)))
            raise ValueError(f"f must return finite values, got f(x) = {float(v[i])!r} at row {i} of {x.shape[0]} "
                             f"points (|x| up to {float(np.max(np.abs(x[i]))):.3g})")
        return v

    # -- sampling -------------------------------------------------------------------------
    def sample(self, n, rng, dtype=np.float64, max_proposals=10**8):
        """n exact draws by rejection from gamma_d (module docstring), shape (n, d).

        Raises ValueError if f_max is unknown, if a proposal has f > f_max (the bound is
        wrong), if more than max_proposals (a number >= 1) proposals are needed (proposals
        are drawn in blocks: those past the n-th acceptance do not count), or if
        n points do not fit in this machine's memory.
        """
        n = check_size(check_count(n, "n"), 2 * self.d, "n", f"n points in d = {self.d}")
        rng = check_rng(rng)
        dtype = check_float_dtype(dtype)
        max_proposals = check_real(max_proposals, "max_proposals", low=1.0)
        if self.f_max is None:
            raise ValueError("sampling by rejection needs f_max, an upper bound of f")
        accepted, count, proposed, rate = [], 0, 0, 0.5
        while count < n:
            m = int(min(max(64, 1.2 * (n - count) / rate), max(64, _BLOCK // self.d)))  # bounded memory
            x = rng.standard_normal((m, self.d))
            log_u = np.log(rng.random(m))
            fx = self._f(x)
            if np.any(fx > self.f_max):
                raise ValueError(f"f = {plain(fx.max())} exceeds f_max = {plain(self.f_max)}: f_max must bound f above")
            with np.errstate(over="ignore"):  # -inf: never accepted, as it should be
                accept = log_u < fx - self.f_max
            keep = x[accept]
            accepted.append(keep)
            if count + keep.shape[0] >= n:
                # the proposals the n-th acceptance needed: a block is drawn whole, so up to 64
                # or more were made, and those past it do not count against max_proposals
                used = proposed + int(np.flatnonzero(accept)[n - count - 1]) + 1
            else:
                used = proposed + m
            count += keep.shape[0]
            proposed += m
            rate = max(count / proposed, 1e-6)
            if used > max_proposals:
                # the limit the caller set is named: "f_max is too loose" alone blamed f_max when
                # max_proposals = 2 was too small for 3 points that every proposal would give
                raise ValueError(f"rejection sampling accepted {count} of {proposed} proposals; {n} points need "
                                 f"more than max_proposals = {max_proposals:.6g} of them: f_max is too loose or "
                                 "exp(f) too concentrated, or raise max_proposals")
        return np.concatenate(accepted)[:n].astype(dtype, copy=False)

    # -- the Monte-Carlo oracle ------------------------------------------------------------
    def score_and_se(self, x, t=0.0, process=OU()):
        """Monte-Carlo score of p_t and its standard error, both shape (n, d), float64."""
        return self._evaluate(check_points(x, "x", d=self.d), t, process, want_score=True)[1:]

    def score(self, x, t=0.0, process=OU()):
        """Monte-Carlo estimate of grad log p_t(x), shape (n, d), dtype of x."""
        x = check_points(x, "x", d=self.d)
        return _cast(self._evaluate(x, t, process, want_score=True)[1], x, "score")

    def log_prob_and_score(self, x, t=0.0, process=OU()):
        """(log_prob, score) from one pass over the Monte-Carlo draws."""
        x = check_points(x, "x", d=self.d)
        logp, score, _ = self._evaluate(x, t, process, want_score=True)
        return _cast(logp, x, "log p_t"), _cast(score, x, "score")

    def log_prob(self, x, t=0.0, process=OU()):
        """Monte-Carlo estimate of log p_t(x), shape (n,) (exact in f at t = 0, up to log Z)."""
        x = check_points(x, "x", d=self.d)
        return _cast(self._evaluate(x, t, process, want_score=False)[0], x, "log p_t")

    def _evaluate(self, x, t, process, want_score):
        """(log p_t, score, se) at points x already checked by check_points."""
        x = x.astype(np.float64, copy=False)
        n, d = x.shape
        a, s2 = check_process(process, variance_preserving=False)._coefficients(t, n)
        sigma = np.sqrt(s2)
        if isinstance(process, VariancePreserving):
            with np.errstate(over="ignore"):  # a point too far out is named below
                log_gamma = -0.5 * (d * _LOG_2PI + np.sum(x**2, axis=1))
            x_in, a_in = x, a
        else:
            # module docstring: the posterior of X_0 under gamma_d is N(a x / q, s^2 / q)
            q = a * a + s2
            root_q = np.sqrt(q)
            with np.errstate(over="ignore"):
                log_gamma = -0.5 * (d * (_LOG_2PI + np.log(q)) + np.sum(x**2, axis=1) / q)
            x_in, a_in = x / q[:, None], a / q
            sigma = sigma / root_q
        logp = np.empty(n)
        score = np.empty((n, d)) if want_score else None
        se = np.empty((n, d)) if want_score else None
        n_mc = self._z.shape[0]
        rows = max(1, _BLOCK // (n_mc * d))
        for start in range(0, n, rows):
            blk = slice(start, min(start + rows, n))
            y = a[blk, None, None] * x_in[blk, None, :] + sigma[blk, None, None] * self._z  # (r, n_mc, d)
            fy = self._f(y.reshape(-1, d)).reshape(-1, n_mc)
            logp[blk] = log_gamma[blk] + _logmeanexp(fy, axis=1) - self.log_normaliser
            if not want_score:
                continue
            with np.errstate(over="ignore"):
                w = np.exp(fy - fy.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)                                          # (r, n_mc)
            if self.estimator == "gradient":
                g = a_in[blk, None, None] * self._grad(y.reshape(-1, d)).reshape(y.shape)
            else:
                # alpha / sigma E[Z w]: at t = 0 (sigma = 0) p_0's score is -x + grad f(x), which
                # this form cannot give; the gradient form can
                if np.any(sigma[blk] == 0):
                    raise ValueError("the 'stein' estimator needs t > 0; use estimator='gradient' at t = 0")
                g = (a_in[blk] / sigma[blk])[:, None, None] * self._z[None, :, :]
            R = np.einsum("ri,rid->rd", w, g)
            score[blk] = -x_in[blk] + R
            # scaled by the largest deviation, so (g - R)^2 cannot overflow where g is large
            # (the stein form's alpha / sigma reaches 4e161 as t -> 0)
            dev = g - R[:, None, :]
            top = np.max(np.abs(dev), axis=1)                                          # (r, d)
            safe = np.where(top > 0, top, 1.0)
            se[blk] = top * np.sqrt(np.einsum("ri,rid->rd", w**2, (dev / safe[:, None, :]) ** 2))
        check_oracle_output(logp, x)
        if want_score:
            _check_finite(score, x, "score")
            _check_finite(se, x, "standard error of the score")
        return logp, score, se

    def _grad(self, y):
        g = _real(self.grad_f(y), "grad_f")
        if g.shape != y.shape or not np.all(np.isfinite(g)):
            raise ValueError(f"grad_f must return finite values of shape {y.shape}, got shape {g.shape}")
        return g

    def divergence(self, x, t=0.0, process=OU()):
        """Monte-Carlo estimate of the Laplacian of log p_t, shape (n,), dtype of x (divergence_and_se)."""
        points = check_points(x, "x", d=self.d)
        return _cast(self.divergence_and_se(points, t, process)[0], points, "divergence")  # as score does

    def divergence_and_se(self, x, t=0.0, process=OU()):
        """Monte-Carlo estimate of the Laplacian of log p_t (the divergence of the score), and its standard error.

        Returns (estimate, standard error), both shape (n,), float64; divergence gives the
        estimate in the dtype of x, as score does.

        With y = c x + s Z as in the module docstring (c = alpha_t, s = sigma_t for
        variance-preserving processes; c = alpha_t / q, s = sigma_t / sqrt q otherwise),
        M(x) = E_Z[e^{f(y)}] and the self-normalised weights w of the draws,

            Laplacian log p_t = -d / q + tr Hess M / M - |grad M / M|^2,

        where, by Gaussian integration by parts (Stein's identity E[Z h(Z)] = E[grad h(Z)],
        Z ~ N(0, I): Stein 1981, Ann. Statist. 9(6), Lemmas 1-2) on one derivative,

            tr Hess M / M = (c^2 / s) E_w[Z . grad f(y)],   grad M / M = c E_w[grad f(y)]
                          = (c / s)^2 E_w[|Z|^2 - d],                  = (c / s) E_w[Z],

        E_w[h] = E_Z[e^{f(y)} h] / E_Z[e^{f(y)}]. The same identity gives E_w[Z] = s E_w[grad f(y)],
        so |grad M / M|^2 = (c^2 / s) E_w[Z] . E_w[grad f(y)] and

            "gradient":  Laplacian log p_t = -d / q + (c^2 / s) Cov_w(Z, grad f(y))
            "stein":     Laplacian log p_t = -d / q + (c / s)^2 E_w[|Z|^2 - d] - (c / s)^2 |E_w[Z]|^2

        (q = 1 for variance-preserving processes). Both are estimated by self-normalised
        importance sampling over the fixed draws Z_i (Owen, Monte Carlo theory, methods and
        examples, 2013, ch. 9.2), weights w_i = e^{f(y_i)} / sum_j e^{f(y_j)}:

            "gradient":  -d / q + (c^2 / s) sum_i w_i (Z_i - Zbar) . (G_i - Gbar) / (1 - sum_i w_i^2),

        G_i = grad f(y_i) - grad f(c x), Zbar = sum_i w_i Z_i, Gbar = sum_i w_i G_i. Subtracting
        grad f(c x) leaves the covariance unchanged and keeps the O(s) differences from being
        rounded off the O(1) gradients; the factor 1 / (1 - sum w_i^2) is the reliability-
        weights correction of a weighted covariance, which removes its O(1 / n_mc) bias where
        the weights are equal (t -> 0: measured, f quadratic, n_mc = 64: 0.026 -> 0.007) and
        only part of it where they are not: the ratio of self-normalised sums keeps an O(1 / n_mc)
        bias (the mixture tilt of the tests at t = 0.3: -0.06 -> -0.03; d = 2, t = 1, n_mc = 64:
        -0.008 to -0.014 over 2000 seeds, 7 to 12 standard errors of their mean, 0.001 at
        n_mc = 4096), and the standard error below is then 0.75 of the spread at n_mc = 64.
        The "stein" form's standard error under-reads the same way where the tilt is strong
        (heavy-tailed weights): 0.70 of the spread over 200 seeds for f = mu . x, |mu| = 1.8,
        t = 0.5, n_mc = 512; 0.81-0.91 at n_mc = 4096; 0.95-0.99 for |mu| = 0.58.
        Since Cov_w(Z, grad f(c x + s Z)) = O(s), its error stays bounded as sigma_t -> 0
        (standard error 0.0026 at t = 1e-17 to 1e-2, barron d = 2, n_mc = 4096), where the
        earlier form (c^2 / s) E_w[Z . grad f] - c^2 |E_w grad f|^2, the same in expectation,
        had 6e5 at t = 1e-17 and 0.019 at t = 1e-2.
        The "stein" form divides by s^2 and its error grows like 1 / sigma_t^2 as t -> 0.

        These are estimates of the true Laplacian from the same fixed draws as the score,
        not the exact divergence of the Monte-Carlo score as a function of x (that would
        need the Hessian of f); both converge as n_mc grows. Needs sigma_t > 0 (t > 0).

        The delta-method standard error over the draws, from the influence of draw i on
        the estimate ((c^2 / s) (P_i - sum_j w_j P_j) / (1 - sum w^2), P_i = (Z_i - Zbar) .
        (G_i - Gbar), for "gradient"), is computed alongside, and an estimate whose standard
        error exceeds d / q is refused. "gradient" has a rounding floor instead: y = c x + s Z
        in float64 rounds the step s Z by e_i (|e_i| <= u |y_i|, u = 2^-53), which changes G_i
        by about L |e_i| + u (|grad f(y_i)| + |grad f(c x)|), L the largest difference quotient
        |G_i| / |y_i - c x| among the draws; this times (c^2 / s) sum_i w_i |Z_i - Zbar| bounds the
        rounding error, and an estimate is refused where it exceeds d / q, or where y_i = c x
        (the step rounded to nothing) for more than half the weight: then the draws see
        nothing of f near c x. For barron(2) at the points of the tests the floor is 1e-8 at
        t = 1e-17, 4e-3 at t = 1e-28 (measured error 4e-5), 0.05 at t = 1e-30 (error 1.7e-3) and
        0.16 at t = 1e-31 (error 0.011, accepted: 4 times the standard error, which counts no
        rounding); t = 1e-40 is refused.
        The floor takes grad_f to be computed to within a few ulps of its value: one that
        cancels loses more and is not covered (barron's tanh form a (1 - tanh^2) where tanh
        saturates: d = 1, x = 6.55, t = 1e-28 gives -1 with standard error 0 for -1.0000138,
        158 times the floor; 5e-8 at t = 1e-16).

        Raises
        ------
        ValueError
            For bad x, t or process; for t with sigma_t = 0; for non-finite f or grad_f;
            where the estimate's standard error exceeds d / q (n_mc too small for f, or for
            "stein" t too small: the row, t, sigma_t and the standard error are named), and
            for "gradient" where its rounding floor exceeds d / q (t too small).
        """
        points = check_points(x, "x", d=self.d)
        x = points.astype(np.float64, copy=False)
        n, d = x.shape
        a, s2 = check_process(process, variance_preserving=False)._coefficients(t, n)
        if np.any(s2 == 0):
            raise ValueError("divergence of a TiltedGaussian needs t > 0 (sigma_t > 0): at t = 0 the Laplacian "
                             "needs the Hessian of f")
        sigma = np.sqrt(s2)
        if isinstance(process, VariancePreserving):
            q = np.ones(n)
            c, s = a, sigma
        else:
            q = a * a + s2
            c, s = a / q, sigma / np.sqrt(q)
        out, se = np.empty(n), np.empty(n)
        rounding, unresolved, overflow = np.zeros(n), np.zeros(n), np.zeros(n, dtype=bool)
        n_mc = self._z.shape[0]
        rows = max(1, _BLOCK // (n_mc * d))
        for start in range(0, n, rows):
            blk = slice(start, min(start + rows, n))
            cb, sb = c[blk, None, None], s[blk, None, None]
            y = cb * x[blk, None, :] + sb * self._z                                   # (r, n_mc, d)
            fy = self._f(y.reshape(-1, d)).reshape(-1, n_mc)
            with np.errstate(over="ignore"):
                w = np.exp(fy - fy.max(axis=1, keepdims=True))
            w /= w.sum(axis=1, keepdims=True)
            if self.estimator == "gradient":
                # -d / q + (c^2 / s) Cov_w(Z, grad f(y)) / (1 - sum w^2) (docstring), with grad f(c x)
                # taken out of each gradient: it cancels in the covariance, and the differences carry
                # the O(s) signal where the gradients themselves are O(1)
                cx = cb[:, 0] * x[blk]                                                   # (r, d), as in y
                g0 = self._grad(cx)
                with np.errstate(over="ignore", invalid="ignore"):  # grad_f too large: named below
                    gf = self._grad(y.reshape(-1, d)).reshape(y.shape) - g0[:, None, :]
                    zc = self._z - np.einsum("ri,id->rd", w, self._z)[:, None, :]       # Z_i - E_w Z
                    gc = gf - np.einsum("ri,rid->rd", w, gf)[:, None, :]                # G_i - E_w G
                    prod = np.einsum("rid,rid->ri", zc, gc)
                    cov = np.einsum("ri,ri->r", w, prod)
                overflow[blk] = ~(np.all(np.isfinite(gc), axis=(1, 2)) & np.all(np.isfinite(prod), axis=1)
                                  & np.isfinite(cov))
                keep = 1.0 - np.einsum("ri,ri->r", w, w)                                # 1 - sum w_i^2
                # one draw holding all the weight (sum w^2 = 1) has no covariance to estimate: inf, refused below
                scale = np.where(keep > 0, c[blk] ** 2 / s[blk] / np.where(keep > 0, keep, 1.0), np.inf)
                # influence of draw i on the estimate: scale (P_i - Cov_w), P_i = (Z_i - E_w Z) . (G_i - E_w G)
                with np.errstate(over="ignore", invalid="ignore"):  # inf or nan: refused below
                    out[blk] = -d / q[blk] + scale * cov
                    spread = np.sqrt(np.einsum("ri,ri->r", w**2, (prod - cov[:, None]) ** 2))
                    se[blk] = np.where(keep > 0, scale * spread, np.inf)
                    # rounding: y_i - c x differs from s Z_i by e_i (the sum rounded), and grad f(y_i) - grad f(c x)
                    # by about L |e_i| + u (|grad f(y_i)| + |grad f(c x)|), L the largest difference quotient seen
                    step = y - cx[:, None, :]
                    lost = _norm(step - sb * self._z)                                   # |e_i|, (r, n_mc)
                    size = _norm(step)
                    quotient = _norm(gf) / np.where(size > 0, size, 1.0)
                    lipschitz = np.max(np.where(size > 0, quotient, 0.0), axis=1)
                    g_size = _norm(gf + g0[:, None, :]) + _norm(g0)[:, None]
                    rounding[blk] = (c[blk] ** 2 / s[blk]) * np.einsum(
                        "ri,ri->r", w * _norm(zc), lipschitz[:, None] * lost + _U * g_size)
                    unresolved[blk] = np.einsum("ri,ri->r", w, size == 0)  # the weight of steps rounded to nothing
                continue
            # delta-method standard error of the estimate over the draws: the influence of draw i
            # is scale_h (h_i - E_w h) - 2 grad . scale_k (k_i - E_w k); the estimator divides by
            # sigma_t, so this grows like 1 / sigma_t (1 / sigma_t^2 for stein) as t -> 0
            with np.errstate(over="ignore", invalid="ignore"):  # (c / s)^2 past float64 at t <~ 1e-308: refused below
                hess = (c[blk] / s[blk]) ** 2 * (np.einsum("ri,i->r", w, np.sum(self._z**2, axis=1)) - d)
                grad = (c[blk] / s[blk])[:, None] * np.einsum("ri,id->rd", w, self._z)
                h, k = np.broadcast_to(np.sum(self._z**2, axis=1), w.shape), np.broadcast_to(self._z, y.shape)
                scale_h, scale_k = (c[blk] / s[blk]) ** 2, c[blk] / s[blk]
                out[blk] = -d / q[blk] + hess - np.sum(grad**2, axis=1)
                phi = (scale_h[:, None] * (h - np.einsum("ri,ri->r", w, h)[:, None])
                       - 2.0 * scale_k[:, None] * np.einsum("rid,rd->ri", k - np.einsum("ri,rid->rd", w, k)[:, None, :],
                                                            grad))
                se[blk] = np.sqrt(np.einsum("ri,ri->r", w**2, phi**2))
        _check_finite(np.where(overflow, np.nan, 0.0), x, "divergence")  # grad_f's differences overflowed
        noisy = ~(se <= d / q)  # nan too
        if np.any(noisy):
            i = int(np.argmax(noisy))
            t_i = float(np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))[i])
            why = ("the 'stein' estimator divides by sigma_t, and its error grows like 1 / sigma_t^2 as t -> 0; use a "
                   "larger t (log_prob from t0 > 0: the Laplacian at t -> 0 needs the Hessian of f) or a larger n_mc"
                   if self.estimator == "stein" else
                   "the weights e^f(y) rest on too few draws for this f and n_mc; use a larger n_mc or a larger t")
            raise ValueError(f"the Monte-Carlo divergence at x[{i}], t = {t_i!r} (sigma_t = "
                             f"{float(np.sqrt(s2[i])):.3g}) has standard error {float(se[i]):.3g}, more than d / q = "
                             f"{float(d / q[i]):.3g} (the Laplacian of the Gaussian reference): {why}")
        rounded = ~(rounding <= d / q) | ~(unresolved <= 0.5)  # nan too
        if np.any(rounded):
            i = int(np.argmax(rounded))
            t_i = float(np.broadcast_to(np.asarray(t, dtype=np.float64), (n,))[i])
            raise ValueError(f"the Monte-Carlo divergence at x[{i}], t = {t_i!r} (sigma_t = "
                             f"{float(np.sqrt(s2[i])):.3g}) is lost to rounding: its rounding error (of y = c x + s Z "
                             f"and of grad f(y) - grad f(c x)) may reach {float(rounding[i]):.3g}, against d / q = "
                             f"{float(d / q[i]):.3g}, and y = c x + s Z rounds the step s Z to nothing for "
                             f"{float(unresolved[i]):.3g} of the weight (more than d / q, or than half, is refused); "
                             "use a larger t (log_prob from t0 > 0: the Laplacian at t -> 0 needs the Hessian of f)")
        _check_finite(out, x, "divergence")
        return out, se
