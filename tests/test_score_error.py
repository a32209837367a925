"""score_error_integral and score_error_profile against closed forms.

For a Gaussian target N(0, Sigma0) and the score s = grad log p_t + M x (M fixed), the
error at time t is |M x|^2 with x ~ N(0, Sigma_t), Sigma_t = alpha_t^2 Sigma0 + sigma_t^2 I,
so E|s - grad log p_t|^2 = tr(M^T M Sigma_t). With alpha_t^2 = e^{-B} and
sigma_t^2 = 1 - e^{-B}, and beta dt = dB, the Girsanov-weighted integral is

    int_{t0}^{T} beta/2 tr(M^T M Sigma_t) dt
        = tr(M^T M Sigma0) E + tr(M^T M) ((B(T) - B(t0)) / 2 - E),
    E = (e^{-B(t0)} - e^{-B(T)}) / 2.

A constant shift s = grad log p_t + c has error |c|^2 at every point, which checks the
weights of the estimator without Monte-Carlo error.
"""

import numpy as np
import pytest

from sgm_ref import DDPM, OU, VP, FlowMatching, GaussianMixture, VPCosine
from sgm_ref.metrics import score_error_integral, score_error_profile

D = 3
SIGMA0 = np.array([[1.5, 0.3, 0.0], [0.3, 0.6, -0.2], [0.0, -0.2, 0.9]])
M = np.array([[0.4, -0.1, 0.2], [0.0, 0.3, 0.1], [-0.2, 0.1, 0.25]])
C = np.array([0.1, -0.2, 0.05])
PROCESSES = [OU(), VP(0.1, 20.0)]


def gaussian():
    return GaussianMixture([1.0], np.zeros((1, D)), SIGMA0[None])


def linear_error_score(target, process):
    return lambda x, t: target.score(x, t, process) + x @ M.T


def shifted_score(target, process):
    return lambda x, t: target.score(x, t, process) + C


def exact_integral(process, t0, T):
    B0, B1 = process.integrated_beta(t0), process.integrated_beta(T)
    E = 0.5 * (np.exp(-B0) - np.exp(-B1))
    MtM = M.T @ M
    return np.trace(MtM @ SIGMA0) * E + np.trace(MtM) * (0.5 * (B1 - B0) - E)


def exact_profile(process, ts):
    MtM = M.T @ M
    a2, s2 = process.alpha(ts) ** 2, process.sigma(ts) ** 2
    return a2 * np.trace(MtM @ SIGMA0) + s2 * np.trace(MtM)


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "VP"])
@pytest.mark.parametrize("time_distribution", ["log-uniform", "uniform"])
def test_integral_matches_the_closed_form(process, time_distribution):
    g = gaussian()
    t0, T = 1e-3, 1.0
    value, se = score_error_integral(linear_error_score(g, process), g, process, t0, T, 40_000,
                                     np.random.default_rng(0), time_distribution=time_distribution)
    exact = exact_integral(process, t0, T)
    assert 0 < se < 0.02 * exact
    assert abs(value - exact) < 4 * se


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "VP"])
def test_integral_weights_the_error_by_half_beta(process):
    # uniform times and a constant error |c|^2: every term is (T - t0) beta(t)/2 |c|^2,
    # so the estimate is |c|^2 (T - t0) mean(beta/2), exact for OU (beta = 2)
    g = gaussian()
    t0, T = 1e-2, 2.0 if isinstance(process, OU) else 1.0
    value, se = score_error_integral(shifted_score(g, process), g, process, t0, T, 2000, np.random.default_rng(1),
                                     time_distribution="uniform")
    c2 = float(C @ C)
    if isinstance(process, OU):
        assert value == pytest.approx(c2 * (T - t0), rel=1e-12)
        assert se < 1e-12
    else:
        exact = 0.5 * c2 * (process.integrated_beta(T) - process.integrated_beta(t0))
        assert abs(value - exact) < 4 * se
        assert se > 0


