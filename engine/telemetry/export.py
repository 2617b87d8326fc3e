"""Every scored group as one JSON line, for weight trainers (TRL and similar).

For open-weight models served by vLLM or llama.cpp, the engine can do the sampling and the
scoring, and a weight trainer the update. ``python -m engine run --export-groups FILE`` (or
``TrainingManager(export_groups=FILE)``) writes one line per group after the learner computed
its advantages::

    {
      "format": "grpo-engine/groups-v1",
      "prompt": "Input: The soup was cold.\\nOutput:",      # or [{"role": ..., "content": ...}]
      "input": "The soup was cold.", "target": "negative", "example_id": "sentiment-017",
      "group_id": "3-1", "step": 3, "policy_version": 2,
      "rewards": [1.0, 0.0, ...], "advantages": [0.87, -0.87, ...],
      "samples": [
        {"prompt": ..., "completion": " negative", "reward": 1.0, "advantage": 0.87,
         "reward_parts": {"exact_match": 1.0}, "feedback": null, "error": null,
         "finish_reason": "stop", "choice": 4, "choice_logprob": -1.2,
         "completion_token_ids": null, "completion_logprobs": [-0.01, -0.3],
         "completion_tokens": [" negative", "\\n\\n"], "prompt_token_ids": null,
         "prompt_tokens": 61, "completion_tokens_count": 2, "completion_loss_mask": null},
        ...
      ]
    }

Why this shape. TRL's ``GRPOTrainer`` takes a *prompt-only* dataset: a ``prompt`` column, a
string (standard) or a list of ``{"role", "content"}`` messages (conversational), and passes
every other column to the reward functions as keyword arguments, so no column may be named
``prompts``, ``completions``, ``completion_ids`` or ``trainer_state``; none here is. Loaded with
``datasets.load_dataset("json", data_files=FILE)`` the file is such a dataset as is (``target``
is there for a correctness reward), and ``samples`` holds what an offline trainer needs:
completions with rewards and advantages for rejection-sampling SFT (TRL's prompt-completion
type) or best-vs-worst pairs for DPO (the preference type); see :func:`flatten` and
:func:`preference_pairs`, and ``docs/export.md``.

``prompt`` is the group's prompt when every member saw the same one. The prompt policy draws a
prompt candidate per member, so there members differ; ``prompt`` is then the best-rewarded
member's (the best known prompt for this input) and each sample carries its own.

Token ids and logprobs are written when the server returned them (vLLM returns token ids,
llama.cpp and OpenAI logprobs with ``endpoint.logprobs = true``), else null. For the embedded
tiny LM they are in its own vocabulary. ``choice`` and ``choice_logprob`` are the prompt
policy's candidate id and its behaviour log-probability. ``completion_loss_mask`` is a
token policy's multi-turn episode's mask (1: the policy's own token, trained; 0: the
environment's, context, its logprob null), else null.

Resume: the file is appended to; the first write of a process first drops lines whose step is
at or after the step it writes, so a resumed run never duplicates a step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol, runtime_checkable

import numpy as np
import orjson

from ..errors import DataError
from ..files import atomic_write_bytes, open_append, open_read
from ..types import Group, Rollout

__all__ = (
    "FORMAT",
    "GroupExporter",
    "PromptedSample",
    "flatten",
    "group_record",
    "preference_pairs",
    "read_groups",
)

FORMAT = "grpo-engine/groups-v1"
"""The ``format`` field of every line."""

_OPTS = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS


@runtime_checkable
class PromptedSample(Protocol):
    """A sample whose completion's own tokens are kept apart from the choice that drew its
    prompt (the prompt policy's :class:`~engine.policies.prompt.PromptSample`): its
    ``logprobs`` are the choice's, the ``completion_*`` fields the completion's."""

    messages: Sequence[Mapping[str, str]] | None
    completion_token_ids: np.ndarray | None
    completion_logprobs: np.ndarray | None
    completion_tokens: Sequence[str] | None


def _list(a: Any, kind: type) -> list[Any] | None:
    if a is None:
        return None
    return [kind(x) for x in np.asarray(a).tolist()]


def _finite(x: float) -> float | None:
    return float(x) if x is not None and math.isfinite(x) else None


def _sample_record(r: Rollout) -> dict[str, Any]:
    s = r.sample
    messages = None
    if isinstance(s, PromptedSample):
        messages = s.messages
        token_ids = s.completion_token_ids
        logprobs = s.completion_logprobs
        tokens = s.completion_tokens
        choice_lp = float(s.logprobs[0]) if s.logprobs is not None and len(s.logprobs) else None
    else:  # a token-level policy: token_ids/logprobs are the completion's
        token_ids, logprobs, tokens, choice_lp = s.token_ids, s.logprobs, None, None
    return {
        "prompt": [dict(m) for m in messages] if messages else s.prompt,
        "completion": s.text,
        "reward": _finite(r.reward),
        "advantage": _finite(r.advantage),
        "reward_parts": {k: _finite(v) for k, v in r.reward_parts.items()},
        "feedback": r.feedback,
        "error": r.error or s.error,
        "finish_reason": s.finish_reason,
        "choice": s.choice,
        "choice_logprob": choice_lp,
        "completion_token_ids": _list(token_ids, int),
        "completion_logprobs": _list(logprobs, float),
        "completion_tokens": list(tokens) if tokens is not None else None,
        "prompt_token_ids": _list(s.prompt_ids, int),
        "prompt_tokens": s.usage.prompt_tokens,
        "completion_tokens_count": s.usage.completion_tokens,
        "completion_loss_mask": _list(s.loss_mask, int),
    }


def group_record(group: Group, *, step: int | None = None) -> dict[str, Any]:
    """One group as the JSON object written per line (module docstring)."""
    samples = [_sample_record(r) for r in group.rollouts]
    prompts = [s["prompt"] for s in samples]
    prompt: Any = prompts[0] if prompts else group.example.text
    if any(p != prompt for p in prompts):
        rewards = [r.reward if math.isfinite(r.reward) else -math.inf for r in group.rollouts]
        prompt = prompts[int(np.argmax(rewards))]
    return {
        "format": FORMAT,
        "prompt": prompt,
        "input": group.example.text,
        "target": group.example.target,
        "example_id": group.example.id,
        "group_id": group.group_id,
        "step": group.step if step is None else step,
        "policy_version": group.policy_version,
        "rewards": [s["reward"] for s in samples],
        "advantages": [s["advantage"] for s in samples],
        "samples": samples,
    }


class GroupExporter:
    """Appends every scored group to a JSONL file; see the module docstring.

    Example::

        with GroupExporter("runs/x/groups.jsonl") as exporter:
            exporter.write(batch.groups, step=batch.step)   # after the learner's update

    Each line is written whole by one ``write`` call and flushed at every :meth:`write`.

    Attributes:
        path: the JSONL file.
        groups: groups written by this exporter.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fh: IO[bytes] | None = None  # opened at the first write
        self.groups = 0
        self._closed = False

    def _open(self, first_step: int) -> IO[bytes]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # A resumed (or repeated) run: keep only the earlier steps. A symlink is refused by
        # the reader, never followed (engine.files).
        if self.path.exists() or self.path.is_symlink():
            keep = [r for r in _raw_lines(self.path) if _step_of(r) < first_step]
            atomic_write_bytes(self.path, b"".join(keep))  # never through a symlink
        return open_append(self.path)

    def write(self, groups: Sequence[Group], *, step: int | None = None) -> int:
        """Write one line per group; returns how many. ``step`` defaults to each group's."""
        if self._closed:
            raise ValueError("the exporter is closed")
        if not groups:
            return 0
        records = [group_record(g, step=step) for g in groups]
        if self._fh is None:
            self._fh = self._open(min(int(r["step"]) for r in records))
        self._fh.write(b"".join(orjson.dumps(r, option=_OPTS) + b"\n" for r in records))
        self.groups += len(records)
        return len(records)

    def close(self) -> None:
        """Close the file; idempotent."""
        self._closed = True
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> GroupExporter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _raw_lines(path: Path) -> Iterator[bytes]:
    with open_read(path) as fh:  # a symlink is refused, not followed
        for raw in fh:
            if raw.strip() and raw.endswith(b"\n"):  # a torn final line is dropped
                yield raw


def _step_of(raw: bytes) -> int:
    try:
        return int(orjson.loads(raw).get("step", -1))
    except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
        return -1


def read_groups(path: str | Path) -> Iterator[dict[str, Any]]:
    """The group records of an export file; DataError names the line of a malformed one."""
    p = Path(path)
    with open(p, "rb") as fh:
        for lineno, raw in enumerate(fh, start=1):
            if not raw.strip():
                continue
            try:
                rec = orjson.loads(raw)
            except orjson.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc}", path=str(p), line=lineno) from None
            if not isinstance(rec, dict) or rec.get("format") != FORMAT:
                raise DataError(f"not a {FORMAT} record", path=str(p), line=lineno)
            yield rec


