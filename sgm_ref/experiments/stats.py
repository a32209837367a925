"""Statistics of the rate experiment: slopes across d, lack of fit, saturation, n*(d).

Every function takes the seed-level numbers (one error per cell) and returns plain dicts
of Python floats, ready for JSON. Notation: x = log n, y = log error, the exponent
b = -slope (error ~ n^-b), the curse rate 2 / (d + 4) (the best squared-error exponent of
a nonparametric estimate of a density's gradient, the score's numerator, when all it
knows is two derivatives in d dimensions).

    joint_slopes       y = a_d + b_d x for every d, Welch's and the pooled F test of equal slopes
    lack_of_fit        pure-error F test of a straight line, from replicate seeds
    means_line         the line through the n-means, its interval on m - 2 df (where lack of fit rejects)
    saturating_fit     error = A n^-b + c with a profile-likelihood interval for b
    saturating_lack_of_fit   pure-error F test of that curve
    curse_comparison   the exponent's interval against 2 / (d + 4)
    n_star             smallest n where the error falls below half a baseline
    paired_log_ratio   two settings on the same cells: the mean log ratio and its t test
"""

import math
import numbers

import numpy as np
from scipy import optimize, stats

__all__ = ["curse_rate", "joint_slopes", "welch_slopes", "lack_of_fit", "means_line", "saturating_fit",
           "saturating_lack_of_fit", "curse_comparison", "n_star", "paired_log_ratio"]


def _vectors(name_values):
    out = []
    shape = None
    for name, v in name_values:
        a = _reals(name, v)
        if a.ndim != 1:
            raise ValueError(f"{name} must be a 1-D array, got shape {a.shape}")
        if shape is not None and a.shape != shape:
            raise ValueError(f"{name} must have the length of {name_values[0][0]} ({shape[0]}), got {a.shape[0]}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} must be finite")
        shape = a.shape
        out.append(a)
    return out


def _reals(name, v):
    """v as a float64 array, or ValueError naming it: numpy's own conversion named no argument
    ("could not convert string to float: 'a'", a TypeError for a dict) and read complex values
    as their real parts with a warning only (other = 1 + 5j compared as 1)."""
    try:
        a = np.asarray(v)
    except (TypeError, ValueError):  # ragged nested lists
        a = None
    # an object array of real numbers (a Fraction among floats) is read too
    real = a is not None and (a.dtype.kind in "iuf" or a.dtype.kind == "O" and all(
        isinstance(e, numbers.Real) and not isinstance(e, (bool, np.bool_)) for e in a.ravel()))
    if not real:
        raise ValueError(f"{name} must be an array of real numbers, got {v!r:.80}")
    return a.astype(float, copy=False)


def _positive(name, a):
    if np.any(a <= 0):
        raise ValueError(f"{name} must be > 0 (a log-log fit); leave out the rows with {name} <= 0")


def curse_rate(d):
    """2 / (d + 4): the curse-of-dimensionality exponent the experiment compares with.

    The m-th derivatives of a function with p derivatives in d dimensions can be estimated
    in squared L2 error at best at the rate n^(-2 (p - m) / (2 p + d)) (Stone, Optimal global
    rates of convergence for nonparametric regression, Ann. Statist. 10, 1982; the same
    rates hold for densities). The score grad log p = grad p / p is a first derivative
    (m = 1); with p = 2 the exponent of its squared error, the quantity the experiment
    measures, is 2 / (d + 4). (The density itself, m = 0, would have 4 / (d + 4).) An
    estimator that uses nothing but this smoothness is held to an exponent that shrinks
    like 1 / d: an exponent bounded above it in every d is the contrast the experiment can
    show. Gaussian mixtures are smoother than p = 2; the rate is the reference of an
    estimator that does not know it, as the empirical measure's score does not.
    """
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 1:
        raise ValueError(f"d must be an integer >= 1, got {d!r}")
    return 2.0 / (int(d) + 4)


