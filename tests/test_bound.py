"""The certified TV bound: each term against an independent computation, and the bound
against the measured TV of the sampler's output."""

import json

import numpy as np
import pytest
from scipy import integrate
from scipy.stats import norm

from sgm_ref import DDPM, EDM, OU, VE, VP, FlowMatching, GaussianMixture, SubVP, VPCosine
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


# -- every process (issue 12, item 3): the bound for sgm_ref's schemes with g(t)^2 -----------------

EVERY = [OU(), VP(), VPCosine(), DDPM("linear"), SubVP(), VE(), EDM(), FlowMatching()]
SCHEMES = ["euler_maruyama", "exponential"]
GAUSS_MEAN = np.array([1.0, -0.5])
GAUSS_COV = np.array([[0.6, 0.2], [0.2, 0.3]])


def horizon(process):
    """(t0, T) with p_T close to the start law and a few informative steps."""
    T = {"OU": 3.0, "EDM": 10.0, "VPCosine": 0.95, "FlowMatching": 0.95}.get(type(process).__name__, 1.0)
    return 0.01 * min(T, 1.0), T


def gaussian_path_term_any(process, m, S, grid, method):
    """1/2 sum_k int g^2 E|Delta_k|^2 dt for p_0 = N(m, S) under any process, the exact score.

    Per eigen-coordinate (S = U diag(lam) U^T, mt = U^T m) with U_t = X_t - alpha_t mt ~ N(0, v_t),
    v_t = alpha_t^2 lam + sigma_t^2, r = alpha_k / alpha_t, w = sigma_k^2 - r^2 sigma_t^2 and
    X_k - alpha_k mt = r U_t + sqrt(w) xi:
        Delta = U_t (r / v_k - 1 / v_t - kappa (1 - r)) + sqrt(w) xi (1 / v_k + kappa) - kappa (alpha_t - alpha_k) mt,
    kappa = f(t) / g(t)^2 for Euler–Maruyama and 0 for the exponential integrator; its second
    moment is a closed form and the time integral is done by quadrature.
    """
    lam, U = np.linalg.eigh(S)
    mt = U.T @ m

    def integrand(t, tk):
        a_t, s_t = process.marginal(t)
        a_k, s_k = process.marginal(tk)
        r = a_k / a_t
        w = s_k**2 - r**2 * s_t**2
        v_t, v_k = a_t**2 * lam + s_t**2, a_k**2 * lam + s_k**2
        kappa = process.f(t) / process.g2(t) if method == "euler_maruyama" else 0.0
        second = (v_t * (r / v_k - 1 / v_t - kappa * (1 - r)) ** 2 + w * (1 / v_k + kappa) ** 2
                  + (kappa * (a_t - a_k) * mt) ** 2)
        return 0.5 * process.g2(t) * second.sum()

    # DDPM's beta jumps at its knots j / N: integrate piece by piece
    knots = np.arange(1, process.num_train_timesteps) / process.num_train_timesteps if isinstance(process, DDPM) \
        else np.array([])
    total = 0.0
    for hi, lo in zip(grid[:-1], grid[1:]):
        edges = np.concatenate([[lo], knots[(knots > lo) & (knots < hi)], [hi]])
        total += sum(integrate.quad(integrand, a, b, args=(hi,), epsabs=1e-13, epsrel=1e-10, limit=200)[0]
                     for a, b in zip(edges[:-1], edges[1:]))
    return total


def gaussian_target():
    return GaussianMixture([1.0], [GAUSS_MEAN], [GAUSS_COV])


