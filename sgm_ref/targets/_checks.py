"""Checks shared by the targets: booleans in nested lists, parameter ranges, output sizes.

The ranges keep every public method finite for finite input. With means within
MAX_MEAN and variances in [MIN_VARIANCE, MAX_VARIANCE], squared distances between
means, second moments and samples stay far inside float64; and because v >= 1e-300 >
1 / float64 max, a residual y whose y / v overflows also has y^2 / v overflowing, so
wherever log p_t is finite the score is too (the oracle checks log p_t). float32
points need the same with float32's range (FLOAT32_LIMITS).
"""

import os

import numpy as np

from .._validation import check_real_array

MAX_MEAN = 1e150
MIN_VARIANCE, MAX_VARIANCE = 1e-300, 1e300
# (largest |mean entry|, smallest variance, largest variance) for float32 points
FLOAT32_LIMITS = (1e15, 1e-30, 1e30)


def plain(value):
    """A number as Python writes a float ('0.8999999999999999', not 'np.float64(...)')."""
    return repr(float(value))


def reject_bools(value, name):
    """Raise if a (nested) list or tuple holds a bool: JSON's true would otherwise read as 1.0.

    numpy turns [[true, 0.5]] into float64 silently; a pure bool array is refused by
    check_real_array. Iterative, so deep nesting cannot exhaust the stack.
    """
    stack = [(value, name)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, (bool, np.bool_)):
            raise ValueError(f"{name} must hold numbers, got the boolean {bool(item)} at {where}")
        if isinstance(item, (list, tuple)):
            # reversed, so the first boolean in reading order is the one named
            stack.extend((item[i], f"{where}[{i}]") for i in reversed(range(len(item))))


def real_array(value, name):
    """check_real_array (which refuses a bool array), then refuse booleans numpy cast to numbers.

    A ragged or too deeply nested list (numpy's own ValueError names no argument) is
    refused naming `name`.
    """
    if isinstance(value, (list, tuple)):
        try:
            value_array = np.asarray(value)
        except ValueError:
            raise ValueError(f"{name} must be a rectangular array of numbers (rows of equal length, at most "
                             "64 levels deep), got a ragged or too deeply nested list") from None
    else:
        value_array = value
    arr = check_real_array(value_array, name)
    reject_bools(value, name)
    return arr


def check_means(mu, name="means", limit=MAX_MEAN):
    top = float(np.max(np.abs(mu))) if mu.size else 0.0
    if top > limit:
        raise ValueError(f"{name} must have entries within +-{limit:g} (so squared distances and moments stay "
                         f"finite in float64), got an entry of size {top:.3g}; rescale the target")


def _shown(v):
    """v in 3 digits, or in all where 3 would read as inside [MIN_VARIANCE, MAX_VARIANCE] while v
    is not (eigh puts 1e-300 I's eigenvalues just below 1e-300: "got 1e-300 to 1e-300" was refused)."""
    short = f"{v:.3g}"
    outside = v < MIN_VARIANCE or v > MAX_VARIANCE
    return repr(v) if outside and MIN_VARIANCE <= float(short) <= MAX_VARIANCE else short


def check_variances(lam, name, what="variances"):
    """Raise unless every variance (or eigenvalue) lies in [MIN_VARIANCE, MAX_VARIANCE]."""
    lo, hi = float(np.min(lam)), float(np.max(lam))
    if lo < MIN_VARIANCE or hi > MAX_VARIANCE:
        raise ValueError(f"{name}: {what} must lie in [{MIN_VARIANCE:g}, {MAX_VARIANCE:g}] (so the oracle's "
                         f"quadratic forms stay finite in float64), got {_shown(lo)} to {_shown(hi)}; rescale the "
                         "target")


def check_float32_range(mu, lam, what, name="x", wants="float32 points", fix="pass float64 points"):
    """Raise unless means and variances are small enough for float32 arithmetic and output."""
    mean_max, var_min, var_max = FLOAT32_LIMITS
    top = float(np.max(np.abs(mu))) if mu.size else 0.0
    lo, hi = float(np.min(lam)), float(np.max(lam))
    if top > mean_max or lo < var_min or hi > var_max:
        raise ValueError(f"{name} is float32, but {what} has means up to {top:.3g} and variances from {lo:.3g} to "
                         f"{hi:.3g}; {wants} need means within +-{mean_max:g} and variances in "
                         f"[{var_min:g}, {var_max:g}]: {fix}")


def check_float32_samples(mu, lam, what):
    """Raise unless draws mu + sqrt(lam) z (|z| < 40) fit in float32 (largest 3.4e38)."""
    top = float(np.max(np.abs(mu))) if mu.size else 0.0
    std = float(np.sqrt(np.max(lam)))
    if top > 1e37 or std > 1e36:
        raise ValueError(f"dtype is float32, but {what} has means up to {top:.3g} and standard deviations up to "
                         f"{std:.3g}; float32 samples need means within +-1e37 and standard deviations <= 1e36: "
                         "use dtype float64")


def _memory_bytes():
    """This machine's physical memory in bytes, or None where the system does not say (sysconf's
    -1 gave -4096 bytes, and every target was refused as "more than this machine's memory")."""
    try:
        size, pages = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return size * pages if size > 0 and pages > 0 else None


def check_size(n, per_item, name, what):
    """Raise unless n items of per_item float64 numbers fit in memory (and in a numpy array).

    A request beyond this (numpy would raise OverflowError, 'Maximum allowed dimension
    exceeded' or MemoryError) gets a ValueError naming the argument and the limit.
    """
    limit_bytes = np.iinfo(np.intp).max
    memory = _memory_bytes()
    if memory:
        limit_bytes = min(limit_bytes, memory)
    per_bytes = 8 * max(1, per_item)
    if n * per_bytes > limit_bytes:
        where = "this machine's memory" if memory and memory <= np.iinfo(np.intp).max else "numpy's largest array"
        raise ValueError(f"{name} = {n} is too large: {what} would need {n * per_bytes:.3g} bytes, more than "
                         f"{where} ({limit_bytes:.3g} bytes); use {name} <= {limit_bytes // per_bytes}")
    return n


def shown(value):
    """A user's value for a message: strings quoted, numbers plain, other objects by type."""
    if value is None or isinstance(value, str):
        return repr(value if value is None else str(value))
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return plain(value)
    return f"a {type(value).__name__}"
