"""Denoising score matching (sgm_ref.losses, kernels sgm_ref.kernels.dsm) and sample_times.

References: central finite differences in float64 (sgm_ref.gradcheck), the loss written
again in NumPy and in PyTorch (autograd for the gradient), the DSM identity against the
exact mixture oracle (a Monte-Carlo test, tolerance in standard errors), and KS tests
for the time distributions. All seeds are fixed.
"""

import numpy as np
import pytest
from scipy import stats

from sgm_ref import OU, VP, GaussianMixture
from sgm_ref.gradcheck import check_gradient
from sgm_ref.losses import dsm_loss, importance_times, sample_times
from sgm_ref.nn import MLP
from sgm_ref.score_model import ScoreModel

ACTIVATIONS = ("relu", "silu", "tanh", "softplus")
EMBEDDINGS = ("linear", "log", "fourier")
PARAMETERIZATIONS = ("score", "noise", "residual")
WEIGHTINGS = ("none", "sigma2")
PROCESSES = (OU(), VP())
D, WIDTHS, N = 3, (8, 6), 16
EPS, RTOL = 1e-5, 1e-6


def batch(seed=0, n=N, d=D, t_range=(0.05, 1.0)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.uniform(*t_range, n), rng.standard_normal((n, d))


def model_for(activation, embedding, parameterization, process=OU(), seed=1, dtype=np.float64):
    return ScoreModel(MLP(D, WIDTHS, activation, embedding, dtype=dtype, rng=seed), process, parameterization)


def keep_relu_away_from_kinks(model, x0, t, z, numpy_ref):
    """Shift relu biases until no pre-activation on the noised batch is within the margin of 0."""
    alpha, sigma2 = numpy_ref.coefficients(model.process, t)
    xt = alpha[:, None] * x0 + np.sqrt(sigma2)[:, None] * z
    numpy_ref.keep_relu_away_from_kinks(model.network, xt, t)


# -- the gradient ----------------------------------------------------------------------------

def gradcheck_loss(model, x0, t, z, weighting):
    value, grad = dsm_loss(model, x0, t, z, weighting)
    result = check_gradient(lambda theta: dsm_loss(model, x0, t, z, weighting, grad=False)[0],
                            grad, model.params, eps=EPS, rtol=RTOL, atol=1e-8 * np.abs(grad).max())
    assert result.passed, f"max relative error {result.max_rel_error:.3e} at entry {result.worst}"


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradient_matches_finite_differences(activation, parameterization, weighting, numpy_ref):
    """Every activation x parameterization x weighting x time embedding, OU, float64."""
    x0, t, z = batch()
    for embedding in EMBEDDINGS:
        model = model_for(activation, embedding, parameterization)
        keep_relu_away_from_kinks(model, x0, t, z, numpy_ref)
        gradcheck_loss(model, x0, t, z, weighting)


@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_gradient_matches_finite_differences_vp(parameterization, weighting):
    """The process enters only through alpha_t, sigma_t: one activation suffices. t up to
    t_max = 1 and down to 0.01 (sigma_t ~ 0.03 on VP, so 'noise' and 'none' are stiff)."""
    x0, t, z = batch(seed=3, t_range=(0.01, 1.0))
    gradcheck_loss(model_for("silu", "fourier", parameterization, VP(0.1, 20.0)), x0, t, z, weighting)


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "VP"])
@pytest.mark.parametrize("weighting", WEIGHTINGS)
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_and_gradient_match_torch(activation, parameterization, weighting, process, torch_ref):
    """Same parameters, batch, t and z: loss to 5e-15 relative, gradient to 5e-15 of max|grad|
    (measured: 3.9e-16 and 6.2e-16; docs/design.md and guide.md cite these figures). The
    bounds were 1e-12 and 1e-10, which let through what the stable forms are there to prevent: sigma_t
    of the loss as sqrt(1 - alpha_t^2), which cancels near t = 0, moved the loss by up to 5.5e-15 and
    the gradient by 1.1e-14 on VP here (t >= 0.01), and passed."""
    x0, t, z = batch(seed=4, n=64, t_range=(0.01, 1.0))
    for embedding in EMBEDDINGS:
        model = model_for(activation, embedding, parameterization, process)
        value, grad = dsm_loss(model, x0, t, z, weighting)
        params = torch_ref.parameters(model.network)
        loss = torch_ref.dsm_loss(model, params, x0, t, z, weighting)
        loss.backward()
        expected = torch_ref.flat([p.grad for p in params])
        assert abs(value - loss.item()) <= 5e-15 * abs(loss.item()), embedding
        assert np.abs(grad - expected).max() <= 5e-15 * np.abs(expected).max(), embedding


@pytest.mark.parametrize("process", PROCESSES, ids=["OU", "VP"])
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_loss_matches_numpy(parameterization, process, numpy_ref):
    x0, t, z = batch(seed=5, n=100, t_range=(0.001, 1.0))
    model = model_for("tanh", "fourier", parameterization, process)
    for weighting in WEIGHTINGS:
        expected = numpy_ref.dsm_loss(model, x0, t, z, weighting)[0]  # sgm_ref.plain, the specification
        value, _ = dsm_loss(model, x0, t, z, weighting, grad=False)
        assert value == pytest.approx(expected, rel=1e-12)


