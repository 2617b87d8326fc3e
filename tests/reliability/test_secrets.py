"""Secrets: the API key never reaches a file the engine writes or a line it prints.

A full ``python -m engine run`` (the prompt policy with an LLM judge, provider ``openai`` with
``OPENAI_BASE_URL`` pointing at the simulated server, which requires the key) runs through
faults, 401s and upstream errors that quote the key, then every byte it wrote (the run
directory recursively: events, metrics, checkpoints including the ``.npz`` arrays, summary,
config, export) and everything it printed is searched for the key in every encoding a file
could hold it in; the server also echoes the key at the start of every fourth successful
generation, so completions that carried it reach the export, redacted. A second test
sends errors that quote the key (in messages, URLs with ``?key=``, ``Authorization`` headers,
response ids, request-id headers) and checks the errors raised, their tracebacks and the
events; a third has every successful answer echo the key, in text and tokens.
"""

from __future__ import annotations

import base64
import traceback
import urllib.parse
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web

from engine.config.sections import EndpointConfig, RetryConfig
from engine.endpoints.client import Client
from engine.errors import AuthenticationError, ConfigError, EndpointError
from engine.telemetry.events import EventLog
from engine.testing.sim import Faults, SimConfig, SimRequest, SimServer

from .support import (
    eventually,
    finish,
    grading_model,
    jsonl_records,
    record,
    start_engine,
    to_toml,
)

KEY = "sk-RELIABILITY-CANARY-7f3a9c1e5b2d4f60a8e1"
"""A recognizable fake key (only characters a URL keeps as they are)."""
ODD_KEY = "sk-RELIABILITY-CANARY-q+r/s=t~u%v"
"""A key whose URL-encoded forms differ from it."""


