"""Soak and chaos: the runtime keeps working and loses nothing under load and faults.

Phase 1, soak (default 100,000 chat requests): one router, 3 keys, a zero-latency
fake, an asyncio driver keeping 200 requests in flight.  After a warm-up batch
it measures, per actor (router and each endpoint actor), the RSS growth from the
end of the warm-up to the end of the run (psutil on the actor's pid), the growth
of every container inside the actor (a walk over the actor object, run inside it
through ``__ray_call__``), live request objects left behind, and the p99 latency
of the first and the last 10% of the requests.  Targets: RSS growth <= 50 MB
per actor, no container growing with the number of requests, no request state
left (queue empty, nothing in flight, no ``_Job`` alive), p99 of the last 10%
within 1.5x (or 50 ms) of the first 10%.

Phase 2, chaos (``--chaos``, default 5,000 bulk requests plus 500 streams):
``run_bulk`` over a JSONL file and concurrent ``astream_chat`` calls while the
fake injects 20% upstream 5xx and random connection drops (mid-stream for
streams), one key starts answering 401, one key answers 429 + Retry-After for
10 s, each endpoint actor is killed once and the router once.  Targets: every
custom_id exactly once in the results, each matching its input (request id and
echoed text), all succeeded (one key stays healthy throughout); each stream
attempt ends exactly once, either complete or with a typed error, and a client
that retries a broken stream always ends with the full answer.

The same functions (``run_soak``, ``run_chaos``) are used, scaled down, by
tests/test_reliability.py.  Human-readable lines while running, then ONE JSON
line with the figures.

    python bench/soak.py                       # 100k soak
    python bench/soak.py --chaos               # soak, then chaos
    python bench/soak.py --skip-soak --chaos   # chaos only
    python bench/soak.py --requests 20000      # a reduced soak
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

if __name__ == "__main__":  # run as a script from anywhere: the package is beside bench/
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402

import ipfs_accelerate_py as ia  # noqa: E402
from ipfs_accelerate_py import errors  # noqa: E402

MODEL = "gpt-4o-mini"
MB = 1024 * 1024

if __name__ != "__main__":
    # imported by a test: ship the probe functions by value (bench/ is not importable in Ray workers)
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------------------
# Looking inside the actors
# ---------------------------------------------------------------------------

def _walk_sizes(root: Any, max_depth: int = 4) -> dict[str, int]:
    """len() of every container reachable from ``root`` through attributes,
    dict values and container items (first few), as {"attr.path": len}.

    Runs inside the actor (through ``__ray_call__``, on a thread beside the
    event loop), so every container is copied before it is iterated and a
    concurrent change just makes the caller try again.
    """
    import collections
    import numbers

    out: dict[str, int] = {}
    seen: set[int] = set()
    skip_types = (str, bytes, bytearray, numbers.Number, type, type(None), memoryview)

    def visit(obj: Any, path: str, depth: int) -> None:
        if isinstance(obj, skip_types) or id(obj) in seen or depth > max_depth:
            return
        seen.add(id(obj))
        module = type(obj).__module__ or ""
        if isinstance(obj, (dict, list, tuple, set, frozenset, collections.deque)):
            out[path] = len(obj)
            items = list(obj.items()) if isinstance(obj, dict) else list(enumerate(obj))
            for k, v in items[:8]:
                visit(v, f"{path}[{k if isinstance(k, (str, int)) else type(k).__name__}]", depth + 1)
            return
        if not (module.startswith("ipfs_accelerate_py") or module.startswith("asyncio")
                or module.startswith("collections") or module.startswith("aiohttp")):
            return
        attrs: dict[str, Any] = {}
        if hasattr(obj, "__dict__"):
            attrs.update(vars(obj))
        for cls in type(obj).__mro__:
            for name in getattr(cls, "__slots__", ()) or ():
                if isinstance(name, str) and hasattr(obj, name):
                    attrs[name] = getattr(obj, name)
        for name, value in list(attrs.items()):
            if name in ("config", "provider_cls"):
                continue
            visit(value, f"{path}.{name}" if path else name, depth + 1)

    visit(root, "", 0)
    return out


def _probe_inside(self: Any) -> dict:
    """Executed inside an actor: pid, RSS, object counts and container sizes."""
    import gc as _gc
    import os as _os

    import psutil as _psutil

    for _ in range(20):
        try:
            sizes = _walk_sizes(self)
            break
        except RuntimeError:  # changed size during iteration: the loop is busy, try again
            continue
    else:
        sizes = {}
    _gc.collect()  # a finished request may still sit in a reference cycle (error -> traceback -> frame)
    counts: dict[str, int] = {}
    for obj in _gc.get_objects():
        name = type(obj).__name__
        if name in ("_Job", "Outcome", "ChatRequest", "ChatResponse", "Task", "Future", "StreamChunk"):
            counts[name] = counts.get(name, 0) + 1
    loop_tasks = None
    loop = None
    for attr in ("_ready",):  # the router keeps its start-up future: that names its event loop
        fut = getattr(self, attr, None)
        if fut is not None and hasattr(fut, "get_loop"):
            loop = fut.get_loop()
    if loop is not None:
        for _ in range(20):
            try:
                loop_tasks = len(asyncio.all_tasks(loop))
                break
            except RuntimeError:
                continue
    slots = None
    if isinstance(getattr(self, "_slots", None), asyncio.Semaphore):  # an endpoint actor's concurrency slots
        slots = {"free": self._slots._value, "max": self.max_concurrent, "in_flight": self.in_flight,
                 "waiters": len(self._slots._waiters or ())}
    return {"pid": _os.getpid(), "rss": _psutil.Process().memory_info().rss,
            "gc_objects": len(_gc.get_objects()), "live": counts, "loop_tasks": loop_tasks, "sizes": sizes,
            "slots": slots}


def actor_handles(gw: ia.Gateway) -> dict[str, Any]:
    """{"router": handle, "endpoint:<id>": handle, ...} for the gateway's actors."""
    handles = {"router": gw.router}
    for info in gw.endpoints():
        handles[f"endpoint:{info['id']}"] = ray.get_actor(f"{gw.name}:endpoint:{info['id']}",
                                                          namespace=gw.namespace)
    return handles


