"""The token conversation: a TurnPolicy's turns and the environment's replies as ONE sample
with a loss mask, in the text protocol, on the embedded LM."""

from __future__ import annotations

import re

import numpy as np

from engine.config.sections import GRPOConfig, TinyLMConfig
from engine.environments import text_protocol
from engine.environments.base import EpisodeRecord, ToolError, TurnRecord
from engine.environments.tokens import TokenConversation, token_conversation
from engine.environments.tools import FunctionTool, run_calls
from engine.policies.tinylm import TinyLM
from engine.policies.toolvocab import CALL_OPEN
from engine.types import Example, Rollout

CALC = TinyLMConfig(vocab="calculator", context=6, embed_dim=4, hidden=8)
EXAMPLE = Example(id="c-0", text="What is 3 * 4?")


def _sum_of_products(expression: str) -> str:
    """A small calculator: sums and differences of products of integers."""
    if not re.fullmatch(r"\s*\d+(\s*[-+*]\s*\d+)*\s*", expression):
        raise ToolError(f"cannot evaluate {expression!r}")
    total = 0
    for sign, term in re.findall(r"([-+]?)\s*(\d+(?:\s*\*\s*\d+)*)", expression):
        value = 1
        for f in term.split("*"):
            value *= int(f)
        total += -value if sign == "-" else value
    return str(total)


TOOL = FunctionTool(
    "calculator",
    "Evaluates arithmetic.",
    {"type": "object", "properties": {"expression": {"type": "string"}}},
    _sum_of_products,
    inline=True,
)


async def _episode(
    conv: TokenConversation, max_turns: int, cap: int
) -> tuple[EpisodeRecord, list[str]]:
    """The runner's loop, by hand: turn, calls, reply, until a turn makes no call."""
    record = EpisodeRecord("e.1", "calculator")
    replies = []
    for t in range(max_turns):
        out = await conv.generate(t, max_tokens=cap)
        results = await run_calls([TOOL], out.tool_calls) if out.tool_calls else []
        record.turns.append(TurnRecord(t, out.text, out.tool_calls, tuple(results)))
        if not out.tool_calls or t == max_turns - 1:
            break
        before = conv.tokens
        conv.add_reply(out, results, None)
        replies.append(conv.policy.tokenizer.decode(conv._context()[before:]))
    return record, replies


async def test_an_episode_is_one_masked_sample() -> None:
    """Turns (mask 1, behaviour logprobs) and replies (mask 0, NaN) in order; the replies
    are the text protocol's rendering, the calls parse, and the sample trains."""
    policy = TinyLM(CALC, seed=0)
    snap = policy.snapshot(0)
    multi = 0
    for seed in range(40):
        conv = token_conversation(policy, snap, EXAMPLE, np.random.default_rng(seed), tools=[TOOL])
        record, replies = await _episode(conv, max_turns=4, cap=10)
        s = conv.sample(record)
        assert s.prompt_ids.tolist() == policy.prompt_ids(EXAMPLE).tolist()
        assert len(s.token_ids) == len(s.logprobs) == len(s.loss_mask)
        assert conv.tokens == len(s.prompt_ids) + len(s.token_ids)
        assert np.isnan(s.logprobs).tolist() == (~s.loss_mask).tolist()
        assert s.usage.completion_tokens == int(s.loss_mask.sum()) and s.episode is record
        assert s.text == record.turns[-1].text and s.error is None
        # the policy's segments are exactly its turns' texts, in order
        segments, cur, flags = [], [], []
        for tok, m in zip(s.token_ids.tolist(), s.loss_mask.tolist(), strict=True):
            if flags and flags[-1] != m:
                segments.append(cur)
                cur = []
            cur.append(tok)
            flags.append(m)
        segments.append(cur)
        policy_texts = [policy.tokenizer.decode(x) for x in segments[::2]]
        assert policy_texts == [t.text for t in record.turns]
        for turn, reply in zip(record.turns, replies, strict=False):
            closing = text_protocol.closed_turn(turn.text)[len(turn.text) :]
            rendered = text_protocol.render_reply(list(turn.tool_results), None)
            assert reply == closing + rendered
            assert reply.count("<tool_result>") == len(turn.tool_calls) >= 1
        if len(record.turns) > 1:
            multi += 1
            rollout = Rollout("0-0", 0, 0, s)
            metrics, _ = policy.loss_and_grad([rollout], np.array([1.0]), GRPOConfig(beta=0.1))
            assert metrics["tokens"] == s.loss_mask.sum() < len(s.token_ids)
    assert multi >= 3  # the uniform initial policy calls the tool in some of its turns


async def test_a_call_cut_by_the_cap_is_closed_by_the_environment() -> None:
    """A turn that opens a call and runs out of tokens: the call runs to the end of the text,
    and the closing tag is put back as environment tokens before the result."""
    policy = TinyLM(CALC, seed=0)
    snap = policy.snapshot(0)
    for seed in range(400):
        conv = token_conversation(policy, snap, EXAMPLE, np.random.default_rng(seed), tools=[TOOL])
        out = await conv.generate(0, max_tokens=3)
        if out.finish_reason == "length" and out.text.startswith(CALL_OPEN):
            break
    else:
        raise AssertionError("no turn opened a call and ran out of tokens")
    assert len(out.tool_calls) == 1
    results = await run_calls([TOOL], out.tool_calls)
    before = conv.tokens
    conv.add_reply(out, results, "Go on.")
    text = policy.tokenizer.decode(conv._context()[before:])
    assert text.startswith("</tool_call>\n<tool_result>") and text.endswith("\nGo on.\n")
    assert results[0].malformed  # the cut call's JSON is not closed


async def test_the_call_token_is_the_text_protocol() -> None:
    """The calculator vocabulary's call tokens decode to a call the text protocol parses."""
    policy = TinyLM(CALC, seed=0)
    tok = policy.tokenizer
    ids = [tok.call_open, *tok.encode("12*7").tolist(), tok.call_close]
    (call,) = text_protocol.parse_calls(tok.decode(ids), turn=0)
    assert call.error is None and call.name == "calculator"
    assert call.arguments == '{"expression":"12*7"}'
    assert tok.decode(tok.encode(text_protocol.render_results([]))) == ""
    assert tok.encode(tok.decode(ids)).tolist() == ids
