"""Adapters between sgm_ref and models or samplers written in PyTorch or JAX.

in   from_torch(model, process, output, time) and from_jax(...) turn a network that takes
     (x, time) and returns one of score / eps / x0 / v / velocity into a score function
     s(x, t) = grad log p_t(x) of sgm_ref's time t of `process`: NumPy (n, d) points and
     (n,) times in, NumPy out, accepted by every sgm_ref metric and sampler.
out  to_torch(target, process, output, signature) turns a target's exact oracle into a
     torch callable with a peer's signature: k-diffusion's denoiser(x, sigma) or a
     diffusers-style model(x, timestep), so a peer's own sampler runs on the exact score.

The time argument a network takes (`time=`):

    "t"         sgm_ref's time t of `process` itself
    "timestep"  the discrete timestep of a DDPM process, i = N t - 1 (diffusers' index:
                timestep i has alphas_cumprod[i]); integer unless fractional=True
    "sigma"     the process's sigma_t (k-diffusion / EDM: with process=EDM(), x = x0 + sigma z)

x always means the process's own x_t = alpha_t x0 + sigma_t z: for a DDPM process the
variance-preserving sample diffusers' UNets see (for EulerDiscreteScheduler that is
scale_model_input(sample) = sample / sqrt(sigma^2 + 1), not the scheduler's own sample).
Between processes, convert_score moves a score from one convention to another.

torch and jax are imported only inside the functions that use them.
"""

import numpy as np

from ._validation import FLOAT_DTYPES, check_count, check_points
from .conventions import KINDS, _minors, coefficients, convert
from .processes import DDPM, EDM, OU, VE, VariancePreserving, check_process, convert_time
from .targets import GaussianMixture, ProductMixture

__all__ = ["from_torch", "from_jax", "to_torch", "convert_score", "ModelScore", "OracleModel", "ModelError"]

TIMES = ("t", "timestep", "sigma")
SIGNATURES = ("denoiser", "diffusers")
# What a model computing in float16 or bfloat16 needs: the adapters take float32 or float64 only
_HALF_PRECISION_FIX = ("only float32 and float64 are supported: run the model at float32 and cast inside it, "
                       "e.g. lambda x, t: model(x.half(), t).float() (JAX: fn(x.astype(jnp.bfloat16), t)"
                       ".astype(jnp.float32)), with dtype=float32")
# A timestep within this of an integer is that integer: N t - 1 at t = (i + 1) / N may
# round an ulp or so away from i (e.g. 1000 * 0.251 = 250.99999999999997).
_TIMESTEP_ROUNDING = 1e-9


class ModelError(ValueError):
    """An exception raised inside the user's model, re-raised with the model's name.

    The original exception is its __cause__ (shown whole by a traceback).
    """


def _check_kind(kind, name):
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


def _snap_timesteps(ts, process, fractional, name, tolerance=None):
    """Timesteps of a DDPM process as float64, checked: in 0..N-1, integral unless fractional.

    A value within `tolerance` (default _TIMESTEP_ROUNDING N) of an integer is that integer."""
    N = process.num_train_timesteps
    nearest = np.round(ts)
    tolerance = _TIMESTEP_ROUNDING * N if tolerance is None else np.maximum(tolerance, _TIMESTEP_ROUNDING * N)
    ts = np.where(np.abs(ts - nearest) <= tolerance, nearest, ts)
    if np.any(ts < 0) or np.any(ts > N - 1):
        bad = float(ts[(ts < 0) | (ts > N - 1)][0])
        raise ValueError(f"{name} {bad!r} is outside 0..{N - 1} of {process!r} "
                         f"(sgm_ref time t = (timestep + 1) / N must lie in [1/N, 1])")
    if not fractional and np.any(ts != np.round(ts)):
        bad = float(ts[ts != np.round(ts)][0])
        raise ValueError(f"{name} {bad!r} is not an integer; evaluate at integer timesteps "
                         "(times process.time_of_timestep(i)) or pass fractional=True if the model "
                         "was trained on, or interpolates between, fractional timesteps")
    return ts


# -- in: a network as a score ------------------------------------------------------------------


