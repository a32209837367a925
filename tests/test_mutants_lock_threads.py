"""Tests written by mutation testing of sgm_ref/_lock.py and sgm_ref/_threads.py (review h83).

Each test pins a case that the modules' own tests (the lock tests of tests/test_threads.py,
tests/test_runs.py and tests/test_mutants_validation.py; the thread tests of tests/test_threads.py
and tests/test_mutants_evaluation.py) let a mutated line through in; the mutant is named in its
docstring. The theme is data safety: two commands on one folder never both write, a refusal names
its holder correctly (or names none rather than a wrong one), and the thread settings are what
they claim. References are the behaviour the module docstrings state, the kernel's own answer
(flock on a second open file description, os.kill, /proc/self/fd, shlex.quote) and hand-computed
values. Races are staged deterministically (a wrapped os.open / fcntl.flock does what the other
command would do at that instant). No subprocesses: the file runs in about two seconds.
"""

import contextlib
import json
import os
import signal
import socket

import pytest

from sgm_ref import _lock, _threads

fcntl = pytest.importorskip("fcntl")


class _Expired(Exception):
    """Not an OSError (as TimeoutError is): the lock's own OSError handlers must not take it."""


@contextlib.contextmanager
def _deadline(seconds):
    """Fail (not hang) when the body runs longer than `seconds` (a mutant that blocks forever)."""

    def expire(signum, frame):
        raise _Expired(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _record(path, **fields):
    """A lock record as folder_lock writes it (this machine's, this process's), with fields changed."""
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": "sgm-ref train run", "since": "noon"}
    record.update(fields)
    path.write_text(json.dumps(record))
    return record


# -- _lock._holder: the refusal names the holder, or no one --------------------------------------


def test_a_record_whose_pid_no_process_can_have_names_no_holder(tmp_path):
    """os.kill(2**70, 0) raises OverflowError (not an OSError): _holder's docstring says None for a
    pid that is gone. Mutant survived: OverflowError dropped from the os.kill handler (the refusal
    became an OverflowError traceback naming no folder)."""
    pid = 2 ** 70
    _record(tmp_path / ".lock", pid=pid)
    with pytest.raises(OverflowError):  # the reference: what os.kill itself does with it
        os.kill(pid, 0)
    assert _lock._holder(tmp_path / ".lock") is None


@pytest.mark.parametrize("missing", ["command", "since"])
def test_a_record_without_its_command_or_time_names_no_holder(tmp_path, missing):
    """A record lacking a field (a foreign tool's, or one cut short) is unreadable: no holder
    named, rather than 'pid N (None), since ...'. Mutant survived: record['command'] read
    with .get (a missing command named the holder as 'None')."""
    record = _record(tmp_path / ".lock")
    del record[missing]
    (tmp_path / ".lock").write_text(json.dumps(record))
    assert _lock._holder(tmp_path / ".lock") is None


def test_a_host_that_is_not_a_string_is_not_taken_for_another_machine(tmp_path):
    """Only a string "host" other than this machine's makes the holder another machine's; a
    record whose host is a number is this machine's record, its pid looked for here (a dead
    one: no holder). Mutant survived: `isinstance(host, str)` relaxed to `host is not None`
    (a dead holder was named 'pid N on 123', as if alive elsewhere)."""
    _record(tmp_path / ".lock", pid=999_999_999, host=123)
    assert _lock._holder(tmp_path / ".lock") is None
    _record(tmp_path / ".lock", pid=999_999_999, host="elsewhere.invalid")  # the string case still names it
    assert _lock._holder(tmp_path / ".lock").startswith("pid 999999999 on elsewhere.invalid (")


# -- _lock._try_lock: never through a symbolic link -------------------------------------------


def test_a_lock_path_that_is_a_symbolic_link_to_a_file_is_refused_and_the_file_kept(tmp_path):
    """FOLDER/.lock a symbolic link to a file (of this folder or another): refused by name, the
    file's contents and the link left as they are (module docstring). Mutant survived:
    _NOFOLLOW dropped from the reopen of an existing lock file (the lock was taken through the
    link, the record overwrote the file it points to, and the release removed the link); the
    only test of it, tests/test_faults.py's, runs the command line in a subprocess."""
    precious = tmp_path / "elsewhere" / "data.txt"
    precious.parent.mkdir()
    precious.write_text("precious")
    run = tmp_path / "run"
    run.mkdir()
    os.symlink(precious, run / ".lock")
    with pytest.raises(ValueError, match=r"\.lock is a symbolic link, not a lock file; remove it"):
        with _lock.folder_lock(run, kind="test"):
            pass
    assert precious.read_text() == "precious" and os.readlink(run / ".lock") == os.fspath(precious)


def test_a_lock_file_removed_between_the_create_and_the_reopen_is_made_anew(tmp_path, monkeypatch):
    """A holder releasing its lock removes .lock (module docstring): the next command's exclusive
    create found it (EEXIST), its reopen then did not (ENOENT). That is a free folder: made anew
    and locked, not refused. The race is staged here: the file is there for the create and
    removed just before the reopen. Mutant survived: the reopen's FileNotFoundError answered
    with a refusal (`return None`): 'another command is writing' of a folder no one held."""
    lock = tmp_path / ".lock"
    real_open = os.open
    staged = {"create": False, "reopen": False}

    def racing_open(path, flags, *args, **kwargs):
        if os.fspath(path) == os.fspath(lock):
            if flags & os.O_EXCL and not staged["create"]:
                staged["create"] = True
                _record(lock, pid=999_999_999)  # the releasing holder's file, still there
            elif not flags & os.O_CREAT and not staged["reopen"]:
                staged["reopen"] = True
                os.unlink(lock)  # ... and removed on its release
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(_lock.os, "open", racing_open)
    with _lock.folder_lock(tmp_path, kind="test"):
        monkeypatch.undo()
        assert staged == {"create": True, "reopen": True}
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with open(lock, "rb") as other:  # held: another open file description cannot take it
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock.exists()


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files by /proc/self/fd")
def test_a_refusal_leaves_no_file_descriptor_open(tmp_path):
    """Each attempt on a held folder opens .lock and, refused by flock, must close it: a command
    waiting (wait > 0: an attempt every 0.05 s) would otherwise run out of descriptors. Mutant
    survived: os.close dropped after BlockingIOError (one descriptor leaked per attempt)."""
    with open(tmp_path / ".lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        before = _open_fds()
        for wait in (0, 0.06):  # one attempt, then two
            with pytest.raises(_lock.FolderLockedError):
                with _lock.folder_lock(tmp_path, kind="test", wait=wait):
                    pass
        assert _open_fds() == before


def _stage_a_release_before_the_flock(monkeypatch, lock, then=None):
    """The race the same-inode check in _try_lock is for: between this command's open of .lock and
    its flock, the holder releases (removes .lock) and, if `then`, another command makes a new
    .lock and holds it. Returns the list that keeps that other command's open file."""
    real_flock = fcntl.flock
    others = []

    def racing_flock(fd, operation):
        if not others and os.path.exists(lock):
            others.append(None)
            os.unlink(lock)  # the holder we waited for, releasing
            if then is not None:
                other = open(lock, "a+")
                real_flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                other.write(json.dumps(then))
                other.flush()
                others.append(other)
        return real_flock(fd, operation)

    monkeypatch.setattr(_lock.fcntl, "flock", racing_flock)
    return others


def test_a_lock_taken_on_a_file_removed_meanwhile_is_not_the_folders_lock(tmp_path, monkeypatch):
    """The lock is the file now at FOLDER/.lock: one locked after its holder removed it is nobody's
    lock, and a third command that made a new .lock holds the folder. Refused, naming that
    command (module docstring: 'whoever acquires the lock verifies that the file it locked is
    still the one at the path'). Mutant survived: the same-inode test skipped (`if not same` ->
    `if False`): both commands wrote into the folder. tests/test_threads.py's three contending
    processes meet this window by chance only."""
    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)  # the holder's, about to be released
    other = {"pid": os.getpid(), "host": socket.gethostname(), "command": "sgm-ref sample other", "since": "noon"}
    others = _stage_a_release_before_the_flock(monkeypatch, lock, then=other)
    try:
        with pytest.raises(_lock.FolderLockedError, match=rf"^another test is writing to {tmp_path}: pid "
                                                          rf"{os.getpid()} \(sgm-ref sample other\), since noon;"):
            with _lock.folder_lock(tmp_path, kind="test"):
                pass
        assert json.loads(lock.read_text()) == other  # the other command's lock, left as it is
    finally:
        for f in others[1:]:
            f.close()


def test_a_lock_taken_on_a_file_removed_meanwhile_is_made_anew(tmp_path, monkeypatch):
    """As above, with no third command: the folder is free, and the lock is taken on a new .lock
    at the path, which another command then finds held. Mutant survived: a vanished file
    counted as the same (`same = False` -> `same = True` on FileNotFoundError): the lock was
    held on a removed file, and .lock was absent, free for any other command to take."""
    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)
    _stage_a_release_before_the_flock(monkeypatch, lock)
    with _lock.folder_lock(tmp_path, kind="test"):
        monkeypatch.undo()
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with open(lock, "rb") as other:
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    assert not lock.exists()


