"""Tests for sgm_ref.processes: the OU and VP forward processes.

References are computed independently of the library: alpha and beta from the closed
forms, sigma from a 60-digit decimal evaluation of sqrt(1 - exp(-B(t))).
"""

import decimal

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
    for t in _times(process):
        if t > 0 and _integrated_beta_ref(process, t) < np.finfo(np.float64).tiny:
            # B(t) itself underflows (beta_min = 0 and t^2 < 1e-308), so sigma comes out
            # 0 instead of about t sqrt(beta_max / 2): a float64 range limit, not tested
            continue
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
