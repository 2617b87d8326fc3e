"""The report's step timeline, built from real runs' events.jsonl.

A judged prompt-policy run against the simulated server (``python -m engine run``, two
concurrency slots for 20 requests a step, so attempts queue for permits) and an embedded run
with evaluations and checkpoints: the timeline's figures agree with the events and the
metrics, every span lies inside its step, the page draws it (escaped, no script), and headless
Chromium lays every span out inside its chart.
"""

from __future__ import annotations

import math
from pathlib import Path

import anyio
import orjson
import pytest

from engine.cli.main import main
from engine.evaluation.report import load_run, render_report, write_report
from engine.evaluation.report.timeline import LEARNER_PHASES, build_timeline
from engine.telemetry.records import read_records
from engine.testing.sim import SimConfig, SimServer
from tests.evaluation.test_page import _chromium, chromium  # noqa: F401  (fixture)
from tests.reliability.support import grading_model, run_engine, to_toml

STEPS, BATCH, GROUP = 3, 4, 4


def _judged_config(base_url: str, out: Path) -> dict[str, object]:
    return {
        "policy": "prompt",
        "steps": STEPS,
        "seed": 0,
        "out": str(out),
        "grpo": {"group_size": GROUP, "mini_batch_size": 4},
        "prompt": {
            "instructions": ["Label the review.", "Positive or negative?"],
            "select_served": False,
        },  # no served-choice scoring: these counts are of generation and evaluation
        "endpoint": {
            "provider": "local",
            "base_url": base_url,
            "model": "sim-model",
            "max_tokens": 8,
            "timeout": 30.0,
            "deadline": 120.0,
        },
        "limits": {"max_concurrency": 2},  # 4 generation + 16 judge requests a step: queues
        "reward": {"functions": ["non_empty"], "judge_prompt": "Grade the label's clarity."},
        "data": {"batch_size": BATCH},
        "trainer": {"eval_every": 0, "checkpoint_every": 1},
    }


