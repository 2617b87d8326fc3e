"""AdapterClient against the simulated server on loopback: vLLM's runtime LoRA API."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from aiohttp import web

from engine.config.sections import EndpointConfig
from engine.endpoints.adapters import AdapterClient, ServedModel
from engine.errors import (
    AuthenticationError,
    ClientClosedError,
    RequestRejected,
    ResponseError,
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


async def test_hostile_answers_to_adapter_calls_are_refused(tmp_path: Path) -> None:
    """A redirect is not followed (the other origin hears nothing), a body past the cap and
    JSON nested past the depth limit are clear errors, each with its event."""
    async with SimServer() as elsewhere:
        hits: list[str] = []

        async def hostile(request: web.Request) -> web.StreamResponse:
            what = (await request.json())["lora_name"]
            hits.append(what)
            if what == "redirect":
                return web.Response(status=307, headers={"Location": f"{elsewhere.base_url}/x?k=s"})
            if what == "big":
                return web.Response(status=400, body=b'{"error": "' + b"x" * 5000 + b'"}')
            return web.Response(status=400, body=b"[" * 500 + b"]" * 500)

        app = web.Application()
        app.router.add_post("/v1/load_lora_adapter", hostile)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
        events = EventLog()
        endpoint = EndpointConfig(base_url=base, max_response_bytes=2048)
        try:
            async with AdapterClient(endpoint, events=events) as client:
                with pytest.raises(ResponseError, match=r"redirect to .*/v1/x not followed"):
                    await client.load("redirect", tmp_path)
                with pytest.raises(ResponseError, match="larger than 2048 bytes"):
                    await client.load("big", tmp_path)
                with pytest.raises(RequestRejected, match=r"\[\[\[") as deep:
                    await client.load("deep", tmp_path)
        finally:
            await runner.cleanup()
        assert elsewhere.counters.requests == 0
    assert hits == ["redirect", "big", "deep"] and len(str(deep.value)) < 3000
    assert events.statistics().errors_by_class == {"response": 2, "rejected": 1}
