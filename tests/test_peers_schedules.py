"""sgm_ref's processes and conversions against the peers' own code: diffusers and k-diffusion.

The peers are optional (the `peers` extra). A missing peer skips these tests unless the
environment variable SGM_REF_REQUIRE_PEERS is set (to anything but "" or "0"; CI sets
it), which makes a missing peer a failure.

k-diffusion's modules are loaded as tests/_peers.py says (its package __init__ does not
import next to torch 2.13 CPU).
"""

import numpy as np
import pytest
from _peers import load_k_diffusion
from _peers import peer as _peer

from sgm_ref.conventions import coefficients, convert
from sgm_ref.processes import DDPM, EDM, OU, convert_time

EPS = np.finfo(np.float64).eps


# -- diffusers ----------------------------------------------------------------------------

SCHEDULES = [  # (beta_schedule, beta_start, beta_end, num_train_timesteps)
    ("linear", 0.0001, 0.02, 1000),             # DDPMScheduler's defaults (Ho et al.)
    ("scaled_linear", 0.00085, 0.012, 1000),    # Stable Diffusion's
    ("squaredcos_cap_v2", 0.0001, 0.02, 1000),  # Nichol & Dhariwal's cosine
    ("linear", 0.001, 0.03, 999),
    ("scaled_linear", 0.0001, 0.02, 37),
    ("squaredcos_cap_v2", 0.0001, 0.02, 2),
]


def _scheduler(schedule, start, end, N):
    diffusers = _peer("diffusers")
    return diffusers.DDPMScheduler(beta_schedule=schedule, beta_start=start, beta_end=end, num_train_timesteps=N)


@pytest.mark.parametrize("schedule, start, end, N", SCHEDULES)
def test_diffusers_float32_constants_bit_for_bit(schedule, start, end, N):
    sched = _scheduler(schedule, start, end, N)
    p = DDPM(schedule, start, end, N)
    betas, ac = p.diffusers_betas(), p.diffusers_alphas_cumprod()
    assert betas.dtype == ac.dtype == np.float32
    assert np.array_equal(betas, sched.betas.numpy())
    assert np.array_equal(ac, sched.alphas_cumprod.numpy())


# Measured with diffusers 0.42.1 / torch 2.13.0: the largest relative difference between
# diffusers' float32 alphas_cumprod and sgm_ref's float64 one over the 1000 steps is
# 3.6e-7 (linear), 9.3e-7 (scaled_linear, Stable Diffusion's), 1.3e-5 (squaredcos_cap_v2:
# all of it at the last step, where the cap beta = 0.999 is float32(0.999) = 0.99900001,
# so 1 - beta is off by 1.3e-5; 2.1e-6 over the other 999 steps). Bounds at ~1.5x.
FLOAT64_AGREEMENT = {"linear": (5e-7, 5e-7), "scaled_linear": (1.5e-6, 1.5e-6), "squaredcos_cap_v2": (2e-5, 3e-6)}


@pytest.mark.parametrize("schedule, start, end, N", SCHEDULES[:3])
def test_diffusers_float64_agreement(schedule, start, end, N):
    sched = _scheduler(schedule, start, end, N)
    ours = DDPM(schedule, start, end, N).alphas_cumprod()
    rel = np.abs(sched.alphas_cumprod.numpy().astype(np.float64) / ours - 1)
    whole, but_last = FLOAT64_AGREEMENT[schedule]
    assert rel.max() <= whole and rel[:-1].max() <= but_last
    assert rel.max() > 1e-8  # float32 is what separates them: not a vacuous bound


def test_diffusers_timestep_is_sgm_ref_time():
    """diffusers' add_noise at timestep i is sgm_ref's DDPM at t_i = (i + 1)/N (float64 samples:
    diffusers then takes sqrt of its float32 alphas_cumprod in float64)."""
    torch = _peer("torch")
    sched = _scheduler("scaled_linear", 0.00085, 0.012, 1000)
    p = DDPM("scaled_linear", 0.00085, 0.012, 1000)
    i = np.array([0, 1, 250, 500, 999])
    rng = np.random.default_rng(0)
    x0, z = rng.standard_normal((2, i.size, 3))
    theirs = sched.add_noise(torch.from_numpy(x0), torch.from_numpy(z), torch.from_numpy(i)).numpy()
    # with the peer's own constants: the same to rounding
    ac = p.diffusers_alphas_cumprod().astype(np.float64)[i]
    np.testing.assert_allclose(theirs, np.sqrt(ac)[:, None] * x0 + np.sqrt(1 - ac)[:, None] * z, rtol=1e-14, atol=1e-15)
    # with sgm_ref's float64 process at t_i: to diffusers' float32 (stated above)
    a, s = p.marginal(p.time_of_timestep(i))
    np.testing.assert_allclose(theirs, a[:, None] * x0 + s[:, None] * z, rtol=2e-6, atol=1e-6)


