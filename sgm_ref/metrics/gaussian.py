"""Closed forms for a Gaussian target p_0 = N(m, S) driven by its exact (linear) score.

The forward marginals are p_t = N(alpha_t m, alpha_t^2 S + sigma_t^2 I) and the score
grad log p_t(y) = -(alpha_t^2 S + sigma_t^2 I)^{-1} (y - alpha_t m) is affine in y. With
S = U diag(lam) U^T, every sampler step of sgm_ref.samplers is an affine map acting on
each eigen-coordinate z = U^T y separately; the coordinate has variance

    v_k = alpha_{t_k}^2 lam + sigma_{t_k}^2   (v_k - 1 = alpha_{t_k}^2 (lam - 1))

under p_{t_k}, and a step y <- a y + b s + c xi moves its mean mu and variance q by

    mu <- (a - b / v_k) mu + b alpha_{t_k} (U^T m) / v_k,    q <- (a - b / v_k)^2 q + c^2,

from mu = 0 and q = 1 (the prior N(0, I) at T; q = sigma_T^2 on a process that is not
variance-preserving, as sgm_ref.samplers.sample starts it). So the law of a sampler's output is
Gaussian and known exactly, for any grid and any number of steps; KL and TV between
Gaussians then measure it against p_t0 or p_0 (gaussian_kl, gaussian_tv).

sampler_limit_gaussian gives the N -> infinity limit (the continuous reverse SDE or
probability-flow ODE started from N(0, I) at T), which separates the discretisation
error from the error of the finite horizon T.
"""

import math

import numpy as np
from scipy.linalg import solve_triangular
from scipy.special import erf, ndtr

from .._validation import check_count, check_real_array, check_rng, check_time_range, eigh_spd
from ..processes import VariancePreserving, check_process
from ..samplers import METHODS, STEP_COEFFICIENTS, check_grid, routed_replay, start_variance

__all__ = ["sampler_output_gaussian", "sampler_limit_gaussian", "gaussian_kl", "gaussian_tv"]


# -- validation ---------------------------------------------------------------------------


def _check_gaussian(mean, cov, mean_name="mean", cov_name="cov", d=None):
    """Validate N(mean, cov); return (mean (d,), symmetrised cov (d, d), lam (d,), U (d, d)).

    cov must be symmetric (within 1e-10 of its largest entry) and positive definite:
    smallest eigenvalue > d * eps * largest (the test GaussianMixture applies).
    """
    m = check_real_array(mean, mean_name)
    if m.ndim != 1 or m.size == 0:
        raise ValueError(f"{mean_name} must have shape (d,) with d >= 1, got shape {m.shape}")
    if d is not None and m.shape[0] != d:
        raise ValueError(f"{mean_name} must have shape ({d},) to match the other Gaussian, got shape {m.shape}")
    d = m.shape[0]
    C = check_real_array(cov, cov_name)
    if C.shape != (d, d):
        raise ValueError(f"{cov_name} must have shape (d, d) = ({d}, {d}) to match {mean_name}, got shape {C.shape}")
    lam, U = eigh_spd(C, cov_name)
    with np.errstate(over="ignore"):
        sym = 0.5 * (C + C.T)
    # C + C^T overflows for entries beyond 8.99e307: C + (C^T - C) / 2 then, as eigh_spd does
    C = sym if np.all(np.isfinite(sym)) else C + 0.5 * (C.T - C)
    return m, C, lam, U


def _check_method(method):
    if method not in METHODS:
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    return method


# -- sampler output laws ---------------------------------------------------------------------


def _from_eigen(U, mu, q):
    with np.errstate(over="ignore", invalid="ignore"):
        cov = (U * q) @ U.T
        mean, sym = U @ mu, 0.5 * (cov + cov.T)
        # the sum overflows past 8.99e307 where the law is finite (EDM, lam = 1e308: q = 9.05e307 was
        # refused as overflowing): there the same average as cov + (cov^T - cov) / 2
        lost = ~np.isfinite(sym) & np.isfinite(cov)
        cov = np.where(lost, cov + 0.5 * (cov.T - cov), sym) if lost.any() else sym
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(cov))):
        raise ValueError("the sampler's output law overflows float64 (its mean or covariance is beyond the range: "
                         "steps too large for the scheme, or mean and cov far from order 1); use more steps or "
                         "rescale the target")
    return mean, cov


