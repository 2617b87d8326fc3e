"""The simulated server's hostile faults: what each sends, on the wire."""

from __future__ import annotations

import orjson
import pytest

from engine.testing.sim import BAD_USAGES, HOSTILE_KINDS, Faults, SimConfig
from tests.testing.sim_http import CHAT, COMPLETION, post, serving

KEY = "sk-sim-hostile-0123456789"


async def test_every_hostile_kind_is_counted_and_spread_leaves_them_out() -> None:
    """Each hostile kind at rate 1.0 is injected and counted under its name; ``spread``
    never includes them (the flaky-server figures stay as they were)."""
    for kind in HOSTILE_KINDS:
        async with serving(SimConfig(faults=Faults(**{kind: 1.0}))) as (sim, s):
            async with s.post(f"{sim.base_url}/chat/completions", json=CHAT,
                              allow_redirects=False) as resp:  # fmt: skip
                await resp.read()
            assert sim.counters.faults == {kind: 1}, kind
    spread = Faults.spread(0.5, include_timeout=True)
    assert all(getattr(spread, kind) == 0.0 for kind in HOSTILE_KINDS)


async def test_bad_usage_takes_each_form_in_turn() -> None:
    """bad_usage sends each unsound usage of BAD_USAGES in turn, the choices intact."""
    async with serving(SimConfig(faults=Faults(bad_usage=1.0))) as (sim, s):
        bodies = [(await post(s, f"{sim.base_url}/chat/completions", CHAT))[2]
                  for _ in BAD_USAGES]  # fmt: skip
    assert [b.get("usage") for b in bodies] == list(BAD_USAGES)
    assert all(b["choices"][0]["message"]["content"] for b in bodies)


async def test_oversized_deep_echo_and_redirect_bodies() -> None:
    """oversized pads to the size asked (with a length, then chunked); deep_json nests as
    deep as asked, then past orjson's limit; echo_key appends the bearer token to text and
    tokens; redirect answers 307 to another origin."""
    faults = Faults(oversized=1.0, oversize_bytes=300_000)
    async with serving(SimConfig(faults=faults)) as (sim, s):
        url = f"{sim.base_url}/chat/completions"
        for chunked in (False, True):
            async with s.post(url, json=CHAT) as resp:
                raw = await resp.read()
                assert (resp.content_length is None) == chunked
            assert len(raw) > 300_000 and orjson.loads(raw)["choices"]
        sim.set_faults(deep_json=1.0)
        _, _, first = await post(s, url, CHAT)
        _, _, second = await post(s, url, CHAT)
        assert isinstance(first, dict) and first["choices"]  # 200 levels: orjson still reads it
        assert isinstance(second, bytes) and second.startswith(b'{"deep":' + b"[" * 1000)
        sim.set_faults(echo_key=1.0)
        headers = {"Authorization": f"Bearer {KEY}"}
        body = {**COMPLETION, "logprobs": 1, "return_token_ids": True}
        _, _, echoed = await post(s, f"{sim.base_url}/completions", body, headers)
        choice = echoed["choices"][0]
        assert choice["text"].endswith(" " + KEY)
        assert "".join(choice["logprobs"]["tokens"]).endswith(" " + KEY)
        assert KEY not in choice["logprobs"]["tokens"][-1]  # split over two tokens
        sim.set_faults(Faults(redirect=1.0, redirect_to="http://127.0.0.1:9"))
        async with s.post(url, json=CHAT, allow_redirects=False) as resp:
            assert resp.status == 307
            assert resp.headers["Location"].startswith("http://127.0.0.1:9/v1/chat/completions?")


def test_hostile_options_are_validated() -> None:
    """Hostile rates count toward the sum of 1; sizes and depths must make sense."""
    with pytest.raises(ValueError, match="sum"):
        Faults(reset=0.6, echo_key=0.5)
    with pytest.raises(ValueError, match="deep_levels"):
        Faults(deep_levels=0)
    with pytest.raises(ValueError, match="oversize_bytes"):
        Faults(oversize_bytes=-1)
    assert Faults(bad_usage=0.25, redirect=0.25).total == pytest.approx(0.5)
