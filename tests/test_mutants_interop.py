"""Tests that kill surviving mutants of sgm_ref.interop and sgm_ref.audit (a mutation-testing
review): each pins a number or a boundary the other tests left free, against an independent
reference (a closed form, or the installed peer)."""

import numpy as np
import pytest

from sgm_ref import DDPM, EDM, OU, VE, GaussianMixture
from sgm_ref.interop import from_torch, to_torch
from _textbook import textbook_em


@pytest.fixture(scope="module")
def torch():
    import os
    if os.environ.get("SGM_REF_REQUIRE_TORCH") == "1":
        import torch
        return torch
    return pytest.importorskip("torch")


def test_a_timestep_1e_5_off_an_integer_is_not_snapped(torch):
    """The float64 snap is 1e-9 N (1e-6 timesteps at N = 1000): timestep 250.00001 (closed form
    N t - 1) is not 250; without fractional=True it is refused as not an integer."""
    p = DDPM("linear", 1e-4, 0.02, 1000)
    seen = []

    def model(x, ts):
        seen.append(ts.clone())
        return torch.zeros_like(x)

    t = (251 + 1e-5) / 1000
    from_torch(model, p, output="eps", time="timestep", dtype="float64", fractional=True)(np.zeros((1, 2)), t)
    assert abs(seen[-1].item() - (1000 * t - 1)) < 1e-12 and seen[-1].item() != 250.0
    with pytest.raises(ValueError, match="not an integer"):
        from_torch(model, p, output="eps", time="timestep", dtype="float64")(np.zeros((1, 2)), t)
    # within the snap: 250 + 5e-7 is timestep 250
    from_torch(model, p, output="eps", time="timestep", dtype="float64")(np.zeros((1, 2)), (251 + 5e-7) / 1000)
    assert seen[-1].tolist() == [250]


def test_a_float32_subnormal_time_that_loses_more_than_eps_is_refused(torch):
    """A float32 model's time argument is refused where float32 rounds it by more than eps
    (2^-23) relative, not less: t = (k + 0.45) 2^-149 with k = round(0.3 2^23), a subnormal
    whose rounding to the grid of 2^-149 costs 0.45 / (k + 0.45) = 1.5 eps (exact fractions),
    is refused; k + 0.225 (0.75 eps) and k + 0.1 (0.33 eps) are accepted, the model seeing
    the nearest float32."""
    from fractions import Fraction

    k = round(0.3 * 2**23)
    seen = []

    def model(x, t):
        seen.append(t.clone())
        return torch.zeros_like(x)

    s = from_torch(model, OU(), output="score", time="t", dtype="float32")
    for frac, refused in ((0.45, True), (0.225, False), (0.1, False)):
        t = (k + frac) * 2.0**-149  # exact in float64 (24 bits of k + 0.45's 53)
        lost = abs(Fraction(round(Fraction(t) / Fraction(2)**-149)) * Fraction(2)**-149 - Fraction(t)) / Fraction(t)
        assert (lost > Fraction(2)**-23) == refused
        if refused:
            with pytest.raises(ValueError, match="beyond the range of float32"):
                s(np.zeros((1, 2), np.float32), t)
        else:
            s(np.zeros((1, 2), np.float32), t)
            assert seen[-1].item() == k * 2.0**-149


def _compare(peer_fn, **kw):
    from sgm_ref import VP
    from sgm_ref.audit import compare_sampler
    return compare_sampler(peer_fn, "euler_maruyama", VP(), np.linspace(1.0, 1e-3, 4), ([2.0], [[0.25]]), 8,
                           np.random.default_rng(0), sample_distances=False, **kw)


def test_deviation_is_relative_to_the_replay_and_kl_tolerance_defaults_to_rtol():
    """deviation = max |peer - replay| / max |replay|: a peer returning twice the replay's path
    deviates by exactly 1 at every state after the start (relative to the peer's own it would
    read 1/2); kl_tolerance is rtol unless given (compare_sampler's docstring)."""
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z) * np.array([1.0, 2.0, 2.0, 2.0])[:, None, None])
    np.testing.assert_allclose(res.deviation, [0.0, 1.0, 1.0, 1.0], rtol=1e-13)
    assert res.final_deviation == pytest.approx(1.0, rel=1e-13) and res.first_divergence == 0
    assert res.kl_tolerance == res.rtol == 64 * np.finfo(np.float64).eps
    res = _compare(textbook_em, rtol=1e-9)
    assert res.matches and res.kl_tolerance == res.rtol == 1e-9
    assert _compare(textbook_em, rtol=1e-9, kl_tolerance=0.5).kl_tolerance == 0.5