@pytest.mark.parametrize("method", SCHEMES)
@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_path_term_matches_closed_form_on_every_process(process, method):
    """The Monte-Carlo path term equals its closed form with Delta's f/g^2 term (a sign error
    in it fails here: planted once, every process with f != 0 was off by 56 to 72 standard errors)."""
    g = gaussian_target()
    t0, T = horizon(process)
    grid = time_grid(T, t0, 10, "geometric", process)
    b = tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, t0, T, grid, method, 4000,
                       np.random.default_rng(0))
    exact = gaussian_path_term_any(process, GAUSS_MEAN, GAUSS_COV, grid, method)
    assert abs(b.kl_path - exact) < 4 * b.kl_path_se, (b.kl_path, b.kl_path_se, exact)
    assert b.kl_path_se < 0.05 * exact  # and the test has power


@pytest.mark.parametrize("method", SCHEMES)
@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_bound_kl_is_above_the_exact_kl_of_the_output_law(process, method):
    """KL(P || Q) >= KL(p_t0 || q) with q the closed-form law of the sampler's output
    (sampler_output_gaussian, from the start law sample() uses)."""
    from sgm_ref.metrics import gaussian_kl, sampler_output_gaussian
    from sgm_ref.replays import target_gaussian
    g = gaussian_target()
    t0, T = horizon(process)
    for n_steps in (4, 32):
        grid = time_grid(T, t0, n_steps, "geometric", process)
        b = tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, t0, T, grid, method, 2000,
                           np.random.default_rng(1))
        exact = gaussian_kl(*target_gaussian(GAUSS_MEAN, GAUSS_COV, process, t0),
                            *sampler_output_gaussian(GAUSS_MEAN, GAUSS_COV, process, grid, method))
        assert b.kl + 3 * b.kl_se >= exact, (n_steps, b.kl, b.kl_se, exact)


@pytest.mark.parametrize("method", SCHEMES)
@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_path_term_vanishes_on_fine_grids(process, method):
    """The schemes converge: with the exact score the path term falls like 1 / N (measured:
    9x to 15x from 32 to 512 steps)."""
    g = gaussian_target()
    t0, T = horizon(process)
    terms = [tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, t0, T, "geometric", method, 100,
                            np.random.default_rng(2), n_steps=n_steps).kl_path for n_steps in (32, 512)]
    assert terms[1] < terms[0] / 6, terms


@pytest.mark.parametrize("process", [SubVP(), VE(), EDM(), FlowMatching()], ids=repr)
def test_prior_term_is_the_kl_to_the_start_law_sample_uses(process):
    """KL(p_T || N(0, sigma_T^2 I)): sample() starts these processes from sigma_T N(0, I)."""
    from sgm_ref.metrics import gaussian_kl
    from sgm_ref.replays import target_gaussian
    from sgm_ref.samplers import start_variance
    g = gaussian_target()
    T = {"SubVP": 0.3, "VE": 0.3, "EDM": 2.0, "FlowMatching": 0.6}[type(process).__name__]
    v = start_variance(process, T)
    assert v == float(process.sigma(T)) ** 2
    exact = gaussian_kl(*target_gaussian(GAUSS_MEAN, GAUSS_COV, process, T), np.zeros(2), v * np.eye(2))
    b = tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, 0.01, T, "geometric", "euler_maruyama", 50,
                       np.random.default_rng(3), n_steps=2, n_aux=200_000)
    assert abs(b.kl_prior - exact) < 4 * b.kl_prior_se, (b.kl_prior, b.kl_prior_se, exact)
    assert b.kl_prior_se < 0.05 * exact


def test_early_stopping_term_under_ve_is_measured_from_the_data():
    """VE's t = 0 carries sigma_min of noise already; TV(p_0, p_t0) is from the data itself."""
    from sgm_ref.metrics import gaussian_tv
    m, v0 = 0.4, 0.05
    g = GaussianMixture([1.0], [[m]], [[v0]])
    process, t0 = VE(), 0.05
    b = tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, t0, 1.0, "geometric", "exponential", 50,
                       np.random.default_rng(4), n_steps=2, n_aux=200_000)
    tv, _ = gaussian_tv([m], [[v0]], [m], [[v0 + float(process.sigma2(t0))]])
    assert abs(b.tv_early_stopping - tv) < 4 * b.tv_early_stopping_se, (b.tv_early_stopping, tv)


