"""The simulated OpenAI-compatible server, exercised over real HTTP with a plain aiohttp client."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import engine.testing
from engine.cli.serve_sim import main
from engine.testing import (
    FAULT_KINDS,
    GOOD_WORDS,
    JUDGE_MARKER,
    VOCAB,
    Faults,
    SimConfig,
    SimRequest,
    SimServer,
    default_model,
)
from engine.testing.sim import format_duration

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Tell me about groups."}]}
COMPLETION = {"model": "sim-model", "prompt": "Once upon a time"}


class Clock:
    """A hand-driven monotonic clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def serving(
    cfg: SimConfig | None = None, **kwargs: Any
) -> AsyncIterator[tuple[SimServer, aiohttp.ClientSession]]:
    async with SimServer(cfg or SimConfig(), **kwargs) as sim, aiohttp.ClientSession() as session:
        yield sim, session


async def post(
    session: aiohttp.ClientSession,
    url: str,
    body: Mapping[str, Any] | bytes,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, Mapping[str, str], Any]:
    """POST and return (status, headers, parsed JSON or the raw bytes if it does not parse)."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with session.post(url, data=data, headers=headers) as resp:
        raw = await resp.read()
        try:
            parsed: Any = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = raw
        return resp.status, resp.headers, parsed


def parse_duration(text: str) -> float:
    """Parse a Go-style duration like 6m0s, 1.5s, 12ms."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"([\d.]+)(ms|h|m|s)", text)
    assert "".join(a + b for a, b in parts) == text, text
    return sum(float(a) * units[b] for a, b in parts)


# --- response shapes ------------------------------------------------------------------------


async def test_chat_response_has_openai_shape() -> None:
    """A chat completion carries id, object, created, model, choices and full usage."""
    async with serving() as (sim, s):
        status, headers, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert isinstance(body["created"], int)
    assert body["model"] == "sim-model"
    [choice] = body["choices"]
    assert choice["index"] == 0
    assert choice["message"]["role"] == "assistant"
    words = choice["message"]["content"].split()
    assert words and set(words) <= set(VOCAB)
    assert choice["finish_reason"] == "stop"
    assert choice["logprobs"] is None
    usage = body["usage"]
    assert usage["prompt_tokens"] == len("Tell me about groups.") // 4 + 1
    assert usage["completion_tokens"] == len(words)
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}
    assert usage["completion_tokens_details"] == {"reasoning_tokens": 0}


async def test_completions_response_has_openai_shape() -> None:
    """A text completion has object text_completion, a text per choice and usage."""
    async with serving() as (sim, s):
        status, _, body = await post(s, f"{sim.base_url}/completions", COMPLETION)
    assert status == 200
    assert body["object"] == "text_completion"
    assert body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert set(choice) >= {"index", "text", "finish_reason", "logprobs"}
    assert choice["logprobs"] is None
    assert body["usage"]["completion_tokens"] == len(choice["text"].split())


async def test_chat_logprobs_shape() -> None:
    """Chat logprobs come as content[] entries with token, logprob, bytes and top_logprobs."""
    async with serving() as (sim, s):
        body = {**CHAT, "logprobs": True, "top_logprobs": 3}
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", body)
    choice = out["choices"][0]
    content = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in content) == choice["message"]["content"]
    for entry in content:
        assert entry["logprob"] <= 0
        assert bytes(entry["bytes"]).decode() == entry["token"]
        assert len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["token"] == entry["token"]
        assert all(set(alt) == {"token", "logprob", "bytes"} for alt in entry["top_logprobs"])


async def test_chat_logprobs_without_top() -> None:
    """logprobs=true alone gives empty top_logprobs lists."""
    async with serving() as (sim, s):
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "logprobs": True})
    assert all(e["top_logprobs"] == [] for e in out["choices"][0]["logprobs"]["content"])


