"""Audit a peer's sampler against a reference replay: same target, grid, start and noise;
and the pass/fail tolerance of a score audit (ScoreTolerance, `sgm-ref audit --max-relative-error`).

compare_sampler runs a peer's sampler and one of sgm_ref.replays side by side and reports

  * the per-step deviation of the two paths, max_i |y_peer,k - y_replay,k| / max_i |y_replay,k|
    at each state k, and the first step where it exceeds the rounding allowance k rtol,
    rtol = 64 eps(dtype of the peer's output, float64 at the least) per step (override with
    rtol=...);
  * for a Gaussian target N(m, S), the exact output law of each (sgm_ref.replays.
    replay_output_gaussian: the probe trick runs the peer itself on probe inputs, so no
    second implementation is needed; a peer that is not affine in its inputs falls back to
    the Gaussian fitted to its samples, marked "monte_carlo"; a peer affine only up to the
    rounding allowance, as one computing in float32, keeps its exact law up to that
    rounding) and the KL/TV between the two laws and to the target;
  * for any target, sample distances (sliced Wasserstein-2, MMD^2) with standard errors;
    the peer's and the replay's outputs share their start points and noise, so their
    MMD^2 is the paired U-statistic (sgm_ref.metrics.mmd(paired=True): the independent
    one read -8.8e-3 for identical outputs at n = 100), each against target samples the
    independent one.

The peer protocol (two forms, told apart by the number of required positional parameters,
or by kind="loop" / "step"):

    loop(score, grid, x, noises) -> y (n, d), or its trajectory (K + 1, n, d)
    step(x, k, grid, score, noise_k) -> x_next (n, d)      k = 0, ..., len(grid) - 2

score(x (n, d), t (n,)) is the exact score of the target under the process (numpy in,
numpy out); grid the decreasing times of the comparison (a peer with its own grid may
ignore it); x the start points at grid[0]; noises(j) -> (n, d) the j-th standard normal
draw, j = 0, 1, ... in the order the replay consumes them (noises(j) is the same array
whenever asked; draws past those the replay uses come from the same stream). A step
function gets as noise_k the draw the replay takes in its step k: noises(k) for a replay
that draws once per step; with churn on part of the grid, the j-th churned step's is
noises(j); a step where the replay draws none gets a draw the replay does not use (and a
step where it draws two, as the predictor-corrector, the first: give a loop). A peer
that returns its trajectory (or a step function) gets the per-step deviation; a peer
returning only its output gets the final one.
"""

import inspect
import itertools
import json
import math
import operator
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from ._validation import check_count, check_fits, check_real, check_real_array, check_rng, fits_in_memory
from .metrics.distances import mmd, sliced_wasserstein
from .processes import VariancePreserving, check_process
from .replays import REPLAYS, law_distances, replay_output_gaussian
from .replays._common import check_replay_grid, replay_signature
from .replays.laws import gaussian_score
from .targets import GaussianMixture

__all__ = ["compare_sampler", "SamplerComparison", "process_from_spec", "target_from_spec", "ROUNDING_FACTOR",
           "ScoreTolerance"]

ROUNDING_FACTOR = 64  # rtol = ROUNDING_FACTOR * eps of the peer's dtype


# -- the two sides ------------------------------------------------------------------------


class _Stream:
    """Draw j of a fixed stream: noise[j] if given, else the j-th draw of rng (made lazily,
    in order, so the same j is always the same array)."""

    def __init__(self, rng, noise, shape, dtype):
        self.rng, self.shape, self.dtype, self.draws, self.used = rng, shape, dtype, [], 0
        if noise is not None:
            # real numbers, read as float64 (check_real_array): np.asarray(noise, dtype=float64) dropped a
            # complex part under a ComplexWarning, parsed strings, read a bool array as draws of 0 and 1 and
            # a masked array as the numbers under its mask; and a NaN was "got shape" the expected shape
            arr = check_real_array(noise, "noise")
            if arr.ndim != 3 or arr.shape[1:] != shape:
                raise ValueError(f"noise must be a finite array of shape (n_draws, {shape[0]}, {shape[1]}), "
                                 f"got shape {arr.shape}")
            self.draws = list(arr)

    def __call__(self, j):
        # any integer, also a 0-d integer array or tensor (a loop over torch.arange), was refused
        try:
            index = None if isinstance(j, (bool, np.bool_)) else operator.index(j)
        except TypeError:
            index = None
        if index is None or index < 0:
            raise ValueError(f"noises(j) takes the draw's index j >= 0, got {j!r}")
        j = int(index)
        while len(self.draws) <= j:
            if self.rng is None:
                raise ValueError(f"noise has {len(self.draws)} draws but draw {j} was asked for; pass more draws")
            self.draws.append(self.rng.standard_normal(self.shape, dtype=self.dtype).astype(np.float64))
        self.used = max(self.used, j + 1)
        return self.draws[j].astype(self.dtype)

    def draw_noise(self, j, shape):  # the replays' noise-source protocol (sgm_ref.replays._common.Noise)
        return self(j).astype(np.float64)


def _peer_kind(peer, kind):
    if kind is not None:
        if kind not in ("loop", "step"):
            raise ValueError(f"kind must be 'loop' or 'step', got {kind!r}")
        return kind
    try:
        params = inspect.signature(peer).parameters.values()
    except (TypeError, ValueError):
        raise ValueError("cannot read the peer's signature: pass kind='loop' or kind='step'") from None
    required = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    found = {4: "loop", 5: "step"}.get(len(required))
    if found is None:
        raise ValueError(f"the peer takes {len(required)} required arguments: a loop takes 4 (score, grid, x, "
                         "noises), a step function 5 (x, k, grid, score, noise_k); or pass kind='loop' or kind='step'")
    return found


