"""Tests that kill mutants of sgm_ref.metrics.distances, .gaussian and .histogram which the module
tests (tests/test_distances.py, tests/test_gaussian_closed_form.py, tests/test_mutants_metrics.py)
let survive.

Each test names in its docstring the mutant it was written against (mutation testing of those three
modules; the mutants of tests/test_mutants_metrics.py not repeated). Every reference is independent of
the code under test: mpmath at 40 digits, scipy (normal CDFs, logpdf, softmax), a closed form, or the
behaviour the docstring documents.
"""

import math

import mpmath
import numpy as np
import pytest
from scipy.stats import norm

from sgm_ref import GaussianMixture
from sgm_ref.metrics.distances import component_weights, covariance_error, mean_error, sliced_wasserstein
from sgm_ref.metrics.histogram import histogram_tv


class _Moments:
    """A target seen only through mean() and covariance() (any magnitude, no GaussianMixture limits)."""

    def __init__(self, mean, cov):
        self._mean, self._cov = np.asarray(mean, dtype=float), np.asarray(cov, dtype=float)

    def mean(self):
        return self._mean

    def covariance(self):
        return self._cov


def test_sliced_wasserstein_with_a_large_p_matches_mpmath():
    """p = 2000 (the logarithm path: gap^p leaves float64) with directions whose W_l^p span e^1217 ..
    e^2257: SW_p = (mean_l W_l^p)^(1/p) and its SE std_l(W_l^p) / sqrt(L) M^(1/p - 1) / p (the
    docstring), the directions theta_l = g_l / |g_l| re-drawn from the same seed, every projection,
    sort and power in mpmath at 40 digits. Mutant: the log-sum-exp shift w = max_l log W_l replaced by
    the min (exp(log W_l - w) overflows to inf, a ValueError); the module tests' directions spread
    log W_l by less than 709."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((6, 2)) * np.array([3.0, 0.2])
    y = rng.standard_normal((6, 2)) * np.array([3.0, 0.2]) + np.array([0.0, 1.0])
    L, p = 8, 2000
    out = sliced_wasserstein(x, y, np.random.default_rng(5), n_projections=L, p=p)
    g = np.random.default_rng(5).standard_normal((L, 2))
    with mpmath.workdps(40):
        W = []
        for t in g:
            norm = mpmath.sqrt(mpmath.mpf(t[0]) ** 2 + mpmath.mpf(t[1]) ** 2)
            px = sorted((mpmath.mpf(a[0]) * t[0] + mpmath.mpf(a[1]) * t[1]) / norm for a in x)
            py = sorted((mpmath.mpf(a[0]) * t[0] + mpmath.mpf(a[1]) * t[1]) / norm for a in y)
            W.append(mpmath.fsum(abs(a - b) ** p for a, b in zip(px, py)) / len(px))
        logs = [float(mpmath.log(w)) for w in W]
        assert max(logs) - min(logs) > 800
        M = mpmath.fsum(W) / L
        sd = mpmath.sqrt(mpmath.fsum((w - M) ** 2 for w in W) / (L - 1))
        value = M ** (mpmath.mpf(1) / p)
        se = sd / mpmath.sqrt(L) * M ** (mpmath.mpf(1) / p - 1) / p
        assert abs(out.value - value) <= 4 * 2.0**-52 * value, (out.value, float(value))
        assert abs(out.standard_error - se) <= 1e-13 * se, (out.standard_error, float(se))


def _mp_moment_errors(x, mean, cov):
    """(|xbar - m|, sqrt(u^T S u / n)), (||S - Sigma||_F, std_i(c_i^T D c_i) / sqrt(n)) in mpmath at 40
    digits, from the docstrings of mean_error and covariance_error (S unbiased, D the unit direction of
    S - Sigma), as floats."""
    with mpmath.workdps(40):
        n, d = x.shape
        X = [[mpmath.mpf(float(v)) for v in row] for row in x]
        xbar = [mpmath.fsum(r[j] for r in X) / n for j in range(d)]
        C = [[r[j] - xbar[j] for j in range(d)] for r in X]
        S = [[mpmath.fsum(c[i] * c[j] for c in C) / (n - 1) for j in range(d)] for i in range(d)]
        diff = [xbar[j] - mpmath.mpf(float(mean[j])) for j in range(d)]
        e_mean = mpmath.sqrt(mpmath.fsum(v * v for v in diff))
        u = [v / e_mean for v in diff]
        se_mean = mpmath.sqrt(mpmath.fsum(u[i] * S[i][j] * u[j] for i in range(d) for j in range(d)) / n)
        E = [[S[i][j] - mpmath.mpf(float(cov[i, j])) for j in range(d)] for i in range(d)]
        e_cov = mpmath.sqrt(mpmath.fsum(E[i][j] ** 2 for i in range(d) for j in range(d)))
        psi = [mpmath.fsum(c[i] * E[i][j] * c[j] for i in range(d) for j in range(d)) / e_cov for c in C]
        mpsi = mpmath.fsum(psi) / n
        se_cov = mpmath.sqrt(mpmath.fsum((v - mpsi) ** 2 for v in psi) / (n - 1) / n)
        return (float(e_mean), float(se_mean)), (float(e_cov), float(se_cov))


def test_covariance_error_standard_error_matches_mpmath():
    """covariance_error's SE = std_i(psi_i) / sqrt(n), psi_i = c_i^T D c_i, D = (S - Sigma) / ||S - Sigma||_F
    (ddof = 1), recomputed at 40 digits, to 1e-13. Mutants: ddof = 0, and psi scaled by 1 + 1e-7; the
    module tests check this SE only for finiteness, scaling and a Monte-Carlo calibration within a
    factor 1.4. mean_error's value and SE alongside, to the same reference."""
    rng = np.random.default_rng(7)
    x = rng.standard_normal((12, 3)) @ np.array([[1.0, 0.4, 0.0], [0.0, 0.9, -0.3], [0.0, 0.0, 1.3]])
    mean, cov = np.array([0.1, -0.2, 0.3]), np.array([[1.2, 0.1, 0.0], [0.1, 0.8, -0.2], [0.0, -0.2, 1.5]])
    (m_value, m_se), (c_value, c_se) = _mp_moment_errors(x, mean, cov)
    got = covariance_error(x, _Moments(mean, cov))
    assert got.value == pytest.approx(c_value, rel=1e-14, abs=0)
    assert got.standard_error == pytest.approx(c_se, rel=1e-13, abs=0)
    got = mean_error(x, _Moments(mean, cov))
    assert got.value == pytest.approx(m_value, rel=1e-14, abs=0)
    assert got.standard_error == pytest.approx(m_se, rel=1e-13, abs=0)


