"""The targets' divergence (the Laplacian of log p_t) against finite differences of their
score and, for a small full-covariance mixture, against mpmath at 30 digits."""

import mpmath
import numpy as np
import pytest

from sgm_ref.processes import EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine
from sgm_ref.targets import GaussianMixture, ProductMixture, TiltedGaussian

PROCESSES = [OU(), VP(), VPCosine(), SubVP(), VE(), EDM(), FlowMatching()]


def fd_divergence(target, x, t, process, h=1e-5):
    """sum_j (s_j(x + h e_j) - s_j(x - h e_j)) / 2h: error O(h^2 |d^3 s|) + O(eps |s| / h)."""
    n, d = x.shape
    out = np.zeros(n)
    for j in range(d):
        e = np.zeros(d)
        e[j] = h
        out += (target.score(x + e, t, process)[:, j] - target.score(x - e, t, process)[:, j]) / (2 * h)
    return out


def mixtures(d=4, K=3, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, d, d))
    full = A @ A.transpose(0, 2, 1) + 0.3 * np.eye(d)
    w = np.array([0.2, 0.5, 0.3])
    mu = rng.standard_normal((K, d))
    return {
        "identity": GaussianMixture(w, mu),
        "full": GaussianMixture(w, mu, full, "full"),
        "diag": GaussianMixture(w, mu, rng.uniform(0.2, 2.0, (K, d)), "diag"),
        "tied": GaussianMixture(w, mu, full[0], "tied"),
        "spherical": GaussianMixture(w, mu, np.array([0.3, 1.0, 2.0]), "spherical"),
        "product": ProductMixture(np.tile([0.3, 0.7], (d, 1)), rng.standard_normal((d, 2)),
                                  rng.uniform(0.4, 1.5, (d, 2))),
    }


@pytest.mark.parametrize("kind", ["identity", "full", "diag", "tied", "spherical", "product"])
@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_divergence_matches_finite_differences_of_the_score(kind, process):
    target = mixtures()[kind]
    rng = np.random.default_rng(1)
    x = 1.5 * rng.standard_normal((6, 4))
    lo, hi = process.time_range
    for t in (lo, 0.05 * min(hi, 10.0), 0.5 * min(hi, 10.0)):
        exact = target.divergence(x, t, process)
        fd = fd_divergence(target, x, t, process)
        # the FD error (h^2 s''' and roundoff eps |s| / h) is below 1e-7 relative here
        assert exact.shape == (6,) and exact.dtype == np.float64
        np.testing.assert_allclose(exact, fd, rtol=1e-7, atol=1e-7 * np.max(np.abs(fd)))


def test_divergence_one_time_per_row_equals_row_by_row():
    target = mixtures()["full"]
    x = np.random.default_rng(2).standard_normal((5, 4))
    t = np.linspace(0.1, 2.0, 5)
    each = np.array([target.divergence(x[i:i + 1], t[i], OU())[0] for i in range(5)])
    np.testing.assert_allclose(target.divergence(x, t, OU()), each, rtol=1e-14, atol=0)


def test_divergence_of_one_gaussian_is_minus_the_trace_of_its_precision():
    cov = np.array([[2.0, 0.3], [0.3, 0.5]])
    g = GaussianMixture([1.0], [[0.4, -1.0]], cov[None], "full")
    x = np.random.default_rng(3).standard_normal((4, 2))
    a, s = OU().marginal(0.7)
    want = -np.trace(np.linalg.inv(a * a * cov + s * s * np.eye(2)))
    np.testing.assert_allclose(g.divergence(x, 0.7), np.full(4, want), rtol=1e-14)


