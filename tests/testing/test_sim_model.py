"""The simulated server's fake model and judge: determinism, logprobs, token ids, judge calls."""

from __future__ import annotations

from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.testing import (
    GOOD_WORDS,
    JUDGE_MARKER,
    VOCAB,
    SimConfig,
    SimRequest,
    default_model,
)
from engine.testing.sim import judge_candidates
from tests.testing.sim_http import CHAT, COMPLETION, post, serving


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


async def test_default_judge_scores_candidate() -> None:
    """A <<JUDGE>> prompt is answered with a JSON score: the good-word fraction of the candidate."""
    prompt = f"{JUDGE_MARKER} Rate it.\n<<CANDIDATE>>clear and precise answer<</CANDIDATE>>"
    async with serving() as (sim, s):
        _, _, out = await post(s, f"{sim.base_url}/completions", {"model": "j", "prompt": prompt})
        assert sim.counters.judge_requests == 1
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


async def test_judge_call_recognised_by_its_reply_format() -> None:
    """A prompt asking for a {"score": ...} reply is a judge call; each tagged candidate block
    is scored on its own, and the text around the blocks does not count."""
    system = 'Grade it. Reply with only a JSON object: {"score": <0 to 1>, "feedback": "..."}'
    user = (
        "CODE: 0badc0de\n\n<task-0badc0de>\nclear correct precise\n</task-0badc0de>\n\n"
        '<candidate-0badc0de index="1">\nclear answer\n</candidate-0badc0de>\n\n'
        '<candidate-0badc0de index="2">\nwrong\n</candidate-0badc0de>'
    )
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    async with serving() as (sim, s):
        body = {"model": "j", "messages": messages}
        _, _, out = await post(s, f"{sim.base_url}/chat/completions", body)
        completion = {"model": "j", "prompt": f'{system}\n\n{user}\n\nVerdict: {{"score": '}
        await post(s, f"{sim.base_url}/completions", completion)
        await post(s, f"{sim.base_url}/chat/completions", CHAT)  # an ordinary prompt
        assert sim.counters.judge_requests == 2
    verdict = orjson.loads(out["choices"][0]["message"]["content"])
    assert verdict["scores"] == [0.5, 0.0]


async def test_judge_call_recognised_by_its_response_format() -> None:
    """A json_schema response format with a score property makes a judge call, whatever the
    prompt says; another schema does not."""

    def schema(prop: str) -> dict[str, Any]:
        spec = {"name": "v", "schema": {"type": "object", "properties": {prop: {}}}}
        return {"type": "json_schema", "json_schema": spec}

    seen: list[bool] = []

    def judge(req: SimRequest) -> str:
        seen.append(req.is_judge)
        return '{"score": 1}'

    async with serving(SimConfig(judge=judge)) as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        _, _, out = await post(s, url, {**CHAT, "response_format": schema("scores")})
        await post(s, url, {**CHAT, "response_format": schema("answer")})
        assert sim.counters.judge_requests == 1
    assert seen == [True]
    assert out["choices"][0]["message"]["content"] == '{"score": 1}'


def test_judge_candidates_forms() -> None:
    """Marked blocks first, then tagged blocks (closed by the same name), else the prompt."""
    assert judge_candidates("<<CANDIDATE>>a<</CANDIDATE>> <candidate>\nb\n</candidate>") == ["a"]
    tagged = "<candidate-1a>\nx </candidate> y\n</candidate-1a>\n<candidate>\nz\n</candidate>"
    assert judge_candidates(tagged) == ["x </candidate> y", "z"]
    assert judge_candidates(f"{JUDGE_MARKER} plain") == [" plain"]


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
