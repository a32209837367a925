"""References for the network tests (test_nn, test_losses, test_score_model, test_train).

NumPy: sgm_ref.plain, the whole method written once in plain NumPy from the formulas
(no numba kernel, no shared code with the fast path; tests/test_plain.py holds the two
together). PyTorch: the MLP, its time embedding, the process coefficients and the DSM
loss written again here, with autograd supplying the gradients, an independent check
of both.

Also the hooks that start tests/test_nojit.py's interpreted run in the background, and the one
that fails, under SGM_REF_REQUIRE_PEERS (CI), a test skipped for a package that does not import.
"""

import os
import types

import numpy as np
import pytest

from sgm_ref import OU, VP, plain


def process_pair(process):
    """(beta_min, beta_max) of an OU or VP process, the form sgm_ref.plain takes."""
    return plain.OU if isinstance(process, OU) else (process.beta_min, process.beta_max)


def embed_numpy(t, kind, n_frequencies=4):
    """e(t): [t], [log t] or [log t, sin(w_j log t), cos(w_j log t)], w_j = 2^j / 4."""
    return plain.embed(t, kind, n_frequencies)


def forward_numpy(net, x, t):
    """(output, [pre-activations z_l of the hidden layers]) of an sgm_ref MLP, by sgm_ref.plain."""
    t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],))
    out, tape = plain.mlp_forward(net.params, plain.Net.of(net), x, t)
    return out, [h @ W + b for (h, _), (W, b) in zip(tape[:-1], plain.layers(net.params, net.sizes))]


def coefficients_numpy(process, t):
    """(alpha_t, sigma_t^2) from B(t) = int_0^t beta: OU B = 2t, VP B = b0 t + (b1 - b0) t^2 / 2."""
    return plain.marginal(t, process_pair(process))


def dsm_loss_numpy(model, x0, t, z, weighting):
    """(loss, gradient) of a ScoreModel on one batch, by sgm_ref.plain."""
    return plain.dsm_loss(model.params, plain.Net.of(model.network), x0, np.asarray(t, dtype=np.float64), z,
                          process_pair(model.process), model.parameterization, weighting)


# Smallest |pre-activation| allowed in a relu gradient check: a finite-difference step of
# 1e-5 moves a pre-activation by at most ~1e-4 in these tests, so 1e-3 keeps every kink away.
RELU_MARGIN = 1e-3


def keep_relu_away_from_kinks(net, x, t):
    """Shift relu biases (layer by layer) until no pre-activation of the batch lies within
    RELU_MARGIN of the kink at 0, where finite differences are meaningless."""
    if net.activation != "relu":
        return
    for l in range(net.depth):
        for _ in range(100):
            near = np.any(np.abs(forward_numpy(net, x, t)[1][l]) < RELU_MARGIN, axis=0)
            if not near.any():
                break
            net.biases[l][near] += 3 * RELU_MARGIN
    _, pre = forward_numpy(net, x, t)
    assert min(np.abs(z).min() for z in pre) > RELU_MARGIN


@pytest.fixture
def numpy_ref():
    return types.SimpleNamespace(forward=forward_numpy, embed=embed_numpy, coefficients=coefficients_numpy,
                                 dsm_loss=dsm_loss_numpy, keep_relu_away_from_kinks=keep_relu_away_from_kinks)


