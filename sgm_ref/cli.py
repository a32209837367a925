"""The `sgm-ref` command. It only wires the library together; nothing imports it.

    sgm-ref demo [RUN]                 train, sample and evaluate on the 2-D ring
    sgm-ref train RUN [options]        a run folder with config.json and model.npz
    sgm-ref train RUN --resume         continue a killed training run (--steps N: extend to N steps)
    sgm-ref sample RUN [options]       samples.npy
    sgm-ref evaluate RUN [options]     report.json, report.md, plots
    sgm-ref audit --score MOD:FN --target SPEC   score error and certified TV bound of any score,
        beside the exact score's (the sampler's floor)
        [--process ddpm:linear --output eps --time timestep --dtype float32]   ... in the model's convention
        [--max-relative-error 0.001=0.5,0.1=0.05] [--plot audit.png]   pass/fail (exit 0/1) and a plot
    sgm-ref audit-sampler --sampler MOD:FN --replay NAME --target SPEC   a sampler loop vs a replay
    sgm-ref experiment rate OUT [--quick]   error against n for several d (the paper's claim)
    sgm-ref experiment rate-report OUT --out docs/rate.md   its report, from the stored rows alone

Errors in the input (a ValueError anywhere in the library, or an OSError on the user's
files) print one line on stderr and exit with status 2; nothing is left half-written
(see sgm_ref.runs). Options are never abbreviated: --step is refused, not read as --steps.
"""

import argparse
import contextlib
import functools
import importlib
import importlib.util
import os
import re
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np

from . import __version__
from .conventions import KINDS as _OUTPUTS
from .interop import TIMES as _TIME_ARGUMENTS
from .io import os_error_text
from .losses import TIME_DISTRIBUTIONS, WEIGHTINGS
from .processes import VP
from .replays import REPLAYS
from .runs import DEFAULTS, _shell_path
from .samplers import METHODS
from .score_model import PARAMETERIZATIONS

EXIT_BAD_INPUT = 2


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with usage mistakes raised (one line on stderr, exit 2) instead of printed,
    and no prefix matching: a mistyped --step must not silently become --steps. The
    subparsers are of this class too (argparse makes them with the parent's class)."""

    # a value such as -1e-3 or -inf is a value, as -1 and -.5 are to argparse: `--t0 -1e-3` was
    # refused as 'expected one argument' instead of being told what t0 must be (a review)
    _NEGATIVE_NUMBER = re.compile(r"^-(?:\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?|inf(?:inity)?|nan)$",
                                  re.IGNORECASE)

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self._NEGATIVE_NUMBER

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _integer(text):
    """argparse type of the counts: an int of at most 2**53 (more is a typo, and overflows numpy)."""
    value = int(text)
    if abs(value) > 2**53:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most 2**53)")
    return value


_integer.__name__ = "int"  # argparse's message for a non-number: "invalid int value: 'ten'"


# Defaults and choices shown in --help come from the library (runs.DEFAULTS and the
# modules' constants), so the help cannot drift from what a run does.
_TRAIN, _MODEL, _SAMPLE, _EVALUATE = (DEFAULTS[k] for k in ("train", "model", "sample", "evaluate"))
_PROCESSES = ("ou", "vp")
_GRIDS = ("geometric", "uniform")  # sgm_ref.samplers.time_grid's kinds
_SAMPLER_GRIDS = _GRIDS + ("karras", "leading", "trailing", "linspace")  # audit-sampler's: the peers' grids too
_TARGET_HELP = ("preset (ring, ring:k=6,radius=3,std=0.2, gmm:d=32,k=4,radius=3,seed=0, "
                "product:d=8,shift=1.5,std=1) or a JSON file with weights, means, covariances (or a run's "
                "config.json target_definition)")
_T_HELP = "horizon (default 5 for ou, 1 for vp)"
_BETA_MIN_HELP = f"VP beta(0), with --process vp (default {VP.beta_min:g})"
_BETA_MAX_HELP = f"VP beta(1), with --process vp (default {VP.beta_max:g})"


def _add_training_options(p):
    g = p.add_argument_group("target and training")
    g.add_argument("--target", help=f"{_TARGET_HELP} (default {DEFAULTS['target']})")
    g.add_argument("--seed", type=int, help=f"seed of every random stream of the run (default {DEFAULTS['seed']})")
    g.add_argument("--process", choices=_PROCESSES,
                   help=f"forward process (default {DEFAULTS['process']['name'].lower()})")
    g.add_argument("--beta-min", type=float, help=_BETA_MIN_HELP)
    g.add_argument("--beta-max", type=float, help=_BETA_MAX_HELP)
    g.add_argument("--n", type=_integer,
                   help=f"training samples drawn from the target (default {DEFAULTS['data']['n']})")
    g.add_argument("--width", type=_integer, help=f"hidden width (default {_MODEL['width']})")
    g.add_argument("--depth", type=_integer, help=f"hidden layers (default {_MODEL['depth']})")
    g.add_argument("--activation", choices=("relu", "silu", "tanh", "softplus"),
                   help=f"hidden layers' activation (default {_MODEL['activation']})")
    g.add_argument("--time-embedding", choices=("linear", "log", "fourier"),
                   help=f"how t enters the network (default {_MODEL['time_embedding']})")
    g.add_argument("--parameterization", choices=PARAMETERIZATIONS,
                   help=f"what the network outputs (default {_MODEL['parameterization']})")
    g.add_argument("--dtype", choices=("float64", "float32"),
                   help=f"floating-point type of the network and its data (default {_MODEL['dtype']})")
    g.add_argument("--steps", type=_integer, help=f"optimiser steps (default {_TRAIN['steps']})")
    g.add_argument("--batch-size", type=_integer,
                   help=f"training points per optimiser step (default {_TRAIN['batch_size']})")
    g.add_argument("--lr", type=float, help=f"Adam learning rate (default {_TRAIN['lr']:g})")
    g.add_argument("--weighting", choices=WEIGHTINGS, help=f"lambda(t) of the loss (default {_TRAIN['weighting']})")
    g.add_argument("--time-distribution", choices=TIME_DISTRIBUTIONS,
                   help=f"law of the training times on [t0, T] (default {_TRAIN['time_distribution']})")
    g.add_argument("--ema-decay", type=float,
                   help=f"parameter average used for sampling; 0 turns it off (default {_TRAIN['ema_decay']:g})")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction,
                   help="average with decay min(ema_decay, (1 + k) / (10 + k)) at step k "
                        f"(default {'on' if _TRAIN['ema_warmup'] else 'off'})")
    g.add_argument("--t0", type=float, help=f"early-stopping time (default {_TRAIN['t0']:g})")
    g.add_argument("--T", type=float, help=_T_HELP)
    g.add_argument("--checkpoint-every", type=_integer,
                   help=f"steps between checkpoints (default {_TRAIN['checkpoint_every']})")


def _add_sampling_options(p):
    g = p.add_argument_group("sampling")
    g.add_argument("--n-samples", type=_integer, help=f"points to draw (a new run: {_SAMPLE['n']})")
    g.add_argument("--sampler", choices=tuple(METHODS), help=f"sampler (a new run: {_SAMPLE['method']})")
    g.add_argument("--grid", choices=_GRIDS,
                   help=f"sampler's time grid; geometric puts more steps near t0 (a new run: {_SAMPLE['grid']})")
    g.add_argument("--n-steps", type=_integer, help=f"sampler steps (a new run: {_SAMPLE['n_steps']})")


