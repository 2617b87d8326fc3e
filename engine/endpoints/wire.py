"""Endpoint stage: the client's own HTTP/1.1 connections (``EndpointConfig.http_client =
"native"``, the default).

Every request the client sends is the same kind: a POST of a JSON body of known length to
one origin, its answer read whole up to a cap, redirects not followed, no cookies, no proxy.
aiohttp's ``ClientSession`` is general (cookies, redirects, proxies, middlewares, streamed
bodies, tracing, a writer task per request) and that generality is most of the client's CPU:
about 110 us per request at 512 in flight, against about 27 us for this module's
connections on the same machine (``benchmarks/README.md``, bench_client). An
:class:`HttpPool` sends exactly that kind of request over keep-alive connections of its own,
on asyncio's transports and protocols; ``http_client = "aiohttp"`` keeps the aiohttp session.

The request: ``POST`` with the client's headers (rendered once per route by
:meth:`HttpPool.head`), ``Host``, ``User-Agent``, ``Accept-Encoding: gzip, deflate`` and
``Content-Length``, written in one ``transport.write``.

The response, read by :class:`_Connection` as it arrives, is untrusted:

- the status line must be ``HTTP/1.x NNN``, each header line ``name: value`` with a token
  for a name; the head may hold at most ``MAX_HEAD_BYTES`` and ``MAX_HEADERS`` lines;
  informational (1xx) heads are skipped;
- the body is framed by ``Transfer-Encoding: chunked``, else by ``Content-Length`` (two
  different lengths are refused), else read to the end of the connection (which is then not
  reused); 204 and 304 have none;
- at most ``max_bytes`` are read, counted after decompression (gzip and deflate; other
  encodings are refused): an announced length above it is refused before reading, and the
  connection is closed;
- a connection closed before any byte of the answer raises :class:`Disconnected` (on a
  reused connection this is the keep-alive race, resent at once by the client); closed or
  malformed later, :class:`ProtocolError`. Both are ``ConnectionError`` (``OSError``) and
  become transport errors.

Connections: at most ``limit`` open at once (callers beyond it wait in order), at most
``max_handshakes`` being opened at once (a burst of handshakes resumes hundreds of requests
in one loop iteration otherwise), idle ones reused newest first and closed after
``keepalive`` seconds. A request cancelled (the watchdog's timeout, a shutdown) aborts its
connection: a half-read answer never reaches the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import zlib
from collections import deque
from collections.abc import Mapping
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from ..errors import ClientClosedError

__all__ = (
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "Disconnected",
    "HttpPool",
    "ProtocolError",
    "check_headers",
)

MAX_HEAD_BYTES = 64 * 1024
"""The largest response head (status line and headers) read."""

MAX_HEADERS = 256
"""The most header lines a response head may have."""

Answer = tuple[int, CIMultiDictProxy[str], bytes | None]
"""A response: its status, its headers, its body (None: larger than the cap, not read)."""

_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_BAD_IN_HEADER = ("\r", "\n", "\x00")
_NO_BODY_STATUS = (204, 304)


class Disconnected(ConnectionError):
    """The server closed the connection before any byte of its answer."""


class ProtocolError(ConnectionError):
    """The server's bytes are not an HTTP/1.1 answer this client accepts (or stopped short).

    Attributes:
        status: the answer's status when its head had been read, else None.
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def check_headers(headers: Mapping[str, str]) -> None:
    """Raise ValueError naming the header (never its value) whose name is not a token or
    whose value holds CR, LF or NUL: such a header would split the request."""
    for name, value in headers.items():
        if not name or any(b not in _TOKEN for b in name.encode("latin-1", "replace")):
            raise ValueError(f"header name {name!r} is not a valid HTTP token")
        if any(c in value for c in _BAD_IN_HEADER):
            raise ValueError(f"the value of header {name!r} holds a line break or NUL")


