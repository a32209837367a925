"""Reports: every metric of a score function and of a sampler's output, with its error.

score_report:   the score-error profile E_{p_t}|s - grad log p_t|^2 on a time grid, its
                time integral, and the certified TV bound for a sampler (Girsanov +
                Pinsker; sgm_ref.metrics.bound): what `sgm-ref audit` prints.
sample_report:  sample-based distances between a sampler's output and the target.
evaluate_run:   both for a run folder, written as report.json and report.md (and plots).

Every number in a report is a plain float in a dict {"value": ..., "standard_error": ...}
(or a documented exception), so report.json can be read by any tool.
"""

import json
import os
import time

import numpy as np

from . import metrics
from ._validation import check_count, check_time_range
from .io import atomic_write
from .runs import RunError, load_model, load_samples, read_config, streams, update_section, write_json
from .targets.spec import from_record

__all__ = ["score_report", "sample_report", "evaluate_run", "markdown", "summary", "bound_text"]


def _estimate(value, se):
    return {"value": float(value), "standard_error": float(se)}


def score_report(score, target, process, *, t0, T, method, grid, n_steps, rng, profile_n=2000,
                 profile_times=12, bound_n=256, dtype=np.float64):
    """Score-error profile, its integral and the certified TV bound of a score function.

    Parameters
    ----------
    score : callable (x (n, d), t (n,)) -> (n, d)
    target : the true p_0 with an exact score (e.g. GaussianMixture)
    process : OU or VP
    t0, T : float
        The sampler's early-stopping time and horizon.
    method, grid, n_steps : the sampler the bound is for (sgm_ref.samplers.sample).
    rng : numpy.random.Generator
    profile_n : int
        Points per time of the profile, and for the integral 4 x profile_n points.
    profile_times : int
        Number of log-spaced times in [t0, T].
    bound_n : int
        Monte-Carlo pairs per step of the bound (sgm_ref.metrics.tv_upper_bound).

    Returns
    -------
    dict with "score_error" (t, error, standard_error, relative, integral) and
    "tv_bound" (every term of the TVBound with its standard error; None for the
    probability-flow ODE, which has no Girsanov bound).
    """
    t0, T = check_time_range(t0, T, process)
    profile_times = check_count(profile_times, "profile_times")
    ts = np.geomspace(t0, T, profile_times)
    error, error_se = metrics.score_error_profile(score, target, process, ts, profile_n, rng, dtype=dtype)
    # the oracle's own E|grad log p_t|^2 at the same times: the scale to read errors against
    scale = np.array([np.mean(np.sum(target.score(process.perturb(target.sample(profile_n, rng), t, rng)[0], t,
                                                              process)**2, axis=1)) for t in ts])
    integral = metrics.score_error_integral(score, target, process, t0, T, 4 * profile_n, rng, dtype=dtype)
    report = {"score_error": {"t": ts.tolist(), "error": error.tolist(), "standard_error": error_se.tolist(),
                              "oracle_mean_square": scale.tolist(), "relative": (error / scale).tolist(),
                              "integral": _estimate(*integral)}}
    if method == "probability_flow":
        report["tv_bound"] = None
    else:
        bound = metrics.tv_upper_bound(score, target, process, t0, T, grid, method, bound_n, rng, n_steps=n_steps,
                                       dtype=dtype)
        report["tv_bound"] = {key: value for key, value in bound.as_dict().items() if key != "grid"}
    return report