def encodings(key: str) -> list[bytes]:
    """Every form in which a file could hold the key: UTF-8, UTF-16/32 (numpy stores strings
    as UTF-32), URL-encoded, base64 at each alignment (as in a Basic auth header)."""
    forms = {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)}
    out = set()
    for f in forms:
        out |= {f.encode(), f.encode("utf-16-le"), f.encode("utf-32-le")}
    for pad in range(3):  # base64 of the key at each offset, minus the partial edge groups
        enc = base64.b64encode(b"\0" * pad + key.encode())
        out.add(enc[4 : 4 * ((len(enc) - 8) // 4) + 4] if pad else enc[:-4])
    return sorted(out, key=len)


def hits(data: bytes, key: str = KEY) -> int:
    return sum(data.count(form) for form in encodings(key))


def hits_in_tree(root: Path, key: str = KEY) -> dict[str, int]:
    """Key occurrences per file under ``root``: raw bytes, and the members of every zip
    (``.npz``) decompressed and every array's strings read back."""
    found: dict[str, int] = {}
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        n = hits(path.read_bytes(), key)
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                n += sum(hits(zf.read(name), key) for name in zf.namelist())
            with np.load(path, allow_pickle=False) as npz:
                for name in npz.files:
                    arr = npz[name]
                    if arr.dtype.kind in "US":
                        n += sum(key in str(x) for x in arr.ravel().tolist())
        found[str(path.relative_to(root))] = n
    return found


POISON = "Label the sentiment of the review (provider beta)."
"""A prompt candidate the leaky model always fails on: its rollouts fail for good."""


ECHOED = [0]
"""Successful generations :func:`leaky_model` made echo the key (reset by the test)."""


def leaky_model(req: SimRequest) -> str:
    """The sim's model, except that every prompt holding :data:`POISON` fails upstream with an
    error that quotes the key, in a message and in a URL (the sim answers it as a 500), and
    that every fourth generation (not judge) request starts its answers with the key."""
    if POISON in req.prompt:
        raise RuntimeError(
            f"upstream rejected key {KEY} at https://api.example.com/v1/chat?key={KEY}&v=2 "
            f"(Authorization: Bearer {KEY})"
        )
    text = grading_model(req)
    if not req.is_judge and req.request_number % 4 == 0:
        ECHOED[0] += req.index == 0
        return f"{KEY} {text}"  # first: the sim cuts answers at max_tokens words
    return text


async def test_full_run_writes_and_prints_no_key(tmp_path: Path) -> None:
    """A run with faults, 401s, key-quoting errors and answers echoing the key writes and
    prints the key 0 times."""
    ECHOED[0] = 0
    out, export = tmp_path / "run", tmp_path / "run" / "groups.jsonl"
    faults = Faults.spread(0.1, include_timeout=True, hang_seconds=0.6, retry_after=0.01)
    sim_cfg = SimConfig(api_key=KEY, model=leaky_model, faults=faults, latency=0.002)
    async with SimServer(sim_cfg) as sim:
        cfg = {
            "policy": "prompt",
            "steps": 6,
            "out": str(out),
            "grpo": {"group_size": 4},
            "prompt": {"instructions": ["Classify the sentiment of this review.", POISON]},
            "endpoint": {"provider": "openai", "max_tokens": 8, "timeout": 0.5, "deadline": 60.0},
            "retry": {"max_attempts": 3, "backoff_base": 0.01, "backoff_cap": 0.1},
            "reward": {"functions": ["non_empty"], "judge_prompt": "Grade the label's clarity."},
            "rollout": {"partial_group": "shrink"},
            "data": {"batch_size": 4},
            # never stop on failed steps: how many steps the refused key spans depends on how
            # fast the client is, and this test is about the key, not the stop rule
            "trainer": {
                "eval_every": 3,
                "eval_size": 4,
                "checkpoint_every": 2,
                "max_failed_steps": 0,
            },
        }
        (tmp_path / "run.toml").write_text(to_toml(cfg))
        env = {"OPENAI_API_KEY": KEY, "OPENAI_BASE_URL": sim.base_url}
        proc = await start_engine(
            ["run", "--config", str(tmp_path / "run.toml"), "--export-groups", str(export)],
            env=env,
        )
        metrics = out / "metrics.jsonl"
        await eventually(lambda: metrics.exists() and metrics.stat().st_size > 0)
        sim.reconfigure(api_key="sk-some-other-key")  # the key is refused for a while: 401s
        await eventually(lambda: sim.counters.by_status[401] >= 5)
        sim.reconfigure(api_key=KEY)
        done = await finish(proc, 300)
        stats = sim.statistics()
    assert done.returncode == 0, done.err[-3000:]
    events = jsonl_records(out / "events.jsonl")
    classes = {e.get("error_class") for e in events}
    assert {"auth", "server"} <= classes, classes  # the 401s and the key-quoting 500s happened
    assert stats.model_errors > 0 and sum(stats.faults.values()) > 0
    assert ECHOED[0] > 0
    # the key-quoting errors reached the run's files, redacted (the leak path was exercised),
    # and so did completions that echoed the key
    assert b"[REDACTED]" in (out / "events.jsonl").read_bytes()
    assert b"[REDACTED]" in export.read_bytes()
    files = hits_in_tree(out)
    assert {"events.jsonl", "metrics.jsonl", "summary.json", "config.json", "groups.jsonl"} <= set(
        files
    )
    assert any(name.endswith("arrays.npz") for name in files)
    printed = hits(done.stdout) + hits(done.stderr)
    found = sum(files.values()) + printed
    assert found == 0, {k: v for k, v in files.items() if v} or f"printed {printed}"
    record(
        "secrets",
        {"files_searched": len(files), "bytes_searched": sum(p.stat().st_size for p in
         out.rglob("*") if p.is_file()) + len(done.stdout) + len(done.stderr),
         "status_401": stats.by_status[401], "key_quoting_500s": stats.model_errors,
         "faults": sum(stats.faults.values()), "echoed_key": ECHOED[0],
         "key_hits": found},
    )  # fmt: skip


# ----------------------------------------------------------------------------- error messages


def leaky_server(key: str) -> web.Application:
    """An endpoint whose every answer quotes ``key`` somewhere; the prompt picks the answer."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        what = body["messages"][0]["content"]
        quoted = urllib.parse.quote(key, safe="")
        answers: dict[str, tuple[int, Any, dict[str, str]]] = {
            "401": (401, {"error": {"message": f"Incorrect API key provided: {key}",
                                    "code": "invalid_api_key"}}, {}),
            "url": (500, f"upstream https://api.example.com/v1/chat?key={quoted}&x=1 failed", {}),
            "bearer": (400, {"error": {"message": "bad header",
                                       "metadata": {"raw": f"Authorization: Bearer {key}"}}}, {}),
            "plus": (400, f"key={urllib.parse.quote_plus(key)} refused", {}),
            "err200": (200, {"error": {"message": f"provider said {key} is revoked"}}, {}),
            "ids": (200, {"id": f"gen-{key}", "choices": [{"message": {"content": "ok"},
                                                           "finish_reason": "stop"}]},
                    {"x-request-id": f"req-{key}"}),
        }  # fmt: skip
        status, doc, headers = answers[what]
        if isinstance(doc, str):
            return web.Response(status=status, text=doc, headers=headers)
        return web.json_response(doc, status=status, headers=headers)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", handle)
    return app


@pytest.mark.parametrize("key", [KEY, ODD_KEY])
async def test_errors_quoting_the_key_are_redacted(tmp_path: Path, key: str) -> None:
    """Errors, tracebacks and events carry no key, wherever the upstream answer put it."""
    runner = web.AppRunner(leaky_server(key))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    events = EventLog(tmp_path / "events.jsonl")
    endpoint = EndpointConfig(provider="openai", base_url=f"http://127.0.0.1:{port}/v1")
    texts: list[str] = []
    errors: dict[str, EndpointError] = {}
    try:
        async with Client(
            endpoint, retry=RetryConfig(max_attempts=1), events=events, api_key=key
        ) as client:
            for what in ("401", "url", "bearer", "plus", "err200"):
                with pytest.raises(EndpointError) as info:
                    await client.complete(what)
                err = errors[what] = info.value
                texts += [str(err), repr(err), *map(str, err.args)]
                texts += traceback.format_exception(err)
                assert "[REDACTED]" in str(err), str(err)
            out = await client.complete("ids")
            texts += [repr(out), str(out.id), str(out.request_id), repr(client)]
            assert out.id is not None and "[REDACTED]" in out.id
    finally:
        events.close()
        await runner.cleanup()
    assert isinstance(errors["401"], AuthenticationError)
    for text in texts:
        assert hits(text.encode(), key) == 0, text
    assert hits((tmp_path / "events.jsonl").read_bytes(), key) == 0


@pytest.mark.parametrize(
    "url",
    [f"http://127.0.0.1:9/v1?key={KEY}", f"http://user:{KEY}@127.0.0.1:9/v1",
     f"http://127.0.0.1:9/v1#{KEY}"],
)  # fmt: skip
def test_key_in_base_url_is_refused_without_echo(url: str) -> None:
    """A base URL carrying credentials is refused, and the message does not repeat them."""
    with pytest.raises(ConfigError) as info:
        Client(EndpointConfig(base_url=url))
    assert hits(str(info.value).encode()) == 0 and "127.0.0.1" in str(info.value)


def test_the_search_finds_the_key_in_every_form(tmp_path: Path) -> None:
    """The search itself works: the key planted in each form a file could hold is found."""
    np.savez(tmp_path / "arrays.npz", names=np.array(["x", f"id {KEY}"]))
    (tmp_path / "a.json").write_bytes(f'{{"k": "{KEY}"}}'.encode())
    (tmp_path / "b.txt").write_bytes(base64.b64encode(f"user:{KEY}".encode()))
    (tmp_path / "c.log").write_bytes(urllib.parse.quote_plus(ODD_KEY).encode())
    (tmp_path / "d.bin").write_bytes(KEY.encode("utf-16-le"))
    found = hits_in_tree(tmp_path)
    assert found["arrays.npz"] >= 2 and found["a.json"] == found["d.bin"] == 1
    assert found["b.txt"] == 1 and found["c.log"] == 0
    assert hits_in_tree(tmp_path, ODD_KEY)["c.log"] == 1


@pytest.mark.parametrize("mode", ["chat", "completions"])
async def test_a_key_echoed_in_a_successful_answer_is_redacted(tmp_path: Path, mode: str) -> None:
    """A server that appends the caller's key to every completion (text, and tokens split so
    no one token holds it): the choices, their tokens and the events carry no key; the
    tokens stay aligned with the logprobs; the token ids that spelled it are dropped."""
    events = EventLog(tmp_path / "events.jsonl")
    sim_cfg = SimConfig(api_key=KEY, faults=Faults(echo_key=1.0))
    async with SimServer(sim_cfg) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-model", mode=mode,  # type: ignore[arg-type]
                                  max_tokens=8, logprobs=True)  # fmt: skip
        async with Client(endpoint, events=events, api_key=KEY) as client:
            out = await client.complete("Say hi", n=3, extra_body={"return_token_ids": True})
    events.close()
    assert len(out.choices) == 3
    for c in out.choices:
        assert c.text.endswith(" [REDACTED]"), c.text
        assert c.tokens is not None and c.logprobs is not None
        assert "".join(c.tokens) == c.text and len(c.tokens) == len(c.logprobs)
        assert c.token_ids is None
        assert hits(repr(c).encode()) == 0
    assert hits(repr(out).encode()) == 0
    assert hits((tmp_path / "events.jsonl").read_bytes()) == 0
