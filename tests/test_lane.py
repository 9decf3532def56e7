"""Direct lanes (actors/lane.py): the socket that carries request blobs into an actor.

The first half needs no Ray: a LaneServer in an event loop and its two
clients.  The second half runs gateways on the session's Ray and checks that
requests really take the lanes, that every way a lane can fail falls back to
Ray calls without losing or repeating a request, and that a caller who
leaves cancels its request in the router.
"""
from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
import uuid

import pytest

from ipfs_accelerate_py.actors import lane as lane_module
from ipfs_accelerate_py.actors.lane import (AsyncLaneClient, LaneAddress, LaneCallFailed, LaneClient, LaneServer,
                                            LaneUnavailable)

MSG = [{"role": "user", "content": "hello lane"}]


class Recorder:
    """A handler that records what it was asked and can be held until released."""

    def __init__(self) -> None:
        self.seen: list[bytes] = []
        self.cancelled: list[bytes] = []
        self.hold: asyncio.Event | None = None

    async def __call__(self, payload: bytes) -> bytes:
        self.seen.append(payload)
        if payload.startswith(b"fail"):
            raise ValueError("asked to fail")
        try:
            if payload.startswith(b"hold") and self.hold is not None:
                await self.hold.wait()
            if payload.startswith(b"sleep:"):
                await asyncio.sleep(float(payload.split(b":")[1]))
        except asyncio.CancelledError:
            self.cancelled.append(payload)
            raise
        return b"re:" + payload


async def started(handler: Recorder) -> tuple[LaneServer, LaneAddress]:
    server = LaneServer(handler)
    return server, await server.start()


async def until(predicate, what: str, tries: int = 500) -> None:
    for _ in range(tries):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never happened: {what}")


# ---------------------------------------------------------------------------
# Server and async client
# ---------------------------------------------------------------------------

def test_answers_come_back_to_their_own_callers_in_any_order():
    async def scenario():
        handler = Recorder()
        server, address = await started(handler)
        client = AsyncLaneClient(address)
        # the first asked finishes last: answers are matched by call id, not by order
        answers = await asyncio.gather(*(client.call(f"sleep:{0.05 - i * 0.01:.2f}:{i}".encode()) for i in range(5)))
        await client.close()
        await server.close()
        return answers, handler, server

    answers, handler, server = asyncio.run(scenario())
    assert answers == [f"re:sleep:{0.05 - i * 0.01:.2f}:{i}".encode() for i in range(5)]
    assert len(handler.seen) == 5 and server.served == 5


def test_a_peer_without_the_secret_is_refused_before_anything_is_read():
    async def scenario():
        handler = Recorder()
        server, address = await started(handler)
        impostor = AsyncLaneClient(LaneAddress(address.host, address.port, b"not the secret" * 3))
        with pytest.raises(LaneUnavailable) as refused:
            await impostor.call(b"anything")
        # a raw peer that skips the challenge and sends a frame straight away
        reader, writer = await asyncio.open_connection(address.host, address.port)
        await reader.readexactly(32)
        writer.write(b"\x00" * 32 + struct.pack("!QBI", 1, 1, 3) + b"abc")
        assert await reader.read() == b""  # closed on us
        writer.close()
        await server.close()
        return refused.value, handler

    refused, handler = asyncio.run(scenario())
    assert refused.kind == "broken"
    assert handler.seen == []


def test_a_cancelled_caller_cancels_its_request_in_the_server_and_the_connection_lives_on():
    async def scenario():
        handler = Recorder()
        handler.hold = asyncio.Event()
        server, address = await started(handler)
        client = AsyncLaneClient(address)
        waiting = asyncio.ensure_future(client.call(b"hold-1"))
        await until(lambda: handler.seen, "the request reached the handler")
        waiting.cancel()
        await until(lambda: handler.cancelled, "the handler was cancelled")
        after = await client.call(b"next")
        await client.close()
        await server.close()
        return handler, after, client

    handler, after, client = asyncio.run(scenario())
    assert handler.cancelled == [b"hold-1"]
    assert after == b"re:next"


