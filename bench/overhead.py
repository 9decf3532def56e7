"""Added latency of gw.chat over a direct aiohttp POST to the same fake.

Sequential calls against a zero-latency fake; the figure is p50(gw.chat) -
p50(direct POST).  Target <= 3 ms on a 2-core machine.
"""
from __future__ import annotations

import argparse
import asyncio
import json

import aiohttp

from _harness import emit, gateway, init_ray, keys, median, percentile, start_fake, time

MSG = [{"role": "user", "content": "ping"}]


async def direct(base_url: str, api_key: str, n: int) -> list[float]:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSG})
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    out = []
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            t = time.perf_counter()
            async with session.post(f"{base_url}/chat/completions", data=body, headers=headers) as resp:
                await resp.read()
            out.append(time.perf_counter() - t)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    args = ap.parse_args()
    init_ray()
    (api_key,) = keys(1, "overhead")
    fake = start_fake("openai")
    try:
        with gateway(fake, [api_key]) as gw:
            for _ in range(50):
                gw.chat("gpt-4o-mini", MSG)
            via_gateway = []
            for _ in range(args.requests):
                t = time.perf_counter()
                gw.chat("gpt-4o-mini", MSG)
                via_gateway.append(time.perf_counter() - t)
        asyncio.run(direct(fake.base_url, api_key, 50))
        plain = asyncio.run(direct(fake.base_url, api_key, args.requests))
    finally:
        fake.stop()
    added_ms = (median(via_gateway) - median(plain)) * 1000
    print(f"gw.chat p50 {median(via_gateway) * 1000:.2f} ms, direct p50 {median(plain) * 1000:.2f} ms, "
          f"added {added_ms:.2f} ms")
    emit({"bench": "overhead", "requests": args.requests,
          "gateway_p50_ms": round(median(via_gateway) * 1000, 3),
          "gateway_p99_ms": round(percentile(via_gateway, 0.99) * 1000, 3),
          "direct_p50_ms": round(median(plain) * 1000, 3), "added_p50_ms": round(added_ms, 3),
          "pass": added_ms <= 3.0})


if __name__ == "__main__":
    main()