def joint_slopes(group, n, error, level=0.95):
    """Per-group lines log error = a_g + b_g log n, and two tests of equal slopes.

    Ordinary least squares on every seed's error (one point per cell). The full model has
    an intercept and a slope per group g (here g = d), i.e. one line per group; the
    reduced model a common slope:

        full     y_i = a_{g(i)} + b_{g(i)} x_i + e_i          p_f = 2G parameters
        reduced  y_i = a_{g(i)} + b x_i + e_i                 p_r = G + 1 parameters

    Each group's slope b_g gets its own residual variance s_g^2 = RSS_g / (N_g - 2), so
    se(b_g) = s_g / sqrt(S_xx,g) with a Student-t interval on nu_g = N_g - 2 degrees of
    freedom: the noise of log error differs between d (the seed scatter is several times
    larger at small d than at d = 512 here), and one pooled variance would make the quiet
    groups' intervals too wide and the noisy groups' too narrow.

    Equal slopes, allowing a different variance per group: Welch's test (Welch, On the
    comparison of several mean values: an alternative approach, Biometrika 38, 1951)
    applied to the slopes, as DeShon & Alexander (Alternative procedures for testing
    regression slope homogeneity when group error variances are unequal, Psychological
    Methods 1, 1996) recommend. With w_g = 1 / se(b_g)^2, W = sum w_g, bw = sum w_g b_g / W,
    lambda = sum (1 - w_g / W)^2 / nu_g:

        F_W = [sum w_g (b_g - bw)^2 / (G - 1)] / [1 + 2 (G - 2) lambda / (G^2 - 1)]
            ~  F(G - 1, (G^2 - 1) / (3 lambda))      approximately, under equal slopes.

    For G = 2 it is the square of Welch's t of the two slopes, on Satterthwaite's degrees
    of freedom. Also returned, the pooled-variance test of the analysis of covariance,

        F = [(RSS_r - RSS_f) / (G - 1)] / [RSS_f / (N - 2G)]  ~  F(G - 1, N - 2G),

    exact for iid normal errors of one variance (the general linear test of nested models,
    Kutner, Nachtsheim, Neter & Li, Applied Linear Statistical Models, 5th ed. 2005, Sec.
    2.8 and 8.7), with the pooled intervals s / sqrt(S_xx,g), s^2 = RSS_f / (N - 2G). When
    the lines do not fit (lack_of_fit rejects), the variances include the curvature and
    the intervals describe the best straight line over the n range, not a noise level.

    Parameters
    ----------
    group : array (N,)
        Group label of each point (the dimension d).
    n, error : arrays (N,)
        Sample size and error of each point, both > 0.
    level : float
        Confidence level of the slope intervals.

    Returns
    -------
    dict
        "groups": [{"group", "slope", "slope_se", "slope_interval", "dof" (own variance),
        "slope_se_pooled", "slope_interval_pooled", "intercept", "points"}], "common_slope"
        (the reduced model's), "welch": {"F", "df": [G - 1, df2], "p", "weighted_slope"},
        "F", "df": [G - 1, N - 2G], "p" (pooled), "rss_full", "rss_reduced", "level".
        With one group "welch", F, df and p are None (no test).

    Raises
    ------
    ValueError
        Arrays of different lengths, non-finite or non-positive values, a group with fewer
        than two distinct n or fewer than three points (no variance of its own), or a
        group whose points lie exactly on its line (zero residual).
    """
    n, error = _vectors([("n", n), ("error", error)])
    if n.size == 0:
        raise ValueError("n must hold at least one point per group (no data: no slopes)")
    group = np.asarray(group)
    if group.shape != n.shape:
        raise ValueError(f"group must have the length of n ({n.size}), got shape {group.shape}")
    _positive("n", n)
    _positive("error", error)
    level = _check_level(level)
    x, y = np.log(n), np.log(error)
    labels = list(dict.fromkeys(group.tolist()))
    bad = [g for g in labels if g is None or (isinstance(g, float) and not math.isfinite(g))]
    if bad:  # nan != nan: such a label would never find itself
        raise ValueError(f"group must hold labels such as the dimension d, got {bad[0]!r}: drop or label those rows")
    G, N = len(labels), n.size
    idx = np.array([labels.index(g) for g in group.tolist()])
    for k, g in enumerate(labels):
        if np.unique(x[idx == k]).size < 2:
            raise ValueError(f"group {g!r} has fewer than two distinct n: its slope is not defined")
        if np.sum(idx == k) < 3:
            raise ValueError(f"group {g!r} has {np.sum(idx == k)} points: a line with a variance of its own needs "
                             "at least 3 (more seeds or more n)")
    # the full model is one least-squares line per group; the reduced model's common slope is
    # sum_g S_xy,g / sum_g S_xx,g (the pooled within-group slope): both on centred x and y
    cx = [x[idx == k] - x[idx == k].mean() for k in range(G)]
    cy = [y[idx == k] - y[idx == k].mean() for k in range(G)]
    sxxs = [float(u @ u) for u in cx]
    slopes = [float(u @ v) / sxx for u, v, sxx in zip(cx, cy, sxxs)]
    rss_each = [float(np.sum((v - b * u) ** 2)) for u, v, b in zip(cx, cy, slopes)]
    rss_f = float(sum(rss_each))
    common = float(sum(float(u @ v) for u, v in zip(cx, cy)) / sum(sxxs))
    rss_r = float(sum(np.sum((v - common * u) ** 2) for u, v in zip(cx, cy)))
    df_f = N - 2 * G
    s2 = rss_f / df_f
    tq_pooled = stats.t.ppf(0.5 + level / 2, df_f)
    out = []
    for k, g in enumerate(labels):
        xk, yk = x[idx == k], y[idx == k]
        b, rss_k, sxx = slopes[k], rss_each[k], sxxs[k]
        a = float(yk.mean() - b * xk.mean())
        if rss_k <= _rounding(yk):
            raise ValueError(f"the points of group {g!r} lie exactly on their line (zero residual): no variance "
                             "to test or give intervals with")
        nu = xk.size - 2
        se = math.sqrt(rss_k / nu / sxx)
        tq = stats.t.ppf(0.5 + level / 2, nu)
        se_pooled = math.sqrt(s2 / sxx)
        out.append({"group": _plain(g), "slope": b, "slope_se": se, "dof": int(nu),
                    "slope_interval": [float(b - tq * se), float(b + tq * se)],
                    "slope_se_pooled": se_pooled,
                    "slope_interval_pooled": [float(b - tq_pooled * se_pooled), float(b + tq_pooled * se_pooled)],
                    "intercept": a, "points": int(xk.size)})
    result = {"groups": out, "common_slope": common, "rss_full": rss_f, "rss_reduced": rss_r,
              "level": level, "welch": None, "F": None, "df": None, "p": None}
    if G > 1:
        # RSS_r - RSS_f = sum_g S_xx,g (b_g - b)^2 exactly: no cancellation when the slopes nearly agree
        F = (sum(sxx * (b - common) ** 2 for sxx, b in zip(sxxs, slopes)) / (G - 1)) / s2
        result.update(F=float(F), df=[G - 1, df_f], p=float(stats.f.sf(F, G - 1, df_f)))
        result["welch"] = welch_slopes([o["slope"] for o in out], [o["slope_se"] for o in out],
                                       [o["dof"] for o in out])
    return result


