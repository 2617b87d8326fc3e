"""The built-in tasks: answers, partial-credit reward, tokenizer, dataset determinism."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config.sections import TinyLMConfig
from engine.data.tasks import TaskTokenizer, make_examples, reward, solve
from engine.errors import RewardError
from engine.types import Example


def _ex(target: str) -> Example:
    return Example(id="task-0", text="reverse: 3 1 4 1", target=target)


def test_solve_each_task() -> None:
    """reverse, sort and copy give the documented answers."""
    assert solve("reverse", [3, 1, 4, 1]) == [1, 4, 1, 3]
    assert solve("sort", [3, 1, 4, 1]) == [1, 1, 3, 4]
    assert solve("copy", [3, 1, 4, 1]) == [3, 1, 4, 1]
    with pytest.raises(ValueError, match="unknown task"):
        solve("add", [1])


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("1 4 1 3", 1.0),  # perfect
        ("", 0.0),  # empty
        ("1 4", 0.5),  # two of four positions, short
        ("1 4 1 3 3", 0.8),  # perfect then one extra token: 4 / 5
        ("3 1 4 1", 0.0),  # the prompt copied: no position right
        ("1 0 1 0", 0.5),  # positions 0 and 2 right
        ("1 4 1 3 0 0 0 0", 0.5),  # 4 right, length 8: 4 / 8
        ("  1\t4 1  3\n", 1.0),  # any whitespace separates tokens
        ("1 x 1 3", 0.75),  # a non-digit token is just wrong
    ],
)
def test_reward_hand_values(completion: str, expected: float) -> None:
    """Reward = correct positions / max(target length, completion length)."""
    assert reward(_ex("1 4 1 3"), completion) == pytest.approx(expected)


def test_reward_is_in_unit_interval_and_needs_target() -> None:
    """Every completion scores in [0, 1]; an example without target is a RewardError."""
    ex = _ex("1 4 1 3")
    rng = np.random.default_rng(0)
    for _ in range(200):
        k = int(rng.integers(0, 9))
        text = " ".join(str(int(d)) for d in rng.integers(0, 6, size=k))
        assert 0.0 <= reward(ex, text) <= 1.0
    with pytest.raises(RewardError):
        reward(Example(id="x", text="reverse: 1"), "1")


def test_make_examples_shape_and_answers() -> None:
    """Examples carry id, readable text, the answer as target, and the digits in meta."""
    tinylm = TinyLMConfig(task="sort", prompt_len=5, vocab_digits=4)
    exs = make_examples(tinylm, 20, seed=3)
    assert [e.id for e in exs] == [f"task-{i}" for i in range(20)]
    for e in exs:
        digits = e.meta["digits"]
        assert len(digits) == 5 and all(0 <= d < 4 for d in digits)
        assert e.text == "sort: " + " ".join(map(str, digits))
        assert e.target == " ".join(map(str, sorted(digits)))
        assert e.meta["answer"] == sorted(digits)
        assert e.inputs == {"text": e.text}
        assert reward(e, e.target) == 1.0


def test_make_examples_deterministic_by_seed() -> None:
    """Same seed, same dataset; another seed, another dataset."""
    tinylm = TinyLMConfig()
    a = make_examples(tinylm, 50, seed=7)
    b = make_examples(tinylm, 50, seed=7)
    c = make_examples(tinylm, 50, seed=8)
    assert [e.text for e in a] == [e.text for e in b]
    assert [e.text for e in a] != [e.text for e in c]


def test_tokenizer_ids_and_round_trip() -> None:
    """Prompts encode as <bos> digits <sep>; completions decode up to <eos> and round-trip."""
    tok = TaskTokenizer(6)
    assert tok.vocab() == ["0", "1", "2", "3", "4", "5", "<eos>", "<sep>", "<bos>", "<pad>"]
    assert tok.vocab_size == 10 and tok.num_outputs == 7
    ids = tok.encode_prompt("reverse: 3 1 4 1")
    assert ids.tolist() == [tok.bos, 3, 1, 4, 1, tok.sep]
    for text in ["1 4 1 3", "0", "", "5 5 5 5 5"]:
        comp = tok.encode_completion(text)
        assert comp[-1] == tok.eos
        assert tok.decode(comp) == text
    assert tok.decode([2, 3, tok.eos, 4]) == "2 3"  # nothing after <eos>
    assert tok.decode([2, 3]) == "2 3"  # no <eos>: cut at the length cap


def test_tokenizer_rejects_foreign_text() -> None:
    """Digits outside the vocabulary and non-digit prompts are ValueErrors naming the token."""
    tok = TaskTokenizer(6)
    with pytest.raises(ValueError, match="'7'"):
        tok.encode_prompt("reverse: 3 7")
    with pytest.raises(ValueError, match="no digits"):
        tok.encode_prompt("reverse:")
    with pytest.raises(ValueError, match="'hello'"):
        tok.encode_prompt("hello world")
    with pytest.raises(ValueError):
        tok.encode_completion("1 9")
    with pytest.raises(ValueError):
        tok.decode([tok.bos])
