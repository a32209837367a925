"""Input checks shared by the public API.

Every check raises ValueError naming the argument and saying how to fix it; nothing
is clipped, cast between float kinds or renormalised behind the caller's back.
"""

import os
from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np

FLOAT_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))


class ResultOverflowError(ValueError):
    """A measured quantity is beyond float64's range (the score is that far from the truth).

    Not a bad argument: the metrics that raise it also take overflow="inf", which reports
    such a quantity as inf (its standard error as nan) and measures everything else.
    """


def check_overflow_policy(overflow):
    if overflow not in ("raise", "inf"):
        raise ValueError(f"overflow must be 'raise' or 'inf', got {show(overflow)}")
    return overflow


def show(value):
    """repr of value for a message, numpy scalars as the Python numbers they hold (no np.float64(...))."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_rng(rng, name="rng"):
    """Return rng if it is a numpy Generator, else raise."""
    if not isinstance(rng, np.random.Generator):
        raise ValueError(
            f"{name} must be a numpy.random.Generator (for example "
            f"numpy.random.default_rng(0)), got {type(rng).__name__}"
        )
    return rng


def check_count(n, name, minimum=1):
    """Return n as int if it is an integer >= minimum, else raise (a 0-d integer array counts,
    as check_real takes a 0-d array: np.array(100) was refused as 'got array(100)'; bools and
    np.timedelta64, an integer type to NumPy, do not)."""
    if isinstance(n, np.ndarray) and n.ndim == 0:
        n = n[()]
    if isinstance(n, np.timedelta64):  # an np.integer to NumPy: int() raised a TypeError or read its count
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n!r}, a time span; pass a number")
    if isinstance(n, (bool, np.bool_)) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {show(n)}")
    if n < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {n}")
    return int(n)


def check_real(value, name, *, low=None, high=None, low_open=False, high_open=False):
    """Return value as a Python float if it is a finite real in the given range, else raise.

    low/high bound the value (closed unless low_open/high_open); bools, strings, None,
    NumPy time spans (np.timedelta64, an integer type to NumPy) and arrays other than 0-d
    ones (np.array([0.5]) too) are rejected.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value[()]
    if isinstance(value, np.timedelta64):  # an np.integer to NumPy: float() raised a TypeError or read its count
        raise ValueError(f"{name} must be a real number, got {value!r}, a time span; pass a number")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number, got {show(value)}")
    try:
        wide, value = value, float(value)
    except OverflowError:  # an int beyond the float64 range
        raise ValueError(f"{name} must be finite, got an integer too large for float64") from None
    if not np.isfinite(value) and np.isfinite(wide):  # a longdouble beyond float64's range: not its inf
        raise ValueError(f"{name} must be finite in float64, got {wide!r}, beyond float64's range")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value == 0.0 and wide != 0:  # a longdouble below float64's range: not its 0 ("must be > 0, got 0.0")
        raise ValueError(f"{name} must be representable in float64, got {wide!r}, below float64's smallest "
                         "positive number (5e-324)")
    if low is not None and (value < low or (low_open and value == low)):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and (value > high or (high_open and value == high)):
        raise ValueError(f"{name} must be {'<' if high_open else '<='} {high}, got {value!r}")
    return value


def check_progress(progress):
    """Raise unless progress is True, False or None (a progress bar only when stderr is a
    terminal): "no" was read as True and showed a bar, an array met NumPy's "truth value of
    an array ... is ambiguous"."""
    if progress is not None and not isinstance(progress, (bool, np.bool_)):
        plain = isinstance(progress, (str, bytes, int, float, np.generic))
        given = show(progress) if plain else type(progress).__name__
        raise ValueError(f"progress must be True, False or None (a bar only when stderr is a terminal), got {given}")


def check_float_dtype(dtype, name="dtype"):
    """Return np.dtype(dtype) if it is float64 or float32 in this machine's byte order, else raise
    (None is rejected; a byte-swapped float64 or float32 is named as such)."""
    try:
        dt = None if dtype is None else np.dtype(dtype)
    except (TypeError, ValueError):  # ValueError: ("f8", -1), a negative sub-array shape
        dt = None
    if dt is not None and dt.kind == "f" and not dt.isnative and dt.newbyteorder("=") in FLOAT_DTYPES:
        # '>f8' is a float64, which "must be float64 or float32" denied; the arrays made are in this
        # machine's byte order, so name the one to pass
        raise ValueError(f"{name} must be float64 or float32 in this machine's byte order, got {dtype!r} "
                         f"(byte-swapped); pass {dt.newbyteorder('=').name!r}")
    if dt is None or dt not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float64 or float32, got {dtype!r}")
    return dt


