"""Sandbox stage: run untrusted Python in a separate, isolated, limited process, asynchronously.

Example::

    async with Sandbox(SandboxConfig(wall_seconds=5)) as sandbox:
        result = await sandbox.run("print(sum(range(10)))")
    result.stdout        # "45\\n"
    result.limit         # None; "wall", "cpu", "memory", "output" or "processes" when hit

Each run gets a fresh temporary directory (its working directory and ``HOME``, removed
after), a minimal environment (nothing of the engine's ``os.environ``), the interpreter in
isolated mode (``-I``), and the launcher's isolation (:mod:`engine.sandbox._launcher`): no
network (a network namespace of its own), a PID namespace, ``RLIMIT_CPU``, ``RLIMIT_AS``,
``RLIMIT_FSIZE``, ``RLIMIT_NOFILE`` and a process cap (``RLIMIT_NPROC``, or a pids cgroup
for root). The wall-clock limit and the output cap are the engine's: at either, the run's
whole process group is killed with SIGKILL, and the launcher's death takes down the PID
namespace (a process that left the group included).

Where the platform cannot isolate, :meth:`Sandbox.run` raises
:class:`~engine.errors.SandboxUnavailable` and runs nothing. A result whose code hit a
limit is still a result (the code's fault); :class:`~engine.errors.SandboxError` means the
sandbox itself failed. Runs are bounded by ``max_concurrency``; nothing blocks the loop
(files and directories are made and removed in a worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Literal

import orjson

from ..config.sections import SandboxConfig
from ..errors import SandboxError
from .isolation import LAUNCHER, Isolation, probe

__all__ = ("Limit", "Sandbox", "SandboxResult")

Limit = Literal["cpu", "wall", "memory", "output", "processes"]
"""Which limit a run hit."""

_CHANNEL_CAP = 1 << 20
"""Bytes kept from a run's result channel (the unit-test harness's reports)."""
_TRUNCATED = "\n[... output truncated at {} bytes]"


@dataclass(frozen=True, slots=True)
class SandboxResult:
    """The outcome of one run.

    Attributes:
        stdout: what the code wrote to stdout (UTF-8, undecodable bytes replaced), at most
            ``max_output_bytes``, marked at the end when truncated.
        stderr: the same for stderr.
        exit_code: the code's exit status; None when a signal ended it.
        signal: the signal that ended it, or None.
        limit: the limit it hit, or None.
        truncated: stdout or stderr was cut at the cap.
        duration: seconds from spawning the launcher to its exit.
        cpu_seconds: CPU time of the code's first process (its children not counted).
        channel: bytes written to the result channel (``channel=True`` runs).
        timings: where the time went, seconds: ``spawn`` (fork and exec of the launcher),
            ``launcher`` (its interpreter start), ``isolate`` (namespaces), ``setup``
            (limits and fork), ``code`` (exec of the code's interpreter to its exit).
    """

    stdout: str
    stderr: str
    exit_code: int | None
    signal: int | None
    limit: Limit | None
    truncated: bool
    duration: float
    cpu_seconds: float = 0.0
    channel: bytes = b""
    timings: Mapping[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """The code exited with status 0 within every limit."""
        return self.exit_code == 0 and self.limit is None

    def describe(self) -> str:
        """One line on how the run ended, e.g. ``exit 1`` or ``killed: wall limit``."""
        if self.limit in ("wall", "output"):
            return f"killed: {self.limit} limit"
        end = f"exit {self.exit_code}" if self.signal is None else f"signal {self.signal}"
        return end if self.limit is None else f"{self.limit} limit reached ({end})"


@dataclass(slots=True)
class _Stream:
    """One pipe being drained with a cap."""

    cap: int
    data: bytearray = field(default_factory=bytearray)
    overflow: bool = False


class Sandbox:
    """Runs code in isolated, limited processes; see the module docstring.

    Args:
        config: the limits (``[sandbox]``); default :class:`SandboxConfig`.
        cgroup_fs: where cgroup filesystems are mounted (read only when the engine runs as
            root, for the pids cgroup that caps processes).

    It is usable without ``async with``; as an async context manager its exit waits for the
    runs still in flight. Concurrency is bounded per event loop.
    """

    def __init__(
        self, config: SandboxConfig | None = None, *, cgroup_fs: Path = Path("/sys/fs/cgroup")
    ) -> None:
        self.config = config or SandboxConfig()
        self.python = self.config.python or sys.executable
        self.cgroup_fs = cgroup_fs
        self._slots: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}
        self._in_flight: set[asyncio.Task[SandboxResult]] = set()

    async def __aenter__(self) -> Sandbox:
        await self.check()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def check(self) -> Isolation:
        """What isolation this machine gives (probed once per interpreter).

        Raises:
            SandboxUnavailable: it cannot isolate code here; the message says why.
        """
        return await probe(self.python, cgroup_fs=self.cgroup_fs)

    def _slot(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        slot = self._slots.get(loop)
        if slot is None:
            for old in [lp for lp in self._slots if lp.is_closed()]:
                del self._slots[old]
            slot = self._slots[loop] = asyncio.Semaphore(self.config.max_concurrency)
        return slot

    async def run(
        self, code: str, *, files: Mapping[str, str | bytes] | None = None
    ) -> SandboxResult:
        """Run ``code`` as ``main.py`` (beside ``files``, names relative to its directory).

        Raises:
            SandboxUnavailable: the platform cannot isolate it (nothing was run).
            SandboxError: the sandbox failed to start the code.
        """
        return await self.run_script(["main.py"], files={**(files or {}), "main.py": code})

    async def run_script(
        self,
        args: Sequence[str],
        *,
        files: Mapping[str, str | bytes] | None = None,
        stdin: bytes = b"",
        channel: bool = False,
    ) -> SandboxResult:
        """Run ``python -I ARGS...`` in a fresh directory holding ``files``.

        ``stdin`` is written to the code's stdin (then closed); with ``channel``, the code
        gets a pipe of its own whose descriptor number is in ``$SANDBOX_CHANNEL_FD``, and what
        it writes there comes back in :attr:`SandboxResult.channel`.
        """
        isolation = await self.check()
        task = asyncio.current_task()
        async with self._slot():
            if task is not None:
                self._in_flight.add(task)  # type: ignore[arg-type]
            try:
                return await self._run(isolation, list(args), dict(files or {}), stdin, channel)
            finally:
                if task is not None:
                    self._in_flight.discard(task)  # type: ignore[arg-type]

    async def _run(
        self,
        isolation: Isolation,
        args: list[str],
        files: dict[str, str | bytes],
        stdin: bytes,
        channel: bool,
    ) -> SandboxResult:
        workdir, cgroup = await asyncio.to_thread(
            _prepare, files, isolation.cgroup_root, self.config.max_processes
        )
        try:
            return await self._spawn(workdir, cgroup, args, stdin, channel)
        finally:
            await asyncio.shield(asyncio.to_thread(_remove, workdir, cgroup))

    async def _spawn(
        self, workdir: Path, cgroup: Path | None, args: list[str], stdin: bytes, channel: bool
    ) -> SandboxResult:
        status_r, status_w = os.pipe()
        chan_r, chan_w = os.pipe() if channel else (-1, -1)
        env = _environment(workdir, chan_w)
        spec = _spec(self.config, self.python, args, env, status_w, chan_w, cgroup)
        t0 = time.monotonic()
        try:
            proc = await asyncio.create_subprocess_exec(
                self.python,
                "-I",
                "-S",
                LAUNCHER,
                spec,
                stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                cwd=workdir,
                env=env,
                pass_fds=(status_w,) + ((chan_w,) if channel else ()),
                start_new_session=True,
            )
        except OSError as exc:
            for fd in (status_r, chan_r):
                if fd >= 0:
                    os.close(fd)
            raise SandboxError(f"cannot start the sandbox ({self.python}): {exc}") from None
        finally:
            for fd in (status_w, chan_w):
                if fd >= 0:
                    os.close(fd)
        spawned = time.monotonic()
        return await self._supervise(proc, stdin, status_r, chan_r, t0, spawned, cgroup)

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        stdin: bytes,
        status_r: int,
        chan_r: int,
        t0: float,
        spawned: float,
        cgroup: Path | None,
    ) -> SandboxResult:
        cap = self.config.max_output_bytes
        out, err = _Stream(cap), _Stream(cap)
        status, chan = _Stream(_CHANNEL_CAP), _Stream(_CHANNEL_CAP)
        over = asyncio.Event()
        assert proc.stdout is not None and proc.stderr is not None
        readers = [
            _drain_reader(proc.stdout, out, over),
            _drain_reader(proc.stderr, err, over),
            _drain_fd(status_r, status, None),
        ]
        if chan_r >= 0:
            readers.append(_drain_fd(chan_r, chan, None))
        if stdin and proc.stdin is not None:
            readers.append(_feed(proc.stdin, stdin))
        killed: Limit | None = None
        done = asyncio.ensure_future(asyncio.gather(*readers, proc.wait()))
        overflow = asyncio.ensure_future(over.wait())
        try:
            finished, _ = await asyncio.wait(
                {done, overflow},
                timeout=self.config.wall_seconds,
                return_when=asyncio.FIRST_COMPLETED,
            )
            if done not in finished:
                killed = "output" if overflow in finished else "wall"
        finally:
            overflow.cancel()
            if proc.returncode is None:
                _kill_group(proc.pid)
            await asyncio.shield(_reap(proc, done))
        ended = time.monotonic()
        events = _events(bytes(status.data))
        return _result(self.config, out, err, chan, events, killed, t0, spawned, ended, cgroup)


# ----------------------------------------------------------------------------- helpers


def _prepare(
    files: Mapping[str, str | bytes], cgroup_root: Path | None, max_processes: int
) -> tuple[Path, Path | None]:
    """Blocking: the run's fresh directory with ``files`` in it, and its pids cgroup."""
    workdir = Path(tempfile.mkdtemp(prefix="grpo-sandbox-"))
    try:
        for name, content in files.items():
            path = (workdir / name).resolve()
            if workdir.resolve() not in path.parents:
                raise SandboxError(f"sandbox file {name!r} is outside its directory")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content.encode() if isinstance(content, str) else content)
        cgroup = None
        if cgroup_root is not None:
            cgroup = cgroup_root / f"grpo-sandbox-{uuid.uuid4().hex[:16]}"
            cgroup.mkdir()
            (cgroup / "pids.max").write_text(str(max_processes + 1))
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    return workdir, cgroup


