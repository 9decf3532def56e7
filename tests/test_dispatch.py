"""Coalesced dispatch: attempts leased to one key in one event-loop pass leave as one actor call.

The router and endpoint classes are plain Python, so these tests drive them
in-process with recording stand-ins for the actor handles: which calls were
made is then exact, not a matter of how Ray happened to schedule them.
"""
from __future__ import annotations

import asyncio

import pytest
from ray.exceptions import RayActorError

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.actors import router as router_module
from ipfs_accelerate_py.actors import wire
from ipfs_accelerate_py.actors.endpoint import EndpointActor, Outcome
from ipfs_accelerate_py.config import endpoint_from_dict, load_config
from ipfs_accelerate_py.types import ChatResponse, Usage, build_chat_request

MSG = [{"role": "user", "content": "hi"}]
STATE = {"circuit": "CLOSED", "retry_in": 0.0, "cooldown_s": 0.0, "max_concurrent": 100}


def answer(request_id: str, endpoint_id: str) -> Outcome:
    return Outcome(value=ChatResponse(text=f"answer to {request_id}", usage=Usage(3, 2, 5),
                                      request_id=request_id, endpoint_id=endpoint_id), state=dict(STATE))


class Ref:
    """Awaitable like an ObjectRef."""

    def __init__(self, value: object = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def __await__(self):
        yield from asyncio.sleep(0).__await__()
        if self.error is not None:
            raise self.error
        return self.value


class RecordingHandle:
    """An endpoint actor handle that records every call and answers them.

    ``die_after`` makes an ``execute_many`` stream break (as when the actor is
    killed) after that many answers have been delivered.
    """

    def __init__(self, endpoint_id: str, die_after: int | None = None) -> None:
        self.id = endpoint_id
        self.single: list[str] = []
        self.batches: list[list[str]] = []
        self.die_after = die_after
        handle = self

        class Execute:
            def remote(self, call: bytes):
                op, request, request_id, est_tokens = wire.unpack(call)
                handle.single.append(request_id)
                return Ref(wire.pack(answer(request_id, handle.id)))

        class ExecuteMany:
            def remote(self, packed: list[bytes]):
                calls = [wire.unpack(call) for call in packed]
                handle.batches.append([call[2] for call in calls])

                async def stream():
                    for index, call in enumerate(calls):
                        if handle.die_after is not None and index >= handle.die_after:
                            handle.die_after = None  # the restarted actor behaves
                            raise RayActorError()
                        await asyncio.sleep(0)
                        yield Ref([(index, wire.pack(answer(call[2], handle.id)))])
                return stream()

        self.execute_packed, self.execute_many = Execute(), ExecuteMany()


class ScriptedExecute(list):
    """An ``execute_packed`` stand-in: records each call, answers with ``reply()``."""

    def __init__(self, reply) -> None:
        super().__init__()
        self.reply = reply

    def remote(self, call: bytes):
        self.append(call)
        return self.reply()


def make_router(*handles: RecordingHandle) -> router_module.RouterActor:
    # these tests are about the Ray-call path; the direct lanes have tests of their own (test_lane.py)
    config = load_config({"namespace": "dispatch-test", "batching": {"enabled": False}, "direct_lane": False,
                          "retry": {"max_retries": 2, "initial_retry_delay": 0.0}, "endpoints": []})
    router = router_module.RouterActor(config, enable_metrics=False)
    for handle in handles:
        slot = router_module._Slot({"id": handle.id, "provider": "openai", "models": ["gpt-4o-mini"],
                                    "max_concurrent_requests": 100}, handle)
        slot.up = True
        router._slots[handle.id] = slot
    return router


def run(coro):
    async def with_discovery_done():
        router_future = asyncio.get_running_loop().create_future()
        router_future.set_result(None)
        return await coro(router_future)
    return asyncio.run(with_discovery_done())


def test_attempts_leased_together_leave_as_one_call_and_each_caller_gets_its_own_answer():
    key = RecordingHandle("k")
    router = make_router(key)

    async def scenario(ready):
        router._ready = ready
        first = await router.chat("gpt-4o-mini", MSG, request_id="solo")
        many = await asyncio.gather(*(router.chat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(10)))
        return first, many

    first, many = run(scenario)
    assert first.request_id == "solo" and key.single == ["solo"]  # alone: the plain call, no batch
    assert key.batches == [[f"r{i}" for i in range(10)]]
    assert [r.request_id for r in many] == [f"r{i}" for i in range(10)]
    assert all(r.text == f"answer to {r.request_id}" for r in many)
    assert router.counters["attempts"] == 11 and router.counters["endpoint_calls"] == 2
    assert router.counters["succeeded"] == 11 and all(s.in_flight == 0 for s in router._slots.values())


def test_a_batch_broken_by_a_dying_actor_re_dispatches_only_the_unanswered():
    dying, healthy = RecordingHandle("a", die_after=3), RecordingHandle("b")
    router = make_router(dying, healthy)
    router.strategy = router_module.make_strategy("round-robin")

    async def scenario(ready):
        router._ready = ready
        return await asyncio.gather(*(router.chat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(8)))

    results = run(scenario)
    assert sorted(r.request_id for r in results) == sorted(f"r{i}" for i in range(8))
    sent_to_a = dying.batches[0]
    answered_by_a = {r.request_id for r in results if r.endpoint_id == "a"}
    assert answered_by_a == set(sent_to_a[:3])  # delivered before the break: kept, never re-run
    redone = set(sent_to_a[3:])
    assert redone and all(
        rid in healthy.single or any(rid in b for b in healthy.batches[1:] + dying.batches[1:])
        or rid in dying.single for rid in redone)
    assert router.counters["succeeded"] == 8 and router.counters["failed"] == 0


def test_a_caller_that_leaves_before_the_flush_is_not_sent():
    key = RecordingHandle("k")
    router = make_router(key)

    async def scenario(ready):
        router._ready = ready
        leaving = asyncio.ensure_future(router.chat("gpt-4o-mini", MSG, request_id="gone"))
        staying = asyncio.ensure_future(router.chat("gpt-4o-mini", MSG, request_id="stays"))
        await asyncio.sleep(0)  # both leased and waiting in the outbox
        leaving.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leaving
        return await staying

    assert run(scenario).request_id == "stays"
    assert key.single == ["stays"] and key.batches == []


def failed_chat(reply, match: str):
    """Request "r1" from a router whose one key answers every call with ``reply()``;
    the ProviderError it fails with, the key's calls and the router."""
    key = RecordingHandle("k")
    key.execute_packed = calls = ScriptedExecute(reply)
    router = make_router(key)

    async def scenario(ready):
        router._ready = ready
        with pytest.raises(errors.ProviderError, match=match) as info:
            await router.chat("gpt-4o-mini", MSG, request_id="r1")
        return info.value

    return run(scenario), calls, router


def test_an_actor_call_failing_without_an_outcome_is_a_typed_error_and_frees_the_slot():
    err, calls, router = failed_chat(lambda: Ref(error=RuntimeError("object store trouble")), "object store trouble")
    assert err.endpoint_id == "k" and err.request_id == "r1"
    assert len(calls) >= 1 and router._slots["k"].in_flight == 0
    assert router.counters["failed"] == 1


def test_a_stream_call_failing_without_an_outcome_is_a_typed_error_and_frees_the_slot():
    key = RecordingHandle("k")

    class Broken:
        def remote(self, *args):
            async def chunks():
                raise RuntimeError("object lost")
                yield  # pragma: no cover - makes this an async generator
            return chunks()

    key.stream = Broken()
    router = make_router(key)

    async def scenario(ready):
        router._ready = ready
        with pytest.raises(errors.ProviderError, match="object lost"):
            async for _ in router.stream_chat("gpt-4o-mini", MSG, request_id="s1"):
                pass

    run(scenario)
    assert router._slots["k"].in_flight == 0
    assert router.counters["failed"] == 1 and router.counters["submitted"] == 1


def test_wire_sends_script_defined_classes_by_value():
    import pickle
    import subprocess
    import sys

    Role = type("Role", (str,), {"__module__": "__main__"})  # as if defined in the caller's script
    blob = wire.pack(("chat", {"role": Role("user")}, "r1", 0))
    # another process, without the caller's __main__, reads it back
    read = subprocess.run([sys.executable, "-c", "import pickle, sys; print(pickle.loads(sys.stdin.buffer.read())[1])"],
                          input=blob, capture_output=True, check=True)
    assert read.stdout.strip() == b"{'role': 'user'}"
    square = lambda x: x * x  # noqa: E731 - a lambda is what plain pickle refuses
    assert wire.unpack(wire.pack({"f": square}))["f"](3) == 9
    request = build_chat_request("gpt-4o-mini", MSG, {"temperature": 0.5})
    assert wire.unpack(wire.pack(request)) == request
    assert pickle.loads(wire.pack(request)) == request


def test_an_answer_that_cannot_be_read_fails_alone_and_is_not_retried():
    class Unreadable(Exception):  # pickles, but cannot be rebuilt from its args
        def __init__(self, *, detail: str) -> None:
            super().__init__(detail)

    bad = wire.pack(Outcome(error=Unreadable(detail="x")))
    err, sent, _ = failed_chat(lambda: Ref(bad), "could not be read")
    assert not err.retryable and err.request_id == "r1" and len(sent) == 1  # served once, never re-run


# ---------------------------------------------------------------------------
# EndpointActor.execute_many
# ---------------------------------------------------------------------------

def test_execute_many_answers_each_call_once_with_its_own_outcome(fake_openai):
    fake_openai.set_controls({"faults": [{"kind": "status", "status": 500, "count": 1}]})
    actor = EndpointActor(endpoint_from_dict({"id": "k", "provider": "openai", "base_url": fake_openai.base_url,
                                              "api_key": "sk-dispatch-" + "x" * 24, "models": ["gpt-4o-mini"]}),
                          enable_metrics=False)

    async def scenario():
        calls = [("chat", build_chat_request("gpt-4o-mini", [{"role": "user", "content": f"q{i}"}], {}),
                  f"r{i}", 0) for i in range(6)]
        calls.append(("chat", "not a request", "broken", 0))  # a bug-shaped input fails alone
        seen: dict[int, Outcome] = {}
        async for group in actor.execute_many([wire.pack(call) for call in calls]):
            for index, blob in group:
                outcome = wire.unpack(blob)
                assert index not in seen
                seen[index] = outcome
        await actor.close()
        return seen

    seen = asyncio.run(scenario())
    assert sorted(seen) == list(range(7))
    failed = [i for i, o in seen.items() if o.error is not None]
    assert isinstance(seen[6].error, errors.GatewayError) and seen[6].state["circuit"] == "CLOSED"
    assert len(failed) == 2  # the injected 500 and the broken call; the rest answered
    ok = [o.value for i, o in seen.items() if o.error is None]
    assert all(f"q" in r.text for r in ok) and {r.request_id for r in ok} <= {f"r{i}" for i in range(6)}


# ---------------------------------------------------------------------------
# Gateway facade: async requests made in one event-loop pass reach the router as one call
# ---------------------------------------------------------------------------

class RecordingRouter:
    """A router handle answering request_packed / request_many like the actor.

    ``fail`` maps a request id to the error that request gets; ``die_after``
    breaks the first request_many stream (as a router crash would) after that
    many answers.
    """

    def __init__(self, fail: dict | None = None, die_after: int | None = None) -> None:
        self.single: list[str] = []
        self.batches: list[list[str]] = []
        self.fail, self.die_after = dict(fail or {}), die_after
        router = self

        def reply(call: bytes) -> tuple[BaseException | None, object]:
            method, args, kwargs = wire.unpack(call)
            rid = kwargs["request_id"]
            if rid in router.fail:
                return router.fail[rid], None
            return None, ChatResponse(text=f"{method} {args[0]} {rid}", request_id=rid)

        class Packed:
            def remote(self, call: bytes):
                router.single.append(wire.unpack(call)[2]["request_id"])
                return Ref(wire.pack(reply(call)))

        class Many:
            def remote(self, calls: list[bytes]):
                router.batches.append([wire.unpack(c)[2]["request_id"] for c in calls])

                async def stream():
                    for index, call in enumerate(calls):
                        if router.die_after is not None and index >= router.die_after:
                            router.die_after = None
                            raise RayActorError()
                        yield Ref([(index, wire.pack(reply(call)))])
                return stream()

        class NoLane:  # direct lanes off: every request is a Ray call (test_lane.py covers lanes)
            def remote(self):
                return Ref(None)

        self.request_packed, self.request_many, self.lane_info = Packed(), Many(), NoLane()


def gateway_on(router: RecordingRouter, monkeypatch) -> "Gateway":
    from ipfs_accelerate_py.gateway import Gateway
    gw = Gateway(router, namespace="dispatch-test", name="ia")
    monkeypatch.setattr(gw, "_reattach", lambda deadline: None)  # the "restarted" router is the same
    return gw


def test_async_requests_in_one_pass_reach_the_router_as_one_call(monkeypatch):
    router = RecordingRouter(fail={"r3": errors.RateLimitError("slow down", request_id="r3")})
    gw = gateway_on(router, monkeypatch)

    async def scenario():
        alone = await gw.achat("gpt-4o-mini", MSG, request_id="solo")
        many = await asyncio.gather(*(gw.achat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(6)),
                                    return_exceptions=True)
        return alone, many

    alone, many = asyncio.run(scenario())
    assert alone.text == "chat gpt-4o-mini solo" and router.single == ["solo"]
    assert router.batches == [[f"r{i}" for i in range(6)]]
    assert isinstance(many[3], errors.RateLimitError) and many[3].request_id == "r3"  # only its caller
    assert [r.request_id for i, r in enumerate(many) if i != 3] == [f"r{i}" for i in range(6) if i != 3]


def test_a_router_crash_mid_batch_resends_only_the_unanswered(monkeypatch):
    router = RecordingRouter(die_after=2)
    gw = gateway_on(router, monkeypatch)

    async def scenario():
        return await asyncio.gather(*(gw.achat("gpt-4o-mini", MSG, request_id=f"r{i}") for i in range(5)))

    answers = asyncio.run(scenario())
    assert [a.request_id for a in answers] == [f"r{i}" for i in range(5)]  # each caller once, in order
    first, *again = router.batches
    assert first == [f"r{i}" for i in range(5)]
    resent = sorted(router.single + [rid for batch in again for rid in batch])
    assert resent == ["r2", "r3", "r4"]  # the two answered before the crash are not sent again
