"""Targets named by a short string, as the command line and run folders write them.

    ring                              GaussianMixture.ring() (8 modes, radius 2, std 0.3)
    ring:k=6,radius=3,std=0.2         the same with other parameters
    gmm:d=32,k=4,radius=3,seed=0      GaussianMixture.paper_family (identity covariances)
    product:d=8,shift=1.4,std=1       ProductMixture.symmetric (independent coordinates)
    path/to/mixture.json              {"weights": [...], "means": [[...]], "covariances": ...,
                                       "covariance_type": ...}
    path/to/record.json               {"type": "ProductMixture", ...}: a record (to_record),
                                       e.g. a run's config.json "target_definition"

In a JSON file "covariances" is omitted or null (identity covariances) or has the shape
its "covariance_type" names, as scikit-learn writes them: "full" (K, d, d), "diag"
(K, d), "tied" (d, d) shared by all components, "spherical" (K,). Without
"covariance_type" only (K, d) (diagonal) and (K, d, d) (full) are read from the shape,
and a (d, d) array with K = d that could also be one shared covariance is refused
(GaussianMixture). Numbers must be numbers: true and false are refused, and so is a
non-zero number float64 would round to 0 (1e-400), in a file or a preset's parameters.

from_spec(spec) returns the target; a spec that names no target, a malformed parameter
list, an unreadable or invalid JSON file each raise ValueError saying what to write.
to_record / from_record write a target's full definition as JSON-ready data (what a run
folder keeps, so it does not depend on the file a spec named).
"""

import json
import os
import re
import unicodedata

import numpy as np

from .._json import load_json
from ._checks import _memory_bytes, check_size, shown
from .gaussian_mixture import GaussianMixture
from .product_mixture import ProductMixture

__all__ = ["from_spec", "to_record", "from_record", "PRESETS"]


def _ring(k="8", radius="2.0", std="0.3"):
    return GaussianMixture.ring(_int(k, "k"), _float(radius, "radius"), _float(std, "std"))


def _gmm(d=None, k=None, radius=None, seed="0"):
    missing = [name for name, value in (("d", d), ("k", k), ("radius", radius)) if value is None]
    if missing:
        raise ValueError(f"gmm needs {', '.join(missing)}: write e.g. gmm:d=32,k=4,radius=3,seed=0")
    seed = _int(seed, "seed")
    if seed < 0:
        raise ValueError(f"target parameter seed must be >= 0, got {seed}")
    d, k = _int(d, "d"), _int(k, "k")
    if d >= 1 and k >= 1:  # others: paper_family names them
        # its own check counts the means alone (2 k d numbers); building them peaks at ~8.5 arrays of k x d
        # float64 (ru_maxrss growth of from_spec: 68 bytes a mean entry in d = 1e6, k = 2 and d = 2e5, k = 10):
        # gmm:d=100000000,k=2 passed it and took 13.4 GB before anything else was asked
        what = f"building k = {k} means in d = {d} ({_BUILD_ARRAYS} arrays of k x d numbers)"
        if _fits(_BUILD_ARRAYS * 8 * d):  # one mean fits: k is the count to lower
            check_size(k, _BUILD_ARRAYS * d, "k", what)
        else:
            check_size(d, _BUILD_ARRAYS * k, "d", what)
    return GaussianMixture.paper_family(d, k, _float(radius, "radius"), seed)


def _product(d=None, shift="1.5", std="1.0"):
    if d is None:
        raise ValueError("product needs d: write e.g. product:d=8,shift=1.5,std=1")
    d = _int(d, "d")
    if d >= 1:  # building it peaks at ~7.2 arrays of 2 x d float64 (57 bytes a mean entry in d = 1e6)
        check_size(d, 2 * _BUILD_ARRAYS, "d", f"building product's 2 x {d} means ({_BUILD_ARRAYS} arrays of 2 x d "
                                              "numbers)")
    return ProductMixture.symmetric(d, _float(shift, "shift"), _float(std, "std"))


# the arrays of the means' shape a preset's construction peaks at (measured above, rounded up)
_BUILD_ARRAYS = 9


