"""Property test over the command line: any arguments end in success or in the bad-input
contract, never in a traceback.

A seeded random generator builds argument lists for every subcommand (``run``, ``eval``,
``compare``, ``report``, ``serve-sim``) from their real flags, with values drawn to break
them: integers beyond 64 bits, negative or zero counts, ``nan``, ``inf``, ``1e400``, empty
strings, full-width and other non-ASCII digits, unicode names, and paths to files,
directories, nothing, dangling symlinks, empty datasets, garbage configs and run directories
with a truncated ``config.json``, a garbage ``metrics.jsonl`` line, a truncated checkpoint
``meta.json`` or a checkpoint without its arrays. Each example runs in a fresh copy of a
sandbox holding all of these, and must:

- exit with status 0 or 2 (never 1 from a traceback, never anything else);
- on status 2, print exactly one stderr line, starting with ``error:``, and leave the
  sandbox exactly as it was (no file created, changed or removed).

Examples run through :mod:`.cli_worker` (``python -m engine``'s ``main`` in one long-lived
process, its stdout and stderr file descriptors redirected per example); every
``SUBPROCESS_EVERY``-th example, and every ``serve-sim`` example (a valid one serves until
SIGTERM), runs as a real ``python -m engine`` process instead. ``ENGINE_RELIABILITY_EXAMPLES``
sets the number of in-process examples (default 60), ``ENGINE_RELIABILITY_SEED`` the seed; a
failure names both and the argument list, so it can be replayed.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .support import REPO, engine_env

EXAMPLES = int(os.environ.get("ENGINE_RELIABILITY_EXAMPLES", "60"))
"""In-process examples over run, eval, compare and report (round robin)."""

SEED = int(os.environ.get("ENGINE_RELIABILITY_SEED", "13"))
SUBPROCESS_EVERY = 6
"""Every n-th example also runs as a fresh ``python -m engine`` process."""

SERVE_SIM_EXAMPLES = max(4, EXAMPLES // 12)
EXAMPLE_LIMIT = 120.0
"""Seconds one example may take (valid runs are 1-2 tiny steps) before the test fails."""

TINY = [
    "--set", "data.batch_size=2", "--set", "grpo.group_size=2", "--set", "trainer.eval_every=0",
    "--set", "data.num_examples=40", "--quiet",
]  # fmt: skip

# ----------------------------------------------------------------------------- the sandbox


def _build_template(root: Path) -> None:
    """Every kind of path an argument may name, in ``root`` (copied fresh per example)."""
    run = subprocess.run(
        [sys.executable, "-m", "engine", "run", "--steps", "2", "--out", str(root / "good"),
         "--set", "trainer.checkpoint_every=1", *TINY],
        capture_output=True, text=True, cwd=REPO, env=engine_env(), timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    examples = [{"input": {"text": t}, "output": {"text": t[::-1]}} for t in ("1234", "5012")]
    (root / "data.jsonl").write_text("".join(json.dumps(e) + "\n" for e in examples))
    (root / "empty.jsonl").write_bytes(b"")
    (root / "garbage.jsonl").write_bytes(b'{"input": \xff\n[[[\n')
    (root / "cfg.toml").write_text("steps = 1\n[trainer]\neval_every = 0\n")
    (root / "garbage.toml").write_bytes(b"steps = [[[\n\x00")
    (root / "empty-dir").mkdir()
    (root / "file.txt").write_text("not a run\n")
    (root / "link-file").symlink_to(root / "file.txt")
    (root / "link-dangling").symlink_to(root / "nowhere")
    (root / "link-dir").symlink_to(root / "good", target_is_directory=True)
    (root / "ünï cødé").mkdir()
    broken = {
        "bad-config": lambda d: (d / "config.json").write_bytes(b'{"steps": 2, "se'),
        "bad-metrics": lambda d: (d / "metrics.jsonl").write_bytes(b'[1, 2]\n{"step": "x"}\n'),
        "bad-summary": lambda d: (d / "summary.json").write_bytes(b"[]"),
        "bad-meta": lambda d: _truncate(d / "checkpoints" / "step-2" / "meta.json"),
        "bad-state": lambda d: _edit_meta(d / "checkpoints" / "step-2" / "meta.json"),
        "no-arrays": lambda d: (d / "checkpoints" / "step-2" / "arrays.npz").unlink(),
        "no-files": lambda d: [p.unlink() for p in d.iterdir() if p.is_file()],
    }
    for name, damage in broken.items():
        shutil.copytree(root / "good", root / name, symlinks=True)
        damage(root / name)


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:40])


def _edit_meta(path: Path) -> None:
    meta = json.loads(path.read_text())
    meta["policy"], meta["version"], meta["step"] = 5, "x", 1e300
    path.write_text(json.dumps(meta))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: kind, and size, mtime and content hash of files."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            key = str(p.relative_to(root))
            if p.is_symlink():
                out[key] = ("link", os.readlink(p))
            elif p.is_dir():
                out[key] = ("dir",)
            else:
                digest = hashlib.sha1(p.read_bytes()).hexdigest()
                out[key] = ("file", st.st_size, st.st_mtime_ns, digest)
    return out


# ----------------------------------------------------------------------------- the generator

HUGE = [str(10**30), str(2**63), str(-(2**63) - 1), str(10**400)]
BAD_INTS = [
    "-1",
    "-7",
    "",
    "abc",
    "1_0",
    "１２",
    "३",
    "0x10",
    "1e3",
    " 2",
    "2.5",
    "nan",
    "inf",
    *HUGE,
]
BAD_FLOATS = ["nan", "inf", "-inf", "1e400", "-1e400", "", "x", "１.５", "0x1p3", "NaN"]
STRINGS = ["", " ", "ü", "💥", "a" * 300, "--", "-", "=", "quality,", ",,", "\t"]
PATHS = [
    "data.jsonl", "empty.jsonl", "garbage.jsonl", "cfg.toml", "garbage.toml", "good",
    "empty-dir", "file.txt", "link-file", "link-dangling", "link-dir", "ünï cødé", "nowhere",
    "nowhere/deeper", "file.txt/below", "", ".", "bad-config", "bad-metrics", "bad-summary",
    "bad-meta", "bad-state", "no-arrays", "no-files", "good/checkpoints/step-2",
    "good/config.json", "/dev/null",
]  # fmt: skip
RUN_DIRS = ["good", "bad-config", "bad-metrics", "bad-summary", "bad-meta", "bad-state",
            "no-arrays", "no-files", "good/checkpoints/step-2", "link-dir"]  # fmt: skip
SET_KEYS = {  # key -> small valid values (a valid run stays tiny)
    "steps": ["1", "2"],
    "seed": ["0", "3"],
    "optim.lr": ["0.01", "2"],
    "grpo.beta": ["0", "0.04"],
    "grpo.epsilon": ["0.2"],
    "data.batch_size": ["1", "2"],
    "grpo.group_size": ["2", "3"],
    "trainer.keep_checkpoints": ["1"],
    "trainer.checkpoint_every": ["0", "1"],
    "data.eval_fraction": ["0", "0.5", "1.0"],
    "data.train": ["'data.jsonl'", "'empty.jsonl'", "'garbage.jsonl'", "'nowhere'", "'good'"],
    "tinylm.hidden": ["8"],
    "out": ["'new-out'", "'file.txt'", "'good'"],
    "nope": ["1"],
    "grpo": ["5"],
}


class Draw:
    """Seeded choices of flag values: mostly ones that break, some that work."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def pick(self, values: list[str]) -> str:
        return self.rng.choice(values)

    def count(self, valid: list[str]) -> str:
        return self.pick(valid) if self.rng.random() < 0.4 else self.pick(BAD_INTS)

    def number(self, valid: list[str]) -> str:
        return self.pick(valid) if self.rng.random() < 0.4 else self.pick(BAD_FLOATS)

    def path(self, likely: list[str] | None = None) -> str:
        if likely and self.rng.random() < 0.5:
            return self.pick(likely)
        return self.pick([*PATHS, f"new-{self.rng.randrange(100)}", "ünï cødé/new"])

    def setting(self) -> str:
        key = self.pick(list(SET_KEYS))
        r = self.rng.random()
        if r < 0.45:
            value = self.pick(SET_KEYS[key])
        elif r < 0.8:
            value = self.pick(BAD_INTS + BAD_FLOATS)
        else:
            value = self.pick([*STRINGS, "[[[", "{", '"unterminated', "[1, [2]]"])
        return self.pick([f"{key}={value}", f"{key}{value}", f"{key}.x={value}", key])


