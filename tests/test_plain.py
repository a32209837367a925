"""The plain-NumPy twin (sgm_ref.plain) against the fast path, with the same seeds.

Agreement is max |fast - plain| / max |plain| over the whole array (float64), and must
be <= 1e-13: the two differ only in the order of floating-point operations (the fast
path folds the bias into the matrix product, accumulates in numba loops, centres the
mixture means). Measured values are in the docstrings.
"""

import numpy as np
import pytest

from sgm_ref import OU, VP, GaussianMixture, plain
from sgm_ref.losses import dsm_loss
from sgm_ref.nn import MLP
from sgm_ref.optim import Adam
from sgm_ref.samplers import euler_maruyama, time_grid
from sgm_ref.score_model import ScoreModel
from sgm_ref.train import TrainStep

TOL = 1e-13
PROCESSES = {"OU": (OU(), plain.OU), "VP": (VP(0.1, 20.0), (0.1, 20.0))}


def rel(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / np.max(np.abs(want)))


def batch(seed, n=64, d=3, t_range=(0.01, 1.0)):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, d)), rng.uniform(*t_range, n), rng.standard_normal((n, d))


def test_marginal_and_step_integrals():
    """alpha_t, sigma_t^2 and int beta over sampler steps: the same formulas, the same bits."""
    t = np.geomspace(1e-8, 1.0, 50)
    for process, pair in PROCESSES.values():
        a, s2 = plain.marginal(t, pair)
        np.testing.assert_array_equal(a, process.alpha(t))
        np.testing.assert_array_equal(s2, process.sigma2(t))
        np.testing.assert_array_equal(plain.integrated_beta(t[1:], t[:-1], pair),
                                      process.integrated_beta_between(t[1:], t[:-1]))


@pytest.mark.parametrize("activation", ["relu", "silu", "tanh", "softplus"])
@pytest.mark.parametrize("embedding", ["linear", "log", "fourier"])
def test_mlp_forward_and_input_gradient(activation, embedding):
    net = MLP(3, (16, 12), activation, embedding, rng=2)
    x, t, g = batch(1)
    out = net.forward(x, t, keep=True)
    grad, grad_x = net.backward(g, input_grad=True)
    p_out, tape = plain.mlp_forward(net.params, plain.Net.of(net), x, t)
    p_grad, p_grad_x = plain.mlp_backward(net.params, plain.Net.of(net), tape, g, input_grad=True)
    assert max(rel(out, p_out), rel(grad, p_grad), rel(grad_x, p_grad_x)) <= TOL


def test_init_params_matches_mlp():
    net = MLP(2, (8, 8), "tanh", "fourier", rng=np.random.default_rng(5))
    theta = plain.init_params(plain.Net.of(net), np.random.default_rng(5))
    np.testing.assert_array_equal(theta, net.params)


@pytest.mark.parametrize("process", PROCESSES, ids=str)
@pytest.mark.parametrize("weighting", ["none", "sigma2"])
@pytest.mark.parametrize("parameterization", ["score", "noise", "residual"])
@pytest.mark.parametrize("activation", ["relu", "silu", "tanh", "softplus"])
def test_loss_and_gradient(activation, parameterization, weighting, process):
    """Every activation x parameterisation x weighting x embedding x process (measured <= 4e-16)."""
    fast_process, pair = PROCESSES[process]
    x0, t, z = batch(4)
    for embedding in ("linear", "log", "fourier"):
        model = ScoreModel(MLP(3, (16, 12), activation, embedding, rng=1), fast_process, parameterization)
        value, grad = dsm_loss(model, x0, t, z, weighting)
        p_value, p_grad = plain.dsm_loss(model.params, plain.Net.of(model.network), x0, t, z, pair,
                                         parameterization, weighting)
        assert rel(value, p_value) <= TOL and rel(grad, p_grad) <= TOL, embedding


