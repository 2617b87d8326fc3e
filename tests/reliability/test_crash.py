"""Crash safety: SIGKILL at random moments, then --resume; SIGINT, SIGTERM and SIGHUP stop
cleanly, at random moments, during an evaluation and while a huge batch is read; a reader
that closes the output pipe does not stop the run.

Each SIGKILL trial runs the default embedded-LM training (small settings, a checkpoint every
one or two steps) and kills it after a random delay, or the moment a checkpoint's temporary
directory appears (its writes made slow by a wide model), then checks what a user relies on:

- every ``step-N`` checkpoint on disk loads, and the newest is what ``--resume`` picks;
- no completed step is lost beyond the checkpoint interval;
- ``--resume`` continues the metrics with every step exactly once, recomputing the steps after
  the checkpoint to the same values (runs are pure functions of their seed);
- ``events.jsonl`` and ``metrics.jsonl`` hold only whole lines afterwards, even when the kill
  left a torn last line (simulated when SIGKILL did not happen to tear one).

CI runs three trials; ``pytest -m slow`` runs twelve. The clean-stop trials send one of the
three signals after a random delay and check that the run exits with ``128 + signum`` within
:data:`STOP_BOUND`, with a checkpoint of every step done and the summary (CI: one trial per
signal; ``pytest -m slow``: twelve).
"""

from __future__ import annotations

import asyncio
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from engine.learning.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from engine.testing.sim import SimConfig, SimRequest, SimServer

from .support import (
    REPO,
    engine_env,
    eventually,
    finish,
    grading_model,
    jsonl_records,
    record,
    start_engine,
    to_toml,
)

SMALL = [
    "--set", "data.batch_size=4",
    "--set", "grpo.group_size=4",
    "--set", "data.num_examples=200",
    "--set", "trainer.eval_every=0",
    "--quiet",
]  # fmt: skip
WIDE = ["--set", "tinylm.hidden=4096"]
"""A wider model: checkpoints of about 20 MB, so a kill can land inside their writes."""
TORN = b'{"kind": "generation", "endpoint": "/v1/chat/comp'
"""A torn last line, as a crash in the middle of a write leaves one."""
COMPARED = ("reward", "policy_loss", "kl", "entropy", "clip_ratio", "lr")
"""Metrics of a step that depend only on the seed, not on timing."""


def engine(*args: str, **kw: Any) -> subprocess.Popen[bytes]:
    """``python -m engine ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=engine_env(),
        cwd=REPO,
        **kw,
    )


def wait_until(cond: Callable[[], bool], proc: subprocess.Popen[bytes], limit: float = 60) -> None:
    """Poll ``cond`` every half millisecond until it holds; fail if the run ends first."""
    deadline = time.monotonic() + limit
    while not cond():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.0005)


def lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True) if path.exists() else []


def whole(path: Path) -> list[dict[str, Any]]:
    """The whole lines of a file a crash may have torn at the end; each must parse."""
    return [orjson.loads(raw) for raw in lines(path) if raw.endswith(b"\n")]


def kill_run(args: list[str], out: Path, rng: random.Random, *, mid_checkpoint: bool) -> float:
    """Start a run and SIGKILL it: after a random delay once it has written a step, or the
    moment a checkpoint's temporary directory appears. Returns the delay."""
    ckdir, metrics = out / "checkpoints", out / "metrics.jsonl"
    proc = engine(*args)
    try:
        if mid_checkpoint:
            skip = rng.randrange(1, 4)  # after one to three complete checkpoints

            def writing() -> bool:  # one listing: a rename between two would fool us
                names = [p.name for p in ckdir.iterdir()] if ckdir.is_dir() else []
                done = sum(1 for n in names if n.startswith("step-"))
                return any(".tmp-" in n for n in names) and done >= skip

            wait_until(writing, proc)
            delay = 0.0
        else:
            wait_until(lambda: metrics.exists() and metrics.stat().st_size > 0, proc)
            delay = rng.uniform(0.0, 1.5)
            time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        assert proc.stderr is not None
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return delay


