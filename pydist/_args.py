"""Argument parsing shared by pydist's commands (`pydist`, `pydist worker`, `pydist docker`).

A command-line mistake gets one line on stderr, `PROG: error: what (see PROG --help)`, and
exit status 2 (as argparse and python use), never a traceback or a page of usage."""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

USAGE_ERROR = 2      # the exit status of a bad argument or file, as argparse and python use


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors."""

    def error(self, message: str) -> NoReturn:
        fail(self.prog, message)


def fail(prog: str, message: str) -> NoReturn:
    """Print `PROG: error: message (see PROG --help)` and exit with status 2."""
    print(f"{prog}: error: {message} (see {prog} --help)", file=sys.stderr)
    raise SystemExit(USAGE_ERROR)


def version() -> str:
    """pydist's version, as installed (the source tree's pyproject when not installed)."""
    from importlib.metadata import PackageNotFoundError, version as installed
    try:
        return installed("pydist")
    except PackageNotFoundError:
        return "unknown (not installed: pip install -e .)"
