"""Tests written by mutation testing of sgm_ref/_validation.py, sgm_ref/_json.py, sgm_ref/_lock.py and
the header checks of sgm_ref/io.py: each pins a bound, a message or a case that the module's own tests
(tests/test_validation.py, tests/test_io.py, the lock tests of tests/test_runs.py and tests/test_threads.py)
let a mutated line through in, named in its docstring. The references are exact: the bound itself, the
value on each side of it, and the message the docstring promises."""
import collections
import os

import numpy as np
import pytest

from sgm_ref import _validation as v
from sgm_ref._json import MAX_DEPTH, load_json


def test_check_count_accepts_its_minimum_and_refuses_one_below_and_bools():
    """Mutants survived: `n <= minimum` for `n < minimum`; the bool test dropped (True read as 1)."""
    assert v.check_count(1, "n") == 1 and v.check_count(0, "n", minimum=0) == 0
    assert v.check_count(np.uint8(5), "n", minimum=5) == 5
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got 0$"):
        v.check_count(0, "n")
    for flag in (True, np.True_):
        with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got True$"):
            v.check_count(flag, "n")


def test_check_count_shows_a_numpy_scalar_as_its_number():
    """show() gives np.float64(2.5) as 2.5 (its docstring). Mutant survived: repr(value) (NumPy 2's
    'np.float64(2.5)' in the message)."""
    with pytest.raises(ValueError, match=r"^steps must be an integer >= 1, got 2\.5$"):
        v.check_count(np.float64(2.5), "steps")


@pytest.mark.parametrize("value, kwargs, message", [
    (0.0, {"low": 0.0, "low_open": True}, r"^x must be > 0\.0, got 0\.0$"),
    (-1e-300, {"low": 0.0}, r"^x must be >= 0\.0, got -1e-300$"),
    (1.0, {"high": 1.0, "high_open": True}, r"^x must be < 1\.0, got 1\.0$"),
    (1.0 + 2**-52, {"high": 1.0}, r"^x must be <= 1\.0, got 1\.0000000000000002$"),
])
def test_check_real_bounds_open_and_closed(value, kwargs, message):
    """A closed bound takes the bound itself, an open one refuses it, and the message says which
    (> or >=). Mutants survived: low_open / high_open ignored; `value <= low` for `value < low`;
    '>' and '>=' swapped in the message."""
    with pytest.raises(ValueError, match=message):
        v.check_real(value, "x", **kwargs)
    closed = {key: val for key, val in kwargs.items() if not key.endswith("_open")}
    bound = closed.get("low", closed.get("high"))
    assert v.check_real(bound, "x", **closed) == bound
    assert v.check_real(np.nextafter(bound, 0.5), "x", **kwargs) == np.nextafter(bound, 0.5)


@pytest.mark.parametrize("value", [1, 0, np.int64(1)])
def test_check_progress_refuses_an_integer(value):
    """Only True, False or None (its docstring). Mutant survived: ints let through."""
    with pytest.raises(ValueError, match=r"^progress must be True, False or None"):
        v.check_progress(value)
    for ok in (True, False, None, np.True_):
        v.check_progress(ok)


def test_a_bool_in_a_deque_is_refused():
    """np.asarray reads a deque as a row. Mutant survived: _is_sequence only lists and tuples
    (the deque's bool was read as 1.0)."""
    assert np.asarray(collections.deque([0.5, True])).tolist() == [0.5, 1.0]
    with pytest.raises(ValueError, match=r"^w must hold numbers, got the boolean True at w\[1\]$"):
        v.check_real_array(collections.deque([0.5, True]), "w")
    with pytest.raises(ValueError, match=r"^x must hold numbers, got the boolean False at x\[0\]\[1\]$"):
        v.check_points([collections.deque([1.0, False])])