def sampler_output_gaussian(mean, cov, process, grid, method="euler_maruyama"):
    """Exact law N(mean_out, cov_out) of a sampler's output for the target N(mean, cov).

    The sampler (sgm_ref.samplers) starts from N(0, I) at T = grid[0] and is driven by
    the exact score of p_t = N(alpha_t m, alpha_t^2 S + sigma_t^2 I). In the eigenbasis
    S = U diag(lam) U^T, with v_k = alpha_{t_k}^2 lam + sigma_{t_k}^2 and
    DB_k = B(t_k) - B(t_{k+1}):

        euler_maruyama:    a = 1 + DB_k / 2,  b = DB_k,                 c^2 = DB_k
        exponential:       a = e^{DB_k / 2},  b = 2 (e^{DB_k / 2} - 1), c^2 = e^{DB_k} - 1
        residual_exponential:  a = 2 - e^{-DB_k / 2},  b = 2 (1 - e^{-DB_k / 2}),  c^2 = 1 - e^{-DB_k}
                           (e^{-DB_k/2} y + b r with r = s + y; for p_0 = N(0, I) the output is N(0, I))
        mu <- (a - b / v_k) mu + b alpha_{t_k} (U^T m) / v_k,   q <- (a - b / v_k)^2 q + c^2.

    probability_flow (Heun, h = t_k - t_{k+1}): the drift f(y, t) = beta(t) (y + s(y, t)) / 2
    is g_t z + e_t per eigen-coordinate, g_t = beta(t) alpha_t^2 (lam - 1) / (2 v_t),
    e_t = beta(t) alpha_t (U^T m) / (2 v_t), with beta at t_k and t_{k+1} read from inside
    the step as the sampler reads it (on DDPM, beta(t_k - 0) at a knot), so one step is
    z <- A z + r with

        A = 1 + h/2 (g_k + g_{k+1} (1 + h g_k)),   r = h/2 (e_k + e_{k+1} + h g_{k+1} e_k),
        mu <- A mu + r,   q <- A^2 q.

    Any other process (SubVP, VE, EDM, FlowMatching) starts from N(0, sigma_T^2 I), as
    sgm_ref.samplers.sample starts it, and with v_k = alpha_{t_k}^2 lam + sigma_{t_k}^2
    the stochastic schemes take the same recursion with their general coefficients
    (sgm_ref.samplers, all integrals over [t_{k+1}, t_k]):

        euler_maruyama:    a = 1 - int f,                b = int g^2,   c^2 = int g^2
        exponential:       a = alpha_{k+1} / alpha_k,    b, c^2 = process.exponential_integrals

    (on a variance-preserving process these are the DB_k forms above, bit for bit).
    "probability_flow" there runs the replay sgm_ref.samplers routes it to
    (k-diffusion's Heun), whose law is sgm_ref.replays.replay_output_gaussian's (exact,
    by propagating the affine map).

    Parameters
    ----------
    mean : array_like, shape (d,)
    cov : array_like, shape (d, d)
        Symmetric positive definite.
    process : any process of sgm_ref.processes
    grid : array_like, shape (N + 1,)
        Decreasing times from T to t0 > 0 (sgm_ref.samplers.time_grid).
    method : {"euler_maruyama", "exponential", "residual_exponential", "probability_flow"}

    Returns
    -------
    mean_out : ndarray, shape (d,)
    cov_out : ndarray, shape (d, d)

    Raises
    ------
    ValueError
        For a non-finite or wrongly shaped mean or cov, a cov that is not symmetric
        positive definite, an invalid grid, process or method, or an output law beyond
        the float64 range.
    """
    m, S, lam, U = _check_gaussian(mean, cov)
    process = check_process(process, variance_preserving=False)
    grid = check_grid(grid, process)
    method = _check_method(method)
    vp = isinstance(process, VariancePreserving)
    if not vp and method == "residual_exponential":
        raise ValueError(f"method 'residual_exponential' needs a variance-preserving process (OU, VP, VPCosine, "
                         f"DDPM), got {process!r}, as sgm_ref.samplers")
    if not vp and method == "probability_flow":
        from ..replays import replay_output_gaussian  # lazily: replays imports this module
        replay = routed_replay(process, method)
        return replay_output_gaussian(replay, m, S, process, grid)
    m_eig = U.T @ m
    if vp:
        B = process.integrated_beta(grid)
        alpha = np.exp(-0.5 * B)[:, None]
        v = alpha**2 * lam + (-np.expm1(-B))[:, None]  # (N + 1, d)
    else:
        alpha = process.alpha(grid)[:, None]
        v = alpha**2 * lam + process.sigma2(grid)[:, None]
    mu, q = np.zeros_like(m), np.full_like(m, start_variance(process, grid[0]))
    if method == "probability_flow":
        # beta at each step's ends as the step sees them (DDPM: the piece below a knot t_k), as the sampler
        beta_now, beta_next = (b[:, None] for b in process._beta_inside(grid[:-1], grid[1:]))
        # 1 - 1/v = alpha^2 (lam - 1) / v, no cancellation; g_now[k], e_now[k] at t_k, the _next at t_{k+1}
        g_now = beta_now * alpha[:-1] ** 2 * (lam - 1.0) / (2.0 * v[:-1])
        g_next = beta_next * alpha[1:] ** 2 * (lam - 1.0) / (2.0 * v[1:])
        e_now = beta_now * alpha[:-1] * m_eig / (2.0 * v[:-1])
        e_next = beta_next * alpha[1:] * m_eig / (2.0 * v[1:])
        for k in range(grid.size - 1):
            h = grid[k] - grid[k + 1]
            A = 1.0 + 0.5 * h * (g_now[k] + g_next[k] * (1.0 + h * g_now[k]))
            mu = A * mu + 0.5 * h * (e_now[k] + e_next[k] + h * g_next[k] * e_now[k])
            q = A * A * q
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named by _from_eigen
            a, b, c = STEP_COEFFICIENTS[method](process, grid[:-1], grid[1:])
            for k in range(grid.size - 1):
                A = a[k] - b[k] / v[k]
                mu = A * mu + b[k] * alpha[k] * m_eig / v[k]
                q = A * A * q + c[k] ** 2
    return _from_eigen(U, mu, q)


