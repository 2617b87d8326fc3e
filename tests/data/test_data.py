"""Datasets: both line formats, clear errors naming file and line, the seeded group sampler."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.data.jsonl import GroupSampler, as_source, is_heldout, read_jsonl, split_source
from engine.errors import DataError
from engine.types import Example


def write(tmp_path: Path, lines: list[str]) -> Path:
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(lines) + "\n")
    return p


def test_training_example_format(tmp_path: Path) -> None:
    """The spec's TrainingExample lines load with input, target and quality."""
    p = write(
        tmp_path,
        [
            '{"input": {"text": "Explain quantum computing"}, '
            '"output": {"generated": "Quantum computing uses...", "quality": 0.95}}',
            '{"input": {"text": "No output here", "topic": "x"}}',
        ],
    )
    a, b = list(read_jsonl(p))
    assert a.text == "Explain quantum computing"
    assert a.target == "Quantum computing uses..."
    assert a.quality == 0.95
    assert a.id == f"{p}:1"
    assert b.target is None and b.inputs["topic"] == "x"


def test_plain_prompt_format(tmp_path: Path) -> None:
    """Plain prompt lines load; answer becomes the target; blank lines are skipped."""
    p = write(tmp_path, ['{"prompt": "2+2=", "answer": 4, "id": "q1"}', "", '{"prompt": "hi"}'])
    a, b = list(read_jsonl(p))
    assert (a.id, a.text, a.target) == ("q1", "2+2=", "4")
    assert b.text == "hi" and b.id == f"{p}:3"


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"input": "text"}', "'input' must be an object"),
        ('{"input": {"text": 3}}', "'input.text' must be a string"),
        ('{"input": {"text": "a"}, "output": {"quality": "high"}}', "'output.quality'"),
        ('{"prompt": null}', "'prompt' must be a string"),
        ('{"question": "a"}', 'expected an "input"'),
    ],
)
def test_malformed_line_names_file_and_line(tmp_path: Path, line: str, fragment: str) -> None:
    """A malformed line raises DataError naming the file and its 1-based line number."""
    p = write(tmp_path, ['{"prompt": "fine"}', line])
    with pytest.raises(DataError) as info:
        list(read_jsonl(p))
    assert f"{p}:2" in str(info.value)
    assert fragment in str(info.value)
    assert info.value.line == 2


def test_missing_file() -> None:
    """A missing dataset file is a DataError naming it."""
    with pytest.raises(DataError, match=r"missing\.jsonl"):
        list(read_jsonl("missing.jsonl"))


def examples(n: int) -> list[Example]:
    return [Example(f"e{i}", f"prompt {i}") for i in range(n)]


def test_sampler_batches_groups_and_cycles() -> None:
    """Batches hold batch_size prompts; every prompt is seen once per pass; data cycles."""
    s = GroupSampler(as_source(examples(10)), batch_size=4, group_size=8, seed=1)
    it = s.batches()
    first = [next(it) for _ in range(5)]
    assert [b.step for b in first] == [0, 1, 2, 3, 4]
    assert all(len(b.examples) == 4 and b.group_size == 8 for b in first)
    ids = [e.id for b in first for e in b.examples]
    assert sorted(ids[:10]) == sorted(f"e{i}" for i in range(10))
    assert first[0].group_id(3) == "0-3"


def test_sampler_is_seeded_and_resumable() -> None:
    """Same seed, same batches; starting at k gives exactly batch k onward; seed changes order."""
    mk = lambda seed: GroupSampler(as_source(examples(50)), batch_size=3, group_size=2, seed=seed)  # noqa: E731
    a = [b.examples for _, b in zip(range(30), mk(0).batches(), strict=False)]
    b = [b.examples for _, b in zip(range(30), mk(0).batches(), strict=False)]
    c = [b.examples for _, b in zip(range(30), mk(1).batches(), strict=False)]
    resumed = [b.examples for _, b in zip(range(10), mk(0).batches(start=20), strict=False)]
    assert a == b
    assert a != c
    assert resumed == a[20:30]


def test_group_rng_is_keyed_not_streamed() -> None:
    """A group's RNG depends only on (seed, step, group), not on what ran before."""
    s = GroupSampler(as_source(examples(8)), batch_size=2, group_size=2, seed=5)
    b0 = next(s.batches(start=3))
    b1 = next(s.batches(start=3))
    assert b0.rng(1).random() == b1.rng(1).random()
    assert b0.rng(0).random() != b0.rng(1).random()


def test_heldout_split_is_disjoint_and_stable() -> None:
    """The held-out split is a stable, disjoint fraction of the data."""
    data = examples(2000)
    train, held = split_source(as_source(data), 0.1, seed=0)
    t = {e.id for e in train()}
    h = {e.id for e in held()}
    assert not t & h and len(t) + len(h) == 2000
    assert 150 < len(h) < 250
    assert {e.id for e in data if is_heldout(e, 0.1, 0)} == h


def test_empty_dataset_is_an_error() -> None:
    """Sampling from an empty dataset raises a DataError instead of hanging."""
    s = GroupSampler(as_source([]), batch_size=1, group_size=2, seed=0)
    with pytest.raises(DataError, match="no examples"):
        next(s.batches())
