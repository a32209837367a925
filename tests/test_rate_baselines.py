"""The rate experiment's baselines: the smoothed empirical score, -x, and the EM plug-in."""

import numpy as np
import pytest
from scipy.special import logsumexp

from sgm_ref.experiments.baselines import EmpiricalMeasure, fit_identity_mixture, minus_x
from sgm_ref.losses import dsm_loss
from sgm_ref.nn import MLP
from sgm_ref.optim import Adam
from sgm_ref.processes import OU, VP
from sgm_ref.score_model import ScoreModel
from sgm_ref.train import fit


def reference_score_and_log_prob(data, x, t, process):
    """Direct log-sum-exp of log N(x; alpha x_i, sigma^2 I), one point at a time, differences explicit."""
    a, s2 = process._coefficients(t, x.shape[0])
    n, d = data.shape
    scores, logps = [], []
    for j in range(x.shape[0]):
        diff = x[j] - a[j] * data                                   # (n, d)
        logn = -0.5 * np.sum(diff**2, axis=1) / s2[j] - 0.5 * d * np.log(2 * np.pi * s2[j])
        lse = logsumexp(logn)
        w = np.exp(logn - lse)
        scores.append(-(w @ diff) / s2[j])
        logps.append(lse - np.log(n))
    return np.array(scores), np.array(logps)


@pytest.mark.parametrize("process", [OU(), VP()])
def test_empirical_score_equals_a_direct_log_sum_exp(process):
    rng = np.random.default_rng(0)
    data = rng.standard_normal((300, 5)) * 2
    x = rng.standard_normal((40, 5)) * 2
    t = np.concatenate([np.full(10, 1e-3), rng.uniform(1e-2, 1.0, 30)])  # tiny t: one x_i dominates
    emp = EmpiricalMeasure(data)
    ref_score, ref_logp = reference_score_and_log_prob(data, x, t, process)
    assert np.allclose(emp.score(x, t, process), ref_score, rtol=1e-9, atol=1e-9 * np.abs(ref_score).max())
    assert np.allclose(emp.log_prob(x, t, process), ref_logp, rtol=1e-12, atol=1e-10)


def test_empirical_score_in_blocks_is_the_same(monkeypatch):
    """Many small blocks (the memory bound for n = 32,000) give the numbers of one block.

    To rounding, not bit for bit: the blocks' matrix products x_blk @ data.T are BLAS's,
    and OpenBLAS's AVX-512 kernels sum a two-row product in another order than a 64-row
    one (1 ulp apart on an AMD EPYC, equal with its Haswell kernels). A wrong block
    boundary moves whole rows, far beyond the tolerance."""
    from sgm_ref.experiments import baselines

    rng = np.random.default_rng(1)
    data, x, t = rng.standard_normal((500, 3)), rng.standard_normal((64, 3)), rng.uniform(0.01, 1, 64)
    whole = EmpiricalMeasure(data).score(x, t)
    whole_logp = EmpiricalMeasure(data).log_prob(x, t)
    monkeypatch.setattr(baselines, "_BLOCK_ELEMENTS", 1000)  # two rows per block
    np.testing.assert_allclose(EmpiricalMeasure(data).score(x, t), whole, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(EmpiricalMeasure(data).log_prob(x, t), whole_logp, rtol=1e-13)


def test_empirical_score_refuses_t_zero():
    with pytest.raises(ValueError, match="t must be > 0"):
        EmpiricalMeasure(np.zeros((3, 2))).score(np.zeros((1, 2)), 0.0)


def test_empirical_score_minimises_the_empirical_dsm_loss():
    """On the training points, with the same draws of t and z, the empirical score's DSM loss is
    below a trained network's and below -x's: it is the loss's unrestricted minimiser."""
    rng = np.random.default_rng(2)
    n, d = 64, 2
    data = rng.standard_normal((n, d)) + np.array([2.0, 0.0]) * rng.choice([-1, 1], size=(n, 1))
    process = OU()
    net = MLP(d, (32, 32), "silu", "log", rng=np.random.default_rng(3))
    model = ScoreModel(net, process, "residual")
    optimizer = Adam(model.params, lr=3e-3)
    fit(model, data, steps=400, batch_size=64, t0=1e-2, T=3.0, rng=np.random.default_rng(4), optimizer=optimizer,
        progress=False)
    emp = EmpiricalMeasure(data)
    m = 40_000
    idx = rng.integers(0, n, m)
    t = rng.uniform(1e-2, 3.0, m)
    z = rng.standard_normal((m, d))
    a, s2 = process._coefficients(t, m)
    xt = a[:, None] * data[idx] + np.sqrt(s2)[:, None] * z

    def loss(score):
        return np.mean(np.sum((score(xt, t) + z / np.sqrt(s2)[:, None]) ** 2, axis=1))

    value_net, _ = dsm_loss(model, data[idx], t, z, grad=False)
    assert value_net == pytest.approx(loss(model), rel=1e-10)  # the loss as sgm_ref.losses computes it
    value_emp = loss(emp)
    # E[L(s)] - E[L(s_emp)] = E|s - s_emp|^2 exactly; with common draws the gap is far beyond noise
    gap_net = np.mean(np.sum((model(xt, t) - emp(xt, t)) ** 2, axis=1))
    assert value_emp < value_net and value_emp < loss(minus_x)
    assert value_net - value_emp == pytest.approx(gap_net, rel=0.1)


def test_em_recovers_well_separated_means():
    rng = np.random.default_rng(5)
    true = np.array([[6.0, 0.0, 0.0], [-6.0, 0.0, 0.0], [0.0, 6.0, 0.0], [0.0, 0.0, -6.0]])
    w = np.array([0.4, 0.3, 0.2, 0.1])
    labels = rng.choice(4, size=8000, p=w)
    x = true[labels] + rng.standard_normal((8000, 3))
    result = fit_identity_mixture(x, 4, np.random.default_rng(0))
    order = [int(np.argmin(np.linalg.norm(result.mixture.means - m, axis=1))) for m in true]
    assert sorted(order) == [0, 1, 2, 3] and result.converged
    se = 1.0 / np.sqrt(8000 * w[:, None])
    assert np.all(np.abs(result.mixture.means[order] - true) < 5 * se)
    assert np.allclose(result.mixture.weights[order], w, atol=0.02)
    again = fit_identity_mixture(x, 4, np.random.default_rng(0))
    assert np.array_equal(again.mixture.means, result.mixture.means)  # seeded


def test_em_refuses_more_components_than_samples():
    with pytest.raises(ValueError, match="K = 5 components need at least K samples"):
        fit_identity_mixture(np.zeros((3, 2)), 5, np.random.default_rng(0))


def test_empirical_log_prob_keeps_float64_precision_at_small_t():
    """log p_t^n took the nearest point's -|x - alpha x_i|^2 / (2 sigma^2) as top - |x|^2 / (2 sigma^2),
    a difference of two numbers of about 1e5 at d = 512, t = t0(32000) = 0.00125: 1.7e-10 off
    (2e-13 relative), 1.7e-8 at t = 1e-5. Against mpmath at 40 digits on the same float64 inputs."""
    import mpmath

    rng = np.random.default_rng(0)
    d, n, m = 512, 50, 3
    data = rng.standard_normal((n, d)) + 2 / np.sqrt(d)
    emp = EmpiricalMeasure(data)
    for t in (0.00125, 1e-5):
        a, s2 = OU()._coefficients(np.full(m, t), m)
        x = a[:, None] * data[:m] + np.sqrt(s2)[:, None] * rng.standard_normal((m, d))
        got = emp.log_prob(x, np.full(m, t))
        with mpmath.workdps(40):
            for j in range(m):
                aj, vj = mpmath.mpf(float(a[j])), mpmath.mpf(float(s2[j]))
                terms = [-mpmath.fsum((mpmath.mpf(float(x[j, k])) - aj * mpmath.mpf(float(data[i, k])))**2
                                      for k in range(d)) / (2 * vj) for i in range(n)]
                top = max(terms)
                exact = (top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in terms)) - mpmath.log(n)
                         - mpmath.mpf(d) / 2 * mpmath.log(2 * mpmath.pi * vj))
                assert abs(got[j] - float(exact)) <= 4e-15 * abs(float(exact)), (t, j, got[j] - float(exact))


