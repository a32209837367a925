"""Exact likelihoods of the probability-flow ODE's model, by the instantaneous change of variables.

The probability-flow ODE of a forward process dX = f(t) X dt + g(t) dW with score s,

    dx/dt = v(x, t) = f(t) x - g(t)^2 / 2 s(x, t),

carries p_t0 to p_T; its model q (the law at t0 of the ODE run backwards from the prior
pi at T) has, along the trajectory x_t started at x_t0 = x (continuity equation
d/dt log q_t(x_t) = -div v(x_t, t)),

    log q(x) = log pi(x_T) + int_t0^T div v(x_t, t) dt,
    div v    = d f(t) - g(t)^2 / 2 div s(x, t).

With the exact score of a target and its exact divergence (the targets' divergence
method) q is p_t0 itself up to the solver error and pi's mismatch with p_T: that is
what the tests check, to 1e-4 over 1,000 points.

The prior pi (prior="process", the samplers' starting law): N(0, I) for the
variance-preserving processes (OU, VP, VPCosine, DDPM), whose p_T is
N(alpha_T m, alpha_T^2 S + sigma_T^2 I)-like with alpha_T small but not 0; N(0, sigma_T^2 I)
for SubVP, VE, EDM and FlowMatching. Either differs from p_T by terms of order
alpha_T |x| |m| and alpha_T^2 Var(p_0) / sigma_T^2: choose T where those are below the
accuracy wanted, or pass prior=callable (e.g. a target's exact log p_T) to remove it.

Divergence of s (div s = tr J_s, J_s = ds/dx):

    "exact"       the score object's own: a target's divergence(x, t, process)
                  (closed form), a ScoreModel's divergence (forward mode through the MLP:
                  one forward pass plus d times the products after the input layer), or
                  a callable passed as divergence=.
    "hutchinson"  tr J ~ eps^T J eps with n_probes probes eps (Rademacher or Gaussian)
                  drawn once per point and kept for the whole integration (as score_sde);
                  with solver="heun" the trajectory is the exact run's, so each probe
                  gives an unbiased estimate of the integral along it; with "rk45" the
                  probes' integrals enter solve_ivp's error norm, so the steps (and the
                  trajectory, to the solver's tolerance) depend on the probes (endpoint
                  1.1e-5 to 3.1e-5 from the exact run's at rtol = atol = 1e-5, d = 8:
                  docs/likelihood.md). log q is the probes' mean with standard error
                  std / sqrt(n_probes). Rademacher probes up to d = 21 are distinct up
                  to sign, drawn without replacement from the 2^(d - 1) classes (the
                  standard error then has the finite-population factor; with
                  n_probes >= 2^(d - 1) all classes are used and the mean is the exact
                  trace, standard error 0). The standard error is that of a
                  mean of n_probes draws: with few probes, +-1.96 se covers less than 95%
                  (for Rademacher probes about Student's t with n_probes - 1 degrees of
                  freedom; Gaussian probes in low d cover less still, 0.81 against t's
                  0.88 with 5 probes in d = 3: docs/likelihood.md). J eps comes from
                  the score's jvp: a ScoreModel's exact forward mode, a jvp= callable, or
                  otherwise a central finite difference (s(x + h eps) - s(x - h eps)) / 2h
                  with h = 1e-5 (1 + max_j |x_j|) for each point x: two score calls on
                  n n_probes points, biased by O(h^2 |d^3 log p|), up to about 1e-8
                  relative in log q for scores smooth on the scale of h
                  (tests/test_likelihood.py). Not so where the score turns over a width
                  near h: modes +-1 of standard deviation 0.01, VP from 0 to 1, are 9e-9
                  off on their samples but 5.5 nats (of log p = -4996) at x = 0 between
                  them, where the posterior switches over sigma^2 / |mu| = 1e-4 = 10 h;
                  Rademacher probes covering every sign class (se = 0, d = 1) cover the
                  probes' randomness, not this bias. h is absolute, set for x of order
                  1, so data on a small scale are such a case: modes -1e-6 and 1e-6 of
                  standard deviations 1e-7 and 2e-7, EDM from t0 = 1e-9 to 80 (Heun, 39
                  geometric steps), are 0.23 and 5.0 nats off at a mode and at x = 0,
                  where the same mixture at scale 1 is 1e-10 and 1.3e-8 off: rescale x
                  to order 1 or pass jvp=
                  (test_the_finite_difference_step_is_absolute_and_biased_where_the_score_turns_over
                  in tests/test_likelihood.py).

Solvers: "rk45", scipy.integrate.solve_ivp's adaptive Dormand–Prince (scipy's RK45, stepped
here with solve_ivp's bits, keeping only the current state) on the whole batch
as one flat system of n (d + m) unknowns (m = n_probes, or 1): one step size for all
points, and the error norm is solve_ivp's root mean square over all unknowns, so one
point's local error may exceed rtol/atol where the others' are smaller (the tests
measure the per-point error); "heun", the explicit trapezoidal rule on a fixed grid
(second order, two evaluations per step). DDPM's beta is constant between its knots
j / N and jumps at each: adaptive RK45 at the default 1e-5 steps over the jumps blind
(4.0e-4 nats off in 68 evaluations, d = 3, t0 = 0.05 to T = 0.99), and tighter
tolerances make it crawl through them (1e-7: 1.96e-3 in 1,910; 1e-9: 1.4e-4 in 34,184:
docs/likelihood.md). Heun on a grid of knots (e.g. np.arange(j0, j1 + 1) / N: 2.1e-5
in 1,880) integrates a smooth field on every step (Heun's two stages are evaluated 64
ulps inside the step's ends, so both see the step's own beta, not a neighbour's; for
smooth processes that changes nothing measurable).
"""

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import RK45

from ._validation import call_score, check_count, check_points, check_real, check_real_array, check_rng
from .processes import VariancePreserving, check_process

