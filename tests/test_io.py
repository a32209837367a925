"""Model files (sgm_ref.io): round trips, atomic writes, and every kind of bad file."""

import io
import json
import os
import warnings
import zipfile

import numpy as np
import pytest

from sgm_ref import OU, VP
from sgm_ref.io import FORMAT_VERSION, ModelFileError, load, read_header, save
from sgm_ref.nn import MLP
from sgm_ref.score_model import ScoreModel


def make_model(process=OU(), parameterization="noise", dtype=np.float64, activation="softplus",
               embedding="fourier", seed=0):
    net = MLP(3, (7, 5), activation, embedding, dtype=dtype, rng=seed)
    # trained-looking parameters: not the initialisation that from_config would redo
    net.set_params(np.random.default_rng(seed + 1).standard_normal(net.n_params).astype(dtype))
    return ScoreModel(net, process, parameterization)


def leftovers(directory):
    return sorted(name for name in os.listdir(directory) if name.startswith(".tmp"))


# -- round trips -----------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("parameterization", ["score", "noise", "residual"])
@pytest.mark.parametrize("process", [OU(), VP(0.5, 12.0)], ids=repr)
def test_round_trip(process, parameterization, dtype, tmp_path):
    model = make_model(process, parameterization, dtype)
    path = tmp_path / "model.npz"
    save(model, path)
    loaded = load(path)
    assert loaded.network.params.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(loaded.params, model.params)
    assert loaded.network.config() == model.network.config()
    assert loaded.process == process and type(loaded.process) is type(process)
    assert loaded.parameterization == parameterization
    x = np.random.default_rng(0).standard_normal((5, 3)).astype(dtype)
    t = np.linspace(0.1, 1.0, 5)
    np.testing.assert_array_equal(loaded(x, t), model(x, t))
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("activation, embedding", [("relu", "linear"), ("tanh", "log"), ("silu", "fourier")])
def test_round_trip_architectures(activation, embedding, tmp_path):
    net = MLP(2, (4, 3, 5), activation, embedding, rng=3)
    model = ScoreModel(net, OU(), "residual")
    save(model, str(tmp_path / "m.npz"))  # str and PathLike both work
    loaded = load(str(tmp_path / "m.npz"))
    assert loaded.network.widths == (4, 3, 5) and loaded.network.activation == activation
    assert loaded.network.embedding == net.embedding
    np.testing.assert_array_equal(loaded.params, net.params)


def test_extra_metadata_and_header(tmp_path):
    model = make_model(VP(0.1, 20.0))
    extra = {"steps": 2000, "lr": 0.002, "target": {"name": "ring", "k": 8}, "note": "café"}
    save(model, tmp_path / "m.npz", extra=extra)
    header = read_header(tmp_path / "m.npz")
    assert header["extra"] == extra
    assert header["format"] == "sgm_ref.model" and header["version"] == FORMAT_VERSION
    assert header["process"] == {"name": "VP", "beta_min": 0.1, "beta_max": 20.0}
    assert header["network"] == model.network.config()
    assert header["parameterization"] == "noise" and header["dtype"] == "float64"
    save(model, tmp_path / "n.npz")
    assert read_header(tmp_path / "n.npz")["extra"] == {}


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ema_round_trip(dtype, tmp_path):
    model = make_model(dtype=dtype)
    ema = (model.params * 0.5).astype(dtype)
    save(model, tmp_path / "m.npz", ema=ema)
    np.testing.assert_array_equal(load(tmp_path / "m.npz").params, model.params)
    averaged = load(tmp_path / "m.npz", use_ema=True)
    assert averaged.params.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(averaged.params, ema)
    save(model, tmp_path / "plain.npz")
    with pytest.raises(ModelFileError, match="saved without ema"):
        load(tmp_path / "plain.npz", use_ema=True)
    with pytest.raises(ValueError, match="ema must have shape"):
        save(model, tmp_path / "bad.npz", ema=ema[:-1])


# -- atomic writes ---------------------------------------------------------------------------

def test_overwrite_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "m.npz"
    save(make_model(seed=0), path)
    save(make_model(seed=5), path)
    np.testing.assert_array_equal(load(path).params, make_model(seed=5).params)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


@pytest.mark.parametrize("partial", [False, True], ids=["fails-at-once", "fails-mid-write"])
def test_failed_write_keeps_the_old_file(partial, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    save(make_model(seed=0), path)
    before = path.read_bytes()

    def broken_savez(file, **arrays):
        if partial:
            file.write(b"PK\x03\x04 half an archive")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        save(make_model(seed=5), path)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
    np.testing.assert_array_equal(load(path).params, make_model(seed=0).params)


def test_failed_first_write_creates_nothing(tmp_path, monkeypatch):
    def broken_savez(file, **arrays):
        raise KeyboardInterrupt  # also on interruption the temporary file goes

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(KeyboardInterrupt):
        save(make_model(), tmp_path / "m.npz")
    assert os.listdir(tmp_path) == []


# -- bad files -------------------------------------------------------------------------------

def write_npz(path, header, **arrays):
    """An .npz with the given header: a dict (stored as JSON), a str (stored as it is) or None."""
    if header is not None:
        arrays["header"] = np.array(header if isinstance(header, str) else json.dumps(header))
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def valid_header(model, directory):
    """The header save writes for model (the starting point of the doctored files below)."""
    save(model, directory / "valid.npz")
    return read_header(directory / "valid.npz")


def assert_model_file_error(path, *fragments, use_ema=False):
    with pytest.raises(ModelFileError) as info:
        load(path, use_ema=use_ema)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path):
    assert_model_file_error(tmp_path / "nothing.npz", "no such file")