# _step_draws probes in batches of up to this many numbers of paths (K + 1, rows, d), 16 MiB (its
# comparisons take a few arrays of that size more)
_PROBE_ELEMENTS = 2**21


def _step_draws(replay_fn, options, score, process, grid, d, used, rows):
    """The index of the draw a step function gets at each step k = 0..K-1: the first draw
    the replay takes in its step k; for a step where it takes none, a draw its steps do
    not use (one it takes without effect, else one past the `used` it takes), each once.

    noises(k) at step k is that only for a replay drawing once per step: with churn on part
    of the grid (s_tmin, s_tmax) the replay's step k takes draw (churned steps before k),
    and a correct step function was reported as diverging at the first churned step. Found
    by a probe, in batches of at most `rows` rows: start 0 and every draw 0, but draw j is
    u in row j; row j leaves the last row (none) at the step that takes draw j."""
    K = grid.size - 1
    step_of = np.full(used, -1)
    u = np.linspace(0.5, 1.0, d)
    for a in range(0, used, rows):
        b = min(used, a + rows)

        class Impulse:  # the replays' noise-source protocol
            def draw_noise(self, j, shape, a=a, b=b):
                z = np.zeros(shape)
                if a <= j < b:
                    z[j - a] = u
                return z

        _, states = replay_fn(score, process, grid, np.zeros((b - a + 1, d)), None, True, noise=Impulse(), **options)
        states = np.asarray(states, dtype=np.float64)[1:]
        base = states[:, -1:]
        moved = np.any(np.abs(states[:, :-1] - base) > 2.0**-40 * np.maximum(np.abs(base), 1.0), axis=2)  # (K', b - a)
        hit = moved.any(axis=0)
        step_of[a:b][hit] = moved.argmax(axis=0)[hit]
    first = {}
    for j in range(used):
        if step_of[j] >= 0:
            first.setdefault(int(step_of[j]), j)
    spare = itertools.chain((j for j in range(used) if step_of[j] < 0), itertools.count(used))
    return [first[k] if k in first else next(spare) for k in range(K)]


def _run_peer(peer, kind, score, grid, x, noises, draw_of_step=None):
    """The peer's states (K + 1, n, d) if it gives them, else None; and its output (n, d).

    The peer gets copies of x and grid (a peer clamping grid[-1] in place changed the grid of
    the report and of the replay's law: a deviation of 5% beside KL(peer || replay) = 0).
    A step function gets noises(draw_of_step[k]) at step k (default noises(k)). Its output
    is its last step's result in the dtype it returned (its states stacked with x are
    float64: a float32 step function was judged at float64's rounding, and its law
    refused as not affine)."""
    if kind == "step":
        states = [np.array(x)]
        for k in range(grid.size - 1):
            j = k if draw_of_step is None else draw_of_step[k]
            y = _as_array(peer(states[-1].copy(), k, grid.copy(), score, noises(j)), f"the peer's step {k}")
            # a copy: a step function returning one buffer it rewrites at every step left each state
            # an alias of the last (a correct peer was a DISCREPANCY at step 0, its law's probe runs
            # rewrote its output: KL inf)
            states.append(np.array(_check_state(y, x, f"the peer's step {k}")))
        return np.stack(states), states[-1]
    out = _as_array(peer(score, grid.copy(), np.array(x), noises), "the peer's output")
    if out.ndim == 3 and out.shape[1:] == x.shape and out.shape[0] >= 2:
        states = np.stack([_check_state(s, x, f"the peer's state {k}") for k, s in enumerate(out)])
        return states, states[-1]
    # a copy: an array the peer keeps and rewrites was rewritten by its law's probe runs (n = 2 rows,
    # as their check batch) before the sample distances read it
    return None, np.array(_check_state(out, x, "the peer's output"))


def _as_array(y, what):
    """The peer's result as an array; a tuple such as a replay's (y, trajectory), or a torch
    tensor that requires grad, raised NumPy's or torch's message, naming neither."""
    try:
        return np.asarray(y)
    except (ValueError, TypeError, RuntimeError) as exc:
        pair = "; a pair (y, trajectory)? return the trajectory alone" if isinstance(y, tuple) and len(y) == 2 else ""
        raise ValueError(f"{what} must be an array (n, d) or a trajectory (K + 1, n, d) of numbers, got "
                         f"{type(y).__name__} that NumPy cannot read as one ({exc}){pair}") from None


def _check_state(y, x, what):
    y = np.asarray(y)
    if y.shape != x.shape:
        raise ValueError(f"{what} has shape {y.shape}, expected {x.shape} (x's shape) or a trajectory "
                         f"(K + 1, {x.shape[0]}, {x.shape[1]})")
    if y.dtype.kind != "f":
        raise ValueError(f"{what} must be floating point, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{what} is not finite (NaN or inf)")
    return y


def _as_replay(peer, kind, draw_of_step=None):
    """The peer wearing a replay's signature, so replay_output_gaussian can probe it."""

    def peer_replay(score, process, grid, x, rng=None, trajectory=False, *, noise=None):
        shape = x.shape
        _, out = _run_peer(peer, kind, score, grid, x, lambda j: np.asarray(noise.draw_noise(int(j), shape)),
                           draw_of_step)
        return np.asarray(out, dtype=np.float64)

    return peer_replay


