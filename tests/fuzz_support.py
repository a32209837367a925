"""Plumbing of the fuzz target tests/test_fuzz.py: the tally, the outcome checks, the
value strategies and the in-process command runner. Nothing here is a test.

Outcome kinds (the issue's categories; a failure of any kind is a finding):

    traceback           a library call raised something other than ValueError, or a
                        command line ended with a traceback / an exit status not 0 or 2
    stderr              a refused command line whose stderr is not exactly one line
                        "sgm-ref: error: ..."
    message             a ValueError whose text spans lines, leaks a NumPy repr
                        (np.float64(...)) or nests another error's text, or names
                        nothing the caller passed
    silent non-finite   a call or a command that succeeded with inf or NaN in its result,
                        its printed report or the files it wrote
    misreading          input accepted that must be refused (bools as numbers, an
                        ambiguous covariance shape, a float step count, a float16 sample,
                        an abbreviated option...) or read differently from what was given
    side effect         an input array changed by a call that does not document it
    wrong exit          a command that exited 0 without doing its work

In strict mode (pytest) the first failure raises AssertionError, so hypothesis shrinks
it; in collect mode (the long run) failures are counted and the run goes on.
"""

import contextlib
import dataclasses
import io
import json
import math
import os
import re
import subprocess
import sys
import traceback
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

SCRIPT = Path(sys.executable).with_name("sgm-ref")

KINDS = ("traceback", "stderr", "message", "silent non-finite", "misreading", "side effect", "wrong exit")

TALLY = Counter()  # "command lines", "library calls", and one count per outcome kind
FINDINGS = {}  # (kind, where, signature) -> [count, shortest reproducer]
STATE = {"strict": True}


class UserError(TypeError):
    """Raised by a user's callback in the tests (a score function): the library may let it through."""


class Refused:
    """What a library call returns to the test when it raised a ValueError."""

    def __init__(self, exc):
        self.exc = exc

    def __bool__(self):
        return False


def fail(kind, where, signature, reproducer):
    """Count one failure (and raise it, in strict mode)."""
    assert kind in KINDS, kind
    TALLY[kind] += 1
    key = (kind, where, _normalise(signature))
    entry = FINDINGS.setdefault(key, [0, reproducer])
    entry[0] += 1
    if len(reproducer) < len(entry[1]):
        entry[1] = reproducer
    if STATE["strict"]:
        raise AssertionError(f"{kind} in {where}: {signature}\n    reproducer: {reproducer}")


