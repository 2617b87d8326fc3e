"""engine.endpoints.client against real aiohttp servers on loopback: request shape, parsing of
both logprob shapes and usage details, the n fan-out, errors inside HTTP 200, events, key
redaction, pacing, lifecycle, and the simulated server. Time is injected; nothing sleeps beyond
milliseconds."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web

import engine.endpoints.fanout
import engine.endpoints.transport
from engine.config.sections import EndpointConfig, LimitsConfig, RetryConfig
from engine.endpoints.client import Client, ClientStatistics
from engine.endpoints.limits import Limiter
from engine.errors import (
    AuthenticationError,
    ClientClosedError,
    ConfigError,
    EndpointError,
    ResponseError,
    ServerError,
    TransportError,
)
from engine.telemetry.events import EventLog
from engine.telemetry.records import read_records
from engine.testing.sim import Faults, SimConfig, SimServer
from tests.scripted import (
    CHAT,
    COMPLETIONS,
    FakeTime,
    Iterations,
    RecordingLimiter,
    Scripted,
    Step,
    chat_body,
)

KEY = "sk-TEST-SECRET-123"


# ----------------------------------------------------------------------------- helpers


@pytest.fixture
async def server() -> Any:
    async with Scripted() as s:
        yield s


def make_client(
    base_url: str,
    *,
    limiter: Any = None,
    events: EventLog | None = None,
    retry: RetryConfig | None = None,
    **endpoint: Any,
) -> tuple[Client, FakeTime, Any]:
    t = FakeTime(now=50.0)
    lim = limiter if limiter is not None else RecordingLimiter()
    endpoint.setdefault("model", "m")
    client = Client(
        EndpointConfig(base_url=base_url, **endpoint),
        limits=lim,
        retry=retry or RetryConfig(max_attempts=4),
        events=events,
        api_key=KEY,
        clock=t.clock,
        sleep=t.sleep,
        rng=random.Random(0),
    )
    return client, t, lim


# ----------------------------------------------------------------------------- the key variable


def test_hosted_provider_without_key_is_a_config_error() -> None:
    """Constructing a client for OpenAI without a key names the variable to set."""
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        Client(EndpointConfig(provider="openai"), limits=RecordingLimiter(), env={})


def test_repr_never_shows_the_key() -> None:
    """Neither the client nor its resolved endpoint shows the key."""
    client = Client(
        EndpointConfig(provider="openrouter"),
        limits=RecordingLimiter(),
        env={"OPENROUTER_API_KEY": KEY},
    )
    assert KEY not in repr(client)
    assert KEY not in repr(client.endpoint)


# ----------------------------------------------------------------------------- request shape


async def test_chat_request_shape_and_headers(server: Scripted) -> None:
    """A chat call posts model, messages, max_tokens, temperature; auth and no n for n=1."""
    client, _, _ = make_client(server.base_url, max_tokens=12, temperature=0.5, stop=("\n",))
    async with client:
        await client.complete("hi there", seed=3, response_format={"type": "json_object"})
    path, headers, raw = server.requests[0]
    body = orjson.loads(raw)
    assert path == CHAT
    assert headers["Authorization"] == f"Bearer {KEY}"
    assert body == {
        "model": "m",
        "messages": [{"role": "user", "content": "hi there"}],
        "max_tokens": 12,
        "temperature": 0.5,
        "stop": ["\n"],
        "response_format": {"type": "json_object"},
        "seed": 3,
    }


async def test_a_call_may_name_another_model(server: Scripted, tmp_path: Path) -> None:
    """``model=`` names another model (a served LoRA adapter) in the request and its events;
    the next call names the endpoint's model again."""
    events = EventLog(tmp_path / "events.jsonl")
    client, _, _ = make_client(server.base_url, events=events)
    async with client:
        await client.complete("hi", model="run-v3")
        await client.complete("hi")
    events.close()
    assert [orjson.loads(raw)["model"] for _, _, raw in server.requests] == ["run-v3", "m"]
    assert [ev["model"] for ev in read_records(tmp_path / "events.jsonl")] == ["run-v3", "m"]