def _native(arr):
    """arr in this machine's byte order (the same numbers): dtype checks compare with native
    float64 / float32, which a big-endian '>f8' is not equal to."""
    return arr.astype(arr.dtype.newbyteorder("=")) if arr.dtype.kind in "iuf" and not arr.dtype.isnative else arr


def _read_array(value, name):
    """np.asarray(value), with numpy's and torch's refusals named: a ragged list gave NumPy's
    "setting an array element with a sequence" and a torch tensor that requires grad torch's
    RuntimeError, neither naming the argument. A masked array is refused: np.asarray reads the
    numbers under its mask (masked weights, times or grid times were used as if unmasked). So is a
    bool in a list of numbers, which np.asarray reads as 1 or 0 ([[0.5, True]] gave the point
    (0.5, 1.0)), as a bool array is refused by the checks' dtype test, and a bool array or tensor
    or a masked array inside such a list (read as 1 or 0, or as the numbers under the mask), in
    nested lists, tuples, namedtuples or deques alike."""
    if type(value) is np.ndarray:  # as np.asarray gives it: neither masked nor a sequence (the checks below cost
        return value               # ~0.4 us, paid on every oracle call of a sampler's steps)
    if isinstance(value, np.ma.MaskedArray):
        raise ValueError(f"{name} is a masked array, whose masked entries would be read as the numbers under the "
                         "mask; pass a plain ndarray of the values you mean")
    try:
        arr = np.asarray(value)
    except (ValueError, TypeError, RuntimeError) as exc:
        hint = "; pass it .detach()" if "requires grad" in str(exc) else ""
        raise ValueError(f"{name} cannot be read as an array of numbers ({str(exc).splitlines()[0]}){hint}") from None
    if arr.dtype.kind in "iuf" and _is_sequence(value):
        found = _first_bool(value)
        if found is not None:  # np.asarray([[0.5, True]]) is float64 [[0.5, 1.0]]; a bool array is refused by dtype
            where, what = found
            raise ValueError(f"{name} must hold numbers, got {what} at {name}{where}"
                             + (", whose masked entries would be read as the numbers under the mask; pass plain "
                                "values" if what == "a masked array" else ""))
    return arr


def _is_sequence(item):
    """Whether np.asarray reads item as a sequence of entries: a list or tuple (a namedtuple too),
    or another Sequence such as a deque or a range (not a str or bytes, which it reads as one)."""
    return isinstance(item, (list, tuple)) or (
        isinstance(item, Sequence) and not isinstance(item, (str, bytes, bytearray, memoryview)))


def _not_a_number(item):
    """What item is if np.asarray would misread it inside a list of numbers, else None: a bool (or a
    bool array, NumPy's, torch's or another with __array__: read as 1 or 0), or a masked array (read
    as the numbers under its mask)."""
    if isinstance(item, (bool, np.bool_)):
        return f"the boolean {bool(item)}"
    if isinstance(item, np.ma.MaskedArray):
        return "a masked array"
    if not isinstance(item, np.ndarray):
        if not hasattr(item, "__array__") or isinstance(item, np.generic):
            return None
        try:  # a torch or jax tensor: its dtype as NumPy reads it
            item = np.asarray(item)
        except (ValueError, TypeError, RuntimeError):
            return None
    if item.dtype.kind != "b":
        return None
    return f"the boolean {bool(item.flat[0])}" if item.size else "an empty boolean array"


