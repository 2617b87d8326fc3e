"""The HTML run report: the page's contents, a real run's page, and a real render in
headless Chromium (DOM has a drawn SVG per plot; the screenshot is not blank)."""

from __future__ import annotations

import os
import shutil
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import anyio
import orjson
import pytest

from engine.config.loading import load_config
from engine.evaluation.report import load_run, render_report, write_report
from engine.training.trainer import TrainingManager
from tests.evaluation.runs import ALL_CHARTS, STEPS, write_synthetic_run

CHROMIUM = "/usr/bin/chromium"


@pytest.fixture
def synthetic_run(tmp_path: Path) -> Path:
    """A run directory with every metric the report plots, a comparison and a torn last line."""
    return write_synthetic_run(tmp_path / "synthetic")


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
    assert "$0.03" in page and "of $0.05 budget" in page  # the spend card


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