def test_the_final_deviation_is_allowed_k_rtol_and_a_kl_of_exactly_the_tolerance_matches():
    """matches: the final deviation may reach rtol per step, K rtol (a peer returning only
    its output, off by 2 rtol after K = 3 steps, matches; by 4 rtol it does not), and
    KL(peer || replay) <= kl_tolerance passes (a correct peer's KL is 0.0 exactly, which
    kl_tolerance=0 accepts)."""
    rtol = 64 * np.finfo(np.float64).eps
    for off, match in ((2.0, True), (4.0, False)):
        res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z)[-1] * (1.0 + off * rtol))
        assert off * rtol * 0.99 < res.final_deviation < off * rtol * 1.01 and res.deviation is None
        assert res.max_deviation == res.final_deviation  # the only deviation there is
        assert res.matches == match and res.laws["method"] == "exact" and res.kl < 1e-20, res.text()
    res = _compare(textbook_em, kl_tolerance=0.0)
    assert res.kl == 0.0 and res.matches, res.text()


def test_the_affine_probe_allows_max_1e_8_or_k_rtol():
    """A peer affine only up to a small term, output + delta x^2 (x the start point), keeps its
    exact law while the probe's miss is within affine_rtol = max(1e-8, K rtol) (K = 3 steps):
    delta = 1e-6 at the default rtol (under the 1e-8 floor, not 3 * 1.4e-14), delta = 1.5e-3
    at rtol = 1e-6 (under 3e-6, not 1e-6); 100 times larger, its law is fitted to samples."""
    for rtol, delta in ((None, 1e-6), (1e-6, 1.5e-3)):
        for scale, method in ((1.0, "exact"), (100.0, "monte_carlo")):
            res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z)[-1] + scale * delta * x**2, rtol=rtol)
            assert res.laws["method"] == method, (rtol, delta, scale, res.notes)


def test_convert_score_carries_the_model_dtype(torch):
    """convert_score keeps a ModelScore's dtype attribute (its docstring), which the metrics
    read to call it with points of its dtype: a float32 model converted EDM -> OU still says
    float32, and gives float32 scores c s(c x, u) (the closed form from convert_time)."""
    from sgm_ref.interop import convert_score
    from sgm_ref.processes import convert_time

    s = from_torch(lambda x, t: -x / (1.0 + t[:, None] ** 2), EDM(), output="score", time="sigma", dtype="float32")
    conv = convert_score(s, EDM(), OU())
    assert conv.dtype == s.dtype == np.float32
    x, t = np.array([[0.5, -1.0]], np.float32), 0.3
    u, c = convert_time(np.array([t]), OU(), EDM())
    sigma = EDM().sigma(u[0])
    want = c[0] * -(c[0] * x.astype(np.float64)) / (1.0 + sigma**2)
    got = conv(x, np.float32(t))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert not hasattr(convert_score(lambda x, t: x, EDM(), OU()), "dtype")


def test_a_trajectory_without_its_start_is_named_up_to_rounding():
    """The note "omits the start state" compares the peer's state k with the replay's k + 1
    within rtol (k + 1): a trajectory without x whose states are off by rtol / 2 (rounding)
    is still named."""
    rtol = 64 * np.finfo(np.float64).eps
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z)[1:] * (1.0 + rtol / 2))
    assert res.steps_peer == 2 and res.first_divergence == 0
    assert any("omits the start state x" in note for note in res.notes), res.notes
    # a start state off by 1.5 rtol (above rtol, state 0 is not a step's result) is noted, and only that
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z) * np.array([1.0 + 1.5 * rtol, 1.0, 1.0, 1.0])[:, None, None])
    assert 1.4 * rtol < res.deviation[0] < 1.6 * rtol and res.matches
    assert any("does not start at x" in note for note in res.notes), res.notes