def _normalise(text):
    """A failure's signature without the numbers and temporary paths that vary between examples."""
    text = re.sub(r"/tmp/[^\s'\":,)]*", "<path>", str(text))
    text = re.sub(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", "#", text)
    text = re.sub(r"np\.(float|int|uint)#", r"np.\1", text)
    return text[:150]


def summary():
    lines = ["", "=== sgm_ref fuzz summary ===",
             f"command lines run: {TALLY['command lines']} ({TALLY['subprocess command lines']} through the "
             f"installed script)", f"library calls made: {TALLY['library calls']}"]
    for kind in KINDS:
        lines.append(f"{kind + ':':20s}{TALLY[kind]}")
    if FINDINGS:
        lines.append(f"distinct failures: {len(FINDINGS)}")
        for (kind, where, sig), (count, repro) in sorted(FINDINGS.items()):
            lines.append(f"- [{kind}] {where} (x{count}): {sig}\n      {repro}")
    return "\n".join(lines)


# -- reproducers ----------------------------------------------------------------------

def short(value):
    """A short, mostly evaluable repr for a reproducer line."""
    if isinstance(value, np.ndarray):
        if value.size <= 6 and value.dtype.kind in "biufc":
            return f"np.array({value.tolist()!r}, dtype={value.dtype.name})"
        if value.dtype.kind in "fc" and value.size:
            with np.errstate(all="ignore"):
                finite = value[np.isfinite(value)]
            extremes = (f", |max| {np.max(np.abs(finite)):.3g}" if finite.size else "") + (
                f", {value.size - finite.size} non-finite" if finite.size < value.size else "")
        else:
            extremes = ""
        return f"<array shape={value.shape} dtype={value.dtype.name}{extremes}>"
    if isinstance(value, np.random.Generator):
        return "rng"
    if isinstance(value, (list, tuple)) and len(repr(value)) > 200:
        return f"<{type(value).__name__} of {len(value)}>"
    if callable(value) and hasattr(value, "__name__"):
        return value.__name__
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def call_text(name, args, kwargs):
    parts = [short(a) for a in args] + [f"{k}={short(v)}" for k, v in kwargs.items()]
    return f"{name}({', '.join(parts)})"


# -- non-finite values in results -----------------------------------------------------------

def nonfinite(obj, path="result", depth=0):
    """Path of the first inf/NaN inside a result (arrays, numbers, tuples, dicts, dataclasses), or None."""
    if depth > 20:
        return None
    if isinstance(obj, (bool, np.bool_, str, bytes)) or obj is None:
        return None
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "fc":
            with np.errstate(all="ignore"):
                bad = ~np.isfinite(obj)
            if np.any(bad):
                return f"{path} ({int(np.count_nonzero(bad))} of {obj.size} entries non-finite)"
        return None
    if isinstance(obj, (float, np.floating, complex, np.complexfloating)):
        return None if np.isfinite(obj) else f"{path} = {obj!r}"
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        for name, v in zip(obj._fields, obj):
            bad = nonfinite(v, f"{path}.{name}", depth + 1)
            if bad:
                return bad
        return None
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            bad = nonfinite(v, f"{path}[{i}]", depth + 1)
            if bad:
                return bad
        return None
    if isinstance(obj, dict):
        for k, v in obj.items():
            bad = nonfinite(v, f"{path}[{k!r}]", depth + 1)
            if bad:
                return bad
        return None
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            bad = nonfinite(getattr(obj, f.name), f"{path}.{f.name}", depth + 1)
            if bad:
                return bad
        return None
    # a target, a model, a process: the arrays it holds
    for attr in ("weights", "means", "covariances", "stds", "params", "beta_min", "beta_max"):
        if hasattr(obj, attr) and not callable(getattr(obj, attr)):
            bad = nonfinite(getattr(obj, attr), f"{path}.{attr}", depth + 1)
            if bad:
                return bad
    return None


# -- messages ----------------------------------------------------------------------------------

# numpy's own words, which name nothing the caller passed (issue 11, item 9)
_FOREIGN = ("Maximum allowed dimension exceeded", "array is too big", "negative dimensions are not allowed",
            "setting an array element with a sequence", "could not convert string to float",
            "operands could not be broadcast", "cannot reshape array", "too many indices",
            "invalid literal for int()", "object too deep for desired array")


def message_problem(text):
    """Why a ValueError's text is not one clear line, or None."""
    text = str(text)
    if "\n" in text.strip():
        return "spans several lines"
    if re.search(r"\bnp\.(float|int|uint|bool|str_)\w*\(", text):
        return "leaks a NumPy repr (np.float64(...))"
    if re.search(r"\b(failed|raised|error):? ValueError\b", text):
        return "nests another ValueError's message"
    for phrase in _FOREIGN:
        if phrase in text:
            return f"numpy's message {phrase!r} names no argument"
    if not text.strip():
        return "empty message"
    return None


# -- library calls -------------------------------------------------------------------------------

def lib_call(where, fn, *args, expect_name=None, **kwargs):
    """fn(*args, **kwargs), checked: finite result or ValueError with a clear message.

    Returns the result, or a falsy Refused(exc) when fn raised a ValueError. expect_name:
    names one of which the message must contain when the call is refused (the argument
    the test made bad on purpose).
    """
    TALLY["library calls"] += 1
    repro = call_text(where, args, kwargs)
    try:
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore")
            out = fn(*args, **kwargs)
    except ValueError as exc:
        problem = message_problem(exc)
        if problem:
            fail("message", where, f"{problem}: {exc}", repro)
        elif expect_name and not any(re.search(rf"(?<!\w){re.escape(n)}(?!\w)", str(exc)) for n in expect_name):
            fail("message", where, f"names none of {list(expect_name)}: {exc}", repro)
        return Refused(exc)
    except UserError as exc:  # the caller's own function failed; passing that on is right
        return Refused(exc)
    except RecursionError as exc:
        fail("traceback", where, f"RecursionError: {exc}", repro)
        return Refused(exc)
    except Exception as exc:  # noqa: BLE001 - anything but ValueError is the finding
        fail("traceback", where, f"{type(exc).__name__}: {exc}", repro)
        return Refused(exc)
    bad = nonfinite(out)
    if bad:
        fail("silent non-finite", where, bad, repro)
    return out


# -- value strategies ------------------------------------------------------------------------------

F64_MAX = float(np.finfo(np.float64).max)
EXTREME = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, 1e300, -1e300, F64_MAX, -F64_MAX, 1e154, -1e154, 1e-154, 1e-300,
           1e-320, -1e-320, 5e-324, 2.0**53, 1e8, -1e8, 1e20]