class _Connection(asyncio.Protocol):
    """One keep-alive connection, and the parser of the answer it is waiting for."""

    __slots__ = ("_buf", "_chunk_left", "_chunks", "_framing", "_got", "_headers",
                 "_max", "_need", "_pool", "_status", "_waiter", "closed", "idle_since",
                 "reusable", "transport")  # fmt: skip

    def __init__(self, pool: HttpPool) -> None:
        self._pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.reusable = True
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Answer] | None = None
        self._reset(0)

    def _reset(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._buf = bytearray()
        self._framing = 0  # 0 head, 1 length, 2 chunked, 3 to the end of the connection
        self._status = 0
        self._headers: CIMultiDictProxy[str] | None = None
        self._chunks: list[bytes] = []
        self._got = 0  # body bytes received (before decompression)
        self._need = 0  # body bytes announced (framing 1)
        self._chunk_left = -1  # framing 2: bytes left in this chunk; -1 its size line next

    # ------------------------------------------------------------------ asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's does not subclass asyncio.Transport)
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._waiter.done():  # bytes nobody asked for
            self.reusable = False
            self._abort()
            return
        try:
            self._feed(data)
        except ProtocolError as exc:
            self._fail(exc)

    def eof_received(self) -> bool:
        return False  # the transport closes itself; connection_lost decides what it means

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            if self._framing == 3:
                self._finish()
            elif self._framing == 0 and not self._buf:
                waiter.set_exception(
                    Disconnected("the server closed the connection before answering")
                )
            else:
                got = f"{self._got} body bytes" if self._framing else f"{len(self._buf)} bytes"
                self._fail(ProtocolError(f"the connection closed after {got} of the answer",
                                         self._status or None))  # fmt: skip
        self._pool._lost(self)

    # ------------------------------------------------------------------ one exchange

    def send(
        self, payload: bytes, max_bytes: int, loop: asyncio.AbstractEventLoop
    ) -> asyncio.Future[Answer]:
        """Write a request; the future resolves to its answer."""
        self._reset(max_bytes)
        waiter = self._waiter = loop.create_future()
        assert self.transport is not None
        self.transport.write(payload)
        return waiter

    def _abort(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.abort()

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self._abort()

    def _feed(self, data: bytes) -> None:
        if self._framing == 0:
            buf = self._buf
            buf += data
            while self._framing == 0:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                    return
                if end > MAX_HEAD_BYTES:
                    raise ProtocolError(f"response head larger than {MAX_HEAD_BYTES} bytes")
                head = bytes(buf[:end])
                del buf[: end + 4]
                self._head(head)  # may skip a 1xx head (framing stays 0) or finish
                if self._waiter is None or self._waiter.done():
                    if buf:  # bytes past a body-less answer
                        self._abort()
                    return
            data = bytes(buf)
            self._buf = bytearray()
            if not data:
                return
        if self._framing == 1:
            self._chunks.append(data)
            self._got += len(data)
            if self._got >= self._need:
                if self._got > self._need:  # bytes past the answer: not a connection to reuse
                    self.reusable = False
                    joined = b"".join(self._chunks)[: self._need]
                    self._chunks = [joined]
                    self._got = self._need
                self._finish()
        elif self._framing == 2:
            self._chunked(data)
        else:
            self._chunks.append(data)
            self._got += len(data)
            if self._got > self._max:
                self._too_large()

    def _head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        status_line = lines[0]
        if (
            len(status_line) < 12
            or not status_line.startswith("HTTP/1.")
            or status_line[8] != " "
            or not (status_line[9:12].isascii() and status_line[9:12].isdigit())
            or (len(status_line) > 12 and status_line[12] != " ")
        ):
            raise ProtocolError(f"invalid status line {status_line[:200]!r}")
        status = int(status_line[9:12])
        if len(lines) > MAX_HEADERS + 1:
            raise ProtocolError(f"more than {MAX_HEADERS} header lines")
        pairs: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if not sep or not name or name[-1] in " \t" or name[0] in " \t":
                raise ProtocolError(f"invalid header line {line[:200]!r}")
            pairs.append((name, value.strip(" \t")))
        headers = CIMultiDictProxy(CIMultiDict(pairs))
        if status < 200:  # informational (100 Continue, 103 Early Hints): the answer follows
            return
        self._status = status
        self._headers = headers
        if status_line.startswith("HTTP/1.0"):
            self.reusable = "keep-alive" in headers.get("Connection", "").lower()
        elif "close" in headers.get("Connection", "").lower():
            self.reusable = False
        if status in _NO_BODY_STATUS:
            self._framing = 1
            self._need = 0
            self._finish()
            return
        if "chunked" in headers.get("Transfer-Encoding", "").lower():
            self._framing = 2
            return
        lengths = headers.getall("Content-Length", ())
        if lengths:
            length = _length(lengths, status)
            if length > self._max:
                self._too_large()
                return
            self._framing = 1
            self._need = length
            if length == 0:
                self._finish()
            return
        self._framing = 3  # to the end of the connection
        self.reusable = False

    def _chunked(self, data: bytes) -> None:
        buf = self._buf
        buf += data
        while True:
            if self._chunk_left == -1:  # a size line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > 4096:
                        raise ProtocolError("chunk size line longer than 4096 bytes", self._status)
                    return
                size_text = bytes(buf[:end]).split(b";", 1)[0].strip()
                try:
                    size = int(size_text, 16)
                except ValueError:
                    raise ProtocolError(
                        f"invalid chunk size {size_text[:40]!r}", self._status
                    ) from None
                del buf[: end + 2]
                if size < 0:
                    raise ProtocolError("negative chunk size", self._status)
                if size == 0:
                    self._chunk_left = -2  # the trailers
                else:
                    if self._got + size > self._max:
                        self._too_large()
                        return
                    self._chunk_left = size
            elif self._chunk_left == -2:  # trailers, up to an empty line
                end = buf.find(b"\r\n")
                if end < 0:
                    if len(buf) > MAX_HEAD_BYTES:
                        raise ProtocolError("chunked trailers too large", self._status)
                    return
                del buf[: end + 2]
                if end == 0:
                    if buf:
                        self.reusable = False
                    self._finish()
                    return
            else:  # chunk data, then its CRLF
                if len(buf) < self._chunk_left + 2:
                    return
                if buf[self._chunk_left : self._chunk_left + 2] != b"\r\n":
                    raise ProtocolError("chunk not followed by CRLF", self._status)
                self._chunks.append(bytes(buf[: self._chunk_left]))
                self._got += self._chunk_left
                del buf[: self._chunk_left + 2]
                self._chunk_left = -1

    def _too_large(self) -> None:
        """The body would pass the cap: the answer has no body, the connection is closed."""
        waiter = self._waiter
        headers = self._headers
        if waiter is not None and not waiter.done() and headers is not None:
            waiter.set_result((self._status, headers, None))
        self._abort()

    def _finish(self) -> None:
        chunks = self._chunks
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        headers = self._headers
        assert headers is not None
        waiter = self._waiter
        self._chunks = []
        if "Content-Encoding" in headers:
            try:
                decoded = _decode(body, headers["Content-Encoding"], self._max)
            except ProtocolError as exc:
                exc.status = self._status
                self._fail(exc)
                return
            if decoded is None:
                self._too_large()
                return
            body = decoded
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, headers, body))
        if not self.reusable:
            self._abort()


