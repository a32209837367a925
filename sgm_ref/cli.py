"""The `sgm-ref` command. It only wires the library together; nothing imports it."""

import argparse
import sys

from . import __version__


def build_parser():
    parser = argparse.ArgumentParser(
        prog="sgm-ref",
        description="Exact, fast reference implementation of score-based generative models.",
    )
    parser.add_argument("--version", action="version", version=f"sgm-ref {__version__}")
    return parser


def main(argv=None):
    """Entry point; returns the exit status (0 ok, 2 bad input)."""
    parser = build_parser()
    try:
        parser.parse_args(argv)
        parser.print_help()
    except ValueError as exc:
        print(f"sgm-ref: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