def _remove(workdir: Path, cgroup: Path | None) -> None:
    """Blocking: remove the run's directory (whatever the code did to its permissions) and
    its cgroup (retried while the killed processes leave it)."""

    def writable(func: object, path: str, exc: object) -> None:
        del func, exc
        with contextlib.suppress(OSError):
            os.chmod(os.path.dirname(path), 0o700)
            os.chmod(path, 0o700)
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)

    shutil.rmtree(workdir, onerror=writable)
    if workdir.exists():
        shutil.rmtree(workdir, ignore_errors=True)
    if cgroup is not None:
        for _ in range(200):
            try:
                cgroup.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)


def _environment(workdir: Path, chan_w: int) -> dict[str, str]:
    """The code's whole environment: nothing of the engine's."""
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": str(workdir),
        "TMPDIR": str(workdir),
        "LANG": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    if chan_w >= 0:
        env["SANDBOX_CHANNEL_FD"] = str(chan_w)
    return env


def _spec(
    config: SandboxConfig,
    python: str,
    args: list[str],
    env: dict[str, str],
    status_w: int,
    chan_w: int,
    cgroup: Path | None,
) -> str:
    """The launcher's JSON argument."""
    return orjson.dumps(
        {
            "status_fd": status_w,
            "keep_fds": [chan_w] if chan_w >= 0 else [],
            "cgroup": str(cgroup) if cgroup is not None else "",
            "argv": [python, *(() if config.site_packages else ("-S",)), "-I", *args],
            "exec": config.fresh_interpreter,
            "site": config.site_packages,
            "env": env,
            "cpu": max(1, math.ceil(config.cpu_seconds)),
            "memory": config.memory_mb * 1024 * 1024,
            "fsize": config.max_file_mb * 1024 * 1024,
            "nofile": 256,
            # the launcher counts: it and the code's first process are in the new namespace
            "nproc": config.max_processes + 1,
        }
    ).decode()


