"""TGI, TEI and LLVM end to end: Gateway -> RouterActor -> EndpointActor -> provider -> HTTP -> fake.

The fakes run in their own processes for the whole module and are reset
before each test; each test gets its own gateway namespace.  Retries, failover
and error typing are checked from both sides: what the caller gets, and what
the fake's stats say went over the wire.
"""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest
import ray

import ipfs_accelerate_py as ia
from ipfs_accelerate_py.providers.hf_tei import similarity
from ipfs_accelerate_py.testing.fakes.base import count_tokens
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, start_fake
from ipfs_accelerate_py.types import ModelInfo, OperationResponse

pytestmark = pytest.mark.ray

TGI_MODEL = "mistralai/Mistral-7B-Instruct-v0.2"
MSG = [{"role": "user", "content": "hello there"}]
FAST_RETRY = {"max_retries": 3, "initial_retry_delay": 0.01, "max_retry_delay": 0.05}


def key(tag: str) -> str:
    return f"{tag}-{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
def fakes() -> dict[str, FakeHandle]:
    handles = {"tgi": start_fake("hf_tgi"), "tei": start_fake("hf_tei"),
               "rerank": start_fake("hf_tei", controls={"options": {"model_type": "reranker",
                                                                    "model_id": "BAAI/bge-reranker-base"}}),
               "llvm": start_fake("llvm")}
    yield handles
    for handle in handles.values():
        handle.stop()


@pytest.fixture
def tgi(fakes) -> FakeHandle:
    fakes["tgi"].reset(valid_keys=[])
    return fakes["tgi"]


@pytest.fixture
def tei(fakes) -> FakeHandle:
    fakes["tei"].reset(valid_keys=[])
    return fakes["tei"]


@pytest.fixture
def reranker(fakes) -> FakeHandle:
    fakes["rerank"].reset(valid_keys=[])
    return fakes["rerank"]


@pytest.fixture
def llvm(fakes) -> FakeHandle:
    fakes["llvm"].reset(valid_keys=[])
    return fakes["llvm"]


def tgi_endpoint(fake: FakeHandle, eid: str = "tgi-1", **kw) -> dict:
    return {"id": eid, "provider": "hf_tgi", "base_url": fake.base_url, "models": [TGI_MODEL], **kw}


def tei_endpoints(tei: FakeHandle, reranker: FakeHandle) -> list[dict]:
    return [{"id": "tei-embed", "provider": "hf_tei", "base_url": tei.base_url, "models": ["bge-small"]},
            {"id": "tei-rerank", "provider": "hf_tei", "base_url": reranker.base_url, "models": ["bge-reranker"]}]


def llvm_endpoint(fake: FakeHandle, **kw) -> dict:
    return {"id": "llvm-1", "provider": "llvm", "base_url": fake.base_url, "default_model": "llvm-model-1",
            "models": ["llvm-model-1", "llvm-text-model", "llvm-loading-model", "ghost-model"], **kw}


# ---------------------------------------------------------------------------
# TGI
# ---------------------------------------------------------------------------

def test_tgi_chat_generate_and_streams(make_gateway, tgi):
    gw = make_gateway({"endpoints": [tgi_endpoint(tgi)]})
    answer = gw.chat(TGI_MODEL, MSG, request_id="tgi-chat-1")
    assert answer.text == "Echo: hello there" and answer.provider == "hf_tgi"
    assert answer.endpoint_id == "tgi-1" and answer.request_id == "tgi-chat-1"
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens > 0
    generated = gw.complete(TGI_MODEL, "Explain quantum computing", max_new_tokens=100)
    assert generated.text == "Echo: Explain quantum computing" and generated.finish_reason == "stop"
    assert generated.usage.prompt_tokens == count_tokens("Explain quantum computing")
    chunks = list(gw.stream_chat(TGI_MODEL, MSG, request_id="s-1"))
    assert "".join(c.text for c in chunks) == answer.text
    assert chunks[-1].done and chunks[-1].usage.completion_tokens == answer.usage.completion_tokens
    assert all(c.request_id == "s-1" and c.endpoint_id == "tgi-1" for c in chunks)
    pieces = list(gw.stream_complete(TGI_MODEL, "Explain quantum computing", max_tokens=100))
    assert "".join(c.text for c in pieces) == generated.text
    assert pieces[-1].done and pieces[-1].usage.prompt_tokens == generated.usage.prompt_tokens
    remote = ray.get(gw.router.chat.remote(model=f"hf_tgi/{TGI_MODEL}", messages=MSG, priority="HIGH"))
    assert remote.text == answer.text and remote.request_id.startswith("req_")
    assert tgi.stats()["by_path"] == {"/v1/chat/completions": 3, "/generate": 1, "/generate_stream": 1}


def test_tgi_async_api(make_gateway, tgi):
    gw = make_gateway({"endpoints": [tgi_endpoint(tgi)]})

    async def scenario():
        chat = await gw.achat(TGI_MODEL, MSG)
        generated = await gw.acomplete(TGI_MODEL, "async prompt")
        streamed = [c async for c in gw.astream_chat(TGI_MODEL, MSG)]
        return chat, generated, streamed

    chat, generated, streamed = asyncio.run(scenario())
    assert chat.text == "Echo: hello there" and generated.text == "Echo: async prompt"
    assert "".join(c.text for c in streamed) == chat.text


