"""Loading the optional peers (diffusers, k-diffusion) for the tests that compare against them.

A missing peer skips the test unless the environment variable SGM_REF_REQUIRE_PEERS is set
(to anything but "" or "0"; CI sets it), which makes a missing peer a failure.

k-diffusion 0.1.1's package __init__ imports everything (torchvision, scikit-image, dctorch,
clean-fid, CLIP, wandb, ...); next to torch 2.13 CPU that does not import (torchvision
from PyPI is built for the CUDA torch and fails with "operator torchvision::nms does not
exist"; dctorch requires numpy < 2). So `load_k_diffusion` loads the modules under test
from the installed files without running that __init__: k_diffusion/sampling.py and
k_diffusion/external.py as they are (they need torch, scipy, torchdiffeq, torchsde,
tqdm), with their `utils` import given utils.append_dims, and the Denoiser class of
k_diffusion/layers.py - all taken verbatim from the installed sources.
"""

import ast
import importlib
import importlib.util
import math
import os
import sys
import types
from pathlib import Path

import pytest

REQUIRED = os.environ.get("SGM_REF_REQUIRE_PEERS", "") not in ("", "0")

_KD = "_sgm_ref_peer_k_diffusion"


def peer(module):
    """Import a peer; skip if it is missing, unless SGM_REF_REQUIRE_PEERS is set."""
    if REQUIRED:
        return importlib.import_module(module)
    return pytest.importorskip(module)


def definitions(path, names, namespace):
    """Execute the named top-level functions/classes of a source file in namespace."""
    source = Path(path).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name in names:
            exec(compile(ast.get_source_segment(source, node), str(path), "exec"), namespace)
    missing = [n for n in names if n not in namespace]
    if missing:
        raise ImportError(f"{path} defines no {missing}")
    return namespace


def load_k_diffusion():
    """k-diffusion's sampling and external modules and layers.Denoiser (see the docstring),
    as a namespace with torch, sampling, external, Denoiser; skips if a piece is missing."""
    torch = peer("torch")
    for dep in ("torchsde", "torchdiffeq", "scipy", "tqdm"):
        peer(dep)
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None:
        if REQUIRED:
            raise ImportError("k-diffusion is not installed (pip install --no-deps k-diffusion)")
        pytest.skip("k-diffusion is not installed")
    root = Path(spec.origin).parent
    if _KD not in sys.modules:
        pkg = types.ModuleType(_KD)
        pkg.__path__ = [str(root)]
        utils = types.ModuleType(_KD + ".utils")
        definitions(root / "utils.py", ["append_dims"], utils.__dict__)
        pkg.utils = utils
        sys.modules[_KD], sys.modules[_KD + ".utils"] = pkg, utils
    sampling = importlib.import_module(_KD + ".sampling")
    external = importlib.import_module(_KD + ".external")
    layers = definitions(root / "layers.py", ["Denoiser"], {"torch": torch, "nn": torch.nn, "math": math,
                                                             "utils": sys.modules[_KD + ".utils"]})
    return types.SimpleNamespace(torch=torch, sampling=sampling, external=external, Denoiser=layers["Denoiser"])
