"""sgm_ref.audit.compare_sampler and `sgm-ref audit-sampler`: a peer's loop against a replay.

The peers here are plain NumPy loops written from the papers' equations (and diffusers'
ScoreSdeVpScheduler, if installed); the planted bugs are the ones issue 13 names.
"""

import importlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import pytest
from _cli import run as _cli_run
from _peers import peer
from _textbook import textbook_em

from sgm_ref import DDPM, EDM, VE, VP, GaussianMixture
from sgm_ref import replays as R
from sgm_ref.audit import compare_sampler, process_from_spec, target_from_spec

VP_ = VP()
TARGET = ([2.0], [[0.25]])  # N(2, 0.5^2): the Gaussian target of the figures in docs/findings.md
TARGET_2D = ([0.8, -0.4], [[0.6, 0.25], [0.25, 1.4]])


def reverse_diffusion_step(x, k, grid, score, noise_k, *, frozen_noise=False):
    """score_sde's reverse-diffusion predictor on VP: y <- (2 - r) y + v s + sqrt(v) xi with the
    integrated v = 1 - exp(-DB); planted: noise variance beta(t_k) h instead of v."""
    dB = VP_.integrated_beta_between(grid[k], grid[k + 1])
    r, v = np.exp(-0.5 * dB), -np.expm1(-dB)
    noise_var = VP_.beta(grid[k]) * (grid[k] - grid[k + 1]) if frozen_noise else v
    return (2.0 - r) * x + v * score(x, np.full(len(x), grid[k])) + np.sqrt(noise_var) * noise_k


GRID = np.linspace(1.0, 1e-3, 11)
# the first 5 steps are exactly 1/N = 0.1 (up to rounding), the last 5 geometric: a loop that
# assumes 1/N goes wrong at step 5
PIECEWISE = np.concatenate([np.linspace(1.0, 0.5, 6), np.geomspace(0.5, 1e-3, 6)[1:]])


def _compare(peer_fn, replay, grid=GRID, target=TARGET, **kw):
    return compare_sampler(peer_fn, replay, VP_, grid, target, 200, np.random.default_rng(0), **kw)


def test_correct_loop_and_step_function_match():
    """A correct loop (trajectory) and a correct step function: deviation at rounding, KL ~ 0, one line."""
    for peer_fn, replay in ((textbook_em, "euler_maruyama"), (reverse_diffusion_step, "reverse_diffusion")):
        res = _compare(peer_fn, replay)
        assert res.matches, res.text()
        assert res.max_deviation <= res.rtol == 64 * np.finfo(np.float64).eps
        assert res.first_divergence is None and res.steps_peer == res.steps_replay == 10
        assert res.laws["method"] == "exact" and abs(res.kl) <= 1e-20
        assert res.text().startswith("MATCH") and "\n" not in res.text()
        json.dumps(res.to_dict(), allow_nan=False)


@pytest.mark.parametrize("bug, replay, grid, first", [
    ("off_by_one", "euler_maruyama", GRID, 0),
    ("step_one_over_n", "euler_maruyama", PIECEWISE, 5),
    ("frozen_noise", "reverse_diffusion", GRID, 0),
])
def test_planted_bugs_are_caught_with_their_first_step_and_exact_kl(bug, replay, grid, first):
    """Each planted bug: a discrepancy, the step where it starts, a non-zero exact KL."""
    if bug == "frozen_noise":
        peer_fn = lambda x, k, g, s, z: reverse_diffusion_step(x, k, g, s, z, frozen_noise=True)  # noqa: E731
    else:
        peer_fn = lambda s, g, x, z: textbook_em(s, g, x, z, **{bug: True})  # noqa: E731
    res = _compare(peer_fn, replay, grid=grid, kind="step" if bug == "frozen_noise" else "loop")
    assert not res.matches
    assert res.first_divergence == first
    assert res.deviation[first] <= res.rtol < res.deviation[first + 1]
    assert res.laws["method"] == "exact" and res.kl > 1e-9
    text = res.text()
    assert text.startswith("DISCREPANCY") and f"first diverging step: {first}" in text


def test_planted_bug_kls():
    """The exact KL(peer || replay) of each planted bug on N(2, 0.5^2), VP, 10 steps (stated in
    docs/findings.md): off-by-one 6.08e-4, 1/N on the piecewise grid 0.242, beta(t_k) h noise 8.28e-2."""
    kls = {
        "off_by_one": _compare(lambda s, g, x, z: textbook_em(s, g, x, z, off_by_one=True), "euler_maruyama").kl,
        "step": _compare(lambda s, g, x, z: textbook_em(s, g, x, z, step_one_over_n=True), "euler_maruyama",
                         grid=PIECEWISE).kl,
        "noise": _compare(lambda x, k, g, s, z: reverse_diffusion_step(x, k, g, s, z, frozen_noise=True),
                          "reverse_diffusion", kind="step").kl,
    }
    assert kls == pytest.approx({"off_by_one": 6.083e-4, "step": 0.2420, "noise": 8.284e-2}, rel=1e-3)


def test_a_start_state_that_differs_hides_no_later_step():
    """A peer whose state 0 is not x still gets the step where its path leaves the replay's
    (a 1% error from step 5 was reported with no step), and a trajectory that leaves out its
    start state is named as such (it was reported as diverging only at its last step)."""
    def bug_at_5(s, g, x, z):
        path = textbook_em(s, g, x, z).copy()
        path[0] *= 1.5
        path[6:] *= 1.01
        return path

    res = _compare(bug_at_5, "euler_maruyama")
    assert not res.matches and res.first_divergence == 5, res.text()
    assert "first diverging step: 5" in res.text() and "does not start at x" in res.text()

    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z)[1:], "euler_maruyama")
    assert not res.matches and res.steps_peer == 9 and res.first_divergence == 0, res.text()
    assert "its 10 states are the replay's states 1 to 10: the trajectory omits the start state x" in res.text()

    def start_only(s, g, x, z):  # only the start differs: every step's result agrees
        path = textbook_em(s, g, x, z).copy()
        path[0] *= 1.5
        return path
    res = _compare(start_only, "euler_maruyama")
    assert res.matches and res.first_divergence is None and "does not start at x" in " ".join(res.notes)
    assert "omits the start state" not in " ".join(res.notes)


def test_peer_returning_only_its_output_gets_the_final_deviation():
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z, off_by_one=True)[-1], "euler_maruyama")
    assert res.deviation is None and res.steps_peer is None and res.first_divergence is None
    assert not res.matches and res.final_deviation > 1e-3
    assert "per-step deviation: not available" in res.text()


def test_non_affine_peer_falls_back_to_monte_carlo():
    """A peer with a quadratic term is not affine: its law is the Gaussian fitted to its samples, said so."""
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z)[-1] + 1e-3 * x**2, "euler_maruyama",
                   target=TARGET_2D)
    assert res.laws["method"] == "monte_carlo"
    assert any("fitted to its samples" in n for n in res.notes)


def test_non_gaussian_target_gets_sample_distances_only():
    ring = GaussianMixture.ring()
    res = _compare(textbook_em, "euler_maruyama", target=ring)
    assert res.matches and res.laws is None
    sw, se = res.samples["sliced_wasserstein"]["peer_vs_replay"]
    assert sw == 0.0 and se == 0.0
    v, se = res.samples["mmd2"]["replay_vs_target"]
    assert np.isfinite(v) and se > 0


def test_text_says_the_sliced_wasserstein_error_is_over_the_projections_only():
    """In d = 1 every projection is +-1, so the sliced Wasserstein's standard error (over the
    directions, x and y held fixed) is 0 up to rounding: a DISCREPANCY's text read
    "sliced_wasserstein: peer_vs_replay ... ± 1e-24; peer_vs_target 0.189 ± 1e-18" for samples
    of 50, unlabelled, where sample_report says "(± over the random projections only)" (a review)."""
    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z, off_by_one=True), "euler_maruyama")
    assert not res.matches
    (line,) = [line for line in res.text().splitlines() if "sliced_wasserstein" in line]
    assert line.startswith("  sliced_wasserstein (± over the random projections only): peer_vs_replay ")
    assert res.samples["sliced_wasserstein"]["peer_vs_target"][1] < 1e-12  # d = 1: what the label explains
    (line,) = [line for line in res.text().splitlines() if "mmd2" in line]
    assert line.startswith("  mmd2: peer_vs_replay ")  # its standard error covers the samples: no label


def _gaussian_mmd2_1d(law_a, law_b, h):
    """Closed-form MMD^2 of two 1-D Gaussian laws (mean, cov) under exp(-D^2 / (2 h^2)), from
    E k = h / sqrt(h^2 + s2) exp(-mu^2 / (2 (h^2 + s2))) over D ~ N(mu, s2) (checked against
    quadrature in tests/test_distances.py::test_mmd_paired_is_unbiased_and_its_standard_error_calibrated)."""
    (ma, va), (mb, vb) = [(float(np.ravel(m)[0]), float(np.ravel(c)[0])) for m, c in (law_a, law_b)]
    e = lambda mu, s2: h / np.sqrt(h * h + s2) * np.exp(-mu * mu / (2 * (h * h + s2)))
    return e(0.0, 2 * va) + e(0.0, 2 * vb) - 2 * e(ma - mb, va + vb)