class ModelScore:
    """s(x, t) = grad log p_t(x) of a network trained in another convention.

    Built by from_torch / from_jax. Calling it with x of shape (n, d) and t a scalar or
    shape (n,) (sgm_ref times of `process`):

    1. the conversion output -> score is checked to exist at every t (before the model runs);
    2. x is converted once to the model's dtype (`self.dtype`), the time argument formed
       (t, the DDPM timestep N t - 1, or sigma_t) in that dtype (int64 for integer timesteps;
       an x or time the dtype turns into inf, or a time it rounds by more than its precision
       (to 0, or a float32 subnormal: t = 3e-45 is 2.8e-45), is refused);
    3. the model runs on batches of at most `batch_size` rows, without gradients, and
       each output is checked: an array of the batch's shape, the model's dtype, finite;
    4. score = A(t) x + B(t) value (sgm_ref.conventions) is formed in float64 from the
       points as the model saw them and rounded once to the output dtype; for
       time="timestep", at the time (i + 1) / N of the timestep i the model was given
       (a t within rounding of it, e.g. held in float32, is that time).

    The output dtype is the model's (`self.dtype`) unless the adapter was built with
    cast_output=True, when it is x's: a float32 network gives float32 scores, and an
    sgm_ref metric is then called with dtype=s.dtype (its default float64 points would be
    refused by the metric with a message saying so). cast_output=True widens the scores
    to float64 for callers that need it; their digits are still the model's.

    Attributes
    ----------
    dtype : numpy.dtype
        The dtype the model computes in (float32 or float64).
    process, output, time, batch_size, fractional, sample_shape, name
        As given to from_torch / from_jax.
    """

    def __init__(self, run, as_array, *, name, process, output, time, batch_size, dtype, fractional, cast_output,
                 framework, sample_shape=None, check=None):
        self.sample_shape = sample_shape
        self._check = check  # check(x, t): the framework's own refusals, before anything is converted
        self._run = run
        self._as_array = as_array
        self.name = name
        self.process = process
        self.output = output
        self.time = time
        self.batch_size = batch_size
        self.dtype = dtype
        self.fractional = fractional
        self.cast_output = cast_output
        self.framework = framework

    def __repr__(self):
        return (f"ModelScore({self.framework} model {self.name!r}, {self.process!r}, output={self.output!r}, "
                f"time={self.time!r}, dtype={self.dtype.name}, batch_size={self.batch_size})")

    def time_argument(self, t):
        """The model's time argument at sgm_ref times t (float64 array of t's shape).

        Timesteps N t - 1 within rounding of an integer are that integer. The rounding is
        that of t's own dtype: t = (i + 1) / N held in float32 is off by up to N t 2^-24 in
        timestep (6e-5 at N = 1000), and still means timestep i."""
        t_dtype = np.asarray(t).dtype
        t = self.process._times(t)
        if self.time == "t":
            return t
        if self.time == "sigma":
            return np.asarray(self.process._sigma(t), dtype=np.float64)
        N = self.process.num_train_timesteps
        ts = np.asarray(t * N - 1.0)
        tolerance = None
        if t_dtype.kind == "f" and t_dtype.itemsize < 8:
            tolerance = 4.0 * float(np.finfo(t_dtype).eps) * N * t
        return _snap_timesteps(ts, self.process, self.fractional, "the timestep N t - 1 =", tolerance)

    def __call__(self, x, t):
        """grad log p_t(x) from the model; x (n, d), t scalar or (n,); see the class docstring.

        Raises
        ------
        ValueError
            Bad x or t; a conversion undefined at t (e.g. eps -> score where sigma_t = 0);
            a timestep out of range or not an integer; x or the time argument beyond the
            range of the model's dtype (a float32 model would see inf, or 0 for a t of
            1e-50, or 2.8e-45 for 3e-45); a model output of the wrong type,
            shape or dtype or with non-finite entries (naming the model); for a JAX model,
            x or t a JAX tracer, or dtype float64 while jax_enable_x64 is off at the call.
        ModelError
            The model itself raised (its exception is the __cause__).
        """
        if self._check is not None:
            self._check(x, t)
        x = check_points(x, "x")
        n = x.shape[0]
        t_dtype = np.asarray(t).dtype
        t = np.broadcast_to(self.process._times(t, n=n), (n,))
        if self.sample_shape is not None and int(np.prod(self.sample_shape)) != x.shape[1]:
            raise ValueError(f"x has d = {x.shape[1]} entries per row, but sample_shape {self.sample_shape} "
                             f"holds {int(np.prod(self.sample_shape))}")
        if n == 0:  # no rows: no model call, an empty score (as conventions.convert gives)
            return np.empty(x.shape, dtype=x.dtype if self.cast_output else self.dtype)
        A, B = coefficients(t, self.process, self.output, "score")
        arg = self.time_argument(t.astype(t_dtype) if t_dtype.kind == "f" else t)
        if self.time == "timestep":
            # a t taken as timestep i is converted at i's time (i + 1) / N, where the model ran:
            # A, B at a float32 t = (i + 1) / N (1 + 3e-8) put 5e-8 of error on a float64 model's score
            N = self.process.num_train_timesteps
            at = np.where(arg == np.round(arg), (arg + 1.0) / N, t)
            if np.any(at != t):
                t = at
                A, B = coefficients(t, self.process, self.output, "score")
        if self.time == "timestep" and not self.fractional:
            arg = arg.astype(np.int64)
        else:
            wide = arg
            with np.errstate(over="ignore", under="ignore"):
                arg = arg.astype(self.dtype)
                # inf, 0 for a nonzero time, or a subnormal that keeps fewer digits than the dtype's
                # precision (float32 t = 3e-45 is 2.8e-45: 6.6% off, which the conversion at t would not see)
                lost = ~np.isfinite(arg) | (np.abs(arg.astype(np.float64) - wide)
                                            > float(np.finfo(self.dtype).eps) * np.abs(wide))
            if np.any(lost):  # the model would see inf, 0 or another time for a time it is not at
                i = int(np.argmax(lost))
                raise ValueError(f"the time argument {self.time} = {float(wide[i])!r} (row {i}) is beyond the range of "
                                 f"{self.dtype.name}, the dtype of {self.framework} model {self.name!r} (it would see "
                                 f"{float(arg[i])!r}); use a time {self.dtype.name} holds, or dtype=float64")
        with np.errstate(over="ignore"):
            xm = x.astype(self.dtype, copy=False)
        if not np.all(np.isfinite(xm)):
            i = int(np.argmax(~np.all(np.isfinite(xm), axis=1)))
            raise ValueError(f"x at row {i} is beyond the range of {self.dtype.name}, the dtype of {self.framework} "
                             f"model {self.name!r} (largest |x| {float(np.abs(x[i]).max()):.3g}); rescale x, or "
                             "dtype=float64")
        value = np.empty(x.shape, dtype=np.float64)
        for lo in range(0, n, self.batch_size):
            hi = min(lo + self.batch_size, n)
            where = f"rows {lo}:{hi} (t from {t[lo:hi].min():.6g} to {t[lo:hi].max():.6g})"
            value[lo:hi] = self._checked(xm[lo:hi], arg[lo:hi], where)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is named just below
            score = A[:, None] * xm.astype(np.float64) + B[:, None] * value
            out = score.astype(x.dtype if self.cast_output else self.dtype)
        if not np.all(np.isfinite(out)):
            i = int(np.argmax(~np.all(np.isfinite(out), axis=1)))
            raise ValueError(f"the score of {self.framework} model {self.name!r} overflows {out.dtype} at row {i} "
                             f"(t = {float(t[i])!r}, {self.output} -> score multiplies by {B[i]:.3g})")
        return out

    def _checked(self, xb, tb, where):
        rows = xb.shape
        if self.sample_shape is not None:
            xb = xb.reshape((rows[0],) + self.sample_shape)
        try:
            out = self._run(xb, tb)
        except Exception as e:  # the user's code: say so, keep the original as the cause
            raise ModelError(f"{self.framework} model {self.name!r} raised {type(e).__name__} at {where}: {e}") from e
        label = f"{self.framework} model {self.name!r} returned"
        shape, dtype, to_numpy = self._as_array(out)
        if shape is None:
            hint = ""
            if hasattr(out, "sample"):  # diffusers' UNet2DOutput and friends
                hint = " (a diffusers model output? pass lambda x, t: model(x, t).sample)"
            elif isinstance(out, tuple) and out and self._as_array(out[0])[0] == xb.shape:
                hint = " (a diffusers model called with return_dict=False? pass lambda x, t: model(x, t)[0])"
            elif "Tracer" in type(out).__name__:  # a jax.core.Tracer leaked out of jax.jit, vmap or grad
                hint = " (a traced value that escaped jax.jit, jax.vmap or jax.grad: return the array the " \
                       "function computes, not one saved from inside a transformation)"
            elif isinstance(out, np.ndarray):
                hint = " (it returned NumPy for torch inputs: a function of NumPy arrays? with sgm-ref audit, " \
                       "pass --inputs numpy)"
            raise ValueError(f"{label} a {type(out).__name__} at {where}; expected an array of shape {xb.shape}{hint}")
        if shape != xb.shape:
            raise ValueError(f"{label} shape {shape} at {where}; expected {xb.shape} "
                             f"(its {self.output} for each row of x)")
        if dtype != self.dtype.name:
            if dtype in ("float32", "float64"):
                fix = f"pass dtype={dtype} if the model computes in {dtype}, or make it return its input's dtype"
            elif dtype.startswith(("float", "bfloat")):  # float16, bfloat16, float8_...: no dtype= reaches them
                fix = _HALF_PRECISION_FIX
            else:  # int, bool, complex: not a precision to choose
                fix = f"a score, eps, x0, v or velocity is real: return a floating-point array of dtype {self.dtype}"
            raise ValueError(f"{label} dtype {dtype} for inputs of dtype {self.dtype} at {where}; {fix}")
        try:
            arr = to_numpy()
        except Exception as e:  # a sparse tensor, one on the meta device: no values to read
            raise ValueError(f"{label} an array whose values cannot be read at {where} ({type(e).__name__}: {e}); "
                             "return a dense array holding the values") from e
        if not np.all(np.isfinite(arr)):
            bad = int(np.count_nonzero(~np.isfinite(arr)))
            raise ValueError(f"{label} {bad} non-finite value(s) at {where}")
        return arr.reshape(rows)


