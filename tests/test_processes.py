"""Tests for sgm_ref.processes: the OU and VP forward processes.

References are computed independently of the library: alpha and beta from the closed
forms, sigma from a 60-digit decimal evaluation of sqrt(1 - exp(-B(t))).
"""

import decimal
import math

import numpy as np
import pytest

from sgm_ref import OU, VP

EPS = np.finfo(np.float64).eps

# (process, admissible times) for every process under test
VP_DEFAULT = VP()  # beta_min = 0.1, beta_max = 20
VP_ZERO_MIN = VP(0.0, 20.0)
VP_GENTLE = VP(0.1, 0.2)
PROCESSES = [OU(), VP_DEFAULT, VP_ZERO_MIN, VP_GENTLE, VP(2.0, 2.0)]
PROCESS_IDS = ["OU", "VP(0.1,20)", "VP(0,20)", "VP(0.1,0.2)", "VP(2,2)"]

TIMES_OU = np.array([0.0, 1e-300, 1e-10, 1e-5, 0.01, 0.3, 1.0, 2.5, 5.0, 30.0])
TIMES_VP = np.array([0.0, 1e-300, 1e-10, 1e-5, 0.01, 0.3, 0.5, 0.9, 1.0])


def _times(process):
    return TIMES_OU if isinstance(process, OU) else TIMES_VP


def _beta_min_max(process):
    return (2.0, 2.0) if isinstance(process, OU) else (process.beta_min, process.beta_max)


def _integrated_beta_ref(process, t):
    """B(t) = beta_min t + t^2 (beta_max - beta_min) / 2, written out independently."""
    bmin, bmax = _beta_min_max(process)
    return bmin * t + 0.5 * t * t * (bmax - bmin)


def _sigma_decimal(process, t):
    """sigma_t = sqrt(1 - exp(-B(t))) in 60-digit decimal arithmetic, rounded to float.

    The float inputs (t, beta_min, beta_max) are converted to Decimal exactly; for small B
    the power series of 1 - exp(-B) avoids the cancellation that would otherwise need
    more digits than any fixed precision.
    """
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        D = decimal.Decimal
        bmin, bmax = (D(v) for v in _beta_min_max(process))
        tt = D(float(t))
        B = bmin * tt + tt * tt * (bmax - bmin) / 2
        if B == 0:
            return 0.0
        if B < D("0.5"):
            total, term, k = D(0), B, 1
            while abs(term) > B * D(10) ** -58:
                total += term
                k += 1
                term = -term * B / k
            one_minus = total
        else:
            one_minus = 1 - (-B).exp()
        return float(one_minus.sqrt())


# -- formulas -----------------------------------------------------------------------


def test_ou_alpha_is_exp_minus_t():
    t = TIMES_OU
    np.testing.assert_allclose(OU().alpha(t), np.exp(-t), rtol=2 * EPS, atol=0)


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_alpha_closed_form(process):
    t = _times(process)
    bmin, bmax = _beta_min_max(process)
    ref = np.exp(-0.5 * (bmin * t + 0.5 * t**2 * (bmax - bmin)))
    # B differs from the reference by a few ulps at most (different operation order),
    # so alpha differs by a few ulps times B/2 <= 5.05 (VP) or 15 (OU at t=30)
    np.testing.assert_allclose(process.alpha(t), ref, rtol=40 * EPS, atol=0)


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_beta_and_integrated_beta_closed_form(process):
    t = _times(process)
    bmin, bmax = _beta_min_max(process)
    np.testing.assert_allclose(process.beta(t), bmin + t * (bmax - bmin), rtol=2 * EPS, atol=0)
    np.testing.assert_allclose(
        process.integrated_beta(t), _integrated_beta_ref(process, t), rtol=4 * EPS, atol=0
    )


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_sigma_against_high_precision(process):
    for t in _times(process):  # t = 1e-300 included: B(t) underflows for VP(0, 20), sigma_t does not
        ref = _sigma_decimal(process, t)
        got = process.sigma(t)
        if ref == 0.0:
            assert got == 0.0
        else:
            assert abs(got - ref) <= 1e-14 * ref, (t, got, ref)


@pytest.mark.parametrize("process", [OU(), VP_DEFAULT, VP_ZERO_MIN], ids=["OU", "VP", "VP(0,20)"])
def test_sigma_keeps_relative_precision_at_tiny_t(process):
    t = 1e-10
    bmin, bmax = _beta_min_max(process)
    # sigma^2 = 1 - exp(-B) = B - B^2/2 + B^3/6 - ..., B tiny: three terms are exact in float
    B = bmin * t + 0.5 * t * t * (bmax - bmin)
    ref = np.sqrt(B - B * B / 2 + B**3 / 6)
    assert abs(process.sigma(t) - ref) <= 1e-14 * ref
    # the naive 1 - alpha^2 loses about 6 digits here: make sure we are not testing that
    naive = np.sqrt(1.0 - np.exp(-B))
    assert abs(naive - ref) > 1e-10 * ref


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_alpha_sigma_complementary(process):
    t = _times(process)
    a, s = process.alpha(t), process.sigma(t)
    np.testing.assert_allclose(a**2 + s**2, 1.0, rtol=0, atol=4 * EPS)
    a2, s2 = process.marginal(t)
    assert np.array_equal(a2, a) and np.array_equal(s2, s)


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_scalar_and_per_row_times_agree(process):
    t = np.random.default_rng(0).uniform(0.0, 1.0, size=37)
    for name in ("alpha", "sigma", "beta", "integrated_beta"):
        f = getattr(process, name)
        rows = f(t)
        assert rows.shape == (37,) and rows.dtype == np.float64
        assert np.array_equal(rows, np.array([f(float(ti)) for ti in t])), name
        scalar = f(0.25)
        assert np.ndim(scalar) == 0 and np.asarray(scalar).dtype == np.float64
    a, s = process.marginal(t)
    assert a.shape == s.shape == (37,)


def test_vp_2_2_is_ou_on_unit_interval():
    vp, ou = VP(2.0, 2.0), OU()
    t = np.concatenate([TIMES_VP, np.random.default_rng(1).uniform(0, 1, 50)])
    for name in ("alpha", "sigma", "beta", "integrated_beta"):
        assert np.array_equal(getattr(vp, name)(t), getattr(ou, name)(t)), name
    x0 = np.random.default_rng(2).standard_normal((50, 4))
    for tt in (0.37, t[-50:]):
        xa, za = vp.perturb(x0, tt, np.random.default_rng(3))
        xb, zb = ou.perturb(x0, tt, np.random.default_rng(3))
        assert np.array_equal(xa, xb) and np.array_equal(za, zb)
    a = np.linspace(ou.alpha(1.0), 1.0, 20)
    assert np.array_equal(vp.time_of(a), ou.time_of(a))


# -- perturb ------------------------------------------------------------------------


@pytest.mark.parametrize("process", [OU(), VP_DEFAULT], ids=["OU", "VP"])
def test_perturb_moments(process):
    n = 20_000
    x0_row = np.array([1.5, -2.0, 0.0, 0.3])
    t = 0.2
    xt, _ = process.perturb(np.tile(x0_row, (n, 1)), t, np.random.default_rng(11))
    a, s = np.exp(-0.5 * _integrated_beta_ref(process, t)), _sigma_decimal(process, t)
    # tolerance: 4 standard errors per coordinate (fixed seed);
    # SE(mean) = sigma / sqrt(n), SE(std) ~ sigma / sqrt(2 (n - 1)) for Gaussian data
    se_mean = s / np.sqrt(n)
    se_std = s / np.sqrt(2 * (n - 1))
    assert np.all(np.abs(xt.mean(axis=0) - a * x0_row) <= 4 * se_mean)
    assert np.all(np.abs(xt.std(axis=0, ddof=1) - s) <= 4 * se_std)
    # the stated tolerance is not vacuous: a mean of x0 itself would be rejected
    assert np.any(np.abs(xt.mean(axis=0) - x0_row) > 4 * se_mean)


def test_perturb_moments_per_row_times():
    process = OU()
    n_per = 10_000
    times = np.array([0.05, 0.7, 3.0])
    t = np.repeat(times, n_per)
    x0 = np.tile([[2.0, -1.0]], (t.size, 1))
    xt, _ = process.perturb(x0, t, np.random.default_rng(12))
    for i, ti in enumerate(times):
        block = xt[i * n_per : (i + 1) * n_per]
        a, s = np.exp(-ti), _sigma_decimal(process, ti)
        # tolerance: 4 standard errors (fixed seed), as in test_perturb_moments
        assert np.all(np.abs(block.mean(axis=0) - a * x0[0]) <= 4 * s / np.sqrt(n_per))
        assert np.all(np.abs(block.std(axis=0, ddof=1) - s) <= 4 * s / np.sqrt(2 * (n_per - 1)))