# -- _lock._take_over_unwritable: another user's lock file --------------------------------------


def _as_another_users_lock_file(monkeypatch, lock, on_read_only_open):
    """os.open as this user sees a lock file another user's command made (0o644: not writable
    here; the tests run as root, whom no mode stops, so the refusal is staged): the first
    read-write reopen of .lock is EACCES, and the read-only open that follows runs
    on_read_only_open(real_open, path, flags) in place of the real open."""
    import errno

    real_open = os.open
    staged = []

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path) == os.fspath(lock) and not flags & os.O_CREAT and len(staged) < 2:
            if flags & os.O_RDWR and not staged:
                staged.append("reopen")
                raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
            if staged == ["reopen"] and not flags & (os.O_RDWR | os.O_WRONLY):
                staged.append("read-only open")
                return on_read_only_open(real_open, path, flags, *args, **kwargs)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(_lock.os, "open", open_)
    return staged


def _open_as_asked(real_open, *args, **kwargs):
    return real_open(*args, **kwargs)


def test_another_users_lock_file_removed_before_its_read_only_open_leaves_a_free_folder(tmp_path, monkeypatch):
    """Another user's lock file, released (removed) by its command between this command's reopen
    (EACCES) and its read-only open (ENOENT): the folder is free, and the lock is taken.
    Mutant survived: that FileNotFoundError answered False ('held'): the command was refused
    with 'another command is writing' of a folder no one held."""
    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)

    def removed_first(real_open, path, flags, *args, **kwargs):
        os.unlink(path)  # its command, releasing
        return real_open(path, flags, *args, **kwargs)

    staged = _as_another_users_lock_file(monkeypatch, lock, removed_first)
    with _lock.folder_lock(tmp_path, kind="test"):
        assert staged == ["reopen", "read-only open"]
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_another_users_lock_file_replaced_after_its_read_only_open_is_not_removed(tmp_path, monkeypatch):
    """Another user's lock file (a killed command's) opened read-only; before this command's
    flock on it, a third command took the folder over: removed it and made and locked a new
    .lock. The file locked is not the one at the path: the new one is left alone, and its
    holder named. Mutant survived: the 'replaced since' test skipped: the third command's live
    lock file was removed as if stale and the lock taken anew, two commands writing at once."""
    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)
    other = {"pid": os.getpid(), "host": socket.gethostname(), "command": "sgm-ref sample other", "since": "noon"}
    held = []

    def replaced_after(real_open, path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        os.unlink(path)
        f = open(path, "a+")
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        f.write(json.dumps(other))
        f.flush()
        held.append(f)
        return fd

    staged = _as_another_users_lock_file(monkeypatch, lock, replaced_after)
    try:
        with pytest.raises(_lock.FolderLockedError, match=rf"^another test is writing to {tmp_path}: pid "
                                                          rf"{os.getpid()} \(sgm-ref sample other\), since noon;"):
            with _lock.folder_lock(tmp_path, kind="test"):
                pass
        assert staged == ["reopen", "read-only open"]
        assert json.loads(lock.read_text()) == other and os.path.samestat(os.stat(lock), os.fstat(held[0].fileno()))
    finally:
        for f in held:
            f.close()


def test_another_users_stale_lock_file_in_a_sticky_folder_is_said_to_need_its_owner(tmp_path, monkeypatch):
    """A killed command's lock file of another user, in a folder this user may write but where
    only a file's owner may remove it (the sticky bit, as /tmp): the refusal says so (module
    _take_over_unwritable), not 'needs a writable folder' of a writable folder, and the file is
    left. Staged (the tests run as root): the reopen refused EACCES, the unlink EPERM, as the
    kernel refuses them. Mutant survived: the writable-folder test dropped
    (`if not os.access(folder, os.W_OK): raise` -> `if True: raise`)."""
    import errno

    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)
    _as_another_users_lock_file(monkeypatch, lock, _open_as_asked)
    real_unlink = os.unlink

    def sticky(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(lock):
            raise PermissionError(errno.EPERM, os.strerror(errno.EPERM), os.fspath(path))
        return real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(_lock.os, "unlink", sticky)
    assert os.access(tmp_path, os.W_OK)
    with _deadline(2.0), pytest.raises(ValueError, match=rf"^{tmp_path}/\.lock is a lock file that no command holds "
                                                         r"now \(a killed one's\), which this user may neither write "
                                                         r"nor remove \(Operation not permitted\); have its owner "
                                                         r"remove it$"):
        with _lock.folder_lock(tmp_path, kind="test"):
            pass
    monkeypatch.undo()
    assert json.loads(lock.read_text())["pid"] == 999_999_999


def test_another_users_fifo_at_the_lock_path_is_refused_without_waiting_for_a_writer(tmp_path, monkeypatch):
    """FOLDER/.lock a FIFO this user may not write (another user's): the read-only open that tells
    whether it is held must not wait for a writer (O_NONBLOCK); it is refused as not a regular
    file and left. Mutant survived: O_NONBLOCK dropped (the command hung in open(2) for good)."""
    import stat

    lock = tmp_path / ".lock"
    os.mkfifo(lock, 0o444)
    staged = _as_another_users_lock_file(monkeypatch, lock, _open_as_asked)
    with _deadline(1.0):
        with pytest.raises(ValueError, match=r"\.lock is not a regular file \(a FIFO, socket or device\); remove it"):
            with _lock.folder_lock(tmp_path, kind="test"):
                pass
    assert staged == ["reopen", "read-only open"] and stat.S_ISFIFO(os.lstat(lock).st_mode)


# -- folder_lock's release ---------------------------------------------------------------------


def test_the_release_removes_the_lock_file_before_it_lets_the_lock_go(tmp_path, monkeypatch):
    """The release removes .lock while still holding it, then closes it (which lets flock go).
    Closed first, a waiting command could lock that file and find it still at the path (its
    same-inode check passed), and the release then removed it from under that command: a third
    command made a new .lock and both wrote. Checked at the moment the lock's descriptor is
    closed: the path no longer names that file. Mutant survived: close before unlink."""
    real_close = os.close
    at_close = []

    def close(fd):
        try:
            info = os.fstat(fd)
            at_close.append(os.path.exists(tmp_path / ".lock") and os.path.samestat(os.stat(tmp_path / ".lock"),
                                                                                     info))
        except OSError:
            pass
        return real_close(fd)

    with _lock.folder_lock(tmp_path, kind="test"):
        held = os.stat(tmp_path / ".lock")
        monkeypatch.setattr(_lock.os, "close", close)
    monkeypatch.undo()
    assert at_close == [False] and not os.path.exists(tmp_path / ".lock") and held.st_nlink == 1


def test_a_folder_removed_while_its_lock_is_held_is_released_quietly(tmp_path):
    """The release of a lock whose folder was removed meanwhile (its .lock with it) says nothing:
    the command's own work already said what happened. Mutant survived: the release's
    `except OSError: pass` dropped (a FileNotFoundError from the release replaced the block's
    own outcome)."""
    folder = tmp_path / "run"
    folder.mkdir()
    with _lock.folder_lock(folder, kind="test"):
        os.unlink(folder / ".lock")
        os.rmdir(folder)
    assert not folder.exists()
    folder.mkdir()
    with _lock.folder_lock(folder, kind="test"):  # a new folder of that name: locked afresh
        assert json.loads((folder / ".lock").read_text())["pid"] == os.getpid()


def test_a_folder_that_does_not_exist_is_named_as_the_folder(tmp_path):
    """A missing folder is said as such, naming the folder (the argument), not FOLDER/.lock.
    Mutant survived: the message named the lock path ('.../missing/.lock does not exist')."""
    with pytest.raises(ValueError, match=rf"^{tmp_path}/missing does not exist \(removed while waiting for its "
                                         r"lock\?\)$"):
        with _lock.folder_lock(tmp_path / "missing", kind="test"):
            pass


def test_the_record_names_the_command_as_typed(tmp_path, monkeypatch):
    """The record's "command" is the holder's command line (module docstring): the program's name
    without the folder it was found in (sys.argv[0] is the script's full path), and each argument
    quoted as a shell reads it back (shlex.quote, the reference), so that a folder with a space
    is one argument in the refusal. Mutants survived: the basename dropped, and " ".join for
    shlex.join."""
    import shlex

    monkeypatch.setattr(_lock.sys, "argv", ["/opt/venv/bin/sgm-ref", "train", "my run", "--steps", "10"])
    with _lock.folder_lock(tmp_path, kind="test"):
        command = json.loads((tmp_path / ".lock").read_text())["command"]
    assert command == "sgm-ref train 'my run' --steps 10"
    assert command == " ".join(map(shlex.quote, ["sgm-ref", "train", "my run", "--steps", "10"]))


def test_the_record_s_time_is_now_with_its_time_zone(tmp_path):
    """"since" is the local time the lock was taken, with its zone (a holder on another machine of
    an NFS-shared folder may be in another one). Reference: datetime.now() and time.strftime's
    %Z. Mutant survived: the zone dropped from the format."""
    import datetime
    import time

    before = datetime.datetime.now().replace(microsecond=0)
    with _lock.folder_lock(tmp_path, kind="test"):
        since = json.loads((tmp_path / ".lock").read_text())["since"]
    after = datetime.datetime.now()
    stamp, zone = since[:19], since[19:]
    assert before <= datetime.datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S") <= after
    assert zone == " " + time.strftime("%Z")


# -- the refusals' words, and the lock file's mode ------------------------------------------------


def _refuse_locks(monkeypatch, errno_code, only=None):
    """fcntl.flock failing with errno_code (for every descriptor, or where only(fd) holds)."""
    real_flock = fcntl.flock

    def flock(fd, operation):
        if only is None or only(fd):
            raise OSError(errno_code, os.strerror(errno_code))
        return real_flock(fd, operation)

    monkeypatch.setattr(_lock.fcntl, "flock", flock)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts open files by /proc/self/fd")
def test_a_file_system_that_refuses_locks_is_named_by_its_folder_and_leaves_no_descriptor(tmp_path, monkeypatch):
    """ENOLCK (an NFS mount without its lock service): the refusal names the folder, not
    FOLDER/.lock (tests/test_runs.py matched it with \\S+, which takes either), and closes the
    lock file it opened. Mutants survived: the message's folder swapped for the lock path;
    os.close dropped on that path (a descriptor leaked per attempt)."""
    import errno

    _refuse_locks(monkeypatch, errno.ENOLCK)
    before = _open_fds()
    for _ in range(2):
        with pytest.raises(ValueError, match=rf"^cannot lock {tmp_path}: its file system refuses a lock on \.lock "
                                             r"\(No locks available; "):
            with _lock.folder_lock(tmp_path, kind="test"):
                pass
    assert _open_fds() == before and os.listdir(tmp_path) == []


def test_another_users_lock_file_that_this_user_cannot_read_either_is_said_so(tmp_path, monkeypatch):
    """A lock file this user can neither write nor read (0o600 of another user): whether its
    command still runs cannot be told, and the refusal says that, naming the folder. Staged
    (the tests run as root): both opens of .lock refused EACCES. Mutant survived: the read-only
    open's PermissionError not caught (the refusal became 'cannot lock FOLDER for writing ...:
    a command that writes into it needs a writable folder', of a writable folder)."""
    import errno

    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)
    real_open = os.open

    def open_(path, flags, *args, **kwargs):
        if os.fspath(path) == os.fspath(lock) and not flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(_lock.os, "open", open_)
    with pytest.raises(ValueError, match=rf"^{lock} is a lock file this user can neither write nor read \(another "
                                         rf"user's command made it\), so whether that command still writes into "
                                         rf"{tmp_path} cannot be told; once it has finished, remove the file$"):
        with _lock.folder_lock(tmp_path, kind="test"):
            pass
    monkeypatch.undo()
    assert json.loads(lock.read_text())["pid"] == 999_999_999