def test_check_real_array_refuses_non_finite_and_promotes_unsigned_integers():
    """Mutants survived: the finiteness test dropped; unsigned integers (kind 'u') not promoted,
    so np.uint8 [1, 2] was refused as 'must be an array of real numbers'."""
    with pytest.raises(ValueError, match=r"^w contains non-finite values \(NaN or inf\)$"):
        v.check_real_array([1.0, np.nan], "w")
    out = v.check_real_array(np.array([1, 255], np.uint8), "w")
    assert out.dtype == np.float64 and out.tolist() == [1.0, 255.0]
    points = v.check_points(np.array([[1, 2**64 - 1]], np.uint64))
    assert points.dtype == np.float64 and points.tolist() == [[1.0, 2.0**64]]


def test_check_points_width_contiguity_and_count_of_non_finite_entries():
    """Mutants survived: the d test dropped; np.ascontiguousarray dropped (a strided view was
    returned as it is, its docstring promises C-contiguous); the count of non-finite entries in the
    message replaced by 1."""
    with pytest.raises(ValueError, match=r"^x must have shape \(n, 3\), got shape \(2, 2\)$"):
        v.check_points(np.zeros((2, 2)), d=3)
    view = np.arange(24.0).reshape(4, 6)[:, ::2]
    out = v.check_points(view)
    assert out.flags.c_contiguous and np.array_equal(out, view)
    with pytest.raises(ValueError, match=r"^x contains 3 non-finite value\(s\) \(NaN or inf\)$"):
        v.check_points([[np.nan, np.inf], [1.0, -np.inf]])


def test_check_times_bounds_shape_and_dtype():
    """t in [0, T], T itself included; a (n, 1) t or one of the wrong length refused; bools refused.
    Mutants survived: `arr >= T` for `arr > T`; `ndim > 2` for `ndim > 1`; the length test dropped;
    bool arrays let through (read as 1.0 and 0.0)."""
    assert v.check_times(1.0, T=1.0) == 1.0 and v.check_times(0.0, T=1.0) == 0.0
    with pytest.raises(ValueError, match=r"^t must be <= 1\.0 \(the process's horizon T\), got max 1\.0000000000000002$"):
        v.check_times([0.5, 1.0 + 2**-52], T=1.0)
    with pytest.raises(ValueError, match=r"^t must be a scalar or have shape \(n,\), got shape \(2, 1\)$"):
        v.check_times(np.full((2, 1), 0.5))
    with pytest.raises(ValueError, match=r"^t must be a scalar or have one value per row, shape \(3,\); got shape \(2,\)$"):
        v.check_times([0.1, 0.2], n=3)
    with pytest.raises(ValueError, match=r"^t must be a real number or an array of float64, float32 or integers, got bool$"):
        v.check_times(np.array([True, False]))


def test_check_decreasing_grid_length_and_which_repeat_is_diffusers():
    """A grid needs 2 times; only a repeated *last* time > 0 is named as diffusers' sigma_min ending.
    Mutants survived: `size < 1` for `size < 2`; the `k == size - 2` test dropped (a repeat in the
    middle was called diffusers' ending)."""
    with pytest.raises(ValueError, match=r"^grid must be a 1-D array of at least 2 times, from T down to t0, got shape \(1,\)$"):
        v.check_decreasing_grid([1.0])
    with pytest.raises(ValueError, match=r"^grid must be strictly decreasing \(from T to t0\); grid\[1\] = 0\.5 <= grid\[2\] = 0\.5$"):
        v.check_decreasing_grid([1.0, 0.5, 0.5, 0.1])
    with pytest.raises(ValueError, match=r"final_sigmas_type"):
        v.check_decreasing_grid([1.0, 0.5, 0.1, 0.1])


def test_check_time_range_bounds():
    """0 < t0 < T <= process.t_max. Mutants survived: `0 <= t0`; `T > t_max + 1`."""
    from sgm_ref.processes import VPCosine

    process = VPCosine()
    with pytest.raises(ValueError, match=r"^need 0 < t0 < T, got t0=0\.0, T=1\.0$"):
        v.check_time_range(0.0, 1.0)
    assert v.check_time_range(0.1, process.t_max, process) == (0.1, process.t_max)
    T = float(np.nextafter(process.t_max, 2.0))
    with pytest.raises(ValueError, match=rf"^T must be <= {process.t_max} for VPCosine"):
        v.check_time_range(0.1, T, process)


