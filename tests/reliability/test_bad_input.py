"""Bad input is refused with the engine's own error, never another exception type.

Property tests (hypothesis) of every parser that reads outside input: the JSONL dataset loader,
the config loader (TOML text, TOML structures, ``--set`` strings), the client's response parser
and the judge's verdict parser. Each either succeeds or raises an
:class:`~engine.errors.EngineError` subclass with a one-line message; a few CLI cases check
that such an error becomes one readable line, exit status 2, and no output written.
"""

from __future__ import annotations

import functools
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict

from engine.config.loading import load_config
from engine.config.sections import (
    DataConfig,
    EndpointConfig,
    GRPOConfig,
    LimitsConfig,
    OptimConfig,
    RetryConfig,
    RewardConfig,
    RolloutConfig,
    RunConfig,
    TinyLMConfig,
    TrainerConfig,
)
from engine.data.jsonl import parse_example, read_jsonl
from engine.endpoints.client import Client
from engine.endpoints.parsing import Completion, Failure, Result
from engine.errors import ConfigError, DataError, EndpointError, OutputParseError
from engine.rewards.verdicts import parse_group_verdict, parse_verdict
from engine.types import Example

EXAMPLES = int(os.environ.get("ENGINE_RELIABILITY_EXAMPLES", "60"))
"""Hypothesis examples per property: few in CI; ``ENGINE_RELIABILITY_EXAMPLES=2000`` searches
longer (the README records such a run)."""

PROPERTY = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    database=None,  # nothing written into the repository
)

# ----------------------------------------------------------------------------- strategies

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: Python's json decodes integers of any size
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=20)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
"""Arbitrary JSON-like Python structures (NaN, infinities and huge integers included)."""


def one_line(exc: BaseException) -> str:
    """The exception's message, checked to be one non-empty line."""
    text = str(exc)
    assert text and "\n" not in text, repr(text)
    return text


# ----------------------------------------------------------------------------- dataset loader

_DATA_KEYS = ("input", "output", "prompt", "id", "answer", "target", "completion", "text")
_example_like = st.dictionaries(
    st.sampled_from(_DATA_KEYS) | st.text(max_size=6),
    json_values
    | st.dictionaries(
        st.sampled_from(("text", "generated", "quality")) | st.text(max_size=4),
        json_values,
        max_size=3,
    ),
    max_size=4,
)


@PROPERTY
@given(obj=json_values | _example_like)
@example(obj={"input": {"text": "a"}, "output": {"quality": 10**400}})
@example(obj={"prompt": "p", "answer": 10**400})
def test_parse_example_accepts_or_raises_data_error(obj: Any) -> None:
    """Any decoded JSON value becomes an Example or a DataError naming file and line."""
    try:
        ex = parse_example(obj, path="d.jsonl", line=7)
    except DataError as exc:
        assert one_line(exc).startswith("d.jsonl:7: ")
        return
    assert isinstance(ex, Example) and isinstance(ex.text, str)
    assert ex.quality is None or math.isfinite(ex.quality)


def _jsonl_bytes() -> st.SearchStrategy[bytes]:
    good = st.builds(lambda t: orjson.dumps({"prompt": t}), st.text(max_size=10))
    encoded = (json_values | _example_like).map(lambda v: json.dumps(v).encode())
    deep = st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n)
    line = st.binary(max_size=40) | good | encoded | deep
    return st.lists(line, max_size=6).map(lambda ls: b"\n".join(ls))


