"""Target specs, run configurations and run folders (the library under the sgm-ref command)."""

import json

import numpy as np
import pytest

from sgm_ref import GaussianMixture
from sgm_ref.runs import RUN_FILES, RunError, create, make_config, read_config, sample_run, streams, train
from sgm_ref.targets import ProductMixture
from sgm_ref.targets.spec import from_record, from_spec, to_record


# -- target specs ----------------------------------------------------------------------

def _same_mixture(a, b):
    return a.to_dict() == b.to_dict()


def test_presets():
    assert _same_mixture(from_spec("ring"), GaussianMixture.ring())
    assert _same_mixture(from_spec(" ring:k=6,radius=3,std=0.2 "), GaussianMixture.ring(6, 3.0, 0.2))
    assert _same_mixture(from_spec("gmm:d=5,k=3,radius=2.5,seed=7"), GaussianMixture.paper_family(5, 3, 2.5, 7))
    assert _same_mixture(from_spec("gmm:radius=2,k=3,d=5"), GaussianMixture.paper_family(5, 3, 2.0, 0))


def test_product_preset_and_records():
    p = from_spec("product:d=3,shift=2,std=0.5")
    assert p.to_dict() == ProductMixture.symmetric(3, 2.0, 0.5).to_dict()
    for target in (p, GaussianMixture.ring(), from_spec("gmm:d=4,k=2,radius=1")):
        again = from_record(to_record(target))
        assert type(again) is type(target) and again.to_dict() == target.to_dict()
    with pytest.raises(ValueError, match="'type'"):
        from_record({"weights": [1.0]})
    with pytest.raises(ValueError, match="product mixture spec"):
        from_record({"type": "ProductMixture", "weights": [[0.5, 0.5]]})


def test_preset_names_win_over_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ring").write_text("not a target")
    assert from_spec("ring").to_dict() == GaussianMixture.ring().to_dict()


def test_json_file(tmp_path):
    mixture = GaussianMixture([0.2, 0.8], [[0.0, 1.0], [2.0, -1.0]], [[[1.0, 0.3], [0.3, 0.5]], [[0.2, 0], [0, 0.2]]])
    path = tmp_path / "m.json"
    path.write_text(json.dumps(mixture.to_dict()))
    assert _same_mixture(from_spec(str(path)), mixture)


@pytest.mark.parametrize("spec, match", [
    ("", "non-empty string"),
    (None, "non-empty string"),
    ("moons", "unknown target 'moons'"),
    ("ring:", "malformed target parameter"),
    ("ring:k=8,,std=1", "malformed target parameter"),
    ("ring:k=8,k=9", "given twice"),
    ("ring:sigma=1", "unknown parameter 'sigma'"),
    ("ring:k=two", "k must be an integer"),
    ("ring:std=wide", "std must be a number"),
    ("ring:std=-1", "std"),
    ("gmm:d=3", "gmm needs k, radius"),
    ("gmm:d=0,k=2,radius=1", "d"),
    ("nowhere.json", "cannot read target file"),
])
def test_bad_specs(spec, match):
    with pytest.raises(ValueError, match=match):
        from_spec(spec)