def test_another_users_lock_file_that_cannot_be_locked_read_only_is_said_so_and_left(tmp_path, monkeypatch):
    """An NFS mount locks only files open for writing: flock on the read-only descriptor of another
    user's lock file fails EBADF. Said as such, and the file left (not taken for a holder's: no
    'another command is writing'). Mutant survived: that OSError answered False ('held')."""
    import errno

    lock = tmp_path / ".lock"
    _record(lock, pid=999_999_999)
    staged = _as_another_users_lock_file(monkeypatch, lock, _open_as_asked)
    _refuse_locks(monkeypatch, errno.EBADF,
                  only=lambda fd: (fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE) == os.O_RDONLY)
    with pytest.raises(ValueError, match=rf"^{lock} is a lock file this user cannot write \(another user's command "
                                         r"made it\), and it cannot be locked read-only here \(Bad file descriptor\); "
                                         r"once no command writes into the folder, remove the file$"):
        with _lock.folder_lock(tmp_path, kind="test"):
            pass
    monkeypatch.undo()
    assert staged == ["reopen", "read-only open"] and json.loads(lock.read_text())["pid"] == 999_999_999


def test_the_lock_file_is_made_readable_by_other_users_under_the_umask(tmp_path):
    """The lock file is created 0o666 less the umask (0o644 under 022): another user's command
    must be able to open it read-only, to see whether it is held and name its holder (module
    docstring: 'opened for reading, which flock needs no more than'). Mutant survived: created
    0o600 (another user could neither read it nor tell a live holder from a killed one)."""
    import stat

    previous = os.umask(0o022)
    try:
        with _lock.folder_lock(tmp_path, kind="test"):
            mode = stat.S_IMODE(os.stat(tmp_path / ".lock").st_mode)
    finally:
        os.umask(previous)
    assert mode == 0o666 & ~0o022 == 0o644


