"""Tests written to kill mutants of sgm_ref/experiments/families.py, sgm_ref/experiments/baselines.py
and sgm_ref/plain.py that the module tests let through (a mutation-testing review).

Each test names the mutant it kills and checks the code against an independent reference:
a closed form, mpmath, scipy, torch autograd, or the definition the module docstring states.
"""

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

from sgm_ref import plain
from sgm_ref.experiments.baselines import fit_identity_mixture
from sgm_ref.experiments.families import SubspaceTilt, embedding, isometric_mixture


# -- families ----------------------------------------------------------------------------------
def _gram_schmidt(G, digits=40):
    """Classical Gram-Schmidt of G's columns in mpmath: the unique Q with Q^T Q = I and
    G = Q R, R upper triangular with a positive diagonal."""
    import mpmath

    with mpmath.workdps(digits):
        cols = [[mpmath.mpf(float(v)) for v in G[:, j]] for j in range(G.shape[1])]
        out = []
        for c in cols:
            for q in out:
                dot = mpmath.fsum(x * y for x, y in zip(c, q))
                c = [x - dot * y for x, y in zip(c, q)]
            norm = mpmath.sqrt(mpmath.fsum(x * x for x in c))
            out.append([x / norm for x in c])
        return np.array([[float(v) for v in q] for q in out]).T


@pytest.mark.parametrize("d, k, seed", [(5, 1, 0), (7, 3, 1), (4, 4, 2), (9, 2, 3)])
def test_embedding_is_the_gram_schmidt_frame_of_its_gaussian_draw(d, k, seed):
    """Mutants: the sign fix inverted (np.diag(R) > 0: P -> -P) or dropped (P = Q of LAPACK's
    Householder QR, whose first column is -sign(G_00) G_0 / |G_0|: not Haar). Both kept P
    orthonormal and seeded, all the module tests asked. P = Q diag(sign(diag R)) is the QR
    factor with a positive diagonal of R, i.e. the Gram-Schmidt frame of G, the (d, k)
    standard normal draw of rng (module docstring; Mezzadri 2007): against mpmath at 40 digits."""
    G = np.random.default_rng(seed).standard_normal((d, k))
    P = embedding(d, k, np.random.default_rng(seed))
    np.testing.assert_allclose(P, _gram_schmidt(G), rtol=0, atol=1e-14)


def test_isometric_mixture_draws_its_frame_from_default_rng_of_the_seed():
    """Mutant: an int seed s read as default_rng(s + 1) (killed before only by the refusal of
    s = -1). The documented seed stream: means = means_k @ embedding(d, k, default_rng(s)).T,
    equal weights 1/K, identity covariances."""
    means_k = np.array([[2.0, 0.0], [0.0, 2.0], [-2.0, -1.0]])
    for seed in (0, 7):
        g = isometric_mixture(6, means_k, seed)
        P = embedding(6, 2, np.random.default_rng(seed))
        np.testing.assert_array_equal(g.means, means_k @ P.T)
        np.testing.assert_array_equal(g.weights, np.full(3, 1.0 / 3.0))
        g2 = isometric_mixture(6, means_k, np.random.default_rng(seed))  # a Generator: the same draws
        np.testing.assert_array_equal(g2.means, g.means)


def _tilt(d=3, seed=2, **kwargs):
    """A k = 1 tilt f(u) = 2 tanh(u) - 0.5 tanh(u - 1) embedded in R^d."""
    W, b, a = np.array([[1.0], [1.0]]), np.array([0.0, -1.0]), np.array([2.0, -0.5])
    return SubspaceTilt(W, b, a, embedding(d, 1, np.random.default_rng(seed)), **kwargs)


def test_subspace_tilt_sample_is_its_subspace_draw_plus_the_complement_noise():
    """Mutant: X = z + P u (the subspace part of z not removed: P^T X = u + P^T z, the k-dimensional
    law convolved with N(0, I), not exp(f) gamma_k / Z). The docstring's construction:
    X = P u + (I - P P^T) z, u = sample_subspace(n, rng), then z ~ N(0, I_d) from the same rng."""
    tilt = _tilt(d=4, n_mc=16, rng=np.random.default_rng(0), n_normaliser=64)
    x = tilt.sample(50, np.random.default_rng(3))
    rng = np.random.default_rng(3)
    u = tilt.sample_subspace(50, rng)
    z = rng.standard_normal((50, 4))
    P = tilt.P
    np.testing.assert_allclose(x @ P, u, rtol=0, atol=1e-14)
    np.testing.assert_allclose(x - (x @ P) @ P.T, z - np.outer(z @ P[:, 0], P[:, 0]), rtol=0, atol=1e-14)