def kill_trial(tmp: Path, i: int, rng: random.Random, *, mid_checkpoint: bool) -> dict[str, Any]:
    """One SIGKILL and resume; returns what happened."""
    every = 1 + i % 2
    for attempt in range(3):  # the kill lands about 1 ms after the directory appears: rarely late
        out = tmp / f"trial-{i}-{attempt}"
        args = ["run", "--steps", "100000", "--out", str(out), *SMALL]
        args += ["--set", f"trainer.checkpoint_every={every}", "--seed", str(i)]
        args += WIDE if mid_checkpoint else []
        delay = kill_run(args, out, rng, mid_checkpoint=mid_checkpoint)
        ckdir = out / "checkpoints"
        mid_write = ckdir.is_dir() and any(".tmp-" in p.name for p in ckdir.iterdir())
        if mid_write or not mid_checkpoint:
            break
    metrics_path, events_path = out / "metrics.jsonl", out / "events.jsonl"

    before = lines(metrics_path)
    torn = {"metrics": bool(before) and not before[-1].endswith(b"\n")}
    torn["events"] = events_path.exists() and not events_path.read_bytes().endswith(b"\n")
    done = [r["step"] for r in whole(metrics_path)]
    assert done == list(range(len(done))), "metrics skipped or repeated a step"
    for step, path in list_checkpoints(ckdir):  # every checkpoint on disk loads
        _, meta = load_checkpoint(path)
        assert meta["step"] == step
    latest = latest_checkpoint(ckdir)
    saved = list_checkpoints(ckdir)
    assert latest == (saved[-1][1] if saved else None)
    ck_step = saved[-1][0] if saved else 0
    assert ck_step <= len(done), "a checkpoint is ahead of the metrics"
    lost = len(done) - ck_step
    assert lost <= every, f"{lost} completed steps lost with a checkpoint every {every}"

    # a torn last line, as a crash mid-write leaves one, when SIGKILL did not tear one itself
    for path, name in ((events_path, "events"), (metrics_path, "metrics")):
        if path.exists() and not torn[name]:
            with open(path, "ab") as fh:
                fh.write(TORN)
    total = len(done) + 2
    resumed = subprocess.run(
        [sys.executable, "-m", "engine", *args[:2], str(total), *args[3:], "--resume", str(out)],
        capture_output=True,
        env=engine_env(),
        cwd=REPO,
        timeout=300,
        check=False,
    )
    if latest is None:  # killed before the first checkpoint: nothing to resume, said clearly
        assert resumed.returncode == 2 and b"no checkpoint to resume from" in resumed.stderr
        return {"delay": delay, "every": every, "mid_checkpoint_write": mid_write,
                "steps_done": len(done), "checkpoint": None}  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr.decode()[-3000:]
    after = jsonl_records(metrics_path)  # whole lines only
    jsonl_records(events_path)
    assert [r["step"] for r in after] == list(range(total)), "duplicate or missing steps"
    assert lines(metrics_path)[:ck_step] == before[:ck_step], "steps before the checkpoint changed"
    killed = [orjson.loads(b) for b in before if b.endswith(b"\n")]
    for step in range(ck_step, len(killed)):  # recomputed after the checkpoint: same values
        a, b = killed[step], after[step]
        assert {k: a.get(k) for k in COMPARED} == {k: b.get(k) for k in COMPARED}, step
    return {
        "delay": round(delay, 3),
        "every": every,
        "mid_checkpoint_write": mid_write,
        "steps_done": len(done),
        "checkpoint": ck_step,
        "steps_lost": lost,
        "torn_by_kill": torn,
        "duplicate_steps": len(after) - len({r["step"] for r in after}),
    }


