"""Exact output laws of the replays for a Gaussian target driven by its exact score.

For p_0 = N(m, S) every marginal is p_t = N(alpha_t m, alpha_t^2 S + sigma_t^2 I) under any
process, and its score is affine in x. Every replay step is then affine in the state and in
that step's noise, so the output is

    y_out = b + A y_start + sum_j B_j xi_j,   xi_j ~ N(0, I) independent,

Gaussian with mean b + A m_start and covariance A C_start A^T + sum_j B_j B_j^T.
replay_output_gaussian finds b, A and the B_j by running the replay itself on probe
inputs (no second implementation of any scheme to keep in step). A and the B_j do not
depend on m, so they come from the target N(0, S), whose map has b = 0: one batch with
rows e_i (giving A e_i) and, for each draw j and coordinate i, a row with xi_j = e_i
(giving B_j e_i), read off directly rather than as differences of nearly equal outputs.
The offset comes from the target's own map at c = alpha_T m (the mean of p_T), where the
exact score vanishes along the way: out(c) = b + A c, so mean_out = out(c) + A (m_start - c).
Check rows with all inputs at once (one in each batch) check that the replay is affine in
them, with the same linear part for both targets.
"""

import inspect

import numpy as np

from .._validation import check_real, check_rng
from ..metrics.gaussian import _check_gaussian, gaussian_kl, gaussian_tv
from ..processes import VariancePreserving, check_process
from ._common import check_replay_grid, replay_signature

__all__ = ["gaussian_score", "target_gaussian", "replay_output_gaussian", "law_distances"]


def gaussian_score(mean, cov, process):
    """The exact score of p_t = N(alpha_t m, alpha_t^2 S + sigma_t^2 I) under `process`.

    grad log p_t(x) = -U diag(1 / (alpha_t^2 lam + sigma_t^2)) U^T (x - alpha_t m),
    S = U diag(lam) U^T. Returns a callable (x (n, d), t scalar or (n,)) -> (n, d) in x's
    dtype (computed in float64).

    Raises ValueError for a bad mean / cov (as sgm_ref.metrics.gaussian_kl) or process;
    the callable raises it for a score beyond x's dtype (cov ~ 1e-300 near t = 0).
    """
    m, _, lam, U = _check_gaussian(mean, cov)
    process = check_process(process, variance_preserving=False)

    def score(x, t):
        x64 = np.asarray(x, dtype=np.float64)
        t = np.broadcast_to(process._times(t, n=x64.shape[0]), (x64.shape[0],))
        with np.errstate(over="ignore", invalid="ignore"):  # sigma_t^2 = inf (EDM at t = 1e300): a score of 0
            alpha, sigma2 = process._alpha(t)[:, None], process._sigma2(t)[:, None]
            z = (x64 - alpha * m) @ U
            out = (-(z / (alpha**2 * lam + sigma2)) @ U.T).astype(np.asarray(x).dtype)
        if not np.all(np.isfinite(out)):
            i = int(np.argmax(~np.all(np.isfinite(out), axis=1)))
            var = float(np.min(alpha[i] ** 2 * lam + sigma2[i]))
            raise ValueError(f"the Gaussian score at row {i} (t = {float(t[i])!r}) overflows {out.dtype}: the "
                             f"variance alpha_t^2 lam + sigma_t^2 is down to {var:.3g}")
        return out

    return score


def target_gaussian(mean, cov, process, t):
    """(alpha_t m, alpha_t^2 S + sigma_t^2 I): the law p_t of N(m, S) at time t.

    Raises ValueError for a bad mean / cov, process or t, or a covariance beyond float64
    (EDM at t = 1e200: sigma_t^2 = 1e400)."""
    m, S, _, _ = _check_gaussian(mean, cov)
    process = check_process(process, variance_preserving=False)
    t = check_real(t, "t", low=0.0)
    alpha, sigma = process.marginal(t)
    with np.errstate(over="ignore", invalid="ignore"):
        mean_t, cov_t = alpha * m, alpha**2 * S + sigma**2 * np.eye(m.size)
    if not (np.all(np.isfinite(mean_t)) and np.all(np.isfinite(cov_t))):
        raise ValueError(f"t = {t!r}: the law of N(mean, cov) at t under {process!r} overflows float64 "
                         f"(alpha_t = {float(alpha)!r}, sigma_t = {float(sigma)!r}); use a smaller t or cov")
    return mean_t, cov_t


class _Probe:
    """Noise source for the probe batch: draw j is e_i in row 1 + d + j d + i, u in the check row."""

    def __init__(self, d, n_draws):
        self.d, self.n_draws, self.count = d, n_draws, 0
        self.u = np.linspace(0.5, -1.0, d)

    def draw_noise(self, j, shape):
        self.count = max(self.count, j + 1)
        z = np.zeros(shape)
        if j < self.n_draws and shape[0] > 1:
            rows = 1 + self.d + j * self.d + np.arange(self.d)
            z[rows, np.arange(self.d)] = 1.0
            z[-1] = self.u
        return z