def _first_bool(items):
    """('[i][j]', what) of the first bool (or bool array, or masked array: _not_a_number) in
    reading order in nested sequences (lists, tuples, namedtuples, deques: what np.asarray reads as
    rows), else None. Iterative, so deep nesting cannot exhaust the stack (as targets'
    reject_bools); one pass over the items without positions, which are sought only when there
    is one."""
    stack, found = [items], False
    while stack and not found:
        seq = stack.pop()
        kinds = set(map(type, seq))  # at C speed: a row of floats is {float}
        if kinds <= {float, int}:
            continue
        numbers = {k for k in kinds if issubclass(k, (float, int, np.floating, np.integer)) and k is not bool}
        if kinds <= numbers:  # NumPy's scalars too: a row of np.float64
            continue
        for item in seq:
            kind = type(item)
            if kind in numbers:
                continue
            if kind is list or kind is tuple or _is_sequence(item):
                stack.append(item)  # (a namedtuple's or a deque's bools were missed: [P(0.5, True)] read 1.0)
            elif _not_a_number(item) is not None:
                found = True
                break
    if not found:
        return None
    # depth first in reading order: a row's later bool was named before an earlier one in a nested row
    stack = [(items, "", 0)]
    while stack:
        seq, where, start = stack.pop()
        for i in range(start, len(seq)):
            item = seq[i]
            what = None if _is_sequence(item) else _not_a_number(item)
            if what is not None:
                return f"{where}[{i}]", what
            if _is_sequence(item):
                stack.append((seq, where, i + 1))
                stack.append((item, f"{where}[{i}]", 0))
                break
    return None


def check_real_array(value, name):
    """Return value as a finite float64 array; integers are promoted (exactly up to 2^53 in
    magnitude, rounded to the nearest float64 beyond), float32 widened.

    longdouble (which would lose digits), complex, object and bool arrays are refused; a
    big-endian array (as a file from another machine may hold) is read as the same numbers.
    """
    arr = _native(_read_array(value, name))
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    if arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be an array of real numbers (float64, float32 or integer), got dtype {arr.dtype}")
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def eigh_spd(cov, name):
    """Eigen-decomposition (lam ascending, U) of a symmetric positive-definite matrix or stack.

    cov (d, d) or (K, d, d), float64. Symmetric means within 1e-10 of the largest entry
    (the lower triangle of (C + C^T) / 2 is used); positive definite means smallest
    eigenvalue > d eps times the largest (a positive one below that is named as beyond
    float64's precision), and every eigenvalue within float64's range (entries near 1e308 can
    sum beyond it). Otherwise ValueError naming `name` (and the index k of a stack).
    """
    stack = cov if cov.ndim == 3 else cov[None]
    d = stack.shape[-1]
    label = (lambda k: f"{name}[{k}]") if cov.ndim == 3 else (lambda k: name)
    scale = np.max(np.abs(stack), axis=(1, 2))
    asym = np.max(np.abs(stack - stack.transpose(0, 2, 1)), axis=(1, 2))
    bad = np.flatnonzero(asym > 1e-10 * scale)
    if bad.size:
        raise ValueError(f"{label(bad[0])} is not symmetric (max |C - C^T| = {asym[bad[0]]:.3g}); "
                         "pass a symmetric matrix such as (C + C.T) / 2")
    with np.errstate(over="ignore"):
        sym = 0.5 * (stack + stack.transpose(0, 2, 1))
    if not np.all(np.isfinite(sym)):  # C + C^T overflows (entries beyond 8.99e307): C + (C^T - C) / 2, as exact
        sym = stack + 0.5 * (stack.transpose(0, 2, 1) - stack)  # for a symmetric C, whose C^T - C is 0
    lam, U = np.linalg.eigh(sym)
    big = np.flatnonzero(~np.all(np.isfinite(lam), axis=1))
    if big.size:  # entries near 1e308 whose largest eigenvalue is beyond float64: it read 'not positive definite'
        k = int(big[0])
        c = float(np.ldexp(1.0, int(np.frexp(scale[k])[1]) - 1))  # a power of two: sym / c is exact
        top = float(np.linalg.eigvalsh(sym[k] / c)[-1]) * (c / 1e308)
        raise ValueError(f"{label(k)} has an eigenvalue beyond float64's range (its largest is {top:.3g}e308, "
                         "the largest float64 being 1.8e308); rescale it")
    bad = np.flatnonzero(~(lam[:, 0] > d * np.finfo(np.float64).eps * lam[:, -1]))
    if bad.size:
        k, lo, hi = bad[0], float(lam[bad[0], 0]), float(lam[bad[0], -1])
        if lo > 0:  # positive, but within the rounding of its entries: not 'not positive definite' alone
            raise ValueError(f"{label(k)} is not positive definite to float64 precision: its smallest eigenvalue "
                             f"{lo:.3g} is below d eps = {d * np.finfo(np.float64).eps:.3g} times its largest, "
                             f"{hi:.3g} (condition number {hi / lo:.3g}), where the rounding of its entries "
                             "decides it; pass a better conditioned matrix")
        raise ValueError(f"{label(k)} is not positive definite (smallest eigenvalue {lo:.3g}, largest {hi:.3g})")
    return (lam, U) if cov.ndim == 3 else (lam[0], U[0])


