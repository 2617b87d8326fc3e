"""Policy stage: which versions of a LoRA policy a server that hot-loads adapters serves.

A LoRA policy whose generation runs on a server (vLLM with runtime adapter loading, see
:mod:`engine.endpoints.adapters`) keeps the server's adapters in step with the learner's
snapshots. :class:`ServedAdapters` is that bookkeeping, with no torch in it:

- version 0 is the base model, served under its own name (``EndpointConfig.model``);
- after the update that publishes version ``v``, the policy's adapter of ``v`` is written to
  ``directory/v{v}`` (by the ``write`` callable the policy gives, PEFT format:
  ``adapter_config.json`` + ``adapter_model.safetensors``, in a worker thread) and loaded
  under the name ``{run_name}-v{v}``;
- generation of batch ``k`` uses version ``max(0, k - max_staleness)``
  (:func:`engine.learning.learner.snapshot_version_for`), so after publishing ``v`` the
  versions still wanted are ``max(0, v - max_staleness) .. v``, the very snapshots the learner
  keeps; every adapter older than that is unloaded (after the new one is loaded, so a
  generator always finds its version) and its directory removed. The directory of a loaded
  adapter stays: vLLM may evict an adapter from its cache and read it again from there;
- :meth:`ServedAdapters.start` checks, before any training step, that the server lists the
  base model and has the runtime adapter API: one clear error otherwise.

Example::

    async with AdapterClient(config.endpoint) as api:
        served = ServedAdapters(api, base_model="gemma-3-270m", run_name="run1",
                                max_staleness=1, write=policy.write_adapter,
                                directory=out / "adapters")
        await served.start()
        model = served.model_for(snapshot.version)   # the ``model`` of generation requests
        metrics = await served.publish(learner.version)  # after each update
        await served.close()
"""

from __future__ import annotations

import re
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Protocol

import anyio
import anyio.to_thread

from ..endpoints.adapters import ServedModel
from ..errors import ConfigError

__all__ = ("AdapterAPI", "AdapterWriter", "ServedAdapters", "ServedStatistics")

AdapterWriter = Callable[[int, Path], None]
"""Writes the adapter of a version (first argument) into an existing empty directory."""

_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
_ADAPTER_FILES: Final = ("adapter_config.json", "adapter_model.safetensors")


