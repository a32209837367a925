"""Numba kernels for the MLP: the element-wise pass after each matrix product.

The bias is folded into the matrix product (the layer input carries a column of ones
and the bias is the last row of the weight block), the exponential is NumPy's
vectorised exp, and this kernel fuses the rest into one pass that writes both the
activation and its derivative:

    h = act(z),   dact = act'(z)   (kept for backward)

so the backward pass needs no transcendental function: dL/dz = dL/dh * dact.

The kernels are serial on purpose: the matrix products around them already use every
core through BLAS, and a second thread pool spinning between them (numba's OpenMP
workers) takes cores from BLAS on a small machine.
"""

import numpy as np
from numba import njit

RELU, SILU, TANH, SOFTPLUS = 0, 1, 2, 3
ACTIVATIONS = {"relu": RELU, "silu": SILU, "tanh": TANH, "softplus": SOFTPLUS}


def activation_forward(Z, kind, H, D, want_derivative):
    """H = act(Z), and D = act'(Z) if want_derivative; Z is left unchanged.

    Z, D (n, m) contiguous; H (n, m), may be a strided view (the next layer's input
    without its column of ones). D is also scratch for the exponential.

        relu:     h = max(z, 0),               h' = 1[z > 0]
        silu:     h = z s(z),                  h' = s(z) (1 + z (1 - s(z)))
        tanh:     h = tanh z,                  h' = 1 - h^2
        softplus: h = max(z, 0) + log1p(e^{-|z|}),   h' = s(z)
    with s(z) = 1 / (1 + e^{-z}) the logistic sigmoid.
    """
    with np.errstate(over="ignore"):  # e^{-z} = inf for z < -709 gives s = 0, as it should
        if kind == SILU:
            np.negative(Z, out=D)
            np.exp(D, out=D)
        elif kind == TANH:
            np.tanh(Z, out=D)
        elif kind == SOFTPLUS:
            np.abs(Z, out=D)
            np.negative(D, out=D)
            np.exp(D, out=D)
    _activation_pass(Z, kind, H, D, want_derivative)


@njit(cache=True)
def _activation_pass(Z, kind, H, D, want_derivative):
    """The fused element-wise pass of activation_forward; D holds e^{-z}, tanh z or e^{-|z|}."""
    n, m = Z.shape
    for i in range(n):
        for j in range(m):
            z = Z[i, j]
            if kind == RELU:
                h = z if z > 0 else 0.0
                dh = 1.0 if z > 0 else 0.0
            elif kind == SILU:
                s = 1.0 / (1.0 + D[i, j])
                h = z * s
                dh = s * (1.0 + z * (1.0 - s))
            elif kind == TANH:
                h = D[i, j]
                dh = 1.0 - h * h
            else:
                e = D[i, j]
                h = max(z, 0.0) + np.log1p(e)
                dh = 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
            H[i, j] = h
            if want_derivative:
                D[i, j] = dh
