"""Tests for sgm_ref.metrics.gaussian: sampler output laws for a Gaussian target, KL, TV.

Independent references: the samplers of sgm_ref.samplers themselves (Monte Carlo, and
exactly for the deterministic probability flow), a dense-matrix moment recursion written
here from the samplers' docstring formulas, the moment ODEs of the continuous reverse
dynamics integrated by scipy.integrate.solve_ivp, the textbook KL formula (explicit
inverse, fine in a test), Monte Carlo of log p0 / p1 with scipy.stats.multivariate_normal
and 1-D TV by scipy.integrate.quad.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import integrate, stats

from sgm_ref import OU, VP, GaussianMixture
from sgm_ref.metrics.gaussian import gaussian_kl, gaussian_tv, sampler_limit_gaussian, sampler_output_gaussian
from sgm_ref.samplers import euler_maruyama, exponential_integrator, probability_flow, time_grid

PROPERTY = settings(max_examples=30, deadline=None, derandomize=True, database=None)
METHODS = ("euler_maruyama", "exponential", "probability_flow")
SDE_METHODS = ("euler_maruyama", "exponential")
# (process, T, t0) for the short-grid checks; VP lives on [0, 1]
SETTINGS = {"OU": (OU(), 3.0, 1e-2), "VP": (VP(), 1.0, 1e-2)}
MC_TOLERANCE = 5.0  # standard errors


def random_gaussian(d, seed, eigenvalues=None):
    """(m, S): a full covariance with the given eigenvalues (default in [0.5, 2]) in a random basis."""
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    lam = np.linspace(0.5, 2.0, d) if eigenvalues is None else np.asarray(eigenvalues, dtype=float)
    S = (Q * lam) @ Q.T
    return rng.normal(0.0, 1.0, d), 0.5 * (S + S.T)


def marginal(m, S, process, t):
    """p_t = N(alpha_t m, alpha_t^2 S + sigma_t^2 I), written out here."""
    a, s = process.alpha(t), process.sigma(t)
    return a * m, a * a * S + s * s * np.eye(m.size)


def oracle_score(m, S, process):
    g = GaussianMixture([1.0], [m], [S])
    return lambda x, t: g.score(x, t, process)


def moment_z_scores(y, mean, cov):
    """z-scores of the sample mean and of each sample-covariance entry of y (n, d).

    For Gaussian rows, Var(mean_i) = C_ii / n and the unbiased sample covariance has
    Var(C^_ij) = (C_ii C_jj + C_ij^2) / (n - 1).
    """
    n = y.shape[0]
    z_mean = (y.mean(axis=0) - mean) / np.sqrt(np.diag(cov) / n)
    var = np.diag(cov)
    z_cov = (np.cov(y.T) - cov) / np.sqrt((np.outer(var, var) + cov**2) / (n - 1))
    return np.abs(np.concatenate([z_mean, z_cov[np.triu_indices(y.shape[1])]]))


def dense_moment_recursion(m, S, process, grid, method):
    """Mean and covariance through the SDE steps with dense matrices (no eigenbasis).

    s(y, t) = -Sigma_t^{-1} (y - alpha_t m), so y <- a y + b s + c xi maps (mean, C) to
    (G mean + b Sigma_t^{-1} alpha_t m, G C G^T + c^2 I), G = a I - b Sigma_t^{-1}.
    """
    d = m.size
    mean, C = np.zeros(d), np.eye(d)
    B = [process.integrated_beta(t) for t in grid]
    for k in range(len(grid) - 1):
        alpha_k, Sigma = marginal(m, S, process, grid[k])
        dB = B[k] - B[k + 1]
        if method == "euler_maruyama":
            a, b, c2 = 1.0 + dB / 2, dB, dB
        else:
            a, b, c2 = np.exp(dB / 2), 2.0 * (np.exp(dB / 2) - 1.0), np.exp(dB) - 1.0
        P = np.linalg.inv(Sigma)
        G = a * np.eye(d) - b * P
        mean = G @ mean + b * P @ alpha_k
        C = G @ C @ G.T + c2 * np.eye(d)
    return mean, C


# -- the sampler output law --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("method", SDE_METHODS)
def test_sde_output_matches_dense_recursion(name, method):
    process, T, t0 = SETTINGS[name]
    m, S = random_gaussian(3, seed=1)
    grid = time_grid(T, t0, 20, "geometric")
    mean, cov = sampler_output_gaussian(m, S, process, grid, method)
    ref_mean, ref_cov = dense_moment_recursion(m, S, process, grid, method)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_probability_flow_output_is_the_samplers_affine_map(name):
    # the ODE sampler is an affine map x -> J x + r; N(0, I) goes to N(r, J J^T)
    process, T, t0 = SETTINGS[name]
    m, S = random_gaussian(3, seed=2)
    grid = time_grid(T, t0, 20)
    x = np.vstack([np.zeros(3), np.eye(3)])
    y = probability_flow(oracle_score(m, S, process), process, grid, x)
    r, J = y[0], (y[1:] - y[0]).T
    mean, cov = sampler_output_gaussian(m, S, process, grid, "probability_flow")
    np.testing.assert_allclose(mean, r, rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, J @ J.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("method", METHODS)
def test_closed_form_matches_sampler_monte_carlo(name, method):
    """20 000 particles through the real sampler, 20 steps: moments within 5 standard errors."""
    process, T, t0 = SETTINGS[name]
    d, n = 3, 20_000
    m, S = random_gaussian(d, seed=3)
    grid = time_grid(T, t0, 20)
    rng = np.random.default_rng(20240)
    x = process.prior(n, d, rng)
    score = oracle_score(m, S, process)
    if method == "euler_maruyama":
        y = euler_maruyama(score, process, grid, x, rng)
    elif method == "exponential":
        y = exponential_integrator(score, process, grid, x, rng)
    else:
        y = probability_flow(score, process, grid, x)
    mean, cov = sampler_output_gaussian(m, S, process, grid, method)
    z = moment_z_scores(y, mean, cov)
    assert z.max() < MC_TOLERANCE, z
    if method in SDE_METHODS:
        # power: at 20 steps the SDE samplers' bias is resolved, p_t0 itself is rejected
        assert moment_z_scores(y, *marginal(m, S, process, t0)).max() > MC_TOLERANCE


def test_euler_maruyama_and_exponential_differ():
    m, S = random_gaussian(2, seed=4)
    grid = time_grid(3.0, 1e-2, 10)
    em = sampler_output_gaussian(m, S, OU(), grid, "euler_maruyama")
    ei = sampler_output_gaussian(m, S, OU(), grid, "exponential")
    assert gaussian_kl(*em, *ei) > 1e-3


# -- the N -> infinity limit and the order of the weak error ------------------------------


def _moment_odes(m, S, process, T, t0, method):
    """The continuous reverse dynamics' mean and variance ODEs per eigen-coordinate, by solve_ivp.

    In tau = T - t, with s = -(y - alpha_t mt) / v_t:
    reverse SDE  dy = [beta y / 2 + beta s] dtau + sqrt(beta) dW:
        dmu/dtau = beta (1/2 - 1/v) mu + beta alpha mt / v,  dq/dtau = 2 beta (1/2 - 1/v) q + beta;
    probability flow  dy = beta (y + s) / 2 dtau:
        dmu/dtau = beta (1 - 1/v) mu / 2 + beta alpha mt / (2 v),  dq/dtau = beta (1 - 1/v) q.
    """
    lam, U = np.linalg.eigh(S)
    mt = U.T @ m
    d = m.size

    def rhs(tau, state):
        t = T - tau
        beta, alpha, sigma = process.beta(t), process.alpha(t), process.sigma(t)
        v = alpha**2 * lam + sigma**2
        mu, q = state[:d], state[d:]
        if method == "probability_flow":
            drift = 0.5 * beta * (1.0 - 1.0 / v)
            return np.concatenate([drift * mu + 0.5 * beta * alpha * mt / v, 2.0 * drift * q])
        drift = beta * (0.5 - 1.0 / v)
        return np.concatenate([drift * mu + beta * alpha * mt / v, 2.0 * drift * q + beta])

    sol = integrate.solve_ivp(rhs, (0.0, T - t0), np.concatenate([np.zeros(d), np.ones(d)]),
                              method="DOP853", rtol=1e-12, atol=1e-14)
    mu, q = sol.y[:d, -1], sol.y[d:, -1]
    return U @ mu, (U * q) @ U.T


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("method", METHODS)
def test_limit_matches_moment_odes(name, method):
    process, T, t0 = SETTINGS[name]
    m, S = random_gaussian(3, seed=5, eigenvalues=[0.2, 1.0, 3.0])
    mean, cov = sampler_limit_gaussian(m, S, process, T, t0, method)
    ref_mean, ref_cov = _moment_odes(m, S, process, T, t0, method)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(cov, ref_cov, rtol=0, atol=1e-9)


def _weak_error(m, S, process, T, t0, method, N):
    mean, cov = sampler_output_gaussian(m, S, process, time_grid(T, t0, N), method)
    ref_mean, ref_cov = sampler_limit_gaussian(m, S, process, T, t0, method)
    return np.linalg.norm(mean - ref_mean) + np.linalg.norm(cov - ref_cov)


@pytest.mark.parametrize("method,order", [("euler_maruyama", 1), ("exponential", 1), ("probability_flow", 2)])
def test_weak_error_order(method, order):
    """log-log slope of |mean_N - mean_inf| + ||cov_N - cov_inf||_F against N in 16..512.

    OU, T = 5, t0 = 1e-2, uniform grid. The reference is the sampler's own N -> infinity
    limit (the continuous reverse dynamics started from N(0, I) at T), so the finite
    horizon does not enter the error at all; for the SDEs it is also negligible against
    p_t0 (about 1e-4 against a discretisation error of 1e-2 at N = 512).
    """
    process, T, t0 = OU(), 5.0, 1e-2
    m, S = random_gaussian(3, seed=6)
    Ns = 2 ** np.arange(4, 10)
    errors = [_weak_error(m, S, process, T, t0, method, N) for N in Ns]
    slope = np.polyfit(np.log(Ns), np.log(errors), 1)[0]
    assert abs(slope + order) < 0.2, (slope, errors)


def test_sde_output_approaches_p_t0():
    process, T, t0 = OU(), 8.0, 1e-2
    m, S = random_gaussian(3, seed=7)
    target = marginal(m, S, process, t0)
    for method in SDE_METHODS:
        kls = [gaussian_kl(*target, *sampler_output_gaussian(m, S, process, time_grid(T, t0, N), method))
               for N in (64, 256, 1024, 4096)]
        assert np.all(np.diff(kls) < 0), kls
        assert kls[-1] < 1e-5, kls
    # the SDE limit misses p_t0 only by the horizon term ~ alpha_T^2: here ~ 1e-7
    limit = sampler_limit_gaussian(m, S, process, T, t0, "euler_maruyama")
    assert gaussian_kl(*target, *limit) < 1e-12


def test_limit_is_p_t0_for_standard_normal_target():
    # p_0 = N(0, I) = p_t for all t: the reverse dynamics from N(0, I) are exact
    for method in METHODS:
        mean, cov = sampler_limit_gaussian(np.zeros(2), np.eye(2), OU(), 2.0, 0.1, method)
        np.testing.assert_allclose(mean, 0.0, atol=1e-15)
        np.testing.assert_allclose(cov, np.eye(2), rtol=1e-14, atol=1e-15)


# -- KL ----------------------------------------------------------------------------------------


def kl_textbook(m0, S0, m1, S1):
    P1 = np.linalg.inv(S1)
    dm = m1 - m0
    return 0.5 * (np.trace(P1 @ S0) - m0.size + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1] + dm @ P1 @ dm)


def test_kl_against_textbook_formula_and_monte_carlo():
    m0, S0 = random_gaussian(4, seed=8)
    m1, S1 = random_gaussian(4, seed=9, eigenvalues=[0.3, 0.9, 1.5, 2.5])
    kl = gaussian_kl(m0, S0, m1, S1)
    np.testing.assert_allclose(kl, kl_textbook(m0, S0, m1, S1), rtol=1e-12)
    rng = np.random.default_rng(10)
    x = stats.multivariate_normal(m0, S0).rvs(20_000, random_state=rng)
    f = stats.multivariate_normal(m0, S0).logpdf(x) - stats.multivariate_normal(m1, S1).logpdf(x)
    assert abs(f.mean() - kl) < MC_TOLERANCE * f.std(ddof=1) / np.sqrt(f.size)


def test_kl_one_dimensional_formula():
    for m0, v0, m1, v1 in [(0.0, 1.0, 1.0, 2.0), (3.0, 0.01, -1.0, 5.0), (0.5, 4.0, 0.5, 4.0)]:
        ref = np.log(np.sqrt(v1 / v0)) + (v0 + (m0 - m1) ** 2) / (2 * v1) - 0.5
        np.testing.assert_allclose(gaussian_kl([m0], [[v0]], [m1], [[v1]]), ref, rtol=1e-13, atol=1e-16)


def test_kl_is_accurate_for_nearby_gaussians():
    # KL(N(0, S), N(0, (1 + e) S)) = d/2 (1/(1 + e) - 1 + log(1 + e)) ~ d e^2 / 4
    m, S = random_gaussian(3, seed=11)
    e = 1e-6
    ref = 1.5 * (np.log1p(e) - e / (1 + e))
    assert gaussian_kl(m, S, m, (1 + e) * S) == pytest.approx(ref, rel=1e-8, abs=0)  # ref ~ 7.5e-13
    assert gaussian_kl(m, S, m, S) == 0.0


def kl_mpmath(m0, S0, m1, S1):
    """KL(N0 || N1) at 60 digits from the float64 inputs as given (textbook formula, explicit inverse)."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(60):
        S0, S1 = mp.matrix(S0.tolist()), mp.matrix(S1.tolist())
        dm = mp.matrix((np.asarray(m1) - np.asarray(m0)).tolist())  # exact in float64 here
        P1 = mp.inverse(S1)
        tr = mp.fsum((P1 * S0)[i, i] for i in range(S0.rows))
        kl = 0.5 * (tr - S0.rows + mp.log(mp.det(S1) / mp.det(S0)) + (dm.T * P1 * dm)[0])
        return float(kl)


