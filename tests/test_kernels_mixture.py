"""The pieces of sgm_ref.kernels.mixture that the oracle tests do not reach one by one.

- exp_nonpositive and log_normal (branch-free exp and log, so the kernels' loops
  vectorise) against NumPy's exp and log: within 1 ulp everywhere they are used, and
  their special values.
- full_mixture_direct (full covariances at small d, projections done in the kernel)
  against the NumPy twin sgm_ref.plain.mixture_score over several row blocks with a
  ragged last one, and the BLAS path just above the dimension where the oracle switches,
  with blocks of a few rows.
- centred_rows_into against NumPy's x - a[:, None] * centre bit for bit, and the blocked
  path with its reused buffers against the NumPy expression it replaced; no points.
- full_mixture_responsibilities against its NumPy twin with one log per (row, component)
  and with the variances in groups, and the group size against the float64 range.
- the tied-covariance path: its blocks (run_blocks) give the same bits on one and two
  threads, and scipy's log-density and score; its x0 and divergence (rotate_rows, no
  BLAS) the same bits on one and two threads, and the values from C^{-1}.
"""

import functools

import numpy as np
import pytest
from numba import njit

import sgm_ref.targets.gaussian_mixture as gm_module
from sgm_ref import _threads
from sgm_ref import EDM, OU, VE, VP, FlowMatching, GaussianMixture, SubVP, plain
from sgm_ref.kernels.mixture import _block_rows, _log_rows, exp_nonpositive, log_normal

TINY = np.finfo(np.float64).tiny  # smallest normal


@njit
def _exp_all(z):
    out = np.empty_like(z)
    for i in range(z.shape[0]):
        out[i] = exp_nonpositive(z[i])
    return out


@njit
def _log_all(v):
    out = np.empty_like(v)
    for i in range(v.shape[0]):
        out[i] = log_normal(v[i])
    return out


def ulps(got, want):
    """|got - want| in units of the last place of want (of the smallest normal below it)."""
    return np.abs(got - want) / np.spacing(np.maximum(np.abs(want), TINY))


# -- exp -------------------------------------------------------------------------------------


def test_exp_is_within_one_ulp_of_numpy():
    rng = np.random.default_rng(0)
    z = -np.concatenate([
        rng.uniform(0.0, 1e-8, 20_000),   # r tiny: exp ~ 1 - |z|
        rng.uniform(0.0, 1.0, 100_000),
        rng.uniform(0.0, 50.0, 100_000),  # where mixture weights live
        rng.uniform(700.0, 746.0, 50_000),  # subnormal results and the underflow to 0
        np.arange(0, 1400) * np.log(2.0),  # multiples of ln 2: r ~ 0
        (np.arange(0, 1400) + 0.5) * np.log(2.0),  # r ~ +-ln2/2, the reduction's edges
    ])
    got, want = _exp_all(z), np.exp(z)
    assert np.max(ulps(got, want)) <= 1.0
    # nearly all are the correctly rounded value (NumPy's), not just within 1 ulp
    assert np.mean(got != want) < 0.15


def test_exp_special_values():
    z = np.array([0.0, -0.0, -745.2, -1400.0, -1500.0, -1e300, -np.inf, np.nan])
    assert _exp_all(z).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
    # the smallest subnormal survives, as in libm
    assert _exp_all(np.array([-745.1]))[0] == np.exp(-745.1) == 5e-324


# -- log -------------------------------------------------------------------------------------


def test_log_is_within_one_ulp_of_numpy():
    rng = np.random.default_rng(1)
    sqrt2 = np.sqrt(2.0)
    v = np.concatenate([
        rng.uniform(0.5, 2.0, 100_000),
        1.0 + rng.uniform(-1e-8, 1e-8, 20_000),  # log v ~ v - 1
        np.exp(rng.uniform(-708.0, 709.0, 100_000)),  # the whole normal range
        [TINY, np.finfo(np.float64).max, 1.0, 0.5, 2.0, sqrt2, np.nextafter(sqrt2, 0.0),
         np.nextafter(sqrt2, 3.0), 1.0 / sqrt2, np.nextafter(1.0 / sqrt2, 0.0)],
        2.0 ** np.arange(-1022, 1024),
    ])
    got, want = _log_all(v), np.log(v)
    assert np.max(ulps(got, want)) <= 1.0
    assert np.mean(got != want) < 0.1
    assert _log_all(np.array([1.0]))[0] == 0.0


def test_the_ln2_split_and_the_sqrt2_threshold():
    import mpmath

    from sgm_ref.kernels import mixture as km

    assert np.array(km._LN2_HI).view(np.int64) & 0x1FFFFF == 0  # n * LN2_HI exact for |n| < 2^21
    with mpmath.workdps(40):  # local: mp.dps = 40 would stay set for every later test
        assert abs(mpmath.mpf(km._LN2_HI) + mpmath.mpf(km._LN2_LO) - mpmath.log(2)) < mpmath.mpf(2) ** -85
    # the carry into bit 52 happens exactly from sqrt(2)'s mantissa up
    mantissa = lambda v: int(np.array(v).view(np.int64)) & 0x000FFFFFFFFFFFFF  # noqa: E731
    assert (mantissa(np.sqrt(2.0)) + km._SQRT2_CARRY) >> 52 == 1
    assert (mantissa(np.nextafter(np.sqrt(2.0), 0.0)) + km._SQRT2_CARRY) >> 52 == 0


