"""Reverse-time samplers driven by any score function s(x, t).

The forward process dX = f(t) X dt + g(t) dW (x_t = alpha_t x0 + sigma_t z; any process of
sgm_ref.processes) has the reverse SDE dY = [-f Y + g^2 grad log p_t(Y)] dtau + g dB-bar,
run from t = T down to the early-stopping time t0 > 0 along a decreasing grid
T = t_0 > t_1 > ... > t_N = t0. Over step k, from t_k down to t_{k+1}, the two stochastic
schemes replace grad log p_t by s_k = s(y_k, t_k) and solve what is left exactly, with the
true, time-varying f(t) and g(t) (the integrals are the process's closed forms,
integrated_f_between, integrated_g2_between, exponential_integrals):

    Euler–Maruyama (drift -f y_k + g^2 s_k frozen at the step's start):
        y <- (1 - int f) y + (int g^2) s_k + sqrt(int g^2) xi
    exponential integrator (linear part -f Y exact, score frozen):
        y <- (alpha_{k+1} / alpha_k) y + b_k s_k + sqrt(c_k) xi,
        b_k = int (alpha_{k+1} / alpha_t) g^2 dt,   c_k = int (alpha_{k+1} / alpha_t)^2 g^2 dt
            = sigma_{k+1}^2 (e^{lambda_{k+1} - lambda_k} - 1)
    probability flow (Heun):  dy/dtau = -f y + g^2 s / 2, Heun's method

all integrals over [t_{k+1}, t_k], xi ~ N(0, I) drawn from rng. On a variance-preserving
process (OU, VP, VPCosine, DDPM; f = -beta/2, g^2 = beta) with DB_k = int beta these are

    Euler–Maruyama:           y <- y + DB_k (y / 2 + s(y, t_k)) + sqrt(DB_k) xi
    exponential integrator:   y <- e^{DB_k/2} y + 2 (e^{DB_k/2} - 1) s(y, t_k) + sqrt(e^{DB_k} - 1) xi
    residual exponential:     y <- e^{-DB_k/2} y + 2 (1 - e^{-DB_k/2}) r(y, t_k) + sqrt(1 - e^{-DB_k}) xi,
                              r = s + y (only the residual of the score from -y is frozen)

DB_k is computed as the integral over the step, not as a difference of two B's, which
would lose digits on fine grids. Both schemes take the noise integral exactly (variance
int g^2 rather than g(t_k)^2 h_k), so over each step the sampler is the continuous process
dY = [drift frozen as above] dtau + g(t) dB: its path law has the diffusion coefficient of
the true reverse process and Girsanov's theorem compares them
(sgm_ref.metrics.tv_upper_bound). The textbook scheme, f and g^2 frozen at t_k and times
h_k, is score_sde's and stays available as the replay sgm_ref.replays.euler_maruyama.

Sources: the reverse SDE dY = beta/2 (Y + 2 s) dtau + sqrt(beta) dB (Anderson 1982; Song
et al. 2021, eq. 6) and the probability-flow ODE (Song et al. 2021, eq. 13) of the VP SDE
(Song et al. 2021, eq. 11; OU, Cole & Lu 2024's forward process, is beta = 2). The
exponential integrator is the discretisation Chen et al. (2023) bound by Girsanov's
theorem; Heun's method on the ODE is Karras et al. (2022), Algorithm 1 (there in sigma).

Starts: a variance-preserving process starts from N(0, I) (process.prior), any other from
N(0, sigma_T^2 I) (score_sde's VE prior, k-diffusion's sigma_max N(0, I); for FlowMatching
at t_max = 1 - 1e-5 this is N(0, t_max^2 I)): start_variance(process, T). It differs from
p_T (for a Gaussian p_0 = N(m, S): N(alpha_T m, alpha_T^2 S + sigma_T^2 I)) by the alpha_T m
and alpha_T^2 S terms: choose T with alpha_T^2 E|x_0|^2 << sigma_T^2 (a target far from the
origin needs it even where its variance is small).

The probability-flow ODE on a process that is not variance-preserving runs the replay
sgm_ref.replays.karras_heun (Heun on the same ODE, written in sigma-hat = sigma / alpha and
x / alpha, as k-diffusion's sample_heun). sgm_ref.metrics.sampler_output_gaussian gives
the exact output law of every scheme on every process.

The residual exponential integrator runs on the variance-preserving processes only.

The score is called as score(x, t) with x of shape (n, d) and t of shape (n,) (all
entries equal to the current grid time) and must return the dtype of x (an array of its
own or one it keeps and refills on each call: probability_flow, which holds one output
across the next call, copies such an array). x and t are the sampler's working arrays,
updated in place from step to step unless the score kept a reference to them (or returned
x or a view of it): then the sampler goes on in fresh ones, so that what a score keeps
(a recording hook, a cache) never changes under it. Besides that call, a step is one kernel
call (sgm_ref.kernels.sampler) that checks the score's output is finite, draws the
noise a block at a time and updates the points in place; the coefficients are computed
before the first step. The points' dtype is the arithmetic's:
float32 points (sample(dtype=np.float32), or float32 x) step in float32 with the
coefficients rounded to float32, losing O(N 2^-24) relative to float64 after N steps
from the same start points (measured: 6.5e-7 to 1.6e-6 of the largest |entry| at N = 200, OU
and VP, geometric grids, a Gaussian target, all three schemes); the noise is
rng.standard_normal(shape) rounded to the points' dtype either way. sample(dtype=...)
draws its start points from the process's prior in that dtype, and NumPy's float32
normals are another stream than its float64 ones: the same seed then gives a float32
sample unrelated to the float64 one (as good a sample of the same law). To compare the
two dtypes point by point, pass the same float64 start points to euler_maruyama or
exponential_integrator, cast for the float32 run.
"""

