"""The isometric families: the same target, up to a rotation, in every d."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from sgm_ref.experiments import rate
from sgm_ref.experiments.families import SubspaceTilt, embedding
from sgm_ref.processes import OU

DIMENSIONS = (2, 3, 8, 32, 128, 512)


def test_embedding_is_orthonormal_and_seeded():
    P = embedding(64, 2, np.random.default_rng(5))
    assert np.allclose(P.T @ P, np.eye(2), rtol=0, atol=1e-14)
    assert np.array_equal(P, embedding(64, 2, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="k = 3 must be <= d = 2"):
        embedding(2, 3, np.random.default_rng(0))


def test_isometric_mixture_has_the_same_pairwise_distances_in_every_d():
    reference = pdist(rate.make_target("mixture-iso", 2).means)
    norms = np.linalg.norm(rate.make_target("mixture-iso", 2).means, axis=1)
    for d in DIMENSIONS:
        means = rate.make_target("mixture-iso", d).means
        assert means.shape == (4, d)
        assert np.allclose(pdist(means), reference, rtol=0, atol=1e-12), d
        assert np.allclose(np.linalg.norm(means, axis=1), norms, rtol=0, atol=1e-12), d
    # the old family is not isometric: its geometry changes with d
    assert not np.allclose(pdist(rate.make_target("mixture", 2).means), pdist(rate.make_target("mixture", 128).means),
                           atol=0.1)


def test_tilt_directions_have_the_same_geometry_in_every_d():
    reference = None
    for d in DIMENSIONS:
        tilt = rate.make_target("tilt-iso", d)
        directions = tilt.W @ tilt.P.T  # the unit directions w_j embedded in R^d
        gram = directions @ directions.T
        if reference is None:
            reference = gram
        assert np.allclose(gram, reference, rtol=0, atol=1e-12), d
        assert tilt.path_norm == pytest.approx(rate.DEFINITIONS["tilt-iso"]["path_norm"], rel=1e-12)


def test_subspace_tilt_oracle_is_rotation_equivariant_and_d_free():
    """The score in d = 2 and d = 64 at corresponding points agree, rotated."""
    small, large = rate.make_target("tilt-iso", 2), rate.make_target("tilt-iso", 64)
    rng = np.random.default_rng(0)
    u = rng.standard_normal((50, 2))
    t = rng.uniform(0.01, 2.0, 50)
    x_small = u @ small.P.T
    extra = rng.standard_normal((50, 64))
    extra -= (extra @ large.P) @ large.P.T  # orthogonal to the subspace
    x_large = u @ large.P.T + extra
    s_small, se_small = small.score_and_se(x_small, t, OU())
    s_large, se_large = large.score_and_se(x_large, t, OU())
    assert np.allclose(s_small @ small.P, s_large @ large.P, rtol=0, atol=1e-12)
    assert np.allclose(s_large + extra, (s_large @ large.P) @ large.P.T, rtol=0, atol=1e-12)  # -x off the subspace
    assert np.allclose(np.sum(se_small**2, axis=1), np.sum(se_large**2, axis=1), rtol=1e-10)


def test_subspace_tilt_samples_and_score_agree():
    """Stein's identity E_{p_0}[s(x) . v + div v] = 0 with v = P e_1 (so div v = 0): E[s . v] = 0,
    and the samples' projection off the subspace is standard normal."""
    tilt = rate.make_target("tilt-iso", 6)
    x = tilt.sample(2_000, np.random.default_rng(1))
    s = tilt.score(x, 1e-6, OU())
    v = tilt.P[:, 0]
    proj = s @ v
    assert abs(proj.mean()) < 4 * proj.std() / np.sqrt(proj.size)
    off = x - (x @ tilt.P) @ tilt.P.T
    assert abs(np.sum(off**2, axis=1).mean() - 4.0) < 0.4  # se 0.063  # chi^2_{d - k}, d - k = 4


def test_subspace_tilt_refuses_a_non_orthonormal_frame():
    with pytest.raises(ValueError, match="orthonormal"):
        SubspaceTilt(np.ones((3, 2)), np.zeros(3), np.ones(3), np.ones((4, 2)), rng=np.random.default_rng(0))


def test_tilt_refuses_a_sample_larger_than_memory_at_once():
    """SubspaceTilt.sample had no size check: n = 1e20 ran with no end, its memory growing
    (the mixture family refused it at once; found by a review)."""
    tilt = rate.make_target("tilt-iso", 4)
    with pytest.raises(ValueError, match="n = 100000000000000000000 is too large"):
        tilt.sample(10**20, np.random.default_rng(0))