# -- k-diffusion ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kd():
    """k-diffusion's sampling and external modules and layers.Denoiser (tests/_peers.py)."""
    return load_k_diffusion()


SIGMAS = np.concatenate([np.logspace(-4, np.log10(80.0), 60), [1e-8, 1e-2, 1.0, 160.0, 1e4]])


def test_karras_sigmas_equal_get_sigmas_karras(kd):
    torch = kd.torch
    for n, lo, hi, rho in [(10, 0.002, 80.0, 7.0), (50, 0.03, 14.6, 7.0), (2, 0.1, 1.0, 3.0), (1000, 1e-3, 100.0, 1.0)]:
        ours = EDM().karras_sigmas(n, lo, hi, rho)
        theirs32 = kd.sampling.get_sigmas_karras(n, lo, hi, rho).numpy()  # torch's default float32 ramp
        assert ours.shape == theirs32.shape == (n + 1,) and ours[-1] == theirs32[-1] == 0.0
        # float32: the ramp and the powers round to ~1e-7 of sigma_max's scale
        np.testing.assert_allclose(theirs32, ours, rtol=4e-6, atol=1e-6 * hi)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            theirs64 = kd.sampling.get_sigmas_karras(n, lo, hi, rho).numpy()
        finally:
            torch.set_default_dtype(previous)
        # float64: torch's and numpy's linspace round the ramp differently (an ulp), which
        # moves sigma^(1/rho) by an ulp of sigma_max^(1/rho); compared on that scale
        root = 1.0 / rho
        np.testing.assert_allclose(theirs64 ** root, ours ** root, rtol=0, atol=4 * EPS * hi**root)
        rel = np.abs(theirs64[:-1] / ours[:-1] - 1)
        assert np.all(rel <= 8 * rho * EPS * (hi / ours[:-1]) ** root), rel.max()


def _t64(kd, a):
    return kd.torch.tensor(np.asarray(a), dtype=kd.torch.float64)


def test_eps_wrapper_scalings_are_edm_conversions(kd):
    """k-diffusion's DiscreteEpsDDPMDenoiser: D = x + c_out eps(c_in x), c_out = -sigma,
    c_in = 1/sqrt(sigma^2 + 1): sgm_ref's EDM eps -> x0 and the EDM -> VP scale."""
    p = DDPM("scaled_linear", 0.00085, 0.012, 1000)
    wrapper = kd.external.DiscreteEpsDDPMDenoiser(lambda x, t: None, _t64(kd, p.alphas_cumprod()), quantize=False)
    c_out, c_in = (c.numpy() for c in wrapper.get_scalings(_t64(kd, SIGMAS)))
    A, B = coefficients(SIGMAS, EDM(), "eps", "x0")
    assert np.all(A == 1.0)
    np.testing.assert_allclose(c_out, B, rtol=EPS, atol=0)
    _, scale = convert_time(SIGMAS, EDM(), OU())
    np.testing.assert_allclose(c_in, scale, rtol=4 * EPS, atol=0)
    # its discrete sigmas are the EDM times of sgm_ref's timesteps, and back
    i = np.arange(1000)
    sigma, _ = convert_time(p.time_of_timestep(i), p, EDM())
    np.testing.assert_allclose(wrapper.sigmas.numpy(), sigma, rtol=1e-13, atol=0)
    back = p.timestep_of_time(convert_time(sigma, EDM(), p)[0])
    np.testing.assert_allclose(wrapper.sigma_to_t(_t64(kd, sigma)).numpy(), back, rtol=0, atol=1e-8)


