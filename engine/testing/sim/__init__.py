"""Simulated OpenAI-compatible server: a deterministic fake model behind real HTTP on loopback.

Used by the engine's unit tests, by the benchmarks, and by users' own tests::

    async with SimServer(SimConfig(latency=0.01, faults=Faults(rate_limit=0.1))) as sim:
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"{sim.base_url}/chat/completions",
                json={"model": "sim", "messages": [{"role": "user", "content": "hi"}], "n": 4},
            ) as resp:
                body = await resp.json()
        print(sim.counters.by_status, sim.counters.faults)

Or in its own process (for benchmarks): ``python -m engine serve-sim --port 0 --rpm 600``
prints the base URL on its first stdout line and serves until SIGINT/SIGTERM
(:func:`sim_subprocess` runs it as a context manager).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health``, ``GET /sim/stats`` (the :class:`SimStatistics` as JSON, not counted itself),
and vLLM's runtime LoRA routes ``POST /v1/load_lora_adapter`` and
``POST /v1/unload_lora_adapter`` (:mod:`~engine.testing.sim.adapters`): a request that names a
loaded adapter as its ``model`` is answered by it (its own words and log-probabilities).

Order of events for one generation request, each step able to end it:

1. ``401`` if the server has an ``api_key`` and ``Authorization: Bearer <key>`` differs.
2. ``400`` with an OpenAI-style error body for bad JSON or bad parameters.
   Then, with ``SimConfig.strict_models``, vLLM's ``404`` for a ``model`` that is neither
   served nor a loaded adapter.
3. ``429`` from the RPM/TPM token buckets (:class:`SimConfig.rpm`, :class:`SimConfig.tpm`).
4. One fault draw from the seeded RNG (:class:`Faults`); 429/529 faults answer at once.
5. Server-side latency (log-normal, plus per completion token), inside the optional
   served-concurrency cap; ``timeout`` hangs instead; the remaining faults act here,
   the hostile ones (:data:`HOSTILE_KINDS`: unsound usage, oversized or deeply nested
   bodies, the caller's key echoed, a redirect) among them.
6. ``200`` with the real OpenAI response shape and ``usage``.

The fake model (:func:`default_model`): a "token" is a whitespace-separated word. Each choice is
1-32 words from a fixed 48-word vocabulary (:data:`VOCAB`); vocabulary words that the prompt
mentions are four times likelier, so prompt optimisation has a signal to find. The text is a
pure function of the prompt and

- ``temperature == 0``: nothing else (greedy: every choice and every call identical);
- a request ``seed``: the seed and the choice index;
- otherwise: the server seed, the request number (counted from 1 per server) and the index.

Tool calls: a fake model may return a :class:`SimReply` (text and tool calls: chat
``message.tool_calls`` with ``finish_reason: "tool_calls"``, or the text protocol's tags in
completions mode); :class:`ToolScript` scripts each turn of an episode (parallel calls, a
malformed call, then an answer...), see :mod:`~engine.testing.sim.script`.

Judge calls are recognised from the request itself (:func:`~.model.is_judge_call`): a prompt
that asks for a reply opening with ``{"score":`` or ``{"scores":`` (as every judge prompt
does), a ``response_format`` JSON schema with a ``score`` or ``scores`` property, a prompt
containing :data:`JUDGE_MARKER`, or the header ``x-sim-role: judge``. They are answered by
``SimConfig.judge`` or :func:`default_judge`, which scores each candidate the prompt shows (the
text of each ``<candidate...>`` block, or between ``<<CANDIDATE>>`` and ``<</CANDIDATE>>`` in
hand-written prompts, else the whole prompt) as the fraction of its words in
:data:`GOOD_WORDS`, rounded to 2 places: ``{"score": 0.25, "feedback": "2/8 on-topic words"}``;
with several candidates it answers ``{"scores": [...], "feedback": [...]}`` in their order.

Tokens are charged to TPM at admission as an estimate that is never refunded, like OpenAI:
``sum(len(prompt) // 4 + 1) + n * max_tokens`` (``max_tokens`` defaulting to 16 for
completions and 256 for chat; ``n`` is 1 when ``honor_n=False``). ``usage.prompt_tokens`` uses
the same ``len(prompt) // 4 + 1`` per prompt; ``usage.completion_tokens`` counts words.
With ``SimConfig.usage_cost`` (``--usage-cost``) it also reports ``usage.cost`` in USD, as
OpenRouter does: that many USD per prompt + completion token.
"""

from __future__ import annotations

from .adapters import (
    MAX_CONFIG_BYTES,
    MAX_WEIGHTS_BYTES,
    SimAdapter,
    read_adapter,
    write_fake_adapter,
)
from .config import (
    ALL_FAULT_KINDS,
    BAD_USAGES,
    FAULT_KINDS,
    HOSTILE_KINDS,
    Faults,
    ModelFn,
    SimConfig,
    SimRequest,
    SimStatistics,
)
from .model import (
    CANDIDATE_CLOSE,
    CANDIDATE_OPEN,
    GOOD_WORDS,
    JUDGE_MARKER,
    VOCAB,
    default_judge,
    default_model,
    is_judge_call,
    judge_candidates,
)
from .process import sim_subprocess
from .responses import format_duration
from .script import SimReply, SimToolCall, ToolScript
from .server import SimServer

__all__ = (
    "ALL_FAULT_KINDS",
    "BAD_USAGES",
    "CANDIDATE_CLOSE",
    "CANDIDATE_OPEN",
    "FAULT_KINDS",
    "GOOD_WORDS",
    "HOSTILE_KINDS",
    "JUDGE_MARKER",
    "MAX_CONFIG_BYTES",
    "MAX_WEIGHTS_BYTES",
    "VOCAB",
    "Faults",
    "ModelFn",
    "SimAdapter",
    "SimConfig",
    "SimReply",
    "SimRequest",
    "SimServer",
    "SimStatistics",
    "SimToolCall",
    "ToolScript",
    "default_judge",
    "default_model",
    "format_duration",
    "is_judge_call",
    "judge_candidates",
    "read_adapter",
    "sim_subprocess",
    "write_fake_adapter",
)
