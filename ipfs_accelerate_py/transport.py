"""The one place that does HTTP.

Providers describe a call as an ``HttpRequest`` and read an ``HttpResponse``;
this module moves the bytes with aiohttp and frames streams (SSE, NDJSON).
It never raises on an HTTP status: deciding what a 429 or a 503 means is the
provider's job.  It raises only the library's ``TimeoutError`` and
``ConnectionError`` for failures below HTTP.

Error messages built here name the method and the URL *without* its query
string and never quote a header value: Gemini puts its key in ``?key=`` and
every other provider puts it in a header, so either would leak a credential
into logs, Ray task errors and bulk-output files.
"""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import inspect
import json as _json
import re
import sys
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, AsyncIterator, Callable, Literal, Mapping

import aiohttp

from . import errors

if sys.version_info >= (3, 11):
    from asyncio import timeout as _deadline
else:  # pragma: no cover - aiohttp itself depends on async-timeout before 3.11
    from async_timeout import timeout as _deadline

__all__ = [
    "FormField", "HttpRequest", "HttpResponse", "SseEvent", "lower_headers",
    "SseDecoder", "NdjsonDecoder", "StreamResponse", "Transport", "safe_url",
]


@dataclass
class FormField:
    """One part of a multipart/form-data body."""
    name: str
    value: str | bytes
    filename: str | None = None
    content_type: str | None = None


@dataclass
class HttpRequest:
    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    data: bytes | None = None
    form: list[FormField] | None = None
    params: dict[str, str] | None = None
    #: how to frame a streaming response body; None reads the whole body
    stream: Literal["sse", "ndjson"] | None = None

    def __repr__(self) -> str:  # headers hold keys: never show them
        return f"HttpRequest({self.method} {safe_url(self.url)})"


