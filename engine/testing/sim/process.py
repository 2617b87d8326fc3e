"""The simulated server in a child process, for benchmarks and tests that measure the client
process alone."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Iterator

__all__ = ("sim_subprocess",)


@contextlib.contextmanager
def sim_subprocess(*cli_args: str) -> Iterator[str]:
    """Run ``python -m engine serve-sim --port 0 ARGS`` in a child process; yields its base URL
    and stops it on exit.

    Example::

        with sim_subprocess("--latency", "0.05") as url:
            ...  # Client(EndpointConfig(base_url=url, ...))
    """
    cmd = [sys.executable, "-m", "engine", "serve-sim", "--port", "0", *cli_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"the simulated server did not start: {url!r}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
