"""A/B testing: statistics against hand cases and enumeration, lexical metrics, the comparator
on real tinylm checkpoints (a trained B beats its step-0 A; A vs A shows nothing), the
false-positive rate of the whole procedure, failures, judges, endpoints and the CLI."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
import pytest

from engine.config.schema import load_config
from engine.data.tasks import reward as task_reward
from engine.errors import CheckpointError, ConfigError
from engine.evaluation.compare import (
    ComparisonResult,
    ModelComparator,
    PolicyGenerator,
    TextModelGenerator,
    bootstrap_ci,
    compare_scores,
    distinct_n,
    diversity,
    heldout_examples,
    lexical_relevance,
    load_generator,
    ngram_overlap,
    paired_permutation_test,
)
from engine.policies.prompt import PromptPolicy
from engine.training.finetune import FineTunedModel
from engine.training.trainer import TrainingManager
from engine.types import Example

TRAIN = [
    "steps=12",
    "optim.lr=0.01",
    "data.batch_size=8",
    "grpo.group_size=8",
    "data.num_examples=500",
    "trainer.eval_every=0",
    "trainer.checkpoint_every=0",
]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short tinylm run (12 steps at lr 0.01) whose final checkpoint beats its step-0 policy."""
    out = tmp_path_factory.mktemp("compare") / "run"

    async def train() -> None:
        async with TrainingManager(load_config(None, TRAIN), out=out) as tm:
            await tm.run()

    anyio.run(train)
    return out


# ============================================================================ statistics


def test_bootstrap_ci_hand_cases() -> None:
    """Empty, single, constant, and small cases whose bootstrap quantiles are known exactly."""
    assert all(math.isnan(x) for x in bootstrap_ci([]))
    assert bootstrap_ci([0.7]) == (0.7, 0.7)
    assert bootstrap_ci([2.0] * 9) == (2.0, 2.0)
    # {0, 1}: resample means 0, 1/2, 1 with probability 1/4, 1/2, 1/4: the 2.5% and 97.5%
    # quantiles are the extremes.
    assert bootstrap_ci([0.0, 1.0]) == (0.0, 1.0)
    # [0, 1, 5]: 27 equally likely resamples. Each extreme (0 or 5) has probability
    # 1/27 = 3.7% > 2.5%, so the 95% CI is [0, 5]; at 90% the 5% quantile passes 0 (3.7%)
    # and lands on 1/3 (cumulative 14.8%), symmetrically 11/3 at the top.
    assert bootstrap_ci([0.0, 1.0, 5.0]) == (0.0, 5.0)
    lo, hi = bootstrap_ci([0.0, 1.0, 5.0], confidence=0.90)
    assert lo == pytest.approx(1 / 3) and hi == pytest.approx(11 / 3)


def test_bootstrap_ci_normal_theory_and_determinism() -> None:
    """For n=400 the CI is close to mean ± 1.96 sd/sqrt(n); the same seed gives the same CI."""
    d = np.random.default_rng(1).normal(0.3, 1.0, size=400)
    lo, hi = bootstrap_ci(d, seed=5)
    half = 1.96 * d.std(ddof=1) / math.sqrt(d.size)
    assert lo == pytest.approx(d.mean() - half, abs=0.1 * half)
    assert hi == pytest.approx(d.mean() + half, abs=0.1 * half)
    assert bootstrap_ci(d, seed=5) == (lo, hi)
    assert bootstrap_ci(d, seed=6) != (lo, hi)
    with pytest.raises(ValueError):
        bootstrap_ci([1.0, math.nan])


def _brute_force_p(d: list[float]) -> float:
    obs = abs(sum(d))
    sums = [
        abs(sum(s * x for s, x in zip(signs, d, strict=True)))
        for signs in itertools.product((-1, 1), repeat=len(d))
    ]
    return sum(s >= obs - 1e-12 for s in sums) / len(sums)


