"""The MLP (sgm_ref.nn, kernels sgm_ref.kernels.dense) against independent computations.

References: central finite differences in float64 (sgm_ref.gradcheck), a NumPy forward
pass written from the formulas (conftest.forward_numpy), and PyTorch autograd on the
same parameters when torch is installed. Networks are small (d = 3, widths (8, 6)) so
the suite also runs with NUMBA_DISABLE_JIT=1.

Gradient-check tolerance: every entry must satisfy |a - n| <= rtol max(|a|, |n|) + atol
with rtol = 1e-6 and atol = 1e-8 max|a| (entries a hundred million times smaller than the
largest are compared absolutely: their central differences are rounding noise, about
1e-16 |f| / eps). Measured worst relative errors are ~1e-7 with eps = 1e-5.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sgm_ref.gradcheck import check_gradient
from sgm_ref.nn import MLP, TimeEmbedding
from sgm_ref.nn import mlp as mlp_module

ACTIVATIONS = ("relu", "silu", "tanh", "softplus")
EMBEDDINGS = ("linear", "log", "fourier")
D, WIDTHS, N = 3, (8, 6), 16
EPS, RTOL = 1e-5, 1e-6

def batch(seed=0, n=N, d=D):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.uniform(0.05, 1.0, n), rng.standard_normal((n, d))


def gradcheck(f, analytic, theta):
    result = check_gradient(f, analytic, theta, eps=EPS, rtol=RTOL, atol=1e-8 * np.abs(analytic).max())
    assert result.passed, f"max relative error {result.max_rel_error:.3e} at entry {result.worst}"
    assert result.max_rel_error <= RTOL
    return result


# -- gradients against finite differences -------------------------------------------------

@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_parameter_gradient_matches_finite_differences(activation, embedding, numpy_ref):
    net = MLP(D, WIDTHS, activation, embedding, rng=1)
    x, t, w = batch()
    numpy_ref.keep_relu_away_from_kinks(net, x, t)
    net.forward(x, t, keep=True)
    grad = net.backward(w)  # gradient of sum(w * net(x, t)) in the parameters
    gradcheck(lambda theta: np.sum(w * net.forward(x, t)), grad, net.params)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_input_gradient_matches_finite_differences(activation, embedding, numpy_ref):
    net = MLP(D, WIDTHS, activation, embedding, rng=2)
    x, t, w = batch(seed=1)
    numpy_ref.keep_relu_away_from_kinks(net, x, t)
    net.forward(x, t, keep=True)
    _, grad_x = net.backward(w, input_grad=True)
    assert grad_x.shape == x.shape
    theta = x.ravel().copy()
    gradcheck(lambda th: np.sum(w * net.forward(th.reshape(x.shape), t)), grad_x.ravel(), theta)


def test_gradient_check_detects_a_small_error():
    """The tolerance above can fail: one entry wrong by 1e-5 (relative) is caught."""
    net = MLP(D, WIDTHS, "tanh", "fourier", rng=1)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    grad = net.backward(w)
    k = int(np.argmax(np.abs(grad)))
    grad[k] *= 1 + 1e-5
    result = check_gradient(lambda th: np.sum(w * net.forward(x, t)), grad, net.params,
                            eps=EPS, rtol=RTOL, atol=1e-8 * np.abs(grad).max())
    assert not result.passed and result.worst == k


def test_depth_zero_network_is_affine():
    """widths=() leaves out = [x, e(t)] W + b, with the obvious gradients."""
    net = MLP(D, (), "tanh", "log", rng=0)
    x, t, w = batch(n=5)
    out = net.forward(x, t, keep=True)
    h0 = np.c_[x, np.log(t)]
    np.testing.assert_allclose(out, h0 @ net.weights[0] + net.biases[0], rtol=1e-14, atol=1e-15)
    grad, grad_x = net.backward(w, input_grad=True)
    gW, gb = net.layer_views(grad)
    np.testing.assert_allclose(gW[0], h0.T @ w, rtol=1e-13)
    np.testing.assert_allclose(gb[0], w.sum(axis=0), rtol=1e-13)
    np.testing.assert_allclose(grad_x, w @ net.weights[0][:D].T, rtol=1e-13)


# -- against independent forward passes ---------------------------------------------------

@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_matches_numpy(activation, embedding, numpy_ref):
    net = MLP(D, WIDTHS, activation, embedding, rng=3)
    x, t, _ = batch(n=50)
    expected, _ = numpy_ref.forward(net, x, t)
    for keep in (False, True):
        np.testing.assert_allclose(net.forward(x, t, keep=keep), expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("embedding", EMBEDDINGS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_forward_and_gradients_match_torch(activation, embedding, torch_ref):
    """Output, parameter gradient and input gradient to 5e-15 of their largest entry (measured over
    the 12 settings: 3.4e-16, 6.7e-16, 8.2e-16; the bounds were 1e-12 and 1e-10)."""
    torch = torch_ref.torch
    net = MLP(D, WIDTHS, activation, embedding, rng=4)
    x, t, w = batch(seed=2, n=40)
    out = net.forward(x, t, keep=True)
    grad, grad_x = net.backward(w, input_grad=True)

    params = torch_ref.parameters(net)
    xt = torch.tensor(x, requires_grad=True)
    out_t = torch_ref.forward(net, params, xt, torch.tensor(t))
    torch.sum(torch.tensor(w) * out_t).backward()
    expected = out_t.detach().numpy()
    assert np.abs(out - expected).max() <= 5e-15 * np.abs(expected).max()
    grad_t = torch_ref.flat([p.grad for p in params])
    assert np.abs(grad - grad_t).max() <= 5e-15 * np.abs(grad_t).max()
    grad_x_t = xt.grad.numpy()
    assert np.abs(grad_x - grad_x_t).max() <= 5e-15 * np.abs(grad_x_t).max()


@pytest.mark.parametrize("d, widths, n", [(1, (), 1), (1, (1,), 1), (1, (1, 1), 2), (2, (1, 5, 1), 1), (1, (7,), 3)])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_odd_shapes_match_torch_to_rounding(d, widths, n, activation, torch_ref):
    """Depth 0 and 1, width 1, d = 1, a batch of one row (a review: worst relative error 2.3e-15
    in the parameter gradient, 9e-15 in J v, over such shapes and all embeddings)."""
    torch = torch_ref.torch
    for embedding in EMBEDDINGS:
        net = MLP(d, widths, activation, embedding, rng=11)
        rng = np.random.default_rng(5)
        x, t, w = rng.standard_normal((n, d)), rng.uniform(0.05, 1.0, n), rng.standard_normal((n, d))
        out = net.forward(x, t, keep=True)
        grad, grad_x = net.backward(w, input_grad=True)
        params = torch_ref.parameters(net)
        xt = torch.tensor(x, requires_grad=True)
        out_t = torch_ref.forward(net, params, xt, torch.tensor(t))
        torch.sum(torch.tensor(w) * out_t).backward()
        for got, want in ((out, out_t.detach().numpy()), (grad, torch_ref.flat([p.grad for p in params])),
                          (grad_x, xt.grad.numpy())):
            assert np.abs(got - want).max() <= 1e-13 * np.abs(want).max(), (embedding, got, want)


def test_time_embedding_values(numpy_ref):
    t = np.array([1e-3, 0.1, 1.0, 7.5])
    for kind, dim in (("linear", 1), ("log", 1), ("fourier", 9)):
        emb = TimeEmbedding(kind)
        assert emb.dim == dim
        out = np.empty((4, dim))
        emb(t, out)
        np.testing.assert_allclose(out, numpy_ref.embed(t, kind), rtol=1e-15, atol=1e-16)
    emb = TimeEmbedding("fourier", n_frequencies=2)
    out = emb(t, np.empty((4, 5)))
    np.testing.assert_allclose(out[:, 3], np.sin(0.5 * np.log(t)), rtol=1e-15)
    np.testing.assert_allclose(out[:, 4], np.cos(0.5 * np.log(t)), rtol=1e-15)


@pytest.mark.parametrize("kind", ["log", "fourier"])
def test_log_time_embeddings_reject_t_zero(kind):
    net = MLP(D, WIDTHS, "silu", kind)
    with pytest.raises(ValueError, match="t must be > 0"):
        net.forward(np.zeros((2, D)), np.array([0.5, 0.0]))


def test_time_embedding_bad_arguments():
    with pytest.raises(ValueError, match="kind"):
        TimeEmbedding("sinusoidal")
    for bad in (0, 2.0, True):
        with pytest.raises(ValueError, match="n_frequencies"):
            TimeEmbedding("fourier", n_frequencies=bad)


@settings(max_examples=25, deadline=None)
@given(d=st.integers(1, 4), widths=st.lists(st.integers(1, 9), max_size=3), n=st.integers(1, 40),
       activation=st.sampled_from(ACTIVATIONS), embedding=st.sampled_from(EMBEDDINGS),
       seed=st.integers(0, 2**32 - 1))
def test_shapes_and_row_permutation_equivariance(d, widths, n, activation, embedding, seed):
    """Rows are independent: permuting the batch permutes the output, the input gradient
    and leaves the parameter gradient unchanged (up to summation order)."""
    net = MLP(d, widths, activation, embedding, rng=seed)
    rng = np.random.default_rng(seed)
    x, t, w = rng.standard_normal((n, d)), rng.uniform(0.01, 2.0, n), rng.standard_normal((n, d))
    perm = rng.permutation(n)
    out = net.forward(x, t, keep=True)
    grad, grad_x = net.backward(w, input_grad=True)
    assert out.shape == grad_x.shape == (n, d) and grad.shape == (net.n_params,)
    out_p = net.forward(x[perm], t[perm], keep=True)
    grad_p, grad_x_p = net.backward(w[perm], input_grad=True)
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(grad_x_p, grad_x[perm], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad_p, grad, rtol=1e-11, atol=1e-12 * max(1.0, np.abs(grad).max()))


# -- the flat parameter vector and its views ----------------------------------------------

def test_params_layout_and_views():
    net = MLP(D, WIDTHS, "silu", "fourier", rng=0)
    sizes = (D + 9,) + WIDTHS + (D,)
    assert net.sizes == sizes
    assert net.n_params == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    assert [W.shape for W in net.weights] == list(zip(sizes[:-1], sizes[1:]))
    flat = np.concatenate([np.r_[W.ravel(), b] for W, b in zip(net.weights, net.biases)])
    np.testing.assert_array_equal(net.params, flat)
    for arr in net.weights + net.biases:
        assert np.shares_memory(arr, net.params)

    net.params[:] = np.arange(net.n_params)  # writing the vector changes the layers
    assert net.weights[0][0, 1] == 1.0
    assert net.biases[0][0] == sizes[0] * sizes[1]
    assert net.weights[2][-1, -1] == net.n_params - D - 1
    net.weights[1][2, 3] = -7.0  # and writing a layer changes the vector
    assert net.params[sizes[0] * sizes[1] + sizes[1] + 2 * sizes[2] + 3] == -7.0


def test_layer_views_of_a_gradient_are_per_layer_gradients():
    """layer_views(grad) gives dL/dW_l = h_l^T dL/dz_l, checked on the last layer."""
    net = MLP(D, WIDTHS, "tanh", "log", rng=0)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    grad = net.backward(w)
    gW, gb = net.layer_views(grad)
    assert [g.shape for g in gW] == [W.shape for W in net.weights]
    assert all(np.shares_memory(g, grad) for g in gW + gb)
    h = np.tanh(np.c_[x, np.log(t)] @ net.weights[0] + net.biases[0])
    h = np.tanh(h @ net.weights[1] + net.biases[1])
    np.testing.assert_allclose(gW[-1], h.T @ w, rtol=1e-12)
    np.testing.assert_allclose(gb[-1], w.sum(axis=0), rtol=1e-13)
    with pytest.raises(ValueError, match="flat must have shape"):
        net.layer_views(grad[:-1])


def test_set_params_copies_in_place_and_validates():
    net = MLP(D, WIDTHS, rng=0)
    weights0 = net.weights[0]
    theta = np.random.default_rng(1).standard_normal(net.n_params)
    net.set_params(theta)
    np.testing.assert_array_equal(net.params, theta)
    assert net.weights[0] is weights0 and np.shares_memory(weights0, net.params)
    theta[0] = 123.0
    assert net.params[0] != 123.0  # a copy, not the caller's array
    with pytest.raises(ValueError, match="shape"):
        net.set_params(theta[:-1])
    with pytest.raises(ValueError, match="dtype"):
        net.set_params(theta.astype(np.float32))
    theta[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        net.set_params(theta)


def test_config_round_trip():
    net = MLP(2, (5, 4, 3), "softplus", TimeEmbedding("fourier", 3), dtype=np.float32, rng=7)
    copy = MLP.from_config(net.config(), net.params)
    assert copy.config() == net.config()
    assert copy.embedding == net.embedding and copy.dtype == np.float32
    np.testing.assert_array_equal(copy.params, net.params)
    with pytest.raises(ValueError, match="config"):
        MLP.from_config({"d": 2})


# -- initialisation -------------------------------------------------------------------------

def test_init_is_reproducible_and_seed_dependent():
    a = MLP(D, WIDTHS, rng=5)
    b = MLP(D, WIDTHS, rng=np.random.default_rng(5))
    c = MLP(D, WIDTHS, rng=6)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.any(a.params == c.params)


def test_init_draws_uniform_within_one_over_sqrt_fan_in():
    """W_l, b_l ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), layer by layer, weights before biases."""
    net = MLP(2, (200, 50), "silu", "fourier", rng=3)
    rng = np.random.default_rng(3)
    for W, b in zip(net.weights, net.biases):
        bound = 1.0 / np.sqrt(W.shape[0])
        assert np.abs(W).max() <= bound and np.abs(b).max() <= bound
        np.testing.assert_array_equal(W, rng.uniform(-bound, bound, W.shape))
        np.testing.assert_array_equal(b, rng.uniform(-bound, bound, b.shape))
    # and the range is used: over 10,000 draws the extremes come within 1% of the bound
    W = net.weights[1]
    assert np.abs(W).max() > 0.99 / np.sqrt(200)


def test_float32_init_is_the_float64_init_rounded():
    a = MLP(D, WIDTHS, rng=9)
    b = MLP(D, WIDTHS, dtype=np.float32, rng=9)
    assert b.params.dtype == np.float32
    np.testing.assert_array_equal(b.params, a.params.astype(np.float32))


@pytest.mark.parametrize("kwargs, name", [
    ({"d": 0}, "d"),
    ({"widths": (8, 0)}, "widths"),
    ({"activation": "gelu"}, "activation"),
    ({"time_embedding": "sine"}, "time embedding"),
    ({"dtype": np.int64}, "dtype"),
    ({"dtype": np.float16}, "dtype"),
    ({"rng": None}, "rng"),
    ({"rng": True}, "rng"),
    ({"widths": 5}, "widths must be a sequence"),
    ({"widths": "64"}, "widths must be a sequence"),
    # review: a 0-d array was a TypeError ('iteration over a 0-d array'); a set was read in hash order,
    # a dict as its keys, a 2-d array as its rows (named as 'widths (each)')
    ({"widths": np.array(64)}, "widths must be a sequence"),
    ({"widths": {64, 128}}, "widths must be a sequence"),
    ({"widths": {64: "relu"}}, "widths must be a sequence"),
    ({"widths": np.array([[64, 64]])}, "widths must be a sequence"),
    ({"activation": ["relu"]}, "activation"),
    ({"time_embedding": np.array(["log"])}, "time embedding"),
])
def test_constructor_rejects_bad_arguments(kwargs, name):
    args = {"d": D, "widths": WIDTHS, **kwargs}
    with pytest.raises(ValueError, match=name):
        MLP(**args)


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_a_copy_is_driven_by_its_own_params(how):
    # weights and biases are views into params; a copy must keep them so, or an
    # optimiser stepping the copy's params would change nothing it computes
    import copy
    import pickle

    net = MLP(D, WIDTHS, "silu", "log", rng=3)
    x, t = np.random.default_rng(0).standard_normal((5, D)), np.full(5, 0.5)
    net.forward(x, t, keep=True)  # a tape and a workspace in the original
    before = net.forward(x, t)
    twin = copy.deepcopy(net) if how == "deepcopy" else pickle.loads(pickle.dumps(net))
    np.testing.assert_array_equal(twin.forward(x, t), before)
    assert all(np.shares_memory(W, twin.params) for W in twin.weights + twin.biases)
    twin.params *= 0.5  # in place, as Adam does
    assert not np.array_equal(twin.forward(x, t), before)
    np.testing.assert_array_equal(net.forward(x, t), before)  # the original is untouched
    twin.forward(x, t, keep=True)
    twin.backward(np.ones((5, D)))  # the copy has a working tape of its own


# -- forward: blocks, dtypes, bad input -------------------------------------------------------

def test_blocked_forward_equals_taped_forward(numpy_ref):
    """keep=False works in blocks of B rows (4096); 2 B + 5 rows with per-row t cross two
    block boundaries. Same arithmetic, so equal to the last bits BLAS allows."""
    net = MLP(D, WIDTHS, "silu", "fourier", rng=0)
    B = mlp_module._INFERENCE_ROWS
    n = 2 * B + 5
    rng = np.random.default_rng(0)
    x, t = rng.standard_normal((n, D)), rng.uniform(0.01, 1.0, n)
    blocked = net.forward(x, t, keep=False)
    taped = net.forward(x, t, keep=True)
    np.testing.assert_allclose(blocked, taped, rtol=1e-13, atol=1e-15)
    rows = np.r_[B - 5:B + 5, 2 * B - 5:n]
    expected, _ = numpy_ref.forward(net, x[rows], t[rows])
    np.testing.assert_allclose(blocked[rows], expected, rtol=1e-12, atol=1e-14)
    # the tape of the big batch is still usable after blocked evaluation of another size
    net.forward(x[:7], t[:7])
    grad = net.backward(np.ones((n, D)))
    assert np.all(np.isfinite(grad))


def test_float32_network_is_close_to_float64():
    net64 = MLP(D, WIDTHS, "silu", "fourier", rng=0)
    net32 = MLP(D, WIDTHS, "silu", "fourier", dtype=np.float32, rng=0)
    x, t, w = batch(n=64)
    out64 = net64.forward(x, t, keep=True)
    out32 = net32.forward(x.astype(np.float32), t, keep=True)
    assert out32.dtype == np.float32
    assert np.abs(out32 - out64).max() <= 1e-5 * np.abs(out64).max()
    g64, gx64 = net64.backward(w, input_grad=True)
    g32, gx32 = net32.backward(w.astype(np.float32), input_grad=True)
    assert g32.dtype == gx32.dtype == np.float32
    assert np.abs(g32 - g64).max() <= 1e-5 * np.abs(g64).max()
    assert np.abs(gx32 - gx64).max() <= 1e-5 * np.abs(gx64).max()


def test_forward_rejects_bad_input():
    net = MLP(D, WIDTHS, "silu", "log")
    x = np.zeros((4, D))
    with pytest.raises(ValueError, match="dtype float64"):
        net.forward(x.astype(np.float32), 0.5)
    with pytest.raises(ValueError, match="dtype float32"):
        MLP(D, WIDTHS, dtype=np.float32).forward(x, 0.5)
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        net.forward(np.zeros((4, 2)), 0.5)
    with pytest.raises(ValueError, match="x"):
        net.forward(np.zeros(D), 0.5)
    with pytest.raises(ValueError, match="one value per row"):
        net.forward(x, np.full(3, 0.5))
    with pytest.raises(ValueError, match="t must be >= 0"):
        net.forward(x, -0.5)
    x[1, 2] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        net.forward(x, 0.5)


# -- backward: the tape ---------------------------------------------------------------------

def test_backward_needs_a_taped_forward():
    net = MLP(D, WIDTHS, rng=0)
    x, t, w = batch()
    with pytest.raises(ValueError, match="preceding forward"):
        net.backward(w)
    net.forward(x, t)  # keep=False keeps nothing
    with pytest.raises(ValueError, match="preceding forward"):
        net.backward(w)
    net.forward(x, t, keep=True)
    net.forward(x[::-1].copy(), t)  # an untaped pass over a batch of the same size spoils it
    with pytest.raises(ValueError, match="preceding forward"):
        net.backward(w)


def test_backward_writes_into_grad_params_and_leaves_grad_out_alone():
    net = MLP(D, WIDTHS, "softplus", "fourier", rng=0)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    expected = net.backward(w)
    w_before = w.copy()
    buffer = np.full(net.n_params, np.nan)
    result = net.backward(w, grad_params=buffer)  # the tape can be used twice
    assert result is buffer
    np.testing.assert_array_equal(buffer, expected)
    np.testing.assert_array_equal(w, w_before)
    with pytest.raises(ValueError, match="grad_out"):
        net.backward(w[:-1])
    with pytest.raises(ValueError, match="grad_out"):
        net.backward(w.astype(np.float32))
    with pytest.raises(ValueError, match="grad_params"):
        net.backward(w, grad_params=np.empty(net.n_params + 1))
    with pytest.raises(ValueError, match="grad_params"):
        net.backward(w, grad_params=np.empty(2 * net.n_params)[::2])


# -- extreme inputs (issue 11, items 9 and 10): ValueError naming the argument, never NaN --------


def test_backward_refuses_grad_params_that_is_not_an_ndarray():
    net = MLP(D, WIDTHS, rng=0)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    with pytest.raises(ValueError, match=r"grad_params must be a contiguous writeable ndarray.*got list"):
        net.backward(w, grad_params=[0.0] * net.n_params)
    with pytest.raises(ValueError, match="grad_params"):
        net.backward(w, grad_params=np.zeros(net.n_params)[::-1])


def test_backward_refuses_to_write_the_gradient_over_params():
    """Review: backward(grad_params=net.params) was accepted and wrote a wrong gradient over the
    parameters (the pass reads W_l after writing the gradient of the layers above it: 1.5
    off on a (8, 8) network). It is refused, params untouched; a separate buffer gets the
    gradient that central finite differences give."""
    net = MLP(D, WIDTHS, "tanh", "log", rng=3)
    x, t, w = batch(seed=4)
    theta = net.params.copy()
    net.forward(x, t, keep=True)
    with pytest.raises(ValueError, match="grad_params must not share memory with the network's params"):
        net.backward(w, grad_params=net.params)
    np.testing.assert_array_equal(net.params, theta)
    buffer = np.empty(net.n_params)
    assert net.backward(w, grad_params=buffer) is buffer  # the tape is still there

    def f(p):
        net.set_params(p)
        return float(np.sum(net.forward(x, t) * w))

    gradcheck(f, buffer.copy(), theta.copy())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_backward_refuses_a_non_finite_grad_out(bad):
    # one NaN spread to 41 of 50 gradient entries, silently
    net = MLP(D, WIDTHS, rng=0)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    w[0, 0] = bad
    with pytest.raises(ValueError, match=r"grad_out contains 1 non-finite"):
        net.backward(w)


def test_forward_and_backward_refuse_overflow_instead_of_returning_inf():
    net = MLP(D, WIDTHS, "relu", rng=0)
    net.set_params(net.params * 1e10)
    x, t, w = batch()
    x[:, :] = 1e300
    with pytest.raises(ValueError, match=r"output overflows float64 \(largest \|x\| entry 1e\+300"):
        net.forward(x, t)
    with pytest.raises(ValueError, match="output overflows"):
        net.forward(x, t, keep=True)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    with pytest.raises(ValueError, match=r"gradient \(largest \|grad_out\| entry 1e\+300\) overflows"):
        net.backward(np.full_like(w, 1e300))


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_backward_overflow_is_the_value_error_alone(activation):
    """Review: backward's overflow warned three times (NumPy's RuntimeWarnings from the products)
    before its ValueError, so under warnings-as-errors the caller got a RuntimeWarning naming
    nothing; so did forward's (the output layer's product, and inf - inf in the next layer's).
    Without an overflow the gradient is torch's."""
    net = MLP(D, WIDTHS, activation, rng=0)
    net.set_params(net.params * 1e10)
    x, t, w = batch()
    for widths in ((), WIDTHS) if activation != "tanh" else ((),):  # tanh's hidden layers saturate
        huge = MLP(D, widths, activation, rng=0)
        huge.set_params(huge.params * 1e10)
        for keep in (False, True):
            with pytest.raises(ValueError, match="output overflows float64"):
                huge.forward(np.full_like(x, 1e300), t, keep=keep)
    net.forward(x, t, keep=True)
    with pytest.raises(ValueError, match="gradient .* overflows float64"):
        net.backward(np.full_like(w, 1e300), input_grad=True)
    torch = pytest.importorskip("torch")
    act = {"relu": torch.relu, "silu": torch.nn.functional.silu, "tanh": torch.tanh,
           "softplus": lambda z: torch.logaddexp(torch.zeros_like(z), z)}[activation]
    theta = torch.tensor(net.params, requires_grad=True)
    h = torch.cat([torch.tensor(x), torch.tensor(t)[:, None]], 1)
    offset, L = 0, len(net.sizes) - 2
    for l, (fan_in, fan_out) in enumerate(zip(net.sizes[:-1], net.sizes[1:])):
        block = theta[offset:offset + (fan_in + 1) * fan_out].reshape(fan_in + 1, fan_out)
        offset += (fan_in + 1) * fan_out
        h = h @ block[:-1] + block[-1]
        h = act(h) if l < L else h
    (h * torch.tensor(w)).sum().backward()
    np.testing.assert_allclose(net.backward(w), theta.grad.numpy(), rtol=1e-13, atol=1e-15)


