"""Numba kernels for the exact Gaussian-mixture oracle at time t (one t per row).

For component k at time t (a = alpha_t, s2 = sigma_t^2) the covariance is
U_k diag(v_k) U_k^T with v_k = a^2 lam_k + s2, so with y = U_k^T (x - a mu_k)

    log N_k(x) = -1/2 (sum_j y_j^2 / v_kj + sum_j log v_kj + d log 2 pi),
    grad log N_k(x) = -U_k (y / v_k),

and the mixture combines them by log-sum-exp with responsibilities pi_k(x).
Diagonal and identity covariances have U_k = I and need no matrix products. The
diagonal kernel runs its rows in parallel (no BLAS call sits inside the oracle there;
rows are independent, so the result does not depend on the thread count). Callers
that alternate it with BLAS work (a network's forward pass in sgm_ref.metrics) pay a
thread hand-over per alternation, once per block of points, not per point. Full
covariances at small d (d <= 6, GaussianMixture's _DIRECT_MAX_DIM) take
full_mixture_direct, parallel over rows with the projections U_k^T x in the kernel;
above, a block of rows is two BLAS products around the serial full-covariance kernel
(see its docstring), and GaussianMixture runs blocks on several Python threads with
OpenBLAS on one thread meanwhile (sgm_ref._threads.run_blocks), so the result does not
depend on the thread count either. Tied covariances run the same way: a block of rows is
rotated into the shared eigenbasis, through diagonal_mixture_serial, and back. Where
NumPy's BLAS cannot be set at run time (not an OpenBLAS, or not Linux), the blocks, of
their former size, run in turn on that BLAS's threads, whose count may change the
products' last bits.

Speed. numba has no vector exp or log (without Intel's SVML), and a libm call per
(row, component) was most of the time at small d. The kernels therefore run rows in
blocks with the loop over rows innermost, so that it vectorises, take the log-sum-exp
in two passes (the maximum first, then exactly one exp per pair) and use the branch-free
exp_nonpositive and log_normal below, each within 1 ulp of libm's (NumPy's) value;
results differ from a libm-based evaluation in their last bits only.

Accuracy with float32 points. The quadratic forms, log-determinants and log-sum-exp
are accumulated in float64 whatever the input dtype, but the matrix products of the
tied path and of the full path above d = 6 are float32 (at d <= 6 the full path
projects in float64, from the float32 points and the float64 eigenbases). The means,
variances and centre c stay float64, and x - a c is formed in float64 and rounded once,
so means far from 0 cost no digits. Each projection U_k^T (x - a c) is rounded to about
u |x - a c| (u = 2^-24 = 6e-8), and the score divides it by the variances v, so the
error grows with kappa_t = max v / min v, the condition number of a component
covariance at time t. The rounding acts like moving x by about u sqrt(d) |x - a c| (within
a few float32 ulps of x where |x - a c| <= |x|), so per row, with
m = max_k |x - a mu_k| and v_min the smallest variance at t,

    |s32 - s64| < u ((32 + kappa_t) |s64| + 4 sqrt(d) (|x - a c| / v_min) (1 + m^2 / v_min)),
    |log p32 - log p64| < u ((32 + kappa_t) (1 + |log p64|) + 4 sqrt(d) |x - a c| m / v_min)

(tests/test_targets_float32.py pins both). Where the means lie within their components'
spread of c, x - a c is as small as x - a mu_k, and then |s32 - s64| / |s64| is about
u sqrt(kappa_t) typically and below u (32 + kappa_t), |log p32 - log p64| below
u (32 + kappa_t) (1 + |log p|). Measured for eigenvalues from 1e-4 to 1, means N(0, I),
K in {2, 4, 8}, d in {8, 32, 64}, points drawn from p_t: at t = 0 (kappa = 1e4) median
6e-6, max 2.4e-4; at t = 1e-3 (kappa = 480) median 1.5e-6, max 1.6e-5; at t >= 0.1
(kappa <= 5.5) median 2e-7, max 1e-6. Not "about 1e-7": for ill-conditioned
covariances near t = 0, use float64 points (the float32 oracle is 1.2-2.5x faster).
Nor is the relative error bounded by kappa_t alone: for modes far apart beside their
spread, x - a c is far larger than x - a mu_k near a mode, and for two components at
(+-1000, 0, ...) with eigenvalues in [0.5, 1] (kappa_t < 2) the score of 400 points drawn
from p_0 is up to 2.8e-4 off (relative) in d = 2 (tied) and 1.6e-4 in d = 8 (full), 140
and 80 times u (32 + kappa_t); the maximum grows with the number of points (2.5e-3 over
20,000 with other covariances). Use float64 points for well-separated modes too. The
bound above holds there but is loose by orders of magnitude (its m^2 is the far mode's,
whose posterior weight is negligible).
The diagonal, spherical and identity paths have no matrix product (about u relative).
"""