class TorchReference:
    """The same network and loss in float64 PyTorch, on tensors copied from an MLP."""

    def __init__(self, torch):
        self.torch = torch
        F = torch.nn.functional
        self.act = {"relu": torch.relu, "silu": F.silu, "tanh": torch.tanh, "softplus": F.softplus}

    def parameters(self, net):
        """Leaf tensors [W_0, b_0, W_1, b_1, ...] (copies, requires_grad) of net's parameters."""
        out = []
        for W, b in zip(net.weights, net.biases):
            out += [self.torch.tensor(W, requires_grad=True), self.torch.tensor(b, requires_grad=True)]
        return out

    def flat(self, tensors):
        """Concatenate tensors (or their .grad) in the flat layout of MLP.params."""
        return self.torch.cat([p.detach().reshape(-1) for p in tensors]).numpy()

    def embed(self, t, embedding):
        torch = self.torch
        if embedding.kind == "linear":
            return t[:, None]
        tau = torch.log(t)[:, None]
        feats = [tau]
        for j in range(embedding.n_frequencies if embedding.kind == "fourier" else 0):
            w = 2.0**j / 4.0
            feats += [torch.sin(w * tau), torch.cos(w * tau)]
        return torch.cat(feats, dim=1)

    def forward(self, net, params, x, t):
        """net(x, t) with the given parameter tensors; x, t tensors."""
        h = self.torch.cat([x, self.embed(t, net.embedding).to(x.dtype)], dim=1)
        L = len(params) // 2
        for l in range(L):
            h = h @ params[2 * l] + params[2 * l + 1]
            if l < L - 1:
                h = self.act[net.activation](h)
        return h

    def coefficients(self, process, t):
        torch = self.torch
        if isinstance(process, OU):
            B = 2.0 * t
        elif isinstance(process, VP):
            B = process.beta_min * t + 0.5 * (process.beta_max - process.beta_min) * t * t
        else:
            raise TypeError(process)
        return torch.exp(-0.5 * B), -torch.expm1(-B)

    def dsm_loss(self, model, params, x0, t, z, weighting):
        """1/n sum_i lambda_i |s(alpha_i x0_i + sigma_i z_i, t_i) + z_i / sigma_i|^2 (tensor)."""
        torch = self.torch
        x0, t, z = (torch.as_tensor(np.asarray(a)) for a in (x0, t, z))
        alpha, sigma2 = self.coefficients(model.process, t)
        sigma = torch.sqrt(sigma2)[:, None]
        xt = alpha[:, None] * x0 + sigma * z
        out = self.forward(model.network, params, xt, t)
        if model.parameterization == "score":
            s = out
        elif model.parameterization == "noise":
            s = -out / sigma
        else:
            s = out - xt
        lam = sigma2 if weighting == "sigma2" else torch.ones_like(sigma2)
        return torch.mean(lam * torch.sum((s + z / sigma) ** 2, dim=1))


@pytest.fixture
def torch_ref():
    """PyTorch references; the test is skipped if torch is not installed, unless
    SGM_REF_REQUIRE_TORCH=1 (set by CI), which makes a missing torch a failure."""
    if os.environ.get("SGM_REF_REQUIRE_TORCH") == "1":
        import torch
    else:
        torch = pytest.importorskip("torch")
    return TorchReference(torch)


def pytest_collection_finish(session):
    """Start tests/test_nojit.py's interpreted run in the background when it is selected,
    so that it overlaps the rest of the suite (test_nojit waits for it). Not in pytest-xdist's
    workers: each collects every test, so each would start a run of its own (one wasted, and
    both taking the cores the workers are for); test_nojit starts it in the worker it runs in."""
    if session.config.option.collectonly or hasattr(session.config, "workerinput"):
        return
    for item in session.items:
        if item.path.name == "test_nojit.py":
            item.module.start()
            return


def pytest_collection_modifyitems(config, items):
    """In pytest-xdist's workers, test_nojit (the interpreted run, about three minutes in its worker)
    first: at the end of a worker's queue it kept the suite waiting while the other worker idled.
    The order is the same in every worker, as xdist needs; a run in one process keeps its own."""
    if hasattr(config, "workerinput"):
        items.sort(key=lambda item: item.path.name != "test_nojit.py")


def pytest_sessionfinish(session):
    for item in getattr(session, "items", []):  # none if collection failed
        if item.path.name == "test_nojit.py":
            item.module.stop()
            return


def _require_imports(report, excinfo):
    """Under SGM_REF_REQUIRE_PEERS (CI), a test or module that skips because an optional package
    does not import (pytest.importorskip: torch, jax, matplotlib, jupytext, distributed, ...)
    fails instead: CI installs every extra, so such a skip is a broken install, not a machine
    without the extra."""
    if (report.skipped and excinfo is not None and os.environ.get("SGM_REF_REQUIRE_PEERS", "") not in ("", "0")
            and str(excinfo.value).startswith("could not import")):
        report.outcome = "failed"
        report.longrepr = f"{excinfo.value} (SGM_REF_REQUIRE_PEERS is set: CI installs every optional package)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _require_imports(outcome.get_result(), call.excinfo)


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield  # a module-level importorskip (tests/test_tutorial.py's jupytext)
    report = outcome.get_result()
    if report.skipped and isinstance(report.longrepr, tuple):  # (path, line, "Skipped: could not import ...")
        _require_imports(report, types.SimpleNamespace(value=str(report.longrepr[2]).removeprefix("Skipped: ")))
