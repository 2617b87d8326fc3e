"""Endpoint stage: the runtime LoRA adapter API of an OpenAI-compatible server (vLLM).

A server started with ``vllm serve BASE --enable-lora --max-lora-rank R`` and the environment
``VLLM_ALLOW_RUNTIME_LORA_UPDATING=True`` loads and unloads adapters while it serves, and a
generation request names an adapter as its ``model``::

    async with AdapterClient(config.endpoint, events=events) as adapters:
        await adapters.load("run-v3", "/runs/x/adapters/v3")   # POST /v1/load_lora_adapter
        names = [m.id for m in await adapters.models()]         # GET /v1/models
        await adapters.unload("run-v1")                         # POST /v1/unload_lora_adapter

What vLLM answers (``vllm/entrypoints/openai/models/serving.py`` and
``vllm/entrypoints/serve/lora/api_router.py``): 200 with a plain-text ``Success: ...`` line;
a name already loaded, an adapter that does not load (rank above ``--max-lora-rank``, bad
files) 400; a path with no adapter, an unload of an unknown name 404; every error body
``{"error": {"message", "type", "param", "code"}}`` (older vLLM: the same fields at the top
level). Without runtime updating the routes do not exist: 404 ``{"detail": "Not Found"}``,
which this client reports as such (:meth:`AdapterClient.check_runtime_api` asks up front).

Each call is one request, not retried: a load is not idempotent (a retry after a lost answer
would meet "already loaded"), and the caller (:class:`~engine.policies.served.ServedAdapters`)
needs to know at once that the server did not take an adapter. Errors are
:class:`~engine.errors.EndpointError` subclasses by status (400/404:
:class:`~engine.errors.RequestRejected`, 401/403: :class:`~engine.errors.AuthenticationError`,
5xx: :class:`~engine.errors.ServerError`, no answer: :class:`~engine.errors.TransportError` or
:class:`~engine.errors.EndpointTimeout`, a body that is not the API's:
:class:`~engine.errors.ResponseError`), with the server's message, redacted. One event per
request goes to the :class:`~engine.telemetry.events.EventLog` (``kind="adapter"``).

Why its own small session rather than :class:`~engine.endpoints.client.Client`'s transport:
these are rare control-plane calls (a few per learner step) that must not take the
generation limiter's permits or wait in its 429 gate, must not be paced or retried by the
generation rules, and run while generation is in flight; the client's transport is private
to it and built for the opposite (many short, retried, rate-limited calls). Both read the
same :class:`~engine.config.sections.EndpointConfig` through
:func:`~engine.endpoints.providers.resolve_endpoint`, so base URL and key are the same.
"""

from __future__ import annotations

import os
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Any, Final

import aiohttp
import orjson

from ..config.sections import EndpointConfig
from ..errors import (
    ClientClosedError,
    ConfigError,
    EndpointError,
    EndpointTimeout,
    RequestRejected,
    ResponseError,
    TransportError,
)
from ..telemetry.events import EventLog
from .guards import too_deep
from .providers import resolve_endpoint
from .redaction import Redactor, strip_url
from .retry import status_error
from .transport import read_capped

__all__ = ("RUNTIME_LORA_HINT", "AdapterClient", "ServedModel")

RUNTIME_LORA_HINT: Final = (
    "start vLLM with --enable-lora --max-lora-rank R and the environment "
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"
)
"""How to give a vLLM server the runtime adapter API, for error messages."""


@dataclass(frozen=True, slots=True)
class ServedModel:
    """One entry of ``GET /v1/models``.

    Attributes:
        id: the name requests use as ``model``.
        root: vLLM's ``root``: the path a base model or adapter was loaded from; None if absent.
        parent: the base model of an adapter (vLLM's ``parent``); None for a base model.
    """

    id: str
    root: str | None = None
    parent: str | None = None


