"""Run folders: one model trained, sampled and evaluated, reproducible from config.json.

    RUN/config.json      every setting (target spec, seed, network, training, sampler)
    RUN/checkpoint.npz   training state, rewritten every checkpoint_every steps while
                         training runs (removed once the final state is written)
    RUN/model.npz        the trained model (sgm_ref.io format, the EMA stored beside it),
                         written last: its presence means the training finished
    RUN/training_state.npz  the state after the last step, so `train --resume --steps N`
                         can extend a finished run as if it had been trained for N steps
    RUN/history.json     the training loss at every step
    RUN/samples.npy      the sampler's output, shape (n, d); config.json's "samples_digest"
                         records the settings that drew it (evaluate refuses others) and
                         "samples_sha256" its numbers (evaluate refuses a damaged file)
    RUN/report.json      every metric with its standard error
    RUN/report.md        the same for a reader; RUN/*.png plots when matplotlib is installed

Every file is written atomically (a temporary file renamed onto its name), so a killed
run leaves complete files only. Randomness comes from one seed:
SeedSequence(seed).spawn(6) gives independent streams for the training data, the
initialisation, training, sampling, evaluation and the evaluation's exact-sample floor of
the sliced Wasserstein distances (a child's stream does not depend on how many are
spawned: the sixth left the first five as they were), so re-sampling or re-evaluating
never changes the model and each stage is reproducible by itself. Training resumed from a
checkpoint ends with the same bits as an uninterrupted run on the same thread counts (the
checkpoint records them; a resume with others says so: sums split across threads round
differently).

One command writes into a run at a time: train, sample and evaluate hold the folder's
lock (sgm_ref._lock, RUN/.lock while held) and refuse to start while another holds it,
naming it. On taking the lock they remove the temporary files of writes a killed
predecessor left (.tmp-*).
"""

import contextlib
import copy
import hashlib
import json
import math
import os
import platform
import shlex
import shutil
import warnings
import zipfile
import zlib

import numba
import numpy as np
import scipy

from . import __version__, _validation
from ._json import load_json
from ._lock import folder_lock
from ._validation import check_count, check_fits, check_real, check_time_range
from .io import _READ_ERRORS, _fsync_folder, atomic_write, load, os_error_text, read_error_text, read_header, save
from .nn import MLP
from .optim import Adam
from .processes import process_from_dict
from .samplers import METHODS, sample, time_grid
from .score_model import ScoreModel
from .targets.spec import PRESETS, _preset_dimension, from_record, from_spec, to_record
from .train import History, TrainingDivergedError, _either, fit, progress_bar

__all__ = ["DEFAULTS", "RUN_FILES", "RunError", "make_config", "update_section", "build", "horizon_limits", "streams",
           "create", "new_run", "writing", "read_config", "train", "check_total_steps", "finished_steps",
           "thread_counts", "load_model", "sample_run", "load_samples", "write_json", "restore_history"]

FORMAT = "sgm_ref.run"
FORMAT_VERSION = 1

# the files a run writes; --force replaces exactly these
RUN_FILES = ("config.json", "checkpoint.npz", "model.npz", "history.json", "training_state.npz", "samples.npy",
             "report.json", "report.md", "samples.png", "loss.png", "score_error.png")
# what a new sampling makes stale
_EVALUATION_FILES = ("report.json", "report.md", "samples.png", "loss.png", "score_error.png")
# keys of config.json besides the sections of DEFAULTS ("samples_digest": the settings that drew
# samples.npy, _samples_digest; "samples_sha256": its numbers, _array_sha256; both written by sample_run)
_HEADER_KEYS = ("format", "version", "sgm_ref", "environment", "samples_digest", "samples_sha256")

_STREAMS = ("data", "init", "train", "sample", "evaluate", "sliced floor")
_MAX_STEPS = 2**53

# The defaults reach a histogram TV of ~0.03 on the ring in about 10 s of training.
DEFAULTS = {
    "target": "ring",
    "target_definition": None,  # the target's full definition (to_record), filled from "target"
    "seed": 0,
    "process": {"name": "OU"},
    "data": {"n": 10_000},
    "model": {"width": 128, "depth": 3, "activation": "silu", "time_embedding": "log",
              "parameterization": "noise", "dtype": "float64"},
    "train": {"steps": 12_000, "batch_size": 256, "lr": 2e-3, "weighting": "sigma2",
              "time_distribution": "log-uniform", "ema_decay": 0.999, "ema_warmup": True, "t0": 1e-3, "T": None,
              "checkpoint_every": 1000},
    "sample": {"n": 10_000, "method": "euler_maruyama", "grid": "geometric", "n_steps": 300,
               "t0": None, "T": None},
    "evaluate": {"n": 10_000, "two_sample_n": 2_000, "profile_n": 2_000, "profile_times": 12,
                 "bound_n": 256, "bins": 20},
}


class RunError(ValueError):
    """A run folder is missing, incomplete, not a run, or would be overwritten."""


def _default_T(process):
    return 5.0 if process["name"] == "OU" else 1.0


def make_config(options=None):
    """A complete, validated run configuration: DEFAULTS updated by options.

    Parameters
    ----------
    options : dict, optional
        Same nesting as DEFAULTS ({"train": {"steps": 500}, "target": "gmm:d=8,k=4,radius=3"});
        values None keep the default.

    Returns
    -------
    dict, JSON-ready. T and t0 left None take the process's defaults (T = 5 for OU,
    1 for VP; the sampler's t0 and T those of training).

    Raises
    ------
    ValueError
        Unknown keys, any value the library would refuse (the message names it), or a
        count whose stage's arrays cannot fit in this machine's memory (_check_sizes).
    """
    return _make_config(options, _SIZED_STAGES)


def _make_config(options, sized):
    """make_config, checking the array sizes of the stages in `sized` (a subset of _SIZED_STAGES)."""
    config = copy.deepcopy(DEFAULTS)
    for key, value in (options or {}).items():
        if key not in config:
            raise ValueError(f"unknown configuration key {key!r}; expected one of {', '.join(config)}")
        if isinstance(config[key], dict) and key != "process":
            if not isinstance(value, dict):
                raise ValueError(f"configuration section {key!r} must be a dict, got {type(value).__name__}")
            unknown = set(value) - set(config[key])
            if unknown:
                raise ValueError(f"unknown option(s) {sorted(unknown)} in {key!r}; expected {', '.join(config[key])}")
            config[key].update({k: v for k, v in value.items() if v is not None})
        elif value is not None:
            config[key] = value
    train, smp = config["train"], config["sample"]
    if train["T"] is None:
        train["T"] = _default_T(config["process"])
    smp["t0"] = train["t0"] if smp["t0"] is None else smp["t0"]
    smp["T"] = train["T"] if smp["T"] is None else smp["T"]
    if config["target_definition"] is None:
        # the network's size first, from the spec's d where it names one (a preset), before the target
        # and its record (lists of d k Python floats) are built: `train --target gmm:d=100000000,...`
        # built both (13 GB, then 6.4 GB more) before the network was refused, and was killed for memory
        d = _preset_dimension(config["target"])
        if d is not None:
            _check_network_size(config, d)
        target = from_spec(config["target"])
        if d is None:  # a JSON file's
            _check_network_size(config, target.dim)
        config["target_definition"] = to_record(target)
    config.update(format=FORMAT, version=FORMAT_VERSION, sgm_ref=__version__)
    target, _, _ = build(config)  # everything the run will construct, constructed once to validate it
    _check_sizes(config, target.dim, sized)
    return config