def test_integral_standard_error_describes_the_spread():
    g, process = gaussian(), OU()
    runs = [score_error_integral(linear_error_score(g, process), g, process, 1e-3, 1.0, 500, np.random.default_rng(s))
            for s in range(200)]
    values, ses = np.array(runs).T
    ratio = values.std(ddof=1) / np.sqrt(np.mean(ses**2))
    assert 0.8 < ratio < 1.25


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "VP"])
def test_profile_matches_the_closed_form(process):
    g = gaussian()
    ts = np.array([1e-3, 0.05, 0.3, 1.0])
    errors, ses = score_error_profile(linear_error_score(g, process), g, process, ts, 20_000, np.random.default_rng(2))
    exact = exact_profile(process, ts)
    assert np.all(ses > 0) and np.all(ses < 0.03 * exact)
    assert np.all(np.abs(errors - exact) < 4 * ses)


def test_profile_of_a_constant_error_is_exact():
    g, process = gaussian(), VP(0.1, 20.0)
    errors, ses = score_error_profile(shifted_score(g, process), g, process, [0.01, 0.5, 1.0], 100,
                                      np.random.default_rng(3))
    np.testing.assert_allclose(errors, C @ C, rtol=1e-12)
    np.testing.assert_array_less(ses, 1e-12)


@pytest.mark.parametrize("ts, match", [
    ([0.1 + 0.1j, 0.5], "real"),
    (["0.1", "0.5"], "real"),
    ([0.1, np.nan], "non-finite"),
    ([0.0, 0.5], r"\(0, "),
    ([[0.1, 0.5]], "1-D"),
    ([], "1-D"),
])
def test_profile_rejects_bad_times(ts, match):
    g = gaussian()
    with pytest.raises(ValueError, match=match):
        score_error_profile(lambda x, t: g.score(x, t), g, OU(), ts, 10, np.random.default_rng(0))


# -- extreme inputs (issue 11, item 9): the right argument named --------------------------------


def test_score_error_integral_names_T_not_t():
    g = GaussianMixture([1.0], [[0.0, 0.0]])

    def score(x, t):
        return g.score(x, t, OU())

    # said "t must be finite, got a NaN or inf"
    with pytest.raises(ValueError, match=r"T = 1e\+308 is too large for OU\(\): B\(T\) = int_0\^T beta overflows"):
        score_error_integral(score, g, OU(), 0.01, 1e308, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"T = 1\.7e\+307 and t0 = 1e-300 are too far apart for log-uniform times"):
        score_error_integral(score, g, OU(), 1e-300, 1.7e307, 10, np.random.default_rng(0))
    value, se = score_error_integral(score, g, OU(), 1e-300, 1e300, 10, np.random.default_rng(0))
    assert value == 0.0 and se == 0.0
    value, se = score_error_integral(score, g, OU(), 1e-300, 1e306, 10, np.random.default_rng(0),
                                     time_distribution="uniform")
    assert value == 0.0 and se == 0.0


def test_score_error_refuses_an_error_beyond_float64():
    g = GaussianMixture([1.0], [[0.0, 0.0]])

    def wild(x, t):
        return np.full_like(x, 1e200)

    with pytest.raises(ValueError, match=r"score error integral overflows float64: at t = .* as large as 1e\+200"):
        score_error_integral(wild, g, OU(), 0.01, 1.0, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"squared score error overflows float64 at t = 0\.5 \(ts\[1\]\)"):
        score_error_profile(lambda x, t: np.full_like(x, 1e200 if t[0] == 0.5 else 1.0), g, OU(),
                            [0.1, 0.5], 10, np.random.default_rng(0))


def test_score_error_standard_error_survives_squares_that_overflow():
    # errors of 1e160 are finite, their squares in the variance are not
    g = GaussianMixture([1.0], [[0.0]])
    scores = iter([1e80, 1e80])

    def big(x, t):
        return np.full_like(x, next(scores)) * (1.0 + np.arange(x.shape[0]))[:, None]

    errors, se = score_error_profile(big, g, OU(), [0.5], 4, np.random.default_rng(0))
    assert np.all(np.isfinite(errors)) and np.all(np.isfinite(se)) and se[0] > 1e159