def welch_slopes(slopes, ses, dofs):
    """Welch's heteroscedastic F test that G independent estimates share one mean.

    slopes b_g with standard errors se_g estimated on nu_g degrees of freedom (joint_slopes
    gives the formula and its sources). slopes, ses, dofs: 1-D, length G >= 2, every se_g
    finite > 0 and nu_g finite >= 1 (fractional allowed). Returns {"F", "df": [G - 1, df2],
    "p", "weighted_slope"}: "p" = P(F(G - 1, df2) > F), the upper tail (for G = 2 the
    two-sided p of Welch's t). F is inf only where its value is past the float range, or where
    the rounding of the weighted mean (|b| eps) over an se_g below ~1e-154 is (a term that
    float64 cannot tell from 0 or from past the range).
    """
    b, se, nu = (np.asarray(v, dtype=float) for v in (slopes, ses, dofs))
    G = b.size
    if b.ndim != 1 or G < 2 or se.shape != b.shape or nu.shape != b.shape:
        raise ValueError("welch_slopes needs at least two slopes (a 1-D list), each with its se and degrees of "
                         "freedom")
    if not (np.all(np.isfinite(b)) and np.all(np.isfinite(se) & (se > 0)) and np.all(np.isfinite(nu) & (nu >= 1))):
        raise ValueError("welch_slopes needs finite slopes, finite se > 0 and finite degrees of freedom >= 1")
    # w_g / W from weights relative to the largest (1 / se^2 overflows for se < 1e-154)
    w = (se.min() / se) ** 2
    W = float(w.sum())
    # the weighted mean on slopes scaled by the largest |b| (sum w b overflowed for slopes near 1e308)
    scale = float(np.max(np.abs(b))) or 1.0
    bw = float(np.sum((w / W) * (b / scale)) * scale)
    # 1 - w_g / W, as the others' share sum_{h != g} w_h / W where w_g holds most of W: there
    # 1 - w_g / W cancels (se 1, 128, 512 with nu 1, 1e300, 1e300: df2 1.2e-12 off)
    share = w / W
    rest = 1.0 - share
    top = int(np.argmax(share))  # at most one weight holds more than half
    if share[top] > 0.5:
        rest[top] = float(np.sum(np.delete(w, top))) / W
    lam = float(np.sum(rest**2 / nu))
    correction = 1.0 + 2.0 * (G - 2) * lam / (G**2 - 1)
    with np.errstate(over="ignore"):
        F = float(np.sum(((b - bw) / se) ** 2) / (G - 1) / correction)
    if not math.isfinite(F):
        # a term (b_g - bw)^2 / se_g^2 past the float range where F itself may not be: the terms
        # on the scales of the largest |b| (a power of two, 2^e_s <= it: b_g / 2^e_s and
        # bw / 2^e_s are exact, so their difference is b_g - bw rounded once, as in the direct
        # sum; scale's own mantissa rounded b_g / scale apart, F off by |b| eps / |b_g - bw|,
        # 6e-9 for slopes 3e-9 apart) and of the smallest se (b_g - bw and 1 / se_g may
        # overflow too), the scales put back by exponents
        e_s = math.frexp(scale)[1] - 1
        r = (np.ldexp(b, -e_s) - math.ldexp(bw, -e_s)) * (se.min() / se)
        # (all of them 0 on that scale: the overflowing term is bw's rounding over a tiny se_g,
        # and F stays inf)
        top = float(np.max(np.abs(r)))
        if top > 0.0:
            m_r, e_r = math.frexp(top)
            m_e, e_e = math.frexp(float(se.min()))
            q = float(np.sum((r / top) ** 2)) / (G - 1) / correction * (m_r / m_e) ** 2
            try:
                F = math.ldexp(q, 2 * (e_r + e_s - e_e))
            except OverflowError:
                F = math.inf
    df2 = (G**2 - 1) / (3.0 * lam)
    # dofs near 1e308 make lam subnormal and df2 inf, where F(G - 1, inf) is chi2(G - 1) / (G - 1)
    p = stats.f.sf(F, G - 1, df2) if math.isfinite(df2) else stats.chi2.sf(F * (G - 1), G - 1)
    return {"F": F, "df": [G - 1, float(df2)], "p": float(p), "weighted_slope": bw}


