"""Linear Gaussian processes that are not variance-preserving.

SubVP (Song et al. 2021), VE (score_sde's geometric sigma), EDM (Karras et al. 2022) and
the flow-matching / rectified-flow interpolant (Lipman et al. 2023; Liu et al. 2023). Each
gives alpha_t, sigma_t, their derivatives and lambda_t in closed form; f and g^2 follow as
in sgm_ref.processes.base. Each also gives the integrals a reverse-time sampler needs over a
step [t_lo, t_hi] (h = t_hi - t_lo) in closed, cancellation-free form: int f, int g^2, and
the exponential integrator's b = int (alpha_lo / alpha_t) g^2 and
c2 = int (alpha_lo / alpha_t)^2 g^2 (their class docstrings).
"""

from dataclasses import dataclass

import numpy as np

from .._validation import check_count, check_real
from .base import LinearGaussianProcess, expm1mx, log1pmx
from .variance_preserving import (_TINY, check_linear_betas, inverse_linear_integrated_beta, linear_beta,
                                  linear_integral_between, linear_integrated_beta, log_linear_mean_rate,
                                  time_of_tiny_linear_integrated_beta)


@dataclass(frozen=True)
class SubVP(LinearGaussianProcess):
    """Sub-VP SDE of Song et al. (2021, eq. 12; its transition kernel in their eq. 29), t in [0, 1].

    dX = -1/2 beta(t) X dt + sqrt(beta(t) (1 - e^{-2 B(t)})) dW with the linear beta of VP:
    alpha_t = e^{-B/2}, sigma_t = 1 - e^{-B} = -expm1(-B) (sigma^2 <= the VP variance),
    f = -beta/2, g^2 = -beta expm1(-2B), lambda = -B - 2 log(-expm1(-B)) and inversely
    B = 2 asinh(e^{-lambda/2} / 2) (from sigma/alpha = 2 sinh(B/2)).

    Over a step, with B_lo = B(t_lo), DB = int beta (exact midpoint rule) and
    E(y) = e^y - 1 - y >= 0 (sgm_ref.processes.base.expm1mx):

        int f   = -DB/2
        int g^2 = int (1 - e^{-2B}) dB = -expm1(-2 B_lo) DB + e^{-2 B_lo} E(-2 DB) / 2
        b       = e^{-B_lo/2} int (e^{B/2} - e^{-3B/2}) dB
                = 2 E(DB/2) + (2/3) E(-3 DB/2) + (2/3) expm1(-2 B_lo) expm1(-3 DB/2)
        c2      = e^{-B_lo} [2 cosh B] = 4 e^{-B_lo} sinh((B_lo + B_hi)/2) sinh(DB/2)
                = -expm1(-(B_lo + B_hi)) expm1(DB)   (no e^{-B_lo} sinh(...) = 0 * inf for B > 710)

    every term >= 0, so nothing cancels as t -> 0 or on short steps.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_max = 1.0

    def __post_init__(self):
        check_linear_betas(self)

    def _beta(self, t):
        return linear_beta(t, self.beta_min, self.beta_max)

    def _B(self, t):
        return linear_integrated_beta(t, self.beta_min, self.beta_max)

    def _alpha(self, t):
        return np.exp(-0.5 * self._B(t))

    def _sigma(self, t):
        return -np.expm1(-self._B(t))

    def _sigma2(self, t):
        return self._sigma(t) ** 2

    def _d_alpha(self, t):
        return -0.5 * self._beta(t) * self._alpha(t)

    def _d_sigma(self, t):
        return self._beta(t) * np.exp(-self._B(t))

    def _w(self, t):
        # alpha sigma' - alpha' sigma = alpha beta (1 + e^{-B}) / 2
        return 0.5 * self._alpha(t) * self._beta(t) * (1.0 + np.exp(-self._B(t)))

    def _half_dq(self, t):
        e = np.exp(-self._B(t))
        return self._beta(t) * e * (0.5 - e)

    def _f(self, t):
        return -0.5 * self._beta(t)

    def _g2(self, t):
        return -self._beta(t) * np.expm1(-2.0 * self._B(t))

    def _DB(self, t_hi, t_lo):
        return linear_integral_between(t_hi, t_lo, self.beta_min, self.beta_max)

    def _int_f(self, t_hi, t_lo):
        return -0.5 * self._DB(t_hi, t_lo)

    def _int_g2(self, t_hi, t_lo):
        B_lo, DB = self._B(t_lo), self._DB(t_hi, t_lo)
        return -np.expm1(-2.0 * B_lo) * DB + 0.5 * np.exp(-2.0 * B_lo) * expm1mx(-2.0 * DB)

    def _ei_b(self, t_hi, t_lo):
        B_lo, DB = self._B(t_lo), self._DB(t_hi, t_lo)
        return (2.0 * expm1mx(0.5 * DB) + (2.0 / 3.0) * expm1mx(-1.5 * DB)
                + (2.0 / 3.0) * np.expm1(-2.0 * B_lo) * np.expm1(-1.5 * DB))

    def _ei_c2(self, t_hi, t_lo):
        # 4 e^{-B_lo} sinh(S) sinh(DB/2), S = (B_lo + B_hi)/2, as (1 - e^{-2S}) (e^{DB} - 1): the
        # product form overflowed to inf (and 0 * inf) once S > 710 (beta_max above ~1400), where
        # c2 ~ e^{DB} is finite (a review)
        B_lo, B_hi, DB = self._B(t_lo), self._B(t_hi), self._DB(t_hi, t_lo)
        return -np.expm1(-(B_lo + B_hi)) * np.expm1(DB)

    def _log_snr(self, t):
        # where B(t) leaves float64's normal range (beta_min = 0, t below ~1e-154) lambda = -2 log B
        # from log t and the mean rate B / t: SubVP(0, 50) had log_snr(1e-300) = inf for 2756.7
        # (as VP; the same bits elsewhere)
        B = self._B(t)
        with np.errstate(divide="ignore"):
            lam = -B - 2.0 * np.log(-np.expm1(-B))
            tiny = B < _TINY
            if np.any(tiny):
                t = np.asarray(t, dtype=np.float64)
                lam = np.where(tiny, -2.0 * (np.log(t) + log_linear_mean_rate(t, self.beta_min, self.beta_max)), lam)
        return lam

    def _time_of_log_snr(self, lam):
        # B = 2 asinh(e^y / 2), y = -lam/2; past y = 30 as 2y + 2 log1p(e^{-2y} / ...) (the same
        # number), as e^y overflows beyond y = 709 (beta_max above ~2800: lambda(1) < -1420)
        y = -0.5 * np.asarray(lam, dtype=np.float64)
        with np.errstate(over="ignore", under="ignore"):
            small = 2.0 * np.arcsinh(0.5 * np.exp(np.minimum(y, 30.0)))
        e = np.exp(-2.0 * np.maximum(y, 30.0))  # asinh(x) = log(2x) + log1p((sqrt(1 + 1/x^2) - 1) / 2)
        large = 2.0 * y + 2.0 * np.log1p(2.0 * e / (np.sqrt(1.0 + 4.0 * e) + 1.0))
        B = np.where(y > 30.0, large, small)
        t = inverse_linear_integrated_beta(B, self.beta_min, self.beta_max)
        tiny = B < _TINY
        if np.any(tiny):  # B = e^y there, kept as its log (VP._time_of_log_snr)
            t = np.where(tiny, time_of_tiny_linear_integrated_beta(y, self.beta_min, self.beta_max), t)
        return t

    def to_dict(self):
        return {"name": "SubVP", "beta_min": self.beta_min, "beta_max": self.beta_max}


@dataclass(frozen=True)
class VE(LinearGaussianProcess):
    """Variance-exploding SDE of Song et al. (2021, score_sde's VESDE), t in [0, 1].

    alpha_t = 1, sigma_t = sigma_min (sigma_max / sigma_min)^t, f = 0,
    g^2 = d sigma^2/dt = 2 sigma_t^2 log(sigma_max / sigma_min),
    lambda_t = -2 log sigma_min - 2 t log(sigma_max / sigma_min).
    As in score_sde the data enter at sigma_min > 0 (t = 0 is already noised), so
    log_snr(0) is finite; the SDE carries x_s to x_t for any 0 <= s < t <= 1.
    Over a step: int f = 0 and int g^2 = b = c2 = sigma_hi^2 - sigma_lo^2
    = sigma_lo^2 expm1(2 h log(sigma_max / sigma_min)) (no difference of two squares).

    Parameters
    ----------
    sigma_min, sigma_max : float
        0 < sigma_min < sigma_max; defaults 0.01 and 50 (score_sde's CIFAR-10 values).
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    t_max = 1.0

    def __post_init__(self):
        for name in ("sigma_min", "sigma_max"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, low=0.0, low_open=True))
        if not self.sigma_max > self.sigma_min:
            raise ValueError(f"sigma_max must be > sigma_min, got sigma_min={self.sigma_min}, "
                             f"sigma_max={self.sigma_max}")

    @property
    def _log_ratio(self):
        # log of the ratio, rounded once (1.1e-16), not a difference of two rounded logs (up
        # to 1.5e-15 for the defaults); that difference where the ratio overflows float64
        with np.errstate(over="ignore"):
            ratio = np.float64(self.sigma_max) / np.float64(self.sigma_min)
        if ratio < 2.0:  # near 1 the rounded ratio's log is ~95 eps off (VE(100, 100.5)); the
            # difference is exact there (Sterbenz), so log1p of it over sigma_min keeps the digits
            return np.log1p((np.float64(self.sigma_max) - np.float64(self.sigma_min)) / np.float64(self.sigma_min))
        return np.log(ratio) if np.isfinite(ratio) else np.log(self.sigma_max) - np.log(self.sigma_min)

    def _alpha(self, t):
        return np.ones_like(t, dtype=np.float64)

    def _from_nearer_end(self, t, power):
        """sigma_t^power (power 1 or 2) as sigma_end^power (sigma_max / sigma_min)^(power (t - t_end))
        from the nearer end, t_end = 0 or 1 (t - 1 exact for t >= 1/2): sigma_min and sigma_max
        exactly at t = 0 and 1, and the exponent's rounding scaled by |t - t_end| <= 1/2. The
        single exp of 2 (log sigma_min + t log(sigma_max / sigma_min)) was 13 eps off near t = 1
        and gave sigma_1 = 50 - 2.8e-14. Where a factor leaves float64's normal range (sigma_max /
        sigma_min beyond ~1e308), that log form."""
        t = np.asarray(t, dtype=np.float64)
        near0 = t <= 0.5
        end = np.where(near0, self.sigma_min, self.sigma_max)
        with np.errstate(over="ignore", under="ignore"):
            e = np.exp(power * np.where(near0, t, t - 1.0) * self._log_ratio)
            v = end * e if power == 1 else end * (end * e)
            # a subnormal factor has lost digits (VE(1e-200, 1e200).sigma2(0.6): e^-737, 1.1e-5 off)
            ok = np.isfinite(e) & (e >= np.finfo(np.float64).tiny)
            if np.all(ok):  # the log form only where needed (it was a second exp on every call)
                return v
            logged = np.exp(power * (np.log(self.sigma_min) + t * self._log_ratio))
        return np.where(ok, v, logged)

    def _sigma(self, t):
        return self._from_nearer_end(t, 1)

    def _sigma2(self, t):
        return self._from_nearer_end(t, 2)

    def _d_alpha(self, t):
        return np.zeros_like(t, dtype=np.float64)

    def _d_sigma(self, t):
        return self._sigma(t) * self._log_ratio

    def _f(self, t):
        return np.zeros_like(t, dtype=np.float64)

    def _int_f(self, t_hi, t_lo):
        return np.zeros_like(t_hi, dtype=np.float64)

    def _int_g2(self, t_hi, t_lo):
        return self._sigma2(t_lo) * np.expm1(2.0 * (t_hi - t_lo) * self._log_ratio)

    _ei_b = _ei_c2 = _int_g2  # alpha = 1

    def _log_snr(self, t):
        return -2.0 * (np.log(self.sigma_min) + t * self._log_ratio)

    def _time_of_log_snr(self, lam):
        return (-0.5 * lam - np.log(self.sigma_min)) / self._log_ratio

    def to_dict(self):
        return {"name": "VE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


@dataclass(frozen=True)
class EDM(LinearGaussianProcess):
    """The sigma convention of Karras et al. (2022, EDM) and k-diffusion: time is the noise level.

    alpha_t = 1, sigma_t = t, f = 0, g^2 = 2 t, lambda_t = -2 log t; t in [0, t_max].
    Over a step: int f = 0 and int g^2 = b = c2 = t_hi^2 - t_lo^2 = h (t_hi + t_lo).

    Parameters
    ----------
    t_max : float
        Largest sigma, default inf (EDM samples from sigma_max = 80).
    """

    t_max: float = np.inf

    def __post_init__(self):
        if not (isinstance(self.t_max, float) and self.t_max == np.inf):
            object.__setattr__(self, "t_max", check_real(self.t_max, "t_max", low=0.0, low_open=True))

    def _alpha(self, t):
        return np.ones_like(t, dtype=np.float64)

    def _sigma(self, t):
        return np.asarray(t, dtype=np.float64)

    def _sigma2(self, t):
        return np.asarray(t, dtype=np.float64) ** 2

    def _d_alpha(self, t):
        return np.zeros_like(t, dtype=np.float64)

    def _d_sigma(self, t):
        return np.ones_like(t, dtype=np.float64)

    def _w(self, t):
        return np.ones_like(t, dtype=np.float64)

    def _half_dq(self, t):
        return np.asarray(t, dtype=np.float64)

    def _f(self, t):
        return np.zeros_like(t, dtype=np.float64)

    def _g2(self, t):
        return 2.0 * np.asarray(t, dtype=np.float64)

    def _int_f(self, t_hi, t_lo):
        return np.zeros_like(t_hi, dtype=np.float64)

    def _int_g2(self, t_hi, t_lo):
        return (t_hi - t_lo) * (t_hi + t_lo)

    _ei_b = _ei_c2 = _int_g2  # alpha = 1

    def _log_snr(self, t):
        return -2.0 * np.log(t)

    def _time_of_log_snr(self, lam):
        return np.exp(-0.5 * lam)

    def karras_sigmas(self, n, sigma_min, sigma_max, rho=7.0):
        """The time grid of Karras et al. (2022, eq. 5), as k-diffusion's get_sigmas_karras.

        sigma_i = (sigma_max^(1/rho) + i/(n-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho
        for i = 0..n-1, then a final 0: n + 1 decreasing float64 times. Evaluated as
        sigma_i = sigma_max exp(rho log1p(r_i expm1(log(sigma_min / sigma_max) / rho))),
        r_i = i/(n-1), with sigma_{n-1} = sigma_min exactly: neither end overflows nor cancels
        for tiny or huge rho (sigma_max^(1/rho) overflows for rho = 1e-3, and the two roots
        round to one for rho = 1e17).

        n = 1 gives [sigma_max, 0], as get_sigmas_karras (torch.linspace(0, 1, 1) = [0]): one
        step from sigma_max to 0; sigma_min is checked but does not appear.

        Raises
        ------
        ValueError
            n not an integer >= 1, not 0 < sigma_min < sigma_max <= t_max, or rho <= 0.
        """
        n = check_count(n, "n", minimum=1)
        sigma_min = check_real(sigma_min, "sigma_min", low=0.0, low_open=True)
        sigma_max = check_real(sigma_max, "sigma_max", low=sigma_min, low_open=True, high=self.t_max)
        rho = check_real(rho, "rho", low=0.0, low_open=True)
        q_minus_1 = np.expm1((np.log(sigma_min) - np.log(sigma_max)) / rho)  # (sigma_min/sigma_max)^(1/rho) - 1
        ramp = np.linspace(0.0, 1.0, n)
        with np.errstate(divide="ignore", under="ignore"):  # log1p(-1) = -inf at the end when q underflows
            e = rho * np.log1p(ramp * q_minus_1)  # log(sigma_i / sigma_max) in [log(sigma_min / sigma_max), 0]
            third = np.exp(e / 3.0)  # exp(e) alone underflows below e = -745 (sigma_max / sigma_min > 1e308)
            sigmas = np.where(e > -700.0, sigma_max * np.exp(e), sigma_max * third * third * third)
        if n >= 2:  # the ramp's end; n = 1 has only its start, sigma_max (k-diffusion's)
            sigmas[-1] = sigma_min
        return np.append(sigmas, 0.0)

    def to_dict(self):
        return {"name": "EDM", "t_max": self.t_max}


@dataclass(frozen=True)
class FlowMatching(LinearGaussianProcess):
    """Flow-matching / rectified-flow interpolant x_t = (1 - t) x0 + t z (Lipman et al. 2023,
    conditional OT path with sigma_min = 0; Liu et al. 2023), t in [0, t_max].

    alpha = 1 - t, sigma = t, alpha' = -1, sigma' = 1, f = -1/(1 - t),
    g^2 = 2 t / (1 - t), lambda = 2 (log1p(-t) - log t), inversely t = 1 / (1 + e^{lambda/2}).
    The velocity of the interpolant is E[z - x0 | x_t].

    Over a step, with u = h / (1 - t_lo) in [0, 1) (so 1 - t_hi = (1 - t_lo)(1 - u)),
    rho = t / (1 - t) = sigma / alpha and L(x) = log(1 + x) - x <= 0
    (sgm_ref.processes.base.log1pmx):

        int f   = log((1 - t_hi) / (1 - t_lo)) = log1p(-u)
        int g^2 = int (2 / (1 - t) - 2) dt = 2 (u t_lo - L(-u))
        b       = (1 - t_lo) int 2 t / (1 - t)^2 dt = (1 - t_lo) [2 / (1 - t) + 2 log(1 - t)]_lo^hi
                = 2 (u / (1 - u) + (1 - t_lo) log1p(-u))
                = 2 (u^2 / (1 - u) + L(-u) - t_lo log1p(-u))
        c2      = (1 - t_lo)^2 (rho_hi^2 - rho_lo^2) = (1 - t_lo) h (rho_hi + rho_lo) / (1 - t_hi)

    (in b, u^2 / (1 - u) + L(-u) has parts of opposite sign but |L(-u)| <= u^2 / (2 (1 - u)),
    so at most one bit cancels; the last term is >= 0). For u > 1/2 the factor 1 - u is
    (1 - t_hi) / (1 - t_lo), log1p(-u) is its log and L(-u) = log(1 - u) + u: 1 - u taken
    from the rounded u would lose digits on steps up to near t = 1.

    Parameters
    ----------
    t_max : float
        0 < t_max < 1, default 1 - 1e-5 (lambda ~ -23). t = 1 itself is excluded: alpha = 0
        there and f, g^2, lambda are infinite.
    """

    _times_by_g2 = True
    t_max: float = 1.0 - 1e-5

    def __post_init__(self):
        object.__setattr__(self, "t_max", check_real(self.t_max, "t_max", low=0.0, high=1.0,
                                                     low_open=True, high_open=True))

    def _alpha(self, t):
        return 1.0 - np.asarray(t, dtype=np.float64)

    def _sigma(self, t):
        return np.asarray(t, dtype=np.float64)

    def _sigma2(self, t):
        return np.asarray(t, dtype=np.float64) ** 2

    def _d_alpha(self, t):
        return np.full(np.shape(t), -1.0)

    def _d_sigma(self, t):
        return np.ones_like(t, dtype=np.float64)

    def _w(self, t):
        return np.ones_like(t, dtype=np.float64)  # (1 - t) + t

    def _half_dq(self, t):
        return 2.0 * np.asarray(t, dtype=np.float64) - 1.0

    def _g2(self, t):
        t = np.asarray(t, dtype=np.float64)
        return 2.0 * t / (1.0 - t)

    def _f_over_g2(self, t):
        return -0.5 / np.asarray(t, dtype=np.float64)

    @staticmethod
    def _u(t_hi, t_lo):
        return (t_hi - t_lo) / (1.0 - t_lo)

    @staticmethod
    def _u_logs(t_hi, t_lo):
        """(u, 1 - u, log1p(-u), L(-u)) to full relative precision.

        1 - u is (1 - t_hi) / (1 - t_lo), not 1 - u: on a step up to near t = 1 (u = 0.99998
        from t_lo = 0.37 to t_max = 1 - 1e-5) u's rounding alone cost 1 - u, log1p(-u), int f,
        int g^2, b and alpha_lo / alpha_hi 1e-12 to 1.5e-11 of their values. Steps with
        u <= 1/2 take log1p(-u) and log1pmx(-u) as before (the same bits).
        """
        u = FlowMatching._u(t_hi, t_lo)
        small = u <= 0.5
        w = np.where(small, 1.0 - u, (1.0 - t_hi) / (1.0 - t_lo))
        with np.errstate(divide="ignore"):  # log1p(-u) of a u rounded to 1, in the branch not taken
            log_w = np.where(small, np.log1p(-u), np.log(w))
        return u, w, log_w, np.where(small, log1pmx(-u), log_w + u)

    def _int_f(self, t_hi, t_lo):
        return self._u_logs(t_hi, t_lo)[2]

    def _int_g2(self, t_hi, t_lo):
        u, _, _, L = self._u_logs(t_hi, t_lo)
        return 2.0 * (u * t_lo - L)

    def _ei_b(self, t_hi, t_lo):
        u, w, log_w, L = self._u_logs(t_hi, t_lo)
        return 2.0 * (u * u / w + L - t_lo * log_w)

    def _ei_c2(self, t_hi, t_lo):
        rho = t_hi / (1.0 - t_hi) + t_lo / (1.0 - t_lo)
        return (1.0 - t_lo) * (t_hi - t_lo) * rho / (1.0 - t_hi)

    def _log_snr(self, t):
        t = np.asarray(t, dtype=np.float64)
        return 2.0 * (np.log1p(-t) - np.log(t))

    def _time_of_log_snr(self, lam):
        # 1 / (1 + e^{lam/2}) without overflow for either sign of lam
        e = np.exp(-0.5 * np.abs(lam))
        return np.where(lam > 0, e / (1.0 + e), 1.0 / (1.0 + e))

    def to_dict(self):
        return {"name": "FlowMatching", "t_max": self.t_max}