def test_eps_wrapper_forward_is_convert(kd):
    """Driving the wrapper with a known eps gives sgm_ref's x0, and the model sees c_in x."""
    torch = kd.torch
    p = DDPM()
    rng = np.random.default_rng(1)
    x, eps = rng.standard_normal((2, 4, 3))
    seen = {}

    def model(x_in, t):
        seen["x_in"], seen["t"] = x_in.numpy().copy(), t.numpy().copy()
        return torch.from_numpy(eps)

    wrapper = kd.external.DiscreteEpsDDPMDenoiser(model, _t64(kd, p.alphas_cumprod()), quantize=False)
    # at timesteps' own sigmas: between them k-diffusion interpolates log sigma linearly in
    # the index, sgm_ref the integrated beta linearly in t (see test_timestep_interpolation)
    i = np.array([3, 250, 600, 999])
    sigma = wrapper.sigmas.numpy()[i]
    D = wrapper(torch.from_numpy(x), _t64(kd, sigma)).numpy()
    np.testing.assert_allclose(D, convert(eps, x, sigma, EDM(), "eps", "x0"), rtol=1e-15, atol=1e-15)
    t_vp, scale = convert_time(sigma, EDM(), p)
    np.testing.assert_allclose(seen["x_in"], scale[:, None] * x, rtol=4 * EPS)
    np.testing.assert_allclose(seen["t"], p.timestep_of_time(t_vp), rtol=0, atol=1e-8)
    np.testing.assert_allclose(seen["t"], i, rtol=0, atol=1e-8)


def test_timestep_interpolation_between_knots(kd):
    """Off the timesteps the two continuous-time readings of a DDPM schedule differ by a
    fraction of one step: k-diffusion's sigma_to_t interpolates log sigma linearly in i,
    sgm_ref's DDPM process makes beta constant on each step (exact DDPM kernels)."""
    p = DDPM()
    wrapper = kd.external.DiscreteEpsDDPMDenoiser(lambda *a: None, _t64(kd, p.alphas_cumprod()), quantize=False)
    frac = np.linspace(0.0, 999.0, 4001)[1:-1]
    sigma, _ = convert_time((frac + 1) / 1000, p, EDM())
    theirs = wrapper.sigma_to_t(_t64(kd, sigma)).numpy()
    gap = np.abs(theirs - frac)
    assert gap.max() < 0.5 and np.all(gap[np.isclose(frac, np.round(frac), rtol=0, atol=1e-12)] < 1e-8)


@pytest.mark.parametrize("wrapper_name", ["VDenoiser", "DiscreteVDDPMDenoiser"])
def test_v_wrapper_scalings_are_vp_v_to_x0(kd, wrapper_name):
    """D = c_skip x + c_out v(c_in x): x_VP = c_in x at the VP time of the same SNR, and
    x0 = A x_VP + B v there, so c_skip = A c_in, c_out = B."""
    cls = getattr(kd.external, wrapper_name)
    wrapper = cls(lambda *a: None) if wrapper_name == "VDenoiser" else \
        cls(lambda *a: None, _t64(kd, DDPM().alphas_cumprod()), quantize=False)
    c_skip, c_out, c_in = (c.numpy() for c in wrapper.get_scalings(_t64(kd, SIGMAS)))
    t_vp, scale = convert_time(SIGMAS, EDM(), OU())
    A, B = coefficients(t_vp, OU(), "v", "x0")
    np.testing.assert_allclose(c_in, scale, rtol=4 * EPS, atol=0)
    np.testing.assert_allclose(c_skip, A * scale, rtol=1e-14, atol=0)
    np.testing.assert_allclose(c_out, B, rtol=1e-14, atol=0)


@pytest.mark.parametrize("sigma_data", [1.0, 0.5])
def test_karras_preconditioner_scalings_are_edm_conversions(kd, sigma_data):
    """layers.Denoiser (Karras et al.'s c_skip, c_out, c_in with sigma_data): on data scaled
    by 1/sigma_data it is the VP v -> x0 conversion at sigma' = sigma/sigma_data, with the
    network's output F = -v: c_skip = A c_in', c_out = -sigma_data B, c_in = c_in'/sigma_data."""
    wrapper = kd.Denoiser(lambda *a: None, sigma_data=sigma_data)
    c_skip, c_out, c_in = (c.numpy() for c in wrapper.get_scalings(_t64(kd, SIGMAS)))
    t_vp, scale = convert_time(SIGMAS / sigma_data, EDM(), OU())
    A, B = coefficients(t_vp, OU(), "v", "x0")
    np.testing.assert_allclose(c_in, scale / sigma_data, rtol=4 * EPS, atol=0)
    np.testing.assert_allclose(c_skip, A * scale, rtol=1e-14, atol=0)
    np.testing.assert_allclose(c_out, -sigma_data * B, rtol=1e-14, atol=0)


