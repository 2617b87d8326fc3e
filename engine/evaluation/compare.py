"""A/B testing stage: ``ModelComparator`` answers the same inputs with two models and tests the gap.

Example::

    a = await load_generator("runs/latest#ref")    # the run's initial (step-0) policy
    b = await load_generator("runs/latest")        # its latest checkpoint
    comparator = ModelComparator(a, b, heldout_examples(b.run_config),
                                 metrics=["quality", "diversity", "relevance"],
                                 samples_per_input=4, seed=0)
    result = await comparator.compare()
    print(result)                  # a table: means, B - A with a 95% CI, p-value, win/tie/loss
    result.improvement["quality"]  # (B - A) / |A|

**Models.** A model is anything with ``async generate(example, n, seed) -> list[str]``
(:class:`Generator`). Adapters: :class:`PolicyGenerator` (an engine policy and a snapshot,
e.g. a tinylm checkpoint), :class:`TextModelGenerator` (any object with an async
``generate(text)``, such as ``engine.training.finetune.FineTunedModel``), :class:`EndpointGenerator`
(a fixed prompt on an OpenAI-compatible endpoint). :func:`load_generator` builds one from a
checkpoint directory of a tinylm or prompt policy, a run directory (its latest checkpoint;
``#ref`` for the frozen initial policy) or a TOML config. Both models get the same inputs
with the same seeds (common random numbers: with identical models the two sides are
identical draws).

**Metrics**, each a number per input (the mean over the ``k = samples_per_input`` samples):

* ``quality``: a reward function or judge ``(example, text) -> float`` (sync or async), an
  :class:`engine.rewards.rewarder.Rewarder` or a :class:`engine.rewards.rewarder.RewardSpec`. Default for tinylm
  checkpoints: the built-in task's reward (:func:`engine.data.tasks.reward`).
* ``preference`` (when ``pairwise_judge`` is given): a judge ``(example, first, second) ->
  float`` in [0, 1], the probability that ``first`` is better. A and B are shown in a seeded
  random order per sample; B's value is its share of the preference, A's the rest.
* ``diversity`` = 1 - the mean pairwise n-gram overlap among the k samples (Jaccard of the
  n-gram sets, averaged over n = 1, 2), plus ``distinct_1`` and ``distinct_2`` (unique n-grams
  / all n-grams over the k samples). Needs k >= 2.
* ``relevance``: a judge ``(example, text) -> float`` if ``relevance_judge`` is given, else
  :func:`lexical_relevance`: bag-of-words F1 between the input text and the output.
* custom metrics: callables ``(example, text) -> float`` (named by ``__name__``) or
  ``(name, callable)`` pairs.

Tokens, for the lexical metrics, are ``\\w+`` runs of the lower-cased text.

**Statistics** on the per-input paired differences ``d = B - A`` (pure numpy, seeded,
vectorized): the mean, a percentile bootstrap CI (:func:`bootstrap_ci`), a two-sided
sign-flip permutation p-value (:func:`paired_permutation_test`; exact when n <= 16),
win/tie/loss rates, and the relative improvement ``(B - A) / |A|``.

**Failures are recorded, never zeroed.** A failed generation drops that input from every
metric (for both models, so pairs stay paired) and is listed in ``result.failures``; a failed
score drops that sample from its input's mean (the input is dropped when all k failed), and
is counted in ``result.score_failures``.
"""

from __future__ import annotations

import inspect
import itertools
import math
import re
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio
import anyio.to_thread
import numpy as np
import orjson

from ..config.schema import RunConfig, load_config
from ..errors import CheckpointError, ConfigError, EngineError
from ..types import Example

__all__ = (
    "ComparisonResult",
    "EndpointGenerator",
    "Generator",
    "MetricComparison",
    "ModelComparator",
    "PairwiseJudge",
    "PolicyGenerator",
    "TextModelGenerator",
    "as_generator",
    "bootstrap_ci",
    "compare_scores",
    "distinct_n",
    "diversity",
    "endpoint_generator",
    "heldout_examples",
    "lexical_relevance",
    "load_generator",
    "ngram_overlap",
    "paired_permutation_test",
    "tokenize",
)

BUILTIN_METRICS: tuple[str, ...] = ("quality", "preference", "diversity", "relevance")
"""Metric names understood by :class:`ModelComparator` (custom callables come on top)."""

_TOKEN_RE = re.compile(r"\w+")
_TIE_TOL = 1e-12  # |B - A| at or below this per input is a tie
_BOOT_CHUNK = 2_000_000  # bootstrap / permutation matrix elements per vectorized chunk


# ============================================================================ statistics


