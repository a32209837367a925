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

    Z, D (n, m) contiguous; H (n, m') with m' >= m, C-contiguous: its first m columns
    receive act(Z) (the next layer's input keeps its column of ones after them; passing
    the whole array, not a strided view, keeps the loop vectorisable). D is also scratch
    for the exponential. Returns whether every z was finite: an inf (a product's overflow, or
    the sum of terms that overflowed while the exact z is moderate) or NaN (inf - inf) comes
    out of relu, softplus and tanh finite (0 or +-1), a silently wrong h, so the caller must
    refuse it.

        relu:     h = max(z, 0),               h' = 1[z > 0]
        silu:     h = z s(z),                  h' = s(z) (1 + z (1 - s(z)))
                  (s(z) = 1 / (1 + 1 / e^z), so one exp pass and no negation pass)
        tanh:     h = tanh z,                  h' = 1 - h^2 for |h| <= 1/2, else 1 / cosh^2 z
                  (1 - h^2 alone loses digits as |h| rounds toward 1: 27 ulp at |z| = 2.5,
                  2000 at 5, all of them at 19, 0 for 1.3e-16; float32 z = 9.9 gave 1.2e-7
                  for 1.0e-8. 1 / cosh^2 z is within 3.5 ulp of sech^2 z there in float64
                  (3.42 the worst of 2e7 random z) and 7.8 in float32 (7.71 the worst of every
                  float32 z: NumPy's float32 cosh is itself 1.8 ulp off), 1 - h^2 within 1.3
                  near 0; tests/test_nn.py::test_tanh_derivative_ulp_bounds)
        softplus: h = max(z, 0) + log1p(e^{-|z|}),   h' = s(z)
    with s(z) = 1 / (1 + e^{-z}) the logistic sigmoid.
    """
    # e^z = inf for z > 709 gives s = 1, and 1 / e^z = inf for z < -745 s = 0, as they should
    # (the second warns only without the JIT, in Python arithmetic; so does z - z at z = inf)
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        return activation_forward_unguarded(Z, kind, H, D, want_derivative)


def activation_forward_unguarded(Z, kind, H, D, want_derivative):
    """activation_forward inside the caller's np.errstate(over, divide, invalid="ignore") (one per network
    pass instead of one per layer: each costs a few microseconds)."""
    if kind == SILU:
        np.exp(Z, out=D)
    elif kind == TANH:
        np.tanh(Z, out=D)
        if want_derivative:
            finite = _activation_pass(Z, kind, H, D, False, Z.dtype.type(1.0))  # h = tanh z
            np.cosh(Z, out=D)  # inf beyond |z| = 710 (89 in float32): 1 / inf = 0 below
            _tanh_derivative(H, D, Z.dtype.type(1.0))
            return finite
    elif kind == SOFTPLUS:
        np.abs(Z, out=D)
        np.negative(D, out=D)
        np.exp(D, out=D)
    return _activation_pass(Z, kind, H, D, want_derivative, Z.dtype.type(1.0))


# error_model="numpy": 1 / e^z at e^z = 0 (z < -745) is inf, and s = 1 / (1 + inf) = 0
@njit(cache=True, error_model="numpy")
def _activation_pass(Z, kind, H, D, want_derivative, one):
    """The fused element-wise pass of activation_forward; D holds e^z, tanh z or e^{-|z|}.

    `one` is 1 in the dtype of Z, so that float32 stays float32 (a literal 1.0 would
    make every operation float64 and halve the vector width). One loop per case; the
    few branches left inside (relu's comparison, the derivative flag) are selects or
    loop-invariant, which the compiler vectorises or hoists. Returns whether every z is
    finite (z - z == 0, an and-reduction the compiler vectorises with the rest).
    """
    zero = one - one
    finite = True
    n, m = Z.shape
    for i in range(n):
        z, e, h = Z[i], D[i], H[i]
        if kind == SILU and want_derivative:
            for j in range(m):
                s = one / (one + one / e[j])  # the logistic sigmoid 1 / (1 + e^{-z})
                h[j] = z[j] * s
                e[j] = s * (one + z[j] * (one - s))
                finite &= z[j] - z[j] == zero
        elif kind == SILU:
            for j in range(m):
                h[j] = z[j] / (one + one / e[j])
                finite &= z[j] - z[j] == zero
        elif kind == RELU:
            for j in range(m):
                h[j] = max(z[j], zero)
                if want_derivative:
                    e[j] = one if z[j] > zero else zero
                finite &= z[j] - z[j] == zero
        elif kind == TANH:  # the derivative is activation_forward's (from cosh z)
            for j in range(m):
                h[j] = e[j]
                finite &= z[j] - z[j] == zero
        else:
            for j in range(m):
                ej = e[j]
                h[j] = max(z[j], zero) + np.log1p(ej)
                if want_derivative:
                    e[j] = one / (one + ej) if z[j] >= zero else ej / (one + ej)
                finite &= z[j] - z[j] == zero
    return finite


@njit(cache=True, error_model="numpy")
def _tanh_derivative(H, D, one):
    """D = tanh'(z) from h = tanh z (H's first m columns) and D = cosh z, in place: 1 - h^2
    for |h| <= 1/2, else (1 / cosh z)^2 (the reciprocal first: cosh^2 z overflows past
    |z| = 355, where 1 / cosh^2 z is still 1e-308)."""
    half = one / (one + one)
    n, m = D.shape
    for i in range(n):
        h, e = H[i], D[i]
        for j in range(m):
            r = one / e[j]
            e[j] = one - h[j] * h[j] if abs(h[j]) <= half else r * r


def divide_rows(out, divisor):
    """out[i, j] = out[i, j] / divisor[i] in place, the quotient formed in float64 and rounded
    once into out's dtype (for float32 out, dividing by divisor rounded to float32 would round
    twice). out (n, m) float32 or float64, divisor (n,) float64. NumPy twin:
    np.divide(out, divisor[:, None], out=out, casting="same_kind"), bit for bit, at 0.4-0.5x
    its time in float32 (NumPy's mixed-dtype loop casts through a buffer)."""
    _divide_rows(out, divisor)


@njit(cache=True, error_model="numpy")
def _divide_rows(out, divisor):
    n, m = out.shape
    for i in range(n):
        q = divisor[i]
        for j in range(m):
            out[i, j] = out[i, j] / q  # float32 / float64 is float64; the store rounds once
