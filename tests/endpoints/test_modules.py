"""PredictModule against the simulated server: rendering, parsing, json mode, statistics."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import orjson
import pytest
from aiohttp import web

from engine.config.sections import EndpointConfig, RetryConfig
from engine.endpoints.client import Client
from engine.endpoints.modules import Prediction, PredictModule
from engine.errors import ServerError
from engine.testing import Faults, SimConfig, SimRequest, SimServer
from engine.types import Example

SPEC = {"input": {"text": "string"}, "output": {"generated": "string", "quality": "number"}}


@asynccontextmanager
async def serving(
    model: Callable[[SimRequest], str] | None = None,
    *,
    provider: str = "local",
    faults: Faults | None = None,
) -> AsyncIterator[tuple[SimServer, Client]]:
    """A simulated server with a scripted model, and a client for it (no retries)."""
    async with SimServer(SimConfig(model=model, faults=faults or Faults())) as sim:
        endpoint = EndpointConfig(provider=provider, base_url=sim.base_url, model="sim")  # type: ignore[arg-type]
        key = "sk-test" if provider != "local" else None
        async with Client(endpoint, retry=RetryConfig(max_attempts=1), api_key=key) as client:
            yield sim, client


# ----------------------------------------------------------------------------- the module


def scripted(replies: dict[int, str]) -> Callable[[SimRequest], str]:
    """A fake model that answers choice i with replies[i] (or a valid JSON output)."""

    def model(req: SimRequest) -> str:
        default = orjson.dumps({"generated": f"text {req.index}", "quality": 0.5}).decode()
        return replies.get(req.index, default)

    return model


async def test_predict_parses_and_records_failures() -> None:
    """predict() returns n predictions; unparseable ones are recorded, never raised."""
    async with serving(scripted({1: "I refuse", 2: '{"generated": "x", "quality": "high"}'})) as (
        _,
        client,
    ):
        module = PredictModule("TextGenerator", SPEC, "Generate: {text}", client=client)
        preds = await module.predict({"text": "quantum"}, n=4)
    assert [p.ok for p in preds] == [True, False, False, True]
    assert preds[0]["generated"] == "text 0" and preds[0]["quality"] == 0.5
    assert preds[1].raw == "I refuse" and "no output fields" in (preds[1].error or "")
    assert preds[2].outputs == {} and "expected a number" in (preds[2].error or "")
    assert [p.index for p in preds] == [0, 1, 2, 3]
    s = module.statistics()
    assert (s.calls, s.predictions, s.ok, s.format_failures, s.endpoint_errors) == (1, 4, 2, 2, 0)
    assert s.format_failure_rate == 0.5
    assert s.prompt_tokens > 0 and s.completion_tokens > 0 and s.latency_mean > 0


async def test_predict_renders_template_and_instructions() -> None:
    """Format templates and callables render the inputs, plus the output format instructions."""
    seen: list[SimRequest] = []

    def model(req: SimRequest) -> str:
        seen.append(req)
        return '{"generated": "g", "quality": 1}'

    async with serving(model) as (_, client):
        m1 = PredictModule("a", SPEC, "Generate high-quality text based on: {text}", client=client)
        m2 = PredictModule(
            "b",
            SPEC,
            lambda inputs: f"Based on: {inputs['text']}",
            client=client,
            mode="completions",
            system="ignored in completions mode",
        )
        await m1.predict({"text": "Explain quantum computing"})
        await m2.predict(Example(id="e", text="Explain", inputs={"text": "Explain qubits"}))
    assert seen[0].endpoint == "chat" and seen[1].endpoint == "completions"
    assert "based on: Explain quantum computing" in seen[0].prompt
    assert '"quality" (number from 0 to 1)' not in seen[0].prompt  # SPEC has no range
    assert '- "quality" (number)' in seen[0].prompt
    assert seen[1].prompt.startswith("Based on: Explain qubits")


def test_template_validation() -> None:
    """A format template naming a non-input field, or a missing input, is a ValueError."""
    client = Client(EndpointConfig(base_url="http://127.0.0.1:9/v1"))
    with pytest.raises(ValueError, match="not an input field"):
        PredictModule("m", SPEC, "Use {txt}", client=client)
    with pytest.raises(ValueError, match="named"):
        PredictModule("m", SPEC, "Use {}", client=client)
    module = PredictModule("m", SPEC, "Use {text}", client=client)
    with pytest.raises(ValueError, match="missing input"):
        module.render({"other": 1})
    assert module.render({"text": "x"}).startswith("Use x\n\nRespond with only a JSON object")


async def test_json_mode_request_for_hosted_providers() -> None:
    """Hosted providers get a json_schema response_format built from the signature."""
    bodies: list[Any] = []

    def model(req: SimRequest) -> str:
        bodies.append(req.body)
        return '{"generated": "g", "quality": 0.2}'

    async with serving(model, provider="openai") as (_, client):
        module = PredictModule("Text Gen!", SPEC, "{text}", client=client)
        assert module.json_mode
        [p] = await module.predict({"text": "x"})
    async with serving(model) as (_, client):
        local = PredictModule("local", SPEC, "{text}", client=client)
        assert not local.json_mode
        await local.predict({"text": "x"})
        one = {"input": {"x": str}, "output": {"a": str}}
        single = PredictModule("one", one, "{x}", client=client, json_mode=True)
        assert not single.json_mode  # a single text field never asks for JSON
    assert p.ok and p["quality"] == 0.2
    fmt = bodies[0]["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["name"] == "Text_Gen_"
    assert fmt["json_schema"]["schema"]["required"] == ["generated", "quality"]
    assert "response_format" not in bodies[1]


async def test_json_mode_falls_back_when_rejected() -> None:
    """An endpoint that rejects response_format with a 400 is asked again without it."""
    bodies: list[dict[str, Any]] = []

    async def handler(request: web.Request) -> web.Response:
        body = await request.json()
        bodies.append(body)
        if "response_format" in body:
            error = {"error": {"message": "response_format is not supported", "code": 400}}
            return web.json_response(error, status=400)
        msg = {"role": "assistant", "content": "generated: hi\nquality: 0.5"}
        return web.json_response(
            {"id": "x", "model": "m", "choices": [{"index": 0, "message": msg,
             "finish_reason": "stop"}], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}
        )  # fmt: skip

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        endpoint = EndpointConfig(provider="openai", base_url=f"http://127.0.0.1:{port}/v1")
        async with Client(endpoint, retry=RetryConfig(max_attempts=1), api_key="sk-x") as client:
            module = PredictModule("m", SPEC, "{text}", client=client)
            [p] = await module.predict({"text": "x"})
            [q] = await module.predict({"text": "y"})
    finally:
        await runner.cleanup()
    assert p.ok and q.ok and p["quality"] == 0.5
    assert ["response_format" in b for b in bodies] == [True, False, False]
    assert module.statistics().json_mode is False


async def test_endpoint_errors_raise_and_are_counted() -> None:
    """Endpoint failures raise EndpointError (not a Prediction) and count as endpoint errors."""
    async with serving(faults=Faults(server_error=1.0)) as (_, client):
        module = PredictModule("m", SPEC, "{text}", client=client)
        with pytest.raises(ServerError):
            await module.predict({"text": "x"})
    s = module.statistics()
    assert (s.calls, s.endpoint_errors, s.predictions) == (1, 1, 0)
    assert s.error_rate == 1.0 and math.isclose(s.latency_mean, 0.0)


def test_prediction_accessors() -> None:
    """A Prediction reads like a mapping of its outputs and exposes the raw text."""
    p = Prediction({"a": 1}, True, "raw text")
    assert p["a"] == 1 and p.get("b", 2) == 2 and p.text == "raw text"
