"""Gemini and Ollama end to end: Gateway -> RouterActor -> EndpointActor -> provider -> HTTP -> fake.

One fake process per protocol for the module (reset before each test, so
faults, keys and stats never leak between tests) and one gateway namespace per
test on the session Ray.  What a test asserts about the wire it reads back
from the fakes: their stats, their errors, and the Ollama fake's request journal.
"""
from __future__ import annotations

import asyncio
import io
import json
import urllib.request
import uuid
from typing import Any, Iterator

import pytest
import ray
from PIL import Image

import ipfs_accelerate_py as ia
from ipfs_accelerate_py.testing.fakes.runner import FakeHandle, fingerprint, start_fake

pytestmark = pytest.mark.ray

MSG = [{"role": "user", "content": "hello there"}]
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
GEMINI_MODELS = ["gemini-2.0-flash", "text-embedding-004", "gemini-9-ultra"]
OLLAMA_MODELS = ["llama3.2", "llava", "nomic-embed-text", "llama9"]


@pytest.fixture(scope="module")
def gemini_fake() -> Iterator[FakeHandle]:
    handle = start_fake("gemini")
    yield handle
    handle.stop()


@pytest.fixture(scope="module")
def ollama_fake() -> Iterator[FakeHandle]:
    handle = start_fake("ollama")
    yield handle
    handle.stop()


@pytest.fixture
def gemini(gemini_fake: FakeHandle) -> FakeHandle:
    gemini_fake.reset(valid_keys=[])
    return gemini_fake


@pytest.fixture
def ollama(ollama_fake: FakeHandle) -> FakeHandle:
    ollama_fake.reset(valid_keys=[])
    return ollama_fake


def key(tag: str = "") -> str:
    return f"AIzaSyTEST{tag}{uuid.uuid4().hex}"


def gm_endpoint(fake: FakeHandle, eid: str, api_key: str, **kw: Any) -> dict:
    return {"id": eid, "provider": "gemini", "base_url": fake.base_url, "api_key": api_key,
            "models": GEMINI_MODELS, **kw}


def ol_endpoint(fake: FakeHandle, eid: str, api_key: str | None = None, **kw: Any) -> dict:
    # the seed's OLLAMA_API_URL convention (ending in /api) on purpose
    out = {"id": eid, "provider": "ollama", "base_url": fake.root_url + "/api", "models": OLLAMA_MODELS, **kw}
    if api_key:
        out["api_key"] = api_key
    return out


def fast_retry(**kw: Any) -> dict:
    return {"max_retries": 3, "initial_retry_delay": 0.01, "max_retry_delay": 0.05, **kw}


def by_key(fake: FakeHandle, api_key: str | None) -> dict:
    return fake.stats()["by_key"].get(fingerprint(api_key), {"requests": 0, "ok": 0, "429": 0, "errors": 0})


def ollama_sent(fake: FakeHandle, path: str) -> list[dict]:
    with urllib.request.urlopen(fake.root_url + "/_fake/ollama/requests", timeout=10) as resp:
        return [e["body"] for e in json.loads(resp.read()) if e["path"] == path]


def png_size(image: Image.Image) -> int:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return len(buffer.getvalue())


# ---------------------------------------------------------------------------
# Gemini
# ---------------------------------------------------------------------------

