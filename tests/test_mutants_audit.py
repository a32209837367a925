"""Tests that kill surviving mutants of sgm_ref.audit and sgm_ref.metrics.score_error (a
mutation-testing review): each pins a number, a boundary or a refusal the other tests left
free, against an independent reference (a closed form, mpmath, or the documented behaviour),
and names in its docstring the mutant it kills."""

import numpy as np
import pytest

from sgm_ref import VP
from _textbook import textbook_em

GRID = np.linspace(1.0, 1e-3, 4)
TARGET = ([2.0], [[0.25]])


def _compare(peer, replay="euler_maruyama", grid=GRID, target=TARGET, **kw):
    from sgm_ref.audit import compare_sampler
    return compare_sampler(peer, replay, VP(), grid, target, 8, np.random.default_rng(0), sample_distances=False, **kw)


# -- sgm_ref.audit ----------------------------------------------------------------------------


def test_the_step_allowance_is_rtol_per_step_taken_and_a_deviation_of_exactly_that_passes():
    """_first_divergence (its docstring): state k + 1 may deviate by rtol (k + 1), and only
    "more than" diverges. rtol = 0.25 (exact in binary): deviations exactly 0.25, 0.5, 0.75
    pass; 0.2, 0.45, 0.7 pass; 0.5 at state 1 is step 0. Kills `>` -> `>=` and the allowance
    rtol (k + 1/2)."""
    from sgm_ref.audit import _first_divergence

    assert _first_divergence(np.array([0.0, 0.25, 0.5, 0.75]), 0.25, False) is None
    assert _first_divergence(np.array([0.0, 0.2, 0.45, 0.7]), 0.25, False) is None
    assert _first_divergence(np.array([0.0, 0.2, 0.5 + 2**-50, 0.7]), 0.25, False) == 1
    assert _first_divergence(np.array([0.0, 0.2, 0.45, 0.7]), 0.25, True) == 3


def test_a_one_step_trajectory_is_read_as_a_trajectory():
    """A loop's result of shape (K + 1, n, d) is its trajectory for any K >= 1 (the module
    docstring): on a two-time grid (one step) the textbook loop's (2, n, d) gets the per-step
    deviation [0, 0] and matches. Kills `out.shape[0] >= 2` -> `>= 3` (refused as a wrong shape)."""
    res = _compare(textbook_em, grid=np.array([1.0, 0.5]))
    assert res.steps_peer == res.steps_replay == 1 and res.deviation is not None and res.deviation.size == 2
    assert res.max_deviation < 1e-15 and res.matches, res.text()


def test_an_integer_output_is_refused_as_not_floating_point():
    """_check_state: a peer output of integer dtype is refused naming the dtype (compare_sampler's
    docstring: "not floating point"). Kills the check widened to integer kinds."""
    with pytest.raises(ValueError, match="must be floating point, got dtype int64"):
        _compare(lambda s, g, x, z: np.zeros(x.shape, dtype=np.int64))


