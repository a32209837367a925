"""score_sde's samplers (Song et al. 2021, "Score-Based Generative Modeling through SDEs").

Reverse SDE (the paper's eq. 6; Anderson 1982) of dX = f(t) X dt + g(t) dW:
dY = [f(t) Y - g(t)^2 s(Y, t)] dt + g(t) dW-bar,
run from T down the grid. With h_k = t_k - t_{k+1}, f_k = f(t_k), g2_k = g(t_k)^2,
s_k = s(y, t_k), xi ~ N(0, I):

    Euler–Maruyama (EulerMaruyamaPredictor):
        y <- y - h_k (f_k y - g2_k s_k) + sqrt(g2_k h_k) xi
    reverse diffusion (ReverseDiffusionPredictor, eq. 46 of the paper's appendix), through
    a forward step x_{t_k} = r_k x_{t_{k+1}} + sqrt(v_k) z:
        y <- y - (r_k - 1) y + v_k s_k + sqrt(v_k) xi
    Langevin corrector (LangevinCorrector, Algorithm 4 / 5), at t_k, n_corrector times:
        y <- y + e s(y, t_k) + sqrt(2 e) xi,
        e = 2 a_k (snr |xi| / |s|)^2 with |.| the batch mean of the rows' Euclidean norms
        and a_k = r_k^2, or e = langevin_step given (then the step is affine in y and has an
        exact law).

Two discretisations. discretization="exact" (the default) is the textbook scheme on the
given grid: h_k is the grid's own spacing and (r_k, v_k) the process's exact transition from
t_{k+1} to t_k (r_k = alpha_{t_k} / alpha_{t_{k+1}}, v_k = sigma_{t_k}^2 - r_k^2
sigma_{t_{k+1}}^2; for VE r = 1, v = sigma_k^2 - sigma_{k+1}^2), so the grid may be any.

discretization="score_sde" replays score_sde's own loop (sampling.py: pc_sampler and the
predictors and corrector; sde_lib.py: VPSDE and VESDE.discretize). Its grid is the N points
of its timesteps, linspace(T, eps, N), and it takes a step from every one of them (N steps,
the last one leaving the grid). The score is read at the grid's times, but r_k and v_k come
from tables of N entries indexed by i_k = int(t_k (N - 1) / T) (truncated):

    VP  beta_i = linspace(beta_min / N, beta_max / N, N)[i], r = sqrt(1 - beta), v = beta
    VE  sigma_i = exp(linspace(log sigma_min, log sigma_max, N))[i],
        r = 1, v = sigma_i^2 - sigma_{i-1}^2 (sigma_{-1} = 0)

and Euler–Maruyama steps by dt = -1/N from each point with f, g read there. Langevin's a_k =
r_k^2 is then score_sde's sde.alphas[i] (1 - beta_i for VP, 1 for VE). On a float32 grid (the
peer's own timesteps) the index is computed in float32, as the peer computes it: at N = 2000
the float64 product truncates one step lower once. The two schemes differ by O(1/N): for VP,
the reverse-diffusion predictor on linspace(1, 1e-3, N) and the exact transitions on the same
times with a last step to t = 0 have output laws KL 2.6e-4 (N = 100) and 1.1e-7 (N = 1000)
apart on the Gaussian target N((0.8, -0.4), [[0.6, 0.25], [0.25, 1.4]]) (replay_output_gaussian;
tests/test_replays.py::test_score_sde_discretization_against_the_exact_transitions).
euler_maruyama with step_size=1/N is that loop's Euler–Maruyama predictor alone.
"""

import numpy as np

from .._validation import check_count, check_real, check_real_array
from ..processes import VE, VP
from ._common import Noise, Path, as_state, check_choice, check_flag, score_at, start, transition

__all__ = ["euler_maruyama", "reverse_diffusion", "predictor_corrector"]


