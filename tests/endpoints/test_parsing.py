"""parse_response on its own: results, failures inside HTTP 200, error statuses, redaction."""

from __future__ import annotations

import base64
import urllib.parse

import orjson
from multidict import CIMultiDict

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
