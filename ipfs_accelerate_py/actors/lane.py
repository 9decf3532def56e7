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
behaviour.  ``LaneUnavailable.kind`` tells the caller whether its request
may have run ("broken") or certainly did not ("connect", "refused",
"closed", "size").

Security: the lane listens on the node's address, so both ends prove they
know a per-server secret before anything else: the server answers the
client's nonce and the client the server's, each with HMAC-SHA256 over a
label and the nonce.  The secret reaches callers only through a Ray call
(``lane_info``), that is only processes the cluster already trusts.  Nothing
is unpickled by either side before the other has proved itself, and frames
are capped at MAX_PAYLOAD both ways.

Lifecycle: a caller that goes away cancels its requests (a closed connection
cancels everything still running for it, a cancelled async caller sends a
cancel frame).  ``drain`` switches a server off gently: requests already
running finish and are answered, new ones are refused unrun, and the
connections close once idle.  TCP keepalive and a user timeout make a peer
on a dead node show up as a broken connection instead of a silent hang.
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
_PROOF_BYTES = 32
_REQUEST, _CANCEL, _REPLY, _FAILED, _REFUSED = 1, 2, 3, 4, 5
#: the largest payload a lane carries, either way; a bigger request takes the Ray path
MAX_PAYLOAD = 256 * 1024 * 1024
#: a peer that has not proved itself by then is dropped
HANDSHAKE_TIMEOUT_S = 5.0
#: connecting to a lane that does not answer this fast means: use Ray instead
CONNECT_TIMEOUT_S = 2.0
#: a connection whose peer stops acknowledging (a dead node) breaks after about this long
DEAD_PEER_S = 30
#: a draining server closes an idle connection this long after its last answer, so that
#: answer is read before the close (closing with unread input would reset the connection
#: and could destroy an answer still on its way)
DRAIN_GRACE_S = 1.0

Handler = Callable[[bytes], Awaitable[bytes]]


