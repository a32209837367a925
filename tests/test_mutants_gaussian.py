"""Tests that kill mutants of sgm_ref.metrics.gaussian which the module tests let survive (second round).

The first round (tests/test_mutants_distances.py, tests/test_mutants_metrics.py) covered the KL series,
the 1-D TV, the Monte-Carlo TV's merge and the near-t0 forms. These cover the rest: the refusals of
sampler_limit_gaussian off its domain, the output-law overflow check, the limit's forms where sigma_T^2
underflows or overflows and where T is near (not next to) t0, gaussian_kl's overflow rescue, and
gaussian_tv's equal-covariance shortcut. Each test names in its docstring the mutant it was written
against; every reference is independent of the code under test (mpmath at 40-60 digits from the
docstrings' formulas, scipy's chi-square law, or the behaviour the docstring documents).
"""

import mpmath
import numpy as np
import pytest
from scipy.stats import chi2

from sgm_ref.metrics.gaussian import gaussian_kl, gaussian_tv, sampler_limit_gaussian, sampler_output_gaussian
from sgm_ref.processes import EDM, OU, VE, VP, FlowMatching, SubVP
from sgm_ref.samplers import time_grid

# -- refusals -----------------------------------------------------------------------------------


def test_a_gaussian_of_dimension_zero_is_refused_by_its_name():
    """mean of shape (0,) with cov of shape (0, 0): refused as 'mean must have shape (d,) with d >= 1'
    (mean0 for the divergences). Mutant: the d >= 1 check dropped, which left numpy's 'zero-size array
    to reduction operation maximum which has no identity' from eigh_spd, naming no argument; the
    module tests pass wrongly shaped means only."""
    empty = (np.zeros(0), np.zeros((0, 0)))
    with pytest.raises(ValueError, match=r"mean must have shape \(d,\) with d >= 1, got shape \(0,\)"):
        sampler_output_gaussian(*empty, OU(), [1.0, 0.5])
    with pytest.raises(ValueError, match=r"mean must have shape \(d,\) with d >= 1"):
        sampler_limit_gaussian(*empty, OU(), 1.0, 0.5)
    for fn in (gaussian_kl, gaussian_tv):
        with pytest.raises(ValueError, match=r"mean0 must have shape \(d,\) with d >= 1"):
            fn(*empty, *empty)


@pytest.mark.parametrize("process,T", [(VP(), 1.5), (FlowMatching(), 0.999995)])
def test_the_limit_refuses_a_horizon_beyond_t_max_and_takes_t_max_itself(process, T):
    """0 < t0 < T <= process.t_max (the docstring): T past t_max refused by name, on a variance-
    preserving process (VP, t_max 1) and on one that is not (FlowMatching, 0.99999); T = t_max accepted.
    Mutants: the t_max check dropped on either branch (check_time_range without the process, and the
    'if T > process.t_max' of the other processes); the module tests use OU (t_max = inf) only."""
    with pytest.raises(ValueError, match=rf"T must be <= {process.t_max} for .*got {T!r}"):
        sampler_limit_gaussian([0.5], [[2.0]], process, T, 0.1)
    mean, cov = sampler_limit_gaussian([0.5], [[2.0]], process, process.t_max, 0.1)
    assert np.all(np.isfinite(mean)) and cov[0, 0] > 0


def test_the_limit_refuses_an_unknown_method_on_every_process():
    """method 'heun' on VE and EDM (not variance-preserving): refused as 'method must be one of', as
    on OU. Mutant: the method check skipped on that branch, where anything but 'probability_flow'
    then returned the reverse SDE's law; the module tests pass an unknown method with OU only."""
    for process in (VE(), EDM()):
        with pytest.raises(ValueError, match="method must be one of"):
            sampler_limit_gaussian([0.5], [[2.0]], process, 0.5, 0.1, "heun")


# -- sampler_output_gaussian: overflow and symmetry -------------------------------------------------