Flag = Callable[[Draw], list[str]]


def _flags(table: dict[str, Callable[[Draw], str] | None]) -> dict[str, Flag]:
    """Flag name -> a function drawing its argument list (``None``: a switch)."""
    out: dict[str, Flag] = {}
    for name, value in table.items():
        if value is None:
            out[name] = lambda d, n=name: [n]
        else:
            out[name] = lambda d, n=name, v=value: [n, v(d)]
    return out


FLAGS: dict[str, dict[str, Flag]] = {
    "run": _flags(
        {
            "--config": lambda d: d.path(["cfg.toml", "garbage.toml"]),
            "--set": Draw.setting,
            "--out": lambda d: d.path(["new-out", "file.txt", "empty-dir", "link-dir"]),
            "--steps": lambda d: d.count(["1", "2"]),
            "--seed": lambda d: d.count(["0", "5", str(2**63 - 1)]),
            "--resume": lambda d: d.path(RUN_DIRS),
            "--export-groups": lambda d: d.path(["groups.jsonl", "empty-dir", "link-file"]),
            "--quiet": None,
            "--print-config": None,
            "--force-resume": None,
            "--overwrite": None,
            "--trust-saved-config": None,
            "--prometheus-port": lambda d: d.count(["0"]),
        }
    ),
    "eval": _flags(
        {
            "--checkpoint": lambda d: d.path(RUN_DIRS),
            "--config": lambda d: d.path(["cfg.toml", "garbage.toml"]),
            "--set": Draw.setting,
            "--data": lambda d: d.path(["data.jsonl", "empty.jsonl", "garbage.jsonl"]),
            "--limit": lambda d: d.count(["1", "2", str(2**63 - 1)]),
            "--sample": None,
            "--seed": lambda d: d.count(["0", "9"]),
            "--pass-threshold": lambda d: d.number(["0.5", "1", "-3"]),
            "--concurrency": lambda d: d.count(["1", "4"]),
            "--out": lambda d: d.path(["rows.jsonl", "empty-dir", "link-file"]),
            "--json": None,
            "--quiet": None,
            "--trust-saved-config": None,
        }
    ),
    "compare": _flags(
        {
            "--a": lambda d: d.path([*RUN_DIRS, "cfg.toml"]),
            "--b": lambda d: d.path([*RUN_DIRS, "cfg.toml"]),
            "--data": lambda d: d.path(["data.jsonl", "empty.jsonl", "garbage.jsonl"]),
            "--metrics": lambda d: d.pick(
                ["quality", "diversity", "relevance,distinct_1", *STRINGS]
            ),
            "--samples": lambda d: d.count(["1", "2"]),
            "--seed": lambda d: d.count(["0", "4"]),
            "--out": lambda d: d.path(["new-cmp", "file.txt", "link-dir"]),
            "--limit": lambda d: d.count(["1", "2"]),
            "--quality": lambda d: d.pick(["task", "nope:fn", "bad", "", "engine:nothing"]),
            "--judge": lambda d: d.path(["garbage.toml", "nowhere.toml", "file.txt"]),
            "--pairwise-judge": lambda d: d.path(["garbage.toml", "nowhere.toml"]),
            "--concurrency": lambda d: d.count(["1", "3"]),
            "--resamples": lambda d: d.count(["1", "50"]),
            "--quiet": None,
            "--config": lambda d: d.path(["cfg.toml", "garbage.toml"]),
            "--set": Draw.setting,
            "--trust-saved-config": None,
        }
    ),
    "report": _flags(
        {
            "--out": lambda d: d.path(["page.html", "empty-dir", "link-file", "file.txt/x.html"]),
            "--timeline-step": lambda d: d.count(["0", "1", "3"]),
        }
    ),
    "serve-sim": _flags(
        {
            "--port": lambda d: d.count(["0"]),
            "--host": lambda d: d.pick(["127.0.0.1", "", "256.1.1.1", "ü", "::1x"]),
            "--seed": lambda d: d.count(["0"]),
            "--latency": lambda d: d.number(["0", "0.01", "-1"]),
            "--rpm": lambda d: d.number(["100", "0", "-5"]),
            "--fault-rate": lambda d: d.number(["0", "0.5", "2"]),
            "--fault": lambda d: d.pick(["reset=0.1", "gremlins=1", "reset=nan", "reset", "=", ""]),
            "--max-lora-rank": lambda d: d.count(["1", "16"]),
            "--keepalive-timeout": lambda d: d.number(["1", "-1"]),
            "--max-concurrency-served": lambda d: d.count(["1"]),
        }
    ),
}