def _replay(replay):
    if callable(replay):
        return getattr(replay, "__name__", "replay"), replay
    if isinstance(replay, str) and replay in REPLAYS:
        return replay, REPLAYS[replay]
    raise ValueError(f"replay must be one of {sorted(REPLAYS)} or a function with the replays' signature, "
                     f"got {replay!r}")


_SET_BY_THE_COMPARISON = ("score", "process", "grid", "x", "rng", "trajectory", "noise")


def _check_replay_options(replay_name, replay_fn, options):
    """Refuse, before any work, options the replay does not take (replays._common.
    replay_signature), a required one left out and a non-bool given for a bool option
    (`--option denoise=False` is the text 'False')."""
    signature = replay_signature(replay_fn)
    if signature is None:
        return
    params, own = signature
    set_here = set(params) - set(own)
    for key, value in options.items():
        if key in _SET_BY_THE_COMPARISON or key in set_here:
            raise ValueError(f"replay_options (--option): {key} is set by the comparison itself; leave it out")
        if key not in params:
            raise ValueError(f"replay_options (--option): {replay_name} has no option {key!r}; its options are "
                             f"{', '.join(own) or 'none'}")
        default = params[key].default
        if isinstance(default, bool) and not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"replay_options (--option): {replay_name}'s {key} is true or false, got {value!r} "
                             f"(JSON: {key}=true or {key}=false)")
    missing = [name for name in own if params[name].default is inspect.Parameter.empty and name not in options]
    if missing:
        raise ValueError(f"replay_options (--option): {replay_name} needs " + ", ".join(
            f"{name} (--option {name}=VALUE)" for name in missing))


# -- targets ------------------------------------------------------------------------------


