"""Tests that kill mutants of sgm_ref.conventions and sgm_ref.replays which the other test
files let through (a mutation-testing review): each pins a number against an independent
reference (the installed peer, a closed form, mpmath) tightly enough that the mutant named
in its docstring fails it.
"""

import numpy as np
import pytest
from _peers import peer

from sgm_ref import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP
from sgm_ref import replays as R
from sgm_ref.conventions import KINDS, _minors

MEAN = np.array([0.8, -0.4])
COV = np.array([[0.6, 0.25], [0.25, 1.4]])


@pytest.mark.parametrize("process, t", [(OU(), 0.3), (VP(), 0.7), (SubVP(), 0.2), (VE(0.05, 5.0), 0.6),
                                        (EDM(), 2.5), (FlowMatching(), 0.4)], ids=repr)
def test_every_minor_is_its_definition(process, t):
    """_minors (read by interop and targets._predict, not only by coefficients) against
    D(i, j) = p_i q_j - q_i p_j from kind = p x0 + q eps: x (alpha, sigma), score (0, -1/sigma),
    eps (0, 1), x0 (1, 0), v (-sigma, alpha), velocity (alpha', sigma'). Every entry, both
    orders, to 4 ulps of the products. Kills ("score", "velocity"): da / s -> -da / s, an
    entry no conversion of coefficients reads (all its pairs take the drift branch)."""
    tt = np.array([t])
    a, s = float(process.alpha(tt)[0]), float(process.sigma(tt)[0])
    da, ds = float(process._d_alpha(tt)[0]), float(process._d_sigma(tt)[0])
    pq = {"x": (a, s), "score": (0.0, -1.0 / s), "eps": (0.0, 1.0), "x0": (1.0, 0.0), "v": (-s, a),
          "velocity": (da, ds)}
    D = _minors(process, tt)
    for i in ("x",) + KINDS:
        for j in ("x",) + KINDS:
            (pi, qi), (pj, qj) = pq[i], pq[j]
            want, size = pi * qj - qi * pj, abs(pi * qj) + abs(qi * pj)
            assert abs(float(D[(i, j)][0]) - want) <= 4 * np.finfo(float).eps * size, (i, j)


def test_ddim_with_eta_between_0_and_1_is_diffusers():
    """DDIMScheduler.step with eta = 0.5 (sigma_eta = eta sqrt(beta-tilde)), on sgm_ref's
    float64 alphas_cumprod, the exact eps of a Gaussian and the same variance_noise: the
    replay agrees to 1e-13 relative (measured ~1e-16). The other tests run eta in {0, 1}
    only, where eta^2 = eta: kills var_eta = eta v sigma_s^2 / sigma_t^2 (eta for eta^2)."""
    torch = peer("torch")
    diffusers = peer("diffusers")
    proc = DDPM()
    sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="leading", set_alpha_to_one=True)
    sched.alphas_cumprod = torch.from_numpy(proc.alphas_cumprod())
    sched.set_timesteps(10)
    score = R.gaussian_score(MEAN, COV, proc)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((8, 2))
    draws = rng.standard_normal((10, 8, 2))
    y = torch.from_numpy(x.copy())
    for k, step in enumerate(sched.timesteps):
        t = (int(step) + 1) / proc.num_train_timesteps
        eps = -float(proc.sigma(t)) * score(y.numpy(), t)
        y = sched.step(torch.from_numpy(eps), step, y, eta=0.5, variance_noise=torch.from_numpy(draws[k])).prev_sample
    out = y.numpy()
    grid = R.timestep_grid(proc, sched.timesteps.numpy())
    mine = R.ddim(score, proc, grid, x, noise=draws[:9], eta=0.5)  # no draw onto the data (sigma_eta = 0 there)
    assert np.max(np.abs(mine - out)) <= 1e-13 * np.max(np.abs(out))


def _gaussian_denoiser(torch):
    """k-diffusion's model(x, sigma) for N(MEAN, COV) under EDM, in torch float64 from the
    closed form D(x; sigma) = m + S (S + sigma^2 I)^{-1} (x - m) (no sgm_ref code)."""
    m, S = torch.from_numpy(MEAN), torch.from_numpy(COV)

    def model(x, sigma):
        K = S + sigma[:, None, None] ** 2 * torch.eye(2, dtype=torch.float64)
        return m + (S @ torch.linalg.solve(K, (x - m)[:, :, None]))[:, :, 0]

    return model