def test_truncated_file(tmp_path):
    path = tmp_path / "m.npz"
    save(make_model(), path, ema=make_model().params)
    raw = path.read_bytes()
    for cut in (0, 3, 10, 100, len(raw) // 2, len(raw) - 30, len(raw) - 1):
        path.write_bytes(raw[:cut])
        for use_ema in (False, True):
            assert_model_file_error(path, "not a readable sgm_ref model file", use_ema=use_ema)


def test_corrupted_parameter_bytes(tmp_path):
    """A flipped byte inside the stored parameters fails the zip CRC check."""
    path = tmp_path / "m.npz"
    model = make_model()
    save(model, path)
    raw = bytearray(path.read_bytes())
    start = raw.find(model.params.tobytes()[:16])
    assert start > 0
    raw[start + 40] ^= 0x01
    path.write_bytes(bytes(raw))
    assert_model_file_error(path, "corrupt")


def test_corrupted_zip_directory(tmp_path):
    path = tmp_path / "m.npz"
    save(make_model(), path)
    raw = bytearray(path.read_bytes())
    entry = raw.find(b"PK\x01\x02")  # first central directory entry
    raw[entry + 10] = 99  # its compression method: an unknown one
    path.write_bytes(bytes(raw))
    assert_model_file_error(path)


def test_not_an_archive(tmp_path):
    path = tmp_path / "m.npz"
    path.write_bytes(b"this is not a model file, just some text\n" * 10)
    assert_model_file_error(path, "not a readable sgm_ref model file")


def test_bare_npy(tmp_path):
    path = tmp_path / "params.npy"
    np.save(path, make_model().params)
    assert_model_file_error(path, "bare array")


def test_foreign_npz_without_header(tmp_path):
    path = tmp_path / "foreign.npz"
    write_npz(path, None, params=make_model().params, weights=np.ones(3))
    assert_model_file_error(path, "no header")
    with pytest.raises(ModelFileError, match="no header"):
        read_header(path)


def test_foreign_format_name(tmp_path):
    model = make_model()
    header = {**valid_header(model, tmp_path), "format": "other.model"}
    write_npz(tmp_path / "m.npz", header, params=model.params)
    assert_model_file_error(tmp_path / "m.npz", "not an sgm_ref model file", "other.model")


def test_header_that_is_not_json(tmp_path):
    write_npz(tmp_path / "m.npz", "{not json", params=make_model().params)
    assert_model_file_error(tmp_path / "m.npz", "unreadable header")


@pytest.mark.parametrize("version, fragment", [(FORMAT_VERSION + 1, "newer"), (0, "invalid format version"),
                                               ("1", "invalid format version"), (True, "invalid format version")])
def test_header_version(version, fragment, tmp_path):
    model = make_model()
    write_npz(tmp_path / "m.npz", {**valid_header(model, tmp_path), "version": version}, params=model.params)
    assert_model_file_error(tmp_path / "m.npz", fragment)
    if version == FORMAT_VERSION + 1:
        assert_model_file_error(tmp_path / "m.npz", "upgrade sgm_ref")


def test_params_of_the_wrong_length_or_dtype(tmp_path):
    model = make_model()
    header = valid_header(model, tmp_path)
    write_npz(tmp_path / "short.npz", header, params=model.params[:-1])
    assert_model_file_error(tmp_path / "short.npz", f"shape ({model.network.n_params - 1},)",
                            f"needs ({model.network.n_params},)")
    write_npz(tmp_path / "f32.npz", header, params=model.params.astype(np.float32))
    assert_model_file_error(tmp_path / "f32.npz", "float32", "float64")
    write_npz(tmp_path / "none.npz", header)
    assert_model_file_error(tmp_path / "none.npz", "no 'params' array")


@pytest.mark.parametrize("use_ema", [False, True])
def test_a_header_describing_a_huge_network_is_refused_before_it_is_built(use_ema, tmp_path):
    """Review: load built the header's network (drawing its random initialisation) before it compared
    the stored parameters with it, so a header's widths of [40000, 40000] beside 44 stored numbers
    took 26 GB at its peak and over a minute (0.8 s and 256 MB at [4000, 4000]), or the process
    killed for memory, before the shape was refused. The count the header implies is now compared
    first: widths of [2000, 2000] (32 MB to build) are refused with the same message without a large
    allocation (it peaked at 64 MB)."""
    import tracemalloc

    model = make_model()  # d = 3, 9 fourier features: sizes (12, 2000, 2000, 3) with the widths below
    count = 13 * 2000 + 2001 * 2000 + 2001 * 3  # sum (fan_in + 1) fan_out = 4,034,003 (MLP.n_params)
    header = valid_header(model, tmp_path)
    header["network"]["widths"] = [2000, 2000]
    header["arrays"] = ["params", "ema"]
    write_npz(tmp_path / "m.npz", header, params=model.params, ema=model.params)
    tracemalloc.start()
    try:
        assert_model_file_error(tmp_path / "m.npz", f"parameters have shape ({model.network.n_params},) and dtype "
                                f"float64, the architecture needs ({count},) float64", use_ema=use_ema)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20, peak


def test_save_refuses_non_finite_params_it_could_not_load(tmp_path):
    model = make_model()
    model.params[4] = np.nan
    with pytest.raises(ValueError, match="params contain non-finite values"):
        save(model, tmp_path / "m.npz")
    assert not (tmp_path / "m.npz").exists()


def test_non_finite_params(tmp_path):
    model = make_model()
    params = model.params.copy()
    params[4] = np.inf
    write_npz(tmp_path / "m.npz", valid_header(model, tmp_path), params=params)
    assert_model_file_error(tmp_path / "m.npz", "non-finite")


@pytest.mark.parametrize("key, value", [
    ("network", {"d": 3}),
    ("process", {"name": "VE"}),
    ("parameterization", "velocity"),
])
def test_header_that_describes_no_valid_model(key, value, tmp_path):
    model = make_model()
    write_npz(tmp_path / "m.npz", {**valid_header(model, tmp_path), key: value}, params=model.params)
    assert_model_file_error(tmp_path / "m.npz", "does not describe a valid model")


def test_header_without_a_network(tmp_path):
    model = make_model()
    header = valid_header(model, tmp_path)
    del header["network"]
    write_npz(tmp_path / "m.npz", header, params=model.params)
    assert_model_file_error(tmp_path / "m.npz", "does not describe a valid model")


def npy_bytes(array):
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


@pytest.mark.parametrize("use_ema", [False, True])
def test_a_member_that_is_not_npy_data_is_a_model_file_error(use_ema, tmp_path):
    """Review: numpy hands back a zip member without the .npy magic as its raw bytes, and load
    then failed on bytes.dtype with an AttributeError traceback."""
    model = make_model()
    path = tmp_path / "m.npz"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("header.npy", npy_bytes(np.array(json.dumps(valid_header(model, tmp_path)))))
        archive.writestr("params.npy", npy_bytes(model.params) if use_ema else model.params.tobytes())
        archive.writestr("ema.npy", model.params.tobytes())  # the same numbers, without the .npy header
    key = "ema" if use_ema else "params"
    assert isinstance(np.load(path)[key], bytes)  # what numpy gives
    assert_model_file_error(path, f"the {key!r} member is not an .npy array", use_ema=use_ema)


@pytest.mark.parametrize("names", [("params.npy", "params.npy"), ("params", "params.npy"),
                                   ("header.npy", "header.npy")])
def test_an_array_stored_twice_is_a_model_file_error_not_one_of_them_read(names, tmp_path):
    """Review: an archive holding params twice (zipfile's append mode writes a second entry of the same
    name; "params" beside "params.npy" is one key to numpy) loaded, silently, one of the two arrays
    (zipfile's last entry, or numpy's choice of "params"): here 2 theta, not theta. Like a JSON key
    given twice, which one is meant is not clear."""
    model = make_model()
    path = tmp_path / "m.npz"
    header = npy_bytes(np.array(json.dumps(valid_header(model, tmp_path))))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile's "Duplicate name"
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("header.npy", header)
            if names[0].startswith("header"):
                archive.writestr("header.npy", header)
                archive.writestr("params.npy", npy_bytes(model.params))
            else:
                archive.writestr(names[0], npy_bytes(model.params))
                archive.writestr(names[1], npy_bytes(2 * model.params))
    key = names[0].removesuffix(".npy")
    assert np.load(path).files.count(key) == 2
    assert_model_file_error(path, f"the array {key!r} more than once")
    with pytest.raises(ModelFileError, match="more than once"):
        read_header(path)


@pytest.mark.parametrize("change, fragment", [
    (lambda net: net.update(output_scale=2.0), "keys this version does not know, ['output_scale']"),
    (lambda net: net["time_embedding"].pop("n_frequencies"), "time_embedding lacks ['n_frequencies']"),
    (lambda net: net["time_embedding"].update(learned=True), "keys this version does not know, ['learned']"),
])
def test_a_network_setting_this_version_does_not_know_is_refused_not_ignored(change, fragment, tmp_path):
    """Review: unknown keys in the header's network config were dropped (a network other than the one
    described, loaded without a word), and a fourier embedding without n_frequencies got 4."""
    model = make_model()  # a fourier embedding of 4 frequencies: the parameter count fits either way
    header = valid_header(model, tmp_path)
    change(header["network"])
    write_npz(tmp_path / "m.npz", header, params=model.params)
    assert_model_file_error(tmp_path / "m.npz", "does not describe a valid model", fragment)


# -- what save accepts ------------------------------------------------------------------------

def test_save_rejects_extra_that_is_not_json(tmp_path):
    with pytest.raises(ValueError, match="extra"):
        save(make_model(), tmp_path / "m.npz", extra={"steps": np.int64(3)})


def test_save_rejects_non_finite_ema(tmp_path):
    model = make_model()
    with pytest.raises(ValueError, match="ema"):
        save(model, tmp_path / "m.npz", ema=np.full(model.params.shape, np.nan))


def test_zip_members_are_plain_arrays(tmp_path):
    """The file is an ordinary .npz anyone can read without sgm_ref (and without pickle)."""
    path = tmp_path / "m.npz"
    model = make_model()
    save(model, path, ema=model.params)
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == ["ema.npy", "header.npy", "params.npy"]
    with np.load(path, allow_pickle=False) as f:
        np.testing.assert_array_equal(f["params"], model.params)
        assert json.loads(str(f["header"]))["format"] == "sgm_ref.model"


# -- hostile headers (issue 11) ---------------------------------------------------------------

@pytest.mark.parametrize("header, match", [
    ("[" * 100_000, "unreadable header .*nested too deeply"),  # json: RecursionError
    ('{"format": ' + "[" * 200 + "]" * 200 + "}", "unreadable header .*nested more than 64 levels"),
    ("{not json", "unreadable header .*not valid JSON"),
])
def test_hostile_header_is_a_model_file_error(tmp_path, header, match):
    model = make_model()
    path = tmp_path / "m.npz"
    np.savez(path, header=np.array(header), params=model.params)
    with pytest.raises(ModelFileError, match=match):
        load(path)
    with pytest.raises(ModelFileError, match=match):
        read_header(path)


def test_load_json_turns_every_failure_into_a_value_error(tmp_path):
    from sgm_ref._json import MAX_DEPTH, load_json

    assert load_json('{"a": [1, 2.5, null]}', "x") == {"a": [1, 2.5, None]}
    assert load_json(b'[true]', "x") == [True]
    nested = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    assert load_json(nested, "x") is not None  # as deep as allowed
    (tmp_path / "f.json").write_bytes(b'{"k": "\xff"}')
    for source, match in (("[" * 100_000, "x is nested too deeply"), ("[" + nested + "]", "more than 64 levels"),
                          ("[1,", "x is not valid JSON"), (b"\xff", "not UTF-8"),
                          (open(tmp_path / "f.json", encoding="utf-8"), "not UTF-8")):
        with pytest.raises(ValueError, match=match):
            load_json(source, "x")


def test_a_non_finite_extra_is_refused_not_written_as_nan(tmp_path):
    """NaN is not JSON: a header holding it would not load in other JSON readers."""
    from sgm_ref.io import save

    model = ScoreModel(MLP(2, [4], rng=np.random.default_rng(0)), OU())
    with pytest.raises(ValueError, match="extra must be JSON-serialisable"):
        save(model, tmp_path / "m.npz", extra={"loss": float("nan")})
    assert not (tmp_path / "m.npz").exists()


# -- portability and the file system (review of 2026-12-05) ----------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_file_written_in_the_other_byte_order_loads_bit_exactly(dtype, tmp_path):
    """An .npz records its byte order: a model saved on a big-endian machine was refused
    here ("dtype >f8, the architecture needs float64"); its numbers are the same, swapped."""
    model = make_model(dtype=dtype)
    params = model.params.copy()
    params[:4] = [-0.0, np.finfo(dtype).smallest_subnormal, np.finfo(dtype).max, np.finfo(dtype).tiny]
    model.network.set_params(params)
    swapped = params.astype(params.dtype.newbyteorder(">" if np.little_endian else "<"))
    assert swapped.dtype.byteorder != "=" and swapped.tobytes() != params.tobytes()
    write_npz(tmp_path / "m.npz", valid_header(model, tmp_path), params=swapped, ema=swapped)
    for use_ema in (False, True):
        loaded = load(tmp_path / "m.npz", use_ema=use_ema)
        assert loaded.params.dtype == np.dtype(dtype) and loaded.params.dtype.isnative
        assert loaded.params.tobytes() == params.tobytes()  # bit for bit, -0.0 and the subnormal too
    save(model, tmp_path / "e.npz", ema=swapped)  # an ema array in the other byte order is the same numbers
    assert load(tmp_path / "e.npz", use_ema=True).params.tobytes() == params.tobytes()


def test_a_name_near_the_file_system_limit_can_be_saved(tmp_path):
    """The temporary's name held the whole target name after ".tmp-" and 8 random characters:
    a 250-byte name (the limit is 255) failed with "File name too long" naming the temporary."""
    model = make_model()
    for name in ("m" * 246 + ".npz", "é" * 123 + ".npz"):  # 250 bytes either way
        path = tmp_path / name
        with open(path, "wb"):  # the name itself is one the file system takes
            pass
        os.unlink(path)
        save(model, path)
        np.testing.assert_array_equal(load(path).params, model.params)
    assert leftovers(tmp_path) == []


def test_the_temporarys_name_tail_is_found_in_time_linear_in_its_length(monkeypatch):
    """Review: the tail was found by dropping one character at a time from the whole name and
    encoding the rest each time, ~n^2 / 2 character encodings: a name of 10^6 characters took
    minutes before the file system refused it. Now at most _SUFFIX_BYTES + 1 encodings, and the
    same tail (the end of the name within 200 bytes, whole characters)."""
    from sgm_ref import io as io_module

    calls = []

    def fsencode(name, encode=os.fsencode):
        calls.append(len(name))
        return encode(name)

    monkeypatch.setattr(io_module.os, "fsencode", fsencode)
    for name, tail in (("a" * 10**6 + ".npz", "a" * 196 + ".npz"), ("é" * 10**5, "é" * 100),
                       ("m.npz", "m.npz"), ("x" + "€" * 70, "€" * 66)):
        calls.clear()
        assert io_module._name_tail(name) == tail
        assert len(calls) <= io_module._SUFFIX_BYTES + 1 and max(calls) <= io_module._SUFFIX_BYTES


def test_overwriting_keeps_the_files_permissions(tmp_path):
    """Like open(), an overwrite keeps an existing file's mode: a private (0600) model file
    became 0644 (readable by all) when saved again."""
    path = tmp_path / "m.npz"
    save(make_model(seed=0), path)
    os.chmod(path, 0o600)
    save(make_model(seed=5), path)
    assert (os.stat(path).st_mode & 0o777) == 0o600
    np.testing.assert_array_equal(load(path).params, make_model(seed=5).params)
    os.chmod(path, 0o640)
    save(make_model(seed=0), path)
    assert (os.stat(path).st_mode & 0o777) == 0o640
    umask = os.umask(0o022)
    try:
        save(make_model(), tmp_path / "new.npz")  # a new file: 0o666 less the umask, as before
    finally:
        os.umask(umask)
    assert (os.stat(tmp_path / "new.npz").st_mode & 0o777) == 0o644


@pytest.mark.parametrize("extra, match", [
    ({1: "a", "1": "b"}, "extra's keys must be str, got the key 1"),  # written: a file load refused ("twice")
    ({"steps": 3, "sub": [{2: "x"}]}, "got the key 2"),  # written: read back as {"2": "x"}
    ({True: 1}, "got the key True"),
    ([1, 2], "extra must be a dict"),  # written: a header whose extra is not a dict
    ("notes", "extra must be a dict"),
])
def test_save_refuses_an_extra_it_would_not_read_back(extra, match, tmp_path):
    """save wrote extra={1: "a", "1": "b"} as a header with the key "1" twice, which load then
    refused ("unreadable header"): a file that could never be loaded. An int key came back a str."""
    with pytest.raises(ValueError, match=match):
        save(make_model(), tmp_path / "m.npz", extra=extra)
    assert os.listdir(tmp_path) == []


def test_save_refuses_an_extra_nested_beyond_what_load_reads(tmp_path):
    from sgm_ref._json import MAX_DEPTH

    deep = inner = {}
    for _ in range(MAX_DEPTH):
        inner["a"] = {}
        inner = inner["a"]
    with pytest.raises(ValueError, match="extra cannot be stored: load would refuse the file"):
        save(make_model(), tmp_path / "m.npz", extra=deep)
    assert os.listdir(tmp_path) == []
    with pytest.raises(ValueError, match="model must be a ScoreModel, got MLP"):
        save(make_model().network, tmp_path / "m.npz")
    ok = {"a": (1, 2), "b": {"c": [None, 2.5, "é"]}}  # a tuple is stored as a JSON list, as json does
    save(make_model(), tmp_path / "m.npz", extra=ok)
    assert read_header(tmp_path / "m.npz")["extra"] == {"a": [1, 2], "b": {"c": [None, 2.5, "é"]}}


def test_paths_that_name_no_file_are_value_errors_and_bytes_paths_work(tmp_path, monkeypatch):
    """save(model, "") made a temporary in the parent of the working folder and failed with
    FileNotFoundError ".tmp-... -> ''"; a bytes path, which os and np.load take, failed with
    TypeError "Can't mix bytes and non-bytes"; None or 5 were TypeErrors."""
    monkeypatch.chdir(tmp_path)
    model = make_model()
    for bad, match in (("", "path must name a file, got ''"), (None, "got NoneType"), (5, "got int")):
        with pytest.raises(ValueError, match=match):
            save(model, bad)
        with pytest.raises(ValueError, match=match):
            load(bad)
    assert os.listdir(tmp_path) == [] and leftovers(tmp_path.parent) == []
    path = os.fsencode(tmp_path / "é m.npz")
    save(model, path)
    np.testing.assert_array_equal(load(path).params, model.params)
    assert sorted(os.listdir(tmp_path)) == ["é m.npz"]


def test_os_error_text_of_a_bytes_file_name():
    """An OSError of a call on a bytes path names the file in bytes: the formatter raised
    TypeError ("startswith first arg must be bytes") in the middle of reporting the error."""
    from sgm_ref.io import os_error_text

    assert os_error_text(OSError(2, "No such file or directory", b"/data/m.npz")) == \
        "No such file or directory: /data/m.npz"
    assert os_error_text(OSError(28, "No space left on device", os.fsencode("/data/é/.tmp-x1model.npz"))) == \
        "cannot write into /data/é: No space left on device"
    assert os_error_text(OSError(18, "Invalid cross-device link", "/a", None, b"/b")) == \
        "Invalid cross-device link: /a -> /b"


def test_os_error_text_of_a_file_descriptor():
    """os.stat, os.chmod and os.listdir of a file descriptor put the int in the error's filename:
    the formatter raised TypeError ("expected str, bytes or os.PathLike object, not int") while
    reporting the error (a review)."""
    from sgm_ref.io import os_error_text

    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    with pytest.raises(OSError) as raised:
        os.stat(fd)  # closed: EBADF, with the descriptor as its filename
    assert raised.value.filename == fd
    assert os_error_text(raised.value) == f"Bad file descriptor: file descriptor {fd}"
    # a name of another type (a caller's own OSError) is shown as it is, not called a descriptor
    assert os_error_text(OSError(2, "No such file or directory", 1.5)) == "No such file or directory: 1.5"
    assert os_error_text(OSError(2, "No such file or directory", True)) == "No such file or directory: True"


# -- atomic writes: every way a write can fail leaves the old file or the new one -----------------

def test_a_path_ending_with_a_separator_is_a_value_error_and_leaves_nothing(tmp_path):
    """"m.npz/" (not a folder) failed in the final rename with NotADirectoryError naming the
    temporary file, which os_error_text turned into "cannot write into FOLDER: Not a
    directory", about a folder that was fine."""
    from sgm_ref.io import atomic_write

    (tmp_path / "old.npz").write_bytes(b"old")
    for name in ("m.npz", "old.npz"):
        with pytest.raises(ValueError, match=f"cannot write .*{name}/: a file name cannot end with '/'"):
            atomic_write(os.path.join(tmp_path, name) + "/", lambda f: f.write(b"new"))
        with pytest.raises(ValueError, match="a file name cannot end with"):
            save(make_model(), os.path.join(tmp_path, name) + "/")
    assert sorted(os.listdir(tmp_path)) == ["old.npz"] and (tmp_path / "old.npz").read_bytes() == b"old"


def test_a_new_files_mode_is_had_without_touching_the_umask(tmp_path, monkeypatch):
    """The mode of a new file came from os.umask(0) and back: for that instant every other
    thread's new file got 0o666 (world-writable). The umask is now read (Linux), and the
    mode is the one open() gives a file made beside it."""
    from sgm_ref.io import atomic_write

    if not os.path.exists("/proc/self/status"):
        pytest.skip("the umask is read from /proc (Linux)")
    for umask in (0o022, 0o077, 0o027):
        old = os.umask(umask)
        try:
            with open(tmp_path / f"plain-{umask:o}", "wb"):  # the independent mode: open()'s
                pass

            def no_umask(mask):
                raise AssertionError("os.umask was called")
            monkeypatch.setattr(os, "umask", no_umask)
            atomic_write(tmp_path / f"atomic-{umask:o}", lambda f: f.write(b"x"))
            monkeypatch.undo()
        finally:
            os.umask(old)
        assert (os.stat(tmp_path / f"atomic-{umask:o}").st_mode & 0o7777
                == os.stat(tmp_path / f"plain-{umask:o}").st_mode & 0o7777 == 0o666 & ~umask)


@pytest.mark.parametrize("failing", ["write", "fsync", "chmod", "replace"])
def test_an_error_at_any_step_keeps_the_old_file_and_removes_the_temporary(failing, tmp_path, monkeypatch):
    from sgm_ref.io import atomic_write

    path = tmp_path / "f.bin"
    path.write_bytes(b"old contents")
    os.chmod(path, 0o640)

    def fail(*args, **kwargs):
        raise OSError(5, "Input/output error")
    if failing == "write":
        write = lambda f: (f.write(b"new, half"), fail())  # noqa: E731
    else:
        write = lambda f: f.write(b"new contents")  # noqa: E731
        monkeypatch.setattr(os, failing, fail)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(path, write)
    monkeypatch.undo()
    assert path.read_bytes() == b"old contents" and os.stat(path).st_mode & 0o777 == 0o640
    assert os.listdir(tmp_path) == ["f.bin"]


def test_a_full_disk_is_said_with_the_files_name(tmp_path):
    import errno

    from sgm_ref.io import atomic_write, os_error_text

    path = tmp_path / "m.npz"
    path.write_bytes(b"old")

    def full(f):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a file object's write raises it: no name
    with pytest.raises(OSError) as info:
        atomic_write(path, full)
    assert info.value.errno == errno.ENOSPC and info.value.filename == os.fspath(path)
    assert os_error_text(info.value) == f"No space left on device: {path}"
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["m.npz"]


def test_a_read_only_folder_is_an_os_error_naming_the_folder(tmp_path, monkeypatch):
    """(Simulated: the tests may run as root, whom a read-only mode does not stop.)"""
    import errno
    import tempfile

    from sgm_ref.io import atomic_write, os_error_text

    def read_only(prefix, suffix, dir):
        name = os.path.join(dir, prefix + "abcdefgh" + suffix)
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)
    monkeypatch.setattr(tempfile, "mkstemp", lambda prefix, suffix, dir: read_only(prefix, suffix, dir))
    with pytest.raises(OSError) as info:
        atomic_write(tmp_path / "m.npz", lambda f: f.write(b"x"))
    assert os_error_text(info.value) == f"cannot write into {tmp_path}: Read-only file system"
    assert os.listdir(tmp_path) == []


