"""Conversions between the outputs diffusion models are trained to give.

At time t of a process with x_t = alpha x0 + sigma z (alpha, sigma and their time
derivatives alpha', sigma' from the process), a model of p_t gives one of

    score     grad log p_t(x)                       = -eps / sigma          (Tweedie)
    eps       E[z | x_t = x]                         (epsilon prediction, DDPM)
    x0        E[x0 | x_t = x]                        (the denoiser D(x; sigma) of EDM)
    v         alpha eps - sigma x0                   (Salimans & Ho 2022)
    velocity  alpha' x0 + sigma' eps = E[d x_t/dt | x_t = x]   (flow matching)

All are linear in the pair (x0, eps), and x = alpha x0 + sigma eps, so each is an affine
function of (x, any other): writing kind k as p_k x0 + q_k eps,

    to = A x + B value,   A = D(to, from) / D(x, from),   B = D(x, to) / D(x, from),

with the 2x2 minors D(i, j) = p_i q_j - q_i p_j. Every minor is a product or quotient of
alpha, sigma, alpha', sigma' except three, which the process gives without cancellation:
D(x, v) = alpha^2 + sigma^2, D(x, velocity) = W = alpha sigma' - alpha' sigma and
D(v, velocity) = -(alpha alpha' + sigma sigma'). So A and B are exact to a few ulps.
Between the velocity and eps or the score (the probability-flow drift) they are taken
from f = alpha' / alpha and g^2 / (2 sigma) = sigma' - f sigma instead of as ratios of
minors that all scale with alpha, which keeps them where alpha_t is subnormal or 0.

Exactness of a round trip from -> to -> from is then limited only by what `to` itself
can hold: its error is a few ulps of |A x| + |B value|, so the value comes back to a few
ulps of |value| + |A x / B| (e.g. x0 at t -> 0 is x to within sigma eps, and holds the
digits of eps only down to eps_mach |x| / sigma).
"""

import numpy as np

from ._validation import check_points
from .processes import check_process

KINDS = ("score", "eps", "x0", "v", "velocity")
_TINY = np.finfo(np.float64).tiny  # the smallest normal float64


def _minors(process, t):
    """dict (i, j) -> D(i, j) for the kinds and "x", float64 arrays of t's shape."""
    a, s = process._alpha(t), process._sigma(t)
    # over: 1 / sigma at sigma_t = 5e-324 (FlowMatching, EDM) or alpha^2 + sigma^2 at EDM's
    # t = 1e300; the caller refuses what is not finite, or is left with its finite ratio
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        da, ds = process._d_alpha(t), process._d_sigma(t)
        w, h = process._w(t), process._half_dq(t)
        D = {
            ("x", "score"): -a / s, ("x", "eps"): a, ("x", "x0"): -s, ("x", "v"): a * a + s * s,
            ("x", "velocity"): w,
            ("score", "eps"): np.zeros_like(a), ("score", "x0"): 1.0 / s, ("score", "v"): np.full_like(a, -1.0),
            ("score", "velocity"): da / s,
            ("eps", "x0"): np.full_like(a, -1.0), ("eps", "v"): s, ("eps", "velocity"): -da,
            ("x0", "v"): a, ("x0", "velocity"): ds,
            ("v", "velocity"): -h,
        }
    D.update({(j, i): -d for (i, j), d in list(D.items())})
    for k in ("x",) + KINDS:
        D[(k, k)] = np.zeros_like(a)
    return D


def _check_kind(kind, name):
    if not isinstance(kind, str) or kind not in KINDS:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