def test_workspace_hidden_pre_activations_share_the_backward_buffer():
    """Memory: the hidden z_l live in one buffer, the first dL/dh buffer of backward (z_l is
    dead once act(z_l) and act'(z_l) are written); the output has a buffer of its own."""
    net = MLP(D, (8, 6, 8), rng=0)
    ws = net._workspace(N)
    assert all(np.shares_memory(z, ws.ping) for z in ws.Z[:-1])
    assert not np.shares_memory(ws.Z[-1], ws.ping) and not np.shares_memory(ws.Z[-1], ws.pong)
    assert not np.shares_memory(ws.ping, ws.pong)
    # and the gradient is what separate buffers give (a fresh network of the same parameters)
    x = np.random.default_rng(1).standard_normal((N, D))
    t = np.linspace(0.1, 1.0, N)
    g = np.random.default_rng(2).standard_normal((N, D))
    net.forward(x, t, keep=True)
    got = net.backward(g).copy()
    h, dacts = x, []
    hs = []
    for l, (W, b) in enumerate(zip(net.weights, net.biases)):
        inp = np.concatenate([h, t[:, None]], axis=1) if l == 0 else h
        hs.append(inp)
        z = inp @ W + b
        if l < len(net.weights) - 1:
            s = 1.0 / (1.0 + np.exp(-z))
            dacts.append(s * (1.0 + z * (1.0 - s)))
            h = z * s
    want, gz = [], g
    for l in range(len(net.weights) - 1, -1, -1):
        if l < len(net.weights) - 1:
            gz = gz * dacts[l]
        want = [hs[l].T @ gz, gz.sum(axis=0)] + want
        gz = gz @ net.weights[l].T
    want = np.concatenate([np.concatenate([dW, db[None]], axis=0).ravel() for dW, db in zip(want[::2], want[1::2])])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.max(np.abs(want)))


