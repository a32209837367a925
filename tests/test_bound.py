"""The certified TV bound: each term against an independent computation, and the bound
against the measured TV of the sampler's output."""

import json

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from sgm_ref import OU, VP, GaussianMixture
from sgm_ref.metrics.bound import tv_upper_bound
from sgm_ref.samplers import sample, time_grid

T, T0 = 6.0, 1e-2


def gaussian_path_term(m, v0, grid, method):
    """1/2 sum_k int beta E|Delta_k|^2 dt for p_0 = N(m, v0) in 1-D, OU, the exact score.

    With U = X_t - alpha_t m ~ N(0, v_t), c = e^{-(t_k - t)} and X_{t_k} - alpha_k m =
    c U + sqrt(1 - c^2) xi (alpha_k = c alpha_t), Delta is linear in (U, xi), so its second
    moment is a closed form; the time integral is done by quadrature.
    """
    def v(t):
        return np.exp(-2 * t) * v0 - np.expm1(-2 * t)

    def integrand(t, tk):
        c = np.exp(-(tk - t))
        a_t = np.exp(-t)
        vt, vk = v(t), v(tk)
        if method == "exponential":
            second = vt * (c / vk - 1 / vt) ** 2 + (1 - c * c) / vk**2
        else:
            second = (vt * (c / vk - 1 / vt + (1 - c) / 2) ** 2 + (1 - c * c) * (1 / vk - 0.5) ** 2
                      + ((1 - c) * a_t * m / 2) ** 2)
        return 0.5 * 2.0 * second  # 1/2 beta, beta = 2

    return sum(integrate.quad(integrand, lo, hi, args=(hi,), epsabs=1e-13, epsrel=1e-11)[0]
               for hi, lo in zip(grid[:-1], grid[1:]))


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential"])
def test_path_term_matches_closed_form_for_a_gaussian(method):
    m, v0 = 1.3, 0.4
    g = GaussianMixture([1.0], [[m]], [[v0]])
    grid = time_grid(T, T0, 12, "geometric")
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), T0, T, grid, method, 4000, np.random.default_rng(0))
    exact = gaussian_path_term(m, v0, grid, method)
    print(f"{method}: path term {b.kl_path:.5f} +- {b.kl_path_se:.5f}, closed form {exact:.5f}")
    assert abs(b.kl_path - exact) < 4 * b.kl_path_se  # 4 standard errors
    assert b.kl_path_se < 0.03 * exact  # and the test has power


def test_prior_and_early_stopping_terms_match_closed_forms():
    m, v0 = 1.3, 0.4
    g = GaussianMixture([1.0], [[m]], [[v0]])
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.05, 2.0, "uniform", "exponential", 200,
                       np.random.default_rng(1), n_steps=4, n_aux=200_000)
    aT, vT = np.exp(-2.0), np.exp(-4.0) * v0 - np.expm1(-4.0)
    kl_prior = 0.5 * (vT + (aT * m) ** 2 - 1 - np.log(vT))
    a0, v_t0 = np.exp(-0.05), np.exp(-0.1) * v0 - np.expm1(-0.1)
    tv = 0.5 * integrate.quad(lambda x: abs(norm.pdf(x, m, np.sqrt(v0)) - norm.pdf(x, a0 * m, np.sqrt(v_t0))),
                              -10, 10, points=[m, a0 * m], limit=200)[0]
    assert abs(b.kl_prior - kl_prior) < 4 * b.kl_prior_se  # 4 standard errors
    assert abs(b.tv_early_stopping - tv) < 4 * b.tv_early_stopping_se
    assert b.tv_early_stopping_se < 0.05 * tv