@dataclass
class HttpResponse:
    status: int
    headers: dict[str, str]          # keys lower-cased
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON, or None when it is empty or not JSON."""
        if not self.body:
            return None
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def __repr__(self) -> str:
        return f"HttpResponse({self.status}, {len(self.body)} bytes)"


@dataclass
class SseEvent:
    data: str
    event: str | None = None
    id: str | None = None


def lower_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {str(k).lower(): str(v) for k, v in headers.items()}


# ---------------------------------------------------------------------------
# Redaction of URLs and request secrets in messages
# ---------------------------------------------------------------------------

_USERINFO = re.compile(r"(?<=//)[^/?#@\s]*@")
_URL_TAIL = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*://[^\s?#'\"<>]*)[?#][^\s'\"<>]*")
_LOOSE_QUERY = re.compile(r"\?[^\s'\"<>]*=[^\s'\"<>]*")


def safe_url(url: str) -> str:
    """``url`` without query string, fragment or user-info: fit for a message.

    Gemini authenticates with ``?key=``, and a base URL may carry
    ``user:password@``; neither may reach a log line.
    """
    cut = len(url)
    for mark in ("?", "#"):
        pos = url.find(mark)
        if 0 <= pos < cut:
            cut = pos
    return _USERINFO.sub("", url[:cut])


def _scrub(text: str, req: HttpRequest) -> str:
    """Remove anything of ``req``'s secrets that a lower layer put into ``text``.

    aiohttp's own messages are mostly harmless ("Cannot connect to host ..."),
    but some quote the full URL; this is the last line of defence, run only on
    the error path, so it can afford to be thorough.
    """
    secrets: list[str] = []
    for value in req.headers.values():
        value = str(value)
        secrets.append(value)
        secrets.extend(part for part in value.split() if len(part) >= 6)
    if req.params:
        secrets.extend(str(v) for v in req.params.values())
    for secret in sorted(secrets, key=len, reverse=True):
        if len(secret) >= 4 and secret in text:
            text = text.replace(secret, "***")
    text = _URL_TAIL.sub(r"\1", text)
    text = _LOOSE_QUERY.sub("", text)
    return _USERINFO.sub("", text)


def _describe(exc: BaseException, req: HttpRequest) -> str:
    detail = _scrub(str(exc), req).strip()
    name = type(exc).__name__
    return f"{name}: {detail}" if detail else name


def _seconds(value: float | None) -> str:
    return "unbounded" if value is None else f"{value:g} s"


# ---------------------------------------------------------------------------
# Stream framing
# ---------------------------------------------------------------------------

_LINE_END = re.compile(r"\r\n|\r|\n")
_JSON_TOKEN = re.compile(r'[\\"{}\[\]]')


class SseDecoder:
    """Incremental Server-Sent Events parser.

    Fed raw body bytes in whatever pieces the network delivers (a boundary may
    fall inside a line, a CRLF pair or a multi-byte UTF-8 character) and
    returns the complete events seen so far; feeding a stream whole or split
    anywhere yields the same events.

    Framing follows the WHATWG rules every provider relies on: lines end in
    LF, CRLF or CR; a blank line ends an event; ``data`` lines are joined with
    "\\n"; one space after the colon is optional (TGI sends ``data:{...}``);
    ``:`` comment lines (keep-alives) and ``retry`` are ignored; the last
    ``id`` persists across events like ``EventSource.lastEventId``.  An event
    is delivered when it had a ``data`` or an ``event`` line.  ``[DONE]`` is
    just data: which marker ends which stream is the provider's business.

    Gemini can write an error mid-stream as a bare, possibly pretty-printed
    JSON object with no ``data:`` prefix.  A line starting with ``{`` or
    ``[`` therefore opens a raw JSON block that is collected (brackets
    balanced outside string literals) and delivered as
    ``SseEvent(event="raw-json", data=<json text>)``.
    """

    __slots__ = ("_utf8", "_pending", "_skip_lf", "_started", "_data", "_event", "_id",
                 "_raw", "_raw_depth", "_raw_in_string")

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")("replace")
        self._pending: list[str] = []      # pieces of the current, unterminated line
        self._skip_lf = False               # last piece ended in CR: a following LF is its pair
        self._started = False               # a leading BOM is only stripped once
        self._data: list[str] = []
        self._event: str | None = None
        self._id: str | None = None
        self._raw: list[str] | None = None  # lines of a raw JSON block being collected
        self._raw_depth = 0
        self._raw_in_string = False

    def feed(self, chunk: bytes) -> list[SseEvent]:
        """Consume ``chunk``; return the events it completed (often none)."""
        text = self._utf8.decode(chunk)
        if not text:
            return []
        if not self._started:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not text:
            return []
        has_cr = "\r" in text
        if not has_cr and "\n" not in text:
            # no line end yet: keep the piece, join once (avoids quadratic growth
            # when a big event arrives in many small reads)
            self._pending.append(text)
            return []
        if self._pending:
            self._pending.append(text)
            text = "".join(self._pending)
            self._pending = []
        lines = _LINE_END.split(text) if has_cr else text.split("\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        elif text[-1] == "\r":
            self._skip_lf = True
        out: list[SseEvent] = []
        for line in lines:
            self._line(line, out)
        return out

    def flush(self) -> list[SseEvent]:
        """End of body: return the event (or raw JSON) left without a final
        blank line, and reset for reuse.  A stream cut off mid-event still
        shows its last data to the provider, which decides if it is complete."""
        rest = self._utf8.decode(b"", final=True)
        if rest:
            self._pending.append(rest)
        out: list[SseEvent] = []
        if self._pending:
            line = "".join(self._pending)  # pending pieces never hold a line end
            self._pending = []
            self._line(line, out)
        self._skip_lf = False
        self._started = False
        if self._raw is not None:
            out.append(SseEvent(data="\n".join(self._raw), event="raw-json"))
            self._reset_raw()
        self._dispatch(out)
        return out

    # -- internals -------------------------------------------------------------
    def _line(self, line: str, out: list[SseEvent]) -> None:
        if self._raw is not None:
            self._raw_line(line, out)
            return
        if not line:
            self._dispatch(out)
            return
        first = line[0]
        if first == ":":
            return
        if first == "{" or first == "[" or (
                first in " \t" and line.lstrip()[:1] in ("{", "[")):
            self._dispatch(out)  # keep order: anything pending came first
            self._raw = []
            self._raw_line(line, out)
            return
        colon = line.find(":")
        if colon < 0:
            name, value = line, ""
        else:
            name = line[:colon]
            value = line[colon + 1:]
            if value and value[0] == " ":
                value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._id = value
        # "retry" and unknown fields are ignored, as the SSE spec requires

    def _dispatch(self, out: list[SseEvent]) -> None:
        data = self._data
        if data:
            out.append(SseEvent(data=data[0] if len(data) == 1 else "\n".join(data),
                                event=self._event, id=self._id))
            self._data = []
        elif self._event is not None:
            out.append(SseEvent(data="", event=self._event, id=self._id))
        self._event = None

    def _raw_line(self, line: str, out: list[SseEvent]) -> None:
        assert self._raw is not None
        self._raw.append(line)
        depth = self._raw_depth
        in_string = self._raw_in_string
        escaped_at = -1
        for match in _JSON_TOKEN.finditer(line):
            pos = match.start()
            if pos == escaped_at:
                continue
            ch = line[pos]
            if in_string:
                if ch == "\\":
                    escaped_at = pos + 1
                elif ch == '"':
                    in_string = False
            elif ch == '"':
                in_string = True
            elif ch == "{" or ch == "[":
                depth += 1
            elif ch == "}" or ch == "]":
                depth -= 1
        if depth <= 0 and not in_string:
            out.append(SseEvent(data="\n".join(self._raw), event="raw-json"))
            self._reset_raw()
        else:
            self._raw_depth = depth
            self._raw_in_string = in_string

    def _reset_raw(self) -> None:
        self._raw = None
        self._raw_depth = 0
        self._raw_in_string = False


class NdjsonDecoder:
    """Incremental newline-delimited JSON parser (Ollama's native stream).

    Each non-empty line is one JSON value; CRLF is accepted.  Lines are split
    on the LF byte before decoding, which is safe because no UTF-8 multi-byte
    sequence contains it, so chunk boundaries can fall anywhere.  A line that
    is not JSON raises ``ProviderError``: silently skipping it could drop
    part of an answer or an in-band ``{"error": ...}``.
    """

    __slots__ = ("_pending", "_loads")

    #: how much of a bad line a message quotes; enough to recognise, not to flood logs
    PREVIEW_CHARS = 200

    def __init__(self, loads: Callable[[bytes], Any] = _json.loads) -> None:
        self._pending: list[bytes] = []
        self._loads = loads

    def feed(self, chunk: bytes) -> list[Any]:
        """Consume ``chunk``; return the values of the lines it completed."""
        if b"\n" not in chunk:
            if chunk:
                self._pending.append(chunk)
            return []
        if self._pending:
            self._pending.append(chunk)
            chunk = b"".join(self._pending)
            self._pending = []
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if tail:
            self._pending.append(tail)
        out: list[Any] = []
        for line in lines:
            line = line.strip()
            if line:
                out.append(self._parse(line))
        return out

    def flush(self) -> list[Any]:
        """End of body: parse a last line that had no trailing newline."""
        if not self._pending:
            return []
        line = b"".join(self._pending).strip()
        self._pending = []
        return [self._parse(line)] if line else []

    def _parse(self, line: bytes) -> Any:
        try:
            return self._loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            preview = line[: self.PREVIEW_CHARS * 4].decode("utf-8", "replace")
            if len(preview) > self.PREVIEW_CHARS:
                preview = preview[: self.PREVIEW_CHARS] + "..."
            raise errors.ProviderError(
                f"malformed stream line (not JSON) in NDJSON stream: {preview!r}") from None


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------

#: seconds an idle keep-alive connection stays in the pool: long enough to
#: carry bursts, short enough to stay under typical server idle limits (60 s+)
KEEPALIVE_TIMEOUT_S = 30.0

_JSON_ENCODER = _json.JSONEncoder(separators=(",", ":"))
#: aiohttp >= 3.11 can force multipart even when no part is a file
_FORM_KWARGS: dict[str, Any] = (
    {"default_to_multipart": True}
    if "default_to_multipart" in inspect.signature(aiohttp.FormData).parameters else {})

#: a URL aiohttp cannot use: a configuration problem, not a network one
_URL_ERRORS: tuple[type[BaseException], ...] = tuple(
    cls for cls in (aiohttp.InvalidURL, getattr(aiohttp, "NonHttpUrlClientError", None))
    if cls is not None)
#: failures below HTTP that mean "the connection did not work out"
_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError)


def _has_header(headers: Mapping[str, str], name: str) -> bool:
    return any(k.lower() == name for k in headers)


class StreamResponse:
    """An open streaming response: status and headers now, the body on demand.

    Obtained from ``Transport.stream``; valid only inside that ``async with``.
    ``read()`` takes the whole body (for an error status), ``events()`` frames
    it as the request asked.  Every wait for more body bytes is bounded by the
    stall timeout rather than a total one, because a long generation may
    legitimately stream for many minutes while a silent upstream must not hold
    a slot forever.
    """

    __slots__ = ("status", "headers", "_resp", "_req", "_timeout_s", "_stall_s", "_complete")

    def __init__(self, resp: aiohttp.ClientResponse, req: HttpRequest,
                 timeout_s: float | None, stall_timeout_s: float | None) -> None:
        self.status: int = resp.status
        self.headers: dict[str, str] = lower_headers(resp.headers)
        self._resp = resp
        self._req = req
        self._timeout_s = timeout_s
        self._stall_s = stall_timeout_s
        #: body read to the end: the connection can go back to the pool
        self._complete = False

    @property
    def complete(self) -> bool:
        """True once the body was read to its end."""
        return self._complete

    async def read(self) -> bytes:
        """The whole (remaining) body, bounded by the request timeout."""
        try:
            async with _deadline(self._timeout_s):
                body = await self._resp.read()
        except asyncio.TimeoutError:
            raise errors.TimeoutError(
                f"{self._req.method} {safe_url(self._req.url)}: reading the response body "
                f"timed out after {_seconds(self._timeout_s)}", retryable=True) from None
        except _CONNECTION_ERRORS as exc:
            raise self._dropped(exc) from None
        self._complete = True
        return body

    async def events(self) -> AsyncIterator[Any]:
        """The body as ``SseEvent`` (``req.stream == "sse"``), parsed JSON
        values (``"ndjson"``) or raw byte chunks (``None``), as they arrive."""
        kind = self._req.stream
        decoder: SseDecoder | NdjsonDecoder | None
        if kind == "sse":
            decoder = SseDecoder()
        elif kind == "ndjson":
            decoder = NdjsonDecoder()
        else:
            decoder = None
        while True:
            chunk = await self._next_chunk()
            if not chunk:
                break
            if decoder is None:
                yield chunk
                continue
            for item in decoder.feed(chunk):
                yield item
        self._complete = True
        if decoder is not None:
            for item in decoder.flush():
                yield item

    async def _next_chunk(self) -> bytes:
        """Whatever body bytes are available, waiting at most the stall
        timeout for some; b"" at the end of the body."""
        content = self._resp.content
        try:
            # buffered data needs no timer: the common case under load
            chunk = content.read_nowait()
            if chunk or content.at_eof():
                return chunk
            async with _deadline(self._stall_s):
                return await content.readany()
        except asyncio.TimeoutError:
            raise errors.TimeoutError(
                f"{self._req.method} {safe_url(self._req.url)}: stream stalled for "
                f"{_seconds(self._stall_s)} with no data", retryable=True) from None
        except _CONNECTION_ERRORS as exc:
            raise self._dropped(exc) from None

    def _dropped(self, exc: BaseException) -> errors.ConnectionError:
        return errors.ConnectionError(
            f"{self._req.method} {safe_url(self._req.url)}: connection lost while reading "
            f"the response body ({_describe(exc, self._req)})", retryable=True)

    def _finish(self, failed: bool) -> None:
        """Give the connection back: to the pool when the body was consumed,
        otherwise close it, since unread bytes would poison the next request."""
        if self._complete and not failed:
            self._resp.release()
        else:
            self._resp.close()

    def __repr__(self) -> str:
        return f"StreamResponse({self.status}, {self._req.stream or 'bytes'})"


class _StreamContext(contextlib.AbstractAsyncContextManager["StreamResponse"]):
    """``async with transport.stream(req) as response`` — see ``Transport.stream``.

    A class rather than ``@asynccontextmanager`` so exit is a plain,
    synchronous release that runs even when the caller's task is cancelled
    mid-stream (a cancelled Ray task must not strand a pooled connection).
    """

    __slots__ = ("_transport", "_req", "_timeout_s", "_stall_s", "_response")

    def __init__(self, transport: "Transport", req: HttpRequest,
                 timeout_s: float | None, stall_timeout_s: float | None) -> None:
        self._transport = transport
        self._req = req
        self._timeout_s = timeout_s
        self._stall_s = stall_timeout_s
        self._response: StreamResponse | None = None

    async def __aenter__(self) -> StreamResponse:
        transport = self._transport
        req = self._req
        session = await transport._session_for(req)
        kwargs = transport._request_kwargs(req)
        try:
            async with _deadline(self._timeout_s):
                resp = await session.request(req.method, req.url,
                                             timeout=transport._stream_timeout, **kwargs)
        except aiohttp.ServerTimeoutError as exc:  # aiohttp's own connect timeout
            raise transport._map_error(exc, req, self._timeout_s) from None
        except asyncio.TimeoutError:
            raise errors.TimeoutError(
                f"{req.method} {safe_url(req.url)}: no response headers within "
                f"{_seconds(self._timeout_s)}", retryable=True) from None
        except Exception as exc:
            raise transport._map_error(exc, req, self._timeout_s) from None
        self._response = StreamResponse(resp, req, self._timeout_s, self._stall_s)
        return self._response

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        response = self._response
        if response is not None:
            self._response = None
            response._finish(failed=exc_type is not None)


class Transport:
    """One pooled aiohttp session for all of an endpoint's requests.

    Created in an async actor's ``__init__``, where no event loop may be
    running yet, so the session is built lazily on first use, inside the loop
    that will own it.  The connection pool is unbounded by default: the
    endpoint actor already enforces the key's concurrency limit, and a second
    limit here would only queue requests invisibly.  HTTP statuses never
    raise; failures below HTTP become ``errors.TimeoutError`` or
    ``errors.ConnectionError`` (both retryable) whose messages carry neither
    header values nor query strings.
    """

    def __init__(self, *, timeout_s: float = 60.0, connect_timeout_s: float = 10.0,
                 limit: int = 0, limit_per_host: int = 0) -> None:
        if timeout_s <= 0 or connect_timeout_s <= 0:
            raise ValueError("timeout_s and connect_timeout_s must be positive")
        if limit < 0 or limit_per_host < 0:
            raise ValueError("limit and limit_per_host must be >= 0 (0 means unlimited)")
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.limit = limit
        self.limit_per_host = limit_per_host
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        # ClientTimeout objects are reused: building one per request is waste
        self._timeouts: dict[float, aiohttp.ClientTimeout] = {}
        # streams: no total (a generation may run for minutes); the headers
        # phase and each body read are bounded by our own deadlines instead
        self._stream_timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s)

    # -- lifecycle ----------------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._closed

    async def __aenter__(self) -> "Transport":
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the pool.  Idempotent; requests after it raise ConnectionError."""
        self._closed = True
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()

    async def _session_for(self, req: HttpRequest) -> aiohttp.ClientSession:
        """The pooled session of the running loop, created on first use."""
        if self._closed:
            raise errors.ConnectionError(
                f"{req.method} {safe_url(req.url)}: transport is closed", retryable=True)
        loop = asyncio.get_running_loop()
        session = self._session
        if session is not None and self._loop is loop:
            return session
        return await self._bind(loop)

    async def _bind(self, loop: asyncio.AbstractEventLoop) -> aiohttp.ClientSession:
        """Create the session for ``loop``, dropping one whose loop has ended
        (a Transport reused across ``asyncio.run`` calls, as tests do)."""
        old, old_loop = self._session, self._loop
        if old is not None and old_loop is not None and not old_loop.is_closed():
            raise RuntimeError("this Transport belongs to another event loop that is still "
                               "open; create one Transport per event loop")
        connector = aiohttp.TCPConnector(
            limit=self.limit, limit_per_host=self.limit_per_host,
            keepalive_timeout=KEEPALIVE_TIMEOUT_S, ttl_dns_cache=60)
        session = aiohttp.ClientSession(
            connector=connector,
            timeout=self._send_timeout(self.timeout_s),
            auto_decompress=True,
            raise_for_status=False,
        )
        # publish before any await, so concurrent first calls share one session
        self._session, self._loop = session, loop
        if old is not None:
            stale = old.connector
            old.detach()
            if stale is not None:
                await stale.close()  # its loop is closed: this only marks it closed
        return session

    # -- requests -------------------------------------------------------------------
    async def send(self, req: HttpRequest, *, timeout_s: float | None = None) -> HttpResponse:
        """Send ``req`` and read the whole response, whatever its status.

        ``timeout_s`` (default: the transport's) bounds everything: connecting,
        waiting in the pool, sending, and reading the body.
        """
        effective = self.timeout_s if timeout_s is None else timeout_s
        session = await self._session_for(req)
        kwargs = self._request_kwargs(req)
        try:
            resp = await session.request(req.method, req.url,
                                         timeout=self._send_timeout(effective), **kwargs)
            try:
                body = await resp.read()
            finally:
                resp.release()
        except Exception as exc:
            raise self._map_error(exc, req, effective) from None
        return HttpResponse(resp.status, lower_headers(resp.headers), body)

    def stream(self, req: HttpRequest, *, timeout_s: float | None = None,
               stall_timeout_s: float | None = None
               ) -> contextlib.AbstractAsyncContextManager[StreamResponse]:
        """Open a streaming request: ``async with t.stream(req) as response:``.

        ``timeout_s`` (default: the transport's) bounds connecting and waiting
        for the status and headers; after that there is no total limit, but
        each wait for more body bytes is bounded by ``stall_timeout_s``
        (default: ``timeout_s``).  Leaving the block always releases the
        connection, also on error or cancellation.
        """
        effective = self.timeout_s if timeout_s is None else timeout_s
        stall = effective if stall_timeout_s is None else stall_timeout_s
        return _StreamContext(self, req, effective, stall)

    # -- internals ------------------------------------------------------------------
    def _send_timeout(self, total: float) -> aiohttp.ClientTimeout:
        timeout = self._timeouts.get(total)
        if timeout is None:
            if len(self._timeouts) >= 64:  # callers use a handful of values
                self._timeouts.clear()
            timeout = aiohttp.ClientTimeout(total=total, sock_connect=self.connect_timeout_s)
            self._timeouts[total] = timeout
        return timeout

    @staticmethod
    def _request_kwargs(req: HttpRequest) -> dict[str, Any]:
        """aiohttp keyword arguments for the body, headers and query of ``req``."""
        headers: Mapping[str, str] = req.headers
        kwargs: dict[str, Any] = {}
        if req.params:
            kwargs["params"] = req.params
        bodies = (req.json is not None) + (req.data is not None) + (req.form is not None)
        if bodies > 1:
            raise ValueError(f"{req!r} sets more than one of json, data and form")
        if req.json is not None:
            kwargs["data"] = _JSON_ENCODER.encode(req.json).encode("utf-8")
            if not _has_header(headers, "content-type"):
                headers = {**headers, "Content-Type": "application/json"}
        elif req.data is not None:
            kwargs["data"] = req.data
        elif req.form is not None:
            form = aiohttp.FormData(**_FORM_KWARGS)
            for part in req.form:
                filename = part.filename
                if filename is None and not isinstance(part.value, str):
                    filename = part.name  # binary content is a file part, as aiohttp 3 did
                form.add_field(part.name, part.value, filename=filename,
                               content_type=part.content_type)
            kwargs["data"] = form
            # the boundary-carrying multipart type must win over a provider's
            # default "application/json"
            if _has_header(headers, "content-type"):
                headers = {k: v for k, v in headers.items() if k.lower() != "content-type"}
        if headers:
            kwargs["headers"] = headers
        return kwargs

    def _map_error(self, exc: Exception, req: HttpRequest,
                   timeout_s: float | None) -> Exception:
        """The library error for a failure below HTTP (or ``exc`` itself when
        it is a bug rather than a network condition)."""
        where = f"{req.method} {safe_url(req.url)}"
        if isinstance(exc, errors.GatewayError):
            return exc
        if isinstance(exc, getattr(aiohttp, "ConnectionTimeoutError", ())):
            return errors.TimeoutError(
                f"{where}: connecting timed out after {_seconds(self.connect_timeout_s)}",
                retryable=True)
        if isinstance(exc, asyncio.TimeoutError):  # includes aiohttp.ServerTimeoutError
            return errors.TimeoutError(f"{where} timed out after {_seconds(timeout_s)}",
                                       retryable=True)
        if isinstance(exc, _URL_ERRORS):
            return errors.ConfigError(f"{where}: invalid or unsupported URL")
        if isinstance(exc, aiohttp.ClientResponseError):  # e.g. TooManyRedirects
            return errors.ProviderError(f"{where}: {type(exc).__name__} (HTTP {exc.status})",
                                        status=exc.status or None, retryable=False)
        if isinstance(exc, _CONNECTION_ERRORS) or isinstance(exc, aiohttp.ClientError):
            return errors.ConnectionError(f"{where} failed: {_describe(exc, req)}",
                                          retryable=True)
        if isinstance(exc, RuntimeError) and (self._closed or self._session is None):
            return errors.ConnectionError(f"{where}: transport was closed", retryable=True)
        return exc

    def __repr__(self) -> str:
        state = "closed" if self._closed else ("open" if self._session is not None else "idle")
        return f"<Transport {state} timeout_s={self.timeout_s:g}>"
