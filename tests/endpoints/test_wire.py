"""engine.endpoints.wire, the client's own HTTP/1.1 connections, against real servers on
loopback that answer with scripted bytes: framing (length, chunked, to the end), encodings,
the body cap, malformed and cut answers, keep-alive reuse, the connection limit, aborts on
cancellation, the idle sweep, TLS, and the request's bytes."""

from __future__ import annotations

import asyncio
import gzip
import ssl
import subprocess
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import orjson
import pytest
from yarl import URL

from engine.config.sections import EndpointConfig, RetryConfig
from engine.endpoints.client import Client
from engine.endpoints.wire import (
    MAX_HEAD_BYTES,
    Disconnected,
    HttpPool,
    ProtocolError,
    check_headers,
)
from engine.errors import ConfigError, TransportError
from engine.testing.sim import SimConfig, SimServer

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]
"""Answers one request (its raw bytes); returns whether to keep the connection for more."""


class RawServer:
    """A loopback server that reads whole requests and answers each with ``reply``.

    Attributes:
        requests: the raw bytes of every request received.
        accepted: connections accepted; ``open_now`` and ``most_open``: open at once.
        eofs: connections the client closed.
    """

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.requests: list[bytes] = []
        self.accepted = 0
        self.open_now = 0
        self.most_open = 0
        self.eofs = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eofs += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                if not await self.reply(request, writer):
                    return
        finally:
            self.open_now -= 1
            writer.close()

    @property
    def url(self) -> URL:
        return URL(f"http://127.0.0.1:{self.port}/v1/chat/completions")

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()


def answer(body: bytes, *, status: str = "200 OK", headers: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n{headers}"
    return head.encode() + b"Content-Length: %d\r\n\r\n%s" % (len(body), body)


def fixed(data: bytes, keep: bool = True) -> Reply:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(data)
        await writer.drain()
        return keep

    return reply


@asynccontextmanager
async def pool_for(server: RawServer, **kwargs: object) -> AsyncIterator[HttpPool]:
    pool = HttpPool(server.url, {"Content-Type": "application/json"}, limit=8, **kwargs)  # type: ignore[arg-type]
    try:
        yield pool
    finally:
        await pool.aclose()


async def post(pool: HttpPool, url: URL, body: bytes = b"{}", cap: int = 1 << 20):
    return await pool.post(pool.head(url), body, cap)


# ----------------------------------------------------------------------------- framing


async def test_length_framed_answers_reuse_one_connection() -> None:
    """Three requests in turn: three answers (status, case-insensitive headers, body), one
    connection; the request carries the method, path, Host, headers and body it was given."""
    async with RawServer(fixed(answer(b'{"ok": 1}', headers="X-Request-Id: r1\r\n"))) as srv:
        async with pool_for(srv) as pool:
            for _ in range(3):
                status, headers, body = await post(pool, srv.url, b'{"a": 1}')
                assert (status, body) == (200, b'{"ok": 1}')
                assert headers["x-request-id"] == "r1"
        assert srv.accepted == 1
        first = srv.requests[0]
        assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{srv.port}\r\n".encode() in first
        assert b"Content-Type: application/json\r\n" in first
        assert b"Content-Length: 8\r\n\r\n" in first and first.endswith(b'{"a": 1}')
        assert b"Accept-Encoding: gzip, deflate\r\n" in first


async def test_chunked_answer_with_extensions_and_trailers() -> None:
    """Chunked bodies are joined (size-line extensions ignored, trailers skipped), and the
    connection stays reusable."""
    data = (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"4;ext=1\r\n{\"a\"\r\n5\r\n: 12}\r\n0\r\nX-Trailer: t\r\n\r\n")  # fmt: skip
    async with RawServer(fixed(data)) as srv, pool_for(srv) as pool:
        for _ in range(2):
            status, _, body = await post(pool, srv.url)
            assert (status, body) == (200, b'{"a": 12}')
        assert srv.accepted == 1


async def test_answer_read_to_the_end_of_the_connection() -> None:
    """No length, no chunking: the body is what comes until the server closes, and the
    connection is not reused."""
    data = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + b'{"to": "eof"}'
    async with RawServer(fixed(data, keep=False)) as srv, pool_for(srv) as pool:
        for _ in range(2):
            assert (await post(pool, srv.url))[2] == b'{"to": "eof"}'
        assert srv.accepted == 2


async def test_informational_heads_are_skipped_and_204_has_no_body() -> None:
    replies = [b"HTTP/1.1 100 Continue\r\n\r\n" + answer(b"{}"), b"HTTP/1.1 204 No Content\r\n\r\n"]

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(replies.pop(0))
        return True

    async with RawServer(reply) as srv, pool_for(srv) as pool:
        assert (await post(pool, srv.url))[::2] == (200, b"{}")
        assert (await post(pool, srv.url))[::2] == (204, b"")
        assert srv.accepted == 1


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_answers_are_decoded(encoding: str) -> None:
    body = orjson.dumps({"text": "x" * 500})
    if encoding == "gzip":
        packed = gzip.compress(body)
    elif encoding == "deflate":
        packed = zlib.compress(body)
    else:
        c = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        packed = c.compress(body) + c.flush()
    name = "deflate" if encoding == "raw-deflate" else encoding
    data = answer(packed, headers=f"Content-Encoding: {name}\r\n")
    async with RawServer(fixed(data)) as srv, pool_for(srv) as pool:
        assert (await post(pool, srv.url))[2] == body


async def test_the_cap_counts_decompressed_bytes_and_announced_lengths() -> None:
    """Over the cap: no body (None) and the connection closed, whether the length was
    announced, the chunks add up past it, or a small gzip body inflates past it."""
    bomb = gzip.compress(b"0" * 100_000)
    replies = [
        answer(b"x" * 5000),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"800\r\n"
        + b"y" * 2048
        + b"\r\n" * 2,
        answer(bomb, headers="Content-Encoding: gzip\r\n"),
    ]

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(replies.pop(0))
        return True

    async with RawServer(reply) as srv, pool_for(srv) as pool:
        for _ in range(3):
            status, _, body = await post(pool, srv.url, cap=1000)
            assert (status, body) == (200, None)
        assert srv.accepted == 3  # each over-cap answer closed its connection
    assert len(bomb) < 1000


# ----------------------------------------------------------------------------- bad answers


async def test_closed_before_answering_is_a_disconnect() -> None:
    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    async with RawServer(reply) as srv, pool_for(srv) as pool:
        with pytest.raises(Disconnected):
            await post(pool, srv.url)
        assert pool.connections == 0


async def test_cut_short_answer_is_a_protocol_error_with_its_status() -> None:
    data = b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n" + b'{"half": '
    async with RawServer(fixed(data, keep=False)) as srv, pool_for(srv) as pool:
        with pytest.raises(ProtocolError, match="closed after 9 body bytes") as info:
            await post(pool, srv.url)
    assert info.value.status == 200


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"HTTP/2 200 OK\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 2OO OK\r\n\r\n", "invalid status line"),
        (b"HTTP/1.1 200 OK\r\nNo colon here\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\n folded: x\r\n\r\n", "invalid header line"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}", "conflicting"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "negative"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
        (b"HTTP/1.1 200 OK\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}", "unsupported"),
        (b"HTTP/1.1 200 OK\r\nX: " + b"a" * (MAX_HEAD_BYTES + 10), "head larger"),
    ],
)
async def test_malformed_answers_are_refused(data: bytes, match: str) -> None:
    async with RawServer(fixed(data)) as srv, pool_for(srv) as pool:
        with pytest.raises(ProtocolError, match=match):
            await post(pool, srv.url)
        assert pool.connections == 0  # the connection was dropped


