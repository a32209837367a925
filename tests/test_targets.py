"""Tests for sgm_ref.targets.GaussianMixture: the exact oracle for p_t, sampling, presets.

Independent references: scipy.stats.multivariate_normal + scipy.special.logsumexp for
log p_t, NumPy solves for the score, 4th-order central differences of log p_t, and the
forward-marginal parameters written out here (mean alpha_t mu_k, covariance
alpha_t^2 Sigma_k + sigma_t^2 I) rather than taken from the library.
"""

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import cho_factor, cho_solve
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import sgm_ref.targets.gaussian_mixture as gm_module
from sgm_ref import OU, VP, GaussianMixture

KINDS = ("identity", "diagonal", "full")
PROCESSES = {"OU": OU(), "VP": VP()}
# times at which the oracle is checked; VP lives on [0, 1]
TIMES = {"OU": (0.0, 1e-4, 0.3, 5.0), "VP": (0.0, 1e-4, 0.3, 1.0)}

# deterministic hypothesis runs, no example database written to disk
PROPERTY = settings(max_examples=100, deadline=None, derandomize=True, database=None)


# -- helpers ---------------------------------------------------------------------------


def make_mixture(kind, K=4, d=3, seed=0, mean_scale=1.5):
    """A random mixture of the given covariance kind, reproducible from seed.

    Returns (mixture, weights, means, covariances as a dense (K, d, d) stack). Variances
    and eigenvalues lie in [0.1, 2] so the oracle is well conditioned.
    """
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K))
    mu = mean_scale * rng.standard_normal((K, d))
    if kind == "identity":
        cov = None
        dense = np.broadcast_to(np.eye(d), (K, d, d)).copy()
    elif kind == "diagonal":
        cov = rng.uniform(0.1, 2.0, (K, d))
        dense = np.stack([np.diag(c) for c in cov])
    else:
        Q = np.linalg.qr(rng.standard_normal((K, d, d)))[0]
        lam = rng.uniform(0.1, 2.0, (K, d))
        cov = np.einsum("kij,kj,klj->kil", Q, lam, Q)
        cov = 0.5 * (cov + cov.transpose(0, 2, 1))
        dense = cov.copy()
    return GaussianMixture(w, mu, cov), w, mu, dense


def marginal_coefficients(process, t):
    """(alpha_t, sigma_t^2), written out here: B = beta_min t + t^2 (beta_max - beta_min) / 2."""
    bmin, bmax = (2.0, 2.0) if isinstance(process, OU) else (process.beta_min, process.beta_max)
    t = np.asarray(t, dtype=np.float64)
    B = bmin * t + 0.5 * t * t * (bmax - bmin)
    return np.exp(-0.5 * B), -np.expm1(-B)


def reference_log_prob(w, mu, dense, x, a, s2):
    """log p_t by scipy: logsumexp_k [log w_k + log N(x; a mu_k, a^2 Sigma_k + s2 I)], scalar t."""
    d = mu.shape[1]
    terms = [
        np.log(w[k]) + multivariate_normal(a * mu[k], a * a * dense[k] + s2 * np.eye(d)).logpdf(x)
        for k in range(len(w))
        if w[k] > 0
    ]
    return logsumexp(np.reshape(terms, (len(terms), x.shape[0])), axis=0)


def reference_score(w, mu, dense, x, a, s2):
    """grad log p_t by Cholesky solves: -sum_k pi_k C_k^{-1} (x - a mu_k), scalar t."""
    d = mu.shape[1]
    logc, grads = [], []
    for k in range(len(w)):
        if w[k] == 0:
            continue
        C = a * a * dense[k] + s2 * np.eye(d)
        factor = cho_factor(C, lower=True)
        r = x - a * mu[k]
        sol = cho_solve(factor, r.T).T
        logdet = 2.0 * np.sum(np.log(np.diag(factor[0])))
        logc.append(np.log(w[k]) - 0.5 * (np.sum(r * sol, axis=1) + logdet + d * np.log(2 * np.pi)))
        grads.append(-sol)
    logc = np.array(logc)
    pi = np.exp(logc - logsumexp(logc, axis=0))
    return np.einsum("kn,knd->nd", pi, np.array(grads)), logsumexp(logc, axis=0)


def score_scale(mu, dense, x, a, s2):
    """Per-row size of the largest single-component score term, max_k |x - a mu_k| / lam_min(C_k).

    Rounding errors in a mixture score are relative to this (terms may cancel), so it is
    the honest scale for comparing two evaluations.
    """
    n = x.shape[0]
    a = np.broadcast_to(np.asarray(a, dtype=np.float64), (n,))
    s2 = np.broadcast_to(np.asarray(s2, dtype=np.float64), (n,))
    lam_min = np.linalg.eigvalsh(dense)[:, 0]
    r = np.max(np.abs(x[:, None, :] - a[:, None, None] * mu[None]), axis=2)  # (n, K)
    v = a[:, None] ** 2 * lam_min[None] + s2[:, None]
    return np.max(r / v, axis=1)


def points(mixture, n, seed, t=0.0, process=OU()):
    """n points where p_t has mass plus a few far out (exercise the log-sum-exp)."""
    rng = np.random.default_rng(seed)
    x0 = mixture.sample(n, rng)
    xt, _ = process.perturb(x0, t, rng)
    far = 6.0 * rng.standard_normal((3, mixture.dim))
    return np.concatenate([xt, far])


def fd_score(mixture, x, t, process, h=1e-4):
    """4th-order central difference of log_prob: (-f(+2h) + 8 f(+h) - 8 f(-h) + f(-2h)) / 12h."""
    def f(y):
        return mixture.log_prob(y, t, process)

    out = np.empty_like(x)
    for j in range(x.shape[1]):
        e = np.zeros(x.shape[1])
        e[j] = h
        out[:, j] = (-f(x + 2 * e) + 8 * f(x + e) - 8 * f(x - e) + f(x - 2 * e)) / (12 * h)
    return out