def _old_vp_bound_terms(score, target, process, grid, method, n, n_aux, t0, T, rng):
    """The VP bound's path and prior terms as written before issue 12 (int beta, N(0, I))."""
    N = grid.size - 1
    h = grid[:-1] - grid[1:]
    mean = np.empty(N)
    steps_per_block = max(n, (2**15 // n) * n) // n
    for first in range(0, N, steps_per_block):
        k = np.repeat(np.arange(first, min(first + steps_per_block, N)), n)
        t = grid[k + 1] + h[k] * rng.random(k.size)
        xt, _ = process.perturb(target.sample(k.size, rng), t, rng)
        dB = process.integrated_beta_between(grid[k], t)
        x_grid = np.exp(-0.5 * dB)[:, None] * xt + np.sqrt(-np.expm1(-dB))[:, None] * rng.standard_normal(xt.shape)
        delta = target.score(xt, t, process) - score(x_grid, grid[k])
        if method == "euler_maruyama":
            delta += 0.5 * (xt - x_grid)
        e = (0.5 * h[k] * process.beta(t) * np.sum(delta**2, axis=1)).reshape(-1, n)
        mean[first:first + e.shape[0]] = e.mean(axis=1)
    xT, _ = process.perturb(target.sample(n_aux, rng), T, rng)
    log_ratio = target.log_prob(xT, T, process) + 0.5 * np.sum(xT**2, axis=1) + 0.5 * xT.shape[1] * np.log(2 * np.pi)
    return mean, log_ratio.mean()


@pytest.mark.parametrize("method", SCHEMES)
@pytest.mark.parametrize("process", [OU(), VP()], ids=repr)
def test_variance_preserving_bound_is_bit_identical_to_the_integrated_beta_form(process, method):
    """(VPCosine left this test when its times came to be drawn with density g^2, whose
    g^2 has no bound toward t_max: test_path_term_is_honest_where_g2_has_no_bound.)"""
    g = gaussian_target()
    t0, T = horizon(process)
    grid = time_grid(T, t0, 9, "geometric", process)

    def score(x, t):
        return g.score(x, t, process)

    b = tv_upper_bound(score, g, process, t0, T, grid, method, 300, np.random.default_rng(5), n_aux=500)
    path, prior = _old_vp_bound_terms(score, g, process, grid, method, 300, 500, t0, T, np.random.default_rng(5))
    assert np.array_equal(b.kl_path_per_step, path)
    assert b.kl_prior == prior


# -- processes whose g^2 has no bound toward t_max (found by a review) ----------------------------


def _path_integral_1d(process, m, lam, t_lo, t_hi):
    """1/2 int g^2 E|Delta|^2 dt of Euler–Maruyama's one step [t_lo, t_hi] with the exact score
    on N(m, lam), by quadrature (Delta is linear in the Gaussian pair (X_t, X_tk))."""
    ak, s2k = float(process.alpha(t_hi)), float(process.sigma2(t_hi))

    def integrand(t):
        at, s2t = float(process.alpha(t)), float(process.sigma2(t))
        vt, vk = at**2 * lam + s2t, ak**2 * lam + s2k
        r = ak / at
        V = s2k - r**2 * s2t
        g2 = float(process.g2(t))
        c = float(process.f(t)) / g2
        cu, cz, c0 = -1 / vt + r / vk - c * (1 - r), np.sqrt(V) / vk + c * np.sqrt(V), -c * (1 - r) * at * m
        return 0.5 * g2 * (cu**2 * vt + cz**2 + c0**2)

    # the integrand grows like 1 / (t_max - t): break points crowding toward the top (and, for a
    # DDPM, at its knots, where g^2 jumps)
    points = np.unique(np.concatenate([[t_lo], t_hi - (t_hi - t_lo) * np.geomspace(1, 1e-12, 60), [t_hi]]))
    if isinstance(process, DDPM):
        knots = np.arange(1, process.num_train_timesteps + 1) / process.num_train_timesteps
        points = np.unique(np.concatenate([[t_lo, t_hi], knots[(knots > t_lo) & (knots < t_hi)]]))
    return sum(integrate.quad(integrand, a, b, epsabs=0, epsrel=1e-12, limit=200)[0]
               for a, b in zip(points[:-1], points[1:]))


# the reference's last subintervals below t_max lose digits to cancellation (their share is negligible)
@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("process, t_lo", [(VPCosine(), 0.5), (FlowMatching(), 0.5), (DDPM("squaredcos_cap_v2"), 0.95)],
                         ids=repr)
def test_path_term_is_honest_where_g2_has_no_bound(process, t_lo):
    """One step from T = t_max (the CLI's default T for these processes) down to t_lo: with t
    uniform on the step, a few draws near t_max carried it; the median run was 35% low and a
    third of runs more than 3 standard errors below the integral (DDPM's capped cosine: a
    quarter). Drawn with density g^2, the runs centre on the quadrature and their standard
    errors are honest."""
    target = GaussianMixture([1.0], [[1.0]], [[[0.5]]])
    T = process.t_max
    truth = _path_integral_1d(process, 1.0, 0.5, t_lo, T)
    runs = [tv_upper_bound(lambda x, t: target.score(x, t, process), target, process, t_lo, T, np.array([T, t_lo]),
                           "euler_maruyama", 256, np.random.default_rng(seed), n_aux=2) for seed in range(40)]
    z = np.array([(b.kl_path - truth) / b.kl_path_se for b in runs])
    assert abs(np.median([b.kl_path for b in runs]) / truth - 1) < 0.03, truth
    assert np.mean(z < -3) <= 0.05 and np.mean(np.abs(z) > 2) <= 0.15, z


@pytest.mark.parametrize("process", [VPCosine(), FlowMatching(), DDPM("squaredcos_cap_v2")], ids=repr)
def test_times_by_g2_invert_the_integral_of_g2(process):
    """The times have distribution function int_lo^t g^2 / int_lo^hi g^2 = u (g^2 integrated by
    quadrature, independently of the process's closed form), on steps near t_max and near 0."""
    from sgm_ref.metrics.score_error import _times_with_g2_density

    lo = np.array([0.5, 0.99, 1e-4, 0.3])
    hi = np.array([process.t_max, process.t_max, 2e-4, 0.30001])
    if isinstance(process, DDPM):
        lo[2], hi[2] = 0.0005, 0.0035  # across knots, where g^2 jumps
    u = np.array([0.25, 0.9, 0.5, 0.75])
    t, G = _times_with_g2_density(process, lo, hi, u)
    def integral(a, b):  # a DDPM's g^2 jumps at its knots: integrate piece by piece
        edges = [a, b]
        if isinstance(process, DDPM):
            knots = np.arange(1, process.num_train_timesteps) / process.num_train_timesteps
            edges = np.unique(np.concatenate([[a, b], knots[(knots > a) & (knots < b)]]))
        return sum(integrate.quad(lambda s: float(process.g2(s)), e0, e1, epsabs=0, epsrel=1e-12, limit=200)[0]
                   for e0, e1 in zip(edges[:-1], edges[1:]))

    for i in range(4):
        below, total = integral(lo[i], t[i]), integral(lo[i], hi[i])
        assert G[i] == pytest.approx(total, rel=1e-9, abs=0)
        assert below / total == pytest.approx(u[i], rel=1e-9, abs=0)


# -- a review of the metrics ------------------------------------------------------------------------


def test_path_term_whose_standard_error_squares_overflow_is_still_measured():
    """|Delta|^2 ~ 1e280 per pair: the step's mean is finite, and so is its standard error, but the
    squares behind e.std() (~1e560) overflowed, the bound raised 'the squared drift mismatch is
    beyond the float64 range' (false) and with overflow='inf' gave kl_path = inf. The draws do not
    depend on the score, so a score off by 1e140 on the same seed must give exactly 1e80 times
    the path term of one off by 1e100 (the order-1 mismatch is 1e-100 of either)."""
    g = GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.3], [0.3, 2.0]]])

    def bound(offset, overflow="raise"):
        return tv_upper_bound(lambda x, t: g.score(x, t, OU()) + offset * (x > 0), g, OU(), 0.01, 3.0, "geometric",
                              "euler_maruyama", 50, np.random.default_rng(0), n_steps=5, overflow=overflow)

    huge, moderate = bound(1e140), bound(1e100)
    assert np.isfinite(huge.kl_path) and np.isfinite(huge.kl_path_se) and huge.tv == 1.0
    np.testing.assert_allclose(huge.kl_path_per_step, 1e80 * moderate.kl_path_per_step, rtol=1e-13, atol=0)
    assert huge.kl_path == pytest.approx(1e80 * moderate.kl_path, rel=1e-13, abs=0)
    assert huge.kl_path_se == pytest.approx(1e80 * moderate.kl_path_se, rel=1e-12, abs=0)
    assert bound(1e140, overflow="inf").kl_path == huge.kl_path


