"""A direct socket into an actor's event loop for the unary request path.

Why: on a 2-core machine one Ray actor call costs about 1.3 ms round trip
(gRPC plus the core worker's bookkeeping on both sides), and a gateway
request makes two of them (caller -> router -> endpoint actor): 3-4 ms before
a byte goes upstream.  The same blob over a TCP connection straight into the
actor's event loop costs about 0.1 ms (measured for bench/overhead.py).

Ray still places, names, restarts and supervises the actors, and carries
every other call (control calls, streams).  The lane carries only the
request blobs an actor would otherwise get through ``request_packed`` or
``execute_packed``, with the same bytes in and out.  A caller that cannot
use the lane (not open yet, the actor restarted, the connection broke, a
network that does not route to the actor) sends the same blob through that
Ray method instead, so the lane is an optimisation and never a second
behaviour.

Security: the lane listens on the node's address, so every connection starts
with a challenge.  The server sends a random nonce and the client answers
HMAC-SHA256(secret, nonce).  The secret is made per server and reaches callers
only through a Ray call (``lane_info``), that is only processes the cluster
already trusts.  Nothing a connection sends is unpickled before it has
answered the challenge, and only the caller's own blobs are unpickled after.

A caller that goes away cancels its requests: closing the connection cancels
everything still running for it on the server, and an async caller that is
cancelled sends a cancel frame for its one request.
"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import os
import socket
import struct
import threading
import weakref
from dataclasses import dataclass, field
from typing import Awaitable, Callable

log = logging.getLogger(__name__)

#: a frame: call id, kind, payload length
_HEADER = struct.Struct("!QBI")
_NONCE_BYTES = 32
_REQUEST, _CANCEL, _REPLY, _FAILED = 1, 2, 3, 4
#: the largest payload a lane carries; a bigger request takes the Ray path
MAX_PAYLOAD = 256 * 1024 * 1024
#: a peer that has not answered the challenge by then is dropped
HANDSHAKE_TIMEOUT_S = 5.0
#: connecting to a lane that does not answer this fast means: use Ray instead
CONNECT_TIMEOUT_S = 2.0

Handler = Callable[[bytes], Awaitable[bytes]]


class LaneUnavailable(ConnectionError):
    """The lane could not carry the call: send it the Ray way instead.

    ``kind`` says why: "connect" (the address does not answer: a network that
    does not route to the actor, so stop trying for a while), "broken" (the
    connection closed, the actor may have restarted: ask Ray for the new
    address), "closed" (the client was closed) or "size" (too big for a frame).
    """

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


class LaneCallFailed(RuntimeError):
    """The server's handler raised instead of answering; the message says what."""


@dataclass(frozen=True)
class LaneAddress:
    """Where a lane listens and the secret that opens it (never shown in repr)."""
    host: str
    port: int
    secret: bytes = field(repr=False)


def _answer(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, nonce, hashlib.sha256).digest()