@PROPERTY
@given(data=_jsonl_bytes() | st.binary(max_size=200))
@example(data=b'{"prompt": "ok"}\n\xff\xfe\n')
@example(data=b"[" * 100_000)
def test_read_jsonl_accepts_or_raises_data_error(data: bytes) -> None:
    """Any bytes in a dataset file stream as Examples or stop at a DataError naming the line."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "train.jsonl"
        path.write_bytes(data)
        got = 0
        try:
            for ex in read_jsonl(path):
                assert isinstance(ex, Example)
                got += 1
        except DataError as exc:
            msg = one_line(exc)
            assert msg.startswith(f"{path}:") and exc.line is not None and exc.line > got


def test_read_jsonl_missing_file_is_a_data_error(tmp_path: Path) -> None:
    """A dataset path that cannot be opened (missing, a directory) is a DataError."""
    for path in (tmp_path / "nope.jsonl", tmp_path):
        with pytest.raises(DataError, match="cannot open dataset"):
            list(read_jsonl(path))


# ----------------------------------------------------------------------------- config loader

_SECTIONS: dict[str, type] = {
    "grpo": GRPOConfig,
    "optim": OptimConfig,
    "tinylm": TinyLMConfig,
    "endpoint": EndpointConfig,
    "judge": EndpointConfig,
    "limits": LimitsConfig,
    "retry": RetryConfig,
    "reward": RewardConfig,
    "rollout": RolloutConfig,
    "data": DataConfig,
    "trainer": TrainerConfig,
}
_TOP_KEYS = [f for f in RunConfig.__slots__ if f not in _SECTIONS]  # type: ignore[attr-defined]
_KNOWN_KEYS = _TOP_KEYS + [
    f"{name}.{f}"
    for name, cls in _SECTIONS.items()
    for f in cls.__slots__  # type: ignore[attr-defined]
]

_toml_scalars = (
    st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**400)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(["tinylm", "prompt", "chat", "completions", "retry", "openai", "local"])
)
_toml_values = st.recursive(
    _toml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)


def _section(cls: type) -> st.SearchStrategy[dict[str, Any]]:
    keys = st.sampled_from(list(cls.__slots__)) | st.text(min_size=1, max_size=8)  # type: ignore[attr-defined]
    return st.dictionaries(keys, _toml_values, max_size=4)


config_structures = st.fixed_dictionaries(
    {},
    optional={
        **{k: _toml_values for k in _TOP_KEYS},
        **{name: _section(cls) | _toml_values for name, cls in _SECTIONS.items()},
    },
) | st.dictionaries(st.text(min_size=1, max_size=8), _toml_values, max_size=3)
"""Config-shaped tables: the real sections and keys with arbitrary values, plus junk keys."""


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    assert isinstance(v, dict)
    return "{" + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(table: dict[str, Any]) -> str:
    """A TOML document for a table (top-level tables become [sections])."""
    lines = [
        f"{_toml_str(k)} = {_toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)
    ]
    for k, v in table.items():
        if isinstance(v, dict):
            lines.append(f"[{_toml_str(k)}]")
            lines += [f"{_toml_str(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def _check_config(path: str | None, overrides: list[str]) -> None:
    try:
        cfg = load_config(path, overrides)
    except ConfigError as exc:
        msg = one_line(exc)
        assert (path is not None and msg.startswith(path)) or msg.startswith("--set"), msg
        return
    assert isinstance(cfg, RunConfig)


@PROPERTY
@given(table=config_structures)
@example(table={"grpo": {"beta": 10**400}})
@example(table={"steps": [[[[1]]]], "seed": -(10**30)})
def test_config_structures_load_or_raise_config_error(table: dict[str, Any]) -> None:
    """Any TOML structure of config shape loads or raises a ConfigError naming file and key."""
    text = to_toml(table)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_text(text, encoding="utf-8")
        _check_config(str(path), [])


_toml_lines = st.lists(
    st.text(max_size=30)
    | st.sampled_from(
        ["[grpo]", "[endpoint]", "[[x]]", "steps = 3", 'policy = "prompt"', "a.b = 1"]
    )
    | st.builds(lambda k, v: f"{k} = {v}", st.sampled_from(_KNOWN_KEYS), st.text(max_size=12)),
    max_size=8,
).map("\n".join)


@PROPERTY
@given(data=_toml_lines.map(str.encode) | st.binary(max_size=100))
@example(data=b"steps = " + b"[" * 5000 + b"]" * 5000)
@example(data=b"[grpo]\nbeta = 1" + b"0" * 400)
@example(data=b"\xff\xfe")
def test_config_text_loads_or_raises_config_error(data: bytes) -> None:
    """Any bytes in a config file load or raise a ConfigError naming the file."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "run.toml"
        path.write_bytes(data)
        _check_config(str(path), [])


_set_strings = (
    st.text(max_size=30)
    | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(_KNOWN_KEYS), st.text(max_size=20))
    | st.builds(lambda k, v: f"{k}={_toml_value(v)}", st.sampled_from(_KNOWN_KEYS), _toml_values)
    | st.builds(lambda k, v: f"{k}.x={v}", st.sampled_from(_KNOWN_KEYS), st.text(max_size=5))
)


@PROPERTY
@given(overrides=st.lists(_set_strings, min_size=1, max_size=3))
@example(overrides=["steps=" + "[" * 5000])
@example(overrides=["grpo.beta=1" + "0" * 400])
@example(overrides=["grpo=5"])
def test_set_overrides_load_or_raise_config_error(overrides: list[str]) -> None:
    """Any --set strings load or raise a ConfigError that says it came from --set."""
    _check_config(None, overrides)


# ----------------------------------------------------------------------------- response parser

