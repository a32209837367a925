"""Milliseconds per training step of a score MLP: sgm_ref against NumPy, PyTorch and JAX.

One step is what a training loop does per iteration: draw a batch (data indices with
replacement, t ~ uniform[1e-3, 2], noise z ~ N(0, I)), run the network forward and
backward on the denoising score matching loss, and take an Adam step (lr 1e-3):

    xt = alpha_t x0 + sigma_t z,   alpha_t = exp(-t),  sigma_t = sqrt(-expm1(-2 t))   (OU)
    s  = net([xt, t])                                  ("score" parameterisation)
    L  = 1/batch sum_i sum_j (s_ij + z_ij / sigma_i)^2  (weighting "none")

The network is an MLP on d + 1 inputs (x and t, time embedding "linear") with `depth`
SiLU hidden layers of `width` units and d outputs. Rows (d, width, depth, batch):
(2, 128, 3, 256), (32, 256, 3, 1024), (128, 512, 4, 2048); float64 and float32.

    python benchmarks/train_step.py [--quick] [--rows 1,3] [--dtypes float64]
                                    [--skip-peers] [--skip-jit-cost] [--thread-sweep] [--phases] [--bound] [--memory]

Implementations, all starting from the same initial parameters and the same data
(n = 10 x batch points of N(0, I)):
- sgm_ref: sgm_ref.train.TrainStep(ScoreModel(MLP(...), OU(), "score"), ...) with
  sgm_ref.optim.Adam; draws from a numpy Generator.
- NumPy: sgm_ref.plain.train_step, the plain-NumPy twin of the whole method (matrix
  products with @, SiLU from ufuncs, hand-written backward and Adam; temporaries allowed),
  the specification the fast path is tested against.
- PyTorch (if importable): nn.Sequential of Linear + SiLU, torch.optim.Adam (defaults),
  torch.set_num_threads(2); draws from a torch.Generator inside the step.
- JAX (if importable): one jax.jit-compiled step (jax.value_and_grad + hand-written Adam,
  in torch.optim.Adam's arithmetic), draws with jax.random inside it; float64 through
  jax_enable_x64 (set at import, before any JAX array exists).

Before anything is timed, equal work is checked on one fixed batch (same parameters,
x0, t, z): in float64 the loss and the gradient of NumPy, PyTorch and JAX must equal
sgm_ref.losses.dsm_loss's to a relative 1e-10 (max |difference| / max |value|), and one
full NumPy step (same seed, so the same draws) must give sgm_ref's loss and parameters;
float32 gets a loose sanity check (1e-3). A failed check leaves that implementation
out of the timing for that row.

Timing: a few warm-up steps (JAX compiles on its first call), then k steps per repeat
with k chosen so that a repeat takes ~0.3 s (0.1 s with --quick); the median over
repeats of (repeat time / k) is reported. Repeats of the implementations are
interleaved (each round runs every implementation once, in a random order), so a change of machine load hits all of them alike; the
ratio sgm_ref / JAX is also taken round by round, and its median over rounds given with
a distribution-free 95% interval and a verdict against 0.9 (issue 16). JAX is
synchronised (block_until_ready) at the end of each repeat, not after every step.
The "other load" column is the CPU time other processes (and the hypervisor) took
during the timed repeats, from /proc/stat, in CPUs (largest over repeats): on 2 cores,
anything above ~0.1 means the row was measured on a busy machine and should be rerun.

GFLOP/s counts the flops the step's matrix products execute (step_flops: forward, dW and,
past the input layer, dh, bias rows as one more input; 6 x batch x n_params before
2026-12-05, 0.8-2.5% more), the same count for every implementation; "% of peak" divides it by
the NumPy matrix-product rate of the same dtype measured in this run (2048^3 into a
preallocated output, as the step's products write, best of 5, before the rows). The share
of the peak is also taken round by round: the 2048^3 product of the row's dtype is timed
in every round of the interleaved repeats, as one more implementation, and each round's
step rate over that round's product rate gives a median with a distribution-free 95%
interval and a verdict against issue 16's targets (>= 0.6 on the small row, >= 0.8 on the
others). The product makes each round about one
repeat (--target seconds) longer, and whichever implementation follows it finds the caches
swept; the order is a fresh random permutation each round (seeded: the same orders in
every run), so no implementation keeps one predecessor (a rotation did: jax.jit always
followed sgm_ref or the product, and met their idle OpenBLAS worker spinning), and each
timed repeat starts after an untimed 20 ms pause in which the previous one's idle threads
go to sleep (torch's spin by default). On a shared host the step can sit in a
slow phase that a best-of-5 peak taken earlier does not share (this machine has phases in
which the small row's step takes twice its time, and the "other load" column does not
show them).
The script reports the thread settings and the OPENBLAS_* / OpenMP environment variables;
it sets only OPENBLAS_THREAD_TIMEOUT=4 (unless set), as sgm_ref does when imported first,
and loads torch before sgm_ref (the comment at the imports says why). The optional --phases diagnostic splits sgm_ref's step into its phases (batch draw,
network inputs, forward matrix products, activation, loss residual, backward
activation derivative, the two backward matrix products, Adam with its gradient
check), timed call by call with perf_counter in a copy of TrainStep's sequence, and
checks that the copy ends with the same parameters, bit for bit, as TrainStep; each
phase is shown in ms/step, as a share of the step, and for the matrix products as a
share of the matrix-product peak. The optional --bound diagnostic sets the step (best single
step) beside the least a SiLU MLP step of that shape costs here: the same matrix
products alone, back to back at their shapes with hot caches, plus one vectorised exp
per hidden activation, each the best of its passes, as % of a peak measured just before
the row; a step cannot exceed that % without faster products or a cheaper exp. The optional --memory report runs each implementation
in a fresh interpreter that loads only its own libraries (numba and sgm_ref for sgm_ref
alone; its peak resident set, VmHWM, and the growth from just before it is built) and gives sgm_ref's workspace bytes against the minimum the activations
need. The optional --thread-sweep diagnostic times sgm_ref
alone in fresh interpreters: as found, with NUMBA_THREADING_LAYER=workqueue and with
OMP_WAIT_POLICY=passive (set for that child only; OPENBLAS_* are passed on unchanged),
each at numba x BLAS thread counts in {1, 2} set in-process by numba.set_num_threads and
threadpoolctl.threadpool_limits. It shows whether numba's OpenMP threads, which spin
while waiting between parallel regions, and OpenBLAS's threads fight over the cores.
"""

import argparse
import datetime
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import textwrap
import time

# Every implementation meets the same threaded runtimes, each with its own defaults:
# - OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when numpy loads (numba's import, below). sgm_ref
#   sets it to 4 when it is imported first (sgm_ref._threads), so that an idle worker sleeps;
#   imported after numba it came too late, and the worker of sgm_ref's step or of the peak
#   product spun into the next implementation's time (a review measured jax.jit 12-19%
#   slower right after sgm_ref than after a pause). Set here for the whole run.
# - torch's OpenMP runtime reads OMP_WAIT_POLICY when torch loads: imported after sgm_ref,
#   which sets PASSIVE for numba's, torch's threads slept at once (GOMP_SPINCOUNT 0 instead
#   of its default 300000), a PyTorch slowed by our setting. So torch loads first, except
#   where it is not wanted: the --memory and --thread-sweep workers (a fresh interpreter per
#   implementation, and sgm_ref alone; with torch loaded, every worker's peak carried
#   torch's ~180 MiB) and --skip-peers ("PyTorch and JAX not imported").
#   One runtime is shared all the same: numba's 'omp' layer binds to the libgomp torch loaded,
#   which read no wait policy, so numba's idle threads spin there as they do not with sgm_ref
#   alone (omp_note; TrainStep opens no numba parallel region at the three rows, so the
#   step's timings do not meet it).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")


def _lean_worker(argv):
    """The implementation a --memory worker's command line names if it is one of the peers
    (NumPy, PyTorch, JAX), else None. Such a worker imports neither numba nor the sgm_ref
    package: its peak is that implementation's alone (with them, the small row's peaks of
    PyTorch, JAX and the plain NumPy step carried 67-86 MiB that a user of the peer never loads).
    It takes sgm_ref.plain (NumPy only) from its file, and its problem from the parent."""
    for i, a in enumerate(argv):
        value = a.split("=", 1)[1] if a.startswith("--_memory-worker=") else (
            argv[i + 1] if a == "--_memory-worker" and i + 1 < len(argv) else None)
        if value is not None:
            name = value.split(",")[-1]
            return name if name in ("NumPy", "PyTorch", "JAX") else None
    return None


_LEAN_WORKER = _lean_worker(sys.argv[1:])
if not _LEAN_WORKER:
    import numba  # noqa: E402
import numpy as np  # noqa: E402
from _machine import best_time, cpu_name, machine_busy_seconds, paired_cells  # noqa: E402  (benchmarks/ on sys.path)


def _loads_torch_first(argv):
    """False for a worker's command line (--_memory-worker, --_sweep-worker) or one with
    --skip-peers (or an abbreviation argparse accepts, down to --skip-p)."""
    options = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    return not any(a in ("--_memory-worker", "--_sweep-worker")
                   or (len(a) >= len("--skip-p") and "--skip-peers".startswith(a)) for a in options)