def test_loss_is_a_mean_over_rows():
    """L(batch) = (n1 L(first rows) + n2 L(other rows)) / n, and scalar t broadcasts."""
    x0, t, z = batch(seed=6, n=30)
    model = model_for("silu", "log", "noise")
    whole, g = dsm_loss(model, x0, t, z, "sigma2")
    a, ga = dsm_loss(model, x0[:10], t[:10], z[:10], "sigma2")
    b, gb = dsm_loss(model, x0[10:], t[10:], z[10:], "sigma2")
    assert whole == pytest.approx((10 * a + 20 * b) / 30, rel=1e-14)
    np.testing.assert_allclose(g, (10 * ga + 20 * gb) / 30, rtol=1e-12, atol=1e-15)
    scalar, _ = dsm_loss(model, x0, 0.3, z, grad=False)
    per_row, _ = dsm_loss(model, x0, np.full(30, 0.3), z, grad=False)
    assert scalar == per_row


def test_grad_false_and_grad_params_buffer():
    x0, t, z = batch(seed=7)
    model = model_for("softplus", "fourier", "residual")
    value, grad = dsm_loss(model, x0, t, z, "none")
    value_only, nothing = dsm_loss(model, x0, t, z, "none", grad=False)
    assert nothing is None and value_only == value
    buffer = np.full(model.network.n_params, np.nan)
    value2, returned = dsm_loss(model, x0, t, z, "none", grad_params=buffer)
    assert returned is buffer and value2 == value
    np.testing.assert_array_equal(buffer, grad)


def test_dsm_loss_refuses_a_grad_params_that_is_the_models_params():
    """Review: dsm_loss(..., grad_params=model.params) was accepted and returned a gradient
    1.5 off (computed from weights it had already overwritten), leaving the parameters
    replaced by it. It is refused, parameters untouched."""
    x0, t, z = batch(seed=7)
    model = model_for("silu", "log", "noise")
    theta = model.params.copy()
    value, grad = dsm_loss(model, x0, t, z, "sigma2")
    with pytest.raises(ValueError, match="grad_params must not share memory with model.params"):
        dsm_loss(model, x0, t, z, "sigma2", grad_params=model.params)
    np.testing.assert_array_equal(model.params, theta)
    buffer = np.empty(model.network.n_params)
    value2, returned = dsm_loss(model, x0, t, z, "sigma2", grad_params=buffer)
    assert returned is buffer and value2 == value
    np.testing.assert_array_equal(buffer, grad)


def test_float32_loss_is_close_to_float64():
    x0, t, z = batch(seed=8, n=64)
    m64 = model_for("silu", "fourier", "noise")
    m32 = model_for("silu", "fourier", "noise", dtype=np.float32)
    v64, g64 = dsm_loss(m64, x0, t, z, "sigma2")
    v32, g32 = dsm_loss(m32, x0.astype(np.float32), t, z.astype(np.float32), "sigma2")
    assert g32.dtype == np.float32
    assert v32 == pytest.approx(v64, rel=1e-5)
    assert np.abs(g32 - g64).max() <= 1e-5 * np.abs(g64).max()


def test_dsm_identity_against_the_exact_score():
    """Vincent's identity, weighting 'none': for any two score functions s1, s2,

        E|s1(xt) + z/sigma|^2 - E|s2(xt) + z/sigma|^2 = E|s1 - grad log p_t|^2 - E|s2 - grad log p_t|^2,

    so the paired difference D = [DSM(s1) - DSM(s2)] - [err(s1) - err(s2)] has mean 0 exactly.
    A sign error in z / sigma_t, or a wrong alpha_t / sigma_t, breaks it. 100 batches of
    1000 rows of the ring mixture, t ~ U[0.05, 1]; tolerance 4 standard errors."""
    ring = GaussianMixture.ring()
    rng = np.random.default_rng(11)
    models = [ScoreModel(MLP(2, (16,), "tanh", "log", rng=s), OU(), "score") for s in (0, 1)]
    D_values, err_values = [], []
    for _ in range(100):
        x0 = ring.sample(1000, rng)
        t = rng.uniform(0.05, 1.0, 1000)
        z = rng.standard_normal((1000, 2))
        xt = np.exp(-t)[:, None] * x0 + np.sqrt(-np.expm1(-2 * t))[:, None] * z
        exact = ring.score(xt, t)
        dsm = [dsm_loss(m, x0, t, z, grad=False)[0] for m in models]
        err = [np.mean(np.sum((m(xt, t) - exact) ** 2, axis=1)) for m in models]
        D_values.append((dsm[0] - dsm[1]) - (err[0] - err[1]))
        err_values.append(err[0] - err[1])
    D_values, err_values = np.array(D_values), np.array(err_values)
    se = D_values.std(ddof=1) / np.sqrt(D_values.size)
    assert abs(D_values.mean()) < 4 * se
    # the test has power: the score errors themselves differ by many standard errors
    assert abs(err_values.mean()) > 20 * se


