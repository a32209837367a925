"""Denoising score matching: value and gradient for a batch.

    L(theta) = 1/n sum_i lambda(t_i) | s_theta(alpha_i x0_i + sigma_i z_i, t_i) + z_i / sigma_i |^2

with alpha_i, sigma_i the forward process's marginal coefficients at t_i and z_i ~ N(0, I).
lambda = 1 ("none") is Cole & Lu's objective: its expectation over t ~ U[t0, T] is
(T - t0)^{-1} int_{t0}^{T} E |s_theta - grad log p_t|^2 dt plus a constant that does not
depend on theta. lambda = sigma_t^2 ("sigma2") is the variance-reduced weighting of
Song et al. Element-wise work: sgm_ref.kernels.dsm; the network: sgm_ref.nn.MLP.

Sources: denoising score matching (Vincent 2011): -z / sigma_t is the score of the
transition density p_{t|0}(x | x0), so the loss is the score-matching loss up to a
constant. The time-weighted objective is Song et al. (2021), eq. 7, with their
lambda(t) proportional to sigma_t^2; with the noise parameterisation s = -eps_theta / sigma_t
that weighting gives |eps_theta - z|^2, Ho et al. (2020)'s L_simple (eq. 14).
"""

import numpy as np

from ._validation import check_count, check_points, check_rng, check_time_range, check_times, fits_in_memory
from .kernels.dsm import PARAMETERIZATION_CODES, dsm_residual, perturb_into
from .score_model import ScoreModel

__all__ = ["dsm_loss", "sample_times", "importance_times", "WEIGHTINGS", "TIME_DISTRIBUTIONS", "TIME_SAMPLINGS"]

WEIGHTINGS = ("none", "sigma2")
TIME_DISTRIBUTIONS = ("uniform", "log-uniform")
# how a training step draws its times: from the objective's distribution itself, or from
# the defensive mixture with importance weights (importance_times)
TIME_SAMPLINGS = ("direct", "defensive")


def sample_times(n, t0, T, rng, distribution="uniform"):
    """Draw n times on [t0, T]: uniform, or log-uniform (uniform in log t).

    From u = rng.random(n): t = t0 + (T - t0) u, or t0 (T / t0)^u, computed as
    exp(log t0 + (log T - log t0) u) (the few draws this rounds outside [t0, T] are
    computed again, to the ulp, inside).

    Returns ndarray of shape (n,), float64, each in [t0, T].
    """
    n, t0, T, rng = _check_time_draw(n, t0, T, rng, distribution)
    with fits_in_memory("n", n, n, per_item=16):
        return _draw_times(n, t0, T, rng, distribution)


def importance_times(n, t0, T, rng, distribution="uniform"):
    """Draw n times from the defensive mixture q = (pi + l) / 2, with weights w = pi / q.

    pi is the objective's time density on [t0, T] (distribution: uniform or log-uniform)
    and l the log-uniform density 1 / (t log(T / t0)). For any f, E_q[w(t) f(t)] =
    E_pi[f(t)]: a loss averaged with these weights has the objective's expectation. With
    lambda = 1 the squared DSM target |z / sigma_t|^2 grows like d / t as t -> 0, so the
    few small times that uniform draws meet carry most of a batch's gradient noise; q
    meets them more often and the weights, 2 / (1 + l / pi) <= 2, shrink them (a defensive
    mixture: the weights stay bounded where q puts little mass; Hesterberg, Technometrics
    37, 1995). For distribution "log-uniform", q = pi and w = 1.

    The draws, in this order: v = rng.random(n), u = rng.random(n); t = the inverse CDF of
    pi at u where v < 1/2, else t0 (T / t0)^u.

    Returns (t, w), each ndarray of shape (n,), float64.
    """
    n, t0, T, rng = _check_time_draw(n, t0, T, rng, distribution)
    with fits_in_memory("n", n, n, per_item=40):
        return _draw_importance_times(n, t0, T, rng, distribution)