async def test_completions_logprobs_shape() -> None:
    """Completions logprobs have tokens, token_logprobs, top_logprobs and text_offset."""
    async with serving() as (sim, s):
        _, _, zero = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "logprobs": 0})
        _, _, two = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "logprobs": 2})
    lp = zero["choices"][0]["logprobs"]
    assert set(lp) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    assert lp["top_logprobs"] is None
    assert "".join(lp["tokens"]) == zero["choices"][0]["text"]
    assert len(lp["token_logprobs"]) == len(lp["tokens"]) == len(lp["text_offset"])
    # offsets index into prompt + completion, as OpenAI's do
    full = COMPLETION["prompt"] + zero["choices"][0]["text"]
    for tok, off in zip(lp["tokens"], lp["text_offset"], strict=True):
        assert full[off : off + len(tok)] == tok
    tops = two["choices"][0]["logprobs"]["top_logprobs"]
    assert all(isinstance(d, dict) and len(d) == 2 for d in tops)


async def test_token_ids_when_asked() -> None:
    """return_token_ids (top level or extra_body) adds vLLM-style token ids."""
    async with serving() as (sim, s):
        _, _, chat = await post(
            s, f"{sim.base_url}/chat/completions", {**CHAT, "return_token_ids": True}
        )
        _, _, comp = await post(
            s,
            f"{sim.base_url}/completions",
            {**COMPLETION, "extra_body": {"return_token_ids": True}},
        )
        _, _, plain = await post(s, f"{sim.base_url}/completions", COMPLETION)
    choice = chat["choices"][0]
    assert len(choice["token_ids"]) == chat["usage"]["completion_tokens"]
    assert len(chat["prompt_token_ids"]) == chat["usage"]["prompt_tokens"]
    c = comp["choices"][0]
    assert len(c["token_ids"]) == comp["usage"]["completion_tokens"]
    assert len(c["prompt_token_ids"]) == comp["usage"]["prompt_tokens"]
    assert "token_ids" not in plain["choices"][0]


async def test_models_and_health() -> None:
    """GET /v1/models lists the configured names; GET /health answers ok."""
    async with serving(SimConfig(models=("a", "b"))) as (sim, s):
        async with s.get(f"{sim.base_url}/models") as resp:
            models = await resp.json()
        async with s.get(sim.base_url.removesuffix("/v1") + "/health") as resp:
            assert resp.status == 200
    assert models["object"] == "list"
    assert [m["id"] for m in models["data"]] == ["a", "b"]


# --- n, max_tokens, stop, batches -------------------------------------------------------------


async def test_n_is_honoured() -> None:
    """n=5 returns five choices indexed 0..4."""
    async with serving() as (sim, s):
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 5})
    assert [c["index"] for c in out["choices"]] == [0, 1, 2, 3, 4]
    assert out["usage"]["completion_tokens"] == sum(
        len(c["message"]["content"].split()) for c in out["choices"]
    )


async def test_n_is_ignored_like_openrouter() -> None:
    """honor_n=False returns a single choice whatever n asks."""
    async with serving(SimConfig(honor_n=False)) as (sim, s):
        _, _, chat = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 4})
        _, _, comp = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "n": 4})
    assert len(chat["choices"]) == 1
    assert len(comp["choices"]) == 1


async def test_batched_prompts_index_per_prompt_and_n() -> None:
    """A list of prompts yields n choices per prompt, indexed prompt * n + j."""
    async with serving() as (sim, s):
        body = {"model": "m", "prompt": ["one", "two", "three"], "n": 2}
        _, _, out = await post(s, f"{sim.base_url}/completions", body)
    assert [c["index"] for c in out["choices"]] == list(range(6))
    assert out["usage"]["prompt_tokens"] == 1 + 1 + 2  # len(p) // 4 + 1 each


async def test_max_tokens_truncates_with_finish_length() -> None:
    """A choice longer than max_tokens is cut to max_tokens and finishes with length."""
    async with serving() as (sim, s):
        _, _, out = await post(
            s, f"{sim.base_url}/completions", {**COMPLETION, "n": 32, "max_tokens": 3}
        )
    for choice in out["choices"]:
        n_words = len(choice["text"].split())
        assert n_words == 3 if choice["finish_reason"] == "length" else n_words <= 3
    assert {c["finish_reason"] for c in out["choices"]} == {"length", "stop"}


