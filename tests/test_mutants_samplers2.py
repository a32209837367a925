"""Tests that kill surviving mutants of sgm_ref.samplers and sgm_ref.kernels.sampler (mutation
testing, second round, review h80; the first round is tests/test_mutants_samplers.py).

Each mutant named in a docstring here passed tests/test_samplers.py, test_mutants_samplers.py,
test_rate_sampler.py and test_step_integrals.py; each test fails on its mutant and passes on the
code. References are independent: mpmath at 40 digits, or the behaviour a docstring or the
module's own message states.
"""

import mpmath
import numpy as np
import pytest

from sgm_ref import EDM, OU
from sgm_ref.samplers import (euler_maruyama, probability_flow, residual_exponential_integrator, sample,
                               start_variance, time_grid)


def test_a_geometric_grid_whose_ratio_is_subnormal_keeps_its_digits():
    """t0 / T = 1e-320 is subnormal (about 2000 units of 2^-1074: 2.5e-4 relative rounding), and
    T (t0 / T)^(k / N) from it is off by up to 1.1e-5; time_grid interpolates the logs there
    (its branch for ratio < tiny). Mutant `ratio >= np.finfo(np.float64).tiny` -> `ratio > 0`
    passed (the existing tests reach the log branch only with t0 / T = 0, where the mutant takes
    it too). Against mpmath at 40 digits: 2.7e-14 (the formula's conditioning |log(t0 / T)| eps
    = 1.6e-13)."""
    T, t0 = 1e20, 1e-300
    grid = time_grid(T, t0, 4, "geometric")
    with mpmath.workdps(40):
        want = [float(mpmath.mpf(T) * (mpmath.mpf(t0) / mpmath.mpf(T)) ** (mpmath.mpf(k) / 4)) for k in range(5)]
    np.testing.assert_allclose(grid, want, rtol=1.6e-13, atol=0)


def test_a_strided_score_output_gives_the_same_bits():
    """The kernels read the score's output flat, so one that is neither C- nor F-contiguous (every
    other column of a wider array) is copied first (_score_for_kernel) and gives the bits of the
    plain output. The existing test (test_a_non_contiguous_score_output_gives_the_same_bits) has
    d = 1, where its strided view is contiguous after all, so mutant `s if s.flags.c_contiguous
    else np.ascontiguousarray(s)` -> `np.ascontiguousarray(s) if s.flags.f_contiguous else s`
    passed; here d = 3."""
    grid = np.array([2.0, 1.0, 0.3])
    x = np.random.default_rng(0).standard_normal((5, 3))

    def strided(z, t):
        wide = np.zeros((z.shape[0], 2 * z.shape[1]))
        wide[:, ::2] = -np.tanh(z)
        s = wide[:, ::2]
        assert not s.flags.c_contiguous and not s.flags.f_contiguous
        return s

    want = euler_maruyama(lambda z, t: -np.tanh(z), OU(), grid, x, np.random.default_rng(1))
    assert np.array_equal(euler_maruyama(strided, OU(), grid, x, np.random.default_rng(1)), want)


def test_a_diverging_step_of_int_beta_above_2_is_named_unstable():
    """The divergence message says "steps with int beta above ~2 are unstable" and blames the
    steps for any largest step above 2: here 2.5 (OU grid [3, 1.75, 0.5]: int beta = 2 h). Mutant
    `largest <= 2.0` -> `largest <= 3.0` called these steps small and blamed the score. The points
    are inf from step 0 on, but the score stays finite: the check after the last step (_finished)
    finds them, and names the end of the grid, "before step 2 (t = 0.5)"; mutant
    `_diverged(grid.size - 1, ...)` -> `grid.size - 2` said "before step 1 (t = 1.75)", a time
    at which no check was made."""
    with pytest.raises(ValueError, match=r"^the sampler diverged: its points overflowed \(or nearly\) before step 2 "
                                         r"\(t = 0\.5\)\. Its largest step has int beta = 2\.5 \(step 0\); "
                                         r"steps with int beta above ~2 are unstable: use more steps"):
        euler_maruyama(lambda x, t: np.full_like(x, 1e308), OU(), np.array([3.0, 1.75, 0.5]), np.zeros((2, 2)),
                       np.random.default_rng(0))


