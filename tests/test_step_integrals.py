"""Issue 12, item 3: the integrals over a sampler's step, in closed form on every process.

int f, int g^2 and the exponential integrator's int (alpha_lo/alpha_t) g^2 and
int (alpha_lo/alpha_t)^2 g^2 against scipy.integrate.quad of the process's own f and g2, to
~1e-13 relative, from steps near t = 0 to steps at 0.9 t_max (beyond, quad's reference in
float64 arithmetic is not that precise near FlowMatching's t = 1, where g^2 ~ 1 / (1 - t);
tests/test_processes.py checks those steps against mpmath). The stable helpers expm1mx and
log1pmx against mpmath.
"""

import mpmath
import numpy as np
import pytest
from scipy.integrate import quad

from _ddpm_mp import integrated_beta_mp
from sgm_ref import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine
from sgm_ref.processes.base import expm1mx, log1pmx

EVERY = [OU(), VP(), VPCosine(), DDPM("linear"), DDPM("squaredcos_cap_v2"), SubVP(), VE(), EDM(), FlowMatching()]
RTOL = 1e-13


def _steps(process):
    """(t_hi, t_lo) pairs: starts from 1e-12 to 0.9 t_max, lengths from 1e-10 of t_lo to 10x.

    None starts or ends at a DDPM knot j/N: there quad's integrand switches pieces at the float64
    time fl(j/N) while DDPM puts the knot at j/N itself (a 1e-8 difference on a 1e-9 step; 0.1003,
    not the knot 0.1, for that reason)."""
    T = 50.0 if np.isinf(process.t_max) else 0.8996 * process.t_max
    pairs = []
    for lo in (1e-12, 3.1e-9, 1.7e-5, 1.3e-3, 0.1003, 0.47 * T, 0.83 * T):
        for h in (1e-10, 1e-6, 1e-3, 0.1, 10.0):
            hi = min(lo + h * max(lo, 1e-3), T)
            if hi > lo:
                pairs.append((hi, lo))
    return pairs + [(T, T * (1 - 1e-9)), (T, 1e-6), (T, 0.5 * T)]


def _quad(fn, lo, hi, knots):
    """int_lo^hi fn by quad in the offset s = t - lo (precise on short steps), split at knots."""
    edges = [lo] + [k for k in knots if lo < k < hi] + [hi]
    return sum(quad(lambda s, a=a: fn(a + s), 0.0, b - a, epsabs=0, epsrel=1.2e-14, limit=200)[0]
               for a, b in zip(edges[:-1], edges[1:]))


# QUADPACK's 21-point Gauss-Kronrod rule (dqk21, the first step of quad's dqagse): Kronrod nodes
# x_0 > ... > x_10 = 0 with weights WGK; the 10-point Gauss rule uses x_1, x_3, ..., x_9 (WG).
XGK = np.array([0.995657163025808080735527280689003, 0.973906528517171720077964012084452,
                0.930157491355708226001207180059508, 0.865063366688984510732096688423493,
                0.780817726586416897063717578345042, 0.679409568299024406234327365114874,
                0.562757134668604683339000099272694, 0.433395394129247190799265943165784,
                0.294392862701460198131126603103866, 0.148874338981631210884826001129720, 0.0])
WGK = np.array([0.011694638867371874278064396062192, 0.032558162307964727478818972459390,
                0.054755896574351996031381300244580, 0.075039674810919952767043140916190,
                0.093125454583697605535065465083366, 0.109387158802297641899210590325805,
                0.123491976262065851077208626816240, 0.134709217311473325928054001771707,
                0.142775938577060080797094273138717, 0.147739104901338491374841515972068,
                0.149445554002916905664936468389821])
WG = np.array([0.066671344308688137593568809893332, 0.149451349150580593145776339657697,
               0.219086362515982043995534934228163, 0.269266719309996355091226921569469,
               0.295524224714752870173892994651338])
EPMACH, UFLOW = np.finfo(float).eps, np.finfo(float).tiny