class AdapterAPI(Protocol):
    """What :class:`ServedAdapters` needs of :class:`~engine.endpoints.adapters.AdapterClient`."""

    async def models(self) -> list[ServedModel]: ...

    async def load(
        self, name: str, path: str | Path, *, inplace: bool = False, step: int | None = None
    ) -> None: ...

    async def unload(self, name: str, *, step: int | None = None) -> None: ...

    async def check_runtime_api(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ServedStatistics:
    """A snapshot of :class:`ServedAdapters`.

    Attributes:
        served: the versions generation may use now, oldest first (0 is the base model).
        loads: adapters loaded so far.
        unloads: adapters unloaded so far.
        load_seconds: time spent writing and loading adapters, in total.
    """

    served: tuple[int, ...]
    loads: int
    unloads: int
    load_seconds: float


class ServedAdapters:
    """The server-side versions of one run's LoRA policy; see the module docstring.

    Args:
        api: the server's adapter API (an :class:`~engine.endpoints.adapters.AdapterClient`).
        base_model: the server's name of the base model, which serves version 0.
        run_name: the prefix of the adapter names (``{run_name}-v{version}``): letters,
            digits, ``.``, ``_`` and ``-``; make it unique per run on a shared server.
        max_staleness: ``GRPOConfig.max_staleness`` of the run.
        write: writes version ``v``'s adapter into a directory; runs in a worker thread.
        directory: where the adapters' directories go (made if missing); it must be a path
            the server can read.
        clock: monotonic seconds for the load timings.

    Raises:
        ValueError: an empty base model, a bad run name, or a negative ``max_staleness``.
    """

    def __init__(
        self,
        api: AdapterAPI,
        *,
        base_model: str,
        run_name: str,
        max_staleness: int,
        write: AdapterWriter,
        directory: str | Path,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not base_model:
            raise ValueError("ServedAdapters needs the server's name of the base model")
        if not _NAME_RE.fullmatch(run_name):
            raise ValueError(
                f"run_name {run_name!r} must be 1-100 letters, digits, '.', '_' or '-'"
            )
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.api = api
        self.base_model = base_model
        self.run_name = run_name
        self.max_staleness = max_staleness
        self.directory = Path(directory).absolute()
        self._write = write
        self._clock = clock
        self._loaded: dict[int, str] = {}  # version -> adapter name, versions >= 1
        self._lock = anyio.Lock()  # one publish, start or close at a time
        self._loads = 0
        self._unloads = 0
        self._load_seconds = 0.0

    # ------------------------------------------------------------------ names

    def name_for(self, version: int) -> str:
        """The model name of ``version``: the base model for 0, else ``{run_name}-v{version}``."""
        if version < 0:
            raise ValueError(f"versions start at 0, got {version}")
        return self.base_model if version == 0 else f"{self.run_name}-v{version}"

    def model_for(self, version: int) -> str:
        """The ``model`` a generation request for a snapshot of ``version`` names.

        Raises:
            RuntimeError: ``version`` is not served (never published, or older than
                ``max_staleness`` allows), as the learner refuses such a snapshot.
        """
        if version == 0:
            return self.base_model
        name = self._loaded.get(version)
        if name is None:
            raise RuntimeError(f"policy version {version} is not served; served: {self.served()}")
        return name

    def served(self) -> tuple[int, ...]:
        """The versions generation may use now, oldest first (0, the base model, while the
        window still reaches it)."""
        newest = max(self._loaded, default=0)
        base = (0,) if self.oldest_wanted(newest) == 0 else ()
        return base + tuple(sorted(self._loaded))

    def oldest_wanted(self, version: int) -> int:
        """The oldest version generation can still ask for once ``version`` is published:
        ``max(0, version - max_staleness)``, the learner's ``snapshot_version_for(version,
        max_staleness)``."""
        return max(0, version - self.max_staleness)

    def statistics(self) -> ServedStatistics:
        """A snapshot of what is served and what it cost."""
        return ServedStatistics(self.served(), self._loads, self._unloads, self._load_seconds)

    # ------------------------------------------------------------------ lifecycle

    async def start(self, version: int = 0) -> None:
        """Check the server, then serve the versions a run at ``version`` wants (a resumed
        run passes the learner's version; a fresh one 0, which loads nothing).

        Raises:
            ConfigError: the server does not list the base model.
            RequestRejected: the server has no runtime adapter API (the message says how to
                start vLLM with one).
            EndpointError: the server could not be asked, or refused an adapter.
        """
        listed = [m.id for m in await self.api.models()]
        if self.base_model not in listed:
            raise ConfigError(
                f"the server does not serve the base model {self.base_model!r}; it lists {listed}",
                key="endpoint.model",
            )
        await self.api.check_runtime_api()
        await self.sync(range(self.oldest_wanted(version), version + 1))

    async def publish(self, version: int, *, step: int | None = None) -> dict[str, float]:
        """Serve ``version`` (just published by the learner) and unload what no snapshot can
        use any more; metrics for the step's line. ``step`` tags the requests' events."""
        t0 = self._clock()
        loads = self._loads
        await self.sync(range(self.oldest_wanted(version), version + 1), step=step)
        return {
            "adapters/served": float(len(self._loaded)),
            "adapters/loaded": float(self._loads - loads),
            "adapters/publish_seconds": self._clock() - t0,
        }

    async def sync(self, versions: Iterable[int], *, step: int | None = None) -> None:
        """Make the loaded adapters exactly ``versions`` (0, the base model, is always
        served): load the missing ones, oldest first, then unload the rest."""
        wanted = {v for v in versions if v > 0}
        async with self._lock:
            for v in sorted(wanted - self._loaded.keys()):
                await self._load(v, step)
            for v in sorted(self._loaded.keys() - wanted):
                await self._unload(v, step)

    async def close(self) -> None:
        """Unload every adapter this run loaded and remove their directories."""
        await self.sync((), step=None)

    # ------------------------------------------------------------------ one version

    async def _load(self, version: int, step: int | None) -> None:
        t0 = self._clock()
        path = self.directory / f"v{version}"
        await anyio.to_thread.run_sync(self._write_checked, version, path)
        name = self.name_for(version)
        await self.api.load(name, path, step=step)
        self._loaded[version] = name
        self._loads += 1
        self._load_seconds += self._clock() - t0

    async def _unload(self, version: int, step: int | None) -> None:
        await self.api.unload(self._loaded[version], step=step)
        del self._loaded[version]
        self._unloads += 1
        path = self.directory / f"v{version}"
        await anyio.to_thread.run_sync(lambda: shutil.rmtree(path, ignore_errors=True))

    def _write_checked(self, version: int, path: Path) -> None:
        """Write version ``version``'s adapter into a fresh ``path``; it must hold both files."""
        if path.is_symlink():  # planted: removed, never followed
            path.unlink()
        elif path.exists():
            shutil.rmtree(path)  # left by an earlier run or a failed load: written anew
        path.mkdir(parents=True)  # exclusive: the adapter files go into a directory of ours
        self._write(version, path)
        missing = [f for f in _ADAPTER_FILES if not (path / f).is_file()]
        if missing:
            raise RuntimeError(
                f"the adapter writer left no {' or '.join(missing)} in {path} (version {version})"
            )
