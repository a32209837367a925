"""Whether this process is the `sgm-ref` command line: one light module, imported first.

The package's __init__ asks it before any heavy import (numba, scipy), so that a Ctrl-C in
a command's first second can still end as the command line ends (one line, status 130);
_threads asks it to report a bad SGM_REF_THREADS as one line, status 2.
"""

import os
import sys

__all__ = ["is_command_line"]


def is_command_line():
    """True in the command line, which reports a bad setting as one line, exit status 2: the
    `sgm-ref` script, or `python -m sgm_ref.cli` (whose sys.argv[0] is "-m" while the module is
    found, when sgm_ref is imported: the interpreter's own arguments name it). A bad
    SGM_REF_THREADS was a traceback, exit status 1, from the latter."""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "sgm-ref":
        return True
    arguments = list(getattr(sys, "orig_argv", []))[1:]  # the interpreter's options, then what it runs
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        if argument.startswith("-m"):
            return (argument[2:] or (arguments[i + 1] if i + 1 < len(arguments) else "")) == "sgm_ref.cli"
        if argument.startswith("-c") or not argument.startswith("-") or argument == "-":  # code, a script, stdin
            return False
        i += 2 if argument in ("-X", "-W", "--check-hash-based-pycs") else 1  # options with a separate value
    return False
