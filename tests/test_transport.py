"""Tests for the HTTP transport and the stream decoders.

The decoders are checked with hand-written provider streams and with
property-based tests (any split of a byte stream must decode like the whole);
``Transport`` is checked against a real aiohttp server on 127.0.0.1 started
inside each test's own event loop.
"""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
from typing import Any, AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.transport import (FormField, HttpRequest, HttpResponse, NdjsonDecoder,
                                          SseDecoder, SseEvent, StreamResponse, Transport,
                                          safe_url)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
STOP = web.AppKey("stop", asyncio.Event)
PEERS = web.AppKey("peers", list)

# recognisable fake credentials that are NOT key-shaped, so errors.redact's
# patterns cannot hide a leak: only the transport's own hygiene keeps them out
FAKE_HEADER_KEY = "qq-FAKEKEY-31337-header"
FAKE_QUERY_KEY = "qq-FAKEKEY-31337-query"
SECRET_HEADERS = {"Authorization": f"Bearer {FAKE_HEADER_KEY}", "x-goog-api-key": FAKE_HEADER_KEY}


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serve(routes: dict[str, Handler]) -> AsyncIterator[tuple[str, web.Application]]:
    """A real HTTP server on an ephemeral port; yields (base URL, app).

    Handlers that must hang wait on ``app[STOP]``, set before shutdown so
    the test never waits on a clock.  ``handler_cancellation`` lets a handler
    see its client disconnecting.
    """
    app = web.Application()
    app[STOP] = asyncio.Event()
    app[PEERS] = []
    for path, handler in routes.items():
        app.router.add_route("*", path, handler)

    @web.middleware
    async def record_peer(request: web.Request, handler: Handler) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        request.app[PEERS].append(peer)
        return await handler(request)

    app.middlewares.append(record_peer)
    runner = web.AppRunner(app, shutdown_timeout=1.0, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield f"http://{host}:{port}", app
    finally:
        app[STOP].set()
        await runner.cleanup()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


async def sse_response(request: web.Request, pieces: list[bytes],
                       content_type: str = "text/event-stream") -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": content_type})
    await resp.prepare(request)
    for piece in pieces:
        await resp.write(piece)
    await resp.write_eof()
    return resp


def decode_sse(pieces: list[bytes]) -> list[SseEvent]:
    decoder = SseDecoder()
    out: list[SseEvent] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.flush())
    return out


def decode_ndjson(pieces: list[bytes]) -> list[Any]:
    decoder = NdjsonDecoder()
    out: list[Any] = []
    for piece in pieces:
        out.extend(decoder.feed(piece))
    out.extend(decoder.flush())
    return out


def split_at(raw: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted(set(c for c in cuts if 0 < c < len(raw)))
    bounds = [0, *points, len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:])]


def assert_clean(err: BaseException) -> None:
    """No credential and no query string in what a log line would show."""
    for text in (str(err), repr(err)):
        assert "FAKEKEY" not in text
        assert "key=" not in text
        assert "?" not in text


# ---------------------------------------------------------------------------
# SseDecoder: provider streams
# ---------------------------------------------------------------------------

def test_sse_openai_data_only_with_done_marker() -> None:
    raw = (b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n'
           b'data: {"choices":[{"delta":{"content":"lo"}}]}\n\n'
           b"data: [DONE]\n\n")
    events = decode_sse([raw])
    assert [e.data for e in events] == ['{"choices":[{"delta":{"content":"Hel"}}]}',
                                        '{"choices":[{"delta":{"content":"lo"}}]}', "[DONE]"]
    assert all(e.event is None for e in events)


def test_sse_anthropic_event_and_data_lines() -> None:
    raw = (b"event: message_start\n"
           b'data: {"type":"message_start"}\n\n'
           b"event: ping\n"
           b'data: {"type": "ping"}\n\n'
           b"event: message_stop\n"
           b'data: {"type":"message_stop"}\n\n')
    events = decode_sse([raw])
    assert [(e.event, json.loads(e.data)["type"]) for e in events] == [
        ("message_start", "message_start"), ("ping", "ping"), ("message_stop", "message_stop")]


