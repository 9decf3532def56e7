"""Reliability: the runtime keeps working and loses nothing under load, faults,
backpressure and silent upstreams (issue 8).

These are the scaled-down forms of bench/soak.py (whose ``run_soak`` and
``run_chaos`` they call): a few thousand requests at most, structural
assertions only (never wall-clock time).  The full sizes and the figures (RSS
growth, p99 drift) are the bench's job.
"""
from __future__ import annotations

import asyncio
import importlib.util
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import ray

import ipfs_accelerate_py as ia
from waiting import wait_until

pytestmark = pytest.mark.ray

MODEL = "gpt-4o-mini"
MSG = [{"role": "user", "content": "hello there"}]
ROOT = Path(__file__).resolve().parents[1]


def _load_soak():
    name = "ia_bench_soak"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / "soak.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


soak = _load_soak()


@pytest.fixture
def fake(fake_openai):
    """The session's fake OpenAI server, reset (no faults, no latency) for this test."""
    return fake_openai


def key(tag: str = "") -> str:
    return f"sk-rel{tag}{uuid.uuid4().hex}"


def endpoint(fake, eid: str, api_key: str, **kw) -> dict:
    return {"id": eid, "provider": "openai", "base_url": fake.base_url, "api_key": api_key,
            "models": [MODEL], **kw}


def soak_fp(api_key: str) -> str:
    """The label the fake's per-key stats use."""
    return f"{api_key[:3]}...{api_key[-4:]}"


def settled(gw) -> bool:
    info = gw.queue_info()
    return info["size"] == 0 and info["active_requests"] == 0


# ---------------------------------------------------------------------------
# 1. Soak (structural part): per-request state is released
# ---------------------------------------------------------------------------

def test_soak_leaves_no_request_state_behind(make_gateway, fake):
    gw = make_gateway({"queue_size": 5000,
                       "endpoints": [endpoint(fake, f"key-{i}", key(str(i)), max_concurrent_requests=100)
                                     for i in range(3)]})
    figures = soak.run_soak(gw, requests=2000, concurrency=100, warmup=200, log=lambda _: None)
    assert figures["failed"] == 0 and figures["mismatched"] == 0, figures["failure_samples"]
    assert figures["queue_after"] == {"size": 0, "active_requests": 0}
    # the router's counters balance: every request that came in went out exactly once
    counters = figures["router_counters"]
    assert counters["submitted"] == counters["succeeded"] == 2200 and counters["failed"] == 0
    # no request object survives its request, in the router or in any endpoint actor
    for actor, live in figures["live_request_objects"].items():
        assert not live, f"{actor} still holds {live}"
    # no container inside any actor grows with the number of requests (no ids kept forever)
    assert figures["grown_containers"] == {}
    assert figures["restarted_actors"] == []
    # every endpoint's concurrency slots are all free again
    slots = figures["endpoint_slots_after"]
    assert len(slots) == 3 and all(s["free"] == s["max"] == 100 and s["in_flight"] == 0 and s["waiters"] == 0
                                   for s in slots.values()), slots
    # and each endpoint's own view agrees: nothing in flight, every request counted once
    stats = gw.stats()
    assert all(ep["in_flight"] == 0 for ep in stats["endpoints"].values())
    assert stats["successful_requests"] == stats["total_requests"] == 2200


