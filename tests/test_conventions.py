"""Tests for sgm_ref.conventions: score, eps, x0, v and velocity at one (x, t).

References: 50-digit mpmath from the defining relations x = alpha x0 + sigma eps,
score = -eps/sigma, v = alpha eps - sigma x0, velocity = alpha' x0 + sigma' eps, at the
process's alpha, sigma, alpha', sigma' (checked against the papers' formulas in
tests/test_processes.py).
"""

import itertools

import mpmath
import numpy as np
import pytest

from sgm_ref.conventions import KINDS, coefficients, convert
from sgm_ref.processes import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine

mp = mpmath.mp
EPS = np.finfo(np.float64).eps
PROCESSES = [OU(), VP(), VPCosine(), DDPM("squaredcos_cap_v2"), DDPM("scaled_linear", 0.00085, 0.012),
             SubVP(), VE(), EDM(), FlowMatching()]
IDS = [repr(p) for p in PROCESSES]
PAIRS = list(itertools.permutations(KINDS, 2))


def _grid(p):
    """Times over the whole range, t -> 0 (1e-150: the score ~ 1/sigma stays in float64) to
    the far end."""
    far = 300.0 if np.isinf(p.t_max) else p.t_max
    return np.unique(np.concatenate([np.logspace(-150, -1, 60), np.linspace(0.0, far, 200)[1:],
                                     far * (1 - np.logspace(-12, -1, 12)), [far]]))


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_round_trip_every_pair(process):
    """from -> to -> from to 1e-13 relative to what the intermediate can hold.

    `to` = A x + B value carries value's digits only down to eps |A x|; so the value comes
    back to 1e-13 (|value| + |A x / B|). Where A = 0 (score <-> eps, and v <-> velocity for
    variance-preserving processes) that is plain relative error; elsewhere it is the
    float64 limit of the intermediate (x0 at t -> 0 is x to within sigma eps).
    """
    t = _grid(process)
    rng = np.random.default_rng(0)
    x, value = rng.standard_normal((2, t.size, 3))
    for k1, k2 in PAIRS:
        ok = np.ones(t.size, bool)
        try:
            coefficients(t, process, k1, k2)
        except ValueError:  # beyond float64 at t -> 0 (score ~ 1/sigma^2 from x0): dropped
            ok = np.array([_defined(process, ti, k1, k2) for ti in t])
        tt, xx, vv = t[ok], x[ok], value[ok]
        assert tt.size > 0.9 * t.size, (k1, k2)
        A, B = coefficients(tt, process, k1, k2)
        back = convert(convert(vv, xx, tt, process, k1, k2), xx, tt, process, k2, k1)
        bound = 1e-13 * (np.abs(vv) + np.abs(A[:, None] * xx / B[:, None]))
        assert np.all(np.abs(back - vv) <= bound), (k1, k2)
        if {k1, k2} == {"score", "eps"}:
            np.testing.assert_allclose(back, vv, rtol=1e-13, atol=0)


def _defined(process, t, k1, k2):
    try:
        coefficients(t, process, k1, k2)
        return True
    except ValueError:
        return False


def _mp_truth(process, t, x0, eps):
    """All kinds and x at time t from (x0, eps), in mpmath, with the process's float64
    alpha, sigma, alpha', sigma' taken as exact (tests/test_processes.py checks those against
    the papers' formulas; here only the conversions are under test)."""
    a, s = (mp.mpf(float(v)) for v in process.marginal(t))
    da, ds = mp.mpf(float(process.d_alpha(t))), mp.mpf(float(process.d_sigma(t)))
    x0, eps = [mp.mpf(float(v)) for v in x0], [mp.mpf(float(v)) for v in eps]
    return {
        "x": [a * u + s * e for u, e in zip(x0, eps)],
        "x0": x0, "eps": eps, "score": [-e / s for e in eps],
        "v": [a * e - s * u for u, e in zip(x0, eps)],
        "velocity": [da * u + ds * e for u, e in zip(x0, eps)],
    }


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_conversions_match_the_definitions(process):
    """convert(value_from, x) = value_to of the same (x0, eps), to 1e-13 of |A x| + |B value|.

    Inputs are the float64 roundings of the exact x and value, so the attainable error is a
    few ulps of the two terms; a wrong sign or coefficient gives O(1).
    """
    far = 5.0 if np.isinf(process.t_max) else process.t_max
    rng = np.random.default_rng(1)
    with mp.workdps(50):
        for t in far * np.array([1e-7, 0.01234, 0.3105, 0.5775, 0.90315, 0.99935]):
            x0, eps = rng.standard_normal((2, 2))
            truth = _mp_truth(process, t, x0, eps)
            x = np.array([[float(v) for v in truth["x"]]])
            for k1, k2 in PAIRS:
                value = np.array([[float(v) for v in truth[k1]]])
                got = convert(value, x, t, process, k1, k2)[0]
                A, B = coefficients(t, process, k1, k2)
                for g, ref, xi, vi in zip(got, truth[k2], x[0], value[0]):
                    assert abs(g - ref) <= 1e-13 * (abs(A * xi) + abs(B * vi)), (t, k1, k2, g, ref)


