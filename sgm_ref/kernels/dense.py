"""Numba kernels for the MLP: the element-wise pass after each matrix product.

The matrix products themselves go to BLAS (numpy.matmul into preallocated buffers);
these kernels fuse what sits between them into one pass over the rows, in parallel:

    forward:   z = z + b;  h = act(z);  dact = act'(z)   (the derivative, kept for backward)

so the backward pass needs no transcendental function at all: dL/dz = dL/dh * dact.
"""

import numpy as np
from numba import njit, prange

RELU, SILU, TANH, SOFTPLUS = 0, 1, 2, 3
ACTIVATIONS = {"relu": RELU, "silu": SILU, "tanh": TANH, "softplus": SOFTPLUS}


@njit(inline="always")
def _sigmoid(z):
    # two branches so that exp never overflows
    if z >= 0:
        return 1.0 / (1.0 + np.exp(-z))
    e = np.exp(z)
    return e / (1.0 + e)


@njit(parallel=True, cache=True)
def bias_activation(Z, b, kind, H, D, want_derivative):
    """Z += b (in place, so Z keeps the pre-activation); H = act(Z); D = act'(Z).

    Z, H, D (n, m); b (m,); kind one of RELU, SILU, TANH, SOFTPLUS.

        relu:     h = max(z, 0),               h' = 1[z > 0]
        silu:     h = z s(z),                  h' = s(z) (1 + z (1 - s(z)))
        tanh:     h = tanh z,                  h' = 1 - h^2
        softplus: h = log(1 + e^z),            h' = s(z)
    with s the logistic sigmoid; softplus uses max(z, 0) + log1p(e^{-|z|}).
    """
    n, m = Z.shape
    for i in prange(n):
        for j in range(m):
            z = Z[i, j] + b[j]
            Z[i, j] = z
            if kind == RELU:
                h = z if z > 0 else 0.0
                dh = 1.0 if z > 0 else 0.0
            elif kind == SILU:
                s = _sigmoid(z)
                h = z * s
                dh = s * (1.0 + z * (1.0 - s))
            elif kind == TANH:
                h = np.tanh(z)
                dh = 1.0 - h * h
            else:
                h = max(z, 0.0) + np.log1p(np.exp(-abs(z)))
                dh = _sigmoid(z)
            H[i, j] = h
            if want_derivative:
                D[i, j] = dh


@njit(parallel=True, cache=True)
def add_bias(Z, b):
    """Z += b row by row (the output layer, which has no activation)."""
    n, m = Z.shape
    for i in prange(n):
        for j in range(m):
            Z[i, j] += b[j]


@njit(parallel=True, cache=True)
def multiply_into(G, D):
    """G *= D element-wise: dL/dz = dL/dh * act'(z)."""
    n, m = G.shape
    for i in prange(n):
        for j in range(m):
            G[i, j] *= D[i, j]