def test_permutation_test_hand_cases() -> None:
    """Hand-computed exact p-values: all equal signs, a single value, zeros, no data."""
    assert paired_permutation_test([1.0, 1.0, 1.0]) == 0.25  # only +++ and --- reach |3|
    assert paired_permutation_test([1.0] * 5) == 2 / 32
    assert paired_permutation_test([3.0]) == 1.0
    assert paired_permutation_test([0.0, 0.0]) == 1.0
    assert paired_permutation_test([]) == 1.0
    # [1, 2, 3]: |sum| = 6 only for +++/---; 4 for ++- (1+2-3=0 no) ... count by hand:
    # sign sums: 6, 0, 2, -4, 4, -2, 0, -6 -> |.| >= 6 twice -> 2/8
    assert paired_permutation_test([1.0, 2.0, 3.0]) == 0.25


@pytest.mark.parametrize("n", [1, 2, 5, 8, 11])
def test_permutation_exact_matches_brute_force(n: int) -> None:
    """Vectorized exact enumeration equals a plain loop over all 2**n sign assignments."""
    rng = np.random.default_rng(n)
    for _ in range(5):
        d = [float(x) for x in rng.integers(-3, 4, size=n)]  # integers: many ties
        assert paired_permutation_test(d) == pytest.approx(_brute_force_p(d))


def test_permutation_monte_carlo_agrees_with_exact() -> None:
    """Above the exact limit the Monte Carlo p-value is close to the exact one, never 0."""
    d = np.random.default_rng(3).normal(0.4, 1.0, size=16)
    exact = paired_permutation_test(d)
    mc = paired_permutation_test(d, exact_max_n=0, n_resamples=50_000, seed=1)
    assert mc == pytest.approx(exact, abs=0.01)
    assert paired_permutation_test(np.ones(40), n_resamples=999) == 1 / 1000


def test_compare_scores_fields() -> None:
    """Means, paired difference, win/tie/loss, relative improvement and dropped pairs."""
    m = compare_scores("q", [1.0, 2.0, 3.0, math.nan], [2.0, 2.0, 5.0, 1.0])
    assert (m.n, m.dropped) == (3, 1)
    assert m.mean_a == 2.0 and m.mean_b == 3.0 and m.diff == 1.0
    assert (m.win, m.tie, m.loss) == pytest.approx((2 / 3, 1 / 3, 0.0))
    assert m.improvement == pytest.approx(0.5)
    assert compare_scores("z", [0.0, 0.0], [1.0, 1.0]).improvement is None  # A == 0


# ============================================================================ lexical metrics


def test_distinct_n_and_overlap_hand_cases() -> None:
    """distinct-n and the pairwise n-gram overlap on hand-counted texts."""
    assert distinct_n(["a b a", "b c"], 1) == pytest.approx(3 / 5)
    assert distinct_n(["a b a", "b c"], 2) == pytest.approx(3 / 3)
    assert distinct_n(["", ""], 1) == 0.0
    # unigrams {a,b,c} vs {a,b,d}: 2/4; bigrams {ab,bc} vs {ab,bd}: 1/3
    assert ngram_overlap("a b c", "a b d") == pytest.approx((2 / 4 + 1 / 3) / 2)
    assert ngram_overlap("A, b!", "a b") == 1.0  # tokens are lower-cased \w+ runs
    assert ngram_overlap("a", "b") == 0.0  # no bigrams on either side: unigrams only
    assert ngram_overlap("", "") == 1.0


def test_diversity_hand_cases() -> None:
    """Identical samples have diversity 0, disjoint ones 1; one sample has none defined."""
    assert diversity(["x y", "x y", "x y"]) == 0.0
    assert diversity(["a", "b", "c"]) == 1.0
    assert diversity(["a b c", "a b d"]) == pytest.approx(1 - (2 / 4 + 1 / 3) / 2)
    assert math.isnan(diversity(["only one"]))


def test_lexical_relevance_hand_cases() -> None:
    """Bag-of-words F1 between input and output, with multiplicity."""
    ex = Example(id="t", text="reverse: 3 1 4 1")
    # input tokens reverse 3 1 4 1 (5), output 1 4 1 3 (4): 4 shared -> P=1, R=0.8
    assert lexical_relevance(ex, "1 4 1 3") == pytest.approx(2 * 0.8 / 1.8)
    assert lexical_relevance(ex, "") == 0.0
    assert lexical_relevance("cats purr", "dogs bark") == 0.0
    assert lexical_relevance("cats purr", "cats purr") == 1.0