def test_gemini_chat_stream_embed_count_and_router_handle(make_gateway, gemini):
    gw = make_gateway({"endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    r = gw.chat("gemini-2.0-flash", MSG, request_id="g1", temperature=0.2)
    assert isinstance(r, ia.ChatResponse) and r.text == "Echo: hello there" and r.finish_reason == "stop"
    assert r.provider == "gemini" and r.endpoint_id == "gm-1" and r.request_id == "g1"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    assert r.cost_usd is not None and r.cost_usd > 0
    chunks = list(gw.stream_chat("gemini-2.0-flash", MSG))
    assert "".join(c.text for c in chunks) == r.text and len(chunks) > 2
    assert chunks[-1].done and chunks[-1].finish_reason == "stop" and chunks[-1].usage.completion_tokens > 0
    one = gw.embed("text-embedding-004", "hello")
    many = gw.embed("text-embedding-004", ["hello", "world", "hello"], dimensions=64)
    assert len(one.embeddings) == 1 and len(one.embeddings[0]) == 768
    assert [len(v) for v in many.embeddings] == [64] * 3 and many.embeddings[0] == many.embeddings[2]
    paths = gemini.stats()["by_path"]
    assert paths["/v1beta/models/text-embedding-004:embedContent"] == 1
    assert paths["/v1beta/models/text-embedding-004:batchEmbedContents"] == 1
    counted = gw.call("count_tokens", "gemini-2.0-flash", messages=MSG)
    assert counted.data == {"total_tokens": r.usage.prompt_tokens}
    via_router = ray.get(gw.router.chat.remote(model="gemini-2.0-flash", messages=MSG, priority="LOW"))
    assert via_router.text == r.text and via_router.endpoint_id == "gm-1"
    live = {m.id: m for m in gw.list_models(live=True)}
    assert live["gemini-2.5-pro"].context_window == 1_048_576 and live["gemini-2.5-pro"].provider == "gemini"


def test_gemini_generation_config_and_passthrough(make_gateway, gemini):
    gw = make_gateway({"endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    short = gw.chat("gemini-2.0-flash", [{"role": "user", "content": "one two three four five"}], max_tokens=2)
    assert short.finish_reason == "length" and short.usage.completion_tokens == 2
    two = gw.chat("gemini-2.0-flash", MSG, n=2, stop=["there"],
                  safetySettings=[{"category": "HARM_CATEGORY_HARASSMENT", "threshold": "BLOCK_NONE"}])
    assert two.choices == ["Echo: hello ", "Echo: hello "]
    structured = gw.chat("gemini-2.0-flash", [{"role": "user", "content": "Weather in Lima"}],
                         response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {
                             "type": "object", "additionalProperties": False,
                             "properties": {"city": {"type": "string"}}}}})
    assert json.loads(structured.text) == {"city": "Lima"}
    with pytest.raises(ia.InvalidRequestError) as bad:  # the fake checks the enum, so the field arrived
        gw.chat("gemini-2.0-flash", MSG, safety_settings=[{"category": "HARM_CATEGORY_NOPE",
                                                           "threshold": "BLOCK_NONE"}])
    assert "HARM_CATEGORY_NOPE" in str(bad.value)
    blocked = gw.chat("gemini-2.0-flash", [{"role": "user", "content": "BLOCK_PROMPT now"}])
    assert blocked.text == "" and blocked.finish_reason == "blocked"


def test_gemini_tool_round_trip(make_gateway, gemini):
    gw = make_gateway({"endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    messages: list[dict] = [{"role": "user", "content": "Use get_weather for Paris"}]
    first = gw.chat("gemini-2.0-flash", messages, tools=[WEATHER])
    assert first.finish_reason == "tool_calls"
    call = first.tool_calls[0]
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    messages += [{"role": "assistant", "content": None, "tool_calls": [call.to_openai()]},
                 {"role": "tool", "tool_call_id": call.id, "content": '{"temp": 21}'}]
    second = gw.chat("gemini-2.0-flash", messages, tools=[WEATHER])
    assert second.text == 'Echo: {"temp": 21}' and not second.tool_calls


def test_gemini_images_from_pil_and_bytes(make_gateway, gemini):
    gw = make_gateway({"endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    picture = Image.new("RGB", (16, 9), (12, 34, 56))
    r = gw.chat("gemini-2.0-flash", [{"role": "user", "content": [
        {"type": "text", "text": "what is this"}, {"type": "image", "image": picture}]}])
    assert r.text == f"Echo: what is this [image/png: {png_size(picture)} bytes]"
    jpeg = io.BytesIO()
    picture.save(jpeg, format="JPEG")
    r = gw.chat("gemini-2.0-flash", "and this?", image_data=jpeg.getvalue())
    assert r.text == f"Echo: and this? [image/jpeg: {len(jpeg.getvalue())} bytes]"
    assert r.usage.prompt_tokens > 258  # the image was billed as one


def test_gemini_async_api(make_gateway, gemini):
    gw = make_gateway({"endpoints": [gm_endpoint(gemini, "gm-1", key())]})

    async def run() -> tuple:
        r = await gw.achat("gemini-2.0-flash", MSG)
        chunks = [c async for c in gw.astream_chat("gemini-2.0-flash", MSG)]
        e = await gw.aembed("text-embedding-004", ["a", "b"])
        return r, chunks, e

    r, chunks, e = asyncio.run(run())
    assert "".join(c.text for c in chunks) == r.text == "Echo: hello there" and chunks[-1].done
    assert len(e.embeddings) == 2


def test_gemini_bad_key_is_excluded_and_the_good_one_serves(make_gateway, gemini):
    good, bad = key("good"), key("bad")
    gemini.controls(valid_keys=[good])  # the fake answers 400 API_KEY_INVALID, as Google does
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "bad", bad),
                                                            gm_endpoint(gemini, "good", good)]})
    results = [gw.chat("gemini-2.0-flash", MSG) for _ in range(6)]
    assert {r.endpoint_id for r in results} == {"good"}
    assert by_key(gemini, bad)["requests"] == 1  # tried once, then its circuit keeps it out
    assert gw.circuit_state("bad") == "OPEN" and gw.circuit_state("good") == "CLOSED"
    with pytest.raises(ia.GatewayError) as info:
        gw.chat("gemini-2.0-flash", MSG, endpoint_id="bad")
    assert "Authentication error" in str(info.value)  # the open circuit still says why
    for text in (str(info.value), repr(info.value), json.dumps(info.value.to_dict())):
        assert bad not in text


def test_gemini_only_key_rejected_keeps_the_seed_error_text(make_gateway, gemini):
    bad = key("only")
    gemini.controls(valid_keys=[key("other")])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "bad", bad)]})
    with pytest.raises(ValueError) as info:
        gw.chat("gemini-2.0-flash", MSG)
    assert isinstance(info.value, ia.AuthenticationError) and info.value.status == 400
    assert "Authentication error" in str(info.value) and "API key not valid" in str(info.value)
    assert bad not in str(info.value) and bad not in repr(info.value)
    assert by_key(gemini, bad)["requests"] == 1


