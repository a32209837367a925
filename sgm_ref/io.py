"""Model files: an .npz with the flat parameters and a JSON header, written atomically.

Header (JSON, stored as the array "header"):
    {"format": "sgm_ref.model", "version": 1, "network": MLP.config(),
     "process": the process's to_dict(): {"name": "OU"} | {"name": "VP", "beta_min": ..., "beta_max": ...}
                | {"name": "VPCosine", "s": ..., "t_max": ...} | {"name": "DDPM", "beta_schedule": ...,
                   "beta_start": ..., "beta_end": ..., "num_train_timesteps": ...},
     "parameterization": "...", "dtype": "float64" | "float32", "extra": {...},
     "arrays": ["params"] or ["params", "ema"] (the arrays written; files of earlier versions have none)}
Arrays: "params" (the flat vector), and optionally "ema" (the parameter average).
"""

import collections
import contextlib
import errno
import json
import os
import stat
import tempfile
import tokenize
import zipfile

import numpy as np

from ._json import load_json
from .nn import MLP, TimeEmbedding
from .nn.mlp import _layers_parameter_count
from .processes import process_from_dict
from .score_model import ScoreModel

__all__ = ["save", "load", "FORMAT_VERSION", "ModelFileError"]

FORMAT = "sgm_ref.model"
FORMAT_VERSION = 1


# what numpy and zipfile raise on damaged archives (a corrupt directory entry can
# announce an unknown compression method: NotImplementedError; a flipped flag an
# encrypted entry: RuntimeError; an .npy header a shape of 1e13 entries: MemoryError,
# "Unable to allocate 72.8 TiB for an array with shape ...", which names the shape)
# numpy's .npy header parser raises tokenize.TokenError for an unbalanced header dict (a damaged
# closing brace, a NUL byte in it): it was a traceback from load and read_header; and
# ast.literal_eval's SyntaxError for a dict that no longer parses (one flipped bit makes
# 'descr': '<f8' into ',f8': a traceback from evaluate, load and --grid-file)
_READ_ERRORS = (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError, KeyError, RuntimeError,
                MemoryError, tokenize.TokenError, SyntaxError)


def read_error_text(exc):
    """What a damaged file's reader raised, as one line of at most about 200 characters: zipfile
    quotes the rest of an archive whose member name is damaged (9,000 characters of bytes), a
    missing array is a bare KeyError ('step'), a member cut short a bare EOFError (''). Used by
    load's messages and sgm_ref.runs' for its training states."""
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        return f"{exc.args[0]!r} missing"
    text = " ".join(str(exc).split())
    if not text:
        return "cut short" if isinstance(exc, EOFError) else type(exc).__name__
    return text if len(text) <= 200 else text[:200] + "..."


class ModelFileError(ValueError):
    """A model file is unreadable, truncated, foreign, newer than this library, or inconsistent."""


def _file_name(path):
    """path as a str (a bytes path decoded as os does); ValueError for what names no file."""
    try:
        path = os.fsdecode(os.fspath(path))
    except TypeError:
        raise ValueError(f"path must be a str or os.PathLike naming a file, got {type(path).__name__}") from None
    if not path:
        raise ValueError("path must name a file, got ''")
    return path


def atomic_path(path):
    """A temporary file's name beside path, renamed onto path when the block ends without error.

    For writers that take a file name rather than a file object (matplotlib's animation
    writers). Readers see either the old file or the complete new one; on any error the
    temporary file is removed and path is untouched. The temporary's name ends with (up
    to _SUFFIX_BYTES bytes of) path's name, so it keeps the extension, and a name near the
    file system's limit (255 bytes) can still be written. An existing file keeps its
    permission bits, as with open(); a new one gets 0o666 less the umask. Unlike open(),
    a symbolic link at path is replaced by the new file (the file it points to is left as
    it was), but not a link to a folder: that is refused as the folder would be, since a
    user who names a folder (through a link or not) did not mean to replace it by a file.
    A process killed mid-write leaves path as it was and its temporary (.tmp-*) beside it.
    The temporary's data is fsynced before the rename and the folder after it (_fsync_folder),
    so that a power cut leaves the old file or the whole new one; an error in the folder's
    fsync (EIO) is raised with the new file in place, its entry perhaps not yet on disk.
    ValueError if path is a folder or a link to one, or ends with a separator.
    """
    return _atomic_path(path, sync=True)