async def test_stop_sequence_cuts_text() -> None:
    """Text is cut before the first stop sequence."""
    async with serving() as (sim, s):
        body = {**COMPLETION, "n": 16, "max_tokens": 64, "seed": 1}
        _, _, free = await post(s, f"{sim.base_url}/completions", body)
        texts = [c["text"] for c in free["choices"]]
        _, _, cut = await post(s, f"{sim.base_url}/completions", {**body, "stop": [" the", " a "]})
    for before, after in zip(texts, (c["text"] for c in cut["choices"]), strict=True):
        assert " the" not in after and " a " not in after
        assert before.startswith(after)


@settings(max_examples=50, deadline=None)
@given(
    prompt=st.text(max_size=200),
    index=st.integers(0, 64),
    seed=st.none() | st.integers(-(2**63), 2**64 - 1),
    temperature=st.floats(0, 2),
)
def test_default_model_is_pure_and_in_vocabulary(
    prompt: str, index: int, seed: int | None, temperature: float
) -> None:
    """The default model gives 1-32 vocabulary words and the same text for the same inputs."""
    req = SimRequest(
        "chat", "m", prompt, None, index, 1, 16, temperature, seed, (), 7, 3, False, {}
    )
    text = default_model(req)
    words = text.split(" ")
    assert 1 <= len(words) <= 32
    assert set(words) <= set(VOCAB)
    assert default_model(req) == text


# --- determinism ---------------------------------------------------------------------------


async def test_request_seed_makes_text_reproducible() -> None:
    """The same request with the same seed gets the same text, across servers too."""
    body = {**CHAT, "seed": 42, "n": 3}
    async with serving(SimConfig(seed=1)) as (sim, s):
        _, _, a = await post(s, f"{sim.base_url}/chat/completions", body)
        _, _, b = await post(s, f"{sim.base_url}/chat/completions", body)
    async with serving(SimConfig(seed=2)) as (sim, s):
        _, _, c = await post(s, f"{sim.base_url}/chat/completions", body)
    texts = [[ch["message"]["content"] for ch in r["choices"]] for r in (a, b, c)]
    assert texts[0] == texts[1] == texts[2]
    assert len(set(texts[0])) > 1  # choices differ from each other


async def test_unseeded_requests_vary_but_replay_per_server_seed() -> None:
    """Unseeded repeats differ, yet a fresh server with the same seed replays them."""

    async def run(server_seed: int) -> list[str]:
        async with serving(SimConfig(seed=server_seed)) as (sim, s):
            return [
                (await post(s, f"{sim.base_url}/chat/completions", CHAT))[2]["choices"][0][
                    "message"
                ]["content"]
                for _ in range(4)
            ]

    first, again, other = await run(5), await run(5), await run(6)
    assert first == again
    assert len(set(first)) > 1
    assert first != other


async def test_temperature_zero_is_greedy() -> None:
    """temperature=0 gives identical choices and identical repeats."""
    async with serving() as (sim, s):
        body = {**CHAT, "temperature": 0, "n": 3}
        _, _, a = await post(s, f"{sim.base_url}/chat/completions", body)
        _, _, b = await post(s, f"{sim.base_url}/chat/completions", body)
    texts = {c["message"]["content"] for r in (a, b) for c in r["choices"]}
    assert len(texts) == 1


async def test_prompt_words_bias_the_default_model() -> None:
    """Prompts that mention the judge's good words get completions with more of them."""

    async def good_fraction(prompt: str) -> float:
        async with serving() as (sim, s):
            body = {"model": "m", "prompt": prompt, "n": 64, "max_tokens": 64}
            _, _, out = await post(s, f"{sim.base_url}/completions", body)
        words = [w for c in out["choices"] for w in c["text"].split()]
        return sum(w in GOOD_WORDS for w in words) / len(words)

    assert await good_fraction("Be " + " and ".join(GOOD_WORDS)) > 2 * await good_fraction("Go.")