def _length(values: list[str], status: int) -> int:
    """The one Content-Length of an answer (repeated values must agree)."""
    try:
        lengths = {int(v.strip()) for value in values for v in value.split(",")}
    except ValueError:
        raise ProtocolError(f"invalid Content-Length {values[0][:40]!r}", status) from None
    if len(lengths) != 1 or min(lengths) < 0:
        raise ProtocolError(f"conflicting or negative Content-Length {values!r}"[:200], status)
    return lengths.pop()


def _decode(body: bytes, encoding: str, max_bytes: int) -> bytes | None:
    """``body`` decompressed (gzip or deflate), or None once it would pass ``max_bytes``."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return body
    if name in ("gzip", "x-gzip"):
        wbits = 16 + zlib.MAX_WBITS
    elif name == "deflate":  # zlib-wrapped, or raw as some servers send it
        wbits = zlib.MAX_WBITS if body[:1] == b"\x78" else -zlib.MAX_WBITS
    else:
        raise ProtocolError(
            f"unsupported Content-Encoding {encoding[:40]!r} (asked for gzip, deflate)"
        )
    decoder = zlib.decompressobj(wbits)
    try:
        out = decoder.decompress(body, max_bytes + 1)
    except zlib.error as exc:
        raise ProtocolError(f"undecodable {name} body: {exc}") from None
    if len(out) > max_bytes or decoder.unconsumed_tail:
        return None
    return out


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one origin, for the client's POSTs.

    Example::

        pool = HttpPool(URL("http://127.0.0.1:8000/v1"), {"Content-Type": "application/json"},
                        limit=64)
        head = pool.head(URL("http://127.0.0.1:8000/v1/chat/completions"))
        status, headers, body = await pool.post(head, b'{"model": "m"}', 1 << 20)
        await pool.aclose()

    Args:
        origin: any URL of the origin (scheme, host and port are used); ``https`` uses a
            default TLS context (the system's trust store, hostnames checked).
        headers: sent on every request (validated by :func:`check_headers`).
        limit: connections open at once at most.
        keepalive: seconds an idle connection is kept.
        max_handshakes: connections being opened at once at most.
        user_agent: the ``User-Agent`` unless ``headers`` has one.
        tls: the TLS context of ``https`` connections; None: ``ssl.create_default_context()``
            (made on the first connection, in a worker thread).
    """

    __slots__ = (
        "_closed",
        "_handshakes",
        "_headers",
        "_host",
        "_hostport",
        "_idle",
        "_keepalive",
        "_limit",
        "_loop",
        "_open",
        "_port",
        "_ssl",
        "_sweep_handle",
        "_waiters",
    )  # fmt: skip

    def __init__(
        self,
        origin: URL,
        headers: Mapping[str, str],
        *,
        limit: int,
        keepalive: float = 4.0,
        max_handshakes: int = 64,
        user_agent: str = "grpo-engine",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if origin.scheme not in ("http", "https") or not origin.host:
            raise ValueError(f"not an http(s) URL: {origin.scheme}://...")
        check_headers(headers)
        self._loop = asyncio.get_running_loop()
        self._host = origin.host
        self._port = origin.port or (443 if origin.scheme == "https" else 80)
        self._hostport = origin.host_port_subcomponent
        https = origin.scheme == "https"
        self._ssl: ssl.SSLContext | bool = tls if https and tls is not None else https
        merged = {k.lower(): (k, v) for k, v in headers.items()}
        merged.setdefault("user-agent", ("User-Agent", user_agent))
        merged.setdefault("accept-encoding", ("Accept-Encoding", "gzip, deflate"))
        for reserved in ("host", "content-length", "transfer-encoding", "connection"):
            merged.pop(reserved, None)
        self._headers = "".join(f"{k}: {v}\r\n" for k, v in merged.values())
        self._limit = max(1, limit)
        self._keepalive = keepalive
        self._handshakes = asyncio.Semaphore(max_handshakes)
        self._idle: list[_Connection] = []
        self._open: set[_Connection] = set()
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._sweep_handle: asyncio.TimerHandle | None = None
        self._closed = False

    def head(self, url: URL) -> bytes:
        """The bytes of a request to ``url`` (of this origin) up to ``Content-Length: ``."""
        target = url.raw_path_qs or "/"
        if any(c in target for c in (" ", *_BAD_IN_HEADER)):
            raise ValueError("the request path holds a space, line break or NUL")
        return (
            f"POST {target} HTTP/1.1\r\nHost: {self._hostport}\r\n{self._headers}Content-Length: "
        ).encode("latin-1")

    @property
    def connections(self) -> int:
        """Connections open (or being opened) now."""
        return len(self._open)

    async def post(self, head: bytes, body: bytes, max_bytes: int, alarm: Any = None) -> Answer:
        """Send ``head`` (from :meth:`head`) with ``body``; the answer, its body read up to
        ``max_bytes`` (None beyond). ``alarm.fresh`` is set when a new connection is opened
        for it (a connection it did not open came from the keep-alive pool).

        Raises:
            Disconnected: closed before any byte of the answer.
            ProtocolError: a malformed or cut answer.
            OSError: the connection could not be opened.
        """
        conn = self._take_idle()
        if conn is None:
            conn = await self._connect(alarm)
        payload = b"%s%d\r\n\r\n%s" % (head, len(body), body)
        try:
            answer = await conn.send(payload, max_bytes, self._loop)
        except BaseException:
            conn._abort()
            self._forget(conn)
            raise
        conn._waiter = None
        if conn.reusable and not conn.closed and not self._closed:
            conn.idle_since = self._loop.time()
            self._idle.append(conn)
            if self._sweep_handle is None:
                self._sweep_handle = self._loop.call_later(self._keepalive, self._sweep)
            self._wake()
        else:
            conn._abort()
            self._forget(conn)
        return answer

    def _take_idle(self) -> _Connection | None:
        idle = self._idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing():
                return conn
            self._forget(conn)
        return None

    async def _connect(self, alarm: Any) -> _Connection:
        """A new connection, once one may be opened (fewer than ``limit`` open)."""
        while True:
            if self._closed:  # not retried: the client is shutting down
                raise ClientClosedError("the client is closed")
            if len(self._open) < self._limit and not self._waiters:
                break
            conn = self._take_idle()
            if conn is not None:
                return conn
            if len(self._open) < self._limit:  # room, but others wait first
                self._wake()
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # woken as it was cancelled: the turn goes to the next
                else:
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                raise
            conn = self._take_idle()
            if conn is not None:
                return conn
            if len(self._open) < self._limit:
                break
        if alarm is not None:
            alarm.fresh = True
        conn = _Connection(self)
        self._open.add(conn)
        try:
            tls = await self._tls()
            async with self._handshakes:
                await self._loop.create_connection(
                    lambda: conn,
                    self._host,
                    self._port,
                    ssl=tls,
                    server_hostname=self._host if tls is not None else None,
                )  # addresses tried in turn: 3.11's happy eyeballs leaks a socket on cancel
        except BaseException:
            self._forget(conn)
            raise
        return conn

    async def _tls(self) -> ssl.SSLContext | None:
        """The TLS context of a new connection (None for http); the default one is made in
        a worker thread, on the first connection (loading the trust store takes a while)."""
        if self._ssl is False:
            return None
        if self._ssl is True:
            context = await asyncio.to_thread(ssl.create_default_context)
            if self._ssl is True:  # not made meanwhile by a concurrent first connection
                self._ssl = context
        assert isinstance(self._ssl, ssl.SSLContext)
        return self._ssl

    def _forget(self, conn: _Connection) -> None:
        if conn in self._open:
            self._open.discard(conn)
            self._wake()

    def _lost(self, conn: _Connection) -> None:
        """A connection closed (by either side)."""
        if conn._waiter is None:  # idle, or between exchanges: nobody will release it
            self._forget(conn)

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close the connections idle for longer than ``keepalive``."""
        self._sweep_handle = None
        cutoff = self._loop.time() - self._keepalive
        keep: list[_Connection] = []
        for conn in self._idle:
            if conn.idle_since <= cutoff or conn.closed:
                conn._abort()
                self._forget(conn)
            else:
                keep.append(conn)
        self._idle = keep
        if keep:
            wait = max(0.05, keep[0].idle_since + self._keepalive - self._loop.time())
            self._sweep_handle = self._loop.call_later(wait, self._sweep)

    async def aclose(self) -> None:
        """Close every connection; later posts raise
        :class:`~engine.errors.ClientClosedError`."""
        self._closed = True
        if self._sweep_handle is not None:
            self._sweep_handle.cancel()
            self._sweep_handle = None
        for conn in list(self._open):
            if conn.transport is not None:
                conn.transport.close()
        self._idle.clear()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
        if self._open:
            await asyncio.sleep(0)  # let the transports' connection_lost run