def _check_time_draw(n, t0, T, rng, distribution):
    """The checked arguments of sample_times and importance_times."""
    n = check_count(n, "n")
    t0, T = check_time_range(t0, T)
    rng = check_rng(rng)
    if not isinstance(distribution, str) or distribution not in TIME_DISTRIBUTIONS:
        raise ValueError(f"distribution must be one of {TIME_DISTRIBUTIONS}, got {distribution!r}")
    return n, t0, T, rng


def _draw_importance_times(n, t0, T, rng, distribution):
    """importance_times without its checks."""
    v = rng.random(n)
    u = rng.random(n)
    # log(T / t0): the difference of logs cancels for T close to t0 (T / t0 = 1 + 2e-10
    # lost 6 digits of the weights), where log1p of the exact T - t0 does not
    span = np.log(T) - np.log(t0) if T > 2.0 * t0 else np.log1p((T - t0) / t0)
    log_uniform = _into_range(np.exp(np.log(t0) + span * u), u, t0, T)
    if distribution == "log-uniform":
        return log_uniform, np.ones(n)
    t = np.where(v < 0.5, t0 + (T - t0) * u, log_uniform)
    # pi / q = 2 / (1 + l / pi) with l / pi = (T - t0) / (t log(T / t0)). t span overflows for
    # T ~ 1e308 (the weight read 2 for 1.998) and loses digits as a subnormal for t ~ 1e-318:
    # there, as 2 s / (1 + s) with s = pi / l = (t / (T - t0)) span, and 2 / (1 + 1 / s) where
    # s > 1 (s = inf there gives 2). Elsewhere the first form, whose bits training has used
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        ts = t * span
        s = t / (T - t0) * span
        edge = np.where(s <= 1.0, 2.0 * s / (1.0 + s), 2.0 / (1.0 + 1.0 / s))
        usual = 2.0 / (1.0 + (T - t0) / ts)
    return t, np.where(np.isfinite(ts) & (ts >= np.finfo(np.float64).tiny), usual, edge)


def _draw_times(n, t0, T, rng, distribution):
    """sample_times without its checks (the training step validated them once)."""
    u = rng.random(n)
    if distribution == "uniform":
        # never outside [t0, T]: t0 at u = 0, and at u = 1 - 2^-53 at most T (none of 1.5e8
        # random float64 pairs gave more, nor any pair of normal float16s at u = 1 - 2^-11)
        return t0 + (T - t0) * u
    return _into_range(np.exp(np.log(t0) + (np.log(T) - np.log(t0)) * u), u, t0, T)


def _into_range(t, u, t0, T):
    """Log-uniform draws t = exp(log t0 + span u) of u, those outside [t0, T] computed again inside, in place.

    The roundings of log t0, log T and the sum put some t outside [t0, T]: exp(log 1e-5)
    is 2 ulps below 1e-5, so u = 0 gave a t below t0; exp(log 10) = 10.000000000000002, so
    u near 1 gave a t past EDM(t_max=10)'s horizon, which exact_score_loss refused. With
    |log t0| large and T close to t0 it is hundreds of ulps (t0 = 1e-300, T = t0 (1 + 1e-12):
    5.6% of the draws, up to 282 ulps). Those t are computed again as t0 exp(s u) for u < 1/2
    and T exp(-s (1 - u)) above (1 - u exact), s = log(T / t0) to full precision: t0 at
    u = 0, within an ulp of t0 (T / t0)^u near either end, and put in [t0, T] where that ulp
    crosses it. Every draw already inside keeps its bits, so training runs keep their numbers.
    """
    if t.min() >= t0 and t.max() <= T:  # nearly always (2 us at n = 256)
        return t
    outside = (t < t0) | (t > T)
    ratio = T / t0
    span = np.log1p((T - t0) / t0) if ratio <= 2.0 else np.log(ratio) if np.isfinite(ratio) else np.log(T) - np.log(t0)
    v = u[outside]
    low = v < 0.5
    t[outside] = np.clip(np.where(low, t0, T) * np.exp(np.where(low, span * v, -span * (1.0 - v))), t0, T)
    return t