def test_sse_tgi_data_without_space() -> None:
    events = decode_sse([b'data:{"index":1,"token":{"text":" a"}}\n\ndata:  two spaces\n\n'])
    assert events[0].data == '{"index":1,"token":{"text":" a"}}'
    # only ONE optional space is removed: the rest belongs to the value
    assert events[1].data == " two spaces"


def test_sse_comments_retry_and_unknown_fields_are_ignored() -> None:
    raw = b": keep-alive\n\nretry: 3000\n: another comment\ndata: x\nfoo: bar\n\n:\n\n"
    assert decode_sse([raw]) == [SseEvent(data="x")]


def test_sse_crlf_and_cr_line_endings() -> None:
    crlf = b"event: a\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"
    cr = b"event: a\rdata: 1\r\rdata: 2\r\r"
    expected = [SseEvent(data="1", event="a"), SseEvent(data="2")]
    assert decode_sse([crlf]) == expected
    assert decode_sse([cr]) == expected
    # a CRLF pair split across two reads is still one line end
    assert decode_sse([b"data: 1\r", b"\n\r", b"\ndata: 2\r\n\r\n"]) == [
        SseEvent(data="1"), SseEvent(data="2")]


def test_sse_multiline_data_is_joined_with_newline() -> None:
    events = decode_sse([b"data: first\ndata:second\ndata: \ndata: last\n\n"])
    assert events == [SseEvent(data="first\nsecond\n\nlast")]


def test_sse_id_persists_and_event_name_resets() -> None:
    events = decode_sse([b"id: 7\nevent: e\ndata: a\n\ndata: b\n\nid: 8\ndata: c\n\n"])
    assert events == [SseEvent("a", "e", "7"), SseEvent("b", None, "7"), SseEvent("c", None, "8")]


def test_sse_event_without_data_and_empty_blocks() -> None:
    assert decode_sse([b"\n\n\nevent: ping\n\n\n"]) == [SseEvent(data="", event="ping")]
    assert decode_sse([b"data:\n\n"]) == [SseEvent(data="")]


def test_sse_utf8_split_inside_multibyte_character() -> None:
    raw = "data: héllo ✓ 𝄞\n\n".encode()
    for cut in range(1, len(raw)):
        assert decode_sse([raw[:cut], raw[cut:]]) == [SseEvent(data="héllo ✓ 𝄞")]
    assert decode_sse([bytes([b]) for b in raw]) == [SseEvent(data="héllo ✓ 𝄞")]


def test_sse_flush_returns_final_event_without_blank_line() -> None:
    decoder = SseDecoder()
    assert decoder.feed(b"data: a\n\ndata: tail") == [SseEvent(data="a")]
    assert decoder.flush() == [SseEvent(data="tail")]
    assert decoder.flush() == []
    # the decoder is reusable after flush
    assert decoder.feed(b"data: again\n\n") == [SseEvent(data="again")]


def test_sse_leading_bom_is_dropped() -> None:
    assert decode_sse([b"\xef\xbb\xbfdata: x\n\n"]) == [SseEvent(data="x")]


def test_sse_gemini_raw_json_error_object() -> None:
    error = {"error": {"code": 503, "message": "The model is overloaded {retry} \"later\"",
                       "status": "UNAVAILABLE", "details": [{"a": "}]"}]}}
    pretty = json.dumps(error, indent=2)
    raw = (b'data: {"candidates":[{"content":{"parts":[{"text":"Hi"}]}}]}\r\n\r\n'
           + pretty.replace("\n", "\r\n").encode() + b"\r\n")
    events = decode_sse(split_at(raw, [5, 40, 80, 81, 120]))
    assert events[0].event is None
    assert json.loads(events[0].data)["candidates"][0]["content"]["parts"][0]["text"] == "Hi"
    assert events[1].event == "raw-json"
    assert events[1].data == pretty
    assert json.loads(events[1].data) == error
    assert len(events) == 2


