"""A token vocabulary for the embedded LM on the calculator tool task (``tinylm.vocab =
"calculator"``).

The task vocabulary of :class:`~engine.data.tasks.TaskTokenizer` holds digits only; an episode
of the calculator task needs the text protocol's tags, arithmetic and the prompts' words.
:class:`ToolTokenizer` encodes any text by greedy longest match over:

* the *completion vocabulary* (ids ``0 .. num_outputs - 1``, what the LM's output layer
  covers): the digits, ``+ - * / ( ) =``, a space, ``<eos>``, and two macro tokens of the
  text protocol, :data:`CALL_OPEN` (``<tool_call>`` and the calculator call's JSON up to its
  expression) and :data:`CALL_CLOSE` (the JSON's end and ``</tool_call>``). So a call is
  ``CALL_OPEN 3 * 4 CALL_CLOSE`` and the uniform initial policy makes one in a few percent of
  its turns: multi-turn episodes from the first step, without pretraining.
* context-only tokens: the other protocol tags, every other printable ASCII character and a
  newline, then ``<sep> <bos> <pad>`` and ``<unk>`` (any other character).

Example::

    tok = ToolTokenizer()
    ids = tok.encode("<tool_result>12</tool_result>")   # 4 ids: tag, 1, 2, tag
    tok.decode([tok.call_open, 3, 11, 4, tok.call_close])
    # '<tool_call>{"name": "calculator", "arguments": {"expression": "3+4"}}</tool_call>'
"""

from __future__ import annotations

import string
from collections.abc import Sequence

import numpy as np

__all__ = ("CALL_CLOSE", "CALL_OPEN", "ToolTokenizer")

CALL_OPEN = '<tool_call>{"name": "calculator", "arguments": {"expression": "'
"""One token: a calculator call up to its expression."""
CALL_CLOSE = '"}}</tool_call>'
"""One token: the end of a calculator call (generation stops at ``</tool_call>``)."""

_OUTPUT_CHARS = tuple("0123456789+-*/()= ")
_CONTEXT_TAGS = ("<tool_result>", "</tool_result>", "<tool_call>", "</tool_call>")


class ToolTokenizer:
    """Token ids for calculator episodes on the embedded LM (module docstring).

    The interface the LM uses is that of :class:`~engine.data.tasks.TaskTokenizer`
    (``eos``, ``sep``, ``bos``, ``pad``, ``vocab_size``, ``num_outputs``, ``vocab``,
    ``encode_prompt``, ``decode``), plus :meth:`encode` for environment text.
    """

    def __init__(self) -> None:
        outputs = [*_OUTPUT_CHARS, "<eos>", CALL_OPEN, CALL_CLOSE]
        chars = [c for c in string.printable if c not in outputs and c not in "\t\r\x0b\x0c"]
        self._tokens: list[str] = [*outputs, *_CONTEXT_TAGS, *chars, "<sep>", "<bos>", "<pad>"]
        self._tokens.append("<unk>")
        self.num_outputs = len(outputs)
        """Size of the completion vocabulary (the ids below it)."""
        self.eos = outputs.index("<eos>")
        """End of a turn (never text)."""
        self.call_open = outputs.index(CALL_OPEN)
        """The :data:`CALL_OPEN` token."""
        self.call_close = outputs.index(CALL_CLOSE)
        """The :data:`CALL_CLOSE` token."""
        n = len(self._tokens)
        self.sep, self.bos, self.pad, self.unk = n - 4, n - 3, n - 2, n - 1
        self._text_ids = {
            t: i for i, t in enumerate(self._tokens) if i not in (self.eos, *range(n - 4, n))
        }
        self._longest = max(len(t) for t in self._text_ids)

    @property
    def vocab_size(self) -> int:
        """All token ids, specials included."""
        return len(self._tokens)

    def vocab(self) -> list[str]:
        """Token strings indexed by id."""
        return list(self._tokens)

    def encode(self, text: str) -> np.ndarray:
        """``text`` as int64 ids by greedy longest match; a character outside the vocabulary
        is ``<unk>``."""
        ids: list[int] = []
        i = 0
        while i < len(text):
            for k in range(min(self._longest, len(text) - i), 0, -1):
                hit = self._text_ids.get(text[i : i + k])
                if hit is not None:
                    ids.append(hit)
                    i += k
                    break
            else:
                ids.append(self.unk)
                i += 1
        return np.array(ids, dtype=np.int64)

    def encode_prompt(self, text: str) -> np.ndarray:
        """``<bos> text <sep>`` as int64 ids."""
        return np.array([self.bos, *self.encode(text).tolist(), self.sep], dtype=np.int64)

    def decode(self, ids: Sequence[int] | np.ndarray) -> str:
        """Ids to text, up to the first ``<eos>``; specials other than ``<unk>`` are dropped."""
        out: list[str] = []
        for i in ids:
            i = int(i)
            if i == self.eos:
                break
            if i == self.unk:
                out.append("\ufffd")
            elif i not in (self.sep, self.bos, self.pad):
                out.append(self._tokens[i])
        return "".join(out)