def test_a_diverging_uniform_grid_with_nearly_equal_ratios_is_told_of_a_geometric_grid():
    """The fix a divergence suggests names a geometric grid unless the grid is one already (its
    step ratios equal to rtol 1e-9). The uniform grid [300, 298.5, 297] has ratios 0.99500 and
    0.99497, equal to 3e-5 but not geometric: the message must still suggest a geometric grid.
    Mutant `rtol=1e-9` -> `rtol=1e-2` dropped the suggestion and passed."""
    with pytest.raises(ValueError, match=r"^the sampler diverged: .* use more steps \(n_steps\), a geometric grid or "
                                         r"a smaller T$"):
        euler_maruyama(lambda x, t: np.full_like(x, 1e308), OU(), np.array([300.0, 298.5, 297.0]), np.zeros((2, 2)),
                       np.random.default_rng(0))


def test_sample_refuses_a_one_step_trajectory_beyond_memory_before_any_draw(monkeypatch):
    """_prior refuses a trajectory (copies = n_steps + 1 states) beyond memory before the start
    points are drawn, rng untouched (its docstring): also for n_steps = 1, 2 states. Here a
    machine of 1200 bytes against 2 x 10 x 10 float64 points (1600 bytes; one state, 800, fits).
    Mutant `copies > 1` -> `copies > 2` drew the start points first (the sampler then refused
    the same trajectory, rng advanced)."""
    import sgm_ref._validation as validation

    monkeypatch.setattr(validation, "_physical_memory", lambda: 1200)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match=r"^n_steps = 1 \(a trajectory of 2 x 10 x 10 float64 points\) asks for"):
        sample(lambda x, t: -x, OU(), 10, 10, rng, T=1.0, t0=0.01, n_steps=1, trajectory=True)
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # nothing drawn


def test_start_variance_refuses_a_T_whose_sigma_squared_overflows():
    """start_variance's docstring: a ValueError for a T whose sigma_T^2 overflows float64 on a
    process that is not variance-preserving (EDM at T = 1e200). Mutant dropping its
    _check_sigma2 call raised Python's OverflowError from sigma ** 2 instead (the existing test
    has this case for OU's B(T) only)."""
    with pytest.raises(ValueError, match=r"^T = 1e\+200 is too large for EDM\(.*\): sigma_T\^2 overflows float64; "
                                         r"use a T with sigma_T below about 1e154$"):
        start_variance(EDM(), 1e200)
    assert start_variance(EDM(), 1e150) == pytest.approx(1e300, rel=1e-15)  # sigma_T = T on EDM


def test_a_score_that_raises_on_float32_points_beyond_their_threshold_is_the_divergence():
    """A score that raises on points beyond _overflow_limit of the points' dtype is reported as
    the sampler's divergence (_score_for_kernel); for float32 that limit is sqrt(max) / 1e4 =
    1.84e15, not float64's 1.34e150. Here float32 points at 2e15 (beyond) and 1.7e15 (below,
    where the score's own exception propagates). Mutant `_overflow_limit(y.dtype)` ->
    `_overflow_limit(np.float64)` in that except branch let the score's error through at 2e15
    (the first round's threshold test has a score that returns NaN, the kernels' path)."""
    def score(y, t):
        if np.max(np.abs(y)) > 1e10:
            raise FloatingPointError("score gave up")
        return -y

    for value, error, message in ((2e15, ValueError, r"^the sampler diverged: .* before step 0 \(t = 1\)\. "),
                                  (1.7e15, FloatingPointError, r"^score gave up$")):
        x = np.zeros((3, 2), np.float32)
        x[1, 1] = value
        with pytest.raises(error, match=message):
            euler_maruyama(score, OU(), np.array([1.0, 0.5]), x, np.random.default_rng(0))