@pytest.mark.parametrize("time_distribution", ["uniform", "log-uniform"])
def test_fifty_training_steps(time_distribution):
    """50 TrainStep calls (draws, DSM loss and gradient, Adam with weight decay and clipping)
    against 50 plain.train_step calls from the same seed: losses and parameters after."""
    rng = np.random.default_rng(7)
    data = rng.standard_normal((200, 2)) + 2.0
    options = dict(lr=1e-2, weight_decay=1e-3, clip_norm=5.0)
    model = ScoreModel(MLP(2, (32, 32), "silu", "fourier", rng=3), VP(), "noise")
    theta, state = model.params.copy(), {}
    step = TrainStep(model, data, 64, 1e-3, 1.0, Adam(model.params, **options), "sigma2", time_distribution)
    fast_rng, plain_rng = np.random.default_rng(11), np.random.default_rng(11)
    losses = [step(fast_rng) for _ in range(50)]
    p_losses = [plain.train_step(theta, plain.Net.of(model.network), state, data, 64, plain_rng, 1e-3, 1.0,
                                 plain.VP, "noise", "sigma2", time_distribution, **options) for _ in range(50)]
    assert rel(losses, p_losses) <= TOL
    assert rel(model.params, theta) <= TOL
    assert rel(step.optimizer.m, state["m"]) <= TOL and rel(step.optimizer.v, state["v"]) <= TOL
    assert fast_rng.random() == plain_rng.random()  # the same number of draws


def test_fifty_adam_steps():
    """Adam alone on 50 given gradients, with clipping active and weight decay."""
    rng = np.random.default_rng(8)
    p0 = rng.standard_normal(500)
    grads = [rng.standard_normal(500) * 10.0 ** rng.uniform(-3, 2) for _ in range(50)]
    fast, theta, state = Adam(p0.copy(), lr=3e-3, weight_decay=0.1, clip_norm=10.0), p0.copy(), {}
    for g in grads:
        assert rel(fast.step(g), plain.adam(theta, g, state, 3e-3, weight_decay=0.1, clip_norm=10.0)) <= TOL
    assert rel(fast.params, theta) <= TOL


def mixture(covariance, K=5, d=4, seed=9):
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.5, 1.5, K)
    w[1] = 0.0  # a zero-weight component is allowed and has no effect
    w /= w.sum()
    mu = 2.0 * rng.standard_normal((K, d))
    if covariance == "identity":
        return GaussianMixture(w, mu)
    if covariance == "diagonal":
        return GaussianMixture(w, mu, rng.uniform(0.05, 3.0, (K, d)))
    if covariance == "spherical":
        return GaussianMixture(w, mu, rng.uniform(0.05, 3.0, K), covariance_type="spherical")
    if covariance == "tied":  # d = K: a (d, d) covariance has the shape of (K, d) variances
        A = rng.standard_normal((d, d))
        return GaussianMixture(w, mu, A @ A.T / d + 0.1 * np.eye(d), covariance_type="tied")
    A = rng.standard_normal((K, d, d))
    return GaussianMixture(w, mu, A @ A.transpose(0, 2, 1) / d + 0.1 * np.eye(d))


@pytest.mark.parametrize("process", PROCESSES, ids=str)
@pytest.mark.parametrize("covariance", ["identity", "spherical", "diagonal", "tied", "full"])
def test_oracle_score(covariance, process):
    """log p_t and grad log p_t at points of p_t, one t per row (measured <= 4e-15).

    Every covariance type of GaussianMixture: plain.mixture took spherical (K,) variances
    to np.linalg.eigh (LinAlgError), and a tied (d, d) covariance is passed broadcast to
    (K, d, d) (as (d, d) it has the shape of K = d variances)."""
    fast_process, pair = PROCESSES[process]
    gm = mixture(covariance, K=4 if covariance == "tied" else 5)
    rng = np.random.default_rng(10)
    t = rng.uniform(1e-4, 1.0, 500)
    x, _ = fast_process.perturb(gm.sample(500, rng), t, rng)
    logp, s = gm.log_prob_and_score(x, t, fast_process)
    cov = gm.covariances if covariance != "tied" else np.broadcast_to(gm.covariances, (4, 4, 4))
    p_logp, p_s = plain.mixture_score(x, t, plain.mixture(gm.weights, gm.means, cov), pair)
    assert rel(logp, p_logp) <= TOL and rel(s, p_s) <= TOL
    # and row by row, scaled by each row's score size (no row hides behind a larger one)
    row_err = np.max(np.abs(s - p_s), axis=1) / np.max(np.abs(p_s), axis=1)
    assert row_err.max() <= 1e-12