def _add_evaluation_options(p):
    g = p.add_argument_group("evaluation")
    g.add_argument("--bound-n", type=_integer,
                   help=f"Monte-Carlo pairs per step of the TV bound (a new run: {_EVALUATE['bound_n']})")
    g.add_argument("--profile-n", type=_integer,
                   help=f"points per time of the score-error profile (a new run: {_EVALUATE['profile_n']})")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def build_parser():
    parser = _Parser(prog="sgm-ref", description="Exact, fast reference implementation of score-based generative models.")
    parser.add_argument("--version", action="version", version=f"sgm-ref {__version__}")
    parser.add_argument("--threads", type=_integer, metavar="N",
                        help="threads for numba's loops and OpenBLAS (default one per core, or SGM_REF_THREADS); "
                             "1 is often faster on a machine busy with other work. The count changes the last bits "
                             "of training: resume with the count you trained with")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser("demo", help="train, sample and evaluate on the 2-D ring of 8 Gaussians")
    p.add_argument("run", nargs="?", default="sgm-ref-demo", help="run folder to write (default ./sgm-ref-demo)")
    p.add_argument("--force", action="store_true", help="replace the run files of an existing folder")
    _add_training_options(p)
    _add_sampling_options(p)
    _add_evaluation_options(p)

    p = commands.add_parser("train", help="train a score model into a new run folder")
    p.add_argument("run", help="run folder to create (or to continue, with --resume)")
    p.add_argument("--force", action="store_true", help="replace the run files of an existing folder")
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN from its checkpoint; with --steps N, "
                        "extend it (finished or not) to N steps in total")
    _add_training_options(p)

    p = commands.add_parser("sample", help="draw samples.npy with a run's model",
                            description="Options left out keep the run's current sample settings "
                                        "(config.json); those given are saved there.")
    p.add_argument("run", help="a trained run folder")
    _add_sampling_options(p)
    p.add_argument("--t0", type=float, help="early-stopping time (a new run: training's)")
    p.add_argument("--T", type=float, help="horizon (a new run: training's)")

    p = commands.add_parser("evaluate", help="write report.json, report.md and plots for a sampled run",
                            description="Options left out keep the run's current evaluation settings "
                                        "(config.json); those given are saved there, but for --no-plots and "
                                        "--nll, which are this evaluation's only. Shows its progress on a "
                                        "terminal. Numbers too large for float64 are said in words in report.md "
                                        "and written as null in report.json, listed under \"non_finite\" (as for "
                                        "audit --json).")
    p.add_argument("run", help="a sampled run folder")
    _add_evaluation_options(p)
    p.add_argument("--nll", type=_integer, default=0, metavar="N",
                   help="also the model's NLL (probability-flow ODE) and the target's exact NLL on N fresh "
                        "samples, and their gap, a KL estimate (default 0: skipped; it solves an ODE)")

    p = commands.add_parser(
        "audit", help="score error and certified TV bound of any score function",
        description="Measures E|s - grad log p_t|^2 of a score function s against the target's exact score at "
                    "log-spaced times in [t0, T], its integral over [t0, T] weighted by g(t)^2/2 (the Girsanov "
                    "term; the weight is 1 on OU), and the certified "
                    "TV bound of the sampler s would drive. Beside them, the same figures of the target's exact "
                    "score on the same grid and Monte-Carlo draws: the sampler's own floor (its path KL and bound "
                    "are the discretisation's alone, e.g. path KL 0.18 and bound 0.31 on the ring with the default "
                    "300 geometric Euler-Maruyama steps). A number too large for float64 is reported as "
                    "such ('overflows float64', and where), never as inf or nan. Exit status: 0; with "
                    "--max-relative-error, 0 when every profile time is within it and 1 when one is not; 2 on "
                    "bad usage.")
    p.add_argument("--score", required=True, metavar="MODULE:CALLABLE",
                   help="a function f(x (n, d), time (n,)) -> (n, d) of NumPy, torch or JAX arrays, in the "
                        "convention of --output and --time (see --inputs); MODULE a dotted name (found from the "
                        "current folder as with python -m) or a .py file (its imports found beside it, as with "
                        "python FILE)")
    p.add_argument("--target", required=True,
                   help=f"the target whose exact score s is measured against: {_TARGET_HELP}")
    p.add_argument("--process", metavar="SPEC", default=DEFAULTS["process"]["name"].lower(),
                   help="the forward process the function was trained on (default %(default)s): ou, vp, "
                        "vp:beta_min=0.1,beta_max=20, vpcosine, subvp, ve:sigma_min=0.01,sigma_max=50, edm, flow, "
                        "ddpm:linear|scaled_linear|squaredcos_cap_v2[,beta_start=,beta_end=,num_train_timesteps=] "
                        "(sgm_ref.processes.from_spec)")
    p.add_argument("--output", choices=_OUTPUTS, default="score",
                   help="what the function returns: score = grad log p_t, eps = E[z | x_t], x0 = E[x0 | x_t] "
                        "(a denoiser), v = alpha eps - sigma x0, velocity = E[dx_t/dt | x_t] (default %(default)s)")
    p.add_argument("--time", choices=_TIME_ARGUMENTS, default="t",
                   help="the function's second argument: t = the process's time, timestep = a ddpm process's "
                        "timestep N t - 1 (passed as float: the audit's times fall between integer timesteps), "
                        "sigma = sigma_t (default %(default)s)")
    p.add_argument("--dtype", choices=("float64", "float32"), default="float64",
                   help="dtype of the points passed to the function; the function must return it (errors are "
                        "computed in float64) (default %(default)s)")
    p.add_argument("--inputs", choices=("auto", "numpy", "torch"), default="auto",
                   help="what the function is given: torch tensors (through sgm_ref.interop.from_torch) or NumPy "
                        "arrays; auto: tensors for a torch.nn.Module, sgm_ref's to_torch oracle, or a function "
                        "whose module-level names include torch (one that imports torch only in its body gets "
                        "NumPy); auto also refuses --dtype float64 for a function whose module-level names include "
                        "jax while jax_enable_x64 is off (default %(default)s)")
    p.add_argument("--beta-min", type=float, help=_BETA_MIN_HELP)
    p.add_argument("--beta-max", type=float, help=_BETA_MAX_HELP)
    p.add_argument("--t0", type=float, default=_TRAIN["t0"],
                   help="early-stopping time: the profile, the integral and the sampler start there "
                        "(default %(default)g)")
    p.add_argument("--T", type=float, help="horizon (default 5 for ou, 80 for edm (its t_max if smaller), else the "
                                           "process's largest time)")
    p.add_argument("--sampler", choices=tuple(m for m in METHODS if m != "probability_flow"),
                   default=_SAMPLE["method"],
                   help="the sampler the TV bound is for (the probability-flow ODE has none) (default %(default)s)")
    p.add_argument("--grid", choices=_GRIDS, default=_SAMPLE["grid"],
                   help="the sampler's time grid; geometric puts more steps near t0 (default %(default)s)")
    p.add_argument("--n-steps", type=_integer, default=_SAMPLE["n_steps"],
                   help="the sampler's steps (default %(default)s)")
    p.add_argument("--profile-n", type=_integer, default=_EVALUATE["profile_n"],
                   help="points per time of the score-error profile; the integral uses 4 times as many "
                        "(default %(default)s)")
    p.add_argument("--bound-n", type=_integer, default=_EVALUATE["bound_n"],
                   help="Monte-Carlo pairs per step of the TV bound (default %(default)s)")
    p.add_argument("--nll", type=_integer, default=0, metavar="N",
                   help="also the score's NLL by the probability-flow ODE from t0 to T (Hutchinson divergence, 4 "
                        "Rademacher probes, or all 2^(d-1) sign classes where fewer (2 in d = 2: the exact trace), "
                        "finite-difference Jacobian-vector products; float64 only) and the "
                        "target's exact NLL on N fresh samples of p_t0, and their gap, a KL estimate (default 0: "
                        "skipped)")
    p.add_argument("--seed", type=int, default=DEFAULTS["seed"],
                   help="seed of the Monte-Carlo draws (default %(default)s)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the report as JSON to PATH (checked writable before the work). JSON has no "
                        "inf or NaN: a non-finite number is written as null, and the object \"non_finite\" maps "
                        "its JSON pointer (e.g. \"/score_error/integral/value\") to \"inf\", \"-inf\" or \"nan\"")
    p.add_argument("--max-relative-error", metavar="SPEC",
                   help="pass/fail for CI: the largest relative score error E|s - grad log p_t|^2 / "
                        "E|grad log p_t|^2 allowed at each profile time; exit 1 when a time exceeds it. SPEC is one "
                        "number for every time (0.05 = 5%%) or T1=V1,T2=V2,... with V_i applying from time T_i "
                        "(the process's own time) to the next T, V_1 also before T_1: e.g. 0.001=0.5,0.1=0.05 "
                        "allows 50%% below t = 0.1 and 5%% from there on (sgm_ref.audit.ScoreTolerance)")
    p.add_argument("--plot", metavar="PATH",
                   help="also write a PNG to PATH: the score error against t with 2-standard-error bars, model vs "
                        "the exact score, and the path KL accumulated along the grid, model vs the exact score's "
                        "floor (needs matplotlib: pip install \"sgm_ref[plot]\"; checked before the work)")
    p.add_argument("--traceback", action="store_true",
                   help="when the score function (or its module) raises or exits, show its whole traceback")

    p = commands.add_parser(
        "audit-sampler", help="a peer's sampler loop against a reference replay (same target, grid, start, noise)",
        description="Runs the sampler MODULE:CALLABLE and a replay of sgm_ref.replays on the same target, grid, "
                    "start points and noise with the target's exact score, and reports the per-step deviation "
                    "(first step above rounding), the exact output laws on a Gaussian target (KL, TV) and sample "
                    "distances. The sampler is loop(score, grid, x, noises) -> output or trajectory, or "
                    "step(x, k, grid, score, noise_k) -> next state (see sgm_ref.audit). Exit status 0 when it "
                    "matches the replay, 1 when a discrepancy is found, 2 on bad usage.")
    p.add_argument("--sampler", required=True, metavar="MODULE:CALLABLE",
                   help="the peer's loop or step function; MODULE a dotted name (found from the current folder) or a "
                        ".py file (its imports found beside it), as for audit --score")
    p.add_argument("--replay", required=True, choices=sorted(REPLAYS), help="the reference replay")
    p.add_argument("--process", default="vp",
                   help="ou, vp, vp:beta_min=0.1,beta_max=20, vpcosine, subvp, ddpm, ddpm:scaled_linear, ve, "
                        "ve:sigma_min=0.01,sigma_max=50, edm, flow (default %(default)s)")
    p.add_argument("--target", required=True,
                   help=f"gaussian:d=2,mean=1,std=0.5 (exact laws) or {_TARGET_HELP}")
    p.add_argument("--n-steps", type=_integer, help="replay steps on the grid (default 10)")
    p.add_argument("--grid", choices=_SAMPLER_GRIDS,
                   help="the grid: uniform or geometric times from --T to --t0; karras: Karras et al.'s sigmas "
                        "from --T to --t0 (edm, --rho) and a final 0, as k-diffusion's get_sigmas_karras; "
                        "leading, trailing or linspace: diffusers' DDIM/DDPM timesteps of a ddpm process "
                        "(--steps-offset with leading) and a final step to the data (default uniform)")
    p.add_argument("--grid-file", metavar="PATH",
                   help="the grid as a file instead: a .npy array or a text file of decreasing times of --process "
                        "(whitespace or commas between them, # comments), e.g. a diffusers scheduler's own sigmas "
                        "for --process edm: np.save(PATH, sched.sigmas.numpy().astype(np.float64))")
    p.add_argument("--T", type=float, help="first grid time (default 5 for ou, 80 for edm, else 1; the process's t_max if "
                                          "smaller)")
    p.add_argument("--t0", type=float, help="last grid time (default 0.002 for edm, else 0.001)")
    p.add_argument("--rho", type=float, help="--grid karras's rho (default 7)")
    p.add_argument("--steps-offset", type=_integer, help="diffusers' steps_offset of --grid leading (default 0)")
    p.add_argument("--set-alpha-to-one", choices=("true", "false"),
                   help="diffusers' set_alpha_to_one with --grid leading/trailing/linspace: true (default) ends at "
                        "the data, false at timestep 0's alphas_cumprod (Stable Diffusion's DDIM configuration, "
                        "with --steps-offset 1)")
    p.add_argument("--kind", choices=("loop", "step"), help="the sampler's form (default: read from its signature)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the replay (VALUE read as JSON, else as text), e.g. step_size=0.1; repeatable")
    p.add_argument("--n", type=_integer, default=1000, help="start points (default %(default)s)")
    p.add_argument("--rtol", type=float, help="rounding threshold of the relative deviation "
                                              "(default 64 eps of the sampler's output dtype, float64's at the least)")
    p.add_argument("--seed", type=int, default=0, help="seed of the start points and noise (default %(default)s)")
    p.add_argument("--json", metavar="PATH",
                   help="also write the report as JSON to PATH (checked writable first); a non-finite number is "
                        "written as null, and the object \"non_finite\" maps its JSON pointer to \"inf\", "
                        "\"-inf\" or \"nan\" (as for audit --json)")
    p.add_argument("--traceback", action="store_true",
                   help="when the sampler (or its module) raises or exits, show its whole traceback")

    p = commands.add_parser("experiment", help="the paper's claim as an experiment")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = experiments.add_parser("rate", help="score error against n for several d (sgm_ref.experiments.rate)",
                               description="Each cell (family, d, n, seed) trains a score model on n samples and "
                                           "records its integrated score error and certified TV bound. Results "
                                           "are appended to OUT/results.jsonl as cells finish; rerunning with the "
                                           "same OUT skips the finished cells.")
    p.add_argument("out", help="output folder (created, or continued)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="a small grid (mixture-iso, tilt-iso; d 2,32,128; n 500,2000,8000; one seed) that runs "
                           "in under 10 minutes on 2 cores")
    size.add_argument("--full", action="store_true",
                      help="the full grid (the default): mixture-iso, tilt-iso; d 2,8,32,128,512; n 500..32000; "
                           "seeds 0-4 (350 cells; 4.6 to 5.3 h with --workers 2 on a 2-core machine)")
    p.add_argument("--families", help="comma-separated, of: mixture-iso,tilt-iso (the default), mixture,product,"
                                      "tilted (the older, not isometric families)")
    p.add_argument("--d", help="comma-separated dimensions (full: 2,8,32,128,512)")
    p.add_argument("--n", help="comma-separated sample sizes (full: 500,1000,...,32000)")
    p.add_argument("--seeds", help="comma-separated seeds (full: 0,1,2,3,4)")
    p.add_argument("--steps", type=_integer,
                   help="training steps per cell (default: max(12000, 200 epochs); quick: max(1500, 20 epochs))")
    p.add_argument("--budget", type=float, metavar="FACTOR",
                   help="a factor on every cell's training steps (2: the run that checks the default budget is "
                        "long enough, compared with rate-report --compare)")
    p.add_argument("--objective", choices=("paper", "sigma2"),
                   help="training objective: paper (weight 1, t uniform; the default) or sigma2 (weight sigma_t^2, "
                        "t log-uniform); either estimated on importance-weighted times, with a cosine-decayed rate")
    p.add_argument("--workers", type=_integer, help="local worker processes (default 2; not with --scheduler)")
    p.add_argument("--retry-failed", action="store_true",
                   help="run again the cells of this grid recorded as failed (failures outside it are kept)")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="submit the cells to this Dask distributed scheduler instead (pip install \"sgm_ref[dask]\")")
    p = experiments.add_parser("rate-report", help="docs/rate.md and its figures from a rate sweep's stored rows",
                               description="Regenerates the report of a rate sweep (tables, exponents with intervals, "
                                           "equal-slope and lack-of-fit tests, n*, the TV bound, figures, and the "
                                           "conclusions chosen by thresholds on the numbers) from RUN/results.jsonl; "
                                           "nothing is trained (sgm_ref.experiments.report.write_report).")
    p.add_argument("run", metavar="RUN", help="the sweep's folder (as given to `sgm-ref experiment rate`)")
    p.add_argument("--out", metavar="FILE.md",
                   help="the markdown to write (default RUN/rate.md); figures and FILE.json go beside it")
    p.add_argument("--compare", metavar="OTHER", action="append", default=[],
                   help="another sweep's folder run on some of RUN's cells with other settings (e.g. --objective "
                        "sigma2, --budget 2): a section compares the two cell by cell, with a paired test "
                        "(repeat for several)")
    return parser