def _check_network_size(config, d):
    """Refuse a dimension whose network (with the training's copies of its parameters) cannot fit
    in this machine's memory, before the target's record and the network are built.

    Counted: the parameters of the MLP [x, e(t)] -> R^d (time features counted as one: a lower
    bound), and 5 arrays of as many numbers in training (the parameters, their gradient, Adam's
    two moments and the average; a checkpoint copies them again: a lower bound). A network too
    large at d = 1 is refused for its width and depth (width 20000 and depth 3 on 24 GiB passed,
    and was killed for memory in training: build's np.zeros reserves pages it does not touch).
    Settings that are not yet valid are left to build, which names them.
    """
    m = config["model"] if isinstance(config.get("model"), dict) else {}
    width, depth = m.get("width"), m.get("depth")
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in (width, depth)):
        return
    itemsize = 4 if m.get("dtype") == "float32" else 8  # another value: build names it
    memory = _validation._physical_memory()  # the module's, as check_fits asks it (tests patch it there)
    if memory is None:
        return
    copies = 5
    fixed = 2 * width + (depth - 1) * (width + 1) * width  # the parameters that do not grow with d
    params = (2 * width + 1) * d + fixed
    d_max = (memory // (copies * itemsize) - fixed) // (2 * width + 1)
    if d_max < 1:  # too large whatever d: no dimension to advise
        least = 2 * width + 1 + fixed
        raise ValueError(f"the network of width {width} and depth {depth} is too large for this machine in any "
                         f"dimension: at d = 1 it has {least} parameters, and training keeps {copies} arrays of as "
                         f"many ({copies * itemsize * least / 2**30:.3g} GiB of {itemsize * 8}-bit numbers), more than "
                         f"this machine's memory ({memory / 2**30:.3g} GiB); use a narrower or shallower network "
                         "(--width, --depth)")
    if copies * itemsize * params > memory:
        raise ValueError(f"target {config['target']} has d = {d}, too large for this machine: the network of width "
                         f"{width} and depth {depth} has {params} parameters, and training keeps {copies} arrays "
                         f"of as many ({copies * itemsize * params / 2**30:.3g} GiB of {itemsize * 8}-bit numbers), "
                         f"more than this machine's memory ({memory / 2**30:.3g} GiB); use a target of dimension "
                         f"d <= {d_max} at this width, or a narrower network (--width)")


# The stages whose counts size their arrays: "train" the data (n) and the batch, "sample"
# the samples, "evaluate" the bound's and the profile's draws.
_SIZED_STAGES = ("train", "sample", "evaluate")


# sample_run's memory per point, measured: the peak resident size (resource.getrusage's ru_maxrss)
# of a process running sample_run(run, {"n": n, "method": ..., "n_steps": 3}) less its size after
# loading the model, in d = 2000 and 10000 with n = 5000 and 2000 (float64 and float32 models of width
# 128 and depth 3; the network runs in blocks of rows, so its hidden layers add no size per point):
# 6.5-7.2 arrays of n x d numbers of the model's dtype for euler_maruyama, exponential and
# residual_exponential, 8.5-9.2 for probability_flow, and ~600 bytes a point besides (d = 2, n = 2e5).
# Counted with a little slack, the largest measured rounded up.
_SAMPLING_ARRAYS = {None: 8, "probability_flow": 10}
_SAMPLING_PER_POINT = 640


def _check_sizes(config, d, stages):
    """Refuse a count whose working arrays cannot fit in this machine's memory, before any work.

    The stages refuse them too, but only when they come: a `train --force` after it has
    removed the old run, a demo after its training (which the refusal then removed). The
    sizes are those the stages check (a lower bound for the training data: the array of
    the points alone), and for sampling and the evaluation's reference points the peaks
    measured (_SAMPLING_ARRAYS). Checked for the stages in `stages` only: a run trained
    elsewhere is sampled here without its training's sizes being asked about.
    """
    m, t, s, e = config["model"], config["train"], config["sample"], config["evaluate"]
    sizes = []  # (stage, name, value, bytes per unit of value[, what needs them])
    sizes.append(("train", "n (training samples)", config["data"]["n"], 8 * d))
    sizes.append(("train", "batch_size", t["batch_size"], 8 * 6 * (d + m["width"] * m["depth"]),  # train.fit's
                  f"its working arrays at width {m['width']} and depth {m['depth']} (a narrower or shallower "
                  "network needs less)"))
    # the sampler's working arrays (sample_run's peak, not only its start points: a run in d = 200000
    # passed at 8 d bytes a point and was killed for memory at its default 10,000 samples)
    arrays = _SAMPLING_ARRAYS.get(s["method"], _SAMPLING_ARRAYS[None])
    dtype = np.dtype(m["dtype"])
    sizes.append(("sample", "sample n (--n-samples)", s["n"], arrays * dtype.itemsize * d + _SAMPLING_PER_POINT,
                  f"the sampler's working arrays (about {arrays} arrays of n x {d} {dtype.name} numbers)"))
    if s["method"] != "probability_flow":  # which has no bound: bound_n unused
        # metrics.bound's largest: its auxiliary draws, n_aux = 16 bound_n points of 4 d numbers (its
        # path term needs 6 d per point, on blocks of at least 2^15 points)
        sizes.append(("evaluate", "evaluate bound_n", e["bound_n"], 16 * 8 * 4 * d))
    sizes.append(("evaluate", "evaluate profile_n", e["profile_n"], 4 * 8 * 4 * d))  # the integral: 4 profile_n points
    # the exact reference points (evaluate_run's peak per point, measured as sample_run's above: 6.1 float64
    # arrays of n x d in d = 2000, n = 5000; counted as 7). No option sets it: the message says where it is
    # (it read "n = 10000 is too large ...; use n <= 7898", the sampling of the reference, naming no option)
    sizes.append(("evaluate", "evaluate n (config.json's \"n\" of \"evaluate\", the exact reference points: "
                  "sgm-ref evaluate has --bound-n and --profile-n, no option for it)", e["n"], 7 * 8 * d,
                  f"the reference points and their copies in d = {d}"))
    for stage, name, value, per_unit, *what in sizes:
        if stage in stages:
            check_fits(name, value, per_unit, *what)


def build(config, init_rng=0):
    """(target, process, model) of a configuration, checking every setting.

    init_rng (a Generator or an int seed) initialises the network.
    """
    target = from_record(config["target_definition"])
    process = process_from_dict(config["process"])
    seed = config["seed"]
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    check_count(config["data"]["n"], "n (training samples)", minimum=1)
    m = config["model"]
    widths = (check_count(m["width"], "width"),) * check_count(m["depth"], "depth")
    net = MLP(target.dim, widths, m["activation"], m["time_embedding"], dtype=m["dtype"], rng=init_rng)
    model = ScoreModel(net, process, m["parameterization"])
    # the training data's draw refuses a target too large for a float32 model (means beyond 1e37):
    # asked of one point now, not of the data once `train --force` had removed the old run
    target.sample(1, np.random.default_rng(0), dtype=model.dtype)
    t = config["train"]
    _check_horizon(t["t0"], t["T"], process, model.dtype, "")  # first: its message names the option and the limit
    check_time_range(t["t0"], t["T"], process)
    if check_count(t["steps"], "steps") > _MAX_STEPS:  # the command line's bound, for a config.json edited by hand
        raise ValueError(f"steps must be at most 2**53, got {t['steps']}")
    check_count(t["batch_size"], "batch_size")
    check_real(t["lr"], "lr", low=0.0, low_open=True)
    # Adam's own refusal of an lr whose first step overflows the network's dtype (lr < 1.8e307 in
    # float64, 3.4e37 in float32), asked of a one-entry array now: it came from the training, after
    # `train --force` had removed the old run
    Adam(np.zeros(1, dtype=model.dtype), lr=t["lr"])
    check_count(t["checkpoint_every"], "checkpoint_every")
    check_real(t["ema_decay"], "ema_decay (0 turns the parameter average off)", low=0.0, high=1.0, high_open=True)
    if not isinstance(t["ema_warmup"], bool):
        raise ValueError(f"ema_warmup must be true or false, got {t['ema_warmup']!r}")
    if t["weighting"] not in ("none", "sigma2"):
        raise ValueError(f"weighting must be 'none' or 'sigma2', got {t['weighting']!r}")
    if t["time_distribution"] not in ("uniform", "log-uniform"):
        raise ValueError(f"time_distribution must be 'uniform' or 'log-uniform', got {t['time_distribution']!r}")
    s = config["sample"]
    check_count(s["n"], "sample n (--n-samples)", minimum=2)  # the report's statistics need two points
    if s["method"] not in METHODS:
        raise ValueError(f"sampler must be one of {', '.join(METHODS)}, got {s['method']!r}")
    _check_horizon(s["t0"], s["T"], process, model.dtype, "sample ")
    check_count(s["n_steps"], "sample n_steps")  # named as the sampler's: time_grid's message says "n_steps"
    memory = _validation._physical_memory()  # as above: one name for tests to patch, as time_grid's check
    if memory is not None and (s["n_steps"] + 1) * 24 > memory:  # time_grid's limit, said as the sampler's
        raise ValueError(f"sample n_steps must be at most {memory // 24 - 1} on this machine, got {s['n_steps']}: "
                         f"the sampler's time grid would need {(s['n_steps'] + 1) * 24 / 2**30:.3g} GiB, more "
                         f"than this machine's memory ({memory / 2**30:.3g} GiB)")
    time_grid(s["T"], s["t0"], s["n_steps"], s["grid"], process)
    e = config["evaluate"]
    for key in ("n", "two_sample_n", "profile_n", "bound_n"):
        check_count(e[key], f"evaluate {key}", minimum=2)
    check_count(e["profile_times"], "evaluate profile_times")
    check_count(e["bins"], "evaluate bins")
    return target, process, model


# The horizon and early-stopping time a run accepts. Both limits come from rounding, so
# they hold whatever the target (of unit scale or up to 1/eps):
# - T: past alpha_T = eps^2 (float64 eps = 2.2e-16), x_T = alpha_T x0 + sigma_T z keeps no
#   digit of any x0 smaller than 1/eps = 4.5e15 (alpha_T x0 is below the rounding of
#   sigma_T z ~ 1), so p_T is N(0, I) to float64 precision: a larger T only spends training
#   and sampling steps on pure noise (OU: T <= 72.1; the defaults are 5 and 1).
# - t0: below sigma_t0 = eps of the model's dtype, sigma_t0 z is lost in the rounding of
#   alpha_t0 x0 for a target of unit scale: the noise the loss asks the network to predict
#   is not in its input (OU: t0 >= 2.5e-32 in float64, 7.1e-15 in float32).
_ALPHA_T_MIN = np.finfo(np.float64).eps ** 2
_LIMIT_SLACK = 5e-3  # the limits are printed to 3 digits: accept what the message says


def horizon_limits(process, dtype):
    """(smallest t0, largest T) of a run with this process and model dtype (see above)."""
    eps = np.finfo(dtype).eps
    t0_min = float(process._inverse_integrated_beta(-np.log1p(-eps**2)))
    T_max = min(float(process._inverse_integrated_beta(-2.0 * np.log(_ALPHA_T_MIN))), process.t_max)
    return t0_min, T_max


def _check_horizon(t0, T, process, dtype, section):
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in (t0, T)):
        return  # not numbers: check_time_range names them
    if T > process.t_max:
        return  # beyond the process's own range (VP's t <= 1): check_time_range says so
    t0_min, T_max = horizon_limits(process, dtype)
    option = "--T" if not section else "the sampler's T (--T of sgm-ref sample)"
    if T > T_max * (1 + _LIMIT_SLACK):
        raise ValueError(f"{option} must be <= {T_max:.3g} for {process!r}, got {T:g}: beyond it alpha_T < "
                         f"{_ALPHA_T_MIN:.2g} (float64 eps squared), so x_T keeps no digit of the data and p_T is "
                         "N(0, I) to float64 precision; a larger T only spends steps on pure noise")
    option = "--t0" if not section else "the sampler's t0 (--t0 of sgm-ref sample)"
    if t0 < t0_min * (1 - _LIMIT_SLACK):
        # what the rounding costs is the stage's: training's loss asks for noise its input lacks;
        # sampling's last steps ("the loss asks ..." was said of `sample --t0 0` too) move x by
        # ~sigma_t, below its rounding, at times the model was never trained at (training's t0 >= the limit)
        why = ("the loss asks for what the input does not hold" if not section else
               "the sampler's steps below it move x_t by about its rounding only, at times the model was not "
               "trained at (training's t0 has the same limit)")
        raise ValueError(f"{option} must be >= {t0_min:.3g} for {process!r} in {np.dtype(dtype).name}, got {t0:g}: "
                         f"below it sigma_t0 < {np.finfo(dtype).eps:.2g} ({np.dtype(dtype).name} eps), so the "
                         f"noise is lost in the rounding of x_t0 and {why}")


