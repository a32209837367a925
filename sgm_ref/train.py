"""The training loop: empirical denoising score matching with Adam.

Each step draws a batch of data indices (with replacement), times on [t0, T] and noise,
all from the one rng passed in, evaluates the loss and its gradient (sgm_ref.losses),
and takes an Adam step (sgm_ref.optim). Same data, seed and thread count -> same bits.
"""

import sys
from dataclasses import dataclass, field

import numpy as np

from ._validation import (check_count, check_points, check_progress, check_real, check_rng, check_time_range,
                          fits_in_memory)
from .losses import TIME_DISTRIBUTIONS, TIME_SAMPLINGS, WEIGHTINGS, _draw_importance_times, _draw_times, _dsm_loss
from .kernels.sampler import standard_normal_float32_into, standard_normal_into
from .optim import Adam, NonFiniteGradientError, NonFiniteStepError
from .score_model import ScoreModel

__all__ = ["fit", "History", "TrainStep", "TrainingDivergedError", "progress_bar"]


# float64 batches of at least this many noise numbers are drawn by the numba loop (same bits;
# measured crossover ~600 numbers: 7.6 us numba vs 5.3 us numpy for 512, 104 vs 360 us for 32768)
_NUMBA_NORMALS_FROM = 1024
# float32 noise is numpy's float32 ziggurat (its own stream), compiled: 3.2 ns per number against
# 8.9 for the Generator method, after ~7 us to hand the Generator to numba (crossover ~1,250 numbers:
# 10.4 us numba vs 9.2 us numpy for 1024, 13.5 vs 18.1 us for 2048, 109 vs 282 us for 32768)
_NUMBA_FLOAT32_NORMALS_FROM = 1536


class TrainingDivergedError(ValueError, FloatingPointError):
    """The loss, gradient or update became non-finite; the model keeps its last finite parameters.

    But for an update that Adam refused after the fact (lr <= 1 and weight_decay <= 1: its
    message says so), which leaves that update's values in the parameters (Adam.step).

    Attributes: step (the step that failed); and, for a non-finite or oversized loss or
    gradient, happened ("the loss became non-finite at step 2"), remedies (the settings
    to try, in fit's names: "a smaller lr", ...) and detail ("; the batch: ..." or
    "; Adam: ...", or ""), from which a caller without fit's arguments (the command
    line) words its own message; None, (), "" for a non-finite update.
    """

    def __init__(self, message, step, happened=None, remedies=(), detail=""):
        super().__init__(message)
        self.step = step
        self.happened, self.remedies, self.detail = happened, tuple(remedies), detail

    def __reduce__(self):  # pickle (a worker process's error) with every argument, not args alone
        return type(self), (str(self), self.step, self.happened, self.remedies, self.detail), self.__dict__


def _either(options):
    """'a', 'a or b', 'a, b, or c': the remedies of a message."""
    options = list(options)
    if len(options) <= 2:
        return " or ".join(options)
    return ", ".join(options[:-1]) + ", or " + options[-1]


@dataclass
class History:
    """What fit records: the loss per step and the periodic evaluations."""

    loss: list = field(default_factory=list)
    eval_steps: list = field(default_factory=list)
    eval_values: list = field(default_factory=list)
    optimizer: Adam = None

    def as_dict(self):
        return {"loss": list(self.loss), "eval_steps": list(self.eval_steps), "eval_values": list(self.eval_values)}


def progress_bar(total, progress, desc, initial=0):
    """A tqdm bar over `total` steps on stderr, starting at `initial`, or None.

    progress: True, False, or None for "only when stderr is a terminal" (no bar in
    logs and pipes); anything else is refused ("no" was read as True and showed a bar,
    an array met NumPy's "truth value of an array ... is ambiguous").
    """
    check_progress(progress)
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    from tqdm.auto import tqdm  # imported here: only runs that show a bar pay for it

    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False)


