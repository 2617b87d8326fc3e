"""The simulated server's request handling: n, max_tokens, stop, batches, validation, auth."""

from __future__ import annotations

from typing import Any

import pytest

from engine.testing import (
    SimConfig,
)
from tests.testing.sim_http import CHAT, COMPLETION, post, serving


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
        assert sim.counters.by_status == {400: 1}
        assert sim.counters.faults == {}
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