def _pure_error(n, error, least, what):
    """(x = log n, y = log error, the distinct x, SSPE = sum_j sum_{i in j} (y_i - ybar_j)^2) of
    replicate seeds, for `what`, a pure-error test of a curve with least - 1 parameters;
    ValueError for fewer than `least` distinct n, no replicates or replicates that agree exactly."""
    n, error = _vectors([("n", n), ("error", error)])
    _positive("n", n)
    _positive("error", error)
    x, y = np.log(n), np.log(error)
    levels = np.unique(x)
    if levels.size < least:
        raise ValueError(f"{what} needs at least {('three', 'four')[least - 3]} distinct n, got {levels.size}")
    if x.size == levels.size:
        raise ValueError("lack of fit needs replicates (several seeds at some n): there is no pure error")
    sspe = float(sum(np.sum((y[x == v] - y[x == v].mean()) ** 2) for v in levels))
    if sspe <= _rounding(y):
        raise ValueError("the replicate seeds agree exactly at every n (zero pure error): no lack-of-fit test")
    return x, y, levels, sspe


def lack_of_fit(n, error):
    """Pure-error F test of the line log error = a + b log n, from replicate seeds.

    With m distinct n, N points and ybar_j the mean of the m_j replicates at the j-th n:

        SSE  = sum_i (y_i - a - b x_i)^2                         (N - 2 df)
        SSPE = sum_j sum_{i in j} (y_i - ybar_j)^2               (N - m df, pure error)
        SSLF = sum_j m_j (ybar_j - a - b x_j)^2 = SSE - SSPE      (m - 2 df, lack of fit)
        F    = [SSLF / (m - 2)] / [SSPE / (N - m)]  ~  F(m - 2, N - m) if the line is right

    (Kutner, Nachtsheim, Neter & Li, Applied Linear Statistical Models, 5th ed. 2005,
    Sec. 3.7; their bank example gives F* = 14.80 on (4, 5) df, reproduced in the tests.)
    A small p says the seeds scatter less about their own means than the means scatter
    about the line: the curve bends.

    Returns
    -------
    dict
        "F", "df": [m - 2, N - m], "p", "sse", "sspe", "sslf".

    Raises
    ------
    ValueError
        Bad arrays; fewer than three distinct n (a line through two means always fits), no
        replicates (N = m), or replicates that agree exactly (zero pure error).
    """
    x, y, levels, sspe = _pure_error(n, error, 3, "lack of fit")
    m, N = levels.size, x.size
    _, b, sse = _line(x, y)
    # SSLF = sum_j m_j (ybar_j - a - b x_j)^2 (m_j replicates at x_j), which SSE - SSPE equals
    # exactly: summed directly, on centred x and y, not as that difference, whose cancellation
    # lost every digit where the means lie near the line (SSLF 0 for 7e-17, F 0.00)
    # (the means of centred y: the mean of y at one n carries the rounding |y| eps, 5e-14 for errors
    # ~1e-200, which the means' scatter about the line, 1e-6 there, cannot absorb: SSLF off by 3e-8)
    xm, yc = x.mean(), y - y.mean()
    sslf = float(sum(np.sum(x == v) * (yc[x == v].mean() - b * (v - xm)) ** 2 for v in levels))
    df1, df2 = m - 2, N - m
    F = (sslf / df1) / (sspe / df2)
    return {"F": float(F), "df": [df1, df2], "p": float(stats.f.sf(F, df1, df2)), "sse": sse, "sspe": sspe,
            "sslf": sslf}