def call_score(score, x, t, where=""):
    """s = score(x, t), checked: an ndarray of x's shape and dtype with finite entries.

    Returned as a plain ndarray (an np.matrix, say, as the array of its numbers); a masked
    array is refused.

    `where` (e.g. " at step 3 (t = 0.5)") is appended to the error message, so a
    failure inside a sampler or a metric says when it happened.
    """
    s = score(x, t)
    if not isinstance(s, np.ndarray):
        raise ValueError(f"score returned a {type(s).__name__}{where}; expected an ndarray of shape {x.shape}")
    if isinstance(s, np.ma.MaskedArray):  # its isfinite skips masked entries; its data under a mask is no value
        raise ValueError(f"score returned a masked array{where}; return a plain ndarray")
    s = _native(np.asarray(s))  # another subclass as the plain array of its numbers (np.matrix's ** is a matrix
    # power); a big-endian one in this machine's byte order (the same numbers), as check_points reads points
    if s.shape != x.shape:
        raise ValueError(f"score returned shape {np.shape(s)}{where}; expected {x.shape}")
    if s.dtype.kind not in "biufc":  # not numbers (object, str: isfinite raised a TypeError; datetime)
        raise ValueError(f"score returned dtype {s.dtype} for points of dtype {x.dtype}{where}; make the score "
                         f"return the points' dtype, {x.dtype}")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"score returned non-finite values{where}")
    if s.dtype != x.dtype:
        if s.dtype in (np.float32, np.float64):
            fix = (f"use points of dtype {s.dtype} (the dtype= argument of the metrics and samplers) or make the "
                   "score return the points' dtype")
        else:  # int, bool, float16, complex: no points of that dtype are accepted
            fix = f"make the score return the points' dtype, {x.dtype}"
        raise ValueError(f"score returned dtype {s.dtype} for points of dtype {x.dtype}{where}; {fix}")
    return s


def check_oracle_output(logp, x):
    """Raise unless log p_t is finite in every row of x.

    An exact oracle is finite wherever its input is, up to the dtype's range: a point
    so far out that its squared distance to the target overflows gets an error naming
    it, not a NaN. Only log p_t is checked (n numbers, not n d): where it is finite the
    score |x - a mu| / v is too, unless the variances v are subnormal.
    """
    bad = ~np.isfinite(logp)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"x[{i}] (largest |entry| {np.max(np.abs(x[i])):.3g}) is too far from the "
                         f"target for {x.dtype}: log p_t or its score there overflows; rescale the points or the target")


def cast_oracle_output(values, x, what):
    """values (computed in float64) in the dtype of the points x, refusing what that dtype
    cannot hold: a float32 point can have a finite float64 divergence beyond float32's
    range, which a bare cast would turn into inf."""
    with np.errstate(over="ignore"):  # named just below
        out = values.astype(x.dtype, copy=False)
    bad = ~np.isfinite(out)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise ValueError(f"the {what} at x[{i}] is {values[i]:.3g}, beyond {x.dtype}'s range (the target's "
                         "components are too narrow or too far apart there); pass float64 points")
    return out