@pytest.mark.parametrize("max_iter", [1, 3, 1000])
def test_em_log_likelihood_is_that_of_the_mixture_it_returns(max_iter):
    """log_likelihood was computed in the E-step before the last M-step: the likelihood of the
    parameters one step before those returned (0.45 nats below at max_iter = 1, on this
    data), and the best of the starts was chosen on those stale values. Against the mean of
    scipy's logsumexp of log w_k + log N(x_i; mu_k, I) of the returned mixture; at
    convergence, the means are a fixed point of the M-step."""
    from scipy.stats import multivariate_normal

    rng = np.random.default_rng(0)
    centres = np.array([[3.0, 0.0], [-3.0, 0.0], [0.0, 3.0]])
    x = centres[rng.integers(3, size=600)] + rng.standard_normal((600, 2))
    result = fit_identity_mixture(x, 3, np.random.default_rng(1), max_iter=max_iter)
    m = result.mixture
    log_terms = np.log(m.weights) + np.stack([multivariate_normal(mu, np.eye(2)).logpdf(x) for mu in m.means], axis=1)
    exact = np.mean(logsumexp(log_terms, axis=1))
    assert result.log_likelihood == pytest.approx(exact, rel=1e-14, abs=0)
    if result.converged:
        r = np.exp(log_terms - logsumexp(log_terms, axis=1, keepdims=True))
        assert np.allclose((r.T @ x) / r.sum(axis=0)[:, None], m.means, rtol=0, atol=1e-5)


@pytest.mark.parametrize("t, scale", [(1e-310, 1.0), (1e-320, 1.0), (0.5, 1e200)])
def test_empirical_measure_refuses_what_overflows_instead_of_returning_nan(t, scale):
    """At t ~ 1e-310 on OU sigma_t^2 is subnormal, and |x - alpha_t x_i|^2 / (2 sigma_t^2)
    overflowed: log_prob and score returned NaN with NumPy warnings (also for x ~ 1e200).
    Now a ValueError names the point and t; at t = 1e-300 the answers are still finite and
    equal the direct log-sum-exp over the explicit differences."""
    data = np.random.default_rng(0).standard_normal((50, 2))
    emp = EmpiricalMeasure(data)
    x = scale * np.random.default_rng(1).standard_normal((3, 2))
    for method in (emp.log_prob, emp.score):
        with pytest.raises(ValueError, match=r"^the empirical measure at x\[0\] \(t = .*\) overflows float64"):
            method(x, t)
    x = np.random.default_rng(1).standard_normal((3, 2))
    s2 = -np.expm1(-2e-300)
    a = np.exp(-1e-300)
    sq = np.sum((x[:, None, :] - a * data[None]) ** 2, axis=2) / (2 * s2)  # (3, 50), ~1e300
    expected = -np.min(sq, axis=1) - np.log(50) - np.log(2 * np.pi * s2)  # the nearest point's term dominates
    np.testing.assert_allclose(emp.log_prob(x, 1e-300), expected, rtol=1e-15, atol=0)
    assert np.all(np.isfinite(emp.score(x, 1e-300)))