def test_paths_that_both_reach_zero_deviate_by_zero_not_nan():
    """deviation = max|peer - replay| / max|replay| is 0 where both states are exactly 0 (the
    absolute difference, 0, where the replay's state is 0), never 0/0 = NaN. Kills
    `scale > 0` -> `scale >= 0`."""

    def to_zero(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        path = np.stack([np.array(x, dtype=np.float64)] + [np.zeros_like(x, dtype=np.float64)] * (grid.size - 1))
        return path[-1], path

    res = _compare(lambda s, g, x, z: to_zero(None, None, g, x)[1], replay=to_zero)
    assert res.deviation.tolist() == [0.0] * GRID.size and res.final_deviation == 0.0 and res.matches


def test_a_kl_of_laws_fitted_to_samples_does_not_decide_the_match():
    """kl_tolerance bounds the exact KL(peer || replay) (compare_sampler's docstring); a peer
    that refuses the probe runs (here any n but the comparison's 8) has its law fitted to its
    8 samples, whose KL to the replay's exact law is far above rtol, and still matches on
    its deviations. Kills the "exact" condition dropped from SamplerComparison.matches."""

    def only_eight(score, grid, x, noises):
        if x.shape[0] != 8:
            raise RuntimeError("this peer runs only 8 paths")
        return textbook_em(score, grid, x, noises)

    res = _compare(only_eight)
    assert res.laws["method"] == "monte_carlo" and res.laws["fitted"] == ["peer"]
    assert res.kl > 1e-3 and res.max_deviation < 1e-15 and res.matches, res.text()


def test_a_draw_with_a_tiny_coefficient_is_still_found_by_the_probe():
    """_step_draws finds the step that takes each draw by its effect (relative 2^-40): a
    replay whose step 0 draws none and whose step 1 takes draw 0 with coefficient 1e-6 (as
    Euler-Maruyama's sqrt(g^2 h) on a step of h = 5e-13) gives the step function draw 1 (one
    the replay does not use) at step 0 and draw 0 at step 1 (the module docstring). Kills the
    threshold 2^-40 raised to 2^-10, where draw 0 was unseen and handed to step 0."""
    from sgm_ref.audit import _step_draws

    def replay(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        y0 = np.array(x, dtype=np.float64)
        y1 = 0.5 * y0
        y2 = 0.5 * y1 + 1e-6 * noise.draw_noise(0, y0.shape)
        return y2, np.stack([y0, y1, y2])

    assert _step_draws(replay, {}, None, VP(), np.array([1.0, 0.5, 0.1]), 2, 1, 64) == [1, 0]


def test_rtol_zero_is_refused_and_kl_tolerance_zero_is_not():
    """rtol is a rounding allowance > 0 (rtol = 0 would call every float rounding a
    divergence); kl_tolerance may be 0 (an exact peer's KL is 0.0), and a negative one is
    refused naming kl_tolerance. Kills low_open dropped from rtol's check, and kl_tolerance's
    check naming the wrong argument."""
    with pytest.raises(ValueError, match=r"^rtol must be > 0\.0, got 0\.0"):
        _compare(textbook_em, rtol=0.0)
    with pytest.raises(ValueError, match=r"^kl_tolerance must be >= 0\.0, got -1\.0"):
        _compare(textbook_em, kl_tolerance=-1.0)
    assert _compare(textbook_em, kl_tolerance=0.0).kl_tolerance == 0.0


def test_the_float32_note_holds_the_kl_to_float32_s_allowance_too():
    """A float64 peer off by 1e-6 relative at every step (float32-sized rounding) is no match
    at float64's allowance, but is at rtol = 64 * 2^-23 (with kl_tolerance then defaulting to
    that rtol; run here), so it gets the note (compare_sampler's docstring). Its exact KL to
    the replay, ~1e-12, lies between float64's 1.4e-14 and float32's 7.6e-6. Kills the note's
    trial keeping kl_tolerance = float64's rtol (no note), and the note given also for an rtol
    the user chose (`rtol_given is None` dropped)."""
    rtol32 = 64 * 2.0**-23
    peer = lambda s, g, x, z: textbook_em(s, g, x, z) * np.array([1.0] + [1.0 + 1e-6] * 3)[:, None, None]
    res = _compare(peer)
    assert not res.matches and 64 * np.finfo(np.float64).eps < res.kl < rtol32
    assert _compare(peer, rtol=rtol32).matches
    assert any(note.startswith("every deviation is within float32's rounding") for note in res.notes), res.notes
    # an rtol the user gave is theirs: no note (the docstring's "when rtol is not given")
    assert not any("float32" in note for note in _compare(peer, rtol=1e-12).notes)


def test_to_dict_keeps_the_final_deviation_apart_from_the_largest():
    """to_dict's "final_deviation" is the outputs' deviation, not the largest: a peer whose
    state 1 is twice the replay's (deviation exactly 1) and whose other states are the
    replay's gives final 0 and max 1. Kills "final_deviation" written from max_deviation."""
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z) * np.array([1.0, 2.0, 1.0, 1.0])[:, None, None])
    out = res.to_dict()
    assert out["final_deviation"] == 0.0 and out["max_deviation"] == pytest.approx(1.0, rel=1e-14)
    assert out["first_divergence"] == 0 and out["matches"] is False