def test_subspace_tilt_normaliser_uses_the_draws_after_the_oracles():
    """Mutant: the normaliser's points drawn before the oracle's Z (a seed stream swapped: the
    same law, other bits for every seeded tilt). The documented order: rng draws the n_mc Z,
    then the n_normaliser points v, and log Z = log mean e^{f(v)} (scipy's logsumexp)."""
    tilt = _tilt(n_mc=8, rng=np.random.default_rng(5), n_normaliser=32)
    rng = np.random.default_rng(5)
    rng.standard_normal((8, 1))
    v = rng.standard_normal((32, 1))[:, 0]
    f = 2.0 * np.tanh(v) - 0.5 * np.tanh(v - 1.0)
    assert tilt.log_normaliser == pytest.approx(logsumexp(f) - np.log(32), rel=1e-14, abs=1e-15)


def test_subspace_tilt_standard_error_is_the_spread_of_the_oracle():
    """Mutants: the delta-method residual g - R taken as g (the spread about 0, not about the
    estimate) and se doubled. se is the standard error of the Monte-Carlo score (docstring:
    sum_i se_i^2 = the oracle's own mean squared error): against the spread of the score over
    400 oracles with independent Z (n_mc = 64), as variances summed over coordinates; the
    sampling error of that ratio is about 7%. Small t makes g nearly constant, R large."""
    x = np.array([[0.4, -0.2, 1.0], [-1.0, 0.5, 0.3]])
    for t in (0.05, 0.5):
        scores, se2 = [], []
        for seed in range(400):
            score, se = _tilt(n_mc=64, rng=np.random.default_rng(seed), n_normaliser=2).score_and_se(x, t)
            scores.append(score)
            se2.append(np.sum(se**2, axis=1))
        ratio = np.sum(np.var(np.array(scores), axis=0, ddof=1), axis=1) / np.mean(se2, axis=0)
        assert np.all((0.75 < ratio) & (ratio < 1.33)), (t, ratio)


def test_subspace_tilt_checks_the_frame_to_1e_10():
    """Mutant: P^T P = I checked to 1e-3, not the documented 1e-10. A frame 1e-6 off is refused,
    one 1e-13 off accepted."""
    P = embedding(3, 1, np.random.default_rng(2))
    W, b, a = np.array([[1.0]]), np.zeros(1), np.ones(1)
    with pytest.raises(ValueError, match="P must have orthonormal columns"):
        SubspaceTilt(W, b, a, P * (1 + 1e-6), rng=np.random.default_rng(0), n_mc=8, n_normaliser=8)
    SubspaceTilt(W, b, a, P * (1 + 1e-13), rng=np.random.default_rng(0), n_mc=8, n_normaliser=8)


def test_subspace_tilt_oracle_with_a_tilt_beyond_exp_range():
    """Mutant: the oracle's log-sum-exp maximum dropped (top = 0). With f = 800 tanh(u), e^f
    overflows float64 (f_max = 800 > 709): log p_t was inf - inf, the score NaN. The module's
    Monte-Carlo estimator with the same draws (rng gives the n_mc Z first, then the normaliser's
    points) in mpmath at 30 digits:
    log p_t = log gamma_d(x) + log mean_i e^{f(y_i)} - log Z,
    score = -x + P alpha sum_i e^{f(y_i)} f'(y_i) / sum_i e^{f(y_i)}, y_i = alpha u + sigma Z_i."""
    import mpmath

    d, n_mc, n_norm = 2, 16, 32
    P = embedding(d, 1, np.random.default_rng(1))
    tilt = SubspaceTilt(np.array([[1.0]]), np.zeros(1), np.array([800.0]), P, n_mc=n_mc, rng=np.random.default_rng(4),
                        n_normaliser=n_norm)
    rng = np.random.default_rng(4)
    Z, V = rng.standard_normal(n_mc), rng.standard_normal(n_norm)
    x = np.array([[0.3, -0.7], [-1.2, 0.4]])
    t = 0.5
    logp, score = tilt.log_prob(x, t), tilt.score(x, t)
    with mpmath.workdps(30):
        log_z = mpmath.log(mpmath.fsum(mpmath.exp(800 * mpmath.tanh(mpmath.mpf(float(v)))) for v in V) / n_norm)
        assert tilt.log_normaliser == pytest.approx(float(log_z), rel=1e-14)
        alpha, sigma = mpmath.exp(-mpmath.mpf(t)), mpmath.sqrt(-mpmath.expm1(-2 * mpmath.mpf(t)))
        for j in range(2):
            u = sum(mpmath.mpf(float(x[j, i])) * mpmath.mpf(float(P[i, 0])) for i in range(d))
            ys = [alpha * u + sigma * mpmath.mpf(float(z)) for z in Z]
            e = [mpmath.exp(800 * mpmath.tanh(y)) for y in ys]
            grad = alpha * mpmath.fsum(ei * 800 / mpmath.cosh(y) ** 2 for ei, y in zip(e, ys)) / mpmath.fsum(e)
            sq = mpmath.fsum(mpmath.mpf(float(v)) ** 2 for v in x[j])
            want = -(d * mpmath.log(2 * mpmath.pi) + sq) / 2 + mpmath.log(mpmath.fsum(e) / n_mc) - log_z
            assert logp[j] == pytest.approx(float(want), rel=1e-13), j
            want_score = [float(-mpmath.mpf(float(x[j, i])) + grad * mpmath.mpf(float(P[i, 0]))) for i in range(d)]
            np.testing.assert_allclose(score[j], want_score, rtol=1e-11, atol=1e-12)


