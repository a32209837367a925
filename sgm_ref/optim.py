"""Adam with optional gradient clipping and a parameter EMA, over one flat vector.

For a gradient g at step k = 1, 2, ... (Kingma & Ba 2015, Algorithm 1):

    g     <- g * min(1, clip_norm / (||g||_2 + 1e-6))      if clip_norm is set
    g     <- g + weight_decay * p                           (coupled L2, as torch.optim.Adam)
    m     <- b1 m + (1 - b1) g,    v <- b2 v + (1 - b2) g^2
    p     <- p - lr / (1 - b1^k) * m / (sqrt(v) / sqrt(1 - b2^k) + eps)
    ema   <- d ema + (1 - d) p                              if ema_decay = d is set
             (with ema_warmup, d_k = min(d, (1 + k) / (10 + k)), so early averages
             forget the initialisation instead of keeping d^k of it)

The update is written in the arithmetic form of torch.optim.Adam's single-tensor
(non-capturable) path but for m, which torch forms as m.lerp_(g, 1 - b1), m + (1 - b1)
(g - m), one rounding apart from b1 m + (1 - b1) g, and for the bias corrections 1 - b^k,
formed without torch's cancellation (1 - b**k, up to 1.4e-14 off at b = 0.999 and 1e-9
at 1 - 1e-8; here within 3.6e-16 of mpmath: _one_minus_power); and the clipping as
torch.nn.utils.clip_grad_norm_. A trajectory matches PyTorch's to ~1e-12 in float64
(1.4e-14 over 500 steps in a review). The network keeps per-layer views
into the flat parameter vector, so it is updated in place and never replaced. The work
is done by the fused kernel sgm_ref.kernels.adam.adam_update.
"""

import math

import numpy as np

from ._validation import FLOAT_DTYPES, check_real, show
from .kernels.adam import adam_update, sum_of_squares

__all__ = ["Adam", "CosineLR", "NonFiniteGradientError", "NonFiniteStepError"]

# torch.nn.utils.clip_grad_norm_ adds this to the norm so that a zero gradient
# does not divide by zero; copied so that clipped trajectories match PyTorch's.
_CLIP_FLOOR = 1e-6

_ARRAY_KEYS = ("params", "m", "v")

# Below this norm the squares summed may have underflowed (their sum is below 2^-900, so
# squares lost below 2^-1022 could matter for huge n only); the norm is then rescaled.
# Never reached by a nonzero float32 gradient (its squares are at least 2e-90 in float64).
_SMALL_NORM = 2.0**-450


class NonFiniteGradientError(ValueError, FloatingPointError):
    """A gradient with a NaN or inf entry was passed to Adam.step.

    Both a ValueError (bad input, as everywhere in sgm_ref) and a FloatingPointError
    (numerical divergence), so a training loop may catch either.
    """


class NonFiniteStepError(ValueError, FloatingPointError):
    """An Adam step with a finite gradient would make a parameter (or v) NaN or inf.

    lr or weight_decay is too large for the parameters' scale. A ValueError and a
    FloatingPointError, like NonFiniteGradientError, but not one: the gradient was fine.
    """


# Above these, a step can overflow for parameters of ordinary size, so it is made
# undoable (params, m, v and ema are copied first; the copies cost one pass each)
_RISKY_LR = 1.0
_RISKY_WEIGHT_DECAY = 1.0


def _positive(value, name):
    return check_real(value, name, low=0.0, low_open=True)


def _unit_interval(value, name):
    """value as a float in [0, 1), else raise."""
    return check_real(value, name, low=0.0, high=1.0, high_open=True)


def _betas(betas):
    if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (
        _unit_interval(betas[0], "betas[0] (beta1)"),
        _unit_interval(betas[1], "betas[1] (beta2)"),
    )


def _nonnegative(value, name):
    return check_real(value, name, low=0.0)


