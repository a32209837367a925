"""Tests that kill surviving mutants of sgm_ref.processes, second round (review h81).

Each mutant named in a docstring here passed tests/test_processes.py, test_processes_spec.py,
test_step_integrals.py, test_mutants_processes.py and test_audit_processes.py (and, where
named, the -k selections of test_every_process.py, test_fuzz_changes.py and
test_peers_schedules.py that call the mutated function). Each test fails on its mutant and
passes on the code; the references are independent: mpmath at 40 digits, the closed forms
of the class docstrings, or the behaviour the docstrings state.
"""

import mpmath
import numpy as np
import pytest

from sgm_ref.processes import DDPM, EDM, OU, VE, VP, SubVP, VPCosine
from sgm_ref.processes.base import log1pmx

EPS = np.finfo(np.float64).eps


@pytest.mark.parametrize("process", [EDM(t_max=62.435107256896046), EDM(t_max=38.40409017812504),
                                     VP(3.117448777687502, 39.95074014540341),
                                     SubVP(3.065016505265202, 46.27839671559062)], ids=repr)
def test_time_of_log_snr_at_log_snr_t_max_stays_inside_the_range(process):
    """time_of_log_snr's result "is kept inside [t_min, t_max]" (docstring): for these
    processes the inverse of log_snr(t_max) rounds an ulp or so past t_max (EDM(62.43...):
    t_max + 7.1e-15) and comes back as t_max, a time every pointwise function accepts.
    Mutant `return self._out(np.clip(t, t_min, t_max))` -> `return self._out(t)` returned
    the time past t_max, which alpha() then refuses; it passed the existing tests."""
    lam = process.log_snr(process.t_max)
    t = process.time_of_log_snr(lam)
    assert t <= process.t_max
    assert abs(t - process.t_max) <= 4 * EPS * process.t_max
    process.alpha(t)  # a valid time


def test_d_sigma_that_overflows_where_sigma_is_positive_raises():
    """The pointwise functions raise for a value beyond float64 (LinearGaussianProcess.alpha's
    docstring); only the infinities that are the value, where sigma_t = 0, pass (d_sigma's
    docstring). VE(1e-300, 1e306).d_sigma(1) = sigma_max log(1e606) = 1.4e309 overflows with
    sigma_1 = 1e306 > 0. Mutant `bad &= ~((value == inf) & (sigma == 0))` -> `bad &= ~(value
    == inf)` returned inf there; it passed the existing tests."""
    p = VE(1e-300, 1e306)
    assert float(p.d_sigma(0.5)) == pytest.approx(1e3 * float(mpmath.log(mpmath.mpf(10) ** 606)), rel=1e-13)
    with pytest.raises(ValueError, match=r"t = 1\.0: d sigma_t / dt overflows float64"):
        p.d_sigma(1.0)
    with pytest.raises(ValueError, match="overflows float64"):
        p.d_sigma(np.array([0.5, 1.0]))


def test_log1pmx_takes_its_series_up_to_one_half():
    """L(x) = log(1 + x) - x from the atanh series for |x| <= 1/2 (docstring): on 1/4 <= |x|
    <= 1/2 against mpmath 30 digits, at most 2.5 eps and on average 0.67 eps measured. Mutant
    threshold 1/4 (log1p(x) - x there: 3.5 eps at most, 1.06 eps on average) passed every
    test, test_step_integrals.py's included."""
    x = np.concatenate([np.linspace(-0.5, -0.25, 300), np.linspace(0.25, 0.5, 300)])
    with mpmath.workdps(30):
        want = np.array([float(mpmath.log1p(mpmath.mpf(v)) - mpmath.mpf(v)) for v in x])
    err = np.abs(log1pmx(x) / want - 1) / EPS
    assert err.max() <= 3.0
    assert err.mean() <= 0.85


@pytest.mark.parametrize("spec", [{"name": "SubVP"}, {"name": "SubVP", "beta_min": 0.1},
                                  {"name": "SubVP", "beta_max": 20.0}], ids=str)
