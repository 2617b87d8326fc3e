"""Joining (or starting) the Ray cluster of a run, and refusing nodes that differ from us.

:class:`RayCluster` is an async context manager: entering it starts a local cluster
(``cluster.address`` empty, ``cluster.local_cpus`` CPUs) or joins the one at the address, and
checks every node; leaving it disconnects (and stops a cluster it started). Ray's blocking
calls run in a worker thread, so the event loop stays free.

**An unreachable address** is one :class:`ClusterError` within ``cluster.connect_timeout``
seconds: a ``HOST:PORT`` is first probed with a TCP connection (Ray itself would retry for
a long time), then ``ray.init`` must return within the same bound.

**Versions.** A task pinned to each alive node reports its Python version and its engine's
version; any node whose Python ``major.minor`` or whose ``grpo-engine`` version differs from
the driver's is refused by name (its node name and address) before the run starts.
"""

from __future__ import annotations

import importlib.metadata
import socket
import sys
import time
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.to_thread

from ..config.sections import ClusterConfig
from ..errors import ConfigError
from ..telemetry.logs import get_logger
from ._ray import ray_module

__all__ = ("ClusterError", "NodeInfo", "RayCluster", "node_versions")

_log = get_logger("engine.cluster.connect")


class ClusterError(ConfigError):
    """The cluster cannot be used: unreachable, or a node that differs from the driver."""


def _engine_version() -> str:
    return importlib.metadata.version("grpo-engine")


def _python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class NodeInfo(dict[str, Any]):
    """What one node reported: ``node``, ``address``, ``python``, ``engine``."""


def _probe() -> dict[str, str]:
    """Runs on a node: its Python and engine versions."""
    out = {"python": _python_version()}
    try:
        out["engine"] = _engine_version()
    except Exception as exc:  # engine not importable there
        out["engine"] = f"missing ({type(exc).__name__})"
    return out


def node_versions(timeout: float = 60.0) -> list[NodeInfo]:
    """Blocking: every alive node's Python and engine version (one pinned task each)."""
    ray = ray_module()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = []
    for n in nodes:
        strategy = NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        refs.append(probe.options(scheduling_strategy=strategy).remote())
    infos = []
    for n, ref in zip(nodes, refs, strict=True):
        info = NodeInfo(node=n.get("NodeName", "?"), address=n.get("NodeManagerAddress", "?"),
                        node_id=n["NodeID"])  # fmt: skip
        try:
            info.update(ray.get(ref, timeout=timeout))
        except Exception as exc:
            info.update(python="?", engine=f"unreachable ({type(exc).__name__})")
        infos.append(info)
    return infos


def check_nodes(infos: list[NodeInfo]) -> None:
    """Refuse (one :class:`ClusterError` naming them) the nodes whose Python or engine
    version differs from the driver's."""
    py, eng = _python_version(), _engine_version()
    bad = [
        f"{i['node']} ({i['address']}): Python {i['python']}, grpo-engine {i['engine']}"
        for i in infos
        if i["python"] != py or i["engine"] != eng
    ]
    if bad:
        raise ClusterError(
            f"refusing nodes that differ from the driver (Python {py}, grpo-engine {eng}): "
            + "; ".join(bad)
            + ". Install the same Python and grpo-engine on every node",
            key="cluster.address",
        )


def _probe_address(address: str, timeout: float) -> None:
    """A ``HOST:PORT`` must accept a TCP connection within ``timeout`` seconds."""
    if address in ("", "auto"):
        return
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if not sep or not port.isdigit():
        raise ClusterError(
            f"cluster.address {address!r}: expected empty, 'auto' or HOST:PORT",
            key="cluster.address",
        )
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach the Ray cluster at {address!r} within {timeout:g} s "
            f"({exc.strerror or type(exc).__name__}); start it with `ray start --head` there, "
            "or leave cluster.address empty for a local cluster",
            key="cluster.address",
        ) from None


class RayCluster:
    """The run's Ray cluster: started or joined on enter, checked, left on exit.

    Args:
        cluster: ``address``, ``connect_timeout`` and ``local_cpus`` are read.
        check_versions: refuse nodes whose versions differ from the driver's.

    Attributes:
        started: this process started the cluster (and stops it on exit).
        nodes: what each node reported.
    """

    def __init__(self, cluster: ClusterConfig, *, check_versions: bool = True) -> None:
        self.cluster = cluster
        self.check_versions = check_versions
        self.started = False
        self.nodes: list[NodeInfo] = []
        self._joined = False

    async def __aenter__(self) -> Self:
        await anyio.to_thread.run_sync(self._connect)
        try:
            if self.check_versions:
                self.nodes = await anyio.to_thread.run_sync(
                    node_versions, self.cluster.connect_timeout
                )
                check_nodes(self.nodes)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Disconnect (stopping a cluster this process started)."""
        if self._joined:
            self._joined = False
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(ray_module().shutdown)

    def _connect(self) -> None:
        ray = ray_module()
        c = self.cluster
        _probe_address(c.address, c.connect_timeout)
        if ray.is_initialized():  # the caller's own session: use it, leave it running
            return
        kwargs: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "configure_logging": False,
        }
        if c.address:
            kwargs["address"] = c.address
        elif c.local_cpus:
            kwargs["num_cpus"] = c.local_cpus
        t0 = time.monotonic()
        try:
            ray.init(**kwargs)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise ClusterError(
                f"cannot join the Ray cluster at {c.address or 'a new local cluster'!r}: {exc}",
                key="cluster.address",
            ) from None
        self._joined = True
        self.started = not c.address
        _log.info("cluster.joined", address=c.address or "local", started=self.started,
                  seconds=round(time.monotonic() - t0, 2))  # fmt: skip
