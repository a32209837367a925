"""diffusers' sigma-based schedulers against the replays, in the frames docs/peers.md states.

diffusers reads a DDPM schedule at EDM noise levels sigma but keeps the variance-preserving
frame alpha = 1 / sqrt(1 + sigma^2): its v_prediction is EDM's v times alpha, and
DPMSolverMultistepScheduler's sample is alpha x. docs/peers.md's section "diffusers' VP
frame" gives the recipe as one code block; it is run here as written, against the installed
diffusers (float32 schedules: MATCH at 64 float32 roundings per step), and then with alpha
replaced by 1 (the recipe as it read before, EDM's v and EDM's x), which parts from the
replays at step 0. Also: EulerDiscreteScheduler(final_sigmas_type="sigma_min") repeats its
last sigma, a step that leaves diffusers' sample unchanged but for its rounding to float32;
the replays name that cause.

diffusers follows SGM_REF_REQUIRE_PEERS (tests/_peers.py).
"""

import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from _peers import peer

from sgm_ref import DDPM, EDM, compare_sampler
from sgm_ref.conventions import convert
from sgm_ref.replays import (ddim, ddim_timesteps, dpmpp_2m, gaussian_score, karras_euler, karras_heun,
                             timestep_grid)
from sgm_ref.samplers import euler_maruyama

ROOT = Path(__file__).resolve().parent.parent
TARGET = ([1.0, -1.0], [[0.25, 0.0], [0.0, 0.5]])
FLOAT32 = 64 * 2**-23


def _frame_block():
    """The indented code block of docs/peers.md's section on diffusers' VP frame, dedented."""
    text = (ROOT / "docs" / "peers.md").read_text(encoding="utf-8")
    section = re.split(r"^## ", text, flags=re.M)
    body = next(part for part in section if part.startswith("diffusers' VP frame"))
    lines = body.splitlines()
    first = next(k for k, line in enumerate(lines) if line.startswith("    import numpy"))
    last = max(k for k, line in enumerate(lines) if line.startswith("    "))
    block = lines[first:last + 1]
    assert all(line == "" or line.startswith("    ") for line in block)  # one code block
    return textwrap.dedent("\n".join(block))


@pytest.fixture(scope="module")
def frame_page():
    """The block run as written (each comparison asserts its MATCH); its namespace."""
    peer("torch")
    peer("diffusers")
    namespace = {}
    exec(compile(_frame_block(), "docs/peers.md", "exec"), namespace)
    return namespace


def _sigmas(cls, n=20, **config):
    sched = cls(**config)
    sched.set_timesteps(n)
    return sched.sigmas.numpy().astype(np.float64)


def test_euler_v_prediction_matches_in_the_vp_frame(frame_page):
    diffusers = peer("diffusers")
    sigmas = _sigmas(diffusers.EulerDiscreteScheduler, prediction_type="v_prediction")
    ns = frame_page
    result = compare_sampler(ns["euler_v_loop"], "karras_euler", EDM(), sigmas, TARGET, 200,
                             np.random.default_rng(1), rtol=FLOAT32)
    assert result.matches, result.text()
    # alpha is what makes it: EDM's v (the recipe before) parts at step 0
    vp = ns["vp"]
    ns["vp"] = lambda sigma: 1.0
    try:
        result = compare_sampler(ns["euler_v_loop"], "karras_euler", EDM(), sigmas, TARGET, 200,
                                 np.random.default_rng(1), rtol=FLOAT32)
    finally:
        ns["vp"] = vp
    assert not result.matches and result.first_divergence == 0


@pytest.mark.parametrize("config", [{}, {"use_karras_sigmas": True},
                                    {"use_karras_sigmas": True, "lower_order_final": False}])