def _int_list(text, name):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None


def options_markdown(parser=None):
    """docs/cli.md's "Every option" section, from the parser itself: each command's options
    with their help as `--help` prints it (a test keeps the page equal to this)."""
    parser = parser or build_parser()
    lines = []

    def describe(p, name):
        options = [a for a in p._actions if a.option_strings and a.help != argparse.SUPPRESS]
        positional = [a for a in p._actions if not a.option_strings and not isinstance(a, argparse._SubParsersAction)]
        lines.append(f"**`{name}`**" + "".join(f" {a.metavar or a.dest.upper()}" for a in positional))
        lines.append("")
        for a in options:
            if a.option_strings == ["-h", "--help"]:
                continue
            takes = "" if a.nargs == 0 else f" {a.metavar or a.dest.upper()}"
            if a.choices is not None and a.metavar is None and a.nargs != 0:
                takes = " {" + ",".join(map(str, a.choices)) + "}"
            text = " ".join((a.help % {**vars(a), "prog": p.prog} if a.help else "").split())
            lines.append(f"- `{', '.join(a.option_strings)}{takes}`: {text}")
        lines.append("")
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    describe(sub, f"{name} {sub_name}")

    describe(parser, "sgm-ref")
    return "\n".join(lines).rstrip() + "\n"


def cmd_experiment(args):
    if args.experiment == "rate-report":
        from .experiments import report

        # '' said " has no results.jsonl" (no folder named), and a --compare folder's error did
        # not say it was --compare's
        if args.run == "":
            raise ValueError("the sweep folder must be named, got ''")
        for other in args.compare:
            if other == "":
                raise ValueError("--compare must name another sweep's folder, got ''")
            if not os.path.isfile(os.path.join(other, "results.jsonl")):  # as report.load_sweep asks, said first
                raise ValueError(f"--compare {other}: no results.jsonl there: give the folder of another rate sweep")
            # the sweep compared with itself gave a section of ratios of 1 and a paired test of no difference
            if os.path.isdir(args.run) and os.path.samefile(other, args.run):
                raise ValueError(f"--compare {other} is the sweep {args.run} itself: give the folder of another "
                                 "sweep (one run with other settings)")
        report.write_report(args.run, args.out, log=_say, compare_with=args.compare)
        return 0
    from .experiments import rate, sweep

    families = None if args.families is None else [f.strip() for f in args.families.split(",")]
    grid = rate.make_grid(args.quick, families, _int_list(args.d, "--d"), _int_list(args.n, "--n"),
                          _int_list(args.seeds, "--seeds"), args.steps, args.objective, args.budget)
    if args.workers is not None and args.scheduler is not None:
        raise ValueError("--workers sets the local pool; with --scheduler the cluster's workers run the cells: "
                         "drop --workers")
    workers = 2 if args.workers is None else args.workers
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}")
    tic = time.perf_counter()
    sweep.run_sweep(args.out, grid, workers=workers, scheduler=args.scheduler, retry_failed=args.retry_failed,
                    log=_say)
    _say(f"done in {time.perf_counter() - tic:.0f} s; results in {args.out}:\n")
    with open(os.path.join(args.out, "summary.md"), encoding="utf-8") as f:
        _say(f.read())
    return 0


_TRAINING_KEYS = {
    "model": ("width", "depth", "activation", "time_embedding", "parameterization", "dtype"),
    "train": ("steps", "batch_size", "lr", "weighting", "time_distribution", "t0", "T", "checkpoint_every"),
}


def _process(args):
    if args.process == "vp":
        return {"name": "VP", "beta_min": VP.beta_min if args.beta_min is None else args.beta_min,
                "beta_max": VP.beta_max if args.beta_max is None else args.beta_max}
    if args.beta_min is not None or args.beta_max is not None:
        raise ValueError("--beta-min and --beta-max set the VP process: add --process vp")
    return {"name": "OU"}


def _training_options(args):
    options = {"target": args.target, "seed": args.seed, "data": {"n": args.n}, "process": _process(args)}
    for section, keys in _TRAINING_KEYS.items():
        options[section] = {key: getattr(args, key) for key in keys}
    options["train"]["ema_decay"] = args.ema_decay
    options["train"]["ema_warmup"] = args.ema_warmup
    return options


def _sampling_options(args):
    return {"n": args.n_samples, "method": args.sampler, "grid": args.grid, "n_steps": args.n_steps}


def _evaluation_options(args):
    return {"bound_n": args.bound_n, "profile_n": args.profile_n}


def _given(args, names):
    """The options among names that were given on the command line (all default to None)."""
    given = []
    for name in names:
        value = getattr(args, name, None)
        if value is not None:  # a --no-X flag is named as typed
            given.append(f"--{'no-' if value is False else ''}{name.replace('_', '-')}")
    return given


def _say(message):
    """One line of the command's output on stdout. A reader that went away (`| head -1`)
    stops the printing, not the work: the results are the run folder's files, and a
    BrokenPipeError here failed a finished training and removed a new run."""
    if _STDOUT_CLOSED:
        return
    try:
        print(message, flush=True)
    except BrokenPipeError:
        _close_stdout()


_STDOUT_CLOSED = False


def _close_stdout():
    """Send the rest of stdout to os.devnull, so that nothing more fails on it (also not the
    interpreter's flush at exit, which would print "Exception ignored ... BrokenPipeError")."""
    global _STDOUT_CLOSED
    _STDOUT_CLOSED = True
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, ValueError, OSError):  # not a stream with a descriptor (a test's capture)
        sys.stdout = open(os.devnull, "w")
    finally:
        os.close(devnull)


def _note(message):
    try:
        print(f"sgm-ref: {message}", file=sys.stderr, flush=True)
    except BrokenPipeError:  # `2>&1 | head`: a note is not worth the work (nor is anyone left to read it)
        pass


