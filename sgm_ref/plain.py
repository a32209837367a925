"""The whole method in plain NumPy: one readable file, no numba, no input checks.

This is the specification the fast path is tested against. Given the same parameters,
data and Generator seed, each function returns what its fast twin returns, up to
rounding (tests/test_plain.py asserts <= 1e-13 relative in float64; a float32 network
agrees to float32's rounding, <= 3e-7 measured, with the same draws; and where the oracle's
x - alpha_t mu_k cancels, a point near a mean far from 0 at small t, the two agree only
to the digits that cancellation leaves, both as far from the exact score: docs/limits.md):

    marginal, integrated_beta  sgm_ref.processes.OU / VP      the forward process
    mixture, mixture_score     GaussianMixture.log_prob_and_score  the exact oracle
    embed, mlp_forward/backward sgm_ref.nn.MLP                 the score network
    dsm_loss, sample_times     sgm_ref.losses                  denoising score matching
    adam                       sgm_ref.optim.Adam              the optimiser
    train_step                 sgm_ref.train.TrainStep         one training step
    euler_maruyama             sgm_ref.samplers.euler_maruyama the reverse-time sampler

Nothing is validated: pass arrays of the documented shapes (float64, or float32 for
the network). A process is the pair (beta_min, beta_max) of its linear noise rate.
"""

import math
from typing import NamedTuple

import numpy as np

# dX = -1/2 beta(t) X dt + sqrt(beta(t)) dW with beta(t) = beta_min + t (beta_max - beta_min)
OU = (2.0, 2.0)  # Ornstein–Uhlenbeck, alpha_t = e^{-t} (Cole & Lu's forward process)
VP = (0.1, 20.0)  # Song et al. (2021), t in [0, 1]


# -- the forward process ---------------------------------------------------------------------
def integrated_beta(t_hi, t_lo=0.0, process=OU):
    """int_{t_lo}^{t_hi} beta = (t_hi - t_lo) (beta_min + (t_hi + t_lo) (beta_max - beta_min) / 2).

    One product, not B(t_hi) - B(t_lo): fine sampler steps keep their digits."""
    b0, b1 = process
    return (t_hi - t_lo) * (b0 + 0.5 * (t_hi + t_lo) * (b1 - b0))


def marginal(t, process=OU):
    """(alpha_t, sigma_t^2) of X_t = alpha_t X_0 + sigma_t Z, B = integrated_beta(t):

        alpha_t = exp(-B / 2),   sigma_t^2 = 1 - alpha_t^2 = -expm1(-B)  (exact as t -> 0)."""
    B = integrated_beta(np.asarray(t, dtype=np.float64), 0.0, process)
    return np.exp(-0.5 * B), -np.expm1(-B)


# -- the exact score of a Gaussian mixture (the oracle) -----------------------------------------
def mixture(weights, means, covariances=None):
    """p_0 = sum_k w_k N(mu_k, Sigma_k) as (log w, mu, lam, U), Sigma_k = U_k diag(lam_k) U_k^T.

    Factorised once (U is None for identity, spherical or diagonal covariances; lam is
    then the variances, (K, 1) for the identity (ones) and spherical). weights (K,); means
    (K, d); covariances None, (K,) (spherical: Sigma_k = s_k I), (K, d) (variances) or
    (K, d, d); a tied (d, d) covariance (GaussianMixture's "tied") must be passed as
    np.broadcast_to(cov, (K, d, d)): as (d, d) it would be read as K = d variances.
    Zero-weight components are dropped."""
    keep = weights > 0  # log 0 would give NaN in the log-sum-exp
    if covariances is None:
        lam, U = np.ones((np.count_nonzero(keep), 1)), None
    elif np.ndim(covariances) == 1:
        lam, U = covariances[keep][:, None], None
    elif np.ndim(covariances) == 2:
        lam, U = covariances[keep], None
    else:
        lam, U = np.linalg.eigh(covariances[keep])
    return np.log(weights[keep]), means[keep], lam, U


