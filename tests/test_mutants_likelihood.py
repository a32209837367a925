"""Tests written by mutation testing of sgm_ref/likelihood.py: each kills a mutated line that the
other tests (tests/test_likelihood*.py, the likelihood tests of tests/test_mutants_nn.py) let
through, named in its docstring, against an independent reference (mpmath, scipy's solve_ivp,
the exact trace, or the behaviour the docstrings state)."""
import numpy as np
import pytest

from sgm_ref.likelihood import log_prob, nll_lines, nll_report, prior_log_prob
from sgm_ref.processes import EDM, OU, VE, VP
from sgm_ref.targets import GaussianMixture


def _mixture3(seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((3, 3, 3))
    cov = A @ A.transpose(0, 2, 1) / 3 + 0.2 * np.eye(3)
    return GaussianMixture(np.array([0.2, 0.5, 0.3]), rng.standard_normal((3, 3)), cov, "full")


def test_prior_log_prob_where_sigma_T_squared_is_subnormal_matches_mpmath():
    """EDM at T = 1e-158 and 1e-161: sigma_T^2 = 1e-316 and 1e-322 are subnormal (fewer than 53
    bits), so log sigma_T^2 is taken as 2 log sigma_T. Mutant survived: `s2 >= tiny` -> `s2 > 0` in
    prior_log_prob (log of the subnormal: 1.6e-8 and 1.2e-2 nats off; the tests covered sigma_T^2
    normal or underflowed to 0). Against mpmath at 50 digits."""
    mpmath = pytest.importorskip("mpmath")
    process = EDM(t_max=1e300)
    with mpmath.workdps(50):
        for T in (1e-158, 1e-161):
            y = np.array([[0.3, -1.0], [0.0, 0.1], [2.5, 1.7]]) * T
            s = mpmath.mpf(T)
            want = [float(-mpmath.log(2 * mpmath.pi * s * s) - (mpmath.mpf(a) ** 2 + mpmath.mpf(b) ** 2) / (2 * s * s))
                    for a, b in y]
            np.testing.assert_allclose(prior_log_prob(process, y, T), want, rtol=4e-16, atol=0)


def test_the_finite_difference_step_is_each_points_own_with_several_probes():
    """Hutchinson's finite-difference step h = 1e-5 (1 + max_j |x_j|) is each point's own, so a
    point's estimate does not depend on the rest of the batch (the module's comment), also with
    several probes per point. Mutant survived: np.repeat -> np.tile of the per-point steps (the
    (n m) shifted rows then took other points' steps; the test of this used one probe). d = 2 with
    2 Rademacher probes covers both sign classes: the mean is the exact trace, to the difference's
    O(h^2) bias (1e-8 relative here)."""
    mix = GaussianMixture([0.5, 0.5], [[-0.5, 0.2], [0.5, -0.1]], [[0.05**2, 0.08**2], [0.06**2, 0.05**2]], "diag")
    x = mix.sample(6, np.random.default_rng(1))
    score = lambda y, t: mix.score(y, t, VE())  # noqa: E731  (finite differences)
    kw = dict(solver="heun", n_steps=8, divergence="hutchinson", n_probes=2)
    alone = log_prob(score, VE(), x, 1e-3, 1.0, rng=np.random.default_rng(2), **kw)
    beside = log_prob(score, VE(), np.vstack([x, [[500.0, -300.0]]]), 1e-3, 1.0, rng=np.random.default_rng(2), **kw)
    assert np.all(alone.se == 0.0)
    np.testing.assert_array_equal(beside.log_q[:6], alone.log_q)
    exact = log_prob(mix, VE(), x, 1e-3, 1.0, solver="heun", n_steps=8)
    np.testing.assert_allclose(beside.log_q[:6], exact.log_q, rtol=1e-8)


@pytest.mark.parametrize("d", [21, 22])
def test_rademacher_probes_are_distinct_sign_classes_up_to_d_21_and_plus_minus_one_beyond(d):
    """The module docstring: "Rademacher probes up to d = 21 are distinct up to sign, drawn without
    replacement" (each class with its last coordinate +1), and beyond, independent +-1 entries. The
    probes are read where a jvp= callable receives them. Mutants survived: `d <= 21` -> `d < 21`
    (d = 21 drew independent probes: last coordinates -1, classes repeated), and the d > 21 probes
    drawn as 0 / 1 instead of +-1 (no test had d > 21)."""
    seen = []

    def jvp(y, t, V):
        seen.append(V.copy())
        return -2.0 * V

    n, m = 40, 3
    x = np.zeros((n, d))
    res = log_prob(lambda y, t: -2.0 * y, OU(), x, 0.1, 1.0, divergence="hutchinson", n_probes=m, jvp=jvp,
                   rng=np.random.default_rng(0), solver="heun", n_steps=1)
    V = seen[0]
    assert V.shape == (n, m, d) and all(np.array_equal(v, V) for v in seen)  # drawn once, kept
    assert set(np.unique(V)) == {-1.0, 1.0}
    if d <= 21:
        assert np.all(V[:, :, -1] == 1.0)
        classes = {(i, tuple(p)) for i in range(n) for p in V[i]}
        assert len(classes) == n * m  # no point has a class twice
    else:
        assert 0.3 < np.mean(V[:, :, -1] == 1.0) < 0.7
    # J = -2 I: every +-1 probe's eps^T J eps is -2 d, the exact trace, so div v = d f - g^2 / 2 (-2 d) = d
    # (OU: f = -1, g^2 = 2) over t = 0.1 to 1, and the standard error is 0
    np.testing.assert_allclose(res.integral, 0.9 * d, rtol=1e-14)
    np.testing.assert_array_equal(res.se, np.zeros(n))


def test_a_heun_grid_with_a_repeated_time_is_refused():
    """log_prob's docstring: grid "increasing" (the message: "strictly increasing times"). Mutant
    survived: `np.diff(g) <= 0` -> `< 0` in _check_grid (a repeated time was taken as a step of
    length 0; the test had only a decreasing grid)."""
    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^grid must be a 1-D array of at least 2 strictly increasing times"):
        log_prob(ring, OU(), x, 0.0, 1.0, solver="heun", grid=[0.0, 0.5, 0.5, 1.0])


def test_rk45_uses_rtol_and_atol_as_given():
    """log_prob's rk45 is scipy's solve_ivp(method="RK45", rtol, atol), to the bit. Mutant survived:
    rtol and atol swapped in the RK45 call (every test passed rtol == atol). Here rtol = 1e-3,
    atol = 1e-9 against solve_ivp run on the ODE written out here."""
    from scipy.integrate import solve_ivp

    ring, process = GaussianMixture.ring(), OU()
    x = ring.sample(5, np.random.default_rng(3))
    n, d = x.shape
    res = log_prob(ring, process, x, 0.05, 3.0, rtol=1e-3, atol=1e-9)

    def rhs(t, y):
        xt, ts = y[:n * d].reshape(n, d), np.full(n, t)
        f, g2 = float(process.f(t)), float(process.g2(t))
        return np.concatenate([(f * xt - 0.5 * g2 * ring.score(xt, ts, process)).ravel(),
                               d * f - 0.5 * g2 * ring.divergence(xt, ts, process)])

    sol = solve_ivp(rhs, (0.05, 3.0), np.concatenate([x.ravel(), np.zeros(n)]), method="RK45", rtol=1e-3, atol=1e-9)
    assert res.n_evaluations == sol.nfev
    np.testing.assert_array_equal(res.endpoint, sol.y[:n * d, -1].reshape(n, d))
    np.testing.assert_array_equal(res.integral, sol.y[n * d:, -1])


def test_nll_report_draws_the_probes_right_after_the_samples_where_p_t0_is_p_0():
    """nll_report's docstring: rng gives "the samples, then (Hutchinson) the probes"; at t0 = 0 of OU
    (p_t0 = p_0) nothing is drawn between them. Mutant survived: the forward-process draw made always
    (it advanced rng before the probes; the test of the stream used the exact divergence, which draws
    nothing). d = 3, 2 probes of the 4 sign classes: the probes move log q."""
    target, ou = _mixture3(), OU()
    for t0 in (0.0, 0.05):
        r = nll_report(target, target, ou, t0=t0, T=3.0, n=4, rng=np.random.default_rng(6),
                       divergence="hutchinson", n_probes=2)
        rng = np.random.default_rng(6)
        x = target.sample(4, rng)
        if t0 > 0:
            x = ou.perturb(x, t0, rng)[0]
        res = log_prob(target, ou, x, t0, 3.0, divergence="hutchinson", n_probes=2, rng=rng, rtol=1e-5, atol=1e-5)
        assert r["model_nll"]["value"] == float(np.mean(-res.log_q)), t0


def test_nll_report_refuses_one_point_before_sampling():
    """nll_report's docstring: n >= 2 (a standard error needs two points). Mutant survived: minimum
    1 in its check_count (n = 1 gave standard errors of NaN under a RuntimeWarning). Refused before
    rng is drawn from."""
    ring = GaussianMixture.ring()
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(ValueError, match=r"^n must be an integer >= 2, got 1$"):
        nll_report(ring, ring, OU(), t0=0.05, T=1.0, n=1, rng=rng)
    assert rng.bit_generator.state == state


def test_nll_lines_of_an_entry_of_an_earlier_version_say_exact():
    """Reports of earlier versions have no "target_log_prob" or "every_sign_class" (their target's
    log p_t0 was a mixture's, exact; evaluation.markdown still renders them, as in
    tests/test_evaluation.py). Mutant survived: the missing key read as "monte carlo" in nll_lines."""
    entry = {"n": 50, "t0": 0.001, "T": 5.0, "divergence": "exact", "n_probes": None, "rtol": 1e-5, "atol": 1e-5,
             "model_nll": {"value": 2.1, "standard_error": 0.2}, "target_nll": {"value": 2.104, "standard_error": 0.2},
             "kl_gap": {"value": -0.004, "standard_error": 0.003}}
    text = "\n".join(nll_lines(entry))
    assert "  target (exact log p_t0): 2.104 ± 0.2" in text and "Monte-Carlo" not in text
    assert "RK45 rtol 1e-05, exact divergence): 2.1 ± 0.2" in text


def test_gaussian_probes_are_standard_normal():
    """log_prob's probes="gaussian": eps ~ N(0, I), drawn once per point (read where a jvp=
    callable receives them). Mutant survived: the Gaussian draws replaced by their signs (independent
    Rademacher probes: still unbiased, and the coverage test's d = 3 figure still fell in its band).
    Against scipy's Kolmogorov-Smirnov test of N(0, 1) on the 3,000 entries."""
    from scipy import stats

    seen = []

    def jvp(y, t, V):
        seen.append(V.copy())
        return -V

    x = np.zeros((200, 3))
    log_prob(lambda y, t: -y, OU(), x, 0.1, 1.0, divergence="hutchinson", probes="gaussian", n_probes=5, jvp=jvp,
             rng=np.random.default_rng(0), solver="heun", n_steps=1)
    V = seen[0]
    assert V.shape == (200, 5, 3) and np.array_equal(seen[1], V)
    assert stats.kstest(V.ravel(), "norm").pvalue > 1e-3


def test_negative_times_are_refused_naming_them():
    """t0 and T >= 0 (the docstrings: 0 <= t0 < T <= process.t_max). Mutants survived: the lower bound
    dropped from prior_log_prob's T (VP's prior N(0, I) was returned at T = -1), log_prob's t0 (OU
    from t0 = -0.5 integrated silently) and nll_report's t0 (refused later by the forward process,
    naming its "t", after rng had been drawn from)."""
    ring = GaussianMixture.ring()
    x = np.array([[0.5, -0.25], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^T must be >= 0\.0, got -1\.0$"):
        prior_log_prob(VP(), x, -1.0)
    with pytest.raises(ValueError, match=r"^t0 must be >= 0\.0, got -0\.5$"):
        log_prob(ring, OU(), x, -0.5, 1.0)
    rng = np.random.default_rng(0)
    state = rng.bit_generator.state
    with pytest.raises(ValueError, match=r"^t0 must be >= 0\.0, got -0\.1$"):
        nll_report(ring, ring, OU(), t0=-0.1, T=1.0, n=3, rng=rng)
    assert rng.bit_generator.state == state


def test_an_overflowing_finite_difference_is_named_as_hutchinsons_not_a_divergence_callable():
    """A finite-difference J eps whose difference overflows (a score of +-1e308 either side of x_t) is
    named as Hutchinson's eps^T J eps, with the largest |score|. Mutant survived: that check dropped in
    rates (the drift term's check then blamed "the score's divergence ... (or the divergence callable,
    or jvp)", neither of which was passed). The difference's overflow warning is the caller's setting
    (log_prob runs the score under it), silenced here."""
    x = np.array([[0.5, -0.25], [1.0, 2.0]])

    def score(y, t):
        return np.where(y > 0.5, 1e308, -1e308)

    with np.errstate(over="ignore"):
        with pytest.raises(ValueError, match=r"^the score's divergence \(Hutchinson's eps\^T J eps\) at t = 0\.1 "
                                             r"overflows float64: the score's values \(largest \|score\| 1e\+308\)"):
            log_prob(score, OU(), x, 0.1, 1.0, divergence="hutchinson", rng=np.random.default_rng(0),
                     solver="heun", n_steps=2)


def test_a_target_like_scores_shape_is_checked():
    """An object with score, divergence and log_prob is used as a target (its score is not passed
    through call_score): a score of shape (n, 1) in d = 2 is refused naming the score and t.
    Mutant survived: the shape check in rates dropped (the (n, 1) score then broadcast into the
    drift and log_q was returned; the other tests' targets were sgm_ref's own)."""
    ring = GaussianMixture.ring()

    class Narrow:
        def score(self, x, t, process):
            return ring.score(x, t, process)[:, :1]

        def divergence(self, x, t, process):
            return ring.divergence(x, t, process)

        def log_prob(self, x, t, process=None):
            return ring.log_prob(x, t, process)

    x = ring.sample(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^the score at t = 0\.1 is not 3 x 2 finite numbers$"):
        log_prob(Narrow(), OU(), x, 0.1, 1.0, solver="heun", n_steps=2)


def test_a_divergence_integral_that_overflows_is_refused_not_returned():
    """A divergence of -1.7e308 (finite, and so is each rate d f - g^2 / 2 div s = 1.7e308 of OU) sums
    beyond float64 over a Heun step: log_prob refuses, naming the overflow. Mutant survived: the check
    of the endpoint and integral dropped (log_q = inf was returned for finite input)."""
    x = np.array([[0.5, -0.25], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^the ODE's solution overflowed \(non-finite endpoint or divergence "
                                         r"integral\): the largest \|x\| is 2 \(at t0\)"):
        log_prob(lambda y, t: -y, OU(), x, 0.1, 1.0, divergence=lambda y, t: np.full(len(y), -1.7e308),
                 solver="heun", n_steps=2)


def test_a_prior_or_jvp_of_the_right_size_but_another_shape_is_refused():
    """prior(y) must return (n,) and a jvp the tangents' shape (n, k, d), not just as many numbers.
    Mutants survived: the shape checks of _check_div and _check_jvp weakened to sizes (a prior of
    shape (n, 1) then broadcast log_q to (n, n), returned; a jvp of shape (n, d) for one probe met
    numpy's einsum error, naming neither jvp nor the shape wanted)."""
    ring = GaussianMixture.ring()
    x = ring.sample(3, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^prior\(y\) \(the prior's log-density at the endpoint\) must be 3 finite "
                                         r"numbers, got shape \(3, 1\)$"):
        log_prob(ring, OU(), x, 0.1, 1.0, prior=lambda y: ring.log_prob(y, 1.0, OU())[:, None])
    with pytest.raises(ValueError, match=r"^jvp must return finite values of the tangents' shape \(3, 1, 2\), got "
                                         r"shape \(3, 2\) at t = 0\.1$"):
        log_prob(lambda y, t: ring.score(y, t, OU()), OU(), x, 0.1, 1.0, divergence="hutchinson",
                 rng=np.random.default_rng(0), jvp=lambda y, t, V: -V[:, 0, :], solver="heun", n_steps=2)


def test_the_score_runs_under_the_callers_floating_point_settings():
    """log_prob runs the score under the caller's np.errstate (its comment): a caller who asks
    over="raise" gets the FloatingPointError of an overflow inside the score. Mutant survived: the
    score run under errstate(all="ignore") (the overflow was hidden)."""
    def score(y, t):  # -y, through an exp that overflows to inf and is then clipped away
        return -y + np.minimum(np.exp(np.full_like(y, 800.0)), 0.0)

    x = np.array([[0.5, -0.25], [1.0, 2.0]])
    with np.errstate(over="raise"):
        with pytest.raises(FloatingPointError, match="overflow"):
            log_prob(score, OU(), x, 0.1, 1.0, divergence=lambda y, t: np.full(len(y), -2.0), solver="heun",
                     n_steps=2)
    with np.errstate(over="ignore"):
        res = log_prob(score, OU(), x, 0.1, 1.0, divergence=lambda y, t: np.full(len(y), -2.0), solver="heun",
                       n_steps=2)
    np.testing.assert_array_equal(res.integral, np.zeros(2))  # div v = d f - g^2 / 2 (-d) = 0 for OU
