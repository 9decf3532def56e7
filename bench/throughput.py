"""Throughput: 4,000 chat requests at concurrency 200 over 3 keys.

20 ms upstream latency, no rate limit.  Target >= 550 requests/s on a 2-core
machine.  Requests are issued from one asyncio driver that keeps 200 in flight,
through ``gw.achat`` (default) or, with ``--via router``, through
``gw.router.chat.remote`` (the public actor method, one Ray call per request).
"""
from __future__ import annotations

import argparse
import asyncio

from _harness import CpuBreakdown, emit, gateway, init_ray, keys, start_fake, time

MSG = [{"role": "user", "content": "ping"}]


async def drive(gw, total: int, concurrency: int, via: str = "gateway") -> tuple[int, int]:
    sem = asyncio.Semaphore(concurrency)
    ok = failed = 0

    async def one() -> None:
        nonlocal ok, failed
        async with sem:
            try:
                if via == "router":
                    await gw.router.chat.remote("gpt-4o-mini", MSG)
                else:
                    await gw.achat("gpt-4o-mini", MSG)
                ok += 1
            except Exception:  # noqa: BLE001
                failed += 1

    await asyncio.gather(*(one() for _ in range(total)))
    return ok, failed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--concurrency", type=int, default=200)
    ap.add_argument("--latency", type=float, default=0.02)
    ap.add_argument("--via", choices=("gateway", "router"), default="gateway")
    args = ap.parse_args()
    init_ray()
    api_keys = keys(3, "tput")
    fake = start_fake("openai", controls={"latency_s": args.latency})
    try:
        with gateway(fake, api_keys, max_concurrent_requests=args.concurrency) as gw:
            asyncio.run(drive(gw, 300, 50, args.via))  # warm-up
            cpu = CpuBreakdown({fake.process.pid} if fake.process else set()).start()
            started = time.perf_counter()
            ok, failed = asyncio.run(drive(gw, args.requests, args.concurrency, args.via))
            elapsed = time.perf_counter() - started
            cpu_s = cpu.stop()
            router = gw.stats()["router"]
    finally:
        fake.stop()
    rps = ok / elapsed
    attempts, by_lane, calls = (router.get(k, 0) for k in ("attempts", "lane_attempts", "endpoint_calls"))
    # attempts go over the direct lanes (actors/lane.py) or, batched, as Ray actor calls
    per_call = (attempts - by_lane) / calls if calls else None
    print(f"{attempts} upstream attempts: {by_lane} over direct lanes, {attempts - by_lane} in {calls} "
          f"endpoint actor calls; {router.get('lane_requests', 0)} requests reached the router by lane")
    print(f"{ok} ok, {failed} failed in {elapsed:.2f}s: {rps:.0f} requests/s")
    print("CPU ms per request by process: " + ", ".join(
        f"{role} {1000 * seconds / max(ok, 1):.2f}" for role, seconds in cpu_s.items()))
    emit({"bench": "throughput", "via": args.via, "requests": args.requests, "concurrency": args.concurrency,
          "succeeded": ok, "failed": failed, "elapsed_s": round(elapsed, 3), "requests_per_s": round(rps, 1),
          "lane_attempts": by_lane, "lane_requests": router.get("lane_requests", 0),
          "attempts_per_endpoint_call": round(per_call, 2) if per_call is not None else None,
          "cpu_ms_per_request": {role: round(1000 * sec / max(ok, 1), 3) for role, sec in cpu_s.items()},
          "pass": failed == 0 and rps >= 550})


if __name__ == "__main__":
    main()
