"""Finite-difference checks (sgm_ref.gradcheck) on functions with known gradients.

Central differences with eps = 1e-6 have truncation error ~1e-12 |f'''| and rounding
error ~1e-16 |f| / eps ~ 1e-10 |f| on these functions, so the tolerances below (1e-8)
sit well above the method's error and far below any real mistake.
"""

import numpy as np
import pytest

from sgm_ref.gradcheck import GradcheckResult, check_gradient, check_vjp, numerical_gradient

from _peers import peer

# -- functions with known gradients -------------------------------------------------------


def make_quadratic(n=6, seed=0):
    rng = np.random.default_rng(seed)
    B = rng.standard_normal((n, n))
    A = B @ B.T + n * np.eye(n)
    b = rng.standard_normal(n)
    return (lambda x: 0.5 * x @ A @ x + b @ x), (lambda x: A @ x + b)


def exp_log(x):
    return np.sum(np.exp(x)) + np.sum(np.log1p(x**2))


def exp_log_grad(x):
    return np.exp(x) + 2 * x / (1 + x**2)


def make_composition(n=5, m=4, seed=1):
    """log-sum-exp of tanh(W x + c): gradient W^T ((1 - tanh^2) * softmax)."""
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, n))
    c = rng.standard_normal(m)

    def f(x):
        h = np.tanh(W @ x + c)
        return np.log(np.sum(np.exp(h)))

    def grad(x):
        h = np.tanh(W @ x + c)
        softmax = np.exp(h) / np.sum(np.exp(h))
        return W.T @ ((1 - h**2) * softmax)

    return f, grad


def theta0(n, seed=2):
    return np.random.default_rng(seed).uniform(-1, 1, n)


CASES = {
    "quadratic": (*make_quadratic(), 6),
    "exp_log": (exp_log, exp_log_grad, 5),
    "composition": (*make_composition(), 5),
}


# -- numerical_gradient -------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_numerical_gradient_matches_known_gradient(name):
    f, grad, n = CASES[name]
    theta = theta0(n)
    np.testing.assert_allclose(numerical_gradient(f, theta), grad(theta), rtol=1e-8, atol=1e-9)


def test_numerical_gradient_of_quadratic_is_exact_up_to_rounding():
    # central differences are exact for quadratics: only rounding (~1e-16 |f| / eps) remains
    f, grad = make_quadratic()
    theta = theta0(6)
    err = np.abs(numerical_gradient(f, theta, eps=1e-3) - grad(theta))
    assert err.max() < 1e-11


@pytest.mark.parametrize("value", [100000.1, -31415.9265, 77777.7])
def test_the_divisor_is_the_step_actually_taken(value):
    # at theta ~ 1e5 the floats are ~1e-11 apart, so theta +- 1e-6 is rounded and the step
    # taken differs from 2 eps by up to ~1e-5 relative; f = 2 theta is exact in floats, so
    # dividing by the step taken gives the derivative 2 exactly, and dividing by 2 eps does not
    theta = np.array([value])

    def f(th):
        return 2.0 * th[0]

    np.testing.assert_array_equal(numerical_gradient(f, theta, eps=1e-6), [2.0])
    result = check_gradient(f, np.array([2.0]), theta, eps=1e-6, rtol=1e-12, atol=0.0, directions=3,
                            rng=np.random.default_rng(0))
    assert result.passed, result.max_rel_error


def test_numerical_gradient_error_is_second_order_in_eps():
    # truncation error eps^2 / 6 f''' for f = exp: 10x smaller eps -> ~100x smaller error
    f = lambda x: np.sum(np.exp(x))  # noqa: E731
    theta = np.array([0.5])
    e1 = abs(numerical_gradient(f, theta, eps=1e-2)[0] - np.exp(0.5))
    e2 = abs(numerical_gradient(f, theta, eps=1e-3)[0] - np.exp(0.5))
    assert e1 == pytest.approx(1e-4 / 6 * np.exp(0.5), rel=1e-3)
    assert 90 < e1 / e2 < 110


def test_numerical_gradient_restores_theta_bit_for_bit():
    f, _, n = CASES["composition"]
    theta = theta0(n) * 1e3 + 0.1  # large entries, where theta_i + eps - eps != theta_i
    before = theta.copy()
    numerical_gradient(f, theta, eps=1e-5)
    assert theta.tobytes() == before.tobytes()


