"""LLM judges: a model grades completions against a rubric, with a hardened prompt and a cache.

Example::

    judge = LLMJudge(client, "Evaluate the quality of the generated text: is it accurate, "
                             "clear and on topic?", name="QualityEvaluator")
    v = await judge.verdict(example, "Quantum computing uses qubits...")
    v.score, v.feedback                     # 0.8, "Accurate but brief."
    rewarder = Rewarder([...], judges=[JudgeSpec(judge, weight=0.5)])   # or as a reward fn:
    reward = await judge(example, text)     # a float in [0, 1]

Two judges:

- :class:`LLMJudge` grades one completion per call (``{"score": s, "feedback": "..."}``).
- :class:`GroupJudge` grades all G completions of a group in one call, relative to each other
  (``{"scores": [...], "feedback": [...]}``, exactly one entry per candidate). The order the
  candidates are shown in is shuffled per group with a seeded RNG, against position bias, and
  the scores are mapped back.

Replies are parsed strictly (:mod:`engine.rewards.verdicts`): a malformed verdict raises
:class:`~engine.errors.OutputParseError` and makes the rollout a recorded failure, never a
silent 0. The prompt is rendered by a :class:`~engine.rewards.judge_prompts.PromptRenderer`,
by default the hardened one (:mod:`engine.rewards.judge_prompts`).

Judge calls go through the same :class:`~engine.endpoints.client.Client` as generation (same
limits, retries and event log) with ``kind="judge"``.

Caching and deduplication: a verdict is cached under the sha256 of (prompt format version,
renderer name, judge model, rubric, task, reference, candidate) in a
:class:`~engine.rewards.judge_cache.JudgeCache` (share one between judges to share verdicts);
identical candidates within a call are judged once, and concurrent identical requests share
one call (single flight). Both are counted in :meth:`LLMJudge.statistics` as ``cache_hits`` and
``deduped``; their sum is ``calls_saved``.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final, Literal

import anyio
import orjson

from ..endpoints.signatures import json_response_format
from ..errors import EndpointError, OutputParseError, RequestRejected, RewardError
from ..types import Example
from .judge_cache import JudgeCache, SingleFlight, content_key
from .judge_prompts import HARDENED, PROMPT_VERSION, PromptParts, PromptRenderer, new_nonce
from .verdicts import (
    VERDICT_SCHEMA,
    Verdict,
    group_verdict_schema,
    parse_group_verdict,
    parse_verdict,
)

if TYPE_CHECKING:
    from ..endpoints.client import Client
    from ..endpoints.parsing import Completion

__all__ = ("GroupJudge", "JudgeStatistics", "LLMJudge")

Mode = Literal["chat", "completions"]
Prompt = str | list[dict[str, str]]
_INLINE_CHARS: Final = 4096
"""Prompts showing more text than this are rendered in a worker thread: escaping is linear
but not free (tens of ms per 100 kB on a loaded machine), and the loop must not wait on it."""
_ONE_PREFILL: Final = '{"score": '
_GROUP_PREFILL: Final = '{"scores": ['


@dataclass(frozen=True, slots=True)
class JudgeStatistics:
    """A snapshot of one judge's counters (see :meth:`LLMJudge.statistics`).

    Attributes:
        name: the judge's name.
        verdicts: verdicts asked for (one per candidate; a group call asks for G).
        requests: endpoint calls made.
        cache_hits: verdicts (per-rollout) or groups (group judge) served from the cache.
        deduped: verdicts served by another identical candidate of the same call or by a
            concurrent identical call.
        calls_saved: ``cache_hits + deduped``: endpoint calls not made.
        parse_failures: replies that were not a valid verdict.
        endpoint_errors: calls that raised an endpoint error.
        prompt_tokens, completion_tokens: usage of the requests made.
        latency_mean: seconds per request made.
    """

    name: str
    verdicts: int
    requests: int
    cache_hits: int
    deduped: int
    calls_saved: int
    parse_failures: int
    endpoint_errors: int
    prompt_tokens: int
    completion_tokens: int
    latency_mean: float


def _task_of(example: Example | str) -> tuple[str, str | None]:
    """(task text, reference answer) of an example or a bare prompt string."""
    if isinstance(example, Example):
        return example.text, example.target
    return str(example), None


class _JudgeBase:
    """Client, prompt settings, cache, single flight and counters shared by both judges.

    Attributes:
        client: the endpoint client (shared with generation).
        rubric: what the judge grades by.
        name: metric name: ``reward/<name>``.
        mode: the request shape.
        max_tokens: reply cap; None: a default by judge kind.
        temperature: 0 gives the same verdict for the same candidate.
        renderer: renders the prompt (hardened unless measuring injections).
        include_reference: show ``example.target`` when given.
        json_mode: send a ``json_schema`` response format.
        cache: the verdict cache, or None.
    """

    def __init__(
        self,
        client: Client,
        rubric: str,
        *,
        name: str = "judge",
        mode: Mode = "chat",
        max_tokens: int | None = None,
        temperature: float = 0.0,
        cache: JudgeCache | Literal[False] | None = None,
        json_mode: bool | None = None,
        renderer: PromptRenderer = HARDENED,
        include_reference: bool = True,
    ) -> None:
        if not rubric.strip():
            raise ValueError("a judge needs a non-empty rubric")
        if mode not in ("chat", "completions"):
            raise ValueError(f"mode must be 'chat' or 'completions', got {mode!r}")
        self.client = client
        self.rubric = rubric
        self.name = name
        self.mode: Mode = mode
        self.max_tokens = max_tokens
        self.temperature = temperature
        self.renderer = renderer
        self.include_reference = include_reference
        if json_mode is None:
            json_mode = mode == "chat" and client.endpoint.provider != "local"
        self.json_mode = bool(json_mode) and mode == "chat"
        self.cache: JudgeCache | None = (
            None if cache is False else (cache if cache is not None else JudgeCache())
        )
        self._flights: SingleFlight[Any] = SingleFlight(
            lambda: RewardError(f"judge {self.name!r}: the shared call was cancelled")
        )
        self._verdicts = 0
        self._requests = 0
        self._cache_hits = 0
        self._deduped = 0
        self._parse_failures = 0
        self._endpoint_errors = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._latency = 0.0

    def statistics(self) -> JudgeStatistics:
        """A frozen snapshot of this judge's counters."""
        return JudgeStatistics(
            name=self.name,
            verdicts=self._verdicts,
            requests=self._requests,
            cache_hits=self._cache_hits,
            deduped=self._deduped,
            calls_saved=self._cache_hits + self._deduped,
            parse_failures=self._parse_failures,
            endpoint_errors=self._endpoint_errors,
            prompt_tokens=self._prompt_tokens,
            completion_tokens=self._completion_tokens,
            latency_mean=self._latency / self._requests if self._requests else 0.0,
        )

    def _model(self) -> str:
        return self.client.endpoint.model

    def _reference(self, example: Example | str) -> str | None:
        return _task_of(example)[1] if self.include_reference else None

    def _key(self, kind: str, example: Example | str, candidates: str | list[str]) -> str:
        task = _task_of(example)[0]
        return content_key(
            kind,
            PROMPT_VERSION,
            self.renderer.name,
            self._model(),
            self.rubric,
            task,
            self._reference(example),
            candidates,
        )

    def _prompt(
        self, example: Example | str, shown: Sequence[str], nonce: str | None, *, group: bool
    ) -> Prompt:
        """The request for ``shown`` candidates: chat messages or a completions string."""
        parts = PromptParts(
            rubric=self.rubric,
            task=_task_of(example)[0],
            candidates=tuple(shown),
            reference=self._reference(example),
            group=group,
            nonce=nonce or new_nonce(),
        )
        system, user = self.renderer.render(parts)
        if self.mode == "chat":
            return [{"role": "system", "content": system}, {"role": "user", "content": user}]
        prefill = _GROUP_PREFILL if group else _ONE_PREFILL
        return f"{system}\n\n{user}\n\nVerdict: {prefill}"

    async def _render(self, example: Example | str, shown: Sequence[str], *, group: bool) -> Prompt:
        """:meth:`_prompt` with a fresh nonce, off the event loop when the texts are long."""
        if sum(map(len, shown)) + len(_task_of(example)[0]) <= _INLINE_CHARS:
            return self._prompt(example, shown, None, group=group)
        return await anyio.to_thread.run_sync(
            lambda: self._prompt(example, shown, None, group=group)
        )

    async def _request(
        self,
        prompt: Prompt,
        *,
        prefill: str,
        schema: Mapping[str, Any],
        max_tokens: int,
        group_id: str | None,
        sample_index: int | None,
    ) -> str:
        """One judge call; returns the reply text (the completions prefill put back)."""
        kwargs: dict[str, Any] = {
            "n": 1,
            "kind": "judge",
            "group_id": group_id,
            "sample_index": sample_index,
            "mode": self.mode,
            "max_tokens": max_tokens,
            "temperature": self.temperature,
        }
        if self.mode == "completions":
            kwargs["stop"] = ["}"]  # a verdict is one flat object; a base model rambles on
        if self.json_mode:
            kwargs["response_format"] = json_response_format(f"{self.name}_verdict", schema)
        try:
            completion = await self._complete(prompt, kwargs)
        except EndpointError:
            self._endpoint_errors += 1
            raise
        self._account(completion)
        return self._reply_text(completion, prefill)

    async def _complete(self, prompt: Prompt, kwargs: dict[str, Any]) -> Completion:
        """The client call; without the response format, for good, if the endpoint rejects it."""
        self._requests += 1
        try:
            return await self.client.complete(prompt, **kwargs)
        except RequestRejected as exc:
            if not self.json_mode or exc.status not in (400, 404, 422):
                raise
        self.json_mode = False
        del kwargs["response_format"]
        self._requests += 1
        return await self.client.complete(prompt, **kwargs)

    def _reply_text(self, completion: Completion, prefill: str) -> str:
        text = completion.choices[0].text
        if self.mode == "completions":
            body = text.lstrip()
            if not body.startswith("{"):  # the model continued our prefill
                text = prefill + text
            if completion.choices[0].finish_reason == "stop" and "}" not in text[-2:]:
                text += "}"  # the stop sequence ate the closing brace
        return text

    def _account(self, completion: Completion) -> None:
        self._prompt_tokens += completion.usage.prompt_tokens
        self._completion_tokens += completion.usage.completion_tokens
        self._latency += completion.latency

    async def _once(self, key: str, compute: Callable[[], Awaitable[Any]]) -> tuple[Any, bool]:
        """``(value, shared)``: from the cache, a concurrent identical call, or ``compute``."""
        if self.cache is not None:
            hit = self.cache.get(key)
            if hit is not None:
                self._cache_hits += 1
                return hit, True
        if key in self._flights:
            self._deduped += 1
            return await self._flights.wait(key), True
        value = await self._flights.run(key, compute)
        if self.cache is not None:
            self.cache.put(key, value)
        return value, False

    def _parse_failed(self) -> None:
        self._parse_failures += 1