def test_gemini_permission_denied_key_fails_over(make_gateway, gemini):
    denied, ok = key("denied"), key("ok")
    gemini.controls(faults=[{"kind": "status", "status": 403, "key": denied}])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "denied", denied),
                                                            gm_endpoint(gemini, "ok", ok)]})
    assert {gw.chat("gemini-2.0-flash", MSG).endpoint_id for _ in range(4)} == {"ok"}
    assert by_key(gemini, denied)["requests"] == 1 and gw.circuit_state("denied") == "OPEN"
    assert gw.stats("denied")["errors_by_type"] == {"PermissionDeniedError": 1}


def test_gemini_unknown_model_upstream_is_not_retried(make_gateway, gemini):
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    with pytest.raises(ia.UnknownModelError) as info:
        gw.chat("gemini-9-ultra", MSG)
    assert info.value.status == 404 and "gemini-9-ultra" in str(info.value)
    assert gemini.stats()["requests"] == 1


def test_gemini_429_retry_delay_fails_over_and_cools_the_key(make_gateway, gemini):
    limited, ok = key("a"), key("b")
    gemini.controls(faults=[{"kind": "status", "status": 429, "key": limited, "retry_after": 30}])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "a", limited),
                                                            gm_endpoint(gemini, "b", ok)]})
    results = [gw.chat("gemini-2.0-flash", MSG) for _ in range(6)]
    assert {r.endpoint_id for r in results} == {"b"}
    assert by_key(gemini, limited)["429"] == 1 and by_key(gemini, limited)["requests"] == 1
    stats = gw.stats("a")
    # Gemini sends no Retry-After header: the 30 s came from RetryInfo.retryDelay in the body
    assert stats["rate_limited"] == 1 and stats["cooldown_s"] > 20


def test_gemini_429_with_short_retry_delay_is_waited_out(make_gateway, gemini):
    k = key()
    gemini.controls(faults=[{"kind": "status", "status": 429, "count": 1, "retry_after": 0.3}])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "gm-1", k)]})
    assert gw.chat("gemini-2.0-flash", MSG).text == "Echo: hello there"
    assert by_key(gemini, k)["429"] == 1 and by_key(gemini, k)["ok"] == 1
    assert gw.stats("gm-1")["rate_limited"] == 1


def test_gemini_5xx_is_retried(make_gateway, gemini):
    gemini.controls(faults=[{"kind": "status", "status": 503, "count": 1},
                            {"kind": "status", "status": 500, "count": 1}])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    assert gw.chat("gemini-2.0-flash", MSG).text == "Echo: hello there"
    stats = gw.stats("gm-1")
    assert (stats["failed_requests"], stats["successful_requests"]) == (2, 1)
    assert set(stats["errors_by_type"]) == {"ProviderOverloadedError", "ProviderError"}


