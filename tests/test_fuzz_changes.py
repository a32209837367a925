"""Property-based fuzz of the functions changed in the commits after 33e319d.

Each property runs a few dozen derandomized hypothesis examples (deadline=None, no
database: the same examples on every run) and checks the library against an independent
computation: mpmath at enough digits for GaussianMixture.divergence and predict(kind="x0")
far out (also on bisectors, and with zero-weight components), replays._common.transition,
conventions.coefficients of the probability-flow pairs, gaussian_kl of nearly equal laws,
mmd (a double loop), histogram_tv's bin masses (normal cdfs) and tanh through MLP.backward
(not torch: its tanh backward is the 1 - h^2 that was wrong); exact fractions for
mean_error and covariance_error; invariance under a common shift for sliced_wasserstein;
Fraction arithmetic for gradcheck's eps boundary; and io.load on corrupted archives
(ModelFileError / ValueError only, or the very model saved). SGM_REF_FUZZ_SCALE=k runs k
times the examples (15 was run). Each property fails on the code of 33e319d where that
code was wrong, and on a planted error. The two bugs it found are fixed, and pinned by
test_far_x0_of_nearly_equal_variances_is_exact and
test_load_of_a_damaged_npy_header_is_a_model_file_error.
"""

import importlib
import io
import re
import math
import os
import zipfile
from fractions import Fraction

import mpmath
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sgm_ref.conventions import coefficients
from sgm_ref.processes import EDM, OU, VE, VP, FlowMatching, SubVP
from sgm_ref.replays._common import transition
from sgm_ref.targets import GaussianMixture

EPS = float(np.finfo(float).eps)


def fuzz(n):
    n = int(n * float(os.environ.get("SGM_REF_FUZZ_SCALE", "1")))
    return settings(max_examples=n, deadline=None, derandomize=True, database=None)


# ----------------------------------------------------------------- processes in mpmath

PROCESSES = [OU(), VP(), VP(0.1, 2960.0), SubVP(), SubVP(0.5, 30.0), VE(), VE(1e-3, 1e4), EDM(), FlowMatching()]


def mp_marginal(process, t):
    """(alpha_t, sigma_t) in mpmath, from the float64 t and parameters (exact inputs)."""
    return mp_marginal_s(process, mpmath.mpf(float(t)))


def mp_derivatives(process, t):
    """(alpha', sigma') in mpmath by differentiating mp_marginal (mpmath.diff, exact enough at 60+ digits)."""
    a = mpmath.diff(lambda s: mp_marginal_s(process, s)[0], mpmath.mpf(float(t)))
    s = mpmath.diff(lambda s: mp_marginal_s(process, s)[1], mpmath.mpf(float(t)))
    return a, s


def mp_marginal_s(process, t):
    """mp_marginal at an mpmath t (not rounded to float64)."""
    name = type(process).__name__
    if name == "OU":
        return mpmath.exp(-t), mpmath.sqrt(-mpmath.expm1(-2 * t))
    if name in ("VP", "SubVP"):
        bmin, bmax = mpmath.mpf(process.beta_min), mpmath.mpf(process.beta_max)
        B = bmin * t + t * t * (bmax - bmin) / 2
        if name == "VP":
            return mpmath.exp(-B / 2), mpmath.sqrt(-mpmath.expm1(-B))
        return mpmath.exp(-B / 2), -mpmath.expm1(-B)
    if name == "VE":
        smin, smax = mpmath.mpf(process.sigma_min), mpmath.mpf(process.sigma_max)
        return mpmath.mpf(1), smin * (smax / smin) ** t
    if name == "EDM":
        return mpmath.mpf(1), t
    if name == "FlowMatching":
        return 1 - t, t
    raise AssertionError(name)


def time_in(process):
    hi = float(process.t_max) if math.isfinite(process.t_max) else 100.0
    if type(process).__name__ == "OU":
        hi = 10.0
    return st.floats(1e-6, hi, allow_nan=False).map(lambda u: min(u, hi))


# ----------------------------------------------------------------- transition (r, v)


@fuzz(120)
@given(st.sampled_from(PROCESSES), st.data())
def test_transition_r_and_v_against_mpmath_on_fine_and_coarse_steps(process, data):
    hi_max = float(process.t_max) if math.isfinite(process.t_max) else 80.0
    t_hi = data.draw(st.floats(1e-8, hi_max), label="t_hi")
    # a step relative to t_hi from one part in 1e-12 up to the whole of it
    rel = data.draw(st.sampled_from([1e-12, 1e-9, 1e-6, 1e-3, 0.1, 0.5, 0.99]), label="relative step")
    t_lo = t_hi * (1.0 - rel)
    assume(0.0 < t_lo < t_hi)
    r, v = transition(process, np.float64(t_hi), np.float64(t_lo))
    with mpmath.workdps(60):
        a_hi, s_hi = mp_marginal(process, t_hi)
        a_lo, s_lo = mp_marginal(process, t_lo)
        R = a_hi / a_lo
        V = s_hi**2 - R**2 * s_lo**2
    # r = exp(int f): rounding int f to float64 alone moves r by eps |int f| relative (its
    # condition number), and v = r^2 c2 as much twice over; beyond that a few eps
    cond = 1.0 + abs(float(mpmath.log(R)))
    assert float(r) == pytest.approx(float(R), rel=8 * EPS * cond, abs=0)
    # v's closed forms keep a few eps relative, whatever the step (the cancelling
    # sigma_hi^2 - r^2 sigma_lo^2 would lose all of it on the 1e-12 steps)
    assert float(v) == pytest.approx(float(V), rel=64 * EPS * cond, abs=0)


# ----------------------------------------------------------------- coefficients


@fuzz(120)
@given(st.sampled_from(PROCESSES), st.data(),
       st.sampled_from([("eps", "velocity"), ("velocity", "eps"), ("score", "velocity"), ("velocity", "score")]))
def test_probability_flow_coefficients_against_mpmath(process, data, pair):
    hi = float(process.t_max) if math.isfinite(process.t_max) else 80.0
    if isinstance(process, OU):
        hi = 2000.0  # past t = 745, where alpha_t underflows to 0 (refused before the fix)
    t = data.draw(st.floats(1e-6, hi).map(lambda u: min(u, hi)), label="t")
    from_, to = pair
    A, B = coefficients(t, process, from_=from_, to=to)
    with mpmath.workdps(60):
        a, s = mp_marginal(process, t)
        da, ds = mp_derivatives(process, t)
        f = da / a
        K = ds - f * s  # velocity = f x + K eps = f x - s K score
        if from_ == "eps":
            ref = (f, K)
        elif from_ == "score":
            ref = (f, -s * K)
        elif to == "eps":
            ref = (-f / K, 1 / K)
        else:  # score = -eps / s
            ref = (f / (s * K), -1 / (s * K))
    for got, want in zip((A, B), ref):
        assert float(got) == pytest.approx(float(want), rel=64 * EPS, abs=0), (from_, to, t)


# ----------------------------------------------------------------- GaussianMixture far out

COV_TYPES = ["identity", "diag", "spherical", "tied", "full"]


@st.composite
def mixtures(draw):
    """(mixture, the covariance matrices as mpmath matrices): K in 1..3, d in 1..3, well conditioned."""
    K = draw(st.integers(1, 3), label="K")
    d = draw(st.integers(1, 3), label="d")
    kind = draw(st.sampled_from(COV_TYPES), label="covariance type")
    raw = draw(st.lists(st.floats(0.1, 1.0), min_size=K, max_size=K), label="weights")
    w = np.array(raw) / sum(raw)
    w[-1] = 1.0 - w[:-1].sum()
    assume(np.all(w > 0))
    mu = np.array(draw(st.lists(st.lists(st.floats(-3, 3), min_size=d, max_size=d), min_size=K, max_size=K),
                       label="means"))
    var = st.floats(0.2, 5.0)
    if kind == "identity":
        cov, covs = None, [np.eye(d)] * K
    elif kind == "diag":
        cov = np.array(draw(st.lists(st.lists(var, min_size=d, max_size=d), min_size=K, max_size=K), label="cov"))
        covs = [np.diag(c) for c in cov]
    elif kind == "spherical":
        cov = np.array(draw(st.lists(var, min_size=K, max_size=K), label="cov"))
        covs = [c * np.eye(d) for c in cov]
    else:
        def spd():
            B = np.array(draw(st.lists(st.lists(st.floats(-1, 1), min_size=d, max_size=d), min_size=d, max_size=d),
                              label="B"))
            return B @ B.T + draw(var, label="ridge") * np.eye(d)
        cov = spd() if kind == "tied" else np.array([spd() for _ in range(K)])
        covs = [cov] * K if kind == "tied" else list(cov)
    gm = GaussianMixture(w, mu, cov, covariance_type=None if kind == "identity" else kind)
    return gm, w, mu, covs


def mp_posterior(w, mu, covs, x, a, s):
    """(divergence of the score, E[x0 | x]) of the mixture at x under x_t = a x0 + s z, in mpmath."""
    K, d = mu.shape
    X = mpmath.matrix([mpmath.mpf(float(v)) for v in x])
    logc, g, m0, trs, qs = [], [], [], [], []
    for k in range(K):
        S = mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in covs[k]])
        M = mpmath.matrix([mpmath.mpf(float(v)) for v in mu[k]])
        C = a * a * S + s * s * mpmath.eye(d)
        Ci = C ** -1
        y = X - a * M
        u = Ci * y
        q = sum(y[i] * u[i] for i in range(d))
        qs.append(q)
        logc.append(mpmath.log(mpmath.mpf(float(w[k]))) - (q + mpmath.log(mpmath.det(C))) / 2)
        g.append(-u)
        m0.append(M + a * (S * u))
        trs.append(sum(Ci[i, i] for i in range(d)))
    top = max(logc)
    pi = [mpmath.exp(c - top) for c in logc]
    z = sum(pi)
    pi = [p / z for p in pi]
    score = sum((pi[k] * g[k] for k in range(K)), mpmath.matrix(d, 1))
    terms = [-trs[k] + sum((g[k][i] - score[i]) ** 2 for i in range(d)) for k in range(K)]
    div = sum(pi[k] * terms[k] for k in range(K))
    x0 = sum((pi[k] * m0[k] for k in range(K)), mpmath.matrix(d, 1))
    # how far a change of the log-weights moves div and x0: d/d logc_k of sum pi_j h_j is pi_k (h_k - mean)
    lever_div = max(pi[k] * abs(terms[k] - div) for k in range(K))
    lever_x0 = max(pi[k] * max(abs(m0[k][i] - x0[i]) for i in range(d)) for k in range(K))
    return div, [x0[i] for i in range(d)], pi, (min(qs), lever_div, lever_x0)


FAR_PROCESSES = [OU(), VP(), VE(), EDM(), SubVP(), FlowMatching()]