def test_dpm_solver_matches_with_its_sample_in_the_vp_frame(frame_page, config):
    diffusers = peer("diffusers")
    sigmas = _sigmas(diffusers.DPMSolverMultistepScheduler, **config)
    ns = frame_page
    result = compare_sampler(ns["dpm_loop"](**config), "dpmpp_2m", EDM(), sigmas, TARGET, 200,
                             np.random.default_rng(1), rtol=FLOAT32)
    assert result.matches, result.text()
    vp = ns["vp"]
    ns["vp"] = lambda sigma: 1.0  # EDM's x handed to it as its sample (the recipe before)
    try:
        result = compare_sampler(ns["dpm_loop"](**config), "dpmpp_2m", EDM(), sigmas, TARGET, 200,
                                 np.random.default_rng(1), rtol=FLOAT32)
    finally:
        ns["vp"] = vp
    assert not result.matches and result.first_divergence == 0


def test_dpm_solver_v_prediction_is_the_vp_v_on_the_vp_sample(frame_page):
    """Both frames at once: DPMSolverMultistepScheduler(prediction_type="v_prediction") on
    x_VP, given EDM's v times alpha, matches DPM-Solver++(2M)."""
    torch, diffusers = peer("torch"), peer("diffusers")
    vp, edm = frame_page["vp"], EDM()

    def loop(score, grid, x, noises):
        sched = diffusers.DPMSolverMultistepScheduler(prediction_type="v_prediction", use_karras_sigmas=True)
        sched.set_timesteps(len(grid) - 1)
        y, path = torch.from_numpy(x * vp(grid[0])), [x.copy()]
        for k, timestep in enumerate(sched.timesteps):
            sigma = np.full(len(x), grid[k])
            x_edm = y.numpy() / vp(grid[k])
            v = convert(score(x_edm, sigma), x_edm, sigma, edm, from_="score", to="v") * vp(grid[k])
            y = sched.step(torch.from_numpy(v), timestep, y).prev_sample
            path.append(y.numpy() / vp(grid[k + 1]))
        return np.stack(path)

    sigmas = _sigmas(diffusers.DPMSolverMultistepScheduler, prediction_type="v_prediction", use_karras_sigmas=True)
    result = compare_sampler(loop, "dpmpp_2m", edm, sigmas, TARGET, 200, np.random.default_rng(1), rtol=FLOAT32)
    assert result.matches, result.text()


@pytest.mark.parametrize("n, config", [(10, {"final_sigmas_type": "sigma_min"}),
                                       (20, {"final_sigmas_type": "sigma_min", "euler_at_final": True}),
                                       (12, {"final_sigmas_type": "sigma_min", "timestep_spacing": "trailing"})])
