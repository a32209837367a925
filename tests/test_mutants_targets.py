"""Tests written by mutation testing of sgm_ref/targets/gaussian_mixture.py,
sgm_ref/targets/product_mixture.py and sgm_ref/kernels/mixture.py: each pins a regime that
the other tests let a mutated line through in (named in its docstring), against mpmath."""
import mpmath as mp
import numpy as np
import pytest

from sgm_ref import OU
from sgm_ref.targets import ProductMixture


def _product_reference(p, x, a, s2, dps=60):
    """log p, score, E[x0 | x_t = x] and divergence of a ProductMixture in mpmath, at the
    float64 alpha_t, sigma_t^2 taken as exact; x (n, d)."""
    n, d = x.shape
    logp, score, x0, div = np.zeros(n), np.zeros((n, d)), np.zeros((n, d)), np.zeros(n)
    with mp.workdps(dps):
        a, s2 = mp.mpf(float(a)), mp.mpf(float(s2))
        for i in range(n):
            lp, dv = mp.mpf(0), mp.mpf(0)
            for j in range(d):
                xm = mp.mpf(float(x[i, j]))
                w = [mp.mpf(float(c)) for c in p.weights[j]]
                mu = [mp.mpf(float(c)) for c in p.means[j]]
                s = [mp.mpf(float(c)) for c in p.stds[j]]
                v = [a * a * sc * sc + s2 for sc in s]
                logs = [mp.log(wc) - (mp.log(2 * mp.pi * vc) + (xm - a * mc) ** 2 / vc) / 2 if wc > 0 else None
                        for wc, mc, vc in zip(w, mu, v)]
                top = max(c for c in logs if c is not None)
                e = [mp.exp(c - top) if c is not None else mp.mpf(0) for c in logs]
                pis = [q / sum(e) for q in e]
                lp += top + mp.log(sum(e))
                g = [-(xm - a * mc) / vc for mc, vc in zip(mu, v)]
                sj = sum(q * gc for q, gc in zip(pis, g))
                score[i, j] = float(sj)
                x0[i, j] = float(sum(q * (mc + a * sc * sc * (xm - a * mc) / vc)
                                     for q, mc, sc, vc in zip(pis, mu, s, v)))
                dv += sum(q * (-1 / vc + (gc - sj) ** 2) for q, vc, gc in zip(pis, v, g))
            logp[i], div[i] = float(lp), float(dv)
    return logp, score, x0, div


def _product_errors(p, x, t, process):
    """Errors of log p, score, divergence (relative to max(1, |value|)) and x0 (relative to
    the larger of the means' and x0's scale) against _product_reference."""
    a, s2 = (float(c[0]) for c in process._coefficients(t, 1))
    logp, score, x0, div = _product_reference(p, x, a, s2)
    scale = max(float(np.max(np.abs(p.means))), float(np.max(np.abs(x0))))
    return (np.max(np.abs(p.log_prob(x, t, process) - logp) / np.maximum(1.0, np.abs(logp))),
            np.max(np.abs(p.score(x, t, process) - score) / np.maximum(1.0, np.abs(score))),
            np.max(np.abs(p.divergence(x, t, process) - div) / np.maximum(1.0, np.abs(div))),
            np.max(np.abs(p.predict(x, t, process, kind="x0") - x0)) / scale)


def test_product_far_logits_keep_the_direct_form_where_the_difference_form_is_larger():
    """Both entries past 8 sd of their components (quadratic terms 81 and 100) with variances
    1e6 apart: the difference form's two parts are ~ d_r^2 / v_c = 8e7, far above the terms,
    and ProductMixture._relative_terms keeps the direct difference there (`better`). Using the
    difference form everywhere put the score 7e-9 and the divergence 6e-9 off (mpmath); now
    2e-15."""
    p = ProductMixture([[0.5, 0.5]], [[0.0, 9.01]], [[1.0, 1e-3]])
    errors = _product_errors(p, np.array([[9.0], [8.995]]), 0.0, OU())
    assert max(errors) < 1e-14, errors


def test_product_log_variance_shift_takes_log1p_of_close_variances():
    """EDM at sigma = 1e100 with stds 1e95 and 2e95: log v_j0 = 460 is past _LOG_VAR_SHIFT, and
    log v_j1 - log v_j0 = log1p(3e-10) must come from the variances (log1p), not as the
    difference of two logs of 460 (eps 460 = 1e-13 off): x0 was then 7.5e-15 of its scale off
    mpmath; now 1.3e-16."""
    from sgm_ref import EDM
    p = ProductMixture([[0.4, 0.6]], [[-1e90, 2e90]], [[1e95, 2e95]])
    errors = _product_errors(p, np.array([[1e100], [-3e99]]), 1e100, EDM())
    assert max(errors) < 1e-15, errors