def means_line(n, error, level=0.95):
    """The line log error = a + b log n through the means of the replicates, with a Student-t
    interval for b on m - 2 degrees of freedom (m distinct n).

    Where the pure-error test rejects the line (lack_of_fit), a seed-level interval takes the
    N points for independent scatter about the line, but the seeds at one n share its
    departure from the line: the means are the m observations the line is judged by, and
    their scatter about it (bending included) is its error. With ybar_j the mean of
    log error over the seeds at x_j = log n_j,

        b = sum_j (x_j - xbar)(ybar_j - ybbar) / sum_j (x_j - xbar)^2,
        se(b)^2 = [sum_j (ybar_j - a - b x_j)^2 / (m - 2)] / sum_j (x_j - xbar)^2,

    b +- t_{m-2, (1 + level) / 2} se(b) (Kutner, Nachtsheim, Neter & Li, Applied Linear
    Statistical Models, 5th ed. 2005, Sec. 3.7: a lack of fit is error to a model that
    ignores it). The slope here is -b of `joint_slopes`' convention: b is the exponent of
    error ~ n^-b.

    Returns
    -------
    dict
        "b", "b_se", "b_interval": [low, high], "df": m - 2, "m", "level".

    Raises
    ------
    ValueError
        Bad arrays; fewer than three distinct n (no scatter to judge a line by); means that
        lie exactly on a line (no error to judge by).
    """
    n, error = _vectors([("n", n), ("error", error)])
    _positive("n", n)
    _positive("error", error)
    level = _check_level(level)
    x, y = np.log(n), np.log(error)
    levels = np.unique(x)
    m = levels.size
    if m < 3:
        raise ValueError(f"a line through the means needs at least three distinct n, got {m}")
    ybar = np.array([y[x == v].mean() for v in levels])
    _, slope, sse = _line(levels, ybar)
    if sse <= _rounding(ybar):
        raise ValueError("the means lie exactly on a line: no error to judge the exponent by")
    u = levels - levels.mean()
    se = math.sqrt(sse / (m - 2) / float(u @ u))
    half = float(stats.t.ppf((1 + level) / 2, m - 2)) * se
    return {"b": -slope, "b_se": se, "b_interval": [-slope - half, -slope + half], "df": m - 2, "m": int(m),
            "level": level}


def saturating_lack_of_fit(n, error, fit):
    """Pure-error F test of the saturating curve f(n) = log(A n^-b + c) (saturating_fit's on
    the same points): lack_of_fit's test with the curve's three parameters for the line's two,

        SSLF = sum_j m_j (ybar_j - f(n_j))^2                    (m - 3 df, lack of fit)
        F    = [SSLF / (m - 3)] / [SSPE / (N - m)]  ~  F(m - 3, N - m) if the curve is right

    (SSPE as in lack_of_fit; Bates & Watts, Nonlinear Regression Analysis and Its
    Applications, 1988, Sec. 3.10). Returns {"F", "df", "p"}.

    Raises
    ------
    ValueError
        Bad arrays; fewer than four distinct n (the curve passes through any three means);
        no replicates, or replicates that agree exactly; a fit that is not a dict with finite
        A > 0, b and c >= 0.
    """
    x, y, levels, sspe = _pure_error(n, error, 4, "the saturating curve's lack of fit")
    m, N = levels.size, x.size
    try:
        A, b, c = (float(fit[k]) for k in ("A", "b", "c"))
    except (TypeError, KeyError, ValueError):  # None, a dict without "c": a TypeError or KeyError
        raise ValueError(f"fit must be saturating_fit's result on these points (a dict with A, b and c), "
                         f"got {fit!r:.80}") from None
    if not (math.isfinite(b) and 0 < A < math.inf and 0 <= c < math.inf):
        raise ValueError(f"fit must have finite A > 0, b and c >= 0 (saturating_fit's result), got A = {A!r}, "
                         f"b = {b!r}, c = {c!r}")
    # log(A n^-b + c) from log A - b log n: A e^{-b log n} underflowed to 0 (log -inf, F inf, p 0)
    # where A n^-b is a normal float (A = 1e245, n = 1e130, b = 3)
    head = math.log(A) - b * levels
    curve = head if c == 0 else np.logaddexp(head, math.log(c))
    sslf = float(sum(np.sum(x == v) * (y[x == v].mean() - f) ** 2 for v, f in zip(levels, curve)))
    df1, df2 = m - 3, N - m
    F = (sslf / df1) / (sspe / df2)
    return {"F": float(F), "df": [df1, df2], "p": float(stats.f.sf(F, df1, df2))}