def test_divergence_against_mpmath():
    """A 2-D two-component full-covariance mixture: the Laplacian of log p_t by mpmath.diff."""
    with mpmath.workdps(30):  # not mp.dps = 30, which would stay set for every later test
        w = [0.35, 0.65]
        mu = [[1.0, -0.5], [-1.2, 0.8]]
        cov = [[[1.0, 0.4], [0.4, 0.6]], [[0.3, -0.1], [-0.1, 0.9]]]
        target = GaussianMixture(w, mu, cov, "full")
        t = 0.2
        process = OU()
        a = mpmath.exp(-mpmath.mpf(t))
        s2 = 1 - a * a

        def logp(x1, x2):
            total = 0
            for k in range(2):
                C = mpmath.matrix(cov[k]) * a * a + mpmath.eye(2) * s2
                r = mpmath.matrix([x1 - a * mu[k][0], x2 - a * mu[k][1]])
                q = (r.T * mpmath.inverse(C) * r)[0]
                total += w[k] * mpmath.exp(-q / 2) / (2 * mpmath.pi * mpmath.sqrt(mpmath.det(C)))
            return mpmath.log(total)

        for x in ([0.3, 0.1], [-0.9, 1.4], [2.5, -2.0]):
            lap = mpmath.diff(logp, (x[0], x[1]), (2, 0)) + mpmath.diff(logp, (x[0], x[1]), (0, 2))
            got = target.divergence(np.array([x]), t, process)[0]
            assert abs(got - float(lap)) <= 1e-12 * (1 + abs(float(lap)))


def test_divergence_ignores_zero_weight_components_and_float32():
    g = GaussianMixture([0.0, 1.0], [[1e3, 0.0], [0.0, 0.0]], np.ones((2, 2)), "diag")
    x = np.array([[-40.0, 3.0]])  # component 0's residual is huge there; its weight is zero
    np.testing.assert_allclose(g.divergence(x, 0.0), [-2.0], rtol=1e-15)
    target = mixtures()["full"]
    x = np.random.default_rng(4).standard_normal((3, 4))
    d32 = target.divergence(x.astype(np.float32), 0.5)
    assert d32.dtype == np.float32
    np.testing.assert_allclose(d32, target.divergence(x, 0.5), rtol=1e-5)


@pytest.mark.parametrize("kind", ["identity", "full", "tied", "product"])
def test_divergence_validates_like_score(kind):
    target = mixtures()[kind]
    for bad in (np.zeros((3, 5)), np.zeros(4), np.array([[np.nan, 0, 0, 0]]), np.array([["a"] * 4])):
        with pytest.raises(ValueError, match="x"):
            target.divergence(bad, 0.5)
    with pytest.raises(ValueError, match="t"):
        target.divergence(np.zeros((2, 4)), -1.0)
    with pytest.raises(ValueError, match="process"):
        target.divergence(np.zeros((2, 4)), 0.5, process="ou")
    with pytest.raises(ValueError, match="too far"):
        target.divergence(np.full((1, 4), 1e200), 0.0)


def test_tilted_gaussian_divergence_estimates_the_laplacian():
    """Monte-Carlo: against finite differences of its own (Monte-Carlo) score, within MC error."""
    d = 3
    rng = np.random.default_rng(5)
    tg = TiltedGaussian.barron(d, rng=rng, n_mc=100_000)
    stein = TiltedGaussian(tg.f, tg.grad_f, d, rng=np.random.default_rng(6), n_mc=100_000, estimator="stein")
    x = rng.standard_normal((3, d))
    for process in (OU(), VE()):
        fd = fd_divergence(tg, x, 0.5, process, h=1e-4)
        np.testing.assert_allclose(tg.divergence(x, 0.5, process), fd, atol=2e-3)
    np.testing.assert_allclose(stein.divergence(x, 0.5), fd_divergence(tg, x, 0.5, OU(), h=1e-4), atol=3e-2)
    with pytest.raises(ValueError, match="t > 0"):
        tg.divergence(x, 0.0)


def test_log_prob_labels_a_monte_carlo_targets_divergence():
    """log_prob(divergence="exact") of a TiltedGaussian uses its Monte-Carlo score and
    divergence: the result says "monte carlo", not "exact" (a review measured 3e-2 nats off the
    closed form of a linear tilt, labelled exact). Mixtures stay "exact"."""
    from sgm_ref.likelihood import log_prob
    rng = np.random.default_rng(2)
    tg = TiltedGaussian.barron(2, rng=rng, n_mc=2_000)
    x = rng.standard_normal((3, 2))
    assert log_prob(tg, OU(), x, 0.5, 3.0, solver="heun", n_steps=4).divergence == "monte carlo"
    mix = GaussianMixture([1.0], [[0.0, 0.0]], [[1.0, 1.0]])
    assert log_prob(mix, OU(), x, 0.5, 3.0, solver="heun", n_steps=4).divergence == "exact"


