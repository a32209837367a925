"""The shared argument checks (sgm_ref/_validation.py) on inputs the public API meets.

Each case here was mishandled before: a traceback instead of a ValueError, a valid input
refused, or a score's numbers read through an ndarray subclass's own semantics.
"""

import re

import numpy as np
import pytest

import sgm_ref
from sgm_ref._validation import call_score, check_decreasing_grid, check_real_array, check_times

X = np.array([[0.5, -1.0, 2.0], [1.5, 0.25, -3.0]])


@pytest.mark.parametrize("returned", [np.array([[1, "a", 2.0]] * 2, dtype=object), np.zeros((2, 3), dtype=object),
                                      np.full((2, 3), "1.0"), np.zeros((2, 3), dtype="datetime64[s]")],
                         ids=["object", "object-zeros", "str", "datetime"])
def test_call_score_refuses_a_non_numeric_dtype_with_a_value_error(returned):
    # before: np.isfinite raised a TypeError ("ufunc 'isfinite' not supported ...")
    message = (f"score returned dtype {returned.dtype} for points of dtype float64 at step 3; make the score "
               "return the points' dtype, float64")
    with pytest.raises(ValueError, match=re.escape(message)):
        call_score(lambda x, t: returned, X, 0.5, " at step 3")


@pytest.mark.parametrize("masked_nan", [False, True])
def test_call_score_refuses_a_masked_array(masked_nan):
    # before: np.all(np.isfinite(masked)) skipped a masked NaN, and the metrics then used
    # the masked array (the samplers alone refused it, after call_score)
    masked = np.ma.array(X.copy(), mask=np.zeros(X.shape, bool))
    if masked_nan:
        masked[0, 1] = np.nan
        masked.mask[0, 1] = True
        assert np.isnan(masked.data[0, 1]) and bool(np.all(np.isfinite(masked)))
    with pytest.raises(ValueError, match=r"^score returned a masked array at step 3; return a plain ndarray$"):
        call_score(lambda x, t: masked, X, 0.5, " at step 3")


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_call_score_returns_a_plain_array_of_a_matrix():
    # before: an np.matrix came back as one, so the callers' s**2 and s * s were matrix products
    s = call_score(lambda x, t: np.matrix(-X), X, 0.5)
    assert type(s) is np.ndarray and np.array_equal(s, -X)
    expected = np.array([0.5**2 + 1.0 + 4.0, 1.5**2 + 0.25**2 + 9.0])
    np.testing.assert_array_equal(np.sum(s**2, axis=1), expected)


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_the_metrics_read_a_matrix_score_elementwise():
    # before: score_error_integral's sum of (s - true)^2 raised numpy.linalg.LinAlgError (the
    # matrix power of a non-square (n, d) matrix)
    from sgm_ref.metrics import score_error_integral
    target, process = sgm_ref.GaussianMixture([1.0], [[0.0, 1.0]], [[1.0, 2.0]]), sgm_ref.OU()

    def off(x, t):
        return target.score(x, t, process) + 0.25  # |s - true|^2 = 2 / 16 at every point

    plain = score_error_integral(off, target, process, 0.1, 1.0, 5, np.random.default_rng(4))
    as_matrix = score_error_integral(lambda x, t: np.matrix(off(x, t)), target, process, 0.1, 1.0, 5,
                                     np.random.default_rng(4))
    assert repr(as_matrix) == repr(plain)


@pytest.mark.parametrize("dtype", [">f8", ">f4", ">i8"])
def test_big_endian_times_and_arrays_are_the_same_numbers(dtype):
    # before: '>f8' != float64, so times and grids from a file written on a big-endian
    # machine were refused ("must be ... float64, float32 or integer, got >f8"), while
    # check_points took such points
    values = np.array([3.0, 2.0, 0.5])
    swapped = values.astype(dtype)
    assert not swapped.dtype.isnative
    expected = values.astype(np.dtype(dtype).newbyteorder("=")).astype(np.float64)
    for checked in (check_times(swapped), check_real_array(swapped, "g"), check_decreasing_grid(swapped)):
        assert checked.dtype == np.float64 and checked.dtype.isnative
        np.testing.assert_array_equal(checked, expected)
    process = sgm_ref.OU()
    np.testing.assert_array_equal(process.alpha(swapped), np.exp(-expected))  # OU: alpha_t = e^{-t}