def test_closed_forms_of_common_conversions():
    t = np.array([1e-9, 0.3, 0.99])
    p = VP()
    a, s = p.marginal(t)
    # eps -> score is -eps/sigma; eps -> x0 is (x - sigma eps) / alpha
    A, B = coefficients(t, p, "eps", "score")
    assert np.all(A == 0) and np.allclose(B, -1 / s, rtol=2 * EPS, atol=0)
    A, B = coefficients(t, p, "eps", "x0")
    np.testing.assert_allclose(A, 1 / a, rtol=4 * EPS)
    np.testing.assert_allclose(B, -s / a, rtol=4 * EPS)
    # v = alpha eps - sigma x0 -> x0 = alpha x - sigma v for alpha^2 + sigma^2 = 1
    A, B = coefficients(t, p, "v", "x0")
    np.testing.assert_allclose(A, a, rtol=4 * EPS)
    np.testing.assert_allclose(B, -s, rtol=4 * EPS)
    # for a variance-preserving process the velocity is a multiple of v (no x term)
    A, B = coefficients(t, p, "v", "velocity")
    assert np.all(A == 0)
    # flow matching: velocity = eps - x0 exactly (alpha' = -1, sigma' = 1)
    q = FlowMatching()
    A, B = coefficients(0.25, q, "x0", "velocity")  # = (x - alpha x0)/sigma - x0
    assert A == 4.0 and B == -4.0  # 1/sigma and -(alpha/sigma + 1) at t = 1/4
    # EDM: x0 = x - sigma eps (k-diffusion's D = x + c_out eps, c_out = -sigma)
    A, B = coefficients(np.array([0.002, 1.0, 80.0]), EDM(), "eps", "x0")
    assert np.all(A == 1.0) and np.array_equal(B, -np.array([0.002, 1.0, 80.0]))


def test_same_gaussian_in_two_conventions():
    """N(mu, C) data: the exact score of p_t under OU and under EDM at the matching sigma
    agree through convert_time (score_EDM(scale x) = score_OU(x) / scale), and the score
    converted to x0 is the same posterior mean in both."""
    from sgm_ref.processes import convert_time

    rng = np.random.default_rng(2)
    d = 3
    L = rng.standard_normal((d, d))
    C, mu = L @ L.T + 0.1 * np.eye(d), rng.standard_normal(d)

    def score(p, t, x):
        a, s2 = p.alpha(t), p.sigma2(t)
        return -np.linalg.solve(a * a * C + s2 * np.eye(d), (x - a * mu).T).T

    x = rng.standard_normal((5, d))
    for t in (1e-4, 0.3, 2.0):
        sig, scale = convert_time(t, OU(), EDM())
        s_ou, s_edm = score(OU(), t, x), score(EDM(), sig, scale * x)
        np.testing.assert_allclose(s_edm, s_ou / scale, rtol=1e-12)
        x0_ou = convert(s_ou, x, t, OU(), "score", "x0")
        x0_edm = convert(s_edm, scale * x, sig, EDM(), "score", "x0")
        np.testing.assert_allclose(x0_edm, x0_ou, rtol=1e-12)


def test_float32_in_float32_out_rounded_once():
    rng = np.random.default_rng(3)
    x, v = rng.standard_normal((2, 4, 2)).astype(np.float32)
    got = convert(v, x, 0.5, OU(), "eps", "x0")
    assert got.dtype == np.float32
    ref = convert(v.astype(np.float64), x.astype(np.float64), 0.5, OU(), "eps", "x0")
    assert np.array_equal(got, ref.astype(np.float32))
    assert convert(v, x.astype(np.float64), 0.5, OU(), "eps", "x0").dtype == np.float64