def bootstrap_ci(
    diffs: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
) -> tuple[float, float]:
    """A/B statistics: percentile bootstrap confidence interval of the mean of ``diffs``.

    Draws ``n_resamples`` resamples of size n with replacement (seeded, vectorized in chunks)
    and returns the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` quantiles of their
    means (numpy's default linear interpolation). Non-finite values must be removed first.
    ``(nan, nan)`` for no data; ``(d, d)`` for one value.
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)  # (n,)
    if not np.all(np.isfinite(d)):
        raise ValueError("bootstrap_ci: diffs must be finite (drop failed pairs first)")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    n = d.size
    if n == 0:
        return (math.nan, math.nan)
    if n == 1:
        return (float(d[0]), float(d[0]))
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)  # (B,)
    rows = max(1, _BOOT_CHUNK // n)
    for start in range(0, n_resamples, rows):
        stop = min(n_resamples, start + rows)
        idx = rng.integers(0, n, size=(stop - start, n))  # (b, n)
        means[start:stop] = d[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [alpha, 1.0 - alpha])
    return (float(lo), float(hi))


def paired_permutation_test(
    diffs: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
    exact_max_n: int = 16,
) -> float:
    """A/B statistics: two-sided paired permutation (sign-flip) test of mean(diffs) == 0.

    Under the null hypothesis the sign of each paired difference is a fair coin, so the
    p-value is the share of sign assignments whose ``|sum|`` is at least the observed one.
    With ``n <= exact_max_n`` all ``2**n`` assignments are enumerated (exact p-value);
    otherwise ``n_resamples`` random assignments are drawn (seeded, vectorized) and
    ``p = (1 + hits) / (1 + n_resamples)``, which never reports 0 and keeps the test valid.
    Returns 1.0 for no data or all-zero differences.
    """
    d = np.asarray(diffs, dtype=np.float64).reshape(-1)  # (n,)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired_permutation_test: diffs must be finite")
    n = d.size
    observed = abs(float(d.sum()))
    if n == 0 or observed == 0.0:
        return 1.0
    # sums that equal the observed one up to float rounding count as "at least as extreme"
    thresh = observed - 1e-9 * float(np.abs(d).sum())
    if n <= exact_max_n:
        codes = np.arange(2**n, dtype=np.int64)[:, None]  # (2^n, 1)
        signs = ((codes >> np.arange(n)) & 1) * 2 - 1  # (2^n, n) every sign assignment
        hits = int(np.count_nonzero(np.abs(signs @ d) >= thresh))
        return hits / 2**n
    rng = np.random.default_rng(seed)
    hits = 0
    rows = max(1, _BOOT_CHUNK // n)
    for start in range(0, n_resamples, rows):
        b = min(n_resamples, start + rows) - start
        signs = rng.integers(0, 2, size=(b, n), dtype=np.int8) * 2 - 1  # (b, n)
        hits += int(np.count_nonzero(np.abs(signs @ d) >= thresh))
    return (1 + hits) / (1 + n_resamples)


# ============================================================================ lexical metrics


def tokenize(text: str) -> list[str]:
    """Lexical metrics: the ``\\w+`` runs of the lower-cased text."""
    return _TOKEN_RE.findall(text.lower())


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Lexical metrics: distinct-n, unique n-grams / all n-grams over ``texts``; 0 when none."""
    grams = [g for t in texts for g in _ngrams(tokenize(t), n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _gram_sets(text: str, orders: Sequence[int]) -> list[set[tuple[str, ...]]]:
    tokens = tokenize(text)
    return [set(_ngrams(tokens, n)) for n in orders]


def _overlap(sa: Sequence[set[Any]], sb: Sequence[set[Any]]) -> float:
    vals = [len(a & b) / len(a | b) for a, b in zip(sa, sb, strict=True) if a or b]
    return sum(vals) / len(vals) if vals else 1.0


def ngram_overlap(first: str, second: str, orders: Sequence[int] = (1, 2)) -> float:
    """Lexical metrics: Jaccard overlap of two texts' n-gram sets, averaged over ``orders``.

    An order for which both texts have no n-grams is skipped; two texts with no n-grams of
    any order (both empty, say) overlap fully (1.0). Identical texts give 1.0.
    """
    return _overlap(_gram_sets(first, orders), _gram_sets(second, orders))


def diversity(texts: Sequence[str], orders: Sequence[int] = (1, 2)) -> float:
    """Lexical metrics: 1 - mean pairwise :func:`ngram_overlap` among ``texts`` (NaN if < 2)."""
    sets = [_gram_sets(t, orders) for t in texts]
    pairs = list(itertools.combinations(sets, 2))
    if not pairs:
        return math.nan
    return 1.0 - sum(_overlap(a, b) for a, b in pairs) / len(pairs)


def lexical_relevance(example: Example | str, text: str) -> float:
    """Lexical metrics: bag-of-words F1 between the input text and ``text`` (as in SQuAD).

    ``common`` counts tokens shared with multiplicity; precision = common / len(output),
    recall = common / len(input), F1 their harmonic mean; 0.0 when nothing is shared (an
    empty output included). A crude stand-in for a relevance judge: it rewards reusing the
    input's words.
    """
    source = tokenize(example.text if isinstance(example, Example) else example)
    out = tokenize(text)
    common = sum((Counter(source) & Counter(out)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(out), common / len(source)
    return 2 * precision * recall / (precision + recall)


# ============================================================================ models


@runtime_checkable
class Generator(Protocol):
    """What :class:`ModelComparator` needs of a model.

    ``generate`` returns ``n`` completions of ``example``, deterministic in ``seed`` where the
    model allows; it raises when generation fails (the comparator records the failure).
    Optional: a ``name`` attribute (shown in results) and ``async aclose()`` (releases clients).
    """

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` completions of ``example`` sampled with ``seed``."""
        ...


class PolicyGenerator:
    """An engine :class:`~engine.policies.base.Policy` and one of its snapshots, as a Generator.

    Samples with ``np.random.default_rng(seed)``; a sample that carries ``error`` makes the
    call raise :class:`EngineError`.

    Args:
        policy: the policy (a :class:`~engine.policies.tinylm.TinyLM`, a prompt policy ...).
        snapshot: the parameters to sample from; default the policy's current ones.
        name: shown in results.
        greedy: argmax decoding (all n samples then coincide).
        run_config: the run's config when known (gives default data and quality).
        on_close: awaited by :meth:`aclose` (e.g. closing the policy's client).
    """

    def __init__(
        self,
        policy: Any,
        snapshot: Any = None,
        *,
        name: str | None = None,
        greedy: bool = False,
        run_config: RunConfig | None = None,
        on_close: Callable[[], Awaitable[Any]] | None = None,
    ) -> None:
        self.policy = policy
        self.snapshot = snapshot if snapshot is not None else policy.snapshot(0)
        self.name = name or getattr(policy, "name", "policy")
        self.greedy = greedy
        self.run_config = run_config
        self._on_close = on_close  # releases what the policy uses (the prompt policy's client)

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` samples of the policy at ``snapshot``."""
        samples = await self.policy.generate(
            self.snapshot, example, n, np.random.default_rng(seed), greedy=self.greedy
        )
        errors = [s.error for s in samples if s.error]
        if errors:
            raise EngineError(f"{self.name}: generation failed: {errors[0]}")
        return [s.text for s in samples]

    async def aclose(self) -> None:
        """Run ``on_close`` once, if given."""
        close, self._on_close = self._on_close, None
        if close is not None:
            await close()


def _accepts(fn: Callable[..., Any], name: str) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def _as_text(value: Any) -> str:
    """The text of a model's answer: a string, ``.text``, or a ``generated``/``text`` field."""
    if isinstance(value, str):
        return value
    text = getattr(value, "text", None)
    if isinstance(text, str):
        return text
    if isinstance(value, Mapping):
        for key in ("generated", "text", "output"):
            if isinstance(value.get(key), str):
                return value[key]
    raise TypeError(f"cannot read a text from a {type(value).__name__} answer")


class TextModelGenerator:
    """Any object with an async ``generate(text, ...)`` (e.g. ``FineTunedModel``) as a Generator.

    The n samples are n concurrent calls. Keyword arguments are passed only when the method
    accepts them: ``sample`` (``True``, so the n samples can differ; override with
    ``sample=False`` for greedy) and ``seed`` (``seed + i`` for sample i). The answer may be
    a string, have a ``text`` attribute, or be a mapping with ``generated`` or ``text``.
    """

    def __init__(self, model: Any, *, name: str | None = None, sample: bool = True) -> None:
        self.model = model
        self.name = name or getattr(model, "name", None) or type(model).__name__
        self.sample = sample
        gen = model.generate
        self._kw_sample = _accepts(gen, "sample")
        self._kw_seed = _accepts(gen, "seed")

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` concurrent ``model.generate(example.text)`` calls."""
        out = [""] * n

        async def one(i: int) -> None:
            kw: dict[str, Any] = {}
            if self._kw_sample:
                kw["sample"] = self.sample
            if self._kw_seed:
                kw["seed"] = seed + i
            out[i] = _as_text(await self.model.generate(example.text, **kw))

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)
        return out

    async def aclose(self) -> None:
        """Close the wrapped model when it has ``aclose``."""
        close = getattr(self.model, "aclose", None)
        if close is not None:
            await close()


class EndpointGenerator:
    """A fixed prompt on an OpenAI-compatible endpoint, as a Generator.

    The prompt is ``render(example)`` when given (:func:`endpoint_generator` passes the
    prompt policy's rendering of its base prompt), else ``instruction + "\\n\\n" +
    example.text`` (just the text without an instruction); ``n`` samples come from one
    :meth:`engine.endpoints.client.Client.complete` call with ``seed`` (the client fans out when the
    server ignores ``n``).

    Args:
        client: an :class:`engine.endpoints.client.Client`; closed by :meth:`aclose` when ``owns_client``.
        instruction: the fixed instruction, or "".
        name: shown in results.
        run_config: the config it came from, when known.
    """

    def __init__(
        self,
        client: Any,
        instruction: str = "",
        *,
        name: str = "endpoint",
        run_config: RunConfig | None = None,
        owns_client: bool = True,
        render: Callable[[Example], Any] | None = None,
    ) -> None:
        self.client = client
        self.instruction = instruction
        self.name = name
        self.run_config = run_config
        self.owns_client = owns_client
        self._render = render  # custom rendering (chat messages or a completions prompt)

    def render(self, example: Example) -> Any:
        """The prompt (a string, or chat messages) sent for ``example``."""
        if self._render is not None:
            return self._render(example)
        return f"{self.instruction}\n\n{example.text}" if self.instruction else example.text

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        """``n`` completions of the rendered prompt."""
        completion = await self.client.complete(
            self.render(example), n=n, seed=seed, group_id=f"compare:{example.id}"
        )
        return [c.text for c in completion.choices]

    async def aclose(self) -> None:
        """Close the client if this generator owns it."""
        if self.owns_client:
            await self.client.aclose()


def as_generator(model: Any, *, name: str | None = None) -> Any:
    """A Generator for ``model``: itself when it already is one, else the fitting adapter.

    An engine policy (it has ``snapshot`` and ``parameters``) becomes a
    :class:`PolicyGenerator` of its current parameters; an object whose ``generate`` lacks
    ``n`` and ``seed`` parameters becomes a :class:`TextModelGenerator`.
    """
    gen = getattr(model, "generate", None)
    if gen is None:
        raise TypeError(f"{type(model).__name__} has no generate method: not a model")
    if hasattr(model, "snapshot") and hasattr(model, "parameters"):
        return PolicyGenerator(model, name=name)
    if _accepts(gen, "n") and _accepts(gen, "seed"):
        if name is not None and getattr(model, "name", None) is None:
            model.name = name
        return model
    return TextModelGenerator(model, name=name)


def _checkpoint_path(p: Path) -> Path:
    if (p / "meta.json").is_file():
        return p
    if (p / "checkpoints").is_dir():
        from ..learning.checkpoint import latest_checkpoint

        found = latest_checkpoint(p / "checkpoints")
        if found is None:
            raise CheckpointError(f"{p}: run directory has no loadable checkpoint")
        return found
    raise ConfigError(
        f"{p}: not a checkpoint directory (meta.json), a run directory (checkpoints/) "
        "or a .toml config"
    )


def _read_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, Any], RunConfig]:
    """Blocking: a checkpoint's policy arrays (``policy/`` prefix removed), policy meta, config."""
    from ..learning.checkpoint import load_checkpoint

    arrays, meta = load_checkpoint(path)
    cfg_data = meta.get("config")
    policy_meta = meta.get("policy")
    if not isinstance(cfg_data, Mapping) or not isinstance(policy_meta, Mapping):
        raise CheckpointError(f"{path}: checkpoint has no config or policy metadata")
    cfg = load_config(None, base=cfg_data)
    state = {k[len("policy/") :]: v for k, v in arrays.items() if k.startswith("policy/")}
    return state, {**policy_meta, "_step": int(meta.get("step", 0))}, cfg


def _as_reference(state: Mapping[str, Any]) -> dict[str, Any]:
    """The state with the frozen reference (``ref/*``, the initial policy) as the parameters."""
    ref = {f"params/{k[len('ref/') :]}": v for k, v in state.items() if k.startswith("ref/")}
    return {**state, **ref}


def _tinylm_generator(
    spec: str, state: dict[str, Any], meta: dict[str, Any], cfg: RunConfig, step: int
) -> PolicyGenerator:
    """Blocking (a little numpy): a tinylm policy restored from checkpoint state."""
    from ..policies.tinylm import TinyLM

    policy = TinyLM(cfg.tinylm, seed=cfg.seed)
    policy.load_state(state, meta)
    return PolicyGenerator(
        policy, policy.snapshot(step), name=f"{spec} (step {step})", run_config=cfg
    )


def _prompt_generator(
    spec: str, state: dict[str, Any], meta: dict[str, Any], cfg: RunConfig, step: int
) -> PolicyGenerator:
    """A prompt policy restored from checkpoint state, on a client for its endpoint."""
    from ..endpoints.client import Client
    from ..policies.prompt import PromptPolicy

    client = Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry)
    # the candidates come from the checkpoint; the constructor only needs a placeholder
    policy = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint, candidates=[("", (), None)])
    policy.load_state(state, meta)
    return PolicyGenerator(
        policy,
        policy.snapshot(step),
        name=f"{spec} (step {step})",
        run_config=cfg,
        on_close=client.aclose,
    )


async def load_generator(spec: str | Path) -> Any:
    """A Generator from a spec string, as ``python -m engine compare --a/--b`` take it.

    * ``RUN_DIR`` or ``RUN_DIR/checkpoints/step-N``: the policy at that checkpoint (a run
      directory means its latest loadable checkpoint): tinylm, or a prompt policy (sampling
      its candidates, on a client for the checkpoint config's endpoint);
    * ``...#ref``: the same checkpoint's frozen reference, i.e. the run's initial policy;
    * ``FILE.toml``: a run config; a fixed prompt on its ``[endpoint]`` (see
      :func:`endpoint_generator`).

    Generators on an endpoint hold a client: close them with ``await gen.aclose()``.

    Raises:
        ConfigError: the spec is none of these, or the config is invalid.
        CheckpointError: the checkpoint is unreadable, or of a policy kind not known here.
    """
    text = str(spec)
    reference = text.endswith("#ref")
    p = Path(text[: -len("#ref")] if reference else text)
    if p.suffix == ".toml":
        if reference:
            raise ConfigError(f"{text}: '#ref' applies to checkpoints, not configs")
        cfg = await anyio.to_thread.run_sync(load_config, p)
        return endpoint_generator(cfg, name=text)
    path = await anyio.to_thread.run_sync(_checkpoint_path, p)
    state, meta, cfg = await anyio.to_thread.run_sync(_read_checkpoint, path)
    step = 0 if reference else meta["_step"]
    if reference:
        state = _as_reference(state)
    kind = meta.get("policy")
    if kind == "tinylm":
        return await anyio.to_thread.run_sync(_tinylm_generator, text, state, meta, cfg, step)
    if kind == "prompt":
        return _prompt_generator(text, state, meta, cfg, step)
    raise CheckpointError(f"{path}: checkpoint of unknown policy {kind!r}")


def endpoint_generator(cfg: RunConfig, *, name: str = "endpoint") -> EndpointGenerator:
    """A fixed prompt on ``cfg.endpoint``: the prompt policy's base prompt, never trained.

    The prompt is what :mod:`engine.policies.prompt` renders for its base candidate (the
    first ``prompt.instructions`` entry, zero-shot) in the endpoint's mode; with no
    instruction, the input text alone.
    """
    from ..endpoints.client import Client

    client = Client(cfg.endpoint, limits=cfg.limits, retry=cfg.retry)
    instruction = cfg.prompt.instructions[0] if cfg.prompt.instructions else ""
    render = None
    if instruction:
        from ..policies.prompt import Candidate, PromptFormat, render_completion, render_messages

        base = Candidate(0, instruction)
        if cfg.endpoint.mode == "chat":

            def render(ex: Example) -> Any:
                return render_messages(base, ex)

        else:
            fmt = PromptFormat()

            def render(ex: Example) -> Any:
                return render_completion(base, ex, fmt)

    return EndpointGenerator(client, instruction, name=name, run_config=cfg, render=render)


def heldout_examples(cfg: RunConfig, limit: int | None = None) -> list[Example]:
    """The held-out examples of a run config, as the trainer splits them (blocking: reads files).

    ``data.eval`` when set; else the ``eval_fraction`` split of ``data.train`` or of the
    built-in examples (tinylm: the task's; prompt policy: the ``sentiment`` dataset). Unlike
    the trainer's evaluation (``trainer.eval_size``), all of them are returned unless
    ``limit`` is given.
    """
    from ..data.jsonl import as_source, read_jsonl, split_source

    if cfg.data.eval:
        exs: Iterable[Example] = read_jsonl(cfg.data.eval)
    else:
        if cfg.data.train:
            path = cfg.data.train

            def source() -> Iterable[Example]:
                return read_jsonl(path)

        elif cfg.policy == "tinylm":
            from ..data.tasks import make_examples

            source = as_source(make_examples(cfg.tinylm, cfg.data.num_examples, cfg.seed))
        else:  # the prompt policy's built-in dataset, as engine.training.assembly picks it
            from ..data import datasets

            source = as_source(datasets.load("sentiment"))
        _, held = split_source(source, cfg.data.eval_fraction, cfg.seed)
        exs = held()
    out = list(itertools.islice(exs, limit) if limit is not None else exs)
    if not out:
        raise ConfigError("the held-out split is empty", key="data.eval_fraction")
    return out


# ============================================================================ judges


PairwiseJudgeFn = Callable[[Example, str, str], "float | Awaitable[float]"]
"""``(example, first, second) -> P(first is better)`` in [0, 1]; 0.5 is a tie."""


class PairwiseJudge:
    """An LLM judge of two responses: a :class:`engine.rewards.judges.GroupJudge` shown both.

    ``await judge(example, first, second)`` asks the group judge for scores of the two texts
    in one call (its hardened prompt, caching and seeded presentation order apply) and
    returns 1.0 when ``first`` scores higher, 0.0 when ``second`` does, 0.5 for a tie (two
    identical texts are a tie without a call's verdict mattering). The comparator also shows
    A and B in a seeded random order, so a judge's position bias cancels out on average.

    Args:
        judge: a ``GroupJudge``, or an :class:`engine.endpoints.client.Client` to build one on.
        rubric: the rubric when building the judge.
        **judge_kwargs: passed to ``GroupJudge`` when building it (``sim_marker=True`` for
            the simulated server, ``cache``, ``mode`` ...).

    Raises (per call, recorded by the comparator as failures): the judge's
    ``OutputParseError`` or the client's ``EndpointError``.
    """

    def __init__(
        self,
        judge: Any,
        rubric: str = "Which response answers the task better: correct, complete, on topic?",
        **judge_kwargs: Any,
    ) -> None:
        from ..rewards.judges import GroupJudge

        if isinstance(judge, GroupJudge):
            self.judge = judge
        else:
            judge_kwargs.setdefault("name", "pairwise")
            self.judge = GroupJudge(judge, rubric, **judge_kwargs)

    async def __call__(self, example: Example, first: str, second: str) -> float:
        """P(``first`` is better) as 1.0, 0.5 or 0.0."""
        if first == second:
            return 0.5
        s1, s2 = await self.judge(example, [first, second])
        return 1.0 if s1 > s2 else 0.0 if s1 < s2 else 0.5


# ============================================================================ results


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True, slots=True)
class MetricComparison:
    """One metric of an A/B comparison; differences are ``B - A`` per input."""

    name: str
    """Metric name."""
    mean_a: float
    """Mean over inputs for model A."""
    mean_b: float
    """Mean over inputs for model B."""
    diff: float
    """Mean paired difference B - A."""
    ci_low: float
    """Lower end of the bootstrap confidence interval of ``diff``."""
    ci_high: float
    """Upper end of the bootstrap confidence interval of ``diff``."""
    p_value: float
    """Two-sided paired permutation p-value of ``diff == 0``."""
    win: float
    """Share of inputs where B scored higher."""
    tie: float
    """Share of inputs where they scored the same."""
    loss: float
    """Share of inputs where B scored lower."""
    improvement: float | None
    """Relative change ``(B - A) / |A|``; None when A's mean is 0 (or undefined)."""
    n: int
    """Paired inputs used."""
    dropped: int = 0
    """Inputs dropped because a side had no valid value."""

    def significant(self, alpha: float = 0.05) -> bool:
        """Whether ``p_value < alpha``."""
        return math.isfinite(self.p_value) and self.p_value < alpha

    def to_dict(self) -> dict[str, Any]:
        """Plain data; NaN becomes None."""
        return {
            "name": self.name,
            "mean_a": _finite_or_none(self.mean_a),
            "mean_b": _finite_or_none(self.mean_b),
            "diff": _finite_or_none(self.diff),
            "ci_low": _finite_or_none(self.ci_low),
            "ci_high": _finite_or_none(self.ci_high),
            "p_value": _finite_or_none(self.p_value),
            "win": _finite_or_none(self.win),
            "tie": _finite_or_none(self.tie),
            "loss": _finite_or_none(self.loss),
            "improvement": _finite_or_none(self.improvement),
            "n": self.n,
            "dropped": self.dropped,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetricComparison:
        """Inverse of :meth:`to_dict` (None becomes NaN, except ``improvement``)."""

        def f(key: str) -> float:
            v = data.get(key)
            return math.nan if v is None else float(v)

        imp = data.get("improvement")
        return cls(
            name=str(data["name"]),
            mean_a=f("mean_a"),
            mean_b=f("mean_b"),
            diff=f("diff"),
            ci_low=f("ci_low"),
            ci_high=f("ci_high"),
            p_value=f("p_value"),
            win=f("win"),
            tie=f("tie"),
            loss=f("loss"),
            improvement=None if imp is None else float(imp),
            n=int(data.get("n", 0)),
            dropped=int(data.get("dropped", 0)),
        )


def compare_scores(
    name: str,
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    confidence: float = 0.95,
    n_resamples: int = 10_000,
    seed: int | Sequence[int] = 0,
) -> MetricComparison:
    """A/B statistics for one metric from per-input scores (NaN marks a missing value)."""
    av = np.asarray(a, dtype=np.float64)  # (n,)
    bv = np.asarray(b, dtype=np.float64)  # (n,)
    if av.shape != bv.shape:
        raise ValueError(f"{name}: {av.shape} scores for A, {bv.shape} for B")
    ok = np.isfinite(av) & np.isfinite(bv)
    av, bv = av[ok], bv[ok]
    n = int(av.size)
    dropped = int(ok.size - n)
    if n == 0:
        nan = math.nan
        return MetricComparison(name, nan, nan, nan, nan, nan, nan, nan, nan, nan, None, 0, dropped)
    d = bv - av  # (n,)
    lo, hi = bootstrap_ci(d, confidence=confidence, n_resamples=n_resamples, seed=seed)
    p = paired_permutation_test(d, n_resamples=n_resamples, seed=seed)
    mean_a, mean_b = float(av.mean()), float(bv.mean())
    return MetricComparison(
        name=name,
        mean_a=mean_a,
        mean_b=mean_b,
        diff=float(d.mean()),
        ci_low=lo,
        ci_high=hi,
        p_value=p,
        win=float(np.mean(d > _TIE_TOL)),
        tie=float(np.mean(np.abs(d) <= _TIE_TOL)),
        loss=float(np.mean(d < -_TIE_TOL)),
        improvement=(mean_b - mean_a) / abs(mean_a) if mean_a != 0 else None,
        n=n,
        dropped=dropped,
    )


def _fmt(x: float | None, spec: str = ".4f", signed: bool = False) -> str:
    if x is None or not math.isfinite(x):
        return "n/a"
    return format(x, ("+" if signed else "") + spec)


@dataclass(slots=True)
class ComparisonResult:
    """What :meth:`ModelComparator.compare` returns; ``print(result)`` shows a table."""

    model_a: str
    """Name of model A (the baseline)."""
    model_b: str
    """Name of model B (the candidate)."""
    metrics: dict[str, MetricComparison]
    """Per metric, in the order requested."""
    n_inputs: int
    """Evaluation inputs."""
    samples_per_input: int
    """k: samples per input and model."""
    seed: int
    """Seed of generation, judge order and statistics."""
    confidence: float = 0.95
    """Confidence level of the intervals."""
    n_resamples: int = 10_000
    """Bootstrap / permutation resamples."""
    failures: list[dict[str, Any]] = field(default_factory=list)
    """Failed generations: ``{"input", "model", "error"}``; those inputs are dropped."""
    score_failures: dict[str, dict[str, int]] = field(default_factory=dict)
    """Failed score calls per metric and model (``{"quality": {"a": 1, "b": 0}}``;
    ``{"preference": {"pair": 2}}`` for judge calls on a pair)."""
    score_errors: dict[str, list[str]] = field(default_factory=dict)
    """Up to three distinct error messages per metric whose score calls failed."""
    scores: dict[str, dict[str, list[float | None]]] = field(default_factory=dict)
    """Per-input scores per metric: ``{"quality": {"a": [...], "b": [...]}}``."""
    input_ids: list[str] = field(default_factory=list)
    """Example ids, aligned with ``scores``."""
    samples: list[dict[str, Any]] = field(default_factory=list)
    """A few inputs with one sample of each model, for a person to read."""
    wall_time: float = 0.0
    """Seconds the comparison took."""

    @property
    def improvement(self) -> dict[str, float | None]:
        """Relative improvement ``(B - A) / |A|`` per metric (None when A's mean is 0)."""
        return {k: m.improvement for k, m in self.metrics.items()}

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (NaN becomes None)."""
        return {
            "model_a": self.model_a,
            "model_b": self.model_b,
            "n_inputs": self.n_inputs,
            "samples_per_input": self.samples_per_input,
            "seed": self.seed,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "wall_time": self.wall_time,
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "improvement": {k: _finite_or_none(v) for k, v in self.improvement.items()},
            "failures": self.failures,
            "score_failures": self.score_failures,
            "score_errors": self.score_errors,
            "input_ids": self.input_ids,
            "scores": self.scores,
            "samples": self.samples,
        }

    def to_json(self) -> bytes:
        """:meth:`to_dict` as indented JSON bytes."""
        return orjson.dumps(self.to_dict(), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ComparisonResult:
        """Read back :meth:`to_dict` output (e.g. ``comparison.json``)."""
        return cls(
            model_a=str(data.get("model_a", "A")),
            model_b=str(data.get("model_b", "B")),
            metrics={
                k: MetricComparison.from_dict(v) for k, v in dict(data.get("metrics", {})).items()
            },
            n_inputs=int(data.get("n_inputs", 0)),
            samples_per_input=int(data.get("samples_per_input", 1)),
            seed=int(data.get("seed", 0)),
            confidence=float(data.get("confidence", 0.95)),
            n_resamples=int(data.get("n_resamples", 10_000)),
            failures=list(data.get("failures", [])),
            score_failures=dict(data.get("score_failures", {})),
            score_errors=dict(data.get("score_errors", {})),
            scores=dict(data.get("scores", {})),
            input_ids=list(data.get("input_ids", [])),
            samples=list(data.get("samples", [])),
            wall_time=float(data.get("wall_time", 0.0)),
        )

    def table(self, alpha: float = 0.05) -> str:
        """The readable table ``str(result)`` returns."""
        pct = round(self.confidence * 100)
        head = (
            f"A/B comparison  A = {self.model_a}\n"
            f"                B = {self.model_b}\n"
            f"{self.n_inputs} inputs x {self.samples_per_input} samples per model, seed "
            f"{self.seed}; B - A paired per input, {pct}% bootstrap CI, permutation p-value\n"
        )
        cols = ("metric", "A", "B", "B - A", f"{pct}% CI", "p", "win/tie/loss", "improv.", "n")
        rows = []
        for m in self.metrics.values():
            star = " *" if m.significant(alpha) else "  "
            rows.append(
                (
                    m.name,
                    _fmt(m.mean_a),
                    _fmt(m.mean_b),
                    _fmt(m.diff, signed=True),
                    f"[{_fmt(m.ci_low, signed=True)}, {_fmt(m.ci_high, signed=True)}]",
                    (_fmt(m.p_value, ".4f") if m.p_value >= 1e-4 else "<1e-4") + star
                    if math.isfinite(m.p_value)
                    else "n/a",
                    f"{_fmt(m.win, '.0%')}/{_fmt(m.tie, '.0%')}/{_fmt(m.loss, '.0%')}"
                    if m.n
                    else "n/a",
                    _fmt(m.improvement, "+.1%") if m.improvement is not None else "n/a",
                    str(m.n) + (f" (-{m.dropped})" if m.dropped else ""),
                )
            )
        widths = [
            max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)
        ]

        def line(cells: Sequence[str]) -> str:  # first column left-aligned, numbers right
            return "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )

        lines = [head, line(cols), "  ".join("-" * w for w in widths)]
        lines += [line(r) for r in rows]
        foot = [f"* p < {alpha}"]
        if self.failures:
            foot.append(f"{len(self.failures)} failed generations (inputs dropped)")
        failed_scores = sum(v for per in self.score_failures.values() for v in per.values())
        if failed_scores:
            foot.append(f"{failed_scores} failed score calls (samples dropped)")
        lines.append("; ".join(foot))
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()


# ============================================================================ the comparator


ScoreFn = Callable[[Example, str], Any]


def _score_callable(obj: Any) -> ScoreFn:
    """A reward function, judge, RewardSpec or Rewarder as ``async (example, text) -> float``."""
    from ..rewards.rewarder import Rewarder, RewardSpec

    if isinstance(obj, Rewarder):

        async def via_rewarder(ex: Example, text: str) -> float:
            score = await obj.score(ex, text)
            if score.error:
                raise EngineError(score.error)
            return score.reward

        return via_rewarder
    inline = False
    fn = obj
    if isinstance(obj, RewardSpec):
        fn, inline = obj.fn, obj.inline
    if not callable(fn):
        raise TypeError(f"not a score function: {obj!r}")
    is_async = inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )

    async def call(ex: Example, text: str) -> float:
        if is_async:
            value = await fn(ex, text)
        elif inline:
            value = fn(ex, text)
        else:
            value = await anyio.to_thread.run_sync(fn, ex, text)
        if inspect.isawaitable(value):
            value = await value
        value = getattr(value, "reward", value)  # a Score-like result
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError(f"score function returned {type(value).__name__}, not a number")
        if not math.isfinite(value):
            raise ValueError(f"score function returned {value}")
        return float(value)

    return call


def _default_quality(a: Any, b: Any) -> ScoreFn | None:
    """The built-in task reward when both models are tinylm policies of the same task."""
    cfgs = [getattr(m, "run_config", None) for m in (a, b)]
    if all(c is not None and c.policy == "tinylm" for c in cfgs):
        tasks_ = {c.tinylm.task for c in cfgs}  # type: ignore[union-attr]
        if len(tasks_) == 1:
            from ..data.tasks import reward
            from ..rewards.rewarder import RewardSpec

            return _score_callable(RewardSpec("task", reward, inline=True))
    return None


def _as_example(item: Any, i: int) -> Example:
    if isinstance(item, Example):
        return item
    if isinstance(item, str):
        return Example(id=f"input-{i}", text=item, inputs={"text": item})
    if isinstance(item, Mapping):
        from ..data.jsonl import parse_example

        return parse_example(item, path="<evaluation_data>", line=i + 1)
    raise TypeError(f"evaluation item {i} is a {type(item).__name__}, not an Example or str")


class ModelComparator:
    """A/B test of two models on the same inputs; see the module docstring.

    Args:
        model_a: the baseline (a :class:`Generator`, an engine policy, or any object with an
            async ``generate(text)``).
        model_b: the candidate, likewise.
        evaluation_data: :class:`Example` objects (or strings, or dataset-line mappings).
        metrics: names among ``quality``, ``preference``, ``diversity``, ``relevance``, plus
            custom callables ``(example, text) -> float`` or ``(name, callable)`` pairs.
            ``preference`` is added when ``pairwise_judge`` is given.
        samples_per_input: k samples per input and model (diversity needs k >= 2).
        seed: seeds generation (input i gets the same seed for A and B), the judge's
            presentation order and the statistics.
        quality: reward function or judge ``(example, text) -> float``; default for tinylm
            checkpoints of one task: that task's reward.
        relevance_judge: ``(example, text) -> float``; default :func:`lexical_relevance`.
        pairwise_judge: ``(example, first, second) -> P(first better)``, e.g.
            :class:`PairwiseJudge`.
        concurrency: generation and scoring calls in flight at once.
        confidence: level of the bootstrap intervals.
        n_resamples: bootstrap and permutation resamples.
        on_progress: called with ``(inputs_done, inputs_total)`` (sync or async).
    """

    def __init__(
        self,
        model_a: Any,
        model_b: Any,
        evaluation_data: Iterable[Any],
        metrics: Sequence[str | Callable[..., Any] | tuple[str, Callable[..., Any]]] = (
            "quality",
            "diversity",
            "relevance",
        ),
        *,
        samples_per_input: int = 4,
        seed: int = 0,
        quality: Any = None,
        relevance_judge: Any = None,
        pairwise_judge: PairwiseJudgeFn | None = None,
        concurrency: int = 16,
        confidence: float = 0.95,
        n_resamples: int = 10_000,
        on_progress: Callable[[int, int], Any] | None = None,
    ) -> None:
        self.model_a = as_generator(model_a)
        self.model_b = as_generator(model_b)
        self.examples = [_as_example(x, i) for i, x in enumerate(evaluation_data)]
        if not self.examples:
            raise ValueError("evaluation_data is empty")
        if samples_per_input < 1:
            raise ValueError(f"samples_per_input must be >= 1, got {samples_per_input}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.k = samples_per_input
        self.seed = seed
        self.concurrency = concurrency
        self.confidence = confidence
        self.n_resamples = n_resamples
        self.on_progress = on_progress
        self.pairwise_judge = pairwise_judge
        # per-sample scorers, by metric name, in the requested order
        self.scorers: dict[str, ScoreFn] = {}
        self.group_metrics: list[str] = []  # diversity, distinct_1, distinct_2
        self.order: list[str] = []  # metric names in table order
        names = list(metrics)
        if pairwise_judge is not None and "preference" not in names:
            names.insert(1 if "quality" in names else 0, "preference")
        for m in names:
            if isinstance(m, str):
                self._add_builtin(m, quality, relevance_judge)
            elif isinstance(m, tuple):
                name, fn = m
                self._add_custom(str(name), fn)
            elif callable(m):
                self._add_custom(getattr(m, "__name__", f"metric{len(self.order)}"), m)
            else:
                raise TypeError(f"not a metric: {m!r}")

    def _add_builtin(self, name: str, quality: Any, relevance_judge: Any) -> None:
        if name == "quality":
            fn = _score_callable(quality) if quality is not None else None
            fn = fn or _default_quality(self.model_a, self.model_b)
            if fn is None:
                raise ValueError(
                    "metric 'quality' needs quality= (a reward function or judge); only "
                    "tinylm checkpoints of one task have a default"
                )
            self.scorers["quality"] = fn
            self.order.append("quality")
        elif name == "preference":
            if self.pairwise_judge is None:
                raise ValueError("metric 'preference' needs pairwise_judge=")
            self.order.append("preference")
        elif name == "diversity":
            if self.k < 2:
                raise ValueError("metric 'diversity' needs samples_per_input >= 2")
            self.group_metrics += ["diversity", "distinct_1", "distinct_2"]
            self.order += ["diversity", "distinct_1", "distinct_2"]
        elif name == "relevance":
            self.scorers["relevance"] = _score_callable(
                relevance_judge if relevance_judge is not None else _inline(lexical_relevance)
            )
            self.order.append("relevance")
        else:
            raise ValueError(
                f"unknown metric {name!r}; built-in: {', '.join(BUILTIN_METRICS)} "
                "(or pass a callable)"
            )

    def _add_custom(self, name: str, fn: Callable[..., Any]) -> None:
        if name in self.order:
            raise ValueError(f"metric name {name!r} is used twice")
        self.scorers[name] = _score_callable(fn)
        self.order.append(name)

    async def compare(self) -> ComparisonResult:
        """Generate, score and test; see the module docstring. Never blocks the event loop."""
        t0 = anyio.current_time()
        n, k = len(self.examples), self.k
        limiter = anyio.CapacityLimiter(self.concurrency)
        # (n, k) raw sample scores per metric and side; NaN = failed or not computed
        raw = {
            name: {side: np.full((n, k), np.nan) for side in ("a", "b")} for name in self.scorers
        }
        per_input = {
            name: {side: np.full(n, np.nan) for side in ("a", "b")} for name in self.group_metrics
        }
        pref = np.full((n, k), np.nan)  # P(B better) per sample
        failures: list[dict[str, Any]] = []
        score_fail = {name: {"a": 0, "b": 0} for name in self.scorers}
        score_fail["preference"] = {"pair": 0}
        score_errors: dict[str, list[str]] = {}  # a few distinct messages per metric

        def record(name: str, who: str, exc: Exception) -> None:
            score_fail[name][who] += 1
            msgs = score_errors.setdefault(name, [])
            msg = f"{type(exc).__name__}: {exc}"
            if len(msgs) < 3 and msg not in msgs:
                msgs.append(msg)

        texts: list[dict[str, list[str]] | None] = [None] * n
        done = 0
        input_seeds = np.random.SeedSequence(self.seed).generate_state(n, dtype=np.uint32)

        async def limited(fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
            async with limiter:
                return await fn(*args)

        async def gen(side: str, model: Any, i: int, out: dict[str, list[str]]) -> None:
            ex = self.examples[i]
            try:
                got = list(await limited(model.generate, ex, k, int(input_seeds[i])))
                if len(got) != k or not all(isinstance(t, str) for t in got):
                    raise EngineError(f"generate returned {len(got)} items, expected {k} texts")
                out[side] = got
            except Exception as exc:
                failures.append(
                    {"input": ex.id, "model": side, "error": f"{type(exc).__name__}: {exc}"}
                )

        async def score(name: str, side: str, i: int, j: int, text: str) -> None:
            try:
                raw[name][side][i, j] = await limited(self.scorers[name], self.examples[i], text)
            except Exception as exc:  # recorded; the sample leaves its input's mean
                record(name, side, exc)

        async def judge(i: int, j: int, ta: str, tb: str) -> None:
            assert self.pairwise_judge is not None
            b_first = bool(np.random.default_rng([self.seed, i, j]).integers(2))
            first, second = (tb, ta) if b_first else (ta, tb)
            try:
                p = await limited(
                    _call_pairwise, self.pairwise_judge, self.examples[i], first, second
                )
            except Exception as exc:
                record("preference", "pair", exc)
                return
            pref[i, j] = p if b_first else 1.0 - p

        async def one(i: int) -> None:
            nonlocal done
            out: dict[str, list[str]] = {}
            async with anyio.create_task_group() as tg:
                tg.start_soon(gen, "a", self.model_a, i, out)
                tg.start_soon(gen, "b", self.model_b, i, out)
            if len(out) == 2:
                texts[i] = out
                async with anyio.create_task_group() as tg:
                    for name in self.scorers:
                        for side in ("a", "b"):
                            for j, t in enumerate(out[side]):
                                tg.start_soon(score, name, side, i, j, t)
                    if "preference" in self.order:
                        for j in range(k):
                            tg.start_soon(judge, i, j, out["a"][j], out["b"][j])
                if self.group_metrics:  # O(k^2) pairs of texts: off the event loop
                    for side in ("a", "b"):
                        got = await anyio.to_thread.run_sync(_group_metrics, out[side])
                        for name, value in got.items():
                            per_input[name][side][i] = value
            done += 1
            if self.on_progress is not None:
                res = self.on_progress(done, n)
                if inspect.isawaitable(res):
                    await res

        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(one, i)

        # per-input values: the mean over valid samples (NaN when none is valid)
        values: dict[str, dict[str, np.ndarray]] = {}
        for name in self.order:
            if name in self.scorers:
                values[name] = {s: _nanmean_rows(raw[name][s]) for s in ("a", "b")}
            elif name == "preference":
                pb = _nanmean_rows(pref)
                values[name] = {"a": 1.0 - pb, "b": pb}
            else:
                values[name] = per_input[name]
        stats_seeds = np.random.SeedSequence([self.seed, 1]).spawn(len(self.order))
        metrics = {}
        for name, ss in zip(self.order, stats_seeds, strict=True):
            metrics[name] = await anyio.to_thread.run_sync(
                lambda name=name, ss=ss: compare_scores(
                    name,
                    values[name]["a"],
                    values[name]["b"],
                    confidence=self.confidence,
                    n_resamples=self.n_resamples,
                    seed=ss.generate_state(4),
                )
            )
        failures.sort(key=lambda f: (f["input"], f["model"]))
        samples = [
            {
                "id": self.examples[i].id,
                "input": self.examples[i].text,
                "a": t["a"][0],
                "b": t["b"][0],
            }
            for i, t in enumerate(texts)
            if t is not None
        ][:5]
        return ComparisonResult(
            model_a=str(getattr(self.model_a, "name", "A")),
            model_b=str(getattr(self.model_b, "name", "B")),
            metrics=metrics,
            n_inputs=n,
            samples_per_input=k,
            seed=self.seed,
            confidence=self.confidence,
            n_resamples=self.n_resamples,
            failures=failures,
            score_failures={name: v for name, v in score_fail.items() if name in self.order},
            score_errors=score_errors,
            scores={
                name: {s: [_finite_or_none(x) for x in v[s]] for s in ("a", "b")}
                for name, v in values.items()
            },
            input_ids=[ex.id for ex in self.examples],
            samples=samples,
            wall_time=anyio.current_time() - t0,
        )


def _inline(fn: Callable[[Example, str], float]) -> Any:
    from ..rewards.rewarder import RewardSpec

    return RewardSpec(getattr(fn, "__name__", "fn"), fn, inline=True)


async def _call_pairwise(judge: PairwiseJudgeFn, ex: Example, first: str, second: str) -> float:
    value = judge(ex, first, second)
    if inspect.isawaitable(value):
        value = await value
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"pairwise judge returned {value!r}, expected a number in [0, 1]")
    return float(value)


def _group_metrics(texts: Sequence[str]) -> dict[str, float]:
    return {
        "diversity": diversity(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
    }


def _nanmean_rows(x: np.ndarray) -> np.ndarray:
    """Row means over finite entries; NaN for rows with none. (n, k) -> (n,)."""
    ok = np.isfinite(x)
    cnt = ok.sum(axis=1)
    total = np.where(ok, x, 0.0).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(cnt > 0, total / np.maximum(cnt, 1), np.nan)
