"""Tests that kill surviving mutants of sgm_ref.processes (mutation testing, review h33).

Each test pins a number or a documented boundary that the existing tests left free: the
mutant named in its docstring passed tests/test_processes.py, test_processes_spec.py,
test_step_integrals.py and test_every_process.py (the slow probability_flow limit-law and
N = 100000 cases deselected) and the other test files that call the mutated function
(test_numerics_fuzz, test_fuzz, test_peers_schedules, test_conventions, test_interop,
test_replays, test_samplers, test_bound, by keyword). Each test fails on its mutant and
passes on the code. References are independent: mpmath at 40-100 digits or the closed form.
"""

import mpmath
import numpy as np
import pytest

from sgm_ref.processes import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine

EPS = np.finfo(np.float64).eps


def _karras_mp(n, lo, hi, rho):
    """Karras et al. (2022, eq. 5) in 100 digits, from the float64 inputs."""
    with mpmath.workdps(100):
        R = mpmath.mpf(rho)
        a, b = mpmath.mpf(hi) ** (1 / R), mpmath.mpf(lo) ** (1 / R)
        return np.array([float((a + mpmath.mpf(i) / (n - 1) * (b - a)) ** R) for i in range(n)])


def test_karras_sigmas_near_the_bottom_of_float64_keep_their_digits():
    """sigma_max exp(e) for log(sigma_i / sigma_max) = e < -700 is taken as sigma_max
    (e^{e/3})^3: e^e alone is subnormal there (e^-741.9 = 1.6e-322 keeps 2 digits). Mutant
    `e > -700.0` -> `e > -800.0` gave sigma_9 1.3e-2 off and passed the existing tests. The
    formula's own conditioning is |e| eps ~ 1.6e-13 of sigma_i at e ~ -742 (the ramp's and
    log1p's roundings scaled by rho = 1e6): 1e-12 allows it and nothing more."""
    n, lo, hi, rho = 11, 1e-58, 1e300, 1e6
    ours = EDM().karras_sigmas(n, lo, hi, rho)
    want = _karras_mp(n, lo, hi, rho)
    assert np.log(want[-2] / hi) < -740.0  # the regime: e^e itself would be subnormal
    assert ours[-1] == 0.0 and ours[-2] == lo and ours[0] == hi
    np.testing.assert_allclose(ours[:-1], want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("process", [VE(), VE(0.002, 80.0)], ids=repr)
def test_time_of_log_snr_refuses_a_lam_past_log_snr_0_by_more_than_a_rounding(process):
    """The allowance past log_snr(t_min) is 1e-12 (1 + |end|) (docstring); one of 1e-11 is
    a lam beyond the process and raises. Mutant allowance 1e-10 passed the existing tests (the
    existing test takes 1e-14 past the end and raises only far beyond)."""
    hi = float(process.log_snr(0.0))
    assert process.time_of_log_snr(hi + 0.5e-12 * (1 + abs(hi))) == 0.0
    with pytest.raises(ValueError, match="lam must be <= log_snr"):
        process.time_of_log_snr(hi + 1e-11 * (1 + abs(hi)))


@pytest.mark.parametrize("process", [VP(), VE(), SubVP(), FlowMatching()], ids=repr)
def test_time_of_log_snr_refuses_a_lam_below_log_snr_t_max_by_more_than_a_rounding(process):
    """The same allowance at the other end, log_snr(t_max)."""
    lo = float(process.log_snr(process.t_max))
    t = process.time_of_log_snr(lo - 0.5e-12 * (1 + abs(lo)))  # t_max, up to the inverse's rounding
    assert abs(t - process.t_max) <= 1e-13 * process.t_max
    with pytest.raises(ValueError, match="lam must be >= log_snr"):
        process.time_of_log_snr(lo - 1e-11 * (1 + abs(lo)))


@pytest.mark.parametrize("process", [VP(), VPCosine(), DDPM()], ids=repr)
def test_time_of_refuses_an_alpha_below_alpha_t_max_by_more_than_a_rounding(process):
    """time_of takes an alpha 1e-12 of itself below alpha(t_max) as alpha(t_max) (code
    comment: as time_of_log_snr); 1e-11 below raises. Mutant allowance 1e-10 passed (the
    existing test refuses only 1e-9 below)."""
    top = float(process.alpha(process.t_max))
    assert process.time_of(top * (1 - 1e-13)) == process.t_max
    with pytest.raises(ValueError, match="alpha is below alpha"):
        process.time_of(top * (1 - 1e-11))


_ALL = [OU(), VP(), VP(0.0, 20.0), VPCosine(), DDPM(), DDPM("squaredcos_cap_v2"), SubVP(), VE(), EDM(),
        FlowMatching()]


@pytest.mark.parametrize("process", _ALL, ids=repr)
def test_f_over_g2_is_f_divided_by_g2(process):
    """_f_over_g2 (the Euler–Maruyama drift-error coefficient of sgm_ref.metrics.bound) is
    f(t) / g(t)^2. Mutant FlowMatching `-0.5 / t` -> `-0.5000000001 / t` passed the existing tests,
    test_bound.py's included (it is 2e-10 of a bound's term)."""
    t_max = min(process.t_max, 1.0)
    t = np.array([1e-6, 1e-3, 0.1, 0.5, 0.9]) * t_max
    np.testing.assert_allclose(process._f_over_g2(t), process.f(t) / process.g2(t), rtol=3 * EPS, atol=0)


def test_flow_matching_f_over_g2_against_its_closed_form():
    """f / g^2 = (-1 / (1 - t)) / (2 t / (1 - t)) = -1 / (2 t), to the last bit."""
    t = np.array([1e-300, 1e-8, 0.3, 0.7, 1 - 1e-5])
    want = np.array([float(-1 / (2 * mpmath.mpf(x))) for x in t])
    np.testing.assert_array_equal(FlowMatching()._f_over_g2(t), want)


def test_flow_matching_step_integrals_on_long_steps_to_rounding():
    """Steps with u = h / (1 - t_lo) in (1/2, 0.99), where 1 - u, log1p(-u) and L(-u) come
    from (1 - t_hi) / (1 - t_lo) (FlowMatching._u_logs). Against mpmath from the integrals'
    closed forms in t (not in u): int f 1 eps, int g^2 2 eps, b 4 eps measured. Mutant branch
    `u <= 0.5` -> `u <= 0.99` (1 - u from the rounded u: int f 5 eps, b 22 eps) passed
    every test (they take u <= 1/2 or u near 1)."""
    rng = np.random.default_rng(0)
    t_lo = rng.uniform(0.0, 0.5, 60)
    t_hi = t_lo + (1 - t_lo) * rng.uniform(0.5, 0.99, 60)
    fm = FlowMatching()
    f, g = fm.integrated_f_between(t_hi, t_lo), fm.integrated_g2_between(t_hi, t_lo)
    b = fm.exponential_integrals(t_hi, t_lo)[1]
    with mpmath.workdps(40):
        th, tl = [mpmath.mpf(x) for x in t_hi], [mpmath.mpf(x) for x in t_lo]
        F = [float(mpmath.log((1 - h) / (1 - lo))) for h, lo in zip(th, tl)]
        # int 2 t / (1 - t) dt = [-2 log(1 - t) - 2 t]; b = (1 - t_lo) [2 / (1 - t) + 2 log(1 - t)]
        G = [float(2 * (mpmath.log(1 - lo) - mpmath.log(1 - h)) - 2 * (h - lo)) for h, lo in zip(th, tl)]
        B = [float((1 - lo) * (2 / (1 - h) + 2 * mpmath.log(1 - h) - 2 / (1 - lo) - 2 * mpmath.log(1 - lo)))
             for h, lo in zip(th, tl)]
    np.testing.assert_allclose(f, F, rtol=3 * EPS, atol=0)
    np.testing.assert_allclose(g, G, rtol=4 * EPS, atol=0)
    np.testing.assert_allclose(b, B, rtol=8 * EPS, atol=0)


def test_vp_cosine_integrated_beta_between_near_t_max_to_rounding():
    """int beta = -2 log(cos u_hi / cos u_lo) on steps near t_max whose ratio is 0.55..0.85:
    log1p(diff / cos u_lo) there, 2 eps measured against mpmath. Mutant branch `c_hi < 0.5
    c_lo` -> `c_hi < 0.9 c_lo` (the difference of two logs of small cosines: 16 eps) passed
    every test."""
    p = VPCosine()
    t_hi = np.linspace(0.9, p.t_max, 20)
    t_hi = np.concatenate([t_hi, t_hi, t_hi])
    t_lo = 1 - (1 - t_hi) / np.repeat([0.55, 0.7, 0.85], 20)  # cos u is ~linear in 1 - t here
    got = p.integrated_beta_between(t_hi, t_lo)
    with mpmath.workdps(40):
        k, s = mpmath.pi / 2 / (1 + mpmath.mpf(p.s)), mpmath.mpf(p.s)
        want = [float(-2 * mpmath.log(mpmath.cos(k * (mpmath.mpf(h) + s)) / mpmath.cos(k * (mpmath.mpf(lo) + s))))
                for h, lo in zip(t_hi, t_lo)]
    np.testing.assert_allclose(got, want, rtol=4 * EPS, atol=0)


def test_ddpm_beta_inside_takes_only_times_within_1e_9_of_a_timestep_as_the_knot():
    """_beta_inside (probability_flow's beta at a step's ends) reads a time within 1e-9 / N
    of a knot as the knot and any other time as inside its piece floor(N t). Mutant window
    1e-6 / N passed the existing tests; a time 1e-7 of a timestep above knot 500 is inside piece 500
    (from below too), one 1e-7 below knot 400 inside piece 399."""
    p = DDPM()
    N = p.num_train_timesteps
    r = N * p._rates
    hi, lo = p._beta_inside(np.array([(500 + 1e-7) / N, (500 + 1e-12) / N]),
                            np.array([(400 - 1e-7) / N, (400 - 1e-12) / N]))
    np.testing.assert_array_equal(hi, [r[500], r[499]])
    np.testing.assert_array_equal(lo, [r[399], r[400]])


@pytest.mark.parametrize("process", [DDPM(), DDPM("squaredcos_cap_v2")], ids=repr)
def test_ddpm_inverse_integrated_beta_inverts_integrated_beta_to_an_ulp(process):
    """t -> B(t) -> t through the knots with their summation's rounding (_knots_lo),
    1 eps measured (integrated_beta itself is pinned to an ulp against mpmath in
    test_processes.py). Mutant `- self._knots_lo[j]` -> `+ self._knots_lo[j]` in
    _inverse_integrated_beta (what time_of and time_of_log_snr invert through): 6 eps,
    passed the existing tests."""
    t = np.linspace(0.001, 1.0, 2001)
    back = process._inverse_integrated_beta(process.integrated_beta(t))
    np.testing.assert_allclose(back, t, rtol=2 * EPS, atol=0)


def test_expm1mx_takes_its_series_up_to_one_half():
    """E(y) = e^y - 1 - y from its Taylor series for |y| <= 1/2: 1 eps measured on
    0.25 <= |y| <= 0.5 against mpmath. Mutant threshold 1/4 (expm1(y) - y there, 4 eps)
    passed test_step_integrals.py's rtol 1e-15 (4.5 eps)."""
    from sgm_ref.processes.base import expm1mx
    y = np.concatenate([np.linspace(-0.5, -0.25, 200), np.linspace(0.25, 0.5, 200)])
    with mpmath.workdps(40):
        want = np.array([float(mpmath.expm1(mpmath.mpf(v)) - mpmath.mpf(v)) for v in y])
    np.testing.assert_allclose(expm1mx(y), want, rtol=2 * EPS, atol=0)