# -- _threads: what was loaded before sgm_ref ------------------------------------------------------


def test_numpy_imported_first_is_reported_also_where_the_loaded_libraries_cannot_be_listed(monkeypatch):
    """environment_defaults()'s "loaded_before" says numpy imported before sgm_ref kept OpenBLAS's
    spinning (module docstring). /proc/self/maps lists the libraries on Linux only; elsewhere
    numpy in sys.modules is what tells. Mutant survived: the sys.modules test dropped (on
    Linux the maps name the OpenBLAS as well, so every test passed)."""
    monkeypatch.setattr(_threads, "_mapped_libraries", lambda: set())  # as where there is no /proc
    assert "numpy" in _threads.sys.modules
    assert _threads._runtimes_loaded() == ["OpenBLAS (numpy)"]
    monkeypatch.setattr(_threads, "_mapped_libraries", lambda: {"/usr/lib/x86_64-linux-gnu/libgomp.so.1",
                                                                "/opt/lib/libiomp5.so", "/opt/lib/libomp.so"})
    assert _threads._runtimes_loaded() == ["OpenBLAS (numpy)", "an OpenMP runtime"]
    for name in ("libgomp-a34b3233.so.1.0.0", "libiomp5.so", "libomp.so.5"):  # each runtime alone
        monkeypatch.setattr(_threads, "_mapped_libraries", lambda name=name: {"/x/" + name})
        assert _threads._runtimes_loaded()[1:] == ["an OpenMP runtime"], name