# -- (a) score = gradient of log_prob -----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pname", ["OU", "VP"])
@pytest.mark.parametrize("which_t", [0, 1, 2, 3, "per-row"], ids=["t=0", "t=1e-4", "t=0.3", "t=max", "per-row"])
def test_score_is_gradient_of_log_prob(kind, pname, which_t):
    process = PROCESSES[pname]
    mixture = make_mixture(kind, K=4, d=3, seed=1)[0]
    if which_t == "per-row":
        x = points(mixture, 12, seed=2)
        t = np.random.default_rng(3).choice(TIMES[pname], size=x.shape[0])
    else:
        t = TIMES[pname][which_t]
        x = points(mixture, 12, seed=2, t=t, process=process)
    score = mixture.score(x, t, process)
    fd = fd_score(mixture, x, t, process)
    # h = 1e-4 and a 4th-order stencil: truncation ~1e-16 f^(5), rounding ~1e-12 |log p|;
    # observed ~1e-11, a missing factor or sign would be O(1)
    assert np.max(np.abs(score - fd)) <= 1e-7 * np.max(np.abs(score))


# -- (b) log_prob and score against scipy / numpy -----------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_log_prob_matches_scipy(kind, pname):
    process = PROCESSES[pname]
    mixture, w, mu, dense = make_mixture(kind, K=4, d=3, seed=4)
    for t in TIMES[pname] + (0.05,):
        x = points(mixture, 15, seed=5, t=t, process=process)
        a, s2 = marginal_coefficients(process, t)
        ref = reference_log_prob(w, mu, dense, x, a, s2)
        np.testing.assert_allclose(mixture.log_prob(x, t, process), ref, rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_score_matches_cholesky_reference(kind, pname):
    process = PROCESSES[pname]
    mixture, w, mu, dense = make_mixture(kind, K=4, d=3, seed=6)
    for t in TIMES[pname]:
        x = points(mixture, 15, seed=7, t=t, process=process)
        a, s2 = marginal_coefficients(process, t)
        ref, ref_logp = reference_score(w, mu, dense, x, a, s2)
        logp, score = mixture.log_prob_and_score(x, t, process)
        scale = score_scale(mu, dense, x, a, s2)
        assert np.all(np.abs(score - ref) <= 1e-12 * (1.0 + scale[:, None]))
        np.testing.assert_allclose(logp, ref_logp, rtol=1e-12, atol=0)


def test_identity_mixture_matches_tilted_gaussian_form():
    # p_0 = exp(f) gamma_d / Z with f(x) = log sum_k w_k exp(mu_k . x - |mu_k|^2 / 2), Z = 1
    mixture, w, mu, _ = make_mixture("identity", K=3, d=4, seed=8)
    x = points(mixture, 10, seed=9)
    f = logsumexp(np.log(w)[None] + x @ mu.T - 0.5 * np.sum(mu**2, axis=1)[None], axis=1)
    log_gamma = -0.5 * np.sum(x**2, axis=1) - 2.0 * np.log(2 * np.pi)
    np.testing.assert_allclose(mixture.log_prob(x), f + log_gamma, rtol=1e-12, atol=0)


def test_weights_are_not_renormalised():
    w = np.array([0.3, 0.7 + 5e-9])  # sums to 1 + 5e-9: inside the 1e-8 tolerance
    mu = np.array([[1.0, 0.0], [-1.0, 0.5]])
    mixture = GaussianMixture(w, mu)
    assert np.array_equal(mixture.weights, w)
    # and the oracle uses them as given: log p is off by log(sum w), not renormalised
    x = np.array([[0.2, -0.1], [3.0, 1.0]])
    dense = np.broadcast_to(np.eye(2), (2, 2, 2))
    ref = reference_log_prob(w, mu, dense, x, 1.0, 0.0)
    np.testing.assert_allclose(mixture.log_prob(x), ref, rtol=1e-13, atol=0)
    renormalised = reference_log_prob(w / w.sum(), mu, dense, x, 1.0, 0.0)
    assert np.all(np.abs(mixture.log_prob(x) - renormalised) > 2e-9)
    # a sum off by 1e-10 is accepted too
    GaussianMixture([0.5, 0.5 + 1e-10], mu)


def test_stored_arrays_are_read_only_copies():
    w = np.array([0.25, 0.75])
    mu = np.zeros((2, 3))
    mixture = GaussianMixture(w, mu)
    w[0] = 0.9  # the caller mutating their array does not change the mixture
    assert mixture.weights[0] == 0.25
    with pytest.raises(ValueError):
        mixture.means[0, 0] = 1.0


# -- (c) per-row t = loop over scalar t ------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_per_row_t_equals_scalar_t(kind, pname):
    process = PROCESSES[pname]
    mixture = make_mixture(kind, K=3, d=4, seed=10)[0]
    x = points(mixture, 9, seed=11)
    t = np.random.default_rng(12).uniform(0.0, 1.0, x.shape[0])
    t[:3] = (0.0, 1e-4, 1.0)
    logp, score = mixture.log_prob_and_score(x, t, process)
    for i, ti in enumerate(t):
        # the same batch at a scalar time, row i: identical arithmetic, identical bits
        lp_i, s_i = mixture.log_prob_and_score(x, float(ti), process)
        assert logp[i] == lp_i[i]
        assert np.array_equal(score[i], s_i[i])
        # the row on its own: a (1, d) matrix product may round differently, by ulps
        lp_1, s_1 = mixture.log_prob_and_score(x[i : i + 1], float(ti), process)
        assert abs(lp_1[0] - logp[i]) <= 1e-14 * (1.0 + abs(logp[i]))
        assert np.max(np.abs(s_1[0] - score[i])) <= 1e-14 * (1.0 + np.max(np.abs(score[i])))


@pytest.mark.parametrize("kind", KINDS)
def test_log_prob_and_score_agree_with_separate_calls(kind):
    mixture = make_mixture(kind, seed=13)[0]
    x = points(mixture, 8, seed=14)
    logp, score = mixture.log_prob_and_score(x, 0.2)
    assert np.array_equal(logp, mixture.log_prob(x, 0.2))
    assert np.array_equal(score, mixture.score(x, 0.2))


# -- (d) properties ---------------------------------------------------------------------


@st.composite
def mixture_cases(draw, max_K=4, max_d=4):
    kind = draw(st.sampled_from(KINDS))
    K = draw(st.integers(1, max_K))
    d = draw(st.integers(1, max_d))
    seed = draw(st.integers(0, 2**32 - 1))
    return kind, K, d, seed


times = st.one_of(
    st.sampled_from([0.0, 1e-4, 1.0]),
    st.floats(min_value=0.0, max_value=1.0, allow_nan=False, allow_subnormal=False),
)


@PROPERTY
@given(case=mixture_cases(), n=st.integers(1, 6), t=times, pname=st.sampled_from(["OU", "VP"]))
def test_shapes_dtypes_and_float32(case, n, t, pname):
    kind, K, d, seed = case
    process = PROCESSES[pname]
    mixture, w, mu, dense = make_mixture(kind, K, d, seed)
    x64 = np.random.default_rng(seed).standard_normal((n, d)) * 2.0
    x32 = x64.astype(np.float32)
    ref_x = x32.astype(np.float64)  # the same points, so only the arithmetic differs
    for per_row in (False, True):
        tt = np.full(n, t) if per_row else t
        lp64, s64 = mixture.log_prob_and_score(ref_x, tt, process)
        lp32, s32 = mixture.log_prob_and_score(x32, tt, process)
        assert lp64.shape == lp32.shape == (n,) and s64.shape == s32.shape == (n, d)
        assert lp64.dtype == s64.dtype == np.float64
        assert lp32.dtype == s32.dtype == np.float32
        assert mixture.log_prob(x32, tt, process).dtype == np.float32
        assert mixture.score(x32, tt, process).dtype == np.float32
        a, s2 = marginal_coefficients(process, t)
        scale = score_scale(mu, dense, ref_x, a, s2)
        # float32 parameters and outputs: ~1e-7 relative expected, 1e-4 allowed
        assert np.all(np.abs(lp32 - lp64) <= 1e-4 * (1.0 + np.abs(lp64)))
        assert np.all(np.abs(s32 - s64) <= 1e-4 * (1.0 + scale[:, None]))


@PROPERTY
@given(case=mixture_cases(), t=times, perm_seed=st.integers(0, 2**32 - 1))
def test_invariant_under_component_permutation(case, t, perm_seed):
    kind, K, d, seed = case
    mixture, w, mu, dense = make_mixture(kind, K, d, seed)
    perm = np.random.default_rng(perm_seed).permutation(K)
    permuted = GaussianMixture(w[perm], mu[perm], None if kind == "identity" else mixture.covariances[perm])
    x = points(mixture, 5, seed=seed + 1)
    lp, s = mixture.log_prob_and_score(x, t)
    lp_p, s_p = permuted.log_prob_and_score(x, t)
    a, s2 = marginal_coefficients(OU(), t)
    # only the summation order changes
    assert np.all(np.abs(lp_p - lp) <= 1e-12 * (1.0 + np.abs(lp)))
    assert np.all(np.abs(s_p - s) <= 1e-12 * (1.0 + score_scale(mu, dense, x, a, s2)[:, None]))
    np.testing.assert_allclose(permuted.mean(), mixture.mean(), rtol=1e-12, atol=1e-14)


@PROPERTY
@given(case=mixture_cases(), t=times, where=st.integers(0, 4), at_origin=st.booleans())
def test_zero_weight_component_changes_nothing(case, t, where, at_origin):
    kind, K, d, seed = case
    mixture, w, mu, dense = make_mixture(kind, K, d, seed)
    where = min(where, K)
    rng = np.random.default_rng(seed + 7)
    # the extra component sits among the others, or at the origin where it would
    # dominate the far-out points if its weight were not zero
    new_mu = np.zeros(d) if at_origin else rng.standard_normal(d)
    if kind == "identity":
        cov = None
    elif kind == "diagonal":
        cov = np.insert(mixture.covariances, where, rng.uniform(0.1, 2.0, d), axis=0)
    else:
        A = rng.standard_normal((d, d))
        cov = np.insert(mixture.covariances, where, A @ A.T + 0.1 * np.eye(d), axis=0)
    padded = GaussianMixture(np.insert(w, where, 0.0), np.insert(mu, where, new_mu, axis=0), cov)
    assert padded.n_components == K + 1
    x = points(mixture, 6, seed=seed + 2)
    for process in PROCESSES.values():
        lp, s = mixture.log_prob_and_score(x, t, process)
        lp_z, s_z = padded.log_prob_and_score(x, t, process)
        assert np.array_equal(lp_z, lp) and np.array_equal(s_z, s)


@PROPERTY
@given(case=mixture_cases(), t=times, pname=st.sampled_from(["OU", "VP"]))
def test_at_t_is_the_marginal(case, t, pname):
    kind, K, d, seed = case
    process = PROCESSES[pname]
    mixture, w, mu, dense = make_mixture(kind, K, d, seed)
    marginal = mixture.at(t, process)
    assert marginal.covariance_type == mixture.covariance_type
    a, s2 = marginal_coefficients(process, t)
    # alpha = exp(-B/2): a rounding of B (up to ~10 here) in another order moves alpha
    # by ~B eps relative, so a few ulps of B, not of alpha, is the right tolerance
    np.testing.assert_allclose(marginal.means, a * mu, rtol=1e-14, atol=0)
    assert np.array_equal(marginal.weights, w)
    x = points(mixture, 5, seed=seed + 3, t=t, process=process)
    lp_t, s_t = mixture.log_prob_and_score(x, t, process)
    lp_0, s_0 = marginal.log_prob_and_score(x, 0.0, process)
    # the two routes factorise different (equal) matrices: a few ulps times the
    # condition number (<= 20 here) of each component covariance
    assert np.all(np.abs(lp_0 - lp_t) <= 1e-12 * (1.0 + np.abs(lp_t)))
    scale = score_scale(mu, dense, x, a, s2)
    assert np.all(np.abs(s_0 - s_t) <= 1e-12 * (1.0 + scale[:, None]))


def test_at_zero_is_the_same_mixture():
    mixture, w, mu, dense = make_mixture("full", seed=15)
    same = mixture.at(0.0)
    assert np.array_equal(same.means, mu) and np.array_equal(same.covariances, dense)
    t_large = mixture.at(40.0)  # alpha ~ 4e-18: every component is N(~0, ~I)
    np.testing.assert_allclose(t_large.covariances, np.broadcast_to(np.eye(3), (4, 3, 3)), atol=1e-15)


def test_at_several_times_is_refused_naming_a_scalar_not_rows():
    """at([0.1, 0.2]) said 't must be a scalar or have one value per row, shape (1,)': at()
    has no rows; it gives one mixture, at one time."""
    mixture = GaussianMixture.ring()
    for t in (np.array([0.1, 0.2]), [0.1, 0.2]):
        with pytest.raises(ValueError, match=r"^t must be a scalar: at\(\) gives p_t at one time, got shape \(2,\)"):
            mixture.at(t)
    np.testing.assert_array_equal(mixture.at([0.3]).means, mixture.at(0.3).means)  # one time, as a list: as before


# -- (e) sampling, moments, presets, serialisation --------------------------------------


def test_mean_and_covariance_formulas():
    mixture, w, mu, dense = make_mixture("full", K=3, d=2, seed=16)
    m = sum(w[k] * mu[k] for k in range(3))
    second = sum(w[k] * (dense[k] + np.outer(mu[k], mu[k])) for k in range(3))
    np.testing.assert_allclose(mixture.mean(), m, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(mixture.covariance(), second - np.outer(m, m), rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_moments(kind):
    n = 20_000
    mixture = make_mixture(kind, K=3, d=3, seed=17)[0]
    x = mixture.sample(n, np.random.default_rng(18))
    m, C = mixture.mean(), mixture.covariance()
    # tolerance: 4 standard errors per entry (fixed seed); the SE of a mean is
    # sqrt(C_jj / n), that of a covariance entry the sample std of the centred
    # products / sqrt(n)
    se_mean = np.sqrt(np.diag(C) / n)
    assert np.all(np.abs(x.mean(axis=0) - m) <= 4 * se_mean)
    centred = x - x.mean(axis=0)
    products = centred[:, :, None] * centred[:, None, :]
    se_cov = products.std(axis=0, ddof=1) / np.sqrt(n)
    assert np.all(np.abs(np.cov(x, rowvar=False) - C) <= 4 * se_cov)
    # the tolerance is not vacuous: the within-component covariance alone is rejected
    within = C - np.cov(mixture.means.T, aweights=mixture.weights, bias=True)
    assert np.any(np.abs(np.cov(x, rowvar=False) - within) > 4 * se_cov)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_labels(kind):
    n = 20_000
    mixture, w, mu, dense = make_mixture(kind, K=3, d=2, seed=19)
    x, labels = mixture.sample(n, np.random.default_rng(20), return_labels=True)
    assert labels.shape == (n,) and labels.dtype.kind in "iu" and x.shape == (n, 2)
    counts = np.bincount(labels, minlength=3)
    assert counts.size == 3
    # tolerance: 4 binomial standard errors sqrt(n w (1 - w)) per component (fixed seed)
    assert np.all(np.abs(counts - n * w) <= 4 * np.sqrt(n * w * (1 - w)))
    for k in range(3):
        xk = x[labels == k]
        # each labelled group is its component: mean within 4 SE, covariance within 4 SE
        assert np.all(np.abs(xk.mean(axis=0) - mu[k]) <= 4 * np.sqrt(np.diag(dense[k]) / len(xk)))
        ck = xk - xk.mean(axis=0)
        prod = ck[:, :, None] * ck[:, None, :]
        se = prod.std(axis=0, ddof=1) / np.sqrt(len(xk))
        assert np.all(np.abs(np.cov(xk, rowvar=False) - dense[k]) <= 4 * se)


def test_sample_never_draws_zero_weight_components():
    mixture = GaussianMixture([0.5, 0.0, 0.5], [[0.0, 0.0], [50.0, 50.0], [1.0, 1.0]], np.tile(np.eye(2), (3, 1, 1)))
    x, labels = mixture.sample(2000, np.random.default_rng(21), return_labels=True)
    assert not np.any(labels == 1) and np.all(np.abs(x) < 20)


@pytest.mark.parametrize("kind", KINDS)
def test_sample_dtype_and_reproducibility(kind):
    mixture = make_mixture(kind, seed=22)[0]
    x64 = mixture.sample(50, np.random.default_rng(23))
    x32 = mixture.sample(50, np.random.default_rng(23), dtype=np.float32)
    assert x64.dtype == np.float64 and x32.dtype == np.float32 and x32.shape == (50, 3)
    assert np.array_equal(x32, x64.astype(np.float32))
    again, labels = mixture.sample(50, np.random.default_rng(23), return_labels=True)
    assert again.tobytes() == x64.tobytes()
    assert not np.array_equal(mixture.sample(50, np.random.default_rng(24)), x64)
    assert mixture.sample(1, np.random.default_rng(0)).shape == (1, 3)


def test_ring_preset():
    ring = GaussianMixture.ring(k=6, radius=3.0, std=0.2)
    assert ring.n_components == 6 and ring.dim == 2 and ring.covariance_type == "diagonal"
    np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 3.0, rtol=1e-15)
    assert np.all(ring.weights == ring.weights[0]) and abs(ring.weights.sum() - 1) < 1e-15
    np.testing.assert_allclose(ring.covariances, 0.04, rtol=1e-15)
    angles = np.sort(np.mod(np.arctan2(ring.means[:, 1], ring.means[:, 0]), 2 * np.pi))
    np.testing.assert_allclose(np.diff(angles), 2 * np.pi / 6, rtol=1e-12)
    default = GaussianMixture.ring()
    assert default.n_components == 8
    np.testing.assert_allclose(np.linalg.norm(default.means, axis=1), 2.0, rtol=1e-15)
    assert np.array_equal(GaussianMixture.ring().means, default.means)  # deterministic


def test_paper_family_preset():
    fam = GaussianMixture.paper_family(d=7, k=5, radius=2.5, rng=42)
    assert fam.n_components == 5 and fam.dim == 7 and fam.covariance_type == "identity"
    np.testing.assert_allclose(np.linalg.norm(fam.means, axis=1), 2.5, rtol=1e-14)
    assert np.all(fam.weights == 0.2)
    same = GaussianMixture.paper_family(7, 5, 2.5, np.random.default_rng(42))
    assert np.array_equal(same.means, fam.means)
    other = GaussianMixture.paper_family(7, 5, 2.5, 43)
    assert not np.array_equal(other.means, fam.means)
    # directions uniform on the sphere: the average of many is near 0 (4 SE of 1/sqrt(k d))
    many = GaussianMixture.paper_family(d=3, k=3000, radius=1.0, rng=0)
    assert np.all(np.abs(many.means.mean(axis=0)) <= 4 * np.sqrt(1 / 3 / 3000))


@pytest.mark.parametrize("kind", KINDS)
def test_dict_round_trip(kind):
    mixture = make_mixture(kind, seed=25)[0]
    spec = json.loads(json.dumps(mixture.to_dict()))
    back = GaussianMixture.from_dict(spec)
    assert back.covariance_type == mixture.covariance_type
    assert np.array_equal(back.weights, mixture.weights)
    assert np.array_equal(back.means, mixture.means)
    if kind == "identity":
        assert back.covariances is None and spec["covariances"] is None
    else:
        assert np.array_equal(back.covariances, mixture.covariances)
    x = points(mixture, 5, seed=26)
    assert np.array_equal(back.log_prob(x, 0.3), mixture.log_prob(x, 0.3))
    assert "K=4" in repr(mixture) and "d=3" in repr(mixture)


# -- (f) the blocked full-covariance path -------------------------------------------------


def _numpy_oracle_per_row(w, mu, dense, x, t, process):
    """Reference for one t per row: group rows by their (few) distinct times."""
    logp = np.empty(x.shape[0])
    score = np.empty_like(x)
    for ti in np.unique(t):
        rows = t == ti
        a, s2 = marginal_coefficients(process, ti)
        score[rows], logp[rows] = reference_score(w, mu, dense, x[rows], a, s2)
    return logp, score


def _check_blocked(K, d, n, seed):
    mixture, w, mu, dense = make_mixture("full", K=K, d=d, seed=seed, mean_scale=0.5)
    rng = np.random.default_rng(seed + 1)
    x = mixture.sample(n, rng) + 0.5 * rng.standard_normal((n, d))
    t = rng.choice([0.0, 0.05, 0.5, 2.0], size=n)
    logp, score = mixture.log_prob_and_score(x, t)
    ref_logp, ref_score = _numpy_oracle_per_row(w, mu, dense, x, t, OU())
    np.testing.assert_allclose(logp, ref_logp, rtol=1e-11, atol=0)
    a, s2 = marginal_coefficients(OU(), t)
    scale = score_scale(mu, dense, x, a, s2)
    assert np.all(np.abs(score - ref_score) <= 1e-11 * (1.0 + scale[:, None]))
    # a scalar t over the whole batch too
    a0, s20 = marginal_coefficients(OU(), 0.3)
    ref_score0, ref_logp0 = reference_score(w, mu, dense, x, a0, s20)
    logp0, score0 = mixture.log_prob_and_score(x, 0.3)
    np.testing.assert_allclose(logp0, ref_logp0, rtol=1e-11, atol=0)
    assert np.all(np.abs(score0 - ref_score0) <= 1e-11 * (1.0 + scale[:, None]))


def test_blocked_full_covariance_path_matches_numpy():
    n, K, d = 3000, 8, 48
    assert n * K * d > gm_module._BLOCK_ELEMENTS  # several blocks of rows
    _check_blocked(K, d, n, seed=27)


def test_blocked_full_covariance_path_small_blocks(monkeypatch):
    # the same code path with a tiny block: 50 // (3 * 4) = 4 rows per block, 23 rows
    # give five full blocks and a ragged last one
    monkeypatch.setattr(gm_module, "_BLOCK_ELEMENTS", 50)
    _check_blocked(K=3, d=4, n=23, seed=28)


# -- (g) bad input: one test each, the message names the argument ---------------------------

MU2 = np.array([[0.0, 1.0], [1.0, 0.0]])


@pytest.mark.parametrize("weights", [[1.2, -0.2], [1.0 + 1e-300, -1e-300]])
def test_negative_weights_raise(weights):
    with pytest.raises(ValueError, match=r"^weights must be >= 0"):
        GaussianMixture(weights, MU2)


@pytest.mark.parametrize("weights", [[0.5, 0.5 + 2e-8], [0.3, 0.3], [0.0, 0.0], [2.0, 0.0]])
def test_weights_not_summing_to_one_raise(weights):
    with pytest.raises(ValueError, match=r"^weights must sum to 1"):
        GaussianMixture(weights, MU2)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_weights_raise(bad):
    with pytest.raises(ValueError, match=r"^weights contains non-finite"):
        GaussianMixture([bad, 1.0], MU2)


def test_bool_weights_and_points_are_refused_not_cast():
    with pytest.raises(ValueError, match=r"^weights must be an array of real numbers .* got dtype bool"):
        GaussianMixture([True], [[0.0]])
    with pytest.raises(ValueError, match=r"^x must be a float64 or float32 array, got dtype bool"):
        GaussianMixture([1.0], [[0.0]]).score(np.array([[True]]), 0.5)


@pytest.mark.parametrize("bad", [np.nan, -np.inf])
def test_non_finite_means_raise(bad):
    mu = MU2.copy()
    mu[1, 0] = bad
    with pytest.raises(ValueError, match=r"^means contains non-finite"):
        GaussianMixture([0.5, 0.5], mu)


@pytest.mark.parametrize("shape", [(2, 2), (2, 2, 2)])
def test_non_finite_covariances_raise(shape):
    cov = np.ones(shape) if len(shape) == 2 else np.tile(np.eye(2), (2, 1, 1))
    cov.flat[0] = np.nan
    with pytest.raises(ValueError, match=r"^covariances contains non-finite"):
        GaussianMixture([0.5, 0.5], MU2, cov)


def test_non_symmetric_covariance_raises():
    cov = np.tile(np.eye(2), (2, 1, 1))
    cov[1, 0, 1] = 0.3
    with pytest.raises(ValueError, match=r"^covariances\[1\] is not symmetric"):
        GaussianMixture([0.5, 0.5], MU2, cov)


@pytest.mark.parametrize(
    "bad", [np.array([[1.0, 2.0], [2.0, 1.0]]), np.zeros((2, 2)), -np.eye(2), np.ones((2, 2))]
)
def test_non_positive_definite_covariance_raises(bad):
    cov = np.stack([np.eye(2), bad])
    with pytest.raises(ValueError, match=r"^covariances\[1\] is not positive definite"):
        GaussianMixture([0.5, 0.5], MU2, cov)


@pytest.mark.parametrize("value", [0.0, -0.5])
def test_non_positive_diagonal_variance_raises(value):
    cov = np.ones((2, 2))
    cov[0, 1] = value
    with pytest.raises(ValueError, match=r"^covariances \(diagonal, shape \(K, d\)\) must be > 0"):
        GaussianMixture([0.5, 0.5], MU2, cov)


@pytest.mark.parametrize("means", [np.zeros((3, 2)), np.zeros((1, 2)), np.zeros(2), np.zeros((2, 0))])
def test_means_shape_mismatch_raises(means):
    with pytest.raises(ValueError, match=r"^means must have shape \(K, d\) = \(2, d\)"):
        GaussianMixture([0.5, 0.5], means)


@pytest.mark.parametrize("weights", [np.ones((1, 1)), [], 1.0])
def test_weights_bad_shape_raises(weights):
    with pytest.raises(ValueError, match=r"^weights must have shape \(K,\)"):
        GaussianMixture(weights, MU2)


@pytest.mark.parametrize("shape", [(2, 3), (3, 2), (2, 2, 3), (3, 2, 2), (2, 2, 2, 2), (2,), (2, 4)])
def test_covariances_wrong_shape_raise(shape):
    with pytest.raises(ValueError, match=r"^covariances must be None, shape \(K, d\)"):
        GaussianMixture([0.5, 0.5], MU2, np.ones(shape))


@pytest.mark.parametrize("name", ["weights", "means", "covariances"])
def test_non_real_parameters_raise(name):
    args = {"weights": [0.5, 0.5], "means": MU2, "covariances": np.ones((2, 2))}
    args[name] = np.array(args[name], dtype=complex)
    with pytest.raises(ValueError, match=rf"^{name} must be an array of real numbers"):
        GaussianMixture(**args)


ORACLE_METHODS = ["log_prob", "score", "log_prob_and_score"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ORACLE_METHODS)
def test_x_wrong_dimension_raises(kind, method):
    mixture = make_mixture(kind, K=2, d=3, seed=29)[0]
    with pytest.raises(ValueError, match=r"^x must have shape \(n, 3\)"):
        getattr(mixture, method)(np.zeros((4, 2)))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ORACLE_METHODS)
def test_x_one_dimensional_raises(kind, method):
    mixture = make_mixture(kind, K=2, d=3, seed=29)[0]
    with pytest.raises(ValueError, match=r"^x must have shape \(n, d\).*x\[None, :\]"):
        getattr(mixture, method)(np.zeros(3))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_x_non_finite_raises(kind, bad):
    mixture = make_mixture(kind, K=2, d=3, seed=29)[0]
    x = np.zeros((4, 3))
    x[2, 1] = bad
    for method in ORACLE_METHODS:
        with pytest.raises(ValueError, match=r"^x contains 1 non-finite"):
            getattr(mixture, method)(x)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("t", [-1e-9, np.array([0.1, 0.2, -0.3, 0.4])])
def test_negative_t_raises(kind, t):
    mixture = make_mixture(kind, K=2, d=3, seed=29)[0]
    for method in ORACLE_METHODS:
        with pytest.raises(ValueError, match=r"^t must be >= 0"):
            getattr(mixture, method)(np.zeros((4, 3)), t)
    with pytest.raises(ValueError, match=r"^t must be >= 0"):
        mixture.at(-1.0)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("length", [3, 5])
def test_per_row_t_wrong_length_raises(kind, length):
    mixture = make_mixture(kind, K=2, d=3, seed=29)[0]
    for method in ORACLE_METHODS:
        with pytest.raises(ValueError, match=r"^t must be a scalar or have one value per row"):
            getattr(mixture, method)(np.zeros((4, 3)), np.full(length, 0.5))


def test_t_beyond_vp_horizon_raises():
    mixture = make_mixture("full", K=2, d=3, seed=29)[0]
    with pytest.raises(ValueError, match=r"^t must be <= 1"):
        mixture.log_prob(np.zeros((4, 3)), 1.5, VP())


@pytest.mark.parametrize("n", [0, 2.0, None])
def test_sample_bad_n_raises(n):
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1"):
        make_mixture("identity")[0].sample(n, np.random.default_rng(0))


def test_sample_bad_rng_raises():
    with pytest.raises(ValueError, match=r"^rng must be a numpy.random.Generator"):
        make_mixture("identity")[0].sample(3, 0)


@pytest.mark.parametrize("dtype", [np.int32, np.float16, "nonsense"])
def test_sample_bad_dtype_raises(dtype):
    with pytest.raises(ValueError, match=r"^dtype must be float64 or float32"):
        make_mixture("identity")[0].sample(3, np.random.default_rng(0), dtype=dtype)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"k": 0}, "k"),
        ({"k": 2.0}, "k"),
        ({"radius": 0.0}, "radius"),
        ({"radius": np.nan}, "radius"),
        ({"radius": "2"}, "radius"),
        ({"std": -1.0}, "std"),
        ({"std": None}, "std"),
    ],
    ids=["k=0", "k=2.0", "radius=0", "radius=nan", "radius=str", "std=-1", "std=None"],
)
def test_ring_bad_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=rf"^{name} must be"):
        GaussianMixture.ring(**kwargs)


