"""Tests that kill mutants of sgm_ref.metrics which the module tests let survive.

Each test names the mutant it was written against (mutation testing of bound, gaussian,
distances, histogram, score_error: see the docstring of each test). Every reference is
independent of the code under test: mpmath, scipy, a closed form or a documented identity.
"""

import math

import mpmath
import numpy as np
import pytest

from sgm_ref import OU, GaussianMixture
from sgm_ref.metrics.bound import tv_upper_bound


def test_bound_terms_obey_their_documented_relations_to_the_last_digit():
    """tv = TV(p_0, p_t0) + sqrt(kl / 2), kl = max(kl_prior, 0) + kl_path, kl_upper = kl + 3 kl_se and
    tv_upper = tv_es + 3 se + sqrt(kl_upper / 2), as TVBound documents them, to a few eps (the module
    tests compared tv with loose Monte-Carlo tolerances: sqrt(kl / 2) off by 1e-12 relative survived)."""
    g = GaussianMixture([1.0], [[1.3]], [[0.4]])
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.05, 2.0, "uniform", "euler_maruyama", 64,
                       np.random.default_rng(3), n_steps=3, n_aux=256)
    assert 0 < b.tv < 1 and b.kl_prior > 0
    assert b.kl == pytest.approx(b.kl_prior + b.kl_path, rel=2e-16, abs=0)
    assert b.tv == pytest.approx(b.tv_early_stopping + math.sqrt(b.kl / 2), rel=2e-16, abs=0)
    assert b.kl_upper == pytest.approx(b.kl + 3 * b.kl_se, rel=2e-16, abs=0)
    assert b.tv_upper == pytest.approx(b.tv_early_stopping + 3 * b.tv_early_stopping_se
                                       + math.sqrt(b.kl_upper / 2), rel=2e-16, abs=0)
    assert b.kl_se == pytest.approx(math.hypot(b.kl_prior_se, b.kl_path_se), rel=2e-16, abs=0)
    assert b.kl_path == pytest.approx(math.fsum(b.kl_path_per_step), rel=4e-16, abs=0)


def test_bound_kl_drops_a_negative_prior_estimate():
    """kl = max(kl_prior, 0) + kl_path: KL(p_T || N(0, I)) >= 0, so a Monte-Carlo average below 0
    (a target near N(0, I) at T = 3, whose true prior term is ~6e-8) contributes 0, not itself
    (kl = kl_prior + kl_path survived the module tests)."""
    g = GaussianMixture([1.0], [[0.0]], [[1.2]])
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.05, 3.0, "uniform", "euler_maruyama", 64,
                       np.random.default_rng(0), n_steps=2, n_aux=64)
    assert b.kl_prior < -1e-6
    assert b.kl == b.kl_path


@pytest.mark.parametrize("time_distribution", ["log-uniform", "uniform"])
def test_score_error_integral_of_a_known_error_profile_is_exact(time_distribution):
    """A score off by c / sqrt(t) (log-uniform times) or by c (uniform times) in every coordinate makes
    every Monte-Carlo term the same number, so the estimate is the integral itself:
    int_{t0}^{T} 1/2 beta d c^2 / t dt = d c^2 log(T / t0), resp. d c^2 (T - t0) on OU (beta = 2), with
    standard error 0. Kills a weight 1 / q(t) = t log(T / t0) off by 1e-12 relative (the module tests
    compare with Monte-Carlo tolerances only)."""
    from sgm_ref.metrics.score_error import score_error_integral

    g = GaussianMixture([0.4, 0.6], [[-1.0, 0.5], [1.0, 0.0]], [np.eye(2) * 0.3, np.eye(2) * 0.7])
    c, t0, T = 0.7, 1e-3, 2.5
    if time_distribution == "log-uniform":
        def score(x, t):
            return g.score(x, t) + c / np.sqrt(t)[:, None]
        exact = 2 * c * c * math.log(T / t0)
    else:
        def score(x, t):
            return g.score(x, t) + c
        exact = 2 * c * c * (T - t0)
    value, se = score_error_integral(score, g, OU(), t0, T, 200, np.random.default_rng(5),
                                     time_distribution=time_distribution)
    assert value == pytest.approx(exact, rel=1e-14, abs=0)
    assert se <= 1e-14 * exact