def check_points(x, name="x", d=None):
    """Return x as a C-contiguous (n, d) float array; raise if it is not one.

    Integer input is promoted to float64 (exact up to 2^53 in magnitude, rounded to the nearest
    float64 beyond, as any float64 input is); float32 and float64 pass through
    with their dtype (a big-endian one, as a file from another machine may hold, is put in
    this machine's byte order: the same numbers); anything else, a wrong shape or a
    non-finite entry raises. A masked array raises too: np.asarray reads the numbers under
    its mask as points.
    """
    if isinstance(x, np.ma.MaskedArray):
        raise ValueError(f"{name} is a masked array, whose masked entries would be read as the numbers under the "
                         f"mask; pass a plain ndarray of the points you mean (e.g. the unmasked rows)")
    arr = _read_array(x, name)
    if arr.dtype.kind in "iu":
        arr = arr.astype(np.float64)
    elif arr.dtype.kind == "f" and not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    if arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a float64 or float32 array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        hint = f" (for a single point use {name}[None, :])" if arr.ndim == 1 else ""
        raise ValueError(f"{name} must have shape (n, d), got shape {arr.shape}{hint}")
    if d is not None and arr.shape[1] != d:
        raise ValueError(f"{name} must have shape (n, {d}), got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} non-finite value(s) (NaN or inf)")
    return np.ascontiguousarray(arr)


def check_times(t, n=None, T=None, name="t"):
    """Return t as a float64 scalar (0-d array) or a (n,) array of times in [0, T].

    Parameters
    ----------
    t : float or array_like of shape (n,)
        One time for all rows, or one time per row.
    n : int, optional
        Number of rows; a per-row t must have exactly this length.
    T : float, optional
        Largest admissible time (the process's horizon); None means no upper bound.
    """
    arr = _native(_read_array(t, name))  # a big-endian array too (the same numbers)
    if arr.dtype.kind not in "iu" and arr.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be a real number or an array of float64, float32 or integers, got {arr.dtype}")
    arr = arr.astype(np.float64)
    if arr.ndim > 1:  # (an empty (0,) t is the times of no rows: a score's sigma_t on no points)
        raise ValueError(f"{name} must be a scalar or have shape (n,), got shape {arr.shape}")
    if arr.ndim == 1 and n is not None and arr.shape[0] != n:
        raise ValueError(
            f"{name} must be a scalar or have one value per row, shape ({n},); got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got a NaN or inf")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0 (forward time), got min {float(arr.min())!r}")
    if T is not None and np.any(arr > T):
        raise ValueError(f"{name} must be <= {float(T)!r} (the process's horizon T), got max {float(arr.max())!r}")
    return arr


def check_decreasing_grid(grid, t0_text="t0"):
    """grid as a float64 1-D array of at least 2 strictly decreasing times, else ValueError.

    A grid decreasing but for a repeated last time > 0 gets its cause named: diffusers'
    EulerDiscreteScheduler(final_sigmas_type="sigma_min") with "linspace" or "leading"
    spacing (Karras sigmas or not) ends its sigmas so, [..., 0.0100013, 0.0100013], its last
    sigma being sigma_min already. Its step onto the repeat has dt = 0 and returns the sample
    unchanged but for its rounding to float32, in which diffusers' step computes
    (tests/test_peers_frames.py, against the installed diffusers), so grid[:-1] is the same
    sampler.
    """
    g = check_real_array(grid, "grid")
    if g.ndim != 1 or g.size < 2:
        raise ValueError(f"grid must be a 1-D array of at least 2 times, from T down to {t0_text}, got shape {g.shape}")
    if np.any(np.diff(g) >= 0):
        k = int(np.flatnonzero(np.diff(g) >= 0)[0])
        if k == g.size - 2 and g[k] == g[k + 1] > 0:
            raise ValueError(
                f"grid must be strictly decreasing; grid[{k}] = {float(g[k])!r} == grid[{k + 1}]: a repeated last "
                "time is what diffusers' final_sigmas_type=\"sigma_min\" gives (EulerDiscreteScheduler with "
                "'linspace' or 'leading' spacing, whose last sigma is already sigma_min); drop it, grid[:-1]: "
                "diffusers' step onto it has dt = 0 and leaves the sample unchanged but for its rounding to float32 "
                "(drop that repeated last state from the peer's trajectory too)")
        raise ValueError(f"grid must be strictly decreasing (from T to t0); grid[{k}] = {float(g[k])!r} "
                         f"<= grid[{k + 1}] = {float(g[k + 1])!r}")
    return g


