"""Numba kernels for the reverse-time samplers' update steps (sgm_ref.samplers).

Serial on purpose: the score call between steps may use BLAS threads, and a second
spinning thread pool would compete with them for the cores.

A step draws its noise a block at a time into scratch that stays in L1 and uses it at
once: the noise is never written to an (n, d) array and read back. The arithmetic is
the points' dtype (float32 points: float32 coefficients and float32 operations). The
noise is always numpy's float64 ziggurat, rounded to the points' dtype: numba's float32
ziggurat (rng.standard_normal(dtype=np.float32)) measured 4x slower here, and the
rounded float64 draws are the stream the float32 sampler has always used.
"""

import numpy as np
from numba import njit


@njit(cache=True)
def standard_normal_into(out, rng):
    """Fill a C-contiguous out with N(0, 1) draws from the numpy Generator rng.

    The draws are rng.standard_normal() one after another in row-major order, so out
    equals rng.standard_normal(out.shape).astype(out.dtype) bit for bit and leaves rng
    in the same state. numba compiles numpy's own ziggurat into the loop, which is 3-4x
    faster here than the Generator method called from Python.
    """
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = rng.standard_normal()


@njit(cache=True)
def _score_status(s, y, limit):
    """0 if every entry of s is finite; else 2 if y holds an entry with |y| >= limit (or a
    non-finite one: the points had overflowed, or nearly, before the score call), else 1."""
    sf = s.reshape(-1)
    finite = True
    for e in range(sf.size):  # a branch-free and-reduction: vectorised, one cheap pass
        finite &= np.isfinite(sf[e])
    if finite:
        return 0
    yf = y.reshape(-1)
    for e in range(yf.size):
        if not abs(yf[e]) < limit:
            return 2
    return 1


@njit(cache=True)
def affine_noise_step(y, s, rng, a, b, c, xi, limit):
    """y <- a y + b s + c xi in place, xi ~ N(0, I) drawn here (Euler–Maruyama, exponential steps).

    y and s are C-contiguous (n, d); xi is scratch of y's dtype, any length (a few
    thousand entries: it stays in L1). The noise is drawn xi.size entries at a time and
    used at once, never written to an (n, d) array and read back; the draws are
    rng.standard_normal(y.shape).astype(y.dtype) in row-major order (standard_normal_into),
    so y ends up bit for bit what drawing the noise first and then updating gives. The arithmetic is y's dtype
    when a, b, c are (pass float32 coefficients for float32 y).

    Returns _score_status(s, y, limit): 0 after the step; 1 or 2, y untouched and no
    draw made, if s holds a NaN or inf.
    """
    status = _score_status(s, y, limit)
    if status:
        return status
    yf, sf = y.reshape(-1), s.reshape(-1)
    for start in range(0, yf.size, xi.size):
        yc, sc = yf[start:start + xi.size], sf[start:start + xi.size]  # views: indices from 0, vectorised
        for e in range(yc.size):
            xi[e] = rng.standard_normal()  # rounded to xi's dtype on the store
        for e in range(yc.size):
            yc[e] = a * yc[e] + b * sc[e] + c * xi[e]
    return 0


@njit(cache=True)
def affine_step(y, s, xi, a, b, c):
    """y <- a y + b s + c xi in place with the noise xi (n, d) given: the unfused step
    (the samplers use affine_noise_step; kept for callers that bring their own noise)."""
    n, d = y.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = a * y[i, j] + b * s[i, j] + c * xi[i, j]


@njit(cache=True)
def heun_predict(y_pred, y, s, one_plus_a, a, limit):
    """y_pred <- (1 + a) y + a s: the Euler predictor for the probability-flow ODE.

    one_plus_a is passed rounded to y's dtype, as a is. Returns _score_status(s, y, limit),
    y_pred untouched unless 0. All arrays C-contiguous (n, d).
    """
    status = _score_status(s, y, limit)
    if status:
        return status
    yf, sf, pf = y.reshape(-1), s.reshape(-1), y_pred.reshape(-1)
    for e in range(yf.size):
        pf[e] = yf[e] * one_plus_a + a * sf[e]
    return 0


@njit(cache=True)
def heun_correct(y, s, y_pred, s_pred, c_now, c_next, limit):
    """y <- y + c_now (y + s) + c_next (y_pred + s_pred): Heun's corrector for the ODE.

    Returns _score_status(s_pred, y_pred, limit) (y_pred: the points s_pred was computed
    at), y untouched unless 0. All arrays C-contiguous (n, d).
    """
    status = _score_status(s_pred, y_pred, limit)
    if status:
        return status
    yf, sf, pf, spf = y.reshape(-1), s.reshape(-1), y_pred.reshape(-1), s_pred.reshape(-1)
    for e in range(yf.size):
        yf[e] = yf[e] + c_now * (yf[e] + sf[e]) + c_next * (pf[e] + spf[e])
    return 0