__all__ = ["LogProb", "log_prob", "bits_per_dim", "prior_log_prob", "nll_report", "nll_lines"]

_LOG_2PI = float(np.log(2.0 * np.pi))


@dataclass(frozen=True)
class LogProb:
    """What log_prob returns; arrays have one entry (or row) per point.

    Attributes
    ----------
    log_q : ndarray (n,)
        log q(x) = prior + integral (the mean over probes for Hutchinson).
    se : ndarray (n,) or None
        Standard error of log_q over the probes (Hutchinson with n_probes >= 2, or with
        Rademacher probes covering all 2^(d - 1) sign classes, where it is 0: the trace is
        then exact, e.g. in d = 1), else None. It covers the probes' randomness only, not
        the solver's error.
    prior : ndarray (n,)
        log pi(x_T), the prior's log-density at the endpoint.
    integral : ndarray (n,)
        int_t0^T div v(x_t, t) dt (mean over probes for Hutchinson).
    endpoint : ndarray (n, d)
        x_T, the ODE's solution at T.
    n_evaluations : int
        Evaluations of the drift and its divergence on the whole batch (score calls on n
        points; Hutchinson with a finite-difference jvp adds two calls on n n_probes points each).
    divergence, solver : str
        divergence: "exact", "hutchinson" or "callable" as asked, or "monte carlo" where
        "exact" was asked of a target whose score and divergence are Monte-Carlo estimates
        from fixed draws (TiltedGaussian): log_q then carries their error, which se (None)
        does not cover.
    """

    log_q: np.ndarray
    se: object
    prior: np.ndarray
    integral: np.ndarray
    endpoint: np.ndarray
    n_evaluations: int
    divergence: str
    solver: str


def prior_log_prob(process, y, T):
    """log-density of the process's prior at the rows of y: N(0, I) for variance-preserving
    processes, N(0, sigma_T^2 I) otherwise (module docstring); shape (n,).

    Raises
    ------
    ValueError
        A bad process, y not an (n, d) array of finite numbers, T not finite and in
        [0, process.t_max], T with sigma_T = 0, or a row so far out that the log-density
        overflows float64. (A sigma_T^2 beyond float64's range, EDM at T = 1e200, is
        not an error: the density is formed from sigma_T.)
    """
    process = check_process(process, variance_preserving=False)
    y = check_points(y, "y").astype(np.float64, copy=False)
    T = check_real(T, "T", low=0.0)
    if T > process.t_max:  # the process's own check would name its "t"; on VP it had no check at all
        raise ValueError(f"T must be <= {process.t_max!r} (the horizon of {process!r}), got {T!r}")
    n, d = y.shape

    def squares():
        with np.errstate(over="ignore"):
            sq = np.sum(y * y, axis=1)
        if not np.all(np.isfinite(sq)):
            raise ValueError("y has a row too far out for float64: its prior log-density overflows; rescale y")
        return sq

    if isinstance(process, VariancePreserving):
        return -0.5 * (d * _LOG_2PI + squares())
    sigma = float(process.sigma(T))
    if sigma == 0:
        raise ValueError(f"T = {T!r} gives sigma_T = 0 for {process!r}: no Gaussian prior there; use a larger T")
    try:
        s2 = float(process.sigma2(T))
    except ValueError:  # sigma_T^2 beyond float64 (EDM at T = 1e200); the law N(0, sigma_T^2 I) is not
        s2 = np.inf
    if np.isfinite(s2) and s2 >= np.finfo(np.float64).tiny:
        log_s2 = np.log(s2)
        with np.errstate(over="ignore"):  # |y|^2 finite, / sigma_T^2 < 1 not: refused below
            sq = np.sum(y * y, axis=1)
            sq_over_s2 = sq / s2
            # |y|^2 beyond float64 where sigma_T > 1 keeps |y / sigma_T|^2 finite (EDM at T = 1e100,
            # y = 1e160: -5e119, which had been refused as "too far out for float64")
            far = ~np.isfinite(sq)
            if np.any(far):
                sq_over_s2[far] = np.sum(np.square(y[far] / sigma), axis=1)
    else:
        # sigma_T^2 overflows or underflows float64 (EDM at T = 1e200 or 1e-170), sigma_T does not:
        # log sigma_T^2 = 2 log sigma_T and |y|^2 / sigma_T^2 = |y / sigma_T|^2
        log_s2 = 2.0 * np.log(sigma)
        with np.errstate(over="ignore", under="ignore"):
            sq_over_s2 = np.sum(np.square(y / sigma), axis=1)
    if not np.all(np.isfinite(sq_over_s2)):
        # (it returned -inf with a RuntimeWarning where |y|^2 was finite and sigma_T^2 < 1)
        raise ValueError(f"y has a row too far out for sigma_T = {sigma:.3g}: its prior log-density overflows "
                         "float64; rescale y")
    return -0.5 * (d * (_LOG_2PI + log_s2) + sq_over_s2)


