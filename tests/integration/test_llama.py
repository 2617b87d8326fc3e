"""The engine's client against a real model: llama.cpp's server with Gemma 3 270M (a base model).

What the server (llama-cpp-python 0.3.36, ``python -m llama_cpp.server``) does, observed with
raw aiohttp before these tests were written against :class:`engine.endpoints.client.Client`:

- ``n`` is dropped from both endpoints: one choice per request, whatever ``n`` says.
- Requests are served one at a time (a lock around the model); concurrent ones queue.
- Any ``model`` name is accepted and echoed back; ``/v1/models`` lists the ``--model_alias``.
- ``/v1/completions`` with ``logprobs: k`` (0 included) returns the completions shape
  ``{tokens, token_logprobs, top_logprobs, text_offset}``, one entry per completion token:
  ``len(token_logprobs) == usage.completion_tokens``, also when a stop sequence ended the
  text (the stop token is counted and listed although it is cut from ``text``). Special
  tokens can appear in ``text`` verbatim (``<start_of_image>``). No token ids are returned.
- Logprobs are slow: the server sorts the whole 262k vocabulary in Python for every token,
  about 1 s per token on 2 cores (plain sampling: 20-60 tokens/s). Keep ``max_tokens`` tiny.
- ``usage`` has ``prompt_tokens`` (BOS included: "Hello" is 2), ``completion_tokens`` and
  ``total_tokens``; no details.
- The GGUF has no chat template: the server falls back to the llama-2 format (``[INST]``),
  and ``/v1/chat/completions`` on this base model returns at once with ``content: ""``,
  ``finish_reason: "stop"`` and ``completion_tokens: 0`` (30 times out of 30 at temperature
  1); with ``logprobs: true`` the ``logprobs`` field is null (``{"content": []}`` when
  ``top_logprobs`` is also set).
- ``temperature: 0`` is deterministic, and so is a given ``seed`` at temperature 1.
"""

from __future__ import annotations

import math
from pathlib import Path

import aiohttp
import pytest

from engine.config.sections import EndpointConfig, LimitsConfig
from engine.endpoints.client import Client
from engine.telemetry.events import EventLog
from engine.telemetry.records import read_records

pytestmark = pytest.mark.llama

PROMPT = "The capital of France is"


def make_client(
    base_url: str, model: str, mode: str = "completions", events: EventLog | None = None
) -> Client:
    endpoint = EndpointConfig(
        provider="local", base_url=base_url, model=model, mode=mode, timeout=120.0
    )
    return Client(endpoint, limits=LimitsConfig(max_concurrency=4), events=events)


async def test_server_ignores_n_and_chat_is_empty(llama_base_url: str, llama_model: str) -> None:
    """The quirks the client exists to handle, seen without the client."""
    async with aiohttp.ClientSession() as session:
        body = {"model": llama_model, "prompt": PROMPT, "n": 3, "max_tokens": 2}
        async with session.post(f"{llama_base_url}/completions", json=body) as response:
            assert response.status == 200
            doc = await response.json()
        assert len(doc["choices"]) == 1
        body = {"model": llama_model, "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 4}  # fmt: skip
        async with session.post(f"{llama_base_url}/chat/completions", json=body) as response:
            assert response.status == 200
            doc = await response.json()
        assert doc["choices"][0]["message"]["content"] == ""


async def test_completions_logprobs_and_usage(llama_base_url: str, llama_model: str) -> None:
    async with make_client(llama_base_url, llama_model) as client:
        out = await client.complete(PROMPT, max_tokens=4, temperature=0.0, logprobs=True)

    assert out.requests == 1
    assert out.model == llama_model
    (choice,) = out.choices
    assert choice.index == 0
    assert choice.finish_reason == "length"
    assert out.usage.prompt_tokens > 0
    assert out.usage.completion_tokens == 4
    assert choice.logprobs is not None and choice.tokens is not None
    assert len(choice.logprobs) == len(choice.tokens) == out.usage.completion_tokens
    assert all(math.isfinite(lp) and lp <= 0.0 for lp in choice.logprobs)
    assert "".join(choice.tokens) == choice.text
    assert choice.token_ids is None  # llama.cpp does not return them


async def test_n_is_fanned_out(llama_base_url: str, llama_model: str, tmp_path: Path) -> None:
    async with (
        EventLog(tmp_path / "events.jsonl") as events,
        make_client(llama_base_url, llama_model, events=events) as client,
    ):
        single = await client.complete(PROMPT, n=1, max_tokens=3)
        first = await client.complete(PROMPT, n=3, max_tokens=3, temperature=1.0)
        after_first = client.statistics()
        second = await client.complete(PROMPT, n=3, max_tokens=3, temperature=1.0)
        after_second = client.statistics()

    for out in (first, second):
        assert [c.index for c in out.choices] == [0, 1, 2]
        assert out.requests == 3
        assert out.usage.prompt_tokens == 3 * single.usage.prompt_tokens  # merged over requests
        assert out.usage.completion_tokens == 9
    # the first call asked n=3, got 1 choice and fanned out the rest; the endpoint is remembered
    assert after_first.fanned_out == 1
    assert list(after_first.ignores_n.values()) == [1]
    # so the second call fans out at once: three requests of n=1, none asking n=3 again
    assert after_second.fanned_out == 2
    assert after_second.requests - after_first.requests == 3
    asked = [event["n"] for event in read_records(tmp_path / "events.jsonl")]
    assert asked == [1, 3, 1, 1, 1, 1, 1]  # single; n=3 then two fanned out; three at once


async def test_chat_mode_on_a_base_model_gives_empty_text(
    llama_base_url: str, llama_model: str
) -> None:
    """A base model behind the chat endpoint answers nothing; the client returns "" per choice."""
    async with make_client(llama_base_url, llama_model, mode="chat") as client:
        out = await client.complete("Say hi.", n=2, max_tokens=8, logprobs=True)

    assert len(out.choices) == 2
    for choice in out.choices:
        assert choice.text == ""
        assert choice.finish_reason == "stop"
        assert choice.logprobs is None  # the server sends logprobs: null
    assert out.usage.completion_tokens == 0
    assert out.usage.prompt_tokens > 0


async def test_temperature_zero_is_deterministic(llama_base_url: str, llama_model: str) -> None:
    async with make_client(llama_base_url, llama_model) as client:
        a = await client.complete(PROMPT, max_tokens=6, temperature=0.0)
        b = await client.complete(PROMPT, n=2, max_tokens=6, temperature=0.0)
        s1 = await client.complete(PROMPT, max_tokens=6, temperature=1.0, seed=7)
        s2 = await client.complete(PROMPT, max_tokens=6, temperature=1.0, seed=7)

    texts = [c.text for c in (*a.choices, *b.choices)]
    assert texts[0].strip()
    assert texts == [texts[0]] * 3
    assert s1.choices[0].text == s2.choices[0].text
