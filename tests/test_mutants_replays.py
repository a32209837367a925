"""Tests that kill mutants of sgm_ref.replays which the other test files let through (a
mutation-testing review of ddpm.py, score_sde.py, karras.py, laws.py and _common.py; see
tests/test_mutants_conventions.py for the earlier round). Each pins a number or a refusal
against an independent reference (numpy's Generator, mpmath, the installed peer, a closed
form, or the behaviour the docstring states) tightly enough that the mutant named in its
docstring fails it.
"""

import numpy as np
import pytest

from sgm_ref import DDPM, VP, SubVP
from sgm_ref import replays as R

MEAN = np.array([0.8, -0.4])
COV = np.array([[0.6, 0.25], [0.25, 1.4]])


def test_grid_may_start_at_t_max_and_not_one_ulp_above():
    """check_replay_grid: a grid starting at T = t_max (VP's 1.0) is accepted and one starting
    one ulp above it is refused with the documented message ("grid must start at T <= 1.0").
    The other tests refuse starts far above (1.5, 3.0, 900): kills the bound loosened
    (`g[0] > t_max + 1e-3`)."""
    vp = VP()
    score = R.gaussian_score(MEAN, COV, vp)
    x = np.zeros((2, 2))
    R.karras_euler(score, vp, [1.0, 0.5, 0.0], x)
    with pytest.raises(ValueError, match=r"^grid must start at T <= 1\.0 for VP\(.*\), got 1\.0000000000000002$"):
        R.karras_euler(score, vp, [np.nextafter(1.0, 2.0), 0.5, 0.0], x)


def test_float32_replay_draws_float32_normals_from_the_rng():
    """Noise docstring: draw j is rng.standard_normal((n, d)) in the state's dtype. A float32
    ddpm_ancestral run with rng=default_rng(5) equals the run fed noise= the draws numpy's
    Generator gives for dtype=float32 (a different stream from float64's: the ziggurat for
    float32), bit for bit. No test fixed the draws of a float32 run: kills the draws taken
    in float64 and rounded (`standard_normal(shape)`), which changes a seeded float32 run's
    bits."""
    proc = DDPM()
    grid = R.timestep_grid(proc, R.ddim_timesteps(5, spacing="trailing"))
    score = R.gaussian_score(MEAN, COV, proc)
    x = np.random.default_rng(1).standard_normal((4, 2)).astype(np.float32)
    ref_rng = np.random.default_rng(5)
    draws = np.stack([ref_rng.standard_normal((4, 2), dtype=np.float32) for _ in range(grid.size - 2)])
    got = R.ddpm_ancestral(score, proc, grid, x, rng=np.random.default_rng(5))
    want = R.ddpm_ancestral(score, proc, grid, x, noise=draws.astype(np.float64))
    assert got.dtype == np.float32
    assert np.array_equal(got, want)


def test_transition_variance_of_a_step_longer_than_exp_can_hold():
    """A SubVP(0.1, 2900) step from t = 1 to 0.5 (integrated beta DB = 1087 > 709: r^2 c2
    overflows, the branch v = -sigma_hi^2 expm1(lam_hi - lam_lo)), read through
    reverse_diffusion with a zero score from x = 0 and xi = 1 (it returns sqrt(v)), against
    mpmath (40 digits) v = sigma_hi^2 - r^2 sigma_lo^2, sigma = 1 - e^{-B}: to 2 ulps. No
    other test reaches that branch: kills its sign (`sigma_hi^2 expm1(lam_lo - lam_hi)`,
    inf)."""
    import mpmath as mp

    process = SubVP(0.1, 2900.0)
    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    with mp.workdps(40):
        B = lambda t: mp.mpf(0.1) * t + (mp.mpf(2900.0) - mp.mpf(0.1)) * t * t / 2  # noqa: E731
        for t_hi, t_lo in ((1.0, 0.5), (0.9, 0.2)):
            bh, bl = B(mp.mpf(t_hi)), B(mp.mpf(t_lo))
            assert bh - bl > 709
            v = (1 - mp.exp(-bh)) ** 2 - mp.exp(-(bh - bl)) * (1 - mp.exp(-bl)) ** 2
            y = R.reverse_diffusion(zero, process, [t_hi, t_lo], np.zeros((1, 1)), noise=np.ones((1, 1, 1)))
            assert abs(float(y[0, 0] / mp.sqrt(v) - 1)) <= 2 * np.finfo(float).eps, (t_hi, t_lo)


