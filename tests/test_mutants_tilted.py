"""Mutation tests for the tilted-Gaussian target, target specs and the targets' shared checks.

Each test kills a mutant of sgm_ref/targets/{tilted_gaussian,spec,_checks,_predict}.py that
the rest of the suite let through (named in its docstring), against an independent
reference: a closed form, a complex-step derivative, scipy, or the documented limit.
"""

import warnings

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from sgm_ref import EDM, OU, VE, GaussianMixture, SubVP
from sgm_ref.targets import TiltedGaussian
from sgm_ref.targets import _checks
from sgm_ref.targets.spec import from_record, from_spec, to_record


def _linear_tilt(mu, **kwargs):
    """f = mu . x: e^f gamma_d / Z = N(mu, I), Z = e^{|mu|^2 / 2}; p_t = N(alpha mu, q I)."""
    mu = np.asarray(mu, dtype=np.float64)
    return TiltedGaussian(lambda x: x @ mu, lambda x: np.broadcast_to(mu, x.shape).copy(), mu.size, **kwargs)


# -- tilted_gaussian.py ---------------------------------------------------------------------------


def test_log_prob_of_a_large_tilt_keeps_the_log_sum_exp_shift():
    """Mutant: _logmeanexp without its max (top = 0): log mean exp(f(y)) overflowed to inf for f near 1000,
    and log_prob raised. f = 1000 + mu . x tilts gamma_d to N(mu, I) with log Z = 1000 + |mu|^2 / 2: at
    t = 0 log p_0 is exact up to the estimated log Z (scipy's Gaussian log-density as reference)."""
    mu = np.array([0.8, -0.6])
    tg = TiltedGaussian(lambda x: 1000.0 + x @ mu, lambda x: np.broadcast_to(mu, x.shape).copy(), 2, n_mc=16,
                        n_normaliser=4096, rng=np.random.default_rng(0))
    exact_log_z = 1000.0 + 0.5 * mu @ mu
    assert abs(tg.log_normaliser - exact_log_z) < 5 * tg.log_normaliser_se
    x = np.random.default_rng(1).normal(size=(5, 2))
    reference = multivariate_normal(mu, np.eye(2)).logpdf(x) + (exact_log_z - tg.log_normaliser)
    np.testing.assert_allclose(tg.log_prob(x, 0.0), reference, rtol=0, atol=2e-12)  # ulps of 1000
    assert np.all(np.isfinite(tg.log_prob(x, 0.5)))


def test_barron_cos_gradient_is_the_complex_step_derivative():
    """Mutant: barron's cos grad_f with its sign flipped (a sin instead of -a sin): only the tanh form's
    gradient was checked. Reference: the complex-step derivative Im f(x + i h e_j) / h, exact to rounding."""
    d = 3
    tg = TiltedGaussian.barron(d, width=5, activation="cos", rng=np.random.default_rng(0), n_mc=2, n_normaliser=2)
    x = np.random.default_rng(1).normal(size=(4, d))
    h = 1e-30
    step = np.stack([tg.f(x + 1j * h * e).imag / h for e in np.eye(d)], axis=1)
    np.testing.assert_allclose(tg.grad_f(x), step, rtol=1e-13, atol=1e-15)


def test_sampling_refuses_f_above_f_max_by_any_margin():
    """Mutant: the refusal `f > f_max` loosened to f > f_max + 1e-9: a bound wrong by less than 1e-9
    was accepted (acceptance probability e^{f - f_max} > 1). f = 0 against f_max = -5e-324 must raise;
    f_max = 0, exactly sup f, must not."""
    wrong = TiltedGaussian(lambda x: np.zeros(len(x)), None, 2, -5e-324, n_mc=2, n_normaliser=2,
                           rng=np.random.default_rng(0), estimator="stein")
    with pytest.raises(ValueError, match=r"^f = 0.0 exceeds f_max = -5e-324: f_max must bound f above"):
        wrong.sample(3, np.random.default_rng(1))
    exact = TiltedGaussian(lambda x: np.zeros(len(x)), None, 2, 0.0, n_mc=2, n_normaliser=2,
                           rng=np.random.default_rng(0), estimator="stein")
    assert exact.sample(3, np.random.default_rng(1)).shape == (3, 2)


