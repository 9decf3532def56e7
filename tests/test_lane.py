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
from waiting import wait_until

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
        return b"re:" + payload + (b"x" * (1 << 22) if b"big" in payload else b"")


async def started(handler: Recorder) -> tuple[LaneServer, LaneAddress]:
    server = LaneServer(handler)
    return server, await server.start()


async def holding() -> tuple[Recorder, LaneServer, LaneAddress]:
    """A server whose handler holds "hold..." requests until ``handler.hold`` is set."""
    handler = Recorder()
    handler.hold = asyncio.Event()
    return (handler, *await started(handler))


async def one_held_call(payload: bytes) -> tuple[Recorder, LaneServer, AsyncLaneClient, asyncio.Future]:
    """A client whose call ``payload`` is running, held, in the server's handler."""
    handler, server, address = await holding()
    client = AsyncLaneClient(address)
    call = asyncio.ensure_future(client.call(payload))
    await until(lambda: handler.seen, "the request reached the handler")
    return handler, server, client, call


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
        writer.write(b"\x00" * 64 + struct.pack("!QBI", 1, 1, 3) + b"abc")  # a wrong proof, then a frame
        assert await reader.read() == b""  # closed on us
        writer.close()
        await server.close()
        return refused.value, handler

    refused, handler = asyncio.run(scenario())
    assert refused.kind == "connect"  # not sent: the caller may use Ray at once
    assert handler.seen == []


