"""Entry point of ``python -m engine`` (and the ``grpo-engine`` script): see :mod:`engine.cli`.

The command line configures single-threaded BLAS before numpy loads (:mod:`engine._blas`), so
``import engine.__main__`` stays light and the CLI's modules load when :func:`main` runs.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from . import _blas  # noqa: F401  (sets BLAS threads before numpy loads)

__all__ = ("main",)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    from .cli.main import main as cli_main  # loads numpy: after _blas, not at import

    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main())
