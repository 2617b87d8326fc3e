"""Endpoints: the rate-limited OpenAI-compatible client, its limits, retry rules and the
typed structured-output modules built on it.

Modules, each importing only those above it:

- ``redaction``, ``providers``: keeping the key out of text; provider presets.
- ``retry``: which failures are retried, and how long to wait.
- ``timing``, ``budget``, ``gate``, ``limits``: the clock, the token budget, the shared 429
  gate, and the :class:`~engine.endpoints.limits.Limiter` over them.
- ``guards``: bounds on untrusted server data (JSON depth, usage figures, an echoed key).
- ``parsing``: choices, usage and errors out of a response.
- ``payload``, ``fanout``: the request body and token estimate; serving ``n`` choices.
- ``wire``: the client's own keep-alive HTTP/1.1 connections (the default HTTP client).
- ``transport``: those connections or an aiohttp session, attempt watchdog, call pacer.
- ``attempts``: one HTTP attempt and its event.
- ``client``: :class:`~engine.endpoints.client.Client`, the request lifecycle.
- ``signatures``, ``modules``: typed output fields and the PredictModule over a client.
"""