def saturating_fit(n, error, level=0.95, b_max=4.0):
    """error = A n^-b + c (A > 0, b >= 0, c >= 0), fitted in log space, with a profile interval for b.

    Least squares of log error_i against log(A n_i^-b + c) over every seed's point: the
    seed scatter is multiplicative (its standard deviation is proportional to the level),
    so the log makes it homogeneous. The interval for b is the profile-likelihood
    (profile-t) interval of nonlinear least squares,

        { b : S_p(b) - S(bhat) <= s^2 F(1, N - 3; level) },   s^2 = S(bhat) / (N - 3),

    with S_p(b) the residual sum of squares minimised over (A, c) at fixed b (Bates & Watts,
    Nonlinear Regression Analysis and Its Applications, 1988, Sec. 6.1; Venzon &
    Moolgavkar 1988). Why this and not the alternatives: the Wald interval bhat ± t se
    assumes the model is nearly linear in b, which fails exactly when it matters (c near
    0, or the flattening barely seen, where b and c trade off and the profile is
    lopsided); a seed bootstrap resamples 5 units, too few for its percentiles. When the
    profile does not rise above the threshold before b = 0 or b = b_max, that end is
    None: the data do not bound b there (it is not clipped to the search range).

    Whether there is a floor at all: the F test of c = 0, the straight line (A n^-b, b >= 0)
    nested in this model,

        F = (RSS_line - RSS) / [RSS / (N - 3)]  on (1, N - 3) degrees of freedom,

    conservative because c = 0 is on the boundary of c >= 0 (the likelihood-ratio statistic
    is then a 50:50 mixture of 0 and chi^2_1, so the p printed is about twice the exact one;
    Self & Liang, J. Amer. Statist. Assoc. 82, 1987). A fitted c with p above the level is
    not evidence of a floor: c trades off against b over a limited range of n.

    Parameters
    ----------
    n, error : arrays (N,)
        All seeds' points, > 0; at least 4 distinct n and N >= 4.
    level : float
    b_max : float
        Largest exponent searched (errors falling faster than n^-4 are not expected).

    Returns
    -------
    dict
        "A", "b", "c", "b_interval": [low or None, high or None], "rss", "s2", "dof", "level",
        "floor_test": {"F", "df": [1, N - 3], "p", "rss_line"}.

    Raises
    ------
    ValueError
        Bad arrays, fewer than 4 distinct n, or points on the curve to rounding (zero
        residual, so s^2 = 0).
    """
    n, error = _vectors([("n", n), ("error", error)])
    _positive("n", n)
    _positive("error", error)
    level = _check_level(level)
    if isinstance(b_max, bool) or not isinstance(b_max, numbers.Real) or not (math.isfinite(b_max) and b_max > 0):
        raise ValueError(f"b_max must be a finite number > 0, got {b_max!r}")
    if np.unique(n).size < 4:
        raise ValueError(f"a saturating fit has 3 parameters: it needs at least 4 distinct n, got {np.unique(n).size}")
    y = np.log(error)
    u = n / np.exp(np.mean(np.log(n)))  # n scaled to geometric mean 1: A is the level mid-range
    scale = float(np.exp(np.mean(y)))

    def profile(b, start=None):
        """min over (log A, c >= 0) of sum (y - log(A u^-b + c))^2 at fixed b."""
        ub = u ** -b

        def resid(p):
            # a trial step past exp's range gives residuals -inf, which least_squares' trf takes
            # as a failed step (it shrinks its region and tries again): an expected event on
            # errors near 1e265 (log A near 610), not a warning for the caller
            with np.errstate(over="ignore"):
                return y - np.log(np.exp(p[0]) * ub + p[1] * scale)

        def jac(p):
            a_u = np.exp(p[0]) * ub
            m = a_u + p[1] * scale
            return np.column_stack([-a_u / m, -scale / m])

        starts = [start] if start is not None else [np.array([np.log(scale), 0.5])]
        starts.append(np.array([np.log(scale), 0.0]))
        best = None
        for p0 in starts:
            sol = optimize.least_squares(resid, p0, jac=jac, bounds=([-np.inf, 0.0], [np.inf, np.inf]), method="trf")
            if best is None or sol.cost < best.cost:
                best = sol
        # the face c = 0 in closed form, log A = mean(y + b log u): least_squares moves a start on
        # the bound inside it (c ~ 1e-10) and stops short of it, so the profile stood above the
        # line's RSS there; at the line's b (taken below where it fits best) the interval's
        # bracket then had no sign change (brentq: "f(a) and f(b) must have different signs")
        v = y + b * np.log(u)
        a0 = float(v.mean())
        rss0 = float(np.sum((v - a0) ** 2))
        if rss0 <= 2 * best.cost:
            return rss0, np.array([a0, 0.0])
        return 2 * best.cost, best.x

    # global fit: a coarse profile grid, then polish b by bounded scalar minimisation
    grid = np.linspace(0.0, b_max, 25)
    prof = []
    for b in grid:  # each b starts from its neighbour's optimum (and from c = 0)
        prof.append(profile(b, prof[-1][1] if prof else None))
    k = int(np.argmin([p[0] for p in prof]))
    lo, hi = grid[max(k - 1, 0)], grid[min(k + 1, grid.size - 1)]
    res = optimize.minimize_scalar(lambda b: profile(b, prof[k][1])[0], bounds=(lo, hi), method="bounded",
                                   options={"xatol": 1e-7})
    b_hat = float(res.x) if res.fun <= prof[k][0] else float(grid[k])
    rss, p_hat = profile(b_hat, prof[k][1])
    # c = 0: the line log A - b log n with b >= 0 (a rising line is the constant, b = 0). Where it
    # fits at least as well, it is the fit: the optimiser stops just short of the boundary c = 0
    # (c ~ 1e-11 and an RSS up to 5e-10 above the line's on the rate page's mixture-iso d = 512);
    # so is an optimum on the face c = 0, whose best b is the line's (b_hat is within xatol of it)
    a_line, slope, rss_line = _line(np.log(u), y)
    if slope > 0:
        a_line, slope, rss_line = float(y.mean()), 0.0, float(np.sum((y - y.mean()) ** 2))
    if (rss_line <= rss or p_hat[1] == 0.0) and -slope <= b_max:
        b_hat, rss, p_hat = (0.0 if slope >= 0 else -slope), rss_line, np.array([a_line, 0.0])
    N = n.size
    dof = N - 3
    if dof <= 0:
        raise ValueError(f"a saturating fit needs more than 3 points, got {N}")
    if rss <= _rounding(y):  # s^2 = 0: F of the floor test 0 / 0 or inf, the interval a point
        raise ValueError("the points lie exactly on a curve A n^-b + c (zero residual): no variance for an "
                         "interval or a floor test")
    s2 = float(rss) / dof
    threshold = rss + s2 * stats.f.ppf(level, 1, dof)

    def excess(b):
        return profile(b, p_hat)[0] - threshold

    def end(edge):
        # the profile between b_hat and the edge: first grid crossing, then brentq inside it
        points = [b for b in grid if (b < b_hat if edge == 0.0 else b > b_hat)]
        points = sorted(points, reverse=(edge == 0.0)) if points else []
        if edge == 0.0 and (not points or points[-1] != 0.0):
            points.append(0.0)
        if edge == b_max and (not points or points[-1] != b_max):
            points.append(b_max)
        previous = b_hat
        for b in points:
            if excess(b) > 0:
                return float(optimize.brentq(excess, min(previous, b), max(previous, b), xtol=1e-8))
            previous = b
        return None

    low = end(0.0)
    high = end(b_max)
    F_floor = max(rss_line - float(rss), 0.0) / s2
    floor = {"F": float(F_floor), "df": [1, int(dof)], "p": float(stats.f.sf(F_floor, 1, dof)),
             "rss_line": float(rss_line)}
    return {"A": float(np.exp(p_hat[0]) * np.exp(np.mean(np.log(n))) ** b_hat), "b": b_hat,
            "c": float(p_hat[1] * scale), "b_interval": [low, high], "rss": float(rss), "s2": float(s2),
            "dof": int(dof), "level": level, "floor_test": floor}


