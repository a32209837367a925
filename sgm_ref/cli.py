"""The `sgm-ref` command. It only wires the library together; nothing imports it.

    sgm-ref demo [RUN]                 train, sample and evaluate on the 2-D ring
    sgm-ref train RUN [options]        a run folder with config.json and model.npz
    sgm-ref train RUN --resume         continue a killed training run
    sgm-ref sample RUN [options]       samples.npy
    sgm-ref evaluate RUN [options]     report.json, report.md, plots
    sgm-ref audit --score MOD:FN --target SPEC   score error and certified TV bound of any score
    sgm-ref experiment rate OUT [--quick]   error against n for several d (the paper's claim)

Errors in the input (a ValueError anywhere in the library) print one line on stderr and
exit with status 2; nothing is left half-written (see sgm_ref.runs).
"""

import argparse
import importlib
import importlib.util
import os
import shutil
import sys
import time
import warnings

import numpy as np

from . import __version__

EXIT_BAD_INPUT = 2


class _UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse, with usage mistakes raised (one line on stderr, exit 2) instead of printed."""

    def error(self, message):
        raise _UsageError(f"{message} (see {self.prog} --help)")


def _integer(text):
    """argparse type of the counts: an int of at most 2**53 (more is a typo, and overflows numpy)."""
    value = int(text)
    if abs(value) > 2**53:
        raise argparse.ArgumentTypeError(f"{text} is too large (at most 2**53)")
    return value


_integer.__name__ = "int"  # argparse's message for a non-number: "invalid int value: 'ten'"


def _add_training_options(p):
    g = p.add_argument_group("target and training")
    g.add_argument("--target", help="preset (ring, ring:k=6,radius=3,std=0.2, gmm:d=32,k=4,radius=3,seed=0, "
                                    "product:d=8,shift=1.5,std=1) or a JSON file with weights, means, "
                                    "covariances (default ring)")
    g.add_argument("--seed", type=int, help="seed of every random stream of the run (default 0)")
    g.add_argument("--process", choices=("ou", "vp"), help="forward process (default ou)")
    g.add_argument("--beta-min", type=float, help="VP beta(0), with --process vp (default 0.1)")
    g.add_argument("--beta-max", type=float, help="VP beta(1), with --process vp (default 20)")
    g.add_argument("--n", type=_integer, help="training samples drawn from the target (default 10000)")
    g.add_argument("--width", type=_integer, help="hidden width (default 128)")
    g.add_argument("--depth", type=_integer, help="hidden layers (default 3)")
    g.add_argument("--activation", choices=("relu", "silu", "tanh", "softplus"))
    g.add_argument("--time-embedding", choices=("linear", "log", "fourier"))
    g.add_argument("--parameterization", choices=("score", "noise", "residual"))
    g.add_argument("--dtype", choices=("float64", "float32"))
    g.add_argument("--steps", type=_integer, help="optimiser steps (default 12000)")
    g.add_argument("--batch-size", type=_integer)
    g.add_argument("--lr", type=float, help="Adam learning rate (default 2e-3)")
    g.add_argument("--weighting", choices=("none", "sigma2"), help="lambda(t) of the loss (default sigma2)")
    g.add_argument("--time-distribution", choices=("uniform", "log-uniform"))
    g.add_argument("--ema-decay", type=float, help="parameter average used for sampling; 0 turns it off (default 0.999)")
    g.add_argument("--ema-warmup", action=argparse.BooleanOptionalAction,
                   help="average with decay min(ema_decay, (1 + k) / (10 + k)) at step k (default on)")
    g.add_argument("--t0", type=float, help="early-stopping time (default 1e-3)")
    g.add_argument("--T", type=float, help="horizon (default 5 for ou, 1 for vp)")
    g.add_argument("--checkpoint-every", type=_integer, help="steps between checkpoints (default 1000)")


def _add_sampling_options(p):
    g = p.add_argument_group("sampling")
    g.add_argument("--n-samples", type=_integer, help="points to draw (a new run: 10000)")
    g.add_argument("--sampler", choices=("euler_maruyama", "exponential", "probability_flow"),
                   help="(a new run: euler_maruyama)")
    g.add_argument("--grid", choices=("uniform", "geometric"), help="(a new run: geometric)")
    g.add_argument("--n-steps", type=_integer, help="sampler steps (a new run: 300)")


def _add_evaluation_options(p):
    g = p.add_argument_group("evaluation")
    g.add_argument("--bound-n", type=_integer, help="Monte-Carlo pairs per step of the TV bound (default 256)")
    g.add_argument("--profile-n", type=_integer, help="points per time of the score-error profile (default 2000)")
    g.add_argument("--no-plots", action="store_true", help="skip the PNG plots")


def build_parser():
    parser = _Parser(prog="sgm-ref", description="Exact, fast reference implementation of score-based generative models.")
    parser.add_argument("--version", action="version", version=f"sgm-ref {__version__}")
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
    p.add_argument("--resume", action="store_true", help="continue the interrupted run in RUN from its checkpoint")
    _add_training_options(p)

    p = commands.add_parser("sample", help="draw samples.npy with a run's model",
                            description="Options left out keep the run's current sample settings "
                                        "(config.json); those given are saved there.")
    p.add_argument("run")
    _add_sampling_options(p)
    p.add_argument("--t0", type=float, help="early-stopping time (a new run: training's)")
    p.add_argument("--T", type=float, help="horizon (a new run: training's)")

    p = commands.add_parser("evaluate", help="write report.json, report.md and plots for a sampled run")
    p.add_argument("run")
    _add_evaluation_options(p)

    p = commands.add_parser("audit", help="score error and certified TV bound of any score function")
    p.add_argument("--score", required=True, metavar="MODULE:CALLABLE",
                   help="a function s(x (n, d), t (n,)) -> (n, d); MODULE a dotted name or a .py file")
    p.add_argument("--target", required=True, help="the target the score should be the score of")
    p.add_argument("--process", choices=("ou", "vp"), default="ou")
    p.add_argument("--beta-min", type=float, help="VP beta(0), with --process vp (default 0.1)")
    p.add_argument("--beta-max", type=float, help="VP beta(1), with --process vp (default 20)")
    p.add_argument("--t0", type=float, default=1e-3)
    p.add_argument("--T", type=float, help="horizon (default 5 for ou, 1 for vp)")
    p.add_argument("--sampler", choices=("euler_maruyama", "exponential"), default="euler_maruyama")
    p.add_argument("--grid", choices=("uniform", "geometric"), default="geometric")
    p.add_argument("--n-steps", type=_integer, default=300)
    p.add_argument("--profile-n", type=_integer, default=2000)
    p.add_argument("--bound-n", type=_integer, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", metavar="PATH", help="also write the report as JSON")

    p = commands.add_parser("experiment", help="the paper's claim as an experiment")
    experiments = p.add_subparsers(dest="experiment", metavar="EXPERIMENT", required=True)
    p = experiments.add_parser("rate", help="score error against n for several d (sgm_ref.experiments.rate)",
                               description="Each cell (family, d, n, seed) trains a score model on n samples and "
                                           "records its integrated score error and certified TV bound. Results "
                                           "are appended to OUT/results.jsonl as cells finish; rerunning with the "
                                           "same OUT skips the finished cells.")
    p.add_argument("out", help="output folder (created, or continued)")
    p.add_argument("--quick", action="store_true", help="a small grid that runs in a few minutes on 2 cores")
    p.add_argument("--families", help="comma-separated: mixture,product,tilted")
    p.add_argument("--d", help="comma-separated dimensions (full: 2,8,32,128)")
    p.add_argument("--n", help="comma-separated sample sizes (full: 500,1000,...,32000)")
    p.add_argument("--seeds", help="comma-separated seeds (full: 0,1,2)")
    p.add_argument("--steps", type=_integer, help="training steps per cell (full: 3000; quick: 1500)")
    p.add_argument("--workers", type=_integer, default=2, help="local worker processes (default 2)")
    p.add_argument("--retry-failed", action="store_true", help="run again the cells recorded as failed")
    p.add_argument("--scheduler", metavar="ADDRESS",
                   help="submit the cells to this Dask distributed scheduler instead (pip install \"sgm_ref[dask]\")")
    return parser


def _int_list(text, name):
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers, got {text!r}") from None


def cmd_experiment(args):
    from .experiments import rate, sweep

    families = None if args.families is None else [f.strip() for f in args.families.split(",")]
    grid = rate.make_grid(args.quick, families, _int_list(args.d, "--d"), _int_list(args.n, "--n"),
                          _int_list(args.seeds, "--seeds"), args.steps)
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    tic = time.perf_counter()
    sweep.run_sweep(args.out, grid, workers=args.workers, scheduler=args.scheduler, retry_failed=args.retry_failed,
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
        return {"name": "VP", "beta_min": 0.1 if args.beta_min is None else args.beta_min,
                "beta_max": 20.0 if args.beta_max is None else args.beta_max}
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
    return [f"--{name.replace('_', '-')}" for name in names if getattr(args, name, None) is not None]


def _say(message):
    print(message, flush=True)


def _note(message):
    print(f"sgm-ref: {message}", file=sys.stderr, flush=True)


def _train(folder, steps=None, resume=False):
    from . import runs

    with runs.writing(folder):  # runs.train takes it again; held here so the settings printed are those trained
        tic = time.perf_counter()
        config = runs.read_config(folder)
        total = runs.check_total_steps(folder, config, steps)
        _say(f"{'continuing the training to' if resume else 'training'} {total} steps on {config['target']}")
        history = runs.train(folder, steps=steps, log=_note)
    _say(f"trained in {time.perf_counter() - tic:.1f} s, final loss {np.mean(history.loss[-100:]):.4g}")


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
            _say(f"{args.run} is already trained ({finished} steps); extend it with --resume --steps N")
            return 0
        _train(args.run, steps=args.steps, resume=True)
        return 0
    config = runs.make_config(_training_options(args))
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
        report, written, note = evaluate_run(args.run, options, plots=not args.no_plots)
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
    with runs.new_run(args.run, config, args.force):  # on failure, removes what it wrote
        _train(args.run)
        cmd_sample(argparse.Namespace(run=args.run, n_samples=None, sampler=None, grid=None, n_steps=None, t0=None,
                                      T=None))
        cmd_evaluate(argparse.Namespace(run=args.run, bound_n=None, profile_n=None, no_plots=args.no_plots))
    return 0


def _load_callable(spec):
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--score must look like MODULE:CALLABLE (e.g. mymodels:score), got {spec!r}")
    try:
        if module_name.endswith(".py"):
            if not os.path.isfile(module_name):
                raise ValueError(f"--score: no file {module_name}")
            loader = importlib.util.spec_from_file_location("_sgm_ref_audited", module_name)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())  # as `python -m` would: modules beside the user
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--score: cannot import {module_name} ({exc})") from None
    except Exception as exc:  # the user's module failed while loading: say so in one line
        raise ValueError(f"--score: importing {module_name} failed: {type(exc).__name__}: {exc}") from None
    try:
        fn = getattr(module, attr)
    except AttributeError:
        raise ValueError(f"--score: {module_name} has no attribute {attr!r}") from None
    if not callable(fn):
        raise ValueError(f"--score: {module_name}:{attr} is not callable")

    def score(x, t):
        try:
            return fn(x, t)
        except ValueError:
            raise
        except Exception as exc:
            raise ValueError(f"--score {spec} raised {type(exc).__name__}: {exc}") from None

    return score


def cmd_audit(args):
    from ._validation import check_count
    from .evaluation import bound_text, score_report
    from .processes import process_from_dict
    from .targets.spec import from_spec, to_record

    target = from_spec(args.target)
    process = process_from_dict(_process(args))
    T = args.T if args.T is not None else (5.0 if args.process == "ou" else 1.0)
    if args.seed < 0:
        raise ValueError(f"--seed must be an integer >= 0, got {args.seed}")
    for name, value, low in (("--n-steps", args.n_steps, 1), ("--profile-n", args.profile_n, 2),
                             ("--bound-n", args.bound_n, 2)):
        check_count(value, name, minimum=low)
    if args.json:  # refused now, not after the work
        parent = os.path.dirname(os.path.abspath(args.json))
        if os.path.isdir(args.json) or not os.path.isdir(parent):
            raise ValueError(f"--json {args.json}: " + ("is a folder; give a file name" if os.path.isdir(args.json)
                                                        else f"its folder {parent} does not exist"))
    score = _load_callable(args.score)
    report = score_report(score, target, process, t0=args.t0, T=T, method=args.sampler, grid=args.grid,
                          n_steps=args.n_steps, rng=np.random.default_rng(args.seed), profile_n=args.profile_n,
                          bound_n=args.bound_n)
    report = {"score": args.score, "target": args.target, "target_definition": to_record(target),
              "process": process.to_dict(), "t0": args.t0, "T": T, "seed": args.seed, "profile_n": args.profile_n,
              "bound_n": args.bound_n, "sampler": {"method": args.sampler, "grid": args.grid, "n_steps": args.n_steps},
              **report}
    se, b = report["score_error"], report["tv_bound"]
    _say(f"score {args.score} against the exact score of {args.target} (d = {target.dim}), {process!r}")
    _say("       t      E|s - grad log p_t|^2     relative")
    for t, v, s, r in zip(se["t"], se["error"], se["standard_error"], se["relative"]):
        _say(f"{t:10.4g}   {v:12.4g} ± {s:<9.2g}   {r:9.2%}")
    _say(f"integral over [{args.t0:g}, {T:g}]: {se['integral']['value']:.4g} ± {se['integral']['standard_error']:.2g}")
    _say(f"certified TV bound for {args.sampler}, {args.n_steps} {args.grid} steps: {bound_text(b)} "
         f"(early stopping {b['tv_early_stopping']:.3g}, KL prior {b['kl_prior']:.3g}, path KL {b['kl_path']:.3g})")
    if args.json:
        from .runs import write_json
        write_json(args.json, report)
    return 0


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample, "evaluate": cmd_evaluate, "audit": cmd_audit,
            "experiment": cmd_experiment}


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 2 bad input, 130 interrupted)."""
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help()
            return 0
        with warnings.catch_warnings():
            # overflow on the way to a non-finite loss is reported as an error, once
            warnings.simplefilter("ignore", RuntimeWarning)
            return COMMANDS[args.command](args)
    except (ValueError, OSError, MemoryError, OverflowError) as exc:  # the library's bad-input errors are ValueErrors
        if isinstance(exc, MemoryError):
            message = "out of memory: use a smaller --n, --width, --batch-size or --n-samples"
        elif isinstance(exc, OSError):
            message = f"{exc.strerror or exc}: {exc.filename or ''}"
        else:
            message = str(exc)
        print(f"sgm-ref: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        run = getattr(args, "run", None) or "RUN"
        hint = {"train": f"continue with `sgm-ref train {run} --resume`",
                "demo": f"continue with `sgm-ref train {run} --resume`, then `sgm-ref sample {run}` and "
                        f"`sgm-ref evaluate {run}`",
                "experiment": "rerun the same command to continue; finished cells are kept"}.get(
                    getattr(args, "command", None), "")
        print(f"sgm-ref: interrupted{'; ' + hint if hint else ''}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