@pytest.mark.parametrize("term", ["kl_path", "kl_prior", "tv_early_stopping", "kl", "tv"])
def test_standard_error_describes_the_spread(term):
    g = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], [[0.3], [0.3]])
    runs = [tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), T0, 1.5, "geometric", "euler_maruyama", 300,
                           np.random.default_rng(seed), n_steps=10) for seed in range(60)]
    values = np.array([getattr(r, term) for r in runs])
    se = np.sqrt(np.mean([getattr(r, term + "_se") ** 2 for r in runs]))
    assert values.max() < 1  # uncapped, so tv_se is the delta-method error
    # the spread over 60 seeds estimates the standard error to about +-9%
    assert 0.7 * se < values.std(ddof=1) < 1.4 * se


def mixture_1d():
    return GaussianMixture([0.3, 0.7], [[-2.0], [1.5]], [[0.25], [0.5]])


def histogram_tv(y, g, edges):
    cdf = sum(w * norm.cdf(edges, mu[0], np.sqrt(c[0])) for w, mu, c in zip(g.weights, g.means, g.covariances))
    p = np.diff(cdf)
    ph = np.histogram(y, edges)[0] / y.size
    return 0.5 * (np.abs(ph - p).sum() + abs((1 - p.sum()) - (1 - ph.sum())))


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential"])
def test_measured_tv_lies_below_the_bound_and_the_bound_tightens(method):
    g = mixture_1d()
    oracle = lambda x, t: g.score(x, t)  # noqa: E731
    wrong = lambda x, t: g.score(x, t) + 0.3  # noqa: E731
    edges = np.linspace(-5, 5, 81)
    bounds = {}
    for name, score in (("oracle", oracle), ("wrong", wrong)):
        for steps in (100, 800):
            b = tv_upper_bound(score, g, OU(), T0, T, "geometric", method, 1000, np.random.default_rng(2),
                               n_steps=steps)
            y = sample(score, OU(), 100_000, 1, np.random.default_rng(3), T=T, t0=T0, n_steps=steps,
                       method=method, grid="geometric")
            measured = histogram_tv(y[:, 0], g, edges)
            print(f"{method} {name} {steps} steps: measured TV {measured:.4f}, bound {b.tv:.4f} +- {b.tv_se:.4f}")
            # the histogram TV (a lower estimate of TV up to its ~0.01 sampling bias at this n),
            # below a bound that says something (the trivial TV <= 1 would pass any sampler)
            assert b.tv < 0.95
            assert measured < b.tv - 3 * b.tv_se
            bounds[name, steps] = b
    for name in ("oracle", "wrong"):
        a, b = bounds[name, 100], bounds[name, 800]
        assert b.kl < a.kl - 3 * np.hypot(a.kl_se, b.kl_se)  # more steps: tighter
    for steps in (100, 800):
        a, b = bounds["oracle", steps], bounds["wrong", steps]
        assert a.kl < b.kl - 3 * np.hypot(a.kl_se, b.kl_se)  # better score: tighter


def test_explicit_grid_with_a_different_n_steps_is_refused():
    g = mixture_1d()
    with pytest.raises(ValueError, match="n_steps=50 but the grid has 2 steps"):
        tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.1, 3.0, np.array([3.0, 1.0, 0.1]), "euler_maruyama",
                       10, np.random.default_rng(0), n_steps=50)


def test_a_capped_bound_has_no_standard_error():
    g = mixture_1d()
    b = tv_upper_bound(lambda x, t: g.score(x, t) + 5.0, g, OU(), 1e-3, 2.0, "uniform", "euler_maruyama", 200,
                       np.random.default_rng(0), n_steps=10)
    assert b.tv == 1.0 and b.tv_se == 0.0
    assert b.kl_se > 0


def test_result_fields_and_json():
    g = mixture_1d()
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, VP(), 1e-3, 1.0, "uniform", "euler_maruyama", 50,
                       np.random.default_rng(0), n_steps=7)
    assert b.kl_path_per_step.shape == (7,) and b.grid.shape == (8,)
    assert b.kl_path == pytest.approx(b.kl_path_per_step.sum(), rel=1e-12)
    assert b.kl == pytest.approx(max(b.kl_prior, 0) + b.kl_path, rel=1e-12)
    assert 0 <= b.tv <= 1
    json.dumps(b.as_dict())