@pytest.mark.parametrize(
    "args, name",
    [
        ((0, 2, 1.0, 0), "d"),
        ((2, 0, 1.0, 0), "k"),
        ((2, 2, -1.0, 0), "radius"),
        ((2, 2, np.inf, 0), "radius"),
        ((2, 2, None, 0), "radius"),
        ((2, 2, 1.0, None), "rng"),
        ((2, 2, 1.0, 1.5), "rng"),
        ((2, 2, 1.0, -3), "rng"),  # was numpy's 'expected non-negative integer', naming nothing
        ((2, 2, 1.0, np.int64(-3)), "rng"),
    ],
    ids=["d=0", "k=0", "radius=-1", "radius=inf", "radius=None", "rng=None", "rng=1.5", "rng=-3", "rng=int64(-3)"],
)
def test_paper_family_bad_arguments_raise(args, name):
    with pytest.raises(ValueError, match=rf"^{name}"):
        GaussianMixture.paper_family(*args)


@pytest.mark.parametrize("spec", [None, [], {"weights": [1.0]}, {"means": [[0.0]]}])
def test_from_dict_bad_spec_raises(spec):
    with pytest.raises(ValueError, match="spec must be a dict with keys 'weights', 'means'"):
        GaussianMixture.from_dict(spec)


