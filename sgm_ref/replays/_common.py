"""Plumbing shared by the replays: the grid, the noise source, the model's predictions.

Every replay has the signature

    replay(score, process, grid, x, rng=None, trajectory=False, *, noise=None, **options)

with score(x (n, d), t (n,)) -> grad log p_t(x) (n, d), a decreasing time grid of the
process from T down to t0 >= 0, x the start points (n, d) at T; the draws come from rng
or from noise, never both (Noise refuses the pair). The state is kept in x's
dtype (each update is computed in float64 and rounded once to that dtype: a float32 run
is a float32 replay); coefficients are float64.
"""

import inspect

import numpy as np

from .._validation import call_score, check_decreasing_grid, check_points, check_real_array, check_rng
from ..conventions import convert
from ..processes import DDPM, EDM, VariancePreserving, check_process


def check_replay_grid(grid, process):
    """Return grid as float64 if it is strictly decreasing within the process's time range.

    Unlike sgm_ref.samplers.check_grid the last time may be 0 (k-diffusion appends
    sigma = 0; DDPM's last step lands on the data): no replay evaluates the score there.
    A repeated last time (diffusers' final_sigmas_type="sigma_min") and a DDPM grid of
    timesteps rather than times are refused with messages naming them.
    """
    g = check_decreasing_grid(grid, "t0 >= 0")
    if g[-1] < process.t_min:
        raise ValueError(f"grid must end at t0 >= {process.t_min}, got {float(g[-1])!r}")
    if g[0] > process.t_max:
        hint = process._timestep_hint(g, grid=True) if isinstance(process, DDPM) else ""
        raise ValueError(f"grid must start at T <= {process.t_max} for {process!r}, got {float(g[0])!r}"
                         + (f"; {hint}" if hint else ""))
    return g


def start(score, process, grid, x):
    """Validate the common arguments; return (process, grid, y float64 copy, dtype)."""
    if not callable(score):
        raise ValueError(f"score must be a callable (x, t) -> ndarray, got {type(score).__name__}")
    process = check_process(process, variance_preserving=False)
    grid = check_replay_grid(grid, process)
    y = check_points(x, "x")
    return process, grid, y.astype(np.float64), y.dtype


