"""Forward noising processes: Ornstein–Uhlenbeck (the paper's) and variance-preserving.

Both are linear SDEs with the standard Gaussian N(0, I) stationary,

    dX_t = -1/2 beta(t) X_t dt + sqrt(beta(t)) dW_t,

whose transition from X_0 is Gaussian:

    X_t | X_0 = alpha_t X_0 + sigma_t Z,   Z ~ N(0, I),
    alpha_t = exp(-1/2 B(t)),   sigma_t^2 = 1 - alpha_t^2 = -expm1(-B(t)),
    B(t) = int_0^t beta(s) ds.

OU is beta = 2 (dX = -X dt + sqrt(2) dW, alpha_t = e^{-t}); VP is Song et al. (2021),
beta(t) = beta_min + t (beta_max - beta_min) on t in [0, 1]. sigma_t is computed from
expm1 so that it keeps full relative precision as t -> 0 (where 1 - alpha_t^2 would
cancel).
"""

from dataclasses import dataclass

import numpy as np

from ._validation import check_count, check_float_dtype, check_points, check_real, check_real_array, check_rng, check_times

__all__ = ["OU", "VP"]


class _LinearProcess:
    """Shared marginal formulas; subclasses define beta(t), B(t) and t_max."""

    t_max = np.inf

    def _times(self, t, n=None, name="t"):
        return check_times(t, n=n, T=None if np.isinf(self.t_max) else self.t_max, name=name)

    @staticmethod
    def _out(arr):
        return arr[()] if arr.ndim == 0 else arr

    def integrated_beta(self, t):
        """B(t) = int_0^t beta(s) ds; t scalar or shape (n,); float64, same shape."""
        return self._out(self._integrated_beta(self._times(t)))

    def integrated_beta_between(self, t_hi, t_lo):
        """int_{t_lo}^{t_hi} beta(s) ds without the cancellation of B(t_hi) - B(t_lo).

        t_hi, t_lo scalars or arrays of one shape, t_hi >= t_lo; float64. The step
        integrals of a reverse-time sampler keep full relative precision on fine grids.
        """
        t_hi, t_lo = self._times(t_hi, name="t_hi"), self._times(t_lo, name="t_lo")
        if t_hi.shape != t_lo.shape:
            raise ValueError(f"t_hi and t_lo must have one shape, got {t_hi.shape} and {t_lo.shape}")
        if np.any(t_hi < t_lo):
            raise ValueError("t_hi must be >= t_lo (the integral runs from t_lo up to t_hi)")
        return self._out(np.asarray(self._integral_between(t_hi, t_lo)))

    def beta(self, t):
        """Noise rate beta(t); t scalar or shape (n,); float64, same shape."""
        return self._out(self._beta(self._times(t)))

    def alpha(self, t):
        """Signal scale alpha_t = exp(-B(t) / 2); t scalar or shape (n,)."""
        return self._out(np.exp(-0.5 * self._integrated_beta(self._times(t))))

    def sigma(self, t):
        """Noise scale sigma_t = sqrt(-expm1(-B(t))), accurate as t -> 0."""
        return self._out(np.sqrt(-np.expm1(-self._integrated_beta(self._times(t)))))

    def _coefficients(self, t, n):
        """(alpha_t, sigma_t^2) as float64 arrays of length n, t validated for n rows."""
        B = np.broadcast_to(self._integrated_beta(self._times(t, n=n)), (n,))
        return np.exp(-0.5 * B), -np.expm1(-B)

    def marginal(self, t):
        """(alpha_t, sigma_t) in one call; t scalar or shape (n,)."""
        B = self._integrated_beta(self._times(t))
        return self._out(np.exp(-0.5 * B)), self._out(np.sqrt(-np.expm1(-B)))

    def perturb(self, x0, t, rng):
        """Draw X_t given X_0: xt = alpha_t x0 + sigma_t z, z ~ N(0, I).

        Parameters
        ----------
        x0 : ndarray, shape (n, d), float64 or float32
        t : float or ndarray of shape (n,)
            One time for all rows or one per row, in [0, t_max].
        rng : numpy.random.Generator

        Returns
        -------
        xt, z : ndarray, shape (n, d), dtype of x0
            The perturbed points and the standard normal noise that made them
            (the denoising score matching target is -z / sigma_t).
        """
        x0 = check_points(x0, "x0")
        rng = check_rng(rng)
        alpha, sigma = self.marginal(self._times(t, n=x0.shape[0]))
        dt = x0.dtype
        alpha = np.asarray(alpha, dtype=dt)
        sigma = np.asarray(sigma, dtype=dt)
        if alpha.ndim == 1:
            alpha, sigma = alpha[:, None], sigma[:, None]
        z = rng.standard_normal(x0.shape, dtype=dt)
        return alpha * x0 + sigma * z, z

    def prior(self, n, d, rng, dtype=np.float64):
        """Draw n points from the stationary law N(0, I_d) (the reverse process's start)."""
        n = check_count(n, "n")
        d = check_count(d, "d")
        return check_rng(rng).standard_normal((n, d), dtype=check_float_dtype(dtype))

    def time_of(self, alpha):
        """Inverse schedule: the time t at which alpha_t equals alpha in (0, 1].

        Converts between processes: the OU time with the same marginal as VP time s is
        OU().time_of(VP().alpha(s)).
        """
        a = check_real_array(alpha, "alpha")
        if np.any(a <= 0) or np.any(a > 1):
            raise ValueError("alpha must lie in (0, 1]")
        if np.isfinite(self.t_max) and np.any(a < self.alpha(self.t_max)):
            raise ValueError(f"alpha is below alpha(t_max) = {self.alpha(self.t_max)!r}")
        # the inverse may round a hair past t_max at alpha(t_max) itself
        t = np.minimum(self._inverse_integrated_beta(-2.0 * np.log(a)), self.t_max)
        return self._out(t)