def test_time_grid_is_uniform_by_default():
    """time_grid's signature has kind="uniform" (sample's default grid is "geometric": the two
    differ). Mutant `kind="uniform"` -> `kind="geometric"` in time_grid's signature passed:
    every test names the kind or accepts either. Closed form: [1, 0.75, 0.5]."""
    assert time_grid(1.0, 0.5, 2).tolist() == [1.0, 0.75, 0.5]


def test_sample_runs_euler_maruyama_by_default():
    """sample's signature has method="euler_maruyama". Mutant `method="exponential"` passed:
    every test names the method. The default's output is euler_maruyama's bit for bit, and
    not the exponential integrator's."""
    def run(**method):
        return sample(lambda x, t: -x, OU(), 4, 2, np.random.default_rng(3), T=2.0, t0=0.1, n_steps=3, **method)

    assert np.array_equal(run(), run(method="euler_maruyama"))
    assert not np.array_equal(run(), run(method="exponential"))


def test_float32_probability_flow_off_vp_takes_a_start_within_float32s_range():
    """On EDM (alpha = 1) the replay steps x itself, so float32 points up to float32's max are a
    valid start (_routed's comment: "the state itself must fit, not with _check_start_sigma's 64
    standard deviations to spare"; sample at T = 2e36 drew |x| = 6.9e36 and was refused). With
    the score 0 the probability flow dx/dsigma = -sigma s is 0: the output is the start exactly.
    Mutant `state < max` -> `state < max / 64` (5.3e36) refused this start."""
    x = np.array([[6.9e36, -1.0]], np.float32)
    y = probability_flow(lambda x, t: np.zeros_like(x), EDM(), np.array([2e36, 1.0]), x)
    assert y.dtype == np.float32 and np.array_equal(y, x)


def test_residual_exponential_integrator_itself_refuses_a_process_that_is_not_variance_preserving():
    """residual_exponential_integrator's docstring: "the process must be variance-preserving"; the
    existing tests check only sample's refusal (made before its draw). Mutant dropping the
    integrator's own _check_residual call passed."""
    with pytest.raises(ValueError, match=r"^method 'residual_exponential' needs a variance-preserving process \(OU, "
                                         r"VP, VPCosine, DDPM\), got EDM\(.*\): its linear part -y / 2 is that of "
                                         r"beta\(t\)$"):
        residual_exponential_integrator(lambda x, t: -x, EDM(), np.array([0.5, 0.1]), np.zeros((2, 1)),
                                        np.random.default_rng(0))


def test_sample_off_vp_starts_from_sigma_T_times_the_rngs_normals():
    """sample on a process that is not variance-preserving starts from N(0, sigma_T^2 I) (module
    docstring, start_variance): on EDM at T = 3 (sigma_T = 3) the trajectory's first row is
    3 rng.standard_normal((n, d)), bit for bit. Mutant `dtype.type(process.sigma(T))` ->
    `dtype.type(start_variance(process, T))` (a start of standard deviation sigma_T^2 = 9) was
    killed only by a float32 overflow message that it happened to move."""
    rng = np.random.default_rng(5)
    _, path = sample(lambda x, t: -x / (1 + t[:, None] ** 2), EDM(), 3, 2, rng, T=3.0, t0=0.5, n_steps=2,
                     trajectory=True)
    assert np.array_equal(path[0], np.random.default_rng(5).standard_normal((3, 2)) * 3.0)


def test_heun_names_the_time_of_its_second_score_call_for_a_bad_output():
    """Heun's second score call of step k is at t_{k+1}; a wrong output there is named with that
    time, as a non-finite one is ("score returned non-finite values at step 0 (t = 0.5)").
    Mutant `_where(step, t)` -> `_where(step, grid[step])` in _score_for_kernel said "(t = 1)",
    the time of the first call, which returned a sound output."""
    def score(y, t):
        return -y if t[0] == 1.0 else -y[:, :1]

    with pytest.raises(ValueError, match=r"^score returned shape \(3, 1\) at step 0 \(t = 0\.5\); expected \(3, 2\)$"):
        probability_flow(score, OU(), np.array([1.0, 0.5]), np.zeros((3, 2)))