class LLMJudge(_JudgeBase):
    """Grades one completion per call against a rubric.

    Example::

        judge = LLMJudge(client, "Is the answer factually right and on topic?",
                         name="quality", cache=JudgeCache())
        reward = await judge(example, "Canberra is the capital of Australia.")  # float
        v = await judge.verdict(example, text)         # Verdict(score, feedback, raw)
        judge.statistics().calls_saved

    Args:
        client: the endpoint client (its limits and event log apply; events say ``judge``).
        rubric: what to grade by; the judge is told to reply ``{"score", "feedback"}``.
        name: metric name (``reward/<name>``).
        mode: ``chat`` (default) or ``completions`` (base models; the reply is prefilled with
            ``{"score": ``).
        max_tokens: reply cap (default 256).
        temperature: 0 by default, so one candidate always gets one verdict (and caching is
            exact).
        cache: a :class:`JudgeCache` to use (share one between judges); None makes a private
            one; False disables caching (in-call and in-flight dedupe stay on).
        json_mode: send a ``json_schema`` response format; None: on in chat mode for hosted
            providers, off for ``local``. Turned off for good if the endpoint rejects it.
        renderer: renders the prompt; the hardened prompt by default (another renderer, such
            as a deliberately weak one to measure injections against, gets its own cache keys).
        include_reference: show ``example.target`` to the judge as a reference answer.
    """

    per_group: Final = False
    """Grades one completion per call (the Rewarder reads this; no argument sniffing)."""

    def __repr__(self) -> str:
        return f"LLMJudge({self.name!r}, mode={self.mode!r}, renderer={self.renderer.name!r})"

    async def __call__(self, example: Example | str, text: str) -> float:
        """The score in [0, 1]: usable wherever an async reward function is."""
        return (await self.verdict(example, text)).score

    def prompt(self, example: Example | str, text: str, nonce: str | None = None) -> Prompt:
        """The request this judge sends for ``text`` (chat messages or a completions string)."""
        return self._prompt(example, [text], nonce, group=False)

    def key(self, example: Example | str, text: str) -> str:
        """The cache key of a verdict on ``text``."""
        return self._key("verdict", example, text)

    async def verdict(
        self,
        example: Example | str,
        text: str,
        *,
        group_id: str | None = None,
        sample_index: int | None = None,
    ) -> Verdict:
        """Grade ``text`` as an answer to ``example``.

        Raises:
            OutputParseError: the reply is not a valid verdict (``raw`` holds it).
            EndpointError: the call failed after the client's retries.
        """
        self._verdicts += 1

        async def compute() -> Verdict:
            raw = await self._request(
                await self._render(example, [text], group=False),
                prefill=_ONE_PREFILL,
                schema=VERDICT_SCHEMA,
                max_tokens=self.max_tokens or 256,
                group_id=group_id,
                sample_index=sample_index,
            )
            try:
                score, feedback = parse_verdict(raw)
            except OutputParseError:
                self._parse_failed()
                raise
            return Verdict(score, feedback, raw)

        value, shared = await self._once(self.key(example, text), compute)
        return replace(value, cached=True) if shared else value

    async def verdicts(
        self,
        example: Example | str,
        texts: Sequence[str],
        *,
        group_id: str | None = None,
        sample_indices: Sequence[int] | None = None,
    ) -> list[Verdict | Exception]:
        """Grade several completions of one prompt concurrently, identical ones once.

        Returns one entry per text: a :class:`Verdict`, or the exception its call raised
        (like ``asyncio.gather(..., return_exceptions=True)``), so one failure does not hide
        the other verdicts.
        """
        first: dict[str, int] = {}
        for i, t in enumerate(texts):
            first.setdefault(t, i)
        dupes = len(texts) - len(first)
        self._deduped += dupes
        self._verdicts += dupes
        results: dict[str, Verdict | Exception] = {}

        async def one(text: str, i: int) -> None:
            try:
                results[text] = await self.verdict(
                    example,
                    text,
                    group_id=group_id,
                    sample_index=None if sample_indices is None else sample_indices[i],
                )
            except Exception as exc:
                results[text] = exc

        async with anyio.create_task_group() as tg:
            for text, i in first.items():
                tg.start_soon(one, text, i)
        out: list[Verdict | Exception] = []
        for i, t in enumerate(texts):
            r = results[t]
            out.append(replace(r, cached=True) if isinstance(r, Verdict) and first[t] != i else r)
        return out


