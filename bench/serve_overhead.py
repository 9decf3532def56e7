"""Added latency of the HTTP gateway (Ray Serve ingress) over gw.chat.

Sequential chat calls against a zero-latency fake, alternating between the two
paths so drift on a busy machine hits both alike:

  gateway: gw.chat(...)                    driver -> router -> endpoint -> fake
  serve:   POST /v1/chat/completions       client -> Serve proxy -> replica -> router -> endpoint -> fake

The figure is p50(serve) - p50(gateway): what the HTTP layer (proxy hop,
replica, JSON in and out) adds.  Human-readable lines, then one JSON line.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket

import aiohttp

from _harness import emit, gateway, init_ray, keys, median, percentile, start_fake, time

MSG = [{"role": "user", "content": "ping"}]
APP = "bench_serve_overhead"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def measure(gw, url: str, n: int, warmup: int) -> tuple[list[float], list[float]]:
    body = json.dumps({"model": "gpt-4o-mini", "messages": MSG})
    headers = {"Content-Type": "application/json"}
    via_gateway: list[float] = []
    via_serve: list[float] = []
    async with aiohttp.ClientSession() as session:
        for i in range(warmup + n):
            t = time.perf_counter()
            gw.chat("gpt-4o-mini", MSG)  # blocking on purpose: one request at a time
            g = time.perf_counter() - t
            t = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"serve answered {resp.status}: {await resp.text()}")
            s = time.perf_counter() - t
            if i >= warmup:
                via_gateway.append(g)
                via_serve.append(s)
    return via_gateway, via_serve


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=50)
    args = ap.parse_args()
    init_ray()
    from ray import serve

    from ipfs_accelerate_py import serve_app

    (api_key,) = keys(1, "serveoverhead")
    fake = start_fake("openai")
    try:
        with gateway(fake, [api_key]) as gw:
            port = _free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            try:
                t = time.perf_counter()
                serve.run(serve_app.build_app(gw.config), name=APP, route_prefix="/")
                print(f"serve app up in {time.perf_counter() - t:.1f} s on port {port}")
                via_gateway, via_serve = asyncio.run(
                    measure(gw, f"http://127.0.0.1:{port}/v1/chat/completions", args.requests, args.warmup))
            finally:
                serve.shutdown()
    finally:
        fake.stop()
    g50, s50 = median(via_gateway) * 1000, median(via_serve) * 1000
    added = s50 - g50
    print(f"gw.chat p50 {g50:.2f} ms (p99 {percentile(via_gateway, 0.99) * 1000:.2f} ms)")
    print(f"HTTP via Serve p50 {s50:.2f} ms (p99 {percentile(via_serve, 0.99) * 1000:.2f} ms)")
    print(f"added by the HTTP layer: p50 {added:.2f} ms over {args.requests} sequential requests")
    emit({"bench": "serve_overhead", "requests": args.requests, "replicas": 1,
          "gateway_p50_ms": round(g50, 3), "gateway_p99_ms": round(percentile(via_gateway, 0.99) * 1000, 3),
          "serve_p50_ms": round(s50, 3), "serve_p99_ms": round(percentile(via_serve, 0.99) * 1000, 3),
          "added_p50_ms": round(added, 3)})


if __name__ == "__main__":
    main()