@pytest.mark.parametrize("d", [1, 3])
@pytest.mark.parametrize("e", [1e-4, 1e-7, 1e-10, 1e-13])
def test_kl_keeps_its_digits_for_nearly_equal_covariances(d, e):
    """KL(N(m, S) || N(m, S + e I)) ~ d e^2 / 4 to ~eps relative against mpmath on the very float64
    inputs: e^{l} - 1 - l from the Cholesky diagonals lost digits like 1 / e (d = 3: 2e-9 relative at
    e = 1e-7, 5e-6 at 1e-10, 2e-3 at 1e-13)."""
    m, S = random_gaussian(d, seed=21)
    S1 = S + e * np.eye(d)
    m1 = m + 1e-9 * (np.arange(d) == 0)  # a mean term too, of the same order as the covariance part at e = 1e-10
    for args in [(m, S, m, S1), (m, S1, m, S), (m, S, m1, S1)]:
        assert gaussian_kl(*args) == pytest.approx(kl_mpmath(*args), rel=1e-14, abs=0)


@PROPERTY
@given(st.integers(0, 2**31), st.integers(1, 4))
def test_kl_and_tv_invariant_under_a_common_affine_map(seed, d):
    rng = np.random.default_rng(seed)
    m0, S0 = random_gaussian(d, seed, np.exp(rng.uniform(-1, 1, d)))
    m1, S1 = random_gaussian(d, seed + 1, np.exp(rng.uniform(-1, 1, d)))
    A = rng.standard_normal((d, d)) + 3 * np.eye(d)
    b = rng.standard_normal(d)
    kl = gaussian_kl(m0, S0, m1, S1)
    assert kl >= 0
    mapped = gaussian_kl(A @ m0 + b, A @ S0 @ A.T, A @ m1 + b, A @ S1 @ A.T)
    np.testing.assert_allclose(mapped, kl, rtol=1e-8, atol=1e-12)
    if d == 1:
        tv = gaussian_tv(m0, S0, m1, S1)[0]
        np.testing.assert_allclose(gaussian_tv(A @ m0 + b, A @ S0 @ A.T, A @ m1 + b, A @ S1 @ A.T)[0],
                                   tv, rtol=1e-9, atol=1e-14)
        assert 0 <= tv <= 1 and tv <= np.sqrt(kl / 2) + 1e-15  # Pinsker