@pytest.mark.parametrize("s_churn", [2.0, 8e-4])
def test_churn_window_includes_its_ends_as_k_diffusion(monkeypatch, s_churn):
    """Algorithm 2 churns where S_tmin <= sigma_i <= S_tmax, both ends included (k-diffusion's
    sample_euler and sample_heun), and for any gamma_i > 0 (here 0.25, and 1e-4). With s_tmin
    and s_tmax set to grid sigmas themselves the replays equal k-diffusion to 1e-12 relative
    (measured <= 1e-15) and use its draws of the churned steps, the end steps included. Kills
    `s_tmin < sig`, `sig < s_tmax` and a small gamma skipped (`gamma <= 1e-3`)."""
    from _peers import load_k_diffusion
    kd = load_k_diffusion()
    torch = kd.torch
    edm = EDM()
    sigmas = edm.karras_sigmas(8, 0.02, 10.0)  # 8 sigmas and a final 0
    rng = np.random.default_rng(4)
    x = 10.0 * rng.standard_normal((8, 2))
    draws = rng.standard_normal((sigmas.size - 1, 8, 2))
    options = {"s_churn": s_churn, "s_tmin": float(sigmas[5]), "s_tmax": float(sigmas[2]), "s_noise": 1.003}
    churned = (sigmas[:-1] >= sigmas[5]) & (sigmas[:-1] <= sigmas[2])
    assert churned.sum() == 4
    for peer_name, replay in (("sample_euler", R.karras_euler), ("sample_heun", R.karras_stochastic)):
        it = iter(torch.from_numpy(draws))
        monkeypatch.setattr(torch, "randn_like", lambda like, **kw: next(it))
        out = getattr(kd.sampling, peer_name)(_gaussian_denoiser(torch), torch.from_numpy(x.copy()),
                                              torch.from_numpy(sigmas), disable=True, **options).numpy()
        mine = replay(R.gaussian_score(MEAN, COV, edm), edm, sigmas, x, noise=draws[churned], **options)
        assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out)), peer_name


def test_euler_ancestral_with_eta_above_1_and_s_noise_is_k_diffusion():
    """sample_euler_ancestral with eta = 1.1 (sigma_up = min(sigma_next, eta ...) clamped to
    sigma_next on the later steps of this grid, not on the first: 1.1 sqrt(1 - q^2) runs from
    0.93 to 1.06) and s_noise = 0.7, on its noise: the replay agrees to 1e-12 relative
    (measured 9e-16). The other tests keep eta <= 1 and s_noise = 1: kills the clamp
    dropped (sigma_down = sqrt of a negative, NaN) and s_noise left off the draw."""
    from _peers import load_k_diffusion
    kd = load_k_diffusion()
    torch = kd.torch
    edm = EDM()
    sigmas = edm.karras_sigmas(8, 0.02, 10.0)
    q = sigmas[1:-1] / sigmas[:-2]
    clamped = 1.1 * np.sqrt(1.0 - q**2) > 1.0
    assert clamped.any() and not clamped.all()
    rng = np.random.default_rng(6)
    x = 10.0 * rng.standard_normal((8, 2))
    draws = rng.standard_normal((sigmas.size - 1, 8, 2))
    it = iter(torch.from_numpy(draws))
    out = kd.sampling.sample_euler_ancestral(_gaussian_denoiser(torch), torch.from_numpy(x.copy()),
                                             torch.from_numpy(sigmas), disable=True, eta=1.1, s_noise=0.7,
                                             noise_sampler=lambda s, s_next: next(it)).numpy()
    mine = R.euler_ancestral(R.gaussian_score(MEAN, COV, edm), edm, sigmas, x, noise=draws[:sigmas.size - 2],
                             eta=1.1, s_noise=0.7)
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))