def test_per_row_times():
    rng = np.random.default_rng(4)
    t = np.array([0.1, 0.5, 0.9])
    x, v = rng.standard_normal((2, 3, 2))
    rows = convert(v, x, t, VP(), "eps", "v")
    for i in range(3):
        assert np.array_equal(rows[i], convert(v[i:i + 1], x[i:i + 1], t[i], VP(), "eps", "v")[0])


# -- where a conversion does not exist, and bad input ----------------------------------


@pytest.mark.parametrize("process, t, k1, k2", [
    (OU(), 0.0, "eps", "score"),        # sigma = 0: the score is infinite
    (OU(), 0.0, "score", "eps"),
    (VP(), 0.0, "eps", "velocity"),     # sigma' = inf at t = 0 for VP
    (EDM(), 0.0, "x0", "score"),
])
def test_undefined_conversions_raise_naming_t(process, t, k1, k2):
    with pytest.raises(ValueError, match=r"^t = 0.0: converting"):
        coefficients(t, process, k1, k2)
    with pytest.raises(ValueError, match=r"^t = 0.0: converting"):
        convert(np.ones((2, 2)), np.ones((2, 2)), t, process, k1, k2)


def test_x0_from_eps_at_time_zero_is_x():
    A, B = coefficients(0.0, OU(), "eps", "x0")
    assert A == 1.0 and B == 0.0


@pytest.mark.parametrize("name, kwargs", [
    ("from_", {"from_": "epsilon"}), ("to", {"to": "noise"}), ("from_", {"from_": None}), ("to", {"to": 3}),
])
def test_unknown_kind_raises(name, kwargs):
    args = dict(from_="eps", to="score") | kwargs
    with pytest.raises(ValueError, match=rf"^{name} must be one of \('score', 'eps', 'x0', 'v', 'velocity'\)"):
        convert(np.ones((2, 2)), np.ones((2, 2)), 0.5, OU(), **args)
    with pytest.raises(ValueError, match=rf"^{name} must be one of"):
        coefficients(0.5, OU(), **args)


def test_bad_shapes_and_values_raise_naming_the_argument():
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"^value must have the shape of x, \(3, 2\)"):
        convert(np.ones((3, 1)), x, 0.5, OU())
    with pytest.raises(ValueError, match=r"^x must have shape \(n, d\)"):
        convert(np.ones(3), np.ones(3), 0.5, OU())
    with pytest.raises(ValueError, match=r"^value contains 1 non-finite"):
        convert(np.array([[np.nan, 1.0]] + [[1.0, 1.0]] * 2), x, 0.5, OU())
    with pytest.raises(ValueError, match=r"^t must be a scalar or have one value per row"):
        convert(x, x, np.array([0.1, 0.2]), OU())
    with pytest.raises(ValueError, match=r"^t must be <= 1"):
        convert(x, x, 1.5, VP())
    with pytest.raises(ValueError, match=r"^t must be <= 0.99999"):
        coefficients(1.0, FlowMatching(), "x0", "velocity")
    with pytest.raises(ValueError, match=r"^process must be"):
        convert(x, x, 0.5, "OU")


# -- property-based: any time, any pair ----------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def _case(draw):
    process = draw(st.sampled_from(PROCESSES))
    far = 300.0 if np.isinf(process.t_max) else process.t_max
    t = draw(st.one_of(st.floats(1e-150, far), st.floats(1e-150, 1e-3).map(lambda u: far - u * far)))
    k1, k2 = draw(st.sampled_from(PAIRS))
    return process, t, k1, k2


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(_case(), st.integers(0, 2**31))
def test_round_trip_any_time(case, seed):
    """As test_round_trip_every_pair, at times hypothesis picks (t -> 0 and the far end)."""
    process, t, k1, k2 = case
    if not (_defined(process, t, k1, k2) and _defined(process, t, k2, k1)):
        return  # a coefficient beyond float64 (e.g. the score ~ 1/sigma^2 at t ~ 1e-150)
    x, value = np.random.default_rng(seed).standard_normal((2, 1, 3))
    A, B = coefficients(t, process, k1, k2)
    back = convert(convert(value, x, t, process, k1, k2), x, t, process, k2, k1)
    assert np.all(np.abs(back - value) <= 1e-13 * (np.abs(value) + np.abs(A * x / B)))