NONFINITE = [math.nan, math.inf, -math.inf]
BAD_REALS = EXTREME + NONFINITE + [True, False, "1.0", None, np.float32(3e38), 10**400, -(10**400), 1j,
                                   np.array([1.0, 2.0]), np.float16(1.0), np.longdouble(1.0), [1.0]]
# sizes that fail fast: none of them allocates (a size of 10**8 would, slowly, on a shared machine)
BAD_COUNTS = [0, -1, 2**62, 2**70, 10**20, -(2**70), True, False, 2.0, 2.5, "3", None, np.uint64(2**63),
              math.nan, np.float64(3.0), [2]]

plain = st.floats(-3.0, 3.0, allow_nan=False)
extreme_el = st.one_of(st.sampled_from(EXTREME), st.floats(allow_nan=False, allow_infinity=False),
                       st.floats(-1e3, 1e3))

HUGE_OR_TINY = [1e300, -1e300, F64_MAX, -F64_MAX, 1e154, 1e200, 1e-320, 5e-324, -1e-320]
_ARRAY_MODES = (["plain"] * 5 + ["extreme"] * 3 + ["one extreme"] * 5
                + ["nonfinite", "float32", "int", "bool", "list", "list with a bool", "wrong shape", "wrong shape",
                   "complex", "object", "float16", "longdouble", "str"])


PARTNER_MODES = ["plain"] * 8 + ["one extreme", "extreme", "float32", "int", "wrong shape"]


def draw_array(data, shape, label, dtype=np.float64, modes=_ARRAY_MODES, positive=False):
    """An array meant for an argument of the given shape; mostly right, sometimes wrong in
    one way (extreme or non-finite values, another dtype, a list, another shape)."""
    mode = data.draw(st.sampled_from(modes), label=f"{label}: mode")
    shape = tuple(shape)
    if mode == "wrong shape":
        shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3), label=f"{label}: shape")
        mode = "plain"
    base = st.floats(1e-3, 3.0) if positive else plain
    if mode == "plain":
        a = data.draw(hnp.arrays(np.float64, shape, elements=base), label=label)
        return a.astype(dtype)
    if mode == "one extreme":  # a sensible array with one entry huge or tiny (issue 11 item 10)
        a = data.draw(hnp.arrays(np.float64, shape, elements=base), label=label)
        if a.size:
            a.flat[data.draw(st.integers(0, a.size - 1), label=f"{label}: where")] = data.draw(
                st.sampled_from(HUGE_OR_TINY), label=f"{label}: which")
        return a.astype(dtype) if dtype == np.float64 else a
    if mode in ("extreme", "nonfinite"):
        a = data.draw(hnp.arrays(np.float64, shape, elements=st.one_of(base, extreme_el)), label=label)
        if mode == "nonfinite" and a.size:
            a.flat[data.draw(st.integers(0, a.size - 1), label=f"{label}: where")] = data.draw(
                st.sampled_from(NONFINITE), label=f"{label}: which")
        return a.astype(dtype) if dtype == np.float64 else a
    if mode == "float32":
        el = st.one_of(st.floats(-3, 3, width=32), st.sampled_from([3e38, -3e38, 1e-45, 1e30, 0.0]))
        return data.draw(hnp.arrays(np.float32, shape, elements=el), label=label)
    if mode == "int":
        return data.draw(hnp.arrays(np.int64, shape, elements=st.integers(-3, 3) if not positive else
                                    st.integers(1, 3)), label=label)
    if mode == "bool":
        return data.draw(hnp.arrays(np.bool_, shape), label=label)
    if mode == "list":
        return data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).tolist()
    if mode == "list with a bool":  # numpy reads [True, 0.5] as [1.0, 0.5] (issue 11 item 3)
        a = data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).astype(object)
        if a.size:
            a.flat[data.draw(st.integers(0, a.size - 1), label=f"{label}: where")] = True
        return a.tolist()
    if mode == "complex":
        return data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).astype(np.complex128)
    if mode == "object":
        return data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).astype(object)
    if mode == "float16":
        return data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).astype(np.float16)
    if mode == "longdouble":
        return data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).astype(np.longdouble)
    if mode == "str":
        return data.draw(hnp.arrays(np.float64, shape, elements=base), label=label).astype(str)
    raise AssertionError(mode)