REQUIRED: dict[str, Callable[[Draw], list[str]]] = {
    # The flags a subcommand needs, drawn like the rest (so they break too), and those that
    # keep a valid example small: at most 2 tiny steps, 2 inputs, 50 resamples.
    "run": lambda d: ["--steps", d.count(["1", "2"]), *TINY],
    "eval": lambda d: ["--data", d.path(["data.jsonl"]),
                       d.pick(["--checkpoint", "--config"]), d.path([*RUN_DIRS, "cfg.toml"])],
    "compare": lambda d: ["--a", d.path(RUN_DIRS), "--b", d.path(RUN_DIRS),
                          "--limit", d.count(["2"]), "--resamples", "50", "--samples", "2"],
    "report": lambda d: [d.path(RUN_DIRS)],
    "serve-sim": lambda d: ["--port", "0"],
}  # fmt: skip


def draw_argv(command: str, rng: random.Random) -> list[str]:
    """One argument list for ``command``: its required flags, then 0-4 random flags, now and
    then a junk word or a value where a flag goes."""
    d = Draw(rng)
    argv = [command, *REQUIRED[command](d)]
    names = list(FLAGS[command])
    for _ in range(rng.randrange(5)):
        argv += FLAGS[command][rng.choice(names)](d)
    if rng.random() < 0.1:
        argv.insert(rng.randrange(1, len(argv) + 1), d.pick(["--bogus", "-x", "ü", "--", "7"]))
    if rng.random() < 0.05:
        argv.append(d.pick(["-h", "--help"]))
    return argv


