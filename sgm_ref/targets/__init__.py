"""Target distributions p_0 with exact scores of every forward marginal p_t.

Convention (stated once, used everywhere): relative to the standard Gaussian gamma_d,
p_0(x) = exp(f(x)) gamma_d(x) / Z, with f the log-relative density entering with a plus
sign (Cole & Lu's "exponential tilting" of the Gaussian).
"""

from .gaussian_mixture import GaussianMixture
from .product_mixture import ProductMixture
from .tilted_gaussian import TiltedGaussian

__all__ = ["GaussianMixture", "ProductMixture", "TiltedGaussian"]
