"""sgm_ref: an exact, fast reference implementation of score-based generative models.

Cole & Lu, "Score-based generative models break the curse of dimensionality in
learning a family of sub-Gaussian probability distributions" (ICLR 2024).
"""

__version__ = "0.1.0"

import sys

from ._command import is_command_line as _is_command_line  # noqa: I001  (light: before any heavy import)

try:
    # First: sets the thread pools' wait policies before numpy and numba load them (see _threads)
    from ._threads import set_threads
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
except KeyboardInterrupt:
    # Ctrl-C in a command's first second lands here, in numba's and scipy's imports, before
    # cli.main can catch it: it was a 40-line traceback and death by SIGINT. The command line
    # says one line and exits 130, as once its command runs; a program importing sgm_ref gets
    # the KeyboardInterrupt
    if not _is_command_line():
        raise
    print("sgm-ref: interrupted", file=sys.stderr)
    raise SystemExit(130) from None

__all__ = ["OU", "VP", "VPCosine", "DDPM", "SubVP", "VE", "EDM", "FlowMatching", "convert_time", "conventions",
           "GaussianMixture", "MLP", "ScoreModel", "Adam", "dsm_loss", "fit", "save", "load",
           "samplers", "replays", "audit", "compare_sampler", "metrics", "gradcheck", "interop", "set_threads",
           "__version__"]
