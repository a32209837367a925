"""The `sgm-ref` command in a process of its own, as a user runs it: shared by the command-line tests.

`run` forks each command from one interpreter that has done sgm_ref's imports (Forks below):
0.14 s to a command's first line of its own where a start of the installed script takes
0.7-0.8 s, for each of the few hundred commands the suite runs. With script=True, with env,
or where this process's environment has changed since the test modules were imported, it
runs the installed script itself. test_cli.py's test_a_forked_command_is_the_installed_script
checks that both give the same exit status, stdout, stderr and files.
"""

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("sgm-ref")


def run(*args, cwd=None, env=None, check=True, script=False):
    """Run `sgm-ref args...` in the working folder cwd (this process's by default); with check,
    a non-zero exit fails the test with the command's stderr. env (variables added to this
    process's environment) or script=True: the installed script, started afresh."""
    forks = None if script or env else _shared_forks()
    if forks is None:
        result = subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                                env={**os.environ, **(env or {})}, timeout=600)
    else:
        result = forks.run(*args, cwd=os.getcwd() if cwd is None else cwd, remove_output=True)
    if check and result.returncode != 0:
        raise AssertionError(f"sgm-ref {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def _environment():
    """This process's environment, less the variable pytest changes for every test."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


# the session's environment, as the test modules are imported (before any test changes it)
_SHARED = {"environment": _environment()}


def _shared_forks():
    """The fork server of this test session, started on first use (again if it died) with the
    session's environment; None where this process's environment differs from it (a test's
    monkeypatch.setenv): the command then runs as the script, which sees the change."""
    if _environment() != _SHARED["environment"]:
        return None
    forks = _SHARED.get("forks")
    if forks is not None and forks.zygote.poll() is None:
        return forks
    if forks is not None:  # it died: its files go with it
        shutil.rmtree(_SHARED["folder"], ignore_errors=True)
    else:
        atexit.register(_close_shared)
    folder = tempfile.mkdtemp(prefix="sgm-ref-forks-")
    _SHARED.update(forks=Forks(folder, env=_SHARED["environment"]), folder=folder)
    return _SHARED["forks"]


def _close_shared():
    forks = _SHARED.pop("forks", None)
    if forks is not None:
        try:
            forks.close()
        except Exception:  # the session is ending: a server that will not close is killed
            forks.zygote.kill()
    shutil.rmtree(_SHARED.get("folder", ""), ignore_errors=True)


def assert_one_line_error(result, pattern):
    """Exit status 2 and exactly one stderr line, `sgm-ref: error: ...` containing pattern, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgm-ref: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]


# -- many commands from one import: the fault tests' own interpreters, forked ------------------

_ZYGOTE = r"""
import importlib, json, os, sys
# argv[0] the script's path: sgm_ref reads its environment as the command line does
sys.argv, preload = sys.argv[1:2], sys.argv[2:]
sys.path[0] = os.path.dirname(sys.argv[0])  # and its folder, where -c put the working folder
import sgm_ref.cli, sgm_ref.runs, sgm_ref.evaluation  # the imports every command has done
threads = len(os.listdir("/proc/self/task"))
for name in preload:  # a package the commands' own user code imports (Forks' preload)
    importlib.import_module(name)
if len(os.listdir("/proc/self/task")) != threads:
    sys.exit(f"preloading {preload} started a thread: its forks would copy one of them")
requests, replies = sys.stdin.buffer, sys.stdout
for line in iter(requests.readline, b""):
    request = json.loads(line)
    if request["op"] == "wait":
        pid, status = os.waitpid(request["pid"], 0 if request["block"] else os.WNOHANG)
        print(json.dumps(None if pid == 0 else os.waitstatus_to_exitcode(status)), file=replies, flush=True)
        continue
    pid = os.fork()
    if pid:
        print(pid, file=replies, flush=True)
        continue
    # the child: a command's own process, its stdout and stderr files, its stdin the go FIFO
    for fd, path in ((1, request["out"]), (2, request["err"])):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    os.dup2(os.open(request["go"] or os.devnull, os.O_RDONLY), 0)  # opens once the test opens it to write
    sys.stdin = open(0, closefd=False)
    if request["go"]:
        sys.stdin.readline()
    if request["cwd"]:
        os.chdir(request["cwd"])
    sys.path[0] = os.path.dirname(request["script"])  # as the installed script has them (not -c's)
    sys.argv = [request["script"], *request["argv"]]
    exec(compile(request["prelude"], "<prelude>", "exec"), {"__name__": "__prelude__"})
    sys.exit(sgm_ref.cli.main(sys.argv[1:]))  # out of the loop: the interpreter exits as a script does
"""