def test_a_symbolic_link_is_replaced_and_its_target_left_as_it_was(tmp_path):
    """As the docstring says (unlike open(), which writes through the link)."""
    from sgm_ref.io import atomic_write

    (tmp_path / "target").write_bytes(b"old")
    os.symlink("target", tmp_path / "link")
    atomic_write(tmp_path / "link", lambda f: f.write(b"new"))
    assert not os.path.islink(tmp_path / "link") and (tmp_path / "link").read_bytes() == b"new"
    assert (tmp_path / "target").read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]



def test_a_symbolic_link_to_a_folder_is_refused_as_one(tmp_path):
    """A link to a folder is not replaced by the file (the user named a folder); the refusal said
    "it is a folder" of a name that is a link, and the docstring promised every link replaced."""
    from sgm_ref.io import atomic_write

    (tmp_path / "folder").mkdir()
    os.symlink("folder", tmp_path / "link")
    with pytest.raises(ValueError, match=r"cannot write .*link: it is a symbolic link to a folder; give a file name"):
        atomic_write(tmp_path / "link", lambda f: f.write(b"new"))
    assert os.path.islink(tmp_path / "link") and sorted(os.listdir(tmp_path)) == ["folder", "link"]
    assert os.listdir(tmp_path / "folder") == []


def _fsyncs_and_renames(monkeypatch):
    """A list that os.fsync (by the path of its descriptor) and os.replace append to, in order."""
    events = []
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", os.path.basename(b))),
                                                     replace(a, b))[1])
    return events


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads descriptors' paths from /proc")
def test_an_atomic_write_fsyncs_the_file_then_its_folder_after_the_rename(tmp_path, monkeypatch):
    """The rename is durable only once the folder is fsynced: without it a power cut could bring the
    old file back (or lose a new one) though the write had returned."""
    from sgm_ref.io import atomic_write

    events = _fsyncs_and_renames(monkeypatch)
    atomic_write(tmp_path / "m.npz", lambda f: f.write(b"x"))
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(".tmp-") and events[1][1] == "m.npz"
    assert events[2][1] == str(tmp_path)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads descriptors' paths from /proc")