@pytest.mark.parametrize("process", [OU(), SubVP(), VE()], ids=repr)
def test_score_at_per_row_times_is_the_closed_form(process):
    """Mutant: y = alpha x + sigma Z built with the first row's alpha_t, sigma_t for a whole block
    (a[start] for a[blk]): every test passed one t for all points. For f = mu . x, p_t = N(alpha mu, q I),
    score = -(x - alpha mu) / q, q = alpha^2 + sigma^2, here at a different t on every row: the gradient
    estimator gives it to rounding (grad f is constant), the stein one within 5 of its standard errors
    (its weights e^{sigma mu . Z} / q-scaled depend on each row's sigma_t: the mutant is 10-50 off)."""
    mu = np.array([1.0, -0.5])
    t = np.array([0.05, 0.3, 0.6, 0.9]) * min(process.t_max, 1.0)
    x = np.random.default_rng(1).normal(size=(4, 2))
    a, s = process.alpha(t), process.sigma(t)
    q = a**2 + s**2
    exact = -(x - a[:, None] * mu) / q[:, None]
    gradient = _linear_tilt(mu, n_mc=64, n_normaliser=2, rng=np.random.default_rng(0))
    np.testing.assert_allclose(gradient.score(x, t, process), exact, rtol=1e-13, atol=1e-14)
    stein = _linear_tilt(mu, n_mc=4096, n_normaliser=2, rng=np.random.default_rng(0), estimator="stein")
    score, se = stein.score_and_se(x, t, process)
    assert np.all(np.abs(score - exact) < 5 * se), ((score - exact) / se)


def test_divergence_of_a_linear_tilt_under_non_vp_processes_is_minus_d_over_q():
    """Mutant: the stein divergence's Gaussian term -d / q written -d (q = 1 only for variance-preserving
    processes): only the gradient form was checked under EDM, VE, SubVP. For f = mu . x, p_t = N(alpha mu,
    q I) has Laplacian -d / q: the gradient form gives it exactly (Cov_w(Z, mu) = 0), the stein form
    within 4 of its standard errors (the mutant is 2 - 2 / q off: 14 standard errors at EDM t = 1). Also
    kills the stein form's -|grad M / M|^2 written +|grad M / M|^2, which the suite let through."""
    mu = np.array([1.5, -1.0])
    x = np.array([[0.3, -0.5], [2.0, 1.0]])
    for process, t in ((EDM(), 1.0), (EDM(), 3.0), (VE(), 0.8)):
        q = process.alpha(t) ** 2 + process.sigma(t) ** 2
        gradient = _linear_tilt(mu, n_mc=64, n_normaliser=2, rng=np.random.default_rng(0))
        np.testing.assert_array_equal(gradient.divergence(x, t, process), np.full(2, -2.0 / q))
        stein = _linear_tilt(mu, n_mc=4096, n_normaliser=2, rng=np.random.default_rng(0), estimator="stein")
        value, se = stein.divergence_and_se(x, t, process)
        assert np.all(np.abs(value + 2.0 / q) < 4 * se) and np.all(2.0 - 2.0 / q > 6 * se), (process, value, se)


def test_stein_divergence_standard_error_describes_the_spread():
    """Mutant: the stein divergence's influence function with 1 x instead of 2 x grad . (c / s)(Z_i - E_w Z)
    (the derivative of -|grad|^2): its standard error was never compared with the spread of the estimates.
    Over 300 seeds (f = mu . x, |mu| = 1.17, n_mc = 512) the RMS standard error is 0.85-0.92 of the
    spread; the mutant's 1.28-1.37. (For |mu| = 1.8 the real one is 0.70: the delta method under-reads
    heavy-tailed weights.)"""
    mu = np.array([1.0, -0.6])
    x = np.array([[0.3, -0.5]])
    for t in (0.5, 2.0):
        estimates, ses = [], []
        for seed in range(300):
            tg = _linear_tilt(mu, n_mc=512, n_normaliser=2, rng=np.random.default_rng(seed), estimator="stein")
            value, se = tg.divergence_and_se(x, t)
            estimates.append(value[0])
            ses.append(se[0])
        ratio = np.sqrt(np.mean(np.square(ses))) / np.std(estimates, ddof=1)
        assert 0.7 < ratio < 1.15, (t, ratio)