@fuzz(120)
@given(mixtures(), st.sampled_from(FAR_PROCESSES), st.data())
def test_divergence_and_x0_far_out_against_mpmath(mix, process, data):
    gm, w, mu, covs = mix
    d = mu.shape[1]
    hi = min(float(process.t_max), 5.0)
    t = data.draw(st.floats(1e-3, hi), label="t")
    scale = 10.0 ** data.draw(st.integers(0, 30), label="log10 |x|")
    direction = np.array(data.draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d), label="direction"))
    assume(np.linalg.norm(direction) > 0.1)
    x = (scale * direction)[None, :]
    if d >= 2 and mu.shape[0] >= 2 and data.draw(st.booleans(), label="on a bisector"):
        # far out along the bisector of the first two means, where both keep weight: x = alpha (mu_0 + mu_1) / 2 + R u
        # with u orthogonal to mu_0 - mu_1 (the cross terms x . (mu_k - mu_l) decide the weights)
        e = mu[0] - mu[1]
        assume(np.linalg.norm(e) > 0.1)
        u = direction - (direction @ e) / (e @ e) * e
        assume(np.linalg.norm(u) > 0.1)
        x = (float(process.alpha(t)) * 0.5 * (mu[0] + mu[1]) + scale * u / np.linalg.norm(u))[None, :]
    div = gm.divergence(x, t, process)[0]
    x0 = gm.predict(x, t, process, kind="x0")[0]
    digits = 60 + 2 * int(math.log10(max(scale, float(np.max(np.abs(x))))))
    with mpmath.workdps(digits):
        a, s = mp_marginal(process, t)
        D, X0, pi, (q, lever_div, lever_x0) = mp_posterior(w, mu, covs, x[0], a, s)
        # how much one ulp of x moves the exact values: within that of a bisector the
        # weights are as uncertain as x's last bit (docstring of _far_rows)
        # (each coordinate on its own: scaling all of x alike would keep it on a bisector)
        wiggle = []
        for j in range(d):
            for sign in (1.0, -1.0):
                xw = x[0].copy()
                xw[j] = xw[j] + sign * 4 * np.spacing(max(abs(xw[j]), 1e-300))
                wiggle.append(xw)
        moved = [mp_posterior(w, mu, covs, xw, a, s) for xw in wiggle]
        sens_div = max(abs(m[0] - D) for m in moved)
        sens_x0 = max(max(abs(m[1][i] - X0[i]) for i in range(d)) for m in moved)
        # the size of the terms: tr C_k^{-1}, |g_k - s|^2 and the terms of x0
        size_div = float(sum(abs(p) for p in [D]) + max(mpmath.mpf(1), abs(D)))
        size_x0 = float(max(abs(m) for m in mu.ravel()) + max(abs(v) for v in X0) + 1)
    # measured: divergence within 6.2e-16 of its size, x0 within 9e-15 (tied, kappa ~ 20: the
    # eigendecomposition of the given matrix costs kappa eps)
    kappa = max(np.linalg.cond(c) for c in covs)
    tol_div = 32 * EPS * size_div + 2 * float(sens_div)
    tol_x0 = 64 * EPS * kappa * size_x0 + 2 * float(sens_x0)
    assert abs(div - float(D)) <= tol_div, (div, float(D), x, t)
    for i in range(d):
        assert abs(x0[i] - float(X0[i])) <= tol_x0, (x0, [float(v) for v in X0], x, t)


@fuzz(80)
@given(mixtures(), st.sampled_from(FAR_PROCESSES), st.data())
def test_zero_weight_components_change_no_bit_of_divergence_and_x0(mix, process, data):
    """A component of weight 0 has no effect (the class docstring), also one whose score overflows
    (variance 1e-300 far from x): divergence and x0 are those of the mixture without it, bit for bit."""
    gm, w, mu, covs = mix
    K, d = mu.shape
    kind = gm.covariance_type
    assume(kind in ("identity", "diagonal", "spherical", "full"))
    extra_mu = np.array(data.draw(st.lists(st.sampled_from([0.0, 5.0, -1e10, 1e150]), min_size=d, max_size=d),
                                  label="zero-weight mean"))
    tiny = data.draw(st.sampled_from([1e-300, 1.0, 1e300]), label="its variance")
    if kind == "identity":
        cov2 = None
    elif kind == "diagonal":
        cov2 = np.vstack([gm.covariances, np.full((1, d), tiny)])
    elif kind == "spherical":
        cov2 = np.append(gm.covariances, tiny)
    else:  # (eigh puts 1e-300 I's eigenvalues a little below 1e-300, which the range check refuses)
        cov2 = np.concatenate([gm.covariances, max(tiny, 1e-299) * np.eye(d)[None]])
    where = data.draw(st.integers(0, K), label="position")
    order = list(range(K))
    order.insert(where, K)
    w2 = np.append(w, 0.0)[order]
    mu2 = np.vstack([mu, extra_mu])[order]
    if cov2 is not None:
        cov2 = cov2[order]
    gm2 = GaussianMixture(w2, mu2, cov2, covariance_type=None if kind == "identity" else
                          {"diagonal": "diag"}.get(kind, kind))
    t = data.draw(st.floats(1e-3, min(float(process.t_max), 5.0)), label="t")
    scale = 10.0 ** data.draw(st.integers(0, 20), label="log10 |x|")
    x = scale * np.array(data.draw(st.lists(st.lists(st.floats(-1, 1), min_size=d, max_size=d), min_size=1,
                                            max_size=3), label="x"))
    np.testing.assert_array_equal(gm2.divergence(x, t, process), gm.divergence(x, t, process))
    np.testing.assert_array_equal(gm2.predict(x, t, process, kind="x0"), gm.predict(x, t, process, kind="x0"))


@pytest.mark.parametrize("kind, cov, process, t, x, off", [
    ("diag", [[1.0], [2.0]], VP(), 0.9375, 100.0, "7.0e-14"),
    ("full", [[[1.0]], [[2.0]]], VP(), 0.9375, 100.0, "8.6e-14"),
    ("diag", [[1.0], [2.0]], OU(), 10.0, 33040.0, "4.0e-9"),
    ("diag", [[1.0], [2.0]], OU(), 15.0, 4903526.0, "1.2e-4"),
    ("spherical", [1.0, 2.0], OU(), 15.0, 4903526.0, "1.2e-4"),
])
def test_far_x0_of_nearly_equal_variances_is_exact(kind, cov, process, t, x, off):
    """Found by this fuzz: far rows of components whose variances differ took v_k* - v_k from the
    rounded v = alpha^2 lam + sigma^2, each eps v off, where the difference is alpha^2 |lam_k - lam_k*|:
    GaussianMixture([.5, .5], [[0.], [0.]], [[1.], [2.]], "diag").predict([[4903526.]], 15.0, OU(), "x0")
    gave 2.632053874448512 for mpmath's 2.6323724413085725 (`off`: the old error per case). The exact
    weights 0.245 / 0.755 move by ~1e-15 in x's last bit. Now the differences come from the covariances."""
    gm = GaussianMixture([0.5, 0.5], [[0.0], [0.0]], np.array(cov), covariance_type=kind)
    x = np.array([[x]])
    x0 = gm.predict(x, t, process, kind="x0")[0, 0]
    with mpmath.workdps(60):
        a, s = mp_marginal(process, t)
        _, X0, _, _ = mp_posterior(np.array([0.5, 0.5]), np.zeros((2, 1)), [np.eye(1), 2 * np.eye(1)], x[0], a, s)
    assert x0 == pytest.approx(float(X0[0]), rel=8 * EPS, abs=0)


def test_far_rows_of_a_slightly_asymmetric_full_covariance_use_its_symmetric_part():
    """A full covariance is accepted with |C - C^T| up to 1e-10 |C| and means (C + C^T) / 2
    (eigh_spd). The far rows' r^T P_k alpha^2 (Sigma_k* - Sigma_k) P_k* r took Sigma from C
    itself, so the asymmetry 5e-11 below moved the divergence at x = (35, 0) (far: q ~ 1600)
    6.2e-13 of its size off mpmath's (the same mixture given (C + C^T) / 2 was exact)."""
    S1 = np.array([[1.0, 0.5], [0.5, 1.0]])
    S2 = np.array([[1.01, 0.5], [0.5 + 5e-11, 1.0]])
    mu = np.zeros((2, 2))
    gm = GaussianMixture([0.5, 0.5], mu, np.array([S1, S2]), covariance_type="full")
    for r in (35.0, 40.0, 45.0):
        x = np.array([[r, 0.0]])
        div = gm.divergence(x, 0.5, OU())[0]
        x0 = gm.predict(x, 0.5, OU(), kind="x0")[0]
        with mpmath.workdps(60):
            a, s = mp_marginal(OU(), 0.5)
            D, X0, _, _ = mp_posterior(np.array([0.5, 0.5]), mu, [S1, 0.5 * (S2 + S2.T)], x[0], a, s)
        assert div == pytest.approx(float(D), rel=4 * EPS, abs=0)
        for i in range(2):
            assert x0[i] == pytest.approx(float(X0[i]), rel=4 * EPS, abs=4 * EPS)


def test_far_rows_of_several_reference_components_match_row_by_row():
    """_far_rows takes Sigma_k* - Sigma_k per reference component k* (rows grouped by k*): a
    batch whose far rows have different references gives each row's values bit for bit."""
    rng = np.random.default_rng(3)
    K, d = 4, 3
    B = rng.standard_normal((K, d, d))
    gm = GaussianMixture(np.full(K, 0.25), 3 * rng.standard_normal((K, d)),
                         B @ B.transpose(0, 2, 1) + 0.5 * np.eye(d), covariance_type="full")
    x = 10.0 ** rng.uniform(2, 12, (16, 1)) * rng.standard_normal((16, d))
    t = rng.uniform(0.1, 2.0, 16)
    div, x0 = gm.divergence(x, t, OU()), gm.predict(x, t, OU(), kind="x0")
    for i in range(16):
        assert gm.divergence(x[i:i + 1], t[i:i + 1], OU())[0] == div[i]
        np.testing.assert_array_equal(gm.predict(x[i:i + 1], t[i:i + 1], OU(), kind="x0")[0], x0[i])
    # the rows are far out and their references differ (else the test pins nothing)
    top = [int(np.argmax(gm._component_blocks(x[i:i + 1], t[i], OU())[1].__next__()[5])) for i in range(16)]
    assert len(set(top)) >= 2


# ----------------------------------------------------------------- metrics

class _Moments:
    """A target with a given mean and covariance only."""

    def __init__(self, mean, cov):
        self._m, self._c = np.asarray(mean, dtype=float), np.asarray(cov, dtype=float)

    def mean(self):
        return self._m.copy()

    def covariance(self):
        return self._c.copy()


def _F(v):
    return Fraction(float(v))


def _mp_sqrt_fraction(q):
    with mpmath.workdps(50):
        return float(mpmath.sqrt(mpmath.mpf(q.numerator) / q.denominator))


@st.composite
def far_samples(draw, max_n=8, max_d=3):
    """(x, offset): n rows in d dimensions of spread ~1 about an offset of 1 to 1e14."""
    n = draw(st.integers(2, max_n), label="n")
    d = draw(st.integers(1, max_d), label="d")
    offset = draw(st.sampled_from([0.0, 1.0, 1e3, 1e6, 1e9, 1e12, 1e14, -1e12]), label="offset")
    centre = offset * np.array(draw(st.lists(st.sampled_from([1.0, -1.0, 0.5]), min_size=d, max_size=d)))
    spread = np.array(draw(st.lists(st.lists(st.floats(-2, 2), min_size=d, max_size=d), min_size=n, max_size=n),
                           label="spread"))
    return centre + spread, centre


