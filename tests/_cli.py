"""The installed `sgm-ref` script in a subprocess, as a user runs it: shared by the command-line tests."""

import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(sys.executable).with_name("sgm-ref")


def run(*args, cwd=None, env=None, check=True):
    """Run `sgm-ref args...`; with check, a non-zero exit fails the test with the command's stderr."""
    result = subprocess.run([str(SCRIPT), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                            env={**os.environ, **(env or {})}, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"sgm-ref {' '.join(map(str, args))} exited {result.returncode}:\n{result.stderr}")
    return result


def assert_one_line_error(result, pattern):
    """Exit status 2 and exactly one stderr line, `sgm-ref: error: ...` containing pattern, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sgm-ref: error: "), result.stderr
    assert "Traceback" not in result.stderr
    assert pattern in lines[0], lines[0]
