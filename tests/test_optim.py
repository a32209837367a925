"""Adam (sgm_ref.optim, kernel sgm_ref.kernels.adam) against independent computations.

References: a textbook NumPy Adam written here (Kingma & Ba, Algorithm 1, with the bias
corrections applied to m and v), and torch.optim.Adam + torch.nn.utils.clip_grad_norm_
when torch is installed (SGM_REF_REQUIRE_TORCH=1 makes its absence a failure, for CI).
Sizes are small so the suite also runs with NUMBA_DISABLE_JIT=1.
"""

import os

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgm_ref.kernels.adam import adam_update, sum_of_squares
from sgm_ref.optim import Adam, CosineLR, NonFiniteGradientError

N = 37
STEPS = 50


def gradient_sequence(seed=0, n=N, steps=STEPS, dtype=np.float64):
    """Random gradients whose norms sweep from ~0.5 to ~30, so clipping at 5 is both
    active and inactive along the run."""
    rng = np.random.default_rng(seed)
    scales = np.geomspace(0.1, 5.0, steps)[:, None]
    return (scales * rng.standard_normal((steps, n))).astype(dtype)


def initial_params(seed=1, n=N, dtype=np.float64):
    return np.random.default_rng(seed).standard_normal(n).astype(dtype)


def textbook_adam(p, grads, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                  clip_norm=None, ema_decay=None):
    """Kingma & Ba's Algorithm 1 in NumPy, with coupled L2 decay, global-norm clipping
    and a parameter EMA. Returns the parameters, m, v, EMA and the norms after each step."""
    p = p.astype(np.float64)
    m, v = np.zeros_like(p), np.zeros_like(p)
    ema = p.copy()
    norms = []
    for k, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        norm = np.sqrt(np.sum(g * g))
        norms.append(norm)
        if clip_norm is not None:
            g = g * min(1.0, clip_norm / (norm + 1e-6))
        g = g + weight_decay * p
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        m_hat = m / (1 - beta1**k)
        v_hat = v / (1 - beta2**k)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
        if ema_decay is not None:
            ema = ema_decay * ema + (1 - ema_decay) * p
    return p, m, v, ema, np.array(norms)


def import_torch():
    """torch if installed, else skip; with SGM_REF_REQUIRE_TORCH=1 (for CI) a missing
    torch fails instead, so the cross-check cannot be skipped silently."""
    if os.environ.get("SGM_REF_REQUIRE_TORCH") == "1":
        import torch

        return torch
    return pytest.importorskip("torch")


def run(opt, grads):
    return np.array([opt.step(g) for g in grads])


