"""sgm_ref.replays: the peers' samplers replayed, their exact Gaussian laws, their weak
orders, and agreement with the installed peers (k-diffusion, diffusers' timesteps).

Monte-Carlo checks state their standard errors: for n draws from N(m, C) the sample mean's
entry i has standard error sqrt(C_ii / n) and the sample covariance's entry (i, j)
sqrt((C_ii C_jj + C_ij^2) / n); every entry must lie within Z = 4 of them.
"""

import zlib

import numpy as np
import pytest
from _peers import load_k_diffusion, peer

from sgm_ref import DDPM, EDM, OU, VE, VP, FlowMatching, GaussianMixture, SubVP
from sgm_ref import replays as R
from sgm_ref.interop import to_torch

MEAN = np.array([0.8, -0.4])
COV = np.array([[0.6, 0.25], [0.25, 1.4]])
Z = 4.0


def _ddpm_grid(n):
    proc = DDPM()
    return proc, R.timestep_grid(proc, R.ddim_timesteps(n, spacing="trailing"))


# (replay, process, grid, options): every replay on at least one process, the processes mixed
def _cases():
    edm = EDM()
    proc_ddpm, grid_ddpm = _ddpm_grid(10)
    return {
        "euler_maruyama-VP": (R.euler_maruyama, VP(), np.linspace(1.0, 1e-2, 11), {}),
        "euler_maruyama-step_size-OU": (R.euler_maruyama, OU(), np.linspace(2.0, 0.1, 10), {"step_size": 0.2}),
        "reverse_diffusion-VE": (R.reverse_diffusion, VE(0.05, 5.0), np.linspace(1.0, 0.0, 11), {}),
        "pc-VP": (R.predictor_corrector, VP(), np.linspace(1.0, 1e-2, 9), {"langevin_step": 0.02,
                                                                          "n_corrector": 2}),
        "pc-em-FlowMatching": (R.predictor_corrector, FlowMatching(), np.linspace(0.95, 0.05, 9),
                               {"langevin_step": 0.01, "predictor": "euler_maruyama", "denoise": False}),
        "ddpm_beta_tilde-DDPM": (R.ddpm_ancestral, proc_ddpm, grid_ddpm, {}),
        "ddpm_beta-DDPM": (R.ddpm_ancestral, proc_ddpm, grid_ddpm, {"variance": "beta"}),
        "ddim_eta-DDPM": (R.ddim, proc_ddpm, grid_ddpm, {"eta": 0.5}),
        "karras_euler_churn-EDM": (R.karras_euler, edm, edm.karras_sigmas(8, 0.02, 10.0), {"s_churn": 2.0}),
        "karras_heun-EDM": (R.karras_heun, edm, edm.karras_sigmas(8, 0.02, 10.0), {}),
        "karras_stochastic-EDM": (R.karras_stochastic, edm, edm.karras_sigmas(8, 0.02, 10.0),
                                  {"s_churn": 3.0, "s_tmin": 0.05, "s_tmax": 5.0, "s_noise": 1.003}),
        "euler_ancestral-VP": (R.euler_ancestral, VP(), np.linspace(1.0, 0.0, 11), {"eta": 0.7}),
        "dpmpp_2m-OU": (R.dpmpp_2m, OU(), np.geomspace(3.0, 0.02, 9), {}),
    }


CASES = _cases()


def _start_points(process, grid, n, rng):
    scale = 1.0 if process.__class__.__name__ in ("OU", "VP", "DDPM") else float(process.sigma(grid[0]))
    return scale * rng.standard_normal((n, 2))


@pytest.mark.parametrize("case", sorted(CASES))
def test_exact_law_matches_monte_carlo(case):
    replay, process, grid, options = CASES[case]
    mean_out, cov_out = R.replay_output_gaussian(replay, MEAN, COV, process, grid, **options)
    rng = np.random.default_rng(zlib.crc32(case.encode()))  # hash() of a str changes with each process
    n = 20_000
    y = replay(R.gaussian_score(MEAN, COV, process), process, grid, _start_points(process, grid, n, rng), rng,
               **options)
    se_mean = np.sqrt(np.diag(cov_out) / n)
    v = np.diag(cov_out)
    se_cov = np.sqrt((np.outer(v, v) + cov_out**2) / n)
    z_mean = (y.mean(axis=0) - mean_out) / se_mean
    z_cov = (np.cov(y.T) - cov_out) / se_cov
    assert np.all(np.abs(z_mean) < Z), (z_mean, se_mean)
    assert np.all(np.abs(z_cov) < Z), (z_cov, se_cov)


def _moment_error(replay, process, grid, options):
    start = R.target_gaussian(MEAN, COV, process, grid[0])  # exact p_T: the discretisation error alone
    m, C = R.replay_output_gaussian(replay, MEAN, COV, process, grid, start=start, **options)
    tm, tC = R.target_gaussian(MEAN, COV, process, grid[-1])
    return np.linalg.norm(m - tm) + np.linalg.norm(C - tC)


ORDER_CASES = {
    "euler_maruyama": (R.euler_maruyama, {}, 1), "reverse_diffusion": (R.reverse_diffusion, {}, 1),
    "ddpm_beta_tilde": (R.ddpm_ancestral, {}, 1), "ddpm_beta": (R.ddpm_ancestral, {"variance": "beta"}, 1),
    "ddim_eta0": (R.ddim, {}, 1), "ddim_eta1": (R.ddim, {"eta": 1.0}, 1),
    "karras_euler": (R.karras_euler, {}, 1), "euler_ancestral": (R.euler_ancestral, {}, 1),
    "karras_euler_churn": (R.karras_euler, {"s_churn": 2.0}, 1),
    "karras_heun": (R.karras_heun, {}, 2), "dpmpp_2m": (R.dpmpp_2m, {}, 2),
    # Algorithm 2's churn adds noise exactly (p_sigma -> p_sigma_hat), so on the marginals
    # only the Heun step errs: second order, as the deterministic sampler
    "karras_stochastic": (R.karras_stochastic, {"s_churn": 2.0}, 2),
}


@pytest.mark.parametrize("case", sorted(ORDER_CASES))
def test_weak_order(case):
    """Moment error |mean - mean_t0| + |cov - cov_t0|_F of the exact law, started from the
    exact p_T, against N on uniform OU grids from T = 2 to t0 = 0.1: log-log slope -p."""
    replay, options, order = ORDER_CASES[case]
    Ns = np.array([40, 80, 160])
    err = [_moment_error(replay, OU(), np.linspace(2.0, 0.1, N + 1), options) for N in Ns]
    slope = -np.polyfit(np.log(Ns), np.log(err), 1)[0]
    assert abs(slope - order) < 0.2, (slope, err)


