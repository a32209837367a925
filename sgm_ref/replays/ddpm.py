"""DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song, Meng & Ermon 2021).

Both step from t = t_k to s = t_{k+1} through the forward transition x_t = r x_s + sqrt(v) z
(r = alpha_t / alpha_s, v = sigma_t^2 - r^2 sigma_s^2; for a DDPM schedule with s the
previous timestep, r^2 = abar_t / abar_s = 1 - beta_t and v = beta_t), with the model's
x0_hat = (y - sigma_t eps_hat) / alpha_t and eps_hat = -sigma_t s(y, t):

    DDPM (Ho et al. eq. 6-7, Algorithm 2), the posterior q(x_s | x_t, x0_hat):
        y <- (r sigma_s^2 / sigma_t^2) y + (alpha_s v / sigma_t^2) x0_hat + sqrt(var) xi,
        var = beta-tilde = v sigma_s^2 / sigma_t^2 ("beta_tilde", diffusers' fixed_small)
           or beta = v ("beta", diffusers' fixed_large),
    DDIM (Song et al. eq. 12; eta as their eq. 16), sigma_eta^2 = eta^2 v sigma_s^2 / sigma_t^2:
        y <- alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta xi.

DDIM with eta = 1 is DDPM with beta-tilde; eta = 0 is deterministic. A step landing on
sigma_s = 0 (the data: diffusers' last step to alphas_cumprod = 1, a grid ending at t = 0)
adds no noise, as Algorithm 2's z = 0 at t = 1. diffusers' DDPMScheduler draws there too
when that step starts above timestep 0 ("trailing" spacing, or "leading" with
steps_offset = 1): ddpm_ancestral(final_noise="diffusers") follows it.

Timestep subsets: ddim_timesteps gives diffusers' DDIMScheduler.set_timesteps and
timestep_grid turns timesteps of a DDPM process into this module's grid (times (i + 1) / N
and a final 0). Note diffusers' DDIM steps from timestep i to i - N_train // N, which is
the next timestep of the list only for "leading" spacing (and "trailing" when N divides
N_train); this replay always steps to the next grid time.

The peer's own constants. By default every coefficient comes from the process in float64
(DDPM.alphas_cumprod(), exact to float64 rounding). A peer's discretisation includes its
own rounded constants: diffusers keeps alphas_cumprod in float32, which differ from the
float64 ones by up to 3.6e-7 relative (linear), 9.3e-7 (scaled_linear) and 1.3e-5 at
squaredcos_cap_v2's last timestep, its beta capped at 0.999 (5.6e-7 before it; tests/
test_replays.py::test_diffusers_float32_table_against_the_float64_one). alphas_cumprod=
"diffusers" (diffusers' float32 constants, DDPM.diffusers_alphas_cumprod(), bit for bit) or
an array of N values makes the step use them, abar_t = alphas_cumprod[i] at timestep i
(t = (i + 1) / N) and abar = 1 at t = 0, as the peer does:

    x0_hat = (y - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t),   r^2 = abar_t / abar_s,
    v = (abar_s - abar_t) / abar_s,   sigma_t^2 = 1 - abar_t,   alpha_s = sqrt(abar_s),

each computed in float64 from the given values (abar_s - abar_t and 1 - abar_t are exact
for float32 inputs). A zero terminal SNR (diffusers' rescale_betas_zero_snr=True, whose
table ends at 0) is replayed on grids that start below that timestep, and on those that
start at it for an x0 or v model (prediction_type below; there eps_hat = y, and for v
x0_hat = -v); an eps model's x0_hat is undefined there and such a grid is refused. The
model's eps_hat = -sigma_t s(y, t) still uses the process's own sigma_t: the score
function is the model, in the process's convention; the constants are the sampler's.
The grid must then lie on the process's timesteps (timestep_grid).

A model that predicts x0 or v rather than eps (diffusers' prediction_type "sample" or
"v_prediction") is turned into x0_hat and eps_hat by the peer with those constants too:

    "sample"        x0_hat = x0_model,   eps_hat = (y - sqrt(abar_t) x0_hat) / sqrt(1 - abar_t)
    "v_prediction"  x0_hat = sqrt(abar_t) y - sqrt(1 - abar_t) v,
                    eps_hat = sqrt(abar_t) v + sqrt(1 - abar_t) y

prediction_type names that output; the replay converts the score to it with the process's
constants (the model) and then follows the peer. Taking eps_hat from the score instead
(prediction_type="epsilon", the default) parts from diffusers run in float64 on its own
table by that table's float32 rounding: 2e-7 relative at 20 steps, up to 5e-7. Without
alphas_cumprod every conversion uses the process's constants and prediction_type changes
nothing but rounding.
"""

