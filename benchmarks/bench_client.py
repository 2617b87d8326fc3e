"""Benchmark: the endpoint client (engine.endpoints.client.Client) against the openai SDK and
bare aiohttp.

Starts the simulated server in a separate process (``python -m engine serve-sim --port 0
--latency 0.05``; a minimal aiohttp server of this file's own when the sim is not importable),
then, at each concurrency, runs the same chat request through:

- ``engine``: this client with every feature on, at its DEFAULT limits: rpm and tpm armed,
  ``max_concurrency`` left at its default (64), retries armed, one event per attempt written
  to a temporary ``events.jsonl``;
- ``engine-matched``: the same with ``max_concurrency = c`` (as many in flight as the peers);
- ``engine-aiohttp``: ``engine-matched`` over an aiohttp session (``http_client = "aiohttp"``);
- ``openai-aiohttp``: ``openai.AsyncOpenAI(http_client=openai.DefaultAioHttpClient())`` (the
  fair peer: ``pip install 'openai[aiohttp]'``);
- ``openai-httpx``: ``openai.AsyncOpenAI`` with its default httpx transport (only with
  ``--with-httpx``: at c=512 it times out);
- ``bare``: one ``aiohttp.ClientSession``, orjson in and out, nothing else (the peer the
  issue's targets are ratios to);
- ``wire``: the engine's own HTTP/1.1 connections (:class:`engine.endpoints.wire.HttpPool`,
  what ``EndpointConfig.http_client = "native"`` sends over), orjson in and out, nothing
  else: the floor under the engine, so that what its features cost stays visible.

Every client runs under the same garbage-collector settings, in two passes by default:
``default`` (CPython's thresholds, nothing frozen) and ``cli`` (what ``python -m engine run``
does after start-up: :func:`engine.runtime.tune_gc`, a freeze and a young threshold of
20,000). ``--loop uvloop`` runs everything on uvloop's loop.

It prints requests/s, client CPU microseconds per request (``time.process_time`` of this
process divided by requests; the server runs in another process; CPU time is far less
sensitive to a loaded machine than wall time), the share of that CPU spent in the cyclic
GC, and the ratios to bare aiohttp. Run::

    python benchmarks/bench_client.py                       # concurrency 64 and 512
    python benchmarks/bench_client.py --concurrency 512 --repeat 5 --gc default cli
    python benchmarks/bench_client.py --profile engine      # cProfile of the engine run
    python benchmarks/bench_client.py --memory 100000       # RSS over 100k requests
    python benchmarks/bench_client.py --calls --concurrency 512   # calls per request, by module
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import functools
import gc
import importlib.util
import os
import pstats
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config.sections import EndpointConfig, LimitsConfig, RetryConfig
from engine.endpoints.client import Client
from engine.telemetry.events import EventLog

PROMPT = "Write one short sentence about group relative policy optimization."
MAX_TOKENS = 16
FAKE_KEY = "sk-bench-not-a-real-key"

_FALLBACK_SERVER = textwrap.dedent(
    """
    import asyncio, sys, orjson
    from aiohttp import web

    LATENCY = float(sys.argv[1])

    async def handle(request):
        body = orjson.loads(await request.read())
        await asyncio.sleep(LATENCY)
        n = int(body.get("n", 1))
        choices = [
            {"index": i, "message": {"role": "assistant", "content": "a short answer"},
             "finish_reason": "stop"}
            for i in range(n)
        ]
        out = {"id": "x", "object": "chat.completion", "model": body.get("model"),
               "choices": choices,
               "usage": {"prompt_tokens": 10, "completion_tokens": 3 * n,
                         "total_tokens": 10 + 3 * n}}
        return web.Response(body=orjson.dumps(out), content_type="application/json")

    async def main():
        app = web.Application()
        app.router.add_post("/v1/chat/completions", handle)
        runner = web.AppRunner(app, access_log=None, keepalive_timeout=5.0)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        print(f"http://127.0.0.1:{port}/v1", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


@contextlib.contextmanager
def server_process(latency: float, extra: list[str] | None = None):
    """Run the simulated server (or the fallback) in a child process; yield its base URL."""
    if importlib.util.find_spec("engine.testing.sim") is not None:
        cmd = [sys.executable, "-m", "engine", "serve-sim", "--port", "0"]
        cmd += ["--latency", str(latency), *(extra or [])]
        kind = "engine serve-sim"
    else:
        cmd = [sys.executable, "-c", _FALLBACK_SERVER, str(latency)]
        kind = "fallback aiohttp server (engine.testing.sim not found)"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http"):
            raise RuntimeError(f"server did not start: {url!r}")
        print(f"server: {kind} at {url} (pid {proc.pid}), latency {latency} s", flush=True)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@dataclass
class Result:
    name: str
    concurrency: int
    requests: int
    errors: int
    wall: float
    cpu: float
    gc_seconds: float = 0.0

    @property
    def rps(self) -> float:
        return self.requests / self.wall

    @property
    def cpu_us(self) -> float:
        return 1e6 * self.cpu / self.requests

    @property
    def gc_share(self) -> float:
        return self.gc_seconds / self.cpu if self.cpu else 0.0


class GcTimer:
    """CPU seconds spent in the cyclic garbage collector (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._t0 = 0.0

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.process_time()
        else:
            self.seconds += time.process_time() - self._t0

    def __enter__(self) -> GcTimer:
        gc.callbacks.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self)


@contextlib.contextmanager
def gc_settings(mode: str):
    """``default``: CPython's thresholds, nothing frozen; ``cli``: the CLI's tune_gc()."""
    from engine.runtime import tune_gc

    previous = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        if mode == "cli":
            tune_gc()
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*previous)


async def drive(
    call: Callable[[], Awaitable[object]], concurrency: int, total: int
) -> tuple[int, int, float, float, float]:
    """Run ``total`` calls with ``concurrency`` workers; return (ok, errors, wall, cpu, gc)."""
    remaining = total
    ok = errors = 0

    async def worker() -> None:
        nonlocal remaining, ok, errors
        while remaining > 0:
            remaining -= 1
            try:
                await call()
                ok += 1
            except Exception:
                errors += 1

    gc.collect()
    with GcTimer() as gct:
        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return ok, errors, wall, cpu, gct.seconds


# ----------------------------------------------------------------------------- contenders


async def run_engine(
    url: str, conc: int, total: int, warm: int, tmp: Path, matched: bool, http: str = "native"
) -> Result:
    events = EventLog(tmp / f"events-{conc}.jsonl")
    cfg = EndpointConfig(base_url=url, model="sim-model", max_tokens=MAX_TOKENS,
                         http_client=http)  # type: ignore[arg-type]  # fmt: skip
    if matched:
        limits = LimitsConfig(rpm=10_000_000, tpm=1e12, max_concurrency=conc)
        name = f"engine, max_concurrency={conc}"
        if http != "native":
            name += f", over {http}"
    else:  # rpm and tpm armed, max_concurrency at its default
        limits = LimitsConfig(rpm=10_000_000, tpm=1e12)
        name = f"engine, default limits ({limits.max_concurrency})"
    async with Client(
        cfg, limits=limits, retry=RetryConfig(), events=events, api_key=FAKE_KEY
    ) as client:

        async def call() -> object:
            return await client.complete(PROMPT, kind="generation", group_id="g", sample_index=0)

        await drive(call, conc, warm)
        ok, err, wall, cpu, gcs = await drive(call, conc, total)
    events.close()
    return Result(name, conc, ok, err, wall, cpu, gcs)


async def run_openai(url: str, conc: int, total: int, warm: int, aiohttp_transport: bool) -> Result:
    import openai

    kwargs: dict[str, object] = {}
    name = "openai AsyncOpenAI (httpx)"
    if aiohttp_transport:
        kwargs["http_client"] = openai.DefaultAioHttpClient()
        name = "openai AsyncOpenAI (aiohttp)"
    client = openai.AsyncOpenAI(base_url=url, api_key=FAKE_KEY, **kwargs)
    try:

        async def call() -> object:
            return await client.chat.completions.create(
                model="sim-model",
                messages=[{"role": "user", "content": PROMPT}],
                max_tokens=MAX_TOKENS,
                temperature=1.0,
            )

        await drive(call, conc, warm)
        ok, err, wall, cpu, gcs = await drive(call, conc, total)
    finally:
        await client.close()
    return Result(name, conc, ok, err, wall, cpu, gcs)


def request_body() -> bytes:
    """The bare arms' request, rendered on every call as the engine renders its own."""
    return orjson.dumps(
        {
            "model": "sim-model",
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": MAX_TOKENS,
            "temperature": 1.0,
        }
    )


async def run_bare(url: str, conc: int, total: int, warm: int) -> Result:
    connector = aiohttp.TCPConnector(limit=conc, keepalive_timeout=4.0)
    headers = {"Authorization": f"Bearer {FAKE_KEY}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        target = f"{url}/chat/completions"

        async def call() -> object:
            body = request_body()
            async with session.post(target, data=body) as resp:
                data = orjson.loads(await resp.read())
                if resp.status != 200:
                    raise RuntimeError(resp.status)
                return data["choices"][0]["message"]["content"]

        await drive(call, conc, warm)
        ok, err, wall, cpu, gcs = await drive(call, conc, total)
    return Result("bare aiohttp", conc, ok, err, wall, cpu, gcs)


async def run_wire(url: str, conc: int, total: int, warm: int) -> Result:
    """The engine's own HTTP/1.1 connections (engine.endpoints.wire.HttpPool) with nothing
    on top: orjson in and out, as ``bare`` does over aiohttp (the floor of the engine's
    native HTTP client; what the engine costs beyond it is its features)."""
    from yarl import URL

    from engine.endpoints.wire import HttpPool

    target = URL(f"{url}/chat/completions")
    headers = {"Authorization": f"Bearer {FAKE_KEY}", "Content-Type": "application/json"}
    pool = HttpPool(target, headers, limit=conc)
    head = pool.head(target)
    try:

        async def call() -> object:
            body = request_body()
            status, _, raw = await pool.post(head, body, 1 << 26)
            data = orjson.loads(raw or b"null")
            if status != 200:
                raise RuntimeError(status)
            return data["choices"][0]["message"]["content"]

        await drive(call, conc, warm)
        ok, err, wall, cpu, gcs = await drive(call, conc, total)
    finally:
        await pool.aclose()
    return Result("bare engine.endpoints.wire", conc, ok, err, wall, cpu, gcs)


def _have_aiohttp_transport() -> str | None:
    try:
        import openai
    except ImportError:
        return "openai not installed"
    if not hasattr(openai, "DefaultAioHttpClient"):
        return f"openai {openai.__version__} has no DefaultAioHttpClient"
    try:
        openai.DefaultAioHttpClient()
    except RuntimeError as e:
        return f"openai aiohttp transport unavailable: {e}"
    return None


async def bench(args: argparse.Namespace) -> None:
    import openai

    versions = f"aiohttp {aiohttp.__version__}, openai {openai.__version__}"
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"python {sys.version.split()[0]}, {versions}, loop: {loop}")
    no_aio = _have_aiohttp_transport()
    if no_aio:
        print(f"note: skipping openai+aiohttp: {no_aio}")
    only = set(args.only.split(",")) if args.only else None
    with server_process(args.latency) as url, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for mode in args.gc:
            for conc in args.concurrency:
                total = args.requests or max(3000, conc * 12)
                warm = max(conc * 2, 200)
                print(
                    f"\nGC {mode}, concurrency {conc}: {total} requests each (after {warm} warm-up)"
                )
                runs: list[tuple[str, Callable[[], Awaitable[Result]]]] = [
                    ("bare", functools.partial(run_bare, url, conc, total, warm)),
                    ("wire", functools.partial(run_wire, url, conc, total, warm)),
                    ("engine", functools.partial(run_engine, url, conc, total, warm, tmp, False)),
                    (
                        "engine-matched",
                        functools.partial(run_engine, url, conc, total, warm, tmp, True),
                    ),
                    (
                        "engine-aiohttp",
                        functools.partial(run_engine, url, conc, total, warm, tmp, True, "aiohttp"),
                    ),
                ]
                if not no_aio:
                    runs.append(
                        (
                            "openai-aiohttp",
                            functools.partial(run_openai, url, conc, total, warm, True),
                        )
                    )
                if args.with_httpx:
                    runs.append(
                        (
                            "openai-httpx",
                            functools.partial(run_openai, url, conc, total, warm, False),
                        )
                    )
                results: dict[str, list[Result]] = {}
                with gc_settings(mode):
                    for _ in range(args.repeat):  # interleaved: load drifts hit every client
                        for key, fn in runs:
                            if only and key not in only:
                                continue
                            if args.profile == key:
                                prof = cProfile.Profile()
                                prof.enable()
                                r = await fn()
                                prof.disable()
                                pstats.Stats(prof).sort_stats("tottime").print_stats(25)
                            else:
                                r = await fn()
                            results.setdefault(key, []).append(r)
                report(results)


def report(results: dict[str, list[Result]]) -> None:
    """Medians over the repeats (and the best req/s), with ratios to bare aiohttp's medians."""
    med = {
        k: (statistics.median(r.rps for r in rs), statistics.median(r.cpu_us for r in rs))
        for k, rs in results.items()
    }
    floor = med.get("bare")
    print(
        f"{'client (median of runs)':46s} {'req/s':>9s} {'best':>7s} {'CPU us/req':>11s} "
        f"{'GC %CPU':>8s} {'x bare rps':>11s} {'x bare CPU':>11s} {'errors':>7s}"
    )
    for key, rs in results.items():
        rps, cpu = med[key]
        rr = rps / floor[0] if floor else float("nan")
        rc = cpu / floor[1] if floor else float("nan")
        best = max(r.rps for r in rs)
        errors = sum(r.errors for r in rs)
        share = 100 * statistics.median(r.gc_share for r in rs)
        print(
            f"{rs[0].name:46s} {rps:9.0f} {best:7.0f} {cpu:11.0f} {share:8.1f} {rr:11.2f} "
            f"{rc:11.2f} {errors:7d}"
        )


def _area(filename: str) -> str:
    """Where a profiled function lives: an engine module, or the library it belongs to."""
    if "/engine/" in filename:
        return "engine/" + filename.split("/engine/", 1)[1]
    for lib in ("aiohttp", "asyncio", "multidict", "yarl", "benchmarks", "selectors"):
        if lib in filename:
            return lib
    return "other"


def _calls_by_area(prof: cProfile.Profile) -> dict[str, float]:
    """Calls counted by cProfile (coroutine resumptions included), each builtin charged to
    the area of the function that called it."""
    by: dict[str, float] = {}
    for (f, _, _), (_, nc, _, _, callers) in pstats.Stats(prof).stats.items():  # type: ignore[attr-defined]
        if f == "~":  # a builtin
            for (cf, _, _), v in callers.items():
                by[_area(cf)] = by.get(_area(cf), 0) + (v[0] if isinstance(v, tuple) else v)
        else:
            by[_area(f)] = by.get(_area(f), 0) + nc
    return by


async def calls(args: argparse.Namespace) -> None:
    """Python calls per request, by where they are made: bare aiohttp and the engine
    (matched limits, every feature on) under cProfile, in one process, same server."""
    conc, total = args.concurrency[-1], args.requests or 3000
    warm = max(conc * 2, 200)
    out: dict[str, dict[str, float]] = {}
    with server_process(args.latency) as url, tempfile.TemporaryDirectory() as tmpdir:
        for key in ("bare", "engine"):
            prof = cProfile.Profile()
            orig_drive = drive

            async def profiled(call, c, n, _orig=orig_drive, _prof=prof):  # type: ignore[no-untyped-def]
                if n != total:
                    return await _orig(call, c, n)
                _prof.enable()
                try:
                    return await _orig(call, c, n)
                finally:
                    _prof.disable()

            globals()["drive"] = profiled
            try:
                if key == "bare":
                    await run_bare(url, conc, total, warm)
                else:
                    await run_engine(url, conc, total, warm, Path(tmpdir), True)
            finally:
                globals()["drive"] = orig_drive
            out[key] = _calls_by_area(prof)
    e, b = out["engine"], out["bare"]
    print(f"\ncalls per request at c={conc} ({total} requests each, cProfile)")
    print(f"{'where':32s} {'engine':>8s} {'bare':>8s} {'extra':>8s}")
    for k in sorted(set(e) | set(b), key=lambda k: -(e.get(k, 0) - b.get(k, 0))):
        ek, bk = e.get(k, 0) / total, b.get(k, 0) / total
        if abs(ek - bk) >= 0.5:
            print(f"{k:32s} {ek:8.1f} {bk:8.1f} {ek - bk:8.1f}")
    print(f"{'total':32s} {sum(e.values()) / total:8.1f} {sum(b.values()) / total:8.1f}")


def rss_mib() -> float:
    """This process's resident set now (Linux ``/proc``; peak RSS elsewhere), MiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def memory(args: argparse.Namespace) -> None:
    """RSS growth over ``args.memory`` requests, engine (events on, a group id that names no
    step, ``step_metrics()`` never called: an embedder's use) vs bare aiohttp, and the
    latencies the event statistics hold at the end."""
    total, conc, warm = args.memory, 64, 2000
    with server_process(args.latency) as url, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        print(f"\nmemory: {total} requests at concurrency {conc} (after {warm} warm-up)")
        bare_growth = await _bare_growth(url, conc, total, warm)
        events = EventLog(tmp / "events.jsonl")
        cfg = EndpointConfig(base_url=url, model="sim-model", max_tokens=MAX_TOKENS)
        async with Client(
            cfg, limits=LimitsConfig(rpm=10_000_000, tpm=1e12), events=events, api_key=FAKE_KEY
        ) as client:

            async def call() -> object:
                return await client.complete(PROMPT, group_id="g", sample_index=0)

            await drive(call, conc, warm)
            gc.collect()
            before = rss_mib()
            await drive(call, conc, total)
            gc.collect()
            growth = rss_mib() - before
        events.close()
        lat = events._unstepped.latencies  # what the statistics keep (a list before the bound)
        values = getattr(lat, "values", lat)
        held = len(values)
        held_bytes = sys.getsizeof(values) + sum(sys.getsizeof(v) for v in values)
        print(f"{'bare aiohttp: RSS growth':40s} {bare_growth:8.2f} MiB")
        print(f"{'engine: RSS growth':40s} {growth:8.2f} MiB")
        print(f"{'engine: latencies held by the statistics':40s} {held:8d} (of {events.count})")
        print(f"{'engine: their memory (list and floats)':40s} {held_bytes / 2**20:8.2f} MiB")


async def _bare_growth(url: str, conc: int, total: int, warm: int) -> float:
    connector = aiohttp.TCPConnector(limit=conc, keepalive_timeout=4.0)
    async with aiohttp.ClientSession(connector=connector) as session:
        target = f"{url}/chat/completions"
        body = {"model": "sim-model", "messages": [{"role": "user", "content": PROMPT}]}

        async def call() -> object:
            async with session.post(target, data=orjson.dumps(body)) as resp:
                return orjson.loads(await resp.read())

        await drive(call, conc, warm)
        gc.collect()
        before = rss_mib()
        await drive(call, conc, total)
        gc.collect()
        return rss_mib() - before


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[64, 512])
    ap.add_argument("--requests", type=int, default=0, help="per client; 0 = max(3000, 12 x c)")
    ap.add_argument("--latency", type=float, default=0.05, help="server latency, seconds")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved runs per client (median)")
    ap.add_argument(
        "--only",
        default="",
        help="comma list of: bare,wire,engine,engine-matched,engine-aiohttp,openai-aiohttp,"
        "openai-httpx",
    )
    ap.add_argument("--with-httpx", action="store_true", help="also run openai's httpx client")
    ap.add_argument(
        "--gc",
        nargs="+",
        choices=["default", "cli"],
        default=["default", "cli"],
        help="GC settings every client runs under: CPython's defaults, the CLI's tune_gc()",
    )
    ap.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    ap.add_argument("--profile", default="", help="cProfile one of the clients")
    ap.add_argument(
        "--memory", type=int, default=0, help="instead: RSS growth over this many requests"
    )
    ap.add_argument(
        "--calls", action="store_true", help="instead: Python calls per request, by module"
    )
    args = ap.parse_args()
    factory = None
    if args.loop == "uvloop":
        import uvloop

        factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        if args.calls:
            runner.run(calls(args))
        else:
            runner.run(memory(args) if args.memory else bench(args))


if __name__ == "__main__":
    main()
