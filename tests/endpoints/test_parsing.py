"""parse_response on its own: results, failures inside HTTP 200, error statuses, redaction."""

from __future__ import annotations

import base64
import urllib.parse

import orjson
from multidict import CIMultiDict

from engine.endpoints.guards import MAX_JSON_DEPTH
from engine.endpoints.parsing import Failure, Result, parse_response
from engine.endpoints.redaction import Redactor
from engine.errors import RateLimitError, ResponseError

KEY = "sk-PARSING-KEY"
PATH = "/v1/chat/completions"


def _parse(body: object, status: int = 200, **headers: str) -> Result | Failure:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    return parse_response(raw, status, CIMultiDict(headers), 2, PATH, Redactor(KEY))


def test_choices_come_back_in_the_server_index_order() -> None:
    """Choices are sorted by the server's index and re-indexed; usage and ids are read."""
    out = _parse(
        {
            "id": "gen-1",
            "model": "m",
            "choices": [{"index": 1, "text": "b"}, {"index": 0, "text": "a"}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 4},
        },
        **{"x-request-id": "req-9"},
    )
    assert isinstance(out, Result)
    assert [(c.index, c.text) for c in out.choices] == [(0, "a"), (1, "b")]
    assert (out.usage.prompt_tokens, out.usage.completion_tokens) == (3, 4)
    assert (out.id, out.request_id, out.attempts) == ("gen-1", "req-9", 2)


def test_a_429_code_inside_a_200_is_a_rate_limited_retryable_failure() -> None:
    """An error object in a 200 body with a rate-limit code fails, retryable, rate limited."""
    out = _parse({"error": {"code": "rate_limit_exceeded", "message": "slow down"}})
    assert isinstance(out, Failure) and isinstance(out.error, ResponseError)
    assert out.rate_limited and out.error.retryable
    assert "slow down" in str(out.error)


def test_an_error_status_quoting_the_key_is_redacted() -> None:
    """A 429 whose body quotes the key becomes a RateLimitError without the key."""
    out = _parse({"error": {"message": f"bad key {KEY}"}}, status=429)
    assert isinstance(out, Failure) and isinstance(out.error, RateLimitError)
    assert out.rate_limited and KEY not in str(out.error)


def test_a_body_cut_short_is_a_retryable_failure() -> None:
    """A 200 whose body is not a JSON object is retried."""
    out = _parse(b'{"choices": [')
    assert isinstance(out, Failure) and out.error.retryable
    assert "malformed response body" in str(out.error)


def test_no_part_of_the_key_is_left_where_upstream_text_is_cut() -> None:
    """Upstream text is redacted before it is cut short, so a key straddling a cut leaves no
    prefix behind: in a message, in metadata.raw, in a code, in a raw error or 200 body, in
    a response id and a model name."""
    prefix = KEY[:6]
    outs = []
    for pad in range(190, 305, 3):
        outs += [
            _parse({"error": {"message": "x" * pad + KEY}}, status=500),
            _parse({"error": {"message": "m", "metadata": {"raw": "y" * pad + KEY}}}, status=400),
            _parse({"error": {"message": "m", "code": "c" * (pad - 100) + KEY}}, status=400),
            _parse(("z" * pad + KEY).encode(), status=502),
            _parse(b"{" + b"w" * pad + KEY.encode()),
        ]
        ok = _parse({"id": "i" * pad + KEY, "model": "n" * pad + KEY,
                     "choices": [{"text": "t"}]})  # fmt: skip
        assert isinstance(ok, Result)
        assert prefix not in f"{ok.id} {ok.model}", (pad, ok.id)
    for out in outs:
        assert isinstance(out, Failure)
        assert prefix not in str(out.error), str(out.error)


def test_an_echoed_key_is_redacted_as_sent_quoted_or_base64() -> None:
    """A successful answer that carries the key, URL-quoted or base64-encoded (at any
    alignment, as in an echoed Basic auth header) comes back without it."""
    key = "sk-ECHO+KEY/0123456789abcdef"
    texts = [f"the key is {key}.", urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)]
    texts += [base64.b64encode(f"{p}:{key}".encode()).decode() for p in ("", "u", "us")]
    texts += [base64.urlsafe_b64encode(f"{p}{key}".encode()).decode() for p in ("", "a", "ab")]
    raw = orjson.dumps({"choices": [{"text": t} for t in texts]})
    out = parse_response(raw, 200, CIMultiDict(), 1, PATH, Redactor(key))
    assert isinstance(out, Result)
    for c, t in zip(out.choices, texts, strict=True):
        assert "[REDACTED]" in c.text and c.text != t
    assert out.choices[0].text == "the key is [REDACTED]."


def test_a_redirect_with_a_bad_location_is_still_a_response_error() -> None:
    """Locations that do not parse (an invalid port, a broken IPv6 literal) or carry
    credentials are named safely; the answer is a response error, never retried."""
    for location in ("http://127.0.0.1:99999/v1?k=1", "http://[::1/v1", f"http://u:{KEY}@h/v1"):
        out = _parse(b"", status=307, Location=location, **{"x-should-retry": "true"})
        assert isinstance(out, Failure) and isinstance(out.error, ResponseError)
        assert not out.error.retryable and "not followed" in str(out.error)
        assert KEY not in str(out.error) and "k=1" not in str(out.error)