import numba
import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic

LOG_2PI = float(np.log(2.0 * np.pi))

# error_model="numpy" on every kernel: the variances divided by are > 0 by construction,
# and numba's default per-division zero check would keep the loops from vectorising.


# exp(z) for z <= 0, vectorisable (numba has no vector exp without Intel's SVML, and a
# scalar libm call per (row, component) was most of the time at small d):
#   z = n ln2 + r, |r| <= ln2 / 2 (Cody-Waite: n * LN2_HI is exact),
#   exp(r) = 1 + r + r^2 (1/2! + r/3! + ... + r^11/13!) (Taylor; the remainder is below
#   r^14 / 14! < 5e-18 relative), exp(z) = exp(r) 2^(n - n//2) 2^(n//2), the two powers of
#   two built from their bits so that each is a normal number down to z = -1400 (the
#   product rounds once into the subnormal range, or to 0). z < -1400 and NaN give 0.
# Measured against np.exp over 6e5 points in [-800, 0]: at most 1 ulp apart, 11 % of
# them by 1 ulp, none in the normal range by more (tests/test_kernels_mixture.py).
_LOG2E = 1.4426950408889634
_ROUND = 6755399441055744.0  # 1.5 * 2^52: (u + _ROUND) - _ROUND rounds u to an integer
# ln 2 = _LN2_HI + _LN2_LO (Cody-Waite): _LN2_HI is ln 2 with the low 21 bits of its
# mantissa zero, so n * _LN2_HI is exact for |n| < 2^21 (here |n| <= 2020); _LN2_LO the rest
# (tests/test_kernels_mixture.py checks both against mpmath)
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
_C = tuple(1.0 / float(np.prod(np.arange(1, k + 1, dtype=np.float64))) for k in range(2, 14))
_C2, _C3, _C4, _C5, _C6, _C7, _C8, _C9, _C10, _C11, _C12, _C13 = _C


@intrinsic
def _float_from_bits(typingctx, bits):
    """The float64 whose IEEE-754 bits are the int64 bits (np.int64(b).view(np.float64))."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.int64), codegen


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def exp_nonpositive(z):
    """exp(z) for z <= 0 within 1 ulp of the correctly rounded value (the comment above);
    exp(0) = 1 exactly, z < -1400 and NaN give 0. Scalar, inlined into loops that LLVM
    vectorises (it is branch-free and calls nothing). fastmath contract: multiply-adds
    may be fused (the rounding of n and r does not depend on it beyond the last bit)."""
    u = z if z > -1400.0 else -1400.0  # also NaN -> -1400 -> 0
    nf = (u * _LOG2E + _ROUND) - _ROUND
    r = (u - nf * _LN2_HI) - nf * _LN2_LO
    p = _C13
    p = p * r + _C12
    p = p * r + _C11
    p = p * r + _C10
    p = p * r + _C9
    p = p * r + _C8
    p = p * r + _C7
    p = p * r + _C6
    p = p * r + _C5
    p = p * r + _C4
    p = p * r + _C3
    p = p * r + _C2
    e = 1.0 + (r + r * r * p)
    n = np.int64(nf)
    half = n >> 1
    return (e * _float_from_bits((n - half + 1023) << 52)) * _float_from_bits((half + 1023) << 52)


@intrinsic
def _bits_from_float(typingctx, value):
    """The int64 holding the IEEE-754 bits of the float64 value (np.float64(v).view(np.int64))."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