@pytest.mark.parametrize("process", PROCESSES, ids=str)
def test_hundred_sampler_steps(process):
    """100 Euler–Maruyama steps from the same prior draw and rng: the exact score, then a
    network's (the plain score model on the plain side)."""
    fast_process, pair = PROCESSES[process]
    gm = mixture("full", d=2)
    grid = time_grid(1.0, 1e-3, 100, "geometric", fast_process)
    x = np.random.default_rng(12).standard_normal((300, 2))
    fast_rng, plain_rng = np.random.default_rng(13), np.random.default_rng(13)
    y = euler_maruyama(lambda x, t: gm.score(x, t, fast_process), fast_process, grid, x, fast_rng)
    p0 = plain.mixture(gm.weights, gm.means, gm.covariances)
    p_y = plain.euler_maruyama(lambda x, t: plain.mixture_score(x, t, p0, pair)[1], x, grid, plain_rng, pair)
    assert rel(y, p_y) <= TOL and fast_rng.random() == plain_rng.random()
    model = ScoreModel(MLP(2, (16, 16), "tanh", "log", rng=4), fast_process, "residual")
    y = euler_maruyama(model, fast_process, grid, x, fast_rng)
    p_y = plain.euler_maruyama(lambda x, t: plain.score(model.params, plain.Net.of(model.network), x, t, pair),
                               x, grid, plain_rng, pair)
    assert rel(y, p_y) <= TOL


@pytest.mark.parametrize("process", PROCESSES, ids=str)
@pytest.mark.parametrize("parameterization", ["score", "noise", "residual"])
def test_score_of_each_parameterization(parameterization, process):
    """plain.score against ScoreModel, every parameterisation and embedding, t down to 1e-6
    (sigma_t ~ 1e-3 for "noise"; measured <= 2e-16)."""
    fast_process, pair = PROCESSES[process]
    x, t, _ = batch(14, n=40, d=5, t_range=(1e-6, 1.0))
    for embedding in ("linear", "log", "fourier"):
        model = ScoreModel(MLP(5, (7, 9), "silu", embedding, rng=6), fast_process, parameterization)
        assert rel(model(x, t), plain.score(model.params, plain.Net.of(model.network), x, t, pair,
                                            parameterization)) <= TOL, embedding


def test_float32_network_agrees_to_float32_rounding():
    """The module docstring's float32 claim: forward, backward, loss and gradient, and five
    training steps (the same draws) agree to float32's rounding (measured 1.7e-7; 2.3e-7 over the
    other embeddings)."""
    x0, t, z = batch(4)
    x0, z = x0.astype(np.float32), z.astype(np.float32)
    worst = 0.0
    for activation in ("relu", "silu", "tanh", "softplus"):
        net = MLP(3, (16, 12), activation, "fourier", rng=2, dtype=np.float32)
        out = net.forward(x0, t, keep=True)
        grad, grad_x = net.backward(z, input_grad=True)
        p_out, tape = plain.mlp_forward(net.params, plain.Net.of(net), x0, t)
        p_grad, p_grad_x = plain.mlp_backward(net.params, plain.Net.of(net), tape, z, input_grad=True)
        assert p_out.dtype == p_grad.dtype == np.float32
        worst = max(worst, rel(out, p_out), rel(grad, p_grad), rel(grad_x, p_grad_x))
        for parameterization in ("score", "noise", "residual"):
            model = ScoreModel(net, OU(), parameterization)
            value, grad = dsm_loss(model, x0, t, z, "sigma2")
            p_value, p_grad = plain.dsm_loss(net.params, plain.Net.of(net), x0, t, z, plain.OU, parameterization,
                                             "sigma2")
            worst = max(worst, rel(value, p_value), rel(grad, p_grad))
    data = (np.random.default_rng(7).standard_normal((200, 2)) + 2.0).astype(np.float32)
    model = ScoreModel(MLP(2, (32, 32), "silu", "fourier", rng=3, dtype=np.float32), VP(), "noise")
    theta, state = model.params.copy(), {}
    step = TrainStep(model, data, 64, 1e-3, 1.0, Adam(model.params, lr=1e-2), "sigma2", "log-uniform")
    fast_rng, plain_rng = np.random.default_rng(11), np.random.default_rng(11)
    losses = [step(fast_rng) for _ in range(5)]
    p_losses = [plain.train_step(theta, plain.Net.of(model.network), state, data, 64, plain_rng, 1e-3, 1.0, plain.VP,
                                 "noise", "sigma2", "log-uniform", lr=1e-2) for _ in range(5)]
    assert theta.dtype == np.float32 and fast_rng.random() == plain_rng.random()
    worst = max(worst, rel(losses, p_losses), rel(model.params, theta))
    assert worst <= 3e-7, worst