class TrainStep:
    """One denoising score matching step with Adam, holding its buffers.

    Calling it with a Generator draws batch indices (with replacement), times on
    [t0, T] (with their importance weights if time_sampling is "defensive") and noise,
    in that order, computes the loss and gradient
    (sgm_ref.losses) and takes an optimiser step; it returns the loss. The batch,
    noise, gradient and network buffers are allocated once; per call only a few
    vectors of batch length (indices, times, importance weights, coefficients) are made.

    Raises NonFiniteGradientError (args[0] "loss" or "gradient"; args[1] the batch's
    sizes for the loss, the optimiser's reason for the gradient) before any parameter
    changes if the loss or the gradient is not finite (or the gradient too large for
    Adam's second moment), and Adam's NonFiniteStepError if a finite gradient gives a
    non-finite update (see Adam.step for the state it leaves). A loss that is not finite
    because model.params already holds a NaN or inf raises a ValueError naming the first
    one instead (no step diverged).
    """

    def __init__(self, model, data, batch_size, t0, T, optimizer, weighting="none",
                 time_distribution="uniform", time_sampling="direct"):
        net = model.network
        self.data = check_points(data, "data", d=net.d)
        if self.data.shape[0] == 0:
            raise ValueError("data must have at least one row (the training samples)")
        if self.data.dtype != net.dtype:
            # the dtype passed, not check_points' promotion of integers to float64 (int64 data for a
            # float32 model was reported as "got float64"); as dsm_loss words it
            given = getattr(data, "dtype", None)
            given = np.asarray(data).dtype if given is None else given
            raise ValueError(f"data must have dtype {net.dtype.name} (the model's), got {given}; pass "
                             f"np.asarray(data, dtype=np.{net.dtype.name})")
        self.batch_size = check_count(batch_size, "batch_size")
        self.t0, self.T = check_time_range(t0, T, model.process)
        if not isinstance(weighting, str) or weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
        if not isinstance(time_distribution, str) or time_distribution not in TIME_DISTRIBUTIONS:
            raise ValueError(f"time_distribution must be one of {TIME_DISTRIBUTIONS}, got {time_distribution!r}")
        if not isinstance(time_sampling, str) or time_sampling not in TIME_SAMPLINGS:
            raise ValueError(f"time_sampling must be one of {TIME_SAMPLINGS}, got {time_sampling!r}")
        if not isinstance(optimizer, Adam) or optimizer.params is not net.params:
            raise ValueError("optimizer must be an sgm_ref.optim.Adam built on model.params (the same array)")
        self.model, self.optimizer = model, optimizer
        self.weighting, self.time_distribution = weighting, time_distribution
        self.time_sampling = time_sampling
        self.weights = None  # the last batch's importance weights (time_sampling "defensive")
        # the batch and the network's activations on it: (d + widths) numbers per row, a few times over
        with fits_in_memory("batch_size", self.batch_size, self.batch_size * (net.d + sum(net.widths)), 8 * 6):
            self.x0 = np.empty((self.batch_size, net.d), dtype=net.dtype)
            self.z = np.empty((self.batch_size, net.d), dtype=net.dtype)
        self.grad = np.empty(net.n_params, dtype=net.dtype)
        self.t = None  # the last batch's times (float64), set by each call

    def _draw(self, rng):
        """The batch: x0 (rows of data), t and z, in that order from rng."""
        idx = rng.integers(0, self.data.shape[0], self.batch_size)
        np.take(self.data, idx, axis=0, out=self.x0)
        if self.time_sampling == "defensive":
            self.t, self.weights = _draw_importance_times(self.batch_size, self.t0, self.T, rng,
                                                          self.time_distribution)
        else:
            self.t, self.weights = _draw_times(self.batch_size, self.t0, self.T, rng, self.time_distribution), None
        if self.z.dtype == np.float64 and self.z.size >= _NUMBA_NORMALS_FROM:
            # rng.standard_normal's numbers bit for bit, 1.7-6x faster per number by host (numba's copy of
            # numpy's ziggurat), after a fixed ~5 us to hand the Generator to numba
            standard_normal_into(self.z, rng)
        elif self.z.dtype == np.float32 and self.z.size >= _NUMBA_FLOAT32_NORMALS_FROM:
            # rng.standard_normal(dtype=np.float32)'s numbers bit for bit (numpy's float32 ziggurat, compiled)
            standard_normal_float32_into(self.z, rng)
        else:
            rng.standard_normal(out=self.z, dtype=self.z.dtype)

    def _coefficients(self, t):
        """(alpha_t, sigma_t^2) of the drawn times, without the process's check of t: t lies in
        [t0, T], which __init__ checked against the process (process._coefficients would
        validate and clip t again, a third of the step's fixed cost at small batches)."""
        process = self.model.process
        return process._alpha(t), process._sigma2(t)

    def _sizes(self):
        """The sizes an overflowing loss comes from: the batch's largest |x0| and its smallest t
        with sigma_t, and the largest |parameter| (a data point far from order 1, a t0 too small,
        or parameters an lr too large has blown up)."""
        i = int(np.argmin(self.t))
        sigma = float(np.sqrt(self._coefficients(self.t[i:i + 1])[1][0]))
        return (f"largest |x0| entry {float(np.max(np.abs(self.x0))):.3g} (rescale data far from order 1), "
                f"smallest t {float(self.t[i]):.3g} "
                f"(sigma_t {sigma:.3g}), largest |parameter| {float(np.max(np.abs(self.model.params))):.3g}")

    def __call__(self, rng):
        check_rng(rng)
        self._draw(rng)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named below, not warned about
            loss, _ = _dsm_loss(self.model, self.x0, self.t, self.z, self.weighting, True, self.grad,
                                self._coefficients(self.t), self.weights)
        if not np.isfinite(loss):
            self._check_params()
            raise NonFiniteGradientError("loss", self._sizes())
        try:
            self.optimizer.step(self.grad)  # checks the gradient before it changes anything
        except NonFiniteGradientError as exc:  # args: ("gradient", the optimiser's reason, the batch's sizes)
            # the sizes as for the loss: a float32 run on data of scale 5e36 (inside float32's range)
            # overflowed in the gradient and was told only to try a smaller lr or a larger t0
            raise NonFiniteGradientError("gradient", str(exc), self._sizes()) from None
        return loss

    def _check_params(self):
        """Raise a ValueError naming the first non-finite parameter, if there is one: the step found
        it there (written into params, or left by an update Adam refused after the fact), and no
        smaller lr or larger t0 mends it. fit called it a divergence at this step, 'the model keeps
        the parameters of step k - 1 (try a smaller lr, ...) ... largest |parameter| nan'. (A NaN or
        inf parameter makes the network's output, so the loss, non-finite.)"""
        net = self.model.network
        if not np.all(np.isfinite(net.params)):
            try:
                net._overflow("loss")  # raises, naming the first non-finite parameter and its layer
            except ValueError as error:
                raise _NonFiniteParameters(str(error)) from None