def kill_trials(tmp: Path, n: int, mid_checkpoint: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    plan = [True] * mid_checkpoint + [False] * (n - mid_checkpoint)
    rng.shuffle(plan)
    return [kill_trial(tmp, i, rng, mid_checkpoint=m) for i, m in enumerate(plan)]


def test_sigkill_then_resume(tmp_path: Path) -> None:
    """Three SIGKILLs (one inside a checkpoint write): nothing torn, lost or repeated on resume."""
    trials = kill_trials(tmp_path, 3, 1, seed=1)
    assert any(t.get("mid_checkpoint_write") for t in trials), trials
    record("crash-ci", {"trials": trials})


@pytest.mark.slow
def test_sigkill_then_resume_many(tmp_path: Path) -> None:
    """Twelve SIGKILLs at random moments, four inside checkpoint writes; every one recovers."""
    trials = kill_trials(tmp_path, 12, 4, seed=2)
    assert sum(bool(t.get("mid_checkpoint_write")) for t in trials) >= 3, trials
    assert all(t.get("duplicate_steps", 0) == 0 for t in trials)
    record("crash-slow", {"trials": trials})


# ----------------------------------------------------------------------------- clean stops


def test_sigterm_stops_tinylm_with_checkpoint(tmp_path: Path) -> None:
    """SIGTERM stops the embedded-LM run: exit 143, stop reason 'terminated', a checkpoint."""
    out = tmp_path / "run"
    proc = engine("run", "--steps", "100000", "--out", str(out), *SMALL)
    wait_until(lambda: (out / "metrics.jsonl").exists(), proc)
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()[-2000:]
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stop_reason"] == "terminated"
    done = summary["steps_done"]
    assert latest_checkpoint(out / "checkpoints") == out / "checkpoints" / f"step-{done}"
    assert [r["step"] for r in jsonl_records(out / "metrics.jsonl")] == list(range(done))
    jsonl_records(out / "events.jsonl")


LATENCY = 2.0
"""Seconds the sim takes per request in the clean-stop tests: requests are in flight."""


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
async def test_signal_with_requests_in_flight(
    tmp_path: Path, signum: signal.Signals, status: int
) -> None:
    """A signal mid-run cancels the requests in flight, checkpoints and exits 130/143 at once."""
    out = tmp_path / "run"
    async with SimServer(SimConfig(latency=LATENCY, model=grading_model)) as sim:
        cfg = {
            "policy": "prompt",
            "steps": 1000,
            "out": str(out),
            "grpo": {"group_size": 4},
            "prompt": {"instructions": ["Classify the sentiment of this review."]},
            "endpoint": {"provider": "local", "base_url": sim.base_url, "max_tokens": 8},
            "reward": {"functions": ["non_empty"]},
            "data": {"batch_size": 4},
            "trainer": {"eval_every": 0, "checkpoint_every": 0},
        }
        (tmp_path / "run.toml").write_text(to_toml(cfg))
        proc = await start_engine(["run", "--config", str(tmp_path / "run.toml")])
        metrics = out / "metrics.jsonl"

        def running() -> bool:
            assert proc.returncode is None, "the run ended early"
            return metrics.exists() and metrics.stat().st_size > 0 and sim.counters.in_flight > 0

        await eventually(running)
        in_flight = sim.counters.in_flight
        t0 = time.monotonic()
        proc.send_signal(signum)
        done = await finish(proc, 60)
        elapsed = time.monotonic() - t0
        await eventually(lambda: sim.counters.in_flight == 0, 5)  # it sees the connections close
        stats = sim.statistics()
    assert done.returncode == status, done.err[-3000:]
    # The requests in flight were dropped, not awaited: the server saw each one cancelled
    # before it answered (an awaited one would have been answered). That holds however slowly a
    # loaded machine runs the stop; the wall-clock bound only says the stop is bounded.
    assert stats.cancelled >= in_flight > 0
    assert elapsed < 30, f"took {elapsed:.2f} s to stop"
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stop_reason"] == ("interrupted" if signum == signal.SIGINT else "terminated")
    steps = summary["steps_done"]
    assert (
        steps >= 1 and latest_checkpoint(out / "checkpoints") == out / f"checkpoints/step-{steps}"
    )
    assert [r["step"] for r in jsonl_records(metrics)] == list(range(steps))
    jsonl_records(out / "events.jsonl")
    record(
        f"signal-{signum.name}",
        {"exit": done.returncode, "seconds_to_exit": round(elapsed, 3), "in_flight": in_flight,
         "cancelled_at_server": stats.cancelled, "steps_done": steps},
    )  # fmt: skip


# ----------------------------------------------------------------------------- stops anywhere

STOP_BOUND = 60.0
"""Seconds from a signal to the exit. A stop takes well under a second on a quiet machine
(see the figures); the bound is generous for a loaded 2-core one, and what it catches is a
stop that never comes (a blocked loop) or waits for work it should have cancelled."""
STOPS = {
    signal.SIGINT: ("interrupted", 130),
    signal.SIGTERM: ("terminated", 143),
    signal.SIGHUP: ("hangup", 129),
}
"""Each stopping signal: the summary's stop reason and the exit status."""
EVALUATING = ["--set", "trainer.eval_every=3", "--set", "trainer.eval_size=16"]


def check_stopped(out: Path, reason: str) -> int:
    """A stopped run's outputs are whole: the summary, a checkpoint of every step done, each
    step's metrics once. Returns the steps done."""
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["stop_reason"] == reason, summary
    done = summary["steps_done"]
    want = out / "checkpoints" / f"step-{done}" if done else None
    assert latest_checkpoint(out / "checkpoints") == want, (
        done,
        list_checkpoints(out / "checkpoints"),
    )
    metrics = out / "metrics.jsonl"  # written with the first step
    assert [r["step"] for r in (jsonl_records(metrics) if done else [])] == list(range(done))
    assert done or not metrics.exists() or not metrics.read_bytes()
    jsonl_records(out / "events.jsonl")
    return done


def stop_trial(tmp: Path, i: int, rng: random.Random, signum: signal.Signals) -> dict[str, Any]:
    """Start a run, wait until it has prepared its output directory plus a random delay
    (during start-up, a step, an evaluation or a checkpoint), send ``signum``."""
    out = tmp / f"stop-{i}"
    every = rng.choice([1, 2, 5])
    args = ["run", "--steps", "100000", "--out", str(out), "--seed", str(i), *SMALL, *EVALUATING]
    proc = engine(*args, "--set", f"trainer.checkpoint_every={every}")
    try:
        wait_until(lambda: (out / "config.json").exists(), proc)
        delay = rng.uniform(0.0, 2.0)
        time.sleep(delay)
        t0 = time.monotonic()
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=STOP_BOUND)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(timeout=30)
    reason, status = STOPS[signum]
    assert proc.returncode == status, err.decode()[-3000:]
    assert b"Traceback" not in err
    done = check_stopped(out, reason)
    return {"signal": signum.name, "delay": round(delay, 3), "checkpoint_every": every,
            "steps_done": done, "seconds_to_exit": round(elapsed, 3)}  # fmt: skip