# -- extreme scales: what the log-sum-exp and the grouped log-determinant are for -----------


@pytest.mark.parametrize("t", [0.0, 1e-9])
def test_full_path_weights_sum_to_one_far_out_in_log_p(t):
    # two narrow components at equal distance: log p ~ -1e11, where m + log(total) has
    # lost log(total) to rounding; the weights must still sum to 1 (score to the last digits)
    v = 1e-12
    means = np.array([[-1.0, 0.0], [1.0, 0.0]])
    full = GaussianMixture([0.5, 0.5], means, v * np.eye(2)[None].repeat(2, axis=0))
    diagonal = GaussianMixture([0.5, 0.5], means, np.full((2, 2), v))
    assert (full.covariance_type, diagonal.covariance_type) == ("full", "diagonal")
    x = np.array([[0.0, 0.5]])
    process = OU()
    a, s2 = float(process.alpha(t)), float(process.sigma(t)) ** 2 if t else 0.0
    exact = -x / (a * a * v + s2)  # the means' average is 0
    np.testing.assert_allclose(full.score(x, t), exact, rtol=1e-14, atol=0)
    np.testing.assert_allclose(diagonal.score(x, t), exact, rtol=1e-14, atol=0)


@pytest.mark.parametrize("scale", [1e-100, 1e100])
def test_full_log_determinant_is_grouped_inside_the_float64_range(scale):
    # eight eigenvalues of 1e+-100: their product leaves float64, so the kernel takes a
    # log every few factors (GaussianMixture._log_group); scipy is the reference
    d = 8
    q, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((d, d)))
    cov = scale * (q * np.linspace(1.0, 2.0, d)) @ q.T
    cov = 0.5 * (cov + cov.T)
    mean = np.sqrt(scale) * np.arange(d, dtype=float)
    g = GaussianMixture([1.0], mean[None], cov[None])
    assert g.covariance_type == "full"
    x = mean + np.sqrt(scale) * np.random.default_rng(6).standard_normal((3, d))
    expected = multivariate_normal(mean, cov).logpdf(x)
    np.testing.assert_allclose(g.log_prob(x, 0.0), expected, rtol=1e-12)


