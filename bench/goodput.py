"""Goodput under per-key rate limits (issue: 600 requests, 3 keys x 10 req/s).

Each fake key allows 10 requests/s (token bucket, 1 s burst) with 50 ms
latency.  600 chat requests are submitted at once.  The ideal finish time is
(600 - 30) / 30 = 19 s (the first 30 ride the bursts).  Targets: 600/600
succeed, elapsed <= 1.10 x ideal, upstream 429s <= 1% (6).
"""
from __future__ import annotations

import argparse

from _harness import emit, gateway, init_ray, keys, ray, start_fake, time

MSG = [{"role": "user", "content": "Summarise the plot of a short story in one line."}]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=600)
    ap.add_argument("--keys", type=int, default=3)
    ap.add_argument("--rps", type=float, default=10.0)
    ap.add_argument("--latency", type=float, default=0.05)
    args = ap.parse_args()

    init_ray()
    api_keys = keys(args.keys, "goodput")
    fake = start_fake("openai", controls={
        "latency_s": args.latency,
        "limits": {k: {"rps": args.rps, "burst_s": 1.0} for k in api_keys}})
    try:
        with gateway(fake, api_keys, rpm=args.rps * 60, burst_s=1.0, max_concurrent_requests=64) as gw:
            gw.chat("gpt-4o-mini", MSG)  # warm the actors and connections
            time.sleep(1.5)              # let the buckets refill after warm-up
            fake.reset()
            started = time.perf_counter()
            refs = [gw.router.chat.remote("gpt-4o-mini", MSG, priority="NORMAL") for _ in range(args.requests)]
            ok = failed = 0
            for ref in refs:
                try:
                    ray.get(ref)
                    ok += 1
                except Exception as exc:  # noqa: BLE001
                    failed += 1
                    print("failed:", type(exc).__name__, str(exc)[:200])
            elapsed = time.perf_counter() - started
            stats = fake.stats()
    finally:
        fake.stop()
    burst = args.keys * args.rps * 1.0
    ideal = (args.requests - burst) / (args.keys * args.rps)
    upstream_429 = sum(v.get("429", 0) for v in stats["by_key"].values())
    print(f"{ok}/{args.requests} ok in {elapsed:.2f}s (ideal {ideal:.2f}s, x{elapsed / ideal:.3f}); "
          f"upstream 429s: {upstream_429}")
    emit({"bench": "goodput", "requests": args.requests, "succeeded": ok, "failed": failed,
          "elapsed_s": round(elapsed, 3), "ideal_s": round(ideal, 3), "ratio_to_ideal": round(elapsed / ideal, 4),
          "upstream_429": upstream_429, "upstream_requests": stats["requests"],
          "pass": ok == args.requests and elapsed <= 1.10 * ideal and upstream_429 <= args.requests * 0.01})


if __name__ == "__main__":
    main()