class LaneUnavailable(ConnectionError):
    """The lane could not carry the call: send it the Ray way instead.

    ``kind`` says why and whether the request may have run:
    "broken" (the connection closed with the request out: it may have run,
    and the actor may have restarted, so ask Ray for the new address);
    "connect" (the address does not answer or is not the actor: the request
    was not sent; a network that does not route there, so wait before trying
    again); "refused" (the actor is turning its lane off; not run);
    "closed" (this client was closed; not sent); "size" (too big for a
    frame; not sent, the lane is fine).
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


def _proof(secret: bytes, label: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, label + nonce, hashlib.sha256).digest()


def _frame(call_id: int, kind: int, payload: bytes = b"") -> bytes:
    return _HEADER.pack(call_id, kind, len(payload)) + payload


def _tune(sock: socket.socket | None) -> None:
    """No Nagle delay; a dead peer breaks the connection within about DEAD_PEER_S."""
    if sock is None:
        return
    options = [(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1), (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", DEAD_PEER_S // 3), ("TCP_KEEPINTVL", DEAD_PEER_S // 6),
                        ("TCP_KEEPCNT", 2), ("TCP_USER_TIMEOUT", DEAD_PEER_S * 1000)):
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


def node_host() -> str:
    """The address the rest of the cluster reaches this process at (Ray's node IP)."""
    try:
        import ray.util
        return ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001 - outside Ray (unit tests): loopback
        return "127.0.0.1"


# ---------------------------------------------------------------------------
# Server: runs in the actor's event loop
# ---------------------------------------------------------------------------

class _Connection:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        #: the requests running for this connection; one withdrawn on purpose (cancel
        #: frame, connection gone) leaves it first, and is owed no answer
        self.running: dict[int, asyncio.Task] = {}
        self._closing: asyncio.TimerHandle | None = None

    def withdraw(self, call_id: int) -> None:
        job = self.running.pop(call_id, None)
        if job is not None:
            job.cancel()

    def close(self) -> None:
        """The connection is over: nobody is left to read the answers of what runs."""
        for call_id in list(self.running):
            self.withdraw(call_id)
        self.writer.close()
        if self._closing is not None:
            self._closing.cancel()

    def close_when_idle(self) -> None:
        """Close after DRAIN_GRACE_S unless a request is running by then."""
        if self._closing is None and not self.running:
            self._closing = asyncio.get_running_loop().call_later(DRAIN_GRACE_S, self._close_if_idle)

    def _close_if_idle(self) -> None:
        self._closing = None
        if not self.running:
            self.writer.close()  # the connection's reader ends and cleans up
        else:
            self.close_when_idle()


class LaneServer:
    """Answers request frames with ``handler(payload)``; one task per request."""

    def __init__(self, handler: Handler, *, host: str = "127.0.0.1") -> None:
        self._handler = handler
        self._host = host
        self._secret = os.urandom(32)
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task, _Connection] = {}
        self._draining = False
        self.address: LaneAddress | None = None
        self.served = 0

    def __repr__(self) -> str:
        where = f"{self.address.host}:{self.address.port}" if self.address else "closed"
        return f"LaneServer({where})"

    async def start(self) -> LaneAddress:
        if self.address is None:
            self._draining = False
            self._server = await asyncio.start_server(self._accept, self._host, 0)
            port = self._server.sockets[0].getsockname()[1]
            self.address = LaneAddress(self._host, port, self._secret)
        return self.address

    def drain(self) -> None:
        """Stop taking requests by lane without dropping any: running ones are answered,
        new ones get "refused" (their callers use Ray), connections close once idle."""
        server, self._server, self.address = self._server, None, None
        if server is not None:
            server.close()
        self._draining = True
        for conn in self._connections.values():
            conn.close_when_idle()

    async def close(self) -> None:
        """Stop now: every connection is dropped and its running requests cancelled."""
        self.drain()
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        conn = self._connections[task] = _Connection(writer)
        _tune(writer.get_extra_info("socket"))
        try:
            if not await self._handshake(reader, writer):
                return
            while True:
                call_id, kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size > MAX_PAYLOAD:
                    log.warning("lane: dropping a connection that sent a %d-byte frame", size)
                    return
                payload = await reader.readexactly(size) if size else b""
                if kind == _REQUEST:
                    if call_id in conn.running:
                        log.warning("lane: dropping a connection that reused a call id")
                        return
                    if self._draining:
                        _write(writer, _frame(call_id, _REFUSED))
                        conn.close_when_idle()
                        continue
                    conn.running[call_id] = asyncio.ensure_future(self._run(call_id, payload, conn))
                elif kind == _CANCEL:
                    conn.withdraw(call_id)
                else:
                    log.warning("lane: dropping a connection that sent frame kind %d", kind)
                    return
        except (asyncio.IncompleteReadError, ConnectionError, OSError, RuntimeError, asyncio.CancelledError):
            pass  # the caller went away, or the server is closing
        finally:
            del self._connections[task]
            conn.close()

    async def _handshake(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        nonce = os.urandom(_NONCE_BYTES)
        writer.write(nonce)
        try:
            hello = await asyncio.wait_for(reader.readexactly(_PROOF_BYTES + _NONCE_BYTES), HANDSHAKE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return False
        proof, client_nonce = hello[:_PROOF_BYTES], hello[_PROOF_BYTES:]
        if not hmac.compare_digest(proof, _proof(self._secret, b"lane-client", nonce)):
            log.warning("lane: refused a connection that did not know the secret")
            return False
        writer.write(_proof(self._secret, b"lane-server", client_nonce))
        return True

    async def _run(self, call_id: int, payload: bytes, conn: _Connection) -> None:
        try:
            answer = await self._handler(payload)
            if len(answer) > MAX_PAYLOAD:
                raise ValueError(f"the {len(answer)}-byte answer is larger than a lane frame")
            reply = _frame(call_id, _REPLY, answer)
        except asyncio.CancelledError:
            if conn.running.get(call_id) is not asyncio.current_task() or conn.writer.is_closing():
                return  # withdrawn by its caller: no answer is owed
            # cancelled by something inside the handler: the caller must not wait forever
            reply = _frame(call_id, _FAILED, b"CancelledError: the request was cancelled inside the actor")
        except Exception as exc:  # noqa: BLE001 - the caller gets the failure, not a hang
            reply = _frame(call_id, _FAILED, f"{type(exc).__name__}: {exc}"[:2000].encode("utf-8", "replace"))
        finally:
            if conn.running.get(call_id) is asyncio.current_task():
                del conn.running[call_id]
            if self._draining:
                conn.close_when_idle()
        if not _write(conn.writer, reply):
            return  # the connection is gone; its reader ends and cleans up
        self.served += 1
        try:
            await conn.writer.drain()
        except (ConnectionError, OSError, RuntimeError):
            pass  # as above


def _write(writer: asyncio.StreamWriter, data: bytes) -> bool:
    """Write unless the connection is gone; False if it is.  (uvloop, which Ray runs
    actors on, raises RuntimeError for a write on a closed transport where asyncio's
    own loop only logs.)"""
    if writer.is_closing():
        return False
    try:
        writer.write(data)
    except (RuntimeError, ConnectionError, OSError):
        return False
    return True


def _reply(kind: int, payload: bytes) -> bytes:
    if kind == _FAILED:
        raise LaneCallFailed(payload.decode("utf-8", "replace"))
    if kind == _REFUSED:
        raise LaneUnavailable("the actor stopped taking requests by lane", "refused")
    return payload


# ---------------------------------------------------------------------------
# Async client: one connection per event loop, many requests in flight
# ---------------------------------------------------------------------------

class AsyncLaneClient:
    """Calls over one connection from one event loop; answers arrive in any order.

    ``closed`` means "takes no new calls"; calls already out finish unless the
    connection breaks.  Once it cannot carry calls any more it keeps no
    reference to its event loop, so a client left in a dict keyed weakly by
    its loop does not keep that loop alive.
    """

    def __init__(self, address: LaneAddress) -> None:
        self.address = address
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future] = {}
        self._writer: asyncio.StreamWriter | None = None
        self._connecting: asyncio.Future | None = None
        self._reader_task: asyncio.Task | None = None
        self._retiring = False
        self.closed = False
        self._closed_kind = "closed"

    def __repr__(self) -> str:
        return f"AsyncLaneClient({self.address.host}:{self.address.port}, in_flight={len(self._waiting)})"

    async def call(self, payload: bytes) -> bytes:
        """The server's answer to ``payload``; LaneUnavailable if the lane cannot carry it."""
        if len(payload) > MAX_PAYLOAD:
            raise LaneUnavailable("payload larger than a lane frame", "size")
        writer = await self._connected()
        if self.closed or self._writer is not writer:  # closed while we waited for the connection
            raise LaneUnavailable("the lane closed while opening", "closed" if self._retiring else "connect")
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[call_id] = future
        try:
            if not _write(writer, _frame(call_id, _REQUEST, payload)):
                del self._waiting[call_id]  # not sent: this one may go by Ray as it is
                self._fail("the connection closed", "broken")
                raise LaneUnavailable("the connection closed before the request went out", "closed")
            return await future
        except asyncio.CancelledError:
            if self._waiting.pop(call_id, None) is not None:
                _write(writer, _frame(call_id, _CANCEL))
            raise
        finally:
            self._waiting.pop(call_id, None)
            if self._retiring and not self._waiting:
                self._fail("retired", "closed")

    def retire(self) -> None:
        """Take no new calls; close once the calls already out are answered."""
        self.closed = self._retiring = True
        if not self._waiting:
            self._fail("retired", "closed")

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
        except (OSError, EOFError, RuntimeError, asyncio.TimeoutError, asyncio.IncompleteReadError) as exc:
            self._fail(f"cannot connect: {type(exc).__name__}", "connect")
            raise LaneUnavailable(f"cannot connect: {type(exc).__name__}", "connect") from None

    async def _connect(self) -> asyncio.StreamWriter:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.address.host, self.address.port), CONNECT_TIMEOUT_S)
        try:
            _tune(writer.get_extra_info("socket"))
            nonce = await asyncio.wait_for(reader.readexactly(_NONCE_BYTES), CONNECT_TIMEOUT_S)
            my_nonce = os.urandom(_NONCE_BYTES)
            writer.write(_proof(self.address.secret, b"lane-client", nonce) + my_nonce)
            proof = await asyncio.wait_for(reader.readexactly(_PROOF_BYTES), CONNECT_TIMEOUT_S)
            if not hmac.compare_digest(proof, _proof(self.address.secret, b"lane-server", my_nonce)):
                raise EOFError("the peer does not know the lane's secret")
            if self.closed:  # retired or closed while this connection was opening
                raise LaneUnavailable("the lane closed while opening", "closed")
        except BaseException:
            writer.close()
            raise
        self._writer = writer
        self._reader_task = asyncio.ensure_future(self._read_replies(reader))
        return writer

    async def _read_replies(self, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                call_id, kind, size = _HEADER.unpack(await reader.readexactly(_HEADER.size))
                if size > MAX_PAYLOAD:
                    break
                payload = await reader.readexactly(size) if size else b""
                future = self._waiting.pop(call_id, None)
                if future is None or future.done():
                    continue  # its caller was cancelled
                try:
                    future.set_result(_reply(kind, payload))
                except (LaneCallFailed, LaneUnavailable) as exc:
                    future.set_exception(exc)
                    if isinstance(exc, LaneUnavailable):
                        self.retire()  # refused: the actor is turning its lane off
        except (asyncio.IncompleteReadError, ConnectionError, OSError, RuntimeError):
            pass
        finally:  # closed, broken, or its event loop is shutting down
            self._fail("the connection closed before the answer came", "broken")

    def _fail(self, why: str, kind: str) -> None:
        """Close: every waiting caller learns it, and the client lets go of its loop."""
        self.closed = True
        writer, self._writer, self._connecting = self._writer, None, None
        reader_task, self._reader_task = self._reader_task, None
        if writer is not None:
            writer.close()
        if reader_task is not None and reader_task is not asyncio.current_task():
            reader_task.cancel()
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(LaneUnavailable(why, kind))

    def abort(self) -> None:
        """Close now (from the client's event loop); calls out get LaneUnavailable."""
        self._fail("lane closed", "broken")

    async def close(self) -> None:
        reader_task = self._reader_task
        self.abort()
        if reader_task is not None:
            await asyncio.gather(reader_task, return_exceptions=True)


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
                if size > MAX_PAYLOAD:
                    raise EOFError("oversized reply")
                reply = _recv_exactly(sock, size) if size else b""
                if got_id == call_id:
                    break
        except (OSError, EOFError) as exc:
            self._drop(sock)
            self.closed = True  # the actor may have restarted elsewhere: its owner asks Ray again
            raise LaneUnavailable(f"the connection broke: {type(exc).__name__}", "broken") from None
        except BaseException:
            self._drop(sock)  # interrupted mid-call: the server cancels the request
            raise
        if kind == _REFUSED:
            self._drop(sock)
            self.closed = True
        return _reply(kind, reply)

    def _socket(self) -> socket.socket:
        if self.closed:
            raise LaneUnavailable("lane closed", "closed")
        sock = getattr(self._local, "sock", None)
        if sock is not None:
            return sock
        try:
            sock = socket.create_connection((self.address.host, self.address.port), timeout=CONNECT_TIMEOUT_S)
        except OSError as exc:
            self.closed = True
            raise LaneUnavailable(f"cannot connect: {type(exc).__name__}", "connect") from None
        try:
            _tune(sock)
            nonce = _recv_exactly(sock, _NONCE_BYTES)
            my_nonce = os.urandom(_NONCE_BYTES)
            sock.sendall(_proof(self.address.secret, b"lane-client", nonce) + my_nonce)
            proof = _recv_exactly(sock, _PROOF_BYTES)
            if not hmac.compare_digest(proof, _proof(self.address.secret, b"lane-server", my_nonce)):
                raise EOFError("the peer does not know the lane's secret")
            sock.settimeout(None)
        except (OSError, EOFError) as exc:
            sock.close()
            self.closed = True  # not the actor any more (or not answering): its owner asks Ray again
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


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 1 << 20))
        if not chunk:
            raise EOFError("connection closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)