# -- bad input ---------------------------------------------------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"x0": np.zeros((N, D), np.float32)}, "x0 must have dtype float64"),
    ({"x0": np.zeros((N, 2))}, "x0"),
    ({"z": np.zeros((N, D), np.float32)}, "z must have dtype float64"),
    ({"z": np.zeros((N - 1, D))}, "z must have the shape of x0"),
    ({"x0": np.zeros((0, D)), "z": np.zeros((0, D)), "t": np.zeros(0)}, "x0 must have at least one row"),
    ({"t": np.full(N - 1, 0.5)}, "one value per row"),
    ({"t": np.r_[0.0, np.full(N - 1, 0.5)]}, "t must be > 0"),
    ({"t": -0.5}, "t must be >= 0"),
    ({"t": np.nan}, "t must be finite"),
    ({"weighting": "sigma"}, "weighting"),
    ({"grad_params": np.zeros(5)}, "grad_params"),
    ({"grad_params": "float32"}, "grad_params"),
])
def test_dsm_loss_rejects_bad_input(change, message):
    model = model_for("silu", "log", "noise")
    x0, t, z = batch()
    args = {"x0": x0, "t": t, "z": z, "weighting": "none", "grad_params": None, **change}
    if isinstance(args["grad_params"], str):
        args["grad_params"] = np.zeros(model.network.n_params, np.float32)
    with pytest.raises(ValueError, match=message):
        dsm_loss(model, **args)


def test_dsm_loss_rejects_t_beyond_the_vp_horizon():
    x0, t, z = batch()
    with pytest.raises(ValueError, match="horizon"):
        dsm_loss(model_for("silu", "linear", "score", VP()), x0, np.full(N, 1.5), z)


# -- sample_times ------------------------------------------------------------------------------

def test_sample_times_uniform():
    t = sample_times(20000, 0.01, 5.0, np.random.default_rng(0))
    assert t.shape == (20000,) and t.dtype == np.float64
    assert t.min() >= 0.01 and t.max() <= 5.0
    assert stats.kstest(t, stats.uniform(0.01, 4.99).cdf).pvalue > 0.01
    # power: log-uniform is not what was drawn
    assert stats.kstest(t, stats.loguniform(0.01, 5.0).cdf).pvalue < 1e-10


def test_sample_times_log_uniform():
    t = sample_times(20000, 1e-3, 2.0, np.random.default_rng(1), "log-uniform")
    assert t.shape == (20000,) and t.dtype == np.float64
    assert t.min() >= 1e-3 and t.max() <= 2.0
    assert stats.kstest(t, stats.loguniform(1e-3, 2.0).cdf).pvalue > 0.01
    assert stats.kstest(t, stats.uniform(1e-3, 2.0 - 1e-3).cdf).pvalue < 1e-10


def test_importance_times_are_the_defensive_mixture():
    t0, T = 1e-3, 5.0
    t, w = importance_times(40000, t0, T, np.random.default_rng(2))
    assert t.shape == w.shape == (40000,) and t.min() >= t0 and t.max() <= T
    mixture = lambda x: 0.5 * stats.uniform(t0, T - t0).cdf(x) + 0.5 * stats.loguniform(t0, T).cdf(x)  # noqa: E731
    assert stats.kstest(t, mixture).pvalue > 0.01
    assert stats.kstest(t, stats.uniform(t0, T - t0).cdf).pvalue < 1e-10  # power: not the uniform itself
    # w = pi / q, written out from the two densities
    q = 0.5 / (T - t0) + 0.5 * stats.loguniform(t0, T).pdf(t)
    np.testing.assert_allclose(w, (1.0 / (T - t0)) / q, rtol=1e-13)
    assert w.max() <= 2.0 and w.min() > 0


@pytest.mark.parametrize("distribution", ["uniform", "log-uniform"])
def test_importance_weighted_means_have_the_objectives_expectation(distribution):
    # E_q[w f] = E_pi[f] for f = 1 / sigma_t^2 of the OU process, the factor that makes small
    # t dominate the paper's loss; the reference is quadrature of pi f (scipy)
    from scipy import integrate

    t0, T = 1e-2, 5.0
    f = lambda t: 1.0 / -np.expm1(-2.0 * t)  # noqa: E731  (OU: sigma_t^2 = 1 - e^{-2t})
    pi = stats.uniform(t0, T - t0).pdf if distribution == "uniform" else stats.loguniform(t0, T).pdf
    exact = integrate.quad(lambda t: pi(t) * f(t), t0, T, points=[0.1, 1.0], limit=200)[0]
    t, w = importance_times(400_000, t0, T, np.random.default_rng(7), distribution)
    values = w * f(t)
    se = values.std(ddof=1) / np.sqrt(values.size)
    assert abs(values.mean() - exact) < 4 * se
    if distribution == "uniform":
        # and with less variance than the plain uniform draws (what it is for)
        plain = f(sample_times(400_000, t0, T, np.random.default_rng(8)))
        assert values.var() < 0.2 * plain.var()
    else:
        np.testing.assert_array_equal(w, 1.0)