def test_probe_sees_request_state_while_requests_wait(make_gateway, fake):
    """The soak's probe is not blind: with requests parked in the queue it reports them."""
    fake.set_controls({"faults": [{"kind": "hang", "count": 1}]})
    gw = make_gateway({"retry": {"max_retries": 0},
                       "endpoints": [endpoint(fake, "only", key(), max_concurrent_requests=1, timeout_s=60)]})
    refs = [gw.router.chat.remote(MODEL, MSG, request_id="p0")]
    wait_until(lambda: gw.queue_info()["active_requests"] == 1, "the hung request holds the only slot")
    refs += [gw.router.chat.remote(MODEL, MSG, request_id=f"p{i}") for i in range(1, 6)]
    wait_until(lambda: gw.queue_info()["size"] == 5, "five requests queued behind the hung one")
    inside = soak.probe({"router": gw.router})["router"]
    assert inside["live"].get("_Job", 0) >= 6
    assert any(path.endswith("_index") and n >= 5 for path, n in inside["sizes"].items()), inside["sizes"]
    ray.cancel(refs[0])  # the hung one: its caller gives up
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(refs[0])
    assert all(r.text for r in ray.get(refs[1:]))
    wait_until(lambda: settled(gw), "the queue drains")
    assert soak.probe({"router": gw.router})["router"]["live"].get("_Job", 0) == 0


# ---------------------------------------------------------------------------
# 2. Chaos: 5xx, drops, a revoked key, a throttled key, actor kills
# ---------------------------------------------------------------------------

def test_chaos_bulk_and_streams_lose_nothing(make_gateway, fake, tmp_path):
    fake.set_controls({"latency_s": 0.01, "chunk_delay_s": 0.002})
    keys = {role: key(role) for role in ("healthy", "revoked", "throttled")}
    gw = make_gateway(soak.chaos_config(fake, keys, namespace=f"test-chaos-{uuid.uuid4().hex[:8]}",
                                        max_concurrent=16, reset_timeout=1.0))
    figures = soak.run_chaos(gw, fake, keys, tmp_path, requests=400, streams=40, concurrency=32,
                             stream_concurrency=8, throttle_s=1.5, retry_after_s=0.5, log=lambda _: None)
    by_key = fake.stats()["by_key"]
    assert figures["problems"] == [], figures
    assert figures["results_lines"] == 400 and figures["missing"] == 0 and figures["duplicated"] == 0
    assert figures["bulk_succeeded"] == 400 and figures["streams_ok"] == 40
    assert all(e["during_run"] for e in figures["events"])
    # the faults really happened: random 5xx and drops, the 401s and the 429s
    assert figures["faults_injected"].get("status", 0) > 20
    assert figures["faults_injected"].get("drop_mid_stream", 0) > 0
    assert by_key[soak_fp(keys["revoked"])]["errors"] >= 1
    assert by_key[soak_fp(keys["throttled"])]["429"] >= 1


def _upstream_answers(chunks) -> set:
    return {c.raw.get("id") for c in chunks if isinstance(c.raw, dict) and c.raw.get("id")}


def test_stream_chunks_carry_one_upstream_answer(make_gateway, fake):
    """The splice detector's premise: an unbroken stream's chunks all carry one upstream response id."""
    gw = make_gateway({"endpoints": [endpoint(fake, "a", key())]})
    chunks = list(gw.stream_chat(MODEL, MSG))
    assert chunks[-1].done and len(_upstream_answers(chunks)) == 1


def test_endpoint_killed_mid_stream_is_a_typed_interruption(make_gateway, fake):
    fake.set_controls({"chunk_delay_s": 0.1})
    gw = make_gateway({"retry": {"max_retries": 2, "initial_retry_delay": 0.01},
                       "endpoints": [endpoint(fake, "a", key()), endpoint(fake, "b", key())]})
    got = []
    with pytest.raises(ia.StreamInterruptedError) as info:
        for chunk in gw.stream_chat(MODEL, MSG, request_id="ep-kill"):
            got.append(chunk)
            if len(got) == 2:
                ray.kill(ray.get_actor(f"{gw.name}:endpoint:{chunk.endpoint_id}", namespace=gw.namespace),
                         no_restart=False)
    # a chunk already on its way when the kill lands may still arrive (a loaded machine is
    # slow to kill); what matters: a typed interruption, never a finished-looking answer
    assert info.value.request_id == "ep-kill" and len(got) >= 2 and not any(c.done for c in got)
    assert len(_upstream_answers(got)) == 1
    wait_until(lambda: settled(gw), "the router releases the dead endpoint's slot")
    assert "".join(c.text for c in gw.stream_chat(MODEL, MSG))