def sample_report(x, target, rng, *, n_reference, two_sample_n=2000, bins=20):
    """Distances between samples x (n, d) and the target, each with its standard error.

    Histogram TV (d <= 2, against the target's exact bin masses, with the floor an exact
    sample would show), sliced Wasserstein-1 and -2, unbiased MMD^2 and energy distance
    (on the first two_sample_n points against as many fresh target draws), the errors of
    the mean and the covariance, and for mixtures the recovered component weights.
    """
    n, d = x.shape
    reference = target.sample(n_reference, rng)
    m = min(two_sample_n, n, n_reference)
    out = {"n": n, "d": d}
    if d <= 2:
        h = metrics.histogram_tv(x, target, bins=bins)
        out["histogram_tv"] = {"value": h.value, "expected_bias": h.expected_bias, "bins": bins}
    for p in (1, 2):
        out[f"sliced_wasserstein_{p}"] = _estimate(*metrics.sliced_wasserstein(x, reference, rng, p=p))
    mm = metrics.mmd(x[:m], reference[:m])
    out["mmd2"] = {**_estimate(mm.value, mm.standard_error), "bandwidth": mm.bandwidth}
    out["energy_distance"] = _estimate(*metrics.energy_distance(x[:m], reference[:m]))
    out["mean_error"] = _estimate(*metrics.mean_error(x, target))
    out["covariance_error"] = _estimate(*metrics.covariance_error(x, target))
    if hasattr(target, "weights"):
        w = metrics.component_weights(x, target)
        out["component_weights"] = {"true": target.weights.tolist(), "soft": w.soft.tolist(),
                                    "soft_standard_error": w.soft_standard_error.tolist(),
                                    "hard": w.hard.tolist(), "hard_standard_error": w.hard_standard_error.tolist()}
    return out


def evaluate_run(folder, options=None, plots=True):
    """Evaluate a sampled run: write report.json, report.md and (with matplotlib) the plots.

    options update config["evaluate"]; the updated config.json is written only once the
    report is.

    Returns
    -------
    report : dict
    written : list of str, the plot files written ([] without matplotlib)
    plot_note : str or None, why plots were not written
    """
    config = read_config(folder)
    if options:
        config = update_section(config, "evaluate", options)
    model = load_model(folder, config)
    target = from_record(config["target_definition"])
    x = load_samples(folder, target.dim)
    rng = streams(config["seed"])["evaluate"]
    e, s = config["evaluate"], config["sample"]
    tic = time.perf_counter()
    report = {"target": config["target"], "sampler": dict(s), "samples": sample_report(
        x.astype(np.float64), target, rng, n_reference=e["n"], two_sample_n=e["two_sample_n"], bins=e["bins"])}
    report.update(score_report(model, target, model.process, t0=s["t0"], T=s["T"], method=s["method"],
                               grid=s["grid"], n_steps=s["n_steps"], rng=rng, profile_n=e["profile_n"],
                               profile_times=e["profile_times"], bound_n=e["bound_n"], dtype=model.dtype))
    report["training"] = _training_summary(folder)
    report["seconds"] = time.perf_counter() - tic
    write_json(os.path.join(folder, "report.json"), report)
    text = markdown(report)
    atomic_write(os.path.join(folder, "report.md"), lambda f: f.write(text.encode("utf-8")))
    if options:
        write_json(os.path.join(folder, "config.json"), config)
    written, note = [], None
    if plots:
        from .plots import plot_run
        written, note = plot_run(folder, target, x, report)
    return report, written, note