import sys

import numpy as np

from ._validation import (call_score, check_count, check_decreasing_grid, check_float_dtype, check_points, check_real,
                          check_rng, check_time_range, fits_in_memory)
from .kernels.sampler import affine_noise_step, generator_handle, heun_correct, heun_predict
from .processes import VariancePreserving, check_process
from .score_model import ScoreModel

__all__ = ["time_grid", "euler_maruyama", "exponential_integrator", "probability_flow", "sample", "METHODS",
           "start_variance"]
__all__ += ["residual_exponential_integrator"]


def _is_vp(process):
    """True for OU, VP, VPCosine, DDPM; False for the other processes; raise for non-processes."""
    return isinstance(check_process(process, variance_preserving=False), VariancePreserving)


def _check_time_range(t0, T, process):
    """check_time_range; for a process that is not variance-preserving (no B(T)), T <= t_max
    and sigma_T^2 finite (_check_sigma2)."""
    if process is None or _is_vp(process):
        return check_time_range(t0, T, process)
    t0, T = check_time_range(t0, T)
    if T > process.t_max:
        raise ValueError(f"T must be <= {process.t_max} for {process!r}, got {T!r}")
    _check_sigma2(process, T, "T")
    return t0, T


def _check_sigma2(process, T, name, dtype=np.float64):
    """Raise unless sigma_T^2 is finite in dtype: on VE and EDM (alpha = 1) every step's
    int g^2 is at most sigma_T^2 (EDM with its t_max = inf, T = 1e200, or VE with sigma_max =
    1e200), and beyond it the coefficients are inf and NaN. (On SubVP and FlowMatching, alpha
    < 1, int g^2 may exceed sigma_T^2 <= 1: 9.5 and 21 from their t_max to 1e-3; a coefficient
    beyond the dtype's range there shows as the sampler's divergence.) For float32 points
    (coefficients rounded to float32) that is sigma_T below about 1.8e19: EDM at T = 1e20 took
    its first step with int g^2 = inf and was reported as a diverging sampler of too-large
    steps, and sample at T = 1e39 drew start points of inf, reported as a non-finite x."""
    dtype = np.dtype(dtype)
    with np.errstate(over="ignore"):
        s2 = process._sigma2(np.float64(T))
        finite = np.isfinite(s2) and np.isfinite(np.asarray(s2).astype(dtype))
    if not np.isfinite(s2):
        raise ValueError(f"{name} = {float(T)!r} is too large for {process!r}: sigma_T^2 overflows float64; "
                         "use a T with sigma_T below about 1e154")
    if not finite:
        raise ValueError(f"{name} = {float(T)!r} is too large for {dtype.name} points on {process!r}: sigma_T^2 = "
                         f"{float(s2):.3g} overflows {dtype.name} (the steps' int g^2 reach it); use a T with sigma_T "
                         f"below about {float(np.sqrt(np.finfo(dtype).max)):.2g}, or float64 points")


def _check_start_sigma(process, T, dtype):
    """Raise unless the start points N(0, sigma_T^2 I) fit dtype with 64 standard deviations
    to spare (the probability flow off the variance-preserving processes, which never forms
    sigma_T^2: float32 takes sigma_T up to about 5e36), and so does the state x / alpha_T that
    it steps (sgm_ref.replays.karras_heun), of spread sigma_T / alpha_T: on SubVP(0.1, 1000)
    at T = 1 that is 3.8e108, and float32 points were refused inside the replay as 'x contains
    2000 non-finite value(s)' (alpha = 1 on EDM and VE: there it is sigma_T). In float64 a
    sigma_T / alpha_T beyond the range is the replay's own refusal (alpha_T too small)."""
    limit = float(np.finfo(dtype).max) / 64
    sigma = float(process.sigma(T))
    if not sigma < limit:
        raise ValueError(f"T = {float(T)!r} is too large for {dtype.name} points on {process!r}: the start "
                         f"N(0, sigma_T^2 I) has sigma_T = {sigma:.3g}, beyond {dtype.name}'s range for its draws "
                         f"(sigma_T below about {limit:.2g}); use a smaller T, or float64 points")
    if dtype == np.float64:
        return
    alpha = float(process.alpha(T))
    with np.errstate(divide="ignore", over="ignore"):
        spread = sigma / np.float64(alpha)
    if not spread < limit:
        raise ValueError(f"T = {float(T)!r} is too large for {dtype.name} points on {process!r}: the probability "
                         f"flow steps x / alpha_T (sgm_ref.replays.karras_heun), of spread sigma_T / alpha_T = "
                         f"{float(spread):.3g}, beyond {dtype.name}'s range (below about {limit:.2g}); use a smaller "
                         "T, or float64 points")