def test_a_new_run_or_sweep_folder_is_fsynced_in_its_parent(tmp_path, monkeypatch):
    """A run folder that create() made, or a sweep's, has its entry in the parent fsynced, as the
    files in it have theirs: a power cut could otherwise lose the folder with its fsynced files."""
    from sgm_ref.experiments import sweep
    from sgm_ref.runs import create, make_config

    events = _fsyncs_and_renames(monkeypatch)
    create(tmp_path / "run", make_config())
    assert events[0] == ("fsync", str(tmp_path))
    events.clear()

    class Stop(Exception):
        pass

    def stop(folder):
        raise Stop
    monkeypatch.setattr(sweep, "_lock", stop)  # the sweep stops at its lock, right after making the folder
    with pytest.raises(Stop):
        sweep._sweep(str(tmp_path / "sweep"), None, 1, None, False, print)
    assert events == [("fsync", str(tmp_path))] and os.path.isdir(tmp_path / "sweep")
    events.clear()  # every level makedirs makes (only the last one's parent was fsynced: a review)
    with pytest.raises(Stop):
        sweep._sweep(str(tmp_path / "a" / "b" / "c"), None, 1, None, False, print)
    assert events == [("fsync", str(tmp_path)), ("fsync", str(tmp_path / "a")), ("fsync", str(tmp_path / "a" / "b"))]