def test_importance_times_draws_and_errors():
    t0, T = 0.1, 2.0
    t, _ = importance_times(50, t0, T, np.random.default_rng(3))
    twin = np.random.default_rng(3)
    v, u = twin.random(50), twin.random(50)
    expected = np.where(v < 0.5, t0 + (T - t0) * u, np.exp(np.log(t0) + (np.log(T) - np.log(t0)) * u))
    np.testing.assert_array_equal(t, expected)
    with pytest.raises(ValueError, match="distribution must be one of"):
        importance_times(10, t0, T, np.random.default_rng(0), "normal")
    with pytest.raises(ValueError, match="t0 < T"):
        importance_times(10, T, t0, np.random.default_rng(0))


def test_sample_times_is_reproducible():
    a = sample_times(100, 0.1, 1.0, np.random.default_rng(3), "log-uniform")
    b = sample_times(100, 0.1, 1.0, np.random.default_rng(3), "log-uniform")
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("args, message", [
    ((0, 0.1, 1.0), "n"),
    ((10, 1.0, 1.0), "t0 < T"),
    ((10, 0.0, 1.0), "t0 < T"),
    ((10, 0.1, np.inf), "T must be"),
])
def test_sample_times_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        sample_times(*args, np.random.default_rng(0))


def test_sample_times_rejects_unknown_distribution_and_bad_rng():
    with pytest.raises(ValueError, match="distribution"):
        sample_times(10, 0.1, 1.0, np.random.default_rng(0), "exponential")
    with pytest.raises(ValueError, match="rng"):
        sample_times(10, 0.1, 1.0, 0)


# -- extreme inputs (issue 11, item 10): a ValueError naming the cause, never inf -----------------


def test_dsm_loss_refuses_a_t_whose_sigma_makes_the_loss_overflow():
    model = model_for("silu", "linear", "score")
    x0, t, z = batch()
    t[:] = 1e-320  # sigma_t = 1.4e-160: (z / sigma_t)^2 overflows; the loss was inf
    with pytest.raises(ValueError, match=r"loss overflows float64\. At the smallest t = 1e-320, sigma_t = 1\.41e-160 "
                                         r"and \|z\| / sigma_t reaches .*must stay well below .*Use larger t"):
        dsm_loss(model, x0, t, z)
    for weighting in WEIGHTINGS:
        value, grad = dsm_loss(model, x0, np.full(t.shape, 1e-300), z, weighting)  # still representable
        assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_dsm_loss_refuses_x0_entries_that_overflow_the_network():
    model = model_for("silu", "linear", "residual")
    x0, t, z = batch()
    x0[0, 0] = 1e300  # the loss was inf, the gradient inf and -inf
    with pytest.raises(ValueError, match=r"overflows float64.*largest \|x0\| entry is 1e\+300.*rescale x0"):
        dsm_loss(model, x0, t, z)
    with pytest.raises(ValueError, match=r"overflows float64"):
        dsm_loss(model, x0, t, z, grad=False)


def test_sample_times_names_a_size_beyond_numpy():
    from sgm_ref.losses import sample_times

    with pytest.raises(ValueError, match=r"^n = 4611686018427387904 asks for .* lower n$"):
        sample_times(2**62, 0.01, 1.0, np.random.default_rng(0))


def test_dsm_loss_names_a_read_only_grad_params_and_array_choices():
    """Review: a read-only grad_params got NumPy's 'output array is read-only' (naming nothing);
    an array for weighting or distribution got 'The truth value of an array ... is ambiguous'."""
    model = ScoreModel(MLP(2, (4,), rng=0), OU())
    x0 = np.zeros((3, 2))
    frozen = np.empty(model.network.n_params)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="grad_params must be a contiguous writeable ndarray"):
        dsm_loss(model, x0, 0.5, x0, grad_params=frozen)
    with pytest.raises(ValueError, match="weighting must be one of"):
        dsm_loss(model, x0, 0.5, x0, weighting=np.array(["none", "sigma2"]))
    for draw in (sample_times, importance_times):
        with pytest.raises(ValueError, match="distribution must be one of"):
            draw(3, 0.1, 1.0, np.random.default_rng(0), distribution=np.array(["uniform", "log-uniform"]))


# -- the end points of the time draws (review) --------------------------------------------------

U_MAX = 1.0 - 2.0**-53  # the largest value of Generator.random()


class EdgeDraws(np.random.Generator):
    """A Generator whose random(n) returns the given arrays in turn (the other draws are PCG64's)."""

    def __init__(self, *arrays):
        super().__init__(np.random.PCG64(0))
        self.arrays = [np.asarray(a, dtype=np.float64) for a in arrays]

    def random(self, size=None, dtype=np.float64, out=None):
        u = self.arrays.pop(0)
        assert u.shape == (size,)
        return u.copy()


EDGE_U = np.array([0.0, 2.0**-53, 0.25, 0.5, U_MAX - 2.0**-53, U_MAX])


def log_uniform_mp(t0, T, u):
    """t0 (T / t0)^u in 40-digit mpmath, rounded to float64."""
    import mpmath

    with mpmath.workdps(40):
        return np.array([float(mpmath.mpf(t0) * (mpmath.mpf(T) / mpmath.mpf(t0)) ** mpmath.mpf(float(v))) for v in u])


def exp_log_draws(t0, T, u):
    """The log-uniform formula as training has drawn it: exp(log t0 + (log T - log t0) u)."""
    return np.exp(np.log(t0) + (np.log(T) - np.log(t0)) * u)