async def test_bytes_past_the_answer_keep_the_connection_from_reuse() -> None:
    async with RawServer(fixed(answer(b"{}") + b"HTTP/1.1 200 OK\r\n")) as srv:
        async with pool_for(srv) as pool:
            assert (await post(pool, srv.url))[2] == b"{}"
            assert (await post(pool, srv.url))[2] == b"{}"
        assert srv.accepted == 2


# ----------------------------------------------------------------------------- connections


async def test_connections_never_pass_the_limit() -> None:
    """20 posts at once on a pool of 3: at most 3 connections open at the server, all
    answered, in turn reused."""

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.01)
        writer.write(answer(b"{}"))
        return True

    async with RawServer(reply) as srv:
        pool = HttpPool(srv.url, {}, limit=3)
        try:
            answers = await asyncio.gather(*(post(pool, srv.url) for _ in range(20)))
        finally:
            await pool.aclose()
        assert [a[0] for a in answers] == [200] * 20
        assert srv.accepted == 3 and srv.most_open == 3


async def test_a_cancelled_post_aborts_its_connection() -> None:
    """A post cancelled while its answer is on the way drops the connection: the next post
    opens a new one and gets its own answer, not the late one."""
    replies = [(0.5, b'{"late": 1}'), (0.0, b'{"next": 2}')]

    async def reply(request: bytes, writer: asyncio.StreamWriter) -> bool:
        delay, body = replies.pop(0)
        await asyncio.sleep(delay)
        writer.write(answer(body))
        return True

    async with RawServer(reply) as srv, pool_for(srv) as pool:
        task = asyncio.create_task(post(pool, srv.url))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert pool.connections == 0
        assert (await post(pool, srv.url))[2] == b'{"next": 2}'
        assert srv.accepted == 2