def test_process_from_dict_refuses_a_subvp_without_its_betas(spec):
    """A VP or SubVP dict (a model file's process) must carry both betas: one without them
    is not read as the defaults (process_from_dict). Mutant `("VP", "SubVP")` -> `("VP",)`
    rebuilt SubVP(0.1, 20.0) silently from {"name": "SubVP"}; it passed the existing tests
    (which check VP only)."""
    from sgm_ref.processes import process_from_dict
    with pytest.raises(ValueError, match="a SubVP process needs beta_min and beta_max"):
        process_from_dict(spec)
    full = {"name": "SubVP", "beta_min": 0.5, "beta_max": 7.0}
    assert process_from_dict(full) == SubVP(0.5, 7.0)
    assert process_from_dict(SubVP(0.5, 7.0).to_dict()) == SubVP(0.5, 7.0)


@pytest.mark.parametrize("text", ["ddpm:beta_start=0.001,linear", "ddpm:num_train_timesteps=10,scaled_linear",
                                  "ddpm:linear,beta_end=0.01,squaredcos_cap_v2"])
def test_from_spec_takes_a_keyless_ddpm_schedule_only_first(text):
    """"A DDPM spec may give its beta_schedule first without a key" (from_spec's docstring);
    a keyless item anywhere else is not KEY=VALUE. Mutant `not eq and k == 0 and cls is
    DDPM` -> `not eq and cls is DDPM` built DDPM('linear', 0.001, ...) from the first spec;
    it passed the existing tests."""
    from sgm_ref.processes import DDPM, from_spec
    with pytest.raises(ValueError, match=r"is not KEY=VALUE"):
        from_spec(text)
    assert from_spec("ddpm:linear,beta_start=0.001") == DDPM("linear", beta_start=0.001)


@pytest.mark.parametrize("text", ["flow", "FlowMatching", "rectifiedflow", " RectifiedFlow :t_max=0.5"])
def test_from_spec_reads_the_flow_matching_aliases(text):
    """from_spec reads flowmatching and rectifiedflow as flow (_SPEC_ALIASES), case-insensitive.
    Mutant alias "rectifiedflow" -> "rectified" refused "rectifiedflow" as an unknown process;
    it passed the existing tests."""
    from sgm_ref.processes import FlowMatching, from_spec
    want = FlowMatching(0.5) if "t_max" in text else FlowMatching()
    assert from_spec(text) == want


@pytest.mark.parametrize("process,times", [
    (VE(1e-200, 1e200), [0.0, 0.1, 0.3, 0.4, 0.45, 0.5, 0.6, 0.75, 1.0]),
    (VE(1e-300, 1e300), [0.3, 0.5, 0.6, 0.7, 0.735, 0.75]),
    (VE(1e-10, 1e300), [0.0, 0.1, 0.3, 0.4, 0.45, 0.5]),
], ids=repr)
def test_ve_whose_sigma_ratio_overflows_float64_against_mpmath(process, times):
    """sigma_max / sigma_min beyond float64 (1e400, 1e310): log(sigma_max / sigma_min) is
    the difference of the logs (VE._log_ratio) and where a factor (sigma_max / sigma_min)^(2 t)
    leaves float64, sigma_t^2 comes from the log form (VE._from_nearer_end). Against mpmath
    50 digits from sigma_t = sigma_min (sigma_max / sigma_min)^t; rtol 1e-12 holds the
    exponent's conditioning (|exponent| ~ 700 times eps: up to ~400 eps measured). At t = 0.6
    of the first sigma_t^2 was 1.1e-5 off (1.25e-6 at t = 0.735 of the third): the factor
    e^-737 was subnormal and taken (the review found it; fixed). Mutants `log(sigma_max) -
    log(sigma_min)` -> `log(sigma_max)` and the log form's `exp(power * (...))` -> `exp(...)`
    (sigma_t where sigma_t^2 is due) passed the existing tests, which take no VE with so wide
    a ratio."""
    t = np.array(times)
    with mpmath.workdps(50):
        a, b = mpmath.mpf(process.sigma_min), mpmath.mpf(process.sigma_max)
        S = [a * (b / a) ** mpmath.mpf(x) for x in t]
        sigma = np.array([float(v) for v in S])
        sigma2 = np.array([float(v * v) for v in S])
        lam = np.array([float(-2 * mpmath.log(v)) for v in S])
        g2 = np.array([float(2 * v * v * mpmath.log(b / a)) for v in S])
    np.testing.assert_allclose(process.sigma(t), sigma, rtol=1e-12, atol=0)
    assert np.all(np.abs(process.log_snr(t) - lam) <= 1e-12 * (1 + np.abs(lam)))
    ok = np.isfinite(sigma2) & (sigma2 > 1e-300)  # sigma_t^2 beyond float64 raises (its own test)
    assert ok.sum() >= 4
    np.testing.assert_allclose(process.sigma2(t[ok]), sigma2[ok], rtol=1e-12, atol=0)
    np.testing.assert_allclose(process.g2(t[ok]), g2[ok], rtol=1e-12, atol=0)