def test_gemini_stream_cut_before_any_chunk_is_retried(make_gateway, gemini):
    gemini.controls(faults=[{"kind": "drop_mid_stream", "after_chunks": 0, "count": 1}])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    assert "".join(c.text for c in gw.stream_chat("gemini-2.0-flash", MSG)) == "Echo: hello there"
    assert gemini.stats()["requests"] == 2


def test_gemini_error_mid_stream_after_chunks_is_stream_interrupted(make_gateway, gemini):
    gemini.controls(faults=[{"kind": "error_mid_stream", "after_chunks": 3, "count": 1}])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [gm_endpoint(gemini, "gm-1", key())]})
    got = []
    with pytest.raises(ia.StreamInterruptedError) as info:
        for chunk in gw.stream_chat("gemini-2.0-flash", MSG):
            got.append(chunk)
    assert len(got) == 3 and not any(c.done for c in got)
    assert info.value.status == 503 and "overloaded" in str(info.value).lower()
    assert gemini.stats()["requests"] == 1  # never retried once the caller had part of the answer


# ---------------------------------------------------------------------------
# Ollama
# ---------------------------------------------------------------------------

def test_ollama_chat_stream_complete_embed_and_router_handle(make_gateway, ollama):
    gw = make_gateway({"endpoints": [ol_endpoint(ollama, "ol-1")]})
    r = gw.chat("llama3.2", MSG, request_id="o1")
    assert r.text == "Echo: hello there" and r.finish_reason == "stop" and r.model == "llama3.2:latest"
    assert r.provider == "ollama" and r.endpoint_id == "ol-1" and r.request_id == "o1"
    assert r.usage.prompt_tokens > 0 and r.usage.completion_tokens > 0
    chunks = list(gw.stream_chat("llama3.2", MSG))
    assert "".join(c.text for c in chunks) == r.text and chunks[-1].done and chunks[-1].usage.completion_tokens > 0
    done = gw.complete("llama3.2", "why is the sky blue", system="be brief")
    assert done.text == "Echo: why is the sky blue"
    assert "".join(c.text for c in gw.stream_complete("llama3.2", "why is the sky blue")) == done.text
    e = gw.embed("nomic-embed-text", ["hello", "world", "hello"])
    assert [len(v) for v in e.embeddings] == [768] * 3 and e.embeddings[0] == e.embeddings[2]
    assert e.usage.prompt_tokens > 0
    via_router = ray.get(gw.router.chat.remote(model="llama3.2", messages=MSG))
    assert via_router.text == r.text
    info = gw.call("model_info", "llama3.2")
    assert info.data.context_window == 131_072 and info.data.id == "llama3.2"
    running = gw.call("running_models", provider="ollama")
    assert {"llama3.2:latest", "nomic-embed-text:latest"} <= {m.id for m in running.data}
    assert gw.call("health", provider="ollama").data is True
    live = {m.id for m in gw.list_models(live=True)}
    assert {"llama3.2:latest", "mistral:latest"} <= live


def test_ollama_options_mapping_is_observed_at_the_server(make_gateway, ollama):
    gw = make_gateway({"endpoints": [ol_endpoint(ollama, "ol-1")]})
    r = gw.chat("llama3.2", [{"role": "user", "content": "count one two three four five six"}],
                temperature=0.2, top_p=0.7, top_k=12, seed=5, max_tokens=3, stop=["zzz"], presence_penalty=0.1,
                frequency_penalty=0.2, num_ctx=2048, repeat_penalty=1.05, keep_alive="1m",
                response_format={"type": "text"})
    assert r.finish_reason == "length" and r.usage.completion_tokens == 3
    sent = ollama_sent(ollama, "/api/chat")[-1]
    assert sent["options"] == {"temperature": 0.2, "top_p": 0.7, "top_k": 12, "num_predict": 3, "stop": ["zzz"],
                               "seed": 5, "presence_penalty": 0.1, "frequency_penalty": 0.2, "num_ctx": 2048,
                               "repeat_penalty": 1.05}
    assert sent["keep_alive"] == "1m" and sent["stream"] is False and "format" not in sent
    structured = gw.chat("llama3.2", [{"role": "user", "content": "Weather in Oslo"}],
                         response_format={"type": "json_schema", "json_schema": {"name": "w", "schema": {
                             "type": "object", "properties": {"city": {"type": "string"}}}}})
    assert json.loads(structured.text) == {"city": "Oslo"}
    tiny = gw.chat("llama3.2", [{"role": "user", "content": "word " * 400}], num_ctx=128)
    assert tiny.usage.prompt_tokens == 128  # Ollama truncated the prompt to the context it was given