def stop_trials(tmp: Path, n: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    plan = [list(STOPS)[i % len(STOPS)] for i in range(n)]
    rng.shuffle(plan)
    return [stop_trial(tmp, i, rng, signum) for i, signum in enumerate(plan)]


def test_signals_at_random_moments_stop_cleanly(tmp_path: Path) -> None:
    """SIGINT, SIGTERM and SIGHUP at random moments: exit 130/143/129 within the bound, every
    step done checkpointed, the summary written (SIGHUP used to lose both)."""
    trials = stop_trials(tmp_path, 3, seed=3)
    record("stop-ci", {"trials": trials})


@pytest.mark.slow
def test_signals_at_random_moments_stop_cleanly_many(tmp_path: Path) -> None:
    """Twelve stops at random moments, four per signal."""
    trials = stop_trials(tmp_path, 12, seed=4)
    record("stop-slow", {"trials": trials})


def test_a_second_signal_exits_at_once(tmp_path: Path) -> None:
    """SIGINT, then SIGTERM while the first stop writes its checkpoint (20 MB): the process
    exits at once with 143 and one line, no traceback; what it wrote is whole (crash-safe)."""
    out = tmp_path / "run"
    proc = engine("run", "--steps", "100000", "--out", str(out), *SMALL, *WIDE)
    try:
        wait_until(lambda: (out / "metrics.jsonl").exists(), proc)
        proc.send_signal(signal.SIGINT)
        time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=STOP_BOUND)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    text = err.decode()
    assert "Traceback" not in text, text[-3000:]
    if proc.returncode == 143:  # the second signal came before the first stop was done
        assert text.strip().splitlines()[-1] == "error: second signal (SIGTERM): exiting now"
    else:
        assert proc.returncode == 130, text[-3000:]
    for step, path in list_checkpoints(out / "checkpoints"):
        assert load_checkpoint(path)[1]["step"] == step
    jsonl_records(out / "metrics.jsonl")