def test_sse_raw_json_right_after_pending_data_keeps_order() -> None:
    events = decode_sse([b'data: one\n{"error": {"code": 500}}\ndata: two\n\n'])
    assert events == [SseEvent(data="one"), SseEvent(data='{"error": {"code": 500}}', event="raw-json"),
                      SseEvent(data="two")]


def test_sse_unterminated_raw_json_is_delivered_at_flush() -> None:
    events = decode_sse([b'{\n  "error": {"code": 500,\n'])
    assert events == [SseEvent(data='{\n  "error": {"code": 500,', event="raw-json")]


def test_sse_done_is_an_ordinary_event() -> None:
    assert decode_sse([b"data:[DONE]\n\n"]) == [SseEvent(data="[DONE]")]


# ---------------------------------------------------------------------------
# SseDecoder / NdjsonDecoder: property-based framing
# ---------------------------------------------------------------------------

LINE_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",),
                                           blacklist_characters="\r\n"), max_size=24)
JSON_SCALARS = (st.none() | st.booleans() | st.integers()
                | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12))
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=8),
                      inner, max_size=4),
    max_leaves=12)
JSON_OBJECTS = st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=4)


def _field(name: str, value: str, no_space: bool) -> str:
    if no_space and not value.startswith(" "):
        return f"{name}:{value}"
    return f"{name}: {value}"


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SseEvent]]:
    """A valid SSE body and the events it must decode to."""
    eol = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    lines: list[str] = []
    expected: list[SseEvent] = []
    last_id: str | None = None
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.sampled_from(["event", "event", "event", "raw", "comment"]))
        if kind == "comment":
            lines.extend([":" + draw(LINE_TEXT), ""])
            continue
        if kind == "raw":
            pretty = json.dumps(draw(JSON_OBJECTS), indent=draw(st.sampled_from([None, 2])),
                                ensure_ascii=draw(st.booleans()))
            lines.extend(pretty.split("\n"))
            lines.append("")
            expected.append(SseEvent(data=pretty, event="raw-json"))
            continue
        name = draw(st.none() | LINE_TEXT)
        event_id = draw(st.none() | LINE_TEXT.filter(lambda s: "\x00" not in s))
        data = draw(st.lists(LINE_TEXT, min_size=1, max_size=3))
        no_space = draw(st.booleans())
        block: list[str] = []
        if name is not None:
            block.append(_field("event", name, no_space))
        if event_id is not None:
            block.append(_field("id", event_id, no_space))
            last_id = event_id
        if draw(st.booleans()):
            block.append("retry: 1000")
        block = list(draw(st.permutations(block)))
        at = draw(st.integers(0, len(block)))
        # data lines keep their order; the other fields may come before, between, after
        block[at:at] = [_field("data", d, no_space) for d in data]
        lines.extend(block)
        lines.append("")
        expected.append(SseEvent(data="\n".join(data), event=name, id=last_id))
    text = eol.join(lines) + (eol if lines else "")
    if lines and draw(st.booleans()):
        # drop the last blank line: flush() must still deliver the final event
        text = text[: -len(eol)]
    return text.encode("utf-8"), expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stream=sse_streams(), data=st.data())
def test_sse_any_split_decodes_like_the_whole(stream: tuple[bytes, list[SseEvent]],
                                              data: st.DataObject) -> None:
    raw, expected = stream
    whole = decode_sse([raw])
    assert whole == expected
    cuts = data.draw(st.lists(st.integers(0, max(len(raw), 1)), max_size=30))
    assert decode_sse(split_at(raw, cuts)) == whole


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(JSON_VALUES, max_size=8), eol=st.sampled_from(["\n", "\r\n"]),
       blank_lines=st.booleans(), trailing_eol=st.booleans(), ascii_only=st.booleans(),
       data=st.data())
