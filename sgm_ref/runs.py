"""Run folders: one model trained, sampled and evaluated, reproducible from config.json.

    RUN/config.json      every setting (target spec, seed, network, training, sampler)
    RUN/checkpoint.npz   training state, rewritten every checkpoint_every steps while
                         training runs (removed when model.npz is written)
    RUN/model.npz        the trained model (sgm_ref.io format, the EMA stored beside it)
    RUN/history.json     the training loss at every step
    RUN/samples.npy      the sampler's output, shape (n, d)
    RUN/report.json      every metric with its standard error
    RUN/report.md        the same for a reader; RUN/*.png plots when matplotlib is installed

Every file is written atomically (a temporary file renamed onto its name), so a killed
run leaves complete files only. Randomness comes from one seed:
SeedSequence(seed).spawn(5) gives independent streams for the training data, the
initialisation, training, sampling and evaluation, so re-sampling or re-evaluating never
changes the model and each stage is reproducible by itself. Training resumed from a
checkpoint ends with the same bits as an uninterrupted run.
"""

import copy
import json
import os
import platform

import numba
import numpy as np
import scipy

from . import __version__
from ._validation import check_count, check_real, check_time_range
from .io import atomic_write, load, save
from .nn import MLP
from .optim import Adam
from .processes import process_from_dict
from .samplers import METHODS, sample, time_grid
from .score_model import ScoreModel
from .targets.spec import from_record, from_spec, to_record
from .train import History, fit

__all__ = ["DEFAULTS", "RUN_FILES", "RunError", "make_config", "update_section", "build", "streams", "create",
           "read_config", "train", "load_model", "sample_run", "load_samples", "write_json"]

FORMAT = "sgm_ref.run"
FORMAT_VERSION = 1

# the files a run writes; --force replaces exactly these
RUN_FILES = ("config.json", "checkpoint.npz", "model.npz", "history.json", "samples.npy", "report.json",
             "report.md", "samples.png", "loss.png", "score_error.png")
# what a new sampling makes stale
_EVALUATION_FILES = ("report.json", "report.md", "samples.png", "loss.png", "score_error.png")
# keys of config.json besides the sections of DEFAULTS
_HEADER_KEYS = ("format", "version", "sgm_ref", "environment")