def sampler_limit_gaussian(mean, cov, process, T, t0, method="euler_maruyama"):
    """The N -> infinity limit of sampler_output_gaussian: the exact reverse dynamics from N(0, I).

    Per eigen-coordinate (v_t = alpha_t^2 lam + sigma_t^2, mt = U^T m) the true reverse
    dynamics keep the p_t-moments (alpha_t mt, v_t) fixed and shrink or grow deviations
    from them by closed-form factors (integrate 1/v_t = e^B / (e^B + lam - 1) in B):

        reverse SDE ("euler_maruyama", "exponential", "residual_exponential"):
            mu = alpha_t0 mt - alpha_T mt (alpha_T / alpha_t0) (v_t0 / v_T)
            q  = v_t0 + (1 - v_T) (alpha_T / alpha_t0)^2 (v_t0 / v_T)^2
        probability-flow ODE ("probability_flow"):
            mu = alpha_t0 mt - alpha_T mt sqrt(v_t0 / v_T),   q = v_t0 / v_T

    Both error terms vanish as T -> infinity; the SDE's like alpha_T^2, the ODE's mean
    term only like alpha_T.

    Any other process (started from N(0, sigma_T^2 I), as sgm_ref.samplers.sample does):
    with v_t' = 2 f v_t + g^2 a deviation delta from the moments obeys
    d delta / dt = v'/(2 v) delta along the ODE (delta ~ sqrt(v)) and its mean
    d delta / dt = (v'/v - f) delta along the SDE (delta ~ v / alpha), so

        reverse SDE:  ratio = (alpha_T / alpha_t0) (v_t0 / v_T),
                      mu = alpha_t0 mt - alpha_T mt ratio,
                      q = v_t0 - alpha_T^2 lam ratio^2     (sigma_T^2 - v_T = -alpha_T^2 lam)
        ODE:          mu = alpha_t0 mt - alpha_T mt sqrt(v_t0 / v_T),   q = v_t0 sigma_T^2 / v_T

    with v_T / sigma_T^2 and v_t0 / v_T formed on sigma_T's scale where sigma_T^2 is beyond
    float64 (EDM at T = 1e200: the limit is then p_t0's own moments to rounding). The forms
    above are evaluated multiplied out, without their subtractions of nearly equal terms where
    lam is large (OU at T = 0.1, t0 = 0.01: q lost 8e-7 relative at lam = 1e10, the ODE's mean
    0.1 at lam = 1e14), and on a variance-preserving process with the integral of beta from t0
    to T taken whole, and on the other processes sigma_T^2 - (alpha_T / alpha_t0)^2 sigma_t0^2, where
    it cancels (T near t0), as the forward transition's variance from t0 to T (each process's
    exponential-integrator step): within 5e-16 of the forms in mpmath from the process's float64
    coefficients for lam from 1e-300 to 1e300 on every process, and for T from one ulp to 1e-6
    relative past t0 (where those forms cancel in the rounded coefficients themselves) within 2e-15
    in the mean of them from the process's exact coefficients, the variance within the rounding of
    the float64 coefficients (VE's sigma_t0^2 is itself 1.6e-15 from exact; SubVP at t0 = 0.9,
    B ~ 8: 4e-15); a mean below float64's normal range (lam = 1e300, T an ulp past t0) to its
    subnormal spacing.

    Parameters
    ----------
    mean, cov : as sampler_output_gaussian
    process : any process of sgm_ref.processes
    T, t0 : float
        0 < t0 < T <= process.t_max.
    method : {"euler_maruyama", "exponential", "residual_exponential", "probability_flow"}
        "residual_exponential" on a variance-preserving process only, as sampler_output_gaussian.

    Returns
    -------
    mean_out : ndarray, shape (d,)
    cov_out : ndarray, shape (d, d)

    Raises
    ------
    ValueError
        As sampler_output_gaussian, and for 0 < t0 < T <= process.t_max not holding.
    """
    m, _, lam, U = _check_gaussian(mean, cov)
    process = check_process(process, variance_preserving=False)
    if not isinstance(process, VariancePreserving):
        t0, T = check_time_range(t0, T)
        if T > process.t_max:
            raise ValueError(f"T must be <= {process.t_max} for {process!r}, got {T!r}")
        method = _check_method(method)
        if method == "residual_exponential":  # as sampler_output_gaussian: no such sampler to take the limit of
            raise ValueError(f"method 'residual_exponential' needs a variance-preserving process (OU, VP, VPCosine, "
                             f"DDPM), got {process!r}, as sgm_ref.samplers")
        return _limit_any_process(U.T @ m, lam, U, process, T, t0, method)
    t0, T = check_time_range(t0, T, process)
    method = _check_method(method)
    m_eig = U.T @ m
    B0, BT = process.integrated_beta(np.array([t0, T]))
    alpha0, alphaT = np.exp(-0.5 * B0), np.exp(-0.5 * BT)
    v0 = alpha0**2 * lam - np.expm1(-B0)
    vT = alphaT**2 * lam - np.expm1(-BT)
    # on the scale v_t = alpha_t^2 (lam - 1) + 1: "sigma_t^2" 1 and alpha_t^2 (lam - 1) beside it; the
    # integral from t0 to T without the cancellation of B(T) - B(t0) (T within ulps of t0: 20% in mu)
    between = float(process.integrated_beta_between(T, t0))
    decay = np.exp(-0.5 * between)  # alpha_T / alpha_0
    return _limit_from(m_eig, U, method, alpha0, decay, decay * v0 / vT, v0, vT, alphaT**2 * (lam - 1.0), 1.0, 1.0,
                       -np.expm1(-between))