def check_flag(value, name):
    """Return value if it is True or False (a NumPy bool too), else ValueError naming it: the
    string "no" was read as true (denoise="no" denoised; review), as sgm_ref.samplers refuses."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


class Noise:
    """The N(0, I) draws of a replay, from rng or from a given array of shape (J, n, d).

    Draw j is rng.standard_normal((n, d)) (in the state's dtype) or noise[j]. finish()
    checks that a given array had exactly as many draws as the replay used, so a peer's
    noise fed in the wrong count is an error rather than a silent misalignment. Both rng
    and noise are refused: one of them would go unused, and a caller who passed a seeded
    rng would take the replay's draws for that rng's.
    """

    def __init__(self, rng, noise, shape, dtype):
        self.shape, self.dtype, self.used = shape, dtype, 0
        self.rng = self.array = self.source = None
        if rng is not None and noise is not None:
            raise ValueError("pass rng or noise, not both: the draws would come from noise and rng would go "
                             "unused; drop rng, or drop noise to draw from rng")
        if noise is None:
            self.rng = None if rng is None else check_rng(rng)
        elif hasattr(noise, "draw_noise"):  # a probe source (laws.py)
            self.source = noise
        else:
            arr = check_real_array(noise, "noise")
            if arr.ndim != 3 or arr.shape[1:] != shape:
                raise ValueError(f"noise must have shape (n_draws, {shape[0]}, {shape[1]}) (one standard normal "
                                 f"draw per stochastic step, each of x's shape), got shape {arr.shape}")
            self.array = arr

    def draw(self):
        j = self.used
        self.used += 1
        if self.source is not None:
            return self.source.draw_noise(j, self.shape)
        if self.array is not None:
            if j >= self.array.shape[0]:
                raise ValueError(f"noise has {self.array.shape[0]} draws but this replay needs more "
                                 f"(draw {j + 1} requested); pass one draw per stochastic step")
            return self.array[j]
        if self.rng is None:
            raise ValueError("rng must be a numpy.random.Generator (or pass noise=...): this replay draws noise")
        return self.rng.standard_normal(self.shape, dtype=self.dtype).astype(np.float64)

    def finish(self):
        if self.array is not None and self.used != self.array.shape[0]:
            raise ValueError(f"noise has {self.array.shape[0]} draws but this replay used {self.used}; "
                             "pass exactly one draw per stochastic step")


def as_state(expr, dtype):
    """Round an update computed in float64 once to the state's dtype (kept as float64)."""
    return np.asarray(expr, dtype=np.float64).astype(dtype).astype(np.float64)


def score_at(score, y, t, dtype, step):
    """score(y, t) at one time for all rows, checked, as float64."""
    x = y.astype(dtype)
    where = f" at step {step} (t = {float(t):.6g})"
    return call_score(score, x, np.full(x.shape[0], float(t)), where).astype(np.float64)


def predict(score, y, t, process, dtype, step, kind):
    """The model's prediction of `kind` ("x0", "eps", "v") at (y, t), from its score."""
    s = score_at(score, y, t, dtype, step)
    return convert(s, y, np.full(y.shape[0], float(t)), process, "score", kind).astype(np.float64)


def transition(process, t_hi, t_lo):
    """(r, v): x_hi = r x_lo + sqrt(v) z is the forward transition from t_lo up to t_hi.

    r = alpha_hi / alpha_lo (exp(int f) where alpha_hi is below float64's normal range, SubVP
    past B ~ 1420), v = sigma_hi^2 - r^2 sigma_lo^2 = r^2 c2 with the process's closed form
    c2 = sigma_lo^2 (e^{lam_lo - lam_hi} - 1) (exponential_integrals: no cancellation on fine
    grids; v = -sigma_hi^2 expm1(lam_hi - lam_lo) only where r^2 c2 overflows, on long steps);
    for variance-preserving processes r = e^{-DB/2}, v = -expm1(-DB) with DB the integral of
    beta over the step. t_lo may be 0 where sigma = 0 (then v = sigma_hi^2).

    (v from the two log-SNRs cancels as the variances do: lam_hi - lam_lo is a difference of
    numbers of size |lam|, so v was off by ~1e-16 |lam| / |lam_hi - lam_lo| relative: 1.7e-11
    on VE's linspace(1, 1e-5, 100001), 100% on a step of 1e-8 relative at t = 1e-10; review.)
    """
    if isinstance(process, VariancePreserving):
        dB = process.integrated_beta_between(t_hi, t_lo)
        return np.exp(-0.5 * dB), -np.expm1(-dB)
    alpha_hi, alpha_lo = process.alpha(t_hi), process.alpha(t_lo)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        r = alpha_hi / alpha_lo
        # alpha_hi underflowed or subnormal (SubVP past B ~ 1420): r was 0 or short of digits,
        # 0/0 = nan where alpha_lo underflowed too; the ratio is exp(int f) = exp(-DB / 2) there
        low = (alpha_hi < np.finfo(np.float64).tiny) | (alpha_lo == 0)
        if np.any(low):
            r = np.where(low, np.exp(process._int_f(*np.broadcast_arrays(t_hi, t_lo))), r)
        v = r * (r * process._ei_c2(*np.broadcast_arrays(np.asarray(t_hi, dtype=np.float64),
                                                          np.asarray(t_lo, dtype=np.float64))))
    far = ~np.isfinite(v)  # c2 overflowed, r underflowed (SubVP past DB ~ 709): a long step
    if np.any(far):
        lam_hi, lam_lo = process.log_snr(t_hi), process.log_snr(t_lo)
        v = np.where(far, -process.sigma2(t_hi) * np.expm1(lam_hi - lam_lo), v)
    return r, v


def sigma_hat(process, t):
    """sigma_t / alpha_t = e^{-lambda/2}: the EDM noise level of time t (0 where sigma_t = 0,
    inf where alpha_t underflows to 0: VP or SubVP past B ~ 1490)."""
    alpha, sigma = process.marginal(t)
    with np.errstate(divide="ignore"):
        return sigma / alpha


def time_of_sigma_hat(process, s):
    """The time whose EDM noise level sigma_t / alpha_t is s > 0 (s itself for EDM, exactly)."""
    if isinstance(process, EDM):
        if s > process.t_max:
            raise ValueError(f"sigma = {float(s)!r} exceeds t_max = {process.t_max} of {process!r} (e.g. a churned "
                             "noise level above T's); lower s_churn, set s_tmax or raise t_max")
        return s
    try:
        return float(process.time_of_log_snr(-2.0 * np.log(s)))
    except ValueError:
        raise ValueError(f"sigma_hat = {float(s)!r} (sigma_t / alpha_t) lies outside the range of {process!r} "
                         "(e.g. a churned noise level above T's); lower s_churn or set s_tmax") from None


class Path:
    """The trajectory (states at every grid time, in the process's own x) if asked."""

    def __init__(self, trajectory, y, dtype):
        trajectory = check_flag(trajectory, "trajectory")
        self.dtype = dtype
        self.states = [y.astype(dtype)] if trajectory else None

    def add(self, y):
        if self.states is not None:
            self.states.append(y.astype(self.dtype))

    def result(self, y, noise):
        noise.finish()
        out = y.astype(self.dtype)
        return (out, np.stack(self.states)) if self.states is not None else out


def replay_signature(replay):
    """(parameters, options) of a replay: its inspect.signature parameters and the names of its
    own options, those a caller sets beyond (score, process, grid, x, rng, trajectory), which a
    comparison passes by position whatever a custom replay calls them, noise, passed by name,
    and *args. None for a replay taking **kwargs or whose signature cannot be read: it is
    called as given. Read by sgm_ref.audit and replay_output_gaussian to name an unknown or
    missing option before any work."""
    try:
        params = inspect.signature(replay).parameters
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    positional = [name for name, p in params.items()
                  if p.kind in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    set_by_caller = set(positional[:6]) | {"noise"} | {name for name, p in params.items()
                                                       if p.kind is inspect.Parameter.VAR_POSITIONAL}
    own = [name for name, p in params.items()
           if name not in set_by_caller and p.kind is not inspect.Parameter.POSITIONAL_ONLY]
    return params, own
