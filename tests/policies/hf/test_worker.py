"""ModelThread: every call on one thread, inline from that thread, errors carried back."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import pytest

from engine.policies.hf.worker import ModelThread


def test_calls_from_many_threads_run_on_one() -> None:
    thread = ModelThread("t")
    seen: set[int] = set()

    def work() -> int:
        seen.add(threading.get_ident())
        return threading.get_ident()

    callers = [threading.Thread(target=thread.call, args=(work,)) for _ in range(8)]
    for c in callers:
        c.start()
    for c in callers:
        c.join()
    assert len(seen) == 1 and threading.get_ident() not in seen
    thread.close()


def test_a_call_from_the_thread_itself_runs_inline() -> None:
    thread = ModelThread("t")
    outer = thread.call(lambda: (thread.on_thread(), thread.call(threading.get_ident)))
    assert outer[0] is True
    assert thread.call(threading.get_ident) == outer[1]
    assert not thread.on_thread()
    thread.close()


def test_errors_come_back_and_run_awaits_without_blocking_the_loop() -> None:
    thread = ModelThread("t")

    def boom() -> None:
        raise ValueError("bad batch")

    with pytest.raises(ValueError, match="bad batch"):
        thread.call(boom)

    async def main() -> list[str]:
        order: list[str] = []
        gate = threading.Event()

        def slow() -> str:
            gate.wait(30)
            return "done"

        async with anyio.create_task_group() as tg:

            async def run_slow() -> None:
                order.append(await thread.run(slow))

            tg.start_soon(run_slow)
            await anyio.lowlevel.checkpoint()
            order.append("loop free")
            gate.set()
        return order

    assert anyio.run(main) == ["loop free", "done"]
    thread.close()