def test_ddpm_beta_tilde_is_ddim_eta1_is_euler_ancestral():
    proc, grid = _ddpm_grid(12)
    laws = [R.replay_output_gaussian(f, MEAN, COV, proc, grid, **o) for f, o in
            [(R.ddpm_ancestral, {}), (R.ddim, {"eta": 1.0}), (R.euler_ancestral, {})]]
    for m, C in laws[1:]:
        np.testing.assert_allclose(m, laws[0][0], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(C, laws[0][1], rtol=1e-12, atol=1e-14)


def test_law_distances_to_target_and_between_schemes():
    grid = np.linspace(1.0, 1e-2, 21)
    target = R.target_gaussian(MEAN, COV, VP(), grid[-1])
    em = R.replay_output_gaussian(R.euler_maruyama, MEAN, COV, VP(), grid)
    rd = R.replay_output_gaussian(R.reverse_diffusion, MEAN, COV, VP(), grid)
    d = R.law_distances(em, target, rng=np.random.default_rng(1), n=20_000)
    assert d["kl"] > 0 and d["kl_reverse"] > 0 and 0 < d["tv"] < 1 and d["tv_se"] > 0
    assert R.law_distances(em, em, rng=np.random.default_rng(1))["kl"] == 0.0
    assert R.law_distances(em, target)["tv"] is None  # Monte Carlo needs an rng; the KLs are exact
    assert R.law_distances(em, rd, rng=np.random.default_rng(1))["kl"] > 0


def test_output_law_refuses_a_sampler_whose_rows_are_coupled_through_the_batch():
    """score_sde's Langevin step is one number for the batch (from its mean norms): every row
    of the probe batch gets the same affine map, so a check row inside that batch passes. The
    same check row in a batch of two does not. Before, such a sampler (under another name than
    predictor_corrector) got a wrong "exact" law: KL 0.024 from its true one on VE (review)."""
    def coupled(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        return R.predictor_corrector(score, process, grid, x, rng, trajectory, noise=noise, snr=0.16)

    grid = np.linspace(1.0, 1e-2, 11)
    with pytest.raises(ValueError, match="coupled through the batch"):
        R.replay_output_gaussian(coupled, MEAN, COV, VE(), grid)
    with pytest.raises(ValueError, match="batch's norms"):  # the named replay is refused before any probe
        R.replay_output_gaussian(R.predictor_corrector, MEAN, COV, VE(), grid, snr=0.16)
    fixed = R.replay_output_gaussian(R.predictor_corrector, MEAN, COV, VE(), grid, langevin_step=0.01)
    assert np.all(np.isfinite(fixed[1]))  # a fixed step is affine and passes both checks


def test_output_law_of_a_float32_sampler_up_to_its_rounding():
    """A sampler that computes in float32 is affine only to its rounding: refused at the default
    affine_rtol = 1e-8, found with an allowance of its rounding, and then within that rounding
    of the float64 sampler's exact law."""
    grid = EDM().karras_sigmas(12, 0.002, 80.0)

    def euler32(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        return R.karras_euler(score, process, grid, x.astype(np.float32), rng, trajectory, noise=noise)

    with pytest.raises(ValueError, match="the sampler's output is not affine"):
        R.replay_output_gaussian(euler32, MEAN, COV, EDM(), grid)
    m32, C32 = R.replay_output_gaussian(euler32, MEAN, COV, EDM(), grid, affine_rtol=12 * 64 * 2.0**-23)
    m64, C64 = R.replay_output_gaussian(R.karras_euler, MEAN, COV, EDM(), grid)
    np.testing.assert_allclose(m32, m64, atol=1e-5)
    np.testing.assert_allclose(C32, C64, atol=1e-5)
    for bad in (0.0, -1.0, np.nan):
        with pytest.raises(ValueError, match="affine_rtol"):
            R.replay_output_gaussian(R.karras_euler, MEAN, COV, EDM(), grid, affine_rtol=bad)


# -- noise plumbing and validation -------------------------------------------------------------


def test_given_noise_reproduces_the_rng_run():
    grid = np.linspace(1.0, 1e-2, 6)
    score = R.gaussian_score(MEAN, COV, VP())
    x = np.random.default_rng(0).standard_normal((5, 2))
    a = R.predictor_corrector(score, VP(), grid, x, np.random.default_rng(3), langevin_step=0.01)
    noise = np.random.default_rng(3).standard_normal((10, 5, 2))  # 5 steps x (1 corrector + 1 predictor)
    b = R.predictor_corrector(score, VP(), grid, x, noise=noise, langevin_step=0.01)
    np.testing.assert_array_equal(a, b)


def test_corrector_only_is_not_denoised():
    """score_sde's pc_sampler returns x_mean if denoise else x, and its NonePredictor returns
    (x, x): with no predictor x_mean is the corrector's last state, noise included, so
    denoise=True changes nothing (sampling.py, NonePredictor.update_fn and pc_sampler).
    Before, the replay dropped the last corrector draw: 0.16 relative at N = 1000 on VE (found
    by a review). The last draw must count: the output moves with it."""
    grid = np.linspace(1.0, 1e-2, 6)
    score = R.gaussian_score(MEAN, COV, VP())
    x = np.random.default_rng(0).standard_normal((5, 2))
    noise = np.random.default_rng(3).standard_normal((5, 5, 2))
    kw = dict(noise=noise, predictor=None, langevin_step=0.01)
    a = R.predictor_corrector(score, VP(), grid, x, denoise=True, **kw)
    np.testing.assert_array_equal(a, R.predictor_corrector(score, VP(), grid, x, denoise=False, **kw))
    moved = noise.copy()
    moved[-1] += 1.0
    b = R.predictor_corrector(score, VP(), grid, x, denoise=True, noise=moved, predictor=None, langevin_step=0.01)
    np.testing.assert_allclose(b - a, np.sqrt(2 * 0.01), rtol=1e-12)


def test_wrong_noise_count_and_missing_rng_raise():
    grid = np.linspace(1.0, 1e-2, 6)
    score = R.gaussian_score(MEAN, COV, VP())
    x = np.zeros((3, 2))
    with pytest.raises(ValueError, match="noise has 4 draws but this replay needs more"):
        R.euler_maruyama(score, VP(), grid, x, noise=np.zeros((4, 3, 2)))
    with pytest.raises(ValueError, match="noise has 6 draws but this replay used 5"):
        R.euler_maruyama(score, VP(), grid, x, noise=np.zeros((6, 3, 2)))
    with pytest.raises(ValueError, match="noise must have shape"):
        R.euler_maruyama(score, VP(), grid, x, noise=np.zeros((5, 2, 2)))
    with pytest.raises(ValueError, match="rng must be"):
        R.ddpm_ancestral(score, VP(), grid, x)
    with pytest.raises(ValueError, match="strictly decreasing"):
        R.karras_heun(score, VP(), grid[::-1], x)
    with pytest.raises(ValueError, match="outside the range"):
        R.karras_stochastic(score, VP(), grid, x, np.random.default_rng(0), s_churn=50.0)


def test_batch_langevin_step_has_no_exact_law():
    with pytest.raises(ValueError, match="langevin_step"):
        R.replay_output_gaussian(R.predictor_corrector, MEAN, COV, VP(), np.linspace(1.0, 0.1, 5))


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_empty_batch_comes_back_empty(case):
    """A batch of no rows returns no rows, without a warning, from every replay; also from
    predictor_corrector with score_sde's batch Langevin step, whose mean norms are 0 / 0 there:
    it raised "the Langevin corrector's step ... overflows ... the score's mean norm is nan"
    with a RuntimeWarning (review). score_sde's own loop returns the empty batch."""
    import warnings

    replay, process, grid, options = CASES[case]
    if replay is R.predictor_corrector:
        options = {k: v for k, v in options.items() if k != "langevin_step"}  # the batch rule
    score = R.gaussian_score(MEAN, COV, process)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y, path = replay(score, process, grid, np.zeros((0, 2)), np.random.default_rng(0), True, **options)
    assert y.shape == (0, 2) and path.shape[1:] == (0, 2)


def test_not_affine_replay_is_refused():
    def clipped(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        return np.tanh(R.euler_maruyama(score, process, grid, x, rng, noise=noise))
    with pytest.raises(ValueError, match="not affine"):
        R.replay_output_gaussian(clipped, MEAN, COV, VP(), np.linspace(1.0, 0.1, 5))


def test_trajectory_and_float32():
    grid = EDM().karras_sigmas(5, 0.05, 5.0)
    score = R.gaussian_score(MEAN, COV, EDM())
    x = 5.0 * np.random.default_rng(0).standard_normal((4, 2))
    y, path = R.karras_heun(score, EDM(), grid, x, trajectory=True)
    assert path.shape == (6, 4, 2) and np.array_equal(path[-1], y) and np.array_equal(path[0], x)
    y32 = R.karras_heun(score, EDM(), grid, x.astype(np.float32))
    assert y32.dtype == np.float32
    assert np.max(np.abs(y32 - y)) < 1e-5 * np.max(np.abs(y))


# -- diffusers' timesteps -----------------------------------------------------------------------


@pytest.mark.parametrize("spacing", R.SPACINGS)
def test_ddim_timesteps_equal_diffusers(spacing):
    diffusers = peer("diffusers")
    for n in (1, 7, 10, 50, 333, 1000):
        for offset in ((0, 1) if spacing == "leading" else (0,)):
            sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing, steps_offset=offset)
            sched.set_timesteps(n)
            np.testing.assert_array_equal(R.ddim_timesteps(n, 1000, spacing, offset), sched.timesteps.numpy())


@pytest.mark.parametrize("N", [1000, 999, 37])
@pytest.mark.parametrize("spacing", R.SPACINGS)
def test_ddim_timesteps_equal_diffusers_for_every_n(spacing, N):
    """Every n from 1 to N, against DDIMScheduler and DDPMScheduler (the same rule in both):
    equal timesteps, or a ValueError where diffusers returns n + 1 of them ending at -1
    ("trailing", n = 61, 103, ... at N = 1000). Before, "trailing" was computed from the exact
    N - k N / n and missed diffusers by one at 49 values of n (n = 48: 937 against 936)."""
    diffusers = peer("diffusers")
    refused = 0
    for name in ("DDIMScheduler", "DDPMScheduler"):
        offset = 1 if spacing == "leading" else 0
        sched = getattr(diffusers, name)(num_train_timesteps=N, timestep_spacing=spacing, steps_offset=offset)
        for n in range(1, N + 1):
            sched.set_timesteps(n)
            theirs = sched.timesteps.numpy()
            if theirs.size == n:
                np.testing.assert_array_equal(R.ddim_timesteps(n, N, spacing, offset), theirs, err_msg=f"{name} n={n}")
            else:
                assert spacing == "trailing" and theirs.size == n + 1 and theirs[-1] == -1
                with pytest.raises(ValueError, match=f"num_inference_steps = {n} with spacing 'trailing'.*-1"):
                    R.ddim_timesteps(n, N, spacing, offset)
                refused += 1
    if (spacing, N) == ("trailing", 1000):
        assert refused > 0  # the case exists


# -- k-diffusion on the same sigmas and the same noise ----------------------------------------------


@pytest.fixture(scope="module")
def kd():
    return load_k_diffusion()


def _mixture():
    return GaussianMixture([0.6, 0.4], [[-1.0, 0.5], [1.2, -0.3]],
                           [[[0.3, 0.1], [0.1, 0.2]], [[0.4, -0.1], [-0.1, 0.5]]])


KD_CASES = {
    "sample_euler": (R.karras_euler, {}), "sample_heun": (R.karras_heun, {}),
    "sample_euler_churn": (R.karras_euler, {"s_churn": 4.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}),
    "sample_heun_churn": (R.karras_stochastic, {"s_churn": 4.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}),
    "sample_euler_ancestral": (R.euler_ancestral, {"eta": 0.8}), "sample_dpmpp_2m": (R.dpmpp_2m, {}),
    # eta > 1: sigma_up = min(sigma_{i+1}, eta ...) clamps on most of these steps (q < 0.745); eta = 0
    # still draws onto sigma > 0 (times sigma_up = 0), as k-diffusion does
    "sample_euler_ancestral-eta1.5": (R.euler_ancestral, {"eta": 1.5, "s_noise": 0.9}),
    "sample_euler_ancestral-eta0": (R.euler_ancestral, {"eta": 0.0}),
}


@pytest.mark.parametrize("case", sorted(KD_CASES))
def test_k_diffusion_agrees_with_replay(kd, case, monkeypatch):
    """Same sigmas (ending at 0), same start, same noise, the exact oracle of a 2-D mixture:
    final outputs agree to 1e-10 relative in float64 (measured: at most ~1e-15)."""
    mine, out = _k_diffusion_and_replay(kd, case, monkeypatch)
    assert np.max(np.abs(mine - out)) <= 1e-10 * np.max(np.abs(out))


def _k_diffusion_and_replay(kd, case, monkeypatch):
    torch = kd.torch
    replay, options = KD_CASES[case]
    target, edm = _mixture(), EDM()
    model = to_torch(target, edm)
    sigmas = edm.karras_sigmas(12, 0.02, 10.0)
    rng = np.random.default_rng(7)
    x = 10.0 * rng.standard_normal((64, 2))
    draws = rng.standard_normal((sigmas.size - 1, 64, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(torch, "randn_like", lambda like, **kw: next(it))  # sample_euler / sample_heun draw here
    kwargs = {{"s_churn": "s_churn", "s_tmin": "s_tmin", "s_tmax": "s_tmax", "s_noise": "s_noise",
               "eta": "eta"}[k]: v for k, v in options.items()}
    if case.startswith("sample_euler_ancestral"):
        kwargs["noise_sampler"] = lambda s, s_next: next(it)
    peer_fn = getattr(kd.sampling, case.split("-")[0].replace("_churn", ""))
    out = peer_fn(model, torch.from_numpy(x.copy()), torch.from_numpy(sigmas), disable=True, **kwargs).numpy()
    # which draws the replay uses: churned steps (k-diffusion draws every step), or steps onto sigma > 0
    if "churn" in case:
        N = sigmas.size - 1
        gamma = np.where((sigmas[:-1] >= 0.1) & (sigmas[:-1] <= 5.0), min(4.0 / N, 2**0.5 - 1), 0.0)
        noise = draws[gamma > 0]
    elif case.startswith("sample_euler_ancestral"):
        noise = draws[:sigmas.size - 2]
    else:
        noise = None
    return replay(OracleScore(model), edm, sigmas, x, noise=noise, **options), out


@pytest.mark.parametrize("replay, peer_name, options", [(R.karras_heun, "sample_heun", {}),
                                                        (R.dpmpp_2m, "sample_dpmpp_2m", {}),
                                                        (R.karras_stochastic, "sample_heun", {"s_churn": 3.0}),
                                                        (R.euler_ancestral, "sample_euler_ancestral", {"eta": 0.8})])
def test_k_diffusion_on_sigma_hat_equals_replay_on_ou(kd, replay, peer_name, options, monkeypatch):
    """A VP-family process goes through x_hat = x / alpha_t on sigma_hat = sigma_t / alpha_t
    (as k-diffusion's VP wrappers do): the replay on OU times, ending at t = 0, equals
    k-diffusion on the sigmas of those times with the EDM oracle, to 1e-10 relative. Also
    with churn, whose raised noise level the replay evaluates at its OU time
    (time_of_sigma_hat; a time 1e-9 off passed every test before, review), and with the
    ancestral steps' noise in x_hat (every step churned here, the ancestral draws onto
    sigma > 0)."""
    torch = kd.torch
    target = _mixture()
    grid = np.append(np.geomspace(3.0, 0.01, 10), 0.0)
    sigmas = np.sqrt(np.expm1(2.0 * grid))  # OU: sigma_t / alpha_t
    rng = np.random.default_rng(2)
    x = rng.standard_normal((16, 2))
    draws = rng.standard_normal((grid.size - 1, 16, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(torch, "randn_like", lambda like, **kw: next(it))
    kwargs = {"noise_sampler": lambda s, s_next: next(it)} if peer_name == "sample_euler_ancestral" else {}
    out = getattr(kd.sampling, peer_name)(to_torch(target, EDM()), torch.from_numpy(x / np.exp(-grid[0])),
                                          torch.from_numpy(sigmas), disable=True, **options, **kwargs).numpy()
    noise = {R.karras_stochastic: draws, R.euler_ancestral: draws[:-1]}.get(replay)
    mine = replay(lambda y, t: target.score(y, t, OU()), OU(), grid, x, noise=noise, **options)
    assert np.max(np.abs(mine - out)) <= 1e-10 * np.max(np.abs(out))


class OracleScore:
    """The oracle's float64 score as s(x, t) for the replays (the same numbers to_torch converts)."""

    def __init__(self, model):
        self.model = model

    def __call__(self, x, t):
        return self.model.score(x, t)


# -- diffusers' ScoreSdeVpScheduler: score_sde's loop, steps of 1/N from N grid points -----------


def _score_sde_vp_run(monkeypatch, N, n=32):
    """diffusers' ScoreSdeVpScheduler driven by the exact eps of a 2-D mixture, its timesteps
    made float64 (its own are float32 linspace(1, 1e-3, N)), fed known noise."""
    import importlib

    import torch
    sched_module = importlib.import_module("diffusers.schedulers.deprecated.scheduling_sde_vp")  # 0.42's home
    target, vp = _mixture(), VP()
    sched = sched_module.ScoreSdeVpScheduler()
    sched.set_timesteps(N)
    sched.timesteps = torch.linspace(1.0, sched.config.sampling_eps, N, dtype=torch.float64)
    grid = sched.timesteps.numpy().copy()
    rng = np.random.default_rng(11)
    x = rng.standard_normal((n, 2))
    draws = rng.standard_normal((N, n, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(sched_module, "randn_tensor", lambda *a, **k: next(it))
    y = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        tt = t.reshape(1).expand(n)
        eps = -vp.sigma(tt.numpy())[:, None] * target.score(y.numpy(), tt.numpy(), vp)
        y, _ = sched.step_pred(torch.from_numpy(eps), y, tt)
    score = lambda x, t: target.score(x, t, vp)  # noqa: E731
    return grid, x, draws, y.numpy(), score


def test_score_sde_vp_scheduler_is_euler_maruyama_with_step_one_over_n(monkeypatch):
    """diffusers' ScoreSdeVpScheduler = euler_maruyama(step_size=1/N) on its own grid
    linspace(1, eps, N), to 1e-10 relative; its steps are (N - 1) / (N (1 - eps)) of the
    grid's spacing (0.9009 at N = 10), so it differs from the textbook scheme on that grid."""
    peer("diffusers")  # skips without it
    N = 10
    grid, x, draws, out, score = _score_sde_vp_run(monkeypatch, N)
    mine = R.euler_maruyama(score, VP(), grid, x, noise=draws, step_size=1.0 / N)
    assert np.max(np.abs(mine - out)) <= 1e-10 * np.max(np.abs(out))
    assert (1.0 / N) / (grid[0] - grid[1]) == pytest.approx(0.9009009, abs=1e-7)
    textbook = R.euler_maruyama(score, VP(), grid, x, noise=draws[:-1])
    assert np.max(np.abs(textbook - out)) > 1e-3  # a different discretisation, seen path by path


def test_score_sde_vp_scheduler_is_predictor_corrector_em_in_score_sde_discretization(monkeypatch):
    """The same loop through predictor_corrector(discretization="score_sde"): score_sde's
    Euler–Maruyama predictor steps by 1/N from every one of its N times."""
    peer("diffusers")
    N = 10
    grid, x, draws, out, score = _score_sde_vp_run(monkeypatch, N)
    mine = R.predictor_corrector(score, VP(), grid, x, noise=draws, predictor="euler_maruyama", corrector=None,
                                 denoise=False, discretization="score_sde")
    assert np.max(np.abs(mine - out)) <= 1e-10 * np.max(np.abs(out))


@pytest.mark.parametrize("N", [20, 100])
@pytest.mark.parametrize("correct_steps", [0, 1, 2])
def test_diffusers_score_sde_ve_scheduler_is_the_score_sde_discretization(monkeypatch, N, correct_steps):
    """diffusers' ScoreSdeVeScheduler (score_sde's VE predictor-corrector loop, as its
    ScoreSdeVePipeline runs it: correct_steps Langevin steps, then the reverse-diffusion
    predictor, the last predictor's mean returned), made float64 and driven by the exact
    score, equals predictor_corrector(discretization="score_sde") to 1e-12 (measured <= 1.1e-14).
    Its steps read sigma from a table at int(t (N - 1)) while the score is read at t: the exact
    transitions on the same times, with a last step to t = 0, are another scheme (measured
    1.6e-4 to 3.7e-4 relative here), seen above 1e-4."""
    import importlib

    import torch
    peer("diffusers")
    module = importlib.import_module("diffusers.schedulers.scheduling_sde_ve")
    target, ve = _mixture(), VE(0.01, 50.0)
    n = 32
    rng = np.random.default_rng(4)
    x = ve.sigma_max * rng.standard_normal((n, 2))
    draws = rng.standard_normal((N * (correct_steps + 1), n, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it))

    def model(y, t):
        return torch.from_numpy(target.score(y.numpy(), np.full(n, float(t)), ve))

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its linspace, exp, sigmas and step sizes in float64
    try:
        sched = module.ScoreSdeVeScheduler(sigma_min=ve.sigma_min, sigma_max=ve.sigma_max, snr=0.15,
                                           correct_steps=correct_steps)
        sched.set_timesteps(N)
        sched.set_sigmas(N)
        y = torch.from_numpy(x.copy())
        for t in sched.timesteps:
            for _ in range(correct_steps):
                y = sched.step_correct(model(y, t), y).prev_sample
            out = sched.step_pred(model(y, t), t, y)
            y, y_mean = out.prev_sample, out.prev_sample_mean
    finally:
        torch.set_default_dtype(previous)
    grid = sched.timesteps.numpy().copy()
    assert grid.dtype == np.float64
    peer_out = y_mean.numpy()
    score = lambda x, t: target.score(x, t, ve)  # noqa: E731
    options = dict(noise=draws, snr=0.15, n_corrector=max(correct_steps, 1),
                   corrector="langevin" if correct_steps else None, denoise=True)
    mine = R.predictor_corrector(score, ve, grid, x, discretization="score_sde", **options)
    assert np.max(np.abs(mine - peer_out)) <= 1e-12 * np.max(np.abs(peer_out))
    exact = R.predictor_corrector(score, ve, np.append(grid, 0.0), x, **options)
    assert np.max(np.abs(exact - peer_out)) > 1e-4 * np.max(np.abs(peer_out))


@pytest.mark.parametrize("N", [21, 100, 1000])
def test_score_sde_vp_tables_equal_diffusers_linear_betas(N):
    """score_sde's VPSDE discretises with discrete_betas = linspace(beta_min / N, beta_max / N, N),
    read at int(t (N - 1)); diffusers' DDPMScheduler with beta_start = beta_min / N and beta_end =
    beta_max / N builds the same table (in float32). Read through the public replay: with a zero
    score and no noise a reverse-diffusion step is y <- (2 - r_k) y, r_k = sqrt(1 - beta_k)."""
    diffusers = peer("diffusers")
    vp = VP()
    grid = np.linspace(1.0, 1e-3, N)
    path = R.reverse_diffusion(lambda x, t: np.zeros_like(x), vp, grid, np.ones((1, 1)), noise=np.zeros((N, 1, 1)),
                               trajectory=True, discretization="score_sde")[1][:, 0, 0]
    beta = 1.0 - (2.0 - path[1:] / path[:-1]) ** 2
    table = diffusers.DDPMScheduler(num_train_timesteps=N, beta_start=vp.beta_min / N,
                                    beta_end=vp.beta_max / N).betas.numpy()
    index = (grid * (N - 1)).astype(np.int64)
    np.testing.assert_allclose(beta, table[index].astype(np.float64), rtol=2e-6)
    assert index[0] == N - 1 and index[-1] == 0


def test_score_sde_table_index_of_a_float32_grid_is_the_float32_peers():
    """diffusers' ScoreSdeVeScheduler as shipped (float32, N = 2000, sampling_eps = 1e-5, the
    size of score_sde's high-resolution VE configs) indexes its sigmas at (t * (N - 1)).long()
    with t float32; on its own float32 timesteps the replay takes the same index at every step
    (in float64 the product truncates once to 1997 where the peer has 1998: a review). Read
    through the public replay: with a zero score and unit noise each VE step adds sqrt(v_k),
    compared with the peer's own float32 sigma^2 - adjacent^2 at its own index; a neighbouring
    index is 1% away."""
    import torch
    diffusers = peer("diffusers")
    N = 2000
    sched = diffusers.ScoreSdeVeScheduler(sigma_min=0.01, sigma_max=378.0)
    sched.set_timesteps(N)
    sched.set_sigmas(N)
    t32 = sched.timesteps.numpy()
    assert t32.dtype == np.float32
    index = (sched.timesteps * (N - 1)).long()
    peer_v = (sched.discrete_sigmas[index] ** 2 - sched.get_adjacent_sigma(index, sched.timesteps) ** 2).numpy()
    ve = VE(0.01, 378.0)
    path = R.reverse_diffusion(lambda x, t: np.zeros_like(x), ve, t32, np.zeros((1, 1)), noise=np.ones((N, 1, 1)),
                               trajectory=True, discretization="score_sde")[1][:, 0, 0]
    np.testing.assert_allclose(np.diff(path) ** 2, peer_v.astype(np.float64), rtol=2e-3)
    assert torch.equal(index, torch.from_numpy(np.floor(t32 * np.float32(N - 1)).astype(np.int64)))


def test_score_sde_discretization_against_the_exact_transitions():
    """The score_sde module docstring's figure: VP's reverse-diffusion predictor in score_sde's
    discretisation on linspace(1, 1e-3, 100) and the exact transitions on those times plus a
    last step to 0 have output laws KL 2.6e-4 apart (1.1e-7 at N = 1000, 1.2 s, not run)."""
    grid = np.linspace(1.0, 1e-3, 100)
    peer_law = R.replay_output_gaussian(R.reverse_diffusion, MEAN, COV, VP(), grid, discretization="score_sde")
    exact = R.replay_output_gaussian(R.reverse_diffusion, MEAN, COV, VP(), np.append(grid, 0.0))
    assert R.law_distances(peer_law, exact)["kl"] == pytest.approx(2.6e-4, rel=0.02)


def test_score_sde_vp_langevin_alpha_is_one_minus_the_table_beta():
    """score_sde's LangevinCorrector on VP scales its step by sde.alphas[i] = 1 - beta_i:
    e = 2 (1 - beta_i) (snr |xi| / |s|)^2. With s = 1 and xi = 1 in every coordinate the
    ratio is 1 and a step moves y by e + sqrt(2 e); 1 - beta_i against diffusers'
    DDPMScheduler table of the same linear betas (float32)."""
    diffusers = peer("diffusers")
    vp, N, snr = VP(), 100, 0.16
    grid = np.linspace(1.0, 1e-3, N)
    path = R.predictor_corrector(lambda x, t: np.ones_like(x), vp, grid, np.zeros((1, 2)), noise=np.ones((N, 1, 2)),
                                 trajectory=True, predictor=None, snr=snr, discretization="score_sde")[1][:, 0, 0]
    root = (np.sqrt(2.0 + 4.0 * np.diff(path)) - np.sqrt(2.0)) / 2.0  # sqrt(e) from e + sqrt(2 e) = step
    alpha = root**2 / (2.0 * snr**2)
    table = diffusers.DDPMScheduler(num_train_timesteps=N, beta_start=vp.beta_min / N,
                                    beta_end=vp.beta_max / N).betas.numpy().astype(np.float64)
    np.testing.assert_allclose(alpha, 1.0 - table[(grid * (N - 1)).astype(np.int64)], rtol=2e-6)


def test_score_sde_discretization_refuses_what_it_cannot_replay():
    score = R.gaussian_score(MEAN, COV, VP())
    x = np.zeros((2, 2))
    grid = np.linspace(1.0, 1e-3, 50)
    with pytest.raises(ValueError, match="discretization must be one of"):
        R.reverse_diffusion(score, VP(), grid, x, rng=np.random.default_rng(0), discretization="euler")
    for process in (OU(), FlowMatching()):
        with pytest.raises(ValueError, match="score_sde's VPSDE and VESDE: process must be a VP or a VE"):
            R.predictor_corrector(score, process, np.linspace(0.9, 0.1, 50), x, rng=np.random.default_rng(0),
                                  discretization="score_sde")
    with pytest.raises(ValueError, match="all > 0"):
        R.reverse_diffusion(score, VP(), np.append(grid, 0.0), x, rng=np.random.default_rng(0),
                            discretization="score_sde")
    with pytest.raises(ValueError, match="beta_max / N must be below 1"):
        R.reverse_diffusion(score, VP(), grid[:20], x, rng=np.random.default_rng(0), discretization="score_sde")
    # Euler–Maruyama with a given Langevin step reads none of the table: as few times as wanted
    y = R.predictor_corrector(score, VP(), grid[:20], x, rng=np.random.default_rng(0), predictor="euler_maruyama",
                              langevin_step=0.01, discretization="score_sde")
    assert np.all(np.isfinite(y))


# -- diffusers' DDPMScheduler and DDIMScheduler with the process's float64 alphas_cumprod ------------


def _diffusers_discrete_run(monkeypatch, kind, variance_or_eta, spacing, n_steps=20, n=32, own_constants=False,
                            steps_offset=0, prediction_type="epsilon"):
    """Run diffusers' DDPM / DDIM loop on the exact eps (to_torch) with known noise. Its
    alphas_cumprod are replaced by sgm_ref's float64 ones (its own are float32: a separate,
    stated difference), so both run the same discretisation in float64; with own_constants
    the scheduler runs unmodified, on its own float32 alphas_cumprod."""
    import importlib

    import torch
    diffusers = peer("diffusers")
    module = importlib.import_module(f"diffusers.schedulers.scheduling_{kind}")
    proc = DDPM()
    output = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}[prediction_type]
    model = to_torch(_mixture(), proc, output=output, signature="diffusers")
    if kind == "ddpm":
        sched = diffusers.DDPMScheduler(clip_sample=False, variance_type=variance_or_eta, timestep_spacing=spacing,
                                        steps_offset=steps_offset, prediction_type=prediction_type)
    else:
        sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing=spacing, prediction_type=prediction_type)
    if own_constants == "float64":  # its own values, widened: its step then computes in float64
        sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    elif not own_constants:
        sched.alphas_cumprod = torch.from_numpy(proc.alphas_cumprod())
    sched.set_timesteps(n_steps)
    rng = np.random.default_rng(5)
    x = rng.standard_normal((n, 2))
    draws = rng.standard_normal((n_steps, n, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it))
    y = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        eps = model(y, t)
        kwargs = {"eta": variance_or_eta} if kind == "ddim" else {}
        y = sched.step(eps, t, y, **kwargs).prev_sample
    return proc, model, sched.timesteps.numpy(), x, draws, y.numpy()


DIFFUSERS_CASES = {
    "ddpm-fixed_small": ("ddpm", "fixed_small", "trailing", R.ddpm_ancestral, {"variance": "beta_tilde"}),
    "ddpm-fixed_large": ("ddpm", "fixed_large", "linspace", R.ddpm_ancestral, {"variance": "beta"}),
    # diffusers takes exp(0.5 log var) as the standard deviation: fixed_small's step
    "ddpm-fixed_small_log": ("ddpm", "fixed_small_log", "leading", R.ddpm_ancestral, {"variance": "beta_tilde"}),
    "ddim-eta0": ("ddim", 0.0, "leading", R.ddim, {"eta": 0.0}),
    "ddim-eta1": ("ddim", 1.0, "leading", R.ddim, {"eta": 1.0}),
    # the only eta where eta^2 != eta: sigma_eta^2 = eta^2 v sigma_s^2 / sigma_t^2 (eta in place of
    # eta^2 passed every test before; review)
    "ddim-eta0.5": ("ddim", 0.5, "trailing", R.ddim, {"eta": 0.5}),
}


@pytest.mark.parametrize("case", sorted(DIFFUSERS_CASES))
def test_diffusers_discrete_schedulers_agree_with_replay(case, monkeypatch):
    """Same timesteps (grid = times (i + 1)/N, then the data at t = 0), same noise: final
    outputs agree to 1e-12 relative in float64 (measured: <= 1e-15)."""
    kind, arg, spacing, replay, options = DIFFUSERS_CASES[case]
    proc, model, timesteps, x, draws, out = _diffusers_discrete_run(monkeypatch, kind, arg, spacing)
    grid = R.timestep_grid(proc, timesteps)
    # DDPM draws on every step but the one from timestep 0; DDIM (eta > 0) on every step,
    # its last draw multiplied by sigma_eta = 0; the replays draw where the noise is non-zero
    noise = None if options.get("eta") == 0.0 else draws[:timesteps.size - 1]
    mine = replay(model.score, proc, grid, x, noise=noise, **options)
    if case == "ddpm-fixed_small" and timesteps[-1] > 0:
        # diffusers draws on the last step too (t > 0) and clamps its variance, 0 there, to
        # 1e-20: it adds 1e-10 times that draw (measured difference without this: 2.3e-10)
        mine = mine + 1e-10 * draws[timesteps.size - 1]
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))


@pytest.mark.parametrize("variance_type, variance", [("fixed_large", "beta"), ("fixed_small", "beta_tilde")])
@pytest.mark.parametrize("spacing, offset", [("trailing", 0), ("leading", 1), ("linspace", 0)])
def test_diffusers_ddpm_final_noise(monkeypatch, variance_type, variance, spacing, offset):
    """diffusers' DDPMScheduler draws on every step from a timestep t > 0, the step to the
    data too: with "trailing" (last timestep 49 at 20 steps) or "leading" with steps_offset
    1 (last timestep 1) fixed_large adds a draw of variance 1 - abar_t there, fixed_small its
    clamp 1e-20. final_noise="diffusers" replays that to 1e-12 (measured <= 1.1e-15); the
    default, Algorithm 2's z = 0, differs there (0.17 and 0.015 relative for fixed_large,
    found by a review) and nowhere else. With "linspace" the last timestep is 0: no draw."""
    proc, model, timesteps, x, draws, out = _diffusers_discrete_run(monkeypatch, "ddpm", variance_type, spacing,
                                                                    steps_offset=offset)
    grid = R.timestep_grid(proc, timesteps)
    last_drawn = timesteps[-1] > 0
    assert last_drawn == (spacing != "linspace")
    mine = R.ddpm_ancestral(model.score, proc, grid, x, noise=draws[:timesteps.size - 1 + last_drawn],
                            variance=variance, final_noise="diffusers")
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))
    default = R.ddpm_ancestral(model.score, proc, grid, x, noise=draws[:timesteps.size - 1], variance=variance)
    gap = np.max(np.abs(default - out)) / np.max(np.abs(out))
    if not last_drawn:
        assert gap <= 1e-12
    elif variance == "beta":
        assert gap > 1e-2
    else:
        assert 1e-11 < gap < 1e-9  # the 1e-10 draw
    with pytest.raises(ValueError, match="final_noise"):
        R.ddpm_ancestral(model.score, proc, grid, x, noise=draws, final_noise="always")
    with pytest.raises(ValueError, match="final_noise='diffusers' needs a DDPM process"):
        R.ddpm_ancestral(model.score, VP(), grid, x, noise=draws, final_noise="diffusers")
    with pytest.raises(ValueError, match="final_noise='diffusers' the grid must lie on the timesteps"):
        R.ddpm_ancestral(model.score, proc, grid * 0.999, x, noise=draws, final_noise="diffusers")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # diffusers 0.42 building its sigmas
def test_diffusers_euler_discrete_agrees_to_float32_rounding():
    """diffusers' EulerDiscreteScheduler on its own float32 sigmas (ending at 0), driven by the
    EDM oracle's eps at those sigmas, against karras_euler on the same sigmas in float64. Its
    step casts the sample to float32 (the derivative then comes back in float64), so the
    outputs differ by float32 rounding accumulated over the steps: measured 1.9e-7 relative
    at 20 steps, within N 2^-24 = 1.2e-6."""
    import torch
    diffusers = peer("diffusers")
    target, edm = _mixture(), EDM()
    model = to_torch(target, edm, output="eps")
    sched = diffusers.EulerDiscreteScheduler()
    sched.set_timesteps(20)
    sigmas = sched.sigmas.numpy().astype(np.float64)
    x = sigmas[0] * np.random.default_rng(0).standard_normal((64, 2))
    y = torch.from_numpy(x.copy())
    sched.is_scale_input_called = True  # the oracle takes the unscaled sample and its sigma directly
    for i, t in enumerate(sched.timesteps):
        y = sched.step(model(y, torch.tensor(sigmas[i], dtype=torch.float64)), t, y).prev_sample
    out = y.numpy()
    mine = R.karras_euler(OracleScore(model), edm, sigmas, x)
    assert np.max(np.abs(mine - out)) <= 20 * 2.0**-24 * np.max(np.abs(out))


def test_diffusers_ddim_linspace_spacing_does_not_chain():
    """diffusers' DDIMScheduler steps from timestep i to i - N_train // n whatever the spacing;
    with "linspace" the list is round(linspace(0, 999, n)), so from 999 it steps to 899 and
    then starts again at 888: not the chained DDIM of the replay on the same timesteps. Its
    exact law (found by running the peer, deterministic for eta = 0, on probe inputs) is at
    KL 1.40e-2 (TV 0.057) from the replay's at n = 10; with "leading" they are the same law.
    "trailing" chains only where n divides 1000: at n = 7 (999, 856, ...) it steps from 999
    to 857 (KL 2.11e-4 from the replay), at n = 8 it is the replay's law (docs/peers.md)."""
    import torch
    diffusers = peer("diffusers")
    proc = DDPM()
    model = to_torch(GaussianMixture([1.0], [MEAN], [COV]), proc, signature="diffusers")

    def peer_law(spacing, n):
        sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
        sched.alphas_cumprod = torch.from_numpy(proc.alphas_cumprod())
        sched.set_timesteps(n)
        y = torch.from_numpy(np.vstack([np.zeros(2), np.eye(2)]))  # start N(0, I): out = b + A x
        for t in sched.timesteps:
            y = sched.step(model(y, t), t, y).prev_sample
        b = y.numpy()[0]
        A = (y.numpy()[1:] - b).T
        return (b, A @ A.T), R.timestep_grid(proc, sched.timesteps.numpy())

    for spacing, n, kl in (("leading", 10, 0.0), ("linspace", 10, 1.401e-2), ("trailing", 8, 0.0),
                           ("trailing", 7, 2.114e-4)):
        law, grid = peer_law(spacing, n)
        mine = R.replay_output_gaussian(R.ddim, MEAN, COV, proc, grid)
        assert R.law_distances(law, mine)["kl"] == pytest.approx(kl, rel=1e-3, abs=1e-20)


def _diffusers_sigma_loop(sched, x_ve, eps_model):
    """Step a diffusers sigma scheduler (its float32 sigmas) with the EDM oracle's eps at
    sigmas[step_index] (the sigma each step reads), from the VE-scaled start x_ve; returns the
    output rescaled to VE (x_VE = x sqrt(sigma^2 + 1) for the variance-preserving samplers)."""
    import torch
    sig = sched.sigmas.numpy().astype(np.float64)
    vp = sched.__class__.__name__.startswith("DPMSolver")
    y = torch.from_numpy(x_ve / np.sqrt(sig[0] ** 2 + 1) if vp else x_ve.copy())
    sched.is_scale_input_called = True  # the oracle takes the unscaled sample and its sigma directly
    for t in sched.timesteps:
        s = sig[0 if sched.step_index is None else sched.step_index]
        y_ve = y * np.sqrt(s * s + 1) if vp else y
        y = sched.step(eps_model(y_ve, torch.tensor(s, dtype=torch.float64)), t, y).prev_sample
    return sig, y.numpy()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["HeunDiscreteScheduler", "DPMSolverMultistepScheduler",
                                  "EulerAncestralDiscreteScheduler"])
def test_diffusers_sigma_schedulers_agree_to_float32_rounding(name, monkeypatch):
    """diffusers' HeunDiscreteScheduler = karras_heun and DPMSolverMultistepScheduler
    (dpmsolver++, order 2, final sigma 0) = dpmpp_2m on the peer's own float32 sigmas
    (Heun's interleaved list read once each), same start, EDM oracle. Heun forms its step
    dt = sigma_next - sigma in float32 (exact only when the two are within a factor 2):
    measured 4.2e-10 relative at 20 steps; DPM-Solver forms alpha, sigma, lambda from its
    float32 sigmas in float32: measured 1.8e-7; EulerAncestralDiscreteScheduler = euler_ancestral
    (fed the peer's draws but its last, which it multiplies by sigma_up = 0) casts the sample
    to float32 in each step: measured 2.1e-7. All within N 2^-24 = 1.2e-6."""
    import importlib

    import torch
    diffusers = peer("diffusers")
    target, edm = _mixture(), EDM()
    eps_model = to_torch(target, edm, output="eps")
    kwargs = {"algorithm_type": "dpmsolver++", "solver_order": 2} if name.startswith("DPM") else {}
    sched = getattr(diffusers, name)(**kwargs)
    sched.set_timesteps(20)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 2)) * float(sched.sigmas[0])
    draws = rng.standard_normal((20, 64, 2))
    it = iter(torch.from_numpy(draws))
    module = importlib.import_module(type(sched).__module__)
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it), raising=False)  # Heun draws none
    sig, out = _diffusers_sigma_loop(sched, x, eps_model)
    grid = np.unique(sig)[::-1]  # Heun lists each inner sigma twice
    if name.startswith("Euler"):
        mine = R.euler_ancestral(OracleScore(eps_model), edm, grid, x, noise=draws[:-1])
    else:
        replay = R.dpmpp_2m if name.startswith("DPM") else R.karras_heun
        mine = replay(OracleScore(eps_model), edm, grid, x)
    assert np.max(np.abs(mine - out)) <= 20 * 2.0**-24 * np.max(np.abs(out))