# -- review: a refused pass must not leave a stale tape; tangents and seeds checked -------------

@pytest.mark.parametrize("call", ["forward", "forward_keep", "jvp", "jacobian_trace"])
def test_a_pass_refused_by_the_time_embedding_spoils_the_tape(call):
    """forward(keep=True), then a pass over as many rows whose t the log embedding refuses (t = 0):
    x had already been written into the tape's input, and backward silently returned the gradient
    at those rows (wrong by ~9 here) instead of refusing."""
    net = MLP(D, WIDTHS, "tanh", "log", rng=0)
    x, t, w = batch()
    net.forward(x, t, keep=True)
    passes = {"forward": lambda: net.forward(x + 5.0, 0.0),
              "forward_keep": lambda: net.forward(x + 5.0, 0.0, keep=True),
              "jvp": lambda: net.jvp(x + 5.0, 0.0, np.ones((N, 1, D))),
              "jacobian_trace": lambda: net.jacobian_trace(x + 5.0, 0.0)}
    with pytest.raises(ValueError, match="t must be > 0 for the 'log' time embedding"):
        passes[call]()
    with pytest.raises(ValueError, match="preceding forward"):
        net.backward(w)


def test_a_tangent_pass_stopped_midway_leaves_no_tape(monkeypatch):
    net = MLP(D, WIDTHS, rng=0)
    x, t, w = batch()
    net.forward(x, t, keep=True)

    def fail(ws, T):
        raise RuntimeError("stopped")

    monkeypatch.setattr(net, "_tangents", fail)
    with pytest.raises(RuntimeError, match="stopped"):
        net.jvp(x, t, np.ones((N, 1, D)))  # same rows: the tape's workspace, re-taped by the pass
    with pytest.raises(ValueError, match="preceding forward"):
        net.backward(w)


