"""The simulated server's deterministic fake model and judge, and how it tells judge calls apart.

A "token" is a whitespace-separated word. :func:`default_model` answers 1-32 words from
:data:`VOCAB`; vocabulary words the prompt mentions are four times likelier. :func:`default_judge`
scores candidates by their share of :data:`GOOD_WORDS`. Token ids and log-probabilities are
pure functions of the token text (and position), so every response is reproducible.
"""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any, Final

import orjson

from .code import code_answer
from .config import SimRequest

__all__ = (
    "CANDIDATE_CLOSE",
    "CANDIDATE_OPEN",
    "GOOD_WORDS",
    "JUDGE_MARKER",
    "VOCAB",
    "chat_logprobs",
    "completion_logprobs",
    "default_judge",
    "default_model",
    "default_tokens",
    "finish",
    "is_judge_call",
    "judge_candidates",
    "prompt_token_ids",
    "token_id",
)

JUDGE_MARKER: Final = "<<JUDGE>>"
"""A prompt or message containing this is a judge call (for hand-written test prompts)."""
CANDIDATE_OPEN: Final = "<<CANDIDATE>>"
"""Opens the text the default judge scores (for hand-written test prompts)."""
CANDIDATE_CLOSE: Final = "<</CANDIDATE>>"
"""Closes the text the default judge scores (optional at the end of the prompt)."""

GOOD_WORDS: Final = (
    "accurate",
    "clear",
    "concise",
    "correct",
    "helpful",
    "precise",
    "relevant",
    "specific",
)
"""Words the default judge rewards: its score is the fraction of candidate words among these."""

_NEUTRAL_WORDS: Final = (
    "the a model answer question because therefore value number step first then result so "
    "is of and to we compute check example data reason simple group policy reward token "
    "sample learn update output input list sum total final yes no"
)
VOCAB: Final = (*GOOD_WORDS, *_NEUTRAL_WORDS.split())
"""The default fake model's vocabulary (48 words, :data:`GOOD_WORDS` first)."""

_VOCAB_IDS: Final = {w: 1000 + i for i, w in enumerate(VOCAB)}
_VOCAB_SET: Final = frozenset(VOCAB)
_MAX_WORDS: Final = 32
"""The longest natural (unstopped, untruncated) default completion, in words."""
_TOKEN_RE: Final = re.compile(r"\s*\S+")
_WORD_RE: Final = re.compile(r"[a-z]+")
_MARKED_CANDIDATE_RE: Final = re.compile(
    re.escape(CANDIDATE_OPEN)
    + r"(.*?)(?:"
    + re.escape(CANDIDATE_CLOSE)
    + r"|(?="
    + re.escape(CANDIDATE_OPEN)
    + r")|\Z)",
    re.DOTALL,
)
# A judge prompt's candidate block: an opening tag at the start of a line (with an optional
# "-CODE" suffix and attributes), up to the closing tag of exactly that name.
_TAGGED_CANDIDATE_RE: Final = re.compile(
    r"^<candidate((?:-[0-9A-Za-z]+)?)(?:\s[^<>\n]*)?>\n?(.*?)\n?</candidate\1>",
    re.DOTALL | re.MULTILINE,
)
# The reply format a grader is asked for: a JSON object opening with "score" or "scores".
_VERDICT_FORMAT_RE: Final = re.compile(r'\{\s*"scores?"\s*:')
_VERDICT_KEYS: Final = frozenset({"score", "scores"})


# ----------------------------------------------------------------------------- judge calls


def is_judge_call(body: Mapping[str, Any], prompts: Sequence[str]) -> bool:
    """Whether a request asks for a verdict rather than a completion.

    It does when a prompt contains :data:`JUDGE_MARKER`, when a prompt asks for a reply that
    opens with ``{"score":`` or ``{"scores":`` (the reply format every judge prompt states, and
    the prefill of a completions-mode judge), or when the request's ``response_format`` is a
    JSON schema with a ``score`` or ``scores`` property.
    """
    if any(JUDGE_MARKER in p or _VERDICT_FORMAT_RE.search(p) for p in prompts):
        return True
    return bool(_schema_properties(body) & _VERDICT_KEYS)