def test_embedding_refusal_names_the_smallest_d_that_works():
    """Mutant: the message's fix said 'use d >= {d}' (the d given) instead of k."""
    with pytest.raises(ValueError, match=r"^the subspace dimension k = 3 must be <= d = 2; use d >= 3$"):
        embedding(2, 3, np.random.default_rng(0))


def test_subspace_tilt_sample_names_its_true_memory_limit():
    """Mutant: check_size(n, 1, ...) instead of 2 d numbers per draw (the draws and their
    noise): the limit named was 2 d times too large. The limit is the machine's memory (or
    numpy's largest array) over 8 bytes times 2 d."""
    from sgm_ref.targets._checks import _memory_bytes

    d = 4
    tilt = _tilt(d=d, n_mc=8, rng=np.random.default_rng(0), n_normaliser=8)
    limit = np.iinfo(np.intp).max
    if _memory_bytes():
        limit = min(limit, _memory_bytes())
    with pytest.raises(ValueError, match=rf"use n <= {limit // (8 * 2 * d)}$"):
        tilt.sample(10**20, np.random.default_rng(0))


# -- baselines ---------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_em_seeding_is_d2_sampling(seed):
    """Mutants: k-means++ seeding replaced by uniform draws of rows, and the D^2 distance taken
    to the last chosen mean only (not the nearest of all chosen). Three groups of identical
    points at 0, 10 and 100 (d = 1): D^2 sampling gives a point of an unchosen group
    probability 1, so the K = 3 seeds are one per group, and one EM step moves each mean by
    at most 10 e^{-50} (the responsibilities across a gap of 10). Either mutant draws two
    seeds from one group in most of these seeds, and the step then halves a group."""
    x = np.repeat([0.0, 10.0, 100.0], 30)[:, None]
    result = fit_identity_mixture(x, 3, np.random.default_rng(seed), n_init=1, max_iter=1)
    np.testing.assert_allclose(np.sort(result.mixture.means[:, 0]), [0.0, 10.0, 100.0], rtol=0, atol=1e-12)
    np.testing.assert_allclose(result.mixture.weights, np.full(3, 1.0 / 3.0), rtol=0, atol=1e-12)


def test_em_accepts_as_many_components_as_samples():
    """Mutant: K > n refused as K >= n. The docstring allows K at most n; K = n = 3 distinct
    points: D^2 seeding puts one mean on each point."""
    x = np.array([[0.0, 0.0], [40.0, 0.0], [0.0, 40.0]])
    result = fit_identity_mixture(x, 3, np.random.default_rng(0), n_init=1, max_iter=1)
    means = result.mixture.means[np.lexsort(result.mixture.means.T[::-1])]
    np.testing.assert_allclose(means, x[np.lexsort(x.T[::-1])], rtol=0, atol=1e-12)


@pytest.mark.parametrize("max_iter", [1, 2])
def test_em_counts_its_iterations(max_iter):
    """Mutant: iterations reported one short. With max_iter = 1 or 2 on data whose
    log-likelihood still rises by more than tol, the start runs exactly max_iter iterations
    and has not converged."""
    x = np.concatenate([np.zeros(20), np.full(20, 1.5)])[:, None]
    result = fit_identity_mixture(x, 2, np.random.default_rng(0), n_init=1, max_iter=max_iter, tol=1e-300)
    assert result.iterations == max_iter and not result.converged


def test_em_refuses_a_zero_tolerance():
    """Mutant: tol = 0 accepted (the docstring: tol > 0; with 0 a start whose log-likelihood
    rises by rounding alone runs all max_iter iterations)."""
    with pytest.raises(ValueError, match=r"^tol must be > 0"):
        fit_identity_mixture(np.random.default_rng(0).standard_normal((10, 2)), 2, np.random.default_rng(0), tol=0.0)