@pytest.mark.parametrize("bad", [np.ones((N, 1, D)) * (1 + 1j), np.full((N, 1, D), "a"),
                                 np.full((N, 1, D), None, dtype=object)])
def test_jvp_refuses_tangents_that_are_not_real(bad):
    """Complex tangents had their imaginary part dropped with only a ComplexWarning; strings and
    objects gave a TypeError from np.isfinite."""
    from sgm_ref.score_model import ScoreModel

    net = MLP(D, WIDTHS, rng=0)
    x, t, _ = batch()
    for f in (net.jvp, ScoreModel(net).jvp):
        with pytest.raises(ValueError, match=r"tangents must be a real array \(float or integer\), got dtype"):
            f(x, t, bad)


@pytest.mark.parametrize("widths", [(), (1,), WIDTHS], ids=["depth0", "width1", "depth2"])
def test_jvp_of_no_directions_is_empty(widths):
    """Tangents of shape (n, 0, d), k = 0 directions, met reshape(r, 0, -1) in jvp, and numpy's
    "cannot reshape array of size 0 into shape (16,0,newaxis)" (a review). J v for no v is the
    empty (n, 0, d), beside the forward pass; one direction still agrees with autograd-free
    central differences of the network."""
    net = MLP(D, widths, rng=0)
    x, t, _ = batch()
    out, jv = net.jvp(x, t, np.zeros((N, 0, D)))
    assert jv.shape == (N, 0, D) and jv.dtype == np.float64
    np.testing.assert_allclose(out, net.forward(x, t), rtol=1e-13, atol=1e-15)
    v = np.random.default_rng(1).standard_normal((N, 1, D))
    _, jv1 = net.jvp(x, t, v)
    h = 1e-6
    fd = (net.forward(x + h * v[:, 0], t) - net.forward(x - h * v[:, 0], t)) / (2 * h)
    np.testing.assert_allclose(jv1[:, 0], fd, rtol=1e-7, atol=1e-9)