class _Field:
    """The score, its exact divergence and its Jacobian-vector product, from whatever was passed."""

    def __init__(self, score, process, divergence, jvp):
        self.process = process
        self.exact = self.jvp_fn = None
        self.is_model = False
        if hasattr(score, "network") and hasattr(score, "jvp") and hasattr(score, "divergence"):  # ScoreModel
            self.is_model = True
            if score.process != process:
                raise ValueError(f"score is a ScoreModel of {score.process!r} but process is {process!r}; "
                                 "pass the model's own process")
            dt = score.dtype  # a float32 network is run in float32; the ODE stays float64

            def own(x, t):
                """x_t in the network's dtype (log_prob's docstring, score)."""
                if x.dtype == dt:
                    return x
                with np.errstate(over="ignore"):  # named here: the model would call the inf its x's
                    y = x.astype(dt)
                if not np.all(np.isfinite(y)):
                    big = float(np.max(np.abs(x)))
                    raise ValueError(f"the ODE's state x_t reaches |x_t| = {big:.3g} at t = {float(t[0]):.6g} "
                                     f"(x_t = x at t0), beyond the largest {dt.name}, "
                                     f"{float(np.finfo(dt).max):.3g}, that the ScoreModel's {dt.name} network "
                                     "takes: rescale x, or use a float64 model")
                return y

            self.score = lambda x, t: score(own(x, t), t).astype(np.float64)
            self.exact = lambda x, t, where="": tuple(a.astype(np.float64) for a in score.divergence(own(x, t), t))
            self.jvp_fn = lambda x, t, V, where="": tuple(a.astype(np.float64) for a in score.jvp(own(x, t), t, V))
        elif hasattr(score, "score") and hasattr(score, "divergence") and hasattr(score, "log_prob"):  # a target
            self.score = lambda x, t: score.score(x, t, process)
            self.exact = lambda x, t, where="": (self.score(x, t), score.divergence(x, t, process))
        elif callable(score):
            def float64_score(x, t):
                s = score(x, t)
                if isinstance(s, np.ndarray) and s.shape == x.shape and s.dtype != np.float64:
                    raise ValueError(f"score returned dtype {s.dtype}: log_prob integrates the ODE in float64, "
                                     "so make the score return float64 (e.g. return s.astype(np.float64))")
                return s

            self.score = float64_score
        else:
            raise ValueError(f"score must be a callable s(x, t), a ScoreModel or a target of sgm_ref.targets, "
                             f"got {type(score).__name__}")
        if callable(divergence):
            user = divergence
            self.exact = lambda x, t, where="": (call_score(self.score, x, t, where), user(x, t))
        if jvp is not None:
            if not callable(jvp):
                raise ValueError(f"jvp must be a callable jvp(x, t, V) -> J V or None, got {type(jvp).__name__}")
            user_jvp = jvp
            self.jvp_fn = lambda x, t, V, where="": (call_score(self.score, x, t, where),
                                                     _check_jvp(user_jvp(x, t, V), V, where))

    def exact_divergence(self, x, t, where=""):
        """(s, div s); `where` (" at t = ...") ends the messages on what a callable returned."""
        if self.exact is None:
            raise ValueError("divergence='exact' needs a score that knows its divergence (a target of "
                             "sgm_ref.targets or a ScoreModel) or divergence=callable div(x, t) -> (n,); "
                             "use divergence='hutchinson' for any other score")
        s, div = self.exact(x, t, where)
        return s, _check_div(div, x, where=where)

    def hutchinson(self, x, t, eps, where=""):
        """(s, eps_j . J eps_j for each probe (n, m)); `where` as exact_divergence's."""
        if self.jvp_fn is not None:
            s, Jv = self.jvp_fn(x, t, eps, where)
            return s, np.einsum("nkd,nkd->nk", eps, Jv)
        n, m, d = eps.shape
        s = call_score(self.score, x, t, where)
        # each point's own step: a point's estimate must not depend on the rest of the batch
        h = np.repeat(1e-5 * (1.0 + np.max(np.abs(x), axis=1)), m)[:, None]
        xs = np.repeat(x, m, axis=0)
        ts = np.full(n * m, float(np.asarray(t).flat[0]))
        e = eps.reshape(n * m, d)
        # the score at the shifted points is checked too, and its message says they are shifted
        # (a score finite at x_t may not be at x_t +- h eps)
        shifted = f"{where} at the finite-difference points x_t +- h eps of Hutchinson's J eps"
        plus = call_score(self.score, xs + h * e, ts, shifted)
        minus = call_score(self.score, xs - h * e, ts, shifted)  # the score under the caller's settings
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named by the caller (rates)
            diff = (plus - minus) / (2.0 * h)
            return s, np.einsum("nkd,nkd->nk", eps, diff.reshape(n, m, d))


_REAL = "any float or integer dtype, read as float64"


def _as_float64(raw):
    """raw (a real dtype) as float64, and whether a finite entry overflowed in the cast
    (a longdouble beyond float64's range: a bare cast made it inf under a RuntimeWarning)."""
    with np.errstate(over="ignore"):  # named by the callers
        out = raw.astype(np.float64)
    return out, bool(np.any(np.isfinite(raw) & ~np.isfinite(out)))


def _check_div(div, x, what="the divergence", where=""):
    """div as (n,) float64: real numbers of any float or integer dtype, finite in float64.
    `where` (" at t = ...") ends the message."""
    raw = np.asarray(div)
    if raw.dtype.kind not in "iuf":  # a cast would drop a complex part, parse strings, read bools as 0 / 1
        raise ValueError(f"{what} must be {x.shape[0]} real numbers ({_REAL}), got dtype {raw.dtype}{where}")
    div, beyond = _as_float64(raw)
    if div.shape != (x.shape[0],) or not np.all(np.isfinite(div)):
        raise ValueError(f"{what} must be {x.shape[0]} finite numbers, got shape {div.shape}"
                         + ("" if div.shape != (x.shape[0],) else
                            f" with an entry beyond float64's range (dtype {raw.dtype})" if beyond else
                            f" with a non-finite entry (row {int(np.argmax(~np.isfinite(div)))})") + where)
    return div


def _check_jvp(Jv, V, where=""):
    """J V as float64 of the tangents' shape: real numbers of any float or integer dtype, finite in float64.
    `where` (" at t = ...") ends the message."""
    raw = np.asarray(Jv)
    if raw.dtype.kind not in "iuf":  # a cast would drop a complex part, parse strings, read bools as 0 / 1
        raise ValueError(f"jvp must return real numbers ({_REAL}) of the tangents' shape {V.shape}, "
                         f"got dtype {raw.dtype}{where}")
    Jv, beyond = _as_float64(raw)
    if Jv.shape != V.shape:
        raise ValueError(f"jvp must return finite values of the tangents' shape {V.shape}, got shape {Jv.shape}"
                         f"{where}")
    if not np.all(np.isfinite(Jv)):  # the shape is right: say what is wrong (it read "shape (3, 1, 2), got (3, 1, 2)")
        raise ValueError(f"jvp must return finite values of the tangents' shape {V.shape}, got "
                         + (f"an entry beyond float64's range (dtype {raw.dtype})" if beyond else
                            f"a non-finite entry (point {int(np.argmax(~np.isfinite(Jv).all(axis=(1, 2))))})"
                            if Jv.ndim == 3 else "a non-finite entry") + where)
    return Jv