@pytest.fixture(scope="module")
def judged_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished CLI run with generation and judge requests, queue waits and checkpoints."""
    tmp = tmp_path_factory.mktemp("judged")
    out = tmp / "run"

    async def main() -> None:
        async with SimServer(SimConfig(model=grading_model, latency=0.01)) as sim:
            cfg = tmp / "run.toml"
            cfg.write_text(to_toml(_judged_config(sim.base_url, out)))
            done = await run_engine(["run", "--config", str(cfg), "--quiet"], limit=300)
        assert done.returncode == 0, done.err[-3000:]

    anyio.run(main)
    return out


def test_timeline_of_a_judged_run(judged_run: Path) -> None:
    """Per step: requests by kind as counted in metrics.jsonl, queue waits as in the events,
    an update and a checkpoint; the parts of a step add up to its duration."""
    tl = build_timeline(judged_run / "events.jsonl")
    rows = {r["step"]: r for r in read_records(judged_run / "metrics.jsonl")}
    events = read_records(judged_run / "events.jsonl")
    requests = [e for e in events if e["kind"] not in ("log", "phase")]
    assert all("queue_wait" in e for e in requests)
    assert tl.has_phases and [s.step for s in tl.steps] == list(range(STEPS))
    for st in tl.steps:
        m = rows[st.step]
        assert st.requests["generation"] == m["requests/generation"] >= BATCH
        assert st.requests["judge"] == m["requests/judge"] >= BATCH * GROUP
        assert sum(st.requests.values()) == m["requests/total"]
        mine = [e for e in requests if e["group_id"].startswith(f"{st.step}-")]
        assert st.queue_wait == pytest.approx(sum(e["queue_wait"] for e in mine))
        assert set(st.phases) == {"update", "after_update", "checkpoint"}
        assert all(v > 0 for v in st.phases.values()), st.phases
        assert st.rollouts > 0 and math.isfinite(st.duration) and st.duration > 0
        parts = st.waiting + st.other + sum(st.phases.values())
        assert parts == pytest.approx(st.duration, abs=1e-6)
        assert st.start <= st.update_start <= st.end
    assert max(st.queue_wait_max for st in tl.steps) > 0  # 2 slots, 20 requests: some queued
    for prev, st in zip(tl.steps, tl.steps[1:], strict=False):
        assert st.start >= prev.end - 1e-6  # a step starts when the previous one ended
    slow = tl.slowest(3)
    assert [s.duration for s in slow] == sorted((s.duration for s in tl.steps), reverse=True)
    assert set(tl.detail) == {s.step for s in slow} | {STEPS - 1}


def test_detailed_spans_lie_inside_their_step(judged_run: Path) -> None:
    """Every request attempt of a detailed step is drawn once, after its queue wait, inside
    the window from its batch's first activity to the step's end."""
    tl = build_timeline(judged_run / "events.jsonl", steps=[1])
    assert set(tl.detail) == {1} and not tl.dropped
    st, spans = tl.step(1), tl.detail[1]
    assert st is not None
    lo, hi = min(st.start, st.first_activity), st.end
    for s in spans:
        assert lo - 1e-6 <= s.start <= s.end <= hi + 1e-6, s
    kinds = [s.kind for s in spans]
    assert kinds.count("generation") + kinds.count("judge") == sum(st.requests.values())
    assert {"queue", "generation", "judge", "rollouts", "update", "checkpoint"} <= set(kinds)
    for q in (s for s in spans if s.kind == "queue"):  # its request starts as it ends
        assert any(r.row == q.row and abs(r.start - q.end) < 1e-9 for r in spans
                   if r.kind in ("generation", "judge"))  # fmt: skip
    assert [s.start for s in spans] == sorted(s.start for s in spans)


def test_report_draws_the_timeline(judged_run: Path, tmp_path: Path) -> None:
    """The page has the overview, the slowest-steps table and the detailed steps, linked."""
    page = render_report(load_run(judged_run, timeline_steps=[0, 2, 99]))
    assert "No events of step 99." in page
    assert 'id="timeline-overview"' in page and "Slowest steps" in page
    for k in (0, 2):
        assert f'id="timeline-step-{k}"' in page and f'href="#timeline-step-{k}"' in page
    assert 'id="timeline-step-1"' not in page
    for kind in ("queue", "generation", "judge", "update", "checkpoint", "rollouts"):
        assert f'class="span span-{kind}"' in page, kind
    assert "<script" not in page.lower()
    out = tmp_path / "r.html"
    assert main(["report", str(judged_run), "--out", str(out), "--timeline-step", "1"]) == 0
    cli_page = out.read_text()
    assert 'id="timeline-step-1"' in cli_page and 'id="timeline-step-0"' not in cli_page


def test_timeline_of_an_embedded_run_and_escaping(tmp_path: Path) -> None:
    """An embedded run's events give every learner phase; text from events is escaped; a run
    without events.jsonl says so."""
    out = tmp_path / "run"

    async def main() -> None:
        done = await run_engine(["run", "--steps", "4", "--out", str(out), "--quiet",
                                 "--set", "trainer.eval_every=2",
                                 "--set", "trainer.checkpoint_every=2"])  # fmt: skip
        assert done.returncode == 0, done.err[-3000:]

    anyio.run(main)
    tl = build_timeline(out / "events.jsonl")
    assert {p for st in tl.steps for p in st.phases} == set(LEARNER_PHASES)
    assert [sorted(st.phases) for st in tl.steps][1] == sorted(LEARNER_PHASES)
    with (out / "events.jsonl").open("ab") as fh:  # a hostile group id, and a torn last line
        ev = {"kind": "generation", "group_id": "3-<b>x</b>", "latency": 0.1, "ts": 1e9}
        fh.write(orjson.dumps(ev) + b"\n" + b'{"kind": "gen')
    page = write_report(out, timeline_steps=[3]).read_text()
    assert "3-&lt;b&gt;x&lt;/b&gt;" in page and "<b>x</b>" not in page
    (out / "events.jsonl").write_bytes(b"")
    assert "no request or phase events of any step" in render_report(load_run(out))
    (out / "events.jsonl").unlink()
    assert "No events.jsonl in this run directory." in render_report(load_run(out))


_PROBE = """<script>
const out = [];
for (const svg of document.querySelectorAll("svg.timeline")) {
  const box = svg.getBoundingClientRect();
  for (const r of svg.querySelectorAll("rect.span, rect.seg")) {
    const b = r.getBoundingClientRect();
    out.push({svg: svg.id, cls: r.getAttribute("class"), w: b.width, h: b.height,
              inside: b.left >= box.left - 1 && b.right <= box.right + 1 &&
                      b.top >= box.top - 1 && b.bottom <= box.bottom + 1});
  }
}
const pre = document.createElement("pre");
pre.id = "probe";
pre.textContent = JSON.stringify(out);
document.body.appendChild(pre);
</script>"""


def test_chromium_lays_out_the_timeline(
    chromium: str,  # noqa: F811
    judged_run: Path,
    tmp_path: Path,
) -> None:
    """Headless Chromium renders every span and bar with a size, inside its chart (measured
    by a probe script added to a copy of the page; the report itself has no script)."""
    page = write_report(judged_run, tmp_path / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(page.replace("</body>", _PROBE + "</body>"))
    proc = _chromium(chromium, tmp_path / "profile", "--window-size=1280,2000", "--dump-dom",
                     probe.as_uri())  # fmt: skip
    dom = proc.stdout.decode()
    start = dom.index('<pre id="probe">') + len('<pre id="probe">')
    shapes = orjson.loads(dom[start : dom.index("</pre>", start)].replace("&quot;", '"'))
    charts = {s["svg"] for s in shapes}
    tl = build_timeline(judged_run / "events.jsonl")
    assert charts == {"timeline-overview"} | {f"timeline-step-{k}" for k in tl.detail}
    assert all(s["inside"] for s in shapes), [s for s in shapes if not s["inside"]][:5]
    assert all(s["w"] > 0 and s["h"] > 0 for s in shapes if "span" in s["cls"])
    drawn = {s["cls"].split()[-1] for s in shapes}
    for kind in ("queue", "generation", "judge", "update", "checkpoint", "waiting"):
        assert f"span-{kind}" in drawn, drawn
    bars = [s for s in shapes if s["svg"] == "timeline-overview"]
    assert sum(s["h"] for s in bars) > 50  # the overview's bars are drawn, not flat