def test_a_negative_seed_and_too_many_frequencies_are_named():
    with pytest.raises(ValueError, match="rng must be a Generator or an int seed >= 0, got -1"):
        MLP(D, WIDTHS, rng=-1)
    with pytest.raises(ValueError, match=r"n_frequencies must be an integer in \[1, 1000\], got 1100"):
        TimeEmbedding("fourier", 1100)  # was an OverflowError from 2.0**1099
    emb = TimeEmbedding("fourier", 1000)  # the largest: every feature finite down to the smallest t
    out = np.empty((2, emb.dim))
    assert np.all(np.isfinite(emb(np.array([5e-324, 1e308]), out)))


def test_a_network_too_large_for_memory_is_named_in_one_short_line():
    # the message listed every width: a depth of a million printed 5 MB on one line
    with pytest.raises(ValueError) as info:
        MLP(d=2, widths=(128,) * 1_000_000)
    message = str(info.value)
    assert len(message) < 300 and "widths = [128] * 1000000 make 16511984258 parameters" in message
    assert "fewer or narrower layers" in message
    assert repr(MLP(d=2, widths=(3, 4) * 6)).startswith("MLP(d=2, widths=[3, 4, 3, 4, 3, 4, 3, 4, ...] (12 layers),")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_tanh_derivative_is_exact_also_where_the_unit_saturates(dtype):
    """Review: tanh' was 1 - h^2, which loses digits as |h| rounds toward 1 and all of them
    beyond: float64 z = 2.5 was 27 ulp off, z = 5 2000 ulp, z = 19 gave 0 for 1.3e-16; float32
    z = 9.9 gave 1.2e-7 for 1.0e-8 (12 times too large). Every consumer of act' (backward, jvp,
    jacobian_trace) read it; a unit saturated on a whole batch had a gradient of noise (which
    Adam, per entry scale-free, follows at full step). Now 1 - h^2 for |h| <= 1/2 and 1 / cosh^2 z beyond: within
    4 ulp of mpmath's sech^2 z, for out = tanh(z) (one hidden unit, z = x, t weighted 0)."""
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 50
    z = np.array([0.1, 0.3, 0.52, 0.6, 1.0, 1.9, 2.5, 5.0, 9.9, 19.0, 25.7, 40.0]
                 + ([300.0, 360.0, 720.0] if dtype == np.float64 else []), dtype=dtype)
    z = np.concatenate([z, -z])
    net = MLP(1, (1,), "tanh", "linear", dtype=dtype, rng=0)
    net.set_params(np.array([1, 0, 0, 1, 0], dtype=dtype))  # W_0 = [1, 0]^T, b_0 = 0, W_1 = 1, b_1 = 0
    x, t = z[:, None], np.full(z.size, 0.5)
    expected = np.array([float(mpmath.sech(mpmath.mpf(float(v))) ** 2) for v in z])
    ulp = np.spacing(expected.astype(dtype)).astype(np.float64)
    net.forward(x, t, keep=True)
    _, grad_x = net.backward(np.ones_like(x), input_grad=True)
    _, trace = net.jacobian_trace(x, t)
    _, jv = net.jvp(x, t, np.ones((z.size, 1, 1)))
    for got in (grad_x[:, 0], trace, jv[:, 0, 0]):
        assert got.dtype == dtype
        assert np.all(np.abs(got - expected) <= 4 * ulp), np.max(np.abs(got - expected) / ulp)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_a_hidden_pre_activation_that_overflows_is_refused_not_saturated(activation):
    """Review: a hidden z that overflowed (a product past 1.8e308, or inf - inf) came out of relu,
    softplus and tanh finite, 0 or +-1, whatever the exact z: with x = (1e308, 1e308) and first-layer
    weights 2 and -2 the exact z = 0.56, 0.50, -0.55 (mpmath), OpenBLAS's sum of one row is -inf
    (of two rows NaN: the order of the sum decides), and the relu network returned (-0.231, -0.089),
    its output bias, for the exact (0.133, -0.579), without a word; tanh and softplus too. Such a
    pass now raises as an overflowing output does, and leaves no tape."""
    mpmath = pytest.importorskip("mpmath")
    net = MLP(2, (3,), activation, "linear", rng=0)
    net.weights[0][:2] = [[2.0] * 3, [-2.0] * 3]
    x, t = np.array([[1e308, 1e308]]), 0.5
    exact = [sum(mpmath.mpf(float(a)) * mpmath.mpf(float(w)) for a, w in zip([*x[0], t, 1.0], net._layers[0][:, j]))
             for j in range(3)]
    assert max(abs(z) for z in exact) < 1  # the premise: a moderate z, not a saturating one
    calls = (lambda: net.forward(x, t), lambda: net.forward(x, t, keep=True),
             lambda: net.jvp(x, t, np.ones((1, 1, 2))), lambda: net.jacobian_trace(x, t))
    for call in calls:
        with pytest.raises(ValueError, match="overflows float64.*largest \\|x\\| entry 1e\\+308"):
            call()
    with pytest.raises(ValueError, match="backward needs a preceding forward"):
        net.backward(np.ones((1, 2)))
    assert np.all(np.isfinite(net.forward(x * 1e-300, t, keep=True)))  # a finite pass as before
    net.forward(x * 1e-300, t)  # a later pass on a batch of the same size spoils the tape: said so
    with pytest.raises(ValueError, match="whose tape is intact: a later pass of this network"):
        net.backward(np.ones((1, 2)))
    net.forward(x * 1e-300, t, keep=True)
    net.backward(np.ones((1, 2)))