def _frame(call_id: int, kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(call_id, kind, len(payload)) + payload


# ---------------------------------------------------------------------------
# Server: runs in the actor's event loop
# ---------------------------------------------------------------------------

class LaneServer:
    """Answers request frames with ``handler(payload)``; one task per request."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1") -> None:
        self._handler = handler
        self._host = host
        self._secret = os.urandom(32)
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()
        self.address: LaneAddress | None = None
        self.served = 0

    def __repr__(self) -> str:
        where = f"{self.address.host}:{self.address.port}" if self.address else "closed"
        return f"LaneServer({where})"

    async def start(self) -> LaneAddress:
        if self.address is None:
            self._server = await asyncio.start_server(self._accept, self._host, 0)
            port = self._server.sockets[0].getsockname()[1]
            self.address = LaneAddress(self._host, port, self._secret)
        return self.address

    async def close(self) -> None:
        """Stop listening and drop every connection (their callers fall back to Ray)."""
        server, self._server, self.address = self._server, None, None
        if server is not None:
            server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.gather(*self._connections, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        running: dict[int, asyncio.Task] = {}
        try:
            if not await self._challenge(reader, writer):
                return
            while True:
                call_id, kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size > MAX_PAYLOAD:
                    log.warning("lane: dropping a connection that sent a %d-byte frame", size)
                    return
                payload = await reader.readexactly(size) if size else b""
                if kind == _REQUEST:
                    running[call_id] = asyncio.ensure_future(self._run(call_id, payload, writer, running))
                elif kind == _CANCEL:
                    job = running.pop(call_id, None)
                    if job is not None:
                        job.cancel()
                else:
                    log.warning("lane: dropping a connection that sent frame kind %d", kind)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # the caller went away
        finally:
            self._connections.discard(task)
            for job in running.values():  # nobody is left to read these answers
                job.cancel()
            writer.close()

    async def _challenge(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonce = os.urandom(_NONCE_BYTES)
        writer.write(nonce)
        try:
            answer = await asyncio.wait_for(reader.readexactly(32), HANDSHAKE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False
        if not hmac.compare_digest(answer, _answer(self._secret, nonce)):
            log.warning("lane: refused a connection that did not know the secret")
            return False
        return True

    async def _run(self, call_id: int, payload: bytes, writer: asyncio.StreamWriter,
                   running: dict[int, asyncio.Task]) -> None:
        try:
            reply = _frame(call_id, _REPLY, await self._handler(payload))
        except asyncio.CancelledError:
            return
        except Exception as exc:  # noqa: BLE001 - the caller gets the failure, not a hang
            reply = _frame(call_id, _FAILED, f"{type(exc).__name__}: {exc}"[:2000].encode("utf-8", "replace"))
        finally:
            running.pop(call_id, None)
        self.served += 1
        if not writer.is_closing():
            writer.write(reply)
            try:
                await writer.drain()
            except (ConnectionError, OSError):
                pass  # the connection is gone; its reader ends and cleans up


def _read_reply(kind: int, payload: bytes) -> bytes:
    if kind == _FAILED:
        raise LaneCallFailed(payload.decode("utf-8", "replace"))
    return payload


# ---------------------------------------------------------------------------
# Async client: one connection per event loop, many requests in flight
# ---------------------------------------------------------------------------

class AsyncLaneClient:
    """Calls over one connection from one event loop; answers arrive in any order."""

    def __init__(self, address: LaneAddress) -> None:
        self.address = address
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Future | None = None
        self._reader_task: asyncio.Task | None = None
        self.closed = False

    def __repr__(self) -> str:
        return f"AsyncLaneClient({self.address.host}:{self.address.port}, in_flight={len(self._waiting)})"

    async def call(self, payload: bytes) -> bytes:
        """The server's answer to ``payload``; LaneUnavailable if the lane cannot carry it."""
        if len(payload) > MAX_PAYLOAD:
            raise LaneUnavailable("payload larger than a lane frame", "size")
        writer = await self._connected()
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            writer.write(_frame(call_id, _REQUEST, payload))
            return await future
        except asyncio.CancelledError:
            if self._waiting.pop(call_id, None) is not None and not writer.is_closing():
                writer.write(_frame(call_id, _CANCEL))
            raise
        finally:
            self._waiting.pop(call_id, None)

    async def _connected(self) -> asyncio.StreamWriter:
        if self.closed:
            raise LaneUnavailable("lane closed", "closed")
        if self._writer is not None:
            return self._writer
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())
        try:
            return await asyncio.shield(self._connecting)
        except LaneUnavailable:
            raise
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self._fail(f"cannot connect: {type(exc).__name__}", "connect")
            raise LaneUnavailable(f"cannot connect: {type(exc).__name__}", "connect") from None

    async def _connect(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.address.host, self.address.port), CONNECT_TIMEOUT_S)
        _no_delay(writer.get_extra_info("socket"))
        nonce = await asyncio.wait_for(reader.readexactly(_NONCE_BYTES), CONNECT_TIMEOUT_S)
        writer.write(_answer(self.address.secret, nonce))
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read_replies(reader))
        return writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                payload = await reader.readexactly(size) if size else b""
                future = self._waiting.pop(call_id, None)
                if future is None or future.done():
                    continue  # its caller was cancelled
                try:
                    future.set_result(_read_reply(kind, payload))
                except LaneCallFailed as exc:
                    future.set_exception(exc)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:  # closed, broken, or its event loop is shutting down
            self._fail("the connection closed before the answer came", "broken")

    def _fail(self, why: str, kind: str) -> None:
        """The connection is gone: every waiting caller learns it, and the client is
        spent (the actor may have moved; its owner asks Ray for the new address)."""
        self.closed = True
        if self._writer is not None:
            self._writer.close()
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(LaneUnavailable(why, kind))

    async def close(self) -> None:
        self._fail("lane closed", "closed")
        if self._reader_task is not None:
            self._reader_task.cancel()
            await asyncio.gather(self._reader_task, return_exceptions=True)