def _check_step_size(step_size, grid):
    if step_size is None:
        return grid[:-1] - grid[1:], grid[:-1]
    h = check_real(step_size, "step_size", low=0.0, low_open=True)
    if grid[-1] == 0.0:  # the score at t = 0 (undefined for the data) and a step to t = -h
        raise ValueError(f"with step_size a step starts from every grid time, the last from grid[-1] = 0 to "
                         f"-{h!r}, outside the process; end the grid at t0 > 0 (score_sde's timesteps "
                         f"linspace(T, eps, N), eps > 0), or drop step_size to step along the grid")
    return np.full(grid.size, h), grid


def euler_maruyama(score, process, grid, x, rng=None, trajectory=False, *, noise=None, step_size=None,
                   denoise=False):
    """Textbook Euler–Maruyama for the reverse SDE, as score_sde's EulerMaruyamaPredictor.

    y <- y - h_k (f(t_k) y - g(t_k)^2 s(y, t_k)) + sqrt(g(t_k)^2 h_k) xi_k: drift and noise
    variance frozen at the step's start (not integrated over it as in
    sgm_ref.samplers.euler_maruyama).

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    process : any process of sgm_ref.processes
    grid : array_like, shape (N + 1,)
        Decreasing times T = t_0 > ... > t_N >= 0.
    x : ndarray, shape (n, d)
        Start points at T.
    rng : numpy.random.Generator, optional
        Source of the noise; not with `noise` (passing both is refused).
    trajectory : bool
        Also return the states at every step, shape (steps + 1, n, d).
    noise : array_like, shape (steps, n, d), optional
        The standard normal draws xi_k, one per step (N of them; N + 1 with step_size).
    step_size : float, optional
        None: h_k = t_k - t_{k+1}, N steps. A float h: score_sde's loop (and diffusers'
        deprecated ScoreSdeVpScheduler, whose step_pred takes eps, not the score: it
        divides by -sigma_t), one step of size h from every grid point, N + 1 steps, the
        last from t_N to t_N - h; f and g are read at the grid points. The grid must then
        end at t_N > 0.
    denoise : bool
        Return the last step's mean, without its noise (score_sde's `denoise=True`; the
        draw is still consumed).

    Returns
    -------
    y : ndarray, shape (n, d), x's dtype (and the trajectory if asked)

    Raises
    ------
    ValueError
        Bad grid, points, score output, step_size (or step_size with a grid ending at 0);
        trajectory or denoise not True or False; rng missing, or given with noise, or noise
        of the wrong count.
    """
    process, grid, y, dtype = start(score, process, grid, x)
    denoise = check_flag(denoise, "denoise")
    h, times = _check_step_size(step_size, grid)
    f, g2 = process.f(times), process.g2(times)
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(times.size):
        s = score_at(score, y, times[k], dtype, k)
        xi = draws.draw()
        mean = y - h[k] * (f[k] * y - g2[k] * s)
        last = k == times.size - 1
        y = as_state(mean if (denoise and last) else mean + np.sqrt(g2[k] * h[k]) * xi, dtype)
        path.add(y)
    return path.result(y, draws)


def _reverse_diffusion_step(y, s, r, v, xi):
    return (2.0 - r) * y + v * s, np.sqrt(v) * xi


