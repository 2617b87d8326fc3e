"""The simulated server's canned answers to the built-in code task.

A prompt that contains a problem of the built-in ``code`` dataset (the last one it contains,
so few-shot demonstrations before it do not count) is answered with code for that problem
instead of vocabulary words, one of four kinds, drawn per choice like the default model's
words (a pure function of the prompt at ``temperature == 0``, of the request's ``seed`` and
the choice index when it has one, else of the server seed, request number and index):

=========  ======  =====================================================================
kind       weight  what the ``unit_tests`` reward gives it
=========  ======  =====================================================================
correct    0.4     the reference solution: 1.0
half       0.3     the reference behind a wrapper that answers every other call: ~0.5
stub       0.2     a function that returns None: 0.0 (or the tests None happens to pass)
prose      0.1     no code at all: 0.0
=========  ======  =====================================================================

So groups have reward variance for GRPO, and a run of ``examples/code.toml`` against the
simulated server exercises the sandbox on every rollout.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

from ...data import datasets
from ...types import Example
from .config import SimRequest

__all__ = ("CODE_KINDS", "canned_code", "code_answer", "code_kind")

CODE_KINDS: tuple[tuple[str, float], ...] = (
    ("correct", 0.4),
    ("half", 0.3),
    ("stub", 0.2),
    ("prose", 0.1),
)
"""The kinds of canned answer and their probabilities."""


@lru_cache(maxsize=1)
def _problems() -> tuple[Example, ...]:
    return tuple(datasets.load("code"))


def _problem_of(prompt: str) -> Example | None:
    """The code problem whose text occurs last in ``prompt``, or None."""
    best: tuple[int, Example] | None = None
    for ex in _problems():
        at = prompt.rfind(ex.text)
        if at >= 0 and (best is None or at > best[0]):
            best = (at, ex)
    return None if best is None else best[1]


def code_kind(
    prompt: str,
    temperature: float,
    seed: int | None,
    server_seed: int,
    request_number: int,
    index: int,
    salt: bytes = b"",
) -> str:
    """Which kind of answer this choice gets (see the module docstring)."""
    if temperature == 0:
        key = prompt
    elif seed is not None:
        key = f"{prompt}\0{seed}\0{index}"
    else:
        key = f"{prompt}\0{server_seed}\0{request_number}\0{index}"
    digest = hashlib.blake2b(key.encode() + salt, digest_size=8).digest()
    u = int.from_bytes(digest, "big") / 2**64
    for kind, weight in CODE_KINDS:
        if u < weight:
            return kind
        u -= weight
    return CODE_KINDS[-1][0]


def _reference(ex: Example) -> str:
    text = ex.target or ""
    return text.removeprefix("```python\n").removesuffix("```").strip("\n")


def code_answer(req: SimRequest) -> str | None:
    """The canned answer of a code-task prompt, or None for any other prompt."""
    salt = req.adapter.digest if req.adapter is not None else b""
    return canned_code(
        req.prompt, req.temperature, req.seed, req.server_seed, req.request_number, req.index, salt
    )


def canned_code(
    prompt: str,
    temperature: float,
    seed: int | None,
    server_seed: int,
    request_number: int,
    index: int,
    salt: bytes = b"",
) -> str | None:
    """:func:`code_answer` from the request's parts (the server's fast path)."""
    ex = _problem_of(prompt)
    entry = ex.meta.get("entry_point") if ex is not None else None
    if ex is None or not isinstance(entry, str):
        return None
    kind = code_kind(prompt, temperature, seed, server_seed, request_number, index, salt)
    if kind == "prose":
        return f"The function {entry} should follow the description closely."
    if kind == "stub":
        code = f"def {entry}(*args, **kwargs):\n    return None"
    elif kind == "half":
        code = (
            f"{_reference(ex)}\n\n\n_solution = {entry}\n_calls = [0]\n\n\n"
            f"def {entry}(*args, **kwargs):\n    _calls[0] += 1\n"
            "    return _solution(*args, **kwargs) if _calls[0] % 2 else None"
        )
    else:
        code = _reference(ex)
    return f"```python\n{code}\n```"