def examples() -> Iterator[tuple[int, list[str]]]:
    rng = random.Random(SEED)
    commands = ["run", "eval", "compare", "report"]
    for i in range(EXAMPLES):
        yield i, draw_argv(commands[i % len(commands)], rng)


# ----------------------------------------------------------------------------- running


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str


class Worker:
    """The long-lived :mod:`.cli_worker` process."""

    def __init__(self) -> None:
        env = engine_env({"PYTHONPATH": str(REPO)})
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_worker.py"))],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO,
            env=env,
        )

    def run(self, argv: list[str], cwd: Path, scratch: Path) -> Outcome:
        out, err = scratch / "stdout", scratch / "stderr"
        request = {"argv": argv, "cwd": str(cwd), "stdout": str(out), "stderr": str(err)}
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], EXAMPLE_LIMIT)
        assert ready, f"no answer within {EXAMPLE_LIMIT} s"
        line = self.proc.stdout.readline()
        assert line, f"the worker died: {err.read_text(errors='replace')[-3000:]}"
        return Outcome(
            json.loads(line)["rc"],
            out.read_text(errors="replace"),
            err.read_text(errors="replace"),
        )

    def close(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=60)
        finally:
            self.proc.kill()
            self.proc.stdout.close()


def run_subprocess(argv: list[str], cwd: Path) -> Outcome:
    """``python -m engine ARGV`` as a fresh process in ``cwd``."""
    env = engine_env({"PYTHONPATH": str(REPO)})
    proc = subprocess.run(
        [sys.executable, "-m", "engine", *argv],
        capture_output=True,
        cwd=cwd,
        env=env,
        timeout=EXAMPLE_LIMIT,
    )
    return Outcome(proc.returncode, proc.stdout.decode(errors="replace"),
                   proc.stderr.decode(errors="replace"))  # fmt: skip


def run_serve_sim(argv: list[str], cwd: Path) -> Outcome:
    """``python -m engine serve-sim ...``: one that serves (prints its URL) gets SIGTERM and
    must then exit 0; one that refuses its options must exit by itself."""
    env = engine_env({"PYTHONPATH": str(REPO)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=cwd,
        env=env,
    )
    assert proc.stdout is not None
    deadline = time.monotonic() + EXAMPLE_LIMIT
    first = b""
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 0.2)
        if ready:
            first = proc.stdout.readline()
            break
    if proc.poll() is None and first.startswith(b"http"):
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=EXAMPLE_LIMIT)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"serve-sim {argv} did not end: {err.decode()[-2000:]}") from None
    return Outcome(proc.returncode, (first + out).decode(errors="replace"),
                   err.decode(errors="replace"))  # fmt: skip


def check(outcome: Outcome, before: dict[str, tuple[object, ...]], sandbox: Path) -> None:
    """The contract: 0, or 2 with one ``error:`` line and the sandbox unchanged."""
    assert "Traceback" not in outcome.stderr, outcome.stderr[-3000:]
    assert outcome.rc in (0, 2), (outcome.rc, outcome.stderr[-3000:])
    if outcome.rc == 2:
        lines = outcome.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), outcome.stderr[-3000:]
        after = snapshot(sandbox)
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        assert not changed, f"written on error: {changed[:10]}"


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli-sandbox")
    _build_template(root)
    return root