class GroupJudge(_JudgeBase):
    """Grades all completions of a group in one call, relative to each other.

    Example::

        gj = GroupJudge(client, "Which answers are right and best explained?", seed=0)
        verdicts = await gj.verdicts(example, [c1, c2, c3, c4])   # one call, 4 verdicts
        scores = await gj(example, [c1, c2, c3, c4])              # just the floats

    Identical candidates are shown once. The order they are shown in is a permutation drawn
    from a RNG seeded by ``seed`` and the group's content (so it is reproducible, independent
    of scheduling, and differs between groups and seeds), against position bias; the scores
    are mapped back to the caller's order. The reply must hold exactly one score per candidate
    shown, else the whole group's verdict fails with :class:`~engine.errors.OutputParseError`.

    Args are those of :class:`LLMJudge`, plus ``seed`` (of the presentation order);
    ``max_tokens`` defaults to ``64 + 64 * k`` for ``k`` candidates shown. The cache key is the
    *set* of candidates: the same group in another order is a cache hit.
    """

    per_group: Final = True
    """Grades a whole group per call (the Rewarder reads this; no argument sniffing)."""

    def __init__(
        self,
        client: Client,
        rubric: str,
        *,
        name: str = "group_judge",
        seed: int = 0,
        mode: Mode = "chat",
        max_tokens: int | None = None,
        temperature: float = 0.0,
        cache: JudgeCache | Literal[False] | None = None,
        json_mode: bool | None = None,
        renderer: PromptRenderer = HARDENED,
        include_reference: bool = True,
    ) -> None:
        super().__init__(
            client,
            rubric,
            name=name,
            mode=mode,
            max_tokens=max_tokens,
            temperature=temperature,
            cache=cache,
            json_mode=json_mode,
            renderer=renderer,
            include_reference=include_reference,
        )
        self.seed = seed

    def __repr__(self) -> str:
        return f"GroupJudge({self.name!r}, mode={self.mode!r}, seed={self.seed})"

    async def __call__(self, example: Example | str, texts: Sequence[str]) -> list[float]:
        """The scores in [0, 1], in the order of ``texts``."""
        return [v.score for v in await self.verdicts(example, texts)]

    def permutation(self, example: Example | str, unique: Sequence[str]) -> list[int]:
        """The order ``unique`` candidates are shown in: ``shown[j] = unique[perm[j]]``."""
        task = _task_of(example)[0]
        digest = hashlib.sha256(orjson.dumps([self.seed, task, list(unique)])).digest()
        perm = list(range(len(unique)))
        random.Random(int.from_bytes(digest[:8], "big")).shuffle(perm)
        return perm

    def prompt(
        self, example: Example | str, shown: Sequence[str], nonce: str | None = None
    ) -> Prompt:
        """The request for candidates shown in this order."""
        return self._prompt(example, shown, nonce, group=True)

    async def verdicts(
        self, example: Example | str, texts: Sequence[str], *, group_id: str | None = None
    ) -> list[Verdict]:
        """One verdict per text, in the order of ``texts``, from one judge call.

        Raises:
            OutputParseError: the reply is not exactly one valid score per candidate shown.
            EndpointError: the call failed after the client's retries.
            ValueError: ``texts`` is empty.
        """
        if not texts:
            raise ValueError("a group judge needs at least one candidate")
        unique = list(dict.fromkeys(texts))
        self._verdicts += len(texts)
        self._deduped += len(texts) - len(unique)
        key = self._key("group", example, sorted(unique))

        async def compute() -> dict[str, Verdict]:
            return await self._grade(example, unique, group_id)

        by_text, shared = await self._once(key, compute)
        seen: set[str] = set()
        out: list[Verdict] = []
        for t in texts:
            v = by_text[t]
            out.append(replace(v, cached=True) if shared or t in seen else v)
            seen.add(t)
        return out

    async def _grade(
        self, example: Example | str, unique: list[str], group_id: str | None
    ) -> dict[str, Verdict]:
        """One call grading ``unique`` candidates in their presentation order."""
        shown = [unique[p] for p in self.permutation(example, unique)]
        raw = await self._request(
            await self._render(example, shown, group=True),
            prefill=_GROUP_PREFILL,
            schema=group_verdict_schema(len(shown)),
            max_tokens=self.max_tokens or 64 + 64 * len(shown),
            group_id=group_id,
            sample_index=None,
        )
        try:
            pairs = parse_group_verdict(raw, len(shown))
        except OutputParseError:
            self._parse_failed()
            raise
        return {t: Verdict(s, f, raw) for t, (s, f) in zip(shown, pairs, strict=True)}