# -- against the textbook formula ----------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"weight_decay": 0.1},
        {"clip_norm": 5.0},
        {"betas": (0.5, 0.9), "eps": 1e-3, "weight_decay": 0.01, "clip_norm": 2.0},
    ],
    ids=["plain", "weight_decay", "clip", "all"],
)
def test_adam_matches_textbook_numpy(options):
    grads = gradient_sequence()
    params = initial_params()
    p0 = params.copy()
    opt = Adam(params, lr=1e-2, **options)
    norms = run(opt, grads)

    kwargs = dict(options)
    betas = kwargs.pop("betas", (0.9, 0.999))
    p_ref, m_ref, v_ref, _, norms_ref = textbook_adam(p0, grads, 1e-2, *betas, **kwargs)
    assert opt.step_count == STEPS
    np.testing.assert_allclose(params, p_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(opt.m, m_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(opt.v, v_ref, rtol=1e-12, atol=0)
    np.testing.assert_allclose(norms, norms_ref, rtol=1e-14)
    # the test is only meaningful if the parameters moved well beyond the tolerance
    assert np.max(np.abs(params - p0)) > 0.1


def test_clipping_is_active_and_inactive_in_the_sequence():
    norms = np.linalg.norm(gradient_sequence(), axis=1)
    assert norms.min() < 5.0 < norms.max()


def test_first_step_moves_each_coordinate_by_lr_times_sign():
    # k = 1: m_hat = g, v_hat = g^2, so p1 = p0 - lr g / (|g| + eps), an independent check
    params = initial_params()
    p0 = params.copy()
    g = gradient_sequence()[-1]
    Adam(params, lr=0.01).step(g)
    np.testing.assert_allclose(params, p0 - 0.01 * g / (np.abs(g) + 1e-8), rtol=1e-15, atol=1e-17)


@settings(max_examples=30, deadline=None)
@given(
    g=st.lists(st.floats(-1e6, 1e6, allow_nan=False), min_size=1, max_size=8),
    lr=st.floats(1e-6, 1.0),
)
def test_step_is_bounded_by_lr(g, lr):
    # |m_hat| <= sqrt(v_hat) at every step (Cauchy-Schwarz), so no coordinate moves by more than lr
    g = np.array(g)
    params = np.zeros_like(g)
    opt = Adam(params, lr=lr)
    for _ in range(3):
        before = params.copy()
        opt.step(g)
        assert np.all(np.abs(params - before) <= lr * (1 + 1e-12))


# -- against PyTorch -------------------------------------------------------------------------


@pytest.mark.parametrize("foreach", [False, True], ids=["single_tensor", "foreach"])
@pytest.mark.parametrize(
    "options",
    [{}, {"weight_decay": 0.1}, {"clip_norm": 5.0}, {"weight_decay": 0.05, "clip_norm": 3.0, "betas": (0.5, 0.9)}],
    ids=["plain", "weight_decay", "clip", "clip_weight_decay"],
)
def test_adam_matches_torch(options, foreach):
    torch = import_torch()
    grads = gradient_sequence()
    params = initial_params()
    opt = Adam(params, lr=1e-2, **options)

    clip_norm = options.get("clip_norm")
    torch_options = {k: v for k, v in options.items() if k != "clip_norm"}
    tp = torch.tensor(initial_params(), dtype=torch.float64, requires_grad=True)
    topt = torch.optim.Adam([tp], lr=1e-2, foreach=foreach, **torch_options)
    for g in grads:
        norm = opt.step(g)
        tp.grad = torch.tensor(g, dtype=torch.float64)
        if clip_norm is not None:
            torch_norm = torch.nn.utils.clip_grad_norm_([tp], clip_norm).item()
            assert norm == pytest.approx(torch_norm, rel=1e-14)
        topt.step()

    state = topt.state[tp]
    np.testing.assert_allclose(params, tp.detach().numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(opt.m, state["exp_avg"].numpy(), rtol=1e-12, atol=0)
    np.testing.assert_allclose(opt.v, state["exp_avg_sq"].numpy(), rtol=1e-12, atol=0)
    assert opt.step_count == int(state["step"].item()) == STEPS


# -- EMA, dtypes, in-place -------------------------------------------------------------------


def test_ema_matches_numpy_loop():
    grads = gradient_sequence()
    params = initial_params()
    p0 = params.copy()
    opt = Adam(params, lr=1e-2, ema_decay=0.9)
    assert opt.ema is not params and np.array_equal(opt.ema, p0)

    ema = p0.copy()
    for g in grads:
        opt.step(g)
        ema = 0.9 * ema + 0.1 * params
    np.testing.assert_allclose(opt.ema, ema, rtol=1e-13, atol=1e-15)
    # and keeping an EMA does not change the trajectory
    p_plain = initial_params()
    run(Adam(p_plain, lr=1e-2), grads)
    np.testing.assert_array_equal(params, p_plain)


def test_ema_warmup_matches_numpy_loop():
    grads = gradient_sequence(steps=100)
    params = initial_params()
    opt = Adam(params, lr=1e-2, ema_decay=0.9, ema_warmup=True)
    ema = params.copy()
    for k, g in enumerate(grads, start=1):
        opt.step(g)
        d = min(0.9, (1 + k) / (10 + k))  # 2/11, 3/12, ... until 0.9 from k = 80 on
        ema = d * ema + (1 - d) * params
    np.testing.assert_allclose(opt.ema, ema, rtol=1e-13, atol=1e-15)


def test_ema_warmup_forgets_the_initialisation():
    """After k steps the plain average keeps d^k of the start, the warm-up one 9 / (10 + k) at most."""
    steps = 300
    plain = Adam(np.zeros(1), lr=1.0, ema_decay=0.999)
    warm = Adam(np.zeros(1), lr=1.0, ema_decay=0.999, ema_warmup=True)
    for opt in (plain, warm):
        for _ in range(steps):
            opt.params[0] = 1.0  # park the parameter at 1: the average's gap to 1 is the start's weight
            opt.step(np.zeros(1))
    assert 1 - plain.ema[0] == pytest.approx(0.999**steps, rel=1e-9)
    assert 1 - warm.ema[0] <= 9 / (10 + steps)


@pytest.mark.parametrize("kwargs, match", [
    ({"ema_warmup": True}, "ema_warmup needs ema_decay"),
    ({"ema_decay": 0.9, "ema_warmup": "yes"}, "ema_warmup must be True or False"),
])
def test_ema_warmup_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Adam(initial_params(), **kwargs)


def test_ema_with_textbook_trajectory():
    grads = gradient_sequence()
    params = initial_params()
    opt = Adam(params, lr=1e-2, ema_decay=0.95)
    run(opt, grads)
    *_, ema_ref, _ = textbook_adam(initial_params(), grads, 1e-2, ema_decay=0.95)
    np.testing.assert_allclose(opt.ema, ema_ref, rtol=1e-12, atol=0)


def test_ema_decay_zero_tracks_params():
    params = initial_params()
    opt = Adam(params, ema_decay=0.0)
    run(opt, gradient_sequence()[:5])
    np.testing.assert_array_equal(opt.ema, params)


def test_params_updated_in_place_and_views_follow():
    params = initial_params()
    layer = params[5:12]
    opt = Adam(params, lr=0.1)
    opt.step(gradient_sequence()[0])
    assert opt.params is params
    assert np.shares_memory(layer, params)
    np.testing.assert_array_equal(layer, params[5:12])
    assert not np.array_equal(params, initial_params())


def test_same_bits_for_any_thread_count():
    grads = gradient_sequence()
    results = []
    before = numba.get_num_threads()
    try:
        for threads in sorted({1, numba.config.NUMBA_NUM_THREADS}):
            numba.set_num_threads(threads)
            params = initial_params()
            opt = Adam(params, lr=1e-2, clip_norm=5.0, weight_decay=0.01, ema_decay=0.9)
            run(opt, grads)
            results.append(b"".join(a.tobytes() for a in (params, opt.m, opt.v, opt.ema)))
    finally:
        numba.set_num_threads(before)
    assert all(r == results[0] for r in results)


def test_grad_is_not_modified():
    grads = gradient_sequence()
    g = grads[-1].copy()
    opt = Adam(initial_params(), clip_norm=0.5, weight_decay=0.1)
    opt.step(g)
    np.testing.assert_array_equal(g, grads[-1])


def test_float32_keeps_float32_state():
    grads = gradient_sequence(dtype=np.float32)
    params = initial_params(dtype=np.float32)
    p0 = params.copy()
    opt = Adam(params, lr=1e-2, weight_decay=0.01, clip_norm=5.0, ema_decay=0.9)
    norms = run(opt, grads)
    for arr in (opt.params, opt.m, opt.v, opt.ema):
        assert arr.dtype == np.float32
    assert opt.params is params
    p_ref, m_ref, v_ref, ema_ref, norms_ref = textbook_adam(
        p0, grads, 1e-2, weight_decay=0.01, clip_norm=5.0, ema_decay=0.9
    )
    # 50 roundings to float32 (~6e-8 each) of parameters of size ~1
    np.testing.assert_allclose(params, p_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(opt.ema, ema_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(opt.m, m_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(norms, norms_ref, rtol=1e-12)


def test_float32_state_is_float64_arithmetic_rounded_once_per_step():
    # Reference: the textbook update in float64 from the stored float32 values, with
    # p, m, v, ema rounded to float32 after each step. Working in float32 instead
    # would be off by several float32 ulps after a few steps.
    grads = gradient_sequence(dtype=np.float32)
    params = initial_params(dtype=np.float32)
    p, m, v, ema = (params.astype(np.float64), np.zeros(N), np.zeros(N), params.astype(np.float64))
    opt = Adam(params, lr=1e-2, weight_decay=0.01, ema_decay=0.9)
    to32 = lambda a: a.astype(np.float32).astype(np.float64)  # noqa: E731
    for k, g in enumerate(grads, start=1):
        opt.step(g)
        g = g.astype(np.float64) + 0.01 * p
        m = to32(0.9 * m + 0.1 * g)
        v = to32(0.999 * v + 0.001 * g * g)
        p = to32(p - 1e-2 * (m / (1 - 0.9**k)) / (np.sqrt(v / (1 - 0.999**k)) + 1e-8))
        ema = to32(0.9 * ema + 0.1 * p)
    ulp = 2.0**-23
    np.testing.assert_allclose(opt.m, m, rtol=2 * ulp, atol=0)
    np.testing.assert_allclose(opt.v, v, rtol=2 * ulp, atol=0)
    np.testing.assert_allclose(params, p, rtol=2 * ulp, atol=0)
    np.testing.assert_allclose(opt.ema, ema, rtol=2 * ulp, atol=0)


def test_float32_grad_for_float64_params_is_rejected():
    opt = Adam(initial_params())
    with pytest.raises(ValueError, match="grad"):
        opt.step(gradient_sequence(dtype=np.float32)[0])


def test_sum_of_squares_kernel_matches_numpy():
    x = gradient_sequence()[-1]
    assert sum_of_squares(x) == pytest.approx(float(np.dot(x, x)), rel=1e-14)
    x32 = x.astype(np.float32)
    # accumulated in float64 from the float32 values
    assert sum_of_squares(x32) == pytest.approx(float(np.sum(x32.astype(np.float64) ** 2)), rel=1e-14)


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 16, 37])
def test_sum_of_squares_order_is_the_documented_one(n):
    """Eight partial sums s_r over i = r (mod 8), added ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)):
    the bits do not depend on the compiler's vector width."""
    x = np.random.default_rng(n).standard_normal(n)
    s = [0.0] * 8
    for i in range(n - n % 8):
        s[i % 8] += x[i] * x[i]
    for i in range(n - n % 8, n):
        s[0] += x[i] * x[i]
    want = ((s[0] + s[1]) + (s[2] + s[3])) + ((s[4] + s[5]) + (s[6] + s[7]))
    assert sum_of_squares(x) == want


def test_adam_kernel_counts_non_finite_results():
    """The update kernel reports the coordinates its step made NaN or inf (Adam.step raises on
    that count instead of a second pass over params), and 0 for a good step."""
    p = np.array([1.0, 2.0, 3.0, 1.7e308])
    grad, m, v = np.full(4, 0.5), np.zeros(4), np.zeros(4)
    # lr 1e-3: a good step
    assert adam_update(p.copy(), grad, m.copy(), v.copy(), m, 1.0, 0.0, 0.9, 0.999, 1e-2, 0.0316, 1e-8, 0.0, False) == 0
    # a step size that sends the largest parameter past the float64 range (each moves by 0.1 |step size|)
    q = p.copy()
    assert adam_update(q, grad, m.copy(), v.copy(), m, 1.0, 0.0, 0.9, 0.999, -1e308, 0.0316, 1e-8, 0.0, False) == 1
    assert np.isinf(q[3]) and np.all(np.isfinite(q[:3]))
    # float32 state overflows when the float64 result is rounded to it
    p32 = np.array([1.0, 3.3e38], np.float32)
    count = adam_update(p32, np.full(2, 0.5, np.float32), np.zeros(2, np.float32), np.zeros(2, np.float32),
                        p32, 1.0, 0.0, 0.9, 0.999, -1e39, 0.0316, 1e-8, 0.0, False)
    assert count == 1 and np.isinf(p32[1])


# -- non-finite gradients ------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_non_finite_grad_raises_and_changes_nothing(bad, dtype):
    grads = gradient_sequence(dtype=dtype)
    params = initial_params(dtype=dtype)
    opt = Adam(params, lr=1e-2, clip_norm=5.0, ema_decay=0.9, weight_decay=0.01)
    run(opt, grads[:10])
    before = {name: getattr(opt, name).copy() for name in ("params", "m", "v", "ema")}
    g = grads[10].copy()
    g[7] = bad
    with pytest.raises(NonFiniteGradientError, match="index 7"):
        opt.step(g)
    for name, arr in before.items():
        assert getattr(opt, name).tobytes() == arr.tobytes(), name
    assert opt.step_count == 10
    assert opt.params is params
    # and the run can go on
    opt.step(grads[10])
    assert opt.step_count == 11


def test_non_finite_error_is_value_and_floating_point_error():
    assert issubclass(NonFiniteGradientError, ValueError)
    assert issubclass(NonFiniteGradientError, FloatingPointError)


def test_huge_finite_grad_is_accepted_and_its_norm_is_right():
    # the squares overflow float64, the norm does not
    params = initial_params(n=4)
    opt = Adam(params, clip_norm=1.0)
    g = np.array([3e200, -4e200, 0.0, 0.0])
    assert opt.step(g) == pytest.approx(5e200, rel=1e-15)
    assert np.all(np.isfinite(params)) and np.all(np.isfinite(opt.v))


@pytest.mark.parametrize("dtype, size", [(np.float64, 1e160), (np.float32, 1e20)])
def test_a_grad_whose_square_overflows_is_refused_without_clipping(dtype, size):
    # otherwise v turns inf and freezes that coordinate, and the state cannot be reloaded
    params = initial_params(n=4).astype(dtype)
    opt = Adam(params)
    opt.step(np.ones(4, dtype))
    before = opt.state_dict()
    with pytest.raises(NonFiniteGradientError, match="would overflow"):
        opt.step(np.array([size, 0.0, 0.0, 0.0], dtype))
    after = opt.state_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)
    opt.load_state_dict(after)


# -- checkpoints ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("through_npz", [False, True], ids=["dict", "npz"])
@pytest.mark.parametrize("warmup", [False, True], ids=["plain-ema", "warmup-ema"])
def test_state_dict_round_trip_is_bit_identical(dtype, through_npz, warmup, tmp_path):
    grads = gradient_sequence(steps=30, dtype=dtype)
    options = dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-7, weight_decay=0.01, clip_norm=4.0, ema_decay=0.9,
                   ema_warmup=warmup)
    params = initial_params(dtype=dtype)
    opt = Adam(params, **options)
    run(opt, grads[:20])
    state = opt.state_dict()
    for value in state.values():
        assert isinstance(value, (np.ndarray, int, float))
    if through_npz:
        np.savez(tmp_path / "adam.npz", **state)
        with np.load(tmp_path / "adam.npz") as data:
            state = dict(data)
    run(opt, grads[20:])

    # a fresh optimiser with other settings: the state decides
    fresh_params = np.zeros(N, dtype=dtype)
    fresh = Adam(fresh_params, lr=0.5)
    fresh.load_state_dict(state)
    assert fresh.params is fresh_params
    run(fresh, grads[20:])
    for name in ("params", "m", "v", "ema"):
        assert getattr(fresh, name).tobytes() == getattr(opt, name).tobytes(), name
    assert fresh.step_count == opt.step_count == 30
    assert (fresh.lr, fresh.betas, fresh.eps, fresh.weight_decay, fresh.clip_norm, fresh.ema_decay,
            fresh.ema_warmup) == (opt.lr, opt.betas, opt.eps, opt.weight_decay, opt.clip_norm, opt.ema_decay, warmup)


def test_state_dict_is_a_snapshot():
    opt = Adam(initial_params())
    state = opt.state_dict()
    opt.step(gradient_sequence()[0])
    assert state["step_count"] == 0 and not np.any(state["m"])


def test_state_without_ema_or_clipping_disables_them():
    source = Adam(initial_params())
    run(source, gradient_sequence()[:3])
    state = source.state_dict()
    assert "ema" not in state and "clip_norm" not in state
    target = Adam(initial_params(), clip_norm=1.0, ema_decay=0.9)
    target.load_state_dict(state)
    assert target.ema is None and target.ema_decay is None and target.clip_norm is None


def _saved_state():
    opt = Adam(initial_params(), ema_decay=0.9)
    run(opt, gradient_sequence()[:3])
    return opt.state_dict()


@pytest.mark.parametrize(
    "change, name",
    [
        (lambda s: s.update(m=s["m"][:-1]), "m"),
        (lambda s: s.update(v=s["v"].astype(np.float32)), "v"),
        (lambda s: s.update(params=np.zeros((N, 1))), "params"),
        (lambda s: s.update(ema=np.full(N, np.nan)), "ema"),
        (lambda s: s.update(v=-s["v"]), "v"),
        (lambda s: s.pop("m"), "missing"),
        (lambda s: s.pop("ema"), "ema"),
        (lambda s: s.update(momentum=0.9), "unknown"),
        (lambda s: s.update(step_count=-1), "step_count"),
        (lambda s: s.update(step_count=2.5), "step_count"),
        (lambda s: s.update(lr=0.0), "lr"),
        (lambda s: s.update(beta2=1.0), "beta2"),
        (lambda s: s.update(ema_decay=1.5), "ema_decay"),
    ],
)
def test_load_state_dict_rejects_bad_state_and_changes_nothing(change, name):
    state = _saved_state()
    change(state)
    params = initial_params()
    opt = Adam(params, lr=0.1)
    with pytest.raises(ValueError, match=name):
        opt.load_state_dict(state)
    np.testing.assert_array_equal(params, initial_params())
    assert opt.step_count == 0 and opt.lr == 0.1 and opt.ema is None


def test_load_state_dict_rejects_other_size():
    state = _saved_state()
    with pytest.raises(ValueError, match="shape"):
        Adam(np.zeros(N + 1)).load_state_dict(state)


# -- bad arguments ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "params",
    [
        [0.0, 1.0],
        np.zeros((3, 2)),
        np.zeros(0),
        np.zeros(10)[::2],
        np.arange(4),
        np.zeros(4, dtype=np.float16),
        np.array([0.0, np.nan]),
        np.array([0.0, np.inf]),
    ],
    ids=["list", "2d", "empty", "strided", "int", "float16", "nan", "inf"],
)
def test_bad_params_raise(params):
    with pytest.raises(ValueError, match="params"):
        Adam(params)


def test_read_only_params_raise():
    params = np.zeros(3)
    params.setflags(write=False)
    with pytest.raises(ValueError, match="params"):
        Adam(params)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1e-3}, "lr"),
        ({"lr": np.nan}, "lr"),
        ({"lr": np.inf}, "lr"),
        ({"lr": "0.1"}, "lr"),
        ({"lr": True}, "lr"),
        ({"betas": (1.0, 0.999)}, "betas"),
        ({"betas": (-0.1, 0.999)}, "betas"),
        ({"betas": (0.9, 1.0)}, "betas"),
        ({"betas": (0.9, np.nan)}, "betas"),
        ({"betas": (0.9,)}, "betas"),
        ({"betas": 0.9}, "betas"),
        ({"eps": 0.0}, "eps"),
        ({"eps": -1e-8}, "eps"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"weight_decay": np.nan}, "weight_decay"),
        ({"clip_norm": 0.0}, "clip_norm"),
        ({"clip_norm": -1.0}, "clip_norm"),
        ({"clip_norm": np.inf}, "clip_norm"),
        ({"ema_decay": 1.0}, "ema_decay"),
        ({"ema_decay": -0.1}, "ema_decay"),
        ({"ema_decay": np.nan}, "ema_decay"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Adam(np.zeros(3), **kwargs)


def test_lr_is_validated_when_changed():
    opt = Adam(np.zeros(3))
    opt.lr = 1e-4
    assert opt.lr == 1e-4
    with pytest.raises(ValueError, match="lr"):
        opt.lr = -1.0
    assert opt.lr == 1e-4


@pytest.mark.parametrize(
    "grad",
    [np.zeros(N - 1), np.zeros((N, 1)), np.zeros(N, dtype=np.float32), np.zeros(N, dtype=np.int64), np.float64(0.0)],
    ids=["short", "2d", "float32", "int", "scalar"],
)
def test_bad_grad_raises(grad):
    opt = Adam(initial_params())
    with pytest.raises(ValueError, match="grad"):
        opt.step(grad)
    assert opt.step_count == 0


# -- extreme hyperparameters (issue 11, item 10): refused, never NaN parameters ---------------------


def test_adam_refuses_an_lr_whose_step_size_overflows():
    with pytest.raises(ValueError, match=r"^lr must be below 1\.8e\+307, got 1e\+308: the bias-corrected step size"):
        Adam(np.ones(4), lr=1e308)  # NaN parameters after 2 steps before
    # just past the bound, rounded to a few digits, the refused lr read as below it
    lr = 1.7976931348623153e307
    big = np.finfo(np.float64).max
    assert not lr / (1 - 0.9) < big and np.nextafter(lr, 0) / (1 - 0.9) < big  # the first lr refused
    full = r"1\.7976931348623153e\+307"
    with pytest.raises(ValueError, match=rf"^lr must be below {full}, got {full}: "):
        Adam(np.ones(4), lr=lr)
    opt = Adam(np.ones(4), lr=1e-3)
    opt.lr = 1e308  # a schedule can still set it: the step refuses, nothing changes
    with pytest.raises(ValueError, match=r"Adam step 1: the step size .* lr = 1e\+308"):
        opt.step(np.ones(4))
    assert opt.step_count == 0 and np.all(opt.params == 1.0) and np.all(opt.m == 0.0)


def test_adam_refuses_a_weight_decay_that_overflows_the_gradient():
    with pytest.raises(ValueError, match=r"weight_decay = 1e\+308 is too large for params .*below 1\.34e\+154"):
        Adam(np.full(4, 2.0), weight_decay=1e308)  # NaN parameters after 1 step before


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_adam_step_that_would_go_non_finite_is_undone_and_named(dtype):
    big = float(np.finfo(dtype).max)
    # params start at 0 (construction accepts it), the first step moves them by ~lr and the
    # second step's weight decay overflows the squared gradient
    p = np.zeros(4, dtype=dtype)
    opt = Adam(p, lr=1.0, weight_decay=big / 10, ema_decay=0.5)
    opt.step(np.ones(4, dtype=dtype))
    before = {k: np.copy(v) for k, v in opt.state_dict().items()}
    with pytest.raises(ValueError, match=r"Adam step 2 would make \d+ entr.* non-finite: .*left unchanged"):
        opt.step(np.ones(4, dtype=dtype))
    after = opt.state_dict()
    for key, value in before.items():
        np.testing.assert_array_equal(after[key], value)
    # a huge lr (finite step size) that carries params past the range
    p = np.full(3, 0.99 * big, dtype=dtype)
    opt = Adam(p, lr=big / 40)
    with pytest.raises(ValueError, match=r"Adam step 1 would make 3 entries of params or v non-finite"):
        opt.step(np.full(3, -1.0, dtype=dtype))
    assert np.all(p == dtype(0.99 * big)) and opt.step_count == 0


def test_adam_ordinary_steps_are_unchanged_by_the_guard():
    # same bits with and without the guard's bookkeeping: compare a risky-regime run
    # (lr > 1 copies the state first) with the formula
    grads = gradient_sequence()
    p = initial_params()
    ref = textbook_adam(p.copy(), grads, lr=2.0)[0]
    opt = Adam(p, lr=2.0)
    run(opt, grads)
    np.testing.assert_allclose(p, ref, rtol=1e-12, atol=0)


def test_load_state_dict_message_shows_plain_numbers():
    opt = Adam(np.zeros(3))
    state = opt.state_dict()
    state["step_count"] = np.float64(3.5)  # as numpy.load returns it
    with pytest.raises(ValueError, match=r"state\['step_count'\] must be an integer >= 0, got 3\.5$"):
        opt.load_state_dict(state)


# -- the cosine learning-rate schedule ------------------------------------------------------

@pytest.mark.parametrize("steps, final", [(1, 1e-3), (7, 0.0), (1000, 1e-3), (333, 0.25)])
def test_cosine_schedule_is_torchs_cosine_annealing(steps, final):
    torch = import_torch()
    lr = 2e-3
    param = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.SGD([param], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=final * lr)
    ours = CosineLR(lr, steps, final)
    theirs = []
    for _ in range(steps):
        theirs.append(opt.param_groups[0]["lr"])  # the rate this optimiser step uses
        opt.step()
        sched.step()
    np.testing.assert_allclose([ours(k) for k in range(1, steps + 1)], theirs, rtol=1e-12, atol=0)
    assert ours(1) == lr and (steps == 1 or final * lr <= ours(steps) < lr)


@pytest.mark.parametrize("args, message", [
    ((0.0, 10), "lr must be > 0"), ((float("nan"), 10), "lr must be finite"),
    ((1e-3, 0), "steps must be an integer >= 1"), ((1e-3, 2.5), "steps must be an integer"),
    ((1e-3, True), "steps must be an integer"), ((1e-3, 10, 1.0), r"final \(lr_min / lr\) must be < 1"),
    ((1e-3, 10, -0.1), r"final \(lr_min / lr\) must be >= 0"),
])
def test_cosine_schedule_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        CosineLR(*args)


def test_cosine_schedule_is_defined_on_its_run_only():
    schedule = CosineLR(1e-3, 10)
    for step in (0, 11, 2.0, True):
        with pytest.raises(ValueError, match=r"step must be an integer in \[1, 10\]"):
            schedule(step)
    assert repr(schedule) == "CosineLR(lr=0.001, steps=10, final=0.001)"


# -- reviews: bias corrections near beta = 1, tiny gradients, the schedule's ends -------------

@pytest.mark.parametrize("betas", [(0.9, 0.999), (0.999, 0.99999), (0.99999, 0.999999), (1 - 1e-8, 1 - 1e-8)])
def test_bias_corrections_are_exact_for_betas_near_one(betas):
    """A constant gradient g = 1 gives m_k = 1 - b1^k and v_k = 1 - b2^k exactly (in real
    arithmetic), so with eps ~ 0 every step moves a parameter by lr exactly. Review: the
    corrections were 1 - b**k, whose rounding of b**k made the move 6.5e-13 off at
    betas (0.999, 0.99999), 6.8e-12 at (0.99999, 0.999999), 5.6e-10 at 1 - 1e-8 (torch's
    arithmetic; 7e-15 at the defaults); now they are within 3e-16 and the move within 9e-16
    over 200 steps (the roundings of m's and v's recurrences)."""
    params = np.zeros(1)
    opt = Adam(params, lr=1e-3, betas=betas, eps=1e-300)
    moves = []
    for _ in range(200):
        params[:] = 0.0  # no weight decay: the update does not depend on params
        opt.step(np.ones(1))
        moves.append(-params[0] / 1e-3)
    np.testing.assert_allclose(moves, 1.0, rtol=3e-15, atol=0)


def test_bias_correction_at_step_one_is_exact_and_far_out_underflows_cleanly():
    # k = 1: 1 - b is exact for b >= 1/2, so p1 = p0 - lr g / (|g| + eps) exactly as at the defaults
    params = np.zeros(4)
    g = np.array([3.0, -2.0, 1e-3, 5e5])
    Adam(params, lr=0.25, betas=(0.75, 1 - 2.0**-40), eps=2.0**-30).step(g)
    np.testing.assert_array_equal(params, -0.25 * g / (np.abs(g) + 2.0**-30))
    # k = 10^6 + 1: b^k underflows to 0 and both corrections are 1, as torch's
    opt = Adam(np.zeros(2), lr=1e-2)
    opt.step_count = 10**6
    opt.m[:] = [0.3, -0.2]
    opt.v[:] = [0.04, 0.09]
    g = np.array([1.0, 2.0])
    opt.step(g)
    m = 0.9 * np.array([0.3, -0.2]) + (1 - 0.9) * g
    v = 0.999 * np.array([0.04, 0.09]) + (1 - 0.999) * g * g
    np.testing.assert_array_equal(opt.params, -1e-2 * m / (np.sqrt(v) + 1e-8))


@pytest.mark.parametrize("grad", [np.full(10, 1e-170), np.array([1e-160, 3e-170, -2e-155]),
                                  np.array([2.0**-600, 0.0, -(2.0**-601)])])
def test_the_norm_of_a_tiny_gradient_is_not_zero(grad):
    """Review: the squares of entries below ~1e-154 underflow, and step returned ||g|| = 0
    (1e-170 entries) or lost digits; the norm is now rescaled there, to mpmath's to 1e-15."""
    mpmath = pytest.importorskip("mpmath")
    exact = float(mpmath.sqrt(mpmath.fsum(mpmath.mpf(float(x)) ** 2 for x in grad)))
    assert Adam(np.zeros(grad.size)).step(grad) == pytest.approx(exact, rel=1e-15, abs=0)
    assert Adam(np.zeros(3)).step(np.zeros(3)) == 0.0


@pytest.mark.parametrize("value", ["no", 0, np.array("False"), np.array([True])])
def test_load_state_dict_refuses_an_ema_warmup_that_is_not_a_bool(value):
    """Review: bool(state['ema_warmup']) read the string 'no' as True."""
    state = Adam(np.zeros(3), ema_decay=0.9, ema_warmup=True).state_dict()
    state["ema_warmup"] = value
    opt = Adam(np.zeros(3), ema_decay=0.9)
    with pytest.raises(ValueError, match=r"state\['ema_warmup'\] must be True or False, got"):
        opt.load_state_dict(state)
    assert opt.ema_warmup is False
    state["ema_warmup"] = np.array(True)  # as numpy.load returns it
    opt.load_state_dict(state)
    assert opt.ema_warmup is True


@pytest.mark.parametrize("steps, final", [(10**6, 0.0), (10**4, 1e-9), (1000, 0.0), (999, 0.5), (3, 0.0)])
def test_cosine_schedule_is_accurate_at_both_ends(steps, final):
    """Against mpmath. Review: (1 + cos x) / 2 cancelled near x = pi, so the last rates of a
    run to lr_min = 0 were 5.7e-6 off (10^6 steps; 1e-11 at 1000 steps), and lr - lr_min
    added back to lr_min missed lr at step 1 by an ulp (lr = 0.01, final = 0.1); now within
    6e-16 everywhere, and lr itself at step 1."""
    mpmath = pytest.importorskip("mpmath")
    lr = 0.01
    schedule = CosineLR(lr, steps, final)
    ks = {*range(1, 6), steps // 2, steps // 2 + 1, *range(steps - 5, steps + 1)}
    ks = sorted(k for k in ks if 1 <= k <= steps)
    with mpmath.workdps(40):  # not mp.dps = 40: that would stay set for every later test
        low = mpmath.mpf(final * lr)
        exact = {k: float(low + (lr - low) * (1 + mpmath.cos(mpmath.pi * (k - 1) / steps)) / 2) for k in ks}
    for k in ks:
        assert schedule(k) == pytest.approx(exact[k], rel=1e-15, abs=0), k
    assert CosineLR(lr, 10, 0.1)(1) == lr and CosineLR(0.3, 10, 0.1)(1) == 0.3