@pytest.mark.parametrize("n, config", [(10, {"s_churn": 80.0, "s_min": 0.05, "s_max": 50.0, "s_noise": 1.007}),
                                       (20, {"s_churn": 5.0, "s_min": 0.5, "s_max": 20.0, "s_noise": 1.0,
                                             "sigma_max": 10.0})])
def test_diffusers_karras_ve_scheduler_is_karras_stochastic(n, config, monkeypatch):
    """diffusers' (deprecated) KarrasVeScheduler driven by its pipeline's loop (add_noise_to_input,
    step, step_correct unless sigma_prev = 0), its model output (D - x_hat) / sigma_hat from the
    EDM oracle: karras_stochastic on its noise levels schedule[timesteps] and 0, fed its draws
    where gamma > 0 (it draws every step), agrees to 1e-12 relative (measured 4.4e-15). Its
    schedule is made float64 (it keeps float32); note its values are sigma_max^2 (sigma_min^2 /
    sigma_max^2)^(i / (n - 1)), the squares of geometric sigmas, as diffusers has it."""
    import importlib

    import torch
    peer("diffusers")
    module = importlib.import_module("diffusers.schedulers.deprecated.scheduling_karras_ve")
    model, edm = to_torch(_mixture(), EDM()), EDM()
    sched = module.KarrasVeScheduler(**config)
    sched.set_timesteps(n)
    c = sched.config
    levels = [c.sigma_max**2 * (c.sigma_min**2 / c.sigma_max**2) ** (i / (n - 1)) for i in sched.timesteps.tolist()]
    assert np.allclose(sched.schedule.numpy(), levels, rtol=1e-6)  # its float32 values
    sched.schedule = torch.tensor(levels, dtype=torch.float64)
    grid = np.append(sched.schedule.numpy()[sched.timesteps.numpy()], 0.0)
    rng = np.random.default_rng(2)
    x = grid[0] * rng.standard_normal((16, 2))
    draws = rng.standard_normal((n, 16, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: next(it))
    y = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        sigma, sigma_prev = sched.schedule[t], (sched.schedule[t - 1] if t > 0 else 0)
        y_hat, s_hat = sched.add_noise_to_input(y, sigma)
        out = sched.step((model(y_hat, s_hat) - y_hat) / s_hat, s_hat, sigma_prev, y_hat)
        if sigma_prev != 0:
            y2 = out.prev_sample
            out = sched.step_correct((model(y2, sigma_prev) - y2) / sigma_prev, s_hat, sigma_prev, y_hat, y2,
                                     out.derivative)
        y = out.prev_sample
    gamma = np.where((grid[:-1] >= c.s_min) & (grid[:-1] <= c.s_max), min(c.s_churn / n, 2**0.5 - 1), 0.0)
    assert 0 < np.sum(gamma > 0) < n
    mine = R.karras_stochastic(OracleScore(model), edm, grid, x, noise=draws[gamma > 0], s_churn=c.s_churn,
                               s_tmin=c.s_min, s_tmax=c.s_max, s_noise=c.s_noise)
    out = y.numpy()
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))



