"""The comparator on real tinylm checkpoints (a trained B beats its step-0 A; A vs A shows
nothing), the false-positive rate of the whole procedure, failures, custom metrics and the
pairwise judge's presentation order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import orjson
import pytest

from engine.data.tasks import reward as task_reward
from engine.evaluation.compare import (
    ComparisonResult,
    ModelComparator,
    compare_scores,
    heldout_examples,
    load_generator,
)
from engine.types import Example
from tests.evaluation.runs import train_tinylm, word_examples


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short tinylm run (12 steps at lr 0.01) whose final checkpoint beats its step-0 policy."""
    return train_tinylm(tmp_path_factory.mktemp("compare") / "run")


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


class _Echo:
    """A fake Generator: sample j of input x is ``f"{x.text} {tag}{j}"``; fails on demand."""

    def __init__(self, tag: str, fail_on: str = "") -> None:
        self.tag, self.fail_on, self.name, self.calls = tag, fail_on, f"echo-{tag}", 0

    async def generate(self, example: Example, n: int, seed: int) -> list[str]:
        self.calls += 1
        if example.id == self.fail_on:
            raise RuntimeError("boom")
        return [f"{example.text} {self.tag}{j % 2}" for j in range(n)]


async def test_failures_are_recorded_and_dropped_not_zeroed() -> None:
    """A failed generation drops its input for both models; a failed score drops its sample."""

    def quality(ex: Example, text: str) -> float:
        if ex.id == "e2" and text.endswith("b1"):
            raise ValueError("bad score")
        return len(text) / 100

    result = await ModelComparator(
        _Echo("a"),
        _Echo("bb", fail_on="e1"),
        word_examples(6),
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
        word_examples(5),
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
        _Echo("a"),
        _Echo("b"),
        word_examples(40),
        [],
        samples_per_input=2,
        pairwise_judge=first_wins,
    ).compare()
    pref = result.metrics["preference"]
    assert 0.3 < pref.mean_b < 0.7 and pref.p_value > 0.05
    assert pref.mean_a + pref.mean_b == pytest.approx(1.0)
    b_first = sum(f.split()[-1].startswith("b") for f, _ in seen)
    assert 0 < b_first < len(seen) == 80

    async def likes_b(ex: Example, first: str, second: str) -> float:
        return 1.0 if first.split()[-1].startswith("b") else 0.0

    result = await ModelComparator(
        _Echo("a"), _Echo("b"), word_examples(20), [], samples_per_input=2, pairwise_judge=likes_b
    ).compare()
    assert result.metrics["preference"].mean_b == 1.0
    assert result.metrics["preference"].p_value < 0.05


def test_metric_validation() -> None:
    """Unknown metrics, diversity with k=1, quality without a default: clear errors."""
    with pytest.raises(ValueError, match="unknown metric"):
        ModelComparator(_Echo("a"), _Echo("b"), word_examples(2), ["fluency"])
    with pytest.raises(ValueError, match="samples_per_input >= 2"):
        ModelComparator(
            _Echo("a"), _Echo("b"), word_examples(2), ["diversity"], samples_per_input=1
        )
    with pytest.raises(ValueError, match="needs quality="):
        ModelComparator(_Echo("a"), _Echo("b"), word_examples(2), ["quality"])
    with pytest.raises(ValueError, match="needs pairwise_judge"):
        ModelComparator(_Echo("a"), _Echo("b"), word_examples(2), ["preference"])