def streams(seed):
    """Independent Generators for the stages of a run, by name (module docstring)."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


# -- the folder ------------------------------------------------------------------------

def _folder(folder):
    """folder as a str path; a RunError (a ValueError) for anything else (None, a number, a
    bytes path), which os's calls refused with a bare TypeError."""
    path = os.fspath(folder) if isinstance(folder, (str, os.PathLike)) else None
    if not isinstance(path, str):
        raise RunError(f"run folder must be a path (a str or os.PathLike), got {folder!r}")
    return path


def _path(folder, name):
    return os.path.join(_folder(folder), name)


def _shell_path(folder):
    """folder as one word of the shell commands the messages show (`sgm-ref train RUN --resume`):
    shlex.quote's form, so an ordinary path (runs/a_1, /tmp/run) reads as before and one with a
    space, a quote, $ and the like is single-quoted (the hints said `sgm-ref train my run
    --resume`, which the shell splits into two arguments); a relative path beginning with "-" is
    written ./-name, which argparse would take for an option."""
    path = os.fsdecode(folder) if isinstance(folder, (str, bytes, os.PathLike)) else str(folder)
    return shlex.quote(os.path.join(os.curdir, path) if path.startswith("-") else path)


def write_json(path, obj):
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _remove_stale_temporaries(folder):
    """Temporary files of atomic writes a kill interrupted (never renamed into place).

    Called only under the folder's lock: another command's temporaries are its writes
    in progress. Only the temporaries of run files (".tmp-" + random + a name of
    RUN_FILES, sgm_ref.io.atomic_path's): the lock is taken before the folder is known
    to be a run, and `sgm-ref sample /tmp` removed every other program's .tmp-* there.
    """
    for name in os.listdir(folder):
        path = _path(folder, name)
        ours = name.startswith(".tmp-") and name.endswith(RUN_FILES)
        if ours and not (os.path.isdir(path) and not os.path.islink(path)):  # a folder is not ours
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass


def _no_folder(folder):
    """The RunError for a run folder that is not one: missing, or a file (it said "does not exist")."""
    if os.path.exists(folder):
        return RunError(f"{folder} is not a folder: a run is the folder `sgm-ref train` made; name that")
    return RunError(f"run folder {folder or repr(folder)} does not exist")


def writing(folder, wait=0.0, new=False):
    """Context manager: hold the run folder's lock while writing into it.

    On taking the lock, the temporaries a killed predecessor left are removed. Re-entrant
    within a thread (sampling inside `sgm-ref demo` takes the lock the demo holds).
    Unless new (a run being created), a folder without config.json is refused before
    its lock is taken: the lock file (FOLDER/.lock, removed on release) would overwrite and
    remove a file of that name of whatever the folder is.

    Raises
    ------
    RunError
        The folder does not exist, or holds no run.
    sgm_ref._lock.FolderLockedError (a ValueError)
        Another process is writing to it; the message names its pid and command.
    """
    folder = _folder(folder)
    if not os.path.isdir(folder):
        raise _no_folder(folder)
    if not new and not os.path.lexists(_path(folder, "config.json")):
        raise RunError(f"{folder} is not a run folder (no config.json); create one with `sgm-ref train`")
    return folder_lock(folder, kind="sgm-ref command", wait=wait,
                       on_acquire=lambda: _remove_stale_temporaries(folder))


# A command that made a run folder takes its lock at once; one that found the folder empty
# in that instant (a --resume started beside the new run, say) holds it for a moment only.
_NEW_FOLDER_WAIT = 30.0