# --- judge -------------------------------------------------------------------------------------


async def test_default_judge_scores_candidate() -> None:
    """A <<JUDGE>> prompt is answered with a JSON score: the good-word fraction of the candidate."""
    prompt = f"{JUDGE_MARKER} Rate it.\n<<CANDIDATE>>clear and precise answer<</CANDIDATE>>"
    async with serving() as (sim, s):
        _, _, out = await post(s, f"{sim.base_url}/completions", {"model": "j", "prompt": prompt})
        assert sim.stats.judge_requests == 1
    verdict = orjson.loads(out["choices"][0]["text"])
    assert verdict["score"] == 0.5
    assert verdict["feedback"] == "2/4 on-topic words"


async def test_default_judge_scores_several_candidates() -> None:
    """Several candidate blocks in one judge call get a list of scores in order."""
    content = f"{JUDGE_MARKER}<<CANDIDATE>>correct<</CANDIDATE>><<CANDIDATE>>wrong words"
    async with serving() as (sim, s):
        body = {"model": "j", "messages": [{"role": "user", "content": content}]}
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", body)
    verdict = orjson.loads(out["choices"][0]["message"]["content"])
    assert verdict["scores"] == [1.0, 0.0]


async def test_judge_header_and_custom_judge() -> None:
    """x-sim-role: judge routes to SimConfig.judge, which sees the request."""
    seen: list[SimRequest] = []

    def judge(req: SimRequest) -> str:
        seen.append(req)
        return '{"score": 0.9}'

    async with serving(SimConfig(judge=judge)) as (sim, s):
        _, _, out = await post(
            s, f"{sim.base_url}/chat/completions", CHAT, headers={"x-sim-role": "judge"}
        )
    assert out["choices"][0]["message"]["content"] == '{"score": 0.9}'
    assert seen[0].is_judge and seen[0].endpoint == "chat"
    assert seen[0].messages == tuple(CHAT["messages"])


async def test_custom_model_and_its_failure() -> None:
    """SimConfig.model supplies the text; if it raises, the server answers 500 and counts it."""

    def model(req: SimRequest) -> str:
        if "boom" in req.prompt:
            raise RuntimeError("boom")
        return f"echo {req.index} {req.prompt}"

    async with serving(SimConfig(model=model)) as (sim, s):
        _, _, ok = await post(s, f"{sim.base_url}/completions", {**COMPLETION, "n": 2})
        status, _, err = await post(
            s, f"{sim.base_url}/completions", {"model": "m", "prompt": "boom"}
        )
        assert sim.stats.model_errors == 1
    assert [c["text"] for c in ok["choices"]] == [
        "echo 0 Once upon a time",
        "echo 1 Once upon a time",
    ]
    assert status == 500
    assert err["error"]["type"] == "server_error"


# --- faults ----------------------------------------------------------------------------------


async def test_fault_rate_limit_has_parseable_retry_headers() -> None:
    """A rate_limit fault is a 429 with retry-after, retry-after-ms and reset headers."""
    async with serving(SimConfig(faults=Faults(rate_limit=1.0, retry_after=0.25))) as (sim, s):
        status, headers, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.faults["rate_limit"] == 1
    assert status == 429
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert int(headers["retry-after"]) == 1  # whole seconds, rounded up
    assert int(headers["retry-after-ms"]) == 250
    assert parse_duration(headers["x-ratelimit-reset-requests"]) == 0.25
    assert headers["x-ratelimit-remaining-requests"] == "0"


async def test_fault_rate_limit_bare_has_no_headers() -> None:
    """A rate_limit_bare fault is a 429 without any retry or rate-limit header."""
    async with serving(SimConfig(faults=Faults(rate_limit_bare=1.0))) as (sim, s):
        status, headers, _ = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.faults["rate_limit_bare"] == 1
    assert status == 429
    assert not [h for h in headers if h.lower().startswith(("retry-after", "x-ratelimit"))]


