"""The HTML run report: axes and charts in Python, the page's contents, the CLI, and a real
render in headless Chromium (DOM has a drawn SVG per plot; the screenshot is not blank)."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
import sys
import zlib
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import anyio
import orjson
import pytest

from engine.config.schema import load_config
from engine.evaluation.compare import compare_scores
from engine.evaluation.report import (
    Series,
    line_chart,
    load_run,
    nice_ticks,
    render_report,
    tick_label,
    write_report,
)
from engine.telemetry.monitor import convergence
from engine.training.trainer import TrainingManager

CHROMIUM = "/usr/bin/chromium"
STEPS = 30
ALL_CHARTS = (
    "chart-reward",
    "chart-policy-loss",
    "chart-kl-to-the-reference-policy",
    "chart-entropy",
    "chart-clip-ratio",
    "chart-learning-rate",
    "chart-gradient-norm",
    "chart-groups-without-signal",
    "chart-tokens-per-step",
    "chart-request-latency",
    "chart-errors-by-class",
    "chart-prompt-candidates",
)


def _row(step: int) -> dict[str, Any]:
    t = step / STEPS
    logits = [1.0 - t, 0.5 + 2.0 * t, 0.2]
    z = sum(math.exp(v) for v in logits)
    row: dict[str, Any] = {
        "step": step,
        "reward": 0.1 + 0.6 * t + 0.03 * math.sin(step),
        "reward_std": 0.2 - 0.1 * t,
        "policy_loss": -0.01 * math.cos(step / 3),
        "kl": 0.002 * step,
        "entropy": 1.95 - 0.4 * t,
        "clip_ratio": 0.05 * t,
        "clip_ratio/low": 0.02 * t,
        "clip_ratio/high": 0.03 * t,
        "lr": 0.001 * min(1.0, (step + 1) / 5),
        "grad_norm": 0.3 + 0.1 * math.sin(step / 2),
        "frac_reward_zero_std": 0.5 * (1 - t),
        "tokens/prompt": 768 + 10 * step,
        "tokens/completion": 400 + 5 * step,
        "requests/errors": int(step % 7 == 3) + int(step % 11 == 5),
        "latency/p50": 0.04,
        "latency/p95": 0.08,
        "latency/p99": 0.12 + 0.01 * (step % 4),
    }
    if step % 7 == 3:
        row["errors/rate_limit"] = 1
    if step % 11 == 5:
        row["errors/timeout"] = 1
    if step % 10 == 9:
        row["eval/reward"] = 0.15 + 0.5 * t
    for i, v in enumerate(logits):
        row[f"candidate_prob/{i}"] = math.exp(v) / z
    if step == 12:
        row["reward"] = None  # a step whose rollouts all failed: NaN is written as null
    return row


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    """A run directory with every metric the report plots, a comparison and a torn last line."""
    d = tmp_path / "synthetic"
    d.mkdir()
    lines = b"".join(orjson.dumps(_row(s)) + b"\n" for s in range(STEPS))
    (d / "metrics.jsonl").write_bytes(lines + b'{"step": 30, "rew')  # crash mid-line
    rewards = [_row(s)["reward"] or math.nan for s in range(STEPS)]
    summary = {
        "steps_done": STEPS,
        "stop_reason": "steps",
        "wall_time": 12.5,
        "reward_first": 0.12,
        "reward_last": 0.68,
        "eval_before": 0.1,
        "eval_after": 0.6,
        "best_eval": 0.62,
        "out": str(d),
        "policy": "prompt",
        "convergence": convergence(rewards),
        "requests": 480,
    }
    (d / "summary.json").write_bytes(orjson.dumps(summary))
    (d / "config.json").write_bytes(orjson.dumps({"steps": STEPS, "policy": "prompt"}))
    m = compare_scores("quality", [0.1, 0.2, 0.3, 0.2], [0.3, 0.4, 0.3, 0.5], n_resamples=500)
    comparison = {
        "model_a": "base <prompt>",
        "model_b": "tuned",
        "n_inputs": 4,
        "samples_per_input": 2,
        "seed": 0,
        "confidence": 0.95,
        "metrics": {"quality": m.to_dict()},
        "samples": [{"id": "e0", "input": "2 + 2?", "a": "5", "b": "4 <b>bold</b>"}],
    }
    (d / "comparison.json").write_bytes(orjson.dumps(comparison))
    return d


# ============================================================================ axes and charts


def test_nice_ticks_hand_cases() -> None:
    """Ticks are 1/2/2.5/5 x 10^k steps covering the range; degenerate ranges still get axes."""
    assert nice_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0.13, 0.87) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    assert nice_ticks(0, 59, 6, integer=True) == [0, 10, 20, 30, 40, 50, 60]
    assert nice_ticks(0, 3, 6, integer=True) == [0, 1, 2, 3]  # never fractional steps
    assert nice_ticks(0.0, 0.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])  # 0 at the bottom
    assert nice_ticks(2.0, 2.0)[0] < 2.0 < nice_ticks(2.0, 2.0)[-1]
    assert nice_ticks(-0.02, 0.01) == pytest.approx([-0.02, -0.01, 0.0, 0.01])
    assert nice_ticks(math.nan, 1.0) == [0.0, 1.0]


def test_tick_labels() -> None:
    """Labels carry the decimals their step needs, with k/M for large values."""
    assert tick_label(0.2, 0.2) == "0.2"
    assert tick_label(0.25, 0.05) == "0.25"
    assert tick_label(1e-17, 0.1) == "0"
    assert tick_label(0.0004, 0.0002) == "0.0004"
    assert tick_label(2e-6, 1e-6) == "2e-06"
    assert tick_label(20_000, 10_000) == "20k"
    assert tick_label(1_500_000, 500_000) == "1.5M"
    assert tick_label(40, 10) == "40"


def test_line_chart_parts() -> None:
    """A chart has a title, a legend entry per series, ticks, a path per finite run, tooltips."""
    xs = list(range(10))
    ys = [float(x) for x in xs]
    ys[4] = math.nan
    svg = line_chart(
        "Loss & more",
        [
            Series("loss", xs, ys),
            Series("eval", [3, 7], [2.0, 6.0], kind="points"),
            Series(
                "band", xs, ys_low=[y - 1 for y in ys], ys_high=[y + 1 for y in ys], kind="band"
            ),
        ],
        y_label="value",
        chart_id="c1",
    )
    assert svg.startswith('<svg class="chart" id="c1"') and svg.endswith("</svg>")
    assert "Loss &amp; more" in svg  # escaped
    assert svg.count('class="series"') == 2  # the NaN at x=4 splits the line in two
    assert svg.count('class="band"') == 2
    assert svg.count('<circle class="marker"') == 2
    for label in ("loss", "eval", "band", "value", "step"):
        assert f">{label}</text>" in svg
    assert "<title>step 7\nloss: 7\neval: 6\nband: 6 to 8</title>" in svg  # hover column


# ============================================================================ the page


def test_report_contents(synthetic_run: Path) -> None:
    """Every plot is drawn, the summary and A/B table are shown, nothing is fetched or run."""
    page = render_report(load_run(synthetic_run))
    for cid in ALL_CHARTS:
        assert f'id="{cid}"' in page, cid
    assert "rate_limit" in page and "timeout" in page  # error classes in the legend
    assert ">#0</text>" in page and ">#2</text>" in page  # candidate probabilities
    assert "eval reward (greedy)" in page and "trend (last 10 steps)" in page
    assert "Convergence:</b> improving" in page
    assert "0.120 &rarr; 0.680" in page  # train reward first -> last
    assert "base &lt;prompt&gt;" in page and "4 &lt;b&gt;bold&lt;/b&gt;" in page  # escaped
    assert "<script" not in page.lower()
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in page and "@import" not in page and "url(" not in page
    assert "Not recorded in this run" not in page


def test_report_of_a_sparse_run_lists_absent_plots(tmp_path: Path) -> None:
    """A run with only rewards draws the reward plot and names the plots it cannot draw."""
    (tmp_path / "metrics.jsonl").write_bytes(
        b"".join(orjson.dumps({"step": s, "reward": 0.1 * s}) + b"\n" for s in range(5))
    )
    page = render_report(load_run(tmp_path))
    assert 'id="chart-reward"' in page and 'id="chart-kl-to-the-reference-policy"' not in page
    assert "Not recorded in this run:" in page and "Prompt candidates" in page
    assert "No summary.json" in page and "No comparison.json" in page


def test_prompt_policy_without_per_candidate_keys(tmp_path: Path) -> None:
    """Without candidate_prob/<id> keys the prompt plot falls back to prompt/best_prob."""
    rows = [
        {"step": s, "reward": 0.1, "prompt/best_prob": 0.3 + 0.1 * s, "prompt/candidates": 3 + s}
        for s in range(5)
    ]
    (tmp_path / "metrics.jsonl").write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    page = render_report(load_run(tmp_path))
    assert 'id="chart-prompt-candidates"' in page and ">best candidate</text>" in page
    assert 'id="chart-candidate-pool"' in page


def test_load_run_rejects_a_non_run(tmp_path: Path) -> None:
    """A directory without metrics or summary is a DataError naming it."""
    from engine.errors import DataError

    with pytest.raises(DataError, match="not a run directory"):
        load_run(tmp_path)


def test_report_of_a_real_run(tmp_path: Path) -> None:
    """A short real training run renders: reward, KL, tokens and latency plots are there."""
    cfg = load_config(
        None,
        [
            "steps=4",
            "data.batch_size=4",
            "grpo.group_size=4",
            "data.num_examples=100",
            "trainer.eval_every=2",
            "trainer.eval_size=8",
        ],
    )

    async def train() -> None:
        async with TrainingManager(cfg, out=tmp_path) as tm:
            await tm.run()

    anyio.run(train)
    summary = orjson.loads((tmp_path / "summary.json").read_bytes())
    assert summary["convergence"]["n"] == 4 and "trend" in summary["convergence"]
    path = write_report(tmp_path)
    page = path.read_text()
    for cid in ("chart-reward", "chart-kl-to-the-reference-policy", "chart-tokens-per-step"):
        assert f'id="{cid}"' in page
    assert "chart-errors-by-class" in page and "no failed requests in this run" in page


def test_cli_report(synthetic_run: Path, tmp_path: Path) -> None:
    """python -m engine report writes RUN_DIR/report.html or --out; a non-run exits 2."""
    run = [sys.executable, "-m", "engine", "report"]
    proc = subprocess.run([*run, str(synthetic_run)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (synthetic_run / "report.html").is_file()
    out = tmp_path / "elsewhere" / "r.html"
    proc = subprocess.run(
        [*run, str(synthetic_run), "--out", str(out)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and out.is_file()
    proc = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


# ============================================================================ Chromium


@pytest.fixture(scope="module")
def chromium() -> str:
    """Debian's chromium; installed with apt-get under CI, else the test is skipped."""
    if not Path(CHROMIUM).exists():
        if not os.environ.get("CI"):
            pytest.skip(f"{CHROMIUM} not installed (set CI=1 to install it with apt-get)")
        if shutil.which("apt-get") is None:
            pytest.fail("CI is set but apt-get is missing: cannot install chromium")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            subprocess.run(cmd, check=True, env=env, capture_output=True, timeout=1200)
    return CHROMIUM


