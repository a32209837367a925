"""Issue 12, item 3: the exact oracle, metrics, samplers and Gaussian laws on every process.

"Reproduces the target" is judged as in tests/test_interop.py: the sliced W2 of the
sampler's points to an exact sample, as a z-score against the null of the same distance
from independent exact samples of the same size.
"""

import numpy as np
import pytest

from sgm_ref import DDPM, EDM, OU, VE, VP, FlowMatching, GaussianMixture, SubVP, VPCosine
from sgm_ref.conventions import convert
from sgm_ref.processes import convert_time
from sgm_ref.targets import ProductMixture, TiltedGaussian

EVERY = [OU(), VP(), VPCosine(), DDPM("linear", 1e-4, 0.02, 1000), SubVP(), VE(), EDM(), FlowMatching()]
NON_VP = [SubVP(), VE(), EDM(), FlowMatching()]


def full_mixture():
    """2-D, three components, full covariances: no axis is special."""
    return GaussianMixture([0.5, 0.3, 0.2], [[-1.0, 0.5], [1.5, -0.5], [0.2, 2.0]],
                           [[[0.3, 0.1], [0.1, 0.2]], [[0.5, -0.2], [-0.2, 0.4]], [[0.1, 0.0], [0.0, 0.6]]])


def mixtures():
    rng = np.random.default_rng(3)
    A = rng.standard_normal((2, 3, 3))
    return [full_mixture(),
            GaussianMixture([0.6, 0.4], rng.standard_normal((2, 3)), A @ A.transpose(0, 2, 1) + 0.1 * np.eye(3)),
            GaussianMixture([0.6, 0.4], rng.standard_normal((2, 3)), [[0.5, 1.0, 2.0], [0.3, 0.2, 1.5]]),
            GaussianMixture([0.6, 0.4], rng.standard_normal((2, 3)), A[0] @ A[0].T + np.eye(3), "tied"),
            GaussianMixture([0.6, 0.4], rng.standard_normal((2, 3)), [0.5, 2.0], "spherical"),
            GaussianMixture([0.6, 0.4], rng.standard_normal((2, 3)))]


def posterior_mean(target, x, alpha, sigma):
    """E[x0 | x_t = x] for a Gaussian mixture at one (alpha, sigma), written independently:
    sum_k r_k(x) (mu_k + Sigma_k alpha C_k^{-1} (x - alpha mu_k)), C_k = alpha^2 Sigma_k + sigma^2 I."""
    from scipy.stats import multivariate_normal
    d = target.dim
    out = np.zeros_like(x)
    logs, terms = [], []
    for k in range(target.n_components):
        S = np.asarray(full_cov(target, k))
        C = alpha**2 * S + sigma**2 * np.eye(d)
        logs.append(np.log(target.weights[k]) + multivariate_normal(alpha * target.means[k], C).logpdf(x))
        terms.append(target.means[k] + alpha * np.linalg.solve(C, (x - alpha * target.means[k]).T).T @ S)
    logs = np.array(logs)
    r = np.exp(logs - logs.max(axis=0))
    r /= r.sum(axis=0)
    for k in range(target.n_components):
        out += r[k][:, None] * terms[k]
    return out


def full_cov(target, k):
    kind, cov, d = target.covariance_type, target.covariances, target.dim
    return {"identity": lambda: np.eye(d), "diagonal": lambda: np.diag(cov[k]), "spherical": lambda: cov[k] * np.eye(d),
            "tied": lambda: cov, "full": lambda: cov[k]}[kind]()


# -- 1. the oracle in every convention -----------------------------------------------------------


def test_ve_score_is_the_converted_ou_score():
    """Issue 12's Must show: the same p_t in two conventions, to 1e-13 relative."""
    target = full_mixture()
    rng = np.random.default_rng(0)
    ve = VE()
    t = np.linspace(0.0, 1.0, 41)
    x = 3 * rng.standard_normal((t.size, 2)) * ve.sigma(t)[:, None] + target.sample(t.size, rng)
    t_ou, scale = convert_time(t, ve, OU())
    want = scale[:, None] * target.score(scale[:, None] * x, t_ou, OU())
    got = target.score(x, t, ve)
    err = np.max(np.abs(got - want), axis=1) / np.max(np.abs(want), axis=1)
    assert err.max() <= 1e-13, err.max()


@pytest.mark.parametrize("process", EVERY, ids=repr)
@pytest.mark.parametrize("which", range(6))
def test_denoiser_is_the_posterior_mean(process, which):
    """predict(kind="x0") equals E[x0 | x_t] written independently with scipy, to 1e-12."""
    target = mixtures()[which]
    rng = np.random.default_rng(which)
    lo, hi = process.time_range
    for t in (lo + 0.05 * (min(hi, 10.0) - lo), lo + 0.5 * (min(hi, 10.0) - lo)):
        alpha, sigma = process.marginal(t)
        x = alpha * target.sample(50, rng) + sigma * rng.standard_normal((50, target.dim))
        got = target.predict(x, t, process, kind="x0")
        want = posterior_mean(target, x, alpha, sigma)
        assert np.max(np.abs(got - want)) <= 1e-12 * (1 + np.max(np.abs(want))), (t, np.max(np.abs(got - want)))