async def test_fault_rate_limit_junk_headers() -> None:
    """A rate_limit_junk fault is a 429 whose retry headers are junk."""
    async with serving(SimConfig(faults=Faults(rate_limit_junk=1.0))) as (sim, s):
        status, headers, _ = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.faults["rate_limit_junk"] == 1
    assert status == 429
    assert headers["retry-after"] == "-1"
    assert headers["x-ratelimit-reset-requests"] == "-1"


async def test_fault_server_error_cycles_500_502_503() -> None:
    """server_error faults answer 500, 502 (an HTML page) and 503 in turn."""
    async with serving(SimConfig(faults=Faults(server_error=1.0))) as (sim, s):
        results = [await post(s, f"{sim.base_url}/chat/completions", CHAT) for _ in range(3)]
        assert sim.stats.faults["server_error"] == 3
        assert sim.stats.by_status == {500: 1, 502: 1, 503: 1}
    assert [r[0] for r in results] == [500, 502, 503]
    assert results[1][1]["Content-Type"].startswith("text/html")
    assert results[0][2]["error"]["type"] == "server_error"


async def test_fault_overloaded_is_529() -> None:
    """An overloaded fault is a 529 with an overloaded_error body."""
    async with serving(SimConfig(faults=Faults(overloaded=1.0))) as (sim, s):
        status, _, body = await post(s, f"{sim.base_url}/completions", COMPLETION)
        assert sim.stats.faults["overloaded"] == 1
    assert status == 529
    assert body["error"]["type"] == "overloaded_error"


async def test_fault_reset_disconnects() -> None:
    """A reset fault closes the connection with no response: ServerDisconnectedError."""
    async with serving(SimConfig(faults=Faults(reset=1.0))) as (sim, s):
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.faults["reset"] == 1
        assert sim.stats.by_status == {}


async def test_reset_on_reused_connection() -> None:
    """After a good request, a reset on the reused keep-alive connection is a disconnect."""
    connector = aiohttp.TCPConnector(limit=1)
    async with SimServer() as sim, aiohttp.ClientSession(connector=connector) as s:
        assert (await post(s, f"{sim.base_url}/chat/completions", CHAT))[0] == 200
        sim.set_faults(reset=1.0)
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.connections == 1  # the failing request reused the first connection


async def test_fault_timeout_hangs_past_client_timeout() -> None:
    """A timeout fault hangs; the client times out and the server counts the abandoned request."""
    async with serving(SimConfig(faults=Faults(timeout=1.0, hang_seconds=30))) as (sim, s):
        with pytest.raises(asyncio.TimeoutError):
            async with s.post(
                f"{sim.base_url}/chat/completions",
                json=CHAT,
                timeout=aiohttp.ClientTimeout(total=0.05),
            ) as resp:
                await resp.read()
        assert sim.stats.faults["timeout"] == 1
        for _ in range(100):
            if sim.stats.cancelled:
                break
            await asyncio.sleep(0.01)
        assert sim.stats.cancelled == 1
        assert sim.stats.in_flight == 0


async def test_fault_timeout_then_answers() -> None:
    """With a short hang_seconds, a timeout fault answers normally after the hang."""
    async with serving(SimConfig(faults=Faults(timeout=1.0, hang_seconds=0.05))) as (sim, s):
        t0 = asyncio.get_running_loop().time()
        status, _, _ = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert asyncio.get_running_loop().time() - t0 >= 0.05
    assert status == 200


async def test_fault_malformed_is_invalid_json() -> None:
    """A malformed fault is a 200 application/json whose body does not parse."""
    async with serving(SimConfig(faults=Faults(malformed=1.0))) as (sim, s):
        status, headers, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.faults["malformed"] == 1
    assert status == 200
    assert headers["Content-Type"] == "application/json"
    assert isinstance(body, bytes)