def test_covariance_error_of_exactly_zero_returns_the_documented_noise_floor():
    """Rows (+-2, 0), (0, +-2), (0, 0): mean exactly 0, S = diag(8, 8) / 4 = 2 I exactly, the target's
    covariance, so the value is 0 and the SE the docstring's floor sqrt(mean_i ||c_i c_i^T - S||_F^2 / n)
    = sqrt((4 * 8 + 8) / 5 / 5) (||diag(4, 0) - 2 I||_F^2 = 8, and 8 for c = 0). Mutant: the floor
    without its / n (the module tests never reach a value of exactly 0)."""
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0], [0.0, -2.0], [0.0, 0.0]])
    value, se = covariance_error(x, GaussianMixture([1.0], [[0.0, 0.0]], [2.0 * np.eye(2)]))
    assert value == 0.0
    assert se == pytest.approx(math.sqrt((4 * 8 + 8) / 5 / 5), rel=1e-15)


def test_mean_error_standard_error_where_the_sums_overflow_matches_mpmath():
    """Entries ~1e300 (|xbar - m|^2 overflows: the power-of-two scaled path): value and SE
    sqrt(u^T S u / n) at 40 digits, to 1e-13. Mutant: that path's SE returned unscaled (c * scaled_se
    -> scaled_se, 1e-300 of the truth); the module tests check it for finiteness only."""
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((10, 2)) + np.array([2.0, -1.0])) * 1e300
    mean = np.array([1e299, 0.0])
    (m_value, m_se), _ = _mp_moment_errors(x, mean, np.eye(2))
    value, se = mean_error(x, _Moments(mean, np.eye(2)))
    assert value == pytest.approx(m_value, rel=1e-14, abs=0)
    assert se == pytest.approx(m_se, rel=1e-13, abs=0)