async def test_completions_request_shape(server: Scripted) -> None:
    """Completions mode posts a prompt string, and logprobs as a number."""
    client, _, _ = make_client(server.base_url)
    async with client:
        await client.complete("2+2=", mode="completions", logprobs=True, extra_body={"top_k": 5})
        with pytest.raises(ValueError, match="prompt string"):
            await client.complete([{"role": "user", "content": "x"}], mode="completions")
        with pytest.raises(ValueError, match="n must be"):
            await client.complete("x", n=0)
    path, _, raw = server.requests[0]
    body = orjson.loads(raw)
    assert path == COMPLETIONS
    assert body["prompt"] == "2+2="
    assert body["logprobs"] == 1
    assert body["top_k"] == 5
    assert len(server.requests) == 1


async def test_openrouter_sends_attribution_headers(server: Scripted) -> None:
    """The OpenRouter preset sends HTTP-Referer and X-Title."""
    client = Client(
        EndpointConfig(provider="openrouter", base_url=server.base_url),
        limits=RecordingLimiter(),
        env={"OPENROUTER_API_KEY": KEY},
    )
    async with client:
        await client.complete("hi")
    _, headers, raw = server.requests[0]
    assert headers["X-Title"] and headers["HTTP-Referer"]
    assert orjson.loads(raw)["model"] == "anthropic/claude-3-sonnet:beta"


async def test_chat_messages_pass_through(server: Scripted) -> None:
    """Chat messages are sent as given."""
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]
    client, _, _ = make_client(server.base_url)
    async with client:
        await client.complete(msgs)
    assert server.bodies()[0]["messages"] == msgs


# ----------------------------------------------------------------------------- parsing


async def test_parse_chat_logprobs_usage_and_ids(server: Scripted) -> None:
    """Chat: None content is "", chat-shape logprobs, usage details, cost, ids."""
    body = {
        "id": "gen-abc",
        "model": "served-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None},
                "finish_reason": "length",
                "logprobs": {
                    "content": [
                        {"token": "Hi", "logprob": -0.5, "top_logprobs": []},
                        {"token": "!", "logprob": -1.25, "top_logprobs": []},
                    ]
                },
            }
        ],
        "usage": {
            "prompt_tokens": 11,
            "completion_tokens": 7,
            "total_tokens": 18,
            "prompt_tokens_details": {"cached_tokens": 4},
            "completion_tokens_details": {"reasoning_tokens": 3},
            "cost": 0.00042,
        },
    }
    server.push(Step(body=body, headers={"x-request-id": "req-9"}))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("hi", logprobs=True)
    (c,) = out.choices
    assert (c.index, c.text, c.finish_reason) == (0, "", "length")
    assert c.logprobs == [-0.5, -1.25]
    assert c.tokens == ["Hi", "!"]
    assert c.token_ids is None
    u = out.usage
    assert (u.prompt_tokens, u.completion_tokens, u.cached_tokens, u.reasoning_tokens) == (
        11,
        7,
        4,
        3,
    )
    assert u.cost == pytest.approx(0.00042)
    assert (out.id, out.request_id, out.model) == ("gen-abc", "req-9", "served-model")
    assert (out.attempts, out.requests) == (1, 1)