def test_a_new_run_folder_whose_entry_cannot_be_fsynced_is_removed(tmp_path, monkeypatch):
    """An EIO in fsyncing the parent after mkdir left an empty run folder behind (outside the block
    that removes a folder it made), and the command run again said it "already exists" (a review)."""
    import errno

    from sgm_ref import runs
    from sgm_ref.runs import create, make_config

    def _fsync_folder(folder):
        raise OSError(errno.EIO, os.strerror(errno.EIO), folder)
    monkeypatch.setattr(runs, "_fsync_folder", _fsync_folder)
    with pytest.raises(OSError, match="Input/output error"):
        create(tmp_path / "run", make_config())
    assert os.listdir(tmp_path) == []

@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="reads descriptors' paths from /proc")
def test_atomic_path_fsyncs_what_the_writer_wrote_before_the_rename(tmp_path, monkeypatch):
    """A writer that takes a file name (matplotlib's) closes its file unsynced: atomic_path fsyncs
    it before the rename, so that a power cut cannot leave path renamed onto unwritten data."""
    from sgm_ref.io import atomic_path

    events = _fsyncs_and_renames(monkeypatch)
    with atomic_path(tmp_path / "a.gif") as tmp:
        with open(tmp, "wb") as f:
            f.write(b"GIF89a")
    assert [e[0] for e in events] == ["fsync", "replace", "fsync"]
    assert os.path.basename(events[0][1]).startswith(".tmp-") and events[2][1] == str(tmp_path)
    assert (tmp_path / "a.gif").read_bytes() == b"GIF89a"

