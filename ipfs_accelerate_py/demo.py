"""A bulk run of a few thousand requests over rate-limited fake keys: no real key needed.

``make demo`` / ``ipfs-accelerate demo`` starts an embedded local Ray, one
fake OpenAI server whose three keys each allow 50 requests/s (1 s burst,
20 ms latency), a gateway with one rate-limited actor per key, writes a
requests file (chat and embedding lines, both input shapes) and runs it with
``run_bulk``: progress bar, then the per-key table, and the fake's own count
of upstream 429s (the gateway schedules within each key's limit, so ~0).

Real provider keys in the environment are never used unless ``--real`` is
given; then the gateway is configured from the environment
(``load_config(None)``) and a small run (default 20 requests) goes to the
first chat-capable endpoint's first model.

``--out DIR`` keeps the files; rerunning with the same ``--out`` resumes an
interrupted demo (the results file is the state).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

DEFAULT_REQUESTS = 3000
DEFAULT_KEYS = 3
DEFAULT_RPS = 50.0
DEFAULT_LATENCY_S = 0.02
CHAT_MODEL = "gpt-4o-mini"
EMBED_MODEL = "text-embedding-3-small"

TOPICS = ("rate limits", "token buckets", "circuit breakers", "priority queues", "actor systems",
          "write-ahead logs", "exponential backoff", "consistent hashing", "vector embeddings", "Ray Data")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--requests", type=int, default=DEFAULT_REQUESTS,
                   help=f"requests in the bulk file (default {DEFAULT_REQUESTS})")
    p.add_argument("--keys", type=int, default=DEFAULT_KEYS, help=f"fake API keys (default {DEFAULT_KEYS})")
    p.add_argument("--rps", type=float, default=DEFAULT_RPS,
                   help=f"requests/s each fake key allows, 1 s burst (default {DEFAULT_RPS:g})")
    p.add_argument("--latency", type=float, default=DEFAULT_LATENCY_S,
                   help=f"fake upstream latency in seconds (default {DEFAULT_LATENCY_S:g})")
    p.add_argument("--concurrency", type=int, default=256, help="requests in flight (default 256)")
    p.add_argument("--out", help="directory for requests.jsonl and results.jsonl (default: a new temp dir); "
                                 "rerunning with the same --out resumes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--real", action="store_true",
                   help="use the provider keys found in the environment instead of fakes")
    p.add_argument("--real-requests", type=int, default=20, help="requests with --real (default 20)")
    p.add_argument("--model", help="with --real: the model to use (default: the first endpoint's first model)")


def _say(text: str) -> None:
    print(text, flush=True)


def _init_ray() -> bool:
    """Start the demo's own local Ray; False if the caller (a notebook, a test) already
    has one, which the demo then uses and leaves running."""
    import ray  # noqa: PLC0415
    if ray.is_initialized():
        return False
    if os.environ.pop("RAY_ADDRESS", None):
        _say("  (RAY_ADDRESS is set; the demo ignores it and runs on its own local Ray)")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    return True


def _write_requests(path: Path, n: int) -> None:
    """Deterministic content (so a rerun with the same --out resumes): 9 of 10
    lines are chats (alternating plain and batch-file shape), 1 in 10 embeddings."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for i in range(n):
            cid = f"req-{i:06d}"
            topic = TOPICS[i % len(TOPICS)]
            if i % 10 == 9:
                line: dict[str, Any] = {"custom_id": cid, "method": "POST", "url": "/v1/embeddings",
                                        "body": {"model": EMBED_MODEL, "input": f"a note about {topic} #{i}"}}
            elif i % 2:
                line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": CHAT_MODEL, "max_tokens": 32, "messages": [
                            {"role": "system", "content": "Answer in one sentence."},
                            {"role": "user", "content": f"What is the point of {topic}? (#{i})"}]}}
            else:
                line = {"custom_id": cid, "model": CHAT_MODEL, "max_tokens": 32,
                        "messages": [{"role": "user", "content": f"Explain {topic} to a new engineer (#{i})."}]}
            fh.write(json.dumps(line) + "\n")
    os.replace(tmp, path)


def _out_dir(arg: str | None) -> Path:
    if arg:
        path = Path(arg)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return Path(tempfile.mkdtemp(prefix="ipfs-accelerate-demo-"))


def _bulk(requests_path: Path, results_path: Path, gw: Any, args: argparse.Namespace) -> tuple[Any, int]:
    from .bulk import BulkInterrupted, run_bulk  # noqa: PLC0415
    try:
        summary = run_bulk(requests_path, results_path, gw, priority="LOW", concurrency=args.concurrency,
                           progress=not args.no_progress)
    except BulkInterrupted as exc:
        _say(exc.summary.report())
        _say(f"\ninterrupted; rerun with --out {results_path.parent} to resume")
        return exc.summary, 130
    _say("")
    _say(summary.report())
    return summary, 0


