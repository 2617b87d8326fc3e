"""A run directory as the report reads it: metrics rows, summary, config, comparison and the
step timeline of its events."""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ...errors import DataError
from ...telemetry.records import read_records
from .charts import finite
from .timeline import Timeline, build_timeline

__all__ = ("RunData", "load_run")


def _load_json(path: Path) -> Any:
    """The JSON in ``path``, or None when there is no such file."""
    try:
        return orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except orjson.JSONDecodeError as exc:
        raise DataError(f"invalid JSON: {exc}", path=str(path)) from None


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
        DataError: the directory has neither ``metrics.jsonl`` nor ``summary.json``, or a
            file is not valid JSON.
    """
    d = Path(run_dir)
    mpath = d / "metrics.jsonl"
    rows: list[dict[str, Any]] = []
    if mpath.is_file():
        try:
            rows = list(read_records(mpath))
        except orjson.JSONDecodeError as exc:
            raise DataError(f"invalid JSON line: {exc}", path=str(mpath)) from None
    summary = _load_json(d / "summary.json")
    if not rows and summary is None:
        raise DataError("not a run directory: no metrics.jsonl or summary.json", path=str(d))
    rows.sort(key=lambda r: r.get("step", 0))
    events = d / "events.jsonl"
    return RunData(
        run_dir=d,
        rows=rows,
        summary=summary,
        config=_load_json(d / "config.json"),
        comparison=_load_json(d / "comparison.json"),
        timeline=build_timeline(events, steps=timeline_steps) if events.is_file() else None,
    )