@pytest.mark.parametrize("process_name", ["EDM", "OU"])
def test_dpmpp_2m_is_k_diffusion_to_the_last_digits(process_name):
    """sample_dpmpp_2m on the Gaussian's closed-form denoiser against the replay, to 1e-13
    relative (measured <= 1.2e-15): the tests of tests/test_replays.py allow 1e-10, which a
    relative error of 1e-12 in a coefficient of the second-order extrapolation passes. On
    OU through x_hat = x / alpha_t, sigma_hat = sqrt(expm1(2t)) (k-diffusion's VP frame)."""
    from _peers import load_k_diffusion
    kd = load_k_diffusion()
    torch = kd.torch
    rng = np.random.default_rng(8)
    x = rng.standard_normal((8, 2))
    if process_name == "EDM":
        process, grid = EDM(), EDM().karras_sigmas(10, 0.02, 10.0)
        sigmas, x = grid, 10.0 * x
        x_hat, alpha_end = x, 1.0
    else:
        process, grid = OU(), np.append(np.geomspace(3.0, 0.01, 10), 0.0)
        sigmas, x_hat, alpha_end = np.sqrt(np.expm1(2.0 * grid)), x / np.exp(-3.0), 1.0
    out = kd.sampling.sample_dpmpp_2m(_gaussian_denoiser(torch), torch.from_numpy(x_hat.copy()),
                                      torch.from_numpy(sigmas), disable=True).numpy() * alpha_end
    mine = R.dpmpp_2m(R.gaussian_score(MEAN, COV, process), process, grid, x)
    assert np.max(np.abs(mine - out)) <= 1e-13 * np.max(np.abs(out))


def _score_sde_vp_peer(monkeypatch, timesteps, x, draws):
    """diffusers' ScoreSdeVpScheduler (score_sde's Euler–Maruyama predictor: steps of
    1 / len(timesteps) from each timestep, f and g read there) on the given float64
    timesteps, fed the Gaussian's exact score as the eps its step_pred divides by -std, with
    the peer's own std expression (so its division gives back the score to rounding; from
    sgm_ref's sigma_t it lost ~1e-12 to the cancellation in sqrt(1 - exp(2 log_mean)) near
    t = 1e-3, why tests/test_replays.py allows 1e-10)."""
    import importlib

    import torch
    peer("diffusers")
    module = importlib.import_module("diffusers.schedulers.deprecated.scheduling_sde_vp")
    vp, n = VP(), x.shape[0]
    sched = module.ScoreSdeVpScheduler()
    sched.set_timesteps(len(timesteps))
    sched.timesteps = torch.from_numpy(np.asarray(timesteps, dtype=np.float64))
    b0, b1 = sched.config.beta_min, sched.config.beta_max
    assert (b0, b1) == (vp.beta_min, vp.beta_max)
    score = R.gaussian_score(MEAN, COV, vp)
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it))
    y = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        tt = t.reshape(1).expand(n)
        std = torch.sqrt(1.0 - torch.exp(2.0 * (-0.25 * tt**2 * (b1 - b0) - 0.5 * tt * b0)))  # the peer's
        eps = -std[:, None] * torch.from_numpy(score(y.numpy(), float(t)))
        y, _ = sched.step_pred(eps, y, tt)
    return y.numpy(), score


@pytest.mark.parametrize("spacing", ["score_sde", "one_over_n"])
def test_euler_maruyama_is_score_sde_vp_to_the_last_digits(monkeypatch, spacing):
    """euler_maruyama against diffusers' ScoreSdeVpScheduler (see _score_sde_vp_peer), to
    1e-13 relative (measured <= 6e-16): with step_size = 1/N on its timesteps linspace(1,
    1e-3, N); and the textbook scheme (step_size None) on the grid 1 - k / N, k = 0..N, whose
    spacing is the peer's 1/N, so that the two are one scheme (score, f and g at each step's
    start). Kills a relative 1e-12 on the drift's score term, on the noise's variance g^2 h
    or on h, and the textbook steps reading score, f and g at the step's end."""
    N, n = 10, 8
    rng = np.random.default_rng(9)
    x = rng.standard_normal((n, 2))
    draws = rng.standard_normal((N, n, 2))
    if spacing == "score_sde":
        timesteps = np.linspace(1.0, 1e-3, N)
        out, score = _score_sde_vp_peer(monkeypatch, timesteps, x, draws)
        mine = R.euler_maruyama(score, VP(), timesteps, x, noise=draws, step_size=1.0 / N)
    else:
        grid = 1.0 - np.arange(N + 1) / N
        assert np.max(np.abs(np.diff(grid) + 1.0 / N)) < 1e-15
        out, score = _score_sde_vp_peer(monkeypatch, grid[:-1], x, draws)
        mine = R.euler_maruyama(score, VP(), grid, x, noise=draws)
    assert np.max(np.abs(mine - out)) <= 1e-13 * np.max(np.abs(out))