@fuzz(120)
@given(far_samples(), st.data())
def test_mean_and_covariance_error_against_exact_fractions(sample, data):
    from sgm_ref.metrics.distances import covariance_error, mean_error

    x, centre = sample
    n, d = x.shape
    m = centre + np.array(data.draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d), label="target mean"))
    B = np.array(data.draw(st.lists(st.lists(st.floats(-1, 1), min_size=d, max_size=d), min_size=d, max_size=d),
                           label="B"))
    cov = B @ B.T + 0.5 * np.eye(d)
    target = _Moments(m, cov)
    # exact: xbar - m and S - Sigma as fractions of the float64 inputs
    xbar = [sum(_F(x[i, j]) for i in range(n)) / n for j in range(d)]
    diff = [xbar[j] - _F(m[j]) for j in range(d)]
    exact_mean = _mp_sqrt_fraction(sum(v * v for v in diff))
    c = [[_F(x[i, j]) - xbar[j] for j in range(d)] for i in range(n)]
    S = [[sum(c[i][j] * c[i][k] for i in range(n)) / (n - 1) for k in range(d)] for j in range(d)]
    exact_cov = _mp_sqrt_fraction(sum((S[j][k] - _F(cov[j, k])) ** 2 for j in range(d) for k in range(d)))
    got_mean = mean_error(x, target).value
    got_cov = covariance_error(x, target).value
    # each x_i - m and x_i - xbar is exact or one rounding of a number of size |spread|: the
    # error is a few eps of the deviations, whatever the offset (eps |offset| before the fix)
    dev = float(np.max(np.abs(x - m))) * math.sqrt(d)
    assert abs(got_mean - exact_mean) <= 8 * n * EPS * dev + 4 * EPS * exact_mean
    cdev = float(np.max(np.sum((x - x.mean(axis=0)) ** 2, axis=1))) + 4.0
    assert abs(got_cov - exact_cov) <= 16 * n * EPS * (cdev + float(np.linalg.norm(cov))) + 4 * EPS * exact_cov


@fuzz(80)
@given(far_samples(max_n=6), st.data())
def test_sliced_wasserstein_is_invariant_under_a_common_shift(sample, data):
    from sgm_ref.metrics.distances import sliced_wasserstein

    x, centre = sample
    n, d = x.shape
    m = data.draw(st.integers(2, 6), label="m")
    y = centre + np.array(data.draw(st.lists(st.lists(st.floats(-2, 2), min_size=d, max_size=d), min_size=m,
                                             max_size=m), label="y spread"))
    # the same points about the origin (x - centre is exact: one rounding above made x, so
    # subtract in the same order), and with the shift the pooled mean removes
    x0, y0 = x - centre, y - centre
    seed = data.draw(st.integers(0, 2**32 - 1), label="seed")
    p = data.draw(st.sampled_from([1, 2, 3]), label="p")
    far = sliced_wasserstein(x, y, np.random.default_rng(seed), n_projections=16, p=p)
    near = sliced_wasserstein(x0, y0, np.random.default_rng(seed), n_projections=16, p=p)
    # the projections of the shifted samples round like the ones about the origin up to
    # eps |spread|: SW_p agrees to a few eps of the spread (8.6e-6 off at 1e12 before the fix)
    spread = float(np.max(np.abs(np.concatenate([x0, y0])))) * math.sqrt(d)
    assert abs(far.value - near.value) <= 64 * EPS * spread


def _mp_mmd(x, y, h):
    with mpmath.workdps(50):
        def k(a, b):
            return mpmath.exp(-sum((mpmath.mpf(float(u)) - mpmath.mpf(float(v))) ** 2 for u, v in zip(a, b))
                              / (2 * mpmath.mpf(h) ** 2))
        n, m = len(x), len(y)
        xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
        xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
        return xx + yy - 2 * xy


@fuzz(80)
@given(far_samples(max_n=6, max_d=2), st.data())
def test_mmd_against_a_mpmath_double_loop(sample, data):
    from sgm_ref.metrics.distances import mmd

    x, centre = sample
    n, d = x.shape
    m = data.draw(st.integers(2, 6), label="m")
    gap = data.draw(st.sampled_from([0.0, 3.0, 1e3, 1e9, 1e15]), label="gap between x and y")
    direction = np.zeros(d)
    direction[0] = 1.0
    y = (centre + gap * direction) + np.array(data.draw(st.lists(st.lists(st.floats(-2, 2), min_size=d, max_size=d),
                                                                 min_size=m, max_size=m), label="y spread"))
    assume(np.max(np.abs(np.concatenate([x, y]))) < 1e150 / math.sqrt(d))
    h = data.draw(st.sampled_from([0.5, 1.0, 3.0, 100.0]), label="bandwidth")
    got = mmd(x, y, bandwidth=h).value
    want = _mp_mmd(x, y, h)
    # error budget: each k rounds to a few eps of itself, and a pair's squared distance from the
    # Gram form carries 4 d eps (|a|^2 + |b|^2) about the pooled mean (the docstring's 1e-10 for
    # clusters ~1e3 widths apart); pairs within 1e-3 of their norms come from exact differences
    z = np.concatenate([x, y])
    zc = z - z.mean(axis=0)
    norms = np.sum(zc * zc, axis=1)
    d2 = np.sum((z[:, None, :] - z[None, :, :]) ** 2, axis=2)
    kern = np.exp(-d2 / (2 * h * h))
    gram = np.where(d2 <= 1e-6 * (norms[:, None] + norms[None, :]), 0.0,
                    4 * d * EPS * (norms[:, None] + norms[None, :]))
    per_pair = kern * (8 * EPS * (1 + d2 / (h * h)) + gram / (2 * h * h))
    tol = 4 * float(np.max(per_pair)) + 8 * EPS * abs(float(want))
    assert abs(got - float(want)) <= tol, (got, float(want), tol)


@st.composite
def close_covariances(draw):
    d = draw(st.integers(1, 3), label="d")
    B = np.array(draw(st.lists(st.lists(st.floats(-1, 1), min_size=d, max_size=d), min_size=d, max_size=d),
                      label="B"))
    S1 = B @ B.T + draw(st.floats(0.3, 3.0), label="ridge") * np.eye(d)
    rel = 10.0 ** draw(st.integers(-15, -1), label="log10 relative difference")
    E = np.array(draw(st.lists(st.lists(st.floats(-1, 1), min_size=d, max_size=d), min_size=d, max_size=d),
                      label="E"))
    S0 = S1 + rel * (E + E.T)
    assume(np.all(np.linalg.eigvalsh(S0) > 0.1))
    m1 = np.array(draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d), label="m1"))
    shift = draw(st.sampled_from([0.0, 1e-9, 1e-3, 1.0]), label="mean shift")
    m0 = m1 + shift * np.array(draw(st.lists(st.floats(-1, 1), min_size=d, max_size=d), label="dm"))
    return m0, S0, m1, S1


@fuzz(120)
@given(close_covariances())
def test_gaussian_kl_of_nearly_equal_laws_against_mpmath(laws):
    from sgm_ref.metrics.gaussian import gaussian_kl

    m0, S0, m1, S1 = laws
    d = len(m0)
    got = gaussian_kl(m0, S0, m1, S1)
    # tr - d - log det cancels to the KL's size, down to (S0 - S1)^2 ~ 1e-108 for entries of 1e-54
    diff = np.abs(S0 - S1)
    tiny = float(np.min(diff[diff > 0])) if np.any(diff > 0) else 1.0
    with mpmath.workdps(60 + 2 * int(-math.log10(tiny)) if tiny < 1 else 60):
        A0 = mpmath.matrix([[mpmath.mpf(float(v)) for v in r] for r in S0])
        A1 = mpmath.matrix([[mpmath.mpf(float(v)) for v in r] for r in S1])
        dm = mpmath.matrix([mpmath.mpf(float(a)) - mpmath.mpf(float(b)) for a, b in zip(m1, m0)])
        P = A1 ** -1 * A0
        want = (sum(P[i, i] for i in range(d)) - d - mpmath.log(mpmath.det(P))
                + (dm.T * (A1 ** -1) * dm)[0, 0]) / 2
    # a few eps relative, times the conditioning of S1 (its Cholesky factor takes kappa eps)
    kappa = float(np.linalg.cond(S1))
    assert got == pytest.approx(float(want), rel=64 * EPS * kappa, abs=0)


@fuzz(60)
@given(st.data())
def test_histogram_tv_bin_masses_against_exact_normal_cdfs(data):
    from sgm_ref.metrics.histogram import histogram_tv

    d = data.draw(st.integers(1, 2), label="d")
    K = data.draw(st.integers(1, 2), label="K")
    centre = data.draw(st.sampled_from([0.0, 3.0, 1e3, 1e6, 1e9, 1e12, -1e12]), label="centre")
    mu = centre + np.array(data.draw(st.lists(st.lists(st.floats(-2, 2), min_size=d, max_size=d), min_size=K,
                                              max_size=K), label="means"))
    var = np.array(data.draw(st.lists(st.lists(st.floats(0.25, 4.0), min_size=d, max_size=d), min_size=K,
                                      max_size=K), label="variances"))
    w = np.full(K, 1.0 / K)
    gm = GaussianMixture(w, mu, var, covariance_type="diag")
    bins = data.draw(st.integers(1, 12 if d == 1 else 5), label="bins")
    x = gm.sample(16, np.random.default_rng(data.draw(st.integers(0, 99), label="seed")))
    res = histogram_tv(x, gm, bins=bins)
    with mpmath.workdps(40):
        def cell_mass(k, cell):
            p = mpmath.mpf(1)
            for j, b in enumerate(cell):
                lo, hi = res.edges[j][b], res.edges[j][b + 1]
                m, s = mpmath.mpf(float(mu[k, j])), mpmath.sqrt(mpmath.mpf(float(var[k, j])))
                p *= mpmath.ncdf((mpmath.mpf(float(hi)) - m) / s) - mpmath.ncdf((mpmath.mpf(float(lo)) - m) / s)
            return p
        exact = np.empty(res.target_mass.shape)
        for cell in np.ndindex(*res.target_mass.shape):
            exact[cell] = float(sum(mpmath.mpf(float(w[k])) * cell_mass(k, cell) for k in range(K)))
    # ~1e-14 for Gaussian mixtures (the docstring), also far from the origin (1.7e-9 off at 1e12
    # before the interpolatory weights). Where nodes sit off the Gauss points (|centre| >= 1e12
    # here) the rule on the nodes as they are is exact to degree q - 1 only, not 2q - 1: one bin
    # of 12 sd at 1e12 measured 5.7e-14 (quadrature_error 3.8e-12), hence 1e-13 there
    assert np.max(np.abs(res.target_mass - exact)) <= (1e-14 if abs(centre) < 1e11 else 1e-13)
    assert float(np.sum(np.abs(res.target_mass - exact))) <= res.quadrature_error + 1e-14


# ----------------------------------------------------------------- tanh through MLP.backward


def _mp_mlp_grads(Ws, bs, x, t, g):
    """(out, dL/dparams per layer, dL/dx) of a tanh MLP on [x, t], L = sum g * out, in mpmath."""
    n = len(x)
    out_rows, gW = [], [[[mpmath.mpf(0)] * len(W[0]) for _ in W] for W in Ws]
    gb = [[mpmath.mpf(0)] * len(b) for b in bs]
    gx = []
    for r in range(n):
        hs = [[mpmath.mpf(float(v)) for v in x[r]] + [mpmath.mpf(float(t[r]))]]
        zs = []
        for l, (W, b) in enumerate(zip(Ws, bs)):
            z = [sum(hs[-1][i] * W[i][j] for i in range(len(W))) + b[j] for j in range(len(b))]
            zs.append(z)
            hs.append([mpmath.tanh(v) for v in z] if l < len(Ws) - 1 else z)
        out_rows.append(hs[-1])
        delta = [mpmath.mpf(float(v)) for v in g[r]]
        for l in range(len(Ws) - 1, -1, -1):
            W = Ws[l]
            for i in range(len(W)):
                for j in range(len(delta)):
                    gW[l][i][j] += hs[l][i] * delta[j]
            for j in range(len(delta)):
                gb[l][j] += delta[j]
            back = [sum(W[i][j] * delta[j] for j in range(len(delta))) for i in range(len(W))]
            if l > 0:  # tanh'(z) = 1 / cosh(z)^2
                back = [back[i] / mpmath.cosh(zs[l - 1][i]) ** 2 for i in range(len(back))]
            delta = back
        gx.append(delta[:len(x[r])])
    return out_rows, gW, gb, gx


