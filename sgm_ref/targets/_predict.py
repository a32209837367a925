"""The exact oracle in every output convention: score, eps, x0, v and velocity.

Every target gives its exact score grad log p_t under any linear Gaussian process
(x_t = alpha_t x0 + sigma_t z). The other outputs follow from it by Tweedie's formula,
exactly and affinely (sgm_ref.conventions has the formulas):

    x0 = E[x0 | x_t = x]  = (x + sigma^2 score) / alpha          (the denoiser D(x; sigma))
    eps = E[z | x_t = x]  = -sigma score
    v   = alpha eps - sigma x0
    velocity = alpha' x0 + sigma' eps = E[d x_t / dt | x_t = x]

Conditioning: each is a few ulps of |A x| + |B score| (conventions.convert); x0 where
alpha_t is small (FlowMatching near t = 1) loses the digits of x / alpha that cancel.
"""

from ..conventions import KINDS, convert
from ..processes import OU, check_process


class ExactOutputs:
    """Mixin: predict() on top of a target's score(x, t, process)."""

    def predict(self, x, t=0.0, process=OU(), kind="x0"):
        """The exact model output of a given kind at (x, t) under process.

        Parameters
        ----------
        x : ndarray, shape (n, d), float64 or float32
            Points x_t in the process's own scale.
        t : float or ndarray of shape (n,)
            In process.time_range.
        process : any process of sgm_ref.processes (OU, VP, VPCosine, DDPM, SubVP, VE,
            EDM, FlowMatching)
        kind : {"score", "eps", "x0", "v", "velocity"}
            "x0" is the exact denoiser E[x0 | x_t = x].

        Returns
        -------
        ndarray, shape (n, d): the score in the dtype of x; the other kinds float64
        (float32 for float32 x: computed in float64 and rounded once).

        Raises
        ------
        ValueError
            An unknown kind; bad x, t or process; or a kind undefined at t (eps, v and
            velocity need sigma_t > 0, x0 needs alpha_t > 0).
        """
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        process = check_process(process, variance_preserving=False)
        score = self.score(x, t, process)
        if kind == "score":
            return score
        return convert(score, x, t, process, from_="score", to=kind)
