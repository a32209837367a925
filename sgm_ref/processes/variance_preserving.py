"""Variance-preserving processes: alpha_t^2 + sigma_t^2 = 1, the standard Gaussian stationary.

Each is the linear SDE

    dX_t = -1/2 beta(t) X_t dt + sqrt(beta(t)) dW_t,

whose transition from X_0 is Gaussian:

    X_t | X_0 = alpha_t X_0 + sigma_t Z,   Z ~ N(0, I),
    alpha_t = exp(-1/2 B(t)),   sigma_t^2 = 1 - alpha_t^2 = -expm1(-B(t)),
    B(t) = int_0^t beta(s) ds,

so f = -beta/2, g^2 = beta, lambda_t = -B - log(-expm1(-B)) and, inversely,
B = log(1 + e^{-lambda}). Over a step [t_lo, t_hi] with DB = int beta (integrated_beta_between):
int f = -DB/2, int g^2 = DB, and the exponential integrator's
int (alpha_lo/alpha_t) g^2 = 2 expm1(DB/2), int (alpha_lo/alpha_t)^2 g^2 = expm1(DB).
sigma_t is computed from expm1 so that it keeps full relative precision as t -> 0
(where 1 - alpha_t^2 would cancel).

OU is beta = 2 (dX = -X dt + sqrt(2) dW, alpha_t = e^{-t}); VP is Song et al. (2021),
beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1]; VPCosine is the cosine
schedule of Nichol & Dhariwal (2021) in continuous time.
"""

from dataclasses import dataclass

import numpy as np

from .._validation import check_count, check_float_dtype, check_real, check_real_array, check_rng, fits_in_memory
from .base import LinearGaussianProcess, softplus