def test_ndjson_any_split_decodes_like_the_whole(values: list[Any], eol: str, blank_lines: bool,
                                                 trailing_eol: bool, ascii_only: bool,
                                                 data: st.DataObject) -> None:
    sep = eol + (eol if blank_lines else "")
    text = sep.join(json.dumps(v, ensure_ascii=ascii_only) for v in values)
    if values and trailing_eol:
        text += eol
    raw = text.encode("utf-8")
    whole = decode_ndjson([raw])
    assert whole == values
    cuts = data.draw(st.lists(st.integers(0, max(len(raw), 1)), max_size=30))
    assert decode_ndjson(split_at(raw, cuts)) == whole


def test_ndjson_ollama_stream_and_crlf() -> None:
    raw = (b'{"message":{"content":"The"},"done":false}\r\n\r\n'
           b'{"message":{"content":" sky"},"done":false}\n'
           b'{"done":true,"eval_count":2}')
    assert decode_ndjson([raw[:17], raw[17:50], raw[50:]]) == [
        {"message": {"content": "The"}, "done": False},
        {"message": {"content": " sky"}, "done": False},
        {"done": True, "eval_count": 2},
    ]


def test_ndjson_malformed_line_raises_provider_error_with_short_preview() -> None:
    decoder = NdjsonDecoder()
    assert decoder.feed(b'{"ok":1}\n') == [{"ok": 1}]
    bad = b"<html>" + b"x" * 5000 + b"</html>\n"
    with pytest.raises(errors.ProviderError) as info:
        decoder.feed(bad)
    message = str(info.value)
    assert "malformed stream line" in message
    assert "<html>" in message
    assert len(message) < 400


def test_ndjson_malformed_last_line_raises_at_flush() -> None:
    decoder = NdjsonDecoder()
    assert decoder.feed(b'{"a": 1}\n{"b": ') == [{"a": 1}]
    with pytest.raises(errors.ProviderError, match="malformed stream line"):
        decoder.flush()


# ---------------------------------------------------------------------------
# Transport.send
# ---------------------------------------------------------------------------

async def echo(request: web.Request) -> web.Response:
    raw = await request.read()
    return web.json_response({
        "method": request.method,
        "raw": raw.decode("utf-8"),
        "content_type": request.headers.get("Content-Type"),
        "query": dict(request.query),
        "authorization": request.headers.get("Authorization"),
    })


def test_send_json_round_trip_compact_body_and_params() -> None:
    payload = {"model": "m", "messages": [{"role": "user", "content": "héllo ✓"}], "n": 1}

    async def main() -> None:
        async with serve({"/v1/chat": echo}) as (base, _app), Transport() as transport:
            response = await transport.send(HttpRequest(
                "POST", f"{base}/v1/chat", headers={"Authorization": "Bearer abc"},
                json=payload, params={"alt": "sse", "x": "1"}))
            assert isinstance(response, HttpResponse)
            assert response.status == 200
            seen = response.json()
            assert seen["method"] == "POST"
            assert seen["raw"] == json.dumps(payload, separators=(",", ":"))
            assert json.loads(seen["raw"]) == payload
            assert seen["content_type"] == "application/json"
            assert seen["query"] == {"alt": "sse", "x": "1"}
            assert seen["authorization"] == "Bearer abc"

    run(main())


def test_send_keeps_callers_content_type_and_raw_bytes_body() -> None:
    async def main() -> None:
        async with serve({"/raw": echo}) as (base, _app), Transport() as transport:
            response = await transport.send(HttpRequest(
                "PUT", f"{base}/raw", headers={"content-type": "text/plain; charset=utf-8"},
                data="plain ✓".encode()))
            seen = response.json()
            assert seen["method"] == "PUT"
            assert seen["raw"] == "plain ✓"
            assert seen["content_type"] == "text/plain; charset=utf-8"

    run(main())


def test_response_headers_are_lower_cased() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text="ok", headers={"X-RateLimit-Remaining-Requests": "42",
                                                "Retry-After-Ms": "1500", "X-Request-ID": "r1"})

    async def main() -> None:
        async with serve({"/h": handler}) as (base, _app), Transport() as transport:
            response = await transport.send(HttpRequest("GET", f"{base}/h"))
            assert all(key == key.lower() for key in response.headers)
            assert response.headers["x-ratelimit-remaining-requests"] == "42"
            assert response.header("Retry-After-Ms") == "1500"
            assert response.headers["x-request-id"] == "r1"

    run(main())