def test_a_closed_connection_fails_every_waiting_call_and_cancels_their_work():
    async def scenario():
        handler = Recorder()
        handler.hold = asyncio.Event()
        server, address = await started(handler)
        client = AsyncLaneClient(address)
        calls = [asyncio.ensure_future(client.call(f"hold-{i}".encode())) for i in range(3)]
        await until(lambda: len(handler.seen) == 3, "three requests in the handler")
        await server.close()  # as when the actor dies
        results = await asyncio.gather(*calls, return_exceptions=True)
        await until(lambda: len(handler.cancelled) == 3, "the server-side work was cancelled")
        with pytest.raises(LaneUnavailable) as later:
            await client.call(b"after")
        return results, later.value, client

    results, later, client = asyncio.run(scenario())
    assert all(isinstance(r, LaneUnavailable) and r.kind == "broken" for r in results), results
    assert client.closed and later.kind == "closed"


def test_a_handler_that_raises_gives_its_caller_the_failure_not_a_hang():
    async def scenario():
        server, address = await started(Recorder())
        client = AsyncLaneClient(address)
        with pytest.raises(LaneCallFailed, match="ValueError: asked to fail"):
            await client.call(b"fail")
        ok = await client.call(b"fine")
        await client.close()
        await server.close()
        return ok

    assert asyncio.run(scenario()) == b"re:fine"


def test_an_address_that_does_not_answer_is_reported_as_unreachable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # nothing listens here once closed

    async def scenario():
        with pytest.raises(LaneUnavailable) as unreachable:
            await AsyncLaneClient(LaneAddress("127.0.0.1", port, b"s" * 32)).call(b"x")
        return unreachable.value

    assert asyncio.run(scenario()).kind == "connect"
    with pytest.raises(LaneUnavailable) as unreachable:
        LaneClient(LaneAddress("127.0.0.1", port, b"s" * 32)).call(b"x")
    assert unreachable.value.kind == "connect"


def test_oversized_frames_are_refused_on_both_sides(monkeypatch):
    monkeypatch.setattr(lane_module, "MAX_PAYLOAD", 16)

    async def scenario():
        handler = Recorder()
        server, address = await started(handler)
        client = AsyncLaneClient(address)
        with pytest.raises(LaneUnavailable) as too_big:
            await client.call(b"x" * 17)
        assert not client.closed  # one big request does not spoil the lane
        assert await client.call(b"small") == b"re:small"
        # a peer that announces a frame over the limit is dropped before the frame is read
        raw = AsyncLaneClient(address)
        await raw.call(b"hello")
        raw._writer.write(struct.pack("!QBI", 9, 1, 1 << 30))
        await until(lambda: raw.closed, "the server dropped the connection")
        await client.close()
        await server.close()
        return too_big.value, handler

    too_big, handler = asyncio.run(scenario())
    assert too_big.kind == "size"
    assert handler.seen == [b"small", b"hello"]


def test_the_secret_never_shows_in_a_repr():
    address = LaneAddress("10.0.0.1", 1234, b"\x01topsecret-bytes\x02")
    for text in (repr(address), str(address), repr(LaneClient(address)), repr(AsyncLaneClient(address))):
        assert "topsecret" not in text and "1234" in text


# ---------------------------------------------------------------------------
# Blocking client (gw.chat's path)
# ---------------------------------------------------------------------------