def flatten(records: Iterable[Mapping[str, Any]]) -> Iterator[dict[str, Any]]:
    """One prompt-completion row per scored sample (TRL's prompt-completion type, plus
    ``reward``, ``advantage``, ``group_id``, ``step``); failed samples are skipped."""
    for rec in records:
        for s in rec["samples"]:
            if s["reward"] is None:
                continue
            yield {
                "prompt": s["prompt"],
                "completion": s["completion"],
                "reward": s["reward"],
                "advantage": s["advantage"],
                "group_id": rec["group_id"],
                "step": rec["step"],
            }


def preference_pairs(
    records: Iterable[Mapping[str, Any]], *, min_margin: float = 0.0
) -> Iterator[dict[str, Any]]:
    """One ``{prompt, chosen, rejected}`` pair per group (TRL's preference type): the best- and
    the worst-rewarded completions, when their rewards differ by more than ``min_margin``.

    With the prompt policy, members saw different prompts; the pair uses the chosen one's.
    """
    for rec in records:
        scored = [s for s in rec["samples"] if s["reward"] is not None]
        if len(scored) < 2:
            continue
        best = max(scored, key=lambda s: s["reward"])
        worst = min(scored, key=lambda s: s["reward"])
        if best["reward"] - worst["reward"] <= min_margin:
            continue
        yield {
            "prompt": best["prompt"],
            "chosen": best["completion"],
            "rejected": worst["completion"],
            "group_id": rec["group_id"],
        }