def draw_real(data, label, good, bad_p=3):
    """A scalar: from `good` most of the time, else huge or tiny, else one of BAD_REALS."""
    return data.draw(st.one_of(*([good] * bad_p), st.sampled_from(HUGE_OR_TINY), st.sampled_from(BAD_REALS)),
                     label=label)


def draw_count(data, label, good=st.integers(1, 4), bad_p=3):
    return data.draw(st.one_of(*([good] * bad_p), st.sampled_from(BAD_COUNTS)), label=label)


def is_good_real(value, low=None, high=None):
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, (bool, np.bool_)):
        return False
    try:
        value = float(value)
    except OverflowError:
        return False
    return math.isfinite(value) and (low is None or value >= low) and (high is None or value <= high)


def as_dtype(value, dtype):
    """A float array cast to dtype (overflow to inf allowed: that is an input too); anything else as is."""
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        with np.errstate(all="ignore"):
            return value.astype(dtype)
    return value


def same(a, b):
    """a and b equal, NaN equal to NaN, for arrays of any dtype."""
    try:
        return np.array_equal(a, b, equal_nan=np.asarray(a).dtype.kind in "fc")
    except (TypeError, ValueError):
        return np.array_equal(a, b)


# -- the command line, in-process and in a subprocess ------------------------------------------------

class CliResult:
    def __init__(self, code, out, err):
        self.code, self.out, self.err = code, out, err

    def __repr__(self):
        return f"CliResult(code={self.code}, err={self.err[-300:]!r})"


def run_inprocess(argv, cwd=None):
    """sgm_ref.cli.main(argv) as the installed script would run it: the exit status of
    sys.exit(main()), stdout and stderr captured; an escaping exception is a traceback on
    stderr and status 1, as the interpreter would print it."""
    from sgm_ref.cli import main

    out, err = io.StringIO(), io.StringIO()
    old_cwd = os.getcwd()
    old_path = list(sys.path)
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            # the filters of a fresh interpreter: each warning once per location, and
            # ResourceWarning, ImportWarning and (Pending)DeprecationWarning not shown
            warnings.resetwarnings()
            warnings.simplefilter("default")
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.filterwarnings("ignore", category=category)
            try:
                code = main(list(argv))
            except SystemExit as exc:
                code = exc.code
                if code is None:
                    code = 0
                elif not isinstance(code, int):
                    print(code, file=sys.stderr)
                    code = 1
            except BaseException:  # noqa: BLE001 - what the interpreter prints for an escaping exception
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(old_cwd)
        sys.path[:] = old_path  # audit puts the working folder on sys.path
    return CliResult(code, out.getvalue(), err.getvalue())


def run_script(argv, cwd=None):
    TALLY["subprocess command lines"] += 1
    r = subprocess.run([str(SCRIPT), *map(str, argv)], capture_output=True, text=True, cwd=cwd, timeout=300)
    return CliResult(r.returncode, r.stdout, r.stderr)


class _NonFiniteJSON(Exception):
    pass


def _reject_constant(name):
    raise _NonFiniteJSON(name)


def strict_json(path):
    """(object, problem): the file parsed as strict JSON (no NaN/Infinity), or why it is not."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f, parse_constant=_reject_constant), None
    except FileNotFoundError:
        return None, "missing"
    except _NonFiniteJSON as exc:
        return None, f"contains {exc}"
    except (ValueError, RecursionError) as exc:
        return None, f"not JSON ({type(exc).__name__})"


# a NaN printed anywhere, or an inf printed as a value with an uncertainty ("inf ± nan"):
# a clear statement that a result overflowed may name inf, a number column may not
_NONFINITE_TEXT = re.compile(r"(?<![\w.])[-+]?nan(?![\w])|(?<![\w.])[-+]?inf(inity)?\s*±|±\s*[-+]?inf(?![\w])",
                             re.IGNORECASE)


def nonfinite_text(text):
    m = _NONFINITE_TEXT.search(text)
    return None if m is None else text[max(0, m.start() - 60):m.end() + 20].replace("\n", " | ")