# -- which beta applies where: DDPM's f and g^2 at the timesteps' own times ------------------

def _float32_rtol(beta):
    """Relative precision of -log(1 - beta) from a float32 beta: 4 float32 ulps of beta
    (diffusers' torch.linspace, squaring, cos arithmetic), scaled by d log rate / d log beta
    = beta / ((1 - beta) rate) (1 for small beta, 145 at the cap 0.999)."""
    rate = -np.log1p(-beta)
    return 4 * 2.0**-23 * beta / ((1 - beta) * rate)


@pytest.mark.parametrize("schedule, start, end, N", SCHEDULES[:3])
def test_f_and_g2_at_a_timestep_hold_the_next_timesteps_beta(schedule, start, end, N):
    """beta(t) = -N log(1 - beta_j) on [j/N, (j+1)/N), right-continuous: at timestep i's time
    (i + 1)/N, g^2 = -2 f is diffusers' beta_{i+1}'s rate (beta_{N-1}'s at the last), just
    below it beta_i's, and the integral over [t_{i-1}, t_i] is beta_i's (DDPM's own step).
    diffusers' betas are float32: compared at float32's precision, which separates
    neighbouring betas (they differ by >= 1e-3 relative) by three orders of magnitude."""
    betas = _scheduler(schedule, start, end, N).betas.numpy().astype(np.float64)
    rate, tol = -np.log1p(-betas), _float32_rtol(betas)
    p = DDPM(schedule, start, end, N)
    i = np.arange(N)
    t = p.time_of_timestep(i)
    assert np.array_equal(t * N, i + 1.0)  # at N = 1000 every timestep's time is its knot exactly
    nxt = np.minimum(i + 1, N - 1)
    for value in (p.g2(t) / N, -2 * p.f(t) / N, p.beta(t) / N):
        assert np.all(np.abs(value / rate[nxt] - 1) <= tol[nxt])
        assert np.all(np.abs(value[:-1] / rate[:-1] - 1) > 100 * tol[:-1])  # not timestep i's own
    below = p.g2(t * (1 - 1e-12)) / N
    assert np.all(np.abs(below / rate - 1) <= tol)
    step = p.integrated_beta_between(t, np.append(0.0, t[:-1]))
    assert np.all(np.abs(step / rate - 1) <= tol)
    # the figures docs/conventions.md and the DDPM docstring quote
    if schedule == "linear":
        assert f"{p.g2(t[0]) / N:.4g}" == "0.0001199" and f"{rate[0]:.4g}" == "0.0001"
    if schedule == "squaredcos_cap_v2":
        assert f"{p.g2(t[998]) / N:.4g}" == "6.908" and f"{rate[998]:.4g}" == "1.386"


def test_a_timestep_whose_time_rounds_below_its_knot_reads_its_own_beta():
    """The step holding t is floor(N t) in float64. Where (i + 1)/N rounds so that N t_i falls
    an ulp below i + 1 (at no timestep for N = 1000; at 28, 56 and 57 for N = 100; 5 of 999
    for N = 999), g^2 there is beta_i's, not beta_{i+1}'s: the
    right-continuity holds for the real knots, and the float64 time lies just left of one."""
    p = DDPM("linear", 1e-4, 0.02, 100)
    i = np.arange(100)
    t = p.time_of_timestep(i)
    rate = -np.log1p(-p.betas())
    left = np.flatnonzero(t * 100 < i + 1)
    assert left.tolist() == [28, 56, 57]
    own = p.g2(t) / 100
    np.testing.assert_allclose(own[left], rate[left], rtol=1e-14)
    rest = np.setdiff1d(i[:-1], left)
    np.testing.assert_allclose(own[rest], rate[rest + 1], rtol=1e-14)