def _training_summary(folder):
    path = os.path.join(folder, "history.json")
    try:
        with open(path, encoding="utf-8") as f:
            loss = json.load(f)["loss"]
    except (OSError, ValueError, KeyError, TypeError):
        raise RunError(f"{path} is missing or unreadable: train the run first") from None
    tail = loss[-max(1, len(loss) // 20):]
    return {"steps": len(loss), "final_loss_mean": float(np.mean(tail)), "first_loss": float(loss[0])}


def bound_text(bound):
    """The bound ± its standard error, or why it says nothing: TV <= 1 always."""
    if bound["tv"] >= 1.0:
        return (f"1 (vacuous: TV(p_0, p_t0) + sqrt(KL / 2) = {bound['tv_early_stopping'] + (bound['kl'] / 2) ** 0.5:.3g};"
                f" path KL {bound['kl_path']:.3g} ± {bound['kl_path_se']:.2g})")
    return f"{bound['tv']:.4f} ± {bound['tv_se']:.2g}"


def _pm(entry, digits=3):
    return f"{entry['value']:.{digits}g} ± {entry['standard_error']:.2g}"


def markdown(report):
    """report.md: the figures a reader looks at first, then the score-error table."""
    smp, lines = report["samples"], []
    sampler = report["sampler"]
    lines += [f"# sgm_ref run: {report['target']}", "",
              f"{smp['n']} samples in d = {smp['d']} from {sampler['method']} on a {sampler['grid']} grid of "
              f"{sampler['n_steps']} steps, t0 = {sampler['t0']:g}, T = {sampler['T']:g}.", "",
              "## Distance to the target", "", "| metric | value ± standard error |", "|---|---|"]
    if "histogram_tv" in smp:
        h = smp["histogram_tv"]
        lines.append(f"| histogram TV ({h['bins']} bins per axis) | {h['value']:.4f} "
                     f"(an exact sample of this size shows {h['expected_bias']:.4f}) |")
    bound = report.get("tv_bound")
    if bound is not None:
        lines.append(f"| certified TV upper bound | {bound_text(bound)} |")
    for key, label in (("sliced_wasserstein_1", "sliced Wasserstein-1"), ("sliced_wasserstein_2", "sliced Wasserstein-2"),
                       ("mmd2", "MMD^2 (unbiased)"), ("energy_distance", "energy distance"),
                       ("mean_error", "mean error \\|m_hat - m\\|"), ("covariance_error", "covariance error (Frobenius)")):
        lines.append(f"| {label} | {_pm(smp[key])} |")
    if bound is not None:
        lines += ["", "The bound: TV <= TV(p_0, p_t0) + sqrt(KL / 2), KL = KL(p_T || N(0, I)) + path KL", "",
                  f"- TV(p_0, p_t0) = {bound['tv_early_stopping']:.3g} ± {bound['tv_early_stopping_se']:.2g}",
                  f"- KL(p_T || N(0, I)) = {bound['kl_prior']:.3g} ± {bound['kl_prior_se']:.2g}",
                  f"- path KL (score error and discretisation) = {bound['kl_path']:.3g} ± {bound['kl_path_se']:.2g}"]
    if "component_weights" in smp:
        cw = smp["component_weights"]
        lines += ["", "## Component weights (posterior assignment)", "", "| k | true | recovered (soft) |", "|---|---|---|"]
        lines += [f"| {k} | {w:.4f} | {s:.4f} ± {se:.1g} |"
                  for k, (w, s, se) in enumerate(zip(cw["true"], cw["soft"], cw["soft_standard_error"]))]
    se = report["score_error"]
    lines += ["", "## Score error E|s - grad log p_t|^2", "",
              f"Integrated over [t0, T] with weight beta(t)/2 (its Girsanov term): {_pm(se['integral'])}.", "",
              "| t | error ± standard error | relative to E\\|grad log p_t\\|^2 |", "|---|---|---|"]
    lines += [f"| {t:.3g} | {v:.3g} ± {s:.2g} | {r:.2%} |"
              for t, v, s, r in zip(se["t"], se["error"], se["standard_error"], se["relative"])]
    if "training" in report:
        tr = report["training"]
        lines += ["", f"Training: {tr['steps']} steps, loss {tr['first_loss']:.4g} at the first step, "
                      f"{tr['final_loss_mean']:.4g} averaged over the last 5%."]
    return "\n".join(lines) + "\n"


def summary(report):
    """A few lines for the terminal."""
    smp, out = report["samples"], []
    if "histogram_tv" in smp:
        h = smp["histogram_tv"]
        out.append(f"histogram TV        {h['value']:.4f}   (exact-sample floor {h['expected_bias']:.4f})")
    if report.get("tv_bound") is not None:
        b = report["tv_bound"]
        out.append(f"certified TV bound  {bound_text(b)}")
    out.append(f"sliced W2           {_pm(smp['sliced_wasserstein_2'])}")
    out.append(f"score error (int.)  {_pm(report['score_error']['integral'])}")
    return "\n".join(out)

