"""Numba kernels for Adam over one flat parameter vector (used by sgm_ref.optim.Adam).

One fused pass per step does, for every coordinate i, with c the clipping factor,
wd the weight decay, k the step number and d the EMA decay,

    g_i   = c grad_i + wd p_i                              (coupled L2 decay)
    m_i   = b1 m_i + (1 - b1) g_i
    v_i   = b2 v_i + (1 - b2) g_i^2
    p_i   = p_i - step_size m_i / (sqrt(v_i) / sqrt(1 - b2^k) + eps),
            step_size = lr / (1 - b1^k)
    ema_i = d ema_i + (1 - d) p_i

which is the arithmetic of torch.optim.Adam's non-capturable path but for m (torch's
lerp, m + (1 - b1) (g - m), rounds differently by an ulp: sgm_ref.optim); the caller computes
the per-step scalars (c, step_size, sqrt(1 - b2^k)) once. The same pass counts the
coordinates whose new p_i or v_i is not finite, so the caller needs no second pass over
the result to refuse a step that overflowed. The loop is serial on
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

    Returns the number of coordinates whose stored p_i or v_i is NaN or inf (0 for a
    good step).
    """
    # no branch inside the loops, so that each vectorises; with weight_decay = 0 the
    # term adds 0 * p, which can turn a -0.0 gradient into +0.0 but changes no m, v or p.
    # The count is an integer sum of comparisons (x - x != 0 exactly when x is NaN or
    # inf), which vectorises where a floating-point reduction in order would not.
    bad = 0
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
        p_new, v_new = p[i], v[i]  # as stored: a float32 overflow shows only after rounding
        bad += (p_new - p_new != 0.0) | (v_new - v_new != 0.0)
    if want_ema:
        for i in range(p.shape[0]):
            # the stored (rounded) parameter, so the EMA averages what the network sees
            ema[i] = ema_decay * np.float64(ema[i]) + (1.0 - ema_decay) * np.float64(p[i])
    return bad


@njit(cache=True)
def sum_of_squares(x):
    """sum_i x_i^2 accumulated in float64, in a fixed order (same bits on every run and machine).

    Eight partial sums, s_r = sum over i = r (mod 8) in index order, added as
    ((s_0 + s_1) + (s_2 + s_3)) + ((s_4 + s_5) + (s_6 + s_7)); the order is written
    out here, not left to the compiler, so the result does not depend on the vector
    width, and the eight independent sums vectorise (one running sum in index order
    would not: ~4x slower).

    NaN or inf anywhere gives a NaN or inf result; so may finite entries whose squares
    overflow float64 (|x_i| > ~1e154), which the caller must tell apart.
    """
    n = x.shape[0]
    s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
    top = n - n % 8
    for i in range(0, top, 8):
        a0, a1, a2, a3 = np.float64(x[i]), np.float64(x[i + 1]), np.float64(x[i + 2]), np.float64(x[i + 3])
        a4, a5, a6, a7 = np.float64(x[i + 4]), np.float64(x[i + 5]), np.float64(x[i + 6]), np.float64(x[i + 7])
        s0 += a0 * a0
        s1 += a1 * a1
        s2 += a2 * a2
        s3 += a3 * a3
        s4 += a4 * a4
        s5 += a5 * a5
        s6 += a6 * a6
        s7 += a7 * a7
    for i in range(top, n):
        a = np.float64(x[i])
        s0 += a * a
    return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))