def _limit_from(m_eig, U, method, alpha0, decay, ratio, v0, vT, excess, s20, s2T, spread):
    """The limit law from its per-coordinate coefficients, in forms without cancellation.

    v_t = excess_t + s2_t with excess_T = alpha_T^2 lam and s2 = sigma^2 (any process), or
    excess_T = alpha_T^2 (lam - 1) and s2 = 1 (variance-preserving: 1 - v_T = -excess_T);
    decay = alpha_T / alpha_0, r = decay^2, ratio = decay v_0 / v_T; spread = s2_T - r s2_0 (1 - r,
    by expm1, on a variance-preserving process). The docstring's forms subtract nearly equal
    terms where lam is large (OU, lam = 1e10, T = 0.1, t0 = 0.01: 8e-7 relative in q, more in
    mu). Multiplied out, with gap = spread / v_T = 1 - r v_0 / v_T (in [0, 1]),

        SDE:  mu = alpha_0 mt gap,    q = (v_0 / v_T) s2_T ((excess_T / v_T) (2 - r s2_0 / s2_T) + s2_T / v_T)
        ODE:  mu = alpha_0 mt gap / (1 + decay sqrt(v_0 / v_T)),    q = v_0 s2_T / v_T

    every term >= 0 and the SDE's bracket at most 2 (excess_T / v_T + s2_T / v_T = 1); v_0 / v_T
    is formed first (s2_T / v_T underflows where sigma_T^2 is tiny and lam huge). Where
    excess_T < 0 (lam < 1 on a variance-preserving process) the docstring's
    q = v_0 - excess_T ratio^2 adds, and is kept.
    """
    gap = spread / vT
    if method == "probability_flow":
        mu = alpha0 * m_eig * (gap / (1.0 + decay * np.sqrt(v0 / vT)))  # sqrt(1 - gap), not from gap
        return _from_eigen(U, mu, (v0 / vT) * s2T)
    mu = alpha0 * m_eig * gap
    s_ratio = s20 / s2T if s2T > 0 else 0.0  # s2_0 <= s2_T: both 0 where sigma_T^2 underflows
    grown = (v0 / vT) * s2T * ((excess / vT) * (2.0 - decay**2 * s_ratio) + s2T / vT)
    q = np.where(excess >= 0, grown, v0 - excess * ratio**2)
    return _from_eigen(U, mu, q)


