"""Samplers on sigma grids: Karras et al. (2022, "Elucidating the Design Space of
Diffusion-Based Generative Models", EDM) and DPM-Solver++(2M) (Lu et al. 2022), as
k-diffusion's sample_euler, sample_heun, sample_euler_ancestral and sample_dpmpp_2m.

They integrate the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma of the
variance-exploding form x = x0 + sigma z. Any process maps to it (Karras et al. eq. 4;
k-diffusion's VP wrappers): at time t, sigma_hat = sigma_t / alpha_t = e^{-lambda_t / 2},
x_hat = x / alpha_t, and the denoiser is D(x_hat; sigma_hat) = E[x0 | x_t = alpha_t x_hat],
the score converted to x0 (sgm_ref.conventions). For EDM (alpha = 1, sigma = t) the grid
is k-diffusion's sigmas themselves. The grid may end at a time with sigma = 0 (EDM t = 0,
k-diffusion's appended 0): the step onto it is the Euler step x <- D, as in k-diffusion.
With sigma_i = sigma_hat(t_i), d = (x - D) / sigma:

    euler (Alg. 2 with Euler steps):  x <- x + d(x, sigma_hat_i) (sigma_{i+1} - sigma_hat_i)
    heun (Alg. 1; Alg. 2 with churn): Euler predictor x', then
        x <- x + (d(x, sigma_hat_i) + d(x', sigma_{i+1})) / 2 (sigma_{i+1} - sigma_hat_i)
        (Euler when sigma_{i+1} = 0)
    churn (Alg. 2): gamma_i = min(S_churn / N, sqrt 2 - 1) if S_tmin <= sigma_i <= S_tmax
        else 0; sigma_hat_i = (1 + gamma_i) sigma_i; x <- x + S_noise sqrt(sigma_hat_i^2 -
        sigma_i^2) xi before the step (sigma_hat_i = sigma_i and no draw when gamma_i = 0)
    euler_ancestral: sigma_up = min(sigma_{i+1}, eta sqrt(sigma_{i+1}^2 (sigma_i^2 -
        sigma_{i+1}^2) / sigma_i^2)), sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2);
        x <- x + d (sigma_down - sigma_i) + S_noise sigma_up xi (no noise onto sigma = 0)
    dpmpp_2m (Lu et al. 2022, Alg. 2; lambda = -log sigma, h = lambda_{i+1} - lambda_i):
        x <- (sigma_{i+1} / sigma_i) x - expm1(-h) D~,  D~ = D_i on the first step and
        onto sigma = 0, else D~ = (1 + 1/(2 r)) D_i - 1/(2 r) D_{i-1}, r = h_{i-1} / h.
"""

import numpy as np

from .._validation import check_real
from ._common import Noise, Path, as_state, check_flag, predict, sigma_hat, start, time_of_sigma_hat

__all__ = ["karras_euler", "karras_heun", "karras_stochastic", "euler_ancestral", "dpmpp_2m"]

_TINY = np.finfo(np.float64).tiny  # the smallest normal float64


class _SigmaFrame:
    """A replay's state in EDM coordinates: x_hat = x / alpha_t on the noise levels sigma_hat."""

    def __init__(self, score, process, grid, x, trajectory):
        self.score = score
        self.process, self.grid, y, self.dtype = start(score, process, grid, x)
        self.alpha = np.asarray(self.process.alpha(self.grid), dtype=np.float64)
        self.sig = np.asarray(sigma_hat(self.process, self.grid), dtype=np.float64)
        if not np.isfinite(self.sig[0]):  # alpha_T ~ 0: x_hat = x / 0, and the score was called at NaN
            raise ValueError(f"grid[0] = {float(self.grid[0])!r}: alpha_t = {float(self.alpha[0])!r} for "
                             f"{self.process!r}, so the noise level sigma_t / alpha_t these samplers step over "
                             f"overflows float64 there; start the grid at a smaller time")
        self.xh = y / self.alpha[0]
        self.path = Path(trajectory, y, self.dtype)

    def denoise(self, xh, t, step):
        """D(x_hat; sigma_hat(t)) from the score at x = alpha_t x_hat."""
        alpha = self.process.alpha(t)
        return predict(self.score, xh * alpha, t, self.process, self.dtype, step, "x0")

    def set(self, xh, k):
        """Round the new state (after step k) and record it at grid time k + 1."""
        self.xh = as_state(xh, self.dtype)
        self.path.add(self.xh * self.alpha[k + 1])

    def result(self, draws):
        return self.path.result(self.xh * self.alpha[-1], draws)


