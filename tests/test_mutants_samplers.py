"""Tests that kill surviving mutants of sgm_ref.samplers and sgm_ref.kernels.sampler (mutation
testing, review h50).

Each test pins a number or a documented contract that the existing tests left free: the mutant
named in its docstring passed tests/test_samplers.py, test_rate_sampler.py and
test_step_integrals.py, and the selections of other files that exercise the same code
(test_every_process -k diverg, test_fuzz_changes -k probability_flow_off_vp, test_evaluation
-k explicit_grid). Each test fails on its mutant and passes on the code. References are
independent: mpmath, or the number a docstring states (sqrt(max) / 1e4 written out here).
"""

import mpmath
import numpy as np
import pytest

from sgm_ref import OU
from sgm_ref.samplers import euler_maruyama, exponential_integrator, probability_flow, sample, time_grid

RUN = {"euler_maruyama": lambda score, grid, x: euler_maruyama(score, OU(), grid, x, np.random.default_rng(0)),
       "exponential": lambda score, grid, x: exponential_integrator(score, OU(), grid, x, np.random.default_rng(0)),
       "probability_flow": lambda score, grid, x: probability_flow(score, OU(), grid, x)}


def test_a_geometric_grid_beyond_float64_ratios_starts_at_T_and_ends_at_t0_exactly():
    """time_grid's contract T = t_0 > ... > t_N = t0 holds bit for bit on the branch that
    interpolates the logs (t0 / T underflows), where exp(log(1e300)) = 9.999999999999763e299
    is not T. Mutant `grid[0], grid[-1] = T, t0` -> `grid[-1] = t0` passed (the existing test
    compares at rtol 1e-12). The interior against mpmath at 40 digits, within the formula's own
    conditioning |log(t0 / T)| eps = 1.5e-13 (measured 1.5e-14)."""
    T, t0 = 1e300, 1e-300
    grid = time_grid(T, t0, 4, "geometric")
    assert grid[0] == T and grid[-1] == t0
    with mpmath.workdps(40):
        want = [float(mpmath.mpf(T) * (mpmath.mpf(t0) / mpmath.mpf(T)) ** (mpmath.mpf(k) / 4)) for k in range(5)]
    np.testing.assert_allclose(grid, want, rtol=1.5e-13, atol=0)


def test_an_explicit_grid_not_ending_at_t0_is_refused():
    """sample's explicit grid must run from T down to t0 (its docstring): one that stops at 0.2
    for t0 = 0.1 sampled silently to the wrong time under mutant `grid[-1] != t0` dropped."""
    with pytest.raises(ValueError, match=r"^an explicit grid must have n_steps \+ 1 = 3 points from T = 3.0 to "
                                         r"t0 = 0.1; got 3 points from 3.0 to 0.2$"):
        sample(lambda x, t: -x, OU(), 4, 1, np.random.default_rng(0), T=3.0, t0=0.1, n_steps=2,
               grid=np.array([3.0, 1.0, 0.2]))


@pytest.mark.parametrize("method", ["euler_maruyama", "exponential", "probability_flow"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_divergence_threshold_is_sqrt_max_over_1e4(method, dtype):
    """A non-finite score at points beyond sqrt(max) / 1e4 (1.34e150 in float64, 1.84e15 in
    float32: _overflow_limit's docstring) is the sampler's divergence; just below it, the score's
    fault. Mutant `/ 1e4` -> `/ 1e2` passed: the existing test puts its points at 1e160 and 1e100,
    both far from the threshold. Here 5% either side of it."""
    limit = float(np.sqrt(np.float64(np.finfo(dtype).max))) / 1e4
    assert abs(limit / (1.3407807929942596e150 if dtype == np.float64 else 1.8446743e15) - 1) < 1e-6

    def score(y, t):  # NaN wherever a point is beyond 1e-3 times the threshold: the score gives up there
        return np.where(np.abs(y) > limit * 1e-3, np.nan, -y).astype(y.dtype)

    grid = np.array([1.0, 0.5])
    for factor, message in ((1.05, r"^the sampler diverged"), (0.95, r"^score returned non-finite values at step 0")):
        x = np.zeros((3, 2), dtype)
        x[2, 0] = limit * factor
        with pytest.raises(ValueError, match=message):
            RUN[method](score, grid, x)


def test_heun_blames_a_predictor_that_overflowed_not_the_score():
    """Heun's corrector call is judged at the points it was made at, the predictor y_pred
    (heun_correct's docstring): here y = 1e149 (below the threshold 1.34e150) and the predictor
    y_pred = (1 + 2a) y = 2.08e150 (a = h beta / 2 = 9.9) is beyond it; the score gives NaN there.
    That is the sampler's divergence (a step of int beta 19.8). Mutant `_score_status(s_pred,
    y_pred, limit)` -> `_score_status(s_pred, y, limit)` blamed the score: "score returned
    non-finite values at step 0 (t = 0.1)"."""
    x = np.full((2, 3), 1e149)

    def score(y, t):  # finite at the start (s = y), NaN at the overflowing predictor
        return y.copy() if t[0] == 10.0 else np.full_like(y, np.nan)

    with pytest.raises(ValueError, match=r"^the sampler diverged: its points overflowed \(or nearly\) before step 0 "
                                         r"\(t = 10\)\. Its largest step has int beta = 19\.8"):
        probability_flow(score, OU(), np.array([10.0, 0.1]), x)


def test_a_divergence_names_the_index_of_its_largest_step():
    """The divergence message names the largest step by its index: on OU's grid [3, 2.9, 0.5, 0.4]
    the steps have int beta 0.2, 4.8, 0.2, and a constant score of 1e308 overflows the points in
    step 1. Mutant `np.argmax(size)` -> `np.argmin(size)` said "(step 0)" and passed."""
    with pytest.raises(ValueError, match=r"^the sampler diverged: .* "
                                         r"Its largest step has int beta = 4\.8 \(step 1\); "):
        euler_maruyama(lambda x, t: np.full_like(x, 1e308), OU(), np.array([3.0, 2.9, 0.5, 0.4]), np.zeros((2, 2)),
                       np.random.default_rng(0))