def _limit_any_process(m_eig, lam, U, process, T, t0, method):
    """sampler_limit_gaussian for a process that is not variance-preserving (its docstring)."""
    alpha0, alphaT = process.alpha(np.array([t0, T]))
    try:
        s20, s2T = process.sigma2(np.array([t0, T]))
    except ValueError:  # sigma_T^2 beyond float64 (EDM at T = 1e200), sigma_T not: the ratios on sigma_T's scale
        v0 = alpha0**2 * lam + float(process.sigma2(t0))  # (t0's own refusal names its "t")
        sT = float(process.sigma(T))
        vT_s2T = (alphaT / sT) ** 2 * lam + 1.0  # v_T / sigma_T^2
        with np.errstate(under="ignore"):
            v0_vT = (v0 / sT) / sT / vT_s2T
        if method == "probability_flow":
            mu, q = alpha0 * m_eig - alphaT * m_eig * np.sqrt(v0_vT), v0 / vT_s2T
        else:
            ratio = (alphaT / alpha0) * v0_vT
            mu, q = alpha0 * m_eig - alphaT * m_eig * ratio, v0 - alphaT**2 * lam * ratio**2
        return _from_eigen(U, mu, q)
    v0, vT = alpha0**2 * lam + s20, alphaT**2 * lam + s2T
    decay = alphaT / alpha0
    spread = s2T - decay**2 * s20
    if decay**2 * s20 > 0.5 * s2T:
        # T near t0: the difference cancels (SubVP, T = t0 (1 + 1e-12): 2e-5 in mu). It is the forward
        # transition's variance from t0 to T, int (alpha_T / alpha_t)^2 g^2 dt = decay^2 _ei_c2, which
        # each process has in a form without the cancellation (the exponential integrator's step)
        spread = decay * (decay * float(process._ei_c2(np.float64(T), np.float64(t0))))
    return _limit_from(m_eig, U, method, alpha0, decay, decay * (v0 / vT), v0, vT, alphaT**2 * lam, float(s20),
                       float(s2T), spread)


# -- divergences between Gaussians ---------------------------------------------------------------


def _two_gaussians(mean0, cov0, mean1, cov1):
    m0, C0, _, _ = _check_gaussian(mean0, cov0, "mean0", "cov0")
    m1, C1, _, _ = _check_gaussian(mean1, cov1, "mean1", "cov1", d=m0.shape[0])
    return m0, C0, m1, C1