def dsm_loss(model, x0, t, z, weighting="none", grad=True, grad_params=None):
    """Denoising score matching loss of a ScoreModel on one batch, and its gradient.

    Parameters
    ----------
    model : ScoreModel
    x0 : ndarray, shape (n, d), the model's dtype
        Clean data.
    t : ndarray, shape (n,) (or a scalar), each in (0, process.t_max]
    z : ndarray, shape (n, d), the model's dtype
        Standard normal noise; xt = alpha_t x0 + sigma_t z.
    weighting : {"none", "sigma2"}
        lambda(t) = 1 (the paper's) or sigma_t^2.
    grad : bool
        Also compute dL/dtheta (flat, like model.params).
    grad_params : ndarray, shape (n_params,), optional
        Buffer the gradient is written into (no allocation); not model.params itself.

    Returns
    -------
    value : float
    gradient : ndarray of shape (n_params,), or None if grad is False

    Raises
    ------
    ValueError
        For a model that is not a ScoreModel, inputs of the wrong shape or dtype,
        non-finite entries, t outside (0, t_max], an unknown weighting, a grad not True
        or False, a bad grad_params buffer (or one sharing memory with model.params); or
        if the loss or its gradient overflows (the message gives the t and sigma_t that
        cause it and the sizes of x0 and the parameters: the loss, summed in float64,
        needs |z| / sigma_t well below sqrt(max / d), ~1e154; the gradient, in the
        model's dtype, lambda |z| / sigma_t (/ sigma_t^2 for "noise") well below its max,
        3.4e38 in float32; where z / sigma_t is far below those, it names what overflowed
        instead: the noised batch, the network's output, the model's score or the
        backward pass); a NaN or inf in model.params is named as such (the first one,
        its index and layer), not as an overflow.
    """
    if not isinstance(model, ScoreModel):  # an MLP or a score function met an AttributeError ('network')
        raise ValueError(f"model must be an sgm_ref.ScoreModel (a network with its process and parameterization), "
                         f"got {type(model).__name__}; pass ScoreModel(network, process, parameterization)")
    net = model.network
    given = {"x0": x0, "z": z}
    x0 = check_points(x0, "x0", d=net.d)
    n = x0.shape[0]
    if n == 0:
        raise ValueError("x0 must have at least one row (the loss is a mean over the batch)")
    z = check_points(z, "z", d=net.d)
    if z.shape != x0.shape:
        raise ValueError(f"z must have the shape of x0, {x0.shape}; got {z.shape}")
    for name, arr in (("x0", x0), ("z", z)):
        if arr.dtype != net.dtype:
            # the dtype passed: integers were promoted to float64 by check_points
            raise ValueError(f"{name} must have dtype {net.dtype.name} (the model's), got "
                             f"{np.asarray(given[name]).dtype}; pass np.asarray({name}, dtype=np.{net.dtype.name})")
    t = np.broadcast_to(check_times(t, n=n, T=model.process.t_max), (n,))
    if np.any(t <= 0):
        raise ValueError("t must be > 0 (sigma_0 = 0 makes z / sigma_t infinite)")
    if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    if not isinstance(grad, (bool, np.bool_)):  # grad="no" was read as True, grad=None as False
        raise ValueError(f"grad must be True or False, got {grad!r}")
    if grad_params is not None and (not isinstance(grad_params, np.ndarray) or grad_params.shape != (net.n_params,)
                                    or grad_params.dtype != net.dtype or not grad_params.flags.c_contiguous
                                    or not grad_params.flags.writeable):
        raise ValueError(f"grad_params must be a contiguous writeable ndarray of shape ({net.n_params},) and dtype "
                         f"{net.dtype.name} (the gradient is written into it)")
    if grad_params is not None and np.may_share_memory(grad_params, net.params):
        # the backward pass reads W_l after writing the gradient of the layers above it
        raise ValueError("grad_params must not share memory with model.params (the backward pass reads the "
                         "weights while it writes the gradient); pass a separate buffer")
    with np.errstate(over="ignore", invalid="ignore"):
        value, gradient = _dsm_loss(model, x0, t, z, weighting, grad, grad_params)
    # one number, and n_params against the O(n n_params) backward pass
    if not np.isfinite(value) or (grad and not np.all(np.isfinite(gradient))):
        _overflow(model, x0, t, z, "loss" if not np.isfinite(value) else "gradient", weighting)
    return value, gradient