# ============================================================================ comparator


async def test_trained_checkpoint_beats_step0(trained_run: Path) -> None:
    """B (12 steps of GRPO) beats A (its step-0 policy) on quality: p < 0.05, CI above 0."""
    a = await load_generator(f"{trained_run}#ref")
    b = await load_generator(trained_run)
    assert a.name.endswith("(step 0)") and b.name.endswith("(step 12)")
    examples = heldout_examples(b.run_config, limit=48)
    result = await ModelComparator(a, b, examples, samples_per_input=4, seed=0).compare()
    q = result.metrics["quality"]
    assert q.p_value < 0.05 and q.ci_low > 0 and q.diff > 0.05, str(result)
    assert q.mean_b > q.mean_a and result.improvement["quality"] > 0
    assert list(result.metrics) == ["quality", "diversity", "distinct_1", "distinct_2", "relevance"]
    assert result.n_inputs == 48 and not result.failures
    text = str(result)
    assert "quality" in text and "B - A" in text and "95% CI" in text


async def test_same_model_shows_nothing(trained_run: Path) -> None:
    """A vs A with the same seeds: every paired difference is 0, p = 1, CI = [0, 0]."""
    a = await load_generator(trained_run)
    examples = heldout_examples(a.run_config, limit=24)
    result = await ModelComparator(a, a, examples, samples_per_input=3).compare()
    for m in result.metrics.values():
        assert m.diff == 0.0 and m.p_value == 1.0 and (m.ci_low, m.ci_high) == (0.0, 0.0)
        assert m.tie == 1.0


class _SeedShift:
    """The same model sampled with other seeds (an independent draw of the same model)."""

    def __init__(self, inner: Any, shift: int) -> None:
        self.inner, self.shift, self.name = inner, shift, f"{inner.name} (seed +{shift})"
        self.run_config = inner.run_config  # same task: the task reward is the default quality

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        return await self.inner.generate(example, n, seed + self.shift)


async def test_same_model_other_seeds_not_significant(trained_run: Path) -> None:
    """A vs A sampled with different seeds: no significant quality difference."""
    a = await load_generator(trained_run)
    examples = heldout_examples(a.run_config, limit=48)
    result = await ModelComparator(
        a, _SeedShift(a, 1000), examples, ["quality"], samples_per_input=4
    ).compare()
    q = result.metrics["quality"]
    assert q.p_value > 0.05 and q.ci_low < 0 < q.ci_high, str(result)


async def test_false_positive_rate_same_model(trained_run: Path) -> None:
    """Same model on both sides, 400 repetitions: p < 0.05 in about 5% of them."""
    # Generations are reused: 32 samples per input are drawn once; each repetition gives A
    # and B disjoint random subsets of k=4 of them (the same model, other sampling seeds).
    gen = await load_generator(trained_run)
    examples = heldout_examples(gen.run_config, limit=40)
    pool = np.array(
        [
            [task_reward(ex, t) for t in await gen.generate(ex, 32, 7 + i)]
            for i, ex in enumerate(examples)
        ]
    )  # (40, 32)
    rng = np.random.default_rng(0)
    reps, k = 400, 4

    def run() -> tuple[float, float]:
        p_hits = ci_hits = 0
        for r in range(reps):
            order = rng.permuted(np.tile(np.arange(pool.shape[1]), (pool.shape[0], 1)), axis=1)
            a = np.take_along_axis(pool, order[:, :k], axis=1).mean(axis=1)  # (40,)
            b = np.take_along_axis(pool, order[:, k : 2 * k], axis=1).mean(axis=1)
            m = compare_scores("quality", a, b, n_resamples=2000, seed=r)
            p_hits += m.p_value < 0.05
            ci_hits += not (m.ci_low <= 0 <= m.ci_high)
        return p_hits / reps, ci_hits / reps

    fp_p, fp_ci = await anyio.to_thread.run_sync(run)
    print(f"false-positive rate over {reps} repetitions: permutation {fp_p:.3f}, CI {fp_ci:.3f}")
    assert 0.01 <= fp_p <= 0.10
    assert 0.01 <= fp_ci <= 0.12  # the percentile bootstrap runs a little liberal at n=40