def test_component_weights_hard_assignment_breaks_ties_towards_the_lower_component():
    """Two mirror-image components (means -+1, equal weights and covariances): points on the mirror
    plane x_0 = 0 have exactly equal log w_k N_k(x), and the docstring sends ties to the lower k. Three
    tied points and one nearer component 1: hard = (3/4, 1/4), soft = 1/2 on the tied points. Mutant:
    ties to the higher k (the module tests never produce an exact tie)."""
    g = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]], [0.5 * np.eye(2), 0.5 * np.eye(2)])
    x = np.array([[0.0, 0.0], [0.0, 3.0], [0.0, -40.0], [0.3, 0.0]])
    r = component_weights(x, g)
    np.testing.assert_array_equal(r.hard, [0.75, 0.25])
    p1 = 1.0 / (1.0 + math.exp(-2 * 0.3 / 0.5))  # pi_1(0.3, 0): log ratio (|x - mu_0|^2 - |x - mu_1|^2) / (2 * 0.5)
    assert r.soft[1] == pytest.approx((3 * 0.5 + p1) / 4, rel=1e-14)


# -- histogram_tv -------------------------------------------------------------------------------


class _Shifted:
    """A GaussianMixture seen through dim and log_prob only, log_prob + log_factor; optionally a
    Monte-Carlo normaliser's standard error (log_normaliser_se), as a TiltedGaussian has."""

    def __init__(self, mixture, log_factor=0.0, log_normaliser_se=None):
        self.m, self.dim, self.log_factor = mixture, mixture.dim, log_factor
        if log_normaliser_se is not None:
            self.log_normaliser_se = log_normaliser_se

    def log_prob(self, x):
        return self.m.log_prob(x) + self.log_factor


def test_histogram_tv_resolves_a_narrow_component_of_a_full_covariance_mixture():
    """A GaussianMixture (full covariances) with components of std 1 and 0.001: the quadrature's pieces
    are cut from the narrowest component's std (the docstring), and the masses match scipy's CDFs.
    Mutant: the scale the largest of the components' smallest stds (max for min): the spike at 1 falls
    between the nodes of both rules, the masses sum to 0.5 with quadrature_error ~0 and no warning;
    the module tests check this for a ProductMixture only."""
    g = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[[1.0]], [[1e-6]]])
    assert g.covariance_type == "full"
    x = g.sample(200, np.random.default_rng(0))
    r = histogram_tv(x, g, bins=20)
    exact = 0.5 * np.diff(norm.cdf(r.edges[0], -1.0, 1.0)) + 0.5 * np.diff(norm.cdf(r.edges[0], 1.0, 0.001))
    np.testing.assert_allclose(r.target_mass, exact, rtol=0, atol=1e-13)


def test_histogram_tv_ignores_the_width_of_a_component_of_zero_weight():
    """A component of weight 0 and std 1e-9 adds nothing to the density, and the quadrature's scale is
    that of the components of positive weight (the docstring): the masses are N(0, 1)'s. Mutant: every
    component counted (weights >= 0), which refuses the target as too narrow for the bins."""
    g = GaussianMixture([1.0, 0.0], [[0.0], [0.5]], [[[1.0]], [[1e-18]]])
    x = np.random.default_rng(0).standard_normal((100, 1))
    r = histogram_tv(x, g, bins=10, range=(-4.0, 4.0))
    np.testing.assert_allclose(r.target_mass, np.diff(norm.cdf(r.edges[0])), rtol=0, atol=1e-13)


