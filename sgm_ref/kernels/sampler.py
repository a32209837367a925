"""Numba kernels for the reverse-time samplers' update steps (sgm_ref.samplers).

Serial on purpose: the score call between steps may use BLAS threads, and a second
spinning thread pool would compete with them for the cores.

A step works row by row so that the row of s, of y and of the fresh noise stay in L1:
the noise is never written to an (n, d) array and read back. It runs in the points'
dtype: float64 points take numpy's float64 ziggurat and float64 arithmetic, float32
points its float32 ziggurat (rng.standard_normal(..., dtype=float32), half the random
bits per draw) and float32 arithmetic with float32 coefficients.
"""

import numpy as np
from numba import njit, types
from numba.extending import overload


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


def standard_normal(rng, like):
    """One N(0, 1) draw in the dtype of the array `like`: rng.standard_normal(dtype=like.dtype).

    float64 takes numpy's float64 ziggurat, float32 its float32 one (which consumes 32
    random bits per draw on its fast path instead of 64). This Python body is what runs
    with numba's JIT disabled; compiled code gets the overload below.
    """
    return like.dtype.type(rng.standard_normal(dtype=like.dtype))


@overload(standard_normal)
def _standard_normal_compiled(rng, like):
    if like.dtype == types.float32:
        return lambda rng, like: rng.standard_normal(dtype=np.float32)
    return lambda rng, like: rng.standard_normal()


@njit(cache=True)
def standard_normal_fill(out, rng):
    """out <- rng.standard_normal(out.shape, dtype=out.dtype) for a C-contiguous out, bit for bit.

    For float64 this is standard_normal_into; for float32 the draws come from the float32
    ziggurat (the noise of the samplers' float32 steps), not rounded float64 draws.
    """
    flat = out.reshape(-1)
    for i in range(flat.size):
        flat[i] = standard_normal(rng, flat)


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
    rng.standard_normal(y.shape, dtype=y.dtype) in row-major order, so y ends up bit for
    bit what drawing the noise first and then updating gives. The arithmetic is y's dtype
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
            xi[e] = standard_normal(rng, xi)
        for e in range(yc.size):
            yc[e] = a * yc[e] + b * sc[e] + c * xi[e]
    return 0


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