@pytest.mark.skipif(np.finfo(np.longdouble).max <= np.finfo(np.float64).max, reason="longdouble is float64 here")
def test_a_longdouble_beyond_float64_is_not_called_inf():
    from sgm_ref._validation import check_real
    big = np.longdouble(np.finfo(np.float64).max) * 4
    assert np.isfinite(big) and not np.isfinite(float(big))
    with pytest.raises(ValueError, match=r"^T must be finite in float64, got .*, beyond float64's range$"):
        check_real(big, "T")
    with pytest.raises(ValueError, match=r"^T must be finite, got inf$"):
        check_real(np.longdouble("inf"), "T")
    assert check_real(np.longdouble(0.5), "T") == 0.5


def test_eigh_spd_names_a_positive_eigenvalue_below_float64_precision():
    """diag(1, 1e-20) is positive definite, yet below d eps of its largest eigenvalue the
    rounding of its entries decides it: refused, but no longer called plainly 'not positive
    definite (smallest eigenvalue 1e-20 ...)', as metrics.gaussian_kl's cov said."""
    from sgm_ref._validation import eigh_spd
    from sgm_ref.metrics import gaussian_kl

    with pytest.raises(ValueError, match=r"^cov is not positive definite to float64 precision: its smallest "
                                         r"eigenvalue 1e-20 is below d eps = 4.44e-16 times its largest, 1 "
                                         r"\(condition number 1e\+20\)"):
        eigh_spd(np.diag([1.0, 1e-20]), "cov")
    with pytest.raises(ValueError, match=r"^cov1\[1\] is not positive definite to float64 precision"):
        eigh_spd(np.stack([np.eye(2), np.diag([1e-20, 1.0])]), "cov1")
    with pytest.raises(ValueError, match=r"^cov0 is not positive definite to float64 precision"):
        gaussian_kl(np.zeros(2), np.diag([1.0, 1e-20]), np.zeros(2), np.eye(2))
    # a zero or negative eigenvalue keeps the plain message
    for cov in (np.diag([1.0, 0.0]), np.diag([1.0, -1e-20])):
        with pytest.raises(ValueError, match=r"^cov is not positive definite \(smallest eigenvalue"):
            eigh_spd(cov, "cov")
    lam, U = eigh_spd(np.diag([1.0, 1e-15]), "cov")  # above d eps: accepted
    np.testing.assert_array_equal(lam, [1e-15, 1.0])


def test_check_points_refuses_a_masked_array():
    """np.asarray reads a masked array's data under the mask: the mixture's score at a masked
    5.0 was -5, as if the entry were a point; refused, as call_score refuses masked scores."""
    from sgm_ref import OU
    from sgm_ref._validation import check_points
    from sgm_ref.targets import GaussianMixture

    x = np.ma.array([[5.0], [1.0]], mask=[[True], [False]])
    with pytest.raises(ValueError, match=r"^x is a masked array, whose masked entries would be read"):
        check_points(x)
    with pytest.raises(ValueError, match=r"^x is a masked array"):
        GaussianMixture([1.0], [[0.0]], [[1.0]]).score(x, 0.5, OU())
    np.testing.assert_array_equal(check_points(np.ma.getdata(x)), [[5.0], [1.0]])


def test_arrays_numpy_or_torch_cannot_read_are_named():
    """Found by reviews: a ragged list gave NumPy's "setting an array element with a sequence" and a
    torch tensor that requires grad torch's RuntimeError, neither naming the argument; a 1-D y was
    told to use x[None, :]."""
    from sgm_ref._validation import check_points

    with pytest.raises(ValueError, match=r"^covariances cannot be read as an array of numbers \(setting an"):
        check_real_array([[1.0, 0.0], [0.0]], "covariances")
    with pytest.raises(ValueError, match=r"^x cannot be read as an array of numbers"):
        check_points([[1.0, 2.0], [3.0]], "x")
    with pytest.raises(ValueError, match=r"for a single point use y\[None, :\]"):
        check_points(np.zeros(3), "y")
    torch = pytest.importorskip("torch")
    leaf = torch.zeros((2, 3), dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=r"^x cannot be read .*requires grad.*; pass it \.detach\(\)$"):
        check_points(leaf, "x")
    with pytest.raises(ValueError, match=r"^t cannot be read .*; pass it \.detach\(\)$"):
        check_times(torch.ones(2, dtype=torch.float64, requires_grad=True), n=2)
    np.testing.assert_array_equal(check_points(leaf.detach(), "x"), np.zeros((2, 3)))