async def _drain_reader(reader: asyncio.StreamReader, sink: _Stream, over: asyncio.Event) -> None:
    """Read a pipe to its end, keeping at most ``sink.cap`` bytes; past it, set ``over``.

    Past the cap it goes on reading and drops what it reads: a reader that stopped would leave
    the pipe paused, its end never seen, and on Python 3.11 ``proc.wait()`` returns only once
    every pipe of the process has reached its end (the run would hang after its kill)."""
    while chunk := await reader.read(65536):
        if sink.overflow:
            continue
        room = sink.cap - len(sink.data)
        if len(chunk) > room:
            sink.data += chunk[: max(room, 0)]
            sink.overflow = True
            over.set()
            continue
        sink.data += chunk


async def _drain_fd(fd: int, sink: _Stream, over: asyncio.Event | None) -> None:
    """:func:`_drain_reader` on a raw pipe descriptor (closed at the end)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=_CHANNEL_CAP)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(fd, "rb", buffering=0)
    )
    try:
        await _drain_reader(reader, sink, over or asyncio.Event())
    finally:
        transport.close()


async def _feed(writer: asyncio.StreamWriter, data: bytes) -> None:
    """Write ``data`` to the code's stdin and close it (the code may exit without reading)."""
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        writer.write(data)
        await writer.drain()
    writer.close()