def coefficients(t, process, from_="eps", to="score"):
    """(A, B) with to = A x + B value at time t: the conversion as two numbers per time.

    Parameters
    ----------
    t : float or ndarray of shape (n,)
        Times in the process's range.
    process : a process of sgm_ref.processes
    from_, to : {"score", "eps", "x0", "v", "velocity"}

    Returns
    -------
    A, B : float64, the shape of t

    Raises
    ------
    ValueError
        An unknown kind; t out of range; or a conversion undefined at t (the score where
        sigma_t = 0, x0 where alpha_t = 0, the velocity where sigma' is infinite as for
        variance-preserving processes at t = 0). A kind to itself is the identity
        (A, B) = (0, 1) at every t: e.g. a score model's score at sigma_t = 0.
    """
    _check_kind(from_, "from_")
    _check_kind(to, "to")
    process = check_process(process, variance_preserving=False)
    t = process._times(t)
    if from_ == to:  # the identity, at every t (a score model's score at sigma_t = 0 included)
        return process._out(np.zeros_like(t)), process._out(np.ones_like(t))
    if {from_, to} == {"eps", "score"}:
        # score = -eps / sigma, with no x term (A = 0): defined wherever sigma_t > 0, also
        # where alpha_t = 0 (OU beyond t ~ 745, where alpha underflows), at which the minors'
        # ratio (-alpha / sigma) / alpha is 0 / 0
        den = process._sigma(t)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            A, B = np.zeros_like(den), (-1.0 / den if to == "score" else -den)
    elif {from_, to} in ({"eps", "velocity"}, {"score", "velocity"}):
        # the probability-flow drift, velocity = f x + K eps = f x - sigma K score with
        # f = alpha' / alpha and K = W / alpha = sigma' - f sigma = g^2 / (2 sigma): finite
        # where alpha_t underflows (OU beyond t ~ 745), where the minors' ratios alpha' / alpha
        # and W / alpha were 0 / 0 (refused) or, for a subnormal alpha, kept only its few bits
        # (3.6e-13 of f on VP(0.1, 2960) at t = 0.99). sigma' >= 0 >= f sigma: no cancellation
        s = process._sigma(t)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
            f = process._f(t)
            K = process._d_sigma(t) - f * s
            if from_ == "eps":
                den, A, B = np.ones_like(K), f, K
            elif from_ == "score":  # the score needs sigma_t > 0
                den, A, B = s, f, -s * K
            else:  # from the velocity, which sigma' = inf (VP at t = 0) leaves undefined
                # eps = (velocity - f x) / K, score = -eps / sigma
                den = K if to == "eps" else s * K
                sign = 1.0 if to == "eps" else -1.0
                A, B = -sign * f / den, sign / den
    else:
        D = _minors(process, t)
        den = D[("x", from_)]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            A = D[(to, from_)] / den
            B = D[("x", to)] / den
    # B may underflow to 0 (x0 from the score at sigma ~ 1e-160: the score's term is below
    # float64's range); an infinite or zero denominator means `from_` itself is undefined
    bad = ~(np.isfinite(den) & (den != 0) & np.isfinite(A) & np.isfinite(B))
    if np.any(bad):
        i = int(np.argmax(np.atleast_1d(bad)))
        tb = float(np.atleast_1d(t)[i])
        alpha, sigma = (float(v) for v in process.marginal(tb))
        # where `from_` is defined, the coefficients overflowed: the time may be well inside the range
        # (EDM's x0 -> v at sigma 1e160) and the value finite, so "use a time inside the range" misled
        undefined = not (np.isfinite(np.atleast_1d(den)[i]) and np.atleast_1d(den)[i] != 0)
        hint = ("use a time inside the open range" if undefined else
                "the coefficients A(t), B(t) of the affine map are beyond float64's range there, though the converted "
                "value may not be; use a time of smaller sigma_t")
        raise ValueError(f"t = {tb!r}: converting {from_} to {to} is not defined there or overflows float64 for {process!r} "
                         f"(alpha_t = {alpha!r}, sigma_t = {sigma!r}); {hint}")
    return process._out(A), process._out(B)