def test_sigint_while_a_huge_batch_is_read(tmp_path: Path) -> None:
    """data.batch_size = 10^9: the batch is read in a worker thread, a chunk at a time, so
    SIGINT is handled at once (it used to be ignored while the loop built the batch)."""
    out = tmp_path / "run"
    args = ["--set", "data.batch_size=1000000000", "--set", "trainer.eval_every=0", "--quiet"]
    proc = engine("run", "--steps", "10", "--out", str(out), *args)
    try:
        wait_until(lambda: (out / "config.json").exists(), proc)
        time.sleep(0.5)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=STOP_BOUND)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert check_stopped(out, "interrupted") == 0
    record("stop-huge-batch", {"seconds_to_exit": round(elapsed, 3)})


def test_sigint_while_a_large_dataset_is_validated(tmp_path: Path) -> None:
    """SIGINT while the run reads a 40 MB dataset through before its start: the read stops at
    the next chunk, the run exits 130 and writes no summary (it had not started)."""
    data = tmp_path / "train.jsonl"
    line = (
        b'{"prompt": "review %d: a long enough sentence about a film, to pad it", "answer": "x"}\n'
    )
    with open(data, "wb") as fh:
        for i in range(0, 500_000, 1000):
            fh.write(b"".join(line % j for j in range(i, i + 1000)))
    out = tmp_path / "run"
    cfg = {
        "policy": "prompt",
        "steps": 5,
        "out": str(out),
        "prompt": {"instructions": ["Classify the sentiment of this review."]},
        "endpoint": {"provider": "local", "base_url": "http://127.0.0.1:9/v1"},
        "optim": {"lr": 0.01},  # below the prompt policy's hint: it warns (the marker)
        "reward": {"functions": ["non_empty"]},
        "data": {"train": str(data)},
    }
    (tmp_path / "run.toml").write_text(to_toml(cfg))
    proc = engine("run", "--config", str(tmp_path / "run.toml"))
    lines: list[bytes] = []
    assert proc.stderr is not None
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, b"")))
    reader.start()
    try:  # the policy warns of its learning rate once built: the handlers are in place, and
        # the run is about to read the data through (well before it is done, at this size)
        wait_until(lambda: any(b"prompt_policy.low_lr" in ln for ln in lines), proc)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STOP_BOUND)
        elapsed = time.monotonic() - t0
    finally:
        proc.kill()
        proc.wait(timeout=30)
        reader.join(timeout=30)
        proc.stderr.close()
    err = b"".join(lines)
    assert proc.returncode == 130, err.decode()[-3000:]
    assert b"outputs        none (stopped before the run started)" in err, err.decode()[-1500:]
    assert not (out / "summary.json").exists() and not (out / "config.json").exists()
    record("stop-validating", {"seconds_to_exit": round(elapsed, 3), "bytes": data.stat().st_size})


def test_a_closed_output_pipe_does_not_stop_the_run(tmp_path: Path) -> None:
    """``python -m engine run ... 2>&1 | head -2``: the reader goes after two lines; the run
    finishes, checkpoints and exits 0 (a BrokenPipeError used to kill it)."""
    out = tmp_path / "run"
    steps = 40
    args = ["run", "--steps", str(steps), "--out", str(out), *SMALL[:-1], *EVALUATING]
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=engine_env(),
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        head = [proc.stdout.readline(), proc.stdout.readline()]
        proc.stdout.close()  # as `head -2` exits: the progress lines after these find no reader
        proc.wait(timeout=300)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert all(line.startswith(b"step ") for line in head), head
    assert proc.returncode == 0
    assert check_stopped(out, "steps") == steps