def test_full_path_keeps_its_digits_for_means_far_from_zero():
    # means at 1e9 standard deviations from 0: projecting x and mu separately would leave
    # ~1e-7 of the score at t = 0; the oracle projects x - alpha_t c (c the means' centre)
    # instead. (At t > 0 the rounding of alpha_t mu itself costs as much, on any route.)
    t = 0.0
    cov = np.array([[1.0, 0.3], [0.3, 2.0]])
    means = np.array([[1e9, -2e9], [1e9 + 3.0, -2e9 + 1.0]])
    g = GaussianMixture([0.4, 0.6], means, np.stack([cov, 1.5 * cov]))
    x = means[:1] + np.array([[0.7, -1.1]])
    reference = GaussianMixture([0.4, 0.6], means - means[0], np.stack([cov, 1.5 * cov]))
    process = OU()
    shift = float(process.alpha(t)) * means[0]  # alpha_0 = 1: x - mu_0 is exact in float64
    np.testing.assert_allclose(g.score(x, t), reference.score(x - shift, t), rtol=1e-12)
    np.testing.assert_allclose(g.log_prob(x, t), reference.log_prob(x - shift, t), rtol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", ORACLE_METHODS)
def test_a_point_too_far_out_for_float64_is_named_not_nan(kind, method):
    mixture = make_mixture(kind, K=2, d=3, seed=29)[0]
    x = np.zeros((3, 3))
    x[1, 2] = 1e155  # its squared distance overflows float64
    with pytest.raises(ValueError, match=r"^x\[1\] \(largest \|entry\| 1e\+155\) is too far"):
        getattr(mixture, method)(x, 0.5)
    x[1, 2] = 1e30  # far, but representable: finite answers
    assert np.all(np.isfinite(mixture.log_prob_and_score(x, 0.5)[1]))


def test_a_float32_score_that_overflows_is_named():
    with pytest.raises(ValueError, match=r"^x\[0\] .* too far from the target for float32"):
        GaussianMixture.ring().score(np.array([[1e30, 0.0]], np.float32), 0.0)


def test_from_spec_of_a_run_config_names_its_target_definition(tmp_path):
    """A run's config.json handed to from_spec was refused as 'a mixture spec must be a dict
    with keys weights, means ...', which does not say that the target is inside it."""
    from sgm_ref.targets.spec import from_spec, to_record

    ring = from_spec("ring")
    config = {"process": {"name": "OU"}, "target": "ring", "target_definition": to_record(ring)}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"is a run's config.json, not a target: its target is the record under "
                                         r"\"target_definition\""):
        from_spec(str(path))
    (tmp_path / "target.json").write_text(json.dumps(config["target_definition"]))
    back = from_spec(str(tmp_path / "target.json"))
    x = np.array([[0.3, -0.2]])
    np.testing.assert_array_equal(back.score(x, 0.5, OU()), ring.score(x, 0.5, OU()))