def test_eigh_spd_symmetry_tolerance_and_d_eps_threshold():
    """Symmetric means within 1e-10 of the largest entry; positive definite means smallest eigenvalue
    > d eps times the largest (its docstring). Mutants survived: 1e-8 for 1e-10; eps for d eps."""
    v.eigh_spd(np.array([[1.0, 5e-11], [0.0, 1.0]]), "cov")
    with pytest.raises(ValueError, match=r"^cov is not symmetric \(max \|C - C\^T\| = 1e-09\)"):
        v.eigh_spd(np.array([[1.0, 1e-9], [0.0, 1.0]]), "cov")
    eps = np.finfo(np.float64).eps
    v.eigh_spd(np.diag([1.0, 1.0, 1.0, 5 * eps]), "cov")
    with pytest.raises(ValueError, match=r"^cov is not positive definite to float64 precision"):
        v.eigh_spd(np.diag([1.0, 1.0, 1.0, 2 * eps]), "cov")  # 2 eps > eps, < 4 eps


def test_oracle_output_checks_name_the_first_bad_row():
    """Mutants survived: the row index replaced by 0 in check_oracle_output and cast_oracle_output."""
    x = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match=r"^x\[1\] \(largest \|entry\| 1\) is too far"):
        v.check_oracle_output(np.array([0.0, np.inf, np.nan]), x)
    with pytest.raises(ValueError, match=r"^the divergence at x\[2\] is 1e\+300, beyond float32's range"):
        v.cast_oracle_output(np.array([1.0, 2.0, 1e300]), x, "divergence")


def test_call_score_of_the_other_float_dtype_says_to_change_the_points_dtype():
    """A float32 score on float64 points: the fix named is float32 points or a float64 score.
    Mutant survived: only float64 counted as a dtype points may have (the message then named
    just the score)."""
    x = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"use points of dtype float32 \(the dtype= argument"):
        v.call_score(lambda y, t: y.astype(np.float32), x, 0.5)


def test_check_fits_and_fits_in_memory_bounds(monkeypatch):
    """A count whose bytes equal the memory fits; one more does not, and the message names the
    largest that fits. Mutants survived: `>=` for `>` and `limit // per_unit + 1` in check_fits;
    fits_in_memory's memory test dropped."""
    monkeypatch.setattr(v, "_physical_memory", lambda: 800)
    v.check_fits("n", 100, 8)
    with pytest.raises(ValueError, match=r"^n must be at most 100 on this machine, got 101"):
        v.check_fits("n", 101, 8)
    with v.fits_in_memory("n", 100, 100):
        pass
    with pytest.raises(ValueError, match=r"^n = 101 asks for .* GiB of working arrays, more than this machine's"):
        with v.fits_in_memory("n", 101, 101):
            pass


def test_load_json_takes_a_scalar_at_the_deepest_allowed_level():
    """MAX_DEPTH counts containers, not the scalar inside the innermost one. Mutant survived:
    _depth_exceeds returning bool(level) (a number inside 64 lists counted as a 65th level; the
    tests nested only empty lists)."""
    text = "[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH
    value = load_json(text, "x")
    for _ in range(MAX_DEPTH):
        value = value[0]
    assert value == 1
    with pytest.raises(ValueError, match=rf"^x is nested more than {MAX_DEPTH} levels deep"):
        load_json("[" + text + "]", "x")


def test_load_json_reads_a_bytearray_as_utf8_only():
    """Mutant survived: bytearray left to json.loads, which takes UTF-16 (the tests' bytearray was
    UTF-8, read the same either way)."""
    with pytest.raises(ValueError, match=r"^x is not valid JSON \(not UTF-8 text"):
        load_json(bytearray('{"a": 1}'.encode("utf-16")), "x")