def _gaussian_of(target):
    """(m, S) if the target is one Gaussian (a pair (mean, cov) or a one-component mixture)."""
    if isinstance(target, (tuple, list)) and len(target) == 2:
        # a list with a complex number was NumPy's TypeError, a complex array lost its imaginary
        # part with only NumPy's ComplexWarning, and strings were parsed as numbers
        try:
            m = np.atleast_1d(check_real_array(target[0], "its mean"))
            S = np.atleast_2d(check_real_array(target[1], "its cov"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"target must be a pair (mean (d,), cov (d, d)) of real numbers: {exc}") from None
        return m, S
    if isinstance(target, GaussianMixture) and target.n_components == 1:
        return np.asarray(target.mean(), dtype=np.float64), np.asarray(target.covariance(), dtype=np.float64)
    return None


def _target_parts(target, process):
    """(d, score, sample(n, rng), gaussian or None)."""
    gauss = _gaussian_of(target)
    if gauss is not None:
        m, S = gauss
        score = gaussian_score(m, S, process)  # validates the pair
        L = np.linalg.cholesky(S)
        return m.size, score, (lambda n, rng: m + rng.standard_normal((n, m.size)) @ L.T), gauss
    if not (hasattr(target, "score") and hasattr(target, "sample") and hasattr(target, "dim")):
        raise ValueError("target must be a pair (mean, cov), a GaussianMixture or a target of sgm_ref.targets "
                         f"(with score, sample and dim), got {type(target).__name__}")
    return target.dim, (lambda x, t: target.score(x, t, process)), target.sample, None


# -- the result ---------------------------------------------------------------------------


def _f(v):
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass
class SamplerComparison:
    """What compare_sampler found. `matches` is the verdict; text() one screen; to_dict() JSON.

    deviation[k] = max_i |peer_k - replay_k| / max_i |replay_k| over the states both paths
    have (k = 0 the start); first_divergence the first step k (from state k to k + 1) whose
    result exceeds the rounding allowance rtol * (k + 1), or the first step only one of the
    two takes (when their step counts differ), or None. laws: {"method" ("exact", or
    "monte_carlo" when a side's law is the Gaussian fitted to its samples), "fitted" (those
    sides, "peer" and/or "replay"), "peer", "replay", "target", and the distances
    "peer_vs_replay", "peer_vs_target", "replay_vs_target" (KL both ways, TV)}.
    samples: {"sliced_wasserstein" / "mmd2": {pair: (value, standard error)}}; the mmd2 of
    "peer_vs_replay" is paired (row i of both outputs from the same start and noise). The
    sliced Wasserstein's standard error is over its random projections only (x and y held
    fixed: 0 up to rounding in d = 1), not the sampling error of the outputs; the mmd2's
    covers the samples.
    """

    peer: str
    replay: str
    process: dict
    grid: np.ndarray
    n: int
    rtol: float
    kl_tolerance: float
    steps_peer: int | None
    steps_replay: int
    deviation: np.ndarray | None
    final_deviation: float
    first_divergence: int | None
    laws: dict | None
    samples: dict
    notes: list = field(default_factory=list)

    @property
    def max_deviation(self):
        devs = [self.final_deviation] + ([] if self.deviation is None else list(self.deviation))
        return float(max(devs))

    @property
    def kl(self):
        """KL(peer output || replay output), exact for affine peers, or None."""
        return None if self.laws is None else self.laws["peer_vs_replay"]["kl"]

    @property
    def matches(self):
        if self.steps_peer is not None and self.steps_peer != self.steps_replay:
            return False
        if self.first_divergence is not None or self.final_deviation > self.rtol * max(self.steps_replay, 1):
            return False
        if self.laws is not None and self.laws["method"] == "exact" and self.kl > self.kl_tolerance:
            return False
        return True

    def text(self):
        """The verdict on one screen."""
        head = f"peer {self.peer} vs replay {self.replay} on {self.process['name']}, {self.grid.size} grid times " \
               f"[{self.grid[0]:.4g} .. {self.grid[-1]:.4g}], n = {self.n}"
        if self.matches:
            kl = "" if self.kl is None else f", KL {self.kl:.2g}" + (
                "" if self.laws["method"] == "exact" else " (Gaussians fitted to samples: not exact)")
            return (f"MATCH: {head}: largest deviation {self.max_deviation:.2g} within rounding ({self.rtol:.2g} "
                    f"per step){kl}")
        lines = [f"DISCREPANCY: {head}"]
        if self.steps_peer is not None and self.steps_peer != self.steps_replay:
            lines.append(f"  steps: the peer took {self.steps_peer}, the replay {self.steps_replay}")
        if self.first_divergence is not None:
            k = self.first_divergence
            t = f" (from t = {self.grid[k]:.6g})" if k < self.grid.size else ""
            if k + 1 < self.deviation.size:
                lines.append(f"  first diverging step: {k}{t}, relative deviation {self.deviation[k + 1]:.3g} "
                             f"> rounding {self.rtol * (k + 1):.2g} ({self.rtol:.2g} per step)")
            else:
                lines.append(f"  first diverging step: {k}{t}, taken by only one of the two (the states before "
                             "agree to rounding)")
        elif self.deviation is None:
            lines.append("  per-step deviation: not available (the peer returned only its output)")
        lines.append(f"  largest relative deviation {self.max_deviation:.3g}; final outputs {self.final_deviation:.3g}")
        if self.laws is not None:
            fitted = self.laws.get("fitted", ["peer"])
            how = "exact" if self.laws["method"] == "exact" else (
                f"Monte Carlo: the Gaussian fitted to the {' and the '.join(fitted)}'s samples"
                + ("" if len(fitted) == 2 else f", the {'replay' if fitted == ['peer'] else 'peer'}'s law exact"))
            lines.append(f"  output laws on the Gaussian target ({how}):")
            for key, name in (("peer_vs_replay", "peer   || replay"), ("peer_vs_target", "peer   || target"),
                              ("replay_vs_target", "replay || target")):
                d = self.laws[key]
                tv = "" if d["tv"] is None else f", TV {d['tv']:.3g}" + (f" ± {d['tv_se']:.1g}" if d["tv_se"] else "")
                lines.append(f"    KL({name}) = {d['kl']:.4g}{tv}")
        for metric, pairs in self.samples.items():
            parts = [f"{pair} {v:.3g} ± {se:.1g}" for pair, (v, se) in pairs.items()]
            # the sliced Wasserstein's ± is over its random directions, not the samples (0 in d = 1: it
            # read "peer_vs_target 0.189 ± 1e-18" for two samples of 50), as sample_report labels it
            label = " (± over the random projections only)" if metric == "sliced_wasserstein" else ""
            lines.append(f"  {metric}{label}: " + "; ".join(parts))
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)

    def to_dict(self, keep_non_finite=False):
        """Floats and lists; non-finite numbers as None, except in the laws' "mean" and "cov",
        which keep an inf or NaN of a law that overflowed (e.g. a peer's N(0, 1e400 I)) for
        sgm_ref.evaluation.json_ready to name (to_json does). keep_non_finite=True keeps
        every inf and NaN (the KL of a broken peer's law, "counted as infinitely far"), so
        that json_ready names each one; None is then only a figure not computed."""
        f = (lambda v: None if v is None else float(v)) if keep_non_finite else _f

        def law(pair):
            return None if pair is None else {"mean": np.asarray(pair[0]).tolist(), "cov": np.asarray(pair[1]).tolist()}

        laws = None
        if self.laws is not None:
            laws = {k: (law(v) if k in ("peer", "replay", "target") else
                        ({kk: f(vv) for kk, vv in v.items()} if isinstance(v, dict) else v))
                    for k, v in self.laws.items()}
        return {"matches": self.matches, "peer": self.peer, "replay": self.replay, "process": self.process,
                "grid": self.grid.tolist(), "n": self.n, "rtol": self.rtol, "kl_tolerance": self.kl_tolerance,
                "steps_peer": self.steps_peer, "steps_replay": self.steps_replay,
                "deviation": None if self.deviation is None else [f(v) for v in self.deviation],
                "max_deviation": f(self.max_deviation), "final_deviation": f(self.final_deviation),
                "first_divergence": self.first_divergence, "laws": laws,
                "samples": {m: {p: [f(v), f(se)] for p, (v, se) in pairs.items()}
                            for m, pairs in self.samples.items()},
                "notes": list(self.notes)}

    def to_json(self):
        """to_dict as strict JSON: a non-finite number is null, and "non_finite" maps its JSON
        pointer to "inf", "-inf" or "nan" (json_ready; an overflowing law gave "Infinity",
        and the infinite KL of a broken peer was a null that "non_finite" did not name)."""
        from .evaluation import json_ready
        return json.dumps(json_ready(self.to_dict(keep_non_finite=True)), indent=1, allow_nan=False)


# -- the comparison -----------------------------------------------------------------------