# (t0, T) whose draws left [t0, T]: exp(log 1e-5) < 1e-5 (u = 0), exp(log 10) = 10.000000000000002
# and exp(log 0.2 + (log 0.344 - log 0.2) U_MAX) > 0.344 (u = U_MAX); (0.09, 0.226) both
EDGE_RANGES = [(1e-5, 1.0), (0.2, 10.0), (0.2, 0.344), (0.09, 0.226), (0.1, 0.2)]


@pytest.mark.parametrize("t0, T", EDGE_RANGES)
def test_log_uniform_times_stay_in_t0_T(t0, T):
    """Review: log-uniform times were exp(log t0 + span u), whose roundings put u = 0 below t0
    (1e-5 gave 9.999999999999997e-06) and u near 1 above T (10 gave 10.000000000000002, past
    EDM(t_max=10)'s horizon). A draw so outside is now drawn again inside, within an ulp of
    t0 (T / t0)^u (t0 itself at u = 0); every draw that was inside keeps its bits (training runs
    keep their numbers)."""
    old = exp_log_draws(t0, T, EDGE_U)
    inside = (old >= t0) & (old <= T)
    t = sample_times(EDGE_U.size, t0, T, EdgeDraws(EDGE_U), "log-uniform")
    assert t.min() >= t0 and t.max() <= T
    np.testing.assert_array_equal(t[inside], old[inside])
    # the others: t0 (T / t0)^u to the ulp (40-digit mpmath; t0 itself at u = 0)
    exact = log_uniform_mp(t0, T, EDGE_U)
    assert np.all(np.abs(t - exact)[~inside] <= np.spacing(exact[~inside]))
    assert inside[0] or t[0] == t0
    # and so for importance_times: both branches of the mixture, and its "log-uniform" q = pi
    v = np.where(np.arange(EDGE_U.size) % 2 == 0, 0.25, 0.75)  # uniform branch, then log-uniform
    for distribution in ("uniform", "log-uniform"):
        t, w = importance_times(EDGE_U.size, t0, T, EdgeDraws(v, EDGE_U), distribution)
        assert t.min() >= t0 and t.max() <= T and np.all(np.isfinite(w)) and w.max() <= 2.0


def test_log_uniform_end_points_of_many_ranges():
    """300 ranges (t0, T) over 10 decades: at u = 0 and u = U_MAX the old formula left [t0, T]
    for 111 of them below and 44 above (on this machine's exp and log; the cases above were
    found so). The draws now stay inside, and those the old formula kept inside are unchanged."""
    rng = np.random.default_rng(15)
    t0s = 10.0 ** rng.uniform(-8, 2, 300)
    Ts = t0s * 10.0 ** rng.uniform(1e-3, 4, 300)
    u = np.array([0.0, U_MAX])
    left = np.zeros(2, dtype=int)
    for t0, T in zip(t0s, Ts):
        old = exp_log_draws(t0, T, u)
        left += [old[0] < t0, old[1] > T]
        t = sample_times(2, t0, T, EdgeDraws(u), "log-uniform")
        assert t0 <= t[0] <= t[1] <= T
        inside = (old >= t0) & (old <= T)
        np.testing.assert_array_equal(t[inside], old[inside])
    assert left[0] > 50 and left[1] > 5  # power: the old draws did leave, at both ends


def test_uniform_times_stay_in_t0_T_at_the_end_points():
    """t0 + (T - t0) u is t0 at u = 0 and at most T at u = U_MAX (it rounds no further: checked
    for 10^6 random pairs over 60 decades, and for every pair of normal float16s in the analogue)."""
    rng = np.random.default_rng(12)
    t0 = 10.0 ** rng.uniform(-30, 30, 10**6)
    T = t0 * (1.0 + 10.0 ** rng.uniform(-15, 5, 10**6))
    keep = t0 < T
    t0, T = t0[keep], T[keep]
    np.testing.assert_array_equal(t0 + (T - t0) * 0.0, t0)
    assert np.all(t0 + (T - t0) * U_MAX <= T)
    t = sample_times(2, 0.2, 10.0, EdgeDraws([0.0, U_MAX]))
    assert t[0] == 0.2 and t[1] <= 10.0


def test_a_log_uniform_time_at_t_max_is_accepted_by_the_loss():
    """T = t_max = 0.344 (VPCosine) and t0 = 0.2: u = U_MAX drew 0.34400000000000003, which
    dsm_loss refused ("t must be <= 0.344"); the time drawn now is within an ulp of t_max, not past it."""
    from sgm_ref import VPCosine

    process = VPCosine(t_max=0.344)
    t = sample_times(2, 0.2, 0.344, EdgeDraws([0.0, U_MAX]), "log-uniform")
    assert t[0] == 0.2 and 0.344 - np.spacing(0.344) <= t[1] <= 0.344
    model = ScoreModel(MLP(2, (4,), rng=0), process)
    x0 = np.random.default_rng(0).standard_normal((2, 2))
    value, grad = dsm_loss(model, x0, t, x0)
    assert np.isfinite(value) and np.all(np.isfinite(grad))