def _kl_1d_ref(v0, v1, dm):
    r = mpmath.mpf(v0) / mpmath.mpf(v1)
    return (r - 1 - mpmath.log(r) + mpmath.mpf(dm) ** 2 / mpmath.mpf(v1)) / 2


@pytest.mark.parametrize("v0, v1, dm", [(1.49, 1.0, 0.0), (0.51, 1.0, 0.0), (1.06, 1.0, 0.0), (0.93, 1.0, 0.0),
                                        (1.3, 1.0, 0.0), (1.001, 1.0, 0.0), (1.0, 1.0000001, 0.0),
                                        (0.7, 1.0, 0.3), (2.5, 1.0, 0.1), (0.2, 1.0, 0.0), (1.0, 3.0, -2.0)])
def test_gaussian_kl_in_1d_matches_mpmath_to_a_few_eps(v0, v1, dm):
    """KL(N(0, v0) || N(dm, v1)) = (r - 1 - log r + dm^2 / v1) / 2, r = v0 / v1, at 40 digits: the
    series branch (|r - 1| <= 1/2, its 24 atanh terms) and the Cholesky branch each to 4 eps relative
    (a series cut to 6 terms, or the branch limit moved from 1/2 to 0.05, survived the module tests)."""
    from sgm_ref.metrics.gaussian import gaussian_kl

    with mpmath.workdps(40):
        ref = _kl_1d_ref(v0, v1, dm)
        kl = gaussian_kl([0.0], [[v0]], [dm], [[v1]])
        assert abs(mpmath.mpf(kl) - ref) <= 4 * 2.0**-52 * ref, (kl, float(ref), float((kl - ref) / ref))


def _tv_1d_ref(m0, v0, m1, v1):
    """TV(N(m0, v0), N(m1, v1)) from the crossing points of the densities, all in mpmath."""
    m0, v0, m1, v1 = map(mpmath.mpf, (m0, v0, m1, v1))
    s0, s1 = mpmath.sqrt(v0), mpmath.sqrt(v1)
    a = (1 / v1 - 1 / v0) / 2  # log p0 - log p1 = a x^2 + b x + c
    b = m0 / v0 - m1 / v1
    c = m1**2 / (2 * v1) - m0**2 / (2 * v0) - mpmath.log(s0 / s1)
    if a == 0:
        roots = [-c / b]
    else:
        r = mpmath.sqrt(b * b - 4 * a * c)
        roots = sorted([(-b - r) / (2 * a), (-b + r) / (2 * a)])
    cuts = [-mpmath.inf] + roots + [mpmath.inf]
    return sum(abs(mpmath.ncdf(hi, m0, s0) - mpmath.ncdf(lo, m0, s0) - mpmath.ncdf(hi, m1, s1)
                   + mpmath.ncdf(lo, m1, s1)) for lo, hi in zip(cuts[:-1], cuts[1:])) / 2


@pytest.mark.parametrize("m0, v0, m1, v1", [
    (0.0, 1.0, 0.3, 1.2), (0.0, 1.0, 0.0, 1.000001), (0.0, 1.0, 3.0, 1.000001), (0.0, 1.0, 0.5, 1.0001),
    (0.0, 1.0, 1e-7, 1.0), (0.0, 1.0, 3.0, 0.05), (0.0, 1.0, 8.0, 1.5), (0.0, 1.0, 0.0, 1e-6),
    (0.0, 1.0, 0.0, 4.0), (1.0, 2.0, -1.0, 2.0001), (0.0, 1.0, 0.2, 1 - 1e-9), (0.0, 1.0, 0.0, 1e8),
    (0.0, 1.0, 0.0, 1e30), (0.0, 1.0, 1e-3, 1e24), (0.0, 1.0, 0.3, 1 + 1e-12), (0.0, 1.0, 1e-8, 0.9)])
def test_gaussian_tv_in_1d_matches_mpmath_to_a_few_eps(m0, v0, m1, v1):
    """Exact 1-D TV against the crossing points and normal CDFs at 40 digits: 8 eps relative, and
    within 2 eps of 1 near 1 (variance ratios 1e24 and 1e30 have 1 - TV ~ 1e-12 and 1e-15, not
    0). Kills the crossing point formed with cancellation, the Gauss-Legendre branch of
    _normal_mass narrowed 100-fold, expm1 replaced by sqrt(rho) - 1, and the 'TV = 1' cut at a
    variance ratio of 1e20 instead of 1e40, all of which the module tests let pass."""
    from sgm_ref.metrics.gaussian import gaussian_tv

    with mpmath.workdps(40):
        ref = _tv_1d_ref(m0, v0, m1, v1)
        value, se = gaussian_tv([m0], [[v0]], [m1], [[v1]])
        assert se == 0.0
        err = abs(mpmath.mpf(value) - ref)
        assert err <= 8 * 2.0**-53 * ref, (value, float(ref), float(err / ref))
        assert err <= 2.0**-52  # near 1: 1 - TV to the last place of the value