def test_explicit_grid_is_used():
    g = mixture_1d()
    grid = np.array([2.0, 1.0, 0.3, 0.05])
    b = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.05, 2.0, grid, "exponential", 50,
                       np.random.default_rng(0))
    assert np.array_equal(b.grid, grid)


@pytest.mark.parametrize("kwargs, match", [
    (dict(method="probability_flow"), "method"),
    (dict(grid="uniform", n_steps=None), "n_steps"),
    (dict(grid=np.array([5.0, 1.0, 0.1]), n_steps=None), "grid must run"),
    (dict(n=1), "n must be"),
    (dict(t0=0.0), "t0"),
    (dict(rng=3), "rng"),
    (dict(process="OU"), "process"),
])
def test_bad_input(kwargs, match):
    g = mixture_1d()
    args = dict(score=lambda x, t: g.score(x, t), target=g, process=OU(), t0=0.01, T=2.0, grid="uniform",
                method="exponential", n=10, rng=np.random.default_rng(0), n_steps=5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        tv_upper_bound(**args)


def test_wrong_score_shape_is_reported():
    g = mixture_1d()
    with pytest.raises(ValueError, match="shape"):
        tv_upper_bound(lambda x, t: x[:, :0], g, OU(), 0.01, 2.0, "uniform", "exponential", 10,
                       np.random.default_rng(0), n_steps=3)


def test_score_error_functions_check_the_process():
    from sgm_ref.metrics import score_error_integral, score_error_profile

    g = mixture_1d()
    with pytest.raises(ValueError, match="process"):
        score_error_integral(lambda x, t: g.score(x, t), g, "OU", 0.01, 1.0, 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="process"):
        score_error_profile(lambda x, t: g.score(x, t), g, None, [0.1], 10, np.random.default_rng(0))
    with pytest.raises(ValueError, match="time_distribution"):
        score_error_integral(lambda x, t: g.score(x, t), g, OU(), 0.01, 1.0, 10, np.random.default_rng(0),
                             time_distribution="cosine")


def test_bound_refuses_a_path_term_beyond_float64():
    # |s - grad log p|^2 ~ 1e400: the bound was kl = inf with tv capped at 1
    g = GaussianMixture([1.0], [[0.0, 0.0]])
    with pytest.raises(ValueError, match=r"path term of the bound overflows float64 at step 0 \(t = 1\)"):
        tv_upper_bound(lambda x, t: np.full_like(x, 1e200), g, OU(), 0.01, 1.0, "uniform", "euler_maruyama", 8,
                       np.random.default_rng(0), n_steps=4)


def test_bound_names_sizes_beyond_numpy():
    g = GaussianMixture([1.0], [[0.0, 0.0]])
    for kw, name in (({"n": 2**62}, "n"), ({"n": 8, "n_aux": 2**62}, "n_aux")):
        n = kw.pop("n")
        with pytest.raises(ValueError, match=rf"^{name} = 4611686018427387904 asks for .* lower {name}$"):
            tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.01, 1.0, "uniform", "exponential", n,
                           np.random.default_rng(0), n_steps=2, **kw)


def test_bound_with_overflow_inf_is_the_trivial_bound_with_the_other_terms_measured():
    g = GaussianMixture([1.0], [[0.0, 0.0]])
    wild = tv_upper_bound(lambda x, t: np.full_like(x, 1e200), g, OU(), 0.01, 1.0, "uniform", "euler_maruyama", 8,
                          np.random.default_rng(0), n_steps=4, overflow="inf")
    exact = tv_upper_bound(lambda x, t: g.score(x, t), g, OU(), 0.01, 1.0, "uniform", "euler_maruyama", 8,
                           np.random.default_rng(0), n_steps=4)
    assert wild.kl_path == np.inf and wild.tv == 1.0 and wild.tv_se == 0.0
    assert wild.kl_prior == exact.kl_prior and wild.tv_early_stopping == exact.tv_early_stopping