class _NonFiniteParameters(ValueError):
    """TrainStep found a NaN or inf in the parameters (reason: the network's message naming the
    first one); fit words it with its step number."""

    def __init__(self, reason, step=None):
        where = "the training step" if step is None else f"training step {step}"
        super().__init__(f"{where} found non-finite parameters, no divergence of the step: {reason}")
        self.reason, self.step = reason, step

    def __reduce__(self):  # pickle with its arguments, not the message (which __init__ would wrap again)
        return type(self), (self.reason, self.step), self.__dict__


def fit(model, data, *, steps, batch_size=256, lr=1e-3, t0=1e-3, T=5.0, rng,
        weighting="none", time_distribution="uniform", time_sampling="direct", optimizer=None,
        eval_every=None, evaluate=None, progress=None, callback=None, history=None, start_step=0,
        lr_schedule=None):
    """Train a ScoreModel by denoising score matching on samples `data`.

    Minimises L(theta) = E_{t ~ pi[t0, T]} E_i E_z lambda(t) |s_theta(alpha_t x_i + sigma_t z, t) + z / sigma_t|^2
    over the empirical measure of data (Cole & Lu's empirical score matching).

    Parameters
    ----------
    model : ScoreModel
        Trained in place (its network's flat parameter vector).
    data : ndarray, shape (n, d), the model's dtype
    steps : int >= 1
        Number of optimiser steps (in total, counting start_step).
    batch_size : int
    lr : float
        Adam learning rate (ignored if optimizer is given; replaced by lr_schedule's rate
        at every step if that is given, but still checked).
    t0, T : float
        0 < t0 < T <= process.t_max: early-stopping time and horizon.
    rng : numpy.random.Generator
        All draws of the run (batch indices, times, noise) come from it, in that order.
    weighting : {"none", "sigma2"}
    time_distribution : {"uniform", "log-uniform"}
        The objective's distribution of t.
    time_sampling : {"direct", "defensive"}
        How a step draws its times: from time_distribution ("direct"), or from the
        defensive mixture of it and the log-uniform with importance weights
        (sgm_ref.losses.importance_times): the same objective in expectation, with less
        gradient noise from the small times under weighting "none". The loss recorded per
        step is then the weighted batch mean.
    optimizer : sgm_ref.optim.Adam, optional
        Created with lr if not given; pass one for weight decay, clipping, EMA, or to
        continue a run.
    eval_every : int, optional
        Call evaluate(model) -> float every eval_every steps (and after the last).
    evaluate : callable, optional
        Given with eval_every, and only with it.
    progress : bool or None
        Progress bar (tqdm) on stderr; None means "only if stderr is a terminal".
    callback : callable(step, model, optimizer, history), optional
        Called after every step (step counts from 1); checkpoints hook in here.
    history : History, optional
        Continue this history (when resuming): it holds the losses of the start_step
        steps taken, so that history.loss[k - 1] is step k's.
    start_step : int
        Number of steps already taken (when resuming); needs the optimizer of those
        steps (its step_count equal to start_step).
    lr_schedule : callable(step) -> float, optional
        The learning rate of each step (counted from 1; e.g. sgm_ref.optim.CosineLR(lr,
        steps)), set as optimizer.lr before the step. It depends on the step number
        alone, so a resumed run takes the rates of an uninterrupted one. The optimizer
        keeps the last step's rate. One whose .steps is a number (CosineLR's run length)
        below steps is refused before the first step.

    Returns
    -------
    History

    Raises
    ------
    TrainingDivergedError
        If the loss or the gradient is non-finite at some step, or the gradient too
        large for Adam's second moment (its squares overflow; set the optimizer's
        clip_norm); the message names the step and the optimiser's reason, and the
        parameters are those before it. Also if Adam's update of a finite
        gradient is non-finite (NonFiniteStepError; its message, included, says whether
        the parameters were restored: they are unless lr <= 1 and weight_decay <= 1,
        where this needs parameters beyond ~1e154 in float64).
    ValueError
        A model that is not a ScoreModel, or another bad argument (named); or a step that
        finds a NaN or inf in model.params (written into it, or left by an update Adam
        refused after the fact): the first one is named, as no divergence of that step.
    """
    if not isinstance(model, ScoreModel):  # an MLP met an AttributeError ('network') in TrainStep
        raise ValueError(f"model must be an sgm_ref.ScoreModel (a network with its process and parameterization), "
                         f"got {type(model).__name__}; pass ScoreModel(network, process, parameterization)")
    steps = check_count(steps, "steps")
    rng = check_rng(rng)
    if eval_every is not None:
        eval_every = check_count(eval_every, "eval_every")
        if evaluate is None:
            raise ValueError("eval_every needs evaluate, a callable model -> float")
    elif evaluate is not None:  # it would never be called
        raise ValueError("evaluate needs eval_every (call it every eval_every steps and after the last)")
    if optimizer is not None and not isinstance(optimizer, Adam):
        raise ValueError(f"optimizer must be an sgm_ref.optim.Adam built on model.params, got "
                         f"{type(optimizer).__module__}.{type(optimizer).__name__}")
    if isinstance(start_step, bool) or not isinstance(start_step, (int, np.integer)) or not 0 <= start_step <= steps:
        raise ValueError(f"start_step must be an integer in [0, steps], got {start_step!r}")
    if start_step > 0 and (optimizer is None or optimizer.step_count != start_step):
        # Adam's bias corrections count its steps: a fresh one would not continue the run
        taken = "no optimizer was given" if optimizer is None else f"the optimizer has taken {optimizer.step_count}"
        raise ValueError(f"start_step={start_step} resumes a run, but {taken}; pass the optimizer restored from "
                         "the run's checkpoint (Adam.load_state_dict), whose step_count is start_step")
    if optimizer is None:
        optimizer = Adam(model.params, lr=lr)
    for name, fn in (("evaluate", evaluate), ("callback", callback), ("lr_schedule", lr_schedule)):
        if fn is not None and not callable(fn):
            raise ValueError(f"{name} must be callable, got {type(fn).__name__}")
    # a CosineLR (or a schedule whose .steps is a number, its run's length) of a shorter run: refused
    # before step 1. Another .steps (a list of milestones, a method) says nothing of it ('<' raised TypeError)
    covered = getattr(lr_schedule, "steps", None)
    if isinstance(covered, (int, float, np.integer, np.floating)) and not isinstance(covered, bool) and covered < steps:
        raise ValueError(f"lr_schedule covers {lr_schedule.steps} steps, fewer than the run's {steps}; "
                         f"make it for {steps} (e.g. CosineLR(lr, {steps}))")
    if history is not None and not isinstance(history, History):
        raise ValueError(f"history must be a History (to continue a run's), got {type(history).__name__}")
    if history is not None and len(history.loss) != start_step:  # its loss[k - 1] is step k's
        raise ValueError(f"history holds {len(history.loss)} losses, but start_step is {start_step}: pass the "
                         f"history of the run's first {start_step} steps (or none)")
    history = History() if history is None else history
    history.optimizer = optimizer

    train_step = TrainStep(model, data, batch_size, t0, T, optimizer, weighting, time_distribution, time_sampling)
    bar = progress_bar(steps, progress, "training", initial=start_step)  # a resumed run reads 2000/4000
    try:
        for step in range(start_step + 1, steps + 1):
            if lr_schedule is not None:
                optimizer.lr = check_real(lr_schedule(step), f"lr_schedule({step})", low=0.0, low_open=True)
            try:
                loss = train_step(rng)
            except NonFiniteGradientError as exc:
                remedies = ["a smaller lr", "a larger t0"] + (["weighting='sigma2'"] if weighting != "sigma2" else [])
                # a finite gradient too large for Adam's second moment (its squares overflow) is
                # refused as a non-finite one would be; the optimiser's reason says which
                what = ("became non-finite" if exc.args[0] == "loss" or len(exc.args) < 2
                        or "non-finite value" in exc.args[1] else "is too large to apply")
                # what bounds a gradient's size: clipping, for a norm whose squares overflow in Adam's
                # second moment; not for a norm itself past float64, refused before any clipping
                if what == "is too large to apply" and "second moment" in exc.args[1]:
                    clip = ("an optimizer with clip_norm (Adam(model.params, clip_norm=...))"
                            if optimizer.clip_norm is None else f"a clip_norm below {optimizer.clip_norm:g}")
                    remedies.insert(0, clip)
                # the batch's sizes say which applies (data far from order 1 want rescaling instead);
                # for the gradient, the optimiser's reason (the first non-finite entry, or the norm),
                # without its own account of its state and remedy, which this message gives
                detail = ""
                if len(exc.args) > 1:
                    detail = (f"; the batch: {exc.args[1]}" if exc.args[0] == "loss" else
                              f"; Adam: {exc.args[1].partition('; params, m, v')[0]}"
                              + (f"; the batch: {exc.args[2]}" if len(exc.args) > 2 else ""))
                happened = f"the {exc.args[0]} {what} at step {step}"
                raise TrainingDivergedError(
                    f"{happened}; the model keeps the parameters of step {step - 1} (try {_either(remedies)}){detail}",
                    step, happened, remedies, detail) from None
            except NonFiniteStepError as exc:  # the gradient was finite, the update was not
                raise TrainingDivergedError(f"the update became non-finite at step {step}: {exc}", step) from None
            except _NonFiniteParameters as exc:  # no divergence: named as a ValueError, with fit's step
                raise _NonFiniteParameters(exc.reason, step) from None
            history.loss.append(loss)
            if eval_every is not None and (step % eval_every == 0 or step == steps):
                value = evaluate(model)
                try:
                    value = float(value)
                except (TypeError, ValueError):
                    raise ValueError(f"evaluate(model) must return a real number, got {type(value).__name__} "
                                     f"at step {step}") from None
                # both lists or neither: an evaluate that raises leaves them of one length
                history.eval_steps.append(step)
                history.eval_values.append(value)
            if callback is not None:
                callback(step, model, optimizer, history)
            if bar is not None:
                bar.update(1)
                if step % 50 == 0:
                    bar.set_postfix(loss=f"{loss:.4g}")
    finally:
        if bar is not None:
            bar.close()
    return history