def test_router_killed_mid_stream_never_splices_two_answers(make_gateway, fake):
    fake.set_controls({"chunk_delay_s": 0.1})
    gw = make_gateway({"endpoints": [endpoint(fake, "a", key())]})
    got = []
    try:
        for chunk in gw.stream_chat(MODEL, "tell me a story", request_id="router-kill"):
            got.append(chunk)
            if len(got) == 2:
                ray.kill(gw.router, no_restart=False)
    except ia.StreamInterruptedError:
        return  # the designed outcome: the caller learns the answer broke
    assert len(_upstream_answers(got)) == 1, (
        f"the stream completed from {len(_upstream_answers(got))} upstream answers "
        f"({fake.stats()['requests']} upstream requests)")


def test_router_killed_mid_stream_never_truncates_silently(make_gateway, fake):
    fake.set_controls({"chunk_delay_s": 0.1})
    gw = make_gateway({"retry": {"max_retries": 0}, "endpoints": [endpoint(fake, "a", key())]})
    got = []
    try:
        for chunk in gw.stream_chat(MODEL, "tell me a story about a dragon", request_id="trunc"):
            got.append(chunk)
            if len(got) == 5:
                # the re-run's upstream answer breaks after two events, before index 5
                fake.set_controls({"faults": [{"kind": "drop_mid_stream", "after_chunks": 2, "count": 1}]})
                ray.kill(gw.router, no_restart=False)
    except ia.StreamInterruptedError:
        return  # the designed outcome
    assert got[-1].done, f"the stream ended after {len(got)} chunks with neither its final chunk nor an error"


# ---------------------------------------------------------------------------
# 3. Backpressure: a producer 10x faster than the keys allow
# ---------------------------------------------------------------------------

def _flood(gw, *, rate: float, priority: str, tag: str, count: int | None = None,
           until: threading.Event | None = None):
    """Submit at up to ``rate`` per second, ``count`` requests or until ``until`` is set;
    returns [(ref, submitted_at)]. A count, not a time window, so a busy machine still
    submits them all."""
    out = []
    interval = 1.0 / rate
    start = time.monotonic()
    i = 0
    while (not until.is_set()) if until is not None else i < count:
        out.append((gw.router.chat.remote(MODEL, MSG, priority=priority, request_id=f"{tag}{i}"), time.monotonic()))
        i += 1
        delay = start + i * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)
    return out


def _outcomes(items):
    ok, full, other = [], [], []
    for ref, _ in items:
        try:
            ok.append(ray.get(ref))
        except ia.QueueFullError as exc:
            full.append(exc)
        except Exception as exc:  # noqa: BLE001
            other.append(exc)
    return ok, full, other


def _backpressure_gateway(make_gateway, fake, queue_size: int = 20):
    # two keys of 10 requests/s each: 20/s in aggregate
    return make_gateway({"queue_size": queue_size, "retry": {"max_retries": 2, "initial_retry_delay": 0.01},
                         "endpoints": [endpoint(fake, f"k{i}", key(str(i)), rpm=600, burst_s=0.2,
                                                max_concurrent_requests=4) for i in range(2)]})


def test_backpressure_bounds_the_queue_with_queue_full_errors(make_gateway, fake):
    gw = _backpressure_gateway(make_gateway, fake)
    depths: list[int] = []
    stop = threading.Event()

    def monitor():
        while not stop.is_set():
            depths.append(gw.queue_info()["size"])
            time.sleep(0.02)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    try:
        items = _flood(gw, rate=200, count=200, priority="LOW", tag="low")  # 10x the 20/s the keys allow
    finally:
        ok, full, other = _outcomes(items)
        stop.set()
        watcher.join()
    assert not other, other[:3]
    assert full, "a producer 10x faster than the keys allow must be pushed back"
    assert all(e.status == 429 and e.retryable for e in full)
    assert len(ok) + len(full) == len(items)
    # the queue never held more than its bound: memory stays flat however fast the producer is
    assert max(depths) <= 20
    stats = gw.stats()
    assert stats["router"]["rejected_queue_full"] == len(full)
    # each key saw no more than it allows: the flood waited in the bounded queue, not upstream
    assert sum(ep["rate_limited"] for ep in stats["endpoints"].values()) == 0
    wait_until(lambda: settled(gw), "the accepted requests drain")