def test_a_client_never_talks_to_a_server_that_cannot_prove_the_secret():
    """Whoever holds the port after the actor died must not get requests or feed answers."""
    async def scenario():
        seen: list[bytes] = []

        async def impostor(reader, writer):
            writer.write(b"n" * 32)  # a nonce, but it cannot answer the client's
            seen.append(await reader.readexactly(64))
            writer.write(b"p" * 32)
            seen.append(await reader.read(100))
            writer.close()

        server = await asyncio.start_server(impostor, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with pytest.raises(LaneUnavailable) as refused:
            await AsyncLaneClient(LaneAddress("127.0.0.1", port, b"k" * 32)).call(b"secret request")
        await until(lambda: len(seen) == 2, "the impostor saw the client hang up")
        server.close()
        return refused.value, seen, port

    refused, seen, port = asyncio.run(scenario())
    assert refused.kind == "connect" and seen[1] == b""  # the request itself never went out
    with pytest.raises(LaneUnavailable):  # the blocking client refuses it too
        LaneClient(LaneAddress("127.0.0.1", port, b"k" * 32)).call(b"secret request")


def test_a_cancelled_caller_cancels_its_request_in_the_server_and_the_connection_lives_on():
    async def scenario():
        handler, server, client, waiting = await one_held_call(b"hold-1")
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
        handler, server, address = await holding()
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


def test_a_cancellation_the_caller_did_not_ask_for_is_reported_not_swallowed():
    async def scenario():
        async def handler(payload: bytes) -> bytes:
            inner = asyncio.ensure_future(asyncio.sleep(10))
            asyncio.get_running_loop().call_soon(inner.cancel)  # something inside gives up
            await inner
            return b"never"

        server = LaneServer(handler)
        client = AsyncLaneClient(await server.start())
        with pytest.raises(LaneCallFailed, match="cancelled inside the actor"):
            await asyncio.wait_for(client.call(b"x"), 10)
        await client.close()
        await server.close()

    asyncio.run(scenario())


def test_a_connection_that_dies_right_after_the_handshake_fails_the_first_call_instead_of_hanging():
    async def scenario():
        secret = b"s" * 32

        async def opens_then_dies(reader, writer):
            nonce = b"n" * 32
            writer.write(nonce)
            hello = await reader.readexactly(64)
            assert hello[:32] == lane_module._proof(secret, b"lane-client", nonce)
            writer.write(lane_module._proof(secret, b"lane-server", hello[32:]))
            writer.close()  # as an actor exiting just after accepting

        server = await asyncio.start_server(opens_then_dies, "127.0.0.1", 0)
        client = AsyncLaneClient(LaneAddress("127.0.0.1", server.sockets[0].getsockname()[1], secret))
        results = await asyncio.wait_for(asyncio.gather(*(client.call(b"x") for _ in range(3)),
                                                        return_exceptions=True), 10)
        server.close()
        return results

    results = asyncio.run(scenario())
    assert all(isinstance(r, LaneUnavailable) for r in results), results


def test_draining_answers_what_runs_refuses_what_comes_and_closes_idle_connections():
    async def scenario():
        handler, server, address = await holding()
        busy, idle = AsyncLaneClient(address), AsyncLaneClient(address)
        assert await idle.call(b"warm") == b"re:warm"
        running = asyncio.ensure_future(busy.call(b"hold-big"))
        await until(lambda: b"hold-big" in handler.seen, "the request runs")
        server.drain()
        await until(lambda: idle.closed, "the idle connection was closed")
        # a request sent just as the last running one is answered: it is refused, and that
        # (4 MiB) answer still arrives, not reset away by a close with unread input
        handler.hold.set()
        answer, racing = await asyncio.gather(running, busy.call(b"racing"), return_exceptions=True)
        await until(lambda: not server._connections, "the drained connection closed")
        return answer, racing, handler, busy

    answer, racing, handler, busy = asyncio.run(scenario())
    assert answer == b"re:hold-big" + b"x" * (1 << 22)  # answered, not cancelled and not re-run
    assert isinstance(racing, LaneUnavailable) and racing.kind == "refused", racing
    assert handler.seen == [b"warm", b"hold-big"] and not handler.cancelled
    assert busy.closed  # a refused client takes no new calls


def test_a_peer_that_reuses_a_running_call_id_is_dropped():
    async def scenario():
        handler, server, client, first = await one_held_call(b"hold-a")
        client._writer.write(lane_module._frame(1, lane_module._REQUEST, b"hold-b"))  # id 1 again
        result = await asyncio.gather(first, return_exceptions=True)
        await server.close()
        return result[0], handler

    result, handler = asyncio.run(scenario())
    assert isinstance(result, LaneUnavailable) and handler.seen == [b"hold-a"]


def test_clients_of_finished_event_loops_do_not_keep_those_loops_alive():
    """A sync wrapper running asyncio.run(gw.achat(...)) per request: one client per loop."""
    import gc
    import weakref

    served = ServerThread(Recorder())
    by_loop: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def one_request():
        loop = asyncio.get_running_loop()
        client = by_loop.get(loop)
        if client is None:
            client = by_loop[loop] = AsyncLaneClient(served.address)
        return await client.call(b"ping")

    for _ in range(20):
        assert asyncio.run(one_request()) == b"re:ping"
    gc.collect()
    served.stop()
    assert len(by_loop) == 0


def test_a_write_on_a_transport_that_just_closed_is_lane_unavailable_not_a_runtime_error():
    """uvloop (Ray runs actors on it) raises RuntimeError where asyncio only logs; the
    chaos soak caught it failing requests the router would have re-dispatched."""
    async def scenario():
        server, address = await started(Recorder())
        client = AsyncLaneClient(address)
        assert await client.call(b"warm") == b"re:warm"

        def closed_write(data: bytes) -> None:
            raise RuntimeError("unable to perform operation on <TCPTransport closed=True>; the handler is closed")

        client._writer.write = closed_write
        with pytest.raises(LaneUnavailable) as broken:
            await client.call(b"x")
        await server.close()
        return broken.value, client

    broken, client = asyncio.run(scenario())
    assert broken.kind == "closed" and client.closed  # not sent: it may go by Ray as it is


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


def test_a_blocking_call_that_failed_in_the_handler_keeps_its_connection():
    handler = Recorder()
    served = ServerThread(handler)
    client = LaneClient(served.address)
    with pytest.raises(LaneCallFailed, match="asked to fail"):
        client.call(b"fail")
    assert client.call(b"fine") == b"re:fine"
    connections = len(served.server._connections)
    served.stop()
    assert connections == 1 and not client.closed


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
def test_a_cancelled_async_caller_cancels_its_request_upstream_and_frees_the_slot(make_gateway, fake_openai):
    fake_openai.set_controls({"faults": [{"kind": "hang", "count": 1}]})
    gw = make_gateway({"retry": {"max_retries": 0},
                       "endpoints": [endpoint(fake_openai, "only", max_concurrent_requests=1, timeout_s=60)]})

    async def scenario():
        hung = asyncio.ensure_future(gw.achat("gpt-4o-mini", MSG, request_id="hung"))
        # cancel only once the request is hanging upstream (the fault is used up then)
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_until(
            lambda: fake_openai.stats()["faults_injected"].get("hang") == 1, "the request hangs upstream"))
        hung.cancel()
        with pytest.raises(asyncio.CancelledError):
            await hung
        # the cancellation travelled router -> endpoint actor -> HTTP: the provider sees the hang-up
        await asyncio.get_running_loop().run_in_executor(None, lambda: wait_until(
            lambda: fake_openai.stats()["in_flight"] == 0, "the upstream request was abandoned"))
        return await gw.achat("gpt-4o-mini", MSG, request_id="after")

    after = asyncio.run(scenario())
    assert after.request_id == "after"  # the only slot was free again
    counters = gw.stats()["router"]
    assert counters["cancelled"] == 1 and counters["cancelled_in_flight"] == 1
    assert counters["succeeded"] == 1 and counters["submitted"] == 2
    assert gw.queue_info()["active_requests"] == 0