def test_variance_preserving_transition_variance_on_fine_steps_to_full_precision():
    """v = 1 - e^{-DB} of a VP or OU step (DB the integral of beta over it), read through
    reverse_diffusion with a zero score from x = 0 fed xi = 1 (it returns sqrt(v)), against
    mpmath (40 digits), steps of 1e-8 to 0.3 relative: within 2e-15 (measured 1.4e-16).
    tests/test_replays.py's fine-step test covers the other processes only: kills
    -expm1(-DB) -> 1 - exp(-DB), 1e-4 off at t = 1e-4 on a step of 1e-8."""
    import mpmath as mp

    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    worst = 0.0
    with mp.workdps(40):
        for process in (VP(), OU()):
            lo, hi = (mp.mpf(process.beta_min), mp.mpf(process.beta_max)) if isinstance(process, VP) else (2, 2)
            B = lambda t: lo * t + (hi - lo) * t * t / 2  # noqa: E731
            for t_lo in (1e-4, 0.3, 0.9):
                for rel in (1e-8, 1e-5, 1e-2, 0.3):
                    t_hi = min(t_lo * (1 + rel), process.t_max)
                    exact = mp.sqrt(-mp.expm1(-(B(mp.mpf(t_hi)) - B(mp.mpf(t_lo)))))
                    y = R.reverse_diffusion(zero, process, [t_hi, t_lo], np.zeros((1, 1)), noise=np.ones((1, 1, 1)))
                    worst = max(worst, abs(float(y[0, 0] / exact - 1)))
    assert worst < 2e-15, worst


M_TOY = np.array([[0.9, 0.3], [-0.2, 0.7]])  # not symmetric, as no built-in replay's maps are
L_TOY = np.array([[0.5, 0.0], [0.4, 0.3]])
B_TOY = np.array([0.1, -0.2])