# -- the same schedulers unmodified: the replay fed diffusers' own float32 alphas_cumprod -----------


@pytest.mark.parametrize("case", sorted(DIFFUSERS_CASES))
def test_diffusers_discrete_schedulers_on_their_own_constants(case, monkeypatch):
    """diffusers' DDPMScheduler / DDIMScheduler as shipped (float32 alphas_cumprod), same eps
    model and noise, against the replay with alphas_cumprod="diffusers" (the same float32
    values, DDPM.diffusers_alphas_cumprod, bit for bit).

    Measured at 20 steps: 3.3e-7 (fixed_small), 2.2e-7 (fixed_large), 7.3e-8 (DDIM eta 0),
    6.9e-8 (eta 1) relative, within N 2^-24 = 1.2e-6. The cause is diffusers' step, not the
    constants: it forms its coefficients (1 - abar, abar_t / abar_prev, their square roots)
    from the float32 table as float32 tensors before they multiply the float64 sample. Fed the
    same values widened to float64, its step computes in float64 and agrees with the replay
    to <= 1.9e-15; the replay on sgm_ref's float64 constants is then 3.4e-7 to 8.8e-7 away
    (the float32 rounding of the table itself)."""
    kind, arg, spacing, replay, options = DIFFUSERS_CASES[case]
    bound = 20 * 2.0**-24
    for own, tolerance in ((True, bound), ("float64", 1e-12)):
        proc, model, timesteps, x, draws, out = _diffusers_discrete_run(monkeypatch, kind, arg, spacing,
                                                                        own_constants=own)
        grid = R.timestep_grid(proc, timesteps)
        noise = None if options.get("eta") == 0.0 else draws[:timesteps.size - 1]
        mine = replay(model.score, proc, grid, x, noise=noise, alphas_cumprod="diffusers", **options)
        if case == "ddpm-fixed_small" and timesteps[-1] > 0:
            mine = mine + 1e-10 * draws[timesteps.size - 1]  # its clamped variance 1e-20 (see above)
        assert np.max(np.abs(mine - out)) <= tolerance * np.max(np.abs(out)), own
    # the float64 constants are a different (if close) discretisation: seen beyond rounding
    theirs = replay(model.score, proc, grid, x, noise=noise, **options)
    if case == "ddpm-fixed_small" and timesteps[-1] > 0:
        theirs = theirs + 1e-10 * draws[timesteps.size - 1]
    assert np.max(np.abs(theirs - out)) > 1e-7 * np.max(np.abs(out))


