"""Runs ``python -m engine`` argument lists one after another in this one process.

The property test over command-line arguments (``test_cli_args.py``) sends one JSON request
per line on stdin, ``{"argv": [...], "cwd": DIR, "stdout": FILE, "stderr": FILE}``, and reads
one JSON line back, ``{"rc": STATUS}``. Each request runs :func:`engine.__main__.main` as
``python -m engine`` would, with file descriptors 1 and 2 pointed at the two files (so what C
code, structlog and Python print all land there), an uncaught exception printed as Python
prints it with status 1, and ``SystemExit`` turned into its status. Starting one interpreter
for every example would cost a second each; a subprocess sample in the test checks that this
process answers as a fresh one does.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import traceback


def _status(exc: SystemExit) -> int:
    """The exit status ``sys.exit(code)`` gives, as the interpreter computes it."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code
    print(exc.code, file=sys.stderr)
    return 1


def run_one(argv: list[str]) -> int:
    """``python -m engine ARGV`` in this process; its exit status."""
    from engine.__main__ import main

    try:
        return int(main(argv))
    except SystemExit as exc:
        return _status(exc)
    except BaseException:  # as the interpreter does: the traceback on stderr, status 1
        traceback.print_exc()
        return 1


def serve() -> None:
    replies = os.fdopen(os.dup(1), "w")
    thresholds = gc.get_threshold()
    for line in sys.stdin:
        request = json.loads(line)
        os.chdir(request["cwd"])
        out = os.open(request["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        err = os.open(request["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        saved = os.dup(1), os.dup(2)
        os.dup2(out, 1)
        os.dup2(err, 2)
        try:
            rc = run_one(request["argv"])
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (out, err, *saved):
                os.close(fd)
            gc.unfreeze()  # what the CLI's tune_gc() did, undone for the next example
            gc.set_threshold(*thresholds)
        replies.write(json.dumps({"rc": rc}) + "\n")
        replies.flush()


if __name__ == "__main__":
    serve()