def test_karras_sigmas_refuses_a_sigma_max_above_t_max():
    """karras_sigmas raises for "not 0 < sigma_min < sigma_max <= t_max" (its docstring):
    EDM(t_max=80) has no time 100. Mutant `high=self.t_max` -> `high=np.inf` returned a grid
    starting at 100 (beyond the process); it passed the existing tests."""
    p = EDM(t_max=80.0)
    with pytest.raises(ValueError, match="sigma_max"):
        p.karras_sigmas(10, 0.002, 100.0)
    grid = p.karras_sigmas(10, 0.002, 80.0)  # sigma_max = t_max itself is admissible
    assert grid[0] == 80.0 and grid[-2] == 0.002 and grid[-1] == 0.0


_DDPMS = [DDPM("linear", 0.0001, 0.02, 1000), DDPM("linear", 0.0001, 0.03, 1000), DDPM("linear", 0.0002, 0.02, 1000),
          DDPM("linear", 0.0001, 0.02, 999), DDPM("scaled_linear", 0.0001, 0.02, 1000)]


def test_ddpm_equality_compares_every_parameter():
    """DDPM.__eq__ compares the parameters (not the cached arrays): schedules that differ in
    any one of beta_schedule, beta_start, beta_end, N are unequal, equal ones equal, and equal
    ones hash alike. Mutant `self.to_dict() == other.to_dict()` -> `self.beta_schedule ==
    other.beta_schedule` passed the existing tests."""
    for i, a in enumerate(_DDPMS):
        for j, b in enumerate(_DDPMS):
            assert (a == b) == (i == j), (a, b)
    twin = DDPM("linear", 0.0001, 0.02, 1000)
    assert twin == _DDPMS[0] and hash(twin) == hash(_DDPMS[0])
    assert len({*_DDPMS, twin}) == len(_DDPMS)


def test_ddpm_timestep_hint_only_for_timesteps_up_to_n_minus_1():
    """A time above t_max = 1 that is an integer timestep, "at most N - 1" (_timestep_hint),
    gets the pointer to time_of_timestep; N itself is no timestep (0..N - 1) and gets none
    (time_of_timestep(N) raises). Mutant `big > N - 1` -> `big > N` pointed t = 1000 of
    DDPM() to time_of_timestep(1000); it passed the existing tests."""
    p = DDPM()
    with pytest.raises(ValueError, match=r"999 looks like a diffusers timestep.*time_of_timestep\(999\) = 1\.0"):
        p.alpha(999)
    with pytest.raises(ValueError) as info:
        p.alpha(1000)
    assert "t must be <= 1.0" in str(info.value) and "timestep" not in str(info.value)
    with pytest.raises(ValueError, match="timestep must lie in 0..999"):
        p.time_of_timestep(1000)