class _CheckProbe:
    """Noise source for the second check batch: draw j is u in row 0, zero elsewhere."""

    def __init__(self, d):
        self.u = np.linspace(0.5, -1.0, d)

    def draw_noise(self, j, shape):
        z = np.zeros(shape)
        z[0] = self.u
        return z


def _not_affine(replay, options):
    """Why the replay with these options has no Gaussian law, or None."""
    if getattr(replay, "__name__", "") == "predictor_corrector" and options.get("corrector", "langevin") \
            and options.get("langevin_step") is None:
        return ("score_sde's Langevin step size depends on the batch's norms (not affine in y); "
                "pass langevin_step=... for an exact law")
    return None


def _check_options(replay, options):
    """Refuse options the replay does not take, and a required one left out, naming the
    replay's options (replay_signature): they were Python's TypeError from inside the probe
    run ("ddim() got an unexpected keyword argument 'etaa'")."""
    signature = replay_signature(replay)
    if signature is None:
        return
    params, own = signature
    name = getattr(replay, "__name__", "the replay")
    unknown = [key for key in options if key not in own]
    if unknown:
        raise ValueError(f"{name} has no option {unknown[0]!r}; its options are {', '.join(own) or 'none'}")
    missing = [key for key in own if params[key].default is inspect.Parameter.empty and key not in options]
    if missing:
        raise ValueError(f"{name} needs the option{'s' if len(missing) > 1 else ''} {', '.join(missing)} "
                         f"(pass {missing[0]}=... to replay_output_gaussian)")