def test_false_positive_rate_synthetic() -> None:
    """Paired scores from one distribution, 400 repetitions: about 5% significant."""
    rng = np.random.default_rng(42)
    reps, n = 400, 30
    p_hits = ci_hits = 0
    for r in range(reps):
        a = rng.beta(2, 5, size=n)
        b = rng.beta(2, 5, size=n)
        m = compare_scores("x", a, b, n_resamples=2000, seed=r)
        p_hits += m.p_value < 0.05
        ci_hits += not (m.ci_low <= 0 <= m.ci_high)
    print(
        f"synthetic false-positive rate: permutation {p_hits / reps:.3f}, CI {ci_hits / reps:.3f}"
    )
    assert 0.01 <= p_hits / reps <= 0.10
    assert 0.01 <= ci_hits / reps <= 0.12


class _Echo:
    """A fake Generator: sample j of input x is ``f"{x.text} {tag}{j}"``; fails on demand."""

    def __init__(self, tag: str, fail_on: str = "") -> None:
        self.tag, self.fail_on, self.name, self.calls = tag, fail_on, f"echo-{tag}", 0

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        self.calls += 1
        if example.id == self.fail_on:
            raise RuntimeError("boom")
        return [f"{example.text} {self.tag}{j % 2}" for j in range(n)]


def _exs(n: int) -> list[Example]:
    return [Example(id=f"e{i}", text=f"word{i} shared") for i in range(n)]


async def test_failures_are_recorded_and_dropped_not_zeroed() -> None:
    """A failed generation drops its input for both models; a failed score drops its sample."""

    def quality(ex: Example, text: str) -> float:
        if ex.id == "e2" and text.endswith("b1"):
            raise ValueError("bad score")
        return len(text) / 100

    result = await ModelComparator(
        _Echo("a"),
        _Echo("bb", fail_on="e1"),
        _exs(6),
        ["quality"],
        samples_per_input=2,
        quality=quality,
    ).compare()
    q = result.metrics["quality"]
    assert result.failures == [{"input": "e1", "model": "b", "error": "RuntimeError: boom"}]
    assert (q.n, q.dropped) == (5, 1)
    assert result.score_failures["quality"] == {"a": 0, "b": 1}
    assert result.score_errors == {"quality": ["ValueError: bad score"]}
    assert result.scores["quality"]["b"][1] is None  # the dropped input, not a 0
    assert result.scores["quality"]["b"][2] == pytest.approx(len("word2 shared bb0") / 100)
    assert "1 failed generations" in str(result)


async def test_custom_metrics_and_serialization() -> None:
    """Custom callables (sync, async, named) join the table; to_json round-trips."""

    async def length(ex: Example, text: str) -> float:
        return float(len(text.split()))

    result = await ModelComparator(
        _Echo("a"),
        _Echo("b"),
        _exs(5),
        ["relevance", length, ("has_b", lambda ex, t: float("b" in t.split()[-1]))],
        samples_per_input=2,
    ).compare()
    assert list(result.metrics) == ["relevance", "length", "has_b"]
    assert result.metrics["has_b"].diff == 1.0 and result.metrics["has_b"].win == 1.0
    assert result.metrics["has_b"].improvement is None  # A's mean is 0
    assert result.metrics["length"].p_value == 1.0
    data = orjson.loads(result.to_json())
    back = ComparisonResult.from_dict(data)
    assert back.to_dict() == result.to_dict()
    assert data["improvement"]["has_b"] is None and len(data["scores"]["length"]["a"]) == 5