@pytest.mark.parametrize("status", [400, 401, 404, 429, 500, 503, 529])
def test_status_is_passed_through_never_raised(status: int) -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": {"message": f"nope {status}"}}, status=status,
                                 headers={"Retry-After": "2"})

    async def main() -> None:
        async with serve({"/s": handler}) as (base, _app), Transport() as transport:
            response = await transport.send(HttpRequest("POST", f"{base}/s", json={}))
            assert response.status == status
            assert response.json() == {"error": {"message": f"nope {status}"}}
            assert response.header("retry-after") == "2"

    run(main())


def test_multipart_upload_reaches_server_with_file_and_fields() -> None:
    audio = bytes(range(256)) * 40

    async def handler(request: web.Request) -> web.Response:
        assert request.content_type == "multipart/form-data"
        form = await request.post()
        upload = form["file"]
        blob = form["blob"]
        return web.json_response({
            "model": form["model"], "language": form["language"],
            "filename": upload.filename, "file_type": upload.content_type,
            "file": upload.file.read().hex(), "blob": blob.file.read().hex(),
            "blob_name": blob.filename,
        })

    async def main() -> None:
        async with serve({"/v1/audio/transcriptions": handler}) as (base, _app), \
                Transport() as transport:
            response = await transport.send(HttpRequest(
                "POST", f"{base}/v1/audio/transcriptions",
                # a provider's default JSON content type must not break the upload
                headers={"Content-Type": "application/json", "Authorization": "Bearer k"},
                form=[FormField("model", "whisper-1"),
                      FormField("file", audio, filename="speech.wav", content_type="audio/wav"),
                      FormField("language", "en"),
                      FormField("blob", b"\x00\x01\x02")]))
            assert response.status == 200, response.text
            seen = response.json()
            assert seen["model"] == "whisper-1"
            assert seen["language"] == "en"
            assert seen["filename"] == "speech.wav"
            assert seen["file_type"] == "audio/wav"
            assert bytes.fromhex(seen["file"]) == audio
            assert bytes.fromhex(seen["blob"]) == b"\x00\x01\x02"
            assert seen["blob_name"] == "blob"

    run(main())


def test_form_with_only_text_fields_is_still_multipart() -> None:
    async def handler(request: web.Request) -> web.Response:
        form = await request.post()
        return web.json_response({"type": request.content_type, "a": form["a"]})

    async def main() -> None:
        async with serve({"/f": handler}) as (base, _app), Transport() as transport:
            response = await transport.send(HttpRequest("POST", f"{base}/f",
                                                         form=[FormField("a", "1")]))
            assert response.json() == {"type": "multipart/form-data", "a": "1"}

    run(main())


def test_bytes_response_and_gzip_is_decompressed() -> None:
    blob = bytes(range(256)) * 64

    async def binary(request: web.Request) -> web.Response:
        return web.Response(body=blob, content_type="audio/mpeg")

    async def zipped(request: web.Request) -> web.Response:
        text = json.dumps({"data": ["x" * 50] * 100})
        return web.Response(body=gzip.compress(text.encode()), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})

    async def main() -> None:
        async with serve({"/speech": binary, "/zipped": zipped}) as (base, _app), \
                Transport() as transport:
            response = await transport.send(HttpRequest("POST", f"{base}/speech", json={}))
            assert response.body == blob
            assert response.header("content-type") == "audio/mpeg"
            assert response.json() is None
            response = await transport.send(HttpRequest("GET", f"{base}/zipped"))
            assert response.json() == {"data": ["x" * 50] * 100}

    run(main())


def test_request_with_two_bodies_is_rejected() -> None:
    async def main() -> None:
        async with Transport() as transport:
            with pytest.raises(ValueError, match="more than one"):
                await transport.send(HttpRequest("POST", "http://127.0.0.1:9/x", json={},
                                                 data=b"x"))

    run(main())


