"""Fuzz of the numeric modules' public functions with finite but extreme inputs (issue 11).

Every call must either return finite results or raise a ValueError (subclass allowed)
with a one-line message; any other exception, or a NaN or inf anywhere in the result,
fails. Arrays mix ordinary entries with 1e-320 (subnormal), 1e-150, 1e150, 1e300 and
1.7e308, of both signs; scalars (times, bandwidths, learning rates, ...) are drawn from
the same extremes.

Bounded for CI (derandomized, a few dozen examples per target, well under a minute in
all); set SGM_REF_FUZZ_EXAMPLES=N for a longer local run.
"""

import dataclasses
import os
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sgm_ref import OU, VP, GaussianMixture
from sgm_ref import gradcheck, samplers
from sgm_ref import metrics as M
from sgm_ref.losses import dsm_loss, importance_times, sample_times
from sgm_ref.nn import MLP
from sgm_ref.optim import Adam
from sgm_ref.score_model import ScoreModel

EXAMPLES = int(os.environ.get("SGM_REF_FUZZ_EXAMPLES", "25"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=EXAMPLES <= 25, database=None,
                suppress_health_check=list(HealthCheck))

EXTREMES = [0.0, 1e-320, 1e-300, 1e-150, 1e-8, 1.0, 3.0, 1e8, 1e150, 1e300, 1.7e308]
extreme = st.sampled_from(EXTREMES + [-v for v in EXTREMES[1:]])
ordinary = st.floats(-4.0, 4.0, allow_nan=False, allow_infinity=False)
entry = st.one_of(ordinary, ordinary, extreme)
positive = st.one_of(st.sampled_from([v for v in EXTREMES if v > 0]), st.floats(1e-3, 10.0))


def points(n=st.integers(2, 6), d=st.integers(1, 3)):
    return st.tuples(n, d).flatmap(lambda nd: arrays(np.float64, nd, elements=entry))


def finite(value, where="result"):
    """Assert every number inside value (arrays, tuples, dataclasses, dicts) is finite."""
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        for k, v in value.items():
            finite(v, f"{where}.{k}")
    elif isinstance(value, (tuple, list)):
        for i, v in enumerate(value):
            finite(v, f"{where}[{i}]")
    elif isinstance(value, (np.ndarray, float, int, np.floating, np.integer)):
        arr = np.asarray(value)
        if arr.dtype.kind in "fc":
            assert np.all(np.isfinite(arr)), f"{where} is not finite: {value!r}"


CALLS = {"finite": 0, "value_error": 0}


@pytest.fixture(scope="module", autouse=True)
def _count_calls():
    """With SGM_REF_FUZZ_EXAMPLES set, print how many calls ended each way (run with -s)."""
    yield
    if "SGM_REF_FUZZ_EXAMPLES" in os.environ:
        print(f"\nfuzz library calls: {sum(CALLS.values())} ({CALLS['finite']} finite results, "
              f"{CALLS['value_error']} ValueErrors); anything else failed a test")


def finite_or_value_error(call):
    """Run call(); pass on finite output or a one-line ValueError, fail otherwise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow warnings of refused inputs
        try:
            out = call()
        except ValueError as exc:
            message = str(exc)
            assert message and "\n" not in message, f"bad message: {message!r}"
            assert "np.float" not in message, f"numpy repr in message: {message!r}"
            CALLS["value_error"] += 1
            return None
    finite(out)
    CALLS["finite"] += 1
    return out


TARGET1 = GaussianMixture([1.0], [[0.0]])
TARGET2 = GaussianMixture([0.4, 0.6], [[-1.0, 0.0], [1.0, 2.0]], [[0.5, 1.0], [1.0, 0.25]])


# -- the network, the loss and the optimiser ---------------------------------------------------


@FUZZ
@given(x=points(n=st.integers(1, 5), d=st.just(2)), t=positive, scale=st.sampled_from([1.0, 1e10, 1e150]),
       activation=st.sampled_from(["relu", "silu", "tanh", "softplus"]),
       embedding=st.sampled_from(["linear", "log", "fourier"]), g=entry)
def test_mlp_forward_backward(x, t, scale, activation, embedding, g):
    net = MLP(2, (6,), activation, embedding, rng=0)
    with np.errstate(over="ignore"):
        net.params[...] = net.params * scale
    if finite_or_value_error(lambda: net.forward(x, t, keep=True)) is None:
        return
    finite_or_value_error(lambda: net.backward(np.full_like(x, g), input_grad=True))


@FUZZ
@given(x0=points(n=st.integers(1, 5), d=st.just(2)), t=positive, zscale=positive,
       parameterization=st.sampled_from(["score", "noise", "residual"]),
       weighting=st.sampled_from(["none", "sigma2"]), vp=st.booleans(),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_score_model_and_dsm_loss(x0, t, zscale, parameterization, weighting, vp, dtype):
    process = VP() if vp else OU()
    model = ScoreModel(MLP(2, (6,), "silu", "log", dtype=dtype, rng=0), process, parameterization)
    z = np.random.default_rng(0).standard_normal(x0.shape) * min(zscale, 1e30)
    with np.errstate(over="ignore"):
        x0, z = x0.astype(dtype), z.astype(dtype)
    finite_or_value_error(lambda: model(x0, t))
    finite_or_value_error(lambda: dsm_loss(model, x0, t, z, weighting))


@FUZZ
@given(p0=arrays(np.float64, st.integers(1, 4), elements=entry), grad=entry, lr=positive,
       weight_decay=st.one_of(st.just(0.0), positive), eps=positive,
       clip=st.one_of(st.none(), positive), ema=st.one_of(st.none(), st.sampled_from([0.0, 0.5, 0.999])),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_adam(p0, grad, lr, weight_decay, eps, clip, ema, dtype):
    with np.errstate(over="ignore"):
        p = p0.astype(dtype)
        g = np.full_like(p, grad)
    opt = finite_or_value_error(lambda: Adam(p, lr=lr, weight_decay=weight_decay, eps=eps, clip_norm=clip,
                                             ema_decay=ema))
    if opt is None:
        return
    for _ in range(3):
        if finite_or_value_error(lambda: opt.step(g)) is None:
            break
        finite(opt.state_dict())


@FUZZ
@given(n=st.sampled_from([1, 7, 2**40]), t0=positive, T=positive,
       distribution=st.sampled_from(["uniform", "log-uniform"]))
def test_sample_times(n, t0, T, distribution):
    if n > 2**20:
        return  # allocation of n times is the caller's request; checked by numpy, not fuzzed here
    finite_or_value_error(lambda: sample_times(n, t0, T, np.random.default_rng(0), distribution))


# -- sample-based distances ---------------------------------------------------------------------


@FUZZ
@given(x=points(d=st.just(2)), y=points(d=st.just(2)), p=st.one_of(st.sampled_from([1.0, 2.0, 1e3, 1e300]), positive),
       bandwidth=st.one_of(st.none(), positive))
def test_two_sample_distances(x, y, p, bandwidth):
    finite_or_value_error(lambda: M.sliced_wasserstein(x, y, np.random.default_rng(0), n_projections=8, p=p))
    finite_or_value_error(lambda: M.mmd(x, y, bandwidth=bandwidth))
    finite_or_value_error(lambda: M.energy_distance(x, y))


@FUZZ
@given(x=points(d=st.just(2)), bins=st.integers(1, 4))
def test_moments_and_histogram(x, bins):
    finite_or_value_error(lambda: M.mean_error(x, TARGET2))
    finite_or_value_error(lambda: M.covariance_error(x, TARGET2))
    finite_or_value_error(lambda: M.component_weights(x, TARGET2))
    finite_or_value_error(lambda: M.histogram_tv(x, TARGET2, bins=bins))


@FUZZ
@given(x=points(d=st.just(1)), mean=entry, var=positive, lo=entry, width=positive, bins=st.integers(1, 30),
       default_range=st.booleans())
def test_metrics_against_extreme_targets(x, mean, var, lo, width, bins, default_range):
    target = finite_or_value_error(lambda: GaussianMixture([1.0], [[mean]], [[var]]))
    if target is None:
        return
    finite_or_value_error(lambda: M.mean_error(x, target))
    finite_or_value_error(lambda: M.covariance_error(x, target))
    finite_or_value_error(lambda: M.component_weights(x, target))
    with np.errstate(over="ignore"):
        bounds = None if default_range else (lo, lo + width)
    finite_or_value_error(lambda: M.histogram_tv(x, target, bins=bins, range=bounds))


@FUZZ
@given(m0=arrays(np.float64, 2, elements=entry), m1=arrays(np.float64, 2, elements=entry),
       v0=st.tuples(positive, positive), v1=st.tuples(positive, positive), off=st.floats(-0.9, 0.9),
       T=positive, t0=positive, n_steps=st.integers(1, 4),
       method=st.sampled_from(["euler_maruyama", "exponential", "probability_flow"]))
def test_gaussian_closed_forms(m0, m1, v0, v1, off, T, t0, n_steps, method):
    def cov(v):
        c = off * np.sqrt(v[0]) * np.sqrt(v[1])
        return np.array([[v[0], c], [c, v[1]]])

    finite_or_value_error(lambda: M.gaussian_kl(m0, cov(v0), m1, cov(v1)))
    finite_or_value_error(lambda: M.gaussian_tv(m0, cov(v0), m1, cov(v1), rng=np.random.default_rng(0), n=64))
    finite_or_value_error(lambda: M.gaussian_tv(m0[:1], cov(v0)[:1, :1], m1[:1], cov(v1)[:1, :1]))
    grid = finite_or_value_error(lambda: samplers.time_grid(T, t0, n_steps, "geometric", OU()))
    if grid is not None:
        finite_or_value_error(lambda: M.sampler_output_gaussian(m0, cov(v0), OU(), grid, method))
    finite_or_value_error(lambda: M.sampler_limit_gaussian(m0, cov(v0), OU(), T, t0, method))


# -- score errors, the bound, the samplers ------------------------------------------------------


def extreme_score(size):
    return lambda x, t: np.full_like(x, size)


@FUZZ
@given(t0=positive, T=positive, size=entry, ts=arrays(np.float64, st.integers(1, 3), elements=positive),
       distribution=st.sampled_from(["log-uniform", "uniform"]))
def test_score_errors(t0, T, size, ts, distribution):
    score = extreme_score(size)
    finite_or_value_error(lambda: M.score_error_integral(score, TARGET1, OU(), t0, T, 8, np.random.default_rng(0),
                                                         time_distribution=distribution))
    finite_or_value_error(lambda: M.score_error_profile(score, TARGET1, OU(), ts, 8, np.random.default_rng(0)))


@FUZZ
@given(t0=positive, T=positive, size=entry, method=st.sampled_from(["euler_maruyama", "exponential"]))
def test_tv_upper_bound(t0, T, size, method):
    finite_or_value_error(lambda: M.tv_upper_bound(extreme_score(size), TARGET1, OU(), t0, T, "geometric", method, 4,
                                                   np.random.default_rng(0), n_steps=3, n_aux=8))


@FUZZ
@given(t0=positive, T=positive, n_steps=st.integers(1, 6), size=entry,
       method=st.sampled_from(["euler_maruyama", "exponential", "probability_flow"]),
       grid=st.sampled_from(["uniform", "geometric"]), oracle=st.booleans(),
       dtype=st.sampled_from([np.float64, np.float32]))
def test_samplers(t0, T, n_steps, size, method, grid, oracle, dtype):
    def score(x, t):
        if oracle:
            return TARGET1.score(x, t, OU())
        with np.errstate(over="ignore"):
            return np.full_like(x, size)

    finite_or_value_error(lambda: samplers.sample(score, OU(), 3, 1, np.random.default_rng(0), T=T, t0=t0,
                                                  n_steps=n_steps, method=method, grid=grid, dtype=dtype))


# -- gradient checks ----------------------------------------------------------------------------


@FUZZ
@given(theta=arrays(np.float64, st.integers(1, 3), elements=entry), a=entry, eps=positive)
def test_gradcheck(theta, a, eps):
    def f(th):
        return a * np.sum(np.sin(th))

    def grad(th):
        return a * np.cos(th)

    finite_or_value_error(lambda: gradcheck.numerical_gradient(f, theta.copy(), eps=eps))
    finite_or_value_error(lambda: gradcheck.check_gradient(f, grad, theta.copy(), eps=eps))
    finite_or_value_error(lambda: gradcheck.check_gradient(f, grad, theta.copy(), eps=eps, directions=2,
                                                           rng=np.random.default_rng(0)))
    finite_or_value_error(lambda: gradcheck.check_vjp(lambda th: a * np.sin(th), lambda th, w: a * np.cos(th) * w,
                                                      theta.copy(), np.random.default_rng(0), eps=eps))


# -- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n, d", [(2**62, 4), (4, 2**62), (2**70, 1)])
def test_huge_sizes_are_value_errors_naming_the_argument(n, d):
    with pytest.raises(ValueError, match=r"\bn\b|\bd\b"):
        samplers.sample(lambda x, t: -x, OU(), n, d, np.random.default_rng(0), T=1.0, t0=0.1, n_steps=2)
    with pytest.raises(ValueError, match=r"\bd\b|widths"):
        MLP(d, (n,))


# -- regressions the fuzz found (each failed before its fix) ---------------------------------------


def test_gaussian_kl_beyond_float64_is_refused():
    # 1 / 1e-320 standard deviations apart: KL ~ 1e320 came back as inf
    tiny = np.eye(2) * 1e-320
    with pytest.raises(ValueError, match=r"KL\(N0 \|\| N1\) exceeds float64"):
        M.gaussian_kl([0.0, 0.0], tiny, [1.0, 1.0], tiny)


def test_gaussian_tv_of_laws_1e300_deviations_apart_is_one():
    # the whitened mean difference overflowed and 0 * inf made the Monte-Carlo TV (nan, nan)
    c0, c1 = np.diag([1.0, 0.84]), np.diag([0.34, 1.06])
    value, se = M.gaussian_tv([1.0, 1e-8], c0, [1.7e308, -0.79], c1, rng=np.random.default_rng(0), n=32)
    assert (value, se) == (1.0, 0.0)
    value, se = M.gaussian_tv([-1e308, 0.0], c0, [1e308, 0.0], c0)  # equal covariances
    assert (value, se) == (1.0, 0.0)


def test_adam_refuses_a_gradient_whose_norm_overflows():
    # with clipping the step went ahead (on a zero gradient) and returned the norm inf
    opt = Adam(np.zeros(2), clip_norm=1.0)
    with pytest.raises(ValueError, match=r"grad has entries up to 1\.7e\+308 and a norm beyond the float64 range"):
        opt.step(np.full(2, 1.7e308))
    assert opt.step_count == 0


def test_sample_and_mlp_name_sizes_beyond_memory():
    with pytest.raises(ValueError, match=r"n \* d = \d+ .*lower n"):
        samplers.sample(lambda x, t: -x, OU(), 2**40, 2**10, np.random.default_rng(0), T=1.0, t0=0.1, n_steps=2)
    with pytest.raises(ValueError, match=r"d = 4611686018427387904 and widths = \[8\] make \d+ parameters"):
        MLP(2**62, (8,))


# -- regressions of the public-API fuzz run (extreme finite inputs; each failed before its fix) ----


def _no_warnings(call):
    """call() with numpy's RuntimeWarnings raised as errors: none may escape a public function."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return call()


def test_karras_sigmas_of_tiny_and_huge_rho_are_the_formula():
    # rho = 1e-3: sigma_max^(1/rho) = 80^1000 raised OverflowError; rho = 0.1: the last root
    # sigma_min^10 cancelled against sigma_max^10 and sigma_{n-1} came out 0, not sigma_min;
    # rho = 1e17: both roots rounded to 1 and every sigma was 1.0
    from sgm_ref.processes import EDM
    import mpmath

    def formula(n, lo, hi, rho):  # in 6000 digits: the roots differ by up to 1e4600
        with mpmath.workdps(6000):
            R = mpmath.mpf(rho)
            a, b = mpmath.mpf(hi) ** (1 / R), mpmath.mpf(lo) ** (1 / R)
            return np.array([float((a + mpmath.mpf(i) / (n - 1) * (b - a)) ** R) for i in range(n)] + [0.0])

    for rho in (1e-3, 0.1, 7.0, 1e17):
        ours = _no_warnings(lambda: EDM().karras_sigmas(5, 0.002, 80.0, rho))
        want = formula(5, 0.002, 80.0, rho)
        assert ours[0] == 80.0 and ours[-2] == 0.002 and ours[-1] == 0.0
        np.testing.assert_allclose(ours, want, rtol=8 * np.finfo(float).eps, atol=0)


def test_importance_weights_at_the_ends_of_float64():
    # T = 1e308: t log(T / t0) overflowed and the weight pi / q came back 2 (it is ~1.998);
    # t ~ 1e-111: (T - t0) / (t span) overflowed with a RuntimeWarning
    import mpmath
    t0, T = 1e-300, 1e308
    t, w = _no_warnings(lambda: importance_times(64, t0, T, np.random.default_rng(1)))
    span = mpmath.log(T) - mpmath.log(mpmath.mpf(t0))
    want = np.array([float(2 / (1 + (mpmath.mpf(T) - t0) / (mpmath.mpf(ti) * span))) for ti in t])
    assert np.any(t > 1e306) and np.any(want < 1e-300)  # both ends are met
    np.testing.assert_allclose(w, want, rtol=4 * np.finfo(float).eps, atol=0)
    # T / t0 = 1 + 2e-10: log(T) - log(t0) cancelled and the weights were off by 5e-11
    t0, T = 0.5, 0.5000000001
    t, w = importance_times(64, t0, T, np.random.default_rng(1))
    span = mpmath.log(mpmath.mpf(T) / t0)
    want = np.array([float(2 / (1 + (mpmath.mpf(T) - t0) / (mpmath.mpf(ti) * span))) for ti in t])
    np.testing.assert_allclose(w, want, rtol=4 * np.finfo(float).eps, atol=0)


def test_start_variance_beyond_float64_is_refused():
    # EDM at T = 1e300: float(sigma_T) ** 2 raised OverflowError
    from sgm_ref.processes import EDM
    assert samplers.start_variance(EDM(), 1e150) == 1e150 ** 2
    with pytest.raises(ValueError, match=r"T = 1e\+300 is too large .*sigma_T\^2 overflows float64"):
        samplers.start_variance(EDM(), 1e300)


def test_conventions_at_extreme_times_warn_nothing():
    # 1 / sigma at sigma_t = 5e-324 and alpha^2 + sigma^2 at EDM's t = 1e300 overflowed with
    # RuntimeWarnings (the results were already a ValueError / finite)
    from sgm_ref import conventions
    from sgm_ref.processes import EDM, FlowMatching
    with pytest.raises(ValueError, match=r"t = 5e-324: converting x0 to eps is not defined there"):
        _no_warnings(lambda: conventions.coefficients(5e-324, FlowMatching(), "x0", "eps"))
    # eps = (x - x0) / sigma: A = 1 / sigma, B = -1 / sigma
    assert _no_warnings(lambda: conventions.coefficients(1e300, EDM(), "x0", "eps")) == (1e-300, -1e-300)


def test_bits_per_dim_at_the_ends_of_float64():
    # bins / scale overflowed for scale = 5e-324 (bpd inf) and raised OverflowError for
    # bins = 10**400; a bpd beyond float64 came back inf
    import mpmath
    from sgm_ref.likelihood import bits_per_dim
    assert _no_warnings(lambda: bits_per_dim(0.0, 1, scale=5e-324)) == 8.0 + 1074.0  # 5e-324 = 2^-1074
    assert bits_per_dim(0.0, 1, bins=10**400, scale=1.0) == pytest.approx(float(400 * mpmath.log(10, 2)),
                                                                            rel=1e-15, abs=0)
    with pytest.raises(ValueError, match=r"log_q = -1\.5e\+308 gives bits per dimension beyond float64"):
        _no_warnings(lambda: bits_per_dim(np.array([0.0, -1.5e308]), 1, scale=1.0))


def test_replay_laws_and_scores_beyond_float64_are_refused():
    # target_gaussian at EDM's t = 1e300 returned the covariance inf; gaussian_score at
    # cov = 5e-324, t = 5e-324 returned -inf (and its sigma_t^2 = inf at t = 1e300 warned)
    from sgm_ref import replays
    from sgm_ref.processes import EDM, VP
    with pytest.raises(ValueError, match=r"t = 1e\+300: the law of N\(mean, cov\) at t .* overflows float64"):
        _no_warnings(lambda: replays.target_gaussian(np.zeros(1), np.eye(1), EDM(), 1e300))
    score = replays.gaussian_score(np.zeros(1), np.eye(1) * 5e-324, VP())
    with pytest.raises(ValueError, match=r"the Gaussian score at row 0 \(t = 5e-324\) overflows float64"):
        _no_warnings(lambda: score(np.ones((1, 1)), np.array([5e-324])))
    # -x / (1 + t^2) = -1e-600 rounds to -0
    assert _no_warnings(lambda: replays.gaussian_score(np.zeros(1), np.eye(1), EDM())(np.ones((1, 1)),
                                                                                        np.array([1e300]))) == 0.0


def test_replays_on_grids_below_float64s_sigma2():
    # grid [1e-300, 5e-324] of FlowMatching: sigma_t^2 underflows to 0, ddim and ddpm_ancestral
    # returned NaN (0 / 0); euler_ancestral's s^2 = 0 warned (its result was right by luck)
    from sgm_ref import replays
    from sgm_ref.processes import FlowMatching
    grid, x = np.array([1e-300, 5e-324]), np.ones((1, 1))
    for replay in (replays.ddim, replays.ddpm_ancestral):
        with pytest.raises(ValueError, match=r"grid\[0\] = 1e-300: sigma_t\^2 underflows to 0"):
            _no_warnings(lambda: replay(lambda y, t: -y, FlowMatching(), grid, x, np.random.default_rng(0)))
    # sigma_up = s_next sqrt(1 - (s_next / s)^2) = s_next = 5e-324 and sigma_down = 0: y = D(y) = y
    out = _no_warnings(lambda: replays.euler_ancestral(lambda y, t: -y, FlowMatching(), grid, x,
                                                      noise=np.zeros((1, 1, 1))))
    assert out[0, 0] == pytest.approx(1.0 / (1.0 + 1e-300 ** 2), rel=1e-15, abs=0)


def test_predictor_corrector_with_a_zero_score_is_refused():
    # the Langevin step (snr |xi| / |score|)^2 was inf and every point NaN (score_sde's too);
    # a score of 1e300 warned in the norm (its step is 0)
    from sgm_ref import replays
    grid = np.array([1.0, 0.5, 1e-3])
    with pytest.raises(ValueError, match=r"Langevin corrector's step .* overflows at step 0 .*mean norm is 0"):
        _no_warnings(lambda: replays.predictor_corrector(lambda y, t: np.zeros_like(y), VP(), grid, np.zeros((2, 1)),
                                                         np.random.default_rng(0)))
    out = _no_warnings(lambda: replays.predictor_corrector(lambda y, t: -y, VP(), grid, np.full((1, 1), 1e300),
                                                           np.random.default_rng(0)))
    assert np.all(np.isfinite(out))


def test_exact_score_loss_on_every_process():
    # SubVP, VE and EDM raised AttributeError (check_time_range asked them for B(T)); a junk
    # process did too. For N(0, 1): L*(t) = 1 / sigma_t^2 - 1 / (alpha_t^2 + sigma_t^2)
    # (E |z / sigma|^2 - E |grad log p_t|^2), averaged over uniform t by quadrature
    from scipy.integrate import quad
    from sgm_ref.evaluation import exact_score_loss
    from sgm_ref.processes import EDM, VE, SubVP
    for process, T in ((VE(), 1.0), (EDM(), 10.0), (SubVP(), 1.0)):
        value, se = exact_score_loss(TARGET1, process, t0=1e-2, T=T, weighting="none", time_distribution="uniform",
                                     n=4000, rng=np.random.default_rng(0))
        want = quad(lambda t: 1 / float(process.sigma2(t)) - 1 / (float(process.alpha(t)) ** 2
                                                                   + float(process.sigma2(t))), 1e-2, T,
                    limit=200)[0] / (T - 1e-2)
        assert abs(value - want) < 4 * se, (process, value, se, want)
    with pytest.raises(ValueError, match=r"process must be a process of sgm_ref.processes"):
        exact_score_loss(TARGET1, "ou", t0=1e-2, T=1.0, weighting="none", time_distribution="uniform", n=4,
                         rng=np.random.default_rng(0))


def test_tilted_gaussian_names_a_non_finite_f_not_its_shape():
    # f(y) = -|y|^2 overflows at y = 1e300: the message said "got shape (16,)", the right shape
    from sgm_ref.targets import TiltedGaussian
    tilted = TiltedGaussian(lambda x: -np.sum(x**2, axis=1), lambda x: -2 * x, 1, n_mc=16,
                            rng=np.random.default_rng(0), n_normaliser=64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the caller's f overflows
        with pytest.raises(ValueError, match=r"f must return finite values, got f\(x\) = -inf at row 0 of 16 points "
                                             r"\(\|x\| up to 1e\+300\)"):
            tilted.score(np.full((1, 1), 1e300), 5e-324, OU())


def test_replays_with_huge_eta():
    # ddim(eta=1e300): eta**2 of a Python float raised OverflowError; euler_ancestral's
    # sigma_up = min(s_next, eta ...) at eta = 1.8e308 warned (overflow) before clamping
    from sgm_ref import replays
    from sgm_ref.processes import DDPM, FlowMatching
    with pytest.raises(ValueError, match=r"eta = 1e\+300 makes sigma_eta exceed sigma_s on this grid; use eta <= 1"):
        replays.ddim(lambda y, t: -y, FlowMatching(), np.array([0.99999, 0.5, 0.1, 0.0]), np.ones((2, 1)),
                     np.random.default_rng(0), eta=1e300)
    grid = replays.timestep_grid(DDPM(), replays.ddim_timesteps(3))
    run = [_no_warnings(lambda: replays.euler_ancestral(lambda y, t: -y, DDPM(), grid, np.ones((2, 1)),
                                                        noise=np.ones((2, 2, 1)), eta=eta))
           for eta in (np.finfo(float).max, 1e30)]
    np.testing.assert_array_equal(run[0], run[1])  # sigma_up = s_next for both