@settings(max_examples=400, deadline=None, derandomize=True, database=None)
@given(st.sampled_from(PROCESSES), st.floats(0.0, 1.0))
def test_time_log_snr_round_trip_any_time(process, u):
    far = 300.0 if np.isinf(process.t_max) else process.t_max
    t = far * u
    if 0 < t < 1e-300:
        return  # B(t) = beta_min t underflows: the float64 range limit of tests/test_processes.py
    back = process.time_of_log_snr(process.log_snr(t))
    tol = 1e-13 * t
    if isinstance(process, VE):  # lambda(0) finite: see tests/test_processes.py
        tol += 4 * EPS * abs(process.log_snr(t)) / abs(2 * np.log(process.sigma_max / process.sigma_min))
    assert abs(back - t) <= tol


def test_a_ddpm_timestep_passed_as_a_time_is_named():
    """convert(v, x, 950, DDPM()): 950 is a diffusers timestep, whose time is (950 + 1) / N."""
    x = np.ones((3, 2))
    with pytest.raises(ValueError, match=r"^t must be <= 1\.0 \(the process's horizon T\), got max 950\.0; 950 looks "
                                         r"like a diffusers timestep, not a time: timestep i is time \(i \+ 1\) / N, "
                                         r"process\.time_of_timestep\(950\) = 0\.951$"):
        convert(x, x, 950, DDPM(), "v", "eps")
    with pytest.raises(ValueError, match=r"time_of_timestep\(36\) = 0\.74$"):  # N = 50; an array of timesteps
        coefficients(np.array([0.5, 12, 36]), DDPM(num_train_timesteps=50), "eps", "score")
    p = DDPM()
    assert p.time_of_timestep(950) == 0.951
    # not timesteps: no pointer
    for t, process in [(1.5, DDPM()), (1000, DDPM()), (np.array([2.0, 950.5]), DDPM()), (950, VP())]:
        with pytest.raises(ValueError, match=r"^t must be <= 1\.0 \(the process's horizon T\), got max [0-9.]+$"):
            convert(np.ones((1 if np.ndim(t) == 0 else 2, 2)), np.ones((1 if np.ndim(t) == 0 else 2, 2)), t,
                    process, "v", "eps")


# -- results beyond float range, and a kind to itself ----------------------------------------


def test_a_result_beyond_its_dtype_raises_naming_the_row():
    """Finite input, finite coefficients, but the product overflows (eps -> score is -eps / sigma
    at sigma = 1e-10; x0 -> score is (x0 - x) / sigma^2 in float32): a ValueError naming the
    row and t, never an inf returned."""
    x = np.ones((3, 2))
    value = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1e300]])
    with pytest.raises(ValueError, match=r"^converting eps to score overflows float64 at row 2 \(t = 1e-10: "
                                         r"score = A x \+ B eps with A = 0, B = -1e\+10\)"):
        convert(value, x, 1e-10, EDM(), "eps", "score")
    x32, v32 = np.zeros((2, 1), np.float32), np.ones((2, 1), np.float32)
    with pytest.raises(ValueError, match=r"^converting x0 to score overflows float32 at row 0 .*or float64 x and value$"):
        convert(v32, x32, 1e-20, EDM(), "x0", "score")
    # in float64 the same conversion is finite
    assert np.all(np.isfinite(convert(v32.astype(np.float64), x32, 1e-20, EDM(), "x0", "score")))


@pytest.mark.parametrize("process", PROCESSES, ids=IDS)
def test_a_kind_to_itself_is_the_identity_at_every_time(process):
    """score -> score at sigma_t = 0 (t = 0: the data's score) is the score itself; so for
    every kind at every time, t = 0 included, and the value comes back bit for bit."""
    far = 300.0 if np.isinf(process.t_max) else process.t_max
    t = np.array([0.0, 1e-300, 0.5 * far, far])
    x, value = np.random.default_rng(5).standard_normal((2, t.size, 3))
    for k in KINDS:
        A, B = coefficients(t, process, k, k)
        assert np.array_equal(A, np.zeros(t.size)) and np.array_equal(B, np.ones(t.size)), k
        assert np.array_equal(convert(value, x, t, process, k, k), value), k
        assert coefficients(0.0, process, k, k) == (0.0, 1.0)


def test_undefined_conversion_message_shows_plain_numbers():
    with pytest.raises(ValueError, match=r"\(alpha_t = 1\.0, sigma_t = 0\.0\); use a time inside the open range$"):
        coefficients(0.0, OU(), "eps", "score")