async def test_fault_truncated_alternates_partial_json_and_short_body() -> None:
    """truncated faults give partial JSON, then a body shorter than its Content-Length."""
    async with serving(SimConfig(faults=Faults(truncated=1.0))) as (sim, s):
        status, _, body = await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert status == 200 and isinstance(body, bytes) and body.startswith(b'{"id"')
        with pytest.raises(aiohttp.ClientPayloadError):
            await post(s, f"{sim.base_url}/chat/completions", CHAT)
        assert sim.stats.faults["truncated"] == 2


async def test_fault_error_200_alternates_error_body_and_error_choices() -> None:
    """error_200 faults give a 200 error body, then choices with finish_reason error."""
    async with serving(SimConfig(faults=Faults(error_200=1.0))) as (sim, s):
        s1, _, first = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 2})
        s2, _, second = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 2})
        assert sim.stats.faults["error_200"] == 2
    assert s1 == s2 == 200
    assert "choices" not in first and first["error"]["message"]
    assert [c["finish_reason"] for c in second["choices"]] == ["error", "error"]
    assert all(c["message"]["content"] == "" and c["error"] for c in second["choices"])


async def test_fault_short_n() -> None:
    """short_n returns n // 2 choices."""
    async with serving(SimConfig(faults=Faults(short_n=1.0))) as (sim, s):
        _, _, four = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 4})
        _, _, one = await post(s, f"{sim.base_url}/completions", COMPLETION)
        assert sim.stats.faults["short_n"] == 2
    assert len(four["choices"]) == 2
    assert one["choices"] == []


async def test_every_fault_kind_is_counted() -> None:
    """Each fault kind at rate 1.0 is injected and counted under its name."""
    for kind in FAULT_KINDS:
        faults = Faults(**{kind: 1.0}, hang_seconds=0.0)
        async with serving(SimConfig(faults=faults)) as (sim, s):
            with contextlib.suppress(aiohttp.ClientError):
                await post(s, f"{sim.base_url}/chat/completions", CHAT)
            assert sim.stats.faults == {kind: 1}, kind


async def test_fault_mix_is_seeded() -> None:
    """A fault mix is drawn from the seeded RNG: same seed, same sequence of statuses."""
    faults = Faults(server_error=0.3, rate_limit_bare=0.2)

    async def statuses() -> list[int]:
        async with serving(SimConfig(seed=9, faults=faults)) as (sim, s):
            return [
                (await post(s, f"{sim.base_url}/completions", COMPLETION))[0] for _ in range(60)
            ]

    a, b = await statuses(), await statuses()
    assert a == b
    assert 10 < a.count(200) < 50
    assert 429 in a and 500 in a


def test_fault_rates_are_validated() -> None:
    """Rates outside [0, 1] or summing past 1 are rejected."""
    with pytest.raises(ValueError, match="sum"):
        Faults(reset=0.6, timeout=0.5)
    with pytest.raises(ValueError):
        Faults(malformed=-0.1)
    assert Faults.spread(0.5).total == pytest.approx(0.5)
    assert Faults.spread(0.5).timeout == 0.0


# --- rate limits -----------------------------------------------------------------------------


async def test_rpm_enforced_with_parseable_headers() -> None:
    """Past the RPM the server answers 429 with consistent retry-after and reset headers."""
    clock = Clock()
    async with serving(SimConfig(rpm=3), clock=clock) as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        ok = [await post(s, url, CHAT) for _ in range(3)]
        assert [r[0] for r in ok] == [200, 200, 200]
        assert [r[1]["x-ratelimit-remaining-requests"] for r in ok] == ["2", "1", "0"]
        assert ok[2][1]["x-ratelimit-limit-requests"] == "3"
        status, headers, body = await post(s, url, CHAT)
        assert status == 429
        assert body["error"]["type"] == "requests"
        assert int(headers["retry-after-ms"]) == 20_000  # one request refills in 60/3 s
        assert int(headers["retry-after"]) == 20
        assert parse_duration(headers["x-ratelimit-reset-requests"]) == 60.0
        assert headers["x-ratelimit-reset-requests"] == "1m0s"
        assert sim.stats.rate_limited == 1
        clock.now += 19.9
        assert (await post(s, url, CHAT))[0] == 429
        clock.now += 0.1
        assert (await post(s, url, CHAT))[0] == 200
        assert sim.statistics().too_many_requests == 2


