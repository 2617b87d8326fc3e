"""Endpoint stage: keeping the API key out of every message, id and URL the client shows.

The key lives only in the session's Authorization header. Text that comes from upstream
(error bodies, exception messages, ids a server chose) passes through a :class:`Redactor`
before it reaches an error or an event, and URLs are shown by :func:`strip_url`. The text of
a successful answer (completions, their tokens, the model name) is cleared of the key alone
(:meth:`Redactor.secrets`), so a server that echoes the key puts it nowhere.
"""

from __future__ import annotations

import base64
import re
import urllib.parse

__all__ = ("Redactor", "strip_url")

_BEARER = re.compile(r"Bearer\s+[^\s'\",}]+", re.IGNORECASE)


def strip_url(url: str) -> str:
    """A URL without userinfo, query or fragment (which could hold credentials)."""
    try:
        p = urllib.parse.urlsplit(url)
    except ValueError:  # an invalid IPv6 literal, say: nothing of it is safe to show
        return "(an invalid URL)"
    host = p.hostname or ""
    try:
        port = p.port
    except ValueError:  # a port out of range or not a number (a server's Location header)
        port = None
    if port:
        host = f"{host}:{port}"
    return urllib.parse.urlunsplit((p.scheme, host, p.path, "", ""))


def _secret_variants(key: str | None) -> tuple[str, ...]:
    """The key as sent, URL-quoted both ways, and base64-encoded (standard and URL-safe, at
    each of the three alignments, without the edge groups that depend on the neighbouring
    bytes: as in a Basic auth header a server echoes), longest first."""
    if not key:
        return ()
    variants = {key, urllib.parse.quote(key, safe=""), urllib.parse.quote_plus(key)}
    raw = key.encode()
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + raw).decode()
        core = enc[4 if pad else 0 : -4]
        if len(core) >= 16:
            variants |= {core, core.replace("+", "-").replace("/", "_")}
    return tuple(sorted(variants, key=len, reverse=True))


class Redactor:
    """Replaces the key (in any of its spellings: as sent, URL-quoted, base64) and any bearer
    token with ``[REDACTED]``.

    Example::

        redact = Redactor("sk-123")
        redact("upstream said: Bearer sk-123")   # 'upstream said: Bearer [REDACTED]'
    """

    __slots__ = ("_secrets", "_shortest")

    def __init__(self, key: str | None) -> None:
        self._secrets = _secret_variants(key)
        # text shorter than every spelling of the key cannot hold one (most ids, models and
        # finish reasons): one length check instead of a search per spelling
        self._shortest = min(map(len, self._secrets), default=0)

    def __call__(self, text: str) -> str:
        """``text`` with the key and bearer tokens redacted."""
        if len(text) >= self._shortest:
            for s in self._secrets:
                if s in text:
                    text = text.replace(s, "[REDACTED]")
        # the regex only where it can match: every spelling of "bearer" it matches (ASCII
        # letters, no other character folds to them) lower-cases to "bearer"
        if "bearer" not in text.lower():
            return text
        return _BEARER.sub("Bearer [REDACTED]", text)

    def secrets(self, text: str) -> str:
        """``text`` with the key (in any of its spellings) redacted, and nothing else: for a
        model's answer, where "Bearer" followed by a word is ordinary text."""
        if len(text) < self._shortest:
            return text
        for s in self._secrets:
            if s in text:
                text = text.replace(s, "[REDACTED]")
        return text

    def answer(
        self, text: str, reason: str | None, model: str | None, rid: str | None
    ) -> tuple[str, str | None, str | None, str | None]:
        """An answer's text, finish reason and model with the key redacted (:meth:`secrets`)
        and its id as :meth:`id` leaves it: what the client's usual response needs, in one
        call."""
        secrets = self._secrets
        if not secrets:
            return text, reason, model, rid
        shortest = self._shortest  # a text shorter than every spelling cannot hold one
        if len(text) >= shortest:
            for s in secrets:
                if s in text:
                    text = text.replace(s, "[REDACTED]")
        if reason is not None and len(reason) >= shortest:
            for s in secrets:
                if s in reason:
                    reason = reason.replace(s, "[REDACTED]")
        if model is not None and len(model) >= shortest:
            for s in secrets:
                if s in model:
                    model = model.replace(s, "[REDACTED]")
        return text, reason, model, None if rid is None else self(rid)

    def spans(self, text: str) -> list[tuple[int, int]]:
        """Where the key (in any of its spellings) occurs in ``text``: sorted, merged
        ``(start, end)`` character ranges."""
        found: list[tuple[int, int]] = []
        for s in self._secrets:
            i = text.find(s)
            while i >= 0:
                found.append((i, i + len(s)))
                i = text.find(s, i + 1)
        found.sort()
        merged: list[tuple[int, int]] = []
        for a, b in found:
            if merged and a <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
            else:
                merged.append((a, b))
        return merged

    @property
    def active(self) -> bool:
        """Whether there is a key to redact."""
        return bool(self._secrets)

    def id(self, rid: str | None) -> str | None:
        """A server-chosen id, redacted if a (misbehaving) server put the key in it."""
        if rid is None or not self._secrets:
            return rid
        return self(rid)

    def exception(self, exc: BaseException) -> str:
        """``Type: message`` of an exception, redacted (aiohttp's text may hold headers)."""
        text = str(exc)
        return self(f"{type(exc).__name__}: {text}" if text else type(exc).__name__)