def test_dpm_solver_first_order_last_step_is_lower_order_final(frame_page, n, config):
    """With its sigmas ending at sigma_min, DPMSolverMultistepScheduler takes its last step first
    order below 15 steps (lower_order_final=True, its default) or with euler_at_final: the
    replay's lower_order_final=True follows it; without, they part at the last step."""
    diffusers = peer("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(**config)
    sched.set_timesteps(n)
    sigmas = sched.sigmas.numpy().astype(np.float64)
    assert sigmas[-1] > 0
    loop = frame_page["dpm_loop"](**config)
    result = compare_sampler(loop, "dpmpp_2m", EDM(), sigmas, TARGET, 200, np.random.default_rng(1), rtol=FLOAT32,
                             replay_options={"lower_order_final": True})
    assert result.matches, result.text()
    result = compare_sampler(loop, "dpmpp_2m", EDM(), sigmas, TARGET, 200, np.random.default_rng(1), rtol=FLOAT32)
    assert not result.matches and result.first_divergence == n - 1  # the last of n steps
    # and where diffusers keeps second order to the end, the default replay is the one that matches
    config = {**config, "lower_order_final": False, "euler_at_final": False}
    result = compare_sampler(frame_page["dpm_loop"](**config), "dpmpp_2m", EDM(), sigmas, TARGET, 200,
                             np.random.default_rng(1), rtol=FLOAT32)
    assert result.matches, result.text()


def test_lower_order_final_is_a_bool():
    with pytest.raises(ValueError, match="lower_order_final must be True or False"):
        dpmpp_2m(lambda x, t: -x, EDM(), [2.0, 1.0], np.zeros((1, 2)), lower_order_final="yes")


# -- final_sigmas_type="sigma_min": a repeated last sigma -----------------------------------------

@pytest.mark.parametrize("config", [{"timestep_spacing": "linspace"}, {"timestep_spacing": "leading"},
                                    {"timestep_spacing": "linspace", "use_karras_sigmas": True}])
def test_sigma_min_final_step_is_a_no_op_and_the_grid_drops_it(config):
    torch, diffusers = peer("torch"), peer("diffusers")
    config = {"final_sigmas_type": "sigma_min", **config}
    sigmas = _sigmas(diffusers.EulerDiscreteScheduler, **config)
    assert sigmas[-1] == sigmas[-2] > 0  # diffusers repeats sigma_min
    edm, runs = EDM(), []

    def loop(score, grid, x, noises):
        sched = diffusers.EulerDiscreteScheduler(**config)
        sched.set_timesteps(20)
        sched.is_scale_input_called = True
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for k, timestep in enumerate(sched.timesteps):
            sigma = np.full(len(x), float(sched.sigmas[k]))
            eps = convert(score(y.numpy(), sigma), y.numpy(), sigma, edm, from_="score", to="eps")
            y = sched.step(torch.from_numpy(eps), timestep, y).prev_sample
            path.append(y.numpy().copy())
        runs.append(np.stack(path))
        return runs[-1][:-1]  # the repeated last state dropped

    result = compare_sampler(loop, "karras_euler", edm, sigmas[:-1], TARGET, 200, np.random.default_rng(1),
                             rtol=FLOAT32)
    assert result.matches, result.text()
    # diffusers' own last step: dt = 0, the sample back as it was but rounded to float32 (its
    # step computes in float32: `sample.to(torch.float32)`), 2^-24 relative at most
    assert runs and all(np.array_equal(path[-1], path[-2].astype(np.float32).astype(np.float64)) for path in runs)
    # the whole grid is refused with the cause and the fix named, by every replay and sgm_ref's samplers
    message = r"grid\[19\] = 0\.0100013\d* == grid\[20\]: .*final_sigmas_type=\"sigma_min\".*grid\[:-1\].*dt = 0"
    x = np.ones((3, 2))
    for replay in (karras_euler, karras_heun, dpmpp_2m):
        with pytest.raises(ValueError, match=message):
            replay(lambda x, t: -x, edm, sigmas, x)
    with pytest.raises(ValueError, match=message):
        compare_sampler(loop, "karras_euler", edm, sigmas, TARGET, 10, np.random.default_rng(1))
    with pytest.raises(ValueError, match=message):
        euler_maruyama(lambda x, t: -x, edm, sigmas, x, np.random.default_rng(0))


@pytest.mark.parametrize("config", [{"use_karras_sigmas": True}, {"use_karras_sigmas": True, "euler_at_final": True},
                                    {"use_exponential_sigmas": True}])
def test_dpm_solver_first_order_step_is_the_repeated_sigma_s_no_op(frame_page, config):
    """With Karras (or exponential, beta, Lu) sigmas and final_sigmas_type="sigma_min",
    DPMSolverMultistepScheduler repeats sigma_min, and its first-order last step is the no-op
    from sigma_min to itself: the step before it, the grid's last, is second order. So with
    the repeated sigma dropped the default replay matches below 15 steps too, and
    lower_order_final=True parts at the last step (0.081 relative at 10 Karras steps, these
    200 points). The page advised lower_order_final=True there until a review."""
    torch, diffusers = peer("torch"), peer("diffusers")
    vp, edm, n = frame_page["vp"], EDM(), 10
    config = {"final_sigmas_type": "sigma_min", **config}
    sched = diffusers.DPMSolverMultistepScheduler(**config)
    sched.set_timesteps(n)
    sigmas = sched.sigmas.numpy().astype(np.float64)
    assert sigmas[-1] == sigmas[-2] > 0 and sigmas.size == n + 1

    def loop(score, grid, x, noises):
        sched = diffusers.DPMSolverMultistepScheduler(**config)
        sched.set_timesteps(n)
        y, path = torch.from_numpy(x * vp(sigmas[0])), [x.copy()]
        for k, timestep in enumerate(sched.timesteps):
            sigma = np.full(len(x), sigmas[k])
            x_edm = y.numpy() / vp(sigmas[k])
            eps = convert(score(x_edm, sigma), x_edm, sigma, edm, from_="score", to="eps")
            y = sched.step(torch.from_numpy(eps), timestep, y).prev_sample
            path.append(y.numpy() / vp(sigmas[k + 1]))
        return np.stack(path)[:-1]  # the repeated last state dropped

    result = compare_sampler(loop, "dpmpp_2m", edm, sigmas[:-1], TARGET, 200, np.random.default_rng(1), rtol=FLOAT32)
    assert result.matches, result.text()
    result = compare_sampler(loop, "dpmpp_2m", edm, sigmas[:-1], TARGET, 200, np.random.default_rng(1), rtol=FLOAT32,
                             replay_options={"lower_order_final": True})
    assert not result.matches and result.first_divergence == n - 2  # the last step of the grid's n - 1


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_float32_rounding_of_a_large_state_can_exceed_the_per_state_allowance():
    """docs/peers.md, "Their precision": EulerDiscreteScheduler in 2 steps from sigma_max =
    157 rounds that state to float32; relative to the output (~1) that is 3.1e-5 > 2 * 64 *
    2^-23, so compare_sampler reports step 0, though the outputs differ by about one float32
    rounding of the largest state (measured 1.0 * 2^-24 * max |x|)."""
    torch, diffusers = peer("torch"), peer("diffusers")
    edm = EDM()
    sigmas = _sigmas(diffusers.EulerDiscreteScheduler, 2)

    def loop(score, grid, x, noises):
        sched = diffusers.EulerDiscreteScheduler()
        sched.set_timesteps(len(grid) - 1)
        sched.is_scale_input_called = True
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for k, timestep in enumerate(sched.timesteps):
            sigma = np.full(len(x), grid[k])
            eps = convert(score(y.numpy(), sigma), y.numpy(), sigma, edm, from_="score", to="eps")
            y = sched.step(torch.from_numpy(eps), timestep, y).prev_sample
            path.append(y.numpy().copy())
        return np.stack(path)

    result = compare_sampler(loop, "karras_euler", edm, sigmas, TARGET, 200, np.random.default_rng(0), rtol=FLOAT32)
    assert not result.matches and result.first_divergence == 0
    assert 2 * FLOAT32 < result.final_deviation < 1e-4
    score = lambda x, t: -(x - np.array([1.0, -1.0])) / (np.array([0.25, 0.5]) + t[:, None] ** 2)  # noqa: E731
    x = sigmas[0] * np.random.default_rng(1).standard_normal((200, 2))
    peer_out = loop(score, sigmas, x, None)[-1]
    assert np.max(np.abs(peer_out - karras_euler(score, edm, sigmas, x))) <= 2 * 2.0**-24 * np.max(np.abs(x))


def _heun_loop(torch, diffusers, float64_sigmas=False, **config):
    """docs/peers.md's HeunDiscreteScheduler loop (its trajectory: the state after each call
    that leaves state_in_first_order true, then the last); optionally its sigmas widened to
    float64 after set_timesteps (the same values, float64 arithmetic)."""
    edm = EDM()

    def loop(score, grid, x, noises):
        sched = diffusers.HeunDiscreteScheduler(**config)
        sched.set_timesteps(len(grid) - 1)
        if float64_sigmas:
            sched.sigmas = sched.sigmas.to(torch.float64)
        sig = sched.sigmas.numpy().astype(np.float64)
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for timestep in sched.timesteps:
            sigma = np.full(len(x), sig[0 if sched.step_index is None else sched.step_index])
            eps = convert(score(y.numpy(), sigma), y.numpy(), sigma, edm, from_="score", to="eps")
            y = sched.step(torch.from_numpy(eps), timestep, y).prev_sample
            if sched.state_in_first_order:
                path.append(y.numpy().copy())
        if len(path) < len(grid):
            path.append(y.numpy().copy())
        return np.stack(path)

    return loop


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_rounding_magnified_by_a_steps_coefficients_exceeds_an_allowance_of_its_states():
    """docs/peers.md, "Their precision": measuring the allowance against the step's larger
    state (its input, max |x|) instead of its result would not make these correct float32
    loops match, since the magnification sits in the step's coefficients. Heun on
    "squaredcos_cap_v2"'s sigmas forms dt = sigma_next - sigma in float32 (at 10 steps
    -20285.580078 for -20285.579771) and its corrector multiplies that rounding by about
    sigma / (2 sigma_next) (1773 from 20291 to 5.72): state 1 is off by 3.5 x 64 float32
    roundings of max |x| (2e-13 of it with the sigmas widened to float64: float64's rounding,
    magnified alike). DDIM's one "trailing" step divides by sqrt(alphas_cumprod[999]) =
    4.9e-5 there: 3.2 x. More steps do not help (Heun at 50 steps still parts at step 0), and
    at 20 steps the exact laws part too (KL 3.6e-5 > rtol)."""
    torch, diffusers = peer("torch"), peer("diffusers")
    edm, cos = EDM(), {"beta_schedule": "squaredcos_cap_v2"}
    score = gaussian_score(*TARGET, edm)

    sigmas = np.unique(_sigmas(diffusers.HeunDiscreteScheduler, 10, **cos))[::-1]
    x = sigmas[0] * np.random.default_rng(1).standard_normal((200, 2))
    replay = karras_heun(score, edm, sigmas, x, trajectory=True)[1]
    for float64_sigmas, low, high in ((False, 3 * FLOAT32, 5 * FLOAT32), (True, 0.0, 1e-7 * FLOAT32)):
        path = _heun_loop(torch, diffusers, float64_sigmas, **cos)(score, sigmas, x, None)
        off = np.max(np.abs(path[1] - replay[1])) / np.max(np.abs(x))
        assert low <= off <= high, (float64_sigmas, off / FLOAT32)

    ddpm = DDPM("squaredcos_cap_v2")
    vp_score = gaussian_score(*TARGET, ddpm)
    grid = timestep_grid(ddpm, ddim_timesteps(1, spacing="trailing"))
    x = np.random.default_rng(1).standard_normal((200, 2))
    sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing="trailing", **cos)
    sched.set_timesteps(1)
    t = np.full(len(x), grid[0])
    eps = convert(vp_score(x, t), x, t, ddpm, from_="score", to="eps")
    theirs = sched.step(torch.from_numpy(eps), sched.timesteps[0], torch.from_numpy(x.copy())).prev_sample.numpy()
    mine = ddim(vp_score, ddpm, grid, x, alphas_cumprod="diffusers")
    off = np.max(np.abs(theirs - mine)) / np.max(np.abs(x))
    assert 3 * FLOAT32 <= off <= 4 * FLOAT32, off / FLOAT32

    for n in (10, 20, 50):
        sigmas = np.unique(_sigmas(diffusers.HeunDiscreteScheduler, n, **cos))[::-1]
        result = compare_sampler(_heun_loop(torch, diffusers, **cos), "karras_heun", edm, sigmas, TARGET, 200,
                                 np.random.default_rng(0), rtol=FLOAT32, sample_distances=False)
        assert not result.matches and result.first_divergence == 0, (n, result.text())
        if n == 20:
            assert result.laws["method"] == "exact" and result.kl > 2 * FLOAT32, result.kl