def _tight_ve_case():
    """VE, p_0 = N(1.5, 0.3), 2 geometric Euler–Maruyama steps on [1e-3, 1], the exact score:
    the bound is tight, KL(p_t0 || q) = 4.0137 against E[kl] = 4.02 (a review's case)."""
    from sgm_ref.metrics import sampler_output_gaussian

    g = GaussianMixture([1.0], [[1.5]], [[0.3]])
    process = VE()
    grid = time_grid(1.0, 1e-3, 2, "geometric", process)
    mean_q, cov_q = sampler_output_gaussian([1.5], [[0.3]], process, grid, "euler_maruyama")
    a0, s0 = process.marginal(np.array([1e-3]))
    m0, v0, m1, v1 = a0[0] * 1.5, a0[0] ** 2 * 0.3 + s0[0] ** 2, mean_q[0], cov_q[0, 0]
    kl_true = 0.5 * (v0 / v1 - 1.0 - np.log(v0 / v1) + (m1 - m0) ** 2 / v1)  # KL between 1-D normals
    return g, process, grid, kl_true


def test_the_one_sided_upper_value_covers_the_true_kl_where_the_estimate_is_skewed():
    """kl is an unbiased estimate whose expectation bounds KL(p_t0 || q); in the tight case its
    lower tail is heavy (kl + 2 kl_se < KL in 5.9% of 2000 seeds, 2.3% for a normal law).
    kl_upper = kl + 3 kl_se covers KL in 98.6% of them (the figures bound.py's docstring quotes)."""
    g, process, grid, kl_true = _tight_ve_case()
    assert kl_true == pytest.approx(4.0137, abs=1e-4)
    runs = [tv_upper_bound(lambda x, t: g.score(x, t, process), g, process, 1e-3, 1.0, grid, "euler_maruyama", 256,
                           np.random.default_rng(seed)) for seed in range(2000)]
    kl = np.array([b.kl for b in runs])
    kl_se = np.array([b.kl_se for b in runs])
    b = runs[0]
    assert b.kl_upper == b.kl + 3 * b.kl_se
    assert b.tv_upper == min(1.0, b.tv_early_stopping + 3 * b.tv_early_stopping_se + np.sqrt(b.kl_upper / 2))
    # certified in expectation: the mean estimate is not below the truth (by more than its noise)
    assert kl.mean() > kl_true - 3 * kl.std(ddof=1) / np.sqrt(kl.size)
    assert np.mean(kl + 2 * kl_se < kl_true) > 0.04  # the skew: measured 5.9%
    assert np.mean(np.array([r.kl_upper for r in runs]) < kl_true) < 0.025  # measured 1.4%


