"""Endpoint stage: provider presets (OpenRouter, OpenAI, a local server) applied to a config.

:func:`resolve_endpoint` turns an :class:`~engine.config.sections.EndpointConfig` into a
:class:`ResolvedEndpoint`: the base URL, the model, the name of the variable holding the key
and the headers a provider wants. The key itself is read by the client, never stored here.
"""

from __future__ import annotations

import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from ..config.sections import EndpointConfig
from ..errors import ConfigError
from .redaction import strip_url

__all__ = ("ResolvedEndpoint", "resolve_endpoint")

_OPENROUTER_HEADERS = {
    "HTTP-Referer": "https://github.com/grpo-engine/grpo-engine",
    "X-Title": "grpo-engine",
}
_DEFAULT_OPENROUTER_MODEL = "anthropic/claude-3-sonnet:beta"
_DEFAULT_OPENAI_MODEL = "gpt-4o-mini"


@dataclass(frozen=True, slots=True)
class ResolvedEndpoint:
    """An endpoint with provider presets applied. Holds the key's variable name, never the key.

    Attributes:
        provider: ``local``, ``openai`` or ``openrouter``.
        base_url: the URL ending in ``/v1`` that ``/chat/completions`` is appended to.
        model: the model name sent in requests.
        key_env: environment variable the key is read from; empty for none.
        headers: extra headers sent with every request (OpenRouter attribution).
    """

    provider: str
    base_url: str
    model: str
    key_env: str
    headers: Mapping[str, str] = field(default_factory=dict)


def resolve_endpoint(
    endpoint: EndpointConfig, env: Mapping[str, str] = os.environ
) -> ResolvedEndpoint:
    """Apply the provider presets to an endpoint config.

    - ``openrouter``: base ``https://openrouter.ai/api/v1``, key ``OPENROUTER_API_KEY``, model
      from ``OPENROUTER_MODEL`` else ``anthropic/claude-3-sonnet:beta``, attribution headers
      ``HTTP-Referer`` and ``X-Title``.
    - ``openai``: key ``OPENAI_API_KEY``, base ``OPENAI_BASE_URL`` else
      ``https://api.openai.com/v1``, model ``gpt-4o-mini`` unless set.
    - ``local``: ``base_url`` is required; no key unless ``api_key_env`` names one.

    Explicit config fields always win over presets and the environment.

    Raises:
        ConfigError: a local endpoint without ``base_url``, or a base URL that is not http(s).
    """
    resolved = _apply_preset(endpoint, env)
    _check_base_url(resolved.base_url)
    return ResolvedEndpoint(
        resolved.provider,
        resolved.base_url.rstrip("/"),
        resolved.model,
        resolved.key_env,
        MappingProxyType(dict(resolved.headers)),
    )


def _apply_preset(endpoint: EndpointConfig, env: Mapping[str, str]) -> ResolvedEndpoint:
    """The provider's defaults under the config's explicit fields (the URL not yet checked)."""
    provider = endpoint.provider
    if provider == "openrouter":
        return ResolvedEndpoint(
            provider,
            endpoint.base_url or "https://openrouter.ai/api/v1",
            endpoint.model or env.get("OPENROUTER_MODEL") or _DEFAULT_OPENROUTER_MODEL,
            endpoint.api_key_env or "OPENROUTER_API_KEY",
            _OPENROUTER_HEADERS,
        )
    if provider == "openai":
        return ResolvedEndpoint(
            provider,
            endpoint.base_url or env.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
            endpoint.model or _DEFAULT_OPENAI_MODEL,
            endpoint.api_key_env or "OPENAI_API_KEY",
        )
    if provider == "local":
        if not endpoint.base_url:
            raise ConfigError(
                "a local endpoint needs base_url (e.g. http://127.0.0.1:8000/v1)",
                key="endpoint.base_url",
            )
        return ResolvedEndpoint(
            provider, endpoint.base_url, endpoint.model or "default", endpoint.api_key_env
        )
    raise ConfigError(  # pragma: no cover - config validation rejects other values
        f"unknown provider {provider!r}", key="endpoint.provider"
    )


def _check_base_url(base: str) -> None:
    """Refuse a base URL with credentials, a query or fragment, or a scheme other than http(s)."""
    parsed = urllib.parse.urlsplit(base)
    if parsed.username is not None or parsed.password is not None:
        raise ConfigError(
            f"base_url must not carry credentials ({strip_url(base)!r}); put the key in the "
            "environment variable named by api_key_env",
            key="endpoint.base_url",
        )
    if parsed.query or parsed.fragment:
        raise ConfigError(
            f"base_url must not have a query or fragment, got {strip_url(base)!r}...",
            key="endpoint.base_url",
        )
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ConfigError(
            f"base_url must be an http(s) URL ending in /v1, got {strip_url(base)!r}",
            key="endpoint.base_url",
        )
