"""Built-in verifiable tasks for the embedded LM: data, tokenizer and partial-credit reward.

Each task maps a short digit string to an answer digit string of the same length:

* ``reverse``: ``reverse: 3 1 4 1`` -> ``1 4 1 3``
* ``sort``: ``sort: 3 1 4 1`` -> ``1 1 3 4``
* ``copy``: ``copy: 3 1 4 1`` -> ``3 1 4 1``

The answer is checked exactly, so the reward is verifiable; it gives partial credit (see
:func:`reward`) so that a policy starting at random chance gets a learning signal.

Example::

    tinylm = TinyLMConfig()
    examples = make_examples(tinylm, n=100, seed=0)
    tok = TaskTokenizer(tinylm.vocab_digits)
    prompt_ids = tok.encode_prompt(examples[0].text)   # [<bos>, 3, 1, 4, 1, <sep>]
    reward(examples[0], "1 4 1 3")                     # 1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..config.sections import TinyLMConfig
from ..errors import RewardError
from ..types import Example

__all__ = ("TASKS", "TaskTokenizer", "make_examples", "reward", "solve")

TASKS: tuple[str, ...] = ("reverse", "sort", "copy")
"""Names of the built-in tasks (the values of ``TinyLMConfig.task``)."""


def solve(task: str, digits: Sequence[int]) -> list[int]:
    """The correct answer of ``task`` for the prompt ``digits``."""
    if task == "reverse":
        return list(reversed(digits))
    if task == "sort":
        return sorted(digits)
    if task == "copy":
        return list(digits)
    raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def make_examples(tinylm: TinyLMConfig, n: int, seed: int) -> list[Example]:
    """``n`` examples of ``tinylm.task``: ``tinylm.prompt_len`` digits below ``vocab_digits``.

    Deterministic in ``seed``. Ids are ``task-0`` .. ``task-{n-1}``; ``text`` is
    ``"<task>: d d d d"``, ``target`` the answer in the same spacing, and ``meta`` carries
    ``task``, ``digits`` and ``answer`` as lists of ints.
    """
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, tinylm.vocab_digits, size=(n, tinylm.prompt_len))  # (n, L)
    out: list[Example] = []
    for i, row in enumerate(draws):
        digits = [int(d) for d in row]
        answer = solve(tinylm.task, digits)
        text = f"{tinylm.task}: {' '.join(map(str, digits))}"
        out.append(
            Example(
                id=f"task-{i}",
                text=text,
                inputs={"text": text},
                target=" ".join(map(str, answer)),
                meta={"task": tinylm.task, "digits": digits, "answer": answer},
            )
        )
    return out


def reward(example: Example, completion_text: str) -> float:
    """Partial-credit reward in [0, 1] for one completion of a built-in task example.

    With ``target = example.target.split()`` (length L) and ``pred = completion_text.split()``
    (length K, whitespace-separated tokens compared as strings)::

        reward = #{i < min(L, K) : pred[i] == target[i]} / max(L, K)

    So a perfect answer scores 1, an empty one 0, each correct position is worth 1/L, and every
    token beyond L is a length penalty (it grows the denominator). Examples for target
    ``1 4 1 3``: ``"1 4 1 3"`` -> 1.0, ``"1 4"`` -> 0.5, ``"1 4 1 3 3"`` -> 0.8,
    ``"3 1 4 1"`` -> 0.0, ``""`` -> 0.0.

    Raises:
        RewardError: the example has no target (it is not a built-in task example).
    """
    if not example.target:
        raise RewardError(f"example {example.id!r} has no target to check against")
    target = example.target.split()
    pred = completion_text.split()
    correct = sum(p == t for p, t in zip(pred, target, strict=False))
    return correct / max(len(target), len(pred))


class TaskTokenizer:
    """Token ids for the built-in tasks: one per digit, plus four specials.

    Ids: digits ``0 .. D-1`` are ``0 .. D-1``; then ``<eos>`` = D, ``<sep>`` = D+1,
    ``<bos>`` = D+2, ``<pad>`` = D+3. The first ``D + 1`` ids (digits and ``<eos>``) are the
    *completion vocabulary*: the only tokens a completion can contain, so the LM's output layer
    has exactly ``num_outputs`` logits and an output index equals its token id.

    A prompt is encoded as ``<bos> d1 .. dL <sep>``; a completion is decoded by reading digits
    up to the first ``<eos>`` and joining them with single spaces.
    """

    def __init__(self, vocab_digits: int) -> None:
        if not 1 <= vocab_digits <= 10:
            raise ValueError(f"vocab_digits must be in 1..10, got {vocab_digits}")
        self.vocab_digits = vocab_digits
        """D: number of digit tokens."""
        self.eos = vocab_digits
        """End of completion."""
        self.sep = vocab_digits + 1
        """Separates the prompt from the completion."""
        self.bos = vocab_digits + 2
        """Start of sequence."""
        self.pad = vocab_digits + 3
        """Left padding of the context window (never generated)."""

    @property
    def vocab_size(self) -> int:
        """All token ids, specials included."""
        return self.vocab_digits + 4

    @property
    def num_outputs(self) -> int:
        """Size of the completion vocabulary (digits and ``<eos>``)."""
        return self.vocab_digits + 1

    def vocab(self) -> list[str]:
        """Token strings indexed by id."""
        return [str(d) for d in range(self.vocab_digits)] + ["<eos>", "<sep>", "<bos>", "<pad>"]

    def prompt_digits(self, text: str) -> list[int]:
        """The digits of a prompt such as ``"reverse: 3 1 4 1"`` (the part after a colon).

        Raises:
            ValueError: a token is not a digit below ``vocab_digits``, or there are none.
        """
        body = text.split(":", 1)[1] if ":" in text else text
        parts = body.split()
        if not parts:
            raise ValueError(f"prompt {text!r} has no digits")
        digits: list[int] = []
        for p in parts:
            if not (p.isdigit() and int(p) < self.vocab_digits):
                raise ValueError(
                    f"prompt {text!r}: token {p!r} is not a digit below {self.vocab_digits}"
                )
            digits.append(int(p))
        return digits

    def encode_prompt(self, text: str) -> np.ndarray:
        """``<bos> d1 .. dL <sep>`` as an int64 array of shape (L + 2,)."""
        digits = self.prompt_digits(text)
        return np.array([self.bos, *digits, self.sep], dtype=np.int64)

    def encode_completion(self, text: str) -> np.ndarray:
        """A completion text as ids ``d1 .. dK <eos>``, int64 of shape (K + 1,).

        Raises:
            ValueError: a token is not a digit below ``vocab_digits``.
        """
        ids: list[int] = []
        for p in text.split():
            if not (p.isdigit() and int(p) < self.vocab_digits):
                raise ValueError(f"token {p!r} is not a digit below {self.vocab_digits}")
            ids.append(int(p))
        return np.array([*ids, self.eos], dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Completion ids to text: digits up to the first ``<eos>``, space-separated.

        Raises:
            ValueError: an id before ``<eos>`` is not a digit.
        """
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if not 0 <= i < self.vocab_digits:
                raise ValueError(f"id {i} is not a digit token")
            out.append(str(i))
        return " ".join(out)