def _toy_replay(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
    """y = M x + L xi + b: an affine replay whose maps are not symmetric (the built-in
    replays' maps on a Gaussian target are functions of its covariance, all symmetric)."""
    from sgm_ref.replays._common import Noise

    x = np.asarray(x, dtype=np.float64)
    return x @ M_TOY.T + Noise(rng, noise, x.shape, x.dtype).draw() @ L_TOY.T + B_TOY


def test_output_law_of_an_affine_replay_with_maps_that_are_not_symmetric():
    """replay_output_gaussian of y = M x + L xi + b from N(m0, C0) is N(M m0 + b, M C0 M^T +
    L L^T), to 4 ulps, and the covariance it returns is exactly symmetric. Kills the draws'
    B_j B_j^T taken as B_j B_j ("jab,jbc->ac"), B_j read untransposed, and the final
    0.5 (C + C^T) dropped: all invisible on the built-in replays, whose B_j are symmetric."""
    m0, C0 = np.array([0.3, -1.1]), np.array([[1.3, -0.4], [-0.4, 0.8]])
    mean, cov = R.replay_output_gaussian(_toy_replay, MEAN, COV, OU(), [1.0, 0.5], start=(m0, C0))
    np.testing.assert_allclose(mean, M_TOY @ m0 + B_TOY, rtol=0, atol=4 * np.finfo(float).eps)
    np.testing.assert_allclose(cov, M_TOY @ C0 @ M_TOY.T + L_TOY @ L_TOY.T, rtol=0, atol=8 * np.finfo(float).eps)
    assert np.array_equal(cov, cov.T)


def test_law_distances_both_ways_against_closed_forms():
    """KL(N0 || N1) and KL(N1 || N0) in 1-D against the closed form log(s1 / s0) + (s0^2 +
    (m0 - m1)^2) / (2 s1^2) - 1/2 and TV by quadrature of |p - q| / 2 (mpmath, 30 digits; the
    measured agreement is 1e-16, where scipy's quad of it is 8e-9 off);
    and for equal covariances in 2-D, TV = 2 Phi(delta / 2) - 1 (delta the Mahalanobis
    distance of the means) exact without an rng. Kills kl_reverse computed as kl, and the
    equal-covariance case read as a Monte-Carlo one (tv None without an rng)."""
    import mpmath as mp
    from scipy import stats

    m0, v0, m1, v1 = 0.3, 0.5, -0.4, 1.7
    got = R.law_distances((np.array([m0]), np.array([[v0]])), (np.array([m1]), np.array([[v1]])))
    with mp.workdps(30):
        def kl(ma, va, mb, vb):
            ma, va, mb, vb = (mp.mpf(u) for u in (ma, va, mb, vb))
            return float(mp.log(vb / va) / 2 + (va + (ma - mb) ** 2) / (2 * vb) - mp.mpf(1) / 2)
        assert got["kl"] == pytest.approx(kl(m0, v0, m1, v1), rel=1e-14)
        assert got["kl_reverse"] == pytest.approx(kl(m1, v1, m0, v0), rel=1e-14)
        # TV: mpmath's quadrature of |p - q| / 2 split where the densities cross
        lp = [lambda u, m=m, v=v: -(u - m) ** 2 / (2 * mp.mpf(v)) - mp.log(v) / 2 for m, v in ((m0, v0), (m1, v1))]
        cross = sorted(mp.findroot(lambda u: lp[0](u) - lp[1](u), u0) for u0 in (-2, 1.5))
        tv = mp.quad(lambda u: abs(mp.npdf(u, m0, mp.sqrt(v0)) - mp.npdf(u, m1, mp.sqrt(v1))) / 2,
                     [-mp.inf] + cross + [mp.inf])
        assert got["tv"] == pytest.approx(float(tv), rel=1e-14)
    d = np.array([0.5, -0.3])
    same = R.law_distances((MEAN, COV), (MEAN + d, COV))
    delta = np.sqrt(d @ np.linalg.solve(COV, d))
    assert same["tv"] == pytest.approx(2 * stats.norm.cdf(delta / 2) - 1, rel=1e-13)
    assert same["kl"] == pytest.approx(delta**2 / 2, rel=1e-13)
    assert same["kl_reverse"] == pytest.approx(delta**2 / 2, rel=1e-13)


def test_target_gaussian_against_mpmath():
    """target_gaussian(m, S, process, t) = (alpha_t m, alpha_t^2 S + sigma_t^2 I) against
    mpmath (40 digits) for OU and VE at several t, to 2 ulps: the replays' tests use it
    only as a start law under tolerances of 1e-8 and looser. Kills alpha^2 S off by 1e-12."""
    import mpmath as mp

    with mp.workdps(40):
        for process, t in ((OU(), 0.01), (OU(), 0.7), (OU(), 3.0), (VE(0.05, 5.0), 0.6)):
            tm = mp.mpf(t)
            if isinstance(process, OU):
                a, s2 = mp.exp(-tm), -mp.expm1(-2 * tm)
            else:
                lo, hi = mp.mpf(process.sigma_min), mp.mpf(process.sigma_max)
                a, s2 = mp.mpf(1), (lo * (hi / lo) ** tm) ** 2
            mean_t, cov_t = R.target_gaussian(MEAN, COV, process, t)
            want_m = np.array([float(a * mp.mpf(u)) for u in MEAN])
            want_c = np.array([[float(a**2 * mp.mpf(COV[i, j]) + (s2 if i == j else 0)) for j in range(2)]
                               for i in range(2)])
            np.testing.assert_allclose(mean_t, want_m, rtol=2 * np.finfo(float).eps, atol=0)
            np.testing.assert_allclose(cov_t, want_c, rtol=2 * np.finfo(float).eps, atol=0)


def test_churn_on_ou_through_sigma_hat_is_k_diffusion(monkeypatch):
    """karras_stochastic on OU times (churned noise levels mapped back to OU times by
    time_of_sigma_hat, the model read there) against k-diffusion's sample_heun with churn on
    sigma_hat = sqrt(expm1(2t)) and x_hat = x / alpha_T, on the same draws: to 1e-13
    relative (measured 2e-16). Kills the churned time off by 1e-12 relative in its log-SNR."""
    from _peers import load_k_diffusion
    kd = load_k_diffusion()
    torch = kd.torch
    grid = np.append(np.geomspace(2.0, 0.01, 8), 0.0)
    sigmas = np.sqrt(np.expm1(2.0 * grid))
    rng = np.random.default_rng(10)
    x = rng.standard_normal((8, 2))
    draws = rng.standard_normal((sigmas.size - 1, 8, 2))
    options = {"s_churn": 3.0, "s_tmin": 0.05, "s_tmax": 5.0, "s_noise": 1.003}
    churned = (sigmas[:-1] >= 0.05) & (sigmas[:-1] <= 5.0)
    assert 0 < churned.sum() < sigmas.size - 1
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(torch, "randn_like", lambda like, **kw: next(it))
    out = kd.sampling.sample_heun(_gaussian_denoiser(torch), torch.from_numpy(x / np.exp(-grid[0])),
                                  torch.from_numpy(sigmas), disable=True, **options).numpy()
    mine = R.karras_stochastic(R.gaussian_score(MEAN, COV, OU()), OU(), grid, x, noise=draws[churned], **options)
    assert np.max(np.abs(mine - out)) <= 1e-13 * np.max(np.abs(out))


def test_transition_ratio_where_alpha_is_subnormal():
    """r = alpha_hi / alpha_lo of a SubVP(0.1, 2900) step where alpha_hi is subnormal
    (1.3e-315 at t = 1; B = 1450) is taken as exp(int f), against mpmath's exp(-DB / 2)
    (40 digits): within 8 ulps times (1 + |log r|), the conditioning of exp (measured
    <= 2.3e-14 at log r = -543). The ratio of the two subnormals kept 1.8e-9: kills the
    subnormal test dropped (`low = alpha_lo == 0`), which the fine-step tests never reach."""
    import mpmath as mp

    from sgm_ref.replays._common import transition

    process = SubVP(0.1, 2900.0)
    with mp.workdps(40):
        B = lambda t: mp.mpf(0.1) * t + (mp.mpf(2900.0) - mp.mpf(0.1)) * t * t / 2  # noqa: E731
        for t_hi, t_lo in ((1.0, 0.99), (0.995, 0.9), (1.0, 0.5)):
            assert 0 < float(process.alpha(t_hi)) < np.finfo(np.float64).tiny
            r, _ = transition(process, np.float64(t_hi), np.float64(t_lo))
            exact = mp.exp(-(B(mp.mpf(t_hi)) - B(mp.mpf(t_lo))) / 2)
            tol = 8 * np.finfo(float).eps * (1 + abs(float(mp.log(exact))))
            assert abs(float(r / exact - 1)) <= tol, (t_hi, t_lo)


@pytest.mark.parametrize("replay", [R.ddim, R.ddpm_ancestral])
def test_a_step_from_where_sigma_squared_underflows_is_named(replay):
    """A DDPM/DDIM step from t = 1e-170 of FlowMatching or EDM (sigma_t^2 = 1e-340 underflows
    to 0: its coefficients are 0 / 0) is refused naming the grid time and the fix; no other
    test reached that check (`s2_t == 0` -> `s2_t < 0` let the NaN through)."""
    for process in (FlowMatching(), EDM()):
        score = R.gaussian_score([0.1], [[0.5]], process)
        with pytest.raises(ValueError, match=r"^grid\[1\] = 1e-170: sigma_t\^2 underflows to 0 in float64 .*"
                                             r"start the steps at larger times$"):
            replay(score, process, [1e-3, 1e-170, 1e-171], np.ones((2, 1)), rng=np.random.default_rng(0))


@pytest.mark.parametrize("denoise", [True, False])
def test_reverse_diffusion_in_score_sde_discretization_is_diffusers_ve(monkeypatch, denoise):
    """diffusers' ScoreSdeVeScheduler.step_pred (score_sde's ReverseDiffusionPredictor for
    VE), made float64, driven by the Gaussian's exact score on the same draws: the public
    reverse_diffusion(discretization="score_sde") gives its prev_sample, and with
    denoise=True its last prev_sample_mean, to 1e-12 relative (measured 3e-15).
    tests/test_replays.py compares predictor_corrector only: kills reverse_diffusion's
    denoising on the step before the last (`k == times.size - 2`)."""
    import importlib

    import torch
    peer("diffusers")
    module = importlib.import_module("diffusers.schedulers.scheduling_sde_ve")
    ve, N, n = VE(0.01, 50.0), 12, 8
    score = R.gaussian_score(MEAN, COV, ve)
    rng = np.random.default_rng(12)
    x = ve.sigma_max * rng.standard_normal((n, 2))
    draws = rng.standard_normal((N, n, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its linspace, exp and sigmas in float64
    try:
        sched = module.ScoreSdeVeScheduler(sigma_min=ve.sigma_min, sigma_max=ve.sigma_max)
        sched.set_timesteps(N)
        sched.set_sigmas(N)
        y = torch.from_numpy(x.copy())
        for t in sched.timesteps:
            out = sched.step_pred(torch.from_numpy(score(y.numpy(), float(t))), t, y)
            y, y_mean = out.prev_sample, out.prev_sample_mean
    finally:
        torch.set_default_dtype(previous)
    peer_out = (y_mean if denoise else y).numpy()
    grid = sched.timesteps.numpy().copy()
    mine = R.reverse_diffusion(score, ve, grid, x, noise=draws, denoise=denoise, discretization="score_sde")
    assert np.max(np.abs(mine - peer_out)) <= 1e-12 * np.max(np.abs(peer_out))