def test_closed_output_descriptors_do_not_stop_the_run(tmp_path: Path) -> None:
    """Started with stdout and stderr closed (``1>&- 2>&-``): the run trains, checkpoints and
    exits 0 (it used to fail at start-up: sys.stderr is None)."""
    out = tmp_path / "run"
    args = ["run", "--steps", "6", "--out", str(out), *SMALL[:-1]]
    cmd = " ".join([f"exec {sys.executable} -m engine", *args, "1>&- 2>&-"])
    done = subprocess.run(["bash", "-c", cmd], env=engine_env(), cwd=REPO, timeout=300, check=False)
    assert done.returncode == 0
    assert check_stopped(out, "steps") == 6


EVAL_LATENCY = 3.0
"""Seconds the sim takes per request in the stop-during-evaluation tests: far longer than a
signal takes to arrive, so the evaluation is still running when it does."""


@pytest.mark.parametrize("phase", ["before", "periodic"])
async def test_a_stop_during_an_evaluation_starts_no_other(tmp_path: Path, phase: str) -> None:
    """SIGINT while the held-out evaluation runs (the one before training, or one after a
    step): its requests are cancelled and no other evaluation starts (the run used to finish
    the interrupted one, then run the final one)."""
    out = tmp_path / "run"
    greedy: list[int] = []  # request numbers of evaluation requests (temperature 0)
    sampled: list[int] = []

    def model(req: SimRequest) -> str:
        (greedy if req.temperature == 0 else sampled).append(req.request_number)
        return grading_model(req)

    def evaluating() -> bool:
        assert proc.returncode is None, "the run ended early"
        return bool(greedy) and (
            phase == "before" or any(g > min(sampled, default=1 << 30) for g in greedy)
        )

    async with SimServer(SimConfig(latency=EVAL_LATENCY, model=model)) as sim:
        cfg = {
            "policy": "prompt",
            "steps": 1000,
            "out": str(out),
            "grpo": {"group_size": 2},
            # every evaluation sends its requests (the cache would answer a repeated one)
            "prompt": {
                "instructions": ["Classify the sentiment of this review."],
                "eval_cache": False,
                "select_served": False,  # only evaluations send requests after training
            },
            "endpoint": {"provider": "local", "base_url": sim.base_url, "max_tokens": 8},
            "reward": {"functions": ["non_empty"]},
            "data": {"batch_size": 2},
            "trainer": {"eval_every": 1, "eval_size": 4, "checkpoint_every": 0},
        }
        (tmp_path / "run.toml").write_text(to_toml(cfg))
        proc = await start_engine(["run", "--config", str(tmp_path / "run.toml")])
        await eventually(evaluating, 120)
        await asyncio.sleep(0.2)  # the evaluation's other requests arrive
        evals_begun = 1 if phase == "before" else 2
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        done = await finish(proc, STOP_BOUND)
        elapsed = time.monotonic() - t0
        await eventually(lambda: sim.counters.in_flight == 0, 10)
        stats = sim.statistics()
    assert done.returncode == 130, done.err[-3000:]
    assert len(greedy) <= 4 * evals_begun, (greedy, sampled)
    assert stats.cancelled >= 1  # the evaluation's requests were cancelled, not awaited
    steps = check_stopped(out, "interrupted")
    summary = orjson.loads((out / "summary.json").read_bytes())
    assert summary["eval_after"] is None
    if phase == "before":
        assert steps == 0 and summary["eval_before"] is None
    else:
        metrics = jsonl_records(out / "metrics.jsonl")
        assert steps >= 1 and "eval/reward" not in metrics[-1]  # its evaluation was stopped
        assert all("eval/reward" in m for m in metrics[:-1])
    record(
        f"stop-in-eval-{phase}",
        {"seconds_to_exit": round(elapsed, 3), "eval_requests": len(greedy),
         "cancelled_at_server": stats.cancelled, "steps_done": steps},
    )  # fmt: skip
