"""Refusing what a user gave on the command line: one line on stderr, exit status 2, no traceback.

The commands (`koelectra-crf ...`, `training/run.py`) raise [`UsageError`] for input they refuse (a flag value, a
missing or malformed file, an output folder that holds a previous run) with a message that says what is wrong and
how to fix it; [`refusing`] prints it as `PROG: error: MESSAGE` and exits with status 2, as argparse does with its
own errors (which [`OneLineErrors`] keeps to one line too). Any other exception is a bug and keeps its traceback;
`KOELECTRA_CRF_DEBUG=1` shows the traceback of a refusal as well.
"""

import argparse
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

DEBUG_VARIABLE = "KOELECTRA_CRF_DEBUG"
USAGE_ERROR_STATUS = 2
"""argparse's exit status for a bad command line."""


class UsageError(ValueError):
    """Input that a command refuses; the message names what is wrong and how to fix it. A `ValueError`, so that code
    calling the functions that raise it from Python catches it as before."""


def refuse(prog: str, message: str) -> NoReturn:
    """Print `PROG: error: MESSAGE` as one line on stderr and exit with status 2."""
    one_line = " ".join(line.strip() for line in str(message).splitlines())
    print(f"{prog}: error: {one_line}", file=sys.stderr)
    raise SystemExit(USAGE_ERROR_STATUS)


@contextmanager
def refusing(prog: str) -> Iterator[None]:
    """Inside the block, a [`UsageError`], or an `ImportError` that says what to `pip install` (an optional extra a
    feature needs, such as kiwipiepy), ends the program with [`refuse`], unless `KOELECTRA_CRF_DEBUG` is set to
    something other than 0 (then it propagates, traceback and all)."""
    try:
        yield
    except (UsageError, ImportError) as error:
        if isinstance(error, ImportError) and "pip install" not in str(error):
            raise  # a broken installation, not a missing extra: its traceback tells what is wrong
        if os.environ.get(DEBUG_VARIABLE, "0") not in ("", "0"):
            raise
        refuse(prog, str(error))


class OneLineErrors(argparse.ArgumentParser):
    """An argument parser whose errors (an unknown flag, a bad value) are one line, pointing to `--help`, instead of
    the usage text and the error. Subparsers made with `add_subparsers` are of the same class."""

    def error(self, message: str) -> NoReturn:
        refuse(self.prog, f"{message} (`{self.prog} --help` lists the options)")


def existing_file(flag: str, path: str | os.PathLike) -> Path:
    """`path` if it is a file; else a [`UsageError`] naming `flag`."""
    path = Path(path)
    if not path.is_file():
        problem = "is a folder, not a file" if path.is_dir() else "does not exist"
        raise UsageError(f"{flag} {path}: {problem}; give the path of an existing file")
    return path


def new_output(flag: str, path: Path, overwrite: bool) -> Path:
    """`path` for a command to write, refused when a file is already there unless `overwrite` (`--overwrite`)."""
    if path.exists() and not overwrite:
        raise UsageError(f"{flag} {path} exists: give --overwrite to replace it, or another path")
    return path