def test_masked_weights_times_and_grids_are_refused():
    """np.asarray reads a masked array's data under the mask: GaussianMixture took weights
    np.ma.array([0.5, 0.5], mask=[0, 1]) as (0.5, 0.5), OU().alpha gave e^{-5} at a masked 5.0,
    a masked NaN time was called 'a NaN or inf', and euler_maruyama stepped through a masked
    grid time. Refused by name, as check_points and call_score refuse masked arrays."""
    from sgm_ref import OU, GaussianMixture
    from sgm_ref.samplers import euler_maruyama

    message = r"^{} is a masked array, whose masked entries would be read as the numbers under the mask; pass a plain"
    with pytest.raises(ValueError, match=message.format("weights")):
        GaussianMixture(np.ma.array([0.5, 0.5], mask=[False, True]), [[0.0], [4.0]], [[1.0], [1.0]])
    for t in (np.ma.array([1.0, 5.0], mask=[False, True]), np.ma.array([1.0, np.nan], mask=[False, True])):
        with pytest.raises(ValueError, match=message.format("t")):
            OU().alpha(t)
        with pytest.raises(ValueError, match=message.format("t")):
            check_times(t)
    gm = GaussianMixture([1.0], [[0.0]], [[1.0]])
    with pytest.raises(ValueError, match=message.format("grid")):
        euler_maruyama(lambda x, t: gm.score(x, t, OU()), OU(), np.ma.array([1.0, 0.5, 0.1], mask=[0, 1, 0]),
                       np.zeros((2, 1)), np.random.default_rng(0))
    with pytest.raises(ValueError, match=message.format("means")):
        check_real_array(np.ma.array([1.0]), "means")  # even with nothing masked: the caller means plain numbers
    np.testing.assert_array_equal(check_times(np.ma.getdata(np.ma.array([1.0, 5.0], mask=[0, 1]))), [1.0, 5.0])


def test_check_float_dtype_names_a_dtype_numpy_refuses_with_value_error():
    # before: np.dtype(("f8", -1)) raised NumPy's own ValueError ("invalid shape in fixed-type
    # tuple: dimension smaller then zero."), naming neither the argument nor the fix
    from sgm_ref._validation import check_float_dtype
    with pytest.raises(ValueError, match=r"^dtype must be float64 or float32, got \('f8', -1\)$"):
        check_float_dtype(("f8", -1))
    assert check_float_dtype("f4") == np.float32


def test_check_fits_multiplies_numpy_integers_without_wrapping():
    """np.int64(2**62) * 8 wraps round to 0 in int64 (a RuntimeWarning at most), so a count of
    2^62 units of 8 bytes, 3.7e10 GiB, passed the memory check; the product is taken in Python ints."""
    from sgm_ref._validation import check_fits
    for value, per_unit in ((np.int64(2**62), 8), (2**62, np.int64(8)), (np.int64(2**61), np.int64(16))):
        with pytest.raises(ValueError, match=r"^n must be at most \d+ on this machine, got 4611686018427387904|"
                                             r"^n must be at most \d+ on this machine, got 2305843009213693952"):
            check_fits("n", value, per_unit)
    check_fits("n", np.int64(10), np.int64(8))  # small: accepted


def test_a_big_endian_score_is_read_as_the_same_numbers():
    # before: a score returning '>f8' for float64 points was refused ("score returned dtype >f8
    # for points of dtype float64 ...; make the score return the points' dtype, float64"),
    # while points, times and grids in the other byte order are read as their numbers
    other = ">f8" if np.little_endian else "<f8"
    s = call_score(lambda x, t: (-X).astype(other), X, 0.5)  # (-X.astype(other) would be native already)
    assert s.dtype == np.float64 and s.dtype.isnative
    np.testing.assert_array_equal(s, -X)
    s32 = call_score(lambda x, t: (-x).astype(other.replace("8", "4")), X.astype(np.float32), 0.5)
    assert s32.dtype == np.float32 and s32.dtype.isnative
    np.testing.assert_array_equal(s32, -X.astype(np.float32))


