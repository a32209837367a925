"""sgm_ref: an exact, fast reference implementation of score-based generative models.

Cole & Lu, "Score-based generative models break the curse of dimensionality in
learning a family of sub-Gaussian probability distributions" (ICLR 2024).
"""

__version__ = "0.1.0"

# First: sets the thread pools' wait policies before numpy and numba load them (see _threads)
from ._threads import set_threads  # noqa: I001
from . import audit, conventions, gradcheck, interop, metrics, replays, samplers
from .audit import compare_sampler
from .io import load, save
from .losses import dsm_loss
from .nn import MLP
from .optim import Adam
from .processes import DDPM, EDM, OU, VE, VP, FlowMatching, SubVP, VPCosine, convert_time
from .score_model import ScoreModel
from .targets import GaussianMixture
from .train import fit

__all__ = ["OU", "VP", "VPCosine", "DDPM", "SubVP", "VE", "EDM", "FlowMatching", "convert_time", "conventions",
           "GaussianMixture", "MLP", "ScoreModel", "Adam", "dsm_loss", "fit", "save", "load",
           "samplers", "replays", "audit", "compare_sampler", "metrics", "gradcheck", "interop", "set_threads",
           "__version__"]