# -- _threads: run_blocks and the OpenBLAS counts it holds -----------------------------------------

needs_settable_blas = pytest.mark.skipif(not _threads.blas_settable(), reason="NumPy's BLAS cannot be set here")


def _set_blas(count):
    for setter, _ in _threads._openblas_once():
        setter(count)


@needs_settable_blas
def test_a_call_s_default_thread_count_inside_another_call_is_the_count_outside_calls(monkeypatch):
    """run_blocks' default: numba's count, 'but no more than OpenBLAS's count outside run_blocks
    calls'. Inside another call OpenBLAS is on one thread for the time being: the count it
    had before that call (and will get back) is the one that bounds. Mutant survived: the saved
    counts ignored (`if _ONE_BLAS_HOLDERS` -> `if False`): a call made while another ran
    (another Python thread's, or a nested one) got one thread."""
    before = _threads.blas_threads()
    monkeypatch.setattr(_threads.numba, "get_num_threads", lambda: 2)
    seen = []
    try:
        _set_blas(2)  # outside calls: two OpenBLAS threads, as on a quiet machine
        assert _threads._default_block_threads(_threads._openblas_once()) == 2

        def make_worker():
            def work(b):
                seen.append((_threads.blas_threads(), _threads._default_block_threads(_threads._openblas_once())))
            return work

        _threads.run_blocks(1, make_worker)
    finally:
        for (setter, _), count in zip(_threads._openblas_libraries(), before):
            setter(count)
    assert seen == [([1] * len(_threads._openblas_once()), 2)]