async def test_burst_seconds_shrinks_the_bucket() -> None:
    """With burst_seconds=1 only a second's worth of requests may arrive at once."""
    async with serving(SimConfig(rpm=120, burst_seconds=1), clock=Clock()) as (sim, s):
        statuses = [(await post(s, f"{sim.base_url}/completions", COMPLETION))[0] for _ in range(3)]
    assert statuses == [200, 200, 429]


async def test_tpm_enforced_on_estimate() -> None:
    """TPM charges len(prompt)//4+1 plus n*max_tokens at admission; too large is refused."""
    clock = Clock()
    async with serving(SimConfig(tpm=100), clock=clock) as (sim, s):
        url = f"{sim.base_url}/completions"
        body = {"model": "m", "prompt": "abcdefg", "max_tokens": 20, "n": 2}  # 2 + 40 tokens
        first, second, third = [await post(s, url, body) for _ in range(3)]
        assert (first[0], second[0], third[0]) == (200, 200, 429)
        assert first[1]["x-ratelimit-remaining-tokens"] == "58"
        assert third[2]["error"]["type"] == "tokens"
        # 42 tokens needed, 16 left, refilled at 100/60 per second -> 15.6 s
        assert int(third[1]["retry-after-ms"]) == 15_600
        huge = await post(s, url, {**body, "max_tokens": 100})
        assert huge[0] == 429
        assert "retry-after" not in huge[1]
        assert "too large" in huge[2]["error"]["message"]


async def test_rate_headers_can_be_switched_off() -> None:
    """rate_headers=False drops x-ratelimit-* from successful responses."""
    async with serving(SimConfig(rpm=100, rate_headers=False)) as (sim, s):
        _, headers, _ = await post(s, f"{sim.base_url}/completions", COMPLETION)
    assert not [h for h in headers if h.lower().startswith("x-ratelimit")]


def test_format_duration_is_go_style() -> None:
    """Durations print like OpenAI's reset headers."""
    assert format_duration(0.012) == "12ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3661) == "1h1m1s"
    assert format_duration(0) == "0s"


