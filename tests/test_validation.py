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