if _loads_torch_first(sys.argv[1:]):
    try:  # before sgm_ref (above); measured without it if absent
        import torch as _torch_first  # noqa: F401
    except ImportError:
        pass


def _plain_from_its_file():
    """sgm_ref/plain.py (it imports NumPy only) loaded from its file: the sgm_ref package's
    __init__, and numba with it, not run."""
    import importlib.util
    package = importlib.util.find_spec("sgm_ref")  # finds the package without importing it
    path = os.path.join(package.submodule_search_locations[0], "plain.py")
    spec = importlib.util.spec_from_file_location("_sgm_ref_plain", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if _LEAN_WORKER:
    plain = _plain_from_its_file()
else:
    import sgm_ref  # noqa: E402
    from sgm_ref import OU, plain  # noqa: E402
    from sgm_ref.losses import dsm_loss  # noqa: E402
    from sgm_ref.nn.mlp import MLP  # noqa: E402
    from sgm_ref.optim import Adam  # noqa: E402
    from sgm_ref.score_model import ScoreModel  # noqa: E402
    from sgm_ref.train import TrainStep  # noqa: E402

ROWS = ((2, 128, 3, 256), (32, 256, 3, 1024), (128, 512, 4, 2048))  # (d, width, depth, batch)
DTYPES = ("float64", "float32")
IMPLEMENTATIONS = ("sgm_ref", "JAX", "PyTorch", "NumPy")
T0, T_END = 1e-3, 2.0
LR, BETA1, BETA2, EPS = 1e-3, 0.9, 0.999, 1e-8
DATA_FACTOR = 10  # data set size = DATA_FACTOR x batch
TOLERANCE = {"float64": 1e-10, "float32": 1e-3}
PEAK_SIZE = 2048
SEED = 20261124
JAX_TARGET = 0.9  # issue 16: sgm_ref / jax.jit <= 0.9 on every row with AVX-512 kernels
# issue 16, in the OpenBLAS setting as found: sgm_ref's share of the matrix-product peak at least
# this, per row (the small row's products are 256 x 128 matrices)
PEAK_TARGETS = {(2, 128, 3, 256): 0.6, (32, 256, 3, 1024): 0.8, (128, 512, 4, 2048): 0.8}
ENV_VARS = (
    "OPENBLAS_CORETYPE",
    "OPENBLAS_L2_SIZE",
    "OPENBLAS_NUM_THREADS",
    "OPENBLAS_THREAD_TIMEOUT",  # set by the script (unless set): whether OpenBLAS's idle worker sleeps
    "OMP_NUM_THREADS",
    "OMP_WAIT_POLICY",
    "GOMP_SPINCOUNT",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMBA_THREADING_LAYER",
    "XLA_FLAGS",
)


# -- optional peers -------------------------------------------------------------------------
def _import_torch():
    try:
        import torch
    except ImportError as exc:
        return None, f"not importable ({exc})"
    torch.set_num_threads(2)
    return torch, None


def _import_jax():
    try:
        import jax
    except ImportError as exc:
        return None, f"not importable ({exc})"
    # must happen before any JAX array is created; float32 arrays stay float32 (explicit dtypes)
    jax.config.update("jax_enable_x64", True)
    return jax, None


# -- the problem ----------------------------------------------------------------------------
def layer_sizes(d, width, depth):
    return (d + 1,) + (width,) * depth + (d,)


def n_params_of(sizes):
    return sum(fi * fo + fo for fi, fo in zip(sizes[:-1], sizes[1:]))


def step_flops(sizes, batch):
    """The flops a training step's matrix products execute, bias rows counted as one more
    input: per layer (f_in -> f_out) 2 B (f_in + 1) f_out forward and as much for dW, and
    2 B f_in f_out for dh except at the input layer, which has no dL/dh product. (6 B x
    n_params, the count used before 2026-12-05, is 0.8%, 2.1% and 2.5% above it on the
    small, middle and large rows: it counted an input-layer dh and the bias rows thrice.)"""
    layers = list(zip(sizes[:-1], sizes[1:]))
    return float(sum(4 * batch * (fi + 1) * fo + (2 * batch * fi * fo if l > 0 else 0)
                     for l, (fi, fo) in enumerate(layers)))


def make_problem(d, width, depth, batch, dtype, seed):
    """Initial parameters (sgm_ref's initialisation), data, and a fixed check batch."""
    rng = np.random.default_rng(seed)
    sizes = layer_sizes(d, width, depth)
    params0 = MLP(d, (width,) * depth, "silu", "linear", dtype, rng=seed).params.copy()
    data = rng.standard_normal((DATA_FACTOR * batch, d)).astype(dtype)
    check = {
        "x0": rng.standard_normal((batch, d)).astype(dtype),
        "t": rng.uniform(T0, T_END, batch),
        "z": rng.standard_normal((batch, d)).astype(dtype),
    }
    return {"d": d, "width": width, "depth": depth, "batch": batch, "dtype": np.dtype(dtype),
            "sizes": sizes, "params0": params0, "data": data, "check": check}


# -- sgm_ref --------------------------------------------------------------------------------
def sgm_ref_model(problem):
    p = problem
    net = MLP(p["d"], (p["width"],) * p["depth"], "silu", "linear", p["dtype"], rng=0)
    net.set_params(p["params0"])
    return ScoreModel(net, OU(), "score")


def make_sgm_ref(problem, seed):
    model = sgm_ref_model(problem)
    step = TrainStep(model, problem["data"], problem["batch"], t0=T0, T=T_END,
                     optimizer=Adam(model.params, lr=LR), weighting="none", time_distribution="uniform")
    rng = np.random.default_rng(seed)

    def run(k):
        for _ in range(k):
            step(rng)

    return run, step, rng


# -- the plain NumPy baseline: sgm_ref.plain, the specification the fast path is tested against --
def _numpy_state(problem):
    net = plain.Net(problem["sizes"], "silu", "linear")
    return {"theta": problem["params0"].copy(), "adam": {}, "net": net,
            "data": problem["data"], "batch": problem["batch"]}


def _numpy_loss_and_grad(state, x0, t, z):
    return plain.dsm_loss(state["theta"], state["net"], x0, t, z, plain.OU, "score", "none")


def _numpy_step(state, rng):
    """One plain.train_step: draws in sgm_ref.train.TrainStep's order (indices, times, noise)."""
    return plain.train_step(state["theta"], state["net"], state["adam"], state["data"], state["batch"], rng,
                            T0, T_END, plain.OU, "score", "none", "uniform", lr=LR, betas=(BETA1, BETA2), eps=EPS)


def make_numpy(problem, seed):
    state = _numpy_state(problem)
    rng = np.random.default_rng(seed)

    def run(k):
        for _ in range(k):
            _numpy_step(state, rng)

    return run


# -- PyTorch --------------------------------------------------------------------------------
def _torch_net(torch, problem):
    sizes = problem["sizes"]
    layers = []
    for i, (fi, fo) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(torch.nn.Linear(fi, fo))
        if i < len(sizes) - 2:
            layers.append(torch.nn.SiLU())
    dtype = getattr(torch, problem["dtype"].name)
    net = torch.nn.Sequential(*layers).to(dtype)
    linears = [m for m in net if isinstance(m, torch.nn.Linear)]
    with torch.no_grad():
        for lin, (W, b) in zip(linears, plain.layers(problem["params0"], sizes)):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b.copy()))
    return net, linears


def _torch_loss(torch, net, x0, t, z):
    a = torch.exp(-t)[:, None]
    sigma = torch.sqrt(-torch.expm1(-2.0 * t))[:, None]
    s = net(torch.cat([a * x0 + sigma * z, t[:, None]], dim=1))
    r = s + z / sigma
    return (r * r).sum(dim=1).mean()


def _torch_flat_grad(torch, linears):
    parts = []
    for lin in linears:
        parts += [lin.weight.grad.T.reshape(-1), lin.bias.grad]
    return torch.cat(parts).numpy()


def _torch_trainer(torch, problem):
    """(net, its Linear layers, update(x0, t, z) -> loss): the timed step's work after its
    draws, which check_equal_work runs on the fixed batch."""
    net, linears = _torch_net(torch, problem)
    opt = torch.optim.Adam(net.parameters(), lr=LR, betas=(BETA1, BETA2), eps=EPS)

    def update(x0, t, z):
        loss = _torch_loss(torch, net, x0, t, z)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return net, linears, update


def make_torch(torch, problem, seed):
    net, _, update = _torch_trainer(torch, problem)
    dtype = getattr(torch, problem["dtype"].name)
    data = torch.from_numpy(problem["data"])
    n_data, batch, d = data.shape[0], problem["batch"], problem["d"]
    gen = torch.Generator().manual_seed(seed)

    def step():
        x0 = data[torch.randint(0, n_data, (batch,), generator=gen)]
        t = torch.rand(batch, generator=gen, dtype=dtype) * (T_END - T0) + T0
        z = torch.randn(batch, d, generator=gen, dtype=dtype)
        return update(x0, t, z).item()

    def run(k):
        for _ in range(k):
            step()

    return run, step, net


# -- JAX ------------------------------------------------------------------------------------
def _jax_params(jax, problem):
    return [(jax.numpy.asarray(W.copy()), jax.numpy.asarray(b.copy())) for W, b in plain.layers(problem["params0"], problem["sizes"])]