def _check_sample_shape(sample_shape):
    if sample_shape is None:
        return None
    try:
        shape = tuple(int(k) for k in sample_shape)
        ok = all(k >= 1 and k == j for k, j in zip(shape, sample_shape)) and len(shape) >= 1
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"sample_shape must be a tuple of positive integers such as (3, 32, 32), got {sample_shape!r}")
    return shape


def _check_in_args(process, output, time, batch_size, fractional, cast_output):
    process = check_process(process, variance_preserving=False)
    _check_kind(output, "output")
    if not isinstance(time, str) or time not in TIMES:
        raise ValueError(f"time must be one of {TIMES}, got {time!r}")
    if time == "timestep" and not isinstance(process, DDPM):
        raise ValueError(f"time='timestep' needs a DDPM process (discrete timesteps 0..N-1), got {process!r}; "
                         "use time='t' or 'sigma' for continuous-time models")
    for flag, value in (("fractional", fractional), ("cast_output", cast_output)):
        if not isinstance(value, (bool, np.bool_)):  # bool("no") is True
            raise ValueError(f"{flag} must be True or False, got {value!r}")
    return process, check_count(batch_size, "batch_size")


def _numpy_dtype(dtype, name="dtype"):
    """np.float32 / np.float64 from a NumPy, torch or JAX dtype (or its name)."""
    dt = None
    for candidate in () if dtype is None else (dtype, str(dtype).replace("torch.", "")):  # torch dtypes go by their name
        try:
            dt = np.dtype(candidate)
            break
        except TypeError:
            continue
    if dt not in FLOAT_DTYPES:
        half = "float16" in str(dtype)  # float16, bfloat16 (NumPy, torch, JAX or by name)
        raise ValueError(f"{name} must be float32 or float64, got {dtype!r}"
                         + (f"; {_HALF_PRECISION_FIX}" if half else ""))
    return dt


def _name(model, name):
    if name is not None:
        return str(name)
    return getattr(model, "__qualname__", None) or getattr(model, "__name__", None) or type(model).__name__