def test_exact_score_loss_of_edm_at_its_horizon():
    """exact_score_loss(EDM(t_max=10), T=10, log-uniform) was refused when a draw of u near 1
    gave t = 10.000000000000002 ("t must be <= 10.0 (the process's horizon T)")."""
    from sgm_ref.evaluation import exact_score_loss
    from sgm_ref.processes import EDM

    class Top(np.random.Generator):  # every uniform draw U_MAX (the ring's choice of mode too)
        def random(self, size=None, dtype=np.float64, out=None):
            return np.full(size, U_MAX)

    ring = GaussianMixture.ring()
    value, se = exact_score_loss(ring, EDM(t_max=10.0), t0=0.2, T=10.0, weighting="none",
                                 time_distribution="log-uniform", n=4, rng=Top(np.random.PCG64(0)))
    assert np.isfinite(value) and np.isfinite(se)


def test_log_uniform_times_of_a_tiny_t0_and_a_narrow_range():
    """t0 ~ 1e-300, T = t0 (1 + 1e-12): log t0's rounding (half an ulp of 690) is ~250 ulps of t,
    a fifth of the range, and a few % of the draws fell outside [t0, T] (t0 = 1e-300: 5.6%, up to
    282 ulps). Now inside, each within an ulp of t0 (T / t0)^u (mpmath), and the draws that were
    inside unchanged; importance_times' too."""
    left = 0
    for k, t0 in enumerate(10.0 ** np.random.default_rng(16).uniform(-300, -290, 10)):
        T = t0 * (1.0 + 1e-12)
        u = np.random.default_rng(k).random(500)
        old = exp_log_draws(t0, T, u)
        inside = (old >= t0) & (old <= T)
        left += np.count_nonzero(~inside)
        t = sample_times(500, t0, T, np.random.default_rng(k), "log-uniform")
        assert t.min() >= t0 and t.max() <= T
        np.testing.assert_array_equal(t[inside], old[inside])
        exact = log_uniform_mp(t0, T, u[~inside])
        assert np.all(np.abs(t[~inside] - exact) <= np.spacing(exact))
        for distribution in ("uniform", "log-uniform"):
            t, w = importance_times(500, t0, T, np.random.default_rng(k), distribution)
            assert t.min() >= t0 and t.max() <= T and np.all(np.isfinite(w))
    assert left > 50  # power: the old draws did leave


def test_dsm_loss_names_the_dtype_passed_and_a_grad_that_is_not_a_bool():
    """Review: integer x0 for a float32 model was refused as "got float64" (check_points' promotion,
    not what was passed); grad="no" computed the gradient and grad=None did not (truthiness)."""
    model = ScoreModel(MLP(3, (5,), rng=0, dtype=np.float32), OU())
    z = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match=r"^x0 must have dtype float32 \(the model's\), got int64; "
                                         r"pass np\.asarray\(x0, dtype=np\.float32\)$"):
        dsm_loss(model, np.ones((4, 3), np.int64), 0.5, z)
    with pytest.raises(ValueError, match=r"z must have dtype float32 \(the model's\), got int32"):
        dsm_loss(model, z, 0.5, np.ones((4, 3), np.int32))
    for grad in ("no", None, 0, 1.0, np.array([True])):
        with pytest.raises(ValueError, match="^grad must be True or False, got "):
            dsm_loss(model, z, 0.5, z, grad=grad)
    value, nothing = dsm_loss(model, z, 0.5, z, grad=np.bool_(False))
    # read as False: the loss of grad=False (the float32 silu network's output without the tape differs
    # from the taped one in its last float32 bits, which the loss, worked in float64, shows)
    assert nothing is None and value == dsm_loss(model, z, 0.5, z, grad=False)[0]


def test_dsm_loss_overflow_messages_of_a_float32_model():
    """Review: a float32 model's loss (summed in float64) was said to overflow float32, and both
    messages gave sqrt(max_float32 / d) = 1.3e19 as the limit on |z| / sigma_t, though t = 1e-50
    (|z| / sigma_t = 7e24) trains fine with 'score'. The loss now names float64 and its limit; the
    gradient names the factor of dL/dout that overflowed, lambda |z| / sigma_t (/ sigma_t^2 for
    'noise'), against float32's max. OU: sigma_t^2 = -expm1(-2t) = 2e-50 at t = 1e-50."""
    x = np.ones((3, 2), np.float32)
    t = np.array([1e-50, 0.5, 1.0])
    noise = ScoreModel(MLP(2, (4,), rng=0, dtype=np.float32), OU(), "noise")
    message = (r"^dsm_loss: the gradient overflows float32\. At t = 1e-50, sigma_t = 1\.41e-25 and lambda \|z\| / "
               r"sigma_t\^2 reaches 5e\+49 \(it must stay well below 3\.4e\+38, the largest float32\); the largest "
               r"\|x0\| entry is 1 ")
    with pytest.raises(ValueError, match=message):
        dsm_loss(noise, x, t, x)
    for parameterization, weighting in (("noise", "sigma2"), ("score", "none"), ("score", "sigma2")):
        model = ScoreModel(MLP(2, (4,), rng=0, dtype=np.float32), OU(), parameterization)
        value, grad = dsm_loss(model, x, t, x, weighting)
        assert np.isfinite(value) and np.all(np.isfinite(grad))
    with pytest.raises(ValueError, match=r"^dsm_loss: the loss overflows float64\. At the smallest t = 1e-320, "
                                         r"sigma_t = 1\.41e-160 and \|z\| / sigma_t reaches 7\.07e\+159 \(it must stay "
                                         r"well below 9\.48e\+153 = sqrt\(max / d\)\)"):
        dsm_loss(noise, x, np.array([1e-320, 0.5, 1.0]), x, "sigma2")