def _overflow(model, x0, t, z, what, weighting):
    """Raise for a non-finite loss or gradient of finite inputs, naming the sizes that cause it.

    The loss, sum_j lambda r_j^2 with r = s + z / sigma_t, is summed in float64 whatever
    the network's dtype: r^2 overflows when |z| / sigma_t nears sqrt(max / d), ~1e154. The
    gradient is stored in the network's dtype, starting from dL/dout = (2 / n) lambda r
    (over sigma_t again for "noise"): lambda |z| / sigma_t (or / sigma_t^2) must stay well
    below the dtype's max (3.4e38 in float32; a float32 model at t = 1e-50 with lambda =
    sigma_t^2 is fine, with lambda = 1 it is not).

    Those are the messages where z / sigma_t is the cause. Where it is not, the network
    is, and the message says so: its output overflowing its dtype on the noised batch (a
    float32 model with parameters ~1e20 read "the loss overflows float64 ... |z| / sigma_t
    reaches 2.92 (it must stay well below 9.48e+153) ... Use larger t"), the model's score
    s outgrowing z / sigma_t, or the backward pass overflowing where dL/dout is in range.
    Worked out again here, on the error path only (one forward pass).

    A NaN or inf in the parameters themselves (written into params directly: set_params
    and load refuse them) is no overflow and no rescaling mends it: the network's own
    message names the first one (MLP._overflow), prefixed "dsm_loss: ". It read "the loss
    overflows float64 ... |z| / sigma_t reaches 2.92 ... the largest |parameter| nan".
    """
    net = model.network
    if not np.all(np.isfinite(net.params)):
        try:
            net._overflow(what)  # raises, naming the first non-finite parameter and its layer
        except ValueError as error:
            raise ValueError(f"dsm_loss: {error}") from None
    a, s2 = model.process._coefficients(t, t.shape[0])
    top_x0, top_param = float(np.max(np.abs(x0))), float(np.max(np.abs(net.params)))
    sizes = (f"the largest |x0| entry is {top_x0:.3g} and the largest |parameter| {top_param:.3g}. "
             "Use larger t, or rescale x0 or the parameters toward order 1")
    noise = model.parameterization == "noise"
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        sigma = np.sqrt(s2)
        # the network's input as perturb_into makes it (float64 arithmetic, rounded once to the dtype)
        x = (a[:, None] * x0 + sigma[:, None] * z).astype(net.dtype)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"dsm_loss: the {what} is not finite: the noised batch x_t = alpha_t x0 + sigma_t z "
                             f"overflows {net.dtype.name}; the largest |x0| entry is {top_x0:.3g}: rescale x0 toward "
                             "order 1")
        try:
            out = net.forward(x, t)
        except ValueError:  # its output overflows its dtype: neither t nor z / sigma_t is the cause
            raise ValueError(
                f"dsm_loss: the {what} is not finite: the network's output overflows {net.dtype.name} on the noised "
                f"batch x_t = alpha_t x0 + sigma_t z (largest |x_t| entry {float(np.max(np.abs(x))):.3g}); the "
                f"largest |x0| entry is {top_x0:.3g} and the largest |parameter| {top_param:.3g}: rescale x0 or the "
                "parameters toward order 1") from None
        out = out.astype(np.float64)
        target = z / sigma[:, None]  # float64
        score = out if model.parameterization == "score" else -out / sigma[:, None] if noise else out - x
        lam = s2 if weighting == "sigma2" else np.ones_like(s2)
        if what == "loss":
            i = int(np.argmin(s2))
            ratio = float(np.max(np.abs(z))) / sigma[i] if sigma[i] > 0 else np.inf
            limit = float(np.sqrt(np.finfo(np.float64).max / net.d))
            if ratio >= _NOT_THE_CAUSE * limit:
                raise ValueError(
                    f"dsm_loss: the loss overflows float64. At the smallest t = {float(t[i]):.3g}, sigma_t = "
                    f"{float(sigma[i]):.3g} and |z| / sigma_t reaches {ratio:.3g} (it must stay well below "
                    f"{limit:.3g} = sqrt(max / d)); " + sizes)
            # z / sigma_t far below its limit: the model's score s(x_t, t) is what overflows
            row = np.max(np.abs(score), axis=1)
            j = int(np.argmax(np.where(np.isnan(row), np.inf, row)))
            raise ValueError(
                f"dsm_loss: the loss overflows float64: the model's score s(x_t, t) {_reaches(row[j])} at "
                f"t = {float(t[j]):.3g} (|s + z / sigma_t| must stay well below {limit:.3g} = sqrt(max / d); "
                f"|z| / sigma_t stays below {ratio:.3g}); " + sizes)
        factor = lam * np.max(np.abs(z), axis=1) / sigma / (sigma if noise else 1.0)
        # dL/dout itself, (2 / n) lambda r (/ sigma_t for "noise"), r = s + z / sigma_t
        grad_out = 2.0 / t.shape[0] * lam[:, None] * (score + target) / (sigma[:, None] if noise else 1.0)
    big = float(np.finfo(net.dtype).max)
    i = int(np.argmax(np.where(np.isnan(factor), np.inf, factor)))
    if factor[i] >= _NOT_THE_CAUSE * big:
        raise ValueError(
            f"dsm_loss: the gradient overflows {net.dtype.name}. At t = {float(t[i]):.3g}, sigma_t = "
            f"{float(sigma[i]):.3g} and lambda |z| / sigma_t{'^2' if noise else ''} reaches {float(factor[i]):.3g} "
            f"(it must stay well below {big:.3g}, the largest {net.dtype.name}); " + sizes)
    # lambda |z| / sigma_t far below the dtype's max: the model's score, or the backward pass, overflowed
    top = float(np.max(np.abs(grad_out)))
    cause = (f"the model's score s(x_t, t), which {_reaches(np.max(np.abs(score)))}, makes dL/dout "
             f"{_reaches(top)}" if not top < big else
             f"dL/dout reaches {top:.3g} and the backward pass through the network multiplies it by the "
             "activations and weights")
    raise ValueError(f"dsm_loss: the gradient overflows {net.dtype.name}, though lambda |z| / "
                     f"sigma_t{'^2' if noise else ''} stays below {float(factor[i]):.3g}: {cause}; " + sizes)