def test_subspace_tilt_oracle_against_quadrature():
    """k = 1: log p_t and the score against a quadrature of p_t(u) = int p_0(y) N(u; alpha y, sigma^2) dy
    (scipy.integrate.quad) times the Gaussian of the complement; the score by central differences."""
    from scipy import integrate, stats

    W, b, a = np.array([[1.0], [1.0], [-1.0]]), np.array([0.3, -0.5, 0.1]), np.array([1.5, -0.8, 0.6])
    d = 3
    P = embedding(d, 1, np.random.default_rng(2))
    tilt = SubspaceTilt(W, b, a, P, n_mc=2**17, rng=np.random.default_rng(7), n_normaliser=2**20)

    def f(y):
        return float(np.tanh(y * W[:, 0] + b) @ a)

    log_z = np.log(integrate.quad(lambda y: np.exp(f(y)) * stats.norm.pdf(y), -12, 12, epsabs=0, epsrel=1e-13)[0])
    assert tilt.log_normaliser == pytest.approx(log_z, abs=2e-4)  # its Monte Carlo over 2^20 points

    def log_q(u, t):
        alpha, s2 = OU()._coefficients(t, 1)
        alpha, s = float(alpha[0]), float(np.sqrt(s2[0]))
        kernel = integrate.quad(lambda y: np.exp(f(y) - log_z) * stats.norm.pdf(y) * stats.norm.pdf((u - alpha * y) / s) / s,
                                -14, 14, epsabs=0, epsrel=1e-13, limit=200)[0]
        return np.log(kernel)

    x = np.random.default_rng(8).standard_normal((3, d))
    u = x @ P[:, 0]
    for t in (0.05, 0.5, 2.0):
        ref_logp = np.array([log_q(v, t) for v in u]) - 0.5 * (np.sum(x**2, axis=1) - u**2) - 0.5 * (d - 1) * np.log(2 * np.pi)
        grad = np.array([(log_q(v + 1e-5, t) - log_q(v - 1e-5, t)) / 2e-5 for v in u])
        ref_score = -x + np.outer(grad + u, P[:, 0])
        score, se = tilt.score_and_se(x, t)
        assert np.all(np.abs(score - ref_score) <= 5 * se + 1e-8), t  # within the oracle's own standard error
        assert np.allclose(tilt.log_prob(x, t), ref_logp, rtol=0, atol=2e-3), t


def test_subspace_tilt_refuses_non_finite_or_misshapen_parameters():
    """W = NaN was taken and gave NaN scores everywhere; a = inf a NaN normaliser; a 1-D W
    "not enough values to unpack"; an isometric mixture of no means a ZeroDivisionError."""
    from sgm_ref.experiments.families import isometric_mixture

    P = embedding(3, 2, np.random.default_rng(0))
    W, b, a = np.full((4, 2), 0.5**0.5), np.zeros(4), np.ones(4)
    for args, match in (((np.where(W > 0, np.nan, 0.0), b, a), "W contains non-finite"),
                        ((W, b, np.full(4, np.inf)), "a contains non-finite"),
                        ((W, np.full(4, np.nan), a), "b contains non-finite"),
                        ((W[:, 0], b, a), r"W must have shape \(width, k\)")):
        with pytest.raises(ValueError, match=match):
            SubspaceTilt(*args, P, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"means_k must have shape \(K, k\) with K, k >= 1, got shape \(0, 2\)"):
        isometric_mixture(3, np.zeros((0, 2)), 0)


def test_subspace_tilt_refuses_a_rejection_sampler_that_would_not_end():
    """Units that cancel (f = 30 tanh(u_1) - 30 tanh(u_1) = 0) keep f_max = 60 as the bound:
    acceptance e^-60, and sample() looped for ever. Now refused at once; a tilt whose
    acceptance is fine samples as before."""
    P = embedding(3, 2, np.random.default_rng(0))
    W = np.array([[1.0, 0.0], [1.0, 0.0]])
    tilt = SubspaceTilt(W, np.zeros(2), np.array([30.0, -30.0]), P, rng=np.random.default_rng(0))
    assert abs(tilt.log_normaliser) < 1e-12 and tilt.f_max == 60.0
    with pytest.raises(ValueError, match=r"about 1.14e\+27 proposals for n = 10"):
        tilt.sample(10, np.random.default_rng(1))
    assert rate.make_target("tilt-iso", 3).sample(5, np.random.default_rng(1)).shape == (5, 3)


@pytest.mark.parametrize("dtype", [np.int64, "f2", None, "bad"])
def test_subspace_tilt_samples_only_in_float64_or_float32(dtype):
    """dtype=np.int64 returned the draws truncated to integers (and float16 rounded), where
    GaussianMixture.sample refuses any dtype but float64 and float32."""
    tilt = rate.make_target("tilt-iso", 3)
    with pytest.raises(ValueError, match="dtype must be float64 or float32"):
        tilt.sample(4, np.random.default_rng(0), dtype=dtype)
    x64 = tilt.sample(4, np.random.default_rng(0))
    x32 = tilt.sample(4, np.random.default_rng(0), dtype=np.float32)
    assert x64.dtype == np.float64 and x32.dtype == np.float32 and np.array_equal(x32, x64.astype(np.float32))