def test_a_negative_score_tolerance_is_refused():
    """ScoreTolerance's values are >= 0 (its docstring's Raises); 0 is allowed (only an exact
    score passes). Kills the value's lower bound dropped."""
    from sgm_ref.audit import ScoreTolerance

    with pytest.raises(ValueError, match=r"tolerance must be >= 0\.0, got -0\.1"):
        ScoreTolerance((0.0,), (-0.1,))
    with pytest.raises(ValueError, match="tolerance must be >= 0"):
        ScoreTolerance.from_spec("0.001=0.5,0.1=-0.05")
    assert ScoreTolerance((0.0,), (0.0,)).check({"t": [0.5], "relative": [0.0]})["passed"] is True


def test_an_extra_step_is_the_first_divergence_when_the_shared_states_agree():
    """Step counts that differ with every shared state agreeing: the first divergence is the
    first step only one of the two takes, step K = 3 of the replay's K steps (from state 3,
    the last shared; _first_divergence's docstring), named so in text(). Kills
    `deviation.size - 1` -> `deviation.size`."""
    res = _compare(lambda s, g, x, z: (lambda p: np.concatenate([p, p[-1:]]))(textbook_em(s, g, x, z)))
    assert res.steps_peer == 4 and res.steps_replay == 3 and res.deviation.size == 4
    assert res.first_divergence == 3 and not res.matches
    assert "first diverging step: 3 (from t = 0.001), taken by only one of the two" in res.text()


# -- sgm_ref.metrics.score_error ----------------------------------------------------------------


class _Stationary:
    """N(0, I_d), OU's stationary law: p_t = N(0, I) at every t, grad log p_t(x) = -x."""

    def __init__(self, dim=1):
        self.dim = dim

    def sample(self, n, rng):
        return rng.standard_normal((n, self.dim))

    def score(self, x, t, process):
        return -x


def test_log_uniform_times_where_t_over_t0_overflows_stay_in_range_with_the_true_span():
    """t0 = 1e-310 (subnormal), T = 1: T / t0 overflows, so the log-uniform span is
    log T - log t0 = 713.8 (mpmath, 40 digits, of the float t0 itself). Every time drawn
    lies in [t0, T], and with OU's weight g^2 / 2 = 1 a constant error c gives e_i = c^2 t_i
    span exactly (target N(0, 1), OU's stationary law: its score is -x at every t). Kills
    the span's sign flipped in that branch (log T + log t0)."""
    import mpmath
    from sgm_ref import OU
    from sgm_ref.metrics import score_error_integral

    t0, T, c, seen = 1e-310, 1.0, 0.3, []

    def score(x, t):
        seen.append(t.copy())
        return -x + c

    value, _ = score_error_integral(score, _Stationary(), OU(), t0, T, 64, np.random.default_rng(0))
    t = seen[0]
    assert np.all((t >= t0) & (t <= T))
    with mpmath.workdps(40):
        span = float(mpmath.log(mpmath.mpf(T)) - mpmath.log(mpmath.mpf(t0)))
    assert span == pytest.approx(713.8, abs=0.1)
    assert value == pytest.approx(c**2 * np.mean(t * span), rel=1e-12)


def test_a_one_component_mixture_target_gets_the_exact_laws():
    """A one-component GaussianMixture is a Gaussian target and gets the exact output laws
    (compare_sampler's docstring), the same as the pair (mean, cov): the textbook loop's KL
    to the replay is 0.0 and the target law is N(2, 0.25). Kills the one-component test
    changed (laws None: no exact KL at all)."""
    from sgm_ref import GaussianMixture

    res = _compare(textbook_em, target=GaussianMixture([1.0], [[2.0]], [[[0.25]]]))
    assert res.laws is not None and res.laws["method"] == "exact" and res.kl == 0.0
    np.testing.assert_array_equal(res.laws["target"][0], [2.0])
    np.testing.assert_array_equal(res.laws["target"][1], [[0.25]])


class _Flat:
    """A custom target (sample, score, dim): samples N(0, I_2), oracle score `value` at every
    point (0: no relative error can be formed; 1e200: |grad log p_t|^2 overflows)."""

    dim = 2

    def __init__(self, value):
        self.value = value

    def sample(self, n, rng):
        return rng.standard_normal((n, 2))

    def score(self, x, t, process):
        return np.full_like(x, self.value)