def test_tgi_hosted_router_url_with_model_placeholder(make_gateway, tgi):
    token = key("hf")
    gw = make_gateway({"endpoints": [{"id": "hosted", "provider": "hf_tgi", "api_key": token,
                                      "base_url": tgi.root_url + "/hf-inference/models/{model}",
                                      "models": [TGI_MODEL]}]})
    assert gw.complete(TGI_MODEL, "via the router").text == "Echo: via the router"
    assert gw.chat(TGI_MODEL, MSG).text == "Echo: hello there"
    assert tgi.key_stats(token)["ok"] == 2


def test_tgi_overloaded_429_is_retried(make_gateway, tgi):
    tgi.controls(faults=[{"kind": "status", "status": 429, "count": 1,
                          "body": {"error": "Model is overloaded", "error_type": "overloaded"}}])
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": [tgi_endpoint(tgi)]})
    assert gw.complete(TGI_MODEL, "busy server").text == "Echo: busy server"
    assert tgi.stats()["by_status"] == {"200": 1, "429": 1}


def test_tgi_generation_failure_is_retried_and_validation_is_not(make_gateway, tgi):
    tgi.controls(faults=[{"kind": "status", "status": 424, "count": 2}])
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": [tgi_endpoint(tgi)]})
    assert gw.chat(TGI_MODEL, MSG).text == "Echo: hello there"
    assert tgi.stats()["by_status"] == {"200": 1, "424": 2}
    tgi.reset(options={"max_input_tokens": 4, "max_total_tokens": 50})
    with pytest.raises(ia.ContextLengthError) as info:
        gw.complete(TGI_MODEL, "a prompt that is clearly longer than four tokens")
    assert info.value.status == 422 and info.value.provider == "hf_tgi"
    assert tgi.stats()["requests"] == 1  # a request error is never retried


def test_tgi_bad_key_is_an_authentication_error(make_gateway, tgi):
    good, bad = key("tgi"), key("tgi")
    tgi.controls(valid_keys=[good])
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": [tgi_endpoint(tgi, api_key=bad)]})
    with pytest.raises(ia.AuthenticationError) as info:
        gw.chat(TGI_MODEL, MSG)
    assert info.value.status == 401 and bad not in str(info.value) and bad not in repr(info.value)
    assert isinstance(info.value, ValueError)
    gw_ok = make_gateway({"endpoints": [tgi_endpoint(tgi, eid="tgi-ok", api_key=good)]})
    assert gw_ok.chat(TGI_MODEL, MSG).text == "Echo: hello there"


def test_tgi_stream_broken_midway_raises(make_gateway, tgi):
    tgi.controls(faults=[{"kind": "error_mid_stream", "after_chunks": 2, "count": 1, "path": "/generate_stream"}])
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": [tgi_endpoint(tgi)]})
    got = []
    with pytest.raises(ia.StreamInterruptedError):
        for chunk in gw.stream_complete(TGI_MODEL, "one two three four five six"):
            got.append(chunk)
    assert got and not got[-1].done


# ---------------------------------------------------------------------------
# TEI
# ---------------------------------------------------------------------------

def test_tei_embed_splits_into_server_batches(make_gateway, tei, reranker):
    gw = make_gateway({"endpoints": tei_endpoints(tei, reranker)})
    texts = [f"document {i} talks about subject {i % 7}" for i in range(70)]
    result = gw.embed("bge-small", texts)
    assert len(result.embeddings) == 70 and result.provider == "hf_tei" and result.endpoint_id == "tei-embed"
    assert tei.stats()["by_path"] == {"/info": 1, "/embed": 3}  # 32 + 32 + 6
    alone = gw.embed("bge-small", [texts[40], texts[3]])
    assert np.allclose(result.embeddings[40], alone.embeddings[0])
    assert np.allclose(result.embeddings[3], alone.embeddings[1])
    assert result.usage.prompt_tokens > 0
    assert similarity(result.embeddings[40], alone.embeddings[0]) == pytest.approx(1.0)
    assert similarity(result.embeddings[40], result.embeddings[41]) < 0.99


def test_tei_batch_size_rejection_splits_smaller(make_gateway, tei, reranker):
    tei.controls(options={"max_client_batch_size": 8})
    endpoints = tei_endpoints(tei, reranker)
    endpoints[0]["options"] = {"max_client_batch_size": 32}  # configured higher than the server allows
    gw = make_gateway({"endpoints": endpoints})
    result = gw.embed("bge-small", [f"t{i}" for i in range(20)])
    assert len(result.embeddings) == 20
    assert tei.stats()["by_status"] == {"200": 3, "422": 1}