def test_gradient_divergence_standard_error_centres_z_where_the_tilt_moves_it():
    """Mutant: the gradient divergence's influence P_i = Z_i . (G_i - E_w G), Z not centred: the same
    covariance (E_w[G - E_w G] = 0) but a standard error 1.9-2.3 times the spread where E_w Z = s E_w grad f
    is O(1), which the calibration test at t = 1e-6 (E_w Z ~ 1e-3) cannot see. f = -x.Bx/2 + m.x with
    m = (3, -2), n_mc = 256, 200 seeds: RMS standard error 0.83-0.86 of the spread; mean within 0.1 of the
    closed form -tr (alpha^2 S + sigma^2 I)^-1, S = (I + B)^-1."""
    B, m = np.array([[0.8, -0.3], [-0.3, 0.5]]), np.array([3.0, -2.0])
    S = np.linalg.inv(np.eye(2) + B)
    x = np.array([[0.3, -0.5]])
    for t in (0.3, 1.0):
        exact = -np.trace(np.linalg.inv(np.exp(-2 * t) * S - np.expm1(-2 * t) * np.eye(2)))
        estimates, ses = [], []
        for seed in range(200):
            tg = TiltedGaussian(lambda v: -0.5 * np.einsum("id,de,ie->i", v, B, v) + v @ m, lambda v: m - v @ B, 2,
                                n_mc=256, n_normaliser=2, rng=np.random.default_rng(seed))
            value, se = tg.divergence_and_se(x, t)
            estimates.append(value[0])
            ses.append(se[0])
        ratio = np.sqrt(np.mean(np.square(ses))) / np.std(estimates, ddof=1)
        assert 0.65 < ratio < 1.3, (t, ratio)
        assert abs(np.mean(estimates) - exact) < 0.1, (t, np.mean(estimates), exact)


def test_gradient_divergence_refuses_what_rounding_of_large_gradients_hides():
    """Mutant: the rounding floor without its u (|grad f(y)| + |grad f(c x)|) term: for f = -|x - m|^2 / 2,
    m = (1000, -700), at x = 0 the steps s Z are exact (c x = 0) but grad f(y) - grad f(c x) = -(y - m) +
    (c x - m) rounds to ulps of 1000, and at t = 1e-28 all the Hessian is lost: the mutant returned -2
    with standard error 0 for a Laplacian of -4. Closed form: p_t = N(alpha m / 2, (alpha^2 / 2 + sigma^2) I),
    Laplacian -d / (alpha^2 / 2 + sigma^2); accepted at t = 1e-20, refused from t = 1e-26."""
    m = np.array([1000.0, -700.0])
    tg = TiltedGaussian(lambda v: -0.5 * np.sum((v - m) ** 2, axis=1), lambda v: m - v, 2, n_mc=1024,
                        n_normaliser=2, rng=np.random.default_rng(0))
    x = np.zeros((1, 2))
    t = 1e-20
    exact = -2.0 / (0.5 * np.exp(-2 * t) - np.expm1(-2 * t))
    value, se = tg.divergence_and_se(x, t)
    assert abs(value[0] - exact) < 4 * se[0] < 0.5
    for t in (1e-26, 1e-28):
        with pytest.raises(ValueError, match=r"lost to rounding: .*may reach .*against d / q = 2"):
            tg.divergence(x, t)


def test_a_stein_divergence_with_a_nan_standard_error_is_refused_as_such():
    """Mutant: `se > d / q` for `~(se <= d / q)`, which lets a nan standard error through: at t = 1e-320
    (c / s)^2 overflows and the stein estimate's standard error is nan; it must be named as the
    standard error, not left to a later overflow message. The overflow is the refusal's, not a
    warning too (three "overflow encountered in square" leaked from the estimate's own terms)."""
    tg = _linear_tilt(np.array([1.5, -1.0]), n_mc=64, n_normaliser=2, rng=np.random.default_rng(0),
                      estimator="stein")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"t = 1e-320 .*has standard error nan, more than d / q = 2"):
            tg.divergence(np.zeros((1, 2)), 1e-320)