# -- sgm_ref/_lock.py ---------------------------------------------------------------------------

def _record(path, **fields):
    import json

    from sgm_ref import _lock

    record = {"pid": os.getpid(), "host": _lock._HOST, "command": "sgm-ref train run", "since": "noon"}
    record.update(fields)
    path.write_text(json.dumps(record))
    return record


def test_a_lock_record_of_pid_0_names_no_holder(tmp_path):
    """os.kill(0, 0) asks about this process group and succeeds. Mutant survived: `pid < 0` for
    `pid <= 0` (a record of pid 0 named a holder that is no process)."""
    from sgm_ref._lock import _holder

    _record(tmp_path / ".lock", pid=0)
    assert _holder(tmp_path / ".lock") is None
    _record(tmp_path / ".lock")
    assert _holder(tmp_path / ".lock") == f"pid {os.getpid()} (sgm-ref train run), since noon"


def test_a_holder_on_another_machine_is_named_with_it_not_looked_for_here(tmp_path):
    """Mutant survived: the host test dropped (a dead pid here, alive on the other machine, named
    no holder; the lock tests' records were all of this machine)."""
    from sgm_ref._lock import _holder

    _record(tmp_path / ".lock", pid=999_999_999, host="elsewhere.invalid")
    assert _holder(tmp_path / ".lock") == "pid 999999999 on elsewhere.invalid (sgm-ref train run), since noon"


def test_a_holder_alive_under_another_user_is_named(tmp_path, monkeypatch):
    """os.kill(pid, 0) of another user's live process raises PermissionError (the tests run as root,
    for whom it never does: simulated). Mutant survived: PermissionError read as 'gone'."""
    import errno

    from sgm_ref import _lock

    def kill(pid, sig):
        raise PermissionError(errno.EPERM, "Operation not permitted")

    _record(tmp_path / ".lock", pid=4242)
    monkeypatch.setattr(_lock.os, "kill", kill)
    assert _lock._holder(tmp_path / ".lock") == "pid 4242 (sgm-ref train run), since noon"


def test_a_record_longer_than_4096_bytes_and_a_pid_written_as_text_still_name_the_holder(tmp_path):
    """Mutants survived: _RECORD_BYTES = 4096 (a long command line's record was cut and named no
    holder); pid = record["pid"] without int() (a record's "123" met `pid <= 0` as a TypeError)."""
    from sgm_ref._lock import _holder

    command = "sgm-ref sweep " + "x" * 10_000
    _record(tmp_path / ".lock", command=command)
    assert _holder(tmp_path / ".lock") == f"pid {os.getpid()} ({command}), since noon"
    _record(tmp_path / ".lock", pid=str(os.getpid()))
    assert _holder(tmp_path / ".lock") == f"pid {os.getpid()} (sgm-ref train run), since noon"


@pytest.mark.parametrize("wait", [float("nan"), True, -1.0, "1"])
def test_folder_lock_refuses_a_wait_that_is_not_a_number_of_seconds(tmp_path, wait):
    """Mutants survived: `wait < 0` for `not wait >= 0` (NaN let through: never the deadline), the
    bool test dropped (True read as 1 second)."""
    from sgm_ref._lock import folder_lock

    with pytest.raises(ValueError, match=r"^wait must be a number of seconds >= 0, got "):
        with folder_lock(tmp_path, wait=wait):
            pass
    assert not (tmp_path / ".lock").exists()


def test_a_stale_longer_record_is_overwritten_whole(tmp_path):
    """The record of a killed holder longer than this one's: truncated before the new one is
    written. Mutant survived: ftruncate dropped (the old record's tail stayed after the new one's,
    which no longer parsed, and a refusal named no holder)."""
    import json

    from sgm_ref._lock import _holder, folder_lock

    _record(tmp_path / ".lock", pid=999_999_999, command="sgm-ref train " + "y" * 500)
    with folder_lock(tmp_path):
        record = json.loads((tmp_path / ".lock").read_text())
        assert record["pid"] == os.getpid() and _holder(tmp_path / ".lock").startswith(f"pid {os.getpid()} (")