@contextlib.contextmanager
def _atomic_path(path, sync):
    """atomic_path; sync=False for a writer that fsyncs the temporary itself (atomic_write)."""
    path = _file_name(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot write {path}: folder {directory} does not exist")
    if os.path.isdir(path):  # else the rename at the end fails, naming the temporary file
        what = "a symbolic link to a folder" if os.path.islink(path) else "a folder"
        raise ValueError(f"cannot write {path}: it is {what}; give a file name")
    if path.endswith(tuple(sep for sep in (os.sep, os.altsep) if sep)):  # as above (ENOTDIR)
        raise ValueError(f"cannot write {path}: a file name cannot end with {path[-1]!r}")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=_name_tail(os.path.basename(path)), dir=directory)
    os.close(fd)
    try:
        yield tmp
        if sync:  # the writer's data on disk before the rename makes it the file's (before the
            fd = os.open(tmp, os.O_RDONLY)  # chmod: mkstemp's 0600 lets the owner read it)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        # mkstemp makes the file private (0600); give it the mode a plain open() would:
        # an existing file's own, else 0o666 less the umask
        try:
            mode = stat.S_IMODE(os.stat(path).st_mode)
        except OSError:  # no file there yet (or a dangling link)
            mode = 0o666 & ~_umask()
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        _fsync_folder(directory)  # the rename itself on disk: a power cut may otherwise undo it
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _fsync_folder(folder):
    """Flush a folder's entries to disk (fsync of the folder), so that a file renamed into it or
    created there survives a power cut or a crash of the machine, as its data (fsynced by the
    writer) does: without it the new entry may be lost and the old file come back. A file system
    that cannot fsync a folder (EINVAL, ENOTSUP, EBADF on some network and FUSE mounts), and a
    folder one may write into but not read (it cannot be opened), are let be; any other OSError
    (EIO) is raised, naming the folder."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM):  # a folder one may write into but not read
            return
        raise
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            if exc.filename is None:
                exc.filename = os.fspath(folder)
            raise
    finally:
        os.close(fd)


def _umask():
    """The process's umask, read without changing it where Linux says it (/proc/self/status):
    os.umask(0) and back leaves, for an instant, every other thread's new files at 0o666."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)  # elsewhere: the only portable way
    os.umask(umask)
    return umask


# the longest tail of the target's name in a temporary's name: ".tmp-" and mkstemp's 8
# random characters beside it stay within the usual file-name limit of 255 bytes
_SUFFIX_BYTES = 200


def _name_tail(name):
    """The end of name within _SUFFIX_BYTES bytes of the file system's encoding (whole characters)."""
    tail = name[-_SUFFIX_BYTES:]  # each character is a byte at least (a name of a million took minutes)
    while len(os.fsencode(tail)) > _SUFFIX_BYTES:
        tail = tail[1:]
    return tail


def atomic_write(path, write):
    """Call write(file_object) on a temporary file beside path, then rename it onto path.

    Readers see either the old file or the complete new one, never a partial write;
    on any error the temporary file is removed and path is untouched, but for an error in
    fsyncing the folder after the rename (atomic_path), raised with the new file in place.
    An OSError from writing (a full disk: the file object's error names no file) is given
    path's name; numpy's short write ("8000 requested and 5104 written", no errno) is said
    as one.
    """
    with _atomic_path(path, sync=False) as tmp:  # fsynced below, through the file object
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
        except OSError as exc:
            if exc.filename is None and exc.strerror is not None:  # a system error (errno, strerror)
                exc.filename = os.fspath(path)
            elif exc.filename is None:
                raise OSError(exc.errno, f"the write stopped short ({exc}): a full disk or a file-size limit?",
                              os.fspath(path)) from exc
            raise


def os_error_text(exc):
    """An OSError on a user's file as one line: what went wrong, and with which file or folder."""
    what = exc.strerror or str(exc) or type(exc).__name__
    # '' shown, not blank; a bytes name (os's calls on a bytes path) decoded as os does; a file
    # descriptor (os.stat(fd) and the like put the int there) by its number, not a TypeError
    names = [(os.fsdecode(n) or "''") if isinstance(n, (str, bytes, os.PathLike))
             else f"file descriptor {n}" if isinstance(n, int) and not isinstance(n, bool)
             else str(n)  # whatever else a caller put there
             for n in (exc.filename, exc.filename2) if n is not None]
    if not names:
        return what
    if os.path.basename(names[0]).startswith(".tmp-"):  # an atomic write's temporary: name the folder
        return f"cannot write into {os.path.dirname(names[0]) or '.'}: {what}"
    return f"{what}: {' -> '.join(names)}"