@pytest.mark.parametrize("kind", KINDS)
def test_at_t_under_a_process_that_is_not_variance_preserving(kind):
    """at() refused EDM, VE, SubVP and FlowMatching ("process must be OU(), VP(...), ..."), whose
    marginal of a Gaussian mixture is as exact (a review): means alpha_t mu_k, covariances
    alpha_t^2 Sigma_k + sigma_t^2 I, checked against scipy's multivariate normal of those
    moments; identity covariances become spherical of variance alpha_t^2 + sigma_t^2."""
    from sgm_ref import EDM, VE, FlowMatching, SubVP

    mixture, w, mu, dense = make_mixture(kind, 3, 2, 11)
    x = np.random.default_rng(12).standard_normal((7, 2)) * 3
    for process, t in ((EDM(), 0.7), (VE(0.01, 50.0), 0.4), (SubVP(), 0.3), (FlowMatching(), 0.6)):
        marginal = mixture.at(t, process)
        assert marginal.covariance_type == ("spherical" if kind == "identity" else kind)
        a, sigma = (float(v) for v in process.marginal(t))
        s2 = sigma * sigma
        expected = logsumexp([np.log(w[k]) + multivariate_normal(a * mu[k], a * a * dense[k] + s2 * np.eye(2)).logpdf(x)
                              for k in range(3)], axis=0)
        np.testing.assert_allclose(marginal.log_prob(x), expected, rtol=1e-13)