def test_peer_vs_replay_mmd_is_the_paired_statistic():
    """Row i of the peer's and of the replay's output come from the same start point and noise:
    their MMD^2 is the paired U-statistic. The independent one's cross terms i = j biased it: a
    MATCH (identical outputs) read -8.8e-3 ± 4e-4 for 0 at n = 100, a peer whose steps are 0.9
    times too short -7.1e-3 ± 5.5e-3 for the closed form's 1.55e-3 between the two exact laws."""
    from sgm_ref.metrics import mmd
    outputs = {}

    def kept(loop):
        def run(score, grid, x, noises):
            path = loop(score, grid, x, noises)
            # the first call is the comparison's (the probe runs come after); the replay's output is
            # textbook_em's to the bit (the MATCH below has max_deviation 0)
            outputs.setdefault("pair", (path[-1], textbook_em(score, grid, x, noises)[-1]))
            return path
        return run

    def short_steps(score, grid, x, noises):
        y, path = x.copy(), [x.copy()]
        for k in range(grid.size - 1):
            t, h = grid[k], 0.9 * (grid[k] - grid[k + 1])
            y = y - h * (VP_.f(t) * y - VP_.g2(t) * score(y, np.full(len(y), t))) + np.sqrt(VP_.g2(t) * h) * noises(k)
            path.append(y)
        return np.stack(path)

    res = compare_sampler(kept(textbook_em), "euler_maruyama", VP_, GRID, TARGET, 100, np.random.default_rng(0))
    assert res.matches and res.max_deviation == 0.0
    assert res.samples["mmd2"]["peer_vs_replay"] == (0.0, 0.0)
    assert mmd(*outputs["pair"]).value == pytest.approx(-8.8e-3, abs=5e-5)  # the independent statistic

    outputs.clear()
    res = compare_sampler(kept(short_steps), "euler_maruyama", VP_, GRID, TARGET, 100, np.random.default_rng(0))
    assert not res.matches and res.laws["method"] == "exact"
    value, se = res.samples["mmd2"]["peer_vs_replay"]
    independent = mmd(*outputs["pair"])
    exact = _gaussian_mmd2_1d(res.laws["peer"], res.laws["replay"], independent.bandwidth)
    assert exact == pytest.approx(1.547e-3, rel=1e-3)
    assert abs(value - exact) < se < 1e-3 and value > 2 * se  # 1.50e-3 ± 5.0e-4
    assert independent.value == pytest.approx(-7.1e-3, abs=5e-5)


def test_two_rows_keep_the_mmd_against_the_target():
    """n = 2 is allowed, but the paired MMD^2 of the outputs needs 3 pairs: its refusal dropped
    every MMD^2, the two against the target samples too (computed at n = 2 before the peer-replay
    one was paired). Now only that one is left out, and a note says why."""
    from sgm_ref.metrics import mmd
    res = compare_sampler(textbook_em, "euler_maruyama", VP_, GRID, TARGET, 2, np.random.default_rng(0))
    assert res.matches and set(res.samples["mmd2"]) == {"peer_vs_target", "replay_vs_target"}
    assert any("peer_vs_replay not computed" in n and "n >= 3" in n for n in res.notes)
    assert not any(n.startswith("mmd2: not computed") for n in res.notes)
    value, se = res.samples["mmd2"]["peer_vs_target"]
    assert np.isfinite(value) and np.isfinite(se)
    assert json.loads(res.to_json())["samples"]["mmd2"]["peer_vs_target"] == [value, se]
    with pytest.raises(ValueError, match="at least 3 pairs"):  # the reason, from mmd itself
        mmd(np.zeros((2, 1)), np.ones((2, 1)), paired=True)


def test_given_noise_is_what_both_sides_use():
    rng = np.random.default_rng(3)
    noise = rng.standard_normal((10, 200, 1))
    res = _compare(textbook_em, "euler_maruyama", noise=noise)
    assert res.matches
    with pytest.raises(ValueError, match="draw 9 was asked"):
        _compare(textbook_em, "euler_maruyama", noise=noise[:9])


def test_given_noise_of_another_kind_is_refused_not_cast():
    """noise was read by np.asarray(noise, dtype=float64): a complex array lost its imaginary part
    under a ComplexWarning, strings were parsed, a bool array became draws of 0 and 1 and a masked
    array the numbers under its mask, each compared as if given; a NaN draw read "must be a finite
    array of shape (n_draws, 200, 1), got shape (10, 200, 1)" (a review)."""
    import warnings

    noise = np.random.default_rng(3).standard_normal((10, 200, 1))
    nan = noise.copy()
    nan[4, 7, 0] = np.nan
    cases = [(noise + 0j, "got dtype complex128"), (noise.astype(str), "got dtype <U"), (noise > 0, "got dtype bool"),
             (np.ma.masked_array(noise, mask=noise > 2), "noise is a masked array"),
             (nan, r"^noise contains non-finite values \(NaN or inf\)$")]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a ComplexWarning is no answer
        for bad, match in cases:
            with pytest.raises(ValueError, match=match):
                _compare(textbook_em, "euler_maruyama", noise=bad)
    # real numbers of any float or integer dtype are still read as float64
    assert _compare(textbook_em, "euler_maruyama", noise=noise.astype(np.float32)).matches


def test_a_peer_in_extended_precision_is_held_to_float64s_rounding_not_below():
    """The default allowance was 64 eps of the peer's output dtype: a correct Euler–Maruyama loop
    in longdouble (x87 80-bit) returning longdouble was held to 6.9e-18 per step, below the float64
    replay's own rounding, and reported as a DISCREPANCY at step 0 (deviation 2.2e-16; a review)."""
    def em_longdouble(score, grid, x, noises):
        y, path = x.astype(np.longdouble), [x.astype(np.longdouble)]
        for k in range(grid.size - 1):
            t, h = grid[k], np.longdouble(grid[k]) - np.longdouble(grid[k + 1])
            f, g2 = np.longdouble(VP_.f(t)), np.longdouble(VP_.g2(t))
            s = score(y.astype(np.float64), np.full(len(y), t)).astype(np.longdouble)
            y = y - h * (f * y - g2 * s) + np.sqrt(g2 * h) * noises(k).astype(np.longdouble)
            path.append(y)
        return np.stack(path)

    res = _compare(em_longdouble, "euler_maruyama")
    assert res.rtol == 64 * np.finfo(np.float64).eps
    assert res.matches and res.max_deviation < 1e-14, res.text()  # 3.2e-16 with x87 longdouble
    # a planted bug still shows
    assert not _compare(lambda s, g, x, z: em_longdouble(s, g, x, z) * np.longdouble(1 + 1e-12), "euler_maruyama").matches


def test_bad_input_raises():
    # the hint names both kinds (it ended "; or pass kind=", read as cut off)
    with pytest.raises(ValueError, match=r"required arguments: .*; or pass kind='loop' or kind='step'$"):
        _compare(lambda a, b: a, "euler_maruyama")
    with pytest.raises(ValueError, match="kind must be"):
        _compare(textbook_em, "euler_maruyama", kind="steps")
    with pytest.raises(ValueError, match="replay must be one of"):
        _compare(textbook_em, "nope")
    with pytest.raises(ValueError, match="has shape"):
        _compare(lambda s, g, x, z: x[:, :0], "euler_maruyama")
    with pytest.raises(ValueError, match="not finite"):
        _compare(lambda s, g, x, z: x * np.nan, "euler_maruyama")
    with pytest.raises(ValueError, match="target must be"):
        _compare(textbook_em, "euler_maruyama", target="ring")
    with pytest.raises(ValueError, match="rtol"):
        _compare(textbook_em, "euler_maruyama", rtol=-1.0)
    with pytest.raises(ValueError, match="grid must be strictly decreasing"):
        _compare(textbook_em, "euler_maruyama", grid=GRID[::-1])

    def raises(score, grid, x, noises):
        raise KeyError("the peer's own error")

    with pytest.raises(KeyError, match="the peer's own error"):  # passed through unchanged
        _compare(raises, "euler_maruyama")


def test_a_count_n_beyond_memory_is_named_before_any_work():
    """n = 2**62 gave NumPy's "array is too big", n = 2**40 a MemoryError, neither naming n;
    the peer is not called."""
    from sgm_ref._validation import _physical_memory

    calls = []

    def peer(score, grid, x, noises):
        calls.append(1)
        return x

    memory = _physical_memory()
    for n in (2**62, 2**40):
        needed = 3 * GRID.size * 1 * 8 * n  # the two paths and their noise: (K + 1, n, d) each, float64
        assert needed > min(memory or np.inf, np.iinfo(np.intp).max)
        with pytest.raises(ValueError, match=rf"^n must be at most \d+ on this machine, got {n}: the two paths and "
                                             r"their noise would need"):
            compare_sampler(peer, "euler_maruyama", VP_, GRID, TARGET, n, np.random.default_rng(0))
    assert calls == []


