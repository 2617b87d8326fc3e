"""engine.telemetry.logs: silent until configured; configured records reach the event log."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog

from engine.telemetry.logs import attach_event_log, configure_logging, get_logger


class Sink:
    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def log(self, **fields: object) -> None:
        self.records.append(fields)


@pytest.fixture
def restore_structlog() -> Iterator[None]:
    """Start from unconfigured structlog; put it back as it was, so no other test sees this."""
    saved = structlog.get_config()
    was_configured = structlog.is_configured()
    structlog.reset_defaults()
    yield
    attach_event_log(None)
    structlog.reset_defaults()
    if was_configured:
        structlog.configure(**saved)


@pytest.mark.usefixtures("restore_structlog")
def test_logger_is_silent_until_configured(capsys: pytest.CaptureFixture[str]) -> None:
    """Before anyone configures structlog, the engine's loggers print nothing."""
    assert not structlog.is_configured()
    get_logger("engine.test").warning("unconfigured", x=1)
    assert capsys.readouterr() == ("", "")


@pytest.mark.usefixtures("restore_structlog")
def test_configured_records_go_to_the_event_log(capsys: pytest.CaptureFixture[str]) -> None:
    """Records at the level go to the attached sink; only console-level ones reach stderr."""
    configure_logging(level="info", console_level="warning")
    sink = Sink()
    attach_event_log(sink)
    log = get_logger("engine.test")
    log.debug("below.level")
    log.info("to.events", n=1)
    log.warning("to.console", n=2)
    assert [r["event"] for r in sink.records] == ["to.events", "to.console"]
    assert sink.records[0]["level"] == "info" and sink.records[0]["n"] == 1
    err = capsys.readouterr().err
    assert "to.console" in err and "to.events" not in err