def _steps(process, grid, discretization, needs_table=True, grid_dtype=np.float64):
    """(times the steps start from, r, v, h) of the discretisation (module docstring); r and v
    are NaN where not needs_table and score_sde's VP table has no square root (Euler–Maruyama
    alone reads none of it). A float32 grid (the peer's own timesteps) has its table index
    computed in float32, as the peer computes it."""
    check_choice(discretization, "discretization", ("exact", "score_sde"))
    if discretization == "exact":
        r, v = transition(process, grid[:-1], grid[1:])
        return grid[:-1], r, v, grid[:-1] - grid[1:]
    if type(process) not in (VP, VE):
        raise ValueError(f"discretization='score_sde' replays score_sde's VPSDE and VESDE: process must be a VP or "
                         f"a VE, got {process!r}")
    N = grid.size
    if N < 2 or grid[-1] <= 0.0:
        raise ValueError("with discretization='score_sde' the grid is score_sde's timesteps linspace(T, eps, N): "
                         f"at least 2 times, all > 0 (got {N} ending at {float(grid[-1])!r})")
    if grid_dtype == np.float32:  # (t * (N - 1) / T) rounded as the float32 peer rounds it, then truncated
        index = np.floor(grid.astype(np.float32) * np.float32(N - 1) / np.float32(process.t_max)).astype(np.int64)
    else:
        index = np.floor(grid * (N - 1) / process.t_max).astype(np.int64)
    h = np.full(N, 1.0 / N)  # its Euler–Maruyama's dt = -1 / N
    if isinstance(process, VP):
        if process.beta_max / N >= 1.0 and not needs_table:
            return grid, np.full(N, np.nan), np.full(N, np.nan), h
        if process.beta_max / N >= 1.0:
            raise ValueError(f"with discretization='score_sde' a VP's largest step beta_max / N must be below 1 "
                             f"(sqrt(1 - beta)); got beta_max = {process.beta_max} on {N} times: use more")
        beta = np.linspace(process.beta_min / N, process.beta_max / N, N)[index]
        r, v = np.sqrt(1.0 - beta), beta
    else:
        sigmas = np.exp(np.linspace(np.log(process.sigma_min), np.log(process.sigma_max), N))
        adjacent = np.where(index == 0, 0.0, sigmas[index - 1])
        r, v = np.ones(N), sigmas[index] ** 2 - adjacent**2
    return grid, r, v, h


def reverse_diffusion(score, process, grid, x, rng=None, trajectory=False, *, noise=None, denoise=False,
                      discretization="exact"):
    """score_sde's ReverseDiffusionPredictor: y <- (2 - r_k) y + v_k s(y, t_k) + sqrt(v_k) xi_k.

    The reverse of the discretised forward step x_k = x_{k+1} + f(x_{k+1}) + G z with
    f(x) = (r - 1) x, G^2 = v, evaluated at the current point as score_sde does. (r_k, v_k):
    the process's exact forward transition from t_{k+1} to t_k (discretization="exact", one
    step and one draw per grid interval, N), or score_sde's tables ("score_sde": a step and
    a draw from every grid point; VP and VE only; module docstring). Arguments, return and
    Raises as euler_maruyama (no step_size; also for an unknown discretization, or
    "score_sde" with another process or a grid reaching 0).
    """
    grid_dtype = np.asarray(grid).dtype
    process, grid, y, dtype = start(score, process, grid, x)
    denoise = check_flag(denoise, "denoise")
    times, r, v, _ = _steps(process, grid, discretization, grid_dtype=grid_dtype)
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(times.size):
        mean, kick = _reverse_diffusion_step(y, score_at(score, y, times[k], dtype, k), r[k], v[k], draws.draw())
        y = as_state(mean if (denoise and k == times.size - 1) else mean + kick, dtype)
        path.add(y)
    return path.result(y, draws)


