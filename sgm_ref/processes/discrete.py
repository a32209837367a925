"""Discrete DDPM schedules as diffusers defines them, embedded in continuous time.

Ho et al. (2020) noise N steps with betas beta_0..beta_{N-1}; timestep i has
alphas_cumprod[i] = prod_{j <= i} (1 - beta_j). diffusers (DDPMScheduler and friends)
defines the betas by `beta_schedule`:

    linear             beta_i = linspace(beta_start, beta_end, N)[i]
    scaled_linear      beta_i = linspace(sqrt(beta_start), sqrt(beta_end), N)[i]^2
    squaredcos_cap_v2  beta_i = min(1 - abar((i+1)/N) / abar(i/N), 0.999),
                       abar(t) = cos^2((t + 0.008) / 1.008 * pi/2)   (Nichol & Dhariwal 2021)

Continuous time. Timestep i is time t_i = (i + 1) / N, and between the knots the process
is the VP SDE whose beta is constant on each step: beta(t) = -N log(1 - beta_j) for
t in [j/N, (j+1)/N). Then alpha_{t_i}^2 = alphas_cumprod[i] and the SDE's transition over
one step is exactly DDPM's q(x_i | x_{i-1}) = N(sqrt(1 - beta_i) x_{i-1}, beta_i I); t = 0
is the data. timestep_of_time is the inverse map, N t - 1, fractional between knots.

Which beta applies where. With r_j = -log(1 - beta_j), beta(t) = g^2(t) = -2 f(t) = N r_j
on [j/N, (j+1)/N): right-continuous, so at a knot it is already the next step's. Timestep
i's own time t_i = (i + 1) / N is the knot that opens step i + 1, and

    g2(t_i) = -2 f(t_i) = N r_{i+1}   (i < N - 1; the last, t = 1, keeps N r_{N-1})
    g2(t_i - 0)          = N r_i      (the limit from below: timestep i's own beta)

The step of t is floor(N t) computed in float64: at N = 1000 every time_of_timestep(i) is
its knot exactly (N t_i = i + 1), but for some N the rounded (i + 1) / N times N falls an
ulp below i + 1 and g^2 there is N r_i (N = 100: timesteps 28, 56 and 57; N = 999: 5 of
them). E.g. DDPM("linear") at timestep 0: g2 / N = -log(1 - beta_1) = 1.199e-4, not
-log(1 - beta_0) = 1.000e-4; "squaredcos_cap_v2" at timestep 998: 6.908 (the capped
beta_999 = 0.999), not 1.386 (tests/test_peers_schedules.py pins this against diffusers'
betas). Nothing integrated sees the difference: alpha, sigma, integrated_beta_between and
every transition over [t_{i-1}, t_i] integrate N r_i exactly, so sgm_ref's samplers and the
replays ddpm_ancestral, ddim and reverse_diffusion are DDPM's own steps (sgm_ref's
probability_flow reads beta at a step's ends from inside the step: _beta_inside). Only a
scheme that reads f or g^2 at a point does: textbook Euler–Maruyama (sgm_ref.replays.euler_maruyama,
score_sde's predictor) on a timestep grid freezes f and g^2 at the step's upper end t_i,
where they are beta_{i+1}'s, the rate of the step just above the interval it crosses
(whose top step, [i/N, t_i), has beta_i). On
"squaredcos_cap_v2", Gaussian target N((1, -1), diag(0.25, 0.5)), "trailing" timesteps
then the data, the exact KL of its output law to the target is 4.0e-6 over 1000 steps
(2.9e-6 with the left-continuous beta, times a rounding below the knots) and 1.13e-4
over 100 steps (1.02e-4): an O(1/N) difference of the scheme, not an error of the process.
"""

import math
from dataclasses import dataclass

import numpy as np

from .._validation import check_count, check_real, fits_in_memory
from .variance_preserving import VariancePreserving

SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
_MAX_BETA = 0.999  # diffusers' betas_for_alpha_bar cap (Nichol & Dhariwal's clipping)