def mixture_score(x, t, p0, process=OU):
    """log p_t(x) and grad log p_t(x), with p0 = mixture(weights, means, covariances).

    p_t = sum_k w_k N(a mu_k, a^2 Sigma_k + s2 I) with (a, s2) = marginal(t). With
    y_k = U_k^T (x - a mu_k) and v_k = a^2 lam_k + s2 (U_k = I if not factorised):

        log N_k(x)      = -1/2 (sum_j y_kj^2 / v_kj + sum_j log v_kj + d log 2 pi)
        grad log p_t(x) = -sum_k pi_k(x) U_k (y_k / v_k),   pi_k = w_k N_k / sum_l w_l N_l,

    summed over k by a streaming log-sum-exp (running maximum m, rescaled as it grows).
    x (n, d); t scalar or (n,). Returns logp (n,), score (n, d).
    """
    logw, mu, lam, U = p0
    n, d = x.shape
    a, s2 = marginal(np.broadcast_to(t, (n,)), process)
    a, a2, s2 = a[:, None], (a * a)[:, None], s2[:, None]
    m, total, score = np.full(n, -np.inf), np.zeros(n), np.zeros((n, d))
    for k in range(len(logw)):
        y = x - a * mu[k] if U is None else (x - a * mu[k]) @ U[k]
        v = a2 * lam[k] + s2  # (n, 1) for identity covariances
        r = y / v
        logdet = d * np.log(v[:, 0]) if v.shape[1] == 1 else np.log(v).sum(axis=1)
        log_wN = logw[k] - 0.5 * (np.einsum("ij,ij->i", y, r) + logdet)  # sum_j y_j r_j per row
        m_new = np.maximum(m, log_wN)
        shrink, w_k = np.exp(m - m_new), np.exp(log_wN - m_new)
        total = total * shrink + w_k
        score *= shrink[:, None]
        r *= w_k[:, None]
        score -= r if U is None else r @ U[k].T
        m = m_new
    return m + np.log(total) - 0.5 * d * np.log(2.0 * np.pi), score / total[:, None]


# -- the score network: forward and backward side by side ----------------------------------------
class Net(NamedTuple):
    """Architecture: sizes (d + dim e(t), widths..., d), activation, time embedding."""

    sizes: tuple
    activation: str = "silu"
    embedding: str = "linear"
    n_frequencies: int = 4

    @classmethod
    def of(cls, mlp):
        """The architecture of an sgm_ref.nn.MLP (whose mlp.params is theta here)."""
        return cls(tuple(mlp.sizes), mlp.activation, mlp.embedding.kind, mlp.embedding.n_frequencies)


def embed(t, kind="linear", n_frequencies=4):
    """e(t) = [t] (linear), [log t] (log), or [log t, sin(w_j log t), cos(w_j log t)]_{j < k},
    w_j = 2^j / 4 (fourier). t (n,) -> (n, dim), float64."""
    t = np.asarray(t, dtype=np.float64)
    if kind == "linear":
        return t[:, None]
    tau = np.log(t)[:, None]
    if kind == "log":
        return tau
    w = 2.0 ** np.arange(n_frequencies) / 4.0
    e = np.empty((len(t), 1 + 2 * n_frequencies))
    e[:, :1], e[:, 1::2], e[:, 2::2] = tau, np.sin(w * tau), np.cos(w * tau)
    return e


def sigmoid(z):
    """s(z) = 1 / (1 + e^{-z}) (in place on one buffer: this is the baseline benchmarks time)."""
    with np.errstate(over="ignore"):  # e^{-z} = inf gives 0, as it should
        e = np.exp(-z)
    e += 1
    return np.reciprocal(e, out=e)


def relu(z):
    return np.maximum(z, 0), (z > 0).astype(z.dtype)  # h = max(z, 0), h' = 1[z > 0]


def silu(z):
    s = sigmoid(z)
    h = z * s  # h = z s(z)
    dh = 1 - s
    dh *= h
    dh += s  # h' = s (1 + z (1 - s)) = s + h (1 - s)
    return h, dh


def tanh(z):
    h = np.tanh(z)
    return h, 1 - h * h  # h' = 1 - tanh^2


def softplus(z):
    return np.logaddexp(0, z), sigmoid(z)  # h = log(1 + e^z), h' = s(z)


ACTIVATIONS = {"relu": relu, "silu": silu, "tanh": tanh, "softplus": softplus}  # z -> (act, act')