def routed_replay(process, method):
    """The replay of sgm_ref.replays that runs `method` on a process that is not
    variance-preserving: karras_heun for "probability_flow" (module docstring)."""
    from . import replays  # lazily: replays imports sgm_ref.metrics, which imports this module
    if method == "probability_flow":
        return replays.karras_heun
    raise ValueError(f"method={method!r} runs on every process without a replay; only 'probability_flow' "
                     f"is routed, got {process!r}")


def start_variance(process, T):
    """The variance of the start law N(0, v I) of `sample` at T: 1 on a variance-preserving
    process (its stationary law), sigma_T^2 on any other (module docstring).

    Raises ValueError for a T that is not a number in (0, process.t_max], one whose B(T)
    overflows float64 on a variance-preserving process (OU at T = 1e308), or one whose
    sigma_T^2 overflows float64 on any other (EDM at T = 1e200)."""
    vp = _is_vp(process)
    T = check_real(T, "T", low=0.0, low_open=True)  # (1.0 was returned for any T on VP(): -5, 2, nan)
    if T > process.t_max:
        raise ValueError(f"T must be <= {process.t_max} for {process!r}, got {T!r}")
    if vp:
        try:
            B_T = process.integrated_beta(T)
        except ValueError:  # beyond float64: said here in T's terms, as check_time_range says it
            B_T = np.inf
        if not np.isfinite(B_T):
            raise ValueError(f"T = {T!r} is too large for {process!r}: B(T) = int_0^T beta overflows float64")
        return 1.0
    sigma = float(process.sigma(T))
    _check_sigma2(process, T, "T")
    return sigma ** 2


def time_grid(T, t0, n_steps, kind="uniform", process=None):
    """Decreasing grid T = t_0 > ... > t_N = t0 of n_steps steps.

    kind="uniform": equal steps; kind="geometric": t_k = T (t0 / T)^{k / N}, steps
    shrinking toward t0 where the score changes fastest.

    Returns ndarray of shape (n_steps + 1,), float64.
    """
    t0, T = _check_time_range(t0, T, process)
    n_steps = check_count(n_steps, "n_steps")
    with fits_in_memory("n_steps", n_steps, n_steps + 1, per_item=8 * 3):
        k = np.arange(n_steps + 1) / n_steps
    if kind == "uniform":
        grid = T + (t0 - T) * k
    elif kind == "geometric":
        ratio = t0 / T
        if ratio >= np.finfo(np.float64).tiny:
            grid = T * np.exp(np.log(ratio) * k)
        else:  # t0 / T underflows (t0 = 1e-300, T = 1e300): interpolate the logs instead
            grid = np.exp(np.log(T) + (np.log(t0) - np.log(T)) * k)
    else:
        raise ValueError(f"grid kind must be 'uniform' or 'geometric', got {kind!r}")
    grid[0], grid[-1] = T, t0
    if np.any(np.diff(grid) >= 0):
        raise ValueError(f"n_steps={n_steps} {kind} steps from T={T!r} to t0={t0!r} are finer than float64 "
                         "resolves (times repeat); use fewer steps or a wider [t0, T]")
    return grid


def check_grid(grid, process):
    """Return grid as a float64 array if it is a valid decreasing time grid, else raise."""
    g = check_decreasing_grid(grid)
    if g[-1] <= 0:
        raise ValueError(f"grid must end at t0 > 0 (early stopping), got {float(g[-1])!r}")
    if g[0] > process.t_max:
        raise ValueError(f"grid must start at T <= {process.t_max} for {process!r}, got {float(g[0])!r}")
    if not _is_vp(process):
        _check_sigma2(process, g[0], "grid[0] = T")
        return g
    try:
        B_T = process.integrated_beta(g[0])
    except ValueError:  # beyond float64: said here in the grid's terms
        B_T = np.inf
    if not np.isfinite(B_T):
        raise ValueError(f"grid[0] = T = {float(g[0])!r} is too large for {process!r}: "
                         "B(T) = int_0^T beta overflows float64")
    return g


def _where(step, t):
    return f" at step {step} (t = {float(t):.6g})"


def _overflow_limit(dtype):
    """|y| from which a failing score is blamed on the sampler's divergence: beyond sqrt(max) / 1e4
    (1.3e150 in float64), where the points' squares overflow, the error names the divergence,
    not the score's reaction to it."""
    return np.sqrt(np.finfo(dtype).max) / 1e4


class _Times:
    """The (n,) array of one grid time passed to the score, refilled in place from step to
    step unless the score kept a reference to it (then a fresh one: it never changes under
    a caller that holds it)."""

    def __init__(self, n):
        self.t = np.empty(n)

    def at(self, t):
        if sys.getrefcount(self.t) > 2:  # self.t and getrefcount's argument: nobody else
            self.t = np.empty(self.t.size)
        self.t.fill(t)
        return self.t


