"""Property-based fuzz of the functions changed on the day of b97b816..7316baa.

euler_ancestral's _ancestral_step (k-diffusion's squares in their normal range, the ratio
beyond it), mmd's value and standard error (paired and not), component_weights, VPCosine's
and DDPM's sigma, log-SNR and its inverse near t = 0 (where B leaves float64's normal
range), ModelScore's float32 time check, convert_score's dtype refusals, OracleModel's x0
and v at huge EDM sigma, io.load's parameter count and compare_sampler's given noise. A
ValueError is an accepted answer to bad input; any other exception, a RuntimeWarning or a
non-finite result fails. References: mpmath at 40-50 digits, k-diffusion's
get_ancestral_step and torch's float32 cast (the installed peers). Derandomized, few
examples (deadline=None): SGM_REF_FUZZ_SCALE=k runs k times the examples. One strict xfail:
the score -> x0 conversion where sigma^2 underflows (found here, in conventions.py).
"""

import math
import os
import warnings

import mpmath
import numpy as np
import pytest
from _peers import load_k_diffusion, peer
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sgm_ref import DDPM, EDM, MLP, OU, VP, GaussianMixture, ScoreModel
from sgm_ref.metrics.distances import mmd
from sgm_ref.processes import VPCosine
from sgm_ref.replays.karras import _TINY, _ancestral_step
from _textbook import textbook_em

EPS = float(np.finfo(np.float64).eps)


def fuzz(n):
    n = max(1, int(n * float(os.environ.get("SGM_REF_FUZZ_SCALE", "1"))))
    return settings(max_examples=n, deadline=None, derandomize=True, database=None)


# --- _ancestral_step: sigma_up, sigma_down over 1e-300 .. 1e300 ---------------------------------

def _exact_step(s, s_next, eta):
    """(sigma_up, sigma_down, the bound on sigma_down's error) at 50 digits on the float64
    inputs. sigma_down = s_next sqrt(rest), rest = (1 - eta^2) + (eta q)^2, q = s_next / s (not
    sqrt(s_next^2 - up^2), which cancels below 1e-50 of s_next even at 50 digits); the bound is
    eps (down + s_next (|1 - eta^2| + (eta q)^2) / sqrt(rest)): rest's own conditioning."""
    with mpmath.workdps(50):
        s, s_next, eta = mpmath.mpf(float(s)), mpmath.mpf(float(s_next)), mpmath.mpf(eta)
        q = s_next / s
        rest = (1 - eta * eta) + (eta * q) ** 2
        up = min(s_next, eta * s_next * mpmath.sqrt(1 - q * q))
        down = s_next * mpmath.sqrt(rest) if rest > 0 else mpmath.mpf(0)
        bound = EPS * (down + s_next * (abs(1 - eta * eta) + (eta * q) ** 2) / mpmath.sqrt(max(rest, EPS)))
        return up, down, bound


@st.composite
def ancestral_case(draw):
    s = np.float64(10.0 ** draw(st.floats(-300, 300)))
    kind = draw(st.sampled_from(["uniform", "log", "close", "equal"]))
    if kind == "uniform":
        s_next = s * draw(st.floats(0.0, 1.0))
    elif kind == "log":
        s_next = s * 10.0 ** draw(st.floats(-25, 0))
    elif kind == "close":
        s_next = s * (1.0 - 10.0 ** draw(st.floats(-16, -1)))
    else:
        s_next = s
    eta = draw(st.one_of(st.sampled_from([0.0, 1.0, 2.0, 1.0 - 1e-9, 1.0 + 1e-9]), st.floats(0.0, 2.0)))
    return s, np.float64(s_next), eta