def test_specs():
    assert process_from_spec("vp") == VP()
    assert process_from_spec("ddpm:scaled_linear") == DDPM(beta_schedule="scaled_linear")
    assert process_from_spec("ve:sigma_min=0.02,sigma_max=40") == VE(0.02, 40.0)
    assert isinstance(process_from_spec("edm"), EDM)
    for bad in ("", "vq", "vp:beta_min", "vp:beta_min=x", "ve:beta_min=1"):
        with pytest.raises(ValueError, match="process spec"):
            process_from_spec(bad)
    g = target_from_spec("gaussian:d=3,mean=1,std=0.5")
    assert g.dim == 3 and np.allclose(g.covariance(), 0.25 * np.eye(3))
    for bad in ("gaussian:d=0", "gaussian:std=-1", "gaussian:k=2"):
        with pytest.raises(ValueError, match="target spec"):
            target_from_spec(bad)


# -- diffusers' ScoreSdeVpScheduler: steps of 1/N on a grid of spacing (1 - eps)/(N - 1) -----------


def diffusers_score_sde_vp(score, grid, x, noises):
    """diffusers' ScoreSdeVpScheduler as a loop on the N points of `grid` (its timesteps made
    float64), its randn_tensor fed noises(0), noises(1), ...; returns its N + 1 states."""
    import torch
    module = importlib.import_module("diffusers.schedulers.deprecated.scheduling_sde_vp")
    sched = module.ScoreSdeVpScheduler()
    sched.set_timesteps(grid.size)
    sched.timesteps = torch.from_numpy(grid.copy())
    counter, original = itertools.count(), module.randn_tensor
    module.randn_tensor = lambda *a, **k: torch.from_numpy(noises(next(counter)))
    try:
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for t in sched.timesteps:
            tt = np.full(x.shape[0], float(t))
            eps = -VP_.sigma(tt)[:, None] * score(y.numpy(), tt)
            y, _ = sched.step_pred(torch.from_numpy(eps), y, torch.from_numpy(tt))
            path.append(y.numpy().copy())
    finally:
        module.randn_tensor = original
    return np.stack(path)


@pytest.mark.parametrize("N, kl", [(10, 2.929e-3), (100, 1.831e-5), (1000, 6.09e-8)])
def test_score_sde_vp_scheduler_against_textbook_euler_maruyama(N, kl):
    """On linspace(1, 1e-3, N), diffusers takes N steps of 1/N, the textbook scheme the grid's
    N - 1 steps: compare_sampler names step 0 as the first diverging one, the step counts,
    and the exact KL(diffusers || textbook) on N(2, 0.5^2). With step_size=1/N the replay
    matches it (to 1e-10: diffusers computes in float64 here); the step scale is
    (1/N) / ((1 - eps)/(N - 1)) = 0.9009 at N = 10. At N = 10 and n = 2000 the paired MMD^2
    of the two outputs resolves the difference, 1.0e-3 ± 1.9e-4 for the closed form's 1.07e-3
    between the exact laws (docs/findings.md; the independent statistic read 5.9e-4 ± 1e-3)."""
    from sgm_ref.metrics import mmd
    peer("diffusers")
    grid = np.linspace(1.0, 1e-3, N)
    outputs = {}

    def kept(score, grid, x, noises):  # the comparison's outputs (its first call), for the bandwidth
        path = diffusers_score_sde_vp(score, grid, x, noises)
        outputs.setdefault("pair", (path[-1], textbook_em(score, grid, x, noises)[-1]))
        return path

    res = compare_sampler(kept, "euler_maruyama", VP_, grid, TARGET, 2000 if N == 10 else 32,
                          np.random.default_rng(1), sample_distances=N == 10)
    # at N = 1000 (N eps = 1) the step sizes coincide and only the extra step differs
    assert not res.matches and res.first_divergence == (N - 1 if N == 1000 else 0)
    assert (res.steps_peer, res.steps_replay) == (N, N - 1)
    assert res.laws["method"] == "exact" and res.kl == pytest.approx(kl, rel=2e-3)
    if N == 10:
        assert (1.0 / N) / (grid[0] - grid[1]) == pytest.approx(0.9009009, abs=1e-7)
        value, se = res.samples["mmd2"]["peer_vs_replay"]
        assert (value, se) == (pytest.approx(1.0e-3, abs=5e-5), pytest.approx(1.9e-4, abs=5e-6))
        exact = _gaussian_mmd2_1d(res.laws["peer"], res.laws["replay"], mmd(*outputs["pair"]).bandwidth)
        assert exact == pytest.approx(1.07e-3, abs=5e-6) and abs(value - exact) < se
        same = compare_sampler(diffusers_score_sde_vp, "euler_maruyama", VP_, grid, TARGET, 32,
                               np.random.default_rng(1), replay_options={"step_size": 1.0 / N}, rtol=1e-10)
        assert same.matches and same.kl <= 1e-10, same.text()


# -- the command line ----------------------------------------------------------------------------

PEER_MODULE = '''
import numpy as np
from sgm_ref import VP
vp = VP()

def em(score, grid, x, noises):
    y = x.copy()
    for k in range(grid.size - 1):
        t, h = grid[k], grid[k] - grid[k + 1]
        y = y - h * (vp.f(t) * y - vp.g2(t) * score(y, np.full(len(y), t))) + np.sqrt(vp.g2(t) * h) * noises(k)
    return y

def em_step_one_over_n(score, grid, x, noises):
    y, path, N = x.copy(), [x.copy()], grid.size - 1
    for k in range(N):
        t, h = grid[k], 1.0 / N
        y = y - h * (vp.f(t) * y - vp.g2(t) * score(y, np.full(len(y), t))) + np.sqrt(vp.g2(t) * h) * noises(k)
        path.append(y)
    return np.stack(path)

def broken(score, grid, x, noises):
    raise RuntimeError("boom")
'''


def run(*args, cwd=None):
    """`sgm-ref args` in cwd (tests/_cli.py's run: forked from one interpreter), its exit status not checked."""
    return _cli_run(*args, cwd=cwd, check=False)


def test_cli_correct_loop_one_line_exit_0(tmp_path):
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE)
    r = run("audit-sampler", "--sampler", "peers_mod:em", "--replay", "euler_maruyama", "--process", "vp",
            "--target", "gaussian:d=2,mean=1,std=0.5", "--n", "200", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("MATCH") and r.stdout.count("\n") == 1


def test_cli_step_function_and_replay_option(tmp_path):
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE + """
def rd_step(x, k, grid, score, noise_k):
    dB = vp.integrated_beta_between(grid[k], grid[k + 1])
    r, v = np.exp(-0.5 * dB), -np.expm1(-dB)
    return (2.0 - r) * x + v * score(x, np.full(len(x), grid[k])) + np.sqrt(v) * noise_k
""")
    r = run("audit-sampler", "--sampler", "peers_mod:rd_step", "--replay", "reverse_diffusion", "--option",
            "denoise=false", "--target", "ring", "--n", "100", "--n-steps", "5", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("MATCH"), r.stdout + r.stderr


def test_cli_planted_bug_exit_1_with_json(tmp_path):
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE)
    out = tmp_path / "audit.json"
    r = run("audit-sampler", "--sampler", "peers_mod:em_step_one_over_n", "--replay", "euler_maruyama",
            "--target", "gaussian:d=1,mean=2,std=0.5", "--process", "vp", "--n-steps", "9", "--n", "200",
            "--json", out, cwd=tmp_path)
    assert r.returncode == 1, r.stderr
    assert r.stdout.startswith("DISCREPANCY") and "first diverging step: 0" in r.stdout
    report = json.loads(out.read_text())
    assert report["matches"] is False and report["first_divergence"] == 0
    assert report["laws"]["peer_vs_replay"]["kl"] > 1e-9