@dataclass(frozen=True)
class OU(_LinearProcess):
    """Ornstein–Uhlenbeck process dX = -X dt + sqrt(2) dW (Cole & Lu's forward process).

    alpha_t = exp(-t), sigma_t^2 = 1 - exp(-2t), beta = 2, defined for all t >= 0.
    """

    def _beta(self, t):
        return np.full(np.shape(t), 2.0)

    def _integrated_beta(self, t):
        return 2.0 * t

    def _inverse_integrated_beta(self, B):
        return 0.5 * B

    def _integral_between(self, t_hi, t_lo):
        return 2.0 * (t_hi - t_lo)

    def to_dict(self):
        return {"name": "OU"}


@dataclass(frozen=True)
class VP(_LinearProcess):
    """Variance-preserving SDE of Song et al. (2021), t in [0, 1].

    beta(t) = beta_min + t (beta_max - beta_min),
    B(t) = beta_min t + t^2 (beta_max - beta_min) / 2.
    VP(2, 2) is OU restricted to [0, 1].

    Parameters
    ----------
    beta_min, beta_max : float
        0 <= beta_min <= beta_max, beta_max > 0.
    """

    beta_min: float = 0.1
    beta_max: float = 20.0
    t_max = 1.0

    def __post_init__(self):
        for name in ("beta_min", "beta_max"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, low=0.0))
        if self.beta_max < self.beta_min:
            raise ValueError(
                f"beta_max must be >= beta_min, got beta_min={self.beta_min}, beta_max={self.beta_max}"
            )
        if self.beta_max == 0:
            raise ValueError("beta_max must be > 0 (beta = 0 never adds noise)")

    def _beta(self, t):
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def _integrated_beta(self, t):
        return t * (self.beta_min + 0.5 * t * (self.beta_max - self.beta_min))

    def _integral_between(self, t_hi, t_lo):
        # the midpoint rule is exact for the linear beta
        return (t_hi - t_lo) * (self.beta_min + 0.5 * (t_hi + t_lo) * (self.beta_max - self.beta_min))

    def _inverse_integrated_beta(self, B):
        # Root of (db/2) t^2 + beta_min t - B = 0 in the form without cancellation.
        db = self.beta_max - self.beta_min
        denominator = self.beta_min + np.sqrt(self.beta_min**2 + 2.0 * db * B)
        return np.where(B > 0, 2.0 * B / np.where(B > 0, denominator, 1.0), 0.0)

    def to_dict(self):
        return {"name": "VP", "beta_min": self.beta_min, "beta_max": self.beta_max}


def check_process(process, name="process"):
    """Return process if it is an OU or VP instance, else raise."""
    if not isinstance(process, _LinearProcess):
        raise ValueError(f"{name} must be sgm_ref.OU() or sgm_ref.VP(...), got {process!r}")
    return process


def process_from_dict(spec):
    """Rebuild a process from its to_dict() form (used by model files)."""
    if not isinstance(spec, dict) or spec.get("name") not in ("OU", "VP"):
        raise ValueError(f"process must be a dict with name 'OU' or 'VP', got {spec!r}")
    if spec["name"] == "OU":
        return OU()
    if "beta_min" not in spec or "beta_max" not in spec:
        raise ValueError(f"a VP process needs beta_min and beta_max, got {spec!r}")
    return VP(spec["beta_min"], spec["beta_max"])
