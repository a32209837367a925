"""One writer per folder: an advisory lock on FOLDER/.lock that names its holder.

A command that writes into a run folder (or a sweep's output folder) holds the lock
while it works; a second one is refused with one line naming the holder (its pid and
command line, recorded in the lock file). The lock is flock(2) on an open file: the
kernel releases it when the holder exits, however it dies, so a lock left by a killed
process is simply taken over by the next command (its stale record overwritten) -- there
is nothing to time out or clean by hand.

The record is a courtesy: where it cannot be written (a full disk) the lock is held without
it, and a refusal names no holder. The lock file is removed when the lock is released, so a
finished command leaves the folder as it found it. Removing a lock file is safe only with a
check on the other side: whoever acquires the lock verifies that the file it locked is still
the one at the path (same inode); if a releasing holder unlinked it in between, it starts
over. A FOLDER/.lock that is not a file of its own (a symbolic link, a folder, a FIFO, a
hard link of another file) is refused and left as it is.

Within one thread the lock is re-entrant: `sgm-ref demo` holds its run's lock while the
training, sampling and evaluation inside take it again. Another thread of the same process
is refused (or waits) like another process: were it let in, the holder's release would
unlock the folder while that thread still writes. Where flock does not exist (Windows)
there is no lock.
"""

import contextlib
import datetime
import json
import os
import shlex
import stat
import sys
import threading
import time

__all__ = ["FolderLockedError", "folder_lock", "LOCK_NAME"]

LOCK_NAME = ".lock"

try:
    import fcntl
except ImportError:  # no advisory locks on this platform
    fcntl = None

_held = {}  # realpath of the folder -> [fd, depth, holding thread's ident] for the locks this process holds
_registry = threading.Lock()


class FolderLockedError(ValueError):
    """Another process is writing to the folder."""


def _command_line():
    argv = list(sys.argv) or ["python"]
    argv[0] = os.path.basename(argv[0]) or "python"
    return shlex.join(argv)


