"""Points per second of the divergence the probability-flow likelihood integrates, against torch autograd.

One evaluation of the ODE's right-hand side (sgm_ref.likelihood) needs the score s(x, t)
and div s = tr ds/dx at every point. This script times that evaluation, float64, one t
for the batch (t = 0.5, OU), for d in {2, 32, 128} and two scores:

    oracle   the exact score of a K = 8 full-covariance mixture (GaussianMixture):
             sgm_ref "exact" = score + divergence (closed form, O(K d^2) per point);
             sgm_ref "hutchinson" = score + one Rademacher probe by a central finite
             difference with each point's own step h = 1e-5 (1 + max_j |x_j|) (two more
             score calls; what log_prob does for a black box);
             torch: log p_t written in torch (log-sum-exp over the components with the
             precisions formed once), score by autograd with create_graph, the exact
             trace by d backward passes, Hutchinson by one vector-Jacobian product.
    mlp      a SiLU MLP on [x, t], widths (128, 128, 128), "residual" parameterisation:
             sgm_ref "exact" = ScoreModel.divergence (forward mode: one forward pass plus
             d times the products after the input layer); "hutchinson" = ScoreModel.jvp
             with one probe; torch: the same network (same weights) with autograd, the
             exact trace by d backward passes, Hutchinson by one vector-Jacobian product.

Before timing, sgm_ref's exact traces and the score of every timed call (exact and
Hutchinson, sgm_ref's and torch's) must equal torch's exact call's to a relative 1e-9, and
the Hutchinson estimates with the same probes to 1e-9 (mlp) or 1e-7 (oracle: the central
difference, O(h^2)); a row that does not is marked FAILED. Timings are the best of R
calls, the implementations taken in turn (round robin) so a change of machine load hits
them alike; the load average before and after is printed. Only same-run ratios mean much
on a shared machine.

    python benchmarks/likelihood.py [--quick] [--n N] [--repeats R]

Exit status 1 if an agreement check failed.
"""

import argparse
import datetime
import os
import platform
import sys
import time

# Each side meets its threaded runtimes with its own defaults, as in train_step.py: OpenBLAS
# reads OPENBLAS_THREAD_TIMEOUT when numpy loads (set here as sgm_ref sets it when imported
# first, so that its idle worker sleeps), and torch's OpenMP runtime reads OMP_WAIT_POLICY
# when torch loads, so torch loads before sgm_ref (imported after it, torch's threads took
# sgm_ref's PASSIVE and slept at once instead of spinning as torch's default has them).
# The price: numba's 'omp' layer binds to that same libgomp of torch's, so the oracle's
# parallel kernels (sgm_ref.kernels.mixture) run with numba's idle threads spinning after
# each region, which sgm_ref's PASSIVE prevents when it is used alone (train_step.py's
# omp_note). One process cannot give the two runtimes different wait policies.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402
from _machine import cpu_name  # noqa: E402  (benchmarks/ is on sys.path when a script runs)

try:
    import torch
except ImportError:  # main() says so
    torch = None

import sgm_ref  # noqa: E402
from sgm_ref import OU, GaussianMixture  # noqa: E402
from sgm_ref.nn import MLP  # noqa: E402
from sgm_ref.score_model import ScoreModel  # noqa: E402

DIMS = (2, 32, 128)
K = 8
T_EVAL = 0.5
WIDTHS = (128, 128, 128)
# the Hutchinson estimates against torch's with the same probes, relative to their largest:
# the oracle's central difference comes within 2e-8 (measured: d = 2, 32, 128, n = 1024), a
# forward difference (O(h), not the method) 8e-6 to 6e-5, which the old 1e-5 let through on
# some draws; the MLP's jvp is exact
HUTCHINSON_TOLERANCE = {"oracle": 1e-7, "mlp": 1e-9}


def make_mixture(d, rng):
    """K components: weights uniform in [0.5, 1.5] (normalised), means of norm 3, covariances
    A A^T / d + 0.1 I (as benchmarks/oracle.py)."""
    w = rng.uniform(0.5, 1.5, K)
    w /= w.sum()
    mu = rng.standard_normal((K, d))
    mu *= 3.0 / np.linalg.norm(mu, axis=1, keepdims=True)
    A = rng.standard_normal((K, d, d))
    cov = A @ A.transpose(0, 2, 1) / d + 0.1 * np.eye(d)
    return GaussianMixture(w, mu, 0.5 * (cov + cov.transpose(0, 2, 1)), "full")