def test_smallest_std_of_a_tied_mixture_is_the_smallest_of_its_shared_covariance():
    """_smallest_std (the quadrature's scale) of a tied mixture, whose shared covariance
    R diag(0.01^2, 2^2) R^T is a ridge 0.01 wide along a diagonal: 0.01 (rotation of a known spectrum).
    Mutant: the largest eigenvalue taken (eigvalsh's [-1] for [0]), a scale of 2. An end-to-end
    histogram_tv test would need ~1e7 density evaluations in 2-D: the helper is checked directly, as
    tests/test_distances.py checks _binomial_mean_abs_dev."""
    from sgm_ref.metrics.histogram import _smallest_std

    c, s = math.cos(0.6), math.sin(0.6)
    R = np.array([[c, -s], [s, c]])
    cov = R @ np.diag([0.01**2, 2.0**2]) @ R.T
    g = GaussianMixture([0.4, 0.6], [[0.0, 0.0], [1.0, 1.0]], cov, covariance_type="tied")
    assert _smallest_std(g) == pytest.approx(0.01, rel=1e-9)


def test_histogram_tv_names_a_range_of_zero_width_as_such():
    """range = (1, 1): refused as 'range must have low < high' (the check documented for malformed
    ranges). Mutant: low == high let through to the edge check, whose message blames float64's
    spacing and an overflowing width (the module tests pass low > high only)."""
    x = np.random.default_rng(0).standard_normal((10, 1))
    with pytest.raises(ValueError, match="range must have low < high"):
        histogram_tv(x, GaussianMixture([1.0], [[0.0]]), bins=4, range=(1.0, 1.0))


def test_histogram_tv_refuses_masses_a_little_beyond_one():
    """log_prob of N(0, 1) plus log(1 + 1e-9) over +-10 sd (outside mass 1.5e-23): the masses sum to
    1 + 1e-9, beyond the documented 1 + quadrature_error + 1e-10, and are refused; the same density
    without the excess is accepted. Mutant: the tolerance loosened by 1e-6 (the module tests inflate
    by 1%)."""
    g = GaussianMixture([1.0], [[0.0]])
    x = np.random.default_rng(0).standard_normal((50, 1))
    with pytest.raises(ValueError, match="bin masses sum to 1.000000001"):
        histogram_tv(x, _Shifted(g, math.log1p(1e-9)), bins=10, range=(-10.0, 10.0))
    r = histogram_tv(x, _Shifted(g), bins=10, range=(-10.0, 10.0))
    assert abs(r.target_mass.sum() - 1.0) < 1e-13


def test_histogram_tv_accepts_masses_up_to_five_normaliser_standard_errors_beyond_one():
    """A target with log_normaliser_se = 1e-6 whose masses sum to 1 + 3e-6 (log_prob + 3e-6): within the
    documented 1 + quadrature_error + 1e-10 + expm1(5 log_normaliser_se), so accepted, with the
    outside cell reported as it is (1 - sum, ~-3e-6) and read as 0 by the expected bias; at 6e-6 refused.
    Mutant: 2 standard errors instead of 5 (the module test's TiltedGaussian sums to 1 exactly)."""
    g = GaussianMixture([1.0], [[0.0]])
    x = np.random.default_rng(0).standard_normal((50, 1))
    r = histogram_tv(x, _Shifted(g, 3e-6, log_normaliser_se=1e-6), bins=10, range=(-10.0, 10.0))
    assert r.target_outside == pytest.approx(-math.expm1(3e-6), rel=1e-6)
    with pytest.raises(ValueError, match="bin masses sum to"):
        histogram_tv(x, _Shifted(g, 6e-6, log_normaliser_se=1e-6), bins=10, range=(-10.0, 10.0))