def _kill_group(pid: int) -> None:
    """SIGKILL the launcher's process group (its death kills the PID namespace)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def _reap(proc: asyncio.subprocess.Process, done: asyncio.Future[object]) -> None:
    """Wait for the killed launcher and let the readers reach the pipes' ends."""
    await proc.wait()
    try:
        await asyncio.wait_for(asyncio.shield(done), timeout=5.0)
    except TimeoutError:  # a pipe held open by an escaped process
        done.cancel()
    with contextlib.suppress(BaseException):
        await done


def _events(raw: bytes) -> dict[str, dict[str, object]]:
    """The launcher's status lines by event name (the last of each)."""
    events: dict[str, dict[str, object]] = {}
    for line in raw.splitlines():
        with contextlib.suppress(orjson.JSONDecodeError):
            event = orjson.loads(line)
            if isinstance(event, dict) and isinstance(event.get("e"), str):
                events[event["e"]] = event
    return events


def _text(stream: _Stream) -> str:
    text = stream.data.decode("utf-8", errors="replace")
    return text + _TRUNCATED.format(stream.cap) if stream.overflow else text


def _timings(
    events: Mapping[str, Mapping[str, object]], t0: float, spawned: float, ended: float
) -> dict[str, float]:
    """Where the time went (the launcher's clock is the same monotonic clock)."""
    marks = [("spawn", spawned)]
    for name, key in (("launcher", "start"), ("isolate", "isolated"), ("setup", "exec")):
        t = events.get(key, {}).get("t")
        if isinstance(t, float):
            marks.append((name, t))
    out: dict[str, float] = {}
    prev = t0
    for name, t in marks:
        out[name] = max(0.0, t - prev)
        prev = max(prev, t)
    exit_t = events.get("exit", {}).get("t")
    out["code"] = max(0.0, (exit_t if isinstance(exit_t, float) else ended) - prev)
    return out


def _result(
    config: SandboxConfig,
    out: _Stream,
    err: _Stream,
    chan: _Stream,
    events: Mapping[str, Mapping[str, object]],
    killed: Limit | None,
    t0: float,
    spawned: float,
    ended: float,
    cgroup: Path | None,
) -> SandboxResult:
    """The result, or SandboxError when the launcher never ran the code."""
    error = events.get("error")
    if error is not None:
        raise SandboxError(f"the sandbox failed to {error.get('stage')}: {error.get('message')}")
    exit_event = events.get("exit")
    if exit_event is None and killed is None:
        tail = err.data.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise SandboxError(f"the sandbox launcher died before the code ended: {tail[0]}")
    code = exit_event.get("code") if exit_event else None
    sig = exit_event.get("signal") if exit_event else signal.SIGKILL
    cpu = exit_event.get("cpu", 0.0) if exit_event else 0.0
    cpu = float(cpu) if isinstance(cpu, int | float) else 0.0
    limit = killed or _limit_hit(config, code, sig, cpu, err, cgroup)
    return SandboxResult(
        stdout=_text(out),
        stderr=_text(err),
        exit_code=code if isinstance(code, int) else None,
        signal=sig if isinstance(sig, int) else None,
        limit=limit,
        truncated=out.overflow or err.overflow,
        duration=ended - t0,
        cpu_seconds=cpu,
        channel=bytes(chan.data),
        timings=_timings(events, t0, spawned, ended),
    )


def _limit_hit(
    config: SandboxConfig,
    code: object,
    sig: object,
    cpu: float,
    err: _Stream,
    cgroup: Path | None,
) -> Limit | None:
    """Which limit ended a run the engine did not kill: read from how it ended."""
    # rusage rounds CPU time to ticks below what RLIMIT_CPU counted: allow a quarter
    if sig in (signal.SIGXCPU, signal.SIGKILL) and cpu >= 0.75 * math.ceil(config.cpu_seconds):
        return "cpu"
    if cgroup is not None and _pids_max_hit(cgroup):
        return "processes"
    tail = bytes(err.data[-4096:])
    if code not in (0, None):
        if b"MemoryError" in tail:
            return "memory"
        if b"Resource temporarily unavailable" in tail and b"fork" in tail.lower():
            return "processes"
    return None


def _pids_max_hit(cgroup: Path) -> bool:
    """Blocking but tiny (one cgroupfs read): the cgroup refused a fork."""
    try:
        text = (cgroup / "pids.events").read_text()
    except OSError:
        return False
    for line in text.splitlines():
        name, _, count = line.partition(" ")
        if name == "max" and count.strip() not in ("", "0"):
            return True
    return False