# -- torch --------------------------------------------------------------------------------
def torch_oracle(torch, target, t):
    """(score_and_trace(x), score_and_hutchinson(x, eps)) for the mixture at time t, in torch."""
    a, s = OU().marginal(t)
    covs = a * a * np.asarray(target.covariances) + s * s * np.eye(target.dim)
    P = torch.tensor(np.linalg.inv(covs))
    logdet = torch.tensor(np.linalg.slogdet(covs)[1])
    logw = torch.tensor(np.log(target.weights))
    means = torch.tensor(a * target.means)
    d = target.dim

    def logp(x):
        y = x[:, None, :] - means[None]                                      # (n, K, d)
        q = torch.einsum("nki,kij,nkj->nk", y, P, y)
        return torch.logsumexp(logw - 0.5 * (q + logdet), dim=1) - 0.5 * d * np.log(2 * np.pi)

    return _autograd_pair(torch, lambda x: torch.autograd.grad(logp(x).sum(), x, create_graph=True)[0])


def torch_mlp(torch, model, t):
    net = model.network
    Ws = [torch.tensor(W) for W in net.weights]
    bs = [torch.tensor(b) for b in net.biases]

    def score(x):
        h = torch.cat([x, torch.full((x.shape[0], 1), t, dtype=x.dtype)], dim=1)
        for l in range(len(Ws)):
            h = h @ Ws[l] + bs[l]
            if l < len(Ws) - 1:
                h = torch.nn.functional.silu(h)
        return h - x                                                          # "residual"

    return _autograd_pair(torch, score)


def _autograd_pair(torch, score_of):
    def exact(x_np):
        x = torch.tensor(x_np, requires_grad=True)
        s = score_of(x)
        trace = torch.zeros(x.shape[0], dtype=x.dtype)
        for j in range(x.shape[1]):  # d backward passes: row j of the Jacobian each
            trace += torch.autograd.grad(s[:, j].sum(), x, retain_graph=True)[0][:, j]
        return s.detach().numpy(), trace.numpy()

    def hutchinson(x_np, eps_np):
        x = torch.tensor(x_np, requires_grad=True)
        eps = torch.tensor(eps_np)
        s = score_of(x)
        vjp = torch.autograd.grad((s * eps).sum(), x)[0]  # eps^T J
        return s.detach().numpy(), (vjp * eps).sum(dim=1).numpy()

    return exact, hutchinson


# -- timing -------------------------------------------------------------------------------
def best_times_interleaved(calls, repeats):
    best = {name: np.inf for name in calls}
    for _ in range(repeats):
        for name, fn in calls.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def central_difference_probe(score, x, eps):
    """eps^T (ds/dx) eps per row, by a central difference along eps with each point's own
    step h = 1e-5 (1 + max_j |x_j|), as log_prob takes it for a black-box score: error
    O(h^2), within 2e-8 of the exact estimate here (HUTCHINSON_TOLERANCE)."""
    h = 1e-5 * (1.0 + np.max(np.abs(x), axis=1, keepdims=True))
    return np.sum(eps * (score(x + h * eps) - score(x - h * eps)) / (2 * h), axis=1)


