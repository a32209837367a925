"""A peer's sampler loop written out by hand, shared by the tests that audit such loops."""

import numpy as np

from sgm_ref import VP

_VP = VP()


def textbook_em(score, grid, x, noises, *, off_by_one=False, step_one_over_n=False):
    """score_sde's Euler–Maruyama on VP(), y <- y - h (f y - g^2 s) + sqrt(g^2 h) xi, with plantable
    bugs: the score and coefficients read at t_{k+1} instead of t_k, or h = 1/N instead of the grid's."""
    y, path, N = x.copy(), [x.copy()], grid.size - 1
    for k in range(N):
        t = grid[k + 1] if off_by_one else grid[k]
        h = 1.0 / N if step_one_over_n else grid[k] - grid[k + 1]
        f, g2 = _VP.f(t), _VP.g2(t)
        y = y - h * (f * y - g2 * score(y, np.full(len(y), t))) + np.sqrt(g2 * h) * noises(k)
        path.append(y)
    return np.stack(path)