@pytest.mark.parametrize("prediction_type", ["sample", "v_prediction"])
@pytest.mark.parametrize("case", ["ddpm-fixed_small", "ddim-eta1"])
def test_diffusers_x0_and_v_models_on_their_own_constants(case, prediction_type, monkeypatch):
    """An x0 or v model (diffusers' prediction_type "sample", "v_prediction"): diffusers forms
    x0_hat (and DDIM's eps_hat) from that output with its own alphas_cumprod. Run on its own
    table widened to float64 (its step then computes in float64), the replay with
    prediction_type set matches it to 1e-12 at 20 steps (measured <= 8.7e-16). Before, the
    replay took eps_hat from the score with the process's float64 constants and parted from
    it by the table's float32 rounding: 2.1e-7 to 2.4e-7 relative here (up to 5e-7 at other
    step counts; a review); it still does without the option."""
    kind, arg, spacing, replay, options = DIFFUSERS_CASES[case]
    proc, model, timesteps, x, draws, out = _diffusers_discrete_run(
        monkeypatch, kind, arg, spacing, own_constants="float64", prediction_type=prediction_type)
    grid = R.timestep_grid(proc, timesteps)
    if kind == "ddpm":  # "trailing": it draws on the step to the data too (test_diffusers_ddpm_final_noise)
        options = {**options, "final_noise": "diffusers"}
    noise = draws[:timesteps.size - (kind == "ddim" or timesteps[-1] == 0)]
    mine = replay(model.score, proc, grid, x, noise=noise, alphas_cumprod="diffusers",
                  prediction_type=prediction_type, **options)
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))
    eps_model = replay(model.score, proc, grid, x, noise=noise, alphas_cumprod="diffusers", **options)
    assert np.max(np.abs(eps_model - out)) > 1e-8 * np.max(np.abs(out))
    # without the peer's table the choice changes nothing but rounding
    a = replay(model.score, proc, grid, x, noise=noise, prediction_type=prediction_type, **options)
    b = replay(model.score, proc, grid, x, noise=noise, **options)
    assert np.max(np.abs(a - b)) <= 1e-13 * np.max(np.abs(b))
    with pytest.raises(ValueError, match=r"prediction_type must be one of \('epsilon', 'sample', 'v_prediction'\)"):
        replay(model.score, proc, grid, x, noise=noise, prediction_type="v", **options)


def test_diffusers_variance_type_names_are_translated():
    """diffusers' variance_type names given as variance are refused with the replay's own
    names for them (the message only listed 'beta_tilde' and 'beta'); fixed_small_log is
    fixed_small's step (DIFFUSERS_CASES["ddpm-fixed_small_log"] runs it)."""
    proc, grid = _ddpm_grid(4)
    for name, pattern in (("fixed_small", "'fixed_small' .*is 'beta_tilde', 'fixed_large' is 'beta'"),
                          ("fixed_large", "'fixed_large' is 'beta'"), ("learned_range", "learned variances are not")):
        with pytest.raises(ValueError, match=r"^variance must be one of \('beta_tilde', 'beta'\), got diffusers' "
                                             r"variance_type '" + name + "'.*" + pattern):
            R.ddpm_ancestral(lambda x, t: -x, proc, grid, np.zeros((2, 2)), np.random.default_rng(0), variance=name)
    with pytest.raises(ValueError, match=r"^variance must be one of \('beta_tilde', 'beta'\), got 'tilde'$"):
        R.ddpm_ancestral(lambda x, t: -x, proc, grid, np.zeros((2, 2)), np.random.default_rng(0), variance="tilde")


def test_diffusers_float32_table_against_the_float64_one():
    """The ddpm module docstring's sizes of diffusers' float32 rounding of alphas_cumprod, read
    from the installed peer's own table: at most 3.6e-7 relative (linear), 9.3e-7
    (scaled_linear), and 1.3e-5 at squaredcos_cap_v2's last timestep, 5.6e-7 before it (it
    said "up to ~1e-6"; review)."""
    diffusers = peer("diffusers")
    for schedule, start, end, worst, before_last in (("linear", 1e-4, 0.02, 3.6e-7, None),
                                                     ("scaled_linear", 0.00085, 0.012, 9.3e-7, None),
                                                     ("squaredcos_cap_v2", 1e-4, 0.02, 1.3e-5, 5.6e-7)):
        theirs = diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=start,
                                         beta_end=end).alphas_cumprod.numpy().astype(np.float64)
        err = np.abs(theirs / DDPM(schedule, start, end).alphas_cumprod() - 1)
        assert np.max(err) == pytest.approx(worst, rel=0.05), schedule
        if before_last is not None:
            assert np.argmax(err) == 999 and np.max(err[:-1]) == pytest.approx(before_last, rel=0.05)


def test_alphas_cumprod_option():
    """The float64 table given explicitly is the default; the option reaches the exact law;
    bad tables and grids are refused with the fix named."""
    proc, grid = _ddpm_grid(10)
    x = np.random.default_rng(0).standard_normal((16, 2))
    score = GaussianMixture([1.0], [MEAN], [COV]).score
    s = lambda y, t: score(y, t, proc)  # noqa: E731
    for replay, options in ((R.ddim, {}), (R.ddpm_ancestral, {"rng": np.random.default_rng(1)})):
        a = replay(s, proc, grid, x, **options)
        options = {k: np.random.default_rng(1) for k in options}
        b = replay(s, proc, grid, x, alphas_cumprod=proc.alphas_cumprod(), **options)
        assert np.max(np.abs(a - b)) <= 1e-13 * np.max(np.abs(a))
    law64 = R.replay_output_gaussian(R.ddim, MEAN, COV, proc, grid)
    law32 = R.replay_output_gaussian(R.ddim, MEAN, COV, proc, grid, alphas_cumprod="diffusers")
    assert 0 < R.law_distances(law32, law64)["kl"] < 1e-9  # close, not equal: the float32 table
    for kwargs, pattern in (
            ({"alphas_cumprod": "float32"}, "alphas_cumprod must be 'diffusers'"),
            ({"alphas_cumprod": np.ones(5)}, "alphas_cumprod must have shape (1000,)"),
            ({"alphas_cumprod": proc.alphas_cumprod()[::-1]}, "strictly decreasing values in [0, 1]"),
            ({"grid": np.append(grid[:-1], 0.0005), "alphas_cumprod": "diffusers"}, "build it with timestep_grid"),
            ({"process": VP(), "grid": np.linspace(1, 0.01, 5), "alphas_cumprod": "diffusers"}, "needs a DDPM")):
        args = {"process": proc, "grid": grid, **kwargs}
        with pytest.raises(ValueError) as err:
            R.ddim(s, args["process"], args["grid"], x, alphas_cumprod=args["alphas_cumprod"])
        assert pattern in str(err.value), str(err.value)