def _fits(nbytes):
    memory = _memory_bytes()
    return nbytes <= min(np.iinfo(np.intp).max, memory or np.iinfo(np.intp).max)


def _preset_dimension(spec):
    """The dimension d a preset spec names ("gmm:d=32,k=4,radius=3" -> 32, "ring" -> 2), read
    from the text without building the target, or None (a JSON file, or a spec from_spec will
    refuse: it names what is wrong). For a caller that must refuse a dimension before the
    target's construction, which in d = 1e8 takes gigabytes."""
    if not isinstance(spec, str):
        return None
    name, sep, rest = spec.strip().partition(":")
    name = name.strip()
    if name not in PRESETS or (not sep and name != "ring"):
        return None
    try:  # the parameters as from_spec reads them ("ring:" and "ring:d=3" were 2, refused by from_spec)
        params = _parameters(rest, name, PRESETS[name][1]) if sep else {}
        d = 2 if name == "ring" else int(params.get("d", ""))
    except ValueError:
        return None
    return d if d >= 1 else None


# name -> (constructor taking the parameters as strings, the parameters it accepts)
PRESETS = {
    "ring": (_ring, ("k", "radius", "std")),
    "gmm": (_gmm, ("d", "k", "radius", "seed")),
    "product": (_product, ("d", "shift", "std")),
}

_RECORD_TYPES = {"GaussianMixture": GaussianMixture, "ProductMixture": ProductMixture}


def _int(text, name):
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"target parameter {name} must be an integer, got {text!r}") from None


def _nonzero_literal(text):
    """Whether a decimal literal float() accepted names a non-zero number: a non-zero digit
    before its exponent. Not float(mantissa) != 0, which missed '0.000...001' (400 zeros:
    the mantissa itself underflows) and read it as 0."""
    return any(unicodedata.decimal(ch, 0) != 0 for ch in re.split("[eE]", text)[0])  # float() reads any digits


def _float(text, name):
    """float(text), refusing a non-zero number that float64 rounds to 0 ('1e-400'): read as 0
    it would silently build another target (gmm's radius 0 puts every mean at the origin)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"target parameter {name} must be a number, got {text!r}") from None
    if value == 0.0 and _nonzero_literal(text):  # a non-zero number that float64 rounds to 0
        raise ValueError(f"target parameter {name} = {text!r} is below float64's smallest positive number "
                         "(about 5e-324) and would read as 0; write 0 if that is what you mean")
    return value


def _parameters(text, name, accepted):
    params = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValueError(f"malformed target parameter {item!r} in {name}: write key=value pairs separated "
                             f"by commas, e.g. {name}:{accepted[0]}=...")
        if key not in accepted:
            raise ValueError(f"unknown parameter {key!r} for target {name}; it takes {', '.join(accepted)}")
        if key in params:
            raise ValueError(f"parameter {key!r} given twice in target {name}")
        params[key] = value
    return params


class _Underflow(Exception):
    pass


def _no_underflow(token):
    """json's parse_float: float(token), refusing a non-zero number that reads as 0 (as _float)."""
    value = float(token)
    if value == 0.0 and _nonzero_literal(token):
        raise _Underflow(token)
    return value


def _from_json(path):
    try:
        with open(path, encoding="utf-8") as f:
            spec = load_json(f, f"target file {path}")
        # valid JSON (load_json said so): read again, only to find numbers float64 rounds to 0
        # ("weights": [1e-400, 1] was a component of weight 0, dropped from the oracle)
        with open(path, encoding="utf-8") as f:
            json.loads(f.read(), parse_float=_no_underflow)
    except OSError as exc:
        raise ValueError(f"cannot read target file {path}: {exc.strerror or exc}") from None
    except _Underflow as exc:
        raise ValueError(f"target file {path}: the number {exc.args[0]} is below float64's smallest positive number "
                         "(about 5e-324) and would read as 0; write 0 if that is what you mean") from None
    if isinstance(spec, dict) and "target_definition" in spec and "type" not in spec:
        raise ValueError(f"target file {path} is a run's config.json, not a target: its target is the record "
                         "under \"target_definition\"; write that record to a file of its own and pass that "
                         "(json.dump(config[\"target_definition\"], f))")
    try:
        if isinstance(spec, dict) and "type" in spec:  # a record (to_record): a run's "target_definition"
            return from_record(spec)
        return GaussianMixture.from_dict(spec)
    except ValueError as exc:
        raise ValueError(f"target file {path}: {exc}") from None