def predictor_corrector(score, process, grid, x, rng=None, trajectory=False, *, noise=None,
                        predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_corrector=1,
                        langevin_step=None, denoise=True, discretization="exact"):
    """score_sde's pc_sampler: at each t_k, n_corrector Langevin steps, then a predictor step.

    Corrector (LangevinCorrector), n_corrector times at t_k:
        y <- y + e s(y, t_k) + sqrt(2 e) xi,   e = 2 r_k^2 (snr |xi| / |s|)^2
    with |.| the mean over the batch of the rows' norms (score_sde's step size; it depends
    on the whole batch, so the step is not affine and has no exact Gaussian law), or
    e = langevin_step[k] if given. Predictor: "reverse_diffusion", "euler_maruyama" (the
    grid's h_k) or None (corrector only, score_sde's NonePredictor).

    Noise: per step, n_corrector draws (corrector) then one (predictor), in that order:
    N (n_corrector + 1) draws with both. denoise=True (score_sde's default) returns the
    last predictor step's mean: its draw is consumed but not added. With predictor=None
    denoise changes nothing: score_sde's NonePredictor returns (x, x), so its x_mean is
    the corrector's last state, noise included.

    Returns and Raises as euler_maruyama (also for an unknown predictor/corrector, both None,
    or langevin_step not positive).

    Parameters
    ----------
    score, process, grid, x, rng, trajectory, noise
        As euler_maruyama.
    predictor : {"reverse_diffusion", "euler_maruyama", None}
    corrector : {"langevin", None}
    snr : float > 0
        score_sde's target signal-to-noise ratio (0.16 for its VE models).
    n_corrector : int >= 1
    langevin_step : float or array_like of shape (N,), optional
        Fixed Langevin step sizes e_k instead of score_sde's batch rule, one per step (with
        discretization="score_sde", one per grid point).
    denoise : bool
    discretization : {"exact", "score_sde"}
        The process's exact transitions on the grid's intervals, or score_sde's own loop:
        a step from every grid point, its tables for r_k, v_k and a_k, and Euler–Maruyama
        steps of 1/N (module docstring; VP and VE only).
    """
    grid_dtype = np.asarray(grid).dtype
    process, grid, y, dtype = start(score, process, grid, x)
    denoise = check_flag(denoise, "denoise")
    if predictor is not None:
        check_choice(predictor, "predictor", ("reverse_diffusion", "euler_maruyama"))
    if corrector is not None:
        check_choice(corrector, "corrector", ("langevin",))
    if predictor is None and corrector is None:
        raise ValueError("predictor and corrector cannot both be None")
    snr = check_real(snr, "snr", low=0.0, low_open=True)
    n_corrector = check_count(n_corrector, "n_corrector")
    times, r, v, h = _steps(process, grid, discretization, grid_dtype=grid_dtype,
                            needs_table=predictor == "reverse_diffusion" or (corrector is not None
                                                                             and langevin_step is None))
    N = times.size
    if langevin_step is not None:
        e = np.broadcast_to(check_real_array(langevin_step, "langevin_step"), (N,)) if \
            np.ndim(langevin_step) == 0 else check_real_array(langevin_step, "langevin_step")
        if e.shape != (N,) or np.any(e <= 0):
            raise ValueError(f"langevin_step must be a positive number or {N} positive numbers (one per step)")
    f, g2 = process.f(times), process.g2(times)
    draws = Noise(rng, noise, y.shape, dtype)
    path = Path(trajectory, y, dtype)
    for k in range(N):
        last_k = k == N - 1
        if corrector is not None:
            for j in range(n_corrector):
                s = score_at(score, y, times[k], dtype, k)
                xi = draws.draw()
                if langevin_step is None and y.shape[0] == 0:
                    # no rows: the batch's mean norms are undefined (0 / 0) and nothing moves; the empty
                    # batch comes back, as from every replay (it raised "the step overflows ... mean
                    # norm is nan", with a RuntimeWarning; review)
                    step = 0.0
                elif langevin_step is None:
                    with np.errstate(divide="ignore", over="ignore"):  # |s| = inf (x ~ 1e300): a step of 0
                        s_norm = np.mean(np.linalg.norm(s, axis=1))
                        ratio = np.mean(np.linalg.norm(xi, axis=1)) / s_norm
                        step = 2.0 * r[k] ** 2 * (snr * ratio) ** 2
                    if not np.isfinite(step):  # score_sde's own step is inf here, and its x NaN
                        raise ValueError(f"the Langevin corrector's step 2 r^2 (snr |xi| / |score|)^2 overflows at "
                                         f"step {k} (t = {float(times[k]):.6g}): the score's mean norm is "
                                         f"{float(s_norm):.3g}; pass langevin_step")
                else:
                    step = e[k]
                y = as_state(y + step * s + np.sqrt(2.0 * step) * xi, dtype)
        if predictor is not None:
            s = score_at(score, y, times[k], dtype, k)
            xi = draws.draw()
            if predictor == "reverse_diffusion":
                mean, kick = _reverse_diffusion_step(y, s, r[k], v[k], xi)
            else:
                mean, kick = y - h[k] * (f[k] * y - g2[k] * s), np.sqrt(g2[k] * h[k]) * xi
            y = as_state(mean if (denoise and last_k) else mean + kick, dtype)
        path.add(y)
    return path.result(y, draws)
