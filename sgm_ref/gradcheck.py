"""Finite-difference checks of gradients and vector-Jacobian products (usable on any code).

Central differences: for a scalar f of theta in R^n and a direction u,

    D_u f(theta) ~ (f(theta + eps u) - f(theta - eps u)) / (2 eps),

with truncation error eps^2 / 6 * |D_u^3 f| and rounding error about
ulp(|f|) / eps ~ 1e-16 |f| / eps, smallest near eps ~ 1e-5..1e-6 in float64. In float32
the rounding term alone is ~1e-7 |f| / eps, which swamps any gradient bug worth
finding, so theta must be float64, and so must f's values (a float32 f is refused too:
sum(theta^2) rounded to float32 failed its right gradient by 15%).

eps is an absolute step, the same for every coordinate: the sweet spot 1e-5..1e-6 holds
for |theta| and |f| of order 1. For large parameters and values the rounding term grows
with |f|: 0.5 |theta|^2 with theta ~ 1e2 N(0, I) in 6 dimensions failed its right gradient
in 3 of 50 draws at the defaults, 49 of 50 at 1e4 (theta ~ 1e4 N(0, I)). There choose
eps for the function's scale (eps = 1e-6 times theta's scale passed all 50 at 1e2, 1e4 and
1e8 for that quadratic, but fails sin(theta) at 1e4 by its truncation error), or raise
atol above 1e-16 |f| / eps.

theta is perturbed in place, one coordinate (or direction) at a time, and restored bit
for bit afterwards, also if f raises; so f may read the parameters through views of
theta (a network's layer views) instead of its argument. f must not modify theta.

Agreement of an analytic value a with a numerical value n is judged per entry like
numpy.isclose, but symmetric:

    |a - n| <= atol + rtol * max(|a|, |n|),

and the relative error reported is |a - n| / max(|a|, |n|, atol): the atol floor keeps
entries where both are (nearly) zero from dividing by zero. The worst entry reported is
the one furthest beyond its tolerance, |a - n| / (atol + rtol max(|a|, |n|)), so a failed
check names the entry that failed, not a near-zero entry that passed with a large
relative error against the atol floor.
"""

from dataclasses import dataclass, field

import numpy as np

from ._validation import check_count, check_real, check_rng

__all__ = ["GradcheckResult", "numerical_gradient", "check_gradient", "check_vjp"]


@dataclass(frozen=True)
class GradcheckResult:
    """Outcome of check_gradient or check_vjp.

    Attributes
    ----------
    passed : bool
        Every entry satisfies |a - n| <= atol + rtol * max(|a|, |n|).
    max_abs_error : float
        max |a - n| over the compared entries.
    max_rel_error : float
        max |a - n| / max(|a|, |n|, atol). An entry below atol is measured against atol,
        so it may reach about 1 on an entry that passes (finite-difference rounding on a
        near-zero gradient entry); worst names the entry that fails.
    worst : int
        Index of the entry furthest beyond its tolerance, the largest
        |a - n| / (atol + rtol max(|a|, |n|)) (> 1 exactly where an entry fails): a
        coordinate, or the number of the direction in directional mode.
    analytic, numerical : ndarray, shape (n,) or (k,), float64
        The compared values: gradient entries, or, for k directions, the analytic
        directional derivatives grad . u~_j against their finite differences. u~_j =
        ((theta + eps u_j) - (theta - eps u_j)) / (2 eps) is the direction actually
        stepped along, u_j up to the rounding of theta +- eps u_j.
    directions : ndarray of shape (k, n) or None
        The unit directions u_j used (None when all coordinates were compared).
    """

    passed: bool
    max_abs_error: float
    max_rel_error: float
    worst: int
    analytic: np.ndarray = field(repr=False)
    numerical: np.ndarray = field(repr=False)
    directions: np.ndarray = field(default=None, repr=False)


