"""`sgm-ref evaluate --nll N` and `sgm-ref audit --nll N`: the model's NLL, the target's, and the gap."""

import json

import numpy as np

from _cli import assert_one_line_error, run

AUDITED = '''
from sgm_ref import GaussianMixture

_target = GaussianMixture.paper_family(d=3, k=2, radius=2.0, rng=0)

def oracle(x, t):
    return _target.score(x, t)

def wrong(x, t):
    return -x  # the score of N(0, I)
'''

AUDIT = ["--target", "gmm:d=3,k=2,radius=2,seed=0", "--n-steps", "20", "--profile-n", "50", "--bound-n", "4",
         "--T", "8"]


def test_audit_nll_gap_is_zero_for_the_oracle_and_positive_for_a_wrong_score(tmp_path):
    (tmp_path / "audited.py").write_text(AUDITED)
    gaps = {}
    for name in ("oracle", "wrong"):
        path = tmp_path / f"{name}.json"
        result = run("audit", "--score", f"audited:{name}", *AUDIT, "--nll", "200", "--json", path, cwd=tmp_path)
        assert "an estimate of KL(p_t0 || model)" in result.stdout
        entry = json.loads(path.read_text())["likelihood"]
        assert entry["divergence"] == "hutchinson" and entry["n"] == 200
        gaps[name] = entry["kl_gap"]
    # the oracle's model is p_t0 up to the solver, the prior's mismatch at T = 8 and the probes' noise
    assert abs(gaps["oracle"]["value"]) < 4 * gaps["oracle"]["standard_error"] + 1e-3
    assert gaps["wrong"]["value"] > 10 * gaps["wrong"]["standard_error"]


def test_audit_nll_refuses_float32_and_one_point(tmp_path):
    (tmp_path / "audited.py").write_text(AUDITED)
    for extra in (["--nll", "1"], ["--nll", "10", "--dtype", "float32"]):
        result = run("audit", "--score", "audited:oracle", *AUDIT, *extra, cwd=tmp_path, check=False)
        assert_one_line_error(result, "--nll")


def test_evaluate_nll(tmp_path):
    out = tmp_path / "run"
    run("demo", out, "--n", "500", "--width", "16", "--depth", "2", "--steps", "100", "--n-samples", "200",
        "--n-steps", "10", "--bound-n", "4", "--profile-n", "50", "--no-plots")
    before = json.loads((out / "report.json").read_text())
    assert "likelihood" not in before
    result = run("evaluate", out, "--nll", "100", "--bound-n", "4", "--profile-n", "50", "--no-plots")
    assert "an estimate of KL(p_t0 || model)" in result.stdout
    report = json.loads((out / "report.json").read_text())
    entry = report["likelihood"]
    assert entry["n"] == 100 and entry["divergence"] == "exact"
    assert entry["kl_gap"]["value"] > 0 and entry["kl_gap"]["standard_error"] > 0
    np.testing.assert_allclose(entry["kl_gap"]["value"],
                               entry["model_nll"]["value"] - entry["target_nll"]["value"], rtol=1e-9)
    # the figures before it are those of an evaluation without it
    assert report["samples"] == before["samples"] and report["score_error"] == before["score_error"]
    assert "## Likelihood" in (out / "report.md").read_text()
    assert_one_line_error(run("evaluate", out, "--nll", "1", "--no-plots", check=False), "nll")
    # an --nll beyond memory is refused before any stage runs, by its own name (it was refused
    # after the sample distances, the score profile and the bound, as "n", evaluate's --n)
    report = (out / "report.json").read_bytes()
    refused = run("evaluate", out, "--nll", "100000000000", "--no-plots", check=False)
    assert_one_line_error(refused, "--nll must be at most")
    assert (out / "report.json").read_bytes() == report