# -- TV ----------------------------------------------------------------------------------------


def tv_quad(m0, v0, m1, v1):
    p0, p1 = stats.norm(m0, np.sqrt(v0)), stats.norm(m1, np.sqrt(v1))
    lo = min(m0 - 40 * np.sqrt(v0), m1 - 40 * np.sqrt(v1))
    hi = max(m0 + 40 * np.sqrt(v0), m1 + 40 * np.sqrt(v1))
    # 1 - int min(p0, p1): the integrand is smooth except at the crossings
    val, _ = integrate.quad(lambda x: min(p0.pdf(x), p1.pdf(x)), lo, hi, limit=500, epsabs=1e-13, epsrel=1e-12)
    return 1.0 - val


@pytest.mark.parametrize("m0,v0,m1,v1", [
    (0.0, 1.0, 1.0, 1.0),       # equal variances: one crossing
    (0.0, 1.0, 0.0, 4.0),       # equal means: two symmetric crossings
    (0.3, 0.5, -1.2, 2.0),
    (2.0, 3.0, 1.0, 0.1),
    (0.0, 1.0, 0.1, 1.0 + 1e-9),  # nearly equal variances: one crossing runs off to infinity
    (0.0, 1.0, 9.0, 2.0),       # nearly disjoint
])
def test_tv_1d_exact_against_quadrature(m0, v0, m1, v1):
    tv, se = gaussian_tv([m0], [[v0]], [m1], [[v1]])
    assert se == 0.0
    np.testing.assert_allclose(tv, tv_quad(m0, v0, m1, v1), rtol=0, atol=1e-9)
    assert gaussian_tv([m1], [[v1]], [m0], [[v0]])[0] == pytest.approx(tv, rel=1e-12, abs=1e-15)