@fuzz(50)
@given(st.data())
def test_tanh_mlp_backward_against_mpmath(data):
    from sgm_ref.nn.mlp import MLP

    d = data.draw(st.integers(1, 2), label="d")
    widths = tuple(data.draw(st.lists(st.integers(1, 3), min_size=1, max_size=2), label="widths"))
    net = MLP(d, widths, "tanh", "linear", dtype=np.float64, rng=data.draw(st.integers(0, 99), label="rng"))
    # weights large enough for pre-activations of 1 to 20, where 1 - tanh^2 cancels
    gain = data.draw(st.sampled_from([1.0, 4.0, 12.0]), label="gain")
    theta = net.params * gain
    net.set_params(theta)
    n = data.draw(st.integers(1, 3), label="n")
    x = np.array(data.draw(st.lists(st.lists(st.floats(-2, 2), min_size=d, max_size=d), min_size=n, max_size=n),
                           label="x"))
    t = np.array(data.draw(st.lists(st.floats(0.0, 1.0), min_size=n, max_size=n), label="t"))
    g = np.array(data.draw(st.lists(st.lists(st.floats(-1, 1), min_size=d, max_size=d), min_size=n, max_size=n),
                           label="g"))
    out = net.forward(x, t, keep=True)
    grad, gx = net.backward(g, input_grad=True)
    Wv, bv = net.layer_views(theta)
    with mpmath.workdps(50):
        Ws = [[[mpmath.mpf(float(v)) for v in row] for row in W] for W in Wv]
        bs = [[mpmath.mpf(float(v)) for v in b] for b in bv]
        ref_out, gW, gb, ref_gx = _mp_mlp_grads(Ws, bs, x, t, g)
    gWv, gbv = net.layer_views(grad)
    # relative to the size of the terms summed: |W| |h| and |g| |W| / cosh^2 products of
    # order gain^depth; a few eps of those (1 - h^2 lost 2000 ulp at z = 5, all at 19)
    for l in range(len(Wv)):
        want_W = np.array([[float(v) for v in row] for row in gW[l]])
        want_b = np.array([float(v) for v in gb[l]])
        scale = 1.0 + np.max(np.abs(want_W)) + np.max(np.abs(want_b))
        np.testing.assert_allclose(gWv[l], want_W, rtol=1e-13, atol=1e-13 * scale)
        np.testing.assert_allclose(gbv[l], want_b, rtol=1e-13, atol=1e-13 * scale)
    want_out = np.array([[float(v) for v in r] for r in ref_out])
    np.testing.assert_allclose(out, want_out, rtol=1e-13, atol=1e-13 * (1 + np.max(np.abs(want_out))))
    want_gx = np.array([[float(v) for v in r] for r in ref_gx])
    np.testing.assert_allclose(gx, want_gx, rtol=1e-13, atol=1e-13 * (1 + np.max(np.abs(want_gx))))


# ----------------------------------------------------------------- gradcheck's eps boundary

F64_MAX = float(np.finfo(np.float64).max)


@fuzz(160)
@given(st.data())
def test_numerical_gradient_refuses_exactly_the_eps_whose_step_leaves_float64(data):
    from sgm_ref.gradcheck import numerical_gradient

    theta0 = data.draw(st.one_of(st.sampled_from([0.0, 1.0, -1.0, 1e308, -1e308, F64_MAX, 1e200, 3.5]),
                                 st.floats(-F64_MAX, F64_MAX)), label="theta_0")
    eps = data.draw(st.one_of(st.sampled_from([1e-6, 1.0, 1e307, 8.98e307, 8.99e307, 9e307, 1e308, F64_MAX / 2,
                                               np.nextafter(F64_MAX / 2, 0), np.nextafter(F64_MAX / 2, np.inf),
                                               F64_MAX]),
                              st.floats(1e300, F64_MAX)), label="eps")
    c = data.draw(st.sampled_from([1.0, -0.5, 2.0**-600, 0.0]), label="slope")
    scale = 2.0**-1000  # f stays finite at every step
    theta = np.array([theta0])

    def f(th):
        return float(c * scale * th[0])

    up, down = Fraction(theta0) + Fraction(eps), Fraction(theta0) - Fraction(eps)
    # float64's largest number plus half an ulp: anything from there on rounds to inf
    limit = Fraction(F64_MAX) + Fraction(2.0**970)
    try:
        grad = numerical_gradient(f, theta, eps=eps)
    except ValueError as exc:
        assert "eps" in str(exc)
        rounded_up, rounded_down = float(theta0) + float(eps), float(theta0) - float(eps)  # Python floats: no warning
        # refused only where a step leaves the range, or the rounded step does (up - down = inf)
        # or moves nothing (eps below the spacing of floats at theta_0)
        assert (abs(up) >= limit or abs(down) >= limit or rounded_up == rounded_down
                or not math.isfinite(rounded_up - rounded_down)), (theta0, eps, str(exc))
        return
    assert abs(up) < limit and abs(down) < limit
    # a linear f: the quotient is c scale up to the rounding of c scale theta +- eps (a few eps
    # of c scale |theta| / eps); before the fix eps = 1e308 gave 0
    want = c * scale
    assert abs(grad[0] - want) <= 4 * EPS * abs(want) * (1 + abs(theta0) / eps)


# ----------------------------------------------------------------- io.load on corrupted archives


def _model_bytes():
    from sgm_ref.io import save
    from sgm_ref.nn.mlp import MLP
    from sgm_ref.score_model import ScoreModel
    import tempfile

    net = MLP(2, (3,), "tanh", "fourier", dtype=np.float64, rng=0)
    net.set_params(np.random.default_rng(1).standard_normal(net.n_params))
    model = ScoreModel(net, OU(), "noise")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.npz")
        save(model, path, ema=net.params * 0.5)
        with open(path, "rb") as f:
            return f.read(), net.params.copy()


_SAVED = {}


def _saved():
    if not _SAVED:
        _SAVED["bytes"], _SAVED["params"] = _model_bytes()
    return _SAVED["bytes"], _SAVED["params"]