def test_connections_are_reused_across_requests() -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        async with serve({"/ok": ok}) as (base, app), Transport() as transport:
            for _ in range(5):
                assert (await transport.send(HttpRequest("GET", f"{base}/ok"))).status == 200
            assert len(set(app[PEERS])) == 1
            results = await asyncio.gather(*(transport.send(HttpRequest("GET", f"{base}/ok"))
                                             for _ in range(20)))
            assert [r.status for r in results] == [200] * 20

    run(main())


# ---------------------------------------------------------------------------
# Transport.send: failures below HTTP
# ---------------------------------------------------------------------------

async def hang(request: web.Request) -> web.Response:
    await request.app[STOP].wait()
    return web.Response(text="late")


def test_request_timeout_raises_timeout_error_naming_url_without_query() -> None:
    async def main() -> None:
        async with serve({"/slow": hang}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/slow?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), json={"a": 1})
            with pytest.raises(errors.TimeoutError) as info:
                await transport.send(req, timeout_s=0.2)
            err = info.value
            assert err.retryable is True
            assert f"{base}/slow" in str(err)
            assert "0.2 s" in str(err)
            assert_clean(err)

    run(main())


def test_connection_refused_raises_connection_error() -> None:
    async def main() -> None:
        port = free_port()
        async with Transport() as transport:
            req = HttpRequest("GET", f"http://127.0.0.1:{port}/v1/models?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), params={"key": FAKE_QUERY_KEY})
            with pytest.raises(errors.ConnectionError) as info:
                await transport.send(req)
            err = info.value
            assert err.retryable is True
            assert f"127.0.0.1:{port}/v1/models" in str(err)
            assert_clean(err)

    run(main())


def test_server_dropping_connection_before_response_raises_connection_error() -> None:
    async def slam(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.close()
        await request.app[STOP].wait()
        return web.Response(text="never")

    async def main() -> None:
        async with serve({"/drop": slam}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/drop?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), json={})
            with pytest.raises(errors.ConnectionError) as info:
                await transport.send(req)
            assert_clean(info.value)

    run(main())


def test_invalid_url_message_has_no_query() -> None:
    async def main() -> None:
        async with Transport() as transport:
            req = HttpRequest("GET", f"http://[::1/x?key={FAKE_QUERY_KEY}")
            with pytest.raises(errors.GatewayError) as info:
                await transport.send(req)
            assert_clean(info.value)

    run(main())


def test_request_repr_hides_query_and_headers() -> None:
    req = HttpRequest("POST", f"https://u:pw@example.com/v1beta/models/m:generateContent"
                              f"?key={FAKE_QUERY_KEY}", headers=dict(SECRET_HEADERS))
    assert repr(req) == "HttpRequest(POST https://example.com/v1beta/models/m:generateContent)"
    assert safe_url("http://h/p#frag") == "http://h/p"


# ---------------------------------------------------------------------------
# Transport.stream
# ---------------------------------------------------------------------------

def test_stream_sse_events_across_awkward_chunks() -> None:
    body = ('data: {"choices":[{"delta":{"content":"héllo ✓"}}]}\n\n'
            ": keep-alive\n\n"
            'data: {"choices":[{"delta":{}}],"usage":{"total_tokens":3}}\n\n'
            "data: [DONE]\n\n").encode()
    pieces = split_at(body, [3, 38, 39, 40, 41, 70, len(body) - 2])

    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse_response(request, pieces)

    async def main() -> None:
        async with serve({"/v1/chat/completions": handler}) as (base, _app), \
                Transport() as transport:
            req = HttpRequest("POST", f"{base}/v1/chat/completions", json={"stream": True},
                              stream="sse")
            async with transport.stream(req, timeout_s=5, stall_timeout_s=5) as response:
                assert isinstance(response, StreamResponse)
                assert response.status == 200
                assert response.headers["content-type"] == "text/event-stream"
                events = [e async for e in response.events()]
            assert [e.data for e in events][-1] == "[DONE]"
            assert json.loads(events[0].data)["choices"][0]["delta"]["content"] == "héllo ✓"
            assert len(events) == 3

    run(main())


def test_stream_tgi_no_space_and_final_event_without_blank_line() -> None:
    pieces = [b'data:{"token":{"text":"a"},"generated_text":null}\n\n',
              b'data:{"token":{"text":"b"},"generated_text":"ab"}']

    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse_response(request, pieces)

    async def main() -> None:
        async with serve({"/generate_stream": handler}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/generate_stream", json={}, stream="sse")
            async with transport.stream(req) as response:
                texts = [json.loads(e.data)["token"]["text"] async for e in response.events()]
            assert texts == ["a", "b"]

    run(main())


def test_stream_ndjson_objects() -> None:
    lines = [{"message": {"content": w}, "done": False} for w in ("The", " sky", " is")]
    lines.append({"done": True, "eval_count": 3})
    body = "".join(json.dumps(line) + "\n" for line in lines).encode()

    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse_response(request, split_at(body, [10, 11, 60]),
                                  content_type="application/x-ndjson")

    async def main() -> None:
        async with serve({"/api/chat": handler}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/api/chat", json={}, stream="ndjson")
            async with transport.stream(req) as response:
                got = [obj async for obj in response.events()]
            assert got == lines

    run(main())


def test_stream_without_framing_yields_raw_bytes() -> None:
    body = bytes(range(256)) * 50

    async def handler(request: web.Request) -> web.StreamResponse:
        return await sse_response(request, split_at(body, [100, 5000]),
                                  content_type="audio/mpeg")

    async def main() -> None:
        async with serve({"/speech": handler}) as (base, _app), Transport() as transport:
            async with transport.stream(HttpRequest("POST", f"{base}/speech", json={})) as response:
                chunks = [c async for c in response.events()]
            assert b"".join(chunks) == body

    run(main())


def test_stream_error_status_body_is_readable() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"type": "error", "error": {"type": "rate_limit_error"}},
                                 status=429, headers={"Retry-After": "3"})

    async def main() -> None:
        async with serve({"/v1/messages": handler}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/v1/messages", json={}, stream="sse")
            async with transport.stream(req) as response:
                assert response.status == 429
                assert response.headers["retry-after"] == "3"
                body = await response.read()
            assert json.loads(body)["error"]["type"] == "rate_limit_error"
            # the connection went back to the pool and still works
            assert (await transport.send(HttpRequest("POST", f"{base}/v1/messages"))).status == 429

    run(main())


def test_stream_stall_timeout_raises_timeout_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: first\n\n")
        await request.app[STOP].wait()
        return resp

    async def main() -> None:
        async with serve({"/stall": handler}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/stall?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), json={}, stream="sse")
            got: list[str] = []
            with pytest.raises(errors.TimeoutError) as info:
                async with transport.stream(req, timeout_s=5, stall_timeout_s=0.2) as response:
                    async for event in response.events():
                        got.append(event.data)
            assert got == ["first"]
            assert "stalled for 0.2 s" in str(info.value)
            assert info.value.retryable is True
            assert_clean(info.value)

    run(main())


def test_stream_headers_phase_timeout_raises_timeout_error() -> None:
    async def main() -> None:
        async with serve({"/slow": hang}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/slow?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), json={}, stream="sse")
            with pytest.raises(errors.TimeoutError) as info:
                async with transport.stream(req, timeout_s=0.2, stall_timeout_s=30):
                    pass
            assert "no response headers" in str(info.value)
            assert_clean(info.value)

    run(main())