def test_numerical_gradient_restores_theta_when_f_raises():
    theta = theta0(4)
    before = theta.copy()
    calls = []

    def f(x):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return np.sum(x)

    with pytest.raises(RuntimeError):
        numerical_gradient(f, theta)
    assert theta.tobytes() == before.tobytes()


def test_f_may_read_theta_through_a_view():
    # as a network does with its per-layer views of the flat parameter vector
    theta = theta0(6)
    layer = theta[2:5]
    f = lambda _: np.sum(layer**3)  # noqa: E731
    expected = np.zeros(6)
    expected[2:5] = 3 * theta[2:5] ** 2
    np.testing.assert_allclose(numerical_gradient(f, theta), expected, rtol=1e-8, atol=1e-9)


# -- check_gradient ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("as_callable", [True, False], ids=["callable", "array"])
def test_check_gradient_passes_for_correct_gradient(name, as_callable):
    f, grad, n = CASES[name]
    theta = theta0(n)
    before = theta.copy()
    result = check_gradient(f, grad if as_callable else grad(theta), theta)
    assert isinstance(result, GradcheckResult)
    assert result.passed
    assert result.max_rel_error < 1e-8 and result.max_abs_error < 1e-8
    np.testing.assert_array_equal(result.analytic, grad(theta))
    assert result.numerical.shape == (n,) and result.directions is None
    assert theta.tobytes() == before.tobytes()


def test_check_gradient_fails_for_dropped_chain_rule_factor():
    # a classic bug: d/dx log(1 + x^2) written as x / (1 + x^2)
    theta = theta0(5)
    wrong = lambda x: np.exp(x) + x / (1 + x**2)  # noqa: E731
    result = check_gradient(exp_log, wrong, theta)
    assert not result.passed
    error = np.abs(theta / (1 + theta**2))
    rel = error / np.maximum(np.abs(wrong(theta)), np.abs(exp_log_grad(theta)))
    assert result.worst == np.argmax(rel)
    assert result.max_rel_error == pytest.approx(rel.max(), rel=1e-6)
    assert result.max_abs_error == pytest.approx(error.max(), rel=1e-6)


def test_check_gradient_finds_one_slightly_wrong_coordinate():
    f, grad, n = CASES["exp_log"]
    theta = theta0(n)
    wrong = grad(theta)
    wrong[3] *= 1 + 1e-5
    result = check_gradient(f, wrong, theta)
    assert not result.passed
    assert result.worst == 3
    assert result.max_rel_error == pytest.approx(1e-5, rel=1e-2)


def test_relative_error_definition():
    # |a - n| / max(|a|, |n|, atol), and agreement where both are exactly zero
    f = lambda x: 2.0 * x[0] + 0.0 * x[1]  # noqa: E731
    theta = np.array([0.3, 0.7])
    result = check_gradient(f, np.array([2.2, 0.0]), theta, atol=0.0)
    assert result.max_rel_error == pytest.approx(0.2 / 2.2, rel=1e-8)
    assert result.worst == 0
    assert result.max_abs_error == pytest.approx(0.2, rel=1e-8)
    assert not result.passed


def test_tolerances_decide_pass():
    f, grad, n = CASES["exp_log"]
    theta = theta0(n)
    wrong = grad(theta) * (1 + 1e-5)
    assert not check_gradient(f, wrong, theta, rtol=1e-6).passed
    assert check_gradient(f, wrong, theta, rtol=1e-4).passed


# -- directional mode -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_directional_check_passes_for_correct_gradient(name):
    f, grad, n = CASES[name]
    theta = theta0(n)
    before = theta.copy()
    result = check_gradient(f, grad, theta, directions=4, rng=np.random.default_rng(3))
    assert result.passed and result.max_rel_error < 1e-8
    assert result.directions.shape == (4, n)
    np.testing.assert_allclose(np.linalg.norm(result.directions, axis=1), 1.0, rtol=1e-15)
    # the step actually taken differs from eps u by the rounding of theta +- eps u
    np.testing.assert_allclose(
        result.analytic, result.directions @ grad(theta), rtol=0, atol=1e-9 * np.linalg.norm(grad(theta))
    )
    assert theta.tobytes() == before.tobytes()