def probe(handles: dict[str, Any], timeout: float = 60.0) -> dict[str, dict]:
    refs = {name: h.__ray_call__.remote(_probe_inside) for name, h in handles.items()}
    return {name: ray.get(ref, timeout=timeout) for name, ref in refs.items()}


def grown_containers(before: dict[str, int], after: dict[str, int], requests: int) -> dict[str, tuple[int, int]]:
    """Containers that grew by more than 1% of the requests made between the probes
    (and by more than 100 entries): the signature of per-request state kept forever."""
    limit = max(100, requests // 100)
    return {path: (before.get(path, 0), n) for path, n in after.items() if n - before.get(path, 0) > limit}


def rss_of(pid: int) -> int:
    import psutil
    return psutil.Process(pid).memory_info().rss


# ---------------------------------------------------------------------------
# Phase 1: soak
# ---------------------------------------------------------------------------

async def _drive(gw: ia.Gateway, start: int, total: int, concurrency: int,
                 latencies: list[float], failures: list[str], mismatches: list[int],
                 on_done: Callable[[int], None] | None = None) -> None:
    """``total`` chat requests numbered from ``start``, ``concurrency`` in flight."""
    next_index = start
    end = start + total
    router = gw.router

    async def worker() -> None:
        nonlocal next_index
        while next_index < end:
            i = next_index
            next_index += 1
            tag = f"soak-{i}"
            t0 = time.perf_counter()
            try:
                r = await router.chat.remote(MODEL, [{"role": "user", "content": tag}], request_id=tag)
            except Exception as exc:  # noqa: BLE001 - counted, reported
                failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                latencies[i - start] = float("nan")
            else:
                latencies[i - start] = time.perf_counter() - t0
                if r.request_id != tag or tag not in r.text:
                    mismatches.append(i)
            if on_done is not None:
                on_done(i)

    await asyncio.gather(*(worker() for _ in range(concurrency)))


def run_soak(gw: ia.Gateway, *, requests: int, concurrency: int = 200, warmup: int | None = None,
             sample_every_s: float = 2.0, log: Callable[[str], None] = print) -> dict:
    """Drive ``requests`` chat calls through ``gw`` after a warm-up; return the figures."""
    warmup = max(concurrency, requests // 20) if warmup is None else warmup
    handles = actor_handles(gw)
    failures: list[str] = []
    mismatches: list[int] = []
    warm_lat = [0.0] * warmup
    t0 = time.perf_counter()
    asyncio.run(_drive(gw, 0, warmup, concurrency, warm_lat, failures, mismatches))
    gc.collect()
    before = probe(handles)
    pids = {name: p["pid"] for name, p in before.items()}
    rss_base = {name: rss_of(pid) for name, pid in pids.items()}
    log(f"warm-up: {warmup} requests in {time.perf_counter() - t0:.1f}s; RSS MB "
        + ", ".join(f"{n}={v / MB:.1f}" for n, v in rss_base.items()))

    latencies = [0.0] * requests
    samples: list[dict] = []
    done = [0]
    stop = threading.Event()

    def sampler() -> None:
        while not stop.wait(sample_every_s):
            try:
                samples.append({"done": done[0], **{n: rss_of(pid) for n, pid in pids.items()}})
            except Exception:  # noqa: BLE001 - an actor restarted: its pid is gone; reported below
                samples.append({"done": done[0], "error": "pid gone"})
            s = samples[-1]
            if len(samples) % max(1, int(10 / sample_every_s)) == 0:
                log(f"  {s['done']:>7}/{requests} done; RSS MB "
                    + ", ".join(f"{n}={s[n] / MB:.1f}" for n in pids if n in s))

    def on_done(i: int) -> None:
        done[0] += 1

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    started = time.perf_counter()
    try:
        asyncio.run(_drive(gw, warmup, requests, concurrency, latencies, failures, mismatches, on_done))
    finally:
        stop.set()
        thread.join()
    elapsed = time.perf_counter() - started
    gc.collect()
    queue = gw.queue_info()
    counters = gw.stats()["router"]
    after = probe(handles)
    restarted = sorted(n for n in pids if after[n]["pid"] != pids[n])
    # a restarted actor has a new process: its growth is measured from its new start (reported anyway)
    rss_end = {name: after[name]["rss"] if name in restarted else rss_of(pid) for name, pid in pids.items()}

    tenth = max(1, requests // 10)
    first = [x for x in latencies[:tenth] if x == x]
    last = [x for x in latencies[-tenth:] if x == x]
    p99_first, p99_last = _percentile(first, 0.99), _percentile(last, 0.99)
    growth = {n: round((rss_end[n] - rss_base[n]) / MB, 2) for n in pids}
    peak = {n: round((max([s[n] for s in samples if n in s] + [rss_end[n]]) - rss_base[n]) / MB, 2) for n in pids}
    grown = {n: grown_containers(before[n]["sizes"], after[n]["sizes"], requests) for n in pids}
    leftovers = {n: {k: v for k, v in after[n]["live"].items() if k in ("_Job", "Outcome", "ChatRequest",
                                                                          "ChatResponse", "StreamChunk")}
                 for n in pids}
    figures = {
        "requests": requests, "warmup": warmup, "concurrency": concurrency,
        "succeeded": requests - sum(1 for x in latencies if x != x), "failed": len(failures),
        "mismatched": len(mismatches), "failure_samples": failures[:5],
        "elapsed_s": round(elapsed, 2), "requests_per_s": round(requests / elapsed, 1),
        "p50_s": round(_percentile([x for x in latencies if x == x], 0.5), 4),
        "p99_first_10pct_s": round(p99_first, 4), "p99_last_10pct_s": round(p99_last, 4),
        "p99_ratio_last_first": round(p99_last / p99_first, 3) if p99_first else None,
        "rss_base_mb": {n: round(v / MB, 1) for n, v in rss_base.items()},
        "rss_growth_mb": growth, "rss_peak_growth_mb": peak,
        "rss_samples": len(samples),
        "gc_objects_growth": {n: after[n]["gc_objects"] - before[n]["gc_objects"] for n in pids},
        "grown_containers": {n: {p: list(v) for p, v in g.items()} for n, g in grown.items() if g},
        "live_request_objects": leftovers,
        "router_loop_tasks": {"before": before["router"]["loop_tasks"], "after": after["router"]["loop_tasks"]},
        "endpoint_slots_after": {n: after[n]["slots"] for n in pids if after[n]["slots"] is not None},
        "queue_after": {"size": queue["size"], "active_requests": queue["active_requests"]},
        "router_counters": counters, "restarted_actors": restarted,
    }
    stable = p99_last <= max(1.5 * p99_first, p99_first + 0.05)
    figures["checks"] = {
        "no_failures": not failures and not mismatches,
        "rss_growth_le_50mb": all(g <= 50 for g in growth.values()),
        "no_unbounded_containers": not figures["grown_containers"],
        "request_state_released": (queue["size"] == 0 and queue["active_requests"] == 0
                                   and all(not v.get("_Job") for v in leftovers.values())
                                   and all(sl["free"] == sl["max"] and sl["in_flight"] == 0
                                           for sl in figures["endpoint_slots_after"].values())),
        "p99_stable": stable,
        "no_actor_restarts": not restarted,
    }
    figures["pass"] = all(figures["checks"].values())
    return figures


# ---------------------------------------------------------------------------
# Phase 2: chaos
# ---------------------------------------------------------------------------

class FaultPlan:
    """The fake's fault list, rebuilt from the scenario's switches on every change
    (a controls patch replaces the whole list; rules are tried in order)."""

    def __init__(self, fake: Any, keys: dict[str, str], *, five_xx: float, drop: float, retry_after_s: float) -> None:
        self.fake = fake
        self.keys = keys
        self.five_xx = five_xx
        self.drop = drop
        self.retry_after_s = retry_after_s
        self.revoked = False
        self.throttled = False
        self.lock = threading.Lock()

    def push(self) -> None:
        with self.lock:
            rules: list[dict] = []
            if self.revoked:
                rules.append({"kind": "status", "status": 401, "key": self.keys["revoked"]})
            if self.throttled:
                rules.append({"kind": "status", "status": 429, "key": self.keys["throttled"],
                              "retry_after": self.retry_after_s})
            if self.five_xx:
                # half 500, half 503 (overloaded): together five_xx of all requests
                rules.append({"kind": "status", "status": 500, "probability": self.five_xx / 2})
                rules.append({"kind": "status", "status": 503, "probability": (self.five_xx / 2) / (1 - self.five_xx / 2)})
            if self.drop:
                # streams: the connection drops after two events; plain answers: after half the body
                rules.append({"kind": "drop_mid_stream", "probability": self.drop, "after_chunks": 2})
            self.fake.set_controls({"faults": rules})

    def clear(self) -> None:
        with self.lock:
            self.fake.set_controls({"faults": []})


def write_chaos_input(path: Path, n: int, run_tag: str) -> dict[str, dict]:
    """JSONL for run_bulk; returns {custom_id: {"rid", "token"}}."""
    expected = {}
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            cid = f"c{i:06d}"
            token = f"tok-{run_tag}-{i}"
            expected[cid] = {"rid": f"rid-{run_tag}-{i}", "token": token}
            fh.write(json.dumps({"custom_id": cid, "model": MODEL, "request_id": expected[cid]["rid"],
                                 "messages": [{"role": "user", "content": f"chaos request {token}"}]}) + "\n")
    return expected


def _count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as fh:
            return fh.read().count(b"\n")
    except FileNotFoundError:
        return 0


async def _streams(gw: ia.Gateway, n: int, concurrency: int, run_tag: str, attempts_max: int,
                   record: list[dict], progress: list[int]) -> None:
    """``n`` logical streams; each retried (as a client would) after a typed failure."""
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        token = f"stk-{run_tag}-{i}"
        entry = {"i": i, "token": token, "attempts": [], "ok": False}
        record.append(entry)
        async with sem:
            for attempt in range(attempts_max):
                rid = f"srid-{run_tag}-{i}-{attempt}"
                chunks: list[Any] = []
                outcome: dict[str, Any] = {"rid": rid, "t0": time.monotonic()}
                try:
                    async for chunk in gw.astream_chat(MODEL, [{"role": "user", "content": f"stream {token}"}],
                                                       request_id=rid):
                        chunks.append(chunk)
                except errors.GatewayError as exc:
                    outcome.update(result="error", type=type(exc).__name__, chunks=len(chunks),
                                   retryable=exc.retryable)
                except Exception as exc:  # noqa: BLE001 - an untyped failure is a finding
                    outcome.update(result="untyped", type=f"{type(exc).__module__}.{type(exc).__name__}",
                                   message=str(exc)[:300], chunks=len(chunks))
                else:
                    text = "".join(c.text for c in chunks)
                    done = bool(chunks) and chunks[-1].done
                    endpoints = sorted({c.endpoint_id for c in chunks if c.endpoint_id})
                    # the upstream's own response id on each chunk: two of them = one answer spliced
                    # from two upstream requests
                    upstream = {c.raw.get("id") for c in chunks if isinstance(c.raw, dict) and c.raw.get("id")}
                    outcome.update(result="ok" if done else "truncated", chunks=len(chunks),
                                   text_ok=token in text, ids_ok=all(c.request_id == rid for c in chunks),
                                   endpoints=endpoints, upstream_answers=len(upstream))
                outcome["t1"] = time.monotonic()
                entry["attempts"].append(outcome)
                if outcome["result"] == "ok":
                    entry["ok"] = True
                    break
                if outcome["result"] == "untyped":
                    break  # (a truncated answer is retried: this client can tell, by the missing done chunk)
                await asyncio.sleep(0.05 * (attempt + 1))
        progress[0] += 1

    await asyncio.gather(*(one(i) for i in range(n)))


def run_chaos(gw: ia.Gateway, fake: Any, keys: dict[str, str], workdir: str | os.PathLike[str], *,
              requests: int = 5000, streams: int = 500, concurrency: int = 128, stream_concurrency: int = 16,
              five_xx: float = 0.2, drop: float = 0.1, throttle_s: float = 10.0, retry_after_s: float = 2.0,
              kill: bool = True, stream_attempts: int = 6, log: Callable[[str], None] = print) -> dict:
    """The chaos scenario; ``keys`` maps the roles "healthy", "revoked", "throttled" to API keys
    of ``gw``'s endpoints of the same ids.  Returns the figures, with ``problems`` listing every
    violation found (empty when the runtime held).  A stream answer completed from two upstream
    answers ("spliced") or ended without its final chunk and without an error ("truncated") is a
    problem; both happened when Ray replayed a stream after a router restart (fixed by
    max_task_retries=0 on the router's stream methods, pinned by tests/test_reliability.py)."""
    from ipfs_accelerate_py.bulk import run_bulk

    workdir = Path(workdir)
    run_tag = uuid.uuid4().hex[:8]
    inp, out = workdir / f"chaos-{run_tag}.jsonl", workdir / f"chaos-{run_tag}.results.jsonl"
    expected = write_chaos_input(inp, requests, run_tag)
    total_work = requests + streams
    plan = FaultPlan(fake, keys, five_xx=five_xx, drop=drop, retry_after_s=retry_after_s)
    plan.push()
    stream_record: list[dict] = []
    stream_progress = [0]
    events: list[dict] = []
    bulk_box: dict[str, Any] = {}

    def progress() -> float:
        return (_count_lines(out) + stream_progress[0]) / total_work

    def kill_actor(name: str) -> None:
        handle = ray.get_actor(name, namespace=gw.namespace)
        ray.kill(handle, no_restart=False)

    schedule: list[tuple[float, str, Callable[[], None]]] = [
        (0.03, "faults: 5xx + drops on", lambda: None),
        (0.10, "kill endpoint healthy", lambda: kill_actor(f"{gw.name}:endpoint:healthy") if kill else None),
        (0.15, "key revoked: 401 from now on", lambda: (setattr(plan, "revoked", True), plan.push())),
        (0.25, "kill endpoint revoked", lambda: kill_actor(f"{gw.name}:endpoint:revoked") if kill else None),
        (0.30, f"key throttled: 429 + Retry-After for {throttle_s:g}s",
         lambda: (setattr(plan, "throttled", True), plan.push(), threading.Timer(
             throttle_s, lambda: (setattr(plan, "throttled", False), plan.push())).start())),
        (0.40, "kill endpoint throttled", lambda: kill_actor(f"{gw.name}:endpoint:throttled") if kill else None),
        (0.55, "kill router", lambda: kill_actor(f"{gw.name}:router") if kill else None),
    ]

    def bulk() -> None:
        try:
            bulk_box["summary"] = run_bulk(inp, out, gateway=gw, concurrency=concurrency, progress=False,
                                           priority="NORMAL")
        except BaseException as exc:  # noqa: BLE001 - reported as a problem
            bulk_box["error"] = f"{type(exc).__name__}: {exc}"

    async def main() -> None:
        bulk_thread = threading.Thread(target=bulk, daemon=True)
        streams_task = asyncio.ensure_future(_streams(gw, streams, stream_concurrency, run_tag,
                                                      stream_attempts, stream_record, stream_progress))
        bulk_thread.start()
        loop = asyncio.get_running_loop()
        pending = list(schedule)
        while pending and (bulk_thread.is_alive() or not streams_task.done()):
            p = progress()
            while pending and p >= pending[0][0]:
                at, what, action = pending.pop(0)
                t_event = time.monotonic()
                await loop.run_in_executor(None, action)
                events.append({"at": round(p, 3), "event": what, "during_run": True, "t": t_event})
                log(f"  [{p:6.1%}] {what}")
            await asyncio.sleep(0.02)
        for at, what, _ in pending:
            events.append({"at": None, "event": what, "during_run": False})
        await streams_task
        while bulk_thread.is_alive():
            await asyncio.sleep(0.05)

    started = time.perf_counter()
    try:
        asyncio.run(main())
    finally:
        plan.revoked = plan.throttled = False
        plan.clear()
    elapsed = time.perf_counter() - started

    problems: list[str] = []
    if "error" in bulk_box:
        problems.append(f"run_bulk raised {bulk_box['error']}")
    # -- bulk: every custom_id exactly once, matching its input, succeeded
    seen: dict[str, int] = {}
    error_types: dict[str, int] = {}
    by_endpoint: dict[str, int] = {}
    error_samples: list[str] = []
    with open(out, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
            except ValueError:
                problems.append(f"results line {n} is not JSON")
                continue
            cid = row.get("custom_id")
            seen[cid] = seen.get(cid, 0) + 1
            if cid not in expected:
                problems.append(f"unexpected custom_id {cid!r}")
                continue
            if row.get("error") is not None:
                err = row["error"]
                error_types[err.get("type", "?")] = error_types.get(err.get("type", "?"), 0) + 1
                if len(error_samples) < 3:
                    error_samples.append(f"{cid}: {err.get('message', '')[:300]}")
                if err.get("code") in ("internal_error", "ray_error"):
                    problems.append(f"{cid}: untyped failure {err.get('message', '')[:200]}")
                continue
            body = row["response"]["body"]
            by_endpoint[body.get("endpoint_id")] = by_endpoint.get(body.get("endpoint_id"), 0) + 1
            if row["response"].get("request_id") != expected[cid]["rid"]:
                problems.append(f"{cid}: request_id {row['response'].get('request_id')!r} != "
                                f"{expected[cid]['rid']!r}")
            if expected[cid]["token"] not in body["choices"][0]["message"]["content"]:
                problems.append(f"{cid}: answer does not echo its input")
    missing = [c for c in expected if c not in seen]
    dupes = [c for c, k in seen.items() if k > 1]
    if missing:
        problems.append(f"{len(missing)} custom_ids have no result (e.g. {missing[:3]})")
    if dupes:
        problems.append(f"{len(dupes)} custom_ids have more than one result (e.g. {dupes[:3]})")
    failed_bulk = sum(error_types.values())
    if failed_bulk:
        problems.append(f"{failed_bulk} bulk requests failed although a healthy key was up: {error_types} "
                        f"(e.g. {error_samples})")
    # -- streams: each attempt ends once; typed errors only; retried streams all end complete
    attempt_results: dict[str, int] = {}
    stream_error_types: dict[str, int] = {}
    spliced = truncated = 0
    router_kills = [e["t"] for e in events if e["event"] == "kill router" and "t" in e]
    for entry in stream_record:
        for a in entry["attempts"]:
            across_router_kill = any(a["t0"] <= t <= a["t1"] for t in router_kills)
            attempt_results[a["result"]] = attempt_results.get(a["result"], 0) + 1
            if a["result"] == "error":
                stream_error_types[a["type"]] = stream_error_types.get(a["type"], 0) + 1
            elif a["result"] == "untyped":
                problems.append(f"stream {entry['i']}: untyped {a['type']}: {a.get('message')}")
            elif a["result"] == "truncated":
                truncated += 1
                problems.append(f"stream {entry['i']}: ended after {a['chunks']} chunks without the final "
                                f"chunk and without an error (silently truncated"
                                f"{', across the router restart' if across_router_kill else ''})")
            elif a["result"] == "ok":
                if not a["text_ok"]:
                    problems.append(f"stream {entry['i']}: text does not echo its input")
                if not a["ids_ok"]:
                    problems.append(f"stream {entry['i']}: chunks carry a foreign request_id")
                if len(a["endpoints"]) > 1 or a["upstream_answers"] > 1:
                    spliced += 1
                    problems.append(f"stream {entry['i']}: one answer spliced from {a['upstream_answers']} "
                                    f"upstream answers (endpoints {a['endpoints']}"
                                    f"{', across the router restart' if across_router_kill else ''})")
        if not entry["ok"] and all(a["result"] in ("error", "truncated") for a in entry["attempts"]):
            problems.append(f"stream {entry['i']}: still failing after {len(entry['attempts'])} attempts: "
                            f"{[a.get('type', a['result']) for a in entry['attempts']]}")
    if len(stream_record) != streams:
        problems.append(f"{streams - len(stream_record)} streams never ran")
    late = [e["event"] for e in events if not e["during_run"]]
    if late:
        problems.append(f"chaos events that never fired during the run (run too short): {late}")
    # -- the runtime afterwards: nothing queued or in flight, and it still answers
    queue = gw.queue_info()
    if queue["size"] or queue["active_requests"]:
        problems.append(f"after the run the router still holds work: {queue}")
    for _ in range(100):  # each endpoint actor's own count (a stream's slot is freed as it closes)
        busy = {i: ep.get("in_flight") for i, ep in gw.stats()["endpoints"].items() if ep.get("in_flight")}
        if not busy:
            break
        time.sleep(0.1)
    if busy:
        problems.append(f"after the run endpoint actors still count requests in flight: {busy}")
    try:
        gw.chat(MODEL, [{"role": "user", "content": "after chaos"}])
    except Exception as exc:  # noqa: BLE001
        problems.append(f"a request after the run failed: {type(exc).__name__}: {exc}")
    fake_stats = fake.stats()
    summary = bulk_box.get("summary")
    return {
        "requests": requests, "streams": streams, "elapsed_s": round(elapsed, 2),
        "bulk_succeeded": sum(by_endpoint.values()), "bulk_failed": failed_bulk, "bulk_error_types": error_types,
        "bulk_by_endpoint": by_endpoint, "results_lines": sum(seen.values()), "missing": len(missing),
        "duplicated": len(dupes),
        "streams_ok": sum(1 for e in stream_record if e["ok"]), "stream_attempts": attempt_results,
        "stream_error_types": stream_error_types, "spliced_streams": spliced, "truncated_streams": truncated,
        "faults_injected": fake_stats.get("faults_injected", {}), "upstream_requests": fake_stats.get("requests"),
        "upstream_by_status": fake_stats.get("by_status", {}),
        "events": [{k: v for k, v in e.items() if k != "t"} for e in events], "bulk_rate_per_s": round(summary.rate_per_s, 1) if summary else None,
        "problems": problems[:50], "problem_count": len(problems),
        "pass": not problems,
    }


def chaos_config(fake: Any, keys: dict[str, str], *, namespace: str, max_concurrent: int = 64,
                 reset_timeout: float = 2.0) -> dict:
    """The gateway for the chaos run: three keys on one fake, retry budget and
    circuit threshold sized for 20% random 5xx (a key with 1-in-5 failures is
    degraded, not dead: 10 consecutive failures, p = 3e-6, open its circuit)."""
    return {
        "namespace": namespace, "queue_size": 20000,
        "retry": {"max_retries": 10, "initial_retry_delay": 0.02, "max_retry_delay": 0.5},
        "circuit": {"failure_threshold": 10, "reset_timeout": reset_timeout, "success_threshold": 1},
        "endpoints": [{"id": role, "provider": "openai", "base_url": fake.base_url, "api_key": key,
                       "models": [MODEL], "max_concurrent_requests": max_concurrent, "timeout_s": 10.0,
                       "stream_timeout_s": 10.0}
                      for role, key in keys.items()],
    }


# ---------------------------------------------------------------------------
# main
# ---------------------------------------------------------------------------

def main() -> None:
    from ipfs_accelerate_py.testing.fakes.runner import start_fake

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--no-metrics", action="store_true", help="start the actors without Prometheus metrics")
    ap.add_argument("--skip-soak", action="store_true")
    ap.add_argument("--chaos", action="store_true", help="also run the chaos phase")
    ap.add_argument("--chaos-requests", type=int, default=5000)
    ap.add_argument("--chaos-streams", type=int, default=500)
    ap.add_argument("--throttle-s", type=float, default=10.0)
    args = ap.parse_args()

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    figures: dict[str, Any] = {"bench": "soak"}
    if not args.skip_soak:
        fake = start_fake("openai", controls={"latency_s": 0.0})
        api_keys = [f"sk-soak{i}-{uuid.uuid4().hex}" for i in range(args.keys)]
        cfg = {"namespace": f"soak-{uuid.uuid4().hex[:8]}", "queue_size": 20000,
               "endpoints": [{"id": f"key-{i}", "provider": "openai", "base_url": fake.base_url, "api_key": k,
                              "models": [MODEL], "max_concurrent_requests": args.concurrency}
                             for i, k in enumerate(api_keys)]}
        gw = ia.Gateway.start(cfg, enable_metrics=not args.no_metrics)
        try:
            print(f"soak: {args.requests} chat requests, {args.keys} keys, concurrency {args.concurrency}")
            soak = run_soak(gw, requests=args.requests, concurrency=args.concurrency)
        finally:
            gw.shutdown()
            fake.stop()
        print(f"{soak['succeeded']}/{soak['requests']} ok in {soak['elapsed_s']}s ({soak['requests_per_s']}/s); "
              f"p99 first 10% {soak['p99_first_10pct_s'] * 1000:.1f} ms, last 10% "
              f"{soak['p99_last_10pct_s'] * 1000:.1f} ms")
        for name, g in soak["rss_growth_mb"].items():
            print(f"  {name:<20} rss_growth_mb={g:+.2f} (peak {soak['rss_peak_growth_mb'][name]:+.2f}, "
                  f"base {soak['rss_base_mb'][name]:.1f} MB, gc objects {soak['gc_objects_growth'][name]:+d})")
        print(f"  grown containers: {soak['grown_containers'] or 'none'}; live request objects: "
              f"{soak['live_request_objects']}; queue after: {soak['queue_after']}")
        print(f"  checks: {soak['checks']}")
        figures["soak"] = soak
    if args.chaos:
        fake = start_fake("openai", controls={"latency_s": 0.01, "chunk_delay_s": 0.002})
        keys = {role: f"sk-chaos{role}-{uuid.uuid4().hex}" for role in ("healthy", "revoked", "throttled")}
        gw = ia.Gateway.start(chaos_config(fake, keys, namespace=f"chaos-{uuid.uuid4().hex[:8]}"),
                              enable_metrics=not args.no_metrics)
        try:
            print(f"chaos: {args.chaos_requests} bulk requests + {args.chaos_streams} streams")
            with tempfile.TemporaryDirectory() as tmp:
                chaos = run_chaos(gw, fake, keys, tmp, requests=args.chaos_requests, streams=args.chaos_streams,
                                  throttle_s=args.throttle_s, retry_after_s=2.0)
        finally:
            gw.shutdown()
            fake.stop()
        print(f"{chaos['bulk_succeeded']}/{chaos['requests']} bulk ok, {chaos['streams_ok']}/{chaos['streams']} "
              f"streams ok in {chaos['elapsed_s']}s; stream attempts {chaos['stream_attempts']}; "
              f"faults injected {chaos['faults_injected']}")
        for p in chaos["problems"][:20]:
            print("  PROBLEM:", p)
        figures["chaos"] = chaos
    figures["pass"] = all(v.get("pass", True) for k, v in figures.items() if isinstance(v, dict))
    print(json.dumps(figures, sort_keys=True, default=str))


if __name__ == "__main__":
    main()