def _quad_pieces(fns, lo, hi, knots):
    """[_quad(fn, lo, hi, knots) for fn in fns], fns taking arrays of times: quad's first step,
    dqk21 on each piece [a, b] in the offset s = t - a with dqk21's error estimate, for every
    piece at once, and quad's own test of it (dqagse: done if abserr <= epsrel |result| and
    abserr != resabs, or abserr = 0); a piece it does not accept is left to quad itself. So
    the same integral as _quad (to the order of the rule's sum), with one call of each fn
    instead of 21 scalar calls per piece (DDPM's steps cross up to 900 knots)."""
    edges = np.array([lo] + [k for k in knots if lo < k < hi] + [hi])
    a, width = edges[:-1], edges[1:] - edges[:-1]
    half = 0.5 * width
    centre = 0.5 * width  # of [0, width]
    s = np.concatenate([centre[:, None] - half[:, None] * XGK[None, :-1], centre[:, None],
                        centre[:, None] + half[:, None] * XGK[None, -2::-1]], axis=1)  # (pieces, 21)
    t = a[:, None] + s
    out = []
    for fn in fns:
        values = np.asarray(fn(t.ravel()), dtype=np.float64).reshape(t.shape)
        f1, fc, f2 = values[:, :10], values[:, 10], values[:, :10:-1]  # f(c - h x_j), f(c), f(c + h x_j)
        resk = WGK[10] * fc + ((f1 + f2) * WGK[:10]).sum(axis=1)
        resg = ((f1 + f2)[:, 1::2] * WG).sum(axis=1)
        resabs = WGK[10] * np.abs(fc) + ((np.abs(f1) + np.abs(f2)) * WGK[:10]).sum(axis=1)
        reskh = 0.5 * resk
        resasc = WGK[10] * np.abs(fc - reskh) + ((np.abs(f1 - reskh[:, None]) + np.abs(f2 - reskh[:, None]))
                                                 * WGK[:10]).sum(axis=1)
        result, resabs, resasc = resk * half, resabs * half, resasc * half
        abserr = np.abs((resk - resg) * half)
        with np.errstate(divide="ignore", invalid="ignore"):
            scaled = resasc * np.minimum(1.0, (200.0 * abserr / resasc) ** 1.5)
        abserr = np.where((resasc != 0) & (abserr != 0), scaled, abserr)
        abserr = np.where(resabs > UFLOW / (50 * EPMACH), np.maximum(EPMACH * 50 * resabs, abserr), abserr)
        accepted = ((abserr <= 1.2e-14 * np.abs(result)) & (abserr != resabs)) | (abserr == 0)
        pieces = [r if ok else _quad(lambda x: float(np.asarray(fn(np.array([x])))[0]), lo_, lo_ + w, [])
                  for r, ok, lo_, w in zip(result, accepted, a, width)]
        out.append(sum(pieces))
    return out


@pytest.mark.filterwarnings("ignore::scipy.integrate.IntegrationWarning")
@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_step_integrals_match_quadrature(process):
    knots = list(np.arange(1, process.num_train_timesteps) / process.num_train_timesteps) \
        if isinstance(process, DDPM) else []
    for hi, lo in _steps(process):
        a_lo = float(process.alpha(lo))
        want_g2, want_b, want_c2, want_f = _quad_pieces(
            [process.g2, lambda t: a_lo / process.alpha(t) * process.g2(t),
             lambda t: (a_lo / process.alpha(t)) ** 2 * process.g2(t), process.f], lo, hi, knots)
        a, b, c2 = process.exponential_integrals(hi, lo)
        assert process.integrated_g2_between(hi, lo) == pytest.approx(want_g2, rel=RTOL, abs=0), (hi, lo)
        assert b == pytest.approx(want_b, rel=RTOL, abs=0), (hi, lo)
        assert c2 == pytest.approx(want_c2, rel=RTOL, abs=0), (hi, lo)
        assert process.integrated_f_between(hi, lo) == pytest.approx(want_f, rel=RTOL, abs=1e-300), (hi, lo)
        assert a == pytest.approx(np.exp(-want_f), rel=RTOL, abs=0), (hi, lo)


