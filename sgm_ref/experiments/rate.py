"""The rate experiment: score-matching error against the number of samples n, for several d.

Cole & Lu prove that when the log-relative density f of p_0 = exp(f) gamma_d / Z has low
complexity, empirical score matching on n samples learns p_0 at a rate in n whose
exponent does not depend on d. Here each cell (family, d, n, seed) draws n samples,
trains a score network (the paper's objective by default: weight 1, t uniform on
[t0(n), T(n)]; for max(min_steps, epochs n / batch_size) steps, so the budget grows with
n, with Adam's rate decaying by a cosine over them and the objective estimated on
importance-weighted times; it keeps the averaged parameters of the last checkpoint, or of
an earlier one (20 along the run, the initial network and 3 early ones) whose objective on
fresh held-out samples is lower by more than twice its noise), and records, against the
exact (or debiased Monte-Carlo) oracle,

    score_error         int_{t0}^{T} beta/2 E_{p_t} |s_theta - grad log p_t|^2 dt on the fixed
                        window [t0, T] = [0.01, 5] (Monte Carlo, with se)
    baseline_empirical  the same error, on the same points, of the score of the OU-smoothed
                        empirical measure of the n samples (the unrestricted minimiser of
                        the empirical loss: the curse of dimensionality's baseline)
    baseline_minus_x    ... of the score -x (p_0's Gaussian part alone)
    baseline_em         ... of a K-component identity-covariance mixture fitted by EM
                        (mixture families only; the efficient parametric plug-in)
    tv, tv_bound        the certified bound on TV(p_0, residual exponential sampler output)
                        on [t0(n), T(n)] (schedule()) and its terms; tv_oracle: the same
                        bound with the exact score (no learning error; what T(n), t0(n)
                        and the grid leave)

Families (make_target):

    mixture-iso  the paper's example, the same up to isometry in every d: K = 4
                 identity-covariance components with means at the corners of a square of
                 radius 2 in R^2, embedded in R^d by a seeded Haar-random frame
    tilt-iso     the paper's general class, the same up to isometry: exp(f(P^T x)) gamma_d
                 with f a two-layer tanh network of 16 units and path norm 10 on R^2 and P
                 a seeded frame (families.SubspaceTilt). Its oracle is Monte Carlo in R^2
                 (n_mc_oracle draws): the errors subtract the oracle's own mean squared
                 error sum_j se_j^2; no certified bound (it would need exact log-densities)
    mixture      (older) means of norm 2 in random directions of R^d: the geometry changes
                 with d (pairwise distances 0.9-4.0 at d = 2, about 2.8 at d = 128)
    product      (older contrast) every coordinate 1/2 N(-r/sqrt 2, 1) + 1/2 N(r/sqrt 2, 1),
                 f = sum_j f_j(x_j) has d terms and the means have norm r sqrt(d / 2)
    tilted       (older) TiltedGaussian.barron in R^d: random directions, whose mutual
                 angles change with d; Monte-Carlo oracle in R^d

The log-log slope of score_error against n, per (family, d), is fitted by least squares to
the seeds' mean log score_error at each n, with its standard error from the scatter about
the line (sweep_summary's summary.md; the report's fits, stats.joint_slopes, take every
seed's error as a point of its own, one per cell).

Execution: every cell is an independent job for a concurrent.futures.Executor (a local
process pool, or Dask distributed's client.get_executor()). Each result is appended to
results.jsonl as it arrives (one JSON line, flushed and fsynced); a restarted sweep in the
same folder skips the cells already there. A cell's randomness comes from
SeedSequence(base_seed, spawn_key=(family, d, n, seed)), so its result does not depend on
which worker ran it or in which order.
"""

import fractions
import json
import math
import numbers
import os
import platform
import time
import warnings

import numba
import numpy as np
from scipy import stats

from .. import __version__
from .._threads import blas_kernels
from .._json import load_json
from ..io import _fsync_folder
from ..losses import _draw_times
from ..metrics import tv_upper_bound
from ..nn import MLP
from ..optim import Adam, CosineLR
from ..processes import OU
from ..score_model import ScoreModel
from ..targets import GaussianMixture, ProductMixture, TiltedGaussian
from ..targets._checks import _memory_bytes
from ..train import fit
from .baselines import EmpiricalMeasure, fit_identity_mixture, minus_x
from .families import SubspaceTilt, embedding, isometric_mixture
from .stats import _reals

__all__ = ["FAMILIES", "QUICK", "FULL", "make_grid", "make_target", "run_cell", "cells", "check_settings", "load_results",
           "fit_slope", "sweep_summary"]

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

