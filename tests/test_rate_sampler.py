"""The residual exponential integrator: exact Gaussian law, exact for N(0, I), its Girsanov term."""

import numpy as np
import pytest

from sgm_ref.experiments.families import isometric_mixture
from sgm_ref.metrics import sampler_output_gaussian, tv_upper_bound
from sgm_ref.processes import OU, VP
from sgm_ref.samplers import residual_exponential_integrator, sample, time_grid

SQUARE = 2.0 * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])


def gaussian_score(m, S, process):
    """The exact score of p_t for p_0 = N(m, S): -(a^2 S + s^2 I)^{-1} (x - a m), one t per call."""
    def batched(x, t):
        a, s2 = process._coefficients(t, x.shape[0])
        C = a[0] ** 2 * S + s2[0] * np.eye(S.shape[0])
        return -np.linalg.solve(C, (x - a[0] * m).T).T

    return batched


@pytest.mark.parametrize("process", [OU(), VP()])
def test_gaussian_law_is_exact_against_monte_carlo(process):
    """sampler_output_gaussian's law = the empirical law of 40,000 runs, within 4 standard errors."""
    m = np.array([1.0, -0.5, 2.0])
    A = np.array([[1.0, 0.3, 0.0], [0.0, 0.5, 0.2], [0.1, 0.0, 1.5]])
    S = A @ A.T
    T = 5.0 if isinstance(process, OU) else 1.0
    grid = time_grid(T, 1e-2, 12, "geometric", process)  # coarse: the law is far from p_t0
    mean, cov = sampler_output_gaussian(m, S, process, grid, "residual_exponential")
    rng = np.random.default_rng(3)
    n = 40_000
    y = residual_exponential_integrator(gaussian_score(m, S, process), process, grid,
                                        rng.standard_normal((n, 3)), rng)
    se_mean = np.sqrt(np.diag(cov) / n)
    assert np.all(np.abs(y.mean(axis=0) - mean) < 4 * se_mean)
    emp = np.cov(y.T)
    se_cov = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / n)  # Var of a sample covariance entry
    assert np.all(np.abs(emp - cov) < 4 * se_cov)
    # and the scheme is not one of the others: their laws differ from it by far more
    for other in ("euler_maruyama", "exponential"):
        other_mean, _ = sampler_output_gaussian(m, S, process, grid, other)
        assert np.max(np.abs(other_mean - mean) / se_mean) > 20


def test_standard_gaussian_is_reproduced_exactly_on_any_grid():
    """p_0 = N(0, I): the score is -x, r = 0, and every step maps N(0, I) to N(0, I)."""
    grid = time_grid(5.0, 1e-3, 3, "uniform", OU())  # three huge steps
    mean, cov = sampler_output_gaussian(np.zeros(4), np.eye(4), OU(), grid, "residual_exponential")
    assert np.allclose(mean, 0.0, atol=1e-15) and np.allclose(cov, np.eye(4), rtol=0, atol=1e-14)
    em_mean, em_cov = sampler_output_gaussian(np.zeros(4), np.eye(4), OU(), grid, "euler_maruyama")
    assert np.max(np.abs(em_cov - np.eye(4))) > 0.1  # Euler–Maruyama is not


def test_discretisation_term_at_d128_is_100_times_below_euler_maruyama():
    """Exact score of the isometric mixture in d = 128: only the discretisation remains in the path term."""
    target = isometric_mixture(128, SQUARE, 0)
    oracle = lambda x, t: target.score(x, t, OU())  # noqa: E731
    terms = {}
    for method in ("euler_maruyama", "residual_exponential"):
        bound = tv_upper_bound(oracle, target, OU(), 1e-2, 5.0, "geometric", method, 16, np.random.default_rng(1),
                               n_steps=100)
        terms[method] = bound.kl_path
    assert terms["residual_exponential"] * 100 <= terms["euler_maruyama"]
    assert terms["residual_exponential"] < 0.05  # and its bound is not vacuous


def test_path_term_formula_is_the_residual_one():
    """The path term vanishes for N(0, I) with the exact score -x (only for the residual scheme)."""
    from sgm_ref.targets import GaussianMixture

    target = GaussianMixture([1.0], np.zeros((1, 8)))
    terms = {m: tv_upper_bound(lambda x, t: -x, target, OU(), 1e-2, 5.0, "geometric", m, 8,
                               np.random.default_rng(0), n_steps=20).kl_path
             for m in ("residual_exponential", "exponential")}
    assert terms["residual_exponential"] == pytest.approx(0.0, abs=1e-20) and terms["exponential"] > 1.0


def test_sample_runs_the_residual_scheme_and_refuses_other_processes():
    from sgm_ref.processes import VE

    y = sample(lambda x, t: -x, OU(), 500, 2, np.random.default_rng(0), T=5.0, t0=1e-2, n_steps=10,
               method="residual_exponential")
    assert y.shape == (500, 2) and abs(y.var() - 1.0) < 0.2
    with pytest.raises(ValueError, match="residual_exponential.*variance-preserving"):
        sample(lambda x, t: -x, VE(), 10, 2, np.random.default_rng(0), T=1.0, t0=1e-2, n_steps=10,
               method="residual_exponential")


def test_bound_and_law_refuse_the_residual_scheme_off_variance_preserving():
    """The residual scheme's -y / 2 is beta(t)'s: its bound and its exact law say so off VP, as sample does."""
    from sgm_ref.metrics import sampler_output_gaussian
    from sgm_ref.processes import VE
    from sgm_ref.targets import GaussianMixture

    target = GaussianMixture([1.0], np.zeros((1, 2)))
    with pytest.raises(ValueError, match="residual_exponential.*variance-preserving"):
        tv_upper_bound(target, target, VE(), 1e-2, 1.0, "geometric", "residual_exponential", 8,
                       np.random.default_rng(0), n_steps=4)
    with pytest.raises(ValueError, match="residual_exponential.*variance-preserving"):
        sampler_output_gaussian(np.zeros(2), np.eye(2), VE(), np.linspace(1.0, 0.01, 5), "residual_exponential")