def test_em_refusal_names_the_number_of_samples():
    """Mutant: the message said 'got n = {K}' (the components, not the samples)."""
    with pytest.raises(ValueError, match=r"^K = 5 components need at least K samples, got n = 3$"):
        fit_identity_mixture(np.zeros((3, 2)), 5, np.random.default_rng(0))


def test_em_seeds_identical_samples():
    """Mutant: the uniform fallback of the D^2 seeding taken only for a negative total (total < 0).
    All samples equal: every squared distance is 0, and D^2 sampling with p = 0 / 0 raised
    numpy's 'probabilities contain NaN'. The fit is the point itself, weights 1/K each
    (identical components share the samples equally)."""
    x = np.full((5, 2), 1.5)
    result = fit_identity_mixture(x, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(result.mixture.means, x[:2])
    np.testing.assert_allclose(result.mixture.weights, [0.5, 0.5], rtol=1e-15)


# -- plain -------------------------------------------------------------------------------------
def _scipy_mixture(x, t, weights, means, covariances, process):
    """log p_t and grad log p_t of sum_k w_k N(a mu_k, a^2 Sigma_k + s2 I), w_k > 0 only, by scipy."""
    a, s2 = plain.marginal(t, process)
    d = x.shape[1]
    logs, grads = [], []
    for w, mu, cov in zip(weights, means, covariances):
        if w == 0:
            continue
        C = a * a * cov + s2 * np.eye(d)
        logs.append(np.log(w) + multivariate_normal(a * mu, C).logpdf(x))
        grads.append(-np.linalg.solve(C, (x - a * mu).T).T)
    L = np.stack(logs, axis=1)
    pi = np.exp(L - logsumexp(L, axis=1, keepdims=True))
    return logsumexp(L, axis=1), np.einsum("nk,knd->nd", pi, np.stack(grads))


def test_plain_mixture_score_far_from_every_mean():
    """Mutant: the streaming log-sum-exp's running maximum dropped (m_new = 0). At points 50
    to 80 from the means every log w_k N_k is below -1250: e^{log w_k N_k} underflows to 0
    and log p_t was -inf, the score NaN. Against scipy's logsumexp of multivariate_normal.logpdf."""
    weights, means = np.array([0.3, 0.7]), np.array([[3.0, 0.0], [-3.0, 1.0]])
    covs = np.stack([np.eye(2), np.diag([2.0, 0.5])])
    x = np.array([[60.0, 40.0], [-50.0, 10.0], [0.0, -80.0]])
    for t, cov in ((0.01, None), (0.3, covs)):
        p0 = plain.mixture(weights, means, cov)
        logp, score = plain.mixture_score(x, t, p0)
        ref_logp, ref_score = _scipy_mixture(x, t, weights, means, np.stack([np.eye(2)] * 2) if cov is None else cov,
                                             plain.OU)
        np.testing.assert_allclose(logp, ref_logp, rtol=1e-13)
        np.testing.assert_allclose(score, ref_score, rtol=1e-12)


def test_plain_mixture_drops_a_zero_weight_component():
    """Mutant: keep = weights >= 0 (zero weights kept). A zero-weight first component gave
    log w = -inf, and the streaming log-sum-exp exp(-inf - (-inf)) = NaN. The docstring drops
    such components: against scipy over the others."""
    weights, means = np.array([0.0, 0.4, 0.6]), np.array([[1.0, 1.0], [3.0, 0.0], [-3.0, 1.0]])
    x = np.random.default_rng(0).standard_normal((5, 2)) * 2
    logp, score = plain.mixture_score(x, 0.2, plain.mixture(weights, means))
    ref_logp, ref_score = _scipy_mixture(x, 0.2, weights, means, np.stack([np.eye(2)] * 3), plain.OU)
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-13)
    np.testing.assert_allclose(score, ref_score, rtol=1e-12, atol=1e-14)


def test_plain_relu_derivative_at_zero_is_torchs():
    """Mutant: relu' = 1[z >= 0] (the comment and torch say 1[z > 0]). A pre-activation exactly
    0 (zero weights and biases) is not measure zero: against torch autograd of torch.relu."""
    torch = pytest.importorskip("torch")

    z = np.array([-1.0, 0.0, -0.0, 2.0])
    zt = torch.tensor(z, requires_grad=True)
    torch.relu(zt).sum().backward()
    h, dh = plain.relu(z)
    np.testing.assert_array_equal(h, torch.relu(torch.tensor(z)).numpy())
    np.testing.assert_array_equal(dh, zt.grad.numpy())