def test_perturb_overflow_names_the_row_that_overflows():
    """perturb's float32 overflow message names the offending row, its t and sigma_t: here
    row 1 (t = 1e39), not row 0 (t = 1, finite). Mutant `i = int(np.argmax(~all finite))` ->
    `i = 0` named row 0 with t = 1.0 and sigma_t = 1; it passed the existing tests (one t for
    every row there)."""
    x0 = np.ones((3, 2), dtype=np.float32)
    want = r"^t = 1e\+39: .* overflows float32 .*\(row 1: sigma_t = 1e\+39, largest \|x0\| 1\)"
    with pytest.raises(ValueError, match=want):
        EDM().perturb(x0, np.array([1.0, 1e39, 2.0]), np.random.default_rng(0))


def test_convert_time_names_the_argument_that_is_not_a_process():
    """convert_time's refusals name the argument (project standard: ValueError naming the
    argument). Mutant to_process's check named "from_process"; it passed the existing tests."""
    from sgm_ref.processes import OU, convert_time
    with pytest.raises(ValueError, match=r"^to_process must be a process of sgm_ref\.processes"):
        convert_time(0.5, OU(), "x")
    with pytest.raises(ValueError, match=r"^from_process must be a process of sgm_ref\.processes"):
        convert_time(0.5, "x", OU())


@pytest.mark.parametrize("process", [OU(), VP(), VP(0.0, 20.0), VPCosine(), DDPM(), DDPM("squaredcos_cap_v2")],
                         ids=repr)
def test_kernel_coefficients_of_variance_preserving_processes_keep_sigma2_digits(process):
    """_coefficients (alpha_t, sigma_t^2 for the score kernels of sgm_ref.targets) are the
    public alpha(t), sigma2(t) bit for bit, and sigma_t^2 keeps its digits as t -> 0
    (-expm1(-B), module docstring): OU's sigma_t^2 = -expm1(-2t) against mpmath to 2 eps.
    Mutant `-np.expm1(-B)` -> `1.0 - np.exp(-B)` in VariancePreserving._coefficients (sigma^2
    at t = 1e-10 off by 8e-7 of itself) passed the existing process tests."""
    t = np.array([1e-300, 1e-12, 1e-10, 1e-6, 1e-3, 0.3, 0.9])
    a, s2 = process._coefficients(t, t.size)
    np.testing.assert_array_equal(a, process.alpha(t))
    np.testing.assert_array_equal(s2, process.sigma2(t))
    if isinstance(process, OU):
        with mpmath.workdps(40):
            want = np.array([float(-mpmath.expm1(-2 * mpmath.mpf(x))) for x in t])
        np.testing.assert_allclose(s2, want, rtol=2 * EPS, atol=0)


def test_a_score_where_sigma2_overflows_is_refused_not_returned():
    """The score kernels take (alpha_t, sigma_t^2) from _coefficients, which raises where
    sigma_t^2 leaves float64 (EDM's t_max is inf: sigma_t^2 = t^2 = inf at t = 1e155) rather
    than pass inf on (LinearGaussianProcess._coefficients). Mutant `if not np.all(np.isfinite(s2))`
    -> `if False` (the check skipped) passed the existing tests; with it this score call does
    not raise this error."""
    from sgm_ref.targets import GaussianMixture
    g = GaussianMixture([0.5, 0.5], [[1.0, 0.0], [-1.0, 0.0]])
    x = np.zeros((2, 2))
    assert np.all(g.score(x, 1e150, EDM()) == 0.0)  # -x / (1 + t^2) -> -0
    with pytest.raises(ValueError, match=r"t = 1e\+155: sigma_t\^2 overflows float64 for EDM"):
        g.score(x, 1e155, EDM())
    with pytest.raises(ValueError, match=r"sigma_t\^2 overflows float64"):
        EDM()._coefficients(np.array([1.0, 1e155]), 2)


@pytest.mark.parametrize("t_max", [0.0, -0.0, -1.0])
def test_edm_refuses_a_t_max_that_is_not_positive(t_max):
    """EDM's t_max, the largest sigma, must be > 0 (EDM.__post_init__): EDM(t_max=0) has the
    single time 0, where lambda is inf. Mutant `low_open=True` dropped accepted t_max = 0;
    it passed the existing tests."""
    with pytest.raises(ValueError, match=r"t_max must be > 0"):
        EDM(t_max=t_max)
