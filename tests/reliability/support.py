"""Helpers of the reliability suite: a sim model that also grades, config files, CLI runs,
JSON-lines checks and the reconciliation of a run's outputs."""

from __future__ import annotations

import asyncio
import math
import os
import re
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from engine.testing.sim import GOOD_WORDS, SimRequest, default_model

REPO = Path(__file__).resolve().parents[2]

KNOWN_ERROR_CLASSES = frozenset(
    {"transport", "timeout", "deadline", "rate_limit", "server", "conflict", "rejected", "auth",
     "response", "cancelled"}
)  # fmt: skip
"""Every ``error_class`` the client can write into events (``engine.errors``, and ``cancelled``
for an attempt cancelled from outside after it was sent)."""

_CANDIDATE = re.compile(r"<candidate-([0-9a-f]{8})>\n(.*?)\n</candidate-\1>", re.DOTALL)
_WORDS = re.compile(r"[a-z]+")


def grading_model(req: SimRequest) -> str:
    """The sim's default fake model, which also answers the engine's (hardened) judge prompts.

    ``python -m engine run`` builds its judge without the simulator's markers, so without this
    every judge call would get random words back. A prompt holding a nonce-tagged candidate
    block is graded like the sim's default judge: the fraction of the candidate's words in
    ``GOOD_WORDS``.
    """
    m = _CANDIDATE.search(req.prompt)
    if m is None:
        return default_model(req)
    words = _WORDS.findall(m.group(2).lower())
    good = sum(1 for w in words if w in GOOD_WORDS)
    score = round(good / len(words), 2) if words else 0.0
    return orjson.dumps({"score": score, "feedback": f"{good}/{len(words)} on-topic"}).decode()


# ----------------------------------------------------------------------------- config files


