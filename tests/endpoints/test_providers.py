"""Provider presets: base URL, key variable, model and headers per provider; bad base URLs."""

from __future__ import annotations

import pytest

from engine.config.sections import EndpointConfig
from engine.endpoints.providers import resolve_endpoint
from engine.errors import ConfigError

KEY = "sk-TEST-SECRET-123"


def test_openrouter_preset() -> None:
    """OpenRouter: its base URL, OPENROUTER_API_KEY, its default model, attribution."""
    ep = resolve_endpoint(EndpointConfig(provider="openrouter"), {})
    assert ep.base_url == "https://openrouter.ai/api/v1"
    assert ep.key_env == "OPENROUTER_API_KEY"
    assert ep.model == "anthropic/claude-3-sonnet:beta"
    assert set(ep.headers) == {"HTTP-Referer", "X-Title"}
    ep = resolve_endpoint(EndpointConfig(provider="openrouter"), {"OPENROUTER_MODEL": "x/y"})
    assert ep.model == "x/y"
    ep = resolve_endpoint(
        EndpointConfig(provider="openrouter", model="z"), {"OPENROUTER_MODEL": "x"}
    )
    assert ep.model == "z"


def test_openai_preset() -> None:
    """OpenAI: OPENAI_API_KEY and OPENAI_BASE_URL, else api.openai.com."""
    ep = resolve_endpoint(EndpointConfig(provider="openai"), {})
    assert (ep.base_url, ep.key_env) == ("https://api.openai.com/v1", "OPENAI_API_KEY")
    ep = resolve_endpoint(
        EndpointConfig(provider="openai"), {"OPENAI_BASE_URL": "http://10.0.0.1:8000/v1/"}
    )
    assert ep.base_url == "http://10.0.0.1:8000/v1"


def test_local_needs_base_url() -> None:
    """A local endpoint without base_url is a clear ConfigError naming the key."""
    with pytest.raises(ConfigError, match=r"endpoint\.base_url.*needs base_url"):
        resolve_endpoint(EndpointConfig(provider="local"), {})
    ep = resolve_endpoint(EndpointConfig(base_url="http://h:1/v1", api_key_env="MY_KEY"), {})
    assert (ep.key_env, ep.headers) == ("MY_KEY", {})


def test_base_url_with_credentials_is_refused_without_echoing_them() -> None:
    """A key pasted into base_url is refused, and the error does not repeat it."""
    with pytest.raises(ConfigError) as info:
        resolve_endpoint(EndpointConfig(base_url=f"http://u:{KEY}@127.0.0.1:1/v1"), {})
    assert KEY not in str(info.value)