def test_upper_values_of_an_overflowed_path_term_are_the_trivial_bound():
    g = GaussianMixture([1.0], [[0.0, 0.0]])
    wild = tv_upper_bound(lambda x, t: np.full_like(x, 1e200), g, OU(), 0.01, 1.0, "uniform", "euler_maruyama", 8,
                          np.random.default_rng(0), n_steps=4, overflow="inf")
    assert wild.kl_upper == np.inf and wild.tv_upper == 1.0


def test_bound_refuses_float32_points_beyond_float32_before_the_score_sees_them():
    """EDM at T = 1e39, dtype float32: the path term's points x_{t_k} ~ 1e39 were cast to inf
    and the score called on them (blamed for non-finite output)."""
    import warnings

    g = GaussianMixture([1.0], [[0.0, 0.0]])
    seen = []

    def score(x, t):
        seen.append(bool(np.all(np.isfinite(x))))
        return (-x / (1.0 + t[:, None] ** 2)).astype(x.dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match=r"^at t = 1e\+39 the points x_t reach .*, beyond float32's range .* "
                                             r"a smaller T \(or a smaller target\)$"):
            tv_upper_bound(score, g, EDM(), 1e-3, 1e39, "geometric", "exponential", 8, np.random.default_rng(0),
                           n_steps=4, dtype=np.float32)
    assert seen == []