def _score_for_kernel(score, y, t, step, grid, process, times):
    """Call the score at one grid time, without the O(n d) finiteness pass, which the step kernels
    make (and _non_finite_score raises what call_score would have); times: a _Times for y.
    A failing call on points beyond _overflow_limit is reported as the sampler's divergence."""
    try:
        s = score(y, times.at(t))
        if type(s) is not np.ndarray or s.shape != y.shape or s.dtype != y.dtype:
            # its messages, in its order; a masked array refused, another subclass as its plain array
            s = call_score(lambda *_: s, y, None, _where(step, t))
        return s if s.flags.c_contiguous else np.ascontiguousarray(s)  # the kernels read it flat
    except Exception:
        with np.errstate(invalid="ignore"):
            top = np.max(np.abs(y), initial=0.0)  # no points (n = 0 or d = 0): the score's own error
        if not top < _overflow_limit(y.dtype):
            _diverged(step, grid, process)
        raise


def _non_finite_score(status, step, t, grid, process):
    """Raise for a score output with a NaN or inf that a step kernel found (its status 1,
    or 2 where the points had overflowed or nearly before the call), as call_score would."""
    if status == 2:
        _diverged(step, grid, process)
    raise ValueError(f"score returned non-finite values{_where(step, t)}")


def _diverged(step, grid, process):
    """Raise for points that overflowed during sampling."""
    if _is_vp(process):
        size = process.integrated_beta_between(grid[:-1], grid[1:])
        what, limit = "int beta", "int beta above ~2"
    else:  # the step's noise relative to the noise already there
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            size = process._int_g2(grid[:-1], grid[1:]) / process._sigma2(grid[1:])
        what, limit = "int g^2 / sigma_{t_k+1}^2", "a ratio above ~2"
    largest = float(np.max(size))
    head = f"the sampler diverged: its points overflowed (or nearly) before step {step} (t = {float(grid[step]):.6g}). "
    if not largest <= 2.0:
        ratios = grid[1:] / grid[:-1]
        # already geometric, as by default (one step is any grid: sample(n_steps=1) was told to use a geometric grid)
        geometric = np.allclose(ratios, ratios[0], rtol=1e-9, atol=0.0)
        fix = "more steps (n_steps)" + (" or" if geometric else ", a geometric grid or") + " a smaller T"
        raise ValueError(
            head + f"Its largest step has {what} = {largest:.3g} (step {int(np.argmax(size))}); steps with "
            f"{limit} are unstable: use {fix}"
        ) from None
    # small steps cannot make a sound score's sampler overflow: the score did (a review found a
    # model trained with lr = 1e20 blamed on a grid whose steps were all below 0.3)
    raise ValueError(
        head + f"Its steps are small (the largest has {what} = {largest:.3g}), so the score drove the points "
        "out: check the score function, or a trained model's final loss (a diverged training)"
    ) from None


def _finished(y, grid, process):
    """y, after one check that the sampler did not overflow on its last steps (O(n d))."""
    if not np.all(np.isfinite(y)):
        _diverged(grid.size - 1, grid, process)
    return y


def _check_call(score, trajectory):
    """Raise unless score is callable and trajectory a bool (the samplers' own arguments)."""
    if not callable(score):
        raise ValueError(f"score must be a callable (x, t) -> ndarray, got {type(score).__name__}")
    if not isinstance(trajectory, (bool, np.bool_)):
        raise ValueError(f"trajectory must be True or False, got {trajectory!r}")


def _start(score, x, process, grid, trajectory):
    _check_call(score, trajectory)
    process = check_process(process, variance_preserving=False)
    grid = check_grid(grid, process)
    y = check_points(x, "x").copy()
    if y.dtype != np.float64 and not _is_vp(process):
        _check_sigma2(process, grid[0], "grid[0] = T", y.dtype)
    return process, grid, y


def _steps_in_dtype(dtype, *columns):
    """[(c_1[k], c_2[k], ...) for each step k]: the step coefficients for a kernel on points
    of dtype, Python floats for float64 (the same numbers), rounded to np.float32 for float32
    so the kernel's arithmetic stays float32. One conversion per array (the tuples of scalars
    converted one at a time cost ~1 us per step, 5% of a d = 2 step's draw)."""
    with np.errstate(over="ignore"):  # beyond float32: inf, and the points overflow, which the sampler reports
        columns = [np.asarray(column, np.float64).astype(dtype) for column in columns]
    if dtype == np.float64:
        return list(zip(*(column.tolist() for column in columns)))  # Python floats
    return list(zip(*columns))  # np.float32 scalars


def _euler_maruyama_coefficients(process, t_hi, t_lo):
    """(a, b, c) of the Euler–Maruyama steps y <- a y + b s + c xi from t_hi down to t_lo:
    a = 1 - int f, b = int g^2, c = sqrt(int g^2) (for VP: 1 + DB/2, DB, sqrt(DB))."""
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow shows as divergence
        G = process._int_g2(t_hi, t_lo)
        return 1.0 - process._int_f(t_hi, t_lo), G, np.sqrt(G)