def _jax_loss_fn(jax):
    jnp = jax.numpy

    def loss_fn(params, x0, t, z):
        a = jnp.exp(-t)[:, None]
        sigma = jnp.sqrt(-jnp.expm1(-2.0 * t))[:, None]
        h = jnp.concatenate([a * x0 + sigma * z, t[:, None]], axis=1)
        for W, b in params[:-1]:
            h = jax.nn.silu(h @ W + b)
        W, b = params[-1]
        r = h @ W + b + z / sigma
        return jnp.mean(jnp.sum(r * r, axis=1))

    return loss_fn


def _jax_update(jax, dtype):
    """update(params, m, v, k, x0, t, z) -> (params, m, v, k, loss, grads): the timed step's
    work after its draws (loss, gradient, Adam), which check_equal_work runs jitted on the
    fixed batch (the timed step drops grads, which XLA then does not return)."""
    jnp = jax.numpy
    value_and_grad = jax.value_and_grad(_jax_loss_fn(jax))
    tree_map = jax.tree_util.tree_map

    def update(params, m, v, k, x0, t, z):
        loss, grads = value_and_grad(params, x0, t, z)
        k = k + 1
        kf = k.astype(dtype)
        step_size = LR / (1.0 - BETA1**kf)
        bc2 = jnp.sqrt(1.0 - BETA2**kf)
        m = tree_map(lambda m_, g: BETA1 * m_ + (1.0 - BETA1) * g, m, grads)
        v = tree_map(lambda v_, g: BETA2 * v_ + (1.0 - BETA2) * g * g, v, grads)
        params = tree_map(lambda p, m_, v_: p - step_size * m_ / (jnp.sqrt(v_) / bc2 + EPS), params, m, v)
        return params, m, v, k, loss, grads

    return update


def make_jax(jax, problem, seed):
    jnp = jax.numpy
    dtype = jnp.dtype(problem["dtype"].name)
    batch, d = problem["batch"], problem["d"]
    tree_map = jax.tree_util.tree_map

    update = _jax_update(jax, dtype)

    def step(params, m, v, k, key, data):
        key, k_idx, k_t, k_z = jax.random.split(key, 4)
        x0 = data[jax.random.randint(k_idx, (batch,), 0, data.shape[0])]
        t = jax.random.uniform(k_t, (batch,), dtype, T0, T_END)
        z = jax.random.normal(k_z, (batch, d), dtype)
        params, m, v, k, loss, _ = update(params, m, v, k, x0, t, z)
        return params, m, v, k, key, loss

    jitted = jax.jit(step, donate_argnums=(0, 1, 2))
    params = _jax_params(jax, problem)
    state = {"carry": (params, tree_map(jnp.zeros_like, params), tree_map(jnp.zeros_like, params),
                       jnp.asarray(0, jnp.int32), jax.random.key(seed)),
             "data": jnp.asarray(problem["data"])}

    def one():
        """One step; returns the loss (a JAX scalar, not synchronised)."""
        *carry, loss = jitted(*state["carry"], state["data"])
        state["carry"] = tuple(carry)
        return loss

    def run(k):
        for _ in range(k):
            one()
        jax.block_until_ready(state["carry"])

    return run, one, state


# -- equal work -----------------------------------------------------------------------------
def _update_diff(got, want, start):
    """rel_diff of the updates got - start and want - start: Adam's first step moves every
    parameter by about lr, so a step that skipped the update is off by 1, not by lr / |params|."""
    start = np.asarray(start, dtype=np.float64)
    return rel_diff(np.asarray(got, dtype=np.float64) - start, np.asarray(want, dtype=np.float64) - start)


def rel_diff(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), np.finfo(np.float64).tiny))


def check_equal_work(problem, peers, seed):
    """Loss and gradient of each implementation on the fixed batch against sgm_ref's dsm_loss.

    Returns {implementation: (max relative difference, tolerance, note)}."""
    c = problem["check"]
    x0, t, z = c["x0"], c["t"], c["z"]
    dtype = problem["dtype"]
    tol = TOLERANCE[dtype.name]
    want_loss, want_grad = dsm_loss(sgm_ref_model(problem), x0, t, z, "none")
    results = {}

    # NumPy: the loss and gradient, then one full step (same seed -> same draws) against TrainStep
    state = _numpy_state(problem)
    loss, grad = _numpy_loss_and_grad(state, x0, t, z)
    diff = max(rel_diff(loss, want_loss), rel_diff(grad, want_grad))
    _, sgm_step, _ = make_sgm_ref(problem, seed)
    sgm_loss = sgm_step(np.random.default_rng(seed))
    np_loss = _numpy_step(state, np.random.default_rng(seed))
    step_diff = max(rel_diff(np_loss, sgm_loss), rel_diff(state["theta"], sgm_step.model.params))
    results["NumPy"] = (max(diff, step_diff), tol,
                        f"loss+grad {diff:.1e}, one full step (same draws) loss+params {step_diff:.1e}")

    for name, check in (("PyTorch", _check_torch), ("JAX", _check_jax)):
        if peers.get(name) is None:
            continue
        try:
            results[name] = check(peers[name], problem, want_loss, want_grad, seed)
        except Exception as exc:  # a peer that breaks is reported, not fatal
            results[name] = (math.inf, tol, f"{type(exc).__name__}: {exc}")
    return results


def _check_torch(torch, problem, want_loss, want_grad, seed):
    c, dtype = problem["check"], problem["dtype"]
    x0, t, z = c["x0"], c["t"], c["z"]
    tol = TOLERANCE[dtype.name]
    # the timed step's own update (loss, backward, torch.optim.Adam) on the fixed batch: its
    # loss and gradient against dsm_loss, its parameters against sgm_ref.optim.Adam's step
    net, linears, update = _torch_trainer(torch, problem)
    loss = update(*(torch.from_numpy(a) for a in (x0, t.astype(dtype), z)))
    got_grad = _torch_flat_grad(torch, linears)
    diff = max(rel_diff(loss.item(), want_loss), rel_diff(got_grad, want_grad))
    with torch.no_grad():
        got_params = torch.cat([p for lin in linears for p in (lin.weight.T.reshape(-1), lin.bias)]).numpy()
    ref = problem["params0"].copy()
    Adam(ref, lr=LR, betas=(BETA1, BETA2), eps=EPS).step(got_grad.astype(dtype))  # its own gradient (above)
    adam_diff = _update_diff(got_params, ref, problem["params0"])
    dtype_ok = loss.dtype == getattr(torch, dtype.name)
    return (max(diff, adam_diff) if dtype_ok else math.inf, tol,
            f"loss+grad {diff:.1e}, Adam step {adam_diff:.1e}" + ("" if dtype_ok else f", WRONG dtype {loss.dtype}"))


def _check_jax(jax, problem, want_loss, want_grad, seed):
    c, dtype = problem["check"], problem["dtype"]
    x0, t, z = c["x0"], c["t"], c["z"]
    tol = TOLERANCE[dtype.name]
    loss, grads = jax.value_and_grad(_jax_loss_fn(jax))(
        _jax_params(jax, problem), *(jax.numpy.asarray(a) for a in (x0, t.astype(dtype), z)))
    got_grad = np.concatenate([np.asarray(a).reshape(-1) for layer in grads for a in layer])
    diff = max(rel_diff(loss, want_loss), rel_diff(got_grad, want_grad))
    # the timed step's own update, jitted, on the fixed batch: its loss and gradient against
    # dsm_loss's, its parameters after Adam against sgm_ref.optim.Adam's step on that same
    # gradient (on dsm_loss's, Adam's first step g / (|g| + eps) turns float32's rounding of a
    # near-zero entry into a different sign)
    jnp = jax.numpy
    params = _jax_params(jax, problem)
    zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
    new, _, _, _, jit_loss, jit_grads = jax.jit(_jax_update(jax, jnp.dtype(dtype.name)))(
        params, zeros, zeros, jnp.asarray(0, jnp.int32), *(jnp.asarray(a) for a in (x0, t.astype(dtype), z)))
    got_params = np.concatenate([np.asarray(a).reshape(-1) for layer in new for a in layer])
    jit_grad = np.concatenate([np.asarray(a).reshape(-1) for layer in jit_grads for a in layer])
    ref = problem["params0"].copy()
    Adam(ref, lr=LR, betas=(BETA1, BETA2), eps=EPS).step(jit_grad.astype(dtype))
    step_diff = max(rel_diff(jit_loss, want_loss), rel_diff(jit_grad, want_grad),
                    _update_diff(got_params, ref, problem["params0"]))
    # the timed step keeps the dtype (x64 is enabled: a stray promotion would be float64)
    _, one, state = make_jax(jax, problem, seed)
    step_loss = one()
    dtypes = {str(step_loss.dtype)} | {str(a.dtype) for layer in state["carry"][0] for a in layer}
    dtype_ok = dtypes == {dtype.name}
    return (max(diff, step_diff) if dtype_ok and np.isfinite(step_loss) else math.inf, tol,
            f"loss+grad {diff:.1e}, jitted step (loss, Adam) {step_diff:.1e}"
            + ("" if dtype_ok else f", WRONG dtypes {sorted(dtypes)}"))