def replay_output_gaussian(replay, mean, cov, process, grid, *, start=None, affine_rtol=1e-8, **options):
    """Exact law N(mean_out, cov_out) of a replay's output for the Gaussian target N(mean, cov).

    The replay (any function of sgm_ref.replays, or one with its signature and affine in
    its inputs for a linear score) is driven by gaussian_score(mean, cov, process) from the
    start law at grid[0]; see the module docstring for the method.

    Parameters
    ----------
    replay : callable (score, process, grid, x, rng, trajectory, *, noise, **options)
    mean : array_like, shape (d,)
    cov : array_like, shape (d, d), symmetric positive definite
    process : any process of sgm_ref.processes
    grid : array_like, decreasing times (as the replay takes them)
    start : (mean, cov), optional
        Law of the start points. Default: the prior, N(0, I) for variance-preserving
        processes and N(0, sigma_T^2 I) otherwise (score_sde's VE and k-diffusion's
        sigma_max N(0, I)). Pass target_gaussian(mean, cov, process, grid[0]) to start from
        the exact p_T and see the discretisation error alone.
    affine_rtol : float > 0
        How far, relative to the largest coefficient and per draw, the check row may miss
        the affine prediction (default 1e-8). A sampler that computes in float32 is affine
        only to its rounding (about 1e-7 per step): sgm_ref.audit.compare_sampler passes a
        peer's rounding allowance here, so that its law is still found exactly, up to
        that rounding.
    **options
        Passed to the replay (e.g. eta=..., s_churn=...).

    Returns
    -------
    mean_out : ndarray, shape (d,)
    cov_out : ndarray, shape (d, d)

    Raises
    ------
    ValueError
        Bad Gaussian, process or grid; a replay that is not callable, or options it sets itself
        (rng, noise, trajectory, ...); an option the replay does not take, or a required one
        left out (the replay's options named); options for which the replay is not affine (score_sde's
        batch-dependent Langevin step); a replay whose output is not affine in its inputs.
    """
    if not callable(replay):
        raise ValueError(f"replay must be a replay function (e.g. sgm_ref.replays.ddim), got {replay!r}")
    fixed = sorted(set(options) & {"score", "process", "grid", "x", "rng", "trajectory", "noise"})
    if fixed:
        raise ValueError(f"options {fixed} are set by replay_output_gaussian itself (the law integrates over "
                         f"the start point and every noise draw); pass only the replay's own options")
    _check_options(replay, options)
    m, S, _, _ = _check_gaussian(mean, cov)
    affine_rtol = check_real(affine_rtol, "affine_rtol", low=0.0, low_open=True)
    process = check_process(process, variance_preserving=False)
    grid = check_replay_grid(grid, process)
    why = _not_affine(replay, options)
    if why:
        raise ValueError(why)
    d = m.size
    if start is None:
        var = 1.0 if isinstance(process, VariancePreserving) else float(process.sigma2(grid[0]))
        m0, C0 = np.zeros(d), var * np.eye(d)
    else:
        if not isinstance(start, (tuple, list)) or len(start) != 2:
            raise ValueError("start must be a pair (mean, cov) of the start law")
        m0, C0, _, _ = _check_gaussian(start[0], start[1], "start mean", "start cov", d=d)
    # the linear part (A, B_j) does not depend on the target's mean: take it from the target
    # N(0, S), whose map has b = 0, so A e_i and B_j e_i come out directly rather than as a
    # difference out - b of two nearly equal outputs; and take the offset at c = alpha_T m
    # (not at 0), where the exact score vanishes and no step has large terms that cancel:
    # mean_out = out(c) + A (m_start - c). Taken from 0, the law of k-diffusion's Heun on
    # 1- to 7-step grids was off by up to ~1e-8 relative (review, against mpmath).
    score, score0 = gaussian_score(m, S, process), gaussian_score(np.zeros(d), S, process)
    # count the draws with one row, then run the probe batch
    counter = _Probe(d, 0)
    replay(score, process, grid, np.zeros((1, d)), None, False, noise=counter, **options)
    J = counter.count
    w = np.linspace(1.0, -0.5, d)
    u = np.linspace(0.5, -1.0, d)
    x = np.zeros((2 + d + J * d, d))
    x[1:1 + d] = np.eye(d)
    x[-1] = w
    out = replay(score0, process, grid, x, None, False, noise=_Probe(d, J), **options)
    b0 = out[0]  # 0 for an affine replay (subtracted all the same)
    A = (out[1:1 + d] - b0).T
    B = (out[1 + d:1 + d + J * d] - b0).reshape(J, d, d).transpose(0, 2, 1)  # B[j][:, i]
    linear = A @ w + B.sum(axis=0) @ u
    # the target's own map at c and at c + w with the check noise, in a batch of two: it must
    # have the same linear part; and a sampler that couples its rows through the batch
    # (score_sde's Langevin step from the batch's mean norms) gives the rows of the big
    # batch and of this one different maps
    c = float(process.alpha(grid[0])) * m
    x2 = np.stack([c + w, c])
    out2 = replay(score, process, grid, x2, None, False, noise=_CheckProbe(d), **options)
    b = out2[1]
    scale = np.abs(b).max() + np.abs(b0).max() + np.abs(A).max() + (np.abs(B).max() if J else 0.0)
    miss = max(np.abs(out[-1] - b0 - linear).max(), np.abs(out2[0] - b - linear).max())
    if not miss <= affine_rtol * max(scale, 1.0) * (1 + J):
        raise ValueError(f"the sampler's output is not affine in its start point and noise with these options: a "
                         f"check row misses the affine prediction by {miss:.3g}, over affine_rtol = {affine_rtol:.3g} "
                         f"of the coefficients. Either its law is not Gaussian (a nonlinear step, or rows coupled "
                         f"through the batch), or it is affine only to a coarser rounding: for a sampler computing "
                         f"in float32, pass affine_rtol of its rounding (about 64 * 2**-23 per step)")
    mean_out = b + A @ (m0 - c)
    cov_out = A @ C0 @ A.T + np.einsum("jab,jcb->ac", B, B)
    return mean_out, 0.5 * (cov_out + cov_out.T)


def law_distances(law0, law1, rng=None, n=100_000):
    """Exact KL both ways and TV between two Gaussian laws (mean, cov).

    Returns dict with "kl" = KL(law0 || law1), "kl_reverse" = KL(law1 || law0) (nats),
    "tv" and "tv_se" (sgm_ref.metrics.gaussian_tv: exact in 1-D and for equal
    covariances, else a Monte-Carlo estimate over n draws from rng with its standard
    error; without rng that case gives tv = tv_se = None, the KLs being exact anyway).
    Raises ValueError for a law that is not a pair (mean, cov), or a bad Gaussian.
    """
    for name, law in (("law0", law0), ("law1", law1)):
        if not isinstance(law, (tuple, list)) or len(law) != 2:
            raise ValueError(f"{name} must be a pair (mean, cov), as replay_output_gaussian returns, got "
                             f"{type(law).__name__}" + (f" of length {len(law)}" if isinstance(law, (tuple, list))
                                                        else ""))
    (m0, C0), (m1, C1) = law0, law1
    kl = {"kl": gaussian_kl(m0, C0, m1, C1), "kl_reverse": gaussian_kl(m1, C1, m0, C0)}
    exact = np.size(m0) == 1 or np.array_equal(np.asarray(C0), np.asarray(C1))
    if rng is None and not exact:
        return {**kl, "tv": None, "tv_se": None}
    tv, se = gaussian_tv(m0, C0, m1, C1, rng=None if rng is None else check_rng(rng), n=n)
    return {**kl, "tv": tv, "tv_se": se}