def _train(folder, steps=None, resume=False):
    from . import runs

    with runs.writing(folder):  # runs.train takes it again; held here so the settings printed are those trained
        tic = time.perf_counter()
        config = runs.read_config(folder)
        total = runs.check_total_steps(folder, config, steps)
        if total < config["train"]["steps"]:
            _say(f"giving up the interrupted extension to {config['train']['steps']} steps: back to the finished "
                 f"run of {total} steps")
        else:
            _say(f"{'continuing the training to' if resume else 'training'} {total} steps on {config['target']}")
        history = runs.train(folder, steps=steps, log=_note)
    from .evaluation import FINAL_LOSS_WINDOW
    window = min(FINAL_LOSS_WINDOW, len(history.loss))
    _say(f"trained in {time.perf_counter() - tic:.1f} s, final loss {np.mean(history.loss[-window:]):.4g} "
         f"(mean of the last {window} steps)")


def cmd_train(args):
    from . import runs

    if args.resume:
        given = _given(args, ("target", "seed", "process", "beta_min", "beta_max", "n", "ema_decay", "ema_warmup",
                              *(k for k in sum(_TRAINING_KEYS.values(), ()) if k != "steps")))
        given += ["--force"] if args.force else []
        if given:
            raise ValueError(f"--resume continues the run as configured (--steps may extend it); "
                             f"drop {', '.join(given)}")
        config = runs.read_config(args.run)
        finished = runs.finished_steps(args.run)  # asked before the lock: a trained read-only run says so
        if finished is not None and finished == config["train"]["steps"] and args.steps in (None, finished):
            if runs.restore_history(args.run):
                _say(f"{args.run}: history.json restored from training_state.npz ({finished} losses)")
            _say(f"{args.run} is already trained ({finished} steps); extend it with --resume --steps N")
            return 0
        _train(args.run, steps=args.steps, resume=True)
        return 0
    # the array sizes of training alone: those of sampling and evaluation (the run's defaults, which
    # train has no option for) are checked when `sample` and `evaluate` run, with their options.
    # make_config's all-stage check refused `train --target gmm:d=200000,... --n 100` (160 MB of data)
    # with "evaluate bound_n must be at most 246 on this machine, got 256"
    config = runs._make_config(_training_options(args), ("train",))
    with runs.new_run(args.run, config, args.force):  # on failure, removes what it wrote
        _train(args.run)
    return 0


def cmd_sample(args):
    from . import runs

    options = {k: v for k, v in {**_sampling_options(args), "t0": args.t0, "T": args.T}.items() if v is not None}
    tic = time.perf_counter()
    x = runs.sample_run(args.run, options)
    _say(f"{x.shape[0]} samples in {time.perf_counter() - tic:.1f} s -> {os.path.join(args.run, 'samples.npy')}")
    return 0


def cmd_evaluate(args):
    from .evaluation import evaluate_run, summary
    from .runs import writing

    options = {k: v for k, v in _evaluation_options(args).items() if v is not None}
    tic = time.perf_counter()
    with writing(args.run):
        report, written, note = evaluate_run(args.run, options, plots=not args.no_plots,
                                             nll=getattr(args, "nll", 0))
    _say(summary(report))
    _say(f"evaluated in {time.perf_counter() - tic:.1f} s -> {os.path.join(args.run, 'report.md')}"
         + (f", {', '.join(os.path.basename(w) for w in written)}" if written else ""))
    if note:
        _say(note)
    return 0


def cmd_demo(args):
    from . import runs

    options = _training_options(args)
    options["sample"] = _sampling_options(args)
    options["evaluate"] = _evaluation_options(args)
    config = runs.make_config(options)
    # on failure, removes what it wrote; a run kept for --resume is told how to go on with this --no-plots
    with runs.new_run(args.run, config, args.force, then_evaluate=True, evaluate_options=_kept_options(args)):
        _train(args.run)
        cmd_sample(argparse.Namespace(run=args.run, n_samples=None, sampler=None, grid=None, n_steps=None, t0=None,
                                      T=None))
        cmd_evaluate(argparse.Namespace(run=args.run, bound_n=None, profile_n=None, no_plots=args.no_plots))
    return 0


def _kept_options(args):
    """The options of a demo that its hints' `sgm-ref evaluate RUN` must repeat: --no-plots, which
    config.json does not hold (--bound-n and --profile-n are saved there, and evaluate reads them)."""
    return ("--no-plots",) if getattr(args, "no_plots", False) else ()


class _UserCodeError(ValueError):
    """The user's --score module or function raised (or exited); `original` is kept for --traceback."""

    def __init__(self, message, original):
        super().__init__(message)
        self.original = original


def _what_it_did(exc):
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r})" if exc.code is not None else "called sys.exit()"
    text = str(exc)
    return f"raised {type(exc).__name__}" + (f": {text}" if text else "")


def _missing_module(exc, module_name):
    """Whether an ImportError says module_name itself (not something it imports) is missing."""
    missing = getattr(exc, "name", None)
    return isinstance(exc, ModuleNotFoundError) and missing is not None and (
        module_name == missing or module_name.startswith(missing + "."))


def _load_callable(spec, option="--score"):
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{option} must look like MODULE:CALLABLE (e.g. mymodels:{option.lstrip('-')}), got {spec!r}")
    if module_name.endswith(".py") and not os.path.isfile(module_name):
        raise ValueError(f"{option}: no file {module_name}")
    try:
        if module_name.endswith(".py"):
            # as `python FILE` would: the modules beside the file import (`from unet import UNet` in
            # models/wrapper.py failed, "No module named 'unet'", unless run from models/)
            sys.path.insert(0, os.path.dirname(os.path.abspath(module_name)))
            loader = importlib.util.spec_from_file_location("_sgm_ref_audited", module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the user
            module = importlib.import_module(module_name)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # the user's module failed (or exited) while loading: say so in one line
        if _missing_module(exc, module_name):
            raise ValueError(f"{option}: cannot import {module_name} ({exc})") from None
        if isinstance(exc, SystemExit):
            raise _UserCodeError(f"{option}: importing {module_name} {_what_it_did(exc)}", exc) from None
        raise _UserCodeError(f"{option}: importing {module_name} failed: {_what_it_did(exc)[len('raised '):]}",
                             exc) from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"{option}: {module_name} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"{option}: {module_name}:{attr} is not callable")

    @functools.wraps(fn)  # keeps the signature (audit-sampler reads the peer's form from it)
    def score(*args, **kwargs):
        # whatever the user's function raises is theirs, a ValueError too: name it as such
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            raise _UserCodeError(f"{option} {spec} {_what_it_did(exc)}", exc) from None

    score.function = fn
    score.module_file = getattr(module, "__file__", None)  # MODULE's file, also when imported by its dotted name
    return score


def _check_json_path(path, option="--json"):
    """Refuse an output path (--json, --plot) that could not be written, before the work rather than after it."""
    if path == "":
        raise ValueError(f"{option} needs a file name, got ''")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a folder; give a file name")
    # a name that ends in a separator or "." / ".." names no file: sgm_ref.io.atomic_path
    # refused `--json out/` only after the whole audit had run and printed
    if os.path.basename(path) in ("", ".", ".."):
        raise ValueError(f"{option} {path}: names a folder, not a file; give a file name")
    # the report is written beside the path and renamed onto it (sgm_ref.io.atomic_path):
    # a device or a pipe there would be replaced by a regular file (`--json /dev/null` run
    # as root turned the system's /dev/null into a file), and its reader never gets the report
    if os.path.exists(path) and not os.path.isfile(path):
        raise ValueError(f"{option} {path}: is not a regular file (a device, a pipe or a socket): the "
                         f"{'plot' if option == '--plot' else 'report'} would replace it with one; give a file name")
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise ValueError(f"{option} {path}: {parent} is not a folder")
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path}: its folder {parent} does not exist")
    try:
        with tempfile.TemporaryFile(dir=parent, prefix=".tmp-probe-"):
            pass
    except OSError as exc:
        raise ValueError(f"{option} {path}: cannot write into {parent} ({exc.strerror or exc})") from None


def _check_not_an_input(path, option, inputs):
    """Refuse an output path (--json, --plot) that names one of the command's input files
    (--target's JSON, a .py --score or --sampler, --grid-file): the report would replace it.

    The entry at path is compared, not what it points to: the report's atomic write replaces
    a symbolic link there and leaves the file it points to as it was (sgm_ref.io.atomic_path),
    while an input given through a link (--target link.json, --json link.json) is refused."""
    try:
        entry = os.lstat(path)
    except (OSError, ValueError):  # nothing there yet (or a name the OS refuses: the write says so)
        return
    for input_option, input_path in inputs:
        if not input_path or not os.path.isfile(input_path):
            continue
        if os.path.samestat(entry, os.stat(input_path)) or os.path.samestat(entry, os.lstat(input_path)):
            raise ValueError(f"{option} {path} is the file of {input_option}: the "
                             f"{'plot' if option == '--plot' else 'report'} would replace it; give another name")


def _target_file(spec):
    """The JSON file --target SPEC is read from (as sgm_ref.targets.spec.from_spec reads it), or
    None for a preset ('ring', 'gmm:d=2', also where a file of that name exists)."""
    from .targets.spec import PRESETS

    spec = spec.strip()
    name = spec.partition(":")[0].strip()
    return None if name in PRESETS else spec


def _audit_process(args):
    """The process of --process SPEC (with the older --beta-min/--beta-max for a VP)."""
    import dataclasses

    from .processes import EDM, OU, VP, SubVP, from_spec

    try:
        process = from_spec(args.process)
    except ValueError as e:
        raise ValueError(f"--process: {e}") from None
    betas = {k: v for k, v in (("beta_min", args.beta_min), ("beta_max", args.beta_max)) if v is not None}
    if betas:
        if not isinstance(process, (VP, SubVP)):
            raise ValueError("--beta-min and --beta-max set the VP process: add --process vp")
        given = [k for k in betas if f"{k}=" in args.process]
        if given:
            raise ValueError(f"--process {args.process} already sets {given[0]}; drop --{given[0].replace('_', '-')}")
        process = dataclasses.replace(process, **betas)
    if args.T is not None:
        T = args.T
    elif isinstance(process, OU):
        T = 5.0
    elif isinstance(process, EDM):
        T = min(80.0, float(process.t_max))  # EDM's sigma_max, within edm:t_max=
    else:
        T = float(process.t_max)
    return process, T


