"""engine.runtime: the garbage-collector tuning the CLI applies before a run."""

from __future__ import annotations

import gc
import weakref

import pytest

from engine.runtime import YOUNG_THRESHOLD, tune_gc


class _Node:
    def __init__(self) -> None:
        self.other: _Node | None = None


def test_tune_gc_freezes_the_heap_and_raises_the_young_threshold() -> None:
    """What is alive is frozen, the young threshold is raised, the older two are kept."""
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    previous = tune_gc()
    assert previous == before
    assert gc.get_threshold() == (YOUNG_THRESHOLD, before[1], before[2])
    assert gc.get_freeze_count() > 1000  # modules, classes, functions at least


def test_tune_gc_without_freezing() -> None:
    tune_gc(5000, freeze=False)
    assert gc.get_threshold()[0] == 5000
    assert gc.get_freeze_count() == 0


def test_cyclic_garbage_made_after_tuning_is_still_collected() -> None:
    """Freezing skips what was alive at the call; a cycle made later is found as before."""
    tune_gc()
    a, b = _Node(), _Node()
    a.other, b.other = b, a
    ref = weakref.ref(a)
    del a, b
    assert ref() is not None  # a cycle: reference counting alone cannot free it
    gc.collect()
    assert ref() is None


def test_collections_are_rarer_after_tuning() -> None:
    """Allocating and keeping 5,000 tracked objects: about 7 young collections by default,
    none with the raised threshold."""
    counts = []
    for tune in (False, True):
        if tune:
            tune_gc()
        gc.collect()
        start = gc.get_stats()[0]["collections"]
        keep = [[i] for i in range(5000)]
        counts.append(gc.get_stats()[0]["collections"] - start)
        del keep
    assert counts[0] >= 5 and counts[1] == 0, counts


def test_tune_gc_refuses_a_threshold_below_one() -> None:
    with pytest.raises(ValueError, match="young_threshold"):
        tune_gc(0)


def test_event_loop_factory_is_the_standard_loop_without_uvloop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without uvloop installed (an import of it fails), or with ENGINE_UVLOOP=0, the CLI runs
    on the standard loop; nothing breaks."""
    import sys

    from engine.runtime import event_loop_factory

    assert event_loop_factory({"ENGINE_UVLOOP": "0"}) is None
    monkeypatch.setitem(sys.modules, "uvloop", None)  # what a missing module raises on import
    assert event_loop_factory({}) is None


def test_event_loop_factory_is_uvloops_when_installed() -> None:
    """With the uvloop extra installed, the factory makes uvloop's loop, and it runs."""
    uvloop = pytest.importorskip("uvloop")
    import asyncio

    from engine.runtime import event_loop_factory

    factory = event_loop_factory({})
    assert factory is uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        assert runner.run(asyncio.sleep(0, "ran")) == "ran"


def test_import_engine_does_not_import_uvloop() -> None:
    """uvloop is loaded by event_loop_factory() only, never by importing the package or
    the CLI's entry module."""
    import subprocess
    import sys

    code = "import sys, engine, engine.runtime, engine.__main__; assert 'uvloop' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