def _check_churn(s_churn, s_tmin, s_tmax, s_noise):
    tmax = s_tmax[()] if isinstance(s_tmax, np.ndarray) and s_tmax.ndim == 0 else s_tmax
    infinite = isinstance(tmax, (float, np.floating)) and tmax == np.inf  # (an array: check_real names it)
    return (check_real(s_churn, "s_churn", low=0.0), check_real(s_tmin, "s_tmin", low=0.0),
            float(tmax) if infinite else check_real(tmax, "s_tmax", low=0.0),
            check_real(s_noise, "s_noise", low=0.0))


def _churned(frame, draws, k, churn):
    """Algorithm 2's noise increase at step k: returns (x_hat, sigma_hat_i, time of it)."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    sig, N = frame.sig[k], frame.grid.size - 1
    gamma = min(s_churn / N, np.sqrt(2.0) - 1.0) if s_tmin <= sig <= s_tmax else 0.0
    if gamma <= 0:
        return frame.xh, sig, frame.grid[k]
    s_hat = sig * (gamma + 1.0)
    xh = frame.xh + draws.draw() * s_noise * np.sqrt(s_hat**2 - sig**2)
    return xh, s_hat, time_of_sigma_hat(frame.process, s_hat)


def _karras(score, process, grid, x, rng, trajectory, noise, churn, heun):
    frame = _SigmaFrame(score, process, grid, x, trajectory)
    churn = _check_churn(*churn)
    draws = Noise(rng, noise, frame.xh.shape, frame.dtype)
    sig = frame.sig
    for k in range(sig.size - 1):
        xh, s_hat, t_hat = _churned(frame, draws, k, churn)
        d = (xh - frame.denoise(xh, t_hat, k)) / s_hat
        dt = sig[k + 1] - s_hat
        if not heun or sig[k + 1] == 0:
            frame.set(xh + d * dt, k)
            continue
        x2 = xh + d * dt
        d2 = (x2 - frame.denoise(x2, frame.grid[k + 1], k)) / sig[k + 1]
        frame.set(xh + (d + d2) / 2 * dt, k)
    return frame.result(draws)


def karras_euler(score, process, grid, x, rng=None, trajectory=False, *, noise=None, s_churn=0.0, s_tmin=0.0,
                 s_tmax=np.inf, s_noise=1.0):
    """Euler steps on the EDM ODE (Karras et al. 2022, Algorithm 2 with Euler steps), as
    k-diffusion's sample_euler; deterministic when s_churn = 0.

    With s_churn > 0 the model is evaluated at the churned point (x_hat, sigma_hat), as in
    Algorithm 2. diffusers' EulerDiscreteScheduler is not this then: its pipeline evaluates
    the model at (x, sigma) before the step adds the churn, so a comparison with it
    diverges at the first churned step (docs/findings.md). Without churn they agree to its
    float32 rounding.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    process : any process of sgm_ref.processes (EDM: the grid is k-diffusion's sigmas)
    grid : array_like, shape (N + 1,)
        Decreasing times; may end where sigma_t = 0 (e.g. EDM().karras_sigmas(...)).
    x : ndarray, shape (n, d)
        Start points at grid[0] in the process's x (for EDM: sigma_max times N(0, I)).
    rng : numpy.random.Generator, optional
        Source of the noise; not with `noise` (passing both is refused).
    trajectory : bool
        Also return the states at every grid time (process's x), shape (N + 1, n, d).
    noise : array_like, shape (n_draws, n, d), optional
        One draw per step with gamma_i > 0 (k-diffusion draws one every step and uses
        those; pass noise[gamma > 0]).
    s_churn, s_tmin, s_tmax, s_noise : float
        Algorithm 2's S_churn, S_tmin, S_tmax, S_noise (on sigma_hat of the process).

    Returns
    -------
    y : ndarray, shape (n, d), x's dtype (and the trajectory if asked)

    Raises
    ------
    ValueError
        Bad arguments, score output, a churned sigma beyond the process's range, missing
        rng, rng and noise both given, or a wrong count of noise draws.
    """
    return _karras(score, process, grid, x, rng, trajectory, noise, (s_churn, s_tmin, s_tmax, s_noise), False)


def karras_heun(score, process, grid, x, rng=None, trajectory=False, *, noise=None, s_churn=0.0, s_tmin=0.0,
                s_tmax=np.inf, s_noise=1.0):
    """Heun's method on the EDM ODE (Karras et al. 2022, Algorithm 1; Algorithm 2 when
    s_churn > 0), as k-diffusion's sample_heun: two denoiser calls per step, one onto sigma = 0.
    Arguments as karras_euler.
    """
    return _karras(score, process, grid, x, rng, trajectory, noise, (s_churn, s_tmin, s_tmax, s_noise), True)


def karras_stochastic(score, process, grid, x, rng=None, trajectory=False, *, noise=None, s_churn, s_tmin=0.0,
                      s_tmax=np.inf, s_noise=1.0):
    """The stochastic sampler of Karras et al. (2022, Algorithm 2): churn, then a Heun step.

    k-diffusion's sample_heun with s_churn > 0 (EDM used e.g. S_churn = 40, S_tmin = 0.05,
    S_tmax = 50, S_noise = 1.003 on ImageNet-64), and diffusers' deprecated KarrasVeScheduler
    in its pipeline's loop on the grid schedule[timesteps] then 0 (its s_min, s_max are S_tmin,
    S_tmax; it draws every step: pass its draws where gamma_i > 0; note its noise levels run
    geometrically from sigma_max^2 down to sigma_min^2, the squares of the geometric sigmas;
    tests/test_replays.py::test_diffusers_karras_ve_scheduler_is_karras_stochastic).
    Arguments as karras_euler; s_churn required.
    """
    return _karras(score, process, grid, x, rng, trajectory, noise, (s_churn, s_tmin, s_tmax, s_noise), True)


def _ancestral_step(s, s_next, eta):
    """(sigma_up, sigma_down) of a step from s > 0 to s_next >= 0 (module docstring).

    k-diffusion's squares, sigma_up = min(s_next, eta sqrt(s_next^2 (s^2 - s_next^2) / s^2)),
    sigma_down = sqrt(s_next^2 - sigma_up^2), while s_next^2 and that product lie in
    float64's normal range (about 1e-77 < sigma < 1e77); beyond it the same in the ratio
    q = s_next / s, which neither overflows nor underflows. The squares lost their digits
    there: EDM's step from 1e80 to 5e79 (eta = 1) had sigma_up = s_next and sigma_down = 0
    for 0.866 s_next and 0.5 s_next, one from 1e-150 to 5e-151 sigma_up = 0 (no noise), and
    the exact law of a target and its sigmas scaled by 1e-100 (1e100) was 44% (22%) off in
    covariance from the scaled law (k-diffusion's get_ancestral_step does the same; review;
    only the NaN of s^2 itself, s < 1e-162 or s > 1e154, was caught). In the normal range
    the same bits as before. eta = 1e308 still overflows to inf, clamped to s_next.
    """
    if s_next == 0:
        return 0.0, 0.0
    with np.errstate(invalid="ignore", over="ignore", under="ignore"):
        square, product = s_next**2, s_next**2 * (s**2 - s_next**2)
        if _TINY <= square and _TINY <= product < np.inf:
            up = min(s_next, eta * np.sqrt(product / s**2)) if eta else 0.0
            return up, np.sqrt(square - up**2)
        if not eta:
            return 0.0, s_next
        gap = (s - s_next) / s  # 1 - q, its difference exact where s_next > s / 2 (Sterbenz)
        # sigma_down^2 = s_next^2 (1 - eta^2 (1 - q^2)) = s_next^2 ((1 - eta^2) + (eta q)^2), 1 - q^2 = gap (2 - gap)
        # (eta q)^2 from q itself: 1 - gap kept only gap's absolute rounding, eps / q of q (sigma_down
        # of a step from 1e100 to 1e92, eta = 1, was 1e-8 off; q = s_next / s is within an ulp)
        rest = (1.0 - eta) * (1.0 + eta) + (eta * (s_next / s)) ** 2
        if not rest > 0:  # sigma_up clamped to s_next (a NaN: eta ~ 1e200, -inf + inf)
            return s_next, 0.0
        return min(s_next, eta * s_next * np.sqrt(gap * (2.0 - gap))), s_next * np.sqrt(rest)


def euler_ancestral(score, process, grid, x, rng=None, trajectory=False, *, noise=None, eta=1.0, s_noise=1.0):
    """Ancestral Euler steps (k-diffusion's sample_euler_ancestral; DDPM-like for eta = 1).

    One noise draw per step onto sigma_{i+1} > 0 (also for eta = 0, where it is multiplied
    by sigma_up = 0, as k-diffusion draws it). Arguments as karras_euler, with eta >= 0.
    """
    frame = _SigmaFrame(score, process, grid, x, trajectory)
    eta = check_real(eta, "eta", low=0.0)
    s_noise = check_real(s_noise, "s_noise", low=0.0)
    draws = Noise(rng, noise, frame.xh.shape, frame.dtype)
    sig = frame.sig
    for k in range(sig.size - 1):
        D = frame.denoise(frame.xh, frame.grid[k], k)
        s, s_next = sig[k], sig[k + 1]
        up, down = _ancestral_step(s, s_next, eta)
        xh = frame.xh + (frame.xh - D) / s * (down - s)
        if s_next > 0:
            xh = xh + draws.draw() * s_noise * up
        frame.set(xh, k)
    return frame.result(draws)


def dpmpp_2m(score, process, grid, x, rng=None, trajectory=False, *, noise=None, lower_order_final=False):
    """DPM-Solver++(2M) (Lu et al. 2022, Algorithm 2), as k-diffusion's sample_dpmpp_2m.

    Deterministic (it draws nothing: rng, a Generator if given, is unused; noise must be
    None or have no draws; both together are refused, as in every replay). A
    second-order multistep method in lambda = -log sigma_hat: exact on the linear part,
    the denoiser extrapolated linearly from the last two steps,

        x_{k+1} = (sigma_{k+1} / sigma_k) x_k - expm1(-h_k) D',
        D' = (1 + 1 / (2 r)) D_k - (1 / (2 r)) D_{k-1},   r = h_{k-1} / h_k,

    with D' = D_k on the first step (first order, DDIM) and on a last step onto sigma = 0
    (where the update is x = D_k). Arguments as karras_euler, and

    lower_order_final : bool
        Also take the last step first order (D' = D_k) when it ends at a sigma > 0, as
        diffusers' DPMSolverMultistepScheduler does with final_sigmas_type="sigma_min"
        below 15 steps (its lower_order_final=True, the default) or with
        euler_at_final=True. k-diffusion's sample_dpmpp_2m never does (the default, False).
        Not with Karras (exponential, beta, Lu) sigmas there: diffusers repeats sigma_min and
        its first-order step is the no-op between the two; drop it and keep False.
    """
    lower_order_final = check_flag(lower_order_final, "lower_order_final")
    frame = _SigmaFrame(score, process, grid, x, trajectory)
    draws = Noise(rng, noise, frame.xh.shape, frame.dtype)
    sig = frame.sig
    D_old, h_old = None, None
    for k in range(sig.size - 1):
        D = frame.denoise(frame.xh, frame.grid[k], k)
        if sig[k + 1] == 0:
            frame.set(D, k)  # h = inf: x <- 0 x - expm1(-inf) D
            continue
        h = np.log(sig[k]) - np.log(sig[k + 1])
        if D_old is None or (lower_order_final and k == sig.size - 2):
            Dd = D
        else:
            r = h_old / h
            Dd = (1.0 + 1.0 / (2.0 * r)) * D - (1.0 / (2.0 * r)) * D_old
        frame.set(sig[k + 1] / sig[k] * frame.xh - np.expm1(-h) * Dd, k)
        D_old, h_old = D, h
    return frame.result(draws)