def test_connection_dropped_mid_stream_raises_connection_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"partial": true}\n\n')
        assert request.transport is not None
        request.transport.close()  # no terminating chunk: the body is cut short
        await request.app[STOP].wait()
        return resp

    async def main() -> None:
        async with serve({"/drop": handler}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/drop?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), json={}, stream="sse")
            got: list[str] = []
            with pytest.raises(errors.ConnectionError) as info:
                async with transport.stream(req) as response:
                    async for event in response.events():
                        got.append(event.data)
            assert got == ['{"partial": true}']
            assert info.value.retryable is True
            assert_clean(info.value)

    run(main())


def test_stream_connection_refused_raises_connection_error() -> None:
    async def main() -> None:
        async with Transport() as transport:
            req = HttpRequest("POST", f"http://127.0.0.1:{free_port()}/s?key={FAKE_QUERY_KEY}",
                              headers=dict(SECRET_HEADERS), stream="sse")
            with pytest.raises(errors.ConnectionError) as info:
                async with transport.stream(req):
                    pass
            assert_clean(info.value)

    run(main())


def test_stream_connection_reused_after_full_read_and_closed_after_abandon() -> None:
    async def full(request: web.Request) -> web.StreamResponse:
        return await sse_response(request, [b"data: a\n\n", b"data: b\n\n"])

    async def endless(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b"data: a\n\n")
        await request.app[STOP].wait()
        return resp

    async def main() -> None:
        async with serve({"/s": full, "/endless": endless}) as (base, app), \
                Transport() as transport:
            req = HttpRequest("POST", f"{base}/s", json={}, stream="sse")
            async with transport.stream(req) as response:
                assert [e.data async for e in response.events()] == ["a", "b"]
            await transport.send(HttpRequest("POST", f"{base}/s"))
            assert len(set(app[PEERS])) == 1  # fully read: back to the pool
            req = HttpRequest("POST", f"{base}/endless", json={}, stream="sse")
            async with transport.stream(req) as response:
                async for _event in response.events():
                    break  # abandon mid-body
            await transport.send(HttpRequest("POST", f"{base}/s"))
            peers = app[PEERS]
            assert peers[2] == peers[0]
            assert peers[3] != peers[2]  # unread bytes: that connection was closed

    run(main())