@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_step_integrals_are_the_forward_transition(process):
    """c2 = sigma_lo^2 (e^{lambda_lo - lambda_hi} - 1) and a = alpha_lo / alpha_hi, and on a
    grid the integrals are additive (int over [t2, t0] = sum over [t2, t1], [t1, t0])."""
    T = 50.0 if np.isinf(process.t_max) else 0.9 * process.t_max
    grid = np.geomspace(T, 1e-4 * T, 30)
    a, b, c2 = process.exponential_integrals(grid[:-1], grid[1:])
    lam = process.log_snr(grid)
    np.testing.assert_allclose(c2, process.sigma2(grid[1:]) * np.expm1(lam[1:] - lam[:-1]), rtol=1e-12)
    np.testing.assert_allclose(a, process.alpha(grid[1:]) / process.alpha(grid[:-1]), rtol=1e-13)
    G = process.integrated_g2_between(grid[:-1], grid[1:])
    assert process.integrated_g2_between(grid[0], grid[-1]) == pytest.approx(G.sum(), rel=1e-13, abs=0)
    F = process.integrated_f_between(grid[:-1], grid[1:])
    assert process.integrated_f_between(grid[0], grid[-1]) == pytest.approx(F.sum(), rel=1e-13, abs=1e-300)


def test_variance_preserving_integrals_are_the_integrated_beta():
    """On OU, VP, VPCosine and DDPM the integrals are functions of DB = int beta, bit for bit."""
    for process in EVERY[:5]:
        hi, lo = np.array([0.5, 0.9, 0.3]), np.array([0.2, 0.9 - 1e-9, 1e-6])
        dB = process.integrated_beta_between(hi, lo)
        assert np.array_equal(process.integrated_g2_between(hi, lo), dB)
        assert np.array_equal(process.integrated_f_between(hi, lo), -0.5 * dB)
        a, b, c2 = process.exponential_integrals(hi, lo)
        assert np.array_equal(a, np.exp(0.5 * dB))
        assert np.array_equal(b, 2.0 * np.expm1(0.5 * dB))
        assert np.array_equal(c2, np.expm1(dB))


def test_ddpm_step_ending_just_below_a_knot_keeps_its_digits():
    """int beta from just below a knot: t_lo N rounded alone lost the step's digits (5e-8)."""
    p = DDPM("linear")
    for lo in (0.9 * (1 - 1e-9), 0.9 - 1e-9, 0.9 - 3.3e-10):  # measured before: 2.6e-8, 4.8e-8, 8.9e-8
        with mpmath.workdps(40):
            want = float((900 - mpmath.mpf(lo) * 1000) * mpmath.mpf(p._rates[899]))
        assert p.integrated_beta_between(0.9, lo) == pytest.approx(want, rel=1e-15, abs=0), lo


@pytest.mark.parametrize("process", EVERY, ids=repr)
def test_step_integrals_check_their_interval(process):
    with pytest.raises(ValueError, match="t_hi must be >= t_lo"):
        process.integrated_g2_between(0.1, 0.5)
    with pytest.raises(ValueError, match="one shape"):
        process.exponential_integrals(np.array([0.5, 0.6]), np.array([0.1]))
    with pytest.raises(ValueError, match="t_lo"):
        process.integrated_f_between(0.5, -0.1)
    assert process.integrated_g2_between(0.5, 0.5) == 0.0


def test_step_integrals_name_an_overflow():
    with pytest.raises(ValueError, match=r"int g\^2 over \[t_lo, t_hi\] overflows float64 for EDM"):
        EDM().integrated_g2_between(1.5e308, 1e308)
    with pytest.raises(ValueError, match=r"alpha_lo / alpha_hi over \[t_lo, t_hi\] overflows float64 for OU"):
        OU().exponential_integrals(1000.0, 1.0)