@fuzz(60)
@given(ancestral_case())
def test_ancestral_step_properties(case):
    """0 <= sigma_up <= s_next, sigma_down >= 0, both finite, no warning; up^2 + down^2 =
    s_next^2 to rounding; beyond the squares' normal range each within 4 eps of its 50-digit
    value (sigma_down: with rest's conditioning near the clamp; measured 1.5 in 40000 cases; the
    1 - gap of d6723a2's parent was 5e15 off, sigma_down 2.2 times its value at q = 1e-16) or of
    the smallest subnormal; inside it k-diffusion's get_ancestral_step to 2 ulps of s_next."""
    s, s_next, eta = case
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        up, down = _ancestral_step(s, s_next, eta)
    assert math.isfinite(up) and math.isfinite(down) and 0.0 <= up <= s_next and down >= 0.0
    if s_next == 0:
        assert up == down == 0.0
        return
    with mpmath.workdps(50):
        U, D, S = mpmath.mpf(float(up)), mpmath.mpf(float(down)), mpmath.mpf(float(s_next))
        assert abs(U * U + D * D - S * S) <= 8 * EPS * S * S + mpmath.mpf(2) ** -1070
    with np.errstate(all="ignore"):
        square, product = s_next**2, s_next**2 * (s**2 - s_next**2)
    if _TINY <= square and _TINY <= product < np.inf:
        # the peer's own function on the same float64 numbers (its x ** 0.5 is pow, not sqrt: an ulp apart)
        down_kd, up_kd = load_k_diffusion().sampling.get_ancestral_step(float(s), float(s_next), eta=eta)
        assert abs(up - up_kd) <= 2 * EPS * s_next and abs(down - down_kd) <= 2 * EPS * s_next
        return
    ru, rd, bound = _exact_step(s, s_next, eta)
    assert abs(mpmath.mpf(float(up)) - ru) <= 4 * EPS * ru + 1e-323
    assert abs(mpmath.mpf(float(down)) - rd) <= 4 * bound + 1e-323


@fuzz(40)
@given(st.sampled_from(["square", "product_low", "product_high"]), st.floats(0.01, 0.99), st.floats(-250, -160),
       st.floats(0.0, 2.0))
def test_ancestral_step_is_continuous_across_the_branch_boundary(edge, q, log_q, eta):
    """At the edges of the squares' normal range, s_next^2 = tiny (s = s_next / q, q = 1e-250 ..
    1e-160: there the product s_next^2 (s^2 - s_next^2) is normal) and s_next^2 (s^2 - s_next^2) =
    tiny or = the largest float64 (q = 0.01 .. 0.99), a relative nudge of 1e-12 either way:
    sigma_up / s_next agrees to 1e-14, sigma_down / s_next to 1e-14 plus the cancellation of
    k-diffusion's sqrt(s_next^2 - up^2) on the normal side (eps / (down / s_next))."""
    if edge == "square":
        q = 10.0**log_q
        s_next = math.sqrt(_TINY)
    elif edge == "product_low":  # s_next^4 (1 - q^2) / q^2 = tiny
        s_next = (_TINY * q * q / (1 - q * q)) ** 0.25
    else:  # s_next^4 (1 - q^2) / q^2 = max
        s_next = math.exp(0.25 * (math.log(np.finfo(np.float64).max) + 2 * math.log(q) - math.log1p(-q * q)))
    s = s_next / q
    sides = []
    for nudge in (1 - 1e-12, 1 + 1e-12):
        a, b = np.float64(s * nudge), np.float64(s_next * nudge)
        with np.errstate(all="ignore"):
            sides.append(bool(_TINY <= b**2 and _TINY <= b**2 * (a**2 - b**2) < np.inf))
        up, down = _ancestral_step(a, b, eta)
        sides.append((up / b, down / b))
    normal0, (u0, d0), normal1, (u1, d1) = sides
    assert normal0 != normal1  # the nudge crosses the edge
    assert abs(u0 - u1) <= 1e-14 and abs(d0 - d1) <= 1e-14 + 4 * EPS / max(min(d0, d1), 1e-8)