def test_dsm_loss_names_a_model_that_is_not_a_score_model():
    """Review: dsm_loss(net, ...) with the MLP itself, or with a score function, raised
    AttributeError: 'MLP' object has no attribute 'network'."""
    x = np.ones((3, 2))
    for model in (MLP(2, (4,), rng=0), lambda x, t: -x, None):
        with pytest.raises(ValueError, match=r"^model must be an sgm_ref\.ScoreModel .*, got "
                                             r"(MLP|function|NoneType); pass ScoreModel\(network, process"):
            dsm_loss(model, x, 0.5, x)


# -- the residual r = s + z / sigma, worked in float64 --------------------------------------------

def exact_residual(kind, out, x, z, sigma, lam, scale):
    """Rows lam_i |r_i|^2 and dL/dout (exact rationals) of the floats given, r = s + z / sigma."""
    from fractions import Fraction as F

    rows, grads = [], []
    for i in range(out.shape[0]):
        s_i, acc, g_i = F(float(sigma[i])), F(0), []
        for j in range(out.shape[1]):
            o, x_ij, z_ij = F(float(out[i, j])), F(float(x[i, j])), F(float(z[i, j]))
            score = o if kind == "score" else -o / s_i if kind == "noise" else o - x_ij
            r = score + z_ij / s_i
            acc += r * r
            g = 2 * F(scale) * F(float(lam[i])) * r
            g_i.append(-g / s_i if kind == "noise" else g)
        rows.append(F(float(lam[i])) * acc)
        grads.append(g_i)
    return rows, grads


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["score", "noise", "residual"])
def test_dsm_residual_kernel_is_float64_and_keeps_a_good_models_digits(kind, dtype):
    """The kernel's row losses and dL/dout against exact rationals of its inputs, for outputs 1% off
    the target (a good model: s + z / sigma is a small difference). Review: numba types float32 -
    float32 as float32, so a float32 residual model's out - x was rounded to float32 (row losses 2.3e-5
    off, an entry of dL/dout 4.7e-3); for noise, -out / sigma + z / sigma lost the digits that the
    exact difference z - out keeps (rows 5.3e-14, dL/dout 2.5e-13). Measured now: rows within 3.5e-16
    for noise, 7.5e-14 for score and residual (the rounding of z / sigma, |z| / sigma against |r|);
    dL/dout of float32 the exact value rounded once, of float64 noise within 4.1e-16."""
    from sgm_ref.kernels.dsm import PARAMETERIZATION_CODES, dsm_residual

    rng = np.random.default_rng(3)
    n, d = 40, 3
    sigma = rng.uniform(0.05, 1.0, n)
    lam = sigma**2
    x = rng.standard_normal((n, d)).astype(dtype)
    z = rng.standard_normal((n, d)).astype(dtype)
    target = {"score": -z / sigma[:, None], "noise": z, "residual": x - z / sigma[:, None]}[kind]
    out = (target * (1.0 + 0.01 * rng.standard_normal((n, d)))).astype(dtype)
    grad_out, rows = out.copy(), np.empty(n)
    dsm_residual(grad_out, x, z, sigma, lam, PARAMETERIZATION_CODES[kind], 1.0 / n, rows)
    exact_rows, exact_grads = exact_residual(kind, out, x, z, sigma, lam, 1.0 / n)
    want = np.array([float(v) for v in exact_rows])
    limit = 2e-15 if kind == "noise" else 1e-13
    assert np.max(np.abs(rows - want) / want) <= limit
    want_grad = np.array([[float(g) for g in row] for row in exact_grads])
    if dtype == np.float32:  # the exact value rounded once to float32 (half an ulp)
        assert np.all(np.abs(grad_out - want_grad) <= 2.0**-24 * np.abs(want_grad))
    elif kind == "noise":  # z - out exact: each entry to a few roundings of itself
        assert np.max(np.abs(grad_out - want_grad) / np.abs(want_grad)) <= 2e-15
    else:  # a rounding of the terms |out|, |x|, |z| / sigma of the sum r (an entry can be far smaller)
        terms = 2.0 / n * lam[:, None] * (np.abs(out) + np.abs(x) + np.abs(z) / sigma[:, None])
        assert np.all(np.abs(grad_out - want_grad) <= 4 * np.finfo(np.float64).eps * terms)


