"""The isometric families: the same target, up to a rotation, in every d."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from sgm_ref.experiments import rate
from sgm_ref.experiments.families import SubspaceTilt, embedding
from sgm_ref.processes import OU

DIMENSIONS = (2, 3, 8, 32, 128, 512)


def test_embedding_is_orthonormal_and_seeded():
    P = embedding(64, 2, np.random.default_rng(5))
    assert np.allclose(P.T @ P, np.eye(2), rtol=0, atol=1e-14)
    assert np.array_equal(P, embedding(64, 2, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="k = 3 must be <= d = 2"):
        embedding(2, 3, np.random.default_rng(0))


def test_isometric_mixture_has_the_same_pairwise_distances_in_every_d():
    reference = pdist(rate.make_target("mixture-iso", 2).means)
    norms = np.linalg.norm(rate.make_target("mixture-iso", 2).means, axis=1)
    for d in DIMENSIONS:
        means = rate.make_target("mixture-iso", d).means
        assert means.shape == (4, d)
        assert np.allclose(pdist(means), reference, rtol=0, atol=1e-12), d
        assert np.allclose(np.linalg.norm(means, axis=1), norms, rtol=0, atol=1e-12), d
    # the old family is not isometric: its geometry changes with d
    assert not np.allclose(pdist(rate.make_target("mixture", 2).means), pdist(rate.make_target("mixture", 128).means),
                           atol=0.1)


def test_tilt_directions_have_the_same_geometry_in_every_d():
    reference = None
    for d in DIMENSIONS:
        tilt = rate.make_target("tilt-iso", d)
        directions = tilt.W @ tilt.P.T  # the unit directions w_j embedded in R^d
        gram = directions @ directions.T
        if reference is None:
            reference = gram
        assert np.allclose(gram, reference, rtol=0, atol=1e-12), d
        assert tilt.path_norm == pytest.approx(rate.DEFINITIONS["tilt-iso"]["path_norm"], rel=1e-12)


def test_subspace_tilt_oracle_is_rotation_equivariant_and_d_free():
    """The score in d = 2 and d = 64 at corresponding points agree, rotated."""
    small, large = rate.make_target("tilt-iso", 2), rate.make_target("tilt-iso", 64)
    rng = np.random.default_rng(0)
    u = rng.standard_normal((50, 2))
    t = rng.uniform(0.01, 2.0, 50)
    x_small = u @ small.P.T
    extra = rng.standard_normal((50, 64))
    extra -= (extra @ large.P) @ large.P.T  # orthogonal to the subspace
    x_large = u @ large.P.T + extra
    s_small, se_small = small.score_and_se(x_small, t, OU())
    s_large, se_large = large.score_and_se(x_large, t, OU())
    assert np.allclose(s_small @ small.P, s_large @ large.P, rtol=0, atol=1e-12)
    assert np.allclose(s_large + extra, (s_large @ large.P) @ large.P.T, rtol=0, atol=1e-12)  # -x off the subspace
    assert np.allclose(np.sum(se_small**2, axis=1), np.sum(se_large**2, axis=1), rtol=1e-10)


def test_subspace_tilt_samples_and_score_agree():
    """Stein's identity E_{p_0}[s(x) . v + div v] = 0 with v = P e_1 (so div v = 0): E[s . v] = 0,
    and the samples' projection off the subspace is standard normal."""
    tilt = rate.make_target("tilt-iso", 6)
    x = tilt.sample(2_000, np.random.default_rng(1))
    s = tilt.score(x, 1e-6, OU())
    v = tilt.P[:, 0]
    proj = s @ v
    assert abs(proj.mean()) < 4 * proj.std() / np.sqrt(proj.size)
    off = x - (x @ tilt.P) @ tilt.P.T
    assert abs(np.sum(off**2, axis=1).mean() - 4.0) < 0.4  # se 0.063  # chi^2_{d - k}, d - k = 4


def test_subspace_tilt_refuses_a_non_orthonormal_frame():
    with pytest.raises(ValueError, match="orthonormal"):
        SubspaceTilt(np.ones((3, 2)), np.zeros(3), np.ones(3), np.ones((4, 2)), rng=np.random.default_rng(0))


def test_tilt_refuses_a_sample_larger_than_memory_at_once():
    """SubspaceTilt.sample had no size check: n = 1e20 ran with no end, its memory growing
    (the mixture family refused it at once; found by a review)."""
    tilt = rate.make_target("tilt-iso", 4)
    with pytest.raises(ValueError, match="n = 100000000000000000000 is too large"):
        tilt.sample(10**20, np.random.default_rng(0))