# --- validation and auth ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("chat/completions", b"{not json", None),
        ("chat/completions", b"[1, 2]", None),
        ("chat/completions", {"messages": CHAT["messages"]}, "model"),
        ("chat/completions", {"model": "m"}, "messages"),
        ("chat/completions", {"model": "m", "messages": []}, "messages"),
        ("chat/completions", {"model": "m", "messages": ["hi"]}, "messages[0]"),
        ("completions", {"model": "m"}, "prompt"),
        ("completions", {**COMPLETION, "n": 0}, "n"),
        ("completions", {**COMPLETION, "max_tokens": "ten"}, "max_tokens"),
        ("completions", {**COMPLETION, "temperature": 3}, "temperature"),
        ("completions", {**COMPLETION, "stop": [1]}, "stop"),
        ("completions", {**COMPLETION, "stream": True}, "stream"),
        ("chat/completions", {**CHAT, "top_logprobs": 2}, "top_logprobs"),
    ],
)
async def test_bad_requests_get_400(path: str, body: Any, param: str | None) -> None:
    """Malformed requests are rejected with an OpenAI-style 400 naming the parameter."""
    async with serving() as (sim, s):
        status, _, out = await post(s, f"{sim.base_url}/{path}", body)
        assert sim.stats.by_status == {400: 1}
        assert sim.stats.faults == {}
    assert status == 400
    error = out["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert error["message"]


async def test_api_key_checked() -> None:
    """With api_key set, a missing or wrong bearer token gets 401; /health stays open."""
    async with serving(SimConfig(api_key="sk-test")) as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        assert (await post(s, url, CHAT))[0] == 401
        status, _, body = await post(s, url, CHAT, headers={"Authorization": "Bearer nope"})
        assert status == 401
        assert body["error"]["code"] == "invalid_api_key"
        assert (await post(s, url, CHAT, headers={"Authorization": "Bearer sk-test"}))[0] == 200
        async with s.get(f"{sim.base_url}/models") as resp:
            assert resp.status == 401
        async with s.get(sim.base_url.removesuffix("/v1") + "/health") as resp:
            assert resp.status == 200


# --- latency, concurrency, stats, keep-alive -------------------------------------------------


async def test_latency_and_served_concurrency_cap() -> None:
    """With a cap of 2 served at once, 6 requests of 20 ms take at least 3 rounds."""
    cfg = SimConfig(latency=0.02, max_concurrency_served=2)
    async with serving(cfg) as (sim, s):
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        results = await asyncio.gather(
            *(post(s, f"{sim.base_url}/completions", COMPLETION) for _ in range(6))
        )
        elapsed = loop.time() - t0
        stats = sim.statistics()
    assert all(r[0] == 200 for r in results)
    assert elapsed >= 0.06
    assert stats.max_in_flight == 6
    assert stats.max_queued >= 3
    assert stats.in_flight == stats.queued == 0
    assert stats.busy_seconds >= 0.06
    assert stats.concurrency_seconds > stats.busy_seconds
    assert 0 < stats.utilization <= 1


async def test_stats_endpoint_and_counts() -> None:
    """GET /sim/stats reports requests by endpoint and status, tokens and choices."""
    async with serving() as (sim, s):
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", {**CHAT, "n": 3})
        await post(s, f"{sim.base_url}/completions", {"model": "m"})
        async with s.get(sim.base_url.removesuffix("/v1") + "/sim/stats") as resp:
            stats = await resp.json()
    assert stats["requests"] == 2
    assert stats["by_endpoint"] == {"/v1/chat/completions": 1, "/v1/completions": 1}
    assert stats["by_status"] == {"200": 1, "400": 1}
    assert stats["choices"] == 3
    assert stats["completion_tokens"] == out["usage"]["completion_tokens"]
    assert stats["connections"] == 1


async def test_idle_keepalive_connections_are_closed() -> None:
    """An idle connection is closed after keepalive_timeout, so the next request reconnects."""
    async with serving(SimConfig(keepalive_timeout=0.1)) as (sim, s):
        url = f"{sim.base_url}/completions"
        await post(s, url, COMPLETION)
        await post(s, url, COMPLETION)
        assert sim.stats.connections == 1
        await asyncio.sleep(0.3)
        assert (await post(s, url, COMPLETION))[0] == 200
        assert sim.stats.connections == 2


async def test_reconfigure_while_serving() -> None:
    """reconfigure changes behaviour live: here n stops being honoured."""
    async with serving() as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        assert len((await post(s, url, {**CHAT, "n": 3}))[2]["choices"]) == 3
        sim.reconfigure(honor_n=False)
        assert len((await post(s, url, {**CHAT, "n": 3}))[2]["choices"]) == 1


# --- packaging and CLI -----------------------------------------------------------------------


def test_public_names_resolve() -> None:
    """Every name in engine.testing.__all__ resolves."""
    for name in engine.testing.__all__:
        assert getattr(engine.testing, name) is not None


def test_cli_rejects_bad_fault() -> None:
    """main() returns 2 for an unknown fault kind without serving."""
    assert main(["--fault", "gremlins=0.5"]) == 2


async def test_cli_serves_and_exits_on_sigterm() -> None:
    """python -m engine serve-sim prints its base URL first, serves, and exits 0 on SIGTERM."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-W",
        "error",
        "-m",
        "engine",
        "serve-sim",
        "--port",
        "0",
        "--ignore-n",
        "--fault",
        "short_n=0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=20)  # type: ignore[union-attr]
        base_url = line.decode().strip()
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/v1", base_url)
        async with aiohttp.ClientSession() as s:
            _, _, out = await post(s, f"{base_url}/chat/completions", {**CHAT, "n": 3})
        assert len(out["choices"]) == 1
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0, err
        assert orjson.loads(err.splitlines()[-1])["requests"] == 1
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