def test_a_noisy_divergence_names_the_time_of_its_own_row():
    """Mutant: the noisy-divergence message reading t of row 0 for the row it names: with t = [0.5, 1e-3]
    the stein refusal of row 1 said t = 0.5."""
    tg = TiltedGaussian.barron(2, rng=np.random.default_rng(0), n_mc=256, n_normaliser=2, estimator="stein")
    x = np.array([[0.3, -0.5], [1.0, 0.2]])
    with pytest.raises(ValueError, match=r"at x\[1\], t = 0\.001 \(sigma_t = 0\.0447\) has standard error"):
        tg.divergence(x, np.array([0.5, 1e-3]))


def test_a_score_beyond_float32_names_its_own_row():
    """Mutant: _check_finite naming x[0] for any row: the score overflowing float32 at x[1] only was
    reported at x[0]. At t = 0 the score is -x + grad f(x) exactly: 1e300 - 10 on row 1, -1 on row 0."""
    tg = TiltedGaussian(lambda v: np.zeros(len(v)), lambda v: np.where(v > 5.0, 1e300, 0.0), 1, n_mc=2,
                        n_normaliser=2, rng=np.random.default_rng(0))
    x = np.array([[1.0], [10.0]])
    np.testing.assert_array_equal(tg.score(x, 0.0), [[-1.0], [1e300]])
    with pytest.raises(ValueError, match=r"^the Monte-Carlo score at x\[1\] overflows float32"):
        tg.score(x.astype(np.float32), 0.0)


def test_f_returning_a_column_is_refused_by_its_shape():
    """Mutant: _f checking f's size instead of its shape: f returning (m, 1) got past it, to numpy's
    "matmul: Input operand 1 has a mismatch" in the constructor (and through the oracle's reshape)."""
    with pytest.raises(ValueError, match=r"^f must return 8 finite values for 8 points, got shape \(8, 1\)$"):
        TiltedGaussian(lambda v: v[:, :1], None, 2, n_mc=2, n_normaliser=8, rng=np.random.default_rng(0),
                       estimator="stein")


