"""Sandbox stage: can this machine isolate code? The probe, and the pids cgroup for root.

The sandbox needs three things of the platform, and refuses to run code without them
(:class:`~engine.errors.SandboxUnavailable`, saying which is missing):

* Linux;
* unprivileged user namespaces, so that the launcher can give the code a network namespace of
  its own (no network) and a PID namespace (nothing outlives the run). :func:`probe` runs the
  launcher once per interpreter to find out (``unshare`` fails where the kernel forbids user
  namespaces, where ``user.max_user_namespaces`` is 0, inside most seccomp profiles);
* a process-count cap: ``RLIMIT_NPROC`` for an unprivileged engine; the kernel never applies
  it to root, so an engine running as root needs a writable ``pids`` cgroup
  (:func:`pids_cgroup_root`), else it refuses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from ..errors import SandboxUnavailable

__all__ = ("LAUNCHER", "Isolation", "pids_cgroup_root", "probe")

LAUNCHER = str(Path(__file__).with_name("_launcher.py"))
"""The launcher script (run with ``python -I -S``, never imported)."""

_CGROUP_FS = Path("/sys/fs/cgroup")
_PROBE_SECONDS = 60.0
"""How long the probe waits for the launcher (a loaded machine can take seconds)."""


@dataclass(frozen=True, slots=True)
class Isolation:
    """What the probe found for one interpreter.

    Attributes:
        python: the interpreter probed.
        cgroup_root: the directory run cgroups are made in (root only), or None when
            ``RLIMIT_NPROC`` caps processes.
    """

    python: str
    cgroup_root: Path | None


_probed: dict[str, Isolation | str] = {}
"""Probe results by interpreter: an :class:`Isolation`, or why isolation is unavailable."""


def _try_cgroup(root: Path) -> bool:
    """Whether a child cgroup with a ``pids.max`` can be made (and removed) under ``root``."""
    probe_dir = root / f"grpo-sandbox-probe-{uuid.uuid4().hex[:12]}"
    try:
        probe_dir.mkdir()
    except OSError:
        return False
    try:
        return (probe_dir / "pids.max").exists()
    finally:
        with contextlib.suppress(OSError):
            probe_dir.rmdir()


def pids_cgroup_root(cgroup_fs: Path = _CGROUP_FS) -> Path | None:
    """Blocking: a writable pids cgroup directory to make run cgroups in, or None.

    Tries the cgroup v1 ``pids`` hierarchy, then (v2) the engine's own cgroup, where the
    ``pids`` controller must be delegated to children.
    """
    candidates = [cgroup_fs / "pids"]
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                candidates.append(cgroup_fs / line[3:].lstrip("/"))
    except OSError:
        pass
    for root in candidates:
        if root.is_dir() and _try_cgroup(root):
            return root
    return None


async def probe(python: str, *, cgroup_fs: Path = _CGROUP_FS) -> Isolation:
    """Find out (once per interpreter and process) whether code can be isolated here.

    Args:
        python: the interpreter that will run the launcher and the code.
        cgroup_fs: where cgroup filesystems are mounted (``/sys/fs/cgroup``); only read when
            the engine runs as root.

    Raises:
        SandboxUnavailable: not Linux; the launcher cannot make the namespaces (the reason
            from the kernel); or running as root without a writable pids cgroup.
    """
    key = f"{python}\0{cgroup_fs}"
    found = _probed.get(key)
    if found is None:
        found = await _probe(python, cgroup_fs)
        _probed[key] = found
    if isinstance(found, str):
        raise SandboxUnavailable(found)
    return found


async def _probe(python: str, cgroup_fs: Path) -> Isolation | str:
    if not sys.platform.startswith("linux"):
        return f"the sandbox needs Linux namespaces; this platform is {sys.platform}"
    reason = await _launch_probe(python)
    if reason is not None:
        return reason
    cgroup_root = None
    if os.geteuid() == 0:
        cgroup_root = await asyncio.to_thread(pids_cgroup_root, cgroup_fs)
        if cgroup_root is None:
            return (
                "the engine runs as root, where RLIMIT_NPROC does not apply, and no writable "
                f"pids cgroup was found under {cgroup_fs}: the sandbox cannot cap processes "
                "(run the engine as an unprivileged user, or give it a pids cgroup)"
            )
    return Isolation(python, cgroup_root)


async def _launch_probe(python: str) -> str | None:
    """Run the launcher in probe mode: None when it isolated itself, else why not."""
    read_fd, write_fd = os.pipe()
    spec = orjson.dumps({"status_fd": write_fd, "probe": True}).decode()
    try:
        proc = await asyncio.create_subprocess_exec(
            python,
            "-I",
            "-S",
            LAUNCHER,
            spec,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            pass_fds=(write_fd,),
            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            start_new_session=True,
        )
    except OSError as exc:
        os.close(read_fd)
        return f"cannot start the sandbox interpreter {python!r}: {exc}"
    finally:
        os.close(write_fd)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), _PROBE_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)
        await proc.wait()
        os.close(read_fd)
        return f"the sandbox launcher did not answer within {_PROBE_SECONDS:g} s"
    status = await asyncio.to_thread(_read_all, read_fd)
    for line in status.splitlines():
        event = orjson.loads(line)
        if event.get("e") == "isolated":
            return None
        if event.get("e") == "error":
            return (
                "cannot make a user, network and PID namespace for the code "
                f"(unshare: {event.get('message')}); unprivileged user namespaces are "
                "disabled or exhausted here (kernel.unprivileged_userns_clone, "
                "user.max_user_namespaces, a seccomp profile)"
            )
    tail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
    return f"the sandbox launcher failed (exit {proc.returncode}): {tail[0]}"


def _read_all(fd: int) -> bytes:
    """Blocking: everything from a pipe whose writers are all closed."""
    with os.fdopen(fd, "rb") as fh:
        return fh.read()