def _chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess[bytes]:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, timeout=120, check=True)


class _SvgPaths(HTMLParser):
    """Counts, per ``<svg class="chart">``, the paths with drawing data and the tooltips."""

    def __init__(self) -> None:
        super().__init__()
        self.charts: dict[str, dict[str, int]] = {}
        self._current: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "svg" and a.get("class") == "chart":
            self._current = a.get("id") or f"svg{len(self.charts)}"
            self.charts[self._current] = {"paths": 0, "titles": 0, "texts": 0}
        elif self._current is not None:
            if tag == "path" and len(a.get("d") or "") > 10:
                self.charts[self._current]["paths"] += 1
            elif tag in ("title", "text"):
                self.charts[self._current][tag + "s"] += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "svg":
            self._current = None


def _png_ink(path: Path) -> tuple[int, float]:
    """(width x height, share of non-zero bytes in the filtered image data) of a PNG.

    A blank page filters to (almost) all zeros; drawn content does not. Enough to tell a
    blank screenshot from a drawn one without an image library.
    """
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, size = 8, b"", 0
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            size = int.from_bytes(body[:4], "big") * int.from_bytes(body[4:8], "big")
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    return size, sum(1 for b in raw if b) / len(raw)


def test_chromium_renders_every_plot(chromium: str, synthetic_run: Path, tmp_path: Path) -> None:
    """Headless Chromium's DOM has every chart with drawn paths and tooltips."""
    path = write_report(synthetic_run)
    proc = _chromium(chromium, tmp_path / "profile", "--dump-dom", path.as_uri())
    parser = _SvgPaths()
    parser.feed(proc.stdout.decode())
    assert set(parser.charts) == set(ALL_CHARTS)
    for cid, counts in parser.charts.items():
        assert counts["paths"] >= 1, cid
        assert counts["titles"] >= STEPS // 2, cid  # hover tooltips per step
        assert counts["texts"] >= 6, cid  # title, legend, tick labels


def test_chromium_screenshot_is_not_blank(
    chromium: str, synthetic_run: Path, tmp_path: Path
) -> None:
    """A screenshot of the report has far more ink than one of an empty page."""
    path = write_report(synthetic_run)
    blank = tmp_path / "blank.html"
    blank.write_text("<!DOCTYPE html><html><body></body></html>")
    shots = {}
    for name, page in (("report", path), ("blank", blank)):
        shot = tmp_path / f"{name}.png"
        _chromium(
            chromium,
            tmp_path / f"profile-{name}",
            "--window-size=1280,2000",
            f"--screenshot={shot}",
            page.as_uri(),
        )
        shots[name] = _png_ink(shot)
    (size_r, ink_r), (size_b, ink_b) = shots["report"], shots["blank"]
    assert size_r == size_b == 1280 * 2000
    assert ink_r > 0.02 and ink_r > 20 * max(ink_b, 1e-4)
