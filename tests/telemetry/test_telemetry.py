"""engine.telemetry.events.RequestStats: what a step's request metrics count."""

from __future__ import annotations

from engine.telemetry.events import RequestStats


def _event(error_class: str | None = None, **extra: object) -> dict[str, object]:
    return {"kind": "generation", "latency": 0.1, "prompt_tokens": 3, "completion_tokens": 2,
            "error_class": error_class, **extra}  # fmt: skip


def test_cancelled_attempts_are_counted_apart_from_errors() -> None:
    """An attempt the engine cancelled itself is a request, not an endpoint error: it does not
    raise the error rate; real failures count by class."""
    stats = RequestStats()
    for cls in (None, None, "rate_limit", "server", "cancelled", "cancelled"):
        stats.record(_event(cls))
    out = stats.snapshot()
    assert out["requests/total"] == 6
    assert out["requests/errors"] == 2
    assert out["requests/error_rate"] == 2 / 6
    assert out["requests/cancelled"] == 2
    assert out["errors/rate_limit"] == 1 and out["errors/server"] == 1
    assert "errors/cancelled" not in out
    assert stats.snapshot()["requests/total"] == 0  # the window was reset


def test_merge_adds_every_count() -> None:
    a, b = RequestStats(), RequestStats()
    a.record(_event("cancelled", kind="judge"))
    b.record(_event("timeout"))
    b.record(_event())
    a.merge(b)
    out = a.snapshot()
    assert (out["requests/total"], out["requests/errors"], out["requests/cancelled"]) == (3, 1, 1)
    assert out["requests/judge"] == 1 and out["requests/generation"] == 2
    assert out["tokens/prompt"] == 9 and out["errors/timeout"] == 1
