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
    SGM_REF_THREADS was a traceback, exit status 1, from the latter.

    The interpreter's arguments are read as CPython reads them (Python/getopt.c): one-letter
    options may share a word (`python -Im sgm_ref.cli`, isolated mode, is -I -m), and -c, -m,
    -X and -W take the rest of their word or, when none is left, the next word; "--" ends the
    options and --check-hash-based-pycs takes the next word. (-Im was read as an option
    without a value, and sgm_ref.cli then as a script: a traceback again.)"""
    if os.path.basename(sys.argv[0] if sys.argv else "") == "sgm-ref":
        return True
    arguments = list(getattr(sys, "orig_argv", []))[1:]  # the interpreter's options, then what it runs
    i = 0
    while i < len(arguments):
        argument = arguments[i]
        i += 1
        if argument == "-" or argument == "--" or not argument.startswith("-"):  # stdin or a script
            return False
        if argument.startswith("--"):  # --check-hash-based-pycs MODE; --help, --version end the interpreter
            i += argument == "--check-hash-based-pycs"
            continue
        for k in range(1, len(argument)):  # -Esm: -E -s -m
            if argument[k] in "cmXW":  # their value: the rest of the word, or the next word
                value = argument[k + 1:]
                if not value:
                    value = arguments[i] if i < len(arguments) else ""
                    i += 1
                if argument[k] == "c":  # code
                    return False
                if argument[k] == "m":
                    return value == "sgm_ref.cli"
                break
    return False
