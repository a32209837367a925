"""ProductMixture: the closed form against GaussianMixture with its 2^d components."""

import itertools

import numpy as np
import pytest

from sgm_ref import OU, VP, GaussianMixture
from sgm_ref.targets.product_mixture import ProductMixture


def random_product(d, seed):
    rng = np.random.default_rng(seed)
    return ProductMixture(rng.dirichlet([1.0, 1.0], size=d), rng.normal(0, 2, (d, 2)), rng.uniform(0.2, 1.5, (d, 2)))


def as_gaussian_mixture(p):
    """The same law written out as a mixture of 2^d diagonal Gaussians."""
    d, cols = p.dim, np.arange(p.dim)
    combos = [np.array(c) for c in itertools.product([0, 1], repeat=d)]
    return GaussianMixture([np.prod(p.weights[cols, c]) for c in combos], [p.means[cols, c] for c in combos],
                           [p.stds[cols, c] ** 2 for c in combos])


@pytest.mark.parametrize("d", [1, 2, 3])
@pytest.mark.parametrize("process", [OU(), VP(0.1, 20.0)], ids=["OU", "VP"])
def test_closed_form_equals_the_2_to_the_d_mixture(d, process):
    p = random_product(d, seed=d)
    g = as_gaussian_mixture(p)
    rng = np.random.default_rng(0)
    x = rng.normal(0, 2, (64, d))
    for t in (0.0, 1e-6, 0.3, rng.uniform(0, 0.9, 64)):
        np.testing.assert_allclose(p.log_prob(x, t, process), g.log_prob(x, t, process), rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(p.score(x, t, process), g.score(x, t, process), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(p.mean(), g.mean(), atol=1e-14)
    np.testing.assert_allclose(p.covariance(), g.covariance(), atol=1e-13)


def test_symmetric_preset_is_an_identity_mixture_of_growing_norm():
    p = ProductMixture.symmetric(3, shift=1.5, std=1.0)
    g = as_gaussian_mixture(p)
    assert np.allclose(np.linalg.norm(g.means, axis=1), 1.5 * np.sqrt(3))
    x = np.random.default_rng(1).normal(size=(10, 3))
    # f(x) = sum_j log cosh(1.5 x_j) - 1.5^2 / 2 per coordinate, so grad log p_0 = -x + 1.5 tanh(1.5 x)
    np.testing.assert_allclose(p.score(x), -x + 1.5 * np.tanh(1.5 * x), rtol=1e-13, atol=1e-14)


def test_a_point_too_far_out_for_float64_is_named_not_nan():
    p = ProductMixture.symmetric(2, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"^x\[1\] \(largest \|entry\| 1e\+155\) is too far"):
        p.score(np.array([[0.0, 0.0], [1e155, 0.0]]), 0.5)


def test_covariance_is_taken_about_the_mean():
    # E[x^2] - E[x]^2 would cancel to 0 for means of 1e8 (the variance is 0.25 + 1)
    p = ProductMixture([[0.5, 0.5]], [[1e8, 1e8 + 1]], [[1.0, 1.0]])
    assert p.covariance()[0, 0] == 1.25


def test_sample_moments_and_dtype():
    p = random_product(4, seed=9)
    x = p.sample(200_000, np.random.default_rng(2))
    se = np.sqrt(np.diag(p.covariance()) / x.shape[0])
    assert np.all(np.abs(x.mean(axis=0) - p.mean()) < 5 * se)  # 5 standard errors
    var = np.diag(p.covariance())
    assert np.all(np.abs(x.var(axis=0) - var) < 0.02 * var)
    # coordinates independent: every off-diagonal correlation within 5 standard errors (1 / sqrt(n)) of 0
    corr = np.corrcoef(x, rowvar=False)
    assert np.all(np.abs(corr[np.triu_indices(4, 1)]) < 5 / np.sqrt(x.shape[0]))
    with pytest.raises(ValueError, match="read-only"):
        p.weights[0, 0] = 1.0
    assert p.sample(5, np.random.default_rng(0), dtype=np.float32).dtype == np.float32
    assert np.array_equal(p.sample(7, np.random.default_rng(3)), p.sample(7, np.random.default_rng(3)))


def test_zero_weight_component_is_never_used():
    p = ProductMixture([[1.0, 0.0]], [[0.0, 50.0]], [[1.0, 1.0]])
    x = p.sample(1000, np.random.default_rng(0))
    assert np.all(np.abs(x) < 10)
    np.testing.assert_allclose(p.score(x), -x, atol=1e-13)


@pytest.mark.parametrize("args, match", [
    (([[0.5, 0.5, 0.0]], [[0, 1, 2]], [[1, 1, 1]]), "shape"),
    (([[0.5, 0.5]], [[0, 1], [1, 2]], [[1, 1]]), "means must have shape"),
    (([[0.7, 0.7]], [[0, 1]], [[1, 1]]), "sum to 1"),
    (([[-0.5, 1.5]], [[0, 1]], [[1, 1]]), ">= 0"),
    (([[0.5, 0.5]], [[0, 1]], [[1, 0]]), "stds must be > 0"),
    (([[0.5, 0.5]], [[0, np.nan]], [[1, 1]]), "non-finite"),
])
def test_bad_input(args, match):
    with pytest.raises(ValueError, match=match):
        ProductMixture(*args)


def test_bad_points():
    with pytest.raises(ValueError, match="shape"):
        ProductMixture.symmetric(3).score(np.zeros((2, 4)))


def test_float32_divergence_beyond_float32_is_refused_not_inf():
    """Two narrow components far apart: at the midpoint the divergence is (1e10 / 1e-20)^2 = 1e60, finite in
    float64 but not in float32; it was returned as inf for a finite float32 point."""
    p = ProductMixture([[0.5, 0.5]], [[-1e10, 1e10]], [[1e-10, 1e-10]])
    x = np.zeros((2, 1), dtype=np.float32)
    assert p.divergence(x.astype(np.float64), 0.0)[0] == pytest.approx(1e60, rel=1e-12)
    with pytest.raises(ValueError, match=r"divergence at x\[0\] is 1e\+60, beyond float32's range.*float64 points"):
        p.divergence(x, 0.0)
    near = ProductMixture([[0.5, 0.5]], [[-1.0, 1.0]], [[0.5, 0.5]])  # within range: float32, as before
    out = near.divergence(x, 0.0)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_a_coordinate_whose_squared_residual_overflows_but_whose_quadratic_form_does_not():
    """|x - alpha mu| = 1e160 beside variances of 1e300 (the constructor's limit): diff**2
    overflowed float64 and log p_t, score, divergence and predict refused the point as 'too
    far' where log p_t = -1.4e20 is finite (GaussianMixture already took it). Against the
    closed form in mpmath."""
    import mpmath as mp
    p = ProductMixture([[0.5, 0.5]], [[0.0, 1.0]], [[1e150, 1e150]])
    x, t = np.array([[1e160]]), 0.5
    with mp.workdps(40):
        a, s2 = mp.exp(-t), -mp.expm1(-2 * t)
        v = a * a * mp.mpf(1e300) + s2
        comps = [(mp.mpf(m), mp.log(0.5) - (mp.log(2 * mp.pi * v) + (mp.mpf(1e160) - a * m) ** 2 / v) / 2)
                 for m in (0, 1)]
        top = max(c[1] for c in comps)
        pis = [mp.exp(c[1] - top) for c in comps]
        pis = [q / sum(pis) for q in pis]
        logp = top + mp.log(sum(mp.exp(c[1] - top) for c in comps))
        score = -sum(q * (mp.mpf(1e160) - a * m) / v for q, (m, _) in zip(pis, comps))
        x0 = sum(q * (m + a * mp.mpf(1e300) / v * (mp.mpf(1e160) - a * m)) for q, (m, _) in zip(pis, comps))
    got_logp, got_score = p.log_prob_and_score(x, t)
    assert got_logp[0] == pytest.approx(float(logp), rel=1e-15, abs=0)
    assert got_score[0, 0] == pytest.approx(float(score), rel=1e-15, abs=0)
    assert p.predict(x, t, kind="x0")[0, 0] == pytest.approx(float(x0), rel=1e-15, abs=0)
    assert p.divergence(x, t)[0] == pytest.approx(float(-1 / v), rel=1e-12, abs=0)  # the spread term is ~1e-560
    np.testing.assert_allclose(p.log_prob_and_score(x, t)[0], as_gaussian_mixture(p).log_prob(x, t), rtol=1e-15)


@pytest.mark.parametrize("process, t", [(OU(), 0.3), ("EDM", 2.0), ("FlowMatching", 0.7), ("VE", 0.4)])
@pytest.mark.parametrize("kind", ["eps", "x0", "v", "velocity"])
def test_float32_predict_is_the_float64_value_rounded_once(process, t, kind):
    # from the float32 score v and velocity lost the digits that cancel in them (115 float32
    # ulps of v under EDM); now within one float32 ulp of the equivalent mixture's float64 value
    import sgm_ref.processes as processes
    process = getattr(processes, process)() if isinstance(process, str) else process
    p = random_product(2, 7)
    x = np.random.default_rng(3).normal(0, 2, (50, 2)).astype(np.float32)
    got = p.predict(x, t, process, kind=kind)
    want = as_gaussian_mixture(p).predict(x.astype(np.float64), t, process, kind=kind)
    assert got.dtype == np.float32
    assert np.all(np.abs(got - want) <= np.spacing(np.abs(want).astype(np.float32)))


def test_float32_predict_far_in_time_against_mpmath():
    # EDM at t = 1e30: the float32 score, -eps / sigma ~ 1.5e-50, underflows to 0, and eps and
    # velocity came back 0 where they are -1.5e-20; v = -1.5e40 overflowed float32 to -inf
    import mpmath as mp
    from sgm_ref import EDM
    p = ProductMixture([[0.5, 0.5]], [[1e10, 2e10]], [[1.0, 1.0]])
    x, t = np.array([[1.0]], dtype=np.float32), 1e30
    with mp.workdps(50):
        v, lw = 1 + mp.mpf(t) ** 2, []
        for m in (1e10, 2e10):
            lw.append(-(1 - mp.mpf(m)) ** 2 / (2 * v))
        pis = [mp.exp(w - max(lw)) for w in lw]
        x0 = sum(q * (m + (1 - mp.mpf(m)) / v) for q, m in zip(pis, (1e10, 2e10))) / sum(pis)
        eps = (1 - x0) / mp.mpf(t)  # x = alpha x0 + sigma eps with alpha = 1, sigma = t
    for kind in ("eps", "velocity"):  # EDM: sigma' = 1, alpha' = 0, so velocity = eps
        got = p.predict(x, t, EDM(), kind=kind)
        assert got.dtype == np.float32
        assert got[0, 0] == pytest.approx(float(eps), rel=1e-7, abs=0)
    assert p.predict(x, t, EDM(), kind="x0")[0, 0] == pytest.approx(float(x0), rel=1e-7, abs=0)
    with pytest.raises(ValueError, match="the v at x\\[0\\] reaches 1.5e\\+40, beyond float32's range"):
        p.predict(x, t, EDM(), kind="v")
    assert p.predict(x.astype(np.float64), t, EDM(), kind="v")[0, 0] == pytest.approx(float(-t * x0), rel=1e-14)


@pytest.mark.parametrize("t, x", [(0.99999, 1e4), (0.99999, 1e3), (0.999, 50.0)])
def test_posterior_weights_far_out_late_against_mpmath(t, x):
    # the logits were the difference of two log terms ~ (x - alpha mu)^2 / (2 v) = 5e7 at
    # t = 0.99999, x = 1e4: x0 came 2.3e-9 off (6.3e-14 at t = 0.999, x = 50); now from the
    # differences of the components, as GaussianMixture weighs far points
    import mpmath as mp
    from sgm_ref import FlowMatching
    w, mu, s = [0.2, 0.8], [-1.0, 1.0], [0.1, 3.0]
    p, process = ProductMixture([w], [mu], [s]), FlowMatching()
    a, s2 = (float(c[0]) for c in process._coefficients(t, 1))
    with mp.workdps(60):
        a, s2, xm = mp.mpf(a), mp.mpf(s2), mp.mpf(x)
        v = [a * a * mp.mpf(sc) ** 2 + s2 for sc in s]
        logs = [mp.log(wc) - (mp.log(vc) + (xm - a * mc) ** 2 / vc) / 2 for wc, mc, vc in zip(w, mu, v)]
        pis = [mp.exp(lc - max(logs)) for lc in logs]
        pis = [q / sum(pis) for q in pis]
        x0 = sum(q * (mc + a * mp.mpf(sc) ** 2 / vc * (xm - a * mc)) for q, mc, sc, vc in zip(pis, mu, s, v))
        score = -sum(q * (xm - a * mc) / vc for q, mc, vc in zip(pis, mu, v))
        g = [-(xm - a * mc) / vc for mc, vc in zip(mu, v)]
        div = sum(q * (-1 / vc + (gc - score) ** 2) for q, vc, gc in zip(pis, v, g))
    X = np.array([[x]])
    assert p.predict(X, t, process, kind="x0")[0, 0] == pytest.approx(float(x0), rel=1e-15, abs=0)
    assert p.score(X, t, process)[0, 0] == pytest.approx(float(score), rel=1e-15, abs=0)
    assert p.divergence(X, t, process)[0] == pytest.approx(float(div), rel=1e-14, abs=0)


def test_posterior_weights_near_t_zero_against_mpmath():
    # the difference form of the logits is used only where its parts are smaller than the log
    # terms: used everywhere it put the score and divergence 1.3e-14 off here (2.8e-15 now, of max(1, |value|))
    import mpmath as mp
    rng = np.random.default_rng(1)
    w = rng.uniform(0.1, 0.9, 3)
    weights, mu, s = np.stack([w, 1 - w], 1), rng.normal(0, 2, (3, 2)), rng.uniform(0.3, 1.5, (3, 2))
    p, x, t = ProductMixture(weights, mu, s), rng.normal(0, 3, (20, 3)), 0.01
    a, s2 = (float(c[0]) for c in OU()._coefficients(t, 1))
    score, div = np.zeros((20, 3)), np.zeros(20)
    with mp.workdps(40):
        a, s2 = mp.mpf(a), mp.mpf(s2)
        for i, j in itertools.product(range(20), range(3)):
            xm, v = mp.mpf(x[i, j]), [a * a * mp.mpf(sc) ** 2 + s2 for sc in s[j]]
            logs = [mp.log(wc) - (mp.log(vc) + (xm - a * mc) ** 2 / vc) / 2 for wc, mc, vc in zip(weights[j], mu[j], v)]
            pis = [mp.exp(lc - max(logs)) for lc in logs]
            pis = [q / sum(pis) for q in pis]
            g = [-(xm - a * mc) / vc for mc, vc in zip(mu[j], v)]
            sj = sum(q * gc for q, gc in zip(pis, g))
            score[i, j] = float(sj)
            div[i] += float(sum(q * (-1 / vc + (gc - sj) ** 2) for q, vc, gc in zip(pis, v, g)))
    # relative to max(1, |value|): a score near 0 is a cancellation of the components' scores
    assert np.max(np.abs(p.score(x, t) - score) / np.maximum(1.0, np.abs(score))) < 5e-15
    assert np.max(np.abs(p.divergence(x, t) - div) / np.maximum(1.0, np.abs(div))) < 5e-15


def test_far_logits_are_per_entry_so_a_far_row_changes_no_bit_of_the_others():
    """The difference form of the logits is taken only at entries 8 standard deviations from both
    components: a batch holding one far row gives every other row the bits it has alone, and the
    far row the bits it has alone."""
    from sgm_ref import FlowMatching
    p, process = ProductMixture([[0.2, 0.8], [0.5, 0.5]], [[-1.0, 1.0], [0.0, 2.0]], [[0.1, 3.0], [1.0, 0.5]]), \
        FlowMatching()
    near = np.random.default_rng(3).normal(0.0, 1.0, (5, 2))
    far = np.array([[1e4, 0.3]])
    both = np.vstack([near, far])
    for f in (lambda x: p.score(x, 0.999, process), lambda x: p.divergence(x, 0.999, process),
              lambda x: p.predict(x, 0.999, process, kind="x0"), lambda x: p.log_prob(x, 0.999, process)):
        out = f(both)
        np.testing.assert_array_equal(out[:5], f(near))
        np.testing.assert_array_equal(out[5:], f(far))


def test_a_far_entry_beside_a_component_of_no_weight_is_that_of_the_other_component():
    """A coordinate 20 standard deviations out whose second component has weight 0 and sd 1e-9:
    the far entries' difference form gave that component -inf + inf = nan (log p refused as too
    far); it is the one Gaussian's closed form."""
    p = ProductMixture([[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 2.0]])
    p0 = ProductMixture([[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1e-9]])
    x = np.array([[20.0], [-35.0], [1e5]])
    for t, process in ((0.0, OU()), (0.5, VP(0.1, 20.0))):
        a, s2 = (float(c[0]) for c in process._coefficients(t, 1))
        v = a * a + s2  # the first component's variance at t
        want = -0.5 * (np.log(2 * np.pi * v) + x[:, 0] ** 2 / v)
        for q in (p, p0):
            np.testing.assert_allclose(q.log_prob(x, t, process), want, rtol=1e-15)
            np.testing.assert_allclose(q.score(x, t, process)[:, 0], -x[:, 0] / v, rtol=1e-15)
            np.testing.assert_allclose(q.divergence(x, t, process), np.full(3, -1.0 / v), rtol=1e-15)


def test_from_dict_names_an_unknown_or_missing_key():
    """The message said only 'exactly the keys ...': a record with "std" for "stds" (or an extra
    key) was refused without saying which key was wrong, as GaussianMixture.from_dict does."""
    good = ProductMixture.symmetric(1).to_dict()
    spelt = {"weights": good["weights"], "means": good["means"], "std": good["stds"]}
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['std'\]; missing key\(s\) \['stds'\]$"):
        ProductMixture.from_dict(spelt)
    with pytest.raises(ValueError, match=r"'stds'; unknown key\(s\) \['extra'\]$"):
        ProductMixture.from_dict({**good, "extra": 1})
    assert ProductMixture.from_dict(good).to_dict() == good


@pytest.mark.parametrize("x", [3e16, 1e17, 1e150])
def test_a_far_point_on_the_side_of_the_second_component_is_finite(x):
    """Equal variances: far out the two log terms round to the same number (l = -x^2 / 2), the
    argmax picked component 0 and component 1's logit, 2 alpha shift x = 6.7e16 at x = 3e16,
    overflowed exp: log p_t of -4.5e32 was refused as 'too far from the target' on the +x
    side only (at -x, and for the equivalent GaussianMixture, finite). Against the mixture
    of the 2 means, and at t = 0 the closed form."""
    p = ProductMixture.symmetric(1, 1.5, 1.0)
    g = GaussianMixture([0.5, 0.5], [[-1.5], [1.5]])
    points = np.array([[x], [-x]])
    for t in (0.0, 0.3):
        logp, score = p.log_prob_and_score(points, t)
        ref_logp, ref_score = g.log_prob_and_score(points, t)
        np.testing.assert_allclose(logp, ref_logp, rtol=4e-16)
        np.testing.assert_allclose(score, ref_score, rtol=4e-16)
        np.testing.assert_allclose(p.predict(points, t, kind="x0"), g.predict(points, t, kind="x0"), rtol=4e-16)
        np.testing.assert_allclose(p.divergence(points, t), g.divergence(points, t), rtol=4e-16)
    # t = 0: log p = log(1/2 N(x; 1.5, 1)) to rounding (the other term is e^{-3x} of it)
    assert p.log_prob(points[:1])[0] == pytest.approx(-0.5 * (x - 1.5) ** 2 - 0.5 * np.log(2 * np.pi) + np.log(0.5),
                                                       rel=4e-16)
