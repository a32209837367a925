"""sgm_ref: an exact, fast reference implementation of score-based generative models.

Cole & Lu, "Score-based generative models break the curse of dimensionality in
learning a family of sub-Gaussian probability distributions" (ICLR 2024).
"""

__version__ = "0.1.0"

from .processes import OU, VP
from .targets import GaussianMixture

__all__ = ["OU", "VP", "GaussianMixture", "__version__"]