# Rademacher probes in d dimensions fall in 2^(d - 1) classes up to sign (eps and -eps give
# the same eps^T J eps). Up to this d each point's probes are distinct classes (below).
_DISTINCT_SIGNS_UP_TO_D = 21


def _distinct_rademacher(rng, n, m, d):
    """Each point's Rademacher probes as distinct classes up to sign, drawn without
    replacement: (eps (n, m', d), M = 2^(d - 1)) with m' = min(m, M).

    Drawn independently, two probes of a point coincide up to sign with probability about
    m^2 / 2M, and then give the same estimate: in d = 2 (M = 2) half the points with two
    probes had a standard error of 0 while off by up to 4.8 nats. Without replacement the
    mean is still unbiased for the trace (every class equally likely), its standard error
    takes the finite-population factor sqrt(1 - m'/M), and with m >= M every class is used
    once: the mean is the trace itself and the standard error 0, truly."""
    M = 1 << (d - 1)
    k = min(m, M)
    classes = np.empty((n, k), dtype=np.int64)
    for i in range(n):
        classes[i] = rng.choice(M, size=k, replace=False)
    bits = (classes[:, :, None] >> np.arange(d - 1)) & 1  # the last coordinate's sign is the class's +1
    eps = np.ones((n, k, d))
    eps[:, :, :d - 1] = 1.0 - 2.0 * bits
    return eps, M


def _check_grid(grid, t0, T):
    g = check_real_array(grid, "grid")
    if g.ndim != 1 or g.size < 2 or np.any(np.diff(g) <= 0):
        raise ValueError("grid must be a 1-D array of at least 2 strictly increasing times, from t0 to T")
    if g[0] != t0 or g[-1] != T:
        raise ValueError(f"grid must start at t0 = {t0!r} and end at T = {T!r}, "
                         f"got {float(g[0])!r} to {float(g[-1])!r}")
    return g


# scipy's solve_ivp raises any rtol below 100 machine epsilons to that floor (with a warning)
_RTOL_FLOOR = 100.0 * float(np.finfo(np.float64).eps)


def _check_tolerances(rtol, atol):
    """rk45's (rtol, atol) as floats: None is score_sde's 1e-5; rtol >= _RTOL_FLOOR, atol > 0."""
    rtol = 1e-5 if rtol is None else check_real(rtol, "rtol", low=0.0, low_open=True)
    atol = 1e-5 if atol is None else check_real(atol, "atol", low=0.0, low_open=True)
    if rtol < _RTOL_FLOOR:
        # the floor as repr, not rounded: "pass rtol >= 2.22e-14" was itself refused (2.22e-14 < 100 eps)
        raise ValueError(f"rtol must be >= {_RTOL_FLOOR!r} (100 machine epsilons: scipy's solve_ivp raises "
                         f"any smaller rtol to that), got {rtol!r}; pass rtol >= {_RTOL_FLOOR!r}")
    return rtol, atol