def _ou_em_variance(lam, grid):
    """q after Euler-Maruyama on OU (B(t) = 2 t) for a 1-D target of variance lam, the docstring's
    recursion a = 1 + DB/2, b = c^2 = DB, v_k = e^{-2 t_k} lam + 1 - e^{-2 t_k}, in mpmath (40 digits)."""
    with mpmath.workdps(40):
        q, lam = mpmath.mpf(1), mpmath.mpf(lam)
        for hi, lo in zip(grid[:-1], grid[1:]):
            DB = 2 * (mpmath.mpf(hi) - mpmath.mpf(lo))
            v = mpmath.exp(-2 * mpmath.mpf(hi)) * lam - mpmath.expm1(-2 * mpmath.mpf(hi))
            q = (1 + DB / 2 - DB / v) ** 2 * q + DB
        return q


def test_an_output_law_beyond_float64_is_refused_and_one_just_inside_is_exact():
    """Euler-Maruyama on OU with steps of ~1000 (|A| ~ 1000 a step): after 51 steps q = 9.05e305,
    within 1e-12 of the recursion in mpmath; after 53 steps it is 9e311 in mpmath, beyond float64,
    and refused with the documented 'overflows float64' message. Mutant: _from_eigen's finiteness
    check dropped, which returned a covariance of inf (nothing in the module tests overflows)."""
    inside = time_grid(51000.0, 0.01, 51)
    q = _ou_em_variance(2.0, inside)
    mean, cov = sampler_output_gaussian([0.5], [[2.0]], OU(), inside, "euler_maruyama")
    assert 1e305 < q < 1e306 and abs(cov[0, 0] - q) <= 1e-12 * q, (cov[0, 0], float(q))
    beyond = time_grid(53000.0, 0.01, 53)
    assert _ou_em_variance(2.0, beyond) > mpmath.mpf("1e310")
    with pytest.raises(ValueError, match="the sampler's output law overflows float64"):
        sampler_output_gaussian([0.5], [[2.0]], OU(), beyond, "euler_maruyama")


def test_the_output_covariance_is_exactly_symmetric():
    """A 4-D target in a random basis: cov_out is a covariance, symmetric to the last bit (U diag(q) U^T
    formed by a product is not: 1.1e-16 here), and matches the dense recursion written out with the
    full matrices (Sigma_t^{-1} by numpy.linalg.solve). Mutant: _from_eigen's symmetrisation dropped."""
    rng = np.random.default_rng(1)
    Q, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    S = (Q * [0.3, 1.0, 2.0, 5.0]) @ Q.T
    S = 0.5 * (S + S.T)
    m = rng.standard_normal(4)
    grid = time_grid(3.0, 1e-2, 20)
    mean, cov = sampler_output_gaussian(m, S, OU(), grid, "euler_maruyama")
    np.testing.assert_array_equal(cov, cov.T)
    mu, C = np.zeros(4), np.eye(4)
    for hi, lo in zip(grid[:-1], grid[1:]):
        DB, a = 2.0 * (hi - lo), np.exp(-hi)
        Sigma = a * a * S + (-np.expm1(-2.0 * hi)) * np.eye(4)
        G = (1.0 + DB / 2) * np.eye(4) - DB * np.linalg.solve(Sigma, np.eye(4))
        mu = G @ mu + DB * np.linalg.solve(Sigma, a * m)
        C = G @ C @ G.T + DB * np.eye(4)
    np.testing.assert_allclose(mean, mu, rtol=0, atol=1e-13)
    np.testing.assert_allclose(cov, C, rtol=0, atol=1e-13)


# -- sampler_limit_gaussian off a variance-preserving process ---------------------------------------


def _limit_forms(m, lam, coefficients, T, t0, method, digits=60):
    """sampler_limit_gaussian's docstring forms ('Any other process', started from N(0, sigma_T^2 I)) in
    mpmath from coefficients(t) -> (alpha_t, sigma_t^2) in mpmath."""
    with mpmath.workdps(digits):
        (a0, s0), (aT, sT) = coefficients(mpmath.mpf(t0)), coefficients(mpmath.mpf(T))
        lam, m = mpmath.mpf(lam), mpmath.mpf(m)
        v0, vT = a0**2 * lam + s0, aT**2 * lam + sT
        if method == "probability_flow":
            return a0 * m - aT * m * mpmath.sqrt(v0 / vT), v0 * sT / vT
        ratio = (aT / a0) * (v0 / vT)
        return a0 * m - aT * m * ratio, v0 - aT**2 * lam * ratio**2