def test_product_divergence_beside_a_zero_weight_component_whose_score_overflows():
    """Weights (1, 0), the second component's sd 1e-150: at x = 1e10 its score -x / 1e-300
    overflows, but it has no weight, so the divergence is the first Gaussian's, -1 (not nan,
    which the caller named as a point too far out for float64)."""
    p = ProductMixture([[1.0, 0.0]], [[0.0, 0.0]], [[1.0, 1e-150]])
    x = np.array([[1e10], [3.0]])
    np.testing.assert_array_equal(p.divergence(x), [-1.0, -1.0])
    np.testing.assert_array_equal(p.score(x)[:, 0], [-1e10, -3.0])
    np.testing.assert_array_equal(p.predict(x, kind="x0")[:, 0], [1e10, 3.0])


@pytest.mark.parametrize("means, cov, kind", [
    ([[0.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [1e-300, 1e-300]], "diag"),
    ([[0.0, 0.0], [0.0, 0.0]], [1.0, 1e-300], "spherical"),
    ([[0.0, 0.0], [0.0, 0.0]], [np.eye(2), 2e-300 * np.eye(2)], "full"),
])
def test_gaussian_divergence_beside_a_component_whose_score_overflows(means, cov, kind):
    """Two components at 0, covariances I and (1 or 2)e-300 I, at x = (1e10, 0): the narrow one's
    score x / 1e-300 overflows, its quadratic form too, so its posterior weight is exactly 0 and
    the divergence is the wide Gaussian's, -2 (GaussianMixture.divergence keeps a component of
    no weight out of the spread: 0 * inf was nan, and the point was refused as too far out)."""
    from sgm_ref.targets import GaussianMixture
    g = GaussianMixture([0.5, 0.5], means, cov, kind)
    x = np.array([[1e10, 0.0], [1e10, -1e10], [0.0, 3e9]])
    np.testing.assert_array_equal(g.divergence(x), [-2.0, -2.0, -2.0])
    np.testing.assert_array_equal(g.score(x), -x)
    np.testing.assert_array_equal(g.predict(x, kind="x0"), x)


def _diagonal_x0_reference(weights, means, variances, x, a, s2, dps=60):
    """E[x0 | x_t = x] of a diagonal-covariance GaussianMixture in mpmath (alpha, sigma^2 as given)."""
    out = np.zeros(x.shape)
    with mp.workdps(dps):
        a, s2 = mp.mpf(float(a)), mp.mpf(float(s2))
        for i, row in enumerate(x):
            logc, each = [], []
            for w, m, lam in zip(weights, means, variances):
                v = [a * a * mp.mpf(float(l)) + s2 for l in lam]
                y = [mp.mpf(float(xi)) - a * mp.mpf(float(mi)) for xi, mi in zip(row, m)]
                logc.append(mp.log(mp.mpf(float(w))) - sum(yj * yj / vj + mp.log(vj) for yj, vj in zip(y, v)) / 2)
                each.append([mp.mpf(float(mi)) + a * mp.mpf(float(l)) * yj / vj for mi, l, yj, vj in zip(m, lam, y, v)])
            top = max(logc)
            p = [mp.exp(c - top) for c in logc]
            out[i] = [float(sum(pk * ek[j] for pk, ek in zip(p, each)) / sum(p)) for j in range(x.shape[1])]
    return out


def test_gaussian_log_det_shift_takes_log1p_of_close_variances():
    """EDM at sigma = 1e100, variances 1e190 and 2e190 (diagonal, d = 2): the log-determinants'
    difference must be sum_j log1p(alpha^2 (lam_kj - lam_0j) / v_0j) (GaussianMixture._log_dets),
    not the difference of two log-determinants of 920, each rounded at eps 920 / 2: x0 was then
    7.5e-15 of its scale off mpmath (60 digits), and at rows far out (where _far_rows weighs
    the components) 3.3e-15 with a plain sum of logs there; now 5e-17 and 4e-17."""
    from sgm_ref import EDM
    from sgm_ref.targets import GaussianMixture
    w, mu, lam = [0.4, 0.6], [[-1e90, 3e89], [2e90, -1e90]], [[1e190, 1e190], [2e190, 3e190]]
    g = GaussianMixture(w, mu, lam, "diag")
    t = 1e100
    a, s2 = (float(c[0]) for c in EDM()._coefficients(t, 1))
    # near rows, then rows far out (quadratic forms ~ 100, then ~ 1e3 to 1e4 past _FAR_QUADRATIC:
    # GaussianMixture._far_rows, whose log-determinants take the same shift)
    for x in (np.array([[1e100, -2e99], [-3e99, 5e99]]), np.array([[5e101, -2e101], [-3e101, 8e101]])):
        want = _diagonal_x0_reference(w, mu, lam, x, a, s2)
        err = np.max(np.abs(g.predict(x, t, EDM(), kind="x0") - want)) / np.max(np.abs(want))
        assert err < 1e-15, (x, err)


def _diagonal_reference(weights, means, variances, x, dps=60):
    """Score and divergence of a diagonal-covariance GaussianMixture at t = 0 in mpmath."""
    n, d = x.shape
    score, div = np.zeros((n, d)), np.zeros(n)
    with mp.workdps(dps):
        for i, row in enumerate(x):
            logc, gs, inv = [], [], []
            for w, m, lam in zip(weights, means, variances):
                v = [mp.mpf(float(l)) for l in lam]
                y = [mp.mpf(float(xi)) - mp.mpf(float(mi)) for xi, mi in zip(row, m)]
                logc.append(mp.log(mp.mpf(float(w))) - sum(yj * yj / vj + mp.log(vj) for yj, vj in zip(y, v)) / 2)
                gs.append([-yj / vj for yj, vj in zip(y, v)])
                inv.append(sum(1 / vj for vj in v))
            top = max(logc)
            p = [mp.exp(c - top) for c in logc]
            p = [q / sum(p) for q in p]
            s = [sum(pk * g[j] for pk, g in zip(p, gs)) for j in range(d)]
            score[i] = [float(sj) for sj in s]
            div[i] = float(sum(pk * (sum((g[j] - s[j]) ** 2 for j in range(d)) - iv) for pk, g, iv in zip(p, gs, inv)))
    return score, div


def test_gaussian_far_rows_with_variances_1e600_apart_on_a_coordinate_where_x_is_the_mean():
    """Diagonal variances (1, 1e300) and (1, 1e-300), weights (1, 1e-300), x = (1e3, 0): far from
    both components (GaussianMixture._far_rows, reference the wide one), with r_2 = 0 where the
    coefficient (v_k* - v_k) / (v_k v_k*) is 1e600 = inf. _far_rows takes 0 there (0 * inf was nan,
    and the row fell back to the direct forms, whose quadratic forms of 1e6 round at 1e-10): the
    divergence was 3.3e-11 off mpmath (60 digits); now 4e-14 (log w = -690.8 itself rounds at 1e-13)."""
    from sgm_ref.targets import GaussianMixture
    w, mu, lam = [1.0, 1e-300], [[0.0, 0.0], [-1e-3, 0.0]], [[1.0, 1e300], [1.0, 1e-300]]
    x = np.array([[1e3, 0.0], [1.2e3, 0.0]])
    g = GaussianMixture(w, mu, lam, "diag")
    score, div = _diagonal_reference(w, mu, lam, x)
    assert np.max(np.abs(g.score(x) - score)) < 1e-15 * np.max(np.abs(score))
    assert np.max(np.abs(g.divergence(x) - div) / np.abs(div)) < 1e-12


def test_gaussian_far_weights_late_take_the_variances_difference_from_the_eigenvalues():
    """OU at t = 15 (alpha^2 = 9e-14), diagonal variances 1 and 2, x out to 1e4: the far rows'
    v_k* - v_k must be alpha^2 (lam_k* - lam_k) (GaussianMixture._far_rows), not the difference of
    the rounded v ~ 1 (eps of 9e-14 is 2e-3 of it): x0 was then 1.8e-9 of its scale off mpmath at
    |x| = 1e4 (1.7e-7 at 1e5); now 1.6e-16."""
    from sgm_ref.targets import GaussianMixture
    w, mu, lam = [0.3, 0.7], [[0.0, 0.0], [1.0, -1.0]], [[1.0, 1.0], [2.0, 2.0]]
    g, t = GaussianMixture(w, mu, lam, "diag"), 15.0
    a, s2 = (float(c[0]) for c in OU()._coefficients(t, 1))
    x = np.array([[1e4, -5e3], [3e3, 1e4]])
    want = _diagonal_x0_reference(w, mu, lam, x, a, s2)
    assert np.max(np.abs(g.predict(x, t, kind="x0") - want)) < 1e-15 * np.max(np.abs(want))


def test_full_covariance_below_d_eps_is_named_as_such_in_every_dimension():
    """diag(3e-16, 1) as a full covariance in d = 2: its smallest eigenvalue is above eps but
    below d eps times the largest, which eigh_spd refuses; the message must still say why
    (below d eps, to float64 precision) and point to covariance_type='diag' (_eigh_spd's test
    is the same d eps as eigh_spd's: with eps alone this matrix got the generic message)."""
    from sgm_ref.targets import GaussianMixture
    with pytest.raises(ValueError, match=r"below d eps = 4.44e-16 .* covariance_type='diag'"):
        GaussianMixture([1.0], [[0.0, 0.0]], [np.diag([3e-16, 1.0])], "full")


def test_full_covariance_above_the_direct_dimension_score_beside_an_overflowing_component():
    """d = 7 (past _DIRECT_MAX_DIM: BLAS products around full_mixture_responsibilities), two
    components at 0 with covariances I and 2e-300 I, x = (1e10, 0, ...): the narrow component's
    y / v overflows and its weight is exactly 0, so full_mixture_responsibilities writes 0 for it
    (0 * inf was nan, and the point was refused as too far out); the score is the wide one's, -x."""
    from sgm_ref.targets import GaussianMixture
    d = 7
    g = GaussianMixture([0.5, 0.5], np.zeros((2, d)), [np.eye(d), 2e-300 * np.eye(d)], "full")
    x = np.zeros((2, d))
    x[0, 0], x[1, 3] = 1e10, -3e9
    np.testing.assert_array_equal(g.score(x), -x)
    np.testing.assert_allclose(g.log_prob(x), -0.5 * (d * np.log(2 * np.pi) + np.sum(x * x, axis=1)), rtol=1e-15)