def _reaches(value):
    """'reaches 1.2e+40', or 'overflows float64' for a value that did."""
    value = float(value)
    return f"reaches {value:.3g}" if np.isfinite(value) else "overflows float64"


# z / sigma_t (or lambda |z| / sigma_t for the gradient) below this fraction of its limit cannot
# make the loss (the gradient) overflow: the network's score or backward pass did (_overflow)
_NOT_THE_CAUSE = 1e-3


def _dsm_loss(model, x0, t, z, weighting, grad, grad_params, coefficients=None, weights=None):
    """dsm_loss without input checks (the training loop's hot path).

    coefficients: (alpha_t, sigma_t^2) if the caller has them (the training step, whose
    times lie in [t0, T] by construction, skips the process's check of t). weights: a
    factor per row on lambda (the importance weights of importance_times)."""
    net = model.network
    n = x0.shape[0]
    a, s2 = model.process._coefficients(t, n) if coefficients is None else coefficients
    sigma = np.sqrt(s2)
    lam = s2 if weighting == "sigma2" else np.ones(n)
    if weights is not None:
        lam = lam * weights
    ws = net._workspace(n)
    H0 = ws.H[0]
    perturb_into(x0, z, a, sigma, H0)
    net.embedding(t, H0[:, net.d:-1])
    net._tape = ws
    out = net._run(ws, tape=grad)
    row_loss = np.empty(n)
    dsm_residual(out, H0, z, sigma, lam, PARAMETERIZATION_CODES[model.parameterization], 1.0 / n, row_loss)
    value = float(np.sum(row_loss)) / n
    if not grad:
        return value, None
    if grad_params is None:
        grad_params = np.empty(net.n_params, dtype=net.dtype)
    net._backward(ws, out, grad_params, input_grad=False)
    ws.has_tape = False  # out now holds dL/dout, not the output
    return value, grad_params
