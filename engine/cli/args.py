"""Command-line values checked where they are parsed: the bad-input contract for arguments.

Every subcommand's bad argument ends like any other bad input: one line ``error: ...`` on
stderr, exit status 2, nothing written. :class:`OneLineParser` replaces argparse's usage block
and ``prog: error:`` line with that one line; the argument types here refuse what argparse's
``int`` and ``float`` let through (``1_000``, full-width digits, ``nan``, ``inf``, integers
beyond 64 bits, negative counts); the output checks run before anything is computed, so a
``--out`` that cannot be written is refused before the work, not after it.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from ..errors import ConfigError

__all__ = (
    "INT64_MAX",
    "MAX_CONCURRENCY",
    "MAX_RESAMPLES",
    "MAX_SAMPLES",
    "OneLineParser",
    "check_output_dir",
    "check_output_file",
    "finite_float",
    "int_range",
    "print_error",
)

INT64_MAX = 2**63 - 1
"""The largest integer any count or seed may be: what JSON files and numpy hold."""

MAX_CONCURRENCY = 100_000
"""The most calls ``--concurrency`` may put in flight."""

MAX_SAMPLES = 10_000
"""The most samples per input ``compare --samples`` may ask for."""

MAX_RESAMPLES = 10_000_000
"""The most bootstrap and permutation resamples ``compare --resamples`` may ask for."""

_INT = re.compile(r"[+-]?[0-9]+")


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, ``error: PROG: MESSAGE``, exit status 2.

    Subparsers made with ``add_subparsers`` inherit the class, so every subcommand does the
    same; ``--help`` is unchanged.
    """

    def error(self, message: str) -> NoReturn:
        text = " ".join(message.split())  # argparse messages may span lines (choices)
        self.exit(2, f"error: {self.prog}: {text}\n")


def int_range(lo: int, hi: int = INT64_MAX) -> Callable[[str], int]:
    """An argparse type: a plain decimal integer in ``[lo, hi]`` (no ``_``, no non-ASCII
    digits, no exponent)."""

    def parse(text: str) -> int:
        if not _INT.fullmatch(text):
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}")
        value = int(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo} and {hi}, got {text}")
        return value

    parse.__name__ = "integer"  # argparse names the type in its messages
    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan``, ``inf`` and overflowing ``1e400`` refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def check_output_file(path: str | None, flag: str, *, append: bool = False) -> None:
    """Refuse an output file that cannot be written, before any work: a directory there, a
    parent that is a file, an empty name; with ``append`` (a log the run appends to) also a
    symlink or a special file there.

    Raises:
        ConfigError: naming ``flag`` and the path.
    """
    if path is None:
        return
    if not path.strip():
        raise ConfigError(f"{flag}: empty path")
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"{flag} {path}: is a directory; expected a file")
    if append and p.is_symlink():
        raise ConfigError(f"{flag} {path}: is a symlink; refusing to write through it")
    if p.exists() and not p.is_file():
        raise ConfigError(f"{flag} {path}: not a regular file")
    _check_parent(p.parent, flag, path)


def check_output_dir(path: str | None, flag: str) -> None:
    """Refuse an output directory that cannot be one, before any work: a file there (or a
    file among its parents), an empty name.

    Raises:
        ConfigError: naming ``flag`` and the path.
    """
    if path is None:
        return
    if not path.strip():
        raise ConfigError(f"{flag}: empty path")
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"{flag} {path}: exists and is not a directory")
    _check_parent(p, flag, path)


def _check_parent(directory: Path, flag: str, path: str) -> None:
    """The nearest existing ancestor of ``directory`` must be a writable directory."""
    d = directory
    while not d.exists():
        if d.is_symlink():  # a dangling symlink: mkdir would fail on it
            raise ConfigError(f"{flag} {path}: {d} is a dangling symlink")
        if d.parent == d:
            break
        d = d.parent
    if not d.is_dir():
        raise ConfigError(f"{flag} {path}: {d} is not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {path}: {d} is not writable")


def print_error(message: str) -> None:
    """The one ``error:`` line of the bad-input contract (newlines folded into spaces)."""
    print("error: " + " ".join(str(message).split()), file=sys.stderr)