def test_timestep_grid_refuses_a_repeated_timestep():
    """timestep_grid's docstring: timesteps not strictly decreasing are refused. A repeated
    timestep ([5, 5, 3]: a step from a time to itself) gives the ValueError saying so; the
    other tests use increasing ones only: kills `np.diff(grid) > 0` (a repeat let through)."""
    with pytest.raises(ValueError, match="^timesteps must be strictly decreasing"):
        R.timestep_grid(DDPM(), [5, 5, 3])
    np.testing.assert_array_equal(R.timestep_grid(DDPM(), [5, 4, 3]), [6e-3, 5e-3, 4e-3, 0.0])


def test_alphas_cumprod_with_a_repeated_value_is_refused():
    """ddpm_ancestral(alphas_cumprod=table): the docstring and the message require strictly
    decreasing values in [0, 1]. A table with two equal neighbours (beta = 0 at one
    timestep: a step of zero length there) is refused; the other tests refuse out-of-range
    or increasing tables only: kills `np.diff(table) > 0`."""
    proc = DDPM()
    table = proc.alphas_cumprod().copy()
    table[500] = table[499]
    grid = R.timestep_grid(proc, R.ddim_timesteps(10))
    score = R.gaussian_score(MEAN, COV, proc)
    with pytest.raises(ValueError, match=r"^alphas_cumprod must be strictly decreasing values in \[0, 1\]$"):
        R.ddpm_ancestral(score, proc, grid, np.zeros((2, 2)), rng=np.random.default_rng(0), alphas_cumprod=table)


def test_ddim_refuses_a_negative_eta():
    """ddim's docstring: eta >= 0. A negative eta (whose square would pass for |eta|) is
    refused with a message naming eta; no other test passed one: kills the check dropped
    (`eta = abs(check_real(eta, "eta"))`, eta = -0.5 run as 0.5)."""
    proc = DDPM()
    grid = R.timestep_grid(proc, R.ddim_timesteps(5))
    score = R.gaussian_score(MEAN, COV, proc)
    with pytest.raises(ValueError, match="^eta must be"):
        R.ddim(score, proc, grid, np.zeros((2, 2)), rng=np.random.default_rng(0), eta=-0.5)


def test_ddim_timesteps_refuse_one_more_step_than_training_timesteps():
    """ddim_timesteps: n must lie in 1..N (Raises). n = N is accepted (every timestep,
    N - 1 .. 0, as diffusers' set_timesteps(1000) with "leading" spacing), n = N + 1 is
    refused with the message naming N; the other tests refuse n far above N: kills the
    bound loosened by one (`n > N + 1`: 1001 steps of 1000 // 1001 = 0, all timestep 0)."""
    np.testing.assert_array_equal(R.ddim_timesteps(1000, 1000), np.arange(1000)[::-1])
    with pytest.raises(ValueError, match=r"^num_inference_steps must be <= num_train_timesteps = 1000, got 1001$"):
        R.ddim_timesteps(1001, 1000)


def test_alphas_cumprod_of_the_wrong_length_is_refused():
    """_constants: a table must have exactly one value per timestep (shape (N,)). One of
    N + 1 values (e.g. diffusers' table with a prepended 1) is refused naming the shape;
    a longer table was never tried: kills `table.shape[0] < N` (read as its first N)."""
    proc = DDPM()
    table = np.append(1.0, proc.alphas_cumprod())
    grid = R.timestep_grid(proc, R.ddim_timesteps(10))
    score = R.gaussian_score(MEAN, COV, proc)
    with pytest.raises(ValueError, match=r"^alphas_cumprod must have shape \(1000,\) .*got shape \(1001,\)$"):
        R.ddim(score, proc, grid, np.zeros((2, 2)), alphas_cumprod=table)