def test_invalid_json_mixture(tmp_path):
    (tmp_path / "a.json").write_text("[1, 2")
    (tmp_path / "b.json").write_text(json.dumps({"weights": [0.5, 0.5], "means": [[0.0], [1.0]],
                                                 "covariances": [[-1.0], [1.0]]}))
    with pytest.raises(ValueError, match="not valid JSON"):
        from_spec(str(tmp_path / "a.json"))
    with pytest.raises(ValueError, match="b.json: .*covariances"):
        from_spec(str(tmp_path / "b.json"))
    (tmp_path / "c.json").write_text(json.dumps({"weights": [1.0], "means": [[0.0]], "covariance": [[2.0]]}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['covariance'\]"):
        from_spec(str(tmp_path / "c.json"))


# -- configurations --------------------------------------------------------------------

def test_defaults_and_derived_times():
    config = make_config()
    assert config["train"]["T"] == 5.0 and config["sample"]["t0"] == config["train"]["t0"] == 1e-3
    vp = make_config({"process": {"name": "VP", "beta_min": 0.1, "beta_max": 20.0}})
    assert vp["train"]["T"] == 1.0 and vp["sample"]["T"] == 1.0
    assert make_config({"train": {"steps": 5, "lr": None}})["train"]["lr"] == 2e-3  # None keeps the default
    json.dumps(config, allow_nan=False)  # JSON-ready


@pytest.mark.parametrize("options, match", [
    ({"colour": 1}, "unknown configuration key 'colour'"),
    ({"train": {"epochs": 3}}, "unknown option"),
    ({"train": 3}, "must be a dict"),
    ({"seed": -1}, "seed"),
    ({"seed": 1.5}, "seed"),
    ({"train": {"t0": 5.0}}, "t0"),
    ({"train": {"ema_warmup": "yes"}}, "ema_warmup"),
    ({"sample": {"method": "ddim"}}, "sampler must be one of"),
    ({"sample": {"grid": "cosine"}}, "grid"),
    ({"evaluate": {"bound_n": 1}}, "bound_n"),
    ({"model": {"activation": "gelu"}}, "activation"),
    ({"process": {"name": "VE"}}, "process"),
])
def test_bad_configurations(options, match):
    with pytest.raises(ValueError, match=match):
        make_config(options)


def test_streams_are_independent_and_reproducible():
    a, b = streams(4), streams(4)
    draws = {name: rng.random(3) for name, rng in a.items()}
    assert all(np.array_equal(draws[name], b[name].random(3)) for name in draws)
    assert len({tuple(v) for v in draws.values()}) == len(draws)


# -- folders ---------------------------------------------------------------------------

SMALL = {"data": {"n": 500}, "model": {"width": 16, "depth": 2}, "train": {"steps": 30, "checkpoint_every": 10},
         "sample": {"n": 50, "n_steps": 10}}


def test_create_refuses_existing_folder_unless_forced(tmp_path):
    config = make_config(SMALL)
    create(tmp_path / "run", config)
    (tmp_path / "run" / "mine.txt").write_text("keep")
    (tmp_path / "run" / "samples.npy").write_text("stale")
    with pytest.raises(RunError, match="already exists"):
        create(tmp_path / "run", config)
    create(tmp_path / "run", config, force=True)
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["config.json", "mine.txt"]
    assert "samples.npy" in RUN_FILES
    with pytest.raises(RunError, match="parent .* does not exist"):
        create(tmp_path / "no" / "run", config)
    (tmp_path / "afile").write_text("")
    with pytest.raises(RunError, match="parent .*afile is not a folder"):
        create(tmp_path / "afile" / "run", config)


def test_train_and_sample_reproducible(tmp_path):
    for name in ("a", "b"):
        create(tmp_path / name, make_config(SMALL))
        train(tmp_path / name, progress=False)
    x = sample_run(tmp_path / "a")
    assert np.array_equal(x, sample_run(tmp_path / "b"))
    assert np.array_equal(x, np.load(tmp_path / "a" / "samples.npy"))
    y = sample_run(tmp_path / "a", {"n": 20, "method": "probability_flow"})
    assert y.shape == (20, 2) and read_config(tmp_path / "a")["sample"]["method"] == "probability_flow"


def test_corrupt_checkpoint_is_reported(tmp_path):
    create(tmp_path / "run", make_config(SMALL))
    (tmp_path / "run" / "checkpoint.npz").write_bytes(b"garbage")
    (tmp_path / "run" / ".tmp-abcmodel.npz").write_bytes(b"half")
    with pytest.raises(RunError, match="checkpoint .* is unreadable"):
        train(tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / ".tmp-abcmodel.npz").exists()  # a killed write's leftover


def test_read_config_errors(tmp_path):
    with pytest.raises(RunError, match="does not exist"):
        read_config(tmp_path / "none")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RunError, match="not a run folder"):
        read_config(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"format": "sgm_ref.run", "version": 99}))
    with pytest.raises(RunError, match="version 99"):
        read_config(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({"format": "sgm_ref.run", "version": 1}))
    with pytest.raises(RunError, match="incomplete"):
        read_config(tmp_path / "empty")
    (tmp_path / "empty" / "config.json").write_text(json.dumps({**make_config(), "trian": {}}))
    with pytest.raises(RunError, match="unknown key"):
        read_config(tmp_path / "empty")