def _members(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as z:
        return [(info.filename, z.read(info.filename)) for info in z.infolist()]


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z, __import__("warnings").catch_warnings():
        __import__("warnings").simplefilter("ignore")  # duplicate names on purpose
        for name, blob in members:
            z.writestr(name, blob)
    return buf.getvalue()


@fuzz(160)
@given(st.data())
def test_load_of_a_corrupted_archive_is_a_model_file_error_or_the_same_model(data):
    import tempfile

    from sgm_ref.io import ModelFileError, load

    raw, params = _saved()
    how = data.draw(st.sampled_from(["truncate", "flip", "splice", "drop member", "duplicate member",
                                     "raw member", "header edit", "empty", "rename member"]), label="corruption")
    members = _members(raw)
    if how == "truncate":
        blob = raw[:data.draw(st.integers(0, len(raw) - 1), label="length")]
    elif how == "flip":
        blob = bytearray(raw)
        for _ in range(data.draw(st.integers(1, 3), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="where")
            blob[i] ^= data.draw(st.integers(1, 255), label="mask")
        blob = bytes(blob)
    elif how == "splice":
        i = data.draw(st.integers(0, len(raw)), label="where")
        blob = raw[:i] + data.draw(st.binary(max_size=40), label="bytes") + raw[i:]
    elif how == "empty":
        blob = b""
    else:
        k = data.draw(st.integers(0, len(members) - 1), label="member")
        name, content = members[k]
        if how == "drop member":
            members = members[:k] + members[k + 1:]
        elif how == "duplicate member":
            members = members + [(name, content)]
        elif how == "raw member":
            members[k] = (name, data.draw(st.binary(max_size=64), label="raw bytes"))
        elif how == "rename member":
            members[k] = (data.draw(st.sampled_from(["params", "ema.npy", "header", "x.npy", "params.npy.npy"]),
                                    label="new name"), content)
        else:  # edit a byte of the header's JSON text inside its .npy member
            if not name.startswith("header"):
                name, content = next(m for m in members if m[0].startswith("header"))
                k = [m[0] for m in members].index(name)
            i = data.draw(st.integers(0, len(content) - 1), label="header byte")
            content = content[:i] + data.draw(st.binary(min_size=1, max_size=3), label="new bytes") + content[i + 1:]
            members[k] = (name, content)
        blob = _zip(members)
    use_ema = data.draw(st.booleans(), label="use_ema")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.npz")
        with open(path, "wb") as f:
            f.write(blob)
        try:
            model = load(path, use_ema=use_ema)
        except ModelFileError:
            return
        except ValueError as exc:  # a ValueError is a clear refusal too, if it says so in one line
            assert "\n" not in str(exc).strip()
            return
    # it loaded: then it must be the model that was saved, not a misread one
    want = params * 0.5 if use_ema else params
    got = model.net.params if hasattr(model, "net") else model.network.params
    assert np.array_equal(got, want), (how, "a corrupted file loaded as different parameters")


@fuzz(80)
@given(st.floats(-30.0, 30.0), st.sampled_from([1.0, -0.75, 3.0]), st.sampled_from([1.0, -2.5]))
def test_tanh_derivative_of_one_unit_against_mpmath(z, w2, g):
    """One hidden tanh unit with pre-activation z = b exactly (x = 0, t = 0.5, W_t = 0): dL/db
    is g w2 / cosh^2 z, a product, so it must be right to a few eps relative at any z (1 - h^2
    was 2000 ulp off at z = 5 and 0 instead of 1.3e-16 at 19)."""
    from sgm_ref.nn.mlp import MLP

    net = MLP(1, (1,), "tanh", "linear", dtype=np.float64, rng=0)
    theta = np.array([1.0, 0.0, z, w2, 0.125])  # [W_x; W_t; b] then [W_2; b_2]
    Wv, bv = net.layer_views(theta)
    assert Wv[0].shape == (2, 1) and Wv[1].shape == (1, 1)  # the layout the test assumes
    net.set_params(theta)
    net.forward(np.zeros((1, 1)), np.array([0.5]), keep=True)
    grad, gx = net.backward(np.array([[g]]), input_grad=True)
    with mpmath.workdps(40):
        delta = mpmath.mpf(g) * mpmath.mpf(w2) / mpmath.cosh(mpmath.mpf(z)) ** 2
        want = {"b": float(delta), "W_t": float(delta / 2), "W_2": float(mpmath.mpf(g) * mpmath.tanh(z))}
    gW, gb = net.layer_views(grad)
    assert gb[0][0] == pytest.approx(want["b"], rel=8 * EPS, abs=0)
    assert gW[0][1, 0] == pytest.approx(want["W_t"], rel=8 * EPS, abs=0)
    assert gx[0, 0] == pytest.approx(want["b"], rel=8 * EPS, abs=0)
    assert gW[1][0, 0] == pytest.approx(want["W_2"], rel=4 * EPS, abs=0)


@pytest.mark.parametrize("reader, member, damage", [
    ("load", "header.npy", "nul"), ("read_header", "header.npy", "nul"), ("load", "header.npy", "brace"),
    ("load", "params.npy", "brace"), ("load", "ema.npy", "brace")])
def test_load_of_a_damaged_npy_header_is_a_model_file_error(reader, member, damage, tmp_path):
    # found by this fuzz: numpy's header parser raises tokenize.TokenError, which io's _READ_ERRORS
    # lacked; a saved model file whose header.npy member has byte 66 (inside its
    # "{'descr': '<U267', 'fortran_order': False, 'shape': (), }" text) replaced by b"\x00", or
    # any member's "}" by a space, the zip rewritten with valid CRCs: load(path) raises
    # tokenize.TokenError('EOF in multi-line statement', (2, 0))
    import sgm_ref.io as sio

    raw, _ = _saved()
    members = _members(raw)
    k = [m[0] for m in members].index(member)
    name, content = members[k]
    i = 66 if damage == "nul" else content.index(b"}")
    members[k] = (name, content[:i] + (b"\x00" if damage == "nul" else b" ") + content[i + 1:])
    path = tmp_path / "m.npz"
    path.write_bytes(_zip(members))
    with pytest.raises(sio.ModelFileError):
        sio.load(path, use_ema=member == "ema.npy") if reader == "load" else sio.read_header(path)


# ======================================================================================
# The commits 4569080, 8dfddb9, ca8132f and 76dfb85: samplers (start_variance, the
# probability flow off VP), conventions.convert on no rows, the DSM kernel, the diagonal
# mixture kernel and SGM_REF_THREADS. (A larger search, 10-40x these examples, ran in
# scratch; what it found is pinned by the tests named "found by this fuzz".)
# ======================================================================================

from sgm_ref import plain  # noqa: E402
from sgm_ref.conventions import convert  # noqa: E402
from sgm_ref.samplers import probability_flow, sample, start_variance, time_grid  # noqa: E402

NOT_VP = [SubVP(), SubVP(0.1, 1000.0), SubVP(0.5, 30.0), VE(), VE(1e-3, 1e4), VE(1e-3, 1e200), EDM(), FlowMatching()]


# ----------------------------------------------------------------- start_variance


@fuzz(150)
@given(st.sampled_from(PROCESSES + [VE(1e-3, 1e200)]),
       st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(1e-320, 1e300),
                 st.sampled_from([0.0, -0.0, 5e-324, 1.0, 0.99999, 1e154, 1e155, 1e200, 1e308]),
                 st.integers(-3, 10**400), st.booleans()))
def test_start_variance_is_sigma_t_squared_or_one_or_a_named_refusal(process, T):
    """start_variance(process, T): 1 on a variance-preserving process, sigma_T^2 on any other
    (mpmath's square of the float64 sigma_T, to half an ulp, and mp_marginal's sigma_T^2 to a few
    ulps of it and of log sigma_T^2),
    for every T in (0, t_max] whose sigma_T^2 (or B(T)) is finite; a ValueError naming T for
    every other T: bools, NaN, inf, <= 0, past t_max, and ints of hundreds of digits."""
    vp = type(process).__name__ in ("OU", "VP")
    real = not isinstance(T, bool) and T == T and abs(T) != math.inf and (not isinstance(T, int) or abs(T) < 1e300)
    inside = real and 0 < T <= process.t_max
    try:
        v = start_variance(process, T)
    except ValueError as e:
        assert str(e).startswith("T ") or str(e).startswith("T = ") or "T must" in str(e), str(e)
        if inside and not vp:  # refused only where sigma_T^2 overflows
            assert float(mpmath.mpf(float(process.sigma(float(T)))) ** 2) > 1.7e308
        if inside and vp:  # or B(T) (2 T on OU)
            t = mpmath.mpf(float(T))
            B = 2 * t if type(process).__name__ == "OU" else (
                process.beta_min * t + t * t * (mpmath.mpf(process.beta_max) - process.beta_min) / 2)
            assert B > 1.7976931348623157e308
        return
    assert inside, (process, T, v)
    if vp:
        assert v == 1.0
        return
    sigma = float(process.sigma(float(T)))
    assert v == float(mpmath.mpf(sigma) ** 2)
    with mpmath.workdps(40):
        want = mp_marginal_s(process, mpmath.mpf(float(T)))[1] ** 2
        # VE's sigma_T = sigma_min exp(t log(sigma_max / sigma_min)) carries the exponent's rounding,
        # |log sigma_T^2| eps: VE(1e-3, 1e200) at T = 0.5 is 6.7e-15 off (noticed, processes left alone)
        rel = (4.0 + (abs(float(mpmath.log(want))) if want else 0.0)) * EPS
        assert abs(mpmath.mpf(v) - want) <= rel * want + 2.0**-1074  # (below 1e-323 it is 0)


# ----------------------------------------------------------------- the probability flow off VP


def _gaussian_score(process):
    """The score of N(0, I) under process: -x / (alpha^2 + sigma^2), in x's dtype (none on no points)."""
    def score(x, t):
        if x.shape[0] == 0:  # process.alpha refuses a t of shape (0,)
            return np.zeros_like(x)
        v = process.alpha(t) ** 2 + process.sigma2(t)
        return (-x.astype(np.float64) / v[:, None]).astype(x.dtype)
    return score


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@fuzz(60)
@given(st.sampled_from(NOT_VP), st.data())
def test_probability_flow_off_vp_in_float32_follows_float64_or_names_t(process, data):
    """The probability flow off VP (karras_heun) on float32 points: no points or no dimensions give
    empty results of the right shapes (and a path of grid.size states); otherwise either a
    ValueError or finite float32 points within (2 N + 1) 2^-24 of the largest |entry| of the float64 flow
    from the same (float32) start, on geometric grids whose steps shrink sigma_t / alpha_t at most
    4-fold (a longer Heun step magnifies the float32 score's rounding: EDM from 1e36 to 1e31 in
    one step ends 60x off in float32, as it must) up to sigma_T / alpha_T = 1e32. The start may reach float32's max (found by this
    fuzz: see test_float32_probability_flow_off_vp_takes_the_points_sample_draws)."""
    from sgm_ref.replays._common import sigma_hat

    n, d = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 2))
    t_max = min(process.t_max, 1e37)
    T = data.draw(st.one_of(st.floats(1e-3, t_max), st.just(t_max)))
    t0 = T * data.draw(st.floats(1e-4, 0.5))
    hat = np.asarray(sigma_hat(process, np.array([T, t0])), dtype=np.float64)
    if not np.all(np.isfinite(hat)):
        return
    steps = max(1, int(np.ceil(np.log(hat[0] / hat[1]) / np.log(4.0))))
    grid = time_grid(T, t0, steps, "geometric")
    assume(np.all(np.diff(np.log(np.asarray(sigma_hat(process, grid), dtype=np.float64))) >= -np.log(4.0) - 1e-9))
    spread = float(process.sigma(T)) * data.draw(st.sampled_from([1.0, 0.1, 30.0]))
    # the float32 score -x / sigma_t^2 ~ 1 / sigma_t stays in float32's normal range (past sigma_t ~ 1e36
    # the score itself, not the sampler, loses digits: 1e-3 sigma_T at sigma_T = 9e36 ends 219 ulps off)
    assume(float(hat[0]) <= 1e32)
    x = (np.random.default_rng(data.draw(st.integers(0, 9))).standard_normal((n, d)) * spread).astype(np.float32)
    assume(np.all(np.isfinite(x)))
    trajectory = data.draw(st.booleans())
    score = _gaussian_score(process)
    try:
        out = probability_flow(score, process, grid, x, trajectory)
    except ValueError as e:
        assert n * d > 0 and str(e).startswith(("grid[0] = T = ", "the sampler diverged")), str(e)
        return
    y = out[0] if trajectory else out
    assert y.shape == (n, d) and y.dtype == np.float32 and np.all(np.isfinite(y))
    if trajectory:
        assert out[1].shape == (grid.size, n, d) and out[1].dtype == np.float32
    if n * d:
        y64 = probability_flow(score, process, grid, x.astype(np.float64))
        # measured up to 2.03 2^-24 on one step, 1.55 N 2^-24 on more (2400 examples)
        assert np.max(np.abs(y - y64)) <= (2 * steps + 1) * 2.0**-24 * np.max(np.abs(y64))


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_float32_probability_flow_off_vp_takes_the_points_sample_draws():
    """Found by this fuzz: sample(dtype=float32, method="probability_flow") allows sigma_T up to
    float32's max / 64 = 5.3e36 (_check_start_sigma: 64 standard deviations to spare), but then
    refused its own draws in _routed, which held the largest |x| / alpha_T to that same max / 64:
    EDM at T = 2e36 drew |x| up to 6.9e36 and said 'grid[0] = T = 2e+36 is too large for float32
    points ...: ... which reaches 6.92e+36 (alpha_T = 1), beyond float32's range' (3.4e38 is its
    range). The state itself must fit float32, as the message says; it now runs, and the float32
    flow ends where float64's does from the same start to 2 N 2^-24 of its largest |entry|
    (measured 1.2e-7 of it). Points whose x / alpha_T does leave float32 are still named."""
    process, score = EDM(), _gaussian_score(EDM())
    grid = time_grid(2e36, 1.0, 60, "geometric")
    out = sample(score, process, 1000, 1, np.random.default_rng(0), T=2e36, t0=1.0, n_steps=60,
                 method="probability_flow", dtype=np.float32)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    x = (np.random.default_rng(1).standard_normal((1000, 1)) * 2e36).astype(np.float32)
    assert np.max(np.abs(x)) > float(np.finfo(np.float32).max) / 64  # (6.3e36)
    y32, y64 = probability_flow(score, process, grid, x), probability_flow(score, process, grid, x.astype(np.float64))
    assert y32.dtype == np.float32 and np.max(np.abs(y32 - y64)) <= 2 * 60 * 2.0**-24 * np.max(np.abs(y64))
    subvp = SubVP(0.1, 1000.0)  # alpha_0.5 = 7.1e-28: x = 1e12 is a state of 1.4e39
    with pytest.raises(ValueError, match=r"^grid\[0\] = T = 0\.5 is too large for float32 points on SubVP.*"
                                         r"which reaches 1\.42e\+39 \(alpha_T = 7\.05e-28\), beyond float32's range"):
        probability_flow(_gaussian_score(subvp), subvp, time_grid(0.5, 1e-3, 30), np.full((2, 1), 1e12, np.float32))


# ----------------------------------------------------------------- convert on no rows

KINDS = ["score", "eps", "x0", "v", "velocity"]


@pytest.mark.parametrize("process", [OU(), VP(), SubVP(), VE(), EDM(), FlowMatching()])
def test_convert_on_no_rows_returns_no_rows_for_every_pair_and_dtype(process):
    """convert on (0, d) points: (0, d) in float32 exactly when value and x are both float32, for
    every pair of kinds, d = 0 and 2, a (0,) t of float64, float32 or integers, or a scalar t."""
    for from_ in KINDS:
        for to in KINDS:
            for d in (0, 2):
                for dx in (np.float32, np.float64):
                    for dv in (np.float32, np.float64):
                        for t in (np.zeros(0), np.zeros(0, np.float32), np.zeros(0, int), 0.5):
                            out = convert(np.zeros((0, d), dv), np.zeros((0, d), dx), t, process, from_, to)
                            assert out.shape == (0, d)
                            assert out.dtype == (np.float32 if dx == dv == np.float32 else np.float64)


# ----------------------------------------------------------------- the DSM kernel in exact rationals


def _float_of(draw, dtype, lo, hi):
    return dtype(draw(st.floats(-1.0, 1.0)) * 10.0 ** draw(st.floats(lo, hi)))