def test_backpressure_high_priority_passes_queued_low(make_gateway, fake):
    gw = _backpressure_gateway(make_gateway, fake, queue_size=60)
    # a fixed number, not a time window: a busy machine submits fewer per second, never fewer in all
    low = [(gw.router.chat.remote(MODEL, MSG, priority="LOW", request_id=f"low{i}"), time.monotonic())
           for i in range(40)]
    # the keys drain 20/s, so most of the 40 are still waiting in the router's queue here
    waiting_low = wait_until(lambda: (n := gw.queue_info()["by_priority"]["LOW"]) >= 20 and n,
                             "LOW requests queue up")
    high = [(gw.router.chat.remote(MODEL, MSG, priority="HIGH", request_id=f"high{i}"), time.monotonic())
            for i in range(5)]
    finished: dict[str, float] = {}
    pending = {ref: rid for rid, (ref, _) in
               [(f"low{i}", x) for i, x in enumerate(low)] + [(f"high{i}", x) for i, x in enumerate(high)]}
    refs = list(pending)
    while refs:
        done, refs = ray.wait(refs, num_returns=1, timeout=60)
        assert done, "requests stopped completing"
        finished[pending[done[0]]] = time.monotonic()
    high_ok, _, high_other = _outcomes(high)
    assert len(high_ok) == 5 and not high_other
    low_ok, low_full, low_other = _outcomes(low)
    assert not low_other and not low_full and len(low_ok) == 40
    # the LOW requests still waiting in the queue when the HIGH ones arrived finish after them;
    # the slack covers the few dispatched while the HIGH ones were being sent, and a LOW one on
    # a key with a free token finishing before a HIGH one waiting on the other key's limiter
    last_high = max(finished[f"high{i}"] for i in range(5))
    overtaken = [r.request_id for r in low_ok if finished[r.request_id] > last_high]
    assert len(overtaken) >= waiting_low - 8, (len(overtaken), waiting_low)


def test_backpressure_high_priority_is_admitted_during_a_low_flood(make_gateway, fake):
    gw = _backpressure_gateway(make_gateway, fake)
    stop_flood = threading.Event()
    low: list = []

    def producer():
        low.extend(_flood(gw, rate=200, priority="LOW", tag="low", until=stop_flood))

    thread = threading.Thread(target=producer, daemon=True)
    thread.start()
    try:
        wait_until(lambda: gw.queue_info()["size"] >= 20, "the LOW flood fills the queue")
        high = []
        for i in range(8):  # the flood goes on until these are in, however slow this machine is
            high.append((gw.router.chat.remote(MODEL, MSG, priority="HIGH", request_id=f"high{i}"),
                         time.monotonic()))
            time.sleep(0.1)
    finally:
        stop_flood.set()
        thread.join()
    high_ok, high_full, high_other = _outcomes(high)
    low_ok, low_full, low_other = _outcomes(low)
    assert not high_other and not low_other, (high_other + low_other)[:3]
    assert not high_full, f"{len(high_full)} of {len(high)} HIGH requests were refused by a queue full of LOW ones"
    assert len(high_ok) == len(high) == 8
    # room was made by displacing waiting LOW requests, each told so with a retryable 429, none lost
    displaced = [e for e in low_full if (e.details or {}).get("displaced_by") == "HIGH"]
    assert displaced and all(e.retryable and e.status == 429 and e.request_id for e in displaced)
    assert len(low_ok) + len(low_full) == len(low)
    counters = gw.stats()["router"]
    assert counters["evicted"] == len(displaced)
    wait_until(lambda: settled(gw), "the accepted requests drain")
    counters = gw.stats()["router"]
    assert counters["submitted"] == counters["succeeded"] + counters["failed"]