if numba.config.DISABLE_JIT:
    # numba's intrinsics cannot run as Python; with the JIT off (tests/test_nojit.py runs
    # the kernels' source as plain Python, which looks these names up when called) the
    # same bit casts are NumPy views
    def _float_from_bits(bits):  # noqa: F811
        return np.int64(bits).view(np.float64)

    def _bits_from_float(value):  # noqa: F811
        return np.float64(value).view(np.int64)


# log(v) for normal v > 0 (the callers never pass 0, subnormals, inf or NaN):
#   v = 2^k m with m in [sqrt(2)/2, sqrt(2)), f = m - 1, s = f / (2 + f), z = s^2 <= 0.0295,
#   log(1 + f) = 2 atanh(s) = 2 s + s R(z), R(z) = sum_{j>=1} 2 z^j / (2 j + 1)
# (Taylor; ten terms: the remainder is below z^11 / 23 < 1e-18 relative), and since
# 2 s = f - s f = f - f^2/2 + s f^2/2 exactly, with h = f^2 / 2,
#   log v = k ln2_hi - ((h - (s (h + R) + k ln2_lo)) - f),
# summed from the small terms up so that f, the largest, is added last. Within 1 ulp of
# np.log (tests/test_kernels_mixture.py).
_R = tuple(2.0 / (2 * j + 1) for j in range(1, 11))
_R1, _R2, _R3, _R4, _R5, _R6, _R7, _R8, _R9, _R10 = _R
_MANTISSA = 0x000FFFFFFFFFFFFF
_ONE_BITS = 0x3FF0000000000000
# added to the mantissa, carries into bit 52 iff the mantissa is at least sqrt(2)'s
_SQRT2_CARRY = (1 << 52) - (int(np.array(np.sqrt(2.0)).view(np.int64)) & 0x000FFFFFFFFFFFFF)
_BIT52 = 0x0010000000000000
_MIN_NORMAL = 2.2250738585072014e-308
_MAX_FLOAT = 1.7976931348623157e308


@njit(cache=True, error_model="numpy", fastmath={"contract"})
def log_normal(v):
    """log(v) for a normal, finite v > 0, within 1 ulp (the comment above); branch-free,
    calls nothing, so the loops it is inlined into vectorise. Not for 0, subnormals,
    inf or NaN (the callers' variances and their group products are normal)."""
    bits = _bits_from_float(v)
    mant = bits & _MANTISSA
    carry = (mant + _SQRT2_CARRY) & _BIT52
    k = (bits >> 52) - 1023 + (carry >> 52)
    f = _float_from_bits(mant | (carry ^ _ONE_BITS)) - 1.0
    s = f / (2.0 + f)
    dk = np.float64(k)
    z = s * s
    r = _R10
    r = r * z + _R9
    r = r * z + _R8
    r = r * z + _R7
    r = r * z + _R6
    r = r * z + _R5
    r = r * z + _R4
    r = r * z + _R3
    r = r * z + _R2
    r = r * z + _R1
    r = r * z
    hfsq = 0.5 * f * f
    return dk * _LN2_HI - ((hfsq - (s * (hfsq + r) + dk * _LN2_LO)) - f)


@njit(cache=True, error_model="numpy")
def _log_rows(v, out, m):
    """out[:m] = log(v[:m]): log_normal in a loop that vectorises, then np.log (libm) for
    the rare v outside the normal range (0, subnormal, inf; log_normal is not for them)."""
    for i in range(m):
        out[i] = log_normal(v[i])
    for i in range(m):
        if not (_MIN_NORMAL <= v[i] <= _MAX_FLOAT):
            out[i] = np.log(v[i])