def _exponential_coefficients(process, t_hi, t_lo):
    """(a, b, c) of the exponential-integrator steps: a = alpha_lo / alpha_hi and b, c^2 of
    process.exponential_integrals (for VP: e^{DB/2}, 2 expm1(DB/2), sqrt(expm1(DB)))."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.exp(-process._int_f(t_hi, t_lo)), process._ei_b(t_hi, t_lo), np.sqrt(process._ei_c2(t_hi, t_lo))


def _residual_exponential_coefficients(process, t_hi, t_lo):
    """(a, b, c) of the residual exponential steps, written in s = -y + r (residual_exponential_integrator;
    variance-preserving processes, dB = int beta over the step).

    y <- e^{-dB/2} y + 2 (1 - e^{-dB/2}) r + sqrt(1 - e^{-dB}) xi with r = s + y is
    y <- (2 - e^{-dB/2}) y + 2 (1 - e^{-dB/2}) s + sqrt(1 - e^{-dB}) xi.
    """
    dB = process.integrated_beta_between(t_hi, t_lo)
    b = -2.0 * np.expm1(-0.5 * dB)
    return 1.0 + 0.5 * b, b, np.sqrt(-np.expm1(-dB))


# the affine steps y <- a y + b s + c xi of each stochastic scheme on a grid's steps,
# coefficients(process, grid[:-1], grid[1:]) -> (a, b, c) arrays of shape (N,);
# sgm_ref.metrics.gaussian propagates Gaussian laws through the same coefficients
STEP_COEFFICIENTS = {"euler_maruyama": _euler_maruyama_coefficients, "exponential": _exponential_coefficients}
STEP_COEFFICIENTS["residual_exponential"] = _residual_exponential_coefficients


def _routed(score, process, grid, x, rng, trajectory, method):
    """Run a process that is not variance-preserving through its replay (module docstring)."""
    _check_call(score, trajectory)
    replay = routed_replay(process, method)
    grid = check_grid(grid, process)
    y = check_points(x, "x")
    if y.dtype != np.float64:  # the replay steps x / alpha_t, rounded to y's dtype (_check_start_sigma)
        alpha, top = float(process.alpha(grid[0])), float(np.max(np.abs(y), initial=0.0))
        with np.errstate(divide="ignore", over="ignore"):
            state = top / np.float64(alpha)
        # the state itself must fit, not with _check_start_sigma's 64 standard deviations to spare:
        # against max / 64, sample refused its own draws (EDM at T = 2e36, sigma_T below that limit,
        # drew |x| = 6.9e36 and was told that this is beyond float32's range)
        if not state < float(np.finfo(y.dtype).max):
            raise ValueError(f"grid[0] = T = {float(grid[0])!r} is too large for {y.dtype.name} points on {process!r}: "
                             f"the probability flow steps x / alpha_T (sgm_ref.replays.karras_heun), which reaches "
                             f"{float(state):.3g} (alpha_T = {alpha:.3g}), beyond {y.dtype.name}'s range; start the "
                             "grid at a smaller time, or pass float64 points")
    out = replay(score, process, grid, y, rng, trajectory)
    # as the own samplers: an output that overflowed is named (one Heun step of EDM from
    # T = 1e36 to 1 in float32 gave inf, unsaid)
    _finished(out[0] if trajectory else out, grid, process)
    return out


def _path(y, grid, trajectory):
    """The trajectory's (N + 1, n, d) array with y in its first row, or None: allocated whole
    before the first step, so that a trajectory beyond memory is refused up front, naming
    n_steps, rather than after the steps that fit (or by the OS killing the process)."""
    if not trajectory:
        return None
    with _trajectory_fits(grid.size - 1, *y.shape, y.dtype):
        path = np.empty((grid.size,) + y.shape, y.dtype)
    path[0] = y
    return path


def _trajectory_fits(n_steps, n, d, dtype):
    """fits_in_memory for a trajectory of n_steps + 1 states of n x d points of dtype, naming n_steps."""
    return fits_in_memory("n_steps", f"{n_steps} (a trajectory of {n_steps + 1} x {n} x {d} {dtype.name} points)",
                          (n_steps + 1) * n * d, per_item=dtype.itemsize)


def _run_sde(score, process, grid, x, rng, trajectory, coefficients):
    process, grid, y = _start(score, x, process, grid, trajectory)
    rng = check_rng(rng)
    # all but the score call and one kernel is done before the loop: the coefficients, in
    # y's dtype (float32 points step in float32 arithmetic), and one row of noise scratch
    steps = _steps_in_dtype(y.dtype, *coefficients(process, grid[:-1], grid[1:]))
    xi = np.empty(min(max(y.size, 1), 2048), y.dtype)  # 16 KiB of float64 noise at a time, in L1
    limit = _overflow_limit(y.dtype)
    times = _Times(y.shape[0])
    path = _path(y, grid, trajectory)
    handle = generator_handle(rng)  # rng as the kernel takes it without numba's per-call unboxing
    for k, (a, b, c) in enumerate(steps):
        refs = sys.getrefcount(y)  # more after the call: the score kept y, or returned it or a view of it
        s = _score_for_kernel(score, y, grid[k], k, grid, process, times)
        if sys.getrefcount(y) > refs:  # the step writes into a copy, never into points the score holds
            y = y.copy()
        # noise = rng.standard_normal(y.shape).astype(y.dtype), drawn inside a block at a time
        status = affine_noise_step(y, s, handle, a, b, c, xi, limit)
        if status:
            _non_finite_score(status, k, grid[k], grid, process)
        if trajectory:
            path[k + 1] = y
    y = _finished(y, grid, process)
    return (y, path) if trajectory else y


def euler_maruyama(score, process, grid, x, rng, trajectory=False):
    """Euler–Maruyama for the reverse SDE: y <- (1 - int f) y + (int g^2) s + sqrt(int g^2) xi.

    The reverse SDE with its drift frozen at the step's start and the true diffusion g(t)
    (module docstring); on a variance-preserving process y <- y + DB (y / 2 + s) + sqrt(DB) xi.
    The textbook scheme (f, g^2 at t_k times h_k) is the replay sgm_ref.replays.euler_maruyama.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    process : any process of sgm_ref.processes
    grid : ndarray, shape (N + 1,)
        Decreasing times from T to t0 > 0 (see time_grid).
    x : ndarray, shape (n, d)
        Starting points at t = grid[0], e.g. process.prior(n, d, rng) (N(0, I)) on a
        variance-preserving process, sqrt(start_variance(process, T)) times N(0, I) draws on any.
    rng : numpy.random.Generator
    trajectory : bool
        Also return the points at every grid time, shape (N + 1, n, d).

    Returns
    -------
    y : ndarray, shape (n, d)   (and the trajectory if asked)
    """
    return _run_sde(score, process, grid, x, rng, trajectory, _euler_maruyama_coefficients)


def exponential_integrator(score, process, grid, x, rng, trajectory=False):
    """Exponential integrator: y <- (alpha_{k+1} / alpha_k) y + b_k s + sqrt(c_k) xi.

    Exact for the linear part -f Y of the reverse SDE with the score frozen over each step
    (b_k, c_k: module docstring, process.exponential_integrals); on a variance-preserving
    process y <- e^{DB/2} y + 2 (e^{DB/2} - 1) s + sqrt(e^{DB} - 1) xi. Arguments and
    return as euler_maruyama.
    """
    return _run_sde(score, process, grid, x, rng, trajectory, _exponential_coefficients)


def residual_exponential_integrator(score, process, grid, x, rng, trajectory=False):
    """Exponential integrator for the score written as s = -y + r(y, t), only r frozen over a step.

    The reverse drift beta(t) (y / 2 + s) = beta(t) (-y / 2 + r) has linear part -beta y / 2,
    integrated exactly; with r frozen at (y_k, t_k) over int beta = DB:

        y <- e^{-DB/2} y + 2 (1 - e^{-DB/2}) r(y, t_k) + sqrt(1 - e^{-DB}) xi.

    When the score is close to -y (the standard Gaussian part of p_0 = exp(f) gamma_d / Z,
    Cole & Lu's structure) r is small and slowly varying, and the step's error is that of
    freezing r only: for p_0 = N(0, I) (r = 0) it is exact on any grid. Computed as the
    same affine step in s: y <- (2 - e^{-DB/2}) y + 2 (1 - e^{-DB/2}) s + sqrt(1 - e^{-DB}) xi.
    Arguments and return as euler_maruyama; the process must be variance-preserving.
    """
    _check_residual(process)
    return _run_sde(score, process, grid, x, rng, trajectory, _residual_exponential_coefficients)


def _check_residual(process):
    """Raise unless the residual exponential integrator can run on process (variance-preserving)."""
    if not _is_vp(process):
        raise ValueError(f"method 'residual_exponential' needs a variance-preserving process (OU, VP, VPCosine, "
                         f"DDPM), got {process!r}: its linear part -y / 2 is that of beta(t)")


def probability_flow(score, process, grid, x, trajectory=False):
    """Heun's method for the probability-flow ODE dy/dtau = beta(t) (y + s(y, t)) / 2.

    Deterministic: two score calls per step (at t_k and at t_{k+1}). Arguments and
    return as euler_maruyama, without rng. beta is read at each step's two ends from
    inside the step: a DDPM schedule's beta is constant between its timesteps and jumps
    at each, and the step from timestep i's time t_i = (i + 1) / N down takes beta_i's
    rate, not the right-continuous beta(t_i) of the piece above, which the step never
    crosses (the capped cosine's 6908 against 1386 from T = 0.999; with it Heun did not
    converge on grids of timesteps: KL to the exact reverse dynamics' law 4.84e-6, 1.11e-5,
    1.35e-5, 1.44e-5, 1.46e-5 on the grids below and every timestep). On grids of timesteps (linear schedule, every 20th, 10th, 5th, 2nd
    timestep from 999; Gaussian target N((1, -1), diag(0.25, 0.5)), the law of
    sgm_ref.metrics.sampler_output_gaussian against sampler_limit_gaussian's) the KL is
    1.4e-6, 6.8e-8, 2.0e-9, 1.7e-11: second order. Off the knots the jumps fall inside
    steps and the error falls more slowly (uniform grids from 1 to 1e-3, 50, 200, 800
    steps: 1.3e-5, 6.4e-6, 3.4e-8). On the capped cosine from T = 1 the top step holds
    the cap (beta h = 6.9 per timestep, too stiff for Heun) and dominates: 2.0e-4, 4.7e-5,
    1.1e-5, 7.4e-7 at every 20th to 2nd timestep, 1.9e-6 at every one (the old reading
    gave 8.6e-6 and 7.5e-6 at every 10th and 5th, then 3.0e-5 and 9.0e-5: it did not
    converge); from timestep 998, below the cap, 2.5e-5, 5.6e-6, 1.2e-6, 5.1e-8, 1.6e-8. The stochastic methods integrate beta exactly. A
    process that is not variance-preserving runs
    sgm_ref.replays.karras_heun: Heun on dy/dtau = -f y + g^2 s / 2 in the variables
    x / alpha and sigma / alpha (module docstring).
    """
    if isinstance(trajectory, np.random.Generator):  # euler_maruyama's argument order (it was 'trajectory must be ...')
        raise ValueError("probability_flow is deterministic and takes no rng: call it as probability_flow(score, "
                         "process, grid, x) (its fifth argument is trajectory)")
    if not _is_vp(process):
        return _routed(score, process, grid, x, None, trajectory, "probability_flow")
    process, grid, y = _start(score, x, process, grid, trajectory)
    # beta at each step's ends as the step sees them: on a DDPM schedule the rate of the
    # piece below t_k, not the right-continuous beta(t_k) of the piece above (a knot)
    beta_now, beta_next = process._beta_inside(grid[:-1], grid[1:])
    h = grid[:-1] - grid[1:]
    # predictor y_pred = y + h f(y, t_k) = (1 + a) y + a s with f = beta (y + s) / 2, a = h beta_k / 2;
    # corrector y + h/2 (f(y, t_k) + f(y_pred, t_k+1)); coefficients in y's dtype, as in _run_sde
    a = 0.5 * h * beta_now
    steps = _steps_in_dtype(y.dtype, 1.0 + a, a, 0.5 * h * 0.5 * beta_now, 0.5 * h * 0.5 * beta_next)
    limit = _overflow_limit(y.dtype)
    times = _Times(y.shape[0])
    path = _path(y, grid, trajectory)
    y_pred = np.empty_like(y)
    s_kept = np.empty_like(y)
    for k, (one_plus_a, a, c_now, c_next) in enumerate(steps):
        # the corrector reads s after the second score call: a score that returns an array it
        # still holds (an output buffer it refills on every call) or a view of one would have
        # overwritten it by then, so s is kept in a copy of our own (one pass over n d numbers
        # beside two score calls; whether a score refills the array it returned cannot be told)
        refs = sys.getrefcount(y)  # as in _run_sde: points the score holds are never written
        s = _score_for_kernel(score, y, grid[k], k, grid, process, times)
        if sys.getrefcount(y) > refs:
            y = y.copy()  # the corrector writes into the copy
        np.copyto(s_kept, s)
        s = s_kept
        status = heun_predict(y_pred, y, s, one_plus_a, a, limit)
        if status:
            _non_finite_score(status, k, grid[k], grid, process)
        refs = sys.getrefcount(y_pred)
        s_pred = _score_for_kernel(score, y_pred, grid[k + 1], k, grid, process, times)
        held = sys.getrefcount(y_pred) > refs
        y_now = y_pred
        if held:
            y_pred = np.empty_like(y_now)  # the next predictor writes into a fresh array
        status = heun_correct(y, s, y_now, s_pred, c_now, c_next, limit)
        if status:
            _non_finite_score(status, k, grid[k + 1], grid, process)
        if trajectory:
            path[k + 1] = y
    y = _finished(y, grid, process)
    return (y, path) if trajectory else y


def check_model_dtype(score, dtype, name="dtype"):
    """Raise unless a ScoreModel score has the points' dtype (any other score is checked by its
    output at the first call). A ScoreModel refuses points of another dtype itself, but in terms of
    x ("x must have dtype float32 (the network's), got float64; cast it explicitly"), which a caller
    of sample, who passed no x, cannot act on (and sample had drawn its start points by then)."""
    if isinstance(score, ScoreModel) and score.dtype != dtype:
        model = score.dtype.name
        raise ValueError(f"{name} must be the model's dtype, {model}, got {dtype.name}: the score is a ScoreModel "
                         f"of a {model} network, which takes {model} points only; pass {name}=np.{model}")


def _prior(process, n, d, rng, dtype, copies, process_T=None):
    """process.prior(n, d, rng, dtype) (N(0, sigma_T^2 I) for a process that is not
    variance-preserving: start_variance), with sizes beyond memory named as n and d, and a
    trajectory of `copies` states beyond memory refused before the draw, naming n_steps."""
    n, d, dtype = check_count(n, "n"), check_count(d, "d"), check_float_dtype(dtype)
    size = n * d * dtype.itemsize * copies
    if size > np.iinfo(np.intp).max:
        raise ValueError(f"n * d = {n * d} entries ({size:.3g} bytes{' with the trajectory' if copies > 1 else ''}) "
                         "exceed the largest array NumPy can make; lower n or d")
    if copies > 1:  # the trajectory (copies = n_steps + 1 states) refused before any draw, as _path refuses it
        with _trajectory_fits(copies - 1, n, d, dtype):
            pass
    try:
        if not _is_vp(process):
            # N(0, sigma_T^2 I) (module docstring, start_variance)
            T = process_T
            return (check_rng(rng).standard_normal((n, d), dtype=dtype) * dtype.type(process.sigma(T)))
        return process.prior(n, d, rng, dtype)
    except MemoryError:
        raise ValueError(f"n * d = {n * d} entries ({size / 2**30:.3g} GiB) do not fit in memory; lower n "
                         "or sample in batches") from None


METHODS = {"euler_maruyama": euler_maruyama, "exponential": exponential_integrator,
           "probability_flow": probability_flow}
METHODS["residual_exponential"] = residual_exponential_integrator


def sample(score, process, n, d, rng, *, T, t0, n_steps, method="euler_maruyama", grid="geometric",
           dtype=np.float64, trajectory=False):
    """Draw n points: start from N(0, I_d) at T, run `method` on a grid to t0.

    A process that is not variance-preserving (SubVP, VE, EDM, FlowMatching) starts from
    N(0, sigma_T^2 I_d); "euler_maruyama" and "exponential" are sgm_ref's own schemes on
    every process, "probability_flow" runs there as k-diffusion's sample_heun (module
    docstring); "residual_exponential" is refused there.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d), returning the dtype of x
    process : any process of sgm_ref.processes
    n, d : int
        Number of points and dimension.
    rng : numpy.random.Generator
        The prior draw and every step's noise.
    T, t0 : float
        Horizon and early-stopping time, 0 < t0 < T <= process.t_max.
    n_steps : int
    method : {"euler_maruyama", "exponential", "residual_exponential", "probability_flow"}
    grid : {"geometric", "uniform"} or ndarray of shape (n_steps + 1,)
        "geometric" (the default, as for `sgm-ref sample`) puts more steps near t0,
        where the score changes fastest. An explicit grid must run from T down to t0.
    dtype : float64 or float32
        Of the points, the score call and the steps' arithmetic (module docstring).
    trajectory : bool
        Also return the points at every grid time, shape (n_steps + 1, n, d).

    Returns
    -------
    ndarray, shape (n, d) (and the trajectory if asked)

    Raises
    ------
    ValueError
        For bad arguments (T must also keep B(T) = int_0^T beta finite; a trajectory
        must fit in memory; a ScoreModel's dtype must be dtype; "residual_exponential"
        needs a variance-preserving process: all checked before any draw), a score
        that returns something other than a finite array of x's shape and dtype, or a
        sampler that diverges (its points overflow: steps too large for the scheme). An
        exception the score itself raises propagates as it is (a failure on diverged
        points is reported as the divergence).
    """
    _check_call(score, trajectory)
    process = check_process(process, variance_preserving=False)
    if not isinstance(method, str) or method not in METHODS:  # (a list was a TypeError: unhashable type)
        raise ValueError(f"method must be one of {sorted(METHODS)}, got {method!r}")
    if method == "residual_exponential":  # before the start points are drawn
        _check_residual(process)
    n_steps = check_count(n_steps, "n_steps")
    t0, T = _check_time_range(t0, T, process)  # first, so that a bad T or t0 is named as such
    if isinstance(grid, str):
        grid = time_grid(T, t0, n_steps, grid, process)
    else:
        grid = check_grid(grid, process)
        if grid.size != n_steps + 1 or grid[0] != T or grid[-1] != t0:
            raise ValueError(f"an explicit grid must have n_steps + 1 = {n_steps + 1} points from T = {T!r} "
                             f"to t0 = {t0!r}; got {grid.size} points from {float(grid[0])!r} to {float(grid[-1])!r}")
    if not _is_vp(process) and method != "probability_flow":  # the start N(0, sigma_T^2 I), the steps' int g^2
        _check_sigma2(process, T, "T", check_float_dtype(dtype))
    elif not _is_vp(process):  # karras_heun works in sigma, never forms g^2: only the start must fit
        _check_start_sigma(process, T, check_float_dtype(dtype))
    check_model_dtype(score, check_float_dtype(dtype))  # before the start points are drawn
    x = _prior(process, n, d, rng, dtype, n_steps + 1 if trajectory else 1, T)
    if method == "probability_flow":
        return probability_flow(score, process, grid, x, trajectory)
    return METHODS[method](score, process, grid, x, rng, trajectory)