# ---------------------------------------------------------------------------
# Blocking client: one connection per thread, one request at a time
# ---------------------------------------------------------------------------

class LaneClient:
    """Blocking calls for synchronous callers (``gw.chat``); each thread has its own
    connection, so threads never wait for each other's answers."""

    def __init__(self, address: LaneAddress) -> None:
        self.address = address
        self._local = threading.local()
        self._ids = itertools.count(1)
        self._sockets: weakref.WeakSet[socket.socket] = weakref.WeakSet()
        self._lock = threading.Lock()
        self.closed = False

    def __repr__(self) -> str:
        return f"LaneClient({self.address.host}:{self.address.port})"

    def call(self, payload: bytes) -> bytes:
        """The server's answer to ``payload``; LaneUnavailable if the lane cannot carry it.
        Interrupted (Ctrl-C), the connection is dropped, which cancels the request."""
        if len(payload) > MAX_PAYLOAD:
            raise LaneUnavailable("payload larger than a lane frame", "size")
        sock = self._socket()
        call_id = next(self._ids)
        try:
            sock.sendall(_frame(call_id, _REQUEST, payload))
            while True:
                got_id, kind, size = _HEADER.unpack(_recv_exactly(sock, _HEADER.size))
                reply = _recv_exactly(sock, size) if size else b""
                if got_id == call_id:
                    return _read_reply(kind, reply)
        except (OSError, EOFError) as exc:
            self._drop(sock)
            self.closed = True  # the actor may have restarted elsewhere: its owner asks Ray again
            raise LaneUnavailable(f"the connection broke: {type(exc).__name__}", "broken") from None
        except BaseException:
            self._drop(sock)  # interrupted mid-call: the server cancels the request
            raise

    def _socket(self) -> socket.socket:
        if self.closed:
            raise LaneUnavailable("lane closed", "closed")
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            return sock
        try:
            sock = socket.create_connection((self.address.host, self.address.port), timeout=CONNECT_TIMEOUT_S)
            nonce = _recv_exactly(sock, _NONCE_BYTES)
            sock.sendall(_answer(self.address.secret, nonce))
            sock.settimeout(None)
            _no_delay(sock)
        except (OSError, EOFError) as exc:
            self.closed = True  # the actor may have moved: its owner asks Ray again
            raise LaneUnavailable(f"cannot connect: {type(exc).__name__}", "connect") from None
        self._local.sock = sock
        with self._lock:
            self._sockets.add(sock)
        return sock

    def _drop(self, sock: socket.socket) -> None:
        self._local.sock = None
        sock.close()

    def close(self) -> None:
        self.closed = True
        with self._lock:
            sockets, self._sockets = list(self._sockets), weakref.WeakSet()
        for sock in sockets:
            sock.close()


def node_host() -> str:
    """The address the rest of the cluster reaches this process at (Ray's node IP)."""
    try:
        import ray.util
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (unit tests): loopback
        return "127.0.0.1"


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _no_delay(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