def _drive_zero_snr_scheduler(sched, model, monkeypatch):
    """(x, draws, y): 32 seeded start points in d = 2, the 10 steps' noise fed to the scheduler
    in place of its randn_tensor, and its final sample (a tensor) after stepping `model`."""
    import importlib

    import torch
    rng = np.random.default_rng(5)
    x = rng.standard_normal((32, 2))
    draws = rng.standard_normal((10, 32, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(importlib.import_module(type(sched).__module__), "randn_tensor", lambda *a, **k: next(it))
    y = torch.from_numpy(x.copy())
    for t in sched.timesteps:
        y = sched.step(model(y, t), t, y).prev_sample
    return x, draws, y


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_a_zero_terminal_snr_table_is_replayed_below_its_last_timestep(kind, monkeypatch):
    """diffusers' rescale_betas_zero_snr=True ends alphas_cumprod at 0 (timestep 999). A
    "leading" grid (900 down) never reads it: the replay fed that table matches the peer at
    float32's rounding (measured 2.0e-8 DDIM, 1.6e-7 DDPM). A grid from 999 divides by
    sqrt(0) (the peer itself gives NaN for an eps model) and is refused, naming the option.
    Found by a review: every table with a 0 was refused as not in (0, 1]."""
    diffusers = peer("diffusers")
    proc = DDPM()
    model = to_torch(_mixture(), proc, signature="diffusers")
    cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}[kind]
    sched = cls(clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="leading")
    table = sched.alphas_cumprod.numpy()
    assert table[-1] == 0.0
    sched.set_timesteps(10)
    x, draws, y = _drive_zero_snr_scheduler(sched, model, monkeypatch)
    grid = R.timestep_grid(proc, sched.timesteps.numpy())
    if kind == "ddim":
        mine = R.ddim(model.score, proc, grid, x, alphas_cumprod=table)
    else:
        mine = R.ddpm_ancestral(model.score, proc, grid, x, noise=draws[:9], alphas_cumprod=table)
    assert np.max(np.abs(mine - y.numpy())) <= 10 * 2.0**-24 * np.max(np.abs(mine))
    trailing = R.timestep_grid(proc, R.ddim_timesteps(10, spacing="trailing"))
    replay = R.ddim if kind == "ddim" else R.ddpm_ancestral
    message = r"alphas_cumprod\[999\] = 0 .*rescale_betas_zero_snr.*start below timestep 999"
    with pytest.raises(ValueError, match=message):
        replay(model.score, proc, trailing, x, rng=np.random.default_rng(0), alphas_cumprod=table)


@pytest.mark.parametrize("prediction_type", ["v_prediction", "sample"])
@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_a_zero_terminal_snr_table_from_its_last_timestep_for_a_v_or_x0_model(kind, prediction_type, monkeypatch):
    """Lin et al. (2024)'s setting: rescale_betas_zero_snr=True, "trailing" (the first step
    from timestep 999, where alphas_cumprod = 0) and a v model. diffusers' step is defined
    there (x0_hat = -v, eps_hat = y; an x0 model likewise), and the replay with
    prediction_type follows it: 10 steps on the table widened to float64 agree to 1e-12
    (measured <= 8.6e-16). Only an eps model is refused there. Before, every grid from 999
    was refused. (DDIM with eta > 0 is left out: there diffusers' sqrt(1 - abar_prev -
    std^2) is the square root of a rounding, 1.1e-16, where the replay's is exactly 0:
    2.6e-8 at step 1.)"""
    import torch
    diffusers = peer("diffusers")
    proc = DDPM()
    output = {"sample": "x0", "v_prediction": "v"}[prediction_type]
    model = to_torch(_mixture(), proc, output=output, signature="diffusers")
    cls = {"ddim": diffusers.DDIMScheduler, "ddpm": diffusers.DDPMScheduler}[kind]
    sched = cls(clip_sample=False, rescale_betas_zero_snr=True, timestep_spacing="trailing",
                prediction_type=prediction_type)
    table = sched.alphas_cumprod.numpy()
    sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    sched.set_timesteps(10)
    assert table[-1] == 0.0 and sched.timesteps[0] == 999
    x, draws, y = _drive_zero_snr_scheduler(sched, model, monkeypatch)
    out = y.numpy()
    assert np.all(np.isfinite(out))
    grid = R.timestep_grid(proc, sched.timesteps.numpy())
    if kind == "ddim":
        mine = R.ddim(model.score, proc, grid, x, alphas_cumprod=table, prediction_type=prediction_type)
    else:  # "trailing": its last step (from timestep 99) draws too
        mine = R.ddpm_ancestral(model.score, proc, grid, x, noise=draws, alphas_cumprod=table,
                                prediction_type=prediction_type, final_noise="diffusers")
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))
    replay = R.ddim if kind == "ddim" else R.ddpm_ancestral
    with pytest.raises(ValueError, match=r"alphas_cumprod\[999\] = 0 .*prediction_type='v_prediction' or 'sample'"):
        replay(model.score, proc, grid, x, rng=np.random.default_rng(0), alphas_cumprod=table)


def test_a_bad_prediction_type_is_refused():
    """prediction_type takes diffusers' three names; another is named, with the choices."""
    proc = DDPM()
    grid = R.timestep_grid(proc, R.ddim_timesteps(5))
    x = np.zeros((2, 2))
    for replay in (R.ddim, R.ddpm_ancestral):
        with pytest.raises(ValueError, match=r"prediction_type must be one of .*'epsilon'.*got 'eps'"):
            replay(lambda y, t: -y, proc, grid, x, rng=np.random.default_rng(0), prediction_type="eps")


def test_timestep_grid_names_what_diffusers_cannot_step_either():
    """Two of diffusers' own lists that no grid can follow, each refused with its cause (a
    review found the first printed all 1000 timesteps, the second only "strictly
    decreasing"): "leading" with steps_offset=1 at n = N starts at timestep N, which its
    step cannot index; and with set_alpha_to_one=False and steps_offset=0 the last step,
    from timestep 0 to alphas_cumprod[0], returns its sample (to float32 rounding)."""
    import torch
    diffusers = peer("diffusers")
    proc = DDPM()
    sched = diffusers.DDIMScheduler(steps_offset=1)
    sched.set_timesteps(1000)
    np.testing.assert_array_equal(sched.timesteps.numpy(), R.ddim_timesteps(1000, steps_offset=1))
    with pytest.raises(IndexError):
        sched.step(torch.zeros(2, 2), sched.timesteps[0], torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"^timesteps must lie in 0\.\.999, got timesteps\[0\] = 1000 \(steps_offset"):
        R.timestep_grid(proc, R.ddim_timesteps(1000, steps_offset=1))
    sched = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False)
    sched.set_timesteps(10)
    assert sched.timesteps[-1] == 0
    y = torch.from_numpy(np.random.default_rng(0).standard_normal((4, 2)))
    out = sched.step(torch.from_numpy(np.random.default_rng(1).standard_normal((4, 2))), 0, y).prev_sample
    assert np.max(np.abs(out.numpy() - y.numpy())) <= 1e-6 * np.max(np.abs(y.numpy()))
    with pytest.raises(ValueError, match="final = 0.001 is the last timestep's own time.*set_alpha_to_one=False"):
        R.timestep_grid(proc, sched.timesteps.numpy(), final=proc.time_of_timestep(0))
    grid = R.timestep_grid(proc, sched.timesteps.numpy()[:-1], final=proc.time_of_timestep(0))  # the fix
    assert grid[-1] == proc.time_of_timestep(0)


def test_a_churned_noise_level_beyond_the_process_names_it_and_the_fix():
    """k-diffusion churns on EDM without bound; on a bounded process the churned level can
    leave it. The message shows the plain number (it showed np.float64(215.19...)) and the
    fix, for EDM's t_max too (which gave no fix)."""
    score = lambda x, t: -x  # noqa: E731
    for process, grid, number in ((VP(), np.linspace(1.0, 0.01, 5), "215.19"), (EDM(10.0), [10.0, 1.0, 0.0], "14.14")):
        with pytest.raises(ValueError) as err:
            R.karras_stochastic(score, process, grid, np.ones((2, 2)), rng=np.random.default_rng(0), s_churn=5.0)
        message = str(err.value)
        assert f"= {number}" in message and "np.float64" not in message and "lower s_churn" in message, message


def test_a_grid_of_ddpm_timesteps_is_named():
    """compare_sampler(..., DDPM(), ddim_timesteps(10), ...) and every replay: the grid is
    diffusers' timesteps, and timestep_grid makes it sgm_ref's times."""
    from sgm_ref import compare_sampler

    message = (r"^grid must start at T <= 1\.0 for DDPM\(.*\), got 900\.0; 900 looks like a diffusers timestep, "
               r"not a time: a grid of timesteps is sgm_ref\.replays\.timestep_grid\(process, timesteps\)")
    timesteps = R.ddim_timesteps(10)
    with pytest.raises(ValueError, match=message):
        compare_sampler(lambda score, grid, x, noises: None, "ddim", DDPM(), timesteps,
                        ([1.0, -1.0], [[0.25, 0.0], [0.0, 0.5]]), 10, np.random.default_rng(0))
    for replay in (R.ddim, R.ddpm_ancestral, R.euler_maruyama, R.karras_euler):
        with pytest.raises(ValueError, match=message):
            replay(lambda x, t: -x, DDPM(), timesteps, np.ones((3, 2)), np.random.default_rng(0))
    grid = R.timestep_grid(DDPM(), timesteps)  # the fix works
    assert grid[0] == 0.901 and grid[-1] == 0.0
    R.ddim(lambda x, t: -x, DDPM(), grid, np.ones((3, 2)))
    with pytest.raises(ValueError, match=r"^grid must start at T <= 1\.0 for DDPM\(.*\), got 1\.5$"):
        R.ddim(lambda x, t: -x, DDPM(), [1.5, 0.5, 0.0], np.ones((3, 2)))  # not a timestep: no pointer
    with pytest.raises(ValueError, match=r"^grid must start at T <= 1\.0 for DDPM\(.*\), got 3\.0$"):
        R.ddim(lambda x, t: -x, DDPM(), [3.0, 0.5, 0.0], np.ones((3, 2)))  # 0.5 is a time: no pointer either


def _heun_law_mp(alpha_sigma, grid, mean, lam):
    """mpmath (40 digits): the law of Heun on the EDM ODE in y = x / alpha, s = sigma / alpha
    (karras_heun: d = (y - D) / s, D = m + lam / (lam + s^2) (y - m) per coordinate of a
    diagonal cov, Euler onto s = 0), from N(0, sigma_T^2 I); per step y - m <- a (y - m)."""
    import mpmath as mp

    with mp.workdps(40):
        ends = [alpha_sigma(mp.mpf(float(t))) for t in grid]
        s = [sig / a for a, sig in ends]
        mean_out, var_out = [], []
        for mi, li in zip(map(mp.mpf, mean), map(mp.mpf, lam)):
            g = lambda x: x / (li + x**2)  # noqa: E731  d = g(s) (y - m)
            mu, var = mp.mpf(0), (ends[0][1] / ends[0][0]) ** 2
            for k in range(len(s) - 1):
                h = s[k + 1] - s[k]
                a = 1 + g(s[k]) * h if s[k + 1] == 0 else 1 + (g(s[k]) + g(s[k + 1]) * (1 + g(s[k]) * h)) / 2 * h
                mu, var = mi + a * (mu - mi), a**2 * var
            mean_out.append(float(mu * ends[-1][0]))
            var_out.append(float(var * ends[-1][0] ** 2))
    return np.array(mean_out), np.array(var_out)


def test_heun_law_to_full_precision_on_short_grids():
    """replay_output_gaussian of karras_heun (sampler_output_gaussian's probability flow off
    the variance-preserving processes) against an mpmath propagation of the Heun recursion, on
    1- to 7-step grids. It took b from the start point 0 and A e_i = out(e_i) - b: on short
    grids out(e_i) and b nearly cancel and the law was off by up to 7.4e-12 relative here (EDM
    80 -> 0.002; 2.7e-9 to t0 = 1e-5; review). Now A comes from the mean-zero target (b = 0)
    and b from the start point alpha_T m: within 1e-13. (SubVP and FlowMatching keep ~1e-10
    there: the replay's own rounding, k-diffusion's d = (x - D) / sigma amplifying D's by
    sigma_i / sigma_{i+1} on a long step, which the law reproduces as the replay computes it.)"""
    from sgm_ref.metrics import sampler_output_gaussian
    from sgm_ref.samplers import time_grid

    mean, lam = np.array([0.7, -1.3]), np.array([0.5, 2.0])
    ve = VE()
    processes = ((EDM(), 80.0, 0.002, lambda t: (1, t)),
                 (ve, 1.0, 1e-3, lambda t: (1, ve.sigma_min * (ve.sigma_max / ve.sigma_min) ** t)))
    worst = 0.0
    for process, T, t0, alpha_sigma in processes:
        for n in range(1, 8):
            for kind in ("uniform", "geometric"):
                grid = time_grid(T, t0, n, kind)
                m, C = sampler_output_gaussian(mean, np.diag(lam), process, grid, "probability_flow")
                m_ref, v_ref = _heun_law_mp(alpha_sigma, grid, mean, lam)
                assert C[0, 1] == 0.0
                worst = max(worst, np.max(np.abs(m / m_ref - 1)), np.max(np.abs(np.diag(C) / v_ref - 1)))
    for n in range(2, 8):  # k-diffusion's sigmas, the last step Euler onto 0
        grid = EDM().karras_sigmas(n, 0.002, 80.0)
        m, C = R.replay_output_gaussian(R.karras_heun, mean, np.diag(lam), EDM(), grid)
        m_ref, v_ref = _heun_law_mp(lambda t: (1, t), grid, mean, lam)
        worst = max(worst, np.max(np.abs(m / m_ref - 1)), np.max(np.abs(np.diag(C) / v_ref - 1)))
    assert worst < 1e-13, worst


def _alpha_sigma_mp(process):
    """(alpha_t, sigma_t) in mpmath for the processes whose transition is not a VP's integrated beta."""
    import mpmath as mp

    if isinstance(process, VE):
        return lambda t: (mp.mpf(1), mp.mpf(process.sigma_min) * (mp.mpf(process.sigma_max) / process.sigma_min) ** t)
    if isinstance(process, EDM):
        return lambda t: (mp.mpf(1), t)
    if isinstance(process, FlowMatching):
        return lambda t: (1 - t, t)
    lo, hi = mp.mpf(process.beta_min), mp.mpf(process.beta_max)  # SubVP
    B = lambda t: lo * t + (hi - lo) * t * t / 2  # noqa: E731
    return lambda t: (mp.exp(-B(t) / 2), -mp.expm1(-B(t)))