def test_tei_rerank_and_errors(make_gateway, tei, reranker):
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": tei_endpoints(tei, reranker)})
    texts = ["the cat sat", "stock prices", "cats are cute", "weather report"]
    ranked = gw.call("rerank", "bge-reranker", query="cat", texts=texts, return_text=True)
    assert isinstance(ranked, OperationResponse) and ranked.endpoint_id == "tei-rerank"
    assert sorted(r["index"] for r in ranked.data) == [0, 1, 2, 3]
    assert [r["score"] for r in ranked.data] == sorted((r["score"] for r in ranked.data), reverse=True)
    assert all(r["text"] == texts[r["index"]] for r in ranked.data)
    # 429 Overloaded is retried
    tei.controls(faults=[{"kind": "status", "status": 429, "count": 1, "path": "/embed",
                          "body": {"error": "Model is overloaded", "error_type": "Overloaded"}}])
    assert len(gw.embed("bge-small", ["x", "y"]).embeddings) == 2
    assert tei.stats()["by_status"]["429"] == 1
    # a body over the payload limit that cannot be split is a request error, not retried
    tei.reset(options={"payload_limit": 200, "max_client_batch_size": 4})
    with pytest.raises(ia.InvalidRequestError) as info:
        gw.embed("bge-small", ["w" * 500])
    assert info.value.status == 413
    assert tei.stats()["by_path"].get("/embed") == 1
    # an embedding model asked to rerank: a deployment mismatch, reported as such
    bad = make_gateway({"endpoints": [{"id": "wrong", "provider": "hf_tei", "base_url": tei.base_url,
                                       "models": ["bge-small"]}]})
    with pytest.raises(ia.UnsupportedOperationError):
        bad.call("rerank", "bge-small", query="q", texts=["a"])


# ---------------------------------------------------------------------------
# LLVM
# ---------------------------------------------------------------------------

def test_llvm_chat_infer_models_and_health(make_gateway, llvm):
    gw = make_gateway({"endpoints": [llvm_endpoint(llvm)]})
    answer = gw.chat("llvm-model-1", [{"role": "system", "content": "You are helpful."},
                                      {"role": "user", "content": "What is machine learning?"}])
    assert answer.text == "Echo: What is machine learning?" and answer.provider == "llvm"
    assert answer.usage.prompt_tokens > 0
    inferred = gw.call("infer", "llvm-model-1", inputs="Translate to French: Hello",
                       parameters={"max_tokens": 100})
    assert inferred.data == "Echo: Translate to French: Hello" and inferred.usage.completion_tokens > 0
    structured = gw.call("infer", "llvm-text-model", inputs={"text": "capital?"}, max_tokens=50)
    assert structured.data["text"] == "Echo: capital?"
    default = gw.call("infer", provider="llvm", inputs="no model named")
    assert default.model == "llvm-model-1"
    models = gw.call("models", provider="llvm")
    assert all(isinstance(m, ModelInfo) for m in models)
    assert {"llvm-model-1", "llvm-text-model"} <= {m.id for m in models}
    info = gw.call("model_info", "llvm-loading-model")
    assert info.raw["status"] == "loading"
    assert gw.call("health", provider="llvm").data is True
    remote = ray.get(gw.router.call.remote("infer", "llvm-model-1", inputs="from a task"))
    assert remote.data == "Echo: from a task"
    with pytest.raises(ia.UnsupportedOperationError):
        list(gw.stream_chat("llvm-model-1", MSG))


def test_llvm_error_mapping(make_gateway, llvm):
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": [llvm_endpoint(llvm)]})
    with pytest.raises(ia.UnknownModelError) as missing:
        gw.call("infer", "ghost-model", inputs="x")
    assert missing.value.status == 404
    assert llvm.stats()["requests"] == 1  # not retried
    llvm.controls(faults=[{"kind": "status", "status": 500, "count": 2, "path": "/inference"}])
    assert gw.chat("llvm-model-1", MSG).text == "Echo: hello there"
    assert llvm.stats()["by_status"] == {"404": 1, "500": 2, "200": 1}
    llvm.reset(faults=[{"kind": "status", "status": 503, "count": 1, "retry_after": 0.05}])
    assert gw.call("infer", "llvm-model-1", inputs="after 503").data == "Echo: after 503"
    assert llvm.stats()["by_status"] == {"503": 1, "200": 1}
    with pytest.raises(ia.InvalidRequestError):
        gw.call("infer", "llvm-model-1", inputs="x", parameters={"temperature": 9})


def test_llvm_key_and_rate_limit(make_gateway, llvm):
    good = key("llvm")
    llvm.controls(valid_keys=[good], limits={good: {"rps": 2, "burst_s": 0.5}})  # one request per 0.5 s
    bad = make_gateway({"endpoints": [llvm_endpoint(llvm, api_key=key("llvm"))]})
    with pytest.raises(ia.AuthenticationError):
        bad.call("health", provider="llvm")
    gw = make_gateway({"retry": FAST_RETRY, "endpoints": [llvm_endpoint(llvm, api_key=good)]})
    results = [gw.call("infer", "llvm-model-1", inputs=f"n{i}") for i in range(3)]
    assert [r.data for r in results] == ["Echo: n0", "Echo: n1", "Echo: n2"]
    stats = llvm.key_stats(good)
    assert stats["ok"] == 3 and stats["429"] >= 1  # each 429 (with Retry-After) was waited out and retried