@needs_settable_blas
def test_the_fork_handler_restores_nothing_when_no_call_is_in_progress():
    """_after_fork_in_child gives back the saved counts only when it drops calls in progress; with
    none (holders 0) the counts are the process's own, which a past call's saved counts must not
    replace (set_threads(1) after a call, then a fork: the child had OpenBLAS on the old
    count). Called here as the child would call it, in this process, with no call in progress.
    Mutant survived: `_ONE_BLAS_HOLDERS and` dropped from the restore's condition."""
    before = _threads.blas_threads()
    try:
        _set_blas(2)
        _threads.run_blocks(1, lambda: lambda b: None)  # a past call: its saved counts are 2
        assert _threads._ONE_BLAS_HOLDERS == 0 and _threads.blas_threads()[:1] == [2]
        _set_blas(1)  # as set_threads(1) after it
        _threads._after_fork_in_child()
        assert _threads.blas_threads()[:len(_threads._openblas_once())] == [1] * len(_threads._openblas_once())
        assert _threads._ONE_BLAS_HOLDERS == 0 and _threads._ONE_BLAS_CALLERS == []
    finally:
        for (setter, _), count in zip(_threads._openblas_libraries(), before):
            setter(count)


@needs_settable_blas
def test_run_blocks_raises_the_first_error_of_the_other_threads():
    """run_blocks' docstring: 'the calling thread's own exception if it raised one, else the first
    of the other threads''. Two helpers fail, the second once the first has ended; the caller does
    not fail.
    Mutant survived: errors[-1] for errors[0] (the tests had one failing helper)."""
    import threading
    import time

    caller = threading.get_ident()
    inside = threading.Barrier(3, timeout=10)  # every thread inside its first block
    order, lock = [], threading.Lock()

    def make_worker():
        def work(b):
            inside.wait()
            if threading.get_ident() == caller:
                return
            with lock:
                order.append(threading.get_ident())
                rank = len(order)
            if rank == 2:  # fail once the first helper has failed and ended (its error recorded)
                deadline = time.monotonic() + 5
                while any(t.ident == order[0] and t.is_alive() for t in threading.enumerate()):
                    assert time.monotonic() < deadline
                    time.sleep(0.001)
            raise RuntimeError(f"helper {rank}")
        return work

    with _deadline(10.0), pytest.raises(RuntimeError, match="^helper 1$"):
        _threads.run_blocks(3, make_worker, threads=3)