def test_a_preset_s_construction_is_refused_by_its_measured_peak_not_its_means_alone(monkeypatch):
    """gmm:d=100000000,k=2 passed paper_family's check (its means, 2 k d numbers: 3.2 GB) and took
    13.4 GB to build (~8.5 arrays of k x d, measured by ru_maxrss): the spec's preset now counts
    spec._BUILD_ARRAYS = 9 arrays of the means' shape, naming d (or k when one mean fits)."""
    from sgm_ref.targets import _checks, spec
    from sgm_ref.targets.spec import from_spec
    memory = 10 * 2**20  # 2 x 100000 means: 1.6 MB, built in ~14 MB
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: memory)
    monkeypatch.setattr(spec, "_memory_bytes", lambda: memory)
    with pytest.raises(ValueError, match=rf"^target gmm:d=100000,k=2,radius=1: k = 2 is too large: building k = 2 "
                                         rf"means in d = 100000 \(9 arrays of k x d numbers\) .* use k <= 1$"):
        from_spec("gmm:d=100000,k=2,radius=1")
    with pytest.raises(ValueError, match=rf"^target gmm:d=200000,k=1,radius=1: d = 200000 is too large: .* use d <= "
                                         rf"{memory // 72}$"):
        from_spec("gmm:d=200000,k=1,radius=1")
    with pytest.raises(ValueError, match=rf"^target product:d=100000: d = 100000 is too large: .* use d <= "
                                         rf"{memory // 144}$"):
        from_spec("product:d=100000")
    assert from_spec(f"gmm:d={memory // 144},k=2,radius=1").dim == memory // 144  # the limit itself is built


