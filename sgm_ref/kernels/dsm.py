"""Numba kernels for denoising score matching: the element-wise work around the network."""

import numpy as np
from numba import njit

SCORE, NOISE, RESIDUAL = 0, 1, 2
PARAMETERIZATION_CODES = {"score": SCORE, "noise": NOISE, "residual": RESIDUAL}


@njit(cache=True, error_model="numpy")
def perturb_into(x0, z, a, sigma, H):
    """H[:, :d] = a_i x0_i + sigma_i z_i: the noised batch, written into the network input."""
    n, d = x0.shape
    for i in range(n):
        for j in range(d):
            H[i, j] = a[i] * x0[i, j] + sigma[i] * z[i, j]


@njit(cache=True, error_model="numpy")
def dsm_residual(out, H, z, sigma, lam, kind, scale, row_loss):
    """Per-row loss lam_i |s_i + z_i / sigma_i|^2 and, in place of out, dL/dout.

    s_i is the score the parameterisation makes of the network output out_i:
    out (score), -out / sigma (noise), -x + out (residual; x = H[:, :d]).
    With L = scale * sum_i lam_i |r_i|^2 and r_i = s_i + z_i / sigma_i,
    dL/ds_i = 2 scale lam_i r_i, and dL/dout_i = dL/ds_i (score, residual) or
    -dL/ds_i / sigma_i (noise).

    Every element is worked in float64 whatever the dtype of out, H and z (numba
    types float32 - float32 as float32: the residual's out - x was rounded to float32,
    a row's loss 2.3e-5 and an entry of dL/dout 4.7e-3 off for a float32 model 1% from
    its target). For noise r_i is (z_i - out_i) / sigma_i: a good model's out_i is near
    z_i, and the difference is then exact where -out_i / sigma_i + z_i / sigma_i, two
    roundings of size |z_i| / sigma_i, lost digits (5.3e-14 of a row, 2.5e-13 of dL/dout
    at 1% off; now 2.9e-16 and 4.1e-16: tests/test_losses.py).
    """
    n, d = out.shape
    for i in range(n):
        inv_sigma = 1.0 / sigma[i]
        acc = 0.0
        for j in range(d):
            # np.float64(), not float(): numba types float() of a float32 as float32
            o = np.float64(out[i, j])
            if kind == NOISE:
                r = (np.float64(z[i, j]) - o) * inv_sigma
            elif kind == RESIDUAL:
                r = (o - np.float64(H[i, j])) + np.float64(z[i, j]) * inv_sigma
            else:
                r = o + np.float64(z[i, j]) * inv_sigma
            acc += r * r
            g = 2.0 * scale * lam[i] * r
            out[i, j] = -g * inv_sigma if kind == NOISE else g
        row_loss[i] = lam[i] * acc