def _toml_str(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def toml_value(v: Any) -> str:
    """A TOML value for a bool, int, float, str or list of them."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str | Path):
        return _toml_str(str(v))
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    assert isinstance(v, dict), v
    return "{" + ", ".join(f"{_toml_str(k)} = {toml_value(x)}" for k, x in v.items()) + "}"


def to_toml(table: Mapping[str, Any]) -> str:
    """A TOML document: top-level values, then one ``[section]`` per nested table."""
    lines = [
        f"{_toml_str(k)} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)
    ]
    for k, v in table.items():
        if isinstance(v, dict):
            lines.append(f"[{_toml_str(k)}]")
            lines += [f"{_toml_str(kk)} = {toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- processes


def engine_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for ``python -m engine``: ours, single-threaded BLAS, plus ``extra``."""
    env = dict(os.environ)
    env.update({"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    env.update(extra or {})
    return env


@dataclass
class Finished:
    """A finished ``python -m engine`` process."""

    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def err(self) -> str:
        return self.stderr.decode(errors="replace")


async def start_engine(
    args: Sequence[str], *, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """``python -m engine ARGS`` in the background (its output piped)."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "engine",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=engine_env(env),
        cwd=REPO,
    )


async def finish(proc: asyncio.subprocess.Process, limit: float = 600) -> Finished:
    """Wait for a process started by :func:`start_engine` (killed after ``limit`` seconds)."""
    try:
        async with asyncio.timeout(limit):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.send_signal(signal.SIGKILL)
        out, err = await proc.communicate()
        raise AssertionError(
            f"python -m engine ran past {limit} s:\n{err.decode()[-3000:]}"
        ) from None
    assert proc.returncode is not None
    return Finished(proc.returncode, out, err)


async def run_engine(
    args: Sequence[str], *, env: Mapping[str, str] | None = None, limit: float = 600
) -> Finished:
    """Run ``python -m engine ARGS`` to the end without blocking the event loop."""
    return await finish(await start_engine(args, env=env), limit)


async def eventually(cond: Callable[[], object], limit: float = 60, every: float = 0.01) -> None:
    """Wait until ``cond()`` is true, polling (the conditions here are other processes' files
    and a server's counters, which signal nothing); AssertionError after ``limit`` seconds."""
    deadline = time.monotonic() + limit
    while not cond():
        assert time.monotonic() < deadline, f"not true within {limit} s: {cond}"
        await asyncio.sleep(every)


# ----------------------------------------------------------------------------- outputs


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    """Every line of a JSON-lines file, each checked to be whole (newline-ended) and valid."""
    data = path.read_bytes()
    assert not data or data.endswith(b"\n"), f"{path}: torn last line {data[-80:]!r}"
    records = []
    for i, raw in enumerate(data.splitlines(), start=1):
        assert raw.strip(), f"{path}:{i}: empty line"
        try:
            records.append(orjson.loads(raw))
        except orjson.JSONDecodeError as exc:
            raise AssertionError(f"{path}:{i}: not JSON ({exc}): {raw[:120]!r}") from None
    return records


@dataclass
class Reconciliation:
    """What a run's metrics, export and events say, counted and cross-checked."""

    steps: int = 0
    groups: int = 0
    complete: int = 0
    shrunk: int = 0
    dropped: int = 0
    retried: int = 0
    rollouts_exported: int = 0
    rollouts_removed: int = 0  # members of shrunk groups that were dropped
    rollouts_lost: int = 0
    attempts: Counter[str] = field(default_factory=Counter)  # request attempts by kind
    errors: Counter[str] = field(default_factory=Counter)  # failed attempts by error_class
    logged: Counter[str] = field(default_factory=Counter)  # log events by name

    def row(self) -> dict[str, Any]:
        return {
            "steps": self.steps,
            "groups": self.groups,
            "complete": self.complete,
            "shrunk": self.shrunk,
            "dropped": self.dropped,
            "retried": self.retried,
            "rollouts_exported": self.rollouts_exported,
            "rollouts_lost": self.rollouts_lost,
            "attempts": dict(self.attempts),
            "errors": dict(self.errors),
        }


def reconcile(
    out: Path, export: Path, *, steps: int, batch: int, group_size: int, policy: str
) -> Reconciliation:
    """Cross-check metrics, export and events of a finished run; raises AssertionError.

    Every group of every step is exactly one of complete (G members exported), shrunk (fewer,
    each scored) or dropped (not exported), by the metrics counters *and* by the export; the
    learner saw exactly the exported rollouts; no group or step appears twice; every failed
    request attempt carries a known ``error_class``; every dropped or shrunk group was logged,
    and a dropped group has failed attempts of its own in the events.
    """
    rec = Reconciliation()
    metrics = jsonl_records(out / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(steps)), "steps missing or repeated"
    rec.steps = len(metrics)
    exported = jsonl_records(export)
    by_step: dict[int, list[dict[str, Any]]] = {}
    ids = [g["group_id"] for g in exported]
    assert len(ids) == len(set(ids)), "a group was exported twice"
    for g in exported:
        by_step.setdefault(int(g["step"]), []).append(g)
        assert g["group_id"].startswith(f"{g['step']}-"), g["group_id"]
    for m in metrics:
        step = m["step"]
        complete, shrunk = m["groups/complete"], m["groups/shrunk"]
        dropped, retried = m["groups/dropped"], m["groups/retried"]
        assert complete + shrunk + dropped == batch, m
        assert retried <= batch and m.get("stale_dropped", 0) == 0, m
        groups = by_step.get(step, [])
        sizes = [len(g["samples"]) for g in groups]
        assert sum(1 for s in sizes if s == group_size) == complete, (step, sizes, m)
        assert sum(1 for s in sizes if s < group_size) == shrunk, (step, sizes, m)
        assert len(groups) == complete + shrunk, (step, len(groups), m)
        assert all(s <= group_size for s in sizes)
        if policy == "drop":
            assert shrunk == 0, m
        for g in groups:
            for s in g["samples"]:  # only scored members are kept
                assert s["reward"] is not None and s["error"] is None, (g["group_id"], s)
        assert m.get("rollouts", 0) == sum(sizes), (step, sizes, m)  # what the learner saw
        rec.complete += complete
        rec.shrunk += shrunk
        rec.dropped += dropped
        rec.retried += retried
        rec.rollouts_exported += sum(sizes)
        rec.rollouts_removed += sum(group_size - s for s in sizes)
    assert set(by_step) <= set(range(steps)), sorted(by_step)
    rec.groups = steps * batch
    rec.rollouts_lost = (
        steps * batch * group_size
        - rec.rollouts_exported
        - rec.rollouts_removed
        - rec.dropped * group_size
    )
    assert rec.rollouts_lost == 0, rec.row()

    events = jsonl_records(out / "events.jsonl")
    failed_groups: Counter[str] = Counter()
    generated: set[str] = set()
    for ev in events:
        kind = ev.get("kind")
        if kind == "log":
            rec.logged[str(ev.get("event"))] += 1
            continue
        if kind == "phase":  # a step's phases (update, checkpoint...), not requests
            continue
        assert kind in ("generation", "judge"), ev
        rec.attempts[kind] += 1
        cls = ev.get("error_class")
        if cls is not None:
            assert cls in KNOWN_ERROR_CLASSES, ev
            rec.errors[cls] += 1
            if ev.get("group_id"):
                failed_groups[ev["group_id"]] += 1
        else:
            assert ev.get("status") == 200, ev
        if kind == "generation" and ev.get("group_id"):
            generated.add(ev["group_id"])
    all_ids = {f"{s}-{j}" for s in range(steps) for j in range(batch)}
    assert all_ids <= generated | failed_groups.keys(), "a group made no request"
    for gid in all_ids - set(ids):  # dropped: its failures are in the events
        assert failed_groups[gid] > 0, f"group {gid} was dropped with no failed request"
    assert rec.logged["group.dropped"] == rec.dropped, (rec.logged, rec.row())
    assert rec.logged["group.shrunk"] == rec.shrunk, (rec.logged, rec.row())
    assert rec.logged["group.retry"] >= rec.retried, (rec.logged, rec.row())
    return rec


def record(name: str, figures: Mapping[str, Any]) -> None:
    """Print a test's figures (seen with ``pytest -s``) and, when ``ENGINE_RELIABILITY_RESULTS``
    names a directory, keep them there as ``NAME.json`` (the README's figures came from it)."""
    print(f"\n{name}: {orjson.dumps(figures).decode()}")
    where = os.environ.get("ENGINE_RELIABILITY_RESULTS")
    if where:
        Path(where).mkdir(parents=True, exist_ok=True)
        (Path(where) / f"{name}.json").write_bytes(
            orjson.dumps(figures, option=orjson.OPT_INDENT_2) + b"\n"
        )