def _schema_properties(body: Mapping[str, Any]) -> set[str]:
    fmt = body.get("response_format")
    if not isinstance(fmt, dict) or fmt.get("type") != "json_schema":
        return set()
    spec = fmt.get("json_schema")
    schema = spec.get("schema") if isinstance(spec, dict) else None
    properties = schema.get("properties") if isinstance(schema, dict) else None
    return set(properties) if isinstance(properties, dict) else set()


def judge_candidates(prompt: str) -> list[str]:
    """The texts a judge prompt asks to grade, in order.

    The text of each ``<<CANDIDATE>>`` block when there are any; else the content of each
    ``<candidate...>`` block (an opening tag at the start of a line, such as
    ``<candidate-3f9a0c1e index="2">``, closed by the tag of the same name, as the engine's
    judges write them); else the whole prompt without :data:`JUDGE_MARKER`.
    """
    marked = _MARKED_CANDIDATE_RE.findall(prompt)
    if marked:
        return marked
    tagged = [m.group(2) for m in _TAGGED_CANDIDATE_RE.finditer(prompt)]
    return tagged or [prompt.replace(JUDGE_MARKER, "")]


def _judge_one(text: str) -> tuple[float, str]:
    words = _WORD_RE.findall(text.lower())
    good = sum(1 for w in words if w in GOOD_WORDS)
    return round(good / len(words), 2) if words else 0.0, f"{good}/{len(words)} on-topic words"


def default_judge(req: SimRequest) -> str:
    """Score each candidate (:func:`judge_candidates`) by its fraction of :data:`GOOD_WORDS`,
    rounded to 2 places: ``{"score": 0.25, "feedback": "2/8 on-topic words"}``, or with several
    candidates ``{"scores": [...], "feedback": [...]}`` in their order."""
    results = [_judge_one(c) for c in judge_candidates(req.prompt)]
    if len(results) == 1:
        score, feedback = results[0]
        return orjson.dumps({"score": score, "feedback": feedback}).decode()
    return orjson.dumps(
        {"scores": [s for s, _ in results], "feedback": [f for _, f in results]}
    ).decode()


# ----------------------------------------------------------------------------- the fake model