_STREAMS = ("data", "init", "train", "sample", "evaluate")

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
        Unknown keys, or any value the library would refuse (the message names it).
    """
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
        config["target_definition"] = to_record(from_spec(config["target"]))
    config.update(format=FORMAT, version=FORMAT_VERSION, sgm_ref=__version__)
    build(config)  # everything the run will construct, constructed once to validate it
    return config


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
    t = config["train"]
    check_time_range(t["t0"], t["T"], process)
    check_count(t["steps"], "steps")
    check_count(t["batch_size"], "batch_size")
    check_real(t["lr"], "lr", low=0.0, low_open=True)
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
    time_grid(s["T"], s["t0"], s["n_steps"], s["grid"], process)
    e = config["evaluate"]
    for key in ("n", "two_sample_n", "profile_n", "bound_n"):
        check_count(e[key], f"evaluate {key}", minimum=2)
    check_count(e["profile_times"], "evaluate profile_times")
    check_count(e["bins"], "evaluate bins")
    return target, process, model


def streams(seed):
    """Independent Generators for the stages of a run, by name (module docstring)."""
    children = np.random.SeedSequence(seed).spawn(len(_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(_STREAMS, children)}


# -- the folder ------------------------------------------------------------------------

def _path(folder, name):
    return os.path.join(os.fspath(folder), name)


def write_json(path, obj):
    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def create(folder, config, force=False):
    """Make the run folder and write config.json (the config must come from make_config).

    An existing folder is refused unless force, which removes the run files listed in
    RUN_FILES from it (nothing else).
    """
    folder = os.fspath(folder)
    if os.path.exists(folder):
        if not os.path.isdir(folder):
            raise RunError(f"{folder} exists and is not a folder; choose another output folder")
        if not force:
            raise RunError(f"output folder {folder} already exists; pass --force to replace its run files, "
                           "or choose another folder")
        present = [name for name in RUN_FILES if os.path.exists(_path(folder, name))]
        if present and not _is_run(folder):
            raise RunError(f"{folder} holds {', '.join(present)} but is not an sgm_ref run folder; "
                           "--force only replaces the files of a run: choose another folder")
        for name in RUN_FILES:
            if os.path.exists(_path(folder, name)):
                os.unlink(_path(folder, name))
    else:
        parent = os.path.dirname(os.path.abspath(folder))
        if not os.path.isdir(parent):
            why = "is not a folder" if os.path.exists(parent) else "does not exist"
            raise RunError(f"cannot create {folder}: its parent {parent} {why}")
        os.mkdir(folder)
    config = dict(config, environment={"python": platform.python_version(), "numpy": np.__version__,
                                       "numba": numba.__version__, "scipy": scipy.__version__,
                                       "machine": platform.machine(), "cpu_count": os.cpu_count()})
    write_json(_path(folder, "config.json"), config)


def _is_run(folder):
    try:
        with open(_path(folder, "config.json"), encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def read_config(folder):
    """config.json of a run folder, checked and validated."""
    path = _path(folder, "config.json")
    if not os.path.isdir(os.fspath(folder)):
        raise RunError(f"run folder {os.fspath(folder)} does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError:
        raise RunError(f"{os.fspath(folder)} is not a run folder (no readable config.json); "
                       "create one with `sgm-ref train`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise RunError(f"{path} is not an sgm_ref run configuration")
    if config.get("version") != FORMAT_VERSION:
        raise RunError(f"{path} has run format version {config.get('version')!r}; this sgm_ref reads {FORMAT_VERSION}")
    unknown = set(config) - set(DEFAULTS) - set(_HEADER_KEYS)
    if unknown:
        raise RunError(f"{path} has unknown key(s) {sorted(unknown)}")
    try:
        build(config)
    except (KeyError, TypeError) as exc:
        raise RunError(f"{path} is incomplete or malformed ({exc!r})") from None
    return config


# -- training, with checkpoints --------------------------------------------------------

def _optimizer(model, config):
    t = config["train"]
    if not t["ema_decay"]:  # 0 turns the average off
        return Adam(model.params, lr=t["lr"])
    return Adam(model.params, lr=t["lr"], ema_decay=t["ema_decay"], ema_warmup=t["ema_warmup"])


def _save_checkpoint(path, step, optimizer, rng, history):
    arrays = dict(optimizer.state_dict())
    arrays["step"] = np.int64(step)
    arrays["loss"] = np.asarray(history.loss, dtype=np.float64)
    arrays["rng_state"] = np.array(json.dumps(rng.bit_generator.state))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _load_checkpoint(path, optimizer, rng):
    """Restore optimiser (and so the parameters) and rng; return (step, history)."""
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: f[key] for key in f.files}
        step = int(arrays.pop("step"))
        loss = arrays.pop("loss").tolist()
        rng.bit_generator.state = json.loads(str(arrays.pop("rng_state")))
        optimizer.load_state_dict(arrays)
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise RunError(f"checkpoint {path} is unreadable ({exc}); remove it to restart training from step 0") from None
    if len(loss) != step:
        raise RunError(f"checkpoint {path} is inconsistent (step {step}, {len(loss)} losses)")
    return step, History(loss=loss)


def _remove_stale_temporaries(folder):
    """Temporary files of an atomic write that a kill interrupted (never renamed into place)."""
    for name in os.listdir(folder):
        if name.startswith(".tmp-"):
            os.unlink(_path(folder, name))


def train(folder, progress=None):
    """Train the run in folder from its config.json; continue from checkpoint.npz if present.

    Writes model.npz (and the EMA, when enabled) and history.json, then removes the
    checkpoint. Returns the History.
    """
    config = read_config(folder)
    _remove_stale_temporaries(folder)
    rngs = streams(config["seed"])
    target, process, model = build(config, rngs["init"])
    t = config["train"]
    data = target.sample(config["data"]["n"], rngs["data"], dtype=model.dtype)
    optimizer = _optimizer(model, config)
    rng = rngs["train"]
    checkpoint = _path(folder, "checkpoint.npz")
    start, history = 0, None
    if os.path.exists(checkpoint):
        start, history = _load_checkpoint(checkpoint, optimizer, rng)

    def write_checkpoint(step, model, optimizer, history):
        if step % t["checkpoint_every"] == 0 and step < t["steps"]:
            _save_checkpoint(checkpoint, step, optimizer, rng, history)

    history = fit(model, data, steps=t["steps"], batch_size=t["batch_size"], t0=t["t0"], T=t["T"], rng=rng,
                  weighting=t["weighting"], time_distribution=t["time_distribution"], optimizer=optimizer,
                  progress=progress, callback=write_checkpoint, history=history, start_step=start)
    save(model, _path(folder, "model.npz"), extra={"run": "trained by sgm_ref.runs.train", "steps": t["steps"]},
         ema=optimizer.ema)
    write_json(_path(folder, "history.json"), {"loss": history.loss})
    if os.path.exists(checkpoint):
        os.unlink(checkpoint)
    return history


def load_model(folder, config=None):
    """The run's trained model (its parameter average when one was kept).

    config: the run's configuration if already read (read_config(folder) otherwise).
    """
    path = _path(folder, "model.npz")
    if not os.path.exists(path):
        raise RunError(f"{os.fspath(folder)} has no model.npz: train it first (`sgm-ref train`, or "
                       "`sgm-ref train --resume` if training was interrupted)")
    config = read_config(folder) if config is None else config
    model = load(path, use_ema=config["train"]["ema_decay"] > 0)
    m = config["model"]
    if (model.network.d, model.process, model.dtype.name, model.parameterization) != (
            from_record(config["target_definition"]).dim, process_from_dict(config["process"]), m["dtype"],
            m["parameterization"]):
        raise RunError(f"{path} does not match the run's config.json (dimension, process, dtype or "
                       "parameterization differ): was it copied from another run?")
    return model


def update_section(config, section, options):
    """config with config[section] updated by options (None values ignored), validated."""
    updated = make_config({**{k: config[k] for k in DEFAULTS}, section: {**config[section], **options}})
    return {**updated, **{k: config[k] for k in _HEADER_KEYS if k in config}}


# -- sampling ----------------------------------------------------------------------------

def sample_run(folder, options=None):
    """Draw the run's samples with its model; options update config["sample"] first.

    Writes samples.npy and the updated config.json; returns the samples.
    """
    config = read_config(folder)
    if options:
        config = update_section(config, "sample", options)
    model = load_model(folder, config)
    s = config["sample"]
    rng = streams(config["seed"])["sample"]
    x = sample(model, model.process, s["n"], model.network.d, rng, T=s["T"], t0=s["t0"], n_steps=s["n_steps"],
               method=s["method"], grid=s["grid"], dtype=model.dtype)
    # old samples and their evaluation go first, then the settings, then the new samples:
    # a kill in between leaves no samples rather than samples beside the wrong settings
    for name in ("samples.npy",) + _EVALUATION_FILES:
        if os.path.exists(_path(folder, name)):
            os.unlink(_path(folder, name))
    write_json(_path(folder, "config.json"), config)
    atomic_write(_path(folder, "samples.npy"), lambda f: np.save(f, x))
    return x


def load_samples(folder, d):
    path = _path(folder, "samples.npy")
    if not os.path.exists(path):
        raise RunError(f"{os.fspath(folder)} has no samples.npy: run `sgm-ref sample` first")
    try:
        x = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise RunError(f"{path} is unreadable ({exc})") from None
    if x.ndim != 2 or x.shape[1] != d or x.dtype.kind != "f":
        raise RunError(f"{path} has shape {x.shape} and dtype {x.dtype}; expected (n, {d}) floats")
    return x