def test_directional_check_fails_for_wrong_gradient():
    f, grad = make_quadratic(n=200)
    theta = theta0(200)
    wrong = grad(theta)
    wrong[17] += 1.0
    result = check_gradient(f, wrong, theta, directions=3, rng=np.random.default_rng(4))
    assert not result.passed
    assert result.max_abs_error > 1e-3


def test_directional_check_is_reproducible_from_the_seed():
    f, grad, n = CASES["composition"]
    a = check_gradient(f, grad, theta0(n), directions=2, rng=np.random.default_rng(5))
    b = check_gradient(f, grad, theta0(n), directions=2, rng=np.random.default_rng(5))
    assert a.directions.tobytes() == b.directions.tobytes()
    assert a.numerical.tobytes() == b.numerical.tobytes()


def test_directional_check_restores_theta_when_f_raises():
    theta = theta0(5)
    before = theta.copy()

    def f(x):
        if not np.array_equal(x, before):
            raise RuntimeError("boom")
        return 0.0

    with pytest.raises(RuntimeError):
        check_gradient(f, np.zeros(5), theta, directions=1, rng=np.random.default_rng(0))
    assert theta.tobytes() == before.tobytes()


# -- vector-Jacobian products -------------------------------------------------------------------------


def make_vector_function(n=4, m=3, seed=6):
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((m, n))

    def f(x):
        return np.sin(W @ x) * np.sum(x**2)

    def jacobian(x):
        s = np.sum(x**2)
        return np.cos(W @ x)[:, None] * W * s + np.sin(W @ x)[:, None] * 2 * x[None, :]

    return f, jacobian, W


def test_check_vjp_passes_for_correct_vjp():
    f, jacobian, _ = make_vector_function()
    theta = theta0(4)
    before = theta.copy()
    result = check_vjp(f, lambda x, w: jacobian(x).T @ w, theta, np.random.default_rng(7), directions=5)
    assert result.passed and result.max_rel_error < 1e-8
    assert theta.tobytes() == before.tobytes()


def test_check_vjp_fails_for_wrong_vjp():
    f, _, W = make_vector_function()
    theta = theta0(4)

    def wrong(x, w):
        # the product rule's second term, sin(W x) 2 x^T, forgotten
        return (np.cos(W @ x)[:, None] * W * np.sum(x**2)).T @ w

    result = check_vjp(f, wrong, theta, np.random.default_rng(7), directions=5)
    assert not result.passed
    assert result.max_rel_error > 1e-2


# -- bad input ---------------------------------------------------------------------------------------


def quadratic(x):
    return float(x @ x)


@pytest.mark.parametrize(
    "theta",
    [
        np.zeros(3, dtype=np.float32),
        [0.0, 1.0],
        np.zeros((2, 2)),
        np.zeros(0),
        np.array([0.0, np.nan]),
        np.arange(3),
    ],
    ids=["float32", "list", "2d", "empty", "nan", "int"],
)
def test_bad_theta_raises(theta):
    with pytest.raises(ValueError, match="theta"):
        numerical_gradient(quadratic, theta)
    with pytest.raises(ValueError, match="theta"):
        check_gradient(quadratic, np.zeros(3), theta)


def test_float32_theta_message_says_why():
    with pytest.raises(ValueError, match="float64.*rounding"):
        numerical_gradient(quadratic, np.zeros(3, dtype=np.float32))
    with pytest.raises(ValueError, match=r"float64, got float128: .*compared in float64.*extra digits"):
        numerical_gradient(quadratic, np.zeros(3, dtype=np.longdouble))


def test_a_big_endian_float64_theta_is_checked_in_place_not_refused_as_lower_precision():
    """float64 in the other byte order (a vector read from another machine's file) holds the same
    numbers; it was refused with 'finite differences in lower precision ...' (a review). It is
    perturbed in place and restored bit for bit, and gives the native vector's results."""
    f, grad, n = CASES["composition"]
    native = theta0(n)
    theta = native.astype(">f8")
    before = theta.tobytes()
    np.testing.assert_array_equal(numerical_gradient(f, theta), numerical_gradient(f, native))
    for kw in (dict(), dict(directions=3, rng=np.random.default_rng(0))):
        result = check_gradient(f, grad, theta, **kw)
        assert result.passed
        assert result.max_abs_error == check_gradient(f, grad, native.copy(), **{
            k: (np.random.default_rng(0) if k == "rng" else v) for k, v in kw.items()}).max_abs_error
    assert check_vjp(lambda x: np.tanh(x) * x, lambda x, w: (np.tanh(x) + x / np.cosh(x) ** 2) * w, theta,
                     np.random.default_rng(1)).passed
    assert theta.dtype == np.dtype(">f8") and theta.tobytes() == before