def _uses_torch(fn):
    """Whether fn is a torch.nn.Module, sgm_ref's OracleModel (to_torch), or a function whose
    own code names torch (a module or an object of torch's) among its globals: then it is
    given tensors. A function importing torch in its body may well take NumPy arrays (a
    wrapper), so that alone does not count. torch is never imported here."""
    from .interop import OracleModel

    if isinstance(fn, OracleModel):  # sgm_ref's exact oracle as a torch model: imports torch only when called
        return True
    torch = sys.modules.get("torch")
    if torch is None:
        return False
    if isinstance(fn, torch.nn.Module):
        return True
    return _names_package(fn, "torch")


def _names_package(fn, package):
    """Whether fn's own code names `package` (a module or an object of it) among its globals."""
    code = fn if hasattr(fn, "__code__") else getattr(type(fn), "__call__", None)
    names = code.__code__.co_names if hasattr(code, "__code__") else ()
    if not names or package not in sys.modules:
        return False
    return any((getattr(v, "__name__", "") if type(v).__name__ == "module" else type(v).__module__ or "")
               .split(".")[0] in (package, package + "lib") for k, v in code.__globals__.items() if k in names)


def _check_jax_precision(fn, spec, dtype):
    """Refuse --dtype float64 for a function that uses JAX while jax_enable_x64 is off: JAX would
    take the float64 points as float32, and a function ending in np.asarray(..., np.float64)
    would be audited as float64 with float32's digits."""
    if dtype == np.float64 and _names_package(fn, "jax") and not bool(sys.modules["jax"].config.jax_enable_x64):
        raise ValueError(f"--score {spec} uses JAX, which computes in float32 unless jax_enable_x64 is on: turn it "
                         "on where its module is imported (jax.config.update('jax_enable_x64', True)), or pass "
                         "--dtype float32 (or --inputs numpy if it computes in float64 nonetheless)")


def _to_numpy(out):
    """out as an ndarray if it is a NumPy, torch or JAX array, else None (torch/jax not imported)."""
    if isinstance(out, np.ndarray):
        return out
    package = (type(out).__module__ or "").split(".")[0]
    if package == "torch":
        try:
            return out.detach().to("cpu").numpy()
        except (AttributeError, TypeError) as e:  # e.g. bfloat16, which NumPy has no dtype for
            raise ValueError(f"returned a torch {getattr(out, 'dtype', type(out).__name__)} that NumPy cannot "
                             f"hold ({e}); return float32 or float64") from None
    if package in ("jax", "jaxlib"):
        try:
            return np.asarray(out)
        except TypeError:  # a tracer: no values to convert
            raise ValueError(f"returned a JAX {type(out).__name__}, a traced value that escaped jax.jit, jax.vmap or "
                             "jax.grad: return the array the function computes") from None
    return None


# AttributeError's message where it has no .obj (made by hand, or before Python 3.10)
_NDARRAY_ATTRIBUTE = re.compile(r"^'numpy\.ndarray' object has no attribute '(\w+)'")


def _wants_tensors(exc):
    """Whether exc, raised by a --score function given NumPy arrays, says that the function
    takes torch tensors (then the error suggests --inputs torch): torch is imported (by the
    user's code: sgm_ref never imports it), and the function's own message speaks of tensors
    ("x must be a torch tensor"; the message only, not the --score spec, whose file or
    function may be named "tensor...") or it asked a NumPy array for an attribute that torch
    tensors have and arrays do not (x.detach(), x.numpy(), x.clone(), x.requires_grad_()):
    not for every AttributeError (a typo, x.shapee, is not torch's)."""
    torch = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "Tensor"):
        return False
    if "tensor" in str(exc).lower():
        return True
    if not isinstance(exc, AttributeError):
        return False
    obj, name = getattr(exc, "obj", None), getattr(exc, "name", None)
    if name is None or obj is None:
        match = _NDARRAY_ATTRIBUTE.match(str(exc))
        if match is None:
            return False
        obj, name = np.empty(0), match.group(1)
    return isinstance(obj, np.ndarray) and hasattr(torch.Tensor, name) and not hasattr(obj, name)


def _numpy_score(fn, spec, process, output, time):
    """grad log p_t(x) from a --score function of NumPy arrays in the (output, time) convention.

    The function gets x (n, d) in the metric's dtype and its time argument in the same
    dtype; its value (NumPy, torch or JAX, checked) becomes score = A x + B value
    (sgm_ref.conventions) in float64, rounded once to x's dtype.
    """
    from .conventions import coefficients

    def score(x, t):
        n = x.shape[0]
        t = np.ascontiguousarray(np.broadcast_to(process._times(t, n=n), (n,)))
        if time == "sigma":
            arg = np.asarray(process.sigma(t), dtype=np.float64)
        elif time == "timestep":
            arg = np.asarray(process.timestep_of_time(t), dtype=np.float64)
        else:
            arg = t
        where = (f" at t = {t[0]:.6g}" if t.min() == t.max() else f" at t from {t.min():.6g} to {t.max():.6g}")
        try:
            with contextlib.redirect_stdout(sys.stderr):  # its prints would run into the report on stdout
                out = fn(x, arg.astype(x.dtype))
        except _UserCodeError as e:
            called = f" (called{where})"
            if not _wants_tensors(e.original):
                raise _UserCodeError(f"{e}{called}", e.original) from None
            raise _UserCodeError(f"{e}{called} (it was given NumPy arrays: if it takes torch tensors, pass "
                                 "--inputs torch)", e.original) from None
        try:
            value = _to_numpy(out)
        except ValueError as e:
            raise ValueError(f"--score {spec} {e}") from None
        if value is None:
            hint = " (a diffusers model output? return model(x, t).sample)" if hasattr(out, "sample") else ""
            raise ValueError(f"--score {spec} returned a {type(out).__name__}{where}; expected a NumPy, torch or JAX "
                             f"array of shape {x.shape}{hint}")
        if value.shape != x.shape:
            raise ValueError(f"--score {spec}: score returned shape {value.shape}{where}; expected {x.shape} "
                             f"(its {output} for each row of x)")
        if value.dtype != x.dtype:
            fix = (f"pass --dtype {value.dtype} if it computes in {value.dtype}, or make it return its input's dtype"
                   if value.dtype.name in ("float32", "float64") else "make it return its input's dtype")
            raise ValueError(f"--score {spec} returned {value.dtype} for points of dtype {x.dtype}{where}; {fix}")
        if not np.all(np.isfinite(value)):
            row = int(np.argmax(~np.all(np.isfinite(value.reshape(n, -1)), axis=1)))
            raise ValueError(f"--score {spec} returned {np.count_nonzero(~np.isfinite(value))} non-finite "
                             f"value(s){where}, the first in row {row} (t = {t[row]:.6g})")
        if output == "score":
            return value
        A, B = coefficients(t, process, output, "score")
        with np.errstate(over="ignore", invalid="ignore"):
            s = (A[:, None] * x.astype(np.float64) + B[:, None] * value.astype(np.float64)).astype(x.dtype)
        if not np.all(np.isfinite(s)):
            raise ValueError(f"the score of --score {spec} ({output} -> score) overflows {x.dtype}{where}")
        return s

    return score


def _torch_score(fn, spec, process, output, time, dtype):
    """A torch module or function as a score through sgm_ref.interop.from_torch."""
    try:
        import torch
    except ImportError as e:
        raise ValueError(f"--inputs torch needs PyTorch, which does not import here ({e})") from None

    from .interop import from_torch

    if isinstance(fn, torch.nn.Module) and any(p.is_floating_point() for p in fn.parameters()):
        own = from_torch(fn, process, output=output, time=time, fractional=True, name=spec).dtype
        if own != dtype:
            raise ValueError(f"--score {spec} is a torch module with {own} parameters: pass --dtype {own}, "
                             f"or convert the module with .to(torch.{dtype})")
    model_score = from_torch(fn, process, output=output, time=time, dtype=dtype, fractional=True, name=spec)
    as_array = model_score._as_array

    def checked_as_array(out):  # the dtype fix said as the command's option, not the library's argument
        shape, out_dtype, to_numpy = as_array(out)
        if shape is not None and out_dtype != dtype.name:
            fix = (f"pass --dtype {out_dtype} if it computes in {out_dtype}, or make it return its input's dtype"
                   if out_dtype in ("float32", "float64") else "make it return its input's dtype")
            raise ValueError(f"--score {spec} returned a torch {out_dtype} tensor for inputs of dtype {dtype}; {fix}")
        return shape, out_dtype, to_numpy

    model_score._as_array = checked_as_array
    return model_score


_FRACTIONAL_TIMESTEP_NOTE = (
    "the audit's times are continuous, so the model is called at fractional timesteps N t - 1, where the "
    "ddpm process holds beta constant on each step (log alphas_cumprod linear between timesteps); a model "
    "defined only at integer timesteps (one indexing its table by timestep.long()) is charged its error "
    "between them")