class ServerThread:
    """A LaneServer on an event loop in a thread, as it runs inside an actor."""

    def __init__(self, handler: Recorder) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server = LaneServer(handler)
        self.address = self.run(self.server.start())

    def run(self, coro):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)

    def stop(self) -> None:
        self.run(self.server.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_blocking_clients_on_several_threads_each_get_their_own_answers():
    handler = Recorder()
    served = ServerThread(handler)
    client = LaneClient(served.address)
    answers: dict[int, list[bytes]] = {}

    def worker(n: int) -> None:
        answers[n] = [client.call(f"t{n}-{i}".encode()) for i in range(20)]

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    served.stop()
    assert answers == {n: [f"re:t{n}-{i}".encode() for i in range(20)] for n in range(4)}
    assert len(handler.seen) == 80


def test_a_blocking_call_whose_server_dies_raises_and_the_client_asks_for_a_new_address():
    handler = Recorder()
    handler.hold = None
    served = ServerThread(handler)
    client = LaneClient(served.address)
    assert client.call(b"one") == b"re:one"
    served.stop()
    with pytest.raises(LaneUnavailable) as broken:
        client.call(b"two")
    assert broken.value.kind in ("broken", "connect") and client.closed


# ---------------------------------------------------------------------------
# On Ray: Gateway -> router -> endpoint actors over lanes
# ---------------------------------------------------------------------------

def endpoint(fake, eid: str, **kw) -> dict:
    return {"id": eid, "provider": "openai", "base_url": fake.base_url, "api_key": f"sk-lane{uuid.uuid4().hex}",
            "models": ["gpt-4o-mini"], **kw}


def wait_until(predicate, what: str, tries: int = 1000, pause: float = 0.01):
    for _ in range(tries):
        value = predicate()
        if value:
            return value
        time.sleep(pause)
    raise AssertionError(f"never happened: {what}")


@pytest.mark.ray
def test_gateway_requests_travel_by_lane_and_fall_back_to_ray_when_lanes_are_switched_off(make_gateway,
                                                                                         fake_openai):
    gw = make_gateway({"endpoints": [endpoint(fake_openai, "a"), endpoint(fake_openai, "b")]})
    first = [gw.chat("gpt-4o-mini", MSG, request_id=f"s{i}") for i in range(4)]

    async def some_async():
        return await asyncio.gather(*(gw.achat("gpt-4o-mini", MSG, request_id=f"a{i}") for i in range(6)))

    first += asyncio.run(some_async())
    counters = gw.stats()["router"]
    assert [r.request_id for r in first] == [f"s{i}" for i in range(4)] + [f"a{i}" for i in range(6)]
    assert counters["lane_requests"] == 10 and counters["lane_attempts"] == 10
    assert counters["endpoint_calls"] == 0  # no attempt needed a Ray call

    settings = gw.configure(direct_lane=False)
    assert settings["direct_lane"] is False
    later = [gw.chat("gpt-4o-mini", MSG, request_id=f"late{i}") for i in range(3)]
    later += asyncio.run(some_async())
    assert [r.request_id for r in later] == [f"late{i}" for i in range(3)] + [f"a{i}" for i in range(6)]
    counters = gw.stats()["router"]
    assert counters["lane_requests"] == 10 and counters["lane_attempts"] == 10  # nothing more by lane
    assert counters["succeeded"] == counters["submitted"] == 19 and counters["endpoint_calls"] >= 1


@pytest.mark.ray
def test_lanes_can_be_switched_off_in_the_config(make_gateway, fake_openai):
    gw = make_gateway({"direct_lane": False, "endpoints": [endpoint(fake_openai, "a")]})
    assert gw.chat("gpt-4o-mini", MSG).text
    counters = gw.stats()["router"]
    assert counters["lane_requests"] == 0 and counters["lane_attempts"] == 0 and counters["endpoint_calls"] == 1


@pytest.mark.ray
def test_a_cancelled_async_caller_frees_its_endpoint_slot_in_the_router(make_gateway, fake_openai):
    fake_openai.set_controls({"faults": [{"kind": "hang", "count": 1}]})
    gw = make_gateway({"retry": {"max_retries": 0},
                       "endpoints": [endpoint(fake_openai, "only", max_concurrent_requests=1, timeout_s=60)]})

    async def scenario():
        hung = asyncio.ensure_future(gw.achat("gpt-4o-mini", MSG, request_id="hung"))
        for _ in range(1000):
            if (await gw.aqueue_info())["active_requests"] == 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the request never took the slot")
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        for _ in range(1000):
            info = await gw.aqueue_info()
            if info["active_requests"] == 0:
                break
            await asyncio.sleep(0.01)
        return await gw.achat("gpt-4o-mini", MSG, request_id="after")

    after = asyncio.run(scenario())
    assert after.request_id == "after"  # the only slot was free again
    counters = gw.stats()["router"]
    assert counters["cancelled"] == 1 and counters["cancelled_in_flight"] == 1
    assert counters["succeeded"] == 1 and counters["submitted"] == 2