def layers(theta, sizes):
    """[(W_l, b_l)]: views, shapes (fan_in, fan_out) and (fan_out,), into a flat vector laid
    out as sgm_ref.nn.MLP.params: W_0 (row-major), b_0, W_1, b_1, ..."""
    out, i = [], 0
    for fi, fo in zip(sizes[:-1], sizes[1:]):
        out.append((theta[i:i + fi * fo].reshape(fi, fo), theta[i + fi * fo:i + (fi + 1) * fo]))
        i += (fi + 1) * fo
    return out


def init_params(net, rng, dtype=np.float64):
    """W_l, b_l ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) layer by layer, W before b (MLP's init)."""
    theta = np.zeros(sum((fi + 1) * fo for fi, fo in zip(net.sizes[:-1], net.sizes[1:])), dtype)
    for W, b in layers(theta, net.sizes):
        bound = 1.0 / np.sqrt(W.shape[0])
        W[...], b[...] = rng.uniform(-bound, bound, W.shape), rng.uniform(-bound, bound, b.shape)
    return theta


def mlp_forward(theta, net, x, t):
    """out = z_L, with h_0 = [x, e(t)], z_l = h_l W_l + b_l, h_{l+1} = act(z_l) for l < L.

    Returns out (n, d) and the tape [(h_l, act'(z_l))] for l < L, then (h_L, None)."""
    h = np.concatenate([x, embed(t, net.embedding, net.n_frequencies).astype(x.dtype)], axis=1)
    *hidden, (W_L, b_L) = layers(theta, net.sizes)
    tape = []
    for W, b in hidden:
        z = h @ W
        z += b
        h_next, dact = ACTIVATIONS[net.activation](z)
        tape.append((h, dact))  # z_l itself is not kept: holding it costs the baseline ~10%
        h = h_next
    tape.append((h, None))
    return h @ W_L + b_L, tape


def mlp_backward(theta, net, tape, g, input_grad=False):
    """dL/dtheta (flat, laid out like theta), and dL/dx if input_grad, from g = dL/dout (n, d):

        dL/dW_l = h_l^T g_l,   dL/db_l = sum_rows g_l,   dL/dh_l = g_l W_l^T,
        g_{l-1} = dL/dh_l * act'(z_{l-1})   (g_L = g)."""
    grad = np.empty_like(theta)
    for l, ((W, _), (dW, db)) in reversed(list(enumerate(zip(layers(theta, net.sizes), layers(grad, net.sizes))))):
        np.matmul(tape[l][0].T, g, out=dW)
        np.sum(g, axis=0, out=db)
        if l > 0 or input_grad:
            g = g @ W.T
        if l > 0:
            g *= tape[l - 1][1]
    return (grad, g[:, :net.sizes[-1]]) if input_grad else grad


def score(theta, net, x, t, process=OU, parameterization="residual"):
    """s_theta(x, t) = out (score), -out / sigma_t (noise) or out - x (residual), out = net(x, t)."""
    out, _ = mlp_forward(theta, net, x, np.broadcast_to(t, (len(x),)))
    sigma = np.sqrt(marginal(np.broadcast_to(t, (len(x),)), process)[1])[:, None]
    return {"score": out, "noise": -out / sigma, "residual": out - x}[parameterization]


# -- denoising score matching (Vincent 2011) ---------------------------------------------------
def sample_times(n, t0, T, rng, distribution="uniform"):
    """t = t0 + (T - t0) u, or log t = log t0 + (log T - log t0) u (log-uniform); u ~ U[0, 1).

    The fast path computes again, inside [t0, T], the few log-uniform draws that rounding
    puts an ulp or a few outside it (exp(log 1e-5) < 1e-5); those differ in their last bits."""
    u = rng.random(n)
    if distribution == "uniform":
        return t0 + (T - t0) * u
    return np.exp(np.log(t0) + (np.log(T) - np.log(t0)) * u)