def check_time_range(t0, T, process=None):
    """Raise unless 0 < t0 < T (<= process.t_max) are finite numbers; return floats.

    With a process, T must also keep B(T) = int_0^T beta finite (T < 8.99e307 for OU):
    beyond it alpha_T, sigma_T and every step integral of a sampler are inf or NaN.
    """
    t0 = check_real(t0, "t0")
    T = check_real(T, "T")
    if not 0 < t0 < T:
        raise ValueError(f"need 0 < t0 < T, got t0={t0!r}, T={T!r}")
    if process is not None and T > process.t_max:
        raise ValueError(f"T must be <= {process.t_max} for {process!r}, got {T!r}")
    try:
        B_T = None if process is None else process.integrated_beta(T)
    except ValueError:  # integrated_beta refuses a B(T) beyond float64; said here in T's terms
        B_T = np.inf
    if process is not None and not np.isfinite(B_T):
        raise ValueError(f"T = {T!r} is too large for {process!r}: B(T) = int_0^T beta overflows float64; "
                         "use a T for which alpha_T is merely tiny (T = 20 already gives alpha_T = 2e-9 for OU)")
    return t0, T


def mean_se(values):
    """(mean, standard error std(ddof=1) / sqrt(n)) of a 1-D float64 array, as floats.

    When the values are finite but their squares (or sum) overflow, or the mean and standard
    error are both below 2^-400 (the values then too, whose squares lose digits below 2^-1022
    from |value| < 2^-511: values of 1e-170 had a standard error of 0), both are computed for
    values / c with c a power of two (exact) and scaled back, so only a mean or standard error
    beyond the float64 range itself comes back non-finite, and tiny ones keep their digits.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        mean, se = float(values.mean()), float(values.std(ddof=1) / np.sqrt(values.size))
    tiny = abs(mean) < 2.0**-400 and se < 2.0**-400  # then every value is tiny too (or all are 0)
    if (np.isfinite(mean) and np.isfinite(se) and not tiny) or not np.all(np.isfinite(values)):
        return mean, se
    top = float(np.max(np.abs(values)))
    c = float(np.ldexp(1.0, int(np.frexp(top)[1]) - 1)) if top > 0 else 1.0  # top / c in [1, 2)
    scaled = values / c
    with np.errstate(over="ignore"):
        return c * float(scaled.mean()), c * float(scaled.std(ddof=1) / np.sqrt(values.size))


def _physical_memory():
    """Bytes of physical memory, or None where the OS does not say (sysconf's -1 for a value
    it leaves indeterminate included: as -4096 bytes it refused every size)."""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None
    return pages * page_size if pages > 0 and page_size > 0 else None


def check_fits(name, value, per_unit, what="its working arrays"):
    """Refuse, before any work, a count `value` whose arrays (per_unit bytes per unit) cannot
    fit in memory. The message opens "name must be at most N", which the command line turns
    into the option's name."""
    memory = _physical_memory()
    largest = np.iinfo(np.intp).max
    limit = largest if memory is None else min(memory, largest)
    value, per_unit = int(value), int(per_unit)  # Python ints: a NumPy int64 product wraps round (2^62 x 8 = 0)
    if value * per_unit > limit:
        where = "this machine's memory" if memory is not None and memory <= largest else "NumPy's largest array"
        raise ValueError(f"{name} must be at most {limit // per_unit} on this machine, got {value}: {what} would "
                         f"need {value * per_unit / 2**30:.3g} GiB, more than {where} ({limit / 2**30:.3g} GiB)")


@contextmanager
def fits_in_memory(name, value, items, per_item=8):
    """Raise ValueError naming `name` (= value) if items of per_item bytes cannot be allocated.

    Sizes beyond NumPy's largest array are refused up front (NumPy would say only
    "Maximum allowed dimension exceeded"); a MemoryError inside the block becomes a
    ValueError that names the argument.
    """
    size = int(items) * int(per_item)
    if size > np.iinfo(np.intp).max:
        raise ValueError(f"{name} = {value} asks for {size:.3g} bytes, beyond the largest array NumPy can make; "
                         f"lower {name}")
    memory = _physical_memory()
    if memory is not None and size > memory:  # an overcommitting OS would grant it, then kill the process
        raise ValueError(f"{name} = {value} asks for {size / 2**30:.3g} GiB of working arrays, more than this "
                         f"machine's {memory / 2**30:.3g} GiB of memory; lower {name}")
    try:
        yield
    except MemoryError:
        raise ValueError(f"{name} = {value} ({size / 2**30:.3g} GiB of working arrays) does not fit in memory; "
                         f"lower {name}") from None
