"""Checkpoints: atomic save and load of arrays (``.npz``) plus JSON metadata.

A checkpoint is a directory::

    step-12/
      meta.json      {"format": 1, "kind": "grpo-engine", "complete": true, ...}
      arrays.npz     every array, by name (policy, optimizer moments, snapshots)

It is written into a hidden temporary directory beside the target (created exclusively under
a random name, its files too, so a symlink planted in the run directory is never written
through: :mod:`engine.files`), every file fsynced, then renamed into place and the parent
directory fsynced, so a crash at any moment leaves either the old checkpoint or the new one,
never half of one. Loading uses ``np.load(allow_pickle=False)``
and ``orjson``: no pickle, no eval, nothing in a checkpoint can run code.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ..errors import CheckpointError
from ..files import create_exclusive, fsync_dir, make_temp_dir

__all__ = (
    "FORMAT_VERSION",
    "MALFORMED",
    "find_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "load_policy_checkpoint",
    "prune_checkpoints",
    "restoring",
    "save_checkpoint",
)

FORMAT_VERSION = 1
_KIND = "grpo-engine"
_STEP_RE = re.compile(r"^step-(\d+)$")


def _check_arrays(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, arr in arrays.items():
        a = np.asarray(arr)
        if a.dtype == object:
            raise CheckpointError(f"array {name!r} has dtype object; checkpoints hold data only")
        out[name] = a
    return out


def save_checkpoint(
    path: str | Path, arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]
) -> Path:
    """Write a checkpoint directory atomically; replaces an existing one at ``path``.

    Args:
        path: target directory (e.g. ``runs/x/checkpoints/step-12``).
        arrays: named numpy arrays (numeric or string dtypes; no objects).
        meta: JSON-serializable metadata (config, counters, RNG states).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    data = _check_arrays(arrays)
    try:
        meta_bytes = orjson.dumps(
            {**meta, "format": FORMAT_VERSION, "kind": _KIND, "complete": True},
            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_INDENT_2,
        )
    except TypeError as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON data: {exc}") from None
    tmp = make_temp_dir(target)  # exclusive, random name: nothing planted is written through
    try:
        with create_exclusive(tmp / "arrays.npz") as fh:
            np.savez(fh, **data)  # type: ignore[arg-type]
            fh.flush()
            os.fsync(fh.fileno())
        with create_exclusive(tmp / "meta.json") as fh:
            fh.write(meta_bytes)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(tmp)
        old = None
        if os.path.lexists(target):  # a symlink there is renamed away, never followed
            old = target.parent / f".{target.name}.old-{secrets.token_hex(8)}"
            os.rename(target, old)
        os.rename(tmp, target)
        fsync_dir(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target


def load_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint`.

    Raises:
        CheckpointError: missing or incomplete directory, unreadable files, a foreign or newer
            format.
    """
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"{p}: no checkpoint directory here")
    try:
        meta = orjson.loads((p / "meta.json").read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{p}: meta.json is missing (incomplete checkpoint)") from None
    except orjson.JSONDecodeError as exc:
        raise CheckpointError(f"{p}/meta.json: not valid JSON: {exc}") from None
    if not isinstance(meta, dict) or meta.get("kind") != _KIND:
        raise CheckpointError(f"{p}: not a grpo-engine checkpoint")
    fmt = meta.get("format")
    if fmt != FORMAT_VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format {fmt!r}, this engine reads format {FORMAT_VERSION}"
        )
    if meta.get("complete") is not True:
        raise CheckpointError(f"{p}: checkpoint is incomplete")
    try:
        with open(p / "arrays.npz", "rb") as fh, np.load(fh, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise CheckpointError(f"{p}: arrays.npz is missing") from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{p}/arrays.npz: unreadable: {exc}") from None
    return arrays, meta


MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError, OverflowError)
"""What restoring state from a malformed ``meta.json`` raises (a value of the wrong type, a
missing key, a string where a number goes): :func:`restoring` turns each into one
CheckpointError."""


@contextlib.contextmanager
def restoring(path: str | Path) -> Iterator[None]:
    """Restore a policy or learner from the checkpoint at ``path`` inside this block: a
    malformed value in its metadata becomes one CheckpointError naming ``path``, never an
    unclassified exception (a checkpoint is outside input)."""
    try:
        yield
    except CheckpointError:
        raise
    except MALFORMED as exc:
        raise CheckpointError(
            f"{path}: malformed checkpoint state: {type(exc).__name__}: {exc}"
        ) from None


def list_checkpoints(directory: str | Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every complete-looking ``step-N`` checkpoint, oldest first."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = []
    for child in d.iterdir():
        m = _STEP_RE.match(child.name)
        if m and (child / "meta.json").is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint in ``directory`` that loads, or None."""
    for _, path in reversed(list_checkpoints(directory)):
        try:
            load_checkpoint(path)
        except CheckpointError:
            continue
        return path
    return None


def find_checkpoint(path: str | Path) -> Path | None:
    """``path`` itself when it is a checkpoint, else the latest checkpoint of the run directory
    ``path`` (in its ``checkpoints/``), else None."""
    p = Path(path)
    if (p / "meta.json").exists():
        return p
    return latest_checkpoint(p / "checkpoints")


def load_policy_checkpoint(path: str | Path) -> tuple[dict[str, np.ndarray], dict[str, Any], Path]:
    """``(policy arrays, meta, checkpoint dir)`` of a trainer checkpoint, a run directory (its
    latest checkpoint) or a saved :class:`~engine.training.finetune.FineTunedModel`.

    Raises:
        CheckpointError: nothing loadable there, or no policy state in it.
    """
    p = find_checkpoint(path)
    if p is None:
        raise CheckpointError(f"{Path(path)}: not a checkpoint, a run directory or a saved model")
    arrays, meta = load_checkpoint(p)
    if not isinstance(meta.get("policy"), Mapping) or not isinstance(meta.get("config"), Mapping):
        raise CheckpointError(f"{p}: the checkpoint holds no policy state and config")
    policy_arrays = {k[len("policy/") :]: v for k, v in arrays.items() if k.startswith("policy/")}
    return policy_arrays, meta, p


def prune_checkpoints(directory: str | Path, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints and stray temporary directories."""
    d = Path(directory)
    for _, path in list_checkpoints(d)[:-keep] if keep > 0 else []:
        shutil.rmtree(path, ignore_errors=True)
    if d.is_dir():
        for child in d.iterdir():
            if child.name.startswith(".") and (".tmp-" in child.name or ".old-" in child.name):
                shutil.rmtree(child, ignore_errors=True)