def test_subspace_tilt_log_prob_refuses_a_point_beyond_float64_instead_of_minus_inf():
    """A review: log_prob at |x| ~ 1e155 (|x|^2 past float64) returned -inf with a NumPy
    RuntimeWarning, where GaussianMixture and TiltedGaussian name the point. It is named now;
    the score there stays finite and exact to rounding (-x plus a term of norm <= sum |a_j|),
    and log p_t just inside the range is -|x|^2 / 2 to rounding."""
    import warnings

    tilt = rate.make_target("tilt-iso", 3)
    far = np.full((2, 3), 1e155)
    far[0] = 1.0
    with pytest.raises(ValueError, match=r"x\[1\] \(largest \|entry\| 1e\+155\) is too far from the target"):
        tilt.log_prob(far, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        score, se = tilt.score_and_se(far, 0.5)
        near = tilt.log_prob(np.full((1, 3), 1e150), 0.5)
    assert np.all(np.isfinite(score)) and np.all(np.isfinite(se))
    np.testing.assert_array_equal(score[1], -far[1])  # |R| <= 10 vanishes beside 1e155
    # -(d log 2 pi + |x|^2) / 2 + log E[e^f] - log Z, the last two at most 2 sum|a| = 20 in size
    assert near[0] == pytest.approx(-0.5 * 3e300, rel=1e-15, abs=0)


def test_subspace_tilt_answers_float32_points_in_float32():
    """A review: score and log_prob of float32 points came back float64, unlike every target's
    oracle (GaussianMixture, TiltedGaussian: the points' dtype, computed in float64 and rounded
    once), so a float32 sampler on the tilt-iso oracle stopped at its first step ("score
    returned dtype float64 for points of dtype float32"). Now rounded once to float32; the
    float64 score is checked against central differences of the float64 log p (the same draws
    Z: a smooth function of x), and a float32 log p beyond float32's range is named."""
    from sgm_ref.samplers import euler_maruyama, time_grid

    tilt, t, h = rate.make_target("tilt-iso", 3), 0.3, 1e-5
    x32 = tilt.sample(6, np.random.default_rng(1), dtype=np.float32)
    x = x32.astype(np.float64)
    s32, lp32 = tilt.score(x32, t), tilt.log_prob(x32, t)
    assert s32.dtype == np.float32 and lp32.dtype == np.float32
    assert np.array_equal(s32, tilt.score(x, t).astype(np.float32))
    assert np.array_equal(lp32, tilt.log_prob(x, t).astype(np.float32))
    step = np.eye(3) * h
    fd = np.stack([(tilt.log_prob(x + e, t) - tilt.log_prob(x - e, t)) / (2 * h) for e in step], axis=1)
    np.testing.assert_allclose(tilt.score(x, t), fd, rtol=0, atol=1e-8)
    assert np.all(np.abs(s32 - fd) <= np.spacing(np.abs(fd).astype(np.float32)))  # within a float32 ulp
    assert tilt.score(x, t).dtype == np.float64 and tilt.score_and_se(x32, t)[0].dtype == np.float64
    y = euler_maruyama(tilt.score, OU(), time_grid(5.0, 1e-2, 10, "geometric", OU()), x32, np.random.default_rng(2))
    assert y.dtype == np.float32 and np.all(np.isfinite(y))
    far = np.ones((2, 3), np.float32)
    far[1] = 3e19  # |x|^2 / 2 = 1.35e39: beyond float32, not float64
    with pytest.raises(ValueError, match=r"the log p_t at x\[1\] \(largest \|entry\| 3e\+19\) is beyond float32's "
                                         r"range: the point is too far out for float32; pass float64 points"):
        tilt.log_prob(far, t)
    far64 = far.astype(np.float64)  # float64 holds it: -|x|^2 / 2, the rest (at most 20 in size) lost beside it
    assert tilt.log_prob(far64, t)[1] == pytest.approx(-0.5 * np.sum(far64[1] ** 2), rel=1e-15, abs=0)
    np.testing.assert_array_equal(tilt.score(far, t)[1], -far[1])  # the score is -x there, within float32


@pytest.mark.parametrize("rng, match", [(-1, r"must be a seed >= 0, got -1$"),
                                        (np.int64(-2), r"must be a seed >= 0, got -2$"),
                                        (1.5, r"must be a numpy.random.Generator .* got float$"),
                                        (True, r"must be a numpy.random.Generator .* got bool$")])
def test_isometric_mixture_names_a_bad_rng(rng, match):
    """rng=-1 raised NumPy's "expected non-negative integer", naming no argument; now as
    GaussianMixture.paper_family words it. A seed and a Generator give the same mixture."""
    from sgm_ref.experiments.families import isometric_mixture

    with pytest.raises(ValueError, match=r"^rng \(a Generator or an int seed\) " + match):
        isometric_mixture(3, [[1.0, 0.0]], rng)
    seeded, drawn = isometric_mixture(3, [[1.0, 0.0]], 4), isometric_mixture(3, [[1.0, 0.0]], np.random.default_rng(4))
    assert np.array_equal(seeded.means, drawn.means)