def test_predict_takes_a_list_of_rows_for_every_kind():
    """target.predict(x) with x a nested list, as target.score takes it: every kind, not only
    score and eps (x0, v and velocity read x.dtype), equal to the array's."""
    from sgm_ref import GaussianMixture
    g = GaussianMixture.ring()
    rows = [[0.0, 1.0], [0.5, -0.25]]
    for process, t in [(OU(), 0.5), (EDM(), 2.0), (FlowMatching(), 0.3)]:
        for k in KINDS:
            got = g.predict(rows, t, process, k)
            assert np.array_equal(got, g.predict(np.array(rows), t, process, k)), (process, k)
            assert got.dtype == np.float64


def test_an_overflow_of_large_values_is_not_blamed_on_the_time():
    """x0 -> eps on EDM at sigma = 1 is x - x0 (A = 1, B = -1): nothing singular about t, the
    values overflow. The message said "use a time further from where the conversion is
    singular", which does not help there (a review); it says to rescale the values."""
    x = np.full((2, 2), 1e308)
    with pytest.raises(ValueError, match=r"^converting x0 to eps overflows float64 at row 0 \(t = 1\.0: eps = A x "
                                         r"\+ B x0 with A = 1, B = -1\); x and value are too large for it: "
                                         r"rescale them$"):
        convert(-x, x, 1.0, EDM(), "x0", "eps")
    x32 = np.full((1, 1), 3e38, np.float32)
    with pytest.raises(ValueError, match=r"\(t = 1\.0: .*\); x and value are too large for it: rescale them, or "
                                         r"float64 x and value$"):
        convert(-x32, x32, 1.0, EDM(), "x0", "eps")
    # large coefficients (sigma = 1e-10): the time is what to change, as before
    with pytest.raises(ValueError, match=r"B = -1e\+10\); use a time further from where the conversion is singular$"):
        convert(np.full((1, 1), 1e300), np.ones((1, 1)), 1e-10, EDM(), "eps", "score")


@pytest.mark.parametrize("t", [800.0, 746.0, 1e4])
def test_eps_and_score_convert_where_alpha_underflows(t):
    """score = -eps / sigma needs sigma_t > 0 only: on OU beyond t ~ 745 alpha_t = e^-t
    underflows to 0 and the minors' ratio (-alpha / sigma) / alpha was 0 / 0, refused as
    "not defined there" at a time inside OU's range. Against mpmath's sigma_t."""
    with mp.workdps(50):
        sigma = mp.sqrt(-mp.expm1(-2 * mp.mpf(t)))
        expected = {("eps", "score"): float(-1 / sigma), ("score", "eps"): float(-sigma)}
    assert float(OU().alpha(t)) == 0.0
    x, v = np.random.default_rng(4).standard_normal((2, 3, 2))
    for (k1, k2), b in expected.items():
        A, B = coefficients(t, OU(), k1, k2)
        assert A == 0.0 and B == b
        assert np.array_equal(convert(v, x, t, OU(), k1, k2), b * v)


@pytest.mark.parametrize("process, t", [(OU(), 800.0), (OU(), 1e300), (VP(0.1, 2960.0), 0.99),
                                        (VP(0.1, 2960.0), 0.9995)])
def test_the_probability_flow_drift_where_alpha_underflows(process, t):
    """velocity = f x - (g^2 / 2) score = f x + g^2 / (2 sigma) eps (the probability-flow
    ODE's drift) has finite coefficients wherever sigma_t > 0. Taken as ratios of minors that
    all scale with alpha_t, they were 0 / 0 where alpha underflows (OU beyond t ~ 745:
    refused as "not defined there") and kept only a subnormal alpha's bits (3.6e-13 of f on
    VP(0.1, 2960) at t = 0.99, alpha = 1e-315). Against mpmath's beta and sigma."""
    with mp.workdps(50):
        tm = mp.mpf(t)
        if isinstance(process, OU):
            beta, B = mp.mpf(2), 2 * tm
        else:
            lo, hi = mp.mpf(process.beta_min), mp.mpf(process.beta_max)
            beta, B = lo + tm * (hi - lo), lo * tm + tm * tm * (hi - lo) / 2
        sigma = mp.sqrt(-mp.expm1(-B))
        f, half_g2 = -beta / 2, beta / 2
        expected = {("score", "velocity"): (f, -half_g2), ("eps", "velocity"): (f, half_g2 / sigma),
                    ("velocity", "score"): (f / half_g2, -1 / half_g2),
                    ("velocity", "eps"): (-f * sigma / half_g2, sigma / half_g2)}
        expected = {k: (float(a), float(b)) for k, (a, b) in expected.items()}
    assert float(process.alpha(t)) < 2.3e-308  # subnormal or 0
    x, v = np.random.default_rng(6).standard_normal((2, 3, 2))
    for (k1, k2), (a, b) in expected.items():
        A, B = coefficients(t, process, k1, k2)
        assert A == pytest.approx(a, rel=4 * EPS, abs=0) and B == pytest.approx(b, rel=4 * EPS, abs=0), (k1, k2)
        np.testing.assert_allclose(convert(v, x, t, process, k1, k2), a * x + b * v, rtol=8 * EPS, atol=0)