class AdapterClient:
    """Loads, unloads and lists the LoRA adapters of one OpenAI-compatible server.

    Example::

        async with AdapterClient(EndpointConfig(base_url=sim.base_url)) as adapters:
            await adapters.check_runtime_api()
            await adapters.load("run-v1", adapter_dir)

    Args:
        endpoint: the server (its ``base_url`` and key, as for generation).
        events: one ``kind="adapter"`` event per request goes here; None records none.
        api_key: the key; None reads ``env[key_env]`` as the generation client does.
        env: environment for presets and the key; None uses ``os.environ``.
        timeout: seconds for one request, connection included; None uses ``endpoint.timeout``.
        clock: monotonic seconds for the events' latencies.

    Raises:
        ConfigError: the endpoint is unusable, or its key variable is unset.
    """

    def __init__(
        self,
        endpoint: EndpointConfig,
        *,
        events: EventLog | None = None,
        api_key: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        env = os.environ if env is None else env
        resolved = resolve_endpoint(endpoint, env)
        key = api_key if api_key is not None else (env.get(resolved.key_env) or None)
        if key is None and resolved.key_env:
            raise ConfigError(
                f"no API key: set the environment variable {resolved.key_env}",
                key="endpoint.api_key_env",
            )
        self.base_url = resolved.base_url
        """The server's base URL, ending in ``/v1``."""
        self._redact = Redactor(key)
        self._headers = {"Accept": "application/json", **resolved.headers}
        if key is not None:
            self._headers["Authorization"] = f"Bearer {key}"
        self._timeout = endpoint.timeout if timeout is None else timeout
        self._max_bytes = endpoint.max_response_bytes
        self._events = events
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None  # made inside the running loop
        self._closed = False

    def __repr__(self) -> str:
        return f"AdapterClient(base_url={strip_url(self.base_url)!r})"

    async def __aenter__(self) -> AdapterClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the session; later calls raise :class:`~engine.errors.ClientClosedError`."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()

    # ------------------------------------------------------------------ the API

    async def models(self) -> list[ServedModel]:
        """``GET /v1/models``: the base models, then the loaded adapters."""
        status, body = await self._send("GET", "models", None, op="list")
        data = body.get("data") if isinstance(body, dict) else None
        if not isinstance(data, list) or not all(
            isinstance(m, dict) and isinstance(m.get("id"), str) for m in data
        ):
            raise ResponseError(
                "the model list is not {'data': [{'id': ...}, ...]}",
                status=status,
                endpoint=self._path("models"),
            )
        return [ServedModel(m["id"], _text(m.get("root")), _text(m.get("parent"))) for m in data]

    async def load(
        self, name: str, path: str | Path, *, inplace: bool = False, step: int | None = None
    ) -> None:
        """``POST /v1/load_lora_adapter``: serve the adapter in directory ``path`` as ``name``.

        ``path`` must be absolute: the server reads it (a server on another machine needs the
        same path there). ``inplace`` replaces an adapter of that name (vLLM's
        ``load_inplace``); ``step`` tags the event.

        Raises:
            RequestRejected: the name is taken (400), there is no adapter at ``path`` (404),
                the adapter does not load (400), or the server has no runtime adapter API.
            ValueError: an empty name or a relative path.
        """
        if not name:
            raise ValueError("an adapter needs a non-empty name")
        if not PurePath(path).is_absolute():
            raise ValueError(f"the adapter path must be absolute (the server reads it), got {path}")
        body: dict[str, Any] = {"lora_name": name, "lora_path": str(path)}
        if inplace:
            body["load_inplace"] = True
        await self._send("POST", "load_lora_adapter", body, op="load", adapter=name, step=step)

    async def unload(self, name: str, *, step: int | None = None) -> None:
        """``POST /v1/unload_lora_adapter``: stop serving ``name``.

        Raises:
            RequestRejected: no adapter of that name is loaded (404), or the server has no
                runtime adapter API.
        """
        body = {"lora_name": name}
        await self._send("POST", "unload_lora_adapter", body, op="unload", adapter=name, step=step)

    async def check_runtime_api(self) -> None:
        """Ask whether the server loads adapters at runtime: unload a name no one uses, which
        vLLM answers 404 "cannot be found" when it does.

        Raises:
            RequestRejected: the server has no runtime adapter API (with how to start one).
        """
        name = f"grpo-engine-probe-{uuid.uuid4().hex}"
        route = "unload_lora_adapter"
        status, body = await self._send(
            "POST", route, {"lora_name": name}, op="probe", adapter=name, accept=(404,)
        )
        if status == 404:
            if isinstance(body, dict) and body.get("detail") == "Not Found":
                raise self._rejection("probe", None, status, body, self._path(route))
            return  # the route exists and did not know the name: what we asked
        raise ResponseError(  # a server that claims to unload a name never loaded
            f"the server unloaded {name!r}, which was never loaded", endpoint=self._path(route)
        )

    # ------------------------------------------------------------------ one request

    def _path(self, route: str) -> str:
        """The URL path of a route (shown in events and errors)."""
        return urllib.parse.urlsplit(f"{self.base_url}/{route}").path

    def _session_or_raise(self) -> aiohttp.ClientSession:
        if self._closed:
            raise ClientClosedError(f"{self!r} is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers=self._headers, timeout=aiohttp.ClientTimeout(total=self._timeout)
            )
        return self._session

    async def _send(
        self,
        method: str,
        route: str,
        body: Mapping[str, Any] | None,
        *,
        op: str,
        adapter: str | None = None,
        step: int | None = None,
        accept: tuple[int, ...] = (),
    ) -> tuple[int, Any]:
        """One request: (status, parsed JSON or text) of a 2xx answer or one of the ``accept``
        statuses; raises otherwise."""
        session = self._session_or_raise()
        path = self._path(route)
        t0 = self._clock()
        status: int | None = None
        error: EndpointError | None = None
        try:
            status, raw, where = await self._exchange(
                session, method, f"{self.base_url}/{route}", body
            )
        except TimeoutError:
            error = EndpointTimeout(f"no answer within {self._timeout:g} s", endpoint=path)
        except aiohttp.ClientError as e:
            error = TransportError(self._redact.exception(e), endpoint=path)
        if error is None and raw is None:
            error = ResponseError(f"{op}: {where}", status=status, endpoint=path)
        if error is None:
            assert status is not None and raw is not None
            parsed = _parse(raw)
            if 200 <= status < 300 or status in accept:
                self._emit(op, path, status, t0, adapter, step, None)
                return status, parsed
            error = self._rejection(op, adapter, status, parsed, path)
        self._emit(op, path, status, t0, adapter, step, error.error_class)
        raise error

    async def _exchange(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        body: Mapping[str, Any] | None,
    ) -> tuple[int, bytes | None, str]:
        """The status and body of one request, or a None body and why it was refused: a
        redirect (not followed: it would send the key's header elsewhere) or a body past
        ``EndpointConfig.max_response_bytes``."""
        data = None if body is None else orjson.dumps(body)
        headers = None if body is None else {"Content-Type": "application/json"}
        async with session.request(
            method, url, data=data, headers=headers, allow_redirects=False
        ) as resp:
            if 300 <= resp.status < 400:
                location = resp.headers.get("Location")
                where = self._redact(strip_url(location)) if location else "no location"
                return resp.status, None, f"HTTP {resp.status} redirect to {where} not followed"
            raw = await read_capped(resp, self._max_bytes)
            if raw is None:
                return resp.status, None, f"response body larger than {self._max_bytes} bytes"
            return resp.status, raw, ""

    def _rejection(
        self, op: str, adapter: str | None, status: int, body: Any, path: str
    ) -> EndpointError:
        """The error of a non-2xx answer, with the server's own message."""
        what = f"{op} of adapter {adapter!r}" if adapter else op
        if status == 404 and isinstance(body, dict) and body.get("detail") == "Not Found":
            return RequestRejected(
                f"{what}: the server has no runtime adapter API at {path}; {RUNTIME_LORA_HINT}",
                status=status,
                endpoint=path,
            )
        message = self._redact(_server_message(body))[:500]
        return status_error(status, f"{what} failed: {message}", 1, path, False)

    def _emit(
        self,
        op: str,
        path: str,
        status: int | None,
        t0: float,
        adapter: str | None,
        step: int | None,
        error_class: str | None,
    ) -> None:
        if self._events is None:
            return
        fields: dict[str, Any] = {
            "kind": "adapter",
            "op": op,
            "endpoint": path,
            "status": status,
            "latency": self._clock() - t0,
            "attempt": 1,
        }
        if adapter is not None:
            fields["adapter"] = adapter
        if step is not None:
            fields["step"] = step
        if error_class is not None:
            fields["error_class"] = error_class
        self._events.emit(**fields)


def _parse(raw: bytes) -> Any:
    """JSON when the body is JSON (and nested no deeper than
    :data:`~engine.endpoints.guards.MAX_JSON_DEPTH`), else its text (vLLM's success answers
    are plain text)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw.decode("utf-8", "replace")
    if (type(doc) is dict or type(doc) is list) and too_deep(raw):
        return raw.decode("utf-8", "replace")
    return doc


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _server_message(body: Any) -> str:
    """``[type] message`` of vLLM's error shapes (nested or flat), or the body's text."""
    err = body.get("error") if isinstance(body, dict) else None
    if not isinstance(err, dict):
        err = body if isinstance(body, dict) and "message" in body else None
    if err is None:
        text = body if isinstance(body, str) else orjson.dumps(body).decode()
        return " ".join(text.split()) or "(empty body)"
    kind = err.get("type")
    head = f"[{kind}] " if isinstance(kind, str) and kind else ""
    return head + " ".join(str(err.get("message") or "").split())