# -- timing ---------------------------------------------------------------------------------
def _cpu_seconds():
    """(CPU seconds used by all processes, by this one) so far; system part None without /proc/stat.

    The system part counts user, nice, system, irq, softirq and steal time (idle and iowait
    excluded), in clock ticks, so it resolves ~10 ms."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return machine_busy_seconds(), usage.ru_utime + usage.ru_stime


class LoadMeter:
    """CPUs' worth of time taken by other processes (and the hypervisor) while timing."""

    def __init__(self):
        self.start = (time.perf_counter(),) + _cpu_seconds()

    def others(self):
        wall0, all0, ours0 = self.start
        all1, ours1 = _cpu_seconds()
        wall = time.perf_counter() - wall0
        if all0 is None or all1 is None or wall <= 0:
            return None
        return max(0.0, ((all1 - all0) - (ours1 - ours0)) / wall)


def calibrate(run, target):
    """Steps per repeat so that a repeat takes about target seconds."""
    steps = 1
    while True:
        start = time.perf_counter()
        run(steps)
        elapsed = time.perf_counter() - start
        if elapsed >= min(0.05, target / 3) or steps >= 1 << 16:
            return max(1, int(round(steps * target / elapsed)))
        steps *= 2 if elapsed > 0.005 else 8


ORDER_SEED = 20261205  # the rounds' orders: random, and the same in every run
# untimed pause before each timed repeat: torch's OpenMP threads spin after its step by default
# (GOMP_SPINCOUNT 300000), and XLA's pool briefly too; whoever ran next lost a core to them
SETTLE = 0.02


def time_interleaved(runs, args, errors):
    """({name: seconds per step, one per repeat in the order run}, ks, load); repeats
    interleaved (one random order per round), so repeat r of every implementation ran in the same round.

    An implementation that raises during warm-up is dropped and reported in errors."""
    ks = {}
    for name, run in list(runs.items()):
        try:
            run(args.warmup)
            ks[name] = calibrate(run, args.target)
        except Exception as exc:
            errors[name] = f"{type(exc).__name__} during warm-up: {exc}"
            del runs[name]
    times = {name: [] for name in runs}
    names = list(runs)
    loads = []
    order = np.random.default_rng(ORDER_SEED)
    for r in range(args.repeats):
        meter = LoadMeter()
        # a fresh random order each round: a rotation kept who runs right before whom (jax.jit
        # always followed sgm_ref or the peak product), and so whose idle threads it met
        for name in order.permutation(names):
            time.sleep(SETTLE)  # the previous implementation's idle threads (torch's spin) go to sleep first
            start = time.perf_counter()
            runs[name](ks[name])
            times[name].append((time.perf_counter() - start) / ks[name])
        loads.append(meter.others())
    loads = [x for x in loads if x is not None]
    return times, ks, (max(loads) if loads else None)


def measure(row, dtype, peers, args, seed):
    d, width, depth, batch = row
    problem = make_problem(d, width, depth, batch, dtype, seed)
    n_params = n_params_of(problem["sizes"])
    out = {"row": row, "dtype": dtype, "n_params": n_params, "ms": {}, "detail": {}, "errors": {}}
    checks = check_equal_work(problem, peers, seed)
    out["checks"] = checks
    runs = {}
    sgm_run, _, _ = make_sgm_ref(problem, seed)
    runs["sgm_ref"] = sgm_run
    for name in IMPLEMENTATIONS[1:]:
        if name in checks and not checks[name][0] <= checks[name][1]:
            out["errors"][name] = f"check failed ({checks[name][2]})"
            continue
        try:
            if name == "NumPy":
                runs[name] = make_numpy(problem, seed)
            elif name == "PyTorch" and peers.get(name) is not None:
                runs[name] = make_torch(peers[name], problem, seed)[0]
            elif name == "JAX" and peers.get(name) is not None:
                runs[name] = make_jax(peers[name], problem, seed)[0]
        except Exception as exc:  # a peer that cannot be built is reported, not fatal
            out["errors"][name] = f"{type(exc).__name__}: {exc}"
    # the peak product of this dtype, timed in every round with the implementations, so that the
    # share of the peak is taken round by round: a best-of-5 peak taken at another moment compares
    # the step's time in one phase of a shared host with the product's in its best one
    runs["peak"] = make_peak(dtype)
    times, ks, out["load"] = time_interleaved(runs, args, out["errors"])
    out.update(split_peak(times, ks, step_flops(problem["sizes"], batch)))
    for name, v in times.items():
        out["ms"][name] = 1e3 * float(np.median(v))
        out["detail"][name] = (ks[name], 1e3 * min(v), 1e3 * max(v))
    if "JAX" in times and "sgm_ref" in times:  # each round's own ratio: a change of host speed moves both
        out["paired_jax"] = [s / j for s, j in zip(times["sgm_ref"], times["JAX"])]
    return out


# -- where sgm_ref's step goes (--phases) ---------------------------------------------------
PHASES = ("batch draw", "inputs (coefficients, perturb, embedding)", "forward products", "activation",
          "loss residual", "backward act'", "backward products dW", "backward products dh",
          "Adam step (all)", "of which gradient norm / finiteness check")


def _phase_step(step, rng, clock):
    """One TrainStep call, phase by phase, with the library's own helpers and buffers.

    Mirrors sgm_ref.train.TrainStep.__call__, losses._dsm_loss and MLP._run/_backward
    (weighting "none", no input gradient); clock(name) charges the time since its last
    call to the phase `name`. phase_profile checks that it gives TrainStep's bits."""
    from sgm_ref.kernels.dense import activation_forward_unguarded
    from sgm_ref.kernels.dsm import PARAMETERIZATION_CODES, dsm_residual, perturb_into

    model, net, opt = step.model, step.model.network, step.optimizer
    n = step.batch_size
    step._draw(rng)
    t = step.t
    clock(PHASES[0])
    a, s2 = step._coefficients(t)
    sigma = np.sqrt(s2)
    lam = np.ones(n)
    ws = net._workspace(n)
    H0 = ws.H[0]
    perturb_into(step.x0, step.z, a, sigma, H0)
    net.embedding(t, H0[:, net.d:-1])
    net._tape = ws
    clock(PHASES[1])
    L = len(net._layers) - 1
    with np.errstate(over="ignore"):  # as MLP._run: one for all layers
        for l in range(L):
            np.matmul(ws.H[l], net._layers[l], out=ws.Z[l])
            clock(PHASES[2])
            activation_forward_unguarded(ws.Z[l], net._kind, ws.H[l + 1], ws.D[l], True)
            clock(PHASES[3])
    np.matmul(ws.H[L], net._layers[L], out=ws.Z[L])
    clock(PHASES[2])
    out = ws.Z[L]
    row_loss = np.empty(n)
    dsm_residual(out, H0, step.z, sigma, lam, PARAMETERIZATION_CODES[model.parameterization], 1.0 / n, row_loss)
    loss = float(np.sum(row_loss)) / n
    clock(PHASES[4])
    grad_blocks = net._blocks(step.grad)
    g, buffers = out, (ws.ping, ws.pong)
    for l in range(L, -1, -1):
        if l < L:
            np.multiply(g, ws.D[l], out=g)
            clock(PHASES[5])
        np.matmul(ws.H[l].T, g, out=grad_blocks[l])
        clock(PHASES[6])
        if l > 0:
            m = net.sizes[l]
            g_prev = buffers[l % 2][:n * m].reshape(n, m)
            np.matmul(g, net.weights[l].T, out=g_prev)
            g = g_prev
            clock(PHASES[7])
    ws.has_tape = False
    if not np.isfinite(loss):
        raise FloatingPointError("loss")
    opt.step(step.grad)
    clock(PHASES[8])
    opt._grad_norm(step.grad)  # timed again on its own: the check inside the Adam step
    clock(PHASES[9])
    return loss


def phase_profile(problem, seed, steps, warmup):
    """{phase: seconds per step}, seconds per whole instrumented step, same-bits flag."""
    _, step, rng = make_sgm_ref(problem, seed)
    _, reference, ref_rng = make_sgm_ref(problem, seed)
    totals = dict.fromkeys(PHASES, 0.0)
    last = [0.0]

    def clock(name):
        now = time.perf_counter()
        totals[name] += now - last[0]
        last[0] = now

    for i in range(warmup + steps):
        if i == warmup:
            totals = dict.fromkeys(PHASES, 0.0)
            start = time.perf_counter()
        last[0] = time.perf_counter()
        _phase_step(step, rng, clock)
    whole = time.perf_counter() - start
    for _ in range(warmup + steps):
        reference(ref_rng)
    same = np.array_equal(step.model.params, reference.model.params)
    # the repeated norm is not part of the step
    whole -= totals[PHASES[9]]
    return {k: v / steps for k, v in totals.items()}, whole / steps, same