@pytest.mark.parametrize("process", [OU(), VE(), EDM(), FlowMatching()], ids=repr)
def test_no_rows_with_a_per_row_t_convert_to_no_rows(process):
    """x of shape (0, d) with t of shape (0,), one time per row: convert checked t against
    n = 0 and then passed it to coefficients, which (with no n) refused the empty t as 't must
    be a scalar or have shape (n,), got shape (0,)'; a scalar t worked. It broke the probability
    flow off the variance-preserving processes (its replay converts per row) on no points."""
    for dtype in (np.float64, np.float32):
        for from_, to in itertools.permutations(KINDS, 2):
            out = convert(np.zeros((0, 3), dtype), np.zeros((0, 3), dtype), np.zeros(0), process, from_, to)
            assert out.shape == (0, 3) and out.dtype == dtype
    with pytest.raises(ValueError, match=r"one value per row, shape \(0,\)"):  # t is still checked against n
        convert(np.zeros((0, 3)), np.zeros((0, 3)), np.ones(2) / 2, process)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers' own imports
def test_flow_matching_is_the_frame_of_diffusers_flow_match_euler():
    """FlowMatching's x_t = (1 - t) x0 + t z is diffusers' FlowMatchEulerDiscreteScheduler's
    scale_noise at sigma = t, and its velocity (here converted from eps = z) is the model output
    that scheduler steps with, d x_t / dt = z - x0: each of its Euler steps from x_t lands on x_s
    of the same (x0, z), to float32's rounding (the scheduler steps in float32). A sign or frame
    error (x0 - z, alpha and sigma swapped, the velocity of x0 - z) lands O(1) away. No test held
    FlowMatching against the installed peer. (sigma = 1, its first timestep, is t = 1, outside
    FlowMatching's range: the steps from the second on.)"""
    from _peers import peer

    torch, diffusers = peer("torch"), peer("diffusers")
    stepper, noiser = (diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000) for _ in range(2))
    stepper.set_timesteps(10)
    noiser.set_timesteps(10)
    x0, z = np.random.default_rng(29).standard_normal((2, 6, 3))
    fm = FlowMatching()
    for k in range(1, 10):
        timestep, t, s = stepper.timesteps[k], float(stepper.sigmas[k]), float(stepper.sigmas[k + 1])
        alpha, sigma = fm.marginal(t)
        xt = noiser.scale_noise(torch.from_numpy(x0), timestep[None], torch.from_numpy(z)).numpy()
        np.testing.assert_allclose(xt, alpha * x0 + sigma * z, rtol=4 * EPS, atol=4 * EPS)
        velocity = convert(z, xt, t, fm, "eps", "velocity")
        np.testing.assert_allclose(velocity, z - x0, rtol=0, atol=64 * EPS)
        out = stepper.step(torch.from_numpy(velocity), timestep, torch.from_numpy(xt)).prev_sample.numpy()
        np.testing.assert_allclose(out, (1 - s) * x0 + s * z, rtol=0, atol=8 * 2.0**-24 * np.abs(xt).max())


def test_a_refusal_says_whether_the_conversion_is_undefined_or_its_coefficients_overflow():
    """Review: every refusal ended "use a time inside the open range", also where the time is
    inside it and only the affine map's coefficients overflow (EDM's x0 -> v at sigma 1e160:
    v = -sigma x0 may well be finite)."""
    with pytest.raises(ValueError, match=r"converting x0 to v is not defined there or overflows float64 .*"
                                         r"sigma_t = 1e\+160\); the coefficients A\(t\), B\(t\) of the affine map "
                                         r"are beyond float64's range there"):
        coefficients(np.array([1e160]), EDM(), "x0", "v")
    with pytest.raises(ValueError, match=r"converting score to x0 is not defined there .*sigma_t = 0.0\); use a time "
                                         r"inside the open range$"):
        coefficients(np.array([0.0]), VP(), "score", "x0")