def test_subvp_c2_past_b_710_is_finite_and_exact():
    """SubVP's c2 = 4 e^{-B_lo} sinh((B_lo + B_hi)/2) sinh(DB/2) overflowed as a product (sinh = inf,
    then e^{-B_lo} = 0 times inf) once B_lo + B_hi > 1420: with beta_max = 2000 a step [0.85, 0.86]
    (c2 = 2.7e7) was refused as an overflow (a review). Against 50 digits of the same formula."""
    p = SubVP(0.1, 2000.0)
    with mpmath.workdps(50):
        def B(t):
            t = mpmath.mpf(t)
            return mpmath.mpf(0.1) * t + t * t * (2000 - mpmath.mpf(0.1)) / 2
        for hi, lo in ((0.86, 0.85), (0.9, 0.85), (1.0, 0.9), (0.85 + 1e-12, 0.85), (0.7, 1e-6), (1e-3, 0.0)):
            Bl, Bh = B(lo), B(hi)
            want = 4 * mpmath.exp(-Bl) * mpmath.sinh((Bl + Bh) / 2) * mpmath.sinh((Bh - Bl) / 2)
            a, b, c2 = p.exponential_integrals(hi, lo)
            # expm1(DB) of DB ~ 190 carries DB's rounding: up to about DB eps
            assert float(abs(c2 / want - 1)) <= 4e-16 * (1 + float(Bh - Bl)), (hi, lo, c2, want)
            assert float(abs(a / mpmath.exp((Bh - Bl) / 2) - 1)) <= 4e-16 * (1 + float(Bh - Bl)), (hi, lo)


def test_expm1mx_and_log1pmx_keep_their_digits():
    y = np.concatenate([-np.logspace(-20, 1.5, 200), np.logspace(-20, 1.5, 200)])
    with mpmath.workdps(40):
        want = np.array([float(mpmath.expm1(mpmath.mpf(v)) - mpmath.mpf(v)) for v in y])
    np.testing.assert_allclose(expm1mx(y), want, rtol=1e-15)
    x = np.concatenate([-(1 - np.logspace(-12, -1e-9, 200)), np.logspace(-20, 2, 200), -np.logspace(-20, -0.1, 50)])
    with mpmath.workdps(40):
        want = np.array([float(mpmath.log1p(mpmath.mpf(v)) - mpmath.mpf(v)) for v in x])
    np.testing.assert_allclose(log1pmx(x), want, rtol=1e-15)


def test_ddpm_fine_steps_through_a_knot_measure_from_the_knot():
    """A time whose t N rounds to a knot is that knot (discrete.py): a step of a fine grid that
    starts at such a time, inside one piece, took t_hi - t_lo and so counted the knot's rounding
    (~1e-17) that the step ending there had already counted: 5.7e-11 of a 1e-6 step, 6.6e-4 of a
    1-ulp one, and the two steps' sum off their union by 5.6e-9 at h = 1e-9 (a review). Against
    50-digit sums of the float64 betas' rates, each time N rounded to its knot where it rounds so."""
    p = DDPM("linear")
    B = integrated_beta_mp(p, snap_knots=True)
    with mpmath.workdps(50):
        for knot in (0.3, 0.7, 0.9, 0.123):  # fl(j/N) off j/N by up to 4e-17 (0.9 above, the others below)
            for h in (1e-6, 1e-9, 5e-12):
                lo, hi = knot - h, knot + h
                below, above = p.integrated_beta_between(knot, lo), p.integrated_beta_between(hi, knot)
                assert below == pytest.approx(float(B(knot) - B(lo)), rel=1e-15, abs=0), (knot, h)
                assert above == pytest.approx(float(B(hi) - B(knot)), rel=1e-15, abs=0), (knot, h)
                assert below + above == pytest.approx(p.integrated_beta_between(hi, lo), rel=1e-15, abs=0), (knot, h)
            one_ulp = np.nextafter(knot, 1.0)
            assert p.integrated_beta_between(one_ulp, knot) == pytest.approx(float(B(one_ulp) - B(knot)), rel=1e-15, abs=0)


def _mp_process(process):
    """(alpha, g^2) of a continuous process as 40-digit functions of t, from its definition."""
    name, mp = type(process).__name__, mpmath
    if name == "OU":
        return lambda t: mp.exp(-t), lambda t: mp.mpf(2)
    if name in ("VP", "SubVP"):
        b0, b1 = mp.mpf(process.beta_min), mp.mpf(process.beta_max)
        beta, B = (lambda t: b0 + t * (b1 - b0)), (lambda t: b0 * t + t * t * (b1 - b0) / 2)
        g2 = beta if name == "VP" else (lambda t: -beta(t) * mp.expm1(-2 * B(t)))
        return lambda t: mp.exp(-B(t) / 2), g2
    if name == "VPCosine":
        s = mp.mpf(process.s)
        u = lambda t: mp.pi / 2 * (t + s) / (1 + s)  # noqa: E731
        return lambda t: mp.cos(u(t)) / mp.cos(u(0)), lambda t: mp.pi / (1 + s) * mp.tan(u(t))
    if name == "VE":
        lo, r = mp.mpf(process.sigma_min), mp.mpf(process.sigma_max) / mp.mpf(process.sigma_min)
        return lambda t: mp.mpf(1), lambda t: 2 * (lo * r ** t) ** 2 * mp.log(r)
    if name == "EDM":
        return lambda t: mp.mpf(1), lambda t: 2 * t
    return lambda t: 1 - t, lambda t: 2 * t / (1 - t)  # FlowMatching