@contextlib.contextmanager
def new_run(folder, config, force=False, then_evaluate=False, evaluate_options=()):
    """Create a run folder (as create) and hold its lock while the block runs.

    If the block raises, what the new run wrote is removed: the folder itself if this call
    made it, else the run files (RUN_FILES). A folder this call did not make is never
    removed. Two exceptions keep the run for `train --resume`: KeyboardInterrupt, and an
    OSError (a full disk, a file-size limit, a permission changed) once the training has
    written a checkpoint, its final state or the model; the OSError then becomes a
    RunError that says so, with the commands that finish the run (then_evaluate: the block
    also samples and evaluates it, as `sgm-ref demo` does; evaluate_options: the options of
    `sgm-ref evaluate` those commands keep, the demo's --no-plots, say).
    """
    folder = _folder(folder)
    made = False
    if not folder:
        raise RunError("the run folder must be named, got ''")
    if os.path.islink(folder) and not os.path.exists(folder):  # mkdir would call it existing, --force missing
        raise RunError(f"{folder} is a symbolic link to {os.readlink(folder)}, which does not exist: create that "
                       "folder, or remove the link")
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise RunError(f"{folder} exists and is not a folder; choose another output folder")
        if not force:
            raise RunError(f"output folder {folder} already exists; pass --force to replace its run files, "
                           "or choose another folder")
    else:
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            why = "is not a folder" if os.path.exists(parent) else "does not exist"
            raise RunError(f"cannot create {folder}: its parent {parent} {why}")
        try:
            os.mkdir(folder)
            made = True
        except FileExistsError:  # another command made it just now
            if not force:
                raise RunError(f"output folder {folder} already exists; pass --force to replace its run files, "
                               "or choose another folder") from None
    with writing(folder, wait=_NEW_FOLDER_WAIT if made else 0.0, new=True):
        present = [name for name in RUN_FILES if os.path.exists(_path(folder, name))]
        if made and present:  # someone else's run, written while we waited for the lock
            raise RunError(f"another command created a run in {folder} meanwhile; choose another folder")
        why = _not_a_run(folder) if present else None
        if why:
            raise RunError(f"{folder} holds {', '.join(present)} but is not an sgm_ref run folder ({why}); "
                           "--force only replaces the files of a run: choose another folder, or remove those "
                           "files first")
        _remove_run_files(folder, present)
        try:
            if made:  # the new folder's entry on disk, as its files' (io.atomic_path); failing, it is removed
                _fsync_folder(os.path.dirname(os.path.abspath(folder)))
            config = dict(config, environment={"python": platform.python_version(), "numpy": np.__version__,
                                               "numba": numba.__version__, "scipy": scipy.__version__,
                                               "machine": platform.machine(), "cpu_count": os.cpu_count()})
            write_json(_path(folder, "config.json"), config)
            yield
        except BaseException as exc:
            kept = _resumable(folder) if isinstance(exc, OSError) else None
            if kept:  # a fault of the machine (a full disk), not of the run: its training is kept for --resume
                raise RunError(f"{os_error_text(exc)}; the run in {folder} is kept ({kept}): once that is fixed, "
                               f"continue it with {_continuation(folder, then_evaluate, evaluate_options)}") from exc
            if not isinstance(exc, KeyboardInterrupt):
                if made:
                    shutil.rmtree(folder, ignore_errors=True)
                elif os.path.isdir(folder):
                    for name in RUN_FILES:
                        if os.path.exists(_path(folder, name)):
                            os.unlink(_path(folder, name))
            raise


# --force removes the old run's files in the reverse of the order training writes them, its
# config.json last: stopped between two removals, the folder is still the old run (unfinished,
# which --resume completes) or, once config.json is gone, holds no run file at all
_REMOVAL_ORDER = ("model.npz",) + _EVALUATION_FILES + ("samples.npy", "checkpoint.npz", "training_state.npz",
                                                      "history.json", "config.json")
assert sorted(_REMOVAL_ORDER) == sorted(RUN_FILES)


def _remove_run_files(folder, present):
    """Remove an old run's files for --force (_REMOVAL_ORDER). Interrupted, it finishes the
    removal first: the user asked for the old run to go, and a half-removed run is neither
    the old one nor the new one. An OSError (a read-only file) stops it with what is left."""
    names = [name for name in _REMOVAL_ORDER if name in present]
    try:
        for name in names:
            os.unlink(_path(folder, name))
    except KeyboardInterrupt:
        for name in names:
            try:
                os.unlink(_path(folder, name))
            except OSError:
                pass
        raise
    except OSError as exc:
        left = [name for name in _REMOVAL_ORDER if os.path.exists(_path(folder, name))]
        raise RunError(f"{os_error_text(exc)}; --force could not remove the old run's files from {folder} "
                       f"({', '.join(left)} remain): fix that and run the command again") from exc


def _continuation(folder, then_evaluate=False, evaluate_options=()):
    """The commands that finish a kept run; then_evaluate: a run that is also to be sampled
    and evaluated (`sgm-ref demo`), which may stop after its training; evaluate_options: the
    options its `sgm-ref evaluate` keeps (a demo's --no-plots, which config.json does not hold).
    The folder is written as the shell needs it (_shell_path)."""
    shown = _shell_path(folder)
    evaluate = f"`sgm-ref evaluate {' '.join((shown, *evaluate_options))}`"
    try:
        config = read_config(folder)
    except ValueError:
        config = None
    configured = None if config is None else config["train"]["steps"]
    finished = finished_steps(folder)
    if finished is None or finished != configured:  # not trained, or an extension under way
        then = f", then `sgm-ref sample {shown}` and {evaluate}" if then_evaluate else ""
        trained = None if config is None else _interrupted_extension(folder, config)
        back = (f" (or give the extension up with `sgm-ref train {shown} --resume --steps {trained}`)"
                if trained is not None else "")
        return f"`sgm-ref train {shown} --resume`{then}{back}"
    if not os.path.exists(_path(folder, "samples.npy")):
        return f"`sgm-ref sample {shown}`, then {evaluate}"
    return evaluate


def _resumable(folder):
    """What of a run's training is on disk ("checkpoint.npz", ...), or None."""
    present = [name for name in ("model.npz", "training_state.npz", "checkpoint.npz")
               if os.path.exists(_path(folder, name))]
    return ", ".join(present) or None


def create(folder, config, force=False):
    """Make the run folder and write config.json (the config must come from make_config).

    An existing folder is refused unless force, which removes the run files listed in
    RUN_FILES from it (nothing else). Done under the folder's lock (writing).
    """
    with new_run(folder, config, force):
        pass


def _not_a_run(folder):
    """Why folder is not a run that --force may replace (said in its refusal), or None if it is
    one: a damaged config.json was refused as 'not an sgm_ref run folder' alone, which hid the
    damage (a flipped bit) that made the user's own run unrecognisable."""
    try:
        with open(_path(folder, "config.json"), "rb") as f:
            config = load_json(f, "its config.json")
    except FileNotFoundError:
        return "it has no config.json"
    except OSError as exc:
        return f"its config.json is unreadable: {exc.strerror or exc}"
    except ValueError as exc:  # "its config.json is not valid JSON (...)": damaged
        return str(exc)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        return "its config.json is not an sgm_ref run configuration"
    return None


def read_config(folder):
    """config.json of a run folder, checked and validated."""
    path = _path(folder, "config.json")
    if not os.path.isdir(os.fspath(folder)):
        raise _no_folder(os.fspath(folder))
    try:
        with open(path, encoding="utf-8") as f:
            config = load_json(f, path)
    except OSError:
        raise RunError(f"{os.fspath(folder)} is not a run folder (no readable config.json); "
                       "create one with `sgm-ref train`") from None
    except ValueError as exc:
        raise RunError(str(exc)) from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RunError(f"{path} is not an sgm_ref run configuration")
    if type(config.get("version")) is not int or config["version"] != FORMAT_VERSION:  # true == 1 in Python
        raise RunError(f"{path} has run format version {config.get('version')!r}; this sgm_ref reads {FORMAT_VERSION}")
    unknown = set(config) - set(DEFAULTS) - set(_HEADER_KEYS)
    if unknown:
        raise RunError(f"{path} has unknown key(s) {sorted(unknown)}")
    for section, defaults in DEFAULTS.items():  # a misspelt "bound_N" would be silently ignored
        if isinstance(defaults, dict) and section != "process" and isinstance(config.get(section), dict):
            unknown = set(config[section]) - set(defaults)
            if unknown:
                raise RunError(f"{path} has unknown key(s) {sorted(unknown)} in {section!r}; expected "
                               f"{', '.join(defaults)} (fix or restore the file)")
    try:
        build(config)
    except (KeyError, TypeError) as exc:
        raise RunError(f"{path} is incomplete or malformed ({exc!r})") from None
    except ValueError as exc:  # a value edited by hand: the file is the culprit, not an option
        raise RunError(f"{path}: {exc} (fix or restore the file)") from None
    _check_target_label(config, path)
    return config


def _check_target_label(config, path):
    """A preset's name in "target" must still describe "target_definition" (what the run
    uses): a label edited by hand would title the reports with another target."""
    spec = config["target"]
    name = spec.partition(":")[0].strip() if isinstance(spec, str) else None
    if name not in PRESETS:  # a JSON file's path: the file may have moved or changed since
        return
    try:
        same = to_record(from_spec(spec)) == config["target_definition"]
    except ValueError:
        same = False
    if not same:
        raise RunError(f"{path}: \"target\" is {spec!r}, which is not the target its \"target_definition\" "
                       "describes (the one the run uses); restore the file")


# -- training, with checkpoints --------------------------------------------------------

def _optimizer(model, config):
    t = config["train"]
    if not t["ema_decay"]:  # 0 turns the average off
        return Adam(model.params, lr=t["lr"])
    return Adam(model.params, lr=t["lr"], ema_decay=t["ema_decay"], ema_warmup=t["ema_warmup"])