def _fresh(template: Path, into: Path) -> Path:
    sandbox = into / "sandbox"
    shutil.copytree(template, sandbox, symlinks=True)
    # The template's links point into the template; point them into this copy.
    for name in ("link-file", "link-dangling", "link-dir"):
        link = sandbox / name
        target = Path(os.readlink(link))
        link.unlink()
        link.symlink_to(sandbox / target.name)
    return sandbox


def test_cli_arguments_succeed_or_fail_with_one_error_line(template: Path) -> None:
    """Random argument lists for run, eval, compare and report: exit 0, or exit 2 with one
    'error:' line and nothing written (see the module docstring)."""
    pristine = snapshot(template)
    worker = Worker()
    tally = {"0": 0, "2": 0, "subprocess": 0}
    try:
        for i, argv in examples():
            with tempfile.TemporaryDirectory() as tmp:
                sandbox = _fresh(template, Path(tmp))
                before = snapshot(sandbox)
                sub = i % SUBPROCESS_EVERY == 0
                if sub:
                    outcome = run_subprocess(argv, sandbox)
                    tally["subprocess"] += 1
                else:
                    outcome = worker.run(argv, sandbox, Path(tmp))
                try:
                    check(outcome, before, sandbox)
                except AssertionError as exc:
                    how = "python -m engine" if sub else "in-process"
                    raise AssertionError(
                        f"seed {SEED}, example {i} ({how}): {argv!r}\n{exc}"
                    ) from None
                tally[str(outcome.rc)] += 1
    finally:
        worker.close()
    print(json.dumps({"examples": EXAMPLES, "seed": SEED, **tally}))
    assert snapshot(template) == pristine  # nothing wrote outside its own sandbox
    assert tally["2"] > 0  # the generator reaches the refusals it is meant to test


def test_serve_sim_arguments_succeed_or_fail_with_one_error_line(tmp_path: Path) -> None:
    """Random serve-sim options: it serves (and exits 0 on SIGTERM) or refuses them with one
    'error:' line and exit 2."""
    rng = random.Random(SEED + 1)
    codes = []
    for i in range(SERVE_SIM_EXAMPLES):
        argv = draw_argv("serve-sim", rng)
        outcome = run_serve_sim(argv, tmp_path)
        try:
            check(outcome, {}, tmp_path)
        except AssertionError as exc:
            raise AssertionError(
                f"seed {SEED + 1}, serve-sim example {i}: {argv!r}\n{exc}"
            ) from None
        codes.append(outcome.rc)
    print(json.dumps({"serve_sim_examples": len(codes), "exit_0": codes.count(0)}))


KNOWN_BREAKS: list[list[str]] = [
    # inputs that once broke the contract (issue 13), each a class the generator also draws
    ["run", "--steps", str(10**30), *TINY],
    ["run", "--steps", "1", "--seed", str(10**30), *TINY],
    ["run", "--steps", "1", "--seed", "-1", *TINY],
    ["run", "--steps", "1", "--set", "seed=-3", *TINY],
    ["run", "--steps", "-3", *TINY],
    ["run", "--steps", "1_000", *TINY],
    ["run", "--steps", "1", "--out", "file.txt", *TINY],
    ["run", "--steps", "1", "--out", "good/config.json", *TINY],
    ["run", "--steps", "1", "--set", "optim.lr=1e400", *TINY],
    ["run", "--steps", "1", "--set", "optim.lr=inf", *TINY],
    ["run", "--steps", "1", "--set", "optim.lr=nan", *TINY],
    ["run", "--steps", "1", "--set", "data.train='empty.jsonl'", "--set", "data.eval_fraction=0",
     *TINY],
    ["run", "--steps", "1", "--set", "data.train='data.jsonl'", "--set", "data.eval_fraction=1.0",
     *TINY],
    ["run", "--steps", "1", "--export-groups", "empty-dir", *TINY],
    ["run", "--steps", "3", "--resume", "bad-metrics", "--out", "bad-metrics", *TINY],
    ["run", "--steps", "3", "--resume", "bad-state", "--out", "bad-state", *TINY],
    ["report", "bad-metrics"],
    ["report", "bad-summary"],
    ["report", "file.txt"],
    ["report", "good", "--out", "empty-dir"],
    ["eval", "--checkpoint", "bad-state", "--data", "data.jsonl"],
    ["eval", "--config", "cfg.toml", "--data", "empty.jsonl"],
    ["eval", "--config", "cfg.toml", "--data", "data.jsonl", "--pass-threshold", "nan"],
    ["eval", "--config", "cfg.toml", "--data", "data.jsonl", "--out", "empty-dir"],
    ["compare", "--a", "good", "--b", "good", "--limit", "-1"],
    ["compare", "--a", "good", "--b", "good", "--resamples", "-1"],
    ["compare", "--a", "good", "--b", "good", "--out", "file.txt"],
    ["compare", "--a", "bad-state", "--b", "good", "--limit", "2"],
    [],
]  # fmt: skip