def _check_theta(theta):
    if not isinstance(theta, np.ndarray):
        raise ValueError(
            "theta must be a numpy ndarray of dtype float64 (it is perturbed in place and "
            f"restored), got {type(theta).__name__}"
        )
    # float64 in either byte order: a big-endian vector (read from another machine's file) holds
    # the same numbers and is perturbed and restored in place as well (it was refused as
    # "lower precision")
    if not (theta.dtype.kind == "f" and theta.dtype.itemsize == 8):
        if theta.dtype.kind == "f" and theta.dtype.itemsize > 8:
            why = ("f's values and the gradients are compared in float64, so a wider theta's extra "
                   "digits would not be checked; check a float64 copy of your code")
        else:
            why = ("finite differences in lower precision have rounding errors (~1e-7 |f| / eps in "
                   "float32) larger than the errors they are meant to find; check a float64 copy of your code")
        raise ValueError(f"theta must have dtype float64, got {theta.dtype}: {why}")
    if theta.ndim != 1 or theta.size == 0:
        raise ValueError(
            f"theta must be a non-empty flat vector, shape (n,), got shape {theta.shape}"
        )
    if not theta.flags.writeable:
        raise ValueError("theta must be writeable: it is perturbed in place and restored")
    if not np.all(np.isfinite(theta)):
        raise ValueError("theta contains non-finite values (NaN or inf)")
    return theta


def _check_common(f, theta, eps, rtol, atol):
    """The arguments check_gradient and check_vjp share: (f, theta, n, eps, rtol, atol)."""
    f = _check_callable(f, "f")
    theta = _check_theta(theta)
    eps = _check_tolerance(eps, "eps", positive=True)
    return f, theta, theta.shape[0], eps, _check_tolerance(rtol, "rtol"), _check_tolerance(atol, "atol")


def _check_tolerance(value, name, positive=False):
    return check_real(value, name, low=0.0, low_open=positive)


def _check_callable(f, name):
    if not callable(f):
        raise ValueError(f"{name} must be callable, got {type(f).__name__}")
    return f


def _evaluate(f, theta, what, shape=()):
    """f(theta) as a float64 array of the given shape (() for a scalar); raise if it is not."""
    out = np.asarray(f(theta))
    right_shape = out.size == 1 if shape == () else out.shape == shape
    if out.dtype.kind not in "iuf" or not right_shape:
        expected = "a real scalar" if shape == () else f"a real array of shape {shape}"
        raise ValueError(
            f"f must return {expected}, got {out.dtype} of shape {out.shape} at {what}"
        )
    _check_precision(out, what)
    out = out.astype(np.float64).reshape(shape)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"f returned a non-finite value at {what}")
    return out


def _check_precision(out, what):
    """Refuse a value of f below float64: its rounding, not the gradient, would decide the check."""
    if out.dtype.kind == "f" and out.dtype.itemsize < 8:
        raise ValueError(
            f"f returned {out.dtype} at {what}: its rounding (~{float(np.finfo(out.dtype).eps):.0e} |f| / eps "
            "in the differences) is larger than the errors the check is meant to find, and a right "
            "gradient would fail; make f compute and return float64"
        )


