"""Embedding batching: 1,000 concurrent single-text embeds, 50 ms per upstream call.

Runs the same load twice in one process: batching off, then on
(max_batch_size 50).  The endpoint allows 4 upstream calls at a time, as an
embedding server or a rate-limited key does; that is where coalescing pays.
Targets: upstream calls <= 30 with batching, throughput >= 5x unbatched.
"""
from __future__ import annotations

import argparse
import asyncio

from _harness import emit, gateway, init_ray, keys, start_fake, time

MODEL = "text-embedding-3-small"


async def fire(gw, n: int) -> float:
    started = time.perf_counter()
    results = await asyncio.gather(*(gw.aembed(MODEL, f"document number {i} of the corpus")
                                     for i in range(n)))
    assert len(results) == n and all(len(r.embeddings) == 1 for r in results)
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--latency", type=float, default=0.05)
    ap.add_argument("--upstream-concurrency", type=int, default=4)
    args = ap.parse_args()
    init_ray()
    fake = start_fake("openai", controls={"latency_s": args.latency})
    try:
        with gateway(fake, keys(1, "batch"), model=MODEL, max_concurrent_requests=args.upstream_concurrency) as gw:
            asyncio.run(fire(gw, 20))  # warm-up
            fake.reset()
            unbatched_s = asyncio.run(fire(gw, args.requests))
            unbatched_calls = fake.stats()["requests"]
            gw.enable_embedding_batching(max_batch_size=args.batch, batch_timeout=0.1)
            asyncio.run(fire(gw, 20))
            fake.reset()
            batched_s = asyncio.run(fire(gw, args.requests))
            batched_calls = fake.stats()["requests"]
            stats = gw.batching_stats()
    finally:
        fake.stop()
    speedup = unbatched_s / batched_s
    print(f"unbatched: {args.requests} embeds in {unbatched_s:.2f}s ({unbatched_calls} upstream calls)")
    print(f"batched:   {args.requests} embeds in {batched_s:.2f}s ({batched_calls} upstream calls), "
          f"x{speedup:.1f} throughput, avg batch {stats['avg_batch_size']:.1f}")
    emit({"bench": "batching", "requests": args.requests, "max_batch_size": args.batch,
          "unbatched_s": round(unbatched_s, 3), "batched_s": round(batched_s, 3),
          "unbatched_upstream_calls": unbatched_calls, "batched_upstream_calls": batched_calls,
          "throughput_ratio": round(speedup, 2), "avg_batch_size": round(stats["avg_batch_size"], 2),
          "pass": batched_calls <= 30 and speedup >= 5})


if __name__ == "__main__":
    main()
