"""The simulated server's runtime LoRA routes: load and unload adapters as vLLM answers them
(see :mod:`engine.testing.sim.adapters` for the behaviour and where it comes from)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson
from aiohttp import web

from .adapters import AdapterRejected, SimAdapter, read_adapter
from .config import SimConfig
from .responses import JSON_HEADERS, error_response

__all__ = ("AdapterRegistry", "parse_json", "route_missing")

_TEXT_HEADERS: Final = {"Content-Type": "text/plain; charset=utf-8"}


def route_missing() -> web.Response:
    """FastAPI's answer to a route that does not exist (vLLM without runtime LoRA updating)."""
    return web.Response(status=404, body=b'{"detail":"Not Found"}', headers=JSON_HEADERS)


def _invalid(message: str) -> web.Response:
    return error_response(400, message, type_="InvalidUserInput", code=400)


def _field(body: Mapping[str, Any], name: str, kind: type) -> Any:
    """A body field of type ``kind`` (missing: None), or raise the 400 pydantic would give."""
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise AdapterRejected(400, "BadRequestError", f"'{name}' must be a {kind.__name__}")
    return value


class AdapterRegistry:
    """The adapters a simulated server has loaded, by name, in load order.

    Attributes:
        loaded: name -> adapter; generation requests look their ``model`` up here.
    """

    def __init__(self) -> None:
        self.loaded: dict[str, SimAdapter] = {}
        self._ids = 0  # vLLM's lora_id_counter
        self._lock = asyncio.Lock()  # vLLM locks per name; one lock is enough here

    def cards(self) -> list[dict[str, Any]]:
        """The ``/v1/models`` entries of the loaded adapters."""
        return [
            {
                "id": a.name,
                "object": "model",
                "created": a.created,
                "owned_by": "sim",
                "root": a.path,
                "parent": a.parent,
            }
            for a in self.loaded.values()
        ]

    async def load(self, body: Any, config: SimConfig) -> web.Response:
        """``POST /v1/load_lora_adapter``: read the adapter in a worker thread, then add it."""
        try:
            if not isinstance(body, dict):
                raise AdapterRejected(400, "BadRequestError", "the body must be a JSON object")
            name = _field(body, "lora_name", str)
            path = _field(body, "lora_path", str)
            inplace = bool(_field(body, "load_inplace", bool))
            if not name or not path:
                return _invalid("Both 'lora_name' and 'lora_path' must be provided.")
            async with self._lock:
                if name in self.loaded and not inplace:
                    return _invalid(
                        f"The lora adapter '{name}' has already been loaded. If you want to "
                        "load the adapter in place, set 'load_inplace' to True."
                    )
                rank, digest = await asyncio.to_thread(
                    read_adapter, name, path, config.max_lora_rank
                )
                old = self.loaded.get(name)
                if old is None:
                    self._ids += 1
                int_id = old.int_id if old is not None else self._ids
                parent = config.models[0] if config.models else None
                self.loaded[name] = SimAdapter(
                    name, path, parent, rank, digest, int_id, int(time.time())
                )
        except AdapterRejected as e:
            return error_response(e.status, str(e), type_=e.type, code=e.status)
        except OSError as e:  # unreadable files: vLLM answers a failed load with a 400
            message = f"Loading lora failed: {e.strerror or e}"
            return error_response(400, message, type_="BadRequestError", code=400)
        message = f"Success: LoRA adapter '{name}' added successfully."
        return web.Response(body=message.encode(), headers=_TEXT_HEADERS)

    async def unload(self, body: Any) -> web.Response:
        """``POST /v1/unload_lora_adapter``: forget the adapter of ``lora_name``."""
        try:
            if not isinstance(body, dict):
                raise AdapterRejected(400, "BadRequestError", "the body must be a JSON object")
            name = _field(body, "lora_name", str)
        except AdapterRejected as e:
            return error_response(e.status, str(e), type_=e.type, code=e.status)
        if not name:
            return _invalid("'lora_name' needs to be provided to unload a LoRA adapter.")
        async with self._lock:
            if name not in self.loaded:
                return error_response(
                    404, f"The lora adapter '{name}' cannot be found.", type_="NotFoundError",
                    code=404,
                )  # fmt: skip
            del self.loaded[name]
        message = f"Success: LoRA adapter '{name}' removed successfully."
        return web.Response(body=message.encode(), headers=_TEXT_HEADERS)


def parse_json(raw: bytes) -> Any:
    """The JSON of a body, or None when it is not JSON (answered as a non-object)."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