def test_a_non_finite_parameter_is_named_not_called_an_overflow():
    """Review: a NaN written into params (or a layer view) came out of forward, jvp, jacobian_trace
    and backward as 'the network's output overflows float64 (..., largest |parameter| nan); rescale
    x, t or the parameters toward order 1', advice no rescaling follows. The message now names the
    first non-finite parameter, its index and its layer block."""
    net = MLP(2, (4,), "silu", "log", rng=0)  # layer 0: W 3 x 4 at [0, 12), b at [12, 16); layer 1 from 16
    x, t = np.ones((2, 2)), 0.5
    for view, index, flat, text in ((net.weights[0], (2, 3), 11, "layer 0's weights"),
                                    (net.biases[0], (1,), 13, "layer 0's biases"),
                                    (net.weights[1], (3, 1), 23, "layer 1's weights"),
                                    (net.biases[1], (0,), 24, "layer 1's biases")):
        saved = net.params.copy()
        net.forward(x, t, keep=True)  # a tape of finite parameters, for backward (called first below)
        view[index] = np.nan
        net.params[-1] = np.inf  # a second one: the first is named, both counted
        calls = (lambda: net.forward(x, t), lambda: net.jvp(x, t, np.ones((2, 1, 2))),
                 lambda: net.jacobian_trace(x, t))
        # backward reads W_1 .. W_L (W_0 for input_grad), never a bias: the taped pass had finite ones
        for call in ((lambda: net.backward(np.ones((2, 2))),) if view is net.weights[1] else ()) + calls:
            with pytest.raises(ValueError, match=rf"not finite: params holds 2 non-finite value\(s\), the first "
                                                 rf"params\[{flat}\] = nan \({text}\); set finite parameters"):
                call()
        net.set_params(saved)