def test_transition_variance_on_fine_steps_to_full_precision():
    """The variance v = sigma_t^2 - r^2 sigma_s^2 of a step, read through a public replay:
    reverse_diffusion with a zero score from x = 0 fed xi = 1 returns sqrt(v) (and DDPM's
    "beta" variance the same), against mpmath (40 digits), steps of 1e-8 to 0.3 relative.
    v was -sigma_t^2 expm1(lam_t - lam_s), whose difference of two log-SNRs cancels as the
    variances do (review): sqrt(v) was off by 2.0e-9 relative at VE's t = 0.5 on a step of
    1e-8, 3.1e-9 for EDM, 4.4e-8 for FlowMatching at t = 1e-4, and for VE at t = 1e-10 by
    2.6e-5 on a 1% step, 100% on a 1e-8 one. Now r^2 c2 from the closed forms: within 2e-15
    (measured 7e-16)."""
    import mpmath as mp

    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    worst = 0.0
    with mp.workdps(40):
        for process, times in ((VE(), (1e-10, 1e-3, 0.5, 0.9)), (EDM(), (1e-3, 0.5, 80.0)),
                               (SubVP(), (1e-4, 0.3, 0.9)), (FlowMatching(), (1e-4, 0.5, 0.99))):
            alpha_sigma = _alpha_sigma_mp(process)
            for t_lo in times:
                for rel in (1e-8, 1e-5, 1e-2, 0.3):
                    t_hi = min(t_lo * (1 + rel), process.t_max)
                    (a1, s1), (a0, s0) = alpha_sigma(mp.mpf(t_hi)), alpha_sigma(mp.mpf(t_lo))
                    exact = mp.sqrt(s1**2 - (a1 / a0) ** 2 * s0**2)
                    for replay, options in ((R.reverse_diffusion, {}), (R.ddpm_ancestral, {"variance": "beta"})):
                        y = replay(zero, process, [t_hi, t_lo], np.zeros((1, 1)), noise=np.ones((1, 1, 1)),
                                   **options)
                        worst = max(worst, abs(float(y[0, 0] / exact - 1)))
    assert worst < 2e-15, worst


def test_a_table_without_noise_at_timestep_0_is_refused_and_the_fix_matches_diffusers(monkeypatch):
    """diffusers' DDPMScheduler(beta_start=0) has alphas_cumprod[0] = 1: its step from timestep 0
    divides 0 by 0 and returns NaN. The replays fed that table returned NaN with a
    RuntimeWarning (ddpm_ancestral) or blamed eta (ddim: "eta = 0.0 makes sigma_eta exceed
    sigma_s"; review). Now both say why and how: timestep 0 is the data already, so dropping
    it steps there; diffusers on those timesteps (custom, its float32 table widened to
    float64) agrees with the replay to 1e-12 (measured 3.8e-16)."""
    import importlib

    import torch
    diffusers = peer("diffusers")
    proc = DDPM()
    model = to_torch(_mixture(), proc, signature="diffusers")
    sched = diffusers.DDPMScheduler(beta_start=0.0, clip_sample=False)
    table = sched.alphas_cumprod.numpy().astype(np.float64)
    assert table[0] == 1.0
    sched.alphas_cumprod = sched.alphas_cumprod.to(torch.float64)
    sched.set_timesteps(10)
    timesteps = sched.timesteps.numpy()
    assert timesteps[-1] == 0
    rng = np.random.default_rng(4)
    x = rng.standard_normal((16, 2))
    draws = rng.standard_normal((9, 16, 2))

    def run(steps):
        it = iter(torch.from_numpy(draws))
        monkeypatch.setattr(importlib.import_module(type(sched).__module__), "randn_tensor", lambda *a, **k: next(it))
        y = torch.from_numpy(x.copy())
        for t in steps:
            y = sched.step(model(y, t), t, y).prev_sample
        return y.numpy()

    assert np.all(np.isnan(run(sched.timesteps)))  # the peer's own NaN
    grid = R.timestep_grid(proc, timesteps)
    message = r"alphas_cumprod\[0\] = 1 .*beta_start=0.* at grid\[9\].*timestep_grid\(process, timesteps\[:-1\]\)"
    with pytest.raises(ValueError, match=message):
        R.ddpm_ancestral(model.score, proc, grid, x, noise=draws, alphas_cumprod=table)
    with pytest.raises(ValueError, match=message):
        R.ddim(model.score, proc, grid, x, alphas_cumprod=table)
    sched.set_timesteps(timesteps=list(timesteps[:-1]))
    out = run(sched.timesteps)
    mine = R.ddpm_ancestral(model.score, proc, R.timestep_grid(proc, timesteps[:-1]), x, noise=draws,
                            alphas_cumprod=table, final_noise="diffusers")  # its last step, from 100, draws
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))


def test_ddim_eta_one_is_not_refused_for_a_rounding():
    """DDIM with eta = 1 has sigma_eta^2 = v sigma_s^2 / sigma_t^2 <= sigma_s^2 exactly, but the
    rounded product exceeded sigma_s^2 by an ulp on long steps to small times (FlowMatching
    0.55 -> 1e-8, EDM 0.85 -> 1e-10), and ddim refused it with "use eta <= 1" (review). It
    now runs and is DDPM's beta-tilde step (eta = 1), path by path to 1e-14, and eta > 1
    that truly exceeds is still refused."""
    rng = np.random.default_rng(0)
    for process, grid in ((FlowMatching(), [0.55, 1e-8]), (EDM(), [0.85, 1e-10])):
        score = R.gaussian_score(MEAN, COV, process)
        x = float(process.sigma(grid[0])) * rng.standard_normal((8, 2))
        noise = rng.standard_normal((1, 8, 2))
        y = R.ddim(score, process, grid, x, noise=noise, eta=1.0)
        ref = R.ddpm_ancestral(score, process, grid, x, noise=noise)
        assert np.max(np.abs(y - ref)) <= 1e-14 * np.max(np.abs(ref))
        with pytest.raises(ValueError, match="use eta <= 1"):
            R.ddim(score, process, grid, x, noise=noise, eta=1.5)


@pytest.mark.parametrize("name", sorted(R.REPLAYS))
def test_a_flag_that_is_not_a_bool_is_named(name):
    """trajectory (every replay) and denoise (score_sde's three) must be True or False: the
    string "no" was read as true (review), so denoise="no" returned the denoised mean and
    trajectory="no" a tuple, without a word; sgm_ref.samplers already refused it. NumPy bools
    still pass."""
    replay = R.REPLAYS[name]
    process, grid = (EDM(), [10.0, 1.0, 0.0]) if name in ("karras_euler", "karras_heun", "karras_stochastic",
                                                         "euler_ancestral", "dpmpp_2m") else (VP(), [1.0, 0.5, 0.1])
    score = R.gaussian_score(MEAN, COV, process)
    options = {"s_churn": 1.0} if name == "karras_stochastic" else {}
    x = np.ones((2, 2))
    flags = ["trajectory"] + (["denoise"] if name in ("euler_maruyama", "reverse_diffusion",
                                                      "predictor_corrector") else [])
    if name == "predictor_corrector":
        options["langevin_step"] = 0.01
    for flag in flags:
        for bad in ("no", 0, None):
            with pytest.raises(ValueError, match=rf"^{flag} must be True or False, got {bad!r}$"):
                replay(score, process, grid, x, np.random.default_rng(0), **{flag: bad, **options})
        replay(score, process, grid, x, np.random.default_rng(0), **{flag: np.bool_(False), **options})


def test_bad_arguments_are_named():
    """Each refused with a message naming the argument (review): s_tmax an array (numpy's
    "truth value of an array ... is ambiguous"), replay_output_gaussian given options it sets
    itself or a replay that is not callable (TypeError), timesteps of two dimensions (read
    flattened) or none (a grid of one time), law_distances given a law that is not a pair."""
    score = R.gaussian_score(MEAN, COV, EDM())
    with pytest.raises(ValueError, match=r"^s_tmax must be a real number, got array"):
        R.karras_euler(score, EDM(), [10.0, 1.0, 0.0], np.ones((2, 2)), np.random.default_rng(0), s_churn=1.0,
                       s_tmax=np.array([np.inf, 1.0]))
    y = R.karras_euler(score, EDM(), [10.0, 1.0, 0.0], np.ones((2, 2)), np.random.default_rng(0), s_churn=1.0,
                       s_tmax=np.array(np.inf))  # a 0-d inf is still no bound
    assert np.all(np.isfinite(y))
    proc, grid = _ddpm_grid(4)
    for option in ("rng", "noise", "trajectory"):
        with pytest.raises(ValueError, match=rf"options \['{option}'\] are set by replay_output_gaussian"):
            R.replay_output_gaussian(R.ddim, MEAN, COV, proc, grid, **{option: None})
    with pytest.raises(ValueError, match="replay must be a replay function"):
        R.replay_output_gaussian("ddim", MEAN, COV, proc, grid)
    for steps, shape in (([[999, 499]], r"\(1, 2\)"), ([], r"\(0,\)")):
        with pytest.raises(ValueError, match=rf"^timesteps must be a non-empty 1-D sequence.*got shape {shape}$"):
            R.timestep_grid(proc, steps)
    assert R.timestep_grid(proc, 999).tolist() == [1.0, 0.0]  # one timestep as a number
    law = (np.zeros(2), np.eye(2))
    for bad, what in (((np.zeros(2), np.eye(2), 1), "tuple of length 3"), (None, "NoneType")):
        with pytest.raises(ValueError, match=rf"^law1 must be a pair \(mean, cov\).*got {what}$"):
            R.law_distances(law, bad)  # was "too many values to unpack", a TypeError for None


def test_euler_maruyama_step_size_refuses_a_grid_ending_at_0():
    """With step_size a step starts from every grid time: on a grid ending at 0 the last read
    the score at t = 0 (the data, where a model's score is undefined) and stepped to t = -h,
    returning a number without a word (review; discretization="score_sde" already refused
    such grids). Now refused, naming the fix; the same grid ending at 1e-3 runs."""
    score = R.gaussian_score(MEAN, COV, VP())
    called = []

    def spy(x, t):
        called.append(float(t[0]))
        return score(x, t)

    x = np.zeros((2, 2))
    with pytest.raises(ValueError, match=r"step_size .* the last from grid\[-1\] = 0 to -0\.1.*end the grid at t0 > 0"):
        R.euler_maruyama(spy, VP(), [1.0, 0.5, 0.0], x, np.random.default_rng(0), step_size=0.1)
    assert called == []
    y = R.euler_maruyama(spy, VP(), [1.0, 0.5, 1e-3], x, np.random.default_rng(0), step_size=0.1)
    assert called == [1.0, 0.5, 1e-3] and np.all(np.isfinite(y))


@pytest.mark.parametrize("replay", [R.karras_euler, R.karras_heun, R.euler_ancestral, R.dpmpp_2m])
def test_sigma_samplers_name_a_start_where_alpha_underflows(replay):
    """VP(0.1, 4000) at T = 1 has alpha_T = e^{-1000} = 0 in float64: the samplers on
    sigma_t / alpha_t divided by it (RuntimeWarnings), called the score at x = inf * 0 = NaN and
    reported the score as the culprit ("the Gaussian score at row 0 (t = 1.0) overflows";
    review). Now the grid is named, without a warning; from T = 0.8 (alpha = 1e-278) the
    replay runs."""
    import warnings

    for process in (VP(0.1, 4000.0), SubVP(0.1, 4000.0)):
        score = R.gaussian_score([0.3], [[0.5]], process)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(ValueError, match=r"^grid\[0\] = 1\.0: alpha_t = 0\.0 for .*overflows float64 "
                                                 r"there; start the grid at a smaller time$"):
                replay(score, process, [1.0, 0.5, 0.1, 0.0], np.ones((2, 1)), np.random.default_rng(0))
            y = replay(score, process, [0.8, 0.5, 0.1, 0.0], np.ones((2, 1)), np.random.default_rng(0))
        assert np.all(np.isfinite(y))


