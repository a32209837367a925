"""DDPM ancestral sampling (Ho et al. 2020) and DDIM (Song, Meng & Ermon 2021).

Both step from t = t_k to s = t_{k+1} through the forward transition x_t = r x_s + sqrt(v) z
(r = alpha_t / alpha_s, v = sigma_t^2 - r^2 sigma_s^2; for a DDPM schedule with s the
previous timestep, r^2 = abar_t / abar_s = 1 - beta_t and v = beta_t), with the model's
x0_hat = (y - sigma_t eps_hat) / alpha_t and eps_hat = -sigma_t s(y, t):

    DDPM (Ho et al. eq. 6-7, Algorithm 2), the posterior q(x_s | x_t, x0_hat):
        y <- (r sigma_s^2 / sigma_t^2) y + (alpha_s v / sigma_t^2) x0_hat + sqrt(var) xi,
        var = beta-tilde = v sigma_s^2 / sigma_t^2 ("beta_tilde", diffusers' fixed_small)
           or beta = v ("beta", diffusers' fixed_large),
    DDIM (Song et al. eq. 12), with sigma_eta^2 = eta^2 v sigma_s^2 / sigma_t^2:
        y <- alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta xi.

DDIM with eta = 1 is DDPM with beta-tilde; eta = 0 is deterministic. A step landing on
sigma_s = 0 (the data: diffusers' last step to alphas_cumprod = 1, a grid ending at t = 0)
adds no noise, as Algorithm 2's z = 0 at t = 1.

Timestep subsets: ddim_timesteps gives diffusers' DDIMScheduler.set_timesteps and
timestep_grid turns timesteps of a DDPM process into this module's grid (times (i + 1) / N
and a final 0). Note diffusers' DDIM steps from timestep i to i - N_train // N, which is
the next timestep of the list only for "leading" spacing (and "trailing" when N divides
N_train); this replay always steps to the next grid time.
"""

import numpy as np

from .._validation import check_count, check_real
from ..processes import DDPM
from ..conventions import convert
from ._common import Noise, Path, as_state, check_choice, predict, score_at, start, transition

__all__ = ["ddpm_ancestral", "ddim", "ddim_timesteps", "timestep_grid", "SPACINGS"]

SPACINGS = ("leading", "trailing", "linspace")


def ddim_timesteps(num_inference_steps, num_train_timesteps=1000, spacing="leading", steps_offset=0):
    """The decreasing integer timesteps of diffusers' DDIMScheduler.set_timesteps.

    With N = num_train_timesteps, n = num_inference_steps (Lin et al. 2024, Table 2):

        "leading"   i_k = (n - 1 - k) (N // n) + steps_offset
        "trailing"  round(N - k N / n) - 1 for k = 0..n-1 (round half to even)
        "linspace"  round(linspace(0, N - 1, n)) reversed

    Returns ndarray of int64, shape (n,), decreasing.

    Raises
    ------
    ValueError
        n not an integer in 1..N, unknown spacing, a negative steps_offset.
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
        return (np.round(N - np.arange(n) * (N / n)) - 1).astype(np.int64)
    return np.round(np.linspace(0, N - 1, n))[::-1].astype(np.int64)


def timestep_grid(process, timesteps, final=0.0):
    """Times (i + 1) / N of a DDPM process's decreasing timesteps, then `final` (default 0, the data).

    Raises ValueError for a process that is not a DDPM, timesteps out of range, not
    strictly decreasing, or a final time not below the last timestep's.
    """
    if not isinstance(process, DDPM):
        raise ValueError(f"process must be a DDPM schedule, got {process!r}")
    t = np.asarray(process.time_of_timestep(np.asarray(timesteps)), dtype=np.float64).reshape(-1)
    final = check_real(final, "final", low=0.0)
    grid = np.append(t, final)
    if np.any(np.diff(grid) >= 0):
        raise ValueError("timesteps must be strictly decreasing and final below the last one's time")
    return grid


def _posterior(process, grid):
    """Per step (r, v, sigma_t^2, sigma_s^2, alpha_s) as float64 arrays of length N."""
    r, v = transition(process, grid[:-1], grid[1:])
    return r, v, process.sigma2(grid[:-1]), process.sigma2(grid[1:]), process.alpha(grid[1:])


def ddpm_ancestral(score, process, grid, x, rng=None, trajectory=False, *, noise=None, variance="beta_tilde"):
    """Ancestral sampling of Ho et al. (2020, Algorithm 2), as diffusers' DDPMScheduler.step.

    See the module docstring for the step. variance="beta_tilde" (the posterior's,
    diffusers' "fixed_small") or "beta" (diffusers' "fixed_large"). One noise draw per
    step whose end has sigma_s > 0 (N, or N - 1 when the grid ends on the data).

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    process : any process (a DDPM schedule for the discrete sampler; see timestep_grid)
    grid : array_like, shape (N + 1,), decreasing, may end at 0
    x : ndarray, shape (n, d)
    rng : numpy.random.Generator, optional
    trajectory : bool
    noise : array_like, shape (n_draws, n, d), optional
    variance : {"beta_tilde", "beta"}

    Returns
    -------
    y : ndarray, shape (n, d) (and the trajectory if asked)

    Raises
    ------
    ValueError
        Bad arguments, score output, missing rng or a wrong count of noise draws.
    """
    process, grid, y, dtype = start(score, process, grid, x)
    check_choice(variance, "variance", ("beta_tilde", "beta"))
    r, v, s2_t, s2_s, alpha_s = _posterior(process, grid)
    var = v * s2_s / s2_t if variance == "beta_tilde" else v
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(grid.size - 1):
        x0 = predict(score, y, grid[k], process, dtype, k, "x0")
        mean = (r[k] * s2_s[k] / s2_t[k]) * y + (alpha_s[k] * v[k] / s2_t[k]) * x0
        y = as_state(mean + np.sqrt(var[k]) * draws.draw() if s2_s[k] > 0 else mean, dtype)
        path.add(y)
    return path.result(y, draws)


def ddim(score, process, grid, x, rng=None, trajectory=False, *, noise=None, eta=0.0):
    """DDIM (Song, Meng & Ermon 2021, eq. 12), as diffusers' DDIMScheduler.step.

    y <- alpha_s x0_hat + sqrt(sigma_s^2 - sigma_eta^2) eps_hat + sigma_eta xi with
    sigma_eta = eta sqrt(v sigma_s^2 / sigma_t^2) (module docstring). One noise draw per
    step with sigma_eta > 0: none for eta = 0, else one per step whose end has sigma_s > 0.
    Arguments, return and Raises as ddpm_ancestral, with eta >= 0 instead of variance.
    """
    process, grid, y, dtype = start(score, process, grid, x)
    eta = check_real(eta, "eta", low=0.0)
    r, v, s2_t, s2_s, alpha_s = _posterior(process, grid)
    var_eta = eta**2 * v * s2_s / s2_t
    if np.any(var_eta > s2_s):
        raise ValueError(f"eta = {eta} makes sigma_eta exceed sigma_s on this grid; use eta <= 1")
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(grid.size - 1):
        s = score_at(score, y, grid[k], dtype, k)
        x0 = convert(s, y, np.full(y.shape[0], grid[k]), process, "score", "x0")
        eps = -np.sqrt(s2_t[k]) * s
        mean = alpha_s[k] * x0 + np.sqrt(s2_s[k] - var_eta[k]) * eps
        y = as_state(mean + np.sqrt(var_eta[k]) * draws.draw() if var_eta[k] > 0 else mean, dtype)
        path.add(y)
    return path.result(y, draws)