async def test_idle_connections_are_closed_after_keepalive() -> None:
    async with RawServer(fixed(answer(b"{}"))) as srv, pool_for(srv, keepalive=0.05) as pool:
        await post(pool, srv.url)
        assert pool.connections == 1
        for _ in range(100):
            await asyncio.sleep(0.02)
            if srv.eofs:
                break
        assert srv.eofs == 1 and pool.connections == 0
        await post(pool, srv.url)  # a new connection is opened as needed
        assert srv.accepted == 2


async def test_a_connection_the_server_closed_while_idle_is_not_used() -> None:
    async with RawServer(fixed(answer(b"{}"), keep=False)) as srv, pool_for(srv) as pool:
        await post(pool, srv.url)
        await asyncio.sleep(0.05)  # the server's close arrives while the connection idles
        assert (await post(pool, srv.url))[2] == b"{}"
        assert srv.accepted == 2


def test_headers_that_would_split_a_request_are_refused() -> None:
    check_headers({"X-Ok": "value", "Authorization": "Bearer k"})
    with pytest.raises(ValueError, match="X-Bad"):
        check_headers({"X-Bad": "a\r\nInjected: 1"})
    with pytest.raises(ValueError, match="token"):
        check_headers({"Bad Name": "v"})


def test_a_key_with_a_line_break_is_a_config_error() -> None:
    endpoint = EndpointConfig(base_url="http://127.0.0.1:9/v1", api_key_env="WIRE_TEST_KEY")
    with pytest.raises(ConfigError, match=r"WIRE_TEST_KEY holds a line break") as info:
        Client(endpoint, env={"WIRE_TEST_KEY": "sk-secret\n"})
    assert "sk-secret" not in str(info.value)


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 made with the openssl command."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_verifies_the_server(certificate: tuple[Path, Path]) -> None:
    """Over https: a server the context trusts answers; with the default context (the
    system's trust store) the self-signed server is refused."""
    cert, key = certificate
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            await reader.readexactly(2)
            writer.write(answer(b'{"tls": true}'))
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    url = URL(f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1/chat/completions")
    try:
        trusting = ssl.create_default_context(cafile=str(cert))
        pool = HttpPool(url, {}, limit=2, tls=trusting)
        try:
            assert (await pool.post(pool.head(url), b"{}", 1000))[2] == b'{"tls": true}'
        finally:
            await pool.aclose()
        strict = HttpPool(url, {}, limit=2)
        try:
            with pytest.raises(ssl.SSLCertVerificationError):
                await strict.post(strict.head(url), b"{}", 1000)
        finally:
            await strict.aclose()
    finally:
        server.close()
        await server.wait_closed()


# ----------------------------------------------------------------------------- the client


@pytest.mark.parametrize("http_client", ["native", "aiohttp"])
async def test_both_http_clients_answer_the_simulated_server(http_client: str) -> None:
    """The client on either HTTP layer gets the same answers from the simulated server,
    and a truncated answer is a retried transport error on both."""
    async with SimServer(SimConfig(seed=3)) as sim:
        endpoint = EndpointConfig(base_url=sim.base_url, model="sim-model", http_client=http_client)  # type: ignore[arg-type]
        async with Client(endpoint, retry=RetryConfig(backoff_base=0.0)) as client:
            outs = await asyncio.gather(*(client.complete(f"q{i}", n=2) for i in range(8)))
        assert all(len(o.choices) == 2 and o.choices[0].text for o in outs)
        assert sim.statistics().requests == 8

    async with RawServer(
        fixed(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n{", keep=False)
    ) as srv:
        endpoint = EndpointConfig(
            base_url=f"http://127.0.0.1:{srv.port}/v1", http_client=http_client
        )  # type: ignore[arg-type]
        retry = RetryConfig(max_attempts=2, backoff_base=0.0)
        async with Client(endpoint, retry=retry) as client:
            with pytest.raises(TransportError) as info:
                await client.complete("x")
        assert info.value.attempt == 2


def test_the_native_client_runs_on_uvloop() -> None:
    """With the uvloop extra (the CLI's loop when installed), the client's own connections
    work on uvloop's transports, which do not subclass asyncio's."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[int]:
        async with SimServer(SimConfig(seed=5)) as sim:
            endpoint = EndpointConfig(base_url=sim.base_url, model="sim-model")
            async with Client(endpoint) as client:
                outs = await asyncio.gather(*(client.complete(f"q{i}", n=3) for i in range(6)))
        return [len(o.choices) for o in outs]

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        assert runner.run(main()) == [3] * 6