# ---------------------------------------------------------------------------
# The router's attempts over endpoint lanes, in-process (no Ray)
# ---------------------------------------------------------------------------

from ipfs_accelerate_py.actors import router as router_module  # noqa: E402
from ipfs_accelerate_py.actors import wire  # noqa: E402
from ipfs_accelerate_py.actors.endpoint import Outcome  # noqa: E402
from ipfs_accelerate_py.config import load_config  # noqa: E402
from ipfs_accelerate_py.types import ChatResponse, Usage  # noqa: E402

STATE = {"circuit": "CLOSED", "retry_in": 0.0, "cooldown_s": 0.0, "max_concurrent": 100}


def outcome(request_id: str, via: str) -> Outcome:
    return Outcome(value=ChatResponse(text=f"{via}:{request_id}", usage=Usage(3, 2, 5), request_id=request_id,
                                      endpoint_id="k"), state=dict(STATE))


class Ref:
    """Awaitable like an ObjectRef."""

    def __init__(self, value: object = None) -> None:
        self.value = value

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        return self.value


class LaneEndpoint:
    """An endpoint actor stand-in: a real LaneServer (or an address nobody answers)
    for lane attempts, a recording ``execute_packed`` for Ray attempts."""

    def __init__(self, dead_address: bool = False) -> None:
        self.id = "k"
        self.by_ray: list[str] = []
        self.by_lane: list[str] = []
        self.lane_asked = 0
        self.hold: asyncio.Event | None = None
        self.server = LaneServer(self._execute)
        self.dead_address = dead_address
        endpoint = self

        class LaneInfo:
            def remote(self):
                endpoint.lane_asked += 1
                return endpoint._address()

        class Execute:
            def remote(self, call: bytes):
                rid = wire.unpack(call)[2]
                endpoint.by_ray.append(rid)
                return Ref(wire.pack(outcome(rid, "ray")))

        self.lane_info, self.execute_packed = LaneInfo(), Execute()

    async def _address(self) -> LaneAddress:
        if self.dead_address:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            return LaneAddress("127.0.0.1", port, b"x" * 32)
        return await self.server.start()

    async def _execute(self, call: bytes) -> bytes:
        rid = wire.unpack(call)[2]
        self.by_lane.append(rid)
        if self.hold is not None:
            await self.hold.wait()
        return wire.pack(outcome(rid, "lane"))


async def lane_router(endpoint: LaneEndpoint) -> router_module.RouterActor:
    config = load_config({"namespace": "lane-test", "batching": {"enabled": False},
                          "retry": {"max_retries": 2, "initial_retry_delay": 0.0}, "endpoints": []})
    router = router_module.RouterActor(config, enable_metrics=False)
    slot = router_module._Slot({"id": endpoint.id, "provider": "openai", "models": ["gpt-4o-mini"],
                                "max_concurrent_requests": 100}, endpoint)
    slot.up = True
    router._slots[endpoint.id] = slot
    router._ready = asyncio.get_running_loop().create_future()
    router._ready.set_result(None)
    router._open_lane(slot)  # as when the endpoint actor comes up
    await slot.lane_opening
    return router