def test_a_step_that_draws_twice_gets_its_first_draw():
    """_step_draws: a replay drawing twice per step (draws 2k and 2k + 1 at step k, as a
    predictor-corrector) gives a step function the first, 2k (the module docstring)."""
    from sgm_ref import VP
    from sgm_ref.audit import _step_draws

    def two_draws(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        y, path = np.array(x, dtype=np.float64), [np.array(x, dtype=np.float64)]
        for k in range(grid.size - 1):
            y = 0.9 * y + 0.1 * noise.draw_noise(2 * k, y.shape) + 0.05 * noise.draw_noise(2 * k + 1, y.shape)
            path.append(y)
        return y, np.stack(path)

    grid = np.linspace(1.0, 0.1, 4)
    assert _step_draws(two_draws, {}, None, VP(), grid, 2, 6, 64) == [0, 2, 4]


def test_float32_sigmas_just_outside_ve_s_range_are_its_ends(torch):
    """OracleModel.time_of: a float32 sigma outside VE(0.01, 50) by at most its own ulp plus 64
    float32 ulps (relative) is the end meant: 64.5 ulps below sigma_min and 40 above sigma_max
    give the denoiser at the end (closed form for N(m, s^2): (s^2 x + sigma^2 m) / (s^2 +
    sigma^2)); 70 ulps out is refused."""
    m, s2 = 0.7, 0.3
    model = to_torch(GaussianMixture([1.0], [[m]], [[[s2]]]), VE(0.01, 50.0))
    x = torch.tensor([[0.4], [-1.2]], dtype=torch.float32)
    u = 2.0**-23
    for end, ulps, ok in ((0.01, -64.5, True), (50.0, 40.0, True), (0.01, -70.0, False), (50.0, 70.0, False)):
        want = end * (1 + ulps * u)
        grid = np.float32(want) + np.arange(-3, 4, dtype=np.float32) * np.spacing(np.float32(want))
        assert grid.dtype == np.float32
        sigma = grid[np.argmin(np.abs(grid.astype(np.float64) / end - 1 - ulps * u))]
        assert abs(float(sigma) / end - 1 - ulps * u) < 0.5 * u
        if not ok:
            with pytest.raises(ValueError, match="outside the range"):
                model(x, torch.tensor(sigma))
            continue
        got = model(x, torch.tensor(sigma)).double().numpy()
        np.testing.assert_allclose(got, (s2 * x.double().numpy() + end**2 * m) / (s2 + end**2), rtol=2e-7)


def test_a_nan_relative_score_error_fails_the_tolerance():
    """ScoreTolerance.check: "NaN and inf fail" (None, an overflow, is inf)."""
    from sgm_ref.audit import ScoreTolerance

    verdict = ScoreTolerance((0.0,), (0.5,)).check({"t": [0.1, 0.2, 0.3], "relative": [0.1, float("nan"), None]})
    assert verdict["passed"] is False and verdict["exceeded"] == [0.2, 0.3]


def test_a_fitted_law_is_the_unbiased_sample_covariance():
    """A peer that is not affine gets the Gaussian fitted to its n outputs: their mean and the
    sample covariance with n - 1 (written out here)."""
    kept = {}

    def not_affine(s, g, x, z):
        y = textbook_em(s, g, x, z)[-1] + 0.1 * x**2
        kept.setdefault("y", y)  # the comparison's own run comes first
        return y

    res = _compare(not_affine)
    assert res.laws["method"] == "monte_carlo" and res.laws["fitted"] == ["peer"]
    y = kept["y"]
    mean = y.sum(axis=0) / len(y)
    np.testing.assert_allclose(res.laws["peer"][0], mean, rtol=1e-14)
    np.testing.assert_allclose(res.laws["peer"][1], ((y - mean).T @ (y - mean)) / (len(y) - 1), rtol=1e-13)


def test_the_start_points_of_a_ve_comparison_have_sigma_t():
    """The start points are N(0, sigma_T^2 I) for a process that is not variance-preserving:
    sigma_T x the rng's first standard normals (n, d), sigma_T = VE's sigma at grid[0]."""
    from sgm_ref.audit import compare_sampler

    ve, grid, seen = VE(0.01, 50.0), np.linspace(1.0, 0.5, 3), {}

    def loop(score, grid, x, noises):
        seen.setdefault("x", x.copy())
        return x

    compare_sampler(loop, "euler_maruyama", ve, grid, ([0.0], [[1.0]]), 4, np.random.default_rng(3),
                    sample_distances=False)
    want = 50.0 * np.random.default_rng(3).standard_normal((4, 1))  # sigma_max at t = 1
    np.testing.assert_allclose(seen["x"], want, rtol=1e-15)


def test_a_step_function_gets_noises_k_when_the_draw_probe_is_refused():
    """A custom replay that refuses the probe's zero start: the step function gets noises(k) at
    step k (noted), draw k of the noise given (its value k + 1 here)."""
    from sgm_ref import VP
    from sgm_ref.audit import compare_sampler

    def replay(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        if not np.any(x):
            raise ValueError("no zero start")
        y, path = np.array(x, dtype=np.float64), [np.array(x, dtype=np.float64)]
        for k in range(grid.size - 1):
            y = y + noise.draw_noise(k, y.shape)
            path.append(y)
        return y, np.stack(path)

    got = []

    def step(x, k, grid, score, noise_k):
        got.append(float(noise_k[0, 0]))
        return x + noise_k

    noise = np.arange(1.0, 5.0)[:, None, None] * np.ones((4, 3, 1))
    res = compare_sampler(step, replay, VP(), np.linspace(1.0, 0.1, 4), ([0.0], [[1.0]]), 3,
                          np.random.default_rng(0), noise=noise, sample_distances=False)
    assert got[:3] == [1.0, 2.0, 3.0] and any("could not tell which draw" in n for n in res.notes)
    assert res.first_divergence is None and res.max_deviation < 1e-15