class Forks:
    """Commands run by sgm_ref.cli.main in processes forked from one interpreter that has done
    sgm_ref's imports once: each a process of its own (its pid, its locks, killable), started
    in ~10 ms instead of the ~0.6 s of CPU an import costs. The child runs as the installed
    script does: sys.argv[0] the script's path, its folder first on sys.path, sys.exit(main()).
    The environment is env, or this process's when the server started.

    preload: modules the server imports after sgm_ref's, for commands whose user code (a --score
    file) imports them: each command then skips that import, the one way it differs from the
    script (sys.modules holds them from its start). Only a module that starts no thread on
    import may be preloaded (a fork copies one thread; the server exits naming the module
    otherwise): jax starts none (its backend starts them, in the command)."""

    def __init__(self, folder, env=None, preload=()):
        self.folder, self.count = Path(folder), 0
        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "zygote.err", "wb") as err:
            self.zygote = subprocess.Popen([sys.executable, "-c", _ZYGOTE, str(SCRIPT), *preload], env=env,
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)

    def _ask(self, request, timeout=None):
        """The server's answer to request; past timeout (s), the command request["pid"] is
        killed and the test fails, as subprocess.run's timeout=600 made it."""
        import json
        import select
        import signal

        try:
            self.zygote.stdin.write((json.dumps(request) + "\n").encode())
            self.zygote.stdin.flush()
        except BrokenPipeError:  # it exited (a failed preload): its own words, not a bare EPIPE
            raise AssertionError(f"the fork server died: {(self.folder / 'zygote.err').read_text()}") from None
        if timeout is not None and not select.select([self.zygote.stdout], [], [], timeout)[0]:
            os.kill(request["pid"], signal.SIGKILL)
            self.zygote.stdout.readline()
            raise AssertionError(f"sgm-ref command pid {request['pid']} took more than {timeout} s; killed")
        line = self.zygote.stdout.readline()
        if not line:
            raise AssertionError(f"the fork server died: {(self.folder / 'zygote.err').read_text()}")
        return json.loads(line)

    def start(self, *args, prelude="", wait_for_go=False, cwd=None):
        """A Forked running `sgm-ref args` after prelude (Python run in it first); with
        wait_for_go it starts its command at .go()."""
        self.count += 1
        stem = self.folder / f"cmd{self.count}"
        go = None
        if wait_for_go:
            go = f"{stem}.go"
            os.mkfifo(go)
        pid = self._ask({"op": "fork", "argv": [str(a) for a in args], "prelude": prelude, "go": go,
                         "out": f"{stem}.out", "err": f"{stem}.err", "cwd": None if cwd is None else str(cwd),
                         "script": str(SCRIPT)})
        return Forked(self, pid, stem, go)

    def run(self, *args, prelude="", cwd=None, remove_output=False):
        """(returncode, stdout, stderr) of `sgm-ref args` after prelude, as subprocess.run gives them;
        remove_output: the files that held stdout and stderr are removed once read."""
        proc = self.start(*args, prelude=prelude, cwd=cwd)
        result = subprocess.CompletedProcess(args, proc.wait(), *proc.output())
        if remove_output:
            for kind in ("out", "err"):
                os.remove(f"{proc.stem}.{kind}")
        return result

    def close(self):
        self.zygote.stdin.close()
        self.zygote.wait(timeout=60)


class Forked:
    """A command started by Forks: pid, go(), poll(), wait(), output(), communicate()."""

    def __init__(self, forks, pid, stem, go):
        self.forks, self.pid, self.stem, self._go, self.returncode = forks, pid, stem, go, None

    def go(self):
        with open(self._go, "w") as f:  # the child opens its end at its fork: this does not block long
            f.write("\n")

    def _wait(self, block):
        if self.returncode is None:
            self.returncode = self.forks._ask({"op": "wait", "pid": self.pid, "block": block},
                                              timeout=600 if block else None)
        return self.returncode

    def poll(self):
        return self._wait(False)

    def wait(self):
        return self._wait(True)

    def output(self):
        return tuple(Path(f"{self.stem}.{kind}").read_text() for kind in ("out", "err"))

    def communicate(self):
        self.wait()
        return self.output()
