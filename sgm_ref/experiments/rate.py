"""The rate experiment: score-matching error against the number of samples n, for several d.

Cole & Lu prove that when the log-relative density f of p_0 = exp(f) gamma_d / Z has low
complexity, empirical score matching on n samples learns p_0 at a rate in n whose
exponent does not depend on d. Here each cell (family, d, n, seed) draws n samples,
trains a score network with a fixed budget, and records

    score_error  int_{t0}^{T} E_{p_t} |s_theta - grad log p_t|^2 dt  (Monte Carlo, with se)
    tv_bound     the certified bound on TV(p_0, Euler–Maruyama output) (with se)

against the exact oracle. Families:

    mixture  the paper's: K = 4 identity-covariance components, means of norm r = 2 in
             random directions of R^d (f a log-sum-exp of linear functions, its
             complexity fixed as d grows)
    product  the contrast: every coordinate 1/2 N(-r/sqrt 2, 1) + 1/2 N(r/sqrt 2, 1), so
             at d = 2 the same mean norm r, but f = sum_j f_j(x_j) has d terms and the
             means have norm r sqrt(d / 2)
    tilted   the paper's general class: exp(f) gamma_d with f a two-layer tanh network
             of 16 units and path norm 10 in every d (TiltedGaussian.barron). Its oracle
             is Monte Carlo (n_mc_oracle draws): the score error subtracts the oracle's
             own mean squared error, sum_j se_j^2, which is unbiased over the draws; the
             certified bound is not computed (its path term would need the Monte-Carlo
             oracle at every step of every path)

The log-log slope of score_error against n, per (family, d), is fitted by least squares
over all cells with its standard error (sweep_summary).

Execution: every cell is an independent job for a concurrent.futures.Executor (a local
process pool, or Dask distributed's client.get_executor()). Each result is appended to
results.jsonl as it arrives (one JSON line, flushed and fsynced); a restarted sweep in the
same folder skips the cells already there. A cell's randomness comes from
SeedSequence(base_seed, spawn_key=(family, d, n, seed)), so its result does not depend on
which worker ran it or in which order.
"""

import json
import math
import os
import platform
import time

import numba
import numpy as np
from scipy import stats

from .. import __version__
from .._json import load_json
from ..metrics import score_error_integral, tv_upper_bound
from ..nn import MLP
from ..optim import Adam
from ..processes import OU
from ..score_model import ScoreModel
from ..targets import GaussianMixture, ProductMixture, TiltedGaussian
from ..train import fit
from .families import SubspaceTilt, embedding, isometric_mixture

__all__ = ["FAMILIES", "QUICK", "FULL", "make_grid", "make_target", "run_cell", "cells", "load_results", "fit_slope",
           "sweep_summary"]

RADIUS = 2.0
FAMILIES = ("mixture", "product", "tilted", "mixture-iso", "tilt-iso")
# fixed ids in each cell's seed: adding a family never changes the others' randomness
_FAMILY_IDS = {"mixture": 0, "product": 1, "tilted": 2, "mixture-iso": 3, "tilt-iso": 4}
# the families whose target is a K-component identity-covariance mixture (the EM baseline fits one)
MIXTURE_FAMILIES = ("mixture", "mixture-iso")
# what the families are, written into sweep.json so a changed definition is noticed
DEFINITIONS = {"mixture": {"K": 4, "radius": RADIUS, "directions_seed": 0},
               "product": {"shift": RADIUS / math.sqrt(2.0), "std": 1.0},
               "tilted": {"width": 16, "path_norm": 10.0, "activation": "tanh", "seed": 0, "n_mc_oracle": 512},
               # the means: the corners of a square of radius 2 in R^2 (pairwise 2 sqrt 2 and 4)
               "mixture-iso": {"K": 4, "k": 2, "means": (RADIUS * np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0],
                                                                            [0.0, -1.0]])).tolist(),
                               "embedding_seed": 0},
               "tilt-iso": {"width": 16, "k": 2, "path_norm": 10.0, "activation": "tanh", "seed": 0,
                            "embedding_seed": 0, "n_mc_oracle": 1024}}

# settings shared by every cell of a sweep (a sweep folder keeps one set)
SETTINGS = {"width": 256, "depth": 3, "activation": "silu", "time_embedding": "log", "parameterization": "residual",
            "weighting": "sigma2", "time_distribution": "log-uniform", "steps": 3000, "batch_size": 256,
            "lr": 2e-3, "weight_decay_times_n": 5.0, "ema_decay": 0.999, "t0": 1e-2, "T": 5.0, "n_eval": 20_000,
            "n_eval_tilted": 4_000,
            "bound_n": 64, "bound_method": "euler_maruyama", "bound_steps": 1000, "base_seed": 0}

