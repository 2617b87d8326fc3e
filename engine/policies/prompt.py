"""Stage: policy (prompt). GRPO over prompt candidates, for models whose weights we cannot touch.

A hosted model (OpenRouter, OpenAI) or a served one (llama.cpp, vLLM) is a fixed function
``prompt -> completion distribution``. What we own, and train, is the choice of prompt.

**The policy.** A *candidate* is a prompt recipe: an instruction, a few-shot demo set and
optionally a sampling temperature. The parameters are one logit per candidate slot,
``theta`` of shape ``(K,)`` with ``K = max_candidates``, and the policy is::

    pi_theta(c)       = softmax(theta[live])[c]                 # over live candidates only
    pi_theta(y | x)   = sum_c pi_theta(c) * p_model(y | render(c, x))

A rollout samples ``c ~ pi_theta`` (with the generator the trainer passes, so runs are
reproducible), renders ``c`` with the example's input (completions mode: a plain-text few-shot
block ending where the answer begins; chat mode: system + demo turns + user), and asks the
endpoint for a completion. Rollouts of one group that drew the same candidate share one request
with ``n = k`` (the client fans out where the server ignores ``n``).

**"GRPO over prompt candidates".** The candidate choice is the only action whose probability
we control and can differentiate, so it is this policy's single "token": ``Sample.logprobs`` is
``[log pi_old(c)]`` (the behaviour probability under the snapshot that generated it) and
``Sample.choice`` is the candidate's id. For rollout ``i`` with group-relative advantage
``A_i``::

    logratio  = log pi_theta(c_i) - log pi_old(c_i)
    ratio     = exp(logratio)
    pg_loss1  = -A_i * ratio
    pg_loss2  = -A_i * clip(ratio, 1 - epsilon, 1 + (epsilon_high or epsilon))
    pg_loss   = max(pg_loss1, pg_loss2)                          # clipped surrogate
    kl        = exp(log ref(c_i) - log pi_theta(c_i)) - (log ref(c_i) - log pi_theta(c_i)) - 1
    loss      = mean_i(pg_loss + beta * kl)  -  entropy_coef * H(pi_theta)

where ``ref`` is the initial candidate distribution (k3 estimator, DeepSeekMath) and ``H`` the
exact entropy of the candidate distribution. The gradient with respect to the logits is exact
and analytic (``d log pi(c) / d theta_k = 1[k = c] - pi_k`` on live slots, 0 elsewhere) and is
checked against finite differences in ``tests/test_prompt_policy.py``.

How this departs from token-level GRPO (:mod:`engine.policies.tinylm`):

* one action per rollout, not one per completion token: the completion's own tokens are
  sampled by a model we do not train, so their log-probabilities are constants of the
  objective (kept for export only, see :class:`PromptSample`); ``loss_type`` aggregations
  (grpo / dapo / dr_grpo) coincide, since every "sequence" has length 1;
* the entropy is that of the candidate distribution, exact, once per mini-batch;
* the action space grows: new candidates appear (below), so ``pi_theta`` at update time may
  have more or fewer actions than the snapshot that generated a rollout. A rollout whose
  candidate was pruned since is excluded from the loss (counted as
  ``prompt/excluded_rollouts``); newly added candidates take their share of probability
  mass, which the ratio sees as a policy change like any other;
* this is a policy over a finite set of prompts, so what it can learn is bounded by the
  candidates it has: GRPO here is a bandit learner with group-relative baselines, and the
  candidate growth below is what lets it find prompts it was not given.

**Candidate growth** (``PromptPolicyConfig.propose_every`` > 0), in :meth:`after_update`, which
the trainer awaits after each learner update (in the learner's task: never concurrently with
``loss_and_grad``). Every ``propose_every`` steps:

1. *reflection*: the most probable candidate's instruction, the best and the worst recent
   rollouts (input, output, expected answer, reward, judge feedback) go into a reflection
   prompt; the model (or a separate ``proposer`` client) answers with an improved
   instruction, which becomes a candidate with the parent's demos;
2. *demos*: the top-scoring recent rollouts (input, output) become a new demo set, a
   candidate with the parent's instruction;
3. *pruning*: the least probable candidates beyond ``max_candidates - headroom`` are retired
   (never the base prompt, never one added in this round).

Shapes never change: ``parameters()`` is always ``{"logits": (K,)}``; which slots are live is
data beside it. A new candidate starts with the probability an average candidate has
(``logit = log mean exp(theta[live])``, so it gets ``1 / (n + 1)`` of the mass), and so does
its reference logit. When a slot is reused, the optimizer's first moment for it is zeroed
(the new candidate inherits no momentum) and its second moment set to the live slots' mean.

Versioning keeps runs reproducible and resumable bit for bit: the learner publishes
snapshot ``V`` *before* the hook runs, so changes made after update ``V`` take effect from
version ``V + 1``: every slot carries ``born`` and ``died`` versions and ``snapshot(v)`` shows
the slots with ``born <= v < died``. A retired slot is reused only once no snapshot that could
be re-created (the current version's, on resume) still shows it. Candidate texts live in an
append-only registry keyed by id, so a stale snapshot still renders the prompts it drew.

State (:meth:`state`) is data: the logits, slot ids/born/died and reference logits as arrays;
candidate texts, per-candidate statistics and the recent-rollout buffer as JSON.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Literal, Protocol

import anyio
import numpy as np

from ..config.schema import EndpointConfig, GRPOConfig, PromptPolicyConfig, RunConfig
from ..errors import CheckpointError, EngineError
from ..telemetry.events import get_logger
from ..types import Example, Group, Rollout, Sample, Usage
from .arrays import ArrayPolicy
from .base import PolicySnapshot

__all__ = (
    "Candidate",
    "CompletionClient",
    "Demo",
    "PromptFormat",
    "PromptPolicy",
    "PromptSample",
    "make_demo_sets",
    "reflection_prompt",
    "render_completion",
    "render_messages",
)

_log = get_logger("engine.policies.prompt")

_STATE_FORMAT = 1
NEVER = np.iinfo(np.int64).max
"""``died`` of a slot that is alive (and ``born`` of an empty one)."""
_FIELD_RE = re.compile(r"\{(\w+)\}")
_TAG_RE = re.compile(r"<instruction>(.*?)(?:</instruction>|\Z)", re.DOTALL | re.IGNORECASE)
_MAX_INSTRUCTION_CHARS = 2000


# ----------------------------------------------------------------------------- data


@dataclass(frozen=True, slots=True)
class Demo:
    """One few-shot demonstration: an input text and the output to imitate."""

    input: str
    output: str


@dataclass(frozen=True, slots=True)
class Candidate:
    """One prompt recipe: instruction x demo set (x temperature).

    Attributes:
        id: unique and never reused; ``Sample.choice`` holds it.
        instruction: the instruction text; if it contains ``{text}`` (or another input
            field in braces) it is a template rendered per example instead.
        demos: the few-shot demonstrations, in order.
        temperature: sampling temperature for this candidate; None uses the endpoint's.
        origin: ``seed``, ``reflection`` or ``demos``.
        parent: the id of the candidate it was derived from, if any.
    """

    id: int
    instruction: str
    demos: tuple[Demo, ...] = ()
    temperature: float | None = None
    origin: str = "seed"
    parent: int | None = None

    @property
    def recipe(self) -> tuple[str, tuple[Demo, ...], float | None]:
        """What makes two candidates the same prompt."""
        return (self.instruction, self.demos, self.temperature)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data."""
        return {
            "id": self.id,
            "instruction": self.instruction,
            "demos": [[d.input, d.output] for d in self.demos],
            "temperature": self.temperature,
            "origin": self.origin,
            "parent": self.parent,
        }

    @classmethod
    def from_json(cls, obj: Mapping[str, Any]) -> Candidate:
        """Inverse of :meth:`to_json`; raises CheckpointError on malformed data."""
        try:
            demos = tuple(Demo(str(i), str(o)) for i, o in obj["demos"])
            temp = obj.get("temperature")
            parent = obj.get("parent")
            return cls(
                id=int(obj["id"]),
                instruction=str(obj["instruction"]),
                demos=demos,
                temperature=None if temp is None else float(temp),
                origin=str(obj.get("origin", "seed")),
                parent=None if parent is None else int(parent),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"malformed prompt candidate {obj!r}: {exc!r}") from None


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