def phase_lines(row, dtype, args, seed, peak):
    problem = make_problem(*row, dtype, seed)
    flops = step_flops(problem["sizes"], row[3])
    # about 1 s per row: a quick untimed call sizes the run
    start = time.perf_counter()
    phase_profile(problem, seed, 3, 1)
    per_step = (time.perf_counter() - start) / 8
    steps = max(10, int((0.3 if args.quick else 1.0) / max(per_step, 1e-6)))
    meter = LoadMeter()
    phases, whole, same = phase_profile(problem, seed, steps, args.warmup)
    load = meter.others()
    products = sum(phases[k] for k in PHASES[2:8] if "products" in k)
    lines = [f"{row} {dtype}: {1e3 * whole:.3g} ms/step over {steps} steps (instrumented), "
             f"{100 * flops / whole / 1e9 / peak:.0f}% of peak; matrix products {1e3 * products:.3g} ms "
             f"({100 * products / whole:.0f}% of the step, at {100 * flops / products / 1e9 / peak:.0f}% of peak); "
             f"floor {1e3 * flops / peak / 1e9:.3g} ms; same bits as TrainStep: {'yes' if same else 'NO'}; "
             f"other load {'?' if load is None else f'{load:.2f}'}"]
    for k in PHASES:
        lines.append(f"  - {k}: {1e3 * phases[k]:.3g} ms ({100 * phases[k] / whole:.1f}%)")
    return lines, same


# -- what the matrix products and one exp per activation leave (--bound) --------------------
def _best_seconds(call, repeats):
    """best_time after one untimed call (compilation, first touch of the buffers)."""
    call()
    return best_time(call, repeats)


def bound_line(row, dtype, seed, repeats):
    """The step against the least any SiLU MLP step of this shape costs here: its matrix
    products alone (TrainStep's, at their shapes and in their order, back to back with hot
    caches) plus one exp per hidden activation (NumPy's vectorised exp), each the best of
    `repeats`; % of a 2048^3 matrix-product peak measured just before, best of 5."""
    problem = make_problem(*row, dtype, seed)
    run, step, _ = make_sgm_ref(problem, seed)
    run(3)
    net, n = step.model.network, row[3]
    ws, layers = net._workspace(n), len(net._layers) - 1
    grads = net._blocks(np.empty_like(step.grad))
    g = [np.full((n, m), 0.01, problem["dtype"]) for m in net.sizes[1:]]  # dL/dz_l stand-ins
    back = [np.empty((n, m), problem["dtype"]) for m in net.sizes]
    z = [np.empty_like(D) for D in ws.D]

    def products():
        for l in range(layers + 1):
            np.matmul(ws.H[l], net._layers[l], out=g[l] if l == layers else z[l])
        for l in range(layers, -1, -1):
            np.matmul(ws.H[l].T, g[l], out=grads[l])
            if l > 0:
                np.matmul(g[l], net.weights[l].T, out=back[l])

    def exps():
        for l in range(layers):
            np.exp(z[l], out=ws.D[l])

    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(dtype) for _ in range(2))
    peak = matmul_rate(np.matmul, a, b, 5, np.empty_like(a)) * 1e9
    flops = step_flops(problem["sizes"], n)
    whole = _best_seconds(lambda: run(1), repeats)
    prod = _best_seconds(products, repeats)
    exp = _best_seconds(exps, repeats)
    return (f"{row} {dtype}: step {1e3 * whole:.3g} ms ({100 * flops / whole / peak:.0f}% of peak); products alone "
            f"{1e3 * prod:.3g} ms ({100 * flops / prod / peak:.0f}%); exp alone {1e3 * exp:.3g} ms; "
            f"products + exp {100 * flops / (prod + exp) / peak:.0f}% of peak; peak {peak / 1e9:.0f} GFLOP/s")


def matmul_rate(matmul, a, b, repeats, out):
    """GFLOP/s of matmul(a, b, out=out), best of `repeats` after an untimed call: into a
    preallocated output, as the step's products (its workspace) and the rounds' product
    (make_peak) write. A fresh float64 2048^2 output each call (32 MiB, above malloc's mmap
    threshold) was new pages every time: writing it took 4.8 ms against 1.1 ms for a reused
    one, 3.6 ms more on a 105 ms product (163 GFLOP/s), so this peak came out ~3% below the
    rounds' and "% of peak" and "floor ms" that much high (float32's 16 MiB is reused)."""
    return 2.0 * a.shape[0] * a.shape[1] * b.shape[1] / _best_seconds(lambda: matmul(a, b, out=out), repeats) / 1e9


def _peak_operands(dtype):
    """The operands of the PEAK_SIZE^3 product in dtype (measure_peaks and make_peak)."""
    rng = np.random.default_rng(0)
    return tuple(rng.standard_normal((PEAK_SIZE, PEAK_SIZE)).astype(dtype) for _ in range(2))


def make_peak(dtype):
    """run(k): k NumPy PEAK_SIZE^3 products of dtype into a preallocated output (the peak, as a
    run that time_interleaved times in every round beside the implementations)."""
    a, b = _peak_operands(dtype)
    c = np.empty_like(a)

    def run(k):
        for _ in range(k):
            np.matmul(a, b, out=c)

    return run


def paired_shares(step_seconds, peak_seconds, step_flops, peak_flops):
    """Share of the peak round by round: (step_flops / step_seconds[r]) / (peak_flops /
    peak_seconds[r]) for each round r, the step and the product timed in the same round."""
    if len(step_seconds) != len(peak_seconds):
        raise ValueError(f"one peak time per round: {len(step_seconds)} step times, {len(peak_seconds)} peak times")
    return [step_flops * p / (s * peak_flops) for s, p in zip(step_seconds, peak_seconds)]


def split_peak(times, ks, step_flops):
    """Take the peak's run out of time_interleaved's (times, ks), in place, and return
    {"peak_detail": (k, slowest, fastest GFLOP/s), "paired_peak": sgm_ref's share of the peak
    per round} (only the keys that can be formed: none if the peak was not timed, no shares
    if sgm_ref was not). times[name][r] is round r's time for every name, so the shares pair
    each round's step with that round's product."""
    if "peak" not in times:
        return {}
    peak_times = times.pop("peak")
    product_flops = 2.0 * PEAK_SIZE**3
    out = {"peak_detail": (ks["peak"], product_flops / max(peak_times) / 1e9,
                           product_flops / min(peak_times) / 1e9)}
    if "sgm_ref" in times:
        out["paired_peak"] = paired_shares(times["sgm_ref"], peak_times, step_flops, product_flops)
    return out


def measure_peaks(torch, repeats):
    """GFLOP/s of one PEAK_SIZE^3 matrix product into a preallocated output, best of repeats:
    NumPy (and PyTorch)."""
    peaks = {}
    for dtype in DTYPES:
        a, b = _peak_operands(dtype)
        peaks[("NumPy", dtype)] = matmul_rate(np.matmul, a, b, repeats, np.empty_like(a))
        if torch is not None:
            ta, tb = torch.from_numpy(a), torch.from_numpy(b)
            peaks[("PyTorch", dtype)] = matmul_rate(torch.matmul, ta, tb, repeats, torch.empty_like(ta))
    return peaks


# -- memory ---------------------------------------------------------------------------------
MEMORY_STEPS = 5


def _max_rss_bytes():
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else 1024 * rss


def _status_bytes(field):
    """VmRSS or VmHWM of this process from /proc/self/status, in bytes (None elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return 1024 * int(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def _reset_peak():
    """Reset the kernel's high-water mark (VmHWM) to the current RSS (Linux >= 4.0); False if not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def save_problem(problem, path):
    """The arrays a --memory worker needs (initial parameters and data), for load_problem."""
    np.savez(path, params0=problem["params0"], data=problem["data"])


def load_problem(path, row, dtype):
    """make_problem's problem (without the check batch) from save_problem's file: what a
    worker that imports no sgm_ref (NumPy, PyTorch, JAX; _lean_worker) builds its step from."""
    d, width, depth, batch = row
    with np.load(path, allow_pickle=False) as arrays:
        params0, data = arrays["params0"], arrays["data"]
    if params0.dtype != np.dtype(dtype) or data.shape != (DATA_FACTOR * batch, d):
        raise ValueError(f"{path}: not the problem of row {row} in {dtype} (params {params0.dtype}, "
                         f"data {data.shape})")
    return {"d": d, "width": width, "depth": depth, "batch": batch, "dtype": np.dtype(dtype),
            "sizes": layer_sizes(d, width, depth), "params0": params0, "data": data}


def memory_worker(row, dtype, name, seed, problem_file=None):
    """In a fresh interpreter: peak RSS before and after building `name` and taking steps.

    Prints one line of JSON: the interpreter's peak ("peak", its VmHWM: imports, the
    problem's data, construction, warm-up and MEMORY_STEPS steps) and the growth of its
    resident set from just before the implementation is built ("growth"), in bytes; the
    libraries it loaded ("loaded": the peers' workers load neither numba nor sgm_ref); for
    sgm_ref also its buffers (workspace_bytes). The problem comes from problem_file
    (save_problem; required for the peers, which cannot build it) or make_problem."""
    import json

    if problem_file is not None:
        problem = load_problem(problem_file, row, dtype)
    elif _LEAN_WORKER:
        raise SystemExit(f"--_memory-worker {name}: needs --_problem (the parent's save_problem file)")
    else:
        problem = make_problem(*row, dtype, seed)
    peers = {}
    if name == "PyTorch":
        peers[name] = _import_torch()[0]
    elif name == "JAX":
        peers[name] = _import_jax()[0]
    if name in peers and peers[name] is None:
        print(json.dumps({"error": "not importable"}))
        return
    if name == "sgm_ref":  # load numba's compiled kernels first: "before" then excludes the JIT's memory
        make_sgm_ref(make_problem(2, 2, 1, 2, dtype, seed), seed)[0](2)
    # the imports leave a transient high-water mark above what the step needs: reset it,
    # so that the growth counts what building and stepping the implementation takes
    imports_peak = _status_bytes("VmHWM")
    reset = _reset_peak()
    before = _status_bytes("VmRSS") if reset else None
    extra = {}
    if name == "sgm_ref":
        run, step, _ = make_sgm_ref(problem, seed)
        run(2)
        extra = workspace_bytes(step, problem)
    elif name == "NumPy":
        run = make_numpy(problem, seed)
    elif name == "PyTorch":
        run = make_torch(peers[name], problem, seed)[0]
    else:
        run = make_jax(peers[name], problem, seed)[0]
    run(2 + MEMORY_STEPS)
    after = _status_bytes("VmHWM")
    growth = None if not reset or before is None or after is None else after - before
    # ru_maxrss survives fork and exec on Linux (this child would report its parent's peak);
    # VmHWM belongs to the address space exec made, so it is this interpreter's own
    peak = _max_rss_bytes() if imports_peak is None or after is None else max(imports_peak, after)
    loaded = [m for m in ("numba", "sgm_ref", "torch", "jax") if m in sys.modules]
    print(json.dumps(dict({"peak": peak, "growth": growth, "loaded": loaded}, **extra)))