@pytest.mark.parametrize("final", [1e-15, 1e-10])
def test_a_final_time_between_the_data_and_timestep_0_is_refused_with_alphas_cumprod(final):
    """With alphas_cumprod the grid must lie on the timesteps' times (i + 1) / N or end at 0
    (module docstring). timestep_grid(..., final=1e-15) ends within rounding of time 0 of
    timestep -1 (index round(1e-12 - 1) = -1; 1e-10 likewise, 1e-7 off, inside the 1e-9 N
    tolerance): both are refused naming the grid entry, as the data step needs t = 0
    exactly. Kills the
    `index < 0` test dropped, which read alphas_cumprod[-1] (the last timestep's, 4e-5) as
    the data's abar = 1 at 1e-15 and gave a final step that does not land on the data."""
    proc = DDPM()
    grid = R.timestep_grid(proc, R.ddim_timesteps(10, spacing="trailing"), final=final)
    score = R.gaussian_score(MEAN, COV, proc)
    for replay in (R.ddim, R.ddpm_ancestral):
        with pytest.raises(ValueError, match=r"^with alphas_cumprod the grid must lie on the timesteps' times .*"
                                             rf"grid\[10\] = .*{final!r}.* is not one"):
            replay(score, proc, grid, np.zeros((2, 2)), rng=np.random.default_rng(0), alphas_cumprod="diffusers")


@pytest.mark.parametrize("name", sorted(R.REPLAYS))
def test_a_score_that_is_not_callable_is_named_before_any_work(name):
    """Every replay refuses a score that is not callable (a string, an array: e.g. the
    model's output passed instead of the model) with "score must be a callable (x, t) ->
    ndarray, got <type>". The other tests pass None only: kills `if score is None` (a
    string then reached the first step and raised Python's TypeError "'str' object is not
    callable")."""
    replay = R.REPLAYS[name]
    options = {"s_churn": 1.0} if name == "karras_stochastic" else {}
    for bad in ("gaussian", np.zeros((2, 2))):
        with pytest.raises(ValueError, match=rf"^score must be a callable \(x, t\) -> ndarray, got "
                                             rf"{type(bad).__name__}$"):
            replay(bad, VP(), [1.0, 0.5, 0.1], np.zeros((2, 2)), np.random.default_rng(0), **options)


@pytest.mark.parametrize("i", [1, 500, 998])
def test_step_variance_from_the_peers_table_to_one_rounding(i):
    """With alphas_cumprod the step's beta is v = (abar_s - abar_t) / abar_s, the difference
    exact for the float32 table (module docstring: "one rounding each"). Read through
    ddpm_ancestral(variance="beta") on the one step from timestep i to i - 1 with a zero
    score from y = 0 fed xi = 1 (it returns sqrt(v)), against mpmath (40 digits) on the
    table's own values: within 2 ulps (measured <= 1). The peer tests allow ~1e-12: kills
    v = 1 - abar_t / abar_s (diffusers' own form, which rounds the ratio first: 5e-13
    relative off at timestep 1, where beta = 1.2e-4)."""
    import mpmath as mp

    proc = DDPM()
    table = proc.diffusers_alphas_cumprod()
    grid = R.timestep_grid(proc, [i, i - 1])[:-1]
    zero = lambda x, t: np.zeros_like(x)  # noqa: E731
    y = R.ddpm_ancestral(zero, proc, grid, np.zeros((1, 1)), noise=np.ones((1, 1, 1)), variance="beta",
                         alphas_cumprod="diffusers")
    with mp.workdps(40):
        a_t, a_s = mp.mpf(float(table[i])), mp.mpf(float(table[i - 1]))
        want = mp.sqrt((a_s - a_t) / a_s)
        assert abs(float(y[0, 0] / want - 1)) <= 2 * np.finfo(float).eps


def test_a_langevin_step_of_zero_is_refused():
    """predictor_corrector's Raises: langevin_step not positive. A step of 0 (a corrector
    that does nothing but consume draws) is refused, as a scalar and as one entry of the
    per-step array; the other tests refuse negative steps only: kills `np.any(e < 0)`."""
    vp, grid = VP(), np.linspace(1.0, 0.1, 4)
    score = R.gaussian_score(MEAN, COV, vp)
    for step in (0.0, [0.01, 0.0, 0.01]):
        with pytest.raises(ValueError, match=r"^langevin_step must be a positive number or 3 positive numbers"):
            R.predictor_corrector(score, vp, grid, np.zeros((2, 2)), np.random.default_rng(0), langevin_step=step)