def test_eigh_spd_of_entries_whose_double_overflows():
    """C + C^T overflowed for entries beyond 8.99e307: diag(1.7e308, 1e308), symmetric positive
    definite, was called 'not positive definite (smallest eigenvalue nan, largest nan)'. The
    eigenvalues against mpmath's eigsy (measured <= 1.9e-16 relative)."""
    mp = pytest.importorskip("mpmath")
    from sgm_ref._validation import eigh_spd
    for C in (np.diag([1.7e308, 1e308]), np.array([[1e308, 1e307], [1e307, 1e308]]),
              np.array([[1.5e308, -4e307], [-4e307, 9e307]])):
        lam, U = eigh_spd(C, "cov")
        want = np.sort([float(v) for v in mp.eigsy(mp.matrix(C.tolist()))[0]])
        np.testing.assert_allclose(lam, want, rtol=1e-15, atol=0)
        np.testing.assert_allclose((U * lam) @ U.T, C, rtol=0, atol=1e-15 * 1.7e308)
    with pytest.raises(ValueError, match=r"^cov\[1\] is not positive definite \(smallest eigenvalue -1e\+308"):
        eigh_spd(np.stack([np.eye(2), np.diag([1.7e308, -1e308])]), "cov")
    lam, _ = eigh_spd(np.array([[2.0, 1.0], [1.0 + 1e-12, 2.0]]), "cov")  # slightly asymmetric: as before
    np.testing.assert_array_equal(lam, np.linalg.eigvalsh(0.5 * np.array([[4.0, 2.0 + 1e-12], [2.0 + 1e-12, 4.0]])))


def test_mean_se_of_values_whose_squares_underflow():
    """Values below ~1e-154 have squares below the normal range: values of 1e-170 had a
    standard error of 0.0 (mpmath: 2.5e-171), subnormal ones too. Against mpmath."""
    mp = pytest.importorskip("mpmath")
    from sgm_ref._validation import mean_se
    mp.mp.dps = 40
    rng = np.random.default_rng(0)
    for values, rtol in ((rng.standard_normal(10) * 1e-170, 1e-15), (np.abs(rng.standard_normal(50)) * 1e-200, 1e-15),
                         (rng.standard_normal(10) * 1e-320, 3e-3)):  # subnormal: the results' own granularity
        v = [mp.mpf(float(x)) for x in values]
        mean = mp.fsum(v) / len(v)
        se = mp.sqrt(mp.fsum((x - mean) ** 2 for x in v) / (len(v) - 1) / len(v))
        got_mean, got_se = mean_se(values)
        assert got_se > 0 and abs(got_se - float(se)) <= rtol * float(se)
        assert abs(got_mean - float(mean)) <= rtol * abs(float(mean))
    values = rng.standard_normal(20)  # normal values: the plain formulas, bit for bit
    assert mean_se(values) == (float(values.mean()), float(values.std(ddof=1) / np.sqrt(20)))
    assert mean_se(np.zeros(3)) == (0.0, 0.0)


def test_check_count_takes_a_zero_d_integer_array():
    # before: time_grid(1.0, 1e-3, np.array(100)) was refused as "n_steps must be an integer
    # >= 1, got array(100)", while check_real and check_times take 0-d arrays
    from sgm_ref._validation import check_count
    from sgm_ref.samplers import time_grid
    assert check_count(np.array(100), "n_steps") == 100 and type(check_count(np.array(3, ">i8"), "n")) is int
    np.testing.assert_array_equal(time_grid(1.0, 1e-3, np.array(100)), time_grid(1.0, 1e-3, 100))
    for bad in (np.array(True), np.array(3.0), np.array([3]), np.array(0)):
        with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got "):
            check_count(bad, "n")


def test_a_bool_in_a_list_of_numbers_is_refused_by_position():
    """np.asarray([[0.5, True]]) is float64 [[0.5, 1.0]]: a point, time or grid with a bool among
    its numbers was read with 1 or 0 in its place, while an all-bool array is refused by dtype
    (the targets refused such lists already, with this message)."""
    from sgm_ref import OU
    from sgm_ref._validation import check_points
    with pytest.raises(ValueError, match=r"^x must hold numbers, got the boolean True at x\[1\]\[0\]$"):
        check_points([[0.5, 1.0], [True, 2.0]])
    with pytest.raises(ValueError, match=r"^x must hold numbers, got the boolean False at x\[0\]\[1\]$"):
        check_points(([0.5, np.False_],))
    with pytest.raises(ValueError, match=r"^x must hold numbers, got the boolean True at x\[1\]$"):
        check_points([[0.5, 1.0], np.array([True, False])])
    with pytest.raises(ValueError, match=r"^t must hold numbers, got the boolean True at t\[1\]$"):
        OU().alpha([0.5, True])
    with pytest.raises(ValueError, match=r"^grid must hold numbers, got the boolean False at grid\[2\]$"):
        check_decreasing_grid([1.0, 0.5, False])
    np.testing.assert_array_equal(check_points([[1, 2.5], (np.float32(3), np.int64(4))]), [[1.0, 2.5], [3.0, 4.0]])
    np.testing.assert_array_equal(check_times([0.5, 1]), [0.5, 1.0])


