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
    per_call = router.get("attempts", 0) / max(1, router.get("endpoint_calls", 0))
    print(f"{router.get('attempts')} upstream attempts in {router.get('endpoint_calls')} endpoint actor calls "
          f"({per_call:.1f} per call)")
    print(f"{ok} ok, {failed} failed in {elapsed:.2f}s: {rps:.0f} requests/s")
    print("CPU ms per request by process: " + ", ".join(
        f"{role} {1000 * seconds / max(ok, 1):.2f}" for role, seconds in cpu_s.items()))
    emit({"bench": "throughput", "via": args.via, "requests": args.requests, "concurrency": args.concurrency,
          "succeeded": ok, "failed": failed, "elapsed_s": round(elapsed, 3), "requests_per_s": round(rps, 1),
          "attempts_per_endpoint_call": round(per_call, 2),
          "cpu_ms_per_request": {role: round(1000 * sec / max(ok, 1), 3) for role, sec in cpu_s.items()},
          "pass": failed == 0 and rps >= 550})


if __name__ == "__main__":
    main()