@fuzz(150)
@given(st.sampled_from(["score", "noise", "residual"]), st.sampled_from([np.float32, np.float64]), st.data())
def test_dsm_residual_against_exact_rationals(kind, dtype, data):
    """dsm_residual's row losses lam_i |r_i|^2 and dL/dout against Fraction arithmetic on its float
    inputs, for outputs from 1e-16 to 10 relative off the target, sigma and lam from 1e-8 to 1e8,
    scale 1e-5 to 100. r = s + z / sigma is worked in float64 (float32 inputs widened), so its
    error is a few float64 roundings of the terms it sums: |out| + |x| + 3 |z| / sigma for score
    and residual, 4 |r| for noise's (z - out) / sigma, whose z - out is exact or one rounding;
    dL/dout adds its rounding to out's dtype. (Measured at 3000 examples: within 0.95 of these
    bounds. The code before ca8132f fails it: a float32 noise model's row 5.6e-15 off, where
    -out / sigma + z / sigma lost the digits of the difference.)"""
    from sgm_ref.kernels.dsm import PARAMETERIZATION_CODES, dsm_residual

    n, d = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    sigma = np.array([10.0 ** data.draw(st.floats(-8, 8)) for _ in range(n)])
    lam = np.array([10.0 ** data.draw(st.floats(-8, 8)) for _ in range(n)])
    x = np.array([[_float_of(data.draw, dtype, -5, 5) for _ in range(d)] for _ in range(n)], dtype)
    z = np.array([[_float_of(data.draw, dtype, -5, 3) for _ in range(d)] for _ in range(n)], dtype)
    target = {"score": -z / sigma[:, None], "noise": z, "residual": x - z / sigma[:, None]}[kind]
    off = 10.0 ** data.draw(st.floats(-16, 1)) * np.array([[data.draw(st.floats(-1, 1)) for _ in range(d)]
                                                           for _ in range(n)])
    with np.errstate(over="ignore"):
        out = (target * (1.0 + off)).astype(dtype)
    assume(np.all(np.isfinite(out)))
    scale = 10.0 ** data.draw(st.floats(-5, 2))
    grad, rows = out.copy(), np.empty(n)
    dsm_residual(grad, x, z, sigma, lam, PARAMETERIZATION_CODES[kind], scale, rows)
    eps, tiny = Fraction(2) ** -52, Fraction(2) ** -1074
    half_ulp, tiny_out = (Fraction(2) ** -24, Fraction(2) ** -149) if dtype == np.float32 else (eps / 2, tiny)
    for i in range(n):
        s, L = Fraction(float(sigma[i])), Fraction(float(lam[i]))
        c = 2 * Fraction(scale) * L
        acc = spread = Fraction(0)
        for j in range(d):
            o, xj, zj = Fraction(float(out[i, j])), Fraction(float(x[i, j])), Fraction(float(z[i, j]))
            r = (o if kind == "score" else -o / s if kind == "noise" else o - xj) + zj / s
            er = 4 * eps * abs(r) if kind == "noise" else eps * (abs(o) + abs(xj) + abs(r)) + 3 * eps * abs(zj) / s
            er += 4 * tiny  # (r below the normal range: a subnormal's absolute rounding)
            acc += r * r
            spread += 2 * abs(r) * er + er * er
            g, eg = (-c * r / s, c * er / s) if kind == "noise" else (c * r, c * er)
            # noise's dL/dout is (2 scale lam r) / sigma: a product below float64's normal range keeps
            # a subnormal's absolute error, which the 1 / sigma then scales (|z - out| ~ 1e-300; left)
            sub = 4 * tiny / s if kind == "noise" else 0
            assert abs(Fraction(float(grad[i, j])) - g) <= eg + 6 * eps * abs(g) + half_ulp * abs(g) + 4 * tiny_out + sub
        want = L * acc  # (the same for lam times a subnormal sum of squares)
        assert abs(Fraction(float(rows[i])) - want) <= L * spread + (d + 2) * eps * want + 4 * tiny * max(L, 1)


# ----------------------------------------------------------------- the diagonal mixture kernel


def _mp_diagonal(x, a, s2, w, mu, lam):
    """log p and score of sum_k w_k N(a mu_k, diag(a^2 lam_k + s2)) in 50-digit mpmath, with a mu_k
    rounded to float64 as the kernel and the NumPy twin form it (the cancellation in x - a mu_k is
    the input's, not the kernel's). Rows whose relevant log-weights are so large that their float64
    rounding moves the weights (|l_k| 8 eps > 1e-6) come back as NaN: no float64 sum has them.
    Also per entry a bound on the error of a float64 evaluation: eps times
    sum_k pi_k ((|x| + |a mu_k|) / v_k + |y_k / v_k| (P_k + 1)) + |score| (max_k P_k + 1), P_k =
    |log w_k| + sum_j (y_kj^2 / v_kj + |log v_kj|) the size of l_k's terms, and per row the size of
    log p's terms, sum_k pi_k P_k + |log total| + d."""
    n, d = x.shape
    logp, score, bound = np.full(n, np.nan), np.full((n, d), np.nan), np.full((n, d), np.nan)
    magnitude = np.full(n, np.nan)
    with mpmath.workdps(50):
        for i in range(n):
            terms, ratios, sizes, parts = [], [], [], []
            for wk, muk, lamk in zip(w, mu, lam):
                if wk == 0:
                    continue
                am = [mpmath.mpf(float(a[i] * muk[j])) for j in range(d)]
                y = [mpmath.mpf(float(x[i, j])) - am[j] for j in range(d)]
                v = [mpmath.mpf(float(a[i])) ** 2 * mpmath.mpf(float(lamk[j])) + mpmath.mpf(float(s2[i]))
                     for j in range(d)]
                terms.append(mpmath.log(wk) - mpmath.fsum(y[j] ** 2 / v[j] + mpmath.log(v[j]) for j in range(d)) / 2)
                ratios.append([y[j] / v[j] for j in range(d)])
                parts.append(abs(mpmath.log(wk)) + mpmath.fsum(y[j] ** 2 / v[j] + abs(mpmath.log(v[j])) for j in range(d)))
                sizes.append([(abs(mpmath.mpf(float(x[i, j]))) + abs(am[j])) / v[j] for j in range(d)])
            top = max(terms)
            if any(tm - top > -800 and (abs(tm) + abs(top)) * 8 * EPS > 1e-6 for tm in terms):
                continue
            e = [mpmath.exp(tm - top) for tm in terms]
            total = mpmath.fsum(e)
            logp[i] = float(top + mpmath.log(total) - d * mpmath.log(2 * mpmath.pi) / 2)
            magnitude[i] = float(mpmath.fsum(ek * p for ek, p in zip(e, parts)) / total + abs(mpmath.log(total)) + d)
            for j in range(d):
                sj = -mpmath.fsum(ek * r[j] for ek, r in zip(e, ratios)) / total
                score[i, j] = float(sj)
                bound[i, j] = float(mpmath.fsum(ek * (b[j] + abs(r[j]) * (pk + 1))
                                                for ek, b, r, pk in zip(e, sizes, ratios, parts)) / total
                                    + abs(sj) * (max(parts) + 1))
    return logp, score, bound, magnitude


@fuzz(100)
@given(st.data())
def test_diagonal_mixture_kernel_against_mpmath_with_zero_tiny_and_huge_terms(data):
    """diagonal_mixture (parallel) and diagonal_mixture_serial, the same bits, against 50-digit mpmath
    on weights with zeros and 1e-300, means and points from 1e-160 to 1e10, variances 1e-200 to
    1e200 and a from 1e-150 to 1 (products e (y / v) below float64's normal range): log p to 4 ulps
    of the size of its terms, the score within eps times _mp_diagonal's bound, plus two subnormal steps
    (2^-1073, not scaled by 1 / v: the (e y) / v of the code before 76dfb85, where a subnormal e y
    was divided by v < 1, fails it). Rows so far out that log p leaves float64, or whose weights
    no float64 sum can resolve, are skipped (the caller names the former). Identity covariances
    keep (sum_k e_k y_k) / v, one v per row: there v = a^2 + s2 >= 1/2 on every process, so it
    scales a subnormal's error at most 2-fold (noticed: with a = 1e-150, s2 = 0, v = 1e-300, a
    kernel call no process makes, a score of 6e-151 came out 0)."""
    from sgm_ref.kernels.mixture import diagonal_mixture, diagonal_mixture_serial

    K, d, n = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 2)), data.draw(st.integers(1, 3))
    identity = data.draw(st.booleans())
    w = np.array([data.draw(st.sampled_from([0.0, 1.0, 1e-300, 1e-250, 1e-100, 0.5, 1e-20])) for _ in range(K)])
    w[0] = w[0] or 1.0
    with np.errstate(divide="ignore"):
        logw = np.log(w)
    sign = st.sampled_from([0.0, 1.0, -1.0])
    mu = np.array([[data.draw(sign) * 10.0 ** data.draw(st.floats(-150, 5)) for _ in range(d)] for _ in range(K)])
    lam = np.ones((K, d)) if identity else 10.0 ** np.array([[data.draw(st.floats(-200, 200)) for _ in range(d)]
                                                             for _ in range(K)])
    a = np.array([data.draw(st.sampled_from([1.0, 0.5, 1e-5, 1e-150])) for _ in range(n)])
    s2 = np.array([data.draw(st.sampled_from([0.0, 1e-300, 1e-100, 1e-12, 0.3, 1.0, 1e10])) for _ in range(n)])
    if identity:  # v = a^2 + s2 >= 1/2 on every process (FlowMatching's (1 - t)^2 + t^2 the least)
        s2 = np.maximum(s2, 0.5 - a * a)
    k = [data.draw(st.integers(0, K - 1)) for _ in range(n)]
    x = np.array([[mu[k[i], j] * a[i] + data.draw(sign) * 10.0 ** data.draw(st.floats(-160, 10)) for j in range(d)]
                  for i in range(n)])
    v = a[:, None, None] ** 2 * lam[None] + s2[:, None, None]
    assume(np.all(v > 0) and np.all(np.isfinite(v)))
    logp, score = np.empty(n), np.empty((n, d))
    with np.errstate(all="ignore"):
        diagonal_mixture(x, a, s2, logw, mu, lam, identity, True, logp, score)
    logp_serial, score_serial = np.empty(n), np.empty((n, d))
    with np.errstate(all="ignore"):
        diagonal_mixture_serial(x, a, s2, logw, mu, lam, identity, True, logp_serial, score_serial)
    np.testing.assert_array_equal(logp_serial, logp)
    np.testing.assert_array_equal(score_serial, score)
    want_logp, want_score, bound, magnitude = _mp_diagonal(x, a, s2, w, mu, lam)
    rows = np.isfinite(want_logp) & np.all(np.isfinite(want_score), axis=1) & np.all(np.isfinite(bound), axis=1)
    assert np.all(np.abs(score - want_score)[rows] <= (EPS * bound + 2.0**-1073)[rows])
    assert np.all(np.abs(logp - want_logp)[rows] <= 4 * EPS * magnitude[rows])


@fuzz(60)
@given(st.floats(150.0, 300.0), st.floats(20.0, 200.0), st.floats(0.0, 60.0), st.integers(1, 3),
       st.sampled_from([1.0, 0.5]), st.booleans())
