"""Reference replays of the peers' samplers, and their exact laws on Gaussian targets.

Each replay is a plain function with one signature,

    replay(score, process, grid, x, rng=None, trajectory=False, *, noise=None, **options)

score(x (n, d), t (n,)) the score of p_t under `process` (any process of sgm_ref.processes),
grid a decreasing time grid of that process from T down to t0 >= 0, x the start points at T.
All noise comes from rng or from `noise`, an array (n_draws, n, d) of the standard normal
draws (each replay's docstring says how many), so a replay can be fed the noise a peer drew;
passing both is refused (ValueError), as one of them would go unused.

    score_sde (Song et al. 2021)   euler_maruyama (textbook: f, g at t_k times h),
                                   reverse_diffusion, predictor_corrector (Langevin corrector)
    Ho et al. 2020; Song et al.    ddpm_ancestral (beta / beta-tilde), ddim (eta);
    2021 (DDIM)                    ddim_timesteps, timestep_grid (diffusers' spacings)
    Karras et al. 2022; Lu et al.  karras_euler, karras_heun (Alg. 1), karras_stochastic
    2022 (k-diffusion)             (Alg. 2), euler_ancestral, dpmpp_2m

sgm_ref.samplers keeps sgm_ref's own schemes (integrated-beta Euler–Maruyama, exponential
integrator, probability-flow Heun). replay_output_gaussian gives any replay's exact output
law for a Gaussian target; law_distances the KL and TV between two such laws.
"""

from .ddpm import SPACINGS, ddim, ddim_timesteps, ddpm_ancestral, timestep_grid
from .karras import dpmpp_2m, euler_ancestral, karras_euler, karras_heun, karras_stochastic
from .laws import gaussian_score, law_distances, replay_output_gaussian, target_gaussian
from .score_sde import euler_maruyama, predictor_corrector, reverse_diffusion

REPLAYS = {f.__name__: f for f in (euler_maruyama, reverse_diffusion, predictor_corrector, ddpm_ancestral, ddim,
                                   karras_euler, karras_heun, karras_stochastic, euler_ancestral, dpmpp_2m)}

__all__ = sorted(REPLAYS) + ["REPLAYS", "SPACINGS", "ddim_timesteps", "timestep_grid", "gaussian_score",
                             "target_gaussian", "replay_output_gaussian", "law_distances"]