@dataclass(frozen=True)
class DDPM(VariancePreserving):
    """A diffusers DDPM schedule as a variance-preserving process on t in [0, 1].

    Parameters
    ----------
    beta_schedule : {"linear", "scaled_linear", "squaredcos_cap_v2"}
    beta_start, beta_end : float
        0 < beta_start <= beta_end < 1 (unused by squaredcos_cap_v2); diffusers' defaults.
    num_train_timesteps : int
        N >= 2.

    Notes
    -----
    alphas_cumprod() is exp(cumsum(log1p(-beta))) in float64 from float64 betas;
    diffusers_alphas_cumprod() reproduces diffusers' own float32 constants bit for bit.

    f(t) = -beta(t) / 2 and g^2(t) = beta(t) = -N log(1 - beta_j) for t in [j/N, (j+1)/N),
    j = floor(N t) (t = 1 in the last step): right-continuous, so at timestep i's time
    (i + 1) / N they hold beta_{i+1}'s rate, and beta_i's only just below it (module
    docstring: what that does to Euler–Maruyama on a timestep grid).
    """

    beta_schedule: str = "linear"
    beta_start: float = 0.0001
    beta_end: float = 0.02
    num_train_timesteps: int = 1000
    t_max = 1.0

    def __post_init__(self):
        if self.beta_schedule not in SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {SCHEDULES}, got {self.beta_schedule!r}")
        for name in ("beta_start", "beta_end"):
            object.__setattr__(self, name, check_real(getattr(self, name), name, low=0.0, high=1.0,
                                                      low_open=True, high_open=True))
        if self.beta_end < self.beta_start:
            raise ValueError(f"beta_end must be >= beta_start, got {self.beta_start}, {self.beta_end}")
        object.__setattr__(self, "num_train_timesteps", check_count(self.num_train_timesteps,
                                                                    "num_train_timesteps", minimum=2))
        # the schedule lives in ~8 float64 arrays of N + 1 at its peak: a num_train_timesteps beyond
        # memory is named (it was a MemoryError from np.linspace)
        N = self.num_train_timesteps
        with fits_in_memory("num_train_timesteps", N, N + 1, per_item=64):
            # rates -log(1 - beta_j) and their cumulative sums at the knots t = j/N, j = 0..N
            betas = self.betas()
            if not np.all(betas < 1.0):  # scaled_linear squares sqrt(beta_end), which may round to 1
                raise ValueError(f"beta_end = {self.beta_end!r} is too close to 1: the {self.beta_schedule} schedule's "
                                 "last beta rounds to 1 in float64 (alpha would be 0); use a smaller beta_end")
            rates = -np.log1p(-betas)
            object.__setattr__(self, "_rates", rates)
            knots = np.concatenate([[0.0], np.cumsum(rates)])
            object.__setattr__(self, "_knots", knots)
            # what each knot's rounding left out, summed: knots + _knots_lo is the cumulative sum to
            # about an ulp. A step across a few knots near t = 1 takes the difference of two knots
            # ~10 in size, which would otherwise carry their accumulated rounding (2e-14 of the
            # step at N = 1000, 2e-12 at N = 100000). Each addition's error is exact (TwoSum on
            # the knots as rounded, plus their difference from that sum if cumsum rounded otherwise)
            errors = _addition_errors(knots[:-1], rates, knots[1:])
            object.__setattr__(self, "_knots_lo", np.concatenate([[0.0], np.cumsum(errors)]))
        # squaredcos_cap_v2's last beta is capped at 0.999: g^2 = N rate jumps to ~6900 on the
        # last step (N = 1000) and that step carries a third of a g^2-weighted integral. The
        # relative second moment of g^2 under uniform times, N sum r^2 / (sum r)^2, is the
        # variance it adds: at most 2.3 for linear schedules (beta_end up to 0.99), 4.5 for
        # the capped cosine at N = 10, 131 at N = 1000. Log-uniform times (the integral's
        # default) put few draws near t = 1, so a step there with a rate above 1 (beta > 0.63,
        # alpha falling by e^-1/2 in one step) is heavy under them even below that moment
        object.__setattr__(self, "_times_by_g2", bool(self.num_train_timesteps * np.sum(rates**2)
                                                      > 3.0 * self._knots[-1] ** 2 or rates.max() > 1.0))

    # -- the schedule's constants --------------------------------------------------------

    def betas(self):
        """beta_0..beta_{N-1} in float64, shape (N,)."""
        N = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return np.linspace(self.beta_start, self.beta_end, N)
        if self.beta_schedule == "scaled_linear":
            return np.linspace(self.beta_start**0.5, self.beta_end**0.5, N) ** 2
        # 1 - cos^2(u2)/cos^2(u1) = sin(u2 - u1) sin(u2 + u1) / cos^2(u1), no cancellation
        # (u2 - u1 and u2 + u1 formed directly, not as differences of rounded u's). With
        # 1.008 k = pi/2, cos(u1) = sin(pi/2 - u1) = sin(k (N - i) / N), and sin(u2 + u1) is
        # sin(pi - u2 - u1) = sin(k (2N - 2i - 1) / N) where u2 + u1 > pi/2: np.cos of the
        # rounded u1 near pi/2 and np.sin of u2 + u1 near pi lost digits (beta_995 9.4e-14 off
        # at N = 1000, 4.2e-13 at N = 4000); each sine now takes an argument in [0, pi/2]
        k = 0.5 * np.pi / 1.008
        i = np.arange(N)
        cos_u1 = np.sin(k * ((N - i) / N))
        s_near, s_far = ((2 * i + 1) / N + 0.016) * k, k * ((2 * (N - i) - 1) / N)
        sin_sum = np.sin(np.where(s_near <= s_far, s_near, s_far))
        return np.minimum(np.sin(k / N) * sin_sum / cos_u1**2, _MAX_BETA)

    def alphas_cumprod(self):
        """prod_{j <= i} (1 - beta_j) in float64, shape (N,) (as exp of a sum of log1p's, the
        sum carried with its rounding errors, _knots_lo: within 1e-15, exp's rounding of B ~ 10,
        where the float64 cumulative sum alone was off by up to 7e-15 at N = 1000)."""
        return np.exp(-(self._knots[1:] + self._knots_lo[1:]))

    def diffusers_betas(self):
        """diffusers' float32 betas, bit for bit (the arithmetic of DDPMScheduler.__init__).

        linear and scaled_linear come from torch.linspace(start, end, N, dtype=float32),
        whose CPU kernel computes step = float32((end - start) / (N - 1)) and the i-th entry
        as one fused multiply-add, start + step i for i < N/2 and end - step (N - 1 - i)
        after; squaredcos_cap_v2 is Python float arithmetic rounded once to float32.
        """
        N = self.num_train_timesteps
        if self.beta_schedule == "linear":
            return _torch_linspace_float32(self.beta_start, self.beta_end, N)
        if self.beta_schedule == "scaled_linear":
            root = _torch_linspace_float32(self.beta_start**0.5, self.beta_end**0.5, N)
            return root * root

        def abar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

        return np.array([min(1 - abar((i + 1) / N) / abar(i / N), _MAX_BETA) for i in range(N)],
                        dtype=np.float32)

    def diffusers_alphas_cumprod(self):
        """diffusers' float32 alphas_cumprod, bit for bit.

        alphas = 1 - betas in float32; torch's CPU cumprod multiplies in float64 (its
        accumulation type for float32) and rounds each partial product to float32.
        """
        alphas = np.float32(1.0) - self.diffusers_betas()
        return np.cumprod(alphas.astype(np.float64)).astype(np.float32)

    # -- discrete <-> continuous time ----------------------------------------------------

    def time_of_timestep(self, i):
        """t_i = (i + 1) / N for integer timesteps 0 <= i < N (scalar or array)."""
        arr = np.asarray(i)

        def shown(bad):  # the first offending entry, not a repr of the whole array (1000 numbers)
            if arr.ndim == 0:
                return repr(arr.item())
            k = np.unravel_index(int(np.argmax(bad)), arr.shape)
            return f"timestep[{', '.join(map(str, k))}] = {arr[k].item()!r} (of {arr.size})"
        if arr.dtype.kind == "f":
            bad = ~np.isfinite(arr) | (arr != np.round(arr))
            if np.any(bad):
                raise ValueError(f"timestep must be an integer, got {shown(bad)}; fractional timesteps (diffusers' "
                                 "sigma-based schedulers, e.g. EulerDiscreteScheduler) step over sigmas: use EDM() "
                                 "with the scheduler's sigmas as times, or the time (i + 1) / N of a fractional i directly")
        elif arr.dtype.kind not in "iu":
            raise ValueError(f"timestep must be an integer, got {i!r} of dtype {arr.dtype}")
        bad = (arr < 0) | (arr >= self.num_train_timesteps)
        if np.any(bad):
            raise ValueError(f"timestep must lie in 0..{self.num_train_timesteps - 1}, got {shown(bad)}")
        return self._out((arr.astype(np.float64) + 1.0) / self.num_train_timesteps)

    def _times(self, t, n=None, name="t"):
        try:
            return super()._times(t, n=n, name=name)
        except ValueError as e:
            hint = self._timestep_hint(t) if str(e).startswith(f"{name} must be <= ") else ""
            if not hint:
                raise
            raise ValueError(f"{e}; {hint}") from None

    def _timestep_hint(self, values, grid=False):
        """A pointer to time_of_timestep (timestep_grid for a grid) when every value above
        t_max = 1 is an integer timestep, at most N - 1 (diffusers' timesteps passed as
        times), else "". values: scalar or array-like of any shape."""
        try:
            arr = np.asarray(values, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            return ""
        big = arr[np.isfinite(arr) & (arr > self.t_max)]
        if big.size == 0 or np.any(big != np.round(big)) or np.any(big > self.num_train_timesteps - 1):
            return ""
        if grid:  # a grid of timesteps is timesteps throughout (but for a final 0, the data), not [3.0, 0.5]
            body = arr[:-1] if arr.size > 1 and arr[-1] == 0 else arr
            if not (np.all(np.isfinite(body)) and np.all(body == np.round(body)) and np.all(body >= 0)):
                return ""
        i = int(big.max())
        if grid:
            return (f"{i} looks like a diffusers timestep, not a time: a grid of timesteps is "
                    "sgm_ref.replays.timestep_grid(process, timesteps), times (i + 1) / N then the data t = 0 "
                    "(e.g. timestep_grid(process, ddim_timesteps(n)))")
        return (f"{i} looks like a diffusers timestep, not a time: timestep i is time (i + 1) / N, "
                f"process.time_of_timestep({i}) = {(i + 1) / self.num_train_timesteps!r}")

    def timestep_of_time(self, t):
        """N t - 1: the (fractional) timestep of time t, rounded once. At t = t_i = fl((i + 1) / N)
        it is i or an ulp or so away (i for every i at N = 1000; 27.000000000000004 at N = 100,
        i = 27): round it, as the replays and interop do, to use it as an index."""
        return self._out(self._times(t) * self.num_train_timesteps - 1.0)

    # -- the piecewise-constant beta -----------------------------------------------------

    def _step(self, t):
        """Index j = floor(N t) of the step [j/N, (j+1)/N) holding t (the last step holds t = 1).

        t (n,) float64 -> (n,) int64. A knot t = (i + 1) / N (timestep i) belongs to step
        i + 1: beta, f and g^2 there are beta_{i+1}'s (right-continuous; module docstring).
        """
        return np.minimum(np.floor(t * self.num_train_timesteps).astype(np.int64), self.num_train_timesteps - 1)

    def _beta(self, t):
        return self.num_train_timesteps * self._rates[self._step(t)]

    def _beta_inside(self, t_hi, t_lo):
        """(beta(t_hi - 0), beta(t_lo + 0)), the rates of the pieces a step [t_lo, t_hi] holds at
        its ends. A time within 1e-9 / N of a knot k / N is that knot (time_of_timestep(k - 1),
        also where N t rounds an ulp below k, and np.linspace's times, a few ulps off): it
        ends piece k - 1 from below and opens piece k from above. Any other time is inside
        piece floor(N t) on both sides. beta(t_hi) at a knot would be the piece above the
        step: on the capped cosine from T = 0.999 the cap's 6908 instead of 1386. (The sliver
        of at most 1e-9 / N between such a time and its knot is read as the knot's other
        side: 1e-9 of a timestep, against a whole step read in the piece above.)"""
        N = self.num_train_timesteps
        hi, lo = (np.asarray(t, dtype=np.float64) * N for t in (t_hi, t_lo))
        k_hi, k_lo = np.rint(hi), np.rint(lo)
        below = np.where(np.abs(hi - k_hi) <= 1e-9, k_hi - 1.0, np.floor(hi))
        above = np.where(np.abs(lo - k_lo) <= 1e-9, k_lo, np.floor(lo))
        j_hi, j_lo = (np.clip(j, 0, N - 1).astype(np.int64) for j in (below, above))
        return N * self._rates[j_hi], N * self._rates[j_lo]

    def _offset(self, t):
        """(j, t N - j) with t N - j exact to an ulp of itself (not of t N): on the last
        steps of squaredcos_cap_v2 the rate is ~7000 per unit time and the rounding of t N
        alone would cost alpha ~2e-13 of its digits. t N - j < 0 where t N rounds up to the
        knot j (t = 0.999 at N = 1000: t N = 999 - 8.9e-16): t is then in piece j - 1."""
        p, err = _two_product(np.asarray(t, dtype=np.float64), float(self.num_train_timesteps))
        j = np.minimum(np.floor(p).astype(np.int64), self.num_train_timesteps - 1)
        return j, (p - j) + err  # p - j is exact (Sterbenz)

    def _integrated_beta(self, t):
        # the knot with its summation's rounding (_knots_lo): B to an ulp, not the up to 1e-15
        # (N = 1000) or 1.6e-14 (N = 100000) of it that the float64 cumulative sum carries.
        # A t just below the knot j (frac < 0) is measured back from it at the rate of its own
        # piece j - 1 (at t = 0.999 on the capped cosine, 1.4, not the cap's 6.9: B 5e-15 off)
        j, frac = self._offset(t)
        rate = self._rates[np.where(frac < 0, np.maximum(j - 1, 0), j)]
        return self._knots[j] + (self._knots_lo[j] + frac * rate)

    def _integral_between(self, t_hi, t_lo):
        # exact for steps within one piece; across pieces, the pieces' sum, with the parts
        # t_hi N - j_hi and (j_lo + 1) - t_lo N exact to an ulp of themselves: t_lo N rounded
        # alone would cost a step that ends just below a knot its digits. A time whose t N
        # rounds to an integer is that knot exactly (the times of time_of_timestep are knots).
        N = self.num_train_timesteps
        (p_hi, e_hi), (p_lo, e_lo) = (_two_product(np.asarray(t, dtype=np.float64), float(N)) for t in (t_hi, t_lo))
        # t_lo off its knot by a rounding: inside one piece its step is measured from the knot
        # too, as across pieces (t_hi - t_lo counted the rounding, ~1e-17, twice on a grid
        # through the knot: 6e-11 of a 1e-6 step)
        lo_rounded_knot = (p_lo == np.round(p_lo)) & (e_lo != 0)
        e_hi, e_lo = (np.where(p == np.round(p), 0.0, e) for p, e in ((p_hi, e_hi), (p_lo, e_lo)))
        j_hi, j_lo = self._step(t_hi), self._step(t_lo)
        same = j_hi == j_lo
        inner = np.where(lo_rounded_knot, (p_hi - p_lo) + e_hi, (t_hi - t_lo) * N) * self._rates[j_lo]
        # p - j and (j + 1) - p are exact (Sterbenz) where they are small
        first = np.minimum(j_lo + 1, N)
        across = (self._knots[j_hi] - self._knots[first] + (self._knots_lo[j_hi] - self._knots_lo[first])
                  + ((p_hi - j_hi) + e_hi) * self._rates[j_hi] + (((j_lo + 1) - p_lo) - e_lo) * self._rates[j_lo])
        return np.where(same, inner, across)

    def _tiny_linear_betas(self):
        # B(t) = N r_0 t on the first step, where B leaves float64's normal range (t below ~1e-304):
        # DDPM("squaredcos_cap_v2").log_snr(5e-324) was inf for 753.6 (VariancePreserving._tiny_linear_betas)
        rate = self.num_train_timesteps * float(self._rates[0])
        return rate, rate

    def _inverse_integrated_beta(self, B):
        B = np.asarray(B, dtype=np.float64)
        j = np.clip(np.searchsorted(self._knots, B, side="right") - 1, 0, self.num_train_timesteps - 1)
        return (j + ((B - self._knots[j]) - self._knots_lo[j]) / self._rates[j]) / self.num_train_timesteps

    def to_dict(self):
        return {"name": "DDPM", "beta_schedule": self.beta_schedule, "beta_start": self.beta_start,
                "beta_end": self.beta_end, "num_train_timesteps": self.num_train_timesteps}

    def __eq__(self, other):  # the cached arrays are derived; compare the parameters
        return type(other) is type(self) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(tuple(self.to_dict().items()))


def _addition_errors(a, b, s):
    """a + b - s exactly (to its own rounding), elementwise, for s the float64 sum of a and b
    as some summation rounded it: TwoSum's error of fl(a + b) (Knuth), plus fl(a + b) - s,
    exact where the two are within a factor 2 of each other (Sterbenz), as roundings are."""
    p = a + b
    bp = p - a
    return ((a - (p - bp)) + (b - bp)) + (p - s)


def _two_product(a, b):
    """(p, e) with p = fl(a b) and p + e = a b exactly (Dekker's splitting, no fma)."""
    def split(v):
        c = 134217729.0 * v  # 2^27 + 1
        hi = c - (c - v)
        return hi, v - hi
    p = a * b
    ah, al = split(a)
    bh, bl = split(np.float64(b))
    return p, ((ah * bh - p) + ah * bl + al * bh) + al * bl


def _torch_linspace_float32(start, end, n):
    """torch.linspace(start, end, n, dtype=torch.float32) on CPU, reproduced in NumPy."""
    s, e = np.float32(start), np.float32(end)
    step = np.float32((e - s) / np.float32(n - 1))
    i = np.arange(n)
    half = n // 2
    # fma(step, k, base) = base + step k rounded once: step k is exact in float64
    # (24-bit times <= 31-bit), and the sum is rounded to float32 through _round_sum
    k = np.where(i < half, i, -(n - 1 - i)).astype(np.float64)
    base = np.where(i < half, np.float64(s), np.float64(e))
    return _round_sum_to_float32(np.float64(step) * k, base)


def _round_sum_to_float32(p, q):
    """float32(p + q) rounded once from the exact sum (p, q float64 arrays)."""
    hi = p + q
    lo = (p - (hi - (hi - p))) + (q - (hi - p))  # two-sum: hi + lo == p + q exactly
    r = hi.astype(np.float32)
    # r is the correctly rounded sum unless hi sits exactly on a float32 midpoint with the
    # exact sum off it (lo != 0): then the neighbour on lo's side is
    back = r.astype(np.float64)
    up = np.where(hi > back, np.float32(np.inf), np.float32(-np.inf))
    neighbour = np.nextafter(r, up)
    midpoint = 0.5 * (back + neighbour.astype(np.float64))  # exact in float64
    past = (hi == midpoint) & (hi != back) & (lo != 0) & (np.sign(lo) == np.sign(hi - back))
    return np.where(past, neighbour, r)