def test_diagonal_score_of_a_subnormal_weighted_residual_against_mpmath(u, p, m, d, a, spherical):
    """The family of 76dfb85's case: a point at the mean of a unit component (y = 0 there), and a
    narrow component of weight 10^-u, variance 10^-p and mean offset 10^-(p/2 + m) along the first
    axis, so that its e y falls below float64's normal range while e y / v need not. The score
    against 50-digit mpmath to eps times _mp_diagonal's bound plus 2^-1073, log p to 4 ulps of its
    terms, through GaussianMixture (diag and spherical) at t = 0 and the NumPy twin sgm_ref.plain;
    the code before 76dfb85 fails it ((e y) / v: up to 1.5e-9 off)."""
    w = np.array([1.0, 10.0 ** -u])
    mu = np.zeros((2, d))
    mu[1, 0] = 10.0 ** -(p / 2 + m)
    lam = np.array([[1.0] * d, [10.0 ** -p] * d])
    x = np.zeros((1, d))
    want_logp, want_score, bound, magnitude = _mp_diagonal(x, np.array([a]), np.zeros(1), w, mu, lam)
    assert np.isfinite(want_logp[0])
    if a == 1.0:  # through the public oracle (t = 0 on OU: a = 1, s2 = 0)
        g = GaussianMixture(w / w.sum(), mu, lam[:, 0] if spherical else lam,
                            covariance_type="spherical" if spherical else "diag")
        logp, score = g.log_prob_and_score(x, 0.0, OU())
        twin = plain.mixture_score(x, 0.0, plain.mixture(g.weights, g.means, g.covariances), plain.OU)[1]
        assert np.all(np.abs(twin - want_score) <= EPS * bound + 2.0**-1073)
        w = g.weights  # (the weights the oracle has: 1 and 10^-u, their sum rounds to 1)
    else:
        from sgm_ref.kernels.mixture import diagonal_mixture
        logp, score = np.empty(1), np.empty((1, d))
        with np.errstate(divide="ignore"):
            diagonal_mixture(x, np.array([a]), np.zeros(1), np.log(w), mu, lam, False, True, logp, score)
    assert np.all(np.abs(score - want_score) <= EPS * bound + 2.0**-1073)
    assert abs(logp[0] - want_logp[0]) <= 4 * EPS * magnitude[0]


# ----------------------------------------------------------------- SGM_REF_THREADS


def _threads_reference(text):
    """The count SGM_REF_THREADS = text asks for, by a regular expression: optional surrounding
    whitespace, an optional "+", ASCII decimal digits of value 1 to 10^18 - 1; else None."""
    import re

    match = re.fullmatch(r"\s*\+?([0-9]+)\s*", text)
    if not match:
        return None
    digits = match.group(1).lstrip("0")
    return int(digits) if 0 < len(digits) <= 18 else None


_THREAD_TEXTS = st.one_of(
    st.text(max_size=8),
    st.builds(lambda head, sign, zeros, body, tail: head + sign + "0" * zeros + body + tail,
              st.sampled_from(["", " ", "\t", "\n", "\u3000"]), st.sampled_from(["", "+", "-", "++", "+-"]),
              st.integers(0, 6000), st.one_of(st.text("0123456789", max_size=25), st.text("0123456789_\u0663\u00b2e.x ",
                                                                                         max_size=6)),
              st.sampled_from(["", " ", "\n", "\u00a0", "\u2003"])))


@fuzz(200)
@given(_THREAD_TEXTS)
def test_sgm_ref_threads_parsing_against_a_regular_expression(text):
    """_threads_from_environment reads what the regular expression reads (leading zeros, thousands
    of them too, a "+", whitespace) and refuses everything else with a ValueError that names
    SGM_REF_THREADS in at most a few lines: never int()'s own error, never the whole value when it
    is long (found by this fuzz: 5000 zeros were echoed whole, a message of 5,100 characters)."""
    from sgm_ref import _threads

    want = _threads_reference(text)
    try:
        got = _threads._threads_from_environment({"SGM_REF_THREADS": text})
    except ValueError as e:
        assert want is None, (text[:40], want)
        assert str(e).startswith("SGM_REF_THREADS must be ") and str(e).endswith("unset it for the default")
        assert len(str(e)) <= 200, len(str(e))
        return
    assert got == want


def test_a_long_bad_sgm_ref_threads_is_shown_by_its_start_and_length():
    """Found by this fuzz: a value that is not a count was echoed whole, so 5000 zeros (or "-" and
    5000 digits) made a one-line message of 5,100 characters on the command line; a long value is
    now shown by its first 20 characters and its length, a short one (<= 40) as it is."""
    from sgm_ref import _threads

    for text, shown in [("0" * 5000, "'" + "0" * 20 + "'... (5000 characters)"),
                        ("-" + "9" * 5000, "'-" + "9" * 19 + "'... (5001 characters)"),
                        ("x" * 40, repr("x" * 40)), ("1_0", "'1_0'")]:
        with pytest.raises(ValueError) as info:
            _threads._threads_from_environment({"SGM_REF_THREADS": text})
        assert str(info.value) == (f"SGM_REF_THREADS must be an integer >= 1 (the thread count), got {shown}; "
                                   "unset it for the default")


# ------------------------------------------- input checks of 779bbf4, f159141, 096b9ec, 3a84e61


def _reference_first_bool(items, where=""):
    """The first bool (or bool array) in reading order, by plain recursion: the reference for _first_bool."""
    import collections
    for i, item in enumerate(items):
        if isinstance(item, (bool, np.bool_)) or (isinstance(item, np.ndarray) and item.dtype.kind == "b"):
            return f"{where}[{i}]"
        if isinstance(item, (list, tuple, collections.deque, range)):
            found = _reference_first_bool(item, f"{where}[{i}]")
            if found is not None:
                return found
    return None


def _entries():
    from collections import namedtuple

    pair = namedtuple("Pair", "a b")
    scalar = st.one_of(st.floats(-1e3, 1e3), st.integers(-5, 5), st.booleans(),
                       st.sampled_from([np.float64(0.5), np.float32(2.0), np.int64(3), np.True_, np.False_,
                                        np.array(1.5), np.array(True)]))
    row = st.lists(scalar, min_size=2, max_size=2)
    wrapped = st.one_of(row, row.map(tuple), row.map(lambda r: pair(*r)), row.map(__import__("collections").deque),
                        st.sampled_from([np.array([1.0, 2.0]), np.array([True, False]), np.array([3, 4])]))
    return st.lists(wrapped, min_size=1, max_size=3)


@fuzz(60)
@given(_entries(), st.integers(0, 3))
def test_read_array_refuses_the_first_bool_in_reading_order(rows, depth):
    """_read_array on nested lists, tuples, namedtuples and deques of mixed ints, floats, NumPy scalars
    and 0-d / 1-d arrays: refused, naming the first bool in reading order (a plain recursion), exactly
    when there is one; else the numbers np.asarray reads. Old code: a namedtuple's bool passed
    ([Pair(0.5, True)] was the point (0.5, 1.0)) and x[1] was named before x[0][1]."""
    from sgm_ref._validation import _read_array

    value = rows
    for _ in range(depth):
        value = [value]
    where = _reference_first_bool(value)
    try:
        expected = np.asarray(value)
    except ValueError:
        expected = None
    if expected is None or expected.dtype.kind not in "iuf":
        return  # refused as unreadable or by the checks' dtype test, not by this one
    if where is None:
        np.testing.assert_array_equal(_read_array(value, "x"), expected)
    else:
        pattern = rf"x must hold numbers, got the boolean (True|False) at x{re.escape(where)}$"
        with pytest.raises(ValueError, match=pattern):
            _read_array(value, "x")


def test_read_array_refuses_a_bool_in_a_namedtuple_or_deque_and_names_the_first():
    from collections import deque, namedtuple

    from sgm_ref._validation import _read_array

    pair = namedtuple("Pair", "a b")
    for value, where in (([pair(0.5, True)], "[0][1]"), ([deque([0.5, True])], "[0][1]"), (deque([0.5, True]), "[1]"),
                         ([[1.0, True], np.array([False, True])], "[0][1]")):
        with pytest.raises(ValueError, match=re.escape(f"at x{where}") + "$"):
            _read_array(value, "x")


def _mp_eigenvalues(C):
    mpmath.mp.dps = 60
    return sorted(mpmath.eigsy(mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in C]), eigvals_only=True))


@fuzz(40)
@given(st.integers(2, 4), st.floats(0.3, 0.95), st.floats(0.5, 1.79), st.data())
def test_eigh_spd_near_the_overflow_threshold_against_mpmath(d, rho, top, data):
    """Correlated covariances with entries up to 1.79e308: eigenvalues to 4 d eps of the largest (mpmath's
    eigsy), or, exactly when mpmath's largest passes float64's, refused as beyond its range with the
    largest shown to 3 digits (old code: 'not positive definite to float64 precision ... largest inf')."""
    from sgm_ref._validation import eigh_spd

    diag = np.array(data.draw(st.lists(st.floats(0.6, 1.0), min_size=d, max_size=d))) * top * 1e308
    C = rho * np.outer(np.sqrt(diag), np.sqrt(diag))
    np.fill_diagonal(C, diag)
    C = np.minimum(C, C.T)
    ev = _mp_eigenvalues(C)
    if ev[-1] > mpmath.mpf(np.finfo(float).max):
        with pytest.raises(ValueError, match="cov has an eigenvalue beyond float64's range") as info:
            eigh_spd(C, "cov")
        shown = float(str(info.value).split("largest is ")[1].split("e308")[0])
        assert shown == pytest.approx(float(ev[-1] / mpmath.mpf(1e308)), rel=5e-3)
        return
    lam, U = eigh_spd(C, "cov")
    assert max(abs(mpmath.mpf(float(a)) - b) for a, b in zip(lam, ev)) <= 4 * d * EPS * ev[-1]


def test_eigh_spd_names_an_eigenvalue_beyond_float64():
    from sgm_ref._validation import eigh_spd
    from sgm_ref.metrics.gaussian import gaussian_kl

    C = np.array([[1.5e308, 1e308], [1e308, 1.5e308]])  # eigenvalues 2.5e308 and 5e307 (mpmath below)
    assert float(_mp_eigenvalues(C)[-1]) == np.inf and _mp_eigenvalues(C)[-1] == mpmath.mpf(1.5e308) + mpmath.mpf(1e308)
    with pytest.raises(ValueError, match=r"^cov has an eigenvalue beyond float64's range \(its largest is 2.5e308"):
        eigh_spd(C, "cov")
    with pytest.raises(ValueError, match=r"^cov0 has an eigenvalue beyond float64's range"):
        gaussian_kl([0.0, 0.0], C, [0.0, 0.0], np.eye(2))


def test_gaussian_kl_of_means_whose_difference_overflows_is_named():
    """m1 - m0 beyond float64 (KL = |m1 - m0|^2 / 2 > 1e308): the library's own message, not scipy's
    'array must not contain infs or NaNs' from solve_triangular's finiteness check."""
    from sgm_ref.metrics.gaussian import gaussian_kl

    for m0, m1, cov in (([1e308], [-1e308], [[1.0]]), ([1e308, 0.0], [-1e308, 0.0], np.eye(2) * 1e300)):
        with pytest.raises(ValueError, match=r"^KL\(N0 \|\| N1\) exceeds float64: the means"):
            gaussian_kl(m0, cov, m1, cov)
    # inside: |m1 - m0| = 1e154 in unit variance gives 5e307, against mpmath
    kl = gaussian_kl([5e153], [[1.0]], [-5e153], [[1.0]])
    assert kl == pytest.approx(float((mpmath.mpf(5e153) * 2) ** 2 / 2), rel=2 * EPS)


def _mp_mean_se(values):
    mpmath.mp.dps = 60
    xs = [mpmath.mpf(float(v)) for v in values]
    m = mpmath.fsum(xs) / len(xs)
    return m, mpmath.sqrt(mpmath.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1) / len(xs))


@fuzz(80)
@given(st.lists(st.tuples(st.floats(0.5, 2.0), st.integers(-1074, 1022), st.sampled_from([-1.0, 1.0])),
                min_size=2, max_size=8))