def test_against_torch_autograd():
    """The numerical gradient against torch autograd's (float64) on a small network-like function;
    check_gradient passes torch's gradient and fails it with one entry off by 1e-3 relative;
    check_vjp passes torch's vector-Jacobian product."""
    torch = peer("torch")
    rng = np.random.default_rng(3)
    W = torch.from_numpy(rng.standard_normal((5, 7)))

    def f_torch(th):
        h = torch.tanh(W @ th[:7] + th[7:12])
        return torch.stack([torch.logsumexp(h * th[12:17], 0), torch.sum(torch.sin(th) ** 2), torch.exp(th[3] * th[4])])

    def f(th):
        return float(f_torch(torch.from_numpy(th.copy())).sum())

    def grad(th):
        t = torch.from_numpy(th.copy()).requires_grad_(True)
        f_torch(t).sum().backward()
        return t.grad.numpy()

    theta = rng.uniform(-1, 1, 17)
    np.testing.assert_allclose(numerical_gradient(f, theta), grad(theta), rtol=1e-8, atol=1e-9)
    assert check_gradient(f, grad, theta).passed
    assert check_gradient(f, grad, theta, directions=4, rng=np.random.default_rng(0)).passed
    wrong = grad(theta)
    wrong[16] *= 1.001
    result = check_gradient(f, wrong, theta)
    assert not result.passed and result.worst == 16
    vjp = lambda th, w: torch.autograd.functional.vjp(  # noqa: E731
        f_torch, torch.from_numpy(th.copy()), torch.from_numpy(np.asarray(w, dtype=np.float64)))[1].numpy()
    assert check_vjp(lambda th: f_torch(torch.from_numpy(th.copy())).numpy(), vjp, theta,
                     np.random.default_rng(2), directions=5).passed


@pytest.mark.parametrize("eps", [0.0, -1e-6, np.nan, np.inf, "1e-6"])
def test_bad_eps_raises(eps):
    with pytest.raises(ValueError, match="eps"):
        numerical_gradient(quadratic, np.zeros(3), eps=eps)


def test_eps_below_float_spacing_raises():
    with pytest.raises(ValueError, match="eps"):
        numerical_gradient(quadratic, np.array([1e12]), eps=1e-6)


def test_directional_step_that_moves_no_entry_raises():
    # theta + eps u rounds to theta everywhere: both differences are 0 and so is the
    # derivative along the step taken, so any gradient, however wrong, would pass
    theta = np.full(5, 1e10)
    wrong = np.full(5, 123.0)
    with pytest.raises(ValueError, match="eps .* no entry moves"):
        check_gradient(quadratic, wrong, theta, directions=3, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="eps .* no entry moves"):
        check_vjp(lambda th: 2.0 * th, lambda th, w: 99.0 * w, theta, np.random.default_rng(0))
    assert np.all(theta == 1e10)