@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_predict_every_kind_is_the_conversion_of_the_score(process):
    target = full_mixture()
    rng = np.random.default_rng(1)
    t = 0.3 * min(process.t_max, 1.0)
    x = rng.standard_normal((20, 2))
    score = target.score(x, t, process)
    assert np.array_equal(target.predict(x, t, process, kind="score"), score)
    for kind in ("eps", "x0", "v", "velocity"):
        assert np.array_equal(target.predict(x, t, process, kind=kind), convert(score, x, t, process, "score", kind))
    eps = target.predict(x, t, process, kind="eps")
    assert np.allclose(eps, -process.sigma(t) * score, rtol=1e-15, atol=0)


def test_predict_refusals():
    target = full_mixture()
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="kind must be one of"):
        target.predict(x, 0.5, VE(), kind="noise")
    with pytest.raises(ValueError, match="process must be"):
        target.predict(x, 0.5, "VE", kind="x0")
    with pytest.raises(ValueError, match="not defined"):
        target.predict(x, 0.0, OU(), kind="eps")  # sigma_0 = 0


@pytest.mark.parametrize("process", NON_VP, ids=repr)
def test_log_prob_and_score_every_covariance_under_non_vp(process):
    """log p_t is the direct mixture density at (alpha, sigma); its gradient is the score."""
    from scipy.stats import multivariate_normal
    rng = np.random.default_rng(5)
    t = 0.4 * min(process.t_max, 1.0)
    alpha, sigma = process.marginal(t)
    for target in mixtures():
        x = alpha * target.sample(10, rng) + sigma * rng.standard_normal((10, target.dim))
        dens = sum(w * multivariate_normal(alpha * m, alpha**2 * full_cov(target, k) + sigma**2 * np.eye(target.dim))
                   .pdf(x) for k, (w, m) in enumerate(zip(target.weights, target.means)))
        assert np.allclose(target.log_prob(x, t, process), np.log(dens), rtol=1e-12, atol=1e-12)
        h = 1e-6
        fd = np.stack([(target.log_prob(x + h * e, t, process) - target.log_prob(x - h * e, t, process)) / (2 * h)
                       for e in np.eye(target.dim)], axis=1)
        assert np.allclose(target.score(x, t, process), fd, rtol=1e-6, atol=1e-6)


def test_full_covariance_far_sigma_log_det():
    """EDM at sigma = 1e100: v = lam + sigma^2 far above max(lam, 1), so the log-determinant's
    grouping must not overflow (products of 8 factors 1e200 would)."""
    target = full_mixture()
    x = np.array([[1e100, -2e100]])
    want = -0.5 * (np.sum(x**2) / 1e200 + 2 * np.log(1e200) + 2 * np.log(2 * np.pi))
    got = target.log_prob(x, 1e100, EDM())
    assert np.isfinite(got).all() and abs(got[0] - want) <= 1e-12 * abs(want)


@pytest.mark.parametrize("process", NON_VP, ids=repr)
def test_product_mixture_every_process(process):
    pm = ProductMixture([[0.3, 0.7], [0.5, 0.5]], [[-1.0, 1.0], [0.0, 2.0]], [[0.5, 1.0], [0.2, 0.3]])
    gm = GaussianMixture([0.15, 0.15, 0.35, 0.35], [[-1.0, 0.0], [-1.0, 2.0], [1.0, 0.0], [1.0, 2.0]],
                         [[0.25, 0.04], [0.25, 0.09], [1.0, 0.04], [1.0, 0.09]])
    rng = np.random.default_rng(2)
    t = 0.3 * min(process.t_max, 1.0)
    x = rng.standard_normal((30, 2))
    assert np.allclose(pm.score(x, t, process), gm.score(x, t, process), rtol=1e-13, atol=1e-14)
    assert np.allclose(pm.log_prob(x, t, process), gm.log_prob(x, t, process), rtol=1e-13)
    assert np.allclose(pm.predict(x, t, process, "x0"), gm.predict(x, t, process, "x0"), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("estimator", ["gradient", "stein"])
@pytest.mark.parametrize("process", NON_VP, ids=repr)
def test_tilted_gaussian_is_the_same_p_t_as_under_ou(process, estimator):
    """The Monte-Carlo oracle under any process equals the OU one at the matching time and
    scale (the same draws, so to rounding), and both agree with the mixture it tilts to."""
    mu = np.array([1.0, -0.5])
    tg = TiltedGaussian(lambda x: x @ mu, lambda x: np.broadcast_to(mu, x.shape), d=2, n_mc=4000,
                        rng=np.random.default_rng(0), estimator=estimator)
    t = 0.3 * min(process.t_max, 1.0)
    rng = np.random.default_rng(4)
    x = process.alpha(t) * rng.standard_normal((15, 2))
    t_ou, scale = convert_time(t, process, OU())
    assert np.allclose(tg.score(x, t, process), scale * tg.score(scale * x, t_ou, OU()), rtol=1e-10, atol=1e-12)
    exact = GaussianMixture([1.0], [mu])  # e^{mu.x} gamma / Z = N(mu, I)
    assert np.allclose(tg.log_prob(x, t, process), exact.log_prob(x, t, process), atol=0.05)
    assert np.allclose(tg.log_prob(x, t, process) - np.log(scale) * 2, tg.log_prob(scale * x, t_ou, OU()), atol=1e-10)