def test_busy_hint_says_nothing_where_the_cpu_count_is_unknown(monkeypatch):
    """os.cpu_count() is None where the count cannot be determined (its documentation): no advice
    then, as for an unknown load, rather than a TypeError from `busy + threads <= None` in the
    command's closing note. Mutant survived: `not cpus` dropped from busy_hint's test."""
    for name in ("SGM_REF_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        monkeypatch.delenv(name, raising=False)
    assert "SGM_REF_THREADS=1 " in _threads.busy_hint(busy=2, cpus=2, threads=2)  # the advice, with a count
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: None)
    assert _threads.busy_hint(busy=2, threads=2) is None
    assert _threads.busy_hint(busy=2, cpus=0, threads=2) is None


def test_the_openblas_libraries_looked_for_include_a_distributions_libblas(monkeypatch):
    """_openblas_handles looks in every loaded library named *openblas* and in libblas.* (a
    distribution's OpenBLAS behind its BLAS alternatives, its comment), only in the copy
    already loaded (RTLD_NOLOAD), and in nothing else. The dlopen is recorded here instead of
    made. Mutant survived: libblas.* dropped (numpy's wheels ship a scipy_openblas, so no test
    met one): set_threads and run_blocks would leave a system OpenBLAS threaded."""
    import ctypes

    asked = []

    def cdll(path, mode=0):
        asked.append((path, mode))
        return object()

    monkeypatch.setattr(_threads, "_mapped_libraries", lambda: {
        "/usr/lib/x86_64-linux-gnu/libblas.so.3", "/usr/lib/x86_64-linux-gnu/liblapack.so.3",
        "/venv/numpy.libs/libscipy_openblas64_-ff651d7f.so", "/usr/lib/libc.so.6", "/usr/lib/libcblas.so.3"})
    monkeypatch.setattr(ctypes, "CDLL", cdll)
    assert len(_threads._openblas_handles()) == 2
    assert asked == [("/usr/lib/x86_64-linux-gnu/libblas.so.3", os.RTLD_NOLOAD),
                     ("/venv/numpy.libs/libscipy_openblas64_-ff651d7f.so", os.RTLD_NOLOAD)]