def tv_mpmath(m0, v0, m1, v1):
    """TV of two 1-D normals at 50 digits: crossing points and CDFs in mpmath, where cancellation is harmless."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(50):
        m0, v0, m1, v1 = map(mp.mpf, (m0, v0, m1, v1))
        delta, rho = (m1 - m0) / mp.sqrt(v0), v1 / v0
        if rho == 1:
            roots = [delta / 2]
        else:
            a, b, c = 1 - rho, -2 * delta, delta**2 + rho * mp.log(rho)
            disc = mp.sqrt(b * b - 4 * a * c)
            roots = sorted([(-b - disc) / (2 * a), (-b + disc) / (2 * a)])
        edges = [-mp.inf] + roots + [mp.inf]
        mass = [(mp.ncdf(hi) - mp.ncdf(lo)) - (mp.ncdf((hi - delta) / mp.sqrt(rho)) - mp.ncdf((lo - delta) / mp.sqrt(rho)))
                for lo, hi in zip(edges[:-1], edges[1:])]
        return float(sum(abs(m) for m in mass) / 2)


@pytest.mark.parametrize("m0,v0,m1,v1", [
    (0.0, 1.0, 1e-12, 1.0),            # equal variances, TV ~ 4e-13
    (0.0, 1.0, 0.0, 1.0 + 1e-12),      # equal means, variances 1e-12 apart
    (0.0, 1.0, 1e-8, 1.0 + 1e-10),
    (5.0, 2.0, 5.0 + 1e-7, 2.0 * (1 - 1e-6)),
    (0.0, 1.0, 1e-3, 1.001),
    (0.3, 0.5, -1.2, 2.0),
    (0.0, 1.0, 9.0, 2.0),
])
def test_tv_1d_keeps_its_digits_for_nearly_equal_laws(m0, v0, m1, v1):
    # a difference of two CDFs near the same value would leave ~4 digits of a TV of 1e-13
    exact = tv_mpmath(m0, v0, m1, v1)
    assert gaussian_tv([m0], [[v0]], [m1], [[v1]])[0] == pytest.approx(exact, rel=1e-14, abs=0)
    assert gaussian_tv([m1], [[v1]], [m0], [[v0]])[0] == pytest.approx(exact, rel=1e-14, abs=0)


@pytest.mark.parametrize("m0,v0,m1,v1", [
    (0.0, 1.0, 0.0, 1e-17),     # v1 / v0 < 1.1e-16: rho - 1 rounded to -1, log rho to -inf (TV was 0)
    (0.0, 1e18, 0.0, 1.0),      # the same, the wide law first
    (0.0, 1.0, 0.0, 1e-16),     # rho recovered from rho - 1 kept ~5 digits of 1 - TV
    (0.0, 1.0, 30.0, 1e-38),    # crossings 3e-18 apart around 30: one float in the wide law's units (TV was 0)
    (0.0, 1.0, 0.5, 1e30),
])
def test_tv_1d_of_laws_with_very_different_scales_against_mpmath(m0, v0, m1, v1):
    exact = tv_mpmath(m0, v0, m1, v1)
    assert gaussian_tv([m0], [[v0]], [m1], [[v1]])[0] == pytest.approx(exact, rel=1e-14, abs=0)
    assert gaussian_tv([m1], [[v1]], [m0], [[v0]])[0] == pytest.approx(exact, rel=1e-14, abs=0)


@pytest.mark.parametrize("m0,v0,m1,v1", [
    (0.0, 1.0, 1e200, 2.0),      # delta^2 overflowed: TV was 0
    (0.0, 1.0, 1e150, 1e40),     # rho delta^2 overflowed: TV was 0.5
    (0.0, 1.0, 0.0, 1e200),      # rho (rho - 1) log rho overflowed: TV was 0
    (0.0, 1e-160, 0.0, 1e160),   # rho itself overflowed: refused, "rescale toward order 1" (no rescaling helps)
    (0.0, 1.0, 1.0, 1e-60),
])
def test_tv_1d_of_laws_that_far_apart_is_one(m0, v0, m1, v1):
    # sd ratio <= 1e-20 or means >= 1e100 sd apart: 1 - TV < 1e-19 (_tv_1d's docstring), 1 in float64
    assert gaussian_tv([m0], [[v0]], [m1], [[v1]]) == (1.0, 0.0)
    assert gaussian_tv([m1], [[v1]], [m0], [[v0]]) == (1.0, 0.0)


def test_tv_1d_equal_variance_closed_form_and_identity():
    tv, _ = gaussian_tv([0.0], [[4.0]], [1.0], [[4.0]])
    np.testing.assert_allclose(tv, 2 * stats.norm.cdf(1.0 / 4.0) - 1.0, rtol=1e-14)
    assert gaussian_tv([1.5], [[2.0]], [1.5], [[2.0]]) == (0.0, 0.0)


def _rotated_product(seed, a0, v0, a1, v1, d=3):
    """N0, N1 that differ in one coordinate only, seen in a random orthonormal basis."""
    Q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((d, d)))
    m0, m1 = Q[:, 0] * a0, Q[:, 0] * a1
    S0 = Q @ np.diag([v0] + [1.0] * (d - 1)) @ Q.T
    S1 = Q @ np.diag([v1] + [1.0] * (d - 1)) @ Q.T
    return m0, S0, m1, S1


@pytest.mark.parametrize("a0,v0,a1,v1", [(0.0, 1.0, 0.7, 2.5), (0.3, 3.0, -0.4, 0.8), (0.0, 1.0, 0.0, 1.3)])
def test_tv_monte_carlo_matches_1d_exact_for_a_product(a0, v0, a1, v1):
    m0, S0, m1, S1 = _rotated_product(12, a0, v0, a1, v1)
    exact, _ = gaussian_tv([a0], [[v0]], [a1], [[v1]])
    tv, se = gaussian_tv(m0, S0, m1, S1, rng=np.random.default_rng(13), n=100_000)
    assert 0 < se < 0.01
    assert abs(tv - exact) < MC_TOLERANCE * se, (tv, exact, se)
    # same seed, same bits
    assert gaussian_tv(m0, S0, m1, S1, rng=np.random.default_rng(13), n=100_000) == (tv, se)


def test_tv_monte_carlo_standard_error_describes_the_spread():
    m0, S0, m1, S1 = _rotated_product(15, 0.0, 1.0, 0.7, 2.5)
    runs = np.array([gaussian_tv(m0, S0, m1, S1, rng=np.random.default_rng(seed), n=2000) for seed in range(60)])
    values, ses = runs.T
    # the spread over 60 seeds estimates the standard error to about +-9%
    assert 0.7 * np.sqrt(np.mean(ses**2)) < values.std(ddof=1) < 1.4 * np.sqrt(np.mean(ses**2))


def test_tv_equal_covariances_exact_in_any_dimension():
    m0, S0, m1, _ = _rotated_product(14, 0.0, 1.7, 1.1, 1.7)
    tv, se = gaussian_tv(m0, S0, m1, S0)
    assert se == 0.0
    np.testing.assert_allclose(tv, gaussian_tv([0.0], [[1.7]], [1.1], [[1.7]])[0], rtol=1e-13)


# -- bad input --------------------------------------------------------------------------------


GOOD_M, GOOD_S = np.zeros(2), np.eye(2)


@pytest.mark.parametrize("mean,cov,match", [
    (np.zeros(2), np.array([[1.0, 2.0], [2.0, 1.0]]), "cov is not positive definite"),
    (np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), "cov is not symmetric"),
    (np.zeros(2), np.eye(3), r"cov must have shape \(d, d\)"),
    (np.zeros((2, 1)), np.eye(2), r"mean must have shape \(d,\)"),
    (np.array([0.0, np.nan]), np.eye(2), "mean contains non-finite"),
    (np.zeros(2), np.array([[1.0, 0.0], [0.0, np.inf]]), "cov contains non-finite"),
    (np.array(["a", "b"]), np.eye(2), "mean must be an array of real numbers"),
])
def test_sampler_output_rejects_bad_gaussian(mean, cov, match):
    with pytest.raises(ValueError, match=match):
        sampler_output_gaussian(mean, cov, OU(), time_grid(1.0, 0.1, 3))


@pytest.mark.parametrize("process,grid,method,match", [
    (OU(), [1.0, 0.5, 0.5], "euler_maruyama", "grid must be strictly decreasing"),
    (OU(), [1.0, 0.5, 0.0], "euler_maruyama", "grid must end at t0 > 0"),
    (VP(), [2.0, 0.5], "euler_maruyama", "grid must start at T <= 1"),
    (OU(), [1.0], "euler_maruyama", "grid must be a 1-D array"),
    (OU(), [1.0, np.nan], "euler_maruyama", "grid contains non-finite"),
    (OU(), [1.0, 0.5], "heun", "method must be one of"),
    ("OU", [1.0, 0.5], "euler_maruyama", "process must be"),
])
def test_sampler_output_rejects_bad_grid_method_process(process, grid, method, match):
    with pytest.raises(ValueError, match=match):
        sampler_output_gaussian(GOOD_M, GOOD_S, process, grid, method)


@pytest.mark.parametrize("T,t0,method,match", [
    (1.0, 1.0, "exponential", "need 0 < t0 < T"),
    (1.0, 0.0, "exponential", "need 0 < t0 < T"),
    (np.inf, 0.1, "exponential", "T must be finite"),
    (1.0, 0.1, "EM", "method must be one of"),
])
def test_sampler_limit_rejects_bad_input(T, t0, method, match):
    with pytest.raises(ValueError, match=match):
        sampler_limit_gaussian(GOOD_M, GOOD_S, OU(), T, t0, method)


def test_sampler_limit_of_the_residual_exponential_integrator():
    # a variance-preserving process: the reverse SDE's limit, as Euler-Maruyama's (that
    # sampler's law on a fine grid converges to it); any other process has no such sampler,
    # and sampler_output_gaussian refuses it: the limit did not (it returned a law)
    from sgm_ref.processes import VE
    m, S = random_gaussian(2, seed=12)
    for a, b in zip(sampler_limit_gaussian(m, S, OU(), 3.0, 1e-2, "residual_exponential"),
                    sampler_limit_gaussian(m, S, OU(), 3.0, 1e-2, "euler_maruyama")):
        np.testing.assert_array_equal(a, b)
    grid = time_grid(3.0, 1e-2, 2000, process=OU())
    out = sampler_output_gaussian(m, S, OU(), grid, "residual_exponential")
    lim = sampler_limit_gaussian(m, S, OU(), 3.0, 1e-2, "residual_exponential")
    assert gaussian_kl(*out, *lim) < 5e-6  # 2.4e-6 (3.8e-5 at 500 steps: KL ~ 1 / N^2)
    with pytest.raises(ValueError, match="'residual_exponential' needs a variance-preserving process"):
        sampler_output_gaussian(m, S, VE(), time_grid(1.0, 1e-2, 5, process=VE()), "residual_exponential")
    with pytest.raises(ValueError, match="'residual_exponential' needs a variance-preserving process"):
        sampler_limit_gaussian(m, S, VE(), 1.0, 1e-2, "residual_exponential")


@pytest.mark.parametrize("fn", [gaussian_kl, gaussian_tv])
@pytest.mark.parametrize("args,match", [
    ((np.zeros(3), np.eye(3)), r"mean1 must have shape \(2,\)"),
    ((np.zeros(2), -np.eye(2)), "cov1 is not positive definite"),
    ((np.zeros(2), np.diag([1.0, 0.0])), "cov1 is not positive definite"),
    ((np.array([np.inf, 0.0]), np.eye(2)), "mean1 contains non-finite"),
])
def test_kl_tv_reject_bad_second_gaussian(fn, args, match):
    with pytest.raises(ValueError, match=match):
        fn(GOOD_M, GOOD_S, *args)


@pytest.mark.parametrize("fn", [gaussian_kl, gaussian_tv])
def test_kl_tv_reject_bad_first_gaussian(fn):
    with pytest.raises(ValueError, match="cov0 is not positive definite"):
        fn(GOOD_M, np.zeros((2, 2)), GOOD_M, GOOD_S)
    with pytest.raises(ValueError, match=r"cov0 must have shape \(d, d\)"):
        fn(GOOD_M, np.eye(3), GOOD_M, GOOD_S)


def test_tv_monte_carlo_needs_rng_and_n():
    S1 = np.diag([1.0, 2.0])
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        gaussian_tv(GOOD_M, GOOD_S, GOOD_M, S1)
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        gaussian_tv(GOOD_M, GOOD_S, GOOD_M, S1, rng=0)
    with pytest.raises(ValueError, match="n must be an integer >= 2"):
        gaussian_tv(GOOD_M, GOOD_S, GOOD_M, S1, rng=np.random.default_rng(0), n=1)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
def test_limit_where_sigma_T_squared_leaves_float64(method):
    # EDM at T = 1e200 and VE(0.01, 1e200) at T = 1: sigma_T^2 overflows, sigma_T does not. The limit
    # law came out right beside an overflow warning (sigma_T^2 = inf entered only as v_t0 / v_T = 0),
    # then, once process.sigma2 raised for it, as "t = 1e+200: sigma_t^2 overflows float64 ...; use a
    # smaller t". With v_t0 / v_T ~ 1e-400 the limit is p_t0 = N(alpha_t0 m, alpha_t0^2 S + sigma_t0^2 I)
    import warnings

    from sgm_ref import EDM, VE

    m, S = np.array([0.5, -0.2]), np.array([[1.0, 0.3], [0.3, 0.5]])
    for process, T in ((EDM(t_max=1e300), 1e200), (VE(0.01, 1e200), 1.0)):
        t0 = 1e-3
        s20 = 0.01**2 * (1e202) ** (2 * t0) if isinstance(process, VE) else t0**2  # sigma_t0^2, alpha_t0 = 1
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            mu, C = sampler_limit_gaussian(m, S, process, T, t0, method)
        np.testing.assert_allclose(mu, m, rtol=4.5e-16, atol=0)  # 2 ulps: the eigenbasis round trip
        # the eigenbasis round trip: a few ulps of the largest eigenvalue (1.2), not of each entry
        np.testing.assert_allclose(C, S + s20 * np.eye(2), rtol=0, atol=4 * np.finfo(float).eps * 1.2)


def test_gaussian_kl_of_covariances_whose_double_overflows():
    """Covariance entries beyond 8.99e307 (C + C^T overflows): eigh_spd accepted them, and
    _check_gaussian's own (C + C^T) / 2 then gave inf, so gaussian_kl stopped with scipy's
    "array must not contain infs or NaNs". KL(N(0, C) || N(0, C')) of diagonal C, C' is
    sum_i (r_i - 1 - log r_i) / 2 with r_i = C_ii / C'_ii (mpmath, 40 digits)."""
    import mpmath
    C, C2 = np.diag([1.7e308, 1e308]), np.diag([1.6e308, 1e308])
    with mpmath.workdps(40):
        r = mpmath.mpf(1.7e308) / mpmath.mpf(1.6e308)
        exact = float((r - 1 - mpmath.log(r)) / 2)
    assert gaussian_kl(np.zeros(2), C, np.zeros(2), C2) == pytest.approx(exact, rel=1e-14, abs=0)
    assert gaussian_kl(np.zeros(2), C, np.zeros(2), C) == 0.0


def _limit_in_mpmath(m, lam, process, T, t0, method, digits=50, B=None, coefficients=None):
    """sampler_limit_gaussian's docstring forms in mpmath, from the process's float64 coefficients
    (integrated_beta on a variance-preserving process, or B(t) in mpmath where given; alpha and
    sigma^2 otherwise, or coefficients(t) -> (alpha, sigma^2) in mpmath where given). The forms
    cancel where lam is huge: enough digits for it."""
    import mpmath

    from sgm_ref.processes import VariancePreserving

    with mpmath.workdps(digits):
        if coefficients is not None:
            (a0, s0), (aT, sT) = coefficients(mpmath.mpf(t0)), coefficients(mpmath.mpf(T))
            start = sT
        elif isinstance(process, VariancePreserving):
            B0, BT = ((B(mpmath.mpf(t0)), B(mpmath.mpf(T))) if B is not None else
                      (mpmath.mpf(float(b)) for b in process.integrated_beta(np.array([t0, T]))))
            a0, aT, s0, sT = mpmath.exp(-B0 / 2), mpmath.exp(-BT / 2), -mpmath.expm1(-B0), -mpmath.expm1(-BT)
            start = 1  # started from N(0, I)
        else:
            a0, aT = (mpmath.mpf(float(a)) for a in process.alpha(np.array([t0, T])))
            s0, sT = (mpmath.mpf(float(s)) for s in process.sigma2(np.array([t0, T])))
            start = sT  # from N(0, sigma_T^2 I)
        lam, m = mpmath.mpf(lam), mpmath.mpf(m)
        v0, vT = a0**2 * lam + s0, aT**2 * lam + sT
        if method == "probability_flow":
            return float(a0 * m - aT * m * mpmath.sqrt(v0 / vT)), float(v0 * start / vT)
        ratio = (aT / a0) * (v0 / vT)
        return float(a0 * m - aT * m * ratio), float(v0 - (vT - start) * ratio**2)


@pytest.mark.parametrize("method", ["euler_maruyama", "probability_flow"])
def test_the_limit_law_of_a_wide_target_matches_mpmath(method):
    """Where lam is large the docstring's forms subtract nearly equal terms: OU with lam = 1e10,
    T = 0.1, t0 = 0.01 gave q 8e-7 off, and at lam = 1e14 the ODE's mean 0.1 relative (found by
    mutation testing). Multiplied out, every process is within a few ulps of 50-digit mpmath, for
    narrow and wide targets."""
    from sgm_ref.processes import EDM, VE, FlowMatching, SubVP, VPCosine

    cases = [(OU(), 0.1, 1e-2), (OU(), 3.0, 1e-2), (VP(), 0.5, 1e-3), (VPCosine(), 0.9, 1e-3), (VE(), 0.5, 1e-2),
             (EDM(), 2.0, 1e-2), (FlowMatching(), 0.9, 1e-2), (SubVP(), 0.5, 1e-3)]
    for process, T, t0 in cases:
        for lam in (1e-8, 0.3, 1.0, 2.0, 1e6, 1e10, 1e14):
            mean, cov = sampler_limit_gaussian([1.5], [[lam]], process, T, t0, method)
            mu, q = _limit_in_mpmath(1.5, lam, process, T, t0, method)
            assert abs(mean[0] - mu) <= 1e-15 * abs(mu) and abs(cov[0, 0] - q) <= 1e-15 * q, (process, lam)
    # sigma_T^2 / v_T underflowing (a review): q was 0 where it is 2e-200 (1e-200 by the ODE)
    mean, cov = sampler_limit_gaussian([1.5], [[1e300]], FlowMatching(), 1e-100, 1e-200, method)
    mu, q = _limit_in_mpmath(1.5, 1e300, FlowMatching(), 1e-100, 1e-200, method, digits=700)
    assert abs(mean[0] - mu) <= 1e-15 * abs(mu) and abs(cov[0, 0] - q) <= 1e-15 * q
    # T one ulp past t0 on VP: B(T) - B(t0) of two rounded integrals put mu 20% off; the integral
    # between them keeps it (B(t) = beta_min t + (beta_max - beta_min) t^2 / 2 in mpmath, exact in t)
    vp, t0 = VP(), 0.5
    T = float(np.nextafter(t0, 1.0))
    mean, cov = sampler_limit_gaussian([1.5], [[2.0]], vp, T, t0, method)
    mu, q = _limit_in_mpmath(1.5, 2.0, vp, T, t0, method,
                             B=lambda t: vp.beta_min * t + (vp.beta_max - vp.beta_min) * t**2 / 2)
    assert abs(mean[0] - mu) <= 1e-15 * abs(mu) and abs(cov[0, 0] - q) <= 1e-15 * q


@pytest.mark.parametrize("method", ["euler_maruyama", "probability_flow"])
def test_the_limit_law_with_T_next_to_t0_matches_mpmath(method):
    """On the processes that are not variance-preserving, T within a relative 1e-12 of t0:
    sigma_T^2 - (alpha_T / alpha_t0)^2 sigma_t0^2 cancelled (SubVP: 2e-5 in mu at T = t0 (1 + 1e-12);
    an ulp past t0, mu was 30% off on SubVP, 17% on FlowMatching, 11% on VE, 4e-11 on EDM). Taken as the forward transition's variance, every process is within 2e-15 of
    60-digit mpmath from its exact coefficients (the float64 ones would carry the cancellation into
    the reference; VE's own sigma_t0^2 is 1.6e-15 from exact), for narrow and wide targets, and an
    ulp past t0."""
    import mpmath

    from sgm_ref.processes import EDM, VE, FlowMatching, SubVP

    sub, ve = SubVP(), VE()

    def sub_coefficients(t):
        B = sub.beta_min * t + (sub.beta_max - sub.beta_min) * t**2 / 2
        return mpmath.exp(-B / 2), mpmath.expm1(-B) ** 2

    cases = [(sub, sub_coefficients, 0.5), (sub, sub_coefficients, 1e-3),
             (ve, lambda t: (1, (ve.sigma_min * (mpmath.mpf(ve.sigma_max) / ve.sigma_min) ** t) ** 2), 0.3),
             (EDM(), lambda t: (1, t**2), 2.0), (FlowMatching(), lambda t: (1 - t, t**2), 0.6)]
    for process, coefficients, t0 in cases:
        for T in (t0 * (1 + 1e-12), t0 * (1 + 1e-6), float(np.nextafter(t0, np.inf))):
            for lam in (1e-8, 0.3, 2.0, 1e10):
                mean, cov = sampler_limit_gaussian([1.5], [[lam]], process, T, t0, method)
                mu, q = _limit_in_mpmath(1.5, lam, process, T, t0, method, digits=60, coefficients=coefficients)
                assert abs(mean[0] - mu) <= 2e-15 * abs(mu) and abs(cov[0, 0] - q) <= 2e-15 * q, \
                    (process, t0, T, lam, mean[0] / mu - 1, cov[0, 0] / q - 1)


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential"])  # the ODE's is 6.9e307: no overflow
def test_an_output_law_with_a_variance_past_half_of_float64_s_largest_is_returned(method):
    """The covariance was symmetrised as (cov + cov^T) / 2, whose sum overflows past 8.99e307: a
    finite law (EDM, lam = 1e308 from T = 1.5e154: variance 9.05e307) was refused as "the sampler's
    output law overflows float64" (a mutation review). Against the docstring's forms in 50-digit
    mpmath from EDM's exact coefficients."""
    from sgm_ref.processes import EDM

    mean, cov = sampler_limit_gaussian([1.5], [[1e308]], EDM(), 1.5e154, 1.0, method)
    mu, q = _limit_in_mpmath(1.5, 1e308, EDM(), 1.5e154, 1.0, method, coefficients=lambda t: (1, t**2))
    assert abs(mean[0] - mu) <= 1e-15 * abs(mu) and abs(cov[0, 0] - q) <= 1e-15 * q and q > 8.99e307
