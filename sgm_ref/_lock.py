"""One writer per folder: an advisory lock on FOLDER/.lock that names its holder.

A command that writes into a run folder (or a sweep's output folder) holds the lock
while it works; a second one is refused with one line naming the holder (its pid, machine
and command line, recorded in the lock file; a holder on another machine, sharing the folder
over NFS, is named with that machine, its pid not looked for among this one's processes).
The lock is flock(2) on an open file: the kernel releases it when the holder exits, however
it dies, so a lock left by a killed process is simply taken over by the next command (its
stale record overwritten) -- there is nothing to time out or clean by hand.

The record is a courtesy: where it cannot be written (a full disk) the lock is held without
it, and a refusal names no holder. The lock file is removed when the lock is released, so a
finished command leaves the folder as it found it. Removing a lock file is safe only with a
check on the other side: whoever acquires the lock verifies that the file it locked is still
the one at the path (same inode); if a releasing holder unlinked it in between, it starts
over. A FOLDER/.lock that is not a file of its own (a symbolic link, a folder, a FIFO, a
hard link of another file) is refused and left as it is.

A lock file this user may not write (another user's command made it, 0o644 under umask
022, in a folder both may write) is opened for reading, which flock needs no more than:
held, the command is refused naming its holder; not held (its command was killed), it is
removed as a releasing holder removes it and made anew. A file system that refuses locks
(ENOLCK: an NFS mount without its lock service) is said as such, and the lock file the
attempt made is removed.

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
import socket
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


# the most of a lock file read for its record: a command line of long paths (or of non-ASCII
# ones, each character 6 bytes as JSON's \uXXXX) outgrew 4096 bytes, and a refusal named no holder
_RECORD_BYTES = 1 << 20
_HOST = socket.gethostname()  # the record's "host": a pid is one machine's


def _holder(path):
    """'pid N (command), since ...' from a lock file's record ('pid N on HOST ...' for a holder on
    another machine); None if unreadable or the pid is gone."""
    try:
        with open(path, encoding="utf-8") as f:
            record = json.loads(f.read(_RECORD_BYTES))
        pid = int(record["pid"])
        host = record.get("host")
        text = f"pid {pid} ({record['command']}), since {record['since']}"
    except (OSError, ValueError, KeyError, TypeError, OverflowError, AttributeError):  # not yet written,
        return None                                                    # unreadable, or a foreign tool's
    if isinstance(host, str) and host != _HOST:
        # a holder on another machine (a folder on NFS): its pid says nothing of this one's processes,
        # where it was taken for gone (no holder named) or for an unrelated process of that number
        return f"pid {pid} on {host} ({record['command']}), since {record['since']}"
    if pid <= 0:  # os.kill(0 or -1, 0) asks about a process group or every process, and succeeds
        return None
    try:
        os.kill(pid, 0)  # the record may be a dead holder's, not yet overwritten by the live one
    except PermissionError:  # alive, under another user
        return text
    except (OSError, ValueError, OverflowError):
        return None
    return text


_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def _not_its_own(path, info):
    """The refusal of a lock path whose file is something else too (see _try_lock)."""
    what = (f"a hard link of another file ({info.st_nlink} names), whose contents the lock's record would "
            "overwrite" if stat.S_ISREG(info.st_mode) else "not a regular file (a FIFO, socket or device)")
    return ValueError(f"{path} is {what}; remove it (sgm_ref writes the lock there while a command runs)")


def _try_lock(path):
    """An fd holding the lock on the file now at path, or None if another process holds it."""
    while True:
        # never through a symbolic link: the record would overwrite whatever it points to. Created
        # exclusively, so that a lock file this call made is known as its own (removed below when
        # the file system refuses locks: the folder is left as it was)
        created = False
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666)
            created = True
        except FileExistsError:
            try:
                fd = os.open(path, os.O_RDWR | _NOFOLLOW)
            except FileNotFoundError:
                continue  # removed by a holder releasing it since: made anew
            except PermissionError:
                # a lock file this user may not write: another user's command made it (0o644 under
                # umask 022) in a folder both may write. It was 'cannot lock FOLDER for writing: a
                # command that writes into it needs a writable folder', of a writable folder, whether
                # that command was running or long killed
                if _take_over_unwritable(path):
                    continue
                return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:  # ENOLCK (an NFS mount without its lock service), EOPNOTSUPP, ...
            with contextlib.suppress(OSError):
                if created and os.path.samestat(os.stat(path), os.fstat(fd)):
                    os.unlink(path)
            os.close(fd)
            raise ValueError(f"cannot lock {os.path.dirname(path) or '.'}: its file system refuses a lock on "
                             f"{LOCK_NAME} ({exc.strerror or exc}; an NFS mount without its lock service, say), "
                             "and sgm_ref writes into a folder only under its lock: work in a folder on a local "
                             "file system") from None
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
        raise _not_its_own(path, info)


def _take_over_unwritable(path):
    """A lock file at path that this user may not write: False if a command holds it (the
    caller refuses, naming it from the record, which it can read); True once it is gone,
    removed as a holder removes it on release (a killed command's: the caller makes its own).

    flock needs no write access: opened for reading, the file tells whether it is held.
    """
    folder = os.path.dirname(path) or "."
    try:  # O_NONBLOCK: a FIFO opened for reading would wait for a writer
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _NOFOLLOW)
    except FileNotFoundError:
        return True  # removed since
    except PermissionError:
        raise ValueError(f"{path} is a lock file this user can neither write nor read (another user's command "
                         f"made it), so whether that command still writes into {folder} cannot be told; once it "
                         "has finished, remove the file") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as exc:  # (an NFS mount locks only files open for writing: EBADF)
            raise ValueError(f"{path} is a lock file this user cannot write (another user's command made it), "
                             f"and it cannot be locked read-only here ({exc.strerror or exc}); once no command "
                             "writes into the folder, remove the file") from None
        info = os.fstat(fd)
        try:
            if not os.path.samestat(os.stat(path), info):
                return True  # replaced since: try the new one
        except FileNotFoundError:
            return True
        if not (stat.S_ISREG(info.st_mode) and info.st_nlink <= 1):
            raise _not_its_own(path, info)
        try:
            os.unlink(path)  # held by this process now, as by a holder releasing it
        except PermissionError as exc:
            if not os.access(folder, os.W_OK):
                raise  # a read-only folder: said as such by folder_lock
            # a folder with the sticky bit (as /tmp): only the file's owner may remove it
            raise ValueError(f"{path} is a lock file that no command holds now (a killed one's), which this user may "
                             f"neither write nor remove ({exc.strerror}); have its owner remove it") from None
        return True
    finally:
        os.close(fd)


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
        left as it is), or is another user's that this one can neither read nor remove;
        the file system refuses locks; wait not a number >= 0.
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
        record = json.dumps({"pid": os.getpid(), "host": _HOST, "command": _command_line(), "since": since}) + "\n"
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