def test_fsync_folder_lets_a_file_system_without_it_be_and_raises_other_errors(tmp_path, monkeypatch):
    """EINVAL (a file system that cannot fsync a folder) is let be; EIO is raised naming the folder."""
    import errno

    from sgm_ref.io import _fsync_folder, os_error_text

    def failing(code):
        def fsync(fd):
            raise OSError(code, os.strerror(code))
        return fsync

    monkeypatch.setattr(os, "fsync", failing(errno.EINVAL))
    _fsync_folder(tmp_path)
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(OSError) as raised:
        _fsync_folder(tmp_path)
    assert os_error_text(raised.value) == f"Input/output error: {tmp_path}"

KEEP_WRITING = """
import sys
import numpy as np
from sgm_ref.io import atomic_write
big = np.arange(1_000_000, dtype=np.float64)
i = 0
while True:
    i += 1
    atomic_write(sys.argv[1], lambda f: np.savez(f, v=big + i))
    if i == 2:
        print("writing", flush=True)
"""


def test_a_writer_stopped_or_killed_at_any_point_leaves_a_complete_file(tmp_path):
    """A process rewriting an 8 MB .npz in a loop, paused (SIGSTOP) at 8 random instants and
    finally killed (SIGKILL): the file is every time one complete version (v - v[0] = 0..n-1),
    and a kill leaves at most the temporary beside it."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "a.npz"
    child = subprocess.Popen([sys.executable, "-c", KEEP_WRITING, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "writing"
        pause = np.random.default_rng(0).uniform(0.0, 0.05, 8)
        for p in pause:
            time.sleep(p)
            os.kill(child.pid, signal.SIGSTOP)
            try:
                with np.load(path) as f:
                    v = f["v"]
                np.testing.assert_array_equal(v - v[0], np.arange(1_000_000, dtype=np.float64))
            finally:
                os.kill(child.pid, signal.SIGCONT)
        time.sleep(0.02)
    finally:
        child.kill()
        child.wait()
    with np.load(path) as f:
        v = f["v"]
    np.testing.assert_array_equal(v - v[0], np.arange(1_000_000, dtype=np.float64))
    others = [name for name in os.listdir(tmp_path) if name != "a.npz"]
    assert len(others) <= 1 and all(name.startswith(".tmp-") and name.endswith("a.npz") for name in others)


def test_load_json_reads_non_json_numbers_as_its_docstring_says_and_refuses_the_rest():
    """NaN / Infinity literals and 1e400 come back as nan / inf (the callers check: a header's
    process refuses them, tested below); a key twice, a byte that is not UTF-8, a UTF-8 BOM in
    text and an integer of 5000 digits are ValueErrors naming the source."""
    import math

    from sgm_ref._json import load_json

    value = load_json('{"a": NaN, "b": Infinity, "c": -Infinity, "d": 1e400, "e": -1e400, "f": 1e-400}', "x")
    assert math.isnan(value["a"]) and value["b"] == value["d"] == math.inf and value["c"] == value["e"] == -math.inf
    assert value["f"] == 0.0
    assert load_json(b'\xef\xbb\xbf{"a": 1}', "x") == {"a": 1}  # bytes: json skips the BOM
    for source, match in (('{"a": 1, "a": 1}', "^x has the key 'a' twice in one object"),
                          ('{"o": {"b": 1, "b": 2}}', "the key 'b' twice"),
                          (b'{"a": "\xc3("}', r"^x is not valid JSON \(not UTF-8 text: invalid continuation byte "
                                              r"at byte 7\)"),
                          ("\ufeff{}", "^x is not valid JSON .*BOM"),
                          ('{"a": ' + "9" * 5000 + "}", "^x is not readable JSON .*4300 digits"),
                          (np.array([1.0]), "^x is not JSON text"),
                          ("", "^x is not valid JSON")):
        with pytest.raises(ValueError, match=match):
            load_json(source, "x")


@pytest.mark.parametrize("literal, shown", [("NaN", "nan"), ("1e400", "inf"), ("-Infinity", "-inf")])
def test_a_non_finite_number_in_a_header_is_a_model_file_error(literal, shown, tmp_path):
    model = make_model(VP(0.5, 12.0))
    header = json.dumps(valid_header(model, tmp_path)).replace('"beta_max": 12.0', f'"beta_max": {literal}')
    assert literal in header
    write_npz(tmp_path / "h.npz", header, params=model.params)
    with pytest.raises(ModelFileError, match=f"the header does not describe a valid model .*got {shown}"):
        load(tmp_path / "h.npz")


def test_object_arrays_are_refused_not_unpickled(tmp_path):
    model = make_model()
    header = json.dumps(valid_header(model, tmp_path))
    np.savez(tmp_path / "a.npz", header=np.array([header], dtype=object), params=model.params)
    with pytest.raises(ModelFileError, match="unreadable header .*allow_pickle=False"):
        load(tmp_path / "a.npz")
    write_npz(tmp_path / "b.npz", header, params=model.params.astype(object))
    with pytest.raises(ModelFileError, match="the parameter array is corrupt .*allow_pickle=False"):
        load(tmp_path / "b.npz")


def test_load_json_reads_bytes_as_utf8_only():
    """Review: bytes went to json.loads, which also takes UTF-16 and UTF-32 (detected from the
    first bytes) and, through "surrogatepass", bytes that are no UTF-8 at all: b'"\\xed\\xa0\\x80"'
    gave the lone surrogate '\\ud800', which no UTF-8 writer can write back (a UnicodeEncodeError
    later, wherever the text is written). The docstring promised a ValueError for text that is
    not UTF-8; a leading byte-order mark is still read past, as before."""
    from sgm_ref._json import load_json

    for source in ('{"a": 1}'.encode("utf-16"), '{"a": 1}'.encode("utf-32"), b'{"a": "\xed\xa0\x80"}'):
        with pytest.raises(ValueError, match="x is not valid JSON .not UTF-8 text"):
            load_json(source, "x")
    with pytest.raises(ValueError, match="x is not valid JSON"):
        load_json('{"a": 1}'.encode("utf-16-le"), "x")
    assert load_json(b'\xef\xbb\xbf{"a": "\xc3\xa9"}', "x") == {"a": "\u00e9"}
    assert load_json(bytearray(b"[1]"), "x") == [1]
    assert load_json(io.BytesIO('{"\u00e9": 2}'.encode()), "x") == {"\u00e9": 2}


def test_use_ema_must_be_a_bool(tmp_path):
    """Found by a review: load(path, use_ema="no") loaded the parameter average (a truthy string)."""
    model = make_model()
    ema = model.params * 0.5
    save(model, tmp_path / "m.npz", ema=ema)
    with pytest.raises(ValueError, match="use_ema must be True or False, got 'no'"):
        load(tmp_path / "m.npz", use_ema="no")
    np.testing.assert_array_equal(load(tmp_path / "m.npz", use_ema=np.True_).params, ema)
    np.testing.assert_array_equal(load(tmp_path / "m.npz", use_ema=False).params, model.params)


def test_every_damaged_byte_gives_a_short_message_that_says_something(tmp_path):
    """Three bits flipped in each byte of a model file: every refusal is one line of at most
    a few hundred characters that names a reason. zipfile quoted the rest of an archive whose
    member-name length was damaged (messages of up to ~9,000 characters of raw bytes), and a
    member cut short or an extra-field length out of range gave an empty '()'."""
    path = tmp_path / "m.npz"
    save(make_model(), path, ema=make_model().params)
    raw = path.read_bytes()
    longest, empty = 0, []
    for i in range(len(raw)):
        damaged = bytearray(raw)
        damaged[i] ^= 0b01010100
        path.write_bytes(bytes(damaged))
        try:
            load(path)
        except ModelFileError as exc:
            message = str(exc)
            longest = max(longest, len(message))
            assert "\n" not in message, message
            if "()" in message:
                empty.append(i)
    assert longest <= 500 and not empty, (longest, empty[:5])


def test_round_trip_of_the_other_variance_preserving_processes(tmp_path):
    """The module docstring listed only OU and VP headers; a ScoreModel takes VPCosine and DDPM too,
    and their non-default settings come back: equal processes, the same scores bit for bit."""
    from sgm_ref import DDPM, VPCosine

    for process in (VPCosine(0.02, t_max=0.999), DDPM("squaredcos_cap_v2", num_train_timesteps=10),
                    DDPM("scaled_linear", 2e-4, 0.03, 50)):
        for dtype in (np.float64, np.float32):
            model = make_model(process, "noise", dtype)
            ema = (model.params * 0.5).astype(dtype)
            save(model, tmp_path / "m.npz", ema=ema)
            loaded = load(tmp_path / "m.npz")
            assert loaded.process == process and loaded.process.to_dict() == process.to_dict()
            assert loaded.params.tobytes() == model.params.tobytes() and loaded.dtype == np.dtype(dtype)
            assert load(tmp_path / "m.npz", use_ema=True).params.tobytes() == ema.tobytes()
            x, t = np.ones((3, 3), dtype), np.array([1e-3, 0.5, 0.99])
            assert loaded(x, t).tobytes() == model(x, t).tobytes()


def test_a_flipped_bit_that_unparses_the_arrays_header_is_a_model_file_error(tmp_path):
    """One bit makes the params member's 'descr': '<f8' into ',f8': NumPy's header parser
    (ast.literal_eval) raised SyntaxError, which load let out as a traceback (a member this large
    is parsed before its CRC is checked)."""
    from sgm_ref import ScoreModel

    path = tmp_path / "m.npz"
    save(ScoreModel(MLP(2, (128, 128, 128), rng=0), OU()), path)
    raw = bytearray(path.read_bytes())
    i = raw.index(b"'descr': '<f8'", raw.index(b"params.npy")) + len(b"'descr': '")
    raw[i] ^= 0x10  # '<' -> ','
    path.write_bytes(bytes(raw))
    with pytest.raises(ModelFileError, match=r"m.npz: the parameter array is corrupt \(invalid syntax"):
        load(path)


def test_an_ema_member_lost_from_the_archive_is_damage_not_a_file_saved_without_it(tmp_path):
    """One flipped bit of the zip directory (a member's comment length) can swallow the next
    member: the ema of a file saved with one vanished, and load said "saved without ema". The
    header lists the arrays written; files of earlier versions (no list) read as before."""
    model = make_model()
    save(model, tmp_path / "m.npz", ema=model.params * 0.5)
    assert read_header(tmp_path / "m.npz")["arrays"] == ["params", "ema"]
    with np.load(tmp_path / "m.npz") as f:
        kept = {k: f[k] for k in f.files if k != "ema"}
    np.savez(tmp_path / "lost.npz", **kept)
    with pytest.raises(ModelFileError, match=r"lost.npz: has no 'ema' array, though its header lists one "
                                             r"\(a damaged file\)"):
        load(tmp_path / "lost.npz", use_ema=True)
    np.testing.assert_array_equal(load(tmp_path / "lost.npz").params, model.params)
    header = json.loads(str(kept["header"]))
    del header["arrays"]  # a file of an earlier version
    np.savez(tmp_path / "old.npz", **{**kept, "header": np.array(json.dumps(header))})
    with pytest.raises(ModelFileError, match=r"has no 'ema' array \(saved without ema\)"):
        load(tmp_path / "old.npz", use_ema=True)
    save(model, tmp_path / "plain.npz")
    assert read_header(tmp_path / "plain.npz")["arrays"] == ["params"]