def log_prob(score, process, x, t0, T, *, divergence="exact", probes=None, n_probes=None, jvp=None,
             solver="rk45", rtol=None, atol=None, grid=None, n_steps=None, prior="process", rng=None):
    """log q(x) of the probability-flow ODE's model at time t0 (module docstring):

        log q(x) = log pi(x_T) + int_t0^T (d f(t) - g(t)^2 / 2 div s(x_t, t)) dt,
        dx_t/dt = f(t) x_t - g(t)^2 / 2 s(x_t, t),  x_t0 = x

    (the instantaneous change of variables: Chen et al. 2018, Song et al. 2021, Appendix D.2).

    Parameters
    ----------
    score : target of sgm_ref.targets, ScoreModel, or callable s(x, t) -> (n, d)
        A callable gets x (n, d) float64 and t (n,) all equal, and must return float64
        (an array of another dtype is refused); a target is used with this process. A
        ScoreModel runs in its network's dtype: a float32 one is given each state x_t
        rounded to float32 (Hutchinson's probes too, in its J eps), computes its score,
        divergence and J eps in float32, and these are read as float64; the ODE, its
        state and log q stay float64. So log q is the float32 network's, to the bit
        what a float64 score and divergence= callable giving model.divergence(
        y.astype(np.float32), t) as float64 would give, and of order 1e-8 relative from
        a float64 copy of the network (6.5e-9 to 1.8e-8 on the 3 points of
        tests/test_likelihood.py's check of this); a state beyond float32's range
        (|x_t| > 3.4e38) is refused, naming it.
    process : any process of sgm_ref.processes
    x : ndarray, shape (n, d), n >= 1, d >= 1
        Points at time t0 (float64; float32 is refused, also for a float32 ScoreModel:
        the ODE runs in float64, and rounds only what it passes the network).
    t0, T : float
        0 <= t0 < T <= process.t_max (a ScoreModel needs t0 > 0).
    divergence : "exact", "hutchinson" or callable div(x, t) -> (n,)
    probes : "rademacher" or "gaussian", or None (Rademacher)
        Hutchinson only.
    n_probes : int >= 1, or None (1)
        Hutchinson probes per point (a standard error needs >= 2). Hutchinson only.
    jvp : callable jvp(x, t, V) -> J_s V, V of shape (n, k, d), or None
        For Hutchinson with a plain callable score; default central differences.
        Hutchinson only.
    solver : "rk45" or "heun"
    rtol, atol : float, or None (1e-5, score_sde's)
        solve_ivp's tolerances, rk45 only; rtol >= 2.22e-14 (100 machine epsilons,
        scipy's floor), atol > 0.
    grid : 1-D array from t0 to T, increasing, or None
        Heun's grid; or n_steps uniform steps.
    prior : "process" or callable log_pi(y) -> (n,)
    rng : numpy.random.Generator
        The probes (Hutchinson only). Arguments of the other divergence or solver
        (probes, n_probes, jvp, rng with a divergence other than "hutchinson"; rtol,
        atol with heun; grid, n_steps with rk45) are refused, not ignored.

    Returns
    -------
    LogProb

    Raises
    ------
    ValueError
        Bad arguments (each named); a score without an exact divergence and
        divergence="exact"; non-finite scores or divergences; a drift or divergence term
        that overflows float64 (naming the score and t); a state x_t beyond the range of a
        float32 ScoreModel (naming it and t); a solver failure (with the
        largest |x| and |score| met, so the caller can tell which is out of scale).
    """
    process = check_process(process, variance_preserving=False)
    kind_x = np.asarray(x).dtype
    if kind_x.kind not in "iu" and not (kind_x.kind == "f" and kind_x.itemsize == 8):
        # before check_points, whose message would offer float32 (refused here) for a float16 or bool x
        raise ValueError(f"x must be float64 (the ODE is integrated in float64; integers are promoted), got "
                         f"{kind_x}; cast it with x.astype(np.float64)")
    x = check_points(x, "x")
    n, d = x.shape
    if n == 0 or d == 0:
        raise ValueError(f"x must have at least one point and one dimension, got shape {x.shape}: "
                         "pass the points as an (n, d) array with n, d >= 1")
    t0 = check_real(t0, "t0", low=0.0)
    T = check_real(T, "T", low=0.0)
    if not t0 < T:
        raise ValueError(f"need t0 < T, got t0={t0!r}, T={T!r}")
    if T > process.t_max:
        raise ValueError(f"T must be <= {process.t_max!r} (the horizon of {process!r}), got {T!r}")
    try:  # the pointwise functions refuse a value beyond float64 themselves, naming their "t"
        # (sigma_T^2 may underflow where sigma_T does not, EDM at T = 1e-170: the prior is computed from
        # sigma_T then, as prior_log_prob does; "sigma_T^2 > 0" here had called that T "too large")
        usable = bool(np.isfinite(process.g2(T)) and np.isfinite(process.sigma2(T)))
    except ValueError:
        usable = False
    if not usable:
        raise ValueError(f"T = {T!r} is too large for {process!r}: its coefficients overflow; use a smaller T")
    kind = divergence if isinstance(divergence, str) else "callable"
    if kind not in ("exact", "hutchinson", "callable"):
        raise ValueError(f"divergence must be 'exact', 'hutchinson' or a callable div(x, t), got {divergence!r}")
    if not callable(divergence) and not isinstance(divergence, str):
        raise ValueError(f"divergence must be 'exact', 'hutchinson' or a callable, got {type(divergence).__name__}")
    if kind != "hutchinson":
        given = [name for name, value in (("probes", probes), ("n_probes", n_probes), ("jvp", jvp), ("rng", rng))
                 if value is not None]
        if given:
            what = "divergence='exact'" if kind == "exact" else "a callable divergence"
            raise ValueError(f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} Hutchinson's, unused with "
                             f"{what}: drop {'it' if len(given) == 1 else 'them'} or pass divergence='hutchinson'")
    if not (isinstance(solver, str) and solver in ("rk45", "heun")):  # an array would not compare
        raise ValueError(f"solver must be 'rk45' or 'heun', got {solver!r}")
    if solver == "heun" and (rtol is not None or atol is not None):
        given = " and ".join(name for name, value in (("rtol", rtol), ("atol", atol)) if value is not None)
        raise ValueError(f"{given} {'is' if ' and ' not in given else 'are'} rk45's tolerance(s), unused by "
                         "solver='heun' (fixed steps: grid or n_steps): drop it or use solver='rk45'")
    field = _Field(score, process, divergence if kind == "callable" else None, jvp)
    if field.is_model and t0 <= 0:
        raise ValueError(f"t0 must be > 0 for a ScoreModel (its network learns the score of p_t for t > 0), "
                         f"got t0 = {t0!r}")
    label = kind
    if kind == "exact" and getattr(score, "monte_carlo", False):
        label = "monte carlo"  # a target whose score and divergence are estimates (TiltedGaussian)
    prior_is_process = isinstance(prior, str) and prior == "process"
    if not prior_is_process and not callable(prior):
        raise ValueError(f"prior must be 'process' or a callable log_pi(y) -> (n,), got {prior!r}")

    m = 1
    eps = population = None
    if kind == "hutchinson":
        probes = "rademacher" if probes is None else probes
        if not (isinstance(probes, str) and probes in ("rademacher", "gaussian")):
            raise ValueError(f"probes must be 'rademacher' or 'gaussian', got {probes!r}")
        m = check_count(1 if n_probes is None else n_probes, "n_probes")
        rng = check_rng(rng, "rng (a Generator; Hutchinson's probes are drawn from it)")
        if probes == "rademacher" and d <= _DISTINCT_SIGNS_UP_TO_D:
            eps, population = _distinct_rademacher(rng, n, m, d)
            m = eps.shape[1]
        elif probes == "rademacher":
            eps = 2.0 * rng.integers(0, 2, size=(n, m, d)).astype(np.float64) - 1.0
        else:
            eps = rng.standard_normal((n, m, d))

    count = [0]
    # the largest |score|, |div s| and |x_t| the ODE met, with their times: for the messages
    met = {"score": (0.0, t0), "div": (0.0, t0), "x": (float(np.max(np.abs(x))), t0)}
    user_err = np.geterr()  # the score runs under the caller's floating-point settings (below)

    def note(key, value, t):
        if value > met[key][0]:
            met[key] = (value, t)

    def diagnosis():
        """Which of x and the score is out of scale: the figures the ODE met, and both readings."""
        return (f"the largest |x| is {float(np.max(np.abs(x))):.3g} (at t0), the largest |x_t| met "
                f"{met['x'][0]:.3g} (t = {met['x'][1]:.6g}), the largest |score| met {met['score'][0]:.3g} "
                f"(t = {met['score'][1]:.6g}) and |div score| {met['div'][0]:.3g} (t = {met['div'][1]:.6g}). "
                "If x lies far beyond the target's scale, rescale x; if the score (or its divergence) is that "
                "large where x is, the score is at fault: check it")

    def rates(t, x_t):
        """(v (n, d), div v (n, m)) at time t."""
        count[0] += 1
        big = float(np.max(np.abs(x_t)))
        if not np.isfinite(big):
            raise ValueError(f"the ODE's state overflowed float64 before t = {float(t):.6g} (a solver stage is "
                             "non-finite): " + diagnosis())
        note("x", big, t)
        ts = np.full(n, t)
        f, g2 = float(process.f(t)), float(process.g2(t))
        with np.errstate(**user_err):
            # messages on what a callable returned say when (a score finite at t0 may not be later)
            where = f" at t = {float(t):.6g}"
            if kind == "hutchinson":
                s, div_s = field.hutchinson(x_t, ts, eps, where)
            else:
                s, div_s = field.exact_divergence(x_t, ts, where)
                div_s = div_s[:, None]
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (n, d) or not np.all(np.isfinite(s)):
            raise ValueError(f"the score at t = {float(t):.6g} is not {n} x {d} finite numbers")
        note("score", float(np.max(np.abs(s))), t)
        if not np.all(np.isfinite(div_s)):  # a finite-difference jvp whose difference overflowed
            raise ValueError(f"the score's divergence (Hutchinson's eps^T J eps) at t = {float(t):.6g} overflows "
                             f"float64: the score's values (largest |score| {met['score'][0]:.3g}) are out of "
                             "scale there; check the score")
        note("div", float(np.max(np.abs(div_s))), t)
        with np.errstate(over="ignore", invalid="ignore"):
            drift, pull = 0.5 * g2 * s, f * x_t
            v = pull - drift
            dv = d * f - 0.5 * g2 * div_s
        if not np.all(np.isfinite(v)):
            if np.max(np.abs(drift)) >= np.max(np.abs(pull)):  # the score's term is the larger
                raise ValueError(f"the probability-flow drift f(t) x - g(t)^2 / 2 s(x, t) overflows float64 at "
                                 f"t = {float(t):.6g}: the score reaches |s| = {float(np.max(np.abs(s))):.3g} there "
                                 f"(g(t)^2 = {g2:.3g}) while |x_t| <= {big:.3g}; the score is out of scale: "
                                 "check the score")
            raise ValueError(f"the probability-flow drift overflows float64 at t = {float(t):.6g}: f(t) x_t with "
                             f"|x_t| up to {big:.3g}; " + diagnosis())
        if not np.all(np.isfinite(dv)):
            raise ValueError(f"the divergence term d f(t) - g(t)^2 / 2 div s overflows float64 at "
                             f"t = {float(t):.6g}: the score's divergence reaches |div s| = "
                             f"{float(np.max(np.abs(div_s))):.3g} there (g(t)^2 = {g2:.3g}); the score's divergence "
                             "is out of scale: check the score (or the divergence callable, or jvp)")
        return v, dv

    if solver == "rk45":
        if grid is not None or n_steps is not None:
            raise ValueError("grid and n_steps are Heun's; rk45 chooses its own steps (set rtol, atol)")
        rtol, atol = _check_tolerances(rtol, atol)

        def fun(t, y):
            v, dv = rates(t, y[:n * d].reshape(n, d))
            return np.concatenate([v.ravel(), dv.ravel()])

        y0 = np.concatenate([x.ravel(), np.zeros(n * m)])
        # scipy's RK45 stepped as solve_ivp(fun, (t0, T), y0, method="RK45", rtol, atol) steps it
        # (the same bits), keeping only the current state: solve_ivp without t_eval keeps every
        # step's, steps x n (d + m) floats, and copies them once more at the end (DDPM at 1e-9,
        # 34,184 evaluations, up to 5,700 steps: up to 180 MB, twice, per 1,000 points of d = 3).
        # t_eval=[T] would not keep the bits: it evaluates the last step's interpolant at T (up to
        # 1.9e-14 relative from the step's own endpoint, in 30 of 40 random ODEs measured).
        # RK45's own arithmetic (the error norm squares the rates over the tolerances) may overflow
        # on a huge drift: silenced here, and reported by the failure or the checks below
        with np.errstate(over="ignore", invalid="ignore"):
            ode = RK45(fun, t0, y0, T, rtol=rtol, atol=atol)
            message = None
            while ode.status == "running":
                message = ode.step()
        if ode.status != "finished":
            raise ValueError(f"solve_ivp failed: {message} (at t = {float(ode.t):.6g}, integrating from "
                             f"t0 = {t0!r} to T = {T!r}). The ODE is too stiff or too large for rtol = {rtol:g}, "
                             f"atol = {atol:g}: " + diagnosis()
                             + "; otherwise loosen rtol/atol, or use solver='heun'")
        y = ode.y
        x_T, integral = y[:n * d].reshape(n, d), y[n * d:].reshape(n, m)
    else:
        if grid is None:
            if n_steps is None:
                raise ValueError("heun needs grid (t0 .. T) or n_steps")
            k = check_count(n_steps, "n_steps")
            grid = np.linspace(t0, T, k + 1)
            if np.any(np.diff(grid) <= 0):  # not the grid's message: the caller passed no grid
                raise ValueError(f"n_steps = {k} is too many for t0 = {t0!r} to T = {T!r}: the uniform "
                                 "grid's times coincide in float64; use fewer steps")
        elif n_steps is not None:
            raise ValueError("give grid or n_steps, not both")
        grid = _check_grid(grid, t0, T)
        x_t, integral = x.copy(), np.zeros((n, m))
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is caught by rates or the check below
            for a, b in zip(grid[:-1], grid[1:]):
                h = b - a
                # both ends of the step approached from inside (64 ulps in, more than the rounding
                # of t N in DDPM's step index): a process whose coefficients jump at the grid
                # times (DDPM at its knots) is seen with this step's own beta at both stages
                inside = min(64.0 * float(np.spacing(max(abs(a), abs(b)))), 0.25 * h)
                v1, d1 = rates(a + inside, x_t)
                v2, d2 = rates(b - inside, x_t + h * v1)
                x_t = x_t + 0.5 * h * (v1 + v2)
                integral = integral + 0.5 * h * (d1 + d2)
        x_T = x_t

    if not (np.all(np.isfinite(x_T)) and np.all(np.isfinite(integral))):
        raise ValueError("the ODE's solution overflowed (non-finite endpoint or divergence integral): " + diagnosis())
    note("x", float(np.max(np.abs(x_T))), T)
    if prior_is_process:
        try:
            log_pi = prior_log_prob(process, x_T, T)
        except ValueError:
            raise ValueError(f"the prior's log-density at the ODE's endpoint x_T overflows float64 (|x_T| up to "
                             f"{float(np.max(np.abs(x_T))):.3g}): " + diagnosis()) from None
    else:
        log_pi = _check_div(prior(x_T), x_T, "prior(y) (the prior's log-density at the endpoint)")
    per_probe = log_pi[:, None] + integral
    if population is not None and m >= population:  # every class once: the mean is the exact trace
        se = np.zeros(n)
    elif m >= 2:
        se = per_probe.std(axis=1, ddof=1) / np.sqrt(m)
        if population is not None:  # drawn without replacement from `population` classes
            se = se * np.sqrt(1.0 - m / population)
    else:
        se = None
    mean_integral = integral.mean(axis=1)
    return LogProb(log_q=log_pi + mean_integral, se=se, prior=log_pi, integral=mean_integral, endpoint=x_T,
                   n_evaluations=count[0], divergence=label, solver=solver)


