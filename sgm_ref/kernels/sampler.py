"""Numba kernels for the reverse-time samplers' update steps (sgm_ref.samplers).

Serial on purpose: the score call between steps may use BLAS threads, and a second
spinning thread pool would compete with them for the cores.
"""

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
def affine_step(y, s, xi, a, b, c):
    """y <- a y + b s + c xi in place (Euler–Maruyama and exponential-integrator steps)."""
    n, d = y.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = a * y[i, j] + b * s[i, j] + c * xi[i, j]


@njit(cache=True)
def heun_correct(y, s, y_pred, s_pred, c_now, c_next):
    """y <- y + c_now (y + s) + c_next (y_pred + s_pred): Heun's corrector for the ODE."""
    n, d = y.shape
    for i in range(n):
        for j in range(d):
            y[i, j] = y[i, j] + c_now * (y[i, j] + s[i, j]) + c_next * (y_pred[i, j] + s_pred[i, j])