def cmd_audit(args):
    from ._validation import check_count, check_fits
    from .evaluation import _below_zero_note, _percent, bound_text, json_ready, non_finite_notes, score_report
    from .interop import ModelError
    from .metrics.score_error import _check_time_range as _score_time_range
    from .processes import DDPM, VariancePreserving, check_process, to_spec
    from .targets.spec import from_spec, to_record

    target = from_spec(args.target)
    process, T = _audit_process(args)
    dtype = np.dtype(args.dtype)
    if args.time == "timestep" and not isinstance(process, DDPM):
        raise ValueError(f"--time timestep needs a ddpm --process (discrete timesteps 0..N-1), got {args.process}")
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    for name, value, low in (("--n-steps", args.n_steps, 1), ("--profile-n", args.profile_n, 2),
                             ("--bound-n", args.bound_n, 2)):
        check_count(value, name, minimum=low)
    nll = getattr(args, "nll", 0)
    if nll != 0 and (nll < 2 or args.dtype != "float64"):
        raise ValueError(f"--nll must be 0 or at least 2 points, with --dtype float64 (its finite-difference "
                         f"Jacobian-vector products need float64), got --nll {nll} --dtype {args.dtype}")
    # the metrics refuse these sizes only when they come (the bound's after the profile and the
    # integral, the likelihood's after the whole report) and as their own "n" ("lower n": audit
    # has no --n): refused here before the work, with the per-point sizes of runs._check_sizes
    # (the integral's 4 profile_n points, the bound's 16 bound_n auxiliary points, of 4 d
    # numbers each) and of evaluate_run's --nll (a target's sample)
    d = target.dim
    for name, value, per_unit, what in (
            ("--profile-n", args.profile_n, 4 * 8 * 4 * d, f"the integral's 4 x {args.profile_n} points in d = {d}"),
            ("--bound-n", args.bound_n, 16 * 8 * 4 * d, f"the bound's 16 x {args.bound_n} auxiliary points in d = {d}"),
            ("--nll", nll, 8 * max(2 * (d + 1), 4 * d), f"its exact samples in d = {d}")):
        check_fits(name, value, per_unit, what)
    if not 0 < args.t0 < T:
        raise ValueError(f"need 0 < t0 < T, got t0={args.t0!r}, T={T!r}")
    if T > process.t_max:
        raise ValueError(f"T must be <= {process.t_max} for {process!r}, got {T!r}")
    if args.time == "timestep" and args.t0 < process.time_of_timestep(0):
        raise ValueError(f"--t0 must be >= 1/N = {process.time_of_timestep(0):g} with --time timestep "
                         f"(timestep 0 is t = 1/N), got {args.t0:g}")
    inputs = (("--target", _target_file(args.target)), ("--score", args.score.rpartition(":")[0]))
    if args.json is not None:  # refused now, not after the work
        _check_json_path(args.json)
        _check_not_an_input(args.json, "--json", inputs)
    tolerance = None
    if args.max_relative_error is not None:
        from .audit import ScoreTolerance
        try:
            tolerance = ScoreTolerance.from_spec(args.max_relative_error)
        except ValueError as e:
            raise ValueError(f"--max-relative-error: {e}") from None
    if args.plot is not None:
        _check_json_path(args.plot, "--plot")
        _check_not_an_input(args.plot, "--plot", inputs)
        if not args.plot.lower().endswith(".png"):  # PNG bytes under another extension would misname the file
            raise ValueError(f"--plot writes a PNG: give a file name ending in .png, got {args.plot}")
        if args.json is not None and os.path.realpath(args.plot) == os.path.realpath(args.json):
            raise ValueError(f"--json and --plot name the same file ({args.plot}): the plot would replace the "
                             "report; give two names")
        from .plots import have_matplotlib
        if not have_matplotlib():
            raise ValueError("--plot needs matplotlib, which is not installed: pip install \"sgm_ref[plot]\"")
    loaded = _load_callable(args.score)
    for output, option in ((args.json, "--json"), (args.plot, "--plot")):  # --score mymodels:f and --json mymodels.py
        if output is not None:
            _check_not_an_input(output, option, (("--score", loaded.module_file),))
    from .score_model import ScoreModel
    if isinstance(loaded.function, ScoreModel) and loaded.function.dtype != dtype:
        # refused as the command's option before the work: the model's own refusal ("x must have
        # dtype float32 (the network's), got float64; pass np.asarray(x, ...)") names an x the
        # user does not pass (sgm_ref.samplers.check_model_dtype says it as a dtype argument)
        own = loaded.function.dtype.name
        fix = f"pass --dtype {own}"
        if nll and own != "float64":  # else the fix named would be refused next, as --nll's
            fix += f" and drop --nll {nll} (its Jacobian-vector products need float64)"
        raise ValueError(f"--score {args.score} is a ScoreModel of a {own} network, which takes {own} points "
                         f"only: {fix}")
    if args.inputs == "torch" or (args.inputs == "auto" and _uses_torch(loaded.function)):
        score = _torch_score(loaded.function, args.score, process, args.output, args.time, dtype)
    else:
        if args.inputs == "auto":  # --inputs numpy: the user says it computes in the points' dtype
            _check_jax_precision(loaded.function, args.score, dtype)
        score = _numpy_score(loaded, args.score, process, args.output, args.time)
    # Measured on the model's own process, in its own time and x: the profile, the integral and
    # the bound of the sampler it drives there (sgm_ref.samplers on that process, started from
    # N(0, v_T I)). Every process of sgm_ref is accepted by the metrics; earlier versions went
    # through OU at equal log-SNR for VE, EDM, SubVP and flow, and bounded OU's sampler instead.
    audited = check_process(process, "--process", variance_preserving=False)
    t0, T_audited = _score_time_range(args.t0, T, audited)
    if args.sampler == "residual_exponential" and not isinstance(audited, VariancePreserving):
        raise ValueError(f"--sampler residual_exponential runs on a variance-preserving --process only (ou, vp, "
                         f"vpcosine, ddpm), as sgm_ref.samplers; got --process {args.process}: use euler_maruyama "
                         "or exponential")
    try:
        report = score_report(score, target, audited, t0=t0, T=T_audited, method=args.sampler, grid=args.grid,
                              n_steps=args.n_steps, rng=np.random.default_rng(args.seed), profile_n=args.profile_n,
                              bound_n=args.bound_n, dtype=dtype, floor=True)
    except ModelError as e:  # raised inside the user's torch model: theirs, with its traceback kept
        cause = e.__cause__ if e.__cause__ is not None else e
        raise _UserCodeError(f"--score {args.score} {_what_it_did(cause)}", cause) from None
    except SystemExit as e:
        raise _UserCodeError(f"--score {args.score} {_what_it_did(e)}", e) from None

    se = report["score_error"]
    report = {"score": args.score, "target": args.target, "target_definition": to_record(target),
              "process": process.to_dict(), "process_spec": to_spec(process), "output": args.output,
              "time": args.time, "dtype": dtype.name, "t0": args.t0, "T": T, "seed": args.seed,
              "profile_n": args.profile_n, "bound_n": args.bound_n,
              "sampler": {"method": args.sampler, "grid": args.grid, "n_steps": args.n_steps},
              **report}
    if args.time == "timestep":
        report["time_note"] = _FRACTIONAL_TIMESTEP_NOTE
    if tolerance is not None:
        report["tolerance"] = tolerance.check(se)
    b, fb = report["tv_bound"], report["floor"]["tv_bound"]
    fse = report["floor"]["score_error"]
    convention = ", ".join(([] if (args.output, args.time) == ("score", "t") else [f"{args.output} at {args.time}"])
                           + ([] if dtype == np.float64 else [dtype.name]))
    convention = f" ({convention})" if convention else ""
    _say(f"score {args.score}{convention} against the exact score of {args.target} (d = {target.dim}), {process!r}")
    if args.time == "timestep":
        _say(f"note: {_FRACTIONAL_TIMESTEP_NOTE}")
    # the exact score's column: the floor of the same estimator on the same draws
    checked = report.get("tolerance")
    _say("       t      E|s - grad log p_t|^2     relative   exact score" + ("    allowed" if checked else ""))
    for i, (t, v, s, r) in enumerate(zip(se["t"], se["error"], se["standard_error"], se["relative"])):
        floor = f"   {_pm_short(fse['error'][i], fse['standard_error'][i]):>11}"
        verdict = ""
        if checked:
            verdict = f"   {checked['allowed'][i]:8.2%}" + ("  EXCEEDED" if t in checked["exceeded"] else "")
        if np.isfinite(v):
            # two significant digits below 1% (4.2e-5 printed as "0.00%", read as no error)
            _say(f"{t:10.4g}   {v:12.4g} ± {s:<9.2g}   {_percent(r):>9}{floor}{verdict}")
        else:
            _say(f"{t:10.4g}   {'overflows float64':>24}   {'':9}{floor}{verdict}")
    integral, f_integral = se["integral"], fse["integral"]
    # the integral is int g(t)^2/2 E|s - grad log p_t|^2 dt (metrics.score_error_integral): the
    # same as the profile's integral on OU only (g^2 = 2); beta(t)/2 of VP runs from 0.05 to 10
    _say(f"g(t)^2/2-weighted integral over [{t0:g}, {T_audited:g}]: " + (
        f"{integral['value']:.4g} ± {integral['standard_error']:.2g}" if np.isfinite(integral["value"])
        else "overflows float64") + f" (exact score: {_pm_short(f_integral['value'], f_integral['standard_error'])})")
    def names_path_kl(bound):  # bound_text of a vacuous bound gives the path KL already (it was said twice)
        return bound["tv"] >= 1.0 and np.isfinite(bound["kl_path"])

    path_kl = f"{b['kl_path']:.3g}" if np.isfinite(b["kl_path"]) else "overflows float64"
    _say(f"certified TV bound for {args.sampler}, {args.n_steps} {args.grid} "
         f"step{'s' if args.n_steps != 1 else ''}: {bound_text(b)} (early stopping {b['tv_early_stopping']:.3g}, KL prior {b['kl_prior']:.3g}"
         + ("" if names_path_kl(b) else f", path KL {path_kl}") + ")")
    excess = (f"the model adds path KL {b['kl_path'] - fb['kl_path']:.3g}" if np.isfinite(b["kl_path"])
              else "the model's path KL overflows float64")
    _say(f"exact score, same grid and draws (the sampler's own floor): certified TV bound {bound_text(fb)}"
         + ("" if names_path_kl(fb) else f" (path KL {fb['kl_path']:.3g} ± {fb['kl_path_se']:.2g})") + f"; {excess}")
    for note in non_finite_notes(report):
        _say(f"note: {note}")
    # a KL prior printed below 0 above (-2.03e-06 on the ring, --seed 2, --bound-n 4) is a
    # Monte-Carlo estimate, not clipped: evaluate's explanation (and verdict) beside it
    start_law = "N(0, I)" if isinstance(audited, VariancePreserving) else "N(0, sigma_T^2 I)"
    below = _below_zero_note(f"the KL prior KL(p_T || {start_law})", b["kl_prior"], b["kl_prior_se"],
                             rounding=b.get("kl_prior_rounding"))
    if below:
        _say(f"note: {below}")
    if nll:
        from .likelihood import nll_lines, nll_report
        # its own stream (seed, 15: the issue), so the figures above stay those of earlier versions
        report["likelihood"] = nll_report(score, target, process, t0=args.t0, T=T, n=nll,
                                          rng=np.random.default_rng([args.seed, 15]), divergence="hutchinson")
        for line in nll_lines(report["likelihood"]):
            _say(line)
    if checked:
        _say(_tolerance_text(checked))
    if args.json is not None:
        from .runs import write_json
        write_json(args.json, json_ready(report))
    if args.plot is not None:
        from .plots import plot_score_audit
        from .samplers import time_grid
        plot_score_audit(report, args.plot, time_grid(T_audited, t0, args.n_steps, args.grid, audited))
        _say(f"plot -> {args.plot}")
    return 0 if checked is None or checked["passed"] else 1