@pytest.mark.parametrize("process", [OU(), VP_DEFAULT], ids=["OU", "VP"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_perturb_returns_its_noise(process, dtype):
    rng = np.random.default_rng(5)
    x0 = rng.standard_normal((30, 3)).astype(dtype)
    for t in (0.4, rng.uniform(0, 1, 30)):
        xt, z = process.perturb(x0, t, np.random.default_rng(6))
        assert xt.dtype == dtype and z.dtype == dtype and xt.shape == z.shape == x0.shape
        a = np.asarray(process.alpha(t), dtype=dtype)
        s = np.asarray(process.sigma(t), dtype=dtype)
        if a.ndim:
            a, s = a[:, None], s[:, None]
        assert np.array_equal(xt, a * x0 + s * z)
        # z is the generator's standard normal stream, in the dtype of x0
        assert np.array_equal(z, np.random.default_rng(6).standard_normal(x0.shape, dtype=dtype))


def test_perturb_at_time_zero_is_identity():
    x0 = np.random.default_rng(0).standard_normal((5, 3))
    xt, _ = OU().perturb(x0, 0.0, np.random.default_rng(1))
    assert np.array_equal(xt, x0)


def test_perturb_promotes_integers_to_float64():
    xt, z = OU().perturb(np.arange(6).reshape(3, 2), 0.1, np.random.default_rng(0))
    assert xt.dtype == np.float64 and z.dtype == np.float64


@pytest.mark.parametrize("process", [OU(), VP_DEFAULT], ids=["OU", "VP"])
def test_same_seed_same_bits(process):
    x0 = np.random.default_rng(0).standard_normal((40, 5))
    t = np.random.default_rng(1).uniform(0, 1, 40)
    first = process.perturb(x0, t, np.random.default_rng(123))
    second = process.perturb(x0, t, np.random.default_rng(123))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(first, second))
    other = process.perturb(x0, t, np.random.default_rng(124))
    assert not np.array_equal(first[0], other[0])
    p1 = process.prior(10, 3, np.random.default_rng(9))
    p2 = process.prior(10, 3, np.random.default_rng(9))
    assert p1.tobytes() == p2.tobytes()


# -- prior --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_prior_shape_dtype_and_stream(dtype):
    x = OU().prior(7, 3, np.random.default_rng(4), dtype=dtype)
    assert x.shape == (7, 3) and x.dtype == dtype
    assert np.array_equal(x, np.random.default_rng(4).standard_normal((7, 3), dtype=dtype))
    assert VP().prior(1, 1, np.random.default_rng(0)).dtype == np.float64
    assert OU().prior(np.int64(2), np.int32(2), np.random.default_rng(0)).shape == (2, 2)
    for name, dt in (("float", np.float64), ("float32", np.float32), ("f8", np.float64)):
        assert OU().prior(2, 2, np.random.default_rng(0), dtype=name).dtype == dt


def test_prior_moments():
    n = 20_000
    x = OU().prior(n, 3, np.random.default_rng(21))
    # tolerance: 4 standard errors (fixed seed); SE(mean) = 1/sqrt(n), SE(var) = sqrt(2/(n-1))
    assert np.all(np.abs(x.mean(axis=0)) <= 4 / np.sqrt(n))
    assert np.all(np.abs(x.var(axis=0, ddof=1) - 1.0) <= 4 * np.sqrt(2 / (n - 1)))


# -- time_of --------------------------------------------------------------------------


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_time_of_inverts_alpha(process):
    t_max = 5.0 if isinstance(process, OU) else 1.0
    t = np.linspace(0.0, t_max, 201)[1:-1]
    back = process.time_of(process.alpha(t))
    assert back.shape == t.shape
    # alpha is known to ~1 ulp; dt = d(log alpha) / (beta / 2), so the attainable error in
    # t is a few eps / (beta(t) / 2) plus the rounding of t itself
    tol = 8 * EPS / (0.5 * process.beta(t)) + 4 * EPS * t
    assert np.all(np.abs(back - t) <= tol)
    # the other direction is well conditioned whatever beta is
    a = np.linspace(process.alpha(t_max), 1.0, 101)[1:]
    np.testing.assert_allclose(process.alpha(process.time_of(a)), a, rtol=8 * EPS, atol=0)
    # scalars map to scalars
    s = process.time_of(float(a[50]))
    assert np.ndim(s) == 0


@pytest.mark.parametrize("process", PROCESSES, ids=PROCESS_IDS)
def test_time_of_endpoints(process):
    assert process.time_of(1.0) == 0.0
    if isinstance(process, VP):
        # alpha(t_max) itself must map back to t_max (not be rejected by one rounding)
        t = process.time_of(process.alpha(1.0))
        assert abs(t - 1.0) <= 1e-12


def test_time_of_takes_the_correctly_rounded_alpha_of_t_max():
    """alpha_1 of VP and alpha(t_max) of VPCosine rounded from 50 digits sit an ulp below the
    library's own alpha(t_max): time_of refused them ("alpha is below alpha(t_max)", a review)
    while time_of_log_snr takes an end point past by a rounding. One clearly below still raises."""
    with mpmath.workdps(50):
        vp = mpmath.exp(-(mpmath.mpf("0.1") + mpmath.mpf("19.9") / 2) / 2)
        s = mpmath.mpf(0.008)
        cos = (mpmath.cos((mpmath.mpf(1.0 - 1e-5) + s) / (1 + s) * mpmath.pi / 2)
               / mpmath.cos(s / (1 + s) * mpmath.pi / 2))
    for process, alpha in ((VP(), float(vp)), (VPCosine(), float(cos))):
        assert alpha < process.alpha(process.t_max)
        assert process.time_of(alpha) == pytest.approx(process.t_max, rel=1e-12, abs=0)
        with pytest.raises(ValueError, match="alpha is below alpha"):
            process.time_of(alpha * (1 - 1e-9))


def test_time_of_converts_between_processes():
    s = np.linspace(0.01, 1.0, 50)
    t_ou = OU().time_of(VP().alpha(s))
    np.testing.assert_allclose(OU().sigma(t_ou), VP().sigma(s), rtol=1e-13, atol=0)


@pytest.mark.parametrize("alpha", [0.0, -0.5, 1.5, np.nan, np.inf, True, "0.5", 0.5 + 0j])
def test_time_of_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="alpha"):
        OU().time_of(alpha)


@pytest.mark.parametrize("process", [OU(), VP()], ids=["OU", "VP"])
def test_integrated_beta_between_checks_its_interval(process):
    with pytest.raises(ValueError, match="t_hi must be >= t_lo"):
        process.integrated_beta_between(0.1, 0.5)
    with pytest.raises(ValueError, match="one shape"):
        process.integrated_beta_between(np.array([0.5, 0.6]), np.array([0.1]))
    with pytest.raises(ValueError, match="t_lo must be >= 0"):
        process.integrated_beta_between(0.5, -0.1)
    assert process.integrated_beta_between(0.5, 0.5) == 0.0


def test_time_of_rejects_alpha_below_vp_horizon():
    with pytest.raises(ValueError, match="alpha"):
        VP().time_of(0.5 * VP().alpha(1.0))


# -- serialisation ----------------------------------------------------------------------


def test_process_dict_round_trip():
    from sgm_ref.processes import process_from_dict

    for p in (OU(), VP(), VP(0.0, 5.0)):
        q = process_from_dict(p.to_dict())
        assert q == p and type(q) is type(p)
    with pytest.raises(ValueError, match="process"):
        process_from_dict({"name": "nope"})


# -- bad input: one test each, the message names the argument -------------------------


def _time_entry_points(process, t):
    """Zero-argument calls of every public method that takes t, each with this t."""
    x0 = np.zeros((3, 2))
    return [
        lambda: process.alpha(t),
        lambda: process.sigma(t),
        lambda: process.beta(t),
        lambda: process.integrated_beta(t),
        lambda: process.marginal(t),
        lambda: process.perturb(x0, t, np.random.default_rng(0)),
    ]


@pytest.mark.parametrize("process", [OU(), VP()], ids=["OU", "VP"])
@pytest.mark.parametrize("t", [-1e-12, -1.0, np.array([0.1, -0.2, 0.3])])
def test_negative_t_raises(process, t):
    for call in _time_entry_points(process, t):
        with pytest.raises(ValueError, match=r"^t must be >= 0"):
            call()


@pytest.mark.parametrize("process", [OU(), VP()], ids=["OU", "VP"])
@pytest.mark.parametrize("t", [np.nan, np.inf, -np.inf, np.array([0.1, np.nan, 0.3])])
def test_non_finite_t_raises(process, t):
    for call in _time_entry_points(process, t):
        with pytest.raises(ValueError, match=r"^t must be finite"):
            call()


@pytest.mark.parametrize("t", [1.0 + 1e-15, 2.0, np.array([0.5, 1.5, 0.2])])
def test_vp_t_beyond_horizon_raises(t):
    for call in _time_entry_points(VP(), t):
        with pytest.raises(ValueError, match=r"^t must be <= 1"):
            call()
    # while OU accepts the same times
    OU().alpha(t)


@pytest.mark.parametrize("length", [2, 4])
def test_per_row_t_wrong_length_raises(length):
    x0 = np.zeros((3, 2))
    with pytest.raises(ValueError, match=r"^t must be a scalar or have one value per row"):
        OU().perturb(x0, np.full(length, 0.5), np.random.default_rng(0))


def test_t_of_bad_kind_raises():
    with pytest.raises(ValueError, match=r"^t must be"):
        OU().alpha(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"^t must be"):
        OU().alpha("0.5")