async def test_pairwise_judge_order_is_randomized() -> None:
    """A judge that always prefers the first shown text gives B about half the preference."""
    seen: list[tuple[str, str]] = []

    async def first_wins(ex: Example, first: str, second: str) -> float:
        seen.append((first, second))
        return 1.0

    result = await ModelComparator(
        _Echo("a"), _Echo("b"), _exs(40), [], samples_per_input=2, pairwise_judge=first_wins
    ).compare()
    pref = result.metrics["preference"]
    assert 0.3 < pref.mean_b < 0.7 and pref.p_value > 0.05
    assert pref.mean_a + pref.mean_b == pytest.approx(1.0)
    b_first = sum(f.split()[-1].startswith("b") for f, _ in seen)
    assert 0 < b_first < len(seen) == 80

    async def likes_b(ex: Example, first: str, second: str) -> float:
        return 1.0 if first.split()[-1].startswith("b") else 0.0

    result = await ModelComparator(
        _Echo("a"), _Echo("b"), _exs(20), [], samples_per_input=2, pairwise_judge=likes_b
    ).compare()
    assert result.metrics["preference"].mean_b == 1.0
    assert result.metrics["preference"].p_value < 0.05


def test_metric_validation() -> None:
    """Unknown metrics, diversity with k=1, quality without a default: clear errors."""
    with pytest.raises(ValueError, match="unknown metric"):
        ModelComparator(_Echo("a"), _Echo("b"), _exs(2), ["fluency"])
    with pytest.raises(ValueError, match="samples_per_input >= 2"):
        ModelComparator(_Echo("a"), _Echo("b"), _exs(2), ["diversity"], samples_per_input=1)
    with pytest.raises(ValueError, match="needs quality="):
        ModelComparator(_Echo("a"), _Echo("b"), _exs(2), ["quality"])
    with pytest.raises(ValueError, match="needs pairwise_judge"):
        ModelComparator(_Echo("a"), _Echo("b"), _exs(2), ["preference"])


async def test_text_model_adapter_passes_seed_and_sample() -> None:
    """An object with async generate(text, sample=, seed=) is wrapped: n calls, seeds seed+i."""

    class Model:
        def __init__(self) -> None:
            self.kwargs: list[dict[str, Any]] = []

        async def generate(self, text: str, *, sample: bool = False, seed: int = 0) -> Any:
            self.kwargs.append({"sample": sample, "seed": seed})
            return {"generated": f"{text}/{seed}"}

    m = Model()
    gen = TextModelGenerator(m, name="ft")
    out = await gen.generate(Example(id="x", text="hi"), 3, 10)
    assert out == ["hi/10", "hi/11", "hi/12"]
    assert sorted(k["seed"] for k in m.kwargs) == [10, 11, 12] and all(
        k["sample"] for k in m.kwargs
    )
    result = await ModelComparator(m, gen, _exs(3), ["relevance"], samples_per_input=2).compare()
    assert result.model_a == "Model" and result.model_b == "ft"


async def test_policy_adapter_wraps_a_live_policy() -> None:
    """An engine policy object is compared directly (its current parameters)."""
    from engine.config.schema import TinyLMConfig
    from engine.data.tasks import make_examples
    from engine.policies.tinylm import TinyLM

    cfg = TinyLMConfig()
    pol = TinyLM(cfg, seed=0)
    exs = make_examples(cfg, 8, seed=0)
    result = await ModelComparator(
        pol,
        PolicyGenerator(pol, name="same"),
        exs,
        ["quality"],
        samples_per_input=2,
        quality=task_reward,
    ).compare()
    assert result.metrics["quality"].diff == 0.0


def test_heldout_examples_follow_the_trainer_split(tmp_path: Path) -> None:
    """Held-out inputs: the task split (tinylm), the sentiment split (prompt), data.eval."""
    from engine.data.jsonl import is_heldout

    tiny = load_config(None, ["data.num_examples=300"])
    held = heldout_examples(tiny)
    assert held and all(is_heldout(ex, tiny.data.eval_fraction, tiny.seed) for ex in held)
    assert len(heldout_examples(tiny, limit=5)) == 5
    prompt_cfg = load_config(None, ["policy='prompt'"])
    held = heldout_examples(prompt_cfg)
    assert held and all(ex.target in ("positive", "negative") for ex in held)
    data = tmp_path / "eval.jsonl"
    data.write_bytes(b'{"prompt": "q1"}\n{"prompt": "q2"}\n')
    assert [ex.text for ex in heldout_examples(load_config(None, [f"data.eval='{data}'"]))] == [
        "q1",
        "q2",
    ]


async def test_load_generator_errors(tmp_path: Path) -> None:
    """Specs that are neither checkpoint, run dir nor config fail with a clear error."""
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        await load_generator(tmp_path)
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(CheckpointError, match="no loadable checkpoint"):
        await load_generator(tmp_path)