def _mp_posterior(target, x, a, s2, dps):
    """The Laplacian of log p_t and E[x0 | x_t = x] in mpmath at dps digits, from the float64
    parameters taken as exact: pi_k by log-sum-exp, the divergence as
    sum_k pi_k (-tr P_k + |g_k - s|^2), g_k = -P_k (x - a mu_k), s = sum_k pi_k g_k, and x0 as
    sum_k pi_k (mu_k + a Sigma_k P_k (x - a mu_k))."""
    K, d = target.means.shape
    kind, cov = target.covariance_type, target.covariances
    covs = {"identity": lambda k: np.eye(d), "diagonal": lambda k: np.diag(cov[k]),
            "spherical": lambda k: cov[k] * np.eye(d), "tied": lambda k: cov, "full": lambda k: cov[k]}[kind]
    with mpmath.workdps(dps):
        a, s2 = mpmath.mpf(a), mpmath.mpf(s2)
        xv = mpmath.matrix([mpmath.mpf(float(v)) for v in x])
        logc, g, tr, each = [], [], [], []
        for k in range(K):
            S = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in covs(k)])
            C = a * a * S + s2 * mpmath.eye(d)
            P = mpmath.inverse(C)
            m = mpmath.matrix([mpmath.mpf(float(v)) for v in target.means[k]])
            Py = P * (xv - a * m)
            logc.append(mpmath.log(mpmath.mpf(float(target.weights[k]))) - ((xv - a * m).T * Py)[0] / 2
                        - mpmath.log(mpmath.det(C)) / 2)
            g.append(-Py)
            tr.append(sum(P[i, i] for i in range(d)))
            each.append(m + a * (S * Py))
        top = max(logc)
        e = [mpmath.exp(v - top) for v in logc]
        pi = [v / sum(e) for v in e]
        s = sum((pi[k] * g[k] for k in range(K)), mpmath.matrix(d, 1))
        div = sum(pi[k] * (-tr[k] + sum((g[k] - s)[i] ** 2 for i in range(d))) for k in range(K))
        x0 = sum((pi[k] * each[k] for k in range(K)), mpmath.matrix(d, 1))
        return float(div), np.array([float(x0[i]) for i in range(d)])


def _far_mixtures():
    rng = np.random.default_rng(7)
    K, d = 3, 3
    mu = 2.0 * rng.standard_normal((K, d))
    A = rng.standard_normal((K, d, d))
    full = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(d)
    w = np.array([0.2, 0.3, 0.5])
    return {
        "identity": GaussianMixture(w, mu),
        "spherical equal": GaussianMixture(w, mu, np.full(K, 0.7), "spherical"),
        "spherical": GaussianMixture(w, mu, np.array([0.5, 0.7, 2.0]), "spherical"),
        "diag equal": GaussianMixture(w, mu, np.tile([0.3, 1.0, 2.0], (K, 1)), "diag"),
        "diag": GaussianMixture(w, mu, rng.uniform(0.2, 2.0, (K, d)), "diag"),
        "tied": GaussianMixture(w, mu, full[0], "tied"),
        "full equal": GaussianMixture(w, mu, np.repeat(full[:1], K, axis=0), "full"),
        "full": GaussianMixture(w, mu, full, "full"),
    }


@pytest.mark.parametrize("kind", list(_far_mixtures()))
def test_divergence_far_from_every_component_against_mpmath(kind):
    """Once |x| >> |alpha mu| / eps the residuals x - alpha mu_k round alike for every k: the
    divergence was g_k - s, a difference of rounded scores of size |x| / v, squared (the ring
    under VE at x = (1e20, 0): +1.7e10 for -22.2), and the posterior weights lost the cross
    terms x . mu_k (OU, t = 0.5, x = (1e30, 0): +210 for -21.5). Against mpmath at 2 log10 R
    + 60 digits (the x . mu_k terms are ~1e-2R smaller than |x|^2), along two directions, R
    from 10 to 1e150 (1e150 is still finite in float64: |y|^2 / v < 1e308)."""
    target = _far_mixtures()[kind]
    rng = np.random.default_rng(8)
    for process, t in ((OU(), 0.5), (VE(), 0.0)):
        a, s2 = (float(v[0]) for v in process._coefficients(t, 1))
        for u in rng.standard_normal((2, 3)):
            for R in (10.0, 1e4, 1e8, 1e17, 1e30, 1e80, 1e150):
                x = R * u / np.linalg.norm(u)
                want, _ = _mp_posterior(target, x, a, s2, dps=2 * int(np.log10(R)) + 60)
                got = target.divergence(x[None], t, process)[0]
                assert abs(got - want) <= 2e-14 * abs(want), (process, R, got, want)