@pytest.mark.serial  # Ray Serve is one per cluster: make test runs these alone
def test_backpressure_over_http_is_429_with_retry_after(serve_apps, fake):
    """The same flood through the Serve app: 429 + Retry-After + OpenAI error JSON, never a 5xx."""
    import httpx

    from ipfs_accelerate_py import serve_app

    cfg = {"namespace": f"test-bp-http-{uuid.uuid4().hex[:8]}", "queue_size": 20,
           "retry": {"max_retries": 2, "initial_retry_delay": 0.01},
           "endpoints": [endpoint(fake, f"k{i}", key(str(i)), rpm=600, burst_s=0.2, max_concurrent_requests=4)
                         for i in range(2)]}
    gw = ia.Gateway.start(cfg, enable_metrics=False)
    try:
        with serve_apps.run(serve_app.build_app(cfg), "ia_backpressure_test") as base:
            body = {"model": MODEL, "messages": MSG}

            async def flood() -> list[httpx.Response]:
                async with httpx.AsyncClient(base_url=base, timeout=120) as http:
                    tasks = []
                    for i in range(120):  # 200/s for 0.6 s: 10x the 20/s the two keys allow
                        tasks.append(asyncio.ensure_future(http.post(
                            "/v1/chat/completions", json=body,
                            headers={"X-Priority": "low", "X-Request-ID": f"l{i}"})))
                        await asyncio.sleep(0.005)
                    return await asyncio.gather(*tasks)

            depth = []
            stop = threading.Event()

            def monitor():
                while not stop.is_set():
                    depth.append(gw.queue_info()["size"])
                    time.sleep(0.02)

            watcher = threading.Thread(target=monitor, daemon=True)
            watcher.start()
            try:
                responses = asyncio.run(flood())
            finally:
                stop.set()
                watcher.join()
    finally:
        gw.shutdown()
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, sorted(set(codes))
    limited = [r for r in responses if r.status_code == 429]
    assert limited, "a producer 10x faster than the keys allow must be pushed back"
    for r in limited:
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["type"] == "rate_limit_error" and err["code"] == "queue_full"
    assert all(r.json()["choices"][0]["message"]["content"] for r in responses if r.status_code == 200)
    assert max(depth) <= 20


# ---------------------------------------------------------------------------
# 6. Timeouts: a silent upstream is cut and its slot comes back
# ---------------------------------------------------------------------------

def _one_slot_gateway(make_gateway, fake, **kw):
    ep = endpoint(fake, "solo", key(), max_concurrent_requests=1, **kw)
    return make_gateway({"retry": {"max_retries": 0}, "endpoints": [ep]})


def _assert_slot_free(gw):
    wait_until(lambda: settled(gw), "the router releases the slot")
    assert gw.queue_info()["endpoints"]["solo"]["in_flight"] == 0
    assert gw.stats("solo")["in_flight"] == 0
    handle = ray.get_actor(f"{gw.name}:endpoint:solo", namespace=gw.namespace)
    slots = soak.probe({"solo": handle})["solo"]["slots"]  # the endpoint's own semaphore, from inside
    assert slots == {"free": 1, "max": 1, "in_flight": 0, "waiters": 0}, slots


def test_hung_upstream_is_cut_at_timeout_s_and_the_slot_released(make_gateway, fake):
    gw = _one_slot_gateway(make_gateway, fake, timeout_s=1.0, stream_timeout_s=30.0)
    fake.set_controls({"faults": [{"kind": "hang", "count": 1}]})
    with pytest.raises(ia.TimeoutError) as info:
        gw.chat(MODEL, MSG, request_id="hung")
    assert "timed out after 1 s" in str(info.value)  # the endpoint's timeout_s, not another one
    assert info.value.request_id == "hung" and info.value.endpoint_id == "solo"
    assert info.value.retryable and info.value.status == 504
    _assert_slot_free(gw)
    assert gw.chat(MODEL, MSG).text  # the single slot serves again
    assert fake.stats()["unanswered"] >= 1


