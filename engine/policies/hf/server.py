"""Generation of the ``hf`` policy by a server that hot-loads its adapters (``hf.generation =
"server"``).

The server (vLLM serving the base model with ``--enable-lora`` and runtime adapter loading; the
simulated server in tests) generates; the trainer trains. :class:`ServerGeneration` is the
policy's side of it:

- requests: the completions route, the prompt rendered by the policy, ``n`` choices,
  ``hf.temperature`` (0 when greedy), ``hf.max_new_tokens``, ``hf.stop``, ``logprobs``
  asked (one per sampled token) and vLLM's ``return_token_ids``; the request's ``model`` is
  :meth:`~engine.policies.served.ServedAdapters.model_for` the snapshot's version (the base
  model's name for version 0, else that version's adapter), its seed drawn from the group's rng;
- tokens: with ``hf.server_token_ids`` (the default) the server's returned ids are the
  trainer's (the same base model, the same tokenizer), checked against the trainer's vocabulary
  and against the log-probabilities' count. Without returned ids, or with
  ``server_token_ids = false``, the returned text is re-tokenized by the trainer's tokenizer (no
  special tokens); when that gives as many tokens as the server reported log-probabilities,
  they are paired one to one, else the sample's behaviour log-probabilities are unknown (NaN)
  and the trainer uses its own for them (importance weight 1; ``mismatch/unknown`` counts
  them). An end-of-sequence token the server does not return in its text is not trained;
- a failed request, or an empty completion, gives samples carrying ``error`` (masked from
  advantages, as for any endpoint policy);
- versions: :meth:`start` (before the first step; once) checks the server; :meth:`publish`
  after each update serves the new
  version and unloads what no snapshot can use any more (:class:`ServedAdapters`). The learner
  hands generation a new snapshot before the update's :meth:`publish`: the first generation
  of a version not served yet publishes it (idempotent; whichever comes first loads). A resumed
  run's window is loaded the same way, from the snapshots generation is handed.

``Sample.logprobs`` are the server's (the behaviour policy's); the policy's update recomputes the
old log-probabilities with its own model for the version that generated each rollout and
weights each token's loss by the truncated importance weight
(:mod:`engine.policies.objective`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import anyio
import numpy as np

from ...config.sections import HFConfig
from ...endpoints.parsing import Choice
from ...errors import EngineError
from ...types import Sample, Usage
from ..base import CompletionClient, PolicySnapshot
from ..served import ServedAdapters

__all__ = ("ServerGeneration", "align_choice")


def align_choice(
    choice: Choice, tokenizer: Any, *, use_ids: bool, vocab_size: int
) -> tuple[np.ndarray, np.ndarray, bool]:
    """The trainer's token ids of one server choice and the behaviour log-probability of each
    (NaN where unknown), and whether the server's ids were used (module docstring).

    Raises:
        ValueError: returned ids outside the trainer's vocabulary, or ids and log-probabilities
            of different lengths (the server is not serving the trainer's tokenizer).
    """
    lps = choice.logprobs
    if use_ids and choice.token_ids is not None:
        ids = [int(t) for t in choice.token_ids]
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise ValueError(
                f"the server returned token ids {bad[:5]} outside the trainer's vocabulary of "
                f"{vocab_size}: it serves another tokenizer (set hf.server_token_ids = false)"
            )
        if lps is None or len(lps) != len(ids):
            raise ValueError(
                f"the server returned {len(ids)} token ids and "
                f"{'no' if lps is None else len(lps)} log-probabilities"
            )
        return np.asarray(ids, dtype=np.int64), np.asarray(lps, dtype=np.float64), True
    ids = [int(t) for t in tokenizer(choice.text, add_special_tokens=False)["input_ids"]]
    if lps is not None and len(lps) == len(ids):
        behaviour = np.asarray(lps, dtype=np.float64)
    else:
        behaviour = np.full(len(ids), math.nan)
    return np.asarray(ids, dtype=np.int64), behaviour, False


class ServerGeneration:
    """Samples of the ``hf`` policy from a server that hot-loads its adapters.

    Args:
        client: the endpoint client (``[endpoint]``, completions mode).
        served: the run's adapters on that server (its ``write`` is the policy's
            :meth:`~engine.policies.hf.policy.HFPolicy.write_adapter`).
        tokenizer: the trainer's tokenizer.
        hf: the ``[hf]`` section (sampling settings, ``server_token_ids``).
        vocab_size: the trainer's vocabulary size, which returned ids must fall in.

    Attributes:
        retokenized: choices whose text was re-tokenized (the server returned no ids, or
            ``server_token_ids`` is false).
    """

    def __init__(
        self,
        client: CompletionClient,
        served: ServedAdapters,
        tokenizer: Any,
        hf: HFConfig,
        *,
        vocab_size: int,
    ) -> None:
        self.client, self.served, self.tokenizer, self.hf = client, served, tokenizer, hf
        self.vocab_size = vocab_size
        self.retokenized = 0
        self._started = False
        self._start_lock = anyio.Lock()
        self._publish_lock = anyio.Lock()
        self._newest = 0  # the newest version served
        self.known: Callable[[], Iterable[int]] = lambda: ()
        """The versions whose adapter the policy can write (it holds their snapshots)."""

    async def start(self) -> None:
        """Check the server (it serves the base model and has the runtime adapter API); once
        (later calls return at once). Raises what :meth:`ServedAdapters.start` raises."""
        async with self._start_lock:
            if not self._started:
                await self.served.start(0)
                self._started = True

    async def publish(self, version: int, *, step: int | None = None) -> dict[str, float]:
        """Serve ``version`` and the versions of its window the policy holds; unload the rest
        (what no snapshot can use any more). Idempotent: the update that made ``version`` and
        the first generation asking for it may both call it, whichever comes first loads."""
        await self.start()
        t0 = time.monotonic()
        async with self._publish_lock:  # a generation waits for a load in flight
            before = self.served.statistics().loads
            if version >= self._newest:
                known = set(self.known()) | {version}
                window = range(self.served.oldest_wanted(version), version + 1)
                await self.served.sync([v for v in window if v in known], step=step)
                self._newest = version
            st = self.served.statistics()
        return {
            "adapters/served": float(sum(v > 0 for v in st.served)),
            "adapters/loaded": float(st.loads - before),
            "adapters/publish_seconds": time.monotonic() - t0,
        }

    async def _served(self, version: int) -> str:
        """The model name of ``version``; a version newer than any served is published first
        (the learner hands generation a new snapshot before the update's :meth:`publish`, and
        a resumed run's first snapshots were never published here)."""
        if version > self._newest:
            await self.publish(version)
        elif version > 0 and version not in self.served.served():
            await self._load_into_window(version)
        return self.served.model_for(version)

    async def _load_into_window(self, version: int) -> None:
        """Load ``version`` beside the served versions when it is still inside the newest
        one's window: a resumed run's snapshots come back from its checkpoint, so a publish
        may have skipped a version the policy did not hold yet."""
        async with self._publish_lock:
            served = self.served.served()
            if version not in served and version >= self.served.oldest_wanted(self._newest):
                await self.served.sync([*served, version])

    async def close(self) -> None:
        """Unload this run's adapters from the server."""
        if self._started:
            await self.served.close()

    async def generate(
        self,
        snapshot: PolicySnapshot,
        prompt: str,
        prompt_ids: Sequence[int],
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """``n`` samples of ``prompt`` from the server's model of ``snapshot.version``."""
        seed = int(rng.integers(0, 2**31 - 1))
        model = await self._served(snapshot.version)
        extra: dict[str, Any] = {"return_token_ids": True}
        if not greedy and self.hf.top_p != 1.0:
            extra["top_p"] = self.hf.top_p
        p_ids = np.asarray(prompt_ids, dtype=np.int64)
        try:
            comp = await self.client.complete(
                prompt,
                n=n,
                kind="generation",
                policy_version=snapshot.version,
                mode="completions",
                max_tokens=self.hf.max_new_tokens,
                temperature=0.0 if greedy else self.hf.temperature,
                logprobs=True,
                stop=list(self.hf.stop) or None,
                seed=seed,
                extra_body=extra,
                model=model,
            )
        except EngineError as exc:  # endpoint failures: recorded per sample, never raised
            err = f"{type(exc).__name__}: {exc}"
            return [Sample(text="", prompt=prompt, error=err) for _ in range(n)]
        latency = comp.latency
        return [self._sample(c, prompt, p_ids, latency) for c in comp.choices[:n]]

    def _sample(self, c: Choice, prompt: str, p_ids: np.ndarray, latency: float) -> Sample:
        try:
            ids, behaviour, used_ids = align_choice(
                c, self.tokenizer, use_ids=self.hf.server_token_ids, vocab_size=self.vocab_size
            )
        except ValueError as exc:
            return Sample(text=c.text, prompt=prompt, error=str(exc), latency=latency)
        if not used_ids:
            self.retokenized += 1
        if ids.size == 0:
            return Sample(text=c.text, prompt=prompt, error="empty completion", latency=latency)
        return Sample(
            text=c.text,
            prompt=prompt,
            token_ids=ids,
            logprobs=behaviour,
            prompt_ids=p_ids,
            finish_reason=c.finish_reason or "stop",
            usage=Usage(prompt_tokens=int(p_ids.size), completion_tokens=int(ids.size)),
            latency=latency,
        )
