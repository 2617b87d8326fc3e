"""Process-wide tuning the CLI applies: the cyclic garbage collector, and the event loop.

**The event loop.** :func:`event_loop_factory` is uvloop's ``new_event_loop`` when the
optional ``uvloop`` extra is installed (``pip install 'grpo-engine[uvloop]'``), else None
(the standard loop). The CLI runs on it; an embedding application chooses its own loop, e.g.
``asyncio.Runner(loop_factory=engine.runtime.event_loop_factory())`` or ``uvloop.run(main())``.
``ENGINE_UVLOOP=0`` in the environment keeps the standard loop.

**The garbage collector**, tuned so that it does not stall the event loop.

With many requests in flight a client process holds tens of thousands of GC-tracked objects
that live as long as one request (aiohttp's request, response, parser, timers and coroutine
frames, a few of them the engine's own). CPython 3.11's collector is not incremental: a
collection scans every object of the generations it collects, and with the default
thresholds (700, 10, 10) the youngest generation, which in steady state holds nearly the
whole in-flight set, is collected in one go, long enough to stall the loop for a tick or
more. ``tests/reliability/test_soak.py`` measures this; ``tests/reliability/README.md`` has
the figures.

:func:`tune_gc` does two things:

1. it collects once and **freezes** what is alive (``gc.freeze()``: modules, classes,
   functions, the config, the model, the dataset index), so no later collection scans them
   again;
2. it raises the **youngest generation's threshold** from 700 to ``young_threshold``
   (:data:`YOUNG_THRESHOLD`). CPython counts tracked allocations minus deallocations, so the
   young generation is collected once that many more objects are alive than at the last
   collection: when the in-flight set grows (a large batch starts) or cyclic garbage piles
   up. Reference counting frees what the engine makes on the success path at once; faults
   leave a little (exception tracebacks, closed transports), which collections still find,
   only fewer of them, each no longer than before.

Only the command line calls it (``python -m engine run``, ``eval``, ``compare``), once
everything is built and before the first request; a library user's process is left alone,
and may call it the same way (it returns the thresholds it replaced).
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
from collections.abc import Callable, Mapping

__all__ = ("YOUNG_THRESHOLD", "event_loop_factory", "tune_gc")

YOUNG_THRESHOLD = 20_000
"""Net new tracked objects after which the youngest generation is collected (CPython: 700)."""


def tune_gc(young_threshold: int = YOUNG_THRESHOLD, *, freeze: bool = True) -> tuple[int, int, int]:
    """Tune the garbage collector for a long run with many requests in flight.

    Args:
        young_threshold: the youngest generation's threshold (the older two are kept).
        freeze: collect, then move every object alive now to the permanent generation, which
            later collections skip (``gc.freeze()``). Call it once start-up is done.

    Returns:
        The thresholds replaced, for ``gc.set_threshold(*previous)``.

    Raises:
        ValueError: ``young_threshold`` < 1.
    """
    if young_threshold < 1:
        raise ValueError(f"young_threshold must be >= 1, got {young_threshold}")
    previous = gc.get_threshold()
    if freeze:
        gc.collect()
        gc.freeze()
    gc.set_threshold(young_threshold, previous[1], previous[2])
    return previous


def event_loop_factory(
    env: Mapping[str, str] | None = None,
) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's ``new_event_loop`` when uvloop is installed (the optional ``uvloop`` extra),
    else None: the standard asyncio loop. uvloop is imported here, never by ``import engine``.

    Args:
        env: the environment (None: ``os.environ``); ``ENGINE_UVLOOP=0`` keeps the standard
            loop even where uvloop is installed.
    """
    env = os.environ if env is None else env
    if env.get("ENGINE_UVLOOP", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        uvloop = importlib.import_module("uvloop")
    except ImportError:
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory
