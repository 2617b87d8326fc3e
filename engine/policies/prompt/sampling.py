"""What one request of the prompt policy returns: a :class:`PromptSample` per completion, with
the candidate drawn, its behaviour log-probability and the request's share of usage."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ...types import Sample, Usage

if TYPE_CHECKING:
    from ...endpoints.parsing import Completion

__all__ = ("PromptSample", "samples_of", "split_usage")


@dataclass(slots=True)
class PromptSample(Sample):
    """A :class:`~engine.types.Sample` of the prompt policy.

    ``choice`` is the candidate id and ``logprobs`` is ``[log pi_old(candidate)]``. The
    completion's own tokens (sampled by the endpoint's model, not by this policy) are kept in
    the ``completion_*`` fields, for export to weight trainers, when the server returned them.

    Attributes:
        slot: the parameter slot of the candidate when it was drawn.
        messages: the chat messages sent (chat mode), else None.
        completion_token_ids: completion token ids (vLLM returns them), else None.
        completion_logprobs: per-token log-probabilities of the completion, else None.
        completion_tokens: the completion's tokens as strings, else None.
    """

    slot: int = -1
    messages: tuple[Mapping[str, str], ...] | None = None
    completion_token_ids: np.ndarray | None = None
    completion_logprobs: np.ndarray | None = None
    completion_tokens: tuple[str, ...] | None = None


def split_usage(total: Usage, k: int) -> list[Usage]:
    """Each of ``k`` samples' share of a request's usage (integer tokens, remainder first)."""
    if k <= 0:
        return []

    def share(x: int, i: int) -> int:
        return x // k + (1 if i < x % k else 0)

    return [
        Usage(
            share(total.prompt_tokens, i),
            share(total.completion_tokens, i),
            share(total.cached_tokens, i),
            share(total.reasoning_tokens, i),
            None if total.cost is None else total.cost / k,
        )
        for i in range(k)
    ]


def samples_of(completion: Completion, base: Mapping[str, Any]) -> list[PromptSample]:
    """One sample per choice of ``completion``, each with the fields in ``base`` (prompt,
    candidate, slot, messages, behaviour log-probability) and its share of the usage."""
    usage = split_usage(completion.usage, len(completion.choices))
    prompt_ids = completion.prompt_token_ids
    out = []
    for c, u in zip(completion.choices, usage, strict=True):
        out.append(
            PromptSample(
                text=c.text,
                finish_reason=c.finish_reason or "stop",
                usage=u,
                latency=completion.latency,
                prompt_ids=None if prompt_ids is None else np.asarray(prompt_ids),
                completion_token_ids=None
                if c.token_ids is None
                else np.asarray(c.token_ids, dtype=np.int64),
                completion_logprobs=None
                if c.logprobs is None
                else np.asarray(c.logprobs, dtype=np.float64),
                completion_tokens=None if c.tokens is None else tuple(c.tokens),
                **base,
            )
        )
    return out