def bits_per_dim(log_q, d, *, bins=256, scale):
    """Bits per dimension of a density model of quantised data, under uniform dequantisation.

    Convention (score_sde's, written out): data are integers k in {0, ..., bins - 1}^d;
    the model sees x = offset + scale (k + u) / bins, u ~ U[0, 1)^d, so scale is the
    width of the data's range in model coordinates (1 for data in [0, 1], 2 for
    [-1, 1]). The density of y = k + u is q(x) (scale / bins)^d, and by Jensen
    -log2 P(k) <= E_u[-log2 q_y(k + u)], so

        bpd = -log q(x) / (d ln 2) + log2(bins / scale),

    an upper bound on the discrete model's bits per dimension once averaged over u
    and data (8 + ... for [0, 1] data and bins 256, 7 + ... for [-1, 1]: score_sde's
    offsets).

    Parameters
    ----------
    log_q : float or ndarray
        log q(x) in nats, at dequantised points.
    d : int
        Dimensions per point.
    bins : int, default 256
    scale : float > 0

    Returns
    -------
    float or ndarray, the shape of log_q.

    Raises
    ------
    ValueError
        Bad arguments (each named), or a bpd beyond float64 (|log q| / d near 1e308).
    """
    d = check_count(d, "d")
    bins = check_count(bins, "bins", minimum=2)
    scale = check_real(scale, "scale", low=0.0, low_open=True)
    lq = check_real_array(log_q, "log_q")
    # log2(bins) - log2(scale): bins / scale overflows for scale ~ 1e-306
    with np.errstate(over="ignore", invalid="ignore"):
        out = -lq / (d * np.log(2.0)) + (math.log2(bins) - math.log2(scale))
    if not np.all(np.isfinite(out)):
        raise ValueError(f"log_q = {float(lq.flat[np.argmax(~np.isfinite(out.ravel()))])!r} gives bits per "
                         f"dimension beyond float64 (d = {d}); pass log_q in range")
    return out[()] if out.ndim == 0 else out