def test_mean_se_on_tiny_subnormal_and_mixed_magnitudes_against_mpmath(spec):
    """mean_se against mpmath's exact mean and standard error: within 1e-13 n relative or 4 eps of the
    largest |value| (NumPy's rounding of the mean moves std by that), and for results below 2^-1022
    within 2 units of 2^-1074."""
    from sgm_ref._validation import mean_se

    values = np.array([s * np.ldexp(m, e) for m, e, s in spec])
    top = mpmath.mpf(float(np.max(np.abs(values))))
    for got, ref in zip(mean_se(values), _mp_mean_se(values)):
        if max(abs(ref), top * EPS) < mpmath.mpf(2) ** -1022:
            assert abs(mpmath.mpf(got) - ref) <= 2 * mpmath.mpf(2) ** -1074
        else:
            assert abs(mpmath.mpf(got) - ref) <= max(abs(ref) * 1e-13 * len(values), 4 * top * EPS)


@fuzz(30)
@given(st.sampled_from([np.float64, np.float32, np.int64]), st.sampled_from([None, 0]),
       st.sampled_from([None, 1.0]))
def test_check_times_of_no_rows_and_check_count_of_0d_arrays(dtype, n, T):
    from sgm_ref._validation import check_count, check_fits, check_times

    out = check_times(np.zeros(0, dtype), n=n, T=T)
    assert out.shape == (0,) and out.dtype == np.float64
    with pytest.raises(ValueError, match=r"t must be a scalar or have one value per row, shape \(3,\)"):
        check_times(np.zeros(0, dtype), n=3)
    assert check_count(np.array(7, np.int64), "n") == 7 and type(check_count(np.array(7, np.uint8), "n")) is int
    for bad in (np.array(True), np.array(7.0), np.array([7])):
        with pytest.raises(ValueError, match="n must be an integer >= 1"):
            check_count(bad, "n")
    with pytest.raises(ValueError, match="n must be at most"):
        check_fits("n", np.int64(2**62), np.int64(8))  # 2^65 bytes: its int64 product wrapped to 0


@fuzz(150)
@given(st.lists(st.tuples(st.sampled_from(sorted(importlib.import_module("sgm_ref.experiments.rate").SETTINGS)),
                          st.one_of(st.none(), st.booleans(), st.integers(-3, 10**6),
                                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3),
                                    st.sampled_from([np.float32(np.nan), np.int64(2), Fraction(1, 3), np.array(1.0),
                                                     [1], 1 + 2j, "__del__"]))),
                min_size=1, max_size=3))
def test_check_settings_perturbed_refuses_by_name_or_accepts(changes):
    """A valid settings dict with up to 3 keys changed or deleted: accepted, or a ValueError naming a
    changed key (or t0 < T / no step); never a TypeError or KeyError."""
    from sgm_ref.experiments.rate import SETTINGS, check_settings

    s = dict(SETTINGS)
    for key, value in changes:
        if isinstance(value, str) and value == "__del__":
            s.pop(key)
        else:
            s[key] = value
    try:
        check_settings(s)
    except ValueError as exc:
        msg = str(exc)
        assert any(repr(k) in msg for k, _ in changes) or "t0 < T" in msg or "trains no step" in msg, msg


def test_check_settings_takes_every_make_grid_settings():
    from sgm_ref.experiments.rate import check_settings, make_grid

    for kwargs in ({}, {"quick": True}, {"budget": 0.5}, {"budget": 3.0}, {"steps": 10}, {"quick": True, "steps": 1}):
        check_settings(make_grid(**kwargs)["settings"])


@fuzz(25)
@given(st.floats(-30.0, 38.5), st.integers(1, 4), st.integers(0, 2**32 - 1))
def test_subspace_tilt_float32_is_float64_rounded_once(log10_r, n, seed):
    """SubspaceTilt's score and log p at float32 points: the float64 answer at the same points rounded
    once to float32, bit for bit; log p refused, naming float32, exactly when that rounding overflows."""
    from sgm_ref.experiments.families import SubspaceTilt, embedding

    rng = np.random.default_rng(seed)
    W = rng.standard_normal((3, 2))
    tilt = SubspaceTilt(W / np.linalg.norm(W, axis=1, keepdims=True), rng.standard_normal(3), rng.standard_normal(3),
                        embedding(4, 2, rng), n_mc=64, rng=np.random.default_rng(0), n_normaliser=256)
    x = (rng.standard_normal((n, 4)) * 10.0**log10_r).astype(np.float32)
    assume(np.all(np.isfinite(x)))
    s64 = tilt.score(x.astype(np.float64), 0.5)
    s32 = tilt.score(x, 0.5)
    assert s32.dtype == np.float32 and np.array_equal(s32, s64.astype(np.float32))
    lp64 = tilt.log_prob(x.astype(np.float64), 0.5)
    with np.errstate(over="ignore"):
        expected = lp64.astype(np.float32)
    if np.all(np.isfinite(expected)):
        lp32 = tilt.log_prob(x, 0.5)
        assert lp32.dtype == np.float32 and np.array_equal(lp32, expected)
    else:
        with pytest.raises(ValueError, match="beyond float32's range"):
            tilt.log_prob(x, 0.5)


def test_gaussian_kl_whose_square_distance_overflows_but_half_of_it_does_not():
    """KL = |m1 - m0|^2 / 2 between 9e307 and 1.8e308: |w|^2 overflowed and KL 1.62e308 was refused as
    'exceeds float64'. Against mpmath; 1.9e154 apart (KL 1.805e308) is beyond and still refused."""
    from sgm_ref.metrics.gaussian import gaussian_kl

    for dm in (1.8e154, 1.89e154, 1.5e154):
        ref = mpmath.mpf(dm) ** 2 / 2
        assert gaussian_kl([dm / 2], [[1.0]], [-dm / 2], [[1.0]]) == pytest.approx(float(ref), rel=2 * EPS)
    cov = np.array([[2.0, 0.3], [0.3, 1.0]])  # and with a covariance part: 1/2 [tr S0 - d - log det S0 + |dm|^2]
    ref = (2 + 1 - 2 - mpmath.log(mpmath.mpf(2) - mpmath.mpf(0.3) ** 2) + mpmath.mpf(1.7e154) ** 2) / 2
    assert gaussian_kl([1e154, 0.0], cov, [-0.7e154, 0.0], np.eye(2)) == pytest.approx(float(ref), rel=4 * EPS)
    with pytest.raises(ValueError, match=r"^KL\(N0 \|\| N1\) exceeds float64"):
        gaussian_kl([0.95e154], [[1.0]], [-0.95e154], [[1.0]])


def _mp_kl(m0, C0, m1, C1):
    mpmath.mp.dps = 400  # a correlation of 1e-58 has a KL of 5e-117 against terms of order 1
    A0, A1 = (mpmath.matrix([[mpmath.mpf(float(v)) for v in row] for row in C]) for C in (C0, C1))
    dm = mpmath.matrix([mpmath.mpf(float(a)) - mpmath.mpf(float(b)) for a, b in zip(m1, m0)])
    inv = A1 ** -1
    tr = mpmath.fsum((inv * A0)[i, i] for i in range(len(m0)))
    return (tr - len(m0) + mpmath.log(mpmath.det(A1)) - mpmath.log(mpmath.det(A0)) + (dm.T * inv * dm)[0]) / 2


@fuzz(25)
@given(st.integers(1, 3), st.data())
def test_gaussian_kl_of_covariances_near_1e308_against_mpmath(d, data):
    """gaussian_kl with variances up to 1.7e308, correlations and means up to 1e154: within 2e-14 relative
    of mpmath at 400 digits, or refused by name (an eigenvalue or the KL beyond float64), never scipy's."""
    from sgm_ref.metrics.gaussian import gaussian_kl

    def cov():
        diag = np.array(data.draw(st.lists(st.floats(0.05, 1.0), min_size=d, max_size=d))) * 1.7e308
        C = data.draw(st.floats(-0.6, 0.6)) * np.outer(np.sqrt(diag), np.sqrt(diag)) / max(d - 1, 1)
        np.fill_diagonal(C, diag)
        return np.minimum(C, C.T)

    C0, C1 = cov(), cov()
    m0, m1 = (np.array(data.draw(st.lists(st.floats(-1e154, 1e154), min_size=d, max_size=d))) for _ in range(2))
    try:
        kl = gaussian_kl(m0, C0, m1, C1)
    except ValueError as exc:
        assert re.match(r"cov[01] has an eigenvalue beyond float64's range|KL\(N0 \|\| N1\) exceeds float64", str(exc))
        return
    ref = _mp_kl(m0, C0, m1, C1)
    assert abs(kl - ref) <= 2e-14 * ref


def test_read_array_refuses_a_masked_array_or_a_bool_tensor_inside_a_list():
    """np.asarray reads a masked array inside a list as the numbers under its mask, a bool torch tensor as
    1 or 0, and an empty bool array among empty rows as float64 (the old check's item.flat[0] then raised
    an IndexError)."""
    import torch

    from sgm_ref._validation import _read_array, check_points, check_real_array

    masked = np.ma.masked_array([1.0, 2.0], mask=[True, False])
    assert np.asarray([masked]).tolist() == [[1.0, 2.0]]  # what was read
    with pytest.raises(ValueError, match=r"^x must hold numbers, got a masked array at x\[0\], whose masked entries"):
        check_points([masked])
    with pytest.raises(ValueError, match=r"^w must hold numbers, got the boolean True at w\[1\]$"):
        check_real_array([0.5, torch.tensor(True)], "w")
    with pytest.raises(ValueError, match=r"^x must hold numbers, got the boolean False at x\[1\]\[0\]$"):
        _read_array([torch.tensor([0.5, 1.0]), [torch.tensor(False), 2.0]], "x")
    with pytest.raises(ValueError, match=r"^x must hold numbers, got an empty boolean array at x\[0\]$"):
        _read_array([np.zeros(0, bool), np.zeros(0)], "x")
    np.testing.assert_array_equal(_read_array([torch.tensor(0.5), np.float32(1.0), np.int64(2)], "x"), [0.5, 1.0, 2.0])


@fuzz(20)
@given(st.lists(st.tuples(st.sampled_from(["activation", "weighting", "lr", "lr_final", "ema_decay", "time_sampling",
                                           "checkpoint", "val_early", "output_init", "weight_decay_times_n", "t0",
                                           "parameterization", "time_distribution", "lr_schedule"]),
                          st.sampled_from([None, True, 0, -1, 0.5, 2.0, float("inf"), "x", "silu", [1]])),
                min_size=1, max_size=2),
       st.sampled_from(["mixture", "product", "tilted", "mixture-iso", "tilt-iso"]))
def test_perturbed_settings_are_refused_or_run_to_a_row(changes, family):
    """A tiny cell (steps 2, width 4) with settings perturbed: check_settings refuses it by a ValueError,
    or run_cell returns its row, 'ok' or 'failed' with a ValueError's message; no other exception."""
    from sgm_ref.experiments import rate

    s = dict(rate.SETTINGS, width=4, depth=1, steps=2, batch_size=4, n_eval=4, n_eval_tilted=4, n_eval_empirical=4,
             em_starts=1, val_n=4, val_points=1, bound_n=2, bound_steps=2)
    s.update(changes)
    try:
        rate.check_settings(s)
    except ValueError:
        return
    row = rate.run_cell({"family": family, "d": 2, "n": 8, "seed": 0, "settings": s})
    assert row["status"] == "ok" or row["error"].startswith("ValueError: "), row