def from_torch(model, process, output="eps", time="t", *, batch_size=4096, dtype=None, device=None,
               fractional=False, cast_output=False, autograd=False, sample_shape=None, name=None):
    """The score s(x, t) of a PyTorch model trained in any convention (see ModelScore).

    Parameters
    ----------
    model : torch.nn.Module or callable
        model(x, time) -> tensor of x's shape; x a (b, d) tensor (b, *sample_shape if
        given) of `dtype` on `device`, time a (b,) tensor (see `time`), both copies the
        model may change in place. A diffusers
        UNet returns an output object: pass lambda x, t: unet(x, t).sample. Run under
        torch.inference_mode() (or, with autograd=True, with gradients enabled and the
        output detached), so no autograd graph outlives a batch; the module is not
        switched to eval mode (a module in training mode with active dropout or
        batch-norm layers is refused, when built and at each call: call model.eval()
        first; so is a batch norm with track_running_stats=False, which normalises by the
        batch in eval mode too). The modules looked at are the model's own, or those a function reaches
        through a bound method, functools.partial, its closure or its globals, or a
        callable object through its attributes.
    process : a process of sgm_ref.processes
        The convention the model was trained in (x = alpha_t x0 + sigma_t z).
    output : {"eps", "x0", "v", "score", "velocity"}
        What the model returns (sgm_ref.conventions).
    time : {"t", "timestep", "sigma"}
        What the model takes as its second argument: sgm_ref's time of `process`, the
        discrete DDPM timestep N t - 1 (DDPM processes only; passed as int64 unless
        fractional=True, then in `dtype`), or sigma_t.
    batch_size : int
        Rows per model call (bounds memory).
    dtype : float32 or float64 (NumPy or torch), optional
        The dtype the model computes in; default the dtype of the module's floating
        parameters and buffers (which must agree), or torch's default dtype for a plain
        function or a module without any.
    device : torch.device or str, optional
        Default the parameters' device, else CPU. One torch cannot use (e.g. "cuda"
        without CUDA) is refused here.
    fractional : bool
        Allow non-integer timesteps (time="timestep"): sgm_ref's DDPM process puts
        timestep N t - 1 at every t, but whether the model means the same by a fractional
        timestep is the model's business (diffusers' schedulers interpolate sigma linearly
        between the integers; sgm_ref's DDPM keeps beta constant on each step).
    cast_output : bool
        Return scores in the dtype of the points passed in instead of the model's.
    autograd : bool
        Run the model with gradients enabled, for models that differentiate inside
        (a score as -grad of an energy network, torch.autograd.grad on x); each batch's
        graph is dropped once its output is detached. Default False: inference mode.
    sample_shape : tuple of int, optional
        The shape of one sample as the model takes it, e.g. (3, 32, 32) for an image
        UNet: each batch of rows is reshaped to (b, *sample_shape) for the model and its
        output flattened back (sgm_ref's points are always (n, d), d = prod(sample_shape)).
    name : str, optional
        How errors name the model (default its qualified name or class).

    Returns
    -------
    ModelScore
        s(x, t) -> ndarray (n, d); s.dtype is the model's dtype.

    Raises
    ------
    ValueError
        An unknown output or time kind; time="timestep" with a non-DDPM process; a bad
        sample_shape; a module
        with parameters of several dtypes and no dtype given; dtype other than float32 or
        float64; a module in training mode with dropout or batch norm, or with a batch
        norm without running statistics. (When called: as
        ModelScore; also such a module switched to training mode since.)
    ImportError
        torch is not installed.
    """
    import torch

    process, batch_size = _check_in_args(process, output, time, batch_size, fractional, cast_output)
    label = _name(model, name)
    if not callable(model):
        raise ValueError(f"model must be a torch.nn.Module or a callable, got {type(model).__name__}")
    tensors = []
    if isinstance(model, torch.nn.Module):
        tensors = [p for p in list(model.parameters()) + list(model.buffers()) if p.is_floating_point()]
    stochastic = (torch.nn.modules.dropout._DropoutNd, torch.nn.modules.batchnorm._BatchNorm)
    # each module's dropout and batch-norm layers, found once: walking every module's tree at
    # each call cost a small network of many layers ~20% of its call time (302 modules, 64 rows)
    modules = [(module, [m for m in module.modules() if isinstance(m, stochastic)])
               for module in _modules_of(model, torch)]

    def check(x, t):  # at each call too: a module may be switched back to train() after from_torch
        for module, layers in modules:
            random = [type(m).__name__ for m in layers if m.training and (
                (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
                or isinstance(m, torch.nn.modules.batchnorm._BatchNorm))]
            batch = [type(m).__name__ for m in layers  # batch statistics in eval mode too
                     if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training
                     and not m.track_running_stats]
            if batch:
                raise ValueError(f"model {label!r} has {sorted(set(batch))} layers with track_running_stats=False: "
                                 "they normalise by the batch's statistics even in eval mode, so a row's output "
                                 "would depend on the rows batched with it")
            if random:
                who = "is" if module is model else f"calls a {type(module).__name__} module that is"
                raise ValueError(f"model {label!r} {who} in training mode with {sorted(set(random))} layers (its "
                                 "output would be random or depend on the batch); call model.eval() first"
                                 + ("" if module is model else " on that module"))

    check(None, None)
    if dtype is None:
        found = {p.dtype for p in tensors}
        if len(found) > 1:
            raise ValueError(f"model {label!r} has parameters of several dtypes {sorted(map(str, found))}; "
                             "pass dtype= the one it computes in")
    if dtype is not None:
        dt = _numpy_dtype(dtype)
    elif found:
        dt = _numpy_dtype(found.pop(), f"the dtype of model {label!r}'s parameters")
    else:
        dt = _numpy_dtype(torch.get_default_dtype(), "torch's default dtype")
    if device is None:
        device = tensors[0].device if tensors else torch.device("cpu")
    given = device
    try:  # a bad or absent device was the model's error at its first call (torch.tensor(x, device=...))
        device = torch.device(device)
        torch.empty(0, device=device)
    except (RuntimeError, TypeError, AssertionError) as e:
        why = str(e).splitlines()[0] if isinstance(e, (RuntimeError, AssertionError)) else "not a device"
        raise ValueError(f"device must be a torch device this machine has, such as 'cpu', got {given!r} "
                         f"({why})") from None

    if not isinstance(autograd, (bool, np.bool_)):
        raise ValueError(f"autograd must be True or False, got {autograd!r}")
    mode = torch.enable_grad if autograd else torch.inference_mode

    def run(xb, tb):
        # tensors of their own (torch.tensor copies): a model that works on its input in
        # place (x.mul_(...)) must change neither the caller's x nor the x the score is formed from
        xt, tt = torch.tensor(xb, device=device), torch.tensor(tb, device=device)
        with mode():
            out = model(xt, tt)
        return out.detach() if torch.is_tensor(out) else out

    def as_array(out):
        if not torch.is_tensor(out):
            return None, None, None
        return tuple(out.shape), str(out.dtype).replace("torch.", ""), lambda: out.detach().to("cpu").numpy()

    return ModelScore(run, as_array, name=label, process=process, output=output, time=time, batch_size=batch_size,
                      dtype=dt, fractional=bool(fractional), cast_output=bool(cast_output), framework="torch",
                      sample_shape=_check_sample_shape(sample_shape), check=check)


def _modules_of(model, torch):
    """The torch modules a model is or calls: itself, a bound method's module, a functools.partial's
    function and arguments, what a function closes over or reads as a global (lambda x, t:
    unet(x, t).sample) and the attributes of a callable object, followed through the
    functions these call in turn."""
    import dis
    import functools

    found, seen, todo = [], set(), [model]
    while todo:
        obj = todo.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        if isinstance(obj, torch.nn.Module):
            found.append(obj)
        elif isinstance(obj, functools.partial):
            todo += [obj.func, *obj.args, *obj.keywords.values()]
        elif callable(obj):
            if getattr(obj, "__self__", None) is not None:  # a bound method, e.g. net.forward
                todo.append(obj.__self__)
            func = getattr(obj, "__func__", obj)
            code = getattr(func, "__code__", None)
            if code is None:
                if not isinstance(obj, type) and isinstance(getattr(obj, "__dict__", None), dict):
                    todo += list(vars(obj).values())  # an object with __call__ (a pipeline holding its unet)
                continue
            for cell in getattr(func, "__closure__", None) or ():
                try:
                    todo.append(cell.cell_contents)
                except ValueError:  # a cell not yet filled
                    pass
            names = getattr(func, "__globals__", {})
            todo += [names[i.argval] for i in dis.get_instructions(code)
                     if i.opname == "LOAD_GLOBAL" and i.argval in names]
    return found


def from_jax(fn, process, output="eps", time="t", *, batch_size=4096, dtype=None, fractional=False,
             cast_output=False, sample_shape=None, name=None):
    """The score s(x, t) of a JAX model trained in any convention (see ModelScore).

    Parameters are those of from_torch (without device and autograd: JAX's default
    device is used, and jax.grad inside fn just works), except:

    fn : callable
        fn(x, time) -> array of x's shape; x a (b, d) jax array of `dtype`, time a (b,)
        jax array. Plain (or jitted) evaluation keeps no gradients: JAX differentiates
        only inside jax.grad and friends. Wrap it with jax.jit yourself for speed.
    dtype : float32 or float64, optional
        Default JAX's default float dtype: float32, or float64 with jax_enable_x64.
        float64 without jax_enable_x64 is refused (JAX would compute in float32), when
        built and at each call (JAX would round x to float32 without a word).

    Raises
    ------
    ValueError
        As from_torch; also dtype float64 while jax_enable_x64 is off. (When called: as
        ModelScore; also x or t a JAX tracer, or jax_enable_x64 switched off since.)
    ImportError
        jax is not installed.
    """
    import jax
    import jax.numpy as jnp

    process, batch_size = _check_in_args(process, output, time, batch_size, fractional, cast_output)
    label = _name(fn, name)
    if not callable(fn):
        raise ValueError(f"fn must be a callable, got {type(fn).__name__}")
    default = np.dtype(jnp.zeros(()).dtype.name)
    dt = default if dtype is None else _numpy_dtype(dtype)
    if dt == np.float64 and default != np.float64:
        raise ValueError("dtype=float64 needs JAX's 64-bit mode: jax.config.update('jax_enable_x64', True) "
                         "before creating arrays; without it JAX computes in float32 (pass dtype='float32')")

    def x64():  # read at each call: jax_enable_x64 may change after from_jax (jax.enable_x64 is a context)
        return jax.dtypes.canonicalize_dtype(jnp.float64) == jnp.float64  # 0.6 us (making an array: 28 us)

    def check(x, t):
        for arg, value in (("x", x), ("t", t)):
            if isinstance(value, jax.core.Tracer):
                raise ValueError(f"{arg} is a JAX tracer: the score of from_jax takes and returns NumPy arrays, so it "
                                 "cannot run inside jax.jit, jax.vmap or jax.grad; call it with concrete arrays "
                                 "(and jit the model fn itself)")
        if dt == np.float64 and not x64():
            # JAX would take x as float32 without a word, and a model ending in np.asarray(..., float64)
            # would pass every check with float32 digits
            raise ValueError(f"jax model {label!r} was built with dtype float64, but jax_enable_x64 is off now "
                             "(JAX would round x to float32): call it with jax_enable_x64 on, as when it was "
                             "built, or build it with dtype='float32'")

    def run(xb, tb):
        if tb.dtype == np.int64 and not x64():
            tb = tb.astype(np.int32)  # JAX's integer without x64 (timesteps are < 2^31)
        return fn(jnp.asarray(xb), jnp.asarray(tb))

    def as_array(out):
        if isinstance(out, jax.core.Tracer) or not isinstance(out, (jax.Array, np.ndarray)):
            return None, None, None  # a tracer has a shape and dtype, but no values
        return tuple(out.shape), np.dtype(out.dtype).name, lambda: np.asarray(out)

    return ModelScore(run, as_array, name=label, process=process, output=output, time=time, batch_size=batch_size,
                      dtype=dt, fractional=bool(fractional), cast_output=bool(cast_output), framework="jax",
                      sample_shape=_check_sample_shape(sample_shape), check=check)


# -- between processes ------------------------------------------------------------------------


def convert_score(score, from_process, to_process):
    """The score of the same family of laws p_t in another process's convention.

    If score(x, t) = grad log p_t(x) with x, t of from_process, the returned function is
    grad log of the same law under to_process: with (u, c) = convert_time(t, to_process,
    from_process) (u the from_process time of equal log-SNR, x_from = c x_to),

        s_to(x, t) = c score(c x, u).

    E.g. a k-diffusion denoiser audited with OU metrics:
    convert_score(from_torch(D, EDM(), "x0", time="sigma"), EDM(), OU()).

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    from_process, to_process : processes of sgm_ref.processes

    Returns
    -------
    callable (x (n, d), t scalar or (n,)) -> ndarray (n, d) in the dtype score returns
    (its `dtype` attribute is carried over when it has one).

    Raises
    ------
    ValueError (when called)
        t out of to_process's range or with no counterpart in from_process; c x beyond
        the range of x's dtype; score returning a non-finite value, or an array that is
        not real floating-point (an integer score came back truncated); c times the score
        beyond the range of its dtype (naming the row, never a NaN or inf returned).
    """
    from_process = check_process(from_process, "from_process", variance_preserving=False)
    to_process = check_process(to_process, "to_process", variance_preserving=False)
    if not callable(score):
        raise ValueError(f"score must be a callable (x, t) -> ndarray, got {type(score).__name__}")

    def converted(x, t):
        x = check_points(x, "x")
        n = x.shape[0]
        t = to_process._times(t, n=n)
        if n == 0:  # no rows (convert_time takes no empty times): the score's own empty answer
            u, c = np.empty(0), np.empty((0, 1))
        else:
            t = np.broadcast_to(t, (n,))
            u, c = convert_time(t, to_process, from_process)
            u, c = np.broadcast_to(u, (n,)), np.asarray(c)[:, None]

        def refuse_nonfinite(arr, what, fix):  # a NaN or inf went on silently (into score, or out)
            if not np.all(np.isfinite(arr)):
                i = int(np.argmax(~np.all(np.isfinite(arr), axis=1)))
                raise ValueError(f"{what} at row {i} (t = {float(t[i])!r}, {from_process!r} time {float(u[i])!r}, "
                                 f"x_from = {float(c[i, 0]):.3g} x); {fix}")

        with np.errstate(over="ignore", invalid="ignore"):
            xs = (c * x).astype(x.dtype)
        refuse_nonfinite(xs, f"x in {from_process!r}'s scale overflows {x.dtype}",
                         "use a smaller t or smaller x" + (", or float64 x" if x.dtype == np.float32 else ""))
        s = score(xs, u)
        if not isinstance(s, np.ndarray) or s.shape != x.shape:
            raise ValueError(f"score returned {type(s).__name__} of shape {np.shape(s)}; expected an ndarray {x.shape}")
        if s.dtype.kind != "f":  # c times an integer score went back to integers (truncated), a complex one stayed so
            raise ValueError(f"score returned dtype {s.dtype}; a score is real: return a floating-point array "
                             f"(e.g. of x's dtype, {x.dtype})")
        refuse_nonfinite(s, "score returned a non-finite value", "a score of finite points is finite")
        with np.errstate(over="ignore", invalid="ignore"):
            out = (c * s).astype(s.dtype)
        refuse_nonfinite(out, f"the converted score, x_from / x times score's value, overflows {s.dtype}",
                         "use a smaller t" + (", or a float64 score" if s.dtype == np.float32 else ""))
        return out

    if hasattr(score, "dtype"):
        converted.dtype = score.dtype
    return converted


# -- out: the exact oracle as a peer's model ------------------------------------------------------


class OracleModel:
    """A target's exact oracle as a torch callable with a peer's signature (see to_torch).

    model(x, time) -> tensor of x's shape, dtype and device: x a tensor (n, d) (or
    (n, *shape) with prod(shape) = d, reshaped), time a real (not bool or complex) tensor
    of shape () / (1,) / (n,) or a Python number. Computed in float64 (NumPy), never
    with gradients; a value beyond the range of x's dtype (float16 scores near sigma = 0)
    raises ValueError.
    """

    def __init__(self, target, process, output, signature, fractional):
        self.target = target
        self.process = process
        self.output = output
        self.signature = signature
        self.fractional = fractional

    def __repr__(self):
        return (f"OracleModel({self.target!r}, {self.process!r}, output={self.output!r}, "
                f"signature={self.signature!r})")

    def time_of(self, arg, rounding=0.0):
        """sgm_ref's time of `process` for the peer's time argument (float64 array).

        rounding: the relative rounding (eps) of the argument's own dtype: 2^-23 for float32,
        2^-7 for bfloat16, 0 for float64. A sigma of such a dtype that lies outside the
        process's range by no more than one of its own ulps plus 64 float32 ulps (a float32
        computation's error, the allowance sgm_ref.audit gives a peer's rounding), relative,
        is the end it was meant to be. k-diffusion's float32 Karras sigmas with its default
        rho = 7 end up to 18 ulps below sigma_min (0.009999996 for VE(0.01, 50)). With a
        small rho they can end further below (up to 81 ulps at rho = 3, 1249 at rho = 2):
        those are refused; pass float64 sigmas. A float64 sigma gets 64 float64 ulps: k-diffusion's
        Karras sigmas computed in float64 (torch's default dtype float64) end up to 11 ulps
        below sigma_min at rho = 7 (VE(1e-3, 1e4): 0.0009999999999999976, which was refused)
        and up to 1147 at rho = 1, a straight line from sigma_max (VE(0.01, 50), n = 2..199:
        refused)."""
        arg = np.asarray(arg, dtype=np.float64)
        if not np.all(np.isfinite(arg)):
            bad = float(arg.reshape(-1)[~np.isfinite(arg.reshape(-1))][0])
            raise ValueError(f"the {self._argname} must be finite, got {bad!r}")
        if self.signature == "diffusers":
            ts = _snap_timesteps(arg, self.process, self.fractional, "timestep")
            return (ts + 1.0) / self.process.num_train_timesteps
        if np.any(arg < 0):
            raise ValueError(f"sigma must be >= 0, got {float(arg.min())!r}")
        lo, hi = (0.0, self.process.t_max) if isinstance(self.process, EDM) else \
            (self.process.sigma_min, self.process.sigma_max)
        # a float64 sigma (rounding = 0): 64 of its ulps; a lower precision: its ulp + 64 float32 ulps
        slack = rounding + 64.0 * (2.0**-23 if rounding > 0 else 2.0**-52)
        arg = np.where((arg < lo) & (arg >= lo * (1.0 - slack)), lo, arg)
        arg = np.where((arg > hi) & (arg <= hi * (1.0 + slack)), hi, arg)
        outside = (arg < lo) | (arg > hi)
        if np.any(outside):
            k = int(np.argmax(outside))
            raise ValueError(f"sigma = {float(arg.reshape(-1)[k])!r} (entry {k} of {arg.size}) is outside the range "
                             f"[{lo!r}, {hi!r}] of {self.process!r}")
        if isinstance(self.process, EDM):
            return self.process._times(arg, name="sigma")
        with np.errstate(divide="ignore"):
            lam = -2.0 * np.log(arg)  # alpha = 1: lambda = -2 log sigma
        # the ends exactly, whatever the log's rounding does to them
        return np.clip(np.asarray(self.process.time_of_log_snr(np.clip(lam, self.process.log_snr(1.0),
                                                                       self.process.log_snr(0.0))),
                                  dtype=np.float64), 0.0, 1.0)

    @property
    def _argname(self):
        return "timestep" if self.signature == "diffusers" else "sigma"

    def _direct(self, t):
        """Rows (a bool (n,) mask of t (n,)) the target evaluates under `process` itself: all for a
        variance-preserving process; for the others, those where sigma_t^2 is finite (EDM's
        sigma beyond ~1.3e154 overflows it) if the target is an exact mixture of sgm_ref.targets
        (GaussianMixture, ProductMixture: a score under every process), else
        none (the rest go through OU, as a target of score(x, t, process) may take only
        variance-preserving processes)."""
        if isinstance(self.process, VariancePreserving):
            return np.ones(np.shape(t), dtype=bool)
        if not isinstance(self.target, (GaussianMixture, ProductMixture)):
            return np.zeros(np.shape(t), dtype=bool)
        with np.errstate(over="ignore"):
            return np.isfinite(self.process._sigma2(t))

    def score(self, x, t):
        """grad log p_t(x) under `process`, float64 (x (n, d), t scalar or (n,)): the target's own
        score(x, t, process) (_direct), else through OU:
        grad log p^P_t(x) = c score_OU(c x, u) with (u, c) = convert_time(t, P, OU()).

        The OU route rounds c x, which costs the score eps |x| / |x - alpha mu| of its digits
        where sigma_t is small: 4.5e-12 of EDM's score at sigma = 3e-6 for x = mu + sigma z
        (the mixtures' own EDM score: 2e-16), so it is taken only where it must be."""
        direct = self._direct(t)
        if np.all(direct):
            return self.target.score(x, t, self.process)
        t = np.broadcast_to(np.asarray(t, dtype=np.float64), (x.shape[0],))  # a scalar t (the replays') too
        direct = np.broadcast_to(direct, t.shape)
        out = np.empty(x.shape, dtype=np.float64)
        if np.any(direct):
            out[direct] = self.target.score(x[direct], t[direct], self.process)
        u, c = convert_time(t[~direct], self.process, OU())
        c = np.asarray(c)[:, None]
        out[~direct] = c * self.target.score(c * x[~direct], u, OU())
        return out

    def _value(self, x, t):
        """The exact `output` at x (n, d), t (n,), float64: score() converted by
        sgm_ref.conventions, x0 by Tweedie's (x + sigma^2 score) / alpha.

        Where alpha is small or sigma large, Tweedie cancels the digits of x / alpha (5e-12
        of v at the last cosine DDPM timestep, 5e-14 of D at EDM's sigma 80). A target that
        knows its posterior mean E[x0 | x_t] (the Gaussian and product mixtures) gives x0
        without it, to a few ulps of its means' size: for x0, v and velocity each row takes
        the x0 with the smaller rounding, eps (|x| + sigma^2 |score|) / alpha or
        eps (max |mu_k| + |x0|) (Tweedie keeps x0 = x to its last digit as sigma -> 0, where
        the posterior mean holds only |mu|'s), and v, velocity = A eps + B x0
        (conventions' minors, eps = -sigma score).

        Where the conversion from the score is refused because a coefficient is beyond
        float64 though the value is not (score -> v multiplies by -sigma (1 + sigma^2),
        beyond float64 for EDM's sigma > 5.6e102; score -> x0 by sigma^2, beyond 1.3e154),
        the posterior mean's value is returned if it holds on every row; else the refusal."""
        score = self.score(x, t)
        means = getattr(self.target, "means", None)
        posterior = self.output in ("x0", "v", "velocity") and means is not None \
            and callable(getattr(self.target, "_posterior_mean", None))
        try:
            tweedie, refusal = convert(score, x, t, self.process, "score", self.output), None  # its refusals too
        except ValueError as e:  # a coefficient beyond float64: the posterior mean may hold the value
            if not posterior:
                raise
            tweedie, refusal = None, e
        if not posterior:
            return tweedie
        alpha, sigma = self.process._alpha(t), self.process._sigma(t)
        try:  # under OU: E[x0 | x_P = x] = E[x0 | x_OU = c x]. Unlike the score, not under P itself:
            # the mixtures' posterior weights under EDM round their log-determinants ~ log sigma^2
            # below the shift of GaussianMixture._log_dets (1.8e-15 of x0 at sigma = 1e3 for unequal
            # covariances in d = 3; under OU 1.1e-16), and sigma^2 may overflow
            if isinstance(self.process, VariancePreserving):
                x0 = self.target._posterior_mean(x, t, self.process)
            else:
                u, c = convert_time(t, self.process, OU())
                x0 = self.target._posterior_mean(np.asarray(c)[:, None] * x, u, OU())
        except ValueError:  # a point beyond the mixture's reach: Tweedie's value (or refusal) stands
            if refusal is not None:
                raise refusal from None
            return tweedie
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            t_bound = (np.abs(x).max(axis=1) + sigma**2 * np.abs(score).max(axis=1)) / alpha
            p_bound = float(np.max(np.abs(means))) + np.abs(x0).max(axis=1)
            if self.output != "x0":
                eps = -sigma[:, None] * score
                D = _minors(self.process, t)
                x0 = -D[(self.output, "x0")][:, None] * eps - D[("eps", self.output)][:, None] * x0
            better = (p_bound < t_bound) & np.all(np.isfinite(x0), axis=1)
        if refusal is not None:  # no Tweedie value to fall back on
            if not np.all(better):
                raise refusal
            return x0
        return np.where(better[:, None], x0, tweedie)

    def _sigma_frame(self):
        """Whether a VE denoiser's values are taken at the sigma given (_value_at_sigma): for the
        exact mixtures, whose score takes any process."""
        if self.signature != "denoiser" or not isinstance(self.process, VE):
            return False
        return isinstance(self.target, (GaussianMixture, ProductMixture))

    def _value_at_sigma(self, x, t, sigma):
        """A VE denoiser's `output` at x (n, d) and the sigma given (scalar or (n,), as time_of
        took it), float64: x = x0 + sigma z is p_sigma of EDM, so everything but the velocity is
        EDM's at t = sigma, and the velocity dx/dt = sigma' eps with sigma' = sigma log(sigma_max
        / sigma_min). At VE's t = time_of(sigma), sigma_t comes back 13 ulps off sigma (20 for
        VE(1e-3, 1e4): exp(t log ratio) after a log), 4.6e-15 of eps and the score at sigma 35."""
        lo, hi = self.process.sigma_min, self.process.sigma_max
        sigma = np.broadcast_to(np.clip(np.asarray(sigma, dtype=np.float64), lo, hi), t.shape)  # time_of's ends
        velocity = self.output == "velocity"
        edm = OracleModel(self.target, EDM(), "eps" if velocity else self.output, "denoiser", False)
        try:
            value = edm._value(x, np.ascontiguousarray(sigma))
        except ValueError:  # a refusal (an x0 or v beyond float64): as VE's, naming VE and its time
            return self._value(x, t)
        return value * (sigma * self.process._log_ratio)[:, None] if velocity else value

    def __call__(self, x, time):
        import torch

        if not torch.is_tensor(x):
            raise ValueError(f"x must be a torch tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[0] == 0:
            raise ValueError(f"x must have shape (n, d) with n >= 1, got {tuple(x.shape)}")
        if not x.is_floating_point():  # an integer x came back truncated to its dtype, a complex one lost its part
            raise ValueError(f"x must be a real floating-point tensor (the sampler's state), got dtype "
                             f"{str(x.dtype).replace('torch.', '')}; pass x.float() or x.double()")
        n = x.shape[0]
        try:
            flat = x.detach().to("cpu", torch.float64).reshape(n, -1).numpy()
        except (NotImplementedError, RuntimeError) as e:  # on the meta device, sparse: no values to read
            raise ValueError(f"x is a tensor whose values cannot be read ({type(e).__name__}: {e}); "
                             "pass a dense tensor holding the values") from e
        d = getattr(self.target, "dim", flat.shape[1])
        if flat.shape[1] != d:
            raise ValueError(f"x must have d = {d} entries per row (the target's dimension), got shape {tuple(x.shape)}")
        rounding = 0.0
        if torch.is_tensor(time):
            if time.dtype == torch.bool or time.is_complex():  # True is not timestep 1, nor 1 + 2j sigma 1
                raise ValueError(f"{self._argname} must be a real tensor or number, got a tensor of dtype "
                                 f"{str(time.dtype).replace('torch.', '')}")
            if time.is_floating_point() and time.dtype != torch.float64:
                rounding = float(torch.finfo(time.dtype).eps)
            arg = time.detach().to("cpu", torch.float64).numpy()
        elif isinstance(time, (int, float, np.integer, np.floating)) and not isinstance(time, (bool, np.bool_)):
            if isinstance(time, np.floating) and np.finfo(type(time)).bits < 64:
                rounding = float(np.finfo(type(time)).eps)
            arg = np.float64(time)
        else:
            raise ValueError(f"{self._argname} must be a tensor or a number, got {type(time).__name__}")
        if arg.ndim > 1 or (arg.ndim == 1 and arg.shape[0] not in (1, n)):
            raise ValueError(f"{self._argname} must have shape (), (1,) or ({n},), got {arg.shape}")
        t = np.ascontiguousarray(np.broadcast_to(self.time_of(arg.reshape(-1) if arg.ndim else arg, rounding),
                                                 (n,)))
        value = self._value_at_sigma(flat, t, arg) if self._sigma_frame() else self._value(flat, t)
        out = torch.from_numpy(value.reshape(x.shape)).to(dtype=x.dtype)
        if not bool(torch.isfinite(out).all()):  # float64 -> float16 / bfloat16 / float32
            i = int(np.argmax(~torch.isfinite(out).reshape(n, -1).all(1).numpy()))
            largest = float(np.abs(value).max())
            # only the dtypes that hold it (float32 x, or bfloat16's float32 range, need float64)
            wider = [name for name, dt in (("float32", torch.float32), ("float64", torch.float64))
                     if dt != x.dtype and torch.finfo(dt).max >= largest]
            raise ValueError(f"the exact {self.output} overflows {str(x.dtype).replace('torch.', '')} at row {i} "
                             f"(max |{self.output}| = {np.abs(value[i]).max():.3g} "
                             f"at sgm_ref time t = {float(t[i])!r}); "
                             f"pass x as {' or '.join(wider)}")
        return out.to(device=x.device)


def to_torch(target, process, output=None, signature="denoiser", *, fractional=False):
    """A target's exact oracle as a torch model in a peer's convention.

    signature="denoiser": k-diffusion's model(x, sigma) (EDM, Karras et al. 2022): x is
        x0 + sigma z, unscaled; process is EDM() or a VE process (alpha = 1), and sigma
        is its sigma_t. Default output "x0": D(x; sigma) = E[x0 | x], what
        k-diffusion's samplers (sample_euler, sample_heun, ...) call.
    signature="diffusers": model(x, timestep) of a DDPM process: timestep i (a tensor of
        shape (), (1,) or (n,), or a Python number; integer-valued unless
        fractional=True) is sgm_ref time t = (i + 1) / N, and x is the variance-preserving
        x_t = sqrt(alphas_cumprod[i]) x0 + sqrt(1 - alphas_cumprod[i]) z, the UNet's input.
        For EulerDiscreteScheduler that is scale_model_input(sample, timestep) =
        sample / sqrt(sigma^2 + 1), not the scheduler's own sample. Default output "eps"
        (prediction_type="epsilon"; "v" for "v_prediction", "x0" for "sample").

    The score is exact: target.score(x, t, process) under a variance-preserving process,
    and under any process for GaussianMixture and ProductMixture (where sigma_t^2 is
    finite); otherwise through OU, grad log p^P_t(x) = c score_OU(c x, u) with (u, c) =
    convert_time(t, P, OU()) (OracleModel.score); then converted to `output` by
    sgm_ref.conventions, all in float64, and returned in x's dtype and device. A VE
    denoiser of these two mixtures is evaluated at the sigma given (as EDM's p_sigma), not
    at sigma_t of the VE time of sigma, which comes back ~13 ulps off it. x0, v and
    velocity of a target with an exact posterior mean (GaussianMixture, ProductMixture)
    are taken from that posterior mean where it is the better of the two, which does not
    lose the digits Tweedie's formula cancels where alpha_t is small or sigma large, and
    holds x0 and v where Tweedie's coefficient is beyond float64 (EDM's sigma above 1.3e154
    and 5.6e102; OracleModel._value).

    Parameters
    ----------
    target : object with score(x, t, process) and dim (e.g. a GaussianMixture)
    process : EDM or VE for "denoiser", DDPM for "diffusers"
    output : {"x0", "eps", "v", "score", "velocity"}, optional
    signature : {"denoiser", "diffusers"}
    fractional : bool
        Accept non-integer timesteps (diffusers): sgm_ref's DDPM reads timestep i as time
        (i + 1) / N with beta constant on each step, while diffusers' schedulers
        interpolate sigma linearly between integer timesteps, so at a fractional
        timestep the two disagree by a fraction of a step. Integer timestep spacings
        ("leading", "trailing") avoid the question, except with use_karras_sigmas (or
        exponential or beta sigmas), whose timesteps are fractional whatever the spacing.

    Returns
    -------
    OracleModel

    Raises
    ------
    ValueError
        Unknown signature or output; a process the signature does not fit; a target
        without a score method. (When called: x not a tensor of the target's dimension,
        a time of the wrong shape, a sigma or timestep out of range, a fractional
        timestep without fractional=True, an output beyond the range of x's dtype.)
    """
    if not isinstance(signature, str) or signature not in SIGNATURES:
        raise ValueError(f"signature must be one of {SIGNATURES}, got {signature!r}")
    process = check_process(process, variance_preserving=False)
    if signature == "denoiser" and not isinstance(process, (EDM, VE)):
        raise ValueError(f"signature='denoiser' reads x = x0 + sigma z (alpha = 1): process must be EDM() or a VE, "
                         f"got {process!r}")
    if signature == "diffusers" and not isinstance(process, DDPM):
        raise ValueError(f"signature='diffusers' takes discrete timesteps: process must be a DDPM, got {process!r}")
    output = {"denoiser": "x0", "diffusers": "eps"}[signature] if output is None else _check_kind(output, "output")
    if not callable(getattr(target, "score", None)):
        raise ValueError(f"target must have an exact score(x, t, process) method, got {type(target).__name__}")
    if not isinstance(fractional, (bool, np.bool_)):
        raise ValueError(f"fractional must be True or False, got {fractional!r}")
    return OracleModel(target, process, output, signature, bool(fractional))