def test_a_step_beyond_float64s_range_is_refused_not_read_as_a_zero_gradient():
    """eps = 1e308: theta_i +- eps are finite but 2 eps apart, beyond float64, so the divisor was
    inf and numerical_gradient returned 0 for sin's gradient (cos 0.3 = 0.955, a review);
    along a direction the step taken held inf / inf = NaN and the check blamed the gradient
    ("differ by more than float64 holds"). f = arctan stays finite even at theta + eps = inf."""
    theta = np.array([0.3, 1.0])
    saturating = lambda th: float(np.sum(np.arctan(th)))  # noqa: E731  (finite at +-1e308 and at +-inf)
    with pytest.raises(ValueError, match=r"eps = 1e\+308 is too large at theta\[0\] = 0\.3: .*use a smaller eps"):
        numerical_gradient(saturating, theta, eps=1e308)
    with pytest.raises(ValueError, match=r"eps = 1e\+308 is too large at theta\[0\]"):
        check_gradient(saturating, 1.0 / (1.0 + theta**2), theta, eps=1e308)
    with pytest.raises(ValueError, match=r"eps = 1e\+308 is too large for theta .*use a smaller eps"):
        check_gradient(saturating, 1.0 / (1.0 + theta**2), theta, eps=1e308, directions=2,
                       rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"eps = 1e\+308 is too large for theta"):
        check_vjp(np.arctan, lambda th, w: w / (1.0 + th**2), theta, np.random.default_rng(0), eps=1e308)
    big = np.array([1e308, 0.0])  # theta_0 + eps overflows to inf
    with pytest.raises(ValueError, match=r"eps = 1e\+308 is too large at theta\[0\] = 1e\+308"):
        numerical_gradient(saturating, big, eps=1e308)
    assert np.array_equal(theta, [0.3, 1.0]) and np.array_equal(big, [1e308, 0.0])
    # the largest step that fits still gives the (crude but honest) difference quotient
    np.testing.assert_allclose(numerical_gradient(saturating, theta, eps=8e307),
                               [(np.arctan(8e307 + 0.3) - np.arctan(0.3 - 8e307)) / 1.6e308,
                                (np.arctan(8e307 + 1.0) - np.arctan(1.0 - 8e307)) / 1.6e308], rtol=1e-15)


@pytest.mark.parametrize("kwargs, name", [
    ({"rtol": -1.0}, "rtol"),
    ({"atol": -1.0}, "atol"),
    ({"atol": np.nan}, "atol"),
    ({"directions": 0, "rng": np.random.default_rng(0)}, "directions"),
    ({"directions": 2.5, "rng": np.random.default_rng(0)}, "directions"),
    ({"directions": 2}, "rng"),
    ({"directions": 2, "rng": 0}, "rng"),
])
def test_bad_check_arguments_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        check_gradient(quadratic, np.zeros(3), np.zeros(3), **kwargs)


@pytest.mark.parametrize("grad", [np.zeros(4), np.zeros((3, 1)), np.array([0.0, np.inf, 0.0]), lambda x: x[:2]])
def test_bad_grad_raises(grad):
    with pytest.raises(ValueError, match="grad"):
        check_gradient(quadratic, grad, np.zeros(3))


@pytest.mark.parametrize("f", [lambda x: x, lambda x: "a", lambda x: np.nan, 3.0])
def test_bad_f_raises(f):
    with pytest.raises(ValueError, match="f"):
        numerical_gradient(f, np.zeros(3))