async def test_endpoint_config_spec_against_sim(tmp_path: Path) -> None:
    """A TOML spec is a fixed prompt on its endpoint (here the simulated server)."""
    from engine.testing.sim import SimConfig, SimServer

    async with SimServer(SimConfig(latency=0.0)) as sim:
        base = tmp_path / "base.toml"
        base.write_text(f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n')
        tuned = tmp_path / "tuned.toml"
        tuned.write_text(
            f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
            '[prompt]\ninstructions = ["Write about gradient policy reward."]\n'
        )
        a, b = await load_generator(base), await load_generator(tuned)
        try:
            exs = [Example(id=f"q{i}", text=f"question {i}") for i in range(12)]
            result = await ModelComparator(
                a, b, exs, ["relevance", "diversity"], samples_per_input=3, seed=1
            ).compare()
        finally:
            await a.aclose()
            await b.aclose()
    assert a.render(exs[0]) == "question 0"  # no instruction: the input alone
    assert b.render(exs[0]) == [  # the prompt policy's base prompt, chat mode
        {"role": "system", "content": "Write about gradient policy reward."},
        {"role": "user", "content": "question 0"},
    ]
    assert result.metrics["relevance"].n == 12 and not result.failures
    assert sim.statistics().requests >= 24


def _good_share(ex: Example, text: str) -> float:
    from engine.testing.sim import GOOD_WORDS

    words = text.split()
    return sum(w in GOOD_WORDS for w in words) / max(1, len(words))


async def test_prompt_policy_checkpoint_against_sim(tmp_path: Path) -> None:
    """A prompt-policy checkpoint loads on its endpoint; '#ref' is its initial distribution."""
    # B's logits favour an instruction full of words the simulated model then prefers, so B's
    # answers use more of them than A's (the uniform initial distribution).
    from engine.config.schema import to_dict
    from engine.endpoints.client import Client
    from engine.learning.checkpoint import save_checkpoint
    from engine.testing.sim import SimConfig, SimServer

    async with SimServer(SimConfig(latency=0.0)) as sim:
        cfg = load_config(
            None,
            [
                "policy='prompt'",
                f"endpoint.base_url='{sim.base_url}'",
                "endpoint.model='sim'",
                "prompt.instructions=['Answer.', 'Be accurate clear concise correct helpful.']",
            ],
        )
        async with Client(cfg.endpoint) as client:
            policy = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint)
            policy.parameters()["logits"][1] = 8.0  # nearly always the second instruction
            arrays, meta = policy.state()
        save_checkpoint(
            tmp_path / "checkpoints" / "step-3",
            {f"policy/{k}": v for k, v in arrays.items()},
            {"policy": meta, "config": to_dict(cfg), "step": 3},
        )
        a = await load_generator(f"{tmp_path}#ref")
        b = await load_generator(tmp_path)
        try:
            exs = [Example(id=f"q{i}", text=f"question {i}") for i in range(16)]
            result = await ModelComparator(
                a, b, exs, [("good_words", _good_share)], samples_per_input=4
            ).compare()
        finally:
            await a.aclose()
            await b.aclose()
    assert a.name.endswith("(step 0)") and b.name.endswith("(step 3)")
    m = result.metrics["good_words"]
    assert not result.failures and m.diff > 0 and m.p_value < 0.05, str(result)