async def test_parse_completions_logprobs_and_vllm_token_ids(server: Scripted) -> None:
    """Completions: text, token_logprobs/tokens, vLLM token_ids and prompt_token_ids."""
    body = {
        "id": "cmpl-1",
        "model": "m",
        "prompt_token_ids": [1, 2, 3],
        "choices": [
            {
                "index": 0,
                "text": " four",
                "finish_reason": "stop",
                "token_ids": [101, 102],
                "logprobs": {
                    "tokens": [" fo", "ur"],
                    "token_logprobs": [-0.1, None],
                    "top_logprobs": None,
                    "text_offset": [0, 3],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    server.push(Step(body=body))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("2+2=", mode="completions", logprobs=True)
    (c,) = out.choices
    assert c.text == " four"
    assert c.tokens == [" fo", "ur"]
    assert c.logprobs is not None
    assert c.logprobs[0] == -0.1
    assert math.isnan(c.logprobs[1])  # a null logprob stays visible as NaN
    assert c.token_ids == [101, 102]
    assert out.prompt_token_ids == [1, 2, 3]


async def test_token_ids_from_vllm_token_strings(server: Scripted) -> None:
    """vLLM's return_tokens_as_token_ids ("token_id:N" tokens) gives token ids."""
    body = chat_body()
    body["choices"][0]["logprobs"] = {
        "content": [
            {"token": "token_id:7", "logprob": -1.0},
            {"token": "token_id:9", "logprob": 0.0},
        ]
    }
    server.push(Step(body=body))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("x", logprobs=True)
    assert out.choices[0].token_ids == [7, 9]


async def test_content_parts_are_joined(server: Scripted) -> None:
    """Chat content given as parts is joined into text."""
    body = chat_body()
    body["choices"][0]["message"]["content"] = [
        {"type": "text", "text": "a"},
        {"type": "text", "text": "b"},
    ]
    server.push(Step(body=body))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("x")
    assert out.choices[0].text == "ab"


async def test_choices_are_ordered_by_server_index(server: Scripted) -> None:
    """Choices come back in their index order whatever order the server lists them in."""
    body = chat_body(3)
    for i, c in enumerate(body["choices"]):
        c["message"]["content"] = f"c{i}"
    body["choices"].reverse()
    server.push(Step(body=body))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("x", n=3)
    assert [(c.index, c.text) for c in out.choices] == [(0, "c0"), (1, "c1"), (2, "c2")]


# ----------------------------------------------------------------------------- errors inside 200


async def test_200_with_retryable_error_object_is_retried(server: Scripted) -> None:
    """An HTTP 200 carrying error code 429 is a failure, retried, and reported to the limiter."""
    server.push(Step(body={"error": {"code": 429, "message": "Rate limited upstream"}}))
    client, _, lim = make_client(server.base_url)
    async with client:
        out = await client.complete("x")
    assert out.attempts == 2
    assert lim.rate_limited == [None]


async def test_200_with_final_error_object_raises_response_error(server: Scripted) -> None:
    """An HTTP 200 carrying a non-retryable error raises ResponseError, not a result."""
    server.push(Step(body={"error": {"code": 400, "message": "bad prompt"}}))
    client, _, _ = make_client(server.base_url)
    async with client:
        with pytest.raises(ResponseError, match="bad prompt") as info:
            await client.complete("x")
    assert (info.value.status, info.value.attempt, info.value.retryable) == (200, 1, False)


async def test_choice_with_finish_reason_error(server: Scripted) -> None:
    """A choice finishing with "error" is a failure: retried when its code says so."""
    bad = chat_body(text="")
    bad["choices"][0]["finish_reason"] = "error"
    bad["choices"][0]["error"] = {"code": 502, "message": "provider died mid-stream"}
    server.push(Step(body=bad))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("x")
        assert out.attempts == 2
        final = chat_body(text="")
        final["choices"][0]["finish_reason"] = "error"
        server.push(Step(body=final))
        with pytest.raises(ResponseError, match="error"):
            await client.complete("x")


async def test_malformed_json_is_retried(server: Scripted) -> None:
    """A 200 whose body is not JSON (cut short) is retried."""
    server.push(Step(body=b'{"id": "x", "choices": [{"ind'))
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("x")
    assert out.attempts == 2


# ----------------------------------------------------------------------------- n


async def test_native_n(server: Scripted) -> None:
    """An endpoint that honours n gets one request with n."""
    client, _, _ = make_client(server.base_url)
    async with client:
        out = await client.complete("x", n=4)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert out.requests == 1
    assert [b.get("n") for b in server.bodies()] == [4]
    assert client.statistics().fanned_out == 0


async def test_ignored_n_fans_out_merges_and_is_remembered() -> None:
    """A server ignoring n: the rest is fanned out, usage merged, and later calls skip n."""
    async with Scripted(default=lambda req: chat_body(1, text=f"seed {req.get('seed')}")) as s:
        client, _, _ = make_client(s.base_url)
        async with client:
            out = await client.complete("x", n=4, seed=10)
            assert [c.index for c in out.choices] == [0, 1, 2, 3]
            assert out.requests == 4
            assert out.usage.prompt_tokens == 4 * 5
            assert out.usage.completion_tokens == 4 * 2
            assert [b.get("n") for b in s.bodies()] == [4, None, None, None]
            # fanned-out requests get distinct seeds so they do not repeat one sample
            assert sorted(c.text for c in out.choices) == [f"seed {i}" for i in (10, 11, 12, 13)]
            s.requests.clear()
            out2 = await client.complete("y", n=3)
            stats = client.statistics()
    assert out2.requests == 3
    assert [b.get("n") for b in s.bodies()] == [None, None, None]
    assert stats.ignores_n == {f"{s.base_url} chat m": 1}
    assert stats.fanned_out == 2


async def test_a_short_answer_once_is_probed_again_and_native_n_comes_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An endpoint that answered n=3 with one choice once is fanned out, but every 4th such
    call (``PROBE_EVERY``, 64 in use) asks natively again; whole, the cap is gone. One that
    really ignores n keeps being fanned out, and the probe costs no extra request."""
    monkeypatch.setattr(engine.endpoints.fanout, "PROBE_EVERY", 4)
    short = {"left": 1}  # answers short this many times

    def answer(req: dict[str, Any]) -> dict[str, Any]:
        n = int(req.get("n", 1))
        if n > 1 and short["left"] > 0:
            short["left"] -= 1
            return chat_body(1)
        return chat_body(n)

    async with Scripted(default=answer) as s:
        client, _, _ = make_client(s.base_url)
        async with client:
            counts = []
            for _ in range(6):
                out = await client.complete("x", n=3)
                assert len(out.choices) == 3
                counts.append(out.requests)
            stats = client.statistics()
    # call 1: short (1 + 2 fanned out); calls 2-4 fanned out (3 each); call 5 is the 4th
    # capped call: a probe, whole; call 6: native
    assert counts == [3, 3, 3, 3, 1, 1]
    assert stats.ignores_n == {}

    async with Scripted(default=lambda req: chat_body(1)) as s:  # ignores n for good
        client, _, _ = make_client(s.base_url)
        async with client:
            counts = [(await client.complete("x", n=3)).requests for _ in range(6)]
            stats = client.statistics()
    assert counts == [3] * 6  # the probe (call 5) took 1 choice and fanned out 2, as ever
    assert [b.get("n") for b in s.bodies()].count(3) == 2  # call 1 and the probe asked n=3
    assert stats.ignores_n == {f"{s.base_url} chat m": 1}


async def test_n_capped_server_is_chunked() -> None:
    """A server returning at most 2 choices gets the rest in requests of 2."""
    async with Scripted(default=lambda req: chat_body(min(2, int(req.get("n", 1))))) as s:
        client, _, _ = make_client(s.base_url)
        async with client:
            out = await client.complete("x", n=5)
            assert len(out.choices) == 5
            assert sorted(b.get("n", 1) for b in s.bodies()) == [1, 2, 5]
            s.requests.clear()
            out = await client.complete("x", n=5)
    assert len(out.choices) == 5
    assert sorted(b.get("n", 1) for b in s.bodies()) == [1, 2, 2]


async def test_use_n_false_fans_out_at_once(server: Scripted) -> None:
    """With use_n=False, n single requests are sent concurrently from the start."""
    client, _, lim = make_client(server.base_url, use_n=False, max_tokens=10)
    async with client:
        out = await client.complete("abcd", n=3)
    assert out.requests == 3
    assert [b.get("n") for b in server.bodies()] == [None, None, None]
    assert lim.estimates == [2 + 10] * 3


async def test_fan_out_failure_raises_endpoint_error() -> None:
    """If one fanned-out request fails for good, the call raises that error."""
    async with Scripted(default=lambda req: chat_body(1)) as s:
        s.push(Step(), Step(status=401, body={"error": {"message": "no"}}))
        client, _, _ = make_client(s.base_url)
        async with client:
            with pytest.raises(AuthenticationError):
                await client.complete("x", n=3)
            assert client.statistics().failures == 1


async def test_n_fallback_against_the_simulated_server() -> None:
    """SimServer with honor_n=False: the client still returns n choices."""
    async with SimServer(SimConfig(honor_n=False)) as sim:
        client, _, _ = make_client(sim.base_url, model="sim-model")
        async with client:
            out = await client.complete("hello", n=4)
            out2 = await client.complete("hello", n=2)
        stats = sim.statistics()
    assert len(out.choices) == 4 and len(out2.choices) == 2
    assert stats.requests == 4 + 2


# ----------------------------------------------------------------------------- limiter and events


async def test_limiter_estimates_and_settles(server: Scripted) -> None:
    """Each attempt reserves len//4+1 + max_tokens*n and settles the real usage (0 on errors)."""
    server.push(Step(status=503, body={"error": {}}))
    client, _, lim = make_client(server.base_url, max_tokens=20)
    async with client:
        await client.complete("x" * 40, n=2)
    assert lim.estimates == [11 + 40, 11 + 40]
    assert lim.settled == [0, 5 + 4]
    assert lim.successes == 1


async def test_one_event_per_attempt(server: Scripted, tmp_path: Path) -> None:
    """events.jsonl gets one line per attempt with identity, status, tokens and retry_in."""
    server.push(Step(status=503, headers={"retry-after": "2"}, body={"error": {}}))
    events = EventLog(tmp_path / "events.jsonl")
    client, _, _ = make_client(server.base_url, events=events)
    async with client:
        await client.complete(
            "secret prompt text", kind="judge", group_id="g7", sample_index=3, policy_version=2
        )
    events.close()
    lines = list(read_records(tmp_path / "events.jsonl"))
    assert len(lines) == 2
    fail, ok = lines
    for ev in lines:
        assert ev["kind"] == "judge"
        assert ev["endpoint"] == CHAT
        assert (ev["group_id"], ev["sample_index"], ev["policy_version"]) == ("g7", 3, 2)
        assert ev["model"] == "m"
        assert ev["n"] == 1
        assert ev["prompt_chars"] == len("secret prompt text")
        assert set(ev) >= {"latency", "cached_tokens", "cost", "request_id", "ts"}
    assert (fail["status"], fail["attempt"], fail["error_class"], fail["retry_in"]) == (
        503,
        1,
        "server",
        2.0,
    )
    assert (ok["status"], ok["attempt"], ok["error_class"], ok["retry_in"]) == (200, 2, None, None)
    assert (ok["prompt_tokens"], ok["completion_tokens"]) == (5, 2)
    assert "secret prompt text" not in (tmp_path / "events.jsonl").read_text()


async def test_statistics_snapshot_is_frozen(server: Scripted) -> None:
    """statistics() counts calls, requests, attempts, retries by reason, and is immutable."""
    server.push(Step(status=500, body={"error": {}}))
    client, _, limiter = make_client(server.base_url)
    async with client:
        await client.complete("x")
        stats = client.statistics()
    assert isinstance(stats, ClientStatistics)
    assert (stats.calls, stats.requests, stats.attempts, stats.failures) == (1, 1, 2, 0)
    assert stats.retries == {"server": 1}
    assert limiter.successes == 1
    assert stats.limiter == limiter.statistics()
    assert stats.limiter.requests_admitted == 2
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.calls = 5  # type: ignore[misc]
    with pytest.raises(TypeError):
        stats.retries["server"] = 9  # type: ignore[index]


async def test_real_limiter_and_simulated_faults_all_recover(tmp_path: Path) -> None:
    """Against SimServer injecting every retryable fault, every call still succeeds."""
    faults = Faults(
        rate_limit=0.08,
        rate_limit_bare=0.04,
        rate_limit_junk=0.04,
        server_error=0.08,
        overloaded=0.04,
        reset=0.08,
        malformed=0.04,
        truncated=0.04,
        error_200=0.04,
        retry_after=0.005,
    )
    events = EventLog(tmp_path / "events.jsonl")
    async with SimServer(SimConfig(faults=faults, seed=3)) as sim:
        client = Client(
            EndpointConfig(base_url=sim.base_url, model="sim-model", timeout=5.0),
            limits=LimitsConfig(max_concurrency=16),
            retry=RetryConfig(max_attempts=12, backoff_base=0.001, backoff_cap=0.005),
            events=events,
            api_key=KEY,
        )
        async with client:
            outs = await asyncio.gather(*(client.complete(f"p{i}", n=2) for i in range(60)))
            stats = client.statistics()
        served = sim.statistics()
    events.close()
    assert all(len(o.choices) == 2 for o in outs)
    assert sum(served.faults.values()) > 0
    assert stats.attempts == events.count
    assert stats.limiter.rate_limited == served.by_status[429]


# ----------------------------------------------------------------------------- pacing


async def test_a_burst_of_calls_is_paced(server: Scripted, monkeypatch: pytest.MonkeyPatch) -> None:
    """A client's calls pass the pacer before they take a permit: with no budget, 20 calls at
    once reach the limiter one loop iteration apart."""
    monkeypatch.setattr(engine.endpoints.transport, "START_BUDGET", 0.0)
    seen: list[int] = []

    class Limiter(RecordingLimiter):
        def permit(self, est_tokens: int = 0, *, requests: int = 1) -> Any:
            seen.append(it.n)
            return super().permit(est_tokens, requests=requests)

    client, _, _ = make_client(server.base_url, limiter=Limiter())
    async with client:
        it = Iterations()
        outs = await asyncio.gather(*(client.complete(f"p{i}") for i in range(20)))
        it.stop()
    assert len(outs) == 20 and len(seen) == 20
    assert len(set(seen)) == 20, seen


# ----------------------------------------------------------------------------- lifecycle


async def test_use_after_close_raises(server: Scripted) -> None:
    """After aclose (or leaving async with) every call raises ClientClosedError."""
    client, _, _ = make_client(server.base_url)
    async with client:
        await client.complete("x")
    with pytest.raises(ClientClosedError):
        await client.complete("x")
    await client.aclose()  # idempotent
    with pytest.raises(ClientClosedError):
        async with client:
            pass


async def test_owned_limiter_is_closed_with_the_client(server: Scripted) -> None:
    """A limiter built from LimitsConfig belongs to the client; a passed one does not."""
    shared = Limiter(LimitsConfig())
    c1 = Client(EndpointConfig(base_url=server.base_url), limits=shared)
    c2 = Client(EndpointConfig(base_url=server.base_url), limits=LimitsConfig())
    async with c1, c2:
        await c1.complete("x")
        await c2.complete("x")
    assert not shared.closed
    assert c2.limiter.closed


# ----------------------------------------------------------------------------- the key


def _echo_key_body(request: web.Request) -> dict[str, Any]:
    return {"error": {"message": f"bad credentials: {request.headers.get('Authorization')}"}}


@pytest.mark.parametrize(
    ("step", "cls"),
    [
        (Step(status=401, body=_echo_key_body), AuthenticationError),
        (Step(status=500, body=_echo_key_body, headers={"x-should-retry": "false"}), ServerError),
        (Step(status=200, body=_echo_key_body), ResponseError),
        (Step(status=200, body=f"<html>{KEY}".encode()), ResponseError),
        (Step(status=400, body=f"Bearer {KEY} is invalid".encode()), EndpointError),
    ],
)
async def test_key_echoed_by_server_never_leaks(
    server: Scripted,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    step: Step,
    cls: type[EndpointError],
) -> None:
    """A server echoing the key: not in the exception, events.jsonl, or any captured log."""
    caplog.set_level(logging.DEBUG)
    server.push(*[step] * 4)
    events = EventLog(tmp_path / "events.jsonl")
    client, _, _ = make_client(server.base_url, events=events, retry=RetryConfig(max_attempts=2))
    with structlog.testing.capture_logs() as logs:
        async with client:
            with pytest.raises(cls) as info:
                await client.complete("x")
    events.close()
    err = info.value
    assert KEY not in str(err) and KEY not in repr(err)
    assert all(KEY not in str(a) for a in err.args)
    assert err.__cause__ is None and err.__context__ is None
    assert "[REDACTED]" in str(err) or "<html>" in str(err)
    assert KEY not in (tmp_path / "events.jsonl").read_text()
    assert KEY not in repr(logs)
    assert KEY not in caplog.text
    out, errout = capsys.readouterr()
    assert KEY not in out and KEY not in errout


async def test_key_in_request_id_header_is_redacted(server: Scripted, tmp_path: Path) -> None:
    """Even a server id carrying the key is redacted before it reaches events or results."""
    server.push(Step(headers={"x-request-id": f"id-{KEY}"}))
    events = EventLog(tmp_path / "events.jsonl")
    client, _, _ = make_client(server.base_url, events=events)
    async with client:
        out = await client.complete("x")
    events.close()
    assert out.request_id is not None and KEY not in out.request_id
    assert KEY not in (tmp_path / "events.jsonl").read_text()


async def test_key_in_upstream_exception_text_is_redacted(tmp_path: Path) -> None:
    """The HTTP layer's own error text (a bad header line quoting the key) is redacted too."""
    response = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nBad Header " + KEY.encode() + b"\r\n\r\n{}"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(response)
        await writer.drain()
        writer.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    events = EventLog(tmp_path / "events.jsonl")
    client, _, _ = make_client(
        f"http://127.0.0.1:{port}/v1", events=events, retry=RetryConfig(max_attempts=2)
    )
    try:
        with structlog.testing.capture_logs() as logs:
            async with client:
                with pytest.raises(TransportError) as info:
                    await client.complete("x")
    finally:
        srv.close()
        await srv.wait_closed()
    events.close()
    assert "invalid header" in str(info.value).lower()
    assert KEY not in str(info.value)
    assert "[REDACTED]" in str(info.value)
    assert KEY not in repr(logs)
    assert KEY not in (tmp_path / "events.jsonl").read_text()


async def test_latency_uses_the_injected_clock(server: Scripted) -> None:
    """Completion.latency is measured on the injected clock, waits included."""
    server.push(Step(status=503, headers={"retry-after": "3"}, body={"error": {}}))
    client, _, _ = make_client(server.base_url)
    async with client:
        t0 = time.monotonic()
        out = await client.complete("x")
    assert out.latency == pytest.approx(3.0)
    assert time.monotonic() - t0 < 2.5  # the 3 s wait was not slept for real (loaded or not)


def test_local_named_key_variable_must_be_set() -> None:
    """A local endpoint naming api_key_env fails clearly when that variable is unset."""
    cfg = EndpointConfig(base_url="http://127.0.0.1:1/v1", api_key_env="MY_LOCAL_KEY")
    with pytest.raises(ConfigError, match="MY_LOCAL_KEY"):
        Client(cfg, limits=RecordingLimiter(), env={})
    Client(cfg, limits=RecordingLimiter(), env={"MY_LOCAL_KEY": KEY})  # set: fine
    Client(EndpointConfig(base_url="http://127.0.0.1:1/v1"), limits=RecordingLimiter(), env={})
