"""Numba kernels for Adam over one flat parameter vector (used by sgm_ref.optim.Adam).

One fused pass per step does, for every coordinate i, with c the clipping factor,
wd the weight decay, k the step number and d the EMA decay,

    g_i   = c grad_i + wd p_i                              (coupled L2 decay)
    m_i   = b1 m_i + (1 - b1) g_i
    v_i   = b2 v_i + (1 - b2) g_i^2
    p_i   = p_i - step_size m_i / (sqrt(v_i) / sqrt(1 - b2^k) + eps),
            step_size = lr / (1 - b1^k)
    ema_i = d ema_i + (1 - d) p_i

which is the arithmetic of torch.optim.Adam's non-capturable path; the caller computes
the per-step scalars (c, step_size, sqrt(1 - b2^k)) once. The loop is serial on
purpose: it runs between BLAS calls, and a second, spinning thread pool (numba's
OpenMP workers) would take the cores from BLAS on a small machine. Every element is worked
in float64 and stored in the dtype of the arrays, so float32 state stays float32.
"""

import math

import numpy as np
from numba import njit


# error_model="numpy": no zero-division check per element (the denominator is >= eps > 0),
# which is what lets the loop vectorise
@njit(cache=True, error_model="numpy")
def adam_update(
    p, grad, m, v, ema, scale, weight_decay, beta1, beta2, step_size, bias_correction2_sqrt,
    eps, ema_decay, want_ema,
):
    """One Adam step in place on p, m, v (and ema if want_ema); grad is only read.

    p, grad, m, v (n,) of one dtype; ema (n,) of that dtype, or any array if not
    want_ema; the remaining arguments are float64 scalars (see the module docstring).
    """
    # no branch inside the loops, so that each vectorises; with weight_decay = 0 the
    # term adds 0 * p, which can turn a -0.0 gradient into +0.0 but changes no m, v or p
    for i in range(p.shape[0]):
        # np.float64(), not float(): numba types float() of a float32 as float32, which
        # would work float32 state in float32 when compiled (and not without the JIT)
        pi = np.float64(p[i])
        g = np.float64(grad[i]) * scale + weight_decay * pi
        mi = beta1 * np.float64(m[i]) + (1.0 - beta1) * g
        vi = beta2 * np.float64(v[i]) + (1.0 - beta2) * g * g
        m[i] = mi
        v[i] = vi
        p[i] = pi - step_size * mi / (math.sqrt(vi) / bias_correction2_sqrt + eps)
    if want_ema:
        for i in range(p.shape[0]):
            # the stored (rounded) parameter, so the EMA averages what the network sees
            ema[i] = ema_decay * np.float64(ema[i]) + (1.0 - ema_decay) * np.float64(p[i])


@njit(cache=True)
def sum_of_squares(x):
    """sum_i x_i^2 accumulated in float64, in index order (same bits on every run).

    NaN or inf anywhere gives a NaN or inf result; so may finite entries whose squares
    overflow float64 (|x_i| > ~1e154), which the caller must tell apart.
    """
    total = 0.0
    for i in range(x.shape[0]):
        xi = np.float64(x[i])
        total += xi * xi
    return total