def workspace_bytes(step, problem):
    """sgm_ref's buffers for a training step, and the least the activations need.

    minimum: every layer's input h_l (n x fan_in, what dW_l = h_l^T dL/dz_l reads), one
    number per hidden unit and row for act'(z_l) (or z_l), and the output (n x d) whose
    place dL/dout takes; a backward pass also needs at least one more n x width buffer
    for dL/dh, not counted."""
    net = step.model.network
    ws = net._workspace(step.batch_size)
    arrays = list(ws.H) + list(ws.Z) + list(ws.D) + [ws.ping, ws.pong]
    seen, network = set(), 0
    for a in arrays:  # buffers may share memory: count each base once
        base = a if a.base is None else a.base
        if id(base) not in seen:
            seen.add(id(base))
            network += base.nbytes
    batch = step.x0.nbytes + step.z.nbytes
    state = step.grad.nbytes + step.optimizer.m.nbytes + step.optimizer.v.nbytes
    sizes, n = problem["sizes"], problem["batch"]
    minimum = n * (sum(sizes[:-1]) + sum(sizes[1:-1]) + sizes[-1]) * problem["dtype"].itemsize
    return {"network_workspace": network, "batch_buffers": batch, "grad_and_adam": state,
            "params": net.params.nbytes, "activation_minimum": minimum}


def measure_memory(rows, dtypes, names):
    """{(row, dtype, name): worker result} from one fresh interpreter each."""
    import json

    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for row in rows:
            for dtype in dtypes:
                # the peers' workers import no sgm_ref to build the problem: it is handed over
                path = os.path.join(folder, f"problem-{ROWS.index(row) + 1}-{dtype}.npz")
                save_problem(make_problem(*row, dtype, SEED), path)
                for name in names:
                    command = [sys.executable, os.path.abspath(__file__), "--_memory-worker",
                               f"{ROWS.index(row) + 1},{dtype},{name}", "--_problem", path]
                    proc = subprocess.run(command, capture_output=True, text=True)
                    if proc.returncode != 0:
                        results[(row, dtype, name)] = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
                        continue
                    results[(row, dtype, name)] = json.loads(proc.stdout.strip().splitlines()[-1])
    return results


def memory_table(results, rows, dtypes, names):
    mib = 2.0**20
    lines = ["| (d, width, depth, batch) | dtype | " + " | ".join(f"{n} peak MiB (growth)" for n in names)
             + " | sgm_ref network workspace MiB | activation minimum MiB | workspace / minimum "
             "| sgm_ref batch + grad + Adam MiB |",
             "|" + "---|" * (len(names) + 6)]
    for row in rows:
        for dtype in dtypes:
            cells = []
            for name in names:
                r = results.get((row, dtype, name), {"error": "not run"})
                growth = "?" if r.get("growth") is None else f"+{r['growth'] / mib:.1f}"
                cells.append(r["error"] if "error" in r else f"{r['peak'] / mib:.0f} ({growth})")
            r = results.get((row, dtype, "sgm_ref"), {})
            if "network_workspace" in r:
                ws, low = r["network_workspace"], r["activation_minimum"]
                tail = (f"{ws / mib:.2f} | {low / mib:.2f} | {ws / low:.2f} "
                        f"| {(r['batch_buffers'] + r['grad_and_adam']) / mib:.2f}")
            else:
                tail = "- | - | - | -"
            lines.append(f"| {row} | {dtype} | " + " | ".join(cells) + f" | {tail} |")
    return lines


# -- threads --------------------------------------------------------------------------------
# Fresh interpreters for the sweep, each importing sgm_ref only (no PyTorch, no JAX): as
# found, and with the two environment changes that decide how numba's idle threads wait.
SWEEP_ENVIRONMENTS = (
    ("as found", {}),
    ("NUMBA_THREADING_LAYER=workqueue", {"NUMBA_THREADING_LAYER": "workqueue"}),
    ("OMP_WAIT_POLICY=passive", {"OMP_WAIT_POLICY": "passive"}),
)
SWEEP_THREADS = ((2, 2), (1, 2), (2, 1), (1, 1))  # (numba threads, BLAS threads)


def sweep_worker(row, dtype, args, seed):
    """In this process: sgm_ref ms/step for each (numba, BLAS) thread count, interleaved.

    Thread counts are set with numba.set_num_threads and threadpoolctl.threadpool_limits
    (restored after each repeat). Prints one line of JSON."""
    import json

    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    problem = make_problem(*row, dtype, seed)
    combos = SWEEP_THREADS if threadpool_limits is not None else ((numba.get_num_threads(), None),)
    runs = {combo: make_sgm_ref(problem, seed)[0] for combo in combos}
    numba_before = numba.get_num_threads()

    def timed(combo, k):
        numba.set_num_threads(min(combo[0], numba_before))
        try:
            if combo[1] is None:
                start = time.perf_counter()
                runs[combo](k)
                return time.perf_counter() - start
            with threadpool_limits(limits=combo[1], user_api="blas"):
                start = time.perf_counter()
                runs[combo](k)
                return time.perf_counter() - start
        finally:
            numba.set_num_threads(numba_before)

    ks = {}
    for combo in combos:
        timed(combo, args.warmup)
        elapsed, steps = 0.0, 1
        while elapsed < min(0.05, args.target / 3) and steps < 1 << 16:
            steps *= 2
            elapsed = timed(combo, steps)
        ks[combo] = max(1, int(round(steps * args.target / elapsed)))
    times = {combo: [] for combo in combos}
    loads = []
    for _ in range(args.repeats):
        meter = LoadMeter()
        for combo in combos:
            times[combo].append(timed(combo, ks[combo]) / ks[combo])
        loads.append(meter.others())
    loads = [x for x in loads if x is not None]
    print(json.dumps({"layer": numba.threading_layer(), "load": max(loads) if loads else None,
                      "ms": [[list(c), 1e3 * float(np.median(v))] for c, v in times.items()]}))


def thread_sweep(rows, dtypes, args):
    """Run sweep_worker in a fresh interpreter per environment, row and dtype."""
    import json

    lines = []
    for row in rows:
        for dtype in dtypes:
            for label, extra in SWEEP_ENVIRONMENTS:
                command = [sys.executable, os.path.abspath(__file__), "--_sweep-worker",
                           f"{ROWS.index(row) + 1},{dtype}", "--repeats", str(args.repeats),
                           "--target", str(args.target), "--warmup", str(args.warmup)]
                proc = subprocess.run(command, env=dict(os.environ, **extra), capture_output=True, text=True)
                if proc.returncode != 0:
                    lines.append(f"{row} {dtype}, {label}: failed: {proc.stderr.strip().splitlines()[-1:]}")
                    continue
                res = json.loads(proc.stdout.strip().splitlines()[-1])
                cells = ", ".join(f"numba {nb} / BLAS {'default' if blas is None else blas}: {ms:.3g}"
                                  for (nb, blas), ms in res["ms"])
                load = "?" if res["load"] is None else f"{res['load']:.2f}"
                lines.append(f"{row} {dtype}, {label} (numba layer {res['layer']}): {cells} ms; other load {load}")
    return lines


def thread_report(peers):
    lines = [f"numba.get_num_threads() = {numba.get_num_threads()}, threading layer = "
             f"{numba.threading_layer()}, NUMBA_NUM_THREADS default = {numba.config.NUMBA_NUM_THREADS}"]
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        lines.append("threadpoolctl not installed (optional): BLAS/OpenMP pools not queried")
    else:
        for pool in threadpool_info():
            keys = ("user_api", "internal_api", "version", "num_threads", "threading_layer", "architecture", "filepath")
            lines.append("threadpoolctl: " + ", ".join(f"{k}={pool.get(k)}" for k in keys if k in pool))
    torch = peers.get("PyTorch")
    if torch is not None:
        lines.append(f"torch.get_num_threads() = {torch.get_num_threads()}, "
                     f"torch.get_num_interop_threads() = {torch.get_num_interop_threads()}")
    jax = peers.get("JAX")
    if jax is not None:
        lines.append(f"JAX devices: {jax.devices()} (XLA's CPU thread pool is sized by the core count)")
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = "?"
    lines.append(f"os.cpu_count() = {os.cpu_count()}, CPUs in this process's affinity = {affinity}")
    lines.append("environment: " + ", ".join(f"{v}={os.environ.get(v, '(unset)')}" for v in ENV_VARS))
    from sgm_ref import _threads
    note = omp_note(numba.threading_layer(), _threads.environment_defaults(), os.environ)
    if note:
        lines.append(note)
    return lines