@pytest.mark.parametrize("dtype, cosh_ulp, worst", [(np.float64, 3.5, 12.47822310171438),
                                                     (np.float32, 7.8, 8.35118579864502)])
def test_tanh_derivative_ulp_bounds(dtype, cosh_ulp, worst):
    """The bounds the kernel's docstring states (it said 'within 3 ulp'; a review measured 3.42 ulp
    in float64 at z = 12.478 over 2e7 random z against long double, and 7.71 in float32 at z =
    8.3512 over every float32 z against float64): 1 - h^2 within 1.3 ulp of mpmath's sech^2 z for
    |h| <= 1/2, 1 / cosh^2 z within 3.5 ulp (float64) and 7.8 ulp (float32) beyond, on a grid
    and at those worst points."""
    mpmath = pytest.importorskip("mpmath")
    from sgm_ref.kernels.dense import ACTIVATIONS as KINDS
    from sgm_ref.kernels.dense import activation_forward

    mpmath.mp.dps = 30
    hi = 40.0 if dtype == np.float32 else 350.0
    z = np.concatenate([np.linspace(-0.6, 0.6, 401), np.linspace(-hi, hi, 801), [worst, -worst]]).astype(dtype)
    Z = z[None].copy()
    H, D = np.empty((1, z.size + 1), dtype), np.empty_like(Z)
    activation_forward(Z, KINDS["tanh"], H, D, True)
    want = [mpmath.sech(mpmath.mpf(float(v))) ** 2 for v in z]  # not rounded: an ulp is measured to 1e-3
    ulp = np.array([float(abs(mpmath.mpf(float(got)) - w) / float(np.spacing(dtype(float(w)))))
                    for got, w in zip(D[0], want)])
    inner = np.abs(H[0, :-1]) <= 0.5
    assert ulp[inner].max() <= 1.3 and ulp[~inner].max() <= cosh_ulp, (ulp[inner].max(), ulp[~inner].max())
    assert ulp[-1] > cosh_ulp - 0.5  # the worst point is still where the bound is tight


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_float32_matches_torch_float32_and_an_empty_batch_is_empty(activation, torch_ref):
    """float32 forward, parameter and input gradients against torch's float32 autograd on the same
    float32 parameters (the embedding formed in float64 and rounded, as here), over depth 0 and 1,
    width 1, d = 1 and a batch of one row: a review measured at most 9.6e-7 of the largest entry
    (the output of a one-row affine map, 8 ulp of cancellation). A batch of 0 rows gives empty
    outputs and a zero parameter gradient, in float32 and float64."""
    torch = torch_ref.torch
    for embedding in EMBEDDINGS:
        for d, widths, n in ((1, (), 1), (1, (1,), 1), (2, (1,), 5), (3, (8, 6), 17)):
            net = MLP(d, widths, activation, embedding, dtype=np.float32, rng=3)
            rng = np.random.default_rng(1)
            x = rng.standard_normal((n, d)).astype(np.float32)
            t, w = rng.uniform(1e-3, 2.0, n), rng.standard_normal((n, d)).astype(np.float32)
            out = net.forward(x, t, keep=True)
            grad, grad_x = net.backward(w, input_grad=True)
            params = torch_ref.parameters(net)  # float32 tensors of the float32 parameters
            assert all(p.dtype == torch.float32 for p in params)
            xt = torch.tensor(x, requires_grad=True)
            out_t = torch_ref.forward(net, params, xt, torch.tensor(t))
            torch.sum(torch.tensor(w) * out_t).backward()
            for got, want in ((out, out_t.detach().numpy()), (grad, torch_ref.flat([p.grad for p in params])),
                              (grad_x, xt.grad.numpy())):
                assert got.dtype == want.dtype == np.float32
                assert np.abs(got - want).max() <= 2e-6 * np.abs(want).max(), (embedding, d, widths)
        for dtype in (np.float32, np.float64):
            net = MLP(3, (4,), activation, embedding, dtype=dtype, rng=0)
            empty = np.zeros((0, 3), dtype)
            assert net.forward(empty, np.zeros(0) + 0.5).shape == (0, 3)
            assert net.forward(empty, 0.5, keep=True).shape == (0, 3)
            grad, grad_x = net.backward(empty, input_grad=True)
            assert grad_x.shape == (0, 3) and grad.dtype == grad_x.dtype == dtype and not np.any(grad)
            assert net.jvp(empty, 0.5, np.zeros((0, 2, 3)))[1].shape == (0, 2, 3)
            assert net.jacobian_trace(empty, 0.5)[1].shape == (0,)


