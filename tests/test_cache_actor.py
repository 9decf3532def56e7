"""SemanticCache actor through the router: exact and semantic hits, partitions, bypass, streams."""
from __future__ import annotations

import uuid

import pytest


pytestmark = pytest.mark.ray


@pytest.fixture
def fake(fake_openai):
    """The session's fake OpenAI server, reset (no faults, no latency, fresh stats) for this test."""
    return fake_openai


def config(fake, **cache) -> dict:
    return {"cache": {"enabled": True, **cache},
            "endpoints": [{"id": "oa", "provider": "openai", "base_url": fake.base_url,
                           "api_key": f"sk-test{uuid.uuid4().hex}",
                           "models": ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]}]}


def ask(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def test_exact_repeat_is_served_from_cache(make_gateway, fake):
    gw = make_gateway(config(fake))
    first = gw.chat("gpt-4o-mini", ask("Explain quantum computing"), request_id="a")
    second = gw.chat("gpt-4o-mini", ask("Explain quantum computing"), request_id="b")
    assert not first.cached and second.cached
    assert second.text == first.text and second.request_id == "b" and second.cost_usd == 0.0
    assert fake.stats()["requests"] == 1
    stats = gw.cache_stats()
    assert (stats["hits"], stats["exact_hits"], stats["misses"]) == (1, 1, 1)
    assert stats["cost_savings"] == pytest.approx(first.cost_usd)


def test_paraphrase_hits_and_near_miss_does_not(make_gateway, fake):
    gw = make_gateway(config(fake))
    gw.chat("gpt-4o-mini", ask("What is the capital of France?"))
    assert gw.chat("gpt-4o-mini", ask("what is the capital of france")).cached
    assert not gw.chat("gpt-4o-mini", ask("What is the capital of Germany?")).cached
    assert gw.cache_stats()["semantic_hits"] == 1


def test_partitions_never_cross(make_gateway, fake):
    gw = make_gateway(config(fake))
    gw.chat("gpt-4o-mini", ask("Tell me a fact about owls"), temperature=0)
    assert not gw.chat("gpt-4o", ask("Tell me a fact about owls"), temperature=0).cached
    assert not gw.chat("gpt-4o-mini", ask("Tell me a fact about owls"), temperature=1).cached
    system = [{"role": "system", "content": "Answer in French."}]
    assert not gw.chat("gpt-4o-mini", system + ask("Tell me a fact about owls"), temperature=0).cached
    assert gw.chat("openai/gpt-4o-mini", ask("Tell me a fact about owls"), temperature=0).cached


def test_cache_false_bypasses(make_gateway, fake):
    gw = make_gateway(config(fake))
    gw.chat("gpt-4o-mini", ask("ping"))
    assert not gw.chat("gpt-4o-mini", ask("ping"), cache=False).cached
    assert fake.stats()["requests"] == 2


def test_truncated_replies_are_not_cached(make_gateway, fake):
    gw = make_gateway(config(fake))
    long_prompt = ask("Write a long story about " + "many dragons " * 30)
    r = gw.chat("gpt-4o-mini", long_prompt, max_tokens=3)
    assert r.finish_reason == "length"
    assert not gw.chat("gpt-4o-mini", long_prompt, max_tokens=3).cached


def test_streams_are_cached_and_replayed_as_streams(make_gateway, fake):
    gw = make_gateway(config(fake))
    live = list(gw.stream_chat("gpt-4o-mini", ask("Stream me a haiku")))
    replay = list(gw.stream_chat("gpt-4o-mini", ask("Stream me a haiku"), request_id="again"))
    assert "".join(c.text for c in replay) == "".join(c.text for c in live)
    assert all(c.cached and c.request_id == "again" for c in replay) and replay[-1].done
    assert gw.chat("gpt-4o-mini", ask("Stream me a haiku")).cached  # one cache for both shapes
    assert fake.stats()["requests"] == 1


def test_gateway_embedding_model_as_embedder(make_gateway, fake):
    gw = make_gateway(config(fake, embedding_model="text-embedding-3-small"))
    gw.chat("gpt-4o-mini", ask("Name three primary colours"))
    assert gw.chat("gpt-4o-mini", ask("Name three primary colours")).cached
    by_path = fake.stats()["by_path"]
    assert any("embeddings" in p for p in by_path)
    assert gw.cache_stats()["embedding_model"] == "text-embedding-3-small"


def test_clear_and_disable(make_gateway, fake):
    gw = make_gateway(config(fake))
    gw.chat("gpt-4o-mini", ask("hello cache"))
    gw.clear_cache()
    assert not gw.chat("gpt-4o-mini", ask("hello cache")).cached
    gw.disable_semantic_cache()
    assert gw.cache_stats()["enabled"] is False
    settings = gw.enable_semantic_cache(similarity_threshold=0.95, cache_size=10, ttl=60)
    assert settings["cache_size"] == 10 and settings["similarity_threshold"] == 0.95