@pytest.mark.parametrize("args, message", [
    (["--replay", "nope"], "invalid choice"),
    (["--process", "vq"], "process spec"),
    (["--option", "step_size"], "--option must look like"),
    (["--sampler", "peers_mod:missing"], "has no attribute"),
    (["--sampler", "peers_mod:broken"], "--sampler peers_mod:broken raised RuntimeError: boom"),
    (["--target", "gaussian:d=x"], "target spec"),
    # a review: these ended in a TypeError traceback (exit 1) or were misread
    (["--option", "foo=1"], "--option): euler_maruyama has no option 'foo'; its options are step_size, denoise"),
    (["--option", "rng=1"], "rng is set by the comparison itself"),
    (["--option", "denoise=False"], "euler_maruyama's denoise is true or false, got 'False'"),
    (["--replay", "karras_stochastic", "--process", "edm", "--grid", "karras", "--T", "1", "--t0", "0.01"],
     "karras_stochastic needs s_churn (--option s_churn=VALUE)"),
])
def test_cli_bad_usage_exit_2(tmp_path, args, message):
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE)
    base = {"--sampler": "peers_mod:em", "--replay": "euler_maruyama", "--target": "gaussian:d=1"}
    extra = dict(zip(args[::2], args[1::2]))
    argv = [a for k, v in {**base, **extra}.items() for a in (k, v)]
    r = run("audit-sampler", *argv, "--n", "50", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1 and r.stdout == ""


@pytest.mark.parametrize("suffix", [".txt", ".npy"])
def test_cli_grid_file_is_the_grid(tmp_path, suffix):
    """--grid-file: the comparison runs on the file's times, read exactly (the JSON report's
    grid), as a text file (commas or whitespace) or an .npy array; the peer matches there."""
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE)
    grid = np.array([0.9, 0.61, 0.3, 0.123456789012345678, 1e-3])
    path = tmp_path / f"grid{suffix}"
    if suffix == ".npy":
        np.save(path, grid)
    else:
        path.write_text("0.9, 0.61\n0.3 " + repr(float(grid[3])) + "\n1e-3\n")
    out = tmp_path / "audit.json"
    r = run("audit-sampler", "--sampler", "peers_mod:em", "--replay", "euler_maruyama", "--process", "vp",
            "--target", "gaussian:d=2,mean=1,std=0.5", "--n", "100", "--grid-file", path, "--json", out, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("MATCH"), r.stdout + r.stderr
    assert json.loads(out.read_text())["grid"] == grid.tolist()


def test_cli_grid_file_of_diffusers_sigmas_and_lower_order_final(tmp_path):
    """The use it is for: DPMSolverMultistepScheduler(final_sigmas_type="sigma_min") at 10 steps
    in the VP frame (docs/peers.md), its own sigmas saved with np.save: a MATCH with
    --option lower_order_final=true, a DISCREPANCY at its last step without."""
    peer("torch")
    diffusers = peer("diffusers")
    sched = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    sched.set_timesteps(10)
    np.save(tmp_path / "sigmas.npy", sched.sigmas.numpy().astype(np.float64))
    (tmp_path / "dpm_mod.py").write_text("""
import numpy as np, torch, diffusers
from sgm_ref import EDM
from sgm_ref.conventions import convert

def vp(sigma):
    return 1.0 / np.sqrt(1.0 + sigma**2)

def loop(score, grid, x, noises):
    sched = diffusers.DPMSolverMultistepScheduler(final_sigmas_type="sigma_min")
    sched.set_timesteps(len(grid) - 1)
    y, path = torch.from_numpy(x * vp(grid[0])), [x.copy()]
    for k, timestep in enumerate(sched.timesteps):
        sigma = np.full(len(x), grid[k])
        x_edm = y.numpy() / vp(grid[k])
        eps = convert(score(x_edm, sigma), x_edm, sigma, EDM(), from_="score", to="eps")
        y = sched.step(torch.from_numpy(eps), timestep, y).prev_sample
        path.append(y.numpy() / vp(grid[k + 1]))
    return np.stack(path)
""")
    argv = ["audit-sampler", "--sampler", "dpm_mod:loop", "--replay", "dpmpp_2m", "--process", "edm",
            "--target", "gaussian:d=2,mean=1,std=0.5", "--n", "100", "--grid-file", "sigmas.npy", "--rtol", "7.6e-6"]
    r = run(*argv, "--option", "lower_order_final=true", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("MATCH"), r.stdout + r.stderr
    r = run(*argv, cwd=tmp_path)
    assert r.returncode == 1 and "first diverging step: 9" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize("content, args, message", [
    ("1 0.5 0.1", ["--n-steps", "5"], "--grid-file gives the whole grid; --n-steps does not apply with it"),
    ("1 0.5 0.1", ["--grid", "uniform", "--T", "1"], "--grid, --T do not apply with it"),
    ("1, 0.5, abc", [], "could not convert string to float: 'abc' (the file holds times between whitespace"),
    ("0.1 0.5 1", [], "grid must be strictly decreasing (from T to t0); grid[0] = 0.1 <= grid[1] = 0.5"),
    ("1 0.5 nan", [], "--grid-file grid.txt: grid"),
    ("", [], "--grid-file grid.txt: grid must be a 1-D array of at least 2 times"),
    ("2 0.5 0.1", [], "its times must lie in [0, 1.0]"),
    (None, [], "--grid-file grid.txt: No such file or directory"),
])
def test_cli_bad_grid_file_exit_2(tmp_path, content, args, message):
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE)
    if content is not None:
        (tmp_path / "grid.txt").write_text(content)
    r = run("audit-sampler", "--sampler", "peers_mod:em", "--replay", "euler_maruyama", "--process", "vp",
            "--target", "gaussian:d=1", "--n", "50", "--grid-file", "grid.txt", *args, cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1 and r.stdout == "", r.stderr


@pytest.mark.parametrize("write, message", [
    (lambda p: np.savez(p, a=np.ones(3)), "an .npz archive, not one .npy array"),
    (lambda p: np.save(p, np.array(["1", "0.5"])), "the array has dtype <U3; times are real numbers"),
    (lambda p: p.write_bytes(b"not numpy at all"), "not a readable .npy array"),
    (lambda p: np.save(p, np.ones((2, 2))), "grid must be a 1-D array"),
])
def test_cli_bad_grid_npy_exit_2(tmp_path, write, message):
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE)
    path = tmp_path / "grid.npy"
    write(path)
    if not path.exists():  # np.savez appends .npz: give it the .npy name
        (tmp_path / "grid.npy.npz").rename(path)
    r = run("audit-sampler", "--sampler", "peers_mod:em", "--replay", "euler_maruyama", "--process", "vp",
            "--target", "gaussian:d=1", "--n", "50", "--grid-file", "grid.npy", cwd=tmp_path)
    assert r.returncode == 2 and message in r.stderr and r.stderr.count("\n") == 1 and r.stdout == "", r.stderr


@pytest.mark.parametrize("target", ["gaussian:d=2,mean=1,std=0.5", "ring"])
@pytest.mark.parametrize("output, note", [("np.zeros_like(x)", "peer || replay: no distance between the laws"),
                                          ("x * 1e200", "mmd2: not computed")])
def test_cli_a_broken_peer_is_a_discrepancy_not_bad_usage(tmp_path, target, output, note):
    """A peer returning zeros (a singular output law) or 1e200 x (beyond the distances'
    range) exited 2, bad usage, with a message about cov0 or x (a review): it is a
    DISCREPANCY, exit 1, and the notes say which distance could not be computed."""
    (tmp_path / "peers_mod.py").write_text(PEER_MODULE + f"""
def out(score, grid, x, noises):
    for k in range(len(grid) - 1):
        noises(k)
    return {output}
""")
    r = run("audit-sampler", "--sampler", "peers_mod:out", "--replay", "euler_maruyama", "--target", target,
            "--n", "50", cwd=tmp_path)
    assert r.returncode == 1 and r.stderr == "", r.stderr
    assert r.stdout.startswith("DISCREPANCY")
    if target == "ring" and output.startswith("np.zeros"):
        return  # no exact law on the ring, and the sample distances of zeros are finite
    assert note in r.stdout, r.stdout


# -- more diffusers peers through compare_sampler (the rows of docs/findings.md) -----------------


def diffusers_ddim_loop(spacing, n_steps=10):
    """diffusers' DDIMScheduler (eta = 0) with sgm_ref's float64 alphas_cumprod as a loop on
    DDPM times: eps = -sigma_t * score at the time of each of its timesteps."""
    import torch
    diffusers = peer("diffusers")
    proc = DDPM()

    def loop(score, grid, x, noises):
        sched = diffusers.DDIMScheduler(clip_sample=False, timestep_spacing=spacing)
        sched.alphas_cumprod = torch.from_numpy(proc.alphas_cumprod())
        sched.set_timesteps(n_steps)
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for k, t in enumerate(sched.timesteps):
            tk = np.full(x.shape[0], grid[k])
            eps = -proc.sigma(tk)[:, None] * score(y.numpy(), tk)
            y = sched.step(torch.from_numpy(eps), t, y).prev_sample
            path.append(y.numpy().copy())
        return np.stack(path)

    sched = diffusers.DDIMScheduler(timestep_spacing=spacing)
    sched.set_timesteps(n_steps)
    return proc, R.timestep_grid(proc, sched.timesteps.numpy()), loop


@pytest.mark.parametrize("spacing, first, kl", [("leading", None, 0.0), ("linspace", 0, 1.401e-2)])
def test_diffusers_ddim_spacing_through_compare_sampler(spacing, first, kl):
    """DDIMScheduler steps from timestep i to i - 1000 // n whatever the spacing: with "leading"
    it is the chained DDIM of the replay (to float64 rounding); with "linspace" (999, 888, ...)
    its first step lands on 899, not 888, so step 0 is the first diverging one and the exact
    KL(diffusers || ddim) on the Gaussian target is 1.40e-2 at n = 10."""
    proc, grid, loop = diffusers_ddim_loop(spacing)
    res = compare_sampler(loop, "ddim", proc, grid, TARGET_2D, 64, np.random.default_rng(0),
                          replay_options={"eta": 0.0}, sample_distances=False)
    assert res.first_divergence == first and res.matches == (first is None), res.text()
    assert res.laws["method"] == "exact" and res.kl == pytest.approx(kl, rel=1e-3, abs=1e-12)


def diffusers_euler_loop(step_options=None, monkeypatch=None):
    """(its 20 float32 sigmas in float64, a compare_sampler loop running diffusers'
    EulerDiscreteScheduler on them): the score takes the unscaled sample and its sigma, eps =
    -sigma score; with step_options (churn) its noise is the comparison's, through monkeypatch."""
    import importlib

    import torch
    diffusers = peer("diffusers")
    sched0 = diffusers.EulerDiscreteScheduler()
    sched0.set_timesteps(20)
    sigmas = sched0.sigmas.numpy().astype(np.float64)
    options = step_options or {}

    def loop(score, grid, x, noises):
        sched = diffusers.EulerDiscreteScheduler()
        sched.set_timesteps(20)
        sched.is_scale_input_called = True
        if options:
            module = importlib.import_module("diffusers.schedulers.scheduling_euler_discrete")
            draws = iter(range(len(grid)))
            monkeypatch.setattr(module, "randn_tensor", lambda *a, **k: torch.from_numpy(noises(next(draws))))
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for i, t in enumerate(sched.timesteps):
            eps = -grid[i] * score(y.numpy(), np.full(x.shape[0], grid[i]))
            y = sched.step(torch.from_numpy(eps), t, y, **options).prev_sample
            path.append(y.numpy().copy())
        return np.stack(path)

    return sigmas, loop


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_euler_discrete_matches_at_float32_rounding():
    """EulerDiscreteScheduler casts the sample to float32 in each step: against karras_euler on
    its own sigmas it is a discrepancy at float64 rounding and a match at float32's
    (rtol = 64 * 2^-23 per step); the largest deviation is about 2e-7."""
    sigmas, loop = diffusers_euler_loop()

    def run(rtol):
        return compare_sampler(loop, "karras_euler", EDM(), sigmas, TARGET_2D, 64, np.random.default_rng(0),
                               rtol=rtol, sample_distances=False)

    assert not run(None).matches
    res = run(64 * float(np.finfo(np.float32).eps))
    assert res.matches, res.text()
    assert 1e-8 < res.max_deviation < 1e-6


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_diffusers_euler_discrete_with_churn_is_not_karras_euler(monkeypatch):
    """With s_churn > 0, EulerDiscreteScheduler.step adds the churn noise to the sample it is
    given, but the model was evaluated (by the pipeline, before the step) at the unchurned
    sample and sigma; with epsilon prediction it then moves by that eps over sigma_next -
    sigma_hat. Karras et al.'s Algorithm 2 (k-diffusion's sample_euler, karras_euler)
    evaluates the model at the churned sample and sigma_hat. Same grid, start and churn noise:
    the first diverging step is the first churned one (step 9, sigma = 3.97 <= s_tmax = 5);
    KL(diffusers || karras_euler) = 0.138 on the 2-D Gaussian, exact up to the float32
    rounding of its steps (its law is affine to that rounding). Found by a review."""
    churn = {"s_churn": 4.0, "s_tmin": 0.1, "s_tmax": 5.0}
    sigmas, loop = diffusers_euler_loop(churn, monkeypatch)

    res = compare_sampler(loop, "karras_euler", EDM(), sigmas, TARGET_2D, 64, np.random.default_rng(0),
                          replay_options=churn, rtol=64 * float(np.finfo(np.float32).eps), sample_distances=False)
    first = int(np.argmax((sigmas[:-1] >= churn["s_tmin"]) & (sigmas[:-1] <= churn["s_tmax"])))
    assert not res.matches and res.first_divergence == first, res.text()
    assert res.laws["method"] == "exact" and res.kl == pytest.approx(0.1383, rel=1e-3)
    assert res.laws["peer_vs_target"]["kl"] < res.laws["replay_vs_target"]["kl"]  # neither is "the" right one


# -- the peers' grids on the command line, and the float32 note (found by a review) ----------------


def sampler_grid(*argv):
    from sgm_ref.cli import _sampler_grid, build_parser
    args = build_parser().parse_args(["audit-sampler", "--sampler", "m:f", "--replay", "ddim", "--target", "ring",
                                      *map(str, argv)])
    return _sampler_grid(args, process_from_spec(args.process))


@pytest.mark.parametrize("spacing, n, offset", [("leading", 20, 0), ("leading", 50, 1), ("trailing", 20, 0),
                                                ("trailing", 48, 0), ("linspace", 25, 0)])
def test_cli_grid_is_diffusers_timesteps_and_the_data(spacing, n, offset):
    """--grid leading / trailing / linspace are the installed DDIMScheduler's own timesteps (as
    times (i + 1) / N) and a final 0; the documented DDIM command needed them and had only
    uniform or geometric times, so a correct diffusers loop was a DISCREPANCY of 0.32."""
    diffusers = peer("diffusers")
    sched = diffusers.DDIMScheduler(timestep_spacing=spacing, steps_offset=offset)
    sched.set_timesteps(n)
    argv = ["--process", "ddpm:linear", "--grid", spacing, "--n-steps", n]
    grid = sampler_grid(*argv, *(["--steps-offset", offset] if offset else []))
    np.testing.assert_array_equal(grid[:-1] * 1000 - 1, sched.timesteps.numpy())
    assert grid[-1] == 0.0 and grid.size == n + 1


def test_cli_grid_karras_is_edm_karras_sigmas():
    np.testing.assert_array_equal(sampler_grid("--process", "edm", "--grid", "karras", "--n-steps", 12),
                                  EDM().karras_sigmas(12, 0.002, 80.0, 7.0))
    np.testing.assert_array_equal(sampler_grid("--process", "edm", "--grid", "karras", "--n-steps", 5, "--rho", 3,
                                               "--T", 10, "--t0", 0.01), EDM().karras_sigmas(5, 0.01, 10.0, 3.0))


@pytest.mark.parametrize("argv, message", [
    (["--grid", "leading"], "--process must be a ddpm schedule"),
    (["--process", "ddpm", "--grid", "trailing", "--T", "0.5"], "--T does not apply to --grid trailing"),
    (["--process", "ddpm", "--grid", "linspace", "--t0", "0.01"], "--t0 does not apply to --grid linspace"),
    (["--process", "ddpm", "--grid", "trailing", "--steps-offset", "1"], "--steps-offset is --grid leading's"),
    (["--process", "ddpm", "--grid", "leading", "--n-steps", "1001"], "at most the process's 1000 timesteps"),
    (["--process", "ddpm", "--grid", "trailing", "--n-steps", "61"], "choose another num_inference_steps"),
    (["--grid", "karras"], "--process edm only"),
    (["--process", "edm", "--grid", "uniform", "--rho", "7"], "--rho is --grid karras's"),
    (["--process", "edm", "--grid", "karras", "--n-steps", "1"], "--n-steps >= 2"),
])
def test_cli_grid_options_refused_where_they_do_not_apply(argv, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        sampler_grid(*argv)


def em_float32_coefficients(score, grid, x, noises):
    """score_sde's Euler–Maruyama with its coefficients rounded to float32 (as diffusers keeps
    its schedules), the state float64."""
    y, path = x.copy(), [x.copy()]
    for k in range(grid.size - 1):
        t, h = grid[k], np.float32(grid[k] - grid[k + 1])
        f, g2 = np.float32(VP_.f(t)), np.float32(VP_.g2(t))
        y = y - h * (f * y - g2 * score(y, np.full(len(y), t))) + np.sqrt(np.float32(g2 * h)) * noises(k)
        path.append(y.copy())
    return np.stack(path)


def test_float32_rounding_in_a_float64_peer_is_noted_with_the_rtol_that_matches():
    grid = np.linspace(1.0, 1e-3, 11)
    res = compare_sampler(em_float32_coefficients, "euler_maruyama", VP_, grid, TARGET, 64, np.random.default_rng(0),
                          sample_distances=False)
    assert not res.matches and 1e-9 < res.max_deviation < 1e-5
    assert any(note.startswith("every deviation is within float32's rounding") and "rtol=7.6e-06" in note
               for note in res.notes), res.notes
    assert "--rtol 7.6e-06" in res.text()
    again = compare_sampler(em_float32_coefficients, "euler_maruyama", VP_, grid, TARGET, 64,
                            np.random.default_rng(0), sample_distances=False, rtol=64 * 2.0**-23)
    assert again.matches and not any("float32" in note for note in again.notes)
    # a real discrepancy (the score 1% off) gets no such note
    wrong = compare_sampler(lambda s, g, x, z: em_float32_coefficients(lambda y, t: 1.01 * s(y, t), g, x, z),
                            "euler_maruyama", VP_, grid, TARGET, 64, np.random.default_rng(0), sample_distances=False)
    assert not wrong.matches and not any("float32" in note for note in wrong.notes)


def test_cli_grid_set_alpha_to_one_false_is_stable_diffusions_ddim():
    """Stable Diffusion's DDIMScheduler (scaled_linear, steps_offset=1, set_alpha_to_one=False)
    ends on timestep 0's alphas_cumprod, not the data: `--grid leading --steps-offset 1` alone
    was a DISCREPANCY at its last step (found by a review); with --set-alpha-to-one false the
    installed scheduler matches at float32's rounding."""
    import torch
    diffusers = peer("diffusers")
    from sgm_ref.conventions import convert

    spec = "ddpm:scaled_linear,beta_start=0.00085,beta_end=0.012"
    grid = sampler_grid("--process", spec, "--grid", "leading", "--n-steps", 20, "--steps-offset", 1,
                        "--set-alpha-to-one", "false")
    proc = process_from_spec(spec)
    assert grid[-1] == proc.time_of_timestep(0)

    def loop(score, grid, x, noises):
        sched = diffusers.DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                        clip_sample=False, steps_offset=1, set_alpha_to_one=False)
        sched.set_timesteps(len(grid) - 1)
        y, path = torch.from_numpy(x.copy()), [x.copy()]
        for k, timestep in enumerate(sched.timesteps):
            t = np.full(len(x), grid[k])
            eps = convert(score(y.numpy(), t), y.numpy(), t, proc, from_="score", to="eps")
            y = sched.step(torch.from_numpy(eps), timestep, y).prev_sample
            path.append(y.numpy().copy())
        return np.stack(path)

    options = {"eta": 0.0, "alphas_cumprod": "diffusers"}
    res = compare_sampler(loop, "ddim", proc, grid, TARGET_2D, 100, np.random.default_rng(0), replay_options=options,
                          rtol=64 * 2.0**-23, sample_distances=False)
    assert res.matches, res.text()
    to_data = sampler_grid("--process", spec, "--grid", "leading", "--n-steps", 20, "--steps-offset", 1)
    res = compare_sampler(loop, "ddim", proc, to_data, TARGET_2D, 100, np.random.default_rng(0),
                          replay_options=options, rtol=64 * 2.0**-23, sample_distances=False)
    assert not res.matches and res.first_divergence == 19
    with pytest.raises(ValueError, match="the last of these timesteps is 0 itself"):
        sampler_grid("--process", spec, "--grid", "leading", "--n-steps", 20, "--set-alpha-to-one", "false")
    with pytest.raises(ValueError, match="--set-alpha-to-one is for diffusers' timesteps"):
        sampler_grid("--grid", "uniform", "--set-alpha-to-one", "true")


def test_replay_options_check_takes_a_custom_replays_positions_whatever_their_names():
    """The comparison passes (score, process, grid, x, rng, trajectory) by position: a custom
    replay naming them otherwise, or taking *args, was refused as 'needs score_fn (--option
    ...)' by the first version of the options check (a review); numpy bools are bools."""
    from sgm_ref.audit import _check_replay_options

    def my_replay(score_fn, proc, ts, x0, rng=None, trajectory=False, *, noise=None, denoise=False):
        pass

    def star(*args, noise=None):
        pass

    _check_replay_options("my_replay", my_replay, {})
    _check_replay_options("my_replay", my_replay, {"denoise": np.True_})
    _check_replay_options("star", star, {})
    with pytest.raises(ValueError, match="ts is set by the comparison itself"):
        _check_replay_options("my_replay", my_replay, {"ts": 1})
    with pytest.raises(ValueError, match="has no option 'step'"):
        _check_replay_options("my_replay", my_replay, {"step": 1})


def test_grid_file_text_with_a_byte_order_mark(tmp_path):
    """A text grid saved by a Windows editor as "UTF-8 with BOM" starts with U+FEFF: it was
    refused as "could not convert string to float: '\\ufeff0.9'" (a review). Scientific
    notation, CRLF line ends, commas and a trailing newline are read as before."""
    from sgm_ref.cli import _read_grid_file

    want = np.array([0.9, 0.5, 1e-3])
    for name, data in [("bom.txt", "\ufeff0.9\r\n0.5\r\n1E-3\r\n".encode("utf-8")),
                       ("plain.txt", b"9.0e-01, 5e-1,\n1e-3\n\n")]:
        (tmp_path / name).write_bytes(data)
        np.testing.assert_array_equal(_read_grid_file(str(tmp_path / name), VP()), want)


def test_grid_file_text_with_comments(tmp_path):
    """np.savetxt(path, grid, header=...) writes '# ...' lines: from '#' to the end of a line is a
    comment (it was refused as 'could not convert string to float: '#'')."""
    from sgm_ref.cli import _read_grid_file

    grid = np.array([0.9, 0.5, 1e-3])
    np.savetxt(tmp_path / "saved.txt", grid, header="diffusers sigmas, 2 steps")
    (tmp_path / "notes.txt").write_text("0.9  # start\n# the middle:\n0.5\n1e-3 # end\n")
    for name in ("saved.txt", "notes.txt"):
        np.testing.assert_array_equal(_read_grid_file(str(tmp_path / name), VP()), grid)


def test_grid_file_recipes_of_docs_cli_are_accepted(tmp_path):
    """docs/cli.md's --grid-file paragraph: each scheduler it names, with the expression it gives
    for that scheduler, writes a grid --grid-file reads. It said np.save(PATH, sched.sigmas...)
    for Heun too, whose sigmas repeat every interior sigma: refused as not strictly decreasing
    (a review)."""
    from sgm_ref.cli import _read_grid_file

    peer("torch")
    diffusers = peer("diffusers")
    text = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text(encoding="utf-8")
    para = re.sub(r"\s+", " ", text[text.index("`--grid-file\n"):text.index("[worked examples](peers.md)")])
    plain = re.search(r"np\.save\(PATH, (sched\.sigmas[^`]*)\)`", para).group(1)
    names = {"Euler": diffusers.EulerDiscreteScheduler, "DPM-Solver": diffusers.DPMSolverMultistepScheduler,
             "Heun": diffusers.HeunDiscreteScheduler}
    for name, cls in names.items():
        assert name in para, name
        special = re.search(name + r"DiscreteScheduler's .*?: save the distinct ones, `([^`]*)`", para)
        expression = special.group(1) if special else plain
        sched = cls()
        sched.set_timesteps(10)
        np.save(tmp_path / "g.npy", eval(expression, {"np": np, "sched": sched}))
        grid = _read_grid_file(str(tmp_path / "g.npy"), EDM())
        assert grid.size == 11 and grid[-1] == 0.0, (name, grid)


# -- a review of compare_sampler: float32 step functions, churned steps' draws, the fitted side ----


def _em_law_mp(grid, mean, var, dtype_digits=40):
    """The exact law N(mu, v) of textbook Euler–Maruyama on VP for the target N(mean, var) in 1-D,
    from N(0, 1), by the affine recursion mu <- c mu + b, v <- c^2 v + g^2 h in mpmath."""
    import mpmath as mp

    with mp.workdps(dtype_digits):
        bmin, bmax = mp.mpf(VP_.beta_min), mp.mpf(VP_.beta_max)
        mu, v, m, s2 = mp.mpf(0), mp.mpf(1), mp.mpf(mean), mp.mpf(var)
        for t, t_next in zip(grid[:-1], grid[1:]):
            t, h = mp.mpf(t), mp.mpf(t) - mp.mpf(t_next)
            beta, B = bmin + t * (bmax - bmin), bmin * t + t * t * (bmax - bmin) / 2
            a, s2_t = mp.e ** (-B / 2), 1 - mp.e ** (-B)
            var_t = a * a * s2 + s2_t
            c = 1 + h * beta / 2 - h * beta / var_t
            mu, v = c * mu + h * beta * a * m / var_t, c * c * v + beta * h
        return float(mu), float(v)


def em_step32(x, k, grid, score, noise_k, *, bug_at=None):
    """score_sde's Euler–Maruyama step computed and returned in float32; planted: the step at
    bug_at moves 1% too far."""
    t, h = grid[k], np.float32(grid[k] - grid[k + 1]) * np.float32(1.01 if k == bug_at else 1.0)
    y = x.astype(np.float32)
    f, g2 = np.float32(VP_.f(t)), np.float32(VP_.g2(t))
    s = score(y, np.full(len(y), t)).astype(np.float32)
    return y - h * (f * y - g2 * s) + np.sqrt(g2 * h) * noise_k.astype(np.float32)


def test_a_float32_step_function_is_judged_at_float32_rounding():
    """A step function returning float32 is the peer's output dtype float32: rtol 64 * 2^-23
    and its exact law (its states were stacked with x as float64, so it was judged at float64's
    1.4e-14: a DISCREPANCY, its law refused as not affine and fitted to its samples). Its law is
    the mpmath recursion's to float32 rounding; a 1% longer step 4 is named there."""
    res = _compare(em_step32, "euler_maruyama", sample_distances=False)
    assert res.matches, res.text()
    assert res.rtol == 64 * 2.0**-23 and 1e-9 < res.max_deviation < 1e-6
    assert res.laws["method"] == "exact" and res.laws["fitted"] == [] and res.kl < 1e-12
    mu, v = _em_law_mp(GRID, 2.0, 0.25)
    (m_peer,), ((v_peer,),) = res.laws["peer"]
    assert abs(m_peer - mu) <= 1e-6 * abs(mu) and abs(v_peer - v) <= 1e-6 * v
    (m_rep,), ((v_rep,),) = res.laws["replay"]  # the float64 replay's law: mpmath's to float64
    assert abs(m_rep - mu) <= 1e-14 * abs(mu) and abs(v_rep - v) <= 1e-14 * v

    bug = _compare(lambda x, k, g, s, z: em_step32(x, k, g, s, z, bug_at=4), "euler_maruyama", sample_distances=False)
    assert not bug.matches and bug.first_divergence == 4, bug.text()
    assert bug.laws["method"] == "exact" and bug.kl > 1e-9 > 1e3 * res.kl


CHURN = {"s_churn": 4.0, "s_tmin": 0.1, "s_tmax": 5.0}


def karras_churn_step(x, k, grid, score, noise_k, *, bug_at=None):
    """Karras et al. (2022) Algorithm 2 with an Euler step, on EDM's sigmas, from the paper:
    churn by gamma if s_tmin <= sigma_k <= s_tmax, then x <- x_hat + d (sigma_{k+1} - sigma_hat).
    Planted: the churn noise 1% too large at step bug_at."""
    s, s_next, N = grid[k], grid[k + 1], grid.size - 1
    gamma = min(CHURN["s_churn"] / N, np.sqrt(2.0) - 1.0) if CHURN["s_tmin"] <= s <= CHURN["s_tmax"] else 0.0
    s_hat = s * (1.0 + gamma)
    x_hat = x + np.sqrt(s_hat**2 - s**2) * (1.01 if k == bug_at else 1.0) * noise_k
    denoised = x_hat + s_hat**2 * score(x_hat, np.full(len(x), s_hat))
    return x_hat + (x_hat - denoised) / s_hat * (s_next - s_hat)


def _karras_churn_law_mp(grid, mean, var):
    """The exact law of karras_churn_step's loop for N(mean, var) in 1-D from N(0, sigma_0^2), mpmath."""
    import mpmath as mp

    with mp.workdps(40):
        m, S, N = mp.mpf(mean), mp.mpf(var), len(grid) - 1
        mu, v = mp.mpf(0), mp.mpf(grid[0]) ** 2
        for k in range(N):
            s, s_next = mp.mpf(grid[k]), mp.mpf(grid[k + 1])
            churned = CHURN["s_tmin"] <= grid[k] <= CHURN["s_tmax"]
            gamma = min(mp.mpf(CHURN["s_churn"]) / N, mp.sqrt(2) - 1) if churned else 0
            s_hat = s * (1 + gamma)
            v = v + s_hat**2 - s**2  # x_hat = x + sqrt(s_hat^2 - s^2) xi
            # D = x_hat - s_hat^2 (x_hat - m) / (S + s_hat^2); x' = x_hat + (x_hat - D) (s_next - s_hat) / s_hat
            c = s_hat * (s_next - s_hat) / (S + s_hat**2)
            mu, v = (1 + c) * mu - c * m, (1 + c) ** 2 * v
        return float(mu), float(v)


def test_a_step_function_with_churn_on_part_of_the_grid_gets_the_replay_s_draws():
    """With churn on part of the grid the replay takes its j-th draw at its j-th churned step,
    and a step function was handed noises(k) at step k: Algorithm 2 written from the paper was
    a DISCREPANCY from the first churned step (step 4 here, relative deviation 1.1) with
    KL(peer || replay) = 2e-31. It gets the draw the replay takes at each step: a MATCH, and a
    1% churn error at step 6 is named there. Both laws are the mpmath recursion's."""
    grid = EDM().karras_sigmas(10, 0.002, 80.0, 7.0)
    churned = [k for k in range(10) if CHURN["s_tmin"] <= grid[k] <= CHURN["s_tmax"]]
    assert churned[0] == 4 and len(churned) < 10

    def run(step):
        return compare_sampler(step, "karras_euler", EDM(), grid, TARGET, 50, np.random.default_rng(0),
                               replay_options=CHURN, sample_distances=False)

    res = run(karras_churn_step)
    assert res.matches and res.first_divergence is None, res.text()
    assert res.laws["method"] == "exact" and res.kl < 1e-20
    mu, v = _karras_churn_law_mp(grid, 2.0, 0.25)
    for side in ("peer", "replay"):
        (m_out,), ((v_out,),) = res.laws[side]
        assert abs(m_out - mu) <= 1e-13 * abs(mu) and abs(v_out - v) <= 1e-13 * v, (side, m_out, v_out, mu, v)

    bug = run(lambda x, k, g, s, z: karras_churn_step(x, k, g, s, z, bug_at=6))
    assert not bug.matches and bug.first_divergence == 6, bug.text()
    assert bug.kl > 1e-8


def test_the_laws_say_which_side_is_fitted_to_its_samples():
    """The predictor-corrector's default Langevin step has no exact law, so the replay's is
    fitted to its samples; the peer's is exact. The text said "Gaussian fitted to the peer's
    samples" whichever side it was."""
    from sgm_ref.replays import replay_output_gaussian

    res = _compare(textbook_em, "predictor_corrector", sample_distances=False)
    assert res.laws["method"] == "monte_carlo" and res.laws["fitted"] == ["replay"]
    assert "fitted to the replay's samples, the peer's law exact" in res.text(), res.text()
    exact = replay_output_gaussian(R.euler_maruyama, *TARGET, VP_, GRID)
    np.testing.assert_array_equal(res.laws["peer"][0], exact[0])
    np.testing.assert_array_equal(res.laws["peer"][1], exact[1])
    assert json.loads(res.to_json())["laws"]["fitted"] == ["replay"]

    res = _compare(lambda s, g, x, z: textbook_em(s, g, x, z)[-1] + 1e-3 * x**2, "euler_maruyama",
                   target=TARGET_2D, sample_distances=False)
    assert res.laws["fitted"] == ["peer"] and "fitted to the peer's samples, the replay's law exact" in res.text()

    def pc(score, grid, x, noises):  # the replay itself: a MATCH whose KL is between two fitted Gaussians
        return R.predictor_corrector(score, VP_, grid, x, None, True, noise=np.stack([noises(j) for j in range(20)]))[1]

    res = _compare(pc, "predictor_corrector", sample_distances=False)
    assert res.matches and res.laws["fitted"] == ["peer", "replay"], res.text()
    assert res.text().endswith("KL 0 (Gaussians fitted to samples: not exact)")


@pytest.mark.parametrize("option, value, message", [
    ("replay_options", [("eta", 1.0)], "replay_options must be a dict of the replay's keyword options"),
    ("sample_distances", "no", "sample_distances must be True or False, got 'no'"),
    ("name", 3, "name must be a string"),
])
def test_bad_options_are_named_before_any_work(option, value, message):
    """A list for replay_options was dict()'s TypeError; sample_distances="no" was read as True."""
    calls = []
    with pytest.raises(ValueError, match=re.escape(message)):
        _compare(lambda s, g, x, z: calls.append(1), "euler_maruyama", **{option: value})
    assert calls == []


@pytest.mark.parametrize("spec, message", [
    ("gaussian:std=1e200", "std must lie in [1e-150, 1e150]"),  # was OverflowError "(34, 'Numerical result ...')"
    ("gaussian:std=1e-200", "std must lie in [1e-150, 1e150]"),  # was "covariances[0] is not positive definite"
    ("gaussian:d=2,d=3", "d is given twice"),  # the last one silently won: d = 3
    ("gaussian:d=1000000000", "d = 1000000000 asks for"),  # was a MemoryError naming no parameter
])
def test_gaussian_target_spec_refuses_what_it_cannot_build_naming_the_parameter(spec, message):
    with pytest.raises(ValueError, match=re.escape(f"target spec {spec!r}: {message}")):
        target_from_spec(spec)
    g = target_from_spec("gaussian:d=2,std=1e150")  # the edges are kept: std^2 = 1e300 (to rounding)
    assert g.covariance()[0, 0] == 1e150**2 and target_from_spec("gaussian:std=1e-150").covariance()[0, 0] == 1e-300


def test_noises_takes_any_integer_index_and_a_peer_result_numpy_cannot_read_is_named():
    """noises(j) refused a 0-d integer array or tensor (a loop over torch.arange gives
    tensors): any integer index is the draw. A loop returning a replay's pair (y, trajectory)
    was NumPy's "setting an array element with a sequence...", and a tensor requiring grad
    torch's RuntimeError, naming neither."""
    torch = pytest.importorskip("torch")

    def torch_indexed(score, grid, x, noises):
        return textbook_em(score, grid, x, lambda k: noises(torch.tensor(k)) + 0 * noises(np.array(k)))

    res = _compare(torch_indexed, "euler_maruyama", sample_distances=False)
    assert res.matches and res.max_deviation == 0.0, res.text()
    for bad in (-1, 1.0, True, torch.tensor(1.5), np.array([1])):
        with pytest.raises(ValueError, match=r"noises\(j\) takes the draw's index j >= 0"):
            _compare(lambda s, g, x, z, bad=bad: z(bad), "euler_maruyama")

    def pair(score, grid, x, noises):
        return R.euler_maruyama(score, VP_, grid, x, None, True, noise=np.stack([noises(k) for k in range(10)]))

    with pytest.raises(ValueError, match=r"^the peer's output must be an array \(n, d\) or a trajectory .*a pair "
                                         r"\(y, trajectory\)\? return the trajectory alone$"):
        _compare(pair, "euler_maruyama")
    with pytest.raises(ValueError, match=r"^the peer's step 0 must be an array .*got Tensor .*requires grad"):
        _compare(lambda x, k, g, s, z: torch.ones(x.shape, requires_grad=True), "euler_maruyama")


def test_a_peer_writing_into_its_grid_changes_neither_the_report_nor_the_replay_s_law():
    """A loop clamping its last time in place (grid[-1] = 0.01) wrote into the comparison's own
    grid: the report said [1 .. 0.01], and the replay's exact law was computed on the clamped
    grid, so a 5% deviation stood beside KL(peer || replay) = 0. The peer gets a copy; the KL is
    that of the mpmath laws of Euler–Maruyama on the two grids."""
    import mpmath as mp

    def clamping(score, grid, x, noises):
        grid[-1] = 0.01
        return textbook_em(score, grid, x, noises)

    res = _compare(clamping, "euler_maruyama", sample_distances=False)
    np.testing.assert_array_equal(res.grid, GRID)
    assert not res.matches and res.first_divergence == 9, res.text()
    clamped = GRID.copy()
    clamped[-1] = 0.01
    (m0, v0), (m1, v1) = _em_law_mp(clamped, 2.0, 0.25), _em_law_mp(GRID, 2.0, 0.25)
    with mp.workdps(40):
        m0, v0, m1, v1 = map(mp.mpf, (m0, v0, m1, v1))
        kl = float((mp.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1) / 2)
    assert res.kl == pytest.approx(kl, rel=1e-9) and kl > 1e-4

    def clamping_step(x, k, grid, score, noise_k):
        grid[-1] = 0.01
        return reverse_diffusion_step(x, k, grid, score, noise_k)

    res = _compare(clamping_step, "reverse_diffusion", sample_distances=False)  # its own last step ends at 0.01
    np.testing.assert_array_equal(res.grid, GRID)
    assert not res.matches and res.first_divergence == 9 and res.kl > 1e-6, res.text()


@pytest.mark.parametrize("mean, message", [
    (np.array([2.0 + 1e-3j]), "got dtype complex128"),  # was read as 2.0, with only NumPy's ComplexWarning
    ([2.0 + 1e-3j], "got dtype complex128"),  # was NumPy's TypeError
    (np.array(["2.0"]), "got dtype <U3"),  # was parsed as the number 2.0
    ([np.nan], "its mean contains non-finite values"),
])
def test_a_gaussian_target_pair_must_be_real_numbers(mean, message):
    with pytest.raises(ValueError, match=r"^target must be a pair \(mean \(d,\), cov \(d, d\)\) of real numbers: .*"
                                         + re.escape(message)):
        _compare(textbook_em, "euler_maruyama", target=(mean, [[0.25]]))
    res = _compare(textbook_em, "euler_maruyama", target=(np.float32([2.0]), np.array([[1]])), sample_distances=False)
    assert res.matches and res.laws["target"][1].dtype == np.float64  # float32 and integers are numbers


def test_the_step_draw_probe_runs_the_replay_once_for_a_few_rows():
    """_step_draws probed in batches of max(n, 64) rows, one replay run each: O(K^2 / n) steps
    (K = 1000, n = 10: compare_sampler took 2.6 s where it had taken 1.0 s). Its batches are
    bounded by memory instead: here, 300 draws, one probe run; the draws found are still the
    replay's (once per step: noises(k) at step k, the peer a MATCH at the replay's bits)."""
    probes = []

    def counting_em(score, process, grid, x, rng=None, trajectory=False, *, noise=None, **kw):
        if type(noise).__name__ == "Impulse":
            probes.append(x.shape[0])
        return R.euler_maruyama(score, process, grid, x, rng, trajectory, noise=noise, **kw)

    grid = np.linspace(1.0, 1e-3, 301)
    res = compare_sampler(lambda x, k, g, s, z: R.euler_maruyama(s, VP_, g[k:k + 2], x, noise=_One(z)),
                          counting_em, VP_, grid, TARGET, 4, np.random.default_rng(0), sample_distances=False)
    assert len(probes) == 1 and probes[0] == 301, probes
    assert res.matches and res.max_deviation == 0.0, res.text()


class _One:
    """A noise source that gives its one draw (a step function's noise_k) to a one-step replay."""

    def __init__(self, z):
        self.z = z

    def draw_noise(self, j, shape):
        assert j == 0 and shape == self.z.shape
        return self.z


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the probe's law, caught and noted
def test_to_json_of_an_overflowing_law_is_strict_json_naming_the_infs():
    """A peer whose law overflows float64 (x -> 1e200 x: variance 1e400): to_json wrote
    "Infinity", which strict JSON readers refuse. It is null now, and "non_finite" names
    each such entry, as `audit --json` does; to_dict keeps the inf there for that."""
    res = _compare(lambda score, grid, x, noises: x * 1e200, "euler_maruyama", target=TARGET_2D)
    assert not res.matches and res.to_dict()["laws"]["peer"]["cov"][0][0] == np.inf
    report = json.loads(res.to_json(), parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert report["laws"]["peer"]["cov"] == [[None, 0.0], [0.0, None]]
    assert report["non_finite"]["/laws/peer/cov/0/0"] == "inf" and report["non_finite"]["/laws/peer/cov/1/1"] == "inf"
    assert report["laws"]["peer"]["mean"] == res.to_dict()["laws"]["peer"]["mean"]


def test_a_step_function_returning_one_buffer_it_rewrites_is_judged_on_its_values():
    """A step function that writes each result into one buffer it keeps (per shape) and returns
    it: every recorded state was an alias of the last one, so a correct step function was a
    DISCREPANCY at step 0; and a loop returning an array it keeps had its output rewritten
    by the law's probe runs (n = 2 rows, as the probe's check batch)."""
    buffers = {}

    def buffered_step(x, k, grid, score, noise_k):
        out = buffers.setdefault(x.shape, np.empty_like(x))
        out[...] = reverse_diffusion_step(x, k, grid, score, noise_k)
        return out

    res = _compare(buffered_step, "reverse_diffusion", sample_distances=False)
    assert res.matches and res.first_divergence is None and res.max_deviation == 0.0, res.text()
    assert res.laws["method"] == "exact" and abs(res.kl) <= 1e-20

    kept = {}

    def kept_loop(score, grid, x, noises):
        out = kept.setdefault(x.shape, np.empty_like(x))
        out[...] = textbook_em(score, grid, x, noises)[-1]
        return out

    res = compare_sampler(kept_loop, "euler_maruyama", VP_, GRID, TARGET, 2, np.random.default_rng(0))
    assert res.matches and res.final_deviation == 0.0, res.text()
    # the sample distances come after the probe runs: of the peer's own output, equal to the replay's (it was 0.26)
    assert res.samples["sliced_wasserstein"]["peer_vs_replay"] == (0.0, 0.0)


def test_given_noise_one_short_for_a_step_function_s_noiseless_step_is_named():
    """DDPM ancestral takes no draw on its last step, where a step function gets one the replay
    does not use: noise of exactly the replay's 9 draws failed with "draw 9 was asked for",
    though neither side had asked for it. It is named, with the count to pass."""
    ddpm = DDPM("linear", 1e-4, 0.02, 1000)
    grid = R.timestep_grid(ddpm, R.ddim_timesteps(10))

    def step(x, k, g, score, noise_k):
        return R.ddpm_ancestral(score, ddpm, g[k:k + 2], x, noise=_One(noise_k) if k < 9 else None)

    noise = np.random.default_rng(5).standard_normal((10, 8, 1))
    with pytest.raises(ValueError, match=re.escape(
            "noise has 9 draws, the replay takes 9; a step function also gets a draw the replay does not use at each "
            "step where the replay draws none (step 9): pass 10 draws, noise of shape (10, 8, 1)")):
        compare_sampler(step, "ddpm_ancestral", ddpm, grid, TARGET, 8, np.random.default_rng(0), noise=noise[:9])
    res = compare_sampler(step, "ddpm_ancestral", ddpm, grid, TARGET, 8, np.random.default_rng(0), noise=noise,
                          sample_distances=False)
    assert res.matches and res.max_deviation == 0.0, res.text()


def test_to_json_names_the_infinite_kl_of_a_broken_peer():
    """A peer returning zeros has a singular law: its KL to the replay is counted as infinitely
    far. to_json wrote it as null without naming it in "non_finite" (to_dict had already made
    it None), the same null as a figure not computed (its "tv")."""
    def zeros(score, grid, x, noises):
        return np.zeros_like(textbook_em(score, grid, x, noises)[-1])

    res = _compare(zeros, "euler_maruyama", target=TARGET_2D, sample_distances=False)
    assert not res.matches and res.kl == np.inf
    report = json.loads(res.to_json())
    assert report["laws"]["peer_vs_replay"]["kl"] is None and report["laws"]["peer_vs_replay"]["tv"] is None
    assert report["non_finite"]["/laws/peer_vs_replay/kl"] == "inf"
    assert report["non_finite"]["/laws/peer_vs_target/kl_reverse"] == "inf"
    assert "/laws/peer_vs_replay/tv" not in report["non_finite"]  # not computed: a plain null
    assert res.to_dict()["laws"]["peer_vs_replay"]["kl"] is None  # to_dict as documented
    assert res.to_dict(keep_non_finite=True)["laws"]["peer_vs_replay"]["kl"] == np.inf