def test_an_indeterminate_physical_memory_refuses_nothing(monkeypatch):
    """POSIX sysconf returns -1 (os.sysconf too, without raising) for a value it leaves
    indeterminate: memory was then -4096 bytes and check_fits refused n = 1 ('n must be at most
    -512'), fits_in_memory every size. Read as 'the OS does not say', as on a platform without it."""
    import os
    from sgm_ref import _validation
    from sgm_ref._validation import check_fits, fits_in_memory
    real = os.sysconf
    monkeypatch.setattr(os, "sysconf", lambda key: -1 if key == "SC_PHYS_PAGES" else real(key))
    assert _validation._physical_memory() is None
    check_fits("n", 1, 8)
    with fits_in_memory("n", 10, 10):
        pass
    with pytest.raises(ValueError, match=r"^n must be at most \d+ on this machine, got 4611686018427387904: .*"
                                         r"than NumPy's largest array"):
        check_fits("n", 2**62, 8)


@pytest.mark.parametrize("span", [np.timedelta64(3), np.timedelta64(3, "s"), np.array(np.timedelta64(3, "s")),
                                  np.timedelta64("NaT")], ids=["generic", "seconds", "0-d", "NaT"])
def test_a_time_span_is_not_a_number(span):
    """np.timedelta64 is an np.integer to NumPy: check_real read np.timedelta64(3) as 3.0 and
    check_count as 3, and one with a unit (or NaT) raised float()'s or int()'s TypeError, naming
    nothing; as an array of them, check_real_array and check_times already refuse it."""
    from sgm_ref._validation import check_count, check_real
    from sgm_ref.samplers import time_grid
    with pytest.raises(ValueError, match=r"^t must be a real number, got np\.timedelta64\(.*a time span"):
        check_real(span, "t")
    with pytest.raises(ValueError, match=r"^n must be an integer >= 1, got np\.timedelta64\(.*a time span"):
        check_count(span, "n")
    with pytest.raises(ValueError, match=r"^n_steps must be an integer >= 1, got np\.timedelta64"):
        time_grid(1.0, 1e-3, span)


@pytest.mark.parametrize("dtype", [">f8", np.dtype(">f4")], ids=["f8", "f4"])
def test_a_byte_swapped_float_dtype_is_named_as_such(dtype):
    """'>f8' is a float64: it was refused as "dtype must be float64 or float32, got '>f8'",
    which says it is not one; the arrays made are in this machine's byte order, so the
    message names the dtype to pass."""
    from sgm_ref._validation import check_float_dtype
    native = np.dtype(dtype).newbyteorder("=").name
    with pytest.raises(ValueError, match=rf"^dtype must be float64 or float32 in this machine's byte order, got "
                                         rf".*\(byte-swapped\); pass '{native}'$"):
        check_float_dtype(dtype)
    assert check_float_dtype(np.dtype(dtype).newbyteorder("=")) == np.dtype(native)


def test_check_real_refuses_a_longdouble_below_float64s_range_rather_than_reading_0():
    """float() of a positive longdouble below 5e-324 is 0.0: it was returned, or refused as
    "std must be > 0.0, got 0.0" about a positive input (above the range it was named)."""
    from sgm_ref._validation import check_real

    tiny = np.longdouble(1e-300) ** 13
    if tiny == 0:
        pytest.skip("this platform's longdouble is float64")
    for value in (tiny, -tiny, np.array(tiny)):
        with pytest.raises(ValueError, match=r"^x must be representable in float64, got .*, below float64's smallest"):
            check_real(value, "x")
    assert check_real(np.longdouble(0.0), "x") == 0.0 and check_real(np.longdouble(1e-320), "x") == 1e-320