def test_cancelled_stream_releases_connection() -> None:
    async def main() -> None:
        started, gone = asyncio.Event(), asyncio.Event()

        async def handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            try:
                await resp.write(b": open\n\n")
                started.set()
                await request.app[STOP].wait()
            except asyncio.CancelledError:  # handler_cancellation: the client went away
                gone.set()
                raise
            return resp

        async with serve({"/s": handler}) as (base, _app), Transport() as transport:
            req = HttpRequest("POST", f"{base}/s", json={}, stream="sse")

            async def consume() -> None:
                async with transport.stream(req, stall_timeout_s=60) as response:
                    async for _event in response.events():
                        pass

            task = asyncio.create_task(consume())
            await asyncio.wait_for(started.wait(), 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await asyncio.wait_for(gone.wait(), 10)

    run(main())


# ---------------------------------------------------------------------------
# Lifecycle
# ---------------------------------------------------------------------------

def test_lifecycle_lazy_session_close_twice_and_use_after_close() -> None:
    transport = Transport(timeout_s=5)  # no loop is running here: must not fail
    assert not transport.closed

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def main() -> None:
        async with serve({"/ok": ok}) as (base, _app):
            async with transport as t:
                assert (await t.send(HttpRequest("GET", f"{base}/ok"))).text == "ok"
            assert transport.closed
            await transport.close()
            assert transport.closed
            with pytest.raises(errors.ConnectionError, match="closed"):
                await transport.send(HttpRequest("GET", f"{base}/ok"))
            with pytest.raises(errors.ConnectionError, match="closed"):
                async with transport.stream(HttpRequest("GET", f"{base}/ok", stream="sse")):
                    pass

    run(main())


def test_transport_survives_a_new_event_loop() -> None:
    transport = Transport()

    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def once(close: bool) -> str:
        async with serve({"/ok": ok}) as (base, _app):
            text = (await transport.send(HttpRequest("GET", f"{base}/ok"))).text
        if close:
            await transport.close()
        return text

    assert run(once(close=False)) == "ok"
    assert run(once(close=True)) == "ok"


def test_invalid_settings_are_rejected() -> None:
    with pytest.raises(ValueError):
        Transport(timeout_s=0)
    with pytest.raises(ValueError):
        Transport(limit=-1)