def test_a_monte_carlo_target_is_refused():
    """TiltedGaussian's score and log p_t are self-normalised Monte-Carlo estimates: the bound
    took them for the truth and returned a TVBound (tv 0.92) as if certified; docs/limits.md
    said it is not computed for such a target."""
    from sgm_ref.targets import TiltedGaussian

    rng = np.random.default_rng(0)
    tilt = TiltedGaussian.barron(d=2, width=4, path_norm=1.0, rng=rng, n_mc=64)
    with pytest.raises(ValueError, match=r"^target TiltedGaussian has a Monte-Carlo score and log p_t "
                                         r"\(monte_carlo = True\): the bound would take those estimates"):
        tv_upper_bound(tilt.score, tilt, OU(), 1e-2, 5.0, "geometric", "euler_maruyama", 16, rng, n_steps=20)


def test_path_term_transition_past_alpha_underflow_is_the_ratio():
    # SubVP(beta_max=5000): alpha_t = e^{-B/2} underflows to 0 past B ~ 1490 (t ~ 0.77), and the
    # forward transition's r = alpha_hi / alpha_lo was 0/0 = nan (the bound then blamed the
    # points' dtype, "use dtype float64", of a float64 run) or 0 for a representable 9.8e-305;
    # it is exp(int f) = exp(-DB / 2), checked against 50-digit mpmath
    mpmath = pytest.importorskip("mpmath")
    from sgm_ref.replays._common import transition

    mpmath.mp.dps = 50
    process = SubVP(beta_min=0.1, beta_max=5000.0)
    t_hi, t_lo = np.array([1.0, 0.9, 0.5, 0.3]), np.array([0.95, 0.5, 0.1, 0.2])
    r, v = transition(process, t_hi, t_lo)

    def B(t):
        t = mpmath.mpf(t)
        return mpmath.mpf(0.1) * t + (mpmath.mpf(5000.0) - mpmath.mpf(0.1)) * t * t / 2

    for i in range(t_hi.size):
        want = float(mpmath.exp(-(B(t_hi[i]) - B(t_lo[i])) / 2))
        assert r[i] == pytest.approx(want, rel=1e-12, abs=0), i
        # v = sigma_hi^2 - r^2 sigma_lo^2, sigma_t = 1 - e^{-B(t)}
        s_hi, s_lo = -mpmath.expm1(-B(t_hi[i])), -mpmath.expm1(-B(t_lo[i]))
        assert v[i] == pytest.approx(float(s_hi**2 - mpmath.mpf(want)**2 * s_lo**2), rel=1e-13, abs=0), i
    target = GaussianMixture(np.array([0.5, 0.5]), np.array([[1.0, 0.0], [-1.0, 0.0]]), np.array([np.eye(2) * 0.1] * 2))
    result = tv_upper_bound(target.score, target, process, 1e-3, 1.0, "geometric", "exponential", 64,
                            np.random.default_rng(0), n_steps=50)
    assert np.isfinite(result.kl_path) and np.all(np.isfinite(result.kl_path_per_step))