def test_binomial_mean_absolute_deviation_for_n_p_below_one_matches_mpmath():
    """k = 1 (n p < 1): E|X/n - p| = 2 p (1 - p)^n, for n = 1e7 and p = 5e-8 .. 9e-8, at 40 digits, to
    4 eps. Mutant: (1 - p)^n as exp(n log(1 - p)), whose rounding of 1 - p (eps / p relative in the
    logarithm) becomes n eps ~ 2e-9 (the module tests reach k = 1 with n p ~ 1e-200 or n = 100)."""
    from sgm_ref.metrics.histogram import _binomial_mean_abs_dev

    n, p = 10**7, np.array([5e-8, 7.3e-8, 9e-8])
    got = _binomial_mean_abs_dev(n, p)
    with mpmath.workdps(40):
        for g_, p_ in zip(got, p):
            ref = 2 * mpmath.mpf(p_) * (1 - mpmath.mpf(p_)) ** n
            assert abs(g_ - ref) <= 4 * 2.0**-53 * ref, (g_, float(ref))


# -- gaussian_tv, gaussian_kl ----------------------------------------------------------------------


def test_gaussian_tv_and_kl_read_a_covariance_and_its_transpose_as_the_same_law():
    """cov0 = A and cov1 = A^T with A symmetric to 1e-13 (within the accepted 1e-10): both are the law
    N(m, (A + A^T) / 2), so the equal-covariance closed form applies, TV = erf(D / (2 sqrt 2)) exact
    (standard error 0, no rng needed) with D the Mahalanobis distance (numpy's solve of the
    symmetrised matrix), and KL = D^2 / 2. Mutant: the covariances not symmetrised (_check_gaussian),
    so TV asked for an rng (a Monte-Carlo estimate) and KL read each matrix's lower triangle."""
    from scipy.special import erf

    from sgm_ref.metrics.gaussian import gaussian_kl, gaussian_tv

    A = np.array([[1.5, 0.4 + 1e-13], [0.4 - 1e-13, 0.9]])
    m0, m1 = np.array([0.0, 0.0]), np.array([0.3, -0.2])
    S = 0.5 * (A + A.T)
    D2 = float((m1 - m0) @ np.linalg.solve(S, m1 - m0))
    value, se = gaussian_tv(m0, A, m1, A.T)
    assert se == 0.0
    assert value == pytest.approx(erf(math.sqrt(D2) / (2 * math.sqrt(2))), rel=1e-14)
    assert gaussian_kl(m0, A, m1, A.T) == pytest.approx(D2 / 2, rel=1e-14)


# -- sampler_output_gaussian on a process that is not variance-preserving -------------------------------


def _ve_sigma2(t):
    """VE's sigma_t^2 = (sigma_min (sigma_max / sigma_min)^t)^2 (its docstring, defaults 0.01, 50), mpmath."""
    smin, smax = mpmath.mpf("0.01"), mpmath.mpf(50)
    return (smin * (smax / smin) ** mpmath.mpf(t)) ** 2


def test_sampler_output_gaussian_on_ve_matches_an_mpmath_recursion():
    """VE (alpha = 1, f = 0), Euler-Maruyama, 1-D target N(0.7, 0.4): the docstring's recursion with
    a = 1, b = c^2 = int g^2 = sigma^2(t_k) - sigma^2(t_{k+1}), v_k = lam + sigma^2(t_k), started from
    N(0, sigma_T^2) (as sgm_ref.samplers.sample starts it), at 40 digits. Mutant: the start variance 1
    on every process (the module tests use OU and VP only, whose start variance is 1)."""
    from sgm_ref.metrics.gaussian import sampler_output_gaussian
    from sgm_ref.processes import VE

    m, lam = 0.7, 0.4
    grid = np.array([1.0, 0.6, 0.3, 0.1, 0.02])
    mean, cov = sampler_output_gaussian([m], [[lam]], VE(), grid, "euler_maruyama")
    with mpmath.workdps(40):
        mu, q = mpmath.mpf(0), _ve_sigma2(grid[0])
        for hi, lo in zip(grid[:-1], grid[1:]):
            v, b = lam + _ve_sigma2(hi), _ve_sigma2(hi) - _ve_sigma2(lo)
            mu, q = (1 - b / v) * mu + b * m / v, (1 - b / v) ** 2 * q + b
        assert abs(mean[0] - mu) <= 1e-13 * abs(mu), (mean[0], float(mu))
        assert abs(cov[0, 0] - q) <= 1e-13 * q, (cov[0, 0], float(q))
