"""AdapterClient against the simulated server on loopback: vLLM's runtime LoRA API."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from engine.config.sections import EndpointConfig
from engine.endpoints.adapters import AdapterClient, ServedModel
from engine.errors import (
    AuthenticationError,
    ClientClosedError,
    RequestRejected,
    TransportError,
)
from engine.telemetry.events import EventLog
from engine.testing.sim import SimConfig, SimServer, write_fake_adapter


async def test_load_list_unload_with_one_event_per_request(tmp_path: Path) -> None:
    """Load, list (with root and parent), unload; each request is one ``adapter`` event."""
    path = write_fake_adapter(tmp_path / "v1")
    events = EventLog()
    async with (
        SimServer(SimConfig(models=("base",))) as sim,
        AdapterClient(EndpointConfig(base_url=sim.base_url), events=events) as client,
    ):
        await client.load("run-v1", path, step=0)
        listed = await client.models()
        await client.unload("run-v1", step=0)
        after = await client.models()
    assert listed == [ServedModel("base"), ServedModel("run-v1", str(path), "base")]
    assert after == [ServedModel("base")]
    stats = events.statistics()
    assert stats.requests_by_kind == {"adapter": 4} and stats.errors == 0


async def test_server_refusals_are_clear_request_rejected(tmp_path: Path) -> None:
    """Duplicate (400), no adapter at the path (404), unknown unload (404): one clear error each."""
    path = write_fake_adapter(tmp_path / "v1")
    events = EventLog()
    async with (
        SimServer() as sim,
        AdapterClient(EndpointConfig(base_url=sim.base_url), events=events) as client,
    ):
        await client.load("a", path)
        with pytest.raises(RequestRejected, match="already been loaded") as dup:
            await client.load("a", path)
        with pytest.raises(RequestRejected, match="No adapter found for") as missing:
            await client.load("b", tmp_path / "nowhere")
        with pytest.raises(RequestRejected, match="'zz' cannot be found") as unknown:
            await client.unload("zz")
    assert (dup.value.status, missing.value.status, unknown.value.status) == (400, 404, 404)
    assert "load of adapter 'b' failed: [NotFoundError]" in str(missing.value)
    assert "/v1/load_lora_adapter" in str(missing.value)
    assert events.statistics().errors_by_class == {"rejected": 3}


async def test_check_runtime_api_says_how_to_start_vllm() -> None:
    """A server without runtime updating is one error naming the flags; with it, no error."""
    async with SimServer(SimConfig(runtime_lora=False)) as sim:
        client = AdapterClient(EndpointConfig(base_url=sim.base_url))
        with pytest.raises(RequestRejected, match="VLLM_ALLOW_RUNTIME_LORA_UPDATING=True"):
            await client.check_runtime_api()
        sim.reconfigure(runtime_lora=True)
        await client.check_runtime_api()
        await client.aclose()
    assert sim.adapters == {}


async def test_key_from_the_endpoint_env_and_never_in_errors(tmp_path: Path) -> None:
    """The key comes from ``api_key_env``; a wrong key is AuthenticationError without the key."""
    async with SimServer(SimConfig(api_key="sekrit")) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, api_key_env="SIM_KEY")
        async with AdapterClient(endpoint, env={"SIM_KEY": "sekrit"}) as client:
            await client.load("a", write_fake_adapter(tmp_path / "a"))
        async with AdapterClient(endpoint, env={"SIM_KEY": "wrong-key"}) as client:
            with pytest.raises(AuthenticationError) as info:
                await client.models()
    assert "wrong-key" not in str(info.value)
    assert list(sim.adapters) == ["a"]


async def test_no_server_is_a_transport_error_and_closed_is_closed(tmp_path: Path) -> None:
    """Nothing listening: TransportError; after close: ClientClosedError; relative: ValueError."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    client = AdapterClient(EndpointConfig(base_url=f"http://127.0.0.1:{port}/v1"), timeout=5)
    with pytest.raises(TransportError):
        await client.models()
    with pytest.raises(ValueError, match="absolute"):
        await client.load("a", "relative/dir")
    await client.aclose()
    with pytest.raises(ClientClosedError):
        await client.unload("a")
