"""EmbeddingBatcher through the router: coalescing, order, failure fan-out."""
from __future__ import annotations

import uuid

import pytest
import ray

import ipfs_accelerate_py as ia

pytestmark = pytest.mark.ray


@pytest.fixture
def fake(fake_openai):
    """The session's fake OpenAI server, reset (no faults, no latency, fresh stats) for this test."""
    return fake_openai


def config(fake, **batching) -> dict:
    return {"retry": {"max_retries": 0},
            "batching": {"enabled": True, "max_batch_size": 10, "batch_timeout": 0.3, **batching},
            "endpoints": [{"id": "oa", "provider": "openai", "base_url": fake.base_url,
                           "api_key": f"sk-test{uuid.uuid4().hex}", "models": ["text-embedding-3-small"]}]}


def test_concurrent_single_embeds_are_coalesced_in_order(make_gateway, fake):
    gw = make_gateway(config(fake))
    texts = [f"sentence number {i} about topic {i % 7}" for i in range(25)]
    refs = [gw.router.embed.remote("text-embedding-3-small", t, request_id=f"e{i}") for i, t in enumerate(texts)]
    results = ray.get(refs)
    assert [r.request_id for r in results] == [f"e{i}" for i in range(25)]
    gw.disable_embedding_batching()
    for text, batched in zip(texts[:5], results[:5]):
        direct = gw.embed("text-embedding-3-small", text)
        assert batched.embeddings == direct.embeddings  # each caller got its own vector back
    stats = fake.stats()
    assert stats["requests"] == 3 + 5  # 25 texts in batches of <= 10, then the 5 direct checks
    assert all(r.usage.prompt_tokens > 0 for r in results)


def test_batching_stats(make_gateway, fake):
    gw = make_gateway(config(fake))
    ray.get([gw.router.embed.remote("text-embedding-3-small", f"t{i}") for i in range(20)])
    s = gw.batching_stats()
    assert s["enabled"] and s["batches"] == 2 and s["batched_requests"] == 20
    assert s["avg_batch_size"] == 10 and s["upstream_calls_saved"] == 18


def test_failed_batch_fails_every_member_with_the_typed_error(make_gateway, fake):
    gw = make_gateway(config(fake))
    fake.set_controls({"faults": [{"kind": "status", "status": 400, "count": 1, "path": "embeddings"}]})
    refs = [gw.router.embed.remote("text-embedding-3-small", f"x{i}", request_id=f"f{i}") for i in range(10)]
    for i, ref in enumerate(refs):
        with pytest.raises(ia.InvalidRequestError) as info:
            ray.get(ref)
        assert info.value.request_id == f"f{i}"
    ok = ray.get([gw.router.embed.remote("text-embedding-3-small", f"y{i}") for i in range(10)])
    assert len(ok) == 10


def test_unknown_model_fails_before_batching(make_gateway, fake):
    gw = make_gateway(config(fake))
    with pytest.raises(ia.UnknownModelError):
        gw.embed("text-embedding-9", "x")


def test_batch_size_is_capped_by_the_provider_limit(make_gateway, fake):
    gw = make_gateway(config(fake, max_batch_size=5000))
    assert ray.get(gw.router.embed_batch_limit.remote("text-embedding-3-small")) == 2048
    assert gw.enable_embedding_batching(max_batch_size=4, batch_timeout=0.2)["max_batch_size"] == 4
    ray.get([gw.router.embed.remote("text-embedding-3-small", f"z{i}") for i in range(8)])
    assert gw.batching_stats()["largest_batch"] == 4


def test_gateway_sends_single_texts_straight_to_the_batcher(make_gateway, fake):
    import asyncio
    gw = make_gateway(config(fake))

    async def many():
        return await asyncio.gather(*(gw.aembed("text-embedding-3-small", f"g{i}") for i in range(10)))

    results = asyncio.run(many())
    assert len(results) == 10 and gw.batching_stats()["batched_requests"] == 10
    assert fake.stats()["requests"] == 1
    gw.disable_embedding_batching()
    assert len(gw.embed("text-embedding-3-small", "after").embeddings) == 1  # falls back to the router