def test_replay_output_gaussian_names_an_unknown_or_missing_option_and_the_replays_options():
    """replay_output_gaussian(R.ddim, ..., etaa=1) raised Python's TypeError from inside the
    probe run ("ddim() got an unexpected keyword argument 'etaa'"), and karras_stochastic
    without s_churn its "missing 1 required keyword-only argument": ValueErrors now, naming
    the option and the replay's options. A replay taking **options is called as given."""
    grid = np.linspace(1.0, 0.1, 4)
    law = (np.zeros(1), np.eye(1), OU(), grid)
    with pytest.raises(ValueError, match=r"^ddim has no option 'etaa'; its options are eta, alphas_cumprod, "
                                         r"prediction_type$"):
        R.replay_output_gaussian(R.ddim, *law, etaa=1)
    with pytest.raises(ValueError, match=r"^karras_stochastic needs the option s_churn \(pass s_churn=\.\.\. "):
        R.replay_output_gaussian(R.karras_stochastic, *law)
    with pytest.raises(ValueError, match=r"^dpmpp_2m has no option 'eta'; its options are lower_order_final$"):
        R.replay_output_gaussian(R.dpmpp_2m, *law, eta=0.0)

    def custom(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        return R.euler_maruyama(score, process, grid, x, rng, trajectory, noise=noise)

    with pytest.raises(ValueError, match=r"^custom has no option 'step_size'; its options are none$"):
        R.replay_output_gaussian(custom, *law, step_size=0.1)
    # what is accepted still works, and a replay taking **options gets them as given
    np.testing.assert_array_equal(R.replay_output_gaussian(R.ddim, *law, eta=1.0)[1],
                                  R.replay_output_gaussian(lambda *a, **kw: R.ddim(*a, **kw), *law, eta=1.0)[1])


@pytest.mark.parametrize("case", sorted(CASES))
def test_rng_and_noise_together_are_refused(case):
    """Both given, the draws came from noise and rng was silently unused (euler_maruyama's
    docstring said "unless noise is given", the others nothing): a caller passing a seeded rng
    beside noise took the output for that rng's. No caller in the package passes both (audit and
    replay_output_gaussian pass rng=None with their noise); the pair is refused, the deterministic
    dpmpp_2m too, and either alone still runs."""
    replay, process, grid, options = CASES[case]
    x = _start_points(process, grid, 3, np.random.default_rng(0))
    score = R.gaussian_score(MEAN, COV, process)
    with pytest.raises(ValueError, match=r"^pass rng or noise, not both: .*drop rng"):
        replay(score, process, grid, x, np.random.default_rng(1), noise=np.zeros((1, 3, 2)), **options)
    with pytest.raises(ValueError, match=r"^pass rng or noise, not both"):
        replay(score, process, grid, x, np.random.default_rng(1), noise=np.zeros((0, 3, 2)), **options)
    drawn = replay(score, process, grid, x, np.random.default_rng(1), **options)
    assert drawn.shape == x.shape and np.all(np.isfinite(drawn))


def test_dpmpp_2m_checks_its_rng_as_the_other_replays():
    """dpmpp_2m draws nothing and took any rng unchecked (rng=0, a seed, ran), where ddim with
    eta = 0, which draws nothing either, refuses it: its rng goes through the same check now."""
    edm = EDM()
    sigmas = edm.karras_sigmas(4, 0.02, 10.0)
    x = 10.0 * np.random.default_rng(0).standard_normal((3, 2))
    score = R.gaussian_score(MEAN, COV, edm)
    with pytest.raises(ValueError, match="rng must be a numpy.random.Generator"):
        R.dpmpp_2m(score, edm, sigmas, x, 0)
    np.testing.assert_array_equal(R.dpmpp_2m(score, edm, sigmas, x, np.random.default_rng(5)),
                                  R.dpmpp_2m(score, edm, sigmas, x))


@pytest.mark.parametrize("c", [1e-100, 1e100])
def test_euler_ancestral_is_scale_equivariant_beyond_the_squares_range(c):
    """EDM sampling commutes with scaling: for the target N(c m, c^2 S) on the sigmas c sigma_i,
    euler_ancestral's exact law is c (c^2) times the law at c = 1. Its sigma_up = sqrt(s_next^2
    (s^2 - s_next^2) / s^2) (k-diffusion's) squares sigma twice: past ~1e77 the product
    overflowed (sigma_up = s_next, sigma_down = 0) and below ~1e-77 it underflowed (sigma_up =
    0, no noise), so at c = 1e-100 the law was 4.7% off in mean and 44% in covariance, at 1e100
    22% in covariance (review). Now within 1e-14; and with D = 0 (score -x / t^2) one step's
    sigma_up and sigma_down, read off the output, are the closed forms s_next sqrt(1 - q^2) and
    q s_next (eta = 1, q = s_next / s) to 1e-14."""
    edm = EDM()
    grid = edm.karras_sigmas(6, 0.02, 10.0)
    for options in ({"eta": 1.0}, {"eta": 0.6, "s_noise": 1.1}):
        m1, C1 = R.replay_output_gaussian(R.euler_ancestral, MEAN, COV, edm, grid, **options)
        mc, Cc = R.replay_output_gaussian(R.euler_ancestral, c * MEAN, c * c * COV, edm, c * grid, **options)
        np.testing.assert_allclose(mc / c, m1, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(Cc / c**2, C1, rtol=1e-14, atol=1e-14)
    s, s_next = 5.0 * c, 2.0 * c
    y = R.euler_ancestral(lambda x, t: -x / t[:, None] ** 2, edm, [s, s_next], np.array([[0.0], [s]]),
                          noise=np.array([[[1.0], [0.0]]]))
    q = s_next / s
    np.testing.assert_allclose(y[:, 0], [s_next * np.sqrt(1.0 - q * q), q * s_next], rtol=1e-14)


@pytest.mark.parametrize("c, q", [(1e100, 1e-8), (1e-100, 1e-6), (1e100, 0.3)])
def test_ancestral_sigma_down_of_a_long_step_beyond_the_squares_range(c, q):
    """Beyond the squares' range euler_ancestral's sigma_down = s_next sqrt((1 - eta^2) + (eta q)^2)
    comes from the ratio q = s_next / s: q s_next at eta = 1, s_next sqrt(3 / 4 + q^2 / 4) at
    eta = 0.5. (eta q)^2 was formed as (eta (1 - gap))^2, gap = (s - s_next) / s, which keeps only
    gap's absolute rounding: at q = 1e-8 sigma_down was 1e-8 off, eps / q (review; below the
    rounding of the step's output x + (x - D) (sigma_down - s) / s, so only the helper shows it);
    now within 1e-15."""
    from sgm_ref.replays.karras import _ancestral_step

    s = 5.0 * c
    s_next = q * s
    for eta, expected in ((1.0, (s_next / s) * s_next), (0.5, s_next * np.sqrt(0.75 + 0.25 * (s_next / s) ** 2))):
        up, down = _ancestral_step(s, s_next, eta)
        np.testing.assert_allclose(down, expected, rtol=1e-15)
        np.testing.assert_allclose(up, eta * s_next * np.sqrt(1.0 - (s_next / s) ** 2), rtol=1e-15)


@pytest.mark.parametrize("peer_name, replay", [("sample_euler", R.karras_euler), ("sample_heun", R.karras_stochastic)])
def test_churn_bounds_are_inclusive_as_k_diffusions(kd, peer_name, replay, monkeypatch):
    """Algorithm 2 churns where S_tmin <= sigma_i <= S_tmax, bounds included, as k-diffusion
    does: with s_tmin and s_tmax set to two of the sigmas themselves, the replay churns on
    those two steps too (draws[1:5]) and agrees with the installed peer to 1e-12. No test set a
    bound on a sigma before: a replay with strict bounds passed them all (review)."""
    torch = kd.torch
    edm, model = EDM(), to_torch(_mixture(), EDM())
    sigmas = edm.karras_sigmas(8, 0.02, 10.0)
    rng = np.random.default_rng(3)
    x = 10.0 * rng.standard_normal((16, 2))
    draws = rng.standard_normal((sigmas.size - 1, 16, 2))
    it = iter(torch.from_numpy(draws))
    monkeypatch.setattr(torch, "randn_like", lambda like, **kw: next(it))
    options = {"s_churn": 3.0, "s_tmin": float(sigmas[4]), "s_tmax": float(sigmas[1]), "s_noise": 1.0}
    out = getattr(kd.sampling, peer_name)(model, torch.from_numpy(x.copy()), torch.from_numpy(sigmas), disable=True,
                                          **options).numpy()
    mine = replay(OracleScore(model), edm, sigmas, x, noise=draws[1:5], **options)
    assert np.max(np.abs(mine - out)) <= 1e-12 * np.max(np.abs(out))


def test_output_law_of_a_replay_that_mixes_coordinates():
    """replay_output_gaussian's covariance sums B_j B_j^T over the draws (B_j e_i: the output's
    response to draw j's coordinate i). Every replay here has symmetric B_j (each step a
    function of the target's covariance), for which B_j^T B_j is the same, so no test told the
    two apart (review). A replay of its signature whose output is ddim's mixed by a matrix L
    that is not normal has the law (L m, L C L^T) of ddim's (m, C)."""
    L = np.array([[1.0, 0.0], [2.0, 0.5]])

    def mixed(score, process, grid, x, rng=None, trajectory=False, *, noise=None, eta=0.0):
        return R.ddim(score, process, grid, x, rng, trajectory, noise=noise, eta=eta) @ L.T

    proc, grid = _ddpm_grid(5)
    m, C = R.replay_output_gaussian(R.ddim, MEAN, COV, proc, grid, eta=0.7)
    mL, CL = R.replay_output_gaussian(mixed, MEAN, COV, proc, grid, eta=0.7)
    np.testing.assert_allclose(mL, L @ m, rtol=1e-13)
    np.testing.assert_allclose(CL, L @ C @ L.T, rtol=1e-13)


@pytest.mark.parametrize("replay", [R.euler_maruyama, R.reverse_diffusion])
def test_denoise_drops_only_the_last_steps_noise(replay):
    """denoise=True (score_sde's) returns the last step's mean: the same path to the last state,
    which lacks exactly the last kick sqrt(g^2 h) xi (Euler–Maruyama) or sqrt(v) xi (reverse
    diffusion), read here with a zero score and xi = 1 against the process's own g^2 and
    transition variance. Only predictor_corrector's denoise was tested: a denoise one step early
    passed every test (review)."""
    vp, grid = VP(), np.linspace(1.0, 1e-2, 6)
    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    x = np.random.default_rng(0).standard_normal((3, 2))
    noise = np.ones((5, 3, 2))
    full = replay(zero, vp, grid, x, noise=noise, trajectory=True)[1]
    mean = replay(zero, vp, grid, x, noise=noise, trajectory=True, denoise=True)[1]
    np.testing.assert_array_equal(mean[:-1], full[:-1])
    if replay is R.euler_maruyama:
        kick = np.sqrt(vp.g2(grid[-2]) * (grid[-2] - grid[-1]))
    else:
        kick = np.sqrt(vp.sigma2(grid[-2]) - vp.alpha(grid[-2]) ** 2 / vp.alpha(grid[-1]) ** 2 * vp.sigma2(grid[-1]))
    np.testing.assert_allclose(full[-1] - mean[-1], kick, rtol=1e-12)


def test_langevin_step_sizes_one_per_step():
    """langevin_step given as N numbers: step k's corrector uses e_k. With a zero score and xi = 1
    each corrector step moves y by sqrt(2 e_k), read back from the trajectory. No test passed
    an array of different sizes: the first size used at every step passed them all (review)."""
    grid = np.linspace(1.0, 1e-2, 5)
    e = np.array([0.01, 0.04, 0.09, 0.16])
    path = R.predictor_corrector(lambda x, t: np.zeros_like(x), VP(), grid, np.zeros((1, 1)), noise=np.ones((4, 1, 1)),
                                 trajectory=True, predictor=None, langevin_step=e)[1][:, 0, 0]
    np.testing.assert_allclose(np.diff(path), np.sqrt(2.0 * e), rtol=1e-14)


def test_a_grid_time_off_the_timesteps_is_named_as_a_number():
    """The message showed NumPy 2's repr, "grid[1] = np.float64(0.2004)" (a mutation review)."""
    with pytest.raises(ValueError, match=r"grid\[1\] = 0\.2004 is not one; build it with timestep_grid$"):
        R.ddim(lambda x, t: -x, DDPM(), [0.5, 0.2004, 0.0], np.zeros((1, 1)), alphas_cumprod="diffusers")


def test_a_score_sde_grid_ending_at_0_is_named_as_a_number():
    """As above: "ending at np.float64(0.0)" (a reread after the mutation review)."""
    with pytest.raises(ValueError, match=r"at least 2 times, all > 0 \(got 3 ending at 0\.0\)$"):
        R.reverse_diffusion(lambda x, t: -x, VP(), np.array([1.0, 0.5, 0.0]), np.zeros((1, 1)),
                            discretization="score_sde")