async def test_finetuned_model_adapter_against_sim(tmp_path: Path) -> None:
    """A FineTunedModel (async generate(text, sample=, seed=)) compares as a Generator."""
    from engine.endpoints.client import Client
    from engine.testing.sim import SimConfig, SimServer

    async with SimServer(SimConfig(latency=0.0)) as sim:
        cfg = load_config(
            None,
            [
                "policy='prompt'",
                f"endpoint.base_url='{sim.base_url}'",
                "endpoint.model='sim'",
                "prompt.instructions=['Answer.', 'Be accurate clear concise correct helpful.']",
            ],
        )
        client = Client(cfg.endpoint)
        policy = PromptPolicy(client, cfg.prompt, endpoint=cfg.endpoint)
        policy.parameters()["logits"][1] = 8.0
        async with FineTunedModel(policy, cfg, clients=[client]) as model:
            toml = tmp_path / "base.toml"
            toml.write_text(
                f'[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
                '[prompt]\ninstructions = ["Answer."]\n'
            )
            base = await load_generator(toml)
            try:
                exs = [Example(id=f"q{i}", text=f"question {i}") for i in range(16)]
                result = await ModelComparator(
                    base, model, exs, [("good_words", _good_share)], samples_per_input=3
                ).compare()
            finally:
                await base.aclose()
    assert result.model_b == "FineTunedModel" and not result.failures
    m = result.metrics["good_words"]
    assert m.diff > 0 and m.p_value < 0.05, str(result)


async def test_pairwise_llm_judge_against_sim() -> None:
    """PairwiseJudge (a GroupJudge of two) prefers the sim judge's higher-scored text."""
    from engine.config.schema import EndpointConfig
    from engine.endpoints.client import Client
    from engine.evaluation.compare import PairwiseJudge
    from engine.testing.sim import GOOD_WORDS, SimConfig, SimServer

    good = " ".join(sorted(GOOD_WORDS)[:4])
    async with (
        SimServer(SimConfig(latency=0.0)) as sim,
        Client(EndpointConfig(base_url=sim.base_url, model="sim")) as client,
    ):
        judge = PairwiseJudge(client, sim_marker=True)
        ex = Example(id="x", text="say something")
        assert await judge(ex, good, "zzz qqq") == 1.0
        assert await judge(ex, "zzz qqq", good) == 0.0
        assert await judge(ex, "same", "same") == 0.5


# ============================================================================ CLI


def test_cli_compare_writes_json_and_table(trained_run: Path, tmp_path: Path) -> None:
    """python -m engine compare prints the table and writes OUT/comparison.json."""
    out = tmp_path / "cmp"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "compare",
            "--a",
            f"{trained_run}#ref",
            "--b",
            str(trained_run),
            "--samples",
            "2",
            "--limit",
            "16",
            "--resamples",
            "1000",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "quality" in proc.stdout and "B - A" in proc.stdout
    assert "compare    16/16 inputs" in proc.stderr
    data = orjson.loads((out / "comparison.json").read_bytes())
    assert data["n_inputs"] == 16 and set(data["metrics"]) >= {"quality", "diversity", "relevance"}


async def test_cli_compare_configs_on_sim_use_config_rewards(tmp_path: Path) -> None:
    """Two TOML specs on the simulated server, --data FILE: quality is B's [reward]."""
    from engine.testing.sim import SimConfig, SimServer

    data = tmp_path / "eval.jsonl"
    data.write_bytes(
        b"".join(
            orjson.dumps({"prompt": f"question {i}", "answer": "x"}) + b"\n" for i in range(10)
        )
    )
    async with SimServer(SimConfig(latency=0.0)) as sim:
        for name, extra in (("a", ""), ("b", 'instructions = ["Be accurate."]\n')):
            (tmp_path / f"{name}.toml").write_text(
                f'policy = "prompt"\n[endpoint]\nbase_url = "{sim.base_url}"\nmodel = "sim"\n'
                f'[prompt]\n{extra}[reward]\nfunctions = ["non_empty"]\n'
            )
        proc = await anyio.run_process(
            [
                sys.executable,
                "-m",
                "engine",
                "compare",
                "--a",
                str(tmp_path / "a.toml"),
                "--b",
                str(tmp_path / "b.toml"),
                "--data",
                str(data),
                "--samples",
                "2",
                "--resamples",
                "500",
                "--quiet",
            ],
            check=False,
        )
    assert proc.returncode == 0, proc.stderr.decode()
    out = proc.stdout.decode()
    assert "quality" in out and "relevance" in out and "10 inputs x 2 samples" in out
    assert "1.0000  1.0000" in out  # non_empty: every sim answer has words


def test_cli_compare_bad_spec_exit_2(tmp_path: Path) -> None:
    """A spec that is not a model ends with one readable line and exit status 2."""
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "compare", "--a", str(tmp_path), "--b", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "not a checkpoint directory" in lines[0]