def test_tangents_beyond_float32_and_overflowing_tangent_products_are_named_without_warnings():
    """Review: float64 tangents of 1e39 for a float32 network became inf in the cast (a RuntimeWarning)
    and the refusal blamed 'x, t or the parameters'; jvp and jacobian_trace warned ('overflow
    encountered in matmul / einsum') before refusing an overflowing product. The tangents are now
    refused as such, and an overflow is the ValueError alone, naming the tangents' size."""
    import warnings

    net = MLP(2, (3,), "silu", "log", dtype=np.float32, rng=0)
    x = np.full((2, 2), 0.01, np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"tangents must fit the network's dtype float32: the largest \|entry\| "
                                             r"1e\+39 exceeds its largest value 3\.4e\+38"):
            net.jvp(x, 0.5, np.full((2, 1, 2), 1e39))
        net.weights[0][...] = 10.0
        with pytest.raises(ValueError, match=r"Jacobian-vector product \(largest \|tangent\| entry 3e\+38\) overflows "
                                             r"float32 .*rescale x, t, the tangents or the parameters"):
            net.jvp(x, 0.5, np.full((2, 1, 2), 3e38))
        # z_0 = 0: h_1 = 0 keeps the output finite, silu'(0) = 1/2 sends the tangents 3 (1/2) 1.7e308 past max
        net = MLP(2, (3, 3), "silu", "log", rng=0)
        net.weights[0][...], net.biases[0][...], net.weights[1][...], net.biases[1][...] = 1.0, 0.0, 1.7e308, 0.0
        assert np.all(np.isfinite(net.forward(np.zeros((2, 2)), 1.0)))
        for call in (lambda: net.jacobian_trace(np.zeros((2, 2)), 1.0),
                     lambda: net.jvp(np.zeros((2, 2)), 1.0, np.ones((2, 1, 2)))):
            with pytest.raises(ValueError, match=r"(Jacobian trace|Jacobian-vector product.*) overflows float64"):
                call()


@pytest.mark.parametrize("x, given", [(np.ones((3, 2), np.int64), "int64"), ([[1, 2]] * 3, "int64"),
                                      (np.ones((3, 2)), "float64"), (np.ones((3, 2), np.int32), "int32")])
def test_x_of_another_dtype_is_named_with_the_dtype_passed(x, given):
    """Integer x for a float32 network was reported as "got float64" (check_points' promotion),
    a dtype the caller never passed; forward, jvp and jacobian_trace share the check. A float64
    network takes integer x as float64 points, as before."""
    net = MLP(2, (4,), rng=0, dtype=np.float32)
    match = rf"^x must have dtype float32 \(the network's\), got {given}; pass np.asarray\(x, dtype=np.float32\)$"
    for call in (lambda: net.forward(x, 0.5), lambda: net.jvp(x, 0.5, np.ones((3, 1, 2))),
                 lambda: net.jacobian_trace(x, 0.5)):
        with pytest.raises(ValueError, match=match):
            call()
    net64 = MLP(2, (4,), rng=0)
    assert np.array_equal(net64.forward(x, 0.5), net64.forward(np.asarray(x, dtype=np.float64), 0.5))
    with pytest.raises(ValueError, match=r"got float32; pass np.asarray\(x, dtype=np.float64\)$"):
        net64.forward(np.ones((3, 2), np.float32), 0.5)
