"""engine.training.stopping: signals become clean stops, also before the trainer exists."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import anyio

from engine.config.loading import load_config
from engine.training.stopping import STOP_SIGNALS, SignalStop
from engine.training.trainer import TrainingManager


async def test_a_signal_during_start_up_cancels_it() -> None:
    """Before a trainer is attached, a signal cancels the start-up scope; its status is
    128 + signum."""
    stop = SignalStop()
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(stop.watch)
            with stop.startup() as scope:
                os.kill(os.getpid(), signal.SIGHUP)
                await anyio.sleep(60)  # cancelled by the signal
            tg.cancel_scope.cancel()
    assert scope.cancelled_caught
    assert stop.seen == [signal.SIGHUP] and stop.status == 129


async def test_a_signal_before_attach_stops_the_trainer_at_once(tmp_path: Path) -> None:
    """A signal received before attach() stops the trainer as soon as it is attached: its run
    writes nothing; later signals go straight to request_stop."""
    stop = SignalStop()
    out = tmp_path / "run"
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            await tg.start(stop.watch)
            os.kill(os.getpid(), signal.SIGTERM)
            while not stop.seen:  # noqa: ASYNC110 - set by the signal handler
                await anyio.sleep(0.01)
            async with TrainingManager(load_config(None, ["steps=3"]), out=out) as tm:
                stop.attach(tm)
                summary = await tm.run()
            tg.cancel_scope.cancel()
    assert summary.stop_reason == STOP_SIGNALS[signal.SIGTERM] == "terminated"
    assert summary.steps_done == 0 and not (out / "summary.json").exists()
    assert stop.status == 143
