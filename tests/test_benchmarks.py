"""The benchmark scripts' command lines: each one's ``--help`` prints and exits 0.

Nothing is timed here (benchmarks/ measures speed; see benchmarks/README.md). argparse
formats help strings with ``%``, so a bare ``%`` in a help text ("as % of a peak") makes
``--help`` raise a TypeError; this test caught one such string.
"""
import pathlib
import subprocess
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("*.py") if not p.name.startswith("_"))


def test_every_script_is_listed():
    assert "train_step.py" in SCRIPTS and "sampler.py" in SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_prints(script):
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), "--help"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "usage:" in proc.stdout