def _first_divergence(deviation, rtol, steps_differ):
    """The first step k whose result, state k + 1, deviates by more than rtol (k + 1), or None.

    Rounding accumulates over the steps: state k may be off by rtol per step taken. State 0
    (the start) is not a step's result and does not hide a later divergence: a peer whose
    start differs is noted apart. When the step counts differ and every shared state
    agrees, the first step only one of the two takes (len(deviation) - 1)."""
    k = np.arange(1, deviation.size)
    over = np.flatnonzero(deviation[1:] > rtol * k)
    if over.size:
        return int(over[0])
    return deviation.size - 1 if steps_differ else None


def _relative(a, b):
    scale = np.max(np.abs(b))
    diff = np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)))
    return float(diff / scale) if scale > 0 else float(diff)


def _fitted(y):
    return y.mean(axis=0), np.atleast_2d(np.cov(y, rowvar=False))


def compare_sampler(peer, replay, process, grid, target, n, rng, *, noise=None, replay_options=None, kind=None,
                    rtol=None, kl_tolerance=None, name=None, sample_distances=True):
    """Run a peer's sampler and a reference replay on the same target, grid, start and noise.

    Parameters
    ----------
    peer : callable
        loop(score, grid, x, noises) -> (n, d) or trajectory (K + 1, n, d), or
        step(x, k, grid, score, noise_k) -> (n, d); see the module docstring.
    replay : str or callable
        A name of sgm_ref.replays.REPLAYS, or a function with the replays' signature.
    process : a process of sgm_ref.processes
    grid : array_like, shape (K + 1,)
        Decreasing times from T; the replay takes K steps on it.
    target : (mean (d,), cov (d, d)), or a target of sgm_ref.targets
        A Gaussian (pair, or one-component GaussianMixture) also gets the exact laws.
    n : int >= 2
        Start points, drawn from the prior: N(0, I) for variance-preserving processes,
        N(0, sigma_T^2 I) otherwise (replay_output_gaussian's default start law).
    rng : numpy.random.Generator
        Start points, noise (unless given), target samples, sliced-Wasserstein directions.
    noise : array_like, shape (J, n, d), optional
        The standard normal draws; the replay takes the first ones it needs, the peer
        those it asks for (asking past J is an error). A step function also gets a draw
        the replay does not use at each step where the replay draws none (the module
        docstring): DDPM's noiseless last step needs one draw more than the replay takes.
    replay_options : dict, optional
        Keyword options of the replay (e.g. {"step_size": 0.1}, {"eta": 1.0}).
    kind : {"loop", "step"}, optional
        The peer's form; by default read from its number of required arguments (4 or 5).
    rtol : float, optional
        Rounding allowance per step of the relative deviation (state k may deviate by
        k rtol); default 64 eps of the peer's output dtype (a step function's: its last
        step's result; 1.4e-14 for float64, 7.6e-6 for float32), and not below float64's
        for a wider dtype (longdouble: the replay and the deviations are float64, and a
        correct peer computing in extended precision deviated by the replay's own rounding,
        2e-16, against 6.9e-18). It also loosens the check
        that the peer is affine, for its exact law: to max(1e-8, K rtol) over K steps
        (replay_output_gaussian's affine_rtol). A peer that computes in float32 but returns
        float64 needs rtol of float32's rounding (64 * 2**-23) for both; when rtol is not
        given, a float64 peer that does not match at float64's allowance but would at
        float32's gets a note saying so.
    kl_tolerance : float, optional
        Largest exact KL(peer || replay) that still matches; default rtol.
    name : str, optional
        The peer's name in the report (default its __name__).
    sample_distances : bool
        Compute the sample distances (O(n^2) for the MMD): sliced Wasserstein-2 and MMD^2
        (median-heuristic bandwidth) of the peer's output against the replay's and of
        each against n target samples; the peer-replay MMD^2 is the paired statistic
        (sgm_ref.metrics.mmd(paired=True); left out, with a note, at n = 2), the others
        the independent one. The sliced Wasserstein's standard error covers its random
        projections only, not the samples' (SamplerComparison).

    Returns
    -------
    SamplerComparison

    Raises
    ------
    ValueError
        Bad process, grid, target, n (or one whose paths do not fit in memory), rng, noise,
        kind, replay_options, rtol, kl_tolerance, name or sample_distances; a peer whose
        output has the wrong shape, is not floating point or not finite. The peer's own
        exceptions pass through unchanged.
    """
    process = check_process(process, variance_preserving=False)
    rng = check_rng(rng)
    n = check_count(n, "n", minimum=2)
    replay_name, replay_fn = _replay(replay)
    if replay_options is not None and not isinstance(replay_options, Mapping):
        raise ValueError(f"replay_options must be a dict of the replay's keyword options (e.g. {{'eta': 1.0}}), got "
                         f"{type(replay_options).__name__}")
    if not isinstance(sample_distances, (bool, np.bool_)):
        raise ValueError(f"sample_distances must be True or False, got {sample_distances!r}")
    if name is not None and not isinstance(name, str):
        raise ValueError(f"name must be a string (the peer's name in the report), got {type(name).__name__}")
    options = dict(replay_options or {})
    _check_replay_options(replay_name, replay_fn, options)
    kind = _peer_kind(peer, kind)
    if rtol is not None:  # refused before the work
        rtol = check_real(rtol, "rtol", low=0.0, low_open=True)
    if kl_tolerance is not None:
        kl_tolerance = check_real(kl_tolerance, "kl_tolerance", low=0.0)
    rtol_given, kl_given = rtol, kl_tolerance
    d, score, sample, gauss = _target_parts(target, process)
    grid = check_replay_grid(grid, process)
    # the two paths and the noise, K + 1 states of (n, d) each: n = 2**62 gave NumPy's "array is
    # too big", n = 2**40 a MemoryError, neither naming n
    check_fits("n", n, 3 * grid.size * d * 8, "the two paths and their noise")
    scale = 1.0 if isinstance(process, VariancePreserving) else float(process.sigma(grid[0]))
    x = scale * rng.standard_normal((n, d))
    stream = _Stream(None if noise is not None else rng, noise, x.shape, np.float64)

    out_r, states_r = replay_fn(score, process, grid, x, None, True, noise=stream, **options)
    steps_replay = states_r.shape[0] - 1
    draw_of_step, notes = None, []
    if kind == "step":
        try:
            # a batch's paths hold up to 2**21 numbers (16 MiB), or max(n, 64) rows where that is more; in
            # batches of max(n, 64) rows the probe ran the replay K / n times (K = 1000, n = 10: compare_sampler
            # took 2.6 s, 1.0 s without the probe; now 1.2 s)
            rows = max(n, 64, min(stream.used, _PROBE_ELEMENTS // (grid.size * d)))
            draw_of_step = _step_draws(replay_fn, options, score, process, grid, d, stream.used, rows)
        except ValueError as exc:  # a custom replay refusing the probe's zero start
            notes.append(f"could not tell which draw each step of the replay takes ({exc}): the step function got "
                         "noises(k) at step k")
        # a step where the replay draws none gets a draw it does not use, past a given noise's last one
        # for DDPM's noiseless last step: "noise has 9 draws but draw 9 was asked for", though neither
        # side had asked for it (the replay takes 9)
        given = draw_of_step if draw_of_step is not None else range(grid.size - 1)
        beyond = [k for k, j in enumerate(given) if noise is not None and j >= len(stream.draws)]
        if beyond:
            need = max(given) + 1
            why = ("a step function gets noises(k) at step k" if draw_of_step is None else
                   "a step function also gets a draw the replay does not use at each step where the replay draws none")
            steps = ", ".join(map(str, beyond[:5])) + (f", ... ({len(beyond)} steps)" if len(beyond) > 5 else "")
            raise ValueError(f"noise has {len(stream.draws)} draws, the replay takes {stream.used}; {why} (step "
                             f"{steps}): pass {need} draws, noise of shape ({need}, {n}, {d})")
    states_p, out_p = _run_peer(peer, kind, score, grid, x, stream, draw_of_step)
    steps_peer = None if states_p is None else states_p.shape[0] - 1

    if rtol is None:
        # float64's at the least: the replay and the deviations (_relative) are float64, so a peer
        # returning longdouble was held to 64 eps(longdouble) = 6.9e-18, below the replay's own
        # rounding (a correct extended-precision loop: DISCREPANCY at step 0, deviation 2.2e-16)
        rtol = ROUNDING_FACTOR * max(float(np.finfo(out_p.dtype).eps), float(np.finfo(np.float64).eps))
    kl_tolerance = rtol if kl_tolerance is None else kl_tolerance
    deviation, first = None, None
    if states_p is not None:
        K = min(states_p.shape[0], states_r.shape[0])
        deviation = np.array([_relative(states_p[k], states_r[k]) for k in range(K)])
        first = _first_divergence(deviation, rtol, steps_peer != steps_replay)
        if deviation[0] > rtol:
            notes.append("the peer's trajectory does not start at x (its state 0 differs)")
            if steps_peer == steps_replay - 1 and steps_peer >= 1 and np.all(
                    [_relative(states_p[k], states_r[k + 1]) <= rtol * (k + 1) for k in range(steps_peer + 1)]):
                notes.append(f"its {steps_peer + 1} states are the replay's states 1 to {steps_replay}: the "
                             f"trajectory omits the start state x (give {steps_replay + 1} states, x first)")
    else:
        notes.append("the peer returned only its output: give its trajectory (or a step function) for the per-step "
                     "deviation")
    final = _relative(out_p, out_r)

    laws = None
    if gauss is not None:
        # a peer computing in float32 is affine only to its rounding: allow what the match allows
        affine_rtol = max(1e-8, rtol * max(steps_replay, 1))
        laws = _laws(peer, kind, replay_fn, options, gauss, process, grid, out_p, out_r, rng, notes, affine_rtol,
                     draw_of_step)

    samples = {}
    if sample_distances:
        y_target = sample(n, rng)
        pairs = {"peer_vs_replay": (out_p, out_r), "peer_vs_target": (out_p, y_target),
                 "replay_vs_target": (out_r, y_target)}
        # the peer's and the replay's row i come from the same start point and noise: their MMD^2
        # is the paired statistic (the independent one's cross terms i = j biased it: -8.8e-3
        # for identical outputs at n = 100, -7.1e-3 for a true 1.5e-3)
        for metric, distance in (("sliced_wasserstein", lambda a, b, paired: sliced_wasserstein(a, b, rng)),
                                 ("mmd2", lambda a, b, paired: mmd(a, b, paired=paired)[:2])):
            # the paired MMD^2 takes n >= 3 pairs: at n = 2 (allowed) it alone is left out, noted; its
            # refusal dropped the two MMD^2s against the target as well (computed before it was paired)
            skip = ("peer_vs_replay",) if metric == "mmd2" and n < 3 else ()
            if skip:
                notes.append("mmd2: peer_vs_replay not computed (the paired statistic of the outputs, which share "
                             f"their start points and noise, needs n >= 3 pairs, got n = {n})")
            try:
                samples[metric] = {k: tuple(distance(np.asarray(a, dtype=np.float64), b, k == "peer_vs_replay"))
                                   for k, (a, b) in pairs.items() if k not in skip}
            except ValueError as exc:  # outputs out of the metric's range: the peer's fault, not the user's
                notes.append(f"{metric}: not computed ({exc})")
    result = SamplerComparison(peer=name or getattr(peer, "__name__", type(peer).__name__), replay=replay_name,
                               process=process.to_dict(), grid=grid, n=n, rtol=rtol, kl_tolerance=kl_tolerance,
                               steps_peer=steps_peer, steps_replay=steps_replay, deviation=deviation,
                               final_deviation=final, first_divergence=first, laws=laws, samples=samples,
                               notes=notes)
    if rtol_given is None and out_p.dtype == np.float64 and not result.matches:
        # a peer returning float64 may still compute in float32 (diffusers keeps its schedules
        # in float32): say so when float32's allowance would have matched
        rtol32 = ROUNDING_FACTOR * float(np.finfo(np.float32).eps)
        as32 = dataclasses.replace(result, rtol=rtol32, kl_tolerance=rtol32 if kl_given is None else kl_tolerance)
        if first is not None:  # the first step above float32's allowance, if any
            as32 = dataclasses.replace(as32, first_divergence=_first_divergence(deviation, rtol32,
                                                                                steps_peer != steps_replay))
        if as32.matches:
            notes.append(f"every deviation is within float32's rounding ({rtol32:.2g} per step): a peer that computes "
                         f"in float32 and returns float64 (diffusers' schedulers keep their constants in float32) "
                         f"matches at that precision; pass rtol={rtol32:.2g} (--rtol {rtol32:.2g})")
    return result


def _laws(peer, kind, replay_fn, options, gauss, process, grid, out_p, out_r, rng, notes, affine_rtol, draw_of_step):
    m, S = gauss
    fitted = []  # the sides whose law is the Gaussian fitted to their samples
    try:
        law_r = replay_output_gaussian(replay_fn, m, S, process, grid, **options)
    except ValueError as exc:
        notes.append(f"the replay's law is fitted to its samples: {exc}")
        law_r = _fitted(np.asarray(out_r, dtype=np.float64))
        fitted.append("replay")
    try:
        law_p = replay_output_gaussian(_as_replay(peer, kind, draw_of_step), m, S, process, grid,
                                       affine_rtol=affine_rtol)
    except Exception as exc:  # the peer may refuse probe inputs in any way: fall back, and say why
        notes.append(f"the peer's law is fitted to its samples (probe run failed: {type(exc).__name__}: {exc})")
        law_p = _fitted(np.asarray(out_p, dtype=np.float64))
        fitted.insert(0, "peer")
    method = "monte_carlo" if fitted else "exact"
    law_t = (m, S)

    def distances(law0, law1, which):
        # a broken peer (all zeros: a singular covariance; huge outputs) is a discrepancy, not bad usage
        try:
            return law_distances(law0, law1, rng)
        except ValueError as exc:
            notes.append(f"{which}: no distance between the laws ({exc}); counted as infinitely far")
            return {"kl": math.inf, "kl_reverse": math.inf, "tv": None, "tv_se": None}

    return {"method": method, "fitted": fitted, "peer": law_p, "replay": law_r, "target": law_t,
            "peer_vs_replay": distances(law_p, law_r, "peer || replay"),
            "peer_vs_target": distances(law_p, law_t, "peer || target"),
            "replay_vs_target": distances(law_r, law_t, "replay || target")}


# -- specs for the command line ---------------------------------------------------------------


def _parameters(text, what):
    out = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what}: write parameters as key=value, got {item!r}")
        if key.strip() in out:  # the last one silently won
            raise ValueError(f"{what}: {key.strip()} is given twice")
        out[key.strip()] = value.strip()
    return out


def _number(text, key, what):
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{what}: parameter {key} must be a number, got {text!r}") from None


def process_from_spec(spec):
    """A process from a spec string: sgm_ref.processes.from_spec (ou, vp:beta_min=0.1,beta_max=20,
    ddpm:scaled_linear, ve:sigma_min=0.01,sigma_max=50, edm, flow, ...), one parser for every command."""
    from .processes import from_spec

    return from_spec(spec)


def target_from_spec(spec):
    """A target from a spec: gaussian:d=2,mean=1,std=0.5 (N(mean 1, std^2 I) in d dimensions,
    a one-component GaussianMixture, so it gets exact laws), or any spec of
    sgm_ref.targets.spec.from_spec (ring, gmm:..., product:..., a JSON file)."""
    from .targets.spec import from_spec

    if isinstance(spec, str) and spec.split(":")[0] == "gaussian":
        what = f"target spec {spec!r}"
        params = _parameters(spec.partition(":")[2], what)
        unknown = set(params) - {"d", "mean", "std"}
        if unknown:
            raise ValueError(f"{what}: gaussian takes d, mean, std; got {sorted(unknown)}")
        try:
            d = int(params.get("d", "1"))
        except ValueError:
            raise ValueError(f"{what}: d must be an integer") from None
        if d < 1:
            raise ValueError(f"{what}: d must be >= 1")
        mean = _number(params.get("mean", "0"), "mean", what)
        std = _number(params.get("std", "1"), "std", what)
        if not (math.isfinite(mean) and math.isfinite(std) and std > 0):
            raise ValueError(f"{what}: mean must be finite and std > 0")
        # std^2 is the covariance's eigenvalue, which GaussianMixture keeps in [1e-300, 1e300]:
        # std = 1e200 was Python's OverflowError "(34, 'Numerical result out of range')", and
        # std = 1e-200 "covariances[0] is not positive definite", neither naming std
        if not 1e-150 <= std <= 1e150:
            raise ValueError(f"{what}: std must lie in [1e-150, 1e150] (std^2 is the covariance's eigenvalue, kept "
                             f"in [1e-300, 1e300]), got {std!r}")
        # the covariance and its factors are (d, d): d = 200000 was a MemoryError naming no parameter
        try:
            with fits_in_memory("d", d, 4 * d * d):
                return GaussianMixture([1.0], [np.full(d, mean)], [std**2 * np.eye(d)])
        except ValueError as exc:
            raise ValueError(f"{what}: {exc}") from None
    return from_spec(spec)


# -- per-time tolerances of a score audit (`sgm-ref audit --max-relative-error`) --------------


@dataclass(frozen=True)
class ScoreTolerance:
    """The largest relative score error allowed at each time: a step function of t.

    The relative score error at a profile time t is

        rel(t) = E_{p_t}|s(x, t) - grad log p_t(x)|^2 / E_{p_t}|grad log p_t(x)|^2,

    score_report's "relative". With knots T_1 < ... < T_m and values V_1..V_m the
    tolerance at t is V_i for T_i <= t < T_{i+1} (V_m from T_m on, V_1 also before T_1);
    one value (T_1 = 0) applies at every t. A profile time passes when rel(t) <= tol(t)
    (the Monte-Carlo estimate itself, from a fixed seed: rerunning gives the same verdict);
    an error that overflows float64 fails.

    Parameters
    ----------
    times : tuple of float, increasing, >= 0
    values : tuple of float, >= 0, one per time

    Raises
    ------
    ValueError
        Times not finite, negative or not increasing; values not finite or negative;
        counts that differ.
    """

    times: tuple
    values: tuple
    spec: str = ""

    def __post_init__(self):
        for name in ("times", "values"):
            if np.ndim(getattr(self, name)) != 1:
                raise ValueError(f"{name} must be a sequence of numbers (one per piece), got {getattr(self, name)!r}; "
                                 "for one tolerance at every time use ScoreTolerance((0.0,), (value,))")
        times = tuple(float(check_real(t, "tolerance time", low=0.0)) for t in self.times)
        values = tuple(float(check_real(v, "tolerance", low=0.0)) for v in self.values)
        if not times or len(times) != len(values):
            raise ValueError(f"a tolerance needs one value per time, got {len(times)} times and {len(values)} values")
        if any(b <= a for a, b in zip(times, times[1:])):
            raise ValueError(f"the tolerance's times must increase, got {list(times)}")
        object.__setattr__(self, "times", times)
        object.__setattr__(self, "values", values)

    @classmethod
    def from_spec(cls, text):
        """From "VALUE" (every time) or "T1=V1,T2=V2,..." (V_i from time T_i on), e.g.
        "0.05" or "0.001=0.5,0.1=0.05" (50 % below t = 0.1, 5 % from there on)."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"a tolerance spec is VALUE or T1=V1,T2=V2,..., got {text!r}")
        times, values = [], []
        items = [item.strip() for item in text.split(",")]
        for item in items:
            t, sep, v = item.partition("=")
            if not sep and len(items) == 1:
                t, v = "0", t
            elif not sep:
                raise ValueError(f"tolerance spec {text!r}: write each piece as T=VALUE (VALUE from time T on), "
                                 f"got {item!r}")
            try:
                times.append(float(t))
                values.append(float(v))
            except ValueError:
                raise ValueError(f"tolerance spec {text!r}: {item!r} is not T=VALUE with two numbers") from None
        try:
            return cls(tuple(times), tuple(values), text.strip())
        except ValueError as e:
            raise ValueError(f"tolerance spec {text!r}: {e}") from None

    def at(self, t):
        """tol(t) for an array of times."""
        t = np.asarray(t, dtype=np.float64)
        i = np.searchsorted(np.asarray(self.times), t, side="right") - 1
        return np.asarray(self.values)[np.maximum(i, 0)]

    def check(self, score_error):
        """The verdict on a score_report()["score_error"] (its "t" and "relative").

        Returns
        -------
        dict: "spec", "t", "relative", "allowed" (lists; a relative error that overflowed
        is inf), "exceeded" (the times over their tolerance) and "passed" (bool).
        """
        t = np.asarray(score_error["t"], dtype=np.float64)
        rel = np.array([np.inf if v is None else v for v in score_error["relative"]], dtype=np.float64)
        allowed = self.at(t)
        over = ~(rel <= allowed)  # NaN and inf fail
        return {"spec": self.spec or ",".join(f"{a!r}={b!r}" for a, b in zip(self.times, self.values)),
                "quantity": "E|s - grad log p_t|^2 / E|grad log p_t|^2 at each profile time",
                # inf and NaN kept: evaluation.json_ready writes them as null and lists them in
                # "non_finite", as every other number of the report (None here was never listed)
                "t": t.tolist(), "relative": rel.tolist(), "allowed": allowed.tolist(),
                "exceeded": t[over].tolist(), "passed": not bool(np.any(over))}
