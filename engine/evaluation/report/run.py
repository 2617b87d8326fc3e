"""A run directory as the report reads it: metrics rows, summary, config, comparison and the
step timeline of its events."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import DataError
from ...telemetry.records import read_json_object, read_records
from .charts import finite
from .timeline import Timeline, build_timeline

__all__ = ("RunData", "load_run")


@dataclass(slots=True)
class RunData:
    """What a report shows, read from a run directory.

    Attributes:
        run_dir: the directory.
        rows: ``metrics.jsonl``, one dict per step, in step order.
        summary: ``summary.json``, or None when the run did not finish.
        config: ``config.json``, or None.
        comparison: ``comparison.json`` (``python -m engine compare --out``), or None.
        timeline: the step timeline of ``events.jsonl`` (:mod:`.timeline`), or None when
            there is no such file.
    """

    run_dir: Path
    rows: list[dict[str, Any]]
    summary: dict[str, Any] | None
    config: dict[str, Any] | None
    comparison: dict[str, Any] | None
    timeline: Timeline | None = None

    def column(self, key: str, missing: float = math.nan) -> list[float]:
        """Values of ``key`` per metrics row; ``missing`` where absent, NaN where null."""
        return [
            float(r[key]) if finite(r.get(key)) else (missing if key not in r else math.nan)
            for r in self.rows
        ]

    def has(self, key: str) -> bool:
        """Whether any row has a finite value for ``key``."""
        return any(finite(r.get(key)) for r in self.rows)

    def keys_with_prefix(self, prefix: str) -> list[str]:
        """Keys starting with ``prefix`` in any row, in a natural order (numeric suffixes)."""
        found = {k for r in self.rows for k in r if k.startswith(prefix)}

        def key(k: str) -> tuple[int, int | str]:
            rest = k[len(prefix) :]
            return (0, int(rest)) if rest.isdigit() else (1, rest)

        return sorted(found, key=key)


def load_run(run_dir: str | Path, *, timeline_steps: Collection[int] | None = None) -> RunData:
    """Read a run directory (blocking file I/O).

    ``timeline_steps``: the steps whose timeline is drawn in detail; default the slowest
    few and the last (:func:`~.timeline.build_timeline`).

    Raises:
        DataError: not a directory, or it has neither ``metrics.jsonl`` nor ``summary.json``.
        RunDirError: a JSON file is not valid JSON or not an object, a line of
            ``metrics.jsonl`` is not a JSON object with an integer step, or a file of the run
            is a symlink or a special file.
    """
    d = Path(run_dir)
    if not d.is_dir():
        raise DataError("not a run directory", path=str(d))
    mpath = d / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if mpath.exists() or mpath.is_symlink():
        rows = list(read_records(mpath, int_keys=("step",)))  # RunDirError names a bad line
    summary = read_json_object(d / "summary.json")
    if not rows and summary is None:
        raise DataError("not a run directory: no metrics.jsonl or summary.json", path=str(d))
    rows.sort(key=lambda r: r.get("step", 0))
    events = d / "events.jsonl"
    return RunData(
        run_dir=d,
        rows=rows,
        summary=summary,
        config=read_json_object(d / "config.json"),
        comparison=read_json_object(d / "comparison.json"),
        timeline=build_timeline(events, steps=timeline_steps) if events.is_file() else None,
    )