def _holder(path):
    """'pid N (command), since ...' from a lock file's record; None if unreadable or the pid is gone."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.loads(f.read(4096))
        pid = int(record["pid"])
        text = f"pid {pid} ({record['command']}), since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError, OverflowError):  # not yet written, unreadable, or a
        return None                                                    # foreign tool's
    if pid <= 0:  # os.kill(0 or -1, 0) asks about a process group or every process, and succeeds
        return None
    try:
        os.kill(pid, 0)  # the record may be a dead holder's, not yet overwritten by the live one
    except PermissionError:  # alive, under another user
        return text
    except (OSError, ValueError, OverflowError):
        return None
    return text


def _try_lock(path):
    """An fd holding the lock on the file now at path, or None if another process holds it."""
    while True:
        # never through a symbolic link: the record would overwrite whatever it points to
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            same = os.path.samestat(os.stat(path), os.fstat(fd))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)  # the holder we waited for removed the file on release: lock the new one
            continue
        # never into a file that is something else too: the record (ftruncate, pwrite) would overwrite
        # another file's contents (a hard link to it) or fail with EINVAL (a FIFO), and the release
        # would remove it
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode) and info.st_nlink <= 1:  # (0 where a file system does not count links)
            return fd
        os.close(fd)
        what = (f"a hard link of another file ({info.st_nlink} names), whose contents the lock's record would "
                "overwrite" if stat.S_ISREG(info.st_mode) else "not a regular file (a FIFO, socket or device)")
        raise ValueError(f"{path} is {what}; remove it (sgm_ref writes the lock there while a command runs)")


@contextlib.contextmanager
def folder_lock(folder, kind="command", wait=0.0, on_acquire=None):
    """Hold FOLDER/.lock exclusively while the block runs.

    Parameters
    ----------
    folder : str or os.PathLike
        An existing folder.
    kind : str
        What the holder is, for the refusal ("another {kind} is writing to FOLDER ...").
    wait : float
        Seconds to keep trying before refusing, >= 0 (inf: until it is free); a folder
        just made by this process may be held for an instant by a command that found it
        empty and is leaving.
    on_acquire : callable(), optional
        Called once the lock is taken by this process (not when re-entered), e.g. to
        clear what a killed predecessor left.

    Raises
    ------
    FolderLockedError (a ValueError)
        Another process, or another thread of this one, holds the lock; the message names
        it and what to do.
    ValueError
        The lock file cannot be created (a read-only folder, say), or FOLDER/.lock is not
        a file of its own (a symbolic link, a folder, a FIFO, a hard link of another file:
        left as it is); wait not a number >= 0.
    """
    if isinstance(wait, bool) or not isinstance(wait, (int, float)) or not wait >= 0:  # NaN: never the deadline
        raise ValueError(f"wait must be a number of seconds >= 0, got {wait!r}")
    folder = os.fspath(folder)
    if fcntl is None:
        if on_acquire is not None:
            on_acquire()
        yield
        return
    key = os.path.realpath(folder)
    with _registry:
        entry = _held.get(key)
        if entry is not None and entry[2] != threading.get_ident():
            entry = None  # another thread's: taken below like another process's (flock refuses a second fd)
        if entry is not None:
            entry[1] += 1
    if entry is not None:  # this thread holds it already
        try:
            yield
        finally:
            with _registry:
                entry[1] -= 1
        return
    path = os.path.join(folder, LOCK_NAME)
    deadline = time.monotonic() + wait
    while True:
        try:
            fd = _try_lock(path)
        except FileNotFoundError:
            raise ValueError(f"{folder} does not exist (removed while waiting for its lock?)") from None
        except OSError as exc:
            if os.path.islink(path):
                raise ValueError(f"{path} is a symbolic link, not a lock file; remove it (sgm_ref writes the lock "
                                 "there while a command runs)") from None
            if os.path.isdir(path):
                raise ValueError(f"{path} is a folder, not a lock file; remove it (sgm_ref writes the lock "
                                 "there while a command runs)") from None
            try:  # a socket cannot be opened at all (ENXIO): not the folder's fault
                special = not stat.S_ISREG(os.lstat(path).st_mode)
            except OSError:
                special = False
            if special:
                raise ValueError(f"{path} is not a regular file (a FIFO, socket or device); remove it (sgm_ref "
                                 "writes the lock there while a command runs)") from None
            if os.path.exists(folder) and not os.path.isdir(folder):
                raise ValueError(f"cannot lock {folder}: it is a file, not a folder") from None
            raise ValueError(f"cannot lock {folder} for writing ({exc.strerror or exc}): "
                             "a command that writes into it needs a writable folder") from None
        if fd is not None:
            break
        if time.monotonic() >= deadline:
            holder = _holder(path)
            with _registry:
                if key in _held and holder:  # held by another thread of this process
                    holder = f"another thread of this process, {holder}"
            raise FolderLockedError(f"another {kind} is writing to {folder}"
                                    + (f": {holder}" if holder else "") + "; wait for it to finish, or stop it")
        time.sleep(0.05)
    with _registry:
        _held[key] = entry = [fd, 1, threading.get_ident()]
    try:
        since = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
        record = json.dumps({"pid": os.getpid(), "command": _command_line(), "since": since}) + "\n"
        try:
            os.ftruncate(fd, 0)  # a killed holder's record is overwritten
            os.pwrite(fd, record.encode("utf-8"), 0)
        except OSError:  # a full disk (ENOSPC, a quota): the lock is flock's, the record only names its holder;
            pass         # the command's own writes say what is wrong, naming the folder (this said nothing of it)
        if on_acquire is not None:
            on_acquire()
        yield
    finally:
        with _registry:
            del _held[key]
        try:  # removed while still held (see the module docstring), if it is still ours
            if os.path.samestat(os.stat(path), os.fstat(fd)):
                os.unlink(path)
        except OSError:  # the folder itself was removed, or is read-only now
            pass
        os.close(fd)