def test_ollama_tools_and_images(make_gateway, ollama):
    gw = make_gateway({"endpoints": [ol_endpoint(ollama, "ol-1")]})
    first = gw.chat("llama3.2", [{"role": "user", "content": "Use get_weather for Tokyo"}], tools=[WEATHER])
    assert first.finish_reason == "tool_calls" and json.loads(first.tool_calls[0].arguments) == {"city": "Tokyo"}
    call = first.tool_calls[0]
    second = gw.chat("llama3.2", [{"role": "user", "content": "Use get_weather for Tokyo"},
                                  {"role": "assistant", "content": "", "tool_calls": [call.to_openai()]},
                                  {"role": "tool", "tool_call_id": call.id, "content": "sunny"}], tools=[WEATHER])
    assert second.text == "Echo: sunny"
    assert ollama_sent(ollama, "/api/chat")[-1]["messages"][2] == {"role": "tool", "content": "sunny",
                                                                   "tool_name": "get_weather"}
    picture = Image.new("RGB", (8, 8), (200, 0, 0))
    seen = gw.chat("llava", [{"role": "user", "content": [{"type": "text", "text": "what is it"},
                                                          {"type": "image", "image": picture}]}])
    assert seen.text == f"Echo: what is it [image: {png_size(picture)} bytes]"


def test_ollama_async_api(make_gateway, ollama):
    gw = make_gateway({"endpoints": [ol_endpoint(ollama, "ol-1")]})

    async def run() -> tuple:
        r = await gw.achat("llama3.2", MSG)
        chunks = [c async for c in gw.astream_chat("llama3.2", MSG)]
        return r, chunks

    r, chunks = asyncio.run(run())
    assert "".join(c.text for c in chunks) == r.text == "Echo: hello there" and chunks[-1].done


def test_ollama_routes_by_prefix_when_no_models_are_configured(make_gateway, ollama):
    gw = make_gateway({"endpoints": [ol_endpoint(ollama, "ol-any", models=[])]})
    assert gw.chat("ollama/qwen2.5:7b", MSG).model == "qwen2.5:7b"
    with pytest.raises(ia.UnknownModelError):  # the provider claims no bare model names
        gw.chat("qwen2.5:7b", MSG)


def test_ollama_errors_through_the_gateway(make_gateway, ollama):
    gw = make_gateway({"retry": fast_retry(), "endpoints": [ol_endpoint(ollama, "ol-1")]})
    with pytest.raises(ia.UnknownModelError) as missing:
        gw.chat("llama9", MSG)
    assert missing.value.status == 404 and "try pulling it first" in str(missing.value)
    ollama.reset()
    ollama.controls(faults=[{"kind": "status", "status": 500, "count": 2}])
    assert gw.chat("llama3.2", MSG).text == "Echo: hello there"
    assert ollama.stats()["requests"] == 3
    ollama.reset()
    ollama.controls(faults=[{"kind": "error_mid_stream", "after_chunks": 2, "count": 1}])
    got = []
    with pytest.raises(ia.StreamInterruptedError):
        for chunk in gw.stream_chat("llama3.2", MSG):
            got.append(chunk)
    assert len(got) == 2 and not any(c.done for c in got) and ollama.stats()["requests"] == 1


def test_ollama_cloud_key_rejected_fails_over(make_gateway, ollama):
    good, bad = f"ollama-good-{uuid.uuid4().hex}", f"ollama-bad-{uuid.uuid4().hex}"
    ollama.controls(valid_keys=[good])
    gw = make_gateway({"retry": fast_retry(), "endpoints": [ol_endpoint(ollama, "bad", bad),
                                                            ol_endpoint(ollama, "good", good)]})
    results = [gw.chat("llama3.2", MSG) for _ in range(4)]
    assert {r.endpoint_id for r in results} == {"good"}
    assert by_key(ollama, bad)["requests"] == 1 and by_key(ollama, good)["ok"] == 4
    assert gw.circuit_state("bad") == "OPEN"
    with pytest.raises(ia.GatewayError) as info:
        gw.chat("llama3.2", MSG, endpoint_id="bad")
    assert "Authentication error" in str(info.value)
    assert bad not in str(info.value) and bad not in repr(info.value)
