"""A score function s_theta(x, t) made of a network, a forward process and a parameterisation.

    "score":     s = net(x, t)
    "noise":     s = -net(x, t) / sigma_t        (net predicts the noise z)
    "residual":  s = -x + net(x, t)              (the paper's structure: grad log p_t is
                                                  -x plus a low-complexity part)
"""

import numpy as np

from ._validation import check_times
from .kernels.dense import divide_rows
from .processes import OU, check_process

__all__ = ["ScoreModel", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("score", "noise", "residual")


class ScoreModel:
    """s_theta(x, t) from a network; callable as model(x, t).

    Parameters
    ----------
    network : sgm_ref.nn.MLP
    process : OU, VP, VPCosine or DDPM
        A variance-preserving process (sgm_ref.processes.check_process): supplies
        sigma_t for the "noise" parameterisation and the time range.
    parameterization : {"score", "noise", "residual"}
    """

    def __init__(self, network, process=OU(), parameterization="residual"):
        if not isinstance(parameterization, str) or parameterization not in PARAMETERIZATIONS:
            raise ValueError(f"parameterization must be one of {PARAMETERIZATIONS}, got {parameterization!r}")
        check_process(process)
        if not all(hasattr(network, a) for a in ("forward", "params", "d", "dtype")):
            raise ValueError(f"network must be an sgm_ref.nn.MLP, got {type(network).__name__}")
        self.network = network
        self.process = process
        self.parameterization = parameterization

    @property
    def params(self):
        return self.network.params

    @property
    def dtype(self):
        return self.network.dtype

    @property
    def d(self):
        return self.network.d

    def __repr__(self):
        return f"ScoreModel({self.network!r}, {self.process!r}, {self.parameterization!r})"

    def __call__(self, x, t):
        """s_theta(x, t): x (n, d) in the network's dtype, t scalar or (n,) in (0, t_max].

        Raises ValueError for bad x or t (x of another dtype than the network's named by
        the dtype passed: integer x is taken as float64 points, by a float64 network only),
        or if the score overflows the dtype (the message names the cause: tiny sigma_t for
        "noise", x or the parameters too large).
        """
        t = check_times(t, n=np.shape(x)[0] if np.ndim(x) == 2 else None, T=self.process.t_max)
        if np.any(t <= 0):
            raise ValueError("t must be > 0: the score of p_0 itself is not what the model learns")
        out = self.network.forward(x, t)
        s = self.output_to_score(out, x, t)
        if not np.all(np.isfinite(s)):
            # the network's output is finite here; the parameterisation overflowed
            raise ValueError(self._overflow_text(s, x, t))
        return s

    def _overflow_text(self, s, x, t):
        """What overflowed in the first row of s that is not finite: its t, and for "noise" sigma_t
        and the network's output there (the output is recomputed: s overwrote it)."""
        n = s.shape[0]
        i = int(np.argmax(~np.all(np.isfinite(s), axis=1)))
        ti = float(np.broadcast_to(t, (n,))[i])
        text = f"the {self.parameterization!r} score overflows {s.dtype.name} at t = {ti:.3g} (row {i}"
        if self.parameterization != "noise":
            return text + f", largest |x| entry {float(np.max(np.abs(np.asarray(x)[i]))):.3g}); " \
                "rescale x or the parameters"
        sigma = float(self._sigma(np.array([ti]), 1)[0])
        net = float(np.max(np.abs(self.network.forward(np.asarray(x)[i:i + 1], ti))))
        # |net| / sigma_t beyond the dtype's max: sigma_t is the cause where a moderate output overflows
        small = net <= np.sqrt(float(np.finfo(s.dtype).max))
        return text + (f": sigma_t = {sigma:.3g}, largest |net(x, t)| {net:.3g})"
                       + ("; sigma_t is too small there for the 'noise' parameterization: use larger t" if small
                          else "; the network's output is too large there: rescale x or the parameters"))

    def output_to_score(self, out, x, t):
        """Apply the parameterisation to a network output (in place on out).

        For "noise", -out / sigma_t is formed in float64 and rounded once into out's dtype
        (a float32 sigma_t would add a second rounding, and below 1.2e-38 lose digits).
        """
        if self.parameterization == "noise":
            sigma = self._sigma(t, out.shape[0])
            with np.errstate(over="ignore"):  # an overflow is the callers' to name
                if out.dtype == np.float64:
                    out /= -sigma[:, None]
                else:  # in float64, rounded once (compiled: NumPy's mixed-dtype divide is 2.5x slower)
                    divide_rows(out, -sigma)
        elif self.parameterization == "residual":
            with np.errstate(over="ignore"):
                out -= x
        return out

    # -- derivatives in x (for sgm_ref.likelihood) ----------------------------------------------
    def _check_t(self, x, t):
        t = check_times(t, n=np.shape(x)[0] if np.ndim(x) == 2 else None, T=self.process.t_max)
        if np.any(t <= 0):
            raise ValueError("t must be > 0: the score of p_0 itself is not what the model learns")
        return t

    def _sigma(self, t, n):
        """sigma_t, float64 of shape (n,), for the "noise" parameterisation; ValueError where it is 0."""
        _, s2 = self.process._coefficients(t, n)
        if np.any(s2 == 0):
            at = float(np.broadcast_to(t, (n,))[np.argmax(s2 == 0)])
            if at == 0:
                raise ValueError("t must be > 0 for the 'noise' parameterization (sigma_0 = 0)")
            # t > 0 too small for the process's sigma_t^2 (VP's beta_min t rounds to 0 below 5e-323)
            raise ValueError(f"sigma_t^2 underflows to 0 at t = {at!r} for {self.process!r}, so the 'noise' "
                             "score -net / sigma_t is not defined there; use a larger t")
        return np.sqrt(s2)

    def divergence(self, x, t):
        """Exact divergence of s_theta(., t) at each row: (score, div), shapes (n, d) and (n,).

        From the network's Jacobian trace (MLP.jacobian_trace, forward mode, about d
        forward passes' matrix products): "score" tr J, "noise" -tr J / sigma_t,
        "residual" tr J - d. Raises as __call__.
        """
        t = self._check_t(x, t)
        out, tr = self.network.jacobian_trace(x, t)
        s = self.output_to_score(out, x, t)
        if self.parameterization == "noise":
            with np.errstate(over="ignore"):  # in float64, rounded once (as output_to_score)
                tr = (-tr / self._sigma(t, s.shape[0])).astype(tr.dtype)
        elif self.parameterization == "residual":
            tr = tr - self.d
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(tr))):
            raise ValueError("the score or its divergence overflows; use larger t or rescale x")
        return s, tr

    def jvp(self, x, t, tangents):
        """(score, J_s v): s_theta(x, t), shape (n, d), and its Jacobian in x applied to
        tangents of shape (n, k, d) (MLP.jvp, forward mode). Raises as __call__."""
        t = self._check_t(x, t)
        out, jv = self.network.jvp(x, t, tangents)
        s = self.output_to_score(out, x, t)
        if self.parameterization == "noise":
            with np.errstate(over="ignore"):  # in float64, rounded once (as output_to_score)
                np.divide(jv, -self._sigma(t, s.shape[0])[:, None, None], out=jv, casting="same_kind")
        elif self.parameterization == "residual":
            with np.errstate(over="ignore", invalid="ignore"):  # refused below, not warned of
                jv -= np.asarray(tangents, dtype=jv.dtype)
        if not (np.all(np.isfinite(s)) and np.all(np.isfinite(jv))):
            raise ValueError("the score or its Jacobian-vector product overflows; use larger t or rescale x")
        return s, jv