def test_known_breaks_fail_with_one_error_line(template: Path) -> None:
    """Each input that once ended in a traceback, exit 1 or files written now ends with one
    'error:' line, exit 2 and the sandbox untouched."""
    worker = Worker()
    try:
        for argv in KNOWN_BREAKS:
            with tempfile.TemporaryDirectory() as tmp:
                sandbox = _fresh(template, Path(tmp))
                before = snapshot(sandbox)
                outcome = worker.run(argv, sandbox, Path(tmp))
                try:
                    assert outcome.rc == 2, outcome.rc
                    check(outcome, before, sandbox)
                except AssertionError as exc:
                    raise AssertionError(f"{argv!r}: {exc}\n{outcome.stderr[-3000:]}") from None
    finally:
        worker.close()


# ----------------------------------------------------------------------------- run directories


def _json_value(rng: random.Random, depth: int = 0) -> object:
    """A random JSON value: NaN-free (files hold JSON), huge and odd numbers included."""
    r = rng.random()
    if depth > 2 or r < 0.5:
        return rng.choice([None, True, False, 0, -1, 3, 2**70, 1e300, -0.5, "", "x", "ü", "nan",
                           [], {}])  # fmt: skip
    if r < 0.75:
        return [_json_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = [
        "step",
        "reward",
        "loss",
        "kl",
        "eval/reward",
        "steps_done",
        "stop_reason",
        "extra",
        "convergence",
        "metrics",
        "a",
        "b",
        "reward_first",
        "wall_time",
        "config",
        "x",
    ]
    return {rng.choice(keys): _json_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def _object(rng: random.Random) -> dict[str, object]:
    """A JSON object with the keys a summary, a config or a comparison has."""
    keys = ["steps_done", "stop_reason", "reward_first", "reward_last", "eval_before",
            "eval_after", "wall_time", "extra", "metrics", "a", "b", "n_inputs", "policy",
            "steps", "grpo", "samples_per_input", "out"]  # fmt: skip
    return {rng.choice(keys): _json_value(rng, 1) for _ in range(rng.randrange(6))}


def _row(rng: random.Random, step: int) -> dict[str, object]:
    """A metrics row: its step, then random keys and values."""
    extra = _json_value(rng, 2)
    row: dict[str, object] = {"step": step}
    for key in ("reward", "loss", "kl", "eval/reward", "groups/complete"):
        if rng.random() < 0.5:
            row[key] = _json_value(rng, 2)
    return {**row, **extra} if isinstance(extra, dict) else row


def test_report_of_any_run_directory_succeeds_or_raises_engine_error(tmp_path: Path) -> None:
    """``write_report`` over run directories whose JSON files hold random values: a page, or
    one EngineError and no page (nothing is half-written)."""
    from engine.errors import EngineError
    from engine.evaluation.report import write_report

    rng = random.Random(SEED + 2)
    outcomes = {"page": 0, "error": 0}
    for i in range(EXAMPLES * 2):
        run = tmp_path / f"run-{i}"
        run.mkdir()
        rows = [_row(rng, s) if rng.random() < 0.8 else _json_value(rng)
                for s in range(rng.randrange(6))]  # fmt: skip
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        for name in ("summary.json", "config.json", "comparison.json"):
            if rng.random() < 0.7:  # mostly objects, so the page itself is drawn from them
                value = _object(rng) if rng.random() < 0.85 else _json_value(rng)
                (run / name).write_text(json.dumps(value))
        try:
            write_report(run)
        except EngineError as exc:
            assert str(exc) and "\n" not in str(exc)
            assert not (run / "report.html").exists()
            outcomes["error"] += 1
        else:
            assert (run / "report.html").read_text().startswith("<!DOCTYPE html>")
            outcomes["page"] += 1
    print(json.dumps(outcomes))
    assert outcomes["page"] and outcomes["error"]