def run(args: argparse.Namespace) -> int:
    if args.real:
        return run_real(args)
    for name in ("requests", "keys", "concurrency"):
        if getattr(args, name) < 1:
            print(f"demo: --{name} must be at least 1", file=sys.stderr)
            return 2
    if args.rps <= 0 or args.latency < 0:
        print("demo: --rps must be positive and --latency not negative", file=sys.stderr)
        return 2
    from .config import discover_endpoints  # noqa: PLC0415
    found = sorted({e["provider"] for e in discover_endpoints(dict(os.environ))})
    started = time.monotonic()
    out = _out_dir(args.out)
    requests_path, results_path = out / "requests.jsonl", out / "results.jsonl"
    ideal = max(0.0, (args.requests - args.keys * args.rps) / (args.keys * args.rps))
    _say(f"ipfs-accelerate demo: {args.requests} requests over {args.keys} fake keys "
         f"({args.rps:g} req/s each, 1 s burst, {args.latency * 1000:g} ms latency); "
         f"ideal time at the keys' limits ~{ideal:.0f}s")
    if found:
        _say(f"  (provider settings found in the environment for {', '.join(found)}: NOT used; "
             f"pass --real to use them)")
    _say("[1/4] starting a local Ray (2 CPUs) ...")
    started_ray = _init_ray()

    from .gateway import Gateway  # noqa: PLC0415
    from .testing.fakes.runner import start_fake  # noqa: PLC0415

    keys = [f"sk-demo{i}-{uuid.uuid4().hex}" for i in range(args.keys)]
    fake = start_fake("openai", controls={"latency_s": args.latency,
                                          "limits": {k: {"rps": args.rps, "burst_s": 1.0} for k in keys}})
    gw = None
    try:
        _say(f"[2/4] fake OpenAI server at {fake.base_url}; starting the gateway (one actor per key) ...")
        config = {
            "namespace": f"ipfs-accelerate-demo-{uuid.uuid4().hex[:8]}", "queue_size": 20000,
            "endpoints": [{"id": f"key-{i}", "provider": "openai", "base_url": fake.base_url, "api_key": k,
                           "models": [CHAT_MODEL, EMBED_MODEL], "rpm": args.rps * 60, "burst_s": 1.0,
                           "max_concurrent_requests": 64} for i, k in enumerate(keys)],
        }
        gw = Gateway.start(config, enable_metrics=False)
        _write_requests(requests_path, args.requests)
        _say(f"[3/4] wrote {args.requests} requests to {requests_path}")
        _say(f"[4/4] bulk run -> {results_path} (priority LOW, {args.concurrency} in flight)")
        summary, code = _bulk(requests_path, results_path, gw, args)
        fstats = fake.stats()
        upstream = fstats.get("requests", 0)
        r429 = sum(int(v.get("429", 0)) for v in (fstats.get("by_key") or {}).values())
        share = (100.0 * r429 / upstream) if upstream else 0.0
        _say(f"upstream 429s counted by the fake server: {r429} of {upstream} upstream requests ({share:.2f}%)")
        _say(f"requests: {requests_path}\nresults:  {results_path}   (one JSON line per custom_id; "
             f"try: head -n 1 {results_path})")
        _say(f"demo finished in {time.monotonic() - started:.1f}s")
        if code:
            return code
        return 0 if summary.failed == 0 else 1
    finally:
        if gw is not None:
            gw.shutdown()
        fake.stop()
        if started_ray:
            _shutdown_ray()


def _shutdown_ray() -> None:
    try:
        import ray  # noqa: PLC0415
        ray.shutdown()
    except Exception:  # noqa: BLE001
        pass


def run_real(args: argparse.Namespace) -> int:
    """A small run against the provider keys in the environment."""
    from .config import load_config  # noqa: PLC0415
    from .providers.base import get_provider_class  # noqa: PLC0415

    if args.real_requests < 1:
        print("demo: --real-requests must be at least 1", file=sys.stderr)
        return 2
    cfg = load_config(None)
    chat_eps = [ep for ep in cfg.endpoints if get_provider_class(ep.provider).supports("chat")]
    if not chat_eps:
        print("demo --real: no chat provider found in the environment (set e.g. OPENAI_API_KEY, "
              "ANTHROPIC_API_KEY, GROQ_API_KEY, GOOGLE_API_KEY or OLLAMA_API_URL)", file=sys.stderr)
        return 1
    ep = chat_eps[0]
    model = args.model or (ep.models[0] if ep.models else None) or ep.default_model \
        or get_provider_class(ep.provider).default_model
    if not model:
        print(f"demo --real: endpoint {ep.id} has no model; pass --model", file=sys.stderr)
        return 2
    out = _out_dir(args.out)
    requests_path, results_path = out / "requests.jsonl", out / "results.jsonl"
    _say(f"ipfs-accelerate demo --real: {args.real_requests} requests to {model} "
         f"(endpoints from the environment: {', '.join(f'{e.id} [{e.fingerprint}]' for e in cfg.endpoints)})")
    _say("[1/3] starting a local Ray (2 CPUs) ...")
    started_ray = _init_ray()
    from .gateway import Gateway  # noqa: PLC0415
    gw = None
    try:
        gw = Gateway.start(cfg, enable_metrics=False)
        with open(requests_path, "w", encoding="utf-8") as fh:
            for i in range(args.real_requests):
                fh.write(json.dumps({"custom_id": f"real-{i:04d}", "model": model, "max_tokens": 16,
                                     "messages": [{"role": "user", "content": f"Say the number {i} in words."}]})
                         + "\n")
        _say(f"[2/3] wrote {args.real_requests} requests to {requests_path}")
        _say(f"[3/3] bulk run -> {results_path}")
        summary, code = _bulk(requests_path, results_path, gw, args)
        if code:
            return code
        return 0 if summary.failed == 0 else 1
    finally:
        if gw is not None:
            gw.shutdown()
        if started_ray:
            _shutdown_ray()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ipfs_accelerate_py.demo", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