def _one_minus_power(beta, k):
    """Adam's bias correction 1 - beta^k (beta in [0, 1), k >= 1) to float64's accuracy.

    Where beta^k > 1/2 the subtraction cancels (1 - beta**k loses 1.4e-14 of it at
    beta = 0.999, 1.3e-12 at 0.99999, 1e-9 at 1 - 1e-8: the rounding of beta**k), so it is
    -expm1(k log1p(-(1 - beta))) there, 1 - beta being exact (beta > 1/2). At k = 1 it is
    1 - beta itself (exact for beta >= 1/2, as torch's step 1).
    """
    power = beta**k
    if k == 1 or power <= 0.5:
        return 1.0 - power
    return -math.expm1(k * math.log1p(-(1.0 - beta)))


class Adam:
    """Adam over a flat parameter vector, updated in place.

    Parameters
    ----------
    params : ndarray, shape (n,), float64 or float32, C-contiguous and writeable
        The parameter vector itself, not a copy: every step writes into this array
        (views of it, such as a network's per-layer weights, see the new values).
        It is never replaced, cast or copied, so anything else is rejected.
    lr : float, default 1e-3
        Learning rate, finite and > 0. May be changed between steps (schedules).
    betas : (float, float), default (0.9, 0.999)
        Decay rates (b1, b2) of the first and second moment averages, each in [0, 1).
    eps : float, default 1e-8
        Added to the bias-corrected sqrt(v); > 0.
    weight_decay : float, default 0.0
        Coupled L2 penalty (g <- g + weight_decay * p, as torch.optim.Adam, not AdamW); >= 0.
    clip_norm : float or None, default None
        If set (> 0), the gradient is scaled by min(1, clip_norm / (||g||_2 + 1e-6))
        before anything else, as torch.nn.utils.clip_grad_norm_.
    ema_decay : float or None, default None
        If set (in [0, 1)), keep ema <- ema_decay * ema + (1 - ema_decay) * p after
        every step, starting from a copy of params at construction.
    ema_warmup : bool, default False
        Use d_k = min(ema_decay, (1 + k) / (10 + k)) at step k (the schedule of
        TensorFlow's ExponentialMovingAverage with num_updates): after k steps a plain
        average still holds ema_decay^k of the initial parameters (74% after 300 steps
        at 0.999); the warm-up average holds 9 / (10 + k) of them at most.

    Attributes
    ----------
    params : ndarray, shape (n,)
        The array passed in (same object).
    m, v : ndarray, shape (n,), dtype of params
        First and second moment averages (zeros before the first step).
    ema : ndarray of shape (n,), dtype of params, or None
        The exponential moving average of the parameters (None without ema_decay).
    step_count : int
        Number of steps taken (k of the last step).

    Notes
    -----
    float32 parameters keep float32 m, v and ema; each element is worked in float64
    inside the kernel and rounded once when stored (so results can differ from
    PyTorch's float32 arithmetic in the last float32 bits). Work is done by
    sgm_ref.kernels.adam.

    Raises
    ------
    ValueError
        If params is not a 1-D C-contiguous writeable float64/float32 ndarray with
        finite entries, or a hyperparameter is out of range (the message names it):
        lr / (1 - beta1) must be finite in the dtype of params (lr < ~1.8e307 in
        float64) and weight_decay * max|params| below sqrt(max) (~1.3e154 in float64).

    References
    ----------
    Kingma & Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 clip_norm=None, ema_decay=None, ema_warmup=False):
        self.params = self._check_params(params)
        self.lr = lr
        self.betas = _betas(betas)
        self.eps = _positive(eps, "eps")
        self.weight_decay = _nonnegative(weight_decay, "weight_decay")
        self.clip_norm = None if clip_norm is None else _positive(clip_norm, "clip_norm")
        self.ema_decay = None if ema_decay is None else _unit_interval(ema_decay, "ema_decay")
        self.m = np.zeros_like(self.params)
        self.v = np.zeros_like(self.params)
        if not isinstance(ema_warmup, (bool, np.bool_)):
            raise ValueError(f"ema_warmup must be True or False, got {ema_warmup!r}")
        if ema_warmup and self.ema_decay is None:
            raise ValueError("ema_warmup needs ema_decay (the average it warms up)")
        self.ema_warmup = bool(ema_warmup)
        self.ema = None if self.ema_decay is None else self.params.copy()
        self.step_count = 0
        self._check_scales()

    def _check_scales(self):
        """Refuse hyperparameters whose first step overflows whatever the gradient."""
        big = float(np.finfo(self.params.dtype).max)
        # the step size lr / (1 - beta1^k) is largest at k = 1
        if not self.lr / (1.0 - self.betas[0]) < big:
            bound, lr = f"{big * (1.0 - self.betas[0]):.3g}", f"{self.lr:g}"
            if float(lr) < float(bound):  # "below 1.8e+307, got 1.79769e+307": both in full
                bound, lr = repr(float(big * (1.0 - self.betas[0]))), repr(float(self.lr))
            raise ValueError(f"lr must be below {bound}, got {lr}: the "
                             f"bias-corrected step size lr / (1 - beta1) must be below {big:.3g} ({self.params.dtype})")
        # g = grad + weight_decay p is squared into v: it must stay below sqrt(max)
        root = math.sqrt(big)
        top = float(np.max(np.abs(self.params)))
        if self.weight_decay * top >= root:
            raise ValueError(f"weight_decay = {self.weight_decay:g} is too large for params (largest |entry| "
                             f"{top:.3g}): weight_decay * |params| must stay below {root:.3g} so that the "
                             f"decayed gradient's square is finite in {self.params.dtype}")

    @staticmethod
    def _check_params(params):
        if not isinstance(params, np.ndarray):
            raise ValueError(
                "params must be the numpy ndarray to update in place (it is not copied), "
                f"got {type(params).__name__}"
            )
        if params.dtype not in FLOAT_DTYPES:
            raise ValueError(f"params must have dtype float64 or float32, got {params.dtype}")
        if params.ndim != 1 or params.size == 0:
            raise ValueError(
                f"params must be a non-empty flat vector, shape (n,), got shape {params.shape}"
            )
        if not params.flags.c_contiguous:
            raise ValueError(
                "params must be C-contiguous: it is updated in place, so a strided view "
                "cannot be copied behind your back; pass the flat parameter array itself"
            )
        if not params.flags.writeable:
            raise ValueError("params must be writeable: it is updated in place")
        if not np.all(np.isfinite(params)):
            raise ValueError("params contains non-finite values (NaN or inf)")
        return params

    @property
    def lr(self):
        """Learning rate (finite, > 0); validated when set."""
        return self._lr

    @lr.setter
    def lr(self, value):
        self._lr = _positive(value, "lr")

    def __repr__(self):
        return (
            f"Adam(n={self.params.size}, dtype={self.params.dtype}, lr={self.lr!r}, "
            f"betas={self.betas!r}, eps={self.eps!r}, weight_decay={self.weight_decay!r}, "
            f"clip_norm={self.clip_norm!r}, ema_decay={self.ema_decay!r}, ema_warmup={self.ema_warmup!r}, "
            f"step_count={self.step_count})"
        )

    def _check_grad(self, grad):
        grad = np.asarray(grad)
        if grad.shape != self.params.shape:
            raise ValueError(
                f"grad must have shape {self.params.shape} like params, got {grad.shape}"
            )
        if grad.dtype != self.params.dtype:
            raise ValueError(
                f"grad must have the dtype of params ({self.params.dtype}), got {grad.dtype}; "
                "it is not cast for you"
            )
        return np.ascontiguousarray(grad)

    def _grad_norm(self, grad):
        """||grad||_2 as a float; raises NonFiniteGradientError for NaN or inf entries."""
        # overflow of the squares is handled below (and only warns without the JIT)
        with np.errstate(over="ignore"):
            norm = math.sqrt(sum_of_squares(grad))
        if math.isfinite(norm):
            if norm >= _SMALL_NORM or norm == 0.0 and not np.any(grad):
                return norm
            # squares below ~1e-308 underflow (all of them for entries below ~1e-162: the
            # norm read 0): rescale by the largest magnitude, as for an overflow below
            top = float(np.max(np.abs(grad)))
            return top * math.sqrt(sum_of_squares(grad / top))
        bad = ~np.isfinite(grad)
        if np.any(bad):
            raise NonFiniteGradientError(
                f"grad contains {int(np.count_nonzero(bad))} non-finite value(s) (NaN or inf), "
                f"first at index {int(np.argmax(bad))}; params, m, v and the step count "
                "were left unchanged (the last finite parameters)"
            )
        # Finite entries whose squares overflow: rescale by the largest magnitude.
        top = float(np.max(np.abs(grad)))
        norm = top * math.sqrt(sum_of_squares(grad / top))
        if not math.isfinite(norm):
            raise NonFiniteGradientError(
                f"grad has entries up to {top:.3g} and a norm beyond the float64 range; params, m, v and "
                "the step count were left unchanged (scale the loss down)")
        return norm

    def step(self, grad):
        """Apply one Adam update to params in place.

        Parameters
        ----------
        grad : ndarray, shape (n,), dtype of params
            Gradient of the loss at params; not modified.

        Returns
        -------
        float
            ||grad||_2 before clipping (accumulated in float64).

        Raises
        ------
        NonFiniteGradientError
            (a ValueError and a FloatingPointError) if grad has a NaN or inf entry, or
            (after clipping) a norm whose square overflows the dtype (~1e154 in float64,
            ~1e19 in float32), which would make v inf. Nothing has been changed then:
            params, m, v, ema and step_count keep the values of the last finite step.
        NonFiniteStepError
            (a ValueError and a FloatingPointError) if the update itself would make a
            parameter or v non-finite (lr or weight_decay too large for the parameters'
            scale). With lr <= 1 and weight_decay <= 1 this needs parameters beyond
            ~1e154 in float64 (~1e20 in float32) and is detected after the fact (params,
            m, v and ema then hold the step's values; step_count is not advanced); above
            those values the step is undoable and params, m, v, ema and step_count are
            left unchanged.
        ValueError
            If grad has the wrong shape or dtype.
        """
        grad = self._check_grad(grad)
        norm = self._grad_norm(grad)
        scale = 1.0
        if self.clip_norm is not None:
            scale = min(1.0, self.clip_norm / (norm + _CLIP_FLOOR))
        # v averages g^2: an entry with g^2 beyond the dtype's range would make v inf and
        # freeze its coordinate (every later update m / (sqrt(v) + eps) = 0)
        if scale * norm >= math.sqrt(np.finfo(self.params.dtype).max):
            raise NonFiniteGradientError(
                f"grad has norm {norm:.3g}: the squares in Adam's second moment would overflow "
                f"{self.params.dtype}; params, m, v and the step count were left unchanged "
                "(set clip_norm, or scale the loss down)"
            )
        k = self.step_count + 1
        beta1, beta2 = self.betas
        step_size = self.lr / _one_minus_power(beta1, k)
        if not math.isfinite(step_size):
            raise NonFiniteStepError(f"Adam step {k}: the step size lr / (1 - beta1^k) overflows with "
                                     f"lr = {self.lr:g}; lower lr. params, m, v and the step count were left unchanged")
        bias_correction2_sqrt = math.sqrt(_one_minus_power(beta2, k))
        want_ema = self.ema is not None
        ema = self.ema if want_ema else self.m  # placeholder the kernel does not touch
        risky = self.lr > _RISKY_LR or self.weight_decay > _RISKY_WEIGHT_DECAY
        backup = [a.copy() for a in (self.params, self.m, self.v, ema)] if risky else None
        # the kernel counts the non-finite new params and v in the same pass: NaN or inf
        # can only come from lr or weight_decay (the gradient was checked)
        bad = adam_update(
            self.params, grad, self.m, self.v, ema, scale, self.weight_decay, beta1, beta2,
            step_size, bias_correction2_sqrt, self.eps,
            self._ema_decay_at(k), want_ema,
        )
        if bad:
            self._refuse_step(k, backup, ema)
        self.step_count = k
        return norm

    def _refuse_step(self, k, backup, ema):
        bad = int(np.count_nonzero(~np.isfinite(self.params) | ~np.isfinite(self.v)))
        if backup is not None:
            for target, saved in zip((self.params, self.m, self.v, ema), backup):
                target[...] = saved
            state = "params, m, v, ema and the step count were left unchanged"
        else:
            held = "params, m, v and ema" if self.ema is not None else "params, m and v"
            state = (f"{held} now hold this step's values, some non-finite, and the step count was not "
                     "advanced: restore them (load_state_dict or a checkpoint)")
        raise NonFiniteStepError(
            f"Adam step {k} {'would make' if backup is not None else 'made'} {bad} entr{'y' if bad == 1 else 'ies'} "
            "of params or v non-finite: "
            f"lr = {self.lr:g} or weight_decay = {self.weight_decay:g} is too large for parameters of size "
            f"up to {float(np.max(np.abs(self.params[np.isfinite(self.params)]), initial=0.0)):.3g} in "
            f"{self.params.dtype}; lower lr or weight_decay. {state}")

    def _ema_decay_at(self, k):
        if self.ema_decay is None:
            return 0.0
        return min(self.ema_decay, (1.0 + k) / (10.0 + k)) if self.ema_warmup else self.ema_decay

    # -- checkpoints -------------------------------------------------------------------
    def state_dict(self):
        """Everything needed to continue bit for bit, as arrays and numbers.

        Returns
        -------
        dict
            "params", "m", "v" (copies, shape (n,), dtype of params), "step_count" (int),
            "lr", "beta1", "beta2", "eps", "weight_decay" (floats), and, only when
            enabled, "clip_norm" (float), "ema_decay" (float), "ema" (a copy) and "ema_warmup" (True). No
            None values, so numpy.savez(path, **state) stores it as it is.
        """
        state = {
            "params": self.params.copy(),
            "m": self.m.copy(),
            "v": self.v.copy(),
            "step_count": int(self.step_count),
            "lr": self.lr,
            "beta1": self.betas[0],
            "beta2": self.betas[1],
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }
        if self.clip_norm is not None:
            state["clip_norm"] = self.clip_norm
        if self.ema_decay is not None:
            state["ema_decay"] = self.ema_decay
            if self.ema_warmup:
                state["ema_warmup"] = True
            state["ema"] = self.ema.copy()
        return state

    def load_state_dict(self, state):
        """Restore a state_dict exactly; params is overwritten in place.

        The hyperparameters, the step count, m, v and the EMA are taken from state
        (as torch.optim.Optimizer.load_state_dict does), so the next steps give the same
        bits as they would have in the optimiser that saved it. Numbers may be 0-d arrays
        (as numpy.load returns them). Everything is validated before anything changes.

        Raises
        ------
        ValueError
            If a key is missing or unknown, an array's shape or dtype differs from
            params, an entry is non-finite, v is negative, or a number is out of range.
        """
        # Everything is checked before anything changes, so a bad state leaves the
        # optimiser as it was.
        if not isinstance(state, dict) and not hasattr(state, "keys"):
            raise ValueError(
                f"state must be a dict from Adam.state_dict, got {type(state).__name__}"
            )
        required = {"params", "m", "v", "step_count", "lr", "beta1", "beta2", "eps", "weight_decay"}
        optional = {"clip_norm", "ema_decay", "ema", "ema_warmup"}
        keys = set(state.keys())
        if required - keys:
            raise ValueError(f"state is missing key(s) {sorted(required - keys)}")
        if keys - required - optional:
            raise ValueError(f"state has unknown key(s) {sorted(keys - required - optional)}")
        if ("ema" in keys) != ("ema_decay" in keys):
            raise ValueError("state must have both 'ema' and 'ema_decay' or neither")
        if "ema_warmup" in keys and "ema" not in keys:
            raise ValueError("state has 'ema_warmup' without 'ema' and 'ema_decay'")
        ema_warmup = False
        if "ema_warmup" in keys:
            ema_warmup = state["ema_warmup"]
            if isinstance(ema_warmup, np.ndarray) and ema_warmup.shape == ():
                ema_warmup = ema_warmup[()]  # as numpy.load returns it
            if not isinstance(ema_warmup, (bool, np.bool_)):
                raise ValueError(f"state['ema_warmup'] must be True or False, got {show(ema_warmup)}")
            ema_warmup = bool(ema_warmup)

        arrays = {}
        for key in _ARRAY_KEYS + (("ema",) if "ema" in keys else ()):
            arr = np.asarray(state[key])
            if arr.shape != self.params.shape or arr.dtype != self.params.dtype:
                raise ValueError(
                    f"state['{key}'] must have shape {self.params.shape} and dtype "
                    f"{self.params.dtype} like params, got shape {arr.shape}, dtype {arr.dtype}"
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"state['{key}'] contains non-finite values (NaN or inf)")
            arrays[key] = arr
        if np.any(arrays["v"] < 0):
            raise ValueError("state['v'] must be >= 0 (an average of squares)")
        step_count = state["step_count"]
        if isinstance(step_count, np.ndarray) and step_count.ndim == 0:
            step_count = step_count[()]
        is_bool = isinstance(step_count, (bool, np.bool_))
        if is_bool or not isinstance(step_count, (int, np.integer)) or step_count < 0:
            raise ValueError(f"state['step_count'] must be an integer >= 0, got {show(step_count)}")
        lr = _positive(state["lr"], "state['lr']")
        betas = (_unit_interval(state["beta1"], "state['beta1']"),
                 _unit_interval(state["beta2"], "state['beta2']"))
        eps = _positive(state["eps"], "state['eps']")
        weight_decay = _nonnegative(state["weight_decay"], "state['weight_decay']")
        clip_norm = None
        if "clip_norm" in keys:
            clip_norm = _positive(state["clip_norm"], "state['clip_norm']")
        ema_decay = None
        if "ema_decay" in keys:
            ema_decay = _unit_interval(state["ema_decay"], "state['ema_decay']")

        self.params[...] = arrays["params"]
        self.m[...] = arrays["m"]
        self.v[...] = arrays["v"]
        self.ema = None if ema_decay is None else arrays["ema"].copy()
        self.step_count = int(step_count)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.weight_decay = weight_decay
        self.clip_norm = clip_norm
        self.ema_decay = ema_decay
        self.ema_warmup = ema_warmup


class CosineLR:
    """Cosine decay of the learning rate over a run of `steps` optimiser steps.

        lr_k = lr_min + (lr - lr_min) (1 + cos(pi (k - 1) / steps)) / 2,    lr_min = final * lr,

    for step k = 1 .. steps: lr at the first step, falling smoothly to just above lr_min
    at the last (Loshchilov & Hutter, "SGDR", ICLR 2017, eq. 5, without restarts). It is
    torch.optim.lr_scheduler.CosineAnnealingLR(T_max=steps, eta_min=lr_min) stepped once
    after each optimiser step. A constant rate leaves the parameters wandering at the
    scale the gradient noise and lr set; the decay lets a run of a fixed length end near
    a minimum. Pass it to train.fit as lr_schedule (a callable step -> lr).

    Parameters
    ----------
    lr : float > 0
        The rate of the first step.
    steps : int >= 1
        The run's length (the schedule is defined for k = 1 .. steps).
    final : float in [0, 1), default 1e-3
        lr_min / lr.
    """

    def __init__(self, lr, steps, final=1e-3):
        self.lr = _positive(lr, "lr")
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1 (the run's length), got {steps!r}")
        self.steps = int(steps)
        self.final = _unit_interval(final, "final (lr_min / lr)")

    def __call__(self, step):
        """lr_k for the step k (counted from 1, as train.fit counts)."""
        if isinstance(step, bool) or not isinstance(step, (int, np.integer)) or not 1 <= step <= self.steps:
            raise ValueError(f"step must be an integer in [1, {self.steps}] (the schedule's run), got {step!r}")
        low = self.final * self.lr
        # (1 + cos x) / 2 = cos^2(x / 2) = sin^2((pi - x) / 2): the first half of the run falls from
        # lr by (lr - low) sin^2(x / 2), the second rises from low by (lr - low) sin^2((pi - x) / 2),
        # each a small term with a small sine's argument (1 + cos x cancelled near x = pi: the last
        # rate of a 10^6-step run to lr_min = 0 was 5.7e-6 off), and lr exactly at step 1
        if 2 * (step - 1) <= self.steps:
            return self.lr - (self.lr - low) * math.sin(0.5 * math.pi * (step - 1) / self.steps) ** 2
        return low + (self.lr - low) * math.sin(0.5 * math.pi * (self.steps - step + 1) / self.steps) ** 2

    def __repr__(self):
        return f"CosineLR(lr={self.lr!r}, steps={self.steps}, final={self.final!r})"