def test_a_record_too_large_for_memory_is_refused_before_it_is_built(monkeypatch):
    """to_record's lists of Python floats take 32 bytes a number (a float and its list slot), 4
    times the array: gmm in d = 1e8 made 6.4 GB of them. Refused, naming the count, before any."""
    from sgm_ref.targets import _checks, spec
    from sgm_ref.targets.spec import to_record
    target = GaussianMixture.paper_family(500, 2, 1.0, rng=0)  # 1002 numbers: 32 kB as a record
    monkeypatch.setattr(_checks, "_memory_bytes", lambda: 16_000)
    monkeypatch.setattr(spec, "_memory_bytes", lambda: 16_000)
    monkeypatch.setattr(type(target), "to_dict", lambda self: pytest.fail("the record was built"))
    with pytest.raises(ValueError, match=r"^the target's record \(its 1002 numbers as JSON-ready lists, 32 bytes each\)"
                                         r" would need .* use a target of fewer numbers \(a lower d or k\)$"):
        to_record(target)


def test_a_preset_s_dimension_is_read_without_building_it():
    from sgm_ref.targets.spec import _preset_dimension, from_spec
    assert [_preset_dimension(s) for s in ("ring", "ring:k=3", " gmm : d = 9 ,k=1,radius=1", "product:d=7",
                                           "gmm:k=2,radius=1", "gmm:d=x,k=2,radius=1", "gmm:d=0,k=2,radius=1",
                                           "a.json", "gmm", None)] == [2, 2, 9, 7, None, None, None, None, None, None]
    # None for a spec from_spec refuses, ring's too (they were 2): the caller's check is then from_spec's
    for spec in ("ring:", "ring:d=3", "ring:k=3,k=4", "ring :k", "gmm:d=9,k=1,radius=1,", "product:d=7,d=7"):
        assert _preset_dimension(spec) is None
        with pytest.raises(ValueError):
            from_spec(spec)


def test_a_machine_that_does_not_say_its_memory_refuses_no_target(monkeypatch):
    """sysconf's -1 (no answer) made the memory -4096 bytes: every target was refused as "more than
    this machine's memory (-4.1e+03 bytes); use k <= -128"."""
    import os

    from sgm_ref.targets.spec import from_spec

    monkeypatch.setattr(os, "sysconf", lambda name: -1)
    assert from_spec("ring").dim == 2
    assert from_spec("gmm:d=8,k=3,radius=1").dim == 8