# ------------------------------------------------------------------ the flat path

_KEY_FOR_PLAIN = "sk-plain-path-secret-0123456789"


def _plain_bodies() -> list[object]:
    """Bodies for the flat path: the usual answers it takes, and near misses it must hand
    to the general path (each decided the same either way)."""
    msg = {"role": "assistant", "content": "an answer"}
    usual = {
        "id": "c-1",
        "model": "m",
        "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2},
    }
    bodies: list[object] = [usual]

    def variant(**top: object) -> dict[str, object]:
        return {**usual, **top}

    def choice(**fields: object) -> dict[str, object]:
        return variant(choices=[{"index": 0, "message": msg, "finish_reason": "stop", **fields}])

    bodies += [
        variant(usage=None),
        variant(usage={"prompt_tokens": -1, "completion_tokens": 2}),
        variant(
            usage={
                "prompt_tokens": 3,
                "completion_tokens": 2,
                "cost": 0.5,
                "prompt_tokens_details": {"cached_tokens": 1},
            }
        ),
        variant(id=None),
        variant(id=12345),
        variant(id="x" * 300),
        variant(model=None),
        variant(model=7),
        variant(model="m" * 300),
        variant(model=f"echo {_KEY_FOR_PLAIN}"),
        variant(id=f"id-{_KEY_FOR_PLAIN}"),
        variant(error={"message": "boom"}),
        variant(error="text"),
        variant(prompt_token_ids=[1, 2]),
        variant(choices=[]),
        variant(choices=[usual["choices"][0]] * 2),
        variant(choices=["text"]),
        choice(finish_reason="error"),
        choice(finish_reason=None),
        choice(finish_reason=3),
        choice(finish_reason=f"stop {_KEY_FOR_PLAIN}"),
        choice(logprobs={"content": []}),
        choice(token_ids=[1, 2]),
        choice(prompt_token_ids=[1]),
        choice(message={"role": "assistant", "content": f"key: {_KEY_FOR_PLAIN}"}),
        choice(message={"role": "assistant", "content": None}),
        choice(message={"role": "assistant", "content": [{"type": "text", "text": "p"}]}),
        choice(message={"role": "assistant", "content": "", "tool_calls": []}),
        choice(message="not an object"),
        {"id": "t", "choices": [{"text": "completion text", "finish_reason": "length"}]},
        {"id": "t", "choices": [{"index": 0, "text": 5}]},
        [1, 2],
        "text",
        None,
    ]
    nested: object = "leaf"
    for _ in range(80):
        nested = [nested]
    bodies.append(variant(extra=nested))
    return bodies


def _fields_of(r: Result | Failure) -> object:
    if isinstance(r, Failure):
        return ("failure", type(r.error).__name__, str(r.error), r.error.retryable)
    return (
        "result",
        r.choices,
        r.usage,
        r.id,
        r.model,
        r.request_id,
        r.prompt_token_ids,
        r.attempts,
        r.usage_anomaly,
    )


def test_the_flat_path_decides_every_body_as_the_general_path_does() -> None:
    from engine.endpoints.parsing import _parse_general, _plain_result

    taken = 0
    for key in (_KEY_FOR_PLAIN, None):
        redact = Redactor(key)
        for body in _plain_bodies():
            raw = orjson.dumps(body)
            headers = CIMultiDict({"x-request-id": f"req-{_KEY_FOR_PLAIN}"})
            flat = raw.count(b"[") + raw.count(b"{") <= MAX_JSON_DEPTH  # parse_response's gate
            plain = _plain_result(orjson.loads(raw), headers, 2, redact) if flat else None
            general = _parse_general(raw, 200, headers, 2, "/v1/chat/completions", redact)
            whole = parse_response(raw, 200, headers, 2, "/v1/chat/completions", redact)
            assert _fields_of(whole) == _fields_of(general)
            if plain is not None:
                taken += 1
                assert _fields_of(plain) == _fields_of(general), body
    assert taken >= 20  # the usual answers go the flat way


def test_an_echoed_key_is_redacted_on_the_flat_path() -> None:
    from engine.endpoints.parsing import _plain_result

    body = {
        "id": f"id-{_KEY_FOR_PLAIN}",
        "model": f"m {_KEY_FOR_PLAIN}",
        "choices": [
            {"message": {"content": f"say {_KEY_FOR_PLAIN}"}, "finish_reason": _KEY_FOR_PLAIN}
        ],
    }
    r = _plain_result(body, CIMultiDict(), 1, Redactor(_KEY_FOR_PLAIN))
    assert isinstance(r, Result)
    seen = [r.id, r.model, r.choices[0].text, r.choices[0].finish_reason]
    assert all(_KEY_FOR_PLAIN not in (s or "") for s in seen) and "[REDACTED]" in r.choices[0].text
