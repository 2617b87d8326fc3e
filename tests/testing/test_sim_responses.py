"""The simulated server's response bodies: OpenAI shapes, durations."""

from __future__ import annotations

from engine.testing import (
    VOCAB,
)
from engine.testing.sim import format_duration
from tests.testing.sim_http import CHAT, COMPLETION, post, serving


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


def test_format_duration_is_go_style() -> None:
    """Durations print like OpenAI's reset headers."""
    assert format_duration(0.012) == "12ms"
    assert format_duration(1.5) == "1.5s"
    assert format_duration(360) == "6m0s"
    assert format_duration(3661) == "1h1m1s"
    assert format_duration(0) == "0s"