def test_hung_upstream_retried_on_the_freed_slot(make_gateway, fake):
    ep = endpoint(fake, "solo", key(), max_concurrent_requests=1, timeout_s=1.0)
    gw = make_gateway({"retry": {"max_retries": 2, "initial_retry_delay": 0.01}, "endpoints": [ep]})
    fake.set_controls({"faults": [{"kind": "hang", "count": 1}]})
    assert gw.chat(MODEL, MSG).text  # first attempt cut at timeout_s, the retry gets the slot back
    _assert_slot_free(gw)
    assert gw.stats("solo")["failed_requests"] == 1


def test_stream_stalled_mid_way_is_cut_at_stream_timeout_s(make_gateway, fake):
    gw = _one_slot_gateway(make_gateway, fake, timeout_s=30.0, stream_timeout_s=1.0)
    fake.set_controls({"faults": [{"kind": "stall_mid_stream", "count": 1, "after_chunks": 2}]})
    got = []
    with pytest.raises(ia.GatewayError) as info:
        for chunk in gw.stream_chat(MODEL, MSG, request_id="stalled"):
            got.append(chunk)
    err = info.value
    # part of the answer reached the caller: a typed interruption that names the stall (never a
    # silently truncated answer, never a retry that would repeat text)
    assert isinstance(err, ia.StreamInterruptedError), repr(err)
    assert "stalled for 1 s" in str(err) and err.status == 504 and err.request_id == "stalled"
    assert got and not got[-1].done
    _assert_slot_free(gw)
    assert "".join(c.text for c in gw.stream_chat(MODEL, MSG))  # the slot streams again


def test_stream_stalled_before_any_chunk_is_a_timeout_error(make_gateway, fake):
    gw = _one_slot_gateway(make_gateway, fake, timeout_s=30.0, stream_timeout_s=1.0)
    fake.set_controls({"faults": [{"kind": "stall_mid_stream", "count": 1, "after_chunks": 0}]})
    with pytest.raises(ia.TimeoutError) as info:
        list(gw.stream_chat(MODEL, MSG))
    assert "stalled for 1 s" in str(info.value)
    _assert_slot_free(gw)
    assert "".join(c.text for c in gw.stream_chat(MODEL, MSG))


def test_plain_answer_stalled_mid_body_is_cut_at_timeout_s(make_gateway, fake):
    gw = _one_slot_gateway(make_gateway, fake, timeout_s=1.0, stream_timeout_s=30.0)
    fake.set_controls({"faults": [{"kind": "stall_mid_stream", "count": 1}]})  # half the body, then silence
    with pytest.raises(ia.TimeoutError):
        gw.chat(MODEL, MSG)
    _assert_slot_free(gw)
    assert gw.chat(MODEL, MSG).text


def test_caller_that_gives_up_releases_the_slot(make_gateway, fake):
    gw = _one_slot_gateway(make_gateway, fake, timeout_s=120.0)
    fake.set_controls({"faults": [{"kind": "hang", "count": 1}]})
    ref = gw.router.chat.remote(MODEL, MSG, request_id="abandoned")
    wait_until(lambda: gw.queue_info()["active_requests"] == 1, "the hung request holds the slot")
    queued = gw.router.chat.remote(MODEL, MSG, request_id="behind")
    wait_until(lambda: gw.queue_info()["size"] == 1, "the next one waits")
    ray.cancel(ref)
    # the slot comes back when the caller leaves, not when the upstream's 120 s timeout fires
    # (a liveness bound, far from both: not a timing measurement)
    assert ray.get(queued, timeout=60).request_id == "behind"
    _assert_slot_free(gw)