# The training budget: max(MIN_STEPS, EPOCHS n / batch) steps, the most whose full grid fits
# a night on 2 cores (the rate and the time draws are set in SETTINGS below). Whether it is
# enough is measured by the run with twice the steps on 36 cells (18 per seed: d 2, 32, 128;
# n 500, 4000, 32000; both families; seeds 0 and 1), stored in docs/rate_iso_rerun_budget2
# beside the same cells of docs/rate_iso_rerun: `sgm-ref experiment rate-report
# docs/rate_iso_rerun --out OUT --compare docs/rate_iso_rerun_budget2` gives twice the steps
# 0.951 times the error (95% [0.911, 0.992]), by family 0.925 [0.869, 0.986] (mixture-iso) and
# 0.977 [0.919, 1.04] (tilt-iso), by n 0.962 (n = 500), 1.01 (4000), 0.883 (32000, [0.809,
# 0.964]). So the budget still binds a little at the largest n: 12% of the error there (4 to
# 19%), which makes an exponent fitted from n = 500 to 32000 smaller by about
# log(0.962 / 0.883) / log(64) = 0.02 (at most log(1 / 0.809) / log(64) = 0.05), against
# exponents of 0.4 to 1.1; whether the gain exceeds 10% is undecided, and d = 512 is not in
# the check. The
# same check before the zero output layer (docs/rate_iso_budget2 against docs/rate_iso_cosine)
# gave 0.804 at n = 32000 ([0.683, 0.948]). The first full run (constant rate, 3000 steps,
# 7500 at n = 32000; docs/rate_iso) had 5.87 times the rerun's error at n = 32000 on the 50
# cells there (docs/rate.md, "Compared with rate_iso").
EPOCHS, MIN_STEPS = 200, 12_000

# settings shared by every cell of a sweep (a sweep folder keeps one set)
SETTINGS = {"width": 256, "depth": 3, "activation": "silu", "time_embedding": "log", "parameterization": "residual",
            # the paper's objective: weight 1, t uniform on [t0(n), T(n)] (OBJECTIVES), estimated
            # on times from the defensive mixture with importance weights (losses.importance_times)
            "weighting": "none", "time_distribution": "uniform", "time_sampling": "defensive",
            # training length: steps if set, else max(min_steps, epochs n / batch_size)
            "steps": None, "epochs": EPOCHS, "min_steps": MIN_STEPS, "batch_size": 256,
            # Adam's rate decays from lr to lr_final lr over the cell's steps (optim.CosineLR)
            "lr": 2e-3, "lr_schedule": "cosine", "lr_final": 1e-3, "weight_decay_times_n": 5.0, "ema_decay": 0.999,
            # the score errors' fixed window [t0, T]; the schedules t0(n) <= t0, T(n) >= T (schedule())
            "t0": 1e-2, "T": 5.0, "schedule_n_ref": 500,
            "n_eval": 20_000, "n_eval_tilted": 4_000, "n_eval_empirical": 4_000, "em_starts": 2,
            # the held-out objective along training (val_loss at val_steps): val_points evaluations;
            # the cell keeps the last EMA parameters, or earlier ones clearly lower there (HeldOut)
            "val_n": 16384, "val_points": 20, "checkpoint": "held-out",
            # ... and at step 0 and up to val_early earlier points, each half the one after it (HeldOut)
            "val_early": 3,
            # the network's output layer starts at zero: the residual model starts as the score -x
            "output_init": "zero",
            "bound_n": 64, "bound_method": "residual_exponential", "bound_steps": 1000, "base_seed": 0}

# the training objectives a grid may use: (weighting, time distribution)
OBJECTIVES = {"paper": ("none", "uniform"), "sigma2": ("sigma2", "log-uniform")}

QUICK = {"families": ["mixture-iso", "tilt-iso"], "d": [2, 32, 128], "n": [500, 2000, 8000], "seeds": [0],
         "settings": {**SETTINGS, "width": 128, "epochs": 20, "min_steps": 1500, "n_eval": 10_000,
                      "bound_steps": 500}}
# QUICK: 18 cells, 3 min 56 s wall with --workers 2 on the 2-core machine (load average 7).
# FULL: 350 cells. Seed 0 of today's --full (docs/rate_iso_rerun, two workers on the
# project's 2-core machine, 2026-12-03, with the AVX2 kernels of OpenBLAS that this machine's
# environment selects, OPENBLAS_CORETYPE=Haswell; its rows predate the kernels' record)
# recorded 2.12 core-hours (train_seconds + eval_seconds, as the report counts): 2.05 of
# training, 0.07 of evaluation; per cell 83, 75, 82, 103 and 202 s at d = 2, 8, 32, 128 and 512.
# Five seeds: about 10.6 core-hours, 5.3 h with --workers 2. The five recorded 9.2 core-hours:
# 2.12, 1.79, 1.56, 2.23 and 1.50 for seeds 0 to 4; seeds 1 (but for 12 cells) to 4 ran on the
# AVX-512 kernels (SkylakeX in their rows), and what spreads them is the other load on the
# machine (seed 3 ran partly beside test suites), not the kernels alone.
# d = 1024: a training step 1.5 times d = 512's with the AVX2 kernels (22.5 against 14.9 ms,
# `OPENBLAS_NUM_THREADS=1 python benchmarks/rate_cost.py --d 512,1024 --steps-only --repeats 3`
# beside the sweep) and 1.6 times with the AVX-512 ones (15.9 against 10.2 ms, the same command
# under `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE`), from which its 70 cells were expected
# to add about 5.1 core-hours. Recorded (docs/rate_iso_rerun, 2026-12-03 and 04, AVX-512
# kernels, two workers), they took 8.77: 1.64, 1.72, 2.19, 1.61 and 1.61 for seeds 0 to 4
# (seed 2 partly beside test suites), 451 s a cell on average against d = 512's 172 s, so a
# grid with them needs about 9 h with two workers (more than a night). An earlier run of the
# same cells on the same kind of host (its rows lost with its session) did its first 26 in
# 49 min with two workers, about 230 s a cell against about 430 s here, near the 5.1
# core-hours expected: so the d = 1024 cells' cost varies about 2x between hosts of one kind;
# why is not measured (a candidate: its first layer's weights and Adam's moments, 2 MB each,
# exceed a core's 1 MB L2, which makes the step depend on the memory traffic of the host's
# neighbours). So --full stops at d = 512, a night on either kernel set, and d = 1024 is run
# as its own cells (`--full --d 1024` into the same folder; the report counts them against
# both grids).
# Memory would not stop it: the largest arrays of a cell are its n x d samples, 262 MB at
# n = 32000 and d = 1024. The first full run (docs/rate_iso: constant rate, 3000 steps, 7500
# at n = 32000) took 2 h 5 min;
# `sgm-ref experiment rate-report docs/rate_iso_rerun` gives the recorded times per cell.
FULL = {"families": ["mixture-iso", "tilt-iso"], "d": [2, 8, 32, 128, 512],
        "n": [500, 1000, 2000, 4000, 8000, 16000, 32000], "seeds": [0, 1, 2, 3, 4], "settings": SETTINGS}


