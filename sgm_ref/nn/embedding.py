"""Fixed (not learned) embeddings of the time t that the score network reads beside x."""

import numpy as np

from .._validation import show

__all__ = ["TimeEmbedding"]

# w_j log t for j < 1000 stays below 2^997 * 745 ~ 1e303 (finite) for every positive float64 t;
# beyond ~1024 frequencies 2^j / 4 itself overflows
_MAX_FREQUENCIES = 1000


class TimeEmbedding:
    """Features e(t) appended to the network input.

    kind="linear":  e(t) = [t]                                    (1 feature)
    kind="log":     e(t) = [log t]                                (1 feature, t > 0)
    kind="fourier": e(t) = [log t, sin(w_j log t), cos(w_j log t)]_{j < k},
                    w_j = 2^j / 4                                  (1 + 2k features, t > 0)

    log t spreads the decades near t0 that matter most for the score (its size grows
    like 1 / sigma_t there) across the input range.
    """

    KINDS = ("linear", "log", "fourier")

    def __init__(self, kind="linear", n_frequencies=4):
        if not isinstance(kind, str) or kind not in self.KINDS:
            raise ValueError(f"time embedding kind must be one of {self.KINDS}, got {kind!r}")
        if isinstance(n_frequencies, (bool, np.bool_)) or not isinstance(n_frequencies, (int, np.integer)) \
                or not 1 <= n_frequencies <= _MAX_FREQUENCIES:
            raise ValueError(f"n_frequencies must be an integer in [1, {_MAX_FREQUENCIES}], got {show(n_frequencies)}"
                             + (" (w_j = 2^j / 4 times log t must stay finite in float64)"
                                if isinstance(n_frequencies, (int, np.integer)) and n_frequencies > 1 else ""))
        self.kind = kind
        self.n_frequencies = int(n_frequencies)
        self.dim = 1 + 2 * self.n_frequencies if kind == "fourier" else 1

    def to_dict(self):
        return {"kind": self.kind, "n_frequencies": self.n_frequencies}

    def __eq__(self, other):
        return isinstance(other, TimeEmbedding) and self.to_dict() == other.to_dict()

    def __repr__(self):
        return f"TimeEmbedding({self.kind!r}, n_frequencies={self.n_frequencies})"

    def __call__(self, t, out):
        """Write e(t) into out (n, dim); t is a validated float64 array of shape (n,)."""
        if self.kind == "linear":
            out[:, 0] = t
            return out
        if np.any(t <= 0):
            raise ValueError(f"t must be > 0 for the {self.kind!r} time embedding (it uses log t)")
        tau = np.log(t)
        out[:, 0] = tau
        for j in range(self.n_frequencies if self.kind == "fourier" else 0):
            w = 2.0**j / 4.0
            out[:, 1 + 2 * j] = np.sin(w * tau)
            out[:, 2 + 2 * j] = np.cos(w * tau)
        return out