def test_log_rows_takes_libm_outside_the_normal_range():
    v = np.array([2.0, 0.0, 5e-324, 1e-310, np.inf, 3.0])
    out = np.empty_like(v)
    with np.errstate(divide="ignore"):
        _log_rows(v, out, v.size)
        want = np.log(v)
    assert np.array_equal(out[1:5], want[1:5])  # libm's own
    assert np.max(ulps(out[[0, 5]], want[[0, 5]])) <= 1.0  # log_normal's


# -- the full-covariance kernel without BLAS ---------------------------------------------------


def full_mixture(K, d, seed):
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K))
    mu = 2.0 * rng.standard_normal((K, d))
    A = rng.standard_normal((K, d, d))
    cov = A @ A.transpose(0, 2, 1) / d + 0.1 * np.eye(d)
    return GaussianMixture(w, mu, 0.5 * (cov + cov.transpose(0, 2, 1)))


def check_against_plain(g, n, seed, process=OU(), plain_process=plain.OU, t_max=3.0):
    rng = np.random.default_rng(seed)
    t = np.exp(rng.uniform(np.log(1e-6), np.log(t_max), n))
    t[:5] = 0.0
    x, _ = process.perturb(g.sample(n, rng), t, rng)
    x[::7] *= 3.0  # some points far out, where one component dominates
    logp, score = g.log_prob_and_score(x, t, process)
    want_logp, want_score = plain.mixture_score(x, t, plain.mixture(g.weights, g.means, g.covariances),
                                                plain_process)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-12, atol=1e-12)
    # per row, relative to the row's largest entry (terms of the sum may cancel)
    scale = np.max(np.abs(want_score), axis=1, keepdims=True)
    assert np.all(np.abs(score - want_score) <= 1e-11 * scale)
    # log_prob alone and score alone take the same path
    np.testing.assert_array_equal(g.log_prob(x, t, process), logp)
    np.testing.assert_array_equal(g.score(x, t, process), score)


@pytest.mark.parametrize("d", range(1, gm_module._DIRECT_MAX_DIM + 1))
@pytest.mark.parametrize("K", [1, 3, 40])
def test_full_covariances_at_small_d_match_the_numpy_twin(d, K):
    rows = _block_rows(K * d)
    check_against_plain(full_mixture(K, d, seed=10 * d + K), n=3 * rows + 5, seed=d)  # ragged last block


def test_full_covariances_at_small_d_with_vp():
    check_against_plain(full_mixture(4, 2, seed=3), n=700, seed=4, process=VP(), plain_process=plain.VP,
                        t_max=1.0)