@lru_cache(maxsize=4096)
def _prompt_profile(prompt: str) -> tuple[bytes, tuple[str, ...], tuple[str, ...]]:
    """(prompt digest, word pool, the pool as space-led tokens); the prompt's words weigh x4."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=16).digest()
    mentioned = set(_WORD_RE.findall(prompt.lower())) & _VOCAB_SET
    pool = VOCAB + tuple(w for w in VOCAB if w in mentioned) * 3  # at most 192 < 256 entries
    return digest, pool, tuple(" " + w for w in pool)


def default_tokens(
    prompt: str,
    temperature: float,
    seed: int | None,
    server_seed: int,
    number: int,
    index: int,
    salt: bytes = b"",
) -> list[str]:
    """The default model's tokens: one 64-byte blake2b digest picks the length and each word.

    ``salt`` (a LoRA adapter's digest; empty for the base model) changes every draw.
    """
    digest, pool, spaced = _prompt_profile(prompt)
    if temperature == 0:
        key = b"greedy"
    elif seed is not None:
        key = b"seed|%d|%d" % (seed, index)
    else:
        key = b"server|%d|%d|%d" % (server_seed, number, index)
    if salt:
        key = b"adapter|" + salt + b"|" + key
    h = hashlib.blake2b(key, digest_size=64, key=digest).digest()
    m = len(pool)
    length = h[0] % _MAX_WORDS + 1
    return [pool[h[1] % m], *[spaced[b % m] for b in h[2 : length + 1]]]


def default_model(req: SimRequest) -> str:
    """1-32 words from :data:`VOCAB`, a pure function of the prompt and: nothing else at
    ``temperature == 0``; the request's ``seed`` and the choice index when it has one; else the
    server seed, the request number and the choice index; and of the LoRA adapter the request
    names, if any (its digest salts every draw). A prompt holding a built-in code-task problem
    gets code instead (:func:`~engine.testing.sim.code.code_answer`)."""
    code = code_answer(req)
    if code is not None:
        return code
    salt = req.adapter.digest if req.adapter is not None else b""
    return "".join(
        default_tokens(
            req.prompt,
            req.temperature,
            req.seed,
            req.server_seed,
            req.request_number,
            req.index,
            salt,
        )
    )


def finish(text: str, stop: tuple[str, ...], max_tokens: int) -> tuple[list[str], str]:
    """Apply stop sequences then the token cap; returns (tokens, finish_reason)."""
    for s in stop:
        cut = text.find(s)
        if cut >= 0:
            text = text[:cut]
    tokens = _TOKEN_RE.findall(text)
    if len(tokens) > max_tokens:
        return tokens[:max_tokens], "length"
    return tokens, "stop"


# ----------------------------------------------------------------------------- token ids, logprobs


def token_id(token: str) -> int:
    """A vocabulary word's fixed id, or a crc32-derived id for any other word."""
    word = token.strip()
    known = _VOCAB_IDS.get(word)
    return known if known is not None else 10_000 + zlib.crc32(word.encode()) % 40_000


def prompt_token_ids(prompt: str) -> list[int]:
    """``len(prompt) // 4 + 1`` pseudo ids: a BOS, then one per 4-character chunk."""
    return [1] + [
        10_000 + zlib.crc32(prompt[i : i + 4].encode()) % 40_000
        for i in range(0, len(prompt) - 3, 4)
    ]


def _logprob(token: str, position: int, shift: int = 0) -> float:
    mixed = (zlib.crc32(token.encode()) ^ (position * 2654435761)) + shift
    return -round(0.001 + (mixed % 3000) / 1000, 4)


def _alternative(token: str, j: int) -> str:
    return " " + VOCAB[(zlib.crc32(token.encode()) + j) % len(VOCAB)]


def chat_logprobs(tokens: list[str], top: int, shift: int = 0) -> dict[str, Any]:
    """The chat ``logprobs`` object of a choice, with ``top`` alternatives per token; ``shift``
    (a LoRA adapter's) moves every log-probability."""
    content = []
    for i, tok in enumerate(tokens):
        lp = _logprob(tok, i, shift)
        alts = []
        if top:
            alts.append({"token": tok, "logprob": lp, "bytes": list(tok.encode())})
            for j in range(1, top):
                alt = _alternative(tok, j)
                alts.append(
                    {"token": alt, "logprob": round(lp - 0.5 * j, 4), "bytes": list(alt.encode())}
                )
        content.append(
            {"token": tok, "logprob": lp, "bytes": list(tok.encode()), "top_logprobs": alts}
        )
    return {"content": content, "refusal": None}


def completion_logprobs(tokens: list[str], top: int, offset: int, shift: int = 0) -> dict[str, Any]:
    """The completions ``logprobs`` object of a choice whose text starts at ``offset``;
    ``shift`` (a LoRA adapter's) moves every log-probability."""
    lps = [_logprob(tok, i, shift) for i, tok in enumerate(tokens)]
    offsets = []
    for tok in tokens:
        offsets.append(offset)
        offset += len(tok)
    tops = None
    if top:
        tops = []
        for tok, lp in zip(tokens, lps, strict=True):
            d = {tok: lp}
            for j in range(1, top):
                d.setdefault(_alternative(tok, j), round(lp - 0.5 * j, 4))
            tops.append(d)
    return {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
