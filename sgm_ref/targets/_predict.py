"""The exact oracle in every output convention: score, eps, x0, v and velocity.

Every target gives its exact score grad log p_t under any linear Gaussian process
(x_t = alpha_t x0 + sigma_t z). The other outputs follow from it by Tweedie's formula,
exactly and affinely (sgm_ref.conventions has the formulas):

    x0 = E[x0 | x_t = x]  = (x + sigma^2 score) / alpha          (the denoiser D(x; sigma))
    eps = E[z | x_t = x]  = -sigma score
    v   = alpha eps - sigma x0
    velocity = alpha' x0 + sigma' eps = E[d x_t / dt | x_t = x]

Conditioning: each is a few ulps of |A x| + |B score| (conventions.convert), except
that x0 from the score loses the digits of x / alpha that cancel where alpha_t is small
(all of them at OU's t = 40, FlowMatching near t = 1). A target that knows its posterior
mean E[x0 | x_t] (the Gaussian and product mixtures: `_posterior_mean`) gives x0 from it
directly, and v and velocity from that x0 and eps = -sigma score, both well conditioned:

    v = alpha eps - sigma x0,    velocity = sigma' eps + alpha' x0.
"""

import numpy as np

from .._validation import check_points
from ..conventions import KINDS, _minors, convert
from ..processes import OU, check_process


class ExactOutputs:
    """Mixin: predict() on top of a target's score(x, t, process)."""

    def predict(self, x, t=0.0, process=OU(), kind="x0"):
        """The exact model output of a given kind at (x, t) under process.

        Parameters
        ----------
        x : ndarray, shape (n, d), float64 or float32 (or a nested list of rows, read as float64)
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
        (float32 for float32 x: computed in float64, from the float64 score, and rounded
        once; a value beyond float32's range raises). For the Gaussian
        and product mixtures x0, v and velocity come from the exact posterior mean, to a
        few ulps of its terms at every t (where the components' means nearly cancel in
        it, e.g. means +-1 near x = 0 late in the process, that is a few ulps of |mu|, not
        of x0: 3.6e-3 of an x0 of 1.5e-14; points more than 32 standard deviations from
        every mean are weighed relative to the nearest component: docs/limits.md); for other targets from the score by Tweedie's
        formula, whose x0 loses digits where alpha_t is small (module docstring).

        Raises
        ------
        ValueError
            An unknown kind; bad x, t or process; or a kind undefined at t (eps, v and
            velocity need sigma_t > 0, x0 needs alpha_t > 0).
        """
        if not isinstance(kind, str) or kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        process = check_process(process, variance_preserving=False)
        x = check_points(x, "x")  # an array (x.dtype below), as the score takes it (a list of rows too)
        score = self.score(x, t, process)
        if kind == "score":
            return score
        if x.dtype == np.float32:
            # computed from the float64 score and rounded once: from the float32 score, eps =
            # -sigma score was 0 where the score underflows (EDM's t = 1e30: eps -1.5e-20) and v,
            # velocity lost the digits that cancel in them (115 float32 ulps of v)
            return _to_float32(self.predict(x.astype(np.float64), t, process, kind), kind)
        if kind == "eps" or not hasattr(self, "_posterior_mean"):
            return convert(score, x, t, process, from_="score", to=kind)
        times = np.asarray(process._times(t, n=score.shape[0]), dtype=np.float64)
        if kind == "x0" and np.any(process._alpha(times) == 0):
            # the posterior mean exists there (the prior's mean), but Tweedie's x0 does not:
            # refused for every target alike, with convert's error
            return convert(score, x, t, process, from_="score", to=kind)
        x0 = self._posterior_mean(x, t, process)
        if kind != "x0":
            # kind = A eps + B x0 (the minors of conventions, with (eps, x0) for (x, value));
            # eps = -sigma score from convert, which refuses sigma_t = 0 where eps is undefined
            eps = convert(score, x, t, process, from_="score", to="eps").astype(np.float64)
            D = _minors(process, times)
            A, B = -D[(kind, "x0")], -D[("eps", kind)]                 # D[("eps", "x0")] = -1
            A, B = np.atleast_1d(A)[:, None], np.atleast_1d(B)[:, None]
            if not (np.all(np.isfinite(A)) and np.all(np.isfinite(B))):  # alpha' or sigma' infinite there
                return convert(score, x, t, process, from_="score", to=kind)  # its error names t
            x0 = A * eps + B * x0
        return x0


def _to_float32(values, kind):
    """values (n, d) float64 as float32, refusing what float32 cannot hold (a bare cast gives inf)."""
    with np.errstate(over="ignore"):  # named just below
        out = values.astype(np.float32)
    bad = ~np.all(np.isfinite(out), axis=1)
    if np.any(bad):
        i = int(np.argmax(bad))
        top = float(np.max(np.abs(values[i])))
        raise ValueError(f"the {kind} at x[{i}] reaches {top:.3g}, beyond float32's range; pass float64 points")
    return out