@pytest.mark.parametrize("process", [p for p in EVERY if not isinstance(p, DDPM)], ids=repr)
def test_sampler_step_coefficients_match_40_digits(process):
    """The samplers' affine steps y <- a y + b s + c xi (sgm_ref.samplers.STEP_COEFFICIENTS) against
    their definitions at 40 digits (mpmath quadrature of alpha and g^2 as the process defines them):
    Euler–Maruyama a = 1 - log(alpha_hi / alpha_lo), b = int g^2, c = sqrt(b); exponential a =
    alpha_lo / alpha_hi, b = int (alpha_lo / alpha_t) g^2, c^2 = int (alpha_lo / alpha_t)^2 g^2;
    residual (variance-preserving) a = 2 - e^{-DB/2}, b = 2 (1 - e^{-DB/2}), c^2 = 1 - e^{-DB} with
    DB = 2 log(alpha_lo / alpha_hi). Allowed: 8 ulps (2^-53) times 1 + DB/2, as a long step's
    e^{DB/2} carries the rounding of t_hi - t_lo times DB/2 (OU from 80 to 1e-8: 6.2e-15), and on
    VE 8.5 more, the t log(sigma_max / sigma_min) of its r^{2t}. Measured: at most half of that
    (4 ulps on the short steps; OU 6.2e-15, VE 2.4e-15, the others <= 7.8e-16)."""
    from sgm_ref.processes import VariancePreserving
    from sgm_ref.samplers import STEP_COEFFICIENTS

    alpha, g2 = _mp_process(process)
    T = 80.0 if np.isinf(process.t_max) else 0.999 * process.t_max
    pairs = [(T, T * (1 - 1e-9)), (2e-9, 1e-9), (T, 1e-8), (0.3 * T, 0.29 * T)]
    pairs += list(zip(np.geomspace(T, 1e-3, 6)[:-1], np.geomspace(T, 1e-3, 6)[1:]))
    methods = ["euler_maruyama", "exponential"] + (["residual_exponential"]
                                                   if isinstance(process, VariancePreserving) else [])
    with mpmath.workdps(40):
        for hi, lo in pairs:
            h_, l_ = mpmath.mpf(float(hi)), mpmath.mpf(float(lo))
            ratio = alpha(l_) / alpha(h_)
            G = mpmath.quad(g2, [l_, h_])
            b = mpmath.quad(lambda t: alpha(l_) / alpha(t) * g2(t), [l_, h_])
            c2 = mpmath.quad(lambda t: (alpha(l_) / alpha(t)) ** 2 * g2(t), [l_, h_])
            DB = 2 * mpmath.log(ratio)
            want = {"euler_maruyama": (1 + mpmath.log(ratio), G, mpmath.sqrt(G)),
                    "exponential": (ratio, b, mpmath.sqrt(c2)),
                    "residual_exponential": (2 - mpmath.exp(-DB / 2), -2 * mpmath.expm1(-DB / 2),
                                             mpmath.sqrt(-mpmath.expm1(-DB)))}
            tol = 8 * 2.0**-53 * (1 + float(abs(DB)) / 2 + (8.5 if type(process).__name__ == "VE" else 0.0))
            for method in methods:
                got = [float(v[0]) for v in STEP_COEFFICIENTS[method](process, np.array([hi]), np.array([lo]))]
                for name, g, w in zip("abc", got, want[method]):
                    assert abs(g / float(w) - 1) <= tol, (method, name, hi, lo, g, float(w))
