"""Request bodies and the token estimate a permit reserves."""

from __future__ import annotations

from engine.endpoints.payload import estimate_tokens


def test_prompt_token_estimate() -> None:
    """Prompt tokens are estimated as len(text) // 4 + 1 (per message for chat)."""
    assert estimate_tokens("x" * 40) == 11
    assert estimate_tokens([{"role": "user", "content": "x" * 8}, {"content": None}]) == 3 + 1