def thread_counts():
    """The thread counts that decide training's bits: {"blas": int or None, "numba": int}.

    Sums split across threads round differently, so a run continued with other counts
    is not bit-identical to one trained without a break. numba's count is exact; BLAS's
    comes from threadpoolctl when it is installed, else from the OpenBLAS libraries loaded
    (their live counts: --threads and set_threads change them after the environment was
    read), else from the variables OpenBLAS and MKL read (OPENBLAS_NUM_THREADS,
    GOTO_NUM_THREADS, MKL_NUM_THREADS, OMP_NUM_THREADS), else their default of one thread
    per available core.
    """
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        threadpool_info = None
    if threadpool_info is not None:
        counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
        blas = max(counts) if counts else None
    else:
        from ._threads import blas_threads

        counts = blas_threads()
        blas = max(counts) if counts else None
        for name in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
            if blas is not None:
                break
            try:
                blas = int(os.environ.get(name, "").split(",")[0])
            except ValueError:  # unset or not a number: the library ignores it too
                continue
        if blas is None or blas < 1:
            blas = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"blas": blas, "numba": int(numba.get_num_threads())}


def _is_thread_counts(counts):
    """Whether counts is a record as thread_counts() returns it: {"blas": n or None, "numba": n}."""
    def count(n):
        return isinstance(n, int) and not isinstance(n, bool) and n >= 1

    return (isinstance(counts, dict) and set(counts) == {"blas", "numba"} and count(counts["numba"])
            and (counts["blas"] is None or count(counts["blas"])))


def _threads_text(counts):
    blas, count = counts.get("blas"), counts.get("numba")  # blas None: threadpoolctl found no BLAS
    return f"{'?' if blas is None else blas} BLAS and {'?' if count is None else count} numba threads"


def _same_threads_hint(saved):
    """How to run with the saved thread counts again. The variables alone ("set OPENBLAS_NUM_THREADS
    and NUMBA_NUM_THREADS as then") do not override --threads or SGM_REF_THREADS, which set
    both counts: those are the way when the counts were one number. A count beyond numba's pool
    here (NUMBA_NUM_THREADS, by default the number of cores) needs the pool set as well, which
    --threads alone is refused for."""
    blas, count = saved.get("blas"), saved.get("numba")
    if blas is None:  # threadpoolctl found no BLAS then: "OPENBLAS_NUM_THREADS=?" is no setting
        return (f"run with NUMBA_NUM_THREADS={count} set, without --threads or SGM_REF_THREADS (its BLAS thread "
                "count was not recorded)")
    if isinstance(count, int) and blas == count:
        pool = numba.config.NUMBA_NUM_THREADS
        return (f"run with --threads {count} (SGM_REF_THREADS={count}, or sgm_ref.set_threads({count}))"
                + (f" and NUMBA_NUM_THREADS={count} set (numba's pool here has {pool})" if count > pool else ""))
    return (f"run with OPENBLAS_NUM_THREADS={blas if blas is not None else '?'} and NUMBA_NUM_THREADS="
            f"{count if count is not None else '?'} set, without --threads or SGM_REF_THREADS")


def _save_state(path, step, optimizer, rng, history, threads, digest):
    arrays = dict(optimizer.state_dict())
    arrays["run_digest"] = np.array(digest)
    arrays["step"] = np.int64(step)
    arrays["loss"] = np.asarray(history.loss, dtype=np.float64)
    arrays["rng_state"] = np.array(json.dumps(rng.bit_generator.state))
    arrays["threads"] = np.array(json.dumps(threads))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_state(path, what, optimizer, rng, remedy, digest):
    """Restore optimiser (and so the parameters) and rng; return (step, history, thread counts or None).

    what names the file in messages ("checkpoint", "training state"), remedy() says what to do
    (called only for a refusal: it may read the other files of the run).
    The file must have been written for this run: its run digest (files of older versions
    carry none) is `digest`, the run's settings (_run_digest), and its optimiser's
    hyperparameters are those `optimizer` was built with from config.json (Adam's
    load_state_dict would adopt the file's), its optimiser's step count its step.
    """
    def unreadable(reason):
        return RunError(f"{what} {path} is unreadable ({reason}); {remedy()}")

    try:
        f = np.load(path, allow_pickle=False)
    except (ValueError, EOFError):  # numpy's answer to bytes that are neither .npy nor .npz
        raise unreadable("not an .npz archive") from None
    except _READ_ERRORS as exc:  # BadZipFile: a file cut short (a full disk, an interrupted copy)
        raise unreadable(f"a truncated or damaged .npz archive: {read_error_text(exc)}") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise unreadable("a bare array, not an .npz archive")
    try:
        with f:
            arrays = {key: f[key] for key in f.files}
        step = arrays.pop("step")
        if step.shape != () or step.dtype.kind not in "iu" or step < 0:
            raise ValueError(f"its step must be an integer >= 0, got {step.dtype} {step.tolist()!r}")
        step = int(step)
        loss = arrays.pop("loss")
        if loss.ndim != 1 or loss.dtype != np.float64 or not np.all(np.isfinite(loss)):
            raise ValueError(f"its losses must be finite float64 numbers, got {loss.dtype} of shape {loss.shape}")
        if len(loss) != step:
            raise ValueError(f"it is inconsistent: step {step}, {len(loss)} losses")
        state = load_json(str(arrays.pop("rng_state")), "its rng_state")
        threads = load_json(str(arrays.pop("threads")), "its thread counts") if "threads" in arrays else None
        saved_digest = str(arrays.pop("run_digest")) if "run_digest" in arrays else None
        if saved_digest is not None and threads is None:
            # every version that records the run digest records the thread counts (since 2026-12-02):
            # a damaged directory entry that swallows the member read as a state of an older version
            raise ValueError("it records its run digest but not its thread counts (a damaged archive)")
        if threads is not None and not _is_thread_counts(threads):
            # what thread_counts() writes; anything else was read as "no counts" and the resume's note
            # on other counts was silently dropped
            raise ValueError(f"its thread counts must be {{'blas': n, 'numba': n}} with counts >= 1 (blas may be "
                             f"null), got {threads!r} (a damaged archive)")
        if saved_digest is not None and saved_digest != digest:
            # each cause with its own fix: with config.json edited, removing the file does not help (the
            # run's other files were written under the old settings too: a review)
            raise RunError(f"{what} {path} was written for other settings than config.json's (target, seed, network "
                           "or training): another run's file, or config.json edited since; if config.json was "
                           f"edited, restore it; if the file is another run's, {remedy()}")
        built = optimizer.state_dict()
        settings = ("lr", "beta1", "beta2", "eps", "weight_decay", "clip_norm", "ema_decay", "ema_warmup")
        for key in settings + ("step_count",):  # compared below: an array's comparison has no truth value
            if key in arrays and arrays[key].shape != ():
                raise ValueError(f"its {key} must be a single number, got an array of shape {arrays[key].shape}")
        changed = [key for key in settings
                   if (key in arrays) != (key in built) or key in built and arrays[key] != built[key]]
        if changed:  # an intact file (of a version without the digest, or edited): not "unreadable"
            raise RunError(f"{what} {path} has optimiser settings ({', '.join(changed)}) other than config.json's: "
                           "config.json edited since it was written, or the file; if config.json was edited, restore "
                           f"it; if the file was, {remedy()}")
        if "step_count" in arrays and arrays["step_count"] != step:
            raise ValueError(f"it is inconsistent: step {step}, optimiser step count {arrays['step_count'].tolist()!r}")
        rng.bit_generator.state = state
        optimizer.load_state_dict(arrays)
    except zipfile.BadZipFile as exc:
        raise unreadable(f"a truncated or damaged .npz archive: {read_error_text(exc)}") from None
    except RunError:
        raise
    except _READ_ERRORS + (TypeError, AttributeError, OverflowError, zlib.error) as exc:
        raise unreadable(read_error_text(exc)) from None  # OverflowError: a number of rng_state beyond its integers' range
    return step, History(loss=loss.tolist()), threads


def _states(folder):
    return _path(folder, "checkpoint.npz"), _path(folder, "training_state.npz")


def finished_steps(folder):
    """Steps of the run's finished training (model.npz written and whole, no checkpoint
    pending), or None.

    A model.npz whose archive is damaged (a member failing its CRC-32, a file cut short) is
    no finished training: `train --resume` writes it again. Only a damaged header was taken
    as such; a flipped bit in its parameters was "already trained", while sample and
    evaluate refused the file.
    """
    checkpoint, _ = _states(folder)
    model = _path(folder, "model.npz")
    if os.path.exists(checkpoint) or not os.path.exists(model):
        return None
    steps = _model_steps(model)
    return None if steps is None or _archive_damage(model) is not None else steps


