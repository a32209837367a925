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
def affine_noise_step(y, s, rng, a, b, c, xi, limit):
    """y <- a y + b s + c xi in place, xi ~ N(0, I) drawn here (Euler–Maruyama, exponential steps).

    xi (d,) is scratch for one row of noise, of y's dtype; the draws are
    rng.standard_normal(y.shape, dtype=y.dtype) in row-major order, so y ends up bit for
    bit what drawing xi into an (n, d) array first and then updating would give. The
    arithmetic is y's dtype when a, b, c are (pass float32 coefficients for float32 y).

    s is checked as it is used: each row must be finite before that row of y is
    touched. Returns (-1, False) after a full step; otherwise (i, big) with i the first
    row of s holding a NaN or inf (rows of y before i are updated, the rest untouched)
    and big True if y held an entry with |y| >= limit (or non-finite) before this step.
    """
    n, d = y.shape
    big = False
    for i in range(n):
        finite = True
        for j in range(d):
            finite &= np.isfinite(s[i, j])
        if not finite:
            for k in range(i, n):
                for j in range(d):
                    big |= not abs(y[k, j]) < limit
            return i, big
        for j in range(d):
            xi[j] = standard_normal(rng, xi)
        for j in range(d):
            v = y[i, j]
            big |= not abs(v) < limit
            y[i, j] = a * v + b * s[i, j] + c * xi[j]
    return -1, False


@njit(cache=True)
def affine_step(y, s, xi, a, b, c):
    """y <- a y + b s + c xi in place, with the noise xi given (n, d)."""
    n, d = y.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = a * y[i, j] + b * s[i, j] + c * xi[i, j]


@njit(cache=True)
def heun_predict(y_pred, y, s, one_plus_a, a, limit):
    """y_pred <- (1 + a) y + a s: the Euler predictor for the probability-flow ODE.

    one_plus_a is passed rounded to y's dtype, as a is. s is checked as in
    affine_noise_step; returns (-1, False) or (i, big), y untouched.
    """
    n, d = y.shape
    for i in range(n):
        finite = True
        for j in range(d):
            finite &= np.isfinite(s[i, j])
        if not finite:
            big = False
            for k in range(n):
                for j in range(d):
                    big |= not abs(y[k, j]) < limit
            return i, big
        for j in range(d):
            y_pred[i, j] = y[i, j] * one_plus_a + a * s[i, j]
    return -1, False


@njit(cache=True)
def heun_correct(y, s, y_pred, s_pred, c_now, c_next, limit):
    """y <- y + c_now (y + s) + c_next (y_pred + s_pred): Heun's corrector for the ODE.

    s_pred is checked as s in affine_noise_step, with big about y_pred (the points the
    score was called at); returns (-1, False) or (i, big).
    """
    n, d = y.shape
    for i in range(n):
        finite = True
        for j in range(d):
            finite &= np.isfinite(s_pred[i, j])
        if not finite:
            big = False
            for k in range(n):
                for j in range(d):
                    big |= not abs(y_pred[k, j]) < limit
            return i, big
        for j in range(d):
            y[i, j] = y[i, j] + c_now * (y[i, j] + s[i, j]) + c_next * (y_pred[i, j] + s_pred[i, j])
    return -1, False