def test_a_profile_whose_oracle_is_zero_refuses_the_relative_error():
    """score_error_profile(oracle=True) where E|grad log p_t|^2 = 0: the relative error
    E|s - grad log p_t|^2 / 0 is refused naming the time, not returned as inf or NaN (the
    standards: no NaN/inf for finite input without saying why). Kills `not q_mean > 0` ->
    `q_mean < 0`."""
    from sgm_ref import OU
    from sgm_ref.metrics import score_error_profile

    with pytest.raises(ValueError, match=r"mean square \|grad log p_t\|\^2 is 0 at t = 0\.2 \(ts\[0\]\)"):
        score_error_profile(lambda x, t: np.ones_like(x), _Flat(0.0), OU(), [0.2, 0.3], 4, np.random.default_rng(0),
                            oracle=True)


def test_an_overflowing_oracle_and_error_give_relative_inf_not_nan():
    """overflow="inf" with oracle=True: where the squared error overflows the relative error is
    inf and its standard error nan (score_error_profile's Returns), also where the oracle's
    mean square overflows with it (inf / inf): s = 0 against an oracle of 1e200 at both
    times. With a finite oracle, s = 0 has relative error exactly 1 (e_i = q_i). Kills the
    profile's relative = inf dropped for an overflowing time (it read NaN)."""
    from sgm_ref import OU
    from sgm_ref.metrics import score_error_profile

    prof = score_error_profile(lambda x, t: np.zeros_like(x), _Flat(1e200), OU(), [0.2, 0.3], 4,
                               np.random.default_rng(0), overflow="inf", oracle=True)
    assert prof.errors.tolist() == [np.inf, np.inf] and np.isnan(prof.standard_errors).all()
    assert prof.relative.tolist() == [np.inf, np.inf] and np.isnan(prof.relative_standard_errors).all()
    prof = score_error_profile(lambda x, t: np.zeros_like(x), _Flat(3.0), OU(), [0.2], 4, np.random.default_rng(0),
                               oracle=True)
    assert prof.relative.tolist() == [1.0] and prof.relative_standard_errors.tolist() == [0.0]


def test_the_integral_refuses_a_single_draw():
    """score_error_integral takes n >= 2 (its Parameters: a standard error needs two draws);
    n = 1 is refused naming n, not reported as an overflow of the integral. Kills the
    minimum lowered to 1."""
    from sgm_ref import OU
    from sgm_ref.metrics import score_error_integral

    with pytest.raises(ValueError, match=r"^n must be an integer >= 2, got 1"):
        score_error_integral(lambda x, t: -x, _Flat(0.0), OU(), 0.1, 1.0, 1, np.random.default_rng(0))


def test_the_profile_s_error_and_standard_error_are_the_sample_mean_and_its_standard_error():
    """score_error_profile on N(0, I_2) under OU (grad log p_t = -x exactly) with s = -x / 2:
    e_i = |x_i|^2 / 4 on the points the score saw, so errors = mean(e) and standard_errors =
    std(e, ddof=1) / sqrt(n) (NumPy, on those points) to 1e-14; the relative error is 1/4 and
    its delta-method standard error std(e - q / 4) = 0 (to rounding). Kills the standard error
    scaled by 1 + 1e-9."""
    from sgm_ref import OU
    from sgm_ref.metrics import score_error_profile

    seen = []

    def half(x, t):
        seen.append(x.copy())
        return -0.5 * x

    prof = score_error_profile(half, _Stationary(2), OU(), [0.1, 2.0], 50, np.random.default_rng(3), oracle=True)
    for k, x in enumerate(seen):
        e = 0.25 * np.sum(x**2, axis=1)
        assert prof.errors[k] == pytest.approx(e.mean(), rel=1e-14)
        assert prof.standard_errors[k] == pytest.approx(e.std(ddof=1) / np.sqrt(50), rel=1e-14)
        assert prof.oracle_mean_square[k] == pytest.approx(4 * e.mean(), rel=1e-14)
    np.testing.assert_allclose(prof.relative, 0.25, rtol=1e-15)
    assert np.all(np.abs(prof.relative_standard_errors) < 1e-16)