def test_sizes_beyond_numpy_are_named():
    # numpy's "Maximum allowed dimension exceeded" (or an OverflowError) named no argument
    g = GaussianMixture([1.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"^n = 4611686018427387904 asks for .* lower n$"):
        score_error_integral(lambda x, t: g.score(x, t, OU()), g, OU(), 0.01, 1.0, 2**62, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^n = 4611686018427387904 asks for"):
        score_error_profile(lambda x, t: g.score(x, t, OU()), g, OU(), [0.5], 2**62, np.random.default_rng(0))


def test_overflow_inf_reports_the_overflow_and_measures_the_rest():
    """overflow='inf': the overflowing time is inf (se nan), the others are what overflow='raise'
    gives when nothing overflows, drawn in the same order; a bad policy is named."""
    from sgm_ref._validation import ResultOverflowError

    g = GaussianMixture([1.0], [[0.0, 0.0]])

    def half_wild(x, t):
        return np.full_like(x, 1e200) if t[0] == 0.5 else -x

    errors, ses = score_error_profile(half_wild, g, OU(), [0.1, 0.5, 1.0], 10, np.random.default_rng(0),
                                      overflow="inf")
    tame, tame_se = score_error_profile(lambda x, t: -x, g, OU(), [0.1, 0.5, 1.0], 10, np.random.default_rng(0))
    assert errors[1] == np.inf and np.isnan(ses[1])
    np.testing.assert_array_equal(errors[[0, 2]], tame[[0, 2]])
    np.testing.assert_array_equal(ses[[0, 2]], tame_se[[0, 2]])
    value, se = score_error_integral(lambda x, t: np.full_like(x, 1e200), g, OU(), 0.01, 1.0, 10,
                                     np.random.default_rng(0), overflow="inf")
    assert value == np.inf and np.isnan(se)
    with pytest.raises(ResultOverflowError):
        score_error_integral(lambda x, t: np.full_like(x, 1e200), g, OU(), 0.01, 1.0, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="overflow must be 'raise' or 'inf', got 'ignore'"):
        score_error_profile(half_wild, g, OU(), [0.1], 10, np.random.default_rng(0), overflow="ignore")


@pytest.mark.parametrize("time_distribution", ["log-uniform", "uniform"])
@pytest.mark.parametrize("process", [VPCosine(), FlowMatching(), DDPM("squaredcos_cap_v2"),
                                     DDPM("squaredcos_cap_v2", num_train_timesteps=200)], ids=repr)
def test_integral_is_honest_where_g2_has_no_bound(process, time_distribution):
    """To T = t_max, with times from q alone a few draws near t_max carried the integral (Flow:
    spread 5.9 across seeds against a stated standard error of 1.8; DDPM's capped cosine
    schedule, whose last step has g^2 ~ 6900: median run 0.61 of the integral, and 0.72 with
    200 timesteps, which a first rule of the fix missed); with half
    the times drawn with density g^2 the estimate centres on the quadrature and its
    standard error matches the spread."""
    from scipy import integrate

    target = GaussianMixture([1.0], [[1.0, -0.5]], [[[0.5, 0.0], [0.0, 2.0]]])
    lam, t0, T, c = np.array([0.5, 2.0]), 1e-3, process.t_max, 0.7

    def integrand(t):  # the score 0.7 of the exact one: |s - grad log p|^2 = 0.09 sum 1 / v
        v = float(process.alpha(t)) ** 2 * lam + float(process.sigma2(t))
        return 0.5 * float(process.g2(t)) * (1 - c) ** 2 * np.sum(1 / v)

    points = np.unique(np.concatenate([np.geomspace(t0, 0.5, 30), T - (T - 0.5) * np.geomspace(1, 1e-12, 60)]))
    if isinstance(process, DDPM):  # g^2 is constant between knots: break there
        N = process.num_train_timesteps
        points = np.unique(np.concatenate([[t0, T], np.arange(1, N + 1) / N]))
        points = points[points >= t0]
    truth = sum(integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
                for a, b in zip(points[:-1], points[1:]))
    runs = np.array([score_error_integral(lambda x, t: c * target.score(x, t, process), target, process, t0, T, 1000,
                                          np.random.default_rng(seed), time_distribution=time_distribution)
                     for seed in range(60)])
    values, ses = runs[:, 0], runs[:, 1]
    assert abs(values.mean() - truth) < 4 * values.std() / np.sqrt(values.size)
    assert 0.75 < values.std() / ses.mean() < 1.3, (values.std(), ses.mean())


@pytest.mark.parametrize("schedule, flagged", [
    (DDPM(), False), (DDPM("scaled_linear", 0.00085, 0.012), False), (DDPM("linear", 1e-4, 0.5), False),
    (DDPM("squaredcos_cap_v2"), True), (DDPM("squaredcos_cap_v2", num_train_timesteps=5), True),
    (DDPM("linear", 1e-4, 0.999, 10), True), (DDPM("scaled_linear", 1e-4, 0.99, 100), True)], ids=repr)
def test_which_ddpm_schedules_draw_times_by_g2(schedule, flagged):
    """Usual schedules draw as before (bit for bit); those with a step whose beta is near 1
    draw by g^2. A review measured the last three, unflagged by the first rule, 8-12% of runs
    3 standard errors low at n = 200 under log-uniform times (0.5% flagged)."""
    assert schedule._times_by_g2 is flagged


def test_score_error_integral_names_T_where_sigma_T_overflows():
    """EDM at T = 1e200 (sigma_T^2 = 1e400): was refused by the perturbation at a drawn time,
    "t = 4.67e+164: sigma_t^2 overflows ... use a smaller t", naming no argument given."""
    from sgm_ref import EDM

    g = GaussianMixture([1.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"^T = 1e\+200 is too large for EDM\(t_max=inf\): sigma_T\^2 overflows "
                                         r"float64; use a T with sigma_T below about 1e154$"):
        score_error_integral(lambda x, t: g.score(x, t, EDM()), g, EDM(), 1e-3, 1e200, 10, np.random.default_rng(0))


def test_float32_points_beyond_float32_are_refused_before_the_score_sees_them():
    """EDM at t = 1e39: x_t ~ 1e39 > float32's 3.4e38. The cast made the points inf (a
    RuntimeWarning only) and the score was called on them: a score -x / (1 + t^2) returned
    -inf and was blamed ("score returned non-finite values"), one ignoring x was measured."""
    import warnings

    from sgm_ref import EDM

    g = GaussianMixture([1.0], [[0.0, 0.0]])
    seen = []

    def score(x, t):
        seen.append(bool(np.all(np.isfinite(x))))
        return (-x / (1.0 + t[:, None] ** 2)).astype(x.dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "overflow encountered in cast"
        with pytest.raises(ValueError, match=r"^at t = 1e\+39 the points x_t reach .*, beyond float32's range "
                                             r"\(the score is called in dtype float32\): use dtype float64, or "
                                             r"smaller times \(or a smaller target\)$"):
            score_error_profile(score, g, EDM(), [1.0, 1e39], 100, np.random.default_rng(0), dtype=np.float32)
        with pytest.raises(ValueError, match=r"beyond float32's range .* a smaller T "):
            score_error_integral(score, g, EDM(), 1e-3, 1e39, 100, np.random.default_rng(0), dtype=np.float32)
    assert seen == [True]  # t = 1.0 only
    # just inside float32's range the points pass, all finite
    errors, _ = score_error_profile(score, g, EDM(), [1e37], 4, np.random.default_rng(0), dtype=np.float32)
    assert seen[-1] and np.isfinite(errors[0])


def test_a_score_that_scales_its_arguments_in_place_is_measured_on_what_it_returned():
    """The exact score, which also scaled its t (or x) in place after use, as an in-place unit
    conversion does: its error is exactly 0. The metrics used the t they had given it for the
    oracle and g^2 afterwards: profile errors 0.082 and 0.33, integral 0.47, for a score that
    returned the truth."""
    from sgm_ref import EDM
    from sgm_ref.metrics.bound import tv_upper_bound

    g = GaussianMixture([1.0], [[0.5]], [[[0.3]]])
    for process in (VP(), EDM()):
        def scribbling(x, t):
            s = g.score(x, t, process)
            t *= 0.5
            x *= 0.5
            return s

        errors, ses = score_error_profile(scribbling, g, process, [0.1, 0.5], 100, np.random.default_rng(0))
        assert np.all(errors == 0) and np.all(ses == 0)
        assert score_error_integral(scribbling, g, process, 1e-3, 1.0, 1000, np.random.default_rng(0)) == (0.0, 0.0)
        for method in ("euler_maruyama", "exponential"):
            b = tv_upper_bound(scribbling, g, process, 1e-3, 1.0, "geometric", method, 100, np.random.default_rng(0),
                               n_steps=5)
            exact = tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, 1e-3, 1.0, "geometric", method,
                                   100, np.random.default_rng(0), n_steps=5)
            np.testing.assert_array_equal(b.kl_path_per_step, exact.kl_path_per_step)  # common draws


def test_a_T_whose_g2_overflows_is_named_as_T():
    # VE(0.01, 1e153) at T = 1: sigma_T^2 = 1e306 is finite, g(T)^2 = 2 sigma_T^2 log(1e155) = 7.1e308
    # is not. Since process.g2 raises itself ("t = 1.0: g(t)^2 overflows ... use a smaller t"), that
    # message had replaced the range check's, which names the argument, T
    from sgm_ref.evaluation import exact_score_loss
    from sgm_ref.processes import VE
    from sgm_ref.targets import GaussianMixture

    g = GaussianMixture(np.array([0.5, 0.5]), np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([np.eye(2) * 0.1] * 2))
    p = VE(0.01, 1e153)
    assert np.isfinite(p.sigma2(1.0)) and 2 * np.log(1e155) > np.finfo(np.float64).max / 1e306
    message = r"^T = 1\.0 is too large for VE\(.*\): g\(T\)\^2 overflows float64; use a smaller T$"
    with pytest.raises(ValueError, match=message):
        score_error_integral(g.score, g, p, 1e-3, 1.0, 64, np.random.default_rng(0))
    with pytest.raises(ValueError, match=message):
        exact_score_loss(g, p, t0=1e-3, T=1.0, weighting="sigma2", time_distribution="log-uniform", n=64,
                         rng=np.random.default_rng(0))


def test_points_already_non_finite_in_float64_do_not_blame_the_dtype():
    # float64 points x_t that are nan before any cast (SubVP's forward transition took 0/0 past
    # alpha's underflow) were reported as "beyond float64's range ... use dtype float64" of a
    # float64 run
    from sgm_ref.metrics.score_error import _points_in

    for dtype in (np.float64, np.float32):
        with pytest.raises(ValueError, match=r"^at t = 0\.5 the points x_t are not finite in float64 \(a coordinate "
                                             r"is nan\); use a smaller T \(or a smaller target\)$"):
            _points_in(np.array([[0.0, 0.0], [1.0, np.nan]]), dtype, np.array([0.25, 0.5]), "a smaller T")


def _profile_draws(g, process, ts, n, seed):
    """Replay score_error_profile's draws (per t: x0 ~ p_0, then the perturbation) and the
    oracle's |grad log p_t|^2 on them, computed here independently."""
    rng = np.random.default_rng(seed)
    points = []
    for t in ts:
        tk = np.full(n, t)
        points.append((tk, process.perturb(g.sample(n, rng), tk, rng)[0]))
    return points, rng


def test_profile_oracle_is_on_the_same_points_and_keeps_the_error_s_bits():
    """oracle=True: E|grad log p_t|^2 and the relative error on the points it scored.

    _score_report took the scale from other draws, so for s = c x exact, whose relative
    error is exactly (1 - c)^2 at every t, c = 0.3 on the ring at n = 300 read 0.384 to
    0.601 (true 0.49) at times 0.01, 0.3 and 2 over seeds 0 to 19; on the same points it is
    (1 - c)^2 to rounding."""
    g, process, ts, n = GaussianMixture.ring(), OU(), np.array([1e-3, 0.05, 0.7, 5.0]), 300
    for c in (0.3, 0.5, 1.7):
        def s(x, t, c=c):
            return c * g.score(x, t, process)
        rng = np.random.default_rng(3)
        plain = score_error_profile(s, g, process, ts, n, np.random.default_rng(3))
        out = score_error_profile(s, g, process, ts, n, rng, oracle=True)
        np.testing.assert_array_equal(out.errors, plain[0])  # the same bits as without oracle
        np.testing.assert_array_equal(out.standard_errors, plain[1])
        points, replay = _profile_draws(g, process, ts, n, 3)
        assert rng.random() == replay.random()  # no extra draws
        q = [np.sum(g.score(x, tk, process) ** 2, axis=1) for tk, x in points]
        np.testing.assert_allclose(out.oracle_mean_square, [v.mean() for v in q], rtol=1e-14)
        np.testing.assert_allclose(out.relative, (1 - c) ** 2, rtol=2e-15)
        assert np.all(out.relative_standard_errors <= 1e-15 * (1 - c) ** 2)


def test_profile_relative_standard_error_is_the_delta_method_s_and_matches_the_spread():
    g, process, ts = GaussianMixture.ring(), OU(), np.array([0.01, 0.3, 2.0])

    def s(x, t):
        return -x  # N(0, I)'s score: a relative error that varies point to point
    out = score_error_profile(s, g, process, ts, 200, np.random.default_rng(5), oracle=True)
    points, _ = _profile_draws(g, process, ts, 200, 5)
    for k, (tk, x) in enumerate(points):
        exact = g.score(x, tk, process)
        e, q = np.sum((s(x, tk) - exact) ** 2, axis=1), np.sum(exact**2, axis=1)
        r = e.mean() / q.mean()
        cov = np.cov(e, q)  # ddof 1: var(e) - 2 R cov(e, q) + R^2 var(q), over n mean(q)^2
        se = np.sqrt((cov[0, 0] - 2 * r * cov[0, 1] + r**2 * cov[1, 1]) / (200 * q.mean() ** 2))
        assert out.relative[k] == pytest.approx(r, rel=1e-14, abs=0)
        assert out.relative_standard_errors[k] == pytest.approx(se, rel=1e-9, abs=0)
    # over 400 seeds the stated standard error is the relative error's spread (measured
    # ratios 1.003, 1.024, 1.060; a spread of 400 draws is itself ~3.5% off)
    runs = [score_error_profile(s, g, process, ts, 200, np.random.default_rng(seed), oracle=True)
            for seed in range(400)]
    spread = np.std([r.relative for r in runs], axis=0, ddof=1)
    stated = np.mean([r.relative_standard_errors for r in runs], axis=0)
    assert np.all(np.abs(spread / stated - 1) < 0.12)


def test_profile_oracle_refuses_a_non_bool():
    g = GaussianMixture.ring()
    with pytest.raises(ValueError, match="oracle must be True or False"):
        score_error_profile(lambda x, t: x, g, OU(), [0.1], 10, np.random.default_rng(0), oracle="yes")


def test_a_non_finite_score_met_only_in_the_integral_names_the_function_and_the_time():
    """score_error_integral called call_score without saying where: a score that is NaN
    only below t = 0.02 (never at the profile's times) read "score returned non-finite
    values", with neither the integral nor a t. Its rows have times of their own; the first
    non-finite row's time is named, with the function and [t0, T]."""
    g = GaussianMixture.ring()
    seen = []

    def score(x, t):
        seen.append(t.copy())
        s = g.score(x, t, OU())
        s[t < 0.02, 1] = np.nan
        return s

    errors, _ = score_error_profile(score, g, OU(), [0.1, 1.0], 4, np.random.default_rng(0))
    assert np.all(np.isfinite(errors))
    with pytest.raises(ValueError) as info:
        score_error_integral(score, g, OU(), 0.01, 1.0, 50, np.random.default_rng(0))
    t = seen[-1]
    i = int(np.argmax(t < 0.02))
    assert str(info.value) == (f"score returned non-finite values at t = {t[i]:.6g} (row {i}, {np.sum(t < 0.02)} of 50 "
                               "rows non-finite) in score_error_integral (one call with its 50 times drawn in "
                               "[t0, T] = [0.01, 1])")
    # call_score's other refusals say where too, in their own order
    with pytest.raises(ValueError, match=r"^score returned shape \(50, 1\) in score_error_integral \(one call "):
        score_error_integral(lambda x, t: x[:, :1], g, OU(), 0.01, 1.0, 50, np.random.default_rng(0))


@pytest.mark.parametrize("model_dtype, dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_a_score_model_of_another_dtype_is_named_as_dtype_before_any_draw(model_dtype, dtype):
    """A float32 ScoreModel with the default dtype refused, from inside the profile, "x must have
    dtype float32 (the network's), got float64; cast it explicitly", naming an x the caller did
    not pass, after the rng had drawn the points; as sample and tv_upper_bound, dtype is named."""
    from sgm_ref import MLP, ScoreModel

    model = ScoreModel(MLP(2, (8,), dtype=model_dtype, rng=0), OU())
    name = np.dtype(model_dtype).name
    for call in (lambda rng: score_error_profile(model, GaussianMixture.ring(), OU(), [0.1, 1.0], 10, rng, dtype=dtype),
                 lambda rng: score_error_integral(model, GaussianMixture.ring(), OU(), 0.01, 1.0, 10, rng, dtype=dtype)):
        rng = np.random.default_rng(0)
        state = rng.bit_generator.state
        with pytest.raises(ValueError, match=rf"dtype must be the model's dtype, {name}, got "
                                             rf"{np.dtype(dtype).name}: .* pass dtype=np.{name}"):
            call(rng)
        assert rng.bit_generator.state == state