def test_bad_vjp_raises():
    f, jacobian, _ = make_vector_function()
    with pytest.raises(ValueError, match="vjp"):
        check_vjp(f, lambda x, w: jacobian(x) @ x, theta0(4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="vjp"):
        check_vjp(f, None, theta0(4), np.random.default_rng(0))
    with pytest.raises(ValueError, match="rng"):
        check_vjp(f, lambda x, w: jacobian(x).T @ w, theta0(4), None)


# -- extreme values (issue 11): a ValueError, never an inf result -------------------------------


def test_differences_that_overflow_are_refused():
    theta = np.array([0.0, 2.0])

    def f(th):
        return 1e308 * np.sin(1e3 * th[0])  # derivative 1e311: beyond float64

    with pytest.raises(ValueError, match=r"central difference along theta\[0\] overflows float64: f is as large as 1e\+305"):
        numerical_gradient(f, theta)
    with pytest.raises(ValueError, match=r"central difference along a random direction u overflows"):
        check_gradient(f, np.array([1e305, 0.0]), theta, directions=2, rng=np.random.default_rng(0))
    # analytic and numerical of opposite signs near the range
    with pytest.raises(ValueError, match=r"analytic\[0\] = -1\.7e\+308 and numerical\[0\] = 5e\+307 differ by more"):
        check_gradient(lambda th: 5e307 * th[0], np.array([-1.7e308, 0.0]), np.array([0.0, 0.0]), eps=1.0)
    assert "np.float64" not in _message(lambda: numerical_gradient(lambda th: th[0], np.array([1e20]), eps=1e-6))


def _message(call):
    with pytest.raises(ValueError) as info:
        call()
    return str(info.value)


# -- what a failed check names (review 2026-12-05) ---------------------------------------------------


@pytest.mark.parametrize("directions", [None, 2])
def test_worst_names_the_entry_that_fails_not_a_near_zero_entry_that_passes(directions):
    # entry 0: gradient 1e-9, its central difference off by the rounding of f = 10 + ... over
    # 2 eps (1.1e-10, below atol = 1e-8: it passes, with relative error 1.1e-10 / atol = 1.1e-2
    # against the atol floor); entry 1: wrong by 1e-5 relative, beyond rtol = 1e-6: it fails.
    # worst used to be 0, the entry that passed
    f = lambda x: 10.0 + 0.5 * x[0] ** 2 + x[1]  # noqa: E731
    theta = np.array([1e-9, 0.3])
    wrong = np.array([1e-9, 1.0 + 1e-5])
    result = check_gradient(f, wrong, theta, directions=directions,
                            rng=None if directions is None else np.random.default_rng(0))
    assert not result.passed
    abs_err = np.abs(result.analytic - result.numerical)
    scale = np.maximum(np.abs(result.analytic), np.abs(result.numerical))
    excess = abs_err / (1e-8 + 1e-6 * scale)
    assert excess[result.worst] > 1 and result.worst == np.argmax(excess)
    if directions is None:
        assert result.worst == 1
        numerical = [(f(theta + [1e-6, 0]) - f(theta - [1e-6, 0])) / 2e-6, 1.0]
        np.testing.assert_allclose(result.numerical, numerical, rtol=1e-9, atol=0)
        # max_rel_error keeps its definition: the largest over all entries (entry 0's, against atol)
        rel = abs_err / np.maximum(scale, 1e-8)
        assert result.max_rel_error == rel.max() and rel[0] > 1e-3 and rel[1] == pytest.approx(1e-5, rel=1e-4)


def test_worst_with_zero_tolerances_is_the_largest_relative_error():
    f = lambda x: 2.0 * x[0] + 3.0 * x[1] + 0.0 * x[2]  # noqa: E731
    result = check_gradient(f, np.array([2.0 * (1 + 1e-3), 3.0 * (1 + 1e-2), 0.0]), np.array([0.25, 0.5, 0.75]),
                            rtol=0.0, atol=0.0)
    assert not result.passed and result.worst == 1
    assert result.max_rel_error == pytest.approx(1e-2 / 1.01, rel=1e-9)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_f_of_less_than_float64_is_refused(dtype):
    # rounded to float32, sum(theta^2) failed its right gradient by 15% (the message blamed nothing)
    theta = np.random.default_rng(0).standard_normal(5)
    f = lambda th: np.sum(th**2).astype(dtype)  # noqa: E731
    with pytest.raises(ValueError, match=f"f returned {np.dtype(dtype).name} at theta \\+ eps e_0: .* float64"):
        check_gradient(f, 2 * theta, theta)
    with pytest.raises(ValueError, match=f"f returned {np.dtype(dtype).name} at theta \\+ eps u"):
        check_gradient(f, 2 * theta, theta, directions=2, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match=f"f returned {np.dtype(dtype).name} at theta:"):
        check_vjp(lambda th: np.sin(th).astype(dtype), lambda th, w: np.cos(th) * w, theta, np.random.default_rng(0))
    # float64, integer and longdouble values are fine
    assert check_gradient(lambda th: np.longdouble(np.sum(th**2)), 2 * theta, theta).passed
    assert check_gradient(lambda th: 7, np.zeros(5), theta, atol=0.0).passed


def test_the_absolute_step_figures_in_the_module_docstring():
    # eps is absolute: 0.5 |theta|^2 in 6 dimensions fails its right gradient at the defaults as
    # theta's scale grows (rounding ~1e-16 |f| / eps), and passes with eps scaled with theta
    f, grad = (lambda x: 0.5 * np.sum(x * x)), (lambda x: x)
    fails = {}
    for scale in (1e2, 1e4):
        thetas = [np.random.default_rng(s).standard_normal(6) * scale for s in range(50)]
        fails[scale] = sum(not check_gradient(f, grad, th).passed for th in thetas)
        assert all(check_gradient(f, grad, th, eps=1e-6 * scale).passed for th in thetas)
    assert fails == {1e2: 3, 1e4: 49}