def relative(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def measure(kind, d, n, repeats, torch, rng):
    x_rng = np.random.default_rng(rng.integers(2**32))
    if kind == "oracle":
        target = make_mixture(d, rng)
        x = OU().perturb(target.sample(n, x_rng), T_EVAL, x_rng)[0]
    else:
        model = ScoreModel(MLP(d, WIDTHS, "silu", rng=int(rng.integers(2**31))), OU(), "residual")
        x = x_rng.standard_normal((n, d))
    t = np.full(n, T_EVAL)
    eps = 2.0 * x_rng.integers(0, 2, (n, d)).astype(np.float64) - 1.0
    if kind == "oracle":
        process = OU()

        def ours_exact():
            return target.score(x, t, process), target.divergence(x, t, process)

        def ours_hutch():
            return target.score(x, t, process), central_difference_probe(
                lambda y: target.score(y, t, process), x, eps)

        theirs_exact, theirs_hutch = torch_oracle(torch, target, T_EVAL)
        hutch_tol = HUTCHINSON_TOLERANCE["oracle"]
    else:
        def ours_exact():
            return model.divergence(x, t)

        def ours_hutch():
            s, jv = model.jvp(x, t, eps[:, None, :])
            return s, np.sum(eps * jv[:, 0], axis=1)

        theirs_exact, theirs_hutch = torch_mlp(torch, model, T_EVAL)
        hutch_tol = HUTCHINSON_TOLERANCE["mlp"]
    # the score each timed call returns, too: the Hutchinson calls' own (a jvp that returned
    # a wrong or unfinished score passed when only the exact calls' score was compared)
    (s_exact, div_exact), (s_hutch, est_hutch) = ours_exact(), ours_hutch()
    (t_exact, t_div), (t_hutch, t_est) = theirs_exact(x), theirs_hutch(x, eps)
    checks = {"exact": relative(div_exact, t_div), "hutchinson": relative(est_hutch, t_est),
              "score": max(relative(s_exact, t_exact), relative(s_hutch, t_exact), relative(t_hutch, t_exact))}
    ok = checks["exact"] < 1e-9 and checks["score"] < 1e-9 and checks["hutchinson"] < hutch_tol
    best = best_times_interleaved({"ours exact": ours_exact, "torch exact": lambda: theirs_exact(x),
                                   "ours hutchinson": ours_hutch, "torch hutchinson": lambda: theirs_hutch(x, eps)},
                                  repeats)
    return {"kind": kind, "d": d, "n": n, "ok": ok, "checks": checks,
            **{k: n / v for k, v in best.items()}}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="n = 256, 3 repeats")
    parser.add_argument("--n", type=int, help="points per call (default 1024; 256 with --quick)")
    parser.add_argument("--repeats", type=int, help="timed calls per implementation (default 7; 3 with --quick)")
    args = parser.parse_args()
    for option in ("n", "repeats"):  # None is "not given": 0 was read so and ran the default silently
        if getattr(args, option) is not None and getattr(args, option) < 1:
            parser.error(f"--{option} must be >= 1, got {getattr(args, option)}")
    n = args.n if args.n is not None else (256 if args.quick else 1024)
    repeats = args.repeats if args.repeats is not None else (3 if args.quick else 7)
    if torch is None:
        raise SystemExit("benchmarks/likelihood.py compares against torch autograd: install torch")
    torch.set_default_dtype(torch.float64)
    rng = np.random.default_rng(0)
    load_before = os.getloadavg()
    # warm-up: numba compilation and torch's first calls are not what is measured
    for kind in ("oracle", "mlp"):
        measure(kind, 2, 64, 1, torch, np.random.default_rng(1))
    rows = []
    for kind in ("oracle", "mlp"):
        for d in DIMS:
            print(f"{kind} d = {d} ...", file=sys.stderr, flush=True)
            rows.append(measure(kind, d, n, repeats, torch, rng))
    load_after = os.getloadavg()
    print(f"# benchmarks/likelihood.py, {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n")
    print(f"sgm_ref {sgm_ref.__version__}, numpy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Python {platform.python_version()}, {cpu_name()}, "
          f"{os.cpu_count()} CPUs; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after; "
          f"n = {n} points per call, best of {repeats}.\n")
    print("Points per second of one evaluation of the score and its divergence (float64, t = 0.5, OU).\n")
    print("| score | d | sgm_ref exact | torch exact (d backward) | ratio | sgm_ref Hutchinson | "
          "torch Hutchinson (1 VJP) | ratio | agreement exact / Hutchinson |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {r['d']} | {r['ours exact']:.3g} | {r['torch exact']:.3g} | "
              f"{r['ours exact'] / r['torch exact']:.2f} | {r['ours hutchinson']:.3g} | {r['torch hutchinson']:.3g} | "
              f"{r['ours hutchinson'] / r['torch hutchinson']:.2f} | {r['checks']['exact']:.1e} / "
              f"{r['checks']['hutchinson']:.1e}{'' if r['ok'] else ' FAILED'} |")
    print("\nratio > 1: sgm_ref is faster. Oracle Hutchinson in sgm_ref is a finite difference (two extra score "
          "calls); torch's is a vector-Jacobian product through its autograd graph.")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