_choice_like = st.fixed_dictionaries(
    {},
    optional={
        "index": json_values,
        "message": st.fixed_dictionaries({}, optional={"content": json_values, "role": json_values})
        | json_values,
        "text": json_values,
        "logprobs": st.fixed_dictionaries(
            {},
            optional={
                "content": st.lists(
                    st.fixed_dictionaries(
                        {}, optional={"token": json_values, "logprob": json_values}
                    )
                    | json_values,
                    max_size=3,
                )
                | json_values,
                "token_logprobs": st.lists(json_values, max_size=3) | json_values,
                "tokens": st.lists(json_values, max_size=3) | json_values,
            },
        )
        | json_values,
        "token_ids": st.lists(json_values, max_size=3) | json_values,
        "finish_reason": json_values,
        "error": json_values,
        "prompt_token_ids": st.lists(json_values, max_size=3) | json_values,
    },
)
_body_like = st.fixed_dictionaries(
    {},
    optional={
        "id": json_values,
        "model": json_values,
        "choices": st.lists(_choice_like | json_values, max_size=4) | json_values,
        "usage": st.fixed_dictionaries(
            {},
            optional={
                "prompt_tokens": json_values,
                "completion_tokens": json_values,
                "prompt_tokens_details": json_values,
                "completion_tokens_details": json_values,
                "cost": json_values,
            },
        )
        | json_values,
        "prompt_token_ids": st.lists(json_values, max_size=3) | json_values,
        "error": st.fixed_dictionaries(
            {},
            optional={"message": json_values, "code": json_values, "metadata": json_values},
        )
        | json_values,
    },
)
_statuses = st.sampled_from([200, 201, 204, 400, 401, 402, 403, 404, 408, 409, 422, 425, 429])
_statuses |= st.sampled_from([500, 502, 503, 504, 529]) | st.integers(100, 599)


def _encode(body: Any) -> bytes:
    try:
        return json.dumps(body).encode()  # NaN, Infinity and huge integers as Python writes them
    except (ValueError, OverflowError):  # pragma: no cover - json.dumps handles all of these
        return b"{}"


@functools.cache
def parser_client() -> Client:
    """A client whose response parser is called directly (it never opens a session)."""
    return Client(EndpointConfig(base_url="http://127.0.0.1:9/v1"), api_key="sk-PARSER-KEY")


@PROPERTY
@given(
    body=_body_like.map(_encode) | json_values.map(_encode) | st.binary(max_size=60),
    status=_statuses,
    n=st.integers(1, 4),
    request_id=st.none() | st.text(max_size=10),
)
@example(body=b'{"choices": [{"text": "a"}], "prompt_token_ids": ["x"]}', status=200, n=1,
         request_id=None)  # fmt: skip
@example(body=b'{"error": {"code": "\\u00b2"}}', status=200, n=1, request_id=None)
@example(body=b"<html>\r\n<h1>502 Bad Gateway</h1>\r\n</html>", status=502, n=1, request_id=None)
@example(body=b'{"error": {"message": "line one\\nline two"}}', status=400, n=1, request_id=None)
@example(body=b'{"choices": [{"text": "a", "token_ids": [1e999]}]}', status=200, n=1,
         request_id=None)  # fmt: skip
def test_response_parser_returns_result_or_endpoint_error(
    body: bytes, status: int, n: int, request_id: str | None
) -> None:
    """Any HTTP response classifies as a result or an EndpointError; nothing else escapes."""
    headers = CIMultiDict({"x-request-id": request_id} if request_id is not None else {})
    out = parser_client()._parse(body, status, headers, n, 1, "/v1/chat/completions")
    if isinstance(out, Result):
        assert 200 <= status < 300 and out.choices
        assert all(isinstance(c.text, str) for c in out.choices)
        assert [c.index for c in out.choices] == list(range(len(out.choices)))
        Completion(out.choices, out.usage, out.id, out.model, 0.0, 1, 1)
    else:
        assert isinstance(out, Failure) and isinstance(out.error, EndpointError)
        one_line(out.error)
        assert "sk-PARSER-KEY" not in str(out.error)


# ----------------------------------------------------------------------------- judge parser