def test_the_release_leaves_a_lock_file_that_is_no_longer_its_own(tmp_path):
    """A lock file replaced while held (removed, and made anew by the next command) is that
    command's: the release removes only its own. Mutant survived: the same-inode test dropped
    (the release removed the other command's lock file)."""
    from sgm_ref._lock import folder_lock

    with folder_lock(tmp_path):
        os.unlink(tmp_path / ".lock")
        (tmp_path / ".lock").write_text("another command's")
    assert (tmp_path / ".lock").read_text() == "another command's"


def test_an_unwritable_lock_file_that_is_a_hard_link_is_refused_and_left(tmp_path, monkeypatch):
    """A lock file this user may not write (simulated as tests/test_runs.py's _as_another_user does:
    the tests run as root) that is a hard link of another file: refused, and left as it is. Mutant
    survived: _take_over_unwritable's regular-file / link-count test dropped (the link was removed
    and the lock taken)."""
    from test_runs import _as_another_user

    from sgm_ref._lock import folder_lock

    (tmp_path / "data.txt").write_text("precious")
    os.chmod(tmp_path / "data.txt", 0o444)
    lock = tmp_path / ".lock"
    os.link(tmp_path / "data.txt", lock)
    _as_another_user(monkeypatch, lock)
    with pytest.raises(ValueError, match=r"\.lock is a hard link of another file \(2 names\)"):
        with folder_lock(tmp_path):
            pass
    assert lock.exists() and os.stat(lock).st_nlink == 2 and lock.read_text() == "precious"


# -- sgm_ref/io.py ------------------------------------------------------------------------------

def _doctored(tmp_path, change):
    """A saved model's file with its header changed by change(header) (a dict)."""
    import json

    from sgm_ref import MLP, OU, ScoreModel
    from sgm_ref.io import read_header, save

    model = ScoreModel(MLP(2, (3,), rng=0), OU())
    save(model, tmp_path / "m.npz")
    header = read_header(tmp_path / "m.npz")
    change(header)
    with open(tmp_path / "d.npz", "wb") as f:
        np.savez(f, header=np.array(json.dumps(header)), params=model.params)
    return tmp_path / "d.npz"


def test_a_header_dtype_other_than_the_networks_is_refused(tmp_path):
    """Mutant survived: load's header-dtype test dropped (a header saying float32 beside a float64
    network loaded)."""
    from sgm_ref.io import ModelFileError, load

    path = _doctored(tmp_path, lambda h: h.update(dtype="float32"))
    with pytest.raises(ModelFileError, match=r"header dtype 'float32' differs from the network's 'float64'"):
        load(path)


@pytest.mark.parametrize("widths", [[True], [0]])
def test_a_header_width_that_is_a_bool_or_zero_is_named_as_an_invalid_model(tmp_path, widths):
    """_parameter_count counts only plain integers >= 1, leaving the rest to MLP.from_config, which
    names it. Mutants survived: isinstance(n, int) for type(n) is int (True counted as 1); n >= 0
    (a width of 0 counted): both gave 'parameters have shape (13,) ... the architecture needs ...',
    of parameters that are fine."""
    from sgm_ref.io import ModelFileError, load

    def change(header):
        header["network"]["widths"] = widths

    with pytest.raises(ModelFileError, match=r"the header does not describe a valid model"):
        load(_doctored(tmp_path, change))


def test_read_error_text_of_a_bare_eof_error_says_cut_short():
    """Mutant survived: 'cut short' dropped (a member cut short was said as 'EOFError')."""
    from sgm_ref.io import read_error_text

    assert read_error_text(EOFError()) == "cut short"
    assert read_error_text(RuntimeError()) == "RuntimeError"
    assert read_error_text(KeyError("step")) == "'step' missing"