def _model_steps(path):
    """The step count a model.npz's header records (an integer), or None if it records none or the
    header does not read."""
    try:
        steps = read_header(path)["extra"]["steps"]
    except (ValueError, KeyError, TypeError):
        return None
    return steps if isinstance(steps, int) and not isinstance(steps, bool) else None


def _archive_damage(path):
    """Why the .npz archive at path does not read whole (a member failing its CRC-32, a file
    cut short), or None if every member reads back as written."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as exc:  # any damage (BadZipFile, zlib.error, EOFError, an 'encrypted' member, ...)
        return read_error_text(exc)
    return None if bad is None else f"its member {bad!r} fails its CRC-32 check"


def _model_remedy(folder):
    """How `train --resume` writes a damaged model.npz again (finished_steps takes it for unfinished);
    beside an interrupted extension, how that is continued or given up (each writes a model)."""
    folder = os.fspath(folder)
    shown = _shell_path(folder)
    checkpoint, final = _states(folder)
    try:
        config = read_config(folder)
        trained = _interrupted_extension(folder, config)
    except ValueError:
        config = trained = None
    if trained is not None:
        # --resume trains the extension on to config.json's steps: it said "writes it again (from
        # checkpoint.npz)", of a model of other steps than the damaged one
        return (f"`sgm-ref train {shown} --resume` continues the interrupted extension to "
                f"{config['train']['steps']} steps and writes its model; `sgm-ref train {shown} --resume --steps "
                f"{trained}` gives the extension up and writes the model of {trained} steps again (from "
                "training_state.npz)")
    if os.path.exists(checkpoint) and config is not None:
        # a training under way (an extension killed after its final state, before its model): it said
        # "writes it again (from checkpoint.npz)" of a model of other steps than the damaged one
        return (f"`sgm-ref train {shown} --resume` finishes the training to config.json's {config['train']['steps']} "
                "steps from checkpoint.npz and writes its model")
    source = ("from checkpoint.npz" if os.path.exists(checkpoint) else
              "from training_state.npz, the same bits" if os.path.exists(final) else
              "by training the run again from step 0")
    return f"`sgm-ref train {shown} --resume` writes it again ({source})"


def restore_history(folder):
    """Rewrite a finished run's history.json from training_state.npz when it is not the
    losses that file records (left by a failed extension, or damaged); returns True if it did. Takes the folder's lock
    only to write (a finished read-only run is left as it is).

    Raises
    ------
    RunError
        folder is not a path to an existing folder.
    """
    if not isinstance(folder, (str, os.PathLike)) or not os.path.isdir(folder):
        raise RunError(f"run folder must be an existing folder, got {folder!r}")

    def needed():
        recorded = _recorded_loss(folder)
        if recorded is None:
            return False
        path = _path(folder, "history.json")
        try:
            with open(path, encoding="utf-8") as f:
                loss = load_json(f, path).get("loss")
            # the very numbers: JSON writes each float64 so that it reads back exactly
            return not (isinstance(loss, list) and loss == recorded)
        except (OSError, ValueError, AttributeError):
            return True  # missing or damaged

    if not needed():
        return False
    with writing(folder):
        if not needed():
            return False
        write_json(_path(folder, "history.json"), {"loss": _state_loss(_states(folder)[1], finished_steps(folder))})
        return True


def _recorded_loss(folder):
    """The losses of a finished run as its training_state.npz records them (a list of float64),
    or None where there is no whole state for the finished steps (a run of an earlier version,
    a training pending or damaged: nothing to compare history.json with)."""
    finished = finished_steps(folder)
    return None if finished is None else _state_loss(_states(folder)[1], finished)


def _state_loss(path, steps):
    """The losses a training state file records, as a list, if it is whole for `steps` steps
    (at that step, `steps` finite float64 losses); else None."""
    try:
        with np.load(path, allow_pickle=False) as f:
            step, loss = int(f["step"]), f["loss"]
    except Exception:  # missing or damaged: nothing to restore from
        return None
    if step != steps or loss.ndim != 1 or loss.dtype != np.float64 or loss.size != steps or not np.all(np.isfinite(loss)):
        return None
    return loss.tolist()


def check_total_steps(folder, config, steps):
    """The total steps of a continued training: config's if steps is None, else steps if >= config's,
    or the steps of the finished run an interrupted extension started from (giving it up)."""
    configured = config["train"]["steps"]
    if steps is None:
        return configured
    steps = check_count(steps, "steps")
    if steps < configured:
        trained = _interrupted_extension(folder, config)
        if steps == trained:
            return steps
        folder = os.fspath(folder)
        if trained is not None:  # it said "fewer than the 200000 steps RUN is trained for", of a run of 200
            shown = _shell_path(folder)
            raise RunError(f"--steps {steps} is fewer than the {configured} steps of {folder}'s config.json: an "
                           f"extension of its {trained} trained steps to {configured} was interrupted; "
                           f"`sgm-ref train {shown} --resume` continues it, `sgm-ref train {shown} --resume "
                           f"--steps {trained}` gives it up (the model of {trained} steps stays); a run can be "
                           "extended, not shortened: train a new run for other steps")
        raise RunError(f"--steps {steps} is fewer than the {configured} steps of {folder}'s config.json: a run can "
                       f"be extended, not shortened (drop --steps, or give {configured} or more); train a new run "
                       "for fewer steps")
    return steps


def _interrupted_extension(folder, config):
    """The steps of the finished run whose extension to config's steps was interrupted, or None:
    model.npz and training_state.npz both of the same k < config's steps (an extension writes
    config.json first, its model last), or a model.npz of k beside a training_state.npz that
    no longer reads (damaged since: it is written whole), which giving up names once config.json
    is back at k (the run's model stays usable); the extension could not be given up then, and
    --steps k was "a run can be extended, not shortened"."""
    model = _path(folder, "model.npz")
    trained = _model_steps(model) if os.path.exists(model) else None
    if trained is None or not trained < config["train"]["steps"]:
        return None
    state = _states(folder)[1]
    step = _state_step(state)
    return trained if step == trained or step is None and os.path.exists(state) else None


def train(folder, progress=None, steps=None, log=None):
    """Train the run in folder from its config.json, continuing from its saved state.

    Starts from checkpoint.npz when a training was interrupted, from training_state.npz
    when `steps` extends a finished run or its model.npz is missing or damaged (written
    again, the same bits: no step is taken), else from step 0. Removes the samples and reports
    of an older model, writes history.json and training_state.npz, removes the checkpoint,
    and writes model.npz (with the EMA, when enabled) last, so that a kill between any two
    writes leaves a run that --resume completes. Holds the folder's lock.

    Parameters
    ----------
    folder : str or os.PathLike
        A run folder (create).
    progress : bool or None
        Progress bar on stderr; None: only when stderr is a terminal.
    steps : int, optional
        A new total number of steps, at least the run's: the run, finished or not, goes
        on to it with the bits of a run trained for `steps` from the start (config.json is
        updated; if the training fails, a finished run gets its old settings back). Or,
        after an extension was interrupted (Ctrl-C, a kill), the steps of the finished run
        it started from: the extension is given up, its checkpoint removed, and the run is
        that finished run again (its model and samples kept, no step taken).
    log : callable(str), optional
        Receives notes: thread counts that differ from those the saved state was written
        with. By default they are issued as warnings.

    Returns
    -------
    History

    Raises
    ------
    RunError
        steps below the run's, a finished run without its training state (trained by an
        older sgm_ref), an unreadable checkpoint; training that diverged ("training
        diverged: the loss became non-finite at step k (try ...)", in the run's settings'
        names: a new run's files are removed, an interrupted one keeps its checkpoint).
    """
    if log is None:
        def log(message):
            warnings.warn(message, stacklevel=3)
    with writing(folder):
        config = read_config(folder)
        configured = config["train"]["steps"]
        checkpoint, final = _states(folder)
        total = check_total_steps(folder, config, steps)
        if total < configured:
            # giving up an interrupted extension: back to the finished run it started from (its
            # model.npz and training state were kept), the checkpoint first, so that a kill between
            # the two writes leaves an extension that this or --resume still completes
            if os.path.exists(checkpoint):
                os.unlink(checkpoint)
            config = update_section(config, "train", {"steps": int(total)})
            write_json(_path(folder, "config.json"), config)
            configured = total
        source = checkpoint if os.path.exists(checkpoint) else final if os.path.exists(final) else None
        extending = total > configured
        if extending and source is None and os.path.exists(_path(folder, "model.npz")):
            raise RunError(f"{os.fspath(folder)} has no training_state.npz (removed, or the run was trained by an "
                           "older sgm_ref, which kept none): it cannot be extended bit for bit; train a new run "
                           f"with --steps {steps}")
        if extending:
            old = config
            config = update_section(config, "train", {"steps": int(steps)})
            write_json(_path(folder, "config.json"), config)
        try:
            return _train(folder, config, source, progress, log, configured)
        except Exception:
            # back to the finished run it was, unless the new final state is already written
            # (then the extension is complete but for its model: --resume writes it); also when
            # the old final state was damaged (unreadable: its step is None), which the
            # message then says to remove, leaving the model usable
            if extending and source == final and _state_step(final) != config["train"]["steps"]:
                write_json(_path(folder, "config.json"), old)
                loss = _state_loss(final, configured)  # the history may be the extension's already
                if loss is not None:
                    write_json(_path(folder, "history.json"), {"loss": loss})
                if os.path.exists(checkpoint):
                    os.unlink(checkpoint)
            raise


def _state_step(path):
    """The step a training state file records, or None if it is missing or unreadable."""
    try:
        with np.load(path, allow_pickle=False) as f:
            return int(f["step"])
    except Exception:  # any damage: the caller only asks whether it is a given step
        return None


def _state_remedy(folder, source, configured):
    """What to do about an unreadable checkpoint or training state (source): the remedy that
    _load_state's refusal names, for each way the run can stand.

    A checkpoint: removed, training restarts from step 0, or goes on from training_state.npz
    when there is one (the checkpoint was an extension's). A final state beside a whole
    model.npz: removed, the model stays usable but the run cannot be extended -- unless an
    extension of it was interrupted (config.json asks for more steps than the model's, as it
    will after this call: `configured`, the steps before this call's own extension, which a
    failure rolls back): then --steps k gives the extension up first, or the state removed,
    --resume trains the extension's run from step 0 (a new model). Beside a model.npz missing or
    damaged: removed, --resume trains the run again from step 0."""
    checkpoint, final = _states(folder)
    shown = _shell_path(folder)
    if source == checkpoint:
        if not os.path.exists(final):
            return "remove it to restart training from step 0"
        step = _state_step(final)
        if step is None:
            return ("remove it; training_state.npz beside it is unreadable as well (`sgm-ref train "
                    f"{shown} --resume` then names what to do about it)")
        return f"remove it: `sgm-ref train {shown} --resume` then goes on from training_state.npz (step {step})"
    model = _path(folder, "model.npz")
    trained = _model_steps(model) if os.path.exists(model) else None
    if trained is None or _archive_damage(model) is not None:  # the state was to write it again (finished_steps)
        return (f"remove {os.path.basename(source)} (model.npz is missing or damaged as well): `sgm-ref train "
                f"{shown} --resume` would then train the run again from step 0 under config.json's settings")
    steps = configured
    if trained >= steps:  # a finished run
        return "remove it (the run's model.npz stays usable, but the run can no longer be extended)"
    # an interrupted extension from trained to steps: removed now, --resume would train the extension's
    # run from step 0 over model.npz, and --steps trained would no longer be accepted (nothing records
    # that the extension started from a finished run)
    return (f"give the interrupted extension up first with `sgm-ref train {shown} --resume --steps {trained}`, then "
            f"remove it: the model of {trained} steps stays usable, but the run can no longer be extended; or "
            f"remove it now, and `sgm-ref train {shown} --resume` trains the run for its {steps} steps from step 0 "
            "(a new model.npz)")


def _train(folder, config, source, progress, log, configured):
    rngs = streams(config["seed"])
    target, process, model = build(config, rngs["init"])
    t = config["train"]
    data = target.sample(config["data"]["n"], rngs["data"], dtype=model.dtype)
    optimizer = _optimizer(model, config)
    rng = rngs["train"]
    threads = thread_counts()
    checkpoint, final = _states(folder)
    start, history = 0, None
    if source is not None:
        def remedy():
            return _state_remedy(folder, source, configured)

        what = "checkpoint" if source == checkpoint else "training state"
        start, history, saved = _load_state(source, what, optimizer, rng, remedy, _run_digest(config))
        if start > t["steps"]:
            raise RunError(f"{source} is at step {start}, past the {t['steps']} steps of config.json; "
                           f"continue with --steps {start} or more")
        if saved is not None and saved != threads and start == t["steps"]:
            # no step to take (a damaged model.npz written again, an extension given up): the state is
            # written again as it was, with the thread counts its steps were taken with; this
            # process's were recorded, and a note said the result may differ in its last bits
            threads = saved
        elif saved is not None and saved != threads:
            log(f"note: {os.path.basename(source)} was written with {_threads_text(saved)}, this process has "
                f"{_threads_text(threads)}: the result may differ in the last bits from an unbroken run "
                f"({_same_threads_hint(saved)} for the same bits)")

    digest = _run_digest(config)

    def write_checkpoint(step, model, optimizer, history):
        if step % t["checkpoint_every"] == 0 and step < t["steps"]:
            _save_state(checkpoint, step, optimizer, rng, history, threads, digest)

    try:
        history = fit(model, data, steps=t["steps"], batch_size=t["batch_size"], t0=t["t0"], T=t["T"], rng=rng,
                      weighting=t["weighting"], time_distribution=t["time_distribution"], optimizer=optimizer,
                      progress=progress, callback=write_checkpoint, history=history, start_step=start)
    except TrainingDivergedError as exc:
        if exc.happened is None:
            raise
        # fit's message says the model in memory keeps its parameters, which a run does not
        # (a new run's folder goes), and may advise an optimizer's clip_norm, not a setting of runs
        remedies = [r for r in exc.remedies if "clip_norm" not in r]
        raise RunError(f"training diverged: {exc.happened}" + (f" (try {_either(remedies)})" if remedies else "")
                       + exc.detail) from None
    # The order makes model.npz mean "finished": a kill between any two writes leaves a run
    # that --resume completes (from the checkpoint, or from the final state without a step)
    # and nothing that reads as finished before it is. The samples and reports of an older
    # model go first; then the loss history and the final state; then the checkpoint, which
    # the final state replaces; the model last.
    if start < t["steps"]:
        _remove(folder, ("samples.npy",) + _EVALUATION_FILES)
    write_json(_path(folder, "history.json"), {"loss": history.loss})
    _save_state(final, t["steps"], optimizer, rng, history, threads, digest)
    if os.path.exists(checkpoint):
        os.unlink(checkpoint)
    save(model, _path(folder, "model.npz"), ema=optimizer.ema,
         extra={"run": "trained by sgm_ref.runs.train", "steps": t["steps"], "run_digest": digest})
    return history


def _run_digest(config):
    """A digest of every setting that decides a run's trained model (not its step count,
    which an extension raises, nor how often it checkpoints): load_model refuses a
    model.npz whose digest is another's (a model copied from another run, or a config.json
    edited after training)."""
    keys = ("target_definition", "seed", "process", "data", "model")
    train = {k: v for k, v in config["train"].items() if k not in ("steps", "checkpoint_every")}
    text = json.dumps({**{k: config[k] for k in keys}, "train": train}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _remove(folder, names):
    for name in names:
        if os.path.exists(_path(folder, name)):
            os.unlink(_path(folder, name))


def load_model(folder, config=None):
    """The run's trained model (its parameter average when one was kept).

    config: the run's configuration if already read (read_config(folder) otherwise).

    Raises
    ------
    RunError
        No model.npz; a damaged one (a member of its archive fails its CRC-32, or it is
        cut short: the message says how `train --resume` writes it again); a model of
        another run, of other settings, or of another step count than config.json's.
    sgm_ref.io.ModelFileError (a ValueError)
        An intact model.npz this version cannot read (a newer format, say).
    """
    path = _path(folder, "model.npz")
    if not os.path.exists(path):
        raise RunError(f"{os.fspath(folder)} has no model.npz: train it first (`sgm-ref train`, or "
                       "`sgm-ref train --resume` if training was interrupted)")
    config = read_config(folder) if config is None else config
    # a damaged file, also in a member not read here (the parameters beside their average): it was
    # refused naming no way out, and `train --resume` called the run trained (finished_steps)
    damage = _archive_damage(path)
    if damage is not None:
        raise RunError(f"{path} is damaged ({damage}): {_model_remedy(folder)}")
    model = load(path, use_ema=config["train"]["ema_decay"] > 0)
    m = config["model"]
    if (model.network.d, model.process, model.dtype.name, model.parameterization) != (
            from_record(config["target_definition"]).dim, process_from_dict(config["process"]), m["dtype"],
            m["parameterization"]):
        raise RunError(f"{path} does not match the run's config.json (dimension, process, dtype or "
                       "parameterization differ): was it copied from another run?")
    built = MLP(model.network.d, (m["width"],) * m["depth"], m["activation"], m["time_embedding"], dtype=m["dtype"],
                rng=0).config()
    if model.network.config() != built:
        raise RunError(f"{path} is a network of another architecture than config.json's (widths, activation or time "
                       "embedding differ): was it copied from another run?")
    extra = read_header(path).get("extra", {})
    digest = extra.get("run_digest") if isinstance(extra, dict) else None
    if digest is not None and digest != _run_digest(config):  # models of older versions carry none
        raise RunError(f"{path} was trained under other settings than config.json's (target, seed, network or "
                       "training): a model from another run, or config.json edited after training; train the "
                       "run again")
    trained = extra.get("steps") if isinstance(extra, dict) else None
    if isinstance(trained, int) and trained > config["train"]["steps"]:  # a run is extended, never shortened
        # it said "finish the training with --resume", which then refused: "past the steps of config.json"
        raise RunError(f"{path} is trained for {trained} steps but config.json asks for {config['train']['steps']}, "
                       "fewer (config.json edited since the training? a run is extended, never shortened): restore "
                       f"its \"steps\" to {trained}, or run `sgm-ref train {_shell_path(folder)} --resume --steps "
                       f"{trained}`")
    if isinstance(trained, int) and trained != config["train"]["steps"]:  # an extension under way
        back = (f", or give it up with `sgm-ref train {_shell_path(folder)} --resume --steps {trained}`"
                if _interrupted_extension(folder, config) == trained else "")
        raise RunError(f"{path} is trained for {trained} steps but config.json asks for {config['train']['steps']}: "
                       f"finish the training with `sgm-ref train {_shell_path(folder)} --resume`{back}")
    return model


def update_section(config, section, options):
    """config with config[section] updated by options (None values ignored), validated."""
    updated = _make_config({**{k: config[k] for k in DEFAULTS}, section: {**config[section], **options}},
                           (section,))
    return {**updated, **{k: config[k] for k in _HEADER_KEYS if k in config}}


# -- sampling ----------------------------------------------------------------------------

def sample_run(folder, options=None, progress=None):
    """Draw the run's samples with its model; options update config["sample"] first.

    Writes samples.npy and the updated config.json, holding the folder's lock; returns
    the samples. progress: a bar over the sampler's steps on stderr (None: only when
    stderr is a terminal); it changes no bits.
    """
    with writing(folder):
        config = read_config(folder)
        if options:
            config = update_section(config, "sample", options)  # which checks the sizes
        else:  # `sgm-ref sample RUN`: the run's own count, asked before the work (read_config asks no sizes)
            _check_sizes(config, from_record(config["target_definition"]).dim, ("sample",))
        model = load_model(folder, config)
        s = config["sample"]
        rng = streams(config["seed"])["sample"]
        bar = progress_bar(s["n_steps"], progress, "sampling")
        try:
            score = model if bar is None else _counted(model, bar, 2 if s["method"] == "probability_flow" else 1)
            x = sample(score, model.process, s["n"], model.network.d, rng, T=s["T"], t0=s["t0"],
                       n_steps=s["n_steps"], method=s["method"], grid=s["grid"], dtype=model.dtype)
        finally:
            if bar is not None:
                bar.close()
        # old samples and their evaluation go first, then the settings, then the new samples:
        # a kill in between leaves no samples rather than samples beside the wrong settings
        _remove(folder, ("samples.npy",) + _EVALUATION_FILES)
        config = {**config, "samples_digest": _samples_digest(config), "samples_sha256": _array_sha256(x)}
        write_json(_path(folder, "config.json"), config)
        atomic_write(_path(folder, "samples.npy"), lambda f: np.save(f, x))
        return x


def _samples_digest(config):
    """A digest of the settings that decide a run's samples: the model's (_run_digest) and the
    sampler's (config["sample"]: n, method, grid, n_steps, t0, T). sample_run records it in
    config.json beside samples.npy; load_samples refuses samples whose recorded digest is not
    that of config.json's settings (its "sample" section edited by hand after sampling, which
    left the report naming, and the TV bound certifying, a sampler that did not draw them)."""
    text = json.dumps({"run": _run_digest(config), "sample": config["sample"]}, sort_keys=True, allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _array_sha256(x):
    """The SHA-256 of an array's numbers (C order): what sample_run records of samples.npy in
    config.json ("samples_sha256"), so that load_samples reads the numbers it wrote or none."""
    return hashlib.sha256(np.ascontiguousarray(x).data).hexdigest()


def _counted(score, bar, calls_per_step):
    """score, advancing bar by one step every calls_per_step calls."""
    calls = 0

    def counted(x, t):
        nonlocal calls
        s = score(x, t)
        calls += 1
        if calls % calls_per_step == 0:
            bar.update(1)
        return s

    return counted


def _npy_error_text(exc):
    """np.load's error on a damaged .npy file, as one line: bytes without NumPy's magic (one
    flipped bit of it) are taken for a pickle, and numpy's advice to load them "unsafely" with
    allow_pickle is not for a file sgm_ref wrote."""
    if isinstance(exc, ValueError) and "contains pickled" in str(exc):
        return "not an .npy array: its first bytes are not NumPy's (a damaged or foreign file)"
    return " ".join(str(exc).split())


def load_samples(folder, d):
    """samples.npy of a run: the (n, d) array of finite numbers `sgm-ref sample` writes, n the
    configured sample count and its dtype the model's (float64 or float32), drawn with the
    settings config.json has now (its "samples_digest", _samples_digest) and holding the
    numbers sample_run wrote (its "samples_sha256", _array_sha256; runs of older versions
    record neither)."""
    path = _path(folder, "samples.npy")
    if not os.path.exists(path):
        raise RunError(f"{os.fspath(folder)} has no samples.npy: run `sgm-ref sample` first")
    try:
        x = np.load(path, allow_pickle=False)
    except _READ_ERRORS as exc:  # numpy's oversized-header message spans lines: one line here
        raise RunError(f"{path} is unreadable ({_npy_error_text(exc)})") from None
    if not isinstance(x, np.ndarray):
        x.close()
        raise RunError(f"{path} is an .npz archive, not an .npy array; run `sgm-ref sample` again")
    if x.ndim != 2 or x.shape[1] != d or x.dtype not in (np.dtype(np.float64), np.dtype(np.float32)):
        raise RunError(f"{path} has shape {x.shape} and dtype {x.dtype}; expected (n, {d}) float64 or float32 "
                       "(what `sgm-ref sample` writes): run it again")
    if not np.all(np.isfinite(x)):  # the rows named: which of 10,000 points, and how many
        rows = np.flatnonzero(~np.all(np.isfinite(x), axis=1))
        raise RunError(f"{path} holds non-finite values ({rows.size} of {x.shape[0]} rows, the first row "
                       f"{rows[0]}: {x[rows[0]].tolist()!r:.120}); run `sgm-ref sample` again")
    config = read_config(folder)
    n, dtype = config["sample"]["n"], config["model"]["dtype"]
    if x.shape[0] != n or x.dtype != np.dtype(dtype):
        raise RunError(f"{path} holds {x.shape[0]} {x.dtype} points, but config.json's sampler draws {n} {dtype} "
                       "points: not this run's samples; run `sgm-ref sample` again")
    if "samples_digest" in config and config["samples_digest"] != _samples_digest(config):  # older runs have none
        raise RunError(f"{path} was drawn with other sampler settings than config.json's \"sample\" section "
                       f"(edited since sampling): draw the samples of these settings with `sgm-ref sample "
                       f"{_shell_path(folder)}`, or restore config.json")
    # a flipped bit or a replaced file keeps shape, dtype and finiteness: the numbers are checked
    if "samples_sha256" in config and config["samples_sha256"] != _array_sha256(x):  # older runs have none
        raise RunError(f"{path} does not hold the numbers `sgm-ref sample` wrote (its SHA-256 is not config.json's "
                       f"\"samples_sha256\": damaged or replaced since): draw them again with `sgm-ref sample "
                       f"{_shell_path(folder)}`")
    return x
