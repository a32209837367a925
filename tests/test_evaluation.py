"""Reports: score_report against the oracle itself, sample_report, and the text of report.md."""

import numpy as np
import pytest

from sgm_ref import OU, GaussianMixture
from sgm_ref.evaluation import bound_text, markdown, sample_report, score_report, summary


def test_score_report_of_the_oracle_is_zero_error():
    g = GaussianMixture.paper_family(3, 2, 2.0, rng=0)
    report = score_report(lambda x, t: g.score(x, t), g, OU(), t0=1e-2, T=3.0, method="euler_maruyama",
                          grid="geometric", n_steps=20, rng=np.random.default_rng(0), profile_n=50, profile_times=4,
                          bound_n=4)
    assert report["score_error"]["error"] == [0.0] * 4 and report["score_error"]["integral"]["value"] == 0.0
    assert all(v > 0 for v in report["score_error"]["oracle_mean_square"])
    assert report["tv_bound"]["kl_path"] > 0  # discretisation only
    flow = score_report(lambda x, t: g.score(x, t), g, OU(), t0=1e-2, T=3.0, method="probability_flow",
                        grid="uniform", n_steps=5, rng=np.random.default_rng(0), profile_n=10, profile_times=2)
    assert flow["tv_bound"] is None
    with pytest.raises(ValueError, match="need 0 < t0 < T"):
        score_report(g.score, g, OU(), t0=0.0, T=3.0, method="euler_maruyama", grid="uniform", n_steps=5,
                     rng=np.random.default_rng(0))


def test_score_report_of_a_shifted_oracle_has_the_known_error():
    # s = grad log p_t + c: the error is |c|^2 at every point, and the integral over
    # [t0, T] is |c|^2 (T - t0) (OU: weight beta / 2 = 1), in expectation over the times
    g = GaussianMixture.paper_family(3, 2, 2.0, rng=0)
    c = np.array([0.3, -0.1, 0.2])
    report = score_report(lambda x, t: g.score(x, t) + c, g, OU(), t0=1e-2, T=3.0, method="euler_maruyama",
                          grid="geometric", n_steps=20, rng=np.random.default_rng(0), profile_n=2000,
                          profile_times=4, bound_n=4)
    se = report["score_error"]
    np.testing.assert_allclose(se["error"], c @ c, rtol=1e-12)
    np.testing.assert_allclose(se["relative"], c @ c / np.array(se["oracle_mean_square"]), rtol=1e-12)
    integral = se["integral"]
    assert 0 < integral["standard_error"] < 0.05 * c @ c * (3.0 - 1e-2)
    assert abs(integral["value"] - c @ c * (3.0 - 1e-2)) < 4 * integral["standard_error"]


def test_sample_report_and_text():
    g = GaussianMixture.ring()
    rng = np.random.default_rng(1)
    samples = sample_report(g.sample(500, rng), g, rng, n_reference=500, two_sample_n=200, bins=10)
    assert samples["histogram_tv"]["value"] < 0.2 and samples["n"] == 500
    assert len(samples["component_weights"]["soft"]) == 8
    report = {"target": "ring", "sampler": {"method": "euler_maruyama", "grid": "uniform", "n_steps": 5, "t0": 0.01,
                                            "T": 3.0}, "samples": samples,
              "score_error": {"t": [0.1], "error": [0.5], "standard_error": [0.01], "relative": [0.1],
                              "integral": {"value": 0.2, "standard_error": 0.01}},
              "tv_bound": {"tv": 0.3, "tv_se": 0.01, "kl": 0.1, "kl_path": 0.1, "kl_path_se": 0.01, "kl_prior": 0.0,
                           "kl_prior_se": 0.0, "tv_early_stopping": 0.01, "tv_early_stopping_se": 0.001}}
    text = markdown(report)
    assert "| certified TV upper bound | 0.3000 ± 0.01 |" in text and "| 0.1 | 0.5 ± 0.01 | 10.00% |" in text
    assert "histogram TV" in summary(report)


def test_a_bound_above_one_says_it_is_vacuous():
    bound = {"tv": 1.0, "tv_se": 0.1, "kl": 8.0, "kl_path": 8.0, "kl_path_se": 0.2, "tv_early_stopping": 0.01}
    assert bound_text(bound).startswith("1 (vacuous: TV(p_0, p_t0) + sqrt(KL / 2) = 2.01;")
    assert bound_text({**bound, "tv": 0.25, "tv_se": 0.01}) == "0.2500 ± 0.01"
