"""How far a score function or a sampler is from the truth.

score_error:  E_{p_t} |s - grad log p_t|^2 against an exact oracle, per t or integrated.
bound:        the certified (Girsanov + Pinsker) upper bound on TV(p_0, sampler output).
distances:    sample-based distances (lower bounds and estimates).
histogram:    histogram TV against the target's exact bin masses (d <= 2).
gaussian:     closed forms for a Gaussian target driven by its exact linear score.
"""

from .bound import TVBound, tv_upper_bound
from .distances import (MMD, ComponentWeights, Estimate, component_weights, covariance_error, energy_distance,
                        mean_error, mmd, sliced_wasserstein)
from .histogram import HistogramTV, histogram_tv
from .gaussian import gaussian_kl, gaussian_tv, sampler_limit_gaussian, sampler_output_gaussian
from .score_error import ScoreErrorProfile, score_error_integral, score_error_profile

__all__ = ["score_error_integral", "score_error_profile", "tv_upper_bound", "TVBound",
           "sampler_output_gaussian", "sampler_limit_gaussian", "gaussian_kl", "gaussian_tv",
           "histogram_tv", "sliced_wasserstein", "mmd", "energy_distance", "mean_error", "covariance_error",
           "component_weights", "Estimate", "MMD", "HistogramTV", "ComponentWeights", "ScoreErrorProfile"]