def test_full_path_above_the_switch_in_blocks_of_a_few_rows(monkeypatch):
    # d just above _DIRECT_MAX_DIM goes through BLAS in blocks; 60 // (3 d) rows per block
    d = gm_module._DIRECT_MAX_DIM + 1
    monkeypatch.setattr(gm_module, "_BLOCK_ELEMENTS", 60)
    monkeypatch.setattr(gm_module, "_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(gm_module, "_SHARED_BLAS_BLOCK_ELEMENTS", 60)  # where NumPy's BLAS cannot be set
    assert 60 // (3 * d) >= 1 and 23 % (60 // (3 * d)) != 0  # several blocks, a ragged last one
    check_against_plain(full_mixture(3, d, seed=5), n=23, seed=6)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_centred_rows_are_numpys_bits(dtype):
    """centred_rows_into gives NumPy's (x - a[:, None] * centre).astype(x.dtype) exactly
    (the product rounded first: no fused multiply-add; a and centre float64, a float32 x
    widened and the difference rounded once), in both dtypes."""
    from sgm_ref.kernels.mixture import centred_rows_into
    rng = np.random.default_rng(0)
    a = rng.uniform(0.5, 1.0, 37)
    centre = rng.standard_normal(9) / 3.0
    # x close to a * centre: the difference cancels, so how the product was rounded shows
    x = (a[:, None] * centre * (1 + 1e-3 * rng.standard_normal((37, 9)))).astype(dtype)
    out = np.empty_like(x)
    centred_rows_into(x, a, centre, out)
    np.testing.assert_array_equal(out, (x - a[:, None] * centre).astype(dtype))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_blocked_full_path_gives_the_bits_of_the_numpy_expression(monkeypatch, dtype):
    """The blocked full-covariance path with its reused buffers gives bit for bit what the
    blocks computed with NumPy's own arrays give (x - a centre, then @ U_all, the same
    responsibilities kernel, then @ -U_all^T), over several blocks and a ragged last one."""
    from sgm_ref.kernels.mixture import full_mixture_responsibilities
    d, K, n = gm_module._DIRECT_MAX_DIM + 3, 3, 29
    monkeypatch.setattr(gm_module, "_BLOCK_ELEMENTS", 8 * K * d)  # 8 rows a block: 4 blocks, the last of 5
    monkeypatch.setattr(gm_module, "_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(gm_module, "_SHARED_BLAS_BLOCK_ELEMENTS", 8 * K * d)  # where NumPy's BLAS cannot be set
    g = full_mixture(K, d, seed=7)
    rng = np.random.default_rng(8)
    t = rng.uniform(1e-3, 2.0, n)
    x = OU().perturb(g.sample(n, rng), t, rng)[0].astype(dtype)
    logp, score = g.log_prob_and_score(x, t)
    a, s2 = OU()._coefficients(t, n)
    mu, lam, U_all, centre = g._params(x.dtype)
    group = g._group_for(a, s2)
    want_logp, want_score = np.empty(n, dtype), np.empty((n, d), dtype)
    for start in range(0, n, 8):
        block = slice(start, min(start + 8, n))
        P = (x[block] - a[block, None] * centre).astype(dtype) @ U_all
        full_mixture_responsibilities(P, a[block], s2[block], g._logw, mu, lam, group, want_logp[block],
                                      np.empty((P.shape[0], K)))
        want_score[block] = P @ np.negative(U_all).T
    np.testing.assert_array_equal(logp, want_logp)
    np.testing.assert_array_equal(score, want_score)


@pytest.mark.skipif(not _threads.blas_settable(), reason="NumPy's BLAS cannot be set here: the blocks run in turn")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("small_blocks", [False, True])
def test_full_path_gives_the_same_bits_on_every_thread_count(monkeypatch, dtype, small_blocks):
    """The blocks of the full-covariance score run on Python threads (run_blocks): the same
    bits on 1, 2 or 3 threads, with the default blocks (d = 32, K = 8: 1024 rows, several
    of them and a ragged last one) and with blocks of 5 rows."""
    d, K, n = 32, 8, 3 * 1024 + 77
    if small_blocks:
        monkeypatch.setattr(gm_module, "_BLOCK_ELEMENTS", 5 * K * d)
        monkeypatch.setattr(gm_module, "_BLOCK_MIN_ROWS", 1)
        n = 203
    assert gm_module._full_block_rows(K, d, n) < n / 2  # several blocks
    g = full_mixture(K, d, seed=11)
    rng = np.random.default_rng(12)
    t = rng.uniform(1e-3, 2.0, n)
    x = OU().perturb(g.sample(n, rng), t, rng)[0].astype(dtype)
    results = {}
    for threads in (1, 2, 3):
        with monkeypatch.context() as m:
            m.setattr(gm_module, "run_blocks", functools.partial(_threads.run_blocks, threads=threads))
            results[threads] = g.log_prob_and_score(x, t)
    for threads, (logp, score) in results.items():
        np.testing.assert_array_equal(logp, results[1][0], err_msg=str(threads))
        np.testing.assert_array_equal(score, results[1][1], err_msg=str(threads))
    check_against_plain(g, n=n, seed=13)


def test_full_path_where_numpys_blas_cannot_be_set(monkeypatch):
    """Another BLAS (or not Linux): the blocks keep their former size and run in turn; the
    numbers agree with the plain NumPy twin."""
    d, K = 32, 8
    monkeypatch.setattr(_threads, "_OPENBLAS_FOUND", [])
    assert not _threads.blas_settable()
    assert gm_module._full_block_rows(K, d, 10**6) == gm_module._SHARED_BLAS_BLOCK_ELEMENTS // (K * d)
    check_against_plain(full_mixture(K, d, seed=11), n=3 * 4096 + 77, seed=13)


def responsibilities_numpy(P, a, s2, logw, m_proj, lam):
    """What full_mixture_responsibilities computes, in NumPy: per row i and component k,
    y = P_ik - a_i m_k, v = a_i^2 lam_k + s2_i, l_ik = log w_k - (sum y^2 / v + sum log v) / 2,
    pi = softmax_k(l), log p = logsumexp_k(l) - d log(2 pi) / 2, P_ik <- pi_ik y / v."""
    from scipy.special import logsumexp
    n = P.shape[0]
    K, d = lam.shape
    y = P.reshape(n, K, d) - a[:, None, None] * m_proj
    v = a[:, None, None] ** 2 * lam + s2[:, None, None]
    r = y / v
    l = logw - 0.5 * (np.sum(y * r, axis=2) + np.sum(np.log(v), axis=2))
    lse = logsumexp(l, axis=1)
    pi = np.exp(l - lse[:, None])
    return lse - 0.5 * d * np.log(2.0 * np.pi), (pi[:, :, None] * r).reshape(n, K * d), l


@pytest.mark.parametrize("group", [40, 33, 32, 7, 3, 1])
def test_responsibilities_kernel_against_numpy_with_any_group(group):
    """One product of all d variances before its log (group >= d, the usual case, folded into
    the pass over P) and one per group of coordinates (group < d, a pass of its own) give
    NumPy's log-weights, log-density and weighted residuals; so do the rows where one
    component takes all the weight."""
    from sgm_ref.kernels.mixture import full_mixture_responsibilities
    rng = np.random.default_rng(11)
    n, K, d = 53, 5, 32
    lam = np.exp(rng.uniform(-3.0, 3.0, (K, d)))
    m_proj = rng.standard_normal((K, d))
    logw = np.log(rng.dirichlet(np.ones(K)))
    a = rng.uniform(0.05, 1.0, n)
    s2 = 1.0 - a * a
    P = 2.0 * rng.standard_normal((n, K * d))
    P[::5] *= 20.0  # far out: the weights are 0 or 1 to rounding
    want_logp, want_P, want_l = responsibilities_numpy(P, a, s2, logw, m_proj, lam)
    logp, logc = np.empty(n), np.empty((n, K))
    full_mixture_responsibilities(P, a, s2, logw, m_proj, lam, group, logp, logc)
    np.testing.assert_allclose(logc, want_l, rtol=1e-13)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-13)
    scale = np.max(np.abs(want_P), axis=1, keepdims=True)
    assert np.all(np.abs(P - want_P) <= 1e-13 * scale)


@pytest.mark.parametrize("scale", [np.exp(18.7), np.exp(-18.7)])
@pytest.mark.parametrize("d", [30, 40])
def test_one_product_of_all_variances_only_where_it_stays_in_range(scale, d):
    """Eigenvalues near exp(+-18.7) at t = 0: thirty of them multiply to exp(+-561), inside
    float64, and take one log (GaussianMixture._log_group >= d); forty would reach exp(+-748),
    outside, and go in groups. scipy is the reference either way."""
    from scipy.stats import multivariate_normal
    q, _ = np.linalg.qr(np.random.default_rng(12).standard_normal((d, d)))
    cov = scale * (q * np.linspace(1.0, 1.5, d)) @ q.T
    cov = 0.5 * (cov + cov.T)
    mean = np.sqrt(scale) * np.linspace(-1.0, 1.0, d)
    g = GaussianMixture([1.0], mean[None], cov[None])
    assert (g._log_group >= d) == (d == 30)
    x = mean + np.sqrt(scale) * np.random.default_rng(13).standard_normal((4, d))
    np.testing.assert_allclose(g.log_prob(x, 0.0), multivariate_normal(mean, cov).logpdf(x), rtol=1e-12)


@pytest.mark.parametrize("process, log_lam", [
    (OU(), [19.9] * 36),  # 36 x 19.9 = 716 > 709.8: one product would overflow
    (OU(), [-19.9] * 38),  # 38 x -19.9 = -756: one product would underflow to 0 (below exp(-744.4))
    (EDM(), [-22.0] * 34 + [0.0, 0.0]),  # not variance-preserving: the group from v's own range
], ids=["OU-large", "OU-small", "EDM-small"])
def test_log_determinant_groups_stay_inside_float64_at_the_edge(process, log_lam):
    """Variances whose product of all d leaves float64 by a little: the group size
    (600 // spread; from the eigenvalues for OU, from alpha^2 lam + sigma^2 at both ends of
    the spectrum for EDM) splits them, and log p matches scipy at t = 0. A constant of 720
    in place of 600 fails OU-large, 1000 fails OU-small, and EDM's group taken from the
    largest eigenvalue alone fails EDM-small."""
    from scipy.stats import multivariate_normal
    lam = np.exp(np.array(log_lam))
    d = lam.size
    g = GaussianMixture([1.0], np.zeros((1, d)), np.diag(lam)[None])
    x = np.sqrt(lam) * np.random.default_rng(14).standard_normal((3, d))
    np.testing.assert_allclose(g.log_prob(x, 0.0, process), multivariate_normal(np.zeros(d), np.diag(lam)).logpdf(x),
                               rtol=1e-13)


def test_kernel_with_no_coordinates():
    """d = 0 (not reachable through GaussianMixture, which takes its full-covariance path
    only above d = 6): no quadratic form, det 1, so l_ik = log w_k; before the guard the
    kernel wrote the product of no factors past the end of an empty buffer."""
    from scipy.special import logsumexp
    from sgm_ref.kernels.mixture import full_mixture_responsibilities
    n, K = 5, 3
    logw = np.log([0.2, 0.3, 0.5])
    logp, logc = np.full(n, np.nan), np.full((n, K), np.nan)
    full_mixture_responsibilities(np.empty((n, 0)), np.full(n, 0.5), np.full(n, 0.75), logw, np.empty((K, 0)),
                                  np.empty((K, 0)), 1, logp, logc)
    np.testing.assert_array_equal(logc, np.broadcast_to(logw, (n, K)))
    np.testing.assert_allclose(logp, logsumexp(logw), rtol=1e-15, atol=1e-15)


def test_log_group_size():
    size = gm_module._log_group_size
    assert [size(0.0), size(1.0), size(2.0), size(19.9), size(600.0), size(601.0)] == [600, 600, 300, 30, 1, 1]
    assert size(np.nan) == size(np.inf) == 1  # never the largest group for a spread it cannot read


def test_grouped_log_determinant_keeps_the_digits_of_far_out_points():
    """With a log per coordinate (group 1) and points far out (q = sum y^2 / v ~ 4e7, |log det|
    ~ 5e3-7e3), the group logs are summed before they meet q: l is within 1e-15 relative of
    mpmath's (adding each group's log to q would round 40 times at q's size: ~2e-15)."""
    import mpmath
    from sgm_ref.kernels.mixture import full_mixture_responsibilities
    rng = np.random.default_rng(15)
    n, K, d = 12, 2, 40
    lam = np.exp(rng.choice([-300.0, 300.0], (K, d)) + rng.uniform(-0.01, 0.01, (K, d)))
    a = rng.uniform(0.1, 1.0, n)
    s2 = 1.0 - a * a
    m_proj = np.sqrt(lam) * rng.standard_normal((K, d))
    v = a[:, None, None] ** 2 * lam + s2[:, None, None]
    P = (a[:, None, None] * m_proj + 1e3 * np.sqrt(v) * rng.standard_normal((n, K, d))).reshape(n, K * d)
    logw = np.log([0.3, 0.7])
    want = np.empty((n, K))
    with mpmath.workdps(40):  # not mp.dps = 40: that would stay set for every later test
        for i in range(n):
            for k in range(K):
                y = [mpmath.mpf(P[i, k * d + j]) - mpmath.mpf(a[i]) * mpmath.mpf(m_proj[k, j]) for j in range(d)]
                vv = [mpmath.mpf(a[i]) ** 2 * mpmath.mpf(lam[k, j]) + mpmath.mpf(s2[i]) for j in range(d)]
                want[i, k] = float(mpmath.mpf(logw[k]) - (mpmath.fsum(yj * yj / vj for yj, vj in zip(y, vv))
                                                         + mpmath.fsum(mpmath.log(vj) for vj in vv)) / 2)
    logp, logc = np.empty(n), np.empty((n, K))
    full_mixture_responsibilities(P, a, s2, logw, m_proj, lam, 1, logp, logc)
    assert np.max(np.abs(logc - want) / np.abs(want)) <= 1e-15


@pytest.mark.parametrize("process", [OU(), VP(), VE(), EDM(), FlowMatching(), SubVP()], ids=repr)
@pytest.mark.parametrize("d", [gm_module._DIRECT_MAX_DIM, gm_module._DIRECT_MAX_DIM + 2])
def test_full_covariances_with_no_points(process, d):
    """No rows: empty outputs of the right shapes, on both full paths and every process (the
    block buffers are sized to the call; the log-determinant's group is set from no times)."""
    g = full_mixture(2, d, seed=1)
    logp, score = g.log_prob_and_score(np.empty((0, d)), np.empty(0), process)
    assert logp.shape == (0,) and score.shape == (0, d)


# -- the tied-covariance path: blocks on Python threads -----------------------------------------


def tied_mixture(K, d, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((d, d))
    return GaussianMixture(rng.dirichlet(np.ones(K)), rng.standard_normal((K, d)), A @ A.T / d + 0.5 * np.eye(d),
                           covariance_type="tied")


def tied_reference(g, x, t):
    """log p_t and its score for a tied mixture from scipy.stats.multivariate_normal and
    logsumexp: C = alpha^2 Sigma + sigma^2 I, score = -sum_k pi_k C^{-1} (x - alpha mu_k)."""
    from scipy.special import logsumexp
    from scipy.stats import multivariate_normal
    a, s2 = OU()._coefficients(t, 1)
    C = a[0] ** 2 * g.covariances + s2[0] * np.eye(g.dim)
    logc = np.stack([np.log(w) + multivariate_normal(a[0] * m, C).logpdf(x) for w, m in zip(g.weights, g.means)],
                    axis=1)
    logp = logsumexp(logc, axis=1)
    pi = np.exp(logc - logp[:, None])
    residual = np.einsum("nk,nkd->nd", pi, x[:, None, :] - a[0] * g.means)
    return logp, -np.linalg.solve(C, residual.T).T


@pytest.mark.skipif(not _threads.blas_settable(), reason="NumPy's BLAS cannot be set here: its threads stay")
@pytest.mark.skipif(_threads.numba.config.NUMBA_NUM_THREADS < 2, reason="one thread only")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tied_path_gives_the_same_bits_on_one_and_two_threads(dtype):
    """The tied oracle's two rotations ran as plain products on OpenBLAS's threads: at
    d = 600 the score differed by up to 4e-15 and log p by 4.5e-13 between set_threads(1)
    and 2. Its blocks now run like the full path's (run_blocks), the same bits either way."""
    d, K, n = 600, 2, 400
    before = _threads.numba.get_num_threads()
    results = {}
    try:
        _threads.set_threads(1)  # the set-up too: two BLAS threads beside a busy core made eigh take seconds
        g = tied_mixture(K, d, seed=21)
        x = g.sample(n, np.random.default_rng(22), dtype=dtype)
        if dtype == np.float64:
            want_logp, want_score = tied_reference(g, x, 0.3)
        for threads in (1, 2):
            _threads.set_threads(threads)
            results[threads] = g.log_prob_and_score(x, 0.3)
    finally:
        _threads.set_threads(before)
    np.testing.assert_array_equal(results[2][0], results[1][0])
    np.testing.assert_array_equal(results[2][1], results[1][1])
    if dtype == np.float64:
        np.testing.assert_allclose(results[1][0], want_logp, rtol=1e-13)
        np.testing.assert_allclose(results[1][1], want_score, rtol=0,
                                   atol=1e-12 * np.max(np.abs(want_score)))


@pytest.mark.parametrize("settable", [True, False])
def test_tied_path_in_blocks_of_a_few_rows_against_scipy(monkeypatch, settable):
    """Blocks of 7 rows with a ragged last one (on several threads where NumPy's BLAS can be
    set, in turn where not) give scipy's log-density and score, and the same bits as one
    call per block."""
    d, K, n = 9, 3, 7 * 6 + 4
    monkeypatch.setattr(gm_module, "_TIED_BLOCK_ELEMENTS", 7 * d)
    monkeypatch.setattr(gm_module, "_TIED_BLOCK_MIN_ROWS", 1)
    monkeypatch.setattr(gm_module, "_SHARED_BLAS_BLOCK_ELEMENTS", 7 * d)
    if not settable:
        monkeypatch.setattr(_threads, "_OPENBLAS_FOUND", [])
    assert gm_module._tied_block_rows(d, n) == 7
    g = tied_mixture(K, d, seed=23)
    x = OU().perturb(g.sample(n, np.random.default_rng(24)), 0.3, np.random.default_rng(25))[0]
    x[::5] *= 4.0  # far out: one component takes the weight
    logp, score = g.log_prob_and_score(x, 0.3)
    want_logp, want_score = tied_reference(g, x, 0.3)
    np.testing.assert_allclose(logp, want_logp, rtol=1e-13)
    scale = np.max(np.abs(want_score), axis=1, keepdims=True)
    assert np.all(np.abs(score - want_score) <= 1e-13 * scale)
    np.testing.assert_array_equal(g.log_prob(x, 0.3), logp)
    for start in range(0, n, 7):
        block = slice(start, start + 7)
        np.testing.assert_array_equal(g.score(x[block], 0.3), score[block])
    for threads in (1, 3):  # blocks handed to 1 or 3 Python threads: the same bits
        with monkeypatch.context() as m:
            m.setattr(gm_module, "run_blocks", functools.partial(_threads.run_blocks, threads=threads))
            again = g.log_prob_and_score(x, 0.3)
        np.testing.assert_array_equal(again[0], logp)
        np.testing.assert_array_equal(again[1], score)


@pytest.mark.skipif(_threads.numba.config.NUMBA_NUM_THREADS < 2, reason="one thread only")
def test_tied_x0_and_divergence_give_the_same_bits_on_one_and_two_threads():
    """The tied oracle's x0 rotated back with a BLAS product on OpenBLAS's threads: at
    d = 400, K = 8 it differed by 5.3e-15 between set_threads(1) and 2 (and the stacked
    (K, d) @ (d, d) products took 2.6 s for 2048 points at d = 600). Its rotations are now
    rotate_rows (no BLAS); x0 agrees with the posterior mean from C^{-1} (np.linalg.solve)."""
    d, K, n = 400, 8, 100
    before = _threads.numba.get_num_threads()
    results = {}
    try:
        _threads.set_threads(1)
        g = tied_mixture(K, d, seed=26)
        x = g.sample(n, np.random.default_rng(27))
        for threads in (1, 2):
            _threads.set_threads(threads)
            results[threads] = (g.predict(x, 0.3, kind="x0"), g.divergence(x, 0.3))
    finally:
        _threads.set_threads(before)
    np.testing.assert_array_equal(results[2][0], results[1][0])
    np.testing.assert_array_equal(results[2][1], results[1][1])
    # against the covariance's inverse: x0 = sum_k pi_k (mu_k + a Sigma C^{-1} (x - a mu_k)), C = a^2 Sigma + s2 I
    from scipy.linalg import cho_factor, cho_solve
    a, s2 = OU()._coefficients(0.3, 1)
    a, s2 = a[0], s2[0]
    factor = cho_factor(a * a * g.covariances + s2 * np.eye(d))
    r = x[:, None, :] - a * g.means                                   # (n, K, d)
    Cr = cho_solve(factor, r.reshape(-1, d).T).T.reshape(r.shape)     # C^{-1} (x - a mu_k)
    logc = np.log(g.weights) - 0.5 * np.sum(r * Cr, axis=2)
    pi = np.exp(logc - logc.max(axis=1, keepdims=True))
    pi /= pi.sum(axis=1, keepdims=True)
    want_x0 = pi @ g.means + a * np.einsum("nk,nkd->nd", pi, Cr) @ g.covariances
    np.testing.assert_allclose(results[1][0], want_x0, rtol=0, atol=1e-12 * np.max(np.abs(want_x0)))
    # the divergence: -tr C^{-1} + sum_k pi_k |g_k - s|^2, g_k = -C^{-1} (x - a mu_k)
    score = -np.einsum("nk,nkd->nd", pi, Cr)
    want_div = -np.trace(cho_solve(factor, np.eye(d))) + np.einsum("nk,nk->n", pi,
                                                                   np.sum((Cr + score[:, None, :]) ** 2, axis=2))
    np.testing.assert_allclose(results[1][1], want_div, rtol=1e-12)


def test_tied_path_holds_two_block_buffers_not_three():
    """The tied blocks held three (rows, d) buffers per thread (x - a c, its rotation, the
    rotated score) beside the score: at d = 8, n = 4096 (one block) glibc gave the freed
    megabyte back to the system after each call and the next faulted its pages in again,
    830 us a call against 530 us with two (the rotated score in the first, free once
    rotated). Peak memory from tracemalloc (NumPy reports its buffers to it), in units of
    the score's n d 8 bytes: 4.56 before, 3.56 now (score, two buffers, a, s2, log p)."""
    import tracemalloc

    d, K, n = 8, 4, 4096
    g = tied_mixture(K, d, seed=28)
    x = g.sample(n, np.random.default_rng(29))
    want_logp, want_score = g.log_prob_and_score(x, 0.3)
    peaks = {}
    for name, call in (("score", g.log_prob_and_score), ("log_prob", g.log_prob)):
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            result = call(x, 0.3)
            peaks[name] = (tracemalloc.get_traced_memory()[1] - base) / (n * d * 8)
        finally:
            tracemalloc.stop()
        np.testing.assert_array_equal(result[1] if name == "score" else result, want_score if name == "score"
                                      else want_logp)
    assert peaks["score"] < 3.75 and peaks["log_prob"] < 2.75, peaks
    sample = np.random.default_rng(30).choice(n, 64, replace=False)
    ref_logp, ref_score = tied_reference(g, x[sample], 0.3)
    np.testing.assert_allclose(want_logp[sample], ref_logp, rtol=1e-13)
    np.testing.assert_allclose(want_score[sample], ref_score, rtol=0, atol=1e-12 * np.max(np.abs(ref_score)))


def test_rotate_rows_is_the_ascending_sum_serial_or_parallel():
    """rotate_rows against exact rational sums (within d eps |z| |R|, found 0.34 of it) and
    bit for bit against the ascending sum in NumPy (no FMA, no reordering), the same bits
    on the serial and the parallel kernel and for a row alone; non-finite entries as NumPy's
    product gives them."""
    from fractions import Fraction

    import sgm_ref.kernels.mixture as km
    rng = np.random.default_rng(31)
    for n, d, m in ((1, 1, 1), (3, 5, 7), (17, 33, 33), (40, 100, 100), (300, 9, 4)):
        z = rng.standard_normal((n, d)) * rng.choice([1e-3, 1.0, 1e3], (n, d))
        R = rng.standard_normal((d, m))
        out = km.rotate_rows(z, R)
        ascending = np.zeros((n, m))
        for j in range(d):
            ascending += z[:, j:j + 1] * R[j]
        np.testing.assert_array_equal(out, ascending)
        np.testing.assert_array_equal(km._rotate_rows_parallel(z, R), out)
        np.testing.assert_array_equal(km._rotate_rows_serial(z, R), out)
        np.testing.assert_array_equal(np.concatenate([km.rotate_rows(z[i:i + 1], R) for i in range(n)]), out)
        rows = range(0, n, max(1, n // 5))
        exact = np.array([[float(sum(Fraction(z[i, j]) * Fraction(R[j, c]) for j in range(d))) for c in range(m)]
                          for i in rows])
        assert np.all(np.abs(out[list(rows)] - exact) <= d * 2.0**-53 * (np.abs(z[list(rows)]) @ np.abs(R)))
    assert km.rotate_rows(np.zeros((0, 3)), np.eye(3)).shape == (0, 3)
    with np.errstate(invalid="ignore"):
        np.testing.assert_array_equal(km.rotate_rows(np.array([[np.inf, 1.0]]), np.eye(2)),
                                      np.array([[np.inf, 1.0]]) @ np.eye(2))


def test_tied_x0_and_divergence_of_a_few_points_do_not_launch_the_parallel_pool(monkeypatch):
    """rotate_rows was always parallel: each call woke numba's sleeping workers (~65 us), so
    x0 of 64 points at d = 2 took 438 us against 216 us with the BLAS product it replaced
    (the oracle replays call it once per step); now serial up to 2**20 products (179 us),
    the same bits, and the results as before: the posterior mean and the divergence of an
    equivalent full mixture."""
    import sgm_ref.kernels.mixture as km
    d, K, n = 2, 4, 64
    g = tied_mixture(K, d, seed=32)
    full = GaussianMixture(g.weights, g.means, np.repeat(g.covariances[None], K, axis=0), covariance_type="full")
    x = g.sample(n, np.random.default_rng(33))
    want_x0, want_div = g.predict(x, 0.3, kind="x0"), g.divergence(x, 0.3)

    def parallel(z, R):
        raise AssertionError(f"parallel rotation of {z.shape[0]} x {z.shape[1]} rows")
    monkeypatch.setattr(km, "_rotate_rows_parallel", parallel)
    np.testing.assert_array_equal(g.predict(x, 0.3, kind="x0"), want_x0)
    np.testing.assert_array_equal(g.divergence(x, 0.3), want_div)
    monkeypatch.undo()
    monkeypatch.setattr(km, "_ROTATE_SERIAL_MAX", 0)  # all parallel: the same bits
    np.testing.assert_array_equal(g.predict(x, 0.3, kind="x0"), want_x0)
    np.testing.assert_array_equal(g.divergence(x, 0.3), want_div)
    full_x0 = full.predict(x, 0.3, kind="x0")
    np.testing.assert_allclose(want_x0, full_x0, rtol=0, atol=1e-14 * np.max(np.abs(full_x0)))
    np.testing.assert_allclose(want_div, full.divergence(x, 0.3), rtol=1e-13)


# -- the diagonal kernel against mpmath --------------------------------------------------------


def diagonal_reference(x, a, s2, w, mu, lam):
    """log p and score of sum_k w_k N(a mu_k, diag(a^2 lam_k + s2)) per row in 40-digit
    mpmath, from the float64 inputs as they are (w the weights, not their float64 logs)."""
    import mpmath as mp
    with mp.workdps(40):
        n, d = x.shape
        logp, score = np.empty(n), np.empty((n, d))
        for i in range(n):
            ai, s2i = mp.mpf(a[i]), mp.mpf(s2[i])
            terms, ratios = [], []
            for wk, muk, lamk in zip(w, mu, lam):
                if wk == 0:
                    continue
                y = [mp.mpf(x[i, j]) - ai * mp.mpf(muk[j]) for j in range(d)]
                v = [ai * ai * mp.mpf(lamk[j]) + s2i for j in range(d)]
                terms.append(mp.log(mp.mpf(wk)) - mp.fsum(yj * yj / vj + mp.log(vj) for yj, vj in zip(y, v)) / 2)
                ratios.append([yj / vj for yj, vj in zip(y, v)])
            top = max(terms)
            e = [mp.exp(term - top) for term in terms]
            total = mp.fsum(e)
            logp[i] = float(top + mp.log(total) - d * mp.log(2 * mp.pi) / 2)
            for j in range(d):
                score[i, j] = float(-mp.fsum(ek * r[j] for ek, r in zip(e, ratios)) / total)
    return logp, score


def test_diagonal_score_keeps_the_digits_of_a_small_weight_times_a_small_residual():
    """The diagonal kernel summed (e_k y_k) / v_k: an e y below float64's normal range lost
    its digits, and a v < 1 scaled the loss up. Two components, weights (1, 1e-250), variances
    (1, 1e-100), means 0 and 1e-115, at x = 0: the score is 1e-215 (the narrow component's
    e = 1e-200, y / v = -1e-15), and came out 1.5e-9 off (e y = 1e-315, a subnormal); now
    within the rounding of log w (2.3e-14 relative), as the NumPy twin."""
    w, mu, lam = np.array([1.0, 1e-250]), np.array([[0.0], [1e-115]]), np.array([[1.0], [1e-100]])
    x = np.zeros((1, 1))
    want_logp, want_score = diagonal_reference(x, np.ones(1), np.zeros(1), w, mu, lam)
    assert want_score[0, 0] == pytest.approx(1e-215, rel=1e-12, abs=0)
    for g in (GaussianMixture(w, mu, lam, covariance_type="diag"),
              GaussianMixture(w, mu, lam[:, 0], covariance_type="spherical")):
        logp, score = g.log_prob_and_score(x, 0.0)
        np.testing.assert_allclose(score, want_score, rtol=5e-14, atol=0)
        np.testing.assert_allclose(logp, want_logp, rtol=1e-15, atol=0)
        twin = plain.mixture_score(x, 0.0, plain.mixture(g.weights, g.means, g.covariances), plain.OU)[1]
        np.testing.assert_allclose(score, twin, rtol=5e-14, atol=0)


@pytest.mark.parametrize("K, d", [(1, 1), (2, 3), (5, 17), (8, 64)])
@pytest.mark.parametrize("identity", [False, True])
def test_diagonal_kernel_against_mpmath(K, d, identity):
    """diagonal_mixture (parallel) and diagonal_mixture_serial: the same bits, and log p and
    the score within 5e-13 of 40-digit mpmath (measured up to 9e-14, the digits of
    x - a mu_k lost to cancellation, as in the NumPy twin), with a zero weight, at
    t = 0, 1e-12, mid-range and 40 (alpha = 4e-18), points near and 30 times farther out."""
    from sgm_ref.kernels.mixture import diagonal_mixture, diagonal_mixture_serial
    rng = np.random.default_rng(100 * K + d + identity)
    w = rng.dirichlet(np.ones(K))
    if K > 1:
        w[0] = 0.0
        w /= w.sum()
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    mu = 3.0 * rng.standard_normal((K, d))
    lam = np.ones((K, d)) if identity else np.exp(rng.uniform(np.log(1e-4), np.log(10.0), (K, d)))
    t = np.concatenate([[0.0, 0.0, 1e-12, 1e-12, 40.0, 40.0], np.exp(rng.uniform(-8.0, 2.0, 6))])
    n = t.size
    a, s2 = np.exp(-t), -np.expm1(-2.0 * t)
    k = rng.integers(0, K, n)
    x = a[:, None] * mu[k] + np.sqrt(a[:, None] ** 2 * lam[k] + s2[:, None]) * rng.standard_normal((n, d))
    x[1::2] *= 30.0
    logp, score = np.empty(n), np.empty((n, d))
    diagonal_mixture(x, a, s2, logw, mu, lam, identity, True, logp, score)
    logp_serial, score_serial = np.empty(n), np.empty((n, d))
    diagonal_mixture_serial(x, a, s2, logw, mu, lam, identity, True, logp_serial, score_serial)
    np.testing.assert_array_equal(logp_serial, logp)
    np.testing.assert_array_equal(score_serial, score)
    want_logp, want_score = diagonal_reference(x, a, s2, w, mu, lam)
    assert np.all(np.abs(logp - want_logp) <= 5e-13 * np.maximum(1.0, np.abs(want_logp)))
    assert np.all(np.abs(score - want_score) <= 5e-13 * np.max(np.abs(want_score), axis=1, keepdims=True))