def test_gaussian_tv_monte_carlo_estimate_and_its_standard_error_are_the_documented_ones():
    """d > 1, cov0 != cov1: the mean and std(ddof=1) / sqrt(n) of (1 - p1(x) / p0(x))_+ over
    x = m0 + L0 z, z the rng's standard normals in order, recomputed with scipy's densities. With
    d = 32 the n = 40000 draws span two blocks, so the blocks' pairwise merge is checked too
    (a standard error over n instead of n - 1, or a merge without its cross term, survived)."""
    from scipy.stats import multivariate_normal
    from sgm_ref.metrics.gaussian import gaussian_tv

    d, n = 32, 40_000
    rng = np.random.default_rng(11)
    m0, m1 = rng.normal(0, 0.05, d), rng.normal(0, 0.05, d)
    A = rng.normal(0, 0.03, (d, d))
    C0, C1 = np.eye(d) + A @ A.T, np.diag(rng.uniform(0.9, 1.1, d))
    value, se = gaussian_tv(m0, C0, m1, C1, rng=np.random.default_rng(7), n=n)
    z = np.random.default_rng(7).standard_normal((n, d))
    x = m0 + z @ np.linalg.cholesky(C0).T
    log_r = multivariate_normal(m1, C1).logpdf(x) - multivariate_normal(m0, C0).logpdf(x)
    f = -np.expm1(np.minimum(log_r, 0.0))
    assert value == pytest.approx(f.mean(), rel=1e-11)
    assert se == pytest.approx(f.std(ddof=1) / np.sqrt(n), rel=1e-9)
    assert 0.05 < value < 0.95


def _ou_exponential_output_ref(m, lam, grid):
    """sampler_output_gaussian's recursion for 1-D N(m, lam), OU (B(t) = 2 t), the exponential
    integrator, all in mpmath: a = e^{h}, b = 2 (e^{h} - 1), c^2 = e^{2 h} - 1, v_k = e^{-2 t_k} lam
    + 1 - e^{-2 t_k}, mu <- (a - b / v_k) mu + b e^{-t_k} m / v_k, q <- (a - b / v_k)^2 q + c^2."""
    mu, q = mpmath.mpf(0), mpmath.mpf(1)
    m, lam = mpmath.mpf(m), mpmath.mpf(lam)
    for hi, lo in zip(grid[:-1], grid[1:]):
        hi, h = mpmath.mpf(hi), mpmath.mpf(hi) - mpmath.mpf(lo)
        a, b, c2 = mpmath.exp(h), 2 * mpmath.expm1(h), mpmath.expm1(2 * h)
        v = mpmath.exp(-2 * hi) * lam - mpmath.expm1(-2 * hi)
        A = a - b / v
        mu, q = A * mu + b * mpmath.exp(-hi) * m / v, A * A * q + c2
    return mu, q


def test_sampler_output_gaussian_near_t_0_matches_mpmath():
    """A narrow target (variance 1e-12) sampled down to t0 = 1e-9: v_k = alpha^2 lam + sigma^2 is
    mostly sigma^2 = -expm1(-2 t), whose 1 - exp(-2 t) form is 1e-7 off there (survived the module
    tests). The output law against the recursion at 40 digits."""
    from sgm_ref.metrics.gaussian import sampler_output_gaussian

    grid = np.array([1.0, 1e-2, 1e-4, 1e-6, 1e-8, 1e-9])
    m, lam = 0.5, 1e-12
    mean, cov = sampler_output_gaussian([m], [[lam]], OU(), grid, "exponential")
    with mpmath.workdps(40):
        mu, q = _ou_exponential_output_ref(m, lam, grid)
        assert abs(mpmath.mpf(mean[0]) - mu) <= 1e-13 * abs(mu), (mean[0], float(mu))
        assert abs(mpmath.mpf(cov[0, 0]) - q) <= 1e-13 * q, (cov[0, 0], float(q))


