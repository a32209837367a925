"""GaussianMixture's covariance_type (scikit-learn's four forms) and JSON targets.

References are independent of the library: scipy.stats.multivariate_normal and
scipy.special.logsumexp for log p_t, Cholesky solves for the score, each component's
covariance written out densely here.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.linalg import cho_factor, cho_solve
from scipy.special import logsumexp
from scipy.stats import multivariate_normal

import sgm_ref.targets.gaussian_mixture as gm_module
from sgm_ref import OU, VP, GaussianMixture
from sgm_ref.targets.spec import from_record, from_spec, to_record

SCRIPT = Path(sys.executable).with_name("sgm-ref")
PROCESSES = {"OU": OU(), "VP": VP()}
TIMES = {"OU": (0.0, 1e-4, 0.3, 5.0), "VP": (0.0, 1e-4, 0.3, 1.0)}
# a valid shared covariance whose entries are all > 0: as (K, d) rows it is also valid variances
SHARED = np.array([[2.0, 0.5], [0.5, 1.0]])


def spd(d, rng, low=0.1, high=2.0):
    q = np.linalg.qr(rng.standard_normal((d, d)))[0]
    c = (q * rng.uniform(low, high, d)) @ q.T
    return 0.5 * (c + c.T)


def make(kind, K=4, d=3, seed=0):
    """(mixture, weights, means, dense (K, d, d) covariances) for kind 'tied' or 'spherical'."""
    rng = np.random.default_rng(seed)
    w = rng.dirichlet(np.ones(K))
    mu = 1.5 * rng.standard_normal((K, d))
    if kind == "tied":
        cov = spd(d, rng)
        dense = np.broadcast_to(cov, (K, d, d)).copy()
    else:
        cov = rng.uniform(0.1, 2.0, K)
        dense = cov[:, None, None] * np.eye(d)
    return GaussianMixture(w, mu, cov, covariance_type=kind), w, mu, dense


def coefficients(process, t):
    bmin, bmax = (2.0, 2.0) if isinstance(process, OU) else (process.beta_min, process.beta_max)
    B = bmin * t + 0.5 * t * t * (bmax - bmin)
    return np.exp(-0.5 * B), -np.expm1(-B)


def reference(w, mu, dense, x, a, s2):
    """(log p_t, score) by scipy and Cholesky solves, one scalar t."""
    d = mu.shape[1]
    logc, grads = [], []
    for k in np.flatnonzero(w > 0):
        C = a * a * dense[k] + s2 * np.eye(d)
        r = x - a * mu[k]
        sol = cho_solve(cho_factor(C, lower=True), r.T).T
        logc.append(np.log(w[k]) + multivariate_normal(a * mu[k], C).logpdf(x))
        grads.append(-sol)
    logc = np.reshape(logc, (len(grads), x.shape[0]))
    pi = np.exp(logc - logsumexp(logc, axis=0))
    return logsumexp(logc, axis=0), np.einsum("kn,knd->nd", pi, np.array(grads))


def points(mixture, n, seed):
    rng = np.random.default_rng(seed)
    return np.concatenate([mixture.sample(n, rng), 5.0 * rng.standard_normal((3, mixture.dim))])


# -- item: a (d, d) array with K = d is no longer read silently as diagonal variances ------


def test_an_ambiguous_square_covariance_is_refused_naming_covariance_type():
    # K = d = 2 and SHARED is both a valid shared covariance and two rows of variances
    with pytest.raises(ValueError, match=r"^covariances of shape \(2, 2\) with K = d = 2 is ambiguous.*"
                                         r"covariance_type='diag' or covariance_type='tied'"):
        GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], SHARED)


def test_the_named_readings_of_a_square_array_are_the_two_different_targets():
    means = [[0.0, 0.0], [1.0, 1.0]]
    tied = GaussianMixture([0.5, 0.5], means, SHARED, covariance_type="tied")
    diag = GaussianMixture([0.5, 0.5], means, SHARED, covariance_type="diag")
    assert (tied.covariance_type, diag.covariance_type) == ("tied", "diagonal")
    x = np.array([[0.3, -0.2], [1.0, 2.0]])
    dense_tied = np.stack([SHARED, SHARED])
    dense_diag = np.stack([np.diag(SHARED[0]), np.diag(SHARED[1])])
    for g, dense in ((tied, dense_tied), (diag, dense_diag)):
        ref_lp, ref_s = reference(np.array([0.5, 0.5]), np.array(means), dense, x, 1.0, 0.0)
        np.testing.assert_allclose(g.log_prob(x), ref_lp, rtol=1e-13)
        np.testing.assert_allclose(g.score(x), ref_s, rtol=1e-12, atol=1e-14)
    assert not np.allclose(tied.score(x), diag.score(x))


def test_unambiguous_shapes_keep_their_old_reading():
    # not symmetric, or singular: only the diagonal reading is valid, as before
    means = [[0.0, 0.0], [1.0, 1.0]]
    for cov in ([[0.2, 0.3], [0.5, 0.1]], np.full((2, 2), 0.5)):
        assert GaussianMixture([0.5, 0.5], means, cov).covariance_type == "diagonal"
    # K = d = 1: both readings are the same law
    assert GaussianMixture([1.0], [[0.0]], [[2.0]]).covariance_type == "diagonal"
    # K != d: (K, d) is diagonal and (K, d, d) full
    assert GaussianMixture([0.2, 0.3, 0.5], np.zeros((3, 2)), np.ones((3, 2))).covariance_type == "diagonal"


@pytest.mark.parametrize("shape, hint", [((2, 2), "covariance_type='tied'"), ((3,), "covariance_type='spherical'")])
def test_tied_and_spherical_are_never_guessed(shape, hint):
    cov = np.eye(2) if len(shape) == 2 else np.ones(3)
    with pytest.raises(ValueError, match=rf"^covariances must be None.*covariance_type.*{hint}"):
        GaussianMixture([0.2, 0.3, 0.5], np.zeros((3, 2)), cov)


@pytest.mark.parametrize("kind, shape", [("full", (3, 2, 2)), ("diag", (3, 2)), ("tied", (2, 2)), ("spherical", (3,))])
def test_each_form_has_scikit_learns_shape(kind, shape):
    wrong = {(3, 2, 2): (2, 2), (3, 2): (3,), (2, 2): (3, 2), (3,): (3, 2)}[shape]
    cov = {"full": np.tile(np.eye(2), (3, 1, 1)), "diag": np.ones((3, 2)), "tied": np.eye(2),
           "spherical": np.ones(3)}[kind]
    assert GaussianMixture([0.2, 0.3, 0.5], np.zeros((3, 2)), cov, covariance_type=kind).covariances.shape == shape
    with pytest.raises(ValueError, match="^" + re.escape(f"covariances with covariance_type='{kind}' must have "
                                                         f"shape {shape}, got shape {wrong}")):
        GaussianMixture([0.2, 0.3, 0.5], np.zeros((3, 2)), np.ones(wrong), covariance_type=kind)


@pytest.mark.parametrize("bad", ["diagonl", "Full", 1, True, ["full"]])
def test_unknown_covariance_type_is_refused(bad):
    with pytest.raises(ValueError, match=r"^covariance_type must be None, 'full', 'diag', 'tied' or 'spherical'"):
        GaussianMixture([1.0], [[0.0, 0.0]], np.ones((1, 2)), covariance_type=bad)


def test_covariance_type_and_identity():
    with pytest.raises(ValueError, match=r"^covariance_type='tied' needs covariances"):
        GaussianMixture([1.0], [[0.0, 0.0]], None, covariance_type="tied")
    with pytest.raises(ValueError, match=r"^covariance_type='identity' takes covariances=None"):
        GaussianMixture([1.0], [[0.0, 0.0]], np.ones((1, 2)), covariance_type="identity")
    assert GaussianMixture([1.0], [[0.0, 0.0]], covariance_type="identity").covariance_type == "identity"


@pytest.mark.parametrize("kind, pattern", [
    ("tied", r"^covariances is not positive definite"),
    ("spherical", r"^covariances \(spherical, shape \(K,\)\) must be > 0"),
])
def test_invalid_tied_and_spherical_covariances(kind, pattern):
    cov = np.array([[1.0, 2.0], [2.0, 1.0]]) if kind == "tied" else np.array([1.0, 0.0, 2.0])
    with pytest.raises(ValueError, match=pattern):
        GaussianMixture([0.2, 0.3, 0.5], np.zeros((3, 2)), cov, covariance_type=kind)
    if kind == "tied":
        with pytest.raises(ValueError, match=r"^covariances is not symmetric"):
            GaussianMixture([0.2, 0.3, 0.5], np.zeros((3, 2)), [[1.0, 0.5], [0.0, 1.0]], covariance_type="tied")


# -- tied and spherical: the oracle against scipy, and against the full / diagonal forms ----


@pytest.mark.parametrize("kind", ["tied", "spherical"])
@pytest.mark.parametrize("pname", ["OU", "VP"])
def test_oracle_matches_scipy(kind, pname):
    process = PROCESSES[pname]
    g, w, mu, dense = make(kind, seed=1)
    x = points(g, 12, seed=2)
    for t in TIMES[pname]:
        a, s2 = coefficients(process, t)
        ref_lp, ref_s = reference(w, mu, dense, x, a, s2)
        logp, score = g.log_prob_and_score(x, t, process)
        np.testing.assert_allclose(logp, ref_lp, rtol=1e-12)
        scale = np.max(np.abs(ref_s)) + 1.0
        assert np.max(np.abs(score - ref_s)) <= 1e-12 * scale
    # one t per row is the same as each row at its own scalar t
    t = np.random.default_rng(3).uniform(0.0, 1.0, x.shape[0])
    logp, score = g.log_prob_and_score(x, t, process)
    for i, ti in enumerate(t):
        lp_i, s_i = g.log_prob_and_score(x[i:i + 1], float(ti), process)
        assert abs(lp_i[0] - logp[i]) <= 1e-13 * (1 + abs(logp[i]))
        assert np.max(np.abs(s_i[0] - score[i])) <= 1e-13 * (1 + np.max(np.abs(score[i])))


@pytest.mark.parametrize("kind", ["tied", "spherical"])
def test_equals_the_same_law_written_as_full(kind):
    g, w, mu, dense = make(kind, K=5, d=4, seed=4)
    full = GaussianMixture(w, mu, dense, covariance_type="full")
    x = points(g, 20, seed=5)
    for t in (0.0, 0.01, 1.0):
        np.testing.assert_allclose(g.log_prob(x, t), full.log_prob(x, t), rtol=1e-12)
        np.testing.assert_allclose(g.score(x, t), full.score(x, t), rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(g.covariance(), full.covariance(), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(g.mean(), full.mean(), rtol=1e-15)


def test_tied_is_factorised_once(monkeypatch):
    calls = []
    real = gm_module.eigh_spd

    def counting(cov, name):
        calls.append(cov.shape)
        return real(cov, name)

    monkeypatch.setattr(gm_module, "eigh_spd", counting)
    g = make("tied", K=50, d=6, seed=6)[0]
    g.score(np.zeros((7, 6)), np.linspace(0, 1, 7))
    g.at(0.5)
    assert calls[0] == (6, 6) and len(calls) == 2  # once here, once for the marginal at(0.5)


@pytest.mark.parametrize("kind", ["tied", "spherical"])
def test_at_keeps_the_form_and_is_the_marginal(kind):
    g, w, mu, dense = make(kind, seed=7)
    for t in (0.0, 0.3):
        m = g.at(t)
        assert m.covariance_type == kind and m.covariances.shape == g.covariances.shape
        x = points(g, 6, seed=8)
        np.testing.assert_allclose(m.log_prob(x), g.log_prob(x, t), rtol=1e-12)
        np.testing.assert_allclose(m.score(x), g.score(x, t), rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["tied", "spherical"])
def test_sample_moments(kind):
    n = 20_000
    g, w, mu, dense = make(kind, K=3, d=3, seed=9)
    x, labels = g.sample(n, np.random.default_rng(10), return_labels=True)
    for k in range(3):
        xk = x[labels == k]
        # 4 standard errors per entry (fixed seed)
        assert np.all(np.abs(xk.mean(axis=0) - mu[k]) <= 4 * np.sqrt(np.diag(dense[k]) / len(xk)))
        ck = xk - xk.mean(axis=0)
        se = (ck[:, :, None] * ck[:, None, :]).std(axis=0, ddof=1) / np.sqrt(len(xk))
        assert np.all(np.abs(np.cov(xk, rowvar=False) - dense[k]) <= 4 * se)
    x32 = g.sample(50, np.random.default_rng(11), dtype=np.float32)
    assert x32.dtype == np.float32 and np.array_equal(x32, g.sample(50, np.random.default_rng(11)).astype(np.float32))


@pytest.mark.parametrize("kind", ["tied", "spherical"])
def test_float32_points(kind):
    g = make(kind, seed=12)[0]
    x32 = points(g, 10, seed=13).astype(np.float32)
    lp32, s32 = g.log_prob_and_score(x32, 0.2)
    lp64, s64 = g.log_prob_and_score(x32.astype(np.float64), 0.2)
    assert lp32.dtype == s32.dtype == np.float32
    np.testing.assert_allclose(lp32, lp64, rtol=1e-5)
    assert np.max(np.abs(s32 - s64)) <= 1e-5 * (1 + np.max(np.abs(s64)))


def test_zero_weight_component_of_a_tied_mixture_changes_nothing():
    g, w, mu, dense = make("tied", K=3, d=2, seed=14)
    padded = GaussianMixture(np.insert(w, 1, 0.0), np.insert(mu, 1, [0.0, 0.0], axis=0), g.covariances,
                             covariance_type="tied")
    x = points(g, 6, seed=15)
    assert np.array_equal(padded.log_prob(x, 0.3), g.log_prob(x, 0.3))
    assert np.array_equal(padded.score(x, 0.3), g.score(x, 0.3))


@pytest.mark.parametrize("kind", ["identity", "diag", "full", "tied", "spherical"])
def test_component_is_the_one_component_law(kind):
    rng = np.random.default_rng(16)
    cov = {"identity": None, "diag": rng.uniform(0.5, 1.5, (3, 2)), "full": np.stack([spd(2, rng) for _ in range(3)]),
           "tied": spd(2, rng), "spherical": rng.uniform(0.5, 1.5, 3)}[kind]
    g = GaussianMixture([0.2, 0.3, 0.5], rng.standard_normal((3, 2)), cov,
                        covariance_type=None if kind == "identity" else kind)
    x = rng.standard_normal((5, 2))
    for k in range(3):
        c = g.component(k)
        assert c.n_components == 1 and c.covariance_type == g.covariance_type
        assert np.array_equal(c.means[0], g.means[k])
        single_dense = c.covariance()
        np.testing.assert_allclose(c.log_prob(x), multivariate_normal(g.means[k], single_dense).logpdf(x), rtol=1e-12)
    with pytest.raises(ValueError, match=r"^k must be < K = 3"):
        g.component(3)


def test_repr_names_the_covariance_type():
    assert repr(make("tied")[0]) == "GaussianMixture(K=4, d=3, covariance_type='tied')"
    assert repr(GaussianMixture.ring()) == "GaussianMixture(K=8, d=2, covariance_type='diagonal')"


# -- serialisation and JSON targets -------------------------------------------------------


@pytest.mark.parametrize("kind", ["tied", "spherical"])
def test_dict_and_record_round_trip(kind):
    g = make(kind, seed=17)[0]
    spec = json.loads(json.dumps(g.to_dict()))
    assert spec["covariance_type"] == kind
    for back in (GaussianMixture.from_dict(spec), from_record(json.loads(json.dumps(to_record(g))))):
        assert back.covariance_type == kind and np.array_equal(back.covariances, g.covariances)
        x = points(g, 4, seed=18)
        assert np.array_equal(back.score(x, 0.3), g.score(x, 0.3))


def test_an_ambiguous_diagonal_mixture_round_trips_with_its_type():
    g = GaussianMixture([0.5, 0.5], [[0.0, 0.0], [1.0, 1.0]], SHARED, covariance_type="diag")
    spec = g.to_dict()
    assert spec["covariance_type"] == "diag"
    assert GaussianMixture.from_dict(spec).covariance_type == "diagonal"
    # the forms read from their shape are written as they always were, without the key
    assert "covariance_type" not in GaussianMixture.ring().to_dict()
    assert "covariance_type" not in GaussianMixture.paper_family(3, 2, 1.0, 0).to_dict()


def test_a_record_written_before_covariance_type_reads_as_diagonal():
    # older runs recorded (K, d) variances without the key: then they could only be diagonal
    old = {"type": "GaussianMixture", "weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]],
           "covariances": SHARED.tolist()}
    assert from_record(old).covariance_type == "diagonal"
    with pytest.raises(ValueError, match="ambiguous"):  # a user's file without the key is refused
        GaussianMixture.from_dict({k: v for k, v in old.items() if k != "type"})


def test_json_target_with_covariance_type(tmp_path):
    spec = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]], "covariances": SHARED.tolist(),
            "covariance_type": "tied"}
    path = tmp_path / "tied.json"
    path.write_text(json.dumps(spec))
    g = from_spec(str(path))
    assert g.covariance_type == "tied" and np.array_equal(g.covariances, SHARED)
    path.write_text(json.dumps({k: v for k, v in spec.items() if k != "covariance_type"}))
    with pytest.raises(ValueError, match=r"^target file .*tied\.json: covariances of shape \(2, 2\) with K = d = 2 "
                                         r"is ambiguous"):
        from_spec(str(path))
    path.write_text(json.dumps({**spec, "covariance_type": True}))
    with pytest.raises(ValueError, match=r"covariance_type must be None, 'full'"):
        from_spec(str(path))


@pytest.mark.parametrize("key, value, where", [
    ("means", [[True, False], [1.0, 0.5]], r"means\[0\]\[0\]"),
    ("means", [[0.5, 1.0], [1.0, False]], r"means\[1\]\[1\]"),
    ("weights", [0.5, True], r"weights\[1\]"),
    ("covariances", [[1.0, True], [0.5, 0.5]], r"covariances\[0\]\[1\]"),
    ("covariances", [[True, False], [False, True]], r"dtype bool"),
])
def test_booleans_in_a_json_target_are_refused_naming_the_key(tmp_path, key, value, where):
    spec = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]], "covariances": [[1.0, 2.0], [0.5, 0.5]]}
    spec[key] = value
    path = tmp_path / "t.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=rf"^target file .*t\.json: {key} .*{where}"):
        from_spec(str(path))


def test_booleans_mixed_into_lists_are_refused_by_the_library_too():
    with pytest.raises(ValueError, match=r"^weights must hold numbers, got the boolean True at weights\[0\]"):
        GaussianMixture([True, 0.0], [[0.0], [1.0]])


def test_command_line_refuses_a_boolean_or_ambiguous_json_target(tmp_path):
    bad = tmp_path / "bool.json"
    bad.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[True, False], [1.0, 0.5]]}))
    ambiguous = tmp_path / "ambiguous.json"
    ambiguous.write_text(json.dumps({"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]],
                                     "covariances": SHARED.tolist()}))
    for target, pattern in ((bad, "means must hold numbers, got the boolean True at means[0][0]"),
                            (ambiguous, "pass covariance_type='diag' or covariance_type='tied'")):
        result = subprocess.run([str(SCRIPT), "train", str(tmp_path / "run"), "--target", str(target)],
                                capture_output=True, text=True, env=dict(os.environ), timeout=600)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and pattern in lines[0], result.stderr
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("key, value", [
    ("means", [[0.0, 1.0], [1.0]]),
    ("covariances", [[1.0, [2.0]], [0.5, 0.5]]),
])
def test_ragged_or_deeply_nested_lists_are_refused_naming_the_key(tmp_path, key, value):
    spec = {"weights": [0.5, 0.5], "means": [[0.0, 0.0], [1.0, 1.0]], "covariances": [[1.0, 2.0], [0.5, 0.5]]}
    spec[key] = value
    path = tmp_path / "t.json"
    path.write_text(json.dumps(spec))
    with pytest.raises(ValueError, match=rf"^target file .*t\.json: {key} must be a rectangular array of numbers"):
        from_spec(str(path))


@pytest.mark.parametrize("kind", ["full", "tied"])
def test_a_positive_definite_covariance_beyond_float64_says_why_it_is_refused(kind):
    """diag(1e-300, 1) is positive definite with eigenvalues in the documented range, yet as
    a full or tied covariance it was refused as 'not positive definite (smallest eigenvalue
    1e-300, largest 1)', a claim its own figures contradict. The reason is the condition
    number beyond 1 / (d eps); the message now says that, and what to pass instead."""
    cov = np.diag([1e-300, 1.0])
    with pytest.raises(ValueError, match=r"^covariances(\[0\])? is not positive definite to float64 precision: its "
                                         r"smallest eigenvalue 1e-300 is below d eps = 4.44e-16 times its largest, 1 "
                                         r"\(condition number 1e\+300\).*covariance_type='diag'"):
        GaussianMixture([1.0], [[0.0, 0.0]], cov[None] if kind == "full" else cov, covariance_type=kind)
    same = GaussianMixture([1.0], [[0.0, 0.0]], [[1e-300, 1.0]], covariance_type="diag")  # as the message says
    assert same.log_prob(np.array([[0.0, 0.0]]))[0] == pytest.approx(-np.log(2 * np.pi * 1e-150), rel=1e-15, abs=0)
    # a covariance whose computed smallest eigenvalue is <= 0 keeps the plain message
    with pytest.raises(ValueError, match=r"^covariances(\[0\])? is not positive definite \(smallest eigenvalue -1, "):
        GaussianMixture([1.0], [[0.0, 0.0]], np.array([[1.0, 2.0], [2.0, 1.0]])[None] if kind == "full"
                        else np.array([[1.0, 2.0], [2.0, 1.0]]), covariance_type=kind)
    # the docstring states the limit
    assert "condition number below about 4.5e15 / d" in " ".join(GaussianMixture.__doc__.split())