def from_spec(spec):
    """The target a spec string names (module docstring for the forms).

    Parameters
    ----------
    spec : str
        A preset name with optional parameters ("ring", "gmm:d=32,k=4,radius=3,seed=0")
        or the path of a JSON file (ending in .json, or an existing file): a mixture
        (GaussianMixture.to_dict()) or a target record (to_record: {"type": ..., ...}, as
        a run's config.json keeps it under "target_definition").

    Returns
    -------
    GaussianMixture or ProductMixture

    Raises
    ------
    ValueError
        Unknown name, malformed or unknown parameters, an unreadable or invalid file.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"target must be a non-empty string (a preset such as 'ring', or a JSON file), "
                         f"got {shown(spec)}")
    spec = spec.strip()
    name, sep, rest = spec.partition(":")
    if name.strip() in PRESETS:  # "ring :std=0.1", as keys and values may be spaced
        name = name.strip()
    if name not in PRESETS and (spec.endswith(".json") or os.path.isfile(spec)):
        return _from_json(spec)
    if name not in PRESETS:
        raise ValueError(f"unknown target {name!r}: use one of {', '.join(sorted(PRESETS))} "
                         "(e.g. gmm:d=32,k=4,radius=3,seed=0) or the path of a .json mixture file")
    build, accepted = PRESETS[name]
    params = _parameters(rest, name, accepted) if sep else {}
    try:
        return build(**params)
    except ValueError as exc:  # the constructor's check ("k must be ...") said which target
        message = str(exc)
        if message.startswith(("target parameter", f"{name} needs")):
            raise
        raise ValueError(f"target {spec}: {message}") from None


def to_record(target):
    """{"type": class name, **target.to_dict()}: the target's full definition, JSON-ready."""
    kind = type(target).__name__
    if kind not in _RECORD_TYPES:
        raise ValueError(f"cannot record a target of type {kind}; supported: {', '.join(_RECORD_TYPES)}")
    # the record is lists of Python floats: 24 bytes a float and 8 a list's slot, 4 times its array's
    # 8 (a record in d = 1e8 was 6.4 GB; refused before it is built, not killed for memory while it is)
    numbers = sum(int(np.size(a)) for a in (target.weights, target.means, getattr(target, "covariances", None),
                                            getattr(target, "stds", None)) if a is not None)
    if not _fits(32 * numbers):
        memory = _memory_bytes()
        raise ValueError(f"the target's record (its {numbers} numbers as JSON-ready lists, 32 bytes each) would "
                         f"need {32 * numbers / 2**30:.3g} GiB, more than this machine's memory "
                         f"({(memory or 0) / 2**30:.3g} GiB): use a target of fewer numbers (a lower d or k)")
    return {"type": kind, **target.to_dict()}


def from_record(record):
    """The target to_record wrote; raises ValueError for anything else.

    A GaussianMixture record without "covariance_type" was written before the key
    existed, when a two-dimensional covariances array could only mean diagonal
    variances: it is read so, never refused as ambiguous.
    """
    if not isinstance(record, dict) or record.get("type") not in _RECORD_TYPES:
        raise ValueError(f"a target record must be a dict with 'type' one of {', '.join(_RECORD_TYPES)}")
    body = {k: v for k, v in record.items() if k != "type"}
    if record["type"] == "GaussianMixture" and "covariance_type" not in body and body.get("covariances") is not None:
        try:
            legacy_diagonal = np.ndim(body["covariances"]) == 2
        except ValueError:  # ragged: the constructor names it
            legacy_diagonal = False
        if legacy_diagonal:
            body["covariance_type"] = "diag"
    return _RECORD_TYPES[record["type"]].from_dict(body)