def _pm_short(value, se):
    """value ± se in a narrow column (the exact score's figures: often exactly 0)."""
    if value is None or not np.isfinite(value):
        return "overflows float64"
    return "0" if value == 0 and se == 0 else f"{value:.3g} ± {se:.1g}"


def _tolerance_text(checked):
    n = len(checked["t"])
    spec = f"--max-relative-error {checked['spec']}"
    if checked["passed"]:
        return f"PASS: the relative score error is within {spec} at all {n} profile times"
    bad = [(t, r, a) for t, r, a in zip(checked["t"], checked["relative"], checked["allowed"])
           if t in checked["exceeded"]]
    shown = ", ".join(f"t = {t:.4g} ({'overflows float64' if r is None or not np.isfinite(r) else f'{r:.3g}'} "
                      f"> {a:.3g})"
                      for t, r, a in bad[:4])
    more = f", and {len(bad) - 4} more" if len(bad) > 4 else ""
    return f"FAIL: the relative score error exceeds {spec} at {len(bad)} of {n} profile times: {shown}{more}"


def _replay_options(items):
    import json

    options = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--option must look like KEY=VALUE (e.g. step_size=0.1), got {item!r}")
        if key in options:  # the last one silently won, as a target spec's repeated parameter is not allowed to
            raise ValueError(f"--option {key} is given twice ({key}={json.dumps(options[key])} and {item}); "
                             "give it once")
        try:
            options[key] = json.loads(value)
        except ValueError:
            options[key] = value
    return options


def _sampler_grid(args, process):
    """audit-sampler's grid from --grid, --n-steps, --T, --t0, --rho and --steps-offset.

    uniform / geometric: sgm_ref.samplers.time_grid from T to t0. karras (EDM): Karras et
    al.'s sigmas from T = sigma_max to t0 = sigma_min, then 0 (EDM.karras_sigmas).
    leading / trailing / linspace (DDPM): diffusers' timesteps (sgm_ref.replays.ddim_timesteps)
    as times (i + 1) / N, then 0, the data (timestep_grid), or with --set-alpha-to-one false
    timestep 0's time 1 / N.
    """
    from .processes import DDPM, EDM
    from .replays import SPACINGS, ddim_timesteps, timestep_grid
    from .samplers import time_grid

    if args.grid_file is not None:
        given = [name for name, value in (("--grid", args.grid), ("--n-steps", args.n_steps), ("--T", args.T),
                                          ("--t0", args.t0), ("--rho", args.rho), ("--steps-offset", args.steps_offset),
                                          ("--set-alpha-to-one", args.set_alpha_to_one)) if value is not None]
        if given:
            raise ValueError(f"--grid-file gives the whole grid; {', '.join(given)} "
                             f"{'does' if len(given) == 1 else 'do'} not apply with it")
        return _read_grid_file(args.grid_file, process)
    kind = "uniform" if args.grid is None else args.grid
    args.n_steps = 10 if args.n_steps is None else args.n_steps
    if args.rho is not None and kind != "karras":
        raise ValueError(f"--rho is --grid karras's; the grid here is {kind}")
    if args.steps_offset is not None and kind != "leading":
        raise ValueError(f"--steps-offset is --grid leading's (diffusers applies it to that spacing only); "
                         f"the grid here is {kind}")
    if args.set_alpha_to_one is not None and kind not in SPACINGS:
        raise ValueError(f"--set-alpha-to-one is for diffusers' timesteps (--grid leading, trailing or linspace); "
                         f"the grid here is {kind}")
    if kind in SPACINGS:
        if not isinstance(process, DDPM):
            raise ValueError(f"--grid {kind} takes diffusers' timesteps: --process must be a ddpm schedule "
                             f"(ddpm, ddpm:scaled_linear, ...), got {args.process}")
        for option, value in (("--T", args.T), ("--t0", args.t0)):
            if value is not None:
                raise ValueError(f"{option} does not apply to --grid {kind}: the timesteps set the grid "
                                 f"(from timestep N - 1 or below down to the data)")
        N = process.num_train_timesteps
        if args.n_steps > N:
            raise ValueError(f"--n-steps must be at most the process's {N} timesteps with --grid {kind}, "
                             f"got {args.n_steps}")
        try:
            steps = ddim_timesteps(args.n_steps, N, kind, args.steps_offset or 0)
            process.time_of_timestep(steps)  # every timestep in 0..N-1 (a large --steps-offset is not)
        except ValueError as e:
            raise ValueError(f"--grid {kind} with --n-steps {args.n_steps}"
                             + (f" and --steps-offset {args.steps_offset}" if args.steps_offset else "")
                             + f" on {N} timesteps: {e}") from None
        if args.set_alpha_to_one == "false":  # the last step lands on timestep 0's alphas_cumprod
            if steps[-1] == 0:
                raise ValueError("--set-alpha-to-one false: the last of these timesteps is 0 itself, and diffusers' "
                                 "step from it to timestep 0's alphas_cumprod changes nothing; use --steps-offset 1 "
                                 "or another spacing")
            return timestep_grid(process, steps, final=process.time_of_timestep(0))
        return timestep_grid(process, steps)
    name = process.__class__.__name__
    T = args.T if args.T is not None else min({"OU": 5.0, "EDM": 80.0}.get(name, 1.0), float(process.t_max))
    t0 = args.t0 if args.t0 is not None else (0.002 if name == "EDM" else 1e-3)
    if kind == "karras":
        if not isinstance(process, EDM):
            raise ValueError(f"--grid karras spaces sigmas, which are the times of --process edm only; "
                             f"got {args.process}")
        if args.n_steps < 2:
            raise ValueError(f"--grid karras needs --n-steps >= 2, got {args.n_steps}")
        try:
            return process.karras_sigmas(args.n_steps, t0, T, 7.0 if args.rho is None else args.rho)
        except ValueError as e:  # EDM.karras_sigmas names its sigma_min and sigma_max: here --t0 and --T
            raise ValueError(re.sub(r"^sigma_(min|max)\b", lambda m: f"--{'t0' if m.group(1) == 'min' else 'T'} "
                                    f"(sigma_{m.group(1)})", str(e))) from None
    # time_grid takes no process: a --T past it reached compare_sampler's check_grid, whose "grid
    # must start at T <= ..." read "--grid must start ..." on the command line (no --grid given)
    if T > process.t_max:
        raise ValueError(f"--T must be <= {process.t_max} for {process!r}, got {T!r}")
    return time_grid(T, t0, args.n_steps, kind)


def _read_grid_file(path, process):
    """--grid-file's times: a .npy array (float or integer) or text of numbers between
    whitespace or commas, "#" starting a comment (np.savetxt's header); 1-D, finite,
    strictly decreasing and within the process's times, else a ValueError naming the file."""
    from ._validation import check_decreasing_grid
    from .io import _READ_ERRORS
    from .runs import _npy_error_text

    npy = path.endswith(".npy")
    try:
        if npy:
            grid = np.load(path, allow_pickle=False)
        else:
            with open(path, encoding="utf-8-sig") as f:  # a leading byte-order mark (Windows editors) skipped
                text = f.read()
    except UnicodeDecodeError:
        raise ValueError(f"--grid-file {path}: not a text file (use a .npy name for a NumPy array)") from None
    except OSError as exc:
        raise ValueError(f"--grid-file {path}: {exc.strerror or os_error_text(exc)}") from None
    except _READ_ERRORS as exc:  # numpy's answer to bytes that are no .npy array, or a damaged one
        why = _npy_error_text(exc)  # "not an .npy array: ..." for a damaged magic: its reason, said once
        prefix = "not an .npy array: "
        raise ValueError(f"--grid-file {path}: not a readable .npy array"
                         + (f": {why[len(prefix):]}" if why.startswith(prefix) else f" ({why})")) from None
    if npy:
        if not isinstance(grid, np.ndarray):
            grid.close()
            raise ValueError(f"--grid-file {path}: an .npz archive, not one .npy array")
        if grid.dtype.kind not in "fiu":
            raise ValueError(f"--grid-file {path}: the array has dtype {grid.dtype}; times are real numbers")
    else:
        try:
            # np.savetxt's header and a user's notes: from "#" to the end of a line
            text = "\n".join(line.partition("#")[0] for line in text.splitlines())
            grid = np.array([float(token) for token in text.replace(",", " ").split()])
        except ValueError as exc:
            raise ValueError(f"--grid-file {path}: {exc} (the file holds times between whitespace or commas)") \
                from None
    try:
        grid = check_decreasing_grid(np.asarray(grid, dtype=np.float64))
        if grid[-1] < 0 or grid[0] > process.t_max:
            raise ValueError(f"its times must lie in [0, {process.t_max}] for {process!r}, got {float(grid[-1])!r} "
                             f"to {float(grid[0])!r}")
    except ValueError as exc:
        raise ValueError(f"--grid-file {path}: {exc}") from None
    return grid