def _score_dim(score):
    """The dimension a ScoreModel or a target works in, or None for a plain callable."""
    if hasattr(score, "network") and hasattr(score, "jvp") and hasattr(score, "divergence"):  # ScoreModel
        return getattr(score, "d", None)
    if hasattr(score, "score") and hasattr(score, "divergence") and hasattr(score, "log_prob"):  # a target
        return getattr(score, "dim", None)
    return None


def nll_report(score, target, process, *, t0, T, n, rng, divergence="exact", n_probes=None, rtol=1e-5, atol=1e-5):
    """The model's NLL on n fresh exact samples of p_t0, the target's exact NLL on them, and the gap.

    x_i ~ p_t0: target.sample, then the forward process to t0, x_i = alpha_t0 x0_i +
    sigma_t0 z_i, whenever p_t0 is not p_0 itself (t0 > 0, or a process already noised at
    t = 0: VE has sigma_0 = sigma_min, so its p_0 is the target blurred by N(0, sigma_min^2),
    the law target.log_prob(x, 0, VE) and the ODE use). log q by log_prob (RK45) and
    log p_t0 by the target's log_prob (exact for mixtures; a Monte-Carlo estimate for a
    target with monte_carlo = True, TiltedGaussian, whose error is systematic and not in
    the standard errors: "target_log_prob" says which). The gap mean_i (log p_t0(x_i) -
    log q(x_i)) estimates KL(p_t0 || q) (E_p[log p - log q]); its standard error is that of
    the paired differences, and covers Hutchinson's noise too (each point has its own
    probes). The model is the ODE started from the process's prior at T, so the prior's
    mismatch with p_T is part of the gap, as it is part of what a sampler draws; the
    solver's error (rtol, atol) enters too. A finite sample can give a gap below 0 when
    the model is close: read it with its standard error.

    Parameters
    ----------
    score : as log_prob's, in the target's dimension
    target : a target of sgm_ref.targets (sample, log_prob)
    process, t0, T, rtol, atol : as log_prob's (0 <= t0 < T <= process.t_max; rtol or
        atol None is 1e-5)
    n : int >= 2
    rng : numpy.random.Generator
        The samples, then (Hutchinson) the probes.
    divergence : "exact", "hutchinson" or callable
    n_probes : int >= 1, or None (4); Hutchinson only

    Returns
    -------
    dict: "n", "t0", "T", "divergence", "n_probes" (the probes each point used, None unless
    Hutchinson: Rademacher probes up to d = 21 are distinct sign classes, at most
    2^(d - 1)), "every_sign_class" (True when they were all used: the trace is then
    exact), "target_log_prob" ("exact", or "monte carlo" for a target with
    monte_carlo = True), "rtol", "atol" (floats, as used), "n_evaluations", and {"value", "standard_error"}
    dicts "model_nll", "target_nll", "kl_gap" (nats per point).
    """
    n = check_count(n, "n", minimum=2)
    rng = check_rng(rng)
    process = check_process(process, variance_preserving=False)
    t0 = check_real(t0, "t0", low=0.0)  # named here, before any sampling
    T = check_real(T, "T", low=0.0)
    if not t0 < T <= process.t_max:
        raise ValueError(f"need t0 < T <= {process.t_max!r} (the horizon of {process!r}), got t0 = {t0!r}, T = {T!r}")
    # before any sampling; None is log_prob's default (1e-5), recorded as the number used
    # (it was recorded as None, and nll_lines then raised a TypeError formatting it)
    rtol, atol = _check_tolerances(rtol, atol)
    if not (hasattr(target, "sample") and hasattr(target, "log_prob")):
        raise ValueError(f"target must be a target of sgm_ref.targets (with sample and log_prob), "
                         f"got {type(target).__name__}")
    hutchinson = isinstance(divergence, str) and divergence == "hutchinson"
    if n_probes is not None and not hutchinson:
        raise ValueError(f"n_probes is Hutchinson's, unused with divergence={divergence!r}: drop it or pass "
                         "divergence='hutchinson'")
    score_dim, target_dim = _score_dim(score), getattr(target, "dim", None)
    if score_dim is not None and target_dim is not None and score_dim != target_dim:
        raise ValueError(f"the score's and the target's dimensions differ: the score works in d = {score_dim}, "
                         f"the target in d = {target_dim}; pass a score for the target's dimension")
    x = target.sample(n, rng)
    # t0 = 0 draws nothing unless the process has already noised p_0 (VE's sigma_min): the
    # other cases keep their random stream
    if t0 > 0 or float(process.sigma2(t0)) > 0 or float(process.alpha(t0)) != 1.0:
        x = process.perturb(x, t0, rng)[0]
    log_p = np.asarray(target.log_prob(x, t0, process), dtype=np.float64)
    extra = dict(n_probes=4 if n_probes is None else n_probes, rng=rng) if hutchinson else {}
    res = log_prob(score, process, x, t0, T, divergence=divergence, rtol=rtol, atol=atol, **extra)

    def est(v):
        return {"value": float(np.mean(v)), "standard_error": float(np.std(v, ddof=1) / np.sqrt(v.size))}

    used, every_class = None, False
    if res.divergence == "hutchinson":  # Rademacher probes are distinct sign classes up to d = 21
        d, asked = x.shape[1], extra["n_probes"]
        used = min(asked, 1 << (d - 1)) if d <= _DISTINCT_SIGNS_UP_TO_D else asked
        every_class = d <= _DISTINCT_SIGNS_UP_TO_D and used == 1 << (d - 1)
    return {"n": n, "t0": float(t0), "T": float(T), "divergence": res.divergence,
            "n_probes": used, "every_sign_class": every_class,
            "target_log_prob": "monte carlo" if getattr(target, "monte_carlo", False) else "exact",
            "rtol": rtol, "atol": atol,
            "n_evaluations": res.n_evaluations, "model_nll": est(-res.log_q), "target_nll": est(-log_p),
            "kl_gap": est(log_p - res.log_q)}