@njit(cache=True)
def _block_rows(width):
    """Rows per block of the row-vectorised kernels: buffers of width x rows numbers stay
    within about 32 KB (L1), from 16 to 256 rows, a multiple of 8."""
    return max(16, min(256, 4096 // max(width, 1)) // 8 * 8)


@njit(parallel=True, cache=True, error_model="numpy")
def diagonal_mixture(x, a, s2, logw, mu, lam, identity, want_score, logp, score):
    """Log-density and score of sum_k w_k N(a_i mu_k, diag(a_i^2 lam_k + s2_i)) at each row.

    x (n, d) float64 or float32; a, s2 (n,), logw (K,), mu and lam (K, d) float64 (a float32
    x is widened: the sums are float64 and the results rounded once to its dtype);
    identity: lam is all ones (v is one number per row). Writes logp (n,) and, if
    want_score, score (n, d).

    Rows go in blocks of B (the loops over rows innermost, so that they vectorise; each
    row's sums run over j and k in the same order as a row-at-a-time loop would), in
    two passes over the components: the log-weights l_k = log w_k - (q_k + log det_k) / 2
    into a (K, B) buffer and their maximum m, then e_k = exp(l_k - m) (one exp per pair,
    exp_nonpositive), total = sum_k e_k, log p = m + log(total) - d log(2 pi) / 2 and
    score = -sum_k e_k (x - a mu_k) / v_k / total.
    """
    n, d = x.shape
    K = mu.shape[0]
    B = _block_rows(max(K, d))
    n_blocks = (n + B - 1) // B
    for blk in prange(n_blocks):
        _diagonal_block(x, a, s2, logw, mu, lam, identity, want_score, logp, score, blk * B, B)


# nogil: the tied-covariance oracle runs blocks of rows on several Python threads
# (sgm_ref._threads.run_blocks), each with its rotations on one BLAS thread
@njit(cache=True, nogil=True, error_model="numpy")
def diagonal_mixture_serial(x, a, s2, logw, mu, lam, identity, want_score, logp, score):
    """diagonal_mixture on the calling thread alone (its blocks in turn), the same bits.

    Each row's arithmetic is the same whichever block, thread or call it falls in, so a
    caller may hand it any slice of rows (with the matching slices of a, s2, logp, score).
    """
    n, d = x.shape
    K = mu.shape[0]
    B = _block_rows(max(K, d))
    n_blocks = (n + B - 1) // B
    for blk in range(n_blocks):
        _diagonal_block(x, a, s2, logw, mu, lam, identity, want_score, logp, score, blk * B, B)


@njit(cache=True, error_model="numpy")
def _far_quadratic(xt, i, ai, a2i, s2i, muk, lamk, identity, viso):
    """sum_j y_j (y_j / v_j) for row i of a block (y = x - a mu_k), for the rare row whose
    sum of y_j^2 / v_j (or, for identity covariances, sum_j y_j^2) overflowed: y_j^2 passes
    float64's range at |y_j| = 1.3e154, while y_j^2 / v_j stays finite for v_j up to 1e300.
    The other rows keep the vectorised sum's bits."""
    total = 0.0
    for j in range(xt.shape[0]):
        y = xt[j, i] - ai * muk[j]
        v = viso if identity else a2i * lamk[j] + s2i
        total += y * (y / v)
    return total


@njit(cache=True, error_model="numpy")
def _diagonal_block(x, a, s2, logw, mu, lam, identity, want_score, logp, score, i0, B):
    """diagonal_mixture on rows i0 to i0 + B (fewer at the end); its buffers are local."""
    n, d = x.shape
    K = mu.shape[0]
    m_rows = min(B, n - i0)
    xt = np.empty((d, B))
    ab = np.empty(B)
    a2b = np.empty(B)
    s2b = np.empty(B)
    viso = np.empty(B)
    ldiso = np.empty(B)
    q = np.empty(B)
    ld = np.empty(B)
    top = np.empty(B)
    total = np.empty(B)
    lw = np.empty((K, B))
    for i in range(m_rows):
        ai = a[i0 + i]
        ab[i] = ai
        a2b[i] = ai * ai
        s2b[i] = s2[i0 + i]
        viso[i] = ai * ai + s2[i0 + i]
        top[i] = -np.inf
        total[i] = 0.0
    if identity:
        # one log per row, not per (row, component): at d = 2 the log was a third of the work
        _log_rows(viso, ldiso, m_rows)
        for i in range(m_rows):
            ldiso[i] *= d
    for j in range(d):
        for i in range(m_rows):
            xt[j, i] = x[i0 + i, j]
    for k in range(K):
        for i in range(m_rows):
            q[i] = 0.0
            ld[i] = 0.0
        if identity:
            for j in range(d):
                muj = mu[k, j]
                for i in range(m_rows):
                    y = xt[j, i] - ab[i] * muj
                    q[i] += y * y
            for i in range(m_rows):
                lw[k, i] = logw[k] - 0.5 * (q[i] / viso[i] + ldiso[i])
        else:
            for j in range(d):
                muj = mu[k, j]
                lamj = lam[k, j]
                for i in range(m_rows):
                    v = a2b[i] * lamj + s2b[i]
                    y = xt[j, i] - ab[i] * muj
                    q[i] += y * y / v
            for j in range(d):
                lamj = lam[k, j]
                for i in range(m_rows):
                    viso[i] = a2b[i] * lamj + s2b[i]  # viso is scratch here (not identity)
                _log_rows(viso, ldiso, m_rows)
                for i in range(m_rows):
                    ld[i] += ldiso[i]
            for i in range(m_rows):
                lw[k, i] = logw[k] - 0.5 * (q[i] + ld[i])
        for i in range(m_rows):
            if q[i] > _MAX_FLOAT:
                # y^2 overflowed, but y^2 / v need not (v up to 1e300): that row again as y (y / v)
                lw[k, i] = logw[k] - 0.5 * (_far_quadratic(xt, i, ab[i], a2b[i], s2b[i], mu[k], lam[k], identity,
                                                           viso[i]) + (ldiso[i] if identity else ld[i]))
        for i in range(m_rows):
            top[i] = lw[k, i] if lw[k, i] > top[i] else top[i]
    # a component whose q overflowed has l_k = -inf and weight exp(-inf) = 0; if all
    # did, top = -inf, every weight is 0 and log p = -inf (the caller names the row)
    for k in range(K):
        for i in range(m_rows):
            e = exp_nonpositive(lw[k, i] - top[i])
            lw[k, i] = e
            total[i] += e
    _log_rows(total, q, m_rows)
    for i in range(m_rows):
        logp[i0 + i] = top[i] + q[i] - 0.5 * d * LOG_2PI
    if want_score:
        acc = q  # reused: one coordinate of the score at a time
        for j in range(d):
            for i in range(m_rows):
                acc[i] = 0.0
            for k in range(K):
                muj = mu[k, j]
                row = lw[k]
                if identity:
                    for i in range(m_rows):
                        acc[i] += row[i] * (xt[j, i] - ab[i] * muj)
                else:
                    lamj = lam[k, j]
                    for i in range(m_rows):
                        # e (y / v), as the score's sum of e_k (y_k / v_k): (e y) / v lost the
                        # digits of an e y below the normal range, which a v < 1 then scaled
                        # up (w = (1, 1e-250), v = (1, 1e-100), y = 1e-115 at x = 0: 1.5e-9 off);
                        # a zero weight gives 0, even where y / v overflowed (0 * inf is NaN)
                        r = (xt[j, i] - ab[i] * muj) / (a2b[i] * lamj + s2b[i])
                        acc[i] += row[i] * r if row[i] != 0.0 else 0.0
            if identity:
                for i in range(m_rows):
                    score[i0 + i, j] = -(acc[i] / viso[i]) / total[i]
            else:
                for i in range(m_rows):
                    score[i0 + i, j] = -acc[i] / total[i]


@njit(parallel=True, cache=True, error_model="numpy")
def full_mixture_direct(x, a, s2, logw, centre, m_proj, lam, U_all, group, want_score, logp, score):
    """Log-density and score for full covariances at small d, projections done here.

    x (n, d) float64 or float32; a, s2 (n,), logw (K,), centre (d,) the centre c of the
    means, m_proj (K, d) = U_k^T (mu_k - c), lam (K, d) and U_all (d, K d) =
    [U_1, ..., U_K], all float64; group as in full_mixture_responsibilities. Writes logp
    (n,) and, if want_score, score (n, d).

    y_k = U_k^T (x - a c) - a U_k^T (mu_k - c) = U_k^T (x - a mu_k) and v_k = a^2 lam_k + s2,
    l_k = log w_k - (sum_j y_kj^2 / v_kj + log prod_j v_kj) / 2, e_k = exp(l_k - max_k l_k),
    log p = max_k l_k + log(sum_k e_k) - d log(2 pi) / 2 and
    score = -sum_k e_k U_k (y_k / v_k) / sum_k e_k, in float64 whatever the dtype of x.
    The same as the two matrix products around full_mixture_responsibilities, but each
    (row, component) costs 2 d^2 multiply-adds in loops over rows that vectorise, with
    no BLAS call: at d = 2 the BLAS calls on (rows, 2) and (rows, 2 K) operands and the
    serial kernel between them cost more than this. Rows go in parallel blocks (the
    result does not depend on the thread count).
    """
    n, d = x.shape
    K = lam.shape[0]
    B = _block_rows(K * d)
    n_blocks = (n + B - 1) // B
    for blk in prange(n_blocks):
        _full_block(x, a, s2, logw, centre, m_proj, lam, U_all, group, want_score, logp, score, blk * B, B)


@njit(cache=True, error_model="numpy")
def _full_block(x, a, s2, logw, centre, m_proj, lam, U_all, group, want_score, logp, score, i0, B):
    """full_mixture_direct on rows i0 to i0 + B (fewer at the end); its buffers are local."""
    n, d = x.shape
    K = lam.shape[0]
    m_rows = min(B, n - i0)
    z = np.empty((d, B))
    ab = np.empty(B)
    a2b = np.empty(B)
    s2b = np.empty(B)
    y = np.empty(B)
    q = np.empty(B)
    ld = np.empty(B)
    prod = np.empty(B)
    top = np.empty(B)
    total = np.empty(B)
    lw = np.empty((K, B))
    r_all = np.empty((K, d, B))
    for i in range(m_rows):
        ai = a[i0 + i]
        ab[i] = ai
        a2b[i] = ai * ai
        s2b[i] = s2[i0 + i]
        top[i] = -np.inf
        total[i] = 0.0
    for l in range(d):
        cl = centre[l]
        for i in range(m_rows):
            z[l, i] = x[i0 + i, l] - ab[i] * cl
    for k in range(K):
        base = k * d
        for i in range(m_rows):
            q[i] = 0.0
            ld[i] = 0.0
            prod[i] = 1.0
        for j in range(d):
            for i in range(m_rows):
                y[i] = 0.0
            for l in range(d):
                u = U_all[l, base + j]
                for i in range(m_rows):
                    y[i] += u * z[l, i]
            mj = m_proj[k, j]
            lamj = lam[k, j]
            for i in range(m_rows):
                v = a2b[i] * lamj + s2b[i]
                yi = y[i] - ab[i] * mj
                r = yi / v
                q[i] += yi * r
                r_all[k, j, i] = r
                prod[i] *= v
            if (j + 1) % group == 0 or j == d - 1:
                _log_rows(prod, top, m_rows)  # top is scratch until the components are done
                for i in range(m_rows):
                    ld[i] += top[i]
                    prod[i] = 1.0
        for i in range(m_rows):
            lw[k, i] = logw[k] - 0.5 * (q[i] + ld[i])
    for i in range(m_rows):
        top[i] = -np.inf
    for k in range(K):
        for i in range(m_rows):
            lk = lw[k, i]
            top[i] = lk if lk > top[i] else top[i]
    # a component whose q overflowed has l_k = -inf and weight 0; if all did, log p = -inf
    for k in range(K):
        for i in range(m_rows):
            e = exp_nonpositive(lw[k, i] - top[i])
            lw[k, i] = e
            total[i] += e
    _log_rows(total, q, m_rows)
    for i in range(m_rows):
        logp[i0 + i] = top[i] + q[i] - 0.5 * d * LOG_2PI
    if want_score:
        acc = z  # reused: the score's coordinates, (d, B)
        for l in range(d):
            for i in range(m_rows):
                acc[l, i] = 0.0
        for k in range(K):
            base = k * d
            for j in range(d):
                for i in range(m_rows):
                    e = lw[k, i]
                    # no weight: its y / v may have overflowed, and 0 * inf is NaN
                    y[i] = e * r_all[k, j, i] if e != 0.0 else 0.0
                for l in range(d):
                    u = U_all[l, base + j]
                    for i in range(m_rows):
                        acc[l, i] += u * y[i]
        for l in range(d):
            for i in range(m_rows):
                score[i0 + i, l] = -acc[l, i] / total[i]


# rotate_rows runs serially up to this many products (n d m): a parallel launch costs ~65 us
# (its sleeping workers woken), which made the tied x0 of 64 points at d = 2 take 438 us
# against 216 us with BLAS (179 us serial), and at d = 32 (2**18 products) 362 against 192
# us serial; up to 2**20 products serial was no slower (2 cores, 2026-12-05)
_ROTATE_SERIAL_MAX = 2**20


@njit(cache=True, nogil=True)
def _rotate_row(z, R, out, i):
    """out[i] = z[i] @ R, the sum over j in ascending order (the loop over c innermost)."""
    for j in range(z.shape[1]):
        zij = z[i, j]
        for c in range(R.shape[1]):
            out[i, c] += zij * R[j, c]


@njit(cache=True, nogil=True)
def _rotate_rows_serial(z, R):
    out = np.zeros((z.shape[0], R.shape[1]))
    for i in range(z.shape[0]):
        _rotate_row(z, R, out, i)
    return out


@njit(parallel=True, cache=True)
def _rotate_rows_parallel(z, R):
    out = np.zeros((z.shape[0], R.shape[1]))
    for i in prange(z.shape[0]):
        _rotate_row(z, R, out, i)
    return out


def rotate_rows(z, R):
    """z @ R row by row without BLAS: out[i, c] = sum_j z[i, j] R[j, c], the sum over j in
    ascending order for every row, so a row's bits depend on neither the other rows of the
    call nor the thread count (a BLAS product's do on both). z (n, d), R (d, m), float64;
    the loop over c innermost, which vectorises. Rows in parallel above _ROTATE_SERIAL_MAX
    products, on the calling thread below (the same code for a row, the same bits). For the
    tied-covariance oracle's NumPy paths (GaussianMixture.divergence, its x0)."""
    if z.shape[0] * z.shape[1] * R.shape[1] <= _ROTATE_SERIAL_MAX:
        return _rotate_rows_serial(z, R)
    return _rotate_rows_parallel(z, R)


@njit(cache=True, nogil=True)
def centred_rows_into(x, a, centre, out):
    """out[i, j] = x[i, j] - a[i] centre[j]: the rows of a block moved by alpha_t times the
    mixture's centre, NumPy's (x - a[:, None] * centre).astype(out.dtype) bit for bit (the
    product rounded before the difference: no fastmath, so no fused multiply-add), in one
    pass and into a buffer the caller reuses, where NumPy makes two passes and two arrays
    per block.

    x, out (n, d) C-contiguous, in one dtype; a (n,) and centre (d,) float64. A float32 x
    is widened, and the difference rounded once into out: so x - a c keeps u relative
    accuracy when the centre is far from 0 (a centre rounded to float32 first cost
    u |c| absolute, 1e4 u of a unit-scale difference at |c| = 1e4)."""
    n, d = x.shape
    for i in range(n):
        ai = a[i]
        for j in range(d):
            out[i, j] = x[i, j] - ai * centre[j]


# nogil: GaussianMixture runs blocks on several Python threads (sgm_ref._threads.run_blocks)
@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc", "contract"})
def full_mixture_responsibilities(P, a, s2, logw, m_proj, lam, group, logp, logc):
    """Turn eigenbasis projections into responsibility-weighted scaled residuals.

    On entry P[i, k*d:(k+1)*d] = U_k^T x_i (one matrix product for all k). On exit it
    holds pi_ik * y_ik / v_ik with y_ik = U_k^T x_i - a_i U_k^T mu_k, so that the score
    is -P @ U_all^T with U_all = [U_1, ..., U_K] (d, K d). logp (n,) receives the
    mixture log-density; logc (n, K) receives the log-weights
    l_ik = log w_k - (q_ik + log det_ik) / 2 before the log-sum-exp.
    m_proj (K, d) holds U_k^T mu_k, and lam the eigenvalues, in float64 whatever the dtype of P.

    Serial on purpose: it runs between two BLAS products, whose threads a spinning
    second pool would starve (measured: a parallel version of this kernel, 1.6-3x as fast
    alone, took as long as this one between the products). The cores are used instead by
    running whole blocks (products and this kernel) on several Python threads with
    single-threaded BLAS; it releases the GIL for that. The log-determinant takes one
    log per `group` factors: for a variance-preserving process each v = a^2 lam + s2 lies
    between min(lam, 1) and max(lam, 1) (otherwise between its values at the smallest and
    largest lam), and the caller picks group so that a product of that many stays inside
    the float64 range; usually group >= d and there is one log per (row, component).

    One pass over P: for each row and component the loop over coordinates forms
    v_j = a^2 lam_j + s2, r_j = y_j / v_j (written over P), q = sum_j y_j r_j and the
    product of the v_j of each group of coordinates; the logs of those products then run
    in a loop over rows (log_normal: no libm call, so it vectorises), as does the
    log-sum-exp (exp_nonpositive: one exp per pair). fastmath reassoc lets the sum q and
    the products run in vector lanes (their order, hence their last bits, differ from a
    left-to-right loop's); no flag that assumes finite values is set, so an overflowed q
    is still inf.
    """
    n = P.shape[0]
    K, d = lam.shape
    n_groups = max(1, (d + group - 1) // group)  # d = 0: one empty group, det 1
    dets = np.empty((K * n_groups, n))  # the product of each group's v, rows innermost
    quad = np.empty((K, n))
    for i in range(n):
        ai = a[i]
        a2i = ai * ai
        s2i = s2[i]
        for k in range(K):
            base = k * d
            q = 0.0
            det = 1.0
            for j in range(d):
                v = a2i * lam[k, j] + s2i
                y = P[i, base + j] - ai * m_proj[k, j]
                r = y / v
                q += y * r
                det *= v
                P[i, base + j] = r
            quad[k, i] = q
            dets[k, i] = det  # the product of all d factors: kept only if n_groups == 1
    if n_groups > 1:
        # eigenvalues too far apart for one product: one per group, the rows innermost
        for k in range(K):
            for g in range(n_groups):
                row = dets[k * n_groups + g]
                for i in range(n):
                    row[i] = 1.0
                for j in range(g * group, min(g * group + group, d)):
                    lamj = lam[k, j]
                    for i in range(n):
                        row[i] *= a[i] * a[i] * lamj + s2[i]
    top = np.empty(n)
    total = np.empty(n)
    log_det = np.empty(n)
    lw = quad  # reused: (K, n), l_k = log w_k - (q_k + log det_k) / 2, then its exp
    for i in range(n):
        top[i] = -np.inf
        total[i] = 0.0
    log_group = np.empty(n)
    for k in range(K):
        _log_rows(dets[k * n_groups], log_det, n)
        for g in range(1, n_groups):
            # the groups' logs summed first, then added to q once: q can be far larger
            # than log det, and adding each group's log to it would round once per group
            _log_rows(dets[k * n_groups + g], log_group, n)
            for i in range(n):
                log_det[i] += log_group[i]
        for i in range(n):
            quad[k, i] += log_det[i]  # q_k + log det_k
        lk = logw[k]
        for i in range(n):
            lwk = lk - 0.5 * quad[k, i]
            lw[k, i] = lwk
            logc[i, k] = lwk
            top[i] = lwk if lwk > top[i] else top[i]
    # a component whose q overflowed has l_k = -inf and weight 0; if all did, log p = -inf
    for k in range(K):
        for i in range(n):
            e = exp_nonpositive(lw[k, i] - top[i])
            lw[k, i] = e
            total[i] += e
    _log_rows(total, logp, n)
    for i in range(n):
        logp[i] = top[i] + logp[i] - 0.5 * d * LOG_2PI
    for i in range(n):
        for k in range(K):
            # divide by total, not exp(. - lse): m + log(total) drops log(total) when |m| is
            # large, and the weights would no longer sum to 1
            pik = lw[k, i] / total[i]
            base = k * d
            if pik == 0.0:
                # no weight: its y / v may have overflowed, and 0 * inf is NaN
                for j in range(d):
                    P[i, base + j] = 0.0
            else:
                for j in range(d):
                    P[i, base + j] *= pik