def make_grid(quick=False, families=None, d=None, n=None, seeds=None, steps=None, objective=None, budget=None):
    """QUICK or FULL with any of its lists, its training steps or its objective replaced, checked.

    budget: a factor (> 0) on the training length, epochs and min_steps alike (budget 2
    is the run with twice the steps of each cell that checks the training is long enough).
    """
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
    # a cell's data alone is n x d float64 numbers: refused now, not as a failed cell after the start
    d_max, n_max = max(grid["d"]), max(grid["n"])
    memory = _memory_bytes() or float(np.iinfo(np.intp).max)
    if d_max > 2**53 or n_max > 2**53 or 8.0 * d_max * n_max > min(memory, float(np.iinfo(np.intp).max)):
        raise ValueError(f"--d {d_max} with --n {n_max}: a cell's data alone would need {8.0 * d_max * n_max:.3g} "
                         f"bytes, more than this machine's memory ({memory:.3g} bytes); use a smaller --d or --n")
    # a family no cell of the grid could run is refused now, not as every one of its cells failing:
    # the isometric families live in a k-dimensional subspace (d >= k), and the mixture families'
    # EM baseline fits K components to the n samples (n >= K)
    for family in grid["families"]:
        k, K = DEFINITIONS[family].get("k"), DEFINITIONS[family].get("K")
        if k is not None and min(grid["d"]) < k:
            raise ValueError(f"--d: the family {family} needs d >= {k}, got {grid['d']}")
        if K is not None and min(grid["n"]) < K:
            raise ValueError(f"--n: the family {family} needs n >= {K} (its EM baseline fits {K} components), "
                             f"got {grid['n']}")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"--steps must be an integer >= 1, got {steps!r}")
        grid["settings"]["steps"] = steps
    if budget is not None:
        if steps is not None:
            raise ValueError("--budget scales the default training length; it cannot be combined with --steps")
        if isinstance(budget, (bool, np.bool_)) or not isinstance(budget, numbers.Real) \
                or not math.isfinite(budget) or budget <= 0:
            raise ValueError(f"--budget must be a number > 0 (a factor on the training steps), got {budget!r}")
        # exact arithmetic: 1.1 * 12000 is 13200 steps, not ceil(13200.000000000002)
        factor = fractions.Fraction(str(float(budget)))
        epochs = grid["settings"]["epochs"] * factor
        grid["settings"]["epochs"] = int(epochs) if epochs.denominator == 1 else float(epochs)
        grid["settings"]["min_steps"] = math.ceil(grid["settings"]["min_steps"] * factor)
        # refused now, not as an OverflowError of the first cell after sweep.json holds these settings
        try:
            longest = max(training_steps(n, grid["settings"]) for n in grid["n"])
        except OverflowError:
            longest = math.inf
        if longest > 2**53:
            raise ValueError(f"--budget {budget!r} would train a cell for more than 2^53 steps; use a factor such "
                             "as 2 (twice the default steps)")
    if objective is not None:
        if objective not in OBJECTIVES:
            raise ValueError(f"--objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        grid["settings"]["weighting"], grid["settings"]["time_distribution"] = OBJECTIVES[objective]
    # ... and so are the draws every cell evaluates on, whatever its n: val_n (HeldOut) and
    # n_eval or n_eval_tilted points (_integrated_errors), each of them d float64 numbers
    s = grid["settings"]
    rows = max([s.get("val_n") or 0] + [s["n_eval_tilted"] if f in _MONTE_CARLO_FAMILIES else s["n_eval"]
                                        for f in grid["families"]])
    if 8.0 * d_max * rows > min(memory, float(np.iinfo(np.intp).max)):
        raise ValueError(f"--d {d_max}: a cell's evaluation draws alone ({rows} points: the settings val_n, n_eval, "
                         f"n_eval_tilted) would need {8.0 * d_max * rows:.3g} bytes, more than this machine's memory "
                         f"({memory:.3g} bytes); use a smaller --d")
    return grid


def schedule(n, settings):
    """(t0(n), T(n)): the early-stopping time and horizon of training and of the certified bound.

        t0(n) = t0 (n_ref / n)^{1/2},   T(n) = T + log(n / n_ref) / 2     for n >= n_ref
        (t0 and T themselves for n < n_ref).

    For p_0 = exp(f) gamma_d / Z the prior term KL(p_T || N(0, I)) falls like e^{-2T}, so
    T(n) growing like (1/2) log n makes it fall like 1/n; TV(p_0, p_t0) is O(t0) for the
    identity-covariance mixture (the means move by (1 - alpha_t0) |mu|), so t0 ~ n^{-1/2}.
    Both then shrink like n^{-1/2}, the best statistical rate, and leave the path term
    (the learning) to decide the bound's rate.
    """
    ratio = max(1.0, n / settings["schedule_n_ref"])
    return settings["t0"] / math.sqrt(ratio), settings["T"] + 0.5 * math.log(ratio)


def training_steps(n, settings):
    """settings["steps"] if set, else max(min_steps, ceil(epochs n / batch)), batch = min(batch_size, n)
    (the batch fit draws: a sample smaller than batch_size is one batch, so epochs is then a
    count of steps)."""
    if settings.get("steps") is not None:
        return int(settings["steps"])
    batch = min(settings["batch_size"], n)
    return max(int(settings["min_steps"]), math.ceil(settings["epochs"] * n / batch))


def objective_name(settings):
    pair = (settings["weighting"], settings["time_distribution"])
    return next((name for name, value in OBJECTIVES.items() if value == pair), "/".join(pair))


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

    cell: {"family", "d", "n", "seed", "settings"} as cells() makes it (a family of FAMILIES,
    integers d >= 1, n >= 2, seed >= 0, settings whose keys check_settings accepts); anything
    else raises ValueError. A cell that fails (training diverges, a non-finite metric)
    returns {"status": "failed", "error": ...} instead of raising, so one bad cell does not
    stop a sweep; so does one that runs out of memory (a MemoryError: its row says so, and
    --retry-failed runs it again). numba runs one thread per cell, whichever executor runs
    it; the row records the versions and thread settings it ran with.
    """
    family, d, n, seed = _check_cell(cell)
    row = {"family": family, "d": d, "n": n, "seed": seed}
    env = {"sgm_ref": __version__, "numpy": np.__version__, "numba": numba.__version__, "host": platform.node(),
           "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS"), "blas_kernels": blas_kernels()}
    threads = numba.get_num_threads()
    numba.set_num_threads(1)  # restored below: a caller's own process keeps its setting
    try:
        result = _train_and_measure(cell)
    except (ValueError, FloatingPointError) as exc:
        return {**row, "status": "failed", "error": f"{type(exc).__name__}: {exc}", **env}
    except MemoryError as exc:  # this cell's arrays (beside the other workers'): the others may still fit
        return {**row, "status": "failed", "error": f"out of memory ({str(exc) or 'MemoryError'}): rerun with "
                "--retry-failed and fewer --workers, or a smaller --d or --n", **env}
    finally:
        numba.set_num_threads(threads)
    if not _all_finite(result):
        return {**row, "status": "failed", "error": f"non-finite result {result}", **env}
    return {**row, "status": "ok", **result, **env}


def _check_cell(cell):
    """cell_key(cell), after checking that cell is one cells() could make; else raise ValueError.

    A cell of an unknown family raised a KeyError from inside the training, and d, n or seed
    given as 2.7, "2" or True ran as the cell 2 (or 1) and wrote that key into its row."""
    if not isinstance(cell, dict) or not {"family", "d", "n", "seed", "settings"} <= set(cell):
        raise ValueError("cell must be a dict with keys family, d, n, seed and settings (rate.cells(grid) makes them)")
    if cell["family"] not in FAMILIES:
        raise ValueError(f"cell family must be one of {', '.join(FAMILIES)}, got {cell['family']!r}")
    for key, low in (("d", 1), ("n", 2), ("seed", 0)):
        v = cell[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"cell {key} must be an integer >= {low}, got {v!r}")
    if not isinstance(cell["settings"], dict):
        raise ValueError(f"cell settings must be a dict (a grid's settings), got {type(cell['settings']).__name__}")
    check_settings(cell["settings"], "cell settings")
    return cell_key(cell)


# the settings that a sweep made before them lacks (its cells then do what they did before:
# direct time draws, the constant rate, the last checkpoint, ...); epochs and min_steps are
# read only when steps is None, lr_final only with the cosine schedule
_LATER_SETTINGS = ("steps", "epochs", "min_steps", "lr_schedule", "lr_final", "time_sampling", "checkpoint",
                   "val_early", "output_init")


def check_settings(settings, name="settings"):
    """Raise ValueError unless settings holds every key a cell reads, none outside SETTINGS, and
    the counts (integers) and numbers (finite, t0 < T; lr > 0; ema_decay and, with the cosine
    schedule, lr_final in [0, 1)) that a cell computes with.

    name: what the message calls settings. Keys of _LATER_SETTINGS may be missing (a sweep
    made before they existed), epochs and min_steps when steps is set, lr_final without the
    cosine schedule. The names of the sampler, activation and so on are checked where they
    are used (a failed row naming them).

    A missing key was a KeyError inside every cell (after sweep.json had stored the settings,
    so the folder then refused the corrected ones), and a misspelt one was ignored: the cell
    ran without it (settings["val_erly"] = 3 trained without early checkpoints).
    """
    if not isinstance(settings, dict):  # else set()'s or a subscript's TypeError, naming nothing
        raise ValueError(f"{name} must be a dict of the keys of rate.SETTINGS (a grid's settings), got "
                         f"{type(settings).__name__}")
    unknown = sorted(str(k) for k in set(settings) - set(SETTINGS))
    if unknown:
        raise ValueError(f"{name}: unknown setting {', '.join(map(repr, unknown))} (misspelt?); the settings are "
                         f"the keys of rate.SETTINGS: {', '.join(SETTINGS)}")
    needed = set(SETTINGS) - set(_LATER_SETTINGS)
    if settings.get("steps") is None:
        needed |= {"epochs", "min_steps"}
    if settings.get("lr_schedule") == "cosine":
        needed.add("lr_final")
    missing = [k for k in SETTINGS if k in needed and k not in settings]
    if missing:
        raise ValueError(f"{name} must set {', '.join(map(repr, missing))} (every cell reads "
                         f"{'it' if len(missing) == 1 else 'them'}); start from rate.SETTINGS or make_grid()")
    # the numbers a cell computes with before any check of its own (t0 None, val_points 0 or
    # schedule_n_ref "500" raised TypeError or ZeroDivisionError out of the sweep), or that it
    # misread (steps 2.5 trained 2 steps, "5" 5; base_seed None drew every cell from the
    # operating system's entropy: not reproducible, and a rerun's cells not those of the first)
    counts = [("width", 1), ("depth", 1), ("batch_size", 1), ("n_eval", 2), ("n_eval_tilted", 2),
              ("n_eval_empirical", 2), ("em_starts", 1), ("val_n", 2), ("val_points", 1), ("bound_n", 2),
              ("bound_steps", 1), ("base_seed", 0)]
    counts += [("steps", 1)] if settings.get("steps") is not None else [("min_steps", 0)]
    for key, low in counts:
        v = settings[key]
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Integral) or v < low:
            raise ValueError(f"{name}[{key!r}] must be an integer >= {low}, got {v!r}")
    # epochs 0 with min_steps >= 1 trains min_steps steps (max(min_steps, epochs n / batch_size))
    # (Adam's lr and ema_decay, and the cosine's lr_final too: lr 0 or "2e-3", ema_decay 1.5 or
    # lr_final 1 made every cell a failed row, and the folder then refused the corrected settings)
    for key, v in settings.items():  # before the ranges, which a longdouble passes that its float64 does not
        if isinstance(v, np.floating) and v.dtype.itemsize > 8 and not _plain_real(v):
            with np.errstate(over="ignore"):
                near = float(v)
            raise ValueError(f"{name}[{key!r}] = {v!r} is not a float64 number (a cell computes in float64, where it "
                             f"is {near!r}); pass a float")
    reals = [("t0", 0.0), ("T", 0.0), ("schedule_n_ref", 0.0), ("weight_decay_times_n", None), ("lr", 0.0)]
    reals += [("epochs", None)] if settings.get("steps") is None else []
    for key, above in reals:
        v = settings[key]
        if not _plain_real(v) or not _within_float(v) or (v <= above if above is not None else v < 0):
            raise ValueError(f"{name}[{key!r}] must be a finite number {'> 0' if above is not None else '>= 0'}, "
                             f"got {v!r}")
    in_unit_interval = [("ema_decay", "the EMA's decay")]
    if settings.get("lr_schedule") == "cosine":
        in_unit_interval.append(("lr_final", "the cosine's final rate / lr"))
    for key, what in in_unit_interval:
        v = settings[key]
        if not _plain_real(v) or not 0.0 <= v < 1.0:
            raise ValueError(f"{name}[{key!r}] ({what}) must be a number in [0, 1), got {v!r}")
    if settings.get("steps") is None and settings["epochs"] == 0 and settings["min_steps"] == 0:
        raise ValueError(f"{name} trains no step: epochs and min_steps are both 0 (a cell trains max(min_steps, "
                         f"epochs n / batch_size) steps); set either above 0, or steps")
    if not settings["t0"] < settings["T"]:
        raise ValueError(f"{name} must have t0 < T (the score errors' window [t0, T]), got t0 = {settings['t0']!r}, "
                         f"T = {settings['T']!r}")
    try:  # Adam's own bound on its first step (lr 1e308 passed here and failed in every cell)
        Adam(np.zeros(1), lr=settings["lr"])
    except ValueError as exc:
        raise ValueError(f"{name}['lr']: {exc}") from None


def _plain_real(v):
    """An int or a float (Python's or NumPy's), not a bool: the numbers a cell computes with (a
    Fraction, a Real too, passed here and failed every cell: "t must be a real number or an array
    of float64, ...", Adam's "ema_decay must be a real number"). A NumPy float wider than float64
    (longdouble) only where float64 holds it exactly: a cell computes in float64, and
    ema_decay = 1 - 2**-60 in longdouble passed [0, 1) here and was 1.0 there (a review)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)):
        return False
    if isinstance(v, np.floating) and v.dtype.itemsize > 8:
        with np.errstate(over="ignore"):
            return bool(np.float64(v) == v)
    return True