def test_a_float32_residual_models_loss_is_worked_in_float64():
    """dsm_loss of a float32 residual model is the float64 mean of lam |out - x + z / sigma|^2 over its
    own float32 output and input, to 1e-14 (measured 1.4e-16). Review: out - x was rounded to float32
    in the kernel: the loss was 9.3e-9 off for this random network."""
    rng = np.random.default_rng(4)
    n, d = 32, 3
    model = ScoreModel(MLP(d, (8, 8), "tanh", "log", dtype=np.float32, rng=2), OU(), "residual")
    x0 = rng.standard_normal((n, d)).astype(np.float32)
    z = rng.standard_normal((n, d)).astype(np.float32)
    t = rng.uniform(0.3, 2.0, n)
    for weighting in WEIGHTINGS:
        value, _ = dsm_loss(model, x0, t, z, weighting, grad=False)
        alpha, sigma2 = OU().alpha(t), OU().sigma2(t)
        sigma = np.sqrt(sigma2)
        x = (alpha[:, None] * x0.astype(np.float64) + sigma[:, None] * z.astype(np.float64)).astype(np.float32)
        out = model.network.forward(x, t)
        lam = sigma2 if weighting == "sigma2" else np.ones(n)
        rows, _ = exact_residual("residual", out, x, z, sigma, lam, 1.0 / n)
        want = float(sum(rows) / n)
        assert abs(value - want) <= 1e-14 * want, (value, want)


def test_a_non_finite_parameter_is_named_by_dsm_loss_not_called_an_overflow():
    """A NaN written into model.params made dsm_loss say "the loss overflows float64 ... |z| /
    sigma_t reaches 2.92 ... the largest |parameter| nan. Use larger t, or rescale": no
    rescaling mends it. The network's own message (MLP._overflow) names the first one, as
    the model's forward pass does, for the loss and for the gradient, in float32 too."""
    x0, t, z = batch(seed=8)
    for dtype in (np.float64, np.float32):
        model = model_for("silu", "log", "noise", dtype=dtype)
        net = model.network
        fi, fo = net.sizes[0], net.sizes[1]
        net.params[fi * fo + 2] = np.nan  # layer 0's third bias
        net.params[-1] = np.inf
        for grad in (False, True):
            with pytest.raises(ValueError, match=rf"^dsm_loss: the network's loss is not finite: params holds 2 "
                                                 rf"non-finite value\(s\), the first params\[{fi * fo + 2}\] = nan "
                                                 r"\(layer 0's biases\); set finite parameters"):
                dsm_loss(model, x0.astype(dtype), t, z.astype(dtype), grad=grad)
        # the forward pass says the same of its output
        with pytest.raises(ValueError, match=rf"^the network's output is not finite: params holds 2 .*"
                                             rf"params\[{fi * fo + 2}\]"):
            model(x0.astype(dtype), t)


def test_an_overflow_that_z_over_sigma_does_not_explain_names_the_network():
    """Review: every non-finite loss was put down to |z| / sigma_t, also where that ratio was far below
    its own limit: a float32 network whose output overflows float32 (parameters ~6e19) read "the loss
    overflows float64. At the smallest t = 0.5, sigma_t = 0.795 and |z| / sigma_t reaches 2.92 (it must
    stay well below 9.48e+153 ...) ... Use larger t", and a gradient that overflowed in the backward
    pass "lambda |z| / sigma_t reaches 2.92 (it must stay well below 3.4e+38". Each now names what
    overflowed: the network's output, the model's score, the backward pass, or the noised batch."""
    rng = np.random.default_rng(0)
    x0, z = rng.standard_normal((4, 2)), rng.standard_normal((4, 2))
    x32, z32 = x0.astype(np.float32), z.astype(np.float32)

    def scaled(widths, dtype, factor, parameterization="score"):
        model = ScoreModel(MLP(2, widths, "relu", "linear", rng=0, dtype=dtype), OU(), parameterization)
        model.params[:] *= dtype(factor)
        return model

    with pytest.raises(ValueError, match=r"^dsm_loss: the loss is not finite: the network's output overflows "
                                         r"float32 on the noised batch .* largest \|parameter\| 5\.74e\+19: rescale "
                                         r"x0 or the parameters toward order 1$"):
        dsm_loss(scaled((8,), np.float32, 1e20), x32, 0.5, z32)
    for parameterization in ("score", "noise"):  # output finite, |s| ~ 5e155 past sqrt(max / d)
        with pytest.raises(ValueError, match=r"^dsm_loss: the loss overflows float64: the model's score s\(x_t, "
                                             r"t\) reaches [56]\.\d+e\+155 at t = 0\.5 .*\|z\| / sigma_t stays "
                                             r"below 2\.92\)"):
            dsm_loss(scaled((8,), np.float64, 1e78, parameterization), x0, 0.5, z)
    with pytest.raises(ValueError, match=r"^dsm_loss: the gradient overflows float32, though lambda \|z\| / sigma_t "
                                         r"stays below 2\.92: dL/dout reaches 1\.11e\+31 and the backward pass"):
        dsm_loss(scaled((16, 16, 16), np.float32, 1e8), x32, 0.5, z32)  # the loss is finite (float64)
    big = np.full((2, 2), 3.4e38, np.float32)
    with pytest.raises(ValueError, match=r"^dsm_loss: the loss is not finite: the noised batch x_t = alpha_t x0 \+ "
                                         r"sigma_t z overflows float32; the largest \|x0\| entry is 3\.4e\+38"):
        dsm_loss(scaled((8,), np.float32, 1.0), big, 0.1, big)