def curse_comparison(d, exponent_interval):
    """The exponent b (error ~ n^-b) against the curse rate 2 / (d + 4).

    Returns {"curse_rate", "above": low > rate, "below": high < rate, "ratio_low": low / rate}
    for the interval [low, high] of b; an end that is None (unbounded) decides nothing on
    its side, and the ratio is then None.
    """
    rate = curse_rate(d)
    try:
        low, high = exponent_interval
    except (TypeError, ValueError):
        raise ValueError(f"exponent_interval must be [low, high], got {exponent_interval!r}") from None
    for end in (low, high):
        if end is not None and (isinstance(end, bool) or not isinstance(end, numbers.Real) or not math.isfinite(end)):
            raise ValueError(f"exponent_interval's ends must be finite numbers or None (unbounded), got "
                             f"{exponent_interval!r}")
    if low is not None and high is not None and low > high:
        raise ValueError(f"exponent_interval must have low <= high, got {exponent_interval!r}")
    return {"curse_rate": rate, "above": bool(low is not None and low > rate),
            "below": bool(high is not None and high < rate),
            "ratio_low": None if low is None else float(low / rate)}


def n_star(n, error, baseline, fraction=0.5):
    """Smallest n where the error falls below fraction x baseline, interpolated on log n.

    With g_j = log error_j - log(fraction baseline_j) at the sorted distinct n_j (means over
    seeds passed in), n* is where the piecewise-linear interpolant of g in log n first
    crosses 0: between n_{k-1} and n_k, the first k with g_k < 0,

        log n* = log n_{k-1} + g_{k-1} (log n_k - log n_{k-1}) / (g_{k-1} - g_k).

    Returns
    -------
    dict
        {"n_star": float or None, "censored": None | "left" | "right"}: "left" when the error
        is already below at the smallest n (n* <= n_1, n_star = n_1), "right" when it
        never falls below (n_star None: n* > the largest n, if at all).

    Raises
    ------
    ValueError
        Bad arrays, repeated n, or values <= 0.
    """
    n, error, baseline = _vectors([("n", n), ("error", error), ("baseline", baseline)])
    if n.size == 0:
        raise ValueError("n must hold at least one value (no data: no n*)")
    for name, a in (("n", n), ("error", error), ("baseline", baseline)):
        _positive(name, a)
    if isinstance(fraction, bool) or not isinstance(fraction, numbers.Real) or not (0 < fraction < math.inf):
        raise ValueError(f"fraction must be a finite number > 0, got {fraction!r}")
    if np.unique(n).size != n.size:
        raise ValueError("n must be distinct (pass the means over seeds at each n)")
    order = np.argsort(n)
    x = np.log(n[order])
    # g = log(error / (fraction x baseline)): with the threshold's one rounding where it is a
    # normal float (an error exactly at fraction x baseline then gives g = 0, not below), with
    # a sum of logs where the product overflows or is subnormal (1.5e-323 x 0.5 read n* 1.41
    # for 1.63); the sum everywhere read 13% of exact ties as below (a fuzz run)
    with np.errstate(over="ignore", under="ignore"):
        threshold = fraction * baseline[order]
    normal = (threshold >= np.finfo(float).tiny) & (threshold <= np.finfo(float).max)
    g = np.where(normal, np.log(error[order]) - np.log(np.where(normal, threshold, 1.0)),
                 np.log(error[order]) - (math.log(fraction) + np.log(baseline[order])))
    below = np.flatnonzero(g < 0)
    if below.size == 0:
        return {"n_star": None, "censored": "right"}
    k = int(below[0])
    if k == 0:
        return {"n_star": float(n[order][0]), "censored": "left"}
    x_star = x[k - 1] + g[k - 1] * (x[k] - x[k - 1]) / (g[k - 1] - g[k])
    return {"n_star": float(np.exp(x_star)), "censored": None}


