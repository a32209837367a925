"""ScoreModel (sgm_ref.score_model): each parameterisation against the network output.

    "score": s = net,   "noise": s = -net / sigma_t,   "residual": s = -x + net

checked with sigma_t from the closed forms (OU: 1 - exp(-2t); VP: B = b0 t + (b1 - b0) t^2 / 2).
"""

import numpy as np
import pytest

from sgm_ref import OU, VP
from sgm_ref.nn import MLP
from sgm_ref.score_model import PARAMETERIZATIONS, ScoreModel

PROCESSES = (OU(), VP(), VP(0.5, 12.0))


def inputs(seed=0, n=20, d=3, t_max=1.0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.uniform(1e-4, t_max, n)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_parameterization_formula(parameterization, process, numpy_ref):
    net = MLP(3, (8, 6), "silu", "fourier", rng=0)
    model = ScoreModel(net, process, parameterization)
    x, t = inputs()
    out = net.forward(x, t)
    sigma = np.sqrt(numpy_ref.coefficients(process, t)[1])[:, None]
    expected = {"score": out, "noise": -out / sigma, "residual": out - x}[parameterization]
    s = model(x, t)
    assert s.shape == x.shape and s.dtype == np.float64
    np.testing.assert_allclose(s, expected, rtol=1e-14, atol=1e-15)
    # one scalar t for all rows
    np.testing.assert_allclose(model(x, 0.25), model(x, np.full(len(x), 0.25)), rtol=0, atol=0)


def test_output_to_score_works_in_place_and_does_not_touch_x():
    model = ScoreModel(MLP(3, (8,), rng=0), OU(), "residual")
    x, t = inputs()
    x_before = x.copy()
    out = model.network.forward(x, t)
    s = model.output_to_score(out, x, t)
    assert s is out
    np.testing.assert_array_equal(x, x_before)


@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_noise_parameterization_refuses_t_zero(process):
    model = ScoreModel(MLP(3, (8,), "silu", "linear", rng=0), process, "noise")
    x, _ = inputs(n=3)
    with pytest.raises(ValueError, match="t must be > 0"):
        model(x, 0.0)
    with pytest.raises(ValueError, match="t must be > 0"):
        model(x, np.array([0.5, 0.0, 0.2]))


def test_noise_parameterization_is_accurate_for_tiny_t():
    """sigma_t from expm1: at t = 1e-12, s = -net / sqrt(-expm1(-2t)) to full precision
    (sqrt(1 - exp(-2t)) would be wrong in the fifth digit)."""
    net = MLP(3, (8,), "silu", "log", rng=0)
    model = ScoreModel(net, OU(), "noise")
    x, _ = inputs(n=4)
    sigma = np.sqrt(-np.expm1(-2e-12))
    np.testing.assert_allclose(model(x, 1e-12), -net.forward(x, 1e-12) / sigma, rtol=1e-14)


def test_float32_model():
    net32 = MLP(3, (8, 6), "tanh", "log", dtype=np.float32, rng=0)
    net64 = MLP(3, (8, 6), "tanh", "log", rng=0)
    x, t = inputs()
    for parameterization in PARAMETERIZATIONS:
        s32 = ScoreModel(net32, OU(), parameterization)(x.astype(np.float32), t)
        s64 = ScoreModel(net64, OU(), parameterization)(x, t)
        assert s32.dtype == np.float32
        assert np.abs(s32 - s64).max() <= 1e-5 * np.abs(s64).max()
    with pytest.raises(ValueError, match="dtype float32"):
        ScoreModel(net32)(x, t)


def test_float32_noise_score_is_rounded_once():
    """Review: a float32 "noise" model divided by sigma_t rounded to float32, two roundings
    (1 float32 ulp off in a third of the entries), and for sigma_t below 1.2e-38 a subnormal with few digits
    (t = 1e-80 on OU: sigma_t = 1.4e-40, the score 3e-6 off relatively). The score, its
    divergence and its Jacobian-vector products are now -net / sigma_t (resp. -tr / sigma_t,
    -Jv / sigma_t) formed in float64 and rounded once: the float32 rounding of the mpmath value."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    net = MLP(3, (8, 6), "silu", "log", dtype=np.float32, rng=0)
    net.weights[-1][...] *= np.float32(1e-6)  # a small output keeps -net / sigma_t finite at t = 1e-80
    net.biases[-1][...] *= np.float32(1e-6)
    model = ScoreModel(net, OU(), "noise")
    x, _ = inputs(n=8)
    x = x.astype(np.float32)
    V = np.random.default_rng(1).standard_normal((8, 2, 3))
    for t in (1e-80, 1e-30, 1e-3, 0.3, 2.0):
        sigma = mpmath.sqrt(-mpmath.expm1(-2 * mpmath.mpf(t)))

        def rounded(values):
            return np.array([np.float32(float(-mpmath.mpf(float(v)) / sigma)) for v in np.ravel(values)],
                            dtype=np.float32).reshape(np.shape(values))

        np.testing.assert_array_equal(model(x, t), rounded(net.forward(x, t)))
        s, div = model.divergence(x, t)
        np.testing.assert_array_equal(div, rounded(net.jacobian_trace(x, t)[1]))
        s, jv = model.jvp(x, t, V)
        np.testing.assert_array_equal(jv, rounded(net.jvp(x, t, V)[1]))


def test_properties_and_repr():
    net = MLP(2, (4,), rng=0)
    model = ScoreModel(net, VP(), "noise")
    assert model.params is net.params and model.d == 2 and model.dtype == np.float64
    assert "noise" in repr(model) and "VP" in repr(model)
    assert ScoreModel(net).parameterization == "residual" and ScoreModel(net).process == OU()


def test_constructor_rejects_bad_arguments():
    net = MLP(2, (4,), rng=0)
    with pytest.raises(ValueError, match="parameterization"):
        ScoreModel(net, OU(), "epsilon")
    with pytest.raises(ValueError, match="process"):
        ScoreModel(net, "OU", "score")


@pytest.mark.parametrize("parameterization", ["score", "residual"])
def test_t_beyond_the_process_horizon_is_rejected(parameterization):
    model = ScoreModel(MLP(2, (4,), "silu", "log", rng=0), VP(), parameterization)
    with pytest.raises(ValueError, match="t"):
        model(np.zeros((2, 2)), 5.0)  # VP is defined on [0, 1]


def test_score_that_overflows_is_refused_with_its_cause():
    # sigma_t = 1.4e-160 at t = 1e-320: net / sigma_t overflows float32 (inf before)
    net = MLP(2, (8,), "silu", "log", dtype=np.float32, rng=0)
    model = ScoreModel(net, OU(), "noise")
    x = np.ones((3, 2), np.float32)
    with np.errstate(divide="ignore", over="ignore"):
        with pytest.raises(ValueError, match=r"'noise' score overflows float32 at t = 1e-320.*use larger t"):
            model(x, np.full(3, 1e-320))
    model = ScoreModel(MLP(2, (8,), "relu", rng=0), OU(), "residual")
    model.network.set_params(model.network.params * 0.0)
    model.network.biases[-1][...] = 1.7e308
    with pytest.raises(ValueError, match=r"'residual' score overflows float64.*largest \|x\| entry 1\.7e\+308"):
        model(np.full((3, 2), -1.7e308), 0.5)


def test_time_messages_print_plain_floats():
    model = ScoreModel(MLP(2, (8,), rng=0), VP(), "score")
    x = np.zeros((2, 2))
    for t, message in (([0.5, 1.5], r"t must be <= 1\.0 \(the process's horizon T\), got max 1\.5$"),
                       ([0.5, -0.25], r"t must be >= 0 \(forward time\), got min -0\.25$")):
        with pytest.raises(ValueError, match=message) as info:
            model(x, np.array(t))
        assert "np.float64" not in str(info.value)


def test_a_parameterization_array_is_named():
    """Review: an array got 'The truth value of an array ... is ambiguous'."""
    with pytest.raises(ValueError, match="parameterization must be one of"):
        ScoreModel(MLP(2, (4,), rng=0), OU(), np.array(["score", "noise"]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_divide_rows_is_numpys_mixed_divide_bit_for_bit(dtype):
    """The compiled row division of the float32 "noise" score is NumPy's float64 divide rounded
    once into out's dtype, bit for bit, including quotients that round to subnormals, 0 and
    inf (the overflow the callers name)."""
    from sgm_ref.kernels.dense import divide_rows
    rng = np.random.default_rng(3)
    out = (rng.standard_normal((257, 7)) * 10.0 ** rng.integers(-30, 30, (257, 7))).astype(dtype)
    out[0, :3] = [np.finfo(dtype).tiny, np.finfo(dtype).max, -0.0]
    divisor = -np.exp(rng.uniform(-100, 100, 257))
    divisor[0] = -1e10
    out[1, 0], divisor[1] = np.finfo(dtype).max, -1e-30  # a quotient beyond the dtype: inf
    expected = out.copy()
    with np.errstate(over="ignore", under="ignore"):
        np.divide(expected, divisor[:, None], out=expected, casting="same_kind")
        divide_rows(out, divisor)  # (warns only without the JIT, in NumPy scalar arithmetic)
    assert out.tobytes() == expected.tobytes()
    assert np.any(out == 0) and np.any(np.isinf(out)) and np.any((out != 0) & (np.abs(out) < np.finfo(dtype).tiny))


@pytest.mark.parametrize("call", ["__call__", "divergence", "jvp"])
def test_a_positive_t_whose_sigma_underflows_is_not_told_t_must_be_positive(call):
    """Review: VP's sigma_t^2 = B(t) = beta_min t + ... rounds to 0 at t = 1e-323 (0.1 t is below
    half the smallest subnormal), and the "noise" model answered "t must be > 0" to a t that is.
    The message now names the underflow; t = 0 keeps its own."""
    from sgm_ref import VPCosine

    x = np.ones((2, 2))
    for process in (VP(), VPCosine()):
        assert process._coefficients(np.array([1e-323]), 1)[1][0] == 0  # the premise
        model = ScoreModel(MLP(2, (4,), "silu", "linear", rng=0), process, "noise")
        args = (x, np.array([0.5, 1e-323])) + ((np.ones((2, 1, 2)),) if call == "jvp" else ())
        with pytest.raises(ValueError, match=r"sigma_t\^2 underflows to 0 at t = 1e-323 for VP.*use a larger t"):
            getattr(model, call)(*args)
    with pytest.raises(ValueError, match=r"t must be > 0 for the 'noise' parameterization \(sigma_0 = 0\)"):
        model.output_to_score(np.ones((2, 2)), x, 0.0)


def test_a_noise_score_overflow_from_a_large_output_is_not_blamed_on_sigma():
    """Review: a float32 "noise" model whose output is near the float32 max (3.3e38) overflowed at
    t = 0.5, where sigma_t = 0.795, and was told 'sigma_t is too small there ...: use larger t'
    (every t overflows it). The message now gives the row's t, sigma_t and network output, and
    blames sigma_t only where a moderate output overflows (t = 1e-320: sigma_t = 1.4e-160)."""
    net = MLP(2, (8,), "silu", "log", dtype=np.float32, rng=0)
    model = ScoreModel(net, OU(), "noise")
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"at t = 1e-320 \(row 0: sigma_t = 1\.41e-160, largest \|net\(x, t\)\| "
                                         r"\d.*sigma_t is too small there .*use larger t$"):
        model(x, np.full(3, 1e-320))
    net.weights[-1][...] = 0.0
    net.biases[-1][...] = 3.0e38  # / sigma_t overflows below t = 0.77 (sigma_t = 0.885), not at t = 5
    for t, row in ((0.5, 0), (np.array([5.0, 0.5, 5.0]), 1)):
        with pytest.raises(ValueError) as info:
            model(x, t)
        message = str(info.value)
        assert f"overflows float32 at t = 0.5 (row {row}: sigma_t = 0.795, largest |net(x, t)| 3e+38)" in message
        assert "use larger t" not in message and "rescale x or the parameters" in message
    assert np.all(np.isfinite(model(x, 5.0)))


@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_x_of_another_dtype_is_named_with_the_dtype_passed(parameterization):
    """model(x, t) with int64 x for a float32 network said "got float64" (the promoted dtype, not
    the one passed); so did divergence and jvp."""
    model = ScoreModel(MLP(2, (4,), rng=0, dtype=np.float32), OU(), parameterization)
    x = np.ones((3, 2), np.int64)
    match = r"^x must have dtype float32 \(the network's\), got int64; pass np.asarray\(x, dtype=np.float32\)$"
    for call in (lambda: model(x, 0.5), lambda: model.divergence(x, 0.5),
                 lambda: model.jvp(x, 0.5, np.ones((3, 1, 2)))):
        with pytest.raises(ValueError, match=match):
            call()
    assert model(x.astype(np.float32), 0.5).dtype == np.float32


def test_a_residual_jvp_that_overflows_is_refused_without_a_warning():
    """"residual" subtracts the tangents from the network's product: past float64 that warned
    "overflow encountered in subtract" before its refusal (the "noise" branch did not)."""
    import warnings

    model = ScoreModel(MLP(2, (8,), "silu", "linear", rng=0), OU(), "residual")
    x = np.random.default_rng(0).standard_normal((3, 2))
    tangents = np.full((3, 1, 2), 1.5e308)
    assert np.all(np.isfinite(model.network.jvp(x, 0.5, tangents)[1]))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^the score or its Jacobian-vector product overflows"):
            model.jvp(x, 0.5, tangents)
