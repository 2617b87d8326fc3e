"""One thread for every heavy torch call of a policy.

glibc gives each thread that allocates its own malloc arena and returns little of an arena's
freed memory to the system. Generation and training calls spread over a pool of worker threads
(``anyio.to_thread``) therefore grew the process by about 1.5 GB per GRPO step on Gemma 3
270M (the peak RSS of 3 steps of ``benchmarks/bench_hf.py`` 7.6 GB; with every call on one
thread 4.3 GB, flat from step to step). :class:`ModelThread` runs them all on one thread, which
also orders them: the model is used by one call at a time anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import anyio.to_thread

__all__ = ("ModelThread",)

T = TypeVar("T")


class ModelThread:
    """A single worker thread; :meth:`call` runs a function on it and waits (inline when
    already on it), :meth:`run` does the same from async code without blocking the loop.

    Example::

        thread = ModelThread("hf-policy")
        out = await thread.run(model_forward, batch)  # from the event loop
        out = thread.call(model_forward, batch)  # from any other thread
    """

    def __init__(self, name: str) -> None:
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=name, initializer=self._mark
        )

    def _mark(self) -> None:
        self._local.mine = True

    def on_thread(self) -> bool:
        """Whether the calling thread is this worker."""
        return getattr(self._local, "mine", False)

    def call(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the worker thread; its result or exception (blocking)."""
        if self.on_thread():
            return fn(*args)
        return self._pool.submit(fn, *args).result()

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` on the worker thread, awaited from a (non-loop) anyio thread."""
        return await anyio.to_thread.run_sync(self.call, fn, *args)

    def close(self) -> None:
        """Stop the worker once its queued calls are done."""
        self._pool.shutdown(wait=True)