def save(model, path, extra=None, ema=None):
    """Write a ScoreModel to path (.npz) atomically.

    Parameters
    ----------
    model : ScoreModel
    path : str or os.PathLike
    extra : dict, optional
        JSON-serialisable metadata stored in the header (e.g. training settings).
    ema : ndarray, optional
        An exponential moving average of the parameters to store beside them.

    Raises
    ------
    ValueError
        model not a ScoreModel; extra not a dict of str keys and JSON values that load
        reads back as written (an int key would come back a str, 1 and "1" both as "1",
        which load refuses as a key given twice; a tuple is taken, and comes back a list);
        non-finite params or ema; an ema of another shape or dtype than params; a path
        that names no file, names a folder, or lies in a folder that does not exist.
    OSError
        The write failed (a full disk, no permission): path is left as it was.
    """
    if not isinstance(model, ScoreModel):
        raise ValueError(f"model must be a ScoreModel, got {type(model).__name__}")
    if extra is not None and not isinstance(extra, dict):
        raise ValueError(f"extra must be a dict (or None), got {type(extra).__name__}")
    header = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "network": model.network.config(),
        "process": model.process.to_dict(),
        "parameterization": model.parameterization,
        "dtype": model.dtype.name,
        "extra": extra or {},
        # the arrays written: a damaged zip directory entry can swallow the next member, which
        # load would otherwise take for a file saved without it
        "arrays": ["params"] + ([] if ema is None else ["ema"]),
    }
    try:
        text = json.dumps(header, allow_nan=False)  # NaN and Infinity are not JSON: the header must load anywhere
    except (TypeError, ValueError) as exc:
        raise ValueError(f"extra must be JSON-serialisable (plain int, float, str, list, dict): {exc}") from None
    _check_keys(header["extra"])
    try:
        load_json(text, "the header")  # what load will read: not nested beyond its limit
    except ValueError as exc:
        raise ValueError(f"extra cannot be stored: load would refuse the file ({exc})") from None
    if not np.all(np.isfinite(model.params)):  # load would refuse the file
        raise ValueError("the model's params contain non-finite values; nothing was written")
    arrays = {"header": np.array(text), "params": model.params}
    if ema is not None:
        ema = np.asarray(ema)
        if _native(ema.dtype) == model.dtype:  # the same numbers in the other byte order: swapped exactly
            ema = ema.astype(model.dtype, copy=False)
        if ema.shape != model.params.shape or ema.dtype != model.dtype:
            raise ValueError(f"ema must have shape {model.params.shape} and dtype {model.dtype.name} "
                             f"(the model's), got {ema.shape} {ema.dtype}")
        if not np.all(np.isfinite(ema)):
            raise ValueError("ema contains non-finite values")
        arrays["ema"] = ema
    path = _file_name(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ValueError(f"cannot save to {path}: directory {directory} does not exist")
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _check_keys(extra):
    """Raise ValueError for a dict key in extra, at any depth, that is not a str (JSON makes it one)."""
    stack = [extra]  # no cycles: json.dumps has refused them
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            for key in value:
                if not isinstance(key, str):
                    raise ValueError(f"extra's keys must be str, got the key {key!r}: JSON stores every key as "
                                     "a str, so it would be read back as another key (and 1 beside \"1\" as one "
                                     "key given twice)")
            stack.extend(value.values())
        elif isinstance(value, (list, tuple)):
            stack.extend(value)


def read_header(path):
    """The JSON header of a model file, checked for format and version."""
    with _open(path) as f:
        return _header(f, path)


def load(path, use_ema=False):
    """Read a ScoreModel written by save.

    Parameters
    ----------
    path : str or os.PathLike
    use_ema : bool
        Load the stored parameter average instead of the parameters.

    Raises
    ------
    ValueError
        use_ema not a bool.
    ModelFileError (a ValueError)
        Missing, truncated or foreign file (also: an array stored twice, a member that is
        not .npy data, a network setting this version does not know), a newer format
        version, or parameters that do not fit the architecture in the header (their count
        is compared before the network is built, so a header describing a huge network
        beside a few numbers is refused at once).
    """
    if not isinstance(use_ema, (bool, np.bool_)):  # 'no' was read as True
        raise ValueError(f"use_ema must be True or False, got {use_ema!r}")
    with _open(path) as f:
        header = _header(f, path)
        key = "ema" if use_ema else "params"
        listed = header.get("arrays")
        if isinstance(listed, list) and key in listed and key not in f.files:
            raise ModelFileError(f"{path}: has no {key!r} array, though its header lists one (a damaged file)")
        if key not in f.files:
            raise ModelFileError(f"{path}: has no {key!r} array" + (" (saved without ema)" if use_ema else ""))
        try:
            params = f[key]
        except _READ_ERRORS as exc:
            raise ModelFileError(f"{path}: the parameter array is corrupt ({read_error_text(exc)})") from None
        if not isinstance(params, np.ndarray):  # numpy hands back a member without the .npy magic as its bytes
            raise ModelFileError(f"{path}: the {key!r} member is not an .npy array (raw bytes); "
                                 "not a file sgm_ref wrote")
    # the parameter count the header's network implies, compared before the network is built: building it
    # draws its random initialisation, a header's widths of [40000, 40000] beside 44 stored numbers took
    # 26 GB at its peak and over a minute (0.8 s and 256 MB at [4000, 4000]), or the process killed for
    # memory, before the shape was refused below
    count = _parameter_count(header.get("network"))
    if count is not None and params.shape != (count,):
        raise ModelFileError(f"{path}: parameters have shape {params.shape} and dtype {params.dtype}, the architecture "
                             f"needs ({count},) {header['network']['dtype']}")
    try:
        net = MLP.from_config(header["network"])
        process = process_from_dict(header["process"])
        model = ScoreModel(net, process, header["parameterization"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{path}: the header does not describe a valid model ({exc})") from None
    if header.get("dtype") != net.dtype.name:
        raise ModelFileError(f"{path}: header dtype {header.get('dtype')!r} differs from the network's {net.dtype.name!r}")
    if _native(params.dtype) == net.dtype:  # written on a machine of the other byte order: swapped exactly
        params = params.astype(net.dtype, copy=False)
    if params.dtype != net.dtype or params.shape != net.params.shape:
        raise ModelFileError(
            f"{path}: parameters have shape {params.shape} and dtype {params.dtype}, the architecture "
            f"needs {net.params.shape} {net.dtype.name}")
    if not np.all(np.isfinite(params)):
        raise ModelFileError(f"{path}: parameters contain non-finite values")
    net.set_params(params)
    return model


def _parameter_count(config):
    """The number of parameters a header's network config describes, sum_l (m_l + 1) m_{l+1} over the
    sizes (d + time features, *widths, d), without building it; None where the config is not one of plain
    integers and a known embedding and dtype (MLP.from_config then says what is wrong)."""
    if not isinstance(config, dict) or not isinstance(config.get("widths"), list) \
            or config.get("dtype") not in ("float64", "float32") or not isinstance(config.get("time_embedding"), dict):
        return None
    d, widths, embedding = config.get("d"), config["widths"], config["time_embedding"]
    if not all(type(n) is int and n >= 1 for n in [d, *widths]):
        return None
    try:
        dim = TimeEmbedding(**embedding).dim
    except (TypeError, ValueError):
        return None
    return _layers_parameter_count((d + dim, *widths, d))


def _native(dtype):
    """dtype in this machine's byte order ('>f8' -> float64 on a little-endian machine)."""
    return dtype.newbyteorder("=")


def _open(path):
    path = _file_name(path)
    try:
        f = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such file") from None
    except ValueError:  # numpy's answer to bytes that are neither .npy nor .npz
        raise ModelFileError(f"{path}: not a readable sgm_ref model file (not an .npz archive)") from None
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path}: not a readable sgm_ref model file ({read_error_text(exc)})") from None
    if not isinstance(f, np.lib.npyio.NpzFile):
        raise ModelFileError(f"{path}: not an sgm_ref model file (a bare array, not an .npz archive)")
    return f


def _header(f, path):
    if not hasattr(f, "files") or "header" not in f.files:
        raise ModelFileError(f"{path}: not an sgm_ref model file (no header)")
    # an archive may hold one name twice (and "params" beside "params.npy" is one key to numpy):
    # numpy would read one of them, zipfile's last; np.savez writes each array once
    twice = sorted(name for name, count in collections.Counter(f.files).items() if count > 1)
    if twice:
        raise ModelFileError(f"{path}: the archive holds the array {twice[0]!r} more than once; which one is meant is "
                             "not clear (not a file sgm_ref wrote)")
    try:
        header = load_json(str(f["header"]), "the header")
    except _READ_ERRORS as exc:
        raise ModelFileError(f"{path}: unreadable header ({read_error_text(exc)})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise ModelFileError(f"{path}: not an sgm_ref model file (format {header.get('format') if isinstance(header, dict) else None!r})")
    version = header.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ModelFileError(f"{path}: invalid format version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelFileError(
            f"{path}: format version {version} is newer than this sgm_ref reads ({FORMAT_VERSION}); upgrade sgm_ref")
    return header