def _within_float(v):
    """A real number that float64 holds finitely (an int past its range, 10**400, raised
    OverflowError out of math.isfinite, naming no setting)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False


def _all_finite(value):
    """Every number in a (nested) result is finite (strings, booleans and None pass): in its
    dicts and in its lists (val_loss), which JSON (allow_nan=False) could not write."""
    if isinstance(value, dict):
        return all(_all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(_all_finite(v) for v in value)
    if isinstance(value, float):
        return math.isfinite(value)
    return True


def _network(d, s, rng):
    """The cell's MLP, drawn from rng as MLP draws it; with the setting output_init "zero" its
    output layer (weights and bias) is then set to 0, so that the residual model
    s = -x + net(x, t) starts as the score -x. At random initialisation the output layer adds
    about 1 to every one of the d coordinates (mixture-iso, d = 512, n = 500: integrated error
    5.3 at step 0 against 0.97 for -x), which training must first remove. Sweeps made before
    the setting existed (None) keep the random output layer."""
    if s.get("output_init") not in (None, "zero"):
        raise ValueError(f"settings output_init must be 'zero' or None (random), got {s['output_init']!r}")
    net = MLP(d, (s["width"],) * s["depth"], s["activation"], s["time_embedding"], rng=rng)
    if s.get("output_init") == "zero":
        net.weights[-1][...] = 0.0
        net.biases[-1][...] = 0.0
    return net


def _train_and_measure(cell):
    s = cell["settings"]
    family, d, n, seed = cell_key(cell)
    ss = np.random.SeedSequence(s["base_seed"], spawn_key=(_FAMILY_IDS[family], d, n, seed))
    data_seq, init_seq, train_seq, eval_seq, em_seq, bound_seq, val_seq = ss.spawn(7)
    data_rng, init_rng, train_rng, eval_rng, em_rng = (np.random.default_rng(c) for c in (data_seq, init_seq,
                                                                                          train_seq, eval_seq, em_seq))
    target = make_target(family, d)
    process = OU()
    t0, T = schedule(n, s)
    steps = training_steps(n, s)
    data = target.sample(n, data_rng)
    model = ScoreModel(_network(d, s, init_rng), process, s["parameterization"])
    # L2 penalty lambda_n = c / n: the regularised empirical risk of learning theory, whose
    # penalty fades as data grows; without it a network memorises a small sample
    optimizer = Adam(model.params, lr=s["lr"], weight_decay=s["weight_decay_times_n"] / n, ema_decay=s["ema_decay"],
                     ema_warmup=True)
    held_out = HeldOut(model, optimizer, target, t0, T, s, np.random.default_rng(val_seq))
    # sweeps made before the schedule and the sampling existed (no such settings) train at the
    # constant rate on direct draws
    if s.get("lr_schedule") not in (None, "cosine"):
        raise ValueError(f"settings lr_schedule must be 'cosine' or None (constant), got {s['lr_schedule']!r}")
    if s.get("checkpoint") not in (None, "held-out"):
        raise ValueError(f"settings checkpoint must be 'held-out' or None (the last), got {s['checkpoint']!r}")
    select = s.get("checkpoint") == "held-out"
    lr_schedule = CosineLR(s["lr"], steps, s["lr_final"]) if s.get("lr_schedule") == "cosine" else None
    val_early = s.get("val_early")
    if val_early is not None and (isinstance(val_early, bool) or not isinstance(val_early, int) or val_early < 0):
        raise ValueError(f"settings val_early must be a whole number >= 0 or None (no early checkpoints), "
                         f"got {val_early!r}")
    eval_every = max(1, steps // s["val_points"])
    early = HeldOut.early_steps(eval_every, val_early or 0)
    tic = time.perf_counter()
    if s.get("val_early"):
        held_out(model)  # step 0

    def at_early_steps(step, model, optimizer, history):
        if step in early:
            held_out(model)

    history = fit(model, data, steps=steps, batch_size=min(s["batch_size"], n), t0=t0, T=T,
                  rng=train_rng, weighting=s["weighting"], time_distribution=s["time_distribution"],
                  time_sampling=s.get("time_sampling") or "direct",
                  optimizer=optimizer, progress=False, eval_every=eval_every,
                  evaluate=held_out, lr_schedule=lr_schedule, callback=at_early_steps if early else None)
    train_seconds = time.perf_counter() - tic
    # the last checkpoint or an earlier one clearly lower on the held-out objective (HeldOut.choose),
    # or (sweeps made before the selection existed) the averaged parameters at the end
    chosen, chosen_step = held_out.choose() if select else (optimizer.ema, len(history.loss))
    model.network.set_params(chosen)

    tic = time.perf_counter()
    scores = {"network": model, "minus_x": minus_x}
    em = None
    if family in MIXTURE_FAMILIES:
        em = fit_identity_mixture(data, DEFINITIONS[family]["K"], em_rng, n_init=s["em_starts"])
        scores["em"] = lambda x, t, mixture=em.mixture: mixture.score(x, t, process)
    n_eval = s["n_eval_tilted"] if family in _MONTE_CARLO_FAMILIES else s["n_eval"]
    errors = _integrated_errors(scores, EmpiricalMeasure(data), target, process, s["t0"], s["T"], n_eval,
                                min(n_eval, s["n_eval_empirical"]), eval_rng)
    baseline_seconds = time.perf_counter() - tic

    tic = time.perf_counter()
    bound = oracle_bound = None
    if family not in _MONTE_CARLO_FAMILIES:
        # the certified bound on TV(p_0, residual sampler's output) on [t0(n), T(n)], and the same
        # bound for the exact score: what remains of it without any learning error
        oracle = lambda x, t: target.score(x, t, process)  # noqa: E731
        bound, oracle_bound = (tv_upper_bound(score, target, process, t0, T, "geometric", s["bound_method"],
                                              s["bound_n"], np.random.default_rng(bound_seq),
                                              n_steps=s["bound_steps"], overflow="inf")
                               for score in (model, oracle))
    network = errors.pop("network")
    return {"score_error": network["error"], "score_error_se": network["se"],
            "tv_bound": None if bound is None else bound.tv, "tv_bound_se": None if bound is None else bound.tv_se,
            "kl_path": None if bound is None else _bound_terms(bound)["kl_path"],
            "kl_path_se": None if bound is None else _bound_terms(bound)["kl_path_se"],
            "baseline_empirical": errors["empirical"], "baseline_minus_x": errors["minus_x"],
            "baseline_em": errors.get("em"), "em": None if em is None else em.as_dict(),
            "tv": _bound_terms(bound), "tv_oracle": _bound_terms(oracle_bound),
            "t0": t0, "T": T, "t0_eval": s["t0"], "T_eval": s["T"], "steps": steps,
            "epochs": steps * min(s["batch_size"], n) / n, "objective": objective_name(s),
            "lr_schedule": s.get("lr_schedule"), "time_sampling": s.get("time_sampling") or "direct",
            "checkpoint_step": chosen_step,
            "final_loss": float(np.mean(history.loss[-100:])), "train_seconds": train_seconds,
            "val_steps": [c[0] for c in held_out.checkpoints],
            "val_loss": [float(np.mean(c[2])) for c in held_out.checkpoints],
            "eval_seconds": time.perf_counter() - tic + baseline_seconds, "baseline_seconds": baseline_seconds}


_MONTE_CARLO_FAMILIES = ("tilted", "tilt-iso")


class HeldOut:
    """The training objective of the averaged (EMA) parameters on val_n fresh samples of p_0,
    with times and noise drawn once, and the checkpoint early stopping keeps.

    Called as fit's evaluate(model) (and, with the setting val_early, once before training and
    at early_steps through fit's callback), it records the per-sample losses of the current
    EMA parameters theta,

        l_i(theta) = lambda(t_i) |s_theta(alpha_i x0_i + sigma_i z_i, t_i) + z_i / sigma_i|^2,

    and returns their mean (the objective's estimate). On common draws the objective's
    constant cancels from a difference of two checkpoints a, b: D = mean_i (l_i(a) - l_i(b))
    estimates err(a) - err(b) with standard error sd_i(l_i(a) - l_i(b)) / sqrt(val_n).

    choose() -> (params, step): the last checkpoint, unless some earlier ones are better by
    more than z_crit standard errors of D (the run has overfitted: on a small n a long run's
    error rises again); then the lowest of those. Choosing the plain minimum instead would
    follow the noise: on a large n the last checkpoints differ by less than it. The samples
    are fresh draws of the target, not part of the n: they choose a checkpoint and train
    nothing.
    """

    @staticmethod
    def early_steps(every, halvings):
        """The steps every / 2, every / 4, ..., every / 2^halvings (rounded down, those >= 1):
        early checkpoints, where a small n in a high d starts to overfit within the first
        `every` steps (d = 512, n = 500 with a random output layer: the error is lowest at
        step 25 of 600)."""
        return {every >> k for k in range(1, halvings + 1) if every >> k >= 1}

    def __init__(self, model, optimizer, target, t0, T, s, rng, z_crit=2.0):
        self.model, self.optimizer, self.z_crit = model, optimizer, z_crit
        x0 = target.sample(s["val_n"], rng)
        self.t = _draw_times(s["val_n"], t0, T, rng, s["time_distribution"])
        z = rng.standard_normal(x0.shape)
        process = model.process
        sigma = process.sigma(self.t)
        self.xt = process.alpha(self.t)[:, None] * x0 + sigma[:, None] * z
        self.target = -z / sigma[:, None]
        self.weight = sigma ** 2 if s["weighting"] == "sigma2" else np.ones_like(self.t)
        self.checkpoints = []  # (step, params, per-sample losses)

    def __call__(self, model):
        params = model.params if self.optimizer.ema is None else self.optimizer.ema
        current = model.params.copy()
        model.network.set_params(params)
        try:
            r = model(self.xt, self.t) - self.target
        finally:
            model.network.set_params(current)
        losses = self.weight * np.einsum("ij,ij->i", r, r)
        self.checkpoints.append((self.optimizer.step_count, params.copy(), losses))
        return float(np.mean(losses))

    def choose(self):
        """(params, step) of the kept checkpoint (see the class docstring)."""
        step, params, last = self.checkpoints[-1]
        better = []
        for s, p, losses in self.checkpoints[:-1]:
            diff = last - losses
            se = float(np.std(diff, ddof=1)) / math.sqrt(diff.size)
            if float(np.mean(diff)) > self.z_crit * se:
                better.append((float(np.mean(losses)), s, p))
        if not better:
            return params, step
        _, s, p = min(better, key=lambda b: b[0])
        return p, s


def _bound_terms(bound):
    """TVBound.as_dict without the grid and the per-step terms (a row stays a few hundred bytes)."""
    if bound is None:
        return None
    out = bound.as_dict()
    for key in ("grid", "kl_path_per_step"):
        out.pop(key)
    # a path term beyond float64 (overflow="inf") makes the bound the trivial TV <= 1: kept,
    # with the overflowed terms as null (JSON has no inf)
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in out.items()}


def _integrated_errors(scores, empirical, target, process, t0, T, n, n_empirical, rng):
    """int_{t0}^{T} beta/2 E_{p_t}|s - grad log p_t|^2 dt for every score in scores, on common points.

    The estimator of sgm_ref.metrics.score_error_integral (log-uniform times, weight
    t log(T / t0)) on one draw of n points for all the scores; the smoothed empirical
    measure's score (O(n_train d) per point) on the first n_empirical of them. A target
    with a Monte-Carlo oracle (score_and_se) has the oracle's own error subtracted: with
    s_mc = grad log p_t + e and E[e] = 0 over its draws, E|s - s_mc|^2 = E|s - grad log p_t|^2
    + E|e|^2, and E|e|^2 is estimated by the oracle's sum_j se_j^2 at the same point.
    Returns {name: {"error": float, "se": float}}, with "empirical" added.
    """
    x0 = target.sample(n, rng)
    span = math.log(T / t0)
    t = t0 * np.exp(span * rng.random(n))
    xt, _ = process.perturb(x0, t, rng)
    if hasattr(target, "score_and_se"):
        oracle, se = target.score_and_se(xt, t, process)
        noise = np.sum(se**2, axis=1)
    else:
        oracle, noise = target.score(xt, t, process), np.zeros(n)
    weight = t * span * (0.5 * process.beta(t))
    out = {}
    for name, score in {**scores, "empirical": empirical}.items():
        m = n_empirical if name == "empirical" else n
        e = (np.sum((score(xt[:m], t[:m]) - oracle[:m]) ** 2, axis=1) - noise[:m]) * weight[:m]
        out[name] = {"error": float(e.mean()), "se": float(e.std(ddof=1) / math.sqrt(m))}
    return out


def load_results(path, repair=False):
    """The rows of results.jsonl, one per cell.

    A repeated cell keeps its first row, unless that row is a failure and a later one
    (a retry) is not. Only the last line may be incomplete (a write cut short by a
    kill): it is ignored with a warning naming it, and with repair=True cut off the file
    so the next append starts on a fresh line. A last line that lacks only its newline
    (a whole JSON object: no write cut short leaves one, since an object's text ends at
    its closing brace) is a row like any other, and repair=True adds the newline. Any
    other unreadable line raises ValueError naming it; nothing else is ever removed.
    """
    if not os.path.exists(path):
        return []
    with open(path, "rb") as f:
        lines = f.readlines()
    torn = unended = bool(lines) and not lines[-1].endswith(b"\n")
    if torn:
        try:
            load_json(lines[-1], f"{path}, line {len(lines)}")
        except ValueError:
            warnings.warn(f"{path}, line {len(lines)}, is incomplete (a write cut short) and is "
                          + ("cut off; its cell runs again" if repair else "left out") + f": {lines[-1][:80]!r}",
                          stacklevel=2)
        else:
            torn = False  # complete but for its newline (unended): read below like the others
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
    elif unended and repair:  # the next append starts on a line of its own
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
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
        for key in ("baseline_empirical", "baseline_minus_x", "baseline_em"):
            if row.get(key) is not None:  # rows of older sweeps have none
                numbers += [row[key]["error"], row[key]["se"]]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) for v in numbers):
            raise ValueError("not a result")
    return family, d, n, seed


def append_result(path, result):
    """Append result to results.jsonl as one line, flushed and fsynced. An OSError of the write
    (a full disk, a file-size limit: the file object's error names no file) is given path's name;
    a line cut short by it is what load_results(repair=True) cuts off before the next append."""
    try:
        new = not os.path.exists(path)
        with open(path, "ab") as f:
            f.write((json.dumps(result, allow_nan=False) + "\n").encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        if new:  # the file's entry in its folder too (a power cut may otherwise lose the new file)
            _fsync_folder(os.path.dirname(os.path.abspath(path)))
    except OSError as exc:
        if exc.filename is None:
            exc.filename = os.fspath(path)
        raise


def fit_slope(n, error):
    """Least-squares slope b of log(error) = a + b log(n), its standard error, and a.

    Fitted to the seed means of log(error) at each n, so seeds are not counted as
    independent points on the line; the standard error comes from the residual scatter
    about the line (m - 2 degrees of freedom for m distinct n), which also absorbs any
    curvature. With two distinct n the standard error is nan (no scatter to judge by);
    with fewer than two (one n, or none) there is no line, and all three are nan.
    """
    n, error = _reals("n", n), _reals("error", error)
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


def _number(v):
    """A float, or None for nan (JSON has no nan: null, and '–' in the tables)."""
    return None if v is None or not math.isfinite(v) else float(v)


def sweep_summary(results):
    """Per (family, d): the fitted slope ± se and the mean error (± se over seeds) at each n.

    The slope's degrees of freedom are the distinct n of the fit minus 2 (an n whose every
    error is <= 0 is not in it). What cannot be computed (a slope from fewer than two n, a
    standard error or interval from fewer than three, a local slope across an error <= 0)
    is None. The rows are taken in the order of their cells, not of the list (the order
    in which the cells finished): the same rows give the same numbers to the last bit."""
    groups = {}
    for r in sorted((r for r in results if r.get("status", "ok") == "ok"), key=cell_key):
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
        dof = len({r["n"] for r in fitted}) - 2
        half = stats.t.ppf(0.975, dof) * slope_se if dof > 0 else float("nan")
        local = [_number(np.log(b["score_error"] / a["score_error"]) / np.log(b["n"] / a["n"]))
                 if a["score_error"] > 0 and b["score_error"] > 0 else None
                 for a, b in zip(points, points[1:])]
        summary.append({"family": family, "d": d, "slope": _number(slope), "slope_se": _number(slope_se),
                        "slope_dof": dof, "slope_95": [_number(slope - half), _number(slope + half)],
                        "local_slopes": local, "intercept": _number(intercept), "points": points})
    return summary