def dsm_loss(theta, net, x0, t, z, process=OU, parameterization="residual", weighting="none"):
    """L = 1/n sum_i lam_i |s_theta(x_i, t_i) + z_i / sigma_i|^2,  x_i = alpha_i x0_i + sigma_i z_i,

    lam = 1 ("none", Cole & Lu's) or sigma_t^2 ("sigma2"); s from out as in score().
    Backward, with r_i = s_i + z_i / sigma_i: dL/ds_i = 2 lam_i r_i / n, and
    dL/dout = dL/ds (score, residual) or -dL/ds / sigma (noise).
    x0, z (n, d); t (n,). Returns L (float) and dL/dtheta (flat, like theta)."""
    n = len(x0)
    alpha, s2 = marginal(t, process)
    sigma = np.sqrt(s2)[:, None]
    x = (alpha[:, None] * x0 + sigma * z).astype(x0.dtype)
    out, tape = mlp_forward(theta, net, x, t)
    s = out if parameterization == "score" else -out / sigma if parameterization == "noise" else out - x
    r = s + z / sigma  # float64 whatever the network's dtype, as the fast path's kernel
    lam = s2 if weighting == "sigma2" else np.ones(n)
    loss = float(np.sum(lam * np.sum(r * r, axis=1))) / n
    dL_ds = (2.0 / n) * lam[:, None] * r
    dL_dout = -dL_ds / sigma if parameterization == "noise" else dL_ds
    grad = mlp_backward(theta, net, tape, dL_dout.astype(x0.dtype))
    return loss, grad


# -- Adam (Kingma & Ba 2015, Algorithm 1, in torch.optim.Adam's arithmetic) ---------------------
def adam(theta, grad, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, clip_norm=None):
    """One step in place on theta; state starts as {} and keeps k, m, v:

        g <- g min(1, clip_norm / (|g|_2 + 1e-6))    (if clip_norm; torch's clip_grad_norm_)
        g <- g + weight_decay theta                    (coupled L2, not AdamW)
        m <- b1 m + (1 - b1) g,   v <- b2 v + (1 - b2) g^2
        theta <- theta - lr / (1 - b1^k) m / (sqrt(v) / sqrt(1 - b2^k) + eps)

    Returns |g|_2 of the gradient as given (before clipping and weight decay), as Adam.step."""
    k = state["k"] = state.get("k", 0) + 1
    b1, b2 = betas
    g64 = grad.astype(np.float64, copy=False)
    norm = math.sqrt(g64 @ g64)  # |g|_2 accumulated in float64; Python floats keep float32 float32
    g = grad if clip_norm is None else grad * min(1.0, clip_norm / (norm + 1e-6))
    if weight_decay:
        g = g + weight_decay * theta
    m = state["m"] = b1 * state.get("m", 0.0) + (1 - b1) * g
    v = state["v"] = b2 * state.get("v", 0.0) + (1 - b2) * g * g
    theta -= lr / (1 - b1**k) * m / (np.sqrt(v) / math.sqrt(1 - b2**k) + eps)
    return norm


def train_step(theta, net, state, data, batch, rng, t0=1e-3, T=5.0, process=OU,
               parameterization="residual", weighting="none", time_distribution="uniform", **adam_options):
    """One sgm_ref.train.TrainStep: draw indices (with replacement), times, then noise, from
    rng in that order; loss and gradient; one Adam step on theta. Returns the loss."""
    x0 = data[rng.integers(0, len(data), batch)]
    t = sample_times(batch, t0, T, rng, time_distribution)
    z = rng.standard_normal(x0.shape, dtype=x0.dtype)
    loss, grad = dsm_loss(theta, net, x0, t, z, process, parameterization, weighting)
    adam(theta, grad, state, **adam_options)
    return loss


# -- the reverse-time sampler -------------------------------------------------------------------
def euler_maruyama(score, x, grid, rng, process=OU):
    """Euler–Maruyama for the reverse SDE on a decreasing grid T = t_0 > ... > t_N = t0:

        y <- y + DB_k (y / 2 + s(y, t_k)) + sqrt(DB_k) xi_k,   DB_k = int_{t_{k+1}}^{t_k} beta,

    xi_k ~ N(0, I) from rng (the noise integral taken exactly). score(y (n, d), t (n,))."""
    y = x.copy()
    dB = integrated_beta(grid[:-1], grid[1:], process)
    for k, dB_k in enumerate(dB.tolist()):  # Python floats: float32 points stay float32
        s = score(y, np.full(len(y), grid[k]))
        xi = rng.standard_normal(y.shape).astype(y.dtype)
        y = (1.0 + 0.5 * dB_k) * y + dB_k * s + math.sqrt(dB_k) * xi
    return y
