"""Forward noising processes: every linear Gaussian SDE dX = f(t) X dt + g(t) dW.

A process is given by its marginal x_t = alpha_t x0 + sigma_t z (see .base for how f and
g^2 follow). Built in:

    OU, VP, VPCosine, DDPM      variance-preserving (alpha^2 + sigma^2 = 1)
    SubVP, VE, EDM, FlowMatching the other conventions of the literature

The log-SNR lambda = log(alpha^2 / sigma^2) is the common coordinate:
convert_time(t, a, b) gives the time of b with the same lambda and the scale
x_b = scale * x_a under which both describe the same p_t.
"""

import numpy as np

from .base import LinearGaussianProcess
from .continuous import EDM, VE, FlowMatching, SubVP
from .discrete import DDPM
from .variance_preserving import OU, VP, VariancePreserving, VPCosine

__all__ = ["OU", "VP", "VPCosine", "DDPM", "SubVP", "VE", "EDM", "FlowMatching", "LinearGaussianProcess",
           "VariancePreserving", "check_process", "process_from_dict", "convert_time"]

_CLASSES = {cls.__name__: cls for cls in (OU, VP, VPCosine, DDPM, SubVP, VE, EDM, FlowMatching)}


def check_process(process, name="process", *, variance_preserving=True):
    """Return process if it is a process this caller supports, else raise.

    variance_preserving=True (the default, for code that uses beta(t) and the N(0, I)
    prior) accepts OU, VP, VPCosine and DDPM; False accepts every linear Gaussian process.
    """
    kind = VariancePreserving if variance_preserving else LinearGaussianProcess
    if not isinstance(process, kind):
        allowed = "OU(), VP(...), VPCosine(...) or DDPM(...)" if variance_preserving else \
            "a process of sgm_ref.processes (OU, VP, VPCosine, DDPM, SubVP, VE, EDM, FlowMatching)"
        raise ValueError(f"{name} must be {allowed}, got {process!r}")
    return process


def process_from_dict(spec):
    """Rebuild a process from its to_dict() form (used by model files)."""
    if not isinstance(spec, dict) or spec.get("name") not in _CLASSES:
        raise ValueError(f"process must be a dict with name one of {sorted(_CLASSES)}, got {spec!r}")
    if spec["name"] in ("VP", "SubVP") and ("beta_min" not in spec or "beta_max" not in spec):
        raise ValueError(f"a {spec['name']} process needs beta_min and beta_max, got {spec!r}")
    params = {k: v for k, v in spec.items() if k != "name"}
    try:
        return _CLASSES[spec["name"]](**params)
    except TypeError as e:
        raise ValueError(f"process {spec!r} has parameters its class does not take: {e}") from None


def convert_time(t, from_process, to_process):
    """The time of to_process with the same log-SNR as time t of from_process, and the scale.

    Parameters
    ----------
    t : float or ndarray of shape (n,)
        Times of from_process.
    from_process, to_process : LinearGaussianProcess

    Returns
    -------
    t_to : float or ndarray, shape of t
        lambda_to(t_to) = lambda_from(t).
    scale : float or ndarray, shape of t
        alpha_to(t_to) / alpha_from(t) (= sigma_to / sigma_from): if x ~ p_t under
        from_process then scale * x ~ p_{t_to} under to_process, and scores map as
        score_to(scale x) = score_from(x) / scale.

    Raises
    ------
    ValueError
        t outside from_process's range, or its log-SNR outside to_process's range.
    """
    check_process(from_process, "from_process", variance_preserving=False)
    check_process(to_process, "to_process", variance_preserving=False)
    t = from_process._times(t)
    lam = from_process.log_snr(t)
    try:
        t_to = np.asarray(to_process.time_of_log_snr(lam), dtype=np.float64)
    except ValueError as e:
        raise ValueError(f"a time of {from_process!r} has no counterpart in {to_process!r}: {e}") from None
    # the ratio of the larger of the two scales is the better conditioned one
    a_from, s_from = from_process._alpha(t), from_process._sigma(t)
    a_to, s_to = to_process._alpha(t_to), to_process._sigma(t_to)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(a_from >= s_from, a_to / a_from, s_to / np.where(s_from > 0, s_from, 1.0))
    return LinearGaussianProcess._out(t_to), LinearGaussianProcess._out(scale)