async def one_request_held_on_the_lane() -> tuple[LaneEndpoint, router_module.RouterActor, asyncio.Future]:
    """A router whose one request "r0" is running in the endpoint, by lane, until released."""
    endpoint = LaneEndpoint()
    endpoint.hold = asyncio.Event()
    router = await lane_router(endpoint)
    request = asyncio.ensure_future(router.chat("gpt-4o-mini", MSG, request_id="r0"))
    await until(lambda: endpoint.by_lane, "the attempt reached the endpoint")
    return endpoint, router, request


def test_router_attempts_take_the_endpoint_lane():
    async def scenario():
        endpoint = LaneEndpoint()
        router = await lane_router(endpoint)
        answers = await asyncio.gather(*(router.chat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(5)))
        await endpoint.server.close()
        return answers, endpoint, router.counters

    answers, endpoint, counters = asyncio.run(scenario())
    assert [a.text for a in answers] == [f"lane:r{i}" for i in range(5)]
    assert endpoint.by_ray == [] and sorted(endpoint.by_lane) == [f"r{i}" for i in range(5)]
    assert counters["lane_attempts"] == counters["attempts"] == 5 and counters["endpoint_calls"] == 0


def test_an_endpoint_lane_that_does_not_answer_costs_no_failover_and_is_not_asked_for_every_request():
    async def scenario():
        endpoint = LaneEndpoint(dead_address=True)
        router = await lane_router(endpoint)
        answers = [await router.chat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(4)]
        return answers, endpoint, router

    answers, endpoint, router = asyncio.run(scenario())
    assert [a.text for a in answers] == [f"ray:r{i}" for i in range(4)]  # each sent once, by Ray
    assert endpoint.by_ray == [f"r{i}" for i in range(4)]
    counters = router.counters
    assert counters["failovers"] == 0 and counters["retries"] == 0 and counters["succeeded"] == 4
    assert counters["lane_attempts"] == 0 and counters["attempts"] == 4
    slot = router._slots["k"]
    # asked again once (a restarted actor would listen elsewhere), then left alone for a while
    assert endpoint.lane_asked == 2 and slot.lane is None and slot.lane_failures == 2
    assert slot.lane_retry_at > time.monotonic()


def test_many_attempts_failing_on_one_unreachable_lane_count_as_one_failure():
    async def scenario():
        endpoint = LaneEndpoint(dead_address=True)
        router = await lane_router(endpoint)
        answers = await asyncio.gather(*(router.chat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(8)))
        return answers, endpoint, router

    answers, endpoint, router = asyncio.run(scenario())
    assert sorted(a.text for a in answers) == sorted(f"ray:r{i}" for i in range(8))
    assert sorted(endpoint.by_ray) == sorted(f"r{i}" for i in range(8))
    assert router._slots["k"].lane_failures == 1 and router.counters["failovers"] == 0


def test_an_endpoint_lane_lost_mid_request_re_dispatches_it_once():
    async def scenario():
        endpoint, router, waiting = await one_request_held_on_the_lane()
        endpoint.dead_address = True  # the "restarted" actor's lane does not answer
        await endpoint.server.close()  # as when the actor dies
        answer = await asyncio.wait_for(waiting, 30)
        return answer, endpoint, router.counters

    answer, endpoint, counters = asyncio.run(scenario())
    assert answer.text == "ray:r0" and endpoint.by_lane == ["r0"] and endpoint.by_ray == ["r0"]
    assert counters["succeeded"] == counters["submitted"] == 1 and counters["failed"] == 0


def test_switching_lanes_off_lets_running_attempts_finish_on_their_lane():
    async def scenario():
        endpoint, router, running = await one_request_held_on_the_lane()
        settings = await router.configure(direct_lane=False)
        endpoint.hold.set()
        first = await running
        later = await router.chat("gpt-4o-mini", MSG, request_id="r1")
        await endpoint.server.close()
        return settings, first, later, endpoint, router.counters

    settings, first, later, endpoint, counters = asyncio.run(scenario())
    assert settings["direct_lane"] is False
    assert first.text == "lane:r0" and later.text == "ray:r1"  # neither cancelled nor sent twice
    assert endpoint.by_lane == ["r0"] and endpoint.by_ray == ["r1"]
    assert counters["failovers"] == 0 and counters["cancelled"] == 0 and counters["succeeded"] == 2