@pytest.mark.parametrize("method", ["euler_maruyama", "probability_flow"])
def test_the_limit_with_T_a_little_past_t0_matches_mpmath(method):
    """T = t0 (1 + 3e-4) and t0 (1 + 1e-3): (alpha_T / alpha_t0)^2 sigma_t0^2 / sigma_T^2 = 0.997 ..
    0.9985, where sigma_T^2 - (alpha_T / alpha_t0)^2 sigma_t0^2 still cancels (2e-13 in mu and q on
    SubVP) and the forward transition's variance is taken instead (the docstring): within 2e-15 of
    the forms from the processes' exact coefficients at 60 digits (the worst 5.5e-16). Mutant: the
    switch to the transition's variance at a ratio 0.999 instead of 0.5; the module tests put T
    within 1e-6 of t0 (ratio > 0.99999) or far from it."""
    sub, ve = SubVP(), VE()

    def sub_coefficients(t):
        B = sub.beta_min * t + (sub.beta_max - sub.beta_min) * t**2 / 2
        return mpmath.exp(-B / 2), mpmath.expm1(-B) ** 2

    def ve_coefficients(t):
        return 1, (ve.sigma_min * (mpmath.mpf(ve.sigma_max) / ve.sigma_min) ** t) ** 2

    cases = [(sub, sub_coefficients, 0.5), (ve, ve_coefficients, 0.3), (EDM(), lambda t: (1, t**2), 2.0),
             (FlowMatching(), lambda t: (1 - t, t**2), 0.6)]
    for process, coefficients, t0 in cases:
        for T in (t0 * (1 + 3e-4), t0 * (1 + 1e-3)):
            for lam in (0.3, 2.0):
                mean, cov = sampler_limit_gaussian([1.5], [[lam]], process, T, t0, method)
                mu, q = _limit_forms(1.5, lam, coefficients, T, t0, method)
                assert abs(mean[0] - mu) <= 2e-15 * abs(mu) and abs(cov[0, 0] - q) <= 2e-15 * q, \
                    (process, T, lam, float(mean[0] / mu - 1), float(cov[0, 0] / q - 1))


def test_the_limit_where_sigma_T_squared_underflows_is_its_rounded_value():
    """EDM (alpha = 1, sigma_t^2 = t^2, exact) from T = 1e-170 to t0 = 1e-180: sigma_T^2 and sigma_t0^2
    underflow to 0; the reverse SDE's limit (the docstring's forms at 60 digits) has mean
    1.5 (T^2 - t0^2) / (lam + T^2) ~ 7.5e-341 and variance ~2e-340, both 0 in float64, which the
    documented 's2_0 <= s2_T: both 0 where sigma_T^2 underflows' returns. Mutant: s2_0 / s2_T taken
    without that guard (0.0 / 0.0: a ZeroDivisionError); the module tests' smallest sigma_T^2 is
    1e-200."""
    mu, q = _limit_forms(1.5, 2.0, lambda t: (1, t**2), 1e-170, 1e-180, "euler_maruyama", digits=400)
    assert 0 < q < mpmath.mpf("1e-330") and 0 < mu < mpmath.mpf("1e-330")
    mean, cov = sampler_limit_gaussian([1.5], [[2.0]], EDM(), 1e-170, 1e-180, "euler_maruyama")
    assert mean[0] == float(mu) == 0.0 and cov[0, 0] == float(q) == 0.0


@pytest.mark.parametrize("method", ["euler_maruyama", "probability_flow"])
def test_the_limit_of_a_huge_target_where_sigma_T_squared_overflows_matches_mpmath(method):
    """EDM with lam = 8e307 and 3e307, T = 1.4e154 and 2e154 (sigma_T^2 = 1.96e308 .. 4e308, beyond
    float64; sigma_T not), t0 = 1: v_t0 / v_T = 0.29 .. 0.07, so the SDE's q = v_t0 - alpha_T^2 lam
    ratio^2 differs from v_t0 by 9% .. 0.5%, and the ODE's q = v_t0 sigma_T^2 / v_T from v_t0 by 29% ..
    7%; against the forms at 50 digits, to 1e-15. Mutants: that path's q taken as v_t0 alone, in the
    SDE's and in the ODE's form (the module tests' huge sigma_T meet lam ~ 1, where both differ from
    v_t0 by 1e-400 relative)."""
    for lam, T in ((8e307, 1.4e154), (3e307, 2e154)):
        mean, cov = sampler_limit_gaussian([1.5], [[lam]], EDM(), T, 1.0, method)
        mu, q = _limit_forms(1.5, lam, lambda t: (1, t**2), T, 1.0, method, digits=50)
        assert abs(mean[0] - mu) <= 1e-15 * abs(mu) and abs(cov[0, 0] - q) <= 1e-15 * q, \
            (lam, float(mean[0] / mu - 1), float(cov[0, 0] / q - 1))


