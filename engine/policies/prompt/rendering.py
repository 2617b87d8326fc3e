"""How a prompt candidate becomes a request: a completions-mode text or chat messages.

An instruction is plain text, or a template when it names an input field in braces
(``{text}``): a template is filled per example (and per demo) instead of being followed by
labelled examples.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ...types import Example
from .candidates import Candidate

__all__ = ("PromptFormat", "messages_text", "render_completion", "render_messages")

_FIELD_RE = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True, slots=True)
class PromptFormat:
    """How candidates are rendered into a completions prompt (chat mode uses messages).

    Completions mode, for an instruction without placeholders::

        {instruction}

        {input_prefix} {demo input}
        {output_prefix} {demo output}

        {input_prefix} {example input}
        {output_prefix}

    The text ends where the answer begins; ``stop`` ends the answer before the model starts
    inventing the next example.
    """

    input_prefix: str = "Input:"
    """Label before each input."""
    output_prefix: str = "Output:"
    """Label before each output; the prompt ends with it."""
    separator: str = "\n\n"
    """Between the instruction and the examples, and between examples."""
    stop: tuple[str, ...] = ("\n\n", "\nInput:")
    """Stop sequences in completions mode when the endpoint config has none."""


def _fill(template: str, inputs: Mapping[str, Any]) -> str:
    """Replace ``{name}`` for names in ``inputs``; leave every other brace alone."""
    return _FIELD_RE.sub(
        lambda m: str(inputs[m.group(1)]) if m.group(1) in inputs else m.group(0), template
    )


def _is_template(instruction: str, fields: Iterable[str]) -> bool:
    names = set(_FIELD_RE.findall(instruction))
    return bool(names & (set(fields) | {"text"}))


def _inputs_of(example: Example | str) -> dict[str, Any]:
    if isinstance(example, str):
        return {"text": example}
    inputs = dict(example.inputs)
    inputs.setdefault("text", example.text)
    return inputs


def _join(block: str, output: str) -> str:
    return block + output if block.endswith((" ", "\n")) else f"{block} {output}"


def render_completion(
    candidate: Candidate, example: Example | str, fmt: PromptFormat = PromptFormat()
) -> str:
    """The completions-mode prompt: instruction, demos, then the input, ending at the answer."""
    inputs = _inputs_of(example)
    parts: list[str] = []
    if _is_template(candidate.instruction, inputs):
        for d in candidate.demos:
            parts.append(_join(_fill(candidate.instruction, {**inputs, "text": d.input}), d.output))
        parts.append(_fill(candidate.instruction, inputs))
        return fmt.separator.join(parts)
    if candidate.instruction.strip():
        parts.append(candidate.instruction.strip())
    for d in candidate.demos:
        parts.append(f"{fmt.input_prefix} {d.input}\n{fmt.output_prefix} {d.output}")
    parts.append(f"{fmt.input_prefix} {inputs['text']}\n{fmt.output_prefix}")
    return fmt.separator.join(parts)


def render_messages(candidate: Candidate, example: Example | str) -> list[dict[str, str]]:
    """The chat-mode prompt: the instruction as system message, demos as user/assistant turns."""
    inputs = _inputs_of(example)
    msgs: list[dict[str, str]] = []
    template = _is_template(candidate.instruction, inputs)
    if not template and candidate.instruction.strip():
        msgs.append({"role": "system", "content": candidate.instruction.strip()})
    for d in candidate.demos:
        user = _fill(candidate.instruction, {**inputs, "text": d.input}) if template else d.input
        msgs.append({"role": "user", "content": user})
        msgs.append({"role": "assistant", "content": d.output})
    user = _fill(candidate.instruction, inputs) if template else str(inputs["text"])
    msgs.append({"role": "user", "content": user})
    return msgs


def messages_text(messages: Sequence[Mapping[str, str]]) -> str:
    """Chat messages as one text (``role: content`` blocks), for logs and exports."""
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)