@pytest.mark.parametrize("model_dtype, dtype", [(np.float32, np.float64), (np.float64, np.float32)])
def test_a_score_model_of_another_dtype_is_named_as_the_bounds_dtype_before_any_draw(model_dtype, dtype):
    """A float32 ScoreModel under the default dtype was refused by the model, inside the path
    term, as "x must have dtype float32 (the network's), got float64; cast it explicitly": an x
    the caller never passed, after the draws. Now named as dtype first, as sample does; with the
    model's dtype the bound is the one of the same model behind a plain function."""
    from sgm_ref.nn import MLP
    from sgm_ref.score_model import ScoreModel

    g = GaussianMixture([0.5, 0.5], [[-1.0, 0.0], [1.0, 0.0]])
    model = ScoreModel(MLP(2, (4,), rng=0, dtype=model_dtype), OU(), "residual")
    rng = np.random.default_rng(0)
    name = np.dtype(model_dtype).name
    args = (g, OU(), 0.1, 1.0, "uniform", "exponential", 8)
    with pytest.raises(ValueError, match=rf"^dtype must be the model's dtype, {name}, got {np.dtype(dtype).name}: "
                                         rf".* pass dtype=np.{name}$"):
        tv_upper_bound(model, *args, rng, n_steps=2, dtype=dtype)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn
    b = tv_upper_bound(model, *args, rng, n_steps=2, dtype=model_dtype)
    plain = tv_upper_bound(lambda x, t: model(x, t), *args, np.random.default_rng(0), n_steps=2, dtype=model_dtype)
    assert b.kl == plain.kl and b.tv == plain.tv and np.isfinite(b.kl)


def test_kl_prior_rounding_covers_the_estimate_where_p_T_is_the_start_law():
    """Where p_T is N(0, I) to float64 (OU, T = 50 and 1e300) the KL prior is the rounding of
    per-row differences of terms of size ~ d, not noise: -1.8e-17 +- 3.6e-18 on the ring read as
    "5 standard errors below 0 ... please report it". kl_prior_rounding (8 eps times the mean
    term size, here against the terms summed by NumPy) holds it; at T = 0.5 the KL is far
    above it."""
    from sgm_ref.metrics.bound import tv_upper_bound

    ring, ou = GaussianMixture.ring(), OU()
    for T in (50.0, 1e300):
        rng = np.random.default_rng(3)
        b = tv_upper_bound(lambda x, t: -x, ring, ou, 1e-3, T, "uniform", "euler_maruyama", 16, rng, n_steps=4,
                           n_aux=4096)
        xT, _ = ou.perturb(ring.sample(4096, np.random.default_rng(0)), T, np.random.default_rng(1))
        size = np.mean(np.abs(ring.log_prob(xT, T, ou)) + 0.5 * np.sum(xT**2, axis=1) + np.log(2 * np.pi))
        assert b.kl_prior_rounding == pytest.approx(8 * np.finfo(float).eps * size, rel=0.05)
        assert abs(b.kl_prior) <= b.kl_prior_rounding and b.kl_prior_se < b.kl_prior_rounding
    b = tv_upper_bound(lambda x, t: -x, ring, ou, 1e-3, 0.5, "uniform", "euler_maruyama", 16,
                       np.random.default_rng(3), n_steps=4, n_aux=4096)
    assert b.kl_prior > 1e10 * b.kl_prior_rounding > 0