# -- gaussian_kl ------------------------------------------------------------------------------------


def test_gaussian_kl_whose_mean_term_overflows_keeps_its_covariance_part():
    """KL(N(0, 1e306) || N(1.5e154, 1)) = (r - 1 - log r + dm^2) / 2 = 5e305 + 1.125e308 = 1.13e308
    (r = 1e306): |w|^2 = 2.25e308 overflows and the rescue halves it; at 40 digits, to 4 eps. Mutant:
    the rescue without the covariance part (1.125e308, 0.4% low); the module tests reach the rescue
    with equal unit variances only."""
    with mpmath.workdps(40):
        r = mpmath.mpf(1e306)
        ref = (r - 1 - mpmath.log(r) + mpmath.mpf(1.5e154) ** 2) / 2
        kl = gaussian_kl([0.0], [[1e306]], [1.5e154], [[1.0]])
        assert abs(kl - ref) <= 4 * 2.0**-52 * ref, (kl, float(ref))


# -- gaussian_tv ------------------------------------------------------------------------------------


def test_gaussian_tv_of_nearly_equal_covariances_is_a_monte_carlo_estimate_of_the_exact_value():
    """N(0, I) against N(0, s I) in d = 2, s = 1 + 1e-6: the covariances differ, so the TV is the
    Monte-Carlo estimate and needs an rng (the docstring); exactly, p0 > p1 inside |x|^2 < r =
    d s log s / (s - 1), so TV = F(r) - F(r / s) with F the chi-square(2) CDF (scipy): 3.7e-7. The
    estimate is within 5 of its standard errors of it, and the same seed gives the same bits. Mutant:
    the equal-covariance shortcut taken for np.allclose covariances, which returned TV = 0 exactly
    (the module tests' covariances are equal or far apart); and the rng's refusal without its reason,
    left to check_rng's generic message."""
    d, s = 2, 1.0 + 1e-6
    m, C0, C1 = np.zeros(d), np.eye(d), s * np.eye(d)
    with pytest.raises(ValueError, match=r"rng must be a numpy.random.Generator when d > 1 and cov0 != cov1 "
                                         r"\(the TV is then a Monte-Carlo estimate\)"):
        gaussian_tv(m, C0, m, C1)
    r = d * s * np.log(s) / (s - 1.0)
    exact = chi2.cdf(r, d) - chi2.cdf(r / s, d)
    assert 3e-7 < exact < 4e-7
    value, se = gaussian_tv(m, C0, m, C1, rng=np.random.default_rng(3), n=20_000)
    assert 0 < se < 0.05 * exact and abs(value - exact) < 5 * se, (value, exact, se)
    assert gaussian_tv(m, C0, m, C1, rng=np.random.default_rng(3), n=20_000) == (value, se)


def test_gaussian_tv_of_laws_whose_mean_difference_overflows_is_one():
    """Means (-+1e308, 0) (m1 - m0 overflows) with covariances 1e16 I under N1: 2e300 of N1's
    standard deviations apart (2e288 of N0's, 1e40 I, in the second pair), so TV = 1 to float64 (the
    docstring: 'more than ~1e300 standard deviations apart ... give TV = 1'), in place of a refusal.
    The separation's lower bound |m1 - m0| / sqrt(d max_i C1_ii) is 1.41e300 here. Mutants: that
    bound without its factor 2 (|m1 - m0| / 2 taken as the distance: 7e299, refused), and with
    C0's diagonal in place of C1's (1.4e288 for the second pair, refused); the module tests' far
    laws are 1e308 or more standard deviations apart."""
    m0, m1 = np.array([-1e308, 0.0]), np.array([1e308, 0.0])
    C1 = 1e16 * np.eye(2)
    assert gaussian_tv(m0, C1, m1, C1) == (1.0, 0.0)
    assert gaussian_tv(m0, 1e40 * np.eye(2), m1, C1, rng=np.random.default_rng(0), n=16) == (1.0, 0.0)