def paired_log_ratio(error, other, level=0.95):
    """Two settings run on the same cells: r_j = log(other_j / error_j), its mean and a t test of mean 0.

    A paired comparison (each cell j shares its data, initialisation and evaluation draws
    between the two runs, so the differences r_j carry no cell-to-cell variation):

        rbar = mean r_j,  se = sd(r_j) / sqrt(m),  t = rbar / se  (m - 1 degrees of freedom),

    the interval rbar ± t_{(1+level)/2, m-1} se, and the two-sided p-value of rbar = 0.
    exp(rbar) is the geometric mean of other / error over the cells.

    Returns
    -------
    dict
        {"cells", "mean_log_ratio", "se", "interval", "ratio", "ratio_interval", "t", "p",
         "other_lower"}: other_lower counts the cells with other < error. With one cell
        (or identical ratios, up to the rounding of their logs) se is 0 and t, p and the
        interval are None. ratio and ratio_interval are exp of mean_log_ratio and interval:
        inf (or 0) where a ratio is past the float range (the logs keep the value).

    Raises
    ------
    ValueError
        Arrays of different lengths, empty, non-finite or <= 0 values, a bad level.
    """
    error, other = _vectors([("error", error), ("other", other)])
    for name, a in (("error", error), ("other", other)):
        _positive(name, a)
    if error.size == 0:
        raise ValueError("error must hold at least one cell")
    level = _check_level(level)
    # log of the quotient: one rounding of the ratio, where log(other) - log(error) carries
    # the rounding of two logs as large as 690 (errors near 1e-300); the difference only
    # where the quotient leaves the normal range
    with np.errstate(over="ignore", under="ignore"):
        q = other / error
    normal = (q >= np.finfo(float).tiny) & (q <= np.finfo(float).max)
    r = np.where(normal, np.log(np.where(normal, q, 1.0)), np.log(other) - np.log(error))
    m = r.size
    mean = float(r.mean())
    out = {"cells": m, "mean_log_ratio": mean, "ratio": _exp(mean), "other_lower": int(np.sum(other < error)),
           "se": 0.0, "interval": None, "ratio_interval": None, "t": None, "p": None}
    spread = float(np.sum((r - mean) ** 2))
    if m > 1 and spread > _rounding(r):  # identical ratios differ by rounding only: se 0
        se = math.sqrt(spread / (m - 1)) / math.sqrt(m)
        t = mean / se
        q = float(stats.t.ppf(0.5 + level / 2, m - 1))
        low, high = mean - q * se, mean + q * se
        out.update(se=se, t=t, p=float(2 * stats.t.sf(abs(t), m - 1)), interval=[low, high],
                   ratio_interval=[_exp(low), _exp(high)])
    return out


def _exp(v):
    """exp(v), inf past the float range (where math.exp raises OverflowError)."""
    with np.errstate(over="ignore"):
        return float(np.exp(np.float64(v)))


def _line(x, y):
    """Least-squares line y = a + b x on centred data: (a, b, residual sum of squares)."""
    u, v = x - x.mean(), y - y.mean()
    b = float(u @ v) / float(u @ u)
    return float(y.mean() - b * x.mean()), b, float(np.sum((v - b * u) ** 2))


def _rounding(y):
    """A sum of squares this small is rounding of an exact fit (64 eps per point)."""
    return y.size * (64 * np.finfo(float).eps * max(float(np.max(np.abs(y))), 1.0)) ** 2


def _check_level(level):
    """level as a Python float (a NumPy float32 too), or ValueError."""
    if isinstance(level, bool) or not isinstance(level, numbers.Real) or not 0 < level < 1:
        raise ValueError(f"level must be a number in (0, 1), got {level!r}")
    return float(level)


def _plain(v):
    return v.item() if isinstance(v, np.generic) else v