QUICK = {"families": list(FAMILIES), "d": [2, 8, 32, 128], "n": [500, 2000, 8000], "seeds": [0],
         "settings": {**SETTINGS, "steps": 1500, "width": 128, "n_eval": 10_000}}
FULL = {"families": list(FAMILIES), "d": [2, 8, 32, 128], "n": [500, 1000, 2000, 4000, 8000, 16000, 32000],
        "seeds": [0, 1, 2], "settings": SETTINGS}


def make_grid(quick=False, families=None, d=None, n=None, seeds=None, steps=None):
    """QUICK or FULL with any of its lists or its training steps replaced, checked."""
    base = QUICK if quick else FULL
    grid = {"families": list(base["families"] if families is None else families),
            "d": list(base["d"] if d is None else d), "n": list(base["n"] if n is None else n),
            "seeds": list(base["seeds"] if seeds is None else seeds), "settings": dict(base["settings"])}
    for family in grid["families"]:
        if family not in FAMILIES:
            raise ValueError(f"--families: unknown family {family!r}; use {', '.join(FAMILIES)}")
    if not grid["families"] or len(set(grid["families"])) != len(grid["families"]):
        raise ValueError(f"--families must be distinct names, got {grid['families']}")
    for key, low in (("d", 1), ("n", 2), ("seeds", 0)):
        values = grid[key]
        if not values or any(isinstance(v, bool) or not isinstance(v, int) or v < low for v in values) \
                or len(set(values)) != len(values):
            raise ValueError(f"--{key} must be distinct integers >= {low}, got {values}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"--steps must be an integer >= 1, got {steps!r}")
        grid["settings"]["steps"] = steps
    return grid


def make_target(family, d):
    """The target of a family in dimension d (fixed: the seed varies the data, not the target)."""
    if family == "mixture":
        spec = DEFINITIONS["mixture"]
        return GaussianMixture.paper_family(d, spec["K"], spec["radius"], rng=spec["directions_seed"])
    if family == "product":
        spec = DEFINITIONS["product"]
        return ProductMixture.symmetric(d, shift=spec["shift"], std=spec["std"])
    if family == "tilted":
        spec = DEFINITIONS["tilted"]
        return TiltedGaussian.barron(d, spec["width"], spec["path_norm"], spec["activation"],
                                     rng=np.random.default_rng(spec["seed"]), n_mc=spec["n_mc_oracle"])
    if family == "mixture-iso":
        spec = DEFINITIONS["mixture-iso"]
        return isometric_mixture(d, spec["means"], np.random.default_rng(spec["embedding_seed"]))
    if family == "tilt-iso":
        return _tilt_iso(d)
    raise ValueError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")


def _tilt_iso(d):
    """exp(f(P^T x)) gamma_d / Z: f the k-dimensional Barron network of TiltedGaussian.barron
    (the same draws of its units and of the oracle's Z in every d), P = embedding(d, k)."""
    spec = DEFINITIONS["tilt-iso"]
    k = spec["k"]
    if d < k:
        raise ValueError(f"d must be >= {k} for the family 'tilt-iso' (its tilt lives in R^{k}), got {d}")
    rng = np.random.default_rng(spec["seed"])
    W = rng.standard_normal((spec["width"], k))
    W /= np.linalg.norm(W, axis=1, keepdims=True)
    b = rng.standard_normal(spec["width"])
    a = rng.choice([-1.0, 1.0], size=spec["width"]) * rng.uniform(0.5, 1.0, size=spec["width"])
    a *= spec["path_norm"] / np.sum(np.abs(a) * (1.0 + np.abs(b)))
    P = embedding(d, k, np.random.default_rng(spec["embedding_seed"]))
    return SubspaceTilt(W, b, a, P, n_mc=spec["n_mc_oracle"], rng=rng)


def cell_key(cell):
    return (cell["family"], int(cell["d"]), int(cell["n"]), int(cell["seed"]))


def cells(grid):
    """Every cell of a grid, smallest work first (so early results cover every d)."""
    out = [{"family": f, "d": d, "n": n, "seed": s, "settings": grid["settings"]}
           for s in grid["seeds"] for n in grid["n"] for d in grid["d"] for f in grid["families"]]
    return sorted(out, key=lambda c: (c["seed"], c["n"] * c["d"]))


def run_cell(cell):
    """Train and evaluate one cell; returns its result as a JSON-ready dict.

    A cell that fails (training diverges, a non-finite metric) returns {"status": "failed",
    "error": ...} instead of raising, so one bad cell does not stop a sweep. numba runs
    one thread per cell, whichever executor runs it; the row records the versions and
    thread settings it ran with.
    """
    family, d, n, seed = cell_key(cell)
    row = {"family": family, "d": d, "n": n, "seed": seed}
    env = {"sgm_ref": __version__, "numpy": np.__version__, "numba": numba.__version__, "host": platform.node(),
           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # restored below: a caller's own process keeps its setting
    try:
        result = _train_and_measure(cell)
    except (ValueError, FloatingPointError) as exc:
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}", **env}
    finally:
        numba.set_num_threads(threads)
    if not all(v is None or math.isfinite(v) for v in result.values()):
        return {**row, "status": "failed", "error": f"non-finite result {result}", **env}
    return {**row, "status": "ok", **result, **env}


def _train_and_measure(cell):
    s = cell["settings"]
    family, d, n, seed = cell_key(cell)
    ss = np.random.SeedSequence(s["base_seed"], spawn_key=(_FAMILY_IDS[family], d, n, seed))
    data_rng, init_rng, train_rng, eval_rng = (np.random.default_rng(c) for c in ss.spawn(4))
    target = make_target(family, d)
    process = OU()
    data = target.sample(n, data_rng)
    net = MLP(d, (s["width"],) * s["depth"], s["activation"], s["time_embedding"], rng=init_rng)
    model = ScoreModel(net, process, s["parameterization"])
    # L2 penalty lambda_n = c / n: the regularised empirical risk of learning theory, whose
    # penalty fades as data grows; without it a network memorises a small sample
    optimizer = Adam(model.params, lr=s["lr"], weight_decay=s["weight_decay_times_n"] / n, ema_decay=s["ema_decay"],
                     ema_warmup=True)
    tic = time.perf_counter()
    history = fit(model, data, steps=s["steps"], batch_size=min(s["batch_size"], n), t0=s["t0"], T=s["T"],
                  rng=train_rng, weighting=s["weighting"], time_distribution=s["time_distribution"],
                  optimizer=optimizer, progress=False)
    train_seconds = time.perf_counter() - tic
    model.network.set_params(optimizer.ema)
    tic = time.perf_counter()
    if isinstance(target, TiltedGaussian):
        error, error_se = _debiased_score_error(model, target, process, s["t0"], s["T"], s["n_eval_tilted"], eval_rng)
        bound = None
    else:
        error, error_se = score_error_integral(model, target, process, s["t0"], s["T"], s["n_eval"], eval_rng)
        bound = tv_upper_bound(model, target, process, s["t0"], s["T"], "geometric", s["bound_method"], s["bound_n"],
                               eval_rng, n_steps=s["bound_steps"])
    terms = {} if bound is None else {"tv_bound": bound.tv, "tv_bound_se": bound.tv_se, "kl_path": bound.kl_path,
                                      "kl_path_se": bound.kl_path_se}
    return {"score_error": float(error), "score_error_se": float(error_se),
            **{k: terms.get(k) for k in ("tv_bound", "tv_bound_se", "kl_path", "kl_path_se")},
            "final_loss": float(np.mean(history.loss[-100:])), "train_seconds": train_seconds,
            "eval_seconds": time.perf_counter() - tic}


def _debiased_score_error(model, target, process, t0, T, n, rng):
    """int_{t0}^{T} beta/2 E_{p_t}|s - grad log p_t|^2 dt against a Monte-Carlo oracle, its own error removed.

    With the oracle s_mc = grad log p_t + e and E[e] = 0 over its draws,
    E|s - s_mc|^2 = E|s - grad log p_t|^2 + E|e|^2, and E|e|^2 is estimated by the
    oracle's sum_j se_j^2 at the same point. Times log-uniform, as score_error_integral.
    """
    x0 = target.sample(n, rng)
    span = np.log(T / t0)
    t = t0 * np.exp(span * rng.random(n))
    xt, _ = process.perturb(x0, t, rng)
    oracle, se = target.score_and_se(xt, t, process)
    e = (np.sum((model(xt, t) - oracle) ** 2, axis=1) - np.sum(se**2, axis=1)) * t * span * (0.5 * process.beta(t))
    return float(e.mean()), float(e.std(ddof=1) / np.sqrt(n))


def load_results(path, repair=False):
    """The rows of results.jsonl, one per cell.

    A repeated cell keeps its first row, unless that row is a failure and a later one
    (a retry) is not. Only the last line may be incomplete (a write cut short by a
    kill): it is ignored, and with repair=True cut off the file so the next append
    starts on a fresh line. Any other unreadable line raises ValueError naming it;
    nothing else is ever removed.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.readlines()
    torn = bool(lines) and not lines[-1].endswith(b"\n")
    results, where = [], {}
    for number, line in enumerate(lines[:-1] if torn else lines, start=1):
        try:
            row = load_json(line, f"{path}, line {number}")
            key = _check_row(row)
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path}, line {number}, is not a result row: {line[:80]!r}; "
                             "fix or remove that line by hand") from None
        if key not in where:
            where[key] = len(results)
            results.append(row)
        elif _failed(results[where[key]]) and not _failed(row):
            results[where[key]] = row
    if torn and repair:
        with open(path, "r+b") as f:
            f.truncate(os.path.getsize(path) - len(lines[-1]))
    return results


def _failed(row):
    return row.get("status", "ok") != "ok"


def _check_row(row):
    """cell_key(row) if row is a result row run_cell could have written; else raise."""
    if not isinstance(row, dict):
        raise TypeError("not an object")
    family, d, n, seed = row["family"], row["d"], row["n"], row["seed"]
    if family not in FAMILIES or any(isinstance(v, bool) or not isinstance(v, int) for v in (d, n, seed)):
        raise ValueError("not a cell")
    if _failed(row):
        if row["status"] != "failed" or not isinstance(row["error"], str):
            raise ValueError("not a failure")
    else:
        numbers = [row["score_error"], row["score_error_se"]] + [row[k] for k in ("tv_bound", "tv_bound_se")
                                                                  if row.get(k) is not None]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
            raise ValueError("not a result")
    return family, d, n, seed


def append_result(path, result):
    with open(path, "ab") as f:
        f.write((json.dumps(result, allow_nan=False) + "\n").encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def fit_slope(n, error):
    """Least-squares slope b of log(error) = a + b log(n), its standard error, and a.

    Fitted to the seed means of log(error) at each n, so seeds are not counted as
    independent points on the line; the standard error comes from the residual scatter
    about the line (m - 2 degrees of freedom for m distinct n), which also absorbs any
    curvature. With two distinct n it is nan.
    """
    n, error = np.asarray(n, dtype=float), np.asarray(error, dtype=float)
    if n.ndim != 1 or n.shape != error.shape:
        raise ValueError(f"n and error must be 1-D arrays of one length, got shapes {n.shape} and {error.shape}")
    if not (np.all(np.isfinite(n)) and np.all(np.isfinite(error)) and np.all(n > 0) and np.all(error > 0)):
        raise ValueError("n and error must be finite and > 0 (a log-log fit)")
    x, y = np.log(n), np.log(error)
    xs = np.unique(x)
    if xs.size < 2:
        return float("nan"), float("nan"), float("nan")
    ys = np.array([y[x == v].mean() for v in xs])
    A = np.column_stack([np.ones_like(xs), xs])
    coef, *_ = np.linalg.lstsq(A, ys, rcond=None)
    dof = xs.size - 2
    if dof <= 0:
        return float(coef[1]), float("nan"), float(coef[0])
    resid = ys - A @ coef
    se = np.sqrt(resid @ resid / dof / np.sum((xs - xs.mean()) ** 2))
    return float(coef[1]), float(se), float(coef[0])


def sweep_summary(results):
    """Per (family, d): the fitted slope ± se and the mean error (± se over seeds) at each n."""
    groups = {}
    for r in results:
        if r.get("status", "ok") == "ok":
            groups.setdefault((r["family"], r["d"]), []).append(r)
    summary = []
    for (family, d), rows in sorted(groups.items()):
        # a debiased Monte-Carlo error can come out <= 0 when the error is below its noise:
        # such rows cannot enter a log-log fit, and are left out of it (not out of the table)
        fitted = [r for r in rows if r["score_error"] > 0]
        slope, slope_se, intercept = fit_slope([r["n"] for r in fitted], [r["score_error"] for r in fitted])
        by_n = {}
        for r in rows:
            by_n.setdefault(r["n"], []).append(r)
        points = []
        for n, rs in sorted(by_n.items()):
            e = np.array([r["score_error"] for r in rs])
            tv = np.array([r["tv_bound"] for r in rs if r.get("tv_bound") is not None])
            spread = e.std(ddof=1) / np.sqrt(e.size) if e.size > 1 else rs[0]["score_error_se"]
            points.append({"n": n, "seeds": len(rs), "score_error": float(e.mean()), "score_error_se": float(spread),
                           "tv_bound": float(tv.mean()) if tv.size else None,
                           "tv_bound_vacuous": bool(np.any(tv >= 1.0))})
        dof = len(points) - 2
        half = stats.t.ppf(0.975, dof) * slope_se if dof > 0 else float("nan")
        local = [float(np.log(b["score_error"] / a["score_error"]) / np.log(b["n"] / a["n"]))
                 if a["score_error"] > 0 and b["score_error"] > 0 else float("nan")
                 for a, b in zip(points, points[1:])]
        summary.append({"family": family, "d": d, "slope": slope, "slope_se": slope_se, "slope_dof": dof,
                        "slope_95": [slope - half, slope + half], "local_slopes": local, "intercept": intercept,
                        "points": points})
    return summary
