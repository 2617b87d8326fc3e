"""Rendering a prompt candidate: completions text, chat messages, instruction templates."""

from __future__ import annotations

from engine.policies.prompt import Candidate, Demo, render_completion, render_messages
from engine.types import Example


def test_rendering_completions_chat_and_templates() -> None:
    """Completions: instruction, demos, input, ending at the answer; chat: system + turns."""
    c = Candidate(0, "Label it.", (Demo("good", "positive"), Demo("bad", "negative")))
    text = render_completion(c, Example("e", "meh"))
    assert text == (
        "Label it.\n\nInput: good\nOutput: positive\n\nInput: bad\nOutput: negative"
        "\n\nInput: meh\nOutput:"
    )
    msgs = render_messages(c, Example("e", "meh"))
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1]["content"] == "meh"
    t = Candidate(1, "Q: {text}\nA:", (Demo("2+2", "4"),))
    assert render_completion(t, Example("e", "3+3")) == "Q: 2+2\nA: 4\n\nQ: 3+3\nA:"
    assert render_messages(t, Example("e", "3+3"))[-1]["content"] == "Q: 3+3\nA:"
    assert render_completion(Candidate(2, "Use {json} braces."), "x").startswith("Use {json}")
