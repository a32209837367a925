"""`sgm-ref audit` on a process that is not variance-preserving (VE, EDM, SubVP, flow) bounds the
sampler the model drives on its own process, not OU's sampler at equal log-SNR (a review of the
metrics: the bound was for the OU sampler on an OU grid while docs/audit.md promised "the sampler
it would drive"). Driven as a user drives it: the installed script in a subprocess."""

import json

import numpy as np
import pytest
from test_bound import gaussian_path_term_any

from _cli import assert_one_line_error, run
from sgm_ref.processes import from_spec
from sgm_ref.samplers import time_grid

MEAN, COV = [1.0, -0.5], [[0.6, 0.2], [0.2, 0.3]]
TARGET = {"weights": [1.0], "means": [MEAN], "covariances": [COV]}
MODELS = f'''
import numpy as np
from sgm_ref import GaussianMixture
from sgm_ref.processes import from_spec

G = GaussianMixture([1.0], [{MEAN}], [{COV}])


def exact(spec):
    process = from_spec(spec)
    return lambda x, t: G.score(x, t, process)


ve, edm, subvp, flow = (exact(s) for s in ("ve", "edm", "subvp", "flow"))
'''


@pytest.fixture
def folder(tmp_path):
    (tmp_path / "models.py").write_text(MODELS)
    (tmp_path / "gauss.json").write_text(json.dumps(TARGET))
    return tmp_path


@pytest.mark.parametrize("spec, T", [("edm", 10.0), ("ve", 1.0), ("subvp", 1.0), ("flow", 0.95)])
def test_audit_bounds_the_sampler_on_the_model_s_own_process(folder, spec, T):
    """The exact score's path KL (the report's floor) is the closed form of sgm_ref's
    Euler–Maruyama on this process and its own grid (test_bound.gaussian_path_term_any); through
    OU it was OU's sampler's: EDM 1.72 ± 0.04 against the closed form 3.23, VE 3.12 ± 0.06 against
    7.60 (SubVP and flow 3.5 and 1.3 standard errors off; the report said "audited_as" OU)."""
    path = folder / "report.json"
    result = run("audit", "--score", f"models:{spec}", "--target", "gauss.json", "--process", spec, "--T", T,
                 "--t0", 0.01 * min(T, 1.0), "--n-steps", 5, "--profile-n", 50, "--bound-n", 3000, "--seed", 0,
                 "--json", path, cwd=folder)
    report = json.loads(path.read_text())
    assert "audited_as" not in report and "OU" not in result.stdout
    process = from_spec(spec)
    grid = time_grid(T, 0.01 * min(T, 1.0), 5, "geometric", process)
    exact = gaussian_path_term_any(process, np.array(MEAN), np.array(COV), grid, "euler_maruyama")
    floor = report["floor"]["tv_bound"]
    assert abs(floor["kl_path"] - exact) < 4 * floor["kl_path_se"], (floor["kl_path"], floor["kl_path_se"], exact)
    assert floor["kl_path_se"] < 0.05 * exact  # and the test has power
    assert report["score_error"]["t"][0] == 0.01 * min(T, 1.0) and report["score_error"]["t"][-1] == T
    assert f"integral over [{0.01 * min(T, 1.0):g}, {T:g}]:" in result.stdout


def test_residual_exponential_is_refused_where_the_samplers_do_not_run_it(folder):
    """Through OU the audit bounded OU's residual scheme for a VE model; sgm_ref.samplers runs it on
    variance-preserving processes only, so there is no such sampler to bound."""
    result = run("audit", "--score", "models:ve", "--target", "gauss.json", "--process", "ve",
                 "--sampler", "residual_exponential", "--n-steps", 5, "--profile-n", 50, "--bound-n", 8,
                 cwd=folder, check=False)
    assert_one_line_error(result, "--sampler residual_exponential runs on a variance-preserving --process only")