@pytest.mark.parametrize("method", ["euler_maruyama", "probability_flow"])
def test_sampler_limit_gaussian_near_t_0_matches_mpmath(method):
    """sampler_limit_gaussian's closed forms (its docstring) for OU at t0 = 1e-10 and a target of
    variance 1e-12, evaluated at 40 digits: v_t0 = alpha^2 lam - expm1(-2 t0) is mostly the noise
    variance, which 1 - exp(-2 t0) got 5e-7 wrong (survived the module tests)."""
    from sgm_ref.metrics.gaussian import sampler_limit_gaussian

    m, lam, t0, T = 0.5, 1e-12, 1e-10, 1.5
    mean, cov = sampler_limit_gaussian([m], [[lam]], OU(), T, t0, method)
    with mpmath.workdps(40):
        m_, lam_ = mpmath.mpf(m), mpmath.mpf(lam)
        a0, aT = mpmath.exp(-mpmath.mpf(t0)), mpmath.exp(-mpmath.mpf(T))
        v0 = a0**2 * lam_ - mpmath.expm1(-2 * mpmath.mpf(t0))
        vT = aT**2 * lam_ - mpmath.expm1(-2 * mpmath.mpf(T))
        if method == "probability_flow":
            mu, q = a0 * m_ - aT * m_ * mpmath.sqrt(v0 / vT), v0 / vT
        else:
            mu = a0 * m_ - aT * m_ * (aT / a0) * (v0 / vT)
            q = v0 + (1 - vT) * (aT / a0) ** 2 * (v0 / vT) ** 2
        assert abs(mpmath.mpf(mean[0]) - mu) <= 1e-14 * abs(mu), (mean[0], float(mu))
        assert abs(mpmath.mpf(cov[0, 0]) - q) <= 1e-14 * q, (cov[0, 0], float(q))


def test_mmd_of_two_tight_clusters_far_apart_keeps_the_within_cluster_distances():
    """Each sample has a cluster at -1000 and one at +1000, spread 0.01: after centring, the
    within-cluster |a - b|^2 ~ 1e-4 are 1e-10 of |a|^2 + |b|^2, so the expanded form loses ~1e-6
    of them and _sq_dists must take them from differences (its 'closer than 1e-3 of their norms'
    rule; moved to 1e-6 of their norms it survived the module tests). Against the unbiased MMD^2
    from direct pairwise differences (math.fsum)."""
    from sgm_ref.metrics.distances import mmd

    rng = np.random.default_rng(4)
    def sample(n, shift):
        centres = np.where(rng.random(n) < 0.5, -1000.0, 1000.0)[:, None] * np.array([1.0, 0.5])
        return centres + 0.01 * rng.standard_normal((n, 2)) + shift
    x, y = sample(30, 0.0), sample(25, 0.004)
    h = 0.01

    def k(a, b):
        diff = a[:, None, :] - b[None, :, :]
        return np.exp(-np.sum(diff * diff, axis=2) / (2 * h * h))
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    n, m = len(x), len(y)
    ref = (math.fsum((kxx - np.diag(np.diag(kxx))).ravel()) / (n * (n - 1))
           + math.fsum((kyy - np.diag(np.diag(kyy))).ravel()) / (m * (m - 1))
           - 2 * math.fsum(kxy.ravel()) / (n * m))
    out = mmd(x, y, h)
    assert abs(ref) > 1e-3
    assert out.value == pytest.approx(ref, rel=1e-9)


def test_mean_error_of_exactly_zero_returns_the_documented_noise_floor():
    """A sample whose mean is exactly the target's (rows in +- pairs around 0, interleaved): the value is 0 and the
    standard error the floor sqrt(trace(S) / n), S the unbiased sample covariance (np.cov); a floor
    over n^2 instead of n (n - 1) survived the module tests."""
    from sgm_ref.metrics.distances import mean_error

    g = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [np.eye(2), np.eye(2)])
    half = np.random.default_rng(2).standard_normal((3, 2))
    x = np.stack([half, -half], axis=1).reshape(6, 2)  # h0, -h0, h1, -h1, ...: sums exactly 0
    value, se = mean_error(x, g)
    assert value == 0.0
    assert se == pytest.approx(math.sqrt(np.trace(np.cov(x.T)) / len(x)), rel=1e-14)