# --- mmd: value and standard error against a 40-digit double loop --------------------------------

def _mmd_reference(x, y, h, paired):
    """(MMD^2, SE, largest kernel value that enters) at 40 digits on the float64 inputs."""
    with mpmath.workdps(40):
        X = [[mpmath.mpf(float(v)) for v in r] for r in x]
        Y = [[mpmath.mpf(float(v)) for v in r] for r in y]
        H2 = 2 * mpmath.mpf(float(h)) ** 2

        def k(a, b):
            return mpmath.exp(-sum((p - q) ** 2 for p, q in zip(a, b)) / H2)

        def var(v):
            mu = sum(v) / len(v)
            return sum((a - mu) ** 2 for a in v) / (len(v) - 1)

        n, m = len(X), len(Y)
        kxx = [[k(a, b) for b in X] for a in X]
        kyy = [[k(a, b) for b in Y] for a in Y]
        kxy = [[k(a, b) for b in Y] for a in X]
        top = max([kxx[i][j] for i in range(n) for j in range(n) if i != j]
                  + [kyy[i][j] for i in range(m) for j in range(m) if i != j]
                  + [kxy[i][j] for i in range(n) for j in range(m) if not (paired and i == j)])
        if paired:
            h1 = [sum(kxx[i][j] + kyy[i][j] - kxy[i][j] - kxy[j][i] for j in range(n) if j != i) / (n - 1)
                  for i in range(n)]
            return sum(h1) / n, 2 * mpmath.sqrt(var(h1) / n), top
        f = [sum(kxx[i][j] for j in range(n) if j != i) / (n - 1) - sum(kxy[i]) / m for i in range(n)]
        g = [sum(kyy[j][i] for i in range(m) if i != j) / (m - 1) - sum(kxy[i][j] for i in range(n)) / n
             for j in range(m)]
        value = (sum(kxx[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
                 + sum(kyy[i][j] for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
                 - 2 * sum(map(sum, kxy)) / (n * m))
        return value, 2 * mpmath.sqrt(var(f) / n + var(g) / m), top


@fuzz(40)
@given(st.integers(1, 3), st.integers(2, 6), st.integers(2, 6), st.booleans(), st.floats(-8, 3),
       st.sampled_from([0.0, 1.0, 1e3, 1e6, 1e9]), st.sampled_from([0.0, 0.1, 3.0, 1e3]), st.floats(-1.5, 4),
       st.booleans(), st.integers(0, 2**32 - 1))
def test_mmd_against_a_40_digit_double_loop(d, n, m, paired, log_spread, offset, shift, log_h, close, seed):
    """Samples of spread 1e-8 .. 1e3 about offsets up to 1e9, y shifted by up to 1e3 spreads
    (points far from the pooled mean: 82d4afc's parent failed), bandwidths 0.03 .. 1e4 spreads,
    paired (y = x + 1e-9 spread: pairs that differ in their last digits) and not: MMD^2 and its
    SE within 1e-12 of the largest kernel value that enters (each kernel value exp(-r) carries
    the rounding of r, up to ~700 eps: measured 1.5e-14), the SE also within 1e-10 of itself."""
    if paired:
        n = m = max(n, 3)
    rng = np.random.default_rng(seed)
    spread = 10.0**log_spread
    centre = offset * rng.standard_normal(d)
    x = centre + spread * rng.standard_normal((n, d))
    y = centre + spread * (rng.standard_normal((m, d)) + shift)
    if paired and close:
        y = x + 1e-9 * spread * rng.standard_normal((n, d))
    h = spread * 10.0**log_h
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            out = mmd(x, y, h, paired=paired)
        except ValueError as exc:
            assert str(exc).startswith("bandwidth") and "\n" not in str(exc), exc
            return
    value, se, top = _mmd_reference(x, y, h, paired)
    assert math.isfinite(out.value) and math.isfinite(out.standard_error) and out.standard_error >= 0
    assert abs(out.value - value) <= 1e-12 * top + 1e-320
    assert abs(out.standard_error - se) <= 1e-10 * se + 1e-12 * top + 1e-320
    assert out.bandwidth == h


@fuzz(20)
@given(st.integers(2, 8), st.sampled_from([1e-200, 1e-30, 1e-3, 0.3]), st.floats(0.5, 8.0), st.integers(0, 2**32 - 1))
def test_component_weights_against_40_digit_responsibilities(n, w_small, gap, seed):
    """Two components in 1-D (one of weight down to 1e-200) at distance gap: soft weights and
    their SE against mpmath's responsibilities at 40 digits (relative 1e-12, with an absolute
    1e-15 of the larger component's; the tiny component's SE relative 1e-10: it no longer
    underflows to 0); hard weights the argmax counts."""
    from sgm_ref.metrics.distances import component_weights

    w = np.array([1.0 - w_small, w_small])
    mix = GaussianMixture(w, [[0.0], [gap]], [[[1.0]], [[0.5]]])
    x = np.random.default_rng(seed).standard_normal((n, 1)) * 2.0 + gap / 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = component_weights(x, mix)
    with mpmath.workdps(40):
        def logn(v, mu, var):
            return -(v - mu) ** 2 / (2 * var) - mpmath.log(2 * mpmath.pi * var) / 2

        resp = []
        for v in x[:, 0].tolist():
            a = mpmath.log(mpmath.mpf(float(w[0]))) + logn(mpmath.mpf(v), 0, 1)
            b = mpmath.log(mpmath.mpf(float(w[1]))) + logn(mpmath.mpf(v), mpmath.mpf(gap), mpmath.mpf(0.5))
            p1 = 1 / (1 + mpmath.exp(a - b))
            resp.append((1 - p1, p1))
        for k in range(2):
            col = [r[k] for r in resp]
            mean = sum(col) / n
            se = mpmath.sqrt(sum((c - mean) ** 2 for c in col) / (n - 1) / n)
            assert abs(out.soft[k] - mean) <= 1e-12 * mean + 1e-15
            assert abs(out.soft_standard_error[k] - se) <= 1e-10 * se + (1e-15 if k == 0 else 0.0)
            hard = sum(1 for r in resp if (r[1] > r[0]) == (k == 1)) / n
            assert out.hard[k] == pytest.approx(hard, abs=1e-15)


# --- VPCosine and DDPM near t = 0: sigma, log-SNR and its inverse across B = tiny ----------------

PROCESSES_NEAR_0 = [VPCosine(), VPCosine(s=1e-6), VPCosine(s=1e-100), DDPM(), DDPM("squaredcos_cap_v2"),
                    DDPM("scaled_linear"), DDPM(beta_start=1e-300)]


def _exact_near_0(process, t):
    """(sigma, lambda) at 50 digits: VPCosine's sigma^2 = sin(k t + 2 u0) sin(k t) / cos^2(u0)
    (no cancellation), DDPM's B = N (-log(1 - beta_0)) t on its first step."""
    with mpmath.workdps(50):
        T = mpmath.mpf(float(t))
        if isinstance(process, VPCosine):
            k = mpmath.pi / 2 / (1 + mpmath.mpf(process.s))
            u0 = k * mpmath.mpf(process.s)
            s2 = mpmath.sin(k * T + 2 * u0) * mpmath.sin(k * T) / mpmath.cos(u0) ** 2
            a2 = 1 - s2
        else:
            rate = process.num_train_timesteps * -mpmath.log1p(-mpmath.mpf(float(process.betas()[0])))
            a2, s2 = mpmath.exp(-rate * T), -mpmath.expm1(-rate * T)
        return mpmath.sqrt(s2), mpmath.log(a2) - mpmath.log(s2)


def _rel(a, b):
    return float(abs(mpmath.mpf(float(a)) - b) / abs(b))


@fuzz(40)
@given(st.sampled_from(range(len(PROCESSES_NEAR_0))), st.floats(-323.5, -280), st.floats(-300, 0))
def test_vp_cosine_and_ddpm_near_zero_against_mpmath(which, log_t, log_t2):
    """t = 10^-323.5 .. 1e-280, where B(t) crosses float64's normal range (VPCosine with s down
    to 1e-100, DDPM's schedules and a beta_start of 1e-300): sigma and lambda within 4 eps of
    50-digit values, the inverse time_of_log_snr(lambda) within 4 eps |lambda|
    t of t; two times in order give sigma and lambda in order (monotone, also against a time
    up to 1); no warning, nothing non-finite."""
    process = PROCESSES_NEAR_0[which]
    t = float(10.0**log_t)
    assume(t > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sigma, lam = float(process.sigma(t)), float(process.log_snr(t))
        back = float(process.time_of_log_snr(lam))
        t2 = float(10.0**log_t2) * (process.t_max if np.isfinite(process.t_max) else 1.0)
        t2 = min(t2, float(process.t_max))
        sigma2, lam2 = float(process.sigma(t2)), float(process.log_snr(t2))
    want_sigma, want_lam = _exact_near_0(process, t)
    # (sigma is subnormal for DDPM(beta_start=1e-300) below t ~ 1e-316: its last place is 5e-324)
    assert abs(mpmath.mpf(sigma) - want_sigma) <= 4 * EPS * want_sigma + 2e-323 and _rel(lam, want_lam) <= 4 * EPS
    assert abs(back - t) <= 4 * EPS * abs(lam) * t + 5e-324
    if t2 > t:
        assert sigma2 >= sigma and lam2 <= lam
    elif t2 < t:
        assert sigma2 <= sigma and lam2 >= lam


@pytest.mark.parametrize("process", PROCESSES_NEAR_0, ids=repr)
def test_vp_cosine_and_ddpm_are_continuous_where_b_leaves_the_normal_range(process):
    """At the t where B(t) = float64's tiny (the branch edge), 40 times on either side (steps of
    1e-11 relative): sigma / sqrt(t) and lambda + log t vary smoothly (adjacent values within
    1e-14 and 4 eps |lambda|, their rounding: no jump between the two formulas) and sigma and
    lambda are strictly monotone; the inverse returns each t to 8 eps |lambda|."""
    lo, hi = 1e-320, 1e-4
    for _ in range(2000):  # bisect B(t) = tiny on t
        mid = math.sqrt(lo) * math.sqrt(hi)
        if float(process.integrated_beta(mid)) < _TINY:
            lo = mid
        else:
            hi = mid
        if hi <= lo * (1 + 1e-15):
            break
    ts = hi * (1.0 + 1e-11 * np.arange(-40, 41))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sigma, lam = process.sigma(ts), process.log_snr(ts)
        back = process.time_of_log_snr(lam)
    assert np.any(process.integrated_beta(ts) < _TINY) and np.any(process.integrated_beta(ts) >= _TINY)
    a, b = sigma / np.sqrt(ts), lam + np.log(ts)
    assert np.max(np.abs(np.diff(a))) <= 1e-14 * a[0] and np.max(np.abs(np.diff(b))) <= 4 * EPS * np.max(np.abs(lam))
    assert np.all(np.diff(sigma) > 0) and np.all(np.diff(lam) < 0)
    np.testing.assert_allclose(back, ts, rtol=8 * EPS * np.max(np.abs(lam)), atol=0)


# --- interop: a float32 model's time, convert_score's dtypes, the oracle at huge EDM sigma -------

@fuzz(40)
@given(st.one_of(st.floats(-46.5, -36.0), st.floats(-36.0, 38.6), st.integers(1, 2**23 - 1)))
def test_a_float32_model_s_time_is_refused_iff_its_cast_is_off_by_more_than_eps(draw):
    """t log-uniform over float32's subnormals, normals and its overflow, or an exact float32
    subnormal (k 2^-149): refused (one line naming what the model would see) iff torch's
    float32 cast of t is inf, or off t by more than float32's eps relative; else the score
    -x of N(0, I) under OU to float32's rounding."""
    from sgm_ref.interop import from_torch

    torch = peer("torch")
    t = float(draw) * 2.0**-149 if isinstance(draw, int) else float(10.0**draw)

    def eps_model(x, t):
        return (torch.sqrt(-torch.expm1(-2 * t.double()))[:, None] * x.double()).float()

    s = from_torch(eps_model, OU(), "eps", time="t", dtype="float32", cast_output=True)
    seen = float(torch.tensor(t, dtype=torch.float64).float())
    refused = not math.isfinite(seen) or abs(seen - t) > float(np.finfo(np.float32).eps) * t
    x = np.ones((2, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            out = s(x, t)
        except ValueError as exc:
            assert refused, (t, exc)
            assert str(exc).startswith(f"the time argument t = {t!r} (row 0)") and f"see {seen!r}" in str(exc)
            return
    assert not refused, t
    np.testing.assert_allclose(out, -x, rtol=2.0**-22, atol=0)


@pytest.mark.parametrize("dtype", [np.int8, np.int64, np.uint16, np.bool_, np.complex64, np.complex128, np.float16,
                                   np.longdouble, object, "U3"])
def test_convert_score_takes_only_float32_and_float64_scores(dtype):
    """A score of another dtype is refused naming it, or (float16, longdouble: real floating
    point) converted in its own dtype (to float64's rounding at best: c is float64); never
    truncated or complex."""
    from sgm_ref.interop import convert_score

    x = np.array([[3.0], [1.0]])
    s = convert_score(lambda x, t: (-x).astype(dtype), EDM(), OU())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            got = s(x, 1.0)
        except ValueError as exc:
            assert str(exc).startswith("score returned dtype") and "\n" not in str(exc)
            assert np.dtype(dtype).kind != "f"
            return
    assert np.dtype(dtype).kind == "f" and got.dtype == np.dtype(dtype)
    want = -math.e**2 * x
    # c is float64: a longdouble score comes back to float64's rounding, not its own
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=8 * max(float(np.finfo(dtype).eps), EPS), atol=0)


@fuzz(20)
@given(st.sampled_from(["x0", "v"]), st.floats(80.0, 307.5), st.integers(0, 2**32 - 1))
def test_the_oracle_s_x0_and_v_at_huge_edm_sigma(output, log_sigma, seed):
    """EDM sigma 1e80 .. 3e307 (Tweedie's coefficient beyond float64 above 5.6e102 for v,
    1.3e154 for x0) on a two-component mixture with diagonal covariances: finite, and x0 (v)
    within 8 eps of the 40-digit posterior mean (v = (x - x0) / sigma - sigma x0); measured 3e-16."""
    from sgm_ref.interop import to_torch

    torch = peer("torch")
    w, mu, var = [0.3, 0.7], [[0.7, -1.2], [-2.0, 3.0]], [[0.4, 1.7], [2.5, 0.3]]
    model = to_torch(GaussianMixture(w, np.array(mu), np.array(var)), EDM(), output)
    sigma = float(10.0**log_sigma)
    x = sigma * np.random.default_rng(seed).standard_normal((2, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = model(torch.from_numpy(x), torch.tensor(sigma, dtype=torch.float64)).numpy()
    assert np.all(np.isfinite(got))
    with mpmath.workdps(40):
        S = mpmath.mpf(sigma)
        for row, xr in zip(got, x):
            X = [mpmath.mpf(v) for v in xr.tolist()]
            logs, means = [], []
            for k in range(2):
                V = [mpmath.mpf(v) + S * S for v in var[k]]
                logs.append(mpmath.log(w[k]) + sum(-(X[j] - mu[k][j]) ** 2 / (2 * V[j])
                                                   - mpmath.log(2 * mpmath.pi * V[j]) / 2 for j in range(2)))
                means.append([mu[k][j] + var[k][j] * (X[j] - mu[k][j]) / V[j] for j in range(2)])
            top = max(logs)
            r = [mpmath.exp(v - top) for v in logs]
            x0 = [sum(r[k] * means[k][j] for k in range(2)) / sum(r) for j in range(2)]
            for g, xj, u in zip(row, X, x0):
                want = u if output == "x0" else (xj - u) / S - S * u
                assert abs(mpmath.mpf(float(g)) - want) <= 8 * EPS * abs(want), (g, want)


# --- io.load: the header's parameter count ------------------------------------------------------

@fuzz(25)
@given(st.integers(1, 4), st.lists(st.integers(1, 6), min_size=1, max_size=3),
       st.sampled_from(["linear", "log", "fourier"]), st.integers(1, 5), st.sampled_from(["float64", "float32"]),
       st.booleans(), st.sampled_from([None, "widen", "deepen", "huge", "embedding", "d"]))
def test_load_counts_parameters_as_the_network_does(tmp_path_factory, d, widths, kind, n_freq, dtype, ema, doctor):
    """A saved model of random widths and time embedding loads (the count check never refuses
    a valid file; _parameter_count equals MLP.n_params); a header doctored to another
    architecture beside the same numbers is a ModelFileError naming the count the header
    implies, without building it (widths of 10^6: a TB network)."""
    import json

    from sgm_ref.io import ModelFileError, _parameter_count, load, read_header, save

    from sgm_ref.nn import TimeEmbedding

    net = MLP(d, tuple(widths), "silu", TimeEmbedding(kind, n_freq), dtype=dtype, rng=1)
    assert _parameter_count(net.config()) == net.n_params
    model = ScoreModel(net, OU(), "noise")
    path = tmp_path_factory.mktemp("io") / "m.npz"
    save(model, path, ema=net.params.copy() if ema else None)
    if doctor is None:
        loaded = load(path, use_ema=ema)
        np.testing.assert_array_equal(loaded.params, net.params)
        assert loaded.network.config() == net.config()
        return
    header = read_header(path)
    config = header["network"]
    if doctor == "widen":
        config["widths"][0] += 1
    elif doctor == "deepen":
        config["widths"].append(2)
    elif doctor == "huge":
        config["widths"] = [10**6, 10**6]
    elif doctor == "embedding":
        config["time_embedding"] = {"kind": "fourier", "n_frequencies": n_freq + (kind == "fourier")}
    else:
        config["d"] += 1
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files if k != "header"}
    with open(path, "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), **arrays)
    want = _parameter_count(config)
    assert want is not None and want != net.n_params
    with pytest.raises(ModelFileError, match=rf"the architecture needs \({want},\) {dtype}"):
        load(path, use_ema=ema)


# --- audit.compare_sampler: given noise of any dtype ---------------------------------------------

@pytest.mark.parametrize("kind", ["f2", "f4", "f8", ">f8", "<f4", "g", "i1", "i8", ">i4", "u1", "?", "c8", "c16", "O",
                                  "U8", "masked"])
@fuzz(2)
@given(st.integers(0, 2**32 - 1))
def test_compare_sampler_reads_noise_exactly_or_refuses_it(kind, seed):
    """Noise (3 steps, 12 rows, d = 1) of every dtype: a ValueError naming noise, or the result
    of the same numbers given as float64 (every field of to_dict equal): float32, integers and
    either byte order read exactly; nothing cast (complex, bool, strings, objects, masked,
    float16 and longdouble refused or, where read, read as the same numbers)."""
    from sgm_ref.audit import compare_sampler

    rng = np.random.default_rng(seed)
    base = rng.standard_normal((3, 12, 1))
    if kind == "masked":
        noise = np.ma.masked_array(base, mask=base > 1.5)
    elif kind in ("i1", "i8", ">i4", "u1", "?"):
        noise = np.round(2 * np.abs(base) if kind in ("u1", "?") else 2 * base).astype(kind)
    elif kind in ("O", "U8"):
        noise = base.astype(kind)
    else:
        noise = base.astype(kind)
    grid = np.linspace(1.0, 0.1, 4)

    def run(z):
        return compare_sampler(textbook_em, "euler_maruyama", VP(), grid, ([0.5], [[0.7]]), 12,
                               np.random.default_rng(1), noise=z, sample_distances=False)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            got = run(noise)
        except ValueError as exc:
            assert str(exc).startswith("noise") and "\n" not in str(exc), exc
            assert kind in ("?", "c8", "c16", "O", "U8", "masked", "g", "f2"), (kind, exc)
            return
    exact = np.asarray(noise).astype(np.float64)
    assert np.array_equal(exact.astype(np.asarray(noise).dtype), np.asarray(noise))  # the values as float64, exactly
    assert got.to_dict() == run(exact).to_dict()


# --- euler_ancestral end to end: a target and its sigmas scaled by c ----------------------------

@fuzz(25)
@given(st.floats(-150, 150), st.floats(0.0, 2.0), st.floats(0.0, 1.5), st.integers(0, 2**32 - 1))
def test_euler_ancestral_is_scale_invariant(log_c, eta, s_noise, seed):
    """N(0, c^2) under EDM on the grid c (5, 2, 0.5, 0.01) with given noise: x / c after the
    run is the run at c = 1 to 1e-13 (sigma_up and sigma_down are homogeneous in the sigmas,
    inside and beyond the squares' normal range), finite, no warning."""
    from sgm_ref import replays as R

    c = float(10.0**log_c)
    rng = np.random.default_rng(seed)
    x, z = rng.standard_normal((3, 1)), rng.standard_normal((3, 3, 1))
    base = np.array([5.0, 2.0, 0.5, 0.01])

    def scaled(x, t):
        return -((x / c) / c) / (1.0 + (t[:, None] / c) ** 2)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = R.euler_ancestral(scaled, EDM(), c * base, c * x, noise=z, eta=eta, s_noise=s_noise)
        y1 = R.euler_ancestral(lambda x, t: -x / (1.0 + t[:, None] ** 2), EDM(), base, x, noise=z, eta=eta,
                               s_noise=s_noise)
    assert np.all(np.isfinite(y))
    np.testing.assert_allclose(y / c, y1, rtol=1e-13, atol=1e-13)


def test_x0_from_the_score_where_sigma_squared_underflows():
    """N(0, c^2), c = 1e-200, under EDM at sigma = 5c: score(x) = -x / (c^2 + sigma^2) = -x / (26 c^2)
    is 3.8e198 at x = c, a normal number, and x0 = x + sigma^2 score = x / 26 = 3.85e-202; convert
    gave x (1e-200, 26 times off) without a word (its overflowing counterpart, sigma > 1.3e154, is
    refused). euler_ancestral / karras_euler on such a grid then do not denoise: the run of a
    target scaled by 1e-200 is 0.86 off the unscaled one (1e-6 at 1e-160). Those rows now go through
    eps = -sigma score (convert), whose coefficients do not underflow there."""
    from sgm_ref.conventions import convert

    c = 1e-200
    x, t = np.array([[c]]), np.array([5.0 * c])
    score = -((x / c) / c) / 26.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            got = convert(score, x, t, EDM(), "score", "x0")
        except ValueError:
            return  # a refusal is an honest answer
    np.testing.assert_allclose(got, x / 26.0, rtol=1e-14)  # x - sigma eps cancels 26-fold: 26 eps