@pytest.mark.parametrize("x0", [np.zeros(3), np.zeros((2, 2, 2)), np.float64(1.0)])
def test_perturb_x0_not_2d_raises(x0):
    with pytest.raises(ValueError, match=r"^x0 must have shape \(n, d\)"):
        OU().perturb(x0, 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_perturb_x0_non_finite_raises(bad):
    x0 = np.zeros((3, 2))
    x0[1, 1] = bad
    with pytest.raises(ValueError, match=r"^x0 contains 1 non-finite"):
        OU().perturb(x0, 0.5, np.random.default_rng(0))


def test_perturb_x0_bad_dtype_raises():
    with pytest.raises(ValueError, match=r"^x0 must be a float64 or float32"):
        OU().perturb(np.zeros((3, 2), dtype=np.float16), 0.5, np.random.default_rng(0))


@pytest.mark.parametrize("rng", [0, None, np.random.RandomState(0), "seed"])
def test_rng_not_a_generator_raises(rng):
    with pytest.raises(ValueError, match=r"^rng must be a numpy.random.Generator"):
        OU().perturb(np.zeros((3, 2)), 0.5, rng)
    with pytest.raises(ValueError, match=r"^rng must be a numpy.random.Generator"):
        VP().prior(3, 2, rng)


@pytest.mark.parametrize("n", [0, -1, 2.0, 2.5, True, "3", None])
def test_prior_bad_n_raises(n):
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1"):
        OU().prior(n, 2, np.random.default_rng(0))


@pytest.mark.parametrize("d", [0, 1.0, False])
def test_prior_bad_d_raises(d):
    with pytest.raises(ValueError, match=r"^d must be an integer >= 1"):
        OU().prior(2, d, np.random.default_rng(0))


@pytest.mark.parametrize("dtype", [np.int64, np.float16, np.complex128, object, "nonsense"])
def test_prior_dtype_not_float_raises(dtype):
    with pytest.raises(ValueError, match=r"^dtype must be float64 or float32"):
        OU().prior(2, 2, np.random.default_rng(0), dtype=dtype)


@pytest.mark.parametrize("beta_min", [-0.1, -1e-300, np.nan, np.inf])
def test_vp_bad_beta_min_raises(beta_min):
    with pytest.raises(ValueError, match=r"^beta_min must be (finite|>= 0)"):
        VP(beta_min, 20.0)


@pytest.mark.parametrize("beta_max", [-1.0, np.nan, np.inf])
def test_vp_bad_beta_max_raises(beta_max):
    with pytest.raises(ValueError, match=r"^beta_max must be (finite|>= 0)"):
        VP(0.0, beta_max)


def test_vp_beta_max_below_beta_min_raises():
    with pytest.raises(ValueError, match=r"^beta_max must be >= beta_min"):
        VP(5.0, 4.0)


def test_vp_beta_max_zero_raises():
    with pytest.raises(ValueError, match=r"^beta_max must be > 0"):
        VP(0.0, 0.0)


@pytest.mark.parametrize("value", ["1", None, True, [1.0]])
def test_vp_beta_not_a_number_raises(value):
    with pytest.raises(ValueError, match=r"^beta_min must be a real number"):
        VP(value, 20.0)
    with pytest.raises(ValueError, match=r"^beta_max must be a real number"):
        VP(0.1, value)


@pytest.mark.parametrize("process", [OU(), VP(), VP(0.1, 0.2)], ids=repr)
def test_integrated_beta_between_is_the_step_integral(process):
    """The integral over a small step, exactly, where B(t_hi) - B(t_lo) cancels."""
    from fractions import Fraction as F

    t_hi, t_lo = 0.9, 0.9 - 1e-7
    # beta is linear: its integral in exact rational arithmetic from the float inputs
    b0, b1 = (F(2), F(2)) if isinstance(process, OU) else (F(process.beta_min), F(process.beta_max))
    hi, lo = F(t_hi), F(t_lo)
    exact = float(b0 * (hi - lo) + (b1 - b0) * (hi * hi - lo * lo) / 2)
    between = process.integrated_beta_between(t_hi, t_lo)
    assert abs(between - exact) <= 4e-16 * exact
    if isinstance(process, VP):  # (for OU, 2 t_hi - 2 t_lo is exact by Sterbenz's lemma)
        difference = process.integrated_beta(t_hi) - process.integrated_beta(t_lo)
        assert abs(difference - exact) > 100 * max(abs(between - exact), 1e-30)  # what the direct form avoids
    grid = np.linspace(1.0, 0.01, 7)
    np.testing.assert_allclose(process.integrated_beta_between(grid[:-1], grid[1:]),
                               np.diff(-process.integrated_beta(grid)), rtol=1e-12)


def test_process_from_dict_needs_both_betas():
    from sgm_ref.processes import process_from_dict

    assert process_from_dict(VP(0.3, 5.0).to_dict()) == VP(0.3, 5.0)
    with pytest.raises(ValueError, match="beta_min and beta_max"):
        process_from_dict({"name": "VP", "beta_min": 0.1})


def test_huge_integer_parameter_is_a_value_error():
    with pytest.raises(ValueError, match="beta_max must be finite"):
        VP(0.1, 10**400)


# == every linear Gaussian process (issue 12) ==========================================
#
# The references below are written from the papers' formulas in 50-digit mpmath, with
# derivatives by mpmath's numerical differentiation: independent of the library's
# cancellation-free rewrites.

import itertools

import mpmath
from _ddpm_mp import integrated_beta_mp  # noqa: E402  (tests/ is on sys.path)

from sgm_ref.processes import (DDPM, EDM, VE, FlowMatching, LinearGaussianProcess, SubVP, VPCosine,
                               check_process, convert_time)

mp = mpmath.mp

ALL_PROCESSES = [OU(), VP(), VP(0.0, 20.0), VPCosine(), VPCosine(s=0.02, t_max=0.9),
                 DDPM(), DDPM("scaled_linear", 0.00085, 0.012), DDPM("squaredcos_cap_v2"),
                 DDPM("squaredcos_cap_v2", num_train_timesteps=50),
                 SubVP(), VE(), VE(0.002, 80.0), EDM(), EDM(t_max=80.0), FlowMatching(), FlowMatching(t_max=0.5)]
ALL_IDS = [repr(p) for p in ALL_PROCESSES]


def _mp_alpha_sigma(p, t):
    """(alpha_t, sigma_t) of process p at mp time t, from the defining formulas."""
    if isinstance(p, (OU, VP, SubVP)):
        bmin, bmax = (2, 2) if isinstance(p, OU) else (mp.mpf(p.beta_min), mp.mpf(p.beta_max))
        B = bmin * t + t * t * (bmax - bmin) / 2
        if isinstance(p, SubVP):
            return mp.exp(-B / 2), -mp.expm1(-B)
        return mp.exp(-B / 2), mp.sqrt(-mp.expm1(-B))
    if isinstance(p, VPCosine):
        s = mp.mpf(p.s)
        a = mp.cos((t + s) / (1 + s) * mp.pi / 2) / mp.cos(s / (1 + s) * mp.pi / 2)
        return a, mp.sqrt(1 - a * a)
    if isinstance(p, DDPM):  # piecewise-constant rate -N log(1 - beta_j) on [j/N, (j+1)/N)
        N, betas = p.num_train_timesteps, p.betas()
        j = min(int(mp.floor(t * N)), N - 1)
        B = sum(-mp.log(1 - mp.mpf(b)) for b in betas[:j]) - (t * N - j) * mp.log(1 - mp.mpf(betas[j]))
        return mp.exp(-B / 2), mp.sqrt(-mp.expm1(-B))
    if isinstance(p, VE):
        return mp.mpf(1), mp.mpf(p.sigma_min) * (mp.mpf(p.sigma_max) / mp.mpf(p.sigma_min)) ** t
    if isinstance(p, EDM):
        return mp.mpf(1), t
    if isinstance(p, FlowMatching):
        return 1 - t, t
    raise TypeError(p)


def _time_grid(p, n_inner=60):
    """Times over the whole range: 0, tiny ones, an inner grid and the far end."""
    far = 300.0 if np.isinf(p.t_max) else p.t_max
    tiny = [1e-300, 1e-200, 1e-100, 1e-30, 1e-12, 1e-6]
    ends = [far * (1 - 1e-12), far * (1 - 1e-6), far]
    return np.unique(np.concatenate([[0.0], tiny, np.linspace(0.0, far, n_inner)[1:], ends]))


def _dlog_snr(process, t):
    """d lambda / dt = -2 W / (alpha sigma)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return -2.0 * process._w(t) / (process._alpha(t) * process._sigma(t))


def _rel(got, ref):
    return abs(got - ref) / abs(ref) if ref != 0 else abs(got)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=ALL_IDS)
def test_marginal_against_high_precision(process):
    with mp.workdps(50):
        for t in _time_grid(process, 25):
            a, s = _mp_alpha_sigma(process, mp.mpf(t))
            alpha, sigma = process.marginal(t)
            assert _rel(alpha, a) <= 1e-14 and _rel(sigma, s) <= 1e-14, (t, alpha, a, sigma, s)
            if s * s > mp.mpf(np.finfo(float).tiny):  # sigma^2 itself representable
                assert _rel(process.sigma2(t), s * s) <= 1e-14, t


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=ALL_IDS)
def test_drift_diffusion_and_derivatives_against_high_precision(process):
    """f = d log alpha/dt and g^2 = d sigma^2/dt - 2 f sigma^2, from mpmath derivatives."""
    far = 5.0 if np.isinf(process.t_max) else process.t_max
    # off the DDPM knots (beta jumps there) and inside the range
    for t in far * np.array([1e-6, 0.01234, 0.3105, 0.5775, 0.90315, 0.99935]):
        with mp.workdps(50):
            a = mpmath.diff(lambda u: _mp_alpha_sigma(process, u)[0], mp.mpf(t))
            s = mpmath.diff(lambda u: _mp_alpha_sigma(process, u)[1], mp.mpf(t))
            al, si = _mp_alpha_sigma(process, mp.mpf(t))
            f = a / al
            g2 = mpmath.diff(lambda u: _mp_alpha_sigma(process, u)[1] ** 2, mp.mpf(t)) - 2 * f * si**2
        assert _rel(process.d_alpha(t), a) <= 1e-13, t
        assert _rel(process.d_sigma(t), s) <= 1e-13, t
        assert _rel(process.f(t), f) <= 1e-13, t
        assert _rel(process.g2(t), g2) <= 1e-13, t
        assert process.g2(t) > 0
        # the cancellation-free forms behind the conversions
        w, h = al * s - a * si, al * a + si * s
        assert abs(process._w(np.float64(t)) - w) <= 1e-13 * (abs(al * s) + abs(a * si))
        assert abs(process._half_dq(np.float64(t)) - h) <= 1e-13 * (abs(al * a) + abs(si * s))


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=ALL_IDS)
def test_log_snr_against_high_precision(process):
    with mp.workdps(50):
        for t in _time_grid(process, 25)[1:]:
            a, s = _mp_alpha_sigma(process, mp.mpf(t))
            lam = 2 * (mp.log(a) - mp.log(s))
            assert abs(process.log_snr(t) - lam) <= 1e-14 * (1 + abs(lam)), t
    lam0 = process.log_snr(0.0)
    assert lam0 == np.inf if not isinstance(process, VE) else np.isfinite(lam0)
    far = 300.0 if np.isinf(process.t_max) else process.t_max
    lam = process.log_snr(np.linspace(0.0, far, 500)[1:])
    assert np.all(np.diff(lam) < 0)  # strictly decreasing


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=ALL_IDS)
def test_time_log_snr_round_trip(process):
    """t -> lambda -> t to 1e-13 relative over the whole range, t -> 0 and the far end included.

    VE is the exception at t -> 0: its lambda(0) is finite, so lambda near 0 carries t only
    to eps |lambda| / |d lambda/dt| absolutely (lambda(1e-20) == lambda(0) in float64).
    """
    t = _time_grid(process, 400)
    back = process.time_of_log_snr(process.log_snr(t))
    assert back.shape == t.shape and back[0] == 0.0
    tol = 1e-13 * t
    if isinstance(process, VE):
        tol = tol + 4 * EPS * np.abs(process.log_snr(t)) / abs(2 * np.log(process.sigma_max / process.sigma_min))
    assert np.all(np.abs(back - t) <= tol), np.max(np.abs(back - t) / np.maximum(tol, 1e-300))
    # and lambda -> t -> lambda
    # and lambda -> t -> lambda, up to the rounding of t itself: where t is near 1 (FlowMatching,
    # VPCosine) a float64 t holds 1 - t only to eps absolutely, which moves lambda by eps lambda'
    lam = process.log_snr(t[1:])
    t_back = process.time_of_log_snr(lam)
    tol = 1e-13 * (1 + np.abs(lam)) + 4 * EPS * t_back * np.abs(_dlog_snr(process, t_back))
    assert np.all(np.abs(process.log_snr(t_back) - lam) <= tol)
    assert np.ndim(process.time_of_log_snr(float(lam[3]))) == 0


@pytest.mark.parametrize("pair", list(itertools.permutations(
    [OU(), VP(), VPCosine(), DDPM("scaled_linear", 0.00085, 0.012), SubVP(), VE(0.002, 80.0), EDM(), FlowMatching()], 2)),
    ids=lambda pair: f"{type(pair[0]).__name__}->{type(pair[1]).__name__}")
def test_convert_time_finds_the_same_marginal(pair):
    """Same lambda, and x_b = scale x_a maps alpha_a x0 + sigma_a z onto alpha_b x0 + sigma_b z.

    Tolerances are 1e-13 plus what the rounding of t_b itself (4 eps t_b) moves each
    quantity by: that is the whole error except near t = 1 of FlowMatching and VPCosine.
    """
    a, b = pair
    def lam_range(p):
        return (p.log_snr(p.t_max) if np.isfinite(p.t_max) else -700.0, min(p.log_snr(0.0), 700.0))
    lo = max(lam_range(a)[0], lam_range(b)[0])
    hi = min(lam_range(a)[1], lam_range(b)[1])
    lam = np.concatenate([np.linspace(lo, hi, 300), hi - np.logspace(-12, 0, 13), lo + np.logspace(-12, 0, 13)])
    t = a.time_of_log_snr(lam)
    t_b, scale = convert_time(t, a, b)
    lam_a, lam_b = a.log_snr(t), b.log_snr(t_b)
    dt = 4 * EPS * t_b
    assert np.all(np.abs(lam_b - lam_a) <= 1e-13 * (1 + np.abs(lam_a)) + np.abs(_dlog_snr(b, t_b)) * dt)
    rel_a = np.abs(scale * a.alpha(t) / b.alpha(t_b) - 1)
    assert np.all(rel_a <= 1e-13 + np.abs(b.f(t_b)) * dt)
    rel_s = np.abs(scale * a.sigma(t) / b.sigma(t_b) - 1)
    assert np.all(rel_s <= 1e-13 + np.abs(b.d_sigma(t_b) / b.sigma(t_b)) * dt)


def test_time_of_log_snr_refuses_a_time_below_float64():
    """lambda = 800 has t ~ e^-800 for OU, below float64: an error, not t = 0 (lambda = inf)."""
    assert OU().time_of_log_snr(700.0) > 0
    with pytest.raises(ValueError, match="underflows"):
        OU().time_of_log_snr(800.0)
    with pytest.raises(ValueError, match="no counterpart in OU"):
        convert_time(1e-300, SubVP(), OU())  # SubVP's sigma = B, so lambda(1e-300) ~ 1386


def test_convert_time_ou_to_edm_is_the_hand_conversion():
    """The issue's hand conversion: sigma_EDM = sqrt(expm1(2t)) and x_EDM = x_OU / alpha_t."""
    t = np.array([1e-12, 1e-3, 0.5, 2.0, 9.0])
    sigma, scale = convert_time(t, OU(), EDM())
    np.testing.assert_allclose(sigma, np.sqrt(np.expm1(2 * t)), rtol=1e-14)
    np.testing.assert_allclose(scale, np.exp(t), rtol=1e-14)
    back, inv = convert_time(sigma, EDM(), OU())
    np.testing.assert_allclose(back, t, rtol=1e-13)
    np.testing.assert_allclose(inv * scale, 1.0, rtol=1e-14)
    assert convert_time(0.0, OU(), EDM()) == (0.0, 1.0)


def test_convert_time_out_of_the_target_range_raises():
    with pytest.raises(ValueError, match="no counterpart in VP"):
        convert_time(6.0, OU(), VP())  # OU at t = 6 is noisier than VP ever gets
    with pytest.raises(ValueError, match="from_process must be"):
        convert_time(0.5, "OU", VP())
    with pytest.raises(ValueError, match="^t must be <= 1"):
        convert_time(1.5, VP(), OU())


# -- DDPM: diffusers' schedules in continuous time -------------------------------------


@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_ddpm_timestep_map(schedule):
    """t_i = (i + 1)/N carries alphas_cumprod[i] and DDPM's one-step kernel exactly."""
    p = DDPM(schedule, 0.00085, 0.012, 1000) if schedule == "scaled_linear" else DDPM(schedule)
    N, i = p.num_train_timesteps, np.arange(p.num_train_timesteps)
    t = p.time_of_timestep(i)
    assert np.array_equal(t, (i + 1) / N)
    assert np.all(np.abs(p.timestep_of_time(t) - i) <= 4 * EPS * N)
    ac = p.alphas_cumprod()
    # against the correctly rounded partial sums (math.fsum): np.cumsum's own rounding, 1.2e-15 of
    # the sum, was this reference once, and B no longer carries it (_knots_lo)
    rates = -np.log1p(-p.betas())
    np.testing.assert_allclose(p.integrated_beta(t), [math.fsum(rates[:k + 1]) for k in i], rtol=4 * EPS)
    # alpha = exp(-B/2) squared: B <= 20 known to an ulp, so a few ulps times B
    assert np.all(np.abs(p.alpha(t) ** 2 / ac - 1) <= EPS * (4 + 2 * p.integrated_beta(t)))
    # one step: alpha_{t_i} / alpha_{t_{i-1}} = sqrt(1 - beta_i), with t_{-1} = 0
    betas = p.betas()
    ratio = p.alpha(t) / p.alpha(np.concatenate([[0.0], t[:-1]]))
    np.testing.assert_allclose(ratio, np.sqrt(1 - betas), rtol=1e-13)
    np.testing.assert_allclose(p.integrated_beta_between(t, np.concatenate([[0.0], t[:-1]])),
                               -np.log1p(-betas), rtol=1e-13)
    # beta is constant on each step: -N log(1 - beta_j)
    mid = (i + 0.5) / N
    np.testing.assert_allclose(p.beta(mid), -N * np.log1p(-betas), rtol=1e-15)
    assert p.time_of_timestep(np.int32(999)) == 1.0 and p.time_of_timestep(0.0) == 1 / N


def test_ddpm_alphas_cumprod_float64_against_high_precision():
    for p in (DDPM(), DDPM("scaled_linear", 0.00085, 0.012), DDPM("squaredcos_cap_v2")):
        ac = p.alphas_cumprod()
        with mp.workdps(40):
            prod, ref = mp.mpf(1), []
            for b in p.betas():
                prod *= 1 - mp.mpf(b)
                ref.append(prod)
        assert max(_rel(a, r) for a, r in zip(ac, ref)) <= 1e-13
        # and sigma^2 = 1 - alphas_cumprod at the knots, without the cancellation at i = 0
        s2 = p.sigma2(p.time_of_timestep(np.arange(p.num_train_timesteps)))
        assert max(_rel(s, 1 - r) for s, r in zip(s2, ref)) <= 1e-13


@pytest.mark.parametrize("p", [DDPM(), DDPM("squaredcos_cap_v2"), DDPM("linear", num_train_timesteps=20000)],
                         ids=["linear", "cosine", "linear-20000"])
def test_ddpm_integral_across_a_few_knots_to_rounding(p):
    """int beta over a step spanning 2-6 knots near t = 1 is the difference of two cumulative sums
    ~10 in size: without the sums' rounding errors carried (_knots_lo) it was off by 2.3e-14 of
    the step at N = 1000 and 2.3e-12 at N = 100000 (a review). Against 50-digit sums of the float64
    betas' rates, from the float64 times as given."""
    N = p.num_train_timesteps
    B = integrated_beta_mp(p)
    with mp.workdps(50):
        rng = np.random.default_rng(0)
        worst = 0.0
        for _ in range(60):
            t_lo = rng.uniform(0.5, 0.999)
            t_hi = min(t_lo + rng.integers(2, 7) / N * rng.uniform(0.9, 1.1), 1.0)
            want = B(t_hi) - B(t_lo)
            worst = max(worst, float(abs((p.integrated_beta_between(t_hi, t_lo) - want) / want)))
    assert worst <= 1e-15, worst


@pytest.mark.parametrize("p", [DDPM(), DDPM("squaredcos_cap_v2"), DDPM("linear", num_train_timesteps=100000)],
                         ids=["linear", "cosine", "linear-100000"])
def test_ddpm_integrated_beta_and_alphas_cumprod_to_an_ulp(p):
    """B(t) itself, not only a step's difference, carries the cumulative sum's rounding (_knots_lo):
    the float64 cumsum alone left B 1.2e-15 of itself off at N = 1000 and 1.6e-14 at N = 100000,
    and alphas_cumprod = e^{-B} 7e-15 (a review). Now B is within an ulp or two and e^{-B} within
    exp's rounding of B (B eps plus an ulp). Against 50-digit sums of the float64 betas' rates."""
    N = p.num_train_timesteps
    B = integrated_beta_mp(p)
    with mpmath.workdps(50):
        knots = np.concatenate([[0], np.cumsum([-mpmath.log1p(-mpmath.mpf(float(b))) for b in p.betas()])])
    rng = np.random.default_rng(1)
    i = np.unique(np.concatenate([rng.integers(0, N, 150), [0, N // 2, N - 1]]))
    i = i[p.integrated_beta(p.time_of_timestep(i)) < 700]  # e^{-B} above float64's underflow
    t_knots = p.time_of_timestep(i)
    t_between = np.sort(rng.uniform(0.0, 1.0, 150))
    t_between = t_between[p.integrated_beta(t_between) < 700]
    ac = p.alphas_cumprod()[i]
    with mpmath.workdps(50):
        for t in np.concatenate([t_knots, t_between]):
            want = B(float(t))
            assert _rel(float(p.integrated_beta(t)), want) <= 2.5 * EPS, t
            a = float(p.alpha(t))
            assert _rel(a, mpmath.exp(-want / 2)) <= EPS * (1.0 + float(want) / 2), t
        for a, k in zip(ac, i):
            want = knots[k + 1]  # alphas_cumprod[k] is the knot's own
            assert _rel(float(a), mpmath.exp(-want)) <= EPS * (1.0 + float(want)), k
    # and the inverse: time_of_log_snr(log_snr(t)) returns t
    t = np.concatenate([t_knots, t_between])
    t = t[p.integrated_beta(t) < 30]  # where lambda still pins t down to its digits
    np.testing.assert_allclose(p.time_of_log_snr(p.log_snr(t)), t, rtol=2e-13)


def test_ddpm_betas_follow_diffusers_definitions():
    N = 1000
    np.testing.assert_allclose(DDPM().betas(), np.linspace(1e-4, 0.02, N), rtol=1e-15)
    np.testing.assert_allclose(DDPM("scaled_linear", 0.00085, 0.012).betas(),
                               np.linspace(0.00085**0.5, 0.012**0.5, N) ** 2, rtol=1e-15)
    got = DDPM("squaredcos_cap_v2").betas()
    with mp.workdps(40):
        def abar(t):
            return mp.cos((t + mp.mpf("0.008")) / mp.mpf("1.008") * mp.pi / 2) ** 2
        ref = [min(1 - abar(mp.mpf(i + 1) / N) / abar(mp.mpf(i) / N), mp.mpf(0.999)) for i in range(N)]
    assert max(_rel(g, r) for g, r in zip(got, ref)) <= 1e-13
    assert got[-1] == 0.999  # the cap of betas_for_alpha_bar


@pytest.mark.parametrize("N", [10, 1000, 4000])
def test_ddpm_cosine_betas_keep_their_digits_near_t_1(N):
    """squaredcos_cap_v2's betas to a few ulps, the last ones included: cos(u_i) near pi/2 and
    sin(u_{i+1} + u_i) near pi are taken as sines of their distances to pi/2 and pi (np.cos of
    the rounded u_i made beta_995 9.4e-14 off at N = 1000, 4.2e-13 at N = 4000)."""
    got = DDPM("squaredcos_cap_v2", num_train_timesteps=N).betas()
    i = np.unique(np.concatenate([np.arange(min(N, 40)), np.arange(max(N - 40, 0), N)]))
    with mp.workdps(40):
        def abar(t):
            return mp.cos((t + mp.mpf("0.008")) / mp.mpf("1.008") * mp.pi / 2) ** 2
        ref = [min(1 - abar(mp.mpf(int(j) + 1) / N) / abar(mp.mpf(int(j)) / N), mp.mpf(0.999)) for j in i]
    assert max(_rel(g, r) for g, r in zip(got[i], ref)) <= 8 * EPS


@pytest.mark.parametrize("smin, smax", [(0.01, 50.0), (0.002, 80.0), (1e-3, 1e3)])
def test_ve_sigma_is_exact_at_its_ends_and_within_its_conditioning(smin, smax):
    """sigma_0 = sigma_min and sigma_1 = sigma_max exactly (they were 50 - 2.8e-14 and
    sigma_1^2 2.7e-12 off for the defaults), and sigma_t, sigma_t^2 against mpmath to about
    the condition number 2 t log(sigma_max / sigma_min) <= 17 times half an ulp (were 12 eps off)."""
    p = VE(smin, smax)
    assert p.sigma(0.0) == smin and p.sigma(1.0) == smax
    assert p.sigma2(0.0) == smin * smin and p.sigma2(1.0) == smax * smax
    t = np.linspace(0.0, 1.0, 201)
    s, s2 = p.sigma(t), p.sigma2(t)
    with mp.workdps(40):
        ref = [mp.mpf(smin) * (mp.mpf(smax) / mp.mpf(smin)) ** mp.mpf(float(x)) for x in t]
        assert max(_rel(a, r) for a, r in zip(s, ref)) <= 4.5 * EPS
        assert max(_rel(a, r * r) for a, r in zip(s2, ref)) <= 8.5 * EPS


def test_torch_linspace_rounding_is_exact():
    """The float32 rounding behind diffusers_betas rounds p + q once, ties included."""
    from fractions import Fraction

    from sgm_ref.processes.discrete import _round_sum_to_float32

    rng = np.random.default_rng(0)
    p = rng.standard_normal(2000) * 1e-3
    q = rng.standard_normal(2000)
    # exact float32 midpoints plus a tiny nudge either way (the double-rounding trap)
    m = np.float32(0.75).astype(np.float64) + np.spacing(np.float32(0.75)) / 2
    p = np.concatenate([p, [m, m, m, -m]])
    q = np.concatenate([q, [1e-30, -1e-30, 0.0, -1e-30]])
    got = _round_sum_to_float32(p, q)
    for gi, pi, qi in zip(got, p, q):
        exact = Fraction(pi) + Fraction(qi)
        lo = np.float32(float(exact))  # candidate, then pick the nearest of its neighbours exactly
        cands = [np.nextafter(lo, np.float32(-np.inf)), lo, np.nextafter(lo, np.float32(np.inf))]
        dist = [abs(Fraction(float(c)) - exact) for c in cands]
        best = min(dist)
        assert abs(Fraction(float(gi)) - exact) == best


# -- validation of the new processes ---------------------------------------------------


@pytest.mark.parametrize("process", [p for p in ALL_PROCESSES if np.isfinite(p.t_max)], ids=repr)
def test_new_processes_refuse_times_out_of_range(process):
    for call in (process.alpha, process.sigma, process.sigma2, process.f, process.g2, process.log_snr,
                 process.d_alpha, process.d_sigma):
        with pytest.raises(ValueError, match=r"^t must be <= "):
            call(process.t_max * (1 + 1e-12) + 1e-300)
        with pytest.raises(ValueError, match=r"^t must be >= 0"):
            call(np.array([0.1, -1e-9]))
        with pytest.raises(ValueError, match=r"^t must be finite"):
            call(np.nan)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=ALL_IDS)
def test_time_of_log_snr_refuses_bad_lam(process):
    hi = process.log_snr(0.0)
    for lam in (np.nan, -np.inf, "1", True, 1 + 0j, [[np.nan]]):
        with pytest.raises(ValueError, match="lam"):
            process.time_of_log_snr(lam)
    if np.isfinite(process.t_max):
        with pytest.raises(ValueError, match=r"lam must be >= log_snr\(t_max\)"):
            process.time_of_log_snr(process.log_snr(process.t_max) - 1e-6)
    if np.isfinite(hi):
        with pytest.raises(ValueError, match=r"lam must be <= log_snr\(t_min\)"):
            process.time_of_log_snr(hi + 1e-6)
    else:
        assert process.time_of_log_snr(np.inf) == 0.0


@pytest.mark.parametrize("process", [p for p in ALL_PROCESSES if np.isfinite(p.t_max)], ids=repr)
def test_time_of_log_snr_takes_end_points_past_by_a_rounding(process):
    """A lambda a rounding beyond an end point (another process's time, converted) is that
    end point, not an error; one clearly beyond still raises (test above)."""
    lo = process.log_snr(process.t_max)
    assert abs(process.time_of_log_snr(lo - 1e-14 * (1 + abs(lo))) - process.t_max) <= 1e-13 * process.t_max
    hi = process.log_snr(0.0)
    if np.isfinite(hi):
        assert process.time_of_log_snr(hi + 1e-14 * (1 + abs(hi))) <= 1e-13


def test_edm_time_overflow_is_named():
    with pytest.raises(ValueError, match="overflows"):
        EDM().time_of_log_snr(-2000.0)


@pytest.mark.parametrize("i", [-1, 1000, 2.5, np.nan, "3", True, np.array([0, 1000]), None])
def test_ddpm_timestep_must_be_an_integer_in_range(i):
    with pytest.raises(ValueError, match="^timestep must"):
        DDPM().time_of_timestep(i)


def test_an_array_of_timesteps_out_of_range_names_its_first_offender():
    """The message held the repr of the whole array: `audit-sampler --n-steps 1000
    --steps-offset 1` printed all 1000 timesteps on its one line."""
    steps = np.arange(1000, 0, -1)
    with pytest.raises(ValueError, match=r"^timestep must lie in 0\.\.999, got timestep\[0\] = 1000 \(of 1000\)$"):
        DDPM().time_of_timestep(steps)
    with pytest.raises(ValueError, match=r"^timestep must be an integer, got timestep\[1, 0\] = 2\.5 \(of 4\);"):
        DDPM().time_of_timestep(np.array([[1.0, 2.0], [2.5, 3.0]]))
    with pytest.raises(ValueError, match=r"^timestep must lie in 0\.\.999, got 1000$"):
        DDPM().time_of_timestep(np.int64(1000))
    np.testing.assert_array_equal(DDPM().time_of_timestep(np.array([0, 999])), [1e-3, 1.0])


def test_a_beta_end_whose_schedule_rounds_to_one_is_refused():
    """scaled_linear squares sqrt(beta_end): 1 - 1e-16 came back as a beta of 1, an infinite rate
    and a NaN in the metrics' g^2 rule (found by a review)."""
    with pytest.raises(ValueError, match="too close to 1"):
        DDPM("scaled_linear", 1e-4, 1.0 - 1e-16)
    assert np.all(np.isfinite(DDPM("scaled_linear", 1e-4, 0.999)._rates))


@pytest.mark.parametrize("N", [10**14, 2**62])
def test_a_ddpm_schedule_beyond_memory_is_named(N):
    """DDPM(num_train_timesteps=10**14) (or the spec ddpm:num_train_timesteps=...) raised numpy's
    MemoryError from np.linspace, a traceback naming no argument (a review)."""
    with pytest.raises(ValueError, match=r"^num_train_timesteps = \d+ asks for .*; lower num_train_timesteps$"):
        DDPM(num_train_timesteps=N)


def test_a_fractional_timestep_is_pointed_to_sigmas():
    """A sigma-based scheduler's fractional timesteps (EulerDiscreteScheduler's 946.42...) get the
    way out in the message (a review: the bare refusal gave no hint)."""
    with pytest.raises(ValueError, match="use EDM\\(\\) with the scheduler's sigmas as times"):
        DDPM().time_of_timestep(np.array([999.0, 946.42108154]))


@pytest.mark.parametrize("make, match", [
    (lambda: DDPM("cosine"), "beta_schedule must be one of"),
    (lambda: DDPM(beta_start=0.0), "beta_start must be >"),
    (lambda: DDPM(beta_end=1.0), "beta_end must be <"),
    (lambda: DDPM(beta_start=0.02, beta_end=0.01), "beta_end must be >= beta_start"),
    (lambda: DDPM(num_train_timesteps=1), "num_train_timesteps must be an integer >= 2"),
    (lambda: DDPM(num_train_timesteps=10.0), "num_train_timesteps must be an integer"),
    (lambda: VPCosine(s=0.0), "s must be >"),
    (lambda: VPCosine(t_max=1.0), "t_max must be <"),
    (lambda: FlowMatching(t_max=1.0), "t_max must be <"),
    (lambda: FlowMatching(t_max=0.0), "t_max must be >"),
    (lambda: VE(1.0, 1.0), "sigma_max must be > sigma_min"),
    (lambda: VE(0.0, 1.0), "sigma_min must be >"),
    (lambda: VE(0.1, np.inf), "sigma_max must be finite"),
    (lambda: EDM(t_max=-1.0), "t_max must be >"),
    (lambda: SubVP(0.1, 0.0), "beta_max must be >= beta_min"),
])
def test_new_process_parameters_are_checked(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_every_process_round_trips_through_its_dict():
    from sgm_ref.processes import process_from_dict

    for p in ALL_PROCESSES:
        q = process_from_dict(p.to_dict())
        assert q == p and type(q) is type(p) and q.to_dict() == p.to_dict()
    with pytest.raises(ValueError, match="parameters its class does not take"):
        process_from_dict({"name": "EDM", "sigma_data": 0.5})


def test_check_process_keeps_variance_preserving_callers_safe():
    for p in (OU(), VP(), VPCosine(), DDPM()):
        assert check_process(p) is p
    for p in (SubVP(), VE(), EDM(), FlowMatching()):
        with pytest.raises(ValueError, match="process must be OU"):
            check_process(p)
        assert check_process(p, variance_preserving=False) is p
    assert all(isinstance(p, LinearGaussianProcess) for p in ALL_PROCESSES)


def test_integrals_beyond_float64_and_huge_priors_are_named():
    """B(t) = 2t overflows for t near the float64 maximum: a ValueError naming t, not inf;
    a prior too large for memory names n x d; a schedule too large to invert names its betas."""
    with pytest.raises(ValueError, match=r"^t is so large that the integral of beta up to it overflows float64"):
        OU().integrated_beta(1.79e308)
    with pytest.raises(ValueError, match=r"^t_hi is so large"):
        OU().integrated_beta_between(1.79e308, 0.0)
    with pytest.raises(ValueError, match=r"^n \* d = 2 x 4611686018427387904 asks for .* lower n \* d$"):
        OU().prior(2, 2**62, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"^beta_min = 1e\+200 and beta_max = 1e\+201 are too large to invert"):
        VP(beta_min=1e200, beta_max=1e201).time_of(0.5)


@pytest.mark.parametrize("call, t, what", [
    (lambda t: EDM().sigma2(t), 1e200, "sigma_t\\^2"),
    (lambda t: EDM().g2(t), np.array([1.0, 1e308]), "g\\(t\\)\\^2"),
    (lambda t: OU().log_snr(t), 1e308, "log_snr"),
    (lambda t: VE(1e-200, 1e200).sigma2(t), 1.0, "sigma_t\\^2"),
    (lambda t: VE(1e-200, 1e200).g2(t), 1.0, "g\\(t\\)\\^2"),
])
def test_pointwise_values_beyond_float64_are_named_not_inf(call, t, what):
    """EDM().sigma2(1e200) (t_max = inf), EDM().g2(1e308), OU().log_snr(1e308) (-2t) and a VE
    with sigma_max^2 beyond float64 returned inf with an overflow warning (a review), where
    the step integrals, integrated_beta and the samplers name the overflow."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=rf"^t = 1(\.0)?e?\+?\d*: {what} overflows float64 for .*; use a smaller t$"):
            call(t)


def test_subvp_with_a_large_beta_max_inverts_its_log_snr():
    """SubVP's inverse B = 2 asinh(e^{-lambda/2} / 2) took e^{-lambda/2}, inf past lambda = -1419:
    SubVP(0.1, 4000) (lambda(1) = -2000) refused time_of_log_snr(log_snr(0.8)) with "beta_min and
    beta_max are too large to invert the schedule" (a review). Against 50-digit B = 2 asinh(...)."""
    p = SubVP(0.1, 4000.0)
    t = np.array([1e-300, 1e-10, 0.01, 0.1, 0.3, 0.5, 0.6, 0.8, 0.95, 1.0])
    # 1e-13 as the other round trips: lambda(1e-300) = 1382 carries t only to eps 1382 / 2
    np.testing.assert_allclose(p.time_of_log_snr(p.log_snr(t)), t, rtol=1e-13)
    with mp.workdps(50):
        for lam in (-60.0, -59.99, -61.0, -1418.0, -1500.0, -2000.05):
            B = 2 * mp.asinh(mp.exp(-mp.mpf(lam) / 2) / 2)
            bmin, db = mp.mpf(0.1), mp.mpf(4000.0) - mp.mpf(0.1)
            want = 2 * B / (bmin + mp.sqrt(bmin**2 + 2 * db * B))
            assert _rel(float(p.time_of_log_snr(lam)), want) <= 4 * EPS, lam


def test_perturb_names_points_beyond_their_dtype():
    """float32 x0 at EDM's t = 1e39 (sigma_t past float32's 3.4e38) came back as +-inf with only
    an "overflow encountered in cast" warning (a review); just inside the range it is the draw."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for p, t in ((EDM(), np.array([1.0, 1e39])), (VE(1e-3, 1e100), 1.0)):
            with pytest.raises(ValueError, match=r"^t = 1(e\+39|\.0): x_t = alpha_t x0 \+ sigma_t z overflows float32 "
                                                 r"for .*; use a smaller t, or float64 points$"):
                p.perturb(np.ones((2, 3), np.float32), t, np.random.default_rng(0))
        xt, z = EDM().perturb(np.ones((2, 3), np.float32), 1e37, np.random.default_rng(0))
        assert xt.dtype == np.float32 and np.all(np.isfinite(xt))
        np.testing.assert_allclose(xt, np.float32(1e37) * z, rtol=1e-6)
        # float64 points at the same t are finite
        xt, z = EDM().perturb(np.ones((2, 3)), 1e39, np.random.default_rng(0))
        np.testing.assert_allclose(xt, 1.0 + 1e39 * z, rtol=1e-15)


def test_pointwise_values_keep_their_documented_infinities_and_underflows():
    """lambda and sigma' are +inf where sigma_t = 0 (docstrings); alpha, sigma^2 and sigma'
    that underflow or saturate at huge t are values (0, 1), without an overflow warning."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert OU().log_snr(0.0) == np.inf and OU().d_sigma(0.0) == np.inf
        assert OU().alpha(1e308) == 0.0 and OU().sigma2(1e308) == 1.0 and OU().d_sigma(1e308) == 0.0
        assert OU().f(1e308) == -1.0 and OU().g2(1e308) == 2.0
        assert EDM().sigma2(1e154) == 1e154**2 and EDM().log_snr(1e308) == -2.0 * np.log(1e308)
        assert np.array_equal(EDM().marginal(np.array([0.0, 1e308])), [[1.0, 1.0], [0.0, 1e308]])


@pytest.mark.parametrize("process", [VP(0.0, 20.0), VP(1e-300, 20.0), SubVP(0.0, 50.0)], ids=repr)
def test_beta_min_zero_below_the_range_of_B(process):
    """With beta_min = 0 (or tiny) B(t) = t^2 beta_max / 2 leaves float64's normal range below
    t ~ 1e-154 while sigma_t (VP: ~ t sqrt(beta_max / 2)) and lambda_t do not: VP(0, 20) had
    sigma(1e-200) = 0 for 3.2e-200 and log_snr = inf, time_of_log_snr(lambda(1e-300)) was refused
    as a time that underflows, and d_sigma(0) = sqrt(10) as an overflow (0 / 0); SubVP(0, 50) had
    log_snr(1e-300) = inf for 2756.7. Against 50-digit values of the defining formulas."""
    import warnings

    ts = np.array([1e-300, 1e-250, 1e-200, 1e-170, 1e-160, 1e-155])
    with warnings.catch_warnings(), mp.workdps(50):
        warnings.simplefilter("error")
        for t in ts:
            a, s = _mp_alpha_sigma(process, mp.mpf(t))
            if isinstance(process, VP):
                assert _rel(process.sigma(t), s) <= 4 * EPS, t
            lam = 2 * (mp.log(a) - mp.log(s))
            assert _rel(process.log_snr(t), lam) <= 4 * EPS, t
            # lambda's rounding, eps |lambda|, moves t by eps |lambda| t / |d log lambda|, <= eps |lambda| t / 2
            back = process.time_of_log_snr(float(lam))
            assert abs(back - t) <= 4 * EPS * float(abs(lam)) * t, t
        np.testing.assert_array_equal(process.log_snr(ts), [process.log_snr(t) for t in ts])
        if isinstance(process, VP):
            root = np.sqrt(0.5 * (process.beta_max - process.beta_min))
            assert abs(process.d_sigma(1e-200) - root) <= 4 * EPS * root
            if process.beta_min == 0:  # sigma' and W = alpha sigma' - alpha' sigma at t = 0: sqrt(beta_max / 2)
                assert abs(process.d_sigma(0.0) - root) <= 2 * EPS * root
                assert abs(process._w(np.float64(0.0)) - root) <= 2 * EPS * root
                # EDM's sigma = 1e-300 is VP(0, 20)'s t = 1e-300 / sqrt(10) (the same lambda)
                t_vp, _ = convert_time(1e-300, EDM(), process)
                assert abs(t_vp - 1e-300 / root) <= 1e-13 * t_vp
        assert process.log_snr(0.0) == np.inf and process.time_of_log_snr(np.inf) == 0.0


@pytest.mark.parametrize("process", [VPCosine(), VPCosine(s=1e-6), DDPM(), DDPM("squaredcos_cap_v2")], ids=repr)
def test_vp_cosine_and_ddpm_below_the_range_of_B(process):
    """Below t ~ 1e-305 B(t) ~ beta(0) t is subnormal (or 0) while sigma_t ~ sqrt(beta(0) t) and
    lambda_t are normal numbers: VPCosine() had log_snr(5e-324) = inf for 747.69 (and
    time_of_log_snr(747.69) refused as a time that underflows), sigma(1e-310) 3.5e-13 off
    (VPCosine(1e-6): 3.7e-9), DDPM("squaredcos_cap_v2").log_snr(5e-324) = inf. Against 50-digit
    values without cancellation: VPCosine's sigma^2 = sin(u_t + u_0) sin(k t) / cos^2(u_0),
    DDPM's B = N (-log(1 - beta_0)) t on its first step."""
    import warnings

    ts = np.array([5e-324, 1e-320, 1e-315, 1e-310, 1e-307])
    with warnings.catch_warnings(), mp.workdps(50):
        warnings.simplefilter("error")
        for t in ts:
            T = mp.mpf(t)
            if isinstance(process, VPCosine):
                k = mp.pi / 2 / (1 + mp.mpf(process.s))
                u0 = k * mp.mpf(process.s)
                s2 = mp.sin(k * T + 2 * u0) * mp.sin(k * T) / mp.cos(u0) ** 2
                a2, beta = 1 - s2, 2 * k * mp.tan(k * T + u0)
            else:
                beta = process.num_train_timesteps * -mp.log1p(-mp.mpf(float(process.betas()[0])))
                a2, s2 = mp.exp(-beta * T), -mp.expm1(-beta * T)
            lam = mp.log(a2) - mp.log(s2)
            assert _rel(process.sigma(t), mp.sqrt(s2)) <= 4 * EPS, t
            # sigma' = beta alpha^2 / (2 sigma): it was +inf at t = 5e-324 (sigma computed as 0)
            assert _rel(process.d_sigma(t), beta * a2 / (2 * mp.sqrt(s2))) <= 8 * EPS, t
            assert _rel(process.log_snr(t), lam) <= 4 * EPS, t
            back = process.time_of_log_snr(float(lam))  # lambda's rounding moves t by up to eps |lambda| t
            assert abs(back - t) <= 4 * EPS * float(abs(lam)) * t, t
        np.testing.assert_array_equal(process.log_snr(ts), [process.log_snr(t) for t in ts])
        assert process.log_snr(0.0) == np.inf and process.time_of_log_snr(np.inf) == 0.0
        assert process.sigma(0.0) == 0.0


def test_flow_matching_step_integrals_near_t_max_to_rounding():
    """A FlowMatching step up to near t = 1 has u = h / (1 - t_lo) close to 1, and taking
    1 - u from the rounded u lost int f, int g^2, b and a = alpha_lo / alpha_hi 1e-12 to
    1.5e-11 of their values (from t_lo = 0.329 to t_max = 1 - 1e-5: the first step of an
    exponential integrator from T = t_max). Against 50-digit closed forms of the exact float
    times: alpha = 1 - t, rho = t / (1 - t)."""
    p = FlowMatching()
    with mp.workdps(50):
        for th in (p.t_max, 1 - 3.3e-5, 0.9990000000000001, 0.9, 0.7):
            for tl in (0.0, 1e-12, 3.1e-9, 0.1, 0.32925086669292963, 0.5, 0.77, 0.97, th * (1 - 1e-9), th - 2e-16):
                if not tl < th:
                    continue
                TH, TL = mp.mpf(th), mp.mpf(tl)

                def F(t):  # an antiderivative of g^2 / alpha = 2 t / (1 - t)^2
                    return 2 / (1 - t) + 2 * mp.log(1 - t)

                def rho(t):
                    return t / (1 - t)

                want = [mp.log((1 - TH) / (1 - TL)), 2 * mp.log((1 - TL) / (1 - TH)) - 2 * (TH - TL),
                        (1 - TL) / (1 - TH), (1 - TL) * (F(TH) - F(TL)), (1 - TL) ** 2 * (rho(TH) ** 2 - rho(TL) ** 2)]
                a, b, c2 = p.exponential_integrals(th, tl)
                got = [p.integrated_f_between(th, tl), p.integrated_g2_between(th, tl), a, b, c2]
                for name, g, w in zip(["int f", "int g^2", "a", "b", "c2"], got, want):
                    assert _rel(mp.mpf(float(g)), w) < 2e-15, (name, th, tl, float(g), float(w))


@pytest.mark.filterwarnings("error")
def test_ou_past_t_9e307_gives_its_limit_without_an_overflow_warning():
    """OU's B = 2t is inf past t ~ 9e307: alpha_t = 0 and sigma_t = 1 are the values (an
    oracle at such a t is the standard normal's), which came with a RuntimeWarning."""
    from sgm_ref.targets import GaussianMixture

    t = 8.98846567431158e307
    a, s2 = OU()._coefficients(t, 1)
    assert a[0] == 0.0 and s2[0] == 1.0
    g = GaussianMixture([1.0], [[3.0]], [[0.5]])
    x = np.array([[0.7]])
    np.testing.assert_array_equal(g.score(x, t, OU()), -x)
    assert g.log_prob(x, t, OU())[0] == pytest.approx(-0.5 * 0.49 - 0.5 * np.log(2 * np.pi), rel=1e-15, abs=0)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=ALL_IDS)
def test_no_times_give_no_values(process):
    """t of shape (0,), the times of no rows: every coefficient was refused as 't must be a scalar
    or have shape (n,), got shape (0,)', so a score that computes its sigma_t (as a user's eps
    model does) failed on no points inside every sampler. They are empty float64 arrays now,
    as for any other length."""
    from sgm_ref.samplers import euler_maruyama, probability_flow
    names = ("alpha", "sigma", "sigma2", "beta", "integrated_beta", "log_snr", "f", "g2")
    for name in names:
        if hasattr(process, name):
            out = getattr(process, name)(np.zeros(0))
            assert isinstance(out, np.ndarray) and out.shape == (0,) and out.dtype == np.float64, name
    T = min(1.0, process.t_max)
    grid = np.geomspace(T, 1e-3 * T, 4)
    score = lambda x, t: -x / process.sigma(t)[:, None]  # noqa: E731
    assert euler_maruyama(score, process, grid, np.zeros((0, 2)), np.random.default_rng(0)).shape == (0, 2)
    assert probability_flow(score, process, grid, np.zeros((0, 2))).shape == (0, 2)


def test_karras_sigmas_of_one_step_is_k_diffusions():
    """Review: karras_sigmas(1, ...) was refused (n >= 2) while k-diffusion's get_sigmas_karras
    takes n = 1 and returns [sigma_max, 0] (torch.linspace(0, 1, 1) = [0]): one step to 0."""
    from sgm_ref.processes import EDM
    from _peers import load_k_diffusion

    kd = load_k_diffusion()
    for lo, hi, rho in [(0.002, 80.0, 7.0), (0.1, 2.0, 3.0), (1e-3, 1e4, 1.0)]:
        ours = EDM().karras_sigmas(1, lo, hi, rho)
        previous = kd.torch.get_default_dtype()
        kd.torch.set_default_dtype(kd.torch.float64)
        try:
            theirs = kd.sampling.get_sigmas_karras(1, lo, hi, rho).numpy()
        finally:
            kd.torch.set_default_dtype(previous)
        theirs32 = kd.sampling.get_sigmas_karras(1, lo, hi, rho).numpy()  # float32: sigma_max to 2e-7
        assert ours.dtype == np.float64 and ours.tolist() == [hi, 0.0]
        np.testing.assert_allclose(theirs, ours, rtol=4e-16, atol=0)  # (hi^(1/rho))^rho: an ulp or two
        np.testing.assert_allclose(theirs32, ours, rtol=4e-7, atol=0)
    with pytest.raises(ValueError, match="n"):
        EDM().karras_sigmas(0, 0.002, 80.0)


@pytest.mark.parametrize("process", [VP(0.0, 20.0), VP(1e-300, 20.0)], ids=repr)
def test_time_of_a_huge_log_snr_and_sigma_prime_at_subnormal_t_keep_their_digits(process):
    """Below the range of B (review of b6852ff): t from lambda was exp of a rounded sum
    (log B + log(2 / db)) / 2, 5.2e-14 off at lambda = 1388 on VP(0, 20) (an error beyond one
    ulp of lambda's own effect, eps t / 2); now h = e^{log B / 2}, exact halving, then products.
    d_sigma and W at subnormal t took beta = t beta_max with few digits (d_sigma(5e-323) was
    3.125 for sqrt(10)). Against 60-digit values: B = log1p(e^-lambda), t = 2 B / (beta_min +
    sqrt(beta_min^2 + 2 db B))."""
    with mp.workdps(60):
        for lam in (708.5, 720.0, 900.0, 1200.0, 1388.1093941026816):
            B = mp.log1p(mp.exp(-mp.mpf(lam)))
            bmin, db = mp.mpf(process.beta_min), mp.mpf(process.beta_max) - mp.mpf(process.beta_min)
            ref = 2 * B / (bmin + mp.sqrt(bmin**2 + 2 * db * B))
            assert _rel(process.time_of_log_snr(lam), ref) <= 2 * EPS, lam
    if process.beta_min == 0:
        root = np.sqrt(10.0)
        for t in (1e-318, 5e-323, 1e-200):
            assert process.d_sigma(t) == root and process._w(np.float64(t)) == root, t


@pytest.mark.parametrize("process", [VP(0.0, 1e-3), SubVP(0.0, 1e-3)], ids=repr)
def test_time_of_a_huge_log_snr_where_the_half_power_of_B_is_subnormal(process):
    """Review of cb7e080: t = h sqrt(2 / db), h = e^{log B / 2}, took h's lost digits where h is
    subnormal but t, lifted by sqrt(2 / db) > 1 (beta_max < 2), is not or less so: 12 subnormal ulps
    of t = 1e-310 on VP(0, 1e-3), 1.4 relative ulps at t = 1e-307 (before cb7e080, exp of a rounded
    sum: correctly rounded there). Now (r sqrt(2 / db)) r, r = e^{log B / 4}. Against 40 digits from
    the float64 lambda passed: B = log1p(e^-lambda) (VP), 2 asinh(e^{-lambda / 2} / 2) (SubVP)."""
    db = 1e-3
    with mp.workdps(40):
        for t in (1e-307, 3e-308, 1e-310, 1e-316, 1e-320):
            B = db * mp.mpf(t) ** 2 / 2
            exact = (-B - mp.log(-mp.expm1(-B))) if isinstance(process, VP) else -2 * (B + mp.log(-mp.expm1(-B)))
            lam = mp.mpf(float(exact))
            Bl = mp.log1p(mp.exp(-lam)) if isinstance(process, VP) else 2 * mp.asinh(mp.exp(-lam / 2) / 2)
            ref = mp.sqrt(2 * Bl / db)
            got = process.time_of_log_snr(float(lam))
            ulp = max(ref * EPS, mp.mpf(2) ** -1074)  # relative; one subnormal step at subnormal t
            assert abs(mp.mpf(float(got)) - ref) <= ulp, t


def test_log_snr_at_subnormal_t_and_the_time_of_a_mixed_array_without_warnings():
    """Found by the fuzz of the day's changes: (1) with beta_min = 0 the mean rate t beta_max / 2
    is itself subnormal or 0 at subnormal t, and log_snr took its log: VP(0, 1).log_snr(5e-324)
    was inf for 1489.57 (SubVP(0, 1): inf for 2979.15), VP(0, 1e-3).log_snr(1e-318) 1.35e-6
    off; (2) time_of_log_snr of an array with rows both sides of the tiny-B switch warned
    "invalid value encountered in divide" (inf / inf in the rows it then drops); (3) a subnormal
    beta_min made d_sigma(0) a refusal as an overflow (0.5 * 5e-324 = 0: 0 / 0) for +inf."""
    import warnings

    with warnings.catch_warnings(), mp.workdps(50):
        warnings.simplefilter("error")
        for process, t in ((VP(0.0, 1.0), 5e-324), (VP(0.0, 1e-3), 1e-321), (VP(0.0, 1e-3), 1e-318),
                           (VP(0.0, 20.0), 1e-200), (SubVP(0.0, 1.0), 5e-324)):
            a, s = _mp_alpha_sigma(process, mp.mpf(t))
            lam = 2 * (mp.log(a) - mp.log(s))
            assert _rel(process.log_snr(t), lam) <= 2 * EPS, (process, t)
        for process, lam in ((VP(0.1, 2960.0), 720.0), (SubVP(0.1, 6000.0), 1440.0)):
            both = process.time_of_log_snr([process.log_snr(1.0), lam])
            assert both[0] == 1.0 and both[1] == process.time_of_log_snr(lam) > 0.0
        assert VP(5e-324, 20.0).d_sigma(0.0) == np.inf == VP(0.1, 20.0).d_sigma(0.0)


def test_sigma_and_the_time_of_lambda_where_the_mean_rate_or_half_power_of_b_is_subnormal():
    """The second fuzz of the day's changes: VP's sigma took sqrt(t) sqrt(t beta_max / 2) with the
    product subnormal (VP(0, 1e-3).sigma(1e-306): 6.9 ulp off a normal result), and with a
    subnormal beta_min > 0 the time of a huge lambda kept e^{log B / 2} subnormal (92 subnormal
    steps off at lambda = 1440 on VP(5e-324, 1e-3); SubVP(5e-324, 1e-3) 16% at 2971.85)."""
    with mp.workdps(60):
        for process, t in ((VP(0.0, 1e-3), 1e-306), (VP(1e-310, 1e-3), 1e-306), (VP(0.0, 20.0), 1e-200)):
            B = mp.mpf(process.beta_min) * t + mp.mpf(t) ** 2 * (mp.mpf(process.beta_max) - mp.mpf(process.beta_min)) / 2
            assert _rel(process.sigma(t), mp.sqrt(-mp.expm1(-B))) <= 2 * EPS, (process, t)
        for process, lam in ((VP(5e-324, 1e-3), 1440.0), (VP(5e-324, 1e-3), 1430.0), (VP(1e-300, 20.0), 1420.0),
                             (SubVP(5e-324, 1e-3), 2900.0), (SubVP(5e-324, 1e-3), 2971.85)):
            e = mp.exp(-mp.mpf(lam))
            if isinstance(process, SubVP):  # alpha^2 / sigma^2 = e^-B / (1 - e^-B)^2 = e^lam
                B = -mp.log1p(-(mp.sqrt(e * e + 4 * e) - e) / 2)
            else:
                B = mp.log1p(e)
            bmin, db = mp.mpf(process.beta_min), mp.mpf(process.beta_max) - mp.mpf(process.beta_min)
            ref = 2 * B / (bmin + mp.sqrt(bmin**2 + 2 * db * B))
            assert abs(process.time_of_log_snr(lam) - ref) <= 1.0 * 5e-324, (process, lam)  # one subnormal step


@pytest.mark.parametrize("sigma_min, sigma_max", [(100.0, 100.5), (1.0, 1.0 + 2**-40), (0.3, 0.59)])
def test_ve_with_close_sigmas_keeps_its_digits(sigma_min, sigma_max):
    """VE's log(sigma_max / sigma_min) rounded the ratio first: for VE(100, 100.5) g^2 and the
    integral of g^2 were 2.2e-14 (~95 eps) off; where the ratio is below 2 the difference is
    exact and log1p of it over sigma_min keeps the digits (against 50-digit mpmath)."""
    import mpmath
    from sgm_ref import VE

    mpmath.mp.dps = 50
    p = VE(sigma_min, sigma_max)
    lo, hi = mpmath.mpf(sigma_min), mpmath.mpf(sigma_max)
    r = mpmath.log(hi / lo)
    for t in (0.0, 0.3, 1.0):
        want_g2 = 2 * r * (lo * (hi / lo) ** t) ** 2
        assert float(p.g2(t)) == pytest.approx(float(want_g2), rel=1e-15, abs=0), t
    want = (lo * (hi / lo) ** mpmath.mpf(0.7)) ** 2 - (lo * (hi / lo) ** mpmath.mpf(0.2)) ** 2
    assert float(p.integrated_g2_between(0.7, 0.2)) == pytest.approx(float(want), rel=1e-15, abs=0)


def test_time_of_refusals_name_the_alpha_and_the_bound():
    """time_of's refusals said only "alpha must lie in (0, 1]" and "alpha is below alpha(t_max) = ...":
    neither the alpha refused nor (for the second) that alpha must be at least that bound."""
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\] .*OU\(\).*got 2\.0"):
        OU().time_of([0.5, 2.0])
    with pytest.raises(ValueError, match=r"alpha must lie in \(0, 1\] .*got 0\.0"):
        OU().time_of(0.0)
    with pytest.raises(ValueError, match=r"alpha is below alpha\(t_max\) = 0\.0065715864949296.* got min 1e-06: alpha must be >= alpha\(t_max\)"):
        VP().time_of([0.5, 1e-5, 1e-6])