import numpy as np

from .._validation import check_count, check_real, check_real_array
from ..processes import DDPM
from ..conventions import convert
from ._common import Noise, Path, as_state, check_choice, predict, score_at, start, transition

__all__ = ["ddpm_ancestral", "ddim", "ddim_timesteps", "timestep_grid", "SPACINGS"]

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_inference_steps, num_train_timesteps=1000, spacing="leading", steps_offset=0):
    """The decreasing integer timesteps of diffusers' DDIMScheduler.set_timesteps.

    With N = num_train_timesteps, n = num_inference_steps (Lin et al. 2024, Table 2):

        "leading"   i_k = (n - 1 - k) (N // n) + steps_offset
        "trailing"  round(arange(N, 0, -N / n)) - 1, about round(N - k N / n) - 1
                    for k = 0..n-1 (NumPy's arange and round half to even; below)
        "linspace"  round(linspace(0, N - 1, n)) reversed

    As diffusers does, steps_offset applies to "leading" only. For "trailing" the values
    N - k N / n are those of NumPy's `arange(N, 0, -N / n)`, which diffusers rounds: arange
    steps by the difference of its first two values, (N - N / n) - N, not by N / n, so a
    value can fall a rounding below the exact one and round one lower (n = 48: 936 where
    the exact 937.5 gives 937).

    Returns ndarray of int64, shape (n,), decreasing.

    Raises
    ------
    ValueError
        n not an integer in 1..N, unknown spacing, a negative steps_offset; "trailing"
        where that arange has n + 1 values (n = 61, 103, ... at N = 1000): diffusers then
        returns n + 1 timesteps, the last -1, which indexes its table from the end and
        which no replay can follow.
    """
    N = check_count(num_train_timesteps, "num_train_timesteps", minimum=2)
    n = check_count(num_inference_steps, "num_inference_steps")
    if n > N:
        raise ValueError(f"num_inference_steps must be <= num_train_timesteps = {N}, got {n}")
    check_choice(spacing, "spacing", SPACINGS)
    offset = check_count(steps_offset, "steps_offset", minimum=0)
    if spacing == "leading":
        return (np.arange(n)[::-1] * (N // n) + offset).astype(np.int64)
    if spacing == "trailing":
        values = np.arange(N, 0, -(N / n))
        if values.size != n:
            raise ValueError(f"num_inference_steps = {n} with spacing 'trailing' and num_train_timesteps = {N}: "
                             f"diffusers' timesteps np.round(np.arange({N}, 0, -{N}/{n})) - 1 are {values.size}, "
                             f"the last -1 (not a timestep); choose another num_inference_steps")
        return (np.round(values) - 1).astype(np.int64)
    return np.round(np.linspace(0, N - 1, n))[::-1].astype(np.int64)


def timestep_grid(process, timesteps, final=0.0):
    """Times (i + 1) / N of a DDPM process's decreasing timesteps, then `final` (default 0, the data).

    Raises ValueError for a process that is not a DDPM, timesteps empty, not 1-D, out of
    range or not strictly decreasing, or a final time not below the last timestep's.
    """
    if not isinstance(process, DDPM):
        raise ValueError(f"process must be a DDPM schedule, got {process!r}")
    steps = np.asarray(timesteps)
    if steps.ndim > 1 or steps.size == 0:
        raise ValueError(f"timesteps must be a non-empty 1-D sequence of timesteps (as diffusers' "
                         f"scheduler.timesteps), got shape {steps.shape}")
    steps = steps.reshape(-1)
    N = process.num_train_timesteps
    if steps.dtype.kind in "iuf" and np.all(np.isfinite(steps)):  # else time_of_timestep says what is wrong
        out = (steps < 0) | (steps > N - 1)
        if np.any(out):
            k = int(np.argmax(out))
            hint = (f" (steps_offset = 1 with num_inference_steps = {N} does that: diffusers' own step cannot "
                    f"index it either)") if steps[k] == N else ""
            raise ValueError(f"timesteps must lie in 0..{N - 1}, got timesteps[{k}] = {steps[k].item()!r}" + hint)
    t = np.asarray(process.time_of_timestep(steps), dtype=np.float64)
    final = check_real(final, "final", low=0.0)
    grid = np.append(t, final)
    if t.size and final == t[-1]:
        raise ValueError(f"final = {final!r} is the last timestep's own time: a step from it to itself (diffusers' "
                         f"DDIM from timestep 0 with set_alpha_to_one=False) changes nothing; drop that timestep, "
                         f"or use steps_offset=1")
    if np.any(np.diff(grid) >= 0):
        raise ValueError("timesteps must be strictly decreasing and final below the last one's time")
    return grid


def _posterior(process, grid, alphas_cumprod=None, prediction_type="epsilon"):
    """Per step (r, v, sigma_t^2, sigma_s^2, alpha_s, alpha_t) as float64 arrays of length N,
    from the process, or from the peer's alphas_cumprod (module docstring)."""
    abar = _constants(process, grid, alphas_cumprod, prediction_type)
    if abar is None:
        s2_t = process.sigma2(grid[:-1])
        if np.any(s2_t == 0):  # sigma_t^2 underflows (FlowMatching, EDM at t < 1e-154): the ratios are 0 / 0
            k = int(np.argmax(s2_t == 0))
            raise ValueError(f"grid[{k}] = {float(grid[k])!r}: sigma_t^2 underflows to 0 in float64 for {process!r}, "
                             "so the step from it is undefined (0 / 0); start the steps at larger times")
        r, v = transition(process, grid[:-1], grid[1:])
        return r, v, s2_t, process.sigma2(grid[1:]), process.alpha(grid[1:]), None
    a_t, a_s = abar[:-1], abar[1:]
    # a_s - a_t and 1 - a are exact in float64 for float32 constants: one rounding each
    return np.sqrt(a_t / a_s), (a_s - a_t) / a_s, 1.0 - a_t, 1.0 - a_s, np.sqrt(a_s), np.sqrt(a_t)


def _constants(process, grid, alphas_cumprod, prediction_type="epsilon"):
    """abar at each grid time from the peer's alphas_cumprod (1 at t = 0), or None. A zero
    abar (only at grid[0]) is refused for an eps model, for which x0_hat is undefined."""
    if alphas_cumprod is None:
        return None
    if not isinstance(process, DDPM):
        raise ValueError(f"alphas_cumprod needs a DDPM process (its timesteps index them), got {process!r}")
    N = process.num_train_timesteps
    if isinstance(alphas_cumprod, str):
        if alphas_cumprod != "diffusers":
            raise ValueError(f"alphas_cumprod must be 'diffusers', an array of {N} values or None, "
                             f"got {alphas_cumprod!r}")
        table = process.diffusers_alphas_cumprod().astype(np.float64)
    else:
        table = check_real_array(alphas_cumprod, "alphas_cumprod")
        if table.shape != (N,):
            raise ValueError(f"alphas_cumprod must have shape ({N},) (one per timestep of {process!r}), "
                             f"got shape {table.shape}")
        if np.any(table < 0) or np.any(table > 1) or np.any(np.diff(table) >= 0):
            raise ValueError("alphas_cumprod must be strictly decreasing values in [0, 1]")
    index, data = _timesteps_of_grid(process, grid, "alphas_cumprod")
    abar = np.where(data, 1.0, table[np.where(data, 0, index)])
    clean = ~data[:-1] & (abar[:-1] == 1.0)  # only alphas_cumprod[0] can be 1 (diffusers' beta_start=0)
    if np.any(clean):
        k = int(np.argmax(clean))
        raise ValueError(f"alphas_cumprod[{index[k]}] = 1 (no noise at timestep {index[k]}, e.g. diffusers' "
                         f"beta_start=0) at grid[{k}], where a step starts: the step's coefficients are 0 / 0 "
                         f"there (diffusers' own step gives NaN); that timestep is the data already: drop it "
                         f"from the timesteps (timestep_grid(process, timesteps[:-1]) steps to the data instead)")
    if abar[0] == 0 and prediction_type == "epsilon":  # only the last timestep can be 0, so only grid[0]
        raise ValueError(f"alphas_cumprod[{index[0]}] = 0 (a zero terminal SNR: diffusers' rescale_betas_zero_snr"
                         f"=True) at the grid's first timestep {index[0]}: x0_hat = (x - sqrt(1 - abar) eps) / "
                         f"sqrt(abar) is undefined there (diffusers' own step gives NaN for an eps model); start "
                         f"below timestep {index[0]} (e.g. 'leading' spacing), or replay a v or x0 model "
                         f"(prediction_type='v_prediction' or 'sample')")
    return abar


def _timesteps_of_grid(process, grid, what):
    """(timestep i of each grid time t = (i + 1) / N, 0 where t = 0; the mask of t = 0) of a
    DDPM process; ValueError naming `what` for a time that is neither."""
    N = process.num_train_timesteps
    steps = grid * N - 1.0
    index = np.round(steps)
    data = grid == 0.0
    off = ~data & ((np.abs(steps - index) > 1e-9 * N) | (index < 0))
    if np.any(off):
        k = int(np.argmax(off))
        raise ValueError(f"with {what} the grid must lie on the timesteps' times (i + 1) / N (and may end "
                         f"at 0): grid[{k}] = {float(grid[k])!r} is not one; build it with timestep_grid")
    return np.where(data, 0, index).astype(np.int64), data


PREDICTION_TYPES = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}
DIFFUSERS_VARIANCE_TYPES = ("fixed_small", "fixed_small_log", "fixed_large", "fixed_large_log", "learned",
                            "learned_range")


def _predictions(score, y, t, process, dtype, k, alpha_t, sigma2_t, prediction_type):
    """(x0_hat, eps_hat) at (y, t): the model's output of prediction_type (the score converted
    with the process's constants) turned into both with the peer's constants (alpha_t,
    sigma_t^2), as diffusers' step does."""
    out = predict(score, y, t, process, dtype, k, PREDICTION_TYPES[prediction_type])
    sigma_t = np.sqrt(sigma2_t)
    if prediction_type == "epsilon":
        return (y - sigma_t * out) / alpha_t, out
    if prediction_type == "sample":
        return out, (y - alpha_t * out) / sigma_t
    return alpha_t * y - sigma_t * out, alpha_t * out + sigma_t * y


def ddpm_ancestral(score, process, grid, x, rng=None, trajectory=False, *, noise=None, variance="beta_tilde",
                   alphas_cumprod=None, final_noise="none", prediction_type="epsilon"):
    """Ancestral sampling of Ho et al. (2020, Algorithm 2), as diffusers' DDPMScheduler.step.

    See the module docstring for the step. variance="beta_tilde" (the posterior's,
    diffusers' "fixed_small") or "beta" (diffusers' "fixed_large"). One noise draw per
    step whose end has sigma_s > 0 (N, or N - 1 when the grid ends on the data).

    The step to the data. Algorithm 2 adds no noise there (z = 0 at its t = 1), and
    neither does this replay by default (final_noise="none"). diffusers adds noise on
    every step from a timestep t > 0, and with "trailing" spacing, or "leading" with
    steps_offset = 1, the last step starts above 0. With variance "beta" its variance there
    is beta = 1 - abar_t: a draw of standard deviation 0.17 from timestep 49 (20 "trailing"
    steps of the linear schedule). With
    "beta_tilde" the posterior variance is 0 there, and diffusers clamps it (every step's)
    to 1e-20, adding 1e-10 times a draw. final_noise="diffusers" follows diffusers. It needs
    a DDPM process and a grid on its timesteps, and draws once more when the last step
    starts above timestep 0.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    process : any process (a DDPM schedule for the discrete sampler; see timestep_grid)
    grid : array_like, shape (N + 1,), decreasing, may end at 0
    x : ndarray, shape (n, d)
    rng : numpy.random.Generator, optional
        Source of the noise; not with `noise` (passing both is refused).
    trajectory : bool
    noise : array_like, shape (n_draws, n, d), optional
    variance : {"beta_tilde", "beta"}
    alphas_cumprod : None, "diffusers" or array_like of shape (num_train_timesteps,)
        The peer's own constants for the step (module docstring); None: the process's
        float64 ones. Needs a DDPM process and a grid on its timesteps.
    final_noise : {"none", "diffusers"}
        Noise on a step to the data (above): none, or diffusers' rule.
    prediction_type : {"epsilon", "sample", "v_prediction"}
        What the peer's model outputs (diffusers' option): with alphas_cumprod, x0_hat is
        formed from it with the peer's constants (module docstring).

    Returns
    -------
    y : ndarray, shape (n, d) (and the trajectory if asked)

    Raises
    ------
    ValueError
        Bad arguments (diffusers' variance_type names too, with the replay's names for
        them), score output, missing rng, rng and noise both given, or a wrong count of
        noise draws;
        final_noise="diffusers" without a DDPM process or off its timesteps; a grid that
        starts where alphas_cumprod is 0 with prediction_type="epsilon".
    """
    process, grid, y, dtype = start(score, process, grid, x)
    if isinstance(variance, str) and variance in DIFFUSERS_VARIANCE_TYPES:
        raise ValueError(f"variance must be one of ('beta_tilde', 'beta'), got diffusers' variance_type {variance!r}: "
                         "its 'fixed_small' (and 'fixed_small_log') is 'beta_tilde', 'fixed_large' is 'beta'; "
                         "'fixed_large_log' and the learned variances are not replayed")
    check_choice(variance, "variance", ("beta_tilde", "beta"))
    check_choice(final_noise, "final_noise", ("none", "diffusers"))
    check_choice(prediction_type, "prediction_type", tuple(PREDICTION_TYPES))
    r, v, s2_t, s2_s, alpha_s, alpha_t = _posterior(process, grid, alphas_cumprod, prediction_type)
    var = v * s2_s / s2_t if variance == "beta_tilde" else v
    noisy = s2_s > 0
    if final_noise == "diffusers":
        if not isinstance(process, DDPM):
            raise ValueError(f"final_noise='diffusers' needs a DDPM process (its timesteps decide), got {process!r}")
        index, data = _timesteps_of_grid(process, grid, "final_noise='diffusers'")
        noisy = noisy | (~data[:-1] & (index[:-1] > 0))  # diffusers draws from every timestep t > 0
        if variance == "beta_tilde":
            var = np.maximum(var, 1e-20)  # diffusers' clamp, which only the step to the data reaches
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(grid.size - 1):
        if alpha_t is None:
            x0 = predict(score, y, grid[k], process, dtype, k, "x0")
        else:
            x0 = _predictions(score, y, grid[k], process, dtype, k, alpha_t[k], s2_t[k], prediction_type)[0]
        mean = (r[k] * s2_s[k] / s2_t[k]) * y + (alpha_s[k] * v[k] / s2_t[k]) * x0
        y = as_state(mean + np.sqrt(var[k]) * draws.draw() if noisy[k] else mean, dtype)
        path.add(y)
    return path.result(y, draws)


def ddim(score, process, grid, x, rng=None, trajectory=False, *, noise=None, eta=0.0, alphas_cumprod=None,
         prediction_type="epsilon"):
    """DDIM (Song, Meng & Ermon 2021, eq. 12), as diffusers' DDIMScheduler.step.

    y <- alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta xi with
    sigma_eta = eta sqrt(v sigma_s^2 / sigma_t^2) (module docstring). One noise draw per
    step with sigma_eta > 0: none for eta = 0, else one per step whose end has sigma_s > 0.
    Arguments (alphas_cumprod and prediction_type too), return and Raises as ddpm_ancestral,
    with eta >= 0 instead of variance.
    """
    process, grid, y, dtype = start(score, process, grid, x)
    eta = check_real(eta, "eta", low=0.0)
    check_choice(prediction_type, "prediction_type", tuple(PREDICTION_TYPES))
    r, v, s2_t, s2_s, alpha_s, alpha_t = _posterior(process, grid, alphas_cumprod, prediction_type)
    with np.errstate(over="ignore", invalid="ignore"):  # eta = 1e300: inf (refused below), not OverflowError
        var_eta = np.float64(eta) ** 2 * v * s2_s / s2_t
    if eta <= 1.0:  # v <= sigma_t^2: var_eta > sigma_s^2 is a rounding (FlowMatching 0.55 -> 1e-8; review)
        var_eta = np.minimum(var_eta, s2_s)
    if np.any(var_eta > s2_s) or np.any(np.isnan(var_eta)):
        raise ValueError(f"eta = {eta} makes sigma_eta exceed sigma_s on this grid; use eta <= 1")
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(grid.size - 1):
        if alpha_t is None:
            s = score_at(score, y, grid[k], dtype, k)
            x0 = convert(s, y, np.full(y.shape[0], grid[k]), process, "score", "x0")
            eps = -np.sqrt(s2_t[k]) * s
        else:  # the model's output (the process's constants), the peer's in x0_hat and eps_hat
            x0, eps = _predictions(score, y, grid[k], process, dtype, k, alpha_t[k], s2_t[k], prediction_type)
        mean = alpha_s[k] * x0 + np.sqrt(s2_s[k] - var_eta[k]) * eps
        y = as_state(mean + np.sqrt(var_eta[k]) * draws.draw() if var_eta[k] > 0 else mean, dtype)
        path.add(y)
    return path.result(y, draws)