def test_ring_divergence_far_out_is_minus_the_trace_of_the_nearest_precision():
    """The reported cases: one component dominates, so div = -tr P_k* = -2 / v."""
    ring = GaussianMixture.ring()
    for process, t, R in ((VE(), 0.0, 1e20), (OU(), 0.5, 1e30), (OU(), 0.5, 1e150)):
        a, s2 = (float(v[0]) for v in process._coefficients(t, 1))
        want = -2.0 / (a * a * 0.09 + s2)
        np.testing.assert_allclose(ring.divergence(np.array([[R, 0.0]]), t, process), [want], rtol=2e-15, atol=0)


def test_denoiser_far_out_weighs_the_components_by_their_cross_terms():
    """predict(kind='x0') far out on the bisector of two identity-covariance components, where
    the posterior weights rest on x . (mu_0 - mu_1): the weights from the rounded
    |x - alpha mu_k|^2 put x0 6.5e-9 (relative) off at R = 1e8 (5.6e-13 at 1e4, 4.1e-12 at
    1e6, 7.9e-11 at 1e10), where the exact x0 moves by 3e-16 when x moves by one ulp.
    Against mpmath."""
    mu = np.array([[1.0, 0.5, -1.0], [-0.5, 1.0, 0.3]])
    target = GaussianMixture([0.4, 0.6], mu)
    e = mu[0] - mu[1]
    p = np.array([0.3, -1.0, 0.7])
    p -= (p @ e) / (e @ e) * e
    a, s2 = (float(v[0]) for v in OU()._coefficients(0.5, 1))
    for R in (1e4, 1e6, 1e8, 1e10):
        x = R * p / np.linalg.norm(p) + 0.5 * a * (mu[0] + mu[1])
        _, want = _mp_posterior(target, x, a, s2, dps=80)
        got = target.predict(x[None], 0.5, OU(), kind="x0")[0]
        assert np.max(np.abs(got - want)) <= 2e-15 * np.max(np.abs(want)), (R, got - want)


@pytest.mark.parametrize("kind", ["spherical", "full"])
def test_divergence_beside_a_component_whose_score_overflows(kind):
    """Variances 2e-300 and 5e299: at x = (1e10, 0) the first component's score, -x / 2e-300,
    overflows, but its posterior weight is exp(-2.5e319) = 0, and log p, the score and x0 are
    finite. The divergence refused the point as 'too far' (s = sum_k pi_k g_k took 0 * inf =
    nan); it is -tr P_1 = -2 / 5e299, up to a term below exp(-2.5e319) 1e620."""
    cov = [2e-300, 5e299] if kind == "spherical" else np.array([np.eye(2) * 2e-300, np.eye(2) * 5e299])
    g = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 0.0]], cov, kind)
    x = np.array([[1e10, 0.0], [1e150, 1.0]])
    assert np.all(np.isfinite(g.log_prob_and_score(x, 0.0)[1]))
    np.testing.assert_allclose(g.divergence(x, 0.0), np.full(2, -2.0 / 5e299), rtol=1e-15, atol=0)


def test_divergence_far_out_beside_variances_of_1e_200():
    """The far-point path divides v_k* - v_k by v_k and then by v_k*: their product, 1e-400,
    underflows, and 0 / 0 had made the row nan (refused as 'too far'). Far out the component
    of the larger variance takes all the weight: div = -2 / 3e-200 (-2 / 1e-200 for equal
    variances, of either component)."""
    x = np.array([[1e10, 0.0]])
    for cov, v in (([1e-200, 3e-200], 3e-200), ([1e-200, 1e-200], 1e-200)):
        g = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 0.0]], cov, "spherical")
        np.testing.assert_allclose(g.divergence(x, 0.0), [-2.0 / v], rtol=1e-15, atol=0)