def test_histogram_tv_counts_the_cell_outside_the_range():
    """TV = 1/2 (sum_b |phat_b - p_b| + |phat_out - p_out|): with a range of +-1 sd a third of N(0, 1)
    lies outside, and a sample shifted by 0.5 puts a different share there. Against scipy's normal CDF
    (dropping the outside cell survived the module tests, whose ranges leave ~1e-9 outside)."""
    from scipy.stats import norm
    from sgm_ref.metrics.histogram import histogram_tv

    g = GaussianMixture([1.0], [[0.0]], [[1.0]])
    x = np.random.default_rng(8).standard_normal((400, 1)) + 0.5
    edges = np.linspace(-1.0, 1.0, 5)
    p = np.diff(norm.cdf(edges))
    ph = np.histogram(x[:, 0], edges)[0] / len(x)
    ref = 0.5 * (np.abs(ph - p).sum() + abs((1 - ph.sum()) - (1 - p.sum())))
    out = histogram_tv(x, g, bins=4, range=(-1.0, 1.0))
    assert abs(ph.sum() - p.sum()) > 0.05
    assert out.value == pytest.approx(ref, rel=1e-12)


def test_histogram_bin_masses_far_from_the_origin_match_scipy():
    """N(1e5, 1) over 20 bins of +-6 sd: the quadrature nodes round to eps 1e5 off their
    Gauss-Legendre points, 1e-12..1e-10 of a piece's half-width, and each such piece must take the
    interpolatory weights (_gauss_legendre's 1e-14 rule; at 1e-10 the masses were 1e-12 off and the
    module tests passed). Against scipy's normal CDF at the edges (edges - 1e5 exact): 1e-15."""
    from scipy.stats import norm
    from sgm_ref.metrics.histogram import histogram_tv

    c = 1e5
    g = GaussianMixture([1.0], [[c]], [[1.0]])
    x = np.random.default_rng(0).standard_normal((50, 1)) + c
    out = histogram_tv(x, g, bins=20, range=(c - 6.0, c + 6.0))
    e = out.edges[0] - c
    ref = norm.cdf(e[1:]) - norm.cdf(e[:-1])
    assert np.abs(out.target_mass - ref).max() < 1e-15


def test_residual_exponential_path_term_matches_its_closed_form():
    """The residual scheme's Delta_k(t) = grad log p_t(X_t) - s(X_{t_k}, t_k) + (X_t - X_{t_k}) (module
    docstring) for p_0 = N(m, v0), OU, the exact score: with U = X_t - alpha_t m ~ N(0, v_t),
    X_{t_k} - alpha_k m = c U + sqrt(1 - c^2) xi, c = e^{-(t_k - t)}, Delta is
    U (c / v_k - 1 / v_t + 1 - c) + sqrt(1 - c^2) xi (1 / v_k - 1) + (1 - c) alpha_t m, whose second
    moment is integrated by quadrature. The module tests check Euler–Maruyama and the exponential
    integrator only: the sign of the (X_t - X_{t_k}) term survived. 4 standard errors."""
    from scipy import integrate
    from sgm_ref.samplers import time_grid

    m, v0, T, t0 = 1.3, 0.4, 6.0, 1e-2
    g = GaussianMixture([1.0], [[m]], [[v0]])
    grid = time_grid(T, t0, 12, "geometric")

    def v(t):
        return np.exp(-2 * t) * v0 - np.expm1(-2 * t)

    def integrand(t, tk):
        c, vt, vk = np.exp(-(tk - t)), v(t), v(tk)
        second = (vt * (c / vk - 1 / vt + 1 - c) ** 2 + (1 - c * c) * (1 / vk - 1) ** 2
                  + ((1 - c) * np.exp(-t) * m) ** 2)
        return 0.5 * 2.0 * second  # 1/2 beta, beta = 2

    exact = sum(integrate.quad(integrand, lo, hi, args=(hi,), epsabs=1e-13, epsrel=1e-11)[0]
                for hi, lo in zip(grid[:-1], grid[1:]))
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), t0, T, grid, "residual_exponential", 4000,
                       np.random.default_rng(0))
    assert abs(b.kl_path - exact) < 4 * b.kl_path_se, (b.kl_path, b.kl_path_se, exact)
    assert b.kl_path_se < 0.03 * exact