_verdict_objects = st.fixed_dictionaries(
    {},
    optional={
        "score": json_values | st.floats(0, 1),
        "scores": st.lists(json_values | st.floats(0, 1), max_size=4) | json_values,
        "feedback": json_values | st.lists(st.text(max_size=5), max_size=4),
    },
)
_replies = (
    st.text(max_size=80)
    | st.builds(
        lambda pre, obj, post: pre + json.dumps(obj) + post,
        st.text(max_size=10),
        _verdict_objects | json_values,
        st.text(max_size=10),
    )
    | st.builds(
        lambda pre, obj: pre + json.dumps(obj)[: len(json.dumps(obj)) // 2],
        st.text(max_size=5),
        _verdict_objects,
    )
)


@PROPERTY
@given(reply=_replies)
@example(reply='{"score": 1' + "0" * 400 + "}")
@example(reply='{"feedback": ' + "[" * 50_000 + "}")
@example(reply='{"score": NaN}')
def test_verdict_parser_returns_a_score_or_output_parse_error(reply: str) -> None:
    """Any judge reply parses to a score in [0, 1] or raises OutputParseError keeping the reply."""
    try:
        score, feedback = parse_verdict(reply)
    except OutputParseError as exc:
        assert exc.raw == reply and str(exc)
        return
    assert 0.0 <= score <= 1.0 and isinstance(feedback, str)


@PROPERTY
@given(reply=_replies, k=st.integers(1, 4))
@example(reply='{"scores": [1' + "0" * 400 + "]}", k=1)
@example(reply='{"scores": ' + "[" * 50_000 + "}", k=2)
def test_group_verdict_parser_returns_k_scores_or_output_parse_error(reply: str, k: int) -> None:
    """Any group judge reply gives exactly k scores in [0, 1] or raises OutputParseError."""
    try:
        pairs = parse_group_verdict(reply, k)
    except OutputParseError as exc:
        assert exc.raw == reply and str(exc)
        return
    assert len(pairs) == k
    assert all(0.0 <= s <= 1.0 and isinstance(f, str) for s, f in pairs)


# ----------------------------------------------------------------------------- the CLI


def cli(*args: str, cwd: Path) -> subprocess.Popen[str]:
    """``python -m engine ARGS`` started in the background, output captured."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    proc = cli(*args, cwd=cwd)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _bad_inputs(tmp: Path) -> list[tuple[str, list[str], str]]:
    """(name, CLI arguments, text the one error line must contain) of each bad-input case."""
    (tmp / "deep.toml").write_bytes(b"steps = " + b"[" * 5000 + b"]" * 5000 + b"\n")
    (tmp / "huge.toml").write_text("[grpo]\nbeta = 1" + "0" * 400 + "\n")
    (tmp / "binary.toml").write_bytes(b"\x00\xff\xfe garbage")
    (tmp / "latin1.jsonl").write_bytes(b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n')
    (tmp / "deep.jsonl").write_bytes(b'{"prompt": "ok"}\n' + b"[" * 3000 + b"\n")
    data = ["--set", "data.eval_fraction=0", "--set", "data.train="]
    return [
        ("nested TOML", ["--config", str(tmp / "deep.toml")], "deep.toml"),
        ("huge number", ["--config", str(tmp / "huge.toml")], "grpo.beta"),
        ("binary config", ["--config", str(tmp / "binary.toml")], "binary.toml"),
        ("missing config", ["--config", str(tmp / "absent.toml")], "absent.toml"),
        ("nested --set", ["--set", "steps=" + "[" * 5000], "--set"),
        ("bad --set", ["--set", "grpo.epsilon"], "--set"),
        ("bad bytes", [*data[:-1], f"data.train={str(tmp / 'latin1.jsonl')!r}"], "latin1.jsonl:2"),
        ("deep JSON", [*data[:-1], f"data.train={str(tmp / 'deep.jsonl')!r}"], "deep.jsonl:2"),
        ("no dataset", [*data[:-1], f"data.train={str(tmp / 'absent.jsonl')!r}"], "absent.jsonl"),
    ]


def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path: Path) -> None:
    """Each bad input ends with one 'error:' line naming what is wrong, exit 2, no output dir."""
    cases = _bad_inputs(tmp_path)
    outs = [tmp_path / f"out-{name.replace(' ', '-')}" for name, _, _ in cases]
    procs = [
        cli("run", "--steps", "2", "--out", str(out), *args, cwd=tmp_path)
        for out, (_, args, _) in zip(outs, cases, strict=True)
    ]
    for (name, _, needle), out, proc in zip(cases, outs, procs, strict=True):
        stdout, stderr = proc.communicate(timeout=120)
        lines = stderr.strip().splitlines()
        assert proc.returncode == 2, (name, stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: "), (name, stderr[-2000:])
        assert needle in lines[0], (name, lines[0])
        assert "Traceback" not in stderr and stdout == ""
        assert not out.exists(), name


def test_cli_corrupt_checkpoint_on_resume_leaves_the_run_untouched(tmp_path: Path) -> None:
    """--resume from a run whose only checkpoint is corrupt: one line, exit 2, files unchanged."""
    out = tmp_path / "run"
    small = ["--set", "data.batch_size=2", "--set", "grpo.group_size=2"]
    small += ["--set", "trainer.eval_every=0", "--set", "data.num_examples=50"]
    first = run_cli("run", "--steps", "2", "--out", str(out), *small, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    (out / "checkpoints" / "step-2" / "arrays.npz").write_bytes(b"PK\x03\x04 not a zip")
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    proc = run_cli(
        "run", "--steps", "4", "--out", str(out), *small, "--resume", str(out), cwd=tmp_path
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith("error: ") and "no checkpoint to resume from" in lines[0]
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