def _as_vector(value, n, name):
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf" or arr.shape != (n,):
        raise ValueError(
            f"{name} must be a real array of shape ({n},) like theta, "
            f"got {arr.dtype} of shape {arr.shape}"
        )
    arr = arr.astype(np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (NaN or inf)")
    return arr


def _coordinate_difference(f, theta, eps, i):
    """(f(theta + eps e_i) - f(theta - eps e_i)) / (2 eps); theta restored bit for bit.

    The divisor is the step actually taken, (theta_i + eps) - (theta_i - eps) in
    floating point, which removes the error of rounding theta_i +- eps.
    """
    old = theta[i]
    with np.errstate(over="ignore", invalid="ignore"):
        up, down = old + eps, old - eps
        step = up - down
    if up == down:
        raise ValueError(
            f"eps = {eps!r} is below the spacing of floats at theta[{i}] = {float(old)!r}; "
            "use a larger eps"
        )
    if not np.isfinite(step):
        # the quotient would be (f_up - f_down) / inf = 0: a zero gradient, whatever f is
        raise ValueError(
            f"eps = {eps!r} is too large at theta[{i}] = {float(old)!r}: the step from theta[{i}] - eps to "
            f"theta[{i}] + eps leaves float64's range; use a smaller eps"
        )
    try:
        theta[i] = up
        f_up = _evaluate(f, theta, f"theta + eps e_{i}")
        theta[i] = down
        f_down = _evaluate(f, theta, f"theta - eps e_{i}")
    finally:
        theta[i] = old
    with np.errstate(over="ignore", invalid="ignore"):
        quotient = (f_up - f_down) / step
    return _finite_quotient(quotient, f_up, f_down, eps, f"theta[{i}]")


def _finite_quotient(quotient, f_up, f_down, eps, where):
    """quotient, if finite; else a ValueError: f's values are too large for differences at this eps."""
    if np.all(np.isfinite(quotient)):
        return quotient
    size = float(max(np.max(np.abs(f_up)), np.max(np.abs(f_down))))
    raise ValueError(f"the central difference along {where} overflows float64: f is as large as {size:.3g}, "
                     f"and (f(theta + eps u) - f(theta - eps u)) / (2 eps) with eps = {eps:g} exceeds the range; "
                     "scale f down (or use a larger eps)")


def _directional_difference(f, theta, eps, u, shape=()):
    """(f(theta + eps u) - f(theta - eps u)) / (2 eps) and the direction actually taken.

    theta +- eps u is rounded entry by entry, so the difference quotient is the
    derivative along ((theta + eps u) - (theta - eps u)) / (2 eps), not exactly u; the
    caller compares against the analytic derivative along that vector. theta is
    restored bit for bit.
    """
    old = theta.copy()
    with np.errstate(over="ignore", invalid="ignore"):
        up, down = old + eps * u, old - eps * u
        taken = (up - down) / (2.0 * eps)
    if not np.all(np.isfinite(taken)):
        # the direction taken would hold inf or NaN (and (f_up - f_down) / (2 eps) be 0 or
        # nothing): a check that reads as an enormous error or a zero derivative, not eps's fault
        raise ValueError(
            f"eps = {eps!r} is too large for theta (|theta| up to {float(np.max(np.abs(old))):.3g}): "
            "theta +- eps u leaves float64's range along a random direction; use a smaller eps"
        )
    if np.array_equal(up, down):
        # no entry moved: both differences would be 0 and any gradient would pass
        raise ValueError(
            f"eps = {eps!r} is below the spacing of floats at every entry of theta along a random "
            f"direction (|theta| up to {float(np.max(np.abs(old))):.3g}): no entry moves and the check "
            "could not fail; use a larger eps"
        )
    try:
        theta[...] = up
        f_up = _evaluate(f, theta, "theta + eps u", shape)
        theta[...] = down
        f_down = _evaluate(f, theta, "theta - eps u", shape)
    finally:
        theta[...] = old
    with np.errstate(over="ignore", invalid="ignore"):
        quotient = (f_up - f_down) / (2.0 * eps)
    return _finite_quotient(quotient, f_up, f_down, eps, "a random direction u"), taken


def numerical_gradient(f, theta, eps=1e-6):
    """Central-difference gradient of a scalar function, one coordinate at a time.

    grad_i ~ (f(theta + eps e_i) - f(theta - eps e_i)) / (2 eps), costing 2 n calls of f;
    the divisor is the step actually taken, (theta_i + eps) - (theta_i - eps) in floating
    point, rather than 2 eps.

    Parameters
    ----------
    f : callable
        f(theta) -> real scalar (a float, 0-d array or size-1 array). Any callable; it
        may also read theta through views instead of its argument.
    theta : ndarray, shape (n,), float64
        Point of evaluation; perturbed in place and restored bit for bit.
    eps : float, default 1e-6
        Step, > 0. The error is about eps^2 |f'''| / 6 + 1e-16 |f| / eps.

    Returns
    -------
    ndarray, shape (n,), float64

    Raises
    ------
    ValueError
        If theta is not a writeable 1-D float64 ndarray with finite entries, eps is not
        > 0, below the spacing of floats at an entry or so large that the step 2 eps leaves
        float64's range, or f returns something other than a finite real scalar of at least
        float64 precision.
    """
    f = _check_callable(f, "f")
    theta = _check_theta(theta)
    eps = _check_tolerance(eps, "eps", positive=True)
    out = np.empty(theta.shape[0])
    for i in range(theta.shape[0]):
        out[i] = _coordinate_difference(f, theta, eps, i)
    return out


def _compare(analytic, numerical, rtol, atol, directions=None):
    with np.errstate(over="ignore"):
        abs_err = np.abs(analytic - numerical)
    if not np.all(np.isfinite(abs_err)):
        i = int(np.argmax(~np.isfinite(abs_err)))
        raise ValueError(f"analytic[{i}] = {float(analytic[i]):.3g} and numerical[{i}] = {float(numerical[i]):.3g} "
                         "differ by more than float64 holds (opposite signs near its range): the gradient is wrong "
                         "by far; scale f down to see by how much")
    scale = np.maximum(np.abs(analytic), np.abs(numerical))
    floor = np.maximum(scale, atol)
    # floor is 0 only where both values are exactly 0 (with atol = 0): agreement
    rel_err = np.divide(abs_err, floor, out=np.zeros_like(abs_err), where=floor > 0)
    # worst: the entry furthest beyond its tolerance, not the largest rel_err: an entry below
    # atol has rel_err = |a - n| / atol, up to 1 while it passes, and would hide the entry
    # that fails (a zero tolerance: any difference is infinitely far beyond it)
    allowed = atol + rtol * scale
    with np.errstate(over="ignore"):
        excess = np.divide(abs_err, allowed, out=np.where(abs_err > 0, np.inf, 0.0), where=allowed > 0)
    worst = int(np.lexsort((rel_err, excess))[-1])  # ties (zero tolerances) by rel_err
    return GradcheckResult(
        passed=bool(np.all(abs_err <= allowed)),
        max_abs_error=float(abs_err.max()),
        max_rel_error=float(rel_err.max()),
        worst=worst,
        analytic=analytic,
        numerical=numerical,
        directions=directions,
    )


def _unit_directions(rng, k, n):
    u = rng.standard_normal((k, n))
    return u / np.linalg.norm(u, axis=1, keepdims=True)


def check_gradient(f, grad, theta, eps=1e-6, rtol=1e-6, atol=1e-8, directions=None, rng=None):
    """Compare an analytic gradient of a scalar function with central differences.

    Full mode (directions None) compares every coordinate: grad_i against
    (f(theta + eps e_i) - f(theta - eps e_i)) / (2 eps), 2 n calls of f. Directional
    mode (directions = k) compares k directional derivatives along random unit vectors
    u_j, grad . u_j against (f(theta + eps u_j) - f(theta - eps u_j)) / (2 eps), 2 k
    calls of f whatever n is. An error e in the gradient shows as e . u_j, of size
    about |e| / sqrt(n) against |grad| / sqrt(n) for the derivative itself, so
    directional mode finds an error relative to |grad| as a whole, not one tiny entry
    of a large vector.

    Parameters
    ----------
    f : callable
        f(theta) -> real scalar.
    grad : ndarray of shape (n,) or callable
        The analytic gradient at theta, or a function theta -> gradient (called once,
        at theta, before any perturbation). Any real dtype; compared in float64.
    theta : ndarray, shape (n,), float64
        Perturbed in place and restored bit for bit.
    eps : float, default 1e-6
        Finite-difference step, > 0.
    rtol, atol : float, default 1e-6, 1e-8
        An entry passes if |a - n| <= atol + rtol * max(|a|, |n|). The rounding error of
        the differences is about 1e-16 |f| / eps, so for large |f| raise atol.
    directions : int or None
        Number k >= 1 of random directions; None compares all coordinates.
    rng : numpy.random.Generator
        Draws the directions; required with directions, unused without.

    Returns
    -------
    GradcheckResult

    Raises
    ------
    ValueError
        For a bad theta, eps, rtol, atol or directions, an eps below the spacing of floats
        at theta (along a coordinate, or along a direction that then moves no entry) or so
        large that theta +- eps u leaves float64's range, a gradient of the wrong shape or
        with non-finite entries, a missing rng in directional mode, or f not returning a
        finite real scalar of at least float64 precision.
    """
    f, theta, n, eps, rtol, atol = _check_common(f, theta, eps, rtol, atol)
    if directions is not None:
        k = check_count(directions, "directions")
        if rng is None:
            raise ValueError("rng (a numpy.random.Generator) is required when directions is set")
        rng = check_rng(rng)
    analytic = _as_vector(grad(theta) if callable(grad) else grad, n, "grad")
    if directions is None:
        return _compare(analytic, numerical_gradient(f, theta, eps), rtol, atol)
    u = _unit_directions(rng, k, n)
    analytic_dir = np.empty(k)
    numerical = np.empty(k)
    for j in range(k):
        numerical[j], taken = _directional_difference(f, theta, eps, u[j])
        analytic_dir[j] = analytic @ taken
    return _compare(analytic_dir, numerical, rtol, atol, directions=u)


def check_vjp(f, vjp, theta, rng, directions=3, eps=1e-6, rtol=1e-6, atol=1e-8):
    """Check a vector-Jacobian product of a vector-valued f against central differences.

    For f: R^n -> R^m with Jacobian J at theta, random unit vectors w_j in R^m and
    u_j in R^n are drawn and

        w_j . (J u_j)  ~  w_j . (f(theta + eps u_j) - f(theta - eps u_j)) / (2 eps)

    is compared with vjp(theta, w_j) . u_j = (J^T w_j) . u_j.

    Parameters
    ----------
    f : callable
        f(theta) -> real array of shape (m,), or any fixed shape (w_j is drawn in that shape).
    vjp : callable
        vjp(theta, w) -> J^T w, shape (n,), for w of the shape of f(theta).
    theta : ndarray, shape (n,), float64
        Perturbed in place and restored bit for bit.
    rng : numpy.random.Generator
        Draws the vectors w_j and u_j.
    directions : int, default 3
        Number of pairs (w_j, u_j).
    eps, rtol, atol : float
        As in check_gradient.

    Returns
    -------
    GradcheckResult
        analytic[j] = vjp(theta, w_j) . u_j, numerical[j] its finite difference;
        directions holds the u_j.

    Raises
    ------
    ValueError
        As check_gradient (an eps that moves no entry of theta along a direction too); also if
        f's output changes shape or vjp returns a wrong shape.
    """
    f, theta, n, eps, rtol, atol = _check_common(f, theta, eps, rtol, atol)
    vjp = _check_callable(vjp, "vjp")
    k = check_count(directions, "directions")
    rng = check_rng(rng)
    out = np.asarray(f(theta))
    if out.dtype.kind not in "iuf" or out.size == 0:
        raise ValueError(
            f"f must return a non-empty real array, got {out.dtype} of shape {out.shape}"
        )
    _check_precision(out, "theta")
    shape = out.shape
    w = _unit_directions(rng, k, out.size).reshape((k,) + shape)
    u = _unit_directions(rng, k, n)
    analytic = np.empty(k)
    numerical = np.empty(k)
    for j in range(k):
        # J^T w_j first, at the unperturbed theta
        jtw = _as_vector(vjp(theta, w[j]), n, "vjp(theta, w)")
        difference, taken = _directional_difference(f, theta, eps, u[j], shape)
        numerical[j] = np.sum(w[j] * difference)
        analytic[j] = jtw @ taken
    return _compare(analytic, numerical, rtol, atol, directions=u)