def gaussian_kl(mean0, cov0, mean1, cov1):
    """KL(N0 || N1) between N0 = N(mean0, cov0) and N1 = N(mean1, cov1), exactly.

    KL = 1/2 [tr(S1^{-1} S0) - d + log det S1 - log det S0 + (m1 - m0)^T S1^{-1} (m1 - m0)].

    With Cholesky factors S0 = L0 L0^T, S1 = L1 L1^T, M = L1^{-1} L0 is lower triangular
    with diagonal L0_ii / L1_ii, so with l_i = 2 log(L0_ii / L1_ii) and
    w = L1^{-1} (m1 - m0),

        KL = 1/2 [sum_i (e^{l_i} - 1 - l_i) + sum_{i > j} M_ij^2 + |w|^2],

    a sum of non-negative terms (no cancellation between the trace and the
    log-determinants). Triangular solves only, no inverse.

    When N0 is close to N1 each e^{l_i} - 1 - l_i ~ l_i^2 / 2 would lose the digits that
    rounding takes from L0_ii / L1_ii (KL(N(0, 1) || N(0, 1 + 1e-10)) came out 8e-7 off in
    relative terms, with 1 + 1e-13 1e-3 off). So where every eigenvalue mu_i of A = L1^{-1} (S0 - S1) L1^{-T}
    (1 + mu_i the eigenvalues of S1^{-1} S0) has |mu_i| <= 1/2, the covariance part is
    taken from the difference S0 - S1 itself,

        KL = 1/2 [sum_i (mu_i - log(1 + mu_i)) + |w|^2],

    mu - log(1 + mu) summed as a series without cancellation (_mu_minus_log1p). Beyond
    that the sum is at least 1/2 - log(3/2) ~ 0.09 and the Cholesky form loses nothing.

    Parameters
    ----------
    mean0, mean1 : array_like, shape (d,)
    cov0, cov1 : array_like, shape (d, d), symmetric positive definite

    Returns
    -------
    float
        KL(N0 || N1) >= 0, in nats.

    Raises
    ------
    ValueError
        For non-finite entries, mismatched shapes, a covariance that is not SPD, or a
        divergence beyond the float64 range.
    """
    m0, C0, m1, C1 = _two_gaussians(mean0, cov0, mean1, cov1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        L0, L1 = np.linalg.cholesky(C0), np.linalg.cholesky(C1)
        # check_finite=False: m1 - m0 beyond float64 (means +-1e308) gave scipy's 'array must not contain infs
        # or NaNs'; its infinite KL is named below, as any other
        w = solve_triangular(L1, m1 - m0, lower=True, check_finite=False)
        # A = L1^{-1} (S0 - S1) L1^{-T}: its eigenvalues mu are those of S1^{-1} S0 less 1, from the difference
        half = solve_triangular(L1, C0 - C1, lower=True, check_finite=False)
        A = solve_triangular(L1, half.T, lower=True, check_finite=False)
        mu = np.linalg.eigvalsh(0.5 * (A + A.T)) if np.all(np.isfinite(A)) else np.array([np.inf])
        if np.max(np.abs(mu)) <= 0.5:  # close laws: the covariance part from S0 - S1, keeping its digits
            cov_part = math.fsum(_mu_minus_log1p(mu))
        else:
            M = solve_triangular(L1, L0, lower=True)
            l = 2.0 * np.log(np.diag(L0) / np.diag(L1))
            cov_part = np.sum(np.expm1(l) - l) + np.sum(np.tril(M, -1) ** 2)
        kl = float(0.5 * (cov_part + w @ w))
        if not np.isfinite(kl) and np.isfinite(cov_part) and np.all(np.isfinite(w)):
            # |w|^2 (or the sum) beyond float64 though half of it may not be (|m1 - m0| = 1.8e154 in unit
            # variance: KL 1.62e308 was refused as beyond float64): the halves, |w|^2 / 2 as c^2 |w / c|^2 / 2
            c = float(np.max(np.abs(w)))
            kl = float(0.5 * cov_part + (0.5 * c) * float((w / c) @ (w / c)) * c)
    if not np.isfinite(kl):
        raise ValueError("KL(N0 || N1) exceeds float64: the means are too many standard deviations of N1 apart, "
                         "or the covariances differ by too large a factor (e.g. subnormal variances); rescale both")
    return kl


# odd powers u^(2j+1) / (2j+1), j = 1..24, of the series below: u^2 <= 1/9 makes the last term < 1e-23
_ATANH_SERIES_TERMS = 24


def _mu_minus_log1p(mu):
    """mu - log(1 + mu) for |mu| <= 1/2, elementwise, to a few eps relative.

    With u = mu / (2 + mu), log(1 + mu) = 2 atanh(u) = 2 (u + u^3/3 + u^5/5 + ...) and
    mu - 2 u = mu^2 / (2 + mu) = u^2 (2 + mu), so

        mu - log(1 + mu) = u^2 (2 + mu) - 2 u^3 (1/3 + u^2/5 + u^4/7 + ...),

    two parts of one sign for mu < 0, and for mu > 0 (u <= 1/5) a second part below 6% of
    the first: no cancellation, where mu - log1p(mu) ~ mu^2 / 2 loses 2 eps / |mu| of its
    relative precision. Below |mu| ~ 1e-154 the square underflows (a KL below ~1e-308).
    """
    mu = np.asarray(mu, dtype=np.float64)
    u = mu / (2.0 + mu)
    u2 = u * u
    tail = np.zeros_like(u)
    for j in range(_ATANH_SERIES_TERMS, 0, -1):  # Horner: 1/3 + u^2 (1/5 + u^2 (1/7 + ...))
        tail = 1.0 / (2 * j + 1) + u2 * tail
    return u2 * (2.0 + mu) - 2.0 * u2 * u * tail


# beyond these (variance ratio 1e40, means 1e100 wider-law sd apart) TV(N0, N1) = 1 in float64
_LOG_VAR_RATIO_FAR = float(np.log(1e40))
_DISTANCE_FAR = 1e100


def _tv_1d(m0, v0, m1, v1):
    """Exact TV(N(m0, v0), N(m1, v1)) from the crossing points of the densities.

    In u = (x - m0) / sqrt(v0), N0 = N(0, 1) and N1 = N(delta, rho) with
    delta = (m1 - m0) / sqrt(v0), rho = v1 / v0; the densities cross where
    (1 - rho) u^2 - 2 delta u + delta^2 + rho log rho = 0, whose discriminant / 4 is
    rho (delta^2 + (rho - 1) log rho) >= 0. On each of the three intervals the sign
    of p0 - p1 is fixed, and the signed masses L (left), M, R (right) sum to zero, so
    TV = (|L| + |R| + |L + R|) / 2. Equal variances cross once, at the midpoint:
    TV = erf(|delta| / (2 sqrt 2)). rho - 1 and log rho come from v1 - v0, and each mass
    from the width of its interval, so nearly equal laws keep their digits.

    TV is symmetric, and the narrower law is taken as N0 (rho >= 1): the crossings lie
    within a few of its standard deviations, where u resolves them. Standardised on the
    wider law they sit sd_n / sd_w apart around delta and collapsed onto one float
    (variance ratio 1e-38, means 30 wide sd apart: TV 0 instead of 1), and rho - 1 = -1 + rho
    lost eps / rho of log rho (v1 / v0 < 1.1e-16 gave log rho = -inf and TV = 0).

    Laws whose variances differ by more than a factor 1e40, or whose means lie more than
    1e100 standard deviations (of the wider) apart, have TV = 1 in float64: with
    sd_n / sd_w <= 1e-20, 1 - TV = int min(p0, p1) <= 8 sd_n / sd_w + 2 Phi(-10) < 1e-19
    (the wider density over +-10 sd_n of the narrower's mean, and the narrower's tails
    beyond). Returned as 1 before rho, delta^2 or rho delta^2 can overflow (they gave 0 or
    0.5 for laws this far apart, and a refusal for scale ratios beyond ~1e154).
    """
    if m0 == m1 and v0 == v1:
        return 0.0
    log_var_ratio = np.log(v1) - np.log(v0)
    with np.errstate(over="ignore"):  # m1 - m0 may overflow: then the means are >= 1e154 sd apart
        distance_wide = abs(m1 - m0) / np.sqrt(max(v0, v1))
    if abs(log_var_ratio) > _LOG_VAR_RATIO_FAR or not distance_wide <= _DISTANCE_FAR:
        return 1.0
    if v0 > v1:
        m0, v0, m1, v1 = m1, v1, m0, v0
    s0 = np.sqrt(v0)
    delta = (m1 - m0) / s0
    if v0 == v1:
        return float(erf(abs(delta) / (2.0 * np.sqrt(2.0))))
    rho_m1 = (v1 - v0) / v0  # rho - 1
    rho = v1 / v0
    log_rho = np.log1p(rho_m1)
    # the root formula without cancellation: q = delta + sign(delta) sqrt(disc)
    q = delta + np.copysign(np.sqrt(rho * (delta * delta + rho_m1 * log_rho)), delta)
    if q == 0:  # delta and log rho both rounded to zero: the laws agree to working precision
        return 0.0
    r_far = -q / rho_m1
    r_near = (delta * delta + rho * log_rho) / q
    lo, hi = min(r_far, r_near), max(r_far, r_near)
    s1, s1_m1 = np.sqrt(rho), np.expm1(0.5 * log_rho)
    # L = Phi(lo) - Phi((lo - delta) / s1), R = Phi(-hi) - Phi(-(hi - delta) / s1)
    left = _normal_mass(lo, (lo - delta) / s1, (lo * s1_m1 + delta) / s1)
    right = _normal_mass(-hi, -(hi - delta) / s1, -(hi * s1_m1 + delta) / s1)
    return float(0.5 * (abs(left) + abs(right) + abs(left + right)))


_GAUSS_LEGENDRE = np.polynomial.legendre.leggauss(16)


def _normal_mass(a, b, width):
    """Phi(a) - Phi(b), given width = a - b computed without cancellation.

    A narrow interval, |width| (1 + max(|a|, |b|)) < 2, over which the normal density
    changes by less than a factor e^2, is integrated by 16-point Gauss-Legendre (exact
    to rounding there), so the mass keeps its relative precision however close a and
    b are; across a wide one the two CDFs differ by that factor or more, and their
    difference, taken in the tail where both are small, loses nothing.
    """
    if abs(width) * (1.0 + max(abs(a), abs(b))) < 2.0:
        nodes, weights = _GAUSS_LEGENDRE
        x = 0.5 * (a + b) + 0.5 * width * nodes
        return 0.5 * width * float(weights @ np.exp(-0.5 * x * x)) / np.sqrt(2.0 * np.pi)
    if min(a, b) > 0:
        return ndtr(-b) - ndtr(-a)
    return ndtr(a) - ndtr(b)


# rows per Monte-Carlo block: about 2**20 numbers of working memory
_BLOCK_ELEMENTS = 2**20


def gaussian_tv(mean0, cov0, mean1, cov1, rng=None, n=100_000):
    """Total variation distance TV(N0, N1) = 1/2 int |p0 - p1|: exact in 1-D, else Monte Carlo.

    d = 1: exact, from the crossing points of the two densities (roots of a quadratic)
    and normal CDFs. Equal covariances (any d): exact, TV = erf(D / (2 sqrt 2)) with
    D = |L^{-1} (m1 - m0)| the Mahalanobis distance. Otherwise (d > 1) the unbiased
    estimate

        TV = E_{x ~ N0} [(1 - p1(x) / p0(x))_+]

    over n draws from N0 (x = m0 + L0 z, the ratio from Cholesky solves), with its
    standard error (the sample standard deviation over sqrt(n)).

    Parameters
    ----------
    mean0, mean1 : array_like, shape (d,)
    cov0, cov1 : array_like, shape (d, d), symmetric positive definite
    rng : numpy.random.Generator, optional
        Required when the estimate is Monte Carlo (d > 1 and cov0 != cov1).
    n : int >= 2
        Number of Monte-Carlo draws (ignored when exact).

    Returns
    -------
    value : float
        TV(N0, N1) in [0, 1] (the estimate, in the Monte-Carlo case).
    standard_error : float
        0.0 when exact.

    Raises
    ------
    ValueError
        For bad means or covariances (as gaussian_kl), a missing rng or n < 2 when
        Monte Carlo is needed. Laws more than ~1e300 standard deviations apart (or
        with scales that far apart), whose computation overflows, give TV = 1; in 1-D
        already beyond a variance ratio of 1e40 or 1e100 standard deviations, where
        1 - TV < 1e-19.
    """
    m0, C0, m1, C1 = _two_gaussians(mean0, cov0, mean1, cov1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        # m1 - m0 itself can overflow (then the means are >= 1e154 deviations apart)
        finite_difference = np.all(np.isfinite(m1 - m0))
        value, se = _gaussian_tv(m0, C0, m1, C1, rng, n) if finite_difference else (np.nan, np.nan)
    if np.isfinite(value) and np.isfinite(se):
        return value, se
    # something overflowed: either the laws are more than ~1e300 standard deviations
    # apart, or their scales differ by such a factor, and TV = 1 to float64; else refuse
    if _log_separation(m0, C0, m1, C1) > _LOG_FAR:
        return 1.0, 0.0
    raise ValueError("TV(N0, N1) could not be computed in float64 (an intermediate overflowed); rescale "
                     "the means and covariances toward order 1")


# log(1e300): laws this many standard deviations apart (or with scales this far apart)
# overlap by less than e^{-1e600}
_LOG_FAR = float(np.log(1e300))


def _log_separation(m0, C0, m1, C1):
    """A lower bound on the log of the separation of N0 and N1, computed without overflow.

    max of log(|m1 - m0| / sqrt(d max_i C1_ii)) (a lower bound on log of the Mahalanobis
    distance, as lambda_max(C1) <= trace C1 <= d max_i C1_ii) and max_i |log(L0_ii / L1_ii)| (the
    diagonal of L1^{-1} L0 bounds its extreme singular values, the std ratios).
    """
    half = np.abs(0.5 * m1 - 0.5 * m0)
    top = float(np.max(half))
    log_distance = -np.inf
    if top > 0:
        log_distance = (np.log(top) + np.log(2.0) + 0.5 * np.log(np.sum((half / top) ** 2))
                        - 0.5 * (np.log(np.max(np.diag(C1))) + np.log(C1.shape[0])))
    L0, L1 = np.linalg.cholesky(C0), np.linalg.cholesky(C1)
    log_ratio = float(np.max(np.abs(np.log(np.diag(L0)) - np.log(np.diag(L1)))))
    return max(float(log_distance), log_ratio)


def _gaussian_tv(m0, C0, m1, C1, rng, n):
    d = m0.shape[0]
    if d == 1:
        return _tv_1d(m0[0], C0[0, 0], m1[0], C1[0, 0]), 0.0
    if np.array_equal(C0, C1):
        D = np.linalg.norm(solve_triangular(np.linalg.cholesky(C0), m1 - m0, lower=True))
        return float(erf(D / (2.0 * np.sqrt(2.0)))), 0.0
    if rng is None:
        raise ValueError("rng must be a numpy.random.Generator when d > 1 and cov0 != cov1 "
                         "(the TV is then a Monte-Carlo estimate)")
    rng = check_rng(rng)
    n = check_count(n, "n", minimum=2)
    L0, L1 = np.linalg.cholesky(C0), np.linalg.cholesky(C1)
    # for x = m0 + L0 z:  L1^{-1} (x - m1) = w + M z, and log p1/p0 = (|z|^2 - |w + M z|^2) / 2 + log det M
    M = solve_triangular(L1, L0, lower=True)
    w = solve_triangular(L1, m0 - m1, lower=True)
    log_det_M = np.sum(np.log(np.diag(L0) / np.diag(L1)))
    block = max(1, _BLOCK_ELEMENTS // d)
    count, mean, m2 = 0, 0.0, 0.0
    for start in range(0, n, block):
        z = rng.standard_normal((min(block, n - start), d))
        y = w + z @ M.T
        log_ratio = 0.5 * (np.sum(z * z, axis=1) - np.sum(y * y, axis=1)) + log_det_M
        # (1 - r)_+ = -expm1(min(log r, 0)); the min also keeps exp from overflowing
        f = -np.expm1(np.minimum(log_ratio, 0.0))
        # Chan et al.'s pairwise update of the mean and the sum of squared deviations
        nb, mb = f.size, f.mean()
        m2b = np.sum((f - mb) ** 2)
        total = count + nb
        m2 += m2b + (mb - mean) ** 2 * count * nb / total
        mean += (mb - mean) * nb / total
        count = total
    return float(mean), float(np.sqrt(m2 / (n - 1) / n))