def nll_lines(entry):
    """Lines of text for an nll_report: the model's NLL, the target's, and the gap (KL estimate)."""
    def pm(e):
        return f"{e['value']:.4g} ± {e['standard_error']:.2g}"

    how = (f"{entry['divergence']} divergence" if entry["n_probes"] is None
           else f"Hutchinson divergence, {entry['n_probes']} probe{'s' if entry['n_probes'] != 1 else ''}"
                + (" (every sign class: the exact trace)" if entry.get("every_sign_class") else ""))
    if entry.get("target_log_prob", "exact") == "monte carlo":
        target = (f"  target (Monte-Carlo log p_t0, from the target's fixed draws: its error is systematic and "
                  f"not in the ± figures, here or in the gap): {pm(entry['target_nll'])}")
    else:
        target = f"  target (exact log p_t0): {pm(entry['target_nll'])}"
    return [f"NLL on {entry['n']} fresh exact samples of p_t0 (t0 = {entry['t0']:g}), nats per point:",
            f"  model (probability-flow ODE to T = {entry['T']:g}, RK45 rtol {entry['rtol']:g}, {how}): "
            f"{pm(entry['model_nll'])}",
            target,
            f"  gap, an estimate of KL(p_t0 || model): {pm(entry['kl_gap'])}"]