def omp_note(layer, defaults, environ):
    """The thread report's note on how numba's OpenMP threads wait, or None.

    A libgomp reads OMP_WAIT_POLICY / GOMP_SPINCOUNT once, when it loads. With torch loaded
    before sgm_ref (its own defaults, above), numba's 'omp' layer binds to torch's libgomp
    (LD_DEBUG=bindings: GOMP_parallel from omppool to torch/lib/libgomp.so.1), which had
    read no wait policy: sgm_ref's PASSIVE, in the environment, never reached numba's
    threads, which spun after each parallel region (4.5 ms of CPU per region against 0.01
    with sgm_ref imported alone). The note said nothing then, the variable being set."""
    if layer != "omp":
        return None
    if "an OpenMP runtime" in defaults["loaded_before"] and "OMP_WAIT_POLICY" in defaults["set"]:
        return ("note: numba's 'omp' layer runs on an OpenMP runtime loaded before sgm_ref (torch's, loaded "
                "first for its own defaults), which read the environment before sgm_ref set "
                f"OMP_WAIT_POLICY={defaults['set']['OMP_WAIT_POLICY']}: numba's idle threads spin between parallel "
                "regions, as they do not with sgm_ref alone (sgm_ref's timings meet that only in a numba "
                "parallel region)")
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        return ("note: numba's 'omp' layer with the default wait policy: its idle threads spin between "
                "parallel regions while OpenBLAS's threads want the same cores; --thread-sweep measures the cost")
    return None


# -- first-call (JIT) cost ------------------------------------------------------------------
_JIT_SNIPPET = textwrap.dedent(
    """
    import time
    start = time.perf_counter()
    import numpy as np
    from sgm_ref import OU, plain
    from sgm_ref.nn.mlp import MLP
    from sgm_ref.optim import Adam
    from sgm_ref.score_model import ScoreModel
    from sgm_ref.train import TrainStep
    out = [f"import {time.perf_counter() - start:.6f}"]
    d, width, depth, batch = 2, 128, 3, 256
    for dtype in ("float64", "float32"):
        model = ScoreModel(MLP(d, (width,) * depth, "silu", "linear", dtype, rng=0), OU(), "score")
        data = np.random.default_rng(1).standard_normal((10 * batch, d)).astype(dtype)
        step = TrainStep(model, data, batch, t0=1e-3, T=2.0, optimizer=Adam(model.params, lr=1e-3),
                         weighting="none", time_distribution="uniform")
        rng = np.random.default_rng(0)
        calls = []
        for _ in range(5):
            start = time.perf_counter()
            step(rng)
            calls.append(time.perf_counter() - start)
        out.append(f"{dtype}_first {calls[0]:.6f}")
        out.append(f"{dtype}_later {min(calls[2:]):.6f}")
    print(";".join(out))
    """
)


def jit_cost():
    """First vs later TrainStep call in fresh interpreters: with an empty NUMBA_CACHE_DIR
    (every cache=True kernel compiles), then again with that directory (now filled)."""
    results = {}
    with tempfile.TemporaryDirectory() as cache_dir:
        for label in ("cold: empty NUMBA_CACHE_DIR (compiles)", "warm: same NUMBA_CACHE_DIR (loads the cache)"):
            env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
            proc = subprocess.run([sys.executable, "-c", _JIT_SNIPPET], env=env, capture_output=True, text=True)
            if proc.returncode != 0:
                results[label] = f"failed: {proc.stderr.strip().splitlines()[-1:]}"
                continue
            results[label] = {k: float(v) for k, v in
                              (item.split() for item in proc.stdout.strip().splitlines()[-1].split(";"))}
    return results


# -- report ---------------------------------------------------------------------------------
def _fmt_ms(ms):
    return "-" if ms is None else f"{ms:.3g}"


def _fmt_ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.3g}"