class VariancePreserving(LinearGaussianProcess):
    """Shared formulas; subclasses define _beta, _integrated_beta, _integral_between,
    _inverse_integrated_beta and t_max, and may define _tiny_linear_betas (B(t) near t = 0,
    where it leaves float64's normal range)."""

    def integrated_beta(self, t):
        """B(t) = int_0^t beta(s) ds; t scalar or shape (n,); float64, same shape.

        Raises ValueError for a t whose B(t) is beyond float64 (OU: t > 8.9e307).
        """
        t = self._times(t)
        with np.errstate(over="ignore"):
            return self._out(self._finite_integral(self._integrated_beta(t), "t"))

    @staticmethod
    def _finite_integral(B, name):
        if not np.all(np.isfinite(B)):
            raise ValueError(f"{name} is so large that the integral of beta up to it overflows float64; "
                             "use times below 1e300")
        return B

    def integrated_beta_between(self, t_hi, t_lo):
        """int_{t_lo}^{t_hi} beta(s) ds without the cancellation of B(t_hi) - B(t_lo).

        t_hi, t_lo scalars or arrays of one shape, t_hi >= t_lo; float64. The step
        integrals of a reverse-time sampler keep full relative precision on fine grids.
        """
        t_hi, t_lo = self._step_times(t_hi, t_lo)
        with np.errstate(over="ignore"):
            return self._out(self._finite_integral(np.asarray(self._integral_between(t_hi, t_lo)), "t_hi"))

    def beta(self, t):
        """Noise rate beta(t); t scalar or shape (n,); float64, same shape."""
        return self._out(self._beta(self._times(t)))

    def _beta_inside(self, t_hi, t_lo):
        """(beta(t_hi - 0), beta(t_lo + 0)): the rates at a step's two ends seen from inside
        the step [t_lo, t_hi], for a scheme that reads beta at the ends (Heun on the
        probability-flow ODE). beta(t_hi), beta(t_lo) where beta is continuous; DDPM's
        jumps at its knots (sgm_ref.processes.DDPM)."""
        return self._beta(t_hi), self._beta(t_lo)

    def _alpha(self, t):
        return np.exp(-0.5 * self._integrated_beta(t))

    def _sigma2(self, t):
        return -np.expm1(-self._integrated_beta(t))

    def _tiny_linear_betas(self):
        """(b0, b1): B(t) = t (b0 + t (b1 - b0) / 2) to float64's rounding wherever B(t) is below
        float64's normal range (t below ~1e-300), or None (OU: B = 2t keeps its digits, as
        expm1(-B) = -B does). Where B is subnormal or 0 while sigma_t ~ sqrt(B) is a normal number,
        sigma, lambda and their inverse come from t (or log B) and this mean rate, as VP's own
        (VPCosine(0.008).log_snr(5e-324) was inf for 747.69, sigma(1e-310) 3.5e-13 off)."""
        return None

    def _sigma(self, t):
        B = self._integrated_beta(t)
        sigma = np.sqrt(-np.expm1(-B))  # _sigma2's, B computed once
        betas = self._tiny_linear_betas()
        if betas is None:
            return sigma
        tiny = B < _TINY
        if np.any(tiny):  # sqrt(t) sqrt(B / t), as VP._sigma
            t = np.asarray(t, dtype=np.float64)
            b0, b1 = betas
            half = 0.5 * (b1 - b0)
            rate = b0 + t * half
            with np.errstate(divide="ignore", invalid="ignore"):
                low = np.where(t > 0, t * np.sqrt(half + b0 / np.where(t > 0, t, 1.0)), 0.0)
                sigma = np.where(tiny, np.where(rate < _TINY, low, np.sqrt(t) * np.sqrt(rate)), sigma)
        return sigma

    def _coefficients(self, t, n):
        """(alpha_t, sigma_t^2) as float64 arrays of length n, t validated for n rows."""
        B = np.broadcast_to(self._integrated_beta(self._times(t, n=n)), (n,))
        return np.exp(-0.5 * B), -np.expm1(-B)

    def _d_alpha(self, t):
        return -0.5 * self._beta(t) * self._alpha(t)

    def _d_sigma(self, t):
        # sigma sigma' = -alpha alpha' because alpha^2 + sigma^2 = 1
        return 0.5 * self._beta(t) * self._alpha(t) ** 2 / self._sigma(t)

    def _w(self, t):
        return 0.5 * self._beta(t) * self._alpha(t) / self._sigma(t)

    def _half_dq(self, t):
        return np.zeros_like(np.asarray(t, dtype=np.float64))

    def _f(self, t):
        return -0.5 * self._beta(t)

    def _g2(self, t):
        return self._beta(t)

    # the step integrals of the reverse-time samplers, all from DB = int beta over the step:
    # int f = -DB/2, int g^2 = DB, int (alpha_lo/alpha) beta = 2 (e^{DB/2} - 1),
    # int (alpha_lo/alpha)^2 beta = e^{DB} - 1

    def _int_f(self, t_hi, t_lo):
        return -0.5 * self._integral_between(t_hi, t_lo)

    def _int_g2(self, t_hi, t_lo):
        return self._integral_between(t_hi, t_lo)

    def _ei_b(self, t_hi, t_lo):
        return 2.0 * np.expm1(0.5 * self._integral_between(t_hi, t_lo))

    def _ei_c2(self, t_hi, t_lo):
        return np.expm1(self._integral_between(t_hi, t_lo))

    def _f_over_g2(self, t):
        return np.full(np.shape(t), -0.5)

    def _log_snr(self, t):
        B = self._integrated_beta(t)
        with np.errstate(divide="ignore"):
            lam = -B - np.log(-np.expm1(-B))
            betas = self._tiny_linear_betas()
            if betas is not None:
                tiny = B < _TINY
                if np.any(tiny):  # -log B, from log t and the mean rate (VP._log_snr)
                    t = np.asarray(t, dtype=np.float64)
                    lam = np.where(tiny, -(np.log(t) + log_linear_mean_rate(t, *betas)), lam)
        return lam

    def _time_of_log_snr(self, lam):
        B = softplus(-np.asarray(lam, dtype=np.float64))
        t = self._inverse_integrated_beta(B)
        betas = self._tiny_linear_betas()
        if betas is not None:
            tiny = B < _TINY
            if np.any(tiny):  # B = e^{-lam} there, kept as its log (VP._time_of_log_snr)
                t = np.where(tiny, time_of_tiny_linear_integrated_beta(-np.asarray(lam, dtype=np.float64), *betas), t)
        return t

    def prior(self, n, d, rng, dtype=np.float64):
        """Draw n points from the stationary law N(0, I_d) (the reverse process's start)."""
        n = check_count(n, "n")
        d = check_count(d, "d")
        with fits_in_memory("n * d", f"{n} x {d}", n * d):
            return check_rng(rng).standard_normal((n, d), dtype=check_float_dtype(dtype))

    def time_of(self, alpha):
        """Inverse schedule: the time t at which alpha_t equals alpha in (0, 1].

        Converts between processes: the OU time with the same marginal as VP time s is
        OU().time_of(VP().alpha(s)).
        """
        a = check_real_array(alpha, "alpha")
        if np.any(a <= 0) or np.any(a > 1):
            bad = a[(a <= 0) | (a > 1)] if a.ndim else a
            raise ValueError(f"alpha must lie in (0, 1] (a signal scale alpha_t of {self!r}), "
                             f"got {float(np.ravel(bad)[0])!r}")
        # an alpha below alpha(t_max) by a rounding (1e-12 of it, as time_of_log_snr allows; the
        # correctly rounded alpha_1 of VP is an ulp below VP().alpha(1)) is alpha(t_max)
        if np.isfinite(self.t_max) and np.any(a < self.alpha(self.t_max) * (1.0 - 1e-12)):
            raise ValueError(f"alpha is below alpha(t_max) = {float(self.alpha(self.t_max))!r} of {self!r}, "
                             f"got min {float(np.min(a))!r}: alpha must be >= alpha(t_max) (no time of the process "
                             "has a smaller alpha)")
        # the inverse may round a hair past t_max at alpha(t_max) itself
        t = np.minimum(self._inverse_integrated_beta(-2.0 * np.log(a)), self.t_max)
        return self._out(t)


