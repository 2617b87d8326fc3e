"""Checkpoints: atomic directories of npz + JSON, no pickle, clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from engine.errors import CheckpointError
from engine.learning.checkpoint import (
    find_checkpoint,
    latest_checkpoint,
    list_checkpoints,
    load_checkpoint,
    load_policy_checkpoint,
    prune_checkpoints,
    restoring,
    save_checkpoint,
)


def test_round_trip(tmp_path: Path) -> None:
    """Arrays and metadata come back identical."""
    arrays = {"w": np.arange(6.0).reshape(2, 3), "names": np.array(["a", "bc"])}
    save_checkpoint(tmp_path / "step-1", arrays, {"step": 1, "nested": {"x": [1, 2]}})
    got, meta = load_checkpoint(tmp_path / "step-1")
    assert np.array_equal(got["w"], arrays["w"]) and list(got["names"]) == ["a", "bc"]
    assert meta["step"] == 1 and meta["nested"] == {"x": [1, 2]} and meta["format"] == 1


def test_object_arrays_refused(tmp_path: Path) -> None:
    """Object arrays (which would need pickle) are refused and nothing is left behind."""
    with pytest.raises(CheckpointError, match="dtype object"):
        save_checkpoint(tmp_path / "c", {"o": np.array([{}, None], dtype=object)}, {})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_replaces_whole(tmp_path: Path) -> None:
    """Saving over an existing checkpoint replaces it and leaves no temporary directories."""
    save_checkpoint(tmp_path / "c", {"a": np.zeros(2)}, {"v": 1})
    save_checkpoint(tmp_path / "c", {"b": np.ones(2)}, {"v": 2})
    arrays, meta = load_checkpoint(tmp_path / "c")
    assert set(arrays) == {"b"} and meta["v"] == 2
    assert [p.name for p in tmp_path.iterdir()] == ["c"]


@pytest.mark.parametrize(
    "damage", ["no_meta", "bad_json", "foreign", "new_format", "no_arrays", "bad_npz", "incomplete"]
)
def test_damaged_checkpoints_raise_checkpoint_error(tmp_path: Path, damage: str) -> None:
    """Every kind of damage is a CheckpointError, never a crash or a code path into pickle."""
    p = save_checkpoint(tmp_path / "c", {"a": np.zeros(2)}, {})
    meta = orjson.loads((p / "meta.json").read_bytes())
    if damage == "no_meta":
        (p / "meta.json").unlink()
    elif damage == "bad_json":
        (p / "meta.json").write_text("{")
    elif damage == "foreign":
        (p / "meta.json").write_bytes(orjson.dumps({**meta, "kind": "other"}))
    elif damage == "new_format":
        (p / "meta.json").write_bytes(orjson.dumps({**meta, "format": 99}))
    elif damage == "no_arrays":
        (p / "arrays.npz").unlink()
    elif damage == "bad_npz":
        (p / "arrays.npz").write_bytes(b"PK\x03\x04garbage")
    elif damage == "incomplete":
        (p / "meta.json").write_bytes(orjson.dumps({**meta, "complete": False}))
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_pickled_array_refused(tmp_path: Path) -> None:
    """An npz holding a pickled object array does not load."""
    p = save_checkpoint(tmp_path / "c", {"a": np.zeros(2)}, {})
    np.savez(p / "arrays.npz", o=np.array([1, "x", None], dtype=object))
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_latest_skips_broken_and_prune_keeps_newest(tmp_path: Path) -> None:
    """latest_checkpoint skips a broken newest one; prune keeps the newest N and drops temps."""
    for step in (2, 10, 4):
        save_checkpoint(tmp_path / f"step-{step}", {"a": np.full(1, step)}, {})
    (tmp_path / "step-10" / "arrays.npz").unlink()
    (tmp_path / ".step-12.tmp-abc").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "step-4"
    prune_checkpoints(tmp_path, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [4, 10]
    assert not (tmp_path / ".step-12.tmp-abc").exists()
    assert latest_checkpoint(tmp_path / "none") is None


def test_find_and_load_a_policy_checkpoint(tmp_path: Path) -> None:
    """A checkpoint dir or a run dir (its latest checkpoint) gives the policy's arrays and
    meta; a directory without one, or a checkpoint without policy state, is refused."""
    run = tmp_path / "run"
    arrays = {"policy/w": np.ones(3), "optim/m": np.zeros(3)}
    for step in (1, 2):
        save_checkpoint(run / "checkpoints" / f"step-{step}", arrays, {"policy": {}, "config": {}})
    assert find_checkpoint(run) == run / "checkpoints" / "step-2"
    assert find_checkpoint(run / "checkpoints" / "step-1") == run / "checkpoints" / "step-1"
    assert find_checkpoint(tmp_path / "empty") is None
    got, meta, path = load_policy_checkpoint(run)
    assert list(got) == ["w"] and path == run / "checkpoints" / "step-2" and meta["policy"] == {}
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_policy_checkpoint(tmp_path / "empty")
    save_checkpoint(tmp_path / "bare", arrays, {"step": 0})
    with pytest.raises(CheckpointError, match="no policy state"):
        load_policy_checkpoint(tmp_path / "bare")


def test_saved_state_of_the_wrong_shape_is_one_checkpoint_error(tmp_path: Path) -> None:
    """A meta.json whose config or policy is not a table, or whose values break a restore, is
    a CheckpointError naming the checkpoint, never another exception."""
    arrays = {"policy/w": np.zeros(2)}
    for bad in ({"config": [1], "policy": {}}, {"config": {}, "policy": 5}):
        path = save_checkpoint(tmp_path / "bad", arrays, bad)
        with pytest.raises(CheckpointError, match="no policy state and config"):
            load_policy_checkpoint(path)
    for exc in (KeyError("version"), TypeError("int"), AttributeError("get"), OverflowError()):
        with (
            pytest.raises(CheckpointError, match=r"step-3: malformed checkpoint state"),
            restoring(tmp_path / "step-3"),
        ):
            raise exc
    with pytest.raises(CheckpointError, match=r"^as raised$"), restoring(tmp_path / "x"):
        raise CheckpointError("as raised")


def test_save_never_writes_through_planted_symlinks(tmp_path: Path) -> None:
    """A symlink at the target (to a directory outside) is renamed away, not written into; the
    temporary directory has a fresh random name."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (tmp_path / "ck").mkdir()
    (tmp_path / "ck" / "step-1").symlink_to(outside, target_is_directory=True)
    save_checkpoint(tmp_path / "ck" / "step-1", {"a": np.ones(1)}, {})
    assert list(outside.iterdir()) == []
    assert (tmp_path / "ck" / "step-1" / "meta.json").is_file()
    assert not (tmp_path / "ck" / "step-1").is_symlink()