class CompletionClient(Protocol):
    """What the policy needs of :class:`engine.endpoints.client.Client`."""

    async def complete(
        self, prompt: str | Sequence[Mapping[str, Any]], **kwargs: Any
    ) -> Any:  # engine.endpoints.client.Completion
        ...


# ----------------------------------------------------------------------------- rendering


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


def _messages_text(messages: Sequence[Mapping[str, str]]) -> str:
    return "\n\n".join(f"{m['role']}: {m['content']}" for m in messages)


def make_demo_sets(
    pool: Sequence[Example], n_sets: int, k: int, rng: np.random.Generator
) -> list[tuple[Demo, ...]]:
    """``n_sets`` demo sets of ``k`` demos from examples that have a target.

    Each set is drawn in a seeded random order, round-robin over the distinct targets, so a
    classification task gets label-balanced demos (a set of one label teaches that label).
    Duplicate sets are dropped.
    """
    usable = [ex for ex in pool if ex.target is not None and ex.target.strip()]
    if not usable or k <= 0 or n_sets <= 0:
        return []
    sets: list[tuple[Demo, ...]] = []
    for _ in range(n_sets):
        order = [usable[i] for i in rng.permutation(len(usable))]
        by_target: dict[str, list[Example]] = {}
        for ex in order:
            by_target.setdefault(str(ex.target).strip(), []).append(ex)
        queues = list(by_target.values())
        chosen: list[Example] = []
        while len(chosen) < min(k, len(usable)):
            for q in queues:
                if q and len(chosen) < k:
                    chosen.append(q.pop(0))
        rng.shuffle(chosen)  # type: ignore[arg-type]
        demos = tuple(Demo(ex.text, str(ex.target).strip()) for ex in chosen)
        if demos not in sets:
            sets.append(demos)
    return sets


def reflection_prompt(
    parent: Candidate,
    best: Sequence[Mapping[str, Any]],
    worst: Sequence[Mapping[str, Any]],
    *,
    mode: Literal["chat", "completions"] = "chat",
) -> str | list[dict[str, str]]:
    """The request that asks the model for an improved instruction.

    ``best`` and ``worst`` are recent-rollout records (``input``, ``output``, ``target``,
    ``reward``, ``feedback``). The answer is expected between ``<instruction>`` tags; in
    completions mode the prompt ends with the opening tag.
    """

    def block(r: Mapping[str, Any]) -> str:
        lines = [f"Input: {r['input']}", f"Output: {r['output']}"]
        if r.get("target") is not None:
            lines.append(f"Expected: {r['target']}")
        lines.append(f"Reward: {float(r['reward']):.2f}")
        if r.get("feedback"):
            lines.append(f"Feedback: {r['feedback']}")
        return "\n".join(lines)

    body = [
        "You are improving the instruction given to a language model for a task.",
        f'Current instruction:\n"""\n{parent.instruction.strip() or "(none)"}\n"""',
    ]
    if best:
        body.append("Examples where the model did well:\n\n" + "\n\n".join(map(block, best)))
    if worst:
        body.append("Examples where the model did poorly:\n\n" + "\n\n".join(map(block, worst)))
    body.append(
        "Write one improved instruction that keeps what works and fixes the failures. Keep it "
        "short and general (no examples). Reply with the instruction only, between "
        "<instruction> and </instruction>."
    )
    text = "\n\n".join(body)
    if mode == "chat":
        return [{"role": "user", "content": text}]
    return text + "\n\nImproved instruction: <instruction>"


