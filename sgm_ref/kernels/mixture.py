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
thread hand-over per alternation, once per block of points, not per point. The
full-covariance kernel is serial (see its docstring), but the matrix products around
it are BLAS's: their last bits may change with the BLAS thread count (the same count
gives the same bits).

Accuracy with float32 points. The quadratic forms, log-determinants and log-sum-exp
are accumulated in float64 whatever the input dtype, but the matrix products of the
full and tied paths are float32: each projection U_k^T (x - a c) is rounded to about
u |x - a c| (u = 2^-24 = 6e-8), and the score divides it by the variances v, so the
error grows with kappa_t = max v / min v, the condition number of a component
covariance at time t. Per row, |s32 - s64| / |s64| is about u sqrt(kappa_t) typically
and below u (32 + kappa_t); |log p32 - log p64| is below u (32 + kappa_t) (1 + |log p|)
(tests/test_targets_float32.py pins both). Measured for eigenvalues from 1e-4 to 1,
K in {2, 4, 8}, d in {8, 32, 64}, points drawn from p_t: at t = 0 (kappa = 1e4) median
6e-6, max 2.4e-4; at t = 1e-3 (kappa = 480) median 1.5e-6, max 1.6e-5; at t >= 0.1
(kappa <= 5.5) median 2e-7, max 1e-6. Not "about 1e-7": for ill-conditioned
covariances near t = 0, use float64 points (the float32 oracle is 1.2-2.5x faster).
The diagonal, spherical and identity paths have no matrix product (about u relative).
"""

import numpy as np
from numba import njit, prange

LOG_2PI = float(np.log(2.0 * np.pi))

# error_model="numpy" on every kernel: the variances divided by are > 0 by construction,
# and numba's default per-division zero check would keep the loops from vectorising.


@njit(parallel=True, cache=True, error_model="numpy")
def diagonal_mixture(x, a, s2, logw, mu, lam, identity, want_score, logp, score):
    """Log-density and score of sum_k w_k N(a_i mu_k, diag(a_i^2 lam_k + s2_i)) at each row.

    x (n, d); a, s2 (n,) float64; logw (K,) float64; mu, lam (K, d) in the dtype of x;
    identity: lam is all ones (v is one number per row). Writes logp (n,) and, if
    want_score, score (n, d). One pass over components with a running maximum
    (streaming log-sum-exp), so no (n, K) buffer is needed.
    """
    n, d = x.shape
    K = mu.shape[0]
    for i in prange(n):
        ai = a[i]
        a2 = ai * ai
        v_iso = a2 + s2[i]
        # one log per row, not per (row, component): at d = 2 the log was a third of the work
        logdet_iso = d * np.log(v_iso) if identity else 0.0
        m = -np.inf
        total = 0.0
        if want_score:
            for j in range(d):
                score[i, j] = 0.0
        for k in range(K):
            q = 0.0
            logdet = 0.0
            if identity:
                for j in range(d):
                    y = x[i, j] - ai * mu[k, j]
                    q += y * y
                q /= v_iso
                logdet = logdet_iso
            else:
                for j in range(d):
                    v = a2 * lam[k, j] + s2[i]
                    y = x[i, j] - ai * mu[k, j]
                    q += y * y / v
                    logdet += np.log(v)
            lk = logw[k] - 0.5 * (q + logdet)
            if lk == -np.inf:
                # q overflowed: this component has no weight here, and its y / v may be
                # inf (0 * inf would be NaN); another component may still be finite
                continue
            if lk > m:
                # rescale what was accumulated relative to the new maximum
                shrink = np.exp(m - lk)
                total *= shrink
                if want_score:
                    for j in range(d):
                        score[i, j] *= shrink
                m = lk
            wk = np.exp(lk - m)
            total += wk
            if want_score:
                for j in range(d):
                    v = v_iso if identity else a2 * lam[k, j] + s2[i]
                    score[i, j] -= wk * (x[i, j] - ai * mu[k, j]) / v
        logp[i] = m + np.log(total) - 0.5 * d * LOG_2PI
        if want_score:
            for j in range(d):
                score[i, j] /= total


@njit(cache=True, error_model="numpy")
def full_mixture_responsibilities(P, a, s2, logw, m_proj, lam, group, logp, logc):
    """Turn eigenbasis projections into responsibility-weighted scaled residuals.

    On entry P[i, k*d:(k+1)*d] = U_k^T x_i (one matrix product for all k). On exit it
    holds pi_ik * y_ik / v_ik with y_ik = U_k^T x_i - a_i U_k^T mu_k, so that the score
    is -P @ U_all^T with U_all = [U_1, ..., U_K] (d, K d). logp (n,) receives the
    mixture log-density; logc (n, K) is scratch (the component log-densities, then
their exp(lk - max)).
    m_proj (K, d) holds U_k^T mu_k.

    Serial on purpose: it runs between two BLAS products, whose threads a spinning
    second pool would starve. The log-determinant takes one log per `group` factors:
    for a variance-preserving process each v = a^2 lam + s2 lies between min(lam, 1) and
    max(lam, 1) (otherwise between its values at the smallest and largest lam), and the
    caller picks group so that a product of that many stays inside the float64 range.
    """
    n = P.shape[0]
    K, d = lam.shape
    for i in range(n):
        ai = a[i]
        a2 = ai * ai
        s2i = s2[i]
        m = -np.inf
        for k in range(K):
            base = k * d
            q = 0.0
            logdet = 0.0
            # one pass: each v is made once for the residual and the log-determinant's
            # product (the sums run in the same order as two separate passes would)
            for start in range(0, d, group):
                prod = 1.0
                for j in range(start, min(start + group, d)):
                    v = a2 * lam[k, j] + s2i
                    y = P[i, base + j] - ai * m_proj[k, j]
                    r = y / v
                    q += y * r
                    P[i, base + j] = r
                    prod *= v
                logdet += np.log(prod)
            lk = logw[k] - 0.5 * (q + logdet)
            logc[i, k] = lk
            if lk > m:
                m = lk
        total = 0.0
        for k in range(K):
            # logc keeps exp(lk - m) for the weights below: one exp per (row, component)
            ek = np.exp(logc[i, k] - m)
            logc[i, k] = ek
            total += ek
        lse = m + np.log(total)
        logp[i] = lse - 0.5 * d * LOG_2PI
        for k in range(K):
            # divide by total, not exp(. - lse): m + log(total) drops log(total) when |m| is
            # large, and the weights would no longer sum to 1
            pik = logc[i, k] / total
            base = k * d
            if pik == 0.0:
                # no weight: its y / v may have overflowed, and 0 * inf is NaN
                for j in range(d):
                    P[i, base + j] = 0.0
            else:
                for j in range(d):
                    P[i, base + j] *= pik
