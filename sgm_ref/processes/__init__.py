"""Forward noising processes: every linear Gaussian SDE dX = f(t) X dt + g(t) dW.

A process is given by its marginal x_t = alpha_t x0 + sigma_t z (see .base for how f and
g^2 follow). Built in:

    OU, VP, VPCosine, DDPM      variance-preserving (alpha^2 + sigma^2 = 1)
    SubVP, VE, EDM, FlowMatching the other conventions of the literature

The log-SNR lambda = log(alpha^2 / sigma^2) is the common coordinate:
convert_time(t, a, b) gives the time of b with the same lambda and the scale
x_b = scale * x_a under which both describe the same p_t.
"""

import dataclasses
import re

import numpy as np

from .base import LinearGaussianProcess
from .continuous import EDM, VE, FlowMatching, SubVP
from .discrete import DDPM
from .variance_preserving import OU, VP, VariancePreserving, VPCosine

__all__ = ["OU", "VP", "VPCosine", "DDPM", "SubVP", "VE", "EDM", "FlowMatching", "LinearGaussianProcess",
           "VariancePreserving", "check_process", "process_from_dict", "convert_time", "from_spec", "to_spec"]

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


# Short names of the spec strings (`sgm-ref audit --process`), lower case.
_SPEC_NAMES = {"ou": OU, "vp": VP, "vpcosine": VPCosine, "ddpm": DDPM, "subvp": SubVP, "ve": VE, "edm": EDM,
               "flow": FlowMatching}
_SPEC_ALIASES = {"flowmatching": "flow", "rectifiedflow": "flow"}


def _spec_parameters(cls):
    """{name: type} of the parameters a spec may set (the dataclass fields)."""
    return {f.name: {"float": float, "int": int, "str": str}.get(f.type, f.type) if isinstance(f.type, str) else f.type
            for f in dataclasses.fields(cls)}


def _spec_help():
    parts = []
    for short, cls in _SPEC_NAMES.items():
        params = ",".join(f"{k}=" for k in _spec_parameters(cls) if k != "beta_schedule")
        if cls is DDPM:
            from .discrete import SCHEDULES
            parts.append(f"ddpm:{'|'.join(SCHEDULES)}[,{params}]")
        else:
            parts.append(f"{short}[:{params}]" if params else short)
    return "; ".join(parts)


def from_spec(text):
    """A process from a short spec string, the inverse of to_spec.

    NAME[:KEY=VALUE,...] with NAME one of ou, vp, vpcosine, ddpm, subvp, ve, edm, flow
    (also flowmatching and rectifiedflow; case-insensitive) and KEY the class's parameters; a DDPM spec may give its
    beta_schedule first without a key. Examples::

        ou   vp:beta_min=0.1,beta_max=20   vpcosine:s=0.008   subvp   ve:sigma_min=0.01,sigma_max=50
        edm   flow   ddpm:scaled_linear   ddpm:linear,beta_start=0.0001,beta_end=0.02,num_train_timesteps=1000

    Parameters left out take the class's defaults.

    Parameters
    ----------
    text : str

    Returns
    -------
    LinearGaussianProcess

    Raises
    ------
    ValueError
        An unknown name or parameter, a value that is not a number (an integer for
        num_train_timesteps), a parameter given twice, or values the class refuses;
        the message names the spec and lists the valid names and parameters.
    """
    if not isinstance(text, str):
        raise ValueError(f"a process spec must be a string such as 'ou' or 'ddpm:linear', got {text!r}")

    def bad(why):
        return ValueError(f"process spec {text!r}: {why} (valid: {_spec_help()})")

    name, _, rest = text.strip().partition(":")
    name = _SPEC_ALIASES.get(name.strip().lower(), name.strip().lower())
    if name not in _SPEC_NAMES:
        raise bad(f"unknown process {name!r}")
    cls = _SPEC_NAMES[name]
    types = _spec_parameters(cls)
    params = {}
    items = [item.strip() for item in rest.split(",")] if rest.strip() else []
    for k, item in enumerate(items):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq and k == 0 and cls is DDPM:
            key, value = "beta_schedule", item
        elif not eq or not key or not value:
            raise bad(f"{item!r} is not KEY=VALUE")
        if key not in types:
            known = ", ".join(types) or "none"
            raise bad(f"{name} has no parameter {key!r} (its parameters: {known})")
        if key in params:
            raise bad(f"{key} given twice")
        kind = types[key]
        try:
            params[key] = kind(value) if kind is not int else int(value, 10)
        except ValueError:
            raise bad(f"{key}={value!r} is not {'an integer' if kind is int else 'a number'}") from None
        # a non-zero number that float64 rounds to 0 ('1e-400') would silently build another
        # process (vp:beta_min=1e-400 is VP(0, ...))
        if kind is float and params[key] == 0.0 and float(re.split("[eE]", value)[0]) != 0.0:
            raise bad(f"{key}={value!r} is below float64's smallest positive number (about 5e-324) and would "
                      "read as 0; write 0 if that is what you mean")
    try:
        return cls(**params)
    except ValueError as e:
        raise bad(str(e)) from None


def to_spec(process):
    """The spec string of a process: from_spec(to_spec(p)) == p (floats written exactly, by repr)."""
    check_process(process, variance_preserving=False)
    name = next(short for short, cls in _SPEC_NAMES.items() if type(process) is cls)
    params = [f"{k}={getattr(process, k)!r}" for k in _spec_parameters(type(process))]
    if isinstance(process, DDPM):
        params[0] = process.beta_schedule
    return f"{name}:{','.join(params)}" if params else name


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