@dataclass(frozen=True)
class OU(VariancePreserving):
    """Ornstein–Uhlenbeck process dX = -X dt + sqrt(2) dW (Cole & Lu's forward process).

    alpha_t = exp(-t), sigma_t^2 = -expm1(-2t), beta = 2, defined for all t >= 0.
    """

    def _beta(self, t):
        return np.full(np.shape(t), 2.0)

    def _integrated_beta(self, t):
        # B = inf past t ~ 9e307 is the value the coefficients need (alpha_t = 0, sigma_t = 1),
        # not an overflow to warn of
        with np.errstate(over="ignore"):
            return 2.0 * t

    def _inverse_integrated_beta(self, B):
        return 0.5 * B

    def _integral_between(self, t_hi, t_lo):
        return 2.0 * (t_hi - t_lo)

    def to_dict(self):
        return {"name": "OU"}


@dataclass(frozen=True)
class VP(VariancePreserving):
    """Variance-preserving SDE of Song et al. (2021), t in [0, 1].

    beta(t) = beta_min + t (beta_max - beta_min),
    B(t) = beta_min t + t^2 (beta_max - beta_min) / 2.
    VP(2, 2) is OU restricted to [0, 1]. With beta_min = 0, sigma_t ~ t sqrt(beta_max / 2),
    lambda_t and their inverse keep full relative precision below t ~ 1e-154, where B(t)
    itself leaves float64's normal range, and sigma'(0) = sqrt(beta_max / 2).

    Parameters
    ----------
    beta_min, beta_max : float
        0 <= beta_min <= beta_max, beta_max > 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_max = 1.0

    def __post_init__(self):
        check_linear_betas(self)

    def _beta(self, t):
        return linear_beta(t, self.beta_min, self.beta_max)

    def _integrated_beta(self, t):
        return linear_integrated_beta(t, self.beta_min, self.beta_max)

    def _integral_between(self, t_hi, t_lo):
        return linear_integral_between(t_hi, t_lo, self.beta_min, self.beta_max)

    def _inverse_integrated_beta(self, B):
        return inverse_linear_integrated_beta(B, self.beta_min, self.beta_max)

    # beta_min = 0 (or tiny): B(t) = t (beta_min + t (beta_max - beta_min) / 2) leaves float64's
    # normal range below t ~ 1e-154 while sigma_t ~ t sqrt(beta_max / 2) and lambda_t do not: there
    # (B < tiny, where -expm1(-B) = B) they come from t and the mean rate B / t. VP(0, 20) had
    # sigma(1e-200) = 0 for 3.2e-200, log_snr = inf, time_of_log_snr(1381.6) refused as a time
    # that underflows (t = 3.2e-301), and d_sigma(0) (= sqrt(10)) refused as an overflow (0 / 0).
    # Elsewhere the same bits.

    def _sigma(self, t):
        B = self._integrated_beta(t)
        sigma = np.sqrt(-np.expm1(-B))
        tiny = B < _TINY
        if np.any(tiny):
            t = np.asarray(t, dtype=np.float64)
            half = 0.5 * (self.beta_max - self.beta_min)
            rate = self.beta_min + t * half
            with np.errstate(divide="ignore", invalid="ignore"):
                # a mean rate itself below the normal range (t half subnormal) keeps few digits:
                # sqrt(t rate) = t sqrt(half + beta_min / t) there (VP(0, 1e-3).sigma(1e-306) was 6.9 ulp off)
                low = np.where(t > 0, t * np.sqrt(half + self.beta_min / np.where(t > 0, t, 1.0)), 0.0)
                sigma = np.where(tiny, np.where(rate < _TINY, low, np.sqrt(t) * np.sqrt(rate)), sigma)
        return sigma

    def _at_zero(self, value, t):
        """sigma' = beta alpha^2 / (2 sigma) or W = beta alpha / (2 sigma) where beta_min = 0 and B(t)
        is below float64's normal range: sqrt(beta_max / 2) to rounding (sigma = t sqrt(beta_max / 2),
        beta = t beta_max, alpha = 1 there). At t = 0 the formula is 0 / 0; at subnormal t its
        beta = t beta_max keeps few digits (d_sigma(1e-318) was 5e-7 off, d_sigma(5e-323) 1.2%).
        With beta_min > 0, +inf at t = 0 (sigma_0 = 0)."""
        if self.beta_min == 0:
            value = np.where(self._integrated_beta(t) < _TINY, np.sqrt(0.5 * self.beta_max), value)
        else:  # beta_min / (2 sigma_0) = +inf, where a subnormal beta_min made it 0 / 0 (0.5 * 5e-324 = 0)
            value = np.where(np.asarray(t) == 0, np.inf, value)
        return value

    def _d_sigma(self, t):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._at_zero(super()._d_sigma(t), t)

    def _w(self, t):
        with np.errstate(divide="ignore", invalid="ignore"):
            return self._at_zero(super()._w(t), t)

    def _log_snr(self, t):
        B = self._integrated_beta(t)
        with np.errstate(divide="ignore"):
            lam = -B - np.log(-np.expm1(-B))
            tiny = B < _TINY
            if np.any(tiny):  # -log B, from log t and the mean rate
                t = np.asarray(t, dtype=np.float64)
                lam = np.where(tiny, -(np.log(t) + log_linear_mean_rate(t, self.beta_min, self.beta_max)), lam)
        return lam

    def _time_of_log_snr(self, lam):
        B = softplus(-np.asarray(lam, dtype=np.float64))
        t = self._inverse_integrated_beta(B)
        tiny = B < _TINY
        if np.any(tiny):  # B = e^{-lam} (softplus(-lam) = log1p(e^{-lam}) is e^{-lam} there)
            t = np.where(tiny, time_of_tiny_linear_integrated_beta(-np.asarray(lam, dtype=np.float64),
                                                                  self.beta_min, self.beta_max), t)
        return t

    def to_dict(self):
        return {"name": "VP", "beta_min": self.beta_min, "beta_max": self.beta_max}


_TINY = np.finfo(np.float64).tiny  # below it B(t) is subnormal or 0: its digits are lost


def log_linear_mean_rate(t, beta_min, beta_max):
    """log(B(t) / t) = log(beta_min + t (beta_max - beta_min) / 2) for a linear beta, float64 array.

    Where the mean rate itself is below float64's normal range (beta_min = 0 and t subnormal:
    VP(0, 1).log_snr(5e-324) was inf for 1489.57) from the logs of its two terms."""
    t = np.asarray(t, dtype=np.float64)
    half = 0.5 * (np.float64(beta_max) - np.float64(beta_min))
    rate = beta_min + t * half
    with np.errstate(divide="ignore"):
        out = np.log(rate)
        small = rate < _TINY
        if np.any(small):
            out = np.where(small, np.logaddexp(np.log(np.float64(beta_min)), np.log(t) + np.log(half)), out)
    return out


def time_of_tiny_linear_integrated_beta(log_B, beta_min, beta_max):
    """t with t (beta_min + t (beta_max - beta_min) / 2) = B = e^{log_B}, for B below float64's
    normal range (B itself underflows or keeps few digits; t need not): from log B, float64 array.

    2 B / (beta_min + sqrt(beta_min^2 + 2 db B)) (inverse_linear_integrated_beta) with B only as
    h^2, h = e^{log_B / 2}: (2 h / den) h, and sqrt(2 B / db) = h sqrt(2 / db) where beta_min = 0.
    log_B / 2 is exact, so h keeps its digits; exp of a rounded sum (log_B + log(2 / db)) / 2
    lost eps |log_B| / 2 (5.2e-14 of t at lambda = 1388 on VP(0, 20)). Where h itself is
    subnormal (log_B < -1416) but sqrt(2 / db) > 1 lifts t above it (beta_max < 2), t =
    (r sqrt(2 / db)) r with r = e^{log_B / 4}, normal: h * sqrt(2 / db) carried h's lost digits
    (12 ulps of t = 1e-310 on VP(0, 1e-3)). 0 where t itself underflows (log_B = -inf: t = 0).
    """
    log_B = np.asarray(log_B, dtype=np.float64)
    db = np.float64(beta_max) - np.float64(beta_min)
    # the callers take its rows where B is tiny only: the others may overflow (inf / inf) unsaid
    with np.errstate(under="ignore", divide="ignore", over="ignore", invalid="ignore"):
        h = np.exp(0.5 * log_B)
        if beta_min == 0:
            c = np.sqrt(2.0 / db)
            r = np.exp(0.25 * log_B)  # log_B / 4 exact; normal down to log_B = -2830
            return np.where(h < _TINY, (r * c) * r, h * c)
        den = beta_min + np.hypot(beta_min, np.sqrt(2.0 * db) * h)
        # where h is subnormal (a subnormal beta_min lifts t above it): through r = e^{log_B / 4}, with
        # den / r = beta_min / r + hypot(beta_min / r, sqrt(2 db) r) normal, t = ((2 r / (den / r)) r) r
        r = np.exp(0.25 * log_B)
        m = beta_min / r
        den_r = m + np.hypot(m, np.sqrt(2.0 * db) * r)
        return np.where(h < _TINY, ((2.0 * r / den_r) * r) * r, (2.0 * h / den) * h)


def check_linear_betas(process):
    """Validate (and store as floats) beta_min, beta_max of a linear-beta process."""
    for name in ("beta_min", "beta_max"):
        object.__setattr__(process, name, check_real(getattr(process, name), name, low=0.0))
    if process.beta_max < process.beta_min:
        raise ValueError(
            f"beta_max must be >= beta_min, got beta_min={process.beta_min}, beta_max={process.beta_max}"
        )
    if process.beta_max == 0:
        raise ValueError("beta_max must be > 0 (beta = 0 never adds noise)")


def linear_beta(t, beta_min, beta_max):
    """beta(t) = beta_min + t (beta_max - beta_min) (VP and sub-VP, Song et al. 2021)."""
    return beta_min + t * (beta_max - beta_min)


def linear_integrated_beta(t, beta_min, beta_max):
    """B(t) = int_0^t beta = t (beta_min + t (beta_max - beta_min) / 2)."""
    return t * (beta_min + 0.5 * t * (beta_max - beta_min))


def linear_integral_between(t_hi, t_lo, beta_min, beta_max):
    """int_{t_lo}^{t_hi} beta for the linear beta: the midpoint rule, exact here."""
    return (t_hi - t_lo) * (beta_min + 0.5 * (t_hi + t_lo) * (beta_max - beta_min))


def inverse_linear_integrated_beta(B, beta_min, beta_max):
    """t with beta_min t + t^2 (beta_max - beta_min) / 2 = B, B >= 0 (float64 array)."""
    # Root of (db/2) t^2 + beta_min t - B = 0 in the form without cancellation.
    beta_min, db = np.float64(beta_min), np.float64(beta_max) - np.float64(beta_min)  # inf, not OverflowError
    with np.errstate(over="ignore"):
        denominator = beta_min + np.sqrt(beta_min**2 + 2.0 * db * B)
    if not np.all(np.isfinite(denominator)):
        raise ValueError(f"beta_min = {float(beta_min):g} and beta_max = {float(beta_max):g} are too large to invert "
                         "the schedule in float64 (beta_min^2 + 2 (beta_max - beta_min) B(t) overflows)")
    return np.where(B > 0, 2.0 * B / np.where(B > 0, denominator, 1.0), 0.0)


@dataclass(frozen=True)
class VPCosine(VariancePreserving):
    """Cosine schedule of Nichol & Dhariwal (2021, "Improved DDPM", eq. 17) in continuous time.

    alpha_t = cos(u_t) / cos(u_0),  u_t = (pi/2) (t + s) / (1 + s),  t in [0, t_max],
    so alpha_t^2 is their alpha-bar(t) and beta(t) = (pi / (1 + s)) tan(u_t).
    cos(u_t) is evaluated as sin((pi/2)(1 - t)/(1 + s)) (exact near t = 1) and
    cos(u_t) - cos(u_0) as -2 sin((u_t + u_0)/2) sin((u_t - u_0)/2) (exact near t = 0).

    Parameters
    ----------
    s : float
        Offset, default 0.008 (theirs), s > 0.
    t_max : float
        Horizon, 0 < t_max < 1, default 1 - 1e-5 (alpha_t_max ~ 1.6e-5, lambda ~ -22).
        t = 1 itself is excluded: there alpha = 0 and lambda, beta are infinite.
    """

    s: float = 0.008
    _times_by_g2 = True
    t_max: float = 1.0 - 1e-5

    def __post_init__(self):
        object.__setattr__(self, "s", check_real(self.s, "s", low=0.0, low_open=True))
        object.__setattr__(self, "t_max", check_real(self.t_max, "t_max", low=0.0, high=1.0,
                                                     low_open=True, high_open=True))

    @property
    def _k(self):  # du/dt
        return 0.5 * np.pi / (1.0 + self.s)

    def _cos_u(self, t):
        return np.sin(self._k * (1.0 - t))

    def _log_cos_ratio(self, t_hi, t_lo):
        """log(cos u_hi / cos u_lo) <= 0 for t_hi >= t_lo, to full relative precision."""
        k = self._k
        c_lo, c_hi = self._cos_u(t_lo), self._cos_u(t_hi)
        diff = -2.0 * np.sin(k * (0.5 * (t_hi + t_lo) + self.s)) * np.sin(0.5 * k * (t_hi - t_lo))
        with np.errstate(divide="ignore"):
            direct = np.log(c_hi) - np.log(c_lo)  # no cancellation once the ratio is small
        return np.where(c_hi < 0.5 * c_lo, direct, np.log1p(diff / c_lo))

    def _integrated_beta(self, t):
        return -2.0 * self._log_cos_ratio(t, np.zeros_like(t))

    def _integral_between(self, t_hi, t_lo):
        return -2.0 * self._log_cos_ratio(t_hi, t_lo)

    def _beta(self, t):
        return 2.0 * self._k * np.sin(self._k * (t + self.s)) / self._cos_u(t)

    def _tiny_linear_betas(self):
        # B(t) = -2 log(cos u_t / cos u_0) = beta(0) t + beta'(0) t^2 / 2 + O(t^3), beta(0) = 2 k tan(k s),
        # beta'(0) = 2 k^2 / cos^2(k s): a linear beta's B, to a relative O(t) below 1e-150, at the t where B
        # leaves float64's normal range (t below 1e-306 for s = 0.008, 1e-154 as s -> 0)
        k = self._k
        b0 = 2.0 * k * np.tan(k * self.s)
        return b0, b0 + 2.0 * (k / np.cos(k * self.s)) ** 2

    def _inverse_integrated_beta(self, B):
        k, s = self._k, self.s
        c0, u0 = np.cos(k * s), k * s
        sigma2, alpha = -np.expm1(-B), np.exp(-0.5 * B)
        # near t = 0: sin(delta) sin(2 u0 + delta) = c0^2 sigma^2 with delta = u - u0 = k t,
        # a quadratic in tan(delta) solved in the form without cancellation
        C = c0**2 * sigma2
        A, Bq = np.cos(2 * u0) - C, np.sin(2 * u0)
        with np.errstate(invalid="ignore"):  # the branch not taken may take a root of < 0
            small = np.arctan(2.0 * C / (Bq + np.sqrt(Bq**2 + 4.0 * A * C))) / k
        # far end: pi/2 - u = k (1 - t) = arcsin(alpha c0)
        large = 1.0 - np.arcsin(np.minimum(alpha * c0, 1.0)) / k
        return np.where(sigma2 <= 0.5, small, large)

    def to_dict(self):
        return {"name": "VPCosine", "s": self.s, "t_max": self.t_max}