def parse_instruction(text: str) -> str | None:
    """The instruction in a reflection answer (between tags, or the whole text), or None."""
    m = _TAG_RE.search(text)
    out = (m.group(1) if m else text.split("</instruction>")[0]).strip().strip('"').strip()
    if not out or len(out) > _MAX_INSTRUCTION_CHARS:
        return None
    return out


# ----------------------------------------------------------------------------- math


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - np.log(np.exp(z).sum())


def _logmeanexp(z: np.ndarray) -> float:
    m = float(z.max())
    return m + math.log(float(np.exp(z - m).mean()))


# ----------------------------------------------------------------------------- the policy


@dataclass(slots=True)
class _CandStats:
    """Running statistics of one candidate's scored rollouts."""

    n: int = 0
    reward_sum: float = 0.0

    @property
    def mean_reward(self) -> float:
        return self.reward_sum / self.n if self.n else math.nan


class PromptPolicy(ArrayPolicy):
    """GRPO over prompt candidates for any chat/completions endpoint; see the module docstring.

    Example::

        async with Client(endpoint, limits=limits) as client:
            policy = PromptPolicy(client, PromptPolicyConfig(max_candidates=8),
                                  endpoint=endpoint,
                                  instructions=["Classify the sentiment.",
                                                "Answer positive or negative."],
                                  demo_pool=train_examples, seed=0)
            samples = await policy.generate(policy.snapshot(0), example, n=8,
                                            rng=np.random.default_rng(0))

    Args:
        client: the endpoint client (:class:`engine.endpoints.client.Client`); may be set later with
            :attr:`client` (generation then fails per sample, recorded, until it is).
        cfg: ``max_candidates`` (K, the parameter size), ``max_demos``, ``propose_every``
            and the seed ``instructions`` (used when ``instructions`` is not given).
        endpoint: the endpoint config: ``mode`` (chat or completions) and ``stop``.
        instructions: seed instructions; the first is the base prompt, always candidate 0
            (zero-shot).
        demo_pool: examples with targets to draw seed demo sets from (keep held-out
            examples out of it).
        seed: seeds the demo sets.
        n_demo_sets: seed demo sets drawn from ``demo_pool`` (besides zero-shot).
        temperatures: optional sampling temperatures as a third candidate axis.
        fmt: the completions-mode prompt format.
        proposer: a client for reflection calls (e.g. a stronger model); default ``client``.
        proposer_mode: request shape of reflection calls; default the endpoint's mode.
        candidates: explicit seed candidates (instruction, demos, temperature), replacing the
            product of ``instructions`` x demo sets x ``temperatures``.

    Raises:
        ValueError: no instructions, or an unusable setting.
    """

    name = "prompt"
    embedded = False  # requests go through the client, which records their events

    def __init__(
        self,
        client: CompletionClient | None,
        cfg: PromptPolicyConfig,
        *,
        endpoint: EndpointConfig | None = None,
        instructions: Sequence[str] | None = None,
        demo_pool: Sequence[Example] = (),
        seed: int = 0,
        n_demo_sets: int = 2,
        temperatures: Sequence[float] = (),
        fmt: PromptFormat = PromptFormat(),
        proposer: CompletionClient | None = None,
        proposer_mode: Literal["chat", "completions"] | None = None,
        candidates: Sequence[tuple[str, Sequence[Demo], float | None]] | None = None,
    ) -> None:
        endpoint = endpoint or EndpointConfig()
        instr = list(cfg.instructions if instructions is None else instructions)
        if candidates is None and not instr:
            raise ValueError("the prompt policy needs at least the base prompt (instructions[0])")
        if cfg.max_candidates < 1:
            raise ValueError("max_candidates must be >= 1")
        self.client = client  # generation endpoint
        self.proposer = proposer  # reflection endpoint; None uses client
        self.cfg = cfg
        self.endpoint = endpoint  # mode, stop
        self.mode: Literal["chat", "completions"] = endpoint.mode
        self.proposer_mode = proposer_mode or endpoint.mode
        self.fmt = fmt
        self.seed = seed
        k = cfg.max_candidates
        # headroom: free slots kept for the next growth round (one per proposal kind)
        self.headroom = min(2, k - 1) if cfg.propose_every > 0 else 0
        self.version = 0  # latest published version this policy knows of
        self.params: dict[str, np.ndarray] = {"logits": np.zeros(k)}  # (K,) trainable
        self._ids = np.full(k, -1, dtype=np.int64)  # (K,) candidate id per slot, -1 empty
        self._born = np.full(k, NEVER, dtype=np.int64)  # (K,) first version showing it
        self._died = np.full(k, NEVER, dtype=np.int64)  # (K,) first version not showing it
        self._ref = np.zeros(k)  # (K,) reference logits (the initial distribution)
        self._registry: dict[int, Candidate] = {}  # every candidate ever, by id
        self._next_id = 0
        self._stats: dict[int, _CandStats] = {}  # per candidate id
        self._buffer: list[dict[str, Any]] = []  # recent scored rollouts for growth
        self._buffer_cap = 256

        if candidates is None:
            demo_sets: list[tuple[Demo, ...]] = [()]
            demo_sets += make_demo_sets(
                demo_pool, n_demo_sets, cfg.max_demos, np.random.default_rng([seed, 0xDE305])
            )
            temps: list[float | None] = list(temperatures) or [None]
            recipes = [(i, d, t) for d in demo_sets for i in instr for t in temps]
            # the base prompt, zero-shot, at the endpoint's temperature, comes first
            recipes.sort(key=lambda r: (r[0] != instr[0] or r[1] != (), r[1] != ()))
        else:
            recipes = [(i, tuple(d), t) for i, d, t in candidates]
        seen: set[tuple[Any, ...]] = set()
        limit = k - self.headroom if cfg.propose_every > 0 else k
        for ins, demos, temp in recipes:
            if len(seen) >= max(1, limit):
                break
            key = (ins, tuple(demos), temp)
            if key in seen:
                continue
            seen.add(key)
            cand = self._new_candidate(ins, tuple(demos), temp, "seed", None)
            slot = len(seen) - 1
            self._ids[slot] = cand.id
            self._born[slot] = 0
        self.base_id = int(self._ids[0])  # the base prompt's candidate (never pruned)

    @classmethod
    def from_config(
        cls,
        cfg: RunConfig,
        client: CompletionClient | None,
        *,
        examples: Sequence[Example] | None = None,
        separate_heldout: bool | None = None,
        instructions: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> PromptPolicy:
        """The policy of a run config: ``cfg.prompt``, ``cfg.endpoint``, ``cfg.seed``.

        Seed demos come from ``examples`` (default: the first 1024 lines of ``data.train``),
        minus the examples the trainer will hold out for evaluation (the seeded hash split),
        unless the held-out set is separate (``separate_heldout``; default: ``data.eval`` is
        set). Other ``kwargs`` go to the constructor.
        """
        from ..data.jsonl import is_heldout, read_jsonl, take

        pool = list(examples) if examples is not None else []
        if examples is None and cfg.data.train:
            pool = take(read_jsonl(cfg.data.train), 1024)
        if separate_heldout is None:
            separate_heldout = bool(cfg.data.eval)
        if not separate_heldout and cfg.data.eval_fraction > 0:
            pool = [ex for ex in pool if not is_heldout(ex, cfg.data.eval_fraction, cfg.seed)]
        return cls(
            client,
            cfg.prompt,
            endpoint=cfg.endpoint,
            instructions=instructions,
            demo_pool=pool,
            seed=cfg.seed,
            **kwargs,
        )

    # ------------------------------------------------------------------ candidates

    def _new_candidate(
        self,
        instruction: str,
        demos: tuple[Demo, ...],
        temperature: float | None,
        origin: str,
        parent: int | None,
    ) -> Candidate:
        cand = Candidate(self._next_id, instruction, demos, temperature, origin, parent)
        self._registry[cand.id] = cand
        self._stats[cand.id] = _CandStats()
        self._next_id += 1
        return cand

    def _live(self) -> np.ndarray:
        """(K,) bool: slots the policy being trained has (newborns included)."""
        return (self._ids >= 0) & (self._died == NEVER)

    def _visible(self, version: int) -> np.ndarray:
        """(K,) bool: slots snapshot ``version`` shows."""
        return (self._ids >= 0) & (self._born <= version) & (version < self._died)

    def candidate(self, cid: int) -> Candidate:
        """The candidate with id ``cid`` (also retired ones)."""
        return self._registry[cid]

    def probabilities(self) -> list[tuple[Candidate, float]]:
        """Live candidates with their current probability, most probable first."""
        live = np.flatnonzero(self._live())
        p = np.exp(_log_softmax(self.params["logits"][live]))
        out = [(self._registry[int(self._ids[s])], float(q)) for s, q in zip(live, p, strict=True)]
        return sorted(out, key=lambda cp: (-cp[1], cp[0].id))

    def best(self) -> Candidate:
        """The most probable live candidate (the base prompt on ties)."""
        live = np.flatnonzero(self._live())
        return self._registry[int(self._ids[live[int(np.argmax(self.params["logits"][live]))]])]

    def candidate_stats(self, cid: int) -> tuple[int, float]:
        """(rollouts scored, mean reward) of candidate ``cid`` since training began."""
        st = self._stats.get(cid, _CandStats())
        return st.n, st.mean_reward

    def render(self, candidate: Candidate, example: Example | str) -> str | list[dict[str, str]]:
        """The request for ``example`` under ``candidate`` in this policy's mode."""
        if self.mode == "chat":
            return render_messages(candidate, example)
        return render_completion(candidate, example, self.fmt)

    # ------------------------------------------------------------------ protocol: parameters

    def parameters(self) -> dict[str, np.ndarray]:
        """``{"logits": (K,)}``, updated in place by the optimizer; the shape never changes."""
        return self.params

    def snapshot(self, version: int) -> PolicySnapshot:
        """Read-only ``logits`` (K,), ``ids`` (K,) and ``visible`` (K,) as of ``version``."""
        arrays = {
            "logits": np.array(self.params["logits"], dtype=np.float64),
            "ids": self._ids.copy(),
            "visible": self._visible(version),
        }
        for a in arrays.values():
            a.setflags(write=False)
        return PolicySnapshot(version=version, params=MappingProxyType(arrays))

    def live_snapshot(self) -> PolicySnapshot:
        """A snapshot of the policy as it is now (candidates added by growth included)."""
        snap = self.snapshot(self.version)
        params = dict(snap.params)
        visible = self._live()
        visible.setflags(write=False)
        params["visible"] = visible
        return PolicySnapshot(version=self.version, params=MappingProxyType(params))

    # ------------------------------------------------------------------ protocol: generation

    async def generate(
        self,
        snapshot: PolicySnapshot,
        example: Example,
        n: int,
        rng: np.random.Generator,
        *,
        greedy: bool = False,
    ) -> list[Sample]:
        """Draw a candidate per rollout from ``snapshot`` and complete its rendered prompt.

        ``greedy``: the most probable candidate at temperature 0, one request, its sample
        repeated ``n`` times. Failed requests give samples carrying ``error``; this method
        raises only on cancellation or programming errors.
        """
        logits = np.asarray(snapshot.params["logits"])
        ids = np.asarray(snapshot.params["ids"])
        slots = np.flatnonzero(np.asarray(snapshot.params["visible"]))  # (M,)
        if slots.size == 0:
            raise ValueError("the snapshot shows no candidate")
        logp = _log_softmax(logits[slots])  # (M,)
        if greedy:
            picks = np.full(n, int(np.argmax(logp)))
        else:
            picks = rng.choice(slots.size, size=n, p=np.exp(logp))
        seed = int(rng.integers(0, 2**31 - 1 - 1000 * max(n, 1)))
        groups: dict[int, list[int]] = {}  # position in slots -> rollout indices
        for i, p in enumerate(picks):
            groups.setdefault(int(p), []).append(i)
        out: list[Sample | None] = [None] * n

        async def one(j: int, pos: int, members: list[int]) -> None:
            slot = int(slots[pos])
            cand = self._registry[int(ids[slot])]
            k = 1 if greedy else len(members)
            samples = await self._request(
                cand, slot, example, k, float(logp[pos]), snapshot.version, seed + 1000 * j, greedy
            )
            if greedy:
                samples = [samples[0]] + [dataclasses.replace(samples[0]) for _ in members[1:]]
            for i, s in zip(members, samples, strict=True):
                out[i] = s

        async with anyio.create_task_group() as tg:
            for j, (pos, members) in enumerate(groups.items()):
                tg.start_soon(one, j, pos, members)
        return [s for s in out if s is not None]

    async def complete(
        self,
        candidate: Candidate,
        example: Example | str,
        *,
        n: int = 1,
        greedy: bool = False,
        version: int | None = None,
        seed: int | None = None,
    ) -> Any:
        """One request for ``example`` under ``candidate``: its rendered prompt, its
        temperature (0 when ``greedy``) and, in completions mode, the format's stop sequences.

        Returns the client's :class:`~engine.endpoints.client.Completion`; raises its errors
        (:class:`~engine.errors.EndpointError`) and ``RuntimeError`` without a client.
        """
        if self.client is None:
            raise RuntimeError("the prompt policy has no client")
        stop = None
        if self.mode == "completions" and not self.endpoint.stop:
            stop = list(self.fmt.stop)
        return await self.client.complete(
            self.render(candidate, example),
            n=n,
            kind="generation",
            policy_version=self.version if version is None else version,
            mode=self.mode,
            temperature=0.0 if greedy else candidate.temperature,
            stop=stop,
            seed=seed,
        )

    async def _request(
        self,
        cand: Candidate,
        slot: int,
        example: Example,
        k: int,
        logp_old: float,
        version: int,
        seed: int,
        greedy: bool,
    ) -> list[PromptSample]:
        prompt = self.render(cand, example)
        messages = tuple(prompt) if isinstance(prompt, list) else None
        text_prompt = prompt if isinstance(prompt, str) else _messages_text(prompt)
        base = {
            "prompt": text_prompt,
            "choice": cand.id,
            "slot": slot,
            "messages": messages,
            "logprobs": np.array([logp_old]),
        }
        if self.client is None:
            return [PromptSample(text="", error="no client", **base) for _ in range(k)]
        try:
            comp = await self.complete(
                cand, example, n=k, greedy=greedy, version=version, seed=seed
            )
        except EngineError as exc:  # endpoint failures: recorded per sample, never raised
            err = f"{type(exc).__name__}: {exc}"
            return [PromptSample(text="", error=err, **base) for _ in range(k)]
        usage = _split_usage(comp.usage, len(comp.choices))
        prompt_ids = comp.prompt_token_ids
        out = []
        for c, u in zip(comp.choices, usage, strict=True):
            out.append(
                PromptSample(
                    text=c.text,
                    finish_reason=c.finish_reason or "stop",
                    usage=u,
                    latency=comp.latency,
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

    def choose(self, rng: np.random.Generator | None = None) -> Candidate:
        """A live candidate: the most probable one, or one drawn from the policy with ``rng``."""
        if rng is None:
            return self.best()
        probs = self.probabilities()
        p = np.array([q for _, q in probs])
        return probs[int(rng.choice(len(probs), p=p / p.sum()))][0]

    # ------------------------------------------------------------------ protocol: loss

    def loss_and_grad(
        self, rollouts: Sequence[Rollout], advantages: np.ndarray, cfg: GRPOConfig
    ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
        """GRPO over candidate choices (module docstring) and its exact gradient.

        Args:
            rollouts: N rollouts of this policy (``choice`` = candidate id, ``logprobs`` =
                ``[log pi_old]``).
            advantages: (N,) one advantage per rollout.
            cfg: epsilon, epsilon_high, beta and entropy_coef are used.

        Returns:
            metrics: ``loss``, ``policy_loss``, ``kl`` (mean k3 over rollouts), ``kl_exact``
            (KL(pi || ref) of the whole distributions), ``entropy`` (of pi), ``clip_ratio``
            (and ``/low``, ``/high``), ``approx_kl``, ``ratio_mean``, ``tokens`` (rollouts
            used), ``prompt/excluded_rollouts`` (candidate retired since generation); grads:
            ``{"logits": (K,)}``, zero on slots that are not live.
        """
        n = len(rollouts)
        adv_all = np.asarray(advantages, dtype=np.float64).reshape(-1)
        if adv_all.shape != (n,):
            raise ValueError(f"{adv_all.shape[0]} advantages for {n} rollouts")
        if n == 0:
            raise ValueError("loss_and_grad needs at least one rollout")
        live = self._live()
        live_slots = np.flatnonzero(live)  # (L,)
        slot_of = {int(self._ids[s]): j for j, s in enumerate(live_slots)}  # id -> index in L
        theta = self.params["logits"]
        logp = _log_softmax(theta[live_slots])  # (L,)
        p = np.exp(logp)  # (L,)
        ref_logp = _log_softmax(self._ref[live_slots])  # (L,)

        act, old, adv = [], [], []
        for r, a in zip(rollouts, adv_all, strict=True):
            s = r.sample
            if s.choice is None or s.logprobs is None or len(s.logprobs) != 1:
                raise ValueError(f"rollout {r.group_id}/{r.index} is not a prompt-policy sample")
            j = slot_of.get(int(s.choice))
            if j is None:
                continue  # its candidate was retired after it was drawn
            act.append(j)
            old.append(float(s.logprobs[0]))
            adv.append(float(a))
        excluded = n - len(act)
        entropy = float(-(p * logp).sum())
        kl_exact = float((p * (logp - ref_logp)).sum())
        grad_l = np.zeros(live_slots.size)  # (L,)
        if cfg.entropy_coef:
            # loss term -c * H;  dH/dtheta_k = -p_k (log p_k + H)
            grad_l += cfg.entropy_coef * p * (logp + entropy)
        if not act:
            grads = {"logits": np.zeros_like(theta)}
            grads["logits"][live_slots] = grad_l
            metrics = {
                "loss": -cfg.entropy_coef * entropy,
                "policy_loss": 0.0,
                "kl": 0.0,
                "kl_exact": kl_exact,
                "entropy": entropy,
                "clip_ratio": 0.0,
                "clip_ratio/low": 0.0,
                "clip_ratio/high": 0.0,
                "approx_kl": 0.0,
                "ratio_mean": 1.0,
                "tokens": 0.0,
                "prompt/excluded_rollouts": float(excluded),
            }
            return metrics, grads
        a_idx = np.array(act)  # (N',)
        old_lp = np.array(old)  # (N',)
        A = np.array(adv)  # (N',)
        m = a_idx.size
        new_lp = logp[a_idx]  # (N',)

        eps_low = cfg.epsilon
        eps_high = cfg.epsilon_high if cfg.epsilon_high is not None else cfg.epsilon
        logratio = new_lp - old_lp  # (N',)
        ratio = np.exp(logratio)  # (N',)
        pg_loss1 = -A * ratio
        pg_loss2 = -A * np.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
        pg_loss = np.maximum(pg_loss1, pg_loss2)  # (N',)
        clipped = pg_loss2 > pg_loss1  # the constant (clipped) branch is active
        d_ref = ref_logp[a_idx] - new_lp  # (N',)
        kl = np.exp(d_ref) - d_ref - 1.0  # (N',) k3
        w = 1.0 / m  # every aggregation (grpo, dapo, dr_grpo) is the mean: one action each

        # d loss / d logpi(c_i), then d logpi(c) / d theta = onehot(c) - p
        g_lp = w * (np.where(clipped, 0.0, -A * ratio) + cfg.beta * (1.0 - np.exp(d_ref)))
        np.add.at(grad_l, a_idx, g_lp)
        grad_l -= g_lp.sum() * p
        grads = {"logits": np.zeros_like(theta)}
        grads["logits"][live_slots] = grad_l

        metrics = {
            "loss": float(w * (pg_loss + cfg.beta * kl).sum() - cfg.entropy_coef * entropy),
            "policy_loss": float(w * pg_loss.sum()),
            "kl": float(kl.mean()),
            "kl_exact": kl_exact,
            "entropy": entropy,
            "clip_ratio": float(clipped.mean()),
            "clip_ratio/low": float((clipped & (A < 0)).mean()),
            "clip_ratio/high": float((clipped & (A > 0)).mean()),
            "approx_kl": float(((ratio - 1.0) - logratio).mean()),
            "ratio_mean": float(ratio.mean()),
            "tokens": float(m),
            "prompt/excluded_rollouts": float(excluded),
        }
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite GRPO metrics: {metrics}")
        return metrics, grads

    # ------------------------------------------------------------------ growth (hook)

    async def after_update(
        self,
        step: int,
        groups: Sequence[Group],
        *,
        version: int | None = None,
    ) -> dict[str, float]:
        """Trainer hook after the learner's update of batch ``step``: statistics and growth.

        Args:
            step: the batch index just applied.
            groups: its groups (rollouts carry rewards and advantages).
            version: the policy version the learner just published (default ``step + 1``).
            optimizer: the learner's :class:`~engine.learning.optim.Adam`; when given, moments of a
                reused slot are reset (module docstring).

        Returns:
            Metrics for the step: ``prompt/candidates``, ``prompt/best_prob``, and, in a
            growth round, ``prompt/proposed``, ``prompt/pruned``, ``prompt/propose_errors``.
        """
        v = step + 1 if version is None else version
        self.version = v
        for g in groups:
            for r in g.rollouts:
                if not r.ok or r.sample.choice is None:
                    continue
                st = self._stats.setdefault(int(r.sample.choice), _CandStats())
                st.n += 1
                st.reward_sum += r.reward
                self._buffer.append(
                    {
                        "candidate": int(r.sample.choice),
                        "input": g.example.text,
                        "target": g.example.target,
                        "output": r.sample.text,
                        "reward": float(r.reward),
                        "advantage": float(r.advantage) if math.isfinite(r.advantage) else 0.0,
                        "feedback": r.feedback,
                        "step": step,
                    }
                )
        del self._buffer[: max(0, len(self._buffer) - self._buffer_cap)]
        metrics: dict[str, float] = {}
        every = self.cfg.propose_every
        if every and (step + 1) % every == 0:
            metrics.update(await self._grow(step, v))
        probs = self.probabilities()
        metrics["prompt/candidates"] = float(len(probs))
        metrics["prompt/best_prob"] = probs[0][1]
        metrics["prompt/best_candidate"] = float(probs[0][0].id)
        return metrics

    async def _grow(self, step: int, v: int) -> dict[str, float]:
        """One growth round after version ``v`` was published (module docstring)."""
        # 1. reclaim slots no re-creatable snapshot shows any more
        freed = (self._ids >= 0) & (self._died <= v)
        self._ids[freed] = -1
        self._born[freed] = NEVER
        self._died[freed] = NEVER
        self.params["logits"][freed] = 0.0
        self._ref[freed] = 0.0

        parent = self.best()
        every = self.cfg.propose_every
        recent = [r for r in self._buffer if r["step"] > step - every]
        proposals: list[tuple[tuple[str, tuple[Demo, ...], float | None], str]] = []
        errors = 0
        live_recipes = {self._registry[int(i)].recipe for i in self._ids[self._live()]}

        # 2a. a new instruction by reflection
        best, worst = _best_and_worst(recent, 3)
        if best and worst:
            try:
                instruction = await self._reflect(parent, best, worst, seed=step)
            except EngineError as exc:
                errors += 1
                _log.warning("prompt.reflection_failed", step=step, error=str(exc))
                instruction = None
            if instruction is not None and instruction != parent.instruction:
                recipe = (instruction, parent.demos, parent.temperature)
                if recipe not in live_recipes:
                    proposals.append((recipe, "reflection"))
                    live_recipes.add(recipe)
        # 2b. a new demo set from the top-scoring rollouts
        if self.cfg.max_demos > 0:
            demos = _top_demos(recent, self.cfg.max_demos)
            recipe = (parent.instruction, demos, parent.temperature)
            if demos and recipe not in live_recipes:
                proposals.append((recipe, "demos"))

        # 3. place the proposals into free slots, born at v + 1
        free = list(np.flatnonzero(self._ids < 0))
        live = self._live()
        theta = self.params["logits"]
        placed = 0
        for recipe, origin in proposals[: len(free)]:
            slot = int(free[placed])
            cand = self._new_candidate(*recipe, origin=origin, parent=parent.id)
            theta[slot] = _logmeanexp(theta[live])
            self._ref[slot] = _logmeanexp(self._ref[live])
            self._ids[slot] = cand.id
            self._born[slot] = v + 1
            self._died[slot] = NEVER
            _reset_moments(self.optimizer, slot, live)
            placed += 1

        # 4. retire the weakest beyond K - headroom (they die at v + 1); the base prompt and
        #    candidates added in this round or the previous one are kept
        pruned = 0
        live = self._live()
        target = self.cfg.max_candidates - self.headroom
        excess = int(live.sum()) - max(1, target)
        if excess > 0:
            order = sorted(np.flatnonzero(live), key=lambda s: (theta[s], -int(self._ids[s])))
            for s in order:
                if pruned >= excess:
                    break
                if int(self._ids[s]) == self.base_id or self._born[s] > v - every:
                    continue
                self._died[s] = v + 1
                pruned += 1
        _log.info("prompt.grow", step=step, proposed=len(proposals), placed=placed, pruned=pruned)
        return {
            "prompt/proposed": float(len(proposals)),
            "prompt/placed": float(placed),
            "prompt/pruned": float(pruned),
            "prompt/propose_errors": float(errors),
        }

    async def _reflect(
        self,
        parent: Candidate,
        best: Sequence[Mapping[str, Any]],
        worst: Sequence[Mapping[str, Any]],
        *,
        seed: int,
    ) -> str | None:
        client = self.proposer or self.client
        if client is None:
            return None
        prompt = reflection_prompt(parent, best, worst, mode=self.proposer_mode)
        comp = await client.complete(
            prompt,
            n=1,
            kind="proposal",
            mode=self.proposer_mode,
            max_tokens=256,
            temperature=1.0,
            stop=["</instruction>"] if self.proposer_mode == "completions" else None,
            seed=self.seed * 1_000_003 + seed,
        )
        return parse_instruction(comp.choices[0].text)

    # ------------------------------------------------------------------ protocol: state

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Arrays ``params/logits``, ``slots/{ids,born,died}``, ``ref/logits``; meta: candidates
        (texts), statistics, the recent-rollout buffer, counters. Data only."""
        arrays = {
            "params/logits": self.params["logits"].copy(),
            "ref/logits": self._ref.copy(),
            "slots/ids": self._ids.copy(),
            "slots/born": self._born.copy(),
            "slots/died": self._died.copy(),
        }
        meta = {
            "policy": self.name,
            "format": _STATE_FORMAT,
            "max_candidates": self.cfg.max_candidates,
            "mode": self.mode,
            "prompt_format": dataclasses.asdict(self.fmt),
            "version": self.version,
            "next_id": self._next_id,
            "base_id": self.base_id,
            "candidates": [c.to_json() for c in self._registry.values()],
            "stats": {str(k): [s.n, s.reward_sum] for k, s in self._stats.items()},
            "buffer": list(self._buffer),
        }
        return arrays, meta

    def load_state(self, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> None:
        """Restore :meth:`state` output, in place (the optimizer keeps its references).

        Raises:
            CheckpointError: another policy or format, another ``max_candidates``, missing or
                misshapen arrays, or slots naming unknown candidates.
        """
        if meta.get("policy") != self.name:
            raise CheckpointError(f"checkpoint is for policy {meta.get('policy')!r}, not prompt")
        if meta.get("format") != _STATE_FORMAT:
            raise CheckpointError(f"unsupported prompt policy state format {meta.get('format')!r}")
        k = self.cfg.max_candidates
        if meta.get("max_candidates") != k:
            raise CheckpointError(
                f"checkpoint has prompt.max_candidates={meta.get('max_candidates')!r}, "
                f"this policy has {k}"
            )
        new: dict[str, np.ndarray] = {}
        for key, dtype in (
            ("params/logits", np.float64),
            ("ref/logits", np.float64),
            ("slots/ids", np.int64),
            ("slots/born", np.int64),
            ("slots/died", np.int64),
        ):
            if key not in arrays:
                raise CheckpointError(f"checkpoint lacks array {key!r}")
            a = np.array(arrays[key], dtype=dtype)
            if a.shape != (k,):
                raise CheckpointError(f"array {key!r} has shape {a.shape}, expected {(k,)}")
            if dtype is np.float64 and not np.all(np.isfinite(a)):
                raise CheckpointError(f"array {key!r} holds non-finite values")
            new[key] = a
        try:
            registry = {c.id: c for c in map(Candidate.from_json, meta["candidates"])}
            stats = {int(k_): _CandStats(int(n), float(s)) for k_, (n, s) in meta["stats"].items()}
            buffer = [dict(r) for r in meta["buffer"]]
            next_id, base_id, version = int(meta["next_id"]), int(meta["base_id"]), meta["version"]
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"prompt policy state is incomplete: {exc!r}") from None
        unknown = [int(i) for i in new["slots/ids"] if i >= 0 and int(i) not in registry]
        if unknown:
            raise CheckpointError(f"prompt policy slots name unknown candidates {unknown}")
        self.params["logits"][...] = new["params/logits"]
        self._ref = new["ref/logits"]
        self._ids, self._born, self._died = new["slots/ids"], new["slots/born"], new["slots/died"]
        self._registry, self._stats, self._buffer = registry, stats, buffer
        self._next_id, self.base_id, self.version = next_id, base_id, int(version)


# ----------------------------------------------------------------------------- helpers


def _split_usage(total: Usage, k: int) -> list[Usage]:
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
            total.cost / k,
        )
        for i in range(k)
    ]


def _best_and_worst(
    records: Sequence[Mapping[str, Any]], k: int
) -> tuple[list[Mapping[str, Any]], list[Mapping[str, Any]]]:
    """Up to ``k`` highest- and ``k`` lowest-advantage records, distinct inputs, best > worst."""
    if not records:
        return [], []
    order = sorted(records, key=lambda r: (-r["advantage"], -r["reward"]))

    def pick(rs: Iterable[Mapping[str, Any]], cond: Any) -> list[Mapping[str, Any]]:
        out: list[Mapping[str, Any]] = []
        seen: set[str] = set()
        for r in rs:
            if cond(r) and r["input"] not in seen:
                out.append(r)
                seen.add(r["input"])
            if len(out) >= k:
                break
        return out

    best = pick(order, lambda r: r["advantage"] > 0)
    worst = pick(reversed(order), lambda r: r["advantage"] < 0)
    return best, worst


def _top_demos(records: Sequence[Mapping[str, Any]], k: int) -> tuple[Demo, ...]:
    """Up to ``k`` demos from the highest-reward recent rollouts (positive advantage, distinct
    inputs, non-empty outputs), most rewarded first."""
    good = [r for r in records if r["advantage"] > 0 and str(r["output"]).strip()]
    good.sort(key=lambda r: (-r["reward"], -r["advantage"]))
    demos: list[Demo] = []
    seen: set[str] = set()
    for r in good:
        if r["input"] in seen:
            continue
        seen.add(r["input"])
        demos.append(Demo(str(r["input"]), str(r["output"]).strip()))
        if len(demos) >= k:
            break
    return tuple(demos)


def _reset_moments(optimizer: Any, slot: int, live: np.ndarray) -> None:
    """Zero Adam's first moment of ``logits[slot]`` and set its second moment to the live
    slots' mean, through the optimizer's public state API (no-op before its first step)."""
    if optimizer is None:
        return
    arrays, meta = optimizer.state()
    if "m.logits" not in arrays:
        return
    arrays["m.logits"][slot] = 0.0
    v = arrays["v.logits"]
    others = live.copy()
    others[slot] = False
    v[slot] = float(v[others].mean()) if others.any() else 0.0
    optimizer.load_state(arrays, meta)