def convert(value, x, t, process, from_="eps", to="score"):
    """Convert a model output at (x, t) from one kind to another, exactly in float64.

    to = A(t) x + B(t) value with A, B from `coefficients`; e.g. eps -> score is
    -eps / sigma, eps -> x0 is (x - sigma eps) / alpha, x0 -> v is alpha/sigma x -
    (alpha^2 + sigma^2)/sigma x0, v -> velocity for a variance-preserving process is
    W v with W = alpha sigma' - alpha' sigma (see the module docstring for all).

    Parameters
    ----------
    value : ndarray, shape (n, d)
        The model's output of kind from_ at (x, t).
    x : ndarray, shape (n, d)
        The points x_t (in the process's own scale).
    t : float or ndarray of shape (n,)
    process : a process of sgm_ref.processes
    from_, to : {"score", "eps", "x0", "v", "velocity"}

    Returns
    -------
    ndarray, shape (n, d), float64 (float32 if both value and x are float32: the result
    is computed in float64 and rounded once)

    Raises
    ------
    ValueError
        An unknown kind, value and x of different shapes, a non-finite entry, t out of
        range or of the wrong length, a conversion undefined at t, or a result beyond the
        range of its dtype (e.g. eps -> score, -eps / sigma, at sigma_t ~ 1e-300; naming the row).
    """
    _check_kind(from_, "from_")
    _check_kind(to, "to")
    x = check_points(x, "x")
    value = check_points(value, "value")
    if value.shape != x.shape:
        raise ValueError(f"value must have the shape of x, {x.shape}; got {value.shape}")
    process = check_process(process, variance_preserving=False)
    t = process._times(t, n=x.shape[0])
    if t.size == 0:  # a (0,) t for no rows, which coefficients (no n to check it by) refuses
        A = B = np.zeros(0)
    else:
        A, B = coefficients(t, process, from_, to)
    A, B = np.asarray(A), np.asarray(B)
    if A.ndim == 1:
        A, B = A[:, None], B[:, None]
    with np.errstate(over="ignore", invalid="ignore"):
        out = A * x.astype(np.float64) + B * value.astype(np.float64)
        if from_ == "score" and to != "eps" and B.size:
            # B holds sigma_t^2 (score -> x0: (x + sigma^2 score) / alpha), which leaves float64's normal
            # range below sigma ~ 1.5e-154 though the score may be ~ 1 / sigma^2 (data on sigma's scale):
            # x0 came back as x (26 times off for N(0, (1e-200)^2) at sigma = 5e-200). Those rows go through
            # eps = -sigma score, whose coefficients do not underflow there
            low = np.broadcast_to(np.abs(B).reshape(-1) < _TINY, (x.shape[0],))
            if np.any(low):
                sigma = np.broadcast_to(process._sigma(t), (x.shape[0],))[low]
                A_eps, B_eps = (np.atleast_1d(np.asarray(c, dtype=np.float64)) for c in
                                coefficients(np.broadcast_to(t, (x.shape[0],))[low], process, "eps", to))
                eps = -sigma[:, None] * value[low].astype(np.float64)
                out[low] = A_eps[:, None] * x[low].astype(np.float64) + B_eps[:, None] * eps
        both32 = x.dtype == np.float32 and value.dtype == np.float32
        out = out.astype(np.float32) if both32 else out
    if not np.all(np.isfinite(out)):  # finite input, coefficients in range: the product is not
        i = int(np.argmax(~np.all(np.isfinite(out), axis=1)))
        ti = float(np.broadcast_to(t, (x.shape[0],))[i])
        Ai, Bi = float(np.broadcast_to(A, (x.shape[0], 1))[i, 0]), float(np.broadcast_to(B, (x.shape[0], 1))[i, 0])
        # large coefficients: t is near where the conversion is singular; else the values
        # themselves are near the end of the range (e.g. x0 -> eps of x0 = -x = 1e308 at sigma = 1)
        remedy = ("use a time further from where the conversion is singular" if max(abs(Ai), abs(Bi)) > 2
                  else "x and value are too large for it: rescale them")
        raise ValueError(f"converting {from_} to {to} overflows {out.dtype} at row {i} (t = {ti!r}: "
                         f"{to} = A x + B {from_} with A = {Ai:.3g}, B = {Bi:.3g}); " + remedy
                         + (", or float64 x and value" if both32 else ""))
    return out