def test_one_monte_carlo_draw_is_refused():
    """Mutant: n_mc's minimum lowered from 2 to 1: one draw gives a score with standard error 0 and no
    covariance for the divergence."""
    with pytest.raises(ValueError, match=r"^n_mc must be .*>= 2"):
        _linear_tilt(np.array([1.0]), n_mc=1, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^n_normaliser must be .*>= 2"):
        _linear_tilt(np.array([1.0]), n_normaliser=1, rng=np.random.default_rng(0))


# -- spec.py --------------------------------------------------------------------------------------


def test_gmm_refuses_a_negative_seed():
    """Mutant: `seed < 0` weakened to `seed < -1`: seed = -1 reached numpy's default_rng, whose error
    names no target parameter."""
    with pytest.raises(ValueError, match=r"^target parameter seed must be >= 0, got -1$"):
        from_spec("gmm:d=2,k=2,radius=1,seed=-1")


def test_gmm_without_a_radius_is_named():
    """Mutant: _gmm's missing-parameter list without radius: 'gmm:d=2,k=2' reached float(None), a
    TypeError naming nothing the user wrote."""
    with pytest.raises(ValueError, match=r"^gmm needs radius: write e\.g\. gmm:d=32,k=4,radius=3,seed=0$"):
        from_spec("gmm:d=2,k=2")


def test_an_upper_case_exponent_of_zero_reads_as_zero():
    """Mutant: _nonzero_literal splitting the mantissa at 'e' only: '0E3' (float 0.0) counted the
    exponent's 3 as a non-zero digit and was refused as below float64's smallest number. Reference:
    float('0E3') == 0.0; and '1E-400' (float 0.0 but not zero) is still refused."""
    assert float("0E3") == 0.0
    target = from_spec("gmm:d=2,k=2,radius=0E3")
    np.testing.assert_array_equal(target.means, np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"^target parameter radius = '1E-400' is below float64's smallest"):
        from_spec("gmm:d=2,k=2,radius=1E-400")


def test_an_empty_value_is_a_malformed_parameter():
    """Mutant: _parameters without its `not value` check: 'ring:std=' said "std must be a number, got ''"
    rather than how to write the list."""
    with pytest.raises(ValueError, match=r"^malformed target parameter 'std=' in ring: write key=value pairs"):
        from_spec("ring:std=")


def test_a_missing_gmm_parameter_is_named_without_a_prefix():
    """Mutant: from_spec re-raising only "target parameter ..." messages as they are: "gmm needs k, radius"
    came back as "target gmm:d=2: gmm needs ...", the constructor-error form."""
    with pytest.raises(ValueError, match=r"^gmm needs k, radius: write e\.g\. gmm:d=32"):
        from_spec("gmm:d=2")


def test_a_full_covariance_record_round_trips():
    """Mutant: from_record's legacy reading (no "covariance_type": a 2-D covariances array is diagonal)
    applied to 3-D arrays too (`ndim >= 2`): to_record writes full covariances without the key, so a
    run with a full-covariance target could not be read back. Reference: the constructor's arrays."""
    cov = np.array([[[1.0, 0.3], [0.3, 2.0]], [[0.5, -0.1], [-0.1, 0.7]]])
    g = GaussianMixture([0.4, 0.6], [[0.0, 1.0], [1.0, 0.0]], cov)
    back = from_record(to_record(g))
    np.testing.assert_array_equal(back.covariances, cov)
    np.testing.assert_array_equal(back.means, g.means)


# -- _checks.py -----------------------------------------------------------------------------------


def test_memory_is_unknown_where_sysconf_gives_minus_one_pages(monkeypatch):
    """Mutant: _memory_bytes testing only the page size: sysconf's -1 pages gave -4096 bytes, and every
    size was refused as "more than this machine's memory" (the docstring's bug)."""
    values = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": -1}
    monkeypatch.setattr(_checks.os, "sysconf", lambda name: values[name])
    assert _checks._memory_bytes() is None
    assert _checks.check_size(10, 4, "n", "n points") == 10


def test_a_numpy_boolean_in_a_list_is_refused():
    """Mutant: reject_bools catching Python's bool only: numpy turns [[np.True_, 0.0]] into float64 1.0
    silently, and a mean of 1.0 was built from a boolean."""
    with pytest.raises(ValueError, match=r"means must hold numbers, got the boolean True at means\[0\]\[0\]"):
        GaussianMixture([1.0], [[np.True_, 0.0]])


def test_a_boolean_is_shown_as_a_boolean_not_as_1():
    """Mutant: shown() without its bool case: estimator=True was reported as "got 1"."""
    with pytest.raises(ValueError, match=r"^estimator must be 'gradient' or 'stein', got True$"):
        TiltedGaussian(lambda x: x[:, 0], None, 2, rng=np.random.default_rng(0), estimator=True)


def test_float32_samples_refuse_a_standard_deviation_above_1e36():
    """Mutant: check_float32_samples' limit raised to 1e37: a float32 sample with standard deviation 6.3e36
    passed, against the documented "standard deviations <= 1e36"."""
    g = GaussianMixture([1.0], [[0.0]], [[4e73]])
    with pytest.raises(ValueError, match=r"standard deviations up to 6\.32e\+36; float32 samples need .* <= 1e36"):
        g.sample(3, np.random.default_rng(0), dtype=np.float32)
    assert np.all(np.isfinite(GaussianMixture([1.0], [[0.0]], [[1e72]]).sample(3, np.random.default_rng(0),
                                                                              dtype=np.float32)))


# -- _predict.py ----------------------------------------------------------------------------------


def test_x0_where_alpha_underflows_is_refused_for_a_mixture_too():
    """Mutant: predict without its alpha_t = 0 check on the posterior-mean path: the Gaussian mixture's
    x0 at OU's t = 800 (alpha_t = exp(-800) = 0) was the prior's mean, where the docstring says x0 needs
    alpha_t > 0 and every other target raises."""
    assert np.exp(-800.0) == 0.0
    with pytest.raises(ValueError, match=r"t = 800\.0: converting score to x0 is not defined there"):
        GaussianMixture.ring().predict(np.zeros((1, 2)), 800.0, OU(), "x0")