def table(results, peaks):
    head = ("| (d, width, depth, batch) | dtype | params | sgm_ref ms | JAX ms | PyTorch ms | NumPy ms "
            "| sgm_ref/JAX | sgm_ref/PyTorch | sgm_ref/NumPy | sgm_ref GFLOP/s | % of peak | floor ms | other load |")
    lines = [head, "|" + "---|" * 14]
    for r in results:
        ms = r["ms"]
        flops = step_flops(layer_sizes(*r["row"][:3]), r["row"][3])
        sgm = ms.get("sgm_ref")
        peak = peaks[("NumPy", r["dtype"])]
        gflops = flops / (sgm * 1e-3) / 1e9 if sgm else None
        load = "?" if r["load"] is None else f"{r['load']:.2f}"
        lines.append(
            f"| {r['row']} | {r['dtype']} | {r['n_params']} | {_fmt_ms(sgm)} | {_fmt_ms(ms.get('JAX'))} "
            f"| {_fmt_ms(ms.get('PyTorch'))} | {_fmt_ms(ms.get('NumPy'))} | {_fmt_ratio(sgm, ms.get('JAX'))} "
            f"| {_fmt_ratio(sgm, ms.get('PyTorch'))} | {_fmt_ratio(sgm, ms.get('NumPy'))} "
            f"| {'-' if gflops is None else f'{gflops:.1f}'} | {'-' if gflops is None else f'{100 * gflops / peak:.0f}%'} "
            f"| {1e3 * flops / (peak * 1e9):.3g} | {load} |"
        )
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="repeats of ~0.1 s, 3 repeats, 3 peak repeats: a smoke run")
    parser.add_argument("--rows", default=None,
                        help="comma-separated row numbers, 1-based: " + ", ".join(
                            f"{i + 1} = {row}" for i, row in enumerate(ROWS)) + " (default: all)")
    parser.add_argument("--dtypes", default=",".join(DTYPES), help="comma-separated subset of float64,float32")
    parser.add_argument("--skip-peers", action="store_true",
                        help="time only sgm_ref and the NumPy baseline (no PyTorch, no JAX import)")
    parser.add_argument("--skip-jit-cost", action="store_true", help="skip the fresh-interpreter first-call timing")
    parser.add_argument("--thread-sweep", action="store_true",
                        help="diagnostic: sgm_ref alone in fresh interpreters (numba layer as found, workqueue, "
                             "OMP_WAIT_POLICY=passive) x numba threads x BLAS threads in {1, 2} "
                             "(thread counts need threadpoolctl)")
    parser.add_argument("--phases", action="store_true",
                        help="diagnostic: sgm_ref's step split into phases (draw, products, activation, "
                             "backward, Adam), ms/step and share of the step, per row and dtype")
    parser.add_argument("--bound", action="store_true",
                        help="diagnostic: sgm_ref's step against its matrix products alone plus one exp per "
                             "hidden activation (best single calls, hot), as %% of a peak measured per row")
    parser.add_argument("--memory", action="store_true",
                        help="peak resident memory of each implementation per row and dtype, each in a fresh "
                             "interpreter, and sgm_ref's workspace against the activations' minimum")
    parser.add_argument("--_memory-worker", dest="memory_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_problem", dest="problem_file", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_sweep-worker", dest="sweep_worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per implementation (default 7, quick 3)")
    parser.add_argument("--target", type=float, default=None, help="seconds per repeat (default 0.3, quick 0.1)")
    parser.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 5, quick 3)")
    args = parser.parse_args(argv)
    try:
        numbers = [int(i) for i in args.rows.split(",") if i.strip()] if args.rows else [1, 2, 3]
        if not numbers or any(not 1 <= i <= len(ROWS) for i in numbers):
            raise ValueError
        args.rows = tuple(ROWS[i - 1] for i in numbers)
    except ValueError:
        parser.error(f"--rows must be comma-separated numbers in 1..{len(ROWS)}")
    args.dtypes = tuple(x.strip() for x in args.dtypes.split(",") if x.strip())
    if not args.dtypes or any(x not in DTYPES for x in args.dtypes):
        parser.error(f"--dtypes must be a comma-separated subset of {','.join(DTYPES)}")
    args.repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    args.target = args.target if args.target is not None else (0.1 if args.quick else 0.3)
    args.warmup = args.warmup if args.warmup is not None else (3 if args.quick else 5)
    if args.repeats < 1 or args.target <= 0 or args.warmup < 1:
        parser.error("--repeats and --warmup must be >= 1 and --target > 0")
    args.peak_repeats = 3 if args.quick else 5
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.memory_worker:  # internal: one cell of --memory, in a fresh interpreter
        number, dtype, name = args.memory_worker.split(",")
        memory_worker(ROWS[int(number) - 1], dtype, name, SEED, args.problem_file)
        return 0
    if args.sweep_worker:  # internal: one cell of --thread-sweep, in a fresh interpreter
        number, dtype = args.sweep_worker.split(",")
        sweep_worker(ROWS[int(number) - 1], dtype, args, SEED)
        return 0
    peers, peer_notes = {}, {}
    if not args.skip_peers:
        for name, importer in (("PyTorch", _import_torch), ("JAX", _import_jax)):
            module, note = importer()
            peers[name] = module
            if note:
                peer_notes[name] = note
    versions = [f"Python {platform.python_version()}", f"NumPy {np.__version__}", f"numba {numba.__version__}",
                f"sgm_ref {sgm_ref.__version__}"]
    for name, module in peers.items():
        if module is not None:
            versions.append(f"{'torch' if name == 'PyTorch' else 'jax'} {module.__version__}")

    print("# One training step of a score MLP (denoising score matching + Adam), ms/step")
    print()
    print(f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}; "
          f"command: python {' '.join(['benchmarks/train_step.py'] + (sys.argv[1:] if argv is None else list(argv)))}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores; " + ", ".join(versions))
    for name, note in peer_notes.items():
        print(f"{name}: {note}; its columns are empty")
    if args.skip_peers:
        print("--skip-peers: PyTorch and JAX not imported")
    print(f"SiLU MLP on [x, t], OU, 'score' parameterisation, weighting 'none', t ~ U[{T0:g}, {T_END:g}], "
          f"Adam lr {LR:g}; data: {DATA_FACTOR} x batch points of N(0, I)")
    print(f"median of {args.repeats} interleaved repeats of k steps (~{args.target:g} s each) "
          f"after {args.warmup} warm-up steps")
    print(flush=True)

    torch = peers.get("PyTorch")
    peaks = measure_peaks(torch, args.peak_repeats)
    results = []
    for row in args.rows:
        for dtype in args.dtypes:
            r = measure(row, dtype, peers, args, SEED)
            results.append(r)
            summary = ", ".join(f"{n} {r['ms'][n]:.3g}" for n in IMPLEMENTATIONS if n in r["ms"])
            print(f"  {row} {dtype}: {summary} ms/step", file=sys.stderr, flush=True)

    print("ratio < 1 means sgm_ref is faster (sgm_ref time / other time). GFLOP/s: the flops the step's "
          "matrix products execute (step_flops) over sgm_ref's time; % of peak and floor ms use the NumPy matmul peak below. "
          "other load: CPUs' worth of time other processes (and the hypervisor) took during the timed "
          "repeats, the largest over repeats (from /proc/stat); above ~0.1 on 2 cores the row is disturbed.")
    print()
    print("\n".join(table(results, peaks)))
    print()
    print(f"Matrix-product peak in this run ({PEAK_SIZE}^3, best of {args.peak_repeats}, GFLOP/s): "
          + "; ".join(f"{impl} {dtype} {rate:.0f}" for (impl, dtype), rate in peaks.items()))
    paired = [r for r in results if "paired_jax" in r]
    if paired:
        print()
        print(f"sgm_ref / JAX round by round (the two timed in the same round of the interleaved repeats): "
              f"median over the {args.repeats} rounds, its distribution-free 95% interval (sign test; "
              f"needs >= 6 repeats) and the verdict against <= {JAX_TARGET} (met: the interval lies below):")
        print()
        print(f"| (d, width, depth, batch) | dtype | median [95% interval] | verdict (<= {JAX_TARGET}) |")
        print("|---|---|---|---|")
        for r in paired:
            cell, decided = paired_cells(r["paired_jax"], JAX_TARGET)
            print(f"| {r['row']} | {r['dtype']} | {cell} | {decided} |")
    shared = [r for r in results if "paired_peak" in r]
    if shared:
        print()
        print(f"sgm_ref's share of the matrix-product peak round by round (a NumPy {PEAK_SIZE}^3 product of the "
              f"row's dtype timed in every round of the interleaved repeats, as one more implementation; each "
              f"round's step GFLOP/s over that round's product GFLOP/s): median over the {args.repeats} rounds, "
              "its distribution-free 95% interval and the verdict against issue 16's target for the OpenBLAS "
              "setting as found (met: the interval lies at or above it; the kernels this run used are under "
              "Threads below):")
        print()
        print("| (d, width, depth, batch) | dtype | share of the peak, median [95% interval] | target | verdict "
              "| peak in the rounds, GFLOP/s (slowest / fastest) |")
        print("|---|---|---|---|---|---|")
        for r in shared:
            target = PEAK_TARGETS[r["row"]]  # one for every row (tests/test_benchmarks.py)
            cell, decided = paired_cells(r["paired_peak"], target, below=False)
            _, slow, fast = r["peak_detail"]
            print(f"| {r['row']} | {r['dtype']} | {cell} | >= {target} | {decided} | {slow:.0f} / {fast:.0f} |")
    print()
    print("Timing detail (k steps per repeat; fastest / slowest repeat, ms/step):")
    for r in results:
        cells = ", ".join(f"{n} k={k} {lo:.3g}/{hi:.3g}" for n, (k, lo, hi) in r["detail"].items())
        if "peak_detail" in r:
            k, slow, fast = r["peak_detail"]
            cells += f"; the {PEAK_SIZE}^3 product k={k}, {slow:.0f}/{fast:.0f} GFLOP/s"
        print(f"- {r['row']} {r['dtype']}: {cells}")
        for name, err in r["errors"].items():
            print(f"  - {name} not timed: {err}")
    print()
    print("Equal work (max |difference| / max |value| against sgm_ref on one fixed batch; "
          f"tolerance float64 {TOLERANCE['float64']:g}, float32 {TOLERANCE['float32']:g}):")
    for r in results:
        for name, (diff, tol, note) in r["checks"].items():
            print(f"- {r['row']} {r['dtype']} {name}: {note} -> {'ok' if diff <= tol else 'FAILED'}")
    print()
    print("Threads:")
    for line in thread_report(peers):
        print(f"- {line}")
    if args.memory:
        names = [n for n in IMPLEMENTATIONS if n in ("sgm_ref", "NumPy") or peers.get(n) is not None]
        print()
        print(f"Peak resident memory of a fresh interpreter per implementation (VmHWM, its own address "
              f"space's high-water mark; ru_maxrss where /proc is missing, which on Linux would carry the "
              f"parent's peak over fork and exec), MiB; in "
              f"parentheses the growth of its resident set from just before the implementation is built "
              f"(imports, the problem's data and, for sgm_ref, its compiled kernels loaded; the high-water mark "
              f"reset there through /proc/self/clear_refs) to the peak over warm-up and {2 + MEMORY_STEPS} "
              "steps. sgm_ref's network workspace: the layer inputs [h, 1], pre-activations, act'(z) and "
              "the backward buffers; the activation minimum: every layer's input, one number per hidden "
              "unit for act'(z), and the output, per row of the batch. Each interpreter loads only its "
              "implementation's libraries: the NumPy baseline (sgm_ref.plain from its file), PyTorch and JAX "
              "load neither numba nor sgm_ref (before 2026-12-06 they loaded both: 67-86 MiB of each of their "
              "peaks on the small row):")
        print()
        memory = measure_memory(args.rows, args.dtypes, names)
        print("\n".join(memory_table(memory, args.rows, args.dtypes, names)))
        print()
        loaded = {}
        for (_, _, name), r in memory.items():
            if "loaded" in r:
                loaded.setdefault(name, r["loaded"])
        print("Libraries each worker loaded (of numba, sgm_ref, torch, jax): "
              + "; ".join(f"{n}: {', '.join(loaded[n]) or 'none'}" for n in names if n in loaded))
    phases_ok = True
    if args.phases:
        print()
        print("Where sgm_ref's step goes (a copy of TrainStep's sequence timed call by call; "
              "% of peak against the NumPy matrix-product peak above):")
        for row in args.rows:
            for dtype in args.dtypes:
                lines, same = phase_lines(row, dtype, args, SEED, peaks[("NumPy", dtype)])
                phases_ok &= same
                print("\n".join(f"- {line}" if not line.startswith("  ") else line for line in lines), flush=True)
    if args.bound:
        print()
        print("What the products and one exp per activation leave (best single step and best single "
              f"passes of {5 * args.repeats}, hot; % of the 2048^3 NumPy peak measured before each row):")
        for row in args.rows:
            for dtype in args.dtypes:
                print(f"- {bound_line(row, dtype, SEED, 5 * args.repeats)}", flush=True)
    if args.thread_sweep:
        print()
        print("Thread sweep (sgm_ref alone in a fresh interpreter per environment, median ms/step; "
              "thread counts set in-process by numba.set_num_threads and threadpoolctl):")
        for line in thread_sweep(args.rows, args.dtypes, args):
            print(f"- {line}", flush=True)
    if not args.skip_jit_cost:
        print()
        print("First-call cost of sgm_ref in a fresh interpreter (TrainStep at (2, 128, 3, 256); seconds):")
        for label, res in jit_cost().items():
            if isinstance(res, str):
                print(f"- {label}: {res}")
                continue
            print(f"- {label}: import {res['import']:.2f}; "
                  + "; ".join(f"{dt} first call {res[dt + '_first']:.3f} vs later {res[dt + '_later']:.5f}"
                              for dt in DTYPES))
    failed = [f"{r['row']} {r['dtype']} {name}: {err}" for r in results for name, err in r["errors"].items()]
    if not phases_ok:
        failed.append("--phases: the instrumented copy of the step did not give TrainStep's bits (update it)")
    if failed:
        print()
        print(f"{len(failed)} implementation(s) not timed (failed equal-work check or error):")
        for line in failed:
            print(f"- {line}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