def cmd_audit_sampler(args):
    from .audit import compare_sampler, process_from_spec, target_from_spec

    process = process_from_spec(args.process)
    target = target_from_spec(args.target)
    grid = _sampler_grid(args, process)
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    if args.json is not None:
        _check_json_path(args.json)
        _check_not_an_input(args.json, "--json", (("--target", _target_file(args.target)),
                                                  ("--grid-file", args.grid_file),
                                                  ("--sampler", args.sampler.rpartition(":")[0])))
    options = _replay_options(args.option)
    peer = _load_callable(args.sampler, option="--sampler")
    if args.json is not None:  # a dotted --sampler's module file (mine:loop and --json mine.py)
        _check_not_an_input(args.json, "--json", (("--sampler", peer.module_file),))
    if args.kind is None:  # the library's hint names its argument (kind='loop'); here it is --kind
        from .audit import _peer_kind
        try:
            _peer_kind(peer, None)
        except ValueError as e:
            hint = "pass --kind loop or --kind step"
            raise ValueError(re.sub(r"pass kind=(?:'loop' or kind='step')?$", hint, str(e))) from None
    result = compare_sampler(peer, args.replay, process, grid, target, args.n, np.random.default_rng(args.seed),
                             replay_options=options, kind=args.kind, rtol=args.rtol, name=args.sampler)
    _say(result.text())
    if args.json is not None:  # json_ready: the laws' means and covariances may overflow (to_dict keeps them)
        from .evaluation import json_ready
        from .runs import write_json
        write_json(args.json, json_ready({"sampler": args.sampler, "target": args.target, "seed": args.seed,
                                          "replay_options": options, **result.to_dict(keep_non_finite=True)}))
    return 0 if result.matches else 1


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "audit": cmd_audit,
            "audit-sampler": cmd_audit_sampler, "experiment": cmd_experiment}


# numpy >= 2 scalars' reprs (np.float64(0.9)) leaking into a message read as their value
_NUMPY_SCALAR_REPR = re.compile(r"\bnp\.(?:float|int|uint|complex|bool|str|bytes)_?\d*\(([^()]*)\)")


def _one_line(message):
    """The error as exactly one line: inner newlines (numpy's .npy header errors have them) collapsed."""
    message = _NUMPY_SCALAR_REPR.sub(r"\1", str(message))
    return re.sub(r"\s*\n\s*", " ", message.strip()) or "unknown error"


_LEADING_NAME = re.compile(r"^((?:evaluate |sample )?)([A-Za-z_][A-Za-z0-9_]*)(?=( \([^)]*\))? must )")
# sgm_ref._validation.fits_in_memory's "n_steps = 10000000000000 asks for 2.2e+05 GiB ...; lower n_steps"
_SIZED_NAME = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)(?= = \S+ (?:asks for |\())")
_HINTED_NAME = re.compile(r"(?<![\w-])([A-Za-z_][A-Za-z0-9_]*)(?:='([^']*)')?(?=[,)]| or )")


def _option_names(message, parser, command):
    """The library's argument names in `message` given as this command's options.

    The commands pass their options to library functions, whose checks name their own
    arguments ("batch_size must be an integer >= 1"); on the command line the user typed
    --batch-size. Three places are rewritten, and only for names that are options of
    `command`: the name that opens a "... must ..." sentence (after "evaluate " or
    "sample ", which name the step of a demo), a size's "n_steps = N asks for ... GiB
    ...; lower n_steps" (both names, to "--n-steps"; never a bare "n", which names other
    counts in other functions), and a hint's "smaller lr" or
    "weighting='sigma2'" (to "smaller --lr", "--weighting sigma2"). A message that
    names an option already ("sample n (--n-samples) must") is left as it is, and so is
    every other word: a file's key or a user's function is not an option."""
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    command_parser = sub.choices.get(command) if sub is not None and command else None
    if command_parser is None:
        return message
    options = {a.dest: max(a.option_strings, key=len) for a in command_parser._actions
               if a.option_strings and a.dest != "help"}

    def leading(m):
        if m.group(3) and "--" in m.group(3) or m.group(2) not in options:
            return m.group(0)
        return options[m.group(2)]

    def hinted(m):
        if m.group(1) not in options:
            return m.group(0)
        return options[m.group(1)] + (f" {m.group(2)}" if m.group(2) is not None else "")
    message = _LEADING_NAME.sub(leading, message, count=1)
    sized = _SIZED_NAME.match(message)
    # not a bare "n": the library's functions call different counts so (a demo's --n is the
    # training samples, the profile's n its --profile-n)
    if sized and sized.group(1) in options and sized.group(1) != "n":
        name, option = sized.group(1), options[sized.group(1)]
        message = option + re.sub(rf"; lower {name}$", f"; lower {option}", message[len(name):])
    if "(try " in message:
        head, _, hint = message.partition("(try ")
        message = head + "(try " + _HINTED_NAME.sub(hinted, hint)
    return message


_MEMORY_HINTS = {  # the options that size each command's arrays
    "demo": "use a smaller --n, --width, --depth, --batch-size, --n-samples or --profile-n",
    "train": "use a smaller --n, --width, --depth or --batch-size (or a target of lower dimension)",
    "sample": "use a smaller --n-samples",
    "evaluate": "use a smaller --bound-n or --profile-n (or sample fewer points)",
    "audit": "use a smaller --profile-n, --bound-n or --n-steps (or a target of lower dimension)",
    "audit-sampler": "use a smaller --n or --n-steps (or a target of lower dimension)",
    "experiment": "use a smaller --d or --n, or fewer --workers",
}


def _print_busy_hint():
    """On a terminal, one line advising fewer threads when other work keeps the CPUs busy
    (`_threads.busy_hint`). Only where a person reads it, as the progress bars: a script's
    stderr stays as it was. Never when the user chose a count."""
    if not sys.stderr.isatty():
        return
    from ._threads import busy_hint
    hint = busy_hint()
    if hint:
        print(hint, file=sys.stderr)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """A library warning on the command line: 'sgm-ref: warning: MESSAGE' on one line of stderr."""
    print(f"sgm-ref: warning: {_one_line(str(message))}", file=sys.stderr if file is None else file)


def _parse(parser, argv):
    """parser.parse_args, with an unrecognized option refused by the command it was given to:
    argparse's own refusal pointed every command's typo at `sgm-ref --help`, which lists the
    commands but none of their options (`sgm-ref demo --stesp 5`)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        command, names = parser, [getattr(args, "command", None), getattr(args, "experiment", None)]
        for name in names:
            sub = next((a for a in command._actions if isinstance(a, argparse._SubParsersAction)), None)
            if sub is None or name not in sub.choices:
                break
            command = sub.choices[name]
        top = list(dict.fromkeys(a.partition("=")[0] for a in extras
                                 if a.partition("=")[0] in parser._option_string_actions and a not in ("-h", "--help")))
        where = (f"; {', '.join(top)} {'is an option' if len(top) == 1 else 'are options'} of sgm-ref itself: "
                 f"give {'it' if len(top) == 1 else 'them'} before the command" if top and command is not parser else "")
        command.error(f"unrecognized arguments: {' '.join(extras)}{where}")
    return args


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    global _STDOUT_CLOSED
    _STDOUT_CLOSED = False  # a command run in the same process after one whose reader went away prints again
    parser = build_parser()
    args = None
    for stream in (sys.stdout, sys.stderr):
        # a path the terminal's encoding cannot show (a folder named in Latin-1 under a UTF-8
        # locale) is printed escaped: failing to print it after the work failed the command
        try:
            stream.reconfigure(errors="backslashreplace")
        except (AttributeError, ValueError, OSError):  # not a text stream of its own (a test's capture)
            pass
    try:
        args = _parse(parser, argv)
        from ._threads import ENVIRONMENT_ERROR
        if ENVIRONMENT_ERROR is not None:
            raise ENVIRONMENT_ERROR
        if args.command is None:
            parser.print_help()
            return 0
        if args.threads is not None:
            from ._threads import set_threads
            try:
                set_threads(args.threads)
            except ValueError as e:
                raise ValueError(f"--threads: {e}") from None
        else:
            _print_busy_hint()
        with warnings.catch_warnings():
            # overflow on the way to a non-finite loss is reported as an error, once
            warnings.simplefilter("ignore", RuntimeWarning)
            # NumPy reads an .npy header with ast.literal_eval, whose parser warns ("invalid decimal
            # literal", from "<unknown>") on a damaged one before the read error names the file
            warnings.filterwarnings("ignore", category=SyntaxWarning, module="<unknown>")
            # the library's other warnings (a torn results.jsonl line left out) as one line each,
            # as the errors are: not Python's file:line header and source line
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except (ValueError, OSError, MemoryError, OverflowError) as exc:  # the library's bad-input errors are ValueErrors
        if isinstance(exc, _UserCodeError) and getattr(args, "traceback", False):
            traceback.print_exception(exc.original)
        if isinstance(exc, MemoryError):
            message = "out of memory: " + _MEMORY_HINTS.get(getattr(args, "command", None),
                                                            "use smaller sizes (the dimension, the counts)")
        elif isinstance(exc, OSError):
            message = os_error_text(exc)
        elif isinstance(exc, _UserCodeError):
            message = str(exc)
        else:
            message = _option_names(str(exc), parser, getattr(args, "command", None))
        print(f"sgm-ref: error: {_one_line(message)}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        run = getattr(args, "run", None) or "RUN"
        shown, kept = _shell_path(run), _kept_options(args)  # the folder as the shell needs it; demo's --no-plots
        hint = {"train": f"continue with `sgm-ref train {shown} --resume`",
                "demo": f"continue with `sgm-ref train {shown} --resume`, then `sgm-ref sample {shown}` and "
                        f"`sgm-ref evaluate {' '.join((shown, *kept))}`",
                "experiment": "rerun the same command to continue; finished cells are kept"}.get(
                    getattr(args, "command", None), "")
        if getattr(args, "command", None) in ("train", "demo") and os.path.isdir(run) and not os.path.exists(
                os.path.join(run, "config.json")):  # stopped while --force removed the old run's files
            # or before a new run's config.json was written: the folder made then is kept, and the
            # same command without --force is refused ("output folder ... already exists")
            again = "" if args.force or getattr(args, "resume", False) else " with --force"
            hint = f"no run is left in {run}; run the command again{again}"
        elif getattr(args, "command", None) in ("train", "demo") and os.path.isdir(run):
            try:  # what is on disk says what is left to do (a demo interrupted after training)
                from .runs import _continuation
                hint = f"continue with {_continuation(run, args.command == 'demo', kept)}"
            except Exception:  # the hint is a courtesy: never let it hide the interruption
                pass
        print(f"sgm-ref: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
